import Basics
import Identity
import LibP2P
import Multiformats
import NIOCore

extension KademliaDHT {
    /// Sends one request to `peer` on a new stream and reads its response, before `deadline`
    /// (nil: `requestTimeout` from now); ADD_PROVIDER has none (`message` itself is returned once
    /// sent). Throws `KademliaError` for a bad answer, the host's errors otherwise (`HostError`
    /// `.timeout` when the deadline passes).
    public func request(_ message: KadMessage, to peer: PeerID, deadline: Deadline? = nil) async throws -> KadMessage {
        let host = try requireHost()
        let protocolID = configuration.protocolID
        let limits = configuration.limits
        return try await withDeadline(
            deadline ?? .after(configuration.requestTimeout), on: host.eventLoopGroup.next(),
            onTimeout: { HostError(.timeout, "\(peer) did not answer a \(message.type) request in time") }
        ) {
            let stream = try await host.newStream(to: peer, protocols: [protocolID])
            do {
                try await stream.writeLengthPrefixed(message.encoded())
                // ADD_PROVIDER has no response (go-libp2p-kad-dht sends it with SendMessage and
                // its handler answers nothing): waiting for one would only time out. The
                // message itself is returned once it is written.
                if message.type == .addProvider {
                    await stream.close()
                    return message
                }
                guard let bytes = try await stream.readLengthPrefixed(maxLength: limits.maxMessageSize) else {
                    throw KademliaError(.malformedMessage, "\(peer) closed the stream without answering")
                }
                let response = try KadMessage(decoding: Array(bytes.readableBytesView), limits: limits)
                guard response.type == message.type else {
                    throw KademliaError(.malformedMessage, "\(peer) answered a \(message.type) request with \(response.type)")
                }
                await stream.close()
                return response
            } catch {
                stream.reset()
                throw error
            }
        }
    }

    /// An iterative lookup of `key` (its SHA-256 is the target), sending `message` (with the key)
    /// to the closest peers α at a time. `onResponse` sees every answer and returns true to stop
    /// early (a value or enough providers found). Returns the finished lookup.
    func lookup(
        _ message: KadMessage, key: [UInt8], onResponse: (PeerID, KadMessage) -> Bool = { _, _ in false }
    ) async throws -> KadLookup {
        let host = try requireHost()
        let target = KadKey(hashing: key)
        let seeds = state.withLockedValue { $0.table?.closest(to: target, count: configuration.k) ?? [] }
        guard !seeds.isEmpty else { throw KademliaError(.notFound, "the routing table is empty: bootstrap first") }
        var lookup = KadLookup(target: target, local: host.peerID, seeds: seeds, k: configuration.k, alpha: configuration.alpha)
        var query = message
        query.key = key
        let deadline = Deadline.after(configuration.lookupTimeout)
        let sent = query
        try await withThrowingTaskGroup(of: (PeerID, KadMessage?).self) { group in
            var inFlight = 0
            while !deadline.hasPassed {
                for peer in lookup.next() {
                    inFlight += 1
                    // Each request has its own time limit, and none outlives the lookup's.
                    let requestDeadline = Deadline.after(configuration.requestTimeout).earlier(deadline)
                    group.addTask { (peer, try? await self.request(sent, to: peer, deadline: requestDeadline)) }
                }
                guard inFlight > 0, let (peer, response) = try await group.next() else { break }
                inFlight -= 1
                guard let response else {
                    lookup.failed(peer)
                    failed(peer)
                    continue
                }
                sawServer(peer)
                var closer: [PeerID] = []
                for entry in response.closerPeers {
                    guard let id = try? PeerID(bytes: entry.id), id != host.peerID else { continue }
                    if !entry.addresses.isEmpty { host.peerstore.addAddresses(entry.addresses, for: id, ttl: .temporary) }
                    closer.append(id)
                }
                lookup.received(from: peer, closer: closer)
                if onResponse(peer, response) { break }
            }
            group.cancelAll()
        }
        return lookup
    }

