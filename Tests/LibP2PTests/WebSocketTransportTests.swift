import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOPosix
import NIOSSL
import NIOWebSocket
import PointSub
import Testing

@testable import Transport

private let wsLoopback = Multiaddr("/ip4/127.0.0.1/tcp/0/ws")

/// A host that listens on (and dials) WebSocket only; `webSocket` overrides the transport's
/// limits.
private func wsConfig(
    listening: Bool = true, services: [any HostService] = [EchoService()], webSocket: TransportOption = .webSocket
) -> P2PHost.Configuration {
    .defaults {
        $0.transports = [webSocket]
        $0.listenAddresses = listening ? [wsLoopback] : []
        $0.services = services
    }
}

/// A self-signed certificate for "localhost" and 127.0.0.1 (P-256, valid 2000-2100), test only.
let webSocketTestCertificate = """
    -----BEGIN CERTIFICATE-----
    MIIBZDCCAQqgAwIBAgIBATAKBggqhkjOPQQDAjAUMRIwEAYDVQQDDAlsb2NhbGhv
    c3QwIBcNMDAwMTAxMDAwMDAwWhgPMjEwMDAxMDEwMDAwMDBaMBQxEjAQBgNVBAMM
    CWxvY2FsaG9zdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABMb4qHjilXhdwkum
    c4Dns6UDrtfyijFJsSWY5P5izok+LGRxYYuLp724+zoxYGDFnARXynIxQONKsU+q
    QwiYUlOjSzBJMBoGA1UdEQQTMBGCCWxvY2FsaG9zdIcEfwAAATAMBgNVHRMBAf8E
    AjAAMB0GA1UdDgQWBBQfrwzLPepgpzfJJk/XGhd97lwlxDAKBggqhkjOPQQDAgNI
    ADBFAiAekWT9oJ/1p4ri+Tlu1jYFk4WRNz4ncQrRvlGMCTItSwIhAMxpIsIvqJRx
    esPD3wXgOBMIHQL+q3/ePpa5b/Hjtb28
    -----END CERTIFICATE-----

    """

/// The key of ``webSocketTestCertificate``.
let webSocketTestKey = """
    -----BEGIN PRIVATE KEY-----
    MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgUELwHE7vuJ4bs/LG
    rALudPOLCjQsim9DxOfYy4FwLzyhRANCAATG+Kh44pV4XcJLpnOA57OlA67X8oox
    SbElmOT+Ys6JPixkcWGLi6e9uPs6MWBgxZwEV8pyMUDjSrFPqkMImFJT
    -----END PRIVATE KEY-----

    """

/// TLS that presents ``webSocketTestCertificate`` and trusts only it.
func webSocketTestTLS() throws -> WebSocketTLS {
    let certificate = try NIOSSLCertificate(bytes: Array(webSocketTestCertificate.utf8), format: .pem)
    let key = try NIOSSLPrivateKey(bytes: Array(webSocketTestKey.utf8), format: .pem)
    var client = TLSConfiguration.makeClientConfiguration()
    client.trustRoots = .certificates([certificate])
    return try WebSocketTLS(
        server: .makeServerConfiguration(certificateChain: [.certificate(certificate)], privateKey: .privateKey(key)),
        client: client)
}

/// The upgrade request a browser-like client sends (RFC 6455 §1.3's sample key).
private let upgradeRequest = Array(
    ("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").utf8)

/// One client frame: masked (unless `masked` is false) with a fixed key.
private func clientFrame(opcode: UInt8, fin: Bool = true, payload: [UInt8], masked: Bool = true) -> [UInt8] {
    var out: [UInt8] = [(fin ? 0x80 : 0) | opcode]
    let maskBit: UInt8 = masked ? 0x80 : 0
    if payload.count < 126 {
        out.append(maskBit | UInt8(payload.count))
    } else if payload.count <= 0xFFFF {
        out.append(maskBit | 126)
        out += [UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
    } else {
        out.append(maskBit | 127)
        out += (0..<8).reversed().map { UInt8((UInt64(payload.count) >> (8 * UInt64($0))) & 0xFF) }
    }
    guard masked else { return out + payload }
    let key: [UInt8] = [0x12, 0x34, 0x56, 0x78]
    out += key
    out += payload.enumerated().map { $0.element ^ key[$0.offset % 4] }
    return out
}

/// Whether `haystack` contains `needle`.
private func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard needle.count <= haystack.count else { return false }
    return (0...(haystack.count - needle.count)).contains { Array(haystack[$0..<($0 + needle.count)]) == needle }
}

/// A server close frame with a status code (unmasked, 2-byte payload).
private func closeFrame(_ code: UInt16) -> [UInt8] {
    [0x88, 0x02, UInt8(code >> 8), UInt8(code & 0xFF)]
}

/// A memory account with a limit that counts what is reserved (peak, refusals).
final class CountingMemory: Sendable {
    private struct State {
        var outstanding = 0
        var peak = 0
        var refusals = 0
    }

    private let state = NIOLockedValueBox(State())
    let limit: Int

    init(limit: Int = .max) { self.limit = limit }

