import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
import Transport

/// What a `Recorder` saw, in order.
enum ChannelEventRecord: Equatable, Sendable {
    case registered, active, inactive, unregistered, readComplete
    case writability(Bool)
    case inputClosed, outputClosed
}

/// Records everything that reaches it (bytes and events) where a test can look.
final class Recorder: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    struct Log: Sendable {
        var bytes: [UInt8] = []
        var reads = 0
        var events: [ChannelEventRecord] = []
    }

    let log = NIOLockedValueBox(Log())

    var bytes: [UInt8] { log.withLockedValue { $0.bytes } }
    var events: [ChannelEventRecord] { log.withLockedValue { $0.events } }
    var reads: Int { log.withLockedValue { $0.reads } }

    func channelRegistered(context: ChannelHandlerContext) {
        log.withLockedValue { $0.events.append(.registered) }
        context.fireChannelRegistered()
    }

    func channelActive(context: ChannelHandlerContext) {
        log.withLockedValue { $0.events.append(.active) }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        log.withLockedValue { $0.events.append(.inactive) }
        context.fireChannelInactive()
    }

    func channelUnregistered(context: ChannelHandlerContext) {
        log.withLockedValue { $0.events.append(.unregistered) }
        context.fireChannelUnregistered()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        log.withLockedValue {
            $0.bytes += buffer.readableBytesView
            $0.reads += 1
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        log.withLockedValue { $0.events.append(.readComplete) }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        log.withLockedValue { $0.events.append(.writability(writable)) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event as? ChannelEvent {
        case .inputClosed?: log.withLockedValue { $0.events.append(.inputClosed) }
        case .outputClosed?: log.withLockedValue { $0.events.append(.outputClosed) }
        case nil: break
        }
    }
}

/// Waits until each of `channels` is closed (before their event loops shut down: nothing of
/// theirs is left to run then).
func allClosed(_ channels: [any Channel]) async throws {
    for channel in channels { try await channel.closeFuture.get() }
}

/// Lets every task already queued on `channel`'s loop run.
func drain(_ channel: any Channel) async throws {
    try await channel.eventLoop.submit {}.get()
}

@Suite(.timeLimit(.minutes(1)))
struct MemoryChannelTests {
    /// A connected, active pair with a recorder at the end of each pipeline; `configure` runs on
    /// each end's loop before it is active.
    static func pair(
        _ group: any EventLoopGroup, sameLoop: Bool,
        configure: @escaping @Sendable (MemoryChannel, Int) throws -> Void = { _, _ in }
    ) async throws -> (MemoryChannel, MemoryChannel, Recorder, Recorder) {
        let first = group.next()
        let second = sameLoop ? first : group.next()
        let (a, b) = MemoryChannel.makePair(first, second)
        let recorders = (Recorder(), Recorder())
        for (index, (channel, recorder)) in [(a, recorders.0), (b, recorders.1)].enumerated() {
            try await channel.eventLoop.submit {
                try channel.pipeline.syncOperations.addHandler(recorder)
                try configure(channel, index)
            }.get()
            try await channel.activate().get()
        }
        return (a, b, recorders.0, recorders.1)
    }

    static func buffer(_ bytes: some Sequence<UInt8>) -> ByteBuffer {
        ByteBuffer(bytes: Array(bytes))
    }

    @Test(arguments: [false, true])
    func bytesArriveInOrderBothWays(sameLoop: Bool) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { group.shutdownGracefully { _ in } }
        let (a, b, recA, recB) = try await Self.pair(group, sameLoop: sameLoop)
        #expect(sameLoop == (a.eventLoop === b.eventLoop))
        #expect(recA.events == [.registered, .active])
        #expect(a.isActive && b.isActive && a.isWritable)
        #expect(a.localAddress == nil && a.remoteAddress == nil && a.parent == nil)

        // 2000 numbered chunks each way, flushed in batches of varying size.
        func payload(_ seed: UInt8) -> [UInt8] {
            (0..<2000).flatMap { i in [seed, UInt8(truncatingIfNeeded: i), UInt8(truncatingIfNeeded: i >> 8)] }
        }
        let (toB, toA) = (payload(1), payload(2))
        for (channel, data) in [(a, toB), (b, toA)] {
            try await channel.eventLoop.submit {
                for (i, start) in stride(from: 0, to: data.count, by: 3).enumerated() {
                    channel.write(Self.buffer(data[start..<start + 3]), promise: nil)
                    if i % 7 == 6 { channel.flush() }
                }
                channel.flush()
            }.get()
        }
        try await eventually("all bytes arrived") { recB.bytes.count == toB.count && recA.bytes.count == toA.count }
        #expect(recB.bytes == toB)
        #expect(recA.bytes == toA)
        #expect(recB.events.contains(.readComplete))
        // Everything was read: the writers are writable and never stopped being so.
        #expect(!recA.events.contains(.writability(false)))

        try await a.close()
        try await a.closeFuture.get()
        try await b.closeFuture.get()
        #expect(recA.events.suffix(2) == [.inactive, .unregistered])
        #expect(recB.events.suffix(2) == [.inactive, .unregistered])
        #expect(!a.isActive && !b.isActive)
    }

    @Test func backPressureFollowsTheReadersReads() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { group.shutdownGracefully { _ in } }
        // B reads only when asked; A's water mark: 4 KiB / 8 KiB.
        let (a, b, recA, recB) = try await Self.pair(group, sameLoop: false) { channel, index in
            if index == 0 {
                try channel.syncOptions!.setOption(
                    ChannelOptions.writeBufferWaterMark, value: .init(low: 4096, high: 8192))
            } else {
                try channel.syncOptions!.setOption(ChannelOptions.autoRead, value: false)
            }
        }
        #expect(try await a.getOption(ChannelOptions.writeBufferWaterMark).get().high == 8192)
        #expect(try await b.getOption(ChannelOptions.autoRead).get() == false)

        // 20 KiB in 1 KiB chunks: A turns unwritable once more than 8 KiB are unread.
        let chunk = [UInt8](repeating: 7, count: 1024)
        let writes = try await a.eventLoop.submit {
            (0..<20).map { _ in a.writeAndFlush(Self.buffer(chunk)) }
        }.get()
        for write in writes { try await write.get() }  // flushed: the promises succeed
        #expect(!a.isWritable)
        #expect(recA.events.filter { $0 == .writability(false) }.count == 1)
        // Nothing is delivered before B reads.
        try await drain(b)
        try await drain(b)
        #expect(recB.bytes.isEmpty)

        // One read: one burst of at most maxMessagesPerRead (4) chunks, then channelReadComplete.
        try await b.setOption(ChannelOptions.maxMessagesPerRead, value: 4).get()
        b.read()
        try await eventually("one burst") { recB.bytes.count == 4096 }
        try await drain(b)
        #expect(recB.bytes.count == 4096)
        #expect(recB.events.filter { $0 == .readComplete }.count == 1)
        try await drain(a)
        #expect(!a.isWritable, "16 KiB unread is still above the low mark")

        // Three more bursts: 4 KiB unread, not yet below the low mark.
        for _ in 0..<3 {
            let expected = recB.reads + 4
            b.read()
            try await eventually("next burst") { recB.reads == expected }
        }
        try await drain(b)
        try await drain(a)
        #expect(!a.isWritable)
        // The last burst: nothing unread, A is writable again.
        b.read()
        try await eventually("all read") { recB.bytes.count == 20 * 1024 }
        try await eventually("writable again") { a.isWritable }
        // The event follows on A's loop (the flag is read here, off the loop).
        try await drain(a)
        #expect(recA.events.filter { $0 == .writability(true) }.count == 1)

        // Turning autoRead on reads whatever comes next without asking.
        try await b.setOption(ChannelOptions.autoRead, value: true).get()
        try await a.writeAndFlush(Self.buffer([1, 2, 3])).get()
        try await eventually("auto read") { recB.bytes.count == 20 * 1024 + 3 }
        try await b.close()
        try await allClosed([a, b])
    }

    @Test func closeDeliversWhatWasFlushedThenClosesThePeer() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { group.shutdownGracefully { _ in } }
        for autoRead in [true, false] {
            let (a, b, _, recB) = try await Self.pair(group, sameLoop: false) { channel, index in
                if index == 1 { try channel.syncOptions!.setOption(ChannelOptions.autoRead, value: autoRead) }
            }
            // Flushed before the close: delivered (even to a reader that has not asked).
            // Written but not flushed: failed by the close.
            let (flushed, unflushed) = try await a.eventLoop.submit {
                let flushed = a.writeAndFlush(Self.buffer("last words".utf8))
                let unflushed = a.write(Self.buffer("never sent".utf8))
                a.close(promise: nil)
                return (flushed, unflushed)
            }.get()
            try await flushed.get()
            await #expect(throws: ChannelError.ioOnClosedChannel) { try await unflushed.get() }
            try await allClosed([a, b])
            #expect(String(decoding: recB.bytes, as: UTF8.self) == "last words")
            #expect(recB.events.suffix(2) == [.inactive, .unregistered])
            let inactive = recB.events.firstIndex(of: .inactive)!
            #expect(recB.events[..<inactive].contains(.readComplete), "data comes before the close")

            // Writes on either closed end fail; closing again fails.
            await #expect(throws: ChannelError.ioOnClosedChannel) { try await a.writeAndFlush(Self.buffer([1])).get() }
            await #expect(throws: ChannelError.ioOnClosedChannel) { try await b.writeAndFlush(Self.buffer([1])).get() }
            await #expect(throws: ChannelError.alreadyClosed) { try await a.close() }
        }
    }

    @Test func closingBeforeActivationClosesBoth() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { group.shutdownGracefully { _ in } }
        let (a, b) = MemoryChannel.makePair(group.next(), group.next())
        try await a.activate().get()
        try await b.close()
        try await allClosed([a, b])
        await #expect(throws: ChannelError.ioOnClosedChannel) { try await b.activate().get() }
    }

    @Test func anEndOfStreamBeforeActivationIsReadOnActivation() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { group.shutdownGracefully { _ in } }
        let (a, b) = MemoryChannel.makePair(group.next(), group.next())
        try await a.activate().get()
        try await a.writeAndFlush(Self.buffer("early".utf8)).get()
        try await a.close(mode: .output)
        try await drain(b)
        // B comes up not reading, allowing half-closure: the data and the end of stream arrive.
        let recB = Recorder()
        try await b.eventLoop.submit {
            try b.pipeline.syncOperations.addHandler(recB)
            try b.syncOptions!.setOption(ChannelOptions.autoRead, value: false)
            try b.syncOptions!.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
        }.get()
        try await b.activate().get()
        try await eventually("input closed") { recB.events.contains(.inputClosed) }
        #expect(String(decoding: recB.bytes, as: UTF8.self) == "early")
        #expect(b.isActive)
        try await b.close()
        try await allClosed([a, b])
    }

    @Test func halfClosure() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { group.shutdownGracefully { _ in } }
        // B allows half-closure: A's close(mode: .output) reaches B after A's data, as
        // inputClosed; B can still write to A.
        let (a, b, recA, recB) = try await Self.pair(group, sameLoop: false) { channel, index in
            if index == 1 { try channel.syncOptions!.setOption(ChannelOptions.allowRemoteHalfClosure, value: true) }
        }
        try await a.writeAndFlush(Self.buffer("request".utf8)).get()
        try await a.close(mode: .output)
        try await eventually("output closed event") { recA.events.last == .outputClosed }
        await #expect(throws: ChannelError.outputClosed) { try await a.writeAndFlush(Self.buffer([1])).get() }
        await #expect(throws: ChannelError.outputClosed) { try await a.close(mode: .output) }
        try await eventually("input closed") { recB.events.contains(.inputClosed) }
        #expect(String(decoding: recB.bytes, as: UTF8.self) == "request")
        #expect(b.isActive)
        try await b.writeAndFlush(Self.buffer("response".utf8)).get()
        try await eventually("response") { recA.bytes.count == 8 }
        #expect(String(decoding: recA.bytes, as: UTF8.self) == "response")
        // B closes its output too: A (which does not allow half-closure) closes, and so does B.
        try await b.close(mode: .output)
        try await a.closeFuture.get()
        try await b.closeFuture.get()
        let (c, d) = MemoryChannel.makePair(group.next(), group.next())
        await #expect(throws: ChannelError.operationUnsupported) { try await c.close(mode: .input) }
        try await d.close()
        try await allClosed([c, d])
    }

    /// Also when B does not read: an end of stream is read up to at once (as NIOPosix does).
    @Test(arguments: [true, false])
    func withoutHalfClosureAnEndOfStreamCloses(autoRead: Bool) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { group.shutdownGracefully { _ in } }
        let (a, b, _, recB) = try await Self.pair(group, sameLoop: true) { channel, index in
            if index == 1 { try channel.syncOptions!.setOption(ChannelOptions.autoRead, value: autoRead) }
        }
        try await a.writeAndFlush(Self.buffer("bye".utf8)).get()
        try await a.close(mode: .output)
        try await b.closeFuture.get()
        try await a.closeFuture.get()
        #expect(String(decoding: recB.bytes, as: UTF8.self) == "bye")
        #expect(!recB.events.contains(.inputClosed))
    }

    @Test func unsupportedOptionsAndWrites() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { group.shutdownGracefully { _ in } }
        let (a, b, _, _) = try await Self.pair(group, sameLoop: true)
        await #expect(throws: ChannelError.operationUnsupported) {
            try await a.setOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1).get()
        }
        await #expect(throws: ChannelError.operationUnsupported) {
            try await a.getOption(ChannelOptions.socketOption(.tcp_nodelay)).get()
        }
        #expect(try await a.getOption(ChannelOptions.allowRemoteHalfClosure).get() == false)
        // Only ByteBuffers travel.
        await #expect(throws: ChannelError.operationUnsupported) { try await a.writeAndFlush("text").get() }
        await #expect(throws: ChannelError.operationUnsupported) {
            try await a.bind(to: try SocketAddress(ipAddress: "127.0.0.1", port: 1)).get()
        }
        try await a.close()
        try await allClosed([a, b])
        await #expect(throws: ChannelError.ioOnClosedChannel) {
            try await a.getOption(ChannelOptions.autoRead).get()
        }
    }

    /// Thousands of connections cost no file descriptors.
    @Test func manyPairsUseNoFileDescriptors() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { group.shutdownGracefully { _ in } }
        let descriptorsBefore = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count
        var pairs: [(MemoryChannel, MemoryChannel, Recorder, Recorder)] = []
        for i in 0..<2000 {
            let pair = try await Self.pair(group, sameLoop: i % 2 == 0)
            pair.0.writeAndFlush(Self.buffer([UInt8(truncatingIfNeeded: i)]), promise: nil)
            pairs.append(pair)
        }
        let descriptorsDuring = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count
        // Socket pairs would take 4000; the margin is for other suites running meanwhile.
        #expect(descriptorsDuring - descriptorsBefore < 1000, "\(descriptorsBefore) → \(descriptorsDuring)")
        try await eventually("every pair delivered") { pairs.allSatisfy { $0.3.bytes.count == 1 } }
        for (i, pair) in pairs.enumerated() { #expect(pair.3.bytes == [UInt8(truncatingIfNeeded: i)]) }
        for pair in pairs { pair.1.close(promise: nil) }
        for pair in pairs {
            try await pair.0.closeFuture.get()
            try await pair.1.closeFuture.get()
        }
    }
}
