import Foundation
import NIOCore
import PointSub
import Testing

/// A relay and its clients on real hosts over the in-memory transport: reservations, relayed
/// connections with security and muxer over the circuit, limits and refusals.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct RelayNetworkTests {
    static let echo = "/test/echo/1"

    /// A started host on the in-memory transport with `services`, and a relay client when asked.
    static func makeHost(seed: UInt64, services: [any HostService] = [], client: RelayClient? = nil) async throws -> P2PHost {
        var configuration = P2PHost.Configuration.defaults {
            $0.transports = [.memory]
            $0.listenAddresses = [Multiaddr("/memory/0")]
            $0.services = [IdentifyService()] + services
        }
        client?.install(in: &configuration)
        let host = P2PHost(identity: .ed25519(seed: seed), configuration: configuration)
        try await host.start()
        try host.setStreamHandler(echo) { stream in
            while let buffer = try await stream.read() { try await stream.write(buffer) }
            try await stream.closeWrite()
        }
        return host
    }

    struct Network {
        let relay: P2PHost, relayService: RelayService
        let a: P2PHost, aClient: RelayClient
        let b: P2PHost, bClient: RelayClient

        func shutdown() async {
            aClient.stop()
            bClient.stop()
            relayService.stop()
            for host in [relay, a, b] { await host.shutdown(gracePeriod: .zero) }
        }
    }

    static func withNetwork(
        relay configuration: RelayService.Configuration = RelayService.Configuration(),
        _ body: (Network) async throws -> Void
    ) async throws {
        let relayService = RelayService(configuration: configuration)
        let relay = try await makeHost(seed: 7001, services: [relayService])
        let aClient = RelayClient(), bClient = RelayClient()
        let a = try await makeHost(seed: 7002, client: aClient)
        let b = try await makeHost(seed: 7003, client: bClient)
        let network = Network(relay: relay, relayService: relayService, a: a, aClient: aClient, b: b, bClient: bClient)
        do {
            try await body(network)
        } catch {
            await network.shutdown()
            throw error
        }
        await network.shutdown()
    }

    @Test func reservedPeerIsReachableThroughTheRelay() async throws {
        try await Self.withNetwork { net in
            let reservation = try await net.aClient.reserve(on: net.relay.addresses[0])
            #expect(reservation.relay == net.relay.peerID)
            #expect(reservation.voucher?.peer == net.a.peerID)
            #expect(reservation.limit == RelayLimit(duration: 120, data: 1 << 17))
            #expect(reservation.expiration.timeIntervalSinceNow > 3500)
            let circuit = try #require(net.aClient.circuitAddresses.first)
            #expect(circuit.description.hasSuffix("/p2p/\(net.relay.peerID)/p2p-circuit/p2p/\(net.a.peerID)"))
            #expect(net.relayService.reservationCount == 1)
            // The bare /p2p-circuit listener is not an address of A's.
            #expect(!net.a.listenAddresses.contains { $0.isCircuit })

            // B dials A's circuit address: Noise and Yamux run over the relayed stream.
            let connection = try await net.b.connect(to: circuit)
            #expect(connection.remotePeer == net.a.peerID)
            #expect(connection.isLimited)
            let stream = try await connection.newStream(protocols: [Self.echo])
            let payload = ByteBuffer(bytes: (0..<20_000).map { UInt8(truncatingIfNeeded: $0 * 7) })
            try await stream.write(payload)
            try await stream.closeWrite()
            let back = try await stream.readToEnd(maxBytes: 1 << 20)
            #expect(back == payload)
            // A sees B on a limited inbound connection.
            let inbound = net.a.connections(to: net.b.peerID)
            #expect(inbound.contains { $0.isLimited && $0.direction == .inbound })
            #expect(net.relayService.counters.circuitsOpened == 1)
            // A advertises its circuit address: B learns it through identify over the circuit.
            #expect(net.a.advertisedAddresses.contains { $0.isCircuit })
            let deadline = ContinuousClock.now + .seconds(10)
            while !net.b.peerstore.addresses(for: net.a.peerID).contains(where: \.isCircuit), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(net.b.peerstore.addresses(for: net.a.peerID).contains { $0.isCircuit })
        }
    }

    @Test func dataLimitEndsTheCircuit() async throws {
        var configuration = RelayService.Configuration()
        configuration.circuitLimit = RelayLimit(duration: 60, data: 64 * 1024)
        try await Self.withNetwork(relay: configuration) { net in
            try await net.aClient.reserve(on: net.relay.addresses[0])
            let circuit = try #require(net.aClient.circuitAddresses.first)
            let connection = try await net.b.connect(to: circuit)
            let stream = try await connection.newStream(protocols: [Self.echo])
            // 1 MiB cannot pass a 64 KiB allowance: the relay resets the circuit.
            let chunk = ByteBuffer(repeating: 0x5a, count: 16 * 1024)
            let failed: Bool
            do {
                for _ in 0..<64 { try await stream.write(chunk) }
                _ = try await stream.readToEnd(maxBytes: 4 << 20)
                failed = false
            } catch {
                failed = true
            }
            #expect(failed)
            let deadline = ContinuousClock.now + .seconds(10)
            while net.relayService.counters.circuitsEnded["dataLimit"] == nil, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(net.relayService.counters.circuitsEnded["dataLimit"] == 1)
            #expect(net.relayService.circuitCount == 0)
        }
    }

    @Test func unreservedPeerCannotBeReached() async throws {
        try await Self.withNetwork { net in
            // B knows the relay but A never reserved.
            let circuit = net.relay.addresses[0].appending(.p2pCircuit).appending(peerID: net.a.peerID)
            await #expect(throws: (any Error).self) { _ = try await net.b.connect(to: circuit) }
            #expect(net.relayService.counters.circuitsRefused[.noReservation] == 1)
        }
    }

    @Test func relayForgetsAReservationWhenThePeerLeaves() async throws {
        try await Self.withNetwork { net in
            try await net.aClient.reserve(on: net.relay.addresses[0])
            #expect(net.relayService.reservationCount == 1)
            for connection in net.a.connections(to: net.relay.peerID) { await connection.close() }
            let deadline = ContinuousClock.now + .seconds(10)
            while net.relayService.reservationCount > 0, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(net.relayService.reservationCount == 0)
        }
    }

    @Test func malformedAndUnexpectedHopRequestsGetAStatus() async throws {
        try await Self.withNetwork { net in
            for (request, expected) in [([UInt8]([0x08, 0x09]), RelayStatus.malformedMessage),
                                        (HopMessage(type: .status, status: .ok).encoded(), .unexpectedMessage)] {
                let stream = try await net.b.newStream(to: net.relay.addresses[0], protocols: [RelayWire.hopProtocol])
                try await stream.writeLengthPrefixed(request)
                let frame = try #require(try await stream.readLengthPrefixed(maxLength: RelayWire.maxMessageSize))
                let answer = try HopMessage(decoding: frame.readableBytesView)
                #expect(answer.status == expected)
                await stream.close()
            }
            #expect(net.relayService.counters.badRequests == 2)
            // The relay still serves honest peers.
            try await net.aClient.reserve(on: net.relay.addresses[0])
        }
    }

    @Test func keptReservationIsRefreshed() async throws {
        var configuration = RelayService.Configuration()
        configuration.reservationTTL = .seconds(3)
        try await Self.withNetwork(relay: configuration) { net in
            let first = try await net.aClient.keepReservation(on: net.relay.addresses[0])
            let deadline = ContinuousClock.now + .seconds(15)
            while (net.aClient.reservations.first?.expiration ?? first.expiration) <= first.expiration,
                  ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
            }
            let renewed = try #require(net.aClient.reservations.first)
            #expect(renewed.expiration > first.expiration)
            #expect(net.relayService.counters.reservationsAccepted >= 2)
        }
    }
}

