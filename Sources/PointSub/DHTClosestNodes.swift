import Basics
import Identity
import Kademlia
import LibP2P
import NIOConcurrencyHelpers
import PointSubCore
import Protocols

// Why here: this is the one module that sees both PointSubCore and Kademlia. PointSubCore and
// Kademlia are siblings over LibP2P; a request/response library should not pull in a DHT, nor a
// DHT know about PointSub, so the seam is PointSubCore's `ClosestNodeSource` protocol and this
// type implements it with the DHT's public API (`closestPeers`).

/// A `ClosestNodeSource` backed by a Kademlia DHT: `sendClosest` goes to the peers nearest to the
/// request's key that serve the protocol, as the network knows them, instead of a hand-made
/// node list.
///
/// ```swift
/// let nodes = try DHTClosestNodes(dht: dht, host: host)
/// client.setClosestNodeSource(nodes, protocol: "/kv/1.0.0")
/// let (answer, node) = try await client.sendClosest(request, protocol: "/kv/1.0.0")
/// ```
///
/// **Keys.** The source is asked about a key (`sendClosest`'s `key`, by default the SHA-256 of
/// the request); the DHT looks up that key, i.e. (kad-dht spec) the point SHA-256(key) in its
/// keyspace, and returns its k peers (DHT servers that answered) nearest to it by XOR distance
/// to SHA-256(peer ID). The nodes offered are those of them that serve the protocol, in that
/// order — XOR distance, never round-trip time — so the same key reaches the same node while the
/// network is stable, and keys spread evenly over the serving nodes.
///
/// **Serving the protocol.** A peer serves it if identify's protocol list in the peerstore
/// contains it. A peer the peerstore knows no protocols of is asked (connect and identify) —
/// at most `maxProbes` per lookup, the nearest first, all at once, each within `probeTimeout`
/// and the caller's deadline; one that cannot be asked counts as not serving. Serving peers
/// beyond the first peer left unasked are still offered (in order), but not cached: that peer
/// might serve and be nearer.
///
/// **Reach.** Only the k nearest peers (k = the DHT's bucket size, 20 by default) are looked
/// at: a protocol that few nodes of a large network serve is not found for most keys (publish
/// provider records for such a service and look them up with `findProviders` instead). Peers in
/// DHT client mode are not in the DHT's answers, so they are never chosen.
///
/// **Cache.** Lookups are kept for `cacheTTL` (at most `maxCachedLookups` of them): the same key
/// again, and a nearby key where the cached lookup proves the answer (see `ClosestNodeCache`),
/// need no lookup. A node that fails a request (`nodeFailed`) is dropped from the cache, so
/// the next send fails over at once; it is offered again after a fresh lookup finds it.
///
/// **Time.** A lookup ends by the caller's deadline (`.timeout(requestSent: false)`) and by the
/// DHT's own `lookupTimeout`.
public final class DHTClosestNodes: ClosestNodeSource {
    /// Settings.
    public struct Configuration: Sendable {
        /// How long a lookup's result is used for later sends.
        public var cacheTTL: Duration = .seconds(30)
        /// Lookups cached at most (each holds at most k peers).
        public var maxCachedLookups = 1024
        /// Peers of unknown protocols asked (connect and identify) per lookup, at most.
        public var maxProbes = 8
        /// Time limit of one such probe.
        public var probeTimeout: Duration = .seconds(2)

        /// The defaults.
        public init() {}

        /// Throws `.invalidConfiguration` naming the first bad value.
        public func validate() throws(PointSubError) {
            guard cacheTTL >= .zero else {
                throw PointSubError(.invalidConfiguration, "cacheTTL must not be negative (is \(cacheTTL))")
            }
            guard maxCachedLookups >= 0 else {
                throw PointSubError(.invalidConfiguration, "maxCachedLookups must not be negative")
            }
            guard maxProbes >= 0 else { throw PointSubError(.invalidConfiguration, "maxProbes must not be negative") }
            guard probeTimeout > .zero else {
                throw PointSubError(.invalidConfiguration, "probeTimeout must be positive (is \(probeTimeout))")
            }
        }
    }

    /// The DHT asked.
    public let dht: KademliaDHT
    /// The host the DHT is attached to (its peerstore says who serves what).
    public let host: P2PHost
    /// The settings.
    public let configuration: Configuration
    private let cache: NIOLockedValueBox<ClosestNodeCache>
    private let lookups = NIOLockedValueBox(0)

    /// A source that asks `dht`, which must be attached to `host` (one of its services).
    /// Throws `.invalidConfiguration` for an unusable configuration.
    public init(dht: KademliaDHT, host: P2PHost, configuration: Configuration = Configuration()) throws(PointSubError) {
        try configuration.validate()
        self.dht = dht
        self.host = host
        self.configuration = configuration
        self.cache = NIOLockedValueBox(
            ClosestNodeCache(ttl: configuration.cacheTTL, maxEntries: configuration.maxCachedLookups))
    }

    /// DHT lookups made so far (cache hits make none).
    public var lookupCount: Int { lookups.withLockedValue { $0 } }

