import Basics
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Basics
import Multiformats
import NIOCore
import NIOPosix

/// Why a transport operation failed.
public struct TransportError: CodedError, Hashable {
    /// The kinds of transport failure.
    public enum Code: String, ErrorCode {
        /// Not a TCP multiaddr this transport can dial or listen on.
        case unsupportedAddress
        /// The TCP connect did not finish in time (no answer at all, e.g. a firewall that drops SYNs).
        case dialTimeout
        /// The remote host answered with a reset: nothing listens on that port (ECONNREFUSED).
        case connectionRefused
        /// The connect failed for another reason (`reason` says which: no route to host, …).
        case connectionFailed
        /// Binding the listener failed.
        case listenFailed
        /// A transport's own handshake failed (e.g. the WebSocket HTTP upgrade was refused,
        /// malformed, too large or too slow).
        case handshakeFailed
        /// The remote broke the transport's framing rules (e.g. a WebSocket text frame, an
        /// unmasked client frame, a continuation frame outside a fragmented message).
        case protocolViolation
        /// The remote sent a frame over the transport's hard size limit.
        case frameTooLarge
        /// The host's resource accounting refused memory the remote would have made the
        /// transport hold (``TransportMemory``, e.g. a large WebSocket frame under a low memory
        /// limit); that connection is closed.
        case resourceLimit
    }

    /// What kind of failure.
    public var code: Code
    /// What failed at this layer, e.g. "cannot connect to /ip4/10.0.0.1/tcp/4001".
    public var message: String
    /// The root cause in a few words, e.g. "connection refused" (empty when `message` says it all).
    public var reason: String
    /// What NIO (or the other end) reported, when there is such an error.
    public var cause: (any Error)?

    /// A transport error; `reason` is the root cause in a few words, `cause` the error behind it.
    public init(_ code: Code, _ message: String, reason: String = "", cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.reason = reason
        self.cause = cause
    }

    /// Equal when code, message and reason are (the cause is not compared).
    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.code == rhs.code && lhs.message == rhs.message && lhs.reason == rhs.reason
    }

    /// Hashes code, message and reason, consistent with `==`.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(code)
        hasher.combine(message)
        hasher.combine(reason)
    }

    /// Classifies what NIO reported for a failed connect.
    ///
    /// On Linux a refused connect does not come back as an error of connect(2): epoll reports the
    /// socket with EPOLLERR, and NIO reads SO_ERROR and fails the channel with
    /// `IOError(errnoCode: ECONNREFUSED, reason: "connection reset (error set)")`. Its description
    /// therefore starts with "connection reset" although the errno says refused: the errno is
    /// what counts. `connect(host:port:)` wraps the per-address errors in `NIOConnectionError`.
    static func classifyConnectFailure(_ error: any Error) -> (code: Code, reason: String) {
        switch error {
        case let error as IOError:
            return classify(errno: error.errnoCode)
        case let error as NIOConnectionError:
            if let first = error.connectionErrors.first { return classifyConnectFailure(first.error) }
            if error.dnsAError != nil || error.dnsAAAAError != nil {
                return (.connectionFailed, "cannot resolve \(error.host)")
            }
            return (.connectionFailed, "no address to connect to for \(error.host)")
        case ChannelError.connectTimeout:
            return (.dialTimeout, "timed out")
        default:
            return (.connectionFailed, "\(error)")
        }
    }

    static func classify(errno code: Int32) -> (code: Code, reason: String) {
        switch code {
        case ECONNREFUSED: return (.connectionRefused, "connection refused")
        case ETIMEDOUT: return (.dialTimeout, "timed out")
        case ECONNRESET: return (.connectionFailed, "connection reset")
        case EHOSTUNREACH: return (.connectionFailed, "no route to host")
        case ENETUNREACH: return (.connectionFailed, "network is unreachable")
        case EADDRNOTAVAIL: return (.connectionFailed, "address not available")
        default: return (.connectionFailed, String(cString: strerror(code)).lowercased())
        }
    }
}

/// A bound TCP listener.
public struct TCPListener: TransportListener {
    /// The listening server channel.
    public let channel: Channel
    /// The address actually bound (port 0 resolved to the real port).
    public let address: Multiaddr

