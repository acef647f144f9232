import Identity

/// Gossipsub v1.1 peer scores (`gossipsub-v1.1.md` "Peer Scoring"): the counters behind P₁–P₄ and
/// P₇ per peer, fed by the router's events, decayed by `refresh(now:)` at each heartbeat. A value
/// type without clocks of its own, like the router that owns it.
///
/// Message deliveries are tracked per message ID (`DeliveryRecord`) so that a copy arriving from a
/// mesh peer shortly after the first counts towards that peer's mesh deliveries (P₃), and copies of
/// a message that failed validation count as invalid deliveries (P₄) for every peer that sent one.
struct PeerScore: Sendable {
    struct TopicStats: Sendable {
        var inMesh = false
        var graftTime: ContinuousClock.Instant?
        /// Time in mesh, updated at each refresh (the spec computes P₁ from this lazily kept value).
        var meshTime: Duration = .zero
        var firstMessageDeliveries = 0.0
        var meshMessageDeliveries = 0.0
        /// P₃ applies only once the peer has been in the mesh for the activation time.
        var meshMessageDeliveriesActive = false
        var meshFailurePenalty = 0.0
        var invalidMessageDeliveries = 0.0
    }

    struct PeerStats: Sendable {
        var connected = true
        /// When a disconnected peer's retained stats are dropped.
        var expiry: ContinuousClock.Instant?
        var topics: [String: TopicStats] = [:]
        var behaviourPenalty = 0.0
    }

    enum DeliveryStatus: Sendable, Equatable {
        /// Seen (as a duplicate) but not yet routed or rejected: validation may be under way.
        case pending
        case valid(at: ContinuousClock.Instant)
        case invalid
    }

    struct DeliveryRecord: Sendable {
        var status: DeliveryStatus = .pending
        var firstSeen: ContinuousClock.Instant
        /// Peers that delivered a copy and were already credited or penalised for it; while
        /// pending, the peers whose copies await the verdict.
        var peers: Set<PeerID> = []
    }

    var parameters: PeerScoreParameters
    private(set) var stats: [PeerID: PeerStats] = [:]
    private var deliveries: [MessageKey: DeliveryRecord] = [:]
    /// Records in the order they were made, so that they expire from the front (`firstSeen` only
    /// grows) instead of a pass over all of them at every heartbeat; `deliveryOrder[orderHead...]`
    /// are live.
    private var deliveryOrder: [(key: MessageKey, firstSeen: ContinuousClock.Instant)] = []
    private var orderHead = 0
    private var lastDecay: ContinuousClock.Instant?

    init(parameters: PeerScoreParameters) {
        self.parameters = parameters
    }

    // MARK: Score

    func score(of peer: PeerID) -> Double {
        guard let peerStats = stats[peer] else { return appSpecific(peer) }
        var topicScore = 0.0
        for (topic, t) in peerStats.topics {
            guard let p = parameters.parameters(for: topic) else { continue }
            var s = 0.0
            // P₁: whole quanta in mesh, capped.
            if t.inMesh {
                s += min((t.meshTime / p.timeInMeshQuantum).rounded(.down), p.timeInMeshCap) * p.timeInMeshWeight
            }
            // P₂
            s += t.firstMessageDeliveries * p.firstMessageDeliveriesWeight
            // P₃: the square of the deficit under the threshold, once active.
            if t.meshMessageDeliveriesActive && t.meshMessageDeliveries < p.meshMessageDeliveriesThreshold {
                let deficit = p.meshMessageDeliveriesThreshold - t.meshMessageDeliveries
                s += deficit * deficit * p.meshMessageDeliveriesWeight
            }
            // P₃b
            s += t.meshFailurePenalty * p.meshFailurePenaltyWeight
            // P₄: square of the counter.
            s += t.invalidMessageDeliveries * t.invalidMessageDeliveries * p.invalidMessageDeliveriesWeight
            topicScore += s * p.topicWeight
        }
        if let cap = parameters.topicScoreCap, topicScore > cap { topicScore = cap }
        // P₇: square of the counter.
        let penalty = peerStats.behaviourPenalty * peerStats.behaviourPenalty * parameters.behaviourPenaltyWeight
        return topicScore + appSpecific(peer) + penalty
    }

    private func appSpecific(_ peer: PeerID) -> Double {
        guard let appSpecificScore = parameters.appSpecificScore else { return 0 }
        return appSpecificScore(peer) * parameters.appSpecificWeight
    }

    // MARK: Peers and meshes

    mutating func addPeer(_ peer: PeerID) {
        if stats[peer] != nil {
            stats[peer]!.connected = true
            stats[peer]!.expiry = nil
        } else {
            stats[peer] = PeerStats()
        }
    }

