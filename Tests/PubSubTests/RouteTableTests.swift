import NIOCore
import PointSub
import Testing

@testable import PubSub

/// Adding, deleting and listing routes, their errors, and a single dispatch.
@Suite(.timeLimit(.minutes(2)))
struct RouteTableTests {
    /// A host that is never started: enough for route bookkeeping, which does no I/O.
    private static func offlineTable() throws -> (RouteTable, P2PHost) {
        let host = P2PHost(identity: .generateEd25519())
        return (try RouteTable(host: host), host)
    }

    private static func address(port: Int, seed: UInt64) -> Multiaddr {
        try! Multiaddr("/ip4/127.0.0.1/tcp/\(port)").appending(peerID: PrivateKey.ed25519(seed: seed).peerID)
    }

    @Test func addDeleteAndList() async throws {
        let (table, _) = try Self.offlineTable()
        #expect(table.routes().isEmpty)
        let b = try table.addRoute("b", address: Self.address(port: 4002, seed: 2))
        try table.addRoute("a", address: Self.address(port: 4001, seed: 1))
        try table.addRoute("c", address: Self.address(port: 4003, seed: 3).description)
        #expect(table.routes().map(\.name) == ["a", "b", "c"])
        #expect(b.peer == PrivateKey.ed25519(seed: 2).peerID)
        #expect(table.route(named: "b") == b)
        #expect(table.route(named: "z") == nil)

        let deleted = try await table.deleteRoute("b")
        #expect(deleted == b)
        #expect(table.routes().map(\.name) == ["a", "c"])
        await RouteFixtures.expectRouteError(.unknownRoute) { try await table.deleteRoute("b") }

        await table.close()
        #expect(table.routes().isEmpty)
        await RouteFixtures.expectRouteError(.closed) { try await table.deleteRoute("a") }
        do throws(RouteError) {
            try table.addRoute("d", address: Self.address(port: 4004, seed: 4))
            Issue.record("a closed table took a route")
        } catch {
            #expect(error.code == .closed)
        }
    }

    @Test func duplicateNamesAndAddressesAreRefused() async throws {
        let (table, _) = try Self.offlineTable()
        try table.addRoute("a", address: Self.address(port: 4001, seed: 1))

        let sameName = #expect(throws: RouteError.self) { try table.addRoute("a", address: Self.address(port: 4002, seed: 2)) }
        #expect(sameName?.code == .duplicateName)
        #expect(sameName?.route == "a")
        let sameAddress = #expect(throws: RouteError.self) { try table.addRoute("b", address: Self.address(port: 4001, seed: 1)) }
        #expect(sameAddress?.code == .duplicateAddress)
        // The same peer ID behind another transport address is the same peer.
        let samePeer = #expect(throws: RouteError.self) { try table.addRoute("c", address: Self.address(port: 5001, seed: 1)) }
        #expect(samePeer?.code == .duplicateAddress)
        #expect(table.routes().map(\.name) == ["a"])

        // Once deleted, both the name and the peer are free again.
        try await table.deleteRoute("a")
        try table.addRoute("b", address: Self.address(port: 4001, seed: 1))
        try table.addRoute("a", address: Self.address(port: 4002, seed: 2))
        #expect(table.routes().map(\.name) == ["a", "b"])
    }

    @Test func badNamesAndAddressesAreRefused() throws {
        let (table, host) = try Self.offlineTable()
        func code(_ name: String, _ address: String) -> RouteError.Code? {
            #expect(throws: RouteError.self) { try table.addRoute(name, address: address) }?.code
        }
        let peer = PrivateKey.ed25519(seed: 1).peerID
        #expect(code("a", "/ip4/127.0.0.1/tcp/4001") == .invalidAddress)  // no /p2p/
        #expect(code("a", "/p2p/\(peer)") == .invalidAddress)  // nothing to dial
        #expect(code("a", "not a multiaddr") == .invalidAddress)
        #expect(code("a", "/ip4/127.0.0.1/tcp/4001/p2p/\(host.peerID)") == .selfRoute)
        #expect(code("", "/ip4/127.0.0.1/tcp/4001/p2p/\(peer)") == .invalidName)
        #expect(code(String(repeating: "x", count: Route.maxNameLength + 1), "/ip4/127.0.0.1/tcp/4001/p2p/\(peer)") == .invalidName)
        #expect(table.routes().isEmpty)
        // The longest name is fine.
        try table.addRoute(String(repeating: "x", count: Route.maxNameLength), address: "/ip4/127.0.0.1/tcp/4001/p2p/\(peer)")
    }

