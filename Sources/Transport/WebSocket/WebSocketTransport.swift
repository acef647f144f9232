import Basics
import Multiformats
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket

/// TLS for secure WebSocket (`/tls/ws`, `/wss`): what a listener presents and how a dialer
/// verifies the server. (libp2p's own security handshake still runs inside and authenticates
/// the peer; this outer TLS is what browsers and proxies need.)
public struct WebSocketTLS: Sendable {
    /// The listener's context (certificate chain and key), or nil: no secure listening.
    public let serverContext: NIOSSLContext?
    /// The dialer's context (trust roots, verification).
    public let clientContext: NIOSSLContext

    /// Builds the contexts. `server`: e.g. `.makeServerConfiguration(certificateChain:privateKey:)`;
    /// `client`: by default the system's trust roots with full verification (the host name, or
    /// for an IP address the IP, checked against the certificate).
    public init(server: TLSConfiguration? = nil, client: TLSConfiguration = .makeClientConfiguration()) throws {
        self.serverContext = try server.map { try NIOSSLContext(configuration: $0) }
        self.clientContext = try NIOSSLContext(configuration: client)
    }
}

/// Where a WebSocket multiaddr points: the TCP address, whether TLS runs under the WebSocket,
/// and the TLS server name if the address names one (`/tls/sni/NAME/ws`).
struct WebSocketEndpoint: Sendable {
    var tcp: Multiaddr
    var secure: Bool
    var serverName: String?

    /// `/…/tcp/PORT` + `/ws`, `/wss`, `/tls/ws` or `/tls/sni/NAME/ws` (a trailing `/p2p/…` ignored).
    init?(_ address: Multiaddr) {
        let parts = address.removingPeerID().components
        guard parts.count >= 3 else { return nil }
        let tcp = Multiaddr(Array(parts[0..<2]))
        guard TCPTransport.canHandle(tcp) else { return nil }
        self.tcp = tcp
        let rest = Array(parts[2...])
        var name: String?
        if rest == [.ws] {
            secure = false
        } else if rest == [.wss] || rest == [.tls, .ws] {
            // `/wss` is the older spelling of `/tls/ws` (go-libp2p reads both, writes `/tls/ws`).
            secure = true
        } else if rest.count == 3, rest[0] == .tls, rest[2] == .ws, case .sni(let sni) = rest[1] {
            secure = true
            name = sni
        } else {
            return nil
        }
        if name == nil, secure {
            switch parts[0] {
            case .dns(let host), .dns4(let host), .dns6(let host): name = host
            default: break
            }
        }
        serverName = name
    }

    /// The WebSocket components after `/tcp/PORT`, in the canonical spelling.
    var suffix: [Multiaddr.Component] { secure ? [.tls, .ws] : [.ws] }
}

/// A bound WebSocket listener.
public struct WebSocketListener: TransportListener {
    /// The TCP listener underneath.
    public let tcp: TCPListener
    /// The address actually bound, `/ip4|ip6/…/tcp/PORT/ws` (port 0 resolved).
    public let address: Multiaddr

    /// Stops listening (accepted connections are not affected).
    public func close() async {
        await tcp.close()
    }
}

/// WebSocket over TCP (RFC 6455): dials and listens on `/ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT/ws`,
/// and with ``WebSocketTLS`` on secure WebSocket, `…/tcp/PORT/tls/ws` (also read: `…/wss`,
/// `…/tls/sni/NAME/ws`).
///
/// A connection starts with an HTTP/1.1 upgrade (the client asks for `/`, as go-libp2p and
/// py-libp2p do; the server upgrades a request on any path), then carries the libp2p bytes in
/// binary frames, which the host's upgrader (security, muxer) runs over as over TCP. The
/// upgrade is bounded in bytes and time, and the number of upgrades under way per listener is
/// capped; frames are bounded by ``maxFrameSize``. A broken frame, a text frame or one over the
/// limit fails that connection with a ``TransportError`` and closes it.
public struct WebSocketTransport: Transport {
    /// Where listeners and connections run.
    public let group: any EventLoopGroup
    /// The largest frame accepted from a peer (the frame decoder buffers one frame at most);
    /// larger ones fail the connection. libp2p peers send each write (a Noise message, at most
    /// 64 KiB) as one frame.
    public let maxFrameSize: Int
    /// Writes larger than this are sent as several frames.
    public let maxOutboundFrameSize: Int
    /// How long an accepted connection may take to complete its HTTP upgrade.
    public let upgradeTimeout: Duration
    /// The most bytes an upgrade may take (the request or response head, and anything sent
    /// along with it before the upgrade completes).
    public let maxUpgradeBytes: Int
    /// The most accepted connections per listener whose upgrade is still under way; more are
    /// closed at once.
    public let maxPendingUpgrades: Int
    /// TLS for secure WebSocket; nil: plain `/ws` only.
    public let tls: WebSocketTLS?

