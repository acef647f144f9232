import Testing
@testable import Multiformats

@Suite struct MultihashTests {
    @Test func sha256OfEmptyInput() throws {
        // sha2-256("") is the well-known e3b0c442… digest.
        let mh = Multihash.sha256([UInt8]())
        #expect(mh.code == Multihash.sha256Code)
        #expect(mh.bytes == hex("1220e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"))
        #expect(try Multihash(bytes: mh.bytes) == mh)
    }

    @Test func identity() throws {
        let mh = Multihash.identity([1, 2, 3])
        #expect(mh.bytes == [0x00, 0x03, 1, 2, 3])
        #expect(try Multihash(bytes: [0x00, 0x03, 1, 2, 3]).digest == [1, 2, 3])
    }

    @Test func rejectsBadLengths() {
        #expect(throws: MultiformatsError.self) { try Multihash(bytes: [0x00, 0x03, 1, 2]) }  // short
        #expect(throws: MultiformatsError.self) { try Multihash(bytes: [0x00, 0x01, 1, 2]) }  // trailing
        #expect(throws: MultiformatsError.self) { try Multihash(bytes: [0x00]) }  // no length
        #expect(throws: MultiformatsError.self) { try Multihash(bytes: []) }
        #expect(throws: MultiformatsError.self) { try Multihash(bytes: [0x80, 0x00, 0x00]) }  // non-minimal code
        // sha2-256 digests cannot exceed 32 bytes.
        #expect(throws: MultiformatsError.self) { try Multihash(bytes: [0x12, 33] + [UInt8](repeating: 0, count: 33)) }
    }

    @Test func cidRoundTrip() throws {
        // peer-ids spec example: the same sha2-256 peer ID as CIDv1 and as base58.
        let cid = try CID("bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe")
        #expect(cid.codec == Multicodec.libp2pKey)
        #expect(Base58.encode(cid.multihash.bytes) == "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
        #expect(cid.string() == "bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe")
        #expect(try CID(bytes: cid.bytes) == cid)
        // Version 0 / garbage rejected.
        #expect(throws: MultiformatsError.self) { try CID(bytes: [0x00, 0x72, 0x00, 0x00]) }
        #expect(throws: MultiformatsError.self) { try CID(bytes: [0x01, 0x72]) }
    }
}

@Suite struct ProtobufTests {
    @Test func writerProducesCanonicalBytes() {
        var w = ProtobufWriter()
        w.writeVarintField(1, 150)
        w.writeStringField(2, "testing")
        w.writeBoolField(3, true)
        w.writeBytesField(4, [UInt8]())
        // Encoding-guide examples: field 1 = 150 → 08 96 01; field 2 "testing" → 12 07 74 65 73 74 69 6e 67.
        #expect(w.bytes == hex("089601120774657374696e6718012200"))
    }

    @Test func roundTripAllWireTypes() throws {
        var w = ProtobufWriter()
        w.writeVarintField(1, UInt64.max)
        w.writeFixed64Field(2, 0x0102_0304_0506_0708)
        w.writeFixed32Field(3, 0xdead_beef)
        w.writeBytesField(536_870_911, [9, 8, 7])
        var r = ProtobufReader(w.bytes)
        var fields: [(Int, ProtobufValue)] = []
        while let f = try r.next() { fields.append((f.field, f.value)) }
        #expect(fields.count == 4)
        #expect(fields[0].0 == 1 && fields[0].1 == .varint(UInt64.max))
        #expect(fields[1].0 == 2 && fields[1].1 == .fixed64(0x0102_0304_0506_0708))
        #expect(fields[2].0 == 3 && fields[2].1 == .fixed32(0xdead_beef))
        #expect(fields[3].0 == 536_870_911 && fields[3].1 == .bytes([9, 8, 7]))
        #expect(ProtobufValue.bytes(Array("hi".utf8)).stringValue == "hi")
        #expect(ProtobufValue.bytes([0xff]).stringValue == nil)
    }

    @Test func unknownFieldsAreReturnedForSkipping() throws {
        var w = ProtobufWriter()
        w.writeVarintField(99, 1)
        w.writeBytesField(2, [1])
        var r = ProtobufReader(w.bytes)
        var known: [UInt8]?
        while let (field, value) = try r.next() {
            if field == 2 { known = value.bytesValue }
        }
        #expect(known == [1])
    }

    static let malformed: [(String, [UInt8])] = [
        ("truncated length-delimited", [0x12, 0x05, 1, 2]),
        ("length beyond buffer (huge)", [0x12, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        ("truncated varint value", [0x08, 0x80]),
        ("truncated key", [0x80]),
        ("wire type 3", [0x0b]),
        ("wire type 4", [0x0c]),
        ("wire type 6", [0x0e]),
        ("wire type 7", [0x0f]),
        ("field number 0", [0x00, 0x01]),
        ("truncated fixed64", [0x09, 1, 2, 3]),
        ("truncated fixed32", [0x0d, 1]),
        ("varint over 64 bits", [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
        ("varint over 10 bytes", [0x08] + [UInt8](repeating: 0x80, count: 10) + [0x01]),
    ]

    @Test(arguments: malformed)
    func malformedInputThrows(name: String, bytes: [UInt8]) {
        var r = ProtobufReader(bytes)
        #expect(throws: MultiformatsError.self, "\(name)") {
            while try r.next() != nil {}
        }
    }

    @Test func randomGarbageNeverCrashes() {
        var rng = SplitMix64(seed: 3)
        for _ in 0..<2000 {
            var r = ProtobufReader(rng.bytes(Int.random(in: 0...40, using: &rng)))
            var count = 0
            while let _ = try? r.next() { count += 1 }
            #expect(count <= 40)
        }
    }
}
