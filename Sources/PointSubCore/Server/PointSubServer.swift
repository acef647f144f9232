import Basics
import Multiformats
import Resources
import Identity
import LibP2P
import Logging
import NIOConcurrencyHelpers
import NIOCore
import ServiceLifecycle

/// Serves PointSub requests (docs/PROTOCOL.md) for one or more protocol IDs on a host.
///
/// Each inbound stream is one PointSub "connection": the server reads a request, runs the
/// handler (bounded by `handlerTimeout`), writes the reply, and waits for the next request on
/// the same stream until the client closes it, it has been idle too long, or it reached
/// `maxRequestsPerConnection`.
///
/// What a peer can make the server hold is bounded (issue 10): a request slot only while a
/// request is read, handled or answered (`connectionLimit`, at most `perPeerRequestShare` of it
/// per peer); idle streams by `maxIdleStreams`/`maxIdleStreamsPerPeer` and `idleTimeout`, with no
/// read buffer while idle; decompressed bytes by `maxDecompressedBytesInFlight` (reserved in the
/// host's `pointsub` service scope before inflating, large payloads inflated off the event loops).
/// Refusals are counted (`statistics`, `pointsub_*` metrics) and logged at a bounded rate with
/// the peer and its address.
public final class PointSubServer: Sendable {
    public typealias Handler = @Sendable (PointSubRequest) async throws -> ByteBuffer

    private enum Phase {
        /// Waiting for the first byte of the next request.
        case waiting
        /// Receiving, handling, or answering a request.
        case busy
    }

    private struct Record {
        let id: UInt64
        let stream: P2PStream
        let peer: PeerID
        let protocolID: String
        let created: ContinuousClock.Instant
        var lastActive: ContinuousClock.Instant
        var requestCount = 0
        var phase = Phase.waiting
        /// Set by the idle cleanup or `stop()` on a waiting stream: no further request is
        /// processed on it, and its pending read ends.
        var closing = false
        /// The task serving the current request (it runs the handler).
        var handlerTask: Task<Void, Never>?
        /// The stream failed while the handler ran (it may not have started yet).
        var handlerCancelled = false
        /// Holds a request slot of `limiter` (from a request's first bytes to its reply).
        var holdsSlot = false
        /// The wait for the next request's first bytes, while there is one.
        var idleWait: IdleWait?
    }

    private struct State {
        var protocols: Set<String> = []
        var records: [UInt64: Record] = [:]
        var nextID: UInt64 = 1
        var stopping = false
        var cleanupTask: Task<Void, Never>?
        var stats = Statistics()
        /// Streams in phase `waiting`, in total and per peer.
        var idleCount = 0
        var idleByPeer: [PeerID: Int] = [:]

        mutating func addIdle(_ peer: PeerID) {
            idleCount += 1
            idleByPeer[peer, default: 0] += 1
        }

        mutating func removeIdle(_ peer: PeerID) {
            idleCount -= 1
            let n = idleByPeer[peer] ?? 0
            idleByPeer[peer] = n > 1 ? n - 1 : nil
        }
    }

    /// Why a request is not read any further (thrown out of `readMessage`'s first-bytes hook).
    private struct Retired: Error {
        /// The server is stopping: answer `unavailable` (nothing was processed).
        var stopping: Bool
    }

    /// A request refused with `busy` at its first bytes (no slot for it).
    private struct NoSlot: Error {
        var reason: PointSubServerMetrics.Refusal
        var text: String
    }

    public let host: P2PHost
    public let configuration: Configuration
    private let limiter: ConnectionLimiter
    private let pool: BufferPool
    private let decompression: DecompressionLimiter
    private let metrics = PointSubServerMetrics()
    /// Refusals are a peer's to trigger at will: at most a few lines a second per kind.
    private let refusalLog: RateLimitedLogger
    private let state = NIOLockedValueBox(State())

    /// Throws `.invalidConfiguration` for an unusable configuration.
    public init(host: P2PHost, configuration: Configuration = .defaults) throws(PointSubError) {
        try configuration.validate()
        self.host = host
        self.configuration = configuration
        self.limiter = ConnectionLimiter(configuration.connectionLimit, perPeerShare: configuration.perPeerRequestShare)
        self.decompression = DecompressionLimiter(
            capacity: configuration.maxDecompressedBytesInFlight, wait: configuration.readTimeout,
            memory: host.resourceManager.serviceScope("pointsub"))
        self.refusalLog = RateLimitedLogger(host.configuration.logger, perSecond: 1, burst: 10)
        self.pool = BufferPool(
            maxBuffers: configuration.bufferPoolSize, maxBufferCapacity: configuration.bufferPoolMaxBufferSize)
    }

    deinit {
        state.withLockedValue { $0.cleanupTask?.cancel() }
    }

    // MARK: - Serving

