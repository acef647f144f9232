import Basics
import Identity
import LibP2P
import Logging
import NIOConcurrencyHelpers
import NIOCore

// The I/O shell around the router: peer sessions, the streams, inbound RPC handling, and carrying
// out the router's actions.
extension PubSubService {
    // MARK: - Sessions

    /// Makes sure we have a session with `peer`; a new one gets a task that opens our stream on
    /// `connection` and hands it to the session's queue.
    func ensureSession(with peer: PeerID, on connection: Connection) {
        let created = state.withLockedValue { s in makeSession(with: peer, in: &s) }
        guard let created else { return }
        spawnWriter(peer: peer, generation: created.generation, connection: connection, frames: created.frames)
    }

    /// Under the lock: a new session with `peer`, unless there is one (or we are not running, or
    /// `peer` is us). The caller spawns its writer (`spawnWriter`) once out of the lock.
    func makeSession(with peer: PeerID, in s: inout State) -> (generation: UInt64, frames: OutboundQueue)? {
        guard s.phase == .running, s.sessions[peer] == nil, peer != host.peerID else { return nil }
        s.openFailed.remove(peer)
        // Bounded queue (frames and bytes, the bytes reserved in the memory account): when full,
        // `yield` refuses the newest frame.
        let queue = OutboundQueue(
            capacity: configuration.maxQueuedRPCsPerPeer, maxBytes: configuration.maxQueuedBytesPerPeer,
            memory: configuration.memory ?? UnlimitedMemoryAccount(), peer: peer)
        let generation = s.takeID()
        s.sessions[peer] = PeerSession(generation: generation, queue: queue)
        return (generation, queue)
    }

    func spawnWriter(peer: PeerID, generation: UInt64, connection: Connection, frames: OutboundQueue) {
        // Spawned on the host, so a host shutdown cancels it.
        host.spawn { [weak self] in
            await self?.runWriter(peer: peer, generation: generation, connection: connection, frames: frames)
        }
    }

    /// Attempts at opening our stream to a peer whose own stream to us is open (so it speaks
    /// pubsub), and the wait before the second; each further wait is twice the one before.
    static let maxOpenAttempts = 5
    static let firstOpenRetryDelay: Duration = .milliseconds(50)

    private enum OpenFailure {
        /// The session ended meanwhile (or was replaced): nothing to do.
        case gone
        case retry(after: Duration)
        /// The session was removed; finish its ending.
        case ended(EndedSession, giveUp: Bool)
    }

    /// Opens our pubsub stream to `peer`. A failure is retried (a few times, with growing waits)
    /// while the peer's own stream to us is open: it speaks pubsub, and our proposal most likely
    /// reached it before its handler was registered — two hosts that start pubsub at the same
    /// moment (issue 10, defect 8). Without the peer's stream the session ends — in the same turn
    /// of the lock that looks at it, so a peer stream that comes in later finds no session and
    /// starts a new one (with a new attempt from our side).
    private func openOutbound(peer: PeerID, generation: UInt64, connection: Connection) async -> P2PStream? {
        var connection = connection
        var attempt = 0
        while true {
            let failure: any Error
            do {
                if let opener = streamOpener.withLockedValue({ $0 }) {
                    return try await opener(connection, protocols)
                }
                return try await connection.newStream(protocols: protocols)
            } catch {
                failure = error
            }
            attempt += 1
            let cancelled = Task.isCancelled
            let connected = !host.connections(to: peer).isEmpty
            let outcome = state.withLockedValue { s -> OpenFailure in
                guard s.phase == .running, let session = s.sessions[peer], session.generation == generation else {
                    return .gone
                }
                if session.inbound != nil, attempt < Self.maxOpenAttempts, !cancelled {
                    return .retry(after: Self.firstOpenRetryDelay * (1 << (attempt - 1)))
                }
                if session.inbound == nil, connected { s.openFailed.insert(peer) }
                return .ended(removeSession(of: peer, in: &s), giveUp: session.inbound != nil)
            }
            switch outcome {
            case .gone:
                return nil
            case .retry(let delay):
                peerLog.log(
                    .debug, key: "pubsub open retry", "opening the pubsub stream failed; retrying",
                    metadata: ["peer": "\(peer)", "attempt": "\(attempt)", "error": "\(failure)"])
                try? await Task.sleep(for: delay)
                // The connection may have closed meanwhile: any open one to the peer will do
                // (none: `peerDisconnected` ends the session).
                connection = host.connections(to: peer).first ?? connection
            case .ended(let ended, let giveUp):
                if giveUp {
                    // The peer's stream goes too: it notices, and nobody is left half connected.
                    peerLog.log(
                        .warning, key: "pubsub open gave up", "pubsub peer dropped: cannot open our stream to it",
                        metadata: ["peer": "\(peer)", "attempts": "\(attempt)", "error": "\(failure)"])
                    finishEnding(ended, of: peer, keepReading: false)
                } else {
                    // Most often a peer without pubsub (or not yet: its stream to us will start a
                    // new session). Nothing was added to the router.
                    peerLog.log(
                        .debug, key: "pubsub open failed", "no pubsub stream to peer",
                        metadata: ["peer": "\(peer)", "error": "\(failure)"])
                    finishEnding(ended, of: peer, keepReading: true)
                }
                return nil
            }
        }
    }

