import Identity
import Relay
import Testing

/// The relay's reservation and circuit book, without sockets.
struct ReservationTableTests {
    let start = ContinuousClock.now
    func peer(_ n: Int) -> PeerID { PeerID(publicKey: PrivateKey.ed25519(seed: 100 + UInt64(n)).publicKey) }

    @Test func reservationsExpireAndRenew() {
        var table = ReservationTable()
        #expect(table.reserve(peer(1), source: "10.0.0.1", until: start + .seconds(60), now: start) == nil)
        #expect(table.hasReservation(peer(1), now: start + .seconds(59)))
        #expect(!table.hasReservation(peer(1), now: start + .seconds(60)))
        // A renewal moves the expiry.
        #expect(table.reserve(peer(1), source: "10.0.0.1", until: start + .seconds(120), now: start + .seconds(30)) == nil)
        #expect(table.hasReservation(peer(1), now: start + .seconds(100)))
        table.expire(now: start + .seconds(121))
        #expect(table.reservationCount == 0)
    }

    @Test func oneSourceCannotTakeEverySlot() {
        var limits = ReservationTable.Limits()
        limits.maxReservations = 10
        limits.maxReservationsPerSource = 3
        var table = ReservationTable(limits: limits)
        let until = start + .seconds(3600)
        for n in 0..<3 { #expect(table.reserve(peer(n), source: "127.0.0.2", until: until, now: start) == nil) }
        // The attacker's fourth identity from the same address is refused…
        #expect(table.reserve(peer(3), source: "127.0.0.2", until: until, now: start) == .reservationRefused)
        // …while an honest peer from elsewhere still gets a slot, and renewals still work.
        #expect(table.reserve(peer(4), source: "127.0.0.1", until: until, now: start) == nil)
        #expect(table.reserve(peer(0), source: "127.0.0.2", until: until, now: start) == nil)
        for n in 5..<11 { _ = table.reserve(peer(n), source: "10.1.\(n).1", until: until, now: start) }
        #expect(table.reservationCount == 10)
        #expect(table.reserve(peer(20), source: "10.9.9.9", until: until, now: start) == .reservationRefused)
    }

    @Test func circuitsNeedAReservationAndAreBounded() {
        var limits = ReservationTable.Limits()
        limits.maxCircuitsPerPeer = 2
        var table = ReservationTable(limits: limits)
        #expect(table.openCircuit(from: peer(1), to: peer(2), now: start) == .noReservation)
        _ = table.reserve(peer(2), source: nil, until: start + .seconds(60), now: start)
        #expect(table.openCircuit(from: peer(1), to: peer(2), now: start) == nil)
        #expect(table.openCircuit(from: peer(3), to: peer(2), now: start) == nil)
        #expect(table.openCircuit(from: peer(4), to: peer(2), now: start) == .resourceLimitExceeded)
        table.closeCircuit(from: peer(1), to: peer(2))
        #expect(table.circuits(of: peer(2)) == 1)
        #expect(table.openCircuit(from: peer(4), to: peer(2), now: start) == nil)
        #expect(table.circuitCount == 2)
        // An expired reservation admits no new circuit.
        #expect(table.openCircuit(from: peer(5), to: peer(2), now: start + .seconds(61)) == .noReservation)
    }
}
