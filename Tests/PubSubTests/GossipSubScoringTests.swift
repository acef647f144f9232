import Identity
import Testing
@testable import PubSub

/// How scores steer `GossipSubRouter`.
@Suite struct GossipSubScoringTests {
    let t0 = ContinuousClock.now

    @Test func rejectedMessagesTakeAPeerOutOfMeshThenGossipThenRPCs() throws {
        var router = try makeRouter(peers: 20, now: t0) { $0.dLazy = 20 }
        let mesh = router.join("t", now: t0).grafted
        let bad = mesh.sorted()[0], good = mesh.sorted()[1]
        var n = 0
        func reject(_ router: inout GossipSubRouter) {
            n += 1
            let (message, id) = testMessage(1000 + n)
            router.messageRejected(message, id: id, from: bad, now: t0)
        }
        func routeAndHeartbeat(_ router: inout GossipSubRouter, at seconds: Int) -> [PubSubRouterAction] {
            n += 1
            let (message, id) = testMessage(n)
            _ = router.route(message, id: id, from: good, now: t0 + .seconds(seconds))
            return router.heartbeat(now: t0 + .seconds(seconds))
        }

        // One invalid message: score < 0 → pruned (no peer exchange), not regrafted, still gossiped to.
        reject(&router)
        let first = routeAndHeartbeat(&router, at: 1)
        #expect(router.score(of: bad) < 0)
        #expect(first.prunes(to: bad) == [PubSubRPC.Prune(topic: "t", backoff: 60)])
        #expect(!router.meshPeers(in: "t").contains(bad))
        #expect(router.score(of: bad) >= router.configuration.thresholds.gossip)
        #expect(first.gossiped.contains(bad))

        // Two: below the gossip threshold → no gossip either way.
        reject(&router)
        let second = routeAndHeartbeat(&router, at: 2)
        #expect(router.score(of: bad) < router.configuration.thresholds.gossip)
        #expect(!second.gossiped.contains(bad))
        #expect(!second.grafted.contains(bad))
        #expect(router.control(.init(ihave: [.init(topic: "t", messageIDs: [[42]])]), from: bad, now: t0).isEmpty)

        // Three: below the publish and graylist thresholds.
        reject(&router)
        #expect(router.score(of: bad) < router.configuration.thresholds.graylist)
        #expect(router.isGraylisted(bad))
        let (own, ownID) = testMessage(99)
        let published = router.route(own, id: ownID, from: nil, now: t0 + .seconds(2))
        #expect(published.messageRecipients.count == 19)
        #expect(!published.messageRecipients.contains(bad))
        #expect(router.control(.init(iwant: [.init(messageIDs: [ownID])]), from: bad, now: t0).isEmpty)
        #expect(router.control(.init(iwant: [.init(messageIDs: [ownID])]), from: good, now: t0).messages(to: good) == [own])
    }

    @Test func graftFromANegativelyScoredPeerIsRefused() throws {
        var router = try makeRouter(peers: 7, now: t0)
        let mesh = router.join("t", now: t0).grafted
        let outsider = try #require(Set((1...7).map(testPeer)).subtracting(mesh).first)
        let (message, id) = testMessage(1)
        router.messageRejected(message, id: id, from: outsider, now: t0)
        let actions = router.control(.init(graft: [.init(topic: "t")]), from: outsider, now: t0)
        #expect(actions.prunes(to: outsider) == [PubSubRPC.Prune(topic: "t", backoff: 60)])
        #expect(!router.meshPeers(in: "t").contains(outsider))
    }

    @Test func disabledScoringNeverMovesScores() throws {
        var router = try makeRouter(peers: 3, now: t0) { $0.score = .disabled }
        _ = router.join("t", now: t0)
        let (message, id) = testMessage(1)
        for _ in 1...5 { router.messageRejected(message, id: id, from: testPeer(1), now: t0) }
        _ = router.control(.init(prune: [.init(topic: "t")]), from: testPeer(1), now: t0)
        _ = router.control(.init(graft: [.init(topic: "t")]), from: testPeer(1), now: t0)
        _ = router.heartbeat(now: t0 + .seconds(10))
        #expect(router.score(of: testPeer(1)) == 0)
        #expect(router.meshPeers(in: "t").count == 2)
    }
}
