import Identity
import LibP2P
import Multiformats
import Resources

/// Libp2p streams as network connections: Go's `Dial` / `Listen` returning `net.Conn` /
/// `net.Listener`, here `PointSubConnection` / `PointSubListener`. Addresses are peer IDs on the
/// `pointsub` network (`PointSubAddress`).
public enum PointSubNet {
    /// The network name of `PointSubAddress` (Go's `net.Addr.Network()`).
    public static let network = PointSubAddress.networkName
    /// Accepted-but-not-taken connections a listener queues before it resets new streams.
    public static let defaultBacklog = 128

    /// Opens a stream to `peer` speaking `protocol` (connecting first if needed, with the
    /// addresses in the host's peerstore). Throws the host's errors unchanged, e.g.
    /// `HostError(.protocolNotSupported)` when the peer does not listen on the protocol.
    public static func dial(host: P2PHost, peer: PeerID, protocol protocolID: String) async throws -> PointSubConnection {
        let stream = try await host.newStream(to: peer, protocols: [protocolID])
        return PointSubConnection(stream: stream, localPeer: host.peerID)
    }

    /// Like `dial(host:peer:protocol:)`, to the peer at `address` (which should end in `/p2p/<id>`).
    public static func dial(host: P2PHost, address: Multiaddr, protocol protocolID: String) async throws -> PointSubConnection {
        let stream = try await host.newStream(to: address, protocols: [protocolID])
        return PointSubConnection(stream: stream, localPeer: host.peerID)
    }

    /// Accepts streams of `protocol` as connections. Throws `PointSubNetError(.alreadyListening)`
    /// if the host has a handler for the protocol already.
    public static func listen(host: P2PHost, protocol protocolID: String, backlog: Int = defaultBacklog) throws -> PointSubListener {
        try PointSubListener(host: host, protocolID: protocolID, backlog: backlog)
    }
}
