import Crypto
import Identity

/// Gossipsub v1.2 (`/meshsub/1.2.0`, also speaking `/meshsub/1.1.0` and `/meshsub/1.0.0`, and
/// serving `/floodsub/1.0.0` peers) as a value-type state machine: see `PubSubRouter` for the
/// division of labour with the engine, `GossipSubConfiguration` for the parameters.
///
/// v1.2 adds IDONTWANT (`gossipsub-v1.2.md`): a new message of at least
/// `idontwantMessageThreshold` bytes of data makes us tell our other v1.2 mesh peers of the topic
/// at once (before validation, in an RPC of its own) that we have it; the IDs v1.2 peers send us
/// that way are remembered for `idontwantTTL` heartbeats, and those messages are neither forwarded
/// nor given in answer to IWANT to them.
///
/// State (`gossipsub-v1.0.md` "Router State"): `mesh[topic]` for the topics we joined, `fanout[topic]`
/// for topics we publish to without joining, the message cache, PRUNE backoffs, peer scores.
/// Peer selection is random through a generator seeded at `init`, so tests can be reproducible.
public struct GossipSubRouter: PubSubRouter {
    /// Gossipsub v1.2: v1.1 with IDONTWANT.
    public static let meshsubV12 = "/meshsub/1.2.0"
    public static let meshsubV11 = "/meshsub/1.1.0"
    public static let meshsubV10 = "/meshsub/1.0.0"
    public static let floodsub = "/floodsub/1.0.0"

    public let configuration: GossipSubConfiguration

    private var membership = TopicMembership()
    private var outbound: Set<PeerID> = []
    private var mesh: [String: Set<PeerID>] = [:]
    private var fanout: [String: Set<PeerID>] = [:]
    private var lastPublished: [String: ContinuousClock.Instant] = [:]
    /// topic → peer → end of the backoff (no GRAFT either way before it).
    private var backoff: [String: [PeerID: ContinuousClock.Instant]] = [:]
    private var messageCache: MessageCache
    private var scores: PeerScore
    private var promises = GossipPromises()
    /// IHAVE-bearing RPCs received and message IDs asked for with IWANT, per peer, this heartbeat.
    private var ihavesReceived: [PeerID: Int] = [:]
    private var idsAsked: [PeerID: Int] = [:]
    private var heartbeatTicks = 0
    private var random: SplitMix64
    private var peerExchangeOffers: [PubSubRPC.Prune.PeerInfo] = []
    /// v1.2: per peer, the IDs it sent IDONTWANT for (`dontWantKey`) → heartbeats left.
    private var dontSend: [PeerID: [MessageKey: Int]] = [:]
    /// v1.2: IDONTWANT-bearing RPCs received per peer this heartbeat.
    private var idontwantsReceived: [PeerID: Int] = [:]
    /// v1.2: IDs we sent IDONTWANT for lately → heartbeats left, so that copies of one message
    /// arriving together (all new until one is validated) make one IDONTWANT, not one each.
    private var idontwantAnnounced: [MessageKey: Int] = [:]
    private var idontwantCounts = IDontWantCounts()

    private struct IDontWantCounts: Sendable {
        var sent = 0, received = 0, ignored = 0, leftOut = 0
    }

    /// Most peer-exchange offers kept until the engine takes them.
    static let maxPeerExchangeOffers = 128
    /// Longest backoff we honour from a PRUNE (the field is a peer-chosen UInt64 of seconds).
    static let maxPruneBackoff: Duration = .seconds(24 * 60 * 60)
    /// Most IDs remembered in `idontwantAnnounced` (beyond it a message could get IDONTWANT twice).
    static let maxAnnouncedIDontWants = 65_536
    /// Longer message IDs are remembered by their SHA-256 (as go-libp2p-pubsub does): a peer's IDs
    /// are its choice, and must not make us hold their length.
    static let maxRememberedIDLength = 32

    /// - Parameter seed: seeds peer selection; nil draws a seed from the system generator.
    public init(configuration: GossipSubConfiguration = GossipSubConfiguration(), seed: UInt64? = nil)
        throws(GossipSubConfigurationError) {
        try configuration.validate()
        self.configuration = configuration
        messageCache = MessageCache(historyLength: configuration.historyLength,
                                    historyGossip: configuration.historyGossip)
        scores = PeerScore(parameters: configuration.score)
        var system = SystemRandomNumberGenerator()
        random = SplitMix64(seed: seed ?? system.next())
    }

    /// `/meshsub/1.2.0` first unless `configuration.meshsubV12` is off, then 1.1.0, 1.0.0, floodsub.
    public var protocols: [String] {
        configuration.meshsubV12
            ? [Self.meshsubV12, Self.meshsubV11, Self.meshsubV10, Self.floodsub]
            : [Self.meshsubV11, Self.meshsubV10, Self.floodsub]
    }

    public var heartbeatInterval: Duration? { configuration.heartbeatInterval }

