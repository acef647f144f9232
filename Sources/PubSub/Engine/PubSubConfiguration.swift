import Crypto
import LibP2P
import Logging

/// Settings of a `PubSubService`; start from `.defaults` or `.defaults { $0.seenTTL = .seconds(30) }`.
public struct PubSubConfiguration: Sendable, DefaultsConfigurable {
    /// Computes a message's ID from the message as on the wire.
    public typealias MessageIDFunction = @Sendable (PubSubRPC.Message) -> MessageID

    /// Largest RPC frame accepted from a peer (checked on the length prefix, before buffering), and
    /// largest sent; the spec suggests 1 MiB. A peer that sends a larger one is disconnected from
    /// pubsub.
    public var maxRPCSize = 1 << 20
    /// RPCs waiting to be written to one peer. When full, new RPCs for that peer are dropped and
    /// counted (`PubSubCounters.dropped`): a stalled peer never holds up the others.
    public var maxQueuedRPCsPerPeer = 1024
    /// Bytes of RPCs waiting to be written to one peer (or being written); beyond it new RPCs for
    /// that peer are dropped and counted like a full queue.
    public var maxQueuedBytesPerPeer = 16 << 20
    /// Where the bytes of queued RPCs are reserved before they are queued, and released once
    /// written or thrown away; a refusal drops the RPC (counted in `PubSubCounters.dropped`).
    /// nil (the default): the host's resource manager's `pubsub` service scope, so pubsub counts
    /// against the service and system memory limits. `UnlimitedMemoryAccount()` turns the
    /// accounting off (the per-peer limits still apply).
    public var memory: (any MemoryAccount)?
    /// Topics one peer may be known to subscribe to; further subscriptions of that peer are
    /// ignored (counted in `PubSubCounters.refusedSubscriptions`) until it unsubscribes from some.
    /// Topic names are chosen by the peer: without a limit it could make us hold any number.
    public var maxTopicsPerPeer = 1024
    /// Messages a subscription holds for a slow consumer; beyond it new messages are dropped for
    /// that subscription and counted (`PubSubCounters.subscriberOverflows`). The network is never
    /// slowed down by a consumer.
    public var subscriptionBufferSize = 1024
    /// How long a message ID is remembered (go-libp2p's default is 2 minutes). A copy arriving
    /// within this time is a duplicate: neither delivered nor forwarded again.
    public var seenTTL: Duration = .seconds(120)
    /// Most message IDs remembered; when full the oldest are forgotten early.
    public var seenCacheCapacity = 131_072
    /// How long a topic validator may take; a late verdict counts as `.ignore`.
    public var validationTimeout: Duration = .seconds(5)
    /// The message-ID function of StrictSign topics without their own (`topics[topic].messageID`).
    /// Both ends of a link may use different ones (they decide what counts as a duplicate
    /// locally), but gossip (IHAVE/IWANT) only finds messages when they agree. Default:
    /// `from ‖ seqno`, as go-libp2p's default. Compute IDs with `messageID(of:)`, which picks
    /// the function of the message's topic.
    public var messageID: MessageIDFunction = PubSubConfiguration.fromAndSeqno
    /// The message-ID function of StrictNoSign topics without their own: such messages have no
    /// `from` or `seqno`, so the ID must come from the content. Default: `dataSHA256`.
    public var unsignedMessageID: MessageIDFunction = PubSubConfiguration.dataSHA256
    /// The signature policy of topics without their own (`topics[topic].signaturePolicy`); what
    /// we publish is signed (or not) and what we receive is checked accordingly.
    public var signaturePolicy = MessageSignaturePolicy.strictSign
    /// Settings of single topics, overriding the service-wide ones. Ethereum-style gossip, for
    /// example: `topics["blocks"] = .init(signaturePolicy: .strictNoSign, messageID: myID)`.
    public var topics: [String: PubSubTopicOptions] = [:]
    /// Whether our own published messages are delivered to our own subscriptions.
    public var deliverOwnMessages = false
    /// Leave out a queued copy of a message when the peer it is for sends us that message before
    /// ours goes out (it has it: ours would only be a duplicate there), counted in
    /// `PubSubCounters.suppressed`. Saves transmissions in floods, more the busier the node. With
    /// gossipsub scoring, a peer counts only the copies it gets (P₃ mesh deliveries); a copy left
    /// out this way would have reached it after its own, within `meshMessageDeliveriesWindow` at
    /// best — turn this off if that window is wide and P₃ weighs heavily. A gossipsub v1.2
    /// IDONTWANT from the peer leaves out queued copies the same way (also counted in `suppressed`).
    public var leaveOutCopiesPeersHave = true
    /// Peer exchange (gossipsub v1.1 PRUNE; the router decides whose offers to take,
    /// `GossipSubConfiguration.thresholds.acceptPX`): at most this many connections to offered
    /// peers are being made at once (go-libp2p-pubsub runs 8 connectors).
    public var peerExchangeConcurrency = 8
    /// Peer exchange: offered peers waiting for a connection attempt; further offers are dropped
    /// and counted (`PubSubCounters.peerExchangeDropped`), as go-libp2p-pubsub's 128 pending.
    public var peerExchangeMaxPending = 128
    /// Peer exchange: how long one connection attempt to an offered peer may take (go: 30 s).
    public var peerExchangeConnectTimeout: Duration = .seconds(30)
    /// Where the service logs (nothing by default).
    public var logger = Logger(label: "pointsub.pubsub", factory: { _ in SwiftLogNoOpLogHandler() })

