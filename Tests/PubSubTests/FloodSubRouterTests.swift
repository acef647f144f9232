import PointSub
import Testing

@testable import PubSub

@Suite struct FloodSubRouterTests {
    private let now = ContinuousClock.now
    private let peers = (0..<4).map { _ in PrivateKey.generateEd25519().peerID }.sorted()

    private func sendTargets(_ actions: [PubSubRouterAction]) -> [PeerID] {
        actions.map { action in
            switch action {
            case .send(let peer, _): peer
            }
        }
    }

    private func router(subscribing subscribed: [Int], to topic: String = "t") -> FloodSubRouter {
        var router = FloodSubRouter()
        for peer in peers { #expect(router.addPeer(peer, protocolID: FloodSubRouter.protocolID, now: now).isEmpty) }
        for index in subscribed {
            #expect(router.peerSubscription(peers[index], topic: topic, subscribed: true, now: now).isEmpty)
        }
        return router
    }

    @Test func speaksFloodsubOnlyAndHasNoHeartbeat() {
        let router = FloodSubRouter()
        #expect(router.protocols == ["/floodsub/1.0.0"])
        #expect(router.heartbeatInterval == nil)
    }

    @Test func publishedMessageGoesToEverySubscriberOnce() {
        var router = router(subscribing: [0, 2, 3])
        let message = PubSubRPC.Message(from: [1], data: [42], seqno: [0, 0, 0, 0, 0, 0, 0, 1], topic: "t")
        let actions = router.route(message, id: [1], from: nil, now: now)
        #expect(sendTargets(actions) == [peers[0], peers[2], peers[3]])
        for action in actions {
            guard case .send(_, let rpc) = action else { continue }
            #expect(rpc == PubSubRPC(messages: [message]))
        }
    }

    @Test func neverSendsBackToTheSourceOrTheAuthor() {
        var router = router(subscribing: [0, 1, 2, 3])
        let message = PubSubRPC.Message(from: peers[3].bytes, data: [], seqno: [1], topic: "t")
        let actions = router.route(message, id: [1], from: peers[0], now: now)
        #expect(sendTargets(actions) == [peers[1], peers[2]])
    }

    @Test func otherTopicsAndUnsubscribedPeersGetNothing() {
        var router = router(subscribing: [0, 1])
        _ = router.peerSubscription(peers[1], topic: "t", subscribed: false, now: now)
        _ = router.peerSubscription(peers[2], topic: "other", subscribed: true, now: now)
        #expect(router.peers(subscribedTo: "t") == [peers[0]])
        #expect(router.peers(subscribedTo: "other") == [peers[2]])
        let actions = router.route(.init(data: [], topic: "t"), id: [1], from: nil, now: now)
        #expect(sendTargets(actions) == [peers[0]])
        #expect(router.route(.init(data: [], topic: "none"), id: [2], from: nil, now: now).isEmpty)
    }

    @Test func removedPeersAreForgottenWithTheirSubscriptions() {
        var router = router(subscribing: [0, 1])
        #expect(router.removePeer(peers[0], now: now).isEmpty)
        #expect(router.peers(subscribedTo: "t") == [peers[1]])
        // A late subscription from the removed peer does not bring it back.
        _ = router.peerSubscription(peers[0], topic: "t", subscribed: true, now: now)
        #expect(router.peers(subscribedTo: "t") == [peers[1]])
    }

    @Test func joinLeaveAndControlProduceNoActions() {
        var router = router(subscribing: [0])
        #expect(router.join("t", now: now).isEmpty)
        #expect(router.leave("t", now: now).isEmpty)
        let control = PubSubRPC.Control(ihave: [.init(topic: "t", messageIDs: [[1]])], graft: [.init(topic: "t")])
        #expect(router.handleControl(control, from: peers[0], now: now, isSeen: { _ in false }).isEmpty)
        #expect(router.heartbeat(now: now).isEmpty)
    }
}