    // MARK: - Inspection

    /// Topics we joined.
    public var joinedTopics: Set<String> { Set(mesh.keys) }

    public func meshPeers(in topic: String) -> Set<PeerID> { mesh[topic] ?? [] }

    public func fanoutPeers(in topic: String) -> Set<PeerID> { fanout[topic] ?? [] }

    /// The peer's current score (also for a disconnected peer whose score is retained).
    public func score(of peer: PeerID) -> Double { scores.score(of: peer) }

    /// Whether a GRAFT from `peer` in `topic` would now be refused for backoff.
    public func isBackingOff(_ peer: PeerID, topic: String, now: ContinuousClock.Instant) -> Bool {
        guard let end = backoff[topic]?[peer] else { return false }
        return now < end
    }

    /// The protocol of `peer`'s pubsub stream (e.g. `/meshsub/1.2.0`), nil for a peer we do not have.
    public func protocolOf(_ peer: PeerID) -> String? { membership.protocolOf[peer] }

    /// How many message IDs from `peer`'s IDONTWANTs are remembered now.
    public func dontWantCount(of peer: PeerID) -> Int { dontSend[peer]?.count ?? 0 }

    /// Whether `peer` sent IDONTWANT for `id` and it is still remembered.
    public func peerDoesNotWant(_ id: MessageID, _ peer: PeerID) -> Bool {
        dontSend[peer]?[Self.dontWantKey(id)] != nil
    }

    /// Adds the IDONTWANT counters (`idontwantSent`, `…Received`, `…Ignored`, `…LeftOut`).
    public func addCounters(to counters: inout PubSubCounters) {
        counters.idontwantSent += idontwantCounts.sent
        counters.idontwantReceived += idontwantCounts.received
        counters.idontwantIgnored += idontwantCounts.ignored
        counters.idontwantLeftOut += idontwantCounts.leftOut
    }

    /// Peers offered by peer exchange in PRUNEs from peers scoring at least `thresholds.acceptPX`;
    /// the engine may connect to them (the router does no I/O). Returns and forgets them.
    public mutating func takePeerExchangeOffers() -> [PubSubRPC.Prune.PeerInfo] {
        defer { peerExchangeOffers = [] }
        return peerExchangeOffers
    }

    // MARK: - Peers and subscriptions

    public mutating func addPeer(_ peer: PeerID, protocolID: String, now: ContinuousClock.Instant) -> [PubSubRouterAction] {
        addPeer(peer, protocolID: protocolID, outbound: false, now: now)
    }

    public mutating func addPeer(_ peer: PeerID, protocolID: String, outbound isOutbound: Bool,
                                 now: ContinuousClock.Instant) -> [PubSubRouterAction] {
        membership.addPeer(peer, protocolID: protocolID)
        if isOutbound { outbound.insert(peer) } else { outbound.remove(peer) }
        scores.addPeer(peer)
        return []
    }

    public mutating func removePeer(_ peer: PeerID, now: ContinuousClock.Instant) -> [PubSubRouterAction] {
        membership.removePeer(peer)
        outbound.remove(peer)
        for topic in Array(mesh.keys) { mesh[topic]!.remove(peer) }
        for topic in Array(fanout.keys) { fanout[topic]!.remove(peer) }
        ihavesReceived[peer] = nil
        idsAsked[peer] = nil
        dontSend[peer] = nil
        idontwantsReceived[peer] = nil
        // Applies the mesh failure penalty of the meshes it was in; keeps a non-positive score.
        scores.removePeer(peer, now: now)
        return []
    }

    public mutating func peerSubscription(_ peer: PeerID, topic: String, subscribed: Bool,
                                          now: ContinuousClock.Instant) -> [PubSubRouterAction] {
        membership.setSubscription(peer, topic: topic, subscribed: subscribed)
        if !subscribed {
            if mesh[topic]?.remove(peer) != nil { scores.prune(peer, topic: topic) }
            fanout[topic]?.remove(peer)
            return []
        }
        // As rust-libp2p does: a peer subscribing to a topic whose mesh is below Dlo joins the mesh
        // at once instead of at the next heartbeat. Otherwise a node that subscribed before its
        // peers were known has an empty mesh for up to a heartbeat, and whatever it receives then
        // goes no further (the heartbeat's gossip skips the peers it just grafted).
        guard var peers = mesh[topic], peers.count < configuration.dLow, !peers.contains(peer),
            isMeshCapable(peer), !isExplicit(peer), !backingOffForGraft(peer, topic: topic, now: now),
            score(of: peer) >= 0
        else { return [] }
        peers.insert(peer)
        mesh[topic] = peers
        scores.graft(peer, topic: topic, now: now)
        var outbox = Outbox()
        outbox.graft(peer, topic: topic)
        return outbox.actions
    }

    public func peers(subscribedTo topic: String) -> [PeerID] {
        membership.peers(in: topic).sorted()
    }

