#if DEBUG || FUZZING
    import Crypto
    import Identity
    import Multiformats
    @testable import Noise

    /// Handshakes stopped just before the message a fuzz input replaces. Building them costs
    /// several X25519 operations; copying them (value types) costs nothing, so every input starts
    /// from the same states. All keys are fixed, so the seeds' signatures stay valid.
    struct NoiseFixture {
        static let initiatorIdentity = PrivateKey.ed25519(seed: 1)
        static let responderIdentity = PrivateKey.ed25519(seed: 2)
        let initiatorStatic: Curve25519.KeyAgreement.PrivateKey
        let responderStatic: Curve25519.KeyAgreement.PrivateKey
        /// Initiator state after writing message 1 (a fuzz input is message 2).
        let initiatorAwaitingMessage2: NoiseHandshakeState
        /// Responder (libp2p) waiting for message 3; `initiatorWritingMessage3` encrypts it.
        let responderAwaitingMessage3: NoiseLibp2pHandshake
        let initiatorWritingMessage3: NoiseHandshakeState
        /// Initiator (libp2p) waiting for message 2; `responderWritingMessage2` encrypts it.
        let initiatorAwaitingMessage2Libp2p: NoiseLibp2pHandshake
        let responderWritingMessage2: NoiseHandshakeState

        init() {
            func key(_ byte: UInt8) -> Curve25519.KeyAgreement.PrivateKey {
                // Fixed 32-byte scalars are always valid X25519 private keys.
                try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: [UInt8](repeating: byte, count: 32))
            }
            initiatorStatic = key(0x11)
            responderStatic = key(0x22)
            let initiatorEphemeral = key(0x33)
            let responderEphemeral = key(0x44)
            do {
                var initiator = NoiseHandshakeState(role: .initiator, staticKey: initiatorStatic, ephemeralKey: initiatorEphemeral)
                let message1 = try initiator.writeMessage(payload: [])
                initiatorAwaitingMessage2 = initiator
                let responderLocal = try NoiseLocalIdentity(identity: Self.responderIdentity, staticKey: responderStatic)
                var responder = NoiseLibp2pHandshake(role: .responder, local: responderLocal, ephemeralKey: responderEphemeral)
                guard let message2 = try responder.receive(message1) else { preconditionFailure("no message 2") }
                _ = try initiator.readMessage(message2)
                responderAwaitingMessage3 = responder
                initiatorWritingMessage3 = initiator

                let initiatorLocal = try NoiseLocalIdentity(identity: Self.initiatorIdentity, staticKey: initiatorStatic)
                var libp2pInitiator = NoiseLibp2pHandshake(
                    role: .initiator, local: initiatorLocal, expectedRemotePeer: PeerID(publicKey: Self.responderIdentity.publicKey),
                    ephemeralKey: initiatorEphemeral)
                guard let first = try libp2pInitiator.start() else { preconditionFailure("no message 1") }
                var responderState = NoiseHandshakeState(role: .responder, staticKey: responderStatic, ephemeralKey: responderEphemeral)
                _ = try responderState.readMessage(first)
                initiatorAwaitingMessage2Libp2p = libp2pInitiator
                responderWritingMessage2 = responderState
            } catch {
                preconditionFailure("the Noise fuzz fixture's handshake failed: \(error)")
            }
        }

        /// A valid libp2p handshake payload of `identity` for `staticKey`.
        static func payload(_ identity: PrivateKey, staticKey: Curve25519.KeyAgreement.PrivateKey) -> [UInt8] {
            let signed = NoiseLibp2pHandshake.signaturePrefix + Array(staticKey.publicKey.rawRepresentation)
            guard let signature = try? identity.sign(signed) else { preconditionFailure("Ed25519 signing failed") }
            return NoiseHandshakePayload(identityKey: identity.publicKey.marshal(), identitySignature: signature).encoded()
        }

        /// Built once (thread-safe lazy static init) and only read afterwards.
        nonisolated(unsafe) static let shared = NoiseFixture()
    }

    extension FuzzTargets {
        static func fuzzNoise(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
            var reader = FuzzReader(input)
            let mode = reader.byte()
            let body = reader.rest()
            let fixture = NoiseFixture.shared
            switch mode % 4 {
            case 0:
                // A responder reading an arbitrary message 1.
                var responder = NoiseHandshakeState(
                    role: .responder, staticKey: fixture.responderStatic, ephemeralKey: fixture.responderStatic)
                if (try? responder.readMessage(body)) != nil {
                    try check(responder.isOurTurn, "after message 1 it is the responder's turn")
                }
            case 1:
                // An initiator reading an arbitrary message 2 (without a valid key and tag it fails).
                var initiator = fixture.initiatorAwaitingMessage2
                _ = try? initiator.readMessage(body)
            case 2:
                // The input is the initiator's handshake payload in message 3, which the libp2p
                // responder decodes and checks (key, peer ID, signature over the static key).
                var initiator = fixture.initiatorWritingMessage3
                var responder = fixture.responderAwaitingMessage3
                guard let message3 = try? initiator.writeMessage(payload: body) else { return }
                do {
                    // Message 3 is the last: nothing to send back.
                    let reply = try responder.receive(message3)
                    try check(reply == nil, "the responder answered message 3")
                } catch let failure as FuzzInvariantFailure {
                    throw failure
                } catch {
                    try check(responder.result == nil, "a failed handshake has a result")
                    return
                }
                guard let result = responder.result else {
                    throw FuzzInvariantFailure(target: .noise, message: "message 3 accepted without a result")
                }
                try checkAccepted(result, payload: body, staticKey: fixture.initiatorStatic, &check)
            default:
                // The input is the responder's payload in message 2, which the libp2p initiator
                // checks (expected peer ID; the signature after message 3 is out).
                var responderState = fixture.responderWritingMessage2
                var initiator = fixture.initiatorAwaitingMessage2Libp2p
                guard let message2 = try? responderState.writeMessage(payload: body) else { return }
                let message3: [UInt8]?
                do { message3 = try initiator.receive(message2) } catch { return }
                try check(message3 != nil, "the initiator accepted message 2 without answering it")
                guard (try? initiator.verifyDeferredSignature()) != nil, let result = initiator.result else { return }
                try check(result.remotePeer == PeerID(publicKey: NoiseFixture.responderIdentity.publicKey),
                          "initiator accepted a peer other than the one it dialed")
                try checkAccepted(result, payload: body, staticKey: fixture.responderStatic, &check)
            }
        }

        /// An accepted payload names the key that signed the sender's static key.
        private static func checkAccepted(
            _ result: NoiseHandshakeResult, payload: [UInt8], staticKey: Curve25519.KeyAgreement.PrivateKey,
            _ check: inout Checker
        ) throws(FuzzInvariantFailure) {
            try check(result.remotePeer == PeerID(publicKey: result.remotePublicKey), "remote peer ID does not match its key")
            guard let decoded = try? NoiseHandshakePayload(decoding: payload) else {
                throw FuzzInvariantFailure(target: .noise, message: "accepted a payload that does not decode")
            }
            try check(decoded.identityKey == result.remotePublicKey.marshal(), "accepted key is not the payload's key")
            let signed = NoiseLibp2pHandshake.signaturePrefix + Array(staticKey.publicKey.rawRepresentation)
            try check(result.remotePublicKey.verify(signature: decoded.identitySignature, for: signed),
                      "accepted a signature that does not verify")
        }
    }
#endif