    /// Opens our stream to `peer` and sends our subscriptions, then hands the stream to the
    /// queue: from then on the queued RPCs are written from the stream's event loop, in order,
    /// what queued up meanwhile together (no task per write).
    private func runWriter(
        peer: PeerID, generation: UInt64, connection: Connection, frames: OutboundQueue
    ) async {
        guard let stream = await openOutbound(peer: peer, generation: generation, connection: connection) else { return }
        let attached = state.withLockedValue { s -> (topics: [String], actions: [PubSubRouterAction])? in
            guard s.phase == .running, var session = s.sessions[peer], session.generation == generation else { return nil }
            session.outbound = stream
            session.announced = true
            s.openOutbound[generation] = stream
            var actions: [PubSubRouterAction] = []
            if !session.inRouter {
                session.inRouter = true
                protect(peer)
                actions = s.router.addPeer(
                    peer, protocolID: stream.protocolID, outbound: stream.connection.direction == .outbound, now: .now)
            }
            s.sessions[peer] = session
            peersChanged(&s)
            return (s.subscriptions.keys.sorted(), actions)
        }
        guard let attached else {
            stream.reset()
            return
        }
        // Notices a reset by the peer or the end of the connection while we have nothing to write.
        stream.setFailureWatcher { [weak self] in
            self?.endSession(with: peer, generation: generation, reason: "outbound stream failed", keepReading: true)
        }
        execute(attached.actions)
        do {
            // Spec: the first RPC on a new stream carries our full subscription list.
            if !attached.topics.isEmpty {
                let hello = PubSubRPC(subscriptions: attached.topics.map { .init(subscribe: true, topic: $0) })
                try await stream.write(Self.frame(hello.encoded()))
            }
        } catch {
            writerEnded(generation)
            endSession(with: peer, generation: generation, reason: "writing failed: \(error)", keepReading: true)
            return
        }
        frames.attach(OutboundQueue.Sink(
            eventLoop: stream.eventLoop,
            write: { stream.writeOnEventLoop($0) },
            wrote: { [weak self] messages, suppressed in
                guard messages > 0 || suppressed > 0 else { return }
                self?.transmissions.withLockedValue {
                    $0.forwarded += messages
                    $0.suppressed += suppressed
                }
            },
            finished: { [weak self] in
                // The queue was finished (stop, or the session ended) and is drained: a clean end.
                stream.setFailureWatcher(nil)
                Task {
                    do {
                        try await stream.closeWrite()
                    } catch {
                        self?.endSession(with: peer, generation: generation, reason: "closing failed: \(error)", keepReading: true)
                    }
                    self?.writerEnded(generation)
                }
            },
            failed: { [weak self] error in
                self?.writerEnded(generation)
                self?.endSession(with: peer, generation: generation, reason: "writing failed: \(error)", keepReading: true)
            }))
    }

    /// Our stream of session `generation` is closed or failed: `stop()` need not wait for it.
    private func writerEnded(_ generation: UInt64) {
        _ = state.withLockedValue { $0.openOutbound.removeValue(forKey: generation) }
    }

    /// Serves a peer's stream to us (the host's handler task): reads RPC frames until the stream
    /// ends. A newer stream from the same peer replaces this one (go-libp2p does the same).
    func serveInbound(_ stream: P2PStream) async {
        let peer = stream.remotePeer
        // The session is looked up (or made) and the stream attached in one turn of the lock: a
        // writer whose open just failed decides under the same lock whether the session goes
        // (no peer stream yet) or retries (there is one) — nothing falls in between.
        let attached = state.withLockedValue { s -> (
            generation: UInt64, previous: P2PStream?, actions: [PubSubRouterAction],
            created: (generation: UInt64, frames: OutboundQueue)?
        )? in
            let created = makeSession(with: peer, in: &s)
            guard s.phase == .running, var session = s.sessions[peer] else { return nil }
            let previous = session.inbound
            session.inbound = stream
            var actions: [PubSubRouterAction] = []
            if !session.inRouter {
                session.inRouter = true
                protect(peer)
                actions = s.router.addPeer(
                    peer, protocolID: stream.protocolID, outbound: stream.connection.direction == .outbound, now: .now)
            }
            s.sessions[peer] = session
            peersChanged(&s)
            return (session.generation, previous, actions, created)
        }
        guard let attached else {
            peerLog.log(.debug, key: "pubsub stream refused", "pubsub stream refused: the service is not running",
                metadata: ["peer": "\(peer)"])
            return stream.reset()
        }
        if let created = attached.created {
            spawnWriter(peer: peer, generation: created.generation, connection: stream.connection, frames: created.frames)
        }
        attached.previous?.reset()
        execute(attached.actions)

        // The peer's RPCs are handled synchronously on the stream's event loop as they arrive
        // (no task wake-up per read). Only a message that waits for a topic validator brings the
        // handling back to this task: while the validator runs, the stream is not read (its data
        // queues, un-credited: back-pressure on the peer), and after the verdict the rest of the
        // RPC and the frames already decoded are handled and reading returns to the loop.
        var decoder = RPCFrameDecoder(maxFrameSize: configuration.maxRPCSize)
        while true {
            switch await readOnEventLoop(stream, of: peer, generation: attached.generation, decoder: decoder) {
            case .ended:
                return
            case .validating(let pending, let rest):
                await finish(pending, from: peer)
                decoder = rest
            }
        }
    }