    /// A transport on `group` (never shut down by the transport).
    public init(
        group: any EventLoopGroup,
        maxFrameSize: Int = 1 << 20,
        maxOutboundFrameSize: Int = 128 * 1024,
        upgradeTimeout: Duration = .seconds(10),
        maxUpgradeBytes: Int = 16 * 1024,
        maxPendingUpgrades: Int = 128,
        tls: WebSocketTLS? = nil
    ) {
        self.group = group
        self.tls = tls
        self.maxFrameSize = min(max(maxFrameSize, 126), Int(UInt32.max))
        self.maxOutboundFrameSize = max(1, maxOutboundFrameSize)
        self.upgradeTimeout = upgradeTimeout
        self.maxUpgradeBytes = max(1024, maxUpgradeBytes)
        self.maxPendingUpgrades = max(1, maxPendingUpgrades)
    }

    /// The TCP part of a WebSocket address (`/…/tcp/PORT` + `/ws`, `/tls/ws`, `/wss` or
    /// `/tls/sni/NAME/ws`; a trailing `/p2p/…` is ignored), or nil.
    public static func tcpAddress(of address: Multiaddr) -> Multiaddr? {
        WebSocketEndpoint(address)?.tcp
    }

    /// Whether `address` is a WebSocket address, plain or secure (``tcpAddress(of:)``).
    public static func canHandle(_ address: Multiaddr) -> Bool {
        WebSocketEndpoint(address) != nil
    }

    /// Whether `address` is a plain WebSocket address, or a secure one and this transport has
    /// ``tls``.
    public func canDial(_ address: Multiaddr) -> Bool {
        guard let endpoint = WebSocketEndpoint(address) else { return false }
        return !endpoint.secure || tls != nil
    }

    /// Whether `address` is a plain WebSocket address, or a secure one and this transport has a
    /// server certificate (``WebSocketTLS/serverContext``).
    public func canListen(_ address: Multiaddr) -> Bool {
        guard let endpoint = WebSocketEndpoint(address) else { return false }
        return !endpoint.secure || tls?.serverContext != nil
    }

    /// The Host header for a dial (RFC 7230 §5.4: the name or address, brackets around IPv6).
    static func hostHeader(_ tcp: Multiaddr) -> String {
        let parts = tcp.components
        guard parts.count == 2, case .tcp(let port) = parts[1] else { return "\(tcp)" }
        switch parts[0] {
        case .ip4(let a): return "\(a):\(port)"
        case .ip6(let a): return "[\(a)]:\(port)"
        case .dns(let name), .dns4(let name), .dns6(let name): return "\(name):\(port)"
        default: return "\(tcp)"
        }
    }

    private var decoderLimits: NIOHTTPDecoderLimitConfiguration {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderFieldSize = maxUpgradeBytes
        limits.maxHeaderListSize = maxUpgradeBytes
        limits.maxHeaderFieldCount = 64
        return limits
    }

    // MARK: - Listening

    /// Listens on `address` (`/…/tcp/PORT/ws`, or `/…/tcp/PORT/tls/ws` with a server
    /// certificate in ``tls``); `acceptor` runs for each connection once its upgrade is done,
    /// with the remote as `/ip4|ip6/…/tcp/…/ws` (`…/tls/ws`) and its IP as the source.
    public func listen(
        on address: Multiaddr,
        acceptor: @escaping @Sendable (any Channel, RemoteEndpoint) -> EventLoopFuture<Void>
    ) async throws -> any TransportListener {
        try await listen(on: address, options: ListenOptions(), acceptor: acceptor)
    }

