import Foundation
import NIOCore
import PointSub
import TestSupport
import Testing

/// DCUtR (`/libp2p/dcutr`, hole punching) interop with py-libp2p 0.8.1's `DCUtRProtocol`
/// (through `Interop/dcutr_peer.py`) over TCP on 127.0.0.1, both ways, through our
/// `RelayService` (py reserves on it and dials circuit addresses with its `CircuitV2Transport`):
/// our node starts the hole punch with py, py starts it with our node, and py sends our node bad
/// DCUtR messages.
///
/// On loopback there is no NAT and no real simultaneous open: the first of the two dials (both
/// from the dialer's TCP listen port, SO_REUSEPORT) reaches the other's listener, and the other
/// dial finds that address pair taken. Whoever accepted runs security as the responder, so the
/// dialer must run it as the initiator. The direct connection runs between the two listen
/// ports, which a plain dial (from an ephemeral port) would not: the tests check that. Our `DCUtRService` runs with `allowPrivateAddresses` (loopback) and without
/// `dialDirectlyFirst` (else it simply dials py's 127.0.0.1 address).
///
/// Quirks of py 0.8.1 the tests depend on:
/// - py's `DCUtRProtocol` dials loopback addresses as they come (no address filter); it tries a
///   plain direct dial first (`_try_unilateral_upgrade`), and its `_auto_drive_loop` starts a
///   hole punch every 2 s toward every peer it has only relayed connections to, also peers it
///   dialed itself. dcutr_peer.py switches both off (on loopback they make every hole punch a
///   plain dial); py starts only on the `punch` command.
/// - py advertises in CONNECT the IP its observers saw with its TCP listen port
///   (`_get_observed_addrs`), and binds its hole-punch dials to that port.
/// - py's hole-punch dials take the spec's roles, as ours do: the side that got SYNC runs
///   security as the initiator, the starting side as the responder (`dial_addr_as_responder`).
///   On loopback (no NAT) the starting side's dial lands on the other's listener, where both
///   ends are responders and that connection stalls; the other dial makes the direct
///   connection. dcutr_peer.py lets py hold more than one connection per peer for it.
/// - py answers one round of CONNECT and SYNC per stream and then closes it (the spec retries
///   on the same stream); our retries open a new stream when the peer ended the old one.
/// - py closes the relayed connection 60 s after a hole punch it took part in (past these tests).
@Suite(.serialized, .timeLimit(.minutes(1)))
struct PyDCUtRInteropTests {
    static var script: URL { ChildProcess.repoRoot.appendingPathComponent("Interop/dcutr_peer.py") }
    static let echoSize = 64 * 1024

    /// Starts dcutr_peer.py with `seed`, runs `body`, and stops it.
    static func withPy<T: Sendable>(seed: UInt64, _ body: (PyRelayPeer) async throws -> T) async throws -> T {
        try await PyRelayPeer.with(script: script, ["--seed", "\(seed)", "--lifetime", "120", "-v"], body)
    }

    /// Our DCUtR settings for loopback.
    static func dcutr() -> DCUtRService {
        var configuration = DCUtRService.Configuration()
        configuration.allowPrivateAddresses = true
        configuration.dialDirectlyFirst = false
        // No NAT on loopback: when we start, py's dial (Python, after reading SYNC) must reach
        // our listener before ours reaches py's (see the quirks above).
        configuration.minimumDialDelay = .milliseconds(100)
        return DCUtRService(configuration: configuration)
    }

    /// A relay host (our `RelayService`), its TCP address, run around `body`.
    static func withRelay<T: Sendable>(seed: UInt64, _ body: (Multiaddr) async throws -> T) async throws -> T {
        let relay = RelayService()
        return try await RelayInteropTests.withRelayHost(seed: seed, services: [relay]) { r in
            try await body(try PyRelayInteropTests.tcpAddress(r))
        }
    }

