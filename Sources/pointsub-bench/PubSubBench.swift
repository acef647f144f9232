import Foundation
import NIOConcurrencyHelpers
import NIOPosix
import PointSub
import PubSub

/// `pointsub-bench pubsub`: a broadcast network in this process — 50 hosts on loopback (Noise +
/// Yamux over TCP), each with a `PubSubService`, linked as a random 6-regular graph from a fixed
/// seed, all subscribed to one topic. Messages are published at a fixed rate from random nodes;
/// every node timestamps what it receives. Gossipsub with its defaults (1 s heartbeat; v1.2,
/// or v1.1 with `--protocol=1.1`, or both one after the other with `--protocol=both`), then
/// floodsub, on the same graph.
///
/// Figures per router: delivery latency (publish → delivery at each subscriber, one clock) p50,
/// p99 and max; deliveries per second; copies received per node per message and transmissions per
/// message (from the engines' counters); duplicate bytes received per message (all nodes) and the
/// v1.2 IDONTWANT figures; whether every node got every message exactly once.
enum PubSubBench {
    enum Router: String, CaseIterable {
        /// Gossipsub v1.2 (`/meshsub/1.2.0`, IDONTWANT): the default.
        case gossipsub
        /// Gossipsub limited to v1.1 (`GossipSubConfiguration.meshsubV12` off).
        case gossipsub11 = "gossipsub-1.1"
        case floodsub
    }

    struct Options {
        var nodes = 50
        var degree = 6
        var rate = 100
        /// nil: 10 s, 3 s with `--quick`.
        var measure: Duration?
        var warmUp: Duration = .seconds(1)
        var payloadSize = 128
        /// A topic validator that takes this long per message (as large messages take to check:
        /// blocks, blobs); nil: none.
        var validation: Duration?
        var seed: UInt64 = 1
        var routers: [Router] = [.gossipsub, .floodsub]
    }

    static let topic = "bench"
    static let targetP99 = 50.0  // ms
    static let targetRate = 100

    struct Result {
        var router: Router
        var messages: Int
        var deliveries: Int
        var expectedDeliveries: Int
        var duplicateDeliveries: Int
        var p50: Double
        var p99: Double
        var max: Double
        var deliveriesPerSecond: Double
        var copiesPerNodePerMessage: Double
        var duplicatesPerNodePerMessage: Double
        var transmissionsPerMessage: Double
        /// Transmissions the engine left out because the peer had sent us the message meanwhile.
        var suppressedPerMessage: Double
        /// Bytes of duplicate copies received per message, all nodes together (copies × the
        /// message's framed RPC size, which is the same for every message of a run).
        var duplicateBytesPerMessage: Double
        /// Gossipsub v1.2: IDONTWANT message IDs sent per message, and copies not sent per message
        /// because the peer had sent IDONTWANT.
        var idontwantPerMessage: Double
        /// Bytes of those IDONTWANTs per message (each a framed RPC of its own).
        var idontwantBytesPerMessage: Double
        var idontwantLeftOutPerMessage: Double
        var cpuPercent: Double
        /// Process CPU time per message (all nodes), ms.
        var cpuPerMessage: Double
        /// Time our threads were ready to run but waited for a core (other processes had them),
        /// as a share of the wall time: more than a few % and the figures are not this code's alone.
        var cpuWaitPercent: Double
        var publisherLag: Double
        var meshDegree: Double?
        var complete: Bool { deliveries == expectedDeliveries && duplicateDeliveries == 0 }
    }

