/// Whether this node can be dialed from the internet, as AutoNAT found out.
public enum Reachability: String, Sendable, Hashable {
    /// Not known yet (no server answered, or only refusals).
    case unknown
    /// Servers dialed us back: we are publicly reachable.
    case `public`
    /// Servers could not dial us back: we are behind a NAT or firewall.
    case `private`
}

/// Turns AutoNAT answers into a reachability status with hysteresis (as go-libp2p does): the first
/// answer sets a status; answers that agree raise the confidence (up to `maxConfidence`); an
/// answer that disagrees lowers it, and flips the status only when the confidence is already 0.
/// So once confident, it takes `maxConfidence + 1` contrary answers in a row to change its mind.
/// Refusals and errors say nothing about reachability and change nothing. A value type, no I/O.
public struct ReachabilityTracker: Sendable, Hashable {
    /// The current status.
    public private(set) var status = Reachability.unknown
    /// Agreeing answers since the status was set, at most `maxConfidence`.
    public private(set) var confidence = 0
    /// The confidence at which agreeing answers stop counting.
    public let maxConfidence: Int

    /// A tracker with no answers yet.
    public init(maxConfidence: Int = 3) {
        self.maxConfidence = maxConfidence
    }

    /// Records one answer: `true` when a server dialed us back, `false` when its dials failed.
    /// Returns true when the status changed.
    public mutating func record(dialedBack: Bool) -> Bool {
        let observed: Reachability = dialedBack ? .public : .private
        if status == observed {
            confidence = min(confidence + 1, maxConfidence)
            return false
        }
        if status != .unknown, confidence > 0 {
            confidence -= 1
            return false
        }
        status = observed
        confidence = 0
        return true
    }

    /// Forgets what was learned (e.g. after the listen addresses changed).
    public mutating func reset() {
        status = .unknown
        confidence = 0
    }
}