    /// The defaults (see each property).
    public init() {}

    /// The default message ID: the author's peer ID bytes followed by the seqno bytes.
    public static let fromAndSeqno: MessageIDFunction = { message in
        (message.from ?? []) + (message.seqno ?? [])
    }

    /// The default message ID of StrictNoSign topics: the SHA-256 digest of `data` (32 bytes).
    /// js-libp2p-gossipsub uses the same by default for StrictNoSign, and py-libp2p's
    /// `ContentAddressedMessageIDGenerator` hashes the same way (but sends the digest base64
    /// encoded). go-libp2p-pubsub has no default (`WithMessageIdFn` is required); Ethereum
    /// consensus uses its own (`SHA-256(domain ‖ snappy-decompressed data)[:20]`), set per topic.
    public static let dataSHA256: MessageIDFunction = { message in
        Array(SHA256.hash(data: message.data))
    }

    /// The signature policy of `topic`: its own, else `signaturePolicy`.
    public func signaturePolicy(of topic: String) -> MessageSignaturePolicy {
        topics[topic]?.signaturePolicy ?? signaturePolicy
    }

    /// The ID of `message`: its topic's own function, else `unsignedMessageID` for a
    /// StrictNoSign topic and `messageID` for a StrictSign one. The one place the engine (seen
    /// cache, router, outbound queue) computes message IDs.
    public func messageID(of message: PubSubRPC.Message) -> MessageID {
        guard !topics.isEmpty || signaturePolicy != .strictSign else { return messageID(message) }
        let options = topics[message.topic]
        if let own = options?.messageID { return own(message) }
        switch options?.signaturePolicy ?? signaturePolicy {
        case .strictSign: return messageID(message)
        case .strictNoSign: return unsignedMessageID(message)
        }
    }

    /// Throws `.invalidConfiguration` naming the first bad value.
    public func validate() throws(PubSubError) {
        for (name, value) in [
            ("maxRPCSize", maxRPCSize), ("maxQueuedRPCsPerPeer", maxQueuedRPCsPerPeer),
            ("maxQueuedBytesPerPeer", maxQueuedBytesPerPeer), ("maxTopicsPerPeer", maxTopicsPerPeer),
            ("subscriptionBufferSize", subscriptionBufferSize), ("seenCacheCapacity", seenCacheCapacity),
            ("peerExchangeConcurrency", peerExchangeConcurrency), ("peerExchangeMaxPending", peerExchangeMaxPending),
        ] where value <= 0 {
            throw .invalidConfiguration("\(name) must be positive (is \(value))")
        }
        for (name, value) in [
            ("seenTTL", seenTTL), ("validationTimeout", validationTimeout),
            ("peerExchangeConnectTimeout", peerExchangeConnectTimeout),
        ] where value <= .zero {
            throw .invalidConfiguration("\(name) must be positive (is \(value))")
        }
    }
}
