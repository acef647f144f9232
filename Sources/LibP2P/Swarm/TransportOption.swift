import NIOCore
import Transport

/// A transport a host uses (``tcp``, ``webSocket``, ``memory``), built on the host's
/// event loop group when the host is created. `P2PHost.Configuration.transports` lists them; an
/// address is dialed or listened on by the first that handles it.
public struct TransportOption: Sendable, CustomStringConvertible {
    /// A short name for logs ("tcp").
    public let name: String
    private let make: @Sendable (any EventLoopGroup) -> any Transport

    /// A transport called `name`, built by `make` on the host's event loop group.
    public init(name: String, make: @escaping @Sendable (any EventLoopGroup) -> any Transport) {
        self.name = name
        self.make = make
    }

    /// TCP (`/ip4|ip6|dns|dns4|dns6/…/tcp/PORT`).
    public static let tcp = TransportOption(name: "tcp") { TCPTransport(group: $0) }

    /// In-process connections (`/memory/N`; listen on `/memory/0` for a fresh number): no sockets,
    /// for in-process networks and tests. Hosts of one process reach each other only.
    public static let memory = TransportOption(name: "memory") { MemoryTransport(group: $0) }

    /// WebSocket over TCP (`/ip4|ip6|dns|dns4|dns6/…/tcp/PORT/ws`), with the default limits of
    /// ``WebSocketTransport``.
    public static let webSocket = TransportOption(name: "ws") { WebSocketTransport(group: $0) }

    /// WebSocket, plain (`…/ws`) and secure (`…/tls/ws`, `…/wss`) with `tls`: a listener needs
    /// its server certificate there; a dialer verifies servers by its client configuration.
    public static func webSocket(tls: WebSocketTLS) -> TransportOption {
        TransportOption(name: "ws") { WebSocketTransport(group: $0, tls: tls) }
    }

    /// The name.
    public var description: String { name }

    func build(on group: any EventLoopGroup) -> any Transport {
        make(group)
    }
}
