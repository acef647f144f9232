import Identity
import LibP2P

/// Gossipsub v1.1 peer-score weights and decays (`gossipsub-v1.1.md`, "The Score Function"):
///
///     Score(p) = TopicCap(Σ tᵢ·(w₁P₁ + w₂P₂ + w₃P₃ + w₃bP₃b + w₄P₄)) + w₅P₅ + w₇P₇
///
/// P₆ (IP colocation) is not implemented: the router does not know addresses. The spec leaves
/// defaults to the application; ours penalise invalid messages (P₄) and broken promises or early
/// GRAFTs (P₇), reward time in mesh (P₁) and first deliveries (P₂) a little, and leave the
/// message-rate dependent P₃/P₃b off (weight 0) — set them per topic when the rate is known.
public struct PeerScoreParameters: Sendable, DefaultsConfigurable {
    /// Parameters per topic. Topics found neither here nor covered by `defaultTopicParameters` do
    /// not count towards the score.
    public var topics: [String: TopicScoreParameters] = [:]
    /// Parameters for every topic missing from `topics`; nil: such topics do not count.
    public var defaultTopicParameters: TopicScoreParameters? = TopicScoreParameters()
    /// Upper bound of the summed topic part (it bounds only the positive side); nil: no bound.
    public var topicScoreCap: Double? = nil

    /// P₅: an application-specific score for a peer, weighted by `appSpecificWeight` (≥ 0).
    public var appSpecificScore: (@Sendable (PeerID) -> Double)? = nil
    public var appSpecificWeight = 1.0

    /// P₇: the square of a counter raised by the router for misbehaviour (a GRAFT during backoff,
    /// an IHAVE'd message not delivered after IWANT), decayed by `behaviourPenaltyDecay`.
    public var behaviourPenaltyWeight = -10.0
    public var behaviourPenaltyDecay = 0.99

    /// Counters decay once per `decayInterval` (checked at each heartbeat); a decayed counter
    /// below `decayToZero` becomes 0.
    public var decayInterval: Duration = .seconds(1)
    public var decayToZero = 0.01
    /// A disconnected peer's non-positive score is remembered this long, so that reconnecting does
    /// not clear a penalty.
    public var retainScore: Duration = .seconds(600)
    /// How long the router remembers who delivered a message (to credit near-first deliveries and
    /// to penalise copies of an invalid message).
    public var deliveryRecordRetention: Duration = .seconds(120)

    public init() {}

    /// Scoring that never moves a score off 0: gossipsub v1.0 behaviour.
    public static var disabled: PeerScoreParameters {
        .defaults {
            $0.defaultTopicParameters = nil
            $0.appSpecificWeight = 0
            $0.behaviourPenaltyWeight = 0
        }
    }

    func parameters(for topic: String) -> TopicScoreParameters? {
        topics[topic] ?? defaultTopicParameters
    }

    public func validate() throws(GossipSubConfigurationError) {
        func check(_ ok: Bool, _ parameter: String, _ message: String) throws(GossipSubConfigurationError) {
            if !ok { throw GossipSubConfigurationError(parameter: "score.\(parameter)", problem: message) }
        }
        try check(appSpecificWeight >= 0, "appSpecificWeight", "must not be negative")
        try check(behaviourPenaltyWeight <= 0, "behaviourPenaltyWeight", "must not be positive")
        try check(behaviourPenaltyDecay > 0 && behaviourPenaltyDecay < 1, "behaviourPenaltyDecay", "must be within (0, 1)")
        try check(decayInterval > .zero, "decayInterval", "must be positive")
        try check(decayToZero > 0 && decayToZero < 1, "decayToZero", "must be within (0, 1)")
        try check(retainScore >= .zero, "retainScore", "must not be negative")
        try check(deliveryRecordRetention >= .zero, "deliveryRecordRetention", "must not be negative")
        try check((topicScoreCap ?? 0) >= 0, "topicScoreCap", "must not be negative")
        if let defaultTopicParameters { try defaultTopicParameters.validate("score.defaultTopicParameters") }
        for (topic, parameters) in topics.sorted(by: { $0.key < $1.key }) {
            try parameters.validate("score.topics[\(topic)]")
        }
    }
}

/// Per-topic score parameters (P₁–P₄), see `PeerScoreParameters`.
public struct TopicScoreParameters: Sendable, Equatable, DefaultsConfigurable {
    /// How much this topic counts in the total (≥ 0).
    public var topicWeight = 1.0

    /// P₁, time in mesh: whole `timeInMeshQuantum`s since the GRAFT, capped at `timeInMeshCap`.
    public var timeInMeshWeight = 0.01
    public var timeInMeshQuantum: Duration = .seconds(1)
    public var timeInMeshCap = 100.0

    /// P₂, first message deliveries: valid messages this peer was the first to bring us, capped at
    /// `firstMessageDeliveriesCap` when counted.
    public var firstMessageDeliveriesWeight = 0.1
    public var firstMessageDeliveriesDecay = 0.99
    public var firstMessageDeliveriesCap = 100.0