    /// Keeps a non-positive score for `retainScore` (a penalty must survive reconnecting); the
    /// retained stats lose their first deliveries and take the mesh failure penalty of any mesh the
    /// peer was in. A positive score is forgotten.
    mutating func removePeer(_ peer: PeerID, now: ContinuousClock.Instant) {
        guard var peerStats = stats[peer] else { return }
        if score(of: peer) > 0 {
            stats[peer] = nil
            return
        }
        for topic in Array(peerStats.topics.keys) {
            peerStats.topics[topic]!.firstMessageDeliveries = 0
            Self.leaveMesh(&peerStats.topics[topic]!, parameters.parameters(for: topic))
        }
        peerStats.connected = false
        peerStats.expiry = now + parameters.retainScore
        stats[peer] = peerStats
    }

    mutating func graft(_ peer: PeerID, topic: String, now: ContinuousClock.Instant) {
        guard stats[peer] != nil, parameters.parameters(for: topic) != nil else { return }
        var t = stats[peer]!.topics[topic] ?? TopicStats()
        t.inMesh = true
        t.graftTime = now
        t.meshTime = .zero
        t.meshMessageDeliveriesActive = false
        stats[peer]!.topics[topic] = t
    }

    mutating func prune(_ peer: PeerID, topic: String) {
        guard stats[peer]?.topics[topic] != nil else { return }
        let p = parameters.parameters(for: topic)
        Self.leaveMesh(&stats[peer]!.topics[topic]!, p)
    }

    /// P₃b: leaving the mesh with an active delivery deficit adds the deficit².
    private static func leaveMesh(_ t: inout TopicStats, _ p: TopicScoreParameters?) {
        guard t.inMesh else { return }
        if let p, t.meshMessageDeliveriesActive,
           t.meshMessageDeliveries < p.meshMessageDeliveriesThreshold {
            let deficit = p.meshMessageDeliveriesThreshold - t.meshMessageDeliveries
            t.meshFailurePenalty += deficit * deficit
        }
        t.inMesh = false
        t.meshMessageDeliveriesActive = false
    }

    /// P₇
    mutating func addPenalty(_ peer: PeerID, _ count: Int = 1) {
        guard stats[peer] != nil else { return }
        stats[peer]!.behaviourPenalty += Double(count)
    }

    // MARK: Message deliveries

    /// A new message passed validation; `source` (nil: published by us) delivered it first. Peers
    /// whose copies arrived while it was validated count as near-first.
    mutating func messageValidated(id: MessageID, topic: String, from source: PeerID?,
                                   now: ContinuousClock.Instant) {
        let key = MessageKey(id)
        var record = deliveries.removeValue(forKey: key) ?? newRecord(key, now: now)
        defer { deliveries[key] = record }
        guard record.status == .pending else { return }
        record.status = .valid(at: now)
        if let source {
            markFirstDelivery(source, topic: topic)
            record.peers.remove(source)
        }
        for peer in record.peers { markMeshDelivery(peer, topic: topic) }
        if let source { record.peers.insert(source) }
    }

    /// A message from `peer` failed validation: P₄ for it and for every peer that sent a copy.
    mutating func messageRejected(id: MessageID, topic: String, from peer: PeerID, now: ContinuousClock.Instant) {
        let key = MessageKey(id)
        var record = deliveries.removeValue(forKey: key) ?? newRecord(key, now: now)
        defer { deliveries[key] = record }
        switch record.status {
        case .pending:
            record.status = .invalid
            record.peers.insert(peer)
            for p in record.peers { markInvalidDelivery(p, topic: topic) }
        case .invalid:
            if record.peers.insert(peer).inserted { markInvalidDelivery(peer, topic: topic) }
        case .valid:
            break  // already accepted: a verdict for the same ID cannot change
        }
    }

    /// A copy of a message already seen arrived from `peer`.
    mutating func duplicateDelivered(id: MessageID, topic: String, from peer: PeerID, now: ContinuousClock.Instant) {
        // Updated in place: a record copied out and written back would copy its peer set.
        let key = MessageKey(id)
        let records = deliveries.count
        let (new, status) = Self.insert(peer, into: &deliveries[key, default: DeliveryRecord(firstSeen: now)])
        if deliveries.count > records { deliveryOrder.append((key, now)) }
        switch status {
        case .pending:
            break
        case .valid(let at):
            // Only counted where it can weigh: P₃ or P₃b (the counter affects nothing else).
            if new, let p = parameters.parameters(for: topic), now <= at + p.meshMessageDeliveriesWindow,
               p.meshMessageDeliveriesWeight != 0 || p.meshFailurePenaltyWeight != 0 {
                markMeshDelivery(peer, topic: topic)
            }
        case .invalid:
            if new { markInvalidDelivery(peer, topic: topic) }
        }
    }

    /// A record for a message first seen now (not stored yet).
    private mutating func newRecord(_ key: MessageKey, now: ContinuousClock.Instant) -> DeliveryRecord {
        deliveryOrder.append((key, now))
        return DeliveryRecord(firstSeen: now)
    }

