import Identity
import Multiformats

/// Finds the addresses of a peer from its ID alone (a DHT, a rendezvous service). A host asks
/// its routers when it must connect to a peer it has no address for (`P2PHost.connect(to:)`).
public protocol PeerRouting: Sendable {
    /// The peer's addresses; throws when it cannot be found.
    func findPeer(_ peer: PeerID) async throws -> [Multiaddr]
}
