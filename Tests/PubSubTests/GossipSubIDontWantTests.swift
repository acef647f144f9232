import Identity
import Testing
@testable import PubSub

/// Gossipsub v1.2 in `GossipSubRouter`: the protocol list, IDONTWANT sent for large new messages,
/// IDONTWANT received (honoured when forwarding and answering IWANT, forgotten after its TTL,
/// bounded per RPC, per heartbeat and per peer) and the counters.
@Suite struct GossipSubIDontWantTests {
    let t0 = ContinuousClock.now
    let v12 = GossipSubRouter.meshsubV12

    /// A message with `size` bytes of data by `author` (default: test peer 100).
    func largeMessage(_ n: Int, size: Int = 1024, author: PeerID = testPeer(100)) -> (PubSubRPC.Message, MessageID) {
        var (message, id) = testMessage(n, author: author)
        message.data = [UInt8](repeating: 7, count: size)
        return (message, id)
    }

    /// Four v1.2 peers (1…4) in the mesh of "t".
    func meshOfFour(_ configure: (inout GossipSubConfiguration) -> Void = { _ in }) throws -> GossipSubRouter {
        var router = try makeRouter(peers: 4, protocolID: v12, now: t0, configure)
        _ = router.join("t", now: t0)
        #expect(router.meshPeers(in: "t") == Set((1...4).map(testPeer)))
        return router
    }

    func counters(_ router: GossipSubRouter) -> PubSubCounters {
        var counters = PubSubCounters()
        router.addCounters(to: &counters)
        return counters
    }

    func idontwant(_ ids: [MessageID]) -> PubSubRPC.Control { .init(idontwant: [.init(messageIDs: ids)]) }

    @Test func protocolsPreferV12UnlessTurnedOff() throws {
        #expect(try GossipSubRouter().protocols == ["/meshsub/1.2.0", "/meshsub/1.1.0", "/meshsub/1.0.0", "/floodsub/1.0.0"])
        let v11 = try GossipSubRouter(configuration: .defaults { $0.meshsubV12 = false })
        #expect(v11.protocols == ["/meshsub/1.1.0", "/meshsub/1.0.0", "/floodsub/1.0.0"])
    }

    // MARK: Sending

    @Test func largeNewMessageSendsIDontWantToV12MeshPeersButTheSender() throws {
        var router = try makeRouter(peers: 4, protocolID: v12, now: t0)
        // A v1.1 mesh peer gets none: it would not understand it.
        router.connect([testPeer(5)], protocolID: GossipSubRouter.meshsubV11, now: t0)
        _ = router.join("t", now: t0)
        #expect(router.meshPeers(in: "t") == Set((1...5).map(testPeer)))
        let (message, id) = largeMessage(1)
        let actions = router.receivedNew(message, id: id, from: testPeer(1), now: t0)
        #expect(Set(actions.sends.map(\.peer)) == [testPeer(2), testPeer(3), testPeer(4)])
        for (_, rpc) in actions.sends {
            // An RPC of its own: the IDONTWANT alone, nothing piggybacked.
            #expect(rpc == PubSubRPC(control: .init(idontwant: [.init(messageIDs: [id])])))
        }
        #expect(counters(router).idontwantSent == 3)
        // Another copy, new to the engine too (not validated yet): no second IDONTWANT.
        #expect(router.receivedNew(message, id: id, from: testPeer(2), now: t0).isEmpty)
        #expect(counters(router).idontwantSent == 3)
    }