    /// Stops listening (accepted connections are not affected).
    public func close() async {
        try? await channel.close()
    }
}

/// TCP on NIOPosix: listens on and dials `/ip4|ip6|dns|dns4|dns6/…/tcp/PORT` multiaddrs.
public struct TCPTransport: Transport {
    /// Where listeners and connections run.
    public let group: any EventLoopGroup

    /// A transport on `group` (never shut down by the transport).
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

    /// Whether `address` is a TCP address (``canHandle(_:)``).
    public func canDial(_ address: Multiaddr) -> Bool { Self.canHandle(address) }

    /// Whether `address` is a TCP address (``canHandle(_:)``).
    public func canListen(_ address: Multiaddr) -> Bool { Self.canHandle(address) }

    /// ``dial(_:deadline:bindTo:initializer:)`` with the options' deadline and source address.
    public func dial(
        _ address: Multiaddr, options: DialOptions, initializer: @escaping ConnectionInitializer
    ) async throws -> any Channel {
        try await dial(
            address, deadline: options.deadline, bindTo: options.sourceAddress, localPort: options.localPort,
            initializer: initializer)
    }

    /// ``listen(on:backlog:initializer:)``; the acceptor learns each connection's remote address
    /// and IP.
    public func listen(
        on address: Multiaddr,
        acceptor: @escaping @Sendable (any Channel, RemoteEndpoint) -> EventLoopFuture<Void>
    ) async throws -> any TransportListener {
        try await listen(on: address) { channel in
            let remote = RemoteEndpoint(
                address: channel.remoteAddress.flatMap { try? Multiaddr(socketAddress: $0) },
                source: channel.remoteAddress?.ipAddress)
            return acceptor(channel, remote)
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

    /// SO_REUSEPORT (NIO names no constant for it): several sockets bound to one port, our
    /// listener's and a hole-punching dial's.
    static let reusePort = ChannelOptions.socketOption(NIOBSDSocket.Option(rawValue: SO_REUSEPORT))

    /// The only address family a `/dns4` (IPv4) or `/dns6` (IPv6) address may resolve to; nil for
    /// `/dns` (either) and IP addresses.
    static func addressFamily(_ address: Multiaddr) -> FamilyResolver.Family? {
        switch address.removingPeerID().components.first {
        case .dns4: return .ipv4
        case .dns6: return .ipv6
        default: return nil
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
                // Lets hole-punching dials leave from the listen port (as go-libp2p's reuseport).
                .serverChannelOption(Self.reusePort, value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer(initializer)
                .bind(host: host, port: port)
                .get()
        } catch {
            let reason = (error as? IOError).map { TransportError.classify(errno: $0.errnoCode).reason } ?? "\(error)"
            throw TransportError(.listenFailed, "cannot listen on \(address)", reason: reason, cause: error)
        }
        guard let local = channel.localAddress else {
            throw TransportError(.listenFailed, "listener has no local address")
        }
        return TCPListener(channel: channel, address: try Multiaddr(socketAddress: local))
    }

    /// Connects before `deadline`; `initializer` runs on the new channel before it becomes active.
    /// `bindTo`: the local IP address to connect from (nil: the kernel picks).
    public func dial(
        _ address: Multiaddr,
        deadline: Deadline,
        bindTo sourceAddress: String? = nil,
        localPort: UInt16? = nil,
        initializer: @escaping @Sendable (Channel) -> EventLoopFuture<Void>
    ) async throws -> Channel {
        var bootstrap = ClientBootstrap(group: group)
            .connectTimeout(deadline.timeAmount)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer(initializer)
        if localPort != nil {
            // Shares the port with our listener (which sets SO_REUSEPORT too).
            bootstrap = bootstrap
                .channelOption(.socketOption(.so_reuseaddr), value: 1)
                .channelOption(Self.reusePort, value: 1)
        }
        if sourceAddress != nil || localPort != nil {
            var ip = sourceAddress ?? "0.0.0.0"
            if sourceAddress == nil, Self.addressFamily(address) == .ipv6 { ip = "::" }
            if sourceAddress == nil, case .ip6 = address.components.first { ip = "::" }
            do {
                bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: ip, port: Int(localPort ?? 0)))
            } catch {
                throw TransportError(.unsupportedAddress, "cannot dial from \(ip) port \(localPort ?? 0)", cause: error)
            }
        }
        do {
            // An IP address is connected to directly: connect(host:port:) would run the resolver
            // (on a thread pool) even for a literal, which costs more than the loopback handshake.
            if let socket = try? address.removingPeerID().socketAddress() {
                return try await bootstrap.connect(to: socket).get()
            }
            let (host, port) = try Self.hostAndPort(address)
            if let family = Self.addressFamily(address) {
                // /dns4 names only A records, /dns6 only AAAA (multiaddr's protocol table;
                // go-libp2p resolves them so): the connect must not fall back to the other family.
                bootstrap = bootstrap.resolver(FamilyResolver(loop: group.next(), family: family))
            }
            return try await bootstrap.connect(host: host, port: port).get()
        } catch let error as TransportError {
            throw error
        } catch {
            let (code, reason) = TransportError.classifyConnectFailure(error)
            if code == .dialTimeout {
                throw TransportError(.dialTimeout, "connecting to \(address) timed out", reason: reason, cause: error)
            }
            throw TransportError(code, "cannot connect to \(address)", reason: reason, cause: error)
        }
    }
}

/// Resolves a host name to the addresses of one family only (`/dns4`: IPv4, `/dns6`: IPv6) for
/// NIO's connect: getaddrinfo with that family as hint, on NIO's thread pool (never on an event
/// loop); the query for the other family answers nothing.
final class FamilyResolver: Resolver, Sendable {
    /// An address family.
    enum Family: Sendable {
        case ipv4, ipv6
    }

