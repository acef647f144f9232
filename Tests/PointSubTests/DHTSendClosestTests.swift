import NIOConcurrencyHelpers
import NIOCore
import Testing

import PointSub
@testable import PointSubCore

// Everything here is private: other test files of this target are written in parallel.

private let servedProtocol = "/pointsub/dht-closest-test/1.0.0"

// MARK: - An independent XOR ordering (the reference SHA-256 of TestSupport.swift)

/// `a` is nearer than `b` to `target` by XOR of big-endian 32-byte digests.
private func nearer(_ target: [UInt8], _ a: [UInt8], _ b: [UInt8]) -> Bool {
    for i in 0..<32 where a[i] ^ target[i] != b[i] ^ target[i] {
        return a[i] ^ target[i] < b[i] ^ target[i]
    }
    return false
}

/// `peers` sorted by the XOR of SHA-256(peer ID) with `point`, nearest first.
private func byDistance(to point: [UInt8], _ peers: [PeerID]) -> [PeerID] {
    let hashes = Dictionary(uniqueKeysWithValues: peers.map { ($0, referenceSHA256($0.bytes)) })
    return peers.sorted { nearer(point, hashes[$0]!, hashes[$1]!) }
}

/// The order the network should answer `request` in when `sendClosest` gets no key: the DHT key
/// is SHA-256(request), and the DHT's point is the SHA-256 of that.
private func expectedOrder(request: [UInt8], serving: [PeerID]) -> [PeerID] {
    byDistance(to: referenceSHA256(referenceSHA256(request)), serving)
}

// MARK: - ClosestNodeCache, without sockets

@Suite struct ClosestNodeCacheTests {
    let start = ContinuousClock.now

    /// The `k` peers nearest to SHA-256(key), as an exact lookup would find them.
    private func lookup(_ key: [UInt8], in peers: [PeerID], k: Int) -> [PeerID] {
        Array(byDistance(to: referenceSHA256(key), peers).prefix(k))
    }

