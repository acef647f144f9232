import Crypto

/// The `Noise_XX_25519_ChaChaPoly_SHA256` handshake (Noise spec rev 34), as a pure value type:
///
///     -> e
///     <- e, ee, s, es
///     -> s, se
///
/// `writeMessage`/`readMessage` take and return whole handshake messages (without the 2-byte length
/// prefix libp2p adds on the wire). After the third message, `split()` gives the transport ciphers.
public struct NoiseHandshakeState {
    public enum Role: Sendable { case initiator, responder }

    static let protocolName = "Noise_XX_25519_ChaChaPoly_SHA256"
    static let dhLength = 32
    static let hashLength = 32

    public let role: Role
    private let s: Curve25519.KeyAgreement.PrivateKey
    private let e: Curve25519.KeyAgreement.PrivateKey
    private var re: Curve25519.KeyAgreement.PublicKey?
    private(set) var rs: Curve25519.KeyAgreement.PublicKey?
    private var ck: [UInt8]
    private var h: [UInt8]
    private var cipher = NoiseCipherState()
    /// Index of the next message of the pattern (0, 1, 2); 3 when done.
    private(set) var messageIndex = 0

    public init(
        role: Role,
        staticKey: Curve25519.KeyAgreement.PrivateKey,
        ephemeralKey: Curve25519.KeyAgreement.PrivateKey = .init(),
        prologue: [UInt8] = []
    ) {
        self.role = role
        self.s = staticKey
        self.e = ephemeralKey
        // The name is exactly HASHLEN (32) bytes long, so h is the name itself, unhashed.
        let name = Array(Self.protocolName.utf8)
        precondition(name.count == Self.hashLength)
        self.h = name
        self.ck = name
        mixHash(prologue)
    }

    public var isComplete: Bool { messageIndex == 3 }

    /// The remote static Noise key, known after message 2 (initiator) or 3 (responder).
    public var remoteStaticKey: [UInt8]? { rs.map { Array($0.rawRepresentation) } }

    /// Whether the next message is ours to write.
    public var isOurTurn: Bool {
        switch (role, messageIndex) {
        case (.initiator, 0), (.initiator, 2), (.responder, 1): return true
        default: return false
        }
    }

    public mutating func writeMessage(payload: [UInt8]) throws(NoiseError) -> [UInt8] {
        guard isOurTurn else { throw NoiseError(.malformedHandshakeMessage, "not our turn to write") }
        var out: [UInt8] = []
        switch messageIndex {
        case 0:  // -> e
            let epub = Array(e.publicKey.rawRepresentation)
            out += epub
            mixHash(epub)
        case 1:  // <- e, ee, s, es
            let epub = Array(e.publicKey.rawRepresentation)
            out += epub
            mixHash(epub)
            try mixKey(dh(e, re))
            out += try encryptAndHash(Array(s.publicKey.rawRepresentation))
            try mixKey(dh(s, re))
        default:  // -> s, se
            out += try encryptAndHash(Array(s.publicKey.rawRepresentation))
            try mixKey(dh(s, re))
        }
        out += try encryptAndHash(payload)
        messageIndex += 1
        return out
    }

    /// Processes a remote handshake message and returns its (decrypted) payload.
    public mutating func readMessage(_ message: [UInt8]) throws(NoiseError) -> [UInt8] {
        guard !isOurTurn, messageIndex < 3 else {
            throw NoiseError(.malformedHandshakeMessage, "unexpected handshake message")
        }
        var rest = message[...]
        func take(_ n: Int) throws(NoiseError) -> [UInt8] {
            guard rest.count >= n else {
                throw NoiseError(.malformedHandshakeMessage, "handshake message \(messageIndex + 1) too short")
            }
            defer { rest = rest.dropFirst(n) }
            return Array(rest.prefix(n))
        }
        let keyLength = Self.dhLength + NoiseCipherState.tagLength
        switch messageIndex {
        case 0:  // -> e
            let repub = try take(Self.dhLength)
            re = try publicKey(repub)
            mixHash(repub)
        case 1:  // <- e, ee, s, es
            let repub = try take(Self.dhLength)
            re = try publicKey(repub)
            mixHash(repub)
            try mixKey(dh(e, re))
            rs = try publicKey(try decryptAndHash(try take(keyLength)))
            try mixKey(dh(e, rs))
        default:  // -> s, se
            rs = try publicKey(try decryptAndHash(try take(keyLength)))
            try mixKey(dh(e, rs))
        }
        let payload = try decryptAndHash(Array(rest))
        messageIndex += 1
        return payload
    }

    /// The transport ciphers: (send, receive) for this side.
    public func split() -> (send: NoiseCipherState, receive: NoiseCipherState) {
        precondition(isComplete, "split() before the handshake finished")
        let (k1, k2) = Self.hkdf(chainingKey: ck, input: [])
        let c1 = NoiseCipherState(key: SymmetricKey(data: k1))
        let c2 = NoiseCipherState(key: SymmetricKey(data: k2))
        return role == .initiator ? (c1, c2) : (c2, c1)
    }

    /// The handshake hash, for channel binding and tests.
    public var handshakeHash: [UInt8] { h }

    // MARK: - Symmetric state

    private mutating func mixHash(_ data: [UInt8]) {
        var hasher = SHA256()
        hasher.update(data: h)
        hasher.update(data: data)
        h = Array(hasher.finalize())
    }

    private mutating func mixKey(_ input: [UInt8]) {
        let (newCK, k) = Self.hkdf(chainingKey: ck, input: input)
        ck = newCK
        cipher = NoiseCipherState(key: SymmetricKey(data: k))
    }

    private mutating func encryptAndHash(_ plaintext: [UInt8]) throws(NoiseError) -> [UInt8] {
        let c = try cipher.encrypt(ad: h, plaintext: plaintext)
        mixHash(c)
        return c
    }

    private mutating func decryptAndHash(_ ciphertext: [UInt8]) throws(NoiseError) -> [UInt8] {
        let p = try cipher.decrypt(ad: h, ciphertext: ciphertext)
        mixHash(ciphertext)
        return p
    }

    /// Noise's HKDF with two outputs: HMAC-SHA256 extract, then two expand blocks.
    static func hkdf(chainingKey: [UInt8], input: [UInt8]) -> ([UInt8], [UInt8]) {
        let temp = SymmetricKey(data: HMAC<SHA256>.authenticationCode(for: input, using: SymmetricKey(data: chainingKey)))
        let o1 = Array(HMAC<SHA256>.authenticationCode(for: [0x01], using: temp))
        let o2 = Array(HMAC<SHA256>.authenticationCode(for: o1 + [0x02], using: temp))
        return (o1, o2)
    }

    private func dh(
        _ local: Curve25519.KeyAgreement.PrivateKey, _ remote: Curve25519.KeyAgreement.PublicKey?
    ) throws(NoiseError) -> [UInt8] {
        guard let remote else { preconditionFailure("DH before the remote key is known") }
        do {
            return try local.sharedSecretFromKeyAgreement(with: remote).withUnsafeBytes { Array($0) }
        } catch {
            // BoringSSL refuses low-order points (an all-zero shared secret).
            throw NoiseError(.malformedHandshakeMessage, "invalid Diffie-Hellman public key", cause: error)
        }
    }

    private func publicKey(_ bytes: [UInt8]) throws(NoiseError) -> Curve25519.KeyAgreement.PublicKey {
        do {
            return try Curve25519.KeyAgreement.PublicKey(rawRepresentation: bytes)
        } catch {
            throw NoiseError(.malformedHandshakeMessage, "invalid X25519 public key", cause: error)
        }
    }
}
