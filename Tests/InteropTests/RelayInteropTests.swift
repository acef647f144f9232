import Foundation
import NIOCore
import PointSub
import TestSupport
import Testing

/// Circuit Relay v2 with go-libp2p 0.32 (`p2pd`), over TCP on 127.0.0.1: go's relay serving our
/// nodes (reservation, voucher, relayed connection), and our relay serving a go client that
/// dials our node through it.
///
/// What the tests depend on:
/// - p2pd serves the hop protocol when started with `-relay=true` (`-relayService` defaults to
///   on). Its relay announces and applies go-libp2p's default circuit limit, 2 minutes and
///   128 KiB per direction, whatever its `-relayTimeLimit`/`-relayDataLimit` flags say. At the
///   data limit go half-closes toward the target and stops reading from the initiator (no
///   reset): a connection that outgrows it stalls until its keepalive ends it.
/// - p2pd's `-autoRelay -trustedRelays <addr> -forceReachabilityPrivate` (it also needs a DHT)
///   finds our relay and sees it supports circuit v2 at once, but reserves only after
///   autorelay's 3-minute boot delay (p2pd sets no static-relay minimum): too slow for this suite,
///   so go reserving on our relay is not tested here.
/// - go opens streams of its own over a limited (relayed) connection only for protocols marked
///   for it; streams we open to it over one are accepted.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct RelayInteropTests {
    static let timeout: Duration = .seconds(45)

    /// A started host on 127.0.0.1 TCP with identify, echo and ping, plus `services`, and a relay
    /// client installed when given (a host dials circuit addresses only with one: its transport);
    /// shut down (client and relay services stopped) after `body`.
    static func withRelayHost<T: Sendable>(
        seed: UInt64, services: [any HostService] = [], client: RelayClient? = nil, _ body: (P2PHost) async throws -> T
    ) async throws -> T {
        var configuration = P2PHost.Configuration.defaults {
            $0.agentVersion = "pointsub-relay-interop/0.1.0"
            $0.services = [IdentifyService(), EchoService(), PingService()] + services
            $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")]
        }
        client?.install(in: &configuration)
        return try await withHost(identity: .ed25519(seed: seed), configuration: configuration) { host in
            defer {
                client?.stop()
                for case let relay as RelayService in services { relay.stop() }
            }
            return try await body(host)
        }
    }

    /// go relays: our A reserves on go (voucher signed by go), our B reaches A through go, and
    /// 1 MiB goes there and back full duplex over Noise and Yamux inside the circuit.
    @Test func goRelaysBetweenOurNodes() async throws {
        try await withDaemon(seed: 131, ["-relay=true", "-relayService=true"]) { go in
            let aClient = RelayClient(), bClient = RelayClient()
            try await Self.withRelayHost(seed: 231, client: aClient) { a in
                try await Self.withRelayHost(seed: 232, client: bClient) { b in
                    let reservation = try await aClient.reserve(on: go.fullAddress)
                    #expect(reservation.relay == go.peerID)
                    #expect(reservation.voucher?.relay == go.peerID)
                    #expect(reservation.voucher?.peer == a.peerID)
                    #expect(reservation.expiration.timeIntervalSinceNow > 600)
                    // go-libp2p's default circuit limit, whatever p2pd's -relay…Limit flags say.
                    #expect(reservation.limit == RelayLimit(duration: 120, data: 128 * 1024))
                    #expect(reservation.circuitAddresses.contains {
                        $0.description.hasPrefix("/ip4/127.0.0.1/tcp/") && $0.isCircuit
                    })
                    let circuit = try #require(aClient.circuitAddresses.first { $0.description.hasPrefix("/ip4/127.0.0.1/") })
                    let connection = try await b.connect(to: circuit)
                    #expect(connection.isLimited)
                    #expect(connection.remotePeer == a.peerID)
                    let stream = try await connection.newStream(protocols: [EchoService.protocolID])
                    let small = GoInteropTests.payload(1000, seed: 30)
                    try await stream.write(small)
                    let first = try await stream.readExactly(1000)
                    #expect(first == small)
                    let payload = GoInteropTests.payload(32 << 10, seed: 31)
                    let back = try await echoFullDuplex(stream, payload)
                    #expect(back == payload)
                    await stream.close()
                }
            }
        }
    }

    /// Our relay serves a go client: go dials our node A through our relay (go speaks hop CONNECT
    /// to our relay, our relay speaks stop to A), A sees go on a limited connection and identify
    /// runs over it both ways.
    @Test func ourRelayServesGo() async throws {
        let relayService = RelayService()
        try await Self.withRelayHost(seed: 241, services: [relayService]) { relay in
            let relayAddress = relay.addresses[0]
            try await withDaemon(seed: 141, ["-relay=true"]) { go in
                let aClient = RelayClient()
                try await Self.withRelayHost(seed: 243, client: aClient) { a in
                    try await aClient.reserve(on: relayAddress)
                    let circuit = try #require(aClient.circuitAddresses.first)
                    try await go.connect(a.peerID, [circuit])
                    try await GoInteropTests.until("go's relayed connection to A", timeout: Self.timeout) {
                        a.connections(to: go.peerID).contains { $0.isLimited && $0.direction == .inbound }
                    }
                    #expect(relayService.counters.circuitsOpened == 1)
                    let peers = try await go.peers()
                    #expect(peers.contains { $0.id == a.peerID && $0.addresses.contains { $0.isCircuit } })
                    // Identify ran over the circuit: A knows go's agent.
                    try await GoInteropTests.until("A's identify of go over the circuit", timeout: Self.timeout) {
                        a.peerstore.info(for: go.peerID)?.agentVersion != nil
                    }
                    // A's streams to go over the limited connection reach go (ping).
                    let rtts = try await PingService.ping(host: a, peer: go.peerID, count: 2)
                    #expect(rtts.count == 2)
                }
            }
        }
    }
}
