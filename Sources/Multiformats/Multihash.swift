import Crypto

/// A self-describing hash: `varint(code) ‖ varint(digest length) ‖ digest`.
public struct Multihash: Hashable, Sendable {
    /// Multicodec code of the "identity" hash function (no hashing).
    public static let identityCode: UInt64 = 0x00
    /// Multicodec code of sha2-256.
    public static let sha256Code: UInt64 = 0x12

    /// Upper bound on digest length we accept when parsing (guards against
    /// absurd length prefixes; real digests are at most 64 bytes, identity
    /// digests of public keys at most a few KiB).
    public static let maxDigestLength = 16 * 1024

    public let code: UInt64
    public let digest: [UInt8]

    public init(code: UInt64, digest: [UInt8]) throws(MultiformatsError) {
        guard code <= Varint.maxValue else { throw .invalidMultihash("code \(code) too large") }
        guard digest.count <= Self.maxDigestLength else {
            throw .invalidMultihash("digest of \(digest.count) bytes is too long")
        }
        if code == Self.sha256Code && digest.count > 32 {
            throw .invalidMultihash("sha2-256 digest longer than 32 bytes")
        }
        self.code = code
        self.digest = digest
    }

    /// Parses a complete multihash; the length prefix must match the remaining bytes exactly.
    public init(bytes: [UInt8]) throws(MultiformatsError) {
        var offset = 0
        let code = try Varint.decodeComplete(bytes, at: &offset, truncated: .invalidMultihash("truncated code"))
        let length = try Varint.decodeComplete(bytes, at: &offset, truncated: .invalidMultihash("truncated length"))
        guard length == UInt64(bytes.count - offset) else {
            throw .invalidMultihash("length prefix \(length) but \(bytes.count - offset) digest bytes")
        }
        try self.init(code: code, digest: Array(bytes[offset...]))
    }

    /// The binary form: `varint(code) ‖ varint(length) ‖ digest`.
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(digest.count + 4)
        Varint.encode(code, into: &out)
        Varint.encode(UInt64(digest.count), into: &out)
        out.append(contentsOf: digest)
        return out
    }

    /// Identity multihash: the data itself, unhashed.
    public static func identity<C: Collection>(_ data: C) -> Multihash where C.Element == UInt8 {
        Multihash(uncheckedCode: identityCode, digest: Array(data))
    }

    /// sha2-256 multihash of `data`.
    public static func sha256<C: Collection>(_ data: C) -> Multihash where C.Element == UInt8 {
        Multihash(uncheckedCode: sha256Code, digest: Array(SHA256.hash(data: Array(data))))
    }

    private init(uncheckedCode: UInt64, digest: [UInt8]) {
        self.code = uncheckedCode
        self.digest = digest
    }
}

/// Multicodec codes used across the stack (from the multicodec table).
public enum Multicodec {
    public static let identity: UInt64 = 0x00
    public static let sha2_256: UInt64 = 0x12
    /// CIDv1 content type for libp2p public keys (peer IDs as CIDs).
    public static let libp2pKey: UInt64 = 0x72
    /// CID version 1 marker.
    public static let cidv1: UInt64 = 0x01
}

/// A CIDv1: `varint(1) ‖ varint(content codec) ‖ multihash`, in text form with a
/// multibase prefix. CIDv0 (a bare base58 sha2-256 multihash) is not a CID here;
/// callers handle it as a plain multihash.
public struct CID: Hashable, Sendable {
    public let codec: UInt64
    public let multihash: Multihash

    public init(codec: UInt64, multihash: Multihash) {
        self.codec = codec
        self.multihash = multihash
    }

    public init(bytes: [UInt8]) throws(MultiformatsError) {
        var offset = 0
        let version = try Varint.decodeComplete(bytes, at: &offset, truncated: .invalidCID("truncated version"))
        guard version == Multicodec.cidv1 else { throw .invalidCID("unsupported CID version \(version)") }
        let codec = try Varint.decodeComplete(bytes, at: &offset, truncated: .invalidCID("truncated codec"))
        let mh: Multihash
        do {
            mh = try Multihash(bytes: Array(bytes[offset...]))
        } catch {
            throw .invalidCID("bad multihash", cause: error)
        }
        self.init(codec: codec, multihash: mh)
    }

    /// Parses a multibase-encoded CIDv1.
    public init(_ string: String) throws(MultiformatsError) {
        try self.init(bytes: Multibase.decode(string))
    }

    public var bytes: [UInt8] {
        var out: [UInt8] = []
        Varint.encode(Multicodec.cidv1, into: &out)
        Varint.encode(codec, into: &out)
        out.append(contentsOf: multihash.bytes)
        return out
    }

    /// Text form; base32 is the conventional default for CIDv1.
    public func string(_ encoding: Multibase.Encoding = .base32) -> String {
        Multibase.encode(bytes, as: encoding)
    }
}