    /// The most addresses taken from one answer.
    static let maxAddresses = 32

    private let loop: any EventLoop
    private let family: Family

    init(loop: any EventLoop, family: Family) {
        self.loop = loop
        self.family = family
    }

    func initiateAQuery(host: String, port: Int) -> EventLoopFuture<[SocketAddress]> {
        family == .ipv4 ? resolve(host: host, port: port) : loop.makeSucceededFuture([])
    }

    func initiateAAAAQuery(host: String, port: Int) -> EventLoopFuture<[SocketAddress]> {
        family == .ipv6 ? resolve(host: host, port: port) : loop.makeSucceededFuture([])
    }

    /// Nothing to cancel: a getaddrinfo call runs to its end.
    func cancelQueries() {}

    private func resolve(host: String, port: Int) -> EventLoopFuture<[SocketAddress]> {
        let family = family
        return NIOThreadPool.singleton.runIfActive(eventLoop: loop) {
            try Self.lookup(host: host, port: port, family: family)
        }
    }

    /// The TCP addresses of `host` in `family` (duplicates removed, at most ``maxAddresses``).
    static func lookup(host: String, port: Int, family: Family) throws -> [SocketAddress] {
        var hints = addrinfo()
        hints.ai_family = family == .ipv4 ? AF_INET : AF_INET6
        #if canImport(Glibc)
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #else
            hints.ai_socktype = SOCK_STREAM
        #endif
        hints.ai_protocol = Int32(IPPROTO_TCP)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0, let list else {
            let reason = String(cString: gai_strerror(status))
            throw TransportError(.connectionFailed, "cannot resolve \(host): \(reason)", reason: reason)
        }
        defer { freeaddrinfo(list) }
        var addresses: [SocketAddress] = []
        var entry: UnsafeMutablePointer<addrinfo>? = list
        var visited = 0
        while let current = entry, addresses.count < maxAddresses, visited < 8 * maxAddresses {
            entry = current.pointee.ai_next
            visited += 1
            guard let socket = current.pointee.ai_addr else { continue }
            let address: SocketAddress
            switch current.pointee.ai_family {
            case AF_INET where family == .ipv4:
                address = socket.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { SocketAddress($0.pointee, host: host) }
            case AF_INET6 where family == .ipv6:
                address = socket.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { SocketAddress($0.pointee, host: host) }
            default:
                continue
            }
            if !addresses.contains(address) { addresses.append(address) }
        }
        return addresses
    }
}
