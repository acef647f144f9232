import Identity
import NIOCore
import NIOEmbedded
import Testing
@testable import Noise

/// NoiseHandler on two EmbeddedChannels back to back: bytes are shuttled by hand.
@Suite struct NoiseHandlerTests {
    final class Pair {
        let a = EmbeddedChannel()
        let b = EmbeddedChannel()
        let aDone: EventLoopPromise<NoiseHandshakeResult>
        let bDone: EventLoopPromise<NoiseHandshakeResult>

        init() throws {
            aDone = a.eventLoop.makePromise()
            bDone = b.eventLoop.makePromise()
            try b.pipeline.syncOperations.addHandler(NoiseHandler(
                handshake: try NoiseLibp2pHandshake(role: .responder, identity: .generateEd25519()), promise: bDone))
            try a.pipeline.syncOperations.addHandler(NoiseHandler(
                handshake: try NoiseLibp2pHandshake(role: .initiator, identity: .generateEd25519()), promise: aDone))
            try a.connect(to: .init(ipAddress: "127.0.0.1", port: 1)).wait()
            try b.connect(to: .init(ipAddress: "127.0.0.1", port: 1)).wait()
        }

        /// Moves every outbound buffer of `from` into `to`; returns the buffers moved.
        @discardableResult
        func shuttle(from: EmbeddedChannel, to: EmbeddedChannel) throws -> [ByteBuffer] {
            var moved: [ByteBuffer] = []
            while let out = try from.readOutbound(as: ByteBuffer.self) {
                moved.append(out)
                try to.writeInbound(out)
            }
            return moved
        }

        func handshake() throws {
            for _ in 0..<4 {
                try shuttle(from: a, to: b)
                try shuttle(from: b, to: a)
            }
            _ = try aDone.futureResult.wait()
            _ = try bDone.futureResult.wait()
        }

        func received(by channel: EmbeddedChannel) throws -> [UInt8] {
            var bytes: [UInt8] = []
            while var buffer = try channel.readInbound(as: ByteBuffer.self) { bytes += buffer.readBytes(length: buffer.readableBytes)! }
            return bytes
        }
    }

    /// Noise messages in the outbound buffers (2-byte length prefixes followed through).
    static func messageCount(_ buffers: [ByteBuffer]) -> Int {
        var all = ByteBuffer()
        for var b in buffers { all.writeBuffer(&b) }
        var count = 0
        while let length = all.readInteger(as: UInt16.self) {
            all.moveReaderIndex(forwardBy: Int(length))
            count += 1
        }
        #expect(all.readableBytes == 0)
        return count
    }

