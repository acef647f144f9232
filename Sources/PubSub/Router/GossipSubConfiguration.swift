import Identity
import LibP2P

/// Parameters of `GossipSubRouter`. Defaults follow the gossipsub v1.0 and v1.1 specs
/// (`pubsub/gossipsub/gossipsub-v1.0.md` "Parameters", `gossipsub-v1.1.md` "Overview of New Parameters")
/// except `dLow`, which is 4 here; the v1.2 (IDONTWANT) ones, which the spec leaves open, are
/// go-libp2p-pubsub's.
///
///     let router = try GossipSubRouter(configuration: .defaults { $0.floodPublish = false })
public struct GossipSubConfiguration: Sendable, DefaultsConfigurable {
    // MARK: Mesh degrees

    /// `D`: the number of peers the mesh of a topic aims for.
    public var d = 6
    /// `D_lo`: below this many mesh peers the heartbeat grafts up to `D`.
    public var dLow = 4
    /// `D_hi`: above this many mesh peers the heartbeat prunes down to `D`; a GRAFT arriving while the
    /// mesh has `D_hi` peers is accepted only from an outbound peer.
    public var dHigh = 12
    /// `D_score`: when pruning down to `D`, this many peers are kept by score, the rest at random.
    public var dScore = 4
    /// `D_out`: outbound peers kept in each mesh (v1.1: below `D_lo` and at most `D/2`).
    public var dOut = 2
    /// `D_lazy`: the least number of non-mesh peers that get gossip (IHAVE) per topic per heartbeat.
    public var dLazy = 6
    /// Share of the eligible non-mesh peers that get gossip when that is more than `D_lazy` (v1.1).
    public var gossipFactor = 0.25

    // MARK: Timing

    public var heartbeatInterval: Duration = .seconds(1)
    /// A fanout set (peers for a topic we publish to without subscribing) is dropped when we have not
    /// published to the topic for this long.
    public var fanoutTTL: Duration = .seconds(60)
    /// After a PRUNE (sent or received) neither side GRAFTs the other in that topic for this long.
    public var pruneBackoff: Duration = .seconds(60)
    /// The backoff announced in the PRUNEs sent when leaving a topic.
    public var unsubscribeBackoff: Duration = .seconds(10)
    /// A GRAFT this soon after we pruned the peer costs a second behaviour penalty.
    public var graftFloodThreshold: Duration = .seconds(10)

    // MARK: Message cache and gossip

    /// Heartbeats a message stays in the message cache (served to IWANT) — `mcache_len`.
    public var historyLength = 5
    /// Of those, the most recent windows whose message IDs are gossiped — `mcache_gossip`.
    public var historyGossip = 3
    /// Most message IDs in one IHAVE we send, and most IDs we ask one peer for per heartbeat.
    public var maxIHaveLength = 5000
    /// Most IHAVE-bearing RPCs from one peer we look at per heartbeat.
    public var maxIHaveMessages = 10
    /// How often one peer may get the same message in answer to IWANT.
    public var gossipRetransmission = 3
    /// A peer that advertised a message in IHAVE must deliver it this soon after our IWANT, or it gets
    /// a behaviour penalty.
    public var iwantFollowupTime: Duration = .seconds(3)

    // MARK: Publishing and peer exchange

    /// v1.1 flood publishing: our own messages go to every peer in the topic scoring at least
    /// `thresholds.publish`, not just to the mesh or fanout.
    public var floodPublish = true
    /// Put other peers of the topic into the PRUNEs we send (v1.1 peer exchange).
    public var peerExchange = false
    /// How many peers a PRUNE carries when `peerExchange` is on.
    public var prunePeers = 16
    /// Explicit peering agreements (v1.1): these peers are never in a mesh, get every message in the
    /// topics they subscribe to, and are never graylisted. The engine keeps the connections.
    public var explicitPeers: Set<PeerID> = []

    // MARK: Opportunistic grafting

    /// Every this many heartbeats, a mesh whose median score is below
    /// `thresholds.opportunisticGraft` grafts `opportunisticGraftPeers` better-scoring peers.
    public var opportunisticGraftTicks = 60
    public var opportunisticGraftPeers = 2

    // MARK: Gossipsub v1.2 (IDONTWANT)

