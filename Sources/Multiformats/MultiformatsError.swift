/// Errors thrown by the Multiformats module.
///
/// Cases carry just enough context to produce a useful message; compare with `==`
/// in tests (all associated values are `Equatable`).
public enum MultiformatsError: Error, Equatable, Sendable, CustomStringConvertible {
    /// An unsigned varint used more bytes than necessary (e.g. `0x80 0x00`).
    case varintNonMinimal
    /// An unsigned varint was longer than 9 bytes / exceeded 63 bits.
    case varintOverflow
    /// A character outside the base58btc alphabet.
    case invalidBase58Character(Character)
    /// A character outside the RFC 4648 base32 alphabet.
    case invalidBase32Character(Character)
    /// A character outside the base64 / base64url alphabet.
    case invalidBase64Character(Character)
    /// A character that is not a hexadecimal digit.
    case invalidBase16Character(Character)
    /// The encoded text has an impossible length or non-zero padding bits.
    case invalidEncodingLength(String)
    /// The multibase prefix character is unknown, or the string is empty (`nil`).
    case unknownMultibasePrefix(Character?)
    /// A multiaddr protocol code that this implementation does not know.
    case unknownProtocolCode(UInt64)
    /// A multiaddr protocol name that this implementation does not know.
    case unknownProtocolName(String)
    /// A malformed multiaddr (text or binary form).
    case malformedMultiaddr(String)
    /// A malformed multihash.
    case invalidMultihash(String)
    /// A malformed CID.
    case invalidCID(String)
    /// Malformed protobuf input.
    case invalidProtobuf(String)
    /// The multiaddr cannot be converted to/from a socket address.
    case unsupportedAddress(String)

    public var description: String {
        switch self {
        case .varintNonMinimal: return "varint is not minimally encoded"
        case .varintOverflow: return "varint is longer than 9 bytes (63 bits)"
        case .invalidBase58Character(let c): return "invalid base58btc character \(c.debugDescription)"
        case .invalidBase32Character(let c): return "invalid base32 character \(c.debugDescription)"
        case .invalidBase64Character(let c): return "invalid base64 character \(c.debugDescription)"
        case .invalidBase16Character(let c): return "invalid base16 character \(c.debugDescription)"
        case .invalidEncodingLength(let m): return "invalid encoded length: \(m)"
        case .unknownMultibasePrefix(let c):
            if let c { return "unknown multibase prefix \(c.debugDescription)" }
            return "empty multibase string"
        case .unknownProtocolCode(let code): return "unknown multiaddr protocol code \(code)"
        case .unknownProtocolName(let name): return "unknown multiaddr protocol \(name.debugDescription)"
        case .malformedMultiaddr(let m): return "malformed multiaddr: \(m)"
        case .invalidMultihash(let m): return "invalid multihash: \(m)"
        case .invalidCID(let m): return "invalid CID: \(m)"
        case .invalidProtobuf(let m): return "invalid protobuf: \(m)"
        case .unsupportedAddress(let m): return "unsupported address: \(m)"
        }
    }
}
