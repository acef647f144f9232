import Identity
import Multiformats

/// Something that adds behaviour to a host when it starts (identify, ping, perf, …).
public protocol HostService: Sendable {
    func attach(to host: P2PHost) async throws
}

/// What happened on a host. Subscribe with `P2PHost.events()`.
public enum HostEvent: Sendable {
    /// A connection finished its upgrade.
    case connectionOpened(Connection)
    /// A connection ended; `error` says why when it was not a clean close (e.g. a YamuxError for a
    /// peer that broke the muxer protocol).
    case connectionClosed(Connection, error: (any Error)?)
    /// The first connection to a peer opened.
    case peerConnected(PeerID)
    /// The last connection to a peer closed.
    case peerDisconnected(PeerID)
    /// Identify learned the peer's protocols and agent version.
    case peerIdentified(PeerID)
    /// An inbound connection failed its upgrade (bad handshake, timeout, protocol violation).
    case inboundUpgradeFailed(remoteAddress: Multiaddr?, error: any Error)
    /// The addresses we advertise changed (`P2PHost.advertisedAddresses`), e.g. a relay
    /// reservation was made or lost.
    case addressesChanged([Multiaddr])
}
