import NIOCore
import Testing

@testable import Yamux

@Suite("Yamux frame codec")
struct FrameCodecTests {
    private func bytes(_ frame: YamuxFrame) -> [UInt8] {
        var buffer = ByteBuffer()
        frame.encode(into: &buffer)
        return Array(buffer.readableBytesView)
    }

    @Test("header layout of every frame type and flag")
    func encodeVectors() {
        // Data, SYN, stream 1, 3 bytes "abc".
        #expect(bytes(.data(streamID: 1, flags: .syn, payload: ByteBuffer(string: "abc"))) ==
            [0, 0, 0x00, 0x01, 0, 0, 0, 1, 0, 0, 0, 3, 0x61, 0x62, 0x63])
        // Window update, ACK, stream 2, delta 0x00010000.
        #expect(bytes(.windowUpdate(streamID: 2, flags: .ack, delta: 65536)) ==
            [0, 1, 0x00, 0x02, 0, 0, 0, 2, 0, 1, 0, 0])
        // FIN and RST, stream ID with every byte distinct.
        #expect(bytes(.windowUpdate(streamID: 0x0102_0304, flags: .fin, delta: 0)) ==
            [0, 1, 0x00, 0x04, 1, 2, 3, 4, 0, 0, 0, 0])
        #expect(bytes(.windowUpdate(streamID: 7, flags: .rst, delta: 0)) ==
            [0, 1, 0x00, 0x08, 0, 0, 0, 7, 0, 0, 0, 0])
        #expect(bytes(.data(streamID: 9, flags: [.syn, .ack, .fin, .rst], payload: ByteBuffer())) ==
            [0, 0, 0x00, 0x0F, 0, 0, 0, 9, 0, 0, 0, 0])
        // Ping request / response, opaque 0xDEADBEEF, stream 0.
        #expect(bytes(.ping(opaque: 0xDEAD_BEEF, ack: false)) == [0, 2, 0, 1, 0, 0, 0, 0, 0xDE, 0xAD, 0xBE, 0xEF])
        #expect(bytes(.ping(opaque: 0xDEAD_BEEF, ack: true)) == [0, 2, 0, 2, 0, 0, 0, 0, 0xDE, 0xAD, 0xBE, 0xEF])
        // GoAway codes.
        #expect(bytes(.goAway(.normal)) == [0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        #expect(bytes(.goAway(.protocolError)) == [0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
        #expect(bytes(.goAway(.internalError)) == [0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2])
    }

    static let sampleFrames: [YamuxFrame] = [
        .data(streamID: 1, flags: .syn, payload: ByteBuffer(string: "hello")),
        .data(streamID: 3, flags: [], payload: ByteBuffer(bytes: Array(repeating: 0xAB, count: 1000))),
        .data(streamID: 4, flags: [.ack, .fin], payload: ByteBuffer()),
        .windowUpdate(streamID: 1, flags: .ack, delta: 1 << 20),
        .windowUpdate(streamID: 5, flags: .rst, delta: 0),
        .windowUpdate(streamID: UInt32.max, flags: .fin, delta: UInt32.max),
        .ping(opaque: 42, ack: false),
        .ping(opaque: 42, ack: true),
        .goAway(.normal),
        .goAway(.protocolError),
        .goAway(.internalError),
        .goAway(YamuxGoAwayCode(rawValue: 77)),
    ]

    @Test("round trip, all frames in one buffer")
    func roundTripAtOnce() throws {
        var buffer = ByteBuffer()
        for frame in Self.sampleFrames { frame.encode(into: &buffer) }
        var decoder = YamuxFrameDecoder()
        decoder.append(buffer)
        var decoded: [YamuxFrame] = []
        while let frame = try decoder.nextFrame() { decoded.append(frame) }
        #expect(decoded == Self.sampleFrames)
        #expect(decoder.bufferedBytes == 0)
    }

    @Test("decoder fed one byte at a time")
    func roundTripByteByByte() throws {
        var buffer = ByteBuffer()
        for frame in Self.sampleFrames { frame.encode(into: &buffer) }
        var decoder = YamuxFrameDecoder()
        var decoded: [YamuxFrame] = []
        for byte in buffer.readableBytesView {
            decoder.append(ByteBuffer(bytes: [byte]))
            while let frame = try decoder.nextFrame() { decoded.append(frame) }
        }
        #expect(decoded == Self.sampleFrames)
    }

    @Test("truncated input waits for more bytes")
    func truncatedWaits() throws {
        let frame = YamuxFrame.data(streamID: 1, payload: ByteBuffer(string: "0123456789"))
        var encoded = frame.encoded(allocator: ByteBufferAllocator())
        var decoder = YamuxFrameDecoder()
        decoder.append(encoded.readSlice(length: 11)!)  // incomplete header
        #expect(try decoder.nextFrame() == nil)
        decoder.append(encoded.readSlice(length: 5)!)  // header + 4 payload bytes
        #expect(try decoder.nextFrame() == nil)
        #expect(try decoder.nextFrame() == nil)  // still waiting, no double parse
        decoder.append(encoded)
        #expect(try decoder.nextFrame() == frame)
        #expect(try decoder.nextFrame() == nil)
    }

    private func decodeError(_ raw: [UInt8], maxFrameSize: Int = YamuxFrameDecoder.defaultMaxFrameSize) -> YamuxError? {
        var decoder = YamuxFrameDecoder(maxFrameSize: maxFrameSize)
        decoder.append(ByteBuffer(bytes: raw))
        do {
            _ = try decoder.nextFrame()
            return nil
        } catch {
            return error
        }
    }

    @Test("bad version, unknown type and oversize frames are rejected with typed errors")
    func rejects() {
        #expect(decodeError([1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])?.code == .invalidVersion)
        #expect(decodeError([0, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])?.code == .unknownFrameType)
        #expect(decodeError([0, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])?.code == .unknownFrameType)
        // A 4 GiB data frame is rejected from its header alone (no payload present).
        #expect(decodeError([0, 0, 0, 0, 0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF])?.code == .frameTooLarge)
        #expect(decodeError([0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 4, 1], maxFrameSize: 1024)?.code == .frameTooLarge)
        #expect(decodeError([0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 4, 0], maxFrameSize: 1024) == nil)  // exactly the limit: waits
        // Window updates carry a delta, not a payload: a huge length is fine for the codec.
        #expect(decodeError([0, 1, 0, 0, 0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF]) == nil)
    }

    @Test("header validation runs once, before the payload arrives")
    func headerValidation() throws {
        var decoder = YamuxFrameDecoder()
        var raw = YamuxFrame.data(streamID: 3, payload: ByteBuffer(repeating: 1, count: 100)).encoded(allocator: .init())
        decoder.append(raw.readSlice(length: 12)!)
        var calls = 0
        #expect(try decoder.nextFrame(validatingHeader: { _ throws(YamuxError) in calls += 1 }) == nil)
        decoder.append(raw)
        #expect(try decoder.nextFrame(validatingHeader: { _ throws(YamuxError) in calls += 1 })?.payload.readableBytes == 100)
        #expect(calls == 1)

        var rejecting = YamuxFrameDecoder()
        rejecting.append(YamuxFrame.windowUpdate(streamID: 1, delta: 5).encoded(allocator: .init()))
        #expect(throws: YamuxError(.windowExceeded, "no")) {
            try rejecting.nextFrame(validatingHeader: { _ throws(YamuxError) in throw YamuxError(.windowExceeded, "no") })
        }
    }

    @Test("a discarded payload is skipped as it arrives, in pieces of any size, and the next frame decodes")
    func discardedPayload() throws {
        var decoder = YamuxFrameDecoder()
        let length = 1_000_000
        var bytes = ByteBuffer()
        YamuxFrame(type: .data, streamID: 5, length: UInt32(length)).encodeHeader(into: &bytes)
        bytes.writeRepeatingByte(7, count: length)
        YamuxFrame.data(streamID: 3, payload: ByteBuffer(string: "next")).encode(into: &bytes)
        var frames: [YamuxFrame] = []
        var largest = 0
        var generator = SystemRandomNumberGenerator()
        while bytes.readableBytes > 0 {
            decoder.append(bytes.readSlice(length: min(bytes.readableBytes, Int.random(in: 1...70_000, using: &generator)))!)
            while let frame = try decoder.nextFrame(classifyingHeader: { header throws(YamuxError) in
                header.streamID == 5 ? .discard : .keep
            }) {
                frames.append(frame)
            }
            largest = max(largest, decoder.bufferedBytes)
        }
        #expect(frames.count == 2)
        #expect(frames.first?.header == YamuxFrameHeader(type: .data, flags: [], streamID: 5, length: UInt32(length)))
        #expect(frames.first?.payload.readableBytes == 0)
        #expect(frames.last == .data(streamID: 3, payload: ByteBuffer(string: "next")))
        #expect(largest < 70_000)
        #expect(decoder.discardingBytes == 0 && decoder.bufferedBytes == 0)
    }

    @Test("unknown flag bits are preserved, not rejected")
    func unknownFlags() throws {
        var decoder = YamuxFrameDecoder()
        decoder.append(ByteBuffer(bytes: [0, 1, 0x80, 0x01, 0, 0, 0, 1, 0, 0, 0, 0]))
        let frame = try #require(try decoder.nextFrame())
        #expect(frame.flags.contains(.syn))
        #expect(frame.flags.rawValue == 0x8001)
    }
}
