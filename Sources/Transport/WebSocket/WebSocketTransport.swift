import Multiformats
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket

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

/// WebSocket over TCP (RFC 6455): dials and listens on `/ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT/ws`.
///
/// A connection starts with an HTTP/1.1 upgrade (the client asks for `/`, as go-libp2p and
/// py-libp2p do; the server upgrades a request on any path), then carries the libp2p bytes in
/// binary frames, which the host's upgrader (security, muxer) runs over as over TCP. The
/// upgrade is bounded in bytes and time, and the number of upgrades under way per listener is
/// capped; frames are bounded by ``maxFrameSize``. A broken frame, a text frame or one over the
/// limit fails that connection with a ``TransportError`` and closes it.
///
/// Secure WebSocket (`/wss`, `/tls/ws`) is not handled (yet).
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

    /// A transport on `group` (never shut down by the transport).
    public init(
        group: any EventLoopGroup,
        maxFrameSize: Int = 1 << 20,
        maxOutboundFrameSize: Int = 128 * 1024,
        upgradeTimeout: Duration = .seconds(10),
        maxUpgradeBytes: Int = 16 * 1024,
        maxPendingUpgrades: Int = 128
    ) {
        self.group = group
        self.maxFrameSize = min(max(maxFrameSize, 126), Int(UInt32.max))
        self.maxOutboundFrameSize = max(1, maxOutboundFrameSize)
        self.upgradeTimeout = upgradeTimeout
        self.maxUpgradeBytes = max(1024, maxUpgradeBytes)
        self.maxPendingUpgrades = max(1, maxPendingUpgrades)
    }

    /// The TCP part of a `/…/tcp/PORT/ws` address (a trailing `/p2p/…` is ignored), or nil.
    public static func tcpAddress(of address: Multiaddr) -> Multiaddr? {
        let parts = address.removingPeerID().components
        guard parts.count == 3, case .ws = parts[2] else { return nil }
        let tcp = Multiaddr(Array(parts[0..<2]))
        return TCPTransport.canHandle(tcp) ? tcp : nil
    }

    /// Whether this transport can dial or listen on `address` (`/…/tcp/PORT/ws`).
    public static func canHandle(_ address: Multiaddr) -> Bool {
        tcpAddress(of: address) != nil
    }

    /// Whether `address` is a WebSocket address (``canHandle(_:)``).
    public func canDial(_ address: Multiaddr) -> Bool { Self.canHandle(address) }

    /// Whether `address` is a WebSocket address (``canHandle(_:)``).
    public func canListen(_ address: Multiaddr) -> Bool { Self.canHandle(address) }

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

    /// Listens on `address` (`/…/tcp/PORT/ws`); `acceptor` runs for each connection once its
    /// upgrade is done, with the remote as `/ip4|ip6/…/tcp/…/ws` and its IP as the source.
    public func listen(
        on address: Multiaddr,
        acceptor: @escaping @Sendable (any Channel, RemoteEndpoint) -> EventLoopFuture<Void>
    ) async throws -> any TransportListener {
        guard let tcpAddress = Self.tcpAddress(of: address) else {
            throw TransportError(.unsupportedAddress, "not a WebSocket address: \(address)")
        }
        let pending = PendingUpgrades(limit: maxPendingUpgrades)
        let transport = self
        let listener = try await TCPTransport(group: group).listen(on: tcpAddress) { channel in
            transport.acceptConnection(channel, pending: pending, acceptor: acceptor)
        }
        return WebSocketListener(tcp: listener, address: listener.address.appending(.ws))
    }

    private func acceptConnection(
        _ channel: any Channel, pending: PendingUpgrades,
        acceptor: @escaping @Sendable (any Channel, RemoteEndpoint) -> EventLoopFuture<Void>
    ) -> EventLoopFuture<Void> {
        guard let slot = pending.enter() else { return channel.close() }
        channel.closeFuture.whenComplete { _ in slot.release() }
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
                    try sync.addHandler(
                        WebSocketFrameHandler(
                            role: .server, maxFrameSize: maxFrameSize, maxOutboundFrameSize: maxOutboundFrameSize))
                    slot.release()
                }.flatMap {
                    let remote = RemoteEndpoint(
                        address: channel.remoteAddress.flatMap { try? Multiaddr(socketAddress: $0) }?.appending(.ws),
                        source: channel.remoteAddress?.ipAddress)
                    return acceptor(channel, remote)
                }
            })
        let deadline = NIODeadline.now() + TimeAmount(upgradeTimeout)
        let guardHandler = WebSocketUpgradeGuard(
            maxBytes: maxUpgradeBytes, deadline: deadline,
            timeoutError: TransportError(.handshakeFailed, "WebSocket: HTTP upgrade timed out", reason: "timed out"))
        let limits = decoderLimits
        return channel.eventLoop.makeCompletedFuture {
            let sync = channel.pipeline.syncOperations
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
                withDecoderLimitConfiguration: limits)
            try sync.addHandler(WebSocketUpgradeRefusal(), name: WebSocketUpgradeRefusal.name)
        }
    }

    // MARK: - Dialing

    /// Connects to `address` (`/…/tcp/PORT/ws`) and upgrades to WebSocket; `initializer` runs
    /// once the upgrade is done (the channel is active then). `options.timeout` bounds the TCP
    /// connect and the upgrade together.
    public func dial(
        _ address: Multiaddr, options: DialOptions, initializer: @escaping ConnectionInitializer
    ) async throws -> any Channel {
        guard let tcpAddress = Self.tcpAddress(of: address) else {
            throw TransportError(.unsupportedAddress, "not a WebSocket address: \(address)")
        }
        let deadline = NIODeadline.now() + TimeAmount(options.timeout)
        let host = Self.hostHeader(tcpAddress)
        let maxFrameSize = maxFrameSize
        let maxOutboundFrameSize = maxOutboundFrameSize
        let maxUpgradeBytes = maxUpgradeBytes
        let limits = decoderLimits
        let upgradedBox = UpgradeFutureBox()
        let channel = try await TCPTransport(group: group).dial(
            tcpAddress, timeout: TimeAmount(options.timeout), bindTo: options.sourceAddress
        ) { channel in
            let upgraded = channel.eventLoop.makePromise(of: Void.self)
            upgradedBox.set(upgraded.futureResult)
            // Completes the promise on every path (a failed connect never becomes active); once
            // the upgrade succeeded this does nothing.
            channel.closeFuture.whenComplete { _ in
                let what = "connection closed during the HTTP upgrade"
                upgraded.fail(TransportError(.handshakeFailed, "WebSocket: \(what)", reason: what))
            }
            let upgrader = NIOWebSocketClientUpgrader(
                maxFrameSize: maxFrameSize, automaticErrorHandling: false,
                upgradePipelineHandler: { channel, _ in
                    let done = channel.eventLoop.makeCompletedFuture {
                        let sync = channel.pipeline.syncOperations
                        sync.removeHandler(name: WebSocketUpgradeGuard.name, promise: nil)
                        try sync.addHandler(
                            WebSocketFrameHandler(
                                role: .client, maxFrameSize: maxFrameSize, maxOutboundFrameSize: maxOutboundFrameSize))
                    }.flatMap { initializer(channel) }
                    upgraded.completeWith(done)
                    return done
                })
            let timeout = TransportError(
                .dialTimeout, "connecting to \(address) timed out (WebSocket upgrade)", reason: "timed out")
            return channel.eventLoop.makeCompletedFuture {
                let sync = channel.pipeline.syncOperations
                try sync.addHandler(
                    WebSocketUpgradeGuard(maxBytes: maxUpgradeBytes, deadline: deadline, timeoutError: timeout),
                    name: WebSocketUpgradeGuard.name)
                // The server's first libp2p bytes (multistream-select's header) may arrive in the
                // same read as the 101 response: they must be forwarded, not dropped.
                try sync.addHTTPClientHandlers(
                    leftOverBytesStrategy: .forwardBytes,
                    decoderLimitConfiguration: limits,
                    withClientUpgrade: (
                        upgraders: [upgrader],
                        completionHandler: { context in
                            context.pipeline.syncOperations.removeHandler(
                                name: WebSocketUpgradeRequester.name, promise: nil)
                        }
                    ))
                try sync.addHandler(
                    WebSocketUpgradeRequester(host: host, path: "/", upgraded: upgraded),
                    name: WebSocketUpgradeRequester.name)
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
            throw TransportError(.handshakeFailed, "WebSocket upgrade with \(address) failed: \(error)", reason: "\(error)")
        }
    }
}

/// The dial's upgrade future, set on the event loop in the channel initializer.
private final class UpgradeFutureBox: Sendable {
    private let future = NIOLockedValueBox<EventLoopFuture<Void>?>(nil)
    func set(_ value: EventLoopFuture<Void>) { future.withLockedValue { $0 = value } }
    func get() -> EventLoopFuture<Void>? { future.withLockedValue { $0 } }
}
