import Basics
import Identity
import Logging
import Multiformats
import Multistream
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Resources
import ServiceLifecycle
import Transport
import Yamux

/// A libp2p host: one identity, listeners on its transports, connections to peers, and stream
/// handlers by protocol.
public final class P2PHost: Sendable {
    public typealias StreamHandler = @Sendable (P2PStream) async throws -> Void

    /// A registered handler: a task per stream (public API), or a call that takes the stream over.
    enum InboundHandler {
        case task(StreamHandler)
        case eventLoop(@Sendable (P2PStream) -> Void)
    }

    public struct Configuration: Sendable, DefaultsConfigurable {
        /// Addresses to listen on when the host starts (e.g. `/ip4/127.0.0.1/tcp/0`).
        public var listenAddresses: [Multiaddr] = []
        public var agentVersion = "pointsub-swift/0.1.0"
        public var protocolVersion = "ipfs/0.1.0"
        /// TCP connect plus the whole upgrade, per address tried.
        public var dialTimeout: Duration = .seconds(15)
        /// Addresses to advertise instead of the listen addresses (e.g. a public address that a
        /// port forward leads to); empty: the listen addresses.
        public var announceAddresses: [Multiaddr] = []
        /// Addresses never advertised (e.g. a private interface), with or without `/p2p/`.
        public var noAnnounceAddresses: [Multiaddr] = []
        /// Distinct observation groups (reporters' source IPs) that must report an observed
        /// address of ours before we advertise it (go-libp2p activates one at 4).
        public var observedAddressActivation = 4
        /// The order in which a peer's addresses are dialed and the delays between starting them
        /// (staggered parallel dials).
        public var dialRanker = DialRanker()
        /// How long an inbound connection has to finish its security and muxer handshakes. Each
        /// remote address may hold only `resources.perAddress.pendingInbound` handshakes at once,
        /// so silent sockets from one source cannot block the others for this long.
        public var handshakeTimeout: Duration = .seconds(10)
        /// How long a new stream has to agree on a protocol.
        public var streamNegotiationTimeout: Duration = .seconds(10)
        /// Resolves `/dnsaddr` addresses before dialing (TXT records of `_dnsaddr.<host>`); by
        /// default the first nameserver of /etc/resolv.conf; nil: such addresses are not dialed.
        public var dnsaddrResolver: DNSAddrResolver? = DNSClient.system().map(DNSAddrResolver.init)
        /// Local IP address outbound TCP connections are bound to (nil: the kernel picks).
        public var dialSourceAddress: String?
        /// Watermarks and idle timeout of the connection manager.
        public var connectionManager: ConnectionManager.Configuration = .defaults
        /// How long `shutdown()` lets open streams finish.
        public var shutdownGracePeriod: Duration = .seconds(5)
        /// The transports, in order of preference: an address is dialed or listened on by the
        /// first that handles it.
        public var transports: [TransportOption] = [.tcp]
        /// The security protocols offered, in order of preference (a dialer proposes them in
        /// this order; a listener accepts any of them). At least one.
        public var security: [SecurityOption] = [.noise]
        public var yamux: YamuxConfiguration = .defaults
        /// Limits of the host's resource manager (connections, handshakes, streams and memory by
        /// scope: system, address, peer, connection, stream, protocol, service). See
        /// ``ResourceManager/Configuration`` for the defaults.
        public var resources: ResourceManager.Configuration = .defaults
        /// Started in this order when the host starts.
        public var services: [any HostService] = []
        public var logger = Logger(label: "pointsub.host", factory: { _ in SwiftLogNoOpLogHandler() })

        public init() {}

    }

    struct State {
        var started = false
        var shuttingDown = false
        var handlers: [String: InboundHandler] = [:]
        var maintenance: Task<Void, Never>?
        var connectionObservers: [@Sendable (Connection) -> Void] = []
        var protocolObservers: [@Sendable () -> Void] = []
        var addressSources: [@Sendable () -> [Multiaddr]] = []
        var addressVerdict: (@Sendable (Multiaddr) -> Bool?)?
        var refusedOnLimited: Set<String> = []
        var lastAdvertised: [Multiaddr] = []
        var handlerTasks: [UInt64: Task<Void, Never>] = [:]
        var routers: [any PeerRouting] = []
        var nextID: UInt64 = 1

        mutating func takeID() -> UInt64 {
            defer { nextID += 1 }
            return nextID
        }
    }

