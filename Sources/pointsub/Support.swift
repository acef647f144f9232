import Dispatch
import Foundation
import NIOConcurrencyHelpers
import PointSub

/// SIGINT/SIGTERM, caught from process start: a signal that arrives before the command's
/// ServiceGroup listens for it (say, right after the listen addresses are printed) is remembered,
/// not lost or fatal. The first signal starts a graceful shutdown (see `runOnServiceGroup`); the
/// process then exits with 128 + the signal's number (130 for SIGINT, 143 for SIGTERM). A second
/// signal, or a shutdown that takes longer than `watchdog`, ends the process at once with that status.
final class TerminationSignal: Sendable {
    static let shared = TerminationSignal()

    /// How long a graceful shutdown may take before the process exits anyway.
    static let watchdog: DispatchTimeInterval = .seconds(5)

    private struct State {
        var received: Int32?
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = NIOLockedValueBox(State())
    private let queue = DispatchQueue(label: "pointsub.signals")
    /// Written once by `install()`, first thing in main, before any other task runs; only kept alive.
    nonisolated(unsafe) private var sources: [any DispatchSourceSignal] = []

    /// Installs the handlers; call once, first thing in main. Returns once libdispatch has
    /// registered them (at most a second): registration is asynchronous, and a signal that comes
    /// after SIG_IGN but before the registration would be lost.
    func install() {
        let registered = DispatchGroup()
        for sig in [SIGINT, SIGTERM] {
            // libdispatch on Linux catches the signal with its own handler; ignoring it first keeps
            // the default action (termination) from racing the source's installation.
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
            source.setEventHandler { [self] in fire(sig) }
            registered.enter()
            source.setRegistrationHandler { registered.leave() }
            source.resume()
            sources.append(source)
        }
        _ = registered.wait(timeout: .now() + .seconds(1))
    }

    /// The first signal, waiting up to `timeout` for it: a signal that ServiceLifecycle's handler
    /// saw may still be on its way to ours (each runs on its own dispatch queue).
    func awaitReceived(timeout: Duration) async -> Int32? {
        let deadline = Deadline.after(timeout)
        while !deadline.hasPassed {
            if let received { return received }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return received
    }

    /// The first signal received, if any.
    var received: Int32? { state.withLockedValue { $0.received } }

    /// The exit status for the signal received (128 + its number), if any.
    var exitStatus: Int32? { received.map { 128 + $0 } }

    private func fire(_ sig: Int32) {
        let (first, waiters) = state.withLockedValue { s in
            defer { s.waiters = [] }
            let first = s.received == nil
            if first { s.received = sig }
            return (first, s.waiters)
        }
        guard first else {
            // A second Ctrl-C: the user does not want to wait for the drain.
            exit(128 + sig)
        }
        for waiter in waiters { waiter.resume() }
        queue.asyncAfter(deadline: .now() + Self.watchdog) {
            FileHandle.standardError.write(Data("error: shutdown took longer than \(Self.watchdog); exiting\n".utf8))
            exit(128 + sig)
        }
    }

    /// Suspends until SIGINT or SIGTERM has arrived (at any time since the process started).
    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let already = state.withLockedValue { s in
                if s.received == nil { s.waiters.append(continuation) }
                return s.received != nil
            }
            if already { continuation.resume() }
        }
    }
}

/// A byte count given on the command line: plain bytes (`1048576`), decimal units (`512KB`,
/// `1MB` = 10^6, `4GB`, `1TB`), binary units (`64KiB`, `1MiB` = 2^20, `4GiB`, `1TiB`, and the
/// short `K`, `M`, `G`, `T`), with a fraction where it comes to whole bytes (`1.5MiB`).
struct ByteSize: Sendable, Hashable, CustomStringConvertible {
    /// The number of bytes.
    let bytes: UInt64
    /// What was given on the command line.
    let text: String

    init(bytes: UInt64, text: String) {
        self.bytes = bytes
        self.text = text
    }

    /// `bytes` written back as the shortest binary form (`1MiB`) when that is exact, else plain.
    init(bytes: UInt64) {
        self.bytes = bytes
        var text = "\(bytes)"
        for (suffix, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] as [(String, UInt64)]
        where bytes > 0 && bytes % (1 << shift) == 0 {
            text = "\(bytes >> shift)\(suffix)"
            break
        }
        self.text = text
    }

    var description: String { text }

