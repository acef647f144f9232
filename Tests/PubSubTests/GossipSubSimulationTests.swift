import Identity
import Testing
@testable import PubSub

/// Many routers on a sparse random graph, RPCs shuttled in memory by a tiny engine stand-in: the
/// seen cache per node, SUBSCRIBE announcements, `route` once per new message, time moved by hand.
struct GossipSubNetwork {
    /// A node is a gossipsub router, or (nil) a floodsub peer the driver floods for.
    var routers: [GossipSubRouter?]
    let ids: [PeerID]
    let index: [PeerID: Int]
    var neighbours: [Set<Int>]
    var seen: [Set<MessageID>]
    var deliveries: [[MessageID: Int]]
    var subscriptions: [Set<String>]
    var queue: [(from: Int, to: Int, rpc: PubSubRPC)] = []
    var now: ContinuousClock.Instant
    var rpcCount = 0

    init(gossipNodes: Int, floodsubNodes: Int = 0, now: ContinuousClock.Instant, seed: UInt64) throws {
        let count = gossipNodes + floodsubNodes
        routers = try (0..<count).map { i in
            i < gossipNodes ? try GossipSubRouter(seed: seed &+ UInt64(i)) : nil
        }
        ids = (0..<count).map { testPeer(1000 + $0) }
        index = Dictionary(uniqueKeysWithValues: ids.enumerated().map { ($1, $0) })
        neighbours = Array(repeating: [], count: count)
        seen = Array(repeating: [], count: count)
        deliveries = Array(repeating: [:], count: count)
        subscriptions = Array(repeating: [], count: count)
        self.now = now
    }

    func protocolID(of node: Int) -> String {
        routers[node] == nil ? GossipSubRouter.floodsub : GossipSubRouter.meshsubV11
    }

    /// `dialer` connects to `listener`; each side announces its subscriptions (the engine's hello).
    mutating func connect(_ dialer: Int, _ listener: Int) {
        guard dialer != listener, !neighbours[dialer].contains(listener) else { return }
        neighbours[dialer].insert(listener)
        neighbours[listener].insert(dialer)
        for (a, b, outbound) in [(dialer, listener, true), (listener, dialer, false)] {
            if routers[a] != nil {
                let actions = routers[a]!.addPeer(ids[b], protocolID: protocolID(of: b), outbound: outbound, now: now)
                enqueue(from: a, actions)
            }
            if !subscriptions[a].isEmpty {
                queue.append((a, b, PubSubRPC(subscriptions: subscriptions[a].sorted().map { .init(subscribe: true, topic: $0) })))
            }
        }
    }

    mutating func join(_ node: Int, _ topic: String) {
        subscriptions[node].insert(topic)
        for peer in neighbours[node].sorted() {
            queue.append((node, peer, PubSubRPC(subscriptions: [.init(subscribe: true, topic: topic)])))
        }
        if routers[node] != nil { enqueue(from: node, routers[node]!.join(topic, now: now)) }
    }

    mutating func publish(from node: Int, seqno: Int, topic: String) -> MessageID {
        let (message, id) = testMessage(seqno, topic: topic, author: ids[node])
        seen[node].insert(id)
        deliveries[node][id, default: 0] += 1
        if routers[node] != nil {
            enqueue(from: node, routers[node]!.route(message, id: id, from: nil, now: now))
        } else {
            flood(message, from: node, source: nil)
        }
        return id
    }

    mutating func heartbeat(advancing interval: Duration = .seconds(1)) {
        now += interval
        for node in routers.indices where routers[node] != nil {
            enqueue(from: node, routers[node]!.heartbeat(now: now))
        }
    }

    mutating func enqueue(from node: Int, _ actions: [PubSubRouterAction]) {
        for action in actions {
            switch action {
            case .send(let peer, let rpc): queue.append((node, index[peer]!, rpc))
            }
        }
    }

    /// Floodsub: every new message to every neighbour subscribed to its topic, except where it
    /// came from and its author.
    mutating func flood(_ message: PubSubRPC.Message, from node: Int, source: Int?) {
        for peer in neighbours[node].sorted() where peer != source && ids[peer].bytes != message.from {
            // A floodsub node knows its neighbours' subscriptions from their announcements; the
            // driver's record of them is the same thing.
            if subscriptions[peer].contains(message.topic) {
                queue.append((node, peer, PubSubRPC(messages: [message])))
            }
        }
    }

    /// Delivers queued RPCs until none are left (bounded, so a routing loop fails the test).
    mutating func run(limit: Int = 1_000_000) {
        var delivered = 0
        while !queue.isEmpty && delivered < limit {
            let batch = queue
            queue = []
            for (from, to, rpc) in batch { deliver(rpc, from: from, to: to) }
            delivered += batch.count
        }
        rpcCount += delivered
    }

