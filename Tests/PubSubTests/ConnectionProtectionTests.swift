import NIOCore
import PointSub
import Testing

@testable import PubSub

/// Pubsub peers and persistent route peers are protected from the connection manager (trimming
/// and idle closing), and only while they are pubsub peers / routes.
@Suite(.timeLimit(.minutes(1)))
struct ConnectionProtectionTests {
    @Test func pubsubPeersAreProtectedWhileTheSessionLasts() async throws {
        let a = try await PubSubStartupTests.makeHost()
        let b = try await PubSubStartupTests.makeHost()
        let pa = try PubSubService(host: a, router: FloodSubRouter())
        let pb = try PubSubService(host: b, router: FloodSubRouter())
        try pa.start()
        try pb.start()
        let subscriptions = [try pa.subscribe("t"), try pb.subscribe("t")]
        _ = try await a.connect(to: b.addresses[0])
        _ = try await pa.waitForPeers(topic: "t", count: 1, deadline: .after(.seconds(10)))
        #expect(await PubSubStartupTests.eventually(.seconds(5)) {
            a.connectionManager.isProtected(b.peerID) && b.connectionManager.isProtected(a.peerID)
        })
        withExtendedLifetime(subscriptions) {}
        await pb.stop()
        #expect(await PubSubStartupTests.eventually(.seconds(5)) { !a.connectionManager.isProtected(b.peerID) })
        await pa.stop()
        await a.shutdown()
        await b.shutdown()
    }

    @Test func persistentRoutePeersAreProtectedUntilTheRouteGoes() async throws {
        let a = try await PubSubStartupTests.makeHost()
        let b = try await PubSubStartupTests.makeHost()
        let table = try RouteTable(host: a)
        try table.addRoute("b", address: b.addresses[0])
        #expect(a.connectionManager.isProtected(b.peerID))
        try await table.deleteRoute("b")
        #expect(!a.connectionManager.isProtected(b.peerID))
        try table.addRoute("b", address: b.addresses[0])
        await table.close()
        #expect(!a.connectionManager.isProtected(b.peerID))
        await a.shutdown()
        await b.shutdown()
    }
}
