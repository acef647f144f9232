import Identity
import Testing
@testable import PubSub

/// Mesh formation and maintenance, backoff, fanout and forwarding of `GossipSubRouter`.
@Suite struct GossipSubRouterTests {
    let t0 = ContinuousClock.now

    // MARK: Join and mesh maintenance

    @Test func joinGraftsDPeers() throws {
        var router = try makeRouter(peers: 10, now: t0)
        let actions = router.join("t", now: t0)
        #expect(actions.grafted.count == 6)
        #expect(router.meshPeers(in: "t") == actions.grafted)
        #expect(router.joinedTopics == ["t"])
        #expect(router.join("t", now: t0).isEmpty)  // already joined
    }

    @Test func joinWithFewPeersTakesThemAll() throws {
        var router = try makeRouter(peers: 3, now: t0)
        #expect(router.join("t", now: t0).grafted == Set((1...3).map(testPeer)))
    }

    @Test func joinStartsFromTheFanout() throws {
        var router = try makeRouter(peers: 20, now: t0) { $0.floodPublish = false }
        let (message, id) = testMessage(1)
        let sent = router.route(message, id: id, from: nil, now: t0).messageRecipients
        #expect(sent.count == 6)
        #expect(router.fanoutPeers(in: "t") == sent)
        #expect(router.join("t", now: t0).grafted == sent)
        #expect(router.fanoutPeers(in: "t").isEmpty)
    }

    @Test func heartbeatGraftsBelowDLow() throws {
        var router = try makeRouter(peers: 12, now: t0)
        _ = router.join("t", now: t0)
        // Three mesh peers PRUNE us: the mesh falls to 3, below Dlo, and they are backing off.
        let pruned = Array(router.meshPeers(in: "t").sorted().prefix(3))
        for peer in pruned { _ = router.control(.init(prune: [.init(topic: "t")]), from: peer, now: t0) }
        #expect(router.meshPeers(in: "t").count == 3)
        let actions = router.heartbeat(now: t0 + .seconds(1))
        #expect(actions.grafted.count == 3)
        #expect(actions.grafted.isDisjoint(with: pruned))
        #expect(router.meshPeers(in: "t").count == 6)
    }

    /// rust-libp2p's rule: a subscription from a new peer fills a mesh below Dlo at once (a GRAFT
    /// right away), so messages received before the next heartbeat still travel on.
    @Test func subscriptionFillsAMeshBelowDLowAtOnce() throws {
        var router = try makeRouter(peers: 2, now: t0)
        _ = router.join("t", now: t0)
        #expect(router.meshPeers(in: "t").count == 2)
        router.connect([testPeer(3), testPeer(4)], now: t0)
        #expect(router.meshPeers(in: "t").count == 4)
        // At Dlo: the next one waits for the heartbeat (which leaves a mesh at Dlo alone).
        router.connect([testPeer(5)], now: t0)
        #expect(router.meshPeers(in: "t").count == 4)
        // Not for a topic we have not joined.
        router.connect([testPeer(6)], topic: "other", now: t0)
        #expect(router.meshPeers(in: "other").isEmpty)
    }

    @Test func heartbeatLeavesAMeshAtDLowAlone() throws {
        var router = try makeRouter(peers: 4, now: t0)
        _ = router.join("t", now: t0)
        router.connect((5...12).map(testPeer), now: t0)
        #expect(router.heartbeat(now: t0 + .seconds(1)).grafted.isEmpty)
        #expect(router.meshPeers(in: "t").count == 4)
    }