    private static func insert(_ peer: PeerID, into record: inout DeliveryRecord) -> (inserted: Bool, DeliveryStatus) {
        (record.peers.insert(peer).inserted, record.status)
    }

    private mutating func withTopicStats(_ peer: PeerID, _ topic: String,
                                         _ body: (inout TopicStats, TopicScoreParameters) -> Void) {
        guard stats[peer] != nil, let p = parameters.parameters(for: topic) else { return }
        body(&stats[peer]!.topics[topic, default: TopicStats()], p)
    }

    private mutating func markFirstDelivery(_ peer: PeerID, topic: String) {
        withTopicStats(peer, topic) { t, p in
            t.firstMessageDeliveries = min(t.firstMessageDeliveries + 1, p.firstMessageDeliveriesCap)
            if t.inMesh { t.meshMessageDeliveries = min(t.meshMessageDeliveries + 1, p.meshMessageDeliveriesCap) }
        }
    }

    private mutating func markMeshDelivery(_ peer: PeerID, topic: String) {
        withTopicStats(peer, topic) { t, p in
            if t.inMesh { t.meshMessageDeliveries = min(t.meshMessageDeliveries + 1, p.meshMessageDeliveriesCap) }
        }
    }

    /// A message from `peer` that broke its topic's signature policy: P₄ counts it, but no
    /// delivery record is kept (go-libp2p-pubsub: "we don't track those messages") — the ID of
    /// a forged or unsigned copy says nothing about the real message with that ID, and with
    /// content IDs a bad copy would otherwise mark the good message invalid for the peers that
    /// bring it later.
    mutating func invalidMessage(topic: String, from peer: PeerID) {
        markInvalidDelivery(peer, topic: topic)
    }

    private mutating func markInvalidDelivery(_ peer: PeerID, topic: String) {
        withTopicStats(peer, topic) { t, _ in t.invalidMessageDeliveries += 1 }
    }

    // MARK: Decay

    /// Updates times in mesh, decays the counters once per elapsed `decayInterval`, and forgets
    /// retained stats and delivery records that have expired.
    mutating func refresh(now: ContinuousClock.Instant) {
        var steps = 0
        if let last = lastDecay {
            let elapsed = now - last
            if elapsed >= parameters.decayInterval {
                steps = Int((elapsed / parameters.decayInterval).rounded(.down))
                lastDecay = last + parameters.decayInterval * steps
            }
        } else {
            lastDecay = now
        }
        let zero = parameters.decayToZero
        func decay(_ value: inout Double, _ factor: Double) {
            guard steps > 0 else { return }
            value *= Self.power(factor, steps)
            if value < zero { value = 0 }
        }
        for peer in Array(stats.keys) {
            var s = stats[peer]!
            guard s.connected else {
                // Retained stats do not decay (the peer is not active); they expire.
                if let expiry = s.expiry, now >= expiry { stats[peer] = nil }
                continue
            }
            for topic in Array(s.topics.keys) {
                guard let p = parameters.parameters(for: topic) else { continue }
                var t = s.topics[topic]!
                decay(&t.firstMessageDeliveries, p.firstMessageDeliveriesDecay)
                decay(&t.meshMessageDeliveries, p.meshMessageDeliveriesDecay)
                decay(&t.meshFailurePenalty, p.meshFailurePenaltyDecay)
                decay(&t.invalidMessageDeliveries, p.invalidMessageDeliveriesDecay)
                if t.inMesh, let graftTime = t.graftTime {
                    t.meshTime = now - graftTime
                    if t.meshTime > p.meshMessageDeliveriesActivation { t.meshMessageDeliveriesActive = true }
                }
                s.topics[topic] = t
            }
            decay(&s.behaviourPenalty, parameters.behaviourPenaltyDecay)
            stats[peer] = s
        }
        let retention = parameters.deliveryRecordRetention
        while orderHead < deliveryOrder.count, deliveryOrder[orderHead].firstSeen + retention <= now {
            let (key, firstSeen) = deliveryOrder[orderHead]
            // Only the record this entry was made for (not a later one for the same ID).
            if deliveries[key]?.firstSeen == firstSeen { deliveries[key] = nil }
            orderHead += 1
        }
        if orderHead == deliveryOrder.count {
            deliveryOrder.removeAll(keepingCapacity: true)
            orderHead = 0
        } else if orderHead >= 1024 && orderHead * 2 >= deliveryOrder.count {
            deliveryOrder.removeFirst(orderHead)
            orderHead = 0
        }
    }

    /// `x` to the power `n` (n ≥ 0) by squaring.
    static func power(_ x: Double, _ n: Int) -> Double {
        var result = 1.0, base = x, n = n
        while n > 0 {
            if n & 1 == 1 { result *= base }
            base *= base
            n >>= 1
        }
        return result
    }
}