    @Test func theSameKeyGetsTheCachedServingNodesInOrder() {
        let peers = (0..<30).map { PrivateKey.ed25519(seed: 9000 + UInt64($0)).peerID }
        let serving = Set(peers.enumerated().filter { $0.offset % 3 == 0 }.map(\.element))
        var cache = ClosestNodeCache(ttl: .seconds(30), maxEntries: 8)
        let key = Array("key one".utf8)
        let found = lookup(key, in: peers, k: 20)
        let stored = cache.store(
            protocol: "/p", key: key, closest: found.reversed().map { ($0, serving.contains($0) ? .yes : .no) },
            wholeNetwork: false, now: start)
        let expected = found.filter(serving.contains)
        #expect(stored == expected)
        #expect(cache.answer(protocol: "/p", key: key, count: 20, excluding: [], now: start) == .nodes(expected))
        #expect(cache.answer(protocol: "/p", key: key, count: 2, excluding: [], now: start) == .nodes(Array(expected.prefix(2))))
        #expect(
            cache.answer(protocol: "/p", key: key, count: 20, excluding: [expected[0]], now: start)
                == .nodes(Array(expected.dropFirst())))
        // Another protocol knows nothing; after the TTL nothing is known.
        #expect(cache.answer(protocol: "/q", key: key, count: 20, excluding: [], now: start) == .miss)
        #expect(cache.answer(protocol: "/p", key: key, count: 20, excluding: [], now: start + .seconds(30)) == .miss)
        #expect(cache.count == 0)
    }

    @Test func aDroppedNodeIsNotOfferedAndAllDroppedIsAMiss() {
        let peers = (0..<10).map { PrivateKey.ed25519(seed: 9100 + UInt64($0)).peerID }
        var cache = ClosestNodeCache(ttl: .seconds(30), maxEntries: 8)
        let key = Array("k".utf8)
        let order = byDistance(to: referenceSHA256(key), peers)
        cache.store(protocol: "/p", key: key, closest: order.map { ($0, .yes) }, wholeNetwork: true, now: start)
        cache.drop(order[0], protocol: "/p")
        #expect(cache.answer(protocol: "/p", key: key, count: 3, excluding: [], now: start) == .nodes(Array(order[1...3])))
        for peer in order { cache.drop(peer, protocol: "/p") }
        #expect(cache.answer(protocol: "/p", key: key, count: 3, excluding: [], now: start) == .miss)
    }

    @Test func aLookupThatFoundNoServingNodeAnswersNoneForThatKeyOnly() {
        let peers = (0..<25).map { PrivateKey.ed25519(seed: 9200 + UInt64($0)).peerID }
        var cache = ClosestNodeCache(ttl: .seconds(30), maxEntries: 8)
        let key = Array("nobody".utf8)
        let found = lookup(key, in: peers, k: 20)
        #expect(cache.store(protocol: "/p", key: key, closest: found.map { ($0, .no) }, wholeNetwork: false, now: start).isEmpty)
        #expect(cache.answer(protocol: "/p", key: key, count: 5, excluding: [], now: start) == .none)
        // A peer of unknown standing: nothing is proven, nothing cached.
        var partial = ClosestNodeCache(ttl: .seconds(30), maxEntries: 8)
        partial.store(
            protocol: "/p", key: key, closest: found.enumerated().map { ($0.element, $0.offset == 5 ? .unknown : .no) },
            wholeNetwork: false, now: start)
        #expect(partial.answer(protocol: "/p", key: key, count: 5, excluding: [], now: start) == .miss)
        #expect(partial.count == 0)
    }

    @Test func theRadiusEndsBeforeAPeerOfUnknownStanding() {
        let peers = (0..<25).map { PrivateKey.ed25519(seed: 9300 + UInt64($0)).peerID }
        var cache = ClosestNodeCache(ttl: .seconds(30), maxEntries: 8)
        let key = Array("partial".utf8)
        let found = lookup(key, in: peers, k: 20)
        // Nearest first: serving, not, unknown, serving…: only the first is proven.
        let standing: [ClosestNodeCache.Serving] = found.indices.map { $0 == 2 ? .unknown : ($0 % 3 == 0 ? .yes : .no) }
        let stored = cache.store(
            protocol: "/p", key: key, closest: Array(zip(found, standing)), wholeNetwork: false, now: start)
        // Returned: every serving peer in order; cached: only the proven one.
        #expect(stored == found.indices.filter { $0 % 3 == 0 }.map { found[$0] })
        #expect(cache.answer(protocol: "/p", key: key, count: 5, excluding: [], now: start) == .nodes([found[0]]))
        #expect(cache.answer(protocol: "/p", key: key, count: 5, excluding: [found[0]], now: start) == .miss)
    }

    /// Nearby keys: whatever the cache answers from another key's lookup is exactly the
    /// brute-force nearest serving nodes of the whole network, and it does answer some.
    @Test func answersForOtherKeysAreTheTrueNearestServingNodes() {
        var random = SeededGenerator(state: 42)
        for round in 0..<3 {
            let peers = (0..<(30 + 20 * round)).map { _ in PrivateKey.ed25519(seed: random.next()).peerID }
            let serving = peers.filter { _ in Int.random(in: 0..<3, using: &random) == 0 }
            var cache = ClosestNodeCache(ttl: .seconds(60), maxEntries: 64)
            var hits = 0
            for n in 0..<300 {
                let key = (0..<8).map { _ in UInt8.random(in: 0...255, using: &random) }
                let truth = byDistance(to: referenceSHA256(key), serving)
                switch cache.answer(protocol: "/p", key: key, count: 4, excluding: [], now: start) {
                case .nodes(let nodes):
                    hits += 1
                    #expect(nodes == Array(truth.prefix(nodes.count)), "round \(round), key \(n)")
                case .none:
                    Issue.record("a negative answer for a key never looked up")
                case .miss:
                    let found = lookup(key, in: peers, k: 20)
                    let stored = cache.store(
                        protocol: "/p", key: key, closest: found.map { ($0, serving.contains($0) ? .yes : .no) },
                        wholeNetwork: false, now: start)
                    #expect(stored == truth.filter(found.contains))
                }
            }
            #expect(hits > 0, "round \(round): no key was answered from a nearby lookup")
        }
    }

    @Test func theCacheIsBounded() {
        let peers = (0..<10).map { PrivateKey.ed25519(seed: 9400 + UInt64($0)).peerID }
        var cache = ClosestNodeCache(ttl: .seconds(30), maxEntries: 4)
        for n in 0..<20 {
            cache.store(protocol: "/p", key: [UInt8(n)], closest: peers.map { ($0, .yes) }, wholeNetwork: false, now: start)
            #expect(cache.count <= 4)
        }
        var none = ClosestNodeCache(ttl: .seconds(30), maxEntries: 0)
        none.store(protocol: "/p", key: [1], closest: peers.map { ($0, .yes) }, wholeNetwork: true, now: start)
        #expect(none.answer(protocol: "/p", key: [1], count: 3, excluding: [], now: start) == .miss)
    }
}

