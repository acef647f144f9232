import Foundation
import NIOConcurrencyHelpers
import NIOCore
import PointSub
import TestSupport
import Testing

/// A long-running `Interop/relay_peer.py`: py-libp2p 0.8.1's Circuit Relay v2 (`CircuitV2Protocol`
/// as a hop relay, or as a client with its `CircuitV2Transport`), driven by numbered commands on
/// stdin and answered by one JSON line each. Also drives other Interop peers of the same command
/// protocol (`start(script:_:)`: autonat_peer.py).
final class PyRelayPeer: Sendable {
    enum Role: String { case relay, client }

    static var script: URL { ChildProcess.repoRoot.appendingPathComponent("Interop/relay_peer.py") }

    let running: ChildProcess.Running
    /// Its full address, `/ip4/127.0.0.1/tcp/P/p2p/ID`.
    let address: Multiaddr
    let peerID: PeerID
    /// The script's file name, for messages.
    let name: String
    private let next = NIOLockedValueBox(0)

    private init(running: ChildProcess.Running, name: String, address: Multiaddr, peerID: PeerID) {
        self.running = running
        self.name = name
        self.address = address
        self.peerID = peerID
    }

    /// Starts `relay_peer.py --seed seed --role role extra…` and waits (60 s at most) for its address.
    static func start(seed: UInt64, role: Role, _ extra: [String] = []) async throws -> PyRelayPeer {
        try await start(script: script, ["--seed", "\(seed)", "--role", role.rawValue, "--lifetime", "170"] + extra)
    }

    /// Starts `script` with `arguments`: relay_peer.py, or another Interop peer speaking the same
    /// command protocol (`LISTEN <address>` first, then numbered commands each answered by a JSON
    /// line), such as autonat_peer.py. Waits (60 s at most) for its address.
    static func start(script: URL, _ arguments: [String]) async throws -> PyRelayPeer {
        try PyPeer.checkInstalled()
        let running = try ChildProcess.Running(PyPeer.python, [script.path] + arguments, captureStderr: true)
        do {
            let line = try await running.firstLine(timeout: .seconds(60)) { $0.hasPrefix("LISTEN ") }
            let address = try Multiaddr(String(line.dropFirst("LISTEN ".count)))
            guard let peerID = address.peerID else { throw ChildProcess.Failure("no peer ID in \(line)") }
            return PyRelayPeer(running: running, name: script.lastPathComponent, address: address, peerID: peerID)
        } catch {
            _ = try? await running.stop(signal: SIGKILL)
            throw ChildProcess.Failure("\(script.lastPathComponent) did not start: \(error)\n\(running.errorLines.suffix(30).joined(separator: "\n"))")
        }
    }

    /// Runs `<n> word args…` and returns its answer (every command is bounded to 30 s inside
    /// py; we wait 45 s). Throws with py's error when it answered `"ok":false`.
    func command(_ word: String, _ arguments: String...) async throws -> [String: Any] {
        let answer = try await attempt(word, arguments)
        guard answer["ok"] as? Bool == true else {
            throw ChildProcess.Failure("\(name) \(word) failed: \(answer)\n\(stderrTail)")
        }
        return answer
    }

    /// Runs `<n> word args…` and returns its answer, `"ok":false` included.
    func attempt(_ word: String, _ arguments: [String]) async throws -> [String: Any] {
        let n = next.withLockedValue { value -> Int in
            value += 1
            return value
        }
        try running.send(([String(n), word] + arguments).joined(separator: " "))
        func parse(_ line: String) -> [String: Any]? {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  object["n"] as? String == String(n)
            else { return nil }
            return object
        }
        let line: String
        do {
            line = try await running.firstLine(timeout: .seconds(45)) { parse($0) != nil }
        } catch {
            throw ChildProcess.Failure("\(name) did not answer \(word): \(error)\n\(stderrTail)")
        }
        return parse(line)!
    }