    /// ``listen(on:acceptor:)``; `options.memory` is asked for each accepted connection's account
    /// as soon as TCP accepted it: the upgrade request and the frames are charged there (the
    /// frames to the account of a ``TransportMemory/Assignment`` once the acceptor fired one).
    public func listen(
        on address: Multiaddr, options: ListenOptions,
        acceptor: @escaping @Sendable (any Channel, RemoteEndpoint) -> EventLoopFuture<Void>
    ) async throws -> any TransportListener {
        guard let endpoint = WebSocketEndpoint(address) else {
            throw TransportError(.unsupportedAddress, "not a WebSocket address: \(address)")
        }
        var tlsContext: NIOSSLContext?
        if endpoint.secure {
            guard let context = tls?.serverContext else {
                throw TransportError(.unsupportedAddress, "cannot listen on \(address): no TLS certificate configured")
            }
            tlsContext = context
        }
        let pending = PendingUpgrades(limit: maxPendingUpgrades)
        let transport = self
        let suffix = endpoint.suffix
        let serverTLS = tlsContext
        let memory = options.memory
        let listener = try await TCPTransport(group: group).listen(on: endpoint.tcp) { channel in
            transport.acceptConnection(
                channel, tls: serverTLS, suffix: suffix, pending: pending, memory: memory, acceptor: acceptor)
        }
        return WebSocketListener(tcp: listener, address: Multiaddr(listener.address.components + suffix))
    }

    private func acceptConnection(
        _ channel: any Channel, tls: NIOSSLContext?, suffix: [Multiaddr.Component], pending: PendingUpgrades,
        memory: (@Sendable (RemoteEndpoint) -> TransportMemory?)?,
        acceptor: @escaping @Sendable (any Channel, RemoteEndpoint) -> EventLoopFuture<Void>
    ) -> EventLoopFuture<Void> {
        guard let slot = pending.enter() else { return channel.close() }
        channel.closeFuture.whenComplete { _ in slot.release() }
        let remote = RemoteEndpoint(
            address: channel.remoteAddress.flatMap { try? Multiaddr(socketAddress: $0) }
                .map { Multiaddr($0.components + suffix) },
            source: channel.remoteAddress?.ipAddress)
        let account = memory?(remote)
        let deadline = Deadline.after(upgradeTimeout)
        return channel.eventLoop.makeCompletedFuture {
            try configureAccepted(channel, tls: tls, deadline: deadline, memory: account) { channel in
                slot.release()
                return acceptor(channel, remote)
            }
        }
    }

