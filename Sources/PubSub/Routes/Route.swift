import Identity
import Multiformats

/// A named route: a peer reachable at `address` (which ends in `/p2p/<peer>`).
public struct Route: Sendable, Hashable, CustomStringConvertible {
    public let name: String
    public let address: Multiaddr
    public let peer: PeerID

    /// Longest route name accepted, in UTF-8 bytes.
    public static let maxNameLength = 256

    /// Validates a route: the name is non-empty and at most `maxNameLength` bytes; the address
    /// ends in `/p2p/<peer id>`, has something to dial before that, and is not `localPeer`.
    public init(name: String, address: Multiaddr, localPeer: PeerID) throws(RouteError) {
        guard !name.isEmpty, name.utf8.count <= Self.maxNameLength else {
            throw RouteError(.invalidName, "a route name must have 1 to \(Self.maxNameLength) bytes", route: name)
        }
        guard let peer = address.peerID else {
            throw RouteError(.invalidAddress, "\(address) does not end in /p2p/<peer id>", route: name)
        }
        guard !address.removingPeerID().isEmpty else {
            throw RouteError(.invalidAddress, "\(address) has no transport address before /p2p/", route: name)
        }
        guard peer != localPeer else {
            throw RouteError(.selfRoute, "\(address) is this host", route: name)
        }
        self.name = name
        self.address = address
        self.peer = peer
    }

    public var description: String { "\(name) → \(address)" }
}

/// The routes, keyed both ways (name → route, peer → name) so that a second route with the same
/// name or to the same peer is refused. A value: no locks, no I/O.
struct RouteRegistry {
    private var byName: [String: Route] = [:]
    private var byPeer: [PeerID: String] = [:]

    /// Adds `route`; throws `.duplicateName` or `.duplicateAddress`.
    mutating func add(_ route: Route) throws(RouteError) {
        if let existing = byName[route.name] {
            throw RouteError(
                .duplicateName, "a route named \(route.name) exists already (to \(existing.address))", route: route.name)
        }
        if let other = byPeer[route.peer] {
            throw RouteError(.duplicateAddress, "route \(other) goes to \(route.peer) already", route: route.name)
        }
        byName[route.name] = route
        byPeer[route.peer] = route.name
    }

    /// Removes the route named `name`; nil if there is none.
    mutating func remove(_ name: String) -> Route? {
        guard let route = byName.removeValue(forKey: name) else { return nil }
        byPeer.removeValue(forKey: route.peer)
        return route
    }

    mutating func removeAll() {
        byName = [:]
        byPeer = [:]
    }

    func route(named name: String) -> Route? { byName[name] }

    /// The route to `peer`, if any.
    func route(to peer: PeerID) -> Route? { byPeer[peer].flatMap { byName[$0] } }

    /// Every route, sorted by name.
    var routes: [Route] { byName.values.sorted { $0.name < $1.name } }

    var count: Int { byName.count }
}
