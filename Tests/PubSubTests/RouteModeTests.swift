import NIOConcurrencyHelpers
import NIOCore
import PointSub
import TestSupport
import Testing

@testable import PubSub

/// Persistent vs short connections, and routes deleted while a dispatch runs.
@Suite(.timeLimit(.minutes(2)))
struct RouteModeTests {
    /// IDs of the connections `host` opens to `peer` from now on (either direction).
    private static func recordConnections(of host: P2PHost, to peer: PeerID) -> NIOLockedValueBox<[UInt64]> {
        let ids = NIOLockedValueBox<[UInt64]>([])
        host.addConnectionObserver { connection in
            if connection.remotePeer == peer { ids.withLockedValue { $0.append(connection.id) } }
        }
        return ids
    }

    @Test func persistentModeReusesOneConnectionUntilTheRouteIsDeleted() async throws {
        try await RouteFixtures.withNodes(2, configuration: .defaults { $0.mode = .persistent }) { nodes in
            let (a, b) = (nodes[0], nodes[1])
            let opened = Self.recordConnections(of: a.host, to: b.peer)
            try a.table.addRoute("b", address: b.address)
            var seen: Set<UInt64> = []
            for i in 0..<5 {
                #expect(String(buffer: try await a.table.dispatch("b", ByteBuffer(string: "\(i)"))) == "1:\(a.peer):\(i)")
                let open = RouteFixtures.outbound(a.host, to: b.peer)
                #expect(open.count == 1)
                seen.formUnion(open.map(\.id))
            }
            // One connection, opened once, used by all five.
            #expect(seen.count == 1)
            let openedIDs = opened.withLockedValue { $0 }
            #expect(openedIDs == Array(seen))
            #expect(b.host.connections(to: a.peer).count == 1)
            #expect(a.table.statistics.connectionsDialed == 1)
            #expect(a.table.statistics.connectionsClosed == 0)

            // Deleting the route closes the connection it dialed.
            try await a.table.deleteRoute("b")
            #expect(RouteFixtures.outbound(a.host, to: b.peer).isEmpty)
            #expect(a.table.statistics.connectionsClosed == 1)
            await RouteFixtures.expectEventually { b.host.connections(to: a.peer).isEmpty }

            // Added again: a new connection, kept again.
            try a.table.addRoute("b", address: b.address)
            _ = try await a.table.dispatch("b", ByteBuffer(string: "again"))
            _ = try await a.table.dispatch("b", ByteBuffer(string: "again"))
            let openedCount = opened.withLockedValue { $0.count }
            #expect(openedCount == 2)
            #expect(RouteFixtures.outbound(a.host, to: b.peer).count == 1)

            // Closing the table closes it too.
            await a.table.close()
            #expect(RouteFixtures.outbound(a.host, to: b.peer).isEmpty)
            #expect(a.table.statistics.connectionsClosed == 2)
        }
    }

    @Test func shortModeClosesTheConnectionAfterEachExchange() async throws {
        try await RouteFixtures.withNodes(2, configuration: .defaults { $0.mode = .short }) { nodes in
            let (a, b) = (nodes[0], nodes[1])
            let opened = Self.recordConnections(of: a.host, to: b.peer)
            try a.table.addRoute("b", address: b.address)
            for i in 0..<3 {
                #expect(String(buffer: try await a.table.dispatch("b", ByteBuffer(string: "\(i)"))) == "1:\(a.peer):\(i)")
                // Closed by the time dispatch returns.
                #expect(a.host.connections(to: b.peer).isEmpty)
            }
            let ids = opened.withLockedValue { $0 }
            #expect(ids.count == 3)
            #expect(Set(ids).count == 3)
            #expect(a.table.statistics.connectionsDialed == 3)
            #expect(a.table.statistics.connectionsClosed == 3)
            await RouteFixtures.expectEventually { b.host.connections(to: a.peer).isEmpty }

            // dispatchAll closes too.
            _ = try await a.table.dispatchAll(ByteBuffer(string: "all"))
            #expect(a.host.connections(to: b.peer).isEmpty)
            #expect(a.table.statistics.connectionsClosed == 4)
        }
    }

