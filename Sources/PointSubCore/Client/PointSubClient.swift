import Basics
import Multiformats
import Resources
import Identity
import LibP2P
import NIOConcurrencyHelpers
import NIOCore

/// Sends PointSub requests (docs/PROTOCOL.md) to peers and returns their replies.
///
/// Streams are pooled per (peer, protocol): after a complete exchange the stream goes back to
/// the pool and the next request to the same peer and protocol reuses it.
public final class PointSubClient: Sendable {
    /// A stream this client opened, pooled or in use.
    final class ClientStream: Sendable {
        let id: UInt64
        let stream: P2PStream
        let protocolID: String
        let created: ContinuousClock.Instant
        /// Mutable bookkeeping; the stream itself is used by one exchange at a time (it is
        /// either in the pool or checked out by exactly one `send`).
        let info: NIOLockedValueBox<(lastActive: ContinuousClock.Instant, requestCount: Int, idle: Bool)>

        init(id: UInt64, stream: P2PStream, protocolID: String) {
            let now = ContinuousClock.now
            self.id = id
            self.stream = stream
            self.protocolID = protocolID
            self.created = now
            self.info = NIOLockedValueBox((now, 0, false))
        }
    }

    struct PoolKey: Hashable {
        var peer: PeerID
        var protocolID: String
    }

    private struct State {
        var closed = false
        var idle: [PoolKey: [ClientStream]] = [:]
        var live: [UInt64: ClientStream] = [:]
        var nextID: UInt64 = 1
        var stats = Statistics()
        var cleanupTask: Task<Void, Never>?
    }

    /// Why the caller gave up on a request.
    enum GiveUp {
        case timeout
        case cancelled
    }

    /// The request's fate as far as a timeout or cancellation needs to know it; shared by the
    /// exchange (in the caller's task), the time-limit timer and the cancellation handler.
    private final class Progress: Sendable {
        private struct State {
            var stream: ClientStream?
            var requestSent = false
            var started: ContinuousClock.Instant?
            /// Set once, by whoever gives up first (the timer or the cancellation handler).
            var gaveUp: (reason: GiveUp, requestSent: Bool)?
        }

        private let state = NIOLockedValueBox(State())

        /// The exchange starts on `stream`; false if the caller gave up already.
        func use(_ stream: ClientStream) -> Bool {
            state.withLockedValue { s in
                guard s.gaveUp == nil else { return false }
                s.stream = stream
                s.requestSent = false
                s.started = .now
                return true
            }
        }

        /// Time since the last exchange started writing its request: the round trip once the
        /// reply is in, without connecting or opening the stream.
        var sinceExchangeStarted: Duration {
            state.withLockedValue { s in s.started.map { .now - $0 } ?? .zero }
        }

        func markSent() { state.withLockedValue { $0.requestSent = true } }

        /// The exchange on the current stream is over; true if the stream may go back to the pool.
        func finish() -> Bool {
            state.withLockedValue { s in
                s.stream = nil
                return s.gaveUp == nil
            }
        }

        /// A retryable failure: nothing was processed, so for a later timeout the request counts as unsent.
        func resetSent() { state.withLockedValue { $0.requestSent = false } }

        /// The caller gives up (first call wins): records why and whether the request had been
        /// sent, and resets the stream in use, which ends the exchange's pending read or write.
        /// Safe from any thread.
        func giveUp(_ reason: GiveUp) {
            let stream = state.withLockedValue { s -> ClientStream? in
                guard s.gaveUp == nil else { return nil }
                s.gaveUp = (reason, s.requestSent)
                defer { s.stream = nil }
                return s.stream
            }
            stream?.stream.reset()
        }

        var gaveUp: (reason: GiveUp, requestSent: Bool)? { state.withLockedValue { $0.gaveUp } }
    }

    /// The request's own time limit ran out while no stream was in use (opening one, or
    /// waiting to retry).
    private struct DeadlinePassed: Error {}

