import NIOCore
import NIOEmbedded
import Testing

@testable import Yamux

#if canImport(Glibc)
import Glibc

/// `mallinfo2()`'s result is returned through a hidden pointer (a struct over 16 bytes, on
/// x86-64 and AArch64 alike); `<malloc.h>` is not part of the Glibc module, so it is called
/// through `dlsym` as a C function returning a larger C struct (`rusage`) whose first 80 bytes
/// it fills: uordblks (bytes in use) at offset 56, hblkhd (bytes in mmapped chunks) at 32.
private typealias MallInfo2Function = @convention(c) () -> rusage

/// Bytes the allocator has handed out and not taken back (all arenas, plus mmapped chunks).
private func heapInUse() -> Int {
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallinfo2") else { return 0 }
    var info = unsafeBitCast(symbol, to: MallInfo2Function.self)()
    return withUnsafeBytes(of: &info) { raw in
        Int(raw.load(fromByteOffset: 56, as: UInt.self)) + Int(raw.load(fromByteOffset: 32, as: UInt.self))
    }
}
#endif

/// Heap held by idle open streams, measured with the allocator's own statistics (deterministic:
/// bytes, not time). Every test of this kind runs the measurement several times and takes the
/// median, so that allocations by tests running in parallel do not decide the result.
@Suite("Yamux memory per idle stream", .serialized, .timeLimit(.minutes(1)))
struct MemoryTests {
    static let streams = 10_000

    static var configuration: YamuxConfiguration {
        var c = YamuxConfiguration.testing
        c.maxStreams = streams + 1
        c.maxAcceptBacklog = streams + 1
        c.maxOutboundAckBacklog = streams + 1
        return c
    }

