import NIOConcurrencyHelpers
import NIOCore
import Resources

/// One yamux stream: an ordered, flow-controlled byte stream inside a session.
///
/// Thread-safety: the read side lives in `readState` under a lock, so `read()` is cheap and
/// touches the event loop only when a WINDOW_UPDATE is due; everything else (writes, FIN,
/// RST, protocol state) is owned by the session's handler on the channel's event loop and
/// reached by hopping there. One reader at a time; writes may come from any task (they are
/// queued in call order per event-loop arrival).
package final class YamuxStream: Sendable, CustomStringConvertible {
    /// The stream ID (odd: opened by the connection's initiator, even: by the responder).
    package let id: UInt32
    /// Whether we opened this stream (as opposed to the peer).
    package let isOutbound: Bool
    /// The stream's account in the resource manager (nil when the session has no resource
    /// scope). It holds the stream's initial receive window and its growth; the host names the
    /// protocol with `setProtocol` once negotiated. Released (`done()`) when the stream has
    /// ended and its reader has nothing left queued, or when the stream object goes away.
    package let resourceScope: StreamScope?

    let handler: NIOLoopBound<YamuxHandler>
    let shared: YamuxSharedState
    let readState: NIOLockedValueBox<ReadState>

    // Memory: an idle stream is this object, its lock with the read state, and the session's
    // entries for it; queues are allocated only when something is queued (see `Queue`).
    init(
        id: UInt32, isOutbound: Bool, handler: NIOLoopBound<YamuxHandler>, shared: YamuxSharedState,
        resourceScope: StreamScope? = nil, window: YamuxReceiveWindow
    ) {
        self.id = id
        self.isOutbound = isOutbound
        self.handler = handler
        self.shared = shared
        self.resourceScope = resourceScope
        self.readState = NIOLockedValueBox(ReadState(window: window))
    }

    /// The event loop of the session's channel.
    package var eventLoop: EventLoop { handler.eventLoop }

    package var description: String { "YamuxStream(\(id))" }

    deinit {
        // The stream's window growth goes back to the session's budget (the resource scope
        // releases itself when it goes away).
        let growth = readState.withLockedValue { $0.window.reservedGrowth }
        shared.windowBudget?.release(growth)
    }

    // MARK: Read state

    enum ReadEnd {
        /// The peer sent FIN: EOF after the queued data.
        case eof
        /// Failure after the queued data (session ended), or right away (reset: queue dropped).
        case error(YamuxError)
    }

    struct ReadState {
        var buffers = Queue<ByteBuffer>()
        var bufferedBytes = 0
        /// The session forgot the stream (both FINs, reset, session end): the resource scope is
        /// released as soon as nothing is queued for the reader any more.
        var protocolEnded = false
        var scopeReleased = false
        var waiter: CheckedContinuation<ByteBuffer?, any Error>?
        var end: ReadEnd?
        /// `close()` was called: data is discarded (but still credited).
        var readClosed = false
        var window: YamuxReceiveWindow
        /// Why writes fail from now on (reset, session end), if known.
        var writeError: YamuxError?
        /// Called once when the stream fails (`setFailureWatcher`).
        var failureWatcher: (@Sendable () -> Void)?
        /// Takes what arrives instead of `read()` (`setReadHandler`).
        var readHandler: (@Sendable (ReadEvent) -> Void)?
        /// Counts `setReadHandler` calls: a handler being given queued data notices when it was
        /// removed or replaced meanwhile.
        var readHandlerChanges: UInt64 = 0

        init(window: YamuxReceiveWindow) { self.window = window }
    }

    private enum Poll {
        case data(ByteBuffer, credit: UInt32?)
        case eof
        case failure(any Error)
        case pending
    }

    private func poll(_ s: inout ReadState) -> Poll {
        if s.readClosed { return .failure(YamuxError(.streamClosed, "read after close() on stream \(id)")) }
        if let buffer = s.buffers.popFirst() {
            s.bufferedBytes -= buffer.readableBytes
            // No credit once the peer finished sending (or the session ended).
            let credit = s.end == nil ? consume(buffer.readableBytes, &s) : nil
            if s.protocolEnded && s.buffers.isEmpty { releaseScope(&s) }
            return .data(buffer, credit: credit)
        }
        switch s.end {
        case .eof: return .eof
        case .error(let error): return .failure(error)
        case nil: return .pending
        }
    }

    /// The application consumed `bytes`: the credit to give, if due (growth reserved first).
    private func consume(_ bytes: Int, _ s: inout ReadState) -> UInt32? {
        s.window.consumed(
            bytes, now: .now(), rtt: shared.rtt, budget: shared.windowBudget,
            account: s.scopeReleased ? nil : resourceScope)
    }

    private func releaseScope(_ s: inout ReadState) {
        guard !s.scopeReleased else { return }
        s.scopeReleased = true
        resourceScope?.done()
    }

    /// Called by the handler when it forgets the stream: releases the resource scope now, or
    /// once the reader has taken what is still queued.
    func protocolEnded() {
        readState.withLockedValue { s in
            s.protocolEnded = true
            if s.buffers.isEmpty { releaseScope(&s) }
        }
    }

    private func sendCredit(_ delta: UInt32?) {
        guard let delta else { return }
        let handler = self.handler
        let id = self.id
        eventLoop.execute { handler.value.credit(streamID: id, delta: delta) }
    }

    /// The next chunk of data, in order; nil at end of stream (the peer sent FIN).
    /// Throws `YamuxError` `.streamReset` after an RST, the session's error when it ended,
    /// `.streamClosed` after `close()`, `CancellationError` if the task is cancelled.
    /// Chunks are the peer's data frames as received (at most one frame each).
    package func read() async throws -> ByteBuffer? {
        switch readState.withLockedValue({ poll(&$0) }) {
        case .data(let buffer, let credit):
            sendCredit(credit)
            return buffer
        case .eof:
            return nil
        case .failure(let error):
            throw error
        case .pending:
            break
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<ByteBuffer?, any Error>) in
                let outcome: Poll = readState.withLockedValue { s in
                    let outcome = poll(&s)
                    guard case .pending = outcome else { return outcome }
                    if s.waiter != nil {
                        return .failure(YamuxError(.invalidUsage, "concurrent read() on stream \(id)"))
                    }
                    // Checked under the lock: either we see the cancellation here, or the
                    // cancellation handler runs after we stored the waiter and resumes it.
                    if Task.isCancelled { return .failure(CancellationError()) }
                    s.waiter = continuation
                    return .pending
                }
                switch outcome {
                case .pending:
                    return
                case .data(let buffer, let credit):
                    sendCredit(credit)
                    continuation.resume(returning: buffer)
                case .eof:
                    continuation.resume(returning: nil)
                case .failure(let error):
                    continuation.resume(throwing: error)
                }
            }
        } onCancel: {
            let waiter = readState.withLockedValue { s in
                defer { s.waiter = nil }
                return s.waiter
            }
            waiter?.resume(throwing: CancellationError())
        }
    }

    /// On the event loop: the data queued for the reader right now, joined, taken as `read()`
    /// takes it (crediting the peer); nil if none. For an inbound-stream handler that answers
    /// from the loop (see `YamuxSession.setInboundStreamHandler`).
    package func takeAvailable() -> ByteBuffer? {
        eventLoop.preconditionInEventLoop()
        var taken: ByteBuffer?
        while case .data(var buffer, let credit) = readState.withLockedValue({ poll(&$0) }) {
            sendCredit(credit)
            if taken == nil {
                taken = buffer
            } else {
                taken!.writeBuffer(&buffer)
            }
        }
        return taken
    }

    /// On the event loop: queues `data` like `write` without a task; the future completes when
    /// `write` would return (a failure also shows in later calls). Not from inside a channel
    /// handler of this session other than the inbound-stream handler.
    @discardableResult
    package func writeFromEventLoop(_ data: ByteBuffer) -> EventLoopFuture<Void> {
        handler.value.write(stream: self, data: data)
    }

    /// On the event loop: `writeFromEventLoop` for several buffers in order, as one operation
    /// (like `write(contentsOf:)`).
    @discardableResult
    package func writeFromEventLoop(contentsOf buffers: [ByteBuffer]) -> EventLoopFuture<Void> {
        handler.value.write(stream: self, buffers: buffers)
    }

    /// What a read handler is given (`setReadHandler`).
    package enum ReadEvent: Sendable {
        case data(ByteBuffer)
        /// The peer sent FIN; the handler is then removed.
        case end
        /// The stream failed (reset, session ended); the handler is then removed.
        case failure(any Error)
    }

    /// On the event loop: from now on, data (credited as `read()` credits it), the peer's FIN and
    /// failures go to `handler` on the loop as they arrive — from inside the session's channel
    /// handler, so `handler` must not call back into this session synchronously other than through
    /// `reset()` and `writeFromEventLoop` — instead of waiting for `read()`. What is queued
    /// already is handed over first. nil gives the stream back to `read()` (nothing is lost: data
    /// then queues for it). For a reader that does its work on the loop, without a task.
    package func setReadHandler(_ handler: (@Sendable (ReadEvent) -> Void)?) {
        eventLoop.preconditionInEventLoop()
        let change = readState.withLockedValue { s -> UInt64 in
            precondition(handler == nil || s.waiter == nil, "setReadHandler while read() waits on stream \(id)")
            s.readHandlerChanges &+= 1
            s.readHandler = handler
            return s.readHandlerChanges
        }
        guard let handler else { return }
        // What is queued already is handed over one buffer at a time: the handler may remove
        // itself part way (a reader that must wait for something), and what it was not given
        // stays queued, uncredited, for whoever reads next.
        while true {
            let next = readState.withLockedValue { s -> (event: ReadEvent, credit: UInt32?)? in
                guard s.readHandlerChanges == change else { return nil }
                if s.readClosed {
                    s.readHandler = nil
                    return (.failure(YamuxError(.streamClosed, "read after close() on stream \(id)")), nil)
                }
                switch poll(&s) {
                case .data(let buffer, let credit): return (.data(buffer), credit)
                case .eof:
                    s.readHandler = nil
                    return (.end, nil)
                case .failure(let error):
                    s.readHandler = nil
                    return (.failure(error), nil)
                case .pending:
                    return nil  // installed: from now on, data goes to it as it arrives
                }
            }
            guard let next else { return }
            sendCredit(next.credit)
            handler(next.event)
            guard case .data = next.event else { return }
        }
    }

    /// The read handler, removed when `event` ends the stream.
    private func takeReadHandler(_ s: inout ReadState, ending: Bool) -> (@Sendable (ReadEvent) -> Void)? {
        defer { if ending { s.readHandler = nil } }
        return s.readHandler
    }

    // MARK: Write side

    /// Sends `data`, split into frames of at most `maxDataFrameSize` bytes. Suspends until all
    /// of it fitted into the peer's window and was written to the channel (the channel must
    /// be writable for data frames to go out): this is the back-pressure.
    package func write(_ data: ByteBuffer) async throws {
        let handler = self.handler
        try await Self.mapErrors {
            try await self.eventLoop.runInline { handler.value.write(stream: self, data: data) }
        }
    }

    /// Sends the buffers in order as one operation: each is framed on its own (no copy into one
    /// buffer), and the call completes when the last was written, as `write(_:)` does.
    package func write(contentsOf buffers: [ByteBuffer]) async throws {
        let handler = self.handler
        try await Self.mapErrors {
            try await self.eventLoop.runInline { handler.value.write(stream: self, buffers: buffers) }
        }
    }

    /// Half-close: sends FIN after the queued writes. Reading continues until the peer's FIN.
    package func closeWrite() async throws {
        let handler = self.handler
        try await Self.mapErrors {
            try await self.eventLoop.runInline { handler.value.closeWrite(stream: self) }
        }
    }

    /// Aborts the stream in both directions (RST). Queued data is dropped; pending and later
    /// reads throw `.streamReset`, pending writes fail.
    package func reset() {
        let error = YamuxError(.streamReset, "stream \(id) reset locally")
        let (waiter, readHandler) = readState.withLockedValue { s -> (CheckedContinuation<ByteBuffer?, any Error>?, (@Sendable (ReadEvent) -> Void)?) in
            s.buffers.removeAll()
            s.bufferedBytes = 0
            if s.protocolEnded { releaseScope(&s) }
            if case .error = s.end {} else { s.end = .error(error) }
            if s.writeError == nil { s.writeError = error }
            defer { s.waiter = nil }
            return (s.waiter, takeReadHandler(&s, ending: true))
        }
        waiter?.resume(throwing: error)
        if let readHandler {
            // The handler runs on the loop; reset() may be called from anywhere.
            if eventLoop.inEventLoop {
                readHandler(.failure(error))
            } else {
                eventLoop.execute { readHandler(.failure(error)) }
            }
        }
        takeFailureWatcher()?()
        let handler = self.handler
        let id = self.id
        eventLoop.execute { handler.value.resetStream(streamID: id) }
    }

    /// Closes the stream: stops reading and half-closes the write side (`closeWrite()`).
    ///
    /// Data still queued or arriving later is discarded, but still credited, so the peer's
    /// writer never stalls (a stalled py-libp2p writer resets the stream after 5 s). The
    /// stream is released once the peer also sent FIN (or RST); an unexpected amount of data
    /// after close is not treated as an error. Use `reset()` to abort instead. Errors of the
    /// FIN (e.g. the session is gone) are ignored.
    package func close() async {
        let (credit, waiter) = readState.withLockedValue { s -> (UInt32?, CheckedContinuation<ByteBuffer?, any Error>?) in
            guard !s.readClosed else { return (nil, nil) }
            s.readClosed = true
            s.readHandler = nil
            let discarded = s.bufferedBytes
            s.buffers.removeAll()
            s.bufferedBytes = 0
            let credit = discarded > 0 && s.end == nil ? consume(discarded, &s) : nil
            if s.protocolEnded { releaseScope(&s) }
            defer { s.waiter = nil }
            return (credit, s.waiter)
        }
        waiter?.resume(throwing: YamuxError(.streamClosed, "stream \(id) closed"))
        sendCredit(credit)
        try? await closeWrite()
        let handler = self.handler
        let id = self.id
        eventLoop.execute { handler.value.lingerAfterClose(streamID: id) }
    }

    // MARK: Called by the handler on the event loop

    /// Queues data for the reader (or hands it to a waiting one). Returns a credit delta to
    /// send now, if one is due.
    func deliver(_ buffer: ByteBuffer) -> UInt32? {
        let (waiter, readHandler, credit) = readState.withLockedValue {
            s -> (CheckedContinuation<ByteBuffer?, any Error>?, (@Sendable (ReadEvent) -> Void)?, UInt32?) in
            if s.end != nil { return (nil, nil, nil) }
            if s.readClosed {
                return (nil, nil, consume(buffer.readableBytes, &s))
            }
            // (Behind data still queued for a handler being handed it, the new data queues too.)
            if let readHandler = s.readHandler, s.buffers.isEmpty {
                return (nil, readHandler, consume(buffer.readableBytes, &s))
            }
            if let waiter = s.waiter {
                // A reader waits, so nothing is queued: hand the data over directly.
                s.waiter = nil
                return (waiter, nil, consume(buffer.readableBytes, &s))
            }
            s.buffers.append(buffer)
            s.bufferedBytes += buffer.readableBytes
            return (nil, nil, nil)
        }
        waiter?.resume(returning: buffer)
        readHandler?(.data(buffer))
        return credit
    }

    /// The peer sent FIN.
    func remoteFinished() {
        let (waiter, readHandler) = readState.withLockedValue { s -> (CheckedContinuation<ByteBuffer?, any Error>?, (@Sendable (ReadEvent) -> Void)?) in
            if s.end == nil { s.end = .eof }
            guard s.buffers.isEmpty else { return (nil, nil) }
            defer { s.waiter = nil }
            return (s.waiter, takeReadHandler(&s, ending: true))
        }
        waiter?.resume(returning: nil)
        readHandler?(.end)
    }

    /// The stream failed: `discardQueued` (reset) fails the reader right away, otherwise it
    /// first gets the queued data, and keeps its EOF if the peer had finished.
    func fail(_ error: YamuxError, discardQueued: Bool) {
        let (waiter, readHandler, readError) = readState.withLockedValue {
            s -> (CheckedContinuation<ByteBuffer?, any Error>?, (@Sendable (ReadEvent) -> Void)?, YamuxError?) in
            if s.writeError == nil { s.writeError = error }
            if discardQueued {
                s.buffers.removeAll()
                s.bufferedBytes = 0
                if s.protocolEnded { releaseScope(&s) }
                if case .error = s.end {} else { s.end = .error(error) }
            } else if s.end == nil {
                s.end = .error(error)
            }
            guard s.buffers.isEmpty, case .error(let e) = s.end else { return (nil, nil, nil) }
            defer { s.waiter = nil }
            return (s.waiter, takeReadHandler(&s, ending: true), e)
        }
        if let waiter, let readError { waiter.resume(throwing: readError) }
        if let readHandler, let readError { readHandler(.failure(readError)) }
        takeFailureWatcher()?()
    }

    private func takeFailureWatcher() -> (@Sendable () -> Void)? {
        readState.withLockedValue { s in
            defer { s.failureWatcher = nil }
            return s.failureWatcher
        }
    }

    /// Calls `watcher` once when the stream fails (reset by either side, or the session
    /// ended), from the thread that notices; right away if it failed already. Replaces an
    /// earlier watcher; nil removes it. Lets a task notice an abandoned stream without
    /// keeping a read pending (a FIN is not a failure).
    package func setFailureWatcher(_ watcher: (@Sendable () -> Void)?) {
        let failed = readState.withLockedValue { s -> Bool in
            guard s.writeError == nil else {
                s.failureWatcher = nil
                return true
            }
            s.failureWatcher = watcher
            return false
        }
        if failed { watcher?() }
    }

    /// Why writes fail, if the stream ended.
    var terminalWriteError: YamuxError? { readState.withLockedValue { $0.writeError } }

    /// Current receive window (grows with auto-tuning), for tests and diagnostics.
    var receiveWindowSize: UInt32 { readState.withLockedValue { $0.window.windowSize } }

    static func mapErrors<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as YamuxError {
            throw error
        } catch let error as CancellationError {
            throw error
        } catch {
            throw YamuxError(.sessionClosed, cause: error)
        }
    }
}

