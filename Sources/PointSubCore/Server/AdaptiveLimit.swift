import Identity
import NIOConcurrencyHelpers

/// The server's limit on concurrent PointSub requests (issue 3; since issue 10 it counts requests
/// being read or handled, not open streams), adjusted by load:
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

    /// Whether `adjust` would apply the rule at `now` (the interval passed).
    public func isAdjustmentDue(now: ContinuousClock.Instant) -> Bool {
        configuration.isAdaptive && now - lastAdjustment >= configuration.adjustInterval
    }

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

/// Counts requests in progress against an `AdaptiveLimit`, in total and per peer; thread-safe
/// (one lock around all of it).
///
/// Why one peer cannot collapse the limit (issue 10: 1,000 idle streams held every slot and the
/// adaptive rule shrank the limit to its minimum, after which 100 idle streams sufficed):
/// - a slot is held only while a request is read, handled and answered, never by an idle stream
///   (the server takes it at a request's first bytes and gives it back once the reply is written);
/// - one peer holds at most `perPeerShare` of the current limit (at least 1), so an honest second
///   peer is served while the first saturates its share;
/// - the load the adaptive rule sees counts each peer's requests only up to
///   `min(perPeerShare, highLoad / 2)` of the limit: a single peer, however many slow requests it
///   keeps open, never raises the load above half the shrink threshold, so shrinking needs
///   several peers loading the server together (and it never goes below the configured minimum).
public final class ConnectionLimiter: Sendable {
    /// The outcome of `tryAcquire(for:)`.
    public enum Admission: Sendable, Equatable {
        /// A slot was taken; give it back with `release(for:)`.
        case admitted
        /// Every slot is taken.
        case atLimit
        /// The peer holds its share of the slots.
        case atPeerLimit
    }

    private struct State {
        var limit: AdaptiveLimit
        var active = 0
        var byPeer: [PeerID: Int] = [:]
    }

    /// Fraction of the current limit one peer may hold (0 < share ≤ 1; at least one slot).
    public let perPeerShare: Double
    private let state: NIOLockedValueBox<State>

    /// A limiter starting at `configuration.initial`; `perPeerShare` (clamped to 0...1, at least one
    /// slot) applies to `tryAcquire(for:)` only.
    public init(
        _ configuration: AdaptiveLimit.Configuration, perPeerShare: Double = 1, now: ContinuousClock.Instant = .now
    ) {
        self.perPeerShare = min(max(perPeerShare, 0), 1)
        state = NIOLockedValueBox(State(limit: AdaptiveLimit(configuration, now: now)))
    }

    /// Takes a slot unless `active` reached the (possibly just adjusted) limit; no per-peer share.
    public func tryAcquire(now: ContinuousClock.Instant = .now) -> Bool {
        state.withLockedValue { s in
            adjust(&s, now: now)
            guard s.active < s.limit.limit else { return false }
            s.active += 1
            return true
        }
    }

    /// Gives back a slot taken by `tryAcquire(now:)`.
    public func release(now: ContinuousClock.Instant = .now) {
        state.withLockedValue { s in
            precondition(s.active > 0, "release without acquire")
            s.active -= 1
            adjust(&s, now: now)
        }
    }

    /// Takes a slot for `peer` unless every slot is taken or `peer` holds its share.
    public func tryAcquire(for peer: PeerID, now: ContinuousClock.Instant = .now) -> Admission {
        state.withLockedValue { s in
            adjust(&s, now: now)
            guard s.active < s.limit.limit else { return .atLimit }
            let held = s.byPeer[peer] ?? 0
            guard held < peerShare(of: s.limit.limit) else { return .atPeerLimit }
            s.active += 1
            s.byPeer[peer] = held + 1
            return .admitted
        }
    }

    /// Gives back a slot taken by `tryAcquire(for:)`.
    public func release(for peer: PeerID, now: ContinuousClock.Instant = .now) {
        state.withLockedValue { s in
            precondition(s.active > 0, "release without acquire")
            s.active -= 1
            let held = s.byPeer[peer] ?? 0
            precondition(held > 0, "release without acquire for \(peer)")
            s.byPeer[peer] = held > 1 ? held - 1 : nil
            adjust(&s, now: now)
        }
    }

    /// The slots one peer may hold at `limit`.
    private func peerShare(of limit: Int) -> Int {
        max(1, Int(Double(limit) * perPeerShare))
    }

    private func adjust(_ s: inout State, now: ContinuousClock.Instant) {
        guard s.limit.isAdjustmentDue(now: now) else { return }
        // See the type's comment: each peer counts up to a cap well below the shrink threshold.
        let cap = max(1, Int(Double(s.limit.limit) * min(perPeerShare, s.limit.configuration.highLoad / 2)))
        var load = s.active
        for (_, held) in s.byPeer where held > cap { load -= held - cap }
        s.limit.adjust(active: load, now: now)
    }

    /// The current limit.
    public var limit: Int { state.withLockedValue { $0.limit.limit } }
    /// The slots taken now.
    public var active: Int { state.withLockedValue { $0.active } }
    /// The slots `peer` holds now.
    public func active(for peer: PeerID) -> Int { state.withLockedValue { $0.byPeer[peer] ?? 0 } }
    /// The slots one peer may hold now.
    public var perPeerLimit: Int { peerShare(of: limit) }
}
