import Basics
import Identity
import LibP2P
import Multiformats
import Resources
import Crypto
import NIOConcurrencyHelpers
import NIOCore

/// Errors of `NodeList`.
public struct NodeListError: CodedError, Hashable {
    /// The kinds of failure.
    public enum Code: String, ErrorCode {
        /// Tried to add our own peer ID.
        case localPeer
    }

    /// What kind of failure.
    public var code: Code
    /// What went wrong.
    public var message: String
    /// None: node list errors are decided here.
    public var cause: (any Error)? { nil }

    /// An error of kind `code`.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
}

/// The nodes that serve each protocol, and the order to try them in for a request.
///
/// Thread-safe: every method may be called from any task; orderings are computed from a snapshot.
///
/// - Membership is per protocol. Adding a node twice is a no-op (`add` returns false and the node
///   keeps its failure state). `nodes(protocol:)` lists nodes in the order they were added,
///   including those cooling down.
/// - `orderedByXOR(request:protocol:)`: by the XOR of SHA-256(request) and SHA-256(peer ID bytes),
///   as 256-bit big-endian numbers, nearest first: one request maps to the same node while the
///   membership holds, and requests spread evenly over the nodes.
/// - `orderedByRTT(protocol:)`: by smoothed round-trip time (`recordRTT`), fastest first; nodes
///   with no measurement come last; ties (and the unmeasured nodes) by XOR distance to our own
///   peer ID's hash, or to the request's with `orderedByRTT(request:protocol:)`.
/// - Cool-down: each `markFailure` in a row makes the node unavailable for the protocol for
///   1 s, 2 s, 4 s, … (2^(n−1) s after the n-th consecutive failure), at most 15 minutes;
///   `markSuccess` ends the cool-down and resets the count. Ordered lists leave out nodes
///   cooling down — unless all of them are, and then they are all returned, the soonest
///   available first (ties in the list's own order), so a caller always has something to try.
public final class NodeList: Sendable {
    /// What "now" is; tests pass a hand-driven clock.
    public typealias Clock = @Sendable () -> ContinuousClock.Instant

    /// The cool-down after the first failure; it doubles with each failure in a row.
    public static let baseCoolDown: Duration = .seconds(1)
    /// The longest cool-down.
    public static let maxCoolDown: Duration = .seconds(15 * 60)

    /// A node's state for one protocol.
    public struct Status: Sendable, Hashable {
        /// Failures since the last success (or since it was added).
        public var consecutiveFailures: Int
        /// When the cool-down ends; nil if the node is not cooling down (or never failed).
        public var availableAt: ContinuousClock.Instant?
        /// The smoothed round-trip time, if measured.
        public var rtt: Duration?
    }

    public let localPeer: PeerID
    private let now: Clock
    private let localKey: NodeKey256
    private let state = NIOLockedValueBox(State())

    private struct Node: Sendable {
        let peer: PeerID
        /// SHA-256 of the peer ID bytes.
        let key: NodeKey256
        var consecutiveFailures = 0
        var availableAt: ContinuousClock.Instant?
    }

    private struct Nodes {
        /// Peers in the order they were added.
        var order: [PeerID] = []
        var byPeer: [PeerID: Node] = [:]
    }

    private struct State {
        var protocols: [String: Nodes] = [:]
        var rtt: [PeerID: Duration] = [:]

        func contains(_ peer: PeerID) -> Bool {
            protocols.values.contains { $0.byPeer[peer] != nil }
        }

        /// Forgets measurements of peers that left every protocol.
        mutating func forgetIfUnlisted(_ peers: some Sequence<PeerID>) {
            for peer in peers where !contains(peer) { rtt.removeValue(forKey: peer) }
        }
    }

    /// `localPeer`: our own peer ID, which `add` refuses. `now`: the clock for cool-downs.
    public init(localPeer: PeerID, now: @escaping Clock = { ContinuousClock.now }) {
        self.localPeer = localPeer
        self.now = now
        self.localKey = NodeKey256(hashing: localPeer.bytes)
    }

    // MARK: - Membership

    /// Adds `peer` as a node for `protocol`. Returns false (and changes nothing) if it is one
    /// already. Throws `NodeListError(.localPeer)` for our own peer ID.
    @discardableResult
    public func add(_ peer: PeerID, protocol protocolID: String) throws(NodeListError) -> Bool {
        guard peer != localPeer else {
            throw NodeListError(.localPeer, "refusing to add our own peer ID \(peer) as a node")
        }
        let key = NodeKey256(hashing: peer.bytes)
        return state.withLockedValue { s in
            guard s.protocols[protocolID]?.byPeer[peer] == nil else { return false }
            s.protocols[protocolID, default: Nodes()].order.append(peer)
            s.protocols[protocolID]!.byPeer[peer] = Node(peer: peer, key: key)
            return true
        }
    }