    /// Serves `protocolID` with `handler`. Throws `.alreadyServing` if this server or another
    /// handler on the host serves it already, `.serverStopped` after `stop()`.
    public func start(_ protocolID: String, handler: @escaping Handler) throws(PointSubError) {
        let refusal = state.withLockedValue { s -> PointSubError? in
            guard !s.stopping else { return PointSubError(.serverStopped, "the server is stopped") }
            guard !s.protocols.contains(protocolID) else {
                return PointSubError(.alreadyServing, "\(protocolID) is already served")
            }
            s.protocols.insert(protocolID)
            return nil
        }
        if let refusal { throw refusal }
        do {
            try host.setEventLoopStreamHandler(protocolID) { [weak self] stream in
                guard let self else { return stream.reset() }
                self.accept(stream, protocolID: protocolID, handler: handler)
            }
        } catch {
            _ = state.withLockedValue { $0.protocols.remove(protocolID) }
            throw PointSubError(.alreadyServing, "the host already has a handler for \(protocolID)", cause: error)
        }
        startCleanup()
    }

    /// `start` with a handler on plain bytes.
    public func start(
        _ protocolID: String, handler: @escaping @Sendable ([UInt8]) async throws -> [UInt8]
    ) throws(PointSubError) {
        try start(protocolID) { (request: PointSubRequest) in
            ByteBuffer(bytes: try await handler(Array(request.payload.readableBytesView)))
        }
    }

    /// Stops accepting (removes the stream handlers; streams waiting for a request are closed),
    /// lets requests in progress finish for up to `gracePeriod`, then resets what is left and
    /// cancels those handlers. A request that arrives meanwhile gets `unavailable`.
    public func stop(gracePeriod: Duration = .seconds(5)) async {
        let (protocols, waiting, cleanup) = state.withLockedValue { s in
            let protocols = s.stopping ? [] : Array(s.protocols)
            s.stopping = true
            defer { s.cleanupTask = nil }
            return (protocols, Self.retireWaiting(&s) { _ in true }, s.cleanupTask)
        }
        cleanup?.cancel()
        for protocolID in protocols { host.removeStreamHandler(protocolID) }
        for (id, stream) in waiting {
            removeRecord(id)
            await stream.close()
        }
        let deadline = Deadline.after(gracePeriod)
        while !deadline.hasPassed, state.withLockedValue({ !$0.records.isEmpty }) {
            try? await Task.sleep(for: .milliseconds(5))
        }
        let left = state.withLockedValue { Array($0.records.values) }
        for record in left {
            record.handlerTask?.cancel()
            record.stream.reset()
        }
    }

    /// The live streams.
    public func connectionsInfo() -> [ConnectionInfo] {
        state.withLockedValue { s in
            // Read under the lock: a stream marked active after an earlier `now` would show a
            // negative idle time.
            let now = ContinuousClock.now
            return s.records.values.sorted { $0.id < $1.id }.map { r in
                ConnectionInfo(
                    id: r.id, remotePeer: r.stream.remotePeer, protocolID: r.protocolID, created: r.created,
                    lastActive: r.lastActive, idleTime: now - r.lastActive, requestCount: r.requestCount,
                    isIdle: r.phase == .waiting)
            }
        }
    }

    /// Resets every live stream, as a broken network would (for tests).
    func debugResetStreams() {
        for record in state.withLockedValue({ Array($0.records.values) }) { record.stream.reset() }
    }

    public var statistics: Statistics { state.withLockedValue { $0.stats } }
    /// The current (adaptive) limit on concurrent requests.
    public var connectionLimit: Int { limiter.limit }
    /// The requests one peer may have in progress at once now.
    public var perPeerRequestLimit: Int { limiter.perPeerLimit }
    /// Requests being read, handled or answered now.
    public var requestsInProgress: Int { limiter.active }
    /// Decompressed request bytes reserved now (bounded by `maxDecompressedBytesInFlight`).
    public var decompressedBytesInFlight: Int { decompression.inFlight }
    public var bufferPoolStatistics: BufferPool.Statistics { pool.statistics }

    // MARK: - Idle cleanup

    private func startCleanup() {
        state.withLockedValue { s in
            guard s.cleanupTask == nil, !s.stopping else { return }
            let interval = configuration.cleanupInterval
            // New streams must send their first request within `readTimeout`; a sweep enforces
            // it (at most a quarter of the timeout late) instead of a timer per idle stream.
            let tick = min(interval, max(configuration.readTimeout / 4, .milliseconds(10)))
            s.cleanupTask = Task { [weak self] in
                var lastCleanup = ContinuousClock.now
                while !Task.isCancelled {
                    try? await Task.sleep(for: tick)
                    guard let self, !Task.isCancelled else { return }
                    self.resetSilentStreams()
                    if ContinuousClock.now - lastCleanup >= interval {
                        lastCleanup = .now
                        await self.closeIdleStreams()
                    }
                }
            }
        }
    }