    /// A peer sent an oversized or malformed RPC.
    func badRPC(_ error: PubSubError, on stream: P2PStream, from peer: PeerID) {
        state.withLockedValue { $0.counters.badRPCs += 1 }
        metrics.badRPCs.increment()
        peerLog.log(.info, key: "pubsub bad rpc", "pubsub peer dropped: it sent a bad RPC",
            metadata: ["peer": "\(peer)", "error": "\(error)"])
        // Whatever session the peer has by now goes, and this stream with it.
        stream.reset()
        endSession(with: peer, generation: nil, reason: error.description)
    }

    /// The memory account refused to hold what a peer's stream sent (a frame in progress).
    func memoryRefused(_ error: ResourceError, on stream: P2PStream, from peer: PeerID, bytes: Int) {
        state.withLockedValue { $0.counters.memoryRefusals += 1 }
        metrics.memoryRefusals.increment()
        peerLog.log(.info, key: "pubsub memory refused", "pubsub peer dropped: memory refused for its RPC",
            metadata: ["peer": "\(peer)", "bytes": "\(bytes)", "error": "\(error)"])
        stream.reset()
        endSession(with: peer, generation: nil, reason: "memory refused: \(error)")
    }

    enum LoopReadOutcome: Sendable {
        /// The stream ended (or failed, or sent a bad RPC): all done.
        case ended
        /// A message waits for a topic validator; the frames after it are in the decoder.
        case validating(PendingValidation, RPCFrameDecoder)
    }

