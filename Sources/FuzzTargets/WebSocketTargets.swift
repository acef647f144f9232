#if DEBUG || FUZZING
    import Basics
    import NIOConcurrencyHelpers
    import NIOCore
    import NIOEmbedded
    import NIOHTTP1
    import NIOWebSocket
    @testable import Transport

    /// A memory account with a limit that counts what is outstanding, for the WebSocket targets.
    final class FuzzMemory: Sendable {
        private struct State {
            var outstanding = 0
            var peak = 0
            var refusals = 0
            var overReleased = false
        }

        private let state = NIOLockedValueBox(State())
        let limit: Int

        init(limit: Int) { self.limit = limit }

        var outstanding: Int { state.withLockedValue { $0.outstanding } }
        var peak: Int { state.withLockedValue { $0.peak } }
        var refusals: Int { state.withLockedValue { $0.refusals } }
        var overReleased: Bool { state.withLockedValue { $0.overReleased } }

        var memory: TransportMemory {
            TransportMemory(
                reserve: { bytes in
                    try self.state.withLockedValue { s in
                        guard bytes >= 0, s.outstanding + bytes <= self.limit else {
                            s.refusals += 1
                            throw TransportError(.resourceLimit, "fuzz memory limit")
                        }
                        s.outstanding += bytes
                        s.peak = max(s.peak, s.outstanding)
                    }
                },
                release: { bytes in
                    self.state.withLockedValue { s in
                        s.outstanding -= bytes
                        if s.outstanding < 0 || bytes < 0 { s.overReleased = true }
                    }
                })
        }
    }

    /// Last in a fuzzed pipeline: counts the bytes delivered and the errors that reach the end.
    final class FuzzSink: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer

        var delivered = 0
        var deliveredAfterFailure = false
        var transportErrors: [TransportError] = []

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if !transportErrors.isEmpty { deliveredAfterFailure = true }
            delivered += unwrapInboundIn(data).readableBytes
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            if let error = error as? TransportError { transportErrors.append(error) }
        }
    }

    extension FuzzTargets {
        /// The byte bounds the WebSocket targets pick from (small ones, so that the limits are
        /// reachable with short inputs).
        static let webSocketFrameSizes = [126, 1024, 4096, 1 << 20]
        static let webSocketMemoryLimits = [Int.max, 0, 256, 4096]

        /// Drops everything the pipeline wrote (HTTP responses, pongs, close frames), bounded. An
        /// element of another type than asked for is consumed too (the HTTP encoder writes
        /// `IOData`).
        private static func drainOutbound(_ channel: EmbeddedChannel) {
            for _ in 0..<10_000 {
                do {
                    guard try channel.readOutbound(as: ByteBuffer.self) != nil else { return }
                } catch {
                    continue
                }
            }
        }

        /// The frame path of an upgraded WebSocket connection, as the transport builds it: NIO's
        /// frame decoder (with a fuzzed size limit) between our frame accounting and our frame
        /// handler (the policy), either role, fed in random chunks, with a memory account of a
        /// fuzzed limit.
        static func fuzzWebSocketFrames(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
            var reader = FuzzReader(input)
            let control = reader.byte()
            let chunkMode = reader.byte()
            let role: WebSocketFramePolicy.Role = control & 1 == 0 ? .server : .client
            let maxFrameSize = webSocketFrameSizes[Int(control >> 1) & 3]
            let account = FuzzMemory(limit: webSocketMemoryLimits[Int(control >> 3) & 3])
            let body = reader.rest()
            let channel = EmbeddedChannel()
            let sink = FuzzSink()
            do {
                let sync = channel.pipeline.syncOperations
                try sync.addHandler(WebSocketFrameEncoder())
                try sync.addHandler(ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: maxFrameSize)))
                try WebSocketTransport.addFrameHandlers(
                    sync, role: role, maxFrameSize: maxFrameSize, maxOutboundFrameSize: 512, memory: account.memory)
                try sync.addHandler(sink)
                try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            } catch {
                try check(false, "cannot build the frame pipeline: \(error)")
            }
            var fed = 0
            for piece in chunks(body, mode: chunkMode) {
                guard channel.isActive else { break }
                fed += piece.count
                _ = try? channel.writeInbound(ByteBuffer(bytes: piece))
                channel.embeddedEventLoop.run()
                drainOutbound(channel)
                // Between reads at most one frame (header and payload) is held.
                try check(account.outstanding <= maxFrameSize + 14, "\(account.outstanding) bytes reserved between reads")
            }
            try check(sink.delivered <= fed, "delivered \(sink.delivered) bytes of \(fed)")
            try check(!sink.deliveredAfterFailure, "bytes delivered after the connection failed")
            try check(account.peak <= 2 * (maxFrameSize + 14), "peak reservation \(account.peak)")
            if account.refusals > 0 {
                try check(!channel.isActive, "a refused reservation left the connection open")
                try check(sink.transportErrors.contains { $0.code == .resourceLimit }, "a refusal without its error")
            }
            if !sink.transportErrors.isEmpty {
                try check(!channel.isActive, "a failed connection stays open")
            }
            _ = try? channel.finish()
            drainOutbound(channel)
            try check(!account.overReleased, "released more than was reserved")
            try check(account.outstanding == 0, "\(account.outstanding) bytes still reserved after the close")
        }

        /// The fixed Sec-WebSocket-Key the client side sends (RFC 6455 §1.3's example), so that
        /// seeds can hold a matching Sec-WebSocket-Accept.
        static let webSocketFuzzKey = "dGhlIHNhbXBsZSBub25jZQ=="

        /// The HTTP upgrade of either side, as the transport builds it (the guard bounding bytes,
        /// time and memory, NIO's HTTP codec and WebSocket upgrader, our refusal or requester),
        /// fed the peer's bytes in random chunks, then possibly past the deadline; whatever
        /// follows a completed upgrade goes through the frame path.
        static func fuzzWebSocketUpgrade(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
            var reader = FuzzReader(input)
            let control = reader.byte()
            let chunkMode = reader.byte()
            let client = control & 1 == 1
            let maxUpgradeBytes = [1024, 4096, 16 * 1024][Int(control >> 1) % 3]
            let account = FuzzMemory(limit: webSocketMemoryLimits[Int(control >> 3) & 3])
            let pastDeadline = control & 0x20 != 0
            let body = reader.rest()
            let loop = EmbeddedEventLoop()
            let channel = EmbeddedChannel(loop: loop)
            let sink = NIOLoopBound(FuzzSink(), eventLoop: loop)
            let transport = WebSocketTransport(group: loop, maxFrameSize: 4096, maxUpgradeBytes: maxUpgradeBytes)
            // Relative to the embedded loop's clock when the guard schedules its timer.
            let deadline = Deadline.after(.seconds(10))
            let upgrades = NIOLockedValueBox(0)
            let upgraded = loop.makePromise(of: Void.self)
            do {
                if client {
                    try transport.configureDialed(
                        channel, tls: nil, serverName: nil, host: "example.com:80", deadline: deadline,
                        timeoutError: TransportError(.dialTimeout, "timed out"), memory: account.memory,
                        requestKey: webSocketFuzzKey, upgraded: upgraded
                    ) { channel in
                        upgrades.withLockedValue { $0 += 1 }
                        return channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(sink.value) }
                    }
                } else {
                    try transport.configureAccepted(channel, tls: nil, deadline: deadline, memory: account.memory) { channel in
                        upgrades.withLockedValue { $0 += 1 }
                        return channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(sink.value) }
                    }
                }
                try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            } catch {
                upgraded.fail(error)
                try check(false, "cannot build the upgrade pipeline: \(error)")
            }
            loop.run()
            drainOutbound(channel)
            var fed = 0
            for piece in chunks(body, mode: chunkMode) {
                guard channel.isActive else { break }
                fed += piece.count
                _ = try? channel.writeInbound(ByteBuffer(bytes: piece))
                // The upgrade completes through tasks NIO's handlers hand to the event loop.
                loop.run()
                drainOutbound(channel)
                try check(account.outstanding <= max(maxUpgradeBytes, 4096 + 14), "\(account.outstanding) bytes reserved")
            }
            let upgradedCount = upgrades.withLockedValue { $0 }
            try check(upgradedCount <= 1, "upgraded \(upgradedCount) times")
            try check(sink.value.delivered <= fed, "delivered \(sink.value.delivered) bytes of \(fed)")
            if account.refusals > 0 && upgradedCount == 0 {
                try check(!channel.isActive, "a refused reservation left the upgrade open")
            }
            if pastDeadline {
                loop.advanceTime(by: .seconds(11))
                drainOutbound(channel)
                try check(upgradedCount == 1 || !channel.isActive, "the upgrade outlived its deadline")
            }
            _ = try? channel.finish()
            drainOutbound(channel)
            upgraded.fail(TransportError(.handshakeFailed, "fuzz run over"))  // no-op if completed
            try check(!account.overReleased, "released more than was reserved")
            try check(account.outstanding == 0, "\(account.outstanding) bytes still reserved after the close")
            try? loop.syncShutdownGracefully()
        }
    }

    extension FuzzTargets {
        /// A WebSocket frame as a peer sends it (RFC 6455 §5.2), masked with a fixed key if `masked`.
        static func webSocketFrame(_ opcode: UInt8, fin: Bool = true, masked: Bool, _ payload: [UInt8]) -> [UInt8] {
            var bytes: [UInt8] = [(fin ? 0x80 : 0) | opcode]
            let maskBit: UInt8 = masked ? 0x80 : 0
            switch payload.count {
            case ..<126: bytes.append(maskBit | UInt8(payload.count))
            case ..<65536: bytes += [maskBit | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
            default: bytes += [maskBit | 127] + (0..<8).reversed().map { UInt8((payload.count >> ($0 * 8)) & 0xFF) }
            }
            guard masked else { return bytes + payload }
            let key: [UInt8] = [0x37, 0xFA, 0x21, 0x3D]
            return bytes + key + payload.enumerated().map { $0.element ^ key[$0.offset % 4] }
        }

        /// Seeds of the two WebSocket targets: frames of both roles (data, fragments, control,
        /// violations, over the size and the memory limit); upgrade requests and responses.
        static func webSocketSeeds(for target: FuzzTarget) -> [[UInt8]] {
            let hello = Array("/multistream/1.0.0\n".utf8)
            let big = [UInt8](repeating: 0x42, count: 600)
            let close: [UInt8] = [0x03, 0xE8]
            switch target {
            case .webSocketFrames:
                return [
                    // server role, 126-byte frames, unlimited memory, whole input at once
                    [0x00, 0x00] + webSocketFrame(0x2, masked: true, hello) + webSocketFrame(0x9, masked: true, [0x70])
                        + webSocketFrame(0x8, masked: true, close),
                    // server, 1024, a fragmented message in one-byte reads
                    [0x02, 0x01] + webSocketFrame(0x2, fin: false, masked: true, Array(big[..<300]))
                        + webSocketFrame(0x0, masked: true, Array(big[..<200])),
                    // client role (unmasked frames), a pong
                    [0x01, 0x02] + webSocketFrame(0x2, masked: false, hello) + webSocketFrame(0xA, masked: false, []),
                    // server, 1024, memory limit 256, a 600-byte frame in small reads: refused
                    [0x12, 0x02] + webSocketFrame(0x2, masked: true, big),
                    // server, 1 MiB, memory limit 4096, 3000 bytes in 512-byte reads
                    [0x1E, 0x03] + webSocketFrame(0x2, masked: true, [UInt8](repeating: 7, count: 3000)),
                    // violations: a text frame, an unmasked client frame, a frame over 126 bytes
                    [0x00, 0x00] + webSocketFrame(0x1, masked: true, hello),
                    [0x00, 0x00] + webSocketFrame(0x2, masked: false, hello),
                    [0x00, 0x02] + webSocketFrame(0x2, masked: true, Array(big[..<200])),
                ]
            case .webSocketUpgrade:
                let request = Array(
                    ("GET / HTTP/1.1\r\nHost: example.com:80\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        + "Sec-WebSocket-Key: \(webSocketFuzzKey)\r\nSec-WebSocket-Version: 13\r\n\r\n").utf8)
                let response = Array(
                    ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        + "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n").utf8)
                return [
                    // server: an upgrade, then frames in the same read
                    [0x00, 0x00] + request + webSocketFrame(0x2, masked: true, hello),
                    // server, in 16-byte reads, memory limit 256
                    [0x10, 0x02] + request + webSocketFrame(0x2, masked: true, big),
                    // server: no upgrade (400), and a request cut short past the deadline
                    [0x00, 0x00] + Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8),
                    [0x20, 0x01] + Array(request[..<40]),
                    // server: no memory at all
                    [0x08, 0x00] + request,
                    // client: 101 with the right accept, then the server's first bytes
                    [0x01, 0x00] + response + webSocketFrame(0x2, masked: false, hello),
                    [0x01, 0x03] + response + webSocketFrame(0x2, masked: false, big),
                    // client: refused, and a wrong accept
                    [0x01, 0x00] + Array("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".utf8),
                    [0x21, 0x00] + Array(String(decoding: response, as: UTF8.self).replacingOccurrences(of: "s3pP", with: "AAAA").utf8),
                ]
            default:
                return []
            }
        }
    }
#endif
