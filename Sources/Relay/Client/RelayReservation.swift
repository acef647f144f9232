import Foundation
import Identity
import Multiformats

/// A slot a relay granted us: others reach us through ``circuitAddresses`` until ``expiration``
/// (the ``RelayClient`` refreshes it before then while it keeps the reservation).
public struct RelayReservation: Sendable, Hashable {
    /// The relay.
    public var relay: PeerID
    /// When the reservation ends (the relay's clock, UNIX seconds).
    public var expiration: Date
    /// Our addresses through the relay: each relay address followed by `/p2p-circuit` (append
    /// `/p2p/<our peer ID>` to hand one out; ``RelayClient/circuitAddresses`` does).
    public var circuitAddresses: [Multiaddr]
    /// The limits the relay applies to each relayed connection (nil: none announced).
    public var limit: RelayLimit?
    /// The relay's verified voucher, if it sent one.
    public var voucher: ReservationVoucher?

    /// A reservation.
    public init(
        relay: PeerID, expiration: Date, circuitAddresses: [Multiaddr], limit: RelayLimit?, voucher: ReservationVoucher?
    ) {
        self.relay = relay
        self.expiration = expiration
        self.circuitAddresses = circuitAddresses
        self.limit = limit
        self.voucher = voucher
    }
}
