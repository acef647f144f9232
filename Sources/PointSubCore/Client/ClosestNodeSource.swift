import Basics
import Identity
import LibP2P
import NIOCore

/// Where `PointSubClient.sendClosest` finds the nodes of a protocol instead of a hand-made node
/// list: peers that serve the protocol, nearest to a request's key first.
///
/// Set one per protocol with `PointSubClient.setClosestNodeSource(_:protocol:)`. The library's
/// implementation asks a Kademlia DHT (`DHTClosestNodes` in the `PointSub` module); a source of
/// your own (a registry, a consistent-hash ring) works the same way.
///
/// **Contract.** `closestNodes` returns at most `count` peers that serve `protocolID`, never one
/// of `excluding` and never the local peer, nearest to `key` first, or an empty list when it
/// knows none. Called again with the peers already tried in `excluding`, it returns the next
/// nearest ones, so a caller can fail over without learning the whole list up front. The same
/// key must give the same first node while the set of nodes holds. It returns or throws before
/// `deadline`.
///
/// **Errors** are `PointSubError`s: `.timeout(requestSent: false)` when the deadline passed
/// before the source knew its answer, `.cancelled` when the calling task was cancelled,
/// `.noServerNodes` (with the lower layer's error as `cause`) when it could not look, e.g. a DHT
/// with an empty routing table, `.messageTooLarge` for a key it cannot look up.
public protocol ClosestNodeSource: Sendable {
    /// Up to `count` (≥ 1) peers that serve `protocolID`, nearest to `key` first, none of
    /// `excluding`; empty when none is known. Returns or throws before `deadline`.
    func closestNodes(
        to key: [UInt8], protocol protocolID: String, count: Int, excluding: Set<PeerID>, deadline: Deadline
    ) async throws(PointSubError) -> [PeerID]

    /// A request of `protocolID` to `peer` failed in a way that is the node's fault (it did
    /// not connect, does not serve the protocol, timed out, broke the protocol, was busy): a
    /// source that caches stops offering it from what it cached.
    func nodeFailed(_ peer: PeerID, protocol protocolID: String)
}