    public func isGraylisted(_ peer: PeerID) -> Bool {
        !configuration.explicitPeers.contains(peer) && scores.score(of: peer) < configuration.thresholds.graylist
    }

    // MARK: - Join and leave

    /// v1.0 "Topic Membership": the mesh starts from the fanout peers (if we published to the topic),
    /// topped up to `D` from the topic's other peers; each gets a GRAFT.
    public mutating func join(_ topic: String, now: ContinuousClock.Instant) -> [PubSubRouterAction] {
        guard mesh[topic] == nil else { return [] }
        var peers: Set<PeerID> = []
        if let fanoutPeers = fanout.removeValue(forKey: topic) {
            lastPublished[topic] = nil
            // Fanout peers only had to reach the publish threshold; the mesh wants score ≥ 0.
            peers = fanoutPeers.filter { !backingOffForGraft($0, topic: topic, now: now) && score(of: $0) >= 0 }
        }
        if peers.count < configuration.d {
            let more = candidates(in: topic) { [peers] in
                !peers.contains($0) && !self.backingOffForGraft($0, topic: topic, now: now) && self.score(of: $0) >= 0
            }
            peers.formUnion(sample(more, configuration.d - peers.count))
        }
        mesh[topic] = peers
        var outbox = Outbox()
        for peer in peers {
            scores.graft(peer, topic: topic, now: now)
            outbox.graft(peer, topic: topic)
        }
        return outbox.actions
    }

    /// PRUNE every mesh peer, announcing (and keeping ourselves) the unsubscribe backoff.
    public mutating func leave(_ topic: String, now: ContinuousClock.Instant) -> [PubSubRouterAction] {
        guard let peers = mesh.removeValue(forKey: topic) else { return [] }
        var outbox = Outbox()
        for peer in peers.sorted() {  // sorted: peer exchange draws from the seeded generator
            scores.prune(peer, topic: topic)
            outbox.prune(peer, makePrune(for: peer, topic: topic, exchangePeers: true,
                                         backoff: configuration.unsubscribeBackoff))
            addBackoff(peer, topic: topic, configuration.unsubscribeBackoff, now: now)
        }
        return outbox.actions
    }

    // MARK: - Messages

    public mutating func route(_ message: PubSubRPC.Message, id: MessageID, from source: PeerID?,
                               now: ContinuousClock.Instant) -> [PubSubRouterAction] {
        messageCache.put(message, id: id)
        scores.messageValidated(id: id, topic: message.topic, from: source, now: now)
        promises.fulfil(id)

        let topic = message.topic
        let threshold = configuration.thresholds.publish
        let topicPeers = membership.peers(in: topic)
        var recipients: Set<PeerID>
        if source == nil && configuration.floodPublish {
            // v1.1 flood publishing: our own messages go to every topic peer above the publish
            // threshold, whether or not we joined the topic (then there is no fanout either).
            // Only peers with a stream (a subscription may be reported before `addPeer`).
            recipients = topicPeers.filter {
                membership.contains($0) && (isExplicit($0) || score(of: $0) >= threshold)
            }
        } else {
            // v1.0 "Message Processing": the mesh — or, for a topic we did not join, the fanout
            // (created with up to D peers when empty) —, plus floodsub peers of the topic always.
            if let meshPeers = mesh[topic] {
                recipients = meshPeers
            } else {
                var peers = fanout[topic] ?? []
                if peers.isEmpty {
                    let eligible = candidates(in: topic) { self.score(of: $0) >= threshold }
                    peers = Set(sample(eligible, configuration.d))
                    if !peers.isEmpty { fanout[topic] = peers }
                }
                lastPublished[topic] = now
                recipients = peers
            }
            let explicitPeers = !configuration.explicitPeers.isEmpty
            for peer in topicPeers where !recipients.contains(peer) {
                guard let protocolID = membership.protocolOf[peer] else { continue }
                if (explicitPeers && isExplicit(peer)) || (protocolID == Self.floodsub && score(of: peer) >= threshold) {
                    recipients.insert(peer)
                }
            }
        }
        // Never back to the peer it came from, nor to its author, nor (v1.2) to a peer that sent
        // IDONTWANT for it; in peer order, so that a run is reproducible. The message alone: one
        // RPC for every recipient.
        let author = message.from
        var chosen = recipients.filter { $0 != source && $0.bytes != author }
        if !dontSend.isEmpty {
            let key = Self.dontWantKey(id)
            let before = chosen.count
            chosen = chosen.filter { dontSend[$0]?[key] == nil }
            idontwantCounts.leftOut += before - chosen.count
        }
        let rpc = PubSubRPC(messages: [message])
        return chosen.sorted().map { .send(to: $0, rpc) }
    }

