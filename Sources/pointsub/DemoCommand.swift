import ArgumentParser
import Foundation
import NIOCore
import PointSub
import ServiceLifecycle

/// Two hosts in one process on 127.0.0.1: one dials the other, echoes, pings, identifies, and prints
/// what happened; then four nodes in a line show request/response, routes and broadcast.
struct DemoCommand: CLICommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Local nodes: dial, echo, ping, identify, perf; request/response, routes and gossipsub across four nodes.")

    func execute() async throws {
        // An in-process demo: a signal cancels it (its hosts close as it unwinds).
        let command = self
        try await cancelWhenGracefulShutdown { try await command.runDemo() }
    }

    func runDemo() async throws {
        let serverConfig = P2PHost.Configuration.defaults {
            $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")]
            $0.services = [EchoService(), PerfService()]
            $0.agentVersion = "pointsub-demo-server/0.1.0"
        }
        try await withHost(identity: .ed25519(seed: 1), configuration: serverConfig) { server in
            print("server \(server.peerID) listening on:")
            for address in server.addresses { print("  \(address)") }
            try await withHost(identity: .ed25519(seed: 2)) { client in
                print("client \(client.peerID)")
                let clock = ContinuousClock()
                var start = clock.now
                let connection = try await client.connect(to: server.addresses[0])
                print(String(format: "connected (TCP + Noise + Yamux) in %.3f ms: %@ → %@", (clock.now - start).milliseconds, connection.security, connection.muxer))

                let stream = try await client.newStream(to: server.peerID, protocols: [EchoService.protocolID])
                start = clock.now
                try await stream.write(ByteBuffer(string: "hello, libp2p"))
                try await stream.closeWrite()
                let reply = try await stream.readToEnd(maxBytes: 1024)
                print(String(format: "echo on %@: sent \"hello, libp2p\", got \"%@\" in %.3f ms", EchoService.protocolID, String(buffer: reply), (clock.now - start).milliseconds))

                let rtts = try await PingService.ping(host: client, peer: server.peerID, count: 3)
                print("ping: " + rtts.map { String(format: "%.3f ms", $0.milliseconds) }.joined(separator: ", "))

                let info = try await IdentifyService.identify(connection, host: client)
                print("identify: agent \(info.agentVersion ?? "?"), protocols \(info.protocols.joined(separator: " "))")

                let perf = try await PerfService.run(host: client, peer: server.peerID, upload: 16 << 20, download: 16 << 20)
                print("perf: upload 16 MiB at \(formatRate(bytes: perf.uploadBytes, seconds: perf.uploadTime.seconds)), download 16 MiB at \(formatRate(bytes: perf.downloadBytes, seconds: perf.downloadTime.seconds))")
                await connection.close()
            }
        }
        print("both hosts shut down cleanly")
        try await runNetworkDemo()
    }
}
