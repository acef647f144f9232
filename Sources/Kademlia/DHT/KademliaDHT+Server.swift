import Basics
import Identity
import LibP2P
import Multiformats
import NIOCore

extension KademliaDHT {
    /// Answers the requests on one inbound stream until the peer closes it, breaks a limit, or
    /// sends nothing for `streamIdleTimeout`. Messages are `uvarint(length) ‖ protobuf`, one
    /// response per request, several per stream (go reuses a stream for many requests).
    func serve(_ stream: P2PStream) async throws {
        let peer = stream.remotePeer
        let limits = configuration.limits
        while true {
            let bytes = try await withDeadline(
                .after(configuration.streamIdleTimeout), on: stream.eventLoop,
                onTimeout: { KademliaError(.limitExceeded, "no request for \(self.configuration.streamIdleTimeout)") }
            ) {
                try await stream.readLengthPrefixed(maxLength: limits.maxMessageSize)
            }
            guard let bytes else { return }
            guard admit(peer) else {
                throw KademliaError(.limitExceeded, "\(peer) sends more than \(configuration.requestsPerPeerPerSecond) requests a second")
            }
            let request = try KadMessage(decoding: Array(bytes.readableBytesView), limits: limits)
            // ADD_PROVIDER gets no response: go-libp2p-kad-dht neither sends nor reads one, and
            // it reuses the stream, so an answer would be read as the response to its next request.
            guard let response = try handle(request, from: peer) else { continue }
            try await stream.writeLengthPrefixed(response.encoded())
        }
    }

    /// Takes one request token of `peer`'s bucket (refilled at `requestsPerPeerPerSecond`, burst 2×).
    private func admit(_ peer: PeerID) -> Bool {
        let rate = Double(configuration.requestsPerPeerPerSecond)
        let now = ContinuousClock.now
        return state.withLockedValue { s in
            var bucket = s.rates[peer] ?? TokenBucket(burst: 2 * rate, now: now)
            defer { s.rates[peer] = bucket }
            return bucket.take(rate: rate, burst: 2 * rate, now: now)
        }
    }

    /// The answer to one request (the spec: a response has the request's type); nil for
    /// ADD_PROVIDER, which has none.
    func handle(_ request: KadMessage, from peer: PeerID) throws(KademliaError) -> KadMessage? {
        let now = ContinuousClock.now
        switch request.type {
        case .ping:
            return KadMessage(type: .ping)
        case .findNode:
            var closer = closerPeers(to: request.key, excluding: peer)
            // go answers a lookup of its own ID with itself.
            if let host, request.key == host.peerID.bytes {
                closer.insert(
                    KadMessage.Peer(id: host.peerID.bytes, addresses: host.advertisedAddresses, connection: .connected), at: 0)
            }
            return KadMessage(type: .findNode, key: request.key, closerPeers: closer)
        case .getValue:
            guard !request.key.isEmpty else { throw KademliaError(.malformedMessage, "GET_VALUE without a key") }
            let record = storedRecord(request.key, now: now)
            return KadMessage(
                type: .getValue, key: request.key, record: record, closerPeers: closerPeers(to: request.key, excluding: peer))
        case .putValue:
            guard let record = request.record, record.key == request.key, !record.key.isEmpty else {
                throw KademliaError(.malformedMessage, "PUT_VALUE without a record for its key")
            }
            try store(record, now: now)
            // go echoes the request.
            return request
        case .addProvider:
            guard !request.key.isEmpty else { throw KademliaError(.malformedMessage, "ADD_PROVIDER without a key") }
            // Only a peer's announcement of itself counts (go ignores the others).
            for provider in request.providerPeers where provider.id == peer.bytes {
                try withState { s throws(KademliaError) in
                    try s.providers.add(provider.id, for: request.key, now: now)
                }
                if let host, !provider.addresses.isEmpty {
                    host.peerstore.addAddresses(Array(provider.addresses.prefix(configuration.limits.maxAddressesPerPeer)), for: peer, ttl: .temporary)
                }
            }
            return nil
        case .getProviders:
            guard !request.key.isEmpty else { throw KademliaError(.malformedMessage, "GET_PROVIDERS without a key") }
            let ids = state.withLockedValue { $0.providers.providers(of: request.key, now: now) }
            let providers = ids.compactMap { id -> KadMessage.Peer? in
                guard let provider = try? PeerID(bytes: id) else { return nil }
                // Our own record: the addresses we advertise (the peerstore has none of ours).
                if let host, provider == host.peerID {
                    return KadMessage.Peer(id: id, addresses: host.advertisedAddresses, connection: .connected)
                }
                return KadMessage.Peer(id: id, addresses: addresses(of: provider), connection: connectionType(of: provider))
            }
            return KadMessage(
                type: .getProviders, key: request.key, closerPeers: closerPeers(to: request.key, excluding: peer),
                providerPeers: providers)
        }
    }

