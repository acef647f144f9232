import Multiformats

/// A libp2p peer ID: the multihash of a marshaled `PublicKey` (peer-ids spec).
///
/// - Keys whose protobuf encoding is at most 42 bytes (e.g. Ed25519, secp256k1)
///   use the identity multihash, so the key can be recovered from the ID;
/// - larger keys (RSA, ECDSA) use sha2-256.
///
/// Text forms: the legacy base58btc multihash (`12D3KooW…`, `Qm…`, `16Uiu2…`; the
/// default `description`) and CIDv1 with the libp2p-key codec 0x72 in any
/// multibase (`bafz…`; `cidString` writes base32).
public struct PeerID: Hashable, Sendable, Comparable, CustomStringConvertible, LosslessStringConvertible {
    /// Spec threshold for identity hashing.
    public static let maxInlineKeyLength = 42
    /// Upper bound for text input (real IDs are ~46-64 characters).
    static let maxStringLength = 256

    /// The multihash bytes.
    public let bytes: [UInt8]

    public init(publicKey: PublicKey) {
        let marshaled = publicKey.marshal()
        let mh = marshaled.count <= Self.maxInlineKeyLength
            ? Multihash.identity(marshaled) : Multihash.sha256(marshaled)
        self.bytes = mh.bytes
    }

    /// Validates a binary peer ID: a multihash that is either identity (whose digest
    /// must be a canonical marshaled public key of at most 42 bytes) or a full
    /// 32-byte sha2-256.
    public init(bytes: [UInt8]) throws(IdentityError) {
        let mh: Multihash
        do {
            mh = try Multihash(bytes: bytes)
        } catch {
            throw IdentityError(.invalidPeerID, "not a multihash", cause: error)
        }
        switch mh.code {
        case Multihash.identityCode:
            guard mh.digest.count <= Self.maxInlineKeyLength else {
                throw IdentityError(.invalidPeerID, "identity peer ID over \(Self.maxInlineKeyLength) bytes")
            }
            do {
                _ = try PublicKey(marshaled: mh.digest)
            } catch {
                throw IdentityError(.invalidPeerID, "identity peer ID does not hold a valid public key", cause: error)
            }
        case Multihash.sha256Code:
            guard mh.digest.count == 32 else {
                throw IdentityError(.invalidPeerID, "sha2-256 peer ID digest must be 32 bytes")
            }
        default:
            throw IdentityError(.invalidPeerID, "peer ID multihash code \(mh.code) is neither identity nor sha2-256")
        }
        self.bytes = bytes
    }

    /// Parses base58btc (`1…`, `Qm…`) or a multibase CIDv1 with codec libp2p-key.
    public init(_ string: String) throws(IdentityError) {
        try self.init(parsing: string)
    }

    public init?<S: StringProtocol>(_ description: S) {
        do {
            try self.init(parsing: String(description))
        } catch {
            return nil
        }
    }

    private init(parsing string: String) throws(IdentityError) {
        guard !string.isEmpty, string.utf8.count <= Self.maxStringLength else {
            throw IdentityError(.invalidPeerID, "peer ID string has invalid length \(string.utf8.count)")
        }
        // peer-ids spec: "1…"/"Qm…" are bare base58btc multihashes; otherwise the
        // string must be a multibase-encoded CIDv1.
        if string.hasPrefix("1") || string.hasPrefix("Qm") {
            let decoded: [UInt8]
            do {
                decoded = try Base58.decode(string)
            } catch {
                throw IdentityError(.invalidPeerID, "invalid base58btc", cause: error)
            }
            try self.init(bytes: decoded)
            return
        }
        let cid: CID
        do {
            cid = try CID(string)
        } catch {
            throw IdentityError(.invalidPeerID, "neither base58btc multihash nor CIDv1", cause: error)
        }
        guard cid.codec == Multicodec.libp2pKey else {
            throw IdentityError(.invalidPeerID, "CID codec 0x\(String(cid.codec, radix: 16)) is not libp2p-key (0x72)")
        }
        try self.init(bytes: cid.multihash.bytes)
    }

    /// Legacy base58btc text form (the canonical display form).
    public var b58String: String { Base58.encode(bytes) }

    /// CIDv1 (libp2p-key) in base32 multibase, e.g. `bafz…`.
    public var cidString: String {
        var cid: [UInt8] = []
        Varint.encode(Multicodec.cidv1, into: &cid)
        Varint.encode(Multicodec.libp2pKey, into: &cid)
        cid.append(contentsOf: bytes)
        return Multibase.encode(cid, as: .base32)
    }

    public var description: String { b58String }

    /// The public key, when it is inlined (identity multihash).
    public var publicKey: PublicKey? {
        guard let mh = try? Multihash(bytes: bytes), mh.code == Multihash.identityCode else { return nil }
        return try? PublicKey(marshaled: mh.digest)
    }

    /// Whether this ID was derived from `key`.
    public func matches(_ key: PublicKey) -> Bool {
        PeerID(publicKey: key) == self
    }

    /// The bytes hashed as one block: the synthesized conformance feeds an array to the hasher one
    /// element at a time, several times slower for the 38 bytes of an Ed25519 ID (peer IDs key the
    /// per-peer tables of the hot pubsub and routing paths).
    public func hash(into hasher: inout Hasher) {
        bytes.withUnsafeBytes { hasher.combine(bytes: $0) }
    }

    public static func == (lhs: PeerID, rhs: PeerID) -> Bool {
        lhs.bytes == rhs.bytes
    }

    public static func < (lhs: PeerID, rhs: PeerID) -> Bool {
        lhs.bytes.lexicographicallyPrecedes(rhs.bytes)
    }
}

extension PrivateKey {
    /// The peer ID of this key's public key.
    public var peerID: PeerID { PeerID(publicKey: publicKey) }
}

extension Multiaddr {
    /// The peer ID of a trailing `/p2p/…` component, if present and valid.
    public var peerID: PeerID? {
        guard let mh = peerIDBytes else { return nil }
        return try? PeerID(bytes: mh)
    }

    /// This address with `/p2p/<peerID>` appended.
    public func appending(peerID: PeerID) -> Multiaddr {
        appending(.p2p(peerID.bytes))
    }
}