// MARK: - A DHT network on the in-memory transport

/// `size` hosts, each a DHT server (bootstrapped from host 0, as DHTNetworkTests builds them);
/// the hosts in `serving` also run a PointSubServer for `servedProtocol` that answers its index.
/// The last host is the client (it serves nothing) and asks its DHT through `DHTClosestNodes`.
private struct Network: Sendable {
    let hosts: [P2PHost]
    let dhts: [KademliaDHT]
    let servers: [Int: PointSubServer]
    let client: PointSubClient
    let source: DHTClosestNodes

    var clientHost: P2PHost { hosts[hosts.count - 1] }
    var servingPeers: [PeerID] { servers.keys.sorted().map { hosts[$0].peerID } }

    func index(of peer: PeerID) -> Int? { hosts.firstIndex { $0.peerID == peer } }

    /// Sends `request`; returns the node that answered, checked against its reply.
    func send(_ request: [UInt8], key: [UInt8]? = nil, deadline: Deadline? = nil) async throws -> PeerID {
        let (response, node) = try await client.sendClosest(
            ByteBuffer(bytes: request), key: key, protocol: servedProtocol, deadline: deadline ?? .after(.seconds(30)))
        let answered = try #require(index(of: node))
        #expect(String(buffer: response) == "\(answered)")
        return node
    }
}

private func withNetwork<T: Sendable>(
    size: Int, serving: Set<Int>, seed: UInt64, cacheTTL: Duration = .seconds(600), maxProbes: Int = 8,
    _ body: (Network) async throws -> T
) async throws -> T {
    var hosts: [P2PHost] = []
    var dhts: [KademliaDHT] = []
    var servers: [Int: PointSubServer] = [:]
    var client: PointSubClient?
    func shutdown() async {
        await client?.close()
        for server in servers.values { await server.stop(gracePeriod: .zero) }
        for dht in dhts { dht.stop() }
        for host in hosts { await host.shutdown(gracePeriod: .zero) }
    }
    do {
        for index in 0..<size {
            var dhtConfiguration = KademliaDHT.Configuration()
            dhtConfiguration.refreshInterval = nil
            dhtConfiguration.requestTimeout = .seconds(5)
            if index > 0 { dhtConfiguration.bootstrapPeers = [hosts[0].addresses[0]] }
            let dht = KademliaDHT(configuration: dhtConfiguration)
            let host = P2PHost(
                identity: .ed25519(seed: seed + UInt64(index)),
                configuration: .defaults {
                    $0.transports = [.memory]
                    $0.listenAddresses = [Multiaddr("/memory/0")]
                    $0.services = [IdentifyService(), dht]
                })
            hosts.append(host)
            dhts.append(dht)
            try await host.start()
            if serving.contains(index) {
                let server = try PointSubServer(host: host)
                try server.start(servedProtocol) { _ in ByteBuffer(string: "\(index)") }
                servers[index] = server
            }
        }
        for dht in dhts.dropFirst() { await dht.bootstrap() }
        await withTaskGroup(of: Void.self) { group in
            for dht in dhts { group.addTask { await dht.refresh() } }
        }
        let clientHost = hosts[size - 1]
        let made = try PointSubClient(host: clientHost)
        client = made
        var sourceConfiguration = DHTClosestNodes.Configuration()
        sourceConfiguration.cacheTTL = cacheTTL
        sourceConfiguration.maxProbes = maxProbes
        let source = try DHTClosestNodes(dht: dhts[size - 1], host: clientHost, configuration: sourceConfiguration)
        made.setClosestNodeSource(source, protocol: servedProtocol)
        let result = try await body(Network(hosts: hosts, dhts: dhts, servers: servers, client: made, source: source))
        await shutdown()
        return result
    } catch {
        await shutdown()
        throw error
    }
}

