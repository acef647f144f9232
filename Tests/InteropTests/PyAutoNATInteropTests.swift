import Foundation
import NIOConcurrencyHelpers
import NIOCore
import PointSub
import TestSupport
import Testing

/// `Interop/autonat_peer.py`: py-libp2p 0.8.1's `AutoNATService` (server and client), driven by
/// numbered commands as `PyRelayPeer` drives relay_peer.py.
enum PyAutoNATPeer {
    static var script: URL { ChildProcess.repoRoot.appendingPathComponent("Interop/autonat_peer.py") }

    /// Runs `body` with a started autonat_peer.py (its server dials back with fresh connections:
    /// mode `fresh`), stopping it afterwards.
    static func with<T: Sendable>(seed: UInt64, _ body: (PyRelayPeer) async throws -> T) async throws -> T {
        try await PyRelayPeer.with(script: script, ["--seed", "\(seed)", "--lifetime", "170"], body)
    }
}

/// AutoNAT v1 (`/libp2p/autonat/1.0.0`) with py-libp2p 0.8.1 over TCP on 127.0.0.1, both ways:
/// py's server dials our node back (or fails to), our server dials py back, refuses to dial a
/// third party for it, and answers malformed requests.
///
/// Quirks of py 0.8.1 the tests depend on:
/// - py's server "dials back" with `host.connect`, which returns at once when a connection to the
///   peer exists, and the requester's own always does: py answers OK with the first requested
///   address on the observed IP without dialing at all. autonat_peer.py therefore dials back
///   with a fresh connection (its mode `fresh`); `pyStockServerAnswersOKWithoutDialing` pins the
///   stock behaviour.
/// - py's server dials only requested addresses on the requester's observed IP and does not add
///   the observed address itself (the spec allows it; go and we do); with none left it answers
///   `E_DIAL_REFUSED`.
/// - py's server dials the peer ID named in the request, not necessarily the requester's.
/// - py's client counts every answer but OK as "not reachable", refusals included (go and we
///   ignore refusals), and flips its status only after `confirmations` servers (4 by default;
///   autonat_peer.py sets 1).
/// - py's server closes the stream without an answer when a request does not parse.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct PyAutoNATInteropTests {
    /// An AutoNAT service for loopback tests: no automatic probes, private addresses dialed back.
    static func service() -> AutoNATService {
        var configuration = AutoNATService.Configuration()
        configuration.probeAutomatically = false
        configuration.allowPrivateAddresses = true
        configuration.dialTimeout = .seconds(10)
        return AutoNATService(configuration: configuration)
    }

    /// A host with `autonat` listening on `ip` (TCP, port 0).
    static func withHost<T: Sendable>(
        seed: UInt64, ip: String = "127.0.0.1", autonat: AutoNATService, _ body: (P2PHost) async throws -> T
    ) async throws -> T {
        var configuration = P2PHost.Configuration.defaults
        configuration.services = [IdentifyService(), autonat]
        configuration.listenAddresses = [try Multiaddr("/ip4/\(ip)/tcp/0")]
        return try await PointSub.withHost(identity: .ed25519(seed: seed), configuration: configuration) { host in
            defer { autonat.stop() }
            return try await body(host)
        }
    }

    /// Records the connections `host` opens or accepts from now on (until the returned task is
    /// cancelled).
    static func recordConnections(_ host: P2PHost) -> (NIOLockedValueBox<[Connection]>, Task<Void, Never>) {
        let seen = NIOLockedValueBox<[Connection]>([])
        let events = host.events()
        let task = Task {
            for await event in events {
                if case .connectionOpened(let connection) = event { seen.withLockedValue { $0.append(connection) } }
            }
        }
        return (seen, task)
    }

    /// Connects `host` to py and waits until py's identify listed AutoNAT.
    static func connect(_ host: P2PHost, to py: PyRelayPeer) async throws {
        _ = try await host.connect(to: py.address)
        try await GoInteropTests.until("py's identify listing AutoNAT") {
            host.peerstore.protocols(for: py.peerID).contains(AutoNATMessage.protocolID)
        }
    }

    /// The dial-back requests py's server handled.
    static func served(_ py: PyRelayPeer) async throws -> [[String: Any]] {
        try await py.command("served")["requests"] as? [[String: Any]] ?? []
    }

    // MARK: - py as the server

    /// (a) py's server dials our listening node back on a new connection: our probe gets OK with
    /// our listen address, our reachability becomes public, and the dial-back arrived here.
    @Test func pyServerDialsUsBack() async throws {
        try await PyAutoNATPeer.with(seed: 501) { py in
            let autonat = Self.service()
            try await Self.withHost(seed: 601, autonat: autonat) { host in
                try await Self.connect(host, to: py)
                let (connections, recorder) = Self.recordConnections(host)
                defer { recorder.cancel() }
                let answer = try await autonat.probe(using: py.peerID, deadline: .after(.seconds(30)))
                #expect(answer.status == .ok, "\(answer)")
                #expect(answer.address == host.listenAddresses[0], "\(answer)")
                #expect(autonat.reachability == .public)
                #expect(autonat.counters.probes == [.ok: 1])

                let inbound = connections.withLockedValue { $0 }.filter { $0.remotePeer == py.peerID && $0.direction == .inbound }
                #expect(inbound.count == 1, "py's dial-back did not arrive: \(connections.withLockedValue { $0 })")
                let requests = try await Self.served(py)
                #expect(requests.count == 1)
                let dials = requests.first?["dials"] as? [[String: Any]] ?? []
                #expect(dials.count == 1 && dials.first?["ok"] as? Bool == true, "\(requests)")
                #expect(dials.first?["addr"] as? String == host.listenAddresses[0].description, "\(requests)")
            }
        }
    }

    /// (b) Our node listens on 127.0.0.2 but reaches py from 127.0.0.1: py dials only addresses
    /// on the IP it sees us at, which leaves the address py observed (our dialer's ephemeral port,
    /// where nothing listens). The dial fails: `E_DIAL_ERROR`, and our reachability is private.
    @Test func pyServerCannotDialUsBack() async throws {
        try await PyAutoNATPeer.with(seed: 502) { py in
            let autonat = Self.service()
            try await Self.withHost(seed: 602, ip: "127.0.0.2", autonat: autonat) { host in
                try await Self.connect(host, to: py)
                try await GoInteropTests.until("py's observation of our address") { !host.observedAddresses.all.isEmpty }
                let observed = try #require(host.observedAddresses.all.first?.address)
                #expect(observed.ipAddress?.description == "127.0.0.1")
                #expect(observed != host.listenAddresses[0])

                let answer = try await autonat.probe(using: py.peerID, deadline: .after(.seconds(30)))
                #expect(answer.status == .dialError, "\(answer)")
                #expect(answer.address == nil)
                #expect(autonat.reachability == .private)
                #expect(autonat.counters.probes == [.dialError: 1])

                let requests = try await Self.served(py)
                #expect(requests.count == 1)
                let request = try #require(requests.first)
                let asked = request["addrs"] as? [String] ?? []
                #expect(Set(asked) == [host.listenAddresses[0].description, observed.description], "\(request)")
                // Only the address on the observed IP was dialed, and it failed.
                let dials = request["dials"] as? [[String: Any]] ?? []
                #expect(dials.map { $0["addr"] as? String } == [observed.description], "\(request)")
                #expect(dials.allSatisfy { $0["ok"] as? Bool == false }, "\(request)")
            }
        }
    }

    /// py's own dial-back (`mode stock`): the same request as in `pyServerCannotDialUsBack` gets
    /// OK with the closed address, and nothing dialed us: py's `host.connect` found the
    /// requester's connection and returned.
    @Test func pyStockServerAnswersOKWithoutDialing() async throws {
        try await PyAutoNATPeer.with(seed: 503) { py in
            _ = try await py.command("mode", "stock")
            let autonat = Self.service()
            try await Self.withHost(seed: 603, ip: "127.0.0.2", autonat: autonat) { host in
                try await Self.connect(host, to: py)
                try await GoInteropTests.until("py's observation of our address") { !host.observedAddresses.all.isEmpty }
                let observed = try #require(host.observedAddresses.all.first?.address)
                let (connections, recorder) = Self.recordConnections(host)
                defer { recorder.cancel() }
                let answer = try await autonat.probe(using: py.peerID, deadline: .after(.seconds(30)))
                #expect(answer.status == .ok, "\(answer)")
                #expect(answer.address == observed, "\(answer)")
                #expect(connections.withLockedValue { $0 }.isEmpty, "py dialed after all")
            }
        }
    }

    // MARK: - Our server, py as the client

    /// (c) py asks our server: it dials py back on py's listen address (a new connection), py
    /// gets OK with that address and its verdict (one confirmation) is public; `check` (py's
    /// `check_reachability`) agrees.
    @Test func ourServerDialsPyBack() async throws {
        try await PyAutoNATPeer.with(seed: 504) { py in
            let server = Self.service()
            try await Self.withHost(seed: 604, autonat: server) { host in
                let (connections, recorder) = Self.recordConnections(host)
                defer { recorder.cancel() }
                let address = try #require(host.addresses.first)
                _ = try await py.command("connect", address.description)
                let answer = try await py.command("query", host.peerID.b58String)
                #expect(answer["status"] as? Int == Int(AutoNATMessage.Status.ok.rawValue), "\(answer)")
                #expect(answer["addr"] as? String == py.address.removingPeerID().description, "\(answer)")
                #expect(answer["verdict"] as? Int == 1, "py's status after our OK: \(answer)")
                let check = try await py.command("check", host.peerID.b58String)
                #expect(check["verdict"] as? Int == 1, "\(check)")
                #expect(server.counters.served == [.ok: 2])
                // Two dial-backs to py's listen address, each a connection of its own.
                let dialBacks = connections.withLockedValue { $0 }.filter { $0.remotePeer == py.peerID && $0.direction == .outbound }
                #expect(dialBacks.count == 2, "\(connections.withLockedValue { $0 })")
                #expect(dialBacks.allSatisfy { $0.remoteAddress == py.address.removingPeerID() })
            }
        }
    }

    /// (d) py connects from 127.0.0.1 and asks our server to dial 127.0.0.2 (a listener of py's
    /// that counts connections): our server never dials it. It tries only the address it sees py
    /// at (the spec lets a server add it; go does too), py's ephemeral port where nothing
    /// listens, so it answers `E_DIAL_ERROR`; py takes that as "not reachable" (verdict private).
    @Test func ourServerDoesNotDialAThirdParty() async throws {
        try await PyAutoNATPeer.with(seed: 505) { py in
            let server = Self.service()
            try await Self.withHost(seed: 605, autonat: server) { host in
                let (connections, recorder) = Self.recordConnections(host)
                defer { recorder.cancel() }
                let trap = try #require(try await py.command("trap")["port"] as? Int)
                _ = try await py.command("connect", try #require(host.addresses.first).description)
                let answer = try await py.command("query", host.peerID.b58String, "/ip4/127.0.0.2/tcp/\(trap)")
                #expect(answer["status"] as? Int == Int(AutoNATMessage.Status.dialError.rawValue), "\(answer)")
                #expect(answer["addr"] is NSNull, "\(answer)")
                #expect(answer["verdict"] as? Int == 2, "\(answer)")
                #expect(try await py.command("trapped")["connections"] as? Int == 0, "our server dialed the third party")
                #expect(server.counters.served == [.dialError: 1])
                let dialed = connections.withLockedValue { $0 }.filter { $0.direction == .outbound }
                #expect(dialed.isEmpty, "\(dialed)")
            }
        }
    }

    /// (e) Malformed requests from py, as raw bytes on py's AutoNAT stream, each get
    /// `E_BAD_REQUEST` (and are counted); py's honest request afterwards gets OK.
    @Test func ourServerAnswersMalformedRequestsAndKeepsServing() async throws {
        try await PyAutoNATPeer.with(seed: 506) { py in
            let server = Self.service()
            try await Self.withHost(seed: 606, autonat: server) { host in
                _ = try await py.command("connect", try #require(host.addresses.first).description)
                let stranger = PeerID(publicKey: PrivateKey.ed25519(seed: 607).publicKey)
                let otherPeer = AutoNATMessage(
                    type: .dial, dial: .init(peerID: stranger.bytes, addresses: [py.address.removingPeerID()])
                ).encoded()
                let cases: [(String, [UInt8])] = [
                    ("bytes that are no protobuf", [0x04, 0xff, 0xff, 0xff, 0xff]),
                    ("a DIAL_RESPONSE as request", [0x02, 0x08, 0x01]),
                    ("a DIAL without its PeerInfo", [0x02, 0x08, 0x00]),
                    ("a DIAL for another peer ID", Varint.encode(UInt64(otherPeer.count)) + otherPeer),
                    ("a length prefix past 4096 bytes", [0x80, 0x40]),
                ]
                for (what, bytes) in cases {
                    let answer = try await py.command("raw", host.peerID.b58String, bytes.hex)
                    #expect(answer["closed"] as? Bool == false, "\(what): \(answer)")
                    #expect(answer["type"] as? Int == Int(AutoNATMessage.Kind.dialResponse.rawValue), "\(what): \(answer)")
                    #expect(answer["status"] as? Int == Int(AutoNATMessage.Status.badRequest.rawValue), "\(what): \(answer)")
                }
                #expect(server.counters.served == [.badRequest: cases.count])
                let honest = try await py.command("query", host.peerID.b58String)
                #expect(honest["status"] as? Int == Int(AutoNATMessage.Status.ok.rawValue), "\(honest)")
                #expect(server.counters.served == [.badRequest: cases.count, .ok: 1])
            }
        }
    }
}
