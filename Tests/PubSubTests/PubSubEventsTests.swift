import NIOConcurrencyHelpers
import NIOCore
import PointSub
import Testing

@testable import PubSub

/// A memory account that counts what is reserved and refuses beyond `limit`.
final class CountingMemoryAccount: MemoryAccount {
    let limit: Int
    private let used = NIOLockedValueBox(0)

    init(limit: Int) {
        self.limit = limit
    }

    func reserveMemory(_ bytes: Int) throws(ResourceError) {
        let refused = used.withLockedValue { used -> Bool in
            guard used + bytes <= limit else { return true }
            used += bytes
            return false
        }
        if refused { throw ResourceError(scope: "test", resource: .memory, limit: limit, requested: bytes) }
    }

    func releaseMemory(_ bytes: Int) {
        used.withLockedValue { $0 -= bytes }
    }

    var inUse: Int { used.withLockedValue { $0 } }
}

/// Events, waiting for peers, `publish(minPeers:)`, the per-peer topic limit, the memory held by
/// outbound queues, and running as a ServiceLifecycle service.
@Suite(.timeLimit(.minutes(1)))
struct PubSubEventsTests {
    // MARK: - Events and waiting for peers

    @Test func joinsAndLeavesAreEventsAndWaitForPeersReturnsOnTheJoin() async throws {
        try await PubSubTestNetwork.with(nodes: 2, edges: [(0, 1)]) { net in
            let events = net.services[0].events()
            await #expect(throws: PubSubError.notEnoughPeers(topic: "t", known: 0, required: 1)) {
                try await net.services[0].waitForPeers(topic: "t", count: 1, deadline: .after(.milliseconds(50)))
            }
            await #expect(throws: PubSubError.notEnoughPeers(topic: "t", known: 0, required: 1)) {
                try await net.services[0].publish("t", [1], minPeers: 1)
            }
            #expect(net.counters[0].published == 0)  // nothing was sent
            async let waited = net.services[0].waitForPeers(topic: "t", count: 1, deadline: .after(.seconds(10)))
            let subscription = try net.services[1].subscribe("t")
            #expect(try await waited == [net.peerID(1)])
            try await net.services[0].publish("t", [1], minPeers: 1)
            subscription.cancel()
            try await net.waitUntil("node 1 left t") { net.services[0].peers(topic: "t").isEmpty }
            var iterator = events.makeAsyncIterator()
            #expect(await iterator.next() == .peerJoined(topic: "t", peer: net.peerID(1)))
            #expect(await iterator.next() == .peerLeft(topic: "t", peer: net.peerID(1)))
            // A peer that goes away leaves every topic it was in.
            let again = try net.services[1].subscribe("u")
            try await net.services[0].waitForPeers(topic: "u", deadline: .after(.seconds(10)))
            #expect(await iterator.next() == .peerJoined(topic: "u", peer: net.peerID(1)))
            await net.services[1].stop()
            #expect(await iterator.next() == .peerLeft(topic: "u", peer: net.peerID(1)))
            withExtendedLifetime(again) {}
        }
    }

    @Test func waitForPeersEndsWhenTheServiceStops() async throws {
        try await withHost(configuration: .defaults { $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")] }) { host in
            let service = try PubSubService(host: host, router: FloodSubRouter())
            await #expect(throws: PubSubError.notRunning) {
                try await service.waitForPeers(topic: "t", deadline: .after(.seconds(1)))
            }
            try service.start()
            async let waited: Void = {
                await #expect(throws: PubSubError.notRunning) {
                    try await service.waitForPeers(topic: "t", deadline: .after(.seconds(30)))
                }
            }()
            try await Task.sleep(for: .milliseconds(20))
            await service.stop()
            await waited
            var ended = service.events().makeAsyncIterator()
            #expect(await ended.next() == nil)
        }
    }

    // MARK: - Limits on what a peer makes us hold

    @Test func aPeerKnownInTooManyTopicsHasFurtherSubscriptionsIgnored() async throws {
        try await PubSubTestNetwork.with(
            nodes: 2, edges: [(0, 1)], configuration: { $0 == 0 ? .defaults { $0.maxTopicsPerPeer = 3 } : .defaults }
        ) { net in
            let subscriptions = try (0..<5).map { try net.services[1].subscribe("t\($0)") }
            try await net.waitUntil("two subscriptions refused") { net.counters[0].refusedSubscriptions == 2 }
            let known = (0..<5).filter { net.services[0].peers(topic: "t\($0)").contains(net.peerID(1)) }
            #expect(known.count == 3)
            // Room again after an unsubscription.
            subscriptions[known[0]].cancel()
            let more = try net.services[1].subscribe("t9")
            try await net.services[0].waitForPeers(topic: "t9", deadline: .after(.seconds(10)))
            withExtendedLifetime((subscriptions, more)) {}
        }
    }

    @Test func queuedBytesAreReservedReleasedAndBounded() throws {
        let memory = CountingMemoryAccount(limit: 10)
        let queue = OutboundQueue(capacity: 100, maxBytes: 8, memory: memory)
        let recorder = OutboundQueueTests.RecordingSink()
        #expect(queue.yield(OutboundQueueTests.frame("abcd")) == .queued)
        #expect(memory.inUse == 4)
        #expect(queue.yield(OutboundQueueTests.frame("efgh")) == .queued)
        #expect(queue.yield(OutboundQueueTests.frame("i")) == .dropped(.full))  // 9 bytes > maxBytes
        #expect(memory.inUse == 8)
        queue.attach(recorder.sink)
        recorder.setHold(true)
        recorder.loop.run()
        #expect(memory.inUse == 8)  // being written: still held
        recorder.release()
        recorder.loop.run()
        #expect(memory.inUse == 0)
        #expect(recorder.writes == ["abcdefgh"])
        // The account refuses before the queue's own limit is reached.
        let tight = CountingMemoryAccount(limit: 3)
        let other = OutboundQueue(capacity: 100, maxBytes: 100, memory: tight)
        #expect(other.yield(OutboundQueueTests.frame("abcd")) == .dropped(.noMemory))
        #expect(other.yield(OutboundQueueTests.frame("ab")) == .queued)
        #expect(tight.inUse == 2)
    }

    @Test func framesNeverWrittenAreReleased() {
        let memory = CountingMemoryAccount(limit: 100)
        do {
            let queue = OutboundQueue(capacity: 10, memory: memory)
            _ = queue.yield(OutboundQueueTests.frame("never written"))
            queue.finish()
            #expect(memory.inUse == 13)
        }
        #expect(memory.inUse == 0)
        // A failed write gives back what was queued and what was being written.
        let queue = OutboundQueue(capacity: 10, memory: memory)
        let recorder = OutboundQueueTests.RecordingSink()
        queue.attach(recorder.sink)
        recorder.setHold(true)
        _ = queue.yield(OutboundQueueTests.frame("doomed"))
        recorder.loop.run()
        _ = queue.yield(OutboundQueueTests.frame("queued"))
        #expect(memory.inUse == 12)
        recorder.release(failing: OutboundQueueTests.WriteFailed())
        recorder.loop.run()
        #expect(memory.inUse == 0)
    }

    @Test func aPeerThatDoesNotReadCostsAtMostItsQueue() async throws {
        let memory = CountingMemoryAccount(limit: 1 << 30)
        let gate = NIOLockedValueBox(false)
        try await PubSubTestNetwork.with(
            nodes: 2, edges: [(0, 1)],
            configuration: { $0 == 0 ? .defaults { $0.memory = memory; $0.maxQueuedBytesPerPeer = 64 << 10 } : .defaults }
        ) { net in
            // Node 1 stops reading pubsub: its validator holds the first message until the gate
            // opens (reading pauses while a validator runs), so node 0's writes stall.
            net.services[1].setValidator("t", timeout: .seconds(20)) { _ in
                for _ in 0..<2000 where !gate.withLockedValue({ $0 }) { try? await Task.sleep(for: .milliseconds(5)) }
                return .accept
            }
            let subscription = try net.services[1].subscribe("t")
            try await net.waitForSubscriptions("t", subscribers: [1])
            let payload = [UInt8](repeating: 7, count: 16 << 10)
            for _ in 0..<200 { try await net.services[0].publish("t", payload) }
            try await net.waitUntil("RPCs were dropped") { net.counters[0].dropped > 0 }
            // Never more than the queue's byte limit (queued and being written).
            #expect(memory.inUse <= 64 << 10)
            gate.withLockedValue { $0 = true }
            withExtendedLifetime(subscription) {}
        }
        #expect(await PubSubStartupTests.eventually(.seconds(5)) { memory.inUse == 0 })
    }

    @Test func whatAPeerIsSendingIsHeldOnlyWithinTheMemoryAccount() async throws {
        let memory = CountingMemoryAccount(limit: 8 << 10)
        try await PubSubTestNetwork.with(
            nodes: 2, edges: [(0, 1)], configuration: { $0 == 0 ? .defaults { $0.memory = memory } : .defaults }
        ) { net in
            let received = Collector(try net.services[0].subscribe("t"))
            try await net.waitForSubscriptions("t", subscribers: [0])
            try await net.services[1].publish("t", [UInt8](repeating: 1, count: 1000))
            try await net.waitUntil("the small message arrived") { received.messages.count == 1 }
            #expect(await PubSubStartupTests.eventually(.seconds(5)) { memory.inUse == 0 })
            // 20 KiB in one RPC: more than the account lets node 0 hold for it.
            try await net.services[1].publish("t", [UInt8](repeating: 2, count: 20 << 10))
            try await net.waitUntil("node 1 was dropped") {
                net.counters[0].memoryRefusals == 1 && !net.services[0].peers.contains(net.peerID(1))
            }
            #expect(received.messages.count == 1)
            #expect(await PubSubStartupTests.eventually(.seconds(5)) { memory.inUse == 0 })
        }
    }

    // MARK: - ServiceLifecycle

    @Test func runStartsAndStopsOnCancellationOrStop() async throws {
        try await withHost(configuration: .defaults { $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")] }) { host in
            let service = try PubSubService(host: host, router: FloodSubRouter())
            let running = Task { try await service.run() }
            #expect(await PubSubStartupTests.eventually(.seconds(5)) { host.supportedProtocols.contains(FloodSubRouter.protocolID) })
            running.cancel()
            try await running.value
            #expect(!host.supportedProtocols.contains(FloodSubRouter.protocolID))
            #expect(throws: PubSubError.notRunning) { try service.subscribe("t") }

            let second = try PubSubService(host: host, router: FloodSubRouter())
            let runningSecond = Task { try await second.run() }
            #expect(await PubSubStartupTests.eventually(.seconds(5)) { host.supportedProtocols.contains(FloodSubRouter.protocolID) })
            await second.stop()
            try await runningSecond.value  // returns after stop()
            // After stop, run() has nothing to run.
            await #expect(throws: PubSubError.notRunning) { try await second.run() }
        }
    }
}