    /// Messages straddling reads at every kind of boundary (inside the length prefix, inside the
    /// ciphertext, several messages and a partial one in one read) arrive whole and in order.
    @Test(arguments: [1, 2, 3, 17, 1000, 65_537, 150_000])
    func messagesSplitAcrossReadsAtAnyBoundary(chunk: Int) throws {
        let pair = try Pair()
        try pair.handshake()
        var expected: [UInt8] = []
        for (index, size) in [5, 70_000, 1, 16, 40_000, 3].enumerated() {
            let bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ index) }
            expected += bytes
            pair.a.write(ByteBuffer(bytes: bytes), promise: nil)
            pair.a.flush()
        }
        var wire = ByteBuffer()
        while var out = try pair.a.readOutbound(as: ByteBuffer.self) { wire.writeBuffer(&out) }
        // Varying read sizes around `chunk`, so that boundaries fall everywhere.
        var step = 0
        while wire.readableBytes > 0 {
            let size = min(wire.readableBytes, max(1, chunk + (step % 3) - 1))
            try pair.b.writeInbound(wire.readSlice(length: size)!)
            step += 1
        }
        #expect(try pair.received(by: pair.b) == expected)
    }

    @Test func smallWritesBetweenFlushesLeaveAsOneMessage() throws {
        let pair = try Pair()
        try pair.handshake()
        var promises: [EventLoopFuture<Void>] = []
        for chunk in ["one ", "two ", "three"] {
            let promise = pair.a.eventLoop.makePromise(of: Void.self)
            pair.a.write(ByteBuffer(string: chunk), promise: promise)
            promises.append(promise.futureResult)
        }
        #expect(try pair.a.readOutbound(as: ByteBuffer.self) == nil, "nothing leaves before the flush")
        pair.a.flush()
        let moved = try pair.shuttle(from: pair.a, to: pair.b)
        #expect(Self.messageCount(moved) == 1)
        #expect(try pair.received(by: pair.b) == Array("one two three".utf8))
        for promise in promises { try promise.wait() }
    }

    @Test func largeWritesAreSealedDirectlyAndOrderIsKept() throws {
        let pair = try Pair()
        try pair.handshake()
        let big = [UInt8](repeating: 7, count: 100_000)  // two Noise messages of its own
        pair.a.write(ByteBuffer(string: "head"), promise: nil)
        pair.a.write(ByteBuffer(bytes: big), promise: nil)
        pair.a.write(ByteBuffer(string: "tail"), promise: nil)
        pair.a.write(ByteBuffer(), promise: nil)  // empty: nothing on the wire
        pair.a.flush()
        let moved = try pair.shuttle(from: pair.a, to: pair.b)
        #expect(Self.messageCount(moved) == 4)
        #expect(try pair.received(by: pair.b) == Array("head".utf8) + big + Array("tail".utf8))
    }

    @Test func coalescedWritesNeverExceedOneMessage() throws {
        let pair = try Pair()
        try pair.handshake()
        let chunk = [UInt8](repeating: 1, count: 10_000)  // under the coalescing limit
        for _ in 0..<20 { pair.a.write(ByteBuffer(bytes: chunk), promise: nil) }
        pair.a.flush()
        let moved = try pair.shuttle(from: pair.a, to: pair.b)
        // 200,000 bytes in messages of at most 65,519 bytes of plaintext, six chunks each.
        #expect(Self.messageCount(moved) == 4)
        #expect(try pair.received(by: pair.b).count == 200_000)
    }

    @Test func writesDuringTheHandshakeGoOutAfterIt() throws {
        let pair = try Pair()
        pair.a.writeAndFlush(ByteBuffer(string: "early"), promise: nil)
        try pair.handshake()
        try pair.shuttle(from: pair.a, to: pair.b)
        #expect(try pair.received(by: pair.b) == Array("early".utf8))
    }

    @Test func pendingWritesFailWhenTheChannelCloses() throws {
        let pair = try Pair()
        try pair.handshake()
        let promise = pair.a.eventLoop.makePromise(of: Void.self)
        pair.a.write(ByteBuffer(string: "never flushed"), promise: promise)
        _ = try? pair.a.close().wait()
        #expect(throws: (any Error).self) { try promise.futureResult.wait() }
    }

    /// Between Noise and the socket: the first ciphertext write fires a writability change back up
    /// the pipeline, as NIO does when a write crosses the high watermark.
    final class WritabilityPoke: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        var poked = false
        func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
            context.write(data, promise: promise)
            if !poked {
                poked = true
                context.fireChannelWritabilityChanged()
            }
        }
    }

    /// Above Noise: answers a writability change by writing and flushing more, as Yamux does.
    final class ReentrantWriter: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let payload: ByteBuffer
        init(_ payload: ByteBuffer) { self.payload = payload }
        func channelWritabilityChanged(context: ChannelHandlerContext) {
            context.writeAndFlush(wrapOutboundOut(payload), promise: nil)
        }
    }

    @Test(arguments: [10, 20_000, 65_000])
    func reentrantWritesAreNeitherDuplicatedNorReordered(firstSize: Int) throws {
        let pair = try Pair()
        try pair.handshake()
        try pair.a.pipeline.syncOperations.addHandler(WritabilityPoke(), position: .first)
        try pair.a.pipeline.syncOperations.addHandler(ReentrantWriter(ByteBuffer(string: "B")))
        let first = [UInt8](repeating: 0x41, count: firstSize)
        pair.a.write(ByteBuffer(bytes: first), promise: nil)
        pair.a.write(ByteBuffer(bytes: [UInt8](repeating: 0x43, count: 1000)), promise: nil)
        pair.a.flush()
        try pair.shuttle(from: pair.a, to: pair.b)
        let received = try pair.received(by: pair.b)
        // "B" is written from inside the first ciphertext write: a large first write goes out at
        // once (B before the second write was made); small ones wait for the flush (B last).
        let second = [UInt8](repeating: 0x43, count: 1000)
        let expected = firstSize >= NoiseHandler.coalescingLimit
            ? first + Array("B".utf8) + second : first + second + Array("B".utf8)
        let exact = received == expected
        #expect(exact, "received \(received.count) bytes, expected \(expected.count), in order, once")
    }
}