extension RelayNetworkTests {
    /// A megabyte each way at once over a circuit without limits: back-pressure on all four
    /// streams and both bridges, no deadlock.
    @Test func fullDuplexMegabyteOverACircuit() async throws {
        var configuration = RelayService.Configuration()
        configuration.circuitLimit = nil
        try await Self.withNetwork(relay: configuration) { net in
            try await net.aClient.reserve(on: net.relay.addresses[0])
            let circuit = try #require(net.aClient.circuitAddresses.first)
            let stream = try await net.b.newStream(to: circuit, protocols: [Self.echo])
            let payload = ByteBuffer(bytes: (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) })
            async let sent: Void = {
                var rest = payload
                while rest.readableBytes > 0 {
                    try await stream.write(rest.readSlice(length: min(60_000, rest.readableBytes))!)
                }
            }()
            let back = try await stream.readExactly(payload.readableBytes)
            try await sent
            #expect(back == payload)
            stream.reset()
        }
    }
}

extension RelayNetworkTests {
    /// Protocols registered with `allowOnLimitedConnections: false` (perf here) are refused over
    /// a relayed connection, as if unsupported, and served over a direct one; others (echo) run.
    @Test func limitedConnectionsRefuseBulkProtocols() async throws {
        try await Self.withNetwork { net in
            try net.a.setStreamHandler("/test/bulk/1", allowOnLimitedConnections: false) { stream in
                try await stream.write(ByteBuffer(string: "bulk"))
            }
            try await net.aClient.reserve(on: net.relay.addresses[0])
            let circuit = try #require(net.aClient.circuitAddresses.first)
            let relayed = try await net.b.connect(to: circuit)
            #expect(relayed.isLimited)
            await #expect(throws: (any Error).self) {
                let stream = try await relayed.newStream(protocols: ["/test/bulk/1"])
                _ = try await stream.readToEnd(maxBytes: 100)
            }
            let echo = try await relayed.newStream(protocols: [Self.echo])
            try await echo.write(ByteBuffer(string: "hi"))
            try await echo.closeWrite()
            #expect(String(buffer: try await echo.readToEnd(maxBytes: 100)) == "hi")
            // Over a direct connection the same protocol is served, and streams to A now prefer it.
            let direct = try await net.b.connect(to: net.a.addresses[0])
            #expect(!direct.isLimited)
            let stream = try await net.b.newStream(to: net.a.peerID, protocols: ["/test/bulk/1"])
            #expect(!stream.connection.isLimited)
            #expect(String(buffer: try await stream.readToEnd(maxBytes: 100)) == "bulk")
        }
    }
}

