import PointSub
import Testing

@testable import PubSub

/// Floodsub over real hosts (in-memory transport; the first test over TCP on 127.0.0.1 too): every subscriber gets every message exactly once, and
/// no node routes a message twice (the counters tell).
@Suite(.timeLimit(.minutes(2)))
struct FloodSubNetworkTests {
    @Test(arguments: TestTransport.allCases)
    func lineOfFiveDeliversEveryMessageOnceWithoutStorms(transport: TestTransport) async throws {
        try await PubSubTestNetwork.with(nodes: 5, edges: PubSubTestNetwork.line(5), transport: transport) { net in
            let collectors = try net.services.map { Collector(try $0.subscribe("t")) }
            try await net.waitForSubscriptions("t", subscribers: 0..<5)
            for (index, service) in net.services.enumerated() {
                for n in 0..<3 { try await service.publish("t", Array("\(index)-\(n)".utf8)) }
            }
            try await net.waitUntil("everyone has the 12 messages of the others") {
                collectors.allSatisfy { $0.messages.count >= 12 }
            }
            try await net.waitUntil("the last transmissions are counted") {
                net.counters.reduce(0) { $0 + $1.forwarded } >= 60
            }
            try await Task.sleep(for: .milliseconds(100))  // anything extra would show now
            for (index, collector) in collectors.enumerated() {
                let expected = Set((0..<5).filter { $0 != index }.flatMap { i in (0..<3).map { "\(i)-\($0)" } })
                #expect(collector.texts.count == 12, "node \(index) got \(collector.texts)")
                #expect(Set(collector.texts) == expected)
                #expect(collector.messages.allSatisfy { $0.receivedFrom != net.peerID(index) })
            }
            for (index, counters) in net.counters.enumerated() {
                #expect(counters.published == 3)
                #expect(counters.routed == 15, "node \(index) routes each of the 15 messages once")
                #expect(counters.delivered == 12)
                #expect(counters.duplicates == 0, "a line has no second path")
                #expect(counters.rejected == 0 && counters.dropped == 0 && counters.badRPCs == 0)
            }
            // A line is a tree: n - 1 transmissions per message, 15 messages.
            #expect(net.counters.reduce(0) { $0 + $1.forwarded } == 15 * 4)
            // Ends forward only their own messages (to their one neighbour).
            #expect(net.counters[0].forwarded == 3)
            #expect(net.counters[4].forwarded == 3)
        }
    }

    @Test func ringOfFourRoutesEachMessageOnceDespiteTwoPaths() async throws {
        try await PubSubTestNetwork.with(nodes: 4, edges: PubSubTestNetwork.ring(4)) { net in
            let collectors = try net.services.map { Collector(try $0.subscribe("t")) }
            try await net.waitForSubscriptions("t", subscribers: 0..<4)
            for (index, service) in net.services.enumerated() {
                try await service.publish("t", Array("from \(index)".utf8))
            }
            try await net.waitUntil("everyone has the 3 messages of the others") {
                collectors.allSatisfy { $0.messages.count >= 3 }
            }
            // Each message reaches the node opposite its author over both halves of the ring, so
            // every message is received at least 4 times (3 first copies and a duplicate) — unless
            // the engine left a copy out because its peer had sent the message first.
            try await net.waitUntil("the second copies arrived") {
                net.counters.reduce(0) { $0 + $1.received + $1.suppressed } >= 4 * 4
            }
            try await Task.sleep(for: .milliseconds(100))
            for (index, collector) in collectors.enumerated() {
                #expect(collector.texts.sorted() == (0..<4).filter { $0 != index }.map { "from \($0)" })
            }
            for counters in net.counters {
                #expect(counters.routed == 4)  // 3 received + 1 own, each once
                #expect(counters.delivered == 3)
                #expect(counters.forwarded <= 2 * 4)  // at most once per neighbour per message
            }
            let total = net.counters.reduce(into: PubSubCounters()) {
                $0.received += $1.received
                $0.duplicates += $1.duplicates
                $0.suppressed += $1.suppressed
            }
            // 4 or 5 receptions per message depending on timing (a neighbour of the author may get
            // the copy from the far side first and then has nobody to send it to), less the copies
            // left out; all but the 3 first copies are duplicates.
            #expect((16...20).contains(total.received + total.suppressed))
            #expect(total.duplicates == total.received - 4 * 3)
        }
    }

