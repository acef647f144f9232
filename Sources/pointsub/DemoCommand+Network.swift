import Foundation
import NIOCore
import PointSub
import PubSub

/// The second half of `pointsub demo`: four nodes on 127.0.0.1 connected in a line
/// (node-0 — node-1 — node-2 — node-3), showing PointSub request/response, named routes with
/// Dispatch/DispatchAll, and gossipsub broadcast that reaches node-3 only through forwarding.
extension DemoCommand {
    static let upperProtocol = "/demo/upper/1.0.0"
    static let newsTopic = "demo-news"

    func runNetworkDemo() async throws {
        print("")
        print("four nodes in a line: node-0 — node-1 — node-2 — node-3")
        var hosts: [P2PHost] = []
        defer { for host in hosts { Task { await host.shutdown(gracePeriod: .milliseconds(200)) } } }
        for index in 0..<4 {
            let host = P2PHost(identity: .ed25519(seed: UInt64(10 + index)), configuration: .defaults {
                $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")]
                $0.services = [IdentifyService(), PingService()]
            })
            try await host.start()
            hosts.append(host)
            print("  node-\(index) \(host.peerID)")
        }
        let ids = hosts.map(\.peerID)
        let name: @Sendable (PeerID) -> String = { peer in ids.firstIndex(of: peer).map { "node-\($0)" } ?? "\(peer)" }
        for index in 1..<4 { _ = try await hosts[index].connect(to: hosts[index - 1].addresses[0]) }

        // 1. PointSub request/response: every node serves an upper-casing protocol.
        var servers: [PointSubServer] = []
        for (index, host) in hosts.enumerated() {
            let server = try PointSubServer(host: host)
            try server.start(Self.upperProtocol) { request in
                ByteBuffer(string: "node-\(index): " + String(buffer: request.payload).uppercased())
            }
            servers.append(server)
        }
        let client = try PointSubClient(host: hosts[0])
        let clock = ContinuousClock()
        var start = clock.now
        let reply = try await client.send(ByteBuffer(string: "hello over pointsub"), to: hosts[1].peerID, protocol: Self.upperProtocol)
        print(String(format: "request/response node-0 → node-1 on %@: \"%@\" in %.2f ms",
                     Self.upperProtocol, String(buffer: reply), (clock.now - start).milliseconds))
        for index in 1..<4 { _ = try client.addServerNode(hosts[index].peerID, protocol: Self.upperProtocol) }
        let closest = try await client.sendClosest(ByteBuffer(string: "which node is closest?"), protocol: Self.upperProtocol)
        print("sendClosest (XOR distance of SHA-256s): answered by \(name(closest.node)): \"\(String(buffer: closest.response))\"")

        // 2. Named routes: node-0 routes to the three others (dialing node-2 and node-3 directly).
        var tables: [RouteTable] = []
        for (index, host) in hosts.enumerated() {
            let table = try RouteTable(host: host)
            table.handle { sender, message in
                ByteBuffer(string: "node-\(index) got \"\(String(buffer: message))\" from \(sender.route ?? name(sender.peer))")
            }
            try table.start()
            tables.append(table)
        }
        for index in 1..<4 { try tables[0].addRoute("node-\(index)", address: hosts[index].addresses[0]) }
        start = clock.now
        let dispatched = try await tables[0].dispatch("node-2", ByteBuffer(string: "dispatch to one"))
        print(String(format: "route dispatch node-2: \"%@\" in %.2f ms", String(buffer: dispatched), (clock.now - start).milliseconds))
        start = clock.now
        let all = try await tables[0].dispatchAll(ByteBuffer(string: "dispatch to all"))
        print(String(format: "route dispatchAll (%d routes, concurrently) in %.2f ms:", all.count, (clock.now - start).milliseconds))
        for (route, result) in all.sorted(by: { $0.key < $1.key }) {
            switch result {
            case .success(let answer): print("  \(route): \"\(String(buffer: answer))\"")
            case .failure(let error): print("  \(route): error \(error)")
            }
        }
        for table in tables { await table.close() }
        await client.close()
        for server in servers { await server.stop(gracePeriod: .milliseconds(200)) }
        // Route dials gave node-0 direct connections to node-2 and node-3; close them so the
        // broadcast below has to travel along the line.
        for index in 2..<4 { for connection in hosts[0].connections(to: hosts[index].peerID) { await connection.close() } }

        // 3. Broadcast: gossipsub on every node; node-0's messages reach node-3 through node-1 and node-2.
        var services: [PubSubService] = []
        var subscriptions: [PubSubSubscription] = []
        for host in hosts {
            let pubsub = try PubSubService(host: host, router: try GossipSubRouter(configuration: .defaults))
            try pubsub.start()
            subscriptions.append(try pubsub.subscribe(Self.newsTopic))
            services.append(pubsub)
        }
        // Wait (bounded) until every node knows its neighbours' subscriptions.
        let ready = Deadline.after(.seconds(10))
        while !ready.hasPassed, !services.enumerated().allSatisfy({ index, pubsub in
            pubsub.peers(topic: Self.newsTopic).count == (index == 0 || index == 3 ? 1 : 2)
        }) {
            try await Task.sleep(for: .milliseconds(20))
        }
        let messages = 3
        let published = clock.now
        for n in 1...messages { try await services[0].publish(Self.newsTopic, Array("news \(n)".utf8)) }
        print("gossipsub on \(Self.newsTopic): node-0 published \(messages) messages")
        try await withThrowingTaskGroup(of: String.self) { group in
            for index in 1..<4 {
                let subscription = subscriptions[index]
                group.addTask {
                    var lines: [String] = []
                    for await message in subscription {
                        lines.append(String(format: "\"%@\" from %@ via %@ after %.2f ms", message.text, name(message.from ?? message.receivedFrom),
                                            name(message.receivedFrom), (clock.now - published).milliseconds))
                        if lines.count == messages { break }
                    }
                    return "  node-\(index) got " + lines.joined(separator: ", ")
                }
            }
            group.addTask {
                try await Task.sleep(for: .seconds(10))
                throw CancellationError()
            }
            var reported = 0
            while reported < 3, let line = try await group.next() {
                print(line)
                reported += 1
            }
            group.cancelAll()
        }
        for subscription in subscriptions { subscription.cancel() }
        for pubsub in services { await pubsub.stop() }  // drains the writers: counters are final
        let transmissions = services.reduce(0) { $0 + $1.counters.forwarded }
        let duplicates = services.reduce(0) { $0 + $1.counters.duplicates }
        print(String(format: "every node got all %d messages; %d transmissions in total (%.1f per message), %d duplicate copies dropped",
                     messages, transmissions, Double(transmissions) / Double(messages), duplicates))
        for host in hosts { await host.shutdown(gracePeriod: .milliseconds(200)) }
        hosts.removeAll()
        print("all four nodes shut down cleanly")
    }
}