    mutating func deliver(_ rpc: PubSubRPC, from: Int, to node: Int) {
        let peer = ids[from]
        guard var router = routers[node] else {
            // Floodsub node: messages only.
            for message in rpc.messages {
                let id = (message.from ?? []) + (message.seqno ?? [])
                guard seen[node].insert(id).inserted else { continue }
                deliveries[node][id, default: 0] += 1
                flood(message, from: node, source: from)
            }
            return
        }
        routers[node] = nil  // the router is moved out while it works
        guard !router.isGraylisted(peer) else {
            routers[node] = router
            return
        }
        for sub in rpc.subscriptions {
            enqueue(from: node, router.peerSubscription(peer, topic: sub.topic, subscribed: sub.subscribe, now: now))
        }
        for message in rpc.messages {
            let id = (message.from ?? []) + (message.seqno ?? [])
            if seen[node].insert(id).inserted {
                deliveries[node][id, default: 0] += 1
                enqueue(from: node, router.route(message, id: id, from: peer, now: now))
            } else {
                router.duplicateMessage(message, id: id, from: peer, now: now)
            }
        }
        if let control = rpc.control {
            let seenHere = seen[node]
            enqueue(from: node, router.handleControl(control, from: peer, now: now, isSeen: { seenHere.contains($0) }))
        }
        routers[node] = router
    }
}

@Suite struct GossipSubSimulationTests {
    /// Node i dials i+1 and i+2 (a ring, so the graph is connected) and two random others.
    static func build(_ network: inout GossipSubNetwork, seed: UInt64) {
        var random = SplitMix64(seed: seed)
        let count = network.routers.count
        for i in 0..<count {
            network.connect(i, (i + 1) % count)
            network.connect(i, (i + 2) % count)
            var added = 0
            while added < 2 {
                let j = Int.random(in: 0..<count, using: &random)
                if j != i && !network.neighbours[i].contains(j) {
                    network.connect(i, j)
                    added += 1
                }
            }
        }
        network.run()
    }

    @Test(arguments: [UInt64(1), 2, 3])
    func everySubscriberGetsEveryMessageOnceAndMeshesSettle(seed: UInt64) throws {
        var network = try GossipSubNetwork(gossipNodes: 20, now: .now, seed: seed * 1000)
        Self.build(&network, seed: seed)
        for node in 0..<20 { network.join(node, "t") }
        network.run()
        for _ in 1...5 {
            network.heartbeat()
            network.run()
        }

        var random = SplitMix64(seed: seed)
        var published: [MessageID] = []
        for seqno in 1...30 {
            published.append(network.publish(from: Int.random(in: 0..<20, using: &random), seqno: seqno, topic: "t"))
            network.run()
            if seqno % 3 == 0 {
                network.heartbeat()
                network.run()
            }
        }
        for _ in 1...3 {
            network.heartbeat()
            network.run()
        }

        for node in 0..<20 {
            for id in published { #expect(network.deliveries[node][id] == 1, "node \(node)") }
            let router = try #require(network.routers[node])
            let mesh = router.meshPeers(in: "t")
            #expect((4...12).contains(mesh.count), "node \(node) has mesh degree \(mesh.count)")
            // Meshes are symmetric once the RPCs have settled.
            for peer in mesh {
                #expect(network.routers[network.index[peer]!]!.meshPeers(in: "t").contains(network.ids[node]))
            }
            #expect(network.neighbours[node].allSatisfy { router.score(of: network.ids[$0]) >= 0 })
        }
    }

    @Test func floodsubNodesAndNonSubscribersTakePart() throws {
        // 16 gossipsub nodes (two of which do not subscribe) and 4 floodsub nodes.
        var network = try GossipSubNetwork(gossipNodes: 16, floodsubNodes: 4, now: .now, seed: 77)
        Self.build(&network, seed: 7)
        let subscribers = (0..<20).filter { $0 != 3 && $0 != 9 }
        for node in subscribers { network.join(node, "t") }
        network.run()
        for _ in 1...5 {
            network.heartbeat()
            network.run()
        }

        var published: [MessageID] = []
        // Publishers include a floodsub node (17) and a gossipsub node not subscribed (3).
        for (seqno, node) in [0, 17, 3, 5, 18, 12, 3, 19].enumerated() {
            published.append(network.publish(from: node, seqno: seqno + 1, topic: "t"))
            network.run()
            network.heartbeat()
            network.run()
        }
        for node in subscribers {
            for id in published { #expect(network.deliveries[node][id] == 1, "node \(node)") }
        }
        for node in [3, 9] {
            #expect(network.routers[node]!.joinedTopics.isEmpty)
        }
        for node in 0..<16 where subscribers.contains(node) {
            #expect(!network.routers[node]!.meshPeers(in: "t").contains { network.routers[network.index[$0]!] == nil })
        }
    }
}