    /// Resets the new streams that have not sent a byte within `readTimeout`.
    func resetSilentStreams(now: ContinuousClock.Instant = .now) {
        let readTimeout = configuration.readTimeout
        let silent = state.withLockedValue { s -> [(UInt64, P2PStream)] in
            var streams: [(UInt64, P2PStream)] = []
            for (id, record) in s.records
            where record.phase == .waiting && !record.closing && record.requestCount == 0
                && now - record.created >= readTimeout
            {
                if let wait = record.idleWait, !wait.cancel() { continue }  // bytes just arrived
                s.records[id]!.closing = true
                streams.append((id, record.stream))
            }
            s.stats.readTimeouts += streams.count
            return streams
        }
        for (id, stream) in silent {
            removeRecord(id)
            refused(.readTimeout, result: nil, stream, "no request within the read timeout of \(readTimeout)")
            stream.reset()
        }
    }

    /// Closes the streams that waited for a request for `idleTimeout` or longer; returns how many.
    @discardableResult
    func closeIdleStreams(now: ContinuousClock.Instant = .now) async -> Int {
        let idleTimeout = configuration.idleTimeout
        let idle = state.withLockedValue { s in
            let streams = Self.retireWaiting(&s) { now - $0.lastActive >= idleTimeout }
            s.stats.idleStreamsClosed += streams.count
            return streams
        }
        // close(): FIN after the last reply, and the pending read ends (spec "Streams": the
        // server may close its side between messages).
        for (id, stream) in idle {
            removeRecord(id)
            await stream.close()
        }
        return idle.count
    }

    /// Marks the waiting streams that match as closing, ends their waits (the caller, outside the
    /// lock, removes their records and closes them) and returns them.
    private static func retireWaiting(_ s: inout State, where matches: (Record) -> Bool) -> [(UInt64, P2PStream)] {
        var streams: [(UInt64, P2PStream)] = []
        for (id, record) in s.records where record.phase == .waiting && !record.closing && matches(record) {
            // close() drops the stream's read handler without a word: end the wait first. If
            // the wait ended already, a request's first bytes just arrived: not idle.
            if let wait = record.idleWait, !wait.cancel() { continue }
            s.records[id]!.closing = true
            streams.append((id, record.stream))
        }
        return streams
    }

    // MARK: - One stream

    private enum Admission {
        case admitted(UInt64)
        case stopping
        case tooManyIdle(String)
    }

    // Memory per idle stream (issue 10: 17.5 KiB per idle stream before, heap growth measured
    // in OpenInternetTests). An idle stream has no task: the host hands it over on the event loop
    // (`setEventLoopStreamHandler`), and it waits for its next request on a read handler there.
    // It holds no read buffer, no timer (the first-request timeout is enforced by the cleanup's
    // sweep) and no watchdog. A task is started at a request's first bytes and ends when it has
    // handed the reply to the event loop, which writes it and waits for the next request (issue
    // 11: one task hop per request on the server); the large frames (`serveRequest`, `receive`,
    // `respond`: the request, its payload, the reply) exist only while a request is handled. Measured: a task per idle
    // stream (awaiting its next bytes) cost ~7 KiB of the 7.5 KiB an idle stream took.

    /// A new stream, handed over by the host: admitted (then it waits for its first request) or
    /// refused.
    private func accept(_ stream: P2PStream, protocolID: String, handler: @escaping Handler) {
        switch admit(stream, protocolID: protocolID) {
        case .admitted(let id):
            awaitRequest(stream, id: id, handler: handler)
        case .stopping:
            refused(.unavailable, result: .unavailable, stream, "the server is shutting down")
            host.spawn { [self] in await refuseNewStream(stream, .unavailable, "the server is shutting down") }
        case .tooManyIdle(let text):
            refused(.idleStreams, result: .busy, stream, text)
            host.spawn { [self] in await refuseNewStream(stream, .busy, text) }
        }
    }

    /// Answers a stream that was not admitted, and closes it.
    private func refuseNewStream(_ stream: P2PStream, _ code: RemoteErrorCode, _ text: String) async {
        let watchdog = StreamWatchdog(stream: stream, eventLoop: stream.eventLoop)
        await refuse(stream, code, text, watchdog: watchdog)
        await stream.close()
    }

    /// Waits on the stream's event loop (a read handler, no task) for the first bytes of the next
    /// request; they start a task that reads, handles and answers it (`serveRequest`).
    private func awaitRequest(_ stream: P2PStream, id: UInt64, handler: @escaping Handler) {
        let wait = IdleWait { [weak self] outcome in
            guard let self else { return stream.reset() }
            switch outcome {
            case .data(let bytes):
                self.startServing(stream, id: id, first: bytes, handler: handler)
            case .end:
                // The client closed its side: we close ours.
                self.removeRecord(id)
                self.host.spawn { await stream.close() }
            case .ended:
                // Failed or reset. (Retired by the cleanup or stop(): they close it, and their
                // `cancel()` does not come here; nor does a wait whose record they removed.)
                let retired = self.state.withLockedValue { $0.records[id]?.closing ?? true }
                if !retired { stream.reset() }
                self.removeRecord(id)
            }
        }
        let registered = state.withLockedValue { s -> Bool in
            guard let record = s.records[id], !record.closing else { return false }
            s.records[id]!.idleWait = wait
            return true
        }
        guard registered else {
            wait.finish(.ended)
            return
        }
        let install: @Sendable () -> Void = {
            guard !wait.isFinished else { return }
            stream.setReadHandler { event in
                switch event {
                case .data(let bytes):
                    guard bytes.readableBytes > 0 else { return }
                    // Given back to read(): the request is read in the serving task.
                    stream.setReadHandler(nil)
                    if !wait.finish(.data(bytes)) { stream.reset() }  // retired meanwhile
                case .end: wait.finish(.end)
                case .failure: wait.finish(.ended)
                }
            }
        }
        if stream.eventLoop.inEventLoop { install() } else { stream.eventLoop.execute(install) }
    }

