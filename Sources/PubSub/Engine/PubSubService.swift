import Basics
import Identity
import LibP2P
import Logging
import Multiformats
import NIOConcurrencyHelpers
import NIOCore
import ServiceLifecycle

/// Publish/subscribe on a host with a pluggable router (floodsub, gossipsub).
///
/// The service owns the I/O around a `PubSubRouter` state machine: one outbound pubsub stream per
/// peer (we write only on ours, the peer writes only on its own, as the spec has it), inbound
/// streams read on their event loops, RPC framing with a size limit, StrictSign signing and verification,
/// topic validators, the seen cache (a message is delivered and routed at most once) and local
/// delivery. The router lives in the lock; the actions it returns are carried out outside it.
///
/// Peers are picked up from the host's connections: every connection (open at `start()` or later)
/// gets our stream, and every peer that opens its stream to us is taken in (and gets ours, retried
/// a few times if the first open fails: see `docs/PUBSUB.md`, "Finding each other"). A peer that
/// breaks the wire protocol (malformed or oversized RPC) has its pubsub streams reset and is
/// removed from the router; everything else keeps working. Peers joining and leaving topics are
/// `events()`; `waitForPeers(topic:count:deadline:)` and `publish(_:_:minPeers:)` make sure a
/// message has somebody to go to. The bytes queued for peers are bounded per peer and reserved in
/// `configuration.memory`. Counters are `counters` and swift-metrics (`pointsub_pubsub_…`).
///
/// Under swift-service-lifecycle the service is a `Service`: `run()` starts it and stops it on
/// graceful shutdown or cancellation.
///
///     let pubsub = try PubSubService(host: host, router: FloodSubRouter())
///     try pubsub.start()
///     let news = try pubsub.subscribe("news")
///     try await pubsub.publish("news", Array("hello".utf8))
///     for await message in news { print(message.text) }
///     await pubsub.stop()
///
/// Call `stop()` when done (or use `withPubSub`): the background work holds the service until then.
public final class PubSubService: Sendable {
    /// Judges a message of a topic before it is delivered or forwarded (and our own before they
    /// are published).
    public typealias Validator = @Sendable (PubSubMessage) async -> PubSubValidationResult

    /// One RPC frame waiting in a peer's outbound queue.
    struct OutboundFrame: Sendable {
        var bytes: ByteBuffer
        var messageCount: Int
        /// Set when the RPC is exactly one message and nothing else: the frame is left out if the
        /// peer sends us that message before it goes out.
        var messageID: MessageKey?
        /// Goes out before the frames already queued that are not urgent: gossipsub v1.2 IDONTWANT,
        /// which is worth something only if it gets there before the copies it is about (go-libp2p-
        /// pubsub has an urgent queue for it too). It changes nothing another RPC depends on, so
        /// it can overtake them.
        var urgent = false
    }

    /// Our side of one pubsub peer.
    struct PeerSession: Sendable {
        /// Tells this session from a later one with the same peer.
        let generation: UInt64
        /// The bounded outbound queue, written to our stream from its event loop.
        let queue: OutboundQueue
        var outbound: P2PStream?
        var inbound: P2PStream?
        /// Our subscription list went (or is going) out first on the outbound stream; later changes
        /// are queued to the peer as they happen.
        var announced = false
        /// `router.addPeer` was called for this session.
        var inRouter = false
    }

    enum Phase: Sendable {
        case idle, running, stopped
    }

    struct State: Sendable {
        var phase = Phase.idle
        var router: any PubSubRouter
        var seen: SeenCache
        var sessions: [PeerID: PeerSession] = [:]
        var subscriptions: [String: [UInt64: AsyncStream<PubSubMessage>.Continuation]] = [:]
        var validators: [String: (validator: Validator, timeout: Duration)] = [:]
        var counters = PubSubCounters()
        var seqno: UInt64
        var nextID: UInt64 = 1
        var backgroundTasks: [Task<Void, Never>] = []
        /// Our streams whose writers have not finished, by session generation. `stop()` waits for
        /// them to drain and close, and resets only what is left: a reset right after a clean
        /// close could make the peer drop data it has not read yet.
        var openOutbound: [UInt64: P2PStream] = [:]
        /// The topics each pubsub peer announced (as passed to the router), for the events and
        /// for `maxTopicsPerPeer`.
        var peerTopics: [PeerID: Set<String>] = [:]
        var eventSubscribers: [UInt64: AsyncStream<PubSubEvent>.Continuation] = [:]
        /// Connected peers our stream could not be opened to, with no stream of theirs to us:
        /// tried again when identify reports that they speak pubsub. Cleared on disconnection.
        var openFailed: Set<PeerID> = []
        /// `run()` calls waiting for `stop()`.
        var stopWaiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        /// Peer exchange: offered peers waiting for a connection attempt (at most
        /// `peerExchangeMaxPending`), oldest first.
        var exchangeQueue: [PeerID] = []
        /// Peer exchange: peers queued or being dialed (an offer of one of them is not queued again).
        var exchangePending: Set<PeerID> = []
        /// Peer exchange: connector tasks running (at most `peerExchangeConcurrency`).
        var exchangeConnectors = 0