    private static let units: [(suffix: String, factor: UInt64)] = [
        ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40),
        ("kB", 1_000), ("KB", 1_000), ("MB", 1_000_000), ("GB", 1_000_000_000), ("TB", 1_000_000_000_000),
        ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40), ("B", 1),
    ]

    /// Parses `text`; throws `SizeError` for anything else, including sizes above 2^64 - 1 bytes.
    /// Never traps: every multiplication and addition is checked.
    static func parse(_ text: String) throws(SizeError) -> ByteSize {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        var number = Substring(trimmed)
        var factor: UInt64 = 1
        // Longest suffixes first within each family: "MiB" before "B", "KB" before "B".
        for unit in units.sorted(by: { $0.suffix.count > $1.suffix.count }) where trimmed.hasSuffix(unit.suffix) {
            number = trimmed.dropLast(unit.suffix.count)
            factor = unit.factor
            break
        }
        number = Substring(number.trimmingCharacters(in: .whitespaces))
        let parts = number.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        guard let whole = parts.first, !whole.isEmpty, whole.allSatisfy(\.isASCIIDigit) else {
            throw SizeError(text: text, reason: .malformed)
        }
        let fraction = parts.count == 2 ? parts[1] : ""
        guard fraction.allSatisfy(\.isASCIIDigit), parts.count == 1 || !fraction.isEmpty else {
            throw SizeError(text: text, reason: .malformed)
        }
        // whole × factor, checked.
        guard let wholeValue = UInt64(whole) else { throw SizeError(text: text, reason: .tooLarge) }
        let (scaled, overflow) = wholeValue.multipliedReportingOverflow(by: factor)
        guard !overflow else { throw SizeError(text: text, reason: .tooLarge) }
        var total = scaled
        if !fraction.isEmpty {
            // fraction / 10^digits × factor must be a whole number of bytes. Digits beyond 19
            // cannot be represented (and cannot matter for a factor ≤ 2^40 unless they are zeros).
            let significant = String(fraction.reversed().drop(while: { $0 == "0" }).reversed())
            guard significant.count <= 18, let numerator = UInt64(significant.isEmpty ? "0" : significant) else {
                throw SizeError(text: text, reason: .fractionalBytes)
            }
            var denominator: UInt64 = 1
            for _ in 0..<significant.count { denominator *= 10 }
            // numerator × factor / denominator, in 128 bits.
            let product = numerator.multipliedFullWidth(by: factor)
            guard product.high < denominator else { throw SizeError(text: text, reason: .tooLarge) }
            let (quotient, remainder) = denominator.dividingFullWidth(product)
            guard remainder == 0 else { throw SizeError(text: text, reason: .fractionalBytes) }
            let (sum, sumOverflow) = total.addingReportingOverflow(quotient)
            guard !sumOverflow else { throw SizeError(text: text, reason: .tooLarge) }
            total = sum
        }
        return ByteSize(bytes: total, text: trimmed)
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}

/// Why a size given on the command line was not accepted.
struct SizeError: Error, CustomStringConvertible {
    enum Reason { case malformed, tooLarge, fractionalBytes }
    let text: String
    let reason: Reason

    var description: String {
        switch reason {
        case .malformed: "not a size: \(text) (use e.g. 1048576, 512KB, 1MB, 1.5MiB, 4GiB)"
        case .tooLarge: "size too large: \(text) (at most 2^64 - 1 bytes)"
        case .fractionalBytes: "not a whole number of bytes: \(text)"
        }
    }
}

/// "16MiB", "1MB", "1.5MiB", "1048576" → bytes (see ``ByteSize``).
func parseSize(_ text: String) throws(SizeError) -> UInt64 {
    try ByteSize.parse(text).bytes
}

func formatRate(bytes: UInt64, seconds: Double) -> String {
    guard seconds > 0 else { return "∞" }
    let mib = Double(bytes) / 1_048_576 / seconds
    return String(format: "%.1f MiB/s (%.0f Mbit/s)", mib, Double(bytes) * 8 / 1_000_000 / seconds)
}

/// Writes `line` and a newline to stderr (unbuffered: progress and status reach the user at once).
func printError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}

/// Writes `object` as one JSON line on stdout (sorted keys, so lines are stable).
func printJSON(_ object: [String: Any]) throws {
    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
    print(String(decoding: data, as: UTF8.self))
    fflush(nil)
}

/// Calls `report` about once a second (on stderr, by convention) until cancelled; for long
/// transfers, so a user sees that something is happening. Returns the task to cancel.
func startProgress(_ report: @escaping @Sendable (Duration) -> Void) -> Task<Void, Never> {
    Task {
        let clock = ContinuousClock()
        let start = clock.now
        var next = start + .seconds(1)
        while !Task.isCancelled {
            do { try await Task.sleep(until: next, clock: clock) } catch { return }
            report(clock.now - start)
            next += .seconds(1)
        }
    }
}

extension Duration {
    /// The duration in milliseconds (`seconds` is Basics' conversion).
    var milliseconds: Double { seconds * 1000 }
}
