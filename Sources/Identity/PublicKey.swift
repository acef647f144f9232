import Crypto
import _CryptoExtras
import Foundation
import Multiformats

/// A libp2p public key: a key type and the type-specific encoding ("Data" field of
/// the PublicKey protobuf, peer-ids spec):
/// - Ed25519: the 32 raw public key bytes;
/// - RSA: DER-encoded PKIX SubjectPublicKeyInfo;
/// - ECDSA: DER-encoded PKIX SubjectPublicKeyInfo (P-256, P-384, P-521);
/// - Secp256k1: 33-byte compressed SEC point.
///
/// Keys are validated when constructed, and `raw` must already be the canonical
/// encoding (the one `marshal()` would reproduce), so a peer ID derived from a
/// parsed key always matches the bytes it was parsed from.
public struct PublicKey: Hashable, Sendable, CustomStringConvertible {
    public let type: KeyType
    public let raw: [UInt8]
    private let backing: Backing

    enum Backing: Sendable {
        case ed25519(SendableKey<Curve25519.Signing.PublicKey>)
        case p256(SendableKey<P256.Signing.PublicKey>)
        case p384(SendableKey<P384.Signing.PublicKey>)
        case p521(SendableKey<P521.Signing.PublicKey>)
        case rsa(_RSA.Signing.PublicKey)
        /// libsecp256k1's parsed 64-byte point; nil when the library is not installed (the key
        /// was then checked only structurally, and verifying throws `.libraryUnavailable`).
        case secp256k1([UInt8]?)
    }

    /// RSA size bounds. 2048 is the usual floor (swift-crypto refuses smaller keys
    /// anyway); the peer-ids spec asks implementations to reject very large RSA keys,
    /// and go-libp2p caps them at 8192 bits.
    public static let minRSABits = 2048
    public static let maxRSABits = 8192
    /// Upper bound on `raw` (an 8192-bit RSA SubjectPublicKeyInfo is ~1.1 KB).
    static let maxRawLength = 2048

    public init(type: KeyType, raw: [UInt8]) throws(IdentityError) {
        guard raw.count <= Self.maxRawLength else {
            throw IdentityError(.invalidKey, "\(type) public key of \(raw.count) bytes is too large")
        }
        self.type = type
        self.raw = raw
        self.backing = try Self.parse(type: type, raw: raw)
    }

    init(backing: Backing, type: KeyType, raw: [UInt8]) {
        self.type = type
        self.raw = raw
        self.backing = backing
    }

    private static func parse(type: KeyType, raw: [UInt8]) throws(IdentityError) -> Backing {
        switch type {
        case .ed25519:
            guard raw.count == 32, let key = try? Curve25519.Signing.PublicKey(rawRepresentation: raw) else {
                throw IdentityError(.invalidKey, "Ed25519 public key must be 32 bytes, got \(raw.count)")
            }
            return .ed25519(SendableKey(key))
        case .ecdsa:
            let backing: Backing
            let canonical: Data
            if let k = try? P256.Signing.PublicKey(derRepresentation: raw) {
                backing = .p256(SendableKey(k))
                canonical = k.derRepresentation
            } else if let k = try? P384.Signing.PublicKey(derRepresentation: raw) {
                backing = .p384(SendableKey(k))
                canonical = k.derRepresentation
            } else if let k = try? P521.Signing.PublicKey(derRepresentation: raw) {
                backing = .p521(SendableKey(k))
                canonical = k.derRepresentation
            } else {
                throw IdentityError(.invalidKey, "ECDSA public key is not a P-256/P-384/P-521 SubjectPublicKeyInfo")
            }
            guard Array(canonical) == raw else {
                throw IdentityError(.invalidKey, "ECDSA public key is not in canonical (uncompressed PKIX DER) form")
            }
            return backing
        case .rsa:
            // Validated in full first: swift-crypto's RSA parser must never see bytes it would
            // refuse (its error path double-frees; see DER.validateRSAPublicKey).
            let bits: Int
            do {
                bits = try DER.validateRSAPublicKey(raw, minBits: minRSABits, maxBits: maxRSABits)
            } catch {
                switch error {
                case .malformed(let why):
                    throw IdentityError(.invalidKey, "RSA public key is not a valid PKIX SubjectPublicKeyInfo: \(why)")
                case .tooSmall(let n):
                    throw IdentityError(.rsaKeyTooSmall, "RSA key has \(n) bits; at least \(minRSABits) required")
                case .tooLarge(let n):
                    throw IdentityError(.rsaKeyTooLarge, "RSA key has \(n) bits; at most \(maxRSABits) allowed")
                }
            }
            let key: _RSA.Signing.PublicKey
            do {
                key = try _RSA.Signing.PublicKey(derRepresentation: raw)
            } catch {
                throw IdentityError(.invalidKey, "RSA public key refused by the crypto library", cause: error)
            }
            guard key.keySizeInBits == bits, Array(key.derRepresentation) == raw else {
                throw IdentityError(.invalidKey, "RSA public key is not a canonical PKIX SubjectPublicKeyInfo")
            }
            return .rsa(key)
        case .secp256k1:
            // peer-ids spec: the Bitcoin encoding; go and py send the 33-byte compressed SEC1
            // point (0x02/0x03 = parity of y, then x), and their peer IDs hash exactly that form.
            guard raw.count == Secp256k1.publicKeyLength, raw[0] == 0x02 || raw[0] == 0x03 else {
                throw IdentityError(.invalidKey, "Secp256k1 public key must be 33-byte compressed form, got \(raw.count) bytes")
            }
            // Without libsecp256k1 the key stays usable as an identifier (peer IDs such as
            // 16Uiu2… still parse); only verifying with it fails, with `.libraryUnavailable`.
            guard let library = try? Secp256k1.library() else { return .secp256k1(nil) }
            return .secp256k1(try library.parsePublicKey(raw))
        }
    }