    /// The k peers closest to `key` that answered (the network's view, not just our table).
    public func closestPeers(to key: [UInt8]) async throws -> [PeerID] {
        try await lookup(KadMessage(type: .findNode), key: key).closestSucceeded
    }

    /// The addresses of `peer`: from the peerstore when known, else from a lookup of its ID (stops
    /// at the first answer that lists it with addresses). Throws `.notFound` when nobody knows it.
    public func findPeer(_ peer: PeerID) async throws -> [Multiaddr] {
        let host = try requireHost()
        let known = host.peerstore.addresses(for: peer)
        if !known.isEmpty { return known }
        return try await tracePeer(peer).addresses
    }

    /// What a network lookup of a peer took.
    public struct PeerLookup: Sendable {
        /// The addresses the network gave.
        public var addresses: [Multiaddr]
        /// Requests sent (FIND_NODE messages).
        public var queries: Int
        /// Rounds of answers on the way: 1 when one of our own table's peers knew the target.
        public var hops: Int
    }

    /// Looks `peer` up in the network (not the peerstore), stopping at the first answer that
    /// lists it with addresses; says how many requests and hops it took. Throws `.notFound`.
    public func tracePeer(_ peer: PeerID) async throws -> PeerLookup {
        var found: [Multiaddr] = []
        var responder: PeerID?
        let lookup = try await lookup(KadMessage(type: .findNode), key: peer.bytes) { from, response in
            guard let entry = response.closerPeers.first(where: { $0.id == peer.bytes }), !entry.addresses.isEmpty
            else { return false }
            found = entry.addresses
            responder = from
            return true
        }
        guard !found.isEmpty, let responder else { throw KademliaError(.notFound, "no peer knows \(peer)") }
        return PeerLookup(addresses: found, queries: lookup.queriesSent, hops: (lookup.hops(to: responder) ?? 0) + 1)
    }

    /// Announces that we provide `key` (a CID's multihash) to the k closest peers, keeps the
    /// record locally, and remembers the key: it is announced again every
    /// `providerRepublishInterval` until `stopProviding(key)` or `stop()`. Returns how many
    /// peers took it. Throws `.limitExceeded` beyond `maxProvidedKeys` keys.
    @discardableResult
    public func provide(_ key: [UInt8]) async throws -> Int {
        try withState { s throws(KademliaError) in
            guard s.provided.contains(key) || s.provided.count < configuration.maxProvidedKeys else {
                throw KademliaError(.limitExceeded, "we provide \(configuration.maxProvidedKeys) keys already")
            }
            s.provided.insert(key)
        }
        return try await announce(key)
    }

    /// Stops announcing `key` again (the records peers hold expire after `providerTTL`) and
    /// drops our own record of it.
    public func stopProviding(_ key: [UInt8]) {
        let me = host?.peerID.bytes
        state.withLockedValue { s in
            s.provided.remove(key)
            if let me { s.providers.remove(me, for: key) }
        }
    }

    /// The keys we provide (and republish).
    public var providedKeys: [[UInt8]] { state.withLockedValue { Array($0.provided) } }

    /// One announcement of `key`: our own store, then ADD_PROVIDER to the k closest peers.
    func announce(_ key: [UInt8]) async throws -> Int {
        let host = try requireHost()
        try withState { s throws(KademliaError) in try s.providers.add(host.peerID.bytes, for: key, now: .now) }
        let closest = try await closestPeers(to: key)
        // What we advertise (listen, confirmed observed and circuit addresses), as go puts its
        // host's addresses in provider records.
        let me = KadMessage.Peer(id: host.peerID.bytes, addresses: host.advertisedAddresses)
        let announcement = KadMessage(type: .addProvider, key: key, providerPeers: [me])
        return await withTaskGroup(of: Bool.self) { group in
            for peer in closest {
                group.addTask { (try? await self.request(announcement, to: peer)) != nil }
            }
            var count = 0
            for await ok in group where ok { count += 1 }
            return count
        }
    }

