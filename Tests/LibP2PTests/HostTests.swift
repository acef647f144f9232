import Multistream
import NIOCore
import NIOPosix
import PointSub
import Testing

let loopback = Multiaddr("/ip4/127.0.0.1/tcp/0")

func listeningConfig(_ services: [any HostService] = [EchoService()]) -> P2PHost.Configuration {
    .defaults {
        $0.listenAddresses = [loopback]
        $0.services = services
    }
}

func echo(_ host: P2PHost, to peer: PeerID, _ text: String) async throws -> String {
    let stream = try await host.newStream(to: peer, protocols: [EchoService.protocolID])
    try await stream.write(ByteBuffer(string: text))
    try await stream.closeWrite()
    return String(buffer: try await stream.readToEnd(maxBytes: 1 << 20))
}

@Suite(.timeLimit(.minutes(2)))
struct HostTests {
    @Test func twoHostsConnectEchoAndIdentify() async throws {
        try await withHost(identity: .ed25519(seed: 1), configuration: listeningConfig()) { server in
            #expect(server.peerID.b58String == "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X")
            let address = server.addresses[0]
            #expect(address.tcpPort != 0, "port 0 must be resolved to the real port")
            #expect(address.peerID == server.peerID)
            try await withHost(identity: .ed25519(seed: 2)) { client in
                let events = client.events()
                let connection = try await client.connect(to: address)
                #expect(connection.remotePeer == server.peerID)
                #expect(connection.direction == .outbound)
                #expect(try await echo(client, to: server.peerID, "hello") == "hello")
                #expect(try await echo(client, to: server.peerID, "") == "")
                #expect(try await echo(client, to: server.peerID, "ünïcødé ✓") == "ünïcødé ✓")

                let info = try await IdentifyService.identify(connection, host: client)
                #expect(info.protocols.contains(EchoService.protocolID))
                #expect(info.agentVersion == server.configuration.agentVersion)
                #expect(client.peerstore.protocols(for: server.peerID).contains(PingService.protocolID))

                var sawConnected = false
                for await event in events {
                    if case .peerConnected(let p) = event, p == server.peerID {
                        sawConnected = true
                        break
                    }
                }
                #expect(sawConnected)
            }
        }
    }

    @Test func connectionIsReusedAndConcurrentDialsShareOne() async throws {
        try await withHost(configuration: listeningConfig()) { server in
            try await withHost { client in
                let address = server.addresses[0]
                let connections = try await withThrowingTaskGroup(of: Connection.self) { group in
                    for _ in 0..<10 { group.addTask { try await client.connect(to: address) } }
                    return try await group.reduce(into: [Connection]()) { $0.append($1) }
                }
                #expect(Set(connections.map(\.id)).count == 1, "concurrent dials must share one connection")
                let again = try await client.connect(to: server.peerID)
                #expect(again === connections[0])
                _ = try await echo(client, to: server.peerID, "x")
                #expect(client.connections(to: server.peerID).count == 1)
            }
        }
    }