    /// v1.2: IDONTWANT with the message's ID, in an RPC of its own (the spec: "immediately
    /// broadcasts (not queue for later piggybacking)"), to the mesh peers of its topic that speak
    /// v1.2 — but the peer it came from and its author —, once per message, when its data has at
    /// least `idontwantMessageThreshold` bytes. Before validation, as go-libp2p-pubsub does: a
    /// message that then fails validation cost an IDONTWANT, a duplicate would have cost more.
    public mutating func receivedNew(_ message: PubSubRPC.Message, id: MessageID, from peer: PeerID,
                                     now: ContinuousClock.Instant) -> [PubSubRouterAction] {
        guard configuration.meshsubV12, message.data.count >= configuration.idontwantMessageThreshold,
              let peers = mesh[message.topic], !peers.isEmpty else { return [] }
        let key = MessageKey(id)
        guard idontwantAnnounced[key] == nil else { return [] }
        let author = message.from
        let recipients = peers.filter { $0 != peer && $0.bytes != author && speaksV12($0) }.sorted()
        guard !recipients.isEmpty else { return [] }
        if idontwantAnnounced.count < Self.maxAnnouncedIDontWants { idontwantAnnounced[key] = configuration.idontwantTTL }
        idontwantCounts.sent += recipients.count
        let rpc = PubSubRPC(control: PubSubRPC.Control(idontwant: [PubSubRPC.IDontWant(messageIDs: [id])]))
        return recipients.map { .send(to: $0, rpc) }
    }

    public mutating func messageRejected(_ message: PubSubRPC.Message, id: MessageID, from peer: PeerID,
                                         now: ContinuousClock.Instant) {
        scores.messageRejected(id: id, topic: message.topic, from: peer, now: now)
        promises.fulfil(id)
    }

    /// P₄ for `peer` in the message's topic, without a delivery record and without fulfilling a
    /// gossip promise (a bad copy must not keep the promise of the real message).
    public mutating func invalidMessage(_ message: PubSubRPC.Message, from peer: PeerID,
                                        now: ContinuousClock.Instant) {
        scores.invalidMessage(topic: message.topic, from: peer)
    }

    public mutating func duplicateMessage(_ message: PubSubRPC.Message, id: MessageID, from peer: PeerID,
                                          now: ContinuousClock.Instant) {
        scores.duplicateDelivered(id: id, topic: message.topic, from: peer, now: now)
    }

    // MARK: - Control messages

    public mutating func handleControl(_ control: PubSubRPC.Control, from peer: PeerID,
                                       now: ContinuousClock.Instant,
                                       isSeen: (MessageID) -> Bool) -> [PubSubRouterAction] {
        // Control comes only from gossipsub peers; a graylisted peer's RPCs are ignored (v1.1).
        guard isMeshCapable(peer), !isGraylisted(peer) else { return [] }
        var outbox = Outbox()
        handleIHave(control.ihave, from: peer, now: now, isSeen: isSeen, into: &outbox)
        handleIWant(control.iwant, from: peer, into: &outbox)
        handleGraft(control.graft, from: peer, now: now, into: &outbox)
        handlePrune(control.prune, from: peer, now: now)
        handleIDontWant(control.idontwant, from: peer)
        return outbox.actions
    }

    /// IHAVE → IWANT for the unseen IDs in topics we joined, bounded per heartbeat by
    /// `maxIHaveMessages` RPCs and `maxIHaveLength` IDs per peer (v1.1 spam protection); one random
    /// ID of each IWANT becomes a promise the peer must keep.
    private mutating func handleIHave(_ ihaves: [PubSubRPC.IHave], from peer: PeerID, now: ContinuousClock.Instant,
                                      isSeen: (MessageID) -> Bool, into outbox: inout Outbox) {
        guard !ihaves.isEmpty, score(of: peer) >= configuration.thresholds.gossip else { return }
        ihavesReceived[peer, default: 0] += 1
        let asked = idsAsked[peer, default: 0]
        guard ihavesReceived[peer]! <= configuration.maxIHaveMessages, asked < configuration.maxIHaveLength else {
            return
        }
        var wanted: [MessageID] = []
        var unique: Set<MessageID> = []
        for ihave in ihaves where mesh[ihave.topic] != nil {
            for id in ihave.messageIDs where !isSeen(id) && unique.insert(id).inserted {
                wanted.append(id)
            }
        }
        guard !wanted.isEmpty else { return }
        wanted.shuffle(using: &random)
        wanted = Array(wanted.prefix(configuration.maxIHaveLength - asked))
        idsAsked[peer] = asked + wanted.count
        promises.add(peer, id: wanted[0], deadline: now + configuration.iwantFollowupTime)
        outbox.iwant(peer, wanted)
    }

