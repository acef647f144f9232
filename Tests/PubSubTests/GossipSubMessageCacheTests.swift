import Identity
import Testing
@testable import PubSub

/// The message cache on its own.
@Suite struct GossipSubMessageCacheTests {
    @Test func keepsHistoryLengthWindowsAndGossipsTheNewestOnes() {
        var cache = MessageCache(historyLength: 5, historyGossip: 3)
        let (m1, id1) = testMessage(1)
        let (m2, id2) = testMessage(2, topic: "u")
        cache.put(m1, id: id1)
        cache.put(m2, id: id2)
        #expect(cache.gossipIDs(topic: "t") == [id1])
        #expect(cache.gossipIDs(topic: "u") == [id2])
        for shifts in 1...4 {
            cache.shift()
            #expect(cache.get(id1) == m1, "after \(shifts) shifts")
            #expect(cache.gossipIDs(topic: "t") == (shifts < 3 ? [id1] : []), "after \(shifts) shifts")
        }
        cache.shift()
        #expect(cache.get(id1) == nil)
        #expect(cache.count == 0)
    }

    @Test func putKeepsTheFirstWindowAndCountsTransmissionsPerPeer() {
        var cache = MessageCache(historyLength: 2, historyGossip: 1)
        let (m, id) = testMessage(1)
        cache.put(m, id: id)
        cache.shift()
        cache.put(m, id: id)  // already cached: stays in its window
        #expect(cache.gossipIDs(topic: "t").isEmpty)
        #expect(cache.get(id, for: testPeer(1))?.count == 1)
        #expect(cache.get(id, for: testPeer(1))?.count == 2)
        #expect(cache.get(id, for: testPeer(2))?.count == 1)
        #expect(cache.get([9], for: testPeer(1)) == nil)
    }

    @Test func gossipIDsAreNewestFirst() {
        var cache = MessageCache(historyLength: 5, historyGossip: 3)
        let messages = (1...3).map { testMessage($0) }
        cache.put(messages[0].0, id: messages[0].1)
        cache.shift()
        cache.put(messages[1].0, id: messages[1].1)
        cache.put(messages[2].0, id: messages[2].1)
        #expect(cache.gossipIDs(topic: "t") == [messages[2].1, messages[1].1, messages[0].1])
    }
}