    @Test func dialingOurselvesIsRefused() async throws {
        try await withHost(configuration: listeningConfig()) { host in
            await #expect { try await host.connect(to: host.addresses[0]) } throws: {
                ($0 as? HostError)?.code == .dialSelf
            }
            await #expect { try await host.connect(to: host.peerID) } throws: {
                ($0 as? HostError)?.code == .dialSelf
            }
        }
    }

    @Test func dialingAPeerWithoutAddressesFailsClearly() async throws {
        try await withHost { host in
            let stranger = PeerID(publicKey: PrivateKey.ed25519(seed: 77).publicKey)
            await #expect { try await host.connect(to: stranger) } throws: {
                ($0 as? HostError)?.code == .noAddresses
            }
        }
    }

    @Test func unsupportedProtocolFailsWithClearError() async throws {
        try await withHost(configuration: listeningConfig()) { server in
            try await withHost { client in
                _ = try await client.connect(to: server.addresses[0])
                await #expect { try await client.newStream(to: server.peerID, protocols: ["/nope/1.0.0"]) } throws: {
                    ($0 as? HostError)?.code == .protocolNotSupported
                }
                // The connection is still fine.
                #expect(try await echo(client, to: server.peerID, "still here") == "still here")
            }
        }
    }

    @Test func secondHandlerForSameProtocolIsAnError() async throws {
        try await withHost { host in
            try host.setStreamHandler("/a/1") { _ in }
            #expect { try host.setStreamHandler("/a/1") { _ in } } throws: { ($0 as? HostError)?.code == .handlerExists }
            host.removeStreamHandler("/a/1")
            try host.setStreamHandler("/a/1") { _ in }
        }
    }

    @Test func dialTimeoutWhenTheRemoteNeverAnswers() async throws {
        // A TCP server that accepts and then says nothing: the upgrade must time out.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let silent = try await ServerBootstrap(group: group)
            .childChannelInitializer { $0.eventLoop.makeSucceededVoidFuture() }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = silent.localAddress!.port!
        let config = P2PHost.Configuration.defaults {
            $0.dialTimeout = .milliseconds(300)
            $0.handshakeTimeout = .milliseconds(200)
        }
        try await withHost(configuration: config) { host in
            let someone = PeerID(publicKey: PrivateKey.ed25519(seed: 5).publicKey)
            let address = try Multiaddr("/ip4/127.0.0.1/tcp/\(port)").appending(peerID: someone)
            await #expect { try await host.connect(to: address) } throws: { error in
                (error as? HostError)?.code == .dialTimeout
            }
        }
        try await silent.close()
        try await group.shutdownGracefully()
    }

    @Test func pingAndPerf() async throws {
        try await withHost(configuration: listeningConfig([PerfService()])) { server in
            try await withHost { client in
                _ = try await client.connect(to: server.addresses[0])
                let rtts = try await PingService.ping(host: client, peer: server.peerID, count: 5)
                #expect(rtts.count == 5)
                let result = try await PerfService.run(host: client, peer: server.peerID, upload: 3 << 20, download: 5 << 20)
                #expect(result.uploadBytes == 3 << 20)
                #expect(result.downloadBytes == 5 << 20)
            }
        }
    }

    @Test func gracefulShutdownLetsOpenStreamsFinish() async throws {
        let server = P2PHost(identity: .generateEd25519(), configuration: listeningConfig())
        try await server.start()
        try server.setStreamHandler("/slow/1.0.0") { stream in
            _ = try await stream.readToEnd(maxBytes: 100)
            try await Task.sleep(for: .milliseconds(300))
            try await stream.write(ByteBuffer(string: "done"))
        }
        try await withHost { client in
            let stream = try await client.newStream(to: server.addresses[0], protocols: ["/slow/1.0.0"])
            try await stream.closeWrite()
            async let shutdown: Void = server.shutdown(gracePeriod: .seconds(5))
            let reply = try await stream.readToEnd(maxBytes: 100)
            await shutdown
            #expect(String(buffer: reply) == "done")
        }
        await #expect { try await server.listen(on: loopback) } throws: { ($0 as? HostError)?.code == .shutDown }
    }

    @Test func disconnectEventsFire() async throws {
        try await withHost(configuration: listeningConfig()) { server in
            let events = server.events()
            try await withHost(identity: .ed25519(seed: 3)) { client in
                let connection = try await client.connect(to: server.addresses[0])
                await connection.close()
            }
            let clientPeer = PeerID(publicKey: PrivateKey.ed25519(seed: 3).publicKey)
            var connected = false
            var disconnected = false
            for await event in events {
                switch event {
                case .peerConnected(let p) where p == clientPeer: connected = true
                case .peerDisconnected(let p) where p == clientPeer: disconnected = true
                default: break
                }
                if connected && disconnected { break }
            }
            #expect(connected && disconnected)
        }
    }

    @Test func identifyPushUpdatesConnectedPeers() async throws {
        try await withHost(configuration: listeningConfig()) { server in
            try await withHost { client in
                let connection = try await client.connect(to: server.addresses[0])
                try await IdentifyService.identify(connection, host: client)
                #expect(!client.peerstore.protocols(for: server.peerID).contains("/late/1.0.0"))
                let events = client.events()
                try server.setStreamHandler("/late/1.0.0") { _ in }
                for await event in events {
                    if case .peerIdentified(let p) = event, p == server.peerID,
                        client.peerstore.protocols(for: server.peerID).contains("/late/1.0.0")
                    {
                        break
                    }
                }
                #expect(client.peerstore.protocols(for: server.peerID).contains("/late/1.0.0"))
            }
        }
    }
}