    var outstanding: Int { state.withLockedValue { $0.outstanding } }
    var peak: Int { state.withLockedValue { $0.peak } }
    var refusals: Int { state.withLockedValue { $0.refusals } }

    var memory: TransportMemory {
        TransportMemory(
            reserve: { bytes in
                try self.state.withLockedValue { s in
                    guard s.outstanding + bytes <= self.limit else {
                        s.refusals += 1
                        throw TransportError(.resourceLimit, "test limit")
                    }
                    s.outstanding += bytes
                    s.peak = max(s.peak, s.outstanding)
                }
            },
            release: { bytes in self.state.withLockedValue { $0.outstanding -= bytes } })
    }
}

/// Counts the bytes that reach the end of a pipeline.
final class ByteCounter: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let count = NIOLockedValueBox(0)
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data).readableBytes
        count.withLockedValue { $0 += bytes }
    }
}

/// Collects errors that reach the end of a pipeline.
final class WebSocketTestRecorder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    var errors: [any Error] = []
    var received: [UInt8] = []
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += Array(buffer: unwrapInboundIn(data))
    }
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        errors.append(error)
    }
}

@Suite(.timeLimit(.minutes(2)))
struct WebSocketTransportTests {
    let group = MultiThreadedEventLoopGroup.singleton

    // MARK: - Addresses

    @Test(arguments: [
        ("/ip4/127.0.0.1/tcp/4001/ws", true),
        ("/ip6/::1/tcp/4001/ws", true),
        ("/dns/example.com/tcp/443/ws", true),
        ("/dns4/example.com/tcp/80/ws/p2p/12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X", true),
        ("/dns6/example.com/tcp/80/ws", true),
        ("/ip4/127.0.0.1/tcp/4001", false),
        ("/ip4/127.0.0.1/tcp/4001/wss", true),
        ("/ip4/127.0.0.1/tcp/4001/tls/ws", true),
        ("/ip4/127.0.0.1/tcp/4001/tls/sni/example.com/ws", true),
        ("/ip4/127.0.0.1/tcp/4001/tls", false),
        ("/ip4/127.0.0.1/tcp/4001/tls/ws/ws", false),
        ("/ip4/127.0.0.1/tcp/4001/sni/example.com/ws", false),
        ("/ip4/127.0.0.1/udp/4001/ws", false),
        ("/ip4/127.0.0.1/tcp/4001/ws/ws", false),
    ])
    func addressesItHandles(_ text: String, _ expected: Bool) throws {
        let address = try Multiaddr(text)
        #expect(WebSocketTransport.canHandle(address) == expected)
        if expected { #expect(!TCPTransport.canHandle(address), "a /ws address is not a TCP one") }
    }

    // MARK: - Two Swift hosts

    @Test func twoHostsOverWebSocketEchoPingIdentify() async throws {
        try await withHost(configuration: wsConfig()) { server in
            let address = server.addresses[0]
            #expect(address.removingPeerID().components.last == .ws)
            #expect(address.tcpPort != 0, "port 0 must be resolved to the real port")
            try await withHost(configuration: wsConfig(listening: false)) { client in
                let connection = try await client.connect(to: address)
                #expect(connection.remotePeer == server.peerID)
                #expect(connection.remoteAddress.components.last == .ws)
                #expect(connection.localAddress != nil)
                #expect(try await echo(client, to: server.peerID, "hello") == "hello")

                // 1 MiB through, both ways: more than one frame, more than one Noise message.
                let big = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
                let stream = try await client.newStream(to: server.peerID, protocols: [EchoService.protocolID])
                // Written while reading: more than a Yamux window, so a write-then-read would stall.
                async let sent: Void = {
                    try await stream.write(ByteBuffer(bytes: big))
                    try await stream.closeWrite()
                }()
                let back = try await stream.readToEnd(maxBytes: 2 << 20)
                try await sent
                #expect(back.readableBytes == big.count)
                #expect(Array(buffer: back) == big)

                let rtts = try await PingService.ping(host: client, peer: server.peerID, count: 3)
                #expect(rtts.count == 3)

                let info = try await IdentifyService.identify(connection, host: client)
                #expect(info.protocols.contains(EchoService.protocolID))
                #expect(info.listenAddresses.contains { $0.components.last == .ws })

                let inbound = server.connections(to: client.peerID)
                #expect(inbound.first?.remoteAddress.components.last == .ws)
            }
        }
    }

    @Test func aHostWithBothTransportsServesEach() async throws {
        let config = P2PHost.Configuration.defaults {
            $0.transports = [.tcp, .webSocket]
            $0.listenAddresses = [loopback, wsLoopback]
            $0.services = [EchoService()]
        }
        try await withHost(configuration: config) { server in
            let tcp = try #require(server.addresses.first { TCPTransport.canHandle($0) })
            let ws = try #require(server.addresses.first { WebSocketTransport.canHandle($0) })
            try await withHost(configuration: wsConfig(listening: false)) { client in
                _ = try await client.connect(to: ws)
                #expect(try await echo(client, to: server.peerID, "over ws") == "over ws")
            }
            try await withHost { client in
                _ = try await client.connect(to: tcp)
                #expect(try await echo(client, to: server.peerID, "over tcp") == "over tcp")
            }
        }
    }

    @Test func aWildcardListenAddressExpandsToWebSocketAddresses() async throws {
        let config = P2PHost.Configuration.defaults {
            $0.transports = [.webSocket]
            $0.listenAddresses = [Multiaddr("/ip4/0.0.0.0/tcp/0/ws")]
            $0.services = [EchoService()]
        }
        try await withHost(configuration: config) { server in
            let addresses = server.listenAddresses
            #expect(!addresses.isEmpty)
            #expect(addresses.allSatisfy { WebSocketTransport.canHandle($0) }, "\(addresses)")
            let local = try #require(addresses.first { $0.ipAddress?.description == "127.0.0.1" })
            try await withHost(configuration: wsConfig(listening: false)) { client in
                _ = try await client.connect(to: local.appending(peerID: server.peerID))
                #expect(try await echo(client, to: server.peerID, "wildcard") == "wildcard")
            }
        }
    }

    @Test func aDNSAddressIsResolved() async throws {
        try await withHost(configuration: wsConfig()) { server in
            let port = try #require(server.addresses[0].tcpPort)
            let byName = try Multiaddr("/dns4/localhost/tcp/\(port)/ws").appending(peerID: server.peerID)
            try await withHost(configuration: wsConfig(listening: false)) { client in
                let connection = try await client.connect(to: byName)
                #expect(connection.remotePeer == server.peerID)
                #expect(try await echo(client, to: server.peerID, "by name") == "by name")
            }
        }
    }

    @Test func dnsNamesResolveToTheirFamilyOnly() async throws {
        let transport = WebSocketTransport(group: group)
        let listener = try await transport.listen(on: wsLoopback) { channel, _ in channel.eventLoop.makeSucceededVoidFuture() }
        let port = try #require(listener.address.tcpPort)
        // /dns and /dns4 reach the IPv4 listener; /dns6 never falls back to an IPv4 address.
        for name in ["/dns4/localhost", "/dns/localhost", "/dns4/127.0.0.1"] {
            let channel = try await transport.dial(
                try Multiaddr("\(name)/tcp/\(port)/ws"), options: DialOptions(deadline: .after(.seconds(5)))
            ) { $0.eventLoop.makeSucceededVoidFuture() }
            #expect(channel.remoteAddress?.ipAddress == "127.0.0.1", "\(name)")
            try await channel.close()
        }
        await #expect {
            _ = try await transport.dial(
                try Multiaddr("/dns6/127.0.0.1/tcp/\(port)/ws"), options: DialOptions(deadline: .after(.seconds(5)))
            ) { $0.eventLoop.makeSucceededVoidFuture() }
        } throws: { error in
            (error as? TransportError)?.code == .connectionFailed
        }
        await listener.close()
    }

