import Atomics
import NIOCore
import Resources

/// State shared between the handler (event loop) and the façades (any thread): atomics only.
final class YamuxSharedState: Sendable {
    let isClosed = ManagedAtomic<Bool>(false)
    /// Session-wide allowance for receive-window growth (nil: unlimited).
    let windowBudget: YamuxWindowBudget?

    init(windowGrowthLimit: Int?) {
        self.windowBudget = windowGrowthLimit.map { YamuxWindowBudget(limit: max(0, $0)) }
    }

    let openStreams = ManagedAtomic<Int>(0)
    /// Inbound streams refused because the resource manager would not admit them.
    let refusedInboundStreams = ManagedAtomic<Int>(0)
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
/// Reading is paced by what the peer makes us send: replies to its frames (ping ACKs, RSTs of
/// refused streams) are written as they are produced, and once
/// `replyMark` bytes of them were written while the channel is not writable, decoding stops and
/// `read()` is held until the channel drains (a peer that floods pings and never reads the
/// answers cannot make the write queue grow without bound). Our own data frames do not count:
/// they are only produced while the channel is writable, and pausing on them would deadlock two
/// peers that both send bulk data.
///
/// Confinement: every member is only touched on the channel's event loop. Other threads
/// reach it through `NIOLoopBound<YamuxHandler>` (which checks that) by hopping to the loop.
final class YamuxHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Reply bytes written while the channel is not writable after which input is paused.
    static let replyMark = 64 * 1024
    /// How long the channel stays open after a final GoAway was written, if the write does not
    /// complete earlier (a peer that does not read).
    static let goAwayLinger: TimeAmount = .seconds(2)

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
    /// The connection's resources: each stream opens a `StreamScope` in it and reserves its
    /// initial receive window there first (nil: no accounting).
    let resourceScope: ConnectionScope?

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

    /// Inside `processInput`: control frames written now are replies to the peer's frames.
    private var processingInput = false
    /// Reply bytes written since the channel was last seen writable.
    private var replyBytes = 0
    /// Decoding stopped until the channel is writable again (see the type's documentation).
    private var inputPaused = false
    /// A `read()` arrived while input was paused or the session ended: passed on on resume.
    private var readHeld = false
    /// The scope reserved for the SYN whose header was classified last, until its stream is made.
    private var admittedScope: StreamScope?
    /// False when the resource manager refused the SYN whose header was classified last.
    private var admitNextStream = true
    /// Completes when the last GoAway we wrote has gone to the channel below.
    private var goAwayWritten: EventLoopFuture<Void>?