    public let identity: PrivateKey
    public let peerID: PeerID
    public let peerstore = Peerstore()
    /// Where other peers say they see us (identify's observed address), with how many confirm it.
    public let observedAddresses = ObservedAddressBook()
    public let configuration: Configuration
    public let eventLoopGroup: any EventLoopGroup
    /// Accounts for and limits what remote peers make this host hold. Services reserve memory in
    /// their own scope (`resourceManager.serviceScope("pointsub")`).
    public let resourceManager: ResourceManager
    /// Trims connections above the high watermark and closes idle ones; protocols protect and
    /// tag the peers they depend on here.
    public let connectionManager: ConnectionManager
    /// Transports, upgrader, dialing, the connection registry and limits.
    let swarm: Swarm
    let metrics = HostMetrics()
    /// Lines a remote can cause at will (failed stream negotiations), at a bounded rate.
    let remoteLog: RateLimitedLogger
    let state = NIOLockedValueBox(State())
    private let eventSubscribers = EventBroadcaster<HostEvent>(bufferingNewest: 1024)
    var logger: Logger { configuration.logger }

    /// `eventLoopGroup`: where connections run; NIO's shared singleton group by default. The host
    /// never shuts the group down.
    public init(identity: PrivateKey, configuration: Configuration = .defaults, eventLoopGroup: (any EventLoopGroup)? = nil) {
        self.identity = identity
        self.peerID = PeerID(publicKey: identity.publicKey)
        self.configuration = configuration
        // By default every host shares NIO's singleton group (one thread per core): two hosts in one
        // process should not each start their own threads.
        self.eventLoopGroup = eventLoopGroup ?? MultiThreadedEventLoopGroup.singleton
        self.resourceManager = ResourceManager(configuration: configuration.resources, logger: configuration.logger)
        self.connectionManager = ConnectionManager(configuration: configuration.connectionManager)
        self.remoteLog = RateLimitedLogger(configuration.logger)
        self.swarm = Swarm(
            identity: identity, configuration: configuration, eventLoopGroup: self.eventLoopGroup,
            peerstore: peerstore, resourceManager: resourceManager, connectionManager: connectionManager,
            metrics: metrics)
        swarm.setEventSink { [weak self] event in self?.handle(event) }
    }

    // MARK: - Lifecycle

    /// Starts the services and listens on the configured addresses.
    public func start() async throws {
        try await start(maintenance: true)
    }

    /// `maintenance`: start the connection manager's loop as a task of its own (`run()` runs it as
    /// a child task instead).
    private func start(maintenance: Bool) async throws {
        let first = state.withLockedValue { s -> Bool in
            defer { s.started = true }
            return !s.started
        }
        guard first else { return }
        for service in configuration.services { try await service.attach(to: self) }
        for address in configuration.listenAddresses { _ = try await listen(on: address) }
        // What peers learn in their first identify: later changes are compared with it.
        let advertised = advertisedAddresses
        state.withLockedValue { $0.lastAdvertised = advertised }
        if maintenance { startMaintenance() }
    }

    /// Stops listening, lets open streams finish for up to `gracePeriod`, closes every connection,
    /// and ends event subscriptions. Safe to call more than once.
    public func shutdown(gracePeriod: Duration? = nil) async {
        let alreadyDown = state.withLockedValue { s in
            defer { s.shuttingDown = true }
            return s.shuttingDown
        }
        if alreadyDown { return }
        state.withLockedValue { $0.maintenance }?.cancel()
        await swarm.shutdown(grace: gracePeriod ?? configuration.shutdownGracePeriod)
        let tasks = state.withLockedValue { s in
            defer { s.handlerTasks = [:] }
            return Array(s.handlerTasks.values)
        }
        for task in tasks { task.cancel() }
        // Cancelled tasks end quickly now that their connections are closed; wait for them (bounded)
        // so none touches an event loop after the group is gone.
        _ = try? await withDeadline(
            .after(.seconds(2)), on: eventLoopGroup.next(),
            onTimeout: { HostError(.timeout, "waiting for handler tasks timed out") }
        ) {
            for task in tasks { await task.value }
        }
        eventSubscribers.finish()
    }

    // MARK: - Listening

    /// Listens on `address` with the first configured transport that handles it. Returns the bound
    /// address (port 0 resolved to the real port, `/memory/0` to the number bound).
    @discardableResult
    public func listen(on address: Multiaddr) async throws -> Multiaddr {
        try checkRunning()
        return try await swarm.listen(on: address)
    }

    /// Bound listen addresses, without `/p2p/`. A wildcard address (0.0.0.0, ::) is expanded to the
    /// addresses of this machine's interfaces.
    public var listenAddresses: [Multiaddr] { swarm.listenAddresses }

