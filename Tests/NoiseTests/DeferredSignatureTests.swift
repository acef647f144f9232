import Crypto
import Identity
import Testing

@testable import Noise

/// The initiator sends message 3 before it checks the responder's identity signature; the
/// handshake only completes once that check passed.
@Suite struct DeferredSignatureTests {
    /// Initiator and a raw XX responder whose message-2 payload is `payload(identity, staticPublic)`.
    static func run(
        expectedPeer: PeerID? = nil,
        payload: (PrivateKey, [UInt8]) throws -> NoiseHandshakePayload
    ) throws -> (NoiseLibp2pHandshake, message3: [UInt8]?, responder: PrivateKey) {
        let responderIdentity = PrivateKey.generateEd25519()
        let responderStatic = Curve25519.KeyAgreement.PrivateKey()
        var initiator = NoiseLibp2pHandshake(
            role: .initiator, local: try NoiseLocalIdentity(identity: .generateEd25519()), expectedRemotePeer: expectedPeer)
        var responder = NoiseHandshakeState(role: .responder, staticKey: responderStatic)
        _ = try responder.readMessage(try #require(try initiator.start()))
        let body = try payload(responderIdentity, Array(responderStatic.publicKey.rawRepresentation))
        let message3 = try initiator.receive(try responder.writeMessage(payload: body.encoded()))
        return (initiator, message3, responderIdentity)
    }

    @Test func aValidSignatureCompletesTheHandshakeAfterMessage3() throws {
        var (handshake, message3, responder) = try Self.run { identity, staticPublic in
            NoiseHandshakePayload(
                identityKey: identity.publicKey.marshal(),
                identitySignature: try identity.sign(NoiseLibp2pHandshake.signaturePrefix + staticPublic))
        }
        #expect(message3 != nil)
        #expect(handshake.hasDeferredSignature && !handshake.isComplete)
        try handshake.verifyDeferredSignature()
        #expect(!handshake.hasDeferredSignature)
        #expect(handshake.result?.remotePeer == PeerID(publicKey: responder.publicKey))
    }

    @Test func aBadSignatureFailsAfterMessage3AndNeverCompletes() throws {
        var (handshake, message3, _) = try Self.run { identity, staticPublic in
            // Signed by the identity, but over another static key.
            NoiseHandshakePayload(
                identityKey: identity.publicKey.marshal(),
                identitySignature: try identity.sign(NoiseLibp2pHandshake.signaturePrefix + staticPublic.reversed()))
        }
        #expect(message3 != nil)
        #expect(throws: NoiseError.self) { try handshake.verifyDeferredSignature() }
        do {
            try handshake.verifyDeferredSignature()
        } catch {
            Issue.record("a second check has nothing left to verify: \(error)")
        }
        #expect(!handshake.isComplete && handshake.result == nil)
    }

    @Test func theWrongPeerIsRefusedBeforeMessage3() throws {
        let other = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        #expect(throws: NoiseError.self) {
            _ = try Self.run(expectedPeer: other) { identity, staticPublic in
                NoiseHandshakePayload(
                    identityKey: identity.publicKey.marshal(),
                    identitySignature: try identity.sign(NoiseLibp2pHandshake.signaturePrefix + staticPublic))
            }
        }
    }
}
