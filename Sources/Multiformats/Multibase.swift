/// Multibase: a one-character prefix naming the base, followed by the encoded data.
///
/// Prefixes (from the multibase table): `z` base58btc, `b`/`B` base32 lower/upper
/// (no padding), `u` base64url (no padding), `m` base64 (no padding), `f`/`F`
/// base16 lower/upper.
public enum Multibase {
    public enum Encoding: Sendable, Hashable, CaseIterable {
        case base58btc
        case base32
        case base64url
        case base16

        public var prefix: Character {
            switch self {
            case .base58btc: return "z"
            case .base32: return "b"
            case .base64url: return "u"
            case .base16: return "f"
            }
        }
    }

    public static func encode<C: Collection>(_ bytes: C, as encoding: Encoding) -> String where C.Element == UInt8 {
        switch encoding {
        case .base58btc: return "z" + Base58.encode(bytes)
        case .base32: return "b" + Base32.encode(bytes)
        case .base64url: return "u" + Base64.encode(bytes, urlSafe: true)
        case .base16: return "f" + Base16.encode(bytes)
        }
    }

    public static func decode(_ string: String) throws(MultiformatsError) -> [UInt8] {
        guard let prefix = string.first else { throw .unknownMultibasePrefix(nil) }
        let rest = String(string.dropFirst())
        switch prefix {
        case "z": return try Base58.decode(rest)
        case "b": return try decodeBase32(rest, upper: false)
        case "B": return try decodeBase32(rest, upper: true)
        case "u": return try Base64.decode(rest, urlSafe: true)
        case "m": return try Base64.decode(rest, urlSafe: false)
        case "f": return try decodeBase16(rest, upper: false)
        case "F": return try decodeBase16(rest, upper: true)
        default: throw .unknownMultibasePrefix(prefix)
        }
    }

    // The case of a multibase string is fixed by its prefix, so mixed case is invalid.
    private static func decodeBase32(_ s: String, upper: Bool) throws(MultiformatsError) -> [UInt8] {
        if let bad = s.first(where: { upper ? $0.isLowercase : $0.isUppercase }) {
            throw .invalidBase32Character(bad)
        }
        return try Base32.decode(s)
    }

    private static func decodeBase16(_ s: String, upper: Bool) throws(MultiformatsError) -> [UInt8] {
        if let bad = s.first(where: { upper ? $0.isLowercase : $0.isUppercase }) {
            throw .invalidBase16Character(bad)
        }
        return try Base16.decode(s)
    }
}
