import Foundation
import LibP2P
import NIOConcurrencyHelpers

/// The py-libp2p 0.8.1 peer of `Interop/peer.py`, run from the virtualenv that
/// `scripts/setup-interop.sh` makes. A missing virtualenv is a failure, never a skip.
enum PyPeer {
    static let repoRoot: URL = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url
    }()

    static var python: URL { repoRoot.appendingPathComponent("Interop/.venv/bin/python") }
    static var script: URL { repoRoot.appendingPathComponent("Interop/peer.py") }

    struct Missing: Error, CustomStringConvertible {
        var description: String {
            "py-libp2p virtualenv missing at \(PyPeer.python.path): run scripts/setup-interop.sh (the test command does)"
        }
    }

    struct Failed: Error, CustomStringConvertible {
        let description: String
    }

    static func checkInstalled() throws {
        guard FileManager.default.isExecutableFile(atPath: python.path) else { throw Missing() }
    }

    /// Runs `peer.py args…` to completion and returns its last stdout line parsed as JSON.
    static func run(_ arguments: [String], timeout: TimeInterval = 120) async throws -> [String: Any] {
        try checkInstalled()
        let process = Process()
        process.executableURL = python
        process.arguments = [script.path] + arguments
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
                throw Failed(description: "peer.py \(arguments.joined(separator: " ")) timed out")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        readers.wait()
        let (stdout, stderr) = box.withLockedValue { $0 }
        let lines = String(decoding: stdout, as: UTF8.self).split(separator: "\n")
        guard let last = lines.last,
            let object = try? JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any]
        else {
            throw Failed(
                description: "peer.py \(arguments.joined(separator: " ")) exited \(process.terminationStatus) without a JSON result\nstdout: \(String(decoding: stdout, as: UTF8.self))\nstderr: \(String(decoding: stderr.suffix(4000), as: UTF8.self))")
        }
        guard process.terminationStatus == 0, object["ok"] as? Bool != false else {
            throw Failed(description: "peer.py \(arguments.joined(separator: " ")) failed: \(last)\nstderr: \(String(decoding: stderr.suffix(4000), as: UTF8.self))")
        }
        return object
    }

    /// Plain text output of `peer.py args…` (for `id`).
    static func output(_ arguments: [String]) async throws -> String {
        try checkInstalled()
        let process = Process()
        process.executableURL = python
        process.arguments = [script.path] + arguments
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// A long-running `peer.py listen` process.
final class PyListener: Sendable {
    let process: Process
    let stdin: Pipe
    let address: String
    private let lines: NIOLockedValueBox<[String]>

    private init(process: Process, stdin: Pipe, address: String, lines: NIOLockedValueBox<[String]>) {
        self.process = process
        self.stdin = stdin
        self.address = address
        self.lines = lines
    }

    static func start(seed: UInt64) async throws -> PyListener {
        try PyPeer.checkInstalled()
        let process = Process()
        process.executableURL = PyPeer.python
        process.arguments = [PyPeer.script.path, "listen", "--seed", "\(seed)"]
        let out = Pipe()
        let input = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        process.standardInput = input
        try process.run()
        let lines = NIOLockedValueBox<[String]>([])
        let handle = out.fileHandleForReading
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
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if let line = lines.withLockedValue({ $0.first { $0.hasPrefix("LISTEN ") } }) {
                return PyListener(
                    process: process, stdin: input, address: String(line.dropFirst("LISTEN ".count)), lines: lines)
            }
            guard process.isRunning else { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        process.terminate()
        throw PyPeer.Failed(description: "peer.py listen did not print its address")
    }

    /// The first `identified` event line about `peer`, waiting up to `timeout`.
    func identified(peer: String, timeout: Duration = .seconds(20)) async throws -> [String: Any] {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            let found = lines.withLockedValue { lines in
                lines.compactMap { line -> [String: Any]? in
                    guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                        object["event"] as? String == "identified", object["peer"] as? String == peer
                    else { return nil }
                    return object
                }.first
            }
            if let found { return found }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw PyPeer.Failed(description: "py-libp2p never reported identifying \(peer)")
    }

    func stop() {
        try? stdin.fileHandleForWriting.close()
        let deadline = Date().addingTimeInterval(5)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
    }
}