    /// The TCP port of an address `/ip4/…/tcp/P[/p2p/…]`.
    static func tcpPort(_ address: Multiaddr) -> UInt16? {
        for case .tcp(let port) in address.components { return port }
        return nil
    }

    /// `host`'s direct (not relayed) connections to `peer`.
    static func direct(_ host: P2PHost, to peer: PeerID) -> [Connection] {
        host.connections(to: peer).filter { !$0.isLimited && !$0.isClosed }
    }

    /// Checks that the direct connection of `host` to py runs between the two TCP listen ports
    /// (as hole-punch dials do, not plain ones), and that a full-duplex echo runs over it.
    static func checkDirect(_ host: P2PHost, py: PyRelayPeer, seed: UInt64) async throws {
        let connection = try #require(direct(host, to: py.peerID).first, "no direct connection to py")
        #expect(tcpPort(connection.remoteAddress) == tcpPort(py.address), "remote \(connection.remoteAddress), py \(py.address)")
        let ours = host.listenAddresses.compactMap(tcpPort)
        #expect(connection.localAddress.flatMap(tcpPort).map(ours.contains) == true,
                "local \(String(describing: connection.localAddress)), listening on \(ours)")
        let stream = try await connection.newStream(protocols: [EchoService.protocolID])
        let payload = GoInteropTests.payload(echoSize, seed: seed)
        let back = try await withDeadline(.seconds(15), "echo over the direct connection") {
            try await echoFullDuplex(stream, payload)
        }
        #expect(back == payload)
        await stream.close()
        // py sees it too (py's `_verify_direct_connection`).
        let seen = try await py.command("direct", host.peerID.b58String)
        #expect(seen["direct"] as? Bool == true, "py: \(seen)")
    }

    /// Waits until py lists a relayed connection to `peer` (py's stop handler registers the
    /// connection after our side's upgrade finished) and returns py's connections to it.
    static func pyRelayed(_ py: PyRelayPeer, to peer: PeerID) async throws {
        try await PyRelayInteropTests.until("py's relayed connection to \(peer)") {
            let seen = try await py.command("connections", peer.b58String)["addrs"] as? [[String]] ?? []
            return seen.contains { $0.contains { $0.contains("/p2p-circuit") } }
        }
    }

    /// `.direct` (a hole punch), not `.dialedDirectly` or a failure.
    static func isHolePunch(_ outcome: HolePunchOutcome?) -> Bool {
        if case .direct = outcome?.result { return true }
        return false
    }

    // MARK: - Our node starts

    /// Our A reserves on our relay; py dials A's circuit address; A gets the relayed connection
    /// and starts DCUtR (CONNECT, RTT, SYNC) with py, which answers: a direct connection between
    /// the listen ports results, A records a hole punch, and an echo runs over it.
    @Test func swiftStartsHolePunchWithPy() async throws {
        try await Self.withRelay(seed: 601) { relayAddress in
            let dcutr = Self.dcutr()
            let aClient = RelayClient()
            try await RelayInteropTests.withRelayHost(seed: 602, services: [dcutr], client: aClient) { a in
                try await aClient.reserve(on: relayAddress, deadline: .after(.seconds(20)))
                let circuit = try #require(aClient.circuitAddresses.first)
                try await Self.withPy(seed: 603) { py in
                    let dialed = try await py.command("dial", circuit.description)
                    #expect(dialed["peer"] as? String == a.peerID.b58String)
                    try await PyRelayInteropTests.until("A's hole punch with py", timeout: .seconds(30)) {
                        dcutr.lastOutcome(for: py.peerID) != nil
                    }
                    let outcome = try #require(dcutr.lastOutcome(for: py.peerID))
                    #expect(Self.isHolePunch(outcome), "A's outcome: \(outcome)")
                    #expect((1...3).contains(outcome.attempts), "\(outcome)")
                    #expect(dcutr.counters.successes == 1)
                    #expect(dcutr.counters.failures.isEmpty, "\(dcutr.counters.failures)")
                    #expect(a.connections(to: py.peerID).contains { $0.isLimited && $0.direction == .inbound },
                            "the relayed connection stays as a fallback")
                    try await Self.checkDirect(a, py: py, seed: 61)
                    // py answered; it started nothing itself.
                    let stats = try await py.command("dcutr-stats")
                    #expect((stats["attempts"] as? [String: Any])?.isEmpty == true, "py: \(stats)")
                }
            }
        }
    }

    // MARK: - py starts

    /// py reserves on our relay; our B dials py's circuit address; py starts DCUtR with B and our
    /// `DCUtRService` answers (CONNECT, SYNC, one attempt); B's dial on SYNC, as the client,
    /// gives a direct connection between the listen ports, B records the hole punch, and an echo
    /// runs over it.
    @Test func pyStartsHolePunchWithSwift() async throws {
        try await Self.withRelay(seed: 611) { relayAddress in
            try await Self.withPy(seed: 613) { py in
                let reserved = try await py.command("reserve", relayAddress.description)
                #expect(reserved["reserved"] as? Bool == true)
                let dcutr = Self.dcutr()
                try await RelayInteropTests.withRelayHost(seed: 612, services: [dcutr], client: RelayClient()) { b in
                    let circuit = relayAddress.appending(.p2pCircuit).appending(peerID: py.peerID)
                    let relayed = try await b.connect(to: circuit)
                    #expect(relayed.isLimited && relayed.direction == .outbound)
                    #expect(Self.direct(b, to: py.peerID).isEmpty)
                    try await Self.pyRelayed(py, to: b.peerID)

                    let punched = try await py.command("punch", b.peerID.b58String)
                    // py returns once its own check decided; ours may finish a moment later.
                    try await PyRelayInteropTests.until("B's outcome") { dcutr.lastOutcome(for: py.peerID) != nil }
                    let outcome = try #require(dcutr.lastOutcome(for: py.peerID))
                    // The exchange itself works: one round of CONNECT and SYNC.
                    #expect(outcome.attempts == 1, "\(outcome)")
                    #expect(dcutr.counters.attempts == 1)
                    #expect(relayed.isLimited && !relayed.isClosed)
                    #expect(punched["result"] as? Bool == true, "py: \(punched)")
                    #expect(punched["direct"] as? Bool == true, "py: \(punched)")
                    #expect(Self.isHolePunch(outcome), "B's outcome: \(outcome)")
                    #expect(dcutr.counters.successes == 1)
                    try await Self.checkDirect(b, py: py, seed: 62)
                }
            }
        }
    }

    // MARK: - Bad input

    /// py sends our B bad DCUtR messages on raw streams over the relayed connection: bytes that
    /// are no protobuf, an unknown type, SYNC before CONNECT, a length prefix over 4 KiB, and a
    /// CONNECT followed by garbage where SYNC belongs. Each ends our side of the stream and
    /// fails that attempt with a typed reason (B's
    /// `counters.failures`, `lastOutcome`); the relayed connection then still carries pings both
    /// ways, and an honest hole punch on it (B starts, py answers) gives a direct connection.
    @Test func pyBadDCUtRMessagesFailOneAttemptOnly() async throws {
        try await Self.withRelay(seed: 621) { relayAddress in
            try await Self.withPy(seed: 623) { py in
                _ = try await py.command("reserve", relayAddress.description)
                let dcutr = Self.dcutr()
                try await RelayInteropTests.withRelayHost(seed: 622, services: [dcutr], client: RelayClient()) { b in
                    let circuit = relayAddress.appending(.p2pCircuit).appending(peerID: py.peerID)
                    let relayed = try await b.connect(to: circuit)
                    #expect(relayed.isLimited)
                    try await Self.pyRelayed(py, to: b.peerID)
                    // (what, the frames py writes (a reply read between two), expected reasons)
                    let cases: [(String, [String], Set<String>)] = [
                        ("no protobuf", ["04ffffffff"], ["malformedMessage"]),
                        ("unknown type 9", ["020809"], ["malformedMessage"]),
                        ("SYNC before CONNECT", ["0308ac02"], ["malformedMessage"]),
                        // uvarint 5000 > 4096: our stream reader refuses it before the body.
                        ("a 5000-byte message", ["8827" + String(repeating: "00", count: 16)], ["limitExceeded"]),
                    ]
                    for (index, (what, frames, reasons)) in cases.enumerated() {
                        try await Self.sendRaw(py, to: b, frames, what)
                        try await PyRelayInteropTests.until("\(what): B's failure count") {
                            dcutr.counters.failures.values.reduce(0, +) > index
                        }
                        let outcome = dcutr.lastOutcome(for: py.peerID)
                        guard case .failure(let reason) = outcome?.result else {
                            Issue.record("\(what): B's outcome \(String(describing: outcome))")
                            continue
                        }
                        #expect(reasons.contains(reason), "\(what): reason \(reason)")
                        #expect(outcome?.attempts == 0, "\(what): \(String(describing: outcome))")
                    }
                    #expect(dcutr.counters.failures.values.reduce(0, +) == cases.count, "\(dcutr.counters.failures)")

                    // CONNECT (no addresses), our CONNECT back, then garbage where SYNC belongs: our
                    // side resets the stream and records the failed attempt.
                    try await Self.sendRaw(py, to: b, ["020864", "04ffffffff"], "CONNECT, then garbage for SYNC")
                    try await PyRelayInteropTests.until("the last failure counted") {
                        dcutr.counters.failures.values.reduce(0, +) > cases.count
                    }
                    if case .failure(let reason) = dcutr.lastOutcome(for: py.peerID)?.result {
                        #expect(reason == "malformedMessage")
                    } else {
                        Issue.record("CONNECT, then garbage: \(String(describing: dcutr.lastOutcome(for: py.peerID)))")
                    }
                    #expect(dcutr.counters.successes == 0)

                    // The relayed connection still works, both ways, and is the only one.
                    #expect(!relayed.isClosed)
                    #expect(Self.direct(b, to: py.peerID).isEmpty)
                    let rtts = try await PingService.ping(host: b, peer: py.peerID, count: 2)
                    #expect(rtts.count == 2)
                    let pyPing = try await py.command("ping", b.peerID.b58String, "2")
                    #expect((pyPing["rtts"] as? [Any])?.count == 2)

                    // An honest hole punch on the same relayed connection works. B starts it (its
                    // service starts only on inbound relayed connections: ask it), py answers.
                    let outcome = await dcutr.initiate(on: relayed)
                    #expect(Self.isHolePunch(outcome), "B's outcome: \(outcome)")
                    #expect(dcutr.counters.successes == 1)
                    try await Self.checkDirect(b, py: py, seed: 63)
                }
            }
        }
    }

    /// py writes `frames` on a raw DCUtR stream to `b` (see dcutr_peer.py `dcutr-raw`); our side
    /// must end the stream (FIN or reset) within py's 5 s.
    static func sendRaw(_ py: PyRelayPeer, to b: P2PHost, _ frames: [String], _ what: String) async throws {
        let answer = try await py.attempt("dcutr-raw", [b.peerID.b58String] + frames)
        #expect(answer["ok"] as? Bool == true, "\(what): py: \(answer)")
        #expect(["eof", "reset"].contains(answer["end"] as? String), "\(what): our stream stayed open: \(answer)")
        if frames.count > 1 {
            let replies = answer["replies"] as? [[String: Any]] ?? []
            #expect(replies.first?["type"] as? Int == 100, "\(what): our answer to CONNECT: \(answer)")
        }
    }
}