    /// Speak `/meshsub/1.2.0` (offered first): IDONTWANT to and from v1.2 peers. false: 1.1 at most.
    public var meshsubV12 = true
    /// A new message whose data has at least this many bytes makes us send IDONTWANT with its ID to
    /// our v1.2 mesh peers of the topic (but the one it came from), before it is validated. The
    /// spec leaves the policy open; go-libp2p-pubsub's default is 1 KiB. Smaller messages cost
    /// less to receive twice than the IDONTWANTs would.
    public var idontwantMessageThreshold = 1024
    /// Heartbeats an IDONTWANT received is remembered (go-libp2p-pubsub: 3).
    public var idontwantTTL = 3
    /// Most message IDs taken from one RPC's IDONTWANTs; the rest are ignored (and counted).
    /// go-libp2p-pubsub: 10.
    public var maxIDontWantLength = 10
    /// Most IDONTWANT-bearing RPCs from one peer looked at per heartbeat (the spec's
    /// `max_idontwant_messages`; go-libp2p-pubsub: 1000); later ones are ignored (and counted).
    public var maxIDontWantMessages = 1000
    /// Most message IDs remembered from one peer's IDONTWANTs; beyond it new ones are ignored (and
    /// counted) until old ones expire. Worst case per peer within the other limits would be
    /// `maxIDontWantLength × maxIDontWantMessages × idontwantTTL`; this caps the memory below that.
    public var maxIDontWantIDsPerPeer = 5000

    // MARK: Scoring

    public var score = PeerScoreParameters.defaults
    public var thresholds = PeerScoreThresholds.defaults

    public init() {}

    /// Throws naming the first value that is out of range or inconsistent with another.
    public func validate() throws(GossipSubConfigurationError) {
        func check(_ ok: Bool, _ parameter: String, _ message: String) throws(GossipSubConfigurationError) {
            if !ok { throw GossipSubConfigurationError(parameter: parameter, problem: message) }
        }
        try check(d >= 0 && dLow >= 0, "d", "mesh degrees must not be negative")
        try check(dLow <= d && d <= dHigh, "d", "need dLow ≤ d ≤ dHigh, got \(dLow), \(d), \(dHigh)")
        try check(dScore >= 0 && dScore <= d, "dScore", "need 0 ≤ dScore ≤ d")
        // v1.1 "Outbound Mesh Quotas": D_out below D_lo and at most D/2 (0 allowed, e.g. bootstrappers
        // with D = D_lo = D_hi = D_out = 0).
        try check(dOut >= 0 && (dOut == 0 || (dOut < dLow && dOut <= d / 2)), "dOut",
                  "need dOut < dLow and dOut ≤ d/2")
        try check(dLazy >= 0, "dLazy", "must not be negative")
        try check((0...1).contains(gossipFactor), "gossipFactor", "must be within 0…1")
        try check(heartbeatInterval > .zero, "heartbeatInterval", "must be positive")
        try check(fanoutTTL > .zero, "fanoutTTL", "must be positive")
        try check(pruneBackoff >= .zero && unsubscribeBackoff >= .zero && graftFloodThreshold >= .zero,
                  "pruneBackoff", "backoffs must not be negative")
        try check(historyLength >= 1, "historyLength", "must be at least 1")
        try check(historyGossip >= 0 && historyGossip <= historyLength, "historyGossip",
                  "need 0 ≤ historyGossip ≤ historyLength")
        try check(maxIHaveLength >= 1, "maxIHaveLength", "must be at least 1")
        try check(maxIHaveMessages >= 1, "maxIHaveMessages", "must be at least 1")
        try check(gossipRetransmission >= 1, "gossipRetransmission", "must be at least 1")
        try check(iwantFollowupTime > .zero, "iwantFollowupTime", "must be positive")
        try check(prunePeers >= 0, "prunePeers", "must not be negative")
        try check(opportunisticGraftTicks >= 1, "opportunisticGraftTicks", "must be at least 1")
        try check(opportunisticGraftPeers >= 0, "opportunisticGraftPeers", "must not be negative")
        try check(idontwantMessageThreshold >= 0, "idontwantMessageThreshold", "must not be negative")
        try check(idontwantTTL >= 1, "idontwantTTL", "must be at least 1")
        try check(maxIDontWantLength >= 0, "maxIDontWantLength", "must not be negative")
        try check(maxIDontWantMessages >= 0, "maxIDontWantMessages", "must not be negative")
        try check(maxIDontWantIDsPerPeer >= 0, "maxIDontWantIDsPerPeer", "must not be negative")
        try thresholds.validate()
        try score.validate()
    }
}

/// A `GossipSubConfiguration` value out of range; `parameter` names it (a key path such as
/// `score.topics[news].meshMessageDeliveriesCap` for nested values).
public struct GossipSubConfigurationError: CodedError, Hashable {
    /// The kinds of failure (one: a value out of range).
    public enum Code: String, ErrorCode {
        /// A value out of range.
        case invalidParameter
    }

    /// The parameter concerned.
    public var parameter: String
    /// `parameter: what is wrong with it`.
    public var message: String { "\(parameter): \(problem)" }
    /// What is wrong with the parameter, e.g. "must be at least 1".
    public var problem: String
    /// Always `.invalidParameter`.
    public var code: Code { .invalidParameter }
    /// None: the value is checked here.
    public var cause: (any Error)? { nil }

    /// `parameter` is out of range: `problem`.
    public init(parameter: String, problem: String) {
        self.parameter = parameter
        self.problem = problem
    }
}