    /// Handles the stream's RPCs on its event loop — first the frames `decoder` holds already,
    /// then the data as it arrives — until the stream ends or a message has to wait for a topic
    /// validator.
    private func readOnEventLoop(
        _ stream: P2PStream, of peer: PeerID, generation: UInt64, decoder: RPCFrameDecoder
    ) async -> LoopReadOutcome {
        let reader = LoopReader(service: self, stream: stream, peer: peer, generation: generation, decoder: decoder)
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<LoopReadOutcome, Never>) in
                stream.eventLoop.execute { reader.start(continuation) }
            }
        } onCancel: {
            stream.eventLoop.execute { reader.cancel() }
        }
    }

    /// The end of an inbound stream ends the session, unless a newer stream replaced it.
    func inboundEnded(_ stream: P2PStream, of peer: PeerID, generation: UInt64, reason: String) {
        let current = state.withLockedValue { $0.sessions[peer]?.inbound === stream }
        if current { endSession(with: peer, generation: generation, reason: reason) }
    }

    /// The last connection to `peer` closed. If a new one opened meanwhile, start over on it.
    func peerDisconnected(_ peer: PeerID) {
        state.withLockedValue { _ = $0.openFailed.remove(peer) }
        endSession(with: peer, generation: nil, reason: "disconnected")
        if let connection = host.connections(to: peer).first { ensureSession(with: peer, on: connection) }
    }

    /// Identify told us the peer's protocols (again: identify push follows a peer registering new
    /// handlers). If our stream could not be opened to it before (and it has none to us) and it
    /// now speaks one of our protocols, we try again — once per such failure. Peers dropped for
    /// what they sent are not in that set: they are not called back.
    func peerIdentified(_ peer: PeerID) {
        guard state.withLockedValue({ $0.openFailed.contains(peer) }) else { return }
        let theirs = Set(host.peerstore.protocols(for: peer))
        guard protocols.contains(where: theirs.contains), let connection = host.connections(to: peer).first else { return }
        ensureSession(with: peer, on: connection)
    }

    /// What `removeSession` took out, for `finishEnding` to finish outside the lock.
    struct EndedSession {
        let session: PeerSession
        let actions: [PubSubRouterAction]
    }

    /// The connection manager's protection tag for peers we exchange pubsub with.
    static let connectionManagerTag = "pubsub"

    /// A peer in the router: its connections are protected from the connection manager's trimming
    /// and idle closing while the session lasts (the mesh and the topic peers depend on them).
    func protect(_ peer: PeerID) {
        host.connectionManager.protect(peer, tag: Self.connectionManagerTag)
    }

    /// Under the lock: removes `peer`'s session and the peer from the router (and from the
    /// topics it had joined: `.peerLeft` events).
    func removeSession(of peer: PeerID, in s: inout State) -> EndedSession {
        let session = s.sessions.removeValue(forKey: peer)!
        var actions: [PubSubRouterAction] = []
        if session.inRouter {
            host.connectionManager.unprotect(peer, tag: Self.connectionManagerTag)
            actions = s.router.removePeer(peer, now: .now)
            for topic in (s.peerTopics.removeValue(forKey: peer) ?? []).sorted() {
                emit(.peerLeft(topic: topic, peer: peer), in: &s)
            }
            peersChanged(&s)
        }
        return EndedSession(session: session, actions: actions)
    }

    /// Out of the lock: ends the removed session's queue and streams, and carries out the
    /// router's actions.
    func finishEnding(_ ended: EndedSession, of peer: PeerID, keepReading: Bool) {
        ended.session.queue.finish()
        ended.session.outbound?.reset()
        if !keepReading { ended.session.inbound?.reset() }
        execute(ended.actions)
    }

    /// Removes the session (only generation `generation`, when given) and the peer from the router,
    /// and resets its streams. `keepReading`: leave the peer's stream to us open and read to its
    /// end — when only our stream failed, e.g. because the peer is stopping, the peer's stream
    /// may still hold messages it sent before.
    func endSession(with peer: PeerID, generation: UInt64?, reason: String, keepReading: Bool = false) {
        let ended = state.withLockedValue { s -> EndedSession? in
            guard let session = s.sessions[peer], generation == nil || session.generation == generation else { return nil }
            return removeSession(of: peer, in: &s)
        }
        guard let ended else { return }
        // A remote can make this happen at will (connect, open, reset, again): rate-limited.
        peerLog.log(.debug, key: "pubsub peer removed", "pubsub peer removed",
            metadata: ["peer": "\(peer)", "reason": "\(reason)"])
        finishEnding(ended, of: peer, keepReading: keepReading)
    }

    // MARK: - Inbound RPCs

    /// How far handling an RPC got: its messages' IDs, which of them were new (not in the seen
    /// cache at the first look), and the next of those to handle.
    struct RPCProgress {
        let rpc: PubSubRPC
        let ids: [MessageID]
        let keys: [MessageKey]
        let fresh: [Int]
        var next = 0
    }

    /// Most IDONTWANT message IDs of one RPC that leave out copies already queued for the peer
    /// (go-libp2p-pubsub takes 10 IDs per RPC), and the longest such ID.
    static let maxIDontWantLeftOutPerRPC = 10
    static let maxIDontWantLeftOutIDLength = 128

    /// An RPC whose handling waits for a topic validator's verdict on one of its messages.
    struct PendingValidation {
        var progress: RPCProgress
        let message: PubSubRPC.Message
        let received: PubSubMessage
        let validator: Validator
        let timeout: Duration
    }

    /// Handles an RPC without suspending, in as few turns of the engine's lock as it can: one for
    /// the graylist check, the subscriptions and the seen check of every message (duplicates end
    /// there; the router hears of the new ones, `receivedNew`), one per new message after its
    /// signature check (marked seen and, without a topic validator, delivered and routed), one for
    /// the control part. Returns where it stopped when a
    /// message waits for a topic validator (`finish` takes it from there).
    ///
    /// No suspension point between a message's seen check and its insertion: a nonisolated async
    /// call is a hop through the executor (on NIO's event loops, a job queued behind the others),
    /// and other copies of the message, read by other tasks meanwhile, would all pass the check and
    /// be verified too.
    func handle(_ rpc: PubSubRPC, from peer: PeerID) -> PendingValidation? {
        let ids = rpc.messages.map { configuration.messageID(of: $0) }
        let keys = ids.map(MessageKey.init)
        // The policy checks that need no cryptography come first, before the seen cache (as
        // go-libp2p-pubsub does): a copy breaking its topic's policy is rejected (and scored)
        // even when a valid copy came first.
        let violations = rpc.messages.map {
            MessageSigning.precheck($0, policy: configuration.signaturePolicy(of: $0.topic))
        }
        let first = state.withLockedValue { s -> (fresh: [Int], queue: OutboundQueue?, actions: [PubSubRouterAction])? in
            // gossipsub v1.1: RPCs of a peer whose score fell below the graylist threshold are ignored.
            if s.router.isGraylisted(peer) {
                s.counters.graylistedRPCs += 1
                return nil
            }
            let now = ContinuousClock.now
            var actions: [PubSubRouterAction] = []
            if !rpc.subscriptions.isEmpty, s.phase == .running, s.sessions[peer]?.inRouter == true {
                for subscription in rpc.subscriptions {
                    actions += peerSubscription(peer, subscription, now: now, in: &s)
                }
            }
            var fresh: [Int] = []
            for (index, message) in rpc.messages.enumerated() {
                s.counters.received += 1
                if violations[index] != nil {
                    s.counters.rejected += 1
                    s.router.invalidMessage(message, from: peer, now: now)
                } else if s.seen.contains(keys[index], now: now) {
                    s.counters.duplicates += 1
                    s.router.duplicateMessage(message, id: ids[index], from: peer, now: now)
                } else {
                    fresh.append(index)
                    // Before the signature check and validation: gossipsub v1.2 tells its mesh
                    // peers at once that we have the message (IDONTWANT), as go-libp2p-pubsub does.
                    // The price: a forged copy with a real message's ID keeps our mesh peers from
                    // sending us the real one for the IDONTWANT's TTL (3 heartbeats); it still comes
                    // from peers that were not told (gossip from non-mesh peers, the author's flood publish).
                    if s.phase == .running {
                        actions += s.router.receivedNew(message, id: ids[index], from: peer, now: now)
                    }
                }
            }
            return (fresh, s.sessions[peer]?.queue, actions)
        }
        guard let first else {
            metrics.graylisted.increment()
            peerLog.log(.debug, key: "pubsub graylisted", "pubsub RPC of a graylisted peer ignored",
                metadata: ["peer": "\(peer)"])
            return nil
        }
        if let violation = violations.lazy.compactMap({ $0 }).first {
            let count = violations.count(where: { $0 != nil })
            metrics.rejected.increment(by: count)
            peerLog.log(.debug, key: "pubsub message rejected", "pubsub message rejected",
                metadata: ["peer": "\(peer)", "reason": "\(violation.message)", "count": "\(count)"])
        }
        if !rpc.messages.isEmpty {
            metrics.received.increment(by: rpc.messages.count)
            let duplicates = rpc.messages.count - first.fresh.count - violations.count(where: { $0 != nil })
            if duplicates > 0 { metrics.duplicates.increment(by: duplicates) }
        }
        execute(first.actions)
        // The peer has these messages: what we queued for it with only one of them can stay here.
        if configuration.leaveOutCopiesPeersHave, let queue = first.queue {
            for key in keys { queue.peerSent(key) }
            // Gossipsub v1.2: an IDONTWANT says the same of the messages it names (the router keeps
            // them from being queued; these are queued already). The first few IDs of short length
            // only: they go into the queue's small table of recent IDs.
            if let idontwants = rpc.control?.idontwant, !idontwants.isEmpty {
                for id in idontwants.lazy.flatMap(\.messageIDs).prefix(Self.maxIDontWantLeftOutPerRPC)
                where id.count <= Self.maxIDontWantLeftOutIDLength {
                    queue.peerSent(MessageKey(id))
                }
            }
        }
        return proceed(RPCProgress(rpc: rpc, ids: ids, keys: keys, fresh: first.fresh), from: peer)
    }

    /// Handles the RPC's new messages from `progress.next` on, then its control part; stops at a
    /// message that waits for a topic validator.
    private func proceed(_ progress: RPCProgress, from peer: PeerID) -> PendingValidation? {
        var progress = progress
        while progress.next < progress.fresh.count {
            let index = progress.fresh[progress.next]
            progress.next += 1
            let message = progress.rpc.messages[index]
            if let wait = handleNew(message, id: progress.ids[index], key: progress.keys[index], from: peer) {
                return PendingValidation(
                    progress: progress, message: message, received: wait.received, validator: wait.validator,
                    timeout: wait.timeout)
            }
        }
        if let control = progress.rpc.control, !control.isEmpty {
            let (actions, offers) = state.withLockedValue { s -> ([PubSubRouterAction], [PubSubRPC.Prune.PeerInfo]) in
                guard s.phase == .running, s.sessions[peer]?.inRouter == true else { return ([], []) }
                let now = ContinuousClock.now
                let seen = s.seen  // a copy-on-write snapshot: the router mutates while it asks
                let actions = s.router.handleControl(control, from: peer, now: now) { seen.contains($0, now: now) }
                return (actions, control.prune.isEmpty ? [] : s.router.takePeerExchangeOffers())
            }
            execute(actions)
            if !offers.isEmpty { takePeerExchange(offers, from: peer) }
        }
        return nil
    }

    /// Waits for the validator's verdict, delivers and routes an accepted message, and handles
    /// the rest of the RPC (validating further messages the same way).
    func finish(_ pending: PendingValidation, from peer: PeerID) async {
        var next: PendingValidation? = pending
        while let pending = next {
            let message = pending.message
            let id = pending.received.id
            let verdict = await Self.run(
                pending.validator, on: pending.received, timeout: pending.timeout, eventLoop: host.eventLoopGroup.any())
            switch verdict {
            case .accept:
                if let routed = state.withLockedValue({ s in self.route(message, id: id, from: peer, now: .now, in: &s) }) {
                    deliver(pending.received, to: routed.subscribers)
                    execute(routed.actions)
                }
            case .reject:
                reject(message, id: id, from: peer, reason: "rejected by the topic validator")
            case .ignore:
                state.withLockedValue { $0.counters.ignored += 1 }
            }
            next = proceed(pending.progress, from: peer)
        }
    }

    /// A message that was not in the seen cache: its topic's signature policy (StrictSign: the
    /// signature), our own message, then marks it seen, and delivers and routes it — or returns
    /// what its topic's validator needs. The signature is checked before the ID is marked seen,
    /// so a forged copy cannot shadow the real message.
    private func handleNew(
        _ message: PubSubRPC.Message, id: MessageID, key: MessageKey, from peer: PeerID
    ) -> (received: PubSubMessage, validator: Validator, timeout: Duration)? {
        let author: MessageSigning.Author?
        switch MessageSigning.check(message, policy: configuration.signaturePolicy(of: message.topic)) {
        case .failure(let failure):
            reject(message, id: id, from: peer, reason: failure.message, tracked: false)
            return nil
        case .success(let verified):
            author = verified
        }
        // go-libp2p does the same: a message claiming to be ours that we do not remember (its seen
        // entry expired) is dropped, never delivered or forwarded again.
        if author?.peer == host.peerID {
            state.withLockedValue { $0.counters.ignored += 1 }
            return nil
        }
        enum Next {
            case done
            case routed(Routed)
            case validate(validator: Validator, timeout: Duration)
        }
        let next = state.withLockedValue { s -> Next in
            let now = ContinuousClock.now
            guard s.seen.insert(key, now: now) else {
                metrics.duplicates.increment()
                s.counters.duplicates += 1  // a copy from another peer got here first
                s.router.duplicateMessage(message, id: id, from: peer, now: now)
                return .done
            }
            if !s.validators.isEmpty, let entry = s.validators[message.topic] {
                return .validate(validator: entry.validator, timeout: entry.timeout)
            }
            return route(message, id: id, from: peer, now: now, in: &s).map(Next.routed) ?? .done
        }
        let received = PubSubMessage(
            topic: message.topic, data: message.data, from: author?.peer, seqno: author?.seqno, id: id, receivedFrom: peer)
        switch next {
        case .done:
            return nil
        case .routed(let routed):
            deliver(received, to: routed.subscribers)
            execute(routed.actions)
            return nil
        case .validate(let validator, let timeout):
            return (received, validator, timeout)
        }
    }

    typealias Routed = (subscribers: [AsyncStream<PubSubMessage>.Continuation], actions: [PubSubRouterAction])

    /// Under the lock: a new valid message goes to our subscriptions and to the router.
    private func route(
        _ message: PubSubRPC.Message, id: MessageID, from peer: PeerID, now: ContinuousClock.Instant, in s: inout State
    ) -> Routed? {
        guard s.phase == .running else { return nil }
        let subscribers = s.subscriptions[message.topic].map { Array($0.values) } ?? []
        if !subscribers.isEmpty {
            s.counters.delivered += 1
            metrics.delivered.increment()
        }
        s.counters.routed += 1
        return (subscribers, s.router.route(message, id: id, from: peer, now: now))
    }

    /// Counts and scores a rejected message. `tracked`: the router records the ID as invalid (a
    /// validator's verdict); false for a signature-policy failure (`PubSubRouter.invalidMessage`).
    private func reject(_ message: PubSubRPC.Message, id: MessageID, from peer: PeerID, reason: String, tracked: Bool = true) {
        state.withLockedValue { s in
            s.counters.rejected += 1
            if tracked {
                s.router.messageRejected(message, id: id, from: peer, now: .now)
            } else {
                s.router.invalidMessage(message, from: peer, now: .now)
            }
        }
        metrics.rejected.increment()
        peerLog.log(.debug, key: "pubsub message rejected", "pubsub message rejected",
            metadata: ["peer": "\(peer)", "reason": "\(reason)"])
    }

    // MARK: - Validation

    func validate(_ message: PubSubMessage) async -> PubSubValidationResult {
        guard let entry = state.withLockedValue({ $0.validators[message.topic] }) else { return .accept }
        return await Self.run(entry.validator, on: message, timeout: entry.timeout, eventLoop: host.eventLoopGroup.any())
    }

    /// Runs `validator` with a hard time limit: the verdict is `.ignore` at the deadline even if
    /// the validator ignores cancellation (it is cancelled and left to finish on its own), and
    /// when the calling task is cancelled.
    private static func run(
        _ validator: @escaping Validator, on message: PubSubMessage, timeout: Duration, eventLoop: any EventLoop
    ) async -> PubSubValidationResult {
        do {
            return try await withDeadline(.after(timeout), on: eventLoop, onTimeout: { ValidatorTimedOut() }) {
                await validator(message)
            }
        } catch {
            return .ignore
        }
    }

    // MARK: - Actions and delivery

    func deliver(_ message: PubSubMessage, to subscribers: [AsyncStream<PubSubMessage>.Continuation]) {
        var overflows = 0
        for subscriber in subscribers {
            if case .dropped = subscriber.yield(message) { overflows += 1 }
        }
        if overflows > 0 { state.withLockedValue { $0.counters.subscriberOverflows += overflows } }
    }

    /// Queues a subscription change to the peers that already had our subscription list.
    func announce(_ topic: String, subscribed: Bool, to queues: [OutboundQueue]) {
        guard !queues.isEmpty else { return }
        let frame = OutboundFrame(
            bytes: Self.frame(PubSubRPC(subscriptions: [.init(subscribe: subscribed, topic: topic)]).encoded()),
            messageCount: 0)
        enqueue(queues.map { (frame, $0) })
    }

    /// Carries out router actions: each RPC is framed and queued for its peer (peers that are gone
    /// are skipped).
    func execute(_ actions: [PubSubRouterAction]) {
        guard !actions.isEmpty else { return }
        let queues = state.withLockedValue { s in
            actions.map { action -> OutboundQueue? in
                switch action {
                case .send(let peer, _): s.sessions[peer]?.queue
                }
            }
        }
        var frames: [(OutboundFrame, OutboundQueue)] = []
        var tooLarge = 0
        // Routers send one RPC to many peers (floodsub: the same message to every neighbour).
        var last: (rpc: PubSubRPC, frame: OutboundFrame?)?
        for (action, queue) in zip(actions, queues) {
            guard case .send(_, var rpc) = action, let queue else { continue }
            if rpc.control.map({ !$0.prune.isEmpty }) == true {
                rpc = PeerExchange.attachingRecords(to: rpc) { host.peerstore.signedRecord(for: $0) }
            }
            let frame: OutboundFrame?
            if let last, last.rpc == rpc {
                frame = last.frame
            } else {
                let bytes = rpc.encoded()
                let single = rpc.messages.count == 1 && rpc.subscriptions.isEmpty && rpc.control == nil
                frame = bytes.count <= configuration.maxRPCSize
                    ? OutboundFrame(
                        bytes: Self.frame(bytes), messageCount: rpc.messages.count,
                        messageID: single ? MessageKey(configuration.messageID(of: rpc.messages[0])) : nil,
                        urgent: Self.isIDontWantOnly(rpc))
                    : nil
                last = (rpc, frame)
            }
            guard let frame else {
                tooLarge += 1
                continue
            }
            frames.append((frame, queue))
        }
        if tooLarge > 0 {
            // Gossip replies are asked for by peers: rate-limited.
            peerLog.log(.warning, key: "pubsub rpc over limit", "router produced RPCs over maxRPCSize; dropped",
                metadata: ["count": "\(tooLarge)"])
        }
        enqueue(frames, alreadyDropped: tooLarge)
    }

    private func enqueue(_ frames: [(OutboundFrame, OutboundQueue)], alreadyDropped: Int = 0) {
        var dropped = alreadyDropped
        var suppressed = 0
        for (frame, queue) in frames {
            switch queue.yield(frame) {
            case .queued: break
            case .dropped(let why):
                dropped += 1
                // A peer that reads slowly (or not at all) fills its queue: what does not fit is
                // dropped, never queued without bound.
                if why != .finished {
                    peerLog.log(
                        .info, key: "pubsub queue full", "pubsub RPC to peer dropped",
                        metadata: ["peer": "\(queue.peer.map { "\($0)" } ?? "?")", "reason": "\(why)"])
                }
            case .suppressed: suppressed += 1
            }
        }
        if dropped > 0 {
            state.withLockedValue { $0.counters.dropped += dropped }
            metrics.dropped.increment(by: dropped)
        }
        if suppressed > 0 { transmissions.withLockedValue { $0.suppressed += suppressed } }
    }

    /// An RPC carrying IDONTWANTs and nothing else: queued as urgent.
    static func isIDontWantOnly(_ rpc: PubSubRPC) -> Bool {
        guard rpc.messages.isEmpty, rpc.subscriptions.isEmpty, let control = rpc.control else { return false }
        return !control.idontwant.isEmpty && control.ihave.isEmpty && control.iwant.isEmpty && control.graft.isEmpty
            && control.prune.isEmpty
    }

    static func frame(_ rpc: [UInt8]) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(rpc.count + 5)
        _ = buffer.writeVarint(UInt64(rpc.count))
        buffer.writeBytes(rpc)
        return buffer
    }
}

