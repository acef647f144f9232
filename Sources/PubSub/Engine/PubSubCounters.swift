/// What a `PubSubService` did since it was made; read with `PubSubService.counters`. Tests and
/// benchmarks count transmissions per message with `forwarded` and `routed`.
public struct PubSubCounters: Sendable, Equatable {
    /// Messages that arrived from peers, every copy counted.
    public var received = 0
    /// Copies already in the seen cache (including our own messages coming back).
    public var duplicates = 0
    /// Messages handed to local subscriptions (once per message, however many subscriptions).
    public var delivered = 0
    /// Messages we published.
    public var published = 0
    /// Distinct messages handed to the router for sending on, our own included: at most once per
    /// message ID (the seen cache) — a second routing would be a storm.
    public var routed = 0
    /// Message transmissions written to peers' streams: one per message per peer, our own
    /// messages included. For floodsub, a node forwards a message to each subscribed neighbour
    /// except the one it came from.
    public var forwarded = 0
    /// Message transmissions left out because the peer sent us that message before ours went out
    /// (it has it; ours would only be a duplicate there). `forwarded + suppressed` is what the
    /// router asked for.
    public var suppressed = 0
    /// Messages that failed their topic's signature policy (StrictSign: unsigned or badly
    /// signed; StrictNoSign: carrying a signature, `from`, `seqno` or `key`) or that a validator
    /// rejected.
    public var rejected = 0
    /// Messages a validator ignored or did not judge in time, and messages claiming to be ours
    /// that we did not publish (a stale copy whose seen entry expired).
    public var ignored = 0
    /// RPCs not sent because a peer's outbound queue was full (a slow or stalled peer: frames or
    /// bytes at their limit) or the memory account refused their bytes.
    public var dropped = 0
    /// Peers whose pubsub stream was reset because the memory account refused to hold the RPC
    /// they were sending.
    public var memoryRefusals = 0
    /// Topic subscriptions of peers ignored: the peer had `maxTopicsPerPeer` topics already.
    public var refusedSubscriptions = 0
    /// Messages not delivered to a subscription whose buffer was full (a slow consumer).
    public var subscriberOverflows = 0
    /// Peers whose pubsub streams were reset for sending an oversized or malformed RPC.
    public var badRPCs = 0
    /// RPCs ignored because the router graylisted their sender (gossipsub peer score).
    public var graylistedRPCs = 0
    /// Gossipsub v1.2: message IDs we sent in IDONTWANTs, once per ID per peer.
    public var idontwantSent = 0
    /// Gossipsub v1.2: message IDs received in IDONTWANTs and remembered.
    public var idontwantReceived = 0
    /// Gossipsub v1.2: message IDs received in IDONTWANTs and ignored, over the limits per RPC,
    /// per heartbeat or per peer (`GossipSubConfiguration.maxIDontWant…`).
    public var idontwantIgnored = 0
    /// Gossipsub v1.2: message copies (forwarded or asked for with IWANT) not sent to a peer
    /// because it had sent us IDONTWANT for the message.
    public var idontwantLeftOut = 0
    /// Peer exchange: signed peer records in PRUNEs that failed verification (bad envelope or
    /// signature, wrong payload type, or about another peer than the one offered); the offer
    /// was ignored.
    public var peerExchangeInvalidRecords = 0
    /// Peer exchange: connection attempts to offered peers.
    public var peerExchangeDials = 0
    /// Peer exchange: attempts that ended with a connection.
    public var peerExchangeConnected = 0
    /// Peer exchange: offered peers not tried because `peerExchangeMaxPending` were waiting (or
    /// one PRUNE offered more than that).
    public var peerExchangeDropped = 0
}
