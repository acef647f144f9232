import Foundation
import Multiformats

/// A signed envelope (libp2p RFC 0002): a payload, its type, a signature over both made for one
/// "domain" (purpose), and the public key that verifies it.
///
/// Wire format, as go-libp2p, py-libp2p and rust-libp2p encode it (`core/record/pb/envelope.proto`):
///
///     message Envelope {
///       PublicKey public_key = 1;  // the marshalled libp2p PublicKey message
///       bytes payload_type = 2;
///       bytes payload = 3;
///       bytes signature = 5;
///     }
///
/// (The RFC's own sketch numbers the signature 4; every implementation uses 5, and so do we.)
///
/// The signature covers `uvarint(len(domain)) ‖ domain ‖ uvarint(len(payload_type)) ‖ payload_type ‖
/// uvarint(len(payload)) ‖ payload`; the domain itself is never sent. A signature made for one domain
/// therefore does not verify for another (`open` reports it as `.invalidSignature`).
///
/// Build one with `seal`; check received bytes with `open`, which verifies before anything looks at
/// the payload. Every field has a hard size limit (`Limits`).
public struct SignedEnvelope: Sendable, Hashable {
    /// Hard limits on what `open` accepts. The defaults fit every key type (an RSA-8192 key and its
    /// 1 KiB signature included) and the peer records real peers send (go-libp2p keeps its whole
    /// identify message, signed record included, under 8 KiB).
    public struct Limits: Sendable, Hashable {
        /// The whole envelope.
        public var maxEnvelopeBytes = 8 * 1024
        /// The marshalled public key (an RSA-8192 key is about 1.1 KiB).
        public var maxPublicKeyBytes = 2 * 1024
        /// The payload type.
        public var maxPayloadTypeBytes = 64
        /// The payload.
        public var maxPayloadBytes = 7 * 1024
        /// The signature (RSA-8192: 1024 bytes; Ed25519: 64; ECDSA DER: at most 139).
        public var maxSignatureBytes = 1024
        /// The domain string (ours, not the peer's: a longer one is a programming error).
        public var maxDomainBytes = 256

        /// The default limits.
        public static let defaults = Limits()

        /// The default limits.
        public init() {}
    }

    /// The key that signed the envelope; derive the signer's peer ID from it.
    public let publicKey: PublicKey
    /// What the payload is (for peer records: the multicodec `0x0301` as the two bytes 03 01).
    public let payloadType: [UInt8]
    /// The signed payload.
    public let payload: [UInt8]
    /// The signature over domain, payload type and payload.
    public let signature: [UInt8]

    private init(publicKey: PublicKey, payloadType: [UInt8], payload: [UInt8], signature: [UInt8]) {
        self.publicKey = publicKey
        self.payloadType = payloadType
        self.payload = payload
        self.signature = signature
    }

    /// The peer ID of the signing key.
    public var signer: PeerID { PeerID(publicKey: publicKey) }

    /// Signs `payload` of `payloadType` for `domain` with `key`.
    ///
    /// Throws `.invalidArgument` for an empty domain or payload type (go-libp2p refuses both),
    /// `.tooLarge` when a part is over `limits` (so that every envelope we make, we also accept),
    /// `.signingFailed` when the key cannot sign.
    public static func seal(
        payload: [UInt8], payloadType: [UInt8], domain: String, with key: PrivateKey, limits: Limits = .defaults
    ) throws(RecordError) -> SignedEnvelope {
        guard !domain.isEmpty else { throw RecordError(.invalidArgument, "envelope domain must not be empty") }
        guard !payloadType.isEmpty else { throw RecordError(.invalidArgument, "envelope payload type must not be empty") }
        try checkDomain(domain, limits)
        guard payloadType.count <= limits.maxPayloadTypeBytes else {
            throw RecordError(.tooLarge, "payload type of \(payloadType.count) bytes (limit \(limits.maxPayloadTypeBytes))")
        }
        guard payload.count <= limits.maxPayloadBytes else {
            throw RecordError(.tooLarge, "payload of \(payload.count) bytes (limit \(limits.maxPayloadBytes))")
        }
        let signature: [UInt8]
        do {
            signature = try key.sign(signingBytes(domain: domain, payloadType: payloadType, payload: payload))
        } catch {
            throw RecordError(.signingFailed, "sealing an envelope", cause: error)
        }
        let envelope = SignedEnvelope(publicKey: key.publicKey, payloadType: payloadType, payload: payload, signature: signature)
        let size = envelope.marshal().count
        guard size <= limits.maxEnvelopeBytes else {
            throw RecordError(.tooLarge, "envelope of \(size) bytes (limit \(limits.maxEnvelopeBytes))")
        }
        return envelope
    }

    /// Parses `bytes` and verifies the signature for `domain`.
    ///
    /// With `payloadType`, an envelope of another type throws `.wrongPayloadType` before its
    /// signature is checked. Throws `.tooLarge` (the input or a field over `limits`), `.malformed`
    /// (not a protobuf, a truncated one, a known field with the wrong wire type or twice),
    /// `.missingField` (no key, payload type or signature), `.invalidPublicKey`, and
    /// `.invalidSignature` (also for an envelope signed for another domain: the two cannot be told
    /// apart). Unknown fields are ignored.
    public static func open(
        _ bytes: [UInt8], domain: String, payloadType expected: [UInt8]? = nil, limits: Limits = .defaults
    ) throws(RecordError) -> SignedEnvelope {
        let envelope = try decode(bytes, limits: limits)
        if let expected, envelope.payloadType != expected {
            throw RecordError(
                .wrongPayloadType,
                "payload type \(Base16.encode(envelope.payloadType)), expected \(Base16.encode(expected))")
        }
        try envelope.verify(domain: domain, limits: limits)
        return envelope
    }