    /// Announces every provided key again (the republish timer; go-libp2p-kad-dht's
    /// reprovider does the same every 22 h). Keys go one after another, so a large set costs
    /// one lookup at a time. Returns how many announcements peers took.
    @discardableResult
    public func republishProviders() async -> Int {
        let keys = providedKeys
        var took = 0
        for key in keys {
            guard !Task.isCancelled else { break }
            // A key dropped meanwhile is not announced again.
            guard state.withLockedValue({ $0.provided.contains(key) }) else { continue }
            took += (try? await announce(key)) ?? 0
        }
        host?.configuration.logger.debug(
            "DHT provider records republished", metadata: ["keys": "\(keys.count)", "announcements": "\(took)"])
        emit(.republished(keys: keys.count, announcements: took))
        return took
    }

    /// Up to `count` providers of `key` with their addresses: our own store first, then a lookup
    /// that stops once enough are found.
    public func findProviders(_ key: [UInt8], count: Int = 20) async throws -> [(peer: PeerID, addresses: [Multiaddr])] {
        let host = try requireHost()
        var found: [PeerID: [Multiaddr]] = [:]
        var order: [PeerID] = []
        func note(_ peer: PeerID, _ addresses: [Multiaddr]) {
            if found[peer] == nil { order.append(peer) }
            found[peer, default: []] += addresses.filter { !(found[peer] ?? []).contains($0) }
        }
        for id in state.withLockedValue({ $0.providers.providers(of: key, now: .now) }) {
            guard let peer = try? PeerID(bytes: id) else { continue }
            note(peer, peer == host.peerID ? host.advertisedAddresses : host.peerstore.addresses(for: peer))
        }
        if order.count < count {
            _ = try await lookup(KadMessage(type: .getProviders), key: key) { _, response in
                for entry in response.providerPeers {
                    guard let peer = try? PeerID(bytes: entry.id) else { continue }
                    if !entry.addresses.isEmpty, peer != host.peerID {
                        host.peerstore.addAddresses(entry.addresses, for: peer, ttl: .temporary)
                    }
                    note(peer, entry.addresses)
                }
                return order.count >= count
            }
        }
        return order.prefix(count).map { ($0, found[$0] ?? []) }
    }

    /// Stores `value` under `key` (validated by its namespace's validator) at the k closest peers
    /// and locally. Throws `.invalidRecord` when it does not validate or when we hold a newer
    /// record for the key (the validator's `select` prefers ours). Returns how many peers took it.
    @discardableResult
    public func putValue(_ value: [UInt8], for key: [UInt8]) async throws -> Int {
        let record = KadMessage.Record(key: key, value: value)
        try store(record, now: .now)
        let closest = try await closestPeers(to: key)
        let message = KadMessage(type: .putValue, key: key, record: record)
        return await withTaskGroup(of: Bool.self) { group in
            for peer in closest {
                group.addTask { (try? await self.request(message, to: peer)) != nil }
            }
            var count = 0
            for await ok in group where ok { count += 1 }
            return count
        }
    }

    /// The best valid value under `key`: ours if we hold a valid one, else from a lookup (stops
    /// at the first valid record). Throws `.notFound`.
    public func getValue(_ key: [UInt8]) async throws -> [UInt8] {
        if let local = storedRecord(key, now: .now) { return local.value }
        var values: [[UInt8]] = []
        _ = try await lookup(KadMessage(type: .getValue), key: key) { [self] _, response in
            guard let record = response.record, record.key == key, (try? validate(record)) != nil else { return false }
            values.append(record.value)
            return true
        }
        guard !values.isEmpty, let namespace = namespace(of: key), let validator = validators[namespace] else {
            throw KademliaError(.notFound, "no valid record found")
        }
        return values[validator.select(key: key, values: values)]
    }
}
