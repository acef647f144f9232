import Foundation
import Multiformats

/// A peer record (libp2p RFC 0003): a peer's listen addresses with a sequence number, meant to be
/// carried in a `SignedEnvelope` signed by that peer (see `SignedPeerRecord`).
///
///     message PeerRecord {
///       message AddressInfo { bytes multiaddr = 1; }
///       bytes peer_id = 1;
///       uint64 seq = 2;
///       repeated AddressInfo addresses = 3;
///     }
///
/// A newer record of a peer has a greater `seq`. Like go-libp2p we take it from the wall clock in
/// nanoseconds, forced strictly increasing within the process (`nextSequenceNumber()`); the RFC
/// forbids reading a peer's `seq` as a time, so we only ever compare them.
public struct PeerRecord: Sendable, Hashable {
    /// The envelope domain of peer records. (RFC 0003 still says "libp2p-routing-state"; every
    /// implementation, go-libp2p's `PeerRecordEnvelopeDomain` first, uses this one.)
    public static let domain = "libp2p-peer-record"
    /// The envelope payload type of peer records: the multicodec `libp2p-peer-record` (0x0301)
    /// written as the two bytes 03 01 — as go-libp2p, js-libp2p and py-libp2p write it, not as the
    /// uvarint (81 06) a multicodec prefix would be. Interop depends on these exact bytes.
    public static let payloadType: [UInt8] = [0x03, 0x01]
    /// At most this many addresses in a record we accept (go-libp2p keeps its own identify
    /// message, record included, under 4 KiB: a few dozen addresses at most).
    public static let maxAddresses = 128
    /// At most this many bytes per address (a WebTransport address with two certhashes is ~150).
    public static let maxAddressBytes = 1024

    /// The peer the record is about.
    public var peerID: PeerID
    /// Orders the records of one peer: greater is newer.
    public var seq: UInt64
    /// The peer's addresses, in the order it gave them.
    public var addresses: [Multiaddr]

    /// A record of `peerID` at `addresses`; `seq` defaults to `nextSequenceNumber()`.
    public init(peerID: PeerID, seq: UInt64 = PeerRecord.nextSequenceNumber(), addresses: [Multiaddr]) {
        self.peerID = peerID
        self.seq = seq
        self.addresses = addresses
    }

    /// The protobuf encoding, fields in tag order (seq 0 is left out, as proto3 does).
    public func encoded() -> [UInt8] {
        var w = ProtobufWriter()
        w.writeBytesField(1, peerID.bytes)
        if seq != 0 { w.writeVarintField(2, seq) }
        for address in addresses {
            var info = ProtobufWriter()
            info.writeBytesField(1, address.bytes)
            w.writeBytesField(3, info.bytes)
        }
        return w.bytes
    }

    /// Decodes a record. Throws `.malformed` (bad protobuf, a known field with the wrong wire type,
    /// `peer_id` or `seq` twice), `.missingField` (no peer ID), `.invalidPeerID`, `.tooLarge` (more
    /// than `maxAddresses` addresses, or one over `maxAddressBytes`).
    ///
    /// An address that is not a multiaddr we can parse (a protocol we do not know) is skipped, as
    /// go-libp2p does: the rest of the record is still good. `skippedAddresses` counts them.
    public init(decoding bytes: [UInt8]) throws(RecordError) {
        var reader = ProtobufReader(bytes)
        var peerBytes: [UInt8]?
        var seq: UInt64?
        var addresses: [Multiaddr] = []
        var addressCount = 0
        var skipped = 0
        while true {
            let next: (field: Int, value: ProtobufValue)?
            do {
                next = try reader.next()
            } catch {
                throw RecordError(.malformed, "peer record protobuf", cause: error)
            }
            guard let (field, value) = next else { break }
            switch (field, value) {
            case (1, .bytes(let b)):
                guard peerBytes == nil else { throw RecordError(.malformed, "peer record peer_id appears twice") }
                peerBytes = b
            case (2, .varint(let v)):
                guard seq == nil else { throw RecordError(.malformed, "peer record seq appears twice") }
                seq = v
            case (3, .bytes(let info)):
                addressCount += 1
                guard addressCount <= Self.maxAddresses else {
                    throw RecordError(.tooLarge, "peer record with more than \(Self.maxAddresses) addresses")
                }
                if let address = try Self.decodeAddressInfo(info) { addresses.append(address) } else { skipped += 1 }
            case (1, _), (2, _), (3, _):
                throw RecordError(.malformed, "peer record field \(field) has the wrong wire type")
            default:
                continue  // unknown fields: ignored (the RFC expects the record to grow)
            }
        }
        guard let peerBytes, !peerBytes.isEmpty else { throw RecordError(.missingField, "peer record has no peer ID") }
        do {
            self.peerID = try PeerID(bytes: peerBytes)
        } catch {
            throw RecordError(.invalidPeerID, "peer record peer ID", cause: error)
        }
        self.seq = seq ?? 0
        self.addresses = addresses
        self.skippedAddresses = skipped
    }

    /// How many addresses `init(decoding:)` skipped because it could not parse them (0 otherwise).
    /// Not part of equality.
    public private(set) var skippedAddresses = 0