    /// IWANT → the cached messages, each at most `gossipRetransmission` times to the same peer.
    private mutating func handleIWant(_ iwants: [PubSubRPC.IWant], from peer: PeerID, into outbox: inout Outbox) {
        guard !iwants.isEmpty, score(of: peer) >= configuration.thresholds.gossip else { return }
        var answered: Set<MessageID> = []
        for iwant in iwants {
            for id in iwant.messageIDs where answered.insert(id).inserted {
                // v1.2: it said it does not want it (an IWANT it could not cancel in time).
                if dontSend[peer]?[Self.dontWantKey(id)] != nil {
                    idontwantCounts.leftOut += 1
                    continue
                }
                guard let (message, count) = messageCache.get(id, for: peer),
                      count <= configuration.gossipRetransmission else { continue }
                outbox.message(peer, message)
            }
        }
    }

    private mutating func handleGraft(_ grafts: [PubSubRPC.Graft], from peer: PeerID, now: ContinuousClock.Instant,
                                      into outbox: inout Outbox) {
        for graft in grafts {
            let topic = graft.topic
            // v1.1 spam protection: a GRAFT for a topic we did not join is ignored (no PRUNE).
            guard let peers = mesh[topic], !peers.contains(peer) else { continue }
            if isExplicit(peer) {
                // v1.1: GRAFT from an explicit peer is an error, answered with PRUNE.
                outbox.prune(peer, makePrune(for: peer, topic: topic, exchangePeers: false,
                                             backoff: configuration.pruneBackoff))
                continue
            }
            if let end = backoff[topic]?[peer], now < end {
                // v1.1: a GRAFT during backoff costs a behaviour penalty, a second one if it came
                // within graftFloodThreshold of the PRUNE; the backoff is extended.
                scores.addPenalty(peer)
                if now < end - configuration.pruneBackoff + configuration.graftFloodThreshold {
                    scores.addPenalty(peer)
                }
                refuseGraft(peer, topic: topic, exchangePeers: false, now: now, into: &outbox)
                continue
            }
            if score(of: peer) < 0 {
                refuseGraft(peer, topic: topic, exchangePeers: false, now: now, into: &outbox)
                continue
            }
            // v1.1 outbound quotas: at D_hi, only outbound peers may still graft.
            if peers.count >= configuration.dHigh && !outbound.contains(peer) {
                refuseGraft(peer, topic: topic, exchangePeers: true, now: now, into: &outbox)
                continue
            }
            mesh[topic]!.insert(peer)
            scores.graft(peer, topic: topic, now: now)
        }
    }

    private mutating func refuseGraft(_ peer: PeerID, topic: String, exchangePeers: Bool,
                                      now: ContinuousClock.Instant, into outbox: inout Outbox) {
        addBackoff(peer, topic: topic, configuration.pruneBackoff, now: now)
        outbox.prune(peer, makePrune(for: peer, topic: topic, exchangePeers: exchangePeers,
                                     backoff: configuration.pruneBackoff))
    }

    /// PRUNE: leave the mesh and keep the backoff the peer asked for (ours when it gave none);
    /// keep its peer exchange only if it scores at least `acceptPX`. A PRUNE for a topic we did not
    /// join is ignored (so that PRUNEs for made-up topics cannot fill the backoff table).
    private mutating func handlePrune(_ prunes: [PubSubRPC.Prune], from peer: PeerID, now: ContinuousClock.Instant) {
        for prune in prunes {
            let topic = prune.topic
            guard mesh[topic] != nil else { continue }
            if mesh[topic]!.remove(peer) != nil { scores.prune(peer, topic: topic) }
            var duration = configuration.pruneBackoff
            if let seconds = prune.backoff, seconds > 0 {
                duration = seconds >= UInt64(Self.maxPruneBackoff.components.seconds)
                    ? Self.maxPruneBackoff : .seconds(Int64(seconds))
            }
            addBackoff(peer, topic: topic, duration, now: now)
            guard !prune.peers.isEmpty, score(of: peer) >= configuration.thresholds.acceptPX else { continue }
            // As go-libp2p-pubsub (pxConnect): more peers than `prunePeers` are sampled down at
            // random. Peers we have a pubsub stream with, and peers whose (retained) score is
            // negative, are left out.
            var offered = prune.peers
            if offered.count > configuration.prunePeers {
                offered.shuffle(using: &random)
                offered = Array(offered.prefix(configuration.prunePeers))
            }
            for info in offered {
                guard peerExchangeOffers.count < Self.maxPeerExchangeOffers,
                      let bytes = info.peerID, let candidate = try? PeerID(bytes: bytes),
                      !membership.contains(candidate), scores.score(of: candidate) >= 0 else { continue }
                peerExchangeOffers.append(info)
            }
        }
    }