/// A FIFO that allocates nothing until something is queued (an idle stream holds two of them,
/// where a `CircularBuffer` would allocate its storage up front): an array read from `head`,
/// reset when drained (keeping its storage for the next burst).
struct Queue<Element> {
    private var elements: [Element?] = []
    private var head = 0

    var isEmpty: Bool { head == elements.count }
    var count: Int { elements.count - head }
    var first: Element? { isEmpty ? nil : elements[head] }

    mutating func append(_ element: Element) {
        elements.append(element)
    }

    mutating func popFirst() -> Element? {
        guard head < elements.count else { return nil }
        let element = elements[head].take()
        head += 1
        if head == elements.count {
            elements.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 64 && head * 2 >= elements.count {
            // Compact once the consumed prefix dominates, so a queue never drained stays bounded.
            elements.removeFirst(head)
            head = 0
        }
        return element
    }

    /// Applies `body` to the first element in place. The queue must not be empty.
    mutating func modifyFirst<T>(_ body: (inout Element) -> T) -> T {
        precondition(head < elements.count)
        return body(&elements[head]!)
    }

    /// Empties the queue and frees its storage.
    mutating func removeAll() {
        elements = []
        head = 0
    }

    /// The elements in order.
    var all: [Element] { elements[head...].map { $0! } }
}

extension Queue: Sendable where Element: Sendable {}
