import Basics

/// Errors thrown by the Multiformats module: a `code`, a `message` with the details (the bad
/// character, the multiaddr part…) and, where a lower-level parse failed, its error as `cause`.
///
/// Equality (and hashing) consider `code` and `message`, not the cause, so tests can match with
/// the static values, e.g. `#expect(throws: MultiformatsError.unknownProtocolName("foo"))`.
public struct MultiformatsError: CodedError, Hashable {
    /// The kinds of multiformats failure.
    public enum Code: String, ErrorCode {
        /// An unsigned varint used more bytes than necessary (e.g. `0x80 0x00`).
        case varintNonMinimal
        /// An unsigned varint was longer than 9 bytes / exceeded 63 bits.
        case varintOverflow
        /// A character outside the base58btc alphabet.
        case invalidBase58Character
        /// A character outside the RFC 4648 base32 alphabet.
        case invalidBase32Character
        /// A character outside the base64 / base64url alphabet.
        case invalidBase64Character
        /// A character that is not a hexadecimal digit.
        case invalidBase16Character
        /// The encoded text has an impossible length or non-zero padding bits.
        case invalidEncodingLength
        /// The multibase prefix character is unknown, or the string is empty.
        case unknownMultibasePrefix
        /// A multiaddr protocol code that this implementation does not know.
        case unknownProtocolCode
        /// A multiaddr protocol name that this implementation does not know.
        case unknownProtocolName
        /// A malformed multiaddr (text or binary form).
        case malformedMultiaddr
        /// A malformed multihash.
        case invalidMultihash
        /// A malformed CID.
        case invalidCID
        /// Malformed protobuf input.
        case invalidProtobuf
        /// The multiaddr cannot be converted to/from a socket address.
        case unsupportedAddress
    }

    /// The kind of failure.
    public var code: Code
    /// The details, e.g. `invalid base58btc character "0"`.
    public var message: String
    /// The lower-level failure, e.g. the multibase error behind a malformed `/p2p` value.
    public var cause: (any Error)?

    /// An error of kind `code`.
    public init(_ code: Code, _ message: String, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    /// Equal when code and message are (the cause is not compared).
    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.code == rhs.code && lhs.message == rhs.message }
    /// Hashes code and message, consistent with `==`.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(code)
        hasher.combine(message)
    }

    /// A varint that is not minimally encoded.
    public static let varintNonMinimal = Self(.varintNonMinimal, "varint is not minimally encoded")
    /// A varint longer than 9 bytes.
    public static let varintOverflow = Self(.varintOverflow, "varint is longer than 9 bytes (63 bits)")
    /// `c` is not in the base58btc alphabet.
    public static func invalidBase58Character(_ c: Character) -> Self {
        Self(.invalidBase58Character, "invalid base58btc character \(c.debugDescription)")
    }
    /// `c` is not in the base32 alphabet.
    public static func invalidBase32Character(_ c: Character) -> Self {
        Self(.invalidBase32Character, "invalid base32 character \(c.debugDescription)")
    }
    /// `c` is not in the base64 alphabet.
    public static func invalidBase64Character(_ c: Character) -> Self {
        Self(.invalidBase64Character, "invalid base64 character \(c.debugDescription)")
    }
    /// `c` is not a hexadecimal digit.
    public static func invalidBase16Character(_ c: Character) -> Self {
        Self(.invalidBase16Character, "invalid base16 character \(c.debugDescription)")
    }
    /// An impossible length or non-zero padding bits.
    public static func invalidEncodingLength(_ message: String) -> Self { Self(.invalidEncodingLength, message) }
    /// The multibase prefix `c` is unknown; `nil` for an empty string.
    public static func unknownMultibasePrefix(_ c: Character?) -> Self {
        Self(.unknownMultibasePrefix, c.map { "unknown multibase prefix \($0.debugDescription)" } ?? "empty multibase string")
    }
    /// The multiaddr protocol code `code` is unknown.
    public static func unknownProtocolCode(_ code: UInt64) -> Self {
        Self(.unknownProtocolCode, "unknown multiaddr protocol code \(code)")
    }
    /// The multiaddr protocol name `name` is unknown.
    public static func unknownProtocolName(_ name: String) -> Self {
        Self(.unknownProtocolName, "unknown multiaddr protocol \(name.debugDescription)")
    }
    /// A malformed multiaddr; `message` says where.
    public static func malformedMultiaddr(_ message: String, cause: (any Error)? = nil) -> Self {
        Self(.malformedMultiaddr, message, cause: cause)
    }
    /// A malformed multihash.
    public static func invalidMultihash(_ message: String) -> Self { Self(.invalidMultihash, message) }
    /// A malformed CID.
    public static func invalidCID(_ message: String, cause: (any Error)? = nil) -> Self {
        Self(.invalidCID, message, cause: cause)
    }
    /// Malformed protobuf input.
    public static func invalidProtobuf(_ message: String) -> Self { Self(.invalidProtobuf, message) }
    /// The multiaddr cannot be converted to/from a socket address.
    public static func unsupportedAddress(_ message: String, cause: (any Error)? = nil) -> Self {
        Self(.unsupportedAddress, message, cause: cause)
    }
}
