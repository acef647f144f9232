import PointSub
import Testing

@testable import PubSub

/// Gossipsub v1.2 against v1.1 on the same network: 20 hosts on the in-memory transport, a random
/// graph of degree 6 (so the meshes hold every link and each node forwards to all its neighbours
/// but the sender), the same publishers and 32 KiB messages, each taking 50 ms to validate (as
/// large messages do: blocks, blobs). With IDONTWANT — sent before validation — fewer duplicate
/// copies (and bytes) arrive, every subscriber still gets every message exactly once, and the
/// IDONTWANT counters move only on v1.2.
///
/// (Without a validation delay the in-memory links are so fast that a node's copies are out before
/// its neighbours' IDONTWANTs come in: then v1.2 saves a few per cent only.)
@Suite(.serialized, .timeLimit(.minutes(3)))
struct GossipSubV12NetworkTests {
    /// `PubSubNetworkTests`' topic: its helpers wait for meshes of it.
    static let topic = PubSubNetworkTests.topic
    static let nodes = 20
    static let messages = 24
    static let size = 32 * 1024
    static let validation: Duration = .milliseconds(50)

    struct Figures: CustomStringConvertible {
        var duplicates = 0
        var duplicateBytes = 0
        var received = 0
        var suppressed = 0
        var idontwantSent = 0
        var idontwantReceived = 0
        var idontwantLeftOut = 0
        var idontwantIgnored = 0

        var description: String {
            "\(duplicates) duplicate copies (\(duplicateBytes / 1024) KiB) of \(received) received, \(suppressed) "
                + "queued copies left out; IDONTWANT: \(idontwantSent) IDs sent, \(idontwantReceived) received, "
                + "\(idontwantLeftOut) copies not sent for them, \(idontwantIgnored) ignored"
        }
    }

    @Test func idontwantCutsDuplicateBytes() async throws {
        let v11 = try await run(v12: false)
        let v12 = try await run(v12: true)
        print("GossipSubV12Network \(Self.nodes) nodes, \(Self.messages) messages of \(Self.size) bytes — "
            + "v1.1: \(v11); v1.2: \(v12)")
        #expect(v11.idontwantSent == 0 && v11.idontwantReceived == 0 && v11.idontwantLeftOut == 0)
        #expect(v12.idontwantSent > 0 && v12.idontwantReceived > 0)
        #expect(v12.idontwantIgnored == 0)
        #expect(v12.idontwantLeftOut > 0)
        // Fewer duplicates, by a clear margin (typically far more than a quarter fewer).
        #expect(Double(v12.duplicateBytes) < 0.75 * Double(v11.duplicateBytes))
    }

    /// One network, one protocol: every node subscribes, messages are published one after the
    /// other (each once every node has the previous one), and the counters summed.
    func run(v12: Bool) async throws -> Figures {
        var random = SplitMix64(seed: 12)
        let graph = SparseGraph.random(nodes: Self.nodes, degree: 6, using: &random)
        let everyone = Set(0..<Self.nodes)
        let publishers = Array((0..<Self.nodes).shuffled(using: &random).prefix(4))
        let router = { (index: Int) -> any PubSubRouter in
            let configuration = GossipSubConfiguration.defaults {
                $0.heartbeatInterval = .milliseconds(100)
                $0.meshsubV12 = v12
            }
            return try! GossipSubRouter(configuration: configuration, seed: 1200 + UInt64(index))
        }
        return try await PubSubTestNetwork.with(nodes: Self.nodes, edges: graph.edges, router: router) { net in
            // Every link negotiated the newest protocol both ends speak.
            let expected = v12 ? GossipSubRouter.meshsubV12 : GossipSubRouter.meshsubV11
            for (a, b) in graph.edges {
                let negotiated = net.services[a].withRouter { ($0 as? GossipSubRouter)?.protocolOf(net.peerID(b)) }
                #expect(negotiated == expected)
            }
            let collectors = try net.services.map { Collector(try $0.subscribe(Self.topic)) }
            for service in net.services {
                service.setValidator(Self.topic) { _ in
                    try? await Task.sleep(for: Self.validation)
                    return .accept
                }
            }
            try await net.waitForSubscriptions(Self.topic, subscribers: everyone)
            let tests = PubSubNetworkTests()
            try await tests.waitForMeshes(net, graph: graph, subscribers: everyone)
            let before = net.counters
            var sent: [Int] = []
            for n in 0..<Self.messages {
                let publisher = publishers[n % publishers.count]
                var data = [UInt8](repeating: UInt8(n), count: Self.size)
                data[0] = UInt8(publisher)
                try await net.services[publisher].publish(Self.topic, data)
                sent.append(publisher)
                try await net.waitUntil("message \(n) reached every node", timeout: .seconds(30)) {
                    collectors.indices.allSatisfy { i in collectors[i].messages.count >= sent.count(where: { $0 != i }) }
                }
            }
            try await tests.waitForQuiescence(net)
            for (index, collector) in collectors.enumerated() {
                let expected = sent.count { $0 != index }
                #expect(collector.messages.count == expected, "node \(index) got each message once")
            }
            var figures = Figures()
            for (b, a) in zip(before, net.counters) {
                #expect(a.routed - b.routed == Self.messages)
                #expect(a.dropped == 0 && a.badRPCs == 0)
                figures.duplicates += a.duplicates - b.duplicates
                figures.received += a.received - b.received
                figures.suppressed += a.suppressed - b.suppressed
                figures.idontwantSent += a.idontwantSent - b.idontwantSent
                figures.idontwantReceived += a.idontwantReceived - b.idontwantReceived
                figures.idontwantLeftOut += a.idontwantLeftOut - b.idontwantLeftOut
                figures.idontwantIgnored += a.idontwantIgnored - b.idontwantIgnored
            }
            figures.duplicateBytes = figures.duplicates * Self.size
            return figures
        }
    }
}
