import Basics
import Identity
import Multiformats
import NIOConcurrencyHelpers

/// An address of ours as other peers saw it (identify's `observedAddr`), with how many confirm it.
public struct ObservedAddress: Sendable, Hashable {
    /// What the peers saw, e.g. `/ip4/203.0.113.7/tcp/4001` (never with `/p2p/`).
    public let address: Multiaddr
    /// How many distinct peers currently report it.
    public let reporters: Int
    /// How many distinct observation groups report it: the reporters' source addresses, an IPv4
    /// address each, an IPv6 /56 each (go-libp2p's observed-address manager groups IPv6 so too),
    /// so that many peer IDs behind one address count once.
    public let groups: Int
    /// When it was last reported.
    public let lastSeen: ContinuousClock.Instant
}

/// The observed addresses reported by other peers: at most one per reporting peer and address
/// shape (so a peer cannot vote twice, but may see us over IPv4 and IPv6), bounded in size.
///
/// A value type without I/O; `ObservedAddressBook` is the thread-safe one the host holds.
/// Observations from an open connection stay; once the connection closed they expire after
/// `ttlAfterClose`.
public struct ObservedAddressTable: Sendable {
    /// Bounds of the table.
    public struct Limits: Sendable, Hashable {
        /// Distinct observed addresses kept; past it the weakest address (fewest groups, then
        /// oldest) is dropped.
        public var maxAddresses = 64
        /// Observations kept in all (one per reporting peer and address shape).
        public var maxObservations = 1024
        /// Observations kept per reporting peer (it may report several shapes: ip4/tcp, ip6/tcp…).
        public var maxPerReporter = 4
        /// The largest observed address accepted, in bytes.
        public var maxAddressBytes = 256
        /// How long an observation outlives the connection it came over.
        public var ttlAfterClose: Duration = .seconds(600)

        /// The default limits.
        public static let defaults = Limits()

        /// The default limits.
        public init() {}
    }

    /// Why an observation was not recorded. Equality (and hashing) consider only `code`, so
    /// `#expect(throws: ObservedAddressTable.Rejection.transportMismatch)` matches any such error.
    public struct Rejection: CodedError, Hashable {
        /// The kinds of rejection.
        public enum Code: String, ErrorCode {
            /// Not an IP address with a TCP or UDP port, or a relayed one, or too long.
            case notAnObservableAddress
            /// Another IP family or transport than the connection it was reported over.
            case transportMismatch
        }

        /// Why the observation was rejected.
        public var code: Code
        /// The same, for people.
        public var message: String
        /// None: a rejection is decided here.
        public var cause: (any Error)? { nil }

        /// A rejection of kind `code`.
        public init(_ code: Code, _ message: String) {
            self.code = code
            self.message = message
        }

        /// Equal when the codes are.
        public static func == (lhs: Self, rhs: Self) -> Bool { lhs.code == rhs.code }
        /// Hashes the code only, consistent with `==`.
        public func hash(into hasher: inout Hasher) { hasher.combine(code) }

        /// Not an IP address with a TCP or UDP port, or a relayed one, or too long.
        public static let notAnObservableAddress = Rejection(
            .notAnObservableAddress, "not an IP address with a TCP or UDP port, or relayed, or too long")
        /// Another IP family or transport than the connection it was reported over.
        public static let transportMismatch = Rejection(
            .transportMismatch, "another IP family or transport than the connection it came over")
    }

    private struct Key: Hashable {
        var reporter: PeerID
        var shape: [UInt64]
    }

    private struct Observation {
        var address: Multiaddr
        var group: [UInt8]
        var connectionID: UInt64
        var seen: ContinuousClock.Instant
        var closedAt: ContinuousClock.Instant?
    }

    /// The limits in force.
    public let limits: Limits
    private var observations: [Key: Observation] = [:]

    /// An empty table.
    public init(limits: Limits = .defaults) {
        self.limits = limits
    }

    /// How many observations are held (at most `limits.maxObservations`).
    public var observationCount: Int { observations.count }

    /// Records that `reporter`, connected from `reporterAddress` over the connection
    /// `connectionID` whose local end is `localAddress`, saw us at `observed`. Replaces that peer's
    /// previous observation of the same shape.
    public mutating func record(
        _ observed: Multiaddr, reporter: PeerID, reporterAddress: Multiaddr, localAddress: Multiaddr?,
        connectionID: UInt64, now: ContinuousClock.Instant
    ) throws(Rejection) {
        let address = try Self.validate(observed, localAddress: localAddress, maxBytes: limits.maxAddressBytes)
        let key = Key(reporter: reporter, shape: address.components.map(\.code))
        expire(now: now)
        if observations[key] == nil {
            // Room for one more of this reporter, and in all.
            let own = observations.filter { $0.key.reporter == reporter }
            if own.count >= limits.maxPerReporter, let oldest = own.min(by: { $0.value.seen < $1.value.seen }) {
                observations[oldest.key] = nil
            }
            if observations.count >= limits.maxObservations { evictWeakest(sparing: address) }
        }
        observations[key] = Observation(
            address: address, group: Self.group(of: reporterAddress), connectionID: connectionID, seen: now, closedAt: nil)
        if Set(observations.values.map(\.address)).count > limits.maxAddresses { evictWeakest(sparing: address) }
    }

