import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOPosix
import Resources
import Testing

@testable import Yamux

/// Holds flushes asked for while it fires a read until that read has been handled, as
/// `NoiseHandler` does (so that replies to one read leave in one write).
final class FlushHoldingHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer

    private var reading = false
    private var flushAfterRead = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        reading = true
        context.fireChannelRead(data)
        reading = false
        if flushAfterRead {
            flushAfterRead = false
            context.flush()
        }
    }

    func flush(context: ChannelHandlerContext) {
        if reading {
            flushAfterRead = true
        } else {
            context.flush()
        }
    }
}

@Suite("Yamux under attack: bounded replies, discarded payloads, GoAway before close", .timeLimit(.minutes(1)))
struct HardeningTests {
    /// Runs `body` with a one-thread event loop group, shut down afterwards.
    static func withGroup(_ body: (MultiThreadedEventLoopGroup) async throws -> Void) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            try await body(group)
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        try await group.shutdownGracefully()
    }

    @Test("GoAway(protocol error) reaches the peer before EOF, behind a handler that holds flushes during its read as Noise does")
    func goAwayBeforeClose() async throws {
        try await Self.withGroup { group in
            let sessions = NIOLockedValueBox<[YamuxSession]>([])
            let server = try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(FlushHoldingHandler())
                        let session = try YamuxSession.install(on: channel, role: .responder, configuration: .testing)
                        sessions.withLockedValue { $0.append(session) }
                    }
                }
                .bind(host: "127.0.0.1", port: 0).get()
            defer { server.close(promise: nil) }
            let received = ReceivedBytes()
            let client = try await ClientBootstrap(group: group)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(received) }
                }
                .connect(to: server.localAddress!).get()
            let timeout = client.eventLoop.scheduleTask(in: .seconds(5)) { client.close(promise: nil) }
            // Version 7: a protocol violation.
            try await client.writeAndFlush(ByteBuffer(bytes: [7, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]))
            try await client.closeFuture.get()  // the server hung up (or the 5 s ran out)
            timeout.cancel()
            var decoder = YamuxFrameDecoder()
            decoder.append(received.bytes)
            #expect(try decoder.nextFrame() == .goAway(.protocolError), "the peer saw EOF without a GoAway")
            let session = try #require(sessions.withLockedValue { $0.first })
            await #expect(throws: YamuxError(.invalidVersion, "unsupported yamux version 7")) {
                try await session.closeFuture.get()
            }
        }
    }

    @Test("a 16 MiB data frame for an unknown stream is skipped as it arrives, never buffered")
    func unknownStreamPayloadIsSkipped() throws {
        let channel = EmbeddedChannel()
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 4001)).wait()
        let session = try YamuxSession.install(on: channel, role: .responder, configuration: .testing)
        let chunk = 64 * 1024
        let total = 16 * 1024 * 1024
        var header = ByteBuffer()
        YamuxFrame(type: .data, streamID: 7, length: UInt32(total)).encodeHeader(into: &header)
        try channel.writeInbound(header)
        let payload = ByteBuffer(repeating: 0xAB, count: chunk)
        var largest = 0
        for _ in 0..<(total / chunk) {
            try channel.writeInbound(payload)
            largest = max(largest, session.handler.value.bufferedInputBytesForTests)
        }
        #expect(largest <= chunk)
        // Still in step: the next frame is understood.
        try channel.writeInbound(YamuxFrame.ping(opaque: 9, ack: false).encoded(allocator: ByteBufferAllocator()))
        let reply = try #require(try channel.readOutbound(as: ByteBuffer.self))
        var decoder = YamuxFrameDecoder()
        decoder.append(reply)
        #expect(try decoder.nextFrame() == .ping(opaque: 9, ack: true))
        #expect(!session.isClosed)
        _ = try? channel.finish()
    }

    @Test("data after the peer's FIN and data for a refused SYN are skipped too, with RST")
    func refusedPayloadsAreSkipped() throws {
        var config = YamuxConfiguration.testing
        config.maxAcceptBacklog = 1
        let channel = EmbeddedChannel()
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 4001)).wait()
        let session = try YamuxSession.install(on: channel, role: .responder, configuration: config)
        var frames = ByteBuffer()
        YamuxFrame.windowUpdate(streamID: 1, flags: .syn, delta: 0).encode(into: &frames)
        // Backlog full: stream 3 is refused, its 200 KiB are dropped as they come.
        YamuxFrame(type: .data, flags: .syn, streamID: 3, length: 200 * 1024).encodeHeader(into: &frames)
        try channel.writeInbound(frames)
        let rst = try #require(try channel.readOutbound(as: ByteBuffer.self))
        var decoder = YamuxFrameDecoder()
        decoder.append(rst)
        #expect(try decoder.nextFrame() == .windowUpdate(streamID: 3, flags: .rst, delta: 0))
        for _ in 0..<4 {
            try channel.writeInbound(ByteBuffer(repeating: 1, count: 50 * 1024))
            #expect(session.handler.value.bufferedInputBytesForTests == 0)
        }
        #expect(session.openStreamCount == 1)
        #expect(!session.isClosed)
        _ = try? channel.finish()
    }

    @Test("while the channel is not writable, 64 KiB of ping replies pause decoding and hold read(); writability resumes both")
    func pingRepliesPauseReading() throws {
        let channel = EmbeddedChannel()
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 4001)).wait()
        let reads = ReadCounter()
        try channel.pipeline.syncOperations.addHandler(reads)
        let session = try YamuxSession.install(on: channel, role: .responder, configuration: .testing)
        channel.isWritable = false
        channel.pipeline.fireChannelWritabilityChanged()

        let pings = 20_000
        var flood = ByteBuffer()
        for index in 0..<pings { YamuxFrame.ping(opaque: UInt32(index), ack: false).encode(into: &flood) }
        try channel.writeInbound(flood)
        channel.read()
        var replies = 0
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { replies += buffer.readableBytes / YamuxFrame.headerSize }
        // Paused right after the mark: the rest waits undecoded, and the read is held.
        #expect(replies == YamuxHandler.replyMark / YamuxFrame.headerSize + 1)
        #expect(session.handler.value.bufferedInputBytesForTests == (pings - replies) * YamuxFrame.headerSize)
        #expect(reads.count == 0)

        channel.isWritable = true
        channel.pipeline.fireChannelWritabilityChanged()
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { replies += buffer.readableBytes / YamuxFrame.headerSize }
        #expect(replies == pings)
        #expect(session.handler.value.bufferedInputBytesForTests == 0)
        #expect(reads.count == 1)
        #expect(!session.isClosed)
        _ = try? channel.finish()
    }

    @Test("a ping flood whose replies are never read: the replies queued stay bounded; reading resumes when they drain")
    func pingFlood() async throws {
        try await Self.withGroup { try await pingFlood(on: $0) }
    }

    private func pingFlood(on group: MultiThreadedEventLoopGroup) async throws {
        let sessions = NIOLockedValueBox<[YamuxSession]>([])
        let serverChannels = NIOLockedValueBox<[Channel]>([])
        let serverReads = ReadCounter()
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.so_sndbuf), value: 16 * 1024)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(serverReads)
                    let session = try YamuxSession.install(on: channel, role: .responder, configuration: .testing)
                    sessions.withLockedValue { $0.append(session) }
                    serverChannels.withLockedValue { $0.append(channel) }
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        defer { server.close(promise: nil) }

        let received = ReceivedBytes()
        let client = try await ClientBootstrap(group: group)
            .channelOption(.autoRead, value: false)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(received) }
            }
            .connect(to: server.localAddress!).get()
        defer { client.close(promise: nil) }

        // 1,004,824 pings (12 MB) in writes of 5,461 pings each (one shared 64 KiB buffer).
        let pingsPerWrite = 5461
        let writes = 184
        var batch = ByteBuffer()
        for index in 0..<pingsPerWrite {
            YamuxFrame.ping(opaque: UInt32(index), ack: false).encode(into: &batch)
        }
        for _ in 0..<writes { client.write(batch, promise: nil) }
        client.flush()

        // Until the client has sent everything (the server kept reading) or its queue stops
        // shrinking for 0.5 s (the server stopped reading): at most 10 s.
        let floodStart = ContinuousClock.now
        var largestQueued = 0
        var lastClientQueued = -1
        var stableSamples = 0
        for _ in 0..<1000 {
            try await Task.sleep(for: .milliseconds(10))
            guard let serverChannel = serverChannels.withLockedValue({ $0.first }) else { continue }
            let serverQueued = try await serverChannel.getOption(.bufferedWritableBytes).get()
            largestQueued = max(largestQueued, serverQueued)
            let clientQueued = try await client.getOption(.bufferedWritableBytes).get()
            if clientQueued == 0 { break }
            stableSamples = clientQueued == lastClientQueued ? stableSamples + 1 : 0
            lastClientQueued = clientQueued
            if stableSamples >= 50 { break }
        }
        print("ping flood: at most \(largestQueued) bytes of replies queued on the server; paused after \(ContinuousClock.now - floodStart)")
        #expect(largestQueued > 0)
        #expect(largestQueued <= 1024 * 1024, "server queued \(largestQueued) bytes of ping replies")
        #expect(sessions.withLockedValue { $0.first?.isClosed } == false)

        // The client reads now: the server answers, and once its replies drained it asks for
        // input again (a read() reaches the head of its pipeline).
        let start = ContinuousClock.now
        let queuedAtPause = try await client.getOption(.bufferedWritableBytes).get()
        #expect(queuedAtPause > 0)
        let readsAtPause = serverReads.count
        if let serverChannel = serverChannels.withLockedValue({ $0.first }) {
            // A normal send buffer again: the tiny one makes loopback crawl (delayed ACKs).
            try await serverChannel.setOption(.socketOption(.so_sndbuf), value: 1 << 20).get()
        }
        try await client.setOption(.autoRead, value: true).get()
        client.read()
        var resumed = false
        for _ in 0..<1000 {
            try await Task.sleep(for: .milliseconds(10))
            if serverReads.count > readsAtPause && received.count > 0 {
                resumed = true
                break
            }
        }
        #expect(resumed)
        print("ping flood: resumed in \(ContinuousClock.now - start)")
    }
}

/// Counts the bytes a channel receives, keeping the first 64 KiB.
final class ReceivedBytes: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    private let state = NIOLockedValueBox((count: 0, kept: ByteBuffer()))
    var count: Int { state.withLockedValue { $0.count } }
    var bytes: ByteBuffer { state.withLockedValue { $0.kept } }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        state.withLockedValue { state in
            state.count += buffer.readableBytes
            if state.kept.readableBytes < 65_536 { state.kept.writeBuffer(&buffer) }
        }
    }
}

/// Counts the `read()` calls that reach it (put it first in the pipeline).
final class ReadCounter: ChannelOutboundHandler, Sendable {
    typealias OutboundIn = ByteBuffer
    private let reads = NIOLockedValueBox(0)
    var count: Int { reads.withLockedValue { $0 } }

    func read(context: ChannelHandlerContext) {
        reads.withLockedValue { $0 += 1 }
        context.read()
    }
}
