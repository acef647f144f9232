import Foundation
import Identity
import Kademlia
import Testing

private func hex(_ text: String) -> [UInt8] {
    var bytes: [UInt8] = []
    var index = text.startIndex
    while index < text.endIndex {
        let next = text.index(index, offsetBy: 2)
        bytes.append(UInt8(text[index..<next], radix: 16)!)
        index = next
    }
    return bytes
}

private func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

@Suite struct DAGCBORTests {
    /// RFC 8949 Appendix A examples (the ones DAG-CBOR allows).
    @Test func encodesTheRFCExamples() throws {
        let cases: [(DAGCBOR, String)] = [
            (.unsigned(0), "00"), (.unsigned(23), "17"), (.unsigned(24), "1818"), (.unsigned(100), "1864"),
            (.unsigned(1000), "1903e8"), (.unsigned(1_000_000), "1a000f4240"), (.unsigned(1_000_000_000_000), "1b000000e8d4a51000"),
            (.unsigned(UInt64.max), "1bffffffffffffffff"), (.int(-1), "20"), (.int(-100), "3863"), (.int(-1000), "3903e7"),
            (.negative(UInt64.max), "3bffffffffffffffff"), (.bytes([1, 2, 3, 4]), "4401020304"), (.text("IETF"), "6449455446"),
            (.text("\u{00fc}"), "62c3bc"), (.float(1.1), "fb3ff199999999999a"), (.bool(false), "f4"), (.bool(true), "f5"),
            (.null, "f6"), (.array([.unsigned(1), .array([.unsigned(2), .unsigned(3)]), .array([.unsigned(4), .unsigned(5)])]), "8301820203820405"),
            (.map([("a", .unsigned(1)), ("b", .array([.unsigned(2), .unsigned(3)]))]), "a26161016162820203"),
        ]
        for (value, expected) in cases {
            #expect(hex(value.encoded()) == expected, "\(value)")
            #expect(try DAGCBOR(decoding: hex(expected)) == value)
        }
    }

    @Test func mapKeysAreSortedByLengthThenBytes() throws {
        let value = DAGCBOR.map([("aa", .unsigned(1)), ("b", .unsigned(2)), ("ab", .unsigned(3))])
        #expect(hex(value.encoded()) == "a3616202626161016261620" + "3")
        // Any order decodes (as go-ipld-prime's default decoder); a link is tag 42 over 0x00 ‖ CID.
        #expect(try DAGCBOR(decoding: hex("a2616202616101"))["a"] == .unsigned(1))
        #expect(hex(DAGCBOR.link([0x01, 0x55]).encoded()) == "d82a4300" + "0155")
    }

    @Test func badInputIsATypedError() {
        func code(_ text: String, _ limits: DAGCBOR.Limits = .init()) -> KademliaError.Code? {
            do {
                _ = try DAGCBOR(decoding: hex(text), limits: limits)
                return nil
            } catch {
                return error.code
            }
        }
        #expect(code("") == .malformedMessage)  // empty
        #expect(code("1a0000") == .malformedMessage)  // truncated integer
        #expect(code("5f4101ff") == .malformedMessage)  // indefinite byte string
        #expect(code("bf6161 01ff".replacingOccurrences(of: " ", with: "")) == .malformedMessage)  // indefinite map
        #expect(code("a1010 2".replacingOccurrences(of: " ", with: "")) == .malformedMessage)  // integer key
        #expect(code("a2616101616102") == .malformedMessage)  // repeated key
        #expect(code("c11a514b67b0") == .malformedMessage)  // tag 1
        #expect(code("d82a420102") == .malformedMessage)  // tag 42 without the 0x00 prefix
        #expect(code("f7") == .malformedMessage)  // undefined
        #expect(code("f93c00") == .malformedMessage)  // half float
        #expect(code("fb7ff8000000000000") == .malformedMessage)  // NaN
        #expect(code("62ff00") == .malformedMessage)  // text that is not UTF-8
        #expect(code("0000") == .malformedMessage)  // trailing bytes
        #expect(code("5bffffffffffffffff00") == .malformedMessage)  // a length past the input
        #expect(code("9bffffffffffffffff00") == .malformedMessage)  // a count past the input
        #expect(code(String(repeating: "81", count: 17) + "00") == .limitExceeded)  // nested 17 deep
        var few = DAGCBOR.Limits()
        few.maxItems = 3
        #expect(code("8401020304", few) == .limitExceeded)
        var small = DAGCBOR.Limits()
        small.maxSize = 2
        #expect(code("1903e8", small) == .limitExceeded)
    }
}

