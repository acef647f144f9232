import Basics
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// Between the WebSocket frame codec and the libp2p handlers: binary frames in, their payload
/// out as `ByteBuffer`s; `ByteBuffer`s in, binary frames out (masked on the client side, RFC
/// 6455 §5.3). Answers pings, closes on a close frame, and fails the connection with a
/// ``TransportError`` (after a close frame with a status code) on any frame
/// ``WebSocketFramePolicy`` rejects or that the frame decoder refused (e.g. over its size limit).
public final class WebSocketFrameHandler: ChannelDuplexHandler, RemovableChannelHandler {
    /// Decoded frames.
    public typealias InboundIn = WebSocketFrame
    /// The libp2p bytes.
    public typealias InboundOut = ByteBuffer
    /// The libp2p bytes to send.
    public typealias OutboundIn = ByteBuffer
    /// Frames to encode.
    public typealias OutboundOut = WebSocketFrame

    private var policy: WebSocketFramePolicy
    private let maxFrameSize: Int
    private let maxOutboundFrameSize: Int
    private var closeSent = false

    /// A handler for one connection. `maxFrameSize`: the decoder's limit (for the error message); `maxOutboundFrameSize`:
    /// larger writes are cut into frames of at most this size.
    public init(role: WebSocketFramePolicy.Role, maxFrameSize: Int, maxOutboundFrameSize: Int) {
        self.policy = WebSocketFramePolicy(role: role)
        self.maxFrameSize = maxFrameSize
        self.maxOutboundFrameSize = max(1, maxOutboundFrameSize)
    }

    private var maskKey: WebSocketMaskingKey? {
        policy.role == .client ? .random() : nil
    }

    /// Applies the policy to a received frame.
    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        apply(policy.receive(unwrapInboundIn(data)), context: context)
    }

    /// Turns the frame decoder's errors into a failed connection; passes others on.
    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? NIOWebSocketError {
            apply(policy.receiveDecoderError(error, maxFrameSize: maxFrameSize), context: context)
        } else {
            context.fireErrorCaught(error)
        }
    }

    private func apply(_ action: WebSocketFramePolicy.Action, context: ChannelHandlerContext) {
        switch action {
        case .deliver(let bytes):
            if bytes.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(bytes)) }
        case .pong(let payload):
            guard !closeSent else { return }
            let frame = WebSocketFrame(fin: true, opcode: .pong, maskKey: maskKey, data: payload)
            context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
        case .ignore:
            break
        case .close(let code):
            sendClose(code, context: context)
            context.close(promise: nil)
        case .fail(let error, let code):
            sendClose(code, context: context)
            context.fireErrorCaught(error)
            context.close(promise: nil)
        }
    }

    /// Sends our close frame (once); `code` nil: an empty close frame.
    private func sendClose(_ code: WebSocketErrorCode?, context: ChannelHandlerContext) {
        guard !closeSent, context.channel.isActive else { return }
        closeSent = true
        var payload = context.channel.allocator.buffer(capacity: 2)
        if let code { payload.write(webSocketErrorCode: code) }
        let frame = WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: maskKey, data: payload)
        context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
    }

    /// Sends bytes as binary frames.
    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard !closeSent else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        var bytes = unwrapOutboundIn(data)
        while bytes.readableBytes > maxOutboundFrameSize, let chunk = bytes.readSlice(length: maxOutboundFrameSize) {
            let frame = WebSocketFrame(fin: true, opcode: .binary, maskKey: maskKey, data: chunk)
            context.write(wrapOutboundOut(frame), promise: nil)
        }
        let frame = WebSocketFrame(fin: true, opcode: .binary, maskKey: maskKey, data: bytes)
        context.write(wrapOutboundOut(frame), promise: promise)
    }

    /// Sends a close frame first when the whole channel closes.
    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        // A clean WebSocket close starts with a close frame (RFC 6455 §7.1.2); best effort.
        if mode == .all { sendClose(.normalClosure, context: context) }
        context.close(mode: mode, promise: promise)
    }
}

/// First in the pipeline until the HTTP upgrade is done: bounds the upgrade's bytes and time.
/// Over `maxBytes` received, or past `deadline`, it fires its error and closes the connection,
/// so a silent, slow or chatty peer cannot hold a socket. Removed once the upgrade finished.
final class WebSocketUpgradeGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// The handler's name in the pipeline.
    static let name = "websocket-upgrade-guard"

    private let maxBytes: Int
    private let deadline: Deadline
    private let timeoutError: TransportError
    private var received = 0
    private var timer: Scheduled<Void>?
    private var tripped = false

    init(maxBytes: Int, deadline: Deadline, timeoutError: TransportError) {
        self.maxBytes = maxBytes
        self.deadline = deadline
        self.timeoutError = timeoutError
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let error = timeoutError
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: deadline.timeAmount) { [self] in
            self.trip(error, context: context)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !tripped else { return }
        received += unwrapInboundIn(data).readableBytes
        if received > maxBytes {
            let what = "HTTP upgrade over \(maxBytes) bytes"
            trip(TransportError(.handshakeFailed, "WebSocket: \(what)", reason: what), context: context)
            return
        }
        context.fireChannelRead(data)
    }

    private func trip(_ error: TransportError, context: ChannelHandlerContext) {
        guard !tripped else { return }
        tripped = true
        timer?.cancel()
        timer = nil
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }
}