    /// v1.2 IDONTWANT from a v1.2 peer: its IDs are remembered for `idontwantTTL` heartbeats. At
    /// most `maxIDontWantMessages` such RPCs per heartbeat and `maxIDontWantLength` IDs per RPC are
    /// looked at, and at most `maxIDontWantIDsPerPeer` IDs kept per peer; the rest is ignored and
    /// counted. (The spec: a receiver may ignore IDONTWANT; it only saves bandwidth.)
    private mutating func handleIDontWant(_ idontwants: [PubSubRPC.IDontWant], from peer: PeerID) {
        guard !idontwants.isEmpty else { return }
        let total = idontwants.reduce(0) { $0 + $1.messageIDs.count }
        let rpcs = idontwantsReceived[peer, default: 0] + 1
        idontwantsReceived[peer] = rpcs
        guard speaksV12(peer), rpcs <= configuration.maxIDontWantMessages else {
            idontwantCounts.ignored += total
            return
        }
        var remembered = dontSend.removeValue(forKey: peer) ?? [:]
        var taken = 0
        for id in idontwants.lazy.flatMap(\.messageIDs).prefix(configuration.maxIDontWantLength) {
            taken += 1
            let key = Self.dontWantKey(id)
            if remembered[key] == nil && remembered.count >= configuration.maxIDontWantIDsPerPeer {
                idontwantCounts.ignored += 1
                continue
            }
            remembered[key] = configuration.idontwantTTL
            idontwantCounts.received += 1
        }
        idontwantCounts.ignored += total - taken
        if !remembered.isEmpty { dontSend[peer] = remembered }
    }

    /// How a message ID is kept in `dontSend`: itself, or its SHA-256 when longer than
    /// `maxRememberedIDLength`.
    static func dontWantKey(_ id: MessageID) -> MessageKey {
        id.count <= maxRememberedIDLength ? MessageKey(id) : MessageKey(Array(SHA256.hash(data: id)))
    }

    // MARK: - Heartbeat

    /// v1.0 "Heartbeat" with the v1.1 additions: score refresh, backoff expiry and broken promises;
    /// per joined topic mesh maintenance (negative scores out, graft below D_lo, prune above D_hi
    /// keeping D_score best and D_out outbound, outbound quota, opportunistic grafting) and gossip;
    /// fanout expiry, top-up and gossip; finally the message cache shifts.
    public mutating func heartbeat(now: ContinuousClock.Instant) -> [PubSubRouterAction] {
        heartbeatTicks += 1
        scores.refresh(now: now)
        clearExpiredBackoffs(now: now)
        for (peer, broken) in promises.removeBroken(now: now) { scores.addPenalty(peer, broken) }
        ihavesReceived = [:]
        idsAsked = [:]
        expireIDontWants()

        var outbox = Outbox()
        for topic in mesh.keys.sorted() {
            maintainMesh(topic, now: now, into: &outbox)
            emitGossip(topic, excluding: mesh[topic]!, into: &outbox)
        }

        for (topic, published) in lastPublished where now - published > configuration.fanoutTTL {
            fanout[topic] = nil
            lastPublished[topic] = nil
        }
        let threshold = configuration.thresholds.publish
        for topic in fanout.keys.sorted() {
            var peers = fanout[topic]!.filter {
                membership.topics(of: $0).contains(topic) && score(of: $0) >= threshold
            }
            if peers.count < configuration.d {
                let more = candidates(in: topic) { [peers] in !peers.contains($0) && self.score(of: $0) >= threshold }
                peers.formUnion(sample(more, configuration.d - peers.count))
            }
            fanout[topic] = peers
            emitGossip(topic, excluding: peers, into: &outbox)
        }

        messageCache.shift()
        return outbox.actions
    }

    private mutating func maintainMesh(_ topic: String, now: ContinuousClock.Instant, into outbox: inout Outbox) {
        var peers = mesh[topic]!
        let d = configuration.d

        func graft(_ chosen: [PeerID], _ peers: inout Set<PeerID>, _ router: inout GossipSubRouter) {
            for peer in chosen {
                peers.insert(peer)
                router.scores.graft(peer, topic: topic, now: now)
                outbox.graft(peer, topic: topic)
            }
        }
        func prune(_ peer: PeerID, exchangePeers: Bool, _ peers: inout Set<PeerID>, _ router: inout GossipSubRouter) {
            peers.remove(peer)
            router.scores.prune(peer, topic: topic)
            router.addBackoff(peer, topic: topic, router.configuration.pruneBackoff, now: now)
            outbox.prune(peer, router.makePrune(for: peer, topic: topic, exchangePeers: exchangePeers,
                                                backoff: router.configuration.pruneBackoff))
        }

        // Peers with a negative score leave, without peer exchange.
        for peer in peers.sorted() where score(of: peer) < 0 {
            prune(peer, exchangePeers: false, &peers, &self)
        }

        // Too few: graft up to D from non-backed-off peers with score ≥ 0.
        if peers.count < configuration.dLow {
            let eligible = candidates(in: topic) { [peers] in
                !peers.contains($0) && !self.backingOffForGraft($0, topic: topic, now: now) && self.score(of: $0) >= 0
            }
            graft(sample(eligible, d - peers.count), &peers, &self)
        }

        // Too many: keep D, chosen by `survivors`; the rest get PRUNE with peer exchange.
        if peers.count > configuration.dHigh {
            let keep = survivors(of: peers)
            for peer in peers.subtracting(keep).sorted() {
                prune(peer, exchangePeers: true, &peers, &self)
            }
        }

        // Enough peers but too few outbound ones: graft outbound peers to fill the quota.
        if peers.count >= configuration.dLow {
            let outboundCount = peers.count(where: { outbound.contains($0) })
            if outboundCount < configuration.dOut {
                let eligible = candidates(in: topic) { [peers] in
                    self.outbound.contains($0) && !peers.contains($0)
                        && !self.backingOffForGraft($0, topic: topic, now: now) && self.score(of: $0) >= 0
                }
                graft(sample(eligible, configuration.dOut - outboundCount), &peers, &self)
            }
        }

        // v1.1 opportunistic grafting: when the median mesh score is below the threshold, graft a
        // few peers scoring above the median.
        if heartbeatTicks % configuration.opportunisticGraftTicks == 0 && peers.count > 1 {
            let sortedScores = peers.map { score(of: $0) }.sorted()
            let median = sortedScores[sortedScores.count / 2]
            if median < configuration.thresholds.opportunisticGraft {
                let eligible = candidates(in: topic) { [peers] in
                    !peers.contains($0) && !self.backingOffForGraft($0, topic: topic, now: now)
                        && self.score(of: $0) > median
                }
                graft(sample(eligible, configuration.opportunisticGraftPeers), &peers, &self)
            }
        }

        mesh[topic] = peers
    }

