import Basics
import Identity
import LibP2P
import Multiformats
import NIOConcurrencyHelpers
import NIOCore
import PointSubCore

/// Named routes to peers, and request/response over them: `dispatch` sends a message to one
/// route and returns its reply, `dispatchAll` sends to every route at once and returns a result
/// per name. Peers answer with the handler given to `handle` (served on `configuration.protocolID`
/// once `start()` is called). See docs/ROUTES.md.
///
/// Concurrency: every method may be called from any task at any time. The table's lock only
/// guards its bookkeeping and is never held across I/O or an `await` (the design this replaces
/// held its lock while dialing, and its broadcast took the lock again: it deadlocked). A route
/// deleted while a dispatch to it runs does not disturb that dispatch; the connection it dialed
/// is closed when the last such dispatch ends.
///
/// Connections: a dispatch connects through the host, so an open connection to the peer
/// (dialed by anyone, or inbound) is reused. The table only ever closes connections its own
/// dispatches dialed — in `.short` mode after the exchange, in `.persistent` mode when the
/// route is deleted or the table closed — gracefully, so that streams of other protocols on them
/// get `closeGracePeriod` to finish.
public final class RouteTable: Sendable {
    /// Answers an incoming dispatch: the reply, or an error the sender gets as `.remote(.handler)`
    /// with the error's text.
    public typealias Handler = @Sendable (Sender, ByteBuffer) async throws -> ByteBuffer

    /// Who sent an incoming dispatch.
    public struct Sender: Sendable, Hashable, CustomStringConvertible {
        /// Authenticated by the connection's Noise handshake.
        public var peer: PeerID
        /// The name of our own route to that peer, if we have one.
        public var route: String?

        public var description: String { route ?? peer.b58String }
    }

    private struct State {
        var closed = false
        var registry = RouteRegistry()
        var handler: Handler?
        var server: PointSubServer?
        /// Dispatches running, per peer.
        var inFlight: [PeerID: Int] = [:]
        /// Connections our dispatches dialed and we have not closed yet, per peer.
        var dialed: [PeerID: [Connection]] = [:]
        /// Peers whose dialed connections we are closing (how many closes run), and the
        /// dispatches waiting for that to end: a dispatch must not pick a connection that is
        /// going away (the host would hand it out until the close completes).
        var closing: [PeerID: (count: Int, waiters: [CheckedContinuation<Void, Never>])] = [:]
        var stats = Statistics()
    }

    /// Thrown by the server side when no handler is installed.
    private struct NoHandler: Error, CustomStringConvertible {
        var description: String { "no route handler is installed on this peer" }
    }

    public let host: P2PHost
    public let configuration: Configuration
    private let client: PointSubClient
    private let serverConfiguration: PointSubServer.Configuration
    private let state = NIOLockedValueBox(State())

    /// Throws `.invalidConfiguration` for an unusable configuration.
    public init(host: P2PHost, configuration: Configuration = .defaults) throws(RouteError) {
        try configuration.validate()
        self.host = host
        self.configuration = configuration
        let clientConfiguration = PointSubClient.Configuration.defaults {
            $0.requestTimeout = configuration.timeout
            $0.connectTimeout = configuration.timeout
            $0.maxRetries = configuration.maxRetries
            $0.retryInterval = configuration.retryInterval
            $0.maxBlockSize = configuration.maxMessageSize
            // Short mode: no stream outlives its exchange (the connection is closed after it).
            $0.maxIdleStreams = configuration.mode == .persistent ? 16 : 0
        }
        self.serverConfiguration = .defaults {
            $0.maxBlockSize = configuration.maxMessageSize
            $0.handlerTimeout = configuration.handlerTimeout
        }
        do throws(PointSubError) {
            try serverConfiguration.validate()
            self.client = try PointSubClient(host: host, configuration: clientConfiguration)
        } catch {
            throw RouteError(.invalidConfiguration, "the PointSub client or server configuration is invalid", cause: error)
        }
    }

    // MARK: - Routes