    /// Starts the task that serves the request whose first bytes are `first` (`serveRequest`);
    /// it can be cancelled through the record (the client went away, the handler's time limit).
    private func startServing(_ stream: P2PStream, id: UInt64, first: ByteBuffer, handler: @escaping Handler) {
        let task = host.spawn { [self] in await serveRequest(stream, id: id, first: first, handler: handler) }
        let cancelled = state.withLockedValue { s -> Bool in
            s.records[id]?.handlerTask = task
            return s.records[id]?.handlerCancelled ?? false
        }
        if cancelled { task.cancel() }
    }

    /// Reads and handles one request (`first`: its first bytes, taken by the idle wait or left
    /// over from the previous request), then hands the reply to the stream's event loop, which
    /// writes it and, once it is within the peer's window, waits for the next request
    /// (`answer`): the task ends without waiting for the write.
    private func serveRequest(_ stream: P2PStream, id: UInt64, first: ByteBuffer, handler: @escaping Handler) async {
        state.withLockedValue { $0.records[id]?.idleWait = nil }
        var parser = PointSubMessageParser(maxBlockSize: configuration.maxBlockSize, accepting: [.request])
        defer { returnBuffer(&parser) }
        let watchdog = StreamWatchdog(stream: stream, eventLoop: stream.eventLoop)
        guard let (message, started, reserved) = await receive(
            stream, id: id, parser: &parser, first: first, watchdog: watchdog)
        else { return await endStream(stream, id: id) }
        // A pipelined request's first bytes: served after this reply is written.
        var leftover: ByteBuffer?
        if parser.bufferedBytes > 0 {
            var rest = parser.takeBuffer()
            leftover = rest.readSlice(length: rest.readableBytes)
        }
        // A large request's payload stays reserved until its reply is written.
        let releaseRequest: @Sendable () -> Void = {
            if reserved > 0 { stream.resourceScope?.releaseMemory(reserved) }
        }
        let answering = Answering(
            stream: stream, id: id, handler: handler, watchdog: watchdog, started: started, leftover: leftover)
        guard await respond(message, answering, releaseRequest: releaseRequest) else {
            releaseRequest()
            return await endStream(stream, id: id)
        }
    }

    /// The stream ends after a request that was not answered (or was refused): its record goes.
    private func endStream(_ stream: P2PStream, id: UInt64) async {
        removeRecord(id)
        await stream.close()  // after a reset: nothing happens
    }

    /// What answering a request needs (from the serving task or the handler's time limit).
    private struct Answering: Sendable {
        let stream: P2PStream
        let id: UInt64
        let handler: Handler
        let watchdog: StreamWatchdog
        let started: ContinuousClock.Instant
        /// Bytes of the next (pipelined) request, read with this one.
        let leftover: ByteBuffer?
    }

    /// A request's one reply: sent by the serving task (the handler's result) or by the handler's
    /// time limit (`.timeout`), whichever claims it first; the other drops its outcome.
    private final class ReplyClaim: Sendable {
        private let claimed = NIOLockedValueBox(false)

        /// Whether this call claimed the reply (true once).
        func claim() -> Bool {
            claimed.withLockedValue { claimed in
                defer { claimed = true }
                return !claimed
            }
        }
    }

    /// From any thread: writes the reply on the stream's event loop and, once it is within the
    /// peer's window, gives the request slot back and waits for the next request (or serves the
    /// pipelined one, or ends the stream). `release` runs when the reply is written or failed.
    private func answer(
        _ reply: PointSubMessage, result: PointSubServerMetrics.Result, _ answering: Answering,
        release: @escaping @Sendable () -> Void
    ) {
        let stream = answering.stream
        let id = answering.id
        answering.stream.setFailureWatcher(nil)
        guard !clientWentAway(id) else {
            release()
            stream.reset()  // the client is gone: nobody to answer
            removeRecord(id)
            return
        }
        // Counted before the write so the client never sees a reply the counters miss.
        let more = countRequest(id, compressedReply: reply.isCompressed)
        metrics.count(result)
        let parts = reply.wireParts()
        metrics.bytesOut.increment(by: Int64(parts.reduce(0) { $0 + $1.readableBytes }))
        let write: @Sendable () -> Void = { [self] in
            let future = stream.writeOnEventLoop(contentsOf: parts)
            var done = false
            future.assumeIsolated().whenComplete { [self] outcome in
                done = true
                answering.watchdog.disarm()
                release()
                switch outcome {
                case .failure:
                    stream.reset()
                    removeRecord(id)
                case .success:
                    metrics.latency.record(duration: ContinuousClock.now - answering.started)
                    afterReply(answering, more: more)
                }
            }
            // Within the window already (the usual case): no timer needed.
            if !done { answering.watchdog.arm(configuration.writeTimeout) }
        }
        if stream.eventLoop.inEventLoop { write() } else { stream.eventLoop.execute(write) }
    }

