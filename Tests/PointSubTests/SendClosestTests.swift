import NIOConcurrencyHelpers
import NIOCore
import TestSupport
import Testing

import PointSub
@testable import PointSubCore

// Everything here is private: other test files of this target are written in parallel.

private let proto = "/pointsub/closest-test/1.0.0"

/// What a test server does with a request: `index` is the server's place in the cluster.
private typealias ClusterHandler = @Sendable (_ index: Int, _ request: PointSubRequest) async throws -> ByteBuffer

/// Answers "<index>:<payload>".
private let tagHandler: ClusterHandler = { index, request in
    ByteBuffer(string: "\(index):\(String(buffer: request.payload))")
}

/// A clock the test moves by hand (for the client's node cool-downs).
private final class ManualClock: Sendable {
    let start = ContinuousClock.now
    private let offset = NIOLockedValueBox(Duration.zero)

    var now: ContinuousClock.Instant { start + offset.withLockedValue { $0 } }

    func advance(_ duration: Duration) {
        offset.withLockedValue { $0 += duration }
    }
}

/// Server hosts each serving `proto` with a PointSubServer, and a client connected to all of them.
/// Cool-downs run on `clock`, which stands still unless the test advances it.
private struct Cluster: Sendable {
    let hosts: [P2PHost]
    let servers: [PointSubServer]
    /// Requests that reached each server's handler.
    let counters: [Counter]
    let clientHost: P2PHost
    let client: PointSubClient
    let clock: ManualClock

    var peers: [PeerID] { hosts.map(\.peerID) }

    func index(of peer: PeerID) -> Int? { peers.firstIndex(of: peer) }

    func addAllNodes() throws {
        for peer in peers { try client.addServerNode(peer, protocol: proto) }
    }

    func status(_ index: Int) -> NodeList.Status? { client.serverNodeStatus(peers[index], protocol: proto) }

    /// Sends `text` to the closest node; returns the answering server's index (checked against the reply).
    func sendClosest(
        _ text: String, ordering: PointSubClient.NodeOrdering = .xorDistance, fanout: Int = 1, deadline: Deadline? = nil
    ) async throws -> Int {
        let (response, node) = try await client.sendClosest(
            ByteBuffer(string: text), protocol: proto, ordering: ordering, fanout: fanout, deadline: deadline)
        let answered = try #require(index(of: node))
        #expect(String(buffer: response) == "\(answered):\(text)")
        return answered
    }
}

private func withCluster<T: Sendable>(
    count: Int, client clientConfiguration: PointSubClient.Configuration = .defaults,
    server serverConfiguration: PointSubServer.Configuration = .defaults,
    handler: @escaping ClusterHandler = tagHandler,
    _ body: (Cluster) async throws -> T
) async throws -> T {
    let hosts = (0..<count).map { _ in P2PHost(identity: .generateEd25519(), configuration: listening()) }
    let clientHost = P2PHost(identity: .generateEd25519())
    var servers: [PointSubServer] = []
    var client: PointSubClient?
    func cleanUp() async {
        await client?.close()
        for server in servers { await server.stop(gracePeriod: .milliseconds(100)) }
        for host in hosts + [clientHost] { await host.shutdown(gracePeriod: .milliseconds(100)) }
    }
    do {
        for host in hosts + [clientHost] { try await host.start() }
        let counters = (0..<count).map { _ in Counter() }
        for (index, host) in hosts.enumerated() {
            let server = try PointSubServer(host: host, configuration: serverConfiguration)
            let counter = counters[index]
            try server.start(proto) { request in
                counter.increment()
                return try await handler(index, request)
            }
            servers.append(server)
            clientHost.peerstore.addAddresses(host.addresses, for: host.peerID, ttl: .permanent)
            _ = try await clientHost.connect(to: host.peerID)
        }
        let clock = ManualClock()
        let made = try PointSubClient(host: clientHost, configuration: clientConfiguration, nodeClock: { clock.now })
        client = made
        let result = try await body(
            Cluster(
                hosts: hosts, servers: servers, counters: counters, clientHost: clientHost, client: made, clock: clock))
        await cleanUp()
        return result
    } catch {
        await cleanUp()
        throw error
    }
}

