import Atomics
import NIOCore

/// State shared between the handler (event loop) and the façades (any thread): atomics only.
final class YamuxSharedState: Sendable {
    let isClosed = ManagedAtomic<Bool>(false)
    /// Session-wide allowance for receive-window growth (nil: unlimited).
    let windowBudget: YamuxWindowBudget?

    init(windowGrowthLimit: Int?) {
        self.windowBudget = windowGrowthLimit.map { YamuxWindowBudget(limit: max(0, $0)) }
    }

    let openStreams = ManagedAtomic<Int>(0)
    /// Smoothed RTT from pings in nanoseconds; 0 while unknown.
    let rttNanoseconds = ManagedAtomic<Int64>(0)

    var rtt: TimeAmount? {
        let ns = rttNanoseconds.load(ordering: .relaxed)
        return ns > 0 ? .nanoseconds(ns) : nil
    }

    func recordRTT(_ sample: TimeAmount) {
        let sampleNs = max(sample.nanoseconds, 1)
        let old = rttNanoseconds.load(ordering: .relaxed)
        // Exponentially weighted moving average (1/8 weight, as TCP's SRTT).
        let new = old == 0 ? sampleNs : old + (sampleNs - old) / 8
        rttNanoseconds.store(max(new, 1), ordering: .relaxed)
    }
}

