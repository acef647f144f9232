import Basics
import Multiformats
import NIOCore

/// Runs on a new raw connection's channel: for a dial before the channel is active (or, for a
/// transport with a handshake of its own such as WebSocket, once that is done), for an accepted
/// connection when the transport hands it over. The libp2p upgrader (security, muxer) starts here.
public typealias ConnectionInitializer = @Sendable (any Channel) -> EventLoopFuture<Void>

/// The far end of an accepted raw connection, as its transport sees it.
public struct RemoteEndpoint: Sendable, Hashable {
    /// The remote's address as a multiaddr of this transport (`/ip4/…/tcp/…`, `…/ws`,
    /// `/memory/…`), if it has one.
    public var address: Multiaddr?
    /// The key connections from this source are limited by (the remote IP address for network
    /// transports), if any.
    public var source: String?

    /// An endpoint.
    public init(address: Multiaddr?, source: String?) {
        self.address = address
        self.source = source
    }
}

/// Where a transport charges the memory a peer can make it hold for one connection (a WebSocket
/// frame being assembled, an HTTP upgrade being read): the host's resource accounting, seen
/// through two closures so that transports do not depend on it. Reserve before buffering;
/// release exactly what was reserved once the bytes are delivered or dropped. A refused
/// reservation fails that connection with ``TransportError/Code/resourceLimit``.
public struct TransportMemory: Sendable {
    /// Reserves `bytes`, or throws (reserving nothing) when a limit refuses them.
    public let reserve: @Sendable (Int) throws -> Void
    /// Gives back `bytes` reserved earlier.
    public let release: @Sendable (Int) -> Void

    /// An account made of the two operations.
    public init(reserve: @escaping @Sendable (Int) throws -> Void, release: @escaping @Sendable (Int) -> Void) {
        self.reserve = reserve
        self.release = release
    }

    /// An inbound user event that hands a connection's account to its transport handlers once
    /// the host has one: an acceptor fires it (`channel.pipeline.fireUserInboundEventTriggered`)
    /// on the channel's event loop after opening the connection's resource scope, and whatever
    /// the transport buffers from then on is charged there (what it holds already stays where it
    /// was reserved). Transports with nothing to account let it pass.
    public struct Assignment: Sendable {
        /// The connection's account.
        public let memory: TransportMemory

        /// The event for `memory`.
        public init(_ memory: TransportMemory) {
            self.memory = memory
        }
    }
}

/// How to dial.
public struct DialOptions: Sendable {
    /// When the transport must have connected (and finished its own handshake, if it has one).
    /// The caller's whole dial shares it: the host's upgrade after the transport runs until the
    /// same deadline.
    public var deadline: Deadline
    /// The local IP address to connect from (nil: the system picks); network transports only.
    public var sourceAddress: String?
    /// Where the transport charges what the new connection makes it buffer (its own handshake,
    /// frames); nil: nothing is charged (the transport's hard limits still apply).
    public var memory: TransportMemory?
    /// The address as the caller gave it, with its trailing `/p2p/<peer>` (transports dial the
    /// address without it): for a transport that must name the peer, as the circuit relay
    /// transport names the target to the relay.
    public var fullAddress: Multiaddr?
    /// Dial from this local port, shared with our listener on it (SO_REUSEPORT), so that the
    /// connection leaves through the same NAT mapping our listen address has: hole punching
    /// (TCP simultaneous open). nil: an ephemeral port. Network transports only.
    public var localPort: UInt16?

    /// Dial options.
    public init(
        deadline: Deadline, sourceAddress: String? = nil, memory: TransportMemory? = nil, fullAddress: Multiaddr? = nil
    ) {
        self.deadline = deadline
        self.sourceAddress = sourceAddress
        self.memory = memory
        self.fullAddress = fullAddress
    }
}

/// How to listen.
public struct ListenOptions: Sendable {
    /// For each accepted connection, as soon as the transport has it: where to charge what the
    /// connection makes the transport buffer until its acceptor runs and fires a
    /// ``TransportMemory/Assignment`` (e.g. the WebSocket HTTP upgrade request), or later if no
    /// assignment comes. Nil, or a nil result: nothing is charged.
    public var memory: (@Sendable (RemoteEndpoint) -> TransportMemory?)?

    /// Listen options.
    public init(memory: (@Sendable (RemoteEndpoint) -> TransportMemory?)? = nil) {
        self.memory = memory
    }
}

/// A bound listener of some transport.
public protocol TransportListener: Sendable {
    /// The address actually bound (port 0 resolved to the real port).
    var address: Multiaddr { get }
    /// Stops listening (accepted connections are not affected).
    func close() async
}

/// A way to reach peers (TCP, WebSocket, in-memory): dials and listens on the multiaddrs it
/// handles and gives raw byte connections as NIO channels; the host's upgrader secures and
/// multiplexes them. Adding a transport means conforming to this and registering it in the
/// host's configuration (`P2PHost.Configuration.transports`).
public protocol Transport: Sendable {
    /// Whether this transport can dial `address` (a trailing `/p2p/…` is ignored).
    func canDial(_ address: Multiaddr) -> Bool
    /// Whether this transport can listen on `address`.
    func canListen(_ address: Multiaddr) -> Bool
    /// Connects to `address` (without `/p2p/…`); `initializer` runs on the new channel. Throws a
    /// ``TransportError``.
    func dial(
        _ address: Multiaddr, options: DialOptions, initializer: @escaping ConnectionInitializer
    ) async throws -> any Channel
    /// Listens on `address`; `acceptor` runs for each accepted connection, on its event loop,
    /// and decides what happens to it (it may close it at once, e.g. over a limit). Throws a
    /// ``TransportError``.
    func listen(
        on address: Multiaddr,
        acceptor: @escaping @Sendable (any Channel, RemoteEndpoint) -> EventLoopFuture<Void>
    ) async throws -> any TransportListener
    /// ``listen(on:acceptor:)`` with `options` (how to account what accepted connections make the
    /// transport hold before their acceptor runs). The default ignores them: a transport that
    /// buffers nothing on a peer's behalf before the acceptor runs has nothing to charge.
    func listen(
        on address: Multiaddr, options: ListenOptions,
        acceptor: @escaping @Sendable (any Channel, RemoteEndpoint) -> EventLoopFuture<Void>
    ) async throws -> any TransportListener
}

extension Transport {
    /// ``listen(on:acceptor:)``, the options ignored.
    public func listen(
        on address: Multiaddr, options: ListenOptions,
        acceptor: @escaping @Sendable (any Channel, RemoteEndpoint) -> EventLoopFuture<Void>
    ) async throws -> any TransportListener {
        try await listen(on: address, acceptor: acceptor)
    }
}

extension Channel {
    /// This end's address as a multiaddr: the socket address (`/ip4|ip6/…/tcp/…`), or an
    /// in-memory channel's `/memory/<n>` (the listener's number, or the dialer's own); nil if it
    /// has none. (A WebSocket channel gives its TCP address, without `/ws`.)
    public var localMultiaddr: Multiaddr? {
        if let memory = self as? MemoryChannel { return memory.localMultiaddress }
        return localAddress.flatMap { try? Multiaddr(socketAddress: $0) }
    }
}
