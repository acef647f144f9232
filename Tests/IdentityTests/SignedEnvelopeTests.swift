import Foundation
import Multiformats
import Testing

@testable import Identity

/// A signed peer record made by py-libp2p 0.8.1 (`libp2p.peer.envelope.seal_record`) with the
/// Ed25519 key whose 32-byte seed is 7 as a little-endian number (our `PrivateKey.ed25519(seed: 7)`),
/// seq 1700000000000000000 and the addresses `/ip4/192.0.2.1/tcp/4001`,
/// `/ip6/2001:db8::1/udp/4001/quic-v1`. Ed25519 signatures are deterministic, so sealing the same
/// record must give these exact bytes. (The live cross-checks with py-libp2p and go-libp2p are in
/// Tests/InteropTests/PeerRecordInteropTests.swift.)
private let pyLibp2pRecord = hex(
    "0a2408011220a2fa2f4a355ba2e907a53009e9e37caddf7ac7e66a08ba07631f553072b3f24c120203011a590a26002408011220"
        + "a2fa2f4a355ba2e907a53009e9e37caddf7ac7e66a08ba07631f553072b3f24c108080a8b1e39fe7cb171a0a0a0804c0000201"
        + "060fa11a190a172920010db800000000000000000000000191020fa1cd032a409e667454f35854b52535899e415e0cfc0a07b1"
        + "1f62f1e5d7df83df3c7a56473d50234f3b093cde8b26b7a71d4d63b0a1c0da05f58cc886d8cd2c3493e39b0501")

/// A valid envelope's fields, rewritten by a test (field numbers as on the wire).
private struct RawEnvelope {
    var fields: [(Int, ProtobufValue)]

    init(_ bytes: [UInt8]) throws {
        var reader = ProtobufReader(bytes)
        var fields: [(Int, ProtobufValue)] = []
        while let field = try reader.next() { fields.append(field) }
        self.fields = fields
    }

    func value(_ number: Int) -> [UInt8]? {
        fields.first { $0.0 == number }?.1.bytesValue
    }

    mutating func set(_ number: Int, _ bytes: [UInt8]) {
        fields = fields.map { $0.0 == number ? (number, .bytes(bytes)) : $0 }
    }

    mutating func remove(_ number: Int) {
        fields.removeAll { $0.0 == number }
    }

    var bytes: [UInt8] {
        var w = ProtobufWriter()
        for (number, value) in fields {
            switch value {
            case .bytes(let b): w.writeBytesField(number, b)
            case .varint(let v): w.writeVarintField(number, v)
            case .fixed32(let v): w.writeFixed32Field(number, v)
            case .fixed64(let v): w.writeFixed64Field(number, v)
            }
        }
        return w.bytes
    }
}

@Suite struct SignedEnvelopeTests {
    static let key = PrivateKey.ed25519(seed: 7)
    static let domain = "pointsub-test"
    static let type: [UInt8] = Array("/pointsub/test".utf8)

    static func sealed(_ payload: [UInt8] = Array("hello".utf8), key: PrivateKey = key) throws -> SignedEnvelope {
        try SignedEnvelope.seal(payload: payload, payloadType: type, domain: domain, with: key)
    }

    @Test(arguments: [PrivateKey.ed25519(seed: 11), PrivateKey.generateECDSA()])
    func sealAndOpenRoundTrip(key: PrivateKey) throws {
        let envelope = try Self.sealed(Array("payload bytes".utf8), key: key)
        let bytes = envelope.marshal()
        let opened = try SignedEnvelope.open(bytes, domain: Self.domain, payloadType: Self.type)
        #expect(opened == envelope)
        #expect(opened.payload == Array("payload bytes".utf8))
        #expect(opened.publicKey == key.publicKey)
        #expect(opened.signer == key.peerID)
    }

    @Test func rsaRoundTrip() throws {
        let key = try PrivateKey.generateRSA(bits: 2048)
        let envelope = try Self.sealed(key: key)
        #expect(try SignedEnvelope.open(envelope.marshal(), domain: Self.domain) == envelope)
    }