@Suite(.timeLimit(.minutes(2)))
struct OptimisticNegotiationTests {
    @Test func lazyStreamAfterIdentifyWorks() async throws {
        try await withHost(configuration: listeningConfig()) { server in
            try await withHost { client in
                let connection = try await client.connect(to: server.addresses[0])
                try await IdentifyService.identify(connection, host: client)
                #expect(client.peerstore.protocols(for: server.peerID).contains(EchoService.protocolID))
                // Known protocol: newStream proposes lazily and the first read checks the answer.
                #expect(try await echo(client, to: server.peerID, "lazy") == "lazy")
                let direct = try await connection.newStream(protocols: [EchoService.protocolID], lazy: true)
                try await direct.write(ByteBuffer(string: "x"))
                #expect(String(buffer: try await direct.readExactly(1)) == "x")
                await direct.close()
            }
        }
    }

    @Test func inboundNegotiationThatDoesNotComeWithTheSynIsFinishedLater() async throws {
        // The listener answers from the event loop when the proposal comes with the SYN; here
        // the SYN comes alone and the header and proposal follow in two pieces.
        try await withHost(configuration: listeningConfig()) { server in
            try await withHost { client in
                let connection = try await client.connect(to: server.addresses[0])
                let stream = try await connection.session.openStream()
                var negotiator = MultistreamNegotiator(role: .dialer(proposals: [EchoService.protocolID]))
                let hello = negotiator.start()
                try await stream.write(ByteBuffer(bytes: hello.prefix(5)))
                try await Task.sleep(for: .milliseconds(20))
                try await stream.write(ByteBuffer(bytes: hello.dropFirst(5)))
                while negotiator.negotiatedProtocol == nil {
                    let chunk = try #require(try await stream.read())
                    _ = try negotiator.receive(chunk)
                }
                #expect(negotiator.negotiatedProtocol == EchoService.protocolID)
                try await stream.write(ByteBuffer(string: "late"))
                try await stream.closeWrite()
                var echoed = negotiator.takeLeftover()
                while var chunk = try await stream.read() { echoed.writeBuffer(&chunk) }
                #expect(String(buffer: echoed) == "late")
            }
        }
    }

    @Test func lazyStreamRefusalSurfacesOnFirstRead() async throws {
        try await withHost(configuration: listeningConfig()) { server in
            try await withHost { client in
                let connection = try await client.connect(to: server.addresses[0])
                let stream = try await connection.newStream(protocols: ["/nope/1.0.0"], lazy: true)
                await #expect { _ = try await stream.read() } throws: {
                    ($0 as? HostError)?.code == .protocolNotSupported
                }
                #expect(try await echo(client, to: server.peerID, "ok") == "ok")
            }
        }
    }

    @Test func optimisticUpgradeRefusedByListenerFailsTheDial() async throws {
        // A listener that speaks multistream but refuses everything.
        let refuser = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        MultistreamNegotiationHandler(
                            role: .listener(protocols: ["/tls/1.0.0"]), promise: channel.eventLoop.makePromise()))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = refuser.localAddress!.port!
        try await withHost { client in
            let someone = PeerID(publicKey: PrivateKey.ed25519(seed: 8).publicKey)
            let address = try Multiaddr("/ip4/127.0.0.1/tcp/\(port)").appending(peerID: someone)
            await #expect { try await client.connect(to: address) } throws: { error in
                let upgrade = (error as? HostError)?.causes.first as? HostError
                let code = (upgrade?.causes.first as? MultistreamError)?.code
                return code == .noProtocolInCommon || code == .unexpectedEOF
            }
        }
        try await refuser.close()
    }
}