    /// The addresses we tell peers about (identify, signed peer records): the listen addresses
    /// (or `announceAddresses` when set), the observed addresses that enough distinct peers
    /// confirmed (`observedAddressActivation` groups) or that a dial-back proved reachable, then
    /// those of the address sources (e.g. the `/p2p/<relay>/p2p-circuit` addresses of the relay
    /// reservations we hold), each once, without `/p2p/<our peer ID>`, none of
    /// `noAnnounceAddresses` and none that dial-backs proved unreachable (AutoNAT v2).
    public var advertisedAddresses: [Multiaddr] {
        let (sources, verdict) = state.withLockedValue { ($0.addressSources, $0.addressVerdict) }
        let base = configuration.announceAddresses.isEmpty ? listenAddresses : configuration.announceAddresses
        let confirmed = observedAddresses.all.filter {
            $0.groups >= configuration.observedAddressActivation || verdict?($0.address) == true
        }.map(\.address)
        var seen = Set(configuration.noAnnounceAddresses.map { $0.removingPeerID() })
        return (base + confirmed + sources.flatMap { $0() }).map { $0.removingPeerID() }.filter {
            verdict?($0) != false && seen.insert($0).inserted
        }
    }

    /// Sets what dial-backs proved about our addresses: `true` reachable (advertised even when
    /// few peers observed it), `false` unreachable (not advertised), `nil` not known. Call
    /// `addressesChanged()` when a verdict changes.
    package func setAddressVerdict(_ verdict: @escaping @Sendable (Multiaddr) -> Bool?) {
        state.withLockedValue { $0.addressVerdict = verdict }
    }

    /// Adds addresses to `advertisedAddresses` (a relay client adds its circuit addresses); call
    /// `addressesChanged()` when what the source returns changes.
    package func addAddressSource(_ source: @escaping @Sendable () -> [Multiaddr]) {
        state.withLockedValue { $0.addressSources.append(source) }
    }

    /// Tells the host that `advertisedAddresses` may have changed: when it did, connected peers
    /// get an identify push and subscribers an `.addressesChanged` event.
    package func addressesChanged() {
        let current = advertisedAddresses
        let changed = state.withLockedValue { s -> Bool in
            guard s.lastAdvertised != current else { return false }
            s.lastAdvertised = current
            return true
        }
        guard changed else { return }
        emit(.addressesChanged(current))
        notifyProtocolsChanged()
    }

    /// Listen addresses ending in `/p2p/<our peer ID>`, ready to hand to another peer.
    public var addresses: [Multiaddr] {
        listenAddresses.map { $0.appending(peerID: peerID) }
    }

    private func checkRunning() throws {
        if state.withLockedValue({ $0.shuttingDown }) {
            throw HostError(.shutDown, "the host is shut down")
        }
    }

    // MARK: - Stream handlers

    /// Handles inbound streams for `protocolID`. Throws `.handlerExists` if one is set already.
    ///
    /// `allowOnLimitedConnections: false` refuses the protocol on limited (relayed) connections,
    /// as if we did not speak it there: for protocols whose traffic a relay's small time and data
    /// allowance cannot carry, or that must not act on a relayed peer (bulk transfer, the DHT).
    public func setStreamHandler(
        _ protocolID: String, allowOnLimitedConnections: Bool = true, _ handler: @escaping StreamHandler
    ) throws {
        try state.withLockedValue { s in
            guard s.handlers[protocolID] == nil else {
                throw HostError(.handlerExists, "a handler for \(protocolID) is already set")
            }
            s.handlers[protocolID] = .task(handler)
            if !allowOnLimitedConnections { s.refusedOnLimited.insert(protocolID) }
        }
        notifyProtocolsChanged()
    }

    /// Handles inbound streams for `protocolID` without a task per stream: `handler` is called
    /// once the protocol is negotiated, on the stream's event loop when the negotiation finished
    /// there (the usual case), and takes the stream over — it must close or reset it, and start
    /// (with `spawn`) whatever async work it needs. For protocols whose streams mostly sit idle
    /// (issue 10: a task costs ~7 KiB per idle stream). Throws `.handlerExists` if one is set.
    package func setEventLoopStreamHandler(
        _ protocolID: String, _ handler: @escaping @Sendable (P2PStream) -> Void
    ) throws {
        try state.withLockedValue { s in
            guard s.handlers[protocolID] == nil else {
                throw HostError(.handlerExists, "a handler for \(protocolID) is already set")
            }
            s.handlers[protocolID] = .eventLoop(handler)
        }
        notifyProtocolsChanged()
    }

