import NIOConcurrencyHelpers

/// The server's limit on concurrently open PointSub streams, adjusted by load (issue 3):
/// between `minimum` and `maximum`; load = active / limit; when load > `highLoad` the limit
/// drops by `step` (10 %), when load < `lowLoad` it grows by `step`; at most one adjustment per
/// `adjustInterval`. A plain value: the caller supplies the time, so tests drive it by hand.
public struct AdaptiveLimit: Sendable, Equatable {
    public struct Configuration: Sendable, Equatable {
        /// The limit to start with.
        public var initial = 1000
        public var minimum = 100
        public var maximum = 10_000
        public var adjustInterval: Duration = .seconds(1)
        public var highLoad = 0.8
        public var lowLoad = 0.4
        /// Fraction of the current limit added or removed per adjustment (at least 1).
        public var step = 0.1
        /// Off: the limit stays at `initial`.
        public var isAdaptive = true

        public init() {}

        /// A fixed limit (no adjustment).
        public static func fixed(_ limit: Int) -> Configuration {
            var c = Configuration()
            c.initial = limit
            c.minimum = limit
            c.maximum = limit
            c.isAdaptive = false
            return c
        }

        /// Why the configuration is unusable, or nil.
        func problem() -> String? {
            if minimum < 1 { return "connection limit minimum must be at least 1 (is \(minimum))" }
            if minimum > maximum { return "connection limit minimum \(minimum) exceeds maximum \(maximum)" }
            if initial < minimum || initial > maximum {
                return "initial connection limit \(initial) is outside \(minimum)...\(maximum)"
            }
            if adjustInterval <= .zero { return "adjust interval must be positive" }
            if !(0...1).contains(lowLoad) || !(0...1).contains(highLoad) || lowLoad >= highLoad {
                return "load thresholds must satisfy 0 ≤ lowLoad < highLoad ≤ 1"
            }
            if !(step > 0 && step < 1) { return "step must be between 0 and 1 (exclusive)" }
            return nil
        }
    }

    public let configuration: Configuration
    public private(set) var limit: Int
    private var lastAdjustment: ContinuousClock.Instant

    public init(_ configuration: Configuration, now: ContinuousClock.Instant = .now) {
        self.configuration = configuration
        self.limit = configuration.initial
        self.lastAdjustment = now
    }

    public func load(active: Int) -> Double { Double(active) / Double(limit) }

    /// Applies the rule if `adjustInterval` passed since the last adjustment. Returns whether
    /// the limit changed.
    @discardableResult
    public mutating func adjust(active: Int, now: ContinuousClock.Instant) -> Bool {
        guard configuration.isAdaptive, now - lastAdjustment >= configuration.adjustInterval else { return false }
        lastAdjustment = now
        let load = load(active: active)
        let delta = max(1, Int((Double(limit) * configuration.step).rounded()))
        let old = limit
        if load > configuration.highLoad {
            limit = max(configuration.minimum, limit - delta)
        } else if load < configuration.lowLoad {
            limit = min(configuration.maximum, limit + delta)
        }
        return limit != old
    }
}

/// Counts open streams against an `AdaptiveLimit`; thread-safe (one lock around both).
public final class ConnectionLimiter: Sendable {
    private let state: NIOLockedValueBox<(limit: AdaptiveLimit, active: Int)>

    public init(_ configuration: AdaptiveLimit.Configuration, now: ContinuousClock.Instant = .now) {
        state = NIOLockedValueBox((AdaptiveLimit(configuration, now: now), 0))
    }

    /// Takes a slot unless `active` reached the (possibly just adjusted) limit.
    public func tryAcquire(now: ContinuousClock.Instant = .now) -> Bool {
        state.withLockedValue { s in
            s.limit.adjust(active: s.active, now: now)
            guard s.active < s.limit.limit else { return false }
            s.active += 1
            return true
        }
    }

    public func release(now: ContinuousClock.Instant = .now) {
        state.withLockedValue { s in
            precondition(s.active > 0, "release without acquire")
            s.active -= 1
            s.limit.adjust(active: s.active, now: now)
        }
    }

    public var limit: Int { state.withLockedValue { $0.limit.limit } }
    public var active: Int { state.withLockedValue { $0.active } }
}
