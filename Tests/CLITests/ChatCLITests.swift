import Foundation
import NIOConcurrencyHelpers
import TestSupport
import Testing

/// A `pointsub chat` process with stdin on a pipe and stdout and stderr collected line by line.
private final class ChatProcess: Sendable {
    let process: Process
    private let input: Pipe
    private let stdoutLines = NIOLockedValueBox<[String]>([])
    private let stderrLines = NIOLockedValueBox<[String]>([])

    init(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = try CLI.binary
        process.arguments = ["chat"] + arguments
        let out = Pipe()
        let err = Pipe()
        let input = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = input
        try process.run()
        for (pipe, lines) in [(out, stdoutLines), (err, stderrLines)] {
            let handle = pipe.fileHandleForReading
            Thread.detachNewThread {
                var pending = Data()
                while true {
                    let chunk = handle.availableData
                    if chunk.isEmpty { break }
                    pending.append(chunk)
                    while let newline = pending.firstIndex(of: 0x0A) {
                        let line = String(decoding: pending[pending.startIndex..<newline], as: UTF8.self)
                        pending.removeSubrange(pending.startIndex...newline)
                        lines.withLockedValue { $0.append(line) }
                    }
                }
            }
        }
        self.process = process
        self.input = input
    }

    var stdout: [String] { stdoutLines.withLockedValue { $0 } }
    var stderr: [String] { stderrLines.withLockedValue { $0 } }

    func send(_ line: String) throws {
        try input.fileHandleForWriting.write(contentsOf: Data((line + "\n").utf8))
    }

    func closeInput() throws {
        try input.fileHandleForWriting.close()
    }

    /// Waits (bounded) for the process to exit by itself; returns its status.
    func waitForExit(timeout: Duration = .seconds(60)) async throws -> Int32 {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        if process.isRunning {
            process.terminate()
            throw ChildProcess.Failure("chat did not exit by itself; stderr \(stderr)")
        }
        return process.terminationStatus
    }

    /// Waits (bounded) for a line in `lines` matching `predicate`.
    func line(
        in lines: KeyPath<ChatProcess, [String]>, timeout: Duration = .seconds(30), where predicate: (String) -> Bool
    ) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let line = self[keyPath: lines].first(where: predicate) { return line }
            guard process.isRunning else { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw ChildProcess.Failure("chat printed no matching line; stdout \(stdout), stderr \(stderr)")
    }

    /// Sends SIGTERM and returns the exit status (bounded wait).
    func terminate() async throws -> Int32 {
        kill(process.processIdentifier, SIGTERM)
        let deadline = ContinuousClock.now + .seconds(15)
        while process.isRunning, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        if process.isRunning {
            process.terminate()
            throw ChildProcess.Failure("chat did not exit after SIGTERM")
        }
        return process.terminationStatus
    }

    deinit {
        if process.isRunning { process.terminate() }
    }
}

private func jsonObject(_ line: String) -> [String: Any]? {
    (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
}

@Suite(.timeLimit(.minutes(2)))
struct ChatCLITests {
    @Test func twoFloodsubChatsExchangeALineAsJSON() async throws {
        let a = try ChatProcess(["--topic", "room", "--router", "floodsub", "--json", "--listen", "/ip4/127.0.0.1/tcp/0"])
        let addressA = try await a.line(in: \.stderr) { $0.contains("/p2p/") }
        let b = try ChatProcess(["--topic", "room", "--router", "floodsub", "--json", "--connect", addressA])
        let addressB = try await b.line(in: \.stderr) { $0.contains("/p2p/") }
        let peerA = String(addressA.split(separator: "/").last!)
        let peerB = String(addressB.split(separator: "/").last!)

        try b.send("hello from b")
        let atA = try await a.line(in: \.stdout) { jsonObject($0)?["data"] as? String == "hello from b" }
        let message = try #require(jsonObject(atA))
        #expect(message["from"] as? String == peerB)
        #expect(message["topic"] as? String == "room")
        // Issue 10: seqnos are 64-bit (above 2^53), so they are decimal strings, not JSON numbers
        // a reader would round.
        let seqno = try #require(message["seqno"] as? String)
        #expect(UInt64(seqno) != nil)

        try a.send("hello from a ✓")
        let atB = try await b.line(in: \.stdout) { jsonObject($0)?["data"] as? String == "hello from a ✓" }
        #expect(jsonObject(atB)?["from"] as? String == peerA)

        #expect(try await a.terminate() == 143)
        #expect(try await b.terminate() == 143)
        // stdout holds the JSON objects and nothing else; the addresses went to stderr.
        #expect(a.stdout.count == 1 && a.stdout.allSatisfy { jsonObject($0) != nil })
        #expect(b.stdout.count == 1 && b.stdout.allSatisfy { jsonObject($0) != nil })
    }

    @Test func exitOnEOFEndsAfterPublishingAndPlainOutputIsText() async throws {
        let receiver = try ChatProcess(["--topic", "t", "--router", "floodsub", "-l", "0"])
        let address = try await receiver.line(in: \.stdout) { $0.contains("/p2p/") }
        let sender = try ChatProcess(["--topic", "t", "--router", "floodsub", "--connect", address, "--exit-on-eof"])
        try sender.send("one")
        try sender.send("two")
        try sender.closeInput()
        // It exits once stdin ended, after its messages went out.
        #expect(try await sender.waitForExit() == 0, "\(sender.stderr)")
        let line = try await receiver.line(in: \.stdout, timeout: .seconds(5)) { $0.hasSuffix(": two") }
        #expect(line.hasPrefix("12D3KooW"))
        #expect(receiver.stdout.contains { $0.hasSuffix(": one") })
        #expect(try await receiver.terminate() == 143)
    }
}

