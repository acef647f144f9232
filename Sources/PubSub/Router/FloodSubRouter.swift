import Identity

/// floodsub (`/floodsub/1.0.0`): every new message goes to every connected peer that subscribes to
/// its topic, except the peer it came from and its author. No control messages, no heartbeat.
///
/// Floodsub relays topics the local node does not subscribe to as well (as go-libp2p's floodsub
/// does), so a node in the middle of a line keeps the ends connected. Storms are prevented by the
/// engine: it routes a message at most once (seen cache), so each node sends each message at most
/// once per subscribed neighbour.
public struct FloodSubRouter: PubSubRouter {
    public static let protocolID = "/floodsub/1.0.0"

    private var membership = TopicMembership()

    public init() {}

    public var protocols: [String] { [Self.protocolID] }

    public mutating func addPeer(_ peer: PeerID, protocolID: String, now: ContinuousClock.Instant) -> [PubSubRouterAction] {
        membership.addPeer(peer, protocolID: protocolID)
        return []
    }

    public mutating func removePeer(_ peer: PeerID, now: ContinuousClock.Instant) -> [PubSubRouterAction] {
        membership.removePeer(peer)
        return []
    }

    public mutating func peerSubscription(
        _ peer: PeerID, topic: String, subscribed: Bool, now: ContinuousClock.Instant
    ) -> [PubSubRouterAction] {
        // A subscription from a peer we have no stream with (or one already removed) is ignored:
        // recording it would make `route` send to a peer that is gone.
        guard membership.contains(peer) else { return [] }
        membership.setSubscription(peer, topic: topic, subscribed: subscribed)
        return []
    }

    // The engine announces our subscriptions; floodsub keeps no per-topic state of its own.
    public mutating func join(_ topic: String, now: ContinuousClock.Instant) -> [PubSubRouterAction] { [] }
    public mutating func leave(_ topic: String, now: ContinuousClock.Instant) -> [PubSubRouterAction] { [] }

    public mutating func route(
        _ message: PubSubRPC.Message, id: MessageID, from source: PeerID?, now: ContinuousClock.Instant
    ) -> [PubSubRouterAction] {
        let rpc = PubSubRPC(messages: [message])
        return membership.peers(in: message.topic).sorted()
            .filter { $0 != source && $0.bytes != message.from }
            .map { .send(to: $0, rpc) }
    }

    public func peers(subscribedTo topic: String) -> [PeerID] {
        membership.peers(in: topic).sorted()
    }
}
