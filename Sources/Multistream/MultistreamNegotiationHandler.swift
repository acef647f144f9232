import NIOCore

/// Runs multistream-select on a channel (the connection upgrade: security, then muxer).
///
/// When negotiation ends the promise succeeds with the protocol; the handler then holds any bytes
/// that came after the last negotiation message until it is removed, and fires them to the handler
/// that replaced it. The usual sequence, done synchronously in the promise's callback on the event
/// loop: add the next handler after this one, then remove this one.
public final class MultistreamNegotiationHandler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private var negotiator: MultistreamNegotiator
    private let promise: EventLoopPromise<String>
    private var started = false
    private var finished = false
    private var leftover: ByteBuffer?

    public init(role: MultistreamNegotiator.Role, promise: EventLoopPromise<String>) {
        self.negotiator = MultistreamNegotiator(role: role)
        self.promise = promise
    }

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
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        if finished {
            leftover.setOrWriteImmutableBuffer(bytes)
            return
        }
        do {
            let step = try negotiator.receive(bytes)
            if !step.send.isEmpty {
                context.writeAndFlush(
                    wrapOutboundOut(context.channel.allocator.buffer(bytes: step.send)), promise: nil)
            }
            if let proto = step.negotiated {
                finished = true
                let rest = negotiator.takeLeftover()
                if rest.readableBytes > 0 { leftover.setOrWriteImmutableBuffer(rest) }
                promise.succeed(proto)
            }
        } catch {
            fail(context: context, error: error)
        }
    }

    public func channelInactive(context: ChannelHandlerContext) {
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
        context.leavePipeline(removalToken: removalToken)
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
