import Basics
import Identity
import LibP2P
import Multiformats
import NIOConcurrencyHelpers
import NIOCore

/// A Kademlia DHT node (libp2p kad-dht spec) as a host service: peer routing (`findPeer`,
/// `closestPeers`), provider records (`provide`, `findProviders`) and values (`putValue`,
/// `getValue`, checked by a `RecordValidator` per namespace).
///
/// In server mode it answers the protocol (`/ipfs/kad/1.0.0` unless configured otherwise, e.g.
/// `/<network>/kad/1.0.0`) and identify advertises it; in client mode it only asks. The mode
/// can change at run time (`setMode`). Peers enter the routing table when they answer a query
/// or when identify says they serve the protocol, and leave it when identify says they stopped
/// (go-libp2p-kad-dht keeps only DHT servers in its table, and so do we).
///
/// What we provide is announced again every `providerRepublishInterval` (go: 22 h; the records
/// live 48 h) until `stopProviding` or `stop`.
///
/// What a peer can make us hold is bounded: the message size and lists (`KadMessage.Limits`),
/// requests per peer per second, records, provider keys and providers per key, and the stream's
/// idle time.
public final class KademliaDHT: HostService, PeerRouting, Sendable {
    /// Whether this node answers the protocol.
    public enum Mode: Sendable, Hashable {
        /// Ask only; do not advertise the protocol.
        case client
        /// Ask and answer.
        case server
    }

    /// Settings; the defaults are go-libp2p-kad-dht's where it has them.
    public struct Configuration: Sendable {
        /// The protocol (`/ipfs/kad/1.0.0`; a network of its own uses `/<name>/kad/1.0.0`).
        public var protocolID = "/ipfs/kad/1.0.0"
        /// Client or server.
        public var mode = Mode.server
        /// Bucket size and lookup width (k).
        public var k = 20
        /// Concurrent queries per lookup (α).
        public var alpha = 3
        /// One request to one peer: connect, open, send, answer.
        public var requestTimeout: Duration = .seconds(10)
        /// A whole lookup.
        public var lookupTimeout: Duration = .seconds(60)
        /// An inbound stream with no request for this long is closed (go: 1 minute).
        public var streamIdleTimeout: Duration = .seconds(60)
        /// Decoding limits of every message.
        public var limits = KadMessage.Limits()
        /// Records stored for others, at most.
        public var maxRecords = 4096
        /// How long a stored record lives (go: 48 h).
        public var recordTTL: Duration = .seconds(48 * 3600)
        /// Keys with provider records, at most.
        public var maxProviderKeys = 16_384
        /// Providers kept per key.
        public var maxProvidersPerKey = 20
        /// How long a provider record lives (go: 48 h).
        public var providerTTL: Duration = .seconds(48 * 3600)
        /// Requests one peer may make per second (a burst of twice this is allowed).
        public var requestsPerPeerPerSecond = 50
        /// Peers dialed by `bootstrap()`, with `/p2p/` parts.
        public var bootstrapPeers: [Multiaddr] = []
        /// How often the table is refreshed (a self lookup and random keys in the emptiest
        /// buckets); nil: only when `bootstrap()` is called.
        public var refreshInterval: Duration? = .seconds(600)
        /// Record validators by namespace; `/pk` and `/ipns` are always there (as in
        /// go-libp2p-kad-dht); one given here for the same namespace replaces the default.
        public var validators: [any RecordValidator] = []
        /// How often the keys we provide are announced again (go: 22 h, well within the 48 h
        /// the records live); nil: only when `provide` is called.
        public var providerRepublishInterval: Duration? = .seconds(22 * 3600)
        /// Keys we provide and republish, at most (`provide` beyond it throws `.limitExceeded`).
        public var maxProvidedKeys = 65_536

        /// The defaults.
        public init() {}
    }

    struct State {
        var host: P2PHost?
        var table: RoutingTable?
        var records: RecordStore
        var providers: ProviderStore
        /// Token buckets of the peers that sent requests (dropped when they disconnect).
        var rates: [PeerID: TokenBucket] = [:]
        /// Liveness checks in progress (a full bucket's oldest entry), so one runs per peer.
        var checking: Set<PeerID> = []
        var background: [Task<Void, Never>] = []
        /// The mode now (`configuration.mode` until `setMode`).
        var mode: Mode
        /// Inbound DHT streams being served (go keeps one open per peer and reuses it), so that
        /// switching to client mode can end them.
        var serving: [ObjectIdentifier: P2PStream] = [:]
        /// The keys we provide (announced again every `providerRepublishInterval`).
        var provided: Set<[UInt8]> = []
        /// Subscribers to `events()`.
        /// `stop()` was called: new `events()` streams end at once.
        var stopped = false
    }

