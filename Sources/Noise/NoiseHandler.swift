import Identity
import NIOCore

/// Secures a channel with the libp2p Noise handshake, then encrypts and decrypts transport messages.
///
/// Wire framing (libp2p noise spec): every handshake and transport message is prefixed with a 2-byte
/// big-endian length, so a message is at most 65535 bytes, i.e. 65519 bytes of plaintext + 16-byte tag.
/// Inbound: ciphertext in, plaintext out. Outbound: plaintext in, ciphertext out. Writes made during
/// the handshake are held and sent once it completes.
///
/// Flushes asked for while the handler is processing a read (its own handshake replies, and
/// whatever the handlers above write in response to the plaintext it fires, such as the next
/// multistream step, Yamux ACKs and pings) are held and done once when the read has been
/// handled: the dialer's third handshake message, its muxer proposal and the first Yamux frames
/// then leave in one write (one syscall) instead of one each.
public final class NoiseHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    public static let maxMessageLength = Int(UInt16.max)
    public static let maxPlaintextLength = maxMessageLength - NoiseCipherState.tagLength

    private enum State {
        case handshaking(NoiseLibp2pHandshake)
        case transport(send: NoiseCipherState, receive: NoiseCipherState)
        case failed
    }

    private var state: State
    private var inbound = ByteBuffer()
    /// The rest of the read being handled, after the message completed in `inbound`.
    private var remainder = ByteBuffer()
    private var pendingWrites: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    /// Small transport writes wait here until the next flush (or until a Noise message is full)
    /// and are sealed together: with many streams writing between two flushes, one AEAD call and
    /// one frame instead of one per write. Writes of `coalescingLimit` bytes or more are sealed
    /// directly (copying them first would cost more than the call saves).
    private var coalesced = ByteBuffer()
    private var coalescedPromises: [EventLoopPromise<Void>] = []
    static let coalescingLimit = 16 * 1024
    private var pendingFlush = false
    /// Inside `channelRead`: flushes are deferred to its end (see the type's documentation).
    private var reading = false
    /// A flush was deferred while `reading`.
    private var flushAfterRead = false
    private var started = false
    private let handshakePromise: EventLoopPromise<NoiseHandshakeResult>

    public init(handshake: NoiseLibp2pHandshake, promise: EventLoopPromise<NoiseHandshakeResult>) {
        self.state = .handshaking(handshake)
        self.handshakePromise = promise
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context: context) }
    }

    public func channelActive(context: ChannelHandlerContext) {
        start(context: context)
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        guard !started, case .handshaking(var handshake) = state else { return }
        started = true
        do {
            if let first = try handshake.start() {
                state = .handshaking(handshake)
                writeHandshakeMessage(first, context: context)
            }
        } catch {
            fail(context: context, error: error)
        }
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // A read arriving while one is handled (fired from a callback) joins its flush.
        if reading {
            handleRead(context: context, data: data, reentrant: true)
            return
        }
        reading = true
        handleRead(context: context, data: data, reentrant: false)
        reading = false
        if flushAfterRead {
            flushAfterRead = false
            sealCoalesced(context: context)
            context.flush()
        }
    }

    private func handleRead(context: ChannelHandlerContext, data: NIOAny, reentrant: Bool) {
        var bytes = unwrapInboundIn(data)
        if reentrant {
            // Bytes arriving while a read is handled go after everything not yet processed.
            if remainder.readableBytes > 0 {
                remainder.writeBuffer(&bytes)
            } else if inbound.readableBytes == 0 {
                inbound = bytes
            } else {
                inbound.writeBuffer(&bytes)
            }
        } else if inbound.readableBytes == 0 {
            inbound = bytes
        } else {
            // A message is held from earlier reads: complete it with only the bytes it lacks and
            // process the rest of this read where it is. (Appending the whole read would copy
            // every byte once, since large messages nearly always straddle two reads.)
            if inbound.readableBytes < 2 {
                var lengthBytes = bytes.readSlice(length: min(2 - inbound.readableBytes, bytes.readableBytes))!
                inbound.writeBuffer(&lengthBytes)
            }
            if let length = inbound.getInteger(at: inbound.readerIndex, as: UInt16.self) {
                let missing = 2 + Int(length) - inbound.readableBytes
                if missing > 0 {
                    var part = bytes.readSlice(length: min(missing, bytes.readableBytes))!
                    inbound.writeBuffer(&part)
                }
            }
            remainder = bytes
        }
        var plaintext: ByteBuffer?
        do {
            while true {
                let capacity = inbound.readableBytes + remainder.readableBytes
                guard try processInbound(context: context, plaintext: &plaintext, capacity: capacity) else { return }
                guard remainder.readableBytes > 0 else { break }
                if inbound.readableBytes == 0 {
                    inbound = remainder
                } else {
                    inbound.writeBuffer(&remainder)
                }
                remainder = ByteBuffer()
            }
        } catch {
            if let plaintext, plaintext.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(plaintext)) }
            fail(context: context, error: error)
            return
        }
        if inbound.readableBytes == 0 {
            inbound.clear()
        } else if inbound.readerIndex > 65536 {
            inbound.discardReadBytes()
        }
        if let plaintext, plaintext.readableBytes > 0 {
            context.fireChannelRead(wrapInboundOut(plaintext))
        }
    }

    /// Handles the complete messages in `inbound`, appending transport plaintext to `plaintext`.
    /// False when the channel failed meanwhile (stop reading).
    private func processInbound(context: ChannelHandlerContext, plaintext: inout ByteBuffer?, capacity: Int) throws -> Bool {
        while let length = inbound.getInteger(at: inbound.readerIndex, as: UInt16.self),
            inbound.readableBytes >= 2 + Int(length)
        {
            inbound.moveReaderIndex(forwardBy: 2)
            switch state {
            case .failed:
                return false
            case .handshaking(var handshake):
                let message = inbound.readBytes(length: Int(length))!
                let reply = try handshake.receive(message)
                state = .handshaking(handshake)
                if let reply { writeHandshakeMessage(reply, context: context) }
                if handshake.hasDeferredSignature {
                    // Message 3 leaves before we check the responder's signature (see
                    // NoiseLibp2pHandshake.receive), so the two sides' checks overlap.
                    context.flush()
                    try handshake.verifyDeferredSignature()
                    state = .handshaking(handshake)
                }
                if let result = handshake.result {
                    let (send, receive) = handshake.split()
                    state = .transport(send: send, receive: receive)
                    flushPendingWrites(context: context)
                    handshakePromise.succeed(result)
                }
            case .transport(let send, var receive):
                if plaintext == nil { plaintext = context.channel.allocator.buffer(capacity: capacity) }
                let start = inbound.readerIndex
                try inbound.withUnsafeReadableBytes { raw in
                    try receive.open(UnsafeRawBufferPointer(rebasing: raw[..<Int(length)]), into: &plaintext!)
                }
                inbound.moveReaderIndex(to: start + Int(length))
                state = .transport(send: send, receive: receive)
            }
        }
        return true
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        if case .transport = state { context.fireChannelReadComplete() }
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let buffer = unwrapOutboundIn(data)
        switch state {
        case .handshaking:
            pendingWrites.append((buffer, promise))
        case .failed:
            promise?.fail(NoiseError(.connectionClosed, "secure channel failed"))
        case .transport:
            write(buffer, promise: promise, context: context)
        }
    }

    public func flush(context: ChannelHandlerContext) {
        if case .handshaking = state {
            pendingFlush = true
        } else if reading {
            flushAfterRead = true
        } else {
            sealCoalesced(context: context)
            context.flush()
        }
    }

    // Re-entrancy: `context.write` can call back into this handler (a writability change makes
    // Yamux flush or send more frames). So every path seals and updates `coalesced` first and
    // writes last; otherwise bytes could be sealed twice or a later frame overtake an earlier one.
    private func write(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?, context: ChannelHandlerContext) {
        let size = buffer.readableBytes
        guard size > 0 else {
            promise?.succeed()
            return
        }
        if size >= Self.coalescingLimit {
            let pending = takeCoalesced(context: context)
            guard let out = seal(buffer, promise: promise, context: context) else { return }
            if let pending { context.write(wrapOutboundOut(pending.0), promise: pending.1) }
            context.write(wrapOutboundOut(out), promise: promise)
            return
        }
        let full = coalesced.readableBytes + size > Self.maxPlaintextLength ? takeCoalesced(context: context) : nil
        if coalesced.capacity == 0 { coalesced = context.channel.allocator.buffer(capacity: Self.coalescingLimit) }
        coalesced.writeImmutableBuffer(buffer)
        if let promise { coalescedPromises.append(promise) }
        if let full { context.write(wrapOutboundOut(full.0), promise: full.1) }
    }

    /// Seals the coalesced writes as one transport message and writes it.
    private func sealCoalesced(context: ChannelHandlerContext) {
        guard let (out, promise) = takeCoalesced(context: context) else { return }
        context.write(wrapOutboundOut(out), promise: promise)
    }

    /// The coalesced writes sealed as one transport message, with a promise that completes theirs;
    /// the buffer is left empty. Nil when nothing is waiting (or sealing failed the channel).
    private func takeCoalesced(context: ChannelHandlerContext) -> (ByteBuffer, EventLoopPromise<Void>?)? {
        guard coalesced.readableBytes > 0 else { return nil }
        let promise: EventLoopPromise<Void>?
        switch coalescedPromises.count {
        case 0: promise = nil
        case 1: promise = coalescedPromises[0]
        default:
            let combined = context.eventLoop.makePromise(of: Void.self)
            for waiting in coalescedPromises { combined.futureResult.cascade(to: waiting) }
            promise = combined
        }
        coalescedPromises.removeAll(keepingCapacity: true)
        let out = seal(coalesced, promise: promise, context: context)
        coalesced.clear()
        return out.map { ($0, promise) }
    }

    private func failCoalesced(_ error: Error) {
        coalesced.clear()
        let promises = coalescedPromises
        coalescedPromises.removeAll()
        for promise in promises { promise.fail(error) }
    }

    public func channelInactive(context: ChannelHandlerContext) {
        failCoalesced(NoiseError(.connectionClosed, "connection closed"))
        if case .handshaking = state {
            state = .failed
            let error = NoiseError(.connectionClosed, "connection closed during the Noise handshake")
            handshakePromise.fail(error)
            failPendingWrites(error)
        }
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: Error) {
        if case .handshaking = state {
            fail(context: context, error: error)
        } else {
            context.fireErrorCaught(error)
        }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        failCoalesced(NoiseError(.connectionClosed, "Noise handler removed"))
        if case .handshaking = state {
            state = .failed
            handshakePromise.fail(NoiseError(.connectionClosed, "Noise handler removed during the handshake"))
        }
    }

    // MARK: - Helpers

    private func writeHandshakeMessage(_ message: [UInt8], context: ChannelHandlerContext) {
        var out = context.channel.allocator.buffer(capacity: message.count + 2)
        out.writeInteger(UInt16(message.count))
        out.writeBytes(message)
        context.write(wrapOutboundOut(out), promise: nil)
        if reading {
            flushAfterRead = true
        } else {
            context.flush()
        }
    }

    /// Encrypts `buffer` as as many transport messages as needed, in one outbound buffer.
    /// An empty write sends nothing: py-libp2p drops the connection on a zero-length Noise message.
    private func writeEncrypted(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?, context: ChannelHandlerContext) {
        guard buffer.readableBytes > 0 else {
            promise?.succeed()
            return
        }
        guard let out = seal(buffer, promise: promise, context: context) else { return }
        context.write(wrapOutboundOut(out), promise: promise)
    }

    /// The transport messages for `buffer`; nil (promise failed, channel failing) on error.
    private func seal(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?, context: ChannelHandlerContext) -> ByteBuffer? {
        guard case .transport(var send, let receive) = state else {
            promise?.fail(NoiseError(.connectionClosed, "secure channel failed"))
            return nil
        }
        let chunks = (buffer.readableBytes + Self.maxPlaintextLength - 1) / Self.maxPlaintextLength
        var out = context.channel.allocator.buffer(
            capacity: buffer.readableBytes + chunks * (2 + NoiseCipherState.tagLength))
        do {
            try buffer.withUnsafeReadableBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let n = min(Self.maxPlaintextLength, raw.count - offset)
                    out.writeInteger(UInt16(n + NoiseCipherState.tagLength))
                    try send.seal(UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + n)]), into: &out)
                    offset += n
                }
            }
        } catch {
            promise?.fail(error)
            fail(context: context, error: error)
            return nil
        }
        state = .transport(send: send, receive: receive)
        return out
    }

    private func flushPendingWrites(context: ChannelHandlerContext) {
        let writes = pendingWrites
        pendingWrites = []
        for (buffer, promise) in writes { write(buffer, promise: promise, context: context) }
        if pendingFlush || !writes.isEmpty {
            pendingFlush = false
            if reading {
                flushAfterRead = true
            } else {
                sealCoalesced(context: context)
                context.flush()
            }
        }
    }

    private func failPendingWrites(_ error: Error) {
        let writes = pendingWrites
        pendingWrites = []
        for (_, promise) in writes { promise?.fail(error) }
    }

    private func fail(context: ChannelHandlerContext, error: Error) {
        if case .failed = state { return }
        let wasHandshaking: Bool
        if case .handshaking = state { wasHandshaking = true } else { wasHandshaking = false }
        state = .failed
        failPendingWrites(error)
        failCoalesced(error)
        if wasHandshaking { handshakePromise.fail(error) }
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }
}