// MARK: - An independent XOR ordering (the same reference as NodeListTests, which keeps it private)


/// The peers sorted by XOR distance of their SHA-256 to the request's, nearest first (big-endian).
private func expectedXOROrder(_ request: String, _ peers: [PeerID]) -> [PeerID] {
    let target = referenceSHA256(Array(request.utf8))
    let hashes = Dictionary(uniqueKeysWithValues: peers.map { ($0, referenceSHA256($0.bytes)) })
    return peers.sorted { a, b in
        let (da, db) = (hashes[a]!, hashes[b]!)
        for i in 0..<32 where da[i] ^ target[i] != db[i] ^ target[i] {
            return da[i] ^ target[i] < db[i] ^ target[i]
        }
        return false
    }
}

/// A request whose nearest node is `peers[index]`.
private func request(nearestTo index: Int, of peers: [PeerID], prefix: String = "request") -> String {
    var n = 0
    while true {
        let text = "\(prefix) \(n)"
        if expectedXOROrder(text, peers)[0] == peers[index] { return text }
        n += 1
    }
}

private func code(_ error: any Error) -> PointSubError.Code? { (error as? PointSubError)?.code }

@Suite(.timeLimit(.minutes(2)))
struct SendClosestTests {
    @Test func membershipAndRefusingOneself() async throws {
        try await withHost { host in
            let client = try PointSubClient(host: host)
            #expect(throws: PointSubError.self) { try client.addServerNode(host.peerID, protocol: proto) }
            do throws(PointSubError) {
                try client.addServerNode(host.peerID, protocol: proto)
            } catch {
                #expect(error.code == .invalidNode)
                #expect(error.cause is NodeListError)
            }
            #expect(client.serverNodes(protocol: proto) == [])

            let (a, b) = (PrivateKey.generateEd25519().peerID, PrivateKey.generateEd25519().peerID)
            #expect(try client.addServerNode(a, protocol: proto))
            #expect(try client.addServerNode(b, protocol: proto))
            #expect(try client.addServerNode(a, protocol: proto) == false)
            try client.addServerNode(b, protocol: "/other")
            #expect(client.serverNodes(protocol: proto) == [a, b])
            #expect(client.serverNodes(protocol: "/other") == [b])
            #expect(client.removeServerNode(a, protocol: proto))
            #expect(!client.removeServerNode(a, protocol: proto))
            #expect(client.serverNodes(protocol: proto) == [b])
            client.clearServerNodes(protocol: proto)
            #expect(client.serverNodes(protocol: proto) == [])
            #expect(client.serverNodes(protocol: "/other") == [b])
            await client.close()
        }
    }