/// A validator's time limit passed (the message is ignored).
private struct ValidatorTimedOut: Error {}

/// Reads a peer's stream to us on the stream's event loop: frames are decoded and handled as the
/// data arrives (from inside the connection's channel handlers: what the engine does there only
/// queues writes, resets streams and resumes tasks). All its state is used on that loop only.
///
/// The bytes the decoder holds (a frame in progress: up to `maxRPCSize` plus a read chunk) are
/// reserved in the service's memory account while this reader runs; a refusal resets the stream
/// and drops the peer.
final class LoopReader: Sendable {
    private struct State: Sendable {
        var decoder: RPCFrameDecoder
        var continuation: CheckedContinuation<PubSubService.LoopReadOutcome, Never>?
        var cancelled = false
        /// Bytes reserved for what the decoder holds.
        var reserved = 0
    }

    private let service: PubSubService
    private let stream: P2PStream
    private let peer: PeerID
    private let generation: UInt64
    private let state: NIOLoopBoundBox<State>

    /// `decoder`: where an earlier reader stopped (it may hold whole frames already).
    init(service: PubSubService, stream: P2PStream, peer: PeerID, generation: UInt64, decoder: RPCFrameDecoder) {
        self.service = service
        self.stream = stream
        self.peer = peer
        self.generation = generation
        state = NIOLoopBoundBox.makeBoxSendingValue(State(decoder: decoder), eventLoop: stream.eventLoop)
    }

