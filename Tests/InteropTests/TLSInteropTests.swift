import Foundation
import NIOCore
import NIOPosix
import PointSub
import TLS
import TestSupport
import Testing

/// libp2p TLS 1.3 (`/tls/1.0.0`, issue 11) against py-libp2p 0.8.1 (`peer.py --security tls`) and
/// go-libp2p 0.32.1 (`p2pd -noise=false`), over real TCP on 127.0.0.1, both directions: the
/// connection is secured with TLS (neither side offers anything else, unless a test says so), and
/// echo, ping and identify run over it. Also: a host offering Noise then TLS falls back to TLS
/// against a TLS-only peer, and a TLS dial to the wrong peer ID fails with a typed error while
/// the host keeps working.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct TLSInteropTests {
    static let agent = "pointsub-tls-interop/0.1.0"

    static func configuration(listen: Bool, security: [SecurityOption] = [.tls]) -> P2PHost.Configuration {
        .defaults {
            $0.agentVersion = Self.agent
            $0.services = [EchoService()]
            $0.security = security
            if listen { $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")] }
        }
    }

    /// A `peer.py listen --security …` process.
    struct PyTLSListener: Sendable {
        let running: ChildProcess.Running
        let address: Multiaddr

        static func start(seed: UInt64, security: String = "tls") async throws -> PyTLSListener {
            try PyPeer.checkInstalled()
            let running = try ChildProcess.Running(
                PyPeer.python, [PyPeer.script.path, "listen", "--seed", "\(seed)", "--security", security])
            do {
                let line = try await running.firstLine(timeout: .seconds(60)) { $0.hasPrefix("LISTEN ") }
                return PyTLSListener(running: running, address: try Multiaddr(String(line.dropFirst("LISTEN ".count))))
            } catch {
                _ = try? await running.stop(signal: SIGKILL)
                throw error
            }
        }

        /// py's `identified` event about `peer`.
        func identified(peer: PeerID) async throws -> [String: Any] {
            func parse(_ line: String) -> [String: Any]? {
                guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                    object["event"] as? String == "identified", object["peer"] as? String == peer.b58String
                else { return nil }
                return object
            }
            let line = try await running.firstLine(timeout: .seconds(20)) { parse($0) != nil }
            return parse(line) ?? [:]
        }

        func stop() async { _ = try? await running.stop() }
    }

    func withPy<T: Sendable>(
        seed: UInt64, security: String = "tls", _ body: (PyTLSListener) async throws -> T
    ) async throws -> T {
        let py = try await PyTLSListener.start(seed: seed, security: security)
        do {
            let result = try await body(py)
            await py.stop()
            return result
        } catch {
            await py.stop()
            throw error
        }
    }

    /// The first `TLSError` among a host error's causes, however deeply nested.
    static func tlsError(in error: any Error) -> TLSError? {
        if let error = error as? TLSError { return error }
        if let error = error as? HostError { return error.causes.lazy.compactMap { tlsError(in: $0) }.first }
        return nil
    }

    // MARK: - py-libp2p

    @Test func swiftDialsPyOverTLSEchoPingIdentify() async throws {
        try await withPy(seed: 61) { py in
            try await withHost(identity: .ed25519(seed: 71), configuration: Self.configuration(listen: false)) { host in
                let connection = try await host.connect(to: py.address)
                #expect(connection.remotePeer == py.address.peerID)
                #expect(connection.security == "/tls/1.0.0")
                try await InteropTests.echo(host, peer: connection.remotePeer, bytes: 1 << 20, streams: 2)
                let rtts = try await PingService.ping(host: host, peer: connection.remotePeer, count: 3)
                #expect(rtts.count == 3)
                let info = try await IdentifyService.identify(connection, host: host)
                #expect(info.agentVersion == "py-libp2p-interop/0.8.1")
                #expect(info.publicKey.map { connection.remotePeer.matches($0) } == true)
                let seen = try await py.identified(peer: host.peerID)
                #expect(seen["agent"] as? String == Self.agent)
                #expect((seen["protocols"] as? [String] ?? []).contains("/echo/1.0.0"))
            }
        }
    }

    @Test func pyDialsSwiftOverTLSEchoPingIdentify() async throws {
        try await withHost(identity: .ed25519(seed: 72), configuration: Self.configuration(listen: true)) { host in
            let target = host.addresses[0].description
            let common = ["--seed", "62", "--security", "tls"]
            let echo = try await PyPeer.run(["dial", target] + common + ["--test", "echo", "--size", "\(1 << 20)", "--streams", "2"])
            #expect(echo["bytes"] as? Int == 1 << 20)
            #expect(echo["streams"] as? Int == 2)
            let ping = try await PyPeer.run(["dial", target] + common + ["--test", "ping", "--count", "3"])
            #expect((ping["rtts_ms"] as? [Double])?.count == 3)
            let identify = try await PyPeer.run(["dial", target] + common + ["--test", "identify"])
            #expect(identify["agent"] as? String == Self.agent)
            #expect(identify["peer"] as? String == host.peerID.b58String)
            #expect(identify["public_key_matches"] as? Bool == true)
            // The inbound connection was TLS, and we identified py on it too.
            let pyPeer = PeerID(publicKey: PrivateKey.ed25519(seed: 62).publicKey)
            #expect(host.peerstore.info(for: pyPeer)?.agentVersion == "py-libp2p-interop/0.8.1")
        }
    }

    @Test func noiseThenTLSFallsBackToTLSAgainstATLSOnlyPeer() async throws {
        try await withPy(seed: 63) { py in
            let config = Self.configuration(listen: false, security: [.noise, .tls])
            try await withHost(identity: .ed25519(seed: 73), configuration: config) { host in
                let connection = try await host.connect(to: py.address)
                #expect(connection.security == "/tls/1.0.0")
                try await InteropTests.echo(host, peer: connection.remotePeer, bytes: 4096, streams: 1)
            }
        }
    }

    @Test func tlsDialToTheWrongPeerIDFailsTypedAndTheHostKeepsWorking() async throws {
        try await withPy(seed: 64) { py in
            try await withHost(identity: .ed25519(seed: 74), configuration: Self.configuration(listen: false)) { host in
                let impostor = PeerID(publicKey: PrivateKey.ed25519(seed: 99).publicKey)
                do {
                    _ = try await host.connect(to: py.address.removingPeerID().appending(peerID: impostor))
                    Issue.record("connected to py under the wrong peer ID")
                } catch {
                    #expect(Self.tlsError(in: error)?.code == .peerIDMismatch, "\(error)")
                }
                #expect(host.connections(to: impostor).isEmpty)
                let connection = try await host.connect(to: py.address)
                try await InteropTests.echo(host, peer: connection.remotePeer, bytes: 4096, streams: 1)
            }
        }
    }

    // MARK: - go-libp2p (p2pd, TLS only)

    func withGo<T: Sendable>(seed: UInt64, metrics: Bool = false, _ body: (P2PDaemon) async throws -> T) async throws -> T {
        // -noise=false: go offers TLS only.
        try await withDaemon(seed: seed, ["-noise=false"], metrics: metrics, body)
    }

    /// GoInteropTests.checkGoIdentifiedUs, after go's metrics count its identify of us as done
    /// and our push support as seen: both are counted a moment after the protocols it received,
    /// which that check waits for (read too early, they were missing in one run).
    static func checkGoIdentifiedUs(_ go: P2PDaemon, _ host: P2PHost) async throws {
        try await GoInteropTests.until("go's metrics counting its identify of us") {
            let metrics = try await go.metrics()
            return metrics["libp2p_identify_identify_total{dir=\"outbound\"}"] != nil
                && metrics["libp2p_identify_conn_push_support_total{support=\"supported\"}"] != nil
        }
        try await GoInteropTests.checkGoIdentifiedUs(go, host)
    }

    @Test func swiftDialsGoOverTLSEchoPingIdentify() async throws {
        try await withGo(seed: 161, metrics: true) { go in
            let handler = try await DaemonEchoHandler.start(path: "\(go.directory)/echo.sock")
            do {
                try await go.setStreamHandler(path: handler.path, [EchoService.protocolID])
                try await withHost(identity: .ed25519(seed: 171), configuration: Self.configuration(listen: false)) { host in
                    let connection = try await host.connect(to: go.fullAddress)
                    #expect(connection.remotePeer == go.peerID)
                    #expect(connection.security == "/tls/1.0.0")
                    // Identify, ours of go (asked explicitly, key checked) and go's of us (its metrics).
                    let message = try await IdentifyService.identify(connection, host: host)
                    #expect(message.publicKey.map { go.peerID.matches($0) } == true)
                    GoInteropTests.checkGoIdentify(host.peerstore.info(for: go.peerID), listenAddress: go.address)
                    try await Self.checkGoIdentifiedUs(go, host)
                    let rtts = try await PingService.ping(host: host, peer: go.peerID, count: 3)
                    #expect(rtts.count == 3)
                    let stream = try await host.newStream(to: go.peerID, protocols: [EchoService.protocolID])
                    let payload = GoInteropTests.payload(256 << 10, seed: 5)
                    try await stream.write(payload)
                    let back = try await stream.readExactly(256 << 10)
                    #expect(back == payload)
                    stream.reset()
                }
                await handler.stop()
            } catch {
                await handler.stop()
                throw error
            }
        }
    }

    @Test func goDialsSwiftOverTLSEchoPingIdentify() async throws {
        try await withGo(seed: 162, metrics: true) { go in
            try await withHost(identity: .ed25519(seed: 172), configuration: Self.configuration(listen: true)) { host in
                try await go.connect(host.peerID, [host.addresses[0].removingPeerID()])
                try await GoInteropTests.until("the inbound connection from go") { !host.connections(to: go.peerID).isEmpty }
                let connection = try #require(host.connections(to: go.peerID).first)
                #expect(connection.direction == .inbound)
                #expect(connection.security == "/tls/1.0.0")
                try await GoInteropTests.until("our identify of go") { host.peerstore.info(for: go.peerID)?.agentVersion != nil }
                GoInteropTests.checkGoIdentify(host.peerstore.info(for: go.peerID), listenAddress: go.address)
                try await Self.checkGoIdentifiedUs(go, host)
                try await goPingsAndEchoesThrough(go, host, echoSeed: 9)
            }
        }
    }

    /// Reads exactly `count` bytes, then hands them to `promise` and removes itself.
    final class ReadExactly: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = ByteBuffer
        private var bytes: [UInt8] = []
        private let count: Int
        private let promise: EventLoopPromise<[UInt8]>
        init(count: Int, promise: EventLoopPromise<[UInt8]>) {
            self.count = count
            self.promise = promise
        }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = unwrapInboundIn(data)
            bytes += buffer.readBytes(length: min(buffer.readableBytes, count - bytes.count)) ?? []
            if bytes.count == count {
                context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
                promise.succeed(bytes)
            }
        }
        func channelInactive(context: ChannelHandlerContext) {
            promise.fail(ChannelError.eof)
        }
    }

    /// The spec's early muxer negotiation with go: on a bare connection, multistream-select
    /// `/tls/1.0.0` by hand, then our TLS handshake offering `/yamux/1.0.0` in ALPN; go (which
    /// offers its muxers there too) agrees on yamux in the handshake. (py 0.8.1 offers only
    /// "libp2p", so hosts talking to it negotiate the muxer afterwards, as the tests above do.)
    @Test func goAgreesOnYamuxInTheTLSHandshake() async throws {
        try await withGo(seed: 163) { go in
            let identity = PrivateKey.ed25519(seed: 173)
            let security = try TLSSecurity(identity: identity)
            let port = try #require(go.address.tcpPort)
            let header = "/multistream/1.0.0\n", proposal = "/tls/1.0.0\n"
            let expected = [UInt8(header.utf8.count)] + Array(header.utf8) + [UInt8(proposal.utf8.count)] + Array(proposal.utf8)
            let loop = MultiThreadedEventLoopGroup.singleton.next()
            let answer = loop.makePromise(of: [UInt8].self)
            let timeout = loop.scheduleTask(in: .seconds(10)) { answer.fail(ChannelError.connectTimeout(.seconds(10))) }
            // The reader goes in before the connection is up: go may speak first.
            let channel = try await ClientBootstrap(group: loop)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ReadExactly(count: expected.count, promise: answer))
                    }
                }
                .connect(host: "127.0.0.1", port: Int(port)).get()
            // Closing fails the handshake's future: no wait below is unbounded.
            let watchdog = loop.scheduleTask(in: .seconds(20)) { channel.close(promise: nil) }
            defer {
                watchdog.cancel()
                channel.close(promise: nil)
            }
            let secured = try await channel.eventLoop.flatSubmit { () -> EventLoopFuture<SecuredConnection> in
                channel.writeAndFlush(ByteBuffer(bytes: expected), promise: nil)
                return answer.futureResult.flatMapThrowing { bytes -> EventLoopFuture<SecuredConnection> in
                    guard bytes == expected else { throw ChildProcess.Failure("go answered \(bytes)") }
                    return try security.secure(
                        channel: channel, position: .last, role: .initiator(expectedRemotePeer: go.peerID),
                        muxers: ["/yamux/1.0.0"])
                }.flatMap { $0 }.always { _ in timeout.cancel() }
            }.get()
            #expect(secured.remotePeer == go.peerID)
            #expect(secured.muxer == "/yamux/1.0.0")
        }
    }
}