    @Test func badConfigurationsAreRefused() {
        let host = P2PHost(identity: .generateEd25519())
        let bad: [RouteTable.Configuration] = [
            .defaults { $0.timeout = .zero },
            .defaults { $0.maxMessageSize = 0 },
            .defaults { $0.maxRetries = -1 },
            .defaults { $0.protocolID = "route" },
            .defaults { $0.closeGracePeriod = .seconds(-1) },
        ]
        for configuration in bad {
            let error = #expect(throws: RouteError.self) { try RouteTable(host: host, configuration: configuration) }
            #expect(error?.code == .invalidConfiguration)
        }
    }

    @Test func dispatchReturnsTheReply() async throws {
        try await RouteFixtures.withNodes(3) { nodes in
            let (a, b, c) = (nodes[0], nodes[1], nodes[2])
            try a.table.addRoute("bee", address: b.address)
            try c.table.addRoute("bee", address: b.address)
            // b knows a by the name "ay"; c it does not know.
            try b.table.addRoute("ay", address: a.address)

            let reply = try await a.table.dispatch("bee", ByteBuffer(string: "hello"))
            #expect(String(buffer: reply) == "1:ay:hello")
            let fromStranger = try await c.table.dispatch("bee", ByteBuffer(string: "hi"))
            #expect(String(buffer: fromStranger) == "1:\(c.peer):hi")
            // An empty message and a large one.
            #expect(String(buffer: try await a.table.dispatch("bee", ByteBuffer())) == "1:ay:")
            let big = String(repeating: "0123456789", count: 100_000)
            #expect(String(buffer: try await a.table.dispatch("bee", ByteBuffer(string: big))) == "1:ay:" + big)

            let stats = a.table.statistics
            #expect(stats.dispatches == 3 && stats.replies == 3 && stats.failures == 0)
            #expect(b.table.statistics.handled == 4)
        }
    }

    @Test func dispatchErrors() async throws {
        let configuration = RouteTable.Configuration.defaults {
            $0.timeout = .seconds(5)
            $0.maxMessageSize = 64 * 1024
        }
        struct Refused: Error, CustomStringConvertible {
            var description: String { "refused by the test handler" }
        }
        try await RouteFixtures.withNodes(3, configuration: configuration, handler: { index in
            { _, message in
                if String(buffer: message) == "fail" { throw Refused() }
                return ByteBuffer(string: "ok \(index)")
            }
        }) { nodes in
            let (a, b, c) = (nodes[0], nodes[1], nodes[2])
            try a.table.addRoute("b", address: b.address)
            try a.table.addRoute("c", address: c.address)

            let unknown = await RouteFixtures.routeError { try await a.table.dispatch("nobody", ByteBuffer()) }
            #expect(unknown?.code == .unknownRoute)

            let failed = await RouteFixtures.routeError { try await a.table.dispatch("b", ByteBuffer(string: "fail")) }
            #expect(failed?.code == .remote(.handler))
            #expect(failed?.route == "b")
            #expect(failed?.message.contains("refused by the test handler") == true)

            let tooLarge = await RouteFixtures.routeError {
                try await a.table.dispatch("b", ByteBuffer(repeating: 1, count: 64 * 1024 + 1))
            }
            #expect(tooLarge?.code == .messageTooLarge)

            // c stops serving: its protocol is gone.
            await c.table.stop()
            #expect(!c.table.isServing)
            let notServed = await RouteFixtures.routeError { try await a.table.dispatch("c", ByteBuffer(string: "x")) }
            #expect(notServed?.code == .protocolNotSupported)
            // ...and serves again after start().
            try c.table.start()
            #expect(String(buffer: try await a.table.dispatch("c", ByteBuffer(string: "x"))) == "ok 2")

            // No handler installed: the sender hears about it.
            let bare = try RouteTable(host: c.host, configuration: .defaults { $0.protocolID = "/pointsub/route-bare/1.0.0" })
            try bare.start()
            let sender = try RouteTable(host: a.host, configuration: .defaults { $0.protocolID = "/pointsub/route-bare/1.0.0" })
            try sender.addRoute("c", address: c.address)
            let noHandler = await RouteFixtures.routeError { try await sender.dispatch("c", ByteBuffer(string: "x")) }
            #expect(noHandler?.code == .remote(.handler))
            #expect(noHandler?.message.contains("no route handler") == true)
            // The protocol is taken on c's host now.
            let clash = try RouteTable(host: c.host, configuration: .defaults { $0.protocolID = "/pointsub/route-bare/1.0.0" })
            do throws(RouteError) {
                try clash.start()
                Issue.record("a second table on the same protocol started")
            } catch {
                #expect(error.code == .protocolInUse)
            }
            await sender.close()
            await bare.close()

            await a.table.close()
            await RouteFixtures.expectRouteError(.closed) { try await a.table.dispatch("b", ByteBuffer()) }
            await RouteFixtures.expectRouteError(.closed) { try await a.table.dispatchAll(ByteBuffer()) }
        }
    }
}