    @Test func noNodes() async throws {
        try await withHost { host in
            let client = try PointSubClient(host: host)
            await #expect { try await client.sendClosest(ByteBuffer(string: "x"), protocol: proto) } throws: {
                code($0) == .noServerNodes
            }
            try client.addServerNode(PrivateKey.generateEd25519().peerID, protocol: proto)
            client.clearServerNodes(protocol: proto)
            let start = ContinuousClock.now
            await #expect { try await client.sendClosest([1, 2, 3], protocol: proto) } throws: {
                code($0) == .noServerNodes
            }
            #expect(ContinuousClock.now - start < .seconds(1))
            #expect(client.statistics.requests == 0)
            // Bad arguments.
            try client.addServerNode(PrivateKey.generateEd25519().peerID, protocol: proto)
            await #expect { try await client.sendClosest([1], protocol: proto, fanout: 0) } throws: {
                code($0) == .invalidConfiguration
            }
            // A deadline that has passed: a timeout at once, no node tried.
            await #expect { try await client.sendClosest([1], protocol: proto, deadline: .now) } throws: {
                code($0) == .timeout(requestSent: false)
            }
            await client.close()
        }
    }

    @Test func sameRequestLandsOnTheSameNode() async throws {
        try await withCluster(count: 3) { cluster in
            try cluster.addAllNodes()
            var first: [String: Int] = [:]
            for i in 0..<30 {
                let text = "request \(i)"
                let index = try await cluster.sendClosest(text)
                #expect(cluster.peers[index] == expectedXOROrder(text, cluster.peers)[0], "\(text)")
                first[text] = index
            }
            #expect(Set(first.values).count >= 2, "requests spread over the nodes: \(first)")
            for i in (0..<30).reversed() {
                let text = "request \(i)"
                #expect(try await cluster.sendClosest(text) == first[text], "\(text) again")
            }
            // The [UInt8] form.
            let (bytes, node) = try await cluster.client.sendClosest(Array("request 7".utf8), protocol: proto)
            #expect(node == cluster.peers[first["request 7"]!])
            #expect(String(decoding: bytes, as: UTF8.self) == "\(first["request 7"]!):request 7")
            #expect(cluster.counters.map(\.count).reduce(0, +) == 61)
            #expect(cluster.client.statistics.requests == 61)
        }
    }

    @Test func failingNodeFallsOverAndCoolsDown() async throws {
        try await withCluster(count: 3) { cluster in
            try cluster.addAllNodes()
            let text = request(nearestTo: 0, of: cluster.peers)
            let order = expectedXOROrder(text, cluster.peers)
            let second = try #require(cluster.index(of: order[1]))
            await cluster.servers[0].stop(gracePeriod: .zero)

            #expect(try await cluster.sendClosest(text) == second)
            let status = try #require(cluster.status(0))
            #expect(status.consecutiveFailures == 1)
            #expect(status.availableAt != nil)
            #expect(cluster.client.serverNodes(protocol: proto).contains(cluster.peers[0]), "still listed")
            #expect(cluster.status(second)?.consecutiveFailures == 0)
            #expect(cluster.client.statistics.requests == 2, "one failed attempt, one answered")

            // Cooling down: the next request skips it (one attempt only).
            #expect(try await cluster.sendClosest(text) == second)
            #expect(cluster.client.statistics.requests == 3)
            #expect(cluster.status(0)?.consecutiveFailures == 1)

            // After the cool-down (1 s) it is tried again, fails again, and cools for 2 s.
            cluster.clock.advance(.milliseconds(999))
            #expect(try await cluster.sendClosest(text) == second)
            #expect(cluster.client.statistics.requests == 4, "still cooling")
            cluster.clock.advance(.milliseconds(1))
            #expect(try await cluster.sendClosest(text) == second)
            #expect(cluster.client.statistics.requests == 6)
            #expect(cluster.status(0)?.consecutiveFailures == 2)
            #expect(cluster.status(0)?.availableAt == cluster.clock.now + .seconds(2))
            #expect(cluster.counters[0].count == 0)
        }
    }

    @Test func failingHandlerNodeIsSkippedWhileCooling() async throws {
        // A node that answers `timeout` (its handler is too slow for its server) fails over and is
        // skipped afterwards: its request counter stays at 1.
        let server = PointSubServer.Configuration.defaults { $0.handlerTimeout = .milliseconds(100) }
        let slowIndex = NIOLockedValueBox(-1)
        try await withCluster(count: 3, server: server) { index, request in
            if index == slowIndex.withLockedValue({ $0 }) { try await Task.sleep(for: .seconds(5)) }
            return try await tagHandler(index, request)
        } _: { cluster in
            try cluster.addAllNodes()
            let text = request(nearestTo: 1, of: cluster.peers)
            let second = try #require(cluster.index(of: expectedXOROrder(text, cluster.peers)[1]))
            slowIndex.withLockedValue { $0 = 1 }
            #expect(try await cluster.sendClosest(text) == second)
            #expect(cluster.counters[1].count == 1)
            #expect(cluster.status(1)?.consecutiveFailures == 1)
            for _ in 0..<3 { #expect(try await cluster.sendClosest(text) == second) }
            #expect(cluster.counters[1].count == 1, "skipped while cooling down")
            #expect(cluster.counters[second].count == 4)
        }
    }

    @Test func allNodesFailingReportsEachNodesError() async throws {
        let server = PointSubServer.Configuration.defaults { $0.handlerTimeout = .milliseconds(100) }
        try await withCluster(count: 3, server: server) { index, request in
            if index == 2 { try await Task.sleep(for: .seconds(5)) }
            return try await tagHandler(index, request)
        } _: { cluster in
            try cluster.addAllNodes()
            await cluster.servers[0].stop(gracePeriod: .zero)  // does not serve the protocol
            await cluster.hosts[1].shutdown(gracePeriod: .zero)  // gone
            // (2 answers `timeout`.)
            let start = ContinuousClock.now
            do throws(PointSubError) {
                _ = try await cluster.client.sendClosest(ByteBuffer(string: "doomed"), protocol: proto, deadline: .after(.seconds(10)))
                Issue.record("expected allNodesFailed")
            } catch {
                #expect(error.code == .allNodesFailed)
                #expect(error.nodeFailures.map(\.node) == expectedXOROrder("doomed", cluster.peers), "in the order tried")
                let byNode = Dictionary(uniqueKeysWithValues: error.nodeFailures.map { ($0.node, $0.error.code) })
                #expect(byNode[cluster.peers[2]] == .remote(.timeout))
                let first = byNode[cluster.peers[0]]
                #expect(
                    first == .protocolNotSupported || first == .remote(.unavailable)
                        || first == .connectionFailed(requestSent: true) || first == .connectionFailed(requestSent: false),
                    "\(String(describing: first))")
                if case .connectionFailed = byNode[cluster.peers[1]] {} else {
                    Issue.record("host shut down: \(String(describing: byNode[cluster.peers[1]]))")
                }
                #expect("\(error)".contains("allNodesFailed"))
            }
            #expect(ContinuousClock.now - start < .seconds(5))
            for index in 0..<3 { #expect(cluster.status(index)?.consecutiveFailures == 1) }
            #expect(cluster.client.serverNodes(protocol: proto) == cluster.peers)
            // All cooling: they are all tried again rather than none.
            await #expect { try await cluster.client.sendClosest([1], protocol: proto) } throws: {
                (($0 as? PointSubError)?.nodeFailures.count ?? 0) == 3
            }
            for index in 0..<3 { #expect(cluster.status(index)?.consecutiveFailures == 2) }
        }
    }

    @Test func requestOverTheSizeLimitIsRefusedBeforeSending() async throws {
        let client = PointSubClient.Configuration.defaults { $0.maxBlockSize = 1024 }
        try await withCluster(count: 2, client: client) { cluster in
            try cluster.addAllNodes()
            await #expect {
                try await cluster.client.sendClosest(ByteBuffer(repeating: 7, count: 1025), protocol: proto)
            } throws: { code($0) == .messageTooLarge }
            #expect(cluster.client.statistics.requests == 0)
            for index in 0..<2 { #expect(cluster.status(index)?.consecutiveFailures == 0) }
            #expect(cluster.counters.map(\.count) == [0, 0])
            #expect(try await cluster.sendClosest(String(repeating: "a", count: 1000)) >= 0)
        }
    }

    @Test func cancellationStopsAtOnceWithoutMarkingNodes() async throws {
        let gate = Gate()
        try await withCluster(count: 2) { index, request in
            await gate.wait()
            return try await tagHandler(index, request)
        } _: { cluster in
            try cluster.addAllNodes()
            for fanout in [1, 2] {
                let before = cluster.counters.map(\.count).reduce(0, +)
                let task = Task { try await cluster.client.sendClosest([UInt8(fanout)], protocol: proto, fanout: fanout) }
                #expect(await eventually { cluster.counters.map(\.count).reduce(0, +) == before + fanout })
                let start = ContinuousClock.now
                task.cancel()
                await #expect { try await task.value } throws: { code($0) == .cancelled }
                #expect(ContinuousClock.now - start < .seconds(2))
                for index in 0..<2 { #expect(cluster.status(index)?.consecutiveFailures == 0, "fanout \(fanout)") }
            }
            // Cancelled before it starts.
            let task = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                return try await cluster.client.sendClosest([9], protocol: proto)
            }
            await #expect { try await task.value } throws: { code($0) == .cancelled }
            gate.open()
        }
    }

    @Test func handlerErrorIsTheAnswerAndNotFailedOver() async throws {
        struct Boom: Error, CustomStringConvertible { var description: String { "boom" } }
        try await withCluster(count: 3) { index, request in
            if String(buffer: request.payload).hasPrefix("boom") { throw Boom() }
            return try await tagHandler(index, request)
        } _: { cluster in
            try cluster.addAllNodes()
            for fanout in [1, 3] {
                let text = "boom \(fanout)"
                let nearest = try #require(cluster.index(of: expectedXOROrder(text, cluster.peers)[0]))
                let before = cluster.counters.map(\.count)
                do throws(PointSubError) {
                    _ = try await cluster.client.sendClosest(ByteBuffer(string: text), protocol: proto, fanout: fanout)
                    Issue.record("expected a handler error")
                } catch {
                    #expect(error.code == .remote(.handler))
                    #expect(error.message.contains("boom"))
                    #expect(error.nodeFailures.isEmpty)
                }
                if fanout == 1 {
                    #expect(cluster.counters.map(\.count) == before.enumerated().map { $0 == nearest ? $1 + 1 : $1 }, "only the nearest node")
                }
                for index in 0..<3 { #expect(cluster.status(index)?.consecutiveFailures == 0) }
            }
        }
    }

    @Test func roundTripTimeOrderingPicksTheFastestNode() async throws {
        // Node 0 takes 1.5 s, node 1 300 ms, node 2 answers at once. (On a loaded machine even
        // node 2 can take hundreds of milliseconds, so the checks compare with what was measured.)
        let delays: [Duration] = [.milliseconds(1500), .milliseconds(300), .zero]
        try await withCluster(count: 3) { index, request in
            if delays[index] > .zero { try await Task.sleep(for: delays[index]) }
            return try await tagHandler(index, request)
        } _: { cluster in
            try cluster.addAllNodes()
            // Warm-up: unmeasured nodes are tried first, so three requests measure all three.
            var warmed: Set<Int> = []
            for i in 0..<3 { warmed.insert(try await cluster.sendClosest("warm \(i)", ordering: .roundTripTime)) }
            #expect(warmed == [0, 1, 2])
            let rtts = try (0..<3).map { try #require(cluster.status($0)?.rtt, "node \($0) measured") }
            #expect(rtts[0] >= .milliseconds(1500) && rtts[1] >= .milliseconds(300), "handler time counts: \(rtts)")
            #expect(rtts[1] < rtts[0] && rtts[2] < rtts[0], "\(rtts)")
            let byRTT = (0..<3).sorted { rtts[$0] < rtts[$1] }.map { cluster.peers[$0] }
            #expect(byRTT.last == cluster.peers[0])
            let any = ByteBuffer(string: "x")
            #expect(cluster.client.serverNodeOrder(for: any, protocol: proto, ordering: .roundTripTime) == byRTT)
            // Each request goes to the node measured fastest at the time (the slow one never).
            for i in 0..<6 {
                let fastest = cluster.client.serverNodeOrder(for: any, protocol: proto, ordering: .roundTripTime)[0]
                let answered = try await cluster.sendClosest("fast \(i)", ordering: .roundTripTime)
                #expect(cluster.peers[answered] == fastest)
                #expect(answered != 0)
            }
            #expect(cluster.counters[0].count == 1, "only the warm-up reached the slow node")
            // XOR ordering is unaffected by the measurements.
            let text = request(nearestTo: 0, of: cluster.peers)
            #expect(try await cluster.sendClosest(text) == 0)
        }
    }

    @Test func fanoutTakesTheFirstAnswer() async throws {
        let gate = Gate()
        let slowIndex = NIOLockedValueBox(-1)
        try await withCluster(count: 2) { index, request in
            if index == slowIndex.withLockedValue({ $0 }) { await gate.wait() }
            return try await tagHandler(index, request)
        } _: { cluster in
            try cluster.addAllNodes()
            let text = request(nearestTo: 0, of: cluster.peers)
            slowIndex.withLockedValue { $0 = 0 }  // the nearest node hangs
            for ordering in [PointSubClient.NodeOrdering.xorDistance, .roundTripTime] {
                let start = ContinuousClock.now
                #expect(try await cluster.sendClosest(text, ordering: ordering, fanout: 2) == 1)
                #expect(ContinuousClock.now - start < .seconds(2))
                #expect(cluster.status(0)?.consecutiveFailures == 0, "a cancelled loser is not marked failed")
            }
            // (The hanging node may not even have seen these requests before they were cancelled.)

            // Without fanout the hanging node gets its share of the time (half of 4 s with two
            // nodes), fails, and the other answers within the call's timeout.
            let start = ContinuousClock.now
            #expect(try await cluster.sendClosest(text, deadline: .after(.seconds(4))) == 1)
            let elapsed = ContinuousClock.now - start
            #expect(elapsed >= .milliseconds(1950) && elapsed < .seconds(4), "\(elapsed)")
            let failed = try #require(cluster.status(0))
            #expect(failed.consecutiveFailures == 1)
            #expect(cluster.counters[0].count >= 1, "the hanging node got the request")
            gate.open()
        }
    }

    @Test func fanoutMovesToTheNextBatchWhenAllOfOneFail() async throws {
        try await withCluster(count: 4) { cluster in
            try cluster.addAllNodes()
            let text = "batch"
            let order = expectedXOROrder(text, cluster.peers).map { cluster.index(of: $0)! }
            await cluster.servers[order[0]].stop(gracePeriod: .zero)
            await cluster.servers[order[1]].stop(gracePeriod: .zero)
            let answered = try await cluster.sendClosest(text, fanout: 2)
            #expect(answered == order[2] || answered == order[3])
            #expect(cluster.status(order[0])?.consecutiveFailures == 1)
            #expect(cluster.status(order[1])?.consecutiveFailures == 1)
            #expect(cluster.status(answered)?.consecutiveFailures == 0)
        }
    }

    @Test func safeUnderConcurrentAddRemoveAndSend() async throws {
        try await withCluster(count: 3) { cluster in
            try cluster.addAllNodes()
            let client = cluster.client
            let peers = cluster.peers
            // Peers nobody can reach (no addresses): chosen sometimes, they fail at once.
            let ghosts = (0..<6).map { _ in PrivateKey.generateEd25519().peerID }
            let answers = try await withThrowingTaskGroup(of: Int.self) { group in
                for t in 0..<16 {
                    group.addTask {
                        var answered = 0
                        for i in 0..<40 {
                            switch (t + i) % 5 {
                            case 0: try client.addServerNode(ghosts[(t + i) % ghosts.count], protocol: proto)
                            case 1: client.removeServerNode(ghosts[(t * 7 + i) % ghosts.count], protocol: proto)
                            case 2:
                                // Node 2 comes and goes; nodes 0 and 1 always stay.
                                if i % 2 == 0 {
                                    client.removeServerNode(peers[2], protocol: proto)
                                } else {
                                    try client.addServerNode(peers[2], protocol: proto)
                                }
                            default:
                                let text = "t\(t) i\(i)"
                                let (response, node) = try await client.sendClosest(
                                    ByteBuffer(string: text), protocol: proto, fanout: 1 + i % 2)
                                let index = try #require(peers.firstIndex(of: node))
                                #expect(String(buffer: response) == "\(index):\(text)")
                                answered += 1
                            }
                            let nodes = client.serverNodes(protocol: proto)
                            #expect(Set(nodes).count == nodes.count)
                            #expect(nodes.contains(peers[0]) && nodes.contains(peers[1]))
                        }
                        return answered
                    }
                }
                return try await group.reduce(0, +)
            }
            #expect(answers == 16 * 40 * 2 / 5)
            for index in 0..<2 { #expect(cluster.status(index)?.consecutiveFailures == 0) }
        }
    }
}
