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

/// Something that adds behaviour to a host when it starts (identify, ping, perf, …).
public protocol HostService: Sendable {
    func attach(to host: P2PHost) async throws
}

/// What happened on a host. Subscribe with `P2PHost.events()`.
public enum HostEvent: Sendable {
    /// A connection finished its upgrade.
    case connectionOpened(Connection)
    /// A connection ended; `error` says why when it was not a clean close (e.g. a YamuxError for a
    /// peer that broke the muxer protocol).
    case connectionClosed(Connection, error: (any Error)?)
    /// The first connection to a peer opened.
    case peerConnected(PeerID)
    /// The last connection to a peer closed.
    case peerDisconnected(PeerID)
    /// Identify learned the peer's protocols and agent version.
    case peerIdentified(PeerID)
    /// An inbound connection failed its upgrade (bad handshake, timeout, protocol violation).
    case inboundUpgradeFailed(remoteAddress: Multiaddr?, error: any Error)
}

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
        /// How long an inbound connection has to finish its security and muxer handshakes. Each
        /// remote address may hold only `resources.perAddress.pendingInbound` handshakes at once,
        /// so silent sockets from one source cannot block the others for this long.
        public var handshakeTimeout: Duration = .seconds(10)
        /// How long a new stream has to agree on a protocol.
        public var streamNegotiationTimeout: Duration = .seconds(10)
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

    private struct State {
        var started = false
        var shuttingDown = false
        var listeners: [any TransportListener] = []
        var connections: [PeerID: [Connection]] = [:]
        var pendingInbound = 0
        var dials: [PeerID: Task<Connection, any Error>] = [:]
        var handlers: [String: InboundHandler] = [:]
        var subscribers: [UInt64: AsyncStream<HostEvent>.Continuation] = [:]
        var maintenance: Task<Void, Never>?
        var connectionObservers: [@Sendable (Connection) -> Void] = []
        var protocolObservers: [@Sendable () -> Void] = []
        var handlerTasks: [UInt64: Task<Void, Never>] = [:]
        var nextID: UInt64 = 1

        mutating func takeID() -> UInt64 {
            defer { nextID += 1 }
            return nextID
        }

        var connectionCount: Int { connections.values.reduce(0) { $0 + $1.count } }
        var lastTrimCheck: ContinuousClock.Instant?
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
    private let transports: [any Transport]
    private let metrics = HostMetrics()
    /// Lines a remote can cause at will (refusals, failed handshakes), at a bounded rate.
    private let remoteLog: RateLimitedLogger
    private let upgrader: Upgrader
    private let state = NIOLockedValueBox(State())
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
        let group = self.eventLoopGroup
        self.transports = configuration.transports.map { $0.build(on: group) }
        // Building a security protocol signs with the identity key, which cannot fail for the key
        // types a PrivateKey holds.
        precondition(!configuration.security.isEmpty, "a host needs at least one security protocol")
        let security = configuration.security.map { option in
            do {
                return try option.build(for: identity)
            } catch {
                preconditionFailure("cannot set up \(option.protocolID) for this identity: \(error)")
            }
        }
        self.upgrader = Upgrader(
            security: security, yamux: configuration.yamux, timeout: TimeAmount(configuration.handshakeTimeout),
            metrics: metrics)
    }

    // MARK: - Lifecycle

    /// Starts the services and listens on the configured addresses.
    public func start() async throws {
        let first = state.withLockedValue { s -> Bool in
            defer { s.started = true }
            return !s.started
        }
        guard first else { return }
        for service in configuration.services { try await service.attach(to: self) }
        for address in configuration.listenAddresses { _ = try await listen(on: address) }
        startMaintenance()
    }

    /// Stops listening, lets open streams finish for up to `gracePeriod`, closes every connection,
    /// and ends event subscriptions. Safe to call more than once.
    public func shutdown(gracePeriod: Duration? = nil) async {
        let (listeners, connections, dials, alreadyDown) = state.withLockedValue { s in
            defer {
                s.shuttingDown = true
                s.listeners = []
            }
            return (s.listeners, s.connections.values.flatMap { $0 }, Array(s.dials.values), s.shuttingDown)
        }
        if alreadyDown { return }
        state.withLockedValue { $0.maintenance }?.cancel()
        for listener in listeners { await listener.close() }
        for dial in dials { dial.cancel() }
        let grace = gracePeriod ?? configuration.shutdownGracePeriod
        await withTaskGroup(of: Void.self) { group in
            for connection in connections {
                group.addTask { await connection.close(graceful: true, timeout: grace) }
            }
        }
        let (tasks, subscribers) = state.withLockedValue { s in
            defer {
                s.handlerTasks = [:]
                s.subscribers = [:]
            }
            return (Array(s.handlerTasks.values), Array(s.subscribers.values))
        }
        for task in tasks { task.cancel() }
        // Cancelled tasks end quickly now that their connections are closed; wait for them (bounded)
        // so none touches an event loop after the group is gone.
        _ = try? await withTimeout(.seconds(2), "waiting for handler tasks") {
            for task in tasks { await task.value }
        }
        for subscriber in subscribers { subscriber.finish() }
    }

    // MARK: - Listening

    /// Listens on `address` with the first configured transport that handles it. Returns the bound
    /// address (port 0 resolved to the real port, `/memory/0` to the number bound).
    @discardableResult
    public func listen(on address: Multiaddr) async throws -> Multiaddr {
        try checkRunning()
        guard let transport = transports.first(where: { $0.canListen(address) }) else {
            throw HostError(.invalidAddress, "no transport can listen on \(address)")
        }
        // What a transport buffers for a connection before the host has its scope (the WebSocket
        // upgrade request) is charged to the "transport" service scope; acceptInbound then
        // assigns the connection's own scope.
        let handshakes = resourceManager.serviceScope("transport")
        let options = ListenOptions(memory: { _ in TransportMemory(handshakes) })
        let listener = try await transport.listen(on: address, options: options) { [weak self] channel, remote in
            guard let self else { return channel.close() }
            return self.acceptInbound(channel, from: remote)
        }
        state.withLockedValue { $0.listeners.append(listener) }
        logger.info("listening", metadata: ["address": "\(listener.address)"])
        return listener.address
    }

    /// Bound listen addresses, without `/p2p/`. A wildcard address (0.0.0.0, ::) is expanded to the
    /// addresses of this machine's interfaces.
    public var listenAddresses: [Multiaddr] {
        let bound = state.withLockedValue { $0.listeners.map(\.address) }
        return bound.flatMap { Self.expandWildcard($0) }
    }

    /// Listen addresses ending in `/p2p/<our peer ID>`, ready to hand to another peer.
    public var addresses: [Multiaddr] {
        listenAddresses.map { $0.appending(peerID: peerID) }
    }

    private static func expandWildcard(_ address: Multiaddr) -> [Multiaddr] {
        guard let socket = try? address.socketAddress(), let port = socket.port,
            socket.ipAddress == "0.0.0.0" || socket.ipAddress == "::"
        else { return [address] }
        let wantV4 = socket.ipAddress == "0.0.0.0"
        // What follows /ip4|ip6/…/tcp/PORT (e.g. /ws) stays on every expanded address.
        let rest = Array(address.components.dropFirst(2))
        let devices = (try? System.enumerateDevices()) ?? []
        var out: [Multiaddr] = []
        for device in devices {
            guard var deviceAddress = device.address else { continue }
            switch deviceAddress {
            case .v4 where wantV4, .v6 where !wantV4:
                deviceAddress.port = port
                if let ip = try? Multiaddr(socketAddress: deviceAddress) {
                    let m = Multiaddr(ip.components + rest)
                    if !out.contains(m) { out.append(m) }
                }
            default: continue
            }
        }
        return out.isEmpty ? [address] : out
    }

    private func checkRunning() throws {
        if state.withLockedValue({ $0.shuttingDown }) {
            throw HostError(.shutDown, "the host is shut down")
        }
    }

    // MARK: - Stream handlers

    /// Handles inbound streams for `protocolID`. Throws `.handlerExists` if one is set already.
    public func setStreamHandler(_ protocolID: String, _ handler: @escaping StreamHandler) throws {
        try state.withLockedValue { s in
            guard s.handlers[protocolID] == nil else {
                throw HostError(.handlerExists, "a handler for \(protocolID) is already set")
            }
            s.handlers[protocolID] = .task(handler)
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
        let removed = state.withLockedValue { $0.handlers.removeValue(forKey: protocolID) != nil }
        if removed { notifyProtocolsChanged() }
    }

    /// The protocols we have handlers for, sorted.
    public var supportedProtocols: [String] {
        state.withLockedValue { $0.handlers.keys.sorted() }
    }

    private func notifyProtocolsChanged() {
        for observer in state.withLockedValue({ $0.protocolObservers }) { observer() }
    }

    /// Called (synchronously) when the set of supported protocols changes; identify push uses it.
    public func addProtocolsObserver(_ observer: @escaping @Sendable () -> Void) {
        state.withLockedValue { $0.protocolObservers.append(observer) }
    }

    /// Called (synchronously, on an event loop) for every new connection; keep it short.
    public func addConnectionObserver(_ observer: @escaping @Sendable (Connection) -> Void) {
        state.withLockedValue { $0.connectionObservers.append(observer) }
    }

    // MARK: - Events

    /// A new subscription to host events. Holds the newest 1024 events if not consumed.
    public func events() -> AsyncStream<HostEvent> {
        let (stream, continuation) = AsyncStream<HostEvent>.makeStream(bufferingPolicy: .bufferingNewest(1024))
        let id = state.withLockedValue { s -> UInt64? in
            guard !s.shuttingDown else { return nil }
            let id = s.takeID()
            s.subscribers[id] = continuation
            return id
        }
        guard let id else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLockedValue { $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    /// Delivers an event to every subscriber (services post their own, e.g. `.peerIdentified`).
    public func emit(_ event: HostEvent) {
        for subscriber in state.withLockedValue({ Array($0.subscribers.values) }) { subscriber.yield(event) }
    }

    // MARK: - Connections

    /// Open connections to `peer`, oldest first.
    public func connections(to peer: PeerID) -> [Connection] {
        state.withLockedValue { $0.connections[peer] ?? [] }.filter { !$0.isClosed }
    }

    public var connectedPeers: [PeerID] {
        state.withLockedValue { Array($0.connections.keys) }
    }

    public var allConnections: [Connection] {
        state.withLockedValue { $0.connections.values.flatMap { $0 } }
    }

    /// Connects to `peer`, reusing an open connection. Concurrent callers for the same peer share
    /// one dial. `addresses` are added to the peerstore (temporary TTL) before dialing.
    public func connect(to peer: PeerID, addresses: [Multiaddr] = []) async throws -> Connection {
        guard peer != peerID else { throw HostError(.dialSelf, "refusing to dial ourselves (\(peer))") }
        try checkRunning()
        if let existing = connections(to: peer).first { return existing }
        if !addresses.isEmpty { peerstore.addAddresses(addresses, for: peer, ttl: .temporary) }
        let task = state.withLockedValue { s -> Task<Connection, any Error> in
            if let inFlight = s.dials[peer] { return inFlight }
            let task = Task { [self] in
                defer { _ = state.withLockedValue { $0.dials.removeValue(forKey: peer) } }
                return try await dialAddresses(of: peer)
            }
            s.dials[peer] = task
            return task
        }
        return try await task.value
    }

    /// Connects to the peer at `address`. With `/p2p/<id>`, the remote must prove it is that peer
    /// and an open connection is reused; without, the address is dialed and whoever answers is accepted.
    public func connect(to address: Multiaddr) async throws -> Connection {
        if let peer = address.peerID {
            return try await connect(to: peer, addresses: [address])
        }
        try checkRunning()
        return try await dial(address, expectedPeer: nil)
    }

    /// Opens a stream to `peer`, connecting first if needed, speaking the first of `protocols` it
    /// supports. When identify already told us which of them the peer supports, that one is proposed
    /// lazily (no round trip before the stream is returned; go-libp2p does the same).
    public func newStream(to peer: PeerID, protocols: [String]) async throws -> P2PStream {
        let connection = try await connect(to: peer)
        return try await openStream(on: connection, protocols: protocols)
    }

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

    private func dialAddresses(of peer: PeerID) async throws -> Connection {
        let candidates = peerstore.addresses(for: peer).filter { address in
            transports.contains { $0.canDial(address) }
        }
        guard !candidates.isEmpty else {
            throw HostError(.noAddresses, "no dialable address known for \(peer)")
        }
        var errors: [any Error] = []
        for address in candidates {
            do {
                return try await dial(address, expectedPeer: peer)
            } catch {
                logger.debug("dial failed", metadata: ["address": "\(address)", "error": "\(error)"])
                errors.append(error)
                if Task.isCancelled { break }
            }
        }
        if errors.count == 1, let only = errors.first as? HostError, only.code == .dialTimeout { throw only }
        throw HostError(.dialFailed, "could not connect to \(peer)", underlying: errors)
    }

    private func dial(_ address: Multiaddr, expectedPeer: PeerID?) async throws -> Connection {
        let plain = address.removingPeerID()
        guard let transport = transports.first(where: { $0.canDial(plain) }) else {
            throw HostError(.invalidAddress, "no transport for \(address)")
        }
        // The dial's whole budget is enforced on the event loop: by the TCP connect timeout, and by
        // the upgrader's deadline, which starts in the initializer (no task group on this hot path).
        let timeout = TimeAmount(configuration.dialTimeout)
        let upgrader = self.upgrader
        let upgrade = NIOLockedValueBox<EventLoopFuture<Upgrader.Result>?>(nil)
        let scope: ConnectionScope
        do {
            scope = try resourceManager.openConnection(direction: .outbound)
            try Self.reserveSecurityBuffers(in: scope)
        } catch {
            throw HostError(.limitReached, "cannot dial \(address): \(error)", underlying: [error])
        }
        let channel: Channel
        do {
            let options = DialOptions(
                timeout: configuration.dialTimeout, sourceAddress: configuration.dialSourceAddress,
                memory: TransportMemory(scope))
            channel = try await transport.dial(plain, options: options) { channel in
                upgrade.withLockedValue {
                    $0 = upgrader.upgrade(
                        channel: channel, role: .initiator(expectedPeer: expectedPeer), timeout: timeout,
                        resourceScope: scope)
                }
                return channel.eventLoop.makeSucceededVoidFuture()
            }
        } catch let error as TransportError where error.code == .dialTimeout {
            scope.done()
            throw HostError(.dialTimeout, "dialing \(address) timed out after \(configuration.dialTimeout)", underlying: [error])
        } catch {
            scope.done()
            // The upgrader's deadline also bounds the connect: when it fires first it closes the
            // channel, and the connect fails with "I/O on closed channel". Report the timeout.
            // (A failed connect removes the upgrader's handlers, which fails it at once.)
            if let pending = upgrade.withLockedValue({ $0 }) {
                do {
                    _ = try await pending.get()
                } catch let timeout as HostError where timeout.code == .dialTimeout {
                    throw timeout
                } catch {}
            }
            throw error
        }
        let result: Upgrader.Result
        do {
            result = try await upgrade.withLockedValue { $0! }.get()
        } catch let error as HostError where error.code == .dialTimeout {
            scope.done()
            metrics.handshakeFailed(.outbound, reason: "timeout")
            throw error
        } catch {
            scope.done()
            channel.close(promise: nil)
            metrics.handshakeFailed(.outbound, reason: Upgrader.failureReason(error))
            throw HostError(.upgradeFailed, "upgrading the connection to \(address) failed", underlying: [error])
        }
        if result.remote.remotePeer == peerID {
            scope.done()
            channel.close(promise: nil)
            throw HostError(.dialSelf, "\(address) is ourselves")
        }
        do {
            try scope.setPeer(result.remote.remotePeer.description)
        } catch {
            scope.done()
            channel.close(promise: nil)
            throw HostError(.limitReached, "connection to \(address) refused: \(error)", underlying: [error])
        }
        scope.markEstablished()
        return try register(result, channel: channel, direction: .outbound, remoteAddress: plain, scope: scope)
    }

    /// What a connection's security layer may buffer: one Noise message of at most 64 KiB each
    /// way, plus slack for the socket reads around it. Reserved for the connection's lifetime.
    static let securityBufferBytes = 2 * (65_535 + 16 * 1024)

    /// Reserves the security buffers in a new connection's scope; on refusal the scope is closed.
    private static func reserveSecurityBuffers(in scope: ConnectionScope) throws(ResourceError) {
        do throws(ResourceError) {
            try scope.reserveMemory(securityBufferBytes)
        } catch {
            scope.done()
            throw error
        }
    }

    /// Runs on the accepted channel's event loop, before it is active. The connection is
    /// accounted before a byte is read: per source address (pending handshakes, connections,
    /// memory), then per peer once the security handshake names it.
    private func acceptInbound(_ channel: any Channel, from endpoint: RemoteEndpoint) -> EventLoopFuture<Void> {
        let remote = endpoint.address
        let remoteIP = endpoint.source
        guard !state.withLockedValue({ $0.shuttingDown }) else { return channel.close() }
        let scope: ConnectionScope
        do {
            scope = try resourceManager.openConnection(direction: .inbound, remoteAddress: remoteIP)
            try Self.reserveSecurityBuffers(in: scope)
        } catch {
            // The resource manager logged the refusal (rate-limited, with the address).
            metrics.connectionRefused(reason: error.scope)
            return channel.close()
        }
        // From here on the transport's buffers (WebSocket frames) count against this connection.
        channel.pipeline.syncOperations.fireUserInboundEventTriggered(TransportMemory.Assignment(TransportMemory(scope)))
        let remoteText = remote.map { "\($0)" } ?? "unknown"
        upgrader.upgrade(channel: channel, role: .responder, resourceScope: scope).whenComplete { [self] result in
            switch result {
            case .success(let upgraded):
                let peer = upgraded.remote.remotePeer
                do {
                    try scope.setPeer(peer.description)
                    scope.markEstablished()
                    _ = try register(
                        upgraded, channel: channel, direction: .inbound,
                        remoteAddress: remote ?? Multiaddr([]), scope: scope)
                } catch {
                    scope.done()
                    metrics.connectionRefused(reason: (error as? ResourceError)?.scope ?? "shutdown")
                    channel.close(promise: nil)
                }
            case .failure(let error):
                scope.done()
                let reason = Upgrader.failureReason(error)
                metrics.handshakeFailed(.inbound, reason: reason)
                remoteLog.log(
                    .info, key: "inbound upgrade \(reason)", "inbound connection upgrade failed",
                    metadata: ["remote_address": "\(remoteText)", "reason": "\(reason)", "error": "\(error)"])
                emit(.inboundUpgradeFailed(remoteAddress: remote, error: error))
            }
        }
        return channel.eventLoop.makeSucceededVoidFuture()
    }

    private func register(
        _ result: Upgrader.Result, channel: Channel, direction: Connection.Direction, remoteAddress: Multiaddr,
        scope: ConnectionScope
    ) throws -> Connection {
        let peer = result.remote.remotePeer
        let (connection, isFirst, observers) = try state.withLockedValue { s in
            guard !s.shuttingDown else { throw HostError(.shutDown, "the host is shut down") }
            let connection = Connection(
                id: s.takeID(), remotePeer: peer, remotePublicKey: result.remote.remotePublicKey,
                direction: direction, localAddress: channel.localMultiaddr,
                remoteAddress: remoteAddress, session: result.session,
                negotiationTimeout: configuration.streamNegotiationTimeout, security: result.securityProtocol,
                resourceScope: scope, metrics: metrics)
            s.connections[peer, default: []].append(connection)
            return (connection, s.connections[peer]!.count == 1, s.connectionObservers)
        }
        peerstore.setPublicKey(result.remote.remotePublicKey, for: peer)
        if direction == .outbound { peerstore.addAddresses([remoteAddress], for: peer, ttl: .connected) }
        result.session.closeFuture.whenComplete { [weak self] result in
            if case .failure(let error) = result {
                self?.unregister(connection, error: error)
            } else {
                self?.unregister(connection, error: nil)
            }
        }
        logger.debug(
            "connection opened",
            metadata: ["peer": "\(peer)", "direction": "\(direction.rawValue)", "remote_address": "\(remoteAddress)"])
        metrics.connectionOpened(direction)
        emit(.connectionOpened(connection))
        if connectionCountAboveHighWater() { scheduleTrim() }
        if isFirst { emit(.peerConnected(peer)) }
        serveInboundStreams(of: connection)
        for observer in observers { observer(connection) }
        return connection
    }

    private func unregister(_ connection: Connection, error: (any Error)?) {
        let peer = connection.remotePeer
        let wasLast = state.withLockedValue { s -> Bool in
            guard var list = s.connections[peer], let index = list.firstIndex(of: connection) else { return false }
            list.remove(at: index)
            s.connections[peer] = list.isEmpty ? nil : list
            return list.isEmpty
        }
        connection.resourceScope?.done()
        metrics.connectionClosed(connection.direction)
        var metadata: Logger.Metadata = [
            "peer": "\(peer)", "direction": "\(connection.direction.rawValue)",
            "remote_address": "\(connection.remoteAddress)",
        ]
        if let error { metadata["error"] = "\(error)" }
        logger.debug(error == nil ? "connection closed" : "connection failed", metadata: metadata)
        emit(.connectionClosed(connection, error: error))
        if wasLast {
            peerstore.updateAddressTTL(for: peer, to: .recentlyConnected)
            emit(.peerDisconnected(peer))
        }
    }

    // MARK: - Inbound streams

    /// One task per inbound stream, started from the event loop as its SYN arrives (no task
    /// iterating `inboundStreams` in between: one task switch less per stream).
    ///
    /// Dialers send the multistream header right behind the SYN, and most their first proposal
    /// with it (we and go-libp2p in one write; py-libp2p 0.8.1 waits for our header first), so
    /// they are usually here already: the answer (or our header) is then written from the loop,
    /// in the same write as the ACK, instead of by the task a scheduling round later; the task
    /// continues whatever negotiation is left.
    private func serveInboundStreams(of connection: Connection) {
        connection.session.setInboundStreamHandler { [weak self] stream in
            guard let self else { return stream.reset() }
            connection.markStreamActivity()
            var negotiator = MultistreamNegotiator(role: .listener(protocols: self.supportedProtocols))
            _ = negotiator.start()  // a listener sends nothing first
            if let early = stream.takeAvailable() {
                do {
                    let step = try negotiator.receive(early)
                    if !step.send.isEmpty { stream.writeFromEventLoop(ByteBuffer(bytes: step.send)) }
                } catch {
                    self.logger.debug("inbound stream negotiation failed", metadata: ["error": "\(error)"])
                    stream.reset()
                    return
                }
            }
            if let proto = negotiator.negotiatedProtocol,
                case .eventLoop(let handler) = self.state.withLockedValue({ $0.handlers[proto] })
            {
                // Negotiated in the first bytes, for a handler that needs no task: none is started.
                if let p2pStream = self.openInbound(stream, protocolID: proto, leftover: negotiator.takeLeftover(), on: connection) {
                    handler(p2pStream)
                }
                return
            }
            let started = negotiator
            self.track { await self.handleInbound(stream, negotiator: started, on: connection) }
        }
    }

    /// Runs `work` as a task that `shutdown()` cancels and waits for. Services use it for their
    /// background work (e.g. identify on a new connection).
    public func spawn(_ work: @escaping @Sendable () async -> Void) {
        track(work)
    }

    private func track(_ work: @escaping @Sendable () async -> Void) {
        let id = state.withLockedValue { $0.takeID() }
        let task = Task { [weak self] in
            await work()
            _ = self?.state.withLockedValue { $0.handlerTasks.removeValue(forKey: id) }
        }
        state.withLockedValue { s in
            if s.shuttingDown { task.cancel() } else { s.handlerTasks[id] = task }
        }
    }

    /// `negotiator`: the listener's negotiation, possibly finished already (see `serveInboundStreams`).
    private func handleInbound(_ stream: YamuxStream, negotiator: MultistreamNegotiator, on connection: Connection) async {
        var negotiator = negotiator
        let negotiated: (protocol: String, leftover: ByteBuffer)
        if let proto = negotiator.negotiatedProtocol {
            negotiated = (proto, negotiator.takeLeftover())
        } else {
            do {
                negotiated = try await Self.negotiate(
                    stream, continuing: negotiator, timeout: configuration.streamNegotiationTimeout)
            } catch {
                remoteLog.log(
                    .debug, key: "inbound stream negotiation failed", "inbound stream negotiation failed",
                    metadata: [
                        "peer": "\(connection.remotePeer)", "remote_address": "\(connection.remoteAddress)",
                        "error": "\(error)",
                    ])
                stream.reset()
                return
            }
        }
        guard let handler = state.withLockedValue({ $0.handlers[negotiated.protocol] }) else {
            stream.reset()  // removed while we negotiated
            return
        }
        guard let p2pStream = openInbound(
            stream, protocolID: negotiated.protocol, leftover: negotiated.leftover, on: connection)
        else { return }
        switch handler {
        case .eventLoop(let handler):
            handler(p2pStream)
        case .task(let handler):
            do {
                try await handler(p2pStream)
                await p2pStream.close()
            } catch {
                logger.debug(
                    "stream handler failed",
                    metadata: [
                        "protocol": "\(negotiated.protocol)", "peer": "\(connection.remotePeer)",
                        "remote_address": "\(connection.remoteAddress)", "error": "\(error)",
                    ])
                p2pStream.reset()
            }
        }
    }

    /// The negotiated stream, counted against its protocol's limits; nil (the stream reset) when
    /// the protocol's stream limit is reached.
    private func openInbound(
        _ stream: YamuxStream, protocolID: String, leftover: ByteBuffer, on connection: Connection
    ) -> P2PStream? {
        do {
            try stream.resourceScope?.setProtocol(protocolID)
        } catch {
            // The protocol's stream limit is reached (the manager logged it): refuse this stream.
            metrics.streamRefused(reason: "protocol")
            stream.reset()
            return nil
        }
        metrics.streamOpened(.inbound, protocolID: protocolID)
        return P2PStream(stream: stream, protocolID: protocolID, connection: connection, leftover: leftover)
    }

    // MARK: - Connection manager

    private func connectionCountAboveHighWater() -> Bool {
        state.withLockedValue { $0.connectionCount } > connectionManager.configuration.highWater
    }

    /// Runs the connection manager's check every `checkInterval` until shutdown.
    private func startMaintenance() {
        let interval = connectionManager.configuration.checkInterval
        let task = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                guard let self, !Task.isCancelled else { return }
                await self.trimConnections()
            }
        }
        state.withLockedValue { s in
            if s.shuttingDown { task.cancel() } else { s.maintenance = task }
        }
    }

    /// A trim soon, at most one a second (a burst of new connections triggers one).
    private func scheduleTrim() {
        let now = ContinuousClock.now
        let due = state.withLockedValue { s -> Bool in
            if let last = s.lastTrimCheck, now - last < .seconds(1) { return false }
            s.lastTrimCheck = now
            return true
        }
        guard due else { return }
        track { [weak self] in await self?.trimConnections() }
    }

    /// Closes the connections the connection manager picks: idle ones, and above the high
    /// watermark the least useful ones. Returns how many it closed.
    @discardableResult
    public func trimConnections() async -> Int {
        let connections = allConnections.filter { !$0.isClosed }
        let candidates = connections.map {
            ConnectionManager.Candidate(
                id: $0.id, peer: $0.remotePeer, openedAt: $0.openedAt, streams: $0.streamCount,
                lastActivity: $0.lastStreamActivity)
        }
        let chosen = connectionManager.selectToClose(candidates, now: .now)
        guard !chosen.isEmpty else { return 0 }
        let byID = Dictionary(connections.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        await withTaskGroup(of: Void.self) { group in
            for (id, reason) in chosen {
                guard let connection = byID[id] else { continue }
                metrics.connectionTrimmed(reason)
                logger.debug(
                    "closing connection",
                    metadata: [
                        "reason": "\(reason.rawValue)", "peer": "\(connection.remotePeer)",
                        "remote_address": "\(connection.remoteAddress)",
                    ])
                group.addTask { await connection.close(graceful: false) }
            }
        }
        return chosen.count
    }

    /// multistream-select on a new stream, continuing `negotiator` (started, its first bytes
    /// sent), bounded by `timeout`: a timer on the stream's event loop resets the stream (cheaper
    /// than a task group per stream on this hot path).
    static func negotiate(
        _ stream: YamuxStream, continuing negotiator: MultistreamNegotiator, timeout: Duration
    ) async throws -> (protocol: String, leftover: ByteBuffer) {
        let timedOut = NIOLockedValueBox(false)
        let timer = stream.eventLoop.scheduleTask(in: TimeAmount(timeout)) {
            timedOut.withLockedValue { $0 = true }
            stream.reset()
        }
        defer { timer.cancel() }
        do {
            return try await MultistreamNegotiator.negotiate(
                continuing: negotiator, write: { try await stream.write($0) }, read: { try await stream.read() })
        } catch {
            if timedOut.withLockedValue({ $0 }) {
                throw HostError(.timeout, "protocol negotiation timed out after \(timeout)", underlying: [error])
            }
            throw error
        }
    }
}

extension P2PHost: Service {
    /// Runs the host as a ServiceLifecycle `Service`: starts it (services, listeners), serves
    /// until graceful shutdown is requested (or the task is cancelled), then shuts down gracefully
    /// (open streams get `shutdownGracePeriod`).
    public func run() async throws {
        try await start()
        // Returns on graceful shutdown; throws CancellationError when cancelled. Either way: stop.
        try? await gracefulShutdown()
        await shutdown()
    }
}