    /// Parses `bytes` without verifying the signature (use `open`; this is for tools and tests).
    /// Throws like `open` for everything but the signature and the payload type.
    public static func decode(_ bytes: [UInt8], limits: Limits = .defaults) throws(RecordError) -> SignedEnvelope {
        guard bytes.count <= limits.maxEnvelopeBytes else {
            throw RecordError(.tooLarge, "envelope of \(bytes.count) bytes (limit \(limits.maxEnvelopeBytes))")
        }
        var reader = ProtobufReader(bytes)
        var keyBytes: [UInt8]?
        var payloadType: [UInt8]?
        var payload: [UInt8]?
        var signature: [UInt8]?
        while true {
            let next: (field: Int, value: ProtobufValue)?
            do {
                next = try reader.next()
            } catch {
                throw RecordError(.malformed, "envelope protobuf", cause: error)
            }
            guard let (field, value) = next else { break }
            switch field {
            case 1: try store(value, field: "public_key", limit: limits.maxPublicKeyBytes, into: &keyBytes)
            case 2: try store(value, field: "payload_type", limit: limits.maxPayloadTypeBytes, into: &payloadType)
            case 3: try store(value, field: "payload", limit: limits.maxPayloadBytes, into: &payload)
            case 5: try store(value, field: "signature", limit: limits.maxSignatureBytes, into: &signature)
            default: continue  // unknown fields: ignored (forward compatibility)
            }
        }
        guard let keyBytes, !keyBytes.isEmpty else { throw RecordError(.missingField, "envelope has no public key") }
        guard let payloadType, !payloadType.isEmpty else {
            throw RecordError(.missingField, "envelope has no payload type")
        }
        guard let signature, !signature.isEmpty else { throw RecordError(.missingField, "envelope has no signature") }
        let publicKey: PublicKey
        do {
            publicKey = try PublicKey(marshaled: keyBytes)
        } catch {
            throw RecordError(.invalidPublicKey, "envelope public key", cause: error)
        }
        // An empty payload is legal protobuf (proto3 leaves the field out); the record type decides.
        return SignedEnvelope(publicKey: publicKey, payloadType: payloadType, payload: payload ?? [], signature: signature)
    }

    /// Checks the signature for `domain`; throws `.invalidSignature` if it does not verify.
    public func verify(domain: String, limits: Limits = .defaults) throws(RecordError) {
        try Self.checkDomain(domain, limits)
        let message = Self.signingBytes(domain: domain, payloadType: payloadType, payload: payload)
        do {
            try publicKey.verifyThrowing(signature: signature, for: message)
        } catch {
            throw RecordError(.invalidSignature, "envelope signature (domain \"\(domain)\")", cause: error)
        }
    }

    /// The protobuf encoding, fields in tag order (what `open` reads back).
    public func marshal() -> [UInt8] {
        let key = publicKey.marshal()
        var w = ProtobufWriter(reservingCapacity: key.count + payloadType.count + payload.count + signature.count + 16)
        w.writeBytesField(1, key)
        w.writeBytesField(2, payloadType)
        w.writeBytesField(3, payload)
        w.writeBytesField(5, signature)
        return w.bytes
    }

    /// The bytes that are signed: each of domain, payload type and payload preceded by its length
    /// as an unsigned varint (RFC 0002, "Signature Production / Verification").
    public static func signingBytes(domain: String, payloadType: [UInt8], payload: [UInt8]) -> [UInt8] {
        let domainBytes = Array(domain.utf8)
        var out: [UInt8] = []
        out.reserveCapacity(domainBytes.count + payloadType.count + payload.count + 3 * Varint.maxLength)
        for part in [domainBytes, payloadType, payload] {
            Varint.encode(UInt64(part.count), into: &out)
            out.append(contentsOf: part)
        }
        return out
    }

    private static func checkDomain(_ domain: String, _ limits: Limits) throws(RecordError) {
        guard domain.utf8.count <= limits.maxDomainBytes else {
            throw RecordError(.tooLarge, "domain of \(domain.utf8.count) bytes (limit \(limits.maxDomainBytes))")
        }
    }

    /// Stores a length-delimited field once; a second copy, another wire type or too many bytes throw.
    private static func store(
        _ value: ProtobufValue, field: String, limit: Int, into slot: inout [UInt8]?
    ) throws(RecordError) {
        guard case .bytes(let bytes) = value else {
            throw RecordError(.malformed, "envelope field \(field) is not length-delimited")
        }
        guard slot == nil else { throw RecordError(.malformed, "envelope field \(field) appears twice") }
        guard bytes.count <= limit else {
            throw RecordError(.tooLarge, "envelope field \(field) of \(bytes.count) bytes (limit \(limit))")
        }
        slot = bytes
    }
}