@Suite struct IPNSRecordTests {
    /// Ed25519 seed 42 (32 bytes, little endian): the vector below was computed from the spec
    /// (hand-written DAG-CBOR and protobuf, Ed25519 signatures from Python's `cryptography`).
    static let key = PrivateKey.ed25519(seed: 42)
    static let name = PeerID(publicKey: key.publicKey)
    static let eol = Date(timeIntervalSince1970: 1_893_456_000)  // 2030-01-01T00:00:00Z
    static let now = Date(timeIntervalSince1970: 1_800_000_000)
    static let cbor =
        "a56354544c1b0000034630b8a0006556616c75654e2f697066732f6261666b716161616853657175656e6365076856616c6964697479"
        + "54323033302d30312d30315430303a30303a30305a6c56616c69646974795479706500"
    static let signatureV2 =
        "58a4ab885deb218eb4719619470bf30f8bc9f15d0e709646eed55df570b3995a583876b5846debb6c75b4286f00d3fcd70d1c92908117d7a2047584fb7e61007"
    static let signatureV1 =
        "da3df3be2320ecd18eea0c344bdd672b9badcc6a1836e23635b6cc0bdbb0fea430e32e349ae55510fc04ff1abda5bf9ea6aad70d55fb4553152632d2023e5d0f"

    static func make(
        sequence: UInt64 = 7, validity: Date = eol, key: PrivateKey = key, v1: Bool = true, value: String = "/ipfs/bafkqaaa"
    ) throws -> IPNSRecord {
        try IPNSRecord.make(value: value, sequence: sequence, validity: validity, ttl: .seconds(3600), key: key, v1Compatible: v1)
    }

    @Test func recordsHaveTheSpecsBytes() throws {
        #expect(hex(Self.name.bytes) == "002408011220e1ef2fe6f211f7399a8a6a55fdc811ee92ec7f01ee125942da87ef659553499f")
        let v2 = try Self.make(v1: false)
        #expect(hex(v2.data) == Self.cbor)
        #expect(hex(v2.encoded()) == "4240" + Self.signatureV2 + "4a59" + Self.cbor)
        let full = try Self.make()
        let expected =
            "0a0e2f697066732f6261666b71616161" + "1240" + Self.signatureV1 + "1800"
            + "2214323033302d30312d30315430303a30303a30305a" + "2807" + "3080c0e285e368" + "4240" + Self.signatureV2 + "4a59" + Self.cbor
        #expect(hex(full.encoded()) == expected)
        let decoded = try IPNSRecord(decoding: hex(expected))
        #expect(decoded == full)
        #expect(decoded.signedValue == Array("/ipfs/bafkqaaa".utf8))
        #expect(decoded.signedSequence == 7)
        #expect(decoded.signedTTL == 3_600_000_000_000)
        #expect(decoded.expiry?.rfc3339 == "2030-01-01T00:00:00Z")
        try decoded.validate(for: Self.name, now: Self.now)
        try IPNSRecord(decoding: hex("4240" + Self.signatureV2 + "4a59" + Self.cbor)).validate(for: Self.name, now: Self.now)
        #expect(IPNSRecord.routingKey(for: Self.name) == Array("/ipns/".utf8) + Self.name.bytes)
    }

    @Test func rfc3339AsGoParsesAndFormatsIt() {
        #expect(IPNSRecord.Time(rfc3339: "1970-01-01T00:00:00.000000001Z") == .init(seconds: 0, nanoseconds: 1))
        #expect(IPNSRecord.Time(rfc3339: "2030-01-01T01:00:00+01:00") == .init(seconds: 1_893_456_000))
        #expect(IPNSRecord.Time(rfc3339: "2029-12-31T23:30:00.5-00:30") == .init(seconds: 1_893_456_000, nanoseconds: 500_000_000))
        #expect(IPNSRecord.Time(rfc3339: "2024-02-29T00:00:00Z") != nil)
        for bad in ["2023-02-29T00:00:00Z", "2030-01-01 00:00:00Z", "2030-01-01T24:00:00Z", "2030-01-01T00:00:00", "2030-1-01T00:00:00Z",
            "2030-01-01T00:00:00.Z", "2030-01-01T00:00:00+0100", "2030-13-01T00:00:00Z"]
        {
            #expect(IPNSRecord.Time(rfc3339: bad) == nil, "\(bad)")
        }
        #expect(IPNSRecord.Time(seconds: 0, nanoseconds: 1).rfc3339 == "1970-01-01T00:00:00.000000001Z")
        #expect(IPNSRecord.Time(seconds: 1_893_456_000, nanoseconds: 120_000_000).rfc3339 == "2030-01-01T00:00:00.12Z")
        #expect(IPNSRecord.Time(seconds: -1).rfc3339 == "1969-12-31T23:59:59Z")
    }

