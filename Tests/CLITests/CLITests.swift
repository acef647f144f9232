import Foundation
import TestSupport
import Testing

/// Runs the built `pointsub` binary the way a user would.
enum CLI {
    static var binary: URL {
        get throws { try ChildProcess.pointsubBinary }
    }

    static func run(_ arguments: [String], timeout: TimeInterval = 60) async throws -> ChildProcess.Output {
        try await ChildProcess.run(try binary, arguments, timeout: timeout)
    }

    /// A serving command, once it printed its first `/p2p/` address.
    struct Server {
        let running: ChildProcess.Running
        let address: String

        init(_ arguments: [String], captureStderr: Bool = false) async throws {
            running = try ChildProcess.Running(try CLI.binary, arguments, captureStderr: captureStderr)
            address = try await running.firstLine(timeout: .seconds(30)) { $0.contains("/p2p/") }
        }

        func stop(signal: Int32 = SIGTERM) async throws -> Int32 {
            try await running.stop(signal: signal)
        }
    }

    /// The exit status of a command ended by `signal` after its graceful shutdown: 128 + the number.
    static func exitStatus(after signal: Int32) -> Int32 { 128 + signal }

    /// The first stderr line of `running` (started with `captureStderr`) matching `predicate`.
    static func firstErrorLine(
        _ running: ChildProcess.Running, timeout: Duration = .seconds(30), where predicate: (String) -> Bool
    ) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let line = running.errorLines.first(where: predicate) { return line }
            guard running.process.isRunning else { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw ChildProcess.Failure("no matching stderr line; stderr so far: \(running.errorLines)")
    }
}

@Suite(.serialized, .timeLimit(.minutes(3)))
struct CLITests {
    @Test func idPrintsTheSeedsPeerID() async throws {
        let one = try await CLI.run(["id", "--seed", "1"])
        #expect(one.status == 0)
        #expect(one.stdout == "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X\nkey type: Ed25519\n")
        let zero = try await CLI.run(["id", "--seed", "0"])
        #expect(zero.stdout == "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN\nkey type: Ed25519\n")
    }