    static func run(quick: Bool, options given: Options) async throws {
        var options = given
        options.measure = given.measure ?? .seconds(quick ? 3 : 10)
        if quick { options.warmUp = .milliseconds(500) }
        let graph = randomRegularGraph(nodes: options.nodes, degree: options.degree, seed: options.seed)
        let degrees = (0..<options.nodes).map { node in graph.count(where: { $0.0 == node || $0.1 == node }) }
        print("pubsub broadcast: \(options.nodes) nodes in this process (loopback TCP, Noise + Yamux), random "
            + "\(options.degree)-regular graph (seed \(options.seed); \(graph.count) links, degree "
            + (degrees.min() == degrees.max() ? "\(degrees.min()!)" : "\(degrees.min()!)–\(degrees.max()!)")
            + "), all subscribed to one topic")
        if let validation = options.validation { print("every node validates each message for \(validation) (a topic validator that sleeps)") }
        print("\(options.rate) messages/s of \(options.payloadSize) bytes from random publishers for \(options.measure!) "
            + "after \(options.warmUp) of warm-up; gossipsub with its defaults (D = 6, heartbeat 1 s)")
        print("latency: publish call → delivery to each subscriber (same clock); copies: messages received per node "
            + "per message (duplicates included); tx: transmissions per message; CPU: of \(ProcessInfo.processInfo.activeProcessorCount * 100) %")
        print("started \(Date()), load average at start: \(RequestResponseBench.loadAverage())")
        let columns: [(String, Int)] = [
            ("router", 13), ("msgs", 6), ("deliv/s", 9), ("p50 ms", 8), ("p99 ms", 8), ("max ms", 8),
            ("copies", 7), ("dups", 6), ("dup KiB", 8), ("tx/msg", 8), ("left out", 9), ("IDW", 6), ("IDW KiB", 8), ("IDW out", 8),
            ("mesh", 5), ("CPU %", 6), ("CPU ms/msg", 11), ("waited %", 9), ("lag ms", 7), ("complete", 10),
        ]
        let header = columns.enumerated().map { i, c in RequestResponseBench.pad(c.0, c.1, right: i > 0) }.joined(separator: " ")
        print(String(repeating: "-", count: header.count))
        print(header)
        print(String(repeating: "-", count: header.count))
        var results: [Result] = []
        for router in options.routers {
            let result = try await measure(router, graph: graph, options: options)
            results.append(result)
            let cells = [
                router.rawValue, "\(result.messages)", String(format: "%.0f", result.deliveriesPerSecond),
                String(format: "%.2f", result.p50), String(format: "%.2f", result.p99), String(format: "%.1f", result.max),
                String(format: "%.2f", result.copiesPerNodePerMessage), String(format: "%.2f", result.duplicatesPerNodePerMessage),
                String(format: "%.0f", result.duplicateBytesPerMessage / 1024),
                String(format: "%.1f", result.transmissionsPerMessage), String(format: "%.1f", result.suppressedPerMessage),
                String(format: "%.1f", result.idontwantPerMessage), String(format: "%.1f", result.idontwantBytesPerMessage / 1024),
                String(format: "%.1f", result.idontwantLeftOutPerMessage),
                result.meshDegree.map { String(format: "%.1f", $0) } ?? "-",
                String(format: "%.0f", result.cpuPercent), String(format: "%.2f", result.cpuPerMessage),
                String(format: "%.0f", result.cpuWaitPercent),
                String(format: "%.1f", result.publisherLag),
                result.complete ? "yes" : "NO",
            ]
            print(zip(cells, columns).enumerated().map { i, c in RequestResponseBench.pad(c.0, c.1.1, right: i > 0) }
                .joined(separator: " "))
            if !result.complete {
                print("  \(result.deliveries) of \(result.expectedDeliveries) deliveries, \(result.duplicateDeliveries) delivered twice")
            }
        }
        print(String(repeating: "-", count: header.count))
        print("dup KiB: bytes of duplicate copies received per message, all nodes (copies × the framed RPC);")
        print("left out: transmissions per message not made because the peer had sent us the message (or, v1.2,")
        print("IDONTWANT for it) while ours was queued; IDW: IDONTWANT IDs sent per message (IDW KiB: their bytes,")
        print("one framed RPC each); IDW out: copies per message")
        print("the routers did not send because the peer had sent IDONTWANT;")
        print("mesh: average gossipsub mesh size; lag: how late the publisher was against its schedule, at most;")
        print("waited: time our threads were ready but had no core (other processes), share of wall time")
        print("load average at end: \(RequestResponseBench.loadAverage())")
        let met = results.allSatisfy { $0.complete && $0.p99 < targetP99 } && options.rate >= targetRate
        let figures = results.map { String(format: "%@ p99 %.2f ms", $0.router.rawValue, $0.p99) }.joined(separator: ", ")
        print("target: p99 < \(Int(targetP99)) ms at \(targetRate) msg/s — \(met ? "met" : "not met")"
            + " (\(options.rate) msg/s: \(figures))")
    }

    /// One delivery: which message, when it was published and delivered (ns since the run's origin).
    struct Sample {
        var index: Int32
        var published: Int64
        var delivered: Int64
    }

