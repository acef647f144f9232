import NIOConcurrencyHelpers
import PointSub
import Testing

@testable import PubSub

/// Floodsub plus a heartbeat that gossips the IDs it routed as IHAVE, recording what the engine
/// hands it: enough to check the engine's heartbeat task, control path and `isSeen`.
private struct GossipingRouter: PubSubRouter {
    struct Log: Sendable {
        var heartbeats = 0
        var ihaves: [(from: PeerID, id: MessageID, seen: Bool)] = []
        var rejected: [MessageID] = []
    }

    let log: NIOLockedValueBox<Log>
    var flood = FloodSubRouter()
    var routed: [MessageID] = []
    var connected: Set<PeerID> = []

    var protocols: [String] { ["/gossiping-test/1.0.0"] }
    var heartbeatInterval: Duration? { .milliseconds(50) }

    mutating func addPeer(_ peer: PeerID, protocolID: String, now: ContinuousClock.Instant) -> [PubSubRouterAction] {
        connected.insert(peer)
        return flood.addPeer(peer, protocolID: protocolID, now: now)
    }

    mutating func removePeer(_ peer: PeerID, now: ContinuousClock.Instant) -> [PubSubRouterAction] {
        connected.remove(peer)
        return flood.removePeer(peer, now: now)
    }

    mutating func peerSubscription(_ peer: PeerID, topic: String, subscribed: Bool, now: ContinuousClock.Instant) -> [PubSubRouterAction] {
        flood.peerSubscription(peer, topic: topic, subscribed: subscribed, now: now)
    }

    mutating func join(_ topic: String, now: ContinuousClock.Instant) -> [PubSubRouterAction] { [] }
    mutating func leave(_ topic: String, now: ContinuousClock.Instant) -> [PubSubRouterAction] { [] }

    mutating func route(_ message: PubSubRPC.Message, id: MessageID, from source: PeerID?, now: ContinuousClock.Instant) -> [PubSubRouterAction] {
        routed.append(id)
        return flood.route(message, id: id, from: source, now: now)
    }

    mutating func handleControl(_ control: PubSubRPC.Control, from peer: PeerID, now: ContinuousClock.Instant,
                                isSeen: (MessageID) -> Bool) -> [PubSubRouterAction] {
        let entries = control.ihave.flatMap { $0.messageIDs }.map { (peer, $0, isSeen($0)) }
        log.withLockedValue { $0.ihaves += entries }
        return []
    }

    mutating func messageRejected(_ message: PubSubRPC.Message, id: MessageID, from peer: PeerID, now: ContinuousClock.Instant) {
        log.withLockedValue { $0.rejected.append(id) }
    }

    mutating func heartbeat(now: ContinuousClock.Instant) -> [PubSubRouterAction] {
        log.withLockedValue { $0.heartbeats += 1 }
        let ids = [[0xEE]] + routed  // one ID nobody has, then what we routed
        let rpc = PubSubRPC(control: .init(ihave: [.init(topic: "t", messageIDs: ids)]))
        return connected.sorted().map { .send(to: $0, rpc) }
    }

    func peers(subscribedTo topic: String) -> [PeerID] { flood.peers(subscribedTo: topic) }
}

@Suite(.timeLimit(.minutes(1)))
struct RouterHooksTests {
    @Test func heartbeatControlIsSeenAndRejectionsReachTheRouter() async throws {
        let logs = [NIOLockedValueBox(GossipingRouter.Log()), NIOLockedValueBox(GossipingRouter.Log())]
        try await PubSubTestNetwork.with(
            nodes: 2, edges: [(0, 1)], router: { GossipingRouter(log: logs[$0]) }
        ) { net in
            #expect(net.services[0].protocols == ["/gossiping-test/1.0.0"])
            let at1 = Collector(try net.services[1].subscribe("t"))
            try await net.waitForSubscriptions("t", subscribers: [1])
            let id = try await net.services[0].publish("t", Array("x".utf8))
            try await net.waitUntil("delivered") { at1.texts == ["x"] }
            try await net.waitUntil("node 1 heard IHAVE for the message") {
                logs[1].withLockedValue { $0.ihaves.contains { $0.id == id } }
            }
            let ihaves = logs[1].withLockedValue { $0.ihaves }
            #expect(ihaves.allSatisfy { $0.from == net.peerID(0) })
            #expect(ihaves.contains { $0.id == [0xEE] && !$0.seen })
            #expect(ihaves.filter { $0.id == id }.allSatisfy { $0.seen })  // node 1 has it
            try await net.waitUntil("the heartbeat keeps beating") { logs[0].withLockedValue { $0.heartbeats } >= 3 }

            net.services[1].setValidator("t") { $0.text == "bad" ? .reject : .accept }
            let bad = try await net.services[0].publish("t", Array("bad".utf8))
            try await net.waitUntil("the rejection reached node 1's router") {
                logs[1].withLockedValue { $0.rejected } == [bad]
            }
        }
        // After stop, no more heartbeats.
        let count = logs[0].withLockedValue { $0.heartbeats }
        try await Task.sleep(for: .milliseconds(150))
        #expect(logs[0].withLockedValue { $0.heartbeats } == count)
    }
}
