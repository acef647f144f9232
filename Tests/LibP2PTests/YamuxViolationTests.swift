import Multistream
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Noise
import PointSub
import Testing

/// Collects plaintext from the secured channel and notices when the host closes it.
private final class Collector: ChannelInboundHandler, @unchecked Sendable {
    // Event-loop confined; @unchecked only so the test can hold it across the loop boundary.
    typealias InboundIn = ByteBuffer
    let closed: EventLoopPromise<Void>
    init(closed: EventLoopPromise<Void>) { self.closed = closed }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
    func channelInactive(context: ChannelHandlerContext) { closed.succeed() }
}

/// Dials `server` and runs multistream `/noise` → Noise → multistream `/yamux/1.0.0` by hand, but
/// installs no Yamux session: the test then writes raw (encrypted) Yamux frames of its choosing.
private func securedChannelWithoutMuxer(to server: P2PHost) async throws -> (Channel, EventLoopFuture<Void>) {
    let identity = PrivateKey.generateEd25519()
    let ready = NIOLockedValueBox<EventLoopFuture<Void>?>(nil)
    let closed = NIOLockedValueBox<EventLoopFuture<Void>?>(nil)
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .channelInitializer { channel in
            let loop = channel.eventLoop
            let securityDone = loop.makePromise(of: String.self)
            let security = NIOLoopBound(
                MultistreamNegotiationHandler(role: .dialer(proposals: ["/noise"]), promise: securityDone), eventLoop: loop)
            let closedPromise = loop.makePromise(of: Void.self)
            closed.withLockedValue { $0 = closedPromise.futureResult }
            let done = securityDone.futureResult.flatMapThrowing { _ -> EventLoopFuture<NoiseHandshakeResult> in
                let noiseDone = loop.makePromise(of: NoiseHandshakeResult.self)
                try channel.pipeline.syncOperations.addHandler(
                    NoiseHandler(handshake: try NoiseLibp2pHandshake(role: .initiator, identity: identity), promise: noiseDone),
                    position: .after(security.value))
                _ = channel.pipeline.syncOperations.removeHandler(security.value)
                return noiseDone.futureResult
            }.flatMap { $0 }.flatMapThrowing { _ -> EventLoopFuture<Void> in
                let muxDone = loop.makePromise(of: String.self)
                let muxer = NIOLoopBound(
                    MultistreamNegotiationHandler(role: .dialer(proposals: ["/yamux/1.0.0"]), promise: muxDone), eventLoop: loop)
                try channel.pipeline.syncOperations.addHandler(muxer.value)
                return muxDone.futureResult.flatMapThrowing { _ in
                    try channel.pipeline.syncOperations.addHandler(Collector(closed: closedPromise))
                    _ = channel.pipeline.syncOperations.removeHandler(muxer.value)
                }
            }.flatMap { $0 }
            ready.withLockedValue { $0 = done }
            return loop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(security.value) }
        }
        .connect(to: try server.addresses[0].removingPeerID().socketAddress()).get()
    try await ready.withLockedValue { $0! }.get()
    return (channel, closed.withLockedValue { $0! })
}

private func header(type: UInt8, flags: UInt16, stream: UInt32, length: UInt32) -> ByteBuffer {
    var b = ByteBuffer()
    b.writeInteger(UInt8(0))
    b.writeInteger(type)
    b.writeInteger(flags)
    b.writeInteger(stream)
    b.writeInteger(length)
    return b
}

/// The first connection-closed event that carries an error.
private func firstConnectionError(_ events: AsyncStream<HostEvent>) async -> (any Error)? {
    for await event in events {
        if case .connectionClosed(_, let error?) = event { return error }
    }
    return nil
}

@Suite(.timeLimit(.minutes(2)))
struct YamuxViolationTests {
    func expectViolation(_ frames: [ByteBuffer], codes: Set<YamuxError.Code>) async throws {
        try await withHost(configuration: listeningConfig()) { server in
            try await withHost { bystander in
                _ = try await bystander.connect(to: server.addresses[0])
                let events = server.events()
                let (channel, closed) = try await securedChannelWithoutMuxer(to: server)
                for frame in frames { try await channel.writeAndFlush(frame) }
                try await closed.get()  // the host hangs up on us
                let error = await firstConnectionError(events)
                let code = (error as? YamuxError)?.code
                #expect(code.map { codes.contains($0) } == true, "\(String(describing: error))")
                // Everyone else is unaffected.
                #expect(try await echo(bystander, to: server.peerID, "fine") == "fine")
            }
        }
    }

    @Test func unknownFrameType() async throws {
        try await expectViolation([header(type: 7, flags: 0, stream: 0, length: 0)], codes: [.unknownFrameType, .protocolError])
    }

    @Test func dataBeyondTheWindow() async throws {
        var data = header(type: 0, flags: 1, stream: 1, length: 300 * 1024)  // SYN + 300 KiB > 256 KiB window
        data.writeRepeatingByte(0x42, count: 300 * 1024)
        try await expectViolation([data], codes: [.windowExceeded, .protocolError])
    }

    @Test func frameOverTheSizeLimit() async throws {
        let open = header(type: 1, flags: 1, stream: 1, length: 0)
        let huge = header(type: 0, flags: 0, stream: 1, length: 100 << 20)
        try await expectViolation([open, huge], codes: [.frameTooLarge, .windowExceeded, .protocolError])
    }

    @Test func wrongParityStreamID() async throws {
        // We dialed, so we are the initiator and must use odd IDs.
        try await expectViolation([header(type: 1, flags: 1, stream: 2, length: 0)], codes: [.invalidStreamID, .protocolError])
    }
}
