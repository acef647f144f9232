import Multiformats
import NIOCore
import NIOPosix

/// Why a transport operation failed.
public struct TransportError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: Sendable, Hashable {
        case unsupportedAddress
        case dialTimeout
        case connectionRefused
        case listenFailed
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "transport: \(message)" }
}

/// A bound TCP listener.
public struct TCPListener: Sendable {
    public let channel: Channel
    /// The address actually bound (port 0 resolved to the real port).
    public let address: Multiaddr

    public func close() async {
        try? await channel.close()
    }
}

/// TCP on NIOPosix: listens on and dials `/ip4|ip6|dns|dns4|dns6/…/tcp/PORT` multiaddrs.
public struct TCPTransport: Sendable {
    public let group: any EventLoopGroup

    public init(group: any EventLoopGroup) {
        self.group = group
    }

    /// Whether this transport can dial or listen on `address` (a trailing `/p2p/…` is ignored).
    public static func canHandle(_ address: Multiaddr) -> Bool {
        let parts = address.removingPeerID().components
        guard parts.count == 2, case .tcp = parts[1] else { return false }
        switch parts[0] {
        case .ip4, .ip6, .dns, .dns4, .dns6: return true
        default: return false
        }
    }

    private static func hostAndPort(_ address: Multiaddr) throws -> (host: String, port: Int) {
        let parts = address.removingPeerID().components
        guard parts.count == 2, case .tcp(let port) = parts[1] else {
            throw TransportError(.unsupportedAddress, "not a TCP address: \(address)")
        }
        switch parts[0] {
        case .dns(let name), .dns4(let name), .dns6(let name):
            return (name, Int(port))
        case .ip4, .ip6:
            let socket = try address.removingPeerID().socketAddress()
            guard let ip = socket.ipAddress else { throw TransportError(.unsupportedAddress, "\(address)") }
            return (ip, Int(port))
        default:
            throw TransportError(.unsupportedAddress, "not a TCP address: \(address)")
        }
    }

    /// Binds a listener; `initializer` runs for each accepted connection on its event loop.
    public func listen(
        on address: Multiaddr,
        backlog: Int32 = 256,
        initializer: @escaping @Sendable (Channel) -> EventLoopFuture<Void>
    ) async throws -> TCPListener {
        let (host, port) = try Self.hostAndPort(address)
        let channel: Channel
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: backlog)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer(initializer)
                .bind(host: host, port: port)
                .get()
        } catch {
            throw TransportError(.listenFailed, "cannot listen on \(address): \(error)")
        }
        guard let local = channel.localAddress else {
            throw TransportError(.listenFailed, "listener has no local address")
        }
        return TCPListener(channel: channel, address: try Multiaddr(socketAddress: local))
    }

    /// Connects; `initializer` runs on the new channel before it becomes active. `bindTo`: the
    /// local IP address to connect from (nil: the kernel picks).
    public func dial(
        _ address: Multiaddr,
        timeout: TimeAmount,
        bindTo sourceAddress: String? = nil,
        initializer: @escaping @Sendable (Channel) -> EventLoopFuture<Void>
    ) async throws -> Channel {
        var bootstrap = ClientBootstrap(group: group)
            .connectTimeout(timeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer(initializer)
        if let sourceAddress {
            do {
                bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: sourceAddress, port: 0))
            } catch {
                throw TransportError(.unsupportedAddress, "cannot dial from \(sourceAddress): \(error)")
            }
        }
        do {
            // An IP address is connected to directly: connect(host:port:) would run the resolver
            // (on a thread pool) even for a literal, which costs more than the loopback handshake.
            if let socket = try? address.removingPeerID().socketAddress() {
                return try await bootstrap.connect(to: socket).get()
            }
            let (host, port) = try Self.hostAndPort(address)
            return try await bootstrap.connect(host: host, port: port).get()
        } catch let error as ChannelError {
            if case .connectTimeout = error {
                throw TransportError(.dialTimeout, "connecting to \(address) timed out")
            }
            throw TransportError(.connectionRefused, "cannot connect to \(address): \(error)")
        } catch {
            throw TransportError(.connectionRefused, "cannot connect to \(address): \(error)")
        }
    }
}
