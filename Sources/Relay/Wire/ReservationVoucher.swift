import Identity
import Multiformats

/// A reservation voucher (circuit v2 spec, "Reservation Vouchers"): the relay's signed statement
/// that it serves `peer` until `expiration`. Sent as a signed envelope with domain
/// `libp2p-relay-rsvp` and payload type `0x0302` (the two bytes 03 02, as go-libp2p writes the
/// multicodec); the payload is `Voucher { relay 1, peer 2, expiration 3 }` in field order.
/// Vouchers are advisory today: nobody requires one to dial a circuit address.
public struct ReservationVoucher: Sendable, Hashable {
    /// The envelope domain of vouchers.
    public static let domain = "libp2p-relay-rsvp"
    /// The envelope payload type of vouchers.
    public static let payloadType: [UInt8] = [0x03, 0x02]

    /// The relay that issued it.
    public var relay: PeerID
    /// The peer holding the reservation.
    public var peer: PeerID
    /// When the reservation ends, UNIX seconds (UTC).
    public var expiration: UInt64

    /// A voucher.
    public init(relay: PeerID, peer: PeerID, expiration: UInt64) {
        self.relay = relay
        self.peer = peer
        self.expiration = expiration
    }

    /// The payload bytes (canonical: fields in order).
    public func encoded() -> [UInt8] {
        var w = ProtobufWriter()
        w.writeBytesField(1, relay.bytes)
        w.writeBytesField(2, peer.bytes)
        w.writeVarintField(3, expiration)
        return w.bytes
    }

    /// The voucher signed by the relay's key, as envelope bytes.
    public func sealed(with key: PrivateKey) throws(RelayError) -> [UInt8] {
        do {
            return try SignedEnvelope.seal(
                payload: encoded(), payloadType: Self.payloadType, domain: Self.domain, with: key
            ).marshal()
        } catch {
            throw RelayError(.invalidVoucher, "signing the voucher failed", cause: error)
        }
    }

    /// Opens envelope bytes: verifies the signature, and that the relay field names the signer.
    public static func open(_ bytes: [UInt8]) throws(RelayError) -> ReservationVoucher {
        let envelope: SignedEnvelope
        do {
            envelope = try SignedEnvelope.open(bytes, domain: domain, payloadType: payloadType)
        } catch {
            throw RelayError(.invalidVoucher, "the voucher's envelope does not verify", cause: error)
        }
        var relay: [UInt8]?
        var peer: [UInt8]?
        var expiration: UInt64?
        try RelayWire.forEachField(envelope.payload, "voucher") { (field, value) throws(RelayError) in
            switch field {
            case 1: relay = try RelayWire.bytes(value, "voucher relay")
            case 2: peer = try RelayWire.bytes(value, "voucher peer")
            case 3: expiration = try RelayWire.varint(value, "voucher expiration")
            default: break
            }
        }
        guard let relay, let peer, let expiration,
              let relayID = try? PeerID(bytes: relay), let peerID = try? PeerID(bytes: peer)
        else { throw RelayError(.invalidVoucher, "the voucher lacks its relay, peer or expiration") }
        guard relayID == envelope.signer else {
            throw RelayError(.invalidVoucher, "the voucher names relay \(relayID) but \(envelope.signer) signed it")
        }
        return ReservationVoucher(relay: relayID, peer: peerID, expiration: expiration)
    }
}