/// The channel handler that runs a yamux session. It is the last handler of the pipeline;
/// inbound and outbound are plaintext `ByteBuffer`s.
///
/// Confinement: every member is only touched on the channel's event loop. Other threads
/// reach it through `NIOLoopBound<YamuxHandler>` (which checks that) by hopping to the loop.
final class YamuxHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum State {
        case active
        /// Graceful close: waiting for the open streams to finish.
        case closing
        case ended
    }

    private struct PingRecord {
        var start: NIODeadline
        var promise: EventLoopPromise<TimeAmount>?
    }

    let configuration: YamuxConfiguration
    let eventLoop: EventLoop
    let shared: YamuxSharedState
    let closePromise: EventLoopPromise<Void>

    private var stateMachine: YamuxSessionStateMachine
    private var decoder: YamuxFrameDecoder
    private var state = State.active
    private var context: ChannelHandlerContext?
    private var needsFlush = false
    private var flushScheduled = false

    /// Stream objects by ID, for delivering data; a stream leaves when the state machine
    /// forgets it (both FINs, or RST).
    private var streams: [UInt32: YamuxStream] = [:]
    /// Inbound streams not yet taken by the application (not ACKed).
    private var acceptQueue = CircularBuffer<YamuxStream>()
    private var acceptWaiter: EventLoopPromise<YamuxStream?>?
    /// `openStream()` calls waiting for the outbound ACK backlog to shrink, with their first data.
    private var pendingOpens = CircularBuffer<(promise: EventLoopPromise<YamuxStream>, firstData: ByteBuffer?)>()
    /// When set, inbound streams are accepted as they arrive and handed to it (instead of
    /// waiting in `acceptQueue` for `nextInbound()`).
    private var inboundHandler: (@Sendable (YamuxStream) -> Void)?
    /// Inbound streams accepted during the current read, handed to `inboundHandler` at its end,
    /// once the data that came with their SYN (same frame or a later one of the read) is queued.
    private var acceptedDuringRead: [YamuxStream] = []

    private var pings: [UInt32: PingRecord] = [:]
    private var nextPingID: UInt32 = 0
    private var keepAliveStarted = false
    private var keepAliveTask: Scheduled<Void>?
    private var keepAlivePingID: UInt32?
    private var keepAliveTimeoutTask: Scheduled<Void>?
    private var closeDeadlineTask: Scheduled<Void>?

    private var actionScratch: [YamuxSessionStateMachine.Action] = []

    init(role: YamuxRole, configuration: YamuxConfiguration, eventLoop: EventLoop) {
        let configuration = configuration.normalized
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.shared = YamuxSharedState(windowGrowthLimit: configuration.maxSessionWindowGrowth)
        self.closePromise = eventLoop.makePromise()
        self.stateMachine = YamuxSessionStateMachine(role: role, configuration: configuration)
        self.decoder = YamuxFrameDecoder(maxFrameSize: configuration.maxFrameSize)
        self.actionScratch.reserveCapacity(8)
    }

    private var bound: NIOLoopBound<YamuxHandler> { NIOLoopBound(self, eventLoop: eventLoop) }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { startKeepAlive() }
        flushIfNeeded()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        endSession(error: nil, goAway: nil, closeChannel: false)
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        startKeepAlive()
        flushIfNeeded()
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        endSession(error: nil, goAway: nil, closeChannel: false)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Last handler: the error stops here and ends the session.
        let yamuxError = error as? YamuxError ?? YamuxError(.sessionClosed, "channel error: \(error)")
        endSession(error: yamuxError, goAway: nil, closeChannel: true)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { pumpData() }
        flushIfNeeded()
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard state != .ended else { return }
        decoder.append(unwrapInboundIn(data))
        var actions = takeScratch()
        do {
            while state != .ended,
                let frame = try decoder.nextFrame(validatingHeader: { header throws(YamuxError) in
                    try self.stateMachine.validateHeader(header)
                })
            {
                actions.removeAll(keepingCapacity: true)
                stateMachine.receive(frame, into: &actions)
                process(&actions)
            }
        } catch {
            actions.removeAll(keepingCapacity: true)
            let violation = (error as Any) as? YamuxError ?? YamuxError(.protocolError, "\(error)")
            stateMachine.protocolViolation(violation, into: &actions)
            process(&actions)
        }
        actionScratch = actions
        if !acceptedDuringRead.isEmpty {
            let accepted = acceptedDuringRead
            acceptedDuringRead.removeAll(keepingCapacity: true)
            for stream in accepted { inboundHandler?(stream) }
        }
        afterOperation()
    }

    // MARK: - Action processing

    private func takeScratch() -> [YamuxSessionStateMachine.Action] {
        var actions: [YamuxSessionStateMachine.Action] = []
        swap(&actions, &actionScratch)
        return actions
    }

    private func process(_ actions: inout [YamuxSessionStateMachine.Action]) {
        var pump = false
        for action in actions {
            switch action {
            case .send(let frame):
                writeFrame(frame, promise: nil)
            case .streamOpened(let id):
                let stream = makeStream(id: id, isOutbound: false)
                streams[id] = stream
                if inboundHandler != nil {
                    accept(stream)
                    acceptedDuringRead.append(stream)
                } else if let waiter = acceptWaiter {
                    acceptWaiter = nil
                    accept(stream)
                    waiter.succeed(stream)
                } else {
                    acceptQueue.append(stream)
                }
            case .streamAcknowledged:
                break  // pending opens are retried in afterOperation()
            case .deliver(let id, let data):
                if let stream = streams[id], let delta = stream.deliver(data) {
                    credit(streamID: id, delta: delta, flush: false)
                }
            case .remoteFinished(let id):
                streams[id]?.remoteFinished()
            case .streamReset(let id, let promises):
                let error = YamuxError(.streamReset, "stream \(id) reset by peer")
                for promise in promises { promise.fail(error) }
                if let stream = streams.removeValue(forKey: id) {
                    // The reader still gets what arrived before the reset (e.g. an error reply
                    // sent just before it), then the reset error.
                    stream.fail(error, discardQueued: false)
                    if let index = acceptQueue.firstIndex(where: { $0 === stream }) {
                        acceptQueue.remove(at: index)
                    }
                }
            case .streamClosed(let id):
                streams.removeValue(forKey: id)
            case .pong(let opaque):
                receivedPong(opaque)
            case .goAwayReceived:
                failPendingOpens(YamuxError(.goAwayReceived, "peer sent GoAway"))
            case .dataReady:
                pump = true
            case .protocolViolation(let error):
                endSession(error: error, goAway: nil, closeChannel: true)
            }
        }
        if pump { pumpData() }
    }

    /// After every entry point: bookkeeping, then flush — right away, or with `deferFlush` once
    /// the event loop has run the tasks already queued (see `scheduleFlush`).
    private func afterOperation(deferFlush: Bool = false) {
        if state != .ended {
            drainPendingOpens()
            if state == .closing && stateMachine.openStreamCount == 0 {
                endSession(error: nil, goAway: .normal, closeChannel: true)
            }
        }
        shared.openStreams.store(state == .ended ? 0 : stateMachine.openStreamCount, ordering: .relaxed)
        if deferFlush { scheduleFlush() } else { flushIfNeeded() }
    }

    /// Flush consolidation for stream writes and read credits: each arrives as its own event-loop
    /// task, so flushing in each meant one encryption flush and one socket write per message.
    /// The first write flushes at once (a lone request pays no extra hop) and opens a window that
    /// lasts until the tasks already queued on the loop have run: writes made meanwhile (64
    /// requests in flight on one connection in `pointsub-bench rr`) leave together in one
    /// `writev` when the window closes.
    private func scheduleFlush() {
        guard needsFlush else { return }
        guard !flushScheduled else { return }  // a window is open: its end flushes
        flushIfNeeded()
        flushScheduled = true
        let bound = self.bound
        eventLoop.execute {
            bound.value.flushScheduled = false
            bound.value.flushIfNeeded()
        }
    }

    /// Data frames with at least this many payload bytes are written as header and payload.
    static let separatePayloadThreshold = 16 * 1024

    private func writeFrame(_ frame: YamuxFrame, promise: EventLoopPromise<Void>?) {
        guard let context else {
            promise?.fail(YamuxError(.sessionClosed, "session closed"))
            return
        }
        if frame.header.type == .data, frame.payload.readableBytes >= Self.separatePayloadThreshold {
            // A large payload goes down as a buffer of its own after the 12-byte header instead of
            // being copied behind it: Noise then seals it straight from the writer's buffer (the
            // frame spans two Noise messages, which Yamux peers accept: it runs over a byte stream).
            var header = context.channel.allocator.buffer(capacity: YamuxFrame.headerSize)
            frame.encodeHeader(into: &header)
            context.write(wrapOutboundOut(header), promise: nil)
            context.write(wrapOutboundOut(frame.payload), promise: promise)
        } else {
            context.write(wrapOutboundOut(frame.encoded(allocator: context.channel.allocator)), promise: promise)
        }
        needsFlush = true
    }

    private func flushIfNeeded() {
        guard needsFlush, let context else { return }
        needsFlush = false
        context.flush()
    }

    /// Sends data frames while the channel is writable (data waits otherwise, which
    /// suspends the writers: back-pressure from the transport).
    private func pumpData() {
        guard let context, state != .ended else { return }
        while context.channel.isWritable, let out = stateMachine.nextDataFrame() {
            var promise = out.writePromise
            if let finPromise = out.finPromise {
                if let first = promise {
                    first.futureResult.cascade(to: finPromise)
                } else {
                    promise = finPromise
                }
            }
            writeFrame(out.frame, promise: promise)
            if let id = out.closedStreamID { streams.removeValue(forKey: id) }
        }
    }

    private func makeStream(id: UInt32, isOutbound: Bool) -> YamuxStream {
        YamuxStream(
            id: id, isOutbound: isOutbound, handler: bound, shared: shared,
            window: YamuxReceiveWindow(
                initialWindow: configuration.initialStreamWindow,
                maxWindow: configuration.maxStreamWindow, now: .now(), budget: shared.windowBudget))
    }

    private func accept(_ stream: YamuxStream) {
        // go-yamux behaviour: the ACK goes out when the application takes the stream.
        if let ack = stateMachine.acceptStream(stream.id) {
            writeFrame(ack, promise: nil)
        }
    }

    // MARK: - Session operations (called through NIOLoopBound)

    /// `firstData` is sent on the new stream at once, on the SYN frame when it fits (see
    /// `YamuxSessionStateMachine.openStream(firstData:)`); the future then succeeds once it was
    /// handed to the channel.
    func openStream(sending firstData: ByteBuffer? = nil) -> EventLoopFuture<YamuxStream> {
        defer { afterOperation() }
        if let error = newStreamRefusal() { return eventLoop.makeFailedFuture(error) }
        if !pendingOpens.isEmpty {
            let promise = eventLoop.makePromise(of: YamuxStream.self)
            pendingOpens.append((promise, firstData))
            return promise.futureResult
        }
        switch stateMachine.openStream(firstData: firstData) {
        case .opened(let id, let frame):
            return opened(id: id, frame: frame, firstData: firstData)
        case .mustWait:
            let promise = eventLoop.makePromise(of: YamuxStream.self)
            pendingOpens.append((promise, firstData))
            return promise.futureResult
        case .failed(let error):
            return eventLoop.makeFailedFuture(error)
        }
    }

    /// Registers a stream the state machine opened and sends its SYN (and first data).
    private func opened(id: UInt32, frame: YamuxFrame, firstData: ByteBuffer?) -> EventLoopFuture<YamuxStream> {
        let stream = makeStream(id: id, isOutbound: true)
        streams[id] = stream
        if frame.type == .data {
            let written = eventLoop.makePromise(of: Void.self)
            writeFrame(frame, promise: written)
            return written.futureResult.map { stream }
        }
        writeFrame(frame, promise: nil)
        if let firstData, firstData.readableBytes > 0 {
            return write(stream: stream, data: firstData).map { stream }
        }
        return eventLoop.makeSucceededFuture(stream)
    }

    private func newStreamRefusal() -> YamuxError? {
        switch state {
        case .ended: return YamuxError(.sessionClosed, "session closed")
        case .closing: return YamuxError(.goAwaySent, "session is closing")
        case .active: return nil
        }
    }

    private func drainPendingOpens() {
        while let (promise, firstData) = pendingOpens.first {
            switch stateMachine.openStream(firstData: firstData) {
            case .opened(let id, let frame):
                pendingOpens.removeFirst()
                opened(id: id, frame: frame, firstData: firstData).cascade(to: promise)
            case .mustWait:
                return
            case .failed(let error):
                failPendingOpens(error)
                return
            }
        }
    }

    private func failPendingOpens(_ error: YamuxError) {
        while let pending = pendingOpens.popFirst() { pending.promise.fail(error) }
    }

    /// Hands every inbound stream to `handler` as it arrives (those already waiting first),
    /// accepting (ACKing) it at once; `nextInbound()` then has nothing to return.
    func setInboundHandler(_ handler: @escaping @Sendable (YamuxStream) -> Void) {
        defer { afterOperation() }
        guard state == .active else { return }
        inboundHandler = handler
        while let stream = acceptQueue.popFirst() {
            accept(stream)
            handler(stream)
        }
    }

    func nextInbound() -> EventLoopFuture<YamuxStream?> {
        defer { afterOperation() }
        if let stream = acceptQueue.popFirst() {
            accept(stream)
            return eventLoop.makeSucceededFuture(stream)
        }
        if state != .active || stateMachine.localGoAway {
            return eventLoop.makeSucceededFuture(nil)
        }
        guard acceptWaiter == nil else {
            return eventLoop.makeFailedFuture(YamuxError(.invalidUsage, "inboundStreams has a single consumer"))
        }
        let promise = eventLoop.makePromise(of: YamuxStream?.self)
        acceptWaiter = promise
        return promise.futureResult
    }

    func cancelInboundWait() {
        acceptWaiter?.succeed(nil)
        acceptWaiter = nil
    }

    func ping() -> EventLoopFuture<TimeAmount> {
        defer { afterOperation() }
        guard state != .ended else { return eventLoop.makeFailedFuture(YamuxError(.sessionClosed, "session closed")) }
        let promise = eventLoop.makePromise(of: TimeAmount.self)
        sendPing(promise: promise)
        return promise.futureResult
    }

    func goAway(_ code: YamuxGoAwayCode) {
        defer { afterOperation() }
        guard state != .ended, !stateMachine.localGoAway else { return }
        writeFrame(stateMachine.goAway(code), promise: nil)
        failPendingOpens(YamuxError(.goAwaySent, "GoAway sent"))
        if acceptQueue.isEmpty { cancelInboundWait() }
    }

    func close(graceful: Bool, deadline: NIODeadline?) {
        defer { afterOperation() }
        switch state {
        case .ended:
            return
        case .closing:
            if !graceful { endSession(error: nil, goAway: .normal, closeChannel: true) }
            return
        case .active:
            break
        }
        guard graceful else {
            endSession(error: nil, goAway: .normal, closeChannel: true)
            return
        }
        state = .closing
        // Streams the application never took are refused now; the rest may finish.
        for (id, frame) in stateMachine.beginClosing() {
            writeFrame(frame, promise: nil)
            if let stream = streams.removeValue(forKey: id) {
                stream.fail(YamuxError(.sessionClosed, "session closing"), discardQueued: true)
            }
        }
        acceptQueue.removeAll()
        cancelInboundWait()
        failPendingOpens(YamuxError(.goAwaySent, "session is closing"))
        if let deadline {
            closeDeadlineTask = eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
                endSession(error: nil, goAway: .normal, closeChannel: true)
                flushIfNeeded()
            }
        }
        // afterOperation() ends the session right away if no stream is open.
    }

    // MARK: - Stream operations (called through NIOLoopBound)

    func write(stream: YamuxStream, data: ByteBuffer) -> EventLoopFuture<Void> {
        defer { afterOperation(deferFlush: true) }
        if let error = stream.terminalWriteError { return eventLoop.makeFailedFuture(error) }
        let promise = eventLoop.makePromise(of: Void.self)
        switch stateMachine.write(streamID: stream.id, data: data, promise: promise) {
        case .queued(let ready):
            if ready { pumpData() }
        case .failed(let error):
            promise.fail(stream.terminalWriteError ?? error)
        }
        return promise.futureResult
    }

    func write(stream: YamuxStream, buffers: [ByteBuffer]) -> EventLoopFuture<Void> {
        guard buffers.count > 1 else { return write(stream: stream, data: buffers.first ?? ByteBuffer()) }
        defer { afterOperation(deferFlush: true) }
        if let error = stream.terminalWriteError { return eventLoop.makeFailedFuture(error) }
        let promise = eventLoop.makePromise(of: Void.self)
        var ready = false
        for (index, data) in buffers.enumerated() {
            // Only the last write carries the promise: writes complete in order.
            switch stateMachine.write(streamID: stream.id, data: data, promise: index == buffers.count - 1 ? promise : nil) {
            case .queued(let nowReady):
                ready = ready || nowReady
            case .failed(let error):
                promise.fail(stream.terminalWriteError ?? error)
                if ready { pumpData() }
                return promise.futureResult
            }
        }
        if ready { pumpData() }
        return promise.futureResult
    }

    func closeWrite(stream: YamuxStream) -> EventLoopFuture<Void> {
        defer { afterOperation() }
        if let error = stream.terminalWriteError { return eventLoop.makeFailedFuture(error) }
        let promise = eventLoop.makePromise(of: Void.self)
        switch stateMachine.closeWrite(streamID: stream.id, promise: promise) {
        case .send(let frame, let closed):
            writeFrame(frame, promise: promise)
            if closed { streams.removeValue(forKey: stream.id) }
        case .queued:
            break
        case .alreadyClosed:
            promise.succeed(())
        case .failed(let error):
            promise.fail(stream.terminalWriteError ?? error)
        }
        return promise.futureResult
    }

    /// Resets a stream we closed if the peer has not ended its side within the linger timeout.
    func lingerAfterClose(streamID id: UInt32) {
        guard let timeout = configuration.closeLingerTimeout, streams[id] != nil else { return }
        eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            if streams[id] != nil { resetStream(streamID: id) }
        }
    }

    func resetStream(streamID id: UInt32) {
        defer { afterOperation() }
        guard let (frame, promises) = stateMachine.reset(streamID: id) else { return }
        writeFrame(frame, promise: nil)
        let error = YamuxError(.streamReset, "stream \(id) reset locally")
        for promise in promises { promise.fail(error) }
        if let stream = streams.removeValue(forKey: id) {
            stream.fail(error, discardQueued: true)
            if let index = acceptQueue.firstIndex(where: { $0 === stream }) { acceptQueue.remove(at: index) }
        }
    }

    func credit(streamID id: UInt32, delta: UInt32) {
        credit(streamID: id, delta: delta, flush: true)
    }

    private func credit(streamID id: UInt32, delta: UInt32, flush: Bool) {
        guard state != .ended, let frame = stateMachine.windowCredit(streamID: id, delta: delta) else { return }
        writeFrame(frame, promise: nil)
        if flush { afterOperation(deferFlush: true) }
    }

    // MARK: - Ping and keep-alive

    @discardableResult
    private func sendPing(promise: EventLoopPromise<TimeAmount>?) -> UInt32 {
        nextPingID &+= 1
        let id = nextPingID
        pings[id] = PingRecord(start: eventLoop.now, promise: promise)
        writeFrame(.ping(opaque: id, ack: false), promise: nil)
        return id
    }

    private func receivedPong(_ opaque: UInt32) {
        guard let record = pings.removeValue(forKey: opaque) else { return }  // unknown: ignore
        let rtt = eventLoop.now - record.start
        shared.recordRTT(rtt)
        record.promise?.succeed(rtt)
        if keepAlivePingID == opaque {
            keepAlivePingID = nil
            keepAliveTimeoutTask?.cancel()
            keepAliveTimeoutTask = nil
        }
    }

    private func startKeepAlive() {
        guard !keepAliveStarted, state != .ended, let interval = configuration.keepAliveInterval else { return }
        keepAliveStarted = true
        // First ping right away: it measures the RTT used by window auto-tuning.
        sendKeepAlivePing()
        scheduleKeepAlive(in: interval)
    }

    private func scheduleKeepAlive(in interval: TimeAmount) {
        keepAliveTask = eventLoop.assumeIsolated().scheduleTask(in: interval) { [self] in
            guard state != .ended else { return }
            if keepAlivePingID == nil { sendKeepAlivePing() }
            scheduleKeepAlive(in: interval)
            flushIfNeeded()
        }
    }

    private func sendKeepAlivePing() {
        let id = sendPing(promise: nil)
        keepAlivePingID = id
        keepAliveTimeoutTask = eventLoop.assumeIsolated().scheduleTask(in: configuration.keepAliveTimeout) { [self] in
            guard keepAlivePingID == id else { return }
            endSession(
                error: YamuxError(.keepAliveTimeout, "no pong within \(configuration.keepAliveTimeout)"),
                goAway: nil, closeChannel: true)
        }
    }

    // MARK: - Introspection for tests

    var isClosingForTests: Bool { state == .closing }
    var pendingDataBytesForTests: Int { stateMachine.streams.values.reduce(0) { $0 + $1.pendingBytes } }

    // MARK: - End of session

    /// Ends the session once: optionally sends GoAway, fails everything still pending, closes
    /// the channel if asked. `error == nil` is a normal end.
    private func endSession(error: YamuxError?, goAway: YamuxGoAwayCode?, closeChannel: Bool) {
        guard state != .ended else { return }
        state = .ended
        shared.isClosed.store(true, ordering: .releasing)
        if let goAway, !stateMachine.isFailed, !stateMachine.localGoAway {
            writeFrame(stateMachine.goAway(goAway), promise: nil)
        }
        flushIfNeeded()

        keepAliveTask?.cancel()
        keepAliveTimeoutTask?.cancel()
        closeDeadlineTask?.cancel()
        keepAliveTask = nil
        keepAliveTimeoutTask = nil
        closeDeadlineTask = nil

        let failure = error ?? YamuxError(.sessionClosed, "session closed")
        for promise in stateMachine.failSession() { promise.fail(failure) }
        let streams = self.streams
        self.streams.removeAll()
        for stream in streams.values { stream.fail(failure, discardQueued: false) }
        for stream in acceptQueue { stream.fail(failure, discardQueued: false) }
        acceptQueue.removeAll()
        inboundHandler = nil  // it may hold the session (through the connection) alive
        cancelInboundWait()
        failPendingOpens(failure)
        let pings = self.pings
        self.pings.removeAll()
        for record in pings.values { record.promise?.fail(failure) }
        shared.openStreams.store(0, ordering: .relaxed)

        if closeChannel, let context {
            context.close(promise: nil)
        }
        if let error {
            closePromise.fail(error)
        } else {
            closePromise.succeed(())
        }
    }
}