extension RelayNetworkTests {
    /// When the initiator goes away (after a direct connection was made, as after a hole punch),
    /// the circuit ends at once, even if the target never closes its side (a copy blocked on a
    /// silent side must not hold the circuit and its slot): the relay's count returns to zero.
    @Test func circuitEndsWhenOneSideGoesAway() async throws {
        try await Self.withNetwork { net in
            try await net.aClient.reserve(on: net.relay.addresses[0])
            let circuit = try #require(net.aClient.circuitAddresses.first)
            _ = try await net.b.connect(to: circuit)
            // As after a hole punch: a direct connection next to the relayed one.
            _ = try await net.b.connect(to: net.a.addresses[0])
            #expect(net.relayService.circuitCount == 1)
            await net.b.shutdown(gracePeriod: .zero)
            let deadline = ContinuousClock.now + .seconds(10)
            while net.relayService.circuitCount > 0, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(net.relayService.circuitCount == 0)
        }
    }
}

extension RelayNetworkTests {
    /// A relayed connection that outlives the relay's duration limit is ended by the relay (both
    /// halves reset), and both ends see the connection close.
    @Test func durationLimitEndsTheCircuit() async throws {
        var configuration = RelayService.Configuration()
        configuration.circuitLimit = RelayLimit(duration: 1, data: 0)
        try await Self.withNetwork(relay: configuration) { net in
            let reservation = try await net.aClient.reserve(on: net.relay.addresses[0])
            #expect(reservation.limit?.duration == 1)
            let circuit = try #require(net.aClient.circuitAddresses.first)
            let connection = try await net.b.connect(to: circuit)
            #expect(connection.isLimited)
            let deadline = ContinuousClock.now + .seconds(10)
            while !connection.isClosed, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(connection.isClosed)
            #expect(net.relayService.counters.circuitsEnded["durationLimit"] == 1)
            #expect(net.relayService.circuitCount == 0)
        }
    }
}

