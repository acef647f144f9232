import Identity
@testable import PubSub

/// A router with a fixed seed and `count` peers (numbered from `first`) connected and subscribed
/// to `topic`.
func makeRouter(peers count: Int = 0, first: Int = 1, topic: String = "t",
                protocolID: String = GossipSubRouter.meshsubV11, outbound: Bool = false,
                now: ContinuousClock.Instant, seed: UInt64 = 1,
                _ configure: (inout GossipSubConfiguration) -> Void = { _ in }) throws -> GossipSubRouter {
    var configuration = GossipSubConfiguration()
    configure(&configuration)
    var router = try GossipSubRouter(configuration: configuration, seed: seed)
    router.connect((first..<first + count).map(testPeer), topic: topic, protocolID: protocolID,
                   outbound: outbound, now: now)
    return router
}

extension GossipSubRouter {
    mutating func connect(_ peers: [PeerID], topic: String = "t", protocolID: String = GossipSubRouter.meshsubV11,
                          outbound: Bool = false, now: ContinuousClock.Instant) {
        for peer in peers {
            _ = addPeer(peer, protocolID: protocolID, outbound: outbound, now: now)
            _ = peerSubscription(peer, topic: topic, subscribed: true, now: now)
        }
    }

    mutating func control(_ control: PubSubRPC.Control, from peer: PeerID, now: ContinuousClock.Instant,
                          seen: Set<MessageID> = []) -> [PubSubRouterAction] {
        handleControl(control, from: peer, now: now, isSeen: { seen.contains($0) })
    }

    /// Runs `count` heartbeats one interval apart from `start`; returns the last one's actions and time.
    mutating func heartbeats(_ count: Int, from start: ContinuousClock.Instant) -> (actions: [PubSubRouterAction], now: ContinuousClock.Instant) {
        var now = start
        var actions: [PubSubRouterAction] = []
        for _ in 0..<count {
            now += heartbeatInterval!
            actions = heartbeat(now: now)
        }
        return (actions, now)
    }
}
