import Crypto
import NIOCore
import Testing

@testable import Noise

func hex(_ s: String) -> [UInt8] {
    var out: [UInt8] = []
    var it = s.makeIterator()
    while let a = it.next(), let b = it.next() { out.append(UInt8(String([a, b]), radix: 16)!) }
    return out
}

private func key(_ byte: UInt8) -> Curve25519.KeyAgreement.PrivateKey {
    try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: [UInt8](repeating: byte, count: 32))
}

/// Vectors produced by an independent implementation (the Python `noiseprotocol` package) with
/// static/ephemeral secrets of all-1s/all-2s (initiator) and all-3s/all-4s (responder).
@Suite struct NoiseHandshakeStateTests {
    static let m1 = "ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59"
    static let m2 = "ac01b2209e86354fb853237b5de0f4fab13c7fcbf433a61c019369617fecf10bb719b14d19eaf5ca91c89748c5ce8668e6864f05ee2367682b3e0c2fd086f0b4f64162733f3fe548251c518fe8c03cced86cd812e317f9705ead84eadcd2aef973a19e619104791b73380393a079392c3b"
    static let m3 = "539a5cf3ae8a0a9134b32bfa775a1522db3558a1351ed4101989b8b88aa6a6f0e995a5273c343d1c35f005c662c3cc142e0cdd5fc8f6a9e718bbfa74549af89902beac6d79d1861d9fdc5b380f5aa7aead"
    static let t1 = "f5c8fdccae5bc3fc165f473b5064b9dc9a299e5d8af592061bc24cc82e67576c"
    static let t2 = "f9951d935c9a133d44c4aae3a273d180e6db937e740d6503"
    static let hash = "b13f89e67c0facbb458c66755001df45267e247a0a4ed532690946f297bd8be0"

    @Test func matchesIndependentImplementationByteForByte() throws {
        var i = NoiseHandshakeState(role: .initiator, staticKey: key(1), ephemeralKey: key(2))
        var r = NoiseHandshakeState(role: .responder, staticKey: key(3), ephemeralKey: key(4))
        let m1 = try i.writeMessage(payload: [])
        #expect(m1 == hex(Self.m1))
        #expect(try r.readMessage(m1) == [])
        let m2 = try r.writeMessage(payload: Array("responder payload".utf8))
        #expect(m2 == hex(Self.m2))
        #expect(try i.readMessage(m2) == Array("responder payload".utf8))
        let m3 = try i.writeMessage(payload: Array("initiator payload".utf8))
        #expect(m3 == hex(Self.m3))
        #expect(try r.readMessage(m3) == Array("initiator payload".utf8))
        #expect(i.isComplete && r.isComplete)
        #expect(i.handshakeHash == hex(Self.hash))
        #expect(r.handshakeHash == i.handshakeHash)
        #expect(i.remoteStaticKey == Array(key(3).publicKey.rawRepresentation))
        #expect(r.remoteStaticKey == Array(key(1).publicKey.rawRepresentation))

        var (iSend, iReceive) = i.split()
        var (rSend, rReceive) = r.split()
        var out = ByteBuffer()
        try Array("hello over noise".utf8).withUnsafeBytes { try iSend.seal($0, into: &out) }
        #expect(Array(buffer: out) == hex(Self.t1))
        var plain = ByteBuffer()
        try Array(buffer: out).withUnsafeBytes { try rReceive.open($0, into: &plain) }
        #expect(String(buffer: plain) == "hello over noise")

        out.clear()
        try Array("and back".utf8).withUnsafeBytes { try rSend.seal($0, into: &out) }
        #expect(Array(buffer: out) == hex(Self.t2))
        plain.clear()
        try Array(buffer: out).withUnsafeBytes { try iReceive.open($0, into: &plain) }
        #expect(String(buffer: plain) == "and back")
    }

    @Test func tamperedMessageFailsAuthentication() throws {
        var i = NoiseHandshakeState(role: .initiator, staticKey: key(1), ephemeralKey: key(2))
        _ = try i.writeMessage(payload: [])
        var m2 = hex(Self.m2)
        m2[40] ^= 0x01
        #expect { try i.readMessage(m2) } throws: { ($0 as? NoiseError)?.code == .decryptionFailed }
    }

    @Test func truncatedAndOutOfTurnMessagesAreRejected() throws {
        var r = NoiseHandshakeState(role: .responder, staticKey: key(3))
        #expect { try r.readMessage([1, 2, 3]) } throws: { ($0 as? NoiseError)?.code == .malformedHandshakeMessage }
        var r2 = NoiseHandshakeState(role: .responder, staticKey: key(3))
        #expect { try r2.writeMessage(payload: []) } throws: { ($0 as? NoiseError)?.code == .malformedHandshakeMessage }
        var i = NoiseHandshakeState(role: .initiator, staticKey: key(1))
        _ = try i.writeMessage(payload: [])
        // Message 2 needs e (32) + encrypted s (48) + tag (16) at the least.
        #expect { try i.readMessage(Array(hex(Self.m2).prefix(70))) } throws: { ($0 as? NoiseError) != nil }
    }

    @Test func transportRejectsShortAndTamperedFrames() throws {
        var i = NoiseHandshakeState(role: .initiator, staticKey: key(1))
        var r = NoiseHandshakeState(role: .responder, staticKey: key(3))
        try _ = r.readMessage(i.writeMessage(payload: []))
        try _ = i.readMessage(r.writeMessage(payload: []))
        try _ = r.readMessage(i.writeMessage(payload: []))
        var (send, _) = i.split()
        var (_, receive) = r.split()
        var out = ByteBuffer()
        #expect { try [UInt8](repeating: 0, count: 10).withUnsafeBytes { try receive.open($0, into: &out) } } throws: {
            ($0 as? NoiseError)?.code == .invalidFrame
        }
        var sealed = ByteBuffer()
        try [UInt8](repeating: 7, count: 100).withUnsafeBytes { try send.seal($0, into: &sealed) }
        var bytes = Array(buffer: sealed)
        bytes[3] ^= 0x80
        var receive2 = r.split().receive
        #expect { try bytes.withUnsafeBytes { try receive2.open($0, into: &out) } } throws: {
            ($0 as? NoiseError)?.code == .decryptionFailed
        }
    }
}