    /// On the event loop, the reply written: the stream waits for the next request (or serves
    /// the pipelined one) unless it ends here.
    private func afterReply(_ answering: Answering, more: Bool) {
        let (stream, id) = (answering.stream, answering.id)
        let after: AfterReply = more ? finishRequest(id) : .end
        switch after {
        case .wait:
            if let leftover = answering.leftover {
                startServing(stream, id: id, first: leftover, handler: answering.handler)
            } else {
                awaitRequest(stream, id: id, handler: answering.handler)
            }
        case .end:
            removeRecord(id)
            host.spawn { await stream.close() }
        case .tooManyIdle(let text):
            refused(.idleStreams, result: nil, stream, text)
            removeRecord(id)
            host.spawn { await stream.close() }
        }
    }

    /// Registers a new stream (idle until its first request's bytes arrive: it holds no request
    /// slot, and counts against the idle bounds), or refuses it.
    private func admit(_ stream: P2PStream, protocolID: String) -> Admission {
        let peer = stream.remotePeer
        let now = ContinuousClock.now
        return state.withLockedValue { s -> Admission in
            if s.stopping {
                s.stats.unavailableRefusals += 1
                return .stopping
            }
            let ofPeer = s.idleByPeer[peer] ?? 0
            if s.idleCount >= configuration.maxIdleStreams || ofPeer >= configuration.maxIdleStreamsPerPeer {
                s.stats.idleStreamRefusals += 1
                s.stats.busyRefusals += 1
                return .tooManyIdle(
                    s.idleCount >= configuration.maxIdleStreams
                        ? "the server holds its limit of \(configuration.maxIdleStreams) idle streams"
                        : "the peer holds its limit of \(configuration.maxIdleStreamsPerPeer) idle streams")
            }
            let id = s.nextID
            s.nextID += 1
            s.records[id] = Record(
                id: id, stream: stream, peer: peer, protocolID: protocolID, created: now, lastActive: now)
            s.addIdle(peer)
            s.stats.streamsAccepted += 1
            return .admitted(id)
        }
    }

    /// Waits for the next request and reads it (taking a request slot at its first bytes).
    /// nil: the stream ends (the client closed it, or it was refused, reset or retired).
    private func receive(
        _ stream: P2PStream, id: UInt64, parser: inout PointSubMessageParser, first: ByteBuffer?,
        watchdog: StreamWatchdog
    ) async -> (PointSubMessage, ContinuousClock.Instant, reserved: Int)? {
        var started = ContinuousClock.now
        let message: PointSubMessage?
        // A payload of `reservationThreshold` bytes or more is reserved in the stream's resource
        // scope as soon as its header announces it, before it is buffered; given back here unless
        // the request is handed on (then after its reply).
        var reserved = 0
        var handedOn = false
        defer { if !handedOn, reserved > 0 { stream.resourceScope?.releaseMemory(reserved) } }
        do {
            message = try await readMessage(
                from: stream, into: &parser, first: first,
                firstBytes: { parser in
                    try beginRequest(id)
                    started = .now
                    parser.adoptStorage(pool.take())
                },
                // Only a request that does not arrive in one piece needs the timer.
                incomplete: { watchdog.armIfIdle(configuration.readTimeout) },
                announced: { length in
                    guard length >= Self.reservationThreshold, let scope = stream.resourceScope else { return }
                    do {
                        try scope.reserveMemory(length)
                    } catch {
                        throw NoSlot(reason: .memory, text: "no memory for a request of \(length) bytes (\(error))")
                    }
                    reserved = length
                })
        } catch let error as PointSubError {
            watchdog.disarm()
            await refuseBadRequest(stream, error, watchdog: watchdog)
            return nil
        } catch let retired as Retired {
            watchdog.disarm()
            if retired.stopping {
                state.withLockedValue { $0.stats.unavailableRefusals += 1 }
                refused(.unavailable, result: .unavailable, stream, "the server is shutting down")
                await refuse(stream, .unavailable, "the server is shutting down", watchdog: watchdog)
            }
            return nil
        } catch let noSlot as NoSlot {
            watchdog.disarm()
            refused(noSlot.reason, result: .busy, stream, noSlot.text)
            await refuseAndDrain(stream, .busy, noSlot.text, watchdog: watchdog)
            return nil
        } catch {
            // Closed by the cleanup or stop(): our FIN is out, the client sees a clean end
            // (spec: it may resend elsewhere). Otherwise reset by the client, or the read
            // timeout fired (the watchdog reset the stream): nothing to answer.
            if watchdog.fired {
                state.withLockedValue { $0.stats.readTimeouts += 1 }
                refused(
                    .readTimeout, result: nil, stream,
                    "no complete request within the read timeout of \(configuration.readTimeout)")
            }
            if !isClosing(id) { stream.reset() }
            return nil
        }
        watchdog.disarm()
        guard let message else { return nil }  // the client closed its side: we close ours
        handedOn = true
        return (message, started, reserved)
    }