@Suite(.serialized, .timeLimit(.minutes(3)))
struct DHTSendClosestTests {
    /// Many random keys: each lands on the serving node nearest by XOR over the whole network
    /// (a brute-force order over all hosts), the same node every time; repeats need no lookup.
    @Test func requestsLandOnTheNearestServingNodeOfTheNetwork() async throws {
        let serving = Set([0, 2, 5, 7, 11, 13, 17, 19, 22])
        try await withNetwork(size: 26, serving: serving, seed: 11_000) { network in
            var random = SeededGenerator(state: 7)
            var chosen: Set<PeerID> = []
            for n in 0..<40 {
                let request = (0..<16).map { _ in UInt8.random(in: 0...255, using: &random) }
                let expected = expectedOrder(request: request, serving: network.servingPeers)[0]
                let node = try await network.send(request)
                #expect(node == expected, "key \(n)")
                chosen.insert(node)
                let lookups = network.source.lookupCount
                for _ in 0..<3 {
                    let node = try await network.send(request)
                    #expect(node == expected, "key \(n) again")
                }
                #expect(network.source.lookupCount == lookups, "key \(n): a repeat made a lookup")
            }
            // Keys spread over the serving nodes.
            #expect(chosen.count >= 4)
            // Cached lookups answered some nearby keys: fewer lookups than keys.
            #expect(network.source.lookupCount < 40)

            // The same keys with fresh lookups only: the same answers.
            network.source.clearCache()
            var again = SeededGenerator(state: 7)
            for n in 0..<10 {
                let request = (0..<16).map { _ in UInt8.random(in: 0...255, using: &again) }
                let before = network.source.lookupCount
                network.source.clearCache()
                do {
                    let node = try await network.send(request)
                    #expect(node == expectedOrder(request: request, serving: network.servingPeers)[0], "fresh \(n)")
                }
                #expect(network.source.lookupCount == before + 1)
            }
        }
    }

    /// An explicit key decides, not the request's bytes.
    @Test func anExplicitKeyChoosesTheNode() async throws {
        try await withNetwork(size: 22, serving: [1, 4, 8, 9, 15, 18], seed: 12_000) { network in
            for n in 0..<12 {
                let key = Array("user-\(n)".utf8)
                let expected = byDistance(to: referenceSHA256(key), network.servingPeers)[0]
                do {
                    let node = try await network.send(Array("request \(n)".utf8), key: key)
                    #expect(node == expected, "key \(n)")
                }
                do {
                    let node = try await network.send(Array("another \(n)".utf8), key: key)
                    #expect(node == expected, "key \(n)")
                }
            }
        }
    }

    /// Peers whose protocols the peerstore does not know are asked (connect and identify).
    @Test func unknownProtocolsAreLearnedByIdentify() async throws {
        try await withNetwork(size: 14, serving: [2, 6, 9, 11], seed: 17_000, maxProbes: 16) { network in
            let others = network.hosts.dropLast().map(\.peerID)
            for n in 0..<6 {
                for peer in others { network.clientHost.peerstore.setProtocols([], for: peer) }
                network.source.clearCache()
                let request = Array("unknown \(n)".utf8)
                let node = try await network.send(request)
                #expect(node == expectedOrder(request: request, serving: network.servingPeers)[0], "key \(n)")
                #expect(network.clientHost.peerstore.protocols(for: node).contains(servedProtocol))
            }
        }
    }