    /// The D peers an oversubscribed mesh keeps (v1.1 "Heartbeat Maintenance"): the D_score best by
    /// score, the rest at random, at least D_out of them outbound when there are that many — outbound
    /// peers replace random picks first, then the lowest-scoring inbound ones.
    private mutating func survivors(of peers: Set<PeerID>) -> Set<PeerID> {
        let d = configuration.d
        // Shuffle first so equal scores are ordered at random.
        var shuffled = peers.sorted()
        shuffled.shuffle(using: &random)
        let ranked = shuffled.enumerated()
            .map { (peer: $0.element, score: score(of: $0.element), position: $0.offset) }
            .sorted { $0.score != $1.score ? $0.score > $1.score : $0.position < $1.position }
            .map(\.peer)
        var keep = Array(ranked.prefix(configuration.dScore))
        var rest = Array(ranked.dropFirst(configuration.dScore))
        rest.shuffle(using: &random)

        var needed = configuration.dOut - keep.count(where: { outbound.contains($0) })
        var outboundPicks: [PeerID] = []
        for peer in rest where needed > 0 && outbound.contains(peer) {
            outboundPicks.append(peer)
            needed -= 1
        }
        rest.removeAll { outboundPicks.contains($0) }
        while keep.count + outboundPicks.count > d, let i = keep.lastIndex(where: { !outbound.contains($0) }) {
            keep.remove(at: i)
        }
        keep += outboundPicks
        keep += rest.prefix(max(0, d - keep.count))
        return Set(keep)
    }

    /// IHAVE with the topic's recent message IDs to max(D_lazy, gossipFactor × eligible) peers
    /// outside `excluded` (the mesh or fanout, which get the messages anyway) scoring at least the
    /// gossip threshold.
    private mutating func emitGossip(_ topic: String, excluding excluded: Set<PeerID>, into outbox: inout Outbox) {
        var ids = messageCache.gossipIDs(topic: topic)
        guard !ids.isEmpty else { return }
        let threshold = configuration.thresholds.gossip
        let eligible = candidates(in: topic) { !excluded.contains($0) && self.score(of: $0) >= threshold }
        let target = max(configuration.dLazy, Int(configuration.gossipFactor * Double(eligible.count)))
        let chosen = sample(eligible, target)
        guard !chosen.isEmpty else { return }
        if ids.count > configuration.maxIHaveLength {
            ids.shuffle(using: &random)
            ids = Array(ids.prefix(configuration.maxIHaveLength))
        }
        for peer in chosen { outbox.ihave(peer, PubSubRPC.IHave(topic: topic, messageIDs: ids)) }
    }

    /// v1.2: one heartbeat less for every remembered IDONTWANT (received and sent); the IDONTWANT
    /// RPC counts start again.
    private mutating func expireIDontWants() {
        idontwantsReceived = [:]
        func tick(_ entries: [MessageKey: Int]) -> [MessageKey: Int] {
            entries.compactMapValues { $0 > 1 ? $0 - 1 : nil }
        }
        if !idontwantAnnounced.isEmpty { idontwantAnnounced = tick(idontwantAnnounced) }
        for peer in Array(dontSend.keys) {
            let left = tick(dontSend[peer]!)
            dontSend[peer] = left.isEmpty ? nil : left
        }
    }

    // MARK: - Helpers

    private func isMeshCapable(_ peer: PeerID) -> Bool {
        let p = membership.protocolOf[peer]
        return p == Self.meshsubV12 || p == Self.meshsubV11 || p == Self.meshsubV10
    }

