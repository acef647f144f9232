import Identity

/// An iterative Kademlia lookup as a state machine (no I/O): which peers to ask next, what their
/// answers change, and when the lookup is done.
///
/// The lookup keeps the candidates ordered by distance to the target and asks at most `alpha` at a
/// time, always the closest not yet asked. It is done when the `k` closest peers it knows of (that
/// did not fail) have all answered, or when nobody is left to ask. The driver sends the queries,
/// reports each answer (`received`) or failure/timeout (`failed`), and calls `next` again.
public struct KadLookup: Sendable {
    /// A candidate's progress.
    public enum PeerState: Sendable, Hashable {
        /// Known, not asked yet.
        case notQueried
        /// Asked; the answer is awaited.
        case waiting
        /// Answered.
        case succeeded
        /// Did not answer, or answered badly.
        case failed
    }

    private struct Candidate: Sendable {
        let peer: PeerID
        let distance: KadDistance
        var state: PeerState
        /// How many answers led to this peer (seeds: 0).
        let hops: Int
    }

    /// The key looked up.
    public let target: KadKey
    /// How many closest peers the lookup wants (k).
    public let k: Int
    /// Queries in flight at most (α).
    public let alpha: Int
    /// Candidates kept at most (the farthest unasked ones are dropped beyond this).
    public let maxCandidates: Int
    private let local: PeerID
    /// Ordered by distance, closest first.
    private var candidates: [Candidate] = []
    private var index: [PeerID: Int] = [:]
    /// Queries sent so far.
    public private(set) var queriesSent = 0

    /// A lookup of `target` from `seeds` (usually the routing table's closest peers).
    public init(
        target: KadKey, local: PeerID, seeds: [PeerID], k: Int = 20, alpha: Int = 3, maxCandidates: Int? = nil
    ) {
        precondition(k > 0 && alpha > 0)
        self.target = target
        self.local = local
        self.k = k
        self.alpha = alpha
        self.maxCandidates = max(maxCandidates ?? 10 * k, k)
        insert(seeds, hops: 0)
    }

    /// The peers to ask now (marked waiting); empty when the lookup is finished or must wait.
    public mutating func next() -> [PeerID] {
        guard !isFinished else { return [] }
        var inFlight = candidates.reduce(0) { $0 + ($1.state == .waiting ? 1 : 0) }
        var out: [PeerID] = []
        var position = 0
        // Only the k closest live candidates matter; the next closest unasked among them first.
        var live = 0
        while inFlight < alpha, position < candidates.count, live < k {
            switch candidates[position].state {
            case .failed:
                break
            case .notQueried:
                candidates[position].state = .waiting
                inFlight += 1
                queriesSent += 1
                live += 1
                out.append(candidates[position].peer)
            case .waiting, .succeeded:
                live += 1
            }
            position += 1
        }
        return out
    }

    /// `peer` answered with `closer` peers.
    public mutating func received(from peer: PeerID, closer: [PeerID]) {
        guard let at = index[peer], candidates[at].state == .waiting else { return }
        candidates[at].state = .succeeded
        insert(closer, hops: candidates[at].hops + 1)
    }

    /// `peer` failed or timed out.
    public mutating func failed(_ peer: PeerID) {
        guard let at = index[peer], candidates[at].state == .waiting else { return }
        candidates[at].state = .failed
    }

    /// Whether the lookup is over: the k closest live candidates all answered, or nobody is
    /// waiting and nobody is left to ask.
    public var isFinished: Bool {
        var live = 0
        var waiting = false
        for candidate in candidates where candidate.state != .failed {
            switch candidate.state {
            case .notQueried:
                return false
            case .waiting:
                waiting = true
            case .succeeded, .failed:
                break
            }
            live += 1
            if live == k { break }
        }
        return !waiting
    }

    /// The closest peers that answered, closest first (at most k): the lookup's result.
    public var closestSucceeded: [PeerID] {
        Array(candidates.lazy.filter { $0.state == .succeeded }.prefix(k).map(\.peer))
    }

    /// The state of `peer` in this lookup (nil: never heard of).
    public func state(of peer: PeerID) -> PeerState? {
        index[peer].map { candidates[$0].state }
    }

    /// How many answers led to `peer` (0 for a seed).
    public func hops(to peer: PeerID) -> Int? {
        index[peer].map { candidates[$0].hops }
    }

    /// Peers in flight.
    public var waiting: [PeerID] { candidates.filter { $0.state == .waiting }.map(\.peer) }

    private mutating func insert(_ peers: [PeerID], hops: Int) {
        var changed = false
        for peer in peers where peer != local && index[peer] == nil {
            let distance = KadKey(peer: peer).distance(to: target)
            let at = candidates.partitioningIndex { distance < $0.distance }
            candidates.insert(Candidate(peer: peer, distance: distance, state: .notQueried, hops: hops), at: at)
            index[peer] = -1
            changed = true
        }
        guard changed else { return }
        // Bounded: drop the farthest candidates that were never asked.
        while candidates.count > maxCandidates,
            let last = candidates.lastIndex(where: { $0.state == .notQueried })
        {
            index[candidates[last].peer] = nil
            candidates.remove(at: last)
        }
        for (position, candidate) in candidates.enumerated() { index[candidate.peer] = position }
    }
}

extension Array {
    /// The first index whose element satisfies `belongsInSecondPartition` (the array is
    /// partitioned by it), by binary search.
    fileprivate func partitioningIndex(where belongsInSecondPartition: (Element) -> Bool) -> Int {
        var low = 0
        var high = count
        while low < high {
            let middle = (low + high) / 2
            if belongsInSecondPartition(self[middle]) { high = middle } else { low = middle + 1 }
        }
        return low
    }
}
