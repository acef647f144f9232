import NIOCore

extension Multiaddr {
    /// Transport protocol to pair with an IP socket address.
    public enum SocketTransport: Sendable, Hashable {
        case tcp
        case udp
    }

    /// `/ip4/<a>/tcp/<port>` or `/ip6/<a>/tcp/<port>` (or `/udp/`) for an IP socket address.
    /// Throws `.unsupportedAddress` for Unix domain sockets.
    public init(socketAddress: SocketAddress, transport: SocketTransport = .tcp) throws(MultiformatsError) {
        guard let port = socketAddress.port, let portValue = UInt16(exactly: port) else {
            throw .unsupportedAddress("\(socketAddress) has no IP port")
        }
        let ip: Component
        switch socketAddress {
        case .v4:
            guard let text = socketAddress.ipAddress, let a = IPv4Address(text) else {
                throw .unsupportedAddress("cannot read IPv4 address of \(socketAddress)")
            }
            ip = .ip4(a)
        case .v6:
            guard let text = socketAddress.ipAddress, let a = IPv6Address(text) else {
                throw .unsupportedAddress("cannot read IPv6 address of \(socketAddress)")
            }
            ip = .ip6(a)
        case .unixDomainSocket:
            throw .unsupportedAddress("Unix domain sockets have no multiaddr form here")
        }
        self.init([ip, transport == .tcp ? .tcp(portValue) : .udp(portValue)])
    }

    /// The socket address of a multiaddr that starts with `/ip4|ip6/<addr>/tcp|udp/<port>`
    /// (later components, e.g. `/p2p/...`, are ignored). DNS names are not resolved
    /// here and throw `.unsupportedAddress`.
    public func socketAddress() throws -> SocketAddress {
        guard components.count >= 2 else {
            throw MultiformatsError.unsupportedAddress("\(self) does not start with an IP address and port")
        }
        let port: UInt16
        switch components[1] {
        case .tcp(let p), .udp(let p): port = p
        default: throw MultiformatsError.unsupportedAddress("\(self) has no /tcp or /udp port after the address")
        }
        switch components[0] {
        case .ip4(let a):
            var buffer = ByteBuffer()
            buffer.writeBytes(a.bytes)
            return try SocketAddress(packedIPAddress: buffer, port: Int(port))
        case .ip6(let a):
            var buffer = ByteBuffer()
            buffer.writeBytes(a.bytes)
            return try SocketAddress(packedIPAddress: buffer, port: Int(port))
        case .dns, .dns4, .dns6, .dnsaddr:
            throw MultiformatsError.unsupportedAddress("\(self) needs DNS resolution, which is not done here")
        default:
            throw MultiformatsError.unsupportedAddress("\(self) does not start with /ip4 or /ip6")
        }
    }
}
