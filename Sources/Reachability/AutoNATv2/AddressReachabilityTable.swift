import Multiformats

/// What AutoNAT v2 learned about each of our addresses, and which ones are due for a test. A
/// value type, no I/O.
///
/// Each address keeps its last `2 × confirmations − 1` results; it is public once
/// `confirmations` of them are successful dial-backs, private once `confirmations` are failed
/// ones, unknown before either (the spec suggests more than 3 servers agreeing; go-libp2p asks
/// for a confidence of 3). So a known status changes only when a majority of recent results
/// says otherwise, and one lying server cannot flip it on its own.
public struct AddressReachabilityTable: Sendable {
    /// The results an address keeps, and when it was last tested.
    public struct Entry: Sendable, Hashable {
        /// Recent results, oldest first: `true` for a dial-back that reached us.
        public fileprivate(set) var results: [Bool] = []
        /// The status the results give.
        public fileprivate(set) var status = Reachability.unknown
        /// When a server was last asked about it.
        public fileprivate(set) var lastTested: ContinuousClock.Instant?
    }

    /// Agreeing results needed for a status.
    public let confirmations: Int
    /// Most addresses tracked (addresses beyond it are not tested until others go).
    public let capacity: Int
    /// The tracked addresses.
    public private(set) var entries: [Multiaddr: Entry] = [:]

    /// An empty table.
    public init(confirmations: Int = 3, capacity: Int = 64) {
        precondition(confirmations >= 1 && capacity >= 1)
        self.confirmations = confirmations
        self.capacity = capacity
    }

    /// The status of `address` (unknown when untracked).
    public func status(of address: Multiaddr) -> Reachability { entries[address]?.status ?? .unknown }

    /// Addresses with a known status.
    public var known: [Multiaddr: Reachability] {
        entries.compactMapValues { $0.status == .unknown ? nil : $0.status }
    }

    /// The node's reachability from its addresses: public when any address is, private when
    /// some are known and all of those are private, unknown otherwise.
    public var overall: Reachability {
        let statuses = entries.values.map(\.status).filter { $0 != .unknown }
        if statuses.contains(.public) { return .public }
        return statuses.isEmpty ? .unknown : .private
    }

    /// Notes that a server is being asked about `address` now.
    public mutating func markTested(_ address: Multiaddr, now: ContinuousClock.Instant) {
        guard entries[address] != nil || entries.count < capacity else { return }
        entries[address, default: Entry()].lastTested = now
    }

    /// Records a result for `address`; returns true when its status changed.
    @discardableResult
    public mutating func record(_ address: Multiaddr, reachable: Bool) -> Bool {
        guard entries[address] != nil || entries.count < capacity else { return false }
        var entry = entries[address] ?? Entry()
        entry.results.append(reachable)
        if entry.results.count > 2 * confirmations - 1 { entry.results.removeFirst() }
        let successes = entry.results.filter { $0 }.count
        let failures = entry.results.count - successes
        let old = entry.status
        if successes >= confirmations {
            entry.status = .public
        } else if failures >= confirmations {
            entry.status = .private
        }
        entries[address] = entry
        return entry.status != old
    }

    /// Forgets addresses that are not `current` any more (a listen address closed, an observed
    /// address that nobody reports now). Returns true when a known status went with them.
    @discardableResult
    public mutating func keep(only current: Set<Multiaddr>) -> Bool {
        let gone = entries.keys.filter { !current.contains($0) }
        let hadStatus = gone.contains { entries[$0]?.status != .unknown }
        gone.forEach { entries.removeValue(forKey: $0) }
        return hadStatus
    }

    /// Of `candidates`, those due for a test, most needed first: never tested, then unknown ones
    /// not tested for `retryInterval`, then known ones not tested for `recheckInterval`.
    public func due(
        _ candidates: [Multiaddr], now: ContinuousClock.Instant, retryInterval: Duration, recheckInterval: Duration
    ) -> [Multiaddr] {
        var fresh: [Multiaddr] = [], unknown: [Multiaddr] = [], known: [Multiaddr] = []
        for address in candidates {
            guard let entry = entries[address], let tested = entry.lastTested else {
                if entries[address] != nil || entries.count < capacity { fresh.append(address) }
                continue
            }
            if entry.status == .unknown {
                if now - tested >= retryInterval { unknown.append(address) }
            } else if now - tested >= recheckInterval {
                known.append(address)
            }
        }
        return fresh + unknown + known
    }
}