        mutating func takeID() -> UInt64 {
            defer { nextID += 1 }
            return nextID
        }

        /// The queues of the peers that have had our subscription list.
        var announcedQueues: [OutboundQueue] {
            sessions.values.filter(\.announced).map(\.queue)
        }
    }

    public let host: P2PHost
    public let configuration: PubSubConfiguration
    /// The router's protocol IDs, most preferred first; we serve and propose these.
    public let protocols: [String]
    let heartbeatInterval: Duration?
    let state: NIOLockedValueBox<State>
    /// `forwarded` and `suppressed`, counted apart from `state`: every write counts, from the
    /// peers' event loops, and need not wait for the engine's lock.
    let transmissions = NIOLockedValueBox(Transmissions())

    struct Transmissions {
        var forwarded = 0
        var suppressed = 0
    }
    var logger: Logger { configuration.logger }
    /// For lines a remote peer can cause at will (peers dropped, RPCs refused).
    let peerLog: RateLimitedLogger
    let metrics = PubSubMetrics()
    /// Tests only: replaces how our pubsub stream is opened on a connection (to make an open fail
    /// at a chosen moment). nil: `connection.newStream(protocols:)`.
    let streamOpener = NIOLockedValueBox<(@Sendable (Connection, [String]) async throws -> P2PStream)?>(nil)

    /// Throws `.invalidConfiguration` for an unusable configuration.
    public init(host: P2PHost, router: some PubSubRouter, configuration: PubSubConfiguration = .defaults) throws(PubSubError) {
        try configuration.validate()
        guard !router.protocols.isEmpty else { throw .invalidConfiguration("the router speaks no protocol") }
        self.host = host
        var configuration = configuration
        if configuration.memory == nil { configuration.memory = host.resourceManager.serviceScope("pubsub") }
        self.configuration = configuration
        self.protocols = router.protocols
        self.heartbeatInterval = router.heartbeatInterval
        self.peerLog = RateLimitedLogger(configuration.logger, perSecond: 1, burst: 10)
        // Spec: seqno need only be unique per author; a random start keeps a restarted node's
        // messages from colliding with its earlier ones still in other nodes' seen caches. Below
        // 2^63, so tools that read it as a signed 64-bit number (JSON, Int64) see it unchanged.
        self.state = NIOLockedValueBox(State(
            router: router, seen: SeenCache(ttl: configuration.seenTTL, capacity: configuration.seenCacheCapacity),
            seqno: UInt64.random(in: 0..<(1 << 63))))
    }

    // MARK: - Lifecycle

    /// Serves the router's protocols, opens our stream to every connected peer and to every peer
    /// that connects later, and starts the router's heartbeat. Throws `.notRunning` after `stop()`,
    /// and the host's error if another handler serves one of the protocols.
    public func start() throws {
        let proceed = try state.withLockedValue { s -> Bool in
            switch s.phase {
            case .running: return false
            case .stopped: throw PubSubError.notRunning
            case .idle:
                s.phase = .running
                return true
            }
        }
        guard proceed else { return }
        var served: [String] = []
        do {
            for protocolID in protocols {
                try host.setStreamHandler(protocolID) { [weak self] stream in
                    guard let self else { return stream.reset() }
                    await self.serveInbound(stream)
                }
                served.append(protocolID)
            }
        } catch {
            for protocolID in served { host.removeStreamHandler(protocolID) }
            state.withLockedValue { $0.phase = .stopped }
            throw error
        }
        startBackgroundTasks()
        // Connection observers cannot be removed: the callback checks that we still run.
        host.addConnectionObserver { [weak self] connection in
            self?.ensureSession(with: connection.remotePeer, on: connection)
        }
        for peer in host.connectedPeers {
            if let connection = host.connections(to: peer).first { ensureSession(with: peer, on: connection) }
        }
    }

