/// Records this node stores for others (PUT_VALUE) and its own, with hard limits: how many keys,
/// and each value's size (checked by the message decoder). Expired records are dropped on access
/// and by `expire`.
public struct RecordStore: Sendable {
    /// A stored record and when it arrived.
    public struct Entry: Sendable, Hashable {
        /// The record.
        public var record: KadMessage.Record
        /// When it was stored.
        public var received: ContinuousClock.Instant
    }

    /// Keys kept at most; a PUT_VALUE for a new key beyond this is refused.
    public let maxRecords: Int
    /// How long a record is kept (go-libp2p-kad-dht: 48 h).
    public let ttl: Duration
    private var entries: [[UInt8]: Entry] = [:]

    /// An empty store.
    public init(maxRecords: Int, ttl: Duration) {
        self.maxRecords = maxRecords
        self.ttl = ttl
    }

    /// The number of records held.
    public var count: Int { entries.count }

    /// The record under `key`, unless it expired.
    public mutating func get(_ key: [UInt8], now: ContinuousClock.Instant) -> KadMessage.Record? {
        guard let entry = entries[key] else { return nil }
        guard now - entry.received < ttl else {
            entries[key] = nil
            return nil
        }
        return entry.record
    }

    /// Stores `record` (replacing the one under its key). Throws `.limitExceeded` for a new key
    /// when the store is full.
    public mutating func put(_ record: KadMessage.Record, now: ContinuousClock.Instant) throws(KademliaError) {
        if entries[record.key] == nil, entries.count >= maxRecords {
            expire(now: now)
            guard entries.count < maxRecords else {
                throw KademliaError(.limitExceeded, "the record store holds its limit of \(maxRecords) keys")
            }
        }
        entries[record.key] = Entry(record: record, received: now)
    }

    /// Drops the record under `key`.
    public mutating func remove(_ key: [UInt8]) {
        entries[key] = nil
    }

    /// Drops expired records.
    public mutating func expire(now: ContinuousClock.Instant) {
        entries = entries.filter { now - $0.value.received < ttl }
    }
}

/// Provider records: who said it provides which key, with expiry and hard limits (keys, and
/// providers per key — a flood from one key or one peer cannot grow the store without bound).
public struct ProviderStore: Sendable {
    /// A provider of a key.
    public struct Provider: Sendable, Hashable {
        /// The provider's peer ID bytes.
        public var peer: [UInt8]
        /// When the record expires.
        public var expires: ContinuousClock.Instant
    }

    /// Keys kept at most.
    public let maxKeys: Int
    /// Providers kept per key (the newest win).
    public let maxProvidersPerKey: Int
    /// How long a provider record lasts (go-libp2p-kad-dht: 48 h; providers republish every 22 h).
    public let ttl: Duration
    private var providers: [[UInt8]: [Provider]] = [:]

    /// An empty store.
    public init(maxKeys: Int, maxProvidersPerKey: Int, ttl: Duration) {
        self.maxKeys = maxKeys
        self.maxProvidersPerKey = maxProvidersPerKey
        self.ttl = ttl
    }

    /// The number of keys with providers.
    public var keyCount: Int { providers.count }

    /// Records that `peer` provides `key` (refreshing its expiry). Throws `.limitExceeded` for a new
    /// key when the store is full.
    public mutating func add(_ peer: [UInt8], for key: [UInt8], now: ContinuousClock.Instant) throws(KademliaError) {
        if providers[key] == nil, providers.count >= maxKeys {
            expire(now: now)
            guard providers.count < maxKeys else {
                throw KademliaError(.limitExceeded, "the provider store holds its limit of \(maxKeys) keys")
            }
        }
        var list = providers[key, default: []].filter { $0.peer != peer && $0.expires > now }
        list.append(Provider(peer: peer, expires: now + ttl))
        if list.count > maxProvidersPerKey { list.removeFirst(list.count - maxProvidersPerKey) }
        providers[key] = list
    }

    /// Drops `peer`'s record for `key`.
    public mutating func remove(_ peer: [UInt8], for key: [UInt8]) {
        guard let list = providers[key] else { return }
        let kept = list.filter { $0.peer != peer }
        providers[key] = kept.isEmpty ? nil : kept
    }

    /// The unexpired providers of `key`, newest last.
    public func providers(of key: [UInt8], now: ContinuousClock.Instant) -> [[UInt8]] {
        (providers[key] ?? []).filter { $0.expires > now }.map(\.peer)
    }

    /// Drops expired records.
    public mutating func expire(now: ContinuousClock.Instant) {
        var kept: [[UInt8]: [Provider]] = [:]
        for (key, list) in providers {
            let live = list.filter { $0.expires > now }
            if !live.isEmpty { kept[key] = live }
        }
        providers = kept
    }
}
