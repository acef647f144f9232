import Identity

/// The Kademlia routing table as a value type: 256 k-buckets by common-prefix length with the
/// local key, least recently seen first, each with a bounded replacement cache.
///
/// A full bucket does not take a new peer at once: `add` says which old entry to check, and the
/// newcomer waits in the replacement cache. If the check fails (`remove`), the freshest
/// replacement takes the old entry's place; if it succeeds (`add` again, as seen), the old entry
/// stays — long-lived peers are the likeliest to stay (the Kademlia paper's observation).
public struct RoutingTable: Sendable {
    /// One peer in a bucket.
    public struct Entry: Sendable, Hashable {
        /// The peer.
        public let peer: PeerID
        /// Its key (SHA-256 of its ID).
        public let key: KadKey
        /// When it last answered us or queried us.
        public var lastSeen: ContinuousClock.Instant
    }

    /// What `add` did.
    public enum AddResult: Sendable, Hashable {
        /// The peer is in the table now (new, or refreshed).
        case added
        /// Its bucket is full: the peer waits as a replacement; check `leastRecentlySeen` and
        /// `remove` it if it does not answer.
        case bucketFull(leastRecentlySeen: PeerID)
        /// Our own ID: never in the table.
        case isSelf
    }

    /// Our key.
    public let localKey: KadKey
    /// Peers per bucket (k; the spec's default is 20).
    public let bucketSize: Int
    private var buckets: [[Entry]]
    private var replacements: [[Entry]]

    /// An empty table around `local`.
    public init(local: PeerID, bucketSize: Int = 20) {
        precondition(bucketSize > 0, "a bucket holds at least one peer")
        self.localKey = KadKey(peer: local)
        self.bucketSize = bucketSize
        self.buckets = Array(repeating: [], count: 256)
        self.replacements = Array(repeating: [], count: 256)
    }

    /// The number of peers in the table (replacements not counted).
    public var count: Int { buckets.reduce(0) { $0 + $1.count } }

    /// Every peer in the table.
    public var peers: [PeerID] { buckets.flatMap { $0.map(\.peer) } }

    /// The bucket index of `key`: its common-prefix length with ours (0…255).
    func bucketIndex(of key: KadKey) -> Int? {
        let cpl = localKey.commonPrefixLength(with: key)
        return cpl >= 256 ? nil : cpl
    }

    /// Whether `peer` is in the table.
    public func contains(_ peer: PeerID) -> Bool {
        guard let index = bucketIndex(of: KadKey(peer: peer)) else { return false }
        return buckets[index].contains { $0.peer == peer }
    }

    /// Adds `peer` (seen at `now`), or refreshes it; see `AddResult`. `key`: the peer's key when
    /// the caller has it already (it is a SHA-256 of the peer ID).
    @discardableResult
    public mutating func add(_ peer: PeerID, key: KadKey? = nil, now: ContinuousClock.Instant) -> AddResult {
        let key = key ?? KadKey(peer: peer)
        guard let index = bucketIndex(of: key) else { return .isSelf }
        if let at = buckets[index].firstIndex(where: { $0.peer == peer }) {
            var entry = buckets[index].remove(at: at)
            entry.lastSeen = now
            buckets[index].append(entry)
            return .added
        }
        let entry = Entry(peer: peer, key: key, lastSeen: now)
        if buckets[index].count < bucketSize {
            buckets[index].append(entry)
            return .added
        }
        replacements[index].removeAll { $0.peer == peer }
        replacements[index].append(entry)
        if replacements[index].count > bucketSize { replacements[index].removeFirst() }
        return .bucketFull(leastRecentlySeen: buckets[index][0].peer)
    }

    /// Removes `peer` (it failed a check or a query); the freshest replacement of its bucket
    /// takes its place. Returns whether it was in the table.
    @discardableResult
    public mutating func remove(_ peer: PeerID) -> Bool {
        guard let index = bucketIndex(of: KadKey(peer: peer)) else { return false }
        replacements[index].removeAll { $0.peer == peer }
        guard let at = buckets[index].firstIndex(where: { $0.peer == peer }) else { return false }
        buckets[index].remove(at: at)
        if let replacement = replacements[index].popLast() {
            buckets[index].append(replacement)
        }
        return true
    }

    /// Up to `count` peers closest to `key`, closest first.
    public func closest(to key: KadKey, count: Int) -> [PeerID] {
        buckets.joined()
            .map { ($0.peer, $0.key.distance(to: key)) }
            .sorted { $0.1 < $1.1 }
            .prefix(count)
            .map(\.0)
    }

    /// The entries not seen since `before`, least recently seen first (liveness checks).
    public func stale(before: ContinuousClock.Instant) -> [Entry] {
        buckets.joined().filter { $0.lastSeen < before }.sorted { $0.lastSeen < $1.lastSeen }
    }

    /// Indices of the non-empty buckets and the lowest empty ones up to the farthest filled, to
    /// refresh with a lookup of a random key in each.
    public var bucketsToRefresh: [Int] {
        guard let last = buckets.lastIndex(where: { !$0.isEmpty }) else { return [0] }
        return Array(0...min(last + 1, 255))
    }

    /// Random query bytes whose key (their SHA-256, as the remote computes it) falls in bucket
    /// `index`, for a bucket refresh; nil when none was found in `maxTries` (a bucket `i` needs
    /// about 2^(i+1) tries, so far-from-empty deep buckets are left to the self lookup).
    public func randomQueryKey(inBucket index: Int, maxTries: Int = 1 << 14) -> [UInt8]? {
        precondition((0..<256).contains(index))
        for _ in 0..<maxTries {
            let bytes = (0..<32).map { _ in UInt8.random(in: 0...255) }
            if localKey.commonPrefixLength(with: KadKey(hashing: bytes)) == index { return bytes }
        }
        return nil
    }
}
