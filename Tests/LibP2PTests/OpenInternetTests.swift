import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PointSub
import Testing

/// A node on the open internet: one source that misbehaves must not lock out the others. The
/// attackers bind 127.0.0.2 while the honest client uses 127.0.0.1.
@Suite(.timeLimit(.minutes(2)))
struct OpenInternetTests {
    /// Opens `count` TCP connections from `source` to `port` that never send a byte; returns them
    /// and a counter of those the server has closed.
    static func silentSockets(
        _ count: Int, from source: String, to port: Int, group: any EventLoopGroup
    ) async throws -> (channels: [Channel], closed: NIOLockedValueBox<Int>) {
        let closed = NIOLockedValueBox(0)
        var channels: [Channel] = []
        for _ in 0..<count {
            let channel = try await ClientBootstrap(group: group)
                .bind(to: try SocketAddress(ipAddress: source, port: 0))
                .connect(host: "127.0.0.1", port: port).get()
            channel.closeFuture.whenComplete { _ in closed.withLockedValue { $0 += 1 } }
            channels.append(channel)
        }
        return (channels, closed)
    }

    static func waitUntil(_ timeout: Duration = .seconds(5), _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while !condition() {
            guard ContinuousClock.now < deadline else { return }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Issue 10, defect 2: 64 silent sockets used to fill the global pending-handshake limit for
    /// the whole handshake timeout, so every new connection failed.
    @Test func silentSocketsFromOneSourceDoNotLockOutOthers() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        try await withHost(configuration: listeningConfig()) { server in
            let port = Int(server.addresses[0].tcpPort!)
            let perAddress = server.configuration.resources.perAddress.pendingInbound
            let attack = try await Self.silentSockets(80, from: "127.0.0.2", to: port, group: group)
            // Everything beyond the per-address pending limit is closed at once.
            try await Self.waitUntil { attack.closed.withLockedValue { $0 } >= 80 - perAddress }
            #expect(attack.closed.withLockedValue { $0 } == 80 - perAddress)
            #expect(server.resourceManager.usage(ofAddress: "127.0.0.2").pendingInbound == perAddress)
            try await withHost { honest in
                _ = try await honest.connect(to: server.addresses[0])
                #expect(try await echo(honest, to: server.peerID, "still served") == "still served")
            }
            for channel in attack.channels { try? await channel.close() }
        }
        try await group.shutdownGracefully()
    }

    /// Issue 10, defect 3: idle secured connections from one source used to fill the global
    /// connection limit for good. Here the system limit is scaled down to 64 so the test stays
    /// small; one source may hold 16 of them.
    @Test func idleSecuredConnectionsFromOneSourceDoNotLockOutOthers() async throws {
        var config = listeningConfig()
        config.resources.system.connectionsInbound = 64
        config.resources.perAddress.connectionsInbound = 16
        try await withHost(configuration: config) { server in
            var attackers: [P2PHost] = []
            var admitted = 0
            var refused = 0
            for _ in 0..<70 {
                let attacker = P2PHost(
                    identity: .generateEd25519(), configuration: .defaults { $0.dialSourceAddress = "127.0.0.2" })
                try await attacker.start()
                attackers.append(attacker)
                do {
                    let connection = try await attacker.connect(to: server.addresses[0])
                    // The server may close a connection it refused only after the handshake.
                    try await Self.waitUntil(.milliseconds(200)) { connection.isClosed }
                    if connection.isClosed { refused += 1 } else { admitted += 1 }
                } catch {
                    refused += 1
                }
            }
            #expect(admitted == 16)
            #expect(refused == 54)
            #expect(server.resourceManager.usage(ofAddress: "127.0.0.2").connectionsInbound == 16)
            try await withHost { honest in
                _ = try await honest.connect(to: server.addresses[0])
                #expect(try await echo(honest, to: server.peerID, "hello") == "hello")
            }
            for attacker in attackers { await attacker.shutdown(gracePeriod: .zero) }
            try await Self.waitUntil { server.resourceManager.usage(ofAddress: "127.0.0.2").connectionsInbound == 0 }
            #expect(server.resourceManager.usage(ofAddress: "127.0.0.2").isEmpty)
        }
    }

    /// Issue 10, defect 3: idle connections that answer keep-alives lived forever.
    @Test func idleConnectionsAreClosedUnlessProtectedOrBusy() async throws {
        var config = listeningConfig()
        config.connectionManager.idleTimeout = .milliseconds(300)
        config.connectionManager.gracePeriod = .zero
        config.connectionManager.checkInterval = .milliseconds(100)
        try await withHost(configuration: config) { server in
            try await withHost { idle in
                try await withHost { busy in
                    try await withHost { protected in
                        server.connectionManager.protect(protected.peerID, tag: "test")
                        let idleConnection = try await idle.connect(to: server.addresses[0])
                        let protectedConnection = try await protected.connect(to: server.addresses[0])
                        let busyConnection = try await busy.connect(to: server.addresses[0])
                        // An echo stream left open keeps its connection in use.
                        let stream = try await busy.newStream(to: server.peerID, protocols: [EchoService.protocolID])
                        try await stream.write(ByteBuffer(string: "x"))
                        try await Self.waitUntil { idleConnection.isClosed }
                        #expect(idleConnection.isClosed)
                        try await Task.sleep(for: .milliseconds(400))
                        #expect(!busyConnection.isClosed)
                        #expect(!protectedConnection.isClosed)
                        stream.reset()
                    }
                }
            }
        }
    }

    @Test func aboveTheHighWatermarkTheLeastUsefulConnectionsAreTrimmed() async throws {
        var config = listeningConfig()
        config.connectionManager.highWater = 6
        config.connectionManager.lowWater = 3
        config.connectionManager.gracePeriod = .zero
        config.connectionManager.idleTimeout = nil
        config.connectionManager.checkInterval = .seconds(60)
        try await withHost(configuration: config) { server in
            var clients: [P2PHost] = []
            var connections: [Connection] = []
            for _ in 0..<6 {
                let client = P2PHost(identity: .generateEd25519())
                try await client.start()
                clients.append(client)
                connections.append(try await client.connect(to: server.addresses[0]))
            }
            server.connectionManager.protect(clients[0].peerID, tag: "mesh")
            server.connectionManager.tagPeer(clients[1].peerID, "useful", value: 100)
            server.connectionManager.tagPeer(clients[2].peerID, "useful", value: 50)
            // The seventh connection goes over the high watermark: trimming down to three starts.
            let seventh = P2PHost(identity: .generateEd25519())
            try await seventh.start()
            clients.append(seventh)
            connections.append(try await seventh.connect(to: server.addresses[0]))
            try await Self.waitUntil { server.allConnections.filter { !$0.isClosed }.count <= 3 }
            let open = Set(server.allConnections.filter { !$0.isClosed }.map(\.remotePeer))
            #expect(open == [clients[0].peerID, clients[1].peerID, clients[2].peerID])
            for client in clients { await client.shutdown(gracePeriod: .zero) }
        }
    }

    /// Issue 10, defect 10: refusals and failed handshakes are logged with the remote address and
    /// at a bounded rate (a flood used to write one line per refusal).
    @Test func refusalsAreLoggedWithTheAddressAtABoundedRate() async throws {
        let lines = CapturedLines()
        var config = listeningConfig()
        config.handshakeTimeout = .milliseconds(200)
        config.logger = Logger(label: "test", factory: { _ in lines })
        config.logger.logLevel = .debug
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let started = ContinuousClock.now
        try await withHost(configuration: config) { server in
            let port = Int(server.addresses[0].tcpPort!)
            let attack = try await Self.silentSockets(200, from: "127.0.0.2", to: port, group: group)
            try await Self.waitUntil { attack.closed.withLockedValue { $0 } == 200 }
            #expect(attack.closed.withLockedValue { $0 } == 200)
            let refusals = lines.matching("resource limit reached")
            let timeouts = lines.matching("inbound connection upgrade failed")
            // A burst of 10 lines, then one a second per kind of line.
            let bound = 10 + Int((ContinuousClock.now - started).components.seconds) + 1
            #expect(!refusals.isEmpty)
            #expect(refusals.count <= bound, "184 refusals must not write 184 lines")
            #expect(!timeouts.isEmpty)
            #expect(timeouts.count <= bound)
            for line in refusals + timeouts {
                #expect(line.metadata["remote_address"].map { "\($0)".contains("127.0.0.2") } == true)
            }
        }
        try await group.shutdownGracefully()
    }
}

extension OpenInternetTests {
    @Test func connectionManagerDecisionsArePure() {
        let manager = ConnectionManager(configuration: .defaults {
            $0.highWater = 3
            $0.lowWater = 2
            $0.gracePeriod = .seconds(10)
            $0.idleTimeout = .seconds(60)
        })
        let now = ContinuousClock.now
        let peers = (0..<6).map { PeerID(publicKey: PrivateKey.ed25519(seed: UInt64(100 + $0)).publicKey) }
        func candidate(_ i: Int, age: Duration, streams: Int, idle: Duration) -> ConnectionManager.Candidate {
            .init(id: UInt64(i), peer: peers[i], openedAt: now - age, streams: streams, lastActivity: now - idle)
        }
        let young = candidate(0, age: .seconds(1), streams: 0, idle: .seconds(1))
        let idleOld = candidate(1, age: .seconds(600), streams: 0, idle: .seconds(120))
        let busy = candidate(2, age: .seconds(600), streams: 3, idle: .seconds(120))
        let quiet = candidate(3, age: .seconds(600), streams: 1, idle: .seconds(1))
        let valued = candidate(4, age: .seconds(600), streams: 0, idle: .seconds(5))
        let protected = candidate(5, age: .seconds(600), streams: 0, idle: .seconds(5))
        manager.tagPeer(peers[4], "x", value: 10)
        manager.protect(peers[5], tag: "p")
        let closing = manager.selectToClose([young, idleOld, busy, quiet, valued, protected], now: now)
        // idleOld is idle; of the five left (over 3), three go: the cheapest old ones first.
        #expect(closing.map(\.id) == [1, 3, 2, 4])
        #expect(closing.first.map { $0.id == 1 && $0.reason == .idle } == true)
        #expect(!closing.contains { $0.id == 0 || $0.id == 5 })
        #expect(Set(closing.dropFirst().map(\.id)) == [3, 2, 4])
        #expect(manager.unprotect(peers[5], tag: "p") == false)
        #expect(!manager.isProtected(peers[5]))
    }
}

/// Captures log lines for inspection.
final class CapturedLines: LogHandler, @unchecked Sendable {
    struct Line {
        var message: String
        var metadata: Logger.Metadata
    }

    private let lines = NIOLockedValueBox([Line]())
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let line = Line(message: "\(event.message)", metadata: metadata.merging(event.metadata ?? [:]) { $1 })
        lines.withLockedValue { $0.append(line) }
    }

    func matching(_ text: String) -> [Line] {
        lines.withLockedValue { $0.filter { $0.message.contains(text) } }
    }
}