    static func measure(_ router: Router, graph: [(Int, Int)], options: Options) async throws -> Result {
        let n = options.nodes
        var hosts: [P2PHost] = []
        var services: [PubSubService] = []
        func tearDown() async {
            for service in services { await service.stop(gracePeriod: .milliseconds(500)) }
            await withTaskGroup(of: Void.self) { group in
                for host in hosts { group.addTask { await host.shutdown(gracePeriod: .milliseconds(100)) } }
            }
        }
        do {
            for index in 0..<n {
                let host = P2PHost(identity: .generateEd25519(), configuration: .defaults {
                    $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")]
                    $0.services = [IdentifyService()]
                })
                hosts.append(host)
                try await host.start()
                let pubsubRouter: any PubSubRouter =
                    switch router {
                    case .floodsub: FloodSubRouter()
                    case .gossipsub: try GossipSubRouter(seed: options.seed &+ UInt64(index))
                    case .gossipsub11:
                        try GossipSubRouter(configuration: .defaults { $0.meshsubV12 = false },
                                            seed: options.seed &+ UInt64(index))
                    }
                let service = try PubSubService(host: host, router: pubsubRouter)
                services.append(service)
                try service.start()
            }
            for (a, b) in graph { _ = try await hosts[a].connect(to: hosts[b].addresses[0]) }
            let neighbours = (0..<n).map { node in graph.compactMap { $0.0 == node ? $0.1 : $0.1 == node ? $0.0 : nil } }
            try await waitUntil("every link has its pubsub streams") {
                (0..<n).allSatisfy { a in neighbours[a].allSatisfy { services[a].peers.contains(hosts[$0].peerID) } }
            }

            let origin = ContinuousClock.now
            let samples = (0..<n).map { _ in NIOLockedValueBox<[Sample]>([]) }
            var consumers: [Task<Void, Never>] = []
            defer { consumers.forEach { $0.cancel() } }
            for node in 0..<n {
                let subscription = try services[node].subscribe(topic)
                if let validation = options.validation {
                    services[node].setValidator(topic) { _ in
                        try? await Task.sleep(for: validation)
                        return .accept
                    }
                }
                let box = samples[node]
                consumers.append(Task {
                    for await message in subscription {
                        let delivered = nanoseconds(ContinuousClock.now - origin)
                        let (index, published) = decode(message.data)
                        box.withLockedValue { $0.append(Sample(index: index, published: published, delivered: delivered)) }
                    }
                })
            }
            try await waitUntil("every node knows its neighbours subscribe") {
                (0..<n).allSatisfy { a in
                    let known = Set(services[a].peers(topic: topic))
                    return neighbours[a].allSatisfy { known.contains(hosts[$0].peerID) }
                }
            }
            var meshDegree: Double?
            if router != .floodsub {
                let dLow = GossipSubConfiguration().dLow
                let peerIndex = Dictionary(uniqueKeysWithValues: hosts.enumerated().map { ($1.peerID, $0) })
                func meshes() -> [Set<Int>] {
                    services.map { service in
                        let peers = service.withRouter { ($0 as? GossipSubRouter)?.meshPeers(in: topic) } ?? []
                        return Set(peers.compactMap { peerIndex[$0] })
                    }
                }
                try await waitUntil("gossipsub meshes formed") {
                    let mesh = meshes()
                    return (0..<n).allSatisfy { node in
                        mesh[node].count >= min(dLow, neighbours[node].count) && mesh[node].allSatisfy { mesh[$0].contains(node) }
                    }
                }
                meshDegree = Double(meshes().reduce(0) { $0 + $1.count }) / Double(n)
            }

            var random = SplitMix64(seed: options.seed ^ 0x5EED)
            var publisherOf: [Int] = []
            var lag: Duration = .zero
            /// Publishes messages `range` at `rate`, starting now.
            func publish(_ range: Range<Int>) async throws {
                let start = ContinuousClock.now
                let interval = Duration.seconds(1) / options.rate
                for (offset, index) in range.enumerated() {
                    let due = start + interval * offset
                    let now = ContinuousClock.now
                    if now < due { try await Task.sleep(until: due, clock: .continuous) } else { lag = max(lag, now - due) }
                    let publisher = Int(random.next() % UInt64(n))
                    publisherOf.append(publisher)
                    let published = nanoseconds(ContinuousClock.now - origin)
                    try await services[publisher].publish(topic, encode(Int32(index), published, size: options.payloadSize))
                }
            }
            /// Every node has every message published so far but its own (counts only: cheap to poll).
            func receivedAll() -> Bool {
                var published = Array(repeating: publisherOf.count, count: n)
                for publisher in publisherOf { published[publisher] -= 1 }
                return (0..<n).allSatisfy { node in samples[node].withLockedValue(\.count) >= published[node] }
            }

            // Warm-up: streams, caches and allocators in use; its messages are not counted.
            let warmUpCount = max(1, Int(options.warmUp / .seconds(1) * Double(options.rate)))
            try await publish(0..<warmUpCount)
            try await waitUntil("the warm-up messages arrived", timeout: .seconds(30)) { receivedAll() }
            try await waitUntil("warm-up transmissions ended", timeout: .seconds(10)) { quiet(services) }
            lag = .zero

            let before = services.map(\.counters)
            let cpuBefore = RequestResponseBench.processCPUTime()
            let waitBefore = runQueueWait()
            let measured = warmUpCount..<(warmUpCount + Int(options.measure! / .seconds(1) * Double(options.rate)))
            let measureStart = ContinuousClock.now
            try await publish(measured)
            let lastPublish = ContinuousClock.now
            try? await waitUntil("the measured messages arrived", timeout: .seconds(10)) { receivedAll() }
            let cpuSeconds = RequestResponseBench.processCPUTime() - cpuBefore
            let waited = runQueueWait() - waitBefore
            let measuredWall = (ContinuousClock.now - measureStart).seconds
            try? await waitUntil("transmissions ended", timeout: .seconds(5)) { quiet(services) }
            let after = services.map(\.counters)

            var latencies: [Int64] = []
            var deliveries = 0
            var duplicateDeliveries = 0
            var lastDelivery = nanoseconds(lastPublish - origin)
            for node in 0..<n {
                var seen = Set<Int32>()
                for sample in samples[node].withLockedValue({ $0 }) where measured.contains(Int(sample.index)) {
                    if !seen.insert(sample.index).inserted { duplicateDeliveries += 1 }
                    deliveries += 1
                    latencies.append(sample.delivered - sample.published)
                    lastDelivery = max(lastDelivery, sample.delivered)
                }
            }
            latencies.sort()
            func percentile(_ q: Double) -> Double {
                guard !latencies.isEmpty else { return .nan }
                return Double(latencies[min(latencies.count - 1, Int(Double(latencies.count) * q))]) / 1e6
            }
            let expected = measured.count * (n - 1)  // everyone but the author
            let window = Double(lastDelivery - nanoseconds(measureStart - origin)) / 1e9
            let messages = measured.count
            func total(_ key: KeyPath<PubSubCounters, Int>) -> Int {
                zip(before, after).reduce(0) { $0 + $1.1[keyPath: key] - $1.0[keyPath: key] }
            }
            let duplicateBytes = Double(total(\.duplicates) * messageWireSize(payload: options.payloadSize))
            let result = Result(
                router: router, messages: messages, deliveries: deliveries, expectedDeliveries: expected,
                duplicateDeliveries: duplicateDeliveries, p50: percentile(0.5), p99: percentile(0.99),
                max: latencies.last.map { Double($0) / 1e6 } ?? .nan, deliveriesPerSecond: Double(deliveries) / window,
                copiesPerNodePerMessage: Double(total(\.received)) / Double(messages * n),
                duplicatesPerNodePerMessage: Double(total(\.duplicates)) / Double(messages * n),
                transmissionsPerMessage: Double(total(\.forwarded)) / Double(messages),
                suppressedPerMessage: Double(total(\.suppressed)) / Double(messages),
                duplicateBytesPerMessage: duplicateBytes / Double(messages),
                idontwantPerMessage: Double(total(\.idontwantSent)) / Double(messages),
                idontwantBytesPerMessage: Double(total(\.idontwantSent) * idontwantWireSize) / Double(messages),
                idontwantLeftOutPerMessage: Double(total(\.idontwantLeftOut)) / Double(messages),
                cpuPercent: cpuSeconds / (lastPublish - measureStart).seconds * 100,
                cpuPerMessage: cpuSeconds * 1000 / Double(messages),
                cpuWaitPercent: waited / measuredWall * 100,
                publisherLag: Double(nanoseconds(lag)) / 1e6, meshDegree: meshDegree)
            let dropped = total(\.dropped) + total(\.subscriberOverflows)
            if dropped > 0 { print("  (\(router.rawValue): \(dropped) RPCs or deliveries dropped by full queues)") }
            await tearDown()
            return result
        } catch {
            await tearDown()
            throw error
        }
    }

