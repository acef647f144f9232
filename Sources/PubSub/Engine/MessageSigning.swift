import Basics
import Identity

/// How a topic's messages are signed and checked (spec `pubsub/README.md`, "Signature Policy
/// Options"). Set per service (`PubSubConfiguration.signaturePolicy`) and per topic
/// (`PubSubConfiguration.topics`).
public enum MessageSignaturePolicy: String, Sendable, Hashable, CaseIterable {
    /// Messages carry `from`, `seqno`, `signature` (and `key` when the peer ID does not inline
    /// it); a received message without them, or whose signature does not verify, is rejected.
    case strictSign
    /// Messages carry none of `from`, `seqno`, `signature`, `key` (absent from the protobuf, not
    /// empty); a received message with any of them is rejected. The message ID cannot use the
    /// author and must come from the content (`PubSubConfiguration.unsignedMessageID`). Ethereum
    /// consensus gossip uses this policy.
    case strictNoSign
}

/// StrictSign (spec `pubsub/README.md`, "Message Signing"): every message carries its author in
/// `from`, a sequence number, and a signature by the author's key over `"libp2p-pubsub:"` followed
/// by the message protobuf without `signature` and `key`. `key` holds the author's marshaled public
/// key only when the peer ID cannot give it (sha2-256 peer IDs, e.g. RSA); when present it must
/// match `from`.
public enum MessageSigning {
    /// The domain-separation prefix of pubsub signatures.
    public static let prefix = Array("libp2p-pubsub:".utf8)

    /// Why a received message fails StrictSign. Equality (and hashing) consider only `code`.
    public struct Failure: CodedError, Hashable {
        /// The kinds of failure.
        public enum Code: String, ErrorCode {
            /// The message has no signature.
            case missingSignature
            /// The message has no `from`.
            case missingFrom
            /// `from` is not a valid peer ID.
            case invalidFrom
            /// Absent, or not the 8-byte big-endian counter the spec describes.
            case invalidSeqno
            /// `key` is not a valid public key, or not the key of `from`.
            case keyMismatch
            /// No `key` and `from` does not inline the key.
            case keyNotRecoverable
            /// The signature does not verify.
            case badSignature
            /// StrictNoSign: the message has a signature.
            case unexpectedSignature
            /// StrictNoSign: the message has a `from`, a `seqno` or a `key`.
            case unexpectedAuthor
        }

        /// What kind of failure.
        public var code: Code
        /// The same, for people.
        public var message: String
        /// None: the policy is checked here.
        public var cause: (any Error)? { nil }

        /// A failure of kind `code`.
        public init(_ code: Code, _ message: String) {
            self.code = code
            self.message = message
        }

        /// Equal when the codes are.
        public static func == (lhs: Self, rhs: Self) -> Bool { lhs.code == rhs.code }
        /// Hashes the code only, consistent with `==`.
        public func hash(into hasher: inout Hasher) { hasher.combine(code) }

        /// The message has no signature.
        public static let missingSignature = Failure(.missingSignature, "unsigned message")
        /// The message has no `from`.
        public static let missingFrom = Failure(.missingFrom, "message without from")
        /// `from` is not a valid peer ID.
        public static let invalidFrom = Failure(.invalidFrom, "from is not a valid peer ID")
        /// The seqno is missing or not 8 bytes.
        public static let invalidSeqno = Failure(.invalidSeqno, "seqno is missing or not 8 bytes")
        /// `key` does not belong to `from`.
        public static let keyMismatch = Failure(.keyMismatch, "key does not belong to from")
        /// No `key`, and `from` does not inline one.
        public static let keyNotRecoverable = Failure(.keyNotRecoverable, "no key, and from does not inline one")
        /// The signature does not verify.
        public static let badSignature = Failure(.badSignature, "signature does not verify")
        /// A signature on a StrictNoSign topic.
        public static let unexpectedSignature = Failure(.unexpectedSignature, "signed message on a StrictNoSign topic")
        /// `from`, `seqno` or `key` on a StrictNoSign topic.
        public static let unexpectedAuthor = Failure(
            .unexpectedAuthor, "message with from, seqno or key on a StrictNoSign topic")
    }

    /// The author and sequence number of a message that passed `verify`.
    public struct Author: Sendable, Equatable {
        /// The verified author (`from`).
        public var peer: PeerID
        /// The message's sequence number.
        public var seqno: UInt64
    }

    /// A StrictNoSign message: topic and data only (no `from`, `seqno`, `signature` or `key`).
    public static func unsignedMessage(topic: String, data: [UInt8]) -> PubSubRPC.Message {
        PubSubRPC.Message(data: data, topic: topic)
    }

    /// The checks of `policy` that need no cryptography, made before the seen cache is consulted
    /// (as go-libp2p-pubsub's `checkSigningPolicy`): StrictSign needs a signature, StrictNoSign
    /// allows none of `signature`, `from`, `seqno`, `key`. nil when the message passes them.
    public static func precheck(_ message: PubSubRPC.Message, policy: MessageSignaturePolicy) -> Failure? {
        switch policy {
        case .strictSign:
            return message.signature == nil ? .missingSignature : nil
        case .strictNoSign:
            if message.signature != nil { return .unexpectedSignature }
            if message.from != nil || message.seqno != nil || message.key != nil { return .unexpectedAuthor }
            return nil
        }
    }

    /// Checks `message` under `policy`: StrictSign verifies it (`verify`) and returns its author;
    /// StrictNoSign returns nil for a message without author fields.
    public static func check(_ message: PubSubRPC.Message, policy: MessageSignaturePolicy) -> Result<Author?, Failure> {
        switch policy {
        case .strictSign:
            return verify(message).map { Optional($0) }
        case .strictNoSign:
            if let failure = precheck(message, policy: .strictNoSign) { return .failure(failure) }
            return .success(nil)
        }
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
