import Multiformats
import NIOConcurrencyHelpers
import NIOCore

/// One end of an in-process byte pipe: a NIO `Channel` whose writes arrive, as `ByteBuffer`s, in
/// the pipeline of its peer (the other end of the pair). No file descriptor or socket is involved,
/// so an in-process network of thousands of connections costs only memory.
///
/// Each end lives on its own event loop (the two may be the same); all of its state is confined
/// to that loop, and everything that crosses to the peer (data, acknowledgements of data read,
/// closure) is handed over with `eventLoop.execute`, which keeps it in order.
///
/// Behaviour, as a TCP channel of NIOPosix:
/// - `channelRegistered` / `channelActive` when ``activate()`` runs (the in-memory transport does
///   this after the connection initializer, or the listener's acceptor, has set the pipeline up).
/// - Reads: data is delivered only when the channel has asked to read (`read()`, issued
///   automatically after each read burst while `autoRead` is on): up to `maxMessagesPerRead`
///   `channelRead`s (one per buffer the peer flushed), then `channelReadComplete`. Until then it
///   waits in this end's inbound queue.
/// - Back-pressure: bytes written and not yet delivered to the peer's pipeline count against the
///   writer's `writeBufferWaterMark` (32 KiB / 64 KiB by default): above `high` the writer turns
///   unwritable, below `low` writable again, each time with `channelWritabilityChanged`. A write's
///   promise succeeds when it is flushed to the peer.
/// - `close()` (mode `.all`) fails this end's unflushed writes, fires `channelInactive` and
///   `channelUnregistered`, then completes `closeFuture`. The peer receives what was flushed
///   before the close and then closes too (its pending writes fail with `ChannelError.eof`).
/// - Half-closure: `close(mode: .output)` flushes, then sends an end of stream after the data.
///   The peer reads the data first; then, with `allowRemoteHalfClosure`, it gets the
///   `ChannelEvent.inputClosed` user event and may keep writing, and without it, it closes.
///   `close(mode: .input)` is not supported (`ChannelError.operationUnsupported`).
/// - At an end of stream or a close, what the peer sent before it is delivered at once, whether
///   or not this end asked to read, as NIOPosix does when it sees EOF (`readEOF0` reads until
///   the EOF): a reader that never reads again cannot keep a closed connection open.
/// - Options: `autoRead`, `allowRemoteHalfClosure`, `writeBufferWaterMark` and
///   `maxMessagesPerRead`; any other fails with `ChannelError.operationUnsupported`.
/// - Only `ByteBuffer`s can be written; anything else fails its write with
///   `ChannelError.operationUnsupported`.
/// - `localAddress` and `remoteAddress` are nil (there is no socket address); the ends' `/memory/…`
///   multiaddrs are ``localMultiaddress`` and ``remoteMultiaddress`` (and `Channel.localMultiaddr`).
public final class MemoryChannel: Channel, ChannelCore, @unchecked Sendable {
    // @unchecked Sendable: every `var` below except `shared` is read and written only on
    // `eventLoop` (checked with preconditions on the entry points); `shared` is locked.

    /// What the peer sends over, in order.
    private enum Inbound {
        case data(ByteBuffer)
        /// The peer closed its output (`close(mode: .output)`) after the data before this.
        case endOfStream
    }

    /// The flags other threads read (`isActive`, `isWritable`).
    private struct SharedFlags {
        var active = false
        var writable = true
    }

    /// The event loop this end runs on.
    public let eventLoop: any EventLoop
    /// The allocator handlers use for the buffers they write.
    public let allocator = ByteBufferAllocator()
    private let closePromise: EventLoopPromise<Void>
    private var _pipeline: ChannelPipeline!
    private let shared = NIOLockedValueBox(SharedFlags())

    /// The other end; nil once this end is closed.
    private var peer: MemoryChannel?
    private var open = true
    private var registered = false
    private var active = false
    private var writable = true
    private var outputClosed = false
    private var inputClosed = false