    /// When the nearest serving node goes away, the next nearest answers (from the cache at once,
    /// and from fresh lookups too); the failed node is dropped from the cache.
    @Test func whenTheNearestNodeGoesAwayTheNextNearestAnswers() async throws {
        let serving = Set([0, 3, 6, 9, 12, 15, 18, 21])
        try await withNetwork(size: 24, serving: serving, seed: 13_000) { network in
            // A key whose nearest serving node is not host 0 (the bootstrap node stays up).
            var n = 0
            var request: [UInt8] = []
            var order: [PeerID] = []
            repeat {
                request = Array("failover \(n)".utf8)
                order = expectedOrder(request: request, serving: network.servingPeers)
                n += 1
            } while order[0] == network.hosts[0].peerID && n < 100
            do {
                let node = try await network.send(request)
                #expect(node == order[0])
            }
            let gone = try #require(network.index(of: order[0]))
            await network.servers[gone]!.stop(gracePeriod: .zero)
            network.dhts[gone].stop()
            await network.hosts[gone].shutdown(gracePeriod: .zero)

            // The cached lookup still names it: tried, failed, then the next nearest.
            do {
                let node = try await network.send(request)
                #expect(node == order[1])
            }
            // Dropped from the cache: straight to the next nearest, no lookup.
            let lookups = network.source.lookupCount
            do {
                let node = try await network.send(request)
                #expect(node == order[1])
            }
            #expect(network.source.lookupCount == lookups)
            // A fresh lookup no longer finds the node that left (it does not answer the DHT).
            network.source.clearCache()
            do {
                let node = try await network.send(request)
                #expect(node == order[1])
            }
            #expect(network.source.lookupCount == lookups + 1)
        }
    }

    /// Every serving node gone at once: `.allNodesFailed` with each node's error.
    @Test func allServingNodesGoneIsAllNodesFailed() async throws {
        try await withNetwork(size: 14, serving: [4, 9], seed: 14_000) { network in
            let request = Array("everyone leaves".utf8)
            let order = expectedOrder(request: request, serving: network.servingPeers)
            do {
                let node = try await network.send(request)
                #expect(node == order[0])
            }
            for index in [4, 9] {
                await network.servers[index]!.stop(gracePeriod: .zero)
            }
            do {
                _ = try await network.send(request)
                Issue.record("a send with no serving node left succeeded")
            } catch {
                let error = try #require(error as? PointSubError)
                #expect(error.code == .allNodesFailed)
                #expect(Set(error.nodeFailures.map(\.node)) == Set(order))
            }
        }
    }

    /// No node serves the protocol: a typed error, and a second send needs no lookup.
    @Test func noServingNodeIsNoServerNodes() async throws {
        try await withNetwork(size: 12, serving: [], seed: 15_000) { network in
            let first = await #expect(throws: PointSubError.self) { _ = try await network.send(Array("anyone?".utf8)) }
            #expect(first?.code == .noServerNodes)
            let lookups = network.source.lookupCount
            let second = await #expect(throws: PointSubError.self) { _ = try await network.send(Array("anyone?".utf8)) }
            #expect(second?.code == .noServerNodes)
            #expect(network.source.lookupCount == lookups)
            // Round-trip time ordering is refused with a node source.
            let rtt = await #expect(throws: PointSubError.self) {
                _ = try await network.client.sendClosest(
                    ByteBuffer(string: "x"), protocol: servedProtocol, ordering: .roundTripTime)
            }
            #expect(rtt?.code == .invalidConfiguration)
            // A key too long for a DHT message.
            let long = await #expect(throws: PointSubError.self) {
                _ = try await network.send([1], key: [UInt8](repeating: 7, count: 4096))
            }
            #expect(long?.code == .messageTooLarge)
        }
    }

    /// A DHT that knows nobody: the lookup's error, typed.
    @Test func anEmptyRoutingTableIsNoServerNodes() async throws {
        try await withNetwork(size: 1, serving: [], seed: 16_000) { network in
            do {
                _ = try await network.send(Array("alone".utf8))
                Issue.record("a send through an empty DHT succeeded")
            } catch {
                let error = try #require(error as? PointSubError)
                #expect(error.code == .noServerNodes)
                #expect(error.cause is KademliaError)
            }
        }
    }
}