    /// A pooled stream died before the request could be answered without the server having
    /// processed it: send again on a fresh stream.
    private struct StaleStream: Error {
        var cause: any Error
    }

    public let host: P2PHost
    public let configuration: Configuration
    private let pool: BufferPool
    private let decompression: DecompressionLimiter
    private let state = NIOLockedValueBox(State())
    /// The server nodes per protocol for `sendClosest` (PointSubClient+Closest.swift).
    let nodeList: NodeList
    /// The protocols whose `sendClosest` nodes come from a source (e.g. the DHT) instead.
    let nodeSources = NIOLockedValueBox<[String: any ClosestNodeSource]>([:])

    /// Throws `.invalidConfiguration` for an unusable configuration.
    public convenience init(host: P2PHost, configuration: Configuration = .defaults) throws(PointSubError) {
        try self.init(host: host, configuration: configuration, nodeClock: { ContinuousClock.now })
    }

    /// `nodeClock`: the clock of the server nodes' cool-downs (tests pass a hand-driven one).
    init(host: P2PHost, configuration: Configuration, nodeClock: @escaping NodeList.Clock) throws(PointSubError) {
        try configuration.validate()
        self.host = host
        self.configuration = configuration
        self.nodeList = NodeList(localPeer: host.peerID, now: nodeClock)
        self.pool = BufferPool(
            maxBuffers: configuration.bufferPoolSize, maxBufferCapacity: configuration.bufferPoolMaxBufferSize)
        self.decompression = DecompressionLimiter(
            capacity: configuration.maxDecompressedBytesInFlight, wait: configuration.requestTimeout,
            memory: host.resourceManager.serviceScope("pointsub"))
        let interval = configuration.cleanupInterval
        let task = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                guard let self, !Task.isCancelled else { return }
                self.closeExpiredStreams()
            }
        }
        state.withLockedValue { $0.cleanupTask = task }
    }

    deinit {
        state.withLockedValue { $0.cleanupTask?.cancel() }
    }

    /// Whether `close()` was called.
    var isClosed: Bool { state.withLockedValue { $0.closed } }

    // MARK: - Sending

    /// Sends `request` to `peer` on `protocolID` and returns the response.
    ///
    /// `deadline` (default: `requestTimeout` from now) bounds the whole call, retries included; a
    /// deadline that has passed throws `.timeout(requestSent: false)` at once. Retryable
    /// failures (`PointSubError.isRetryable`) are retried up to `maxRetries` times after
    /// `retryInterval` ± jitter. An error message from the server is thrown as `.remote(code)`
    /// with the server's text, never returned as a response. Cancelling the calling task
    /// resets the stream and throws `.cancelled`.
    public func send(
        _ request: ByteBuffer, to peer: PeerID, protocol protocolID: String, deadline: Deadline? = nil
    ) async throws(PointSubError) -> ByteBuffer {
        try await send(
            request, to: peer, protocol: protocolID, deadline: deadline ?? .after(configuration.requestTimeout),
            maxRetries: configuration.maxRetries
        ).response
    }

    /// `send` with an explicit deadline and retry budget (`sendClosest` fails over to the next
    /// node instead of retrying the same one); also returns the time from writing the request to
    /// having the reply (not counting connecting and opening the stream).
    func send(
        _ request: ByteBuffer, to peer: PeerID, protocol protocolID: String, deadline: Deadline, maxRetries: Int
    ) async throws(PointSubError) -> (response: ByteBuffer, roundTrip: Duration) {
        let closed = state.withLockedValue { s in
            if !s.closed { s.stats.requests += 1 }
            return s.closed
        }
        guard !closed else { throw PointSubError(.clientClosed, "the client is closed") }
        do {
            let reply = try await send(
                request, key: PoolKey(peer: peer, protocolID: protocolID), deadline: deadline, maxRetries: maxRetries)
            state.withLockedValue { $0.stats.succeeded += 1 }
            return reply
        } catch {
            state.withLockedValue { $0.stats.failed += 1 }
            throw error
        }
    }

    /// `send` with plain bytes.
    public func send(
        _ request: [UInt8], to peer: PeerID, protocol protocolID: String, deadline: Deadline? = nil
    ) async throws(PointSubError) -> [UInt8] {
        let reply = try await send(ByteBuffer(bytes: request), to: peer, protocol: protocolID, deadline: deadline)
        return Array(reply.readableBytesView)
    }

    private func send(
        _ request: ByteBuffer, key: PoolKey, deadline: Deadline, maxRetries: Int
    ) async throws(PointSubError) -> (response: ByteBuffer, roundTrip: Duration) {
        guard !deadline.hasPassed else {
            throw PointSubError(.timeout(requestSent: false), "the deadline for a request to \(key.peer) had passed")
        }
        guard request.readableBytes <= configuration.maxBlockSize else {
            throw PointSubError(
                .messageTooLarge,
                "request of \(request.readableBytes) bytes exceeds the maximum block size of \(configuration.maxBlockSize)")
        }
        guard !Task.isCancelled else { throw PointSubError(.cancelled, "the send was cancelled") }
        let message = PointSubMessage.make(kind: .request, payload: request, compress: configuration.compression)
        if message.isCompressed { state.withLockedValue { $0.stats.compressedRequests += 1 } }
        let encoded = message.wireParts()
        let progress = Progress()
        // The exchange runs in the caller's task; the deadline is a timer on an event loop and
        // cancellation a handler, both of which reset the stream in use.
        let timer = deadline.schedule(on: host.eventLoopGroup.next()) { progress.giveUp(.timeout) }
        defer { timer.cancel() }
        do {
            let response = try await withTaskCancellationHandler {
                try await self.attempts(
                    encoded, key: key, progress: progress, maxRetries: maxRetries, deadline: deadline)
            } onCancel: {
                progress.giveUp(.cancelled)
            }
            return (response, progress.sinceExchangeStarted)
        } catch {
            if progress.gaveUp == nil {
                // The failure may have overtaken the timer or the cancellation handler.
                if Task.isCancelled {
                    progress.giveUp(.cancelled)
                } else if error is DeadlinePassed {
                    progress.giveUp(.timeout)
                }
            }
            switch progress.gaveUp {
            case (.timeout, let sent)?:
                throw PointSubError(.timeout(requestSent: sent), "no reply from \(key.peer) by the deadline")
            case (.cancelled, _)?:
                throw PointSubError(.cancelled, "the send was cancelled", cause: error)
            case nil:
                if let error = error as? PointSubError { throw error }
                progress.giveUp(.cancelled)
                throw PointSubError(.cancelled, "the send was cancelled", cause: error)
            }
        }
    }

    /// The first attempt and the retries.
    private func attempts(
        _ encoded: [ByteBuffer], key: PoolKey, progress: Progress, maxRetries: Int, deadline: Deadline
    ) async throws -> ByteBuffer {
        var retries = 0
        var freshStream = false
        while true {
            if progress.gaveUp != nil { throw CancellationError() }
            do {
                return try await exchange(
                    encoded, key: key, progress: progress, freshStream: freshStream, deadline: deadline)
            } catch let stale as StaleStream {
                // A pooled stream that failed before the request was fully written, or ended
                // without a reply byte (spec: the server processes no request after closing
                // its side), is retried once on a fresh stream without counting as a retry.
                guard !freshStream, progress.gaveUp == nil else { throw stale.cause }
                state.withLockedValue { $0.stats.staleStreamRetries += 1 }
                freshStream = true
            } catch let error as PointSubError {
                let closed = state.withLockedValue { $0.closed }
                guard error.isRetryable, retries < maxRetries, !closed, progress.gaveUp == nil else { throw error }
                retries += 1
                freshStream = false
                progress.resetSent()
                state.withLockedValue { $0.stats.retries += 1 }
                let remaining = deadline.remaining
                guard remaining > .zero else { throw DeadlinePassed() }
                try await Task.sleep(for: min(jittered(configuration.retryInterval), remaining))
            }
        }
    }

    private func jittered(_ interval: Duration) -> Duration {
        let jitter = configuration.retryJitter
        guard jitter > 0 else { return interval }
        return interval * (1 + Double.random(in: -jitter...jitter))
    }

    /// One request/reply exchange on a pooled or new stream.
    private func exchange(
        _ encoded: [ByteBuffer], key: PoolKey, progress: Progress, freshStream: Bool, deadline: Deadline
    ) async throws -> ByteBuffer {
        let pooled = freshStream ? nil : checkOut(key)
        let stream: ClientStream
        if let pooled { stream = pooled } else { stream = try await open(key, deadline: deadline) }
        let reused = pooled != nil
        guard progress.use(stream) else {
            drop(stream, reset: true)
            throw CancellationError()
        }
        var parser = PointSubMessageParser(
            maxBlockSize: configuration.maxBlockSize, accepting: [.response, .error], buffer: pool.take())
        defer { pool.give(parser.takeBuffer()) }
        let received: Received
        if stream.stream.readsOnEventLoop {
            received = await exchangeOnEventLoop(encoded, on: stream.stream, parser: &parser, progress: progress)
        } else {
            received = await writeThenRead(encoded, on: stream.stream, parser: &parser, progress: progress)
        }
        let reply: PointSubMessage
        switch received {
        case .writeFailed(let error):
            drop(stream, reset: true)
            if reused { throw StaleStream(cause: connectionFailed(sent: false, "writing the request failed", error)) }
            throw connectionFailed(sent: false, "writing the request failed", error)
        case .reply(let message?):
            reply = message
        case .reply(nil):
            drop(stream, reset: false)
            let error = connectionFailed(sent: true, "the server closed the stream without replying", nil)
            if reused { throw StaleStream(cause: error) }
            throw error
        case .readFailed(let error as PointSubError):
            // Spec "Limits": a reply over our limit (or any bad reply): reset and report.
            drop(stream, reset: true)
            if error.violation == .truncated {
                throw connectionFailed(sent: true, "the stream ended inside the reply", error)
            }
            throw error
        case .readFailed(let error as HostError) where error.code == .protocolNotSupported:
            // A lazily negotiated stream (identify said the peer serves the protocol) learns of a
            // refusal only here: the server never accepted the protocol, so nothing was processed.
            drop(stream, reset: true)
            throw PointSubError(.protocolNotSupported, "\(stream.stream.remotePeer) does not serve \(stream.protocolID)", cause: error)
        case .readFailed(let error):
            drop(stream, reset: true)
            throw connectionFailed(sent: true, "reading the reply failed", error)
        }
        guard parser.bufferedBytes == 0 else {
            drop(stream, reset: true)
            throw PointSubError(.protocolViolation, "the server sent bytes after its reply", violation: .unsolicitedData)
        }
        let payload: ByteBuffer
        do {
            // Same bounds as the server's (a server can send a zip bomb too): reserved before
            // inflating, large replies inflated off the event loops. The reservation covers the
            // inflating; the caller owns the reply afterwards.
            let decoded = try await decompression.decode(
                reply, maxBlockSize: configuration.maxBlockSize, eventLoop: stream.stream.eventLoop, deadline: deadline)
            decoded.reservation.release()
            payload = decoded.payload
        } catch let refused as DecompressionLimiter.Refused {
            drop(stream, reset: true)
            if refused.timedOut {
                throw PointSubError(.timeout(requestSent: true), refused.description)
            }
            throw connectionFailed(sent: true, refused.description, refused.cause)
        } catch {
            drop(stream, reset: true)
            throw error
        }
        if reply.isCompressed { state.withLockedValue { $0.stats.compressedResponses += 1 } }
        switch reply.kind {
        case .response:
            checkIn(stream, key: key, progress: progress)
            return payload
        case .error:
            let remote: RemoteErrorPayload
            do {
                remote = try RemoteErrorPayload(decoding: payload)
            } catch {
                drop(stream, reset: true)
                throw error
            }
            switch remote.code {
            case .handler, .timeout:
                // The server answered and waits for the next request: the stream stays usable.
                checkIn(stream, key: key, progress: progress)
            default:
                // busy, tooLarge, malformed, unavailable: the server ends the stream.
                drop(stream, reset: remote.code == .tooLarge || remote.code == .malformed)
            }
            throw PointSubError(.remote(remote.code), remote.message)
        case .request:
            preconditionFailure("the parser accepts only responses and errors")
        }
    }

    /// How writing a request and reading its reply ended.
    private enum Received: Sendable {
        /// The request could not be written (nothing was sent).
        case writeFailed(any Error)
        /// The reply, or nil: the server closed the stream cleanly before replying.
        case reply(PointSubMessage?)
        /// Reading the reply failed (bad bytes: a `PointSubError`; or the stream's error).
        case readFailed(any Error)
    }

    /// Writes the request, then reads the reply, from the task (a stream whose lazy negotiation
    /// is still to be checked: `read()` checks it).
    private func writeThenRead(
        _ encoded: [ByteBuffer], on stream: P2PStream, parser: inout PointSubMessageParser, progress: Progress
    ) async -> Received {
        do {
            try await stream.write(contentsOf: encoded)
        } catch {
            return .writeFailed(error)
        }
        progress.markSent()
        do {
            return .reply(try await readMessage(from: stream, into: &parser))
        } catch {
            return .readFailed(error)
        }
    }

    /// Writes the request and reads the reply on the stream's event loop (a read handler feeds
    /// the parser): the calling task suspends once, and is resumed once, per exchange. Resetting
    /// the stream (time limit, cancellation) ends it like a failed read.
    private func exchangeOnEventLoop(
        _ encoded: [ByteBuffer], on stream: P2PStream, parser: inout PointSubMessageParser, progress: Progress
    ) async -> Received {
        let loop = stream.eventLoop
        let given = parser
        let (received, back) = await withCheckedContinuation { continuation in
            let start: @Sendable () -> Void = {
                let reader = NIOLoopBound(ReplyReader(parser: given, continuation), eventLoop: loop)
                stream.writeOnEventLoop(contentsOf: encoded).assumeIsolated().whenComplete { outcome in
                    switch outcome {
                    case .success:
                        reader.value.written = true
                        progress.markSent()
                    case .failure(let error):
                        reader.value.finish(.writeFailed(P2PStream.mapped(error)))
                    }
                }
                guard !reader.value.finished else { return }
                stream.setReadHandler { event in
                    let reader = reader.value
                    switch event {
                    case .data(let bytes):
                        reader.parser.append(bytes)
                        do {
                            guard let message = try reader.parser.next() else { return }
                            stream.setReadHandler(nil)
                            reader.finish(.reply(message))
                        } catch {
                            stream.setReadHandler(nil)
                            reader.finish(.readFailed(error))
                        }
                    case .end:
                        do {
                            try reader.parser.finish()
                            reader.finish(.reply(nil))
                        } catch {
                            reader.finish(.readFailed(error))
                        }
                    case .failure(let error):
                        // Before the request was out, the stream failed under the write.
                        let error = P2PStream.mapped(error)
                        reader.finish(reader.written ? .readFailed(error) : .writeFailed(error))
                    }
                }
            }
            // Tasks may run on the event loops (the CLI installs them as the global executor).
            if loop.inEventLoop { start() } else { loop.execute(start) }
        }
        parser = back
        return received
    }

    /// The state of `exchangeOnEventLoop` on the stream's event loop.
    private final class ReplyReader {
        var parser: PointSubMessageParser
        /// The request was handed to the connection.
        var written = false
        private var continuation: CheckedContinuation<(Received, PointSubMessageParser), Never>?

        init(parser: PointSubMessageParser, _ continuation: CheckedContinuation<(Received, PointSubMessageParser), Never>) {
            self.parser = parser
            self.continuation = continuation
        }

        var finished: Bool { continuation == nil }

        /// Resumes the exchange (the first call only).
        func finish(_ received: Received) {
            guard let continuation else { return }
            self.continuation = nil
            continuation.resume(returning: (received, parser))
        }
    }

    private func connectionFailed(sent: Bool, _ text: String, _ cause: (any Error)?) -> PointSubError {
        PointSubError(.connectionFailed(requestSent: sent), text, cause: cause)
    }

    /// Connects if needed and opens a stream negotiated for the key's protocol, within
    /// `connectTimeout` and before `deadline` (throws `DeadlinePassed` if that comes first).
    private func open(_ key: PoolKey, deadline: Deadline) async throws -> ClientStream {
        let host = self.host
        let stream: P2PStream
        let connectTimeout = configuration.connectTimeout
        let connectDeadline = Deadline.after(connectTimeout)
        let callsDeadlineFirst = deadline < connectDeadline
        do {
            stream = try await withDeadline(
                connectDeadline.earlier(deadline), on: host.eventLoopGroup.next(),
                onTimeout: {
                    if callsDeadlineFirst { return DeadlinePassed() }
                    return PointSubError(
                        .timeout(requestSent: false), "opening a stream to \(key.peer) took longer than \(connectTimeout)")
                },
                discard: { $0.reset() }
            ) {
                try await host.newStream(to: key.peer, protocols: [key.protocolID])
            }
        } catch let error as DeadlinePassed {
            throw error
        } catch let error as PointSubError {
            throw error
        } catch let error as HostError where error.code == .protocolNotSupported {
            throw PointSubError(.protocolNotSupported, "\(key.peer) does not serve \(key.protocolID)", cause: error)
        } catch let error as CancellationError {
            throw error
        } catch {
            throw connectionFailed(sent: false, "could not open a stream to \(key.peer) for \(key.protocolID)", error)
        }
        return state.withLockedValue { s in
            defer { s.nextID += 1 }
            let client = ClientStream(id: s.nextID, stream: stream, protocolID: key.protocolID)
            s.live[client.id] = client
            s.stats.streamsOpened += 1
            return client
        }
    }

    // MARK: - Pool

    /// The most recently used idle stream for `key` that is still usable.
    private func checkOut(_ key: PoolKey) -> ClientStream? {
        let now = ContinuousClock.now
        let idleTimeout = configuration.idleTimeout
        let (found, expired) = state.withLockedValue { s -> (ClientStream?, [ClientStream]) in
            var expired: [ClientStream] = []
            defer { for stream in expired { s.live.removeValue(forKey: stream.id) } }
            while let candidate = s.idle[key]?.popLast() {
                let usable = candidate.info.withLockedValue { info -> Bool in
                    guard !candidate.stream.connection.isClosed, now - info.lastActive < idleTimeout else { return false }
                    info.idle = false
                    return true
                }
                if usable {
                    s.stats.streamsReused += 1
                    return (candidate, expired)
                }
                expired.append(candidate)
            }
            return (nil, expired)
        }
        for stream in expired { Task { await stream.stream.close() } }
        return found
    }

    /// After a complete exchange: back to the pool, or closed if the pool is full, the client
    /// closed, or the caller gave up.
    private func checkIn(_ stream: ClientStream, key: PoolKey, progress: Progress) {
        let wanted = progress.finish()
        let pooled = state.withLockedValue { s -> Bool in
            stream.info.withLockedValue { info in
                info.requestCount += 1
                info.lastActive = .now
            }
            guard wanted, !s.closed, (s.idle[key]?.count ?? 0) < configuration.maxIdleStreams else {
                s.live.removeValue(forKey: stream.id)
                return false
            }
            stream.info.withLockedValue { $0.idle = true }
            s.idle[key, default: []].append(stream)
            return true
        }
        if !pooled { Task { await stream.stream.close() } }
    }

    /// A stream that broke or that the server ended: never reused.
    private func drop(_ stream: ClientStream, reset: Bool) {
        state.withLockedValue { s in
            s.live.removeValue(forKey: stream.id)
            s.stats.streamsDropped += 1
        }
        if reset {
            stream.stream.reset()
        } else {
            Task { await stream.stream.close() }
        }
    }

    /// Closes pooled streams unused for `idleTimeout` (or whose connection ended).
    func closeExpiredStreams(now: ContinuousClock.Instant = .now) {
        let idleTimeout = configuration.idleTimeout
        let expired = state.withLockedValue { s -> [ClientStream] in
            var expired: [ClientStream] = []
            for (key, streams) in s.idle {
                let (keep, drop) = streams.partitioned { stream in
                    stream.info.withLockedValue { now - $0.lastActive < idleTimeout } && !stream.stream.connection.isClosed
                }
                s.idle[key] = keep.isEmpty ? nil : keep
                expired += drop
            }
            for stream in expired { s.live.removeValue(forKey: stream.id) }
            return expired
        }
        for stream in expired { Task { await stream.stream.close() } }
    }

    /// Closes the idle pooled streams to `peer` (every protocol), e.g. before closing the
    /// connection to it gracefully: a graceful close waits for open streams, and a pooled one
    /// would otherwise stay open until the deadline. Streams in use are not touched.
    public func closeIdleStreams(to peer: PeerID) async {
        let idle = state.withLockedValue { s -> [ClientStream] in
            var taken: [ClientStream] = []
            for key in s.idle.keys.filter({ $0.peer == peer }) {
                taken += s.idle.removeValue(forKey: key) ?? []
            }
            for stream in taken { s.live.removeValue(forKey: stream.id) }
            return taken
        }
        for stream in idle { await stream.stream.close() }
    }

    /// Closes the pooled streams; later sends throw `.clientClosed`. Streams in use are closed
    /// when their exchange ends.
    public func close() async {
        let (idle, cleanup) = state.withLockedValue { s in
            s.closed = true
            let idle = s.idle.values.flatMap { $0 }
            s.idle = [:]
            for stream in idle { s.live.removeValue(forKey: stream.id) }
            defer { s.cleanupTask = nil }
            return (idle, s.cleanupTask)
        }
        cleanup?.cancel()
        for stream in idle { await stream.stream.close() }
    }

    // MARK: - Introspection

    /// The streams this client has open (pooled or in use).
    public func connectionsInfo() -> [ConnectionInfo] {
        let live = state.withLockedValue { $0.live.values.sorted { $0.id < $1.id } }
        return live.map { stream in
            let info = stream.info.withLockedValue { $0 }
            // After the stream's info is read: an earlier `now` could precede its last activity.
            let now = ContinuousClock.now
            return ConnectionInfo(
                id: stream.id, remotePeer: stream.stream.remotePeer, protocolID: stream.protocolID,
                created: stream.created, lastActive: info.lastActive, idleTime: now - info.lastActive,
                requestCount: info.requestCount, isIdle: info.idle)
        }
    }

    /// Idle streams in the pool for (peer, protocol).
    public func pooledStreamCount(peer: PeerID, protocol protocolID: String) -> Int {
        state.withLockedValue { $0.idle[PoolKey(peer: peer, protocolID: protocolID)]?.count ?? 0 }
    }

    /// Identities (`ConnectionInfo.id`) of the idle streams pooled for (peer, protocol), for
    /// tests and diagnostics: the same ID before and after a request proves the stream was reused.
    public func pooledStreamIDs(peer: PeerID, protocol protocolID: String) -> [UInt64] {
        state.withLockedValue { $0.idle[PoolKey(peer: peer, protocolID: protocolID)]?.map(\.id) ?? [] }
    }

    public var statistics: Statistics { state.withLockedValue { $0.stats } }
    public var bufferPoolStatistics: BufferPool.Statistics { pool.statistics }
}

extension Array {
    fileprivate func partitioned(_ belongsInFirst: (Element) -> Bool) -> ([Element], [Element]) {
        var first: [Element] = []
        var second: [Element] = []
        for element in self {
            if belongsInFirst(element) { first.append(element) } else { second.append(element) }
        }
        return (first, second)
    }
}