    // Options.
    private var autoRead = true
    private var allowRemoteHalfClosure = false
    private var waterMark = ChannelOptions.Types.WriteBufferWaterMark(low: 32 * 1024, high: 64 * 1024)
    private var maxMessagesPerRead: UInt = 16

    /// Written, not yet flushed.
    private var pending = CircularBuffer<(ByteBuffer, EventLoopPromise<Void>?)>()
    /// Bytes written by this end that the peer's pipeline has not received yet (counts against
    /// the water mark).
    private var unreadBytes = 0
    /// What the peer sent and this end's pipeline has not read yet.
    private var inbound = CircularBuffer<Inbound>()
    private var readPending = false
    private var deliveryScheduled = false

    /// This end's address (`/memory/<n>`), if the pair was made with one.
    public let localMultiaddress: Multiaddr?
    /// The other end's address (`/memory/<n>`), if the pair was made with one.
    public let remoteMultiaddress: Multiaddr?

    private init(eventLoop: any EventLoop, local: Multiaddr?, remote: Multiaddr?) {
        self.eventLoop = eventLoop
        self.localMultiaddress = local
        self.remoteMultiaddress = remote
        self.closePromise = eventLoop.makePromise()
        self._pipeline = ChannelPipeline(channel: self)
    }

    /// A connected pair of channels, the first on `first`, the second on `second` (may be the same
    /// loop). Neither is registered or active yet: set each one's pipeline up, then call
    /// ``activate()`` on it. Data the other end sends meanwhile waits until this end is active and
    /// reads. `firstAddress`, `secondAddress`: each end's own address (``localMultiaddress``).
    public static func makePair(
        _ first: any EventLoop, _ second: any EventLoop, firstAddress: Multiaddr? = nil, secondAddress: Multiaddr? = nil
    ) -> (MemoryChannel, MemoryChannel) {
        let a = MemoryChannel(eventLoop: first, local: firstAddress, remote: secondAddress)
        let b = MemoryChannel(eventLoop: second, local: secondAddress, remote: firstAddress)
        // Set before either is published to another thread; afterwards only each one's loop
        // touches its `peer`.
        a.peer = b
        b.peer = a
        return (a, b)
    }

    /// Registers this end and makes it active (`channelRegistered`, `channelActive`, then a first
    /// read when `autoRead` is on). Fails with `ChannelError.ioOnClosedChannel` if it was closed
    /// meanwhile (for example by its peer).
    public func activate() -> EventLoopFuture<Void> {
        if eventLoop.inEventLoop {
            return eventLoop.makeCompletedFuture { try activate0() }
        }
        return eventLoop.submit { try self.activate0() }
    }

    private func activate0() throws {
        eventLoop.preconditionInEventLoop()
        guard open else { throw ChannelError.ioOnClosedChannel }
        guard !active else { return }
        if !registered {
            registered = true
            pipeline.syncOperations.fireChannelRegistered()
            guard open else { throw ChannelError.ioOnClosedChannel }
        }
        active = true
        shared.withLockedValue { $0.active = true }
        pipeline.syncOperations.fireChannelActive()
        readIfNeeded()
        if inbound.contains(where: { if case .endOfStream = $0 { true } else { false } }) {
            // The peer ended its output before this end was active.
            eventLoop.execute { self.drainThroughEndOfStream() }
        }
    }

    // MARK: - Channel

    /// The channel's pipeline.
    public var pipeline: ChannelPipeline { _pipeline }
    /// Completes once the channel is closed and its handlers are removed.
    public var closeFuture: EventLoopFuture<Void> { closePromise.futureResult }
    /// Always nil: there is no socket address (see ``localMultiaddress``).
    public var localAddress: SocketAddress? { nil }
    /// Always nil: there is no socket address (see the transport's `RemoteEndpoint`).
    public var remoteAddress: SocketAddress? { nil }
    /// Always nil.
    public var parent: (any Channel)? { nil }
    /// False while the bytes written and not yet read by the peer exceed the high water mark
    /// (until they drop below the low one).
    public var isWritable: Bool { shared.withLockedValue { $0.writable } }
    /// True from ``activate()`` until the channel closes.
    public var isActive: Bool { shared.withLockedValue { $0.active } }
    /// The channel itself.
    public var _channelCore: any ChannelCore { self }