    @Test func heartbeatPrunesAboveDHighDownToD() throws {
        var router = try makeRouter(now: t0)
        _ = router.join("t", now: t0)
        let peers = (1...14).map(testPeer)
        router.connect(peers, outbound: true, now: t0)
        for peer in peers { #expect(router.control(.init(graft: [.init(topic: "t")]), from: peer, now: t0).isEmpty) }
        #expect(router.meshPeers(in: "t").count == 14)

        let now = t0 + .seconds(1)
        let actions = router.heartbeat(now: now)
        #expect(router.meshPeers(in: "t").count == 6)
        #expect(actions.pruned.count == 8)
        #expect(actions.pruned.isDisjoint(with: router.meshPeers(in: "t")))
        for peer in actions.pruned {
            #expect(actions.prunes(to: peer) == [PubSubRPC.Prune(topic: "t", backoff: 60)])
            #expect(router.isBackingOff(peer, topic: "t", now: now))
        }
    }

    @Test func graftAtDHighIsAcceptedOnlyFromOutboundPeers() throws {
        var router = try makeRouter(now: t0)
        _ = router.join("t", now: t0)
        router.connect((1...13).map(testPeer), now: t0)
        router.connect([testPeer(14)], outbound: true, now: t0)
        for n in 1...12 { _ = router.control(.init(graft: [.init(topic: "t")]), from: testPeer(n), now: t0) }
        #expect(router.meshPeers(in: "t").count == 12)

        let refused = router.control(.init(graft: [.init(topic: "t")]), from: testPeer(13), now: t0)
        #expect(refused.pruned == [testPeer(13)])
        #expect(!router.meshPeers(in: "t").contains(testPeer(13)))
        #expect(router.control(.init(graft: [.init(topic: "t")]), from: testPeer(14), now: t0).isEmpty)
        #expect(router.meshPeers(in: "t").count == 13)
    }

    @Test func pruningKeepsTheBestScoredAndTheOutboundQuota() throws {
        for seed in UInt64(1)...20 {
            var router = try makeRouter(now: t0, seed: seed)
            _ = router.join("t", now: t0)
            // Inbound 3…14 first (inbound GRAFTs stop at D_hi), then the outbound 1 and 2.
            router.connect((3...14).map(testPeer), now: t0)
            router.connect([testPeer(1), testPeer(2)], outbound: true, now: t0)
            for n in [Int](3...14) + [1, 2] {
                _ = router.control(.init(graft: [.init(topic: "t")]), from: testPeer(n), now: t0)
            }
            #expect(router.meshPeers(in: "t").count == 14)
            // Peers 3…6 deliver first messages (P₂) and so score best.
            for n in 3...6 {
                let (message, id) = testMessage(n)
                _ = router.route(message, id: id, from: testPeer(n), now: t0)
            }
            _ = router.heartbeat(now: t0 + .seconds(1))
            // D_score = 4 best by score, D_out = 2 outbound: exactly these six remain.
            #expect(router.meshPeers(in: "t") == Set([1, 2, 3, 4, 5, 6].map(testPeer)), "seed \(seed)")
        }
    }

    @Test func heartbeatGraftsOutboundPeersToFillTheQuota() throws {
        var router = try makeRouter(peers: 6, now: t0)
        _ = router.join("t", now: t0)
        router.connect([testPeer(7), testPeer(8), testPeer(9)], outbound: true, now: t0)
        let actions = router.heartbeat(now: t0 + .seconds(1))
        #expect(actions.grafted.count == 2)
        #expect(actions.grafted.isSubset(of: [testPeer(7), testPeer(8), testPeer(9)]))
        #expect(router.meshPeers(in: "t").count == 8)
    }

    @Test func peersLeavingTheTopicOrDisconnectingLeaveTheMesh() throws {
        var router = try makeRouter(peers: 6, now: t0)
        _ = router.join("t", now: t0)
        _ = router.peerSubscription(testPeer(1), topic: "t", subscribed: false, now: t0)
        _ = router.removePeer(testPeer(2), now: t0)
        #expect(router.meshPeers(in: "t") == Set((3...6).map(testPeer)))
        #expect(router.peers(subscribedTo: "t") == (3...6).map(testPeer))
    }

    // MARK: Backoff

    @Test func prunedPeerIsNotRegraftedBeforeItsBackoff() throws {
        var router = try makeRouter(peers: 4, now: t0)
        _ = router.join("t", now: t0)
        let peer = testPeer(1)
        _ = router.control(.init(prune: [.init(topic: "t", backoff: 30)]), from: peer, now: t0)
        #expect(router.meshPeers(in: "t").count == 3)  // below D_lo, and peer 1 is the only candidate
        #expect(router.isBackingOff(peer, topic: "t", now: t0 + .seconds(29)))
        #expect(router.heartbeat(now: t0 + .seconds(1)).grafted.isEmpty)
        #expect(router.heartbeat(now: t0 + .seconds(29)).grafted.isEmpty)
        // Backoff over, but we leave slack for the peer's heartbeat to clear its side.
        #expect(router.heartbeat(now: t0 + .seconds(31)).grafted.isEmpty)
        #expect(router.heartbeat(now: t0 + .seconds(33)).grafted == [peer])
    }

    @Test func graftDuringBackoffIsPrunedAndPenalised() throws {
        var router = try makeRouter(peers: 6, now: t0)
        _ = router.join("t", now: t0)
        let peer = testPeer(1)
        _ = router.control(.init(prune: [.init(topic: "t")]), from: peer, now: t0)  // default backoff, 60 s
        #expect(router.score(of: peer) == 0)

        let actions = router.control(.init(graft: [.init(topic: "t")]), from: peer, now: t0 + .seconds(5))
        #expect(actions.prunes(to: peer) == [PubSubRPC.Prune(topic: "t", backoff: 60)])
        #expect(!router.meshPeers(in: "t").contains(peer))
        // Two P₇ penalties (in backoff, and within the GRAFT flood threshold): -10 × 2².
        #expect(router.score(of: peer) == -40)
        // The backoff was extended from the GRAFT.
        #expect(router.isBackingOff(peer, topic: "t", now: t0 + .seconds(62)))
    }

    @Test func graftAfterBackoffIsAccepted() throws {
        var router = try makeRouter(peers: 6, now: t0)
        _ = router.join("t", now: t0)
        let peer = testPeer(1)
        _ = router.control(.init(prune: [.init(topic: "t", backoff: 5)]), from: peer, now: t0)
        #expect(router.control(.init(graft: [.init(topic: "t")]), from: peer, now: t0 + .seconds(6)).isEmpty)
        #expect(router.meshPeers(in: "t").contains(peer))
        #expect(router.score(of: peer) >= 0)
    }

    @Test func graftForATopicWeDidNotJoinIsIgnored() throws {
        var router = try makeRouter(peers: 1, now: t0)
        #expect(router.control(.init(graft: [.init(topic: "t")]), from: testPeer(1), now: t0).isEmpty)
        #expect(router.meshPeers(in: "t").isEmpty)
    }

    @Test func pruneForATopicWeDidNotJoinIsIgnored() throws {
        var router = try makeRouter(peers: 1, now: t0)
        _ = router.control(.init(prune: [.init(topic: "t", backoff: 600)]), from: testPeer(1), now: t0)
        #expect(!router.isBackingOff(testPeer(1), topic: "t", now: t0))
        #expect(router.join("t", now: t0).grafted == [testPeer(1)])
    }

    @Test func leavePrunesWithTheUnsubscribeBackoff() throws {
        var router = try makeRouter(peers: 6, now: t0)
        let mesh = router.join("t", now: t0).grafted
        let actions = router.leave("t", now: t0)
        #expect(actions.pruned == mesh)
        for peer in mesh { #expect(actions.prunes(to: peer) == [PubSubRPC.Prune(topic: "t", backoff: 10)]) }
        #expect(router.joinedTopics.isEmpty)
        #expect(router.leave("t", now: t0).isEmpty)

        // Rejoining within the backoff grafts none of them; after it (plus slack), all.
        #expect(router.join("t", now: t0 + .seconds(5)).grafted.isEmpty)
        _ = router.leave("t", now: t0 + .seconds(5))
        #expect(router.join("t", now: t0 + .seconds(13)).grafted == mesh)
    }

    @Test func meshsub10PeersGetABarePrune() throws {
        var router = try makeRouter(peers: 2, protocolID: GossipSubRouter.meshsubV10, now: t0)
        _ = router.join("t", now: t0)
        let actions = router.leave("t", now: t0)
        #expect(actions.prunes(to: testPeer(1)) == [PubSubRPC.Prune(topic: "t")])
    }

    @Test func pruneCarriesPeerExchangeWhenEnabled() throws {
        var router = try makeRouter(peers: 10, now: t0) { $0.peerExchange = true; $0.prunePeers = 3 }
        let mesh = router.join("t", now: t0).grafted
        let peer = try #require(mesh.first)
        let prune = try #require(router.leave("t", now: t0).prunes(to: peer).first)
        #expect(prune.peers.count == 3)
        #expect(!prune.peers.contains(PubSubRPC.Prune.PeerInfo(peerID: peer.bytes)))
    }

    @Test func peerExchangeIsTakenOnlyFromWellScoredPeers() throws {
        let trusted = testPeer(1)
        var router = try makeRouter(peers: 2, now: t0) {
            $0.score.appSpecificScore = { p in p == trusted ? 200 : 0 }
        }
        _ = router.join("t", now: t0)
        let offered = [PubSubRPC.Prune.PeerInfo(peerID: testPeer(50).bytes), .init(peerID: [1, 2, 3])]
        _ = router.control(.init(prune: [.init(topic: "t", peers: offered)]), from: testPeer(2), now: t0)
        #expect(router.takePeerExchangeOffers().isEmpty)
        _ = router.control(.init(prune: [.init(topic: "t", peers: offered)]), from: trusted, now: t0)
        // The malformed peer ID is dropped.
        #expect(router.takePeerExchangeOffers() == [offered[0]])
        #expect(router.takePeerExchangeOffers().isEmpty)
    }

    // MARK: Fanout and publishing

    @Test func fanoutCarriesUnsubscribedPublishingAndExpires() throws {
        var router = try makeRouter(peers: 10, now: t0) { $0.floodPublish = false }
        let (m1, id1) = testMessage(1)
        let first = router.route(m1, id: id1, from: nil, now: t0).messageRecipients
        #expect(first.count == 6)
        #expect(router.fanoutPeers(in: "t") == first)

        let (m2, id2) = testMessage(2)
        #expect(router.route(m2, id: id2, from: nil, now: t0 + .seconds(30)).messageRecipients == first)
        _ = router.heartbeat(now: t0 + .seconds(31))
        #expect(router.fanoutPeers(in: "t") == first)
        _ = router.heartbeat(now: t0 + .seconds(90))
        #expect(router.fanoutPeers(in: "t") == first)  // 60 s since the last publish, not more
        _ = router.heartbeat(now: t0 + .seconds(91))
        #expect(router.fanoutPeers(in: "t").isEmpty)
    }

    @Test func fanoutIsToppedUpWhenPeersLeave() throws {
        var router = try makeRouter(peers: 10, now: t0) { $0.floodPublish = false }
        let (message, id) = testMessage(1)
        let fanout = router.route(message, id: id, from: nil, now: t0).messageRecipients
        let gone = try #require(fanout.first)
        _ = router.removePeer(gone, now: t0)
        _ = router.heartbeat(now: t0 + .seconds(1))
        #expect(router.fanoutPeers(in: "t").count == 6)
        #expect(!router.fanoutPeers(in: "t").contains(gone))
    }

    @Test func floodPublishingSendsOwnMessagesToEveryTopicPeer() throws {
        var router = try makeRouter(peers: 10, now: t0)
        _ = router.join("t", now: t0)
        router.connect([testPeer(20)], topic: "other", now: t0)
        let (message, id) = testMessage(1, author: testPeer(99))
        #expect(router.route(message, id: id, from: nil, now: t0).messageRecipients == Set((1...10).map(testPeer)))

        // Not subscribed: still every topic peer, and no fanout is kept.
        var publisher = try makeRouter(peers: 10, now: t0)
        #expect(publisher.route(message, id: id, from: nil, now: t0).messageRecipients.count == 10)
        #expect(publisher.fanoutPeers(in: "t").isEmpty)
    }

    @Test func peersWithoutAStreamGetNothing() throws {
        var router = try makeRouter(peers: 2, now: t0)
        _ = router.peerSubscription(testPeer(9), topic: "t", subscribed: true, now: t0)  // before addPeer
        let (message, id) = testMessage(1)
        #expect(router.route(message, id: id, from: nil, now: t0).messageRecipients == [testPeer(1), testPeer(2)])
        #expect(router.join("t", now: t0).grafted == [testPeer(1), testPeer(2)])
    }

    @Test func forwardsToTheMeshOnlyAndNeverToSourceOrAuthor() throws {
        var router = try makeRouter(peers: 12, now: t0)
        let mesh = router.join("t", now: t0).grafted
        let meshList = mesh.sorted()
        let source = meshList[0], author = meshList[1]
        let (message, id) = testMessage(1, author: author)
        let recipients = router.route(message, id: id, from: source, now: t0).messageRecipients
        #expect(recipients == mesh.subtracting([source, author]))
        #expect(recipients.count == 4)
    }

    @Test func floodsubPeersGetEveryMessageOfTheirTopics() throws {
        var router = try makeRouter(peers: 8, now: t0)
        let floodsub = [testPeer(11), testPeer(12)]
        router.connect(floodsub, protocolID: GossipSubRouter.floodsub, now: t0)
        router.connect([testPeer(13)], topic: "other", protocolID: GossipSubRouter.floodsub, now: t0)
        let mesh = router.join("t", now: t0).grafted
        #expect(mesh.isDisjoint(with: floodsub))

        let source = try #require(mesh.first)
        let (message, id) = testMessage(1)
        let recipients = router.route(message, id: id, from: source, now: t0).messageRecipients
        #expect(recipients == mesh.subtracting([source]).union(floodsub))

        // No gossip and no control for floodsub peers.
        let gossip = router.heartbeat(now: t0 + .seconds(1))
        #expect(gossip.gossiped.isDisjoint(with: floodsub))
        #expect(router.control(.init(graft: [.init(topic: "t")]), from: floodsub[0], now: t0).isEmpty)
        #expect(!router.meshPeers(in: "t").contains(floodsub[0]))

        // Publishing without flood publish still reaches them.
        var publisher = try makeRouter(peers: 8, now: t0) { $0.floodPublish = false }
        publisher.connect(floodsub, protocolID: GossipSubRouter.floodsub, now: t0)
        let sent = publisher.route(message, id: id, from: nil, now: t0).messageRecipients
        #expect(sent.isSuperset(of: floodsub))
        #expect(sent.count == 8)  // 6 fanout peers and the 2 floodsub peers
    }

    @Test func explicitPeersGetMessagesButNeverJoinTheMesh() throws {
        let explicit = testPeer(1)
        var router = try makeRouter(peers: 8, now: t0) { $0.explicitPeers = [explicit] }
        let mesh = router.join("t", now: t0).grafted
        #expect(!mesh.contains(explicit))
        let refused = router.control(.init(graft: [.init(topic: "t")]), from: explicit, now: t0)
        #expect(refused.pruned == [explicit])
        let source = try #require(mesh.first)
        let (message, id) = testMessage(1)
        #expect(router.route(message, id: id, from: source, now: t0).messageRecipients.contains(explicit))
    }
}