    private func startBackgroundTasks() {
        // Subscribe before looking at the connected peers, so no disconnection is missed.
        let events = host.events()
        var tasks = [
            Task { [weak self] in
                for await event in events {
                    guard let self else { return }
                    switch event {
                    case .peerDisconnected(let peer): self.peerDisconnected(peer)
                    case .peerIdentified(let peer): self.peerIdentified(peer)
                    default: break
                    }
                }
            }
        ]
        if let interval = heartbeatInterval {
            // The first heartbeat comes after a random part of the interval: services started
            // together (many nodes in one process, a test network) do not all beat at once.
            let phase = interval * Double.random(in: 0..<1)
            tasks.append(Task { [weak self] in
                var wait = phase
                while !Task.isCancelled {
                    try? await Task.sleep(for: wait)
                    wait = interval
                    guard let self, !Task.isCancelled else { return }
                    self.heartbeat()
                }
            })
        }
        let tooLate = state.withLockedValue { s -> Bool in
            guard s.phase == .running else { return true }
            s.backgroundTasks += tasks
            return false
        }
        if tooLate { tasks.forEach { $0.cancel() } }
    }

    /// Stops serving and ends every subscription. What is queued for peers is still written for
    /// up to `gracePeriod` and our streams are then closed (the peers see a clean end); whatever is
    /// left after that is reset. The service cannot be started again. Safe to call more than once.
    public func stop(gracePeriod: Duration = .seconds(1)) async {
        let (wasRunning, sessions, subscribers, tasks, listeners, waiters) = state.withLockedValue { s in
            let wasRunning = s.phase == .running
            s.phase = .stopped
            let now = ContinuousClock.now
            for (peer, session) in s.sessions where session.inRouter { _ = s.router.removePeer(peer, now: now) }
            defer {
                s.sessions = [:]
                s.subscriptions = [:]
                s.backgroundTasks = []
                s.peerTopics = [:]
                s.openFailed = []
                s.eventSubscribers = [:]
                s.stopWaiters = [:]
                s.exchangeQueue = []
                s.exchangePending = []
                peersChanged(&s)
            }
            return (
                wasRunning, Array(s.sessions.values), s.subscriptions.values.flatMap(\.values), s.backgroundTasks,
                Array(s.eventSubscribers.values), Array(s.stopWaiters.values))
        }
        for listener in listeners { listener.finish() }
        for waiter in waiters { waiter.resume() }
        if wasRunning { for protocolID in protocols { host.removeStreamHandler(protocolID) } }
        for task in tasks { task.cancel() }
        for subscriber in subscribers { subscriber.finish() }
        // A finished queue still hands out what it holds: the writers drain it, close their
        // streams and end.
        for session in sessions {
            session.queue.finish()
            session.inbound?.reset()
        }
        let deadline = Deadline.after(gracePeriod)
        while state.withLockedValue({ !$0.openOutbound.isEmpty }), !deadline.hasPassed {
            try? await Task.sleep(for: .milliseconds(5))
        }
        for stream in state.withLockedValue({ $0.openOutbound.values }) { stream.reset() }
    }

    // MARK: - Subscriptions

    /// Subscribes to `topic`: the first subscription of a topic joins it (the router is told and
    /// connected peers get our announcement). Several subscriptions of one topic each get every
    /// message. Allowed before `start()`; throws `.notRunning` after `stop()`.
    public func subscribe(_ topic: String) throws(PubSubError) -> PubSubSubscription {
        let (messages, continuation) = AsyncStream.makeStream(
            of: PubSubMessage.self, bufferingPolicy: .bufferingOldest(configuration.subscriptionBufferSize))
        let joined = state.withLockedValue { s -> (id: UInt64, actions: [PubSubRouterAction], announce: [OutboundQueue])? in
            guard s.phase != .stopped else { return nil }
            let id = s.takeID()
            continuation.onTermination = { [weak self] _ in self?.removeSubscription(topic, id: id) }
            let first = s.subscriptions[topic] == nil
            s.subscriptions[topic, default: [:]][id] = continuation
            guard first else { return (id, [], []) }
            return (id, s.router.join(topic, now: .now), s.announcedQueues)
        }
        guard let joined else {
            continuation.finish()
            throw .notRunning
        }
        announce(topic, subscribed: true, to: joined.announce)
        execute(joined.actions)
        let id = joined.id
        return PubSubSubscription(topic: topic, messages: messages) { [weak self] in
            self?.removeSubscription(topic, id: id)
            continuation.finish()
        }
    }

