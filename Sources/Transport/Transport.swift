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

/// How to dial.
public struct DialOptions: Sendable {
    /// When the transport must have connected (and finished its own handshake, if it has one).
    /// The caller's whole dial shares it: the host's upgrade after the transport runs until the
    /// same deadline.
    public var deadline: Deadline
    /// The local IP address to connect from (nil: the system picks); network transports only.
    public var sourceAddress: String?

    /// Dial options.
    public init(deadline: Deadline, sourceAddress: String? = nil) {
        self.deadline = deadline
        self.sourceAddress = sourceAddress
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
}