    /// On the loop: handles the frames the decoder holds, then takes the stream's data;
    /// `continuation` gets the outcome.
    func start(_ continuation: CheckedContinuation<PubSubService.LoopReadOutcome, Never>) {
        if state.value.cancelled {
            continuation.resume(returning: ended("inbound stream failed: cancelled"))
            return
        }
        state.value.continuation = continuation
        guard accountBuffered(), handleDecodedFrames(), accountBuffered() else { return }
        stream.setReadHandler { [self] event in receive(event) }
    }

    /// Makes the reservation match what the decoder holds plus `incoming` (a chunk about to be
    /// appended: reserved before it is kept); false when the memory account refused (the reader
    /// has then ended, the stream is reset and the peer dropped).
    private func accountBuffered(incoming: Int = 0) -> Bool {
        guard state.value.continuation != nil else { return false }
        let buffered = state.value.decoder.bufferedBytes + incoming
        let reserved = state.value.reserved
        if buffered > reserved {
            do {
                try service.configuration.memory?.reserveMemory(buffered - reserved)
            } catch {
                stream.setReadHandler(nil)
                finish(.ended)
                service.memoryRefused(error, on: stream, from: peer, bytes: buffered)
                return false
            }
        } else if buffered < reserved {
            service.configuration.memory?.releaseMemory(reserved - buffered)
        }
        state.value.reserved = buffered
        return true
    }