    /// Request payloads from this size on are reserved in the resource manager before they are
    /// buffered (smaller ones are bounded by the request slots alone).
    static let reservationThreshold = 64 * 1024

    /// Decompresses and handles one request, and hands its reply on (`answer`). false: the
    /// stream ends (refused, or nobody to answer); then `releaseRequest` is the caller's to run.
    private func respond(
        _ message: PointSubMessage, _ answering: Answering, releaseRequest: @escaping @Sendable () -> Void
    ) async -> Bool {
        let (stream, id, watchdog) = (answering.stream, answering.id, answering.watchdog)
        metrics.bytesIn.increment(by: Int64(message.headerLength + message.payload.readableBytes))
        let loop = stream.eventLoop
        let payload: ByteBuffer
        let reservation: DecompressionLimiter.Reservation
        do {
            (payload, reservation) = try await decompression.decode(
                message, maxBlockSize: configuration.maxBlockSize, eventLoop: loop)
        } catch let error as DecompressionLimiter.Refused {
            state.withLockedValue { $0.stats.busyRefusals += 1 }
            refused(.decompression, result: .busy, stream, error.description)
            await refuse(stream, .busy, "the server has no room to decompress the request", watchdog: watchdog)
            return false
        } catch {
            await refuseBadRequest(stream, error, watchdog: watchdog)
            return false
        }
        // The decompressed request counts against the bound until its reply is written.
        let release: @Sendable () -> Void = {
            reservation.release()
            releaseRequest()
        }
        if message.isCompressed {
            state.withLockedValue { $0.stats.compressedRequests += 1 }
            metrics.compressedBytesIn.increment(by: Int64(message.payload.readableBytes))
            metrics.decompressedBytesIn.increment(by: Int64(payload.readableBytes))
            metrics.decompressedInFlight.record(decompression.inFlight)
        }

        let request = PointSubRequest(payload: payload, peer: stream.remotePeer, protocolID: stream.protocolID)
        // The handler runs in this task. Its time limit is a timer on the stream's event loop:
        // if it fires first, it answers `.timeout` itself and cancels this task, which is not
        // waited for (a handler may ignore cancellation); the handler's late result is dropped.
        // If the client resets the stream meanwhile (its call was cancelled or timed out), the
        // failure watcher cancels this task: no read needs to wait on the stream for that.
        let claim = ReplyClaim()
        let timeout = configuration.handlerTimeout
        let timer = Deadline.after(timeout).schedule(on: stream.eventLoop) { [self] in
            guard claim.claim() else { return }
            state.withLockedValue { s -> Task<Void, Never>? in
                s.stats.handlerTimeouts += 1
                return s.records[id]?.handlerTask
            }?.cancel()
            answer(
                .error(.timeout, "the handler did not finish within \(timeout)"), result: .timeout, answering,
                release: release)
        }
        stream.setFailureWatcher { [weak self] in self?.cancelHandler(id) }
        let outcome: Result<ByteBuffer, any Error>
        do {
            outcome = .success(try await answering.handler(request))
        } catch {
            outcome = .failure(error)
        }
        guard claim.claim() else { return true }  // the time limit answered
        timer.cancel()
        if Task.isCancelled, !clientWentAway(id) {
            // Our own task was cancelled (host shutdown, or stop() gave up on the request).
            stream.setFailureWatcher(nil)
            reservation.release()
            stream.reset()
            return false
        }
        let reply: PointSubMessage
        let result: PointSubServerMetrics.Result
        switch outcome {
        case .success(let body) where body.readableBytes <= configuration.maxBlockSize:
            (reply, result) = (.make(kind: .response, payload: body, compress: configuration.compression), .ok)
        case .success(let body):
            state.withLockedValue { $0.stats.handlerErrors += 1 }
            let text =
                "the response of \(body.readableBytes) bytes exceeds the server's maximum block size of \(configuration.maxBlockSize)"
            (reply, result) = (.error(.handler, text), .handlerError)
        case .failure(let error):
            // Spec: a handler error reaches the client as an error message of code `handler`
            // carrying the error's text.
            state.withLockedValue { $0.stats.handlerErrors += 1 }
            (reply, result) = (.error(.handler, "\(error)"), .handlerError)
        }
        answer(reply, result: result, answering, release: release)
        return true
    }

    /// Gives the parser's storage back to the pool (if it has any).
    private func returnBuffer(_ parser: inout PointSubMessageParser) {
        if parser.hasStorage { pool.give(parser.takeBuffer()) }
    }

    /// Drops the record, with its idle count or request slot.
    private func removeRecord(_ id: UInt64) {
        let slot = state.withLockedValue { s -> PeerID? in
            guard let record = s.records.removeValue(forKey: id) else { return nil }
            if record.phase == .waiting { s.removeIdle(record.peer) }
            return record.holdsSlot ? record.peer : nil
        }
        if let slot {
            limiter.release(for: slot)
            metrics.inFlight.record(limiter.active)
        }
    }

