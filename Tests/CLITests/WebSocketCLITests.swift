import Foundation
import TestSupport
import Testing

/// `--listen` takes any transport's multiaddr, repeatedly: TCP and WebSocket at once.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct WebSocketCLITests {
    @Test func echoListensOnTCPAndWebSocketAndServesBoth() async throws {
        let server = try ChildProcess.Running(
            try CLI.binary,
            ["echo", "--seed", "1", "--listen", "/ip4/127.0.0.1/tcp/0", "--listen", "/ip4/127.0.0.1/tcp/0/ws"])
        do {
            try await check(server)
        } catch {
            _ = try? await server.stop(signal: SIGKILL)
            throw error
        }
        #expect(try await server.stop(signal: SIGTERM) == 143)
    }

    func check(_ server: ChildProcess.Running) async throws {
        let ws = try await server.firstLine(timeout: .seconds(30)) { $0.contains("/ws/p2p/") }
        #expect(ws.hasPrefix("/ip4/127.0.0.1/tcp/"))
        #expect(ws.hasSuffix("/ws/p2p/12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"))
        let tcp = try await server.firstLine(timeout: .seconds(5)) { $0.contains("/p2p/") && !$0.contains("/ws/") }
        #expect(tcp != ws)

        let client = try await CLI.run(["echo", "-d", ws, "--size", "256KiB", "--streams", "2"])
        #expect(client.status == 0, "\(client.stdout)\(client.stderr)")
        #expect(client.stdout.contains("echoed 524288 bytes on 2 stream(s)"))
        let ping = try await CLI.run(["ping", ws, "--count", "2", "--interval", "10"])
        #expect(ping.status == 0, "\(ping.stderr)")
        let overTCP = try await CLI.run(["ping", tcp, "--count", "1"])
        #expect(overTCP.status == 0, "\(overTCP.stderr)")
    }
}
