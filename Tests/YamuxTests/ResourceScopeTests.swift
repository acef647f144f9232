import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Resources
import Testing

@testable import Yamux

/// Yamux wired to the resource manager: each stream's scope and initial window are reserved
/// before the stream exists, window growth before it is granted, and all of it released when
/// the stream is gone.
@Suite("Yamux and the resource manager", .timeLimit(.minutes(1)))
struct ResourceScopeTests {
    static let window = Int(YamuxConfiguration.specInitialStreamWindow)

    static func manager(_ configure: (inout ResourceManager.Configuration) -> Void) -> ResourceManager {
        ResourceManager(configuration: .defaults(configure))
    }

    static func session(
        role: YamuxRole, scope: ConnectionScope, configuration: YamuxConfiguration = .testing
    ) throws -> (EmbeddedChannel, YamuxSession) {
        let channel = EmbeddedChannel()
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 4001)).wait()
        let session = try YamuxSession.install(
            on: channel, role: role, configuration: configuration, resourceScope: scope)
        return (channel, session)
    }

    static func frames(_ channel: EmbeddedChannel) throws -> [YamuxFrame] {
        var decoder = YamuxFrameDecoder()
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { decoder.append(buffer) }
        var frames: [YamuxFrame] = []
        while let frame = try decoder.nextFrame() { frames.append(frame) }
        return frames
    }

    @Test("an inbound stream the connection cannot afford is answered with RST and counted; memory comes back")
    func inboundRefusal() throws {
        let manager = Self.manager { $0.perConnection = ScopeLimits(memory: 2 * Self.window) }
        let connection = try manager.openConnection(direction: .inbound, remoteAddress: "127.0.0.2")
        let (channel, session) = try Self.session(role: .responder, scope: connection)
        let held = Holder()
        session.setInboundStreamHandler { held.append($0) }

        var syns = ByteBuffer()
        for id: UInt32 in [1, 3, 5] {
            YamuxFrame.windowUpdate(streamID: id, flags: .syn, delta: 0).encode(into: &syns)
        }
        try channel.writeInbound(syns)
        let frames = try Self.frames(channel)
        #expect(frames.contains(.windowUpdate(streamID: 5, flags: .rst, delta: 0)))
        #expect(!frames.contains(.windowUpdate(streamID: 1, flags: .rst, delta: 0)))
        #expect(session.refusedInboundStreamCount == 1)
        #expect(session.openStreamCount == 2)
        #expect(!session.isClosed)
        #expect(connection.usage.memory == 2 * Self.window)
        #expect(connection.usage.streamsInbound == 2)
        #expect(held.streams.allSatisfy { $0.resourceScope?.usage.memory == Self.window })

        // The peer resets stream 1: its scope is released, and a new stream fits again.
        try channel.writeInbound(YamuxFrame.windowUpdate(streamID: 1, flags: .rst, delta: 0).encoded(allocator: ByteBufferAllocator()))
        #expect(connection.usage.memory == Self.window)
        #expect(connection.usage.streamsInbound == 1)
        try channel.writeInbound(YamuxFrame.windowUpdate(streamID: 7, flags: .syn, delta: 0).encoded(allocator: ByteBufferAllocator()))
        #expect(!(try Self.frames(channel)).contains { $0.flags.contains(.rst) })
        #expect(session.openStreamCount == 2)

        // The session ends: everything is released.
        _ = try? channel.finish()
        #expect(session.isClosed)
        #expect(connection.usage.memory == 0)
        #expect(connection.usage.streams == 0)
    }

    @Test("a stream's queued data keeps its scope until the reader has taken it")
    func scopeHeldUntilDrained() async throws {
        let manager = Self.manager { _ in }
        let connection = try manager.openConnection(direction: .inbound, remoteAddress: "127.0.0.2")
        let (channel, session) = try Self.session(role: .responder, scope: connection)
        let held = Holder()
        session.setInboundStreamHandler { held.append($0) }
        var frames = ByteBuffer()
        YamuxFrame.data(streamID: 1, flags: .syn, payload: ByteBuffer(string: "last words")).encode(into: &frames)
        YamuxFrame.windowUpdate(streamID: 1, flags: .rst, delta: 0).encode(into: &frames)
        try channel.writeInbound(frames)
        let stream = try #require(held.streams.first)
        #expect(session.openStreamCount == 0)
        #expect(connection.usage.streamsInbound == 1)
        #expect(stream.takeAvailable() == ByteBuffer(string: "last words"))
        #expect(connection.usage.streamsInbound == 0)
        #expect(connection.usage.memory == 0)
        _ = try? channel.finish()
    }

    @Test("openStream throws resourceLimit when the scope refuses, and the refusal holds nothing")
    func outboundRefusal() throws {
        let manager = Self.manager { $0.perConnection = ScopeLimits(streamsOutbound: 1) }
        let connection = try manager.openConnection(direction: .outbound)
        let (channel, session) = try Self.session(role: .initiator, scope: connection)
        let opened = Holder()
        let failure = NIOLockedValueBox<(any Error)?>(nil)
        for _ in 0..<2 {
            session.handler.value.openStream().whenComplete { result in
                switch result {
                case .success(let stream): opened.append(stream)
                case .failure(let error): failure.withLockedValue { $0 = error }
                }
            }
        }
        #expect(opened.count == 1)
        let error = try #require(failure.withLockedValue { $0 } as? YamuxError)
        #expect(error.code == .resourceLimit)
        #expect(error.resourceError?.code == .streamsOutbound)
        #expect(connection.usage.streamsOutbound == 1)
        #expect(connection.usage.memory == Self.window)
        #expect(opened.streams.first?.resourceScope?.usage.memory == Self.window)

        // Reset locally: released, and the next open succeeds.
        opened.streams[0].reset()
        channel.embeddedEventLoop.run()
        #expect(connection.usage.streamsOutbound == 0)
        #expect(connection.usage.memory == 0)
        session.handler.value.openStream().whenSuccess { opened.append($0) }
        #expect(opened.count == 2)
        _ = try? channel.finish()
    }

    @Test("window growth is reserved in the stream's scope first, and not granted when refused")
    func windowGrowth() throws {
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        let fast = TimeAmount.milliseconds(1)
        let kib = 1024
        let manager = Self.manager { $0.perStream = ScopeLimits(memory: 3 * Self.window) }
        let connection = try manager.openConnection(direction: .outbound)
        let scope = try connection.openStream(direction: .outbound)
        try scope.reserveMemory(Self.window)
        var window = YamuxReceiveWindow(initialWindow: UInt32(Self.window), maxWindow: 16 << 20, now: start)
        // 256 KiB → 512 KiB: reserved (512 KiB of the stream's 768 KiB now held).
        #expect(window.consumed(128 * kib, now: start + fast, rtt: nil, account: scope) == UInt32(128 * kib + 256 * kib))
        #expect(window.windowSize == UInt32(512 * kib))
        #expect(scope.usage.memory == 512 * kib)
        // 512 KiB → 1 MiB would need 512 KiB more than the 256 KiB left: refused, the window stays.
        #expect(window.consumed(256 * kib, now: start + fast * 2, rtt: nil, account: scope) == UInt32(256 * kib))
        #expect(window.windowSize == UInt32(512 * kib))
        #expect(scope.usage.memory == 512 * kib)
        scope.done()
        #expect(connection.usage.memory == 0)
    }
}