    /// Adds a route to the peer at `address` (ending in `/p2p/<peer id>`). No I/O: the peer is
    /// dialed by the first dispatch. Throws `.invalidName`, `.invalidAddress`, `.selfRoute`,
    /// `.duplicateName`, `.duplicateAddress` (a route to the same peer ID exists), `.closed`.
    @discardableResult
    public func addRoute(_ name: String, address: Multiaddr) throws(RouteError) -> Route {
        let route = try Route(name: name, address: address, localPeer: host.peerID)
        let refusal = state.withLockedValue { s -> RouteError? in
            guard !s.closed else { return Self.closedError }
            do throws(RouteError) {
                try s.registry.add(route)
                return nil
            } catch {
                return error
            }
        }
        if let refusal { throw refusal }
        // In persistent mode the table keeps its connections open between dispatches: the host's
        // connection manager must not close them as idle or trim them.
        if configuration.mode == .persistent { host.connectionManager.protect(route.peer, tag: Self.connectionManagerTag) }
        return route
    }

    /// The connection manager's protection tag for route peers (persistent mode).
    static let connectionManagerTag = "routes"


    /// `addRoute` with the address as text; a text that is no multiaddr is `.invalidAddress`.
    @discardableResult
    public func addRoute(_ name: String, address: String) throws(RouteError) -> Route {
        let parsed: Multiaddr
        do {
            parsed = try Multiaddr(address)
        } catch {
            throw RouteError(.invalidAddress, "\(address) is not a multiaddr", route: name, cause: error)
        }
        return try addRoute(name, address: parsed)
    }

    /// Removes the route and returns it; throws `.unknownRoute` (or `.closed`). Dispatches to it
    /// that are running finish normally. If none is, a connection the table dialed to the peer
    /// is closed before this returns; otherwise the last of them closes it.
    @discardableResult
    public func deleteRoute(_ name: String) async throws(RouteError) -> Route {
        let outcome = state.withLockedValue { s -> Result<(Route, [Connection]), RouteError> in
            guard !s.closed else { return .failure(Self.closedError) }
            guard let route = s.registry.remove(name) else {
                return .failure(RouteError(.unknownRoute, "no route named \(name)", route: name))
            }
            guard s.inFlight[route.peer] == nil else { return .success((route, [])) }
            return .success((route, Self.takeDialed(&s, peer: route.peer)))
        }
        let (route, connections) = try outcome.get()
        host.connectionManager.unprotect(route.peer, tag: Self.connectionManagerTag)
        await close(connections, to: route.peer)
        return route
    }

    /// The routes, sorted by name.
    public func routes() -> [Route] {
        state.withLockedValue { $0.registry.routes }
    }

    public func route(named name: String) -> Route? {
        state.withLockedValue { $0.registry.route(named: name) }
    }

    // MARK: - Dispatching

    /// Sends `message` to the route `name` and returns the reply. `deadline` (default:
    /// `configuration.timeout` from now) bounds connecting and the exchange. Throws `.unknownRoute`,
    /// `.closed`, or how the dispatch failed (`.timeout`, `.connectionFailed`,
    /// `.remote(code)`, …, with the `PointSubError` as `cause`, except for `.remote`).
    public func dispatch(_ name: String, _ message: ByteBuffer, deadline: Deadline? = nil) async throws(RouteError) -> ByteBuffer {
        let route = try begin(name)
        switch await run(route, message, deadline: deadline ?? .after(configuration.timeout)) {
        case .success(let reply): return reply
        case .failure(let error): throw error
        }
    }

    /// Sends `message` to every route at once and returns each route's reply or error, by name.
    /// Every route's exchange runs until `deadline` (default: `configuration.timeout` from now),
    /// so a dead or slow peer fails only its own entry and the call ends about then (plus, in
    /// `.short` mode, closing connections). Routes added meanwhile are not included. Throws only
    /// `.closed`.
    public func dispatchAll(
        _ message: ByteBuffer, deadline: Deadline? = nil
    ) async throws(RouteError) -> [String: Result<ByteBuffer, RouteError>] {
        let routes = try beginAll()
        let deadline = deadline ?? .after(configuration.timeout)
        return await withTaskGroup(of: (String, Result<ByteBuffer, RouteError>).self) { group in
            for route in routes {
                group.addTask { (route.name, await self.run(route, message, deadline: deadline)) }
            }
            var results: [String: Result<ByteBuffer, RouteError>] = [:]
            for await (name, result) in group { results[name] = result }
            return results
        }
    }

