import Foundation
import TestSupport
import Testing

/// `pointsub relay` and `--relay`: a node reserves on a relay, prints its circuit address, and
/// another process reaches it there (each a separate process).
@Suite(.serialized, .timeLimit(.minutes(2)))
struct RelayCLITests {
    @Test func serverReachedThroughRelay() async throws {
        let relay = try ChildProcess.Running(try CLI.binary, ["relay", "--seed", "21", "-l", "0", "--no-mdns"])
        defer { Task { _ = try? await relay.stop(signal: SIGKILL) } }
        let relayAddress = try await relay.firstLine(timeout: .seconds(30)) { $0.contains("/p2p/") }

        let server = try ChildProcess.Running(
            try CLI.binary, ["echo", "--seed", "22", "-l", "0", "--no-mdns", "--relay", relayAddress])
        defer { Task { _ = try? await server.stop(signal: SIGKILL) } }
        let circuit = try await server.firstLine(timeout: .seconds(30)) { $0.contains("/p2p-circuit/") }
        #expect(circuit.hasPrefix(relayAddress + "/p2p-circuit/p2p/"), "\(circuit)")

        let ping = try await CLI.run(["ping", circuit, "--count", "2", "--seed", "23", "--json"])
        #expect(ping.status == 0, "\(ping.stderr)")
        #expect(ping.stdout.contains("\"type\":\"final\""), "\(ping.stdout)")

        // send --json through the relay: first how the connection ended up, then the reply.
        // (Whether it became direct depends on this machine: the sender listens on 0.0.0.0 for
        // the hole punch, and an interface address that looks public is simply dialed.)
        let kv = try ChildProcess.Running(try CLI.binary, [
            "serve", "--seed", "26", "-l", "0", "--no-mdns", "--relay", relayAddress, "--protocol", "/kv/1.0.0", "--handler", "reverse",
        ])
        defer { Task { _ = try? await kv.stop(signal: SIGKILL) } }
        let kvCircuit = try await kv.firstLine(timeout: .seconds(30)) { $0.contains("/p2p-circuit/") }
        let send = try await CLI.run(["send", kvCircuit, "--protocol", "/kv/1.0.0", "--data", "abc", "--seed", "27", "--json"])
        #expect(send.status == 0, "\(send.stderr)")
        let lines = send.stdout.split(separator: "\n")
        #expect(lines.count == 2, "\(send.stdout)")
        #expect(lines.first?.contains("\"type\":\"connection\"") == true && lines.first?.contains("\"relayed\":true") == true, "\(send.stdout)")
        #expect(lines.last?.contains("\"type\":\"reply\"") == true, "\(send.stdout)")

        // A relay that is not there: the server says so and keeps serving on its own address.
        let lonely = try ChildProcess.Running(
            try CLI.binary, ["echo", "--seed", "24", "-l", "0", "--no-mdns", "--relay", "/ip4/127.0.0.1/tcp/1/p2p/\(relayAddress.split(separator: "/").last!)"],
            captureStderr: true)
        defer { Task { _ = try? await lonely.stop(signal: SIGKILL) } }
        let own = try await lonely.firstLine(timeout: .seconds(30)) { $0.contains("/p2p/") }
        let deadline = ContinuousClock.now + .seconds(30)
        while !lonely.errorLines.contains(where: { $0.contains("no reservation") }), ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(lonely.errorLines.contains { $0.contains("no reservation") }, "\(lonely.errorLines)")
        let direct = try await CLI.run(["ping", own, "--count", "1", "--seed", "25"])
        #expect(direct.status == 0, "\(direct.stderr)")

        #expect(try await server.stop(signal: SIGINT) == 130)
        #expect(try await relay.stop(signal: SIGINT) == 130)
    }
}
