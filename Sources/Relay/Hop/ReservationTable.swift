import Identity

/// The relay's book of reservations and relayed connections (circuits), with its limits: a value
/// type that decides and does no I/O. Times are the caller's clock.
///
/// A reservation is valid until its expiry while the peer stays connected (the service removes
/// it when the peer disconnects). Limits follow go-libp2p's relay resources: reservations in
/// total and per source address (an attacker's many peer IDs from one IP count as one source),
/// circuits per peer (as initiator or target) and in total.
public struct ReservationTable: Sendable {
    /// The limits.
    public struct Limits: Sendable, Hashable {
        /// Reservations held at once.
        public var maxReservations = 128
        /// Reservations held at once by peers connected from one source address (IP).
        public var maxReservationsPerSource = 8
        /// Relayed connections one peer takes part in at once (as initiator or target).
        public var maxCircuitsPerPeer = 16
        /// Relayed connections at once.
        public var maxCircuits = 1024

        /// go-libp2p's defaults (1024 circuits in total is ours: go has none).
        public init() {}
    }

    struct Reservation {
        var expiry: ContinuousClock.Instant
        var source: String?
    }

    /// The limits.
    public let limits: Limits
    private var reservations: [PeerID: Reservation] = [:]
    private var circuitsPerPeer: [PeerID: Int] = [:]
    /// Relayed connections open now.
    public private(set) var circuitCount = 0

    /// An empty table.
    public init(limits: Limits = Limits()) {
        self.limits = limits
    }

    /// Reservations held now (expired ones are gone after `expire(now:)`).
    public var reservationCount: Int { reservations.count }

    /// Makes or renews `peer`'s reservation until `expiry`. A renewal always succeeds (it takes
    /// no new slot); a new one needs a free slot in total and for its source. Returns nil on
    /// success, else the status to answer with.
    public mutating func reserve(
        _ peer: PeerID, source: String?, until expiry: ContinuousClock.Instant, now: ContinuousClock.Instant
    ) -> RelayStatus? {
        expire(now: now)
        if reservations[peer] != nil {
            reservations[peer] = Reservation(expiry: expiry, source: source)
            return nil
        }
        guard reservations.count < limits.maxReservations else { return .reservationRefused }
        if let source, reservations.values.lazy.filter({ $0.source == source }).count >= limits.maxReservationsPerSource {
            return .reservationRefused
        }
        reservations[peer] = Reservation(expiry: expiry, source: source)
        return nil
    }

    /// Whether `peer` holds a reservation that has not expired.
    public func hasReservation(_ peer: PeerID, now: ContinuousClock.Instant) -> Bool {
        guard let reservation = reservations[peer] else { return false }
        return now < reservation.expiry
    }

    /// Drops `peer`'s reservation (it disconnected, or asked again and was refused).
    public mutating func remove(_ peer: PeerID) {
        reservations[peer] = nil
    }

    /// Drops the expired reservations.
    public mutating func expire(now: ContinuousClock.Instant) {
        reservations = reservations.filter { now < $0.value.expiry }
    }

    /// Opens a circuit from `initiator` to `target` if the target holds a reservation and no
    /// circuit limit is reached. Returns nil on success (the caller must `closeCircuit` later),
    /// else the status to answer the initiator with.
    public mutating func openCircuit(from initiator: PeerID, to target: PeerID, now: ContinuousClock.Instant) -> RelayStatus? {
        guard hasReservation(target, now: now) else { return .noReservation }
        guard circuitCount < limits.maxCircuits,
              circuitsPerPeer[initiator, default: 0] < limits.maxCircuitsPerPeer,
              circuitsPerPeer[target, default: 0] < limits.maxCircuitsPerPeer
        else { return .resourceLimitExceeded }
        circuitCount += 1
        circuitsPerPeer[initiator, default: 0] += 1
        circuitsPerPeer[target, default: 0] += 1
        return nil
    }

    /// Ends a circuit `openCircuit` opened.
    public mutating func closeCircuit(from initiator: PeerID, to target: PeerID) {
        circuitCount = max(0, circuitCount - 1)
        for peer in [initiator, target] {
            let left = circuitsPerPeer[peer, default: 0] - 1
            circuitsPerPeer[peer] = left > 0 ? left : nil
        }
    }

    /// Relayed connections `peer` takes part in now.
    public func circuits(of peer: PeerID) -> Int { circuitsPerPeer[peer, default: 0] }
}