    /// Looks the route up and counts the dispatch as running (in one step, so that a concurrent
    /// `deleteRoute` sees it).
    private func begin(_ name: String) throws(RouteError) -> Route {
        let outcome = state.withLockedValue { s -> Result<Route, RouteError> in
            guard !s.closed else { return .failure(Self.closedError) }
            guard let route = s.registry.route(named: name) else {
                return .failure(RouteError(.unknownRoute, "no route named \(name)", route: name))
            }
            s.inFlight[route.peer, default: 0] += 1
            s.stats.dispatches += 1
            return .success(route)
        }
        return try outcome.get()
    }

    private func beginAll() throws(RouteError) -> [Route] {
        let outcome = state.withLockedValue { s -> Result<[Route], RouteError> in
            guard !s.closed else { return .failure(Self.closedError) }
            let routes = s.registry.routes
            for route in routes { s.inFlight[route.peer, default: 0] += 1 }
            s.stats.dispatches += routes.count
            return .success(routes)
        }
        return try outcome.get()
    }

    /// One exchange with a route counted as running by `begin`; always ends it with `end`.
    private func run(_ route: Route, _ message: ByteBuffer, deadline: Deadline) async -> Result<ByteBuffer, RouteError> {
        let result = await exchange(route, message, deadline: deadline)
        await end(route, succeeded: (try? result.get()) != nil)
        return result
    }

    /// Waits out a close of our connections to the peer, connects if needed, and sends.
    private func exchange(_ route: Route, _ message: ByteBuffer, deadline: Deadline) async -> Result<ByteBuffer, RouteError> {
        await waitWhileClosing(route.peer)
        if let failure = await connect(route, deadline: deadline) { return .failure(failure) }
        guard !deadline.hasPassed else {
            return .failure(RouteError(.timeout, "dispatch to \(route.name): no time left to send", route: route.name))
        }
        // Any open connection to the peer serves (the client takes the host's oldest). If it
        // closed meanwhile, the client dials again: that connection is ours as well.
        let before = Set(host.connections(to: route.peer).map(\.id))
        let result = await send(message, to: route, deadline: deadline)
        let dialed = host.connections(to: route.peer).filter { !before.contains($0.id) }
        if !dialed.isEmpty { record(dialed) }
        return result
    }

    private func send(_ message: ByteBuffer, to route: Route, deadline: Deadline) async -> Result<ByteBuffer, RouteError> {
        do throws(PointSubError) {
            return .success(try await client.send(message, to: route.peer, protocol: configuration.protocolID, deadline: deadline))
        } catch {
            return .failure(RouteError(dispatchFailure: error, route: route.name))
        }
    }

    /// Makes sure a connection to the route's peer is open, dialing it if none is, before
    /// `deadline`; a refused dial is retried (`maxRetries`, `retryInterval`). Returns the
    /// failure, if any. The dial runs in a task of its own that outlives a deadline: a
    /// connection it opens late is still recorded as the table's (and closed if no longer
    /// wanted), so none leaks.
    private func connect(_ route: Route, deadline: Deadline) async -> RouteError? {
        var attempt = 0
        while true {
            guard host.connections(to: route.peer).isEmpty else { return nil }
            let dial = Task { [self] in
                let connection = try await host.connect(to: route.peer, addresses: [route.address])
                await adopt(connection)
                return connection
            }
            let failure: any Error
            do {
                // Awaiting the dial's value does not cancel the dial when the deadline passes.
                _ = try await withDeadline(
                    deadline, on: host.eventLoopGroup.next(),
                    onTimeout: { RouteError(.timeout, "dispatch to \(route.name): connecting took too long", route: route.name) }
                ) { try await dial.value }
                return nil
            } catch let error as RouteError {
                return error
            } catch is CancellationError {
                return RouteError(.cancelled, "dispatch to \(route.name) was cancelled", route: route.name)
            } catch {
                failure = error
            }
            attempt += 1
            guard attempt <= configuration.maxRetries, Deadline.after(configuration.retryInterval) < deadline,
                !Task.isCancelled
            else {
                return RouteError(
                    .connectionFailed, "dispatch to \(route.name): could not connect to \(route.address)",
                    route: route.name, cause: failure)
            }
            try? await Task.sleep(for: configuration.retryInterval)
        }
    }

