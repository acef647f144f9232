import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PointSub
import Testing
import Transport

@Suite(.timeLimit(.minutes(1)))
struct MemoryTransportTests {
    static let anyNumber = Multiaddr("/memory/0")

    /// An acceptor that records what it learns and puts a recorder on the channel.
    final class Accepted: Sendable {
        let endpoints = NIOLockedValueBox<[RemoteEndpoint]>([])
        let recorders = NIOLockedValueBox<[Recorder]>([])
        let channels = NIOLockedValueBox<[any Channel]>([])

        var acceptor: @Sendable (any Channel, RemoteEndpoint) -> EventLoopFuture<Void> {
            { channel, endpoint in
                let recorder = Recorder()
                self.endpoints.withLockedValue { $0.append(endpoint) }
                self.recorders.withLockedValue { $0.append(recorder) }
                self.channels.withLockedValue { $0.append(channel) }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(recorder)
                }
            }
        }
    }

    static let noInitializer: ConnectionInitializer = { $0.eventLoop.makeSucceededVoidFuture() }
    static var options: DialOptions { DialOptions(deadline: .after(.seconds(5))) }

    @Test func addressesItHandles() {
        let transport = MemoryTransport(group: MultiThreadedEventLoopGroup.singleton)
        #expect(transport.canDial(Multiaddr("/memory/5")))
        #expect(transport.canListen(Multiaddr("/memory/0")))
        #expect(transport.canDial(Multiaddr("/memory/5/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA")))
        #expect(!transport.canDial(Multiaddr("/ip4/127.0.0.1/tcp/1")))
        #expect(!transport.canListen(Multiaddr("/memory/5/ws")))
        #expect(!TCPTransport(group: MultiThreadedEventLoopGroup.singleton).canDial(Multiaddr("/memory/5")))
    }

    @Test func listenDialAndRefusal() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { group.shutdownGracefully { _ in } }
        let server = MemoryTransport(group: group)
        let client = MemoryTransport(group: group)
        let accepted = Accepted()

        // /memory/0 takes a fresh number; taking a bound number again fails.
        let listener = try await server.listen(on: Self.anyNumber, acceptor: accepted.acceptor)
        let number = try #require(MemoryTransport.memoryNumber(listener.address))
        #expect(number != 0)
        let second = try await server.listen(on: Self.anyNumber, acceptor: accepted.acceptor)
        #expect(second.address != listener.address)
        await #expect { try await client.listen(on: listener.address, acceptor: accepted.acceptor) } throws: {
            ($0 as? TransportError)?.code == .listenFailed
        }

        // Two dials from one transport: each is a connection whose dialer address is its own,
        // and whose source is the dialing transport.
        let first = try await client.dial(listener.address, options: Self.options, initializer: Self.noInitializer)
        let other = try await client.dial(
            listener.address.appending(peerID: PrivateKey.generateEd25519().peerID), options: Self.options,
            initializer: Self.noInitializer)
        #expect(first.isActive)
        try await first.writeAndFlush(ByteBuffer(string: "over memory")).get()
        try await eventually("accepted twice") { accepted.recorders.withLockedValue { $0.count } == 2 }
        let recorder = accepted.recorders.withLockedValue { $0[0] }
        try await eventually("bytes arrive") { recorder.bytes.count == 11 }
        #expect(String(decoding: recorder.bytes, as: UTF8.self) == "over memory")
        let endpoints = accepted.endpoints.withLockedValue { $0 }
        #expect(endpoints[0].address != endpoints[1].address)
        #expect(endpoints[0].address.flatMap(MemoryTransport.memoryNumber) != nil)
        #expect(endpoints[0].address != listener.address)
        #expect(endpoints[0].source == endpoints[1].source)
        #expect(endpoints[0].source?.contains(":") == false, "not taken for an IPv6 address by the resource manager")
        let third = try await server.dial(second.address, options: Self.options, initializer: Self.noInitializer)
        try await eventually("accepted thrice") { accepted.endpoints.withLockedValue { $0.count } == 3 }
        #expect(accepted.endpoints.withLockedValue { $0[2].source } != endpoints[0].source)

        // A dialer's number is held while its connection lives.
        let dialerAddress = try #require(endpoints[0].address)
        await #expect { try await server.listen(on: dialerAddress, acceptor: accepted.acceptor) } throws: {
            ($0 as? TransportError)?.code == .listenFailed
        }

        // Closing the listener refuses new dials; connections stay; the number is free again.
        await listener.close()
        await #expect {
            try await client.dial(listener.address, options: Self.options, initializer: Self.noInitializer)
        } throws: {
            ($0 as? TransportError)?.code == .connectionRefused
        }
        #expect(first.isActive)
        let again = try await server.listen(on: listener.address, acceptor: accepted.acceptor)
        #expect(again.address == listener.address)
        await listener.close()  // a second close of the old listener leaves the new one bound
        _ = try await client.dial(again.address, options: Self.options, initializer: Self.noInitializer).close()

        for channel in [first, other, third] { try await channel.close() }
        // Once its connection is closed, the dialer's number is free.
        try await first.closeFuture.get()
        let reuse = try await server.listen(on: dialerAddress, acceptor: accepted.acceptor)
        for bound in [second, again, reuse] { await bound.close() }
        try await allClosed(accepted.channels.withLockedValue { $0 })
    }

    @Test func bothEndsKnowTheirOwnAddress() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { group.shutdownGracefully { _ in } }
        let server = MemoryTransport(group: group)
        let client = MemoryTransport(group: group)
        let accepted = Accepted()
        let listener = try await server.listen(on: Self.anyNumber, acceptor: accepted.acceptor)
        let dialed = try await client.dial(listener.address, options: Self.options, initializer: Self.noInitializer)
        try await eventually("accepted") { accepted.channels.withLockedValue { $0.count } == 1 }
        let acceptedChannel = accepted.channels.withLockedValue { $0[0] }
        let endpoint = accepted.endpoints.withLockedValue { $0[0] }
        // The dialer's end is the number it holds (like TCP's ephemeral port), which is what the
        // listener sees as the remote; the accepting end is the listener's number.
        let dialerAddress = try #require(dialed.localMultiaddr)
        #expect(MemoryTransport.memoryNumber(dialerAddress) != nil)
        #expect(dialerAddress == endpoint.address)
        #expect(dialerAddress != listener.address)
        #expect(acceptedChannel.localMultiaddr == listener.address)
        #expect((dialed as? MemoryChannel)?.remoteMultiaddress == listener.address)
        #expect((acceptedChannel as? MemoryChannel)?.remoteMultiaddress == dialerAddress)
        try await dialed.close()
        await listener.close()
        try await allClosed([acceptedChannel])
    }

    @Test func anAcceptorThatClosesEndsTheDial() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { group.shutdownGracefully { _ in } }
        let transport = MemoryTransport(group: group)
        let accepted = NIOLockedValueBox<[any Channel]>([])
        let listener = try await transport.listen(on: Self.anyNumber) { channel, _ in
            accepted.withLockedValue { $0.append(channel) }
            return channel.close()
        }
        // Depending on which loop runs first, the dial fails (closed before this end was active)
        // or gives a channel that closes at once, as a TCP connection accepted and closed would.
        for _ in 0..<20 {
            do {
                let channel = try await transport.dial(
                    listener.address, options: Self.options, initializer: Self.noInitializer)
                try await channel.closeFuture.get()
                #expect(!channel.isActive)
            } catch let error as TransportError {
                #expect(error.code == .connectionFailed)
                #expect(error.reason == "closed by the listener")
            }
        }
        await listener.close()
        try await allClosed(accepted.withLockedValue { $0 })
    }

    @Test func aFailedInitializerFailsTheDial() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { group.shutdownGracefully { _ in } }
        let transport = MemoryTransport(group: group)
        let accepted = Accepted()
        let listener = try await transport.listen(on: Self.anyNumber, acceptor: accepted.acceptor)
        await #expect {
            try await transport.dial(listener.address, options: Self.options) {
                $0.eventLoop.makeFailedFuture(ChannelError.connectTimeout(.seconds(1)))
            }
        } throws: {
            ($0 as? TransportError)?.code == .connectionFailed
        }
        // The accepted end is closed with it.
        try await eventually("accepted") { accepted.channels.withLockedValue { $0.count } == 1 }
        try await accepted.channels.withLockedValue { $0[0] }.closeFuture.get()
        await listener.close()
    }
}

