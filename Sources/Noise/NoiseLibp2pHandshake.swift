import Crypto
import Identity
import Multiformats

/// Who the remote turned out to be.
public struct NoiseHandshakeResult: Sendable {
    public let remotePeer: PeerID
    public let remotePublicKey: PublicKey
}

/// The libp2p handshake payload (noise spec in libp2p/specs):
/// `NoiseHandshakePayload { bytes identity_key = 1; bytes identity_sig = 2; NoiseExtensions extensions = 4; }`
struct NoiseHandshakePayload: Equatable {
    var identityKey: [UInt8]
    var identitySignature: [UInt8]

    func encoded() -> [UInt8] {
        var w = ProtobufWriter()
        w.writeBytesField(1, identityKey)
        w.writeBytesField(2, identitySignature)
        return w.bytes
    }

    init(identityKey: [UInt8], identitySignature: [UInt8]) {
        self.identityKey = identityKey
        self.identitySignature = identitySignature
    }

    init(decoding bytes: [UInt8]) throws(NoiseError) {
        var key: [UInt8]?
        var signature: [UInt8]?
        do {
            var reader = ProtobufReader(bytes)
            while let (field, value) = try reader.next() {
                switch (field, value) {
                case (1, .bytes(let b)): key = b
                case (2, .bytes(let b)): signature = b
                default: continue  // extensions (4) and unknown fields: we need none of them
                }
            }
        } catch {
            throw NoiseError(.invalidPayload, "handshake payload is not a valid protobuf", cause: error)
        }
        guard let key, let signature else {
            throw NoiseError(.invalidPayload, "handshake payload lacks the identity key or signature")
        }
        self.init(identityKey: key, identitySignature: signature)
    }
}

/// Our side's long-lived Noise material: the static X25519 key and the handshake payload that binds
/// it to our libp2p identity. Made once per host, so a handshake needs no Ed25519 signature of its own.
public struct NoiseLocalIdentity: Sendable {
    /// swift-crypto 3 does not mark its key types Sendable; this box is immutable after init.
    private final class KeyBox: @unchecked Sendable {
        let key: Curve25519.KeyAgreement.PrivateKey
        init(_ key: Curve25519.KeyAgreement.PrivateKey) { self.key = key }
    }

    private let box: KeyBox
    let payload: [UInt8]

    public init(identity: PrivateKey, staticKey: Curve25519.KeyAgreement.PrivateKey = .init()) throws {
        // Kept as a key object: rebuilding it from bytes would redo a scalar multiplication per handshake.
        self.box = KeyBox(staticKey)
        let staticPublic = Array(staticKey.publicKey.rawRepresentation)
        let signature = try identity.sign(NoiseLibp2pHandshake.signaturePrefix + staticPublic)
        self.payload = NoiseHandshakePayload(identityKey: identity.publicKey.marshal(), identitySignature: signature)
            .encoded()
    }

    var staticKey: Curve25519.KeyAgreement.PrivateKey { box.key }
}

/// The libp2p Noise handshake: XX plus the identity payload, which binds the libp2p identity key to
/// the Noise static key with a signature over `"noise-libp2p-static-key:" ‖ static public key`.
/// The responder sends its payload in message 2, the initiator in message 3; message 1 has none.
public struct NoiseLibp2pHandshake {
    static let signaturePrefix = Array("noise-libp2p-static-key:".utf8)

    public typealias Role = NoiseHandshakeState.Role

    private var state: NoiseHandshakeState
    private let local: NoiseLocalIdentity
    private let expectedRemotePeer: PeerID?
    public private(set) var result: NoiseHandshakeResult?
    private var unverified: UnverifiedPayload?

    public init(
        role: Role,
        local: NoiseLocalIdentity,
        expectedRemotePeer: PeerID? = nil,
        ephemeralKey: Curve25519.KeyAgreement.PrivateKey = .init()
    ) {
        self.state = NoiseHandshakeState(role: role, staticKey: local.staticKey, ephemeralKey: ephemeralKey)
        self.local = local
        self.expectedRemotePeer = expectedRemotePeer
    }

    /// A handshake with a fresh static key (one signature per handshake); hosts use `init(role:local:…)`.
    public init(role: Role, identity: PrivateKey, expectedRemotePeer: PeerID? = nil) throws {
        self.init(role: role, local: try NoiseLocalIdentity(identity: identity), expectedRemotePeer: expectedRemotePeer)
    }

    public var isComplete: Bool { result != nil }

    /// The initiator's first message; nil for the responder.
    public mutating func start() throws -> [UInt8]? {
        guard state.role == .initiator else { return nil }
        return try state.writeMessage(payload: [])
    }

    /// Processes one handshake message; returns what to send in reply, if anything.
    public mutating func receive(_ message: [UInt8]) throws -> [UInt8]? {
        let payload = try state.readMessage(message)
        switch (state.role, state.messageIndex) {
        case (.responder, 1):
            return try state.writeMessage(payload: local.payload)
        case (.initiator, 2):
            // Everything but the signature is checked before message 3 (key, expected peer ID);
            // the signature is checked by `verifyDeferredSignature()` once message 3 is on its
            // way, so that this Ed25519 verification overlaps with the responder's work on
            // message 3 instead of delaying it. Message 3 only reveals our identity payload
            // (public key and signature over our static key), and no application data moves
            // before the check: the handshake is not complete until it passes.
            unverified = try inspect(payload)
            return try state.writeMessage(payload: local.payload)
        case (.responder, 3):
            let checked = try inspect(payload)
            result = try checked.verify()
            return nil
        default:
            throw NoiseError(.malformedHandshakeMessage, "unexpected handshake message")
        }
    }

    public func split() -> (send: NoiseCipherState, receive: NoiseCipherState) { state.split() }

    /// True between message 2 and `verifyDeferredSignature()` on the initiator.
    public var hasDeferredSignature: Bool { unverified != nil }

    /// The initiator's check of the responder's identity signature, after sending message 3;
    /// completes the handshake (`result`) or throws `.invalidSignature`.
    public mutating func verifyDeferredSignature() throws(NoiseError) {
        guard let pending = unverified else { return }
        unverified = nil
        result = try pending.verify()
    }

    /// A remote payload whose key and peer ID were checked, but not yet its signature.
    private struct UnverifiedPayload {
        let key: PublicKey
        let signature: [UInt8]
        let remoteStatic: [UInt8]
        let peer: PeerID

        func verify() throws(NoiseError) -> NoiseHandshakeResult {
            guard key.verify(signature: signature, for: NoiseLibp2pHandshake.signaturePrefix + remoteStatic) else {
                throw NoiseError(.invalidSignature, "identity signature over the Noise static key does not verify")
            }
            return NoiseHandshakeResult(remotePeer: peer, remotePublicKey: key)
        }
    }

    private func inspect(_ bytes: [UInt8]) throws -> UnverifiedPayload {
        let payload = try NoiseHandshakePayload(decoding: bytes)
        guard let remoteStatic = state.remoteStaticKey else {
            throw NoiseError(.malformedHandshakeMessage, "remote static key unknown")
        }
        let key: PublicKey
        do {
            key = try PublicKey(marshaled: payload.identityKey)
        } catch {
            throw NoiseError(.invalidPayload, "remote identity key", cause: error)
        }
        let peer = PeerID(publicKey: key)
        if let expectedRemotePeer, expectedRemotePeer != peer {
            throw NoiseError(.peerIDMismatch, "dialed \(expectedRemotePeer) but the remote is \(peer)")
        }
        return UnverifiedPayload(key: key, signature: payload.identitySignature, remoteStatic: remoteStatic, peer: peer)
    }
}