    /// Counts the dispatch as ended; when it was the last one to the peer, closes the
    /// connections the table dialed to it unless they are to be kept.
    private func end(_ route: Route, succeeded: Bool) async {
        let peer = route.peer
        let toClose = state.withLockedValue { s -> [Connection] in
            if succeeded { s.stats.replies += 1 } else { s.stats.failures += 1 }
            let running = (s.inFlight[peer] ?? 1) - 1
            s.inFlight[peer] = running == 0 ? nil : running
            guard running == 0, !keepsConnections(s, to: peer) else { return [] }
            return Self.takeDialed(&s, peer: peer)
        }
        await close(toClose, to: peer)
    }

    /// Records connections our dials opened. Only outbound ones: we dial only when the peer has
    /// no open connection, so the one the host returns is the one we dialed — unless the
    /// application dialed the same peer at the same instant, which shares the host's dial and
    /// cannot be told apart.
    private func record(_ connections: [Connection]) {
        state.withLockedValue { s in
            for connection in connections where connection.direction == .outbound {
                let peer = connection.remotePeer
                var known = (s.dialed[peer] ?? []).filter { !$0.isClosed }
                if !known.contains(connection) {
                    known.append(connection)
                    s.stats.connectionsDialed += 1
                }
                s.dialed[peer] = known
            }
        }
    }

    /// Records a connection one of our dials opened. When no dispatch to the peer runs any more
    /// (the dial outlived its dispatch) and it is not to be kept, closes it at once.
    private func adopt(_ connection: Connection) async {
        guard connection.direction == .outbound else { return }
        record([connection])
        let peer = connection.remotePeer
        let toClose = state.withLockedValue { s -> [Connection] in
            guard s.inFlight[peer] == nil, !keepsConnections(s, to: peer) else { return [] }
            return Self.takeDialed(&s, peer: peer)
        }
        await close(toClose, to: peer)
    }

    /// Whether the connections to `peer` stay open with no dispatch running: in persistent mode,
    /// while the table is open and has a route to the peer.
    private func keepsConnections(_ s: State, to peer: PeerID) -> Bool {
        configuration.mode == .persistent && !s.closed && s.registry.route(to: peer) != nil
    }

    /// Takes the connections dialed to `peer` for closing; if there are any, marks the peer as
    /// closing until `close(_:to:)` is done with them.
    private static func takeDialed(_ s: inout State, peer: PeerID) -> [Connection] {
        guard let connections = s.dialed.removeValue(forKey: peer), !connections.isEmpty else { return [] }
        s.closing[peer, default: (0, [])].count += 1
        return connections
    }