/// Hosts on the in-memory transport only.
@Suite(.timeLimit(.minutes(2)))
struct MemoryHostTests {
    static func config(_ services: [any HostService] = [EchoService()]) -> P2PHost.Configuration {
        .defaults {
            $0.transports = [.memory]
            $0.listenAddresses = [Multiaddr("/memory/0")]
            $0.services = services
        }
    }

    @Test func twoHostsConnectEchoPingAndIdentify() async throws {
        try await withHost(configuration: Self.config()) { server in
            let address = server.addresses[0]
            #expect(MemoryTransport.memoryNumber(address) != nil)
            #expect(address.peerID == server.peerID)
            try await withHost(configuration: Self.config()) { client in
                let connection = try await client.connect(to: address)
                #expect(connection.remotePeer == server.peerID)
                #expect(connection.remoteAddress == address.removingPeerID())
                #expect(try await echo(client, to: server.peerID, "hello") == "hello")
                let rtts = try await PingService.ping(host: client, peer: server.peerID, count: 3)
                #expect(rtts.count == 3)
                let info = try await IdentifyService.identify(connection, host: client)
                #expect(info.protocols.contains(EchoService.protocolID))
                #expect(info.listenAddresses.contains(address.removingPeerID()))
                // The server saw the client at a /memory/ address of its own.
                let inbound = try #require(server.connections(to: client.peerID).first)
                #expect(MemoryTransport.memoryNumber(inbound.remoteAddress) != nil)
                #expect(inbound.remoteAddress != client.listenAddresses[0])
                // Both connections know their local end: the dialer's own number, which the
                // server sees as the remote, and the server's listen address.
                let local = try #require(connection.localAddress)
                #expect(local == inbound.remoteAddress)
                #expect(inbound.localAddress == address.removingPeerID())
            }
        }
    }

