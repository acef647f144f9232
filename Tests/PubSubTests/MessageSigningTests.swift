import PointSub
import Testing

@testable import PubSub

@Suite struct MessageSigningTests {
    private let ed25519 = PrivateKey.ed25519(seed: 1)

    @Test func signsFromSeqnoAndTheProtobufWithThePrefix() throws {
        let message = try MessageSigning.signedMessage(topic: "t", data: [0xAB], seqno: 0x0102, key: ed25519)
        let from = ed25519.peerID.bytes
        #expect(message.from == from)
        #expect(message.seqno == [0, 0, 0, 0, 0, 0, 1, 2])
        #expect(message.key == nil)  // Ed25519 peer IDs inline the key
        // Built by hand: from (1), data (2), seqno (3), topic (4), each length-delimited.
        let body: [UInt8] = [0x0A, UInt8(from.count)] + from + [0x12, 1, 0xAB, 0x1A, 8, 0, 0, 0, 0, 0, 0, 1, 2, 0x22, 1, 0x74]
        #expect(message.signature == (try ed25519.sign(Array("libp2p-pubsub:".utf8) + body)))  // Ed25519 is deterministic
        #expect(MessageSigning.verify(message) == .success(.init(peer: ed25519.peerID, seqno: 0x0102)))
    }

    @Test func keysThatPeerIDsDoNotInlineTravelInKey() throws {
        let ecdsa = PrivateKey.generateECDSA()  // sha2-256 peer ID
        let message = try MessageSigning.signedMessage(topic: "t", data: [1], seqno: 9, key: ecdsa)
        #expect(message.key == ecdsa.publicKey.marshal())
        #expect(MessageSigning.verify(message) == .success(.init(peer: ecdsa.peerID, seqno: 9)))
        var keyless = message
        keyless.key = nil
        #expect(MessageSigning.verify(keyless) == .failure(.keyNotRecoverable))
        var otherKey = message
        otherKey.key = PrivateKey.generateECDSA().publicKey.marshal()
        #expect(MessageSigning.verify(otherKey) == .failure(.keyMismatch))
        var garbageKey = message
        garbageKey.key = [1, 2, 3]
        #expect(MessageSigning.verify(garbageKey) == .failure(.keyMismatch))
    }

    @Test func tamperingIsDetected() throws {
        let message = try MessageSigning.signedMessage(topic: "t", data: Array("pay 10".utf8), seqno: 5, key: ed25519)
        var data = message
        data.data = Array("pay 99".utf8)
        var topic = message
        topic.topic = "u"
        var seqno = message
        seqno.seqno = MessageSigning.encode(seqno: 6)
        var signature = message
        signature.signature![0] ^= 1
        var from = message
        from.from = PrivateKey.ed25519(seed: 2).peerID.bytes  // a valid peer ID, the wrong author
        for tampered in [data, topic, seqno, signature, from] {
            #expect(MessageSigning.verify(tampered) == .failure(.badSignature))
        }
    }

    @Test func unsignedAndIncompleteMessagesFail() throws {
        let message = try MessageSigning.signedMessage(topic: "t", data: [], seqno: 1, key: ed25519)
        var unsigned = message
        unsigned.signature = nil
        #expect(MessageSigning.verify(unsigned) == .failure(.missingSignature))
        var noFrom = message
        noFrom.from = nil
        #expect(MessageSigning.verify(noFrom) == .failure(.missingFrom))
        var badFrom = message
        badFrom.from = [1, 2, 3]
        #expect(MessageSigning.verify(badFrom) == .failure(.invalidFrom))
        var noSeqno = message
        noSeqno.seqno = nil
        #expect(MessageSigning.verify(noSeqno) == .failure(.invalidSeqno))
        var shortSeqno = message
        shortSeqno.seqno = [1]
        #expect(MessageSigning.verify(shortSeqno) == .failure(.invalidSeqno))
    }

    @Test func seqnoIsEightBytesBigEndian() {
        #expect(MessageSigning.encode(seqno: 0x0102_0304_0506_0708) == [1, 2, 3, 4, 5, 6, 7, 8])
        #expect(MessageSigning.decode(seqno: [1, 2, 3, 4, 5, 6, 7, 8]) == 0x0102_0304_0506_0708)
        #expect(MessageSigning.decode(seqno: [1, 2, 3]) == nil)
    }

}
