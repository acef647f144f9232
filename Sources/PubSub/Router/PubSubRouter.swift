import Identity

/// What a router asks the pubsub engine to do. Routers do no I/O: the engine performs these.
public enum PubSubRouterAction: Sendable, Equatable {
    /// Send this RPC to the peer (over the peer's outbound pubsub stream).
    case send(to: PeerID, PubSubRPC)
}

/// A pubsub routing policy (floodsub, gossipsub) as a value-type state machine: events in, actions
/// out, no I/O, no clocks of its own (`now` is passed in), so it can be tested without sockets.
///
/// Division of labour with the engine (`PubSub`): the engine owns streams, framing, signing and
/// signature checks, validators, the seen cache (a message is routed at most once) and local
/// delivery. The router decides only which peers get which RPCs.
public protocol PubSubRouter: Sendable {
    /// Protocol IDs this router speaks, most preferred first (e.g. `/meshsub/1.1.0`,
    /// `/meshsub/1.0.0`, `/floodsub/1.0.0`).
    var protocols: [String] { get }

    /// How often the engine calls `heartbeat(now:)`; nil for routers without one.
    var heartbeatInterval: Duration? { get }

    /// A peer with a pubsub stream negotiated on `protocolID` appeared / went away.
    mutating func addPeer(_ peer: PeerID, protocolID: String, now: ContinuousClock.Instant) -> [PubSubRouterAction]
    mutating func removePeer(_ peer: PeerID, now: ContinuousClock.Instant) -> [PubSubRouterAction]

    /// A peer announced that it subscribed to / unsubscribed from `topic`.
    mutating func peerSubscription(_ peer: PeerID, topic: String, subscribed: Bool,
                                   now: ContinuousClock.Instant) -> [PubSubRouterAction]

    /// The local node subscribed to / left `topic` (the engine announces the subscription itself).
    mutating func join(_ topic: String, now: ContinuousClock.Instant) -> [PubSubRouterAction]
    mutating func leave(_ topic: String, now: ContinuousClock.Instant) -> [PubSubRouterAction]

    /// Route a message that is new (not in the seen cache) and valid. `source` is the peer it came
    /// from, nil when published locally. Called at most once per message ID.
    mutating func route(_ message: PubSubRPC.Message, id: MessageID, from source: PeerID?,
                        now: ContinuousClock.Instant) -> [PubSubRouterAction]

    /// A message from `peer` that is not in the seen cache, before its signature check and
    /// validation (possibly more than once, when copies arrive together). Gossipsub v1.2 sends
    /// IDONTWANT for it from here: the earlier mesh peers learn we have it, the fewer copies they
    /// send (`gossipsub-v1.2.md`: "prior to the message validation").
    mutating func receivedNew(_ message: PubSubRPC.Message, id: MessageID, from peer: PeerID,
                              now: ContinuousClock.Instant) -> [PubSubRouterAction]

    /// Adds what the router counts itself (gossipsub v1.2: the IDONTWANT counters) to `counters`.
    func addCounters(to counters: inout PubSubCounters)

    /// Gossip control messages from a peer. `isSeen` tells whether a message ID is in the engine's
    /// seen cache (IHAVE for a seen message needs no IWANT).
    mutating func handleControl(_ control: PubSubRPC.Control, from peer: PeerID, now: ContinuousClock.Instant,
                                isSeen: (MessageID) -> Bool) -> [PubSubRouterAction]

    /// A message from `peer` failed validation (`.reject`) — routers with scoring penalise it.
    mutating func messageRejected(_ message: PubSubRPC.Message, id: MessageID, from peer: PeerID,
                                  now: ContinuousClock.Instant)

    /// A message from `peer` broke its topic's signature policy (unsigned or badly signed under
    /// StrictSign; signed or with author fields under StrictNoSign). Unlike `messageRejected`
    /// its ID is not recorded: routers with scoring penalise `peer` only (go-libp2p-pubsub does
    /// the same for its signature rejections).
    mutating func invalidMessage(_ message: PubSubRPC.Message, from peer: PeerID, now: ContinuousClock.Instant)

    mutating func heartbeat(now: ContinuousClock.Instant) -> [PubSubRouterAction]

    /// Peers known to subscribe to `topic` (for `PubSub.peers(topic:)`).
    func peers(subscribedTo topic: String) -> [PeerID]

    // Optional hooks (default implementations below), for routers that weigh peers (gossipsub v1.1).

    /// `addPeer(_:protocolID:now:)` telling whether we dialled the connection: gossipsub v1.1 keeps at
    /// least `D_out` outbound peers in each mesh. Engines that know the direction call this one.
    mutating func addPeer(_ peer: PeerID, protocolID: String, outbound: Bool,
                          now: ContinuousClock.Instant) -> [PubSubRouterAction]

    /// A message from `peer` that the seen cache reported as already seen (a duplicate). Gossipsub
    /// scoring credits mesh peers that deliver a message shortly after its first delivery.
    mutating func duplicateMessage(_ message: PubSubRPC.Message, id: MessageID, from peer: PeerID,
                                   now: ContinuousClock.Instant)

    /// Whether the engine should drop every RPC from `peer` unprocessed (gossipsub v1.1: the peer's
    /// score fell below the graylist threshold).
    func isGraylisted(_ peer: PeerID) -> Bool

    /// Peers offered by peer exchange (gossipsub v1.1 PRUNE) that the router accepted since the
    /// last call, returned once: the engine verifies their signed peer records and connects to
    /// them. Called after `handleControl`.
    mutating func takePeerExchangeOffers() -> [PubSubRPC.Prune.PeerInfo]
}

extension PubSubRouter {
    public var heartbeatInterval: Duration? { nil }
    public mutating func messageRejected(_ message: PubSubRPC.Message, id: MessageID, from peer: PeerID,
                                         now: ContinuousClock.Instant) {}
    public mutating func heartbeat(now: ContinuousClock.Instant) -> [PubSubRouterAction] { [] }
    public mutating func invalidMessage(_ message: PubSubRPC.Message, from peer: PeerID,
                                        now: ContinuousClock.Instant) {}
    public mutating func handleControl(_ control: PubSubRPC.Control, from peer: PeerID,
                                       now: ContinuousClock.Instant,
                                       isSeen: (MessageID) -> Bool) -> [PubSubRouterAction] { [] }
    public mutating func addPeer(_ peer: PeerID, protocolID: String, outbound: Bool,
                                 now: ContinuousClock.Instant) -> [PubSubRouterAction] {
        addPeer(peer, protocolID: protocolID, now: now)
    }
    public mutating func duplicateMessage(_ message: PubSubRPC.Message, id: MessageID, from peer: PeerID,
                                          now: ContinuousClock.Instant) {}
    public func isGraylisted(_ peer: PeerID) -> Bool { false }
    public mutating func receivedNew(_ message: PubSubRPC.Message, id: MessageID, from peer: PeerID,
                                     now: ContinuousClock.Instant) -> [PubSubRouterAction] { [] }
    public func addCounters(to counters: inout PubSubCounters) {}
    public mutating func takePeerExchangeOffers() -> [PubSubRPC.Prune.PeerInfo] { [] }
}