    @Test func keygenThenIdFromTheKeyFile() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("pointsub-\(UUID()).key").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let made = try await CLI.run(["keygen", path])
        #expect(made.status == 0)
        let id = try await CLI.run(["id", "--key", path])
        #expect(id.stdout == made.stdout)
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
    }

    @Test func echoServerAndClientThenSIGTERMExits143() async throws {
        let server = try await CLI.Server(["echo", "-l", "0", "--seed", "1"])
        #expect(server.address.hasPrefix("/ip4/127.0.0.1/tcp/"))
        #expect(server.address.hasSuffix("/p2p/12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"))
        let client = try await CLI.run(["echo", "-d", server.address, "--size", "1MiB", "--streams", "4"])
        #expect(client.status == 0, "\(client.stdout)\(client.stderr)")
        #expect(client.stdout.contains("echoed 4194304 bytes on 4 stream(s)"))
        let ping = try await CLI.run(["ping", server.address, "--count", "3", "--interval", "10"])
        #expect(ping.status == 0, "\(ping.stderr)")
        #expect(ping.stdout.components(separatedBy: "\n").filter { $0.hasPrefix("ping ") }.count == 3)
        #expect(try await server.stop(signal: SIGTERM) == 143)
    }

    @Test func echoListenOnMultiaddrAndSIGINT() async throws {
        let server = try await CLI.Server(["echo", "--listen", "/ip4/127.0.0.1/tcp/0"])
        #expect(server.address.contains("/p2p/12D3KooW"))
        #expect(try await server.stop(signal: SIGINT) == 130)
    }

    /// Issue 10: `perf --json` printed three lines of text before the JSON on stdout.
    @Test func perfJSONIsTheOnlyLineOnStdout() async throws {
        let server = try await CLI.Server(["perf", "--listen", "/ip4/127.0.0.1/tcp/0"])
        let run = try await CLI.run(["perf", server.address, "--upload", "4MiB", "--download", "2MiB", "--json"])
        #expect(run.status == 0, "\(run.stderr)")
        let lines = run.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 1, "stdout: \(run.stdout)")
        let json = try JSONSerialization.jsonObject(with: Data((lines.last ?? "").utf8)) as? [String: Any]
        #expect(json?["upload_bytes"] as? Int == 4 << 20)
        #expect(json?["download_bytes"] as? Int == 2 << 20)
        // The text report went to stderr.
        #expect(run.stderr.contains("upload   4194304 bytes in "))
        #expect(try await server.stop() == 143)
    }

    @Test func badArgumentsFailWithNonZeroStatus() async throws {
        #expect(try await CLI.run(["echo"]).status != 0)
        #expect(try await CLI.run(["ping", "/ip4/127.0.0.1/tcp/1"]).status != 0)  // no /p2p/
        #expect(try await CLI.run(["id", "--seed", "1", "--key", "x"]).status != 0)
        let refused = try await CLI.run([
            "ping", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X", "--count", "1",
        ])
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("cannot connect"))
    }

    @Test func serveAndSendEachHandler() async throws {
        let cases = [
            ("echo", "Hello, PointSub ✓", "Hello, PointSub ✓"),
            ("reverse", "Hello, PointSub", "buStnioP ,olleH"),  // byte order: ASCII keeps it text
            ("upper", "Hello, PointSub ✓", "HELLO, POINTSUB ✓"),
        ]
        for (handler, data, reply) in cases {
            let server = try await CLI.Server(["serve", "-l", "0", "--protocol", "/kv/1.0.0", "--handler", handler])
            #expect(server.address.contains("/p2p/"))
            let send = try await CLI.run(["send", server.address, "--protocol", "/kv/1.0.0", "--data", data])
            #expect(send.status == 0, "\(send.stderr)")
            #expect(send.stdout == reply + "\n", "handler \(handler)")
            #expect(try await server.stop() == 143)
        }
    }

    @Test func sendCountPrintsRateAndLatency() async throws {
        let server = try await CLI.Server(["serve", "--listen", "/ip4/127.0.0.1/tcp/0", "--protocol", "/p/1"])
        let send = try await CLI.run([
            "send", server.address, "--protocol", "/p/1", "--size", "1KiB", "--count", "200", "--concurrency", "8",
        ])
        #expect(send.status == 0, "\(send.stderr)")
        #expect(send.stdout.contains("200 requests of 1024 bytes, 8 in flight"))
        #expect(send.stdout.contains("requests/s, p50"))
        let wrong = try await CLI.run(["send", server.address, "--protocol", "/other/1", "--data", "x"])
        #expect(wrong.status != 0)
        // Issue 10: one line, said once (it used to name the peer and the protocol three times).
        let peer = server.address.split(separator: "/").last.map(String.init) ?? ""
        #expect(wrong.stderr == "error: \(peer) does not serve /other/1\n", "\(wrong.stderr)")
        #expect(try await server.stop() == 143)
    }

    @Test func signalRightAfterTheAddressIsNeverLost() async throws {
        for _ in 0..<5 {
            let server = try await CLI.Server(["echo", "-l", "0"])
            #expect(try await server.stop(signal: SIGTERM) == 143)
        }
    }

    @Test func demoRuns() async throws {
        let demo = try await CLI.run(["demo"], timeout: 120)
        #expect(demo.status == 0, "\(demo.stderr)")
        #expect(demo.stdout.contains("echo on /echo/1.0.0: sent \"hello, libp2p\", got \"hello, libp2p\""))
        #expect(demo.stdout.contains("both hosts shut down cleanly"))
        // The four-node part: request/response, routes, and gossipsub forwarded along the line.
        #expect(demo.stdout.contains("request/response node-0 → node-1 on /demo/upper/1.0.0: \"node-1: HELLO OVER POINTSUB\""))
        #expect(demo.stdout.contains("  node-3: \"node-3 got \"dispatch to all\" from node-0\""))
        #expect(demo.stdout.contains("node-3 got \"news 1\" from node-0 via node-2"))
        #expect(demo.stdout.contains("every node got all 3 messages; 9 transmissions in total (3.0 per message)"))
        #expect(demo.stdout.contains("all four nodes shut down cleanly"))
    }
}
