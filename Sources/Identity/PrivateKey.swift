import Crypto
import _CryptoExtras
import Foundation
import Multiformats

/// A libp2p private key (Ed25519, Secp256k1, ECDSA P-256 or RSA).
///
/// Serialised as the libp2p `PrivateKey` protobuf (field 1: KeyType, field 2: Data)
/// with the per-type Data encodings used by go-libp2p / rust-libp2p:
/// - Ed25519: 64 bytes `secret seed ‖ public key` (32-byte seeds and the legacy
///   96-byte `seed ‖ public ‖ public` are accepted when reading);
/// - ECDSA: SEC1 `ECPrivateKey` DER (RFC 5915), as Go's `x509.MarshalECPrivateKey`
///   writes it (PKCS#8 is accepted when reading);
/// - RSA: PKCS#1 `RSAPrivateKey` DER;
/// - Secp256k1: the 32-byte big-endian secret scalar (go's and py's encoding).
/// Secp256k1 keys need libsecp256k1 at run time (see `Secp256k1`); without it every Secp256k1
/// operation throws `.libraryUnavailable`.
public struct PrivateKey: Sendable {
    enum Backing: Sendable {
        case ed25519(SendableKey<Curve25519.Signing.PrivateKey>)
        case ecdsa(SendableKey<P256.Signing.PrivateKey>)
        case rsa(_RSA.Signing.PrivateKey)
        /// The secret and its public key (computed once, by libsecp256k1).
        case secp256k1(Secp256k1.Secret, PublicKey)
    }

    private let backing: Backing
    public let publicKey: PublicKey

    public var type: KeyType { publicKey.type }

    private init(_ backing: Backing) {
        self.backing = backing
        switch backing {
        case .ed25519(let box):
            let k = box.key
            let pub = k.publicKey
            self.publicKey = PublicKey(backing: .ed25519(SendableKey(pub)), type: .ed25519, raw: Array(pub.rawRepresentation))
        case .ecdsa(let box):
            let k = box.key
            let pub = k.publicKey
            self.publicKey = PublicKey(backing: .p256(SendableKey(pub)), type: .ecdsa, raw: Array(pub.derRepresentation))
        case .rsa(let k):
            let pub = k.publicKey
            self.publicKey = PublicKey(backing: .rsa(pub), type: .rsa, raw: Array(pub.derRepresentation))
        case .secp256k1(_, let pub):
            self.publicKey = pub
        }
    }

    // MARK: Generation

    public static func generateEd25519() -> PrivateKey {
        PrivateKey(.ed25519(SendableKey(Curve25519.Signing.PrivateKey())))
    }

    public static func generateECDSA() -> PrivateKey {
        PrivateKey(.ecdsa(SendableKey(P256.Signing.PrivateKey())))
    }

    /// Generates an RSA key; `bits` must be a multiple of 8 in 2048...8192.
    /// (Slow: a 2048-bit key takes roughly 0.1-1 s.)
    public static func generateRSA(bits: Int = 2048) throws(IdentityError) -> PrivateKey {
        guard bits >= PublicKey.minRSABits else { throw IdentityError(.rsaKeyTooSmall, "RSA keys need at least 2048 bits") }
        guard bits <= PublicKey.maxRSABits else { throw IdentityError(.rsaKeyTooLarge, "RSA keys are limited to 8192 bits") }
        guard bits % 8 == 0 else { throw IdentityError(.invalidKey, "RSA key size must be a multiple of 8") }
        do {
            return PrivateKey(.rsa(try _RSA.Signing.PrivateKey(keySize: .init(bitCount: bits))))
        } catch {
            throw IdentityError(.invalidKey, "RSA key generation failed", cause: error)
        }
    }

    /// Generates a Secp256k1 key (needs libsecp256k1 at run time, else `.libraryUnavailable`).
    public static func generateSecp256k1() throws(IdentityError) -> PrivateKey {
        let library = try Secp256k1.library()
        // A random 32-byte string is >= n with probability ~2^-128; the bound only keeps the loop finite.
        for _ in 0..<64 {
            var bytes = Secp256k1.randomBytes(Secp256k1.privateKeyLength)
            let secret = Secp256k1.Secret(bytes)
            for i in bytes.indices { bytes[i] = 0 }
            let valid = secret.withBytes { library.isValidSecret($0) }
            if valid { return try PrivateKey(secp256k1Secret: secret, library: library) }
        }
        throw IdentityError(.invalidKey, "Secp256k1 key generation drew no valid secret")
    }

