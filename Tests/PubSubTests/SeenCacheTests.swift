import Testing

@testable import PubSub

@Suite struct SeenCacheTests {
    private let start = ContinuousClock.now

    @Test func remembersAnIDForTheTTLOnly() {
        var cache = SeenCache(ttl: .seconds(120), capacity: 10)
        let first = cache.insert([1], now: start)
        let again = cache.insert([1], now: start + .seconds(60))
        #expect(first && !again)  // the second sighting is a duplicate
        #expect(cache.contains([1], now: start + .seconds(119)))
        #expect(!cache.contains([1], now: start + .seconds(120)))
        // Seen again after expiry: new again, and remembered from then on.
        let afterExpiry = cache.insert([1], now: start + .seconds(121))
        #expect(afterExpiry)
        #expect(cache.contains([1], now: start + .seconds(200)))
    }

    @Test func aSecondSightingDoesNotExtendTheTTL() {
        var cache = SeenCache(ttl: .seconds(10), capacity: 10)
        cache.insert([7], now: start)
        cache.insert([7], now: start + .seconds(9))
        #expect(!cache.contains([7], now: start + .seconds(10)))
    }

    @Test func expiryFreesMemoryInInsertionOrder() {
        var cache = SeenCache(ttl: .seconds(10), capacity: 100)
        for i in 0..<5 { cache.insert([UInt8(i)], now: start + .seconds(i)) }
        cache.expire(now: start + .seconds(12))  // IDs 0, 1, 2 are due
        #expect(cache.count == 2)
        #expect(!cache.contains([2], now: start + .seconds(12)))
        #expect(cache.contains([3], now: start + .seconds(12)))
        cache.insert([9], now: start + .seconds(30))  // insertion expires the rest
        #expect(cache.count == 1)
    }

    @Test func capacityEvictsTheOldestEarly() {
        var cache = SeenCache(ttl: .seconds(120), capacity: 3)
        for i in 0..<5 { cache.insert([UInt8(i)], now: start) }
        #expect(cache.count == 3)
        #expect(cache.evictions == 2)
        #expect(!cache.contains([0], now: start))
        #expect(!cache.contains([1], now: start))
        #expect(cache.contains([4], now: start))
    }

    @Test func manyEntriesStayBoundedAndConsistent() {
        var cache = SeenCache(ttl: .seconds(1), capacity: 5000)
        var allNew = true
        for i in 0..<50_000 {
            let id = withUnsafeBytes(of: UInt32(i)) { Array($0) }
            allNew = cache.insert(id, now: start + .milliseconds(i)) && allNew
        }
        #expect(allNew)
        // At 1 ms apart with a 1 s TTL, about 1000 are live; never more than the capacity.
        #expect(cache.count <= 1001)
        #expect(cache.evictions == 0)
        let last = withUnsafeBytes(of: UInt32(49_999)) { Array($0) }
        #expect(cache.contains(last, now: start + .milliseconds(49_999)))
        let again = cache.insert(last, now: start + .milliseconds(49_999))
        #expect(!again)
    }

    @Test func aClockReadingThatLagsKeepsOrder() {
        // Two threads read the clock, then insert in the other order.
        var cache = SeenCache(ttl: .seconds(10), capacity: 10)
        cache.insert([1], now: start + .seconds(1))
        cache.insert([2], now: start)
        cache.expire(now: start + .seconds(10))
        #expect(cache.contains([1], now: start + .seconds(10)))
        #expect(cache.contains([2], now: start + .seconds(10)))  // clamped to [1]'s expiry
        cache.expire(now: start + .seconds(11))
        #expect(cache.count == 0)
    }
}