    /// RFC 0002: the signature covers uvarint(len) ‖ bytes of domain, payload type and payload, and
    /// the envelope is {1: PublicKey message, 2: type, 3: payload, 5: signature}.
    @Test func wireFormatAndSignedBytesAreTheRFCs() throws {
        let payload = [UInt8](repeating: 0xab, count: 200)  // a two-byte uvarint length
        let envelope = try Self.sealed(payload)
        let raw = try RawEnvelope(envelope.marshal())
        #expect(raw.fields.map(\.0) == [1, 2, 3, 5])
        #expect(raw.value(1) == Self.key.publicKey.marshal())
        #expect(raw.value(2) == Self.type)
        #expect(raw.value(3) == payload)
        // The signed bytes, built independently of the implementation.
        var expected: [UInt8] = [UInt8(Self.domain.utf8.count)] + Array(Self.domain.utf8)
        expected += [UInt8(Self.type.count)] + Self.type
        expected += [0xc8, 0x01] + payload
        #expect(SignedEnvelope.signingBytes(domain: Self.domain, payloadType: Self.type, payload: payload) == expected)
        let signature = try #require(raw.value(5))
        #expect(Self.key.publicKey.verify(signature: signature, for: expected))
    }

    @Test func wrongDomainDoesNotVerify() throws {
        let bytes = try Self.sealed().marshal()
        #expect(throws: RecordError.invalidSignature) {
            try SignedEnvelope.open(bytes, domain: "another-domain")
        }
        #expect(throws: RecordError.invalidSignature) {
            try SignedEnvelope.open(bytes, domain: PeerRecord.domain)
        }
    }

    @Test func wrongPayloadTypeIsRefused() throws {
        let bytes = try Self.sealed().marshal()
        #expect(throws: RecordError.wrongPayloadType) {
            try SignedEnvelope.open(bytes, domain: Self.domain, payloadType: PeerRecord.payloadType)
        }
    }

    @Test func tamperedFieldsDoNotVerify() throws {
        let bytes = try Self.sealed().marshal()
        var payload = try RawEnvelope(bytes)
        payload.set(3, Array("hellO".utf8))
        var type = try RawEnvelope(bytes)
        type.set(2, Array("/pointsub/tesT".utf8))
        var signature = try RawEnvelope(bytes)
        signature.set(5, signature.value(5)!.map { $0 ^ 1 })
        var otherKey = try RawEnvelope(bytes)
        otherKey.set(1, PrivateKey.ed25519(seed: 8).publicKey.marshal())
        for tampered in [payload, type, signature, otherKey] {
            #expect(throws: RecordError.invalidSignature) {
                try SignedEnvelope.open(tampered.bytes, domain: Self.domain)
            }
        }
    }

    @Test func missingFieldsAreTyped() throws {
        let bytes = try Self.sealed().marshal()
        for field in [1, 2, 5] {
            var raw = try RawEnvelope(bytes)
            raw.remove(field)
            #expect(throws: RecordError.missingField, "field \(field)") {
                try SignedEnvelope.open(raw.bytes, domain: Self.domain)
            }
        }
        #expect(throws: RecordError.missingField) { try SignedEnvelope.open([], domain: Self.domain) }
    }

    @Test func malformedProtobufIsTyped() throws {
        let bytes = try Self.sealed().marshal()
        // Every proper prefix that cuts a field short is a truncated protobuf.
        for length in 1..<bytes.count {
            let prefix = Array(bytes.prefix(length))
            do {
                _ = try SignedEnvelope.open(prefix, domain: Self.domain)
                Issue.record("prefix of \(length) bytes opened")
            } catch {
                // A cut exactly between two fields leaves a well-formed message without its later fields.
                #expect([RecordError.malformed, .missingField].contains(error), "prefix \(length): \(error)")
            }
        }
        #expect(throws: RecordError.malformed) { try SignedEnvelope.open(Array(bytes.dropLast()), domain: Self.domain) }
        // A known field with another wire type, and a field twice.
        var wrongType = try RawEnvelope(bytes)
        wrongType.fields[1] = (2, .varint(1))
        #expect(throws: RecordError.malformed) { try SignedEnvelope.open(wrongType.bytes, domain: Self.domain) }
        var twice = try RawEnvelope(bytes)
        twice.fields.append((3, .bytes([1])))
        #expect(throws: RecordError.malformed) { try SignedEnvelope.open(twice.bytes, domain: Self.domain) }
        // Unknown fields are ignored.
        var extra = try RawEnvelope(bytes)
        extra.fields.append((9, .bytes([1, 2, 3])))
        #expect(try SignedEnvelope.open(extra.bytes, domain: Self.domain).payload == Array("hello".utf8))
    }

    @Test func invalidPublicKeyIsTyped() throws {
        var raw = try RawEnvelope(try Self.sealed().marshal())
        raw.set(1, [0x08, 0x01, 0x12, 0x03, 1, 2, 3])  // an Ed25519 key of 3 bytes
        #expect(throws: RecordError.invalidPublicKey) { try SignedEnvelope.open(raw.bytes, domain: Self.domain) }
    }

    @Test func oversizeInputAndFieldsAreRefused() throws {
        let limits = SignedEnvelope.Limits.defaults
        let bytes = try Self.sealed().marshal()
        // The whole envelope.
        var big = try RawEnvelope(bytes)
        big.fields.append((9, .bytes([UInt8](repeating: 0, count: limits.maxEnvelopeBytes))))
        #expect(throws: RecordError.tooLarge) { try SignedEnvelope.open(big.bytes, domain: Self.domain) }
        // Each field over its own limit, the envelope under its total.
        let cases: [(Int, Int)] = [
            (1, limits.maxPublicKeyBytes + 1), (2, limits.maxPayloadTypeBytes + 1),
            (3, limits.maxPayloadBytes + 1), (5, limits.maxSignatureBytes + 1),
        ]
        for (field, size) in cases {
            var raw = try RawEnvelope(bytes)
            raw.set(field, [UInt8](repeating: 1, count: size))
            #expect(raw.bytes.count <= limits.maxEnvelopeBytes)
            #expect(throws: RecordError.tooLarge, "field \(field)") {
                try SignedEnvelope.open(raw.bytes, domain: Self.domain)
            }
        }
        // Sealing refuses what opening would refuse.
        #expect(throws: RecordError.tooLarge) {
            try SignedEnvelope.seal(
                payload: [UInt8](repeating: 0, count: limits.maxPayloadBytes + 1), payloadType: Self.type,
                domain: Self.domain, with: Self.key)
        }
        #expect(throws: RecordError.tooLarge) {
            try SignedEnvelope.open(bytes, domain: String(repeating: "d", count: limits.maxDomainBytes + 1))
        }
    }

    @Test func sealRefusesEmptyDomainOrType() {
        #expect(throws: RecordError.invalidArgument) {
            try SignedEnvelope.seal(payload: [1], payloadType: Self.type, domain: "", with: Self.key)
        }
        #expect(throws: RecordError.invalidArgument) {
            try SignedEnvelope.seal(payload: [1], payloadType: [], domain: Self.domain, with: Self.key)
        }
    }
}