    /// Ends every subscription of `topic` and leaves it.
    public func unsubscribe(_ topic: String) {
        let left = state.withLockedValue { s -> (subscribers: [AsyncStream<PubSubMessage>.Continuation], actions: [PubSubRouterAction], announce: [OutboundQueue])? in
            guard let subscribers = s.subscriptions.removeValue(forKey: topic) else { return nil }
            return (Array(subscribers.values), s.router.leave(topic, now: .now), s.announcedQueues)
        }
        guard let left else { return }
        for subscriber in left.subscribers { subscriber.finish() }
        announce(topic, subscribed: false, to: left.announce)
        execute(left.actions)
    }

    func removeSubscription(_ topic: String, id: UInt64) {
        let left = state.withLockedValue { s -> (actions: [PubSubRouterAction], announce: [OutboundQueue])? in
            guard s.subscriptions[topic]?.removeValue(forKey: id) != nil else { return nil }
            guard s.subscriptions[topic]!.isEmpty else { return ([], []) }
            s.subscriptions[topic] = nil
            return (s.router.leave(topic, now: .now), s.announcedQueues)
        }
        guard let left else { return }
        announce(topic, subscribed: false, to: left.announce)
        execute(left.actions)
    }

    /// Topics we subscribe to, sorted.
    public var topics: [String] {
        state.withLockedValue { $0.subscriptions.keys.sorted() }
    }

    /// Peers the router knows to subscribe to `topic`.
    public func peers(topic: String) -> [PeerID] {
        state.withLockedValue { $0.router.peers(subscribedTo: topic) }
    }

    /// Peers with a pubsub stream to or from us, sorted.
    public var peers: [PeerID] {
        state.withLockedValue { s in s.sessions.filter(\.value.inRouter).keys.sorted() }
    }

    public var counters: PubSubCounters {
        var counters = state.withLockedValue { s in
            var counters = s.counters
            s.router.addCounters(to: &counters)
            return counters
        }
        let transmissions = transmissions.withLockedValue { $0 }
        counters.forwarded = transmissions.forwarded
        counters.suppressed = transmissions.suppressed
        return counters
    }

    /// A look at the router's state, e.g. a gossipsub mesh:
    /// `pubsub.withRouter { ($0 as? GossipSubRouter)?.meshPeers(in: "news") }`. `body` runs under
    /// the engine's lock: keep it short, and do not call back into the service from it.
    public func withRouter<T>(_ body: (any PubSubRouter) -> T) -> T {
        state.withLockedValue { body($0.router) }
    }

    // MARK: - Validators

    /// Sets the validator of `topic` (replacing any): every message of the topic, received or
    /// published by us, is judged before it is delivered or forwarded. A verdict later than
    /// `timeout` (default `configuration.validationTimeout`) counts as `.ignore`. Messages of one
    /// peer are validated one after the other: a slow validator slows that peer's stream only.
    public func setValidator(_ topic: String, timeout: Duration? = nil, _ validator: @escaping Validator) {
        let timeout = timeout ?? configuration.validationTimeout
        state.withLockedValue { $0.validators[topic] = (validator, timeout) }
    }

    public func removeValidator(_ topic: String) {
        _ = state.withLockedValue { $0.validators.removeValue(forKey: topic) }
    }

    // MARK: - Publishing