    // MARK: - Memory accounting

    /// An embedded channel with the frame path as the transport builds it after the upgrade:
    /// codec, frame accounting charged to `memory`, frame handler.
    func accounted(
        _ role: WebSocketFramePolicy.Role, maxFrameSize: Int = 4096, memory: TransportMemory
    ) throws -> (EmbeddedChannel, WebSocketTestRecorder) {
        let channel = EmbeddedChannel()
        let recorder = WebSocketTestRecorder()
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(WebSocketFrameEncoder())
        try sync.addHandler(ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: maxFrameSize)))
        try WebSocketTransport.addFrameHandlers(
            sync, role: role, maxFrameSize: maxFrameSize, maxOutboundFrameSize: 100, memory: memory)
        try sync.addHandler(recorder)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return (channel, recorder)
    }

    @Test func aFrameHeldAcrossReadsIsReservedUntilDelivered() throws {
        let account = CountingMemory()
        let (channel, recorder) = try accounted(.server, memory: account.memory)
        let frame = clientFrame(opcode: 0x2, payload: [UInt8](repeating: 5, count: 3000))
        // A frame that arrives whole is never held across reads: nothing is reserved.
        try channel.writeInbound(ByteBuffer(bytes: frame))
        #expect(recorder.received.count == 3000)
        #expect(account.peak == 0)
        // The same frame in three reads: reserved in full (header and payload) from the first
        // read until it is delivered.
        try channel.writeInbound(ByteBuffer(bytes: frame[0..<10]))
        #expect(account.outstanding == frame.count)
        try channel.writeInbound(ByteBuffer(bytes: frame[10..<2000]))
        #expect(account.outstanding == frame.count)
        #expect(recorder.received.count == 3000)
        try channel.writeInbound(ByteBuffer(bytes: frame[2000...]))
        #expect(recorder.received.count == 6000)
        #expect(account.outstanding == 0)
        // The end of one frame and the start of the next in one read: only the next is held.
        try channel.writeInbound(ByteBuffer(bytes: frame[0..<100]))
        try channel.writeInbound(ByteBuffer(bytes: Array(frame[100...]) + frame[0..<50]))
        #expect(recorder.received.count == 9000)
        #expect(account.outstanding == frame.count)
        // A frame still incomplete when the connection closes is released.
        _ = try? channel.finish()
        #expect(account.outstanding == 0)
        #expect(recorder.errors.isEmpty, "\(recorder.errors)")
    }

    @Test func aFrameOverTheMemoryLimitIsRefusedAndTheConnectionClosed() throws {
        let account = CountingMemory(limit: 1000)
        let (channel, recorder) = try accounted(.server, memory: account.memory)
        let small = clientFrame(opcode: 0x2, payload: [UInt8](repeating: 1, count: 500))
        try channel.writeInbound(ByteBuffer(bytes: small[0..<20]))
        try channel.writeInbound(ByteBuffer(bytes: small[20...]))
        #expect(recorder.received.count == 500)
        #expect(account.peak == small.count)
        let large = clientFrame(opcode: 0x2, payload: [UInt8](repeating: 2, count: 3000))
        _ = try? channel.writeInbound(ByteBuffer(bytes: large[0..<100]))
        #expect(recorder.received.count == 500, "nothing of the refused frame is delivered")
        #expect((recorder.errors.first as? TransportError)?.code == .resourceLimit, "\(recorder.errors)")
        #expect(!channel.isActive, "the connection must be closed")
        #expect(account.refusals == 1)
        #expect(account.outstanding == 0)
        _ = try? channel.finish()
    }

    @Test func anAssignedAccountIsChargedForLaterFrames() throws {
        let first = CountingMemory()
        let second = CountingMemory()
        let (channel, recorder) = try accounted(.server, memory: first.memory)
        let frame = clientFrame(opcode: 0x2, payload: [UInt8](repeating: 3, count: 1000))
        try channel.writeInbound(ByteBuffer(bytes: frame[0..<50]))
        #expect(first.outstanding == frame.count)
        channel.pipeline.fireUserInboundEventTriggered(TransportMemory.Assignment(second.memory))
        // What was reserved is released where it was reserved.
        try channel.writeInbound(ByteBuffer(bytes: frame[50...]))
        #expect(first.outstanding == 0)
        try channel.writeInbound(ByteBuffer(bytes: frame[0..<50]))
        #expect(second.outstanding == frame.count)
        #expect(first.outstanding == 0)
        _ = try? channel.finish()
        #expect(second.outstanding == 0)
        #expect(recorder.received.count == 1000)
    }

    @Test func theTransportChargesTheUpgradesAndFramesToItsAccounts() async throws {
        let serverMemory = CountingMemory(limit: 64 * 1024)
        let clientMemory = CountingMemory()
        let transport = WebSocketTransport(group: group)
        let counter = ByteCounter()
        let options = ListenOptions(memory: { _ in serverMemory.memory })
        let listener = try await transport.listen(on: wsLoopback, options: options) { channel, _ in
            channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(counter) }
        }
        // An honest connection: its upgrade is charged on both sides (the request, the 101
        // response), and released once done.
        let honest = try await transport.dial(
            listener.address, options: DialOptions(deadline: .after(.seconds(5)), memory: clientMemory.memory)
        ) { $0.eventLoop.makeSucceededVoidFuture() }
        #expect(clientMemory.peak > 0, "the 101 response was charged")
        try await honest.writeAndFlush(ByteBuffer(bytes: [UInt8](repeating: 1, count: 32 * 1024))).get()
        try await eventually("32 KiB arrive") { counter.count.withLockedValue { $0 } == 32 * 1024 }
        #expect(serverMemory.peak > 0, "the upgrade request was charged")
        try await eventually("the server's reservations released") { serverMemory.outstanding == 0 }
        #expect(clientMemory.outstanding == 0)

        // 100 KiB in one frame: more than one read, over the server's 64 KiB. Refused, closed.
        let greedy = try await WebSocketTransport(group: group, maxOutboundFrameSize: 1 << 20).dial(
            listener.address, options: DialOptions(deadline: .after(.seconds(5)))
        ) { $0.eventLoop.makeSucceededVoidFuture() }
        try? await greedy.writeAndFlush(ByteBuffer(bytes: [UInt8](repeating: 2, count: 100 * 1024))).get()
        try await greedy.closeFuture.get()
        #expect(serverMemory.refusals > 0)
        #expect(counter.count.withLockedValue { $0 } == 32 * 1024, "nothing of the refused frame arrived")

        // The honest connection keeps working, and everything is released at the end.
        try await honest.writeAndFlush(ByteBuffer(string: "still here")).get()
        try await eventually("more bytes arrive") { counter.count.withLockedValue { $0 } == 32 * 1024 + 10 }
        try await honest.close()
        await listener.close()
        try await eventually("released") { serverMemory.outstanding == 0 && clientMemory.outstanding == 0 }
    }

    @Test func aLargeFrameUnderALowMemoryLimitIsRefusedAndOthersAreServed() async throws {
        let config = P2PHost.Configuration.defaults {
            $0.transports = [.webSocket]
            $0.listenAddresses = [wsLoopback]
            $0.services = [EchoService()]
            // Room for a connection's security buffers (160 KiB), a stream's window (256 KiB)
            // and an honest peer's frames (one Noise message each, at most 64 KiB), not for a
            // frame of 900 KiB.
            $0.resources.perConnection.memory = 1 << 20
        }
        try await withHost(configuration: config) { server in
            let baseline = server.resourceManager.systemUsage.memory
            let events = server.events()
            var header: [UInt8] = [0x82, 0x80 | 127]
            header += (0..<8).reversed().map { UInt8(((900 << 10) >> (8 * $0)) & 0xFF) }
            header += [1, 2, 3, 4]
            let reply = try await raw(server, upgradeRequest + header + [UInt8](repeating: 0xAB, count: 4096))
            #expect(String(decoding: reply.prefix(12), as: UTF8.self) == "HTTP/1.1 101")
            let error = await firstUpgradeFailure(events)
            #expect((error as? TransportError)?.code == .resourceLimit, "\(String(describing: error))")
            try await stillServes(server)
            // What the refused and the honest connection held is all given back.
            try await eventually("memory back to the baseline") {
                server.resourceManager.systemUsage.memory == baseline
                    && server.resourceManager.usage(ofService: "transport").memory == 0
            }
        }
    }

    // MARK: - Secure WebSocket

    @Test func plainTransportLeavesSecureAddressesAlone() throws {
        let plain = WebSocketTransport(group: group)
        let secure = Multiaddr("/ip4/127.0.0.1/tcp/4001/tls/ws")
        #expect(!plain.canDial(secure) && !plain.canListen(secure))
        #expect(plain.canDial(Multiaddr("/ip4/127.0.0.1/tcp/4001/ws")))
        // A dialer with TLS but no certificate of its own dials secure addresses, never listens.
        let dialer = WebSocketTransport(group: group, tls: try WebSocketTLS())
        #expect(dialer.canDial(secure) && !dialer.canListen(secure))
    }

    @Test func twoHostsOverSecureWebSocket() async throws {
        let tls = TransportOption.webSocket(tls: try webSocketTestTLS())
        let config = P2PHost.Configuration.defaults {
            $0.transports = [tls]
            $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0/tls/ws")]
            $0.services = [EchoService()]
        }
        try await withHost(configuration: config) { server in
            let address = server.addresses[0]
            #expect(Array(address.removingPeerID().components.suffix(2)) == [.tls, .ws])
            let port = try #require(address.tcpPort)
            // By IP (checked against the certificate's IP), by name (SNI "localhost") and in
            // the older /wss spelling.
            for text in [
                "/ip4/127.0.0.1/tcp/\(port)/tls/ws", "/dns4/localhost/tcp/\(port)/tls/ws", "/ip4/127.0.0.1/tcp/\(port)/wss",
            ] {
                try await withHost(configuration: wsConfig(listening: false, webSocket: tls)) { client in
                    let connection = try await client.connect(to: try Multiaddr(text).appending(peerID: server.peerID))
                    #expect(connection.remotePeer == server.peerID, "\(text)")
                    #expect(try await echo(client, to: server.peerID, "secure") == "secure", "\(text)")
                    let rtts = try await PingService.ping(host: client, peer: server.peerID, count: 2)
                    #expect(rtts.count == 2)
                    let info = try await IdentifyService.identify(connection, host: client)
                    #expect(info.listenAddresses.contains { $0.components.suffix(2) == [.tls, .ws] })
                }
            }
        }
    }

    @Test func aDialerThatDoesNotTrustTheCertificateFailsTyped() async throws {
        let tls = TransportOption.webSocket(tls: try webSocketTestTLS())
        let config = P2PHost.Configuration.defaults {
            $0.transports = [tls]
            $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0/tls/ws")]
        }
        try await withHost(configuration: config) { server in
            // The system's trust roots: our self-signed certificate is not among them.
            let transport = WebSocketTransport(group: group, tls: try WebSocketTLS())
            await #expect {
                _ = try await transport.dial(server.addresses[0], options: DialOptions(deadline: .after(.seconds(5)))) {
                    $0.eventLoop.makeSucceededVoidFuture()
                }
            } throws: { error in
                (error as? TransportError)?.code == .handshakeFailed
            }
        }
    }

    @Test func plainWebSocketToASecureListenerIsClosed() async throws {
        let tls = TransportOption.webSocket(tls: try webSocketTestTLS())
        let config = P2PHost.Configuration.defaults {
            $0.transports = [tls]
            $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0/tls/ws")]
            $0.services = [EchoService()]
        }
        try await withHost(configuration: config) { server in
            let reply = try await raw(server, upgradeRequest)
            #expect(!String(decoding: reply, as: UTF8.self).contains("101"))
            try await withHost(configuration: wsConfig(listening: false, webSocket: tls)) { client in
                _ = try await client.connect(to: server.addresses[0])
                #expect(try await echo(client, to: server.peerID, "still") == "still")
            }
        }
    }

    // MARK: - Dialing

    @Test func dialingAServerThatRefusesTheUpgradeFailsTyped() async throws {
        // A plain HTTP server: answers every request with 404.
        let server = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(CannedReply(
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        defer { server.close(promise: nil) }
        let port = try #require(server.localAddress?.port)
        let transport = WebSocketTransport(group: group)
        await #expect {
            _ = try await transport.dial(
                try Multiaddr("/ip4/127.0.0.1/tcp/\(port)/ws"), options: DialOptions(deadline: .after(.seconds(5)))
            ) { $0.eventLoop.makeSucceededVoidFuture() }
        } throws: { error in
            (error as? TransportError)?.code == .handshakeFailed
        }
    }

    @Test func dialingASilentServerTimesOut() async throws {
        // Accepts the TCP connection, never answers the upgrade.
        let server = try await ServerBootstrap(group: group).bind(host: "127.0.0.1", port: 0).get()
        defer { server.close(promise: nil) }
        let port = try #require(server.localAddress?.port)
        let transport = WebSocketTransport(group: group)
        let start = ContinuousClock.now
        await #expect {
            _ = try await transport.dial(
                try Multiaddr("/ip4/127.0.0.1/tcp/\(port)/ws"), options: DialOptions(deadline: .after(.milliseconds(300)))
            ) { $0.eventLoop.makeSucceededVoidFuture() }
        } throws: { error in
            (error as? TransportError)?.code == .dialTimeout
        }
        #expect(ContinuousClock.now - start < .seconds(10), "the dial's timeout must bound the upgrade")
    }

    // MARK: - Bad input to a listening host

    func withWebSocketServer(
        _ webSocket: TransportOption = .webSocket, _ body: (P2PHost) async throws -> Void
    ) async throws {
        try await withHost(configuration: wsConfig(webSocket: webSocket), body)
    }

    /// An honest WebSocket client still gets served.
    func stillServes(_ server: P2PHost) async throws {
        try await withHost(configuration: wsConfig(listening: false)) { client in
            _ = try await client.connect(to: server.addresses[0])
            #expect(try await echo(client, to: server.peerID, "alive") == "alive")
        }
    }

    /// Sends `bytes` on a raw TCP connection to the server, returns all it answered until it
    /// closed the connection (a reset ends the reading too: the server may close with our
    /// bytes unread).
    func raw(_ server: P2PHost, _ bytes: [UInt8]) async throws -> [UInt8] {
        let connection = try await RawConnection.open(server.addresses[0], group: group)
        return try await connection.channel.executeThenClose { inbound, outbound in
            try? await outbound.write(ByteBuffer(bytes: bytes))
            var received: [UInt8] = []
            do {
                for try await chunk in inbound { received += Array(buffer: chunk) }
            } catch {}
            return received
        }
    }

    @Test func anHTTPRequestWithoutUpgradeGets400AndIsClosed() async throws {
        try await withWebSocketServer { server in
            let reply = try await raw(server, Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            #expect(String(decoding: reply, as: UTF8.self).hasPrefix("HTTP/1.1 400"))
            try await stillServes(server)
        }
    }

    @Test func anUpgradeWithoutAKeyIsRefused() async throws {
        try await withWebSocketServer { server in
            let request = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + "Sec-WebSocket-Version: 13\r\n\r\n"
            let reply = try await raw(server, Array(request.utf8))
            #expect(String(decoding: reply, as: UTF8.self).hasPrefix("HTTP/1.1 400"))
            try await stillServes(server)
        }
    }

    @Test func garbageInsteadOfHTTPIsClosed() async throws {
        try await withWebSocketServer { server in
            let reply = try await raw(server, [0x13] + Array("/multistream/1.0.0\n".utf8) + [0xFF, 0x00, 0x0D, 0x0A])
            #expect(!String(decoding: reply, as: UTF8.self).hasPrefix("HTTP/1.1 101"))
            try await stillServes(server)
        }
    }

    @Test func anOversizeUpgradeRequestIsClosed() async throws {
        try await withWebSocketServer { server in
            // One header line of 64 KiB: over both the guard's byte limit and the decoder's.
            let request = "GET / HTTP/1.1\r\nHost: x\r\nX-Padding: " + String(repeating: "a", count: 64 * 1024) + "\r\n\r\n"
            let reply = try await raw(server, Array(request.utf8))
            #expect(!String(decoding: reply, as: UTF8.self).hasPrefix("HTTP/1.1 101"))
            try await stillServes(server)
        }
    }

    @Test func aSilentClientIsClosedAfterTheUpgradeTimeout() async throws {
        let quick = TransportOption(name: "ws") { WebSocketTransport(group: $0, upgradeTimeout: .milliseconds(300)) }
        try await withWebSocketServer(quick) { server in
            let start = ContinuousClock.now
            // Half a request line, then nothing: the server must hang up on its own.
            let reply = try await raw(server, Array("GET / HT".utf8))
            #expect(reply.isEmpty)
            #expect(ContinuousClock.now - start < .seconds(10))
            try await stillServes(server)
        }
    }

    @Test func upgradesUnderWayAreCappedPerListener() async throws {
        let capped = TransportOption(name: "ws") { WebSocketTransport(group: $0, maxPendingUpgrades: 2) }
        // One event loop: connections are accepted and set up in the order they arrived.
        let serverGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { serverGroup.shutdownGracefully { _ in } }
        try await withHost(configuration: wsConfig(webSocket: capped), eventLoopGroup: serverGroup) { server in
            // Two connections that never finish their upgrade take both slots…
            let silent = [
                try await RawConnection.open(server.addresses[0], group: group),
                try await RawConnection.open(server.addresses[0], group: group),
            ]
            // …so a third is closed at once, without an answer (well before the 10 s upgrade timeout).
            let start = ContinuousClock.now
            let reply = try await raw(server, upgradeRequest)
            #expect(reply.isEmpty)
            #expect(ContinuousClock.now - start < .seconds(5))
            // Once they are gone, the slots are free again.
            for connection in silent { try await connection.channel.channel.close() }
            try await stillServes(server)
        }
    }

    @Test func aTextFrameAfterTheUpgradeClosesWithProtocolError() async throws {
        try await withWebSocketServer { server in
            let events = server.events()
            let reply = try await raw(server, upgradeRequest + clientFrame(opcode: 0x1, payload: Array("hi".utf8)))
            #expect(String(decoding: reply.prefix(12), as: UTF8.self) == "HTTP/1.1 101")
            #expect(contains(reply, closeFrame(1002)), "expected a close frame with 1002")
            // The host's upgrade of that connection failed with the transport's typed error.
            let error = await firstUpgradeFailure(events)
            #expect((error as? TransportError)?.code == .protocolViolation, "\(String(describing: error))")
            try await stillServes(server)
        }
    }

    @Test func anOversizeFrameClosesWithMessageTooBig() async throws {
        try await withWebSocketServer { server in
            // A frame header announcing 2 MiB (over the 1 MiB limit) and some of its payload.
            var header: [UInt8] = [0x82, 0x80 | 127]
            header += (0..<8).reversed().map { UInt8(((2 << 20) >> (8 * $0)) & 0xFF) }
            header += [1, 2, 3, 4]
            let events = server.events()
            let reply = try await raw(server, upgradeRequest + header + [UInt8](repeating: 0xAB, count: 4096))
            #expect(String(decoding: reply.prefix(12), as: UTF8.self) == "HTTP/1.1 101")
            #expect(contains(reply, closeFrame(1009)), "expected a close frame with 1009")
            let error = await firstUpgradeFailure(events)
            #expect((error as? TransportError)?.code == .frameTooLarge, "\(String(describing: error))")
            try await stillServes(server)
        }
    }

    @Test func anUnmaskedClientFrameClosesWithProtocolError() async throws {
        try await withWebSocketServer { server in
            let frame = clientFrame(opcode: 0x2, payload: Array("/multistream/1.0.0\n".utf8), masked: false)
            let reply = try await raw(server, upgradeRequest + frame)
            #expect(contains(reply, closeFrame(1002)), "expected a close frame with 1002")
            try await stillServes(server)
        }
    }

    @Test func garbageAfterTheUpgradeIsClosed() async throws {
        try await withWebSocketServer { server in
            // 0xFF: FIN, all reserved bits, opcode 15; then an absurd 64-bit length.
            let reply = try await raw(server, upgradeRequest + [UInt8](repeating: 0xFF, count: 64))
            #expect(String(decoding: reply.prefix(12), as: UTF8.self) == "HTTP/1.1 101")
            #expect(contains(reply, [0x88, 0x02]), "expected a close frame")
            try await stillServes(server)
        }
    }

    @Test func aCloseFrameIsAnsweredAndTheConnectionClosed() async throws {
        try await withWebSocketServer { server in
            let reply = try await raw(server, upgradeRequest + clientFrame(opcode: 0x8, payload: [0x03, 0xE8]))
            #expect(contains(reply, closeFrame(1000)), "expected the close frame echoed")
            try await stillServes(server)
        }
    }

    // MARK: - The frame handler alone

    /// An embedded channel with the frame codec and a handler of `role`.
    func embedded(_ role: WebSocketFramePolicy.Role, maxFrameSize: Int = 1024) throws -> (EmbeddedChannel, WebSocketTestRecorder) {
        let channel = EmbeddedChannel()
        let recorder = WebSocketTestRecorder()
        try channel.pipeline.syncOperations.addHandlers([
            ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: maxFrameSize)),
            WebSocketFrameEncoder(),
            WebSocketFrameHandler(role: role, maxFrameSize: maxFrameSize, maxOutboundFrameSize: 100),
            recorder,
        ])
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return (channel, recorder)
    }

    func outbound(_ channel: EmbeddedChannel) throws -> [UInt8] {
        var out: [UInt8] = []
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { out += Array(buffer: buffer) }
        return out
    }

    @Test func binaryAndContinuationFramesDeliverTheirBytes() throws {
        let (channel, recorder) = try embedded(.server)
        try channel.writeInbound(ByteBuffer(bytes: clientFrame(opcode: 0x2, fin: false, payload: [1, 2])))
        try channel.writeInbound(ByteBuffer(bytes: clientFrame(opcode: 0x0, payload: [3])))
        try channel.writeInbound(ByteBuffer(bytes: clientFrame(opcode: 0x2, payload: [4, 5])))
        #expect(recorder.received == [1, 2, 3, 4, 5])
        #expect(recorder.errors.isEmpty)
        #expect(channel.isActive)
        _ = try? channel.finish()
    }

    @Test(arguments: [
        ("text", clientFrame(opcode: 0x1, payload: [0x61])),
        ("stray continuation", clientFrame(opcode: 0x0, payload: [1])),
        ("unknown opcode", clientFrame(opcode: 0x3, payload: [1])),
        ("reserved bit", [0xC2, 0x80, 0, 0, 0, 0]),
        ("unmasked", clientFrame(opcode: 0x2, payload: [1], masked: false)),
        ("fragmented ping", clientFrame(opcode: 0x9, fin: false, payload: [1])),
    ])
    func protocolViolationsFailTheConnectionTyped(_ name: String, _ bytes: [UInt8]) throws {
        let (channel, recorder) = try embedded(.server)
        _ = try? channel.writeInbound(ByteBuffer(bytes: bytes))
        #expect(recorder.received.isEmpty, "\(name)")
        #expect((recorder.errors.first as? TransportError)?.code == .protocolViolation, "\(name): \(recorder.errors)")
        #expect(try outbound(channel) == closeFrame(1002), "\(name)")
        #expect(!channel.isActive, "\(name): the connection must be closed")
        _ = try? channel.finish()
    }

    @Test func aNewBinaryMessageInsideAFragmentedOneIsAViolation() throws {
        let (channel, recorder) = try embedded(.server)
        try channel.writeInbound(ByteBuffer(bytes: clientFrame(opcode: 0x2, fin: false, payload: [1])))
        _ = try? channel.writeInbound(ByteBuffer(bytes: clientFrame(opcode: 0x2, payload: [2])))
        #expect(recorder.received == [1])
        #expect((recorder.errors.first as? TransportError)?.code == .protocolViolation)
        #expect(!channel.isActive)
        _ = try? channel.finish()
    }

    @Test func aFrameOverTheLimitFailsWithFrameTooLarge() throws {
        let (channel, recorder) = try embedded(.server, maxFrameSize: 1024)
        _ = try? channel.writeInbound(ByteBuffer(bytes: clientFrame(opcode: 0x2, payload: [UInt8](repeating: 7, count: 1025))))
        #expect(recorder.received.isEmpty)
        #expect((recorder.errors.first as? TransportError)?.code == .frameTooLarge, "\(recorder.errors)")
        #expect(try outbound(channel) == closeFrame(1009))
        #expect(!channel.isActive)
        _ = try? channel.finish()
    }

    @Test func aPingIsAnsweredWithAPong() throws {
        let (channel, recorder) = try embedded(.server)
        try channel.writeInbound(ByteBuffer(bytes: clientFrame(opcode: 0x9, payload: [9, 8, 7])))
        #expect(try outbound(channel) == [0x8A, 0x03, 9, 8, 7])
        #expect(recorder.received.isEmpty)
        #expect(channel.isActive)
        _ = try? channel.finish()
    }

    @Test func aClientMasksItsFramesAndCutsLargeWrites() throws {
        let (channel, _) = try embedded(.client)
        let payload = (0..<250).map { UInt8($0) }
        try channel.writeAndFlush(ByteBuffer(bytes: payload)).wait()
        // Decode what was sent with a server-side decoder: three masked binary frames (100 +
        // 100 + 50 bytes) that carry the payload.
        let wire = try outbound(channel)
        let server = EmbeddedChannel(handler: ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1024)))
        try server.writeInbound(ByteBuffer(bytes: wire))
        var frames: [WebSocketFrame] = []
        while let frame = try server.readInbound(as: WebSocketFrame.self) { frames.append(frame) }
        #expect(frames.map(\.length) == [100, 100, 50])
        #expect(frames.allSatisfy { $0.maskKey != nil && $0.opcode == .binary && $0.fin })
        #expect(frames.flatMap { Array(buffer: $0.unmaskedData) } == payload)
        _ = try? server.finish()
        _ = try? channel.finish()
    }

    @Test func aClientRejectsMaskedFramesAndAcceptsUnmaskedOnes() throws {
        let (channel, recorder) = try embedded(.client)
        // A server frame must not be masked.
        _ = try? channel.writeInbound(ByteBuffer(bytes: clientFrame(opcode: 0x2, payload: [1])))
        #expect((recorder.errors.first as? TransportError)?.code == .protocolViolation)
        #expect(!channel.isActive)
        _ = try? channel.finish()

        let (unmaskedOK, okRecorder) = try embedded(.client)
        try unmaskedOK.writeInbound(ByteBuffer(bytes: clientFrame(opcode: 0x2, payload: [1, 2], masked: false)))
        #expect(okRecorder.received == [1, 2])
        #expect(okRecorder.errors.isEmpty)
        _ = try? unmaskedOK.finish()
    }
}

/// Answers the first bytes of every connection with a fixed reply, then closes.
private final class CannedReply: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let reply: String
    var sent = false
    init(_ reply: String) { self.reply = reply }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !sent else { return }
        sent = true
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: reply))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }
}
