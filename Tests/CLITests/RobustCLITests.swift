import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 10 ("Survive the open internet"), the CLI part: every command ends on SIGINT/SIGTERM
/// with 130/143, sizes parse without crashing, errors are one line, `--json` is clean JSON,
/// keygen keeps existing keys, and `--metrics` serves Prometheus text.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct RobustCLITests {
    /// How long a command may take to end after a signal (it should take well under a second;
    /// the margin is for a loaded CI machine). Old builds ignored the signal altogether.
    static let signalDeadline: TimeInterval = 2

    /// Starts `arguments`, waits for `ready` on stdout or stderr, sends `signal`, and expects the
    /// command to exit with 128 + signal within `signalDeadline`.
    private func expectEndsOnSignal(
        _ arguments: [String], signal: Int32, ready: @escaping (String) -> Bool,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        let running = try ChildProcess.Running(try CLI.binary, arguments, captureStderr: true)
        defer { if running.process.isRunning { running.process.terminate() } }
        let deadline = ContinuousClock.now + .seconds(30)
        while !(running.lines + running.errorLines).contains(where: ready) {
            guard running.process.isRunning, ContinuousClock.now < deadline else {
                Issue.record("never ready; stdout \(running.lines), stderr \(running.errorLines)", sourceLocation: sourceLocation)
                return
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        let status = try await running.stop(signal: signal, timeout: Self.signalDeadline)
        #expect(status == CLI.exitStatus(after: signal), "stderr: \(running.errorLines)", sourceLocation: sourceLocation)
    }

    @Test func perfUploadEndsOnSIGINT() async throws {
        let server = try await CLI.Server(["perf", "-l", "0"])
        try await expectEndsOnSignal(["perf", server.address, "--upload", "100GiB"], signal: SIGINT) {
            $0.hasPrefix("… ") && $0.contains("uploaded")
        }
        #expect(try await server.stop(signal: SIGINT) == 130)
    }

    @Test func echoDialEndsOnSIGTERMAndStreamsA4GiBPayloadInLittleMemory() async throws {
        let server = try await CLI.Server(["echo", "-l", "0"])
        let running = try ChildProcess.Running(
            try CLI.binary, ["echo", "-d", server.address, "--size", "4GiB"], captureStderr: true)
        defer { if running.process.isRunning { running.process.terminate() } }
        // Old builds crashed here ("Not enough bits to represent the passed value").
        _ = try await CLI.firstErrorLine(running) { $0.hasPrefix("… ") && $0.contains("echoed") }
        // Streaming: the peak resident size stays far below the payload (old builds held it twice).
        let peak = try #require(Self.peakResidentBytes(of: running.process.processIdentifier))
        #expect(peak < 512 << 20, "peak RSS \(peak >> 20) MiB while echoing 4 GiB")
        let status = try await running.stop(signal: SIGTERM, timeout: Self.signalDeadline)
        #expect(status == 143, "stderr: \(running.errorLines)")
        #expect(try await server.stop(signal: SIGTERM) == 143)
    }

    @Test func sendCountEndsOnSIGINT() async throws {
        let server = try await CLI.Server(["serve", "-l", "0", "--protocol", "/p/1"])
        try await expectEndsOnSignal(
            ["send", server.address, "--protocol", "/p/1", "--data", "x", "--count", "100000000"], signal: SIGINT
        ) { $0.hasPrefix("… ") && $0.contains("requests") }
        #expect(try await server.stop(signal: SIGTERM) == 143)
    }

    @Test func pingEndsOnSIGTERM() async throws {
        let server = try await CLI.Server(["echo", "-l", "0"])
        try await expectEndsOnSignal(["ping", server.address, "--count", "1000", "--interval", "100"], signal: SIGTERM) {
            $0.hasPrefix("ping 1: ")
        }
        #expect(try await server.stop(signal: SIGTERM) == 143)
    }

    @Test func sizesInDecimalBinaryAndFractionalUnits() async throws {
        let server = try await CLI.Server(["echo", "-l", "0"])
        // 1.5MiB = 1572864 bytes on each of 3 streams; an odd size exercises partial words.
        let fractional = try await CLI.run(["echo", "-d", server.address, "--size", "1.5MiB", "--streams", "3"])
        #expect(fractional.status == 0, "\(fractional.stderr)")
        #expect(fractional.stdout.contains("echoed 4718592 bytes on 3 stream(s)"))
        let odd = try await CLI.run(["echo", "-d", server.address, "--size", "1000003", "--streams", "2"])
        #expect(odd.status == 0, "\(odd.stderr)")
        #expect(odd.stdout.contains("echoed 2000006 bytes on 2 stream(s)"))
        #expect(try await server.stop() == 143)

        let serve = try await CLI.Server(["serve", "-l", "0", "--protocol", "/p/1"])
        for (size, bytes) in [("1MB", 1_000_000), ("512KB", 512_000), ("1MiB", 1 << 20), ("12345", 12345)] {
            let send = try await CLI.run(["send", serve.address, "--protocol", "/p/1", "--size", size])
            #expect(send.status == 0, "\(size): \(send.stderr)")
            #expect(send.stdout == "reply: \(bytes) bytes\n", "\(size)")
        }
        #expect(try await serve.stop() == 143)
    }

    @Test func impossibleSizesAreRefusedNotCrashedOn() async throws {
        let peer = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"
        for (size, complaint) in [
            ("99999999999999GiB", "size too large"), ("18446744073709551616", "size too large"),
            ("1.3KiB", "not a whole number of bytes"), ("lots", "not a size"), ("1.5", "not a whole number of bytes"),
        ] {
            let run = try await CLI.run(["echo", "-d", peer, "--size", size])
            // 64 (EX_USAGE) from the argument parser; a crash would be a signal (4, 5, 11) instead.
            #expect(run.status == 64, "\(size): status \(run.status), stderr \(run.stderr)")
            #expect(run.stderr.contains(complaint), "\(size): \(run.stderr)")
        }
        // 2^63 bytes is a size; two streams of it are not.
        let product = try await CLI.run(["echo", "-d", peer, "--size", "8589934592GiB", "--streams", "2"])
        #expect(product.status == 64, "\(product.stderr)")
        #expect(product.stderr.contains("more than 2^64 - 1 bytes"))
    }

    @Test func keygenRefusesToOverwriteWithoutForce() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("pointsub-\(UUID()).key").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let first = try await CLI.run(["keygen", path])
        #expect(first.status == 0)
        let again = try await CLI.run(["keygen", path])
        #expect(again.status != 0)
        #expect(again.stderr.contains("use --force"), "\(again.stderr)")
        #expect(try await CLI.run(["id", "--key", path]).stdout == first.stdout)  // the key is untouched
        let forced = try await CLI.run(["keygen", path, "--force"])
        #expect(forced.status == 0, "\(forced.stderr)")
        #expect(forced.stdout != first.stdout)
        #expect(try await CLI.run(["id", "--key", path]).stdout == forced.stdout)
        // No temporary files are left beside it.
        let directory = (path as NSString).deletingLastPathComponent
        let name = (path as NSString).lastPathComponent
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasPrefix(name + ".") }
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    @Test func refusedConnectionIsOneLineThatSaysRefused() async throws {
        let port = try Self.closedPort()
        let address = "/ip4/127.0.0.1/tcp/\(port)/p2p/12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"
        for arguments in [["ping", address, "--count", "1"], ["send", address, "--protocol", "/p/1", "--data", "x"]] {
            let run = try await CLI.run(arguments)
            #expect(run.status == 1)
            #expect(run.stderr == "error: cannot connect to \(address): connection refused\n", "\(arguments[0]): \(run.stderr)")
        }
    }

    @Test func pingAndSendSpeakJSON() async throws {
        let server = try await CLI.Server(["serve", "-l", "0", "--protocol", "/p/1", "--handler", "upper"])
        let ping = try await CLI.run(["ping", server.address, "--count", "3", "--interval", "10", "--json"])
        #expect(ping.status == 0, "\(ping.stderr)")
        let pings = ping.stdout.split(separator: "\n").map { Self.json(String($0)) }
        #expect(pings.count == 4)
        #expect(pings.prefix(3).map { $0?["seq"] as? Int } == [1, 2, 3])
        #expect(pings.prefix(3).allSatisfy { ($0?["rtt_ms"] as? Double).map { $0 > 0 } == true })
        #expect(pings.last??["type"] as? String == "final")
        #expect(pings.last??["count"] as? Int == 3)

        let one = try await CLI.run(["send", server.address, "--protocol", "/p/1", "--data", "hi", "--json"])
        #expect(one.status == 0, "\(one.stderr)")
        let reply = Self.json(one.stdout.trimmingCharacters(in: .newlines))
        #expect(reply?["type"] as? String == "reply")
        #expect(reply?["reply"] as? String == "HI")
        #expect(reply?["reply_bytes"] as? Int == 2)

        let many = try await CLI.run(["send", server.address, "--protocol", "/p/1", "--size", "1KiB", "--count", "20", "--json"])
        #expect(many.status == 0, "\(many.stderr)")
        let lines = many.stdout.split(separator: "\n")
        #expect(lines.count == 1)
        let final = Self.json(String(lines.first ?? ""))
        #expect(final?["type"] as? String == "final")
        #expect(final?["requests"] as? Int == 20)
        #expect(final?["request_bytes"] as? Int == 1024)
        #expect(try await server.stop() == 143)
    }

    @Test func verboseLogsConnectionEventsOnStderrOnly() async throws {
        let server = try await CLI.Server(["echo", "-l", "0", "--seed", "1"])
        let quiet = try await CLI.run(["ping", server.address, "--count", "1"])
        #expect(quiet.status == 0)
        #expect(quiet.stderr.isEmpty, "\(quiet.stderr)")
        let verbose = try await CLI.run(["ping", server.address, "--count", "1", "-v"])
        #expect(verbose.status == 0)
        // The library's debug lines (with the peer) reach stderr; stdout keeps only the results.
        #expect(verbose.stderr.contains("connection opened"), "\(verbose.stderr)")
        #expect(verbose.stderr.contains("12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"))
        #expect(verbose.stdout.split(separator: "\n").allSatisfy { $0.hasPrefix("ping ") || $0.contains("pings to") })
        #expect(try await server.stop() == 143)
    }

    @Test func versionFlag() async throws {
        let run = try await CLI.run(["--version"])
        #expect(run.status == 0)
        #expect(run.stdout.range(of: #"^\d+\.\d+\.\d+\n$"#, options: .regularExpression) != nil, "\(run.stdout)")
    }

    @Test func metricsEndpointServesPrometheusTextThatMoves() async throws {
        let server = try await CLI.Server(
            ["serve", "-l", "0", "--protocol", "/p/1", "--metrics", "127.0.0.1:0"], captureStderr: true)
        let announced = try await CLI.firstErrorLine(server.running) { $0.contains("/metrics") }
        let url = try #require(announced.split(separator: " ").last.map(String.init))
        let port = try #require(url.split(separator: ":").last.flatMap { Int($0.split(separator: "/").first ?? "") })

        let before = try Self.httpGet(port: port, path: "/metrics")
        #expect(before.hasPrefix("HTTP/1.1 200"))
        #expect(Self.sample(before, "pointsub_serve_requests_total") == 0, "\(before)")
        #expect(before.contains("pointsub_resource_connections"))

        let send = try await CLI.run(["send", server.address, "--protocol", "/p/1", "--data", "x", "--count", "7"])
        #expect(send.status == 0, "\(send.stderr)")
        let after = try Self.httpGet(port: port, path: "/metrics")
        #expect(Self.sample(after, "pointsub_serve_requests_total") == 7, "\(after)")
        // The library's own metrics are there too; more (request counters, …) can be checked here.
        #expect(after.contains("pointsub_resource_streams"))

        #expect(try Self.httpGet(port: port, path: "/other").hasPrefix("HTTP/1.1 404"))
        #expect(try await server.stop() == 143)
    }

    // MARK: - Helpers

    private static func json(_ line: String) -> [String: Any]? {
        (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
    }

    /// The value of the first sample of `metric` (any labels) in Prometheus text.
    private static func sample(_ text: String, _ metric: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(metric + " ") || line.hasPrefix(metric + "{") {
            return line.split(separator: " ").last.flatMap { Double($0) }
        }
        return nil
    }

    /// VmHWM (the peak resident set) of a process, from /proc.
    private static func peakResidentBytes(of pid: Int32) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            let kib = line.split(separator: " ").dropFirst().first.flatMap { Int($0) }
            return kib.map { $0 * 1024 }
        }
        return nil
    }

    /// A loopback TCP port that nothing listens on: bound, then closed.
    private static func closedPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ChildProcess.Failure("socket failed") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
            }
        }
        guard bound else { throw ChildProcess.Failure("bind failed") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// A plain HTTP/1.1 GET to 127.0.0.1:`port` over a socket; the whole response (head and body).
    /// Bounded: 5 s receive timeout, 4 MiB at most.
    private static func httpGet(port: Int, path: String) throws -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ChildProcess.Failure("socket failed") }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        guard connected else { throw ChildProcess.Failure("cannot connect to the metrics port \(port)") }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == request.count else {
            throw ChildProcess.Failure("send failed")
        }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while response.count < 4 << 20 {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            response += chunk[0..<n]
        }
        return String(decoding: response, as: UTF8.self)
    }
}