    @Test func aMegabyteEchoesWithBackPressure() async throws {
        try await withHost(configuration: Self.config()) { server in
            try await withHost(configuration: Self.config()) { client in
                _ = try await client.connect(to: server.addresses[0])
                let stream = try await client.newStream(to: server.peerID, protocols: [EchoService.protocolID])
                let size = 1 << 20
                let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31) }
                // Written while the echo is read back: neither side holds the whole megabyte.
                async let sent: Void = {
                    for start in stride(from: 0, to: size, by: 16 << 10) {
                        try await stream.write(ByteBuffer(bytes: payload[start..<start + (16 << 10)]))
                    }
                    try await stream.closeWrite()
                }()
                let echoed = try await stream.readToEnd(maxBytes: 2 << 20)
                try await sent
                #expect(echoed.readableBytes == size)
                #expect(Array(echoed.readableBytesView) == payload)
            }
        }
    }

    @Test func perfUploadAndDownload() async throws {
        try await withHost(configuration: Self.config([PerfService()])) { server in
            try await withHost(configuration: Self.config()) { client in
                _ = try await client.connect(to: server.addresses[0])
                let result = try await PerfService.run(
                    host: client, peer: server.peerID, upload: 3 << 20, download: 5 << 20)
                #expect(result.uploadBytes == 3 << 20)
                #expect(result.downloadBytes == 5 << 20)
            }
        }
    }

    /// The per-address limits count connections per dialing transport (one per host): a second
    /// silent connection from one source is refused while other hosts still get in.
    @Test func perAddressLimitsCountEachDialingHost() async throws {
        var config = Self.config()
        config.resources.perAddress.pendingInbound = 1
        try await withHost(configuration: config) { server in
            let address = server.addresses[0].removingPeerID()
            let raw = MemoryTransport(group: server.eventLoopGroup)
            let options = DialOptions(deadline: .after(.seconds(5)))
            // Silent connections: they stay in the handshake, holding the source's one slot.
            let first = try await raw.dial(address, options: options) { $0.eventLoop.makeSucceededVoidFuture() }
            do {
                let second = try await raw.dial(address, options: options) { $0.eventLoop.makeSucceededVoidFuture() }
                try await eventually("refused: closed by the server") { !second.isActive }
            } catch let error as TransportError {
                #expect(error.code == .connectionFailed)  // closed before it was active
            }
            #expect(first.isActive)
            // Another host is another source.
            try await withHost(configuration: Self.config()) { client in
                _ = try await client.connect(to: server.addresses[0])
                #expect(try await echo(client, to: server.peerID, "in") == "in")
            }
            try await first.close()
        }
    }

    @Test func closingOneHostEndsTheOthersConnection() async throws {
        try await withHost(configuration: Self.config()) { client in
            let server = P2PHost(identity: .generateEd25519(), configuration: Self.config())
            try await server.start()
            let address = server.addresses[0]
            let connection = try await client.connect(to: address)
            #expect(try await echo(client, to: server.peerID, "x") == "x")
            await server.shutdown(gracePeriod: .milliseconds(100))
            try await eventually("the client's connection closed") { connection.isClosed }
            try await eventually("no connection left") { client.connections(to: server.peerID).isEmpty }
            // The listener is gone with the host.
            await #expect(throws: (any Error).self) { try await client.connect(to: address) }
        }
    }
}
