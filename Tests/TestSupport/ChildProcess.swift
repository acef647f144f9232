import Foundation
import NIOConcurrencyHelpers

/// Runs programs for tests (the `pointsub` binary, the py-libp2p peer): to completion, or
/// long-running with their stdout collected line by line. Every wait is bounded.
public enum ChildProcess {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        public init(_ description: String) { self.description = description }
    }

    public struct Output: Sendable {
        public var status: Int32
        public var stdout: String
        public var stderr: String
    }

    /// The repository root (this file is Tests/TestSupport/ChildProcess.swift).
    public static let repoRoot: URL = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url
    }()

    /// Runs `executable arguments…` with no stdin and returns its exit status and output.
    public static func run(_ executable: URL, _ arguments: [String], timeout: TimeInterval) async throws -> Output {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let box = NIOLockedValueBox<(Data, Data)>((Data(), Data()))
        let readers = DispatchGroup()
        for (index, pipe) in [out, err].enumerated() {
            readers.enter()
            DispatchQueue.global().async {
                let data = pipe.fileHandleForReading.readDataToEndOfFile()
                box.withLockedValue { if index == 0 { $0.0 = data } else { $0.1 = data } }
                readers.leave()
            }
        }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning {
            if Date() > deadline {
                process.terminate()
                throw Failure("\(executable.lastPathComponent) \(arguments.joined(separator: " ")) timed out")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        readers.wait()
        let (stdout, stderr) = box.withLockedValue { $0 }
        return Output(
            status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
            stderr: String(decoding: stderr, as: UTF8.self))
    }

    /// A long-running process whose stdout lines are collected as they arrive.
    public final class Running: Sendable {
        public let process: Process
        private let stdin: Pipe
        private let collected: NIOLockedValueBox<[String]>
        private let collectedErrors: NIOLockedValueBox<[String]>
        /// Guards stdin: true once `stop()` closed it.
        private let stdinClosed = NIOLockedValueBox(false)

        /// Starts it with stdin on a pipe that stays open until `stop()`. With `captureStderr` its
        /// stderr lines are kept in `errorLines` (for failure messages); otherwise they are dropped.
        public init(_ executable: URL, _ arguments: [String], captureStderr: Bool = false) throws {
            let process = Process()
            process.executableURL = executable
            process.arguments = arguments
            let out = Pipe()
            let err = captureStderr ? Pipe() : nil
            let input = Pipe()
            process.standardOutput = out
            process.standardError = err ?? FileHandle.nullDevice
            process.standardInput = input
            try process.run()
            let lines = NIOLockedValueBox<[String]>([])
            let errors = NIOLockedValueBox<[String]>([])
            Self.collectLines(from: out.fileHandleForReading, into: lines)
            if let err { Self.collectLines(from: err.fileHandleForReading, into: errors) }
            self.process = process
            self.stdin = input
            self.collected = lines
            self.collectedErrors = errors
        }

        /// Reads `handle` to its end on a thread of its own, appending each complete line.
        private static func collectLines(from handle: FileHandle, into lines: NIOLockedValueBox<[String]>) {
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

        public var lines: [String] { collected.withLockedValue { $0 } }

        /// Its stderr lines so far (always empty unless started with `captureStderr`).
        public var errorLines: [String] { collectedErrors.withLockedValue { $0 } }

        /// Writes `line` and a newline to its stdin. Throws when the process has closed its stdin
        /// or exited (SIGPIPE is ignored in this process from the first call on, so a dead reader
        /// is an error here, not the end of the test run).
        public func send(_ line: String) throws {
            _ = Self.ignoreSIGPIPE
            try stdinClosed.withLockedValue { closed in
                guard !closed else { throw Failure("stdin of \(process.executableURL?.lastPathComponent ?? "process") is closed") }
                try stdin.fileHandleForWriting.write(contentsOf: Data((line + "\n").utf8))
            }
        }

        /// Closes its stdin (idempotent); many programs exit on EOF.
        public func closeStdin() {
            stdinClosed.withLockedValue { closed in
                guard !closed else { return }
                closed = true
                try? stdin.fileHandleForWriting.close()
            }
        }

        private static let ignoreSIGPIPE: Void = { _ = signal(SIGPIPE, SIG_IGN) }()

        /// The first line matching `predicate`, waiting up to `timeout`.
        public func firstLine(timeout: Duration, where predicate: (String) -> Bool) async throws -> String {
            let clock = ContinuousClock()
            let deadline = clock.now + timeout
            while clock.now < deadline {
                if let line = lines.first(where: predicate) { return line }
                guard process.isRunning else { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            throw Failure("\(process.executableURL?.lastPathComponent ?? "process") printed no matching line")
        }

        /// Sends `signal` and waits (bounded) for the exit; returns the exit status.
        @discardableResult
        public func stop(signal: Int32? = nil, timeout: TimeInterval = 15) async throws -> Int32 {
            if let signal {
                kill(process.processIdentifier, signal)
            } else {
                closeStdin()
            }
            let deadline = Date().addingTimeInterval(timeout)
            while process.isRunning, Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
            if process.isRunning {
                process.terminate()
                throw Failure("did not exit within \(timeout) s")
            }
            return process.terminationStatus
        }
    }
}
