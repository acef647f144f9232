import Basics
import Identity
import Logging
import Multiformats
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import DNS
import Resources
import Transport

/// What the swarm tells its host.
enum SwarmEvent: Sendable {
    /// A connection finished its upgrade and is registered; `isFirst`: the first to its peer.
    case opened(Connection, isFirst: Bool)
    /// A connection ended (`error`: why, when not a clean close); `wasLast`: its peer has none left.
    case closed(Connection, error: (any Error)?, wasLast: Bool)
    /// An inbound connection failed its upgrade.
    case inboundUpgradeFailed(remoteAddress: Multiaddr?, error: any Error)
}

/// The connection layer under a host, as rust-libp2p's and go-libp2p's swarms: the transports and
/// their listeners, the upgrader (security, then muxer), dialing (address ranking, staggered
/// parallel dials, one dial per peer at a time), the registry of open connections, and the
/// connection limits (resource accounting before a byte is read, trimming by the connection
/// manager). It knows nothing of protocols: the host serves the streams of the connections it
/// reports.
final class Swarm: Sendable {
    private struct State {
        var shuttingDown = false
        var listeners: [any TransportListener] = []
        var connections: [PeerID: [Connection]] = [:]
        var dials: [PeerID: Task<Connection, any Error>] = [:]
        var nextConnectionID: UInt64 = 1
        var lastTrimCheck: ContinuousClock.Instant?
        /// Remote addresses whose inbound connections run the handshake as the initiator, with
        /// the peer expected there, and how many expectations hold each (see
        /// `expectInboundAsInitiator`).
        var inboundAsInitiator: [Multiaddr: (peer: PeerID, holds: Int)] = [:]

        var connectionCount: Int { connections.values.reduce(0) { $0 + $1.count } }
    }

    let localPeer: PeerID
    let configuration: P2PHost.Configuration
    let peerstore: Peerstore
    let resourceManager: ResourceManager
    let connectionManager: ConnectionManager
    private let transports: [any Transport]
    private let upgrader: Upgrader
    private let metrics: HostMetrics
    private let remoteLog: RateLimitedLogger
    private let state = NIOLockedValueBox(State())
    /// Where events go (the host); set once, right after the host is initialised.
    private let sink = NIOLockedValueBox<(@Sendable (SwarmEvent) -> Void)?>(nil)
    private var logger: Logger { configuration.logger }