    /// Builds an accepted connection's pipeline (on its event loop): TLS if any, the upgrade
    /// guard (bytes, time, memory), the HTTP server with the WebSocket upgrader, the refusal of
    /// other requests. Once upgraded, the frame handlers replace them and `upgraded` runs.
    func configureAccepted(
        _ channel: any Channel, tls: NIOSSLContext?, deadline: Deadline, memory: TransportMemory?,
        upgraded: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) throws {
        let maxFrameSize = maxFrameSize
        let maxOutboundFrameSize = maxOutboundFrameSize
        let upgrader = NIOWebSocketServerUpgrader(
            maxFrameSize: maxFrameSize, automaticErrorHandling: false,
            // Any path is upgraded: libp2p dialers ask for "/", and the path carries no meaning.
            shouldUpgrade: { channel, _ in channel.eventLoop.makeSucceededFuture(HTTPHeaders()) },
            upgradePipelineHandler: { channel, _ in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    sync.removeHandler(name: WebSocketUpgradeGuard.name, promise: nil)
                    try Self.addFrameHandlers(
                        sync, role: .server, maxFrameSize: maxFrameSize, maxOutboundFrameSize: maxOutboundFrameSize,
                        memory: memory)
                }.flatMap { upgraded(channel) }
            })
        let guardHandler = WebSocketUpgradeGuard(
            maxBytes: maxUpgradeBytes, deadline: deadline,
            timeoutError: TransportError(.handshakeFailed, "WebSocket: HTTP upgrade timed out", reason: "timed out"),
            memory: memory)
        let sync = channel.pipeline.syncOperations
        // TLS first, for the connection's lifetime; the guard counts the HTTP bytes inside.
        if let tls { try sync.addHandler(NIOSSLServerHandler(context: tls)) }
        try sync.addHandler(guardHandler, name: WebSocketUpgradeGuard.name)
        try sync.configureHTTPServerPipeline(
            withPipeliningAssistance: false,
            withServerUpgrade: (
                upgraders: [upgrader],
                completionHandler: { context in
                    context.pipeline.syncOperations.removeHandler(name: WebSocketUpgradeRefusal.name, promise: nil)
                }
            ),
            withErrorHandling: true,
            withEncoderConfiguration: .init(),
            withDecoderLimitConfiguration: decoderLimits)
        try sync.addHandler(WebSocketUpgradeRefusal(), name: WebSocketUpgradeRefusal.name)
    }

    /// After NIO's upgrader added the frame encoder and decoder: the frame accounting just before
    /// the decoder (it must see every byte the decoder buffers), the frame handler last.
    static func addFrameHandlers(
        _ sync: ChannelPipeline.SynchronousOperations, role: WebSocketFramePolicy.Role, maxFrameSize: Int,
        maxOutboundFrameSize: Int, memory: TransportMemory?
    ) throws {
        let decoder = try sync.handler(type: ByteToMessageHandler<WebSocketFrameDecoder>.self)
        try sync.addHandler(
            WebSocketFrameAccounting(memory: memory, maxFrameSize: maxFrameSize),
            name: WebSocketFrameAccounting.name, position: .before(decoder))
        try sync.addHandler(
            WebSocketFrameHandler(role: role, maxFrameSize: maxFrameSize, maxOutboundFrameSize: maxOutboundFrameSize))
    }

    // MARK: - Dialing

    /// Connects to `address` (`/…/tcp/PORT/ws`, or a secure form with ``tls``) and upgrades to
    /// WebSocket; `initializer` runs once the upgrade is done (the channel is active then).
    /// `options.deadline` bounds the TCP connect, the TLS handshake and the upgrade together.
    public func dial(
        _ address: Multiaddr, options: DialOptions, initializer: @escaping ConnectionInitializer
    ) async throws -> any Channel {
        guard let endpoint = WebSocketEndpoint(address) else {
            throw TransportError(.unsupportedAddress, "not a WebSocket address: \(address)")
        }
        let tcpAddress = endpoint.tcp
        var clientTLS: NIOSSLContext?
        if endpoint.secure {
            guard let context = tls?.clientContext else {
                throw TransportError(.unsupportedAddress, "cannot dial \(address): no TLS configured for secure WebSocket")
            }
            clientTLS = context
        }
        let tlsContext = clientTLS
        let serverName = endpoint.serverName
        let deadline = options.deadline
        let host = Self.hostHeader(tcpAddress)
        let memory = options.memory
        let upgradedBox = UpgradeFutureBox()
        let transport = self
        let channel = try await TCPTransport(group: group).dial(
            tcpAddress, deadline: deadline, bindTo: options.sourceAddress
        ) { channel in
            let upgraded = channel.eventLoop.makePromise(of: Void.self)
            upgradedBox.set(upgraded.futureResult)
            // Completes the promise on every path (a failed connect never becomes active); once
            // the upgrade succeeded this does nothing.
            channel.closeFuture.whenComplete { _ in
                let what = "connection closed during the HTTP upgrade"
                upgraded.fail(TransportError(.handshakeFailed, "WebSocket: \(what)", reason: what))
            }
            let timeout = TransportError(
                .dialTimeout, "connecting to \(address) timed out (WebSocket upgrade)", reason: "timed out")
            return channel.eventLoop.makeCompletedFuture {
                try transport.configureDialed(
                    channel, tls: tlsContext, serverName: serverName, host: host, deadline: deadline,
                    timeoutError: timeout, memory: memory, upgraded: upgraded, initializer: initializer)
            }
        }
        do {
            guard let upgraded = upgradedBox.get() else {
                throw TransportError(.handshakeFailed, "WebSocket: the dial did not start the upgrade")
            }
            try await upgraded.get()
            return channel
        } catch let error as TransportError {
            channel.close(promise: nil)
            throw error
        } catch {
            channel.close(promise: nil)
            throw TransportError(.handshakeFailed, "WebSocket upgrade with \(address) failed", reason: "\(error)", cause: error)
        }
    }

    /// Builds a dialed connection's pipeline (on its event loop, before it is active): TLS if
    /// any, the upgrade guard (bytes, time, memory), the HTTP client with the WebSocket upgrader
    /// and the requester, which asks for the upgrade once the connection is up. Once upgraded,
    /// the frame handlers replace them, `initializer` runs, and `upgraded` completes with it; it
    /// fails if the upgrade does not happen. `requestKey`: the Sec-WebSocket-Key (nil: random).
    func configureDialed(
        _ channel: any Channel, tls: NIOSSLContext?, serverName: String?, host: String, deadline: Deadline,
        timeoutError: TransportError, memory: TransportMemory?, requestKey: String? = nil,
        upgraded: EventLoopPromise<Void>, initializer: @escaping ConnectionInitializer
    ) throws {
        let maxFrameSize = maxFrameSize
        let maxOutboundFrameSize = maxOutboundFrameSize
        let pipelineHandler: @Sendable (any Channel, HTTPResponseHead) -> EventLoopFuture<Void> = { channel, _ in
            let done = channel.eventLoop.makeCompletedFuture {
                let sync = channel.pipeline.syncOperations
                sync.removeHandler(name: WebSocketUpgradeGuard.name, promise: nil)
                try Self.addFrameHandlers(
                    sync, role: .client, maxFrameSize: maxFrameSize, maxOutboundFrameSize: maxOutboundFrameSize,
                    memory: memory)
            }.flatMap { initializer(channel) }
            upgraded.completeWith(done)
            return done
        }
        let upgrader = NIOWebSocketClientUpgrader(
            requestKey: requestKey ?? NIOWebSocketClientUpgrader.randomRequestKey(), maxFrameSize: maxFrameSize,
            automaticErrorHandling: false, upgradePipelineHandler: pipelineHandler)
        let sync = channel.pipeline.syncOperations
        if let tls {
            // SNI and the name checked against the certificate: the address's DNS name or
            // /sni/ name; for an IP address NIOSSL checks the IP.
            try sync.addHandler(NIOSSLClientHandler(context: tls, serverHostname: serverName))
        }
        try sync.addHandler(
            WebSocketUpgradeGuard(maxBytes: maxUpgradeBytes, deadline: deadline, timeoutError: timeoutError, memory: memory),
            name: WebSocketUpgradeGuard.name)
        // The server's first libp2p bytes (multistream-select's header) may arrive in the
        // same read as the 101 response: they must be forwarded, not dropped.
        try sync.addHTTPClientHandlers(
            leftOverBytesStrategy: .forwardBytes,
            decoderLimitConfiguration: decoderLimits,
            withClientUpgrade: (
                upgraders: [upgrader],
                completionHandler: { context in
                    context.pipeline.syncOperations.removeHandler(name: WebSocketUpgradeRequester.name, promise: nil)
                }
            ))
        try sync.addHandler(
            WebSocketUpgradeRequester(host: host, path: "/", upgraded: upgraded), name: WebSocketUpgradeRequester.name)
    }
}

/// The dial's upgrade future, set on the event loop in the channel initializer.
private final class UpgradeFutureBox: Sendable {
    private let future = NIOLockedValueBox<EventLoopFuture<Void>?>(nil)
    func set(_ value: EventLoopFuture<Void>) { future.withLockedValue { $0 = value } }
    func get() -> EventLoopFuture<Void>? { future.withLockedValue { $0 } }
}