    public func removeStreamHandler(_ protocolID: String) {
        let removed = state.withLockedValue { s in
            s.refusedOnLimited.remove(protocolID)
            return s.handlers.removeValue(forKey: protocolID) != nil
        }
        if removed { notifyProtocolsChanged() }
    }

    /// The protocols we have handlers for, sorted.
    public var supportedProtocols: [String] {
        state.withLockedValue { $0.handlers.keys.sorted() }
    }

    /// The protocols inbound streams on `connection` may negotiate: all of them, but on a limited
    /// (relayed) connection not those registered with `allowOnLimitedConnections: false`.
    func supportedProtocols(on connection: Connection) -> [String] {
        state.withLockedValue { s in
            let all = s.handlers.keys.sorted()
            return connection.isLimited ? all.filter { !s.refusedOnLimited.contains($0) } : all
        }
    }

    private func notifyProtocolsChanged() {
        for observer in state.withLockedValue({ $0.protocolObservers }) { observer() }
    }

    /// Called (synchronously) when the set of supported protocols or the advertised addresses
    /// change; identify push uses it.
    /// (Package-level: the built-in services need the synchronous call; users subscribe to `events()`.)
    package func addProtocolsObserver(_ observer: @escaping @Sendable () -> Void) {
        state.withLockedValue { $0.protocolObservers.append(observer) }
    }

    /// Called (synchronously, on an event loop) for every new connection; keep it short.
    package func addConnectionObserver(_ observer: @escaping @Sendable (Connection) -> Void) {
        state.withLockedValue { $0.connectionObservers.append(observer) }
    }

    // MARK: - Events

    /// A new subscription to host events. Holds the newest 1024 events if not consumed; ends
    /// when the host shuts down (at once if it has).
    public func events() -> AsyncStream<HostEvent> {
        eventSubscribers.subscribe()
    }

    /// Delivers an event to every subscriber (services post their own, e.g. `.peerIdentified`).
    public func emit(_ event: HostEvent) {
        eventSubscribers.yield(event)
    }

    // MARK: - Connections

    /// Open connections to `peer`, oldest first.
    public func connections(to peer: PeerID) -> [Connection] { swarm.connections(to: peer) }

    /// The peers we have at least one connection to.
    public var connectedPeers: [PeerID] { swarm.connectedPeers }

    /// Every open connection.
    public var allConnections: [Connection] { swarm.allConnections }

    /// Connects to `peer`, reusing an open connection. Concurrent callers for the same peer share
    /// one dial, which tries the peer's addresses best first and staggered (`dialRanker`).
    /// `addresses` are added to the peerstore (temporary TTL) before dialing.
    public func connect(to peer: PeerID, addresses: [Multiaddr] = []) async throws -> Connection {
        guard peer != peerID else { throw HostError(.dialSelf, "refusing to dial ourselves (\(peer))") }
        try checkRunning()
        // An open connection is used, a direct one first; with only a relayed one open, a direct
        // address given here is dialed (falling back to the relayed connection).
        let existing = connections(to: peer).first
        let givenDirect = addresses.contains { !$0.isCircuit }
        if let existing, !existing.isLimited || !givenDirect { return existing }
        if !addresses.isEmpty { peerstore.addAddresses(addresses, for: peer, ttl: .temporary) }
        if peerstore.addresses(for: peer).isEmpty { try await route(peer) }
        return try await swarm.connect(to: peer, tryDirect: existing != nil && givenDirect)
    }

    /// Registers a way to find peers by ID; `connect(to:)` asks the routers in order when it knows
    /// no address of a peer. (A DHT service registers itself when it attaches.)
    public func addPeerRouting(_ router: any PeerRouting) {
        state.withLockedValue { $0.routers.append(router) }
    }

    /// Asks the routers for `peer`'s addresses until one answers; they go to the peerstore.
    private func route(_ peer: PeerID) async throws {
        let routers = state.withLockedValue { $0.routers }
        guard !routers.isEmpty else { return }
        var errors: [any Error] = []
        for router in routers {
            do {
                let found = try await router.findPeer(peer)
                guard !found.isEmpty else { continue }
                peerstore.addAddresses(found, for: peer, ttl: .temporary)
                return
            } catch {
                errors.append(error)
            }
        }
        throw HostError(.noAddresses, "no router found an address for \(peer)", causes: errors)
    }

    /// Connects to the peer at `address`. With `/p2p/<id>`, the remote must prove it is that peer
    /// and an open connection is reused; without, the address is dialed and whoever answers is accepted.
    public func connect(to address: Multiaddr) async throws -> Connection {
        if let peer = address.peerID {
            return try await connect(to: peer, addresses: [address])
        }
        try checkRunning()
        return try await swarm.dial(address, expectedPeer: nil)
    }