    @Test func keysThatNamesDoNotInlineAreEmbedded() throws {
        let ecdsa = PrivateKey.generateECDSA()
        let name = PeerID(publicKey: ecdsa.publicKey)
        let record = try Self.make(key: ecdsa)
        #expect(record.publicKey == ecdsa.publicKey.marshal())
        try record.validate(for: name, now: Self.now)
        #expect(try Self.make().publicKey == nil, "Ed25519 names inline the key")
        // Without the embedded key, only a key book knows it (go asks its peerstore).
        var bare = record
        bare.publicKey = nil
        let reencoded = try IPNSRecord(decoding: bare.encoded())
        #expect(throws: KademliaError.self) { try reencoded.validate(for: name, now: Self.now) }
        try reencoded.validate(for: name, now: Self.now, keyBook: { $0 == name ? ecdsa.publicKey : nil })
        // An embedded key that is not the name's.
        var other = record
        other.publicKey = PrivateKey.generateECDSA().publicKey.marshal()
        #expect(throws: KademliaError.self) { try other.validate(for: name, now: Self.now) }
    }

    @Test func invalidRecordsAreTypedErrors() throws {
        func code(_ body: () throws -> Void) -> KademliaError.Code? {
            do {
                try body()
                return nil
            } catch let error as KademliaError {
                return error.code
            } catch {
                return nil
            }
        }
        let record = try Self.make()
        let other = PeerID(publicKey: PrivateKey.ed25519(seed: 43).publicKey)
        #expect(code { try record.validate(for: other, now: Self.now) } == .invalidRecord)  // not the name's signature
        #expect(code { try record.validate(for: Self.name, now: Self.eol.addingTimeInterval(1)) } == .invalidRecord)  // expired
        #expect(code { try record.validate(for: Self.name, now: Self.eol) } == nil)  // valid up to its EOL
        var tampered = record
        tampered.value = Array("/ipfs/other".utf8)
        #expect(code { try tampered.validate(for: Self.name, now: Self.now) } == .invalidRecord)  // V1 differs from data
        var lying = record
        lying.sequence = 8
        #expect(code { try lying.validate(for: Self.name, now: Self.now) } == .invalidRecord)
        var unsigned = record
        unsigned.signatureV2 = nil
        #expect(code { try unsigned.validate(for: Self.name, now: Self.now) } == .invalidRecord)
        var flipped = record.encoded()
        flipped[flipped.count - 3] ^= 1  // inside the signed data
        #expect(code { try IPNSRecord(decoding: flipped).validate(for: Self.name, now: Self.now) } == .invalidRecord)
        #expect(code { _ = try IPNSRecord(decoding: [0xFF, 0xFF]) } == .invalidRecord)
        #expect(code { _ = try IPNSRecord(decoding: hex("4a0100")) } == .invalidRecord)  // data not a map
        #expect(code { _ = try IPNSRecord(decoding: hex("4240") + hex(Self.signatureV2)) } == .invalidRecord)  // no data
        #expect(code { _ = try IPNSRecord(decoding: [UInt8](repeating: 0, count: IPNSRecord.maxSize + 1)) } == .limitExceeded)
        #expect(code { _ = try Self.make(value: String(repeating: "x", count: 11_000)) } == .limitExceeded)

        // Through the validator: the key must be /ipns/<peer ID bytes>.
        let validator = IPNSValidator(now: { Self.now })
        let key = IPNSRecord.routingKey(for: Self.name)
        #expect(code { try validator.validate(key: key, value: record.encoded()) } == nil)
        #expect(code { try validator.validate(key: Array("/ipns/x".utf8), value: record.encoded()) } == .invalidRecord)
        #expect(code { try validator.validate(key: IPNSRecord.routingKey(for: other), value: record.encoded()) } == .invalidRecord)
        #expect(code { try IPNSValidator().validate(key: key, value: record.encoded()) } == nil)
        #expect(code { try IPNSValidator(now: { Self.eol.addingTimeInterval(60) }).validate(key: key, value: record.encoded()) } == .invalidRecord)
    }

    @Test func theHighestSequenceThenTheLatestValidityWins() throws {
        let validator = IPNSValidator(now: { Self.now })
        let key = IPNSRecord.routingKey(for: Self.name)
        let (one, two) = (try Self.make(sequence: 1).encoded(), try Self.make(sequence: 2).encoded())
        #expect(validator.select(key: key, values: [one, two]) == 1)
        #expect(validator.select(key: key, values: [two, one]) == 0)
        let later = try Self.make(sequence: 1, validity: Self.eol.addingTimeInterval(60)).encoded()
        #expect(validator.select(key: key, values: [one, later, one]) == 1)
        // Sequence beats validity.
        #expect(validator.select(key: key, values: [later, two]) == 1)
        // A tie goes to the bytewise larger record.
        let a = try Self.make(sequence: 3, value: "/ipfs/a").encoded()
        let b = try Self.make(sequence: 3, value: "/ipfs/b").encoded()
        let larger = a.lexicographicallyPrecedes(b) ? 1 : 0
        #expect(validator.select(key: key, values: [a, b]) == larger)
        #expect(validator.select(key: key, values: [b, a]) == 1 - larger)
    }
}
