import Identity

/// StrictSign (spec `pubsub/README.md`, "Message Signing"): every message carries its author in
/// `from`, a sequence number, and a signature by the author's key over `"libp2p-pubsub:"` followed
/// by the message protobuf without `signature` and `key`. `key` holds the author's marshaled public
/// key only when the peer ID cannot give it (sha2-256 peer IDs, e.g. RSA); when present it must
/// match `from`.
public enum MessageSigning {
    /// The domain-separation prefix of pubsub signatures.
    public static let prefix = Array("libp2p-pubsub:".utf8)

    /// Why a received message fails StrictSign.
    public enum Failure: Error, Sendable, Equatable, CustomStringConvertible {
        case missingSignature
        case missingFrom
        case invalidFrom
        /// Absent, or not the 8-byte big-endian counter the spec describes.
        case invalidSeqno
        /// `key` is not a valid public key, or not the key of `from`.
        case keyMismatch
        /// No `key` and `from` does not inline the key.
        case keyNotRecoverable
        case badSignature

        public var description: String {
            switch self {
            case .missingSignature: "unsigned message"
            case .missingFrom: "message without from"
            case .invalidFrom: "from is not a valid peer ID"
            case .invalidSeqno: "seqno is missing or not 8 bytes"
            case .keyMismatch: "key does not belong to from"
            case .keyNotRecoverable: "no key, and from does not inline one"
            case .badSignature: "signature does not verify"
            }
        }
    }

    /// The author and sequence number of a message that passed `verify`.
    public struct Author: Sendable, Equatable {
        public var peer: PeerID
        public var seqno: UInt64
    }

    /// A signed message from `key`'s peer with sequence number `seqno`.
    public static func signedMessage(
        topic: String, data: [UInt8], seqno: UInt64, key: PrivateKey
    ) throws(IdentityError) -> PubSubRPC.Message {
        let peer = key.peerID
        var message = PubSubRPC.Message(from: peer.bytes, data: data, seqno: encode(seqno: seqno), topic: topic)
        message.signature = try key.sign(message.signableBytes(after: prefix))
        if peer.publicKey == nil { message.key = key.publicKey.marshal() }
        return message
    }

    /// Checks StrictSign; returns the verified author.
    public static func verify(_ message: PubSubRPC.Message) -> Result<Author, Failure> {
        guard let signature = message.signature else { return .failure(.missingSignature) }
        guard let from = message.from else { return .failure(.missingFrom) }
        guard let peer = try? PeerID(bytes: from) else { return .failure(.invalidFrom) }
        guard let seqnoBytes = message.seqno, let seqno = decode(seqno: seqnoBytes) else {
            return .failure(.invalidSeqno)
        }
        let key: PublicKey
        if let marshaled = message.key {
            guard let given = try? PublicKey(marshaled: marshaled), peer.matches(given) else {
                return .failure(.keyMismatch)
            }
            key = given
        } else {
            guard let inlined = peer.publicKey else { return .failure(.keyNotRecoverable) }
            key = inlined
        }
        guard key.verify(signature: signature, for: message.signableBytes(after: prefix)) else {
            return .failure(.badSignature)
        }
        return .success(Author(peer: peer, seqno: seqno))
    }

    static func encode(seqno: UInt64) -> [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: seqno >> (56 - 8 * UInt64($0))) }
    }

    static func decode(seqno bytes: [UInt8]) -> UInt64? {
        guard bytes.count == 8 else { return nil }
        return bytes.reduce(0) { $0 << 8 | UInt64($1) }
    }
}