    /// Dials `address` on a new connection even when there is one to `peer` already: AutoNAT's
    /// dial-back must prove that the address is reachable, not reuse a connection.
    ///
    /// For hole punching: `localPort` dials from our listen port (SO_REUSEPORT), `asResponder`
    /// runs security and muxer as the responder (in a TCP simultaneous open both ends dialed;
    /// DCUtR gives the roles).
    package func dialNewConnection(
        to address: Multiaddr, expectedPeer: PeerID, localPort: UInt16? = nil, asResponder: Bool = false
    ) async throws -> Connection {
        try checkRunning()
        return try await swarm.dial(
            address.removingPeerID(), expectedPeer: expectedPeer, localPort: localPort, asResponder: asResponder)
    }

    /// Runs `body` while inbound connections from `addresses` are upgraded with us as the
    /// initiator of the handshake, expecting `peer` (hole punching: the client of the direct
    /// connection stays the client when the other side's dial arrives through our listener).
    package func withInboundAsInitiator<T>(
        from addresses: [Multiaddr], peer: PeerID, _ body: () async throws -> T
    ) async rethrows -> T {
        let plain = addresses.map { $0.removingPeerID() }
        swarm.expectInboundAsInitiator(from: plain, peer: peer)
        defer { swarm.endInboundAsInitiator(from: plain) }
        return try await body()
    }

    /// Opens a stream to `peer`, connecting first if needed, speaking the first of `protocols` it
    /// supports. When identify already told us which of them the peer supports, that one is proposed
    /// lazily (no round trip before the stream is returned; go-libp2p does the same).
    public func newStream(to peer: PeerID, protocols: [String]) async throws -> P2PStream {
        let connection = try await connect(to: peer)
        return try await openStream(on: connection, protocols: protocols)
    }

    /// Opens a stream to the peer at `address` (see `connect(to:)` with an address).
    public func newStream(to address: Multiaddr, protocols: [String]) async throws -> P2PStream {
        let connection = try await connect(to: address)
        return try await openStream(on: connection, protocols: protocols)
    }

    private func openStream(on connection: Connection, protocols: [String]) async throws -> P2PStream {
        let known = Set(peerstore.protocols(for: connection.remotePeer))
        if let preferred = protocols.first(where: known.contains) {
            return try await connection.newStream(protocols: [preferred], lazy: true)
        }
        return try await connection.newStream(protocols: protocols)
    }

    /// What the swarm reports, turned into host events; new connections get their streams served.
    private func handle(_ event: SwarmEvent) {
        switch event {
        case .opened(let connection, let isFirst):
            emit(.connectionOpened(connection))
            if swarm.isTrimDue() { spawn { [swarm] in await swarm.trimConnections() } }
            if isFirst { emit(.peerConnected(connection.remotePeer)) }
            serveInboundStreams(of: connection)
            for observer in state.withLockedValue({ $0.connectionObservers }) { observer(connection) }
        case .closed(let connection, let error, let wasLast):
            emit(.connectionClosed(connection, error: error))
            if wasLast { emit(.peerDisconnected(connection.remotePeer)) }
        case .inboundUpgradeFailed(let remoteAddress, let error):
            emit(.inboundUpgradeFailed(remoteAddress: remoteAddress, error: error))
        }
    }

    // MARK: - Connection manager

    /// Runs the connection manager's check every `checkInterval` until shutdown (when the host
    /// was started with `start()`; `run()` runs it as its own child task).
    private func startMaintenance() {
        let task = Task { [swarm] in await swarm.maintain() }
        state.withLockedValue { s in
            if s.shuttingDown { task.cancel() } else { s.maintenance = task }
        }
    }

    /// Closes the connections the connection manager picks: idle ones, and above the high
    /// watermark the least useful ones. Returns how many it closed.
    @discardableResult
    public func trimConnections() async -> Int {
        await swarm.trimConnections()
    }
}

extension P2PHost: Service {
    /// Runs the host as a ServiceLifecycle `Service`: starts it (services, listeners), serves
    /// until graceful shutdown is requested (or the task is cancelled), then shuts down gracefully
    /// (open streams get `shutdownGracePeriod`).
    public func run() async throws {
        try await start(maintenance: false)
        // The host's background loop is a child of this task: structured, ended before we return.
        await withDiscardingTaskGroup { group in
            group.addTask { [swarm] in await swarm.maintain() }
            // Returns on graceful shutdown; throws CancellationError when cancelled. Either way: stop.
            try? await gracefulShutdown()
            group.cancelAll()
        }
        await shutdown()
    }
}