    /// P₃, mesh message delivery rate: while in the mesh for longer than the activation time, the
    /// square of how far the count of first and near-first deliveries (a copy within
    /// `meshMessageDeliveriesWindow` after the first) stays under the threshold. Weight ≤ 0.
    public var meshMessageDeliveriesWeight = 0.0
    public var meshMessageDeliveriesDecay = 0.99
    public var meshMessageDeliveriesThreshold = 1.0
    public var meshMessageDeliveriesCap = 10.0
    public var meshMessageDeliveriesActivation: Duration = .seconds(30)
    public var meshMessageDeliveriesWindow: Duration = .milliseconds(10)

    /// P₃b, mesh failure penalty: the P₃ deficit² added up whenever the peer leaves our mesh with
    /// a deficit. Weight ≤ 0.
    public var meshFailurePenaltyWeight = 0.0
    public var meshFailurePenaltyDecay = 0.99

    /// P₄, invalid messages: the square of the count of messages from the peer that failed
    /// validation. Weight ≤ 0.
    public var invalidMessageDeliveriesWeight = -10.0
    public var invalidMessageDeliveriesDecay = 0.99

    public init() {}

    func validate(_ prefix: String) throws(GossipSubConfigurationError) {
        func check(_ ok: Bool, _ parameter: String, _ message: String) throws(GossipSubConfigurationError) {
            if !ok { throw GossipSubConfigurationError(parameter: "\(prefix).\(parameter)", problem: message) }
        }
        func decay(_ value: Double, _ parameter: String) throws(GossipSubConfigurationError) {
            try check(value > 0 && value < 1, parameter, "must be within (0, 1)")
        }
        try check(topicWeight >= 0, "topicWeight", "must not be negative")
        try check(timeInMeshWeight >= 0, "timeInMeshWeight", "must not be negative")
        try check(timeInMeshQuantum > .zero, "timeInMeshQuantum", "must be positive")
        try check(timeInMeshCap >= 0, "timeInMeshCap", "must not be negative")
        try check(firstMessageDeliveriesWeight >= 0, "firstMessageDeliveriesWeight", "must not be negative")
        try decay(firstMessageDeliveriesDecay, "firstMessageDeliveriesDecay")
        try check(firstMessageDeliveriesCap >= 0, "firstMessageDeliveriesCap", "must not be negative")
        try check(meshMessageDeliveriesWeight <= 0, "meshMessageDeliveriesWeight", "must not be positive")
        try decay(meshMessageDeliveriesDecay, "meshMessageDeliveriesDecay")
        try check(meshMessageDeliveriesThreshold >= 0, "meshMessageDeliveriesThreshold", "must not be negative")
        try check(meshMessageDeliveriesCap >= meshMessageDeliveriesThreshold, "meshMessageDeliveriesCap",
                  "must be at least meshMessageDeliveriesThreshold")
        try check(meshMessageDeliveriesActivation >= .zero, "meshMessageDeliveriesActivation", "must not be negative")
        try check(meshMessageDeliveriesWindow >= .zero, "meshMessageDeliveriesWindow", "must not be negative")
        try check(meshFailurePenaltyWeight <= 0, "meshFailurePenaltyWeight", "must not be positive")
        try decay(meshFailurePenaltyDecay, "meshFailurePenaltyDecay")
        try check(invalidMessageDeliveriesWeight <= 0, "invalidMessageDeliveriesWeight", "must not be positive")
        try decay(invalidMessageDeliveriesDecay, "invalidMessageDeliveriesDecay")
    }
}

/// Score thresholds (`gossipsub-v1.1.md`, "Score Thresholds"). Besides these, a peer below 0 is
/// pruned from meshes, not grafted, and neither gets nor gives peer exchange.
public struct PeerScoreThresholds: Sendable, Equatable, DefaultsConfigurable {
    /// Below: no gossip to the peer, its IHAVE/IWANT ignored (≤ 0).
    public var gossip = -10.0
    /// Below: our own messages are not flood-published to the peer (≤ `gossip`).
    public var publish = -50.0
    /// Below: all the peer's RPCs are ignored (< `publish`).
    public var graylist = -80.0
    /// At or above: peer exchange in the peer's PRUNEs is taken up (≥ 0). The default needs an
    /// application-specific score (bootstrappers), as the spec recommends.
    public var acceptPX = 100.0
    /// A mesh whose median score is below this grafts better peers opportunistically (≥ 0).
    public var opportunisticGraft = 1.0

    public init() {}

    public func validate() throws(GossipSubConfigurationError) {
        func check(_ ok: Bool, _ parameter: String, _ message: String) throws(GossipSubConfigurationError) {
            if !ok { throw GossipSubConfigurationError(parameter: "thresholds.\(parameter)", problem: message) }
        }
        try check(gossip <= 0, "gossip", "must not be positive")
        try check(publish <= gossip, "publish", "must not be above the gossip threshold")
        try check(graylist < publish, "graylist", "must be below the publish threshold")
        try check(acceptPX >= 0, "acceptPX", "must not be negative")
        try check(opportunisticGraft >= 0, "opportunisticGraft", "must not be negative")
    }
}