    /// Heap per stream held by one session with `streams` idle inbound streams, taken by the
    /// application (ACKed) and kept open.
    static func inboundBytesPerStream() throws -> Int {
        #if canImport(Glibc)
        let channel = EmbeddedChannel()
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 4001)).wait()
        let session = try YamuxSession.install(on: channel, role: .responder, configuration: configuration)
        let held = Holder()
        session.setInboundStreamHandler { held.append($0) }
        held.reserve(streams)
        var syns = ByteBuffer()
        syns.reserveCapacity(streams * YamuxFrame.headerSize)
        for index in 0..<streams {
            YamuxFrame.windowUpdate(streamID: UInt32(2 * index + 1), flags: .syn, delta: 0).encode(into: &syns)
        }
        var acks: [ByteBuffer] = []
        acks.reserveCapacity(streams + 16)
        let before = heapInUse()
        try channel.writeInbound(syns)
        // The ACKs leave as writes; count only what the session keeps.
        while let ack = try channel.readOutbound(as: ByteBuffer.self) { acks.append(ack) }
        acks.removeAll(keepingCapacity: true)
        let after = heapInUse()
        #expect(held.count == streams)
        #expect(session.openStreamCount == streams)
        _ = try? channel.finish()
        return (after - before) / streams
        #else
        return 0
        #endif
    }

    /// Heap per stream held by one session with `streams` idle outbound streams, ACKed by the peer.
    static func outboundBytesPerStream() throws -> Int {
        #if canImport(Glibc)
        let channel = EmbeddedChannel()
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 4001)).wait()
        let session = try YamuxSession.install(on: channel, role: .initiator, configuration: configuration)
        let held = Holder()
        held.reserve(streams)
        var acks = ByteBuffer()
        acks.reserveCapacity(streams * YamuxFrame.headerSize)
        for index in 0..<streams {
            YamuxFrame.windowUpdate(streamID: UInt32(2 * index + 1), flags: .ack, delta: 0).encode(into: &acks)
        }
        var syns: [ByteBuffer] = []
        syns.reserveCapacity(streams + 16)
        let before = heapInUse()
        for _ in 0..<streams {
            session.handler.value.openStream().whenSuccess { held.append($0) }
        }
        while let syn = try channel.readOutbound(as: ByteBuffer.self) { syns.append(syn) }
        syns.removeAll(keepingCapacity: true)
        try channel.writeInbound(acks)
        let after = heapInUse()
        #expect(held.count == streams)
        #expect(session.openStreamCount == streams)
        _ = try? channel.finish()
        return (after - before) / streams
        #else
        return 0
        #endif
    }

    /// Heap per stream held by both ends of `streams` idle streams after one request and one
    /// response each: an initiator and a responder session on two embedded channels whose
    /// writes are carried over by hand.
    static func bothEndsBytesPerUsedStream() throws -> Int {
        let streams = Self.streams / 4
        #if canImport(Glibc)
        let clientChannel = EmbeddedChannel()
        let serverChannel = EmbeddedChannel(loop: clientChannel.embeddedEventLoop)
        try clientChannel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 4001)).wait()
        try serverChannel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 4002)).wait()
        let client = try YamuxSession.install(on: clientChannel, role: .initiator, configuration: configuration)
        let server = try YamuxSession.install(on: serverChannel, role: .responder, configuration: configuration)
        let clientStreams = Holder()
        let serverStreams = Holder()
        clientStreams.reserve(streams)
        serverStreams.reserve(streams)
        server.setInboundStreamHandler { stream in
            serverStreams.append(stream)
            if let request = stream.takeAvailable() {
                var response = ByteBuffer(string: "re: ")
                response.writeImmutableBuffer(request)
                stream.writeFromEventLoop(response)
            }
        }
        func carry(_ from: EmbeddedChannel, _ to: EmbeddedChannel) throws {
            while let buffer = try from.readOutbound(as: ByteBuffer.self) { try to.writeInbound(buffer) }
        }
        let before = heapInUse()
        for _ in 0..<streams {
            client.handler.value.openStream(sending: ByteBuffer(string: "hello")).whenSuccess { clientStreams.append($0) }
        }
        try carry(clientChannel, serverChannel)
        try carry(serverChannel, clientChannel)
        var answered = 0
        for stream in clientStreams.streams where stream.takeAvailable() == ByteBuffer(string: "re: hello") {
            answered += 1
        }
        try carry(clientChannel, serverChannel)  // credit, if any
        let after = heapInUse()
        #expect(answered == streams)
        #expect(serverStreams.count == streams)
        #expect(client.openStreamCount == streams && server.openStreamCount == streams)
        _ = try? clientChannel.finish()
        _ = try? serverChannel.finish()
        return (after - before) / streams
        #else
        return 0
        #endif
    }

    static func median(_ runs: Int, _ body: () throws -> Int) rethrows -> Int {
        var values: [Int] = []
        for _ in 0..<runs { values.append(try body()) }
        values.sort()
        return values[values.count / 2]
    }

    /// What is measured: one side of an idle inbound stream, one side of an idle outbound one,
    /// and both ends of an idle stream that carried a request and a response.
    enum Case: String, CaseIterable, Sendable {
        case inbound, outbound, bothEnds

        var measure: () throws -> Int {
            switch self {
            case .inbound: return MemoryTests.inboundBytesPerStream
            case .outbound: return MemoryTests.outboundBytesPerStream
            case .bothEnds: return MemoryTests.bothEndsBytesPerUsedStream
            }
        }
    }

    @Test("an idle stream holds at most 2 KiB of heap (both ends together for a used one)",
          .enabled(if: isLinux), arguments: Case.allCases)
    func idleStream(_ measured: Case) throws {
        let perStream = try Self.median(3, measured.measure)
        print("yamux idle stream (\(measured.rawValue)): \(perStream) heap bytes")
        #expect(perStream > 0)
        #expect(perStream <= 2048)
    }
}

#if os(Linux)
let isLinux = true
#else
let isLinux = false
#endif

/// Keeps streams alive (the inbound-stream handler is `@Sendable`; used on one thread only).
final class Holder: @unchecked Sendable {
    private(set) var streams: [YamuxStream] = []
    func append(_ stream: YamuxStream) { streams.append(stream) }
    func reserve(_ count: Int) { streams.reserveCapacity(count) }
    var count: Int { streams.count }
}