    @Test func noIDontWantForSmallMessagesOtherTopicsOrTheAuthor() throws {
        var router = try meshOfFour()
        let (small, smallID) = largeMessage(1, size: 1023)
        #expect(router.receivedNew(small, id: smallID, from: testPeer(1), now: t0).isEmpty)
        let (elsewhere, elsewhereID) = {
            var (message, id) = largeMessage(2)
            message.topic = "not joined"
            return (message, id)
        }()
        #expect(router.receivedNew(elsewhere, id: elsewhereID, from: testPeer(1), now: t0).isEmpty)
        // Authored by mesh peer 4, forwarded by 1: 4 has it.
        let (byFour, byFourID) = largeMessage(3, author: testPeer(4))
        #expect(Set(router.receivedNew(byFour, id: byFourID, from: testPeer(1), now: t0).sends.map(\.peer))
                == [testPeer(2), testPeer(3)])
        // The threshold is configurable; with v1.2 off nothing is sent.
        var lower = try meshOfFour { $0.idontwantMessageThreshold = 10 }
        let (medium, mediumID) = largeMessage(4, size: 10)
        #expect(lower.receivedNew(medium, id: mediumID, from: testPeer(1), now: t0).sends.count == 3)
        var off = try makeRouter(peers: 4, protocolID: v12, now: t0) { $0.meshsubV12 = false }
        _ = off.join("t", now: t0)
        let (message, id) = largeMessage(5)
        #expect(off.receivedNew(message, id: id, from: testPeer(1), now: t0).isEmpty)
    }

    @Test func announcedIDsAreForgottenAfterTheirTTL() throws {
        var router = try meshOfFour()
        let (message, id) = largeMessage(1)
        #expect(!router.receivedNew(message, id: id, from: testPeer(1), now: t0).isEmpty)
        _ = router.heartbeats(2, from: t0)
        #expect(router.receivedNew(message, id: id, from: testPeer(1), now: t0).isEmpty)
        _ = router.heartbeats(1, from: t0)
        #expect(!router.receivedNew(message, id: id, from: testPeer(1), now: t0).isEmpty)
    }

    // MARK: Receiving

    @Test func idontwantKeepsTheMessageFromThatPeer() throws {
        var router = try meshOfFour()
        let (message, id) = largeMessage(1)
        #expect(router.control(idontwant([id]), from: testPeer(2), now: t0).isEmpty)
        #expect(router.peerDoesNotWant(id, testPeer(2)))
        #expect(router.dontWantCount(of: testPeer(2)) == 1)
        let recipients = router.route(message, id: id, from: testPeer(1), now: t0).messageRecipients
        #expect(recipients == [testPeer(3), testPeer(4)])
        // Nor in answer to IWANT (the message is in the cache now).
        #expect(router.control(.init(iwant: [.init(messageIDs: [id])]), from: testPeer(2), now: t0).isEmpty)
        #expect(router.control(.init(iwant: [.init(messageIDs: [id])]), from: testPeer(3), now: t0)
            .messages(to: testPeer(3)) == [message])
        let c = counters(router)
        #expect(c.idontwantReceived == 1 && c.idontwantLeftOut == 2 && c.idontwantIgnored == 0)
    }

    @Test func ourOwnMessagesHonourIDontWantToo() throws {
        var router = try meshOfFour()
        let (message, id) = largeMessage(1, author: testPeer(99))
        _ = router.control(idontwant([id]), from: testPeer(3), now: t0)
        #expect(router.route(message, id: id, from: nil, now: t0).messageRecipients == [testPeer(1), testPeer(2), testPeer(4)])
    }

    @Test func idontwantIsRememberedForItsTTLInHeartbeats() throws {
        var router = try meshOfFour()
        let (_, id) = largeMessage(1)
        _ = router.control(idontwant([id]), from: testPeer(2), now: t0)
        let (_, later) = router.heartbeats(2, from: t0)
        #expect(router.peerDoesNotWant(id, testPeer(2)))
        _ = router.heartbeats(1, from: later)
        #expect(!router.peerDoesNotWant(id, testPeer(2)))
        #expect(router.dontWantCount(of: testPeer(2)) == 0)
    }

    @Test func idontwantFromAV11PeerIsIgnored() throws {
        var router = try makeRouter(peers: 2, now: t0)
        _ = router.join("t", now: t0)
        let (message, id) = largeMessage(1)
        _ = router.control(idontwant([id]), from: testPeer(2), now: t0)
        #expect(!router.peerDoesNotWant(id, testPeer(2)))
        #expect(counters(router).idontwantIgnored == 1)
        #expect(router.route(message, id: id, from: testPeer(1), now: t0).messageRecipients == [testPeer(2)])
        // Nor do we send IDONTWANT to v1.1 peers.
        #expect(router.receivedNew(message, id: id, from: testPeer(1), now: t0).isEmpty)
    }

    @Test func atMostMaxIDontWantLengthIDsPerRPC() throws {
        var router = try meshOfFour()
        let ids = (0..<15).map { [UInt8(0xA0), UInt8($0)] }
        // Spread over two IDONTWANTs of one RPC: the limit is per RPC.
        _ = router.control(.init(idontwant: [.init(messageIDs: Array(ids[..<8])), .init(messageIDs: Array(ids[8...]))]),
                           from: testPeer(1), now: t0)
        #expect(router.dontWantCount(of: testPeer(1)) == 10)
        let remembered = ids.prefix(10).filter { router.peerDoesNotWant($0, testPeer(1)) }
        #expect(remembered.count == 10)
        #expect(!router.peerDoesNotWant(ids[10], testPeer(1)))
        let c = counters(router)
        #expect(c.idontwantReceived == 10 && c.idontwantIgnored == 5)
    }

    @Test func atMostMaxIDontWantMessagesRPCsPerHeartbeat() throws {
        var router = try meshOfFour { $0.maxIDontWantMessages = 2 }
        for n in 0..<3 { _ = router.control(idontwant([[UInt8(n)], [UInt8(n), 1]]), from: testPeer(1), now: t0) }
        #expect(router.dontWantCount(of: testPeer(1)) == 4)
        #expect(!router.peerDoesNotWant([2], testPeer(1)))
        #expect(counters(router).idontwantIgnored == 2)
        // Another peer has its own allowance; the next heartbeat starts again.
        _ = router.control(idontwant([[9]]), from: testPeer(2), now: t0)
        #expect(router.peerDoesNotWant([9], testPeer(2)))
        let (_, later) = router.heartbeats(1, from: t0)
        _ = router.control(idontwant([[2]]), from: testPeer(1), now: later)
        #expect(router.peerDoesNotWant([2], testPeer(1)))
    }

    @Test func atMostMaxIDontWantIDsPerPeer() throws {
        var router = try meshOfFour { $0.maxIDontWantIDsPerPeer = 12 }
        for n in 0..<3 {
            _ = router.control(idontwant((0..<5).map { [UInt8(n), UInt8($0)] }), from: testPeer(1), now: t0)
        }
        #expect(router.dontWantCount(of: testPeer(1)) == 12)
        #expect(counters(router).idontwantIgnored == 3)
        // An ID already remembered is refreshed, not refused.
        _ = router.control(idontwant([[0, 0]]), from: testPeer(1), now: t0)
        #expect(counters(router).idontwantIgnored == 3)
        // Once they expire there is room again.
        let (_, later) = router.heartbeats(3, from: t0)
        _ = router.control(idontwant([[7, 7]]), from: testPeer(1), now: later)
        #expect(router.dontWantCount(of: testPeer(1)) == 1)
    }

    /// IDs are the peer's choice: long ones are kept as their SHA-256, and still honoured.
    @Test func longIDsAreRememberedByTheirDigest() throws {
        var router = try meshOfFour()
        var (message, _) = largeMessage(1)
        let id = [UInt8](repeating: 0x42, count: 4096)
        message.seqno = nil
        #expect(GossipSubRouter.dontWantKey(id).id.count == 32)
        #expect(GossipSubRouter.dontWantKey([1, 2, 3]).id == [1, 2, 3])
        _ = router.control(idontwant([id]), from: testPeer(4), now: t0)
        #expect(router.peerDoesNotWant(id, testPeer(4)))
        #expect(!router.route(message, id: id, from: testPeer(1), now: t0).messageRecipients.contains(testPeer(4)))
    }

    @Test func aPeerThatLeavesIsForgotten() throws {
        var router = try meshOfFour()
        _ = router.control(idontwant([[1]]), from: testPeer(2), now: t0)
        _ = router.removePeer(testPeer(2), now: t0)
        #expect(router.dontWantCount(of: testPeer(2)) == 0)
    }

    /// v1.2 peers get the v1.1 PRUNE (with the backoff).
    @Test func v12PeersGetTheV11Prune() throws {
        var router = try meshOfFour()
        let actions = router.leave("t", now: t0)
        #expect(actions.prunes(to: testPeer(1)).first?.backoff == 10)
    }
}