    /// What the DHT reports to `events()` subscribers.
    public enum Event: Sendable, Hashable {
        /// The mode changed (by `setMode`).
        case modeChanged(Mode)
        /// The provided keys were announced again: how many keys, and how many announcements
        /// peers took.
        case republished(keys: Int, announcements: Int)
    }

    /// The settings.
    public let configuration: Configuration
    let validators: [String: any RecordValidator]
    let state: NIOLockedValueBox<State>
    private let eventSubscribers = EventBroadcaster<Event>(bufferingNewest: 256)

    /// A DHT node with `configuration`; add it to a host's `services`.
    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        let state = NIOLockedValueBox(
            State(
                records: RecordStore(maxRecords: configuration.maxRecords, ttl: configuration.recordTTL),
                providers: ProviderStore(
                    maxKeys: configuration.maxProviderKeys, maxProvidersPerKey: configuration.maxProvidersPerKey,
                    ttl: configuration.providerTTL),
                mode: configuration.mode))
        self.state = state
        // go's ipns.Validator asks the peerstore for keys a name does not inline (RSA).
        let ipns = IPNSValidator(keyBook: { peer in state.withLockedValue { $0.host }?.peerstore.publicKey(for: peer) })
        var validators: [String: any RecordValidator] = ["pk": PublicKeyValidator(), "ipns": ipns]
        for validator in configuration.validators { validators[validator.namespace] = validator }
        self.validators = validators
    }

    /// Registers the protocol (server mode), follows identify to fill the routing table, and
    /// starts the periodic refresh.
    public func attach(to host: P2PHost) async throws {
        state.withLockedValue { s in
            s.host = host
            s.table = RoutingTable(local: host.peerID, bucketSize: configuration.k)
        }
        host.addPeerRouting(self)
        if mode == .server { try handleProtocol(on: host) }
        let events = host.events()
        let protocolID = configuration.protocolID
        let follower = Task { [weak self] in
            for await event in events {
                guard let self else { return }
                switch event {
                case .peerIdentified(let peer):
                    // Also after an identify push: a peer that switched to client mode leaves.
                    if host.peerstore.protocols(for: peer).contains(protocolID) {
                        self.sawServer(peer)
                    } else {
                        self.failed(peer)
                    }
                case .peerDisconnected(let peer):
                    _ = self.state.withLockedValue { $0.rates.removeValue(forKey: peer) }
                default:
                    break
                }
            }
        }
        var tasks = [follower]
        if let interval = configuration.refreshInterval {
            tasks.append(Task { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    guard let self, !Task.isCancelled else { return }
                    await self.refresh()
                }
            })
        }
        if let interval = configuration.providerRepublishInterval {
            tasks.append(Task { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    guard let self, !Task.isCancelled else { return }
                    await self.republishProviders()
                }
            })
        }
        state.withLockedValue { $0.background += tasks }
    }

    private func handleProtocol(on host: P2PHost) throws {
        // As go-libp2p-kad-dht: no DHT traffic over limited (relayed) connections.
        try host.setStreamHandler(configuration.protocolID, allowOnLimitedConnections: false) { [weak self] stream in
            guard let self else { return }
            let id = ObjectIdentifier(stream)
            self.state.withLockedValue { $0.serving[id] = stream }
            defer { _ = self.state.withLockedValue { $0.serving.removeValue(forKey: id) } }
            try await self.serve(stream)
        }
    }

    /// The mode now.
    public var mode: Mode { state.withLockedValue { $0.mode } }

    /// Switches between client and server at run time (the hook NAT status drives: a node
    /// others can reach serves). Server: the protocol is handled and identify advertises it
    /// (the host pushes the new protocol list to connected peers, so their tables take us);
    /// client: no longer handled nor advertised (peers drop us from their tables), lookups go on.
    /// Streams being served finish. Before `attach`, sets the mode `attach` starts in.
    public func setMode(_ mode: Mode) throws {
        let (old, host) = state.withLockedValue { s -> (Mode, P2PHost?) in
            defer { s.mode = mode }
            return (s.mode, s.host)
        }
        guard old != mode else { return }
        if let host {
            switch mode {
            case .server:
                do {
                    try handleProtocol(on: host)
                } catch {
                    state.withLockedValue { $0.mode = old }
                    throw error
                }
            case .client:
                host.removeStreamHandler(configuration.protocolID)
                // go reuses an open DHT stream for later queries: end the ones we serve, or a
                // client would go on answering on them (and go would keep it in its table).
                let open = state.withLockedValue { s in
                    defer { s.serving = [:] }
                    return Array(s.serving.values)
                }
                open.forEach { $0.reset() }
            }
            host.configuration.logger.info(
                "DHT mode changed", metadata: ["mode": "\(mode)", "protocol": "\(configuration.protocolID)"])
        }
        emit(.modeChanged(mode))
    }

    /// A new subscription to the DHT's events (holds the newest 256 if not consumed); ends when
    /// the DHT stops (at once if it has).
    public func events() -> AsyncStream<Event> {
        eventSubscribers.subscribe()
    }

    func emit(_ event: Event) {
        eventSubscribers.yield(event)
    }

    /// Stops the background tasks, republishing among them (the host's shutdown ends the
    /// streams), and ends the `events()` streams.
    public func stop() {
        let tasks = state.withLockedValue { s in
            defer {
                s.background = []
                s.stopped = true
            }
            return s.background
        }
        for task in tasks { task.cancel() }
        eventSubscribers.finish()
    }

    var host: P2PHost? { state.withLockedValue { $0.host } }

    /// `body` under the state's lock, keeping its typed error (the lock's API rethrows untyped).
    func withState<T>(_ body: (inout State) throws(KademliaError) -> T) throws(KademliaError) -> T {
        let result = state.withLockedValue { s -> Result<T, KademliaError> in
            do throws(KademliaError) {
                return .success(try body(&s))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    func requireHost() throws(KademliaError) -> P2PHost {
        guard let host else { throw KademliaError(.notFound, "the DHT is not attached to a host") }
        return host
    }

    /// What the stores hold now: records kept for others (and ours), keys with provider records.
    public var storeSizes: (records: Int, providerKeys: Int) {
        state.withLockedValue { ($0.records.count, $0.providers.keyCount) }
    }

    /// The peers in the routing table.
    public var routingTablePeers: [PeerID] { state.withLockedValue { $0.table?.peers ?? [] } }

    /// A peer that serves the protocol answered or was identified: into the table; a full
    /// bucket gets its oldest entry checked, which is replaced if it does not answer.
    func sawServer(_ peer: PeerID) {
        let result = state.withLockedValue { $0.table?.add(peer, now: .now) }
        guard case .bucketFull(let oldest)? = result else { return }
        let start = state.withLockedValue { $0.checking.insert(oldest).inserted }
        guard start, let host else { return }
        host.spawn { [weak self] in
            guard let self else { return }
            let alive = (try? await self.request(KadMessage(type: .ping), to: oldest)) != nil
            self.state.withLockedValue { s in
                s.checking.remove(oldest)
                if alive { s.table?.add(oldest, now: .now) } else { s.table?.remove(oldest) }
            }
        }
    }

    /// A peer failed a query: out of the table (its bucket's freshest replacement moves in).
    func failed(_ peer: PeerID) {
        _ = state.withLockedValue { $0.table?.remove(peer) }
    }

    /// Dials the bootstrap peers, then looks ourselves up (which fills the table with the peers
    /// around us) and refreshes the buckets. Returns how many bootstrap peers answered.
    @discardableResult
    public func bootstrap() async -> Int {
        guard let host else { return 0 }
        var answered = 0
        await withTaskGroup(of: PeerID?.self) { group in
            for address in configuration.bootstrapPeers {
                group.addTask {
                    guard let connection = try? await host.connect(to: address) else { return nil }
                    return connection.remotePeer
                }
            }
            for await peer in group {
                guard let peer else { continue }
                // Asked directly rather than waiting for identify: a bootstrap peer is a server.
                if (try? await request(KadMessage(type: .findNode, key: host.peerID.bytes), to: peer)) != nil {
                    answered += 1
                    sawServer(peer)
                }
            }
        }
        await refresh()
        return answered
    }

    /// A self lookup, then a lookup of a random key in each of the emptiest buckets near us.
    public func refresh() async {
        guard let host else { return }
        _ = try? await closestPeers(to: host.peerID.bytes)
        let buckets = state.withLockedValue { s -> [Int] in s.table?.bucketsToRefresh ?? [] }
        // The far buckets fill themselves; the few near the end of the filled ones need help.
        for index in buckets.suffix(4) {
            guard !Task.isCancelled else { return }
            guard let key = state.withLockedValue({ $0.table?.randomQueryKey(inBucket: index) }) else { continue }
            _ = try? await closestPeers(to: key)
        }
    }
}
