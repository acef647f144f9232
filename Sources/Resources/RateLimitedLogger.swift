import Basics
import Logging
import NIOConcurrencyHelpers

/// A logger for lines a remote peer can cause at will (refusals, failed handshakes, timeouts):
/// per `key`, at most `burst` lines at once and `perSecond` lines a second after that. Lines
/// over the rate are counted, and the next line let through says how many were suppressed, so a
/// flood of 100,000 refusals writes a handful of lines, not 100,000.
public final class RateLimitedLogger: Sendable {
    private struct Bucket {
        var tokens: TokenBucket
        var suppressed = 0
    }

    /// The logger lines go to.
    public let logger: Logger
    private let perSecond: Double
    private let burst: Double
    private let buckets = NIOLockedValueBox([String: Bucket]())
    /// Keys tracked at once; beyond it the oldest buckets are dropped (a flood of distinct keys
    /// must not grow this without bound).
    private static let maxKeys = 1024

    /// `perSecond` lines a second per key after a burst of `burst`.
    public init(_ logger: Logger, perSecond: Double = 1, burst: Int = 10) {
        self.logger = logger
        self.perSecond = max(perSecond, 0.001)
        self.burst = Double(max(burst, 1))
    }

    /// Logs `message` at `level` unless lines with this `key` are over their rate. `key` groups
    /// lines that are the same kind of event ("handshake timeout"), not the same peer.
    public func log(
        _ level: Logger.Level, key: String, _ message: @autoclosure () -> Logger.Message,
        metadata: @autoclosure () -> Logger.Metadata = [:]
    ) {
        guard logger.logLevel <= level else { return }
        let now = ContinuousClock.now
        let suppressed = buckets.withLockedValue { buckets -> Int? in
            var bucket = buckets[key] ?? Bucket(tokens: TokenBucket(burst: burst, now: now))
            defer {
                if buckets[key] == nil, buckets.count >= Self.maxKeys { buckets.removeAll(keepingCapacity: true) }
                buckets[key] = bucket
            }
            guard bucket.tokens.take(rate: perSecond, burst: burst, now: now) else {
                bucket.suppressed += 1
                return nil
            }
            defer { bucket.suppressed = 0 }
            return bucket.suppressed
        }
        guard let suppressed else { return }
        var meta = metadata()
        if suppressed > 0 { meta["suppressed"] = "\(suppressed)" }
        logger.log(level: level, message(), metadata: meta)
    }
}