    /// Parses the libp2p `PublicKey` protobuf (field 1: KeyType varint, field 2: Data).
    ///
    /// The peer-ids spec requires a deterministic encoding (minimal varints, fields in
    /// tag order, both present, no extra fields), so anything else is rejected: the
    /// input must be byte-identical to what `marshal()` produces.
    public init(marshaled: [UInt8]) throws(IdentityError) {
        let (type, data) = try Self.decodeKeyMessage(marshaled, what: "public key")
        try self.init(type: type, raw: data)
        guard self.marshal() == marshaled else {
            throw IdentityError(.invalidKey, "public key protobuf is not deterministically encoded")
        }
    }

    /// The libp2p `PublicKey` protobuf, fields in tag order.
    public func marshal() -> [UInt8] {
        var w = ProtobufWriter()
        w.writeVarintField(1, UInt64(type.rawValue))
        w.writeBytesField(2, raw)
        return w.bytes
    }

    /// Decodes a `PublicKey`/`PrivateKey` protobuf message into (type, data).
    /// Unknown fields are skipped; both known fields are required.
    static func decodeKeyMessage(_ bytes: [UInt8], what: String) throws(IdentityError) -> (KeyType, [UInt8]) {
        var reader = ProtobufReader(bytes)
        var type: KeyType?
        var data: [UInt8]?
        do {
            while let (field, value) = try reader.next() {
                switch (field, value) {
                case (1, .varint(let v)):
                    guard v <= UInt64(Int.max), let t = KeyType(rawValue: Int(v)) else {
                        throw IdentityError(.unsupportedKeyType, "unknown key type \(v)")
                    }
                    type = t
                case (2, .bytes(let b)):
                    data = b
                case (1, _), (2, _):
                    throw IdentityError(.invalidKey, "\(what) protobuf field \(field) has the wrong wire type")
                default:
                    continue
                }
            }
        } catch let error as IdentityError {
            throw error
        } catch {
            throw IdentityError(.invalidKey, "\(what) protobuf", cause: error)
        }
        guard let type, let data else {
            throw IdentityError(.invalidKey, "\(what) protobuf lacks the Type or Data field")
        }
        return (type, data)
    }

    /// Verifies `signature` over `message` with this key's libp2p signing scheme:
    /// Ed25519 (RFC 8032); ECDSA over SHA-256 with a DER signature; RSASSA-PKCS1-v1_5
    /// with SHA-256; Secp256k1 ECDSA over SHA-256 with a strict-DER, low-S signature.
    /// Returns `false` for an invalid signature, and for Secp256k1 keys when libsecp256k1
    /// is not installed (`verifyThrowing` tells the two apart).
    public func verify(signature: [UInt8], for message: some DataProtocol) -> Bool {
        (try? verifyThrowing(signature: signature, for: message)) != nil
    }

    /// Like `verify`, but throws `.invalidSignature` for a bad signature and
    /// `.libraryUnavailable` for Secp256k1 keys when libsecp256k1 is not installed.
    public func verifyThrowing(signature: [UInt8], for message: some DataProtocol) throws(IdentityError) {
        let ok: Bool
        switch backing {
        case .ed25519(let box):
            let key = box.key
            ok = signature.count == 64 && key.isValidSignature(signature, for: message)
        case .p256(let box):
            let key = box.key
            guard let sig = try? P256.Signing.ECDSASignature(derRepresentation: signature) else {
                throw IdentityError(.invalidSignature, "malformed ECDSA DER signature")
            }
            ok = key.isValidSignature(sig, for: SHA256.hash(data: message))
        case .p384(let box):
            let key = box.key
            guard let sig = try? P384.Signing.ECDSASignature(derRepresentation: signature) else {
                throw IdentityError(.invalidSignature, "malformed ECDSA DER signature")
            }
            ok = key.isValidSignature(sig, for: SHA256.hash(data: message))
        case .p521(let box):
            let key = box.key
            guard let sig = try? P521.Signing.ECDSASignature(derRepresentation: signature) else {
                throw IdentityError(.invalidSignature, "malformed ECDSA DER signature")
            }
            ok = key.isValidSignature(sig, for: SHA256.hash(data: message))
        case .rsa(let key):
            let sig = _RSA.Signing.RSASignature(rawRepresentation: signature)
            ok = key.isValidSignature(sig, for: SHA256.hash(data: message), padding: .insecurePKCS1v1_5)
        case .secp256k1(let point):
            guard let point else {
                _ = try Secp256k1.library()  // throws `.libraryUnavailable` with what to install
                throw IdentityError(.libraryUnavailable, Secp256k1.installHint)
            }
            // Throws `.invalidSignature` with the reason (malformed DER, high S, mismatch).
            try Secp256k1.library().verify(signature: signature, for: message, publicKey: point)
            return
        }
        guard ok else { throw IdentityError(.invalidSignature, "\(type) signature does not verify") }
    }

    public static func == (lhs: PublicKey, rhs: PublicKey) -> Bool {
        lhs.type == rhs.type && lhs.raw == rhs.raw
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(type)
        hasher.combine(raw)
    }

    public var description: String { "PublicKey(\(type), \(Base16.encode(raw)))" }
}