    /// Handles the whole frames in the decoder; false when that ended this reader (a message
    /// waits for a validator, or the RPC was bad).
    private func handleDecodedFrames() -> Bool {
        do {
            while state.value.continuation != nil, let frame = try state.value.decoder.nextFrame() {
                let rpc = try PubSubRPC(decoding: frame)
                if let pending = service.handle(rpc, from: peer) {
                    // The serving task waits for the validator, then starts a new reader.
                    stream.setReadHandler(nil)
                    finish(.validating(pending, state.value.decoder))
                    return false
                }
            }
            return state.value.continuation != nil
        } catch {
            // Handed over first: the reset below reports a failure to the read handler.
            stream.setReadHandler(nil)
            finish(.ended)
            service.badRPC(error, on: stream, from: peer)
            return false
        }
    }

    /// On the loop: the serving task was cancelled.
    func cancel() {
        state.value.cancelled = true
        guard state.value.continuation != nil else { return }
        stream.setReadHandler(nil)
        finish(ended("inbound stream failed: cancelled"))
    }

    private func receive(_ event: P2PStream.ReadEvent) {
        guard state.value.continuation != nil else { return }  // handed over or finished
        switch event {
        case .data(let chunk):
            guard accountBuffered(incoming: chunk.readableBytes) else { return }
            state.value.decoder.append(chunk)
            _ = handleDecodedFrames() && accountBuffered()
        case .end:
            // The peer closed its stream: it has left pubsub.
            finish(ended("inbound stream closed"))
        case .failure(let error):
            finish(ended("inbound stream failed: \(error)"))
        }
    }

    private func ended(_ reason: String) -> PubSubService.LoopReadOutcome {
        service.inboundEnded(stream, of: peer, generation: generation, reason: reason)
        return .ended
    }

    private func finish(_ outcome: PubSubService.LoopReadOutcome) {
        // What the decoder holds is not this reader's any more (dropped, or handed to the
        // serving task while a validator runs: reading is paused then).
        if state.value.reserved > 0 {
            service.configuration.memory?.releaseMemory(state.value.reserved)
            state.value.reserved = 0
        }
        guard let continuation = state.value.continuation else { return }
        state.value.continuation = nil
        continuation.resume(returning: outcome)
    }
}