/// Recent XOR-distance lookups for a `ClosestNodeSource` (the DHT one), and what they prove about
/// other keys. A value type without I/O; the source holds it under a lock.
///
/// An entry is the outcome of one lookup of `key` for one protocol: the target `T` = SHA-256(key),
/// the peers found to serve the protocol, and a radius `R` such that every serving peer of the
/// network within XOR distance `R` of `T` is among them (the lookup found the k peers nearest to
/// `T`, and the serving status of every one of them up to `R` is known).
///
/// **Nearby keys.** For another key with target `T′` and `c = T ⊕ T′`, the XOR distance obeys
/// the triangle inequality (`a ⊕ b ≤ a + b`: XOR is addition without carries), so a peer `X`
/// outside the entry has `d(T′, X) ≥ d(T, X) − c > R − c`. Every cached serving peer `s` with
/// `d(T′, s) ≤ R − c` is therefore nearer to `T′` than any peer the entry does not hold: those
/// peers, sorted by `d(T′, s)`, are exactly the nearest serving nodes of the network for `T′`
/// (minus dropped ones), and the lookup for `T′` is saved. The same key (`c = 0`) gets every
/// cached node. When the proven part is empty, `answer` says `.miss` and the source looks up.
///
/// Bounded: at most `maxEntries` entries (the oldest goes first), each with at most the lookup's
/// k peers, each living `ttl`.
package struct ClosestNodeCache: Sendable {
    /// What `answer` knows for a key.
    package enum Answer: Sendable, Equatable {
        /// The nearest serving nodes, nearest first (at least one).
        case nodes([PeerID])
        /// A fresh lookup of this very key found no node serving the protocol.
        case none
        /// Nothing proven: look up.
        case miss
    }

    /// A peer's standing for a protocol after a lookup.
    package enum Serving: Sendable, Hashable {
        /// Identify lists the protocol.
        case yes
        /// Identify does not list it, or the peer could not be asked.
        case no
        /// Not known (the lookup did not ask it): the radius ends before it.
        case unknown
    }

    private struct Entry {
        let protocolID: String
        let target: NodeKey256
        let radius: NodeKey256
        var serving: [(peer: PeerID, key: NodeKey256)]
        /// The lookup found no serving node at all (a negative answer for this key).
        let foundNone: Bool
        let expires: ContinuousClock.Instant
    }

    /// How long an entry lives.
    package let ttl: Duration
    /// Entries kept at most.
    package let maxEntries: Int
    /// Oldest first.
    private var entries: [Entry] = []

    /// An empty cache; `maxEntries` 0 caches nothing.
    package init(ttl: Duration, maxEntries: Int) {
        self.ttl = ttl
        self.maxEntries = max(0, maxEntries)
    }

    /// Entries held (expired ones included until the next `store` or `answer`).
    package var count: Int { entries.count }

    /// Records a lookup of `key` for `protocolID`: `closest` is its result (the peers nearest to
    /// SHA-256(key), any order) with each peer's standing; `wholeNetwork` says the lookup saw
    /// every peer there is (it found fewer than k), so the radius is unbounded. Returns every
    /// serving peer, nearest first — those beyond a peer of unknown standing too (the best the
    /// lookup knows, though not proven nearest; the entry keeps only the proven ones).
    @discardableResult
    package mutating func store(
        protocol protocolID: String, key: [UInt8], closest: [(peer: PeerID, serving: Serving)], wholeNetwork: Bool,
        now: ContinuousClock.Instant
    ) -> [PeerID] {
        let target = NodeKey256(hashing: key)
        let sorted = closest.map { (peer: $0.peer, key: NodeKey256(hashing: $0.peer.bytes), serving: $0.serving) }
            .sorted { ($0.key ^ target) < ($1.key ^ target) }
        // Proven up to just before the first peer of unknown standing; with none, up to the
        // farthest peer found (or everywhere, when the lookup saw the whole network).
        var radius: NodeKey256?
        var sawUnknown = false
        var proven: [(peer: PeerID, key: NodeKey256)] = []
        for candidate in sorted {
            if candidate.serving == .unknown, !sawUnknown {
                radius = (candidate.key ^ target).minusOne
                sawUnknown = true
            }
            if candidate.serving == .yes, !sawUnknown { proven.append((candidate.peer, candidate.key)) }
        }
        if !sawUnknown {
            radius = wholeNetwork ? NodeKey256.max : sorted.last.map { $0.key ^ target }
        }
        let serving = sorted.filter { $0.serving == .yes }.map(\.peer)
        // A lookup that proves nothing positive and cannot prove a negative is not kept.
        guard maxEntries > 0, let radius, !(sawUnknown && proven.isEmpty) else { return serving }
        entries.removeAll { $0.expires <= now || ($0.protocolID == protocolID && $0.target == target) }
        if entries.count >= maxEntries { entries.removeFirst(entries.count - maxEntries + 1) }
        entries.append(
            Entry(
                protocolID: protocolID, target: target, radius: radius, serving: proven, foundNone: proven.isEmpty,
                expires: now + ttl))
        return serving
    }

    /// The nearest serving nodes for `key` that the entries prove (see the type's notes), at
    /// most `count`, none of `excluding`; the entry whose target is nearest to the key's answers.
    package mutating func answer(
        protocol protocolID: String, key: [UInt8], count: Int, excluding: Set<PeerID>, now: ContinuousClock.Instant
    ) -> Answer {
        entries.removeAll { $0.expires <= now }
        let target = NodeKey256(hashing: key)
        guard count > 0,
            let entry = entries.lazy.filter({ $0.protocolID == protocolID }).min(by: {
                ($0.target ^ target) < ($1.target ^ target)
            })
        else { return .miss }
        let offset = entry.target ^ target
        if offset == .zero, entry.foundNone { return .none }
        guard let limit = entry.radius.minus(offset) else { return .miss }
        let proven = entry.serving
            .filter { !excluding.contains($0.peer) && ($0.key ^ target) <= limit }
            .sorted { ($0.key ^ target) < ($1.key ^ target) }
        guard !proven.isEmpty else { return .miss }
        return .nodes(proven.prefix(count).map(\.peer))
    }

    /// `peer` failed a request of `protocolID`: no entry offers it any more. (The radius stays:
    /// the node is skipped, not replaced by someone farther.)
    package mutating func drop(_ peer: PeerID, protocol protocolID: String) {
        for index in entries.indices where entries[index].protocolID == protocolID {
            entries[index].serving.removeAll { $0.peer == peer }
        }
    }
}

extension NodeKey256 {
    static let zero = NodeKey256(0, 0, 0, 0)
    static let max = NodeKey256(.max, .max, .max, .max)

    /// `self − other`, or nil if that is negative.
    func minus(_ other: NodeKey256) -> NodeKey256? {
        guard other <= self else { return nil }
        let (r3, b3) = w3.subtractingReportingOverflow(other.w3)
        let (t2, b2a) = w2.subtractingReportingOverflow(other.w2)
        let (r2, b2b) = t2.subtractingReportingOverflow(b3 ? 1 : 0)
        let (t1, b1a) = w1.subtractingReportingOverflow(other.w1)
        let (r1, b1b) = t1.subtractingReportingOverflow(b2a || b2b ? 1 : 0)
        let r0 = w0 &- other.w0 &- (b1a || b1b ? 1 : 0)
        return NodeKey256(r0, r1, r2, r3)
    }

    /// `self − 1`, or nil for zero.
    var minusOne: NodeKey256? { minus(NodeKey256(0, 0, 0, 1)) }
}
