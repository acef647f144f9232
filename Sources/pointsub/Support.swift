import Dispatch
import Foundation
import PointSub

/// Suspends until SIGINT or SIGTERM arrives.
func waitForTerminationSignal() async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        let queue = DispatchQueue(label: "pointsub.signals")
        let once = SignalOnce(continuation)
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
            source.setEventHandler { once.fire() }
            source.resume()
            SignalOnce.keep(source)
        }
    }
}

private final class SignalOnce: @unchecked Sendable {
    // Touched only on the signal queue (and once at creation).
    private var continuation: CheckedContinuation<Void, Never>?
    nonisolated(unsafe) private static var sources: [any DispatchSourceSignal] = []

    init(_ continuation: CheckedContinuation<Void, Never>) {
        self.continuation = continuation
    }

    func fire() {
        continuation?.resume()
        continuation = nil
    }

    static func keep(_ source: any DispatchSourceSignal) {
        sources.append(source)
    }
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