    var stderrTail: String { running.errorLines.suffix(30).joined(separator: "\n") }

    /// Closes its stdin (it exits 0 on EOF), killing it if it does not.
    func stop() async {
        if (try? await running.stop(timeout: 10)) == nil { _ = try? await running.stop(signal: SIGKILL, timeout: 5) }
    }

    /// Runs `body` with a started peer and stops it afterwards, whatever happens.
    static func with<T: Sendable>(
        seed: UInt64, role: Role, _ extra: [String] = [], _ body: (PyRelayPeer) async throws -> T
    ) async throws -> T {
        try await with(try await start(seed: seed, role: role, extra), body)
    }

    /// Runs `body` with `script` started (see `start(script:_:)`) and stops it afterwards.
    static func with<T: Sendable>(
        script: URL, _ arguments: [String], _ body: (PyRelayPeer) async throws -> T
    ) async throws -> T {
        try await with(try await start(script: script, arguments), body)
    }

    private static func with<T: Sendable>(_ peer: PyRelayPeer, _ body: (PyRelayPeer) async throws -> T) async throws -> T {
        do {
            let result = try await body(peer)
            await peer.stop()
            return result
        } catch {
            let tail = peer.stderrTail
            await peer.stop()
            throw ChildProcess.Failure("\(error)\n--- \(peer.name) stderr ---\n\(tail)")
        }
    }
}