// MARK: - The client's side of a node source, with a scripted source

/// Gives the nodes of `order` (minus the excluded) at most `batch` at a time; records its calls
/// and the failures reported to it; throws `failWith` from call number `failOnCall` (1-based) on.
private final class ScriptedSource: ClosestNodeSource {
    let order: [PeerID]
    let batch: Int
    let failOnCall: Int
    let failWith: PointSubError?
    let calls = NIOLockedValueBox<[(count: Int, excluding: Set<PeerID>)]>([])
    let failed = NIOLockedValueBox<[PeerID]>([])

    init(order: [PeerID], batch: Int, failOnCall: Int = .max, failWith: PointSubError? = nil) {
        self.order = order
        self.batch = batch
        self.failOnCall = failOnCall
        self.failWith = failWith
    }

    func closestNodes(
        to key: [UInt8], protocol protocolID: String, count: Int, excluding: Set<PeerID>, deadline: Deadline
    ) async throws(PointSubError) -> [PeerID] {
        let call = calls.withLockedValue { calls in
            calls.append((count, excluding))
            return calls.count
        }
        if call >= failOnCall, let failWith { throw failWith }
        return Array(order.filter { !excluding.contains($0) }.prefix(min(count, batch)))
    }

    func nodeFailed(_ peer: PeerID, protocol protocolID: String) {
        failed.withLockedValue { $0.append(peer) }
    }
}

/// `count` in-memory hosts; those in `serving` answer `servedProtocol` with their index; a client
/// host that knows their addresses, with a PointSubClient.
private func withServers<T: Sendable>(
    count: Int, serving: Set<Int>, client configuration: PointSubClient.Configuration = .defaults,
    _ body: ([P2PHost], PointSubClient) async throws -> T
) async throws -> T {
    func memoryHost() -> P2PHost {
        P2PHost(
            identity: .generateEd25519(),
            configuration: .defaults {
                $0.transports = [.memory]
                $0.listenAddresses = [Multiaddr("/memory/0")]
                $0.services = [IdentifyService()]
            })
    }
    let hosts = (0..<count).map { _ in memoryHost() }
    let clientHost = memoryHost()
    var servers: [PointSubServer] = []
    var client: PointSubClient?
    func shutdown() async {
        await client?.close()
        for server in servers { await server.stop(gracePeriod: .zero) }
        for host in hosts + [clientHost] { await host.shutdown(gracePeriod: .zero) }
    }
    do {
        for host in hosts + [clientHost] { try await host.start() }
        for (index, host) in hosts.enumerated() {
            clientHost.peerstore.addAddresses(host.addresses, for: host.peerID, ttl: .permanent)
            guard serving.contains(index) else { continue }
            let server = try PointSubServer(host: host)
            try server.start(servedProtocol) { _ in ByteBuffer(string: "\(index)") }
            servers.append(server)
        }
        let made = try PointSubClient(host: clientHost, configuration: configuration)
        client = made
        let result = try await body(hosts, made)
        await shutdown()
        return result
    } catch {
        await shutdown()
        throw error
    }
}

