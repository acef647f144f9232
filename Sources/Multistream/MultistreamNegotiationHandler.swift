import NIOCore

/// Runs multistream-select on a channel (the connection upgrade: security, then muxer).
///
/// When negotiation ends the promise succeeds with the protocol; the handler then holds any bytes
/// that came after the last negotiation message until it is removed, and fires them to the handler
/// that replaced it. The usual sequence, done synchronously in the promise's callback on the event
/// loop: add the next handler after this one, then remove this one.
///
/// Optimistic mode (a dialer with one proposal): the promise succeeds as soon as the proposal is
/// sent, so the next protocol's first bytes follow it without waiting a round trip. The handler
/// stays in the pipeline until the listener's answer arrives, checks it, hands on what follows, and
/// removes itself; a refusal closes the channel with the error. Listeners read negotiation messages
/// exactly (go, rust and py-libp2p do), so the early bytes wait for the next protocol's handler.
public final class MultistreamNegotiationHandler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private var negotiator: MultistreamNegotiator
    private let promise: EventLoopPromise<String>
    private var started = false
    private var finished = false
    private var leftover: ByteBuffer?
    private let optimistic: String?
    /// Optimistic mode: the promise succeeded, the listener's answer is still to be checked.
    private var verifying = false
    /// The listener's final answer is written but not flushed yet (see `channelRead`).
    private var answerUnflushed = false

    public init(role: MultistreamNegotiator.Role, promise: EventLoopPromise<String>, optimistic: Bool = false) {
        self.negotiator = MultistreamNegotiator(role: role)
        self.promise = promise
        if optimistic, case .dialer(let proposals) = role, proposals.count == 1 {
            self.optimistic = proposals[0]
        } else {
            self.optimistic = nil
        }
    }

    /// Whether this handler negotiates optimistically (then it removes itself once the answer is
    /// checked; otherwise whoever adds the next handler removes this one).
    public var isOptimistic: Bool { optimistic != nil }

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context: context) }
    }

    public func channelActive(context: ChannelHandlerContext) {
        start(context: context)
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        guard !started else { return }
        started = true
        let bytes = negotiator.start()
        guard !bytes.isEmpty else { return }
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: bytes)), promise: nil)
        if let optimistic {
            finished = true
            verifying = true
            promise.succeed(optimistic)
        }
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        if verifying {
            verify(context: context, bytes)
            return
        }
        if finished {
            leftover.setOrWriteImmutableBuffer(bytes)
            return
        }
        do {
            let step = try negotiator.receive(bytes)
            if let proto = step.negotiated {
                // The final answer is flushed after the promise's callbacks ran: they usually
                // install the next protocol's handler and remove this one, which hands the
                // bytes that followed to it (an optimistic dialer's first Noise message), and
                // its reply then leaves in the same write (one syscall, one segment).
                if !step.send.isEmpty {
                    context.write(wrapOutboundOut(context.channel.allocator.buffer(bytes: step.send)), promise: nil)
                    answerUnflushed = true
                }
                finished = true
                let rest = negotiator.takeLeftover()
                if rest.readableBytes > 0 { leftover.setOrWriteImmutableBuffer(rest) }
                promise.succeed(proto)
                flushAnswer(context: context)
            } else if !step.send.isEmpty {
                context.writeAndFlush(
                    wrapOutboundOut(context.channel.allocator.buffer(bytes: step.send)), promise: nil)
            }
        } catch {
            fail(context: context, error: error)
        }
    }

    private func verify(context: ChannelHandlerContext, _ bytes: ByteBuffer) {
        do {
            let step = try negotiator.receive(bytes)
            guard step.negotiated != nil else { return }
            verifying = false
            let rest = negotiator.takeLeftover()
            if rest.readableBytes > 0 { leftover.setOrWriteImmutableBuffer(rest) }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        } catch {
            verifying = false
            context.fireErrorCaught(error)
            context.close(promise: nil)
        }
    }

    public func channelInactive(context: ChannelHandlerContext) {
        if verifying {
            // The listener hung up instead of confirming (a refusing listener may read our
            // optimistic bytes as garbage and close without its `na`): say so before the next
            // protocol's handler reports a bare EOF.
            verifying = false
            context.fireErrorCaught(
                MultistreamError(.unexpectedEOF, "the listener closed the connection before confirming the protocol"))
        }
        if !finished {
            finished = true
            promise.fail(MultistreamError(.unexpectedEOF, "connection closed during negotiation"))
        }
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: Error) {
        fail(context: context, error: error)
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        if !finished {
            finished = true
            promise.fail(MultistreamError(.unexpectedEOF, "negotiation handler removed before it finished"))
        }
    }

    public func removeHandler(context: ChannelHandlerContext, removalToken: ChannelHandlerContext.RemovalToken) {
        if let rest = leftover, rest.readableBytes > 0 {
            leftover = nil
            context.fireChannelRead(wrapInboundOut(rest))
            context.fireChannelReadComplete()
        }
        flushAnswer(context: context)
        context.leavePipeline(removalToken: removalToken)
    }

    private func flushAnswer(context: ChannelHandlerContext) {
        guard answerUnflushed else { return }
        answerUnflushed = false
        context.flush()
    }

    private func fail(context: ChannelHandlerContext, error: Error) {
        guard !finished else {
            context.fireErrorCaught(error)
            return
        }
        finished = true
        promise.fail(error)
        context.close(promise: nil)
    }
}