    /// Counts and logs (at a bounded rate, with the peer and its address) a refusal.
    private func refused(
        _ reason: PointSubServerMetrics.Refusal, result: PointSubServerMetrics.Result?, _ stream: P2PStream,
        _ text: String
    ) {
        metrics.refused(reason)
        if let result { metrics.count(result) }
        refusalLog.log(
            .info, key: "pointsub refusal \(reason.rawValue)", "PointSub request refused",
            metadata: [
                "reason": .string(reason.rawValue), "peer": .stringConvertible(stream.remotePeer),
                "address": .stringConvertible(stream.connection.remoteAddress), "protocol": .string(stream.protocolID),
                "detail": .string(text),
            ])
    }

    /// First bytes of a request arrived: the stream is busy now (it takes a request slot),
    /// unless it was retired meanwhile or no slot is free.
    private func beginRequest(_ id: UInt64) throws {
        try state.withLockedValue { s in
            guard let record = s.records[id] else { throw Retired(stopping: false) }
            if record.closing { throw Retired(stopping: false) }
            if s.stopping { throw Retired(stopping: true) }
            switch limiter.tryAcquire(for: record.peer) {
            case .admitted: break
            case .atLimit:
                s.stats.busyRefusals += 1
                throw NoSlot(reason: .busy, text: "the server is at its limit of \(limiter.limit) requests in progress")
            case .atPeerLimit:
                s.stats.busyRefusals += 1
                s.stats.perPeerRefusals += 1
                throw NoSlot(
                    reason: .peerBusy, text: "the peer is at its limit of \(limiter.perPeerLimit) requests in progress")
            }
            s.removeIdle(record.peer)
            s.records[id]!.holdsSlot = true
            s.records[id]!.phase = .busy
            s.records[id]!.lastActive = .now
        }
        metrics.inFlight.record(limiter.active)
    }

    private func isClosing(_ id: UInt64) -> Bool {
        state.withLockedValue { $0.records[id]?.closing ?? false }
    }

    private func cancelHandler(_ id: UInt64) {
        state.withLockedValue { s -> Task<Void, Never>? in
            s.records[id]?.handlerCancelled = true
            return s.records[id]?.handlerTask
        }?.cancel()
    }

    private func clientWentAway(_ id: UInt64) -> Bool {
        state.withLockedValue { $0.records[id]?.handlerCancelled ?? true }
    }

    /// The reply is about to go out. Returns false when the stream ends after it
    /// (`maxRequestsPerConnection` reached).
    private func countRequest(_ id: UInt64, compressedReply: Bool) -> Bool {
        state.withLockedValue { s in
            s.stats.requestsHandled += 1
            if compressedReply { s.stats.compressedResponses += 1 }
            guard let count = s.records[id]?.requestCount else { return false }
            s.records[id]!.requestCount = count + 1
            if let max = configuration.maxRequestsPerConnection, count + 1 >= max {
                s.stats.streamsRetired += 1
                return false
            }
            return true
        }
    }

    private enum AfterReply {
        /// Wait for the next request.
        case wait
        /// The server is stopping (or the record is gone): end the stream.
        case end
        /// The idle bounds are reached: close the stream.
        case tooManyIdle(String)
    }

    /// The reply went out: the slot is given back, and the stream waits for the next request
    /// unless the server is stopping or the idle bounds are reached.
    private func finishRequest(_ id: UInt64) -> AfterReply {
        let (after, slot) = state.withLockedValue { s -> (AfterReply, PeerID?) in
            guard let record = s.records[id] else { return (.end, nil) }
            let slot = record.holdsSlot ? record.peer : nil
            s.records[id]!.holdsSlot = false
            s.records[id]!.lastActive = .now
            s.records[id]!.handlerTask = nil
            s.records[id]!.handlerCancelled = false
            guard !s.stopping else { return (.end, slot) }
            let ofPeer = s.idleByPeer[record.peer] ?? 0
            if s.idleCount >= configuration.maxIdleStreams || ofPeer >= configuration.maxIdleStreamsPerPeer {
                s.stats.idleStreamRefusals += 1
                s.records[id]!.closing = true
                return (.tooManyIdle("idle stream limit reached: the stream is closed after its reply"), slot)
            }
            s.records[id]!.phase = .waiting
            s.addIdle(record.peer)
            return (.wait, slot)
        }
        if let slot {
            limiter.release(for: slot)
            metrics.inFlight.record(limiter.active)
        }
        return after
    }