    /// See `ClosestNodeSource.closestNodes`. Throws `.messageTooLarge` for a key longer than
    /// the DHT's message limits allow, `.noServerNodes` when the DHT cannot look (e.g. an
    /// empty routing table: bootstrap first), `.timeout` and `.cancelled`.
    public func closestNodes(
        to key: [UInt8], protocol protocolID: String, count: Int, excluding: Set<PeerID>, deadline: Deadline
    ) async throws(PointSubError) -> [PeerID] {
        let maxKey = dht.configuration.limits.maxKeySize
        guard key.count <= maxKey else {
            throw PointSubError(.messageTooLarge, "a key of \(key.count) bytes exceeds the DHT's \(maxKey)")
        }
        guard count > 0 else { return [] }
        let cached = cache.withLockedValue {
            $0.answer(protocol: protocolID, key: key, count: count, excluding: excluding, now: .now)
        }
        switch cached {
        case .nodes(let nodes): return nodes
        case .none: return []
        case .miss: break
        }
        let serving = try await lookUp(key, protocol: protocolID, deadline: deadline)
        return Array(serving.lazy.filter { !excluding.contains($0) }.prefix(count))
    }

    /// See `ClosestNodeSource.nodeFailed`: dropped from the cached lookups.
    public func nodeFailed(_ peer: PeerID, protocol protocolID: String) {
        cache.withLockedValue { $0.drop(peer, protocol: protocolID) }
    }

    /// Forgets every cached lookup.
    public func clearCache() {
        cache.withLockedValue { $0 = ClosestNodeCache(ttl: configuration.cacheTTL, maxEntries: configuration.maxCachedLookups) }
    }

    /// A DHT lookup of `key`, the serving check of what it found, into the cache; returns the
    /// serving peers nearest first.
    private func lookUp(_ key: [UInt8], protocol protocolID: String, deadline: Deadline) async throws(PointSubError)
        -> [PeerID]
    {
        lookups.withLockedValue { $0 += 1 }
        let dht = self.dht
        let closest: [PeerID]
        do {
            closest = try await withDeadline(
                deadline, on: host.eventLoopGroup.next(),
                onTimeout: {
                    PointSubError(.timeout(requestSent: false), "the DHT lookup for nodes of \(protocolID) took too long")
                }
            ) {
                try await dht.closestPeers(to: key)
            }
        } catch let error as PointSubError {
            throw error
        } catch is CancellationError {
            throw PointSubError(.cancelled, "the send was cancelled")
        } catch {
            throw PointSubError(.noServerNodes, "the DHT lookup for nodes of \(protocolID) failed", cause: error)
        }
        // Nearest first (the probes go to the nearest unknown peers: they decide the answer).
        let local = host.peerID
        let target = KadKey(hashing: key)
        let peers = closest.filter { $0 != local }.sorted {
            KadKey(peer: $0).distance(to: target) < KadKey(peer: $1).distance(to: target)
        }
        let standing = await serving(peers, protocol: protocolID, deadline: deadline)
        guard !Task.isCancelled else { throw PointSubError(.cancelled, "the send was cancelled") }
        // Fewer than k answers: the lookup saw every DHT server there is.
        let wholeNetwork = closest.count < dht.configuration.k
        return cache.withLockedValue {
            $0.store(
                protocol: protocolID, key: key, closest: peers.map { ($0, standing[$0] ?? .unknown) },
                wholeNetwork: wholeNetwork, now: .now)
        }
    }

    /// Each peer's standing for `protocolID` from the peerstore; peers it knows no protocols of
    /// are identified (the first `maxProbes` of them — `peers` is nearest first — at once,
    /// bounded in time); the rest stay unknown (the cache's radius ends before the first of them).
    private func serving(
        _ peers: [PeerID], protocol protocolID: String, deadline: Deadline
    ) async -> [PeerID: ClosestNodeCache.Serving] {
        let host = self.host
        var standing: [PeerID: ClosestNodeCache.Serving] = [:]
        var unknown: [PeerID] = []
        for peer in peers {
            let protocols = host.peerstore.protocols(for: peer)
            if protocols.isEmpty {
                unknown.append(peer)
            } else {
                standing[peer] = protocols.contains(protocolID) ? .yes : .no
            }
        }
        guard !unknown.isEmpty, configuration.maxProbes > 0 else { return standing }
        let probeDeadline = Deadline.after(configuration.probeTimeout).earlier(deadline)
        let probed = Array(unknown.prefix(configuration.maxProbes))
        await withTaskGroup(of: (PeerID, ClosestNodeCache.Serving).self) { group in
            for peer in probed {
                group.addTask {
                    let protocols = try? await withDeadline(
                        probeDeadline, on: host.eventLoopGroup.next(),
                        onTimeout: { HostError(.timeout, "identifying \(peer) took too long") }
                    ) {
                        let connection = try await host.connect(to: peer)
                        return try await IdentifyService.identify(connection, host: host).protocols
                    }
                    return (peer, protocols?.contains(protocolID) == true ? .yes : .no)
                }
            }
            for await (peer, result) in group { standing[peer] = result }
        }
        return standing
    }
}