    @Test func unsubscribeStopsDeliveryAndIsAnnounced() async throws {
        try await PubSubTestNetwork.with(nodes: 3, edges: PubSubTestNetwork.line(3)) { net in
            let first = Collector(try net.services[1].subscribe("t"))
            let last = try net.services[2].subscribe("t")
            let lastCollector = Collector(last)
            try await net.waitForSubscriptions("t", subscribers: [1, 2])
            #expect(net.services[2].topics == ["t"])
            try await net.services[0].publish("t", Array("one".utf8))
            try await net.waitUntil("both got one") { first.texts == ["one"] && lastCollector.texts == ["one"] }

            net.services[2].unsubscribe("t")
            #expect(net.services[2].topics == [])
            try await net.waitUntil("node 1 learned that node 2 left") {
                net.services[1].peers(topic: "t").isEmpty
            }
            try await net.services[0].publish("t", Array("two".utf8))
            try await net.waitUntil("node 1 got two") { first.texts == ["one", "two"] }
            try await Task.sleep(for: .milliseconds(100))
            #expect(lastCollector.texts == ["one"])
            #expect(net.counters[2].received == 1)  // node 1 no longer sends it anything
            #expect(net.counters[1].forwarded == 1)
        }
    }

    @Test func cancellingTheLastSubscriptionLeavesTheTopic() async throws {
        try await PubSubTestNetwork.with(nodes: 2, edges: [(0, 1)]) { net in
            let a = Collector(try net.services[1].subscribe("t"))
            let b = Collector(try net.services[1].subscribe("t"))
            try await net.waitForSubscriptions("t", subscribers: [1])
            try await net.services[0].publish("t", Array("x".utf8))
            try await net.waitUntil("both subscriptions got it") { a.texts == ["x"] && b.texts == ["x"] }
            #expect(net.counters[1].delivered == 1)  // once per message, not per subscription
            a.cancel()
            try await Task.sleep(for: .milliseconds(50))
            #expect(net.services[1].topics == ["t"])  // b still subscribes
            b.cancel()
            try await net.waitUntil("the topic is left and announced") {
                net.services[1].topics.isEmpty && net.services[0].peers(topic: "t").isEmpty
            }
        }
    }

    @Test func aNodeLeavingTheRingDoesNotBreakDelivery() async throws {
        try await PubSubTestNetwork.with(nodes: 4, edges: PubSubTestNetwork.ring(4)) { net in
            let collectors = try net.services.map { Collector(try $0.subscribe("t")) }
            try await net.waitForSubscriptions("t", subscribers: 0..<4)
            // Node 2 goes away: its neighbours 1 and 3 notice and drop it.
            await net.services[2].stop()
            await net.hosts[2].shutdown(gracePeriod: .milliseconds(100))
            try await net.waitUntil("1 and 3 removed node 2") {
                !net.services[1].peers.contains(net.peerID(2)) && !net.services[3].peers.contains(net.peerID(2))
            }
            // From 1 to 3 only the long way round is left: 1 → 0 → 3.
            try await net.services[1].publish("t", Array("around".utf8))
            try await net.waitUntil("0 and 3 got it") {
                collectors[0].texts == ["around"] && collectors[3].texts == ["around"]
            }
            try await Task.sleep(for: .milliseconds(100))
            #expect(collectors[0].texts == ["around"] && collectors[3].texts == ["around"])
            #expect(collectors[1].texts.isEmpty && collectors[2].texts.isEmpty)
            #expect(net.counters[3].duplicates == 0)
        }
    }
}
