/// The message IDs seen recently, so a message is delivered and routed at most once (the
/// "timecache" of go-libp2p-pubsub). A value type driven with explicit instants.
///
/// Each ID is remembered for `ttl` from its first insertion (later sightings do not extend it).
/// Memory is bounded by `capacity`: when full, the oldest entry is evicted early (counted in
/// `evictions`); a copy of that message arriving later would then be taken as new. Expiry costs
/// O(1) amortised per entry: insertion times only grow, so entries expire in insertion order.
public struct SeenCache: Sendable {
    public let ttl: Duration
    public let capacity: Int
    /// Entries dropped before their time because the cache was full.
    public private(set) var evictions = 0

    private var expiries: [MessageKey: ContinuousClock.Instant] = [:]
    /// Insertion order; `order[head...]` are live, the rest are waiting to be compacted away.
    private var order: [MessageKey] = []
    private var head = 0
    /// The expiry of the newest entry: expiries never decrease along `order`.
    private var lastExpiry: ContinuousClock.Instant?

    public init(ttl: Duration, capacity: Int) {
        precondition(ttl > .zero && capacity > 0, "a seen cache needs a positive ttl and capacity")
        self.ttl = ttl
        self.capacity = capacity
    }

    public var count: Int { expiries.count }

    /// Whether `id` was inserted less than `ttl` before `now`.
    public func contains(_ id: MessageID, now: ContinuousClock.Instant) -> Bool {
        contains(MessageKey(id), now: now)
    }

    func contains(_ key: MessageKey, now: ContinuousClock.Instant) -> Bool {
        guard let expiry = expiries[key] else { return false }
        return expiry > now
    }

    /// Records `id` as seen at `now`. Returns false when it was seen already (and has not expired).
    @discardableResult
    public mutating func insert(_ id: MessageID, now: ContinuousClock.Instant) -> Bool {
        insert(MessageKey(id), now: now)
    }

    @discardableResult
    mutating func insert(_ key: MessageKey, now: ContinuousClock.Instant) -> Bool {
        expire(now: now)
        if contains(key, now: now) { return false }
        if expiries.count >= capacity {
            removeOldest()
            evictions += 1
        }
        // `now` may lag an earlier insertion's instant (callers on different threads read the clock
        // before taking the lock); clamping keeps expiries in insertion order.
        let expiry = max(now + ttl, lastExpiry ?? (now + ttl))
        expiries[key] = expiry
        lastExpiry = expiry
        order.append(key)
        return true
    }

    /// Forgets every entry whose time is up at `now`.
    public mutating func expire(now: ContinuousClock.Instant) {
        while head < order.count, let expiry = expiries[order[head]], expiry <= now {
            removeOldest()
        }
    }

    private mutating func removeOldest() {
        guard head < order.count else { return }
        expiries[order[head]] = nil
        head += 1
        // Compact once the dead prefix is large and at least half of the array.
        if head >= 1024 && head * 2 >= order.count {
            order.removeFirst(head)
            head = 0
        } else if head == order.count {
            order.removeAll(keepingCapacity: true)
            head = 0
        }
    }
}
