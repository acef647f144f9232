import Foundation
import TestSupport
import Testing

/// `pointsub serve --dht` and `pointsub send --closest-dht`: the DHT names the server.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ClosestDHTCLITests {
    @Test func theDHTPicksTheServerAndFailsOver() async throws {
        // Two servers that answer differently, so the reply shows which one answered.
        let upper = try ChildProcess.Running(
            try CLI.binary,
            ["serve", "--protocol", "/t/1.0.0", "--handler", "upper", "--dht", "-l", "0", "--no-mdns", "--seed", "21"])
        var reverse: ChildProcess.Running?
        do {
            let first = try await upper.firstLine(timeout: .seconds(30)) { $0.contains("/p2p/") }
            let second = try ChildProcess.Running(
                try CLI.binary,
                [
                    "serve", "--protocol", "/t/1.0.0", "--handler", "reverse", "--dht", "--bootstrap", first, "-l", "0",
                    "--no-mdns", "--seed", "22",
                ])
            reverse = second
            let secondAddress = try await second.firstLine(timeout: .seconds(30)) { $0.contains("/p2p/") }
            let upperID = String(first.split(separator: "/").last ?? "")
            let reverseID = String(secondAddress.split(separator: "/").last ?? "")

            func send(key: String, protocolID: String = "/t/1.0.0") async throws -> ChildProcess.Output {
                try await CLI.run([
                    "send", "--closest-dht", "--bootstrap", first, "--protocol", protocolID, "--data", "hello",
                    "--closest-key", key, "--json", "--no-mdns",
                ])
            }
            /// The node that answered `key`, checked against its reply.
            func node(for key: String) async throws -> String {
                let run = try await send(key: key)
                #expect(run.status == 0, "\(run.stderr)")
                if run.stdout.contains("\"node\":\"\(upperID)\"") {
                    #expect(run.stdout.contains("\"reply\":\"HELLO\""), "\(run.stdout)")
                    return upperID
                }
                #expect(run.stdout.contains("\"node\":\"\(reverseID)\""), "\(run.stdout)")
                #expect(run.stdout.contains("\"reply\":\"olleh\""), "\(run.stdout)")
                return reverseID
            }
            // The same key, the same server; keys spread over both.
            var chosen: [String: String] = [:]
            for key in ["a", "b", "c", "d", "e", "f"] {
                let answered = try await node(for: key)
                #expect(try await node(for: key) == answered, "key \(key)")
                chosen[key] = answered
            }
            #expect(Set(chosen.values) == [upperID, reverseID])

            // No server of that protocol: an error, exit status 1.
            let nobody = try await send(key: "a", protocolID: "/t/9.9.9")
            #expect(nobody.status == 1)
            #expect(nobody.stderr.contains("no node serving /t/9.9.9"), "\(nobody.stderr)")

            // The reverse server leaves: its keys go to the other one.
            #expect(try await second.stop(signal: SIGINT) == 130)
            reverse = nil
            for (key, answered) in chosen where answered == reverseID {
                #expect(try await node(for: key) == upperID, "key \(key)")
            }
        } catch {
            _ = try? await upper.stop(signal: SIGKILL)
            _ = try? await reverse?.stop(signal: SIGKILL)
            throw error
        }
        #expect(try await upper.stop(signal: SIGINT) == 130)
    }

    @Test func badOptionsFail() async throws {
        // Neither or both of ADDRESS and --closest-dht; --closest-dht without --bootstrap.
        #expect(try await CLI.run(["send", "--protocol", "/t", "--data", "x"]).status != 0)
        #expect(
            try await CLI.run([
                "send", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X", "--closest-dht",
                "--bootstrap", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X",
                "--protocol", "/t", "--data", "x",
            ]).status != 0)
        #expect(try await CLI.run(["send", "--closest-dht", "--protocol", "/t", "--data", "x"]).status != 0)
        #expect(try await CLI.run(["serve", "--protocol", "/t", "-l", "0", "--bootstrap", "/ip4/127.0.0.1/tcp/1"]).status != 0)
    }
}
