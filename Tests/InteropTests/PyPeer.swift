import Foundation
import LibP2P
import TestSupport

/// The py-libp2p 0.8.1 peer of `Interop/peer.py`, run from the virtualenv that
/// `scripts/setup-interop.sh` makes. A missing virtualenv is a failure, never a skip.
enum PyPeer {
    static var python: URL { ChildProcess.repoRoot.appendingPathComponent("Interop/.venv/bin/python") }
    static var script: URL { ChildProcess.repoRoot.appendingPathComponent("Interop/peer.py") }

    static func checkInstalled() throws {
        guard FileManager.default.isExecutableFile(atPath: python.path) else {
            throw ChildProcess.Failure(
                "py-libp2p virtualenv missing at \(python.path): run scripts/setup-interop.sh (the test command does)")
        }
    }

    /// Runs `peer.py args…` to completion and returns its last stdout line parsed as JSON.
    static func run(_ arguments: [String], timeout: TimeInterval = 120) async throws -> [String: Any] {
        try checkInstalled()
        let output = try await ChildProcess.run(python, [script.path] + arguments, timeout: timeout)
        let command = "peer.py \(arguments.joined(separator: " "))"
        guard let last = output.stdout.split(separator: "\n").last,
            let object = try? JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any]
        else {
            throw ChildProcess.Failure(
                "\(command) exited \(output.status) without a JSON result\nstdout: \(output.stdout)\nstderr: \(output.stderr.suffix(4000))")
        }
        guard output.status == 0, object["ok"] as? Bool != false else {
            throw ChildProcess.Failure("\(command) failed: \(last)\nstderr: \(output.stderr.suffix(4000))")
        }
        return object
    }

    /// Plain text output of `peer.py args…` (for `id`).
    static func output(_ arguments: [String]) async throws -> String {
        try checkInstalled()
        let output = try await ChildProcess.run(python, [script.path] + arguments, timeout: 60)
        return output.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// A long-running `peer.py listen` process.
final class PyListener: Sendable {
    let running: ChildProcess.Running
    let address: String

    private init(running: ChildProcess.Running, address: String) {
        self.running = running
        self.address = address
    }

    /// `extraArguments` go after `--seed N`, e.g. `["--key-type", "secp256k1"]`.
    static func start(seed: UInt64, _ extraArguments: [String] = []) async throws -> PyListener {
        try PyPeer.checkInstalled()
        let running = try ChildProcess.Running(
            PyPeer.python, [PyPeer.script.path, "listen", "--seed", "\(seed)"] + extraArguments)
        do {
            let line = try await running.firstLine(timeout: .seconds(60)) { $0.hasPrefix("LISTEN ") }
            return PyListener(running: running, address: String(line.dropFirst("LISTEN ".count)))
        } catch {
            _ = try? await running.stop(signal: SIGKILL)
            throw error
        }
    }

    /// The first `identified` event line about `peer`, waiting up to `timeout`.
    func identified(peer: String, timeout: Duration = .seconds(20)) async throws -> [String: Any] {
        func parse(_ line: String) -> [String: Any]? {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                object["event"] as? String == "identified", object["peer"] as? String == peer
            else { return nil }
            return object
        }
        let line = try await running.firstLine(timeout: timeout) { parse($0) != nil }
        return parse(line)!
    }

    /// Closes its stdin (it exits 0 on EOF).
    func stop() async {
        _ = try? await running.stop()
    }
}