    /// Removes `peer` from `protocol`'s nodes. Returns whether it was one.
    @discardableResult
    public func remove(_ peer: PeerID, protocol protocolID: String) -> Bool {
        state.withLockedValue { s in
            guard s.protocols[protocolID]?.byPeer.removeValue(forKey: peer) != nil else { return false }
            s.protocols[protocolID]!.order.removeAll { $0 == peer }
            if s.protocols[protocolID]!.order.isEmpty { s.protocols.removeValue(forKey: protocolID) }
            s.forgetIfUnlisted([peer])
            return true
        }
    }

    /// Removes `peer` from every protocol.
    public func remove(_ peer: PeerID) {
        state.withLockedValue { s in
            for protocolID in Array(s.protocols.keys) {
                guard s.protocols[protocolID]!.byPeer.removeValue(forKey: peer) != nil else { continue }
                s.protocols[protocolID]!.order.removeAll { $0 == peer }
                if s.protocols[protocolID]!.order.isEmpty { s.protocols.removeValue(forKey: protocolID) }
            }
            s.rtt.removeValue(forKey: peer)
        }
    }

    /// Removes every node of `protocol`.
    public func clear(protocol protocolID: String) {
        state.withLockedValue { s in
            guard let removed = s.protocols.removeValue(forKey: protocolID) else { return }
            s.forgetIfUnlisted(removed.order)
        }
    }

    /// The nodes of `protocol` in the order they were added, including those cooling down.
    public func nodes(protocol protocolID: String) -> [PeerID] {
        state.withLockedValue { $0.protocols[protocolID]?.order ?? [] }
    }

    /// Whether `peer` is a node of `protocol`.
    public func contains(_ peer: PeerID, protocol protocolID: String) -> Bool {
        state.withLockedValue { $0.protocols[protocolID]?.byPeer[peer] != nil }
    }

    /// The protocols that have nodes, sorted.
    public var protocols: [String] {
        state.withLockedValue { $0.protocols.keys.sorted() }
    }

    /// `peer`'s state for `protocol`, or nil if it is not a node of it.
    public func status(of peer: PeerID, protocol protocolID: String) -> Status? {
        let at = now()
        return state.withLockedValue { s in
            guard let node = s.protocols[protocolID]?.byPeer[peer] else { return nil }
            let cooling = node.availableAt.flatMap { $0 > at ? $0 : nil }
            return Status(consecutiveFailures: node.consecutiveFailures, availableAt: cooling, rtt: s.rtt[peer])
        }
    }

    // MARK: - Measurements and failures

    /// Records a round-trip time to `peer` (for every protocol it serves). The smoothed value is
    /// the first sample, then 7/8 of the previous value plus 1/8 of each new sample (TCP's SRTT).
    /// Ignored for a peer that is no node of any protocol.
    public func recordRTT(peer: PeerID, _ rtt: Duration) {
        state.withLockedValue { s in
            guard s.contains(peer) else { return }
            if let previous = s.rtt[peer] {
                s.rtt[peer] = previous * 7 / 8 + rtt / 8
            } else {
                s.rtt[peer] = rtt
            }
        }
    }

    /// The smoothed round-trip time to `peer`, if measured.
    public func rtt(of peer: PeerID) -> Duration? {
        state.withLockedValue { $0.rtt[peer] }
    }

    /// A request to `peer` for `protocol` failed: it cools down for 2^(n−1) s after n failures
    /// in a row, at most `maxCoolDown`. Ignored for a peer that is not a node of `protocol`.
    public func markFailure(_ peer: PeerID, protocol protocolID: String) {
        let at = now()
        state.withLockedValue { s in
            guard var node = s.protocols[protocolID]?.byPeer[peer] else { return }
            node.consecutiveFailures += 1
            node.availableAt = at + Self.coolDown(afterFailures: node.consecutiveFailures)
            s.protocols[protocolID]!.byPeer[peer] = node
        }
    }

    /// A request to `peer` for `protocol` succeeded: the cool-down ends and the count restarts.
    public func markSuccess(_ peer: PeerID, protocol protocolID: String) {
        state.withLockedValue { s in
            guard var node = s.protocols[protocolID]?.byPeer[peer] else { return }
            node.consecutiveFailures = 0
            node.availableAt = nil
            s.protocols[protocolID]!.byPeer[peer] = node
        }
    }

