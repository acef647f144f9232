/// A token bucket as a value: it holds at most `burst` tokens, refills at `rate` a second, and
/// each event that is let through takes one. For rate limits on what remote peers cause
/// (requests, log lines).
public struct TokenBucket: Sendable, Hashable {
    /// Tokens left (whole ones are spendable).
    public private(set) var tokens: Double
    /// When the bucket was last refilled.
    public private(set) var updated: ContinuousClock.Instant

    /// A full bucket.
    public init(burst: Double, now: ContinuousClock.Instant = .now) {
        self.tokens = burst
        self.updated = now
    }

    /// Refills for the time since the last call, then takes a token if there is one. Returns
    /// whether the event may go.
    public mutating func take(rate: Double, burst: Double, now: ContinuousClock.Instant = .now) -> Bool {
        tokens = min(burst, tokens + max(0, (now - updated).seconds) * rate)
        updated = now
        guard tokens >= 1 else { return false }
        tokens -= 1
        return true
    }
}