    @Test func shortModeLeavesAConnectionItDidNotDialOpen() async throws {
        try await RouteFixtures.withNodes(2, configuration: .defaults { $0.mode = .short }) { nodes in
            let (a, b) = (nodes[0], nodes[1])
            // The application's own connection to b: dispatches use it and leave it open.
            let own = try await a.host.connect(to: b.address)
            try a.table.addRoute("b", address: b.address)
            for _ in 0..<3 { _ = try await a.table.dispatch("b", ByteBuffer(string: "x")) }
            #expect(!own.isClosed)
            #expect(a.host.connections(to: b.peer) == [own])
            #expect(a.table.statistics.connectionsDialed == 0)
            #expect(a.table.statistics.connectionsClosed == 0)

            // A connection b dialed to a (inbound for a) is not a's to close either.
            await own.close()
            await RouteFixtures.expectEventually { b.host.connections(to: a.peer).isEmpty }
            let inbound = try await b.host.connect(to: a.address)
            await RouteFixtures.expectEventually { a.host.connections(to: b.peer).count == 1 }
            _ = try await a.table.dispatch("b", ByteBuffer(string: "y"))
            #expect(!inbound.isClosed)
            #expect(a.host.connections(to: b.peer).map(\.direction) == [.inbound])
            #expect(a.table.statistics.connectionsClosed == 0)
        }
    }

    @Test func routeDeletedWhileItsDispatchRunsFinishesCleanly() async throws {
        for mode in RouteTable.Mode.allCases {
            let gate = Gate()
            try await RouteFixtures.withNodes(2, configuration: .defaults { $0.mode = mode }, handler: { index in
                { _, message in
                    await gate.wait()
                    return ByteBuffer(string: "\(index):\(String(buffer: message))")
                }
            }) { nodes in
                let (a, b) = (nodes[0], nodes[1])
                try a.table.addRoute("b", address: b.address)
                let dispatch = Task { try await a.table.dispatch("b", ByteBuffer(string: "late")) }
                await RouteFixtures.expectEventually { b.table.statistics.handled == 1 }
                // Deleted under the running dispatch: the route is gone at once, the exchange goes on.
                try await a.table.deleteRoute("b")
                #expect(a.table.routes().isEmpty)
                #expect(RouteFixtures.outbound(a.host, to: b.peer).count == 1, "\(mode)")
                gate.open()
                #expect(String(buffer: try await dispatch.value) == "1:late", "\(mode)")
                // The last dispatch to the deleted route took its connection along.
                #expect(RouteFixtures.outbound(a.host, to: b.peer).isEmpty, "\(mode)")
                #expect(a.table.statistics.connectionsClosed == 1, "\(mode)")
                // A new dispatch to that name fails cleanly.
                await RouteFixtures.expectRouteError(.unknownRoute) { try await a.table.dispatch("b", ByteBuffer()) }
            }
        }
    }

    @Test func closingTheTableWhileADispatchRunsWaitsForIt() async throws {
        let gate = Gate()
        try await RouteFixtures.withNodes(2, handler: { index in
            { _, _ in
                await gate.wait()
                return ByteBuffer(string: "done")
            }
        }) { nodes in
            let (a, b) = (nodes[0], nodes[1])
            try a.table.addRoute("b", address: b.address)
            let dispatch = Task { try await a.table.dispatch("b", ByteBuffer(string: "x")) }
            await RouteFixtures.expectEventually { b.table.statistics.handled == 1 }
            let closing = Task { await a.table.close() }
            try await Task.sleep(for: .milliseconds(100))
            gate.open()
            #expect(String(buffer: try await dispatch.value) == "done")
            await closing.value
            #expect(RouteFixtures.outbound(a.host, to: b.peer).isEmpty)
            await RouteFixtures.expectRouteError(.closed) { try await a.table.dispatch("b", ByteBuffer()) }
        }
    }
}