    /// Checks a record with its namespace's validator; a namespace without one is refused.
    func validate(_ record: KadMessage.Record) throws(KademliaError) {
        guard let namespace = namespace(of: record.key), let validator = validators[namespace] else {
            throw KademliaError(.invalidRecord, "no validator for the record's namespace")
        }
        try validator.validate(key: record.key, value: record.value)
    }

    /// Validates `record` and stores it, unless we hold a valid record for its key that its
    /// validator prefers (go refuses such a PUT_VALUE: "old record"). Throws `.invalidRecord`.
    func store(_ record: KadMessage.Record, now: ContinuousClock.Instant) throws(KademliaError) {
        try validate(record)
        // Drops a stored record that is no longer valid (an IPNS record past its EOL) first.
        _ = storedRecord(record.key, now: now)
        guard let namespace = namespace(of: record.key), let validator = validators[namespace] else { return }
        try withState { s throws(KademliaError) in
            if let current = s.records.get(record.key, now: now), current.value != record.value,
                validator.select(key: record.key, values: [record.value, current.value]) != 0
            {
                throw KademliaError(.invalidRecord, "the record is older than the one stored under its key")
            }
            try s.records.put(record, now: now)
        }
    }

    /// The record stored under `key` if it is still valid (an IPNS record past its EOL is not):
    /// an invalid one is dropped, as go does when it reads its datastore.
    func storedRecord(_ key: [UInt8], now: ContinuousClock.Instant) -> KadMessage.Record? {
        guard let record = state.withLockedValue({ $0.records.get(key, now: now) }) else { return nil }
        guard (try? validate(record)) != nil else {
            state.withLockedValue { s in
                if s.records.get(key, now: now) == record { s.records.remove(key) }
            }
            return nil
        }
        return record
    }

    /// The k peers of our table closest to `key`, with addresses, without `excluded` (the asker).
    func closerPeers(to key: [UInt8], excluding excluded: PeerID?) -> [KadMessage.Peer] {
        let target = KadKey(hashing: key)
        let peers = state.withLockedValue { $0.table?.closest(to: target, count: configuration.k + 1) ?? [] }
        return peers.filter { $0 != excluded }.prefix(configuration.k).compactMap { peer in
            let addresses = addresses(of: peer)
            // A peer without addresses is of no use to the asker (go leaves them out too).
            guard !addresses.isEmpty else { return nil }
            return KadMessage.Peer(id: peer.bytes, addresses: addresses, connection: connectionType(of: peer))
        }
    }

    func addresses(of peer: PeerID) -> [Multiaddr] {
        Array((host?.peerstore.addresses(for: peer) ?? []).prefix(configuration.limits.maxAddressesPerPeer))
    }

    func connectionType(of peer: PeerID) -> KadMessage.ConnectionType {
        (host?.connections(to: peer).isEmpty ?? true) ? .notConnected : .connected
    }
}
