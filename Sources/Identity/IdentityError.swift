import Basics

/// Errors thrown by the Identity module: a machine-checkable `code`, a human-readable `message`
/// and, where a crypto library or parser failed, its error as `cause`.
///
/// Equality (and hashing) consider only `code`, so tests and callers can match
/// with the static values, e.g. `#expect(throws: IdentityError.invalidKey) { ... }`.
public struct IdentityError: CodedError, Hashable {
    /// What went wrong.
    public enum Code: String, ErrorCode {
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

    /// What went wrong, for programs.
    public let code: Code
    /// What went wrong, for people.
    public let message: String
    /// The lower-level failure behind this one, e.g. the crypto library's error.
    public let cause: (any Error)?

    /// An error with `code`, a human-readable `message` and the lower-level `cause`, if any.
    public init(_ code: Code, _ message: String, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    /// Equal when the codes are equal (messages and causes are for people).
    public static func == (lhs: IdentityError, rhs: IdentityError) -> Bool { lhs.code == rhs.code }
    /// Hashes the code only, consistent with `==`.
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }

    /// Matches any `.invalidKey` error.
    public static let invalidKey = IdentityError(.invalidKey, "invalid key")
    /// Matches any `.unsupportedKeyType` error.
    public static let unsupportedKeyType = IdentityError(.unsupportedKeyType, "unsupported key type")
    /// Matches any `.invalidSignature` error.
    public static let invalidSignature = IdentityError(.invalidSignature, "invalid signature")
    /// Matches any `.invalidPeerID` error.
    public static let invalidPeerID = IdentityError(.invalidPeerID, "invalid peer ID")
    /// Matches any `.rsaKeyTooSmall` error.
    public static let rsaKeyTooSmall = IdentityError(.rsaKeyTooSmall, "RSA key smaller than 2048 bits")
    /// Matches any `.rsaKeyTooLarge` error.
    public static let rsaKeyTooLarge = IdentityError(.rsaKeyTooLarge, "RSA key larger than 8192 bits")
    /// Matches any `.libraryUnavailable` error (equality compares codes only).
    public static let libraryUnavailable = IdentityError(.libraryUnavailable, "crypto library unavailable")
    /// Matches any `.signingFailed` error.
    public static let signingFailed = IdentityError(.signingFailed, "signing failed")
    /// Matches any `.keyFile` error.
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