/// Circuit Relay v2 interop with py-libp2p 0.8.1 (`libp2p.relay.circuit_v2`, through
/// `Interop/relay_peer.py`) over TCP on 127.0.0.1, both ways: py as the relay for our nodes,
/// our `RelayService` as the relay for py, and bad hop requests to either relay.
///
/// Quirks of py 0.8.1 the tests depend on:
/// - py's relay signs a voucher (domain `libp2p-relay-rsvp`, payload type 03 02, as go) and
///   announces its `RelayLimits` (duration, data) with the reservation and the CONNECT answer;
///   its data limit counts both directions of a circuit together (go counts each direction).
/// - py's relay keeps reading hop messages on a stream after answering one; a message with an
///   unknown or unexpected type (also `STATUS`) gets `MALFORMED_MESSAGE`, not the spec's
///   `UNEXPECTED_MESSAGE`, and the stream stays open.
/// - py's `RESERVE` carries the `peer` field (its own ID); its `CONNECT` carries the
///   reservation it got from that relay (field 3), which our relay ignores.
/// - py's `CircuitV2Transport.dial` (its default `RelayConfig`, role CLIENT) reserves on the
///   relay first on one hop stream, then sends `CONNECT` on a second.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct PyRelayInteropTests {
    static let echoSize = 256 * 1024

    /// `host`'s TCP address ending in `/p2p/<id>`.
    static func tcpAddress(_ host: P2PHost) throws -> Multiaddr {
        let address = try #require(host.addresses.first { !$0.isCircuit && $0.description.contains("/tcp/") })
        return address.peerID == nil ? address.appending(peerID: host.peerID) : address
    }

    static func until(_ what: String, timeout: Duration = .seconds(15), _ condition: () async throws -> Bool) async throws {
        try await GoInteropTests.until(what, timeout: timeout, condition)
    }

    /// Reads one length-prefixed hop message from `stream` (10 s at most).
    static func readHop(_ stream: P2PStream) async throws -> HopMessage {
        let frame = try await withDeadline(.seconds(10), "hop answer") {
            try await stream.readLengthPrefixed(maxLength: RelayWire.maxMessageSize)
        }
        return try HopMessage(decoding: try #require(frame).readableBytesView)
    }

    // MARK: - py as the relay

    /// Our A reserves on py's relay (reservation, voucher and limits as py sent them); our B dials
    /// A's circuit address through py: Noise and Yamux run over py's relayed streams, and a
    /// 256 KiB echo runs full duplex over the circuit, plus ping.
    @Test func swiftPeersRelayThroughPy() async throws {
        try await PyRelayPeer.with(seed: 301, role: .relay, ["--limit-duration", "600", "--limit-data", "\(8 << 20)"]) { py in
            let aClient = RelayClient()
            try await RelayInteropTests.withRelayHost(seed: 401, client: aClient) { a in
                try await RelayInteropTests.withRelayHost(seed: 402, client: RelayClient()) { b in
                    let reservation = try await aClient.reserve(on: py.address, deadline: .after(.seconds(20)))
                    #expect(reservation.relay == py.peerID)
                    let left = reservation.expiration.timeIntervalSinceNow
                    #expect(left > 3500 && left <= 3601, "py's reservation lasts \(left) s, not its TTL of 3600 s")
                    #expect(reservation.limit == RelayLimit(duration: 600, data: 8 << 20))
                    let voucher = try #require(reservation.voucher, "py 0.8.1 signs a voucher")
                    #expect(voucher.relay == py.peerID)
                    #expect(voucher.peer == a.peerID)
                    #expect(voucher.expiration == UInt64(reservation.expiration.timeIntervalSince1970))
                    // py announces its own TCP address (with its /p2p/): our circuit address through it.
                    let circuit = Multiaddr(py.address.components + [.p2pCircuit]).appending(peerID: a.peerID)
                    #expect(aClient.circuitAddresses.contains(circuit), "circuit addresses \(aClient.circuitAddresses)")

                    // py's relay holds the reservation.
                    let held = try await py.command("reservations")["peers"] as? [String: Any] ?? [:]
                    #expect(Set(held.keys) == [a.peerID.b58String])

                    // B dials A through py.
                    let connection = try await b.connect(to: circuit)
                    #expect(connection.remotePeer == a.peerID)
                    #expect(connection.isLimited)
                    #expect(connection.direction == .outbound)
                    try await InteropTests.echo(b, peer: a.peerID, bytes: Self.echoSize, streams: 1)
                    let rtts = try await PingService.ping(host: b, peer: a.peerID, count: 3)
                    #expect(rtts.count == 3)
                    try await Self.until("A's inbound relayed connection from B") {
                        a.connections(to: b.peerID).contains { $0.isLimited && $0.direction == .inbound }
                    }
                    let onlyRelayed = b.connections(to: a.peerID).allSatisfy { $0.isLimited }
                    #expect(onlyRelayed, "B must know A only through py")
                    // While the circuit is open py counts it on A's reservation.
                    let active = try await py.command("reservations")["peers"] as? [String: [String: Any]] ?? [:]
                    #expect(active[a.peerID.b58String]?["active"] as? Int == 1)
                }
            }
        }
    }

    /// py's relay with a 64 KiB data limit: the limit reaches us with the reservation, a 256 KiB
    /// echo over the circuit breaks (py resets both streams at the limit), the relayed connection
    /// ends on our side, and a new circuit through py opens afterwards.
    @Test func pyRelayEndsACircuitAtItsDataLimit() async throws {
        try await PyRelayPeer.with(seed: 304, role: .relay, ["--limit-duration", "600", "--limit-data", "65536"]) { py in
            let aClient = RelayClient()
            try await RelayInteropTests.withRelayHost(seed: 407, client: aClient) { a in
                try await RelayInteropTests.withRelayHost(seed: 408, client: RelayClient()) { b in
                    let reservation = try await aClient.reserve(on: py.address, deadline: .after(.seconds(20)))
                    #expect(reservation.limit == RelayLimit(duration: 600, data: 65536))
                    let circuit = try #require(aClient.circuitAddresses.first)
                    _ = try await b.connect(to: circuit)
                    let failed: Bool
                    do {
                        try await withDeadline(.seconds(30), "echo past py's data limit") {
                            try await InteropTests.echo(b, peer: a.peerID, bytes: Self.echoSize, streams: 1)
                        }
                        failed = false
                    } catch {
                        failed = true
                    }
                    #expect(failed, "256 KiB passed a relay that allows 64 KiB")
                    try await Self.until("the relayed connection's end at B") {
                        b.connections(to: a.peerID).isEmpty
                    }
                    // py 0.8.1 does not give the circuit's slot back (its reservation's
                    // `active_connections` stays 1: the relay task of the other direction stays
                    // blocked reading a stream py itself reset), so that is not checked here; a
                    // reservation has 8 slots. A new circuit within the limit works. (Identify on
                    // the first circuit told B A's TCP address: forget it, or B rightly dials A
                    // directly.)
                    b.peerstore.removeAddresses(for: a.peerID)
                    let again = try await b.connect(to: circuit)
                    #expect(again.remotePeer == a.peerID)
                    #expect(again.isLimited)
                    let rtts = try await PingService.ping(host: b, peer: a.peerID, count: 2)
                    #expect(rtts.count == 2)
                }
            }
        }
    }

    /// KNOWN TO FAIL (3 runs in 4 here) until the circuit transport is fixed. When py's relay
    /// ends a circuit at its data limit it writes a hop STATUS (`RESOURCE_LIMIT_EXCEEDED`) into the
    /// relayed byte stream, then resets the streams. Our initiator B's hop stream is gone from its
    /// Yamux session to py within 0.1 s (that connection's `streamCount` drops to 0), yet B's
    /// relayed connection to A stays in `connections(to:)`: in some rounds still open
    /// (`isClosed` false, its streams open, the echo blocked until cancelled 30 s later), in others
    /// with its session closed (`isClosed` true, 0 streams) but never removed. So the channel
    /// StreamBridge made of the hop stream is apparently not closed when the hop stream fails.
    /// With our own RelayService (which resets without writing a STATUS) the same full-duplex
    /// scenario ends the connection in < 0.1 s every time. Up to 5 rounds (a fresh circuit each);
    /// in each, B's relayed connection must be gone within 8 s.
    @Test func relayedConnectionEndsPromptlyWhenPyResetsTheCircuit() async throws {
        try await PyRelayPeer.with(seed: 306, role: .relay, ["--limit-duration", "600", "--limit-data", "65536"]) { py in
            let aClient = RelayClient()
            try await RelayInteropTests.withRelayHost(seed: 414, client: aClient) { a in
                try await RelayInteropTests.withRelayHost(seed: 415, client: RelayClient()) { b in
                    try await aClient.reserve(on: py.address, deadline: .after(.seconds(20)))
                    let circuit = try #require(aClient.circuitAddresses.first)
                    for round in 1...5 {
                        // Identify on the last circuit told B A's TCP address: forget it, or B
                        // rightly dials A directly.
                        b.peerstore.removeAddresses(for: a.peerID)
                        let connection = try await b.connect(to: circuit)
                        #expect(connection.isLimited)
                        let echo = Task {
                            try await InteropTests.echo(b, peer: a.peerID, bytes: Self.echoSize, streams: 1)
                        }
                        let start = ContinuousClock.now
                        while !b.connections(to: a.peerID).isEmpty, ContinuousClock.now - start < .seconds(8) {
                            try await Task.sleep(for: .milliseconds(50))
                        }
                        let stuck = b.connections(to: a.peerID)
                        echo.cancel()
                        let echoed = await echo.result
                        #expect(throws: (any Error).self, "round \(round): 256 KiB passed a 64 KiB relay") { try echoed.get() }
                        guard stuck.isEmpty else {
                            let hop = b.connections(to: py.peerID).map(\.streamCount)
                            Issue.record("""
                                round \(round): B's relayed connection to A is still open 8 s after py's \
                                limit reset (closed: \(stuck.map(\.isClosed)), streams: \(stuck.map(\.streamCount)); \
                                streams of B's connection to py: \(hop))
                                """)
                            break
                        }
                    }
                }
            }
        }
    }

    /// py's relay refuses a CONNECT to a peer without a reservation (`NO_RESERVATION`), and our
    /// dial fails with that status.
    @Test func pyRelayRefusesAnUnreservedTarget() async throws {
        try await PyRelayPeer.with(seed: 302, role: .relay) { py in
            try await RelayInteropTests.withRelayHost(seed: 403, client: RelayClient()) { b in
                let nobody = PeerID(publicKey: PrivateKey.ed25519(seed: 404).publicKey)
                let circuit = Multiaddr(py.address.components + [.p2pCircuit]).appending(peerID: nobody)
                do {
                    _ = try await b.connect(to: circuit)
                    Issue.record("a circuit to a peer without a reservation opened")
                } catch let error as any CodedError {
                    let refusal = error.firstCause(as: RelayError.self)
                    #expect(refusal?.code == .refused, "\(error)")
                    #expect(refusal?.status == .noReservation, "\(error)")
                }
                #expect(b.connections(to: nobody).isEmpty)
            }
        }
    }

    /// Malformed and unexpected hop messages to py's relay get a STATUS `MALFORMED_MESSAGE`
    /// (py answers that also for a `STATUS`, where the spec says `UNEXPECTED_MESSAGE`), and py's
    /// relay then still serves a reservation and a circuit.
    @Test func pyRelayAnswersBadHopMessagesAndKeepsWorking() async throws {
        try await PyRelayPeer.with(seed: 303, role: .relay) { py in
            let aClient = RelayClient()
            try await RelayInteropTests.withRelayHost(seed: 405, client: aClient) { a in
                try await RelayInteropTests.withRelayHost(seed: 406, client: RelayClient()) { b in
                    let bad: [(String, [UInt8])] = [
                        ("an unknown type", [0x08, 0x09]),
                        ("bytes that are no protobuf", [0xff, 0xff, 0xff, 0xff]),
                        ("a STATUS from a client", HopMessage(type: .status, status: .ok).encoded()),
                    ]
                    for (what, request) in bad {
                        let stream = try await b.newStream(to: py.address, protocols: [RelayWire.hopProtocol])
                        try await stream.writeLengthPrefixed(request)
                        let answer = try await Self.readHop(stream)
                        #expect(answer.type == .status, "\(what)")
                        #expect(answer.status == .malformedMessage, "\(what): \(String(describing: answer.status))")
                        stream.reset()
                    }
                    // A length prefix beyond py's 64 KiB cap, then nothing: py refuses it too.
                    let big = try await b.newStream(to: py.address, protocols: [RelayWire.hopProtocol])
                    try await big.write(ByteBuffer(bytes: [0x80, 0x80, 0x08]))  // 131072
                    #expect(try await Self.readHop(big).status == .malformedMessage)
                    big.reset()

                    // Still a relay.
                    try await aClient.reserve(on: py.address, deadline: .after(.seconds(20)))
                    let circuit = try #require(aClient.circuitAddresses.first)
                    let connection = try await b.connect(to: circuit)
                    #expect(connection.remotePeer == a.peerID)
                    let rtts = try await PingService.ping(host: b, peer: a.peerID, count: 2)
                    #expect(rtts.count == 2)
                }
            }
        }
    }

    /// Our A keeps its reservation on py's relay (TTL 4 s): our client refreshes it before it
    /// expires, py extends it (and signs a new voucher), and B still reaches A through py after
    /// the first reservation's end.
    @Test func keptReservationOnPyIsRefreshed() async throws {
        try await PyRelayPeer.with(seed: 305, role: .relay, ["--ttl", "4"]) { py in
            let aClient = RelayClient()
            try await RelayInteropTests.withRelayHost(seed: 409, client: aClient) { a in
                let first = try await aClient.keepReservation(on: py.address, deadline: .after(.seconds(20)))
                #expect(first.expiration.timeIntervalSinceNow <= 4.5)
                try await Self.until("our refresh of the reservation on py", timeout: .seconds(20)) {
                    (aClient.reservations.first?.expiration ?? first.expiration) > first.expiration
                }
                let renewed = try #require(aClient.reservations.first)
                #expect(renewed.voucher?.expiration == UInt64(renewed.expiration.timeIntervalSince1970))
                let held = try await py.command("reservations")["peers"] as? [String: [String: Any]] ?? [:]
                let pyExpiry = try #require(held[a.peerID.b58String]?["expires"] as? Int)
                #expect(pyExpiry >= Int(renewed.expiration.timeIntervalSince1970))
                // Past the first reservation's end, py still relays to A.
                let wait = first.expiration.timeIntervalSinceNow + 0.5
                if wait > 0 { try await Task.sleep(for: .seconds(wait)) }
                try await RelayInteropTests.withRelayHost(seed: 413, client: RelayClient()) { b in
                    let circuit = try #require(aClient.circuitAddresses.first)
                    let connection = try await b.connect(to: circuit)
                    #expect(connection.remotePeer == a.peerID)
                    let rtts = try await PingService.ping(host: b, peer: a.peerID, count: 1)
                    #expect(rtts.count == 1)
                }
            }
        }
    }

    // MARK: - Our relay, py as its client

    /// py P reserves on our relay (py's `_make_reservation`; our voucher verifies with py's
    /// envelope code), our B reaches P through our relay's circuit address (py's stop handler
    /// upgrades it) and runs a 256 KiB echo and ping; then P dials our A (reserved too) through
    /// our relay with py's `CircuitV2Transport` and runs a 256 KiB echo to A.
    @Test func pyReservesOnSwiftRelayAndCircuitsRunBothWays() async throws {
        var relayConfiguration = RelayService.Configuration()
        relayConfiguration.circuitLimit = RelayLimit(duration: 120, data: 4 << 20)
        let relay = RelayService(configuration: relayConfiguration)
        try await RelayInteropTests.withRelayHost(seed: 410, services: [relay]) { r in
            let relayAddress = try Self.tcpAddress(r)
            try await PyRelayPeer.with(seed: 310, role: .client) { py in
                let reserved = try await py.command("reserve", relayAddress.description)
                #expect(reserved["reserved"] as? Bool == true)
                let expire = try #require(reserved["expire"] as? Int)
                #expect(Double(expire) - Date().timeIntervalSince1970 > 3500)
                let voucher = try #require(reserved["voucher"] as? [String: Any], "our relay sends a voucher")
                #expect(voucher["valid"] as? Bool == true, "py rejects our voucher: \(voucher)")
                #expect(voucher["relay"] as? String == r.peerID.b58String)
                #expect(voucher["peer"] as? String == py.peerID.b58String)
                #expect(voucher["expiration"] as? Int == expire)
                #expect(relay.reservationCount == 1)
                #expect(relay.counters.reservationsAccepted == 1)

                // Our B reaches py through our relay.
                try await RelayInteropTests.withRelayHost(seed: 411, client: RelayClient()) { b in
                    let circuit = relayAddress.appending(.p2pCircuit).appending(peerID: py.peerID)
                    let connection = try await b.connect(to: circuit)
                    #expect(connection.remotePeer == py.peerID)
                    #expect(connection.isLimited)
                    try await InteropTests.echo(b, peer: py.peerID, bytes: Self.echoSize, streams: 1)
                    let rtts = try await PingService.ping(host: b, peer: py.peerID, count: 3)
                    #expect(rtts.count == 3)
                    #expect(relay.counters.circuitsOpened == 1)
                    #expect(relay.circuitCount == 1)
                    // py sees B only on the relayed connection. (py 0.8.1's stop handler labels it
                    // `/p2p/<py's own ID>/p2p-circuit/p2p/<B>`: it writes its own ID for the relay's.)
                    let seen = try await py.command("connections", b.peerID.b58String)["addrs"] as? [[String]] ?? []
                    #expect(seen.count == 1, "py's connections to B: \(seen)")
                    #expect(seen.first?.count == 1 && seen.first?.first?.hasSuffix("/p2p-circuit/p2p/\(b.peerID)") == true,
                            "py's connections to B: \(seen)")
                }

                // py dials our A through our relay.
                let aClient = RelayClient()
                try await RelayInteropTests.withRelayHost(seed: 412, client: aClient) { a in
                    try await aClient.reserve(on: relayAddress, deadline: .after(.seconds(20)))
                    #expect(relay.reservationCount == 2)
                    let circuit = try #require(aClient.circuitAddresses.first)
                    #expect(circuit == relayAddress.appending(.p2pCircuit).appending(peerID: a.peerID))
                    let dialed = try await py.command("dial", circuit.description)
                    #expect(dialed["peer"] as? String == a.peerID.b58String)
                    let echoed = try await py.command("echo", a.peerID.b58String, "\(Self.echoSize)")
                    #expect(echoed["bytes"] as? Int == Self.echoSize)
                    let ping = try await py.command("ping", a.peerID.b58String, "2")
                    #expect((ping["rtts"] as? [Any])?.count == 2)
                    try await Self.until("A's inbound relayed connection from py") {
                        a.connections(to: py.peerID).contains { $0.isLimited && $0.direction == .inbound }
                    }
                    #expect(relay.counters.circuitsOpened == 2)
                    // py reserved again before its CONNECT (its CLIENT role): a renewal, not a new slot.
                    #expect(relay.counters.reservationsAccepted == 3)
                    #expect(relay.reservationCount == 2)
                }
            }
        }
    }

    /// py's client sends our relay bad hop messages (as raw bytes on py's hop stream): our relay
    /// answers each with a STATUS (`MALFORMED_MESSAGE`, `UNEXPECTED_MESSAGE`), counts them, and
    /// still serves py's reservation afterwards.
    @Test func swiftRelayAnswersPyBadHopMessages() async throws {
        let relay = RelayService()
        try await RelayInteropTests.withRelayHost(seed: 420, services: [relay]) { r in
            let relayAddress = try Self.tcpAddress(r)
            try await PyRelayPeer.with(seed: 320, role: .client) { py in
                // py needs a connection first: its reservation opens it.
                _ = try await py.command("reserve", relayAddress.description)
                let cases: [(String, RelayStatus)] = [
                    ("020809", .malformedMessage),  // type 9
                    ("04ffffffff", .malformedMessage),  // no protobuf
                    ("0408022864", .unexpectedMessage),  // STATUS OK from a client
                ]
                for (hex, expected) in cases {
                    let answer = try await py.command("hop", r.peerID.b58String, hex)
                    #expect(answer["type"] as? Int == 2, "\(hex)")
                    #expect(answer["status"] as? Int == Int(expected.rawValue), "\(hex): \(answer)")
                }
                #expect(relay.counters.badRequests == 3)
                // py's CONNECT to a peer without a reservation: our relay answers NO_RESERVATION.
                let nobody = PeerID(publicKey: PrivateKey.ed25519(seed: 421).publicKey)
                let refused = try await py.attempt("dial", ["\(relayAddress.appending(.p2pCircuit).appending(peerID: nobody))"])
                #expect(refused["ok"] as? Bool == false)
                // py: "Relay connection failed with status 204"
                #expect((refused["error"] as? String)?.contains("status \(RelayStatus.noReservation.rawValue)") == true, "\(refused)")
                #expect(relay.counters.circuitsRefused[.noReservation] == 1)
                let again = try await py.command("reserve", relayAddress.description)
                #expect(again["reserved"] as? Bool == true)
                #expect(relay.reservationCount == 1)
            }
        }
    }
}