    /// Answers a request that broke the protocol or the size limit, then drains what the client
    /// still sends for a short while and resets the stream.
    private func refuseBadRequest(_ stream: P2PStream, _ error: any Error, watchdog: StreamWatchdog) async {
        guard let error = error as? PointSubError else { return stream.reset() }
        if error.violation == .truncated {
            // The client ended its side inside a request: a connection error, nothing to answer.
            return stream.reset()
        }
        let code: RemoteErrorCode = error.code == .messageTooLarge ? .tooLarge : .malformed
        state.withLockedValue { s in
            if code == .tooLarge { s.stats.tooLargeRefusals += 1 } else { s.stats.malformedRefusals += 1 }
        }
        if code == .tooLarge {
            refused(.tooLarge, result: .tooLarge, stream, error.message)
        } else {
            refused(.malformed, result: .malformed, stream, error.message)
        }
        await refuseAndDrain(stream, code, error.message, watchdog: watchdog)
    }

    /// Answers with an error message, then drops what the client still sends of its request.
    private func refuseAndDrain(
        _ stream: P2PStream, _ code: RemoteErrorCode, _ text: String, watchdog: StreamWatchdog
    ) async {
        await refuse(stream, code, text, watchdog: watchdog)
        // Spec "Limits": the unread rest of the request is not buffered. We read and drop it
        // (so the client's write can finish and it reads our answer) until the client closes
        // or resets, at most `refusalLinger`; then reset.
        watchdog.arm(configuration.refusalLinger)
        while let chunk = try? await stream.read() { _ = chunk }
        watchdog.disarm()
        stream.reset()
    }

    /// Writes an error message and closes our side (within the write timeout).
    private func refuse(_ stream: P2PStream, _ code: RemoteErrorCode, _ text: String, watchdog: StreamWatchdog) async {
        watchdog.arm(configuration.writeTimeout)
        do {
            try await stream.write(PointSubMessage.error(code, text).encoded())
            try await stream.closeWrite()
        } catch {
            stream.reset()
        }
        watchdog.disarm()
    }
}

extension PointSubServer: Service {
    /// Serves (what was `start`ed) until a graceful shutdown is requested or the task is
    /// cancelled, then stops accepting requests, lets those in progress finish for up to
    /// `configuration.drainTimeout`, resets what is left, and returns.
    public func run() async throws {
        try? await gracefulShutdown()
        await stop(gracePeriod: configuration.drainTimeout)
    }
}

/// One timer per stream: when it fires, the stream is reset, which ends whatever read or
/// write waits on it. Cheaper than a task per deadline on the per-request path.
final class StreamWatchdog: Sendable {
    private let stream: P2PStream
    private let eventLoop: any EventLoop
    /// The armed timer and a generation number so a stale timer never resets a re-armed stream.
    private let state = NIOLockedValueBox<(timer: Scheduled<Void>?, generation: UInt64, fired: Bool)>((nil, 0, false))

    init(stream: P2PStream, eventLoop: any EventLoop) {
        self.stream = stream
        self.eventLoop = eventLoop
    }

    func arm(_ duration: Duration) {
        let (old, generation) = state.withLockedValue { s -> (Scheduled<Void>?, UInt64) in
            defer { s.timer = nil }
            s.generation += 1
            return (s.timer, s.generation)
        }
        old?.cancel()
        let timer = Deadline.after(duration).schedule(on: eventLoop) { [self] in
            let fire = state.withLockedValue { s -> Bool in
                guard s.generation == generation else { return false }
                s.fired = true
                return true
            }
            if fire { stream.reset() }
        }
        state.withLockedValue { s in
            if s.generation == generation { s.timer = timer } else { timer.cancel() }
        }
    }

    /// Arms the timer unless it is armed already.
    func armIfIdle(_ duration: Duration) {
        if state.withLockedValue({ $0.timer == nil }) { arm(duration) }
    }

    func disarm() {
        let timer = state.withLockedValue { s -> Scheduled<Void>? in
            guard let timer = s.timer else { return nil }
            s.generation += 1
            s.timer = nil
            return timer
        }
        timer?.cancel()
    }

    var fired: Bool { state.withLockedValue { $0.fired } }
}

/// A server stream's wait for the first bytes of its next request: ended once, by the stream's
/// read handler (data, end, failure), or by the idle cleanup or `stop()` retiring the stream;
/// the outcome goes to `onOutcome`. Small on purpose (issue 10: memory per idle stream).
final class IdleWait: Sendable {
    enum Outcome: Sendable {
        case data(ByteBuffer)
        /// The client closed its side.
        case end
        /// Failed, reset or retired.
        case ended
    }

    private let finished = NIOLockedValueBox(false)
    private let onOutcome: @Sendable (Outcome) -> Void

    init(_ onOutcome: @escaping @Sendable (Outcome) -> Void) {
        self.onOutcome = onOutcome
    }

    var isFinished: Bool { finished.withLockedValue { $0 } }

    /// Ends the wait with `outcome` unless it ended already; returns whether this call ended it.
    @discardableResult
    func finish(_ outcome: Outcome) -> Bool {
        let won = cancel()
        if won { onOutcome(outcome) }
        return won
    }

    /// Ends the wait without an outcome (the caller takes care of the stream) unless it ended
    /// already; returns whether this call ended it. May be called under the server's lock.
    func cancel() -> Bool {
        finished.withLockedValue { finished -> Bool in
            defer { finished = true }
            return !finished
        }
    }
}