    /// The cool-down after `failures` (≥ 1) consecutive failures: 1 s, 2 s, 4 s, … ≤ 15 min.
    public static func coolDown(afterFailures failures: Int) -> Duration {
        guard failures > 0 else { return .zero }
        // 2^10 s already exceeds the cap; the exponent is bounded so the shift cannot overflow.
        let exponent = min(failures - 1, 10)
        return min(baseCoolDown * (1 << exponent), maxCoolDown)
    }

    // MARK: - Ordering

    /// The available nodes of `protocol`, nearest to `request` by XOR distance first (see the
    /// type's notes on cool-down).
    public func orderedByXOR(request: some Collection<UInt8>, protocol protocolID: String) -> [PeerID] {
        ordered(protocolID, target: NodeKey256(hashing: request), byRTT: false)
    }

    public func orderedByXOR(request: ByteBuffer, protocol protocolID: String) -> [PeerID] {
        ordered(protocolID, target: NodeKey256(hashing: request), byRTT: false)
    }

    /// The available nodes of `protocol`, lowest round-trip time first, unmeasured ones last;
    /// ties by XOR distance to our own peer ID's hash.
    public func orderedByRTT(protocol protocolID: String) -> [PeerID] {
        ordered(protocolID, target: localKey, byRTT: true)
    }

    /// Like `orderedByRTT(protocol:)`, with ties broken by XOR distance to `request`.
    public func orderedByRTT(request: some Collection<UInt8>, protocol protocolID: String) -> [PeerID] {
        ordered(protocolID, target: NodeKey256(hashing: request), byRTT: true)
    }

    private func ordered(_ protocolID: String, target: NodeKey256, byRTT: Bool) -> [PeerID] {
        let at = now()
        let (nodes, rtts) = state.withLockedValue { s -> ([Node], [PeerID: Duration]) in
            guard let entry = s.protocols[protocolID] else { return ([], [:]) }
            let nodes = entry.order.map { entry.byPeer[$0]! }
            return (nodes, byRTT ? s.rtt : [:])
        }
        struct Candidate {
            let node: Node
            let distance: NodeKey256
            let rtt: Duration?
        }
        let candidates = nodes.map { Candidate(node: $0, distance: $0.key ^ target, rtt: rtts[$0.peer]) }
        func before(_ a: Candidate, _ b: Candidate) -> Bool {
            if byRTT {
                switch (a.rtt, b.rtt) {
                case (let x?, let y?) where x != y: return x < y
                case (.some, nil): return true
                case (nil, .some): return false
                default: break
                }
            }
            return a.distance < b.distance
        }
        let available = candidates.filter { ($0.node.availableAt ?? at) <= at }
        if !available.isEmpty {
            return available.sorted(by: before).map(\.node.peer)
        }
        // All cooling down: all of them, soonest available first.
        return candidates.sorted { a, b in
            let (x, y) = (a.node.availableAt!, b.node.availableAt!)
            return x != y ? x < y : before(a, b)
        }.map(\.node.peer)
    }
}

/// A 256-bit unsigned number, big-endian: `w0` holds the most significant 64 bits.
struct NodeKey256: Sendable, Hashable, Comparable {
    var w0: UInt64, w1: UInt64, w2: UInt64, w3: UInt64

    init(_ w0: UInt64, _ w1: UInt64, _ w2: UInt64, _ w3: UInt64) {
        (self.w0, self.w1, self.w2, self.w3) = (w0, w1, w2, w3)
    }

    /// The SHA-256 digest of `bytes`, read as a big-endian number.
    init(hashing bytes: some Collection<UInt8>) {
        var hasher = SHA256()
        if bytes.withContiguousStorageIfAvailable({ hasher.update(bufferPointer: UnsafeRawBufferPointer($0)) }) == nil {
            hasher.update(data: Array(bytes))
        }
        self.init(digest: hasher.finalize())
    }

    init(hashing buffer: ByteBuffer) {
        var hasher = SHA256()
        buffer.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
        self.init(digest: hasher.finalize())
    }

    private init(digest: SHA256.Digest) {
        let words = digest.withUnsafeBytes { raw in
            (0..<4).map { UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self)) }
        }
        self.init(words[0], words[1], words[2], words[3])
    }

    static func ^ (a: NodeKey256, b: NodeKey256) -> NodeKey256 {
        NodeKey256(a.w0 ^ b.w0, a.w1 ^ b.w1, a.w2 ^ b.w2, a.w3 ^ b.w3)
    }

    static func < (a: NodeKey256, b: NodeKey256) -> Bool {
        (a.w0, a.w1, a.w2, a.w3) < (b.w0, b.w1, b.w2, b.w3)
    }
}