    private func speaksV12(_ peer: PeerID) -> Bool { membership.protocolOf[peer] == Self.meshsubV12 }

    private func isFloodsub(_ peer: PeerID) -> Bool { membership.protocolOf[peer] == Self.floodsub }

    private func isExplicit(_ peer: PeerID) -> Bool { configuration.explicitPeers.contains(peer) }

    /// Gossipsub peers (not explicit ones) of `topic` passing `include`, in a fixed order.
    private func candidates(in topic: String, where include: (PeerID) -> Bool) -> [PeerID] {
        membership.peers(in: topic).filter { isMeshCapable($0) && !isExplicit($0) && include($0) }.sorted()
    }

    /// Up to `count` of `peers`, chosen at random.
    private mutating func sample(_ peers: [PeerID], _ count: Int) -> [PeerID] {
        guard count > 0 else { return [] }
        var shuffled = peers
        shuffled.shuffle(using: &random)
        return Array(shuffled.prefix(count))
    }

    private mutating func addBackoff(_ peer: PeerID, topic: String, _ duration: Duration, now: ContinuousClock.Instant) {
        let end = now + duration
        if let current = backoff[topic]?[peer], current >= end { return }
        backoff[topic, default: [:]][peer] = end
    }

    /// We wait a little beyond the backoff before grafting ourselves (v1.1: "plus some slack to
    /// account for the offset until the next heartbeat"), so the peer's backoff has surely ended.
    private var backoffSlack: Duration { configuration.heartbeatInterval * 2 }

    private func backingOffForGraft(_ peer: PeerID, topic: String, now: ContinuousClock.Instant) -> Bool {
        guard let end = backoff[topic]?[peer] else { return false }
        return now < end + backoffSlack
    }

    private mutating func clearExpiredBackoffs(now: ContinuousClock.Instant) {
        let slack = backoffSlack
        for topic in Array(backoff.keys) {
            backoff[topic] = backoff[topic]!.filter { now < $0.value + slack }
            if backoff[topic]!.isEmpty { backoff[topic] = nil }
        }
    }

    /// A PRUNE for `peer`. `/meshsub/1.0.0` peers get the bare v1.0 form; v1.1 and v1.2 peers get the backoff
    /// (whole seconds, rounded up) and, with `peerExchange` on and `exchangePeers`, up to
    /// `prunePeers` other topic peers with score ≥ 0 — unless `peer` itself scores below 0.
    private mutating func makePrune(for peer: PeerID, topic: String, exchangePeers: Bool,
                                    backoff duration: Duration) -> PubSubRPC.Prune {
        let protocolID = membership.protocolOf[peer]
        guard protocolID == Self.meshsubV11 || protocolID == Self.meshsubV12 else { return PubSubRPC.Prune(topic: topic) }
        let (seconds, fraction) = duration.components
        let backoffSeconds = UInt64(max(0, seconds)) + (fraction > 0 ? 1 : 0)
        var exchanged: [PubSubRPC.Prune.PeerInfo] = []
        if exchangePeers && configuration.peerExchange && score(of: peer) >= 0 {
            let eligible = candidates(in: topic) { $0 != peer && self.score(of: $0) >= 0 }
            exchanged = sample(eligible, configuration.prunePeers).map { PubSubRPC.Prune.PeerInfo(peerID: $0.bytes) }
        }
        return PubSubRPC.Prune(topic: topic, peers: exchanged, backoff: backoffSeconds)
    }
}

/// One RPC per peer, so that messages and control produced by one event reach each peer together
/// (v1.0 "Control Message Piggybacking").
private struct Outbox {
    private var rpcs: [PeerID: PubSubRPC] = [:]

    mutating func message(_ peer: PeerID, _ message: PubSubRPC.Message) {
        rpcs[peer, default: PubSubRPC()].messages.append(message)
    }

    mutating func graft(_ peer: PeerID, topic: String) {
        control(peer) { $0.graft.append(PubSubRPC.Graft(topic: topic)) }
    }

    mutating func prune(_ peer: PeerID, _ prune: PubSubRPC.Prune) {
        control(peer) { $0.prune.append(prune) }
    }

    mutating func ihave(_ peer: PeerID, _ ihave: PubSubRPC.IHave) {
        control(peer) { $0.ihave.append(ihave) }
    }

    mutating func iwant(_ peer: PeerID, _ ids: [MessageID]) {
        control(peer) { $0.iwant.append(PubSubRPC.IWant(messageIDs: ids)) }
    }

    private mutating func control(_ peer: PeerID, _ body: (inout PubSubRPC.Control) -> Void) {
        var control = rpcs[peer]?.control ?? PubSubRPC.Control()
        body(&control)
        rpcs[peer, default: PubSubRPC()].control = control
    }

    /// In peer order, so that a run is reproducible.
    var actions: [PubSubRouterAction] {
        rpcs.keys.sorted().map { .send(to: $0, rpcs[$0]!) }
    }
}