    /// The connection `connectionID` closed: its observations expire `ttlAfterClose` from `now`.
    public mutating func connectionClosed(_ connectionID: UInt64, now: ContinuousClock.Instant) {
        for (key, observation) in observations where observation.connectionID == connectionID && observation.closedAt == nil {
            observations[key]?.closedAt = now
        }
    }

    /// Drops the observations whose connection closed more than `ttlAfterClose` ago.
    public mutating func expire(now: ContinuousClock.Instant) {
        let ttl = limits.ttlAfterClose
        observations = observations.filter { entry in
            guard let closed = entry.value.closedAt else { return true }
            return now - closed < ttl
        }
    }

    /// The observed addresses, most confirmed first (groups, then reporters, then most recent).
    public func addresses() -> [ObservedAddress] {
        var byAddress: [Multiaddr: (reporters: Set<PeerID>, groups: Set<[UInt8]>, last: ContinuousClock.Instant)] = [:]
        for (key, observation) in observations {
            var entry = byAddress[observation.address] ?? ([], [], observation.seen)
            entry.reporters.insert(key.reporter)
            entry.groups.insert(observation.group)
            entry.last = max(entry.last, observation.seen)
            byAddress[observation.address] = entry
        }
        return byAddress.map {
            ObservedAddress(address: $0.key, reporters: $0.value.reporters.count, groups: $0.value.groups.count, lastSeen: $0.value.last)
        }.sorted {
            if $0.groups != $1.groups { return $0.groups > $1.groups }
            if $0.reporters != $1.reporters { return $0.reporters > $1.reporters }
            if $0.lastSeen != $1.lastSeen { return $0.lastSeen > $1.lastSeen }
            return $0.address.description < $1.address.description
        }
    }

    /// Drops every observation of the weakest address other than `sparing` (fewest groups, then
    /// least recently seen), so that one well-confirmed address survives a flood of one-off ones.
    private mutating func evictWeakest(sparing: Multiaddr) {
        let candidates = addresses().filter { $0.address != sparing }
        guard let weakest = candidates.min(by: {
            if $0.groups != $1.groups { return $0.groups < $1.groups }
            return $0.lastSeen < $1.lastSeen
        }) else { return }
        observations = observations.filter { $0.value.address != weakest.address }
    }

    /// `observed` without a trailing `/p2p/`, if it is something a peer can see us at: `/ip4` or
    /// `/ip6` (not unspecified) then `/tcp` or `/udp` with a port, not relayed, of the same IP
    /// family and transport as the connection's local address (go-libp2p checks the same).
    static func validate(_ observed: Multiaddr, localAddress: Multiaddr?, maxBytes: Int) throws(Rejection) -> Multiaddr {
        let address = observed.removingPeerID()
        guard address.bytes.count <= maxBytes, address.components.count >= 2 else { throw .notAnObservableAddress }
        switch address.components[0] {
        case .ip4(let ip) where !ip.isUnspecified: break
        case .ip6(let ip) where ip != .unspecified: break
        default: throw .notAnObservableAddress
        }
        switch address.components[1] {
        case .tcp(let port) where port != 0, .udp(let port) where port != 0: break
        default: throw .notAnObservableAddress
        }
        for component in address.components {
            switch component {
            case .p2p, .p2pCircuit: throw .notAnObservableAddress
            default: continue
            }
        }
        if let local = localAddress?.components, local.count >= 2,
            local[0].code != address.components[0].code || local[1].code != address.components[1].code
        {
            throw .transportMismatch
        }
        return address
    }

    /// The observation group of a reporter's source address: its IPv4 address, or its IPv6 /56.
    static func group(of source: Multiaddr) -> [UInt8] {
        switch source.components.first {
        case .ip4(let ip)?: return [4] + ip.bytes
        case .ip6(let ip)?: return [6] + ip.bytes.prefix(7)
        default: return [0] + source.bytes.prefix(64)
        }
    }
}

/// The host's table of observed addresses (`P2PHost.observedAddresses`); safe from any task.
/// Identify records into it; the address manager (NAT traversal) reads it.
public final class ObservedAddressBook: Sendable {
    private let table: NIOLockedValueBox<ObservedAddressTable>

    /// An empty book with `limits`.
    public init(limits: ObservedAddressTable.Limits = .defaults) {
        table = NIOLockedValueBox(ObservedAddressTable(limits: limits))
    }

    /// Records what the peer on `connection` reported seeing us at; throws why it was refused.
    public func record(_ observed: Multiaddr, on connection: Connection) throws(ObservedAddressTable.Rejection) {
        let now = ContinuousClock.now
        let result = table.withLockedValue { table -> Result<Void, ObservedAddressTable.Rejection> in
            do throws(ObservedAddressTable.Rejection) {
                try table.record(
                    observed, reporter: connection.remotePeer, reporterAddress: connection.remoteAddress,
                    localAddress: connection.localAddress, connectionID: connection.id, now: now)
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try result.get()
    }

    /// The connection closed: its observations start to expire.
    public func connectionClosed(_ connection: Connection) {
        let now = ContinuousClock.now
        table.withLockedValue { $0.connectionClosed(connection.id, now: now) }
    }

    /// The current observed addresses, most confirmed first.
    public var all: [ObservedAddress] {
        let now = ContinuousClock.now
        return table.withLockedValue { table in
            table.expire(now: now)
            return table.addresses()
        }
    }

    /// What is known of `address` (with or without `/p2p/`), if any peer reports it.
    public subscript(_ address: Multiaddr) -> ObservedAddress? {
        let plain = address.removingPeerID()
        return all.first { $0.address == plain }
    }
}
