import Identity
import Multiformats
import NIOConcurrencyHelpers

/// What the host knows about other peers: addresses (each with an expiry), public keys, protocols,
/// and the agent/protocol versions that identify reported. Safe to use from any task.
public final class Peerstore: Sendable {
    /// How long an address stays valid.
    public enum AddressTTL: Sendable {
        /// For addresses learned in passing (e.g. dialed once): 2 minutes.
        case temporary
        /// For addresses of a peer we were connected to: 10 minutes after it leaves.
        case recentlyConnected
        /// While connected (refreshed on every connection).
        case connected
        /// Never expires.
        case permanent
        case custom(Duration)

        var duration: Duration? {
            switch self {
            case .temporary: return .seconds(120)
            case .recentlyConnected: return .seconds(600)
            case .connected: return .seconds(3600 * 24 * 365)
            case .permanent: return nil
            case .custom(let d): return d
            }
        }
    }

    public struct PeerInfo: Sendable {
        public var addresses: [Multiaddr: ContinuousClock.Instant?] = [:]
        public var publicKey: PublicKey?
        public var protocols: [String] = []
        public var agentVersion: String?
        public var protocolVersion: String?
    }

    private let peers = NIOLockedValueBox<[PeerID: PeerInfo]>([:])

    public init() {}

    public func addAddresses(_ addresses: [Multiaddr], for peer: PeerID, ttl: AddressTTL) {
        let expiry = ttl.duration.map { ContinuousClock.now + $0 }
        peers.withLockedValue { peers in
            var info = peers[peer] ?? PeerInfo()
            for address in addresses {
                let plain = address.removingPeerID()
                // Never shorten a longer-lived entry.
                if let existing = info.addresses[plain] {
                    guard let existing else { continue }
                    if let expiry, expiry <= existing { continue }
                }
                info.addresses[plain] = expiry
            }
            peers[peer] = info
        }
    }

    /// Re-stamps every address of `peer` with `ttl` (e.g. when its last connection closes).
    public func updateAddressTTL(for peer: PeerID, to ttl: AddressTTL) {
        let expiry = ttl.duration.map { ContinuousClock.now + $0 }
        peers.withLockedValue { peers in
            guard var info = peers[peer] else { return }
            for (address, old) in info.addresses where old != nil { info.addresses[address] = expiry }
            peers[peer] = info
        }
    }

    /// Unexpired addresses of `peer`, without the `/p2p/` suffix.
    public func addresses(for peer: PeerID) -> [Multiaddr] {
        let now = ContinuousClock.now
        return peers.withLockedValue { peers in
            guard var info = peers[peer] else { return [] }
            info.addresses = info.addresses.filter { $0.value.map { $0 > now } ?? true }
            peers[peer] = info
            return info.addresses.keys.sorted { $0.description < $1.description }
        }
    }

    public func setPublicKey(_ key: PublicKey, for peer: PeerID) {
        guard peer.matches(key) else { return }
        peers.withLockedValue { $0[peer, default: PeerInfo()].publicKey = key }
    }

    public func publicKey(for peer: PeerID) -> PublicKey? {
        peers.withLockedValue { $0[peer]?.publicKey } ?? peer.publicKey
    }

    public func setProtocols(_ protocols: [String], for peer: PeerID) {
        peers.withLockedValue { $0[peer, default: PeerInfo()].protocols = protocols }
    }

    public func protocols(for peer: PeerID) -> [String] {
        peers.withLockedValue { $0[peer]?.protocols ?? [] }
    }

    public func setAgentVersion(_ agent: String?, protocolVersion: String?, for peer: PeerID) {
        peers.withLockedValue {
            if let agent { $0[peer, default: PeerInfo()].agentVersion = agent }
            if let protocolVersion { $0[peer, default: PeerInfo()].protocolVersion = protocolVersion }
        }
    }

    public func info(for peer: PeerID) -> PeerInfo? {
        peers.withLockedValue { $0[peer] }
    }

    public var knownPeers: [PeerID] {
        peers.withLockedValue { Array($0.keys) }
    }
}
