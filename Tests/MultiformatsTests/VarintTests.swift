import NIOCore
import Testing
@testable import Multiformats

@Suite struct VarintTests {
    // Vectors from the multiformats/unsigned-varint README.
    static let vectors: [(UInt64, String)] = [
        (0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (255, "ff01"),
        (300, "ac02"), (16384, "808001"), (Varint.maxValue, "ffffffffffffffff7f"),
    ]

    @Test(arguments: vectors)
    func specVectors(value: UInt64, encoded: String) throws {
        #expect(Varint.encode(value) == hex(encoded))
        let decoded = try #require(try Varint.decode(hex(encoded)))
        #expect(decoded.value == value)
        #expect(decoded.length == hex(encoded).count)
        #expect(Varint.encodedLength(value) == hex(encoded).count)
    }

    @Test func decodeIgnoresTrailingBytes() throws {
        let d = try #require(try Varint.decode([0xac, 0x02, 0xff, 0xff]))
        #expect(d.value == 300 && d.length == 2)
    }

    @Test func nonMinimalRejected() {
        #expect(throws: MultiformatsError.varintNonMinimal) { try Varint.decode([0x80, 0x00]) }
        #expect(throws: MultiformatsError.varintNonMinimal) { try Varint.decode([0x81, 0x80, 0x00]) }
        #expect(throws: MultiformatsError.varintNonMinimal) { try Varint.decode([0xff, 0x00]) }
    }

    @Test func tooLongRejected() {
        // 10 bytes (a value needing 64 bits).
        let ten: [UInt8] = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]
        #expect(throws: MultiformatsError.varintOverflow) { try Varint.decode(ten) }
        // Nine continuation bytes: can never complete validly, even without more input.
        #expect(throws: MultiformatsError.varintOverflow) { try Varint.decode([UInt8](repeating: 0xff, count: 9)) }
    }

    @Test func truncatedReturnsNil() throws {
        #expect(try Varint.decode([UInt8]()) == nil)
        #expect(try Varint.decode([0x80]) == nil)
        #expect(try Varint.decode([0xff, 0xff]) == nil)
        #expect(try Varint.decode([UInt8](repeating: 0xff, count: 8)) == nil)
    }

    @Test func randomRoundTrip() throws {
        var rng = SplitMix64(seed: 1)
        for _ in 0..<5000 {
            // Spread values over all bit lengths.
            let bits = UInt64.random(in: 0...63, using: &rng)
            let value = bits == 0 ? 0 : UInt64.random(in: 0...((1 << bits) - 1), using: &rng)
            let enc = Varint.encode(value)
            #expect(enc.count <= Varint.maxLength)
            #expect(enc.count == Varint.encodedLength(value))
            let dec = try #require(try Varint.decode(enc))
            #expect(dec.value == value && dec.length == enc.count)
            // Every strict prefix needs more bytes.
            #expect(try Varint.decode(enc.dropLast()) == nil)
            var appended: [UInt8] = [0xaa]
            Varint.encode(value, into: &appended)
            #expect(Array(appended.dropFirst()) == enc)
        }
    }

    @Test func byteBufferReadConsumesOnlyWhenComplete() throws {
        var buf = ByteBuffer()
        #expect(buf.writeVarint(300) == 2)
        buf.writeVarint(5)
        #expect(try buf.getVarint(at: buf.readerIndex)?.value == 300)
        #expect(try buf.readVarint() == 300)
        #expect(try buf.readVarint() == 5)
        #expect(try buf.readVarint() == nil)

        var partial = ByteBuffer(bytes: [0x80, 0x80])
        #expect(try partial.readVarint() == nil)
        #expect(partial.readableBytes == 2)  // nothing consumed
        partial.writeInteger(UInt8(0x01))
        #expect(try partial.readVarint() == 16384)
        #expect(partial.readableBytes == 0)

        var bad = ByteBuffer(bytes: [0x80, 0x00])
        #expect(throws: MultiformatsError.varintNonMinimal) { try bad.readVarint() }
        #expect(bad.readableBytes == 2)
    }
}
