import Foundation
import PointSub

/// `pointsub-bench dht [--nodes=N]`: an in-process Kademlia network on the in-memory transport.
/// Every node is a DHT server bootstrapped from one earlier node (chosen by a seeded generator),
/// then all refresh once. Then lookups of random peers from random nodes (the target's addresses
/// removed from the asker's peerstore first, so the network must find it): success rate, hops,
/// requests and latency per lookup; memory per node (resident size over the nodes); then the same
/// after a tenth of the nodes shut down.
enum DHTBench {
    static func run(nodes: Int, lookups: Int = 100) async throws {
        print("Kademlia DHT: \(nodes) in-process nodes (in-memory transport, Noise + Yamux), k = 20, α = 3")
        print("load average at start: \(RequestResponseBench.loadAverage())")
        let residentBefore = residentBytes()
        var hosts: [P2PHost] = []
        var dhts: [KademliaDHT] = []
        var generator = SplitMix64(seed: 2026)
        let started = ContinuousClock.now
        for index in 0..<nodes {
            var configuration = KademliaDHT.Configuration()
            configuration.refreshInterval = nil
            configuration.requestTimeout = .seconds(5)
            if index > 0 {
                let contact = Int.random(in: 0..<index, using: &generator)
                configuration.bootstrapPeers = [hosts[contact].addresses[0]]
            }
            let dht = KademliaDHT(configuration: configuration)
            let host = P2PHost(
                identity: .ed25519(seed: 500_000 + UInt64(index)),
                configuration: .defaults {
                    $0.transports = [.memory]
                    $0.listenAddresses = [Multiaddr("/memory/0")]
                    $0.services = [IdentifyService(), dht]
                    // A large in-process network: every node holds many connections.
                    $0.connectionManager.highWater = 10_000
                    $0.connectionManager.lowWater = 9_000
                })
            try await host.start()
            hosts.append(host)
            dhts.append(dht)
            if index > 0 { await dht.bootstrap() }
        }
        await withTaskGroup(of: Void.self) { group in
            for dht in dhts { group.addTask { await dht.refresh() } }
        }
        let built = ContinuousClock.now - started
        let perNode = max(0, residentBytes() - residentBefore) / nodes
        let tables = dhts.map(\.routingTablePeers.count).sorted()
        let connections = hosts.map(\.allConnections.count).reduce(0, +)
        print(
            "built in \(String(format: "%.1f", built.seconds)) s; routing table sizes p50 \(tables[tables.count / 2]), min \(tables.first!), max \(tables.last!); \(connections / 2) connections; resident memory \(perNode / 1024) KiB per node")

        try await measure("all nodes up", hosts: hosts, dhts: dhts, alive: Array(0..<nodes), lookups: lookups, generator: &generator)
        // A tenth of the nodes go away (never node 0, the first contact of many).
        var gone = Set<Int>()
        while gone.count < nodes / 10 { gone.insert(Int.random(in: 1..<nodes, using: &generator)) }
        for index in gone { dhts[index].stop(); await hosts[index].shutdown(gracePeriod: .zero) }
        let alive = (0..<nodes).filter { !gone.contains($0) }
        try await measure("after \(gone.count) nodes shut down", hosts: hosts, dhts: dhts, alive: alive, lookups: lookups, generator: &generator)
        print("load average at end: \(RequestResponseBench.loadAverage())")
        for index in alive { dhts[index].stop(); await hosts[index].shutdown(gracePeriod: .zero) }
    }

    static func measure(
        _ title: String, hosts: [P2PHost], dhts: [KademliaDHT], alive: [Int], lookups: Int,
        generator: inout SplitMix64
    ) async throws {
        var latencies: [Double] = []
        var hops: [Int] = []
        var queries: [Int] = []
        var failures = 0
        for _ in 0..<lookups {
            let origin = alive.randomElement(using: &generator)!
            var target = alive.randomElement(using: &generator)!
            while target == origin { target = alive.randomElement(using: &generator)! }
            hosts[origin].peerstore.removeAddresses(for: hosts[target].peerID)
            let start = ContinuousClock.now
            do {
                let found = try await dhts[origin].tracePeer(hosts[target].peerID)
                latencies.append((ContinuousClock.now - start).seconds * 1000)
                hops.append(found.hops)
                queries.append(found.queries)
                if !found.addresses.contains(hosts[target].listenAddresses[0]) { failures += 1 }
            } catch {
                failures += 1
            }
        }
        latencies.sort()
        hops.sort()
        queries.sort()
        func p(_ values: [Double], _ q: Double) -> Double { values.isEmpty ? .nan : values[min(values.count - 1, Int(Double(values.count) * q))] }
        func pi(_ values: [Int], _ q: Double) -> Int { values.isEmpty ? -1 : values[min(values.count - 1, Int(Double(values.count) * q))] }
        print(
            "\(title): \(lookups - failures)/\(lookups) found (\(String(format: "%.0f", Double(lookups - failures) * 100 / Double(lookups))) %); "
                + "latency p50 \(String(format: "%.2f", p(latencies, 0.5))) ms, p90 \(String(format: "%.2f", p(latencies, 0.9))) ms, "
                + "p99 \(String(format: "%.2f", p(latencies, 0.99))) ms; hops p50 \(pi(hops, 0.5)), max \(hops.last ?? -1); "
                + "requests per lookup p50 \(pi(queries, 0.5)), max \(queries.last ?? -1)")
    }

    static func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8),
            let pages = text.split(separator: " ").dropFirst().first.flatMap({ Int($0) })
        else { return 0 }
        return pages * 4096
    }
}