    /// Sets an option (see the type's documentation for the supported ones).
    public func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) -> EventLoopFuture<Void> {
        if eventLoop.inEventLoop {
            return eventLoop.makeCompletedFuture { try setOption0(option, value: value) }
        }
        return eventLoop.submit { try self.setOption0(option, value: value) }
    }

    /// Reads an option (see the type's documentation for the supported ones).
    public func getOption<Option: ChannelOption>(_ option: Option) -> EventLoopFuture<Option.Value> {
        if eventLoop.inEventLoop {
            return eventLoop.makeCompletedFuture { try getOption0(option) }
        }
        return eventLoop.submit { try self.getOption0(option) }
    }

    /// Options set and read synchronously, on the event loop.
    public var syncOptions: (any NIOSynchronousChannelOptions)? { SynchronousOptions(channel: self) }

    private struct SynchronousOptions: NIOSynchronousChannelOptions {
        let channel: MemoryChannel

        func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) throws {
            try channel.setOption0(option, value: value)
        }

        func getOption<Option: ChannelOption>(_ option: Option) throws -> Option.Value {
            try channel.getOption0(option)
        }
    }

    private func setOption0<Option: ChannelOption>(_ option: Option, value: Option.Value) throws {
        eventLoop.preconditionInEventLoop()
        guard open else { throw ChannelError.ioOnClosedChannel }
        switch option {
        case is ChannelOptions.Types.AutoReadOption:
            let wasOn = autoRead
            autoRead = value as! Bool
            if autoRead && !wasOn {
                readIfNeeded()
            } else if !autoRead && wasOn {
                // Reading stops until the next explicit read().
                readPending = false
            }
        case is ChannelOptions.Types.AllowRemoteHalfClosureOption:
            allowRemoteHalfClosure = value as! Bool
        case is ChannelOptions.Types.WriteBufferWaterMarkOption:
            let mark = value as! ChannelOptions.Types.WriteBufferWaterMark
            waterMark = mark
            updateWritability()
        case is ChannelOptions.Types.MaxMessagesPerReadOption:
            maxMessagesPerRead = max(1, value as! UInt)
        default:
            throw ChannelError.operationUnsupported
        }
    }

    private func getOption0<Option: ChannelOption>(_ option: Option) throws -> Option.Value {
        eventLoop.preconditionInEventLoop()
        guard open else { throw ChannelError.ioOnClosedChannel }
        switch option {
        case is ChannelOptions.Types.AutoReadOption: return autoRead as! Option.Value
        case is ChannelOptions.Types.AllowRemoteHalfClosureOption: return allowRemoteHalfClosure as! Option.Value
        case is ChannelOptions.Types.WriteBufferWaterMarkOption: return waterMark as! Option.Value
        case is ChannelOptions.Types.MaxMessagesPerReadOption: return maxMessagesPerRead as! Option.Value
        default: throw ChannelError.operationUnsupported
        }
    }

    // MARK: - ChannelCore

    /// Throws `ChannelError.operationUnsupported`: there is no socket address.
    public func localAddress0() throws -> SocketAddress { throw ChannelError.operationUnsupported }

    /// Throws `ChannelError.operationUnsupported`: there is no socket address.
    public func remoteAddress0() throws -> SocketAddress { throw ChannelError.operationUnsupported }

    /// Registers the channel (`channelRegistered`); ``activate()`` does it too.
    public func register0(promise: EventLoopPromise<Void>?) {
        eventLoop.preconditionInEventLoop()
        guard open else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        guard !registered else {
            promise?.fail(ChannelError.inappropriateOperationForState)
            return
        }
        registered = true
        promise?.succeed(())
        pipeline.syncOperations.fireChannelRegistered()
    }

    /// Registers the channel and makes it active (``activate()``).
    public func registerAlreadyConfigured0(promise: EventLoopPromise<Void>?) {
        eventLoop.preconditionInEventLoop()
        do {
            try activate0()
            promise?.succeed(())
        } catch {
            promise?.fail(error)
        }
    }

    /// Fails with `ChannelError.operationUnsupported`: the pair is connected when it is made.
    public func bind0(to: SocketAddress, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    /// Fails with `ChannelError.operationUnsupported`: the pair is connected when it is made.
    public func connect0(to: SocketAddress, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    /// Queues a `ByteBuffer` until the next flush.
    public func write0(_ data: NIOAny, promise: EventLoopPromise<Void>?) {
        eventLoop.preconditionInEventLoop()
        guard open else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        guard !outputClosed else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        guard let buffer = tryUnwrapData(data, as: ByteBuffer.self) else {
            promise?.fail(ChannelError.operationUnsupported)
            return
        }
        pending.append((buffer, promise))
        unreadBytes += buffer.readableBytes
        updateWritability()
    }

    /// Hands everything written so far to the peer and succeeds the writes' promises.
    public func flush0() {
        eventLoop.preconditionInEventLoop()
        guard open, !pending.isEmpty, let peer else { return }
        let flushed = pending
        pending.removeAll(keepingCapacity: true)
        let buffers = flushed.map(\.0)
        peer.eventLoop.execute { peer.receive(buffers) }
        // Promise callbacks may write again; `pending` is already empty for them.
        for (_, promise) in flushed { promise?.succeed(()) }
    }

    /// Asks for data: the next read burst is delivered on a later turn of the event loop.
    public func read0() {
        eventLoop.preconditionInEventLoop()
        guard open, !inputClosed else { return }
        readPending = true
        scheduleDeliveryIfNeeded()
    }

    /// Closes the channel (`.all`) or its output (`.output`); `.input` is not supported.
    public func close0(error: any Error, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        eventLoop.preconditionInEventLoop()
        guard open else {
            promise?.fail(ChannelError.alreadyClosed)
            return
        }
        switch mode {
        case .all:
            closeAll(error: error, promise: promise)
        case .output:
            guard !outputClosed else {
                promise?.fail(ChannelError.outputClosed)
                return
            }
            if inputClosed {
                closeAll(error: error, promise: promise)
                return
            }
            flush0()
            outputClosed = true
            if let peer { peer.eventLoop.execute { peer.receiveEndOfStream() } }
            promise?.succeed(())
            pipeline.syncOperations.fireUserInboundEventTriggered(ChannelEvent.outputClosed)
        case .input:
            promise?.fail(ChannelError.operationUnsupported)
        }
    }

    /// Fails with `ChannelError.operationUnsupported`: there are no outbound user events.
    public func triggerUserOutboundEvent0(_ event: Any, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    /// Data no handler consumed: dropped.
    public func channelRead0(_ data: NIOAny) {}

    /// An error no handler consumed: dropped (as NIOPosix's channels do).
    public func errorCaught0(error: any Error) {}

    // MARK: - Internals

    private func closeAll(error: any Error, promise: EventLoopPromise<Void>?) {
        open = false
        let wasActive = active
        active = false
        inputClosed = true
        outputClosed = true
        shared.withLockedValue { $0.active = false }
        inbound.removeAll()
        readPending = false
        let failed = pending
        pending.removeAll()
        if let peer {
            self.peer = nil
            peer.eventLoop.execute { peer.receiveClose() }
        }
        for (_, writePromise) in failed { writePromise?.fail(error) }
        promise?.succeed(())
        if wasActive { pipeline.syncOperations.fireChannelInactive() }
        if registered { pipeline.syncOperations.fireChannelUnregistered() }
        eventLoop.execute {
            // Later, as NIOPosix does: handlers may still be walking the pipeline now.
            self.removeHandlers(pipeline: self.pipeline)
            self.closePromise.succeed(())
        }
    }

    private func updateWritability() {
        if writable, unreadBytes > waterMark.high {
            writable = false
        } else if !writable, unreadBytes < waterMark.low {
            writable = true
        } else {
            return
        }
        let now = writable
        shared.withLockedValue { $0.writable = now }
        pipeline.syncOperations.fireChannelWritabilityChanged()
    }

    private func readIfNeeded() {
        if open, active, autoRead, !readPending, !inputClosed {
            pipeline.syncOperations.read()
        }
    }

    private func scheduleDeliveryIfNeeded() {
        guard readPending, active, !inbound.isEmpty, !deliveryScheduled else { return }
        deliveryScheduled = true
        eventLoop.execute { self.deliveryTurn() }
    }

    private func deliveryTurn() {
        deliveryScheduled = false
        deliver()
    }

    /// One read burst, if this end has asked to read and has something to read.
    private func deliver() {
        guard open, active, readPending, let head = inbound.first else { return }
        if case .endOfStream = head {
            inbound.removeFirst()
            handleEndOfStream()
            return
        }
        readPending = false
        var bytes = 0
        var count: UInt = 0
        while open, count < maxMessagesPerRead, case .data(let buffer)? = inbound.first {
            inbound.removeFirst()
            bytes += buffer.readableBytes
            count += 1
            pipeline.syncOperations.fireChannelRead(NIOAny(buffer))
        }
        acknowledge(bytes)
        guard open else { return }
        pipeline.syncOperations.fireChannelReadComplete()
        readIfNeeded()
        scheduleDeliveryIfNeeded()
    }

    private func acknowledge(_ bytes: Int) {
        guard bytes > 0, let peer else { return }
        peer.eventLoop.execute { peer.peerRead(bytes) }
    }

    private func handleEndOfStream() {
        if allowRemoteHalfClosure && !outputClosed {
            inputClosed = true
            readPending = false
            pipeline.syncOperations.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        } else {
            closeAll(error: ChannelError.eof, promise: nil)
        }
    }

    // Called on this end's loop by the peer.

    private func receive(_ buffers: [ByteBuffer]) {
        guard open, !inputClosed else { return }
        for buffer in buffers { inbound.append(.data(buffer)) }
        if !deliveryScheduled { deliver() }
    }

    /// The peer closed its output: once active, this end reads up to the end of stream at once.
    private func receiveEndOfStream() {
        guard open, !inputClosed else { return }
        inbound.append(.endOfStream)
        if active { drainThroughEndOfStream() }
    }

    private func drainThroughEndOfStream() {
        guard open, active, !inputClosed else { return }
        deliverAll(throughEndOfStream: true)
        if open { handleEndOfStream() }
    }

    /// Delivers the queued data up to the first end of stream (removed too) or, if there is none
    /// or `throughEndOfStream` is false, all of it; one `channelReadComplete` after it.
    private func deliverAll(throughEndOfStream: Bool) {
        var bytes = 0
        var delivered = false
        while open, let item = inbound.popFirst() {
            guard case .data(let buffer) = item else {
                if throughEndOfStream { break } else { continue }
            }
            bytes += buffer.readableBytes
            delivered = true
            pipeline.syncOperations.fireChannelRead(NIOAny(buffer))
        }
        acknowledge(bytes)
        if open && delivered { pipeline.syncOperations.fireChannelReadComplete() }
    }

    /// The peer closed completely: what it sent before is delivered now (see the type's
    /// documentation), then this end closes.
    private func receiveClose() {
        guard open else { return }
        peer = nil
        if active { deliverAll(throughEndOfStream: false) }
        guard open else { return }
        closeAll(error: ChannelError.eof, promise: nil)
    }

    /// The peer's pipeline received `bytes` this end wrote.
    private func peerRead(_ bytes: Int) {
        guard open else { return }
        unreadBytes -= bytes
        updateWritability()
    }
}

extension MemoryChannel: CustomStringConvertible {
    /// "MemoryChannel" and the object's identity.
    public var description: String { "MemoryChannel(\(ObjectIdentifier(self)))" }
}
