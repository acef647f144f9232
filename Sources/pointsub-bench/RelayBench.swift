import Foundation
import PointSub

/// `pointsub-bench relay`: circuit relay v2 over TCP on 127.0.0.1 in this process. A relay R,
/// a node A that reserves on it, a node B that reaches A through R. Prints the time to a
/// reservation (fresh node: connect, Noise, Yamux, identify-free hop RESERVE), the time to a
/// relayed connection (B: its connection to R, hop CONNECT, stop CONNECT, then Noise and Yamux
/// inside the circuit), ping round trips and echo throughput through the relay next to the same
/// over a direct connection; then the time AutoNAT v2 takes to verify one address.
enum RelayBench {
    static func run(quick: Bool) async throws {
        let samples = quick ? 20 : 100
        let pings = quick ? 200 : 1000
        let bytes = quick ? 8 << 20 : 64 << 20
        print("circuit relay v2 over TCP on 127.0.0.1 (Noise + Yamux), all in this process")
        print("load average at start: \(RequestResponseBench.loadAverage())")
        var relayConfiguration = RelayService.Configuration()
        relayConfiguration.circuitLimit = nil  // measure the relay, not its limits
        relayConfiguration.limits.maxReservationsPerSource = samples + 8
        relayConfiguration.limits.maxCircuitsPerPeer = samples + 8
        let relayService = RelayService(configuration: relayConfiguration)
        let tcp = P2PHost.Configuration.defaults { $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")] }
        try await withHost(identity: .ed25519(seed: 900), configuration: tcp.with { $0.services = [relayService] }) { relay in
            defer { relayService.stop() }
            let relayAddress = relay.addresses[0]

            // Time to reservation: each sample a fresh node.
            var reserve: [Double] = []
            for index in 0..<samples {
                let client = RelayClient()
                var configuration = P2PHost.Configuration.defaults
                client.install(in: &configuration)
                try await withHost(identity: .ed25519(seed: 1000 + UInt64(index)), configuration: configuration) { _ in
                    let start = ContinuousClock.now
                    try await client.reserve(on: relayAddress)
                    reserve.append((ContinuousClock.now - start).seconds * 1000)
                }
            }
            print(String(format: "time to reservation (fresh node, %d samples): p50 %.2f ms, p99 %.2f ms", samples,
                         percentile(reserve, 0.5), percentile(reserve, 0.99)))

            let aClient = RelayClient()
            var aConfiguration = tcp.with { $0.services = [EchoService()] }
            aClient.install(in: &aConfiguration)
            try await withHost(identity: .ed25519(seed: 901), configuration: aConfiguration) { a in
                try await aClient.reserve(on: relayAddress)
                let circuit = aClient.circuitAddresses[0]

                var relayedConnect: [Double] = []
                for index in 0..<samples {
                    let bClient = RelayClient()
                    var configuration = P2PHost.Configuration.defaults
                    bClient.install(in: &configuration)
                    try await withHost(identity: .ed25519(seed: 2000 + UInt64(index)), configuration: configuration) { b in
                        _ = try await b.connect(to: relayAddress)  // as a node that already knows the relay
                        let start = ContinuousClock.now
                        _ = try await b.connect(to: circuit)
                        relayedConnect.append((ContinuousClock.now - start).seconds * 1000)
                    }
                }
                print(String(format: "time to a relayed connection (connected to the relay already, %d samples): p50 %.2f ms, p99 %.2f ms",
                             samples, percentile(relayedConnect, 0.5), percentile(relayedConnect, 0.99)))

                let bClient = RelayClient()
                var bConfiguration = P2PHost.Configuration.defaults
                bClient.install(in: &bConfiguration)
                try await withHost(identity: .ed25519(seed: 902), configuration: bConfiguration) { b in
                    for (label, address) in [("relayed", circuit), ("direct", a.addresses[0])] {
                        let connection = try await b.connect(to: address)
                        let pinger = try await PingService.pinger(host: b, peer: a.peerID)
                        _ = connection
                        var rtts: [Double] = []
                        for _ in 0..<pings { rtts.append(try await pinger.ping().seconds * 1000) }
                        await pinger.close()
                        let stream = try await connection.newStream(protocols: [EchoService.protocolID])
                        let start = ContinuousClock.now
                        try await echo(stream, bytes: bytes)
                        let seconds = (ContinuousClock.now - start).seconds
                        print(String(
                            format: "%@: ping p50 %.3f ms, p99 %.3f ms; echo %d MiB each way, full duplex: %.1f MiB/s",
                            label, percentile(rtts, 0.5), percentile(rtts, 0.99), bytes >> 20, Double(bytes) / seconds / 1_048_576))
                        await connection.close()
                    }
                }
            }
            let counters = relayService.counters
            print("relay: \(counters.reservationsAccepted) reservations, \(counters.circuitsOpened) circuits")
        }
        try await autonatV2(samples: samples)
        print("load average at end: \(RequestResponseBench.loadAverage())")
    }

    /// AutoNAT v2 on loopback: the time a client waits for one verified address (request, the
    /// server's dial-back on a new connection with Noise and Yamux, the nonce, the answer), for
    /// an address on the IP the server sees it at and for one on another IP (30–100 kB of dial
    /// data first).
    static func autonatV2(samples: Int) async throws {
        func service(serve: Bool) -> AutoNATv2Service {
            var configuration = AutoNATv2Service.Configuration()
            configuration.serve = serve
            configuration.allowPrivateAddresses = true
            configuration.probeAutomatically = false
            configuration.requestsPerPeerPerMinute = 4 * samples
            configuration.requestsPerMinute = 4 * samples
            configuration.dialDataRequestsPerMinute = 4 * samples
            return AutoNATv2Service(configuration: configuration)
        }
        let server = service(serve: true), client = service(serve: false)
        let serverConfiguration = P2PHost.Configuration.defaults {
            $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")]
            $0.services = [server]
        }
        let clientConfiguration = P2PHost.Configuration.defaults {
            $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0"), Multiaddr("/ip4/127.0.0.2/tcp/0")]
            $0.services = [client]
        }
        try await withHost(identity: .ed25519(seed: 903), configuration: serverConfiguration) { serverHost in
            defer { server.stop() }
            try await withHost(identity: .ed25519(seed: 904), configuration: clientConfiguration) { clientHost in
                defer { client.stop() }
                _ = try await clientHost.connect(to: serverHost.addresses[0])
                for (label, prefix) in [("same IP", "/ip4/127.0.0.1/"), ("other IP, with dial data", "/ip4/127.0.0.2/")] {
                    guard let address = clientHost.listenAddresses.first(where: { $0.description.hasPrefix(prefix) }) else { continue }
                    var times: [Double] = []
                    for _ in 0..<samples {
                        let start = ContinuousClock.now
                        let result = try await client.probe([address], using: serverHost.peerID)
                        guard result.reachable == true else { throw AutoNATError(.refused, "probe of \(address): \(result)") }
                        times.append((ContinuousClock.now - start).seconds * 1000)
                    }
                    print(String(format: "AutoNAT v2, one address verified (%@, %d samples): p50 %.2f ms, p99 %.2f ms",
                                 label, samples, percentile(times, 0.5), percentile(times, 0.99)))
                }
                print("AutoNAT v2 server: \(server.counters.dialBacks[.ok] ?? 0) dial-backs, \(server.counters.dialDataRequested) asked for dial data")
            }
        }
    }

    /// Writes `bytes` and reads them back at the same time.
    static func echo(_ stream: P2PStream, bytes: Int) async throws {
        let chunk = ByteBuffer(repeating: 0x42, count: 64 * 1024)
        async let sent: Void = {
            var left = bytes
            while left > 0 {
                let part = min(left, chunk.readableBytes)
                try await stream.write(chunk.getSlice(at: 0, length: part)!)
                left -= part
            }
            try await stream.closeWrite()
        }()
        var received = 0
        while let buffer = try await stream.read() { received += buffer.readableBytes }
        try await sent
        guard received == bytes else { throw CancellationError() }
    }

    static func percentile(_ values: [Double], _ q: Double) -> Double {
        let sorted = values.sorted()
        return sorted[min(sorted.count - 1, Int(Double(sorted.count) * q))]
    }
}

extension P2PHost.Configuration {
    /// A copy with `change` applied.
    fileprivate func with(_ change: (inout Self) -> Void) -> Self {
        var copy = self
        change(&copy)
        return copy
    }
}
