import LibP2P
import Multiformats

/// Which addresses an AutoNAT server is willing to dial back: an IP address first (no DNS
/// names, whose resolution the requester controls), no relay circuits, and only public ones
/// unless private networks are allowed (test networks, LANs). go-libp2p dials only public
/// addresses (manet.IsPublicAddr), and the autonat-v2 spec says servers SHOULD NOT dial
/// private ones.
enum DialBackPolicy {
    /// Whether `address` (without `/p2p/`) may be dialed back.
    static func isDialable(_ address: Multiaddr, allowPrivateAddresses: Bool) -> Bool {
        guard let first = address.components.first, first.isIPAddress, !address.isCircuit else { return false }
        return allowPrivateAddresses || DialRanker.locality(of: address) == .publicNetwork
    }

    /// Whether `a` and `b` are on the same IP address.
    static func sameIP(_ a: Multiaddr, _ b: Multiaddr) -> Bool {
        guard let ip = a.components.first, ip.isIPAddress else { return false }
        return b.components.first == ip
    }
}

extension Multiaddr.Component {
    var isIPAddress: Bool {
        switch self {
        case .ip4, .ip6: return true
        default: return false
        }
    }
}
