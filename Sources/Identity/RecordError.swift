import Basics

/// Errors of signed envelopes (RFC 0002) and peer records (RFC 0003): a machine-checkable
/// `code`, a human-readable `message` and the lower-level failure as `cause`, if any.
///
/// Equality (and hashing) consider only `code`, so callers and tests can match with the static
/// values, e.g. `#expect(throws: RecordError.invalidSignature) { ... }`.
public struct RecordError: CodedError, Hashable {
    /// What went wrong.
    public enum Code: String, ErrorCode {
        /// The bytes are not a well-formed protobuf message (truncated, bad wire type, duplicate field).
        case malformed
        /// The input or one of its fields is larger than its limit.
        case tooLarge
        /// A required field is missing or empty.
        case missingField
        /// The envelope's public key is malformed or of an unsupported type.
        case invalidPublicKey
        /// The signature does not verify: tampered bytes, another key, or signed for another domain.
        case invalidSignature
        /// The envelope holds another kind of payload than the one expected.
        case wrongPayloadType
        /// The record's peer ID is malformed.
        case invalidPeerID
        /// The record's peer ID is not the one of the key that signed the envelope.
        case peerMismatch
        /// The record is valid but about another peer than the one we expected (e.g. the peer at
        /// the other end of the connection it came over).
        case unexpectedPeer
        /// Sealing was asked with an empty domain or payload type, or a key that cannot sign.
        case invalidArgument
        /// Signing failed inside the crypto library.
        case signingFailed
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
    public static func == (lhs: RecordError, rhs: RecordError) -> Bool { lhs.code == rhs.code }
    /// Hashes the code only, consistent with `==`.
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }

    /// Matches any `.malformed` error.
    public static let malformed = RecordError(.malformed, "malformed")
    /// Matches any `.tooLarge` error.
    public static let tooLarge = RecordError(.tooLarge, "too large")
    /// Matches any `.missingField` error.
    public static let missingField = RecordError(.missingField, "missing field")
    /// Matches any `.invalidPublicKey` error.
    public static let invalidPublicKey = RecordError(.invalidPublicKey, "invalid public key")
    /// Matches any `.invalidSignature` error.
    public static let invalidSignature = RecordError(.invalidSignature, "invalid signature")
    /// Matches any `.wrongPayloadType` error.
    public static let wrongPayloadType = RecordError(.wrongPayloadType, "wrong payload type")
    /// Matches any `.invalidPeerID` error.
    public static let invalidPeerID = RecordError(.invalidPeerID, "invalid peer ID")
    /// Matches any `.peerMismatch` error.
    public static let peerMismatch = RecordError(.peerMismatch, "record peer ID does not match the signing key")
    /// Matches any `.unexpectedPeer` error.
    public static let unexpectedPeer = RecordError(.unexpectedPeer, "record of an unexpected peer")
    /// Matches any `.invalidArgument` error.
    public static let invalidArgument = RecordError(.invalidArgument, "invalid argument")
    /// Matches any `.signingFailed` error.
    public static let signingFailed = RecordError(.signingFailed, "signing failed")
}
