import LibP2P
import Multiformats

/// Addresses our TCP listener may have on the other side of a NAT: for each IP peers observed
/// us at, that IP with our listen port. A port-preserving NAT maps a connection from the listen
/// port there (hole punching dials from it), and a forwarded port lands there; the observed
/// addresses themselves carry the ephemeral ports of our outbound connections.
enum ListenPortMapping {
    /// The port of our first TCP listen address.
    static func tcpListenPort(_ host: P2PHost) -> UInt16? {
        for address in host.listenAddresses where !address.isCircuit {
            if address.components.count == 2, case .tcp(let port) = address.components[1] { return port }
        }
        return nil
    }

    /// Each observed IP with our TCP listen port, once each, in the observed addresses' order.
    static func predictedAddresses(_ host: P2PHost) -> [Multiaddr] {
        guard let port = tcpListenPort(host) else { return [] }
        var seen = Set<Multiaddr>()
        return host.observedAddresses.all.compactMap { observed in
            guard let ip = observed.address.components.first, ip.isIPAddress else { return nil }
            let predicted = Multiaddr([ip, .tcp(port)])
            return seen.insert(predicted).inserted ? predicted : nil
        }
    }
}
