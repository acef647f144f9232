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
///
/// What it lets through, the HTTP decoder buffers until the head is complete: each read is
/// charged to `memory` before it is handed on (a refusal fails the connection with
/// ``TransportError/Code/resourceLimit``), and all of it is released when the guard goes (the
/// upgrade done, or the connection closed).
final class WebSocketUpgradeGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// The handler's name in the pipeline.
    static let name = "websocket-upgrade-guard"

    private let maxBytes: Int
    private let deadline: Deadline
    private let timeoutError: TransportError
    private let memory: TransportMemory?
    private var received = 0
    private var reserved = 0
    private var timer: Scheduled<Void>?
    private var tripped = false

    /// Bytes reserved now (for checks).
    var reservedBytes: Int { reserved }

    init(maxBytes: Int, deadline: Deadline, timeoutError: TransportError, memory: TransportMemory? = nil) {
        self.maxBytes = maxBytes
        self.deadline = deadline
        self.timeoutError = timeoutError
        self.memory = memory
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
        releaseAll()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        releaseAll()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !tripped else { return }
        let count = unwrapInboundIn(data).readableBytes
        received += count
        if received > maxBytes {
            let what = "HTTP upgrade over \(maxBytes) bytes"
            trip(TransportError(.handshakeFailed, "WebSocket: \(what)", reason: what), context: context)
            return
        }
        if let memory, count > 0 {
            do {
                try memory.reserve(count)
                reserved += count
            } catch {
                let what = "no memory for the HTTP upgrade (\(error))"
                trip(TransportError(.resourceLimit, "WebSocket: \(what)", reason: "\(error)"), context: context)
                return
            }
        }
        context.fireChannelRead(data)
    }

    private func releaseAll() {
        if reserved > 0 { memory?.release(reserved) }
        reserved = 0
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

/// Just before the frame decoder: charges each frame the decoder will hold across reads to the
/// connection's ``TransportMemory`` before the decoder buffers it, and releases it once the frame
/// was decoded and handed on. It follows frame boundaries by reading each frame header
/// (RFC 6455 §5.2: 2 bytes, then a 16- or 64-bit extended length for the codes 126 and 127, then
/// a 4-byte masking key if the mask bit is set); the decoder itself is left to judge the frame.
///
/// A frame that arrives whole within one read is never held across reads and costs no
/// reservation (one lock less per frame on the fast path). A frame still incomplete at the end
/// of a read is reserved in full (header and payload, at most ``maxFrameSize`` plus 14) before
/// its first bytes go to the decoder; a refusal fails the connection with
/// ``TransportError/Code/resourceLimit`` and closes it, the bytes never reach the decoder. A
/// frame over the limit is not reserved: the decoder refuses it at its header. A partial header
/// (at most 13 bytes) is not charged.
final class WebSocketFrameAccounting: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// The handler's name in the pipeline.
    static let name = "websocket-frame-accounting"

    private var memory: TransportMemory?
    private let maxFrameSize: Int
    /// The header of the frame being read, while it is incomplete.
    private var header: [UInt8] = []
    /// Payload bytes of the current frame still to come (0: between frames or in a header).
    private var remaining = 0
    /// The current frame's size (header and payload).
    private var frameSize = 0
    /// What is reserved for the current frame, and where.
    private var reservation: (bytes: Int, memory: TransportMemory)?
    /// A frame over the limit was seen: the decoder fails the connection, nothing more is tracked.
    private var untracked = false
    private var failed = false

    /// Bytes reserved now (for checks).
    var reservedBytes: Int { reservation?.bytes ?? 0 }

    init(memory: TransportMemory?, maxFrameSize: Int) {
        self.memory = memory
        self.maxFrameSize = maxFrameSize
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        let buffer = unwrapInboundIn(data)
        // Frame boundaries are followed even without an account: one may be assigned mid-stream.
        guard !untracked else {
            context.fireChannelRead(data)
            return
        }
        // Where the frames end within this read: a reservation made for a frame that completes
        // here is released once the decoder has handed the frame on.
        var completedReserved: (bytes: Int, memory: TransportMemory)?
        buffer.withUnsafeReadableBytes { bytes in
            var index = 0
            while index < bytes.count && !untracked {
                if remaining > 0 {
                    let take = min(remaining, bytes.count - index)
                    remaining -= take
                    index += take
                    if remaining == 0 { completedReserved = finishFrame() ?? completedReserved }
                    continue
                }
                header.append(bytes[index])
                index += 1
                readHeader()
                if remaining == 0 && header.isEmpty && frameSize > 0 {
                    completedReserved = finishFrame() ?? completedReserved
                }
            }
        }
        // A frame the decoder will hold past this read: reserve it before handing on its bytes.
        if remaining > 0, reservation == nil, let memory {
            do {
                try memory.reserve(frameSize)
                reservation = (frameSize, memory)
            } catch {
                if let completedReserved { completedReserved.memory.release(completedReserved.bytes) }
                fail(error, context: context)
                return
            }
        }
        context.fireChannelRead(data)
        if let completedReserved { completedReserved.memory.release(completedReserved.bytes) }
    }

    /// Parses `header` once it is complete: sets `remaining` and `frameSize` and empties it.
    private func readHeader() {
        guard header.count >= 2 else { return }
        let masked = header[1] & 0x80 != 0
        let lengthCode = Int(header[1] & 0x7F)
        let extended = lengthCode == 126 ? 2 : lengthCode == 127 ? 8 : 0
        let headerSize = 2 + extended + (masked ? 4 : 0)
        guard header.count == headerSize else { return }
        var length: UInt64 = UInt64(lengthCode)
        if extended > 0 {
            length = header[2..<(2 + extended)].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        }
        header.removeAll(keepingCapacity: true)
        guard length <= UInt64(maxFrameSize) else {
            // The decoder refuses it (invalidFrameLength) and the connection fails.
            untracked = true
            return
        }
        remaining = Int(length)
        frameSize = headerSize + Int(length)
    }

    /// The current frame is complete: returns its reservation (to release after handing on).
    private func finishFrame() -> (bytes: Int, memory: TransportMemory)? {
        frameSize = 0
        defer { reservation = nil }
        return reservation
    }

    private func fail(_ error: any Error, context: ChannelHandlerContext) {
        failed = true
        let what = "no memory for a frame of \(frameSize) bytes (\(error))"
        context.fireErrorCaught(TransportError(.resourceLimit, "WebSocket: \(what)", reason: "\(error)"))
        context.close(promise: nil)
    }

    /// Takes a connection's account from a ``TransportMemory/Assignment``; passes every event on.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let assignment = event as? TransportMemory.Assignment { memory = assignment.memory }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        releaseAll()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        releaseAll()
    }

    private func releaseAll() {
        if let reservation { reservation.memory.release(reservation.bytes) }
        reservation = nil
    }
}
