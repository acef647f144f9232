/// Something that learns whether this node is reachable from the internet (AutoNAT v1's
/// ``AutoNATService``, AutoNAT v2's ``AutoNATv2Service``), for those who act on it (the DHT's
/// automatic mode).
public protocol ReachabilityReporting: AnyObject, Sendable {
    /// What is known now.
    var reachability: Reachability { get }
    /// Each change from now on (the current status first); ends when the reporter stops.
    func updates() -> AsyncStream<Reachability>
}
