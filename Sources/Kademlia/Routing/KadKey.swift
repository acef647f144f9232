import Crypto
import Identity

/// A point in the DHT's keyspace: SHA-256 of a peer ID's bytes or of a record/provider key
/// (kad-dht spec: "the Kademlia distance is the XOR of the SHA-256 of the keys").
public struct KadKey: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// The 32 bytes of the hash.
    public let bytes: [UInt8]

    /// The key of some bytes (a record key, a CID's multihash, a peer ID's bytes).
    public init(hashing data: some Sequence<UInt8>) {
        self.bytes = Array(SHA256.hash(data: Array(data)))
    }

    /// The key of a peer: the SHA-256 of its peer ID's bytes.
    public init(peer: PeerID) {
        self.init(hashing: peer.bytes)
    }

    /// A key from its 32 bytes as they are (tests, and random keys for bucket refresh).
    public init(rawBytes: [UInt8]) {
        precondition(rawBytes.count == 32, "a Kademlia key has 32 bytes")
        self.bytes = rawBytes
    }

    /// The XOR distance to `other`.
    public func distance(to other: KadKey) -> KadDistance {
        KadDistance(bytes: zip(bytes, other.bytes).map { $0 ^ $1 })
    }

    /// How many leading bits this key shares with `other` (256 when equal).
    public func commonPrefixLength(with other: KadKey) -> Int {
        distance(to: other).leadingZeroBits
    }

    /// Big-endian order of the bytes.
    public static func < (lhs: KadKey, rhs: KadKey) -> Bool { lhs.bytes.lexicographicallyPrecedes(rhs.bytes) }

    /// The first 8 bytes in hex.
    public var description: String { bytes.prefix(8).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }
}

/// The XOR of two keys, compared as a 256-bit big-endian number. Four words, no allocation:
/// lookups and the routing table compare distances all the time.
public struct KadDistance: Sendable, Hashable, Comparable {
    /// The most significant word first.
    let w0, w1, w2, w3: UInt64

    init(bytes: [UInt8]) {
        func word(_ at: Int) -> UInt64 {
            var value: UInt64 = 0
            for byte in bytes[at..<at + 8] { value = value << 8 | UInt64(byte) }
            return value
        }
        (w0, w1, w2, w3) = (word(0), word(8), word(16), word(24))
    }

    /// 32 bytes, most significant first.
    public var bytes: [UInt8] {
        [w0, w1, w2, w3].flatMap { word in (0..<8).reversed().map { UInt8(truncatingIfNeeded: word >> (8 * $0)) } }
    }

    /// The number of leading zero bits (256 for distance zero).
    public var leadingZeroBits: Int {
        if w0 != 0 { return w0.leadingZeroBitCount }
        if w1 != 0 { return 64 + w1.leadingZeroBitCount }
        if w2 != 0 { return 128 + w2.leadingZeroBitCount }
        if w3 != 0 { return 192 + w3.leadingZeroBitCount }
        return 256
    }

    /// Smaller distance first.
    public static func < (lhs: KadDistance, rhs: KadDistance) -> Bool {
        (lhs.w0, lhs.w1, lhs.w2, lhs.w3) < (rhs.w0, rhs.w1, rhs.w2, rhs.w3)
    }
}
