import Logging
import NIOCore
import PointSub
import ServiceLifecycle
import Testing

/// A host run as a ServiceLifecycle service: started by the group, shut down gracefully with it.
@Suite(.timeLimit(.minutes(1)))
struct ServiceLifecycleTests {
    @Test func aHostRunsInAServiceGroupAndShutsDownWithIt() async throws {
        var configuration = listeningConfig([EchoService(), IdentifyService()])
        configuration.shutdownGracePeriod = .milliseconds(500)
        let host = P2PHost(identity: .generateEd25519(), configuration: configuration)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: host)], gracefulShutdownSignals: [],
                logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })))
        let running = Task { try await group.run() }
        // The group starts the host: it listens and serves.
        let deadline = ContinuousClock.now + .seconds(10)
        while host.addresses.isEmpty, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        let address = try #require(host.addresses.first)
        try await withHost { client in
            _ = try await client.connect(to: address)
            #expect(try await echo(client, to: host.peerID, "served by a service group") == "served by a service group")
            // A stream still open when shutdown begins is given the grace period, then closed.
            let open = try await client.newStream(to: host.peerID, protocols: [EchoService.protocolID])
            try await open.write(ByteBuffer(string: "in flight"))
            await group.triggerGracefulShutdown()
            try await running.value
            #expect(host.addresses.isEmpty)
            // The client learns of the close from the socket: a stream opened before that is
            // lazily negotiated and would not fail yet.
            try await eventually("the client sees the connection closed") { client.connections(to: host.peerID).isEmpty }
            await #expect(throws: (any Error).self) {
                try await client.newStream(to: host.peerID, protocols: [EchoService.protocolID])
            }
        }
    }
}