    /// Seconds this process's threads have spent ready to run but waiting for a core
    /// (`/proc/self/task/*/schedstat`, second field); 0 where that is not available.
    static func runQueueWait() -> Double {
        guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task") else { return 0 }
        var nanoseconds = 0.0
        for task in tasks {
            guard let text = try? String(contentsOfFile: "/proc/self/task/\(task)/schedstat", encoding: .utf8) else { continue }
            let fields = text.split(separator: " ")
            if fields.count >= 2, let wait = Double(fields[1]) { nanoseconds += wait }
        }
        return nanoseconds / 1e9
    }

    /// Bytes of one framed RPC carrying one message of the run: StrictSign with an Ed25519 author
    /// (38-byte peer ID, no `key`), 8-byte seqno, 64-byte signature, the topic, `payload` bytes.
    static func messageWireSize(payload: Int) -> Int {
        let message = PubSubRPC.Message(
            from: [UInt8](repeating: 1, count: 38), data: [UInt8](repeating: 0, count: max(12, payload)),
            seqno: [UInt8](repeating: 1, count: 8), topic: topic, signature: [UInt8](repeating: 1, count: 64))
        let rpc = PubSubRPC(messages: [message]).encoded().count
        return Varint.encodedLength(UInt64(rpc)) + rpc
    }