    init(role: YamuxRole, configuration: YamuxConfiguration, eventLoop: EventLoop, resourceScope: ConnectionScope? = nil) {
        let configuration = configuration.normalized
        self.configuration = configuration
        self.resourceScope = resourceScope
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
        if readHeld {
            // The channel lives on without us: give back the read we held.
            readHeld = false
            context.read()
        }
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
        let yamuxError = error as? YamuxError ?? YamuxError(.sessionClosed, "channel error", cause: error)
        endSession(error: yamuxError, goAway: nil, closeChannel: true)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            replyBytes = 0
            pumpData()
            if inputPaused {
                inputPaused = false
                // Inside `processInput` (a write made the channel writable again), its loop
                // simply goes on; otherwise the bytes held back are decoded now.
                if !processingInput, state != .ended {
                    processInput()
                    afterOperation()
                }
            }
            if readHeld && !inputPaused && state != .ended {
                readHeld = false
                context.read()
            }
        }
        flushIfNeeded()
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard state != .ended else { return }
        decoder.append(unwrapInboundIn(data))
        processInput()
        afterOperation()
    }

    /// Holds the channel's `read()` while input is paused or the session has ended.
    func read(context: ChannelHandlerContext) {
        if inputPaused || state == .ended {
            readHeld = true
        } else {
            context.read()
        }
    }

    /// Decodes and handles the frames buffered in the decoder, until it needs more bytes, the
    /// session ends, or the replies written meanwhile pause it.
    private func processInput() {
        guard !inputPaused, !processingInput else { return }
        processingInput = true
        if let context, context.channel.isWritable { replyBytes = 0 }
        var actions = takeScratch()
        do {
            while state != .ended {
                if replyBytes >= Self.replyMark, let context, !context.channel.isWritable {
                    inputPaused = true
                    break
                }
                guard let frame = try decoder.nextFrame(classifyingHeader: { header throws(YamuxError) in
                    try self.classify(header)
                }) else { break }
                actions.removeAll(keepingCapacity: true)
                stateMachine.receive(frame, into: &actions, admitNewStream: admitNextStream)
                admitNextStream = true
                process(&actions)
                if let unused = admittedScope {
                    // Reserved for a stream that did not come about after all.
                    admittedScope = nil
                    unused.done()
                }
            }
        } catch {
            actions.removeAll(keepingCapacity: true)
            let violation = (error as Any) as? YamuxError ?? YamuxError(.protocolError, cause: error)
            stateMachine.protocolViolation(violation, into: &actions)
            process(&actions)
        }
        actionScratch = actions
        processingInput = false
        if !acceptedDuringRead.isEmpty {
            let accepted = acceptedDuringRead
            acceptedDuringRead.removeAll(keepingCapacity: true)
            for stream in accepted { inboundHandler?(stream) }
        }
    }

    /// Checks a frame's header and decides about its payload before any of it is buffered: the
    /// payload of a frame for a stream that is gone is skipped as it arrives, and a new inbound
    /// stream gets its `StreamScope` and initial window reserved here, or is refused with RST
    /// (as go-yamux does when its memory manager refuses the initial window).
    private func classify(_ header: YamuxFrameHeader) throws(YamuxError) -> YamuxPayloadDisposition {
        switch try stateMachine.classify(header) {
        case .keep:
            return .keep
        case .discard:
            return .discard
        case .newStream:
            guard let resourceScope else { return .keep }
            do {
                admittedScope = try Self.openStreamScope(in: resourceScope, direction: .inbound, window: configuration.initialStreamWindow)
                return .keep
            } catch {
                admitNextStream = false
                shared.refusedInboundStreams.wrappingIncrement(ordering: .relaxed)
                return .discard
            }
        }
    }

    /// Opens a stream scope and reserves the stream's initial receive window in it.
    private static func openStreamScope(
        in connection: ConnectionScope, direction: ResourceDirection, window: UInt32
    ) throws(ResourceError) -> StreamScope {
        let scope = try connection.openStream(direction: direction)
        do throws(ResourceError) {
            try scope.reserveMemory(Int(window))
        } catch {
            scope.done()
            throw error
        }
        return scope
    }

    /// A stream scope for a stream we open (nil without a resource manager).
    private func reserveOutboundStream() throws(YamuxError) -> StreamScope? {
        guard let resourceScope else { return nil }
        do throws(ResourceError) {
            return try Self.openStreamScope(in: resourceScope, direction: .outbound, window: configuration.initialStreamWindow)
        } catch {
            throw YamuxError(.resourceLimit, "stream refused", cause: error)
        }
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
                // Frames the peer's frames ask for one to one (ping ACKs, RSTs of refused
                // streams): these pace reading. Credit is not counted: it is at most one frame
                // per half window of data, and our own writes must not stop our reading.
                if processingInput { replyBytes &+= YamuxFrame.headerSize }
                if frame.type == .goAway {
                    writeGoAway(frame)
                } else {
                    writeFrame(frame, promise: nil)
                }
            case .streamOpened(let id):
                let scope = admittedScope
                admittedScope = nil
                let stream = makeStream(id: id, isOutbound: false, scope: scope)
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
                    stream.protocolEnded()
                    if let index = acceptQueue.firstIndex(where: { $0 === stream }) {
                        acceptQueue.remove(at: index)
                    }
                }
            case .streamClosed(let id):
                streams.removeValue(forKey: id)?.protocolEnded()
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

    /// Writes a GoAway and remembers when it has been written (the channel is closed only then).
    private func writeGoAway(_ frame: YamuxFrame) {
        let written = eventLoop.makePromise(of: Void.self)
        writeFrame(frame, promise: written)
        goAwayWritten = written.futureResult
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
            if let id = out.closedStreamID { streams.removeValue(forKey: id)?.protocolEnded() }
        }
    }

    private func makeStream(id: UInt32, isOutbound: Bool, scope: StreamScope?) -> YamuxStream {
        YamuxStream(
            id: id, isOutbound: isOutbound, handler: bound, shared: shared, resourceScope: scope,
            window: YamuxReceiveWindow(
                initialWindow: configuration.initialStreamWindow,
                maxWindow: configuration.maxStreamWindow, now: .now()))
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
        if stateMachine.mustWaitToOpen {
            let promise = eventLoop.makePromise(of: YamuxStream.self)
            pendingOpens.append((promise, firstData))
            return promise.futureResult
        }
        let scope: StreamScope?
        do throws(YamuxError) {
            scope = try reserveOutboundStream()
        } catch {
            return eventLoop.makeFailedFuture(error)
        }
        switch stateMachine.openStream(firstData: firstData) {
        case .opened(let id, let frame):
            return opened(id: id, frame: frame, firstData: firstData, scope: scope)
        case .mustWait:
            scope?.done()
            let promise = eventLoop.makePromise(of: YamuxStream.self)
            pendingOpens.append((promise, firstData))
            return promise.futureResult
        case .failed(let error):
            scope?.done()
            return eventLoop.makeFailedFuture(error)
        }
    }

    /// Registers a stream the state machine opened and sends its SYN (and first data).
    private func opened(id: UInt32, frame: YamuxFrame, firstData: ByteBuffer?, scope: StreamScope?) -> EventLoopFuture<YamuxStream> {
        let stream = makeStream(id: id, isOutbound: true, scope: scope)
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
            // Checked before reserving: this runs after every operation while opens wait.
            if stateMachine.mustWaitToOpen { return }
            let scope: StreamScope?
            do throws(YamuxError) {
                scope = try reserveOutboundStream()
            } catch {
                pendingOpens.removeFirst()
                promise.fail(error)
                continue
            }
            switch stateMachine.openStream(firstData: firstData) {
            case .opened(let id, let frame):
                pendingOpens.removeFirst()
                opened(id: id, frame: frame, firstData: firstData, scope: scope).cascade(to: promise)
            case .mustWait:
                scope?.done()
                return
            case .failed(let error):
                scope?.done()
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
        writeGoAway(stateMachine.goAway(code))
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
                stream.protocolEnded()
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
            if closed { streams.removeValue(forKey: stream.id)?.protocolEnded() }
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
            stream.protocolEnded()
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
    /// Input bytes held by the decoder (received, not yet handled or discarded).
    var bufferedInputBytesForTests: Int { decoder.bufferedBytes }

    // MARK: - End of session

    /// Ends the session once: optionally sends GoAway, fails everything still pending, closes
    /// the channel if asked. `error == nil` is a normal end.
    private func endSession(error: YamuxError?, goAway: YamuxGoAwayCode?, closeChannel: Bool) {
        guard state != .ended else { return }
        state = .ended
        shared.isClosed.store(true, ordering: .releasing)
        if let goAway, !stateMachine.isFailed, !stateMachine.localGoAway {
            writeGoAway(stateMachine.goAway(goAway))
        }
        flushIfNeeded()
        if let unused = admittedScope {
            admittedScope = nil
            unused.done()
        }

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
        for stream in streams.values {
            stream.fail(failure, discardQueued: false)
            stream.protocolEnded()
        }
        for stream in acceptQueue {
            stream.fail(failure, discardQueued: false)
            stream.protocolEnded()
        }
        acceptQueue.removeAll()
        inboundHandler = nil  // it may hold the session (through the connection) alive
        cancelInboundWait()
        failPendingOpens(failure)
        let pings = self.pings
        self.pings.removeAll()
        for record in pings.values { record.promise?.fail(failure) }
        shared.openStreams.store(0, ordering: .relaxed)

        if closeChannel, let context {
            let channel = context.channel
            if let written = goAwayWritten {
                // The GoAway must reach the peer before the EOF. A handler below may hold our
                // flush until it has handled the read we are in (Noise does), so closing now
                // would drop the frame: close once it has been written, or after a short linger
                // if it cannot be (a peer that does not read). Reads are held meanwhile.
                let linger = eventLoop.scheduleTask(in: Self.goAwayLinger) { channel.close(promise: nil) }
                written.whenComplete { _ in
                    linger.cancel()
                    channel.close(promise: nil)
                }
            } else {
                context.close(promise: nil)
            }
        }
        if let error {
            closePromise.fail(error)
        } else {
            closePromise.succeed(())
        }
    }
}