    init(
        identity: PrivateKey, configuration: P2PHost.Configuration, eventLoopGroup: any EventLoopGroup,
        peerstore: Peerstore, resourceManager: ResourceManager, connectionManager: ConnectionManager,
        metrics: HostMetrics
    ) {
        self.localPeer = PeerID(publicKey: identity.publicKey)
        self.configuration = configuration
        self.peerstore = peerstore
        self.resourceManager = resourceManager
        self.connectionManager = connectionManager
        self.metrics = metrics
        self.remoteLog = RateLimitedLogger(configuration.logger)
        self.transports = configuration.transports.map { $0.build(on: eventLoopGroup) }
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
            security: security, yamux: configuration.yamux, timeout: configuration.handshakeTimeout,
            metrics: metrics)
    }

    /// Sets where events go. Called once.
    func setEventSink(_ sink: @escaping @Sendable (SwarmEvent) -> Void) {
        self.sink.withLockedValue { $0 = sink }
    }

    private func report(_ event: SwarmEvent) {
        sink.withLockedValue { $0 }?(event)
    }

    var isShuttingDown: Bool { state.withLockedValue { $0.shuttingDown } }

    func checkRunning() throws {
        if isShuttingDown { throw HostError(.shutDown, "the host is shut down") }
    }

    // MARK: - Listening

    /// Listens on `address` with the first transport that handles it; returns the bound address.
    func listen(on address: Multiaddr) async throws -> Multiaddr {
        try checkRunning()
        guard let transport = transports.first(where: { $0.canListen(address) }) else {
            throw HostError(.invalidAddress, "no transport can listen on \(address)")
        }
        // What a transport buffers for a connection before the swarm has its scope (the WebSocket
        // upgrade request) is charged to the "transport" service scope; acceptInbound then
        // assigns the connection's own scope.
        let handshakes = resourceManager.serviceScope("transport")
        let options = ListenOptions(memory: { _ in TransportMemory(handshakes) })
        let listener = try await transport.listen(on: address, options: options) { [weak self] channel, remote in
            guard let self else { return channel.close() }
            return self.acceptInbound(channel, from: remote)
        }
        let closeNow = state.withLockedValue { s -> Bool in
            if s.shuttingDown { return true }
            s.listeners.append(listener)
            return false
        }
        if closeNow {
            await listener.close()
            throw HostError(.shutDown, "the host shut down while listening on \(address)")
        }
        logger.info("listening", metadata: ["address": "\(listener.address)"])
        return listener.address
    }

    /// Bound listen addresses; wildcard addresses expanded to this machine's interfaces.
    var listenAddresses: [Multiaddr] {
        let bound = state.withLockedValue { $0.listeners.map(\.address) }
        // A bare `/p2p-circuit` listener (the relay client's) has no address of its own to give:
        // its addresses are the reservations' (`<relay>/p2p-circuit`).
        return bound.filter { $0.components.first != .p2pCircuit }.flatMap { Self.expandWildcard($0) }
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

    // MARK: - Registry

    /// The open connections to `peer`, direct ones before limited (relayed) ones, so that a
    /// stream goes over a direct connection whenever there is one.
    func connections(to peer: PeerID) -> [Connection] {
        let open = state.withLockedValue { $0.connections[peer] ?? [] }.filter { !$0.isClosed }
        // On every stream's path: reorder only when a relayed connection is there.
        guard open.count > 1, open.contains(where: \.isLimited) else { return open }
        return open.filter { !$0.isLimited } + open.filter(\.isLimited)
    }

    var connectedPeers: [PeerID] { state.withLockedValue { Array($0.connections.keys) } }

    var allConnections: [Connection] { state.withLockedValue { $0.connections.values.flatMap { $0 } } }

    // MARK: - Dialing

    /// An open connection to `peer`, or a new one. Concurrent callers share one dial.
    ///
    /// A relayed (limited) connection is used like any other, unless `tryDirect`: then, with
    /// only a relayed connection open, the peer's direct addresses are dialed (and the relayed
    /// connection returned if none answers). Making relayed connections direct is otherwise
    /// DCUtR's work: a direct dial on every stream would wait out a NAT's silence each time.
    func connect(to peer: PeerID, tryDirect: Bool = false) async throws -> Connection {
        guard peer != localPeer else { throw HostError(.dialSelf, "refusing to dial ourselves (\(peer))") }
        try checkRunning()
        let existing = connections(to: peer)
        if let direct = existing.first, !direct.isLimited { return direct }
        let relayed = existing.first
        if let relayed, !tryDirect || !peerstore.addresses(for: peer).contains(where: { !$0.isCircuit }) { return relayed }
        let task = try state.withLockedValue { s -> Task<Connection, any Error> in
            guard !s.shuttingDown else { throw HostError(.shutDown, "the host is shut down") }
            if let inFlight = s.dials[peer] { return inFlight }
            // Owned by the registry: shutdown cancels it; it removes itself when done.
            let task = Task { [self] in
                defer { _ = state.withLockedValue { $0.dials.removeValue(forKey: peer) } }
                return try await dialRanked(peer, directOnly: relayed != nil)
            }
            s.dials[peer] = task
            return task
        }
        do {
            return try await task.value
        } catch {
            if let relayed, !relayed.isClosed { return relayed }
            throw error
        }
    }

    /// Dials `peer`'s known addresses, best first, staggered (see `DialRanker`): the first
    /// connection wins and the other attempts are cancelled (their channels closed at once).
    private func dialRanked(_ peer: PeerID, directOnly: Bool = false) async throws -> Connection {
        let candidates = await resolveDNSAddr(peerstore.addresses(for: peer), for: peer).filter { address in
            (!directOnly || !address.isCircuit) && transports.contains { $0.canDial(address) }
        }
        guard !candidates.isEmpty else {
            throw HostError(.noAddresses, "no dialable address known for \(peer)")
        }
        let ranker = configuration.dialRanker
        var schedule = DialSchedule(ranker.rank(candidates), maxParallel: ranker.maxParallelDials, start: .now)
        enum Outcome: Sendable {
            case connected(Connection)
            case failed(Multiaddr, any Error)
            case wake
        }
        return try await withThrowingTaskGroup(of: Outcome.self) { group in
            var errors: [any Error] = []
            var timerArmed = false
            while true {
                for address in schedule.due(now: .now) {
                    group.addTask { [self] in
                        do {
                            return .connected(try await dial(address, expectedPeer: peer))
                        } catch {
                            return .failed(address, error)
                        }
                    }
                }
                if !timerArmed, let next = schedule.nextStart {
                    timerArmed = true
                    group.addTask {
                        try? await Task.sleep(until: next, clock: .continuous)
                        return .wake
                    }
                }
                guard let outcome = try await group.next() else { break }
                switch outcome {
                case .connected(let connection):
                    group.cancelAll()
                    return connection
                case .failed(let address, let error):
                    logger.debug("dial failed", metadata: ["address": "\(address)", "error": "\(error)"])
                    errors.append(error)
                    schedule.failed(now: .now)
                    if Task.isCancelled || schedule.isExhausted {
                        group.cancelAll()
                        if errors.count == 1, let only = errors.first as? HostError, only.code == .dialTimeout {
                            throw only
                        }
                        throw HostError(.dialFailed, "could not connect to \(peer)", causes: errors)
                    }
                case .wake:
                    timerArmed = false
                }
            }
            throw HostError(.dialFailed, "could not connect to \(peer)", causes: errors)
        }
    }

    /// `addresses` with every `/dnsaddr` one replaced by what it resolves to (for `peer`, when
    /// known); one that fails to resolve is dropped (and logged).
    func resolveDNSAddr(_ addresses: [Multiaddr], for peer: PeerID?) async -> [Multiaddr] {
        guard let resolver = configuration.dnsaddrResolver,
            addresses.contains(where: { if case .dnsaddr = $0.components.first { true } else { false } })
        else { return addresses }
        var out: [Multiaddr] = []
        for address in addresses {
            guard case .dnsaddr = address.components.first else {
                out.append(address)
                continue
            }
            var query = address.removingPeerID()
            if let peer { query = query.appending(peerID: peer) }
            do {
                out += try await resolver.resolve(query).map { $0.removingPeerID() }
            } catch {
                logger.debug("dnsaddr resolution failed", metadata: ["address": "\(address)", "error": "\(error)"])
            }
        }
        return out
    }

    /// Dials one address and upgrades the connection; registers it. Cancelling the calling task
    /// closes the channel, which ends the connect or the upgrade at once.
    /// `localPort` dials from that port (shared with our listener: hole punching); `asResponder`
    /// runs the upgrade as the responder although we dialed (a TCP simultaneous open, where
    /// DCUtR decides the roles), and then requires the remote to be `expectedPeer`.
    func dial(
        _ address: Multiaddr, expectedPeer: PeerID?, localPort: UInt16? = nil, asResponder: Bool = false
    ) async throws -> Connection {
        if case .dnsaddr = address.components.first {
            // Only through `connect(to:)` without a peer ID: the first address it resolves to.
            guard let resolved = await resolveDNSAddr([address], for: address.peerID).first else {
                throw HostError(.noAddresses, "\(address) resolved to no address")
            }
            return try await dial(resolved, expectedPeer: expectedPeer, localPort: localPort, asResponder: asResponder)
        }
        let plain = address.removingPeerID()
        guard let transport = transports.first(where: { $0.canDial(plain) }) else {
            throw HostError(.invalidAddress, "no transport for \(address)")
        }
        // The dial's whole budget is one deadline, enforced on the event loop: by the transport
        // (the TCP connect timeout) and by the upgrader, which starts in the initializer (no task
        // group on this hot path).
        let deadline = Deadline.after(configuration.dialTimeout)
        let upgrader = self.upgrader
        let upgrade = NIOLockedValueBox<EventLoopFuture<Upgrader.Result>?>(nil)
        let cancellation = DialCancellation()
        let scope: ConnectionScope
        do {
            scope = try resourceManager.openConnection(direction: .outbound)
            try Self.reserveSecurityBuffers(in: scope)
        } catch {
            throw HostError(.limitReached, "cannot dial \(address)", cause: error)
        }
        let channel: Channel
        do {
            var options = DialOptions(
                deadline: deadline, sourceAddress: configuration.dialSourceAddress, memory: TransportMemory(scope),
                fullAddress: address.peerID == nil ? expectedPeer.map { address.appending(peerID: $0) } ?? address : address)
            options.localPort = localPort
            let role: Upgrader.Role = asResponder ? .responder : .initiator(expectedPeer: expectedPeer)
            channel = try await withTaskCancellationHandler {
                try await transport.dial(plain, options: options) { channel in
                    cancellation.attach(channel)
                    upgrade.withLockedValue {
                        $0 = upgrader.upgrade(channel: channel, role: role, deadline: deadline, resourceScope: scope)
                    }
                    return channel.eventLoop.makeSucceededVoidFuture()
                }
            } onCancel: {
                cancellation.cancel()
            }
        } catch let error as TransportError where error.code == .dialTimeout {
            scope.done()
            throw HostError(.dialTimeout, "dialing \(address) timed out after \(configuration.dialTimeout)", cause: error)
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
            if cancellation.isCancelled { throw CancellationError() }
            throw error
        }
        let result: Upgrader.Result
        do {
            result = try await withTaskCancellationHandler {
                try await upgrade.withLockedValue { $0! }.get()
            } onCancel: {
                cancellation.cancel()
            }
        } catch let error as HostError where error.code == .dialTimeout {
            scope.done()
            metrics.handshakeFailed(.outbound, reason: "timeout")
            throw error
        } catch {
            scope.done()
            channel.close(promise: nil)
            if cancellation.isCancelled { throw CancellationError() }
            metrics.handshakeFailed(.outbound, reason: Upgrader.failureReason(error))
            throw HostError(.upgradeFailed, "upgrading the connection to \(address) failed", cause: error)
        }
        if result.remote.remotePeer == localPeer {
            scope.done()
            channel.close(promise: nil)
            throw HostError(.dialSelf, "\(address) is ourselves")
        }
        if asResponder, let expectedPeer, result.remote.remotePeer != expectedPeer {
            scope.done()
            channel.close(promise: nil)
            throw HostError(.upgradeFailed, "\(address) is \(result.remote.remotePeer), not \(expectedPeer)")
        }
        do {
            try scope.setPeer(result.remote.remotePeer.description)
        } catch {
            scope.done()
            channel.close(promise: nil)
            throw HostError(.limitReached, "connection to \(address) refused", cause: error)
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

    // MARK: - Accepting

    /// Until `end` is called, inbound connections from `addresses` (exact transport addresses,
    /// without `/p2p/`) run the security handshake as the initiator and must be `peer`. For a
    /// hole punch: the side that is the client of the direct connection may see the other
    /// side's dial arrive through its listener (no NAT in between), and must still be the client.
    func expectInboundAsInitiator(from addresses: [Multiaddr], peer: PeerID) {
        state.withLockedValue { s in
            for address in addresses {
                let holds = s.inboundAsInitiator[address]?.holds ?? 0
                s.inboundAsInitiator[address] = (peer, holds + 1)
            }
        }
    }

    /// Ends one `expectInboundAsInitiator(from:peer:)` for `addresses`.
    func endInboundAsInitiator(from addresses: [Multiaddr]) {
        state.withLockedValue { s in
            for address in addresses {
                guard let entry = s.inboundAsInitiator[address] else { continue }
                s.inboundAsInitiator[address] = entry.holds > 1 ? (entry.peer, entry.holds - 1) : nil
            }
        }
    }

    /// Runs on the accepted channel's event loop, before it is active. The connection is
    /// accounted before a byte is read: per source address (pending handshakes, connections,
    /// memory), then per peer once the security handshake names it.
    private func acceptInbound(_ channel: any Channel, from endpoint: RemoteEndpoint) -> EventLoopFuture<Void> {
        let remote = endpoint.address
        let remoteIP = endpoint.source
        guard !isShuttingDown else { return channel.close() }
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
        let expected = remote.flatMap { address in state.withLockedValue { $0.inboundAsInitiator[address]?.peer } }
        let role: Upgrader.Role = expected.map { .initiator(expectedPeer: $0) } ?? .responder
        upgrader.upgrade(channel: channel, role: role, resourceScope: scope).whenComplete { [self] result in
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
                report(.inboundUpgradeFailed(remoteAddress: remote, error: error))
            }
        }
        return channel.eventLoop.makeSucceededVoidFuture()
    }

    private func register(
        _ result: Upgrader.Result, channel: Channel, direction: Connection.Direction, remoteAddress: Multiaddr,
        scope: ConnectionScope
    ) throws -> Connection {
        let peer = result.remote.remotePeer
        let (connection, isFirst) = try state.withLockedValue { s in
            guard !s.shuttingDown else { throw HostError(.shutDown, "the host is shut down") }
            defer { s.nextConnectionID += 1 }
            let connection = Connection(
                id: s.nextConnectionID, remotePeer: peer, remotePublicKey: result.remote.remotePublicKey,
                direction: direction, localAddress: channel.localMultiaddr,
                remoteAddress: remoteAddress, session: result.session,
                negotiationTimeout: configuration.streamNegotiationTimeout, security: result.securityProtocol,
                resourceScope: scope, metrics: metrics)
            s.connections[peer, default: []].append(connection)
            return (connection, s.connections[peer]!.count == 1)
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
        report(.opened(connection, isFirst: isFirst))
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
        if wasLast { peerstore.updateAddressTTL(for: peer, to: .recentlyConnected) }
        report(.closed(connection, error: error, wasLast: wasLast))
    }

    // MARK: - Connection manager

    /// Whether a trim is due now: above the high watermark, at most one check a second (a burst
    /// of new connections triggers one).
    func isTrimDue() -> Bool {
        let now = ContinuousClock.now
        return state.withLockedValue { s -> Bool in
            guard s.connectionCount > connectionManager.configuration.highWater else { return false }
            if let last = s.lastTrimCheck, now - last < .seconds(1) { return false }
            s.lastTrimCheck = now
            return true
        }
    }

    /// Runs the connection manager's check every `checkInterval` until the task is cancelled.
    func maintain() async {
        let interval = connectionManager.configuration.checkInterval
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            guard !Task.isCancelled else { return }
            await trimConnections()
        }
    }

    /// Closes the connections the connection manager picks: idle ones, and above the high
    /// watermark the least useful ones. Returns how many it closed.
    @discardableResult
    func trimConnections() async -> Int {
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

    // MARK: - Shutdown

    /// Stops listening and dialing, then closes every connection (`grace`: how long open streams
    /// may finish). New connections are refused from the first moment.
    func shutdown(grace: Duration) async {
        let (listeners, connections, dials) = state.withLockedValue { s in
            defer {
                s.shuttingDown = true
                s.listeners = []
            }
            return (s.listeners, s.connections.values.flatMap { $0 }, Array(s.dials.values))
        }
        for listener in listeners { await listener.close() }
        for dial in dials { dial.cancel() }
        let deadline = Deadline.after(grace)
        await withTaskGroup(of: Void.self) { group in
            for connection in connections {
                group.addTask { await connection.close(graceful: true, deadline: deadline) }
            }
        }
    }
}

/// Lets a cancelled dial close its channel: the channel may not exist yet when the cancellation
/// comes (it is created by the transport), so whichever of the two comes second closes it.
private final class DialCancellation: Sendable {
    private enum State {
        case waiting
        case attached(any Channel)
        case cancelled
    }

    private let state = NIOLockedValueBox(State.waiting)

    var isCancelled: Bool {
        state.withLockedValue { if case .cancelled = $0 { true } else { false } }
    }

    /// The transport created the dial's channel.
    func attach(_ channel: any Channel) {
        let close = state.withLockedValue { s -> Bool in
            if case .cancelled = s { return true }
            s = .attached(channel)
            return false
        }
        if close { channel.close(promise: nil) }
    }

    /// The dialing task was cancelled.
    func cancel() {
        let channel = state.withLockedValue { s -> (any Channel)? in
            defer { s = .cancelled }
            if case .attached(let channel) = s { return channel }
            return nil
        }
        channel?.close(promise: nil)
    }
}