extension RelayNetworkTests {
    /// A reservation flood over TCP: twelve peer IDs dialing from one IP (127.0.0.2) get the per-source
    /// share and no more, each refusal typed; an honest peer from 127.0.0.1 still reserves; the
    /// relay's memory account holds the reservations granted, and falls back to zero when the
    /// peers leave.
    @Test func reservationFloodFromOneAddressLeavesRoomForOthers() async throws {
        var relayConfiguration = RelayService.Configuration()
        relayConfiguration.limits.maxReservationsPerSource = 3
        let relayService = RelayService(configuration: relayConfiguration)
        let relay = P2PHost(identity: .ed25519(seed: 7101), configuration: .defaults {
            $0.listenAddresses = [Multiaddr("/ip4/0.0.0.0/tcp/0")]
            $0.services = [IdentifyService(), relayService]
        })
        try await relay.start()
        defer { relayService.stop() }
        let port = try #require(relay.listenAddresses.first?.tcpPort)
        let relayAddress = try Multiaddr("/ip4/127.0.0.1/tcp/\(port)/p2p/\(relay.peerID)")
        var clients: [(P2PHost, RelayClient)] = []
        var granted = 0
        var refusals: [RelayError] = []
        for seed in 0..<12 {
            let client = RelayClient()
            var configuration = P2PHost.Configuration.defaults {
                $0.services = [IdentifyService()]
                $0.dialSourceAddress = "127.0.0.2"
            }
            client.install(in: &configuration)
            let host = P2PHost(identity: .ed25519(seed: 7110 + UInt64(seed)), configuration: configuration)
            try await host.start()
            clients.append((host, client))
            do {
                _ = try await client.reserve(on: relayAddress)
                granted += 1
            } catch let error as RelayError {
                refusals.append(error)
            }
        }
        #expect(granted == 3)
        #expect(refusals.count == 9)
        // RESERVATION_REFUSED, as go-libp2p answers a reservation its constraints refuse.
        #expect(refusals.allSatisfy { $0.code == .refused && $0.status == .reservationRefused }, "\(refusals)")
        #expect(relayService.counters.reservationsRefused == 9)

        let honestClient = RelayClient()
        var honestConfiguration = P2PHost.Configuration.defaults { $0.services = [IdentifyService()] }
        honestClient.install(in: &honestConfiguration)
        let honest = P2PHost(identity: .ed25519(seed: 7199), configuration: honestConfiguration)
        try await honest.start()
        clients.append((honest, honestClient))
        _ = try await honestClient.reserve(on: relayAddress)
        #expect(relayService.reservationCount == 4)
        // The reservations are charged (hop streams still closing may add their buffers).
        #expect(relay.resourceManager.usage(ofService: "relay").memory >= 4 * relayConfiguration.memoryPerReservation)

        for (host, client) in clients {
            client.stop()
            await host.shutdown(gracePeriod: .zero)
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while relayService.reservationCount > 0, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(relayService.reservationCount == 0)
        #expect(relay.resourceManager.usage(ofService: "relay").memory == 0)
        await relay.shutdown(gracePeriod: .zero)
    }
}