@Suite struct PeerRecordTests {
    static let key = PrivateKey.ed25519(seed: 7)
    static let addresses: [Multiaddr] = ["/ip4/192.0.2.1/tcp/4001", "/ip6/2001:db8::1/udp/4001/quic-v1"]

    @Test func matchesPyLibp2pByteForByte() throws {
        let record = PeerRecord(peerID: Self.key.peerID, seq: 1_700_000_000_000_000_000, addresses: Self.addresses)
        let signed = try SignedPeerRecord.seal(record, with: Self.key)
        #expect(Base16.encode(signed.bytes) == Base16.encode(pyLibp2pRecord))
        let opened = try SignedPeerRecord(opening: pyLibp2pRecord)
        #expect(opened.record == record)
        #expect(opened.peerID.description == "12D3KooWLnZUpcaBwbz9uD1XsyyHnbXUrJRmxnsMiRnuCmvPix67")
        #expect(opened.bytes == pyLibp2pRecord)
    }

    @Test func envelopeOfPeerRecordUsesTheSpecDomainAndType() throws {
        let signed = try SignedPeerRecord.seal(PeerRecord(peerID: Self.key.peerID, addresses: Self.addresses), with: Self.key)
        #expect(signed.envelope.payloadType == [0x03, 0x01])
        try signed.envelope.verify(domain: "libp2p-peer-record")
        #expect(throws: RecordError.invalidSignature) { try signed.envelope.verify(domain: "libp2p-routing-state") }
    }

    @Test func recordRoundTripAndUnknownAddressesSkipped() throws {
        let record = PeerRecord(peerID: Self.key.peerID, seq: 42, addresses: Self.addresses)
        #expect(try PeerRecord(decoding: record.encoded()) == record)
        // An AddressInfo whose multiaddr uses a protocol we do not know (code 0x300000) is skipped.
        var w = ProtobufWriter()
        w.writeRaw(record.encoded())
        var info = ProtobufWriter()
        info.writeBytesField(1, Varint.encode(0x30_0000) + [1, 2])
        w.writeBytesField(3, info.bytes)
        let decoded = try PeerRecord(decoding: w.bytes)
        #expect(decoded.addresses == Self.addresses)
        #expect(decoded.skippedAddresses == 1)
        // No seq on the wire is seq 0 (proto3 default).
        #expect(try PeerRecord(decoding: PeerRecord(peerID: Self.key.peerID, seq: 0, addresses: []).encoded()).seq == 0)
    }

