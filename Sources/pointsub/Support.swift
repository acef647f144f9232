import Dispatch
import Foundation
import NIOConcurrencyHelpers
import PointSub

/// SIGINT/SIGTERM, caught from process start: a signal that arrives before a command waits for
/// it (say, right after the listen addresses are printed) is remembered, not lost or fatal.
final class TerminationSignal: Sendable {
    static let shared = TerminationSignal()

    private struct State {
        var fired = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = NIOLockedValueBox(State())
    private let queue = DispatchQueue(label: "pointsub.signals")
    /// Written once by `install()`, first thing in main, before any other task runs; only kept alive.
    nonisolated(unsafe) private var sources: [any DispatchSourceSignal] = []

    /// Installs the handlers; call once, first thing in main.
    func install() {
        for sig in [SIGINT, SIGTERM] {
            // libdispatch on Linux catches the signal with its own handler; ignoring it first keeps
            // the default action (termination) from racing the source's installation.
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
            source.setEventHandler { [self] in fire() }
            source.resume()
            sources.append(source)
        }
    }

    private func fire() {
        let waiters = state.withLockedValue { s in
            s.fired = true
            defer { s.waiters = [] }
            return s.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let already = state.withLockedValue { s in
                if !s.fired { s.waiters.append(continuation) }
                return s.fired
            }
            if already { continuation.resume() }
        }
    }
}

/// Suspends until SIGINT or SIGTERM has arrived (at any time since the process started).
func waitForTerminationSignal() async {
    await TerminationSignal.shared.wait()
}

/// "16MiB", "1M", "64KiB", "1048576" → bytes.
func parseSize(_ text: String) throws -> UInt64 {
    let units: [(String, UInt64)] = [
        ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10),
        ("B", 1),
    ]
    for (suffix, factor) in units where text.hasSuffix(suffix) {
        guard let n = UInt64(text.dropLast(suffix.count)) else { break }
        return n * factor
    }
    guard let n = UInt64(text) else { throw SizeError(text: text) }
    return n
}

struct SizeError: Error, CustomStringConvertible {
    let text: String
    var description: String { "not a size: \(text) (use e.g. 1048576, 64KiB, 16MiB)" }
}

func formatRate(bytes: UInt64, seconds: Double) -> String {
    guard seconds > 0 else { return "∞" }
    let mib = Double(bytes) / 1_048_576 / seconds
    return String(format: "%.1f MiB/s (%.0f Mbit/s)", mib, Double(bytes) * 8 / 1_000_000 / seconds)
}

extension Duration {
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }

    var milliseconds: Double { seconds * 1000 }
}