    /// The address of one `AddressInfo`; nil when it holds no multiaddr we can parse.
    private static func decodeAddressInfo(_ bytes: [UInt8]) throws(RecordError) -> Multiaddr? {
        var reader = ProtobufReader(bytes)
        var address: Multiaddr?
        var raw: [UInt8]?
        while true {
            let next: (field: Int, value: ProtobufValue)?
            do {
                next = try reader.next()
            } catch {
                throw RecordError(.malformed, "peer record AddressInfo protobuf", cause: error)
            }
            guard let (field, value) = next else { break }
            guard field == 1 else { continue }
            guard case .bytes(let b) = value else {
                throw RecordError(.malformed, "peer record AddressInfo multiaddr is not length-delimited")
            }
            guard raw == nil else { throw RecordError(.malformed, "peer record AddressInfo multiaddr appears twice") }
            guard b.count <= maxAddressBytes else {
                throw RecordError(.tooLarge, "peer record address of \(b.count) bytes (limit \(maxAddressBytes))")
            }
            raw = b
            address = try? Multiaddr(bytes: b)
        }
        guard let address, !address.isEmpty else { return nil }
        return address
    }

    /// Records compare by peer ID, seq and addresses.
    public static func == (lhs: PeerRecord, rhs: PeerRecord) -> Bool {
        lhs.peerID == rhs.peerID && lhs.seq == rhs.seq && lhs.addresses == rhs.addresses
    }

    /// Hashes what `==` compares.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(peerID)
        hasher.combine(seq)
        hasher.combine(addresses)
    }

    // MARK: - Sequence numbers

    private static let sequence = SequenceClock()

    /// A sequence number for a new record: the wall clock in nanoseconds since 1970, or one more
    /// than the last number handed out if the clock has not moved past it (go-libp2p's
    /// `TimestampSeq`). Strictly increasing within the process, and across restarts as long as
    /// the clock does not go back.
    public static func nextSequenceNumber() -> UInt64 {
        sequence.next()
    }
}

/// The process-wide last sequence number, behind a lock.
private final class SequenceClock: @unchecked Sendable {
    // @unchecked: `last` is only read and written with `lock` held.
    private let lock = NSLock()
    private var last: UInt64 = 0

    func next() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let nanos = UInt64(max(0, now.tv_sec)) &* 1_000_000_000 &+ UInt64(max(0, now.tv_nsec))
        lock.lock()
        defer { lock.unlock() }
        last = max(nanos, last &+ 1)
        return last
    }
}

/// A peer record in an envelope whose signature was verified and whose key is the record's peer:
/// the only way to get one is `init(opening:)` (received bytes) or `seal(_:with:)` (our own), so a
/// value of this type is proof that the addresses are certified by the peer itself.
public struct SignedPeerRecord: Sendable, Hashable {
    /// The verified envelope.
    public let envelope: SignedEnvelope
    /// The record it carries.
    public let record: PeerRecord
    /// The envelope's bytes, ready to pass on to other peers (identify, gossipsub peer exchange).
    public let bytes: [UInt8]

    /// The peer the record is about (the envelope's signer).
    public var peerID: PeerID { record.peerID }
    /// The record's sequence number.
    public var seq: UInt64 { record.seq }
    /// The certified addresses.
    public var addresses: [Multiaddr] { record.addresses }

    /// Opens received envelope bytes: verifies the envelope for domain `libp2p-peer-record` and
    /// payload type 03 01, decodes the record, and checks that the envelope's key is the record's
    /// peer (`.peerMismatch` otherwise; RFC 0003 "Certification / Verification"). Throws the
    /// `RecordError` of the first check that fails; the payload is decoded only after the
    /// signature verified.
    public init(opening bytes: [UInt8], limits: SignedEnvelope.Limits = .defaults) throws(RecordError) {
        let envelope = try SignedEnvelope.open(
            bytes, domain: PeerRecord.domain, payloadType: PeerRecord.payloadType, limits: limits)
        let record = try PeerRecord(decoding: envelope.payload)
        guard record.peerID.matches(envelope.publicKey) else {
            throw RecordError(
                .peerMismatch, "peer record of \(record.peerID) signed by the key of \(envelope.signer)")
        }
        self.envelope = envelope
        self.record = record
        self.bytes = bytes
    }

    /// Signs `record` with `key`, which must be the key of `record.peerID` (`.peerMismatch`
    /// otherwise). Throws `.tooLarge` for a record over the envelope limits.
    public static func seal(_ record: PeerRecord, with key: PrivateKey) throws(RecordError) -> SignedPeerRecord {
        guard record.peerID.matches(key.publicKey) else {
            throw RecordError(.peerMismatch, "cannot sign a record of \(record.peerID) with the key of \(key.peerID)")
        }
        guard record.addresses.count <= PeerRecord.maxAddresses else {
            throw RecordError(.tooLarge, "peer record with \(record.addresses.count) addresses (limit \(PeerRecord.maxAddresses))")
        }
        if let long = record.addresses.first(where: { $0.bytes.count > PeerRecord.maxAddressBytes }) {
            throw RecordError(.tooLarge, "peer record address \(long) over \(PeerRecord.maxAddressBytes) bytes")
        }
        let envelope = try SignedEnvelope.seal(
            payload: record.encoded(), payloadType: PeerRecord.payloadType, domain: PeerRecord.domain, with: key)
        return SignedPeerRecord(envelope: envelope, record: record, bytes: envelope.marshal())
    }

    private init(envelope: SignedEnvelope, record: PeerRecord, bytes: [UInt8]) {
        self.envelope = envelope
        self.record = record
        self.bytes = bytes
    }
}