    /// RFC 0003: the envelope's key must be the record's peer.
    @Test func recordOfAnotherPeerIsRefused() throws {
        let other = PrivateKey.ed25519(seed: 8)
        let record = PeerRecord(peerID: other.peerID, addresses: Self.addresses)
        let envelope = try SignedEnvelope.seal(
            payload: record.encoded(), payloadType: PeerRecord.payloadType, domain: PeerRecord.domain, with: Self.key)
        #expect(throws: RecordError.peerMismatch) { try SignedPeerRecord(opening: envelope.marshal()) }
        #expect(throws: RecordError.peerMismatch) { try SignedPeerRecord.seal(record, with: Self.key) }
    }

    @Test func envelopeOfAnotherTypeOrDomainIsRefused() throws {
        let record = PeerRecord(peerID: Self.key.peerID, addresses: Self.addresses)
        let otherType = try SignedEnvelope.seal(
            payload: record.encoded(), payloadType: [0x81, 0x06], domain: PeerRecord.domain, with: Self.key)
        #expect(throws: RecordError.wrongPayloadType) { try SignedPeerRecord(opening: otherType.marshal()) }
        let otherDomain = try SignedEnvelope.seal(
            payload: record.encoded(), payloadType: PeerRecord.payloadType, domain: "libp2p-routing-state", with: Self.key)
        #expect(throws: RecordError.invalidSignature) { try SignedPeerRecord(opening: otherDomain.marshal()) }
    }

    @Test func badRecordPayloadsAreTyped() throws {
        func sealedPayload(_ payload: [UInt8]) throws -> [UInt8] {
            try SignedEnvelope.seal(
                payload: payload, payloadType: PeerRecord.payloadType, domain: PeerRecord.domain, with: Self.key
            ).marshal()
        }
        let good = PeerRecord(peerID: Self.key.peerID, seq: 1, addresses: Self.addresses).encoded()
        #expect(throws: RecordError.malformed) { try SignedPeerRecord(opening: sealedPayload(Array(good.dropLast()))) }
        #expect(throws: RecordError.missingField) { try SignedPeerRecord(opening: sealedPayload([0x10, 0x01])) }
        var badID = ProtobufWriter()
        badID.writeBytesField(1, [0x12, 0x03, 1, 2, 3])  // a sha2-256 multihash of 3 bytes
        #expect(throws: RecordError.invalidPeerID) { try SignedPeerRecord(opening: sealedPayload(badID.bytes)) }
        var wrongType = ProtobufWriter()
        wrongType.writeBytesField(1, Self.key.peerID.bytes)
        wrongType.writeBytesField(2, [1])  // seq must be a varint
        #expect(throws: RecordError.malformed) { try SignedPeerRecord(opening: sealedPayload(wrongType.bytes)) }
    }

    @Test func tooManyOrTooLongAddressesAreRefused() throws {
        let many = [Multiaddr](repeating: "/ip4/192.0.2.1/tcp/1", count: PeerRecord.maxAddresses + 1)
        let record = PeerRecord(peerID: Self.key.peerID, seq: 1, addresses: many)
        #expect(throws: RecordError.tooLarge) { try PeerRecord(decoding: record.encoded()) }
        #expect(throws: RecordError.tooLarge) { try SignedPeerRecord.seal(record, with: Self.key) }
        var w = ProtobufWriter()
        w.writeBytesField(1, Self.key.peerID.bytes)
        var info = ProtobufWriter()
        info.writeBytesField(1, [UInt8](repeating: 0, count: PeerRecord.maxAddressBytes + 1))
        w.writeBytesField(3, info.bytes)
        #expect(throws: RecordError.tooLarge) { try PeerRecord(decoding: w.bytes) }
    }

    @Test func sequenceNumbersIncreaseFromTheWallClock() {
        let before = UInt64(Date().timeIntervalSince1970) * 1_000_000_000
        var last = PeerRecord.nextSequenceNumber()
        #expect(last >= before)
        for _ in 0..<1000 {
            let next = PeerRecord.nextSequenceNumber()
            #expect(next > last)
            last = next
        }
        let after = UInt64(Date().timeIntervalSince1970 + 1) * 1_000_000_000
        #expect(last < after + 1000)
        #expect(PeerRecord(peerID: Self.key.peerID, addresses: []).seq > last)
    }
}