    /// Deterministic Secp256k1 key for tests and fixed identities: the secret is the same 32 bytes
    /// as `ed25519(seed:)`'s (the little-endian encoding of `seed`), read as a big-endian scalar.
    /// Seed 0 is not a valid secret.
    public static func secp256k1(seed: UInt64) throws(IdentityError) -> PrivateKey {
        var bytes = [UInt8](repeating: 0, count: 32)
        for i in 0..<8 { bytes[i] = UInt8(truncatingIfNeeded: seed >> (8 * UInt64(i))) }
        return try PrivateKey(type: .secp256k1, raw: bytes)
    }

    private init(secp256k1Secret secret: Secp256k1.Secret, library: Secp256k1.Library) throws(IdentityError) {
        let raw = try secret.withBytes { bytes throws(IdentityError) in try library.publicKey(secret: bytes) }
        let point = try library.parsePublicKey(raw)
        self.init(.secp256k1(secret, PublicKey(backing: .secp256k1(point), type: .secp256k1, raw: raw)))
    }

    /// An Ed25519 key from its 32-byte secret seed.
    public init(ed25519Seed seed: [UInt8]) throws(IdentityError) {
        guard seed.count == 32, let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: seed) else {
            throw IdentityError(.invalidKey, "Ed25519 seed must be 32 bytes, got \(seed.count)")
        }
        self.init(.ed25519(SendableKey(key)))
    }

    /// Deterministic Ed25519 key for tests and fixed identities: the secret seed is
    /// the 32-byte little-endian encoding of `seed` (seed 1 = `01 00 00 … 00`).
    public static func ed25519(seed: UInt64) -> PrivateKey {
        var bytes = [UInt8](repeating: 0, count: 32)
        for i in 0..<8 { bytes[i] = UInt8(truncatingIfNeeded: seed >> (8 * UInt64(i))) }
        // 32 bytes is always a valid Ed25519 seed.
        return try! PrivateKey(ed25519Seed: bytes)
    }

    // MARK: Signing

    /// Signs `message` with the libp2p scheme for this key type (see `PublicKey.verify`).
    public func sign(_ message: some DataProtocol) throws(IdentityError) -> [UInt8] {
        do {
            switch backing {
            case .ed25519(let box):
            let k = box.key
                return Array(try k.signature(for: message))
            case .ecdsa(let box):
            let k = box.key
                return Array(try k.signature(for: SHA256.hash(data: message)).derRepresentation)
            case .rsa(let k):
                return Array(try k.signature(for: SHA256.hash(data: message), padding: .insecurePKCS1v1_5).rawRepresentation)
            case .secp256k1(let secret, _):
                let library = try Secp256k1.library()
                return try secret.withBytes { bytes throws(IdentityError) in try library.sign(message, secret: bytes) }
            }
        } catch let error as IdentityError {
            throw error
        } catch {
            throw IdentityError(.signingFailed, "\(type) signing failed", cause: error)
        }
    }

    // MARK: Serialisation

    /// The type-specific Data bytes of the `PrivateKey` protobuf.
    public var raw: [UInt8] {
        switch backing {
        case .ed25519(let box):
            let k = box.key
            return Array(k.rawRepresentation) + Array(k.publicKey.rawRepresentation)
        case .ecdsa(let box):
            let k = box.key
            return DER.sec1(
                privateScalar: Array(k.rawRepresentation), curveOID: DER.p256OID,
                publicX963: Array(k.publicKey.x963Representation))
        case .rsa(let k):
            return Array(k.derRepresentation)  // PKCS#1 RSAPrivateKey
        case .secp256k1(let secret, _):
            return secret.bytes
        }
    }

    /// The libp2p `PrivateKey` protobuf (the on-disk key format).
    public func marshal() -> [UInt8] {
        var w = ProtobufWriter()
        w.writeVarintField(1, UInt64(type.rawValue))
        w.writeBytesField(2, raw)
        return w.bytes
    }

    /// Parses a libp2p `PrivateKey` protobuf.
    public init(marshaled: [UInt8]) throws(IdentityError) {
        let (type, data) = try PublicKey.decodeKeyMessage(marshaled, what: "private key")
        try self.init(type: type, raw: data)
    }

    /// Builds a key from its type and Data bytes.
    public init(type: KeyType, raw data: [UInt8]) throws(IdentityError) {
        switch type {
        case .ed25519:
            try self.init(ed25519Data: data)
        case .ecdsa:
            try self.init(ecdsaData: data)
        case .rsa:
            let key: _RSA.Signing.PrivateKey
            do {
                key = try _RSA.Signing.PrivateKey(unsafeDERRepresentation: data)
            } catch {
                throw IdentityError(.invalidKey, "RSA private key is not valid PKCS#1 DER", cause: error)
            }
            guard key.keySizeInBits >= PublicKey.minRSABits else {
                throw IdentityError(.rsaKeyTooSmall, "RSA key has \(key.keySizeInBits) bits")
            }
            guard key.keySizeInBits <= PublicKey.maxRSABits else {
                throw IdentityError(.rsaKeyTooLarge, "RSA key has \(key.keySizeInBits) bits")
            }
            self.init(.rsa(key))
        case .secp256k1:
            // go-libp2p and py-libp2p both write exactly 32 bytes (go pads the scalar).
            guard data.count == Secp256k1.privateKeyLength else {
                throw IdentityError(.invalidKey, "Secp256k1 private key must be 32 bytes, got \(data.count)")
            }
            let library = try Secp256k1.library()
            let secret = Secp256k1.Secret(data)
            guard secret.withBytes({ library.isValidSecret($0) }) else {
                throw IdentityError(.invalidKey, "Secp256k1 private key is zero or not below the group order")
            }
            try self.init(secp256k1Secret: secret, library: library)
        }
    }

    private init(ed25519Data data: [UInt8]) throws(IdentityError) {
        // peer-ids spec: preferred 64 bytes (seed ‖ public); legacy 96 bytes
        // (seed ‖ public ‖ public) whose two copies must match.
        switch data.count {
        case 32:
            try self.init(ed25519Seed: data)
        case 64, 96:
            try self.init(ed25519Seed: Array(data[0..<32]))
            let embedded = Array(data[32..<64])
            if data.count == 96 && Array(data[64..<96]) != embedded {
                throw IdentityError(.invalidKey, "Ed25519 96-byte key has two different public keys")
            }
            guard embedded == publicKey.raw else {
                throw IdentityError(.invalidKey, "Ed25519 embedded public key does not match the secret")
            }
        default:
            throw IdentityError(.invalidKey, "Ed25519 private key must be 32, 64 or 96 bytes, got \(data.count)")
        }
    }

    private init(ecdsaData data: [UInt8]) throws(IdentityError) {
        if let sec1 = DER.parseSEC1(data) {
            if let oid = sec1.curveOID, oid != DER.p256OID {
                throw IdentityError(.unsupportedKeyType, "only P-256 ECDSA private keys are supported")
            }
            // A scalar shorter than 32 bytes is left-padded (some encoders strip zeros).
            guard sec1.privateScalar.count <= 32 else {
                throw IdentityError(.invalidKey, "P-256 private scalar longer than 32 bytes")
            }
            let scalar = [UInt8](repeating: 0, count: 32 - sec1.privateScalar.count) + sec1.privateScalar
            guard let key = try? P256.Signing.PrivateKey(rawRepresentation: scalar) else {
                throw IdentityError(.invalidKey, "invalid P-256 private scalar")
            }
            if let pub = sec1.publicX963, pub != Array(key.publicKey.x963Representation) {
                throw IdentityError(.invalidKey, "ECDSA embedded public key does not match the private key")
            }
            self.init(.ecdsa(SendableKey(key)))
            return
        }
        // Fall back to PKCS#8 (swift-crypto checks the curve).
        guard let key = try? P256.Signing.PrivateKey(derRepresentation: data) else {
            throw IdentityError(.invalidKey, "ECDSA private key is neither SEC1 nor PKCS#8 P-256 DER")
        }
        self.init(.ecdsa(SendableKey(key)))
    }
}