    /// Bytes of one framed IDONTWANT RPC with one message ID of the run (author ‖ seqno, 46 bytes).
    static let idontwantWireSize: Int = {
        let rpc = PubSubRPC(control: .init(idontwant: [.init(messageIDs: [[UInt8](repeating: 1, count: 38 + 8)])])).encoded()
        return Varint.encodedLength(UInt64(rpc.count)) + rpc.count
    }()

    /// Every copy written has been read: Σ received = Σ forwarded.
    static func quiet(_ services: [PubSubService]) -> Bool {
        let counters = services.map(\.counters)
        return counters.reduce(0) { $0 + $1.received } == counters.reduce(0) { $0 + $1.forwarded }
    }

    static func waitUntil(_ what: String, timeout: Duration = .seconds(20), _ condition: () -> Bool) async throws {
        let deadline = Deadline.after(timeout)
        while !condition() {
            guard !deadline.hasPassed else { throw BenchError("pubsub: timed out waiting until \(what)") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    static func nanoseconds(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000
    }

    /// index (4 bytes) ‖ publish time in ns since the origin (8 bytes) ‖ zero padding to `size`.
    static func encode(_ index: Int32, _ published: Int64, size: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: max(12, size))
        withUnsafeBytes(of: index.bigEndian) { bytes.replaceSubrange(0..<4, with: $0) }
        withUnsafeBytes(of: published.bigEndian) { bytes.replaceSubrange(4..<12, with: $0) }
        return bytes
    }

    static func decode(_ bytes: [UInt8]) -> (Int32, Int64) {
        var index: Int32 = 0
        var published: Int64 = 0
        for byte in bytes[0..<4] { index = index << 8 | Int32(byte) }
        for byte in bytes[4..<12] { published = published << 8 | Int64(byte) }
        return (index, published)
    }

    /// A random connected graph in which every node has `degree` links (one node one fewer when
    /// nodes × degree is odd): links drawn between random nodes that still lack some, restarting
    /// when the draw gets stuck or the graph is not connected.
    static func randomRegularGraph(nodes: Int, degree: Int, seed: UInt64) -> [(Int, Int)] {
        precondition(nodes > degree && degree >= 2)
        var random = SplitMix64(seed: seed)
        while true {
            var edges: [(Int, Int)] = []
            var adjacent = Array(repeating: Set<Int>(), count: nodes)
            var stuck = false
            while true {
                let open = (0..<nodes).filter { adjacent[$0].count < degree }
                if open.count < 2 { break }
                let a = open[Int(random.next() % UInt64(open.count))]
                let partners = open.filter { $0 != a && !adjacent[a].contains($0) }
                if partners.isEmpty {
                    stuck = true
                    break
                }
                let b = partners[Int(random.next() % UInt64(partners.count))]
                edges.append((min(a, b), max(a, b)))
                adjacent[a].insert(b)
                adjacent[b].insert(a)
            }
            // A restart also when the last node lacking links has only neighbours left.
            if stuck || 2 * edges.count < nodes * degree - 1 { continue }
            var reached: Set<Int> = [0]
            var frontier = [0]
            while let node = frontier.popLast() {
                for other in adjacent[node] where reached.insert(other).inserted { frontier.append(other) }
            }
            if reached.count == nodes { return edges }
        }
    }
}
