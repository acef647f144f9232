import Crypto
import Foundation
import Identity
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import Security
import Testing

@testable import TLS

/// Echoes every plaintext buffer back.
final class EchoHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.writeAndFlush(data, promise: nil)
    }
}

/// Collects plaintext until `count` bytes arrived.
final class CollectHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private var received: [UInt8] = []
    private let count: Int
    private let promise: EventLoopPromise<[UInt8]>
    init(count: Int, promise: EventLoopPromise<[UInt8]>) {
        self.count = count
        self.promise = promise
    }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        received += buffer.readBytes(length: buffer.readableBytes) ?? []
        if received.count >= count { promise.succeed(received) }
    }
    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(ChannelError.eof)
        context.fireChannelInactive()
    }
}

/// A TLS listener on 127.0.0.1 that echoes on every connection it authenticates, and reports each
/// handshake's outcome.
final class TLSTestServer: Sendable {
    let group: MultiThreadedEventLoopGroup
    let listener: any Channel
    /// Each accepted connection's handshake outcome, oldest first.
    private let outcomes = NIOLockedValueBox<[Result<SecuredConnection, any Error>]>([])

    init(security: TLSSecurity, muxers: [String] = []) async throws {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let outcomes = self.outcomes
        listener = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let secured = try security.secure(channel: channel, position: .last, role: .responder, muxers: muxers)
                    secured.whenComplete { result in
                        if case .success = result { try? channel.pipeline.syncOperations.addHandler(EchoHandler()) }
                        outcomes.withLockedValue { $0.append(result.mapError { $0 as any Error }) }
                    }
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    var port: Int { listener.localAddress?.port ?? 0 }

    /// Connects and runs `install` on the new channel's loop; returns the channel and its result.
    func connect<T: Sendable>(
        _ install: @Sendable @escaping (any Channel) throws -> EventLoopFuture<T>
    ) async throws -> (any Channel, EventLoopFuture<T>) {
        let channel = try await ClientBootstrap(group: group).connect(host: "127.0.0.1", port: port).get()
        let future = try await channel.eventLoop.submit { try install(channel) }.get()
        return (channel, future)
    }

    /// Dials with libp2p TLS.
    func dial(
        _ security: TLSSecurity, expected: PeerID?, muxers: [String] = []
    ) async throws -> (any Channel, EventLoopFuture<SecuredConnection>) {
        try await connect { channel in
            try security.secure(channel: channel, position: .last, role: .initiator(expectedRemotePeer: expected), muxers: muxers)
        }
    }

    /// The next connection's handshake outcome (nil if none within 10 s).
    func nextOutcome() async -> Result<SecuredConnection, any Error>? {
        for _ in 0..<1000 {
            let next = outcomes.withLockedValue { $0.isEmpty ? nil : $0.removeFirst() }
            if let next { return next }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return nil
    }

    func shutdown() async {
        try? await listener.close()
        try? await group.shutdownGracefully()
    }
}

/// Sends `message` on a secured channel and returns what comes back.
func roundTrip(_ channel: any Channel, _ message: String) async throws -> String {
    let bytes = Array(message.utf8)
    let echoed = try await channel.eventLoop.flatSubmit {
        let promise = channel.eventLoop.makePromise(of: [UInt8].self)
        do {
            try channel.pipeline.syncOperations.addHandler(CollectHandler(count: bytes.count, promise: promise))
        } catch {
            promise.fail(error)
        }
        channel.writeAndFlush(ByteBuffer(bytes: bytes), promise: nil)
        return promise.futureResult
    }.value()
    return String(decoding: echoed, as: UTF8.self)
}

func expectTLSError(_ result: Result<SecuredConnection, any Error>?, _ codes: Set<TLSError.Code>, sourceLocation: SourceLocation = #_sourceLocation) {
    switch result {
    case .failure(let error as TLSError):
        #expect(codes.contains(error.code), "\(error)", sourceLocation: sourceLocation)
    case .failure(let error):
        Issue.record("untyped error \(error)", sourceLocation: sourceLocation)
    case .success(let connection):
        Issue.record("handshake succeeded with \(connection.remotePeer)", sourceLocation: sourceLocation)
    case nil:
        Issue.record("no outcome", sourceLocation: sourceLocation)
    }
}

@Suite("libp2p TLS handshake over loopback", .timeLimit(.minutes(1)))
struct HandshakeTests {
    @Test("both sides authenticate, plaintext flows (Ed25519, ECDSA, RSA identities)", arguments: [0, 1, 2])
    func handshake(keyKind: Int) async throws {
        func key(_ kind: Int) throws -> PrivateKey {
            switch kind {
            case 0: PrivateKey.generateEd25519()
            case 1: PrivateKey.generateECDSA()
            default: CertificateTests.rsaIdentity
            }
        }
        let serverKey = try key(keyKind)
        let clientKey = try key((keyKind + 1) % 3)
        let server = try await TLSTestServer(security: TLSSecurity(identity: serverKey))
        defer { Task { await server.shutdown() } }
        let (channel, secured) = try await server.dial(TLSSecurity(identity: clientKey), expected: serverKey.peerID)
        let remote = try await secured.value()
        #expect(remote.remotePeer == serverKey.peerID)
        #expect(remote.remotePublicKey == serverKey.publicKey)
        #expect(remote.muxer == nil)
        let serverSide = try await server.nextOutcome()?.get()
        #expect(serverSide?.remotePeer == clientKey.peerID)
        #expect(try await roundTrip(channel, "hello over TLS 1.3") == "hello over TLS 1.3")
        // Only the TLS handler remains: the outcome handler removed itself.
        let handlers = try await channel.eventLoop.submit {
            (try? channel.pipeline.syncOperations.handler(type: TLSHandshakeOutcomeHandler.self)) == nil
        }.get()
        #expect(handlers)
        try await channel.close()
    }

    @Test("ALPN: a muxer both list is agreed in the handshake; otherwise \"libp2p\" and no muxer")
    func alpnMuxer() async throws {
        let serverKey = PrivateKey.generateEd25519()
        let server = try await TLSTestServer(security: TLSSecurity(identity: serverKey), muxers: ["/yamux/1.0.0"])
        defer { Task { await server.shutdown() } }
        let client = try TLSSecurity(identity: PrivateKey.generateEd25519())

        let (a, agreed) = try await server.dial(client, expected: serverKey.peerID, muxers: ["/mplex/6.7.0", "/yamux/1.0.0"])
        #expect(try await agreed.value().muxer == "/yamux/1.0.0")
        #expect(try await server.nextOutcome()?.get().muxer == "/yamux/1.0.0")
        try await a.close()

        let (b, plain) = try await server.dial(client, expected: serverKey.peerID, muxers: ["/mplex/6.7.0"])
        #expect(try await plain.value().muxer == nil)
        #expect(try await server.nextOutcome()?.get().muxer == nil)
        try await b.close()
    }

    @Test("bad handshakes fail with typed errors, and the server keeps serving others")
    func badHandshakes() async throws {
        let serverKey = PrivateKey.generateEd25519()
        let server = try await TLSTestServer(security: TLSSecurity(identity: serverKey))
        defer { Task { await server.shutdown() } }
        let goodClient = try TLSSecurity(identity: PrivateKey.generateECDSA())

        func expectServerStillServes() async throws {
            let (channel, secured) = try await server.dial(goodClient, expected: serverKey.peerID)
            #expect(try await secured.value().remotePeer == serverKey.peerID)
            #expect(try await server.nextOutcome()?.get().remotePeer == goodClient.identity.peerID)
            #expect(try await roundTrip(channel, "still here") == "still here")
            try await channel.close()
        }

        // 1. We dial someone else: the client refuses the server, the server sees the alert.
        let (c1, wrongPeer) = try await server.dial(goodClient, expected: PrivateKey.generateEd25519().peerID)
        expectTLSError(await wrongPeer.toResult(), [.peerIDMismatch])
        expectTLSError(await server.nextOutcome(), [.handshakeFailed, .connectionClosed])
        #expect(await c1.closeFuture.toResult().isSuccess)
        try await expectServerStillServes()

        // 2. A client certificate without the libp2p extension.
        let identity = PrivateKey.generateEd25519()
        let bare = try TLSSecurity(
            identity: identity, certificate: CertificateFactory.make(.init(identity: identity, includeExtension: false)))
        let (c2, _) = try await server.dial(bare, expected: serverKey.peerID)
        expectTLSError(await server.nextOutcome(), [.missingExtension])
        _ = await c2.closeFuture.toResult()
        try await expectServerStillServes()

        // 3. A client certificate with a bad SignedKey signature.
        let forged = try TLSSecurity(identity: identity, certificate: CertificateFactory.make(.init(
            identity: identity, signedKey: { _ in
                try LibP2PCertificate.makeSignedKey(
                    identity: identity, certificatePublicKey: .init(P256.Signing.PrivateKey().publicKey))
            })))
        let (c3, _) = try await server.dial(forged, expected: serverKey.peerID)
        expectTLSError(await server.nextOutcome(), [.invalidSignedKeySignature])
        _ = await c3.closeFuture.toResult()
        try await expectServerStillServes()

        // 4. A TLS 1.2-only client.
        let (c4, _) = try await server.connect { channel in
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.maximumTLSVersion = .tlsv12
            configuration.certificateVerification = .none
            let handler = try NIOSSLClientHandler(context: NIOSSLContext(configuration: configuration), serverHostname: nil)
            try channel.pipeline.syncOperations.addHandler(handler)
            return channel.eventLoop.makeSucceededFuture(())
        }
        expectTLSError(await server.nextOutcome(), [.unsupportedTLSVersion])
        _ = await c4.closeFuture.toResult()
        try await expectServerStillServes()

        // 5. A TLS 1.3 client that presents no certificate.
        let (c5, _) = try await server.connect { channel in
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.minimumTLSVersion = .tlsv13
            configuration.certificateVerification = .none
            let handler = try NIOSSLClientHandler(context: NIOSSLContext(configuration: configuration), serverHostname: nil)
            try channel.pipeline.syncOperations.addHandler(handler)
            return channel.eventLoop.makeSucceededFuture(())
        }
        expectTLSError(await server.nextOutcome(), [.noCertificate])
        _ = await c5.closeFuture.toResult()

        // 6. Not TLS at all.
        let (c6, _) = try await server.connect { channel in
            channel.writeAndFlush(ByteBuffer(string: "/multistream/1.0.0\n GET / HTTP/1.1\r\n\r\n"))
        }
        expectTLSError(await server.nextOutcome(), [.handshakeFailed])
        _ = await c6.closeFuture.toResult()
        try await expectServerStillServes()
    }

    @Test("a server whose certificate lacks the extension is refused by the client")
    func serverWithoutExtension() async throws {
        let serverKey = PrivateKey.generateEd25519()
        let bare = try TLSSecurity(
            identity: serverKey, certificate: CertificateFactory.make(.init(identity: serverKey, includeExtension: false)))
        let server = try await TLSTestServer(security: bare)
        defer { Task { await server.shutdown() } }
        let (_, secured) = try await server.dial(TLSSecurity(identity: PrivateKey.generateEd25519()), expected: serverKey.peerID)
        expectTLSError(await secured.toResult(), [.missingExtension])
        expectTLSError(await server.nextOutcome(), [.handshakeFailed, .connectionClosed])
    }
}

struct TimedOut: Error {}

extension EventLoopFuture where Value: Sendable {
    /// The future's result, or `TimedOut` after `timeout`: no test waits unbounded.
    func toResult(within timeout: TimeAmount = .seconds(10)) async -> Result<Value, any Error> {
        let promise = eventLoop.makePromise(of: Value.self)
        let timer = eventLoop.scheduleTask(in: timeout) { promise.fail(TimedOut()) }
        cascade(to: promise)
        promise.futureResult.whenComplete { _ in timer.cancel() }
        do { return .success(try await promise.futureResult.get()) } catch { return .failure(error) }
    }

    /// The future's value, or `TimedOut` after `timeout`.
    func value(within timeout: TimeAmount = .seconds(10)) async throws -> Value {
        try await toResult(within: timeout).get()
    }
}

extension Result {
    var isSuccess: Bool { if case .success = self { true } else { false } }
}