@Suite(.serialized, .timeLimit(.minutes(2)))
struct ClosestNodeSourceClientTests {
    /// Batches from the source are tried in order; a used-up batch brings the next (the tried
    /// nodes excluded, the count what is left of the limit); every failure is reported.
    @Test func failoverAsksTheSourceForTheNextNodes() async throws {
        try await withServers(count: 5, serving: [3, 4]) { hosts, client in
            let order = hosts.map(\.peerID)
            let source = ScriptedSource(order: order, batch: 2)
            client.setClosestNodeSource(source, protocol: servedProtocol)
            let (response, node) = try await client.sendClosest(
                ByteBuffer(string: "x"), protocol: servedProtocol, deadline: .after(.seconds(20)))
            #expect(node == order[3])
            #expect(String(buffer: response) == "3")
            let calls = source.calls.withLockedValue { $0 }
            #expect(calls.map(\.count) == [8, 6])
            #expect(calls.map(\.excluding) == [[], Set(order[0..<2])])
            #expect(source.failed.withLockedValue { $0 } == Array(order[0..<3]))
            // Back to the node list: it has no nodes.
            client.setClosestNodeSource(nil, protocol: servedProtocol)
            let error = await #expect(throws: PointSubError.self) {
                _ = try await client.sendClosest(ByteBuffer(string: "x"), protocol: servedProtocol)
            }
            #expect(error?.code == .noServerNodes)
        }
    }

    /// With a node list, an explicit key orders by SHA-256(key) as well.
    @Test func aKeyAlsoOrdersANodeList() async throws {
        try await withServers(count: 6, serving: Set(0..<6)) { hosts, client in
            let peers = hosts.map(\.peerID)
            for peer in peers { try client.addServerNode(peer, protocol: servedProtocol) }
            for n in 0..<8 {
                let key = Array("list key \(n)".utf8)
                let (_, node) = try await client.sendClosest(
                    ByteBuffer(string: "request \(n)"), key: key, protocol: servedProtocol)
                #expect(node == byDistance(to: referenceSHA256(key), peers)[0], "key \(n)")
            }
        }
    }

    /// `closestNodeLimit` bounds the nodes tried; then `.allNodesFailed` with each failure.
    @Test func theLimitBoundsTheNodesTried() async throws {
        var configuration = PointSubClient.Configuration()
        configuration.closestNodeLimit = 2
        try await withServers(count: 4, serving: [3], client: configuration) { hosts, client in
            let order = hosts.map(\.peerID)
            let source = ScriptedSource(order: order, batch: 1)
            client.setClosestNodeSource(source, protocol: servedProtocol)
            let error = await #expect(throws: PointSubError.self) {
                _ = try await client.sendClosest(ByteBuffer(string: "x"), protocol: servedProtocol)
            }
            #expect(error?.code == .allNodesFailed)
            #expect(error?.nodeFailures.map(\.node) == Array(order[0..<2]))
            #expect(error?.nodeFailures.allSatisfy { $0.error.code == .protocolNotSupported } == true)
            #expect(source.calls.withLockedValue { $0.count } == 2)
        }
    }

    /// The source's own errors: a timeout keeps the failures so far; any other error after
    /// failures becomes `.allNodesFailed` with it as the cause; before any, it is thrown as is.
    @Test func theSourcesErrorsKeepTheFailuresSoFar() async throws {
        try await withServers(count: 3, serving: [2]) { hosts, client in
            let order = hosts.map(\.peerID)
            let timeout = ScriptedSource(
                order: order, batch: 1, failOnCall: 2, failWith: PointSubError(.timeout(requestSent: false), "slow"))
            client.setClosestNodeSource(timeout, protocol: servedProtocol)
            let timedOut = await #expect(throws: PointSubError.self) {
                _ = try await client.sendClosest(ByteBuffer(string: "x"), protocol: servedProtocol)
            }
            #expect(timedOut?.code == .timeout(requestSent: false))
            #expect(timedOut?.nodeFailures.map(\.node) == [order[0]])

            let broken = ScriptedSource(
                order: order, batch: 1, failOnCall: 2, failWith: PointSubError(.noServerNodes, "lookup failed"))
            client.setClosestNodeSource(broken, protocol: servedProtocol)
            let failed = await #expect(throws: PointSubError.self) {
                _ = try await client.sendClosest(ByteBuffer(string: "x"), protocol: servedProtocol)
            }
            #expect(failed?.code == .allNodesFailed)
            #expect(failed?.nodeFailures.map(\.node) == [order[0]])
            #expect((failed?.cause as? PointSubError)?.code == .noServerNodes)

            let first = ScriptedSource(
                order: order, batch: 1, failOnCall: 1, failWith: PointSubError(.noServerNodes, "lookup failed"))
            client.setClosestNodeSource(first, protocol: servedProtocol)
            let direct = await #expect(throws: PointSubError.self) {
                _ = try await client.sendClosest(ByteBuffer(string: "x"), protocol: servedProtocol)
            }
            #expect(direct?.code == .noServerNodes)
            #expect(direct?.nodeFailures.isEmpty == true)
        }
    }
}