/// Server side, after NIO's HTTP upgrade handler: a request that did not upgrade to WebSocket
/// (no or a malformed upgrade, another protocol) gets "400 Bad Request" and the connection is
/// closed; an HTTP parse error closes it too. Removed when the upgrade starts.
final class WebSocketUpgradeRefusal: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    /// The handler's name in the pipeline.
    static let name = "websocket-upgrade-refusal"

    private var answered = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !answered else { return }
        answered = true
        var headers = HTTPHeaders()
        headers.add(name: "Connection", value: "close")
        headers.add(name: "Content-Length", value: "0")
        let head = HTTPResponseHead(version: .http1_1, status: .badRequest, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
        let what = "HTTP request without a WebSocket upgrade"
        context.fireErrorCaught(TransportError(.handshakeFailed, "WebSocket: \(what)", reason: what))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // HTTPServerProtocolErrorHandler already answered a parse error with 400: close. An
        // upgrader's refusal (e.g. no Sec-WebSocket-Key) comes before the request itself, which
        // then gets its 400 in channelRead; the guard closes on its own errors.
        context.fireErrorCaught(error)
        if error is HTTPParserError { context.close(promise: nil) }
    }
}

/// Client side, after NIO's HTTP client upgrade handler: sends the upgrade request once the
/// connection is up, and fails `upgraded` if the upgrade does not happen (another answer than
/// 101, an error, the connection closed, the guard's deadline). Removed when the upgrade starts.
final class WebSocketUpgradeRequester: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    /// The handler's name in the pipeline.
    static let name = "websocket-upgrade-requester"

    private let host: String
    private let path: String
    private let upgraded: EventLoopPromise<Void>

    init(host: String, path: String, upgraded: EventLoopPromise<Void>) {
        self.host = host
        self.path = path
        self.upgraded = upgraded
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { sendRequest(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        sendRequest(context: context)
        context.fireChannelActive()
    }

    private var sent = false

    private func sendRequest(context: ChannelHandlerContext) {
        guard !sent else { return }
        sent = true
        var headers = HTTPHeaders()
        // RFC 6455 §4.1: Host is required; NIO's upgrader adds Upgrade, Connection,
        // Sec-WebSocket-Key and Sec-WebSocket-Version.
        headers.add(name: "Host", value: host)
        headers.add(name: "Content-Length", value: "0")
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Only a response that did not upgrade gets here.
        if case .head(let head) = unwrapInboundIn(data) {
            let what = "the server answered \(head.status.code) \(head.status.reasonPhrase) instead of 101"
            fail(TransportError(.handshakeFailed, "WebSocket: \(what)", reason: what), context: context)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? TransportError {
            fail(error, context: context)
        } else {
            fail(
                TransportError(.handshakeFailed, "WebSocket: upgrade failed", reason: "\(error)", cause: error),
                context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        let what = "connection closed during the HTTP upgrade"
        upgraded.fail(TransportError(.handshakeFailed, "WebSocket: \(what)", reason: what))
        context.fireChannelInactive()
    }

    private func fail(_ error: TransportError, context: ChannelHandlerContext) {
        upgraded.fail(error)
        context.close(promise: nil)
    }
}

/// Connections of one listener whose HTTP upgrade is still under way, bounded so that many
/// half-open upgrades cannot exhaust the host's sockets.
final class PendingUpgrades: Sendable {
    private let count = NIOLockedValueBox(0)
    let limit: Int

    init(limit: Int) {
        self.limit = limit
    }

    /// A slot, or nil at the limit. Release it once (later calls do nothing).
    func enter() -> Slot? {
        let entered = count.withLockedValue { count -> Bool in
            guard count < limit else { return false }
            count += 1
            return true
        }
        return entered ? Slot(owner: self) : nil
    }

    /// The number of upgrades under way.
    var current: Int { count.withLockedValue { $0 } }

    /// One upgrade under way.
    final class Slot: Sendable {
        private let owner: PendingUpgrades
        private let released = NIOLockedValueBox(false)

        fileprivate init(owner: PendingUpgrades) {
            self.owner = owner
        }

        /// Frees the slot (idempotent).
        func release() {
            let first = released.withLockedValue { released -> Bool in
                defer { released = true }
                return !released
            }
            if first { owner.count.withLockedValue { $0 -= 1 } }
        }
    }
}
