/// Errors thrown by the Identity module: a machine-checkable `code` plus a
/// human-readable `message`.
///
/// Equality (and hashing) consider only `code`, so tests and callers can match
/// with the static values, e.g. `#expect(throws: IdentityError.invalidKey) { ... }`.
public struct IdentityError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: String, Sendable, Hashable {
        /// Key bytes are malformed or inconsistent.
        case invalidKey
        /// The key type is known but not supported for this operation (e.g. an ECDSA curve other than P-256 for private keys).
        case unsupportedKeyType
        /// A crypto library loaded at run time is missing (libsecp256k1 for secp256k1 keys); the
        /// message says what to install.
        case libraryUnavailable
        /// A signature did not verify, or is malformed.
        case invalidSignature
        /// A peer ID (binary or text) is malformed or not a valid libp2p peer ID.
        case invalidPeerID
        /// An RSA key is smaller than 2048 bits.
        case rsaKeyTooSmall
        /// An RSA key is larger than 8192 bits.
        case rsaKeyTooLarge
        /// Signing failed inside the crypto library.
        case signingFailed
        /// Reading or writing a key file failed.
        case keyFile
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }

    public static func == (lhs: IdentityError, rhs: IdentityError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }

    public static let invalidKey = IdentityError(.invalidKey, "invalid key")
    public static let unsupportedKeyType = IdentityError(.unsupportedKeyType, "unsupported key type")
    public static let invalidSignature = IdentityError(.invalidSignature, "invalid signature")
    public static let invalidPeerID = IdentityError(.invalidPeerID, "invalid peer ID")
    public static let rsaKeyTooSmall = IdentityError(.rsaKeyTooSmall, "RSA key smaller than 2048 bits")
    public static let rsaKeyTooLarge = IdentityError(.rsaKeyTooLarge, "RSA key larger than 8192 bits")
    /// Matches any `.libraryUnavailable` error (equality compares codes only).
    public static let libraryUnavailable = IdentityError(.libraryUnavailable, "crypto library unavailable")
    public static let signingFailed = IdentityError(.signingFailed, "signing failed")
    public static let keyFile = IdentityError(.keyFile, "key file error")
}

/// libp2p key types, numbered as in the `KeyType` enum of crypto.proto.
public enum KeyType: Int, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case rsa = 0
    case ed25519 = 1
    case secp256k1 = 2
    case ecdsa = 3

    public var description: String {
        switch self {
        case .rsa: return "RSA"
        case .ed25519: return "Ed25519"
        case .secp256k1: return "Secp256k1"
        case .ecdsa: return "ECDSA"
        }
    }
}