    /// Closes connections taken by `takeDialed`, gracefully; our idle pooled streams on them go
    /// first so that only other users' streams can make the close wait. Then lets the
    /// dispatches waiting for the peer go on.
    private func close(_ connections: [Connection], to peer: PeerID) async {
        guard !connections.isEmpty else { return }
        await client.closeIdleStreams(to: peer)
        let deadline = Deadline.after(configuration.closeGracePeriod)
        await withTaskGroup(of: Void.self) { group in
            for connection in connections {
                group.addTask { await connection.close(graceful: true, deadline: deadline) }
            }
        }
        let waiters = state.withLockedValue { s -> [CheckedContinuation<Void, Never>] in
            s.stats.connectionsClosed += connections.count
            guard var entry = s.closing[peer] else { return [] }
            entry.count -= 1
            guard entry.count == 0 else {
                s.closing[peer] = entry
                return []
            }
            s.closing[peer] = nil
            return entry.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once no close of connections to `peer` is running (at once, mostly). Bounded by
    /// `closeGracePeriod`, the longest a close takes.
    private func waitWhileClosing(_ peer: PeerID) async {
        guard state.withLockedValue({ $0.closing[peer] != nil }) else { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let wait = state.withLockedValue { s -> Bool in
                guard s.closing[peer] != nil else { return false }
                s.closing[peer]!.waiters.append(continuation)
                return true
            }
            if !wait { continuation.resume() }
        }
    }

    // MARK: - Serving

    /// Sets (or replaces) the handler that answers incoming dispatches. Until one is set, a
    /// dispatch to this peer gets `.remote(.handler)`.
    public func handle(_ handler: @escaping Handler) {
        state.withLockedValue { $0.handler = handler }
    }

    /// Serves incoming dispatches on `configuration.protocolID`. Calling it again while serving
    /// does nothing; after `stop()` it serves again. Throws `.protocolInUse` when another handler
    /// on the host has the protocol, `.closed` after `close()`.
    public func start() throws(RouteError) {
        let outcome = state.withLockedValue { s -> Result<PointSubServer?, RouteError> in
            guard !s.closed else { return .failure(Self.closedError) }
            guard s.server == nil else { return .success(nil) }
            do throws(PointSubError) {
                let server = try PointSubServer(host: host, configuration: serverConfiguration)
                s.server = server
                return .success(server)
            } catch {
                return .failure(RouteError(.invalidConfiguration, "the PointSub server configuration is invalid", cause: error))
            }
        }
        guard let server = try outcome.get() else { return }
        do throws(PointSubError) {
            try server.start(configuration.protocolID) { [weak self] request in
                guard let self else { throw NoHandler() }
                return try await self.serve(request)
            }
        } catch {
            state.withLockedValue { s in
                if s.server === server { s.server = nil }
            }
            throw RouteError(.protocolInUse, "cannot serve \(configuration.protocolID)", cause: error)
        }
    }

    private func serve(_ request: PointSubRequest) async throws -> ByteBuffer {
        let (handler, name) = state.withLockedValue { s in
            s.stats.handled += 1
            return (s.handler, s.registry.route(to: request.peer)?.name)
        }
        guard let handler else { throw NoHandler() }
        return try await handler(Sender(peer: request.peer, route: name), request.payload)
    }

    /// Stops serving: no new incoming dispatch is accepted; those being handled get up to
    /// `closeGracePeriod`. Dispatching to others goes on working.
    public func stop() async {
        let server = state.withLockedValue { s in
            defer { s.server = nil }
            return s.server
        }
        await server?.stop(gracePeriod: configuration.closeGracePeriod)
    }

    /// Stops serving, forgets the routes, closes the connections the table dialed, and waits
    /// (at most `timeout` + `closeGracePeriod`) for running dispatches to end; later calls
    /// throw `.closed`. Safe to call more than once.
    public func close() async {
        let (server, idle) = state.withLockedValue { s -> (PointSubServer?, [PeerID: [Connection]]) in
            guard !s.closed else { return (nil, [:]) }
            s.closed = true
            for route in s.registry.routes { host.connectionManager.unprotect(route.peer, tag: Self.connectionManagerTag) }
            s.registry.removeAll()
            // Connections of peers with dispatches running are closed by the last of those.
            var idle: [PeerID: [Connection]] = [:]
            for peer in Array(s.dialed.keys) where s.inFlight[peer] == nil {
                idle[peer] = Self.takeDialed(&s, peer: peer)
            }
            defer { s.server = nil }
            return (s.server, idle)
        }
        await server?.stop(gracePeriod: configuration.closeGracePeriod)
        await withTaskGroup(of: Void.self) { group in
            for (peer, connections) in idle { group.addTask { await self.close(connections, to: peer) } }
        }
        let deadline = Deadline.after(configuration.timeout + configuration.closeGracePeriod)
        while !deadline.hasPassed, state.withLockedValue({ !$0.inFlight.isEmpty }) {
            try? await Task.sleep(for: .milliseconds(5))
        }
        await client.close()
    }

    // MARK: - Introspection

    public var statistics: Statistics { state.withLockedValue { $0.stats } }

    /// Whether `start()` is in effect.
    public var isServing: Bool { state.withLockedValue { $0.server != nil } }

    private static var closedError: RouteError { RouteError(.closed, "the route table is closed") }
}
