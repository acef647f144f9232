import NIOCore
import PointSub
import Testing

@testable import PubSub

@Suite struct RPCFrameDecoderTests {
    private func framed(_ body: [UInt8]) -> [UInt8] {
        var buffer = ByteBuffer()
        _ = buffer.writeVarint(UInt64(body.count))
        buffer.writeBytes(body)
        return Array(buffer.readableBytesView)
    }

    @Test func splitsFramesFedOneByteAtATime() throws {
        let rpcs = [
            PubSubRPC(subscriptions: [.init(subscribe: true, topic: "a")]),
            PubSubRPC(),  // an empty RPC is a zero-length frame
            PubSubRPC(messages: [.init(data: Array(repeating: 7, count: 300), topic: "b")]),
        ]
        let bytes = rpcs.flatMap { framed($0.encoded()) }
        var decoder = RPCFrameDecoder(maxFrameSize: 1024)
        var out: [PubSubRPC] = []
        for byte in bytes {
            decoder.append(ByteBuffer(bytes: [byte]))
            while let frame = try decoder.nextFrame() { out.append(try PubSubRPC(decoding: frame)) }
        }
        #expect(out == rpcs)
        #expect(decoder.bufferedBytes == 0)
    }

    @Test func manyFramesInOneChunk() throws {
        let one = framed(PubSubRPC(subscriptions: [.init(subscribe: false, topic: "x")]).encoded())
        var decoder = RPCFrameDecoder(maxFrameSize: 64)
        decoder.append(ByteBuffer(bytes: Array([[UInt8]](repeating: one, count: 100).joined())))
        var count = 0
        while try decoder.nextFrame() != nil { count += 1 }
        #expect(count == 100)
    }

    @Test func refusesAnOversizedFrameOnItsPrefixAlone() {
        var decoder = RPCFrameDecoder(maxFrameSize: 1 << 20)
        var prefix = ByteBuffer()
        _ = prefix.writeVarint(UInt64(1 << 20) + 1)
        decoder.append(prefix)  // no body at all: refused before anything is buffered
        #expect(throws: PubSubError.rpcTooLarge(length: (1 << 20) + 1, limit: 1 << 20)) { try decoder.nextFrame() }
    }

    @Test func acceptsAFrameOfExactlyTheLimit() throws {
        var decoder = RPCFrameDecoder(maxFrameSize: 10)
        decoder.append(ByteBuffer(bytes: framed(Array(repeating: 0, count: 10))))
        #expect(try decoder.nextFrame()?.count == 10)
    }

    @Test func refusesABrokenLengthPrefix() {
        var decoder = RPCFrameDecoder(maxFrameSize: 1024)
        decoder.append(ByteBuffer(bytes: [0x80, 0x00]))  // non-minimal
        #expect(throws: PubSubError.self) { try decoder.nextFrame() }
        var overlong = RPCFrameDecoder(maxFrameSize: 1024)
        overlong.append(ByteBuffer(bytes: Array(repeating: 0xFF, count: 10)))
        #expect(throws: PubSubError.self) { try overlong.nextFrame() }
    }
}
