import Identity
import Testing
@testable import PubSub

/// IHAVE/IWANT gossip of `GossipSubRouter`.
@Suite struct GossipSubGossipTests {
    let t0 = ContinuousClock.now

    /// A router joined to "t" with 20 peers and one message routed from a mesh peer.
    func routerWithMessage() throws -> (GossipSubRouter, Set<PeerID>, MessageID) {
        var router = try makeRouter(peers: 20, now: t0)
        let mesh = router.join("t", now: t0).grafted
        let (message, id) = testMessage(1)
        _ = router.route(message, id: id, from: mesh.sorted()[0], now: t0)
        return (router, mesh, id)
    }

    @Test func gossipGoesToDLazyNonMeshPeersForThreeHeartbeats() throws {
        let (initial, mesh, id) = try routerWithMessage()
        var router = initial
        var now = t0
        for beat in 1...3 {
            now += .seconds(1)
            let actions = router.heartbeat(now: now)
            // max(D_lazy = 6, 0.25 × 14 non-mesh peers) = 6
            #expect(actions.gossiped.count == 6, "heartbeat \(beat)")
            #expect(actions.gossiped.isDisjoint(with: mesh))
            for peer in actions.gossiped { #expect(actions.ihaveIDs(to: peer) == [id]) }
        }
        now += .seconds(1)
        #expect(router.heartbeat(now: now).gossiped.isEmpty)
    }

    @Test func gossipFactorWidensGossipBeyondDLazy() throws {
        var router = try makeRouter(peers: 106, now: t0)
        let mesh = router.join("t", now: t0).grafted
        let (message, id) = testMessage(1)
        _ = router.route(message, id: id, from: mesh.sorted()[0], now: t0)
        // 100 non-mesh peers × 0.25
        #expect(router.heartbeat(now: t0 + .seconds(1)).gossiped.count == 25)
    }

    @Test func iwantIsServedFromTheCacheUntilTheFifthHeartbeat() throws {
        let (initial, mesh, id) = try routerWithMessage()
        var router = initial
        let asker = try #require(Set((1...20).map(testPeer)).subtracting(mesh).first)
        var now = t0
        for _ in 1...4 { now += .seconds(1); _ = router.heartbeat(now: now) }
        let served = router.control(.init(iwant: [.init(messageIDs: [id])]), from: asker, now: now)
        #expect(served.messages(to: asker).count == 1)
        now += .seconds(1)
        _ = router.heartbeat(now: now)
        #expect(router.control(.init(iwant: [.init(messageIDs: [id])]), from: testPeer(20), now: now).isEmpty)
    }

    @Test func iwantAnswersAreBoundedPerPeer() throws {
        let (initial, _, id) = try routerWithMessage()
        var router = initial
        let iwant = PubSubRPC.Control(iwant: [.init(messageIDs: [id, id])])
        for _ in 1...3 {
            #expect(router.control(iwant, from: testPeer(19), now: t0).messages(to: testPeer(19)).count == 1)
        }
        #expect(router.control(iwant, from: testPeer(19), now: t0).isEmpty)
        #expect(router.control(iwant, from: testPeer(20), now: t0).messages(to: testPeer(20)).count == 1)
        #expect(router.control(.init(iwant: [.init(messageIDs: [[7, 7]])]), from: testPeer(20), now: t0).isEmpty)
    }

    @Test func ihaveAsksOnlyForUnseenMessagesOfJoinedTopics() throws {
        var router = try makeRouter(peers: 3, now: t0)
        _ = router.join("t", now: t0)
        let peer = testPeer(1)
        let ihave = PubSubRPC.Control(ihave: [.init(topic: "t", messageIDs: [[1], [2], [3], [2]]),
                                              .init(topic: "other", messageIDs: [[4]])])
        let actions = router.control(ihave, from: peer, now: t0, seen: [[1]])
        #expect(actions.iwantIDs(to: peer).sorted { $0.lexicographicallyPrecedes($1) } == [[2], [3]])
        #expect(router.control(.init(ihave: [.init(topic: "t", messageIDs: [[1]])]), from: peer, now: t0,
                               seen: [[1]]).isEmpty)
    }

    @Test func ihaveIsBoundedPerHeartbeat() throws {
        var router = try makeRouter(peers: 3, now: t0) { $0.maxIHaveMessages = 2; $0.maxIHaveLength = 5 }
        _ = router.join("t", now: t0)
        let peer = testPeer(1)
        func ihave(_ ids: ClosedRange<UInt8>) -> PubSubRPC.Control {
            .init(ihave: [.init(topic: "t", messageIDs: ids.map { [$0] })])
        }
        // At most maxIHaveLength IDs asked for per heartbeat…
        #expect(router.control(ihave(1...8), from: peer, now: t0).iwantIDs(to: peer).count == 5)
        #expect(router.control(ihave(11...12), from: peer, now: t0).isEmpty)
        _ = router.heartbeat(now: t0 + .seconds(1))
        // …and at most maxIHaveMessages IHAVE RPCs looked at.
        #expect(router.control(ihave(21...21), from: peer, now: t0).iwantIDs(to: peer).count == 1)
        #expect(router.control(ihave(22...22), from: peer, now: t0).iwantIDs(to: peer).count == 1)
        #expect(router.control(ihave(23...23), from: peer, now: t0).isEmpty)
    }

    @Test func brokenIHavePromiseIsPenalised() throws {
        var router = try makeRouter(peers: 3, now: t0)
        _ = router.join("t", now: t0)
        let liar = testPeer(1), honest = testPeer(2)
        let (message, id) = testMessage(5)
        #expect(!router.control(.init(ihave: [.init(topic: "t", messageIDs: [[9, 9]])]), from: liar, now: t0).isEmpty)
        #expect(!router.control(.init(ihave: [.init(topic: "t", messageIDs: [id])]), from: honest, now: t0).isEmpty)
        _ = router.route(message, id: id, from: honest, now: t0 + .seconds(1))

        _ = router.heartbeat(now: t0 + .seconds(2))
        #expect(router.score(of: liar) >= 0)  // not due yet (3 s)
        _ = router.heartbeat(now: t0 + .seconds(4))
        #expect(router.score(of: liar) < 0)
        #expect(router.score(of: honest) >= 0)
    }
}