    /// Publishes `data` as a new message of `topic` and sends it to the peers the router picks:
    /// signed, with our peer ID and a new seqno, under StrictSign; with neither under StrictNoSign
    /// (the topic's policy, `configuration.signaturePolicy(of:)`). We need not subscribe to the
    /// topic. `minPeers`: the message is sent only if at least that many peers are known to
    /// subscribe to the topic (`peers(topic:)`); otherwise nothing is sent and `.notEnoughPeers`
    /// is thrown — `publish` returning means the message went to somebody (without it, a publish
    /// with nobody to send to succeeds quietly). Throws `.notRunning`, `.notEnoughPeers`,
    /// `.messageTooLarge` (it would not fit in `maxRPCSize`), `.publishRejected` (our validator
    /// did not accept it), `.duplicateMessage` (its ID was seen within `seenTTL`: with content
    /// IDs, the same bytes published again — every peer would drop it).
    @discardableResult
    public func publish(_ topic: String, _ data: some Collection<UInt8>, minPeers: Int = 0) async throws(PubSubError) -> MessageID {
        let policy = configuration.signaturePolicy(of: topic)
        let checked = state.withLockedValue { s -> Result<UInt64?, PubSubError> in
            guard s.phase == .running else { return .failure(.notRunning) }
            if minPeers > 0 {
                let known = s.router.peers(subscribedTo: topic).count
                guard known >= minPeers else {
                    return .failure(.notEnoughPeers(topic: topic, known: known, required: minPeers))
                }
            }
            guard policy == .strictSign else { return .success(nil) }
            defer { s.seqno &+= 1 }
            return .success(s.seqno)
        }
        let seqno = try checked.get()
        let message: PubSubRPC.Message
        if let seqno {
            do {
                message = try MessageSigning.signedMessage(topic: topic, data: Array(data), seqno: seqno, key: host.identity)
            } catch {
                throw PubSubError(.signingFailed, "signing the message failed", cause: error)
            }
        } else {
            message = MessageSigning.unsignedMessage(topic: topic, data: Array(data))
        }
        // The RPC carrying it alone: field tag, length, message.
        let messageSize = message.encoded().count
        let rpcSize = 1 + Varint.encodedLength(UInt64(messageSize)) + messageSize
        guard rpcSize <= configuration.maxRPCSize else {
            throw .messageTooLarge(size: rpcSize, limit: configuration.maxRPCSize)
        }
        let id = configuration.messageID(of: message)
        let local = PubSubMessage(
            topic: topic, data: message.data, from: seqno == nil ? nil : host.peerID, seqno: seqno, id: id,
            receivedFrom: host.peerID)
        let verdict = await validate(local)
        guard verdict == .accept else { throw .publishRejected(topic: topic, verdict) }
        let deliverOwn = configuration.deliverOwnMessages
        let routed = state.withLockedValue { s -> Result<(subscribers: [AsyncStream<PubSubMessage>.Continuation], actions: [PubSubRouterAction]), PubSubError> in
            guard s.phase == .running else { return .failure(.notRunning) }
            let now = ContinuousClock.now
            // Our own message coming back from a peer is then a duplicate: never delivered or
            // routed again.
            guard s.seen.insert(MessageKey(id), now: now) else { return .failure(.duplicateMessage(topic: topic)) }
            s.counters.published += 1
            s.counters.routed += 1
            metrics.published.increment()
            let subscribers = deliverOwn ? (s.subscriptions[topic].map { Array($0.values) } ?? []) : []
            if !subscribers.isEmpty {
                s.counters.delivered += 1
                metrics.delivered.increment()
            }
            return .success((subscribers, s.router.route(message, id: id, from: nil, now: now)))
        }
        let sent = try routed.get()
        deliver(local, to: sent.subscribers)
        execute(sent.actions)
        return id
    }

    // MARK: - Heartbeat

    func heartbeat() {
        let actions = state.withLockedValue { s -> [PubSubRouterAction] in
            guard s.phase == .running else { return [] }
            return s.router.heartbeat(now: .now)
        }
        execute(actions)
    }
}

// MARK: - ServiceLifecycle

extension PubSubService: Service {
    /// Runs the service in a `ServiceGroup`: starts it (if `start()` was not called yet), then
    /// runs until graceful shutdown, cancellation of the calling task, or `stop()`, and stops it
    /// (`stop()`'s default grace period) before returning. Throws what `start()` throws.
    public func run() async throws {
        try start()
        let id = state.withLockedValue { $0.takeID() }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await gracefulShutdown() }
            group.addTask { [weak self] in await self?.waitUntilStopped(id) }
            await group.next()
            group.cancelAll()
        }
        await stop()
    }

    /// Returns once `stop()` was called, or when the calling task is cancelled.
    private func waitUntilStopped(_ id: UInt64) async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let waiting = state.withLockedValue { s -> Bool in
                    guard s.phase == .running, !Task.isCancelled else { return false }
                    s.stopWaiters[id] = continuation
                    return true
                }
                if !waiting { continuation.resume() }
            }
        } onCancel: {
            state.withLockedValue { $0.stopWaiters.removeValue(forKey: id) }?.resume()
        }
    }
}

/// Runs `body` with a started `PubSubService` on `host`, and stops it when `body` returns or throws.
public func withPubSub<T: Sendable>(
    host: P2PHost, router: some PubSubRouter, configuration: PubSubConfiguration = .defaults,
    _ body: (PubSubService) async throws -> T
) async throws -> T {
    let service = try PubSubService(host: host, router: router, configuration: configuration)
    try service.start()
    do {
        let result = try await body(service)
        await service.stop()
        return result
    } catch {
        await service.stop()
        throw error
    }
}
