import Logging
import Metrics
import NIOConcurrencyHelpers

/// Accounts for everything a remote peer can make us hold — connections, handshakes, streams and
/// memory — in nested scopes, in the spirit of go-libp2p's resource manager, and refuses what
/// would take any scope over its limit.
///
/// Scopes:
/// - **system**: everything.
/// - **transient**: connections whose peer is not known yet (still in the security handshake)
///   and streams whose protocol is not negotiated yet.
/// - **address**: one remote IP address (IPv4 /32, IPv6 /64), inbound connections: what one
///   source may hold, so that it cannot lock out the others.
/// - **peer**: one remote peer, once the security handshake names it.
/// - **connection**, **stream**: one each.
/// - **protocol**, **service**: streams by negotiated protocol, and services (`pointsub`,
///   `pubsub`) that hold memory of their own (decompression, queues).
///
/// Memory is *reserved before it is used*: a reservation in a stream counts against the
/// stream, its connection, the connection's peer (or transient) and address scopes, its protocol
/// and service, and the system; it fails as a whole if any of them would go over. Every refusal
/// is a ``ResourceError``, counted (`pointsub_resource_refusals_total{scope,resource}`) and logged
/// with the remote address at a bounded rate.
///
/// All accounting happens under one lock: reservations are made per window, per buffer or per
/// message, not per byte, so the lock is taken rarely compared to the work it guards.
public final class ResourceManager: Sendable {
    /// The limits in force.
    public let configuration: Configuration
    private let state: NIOLockedValueBox<State>
    private let refusalLog: RateLimitedLogger
    private let gauges: Gauges

    /// A manager enforcing `configuration`; refusals are logged to `logger` (rate-limited).
    public init(
        configuration: Configuration = .defaults,
        logger: Logger = Logger(label: "pointsub.resources", factory: { _ in SwiftLogNoOpLogHandler() })
    ) {
        self.configuration = configuration
        self.state = NIOLockedValueBox(State())
        self.refusalLog = RateLimitedLogger(logger)
        self.gauges = Gauges()
    }

    /// A manager that counts but never refuses.
    public static func unlimited() -> ResourceManager {
        ResourceManager(configuration: .unlimited)
    }

    // MARK: - Opening scopes

    /// Accounts for a new connection before anything is read from it. `remoteAddress`: the
    /// remote IP address of an inbound connection (its address scope); nil for outbound ones and
    /// transports without one. Inbound connections count as pending until
    /// ``ConnectionScope/markEstablished()``.
    public func openConnection(
        direction: ResourceDirection, remoteAddress: String? = nil
    ) throws(ResourceError) -> ConnectionScope {
        let addressKey = remoteAddress.map { ScopeKey.address(Self.addressBucket($0)) }
        let id = try withState { s throws(ResourceError) -> UInt64 in
            var keys: [ScopeKey] = [.system, .transient]
            if direction == .inbound, let addressKey { keys.append(addressKey) }
            for key in keys {
                try s.check(key, limits: configuration.limits(for: key)) { u in
                    direction == .inbound
                        ? [(.connectionsInbound, u.connectionsInbound + 1), (.connections, u.connections + 1),
                           (.pendingInbound, u.pendingInbound + 1)]
                        : [(.connectionsOutbound, u.connectionsOutbound + 1), (.connections, u.connections + 1)]
                }
            }
            for key in keys {
                s.update(key) { u in
                    if direction == .inbound {
                        u.connectionsInbound += 1
                        u.pendingInbound += 1
                    } else {
                        u.connectionsOutbound += 1
                    }
                }
            }
            let id = s.takeID()
            s.connections[id] = ConnectionRecord(
                direction: direction, address: direction == .inbound ? addressKey : nil,
                addressText: remoteAddress, pending: direction == .inbound)
            s.usage[.connection(id)] = ResourceUsage()
            return id
        } refused: { error in
            report(error, address: remoteAddress, peer: nil)
        }
        updateGauges()
        return ConnectionScope(manager: self, id: id)
    }

    /// A memory account for a service (e.g. `pointsub` for decompression output in flight,
    /// `pubsub` for queues): counts against the service scope and the system.
    public func serviceScope(_ name: String) -> ServiceScope {
        ServiceScope(manager: self, name: name)
    }

    // MARK: - Reading usage

    /// What the system scope holds now.
    public var systemUsage: ResourceUsage { state.withLockedValue { $0.usage[.system] ?? ResourceUsage() } }
    /// What the transient scope holds now.
    public var transientUsage: ResourceUsage { state.withLockedValue { $0.usage[.transient] ?? ResourceUsage() } }
    /// What inbound connections from `address` hold now.
    public func usage(ofAddress address: String) -> ResourceUsage {
        state.withLockedValue { $0.usage[.address(Self.addressBucket(address))] ?? ResourceUsage() }
    }
    /// What `peer` (its peer ID's text form) holds now.
    public func usage(ofPeer peer: String) -> ResourceUsage {
        state.withLockedValue { $0.usage[.peer(peer)] ?? ResourceUsage() }
    }
    /// What streams of `protocolID` hold now.
    public func usage(ofProtocol protocolID: String) -> ResourceUsage {
        state.withLockedValue { $0.usage[.protocol(protocolID)] ?? ResourceUsage() }
    }
    /// What the service `name` holds now.
    public func usage(ofService name: String) -> ResourceUsage {
        state.withLockedValue { $0.usage[.service(name)] ?? ResourceUsage() }
    }
    /// How many scopes the manager tracks (connections, streams, peers, addresses, …): it must
    /// fall back when they close, or something leaks.
    public var trackedScopeCount: Int { state.withLockedValue { $0.usage.count } }

    /// The address scope an IP address falls in: IPv4 addresses as they are, IPv6 by /64 (one
    /// host usually owns a whole /64, so counting single IPv6 addresses would be no limit).
    static func addressBucket(_ address: String) -> String {
        guard address.contains(":") else { return address }
        // Expand "::" enough to take the first four groups.
        let halves = address.split(separator: "::", maxSplits: 1, omittingEmptySubsequences: false)
        let head = halves.first.map { $0.split(separator: ":").map(String.init) } ?? []
        let tailCount = halves.count > 1 ? halves[1].split(separator: ":").count : 0
        var groups = head
        if halves.count > 1 { groups += Array(repeating: "0", count: max(0, 8 - head.count - tailCount)) }
        if halves.count > 1 { groups += halves[1].split(separator: ":").map(String.init) }
        return groups.prefix(4).joined(separator: ":") + "::/64"
    }

    // MARK: - Internals used by the scopes

    func withState<T>(
        _ body: (inout State) throws(ResourceError) -> T, refused: (ResourceError) -> Void
    ) throws(ResourceError) -> T {
        let result: Result<T, ResourceError> = state.withLockedValue { s in
            do throws(ResourceError) { return .success(try body(&s)) } catch { return .failure(error) }
        }
        switch result {
        case .success(let value): return value
        case .failure(let error):
            refused(error)
            throw error
        }
    }

    func mutate<T>(_ body: (inout State) -> T) -> T {
        let value = state.withLockedValue { body(&$0) }
        updateGauges()
        return value
    }

    /// Reserves `bytes` in `key` and every scope above it, or throws (reported) without reserving.
    func reserve(_ bytes: Int, in key: ScopeKey) throws(ResourceError) {
        try withState { s throws(ResourceError) in
            try s.reserveMemory(bytes, in: key, limits: limits(for:))
        } refused: { error in
            let context = self.context(of: key)
            report(error, address: context.address, peer: context.peer)
        }
    }

    /// Gives back `bytes` reserved in `key`.
    func release(_ bytes: Int, in key: ScopeKey) {
        mutate { $0.releaseMemory(bytes, in: key) }
    }

    /// What `key` holds now.
    func usage(of key: ScopeKey) -> ResourceUsage {
        read { $0.usage[key] ?? ResourceUsage() }
    }

    /// The remote address and peer behind a connection or stream scope, for refusal reports.
    func context(of key: ScopeKey) -> (address: String?, peer: String?) {
        switch key {
        case .connection(let id): return contextOf(connection: id)
        case .stream(let id):
            guard let connection = read({ $0.streams[id]?.connection }) else { return (nil, nil) }
            return contextOf(connection: connection)
        case .peer(let peer): return (nil, peer)
        case .address(let address): return (address, nil)
        default: return (nil, nil)
        }
    }

    func read<T>(_ body: (State) -> T) -> T {
        state.withLockedValue { body($0) }
    }

    func report(_ error: ResourceError, address: String?, peer: String?) {
        Counter(
            label: "pointsub_resource_refusals_total",
            dimensions: [("scope", error.scope), ("resource", error.code.rawValue)]
        ).increment()
        var metadata: Logger.Metadata = [
            "scope": "\(error.scope)", "resource": "\(error.code.rawValue)", "limit": "\(error.limit)",
        ]
        if let name = error.scopeName { metadata["scope_name"] = "\(name)" }
        if let address { metadata["remote_address"] = "\(address)" }
        if let peer { metadata["peer"] = "\(peer)" }
        refusalLog.log(
            .info, key: "\(error.scope).\(error.code.rawValue)", "resource limit reached: \(error)",
            metadata: metadata)
    }

    func contextOf(connection id: UInt64) -> (address: String?, peer: String?) {
        state.withLockedValue { s in
            guard let c = s.connections[id] else { return (nil, nil) }
            return (c.addressText, c.peer)
        }
    }

    func limits(for key: ScopeKey) -> ScopeLimits { configuration.limits(for: key) }

    private func updateGauges() {
        let system = systemUsage
        gauges.memory.record(system.memory)
        gauges.connectionsInbound.record(system.connectionsInbound)
        gauges.connectionsOutbound.record(system.connectionsOutbound)
        gauges.pending.record(system.pendingInbound)
        gauges.streamsInbound.record(system.streamsInbound)
        gauges.streamsOutbound.record(system.streamsOutbound)
    }

    private struct Gauges: Sendable {
        let memory = Gauge(label: "pointsub_resource_memory_bytes")
        let connectionsInbound = Gauge(label: "pointsub_resource_connections", dimensions: [("direction", "inbound")])
        let connectionsOutbound = Gauge(label: "pointsub_resource_connections", dimensions: [("direction", "outbound")])
        let pending = Gauge(label: "pointsub_resource_pending_handshakes")
        let streamsInbound = Gauge(label: "pointsub_resource_streams", dimensions: [("direction", "inbound")])
        let streamsOutbound = Gauge(label: "pointsub_resource_streams", dimensions: [("direction", "outbound")])
    }
}

/// Which side opened a connection or stream.
public enum ResourceDirection: String, Sendable, Hashable {
    /// The remote opened it.
    case inbound
    /// We opened it.
    case outbound
}

/// A scope's identity inside the manager.
enum ScopeKey: Hashable, Sendable {
    case system
    case transient
    case address(String)
    case peer(String)
    case connection(UInt64)
    case stream(UInt64)
    case `protocol`(String)
    case service(String)

    var kind: String {
        switch self {
        case .system: return "system"
        case .transient: return "transient"
        case .address: return "address"
        case .peer: return "peer"
        case .connection: return "connection"
        case .stream: return "stream"
        case .protocol: return "protocol"
        case .service: return "service"
        }
    }

    var name: String? {
        switch self {
        case .address(let n), .peer(let n), .protocol(let n), .service(let n): return n
        case .connection(let id), .stream(let id): return "#\(id)"
        case .system, .transient: return nil
        }
    }

    /// Scopes that hold nothing are dropped, except these two.
    var isPermanent: Bool { self == .system || self == .transient }
}

struct ConnectionRecord {
    var direction: ResourceDirection
    var address: ScopeKey?
    var addressText: String?
    var peer: String?
    var pending: Bool
}

struct StreamRecord {
    var connection: UInt64
    var direction: ResourceDirection
    var protocolID: String?
    var service: String?
}

struct State {
    var usage: [ScopeKey: ResourceUsage] = [.system: ResourceUsage(), .transient: ResourceUsage()]
    var connections: [UInt64: ConnectionRecord] = [:]
    var streams: [UInt64: StreamRecord] = [:]
    private var nextID: UInt64 = 1

    mutating func takeID() -> UInt64 {
        defer { nextID += 1 }
        return nextID
    }

    /// Throws if any of the `(resource, value after)` pairs goes over `limits`.
    func check(
        _ key: ScopeKey, limits: ScopeLimits, _ after: (ResourceUsage) -> [(ResourceError.Code, Int)]
    ) throws(ResourceError) {
        let usage = self.usage[key] ?? ResourceUsage()
        for (resource, value) in after(usage) {
            let limit = limits[keyPath: resource.limit]
            if value > limit {
                throw ResourceError(
                    scope: key.kind, scopeName: key.name, resource: resource, limit: limit,
                    requested: value - usage.counts[keyPath: resource.limit])
            }
        }
    }

    mutating func update(_ key: ScopeKey, _ change: (inout ResourceUsage) -> Void) {
        var usage = self.usage[key] ?? ResourceUsage()
        change(&usage)
        if usage.isEmpty, !key.isPermanent, !Self.isLive(key, connections: connections, streams: streams) {
            self.usage[key] = nil
        } else {
            self.usage[key] = usage
        }
    }

    private static func isLive(
        _ key: ScopeKey, connections: [UInt64: ConnectionRecord], streams: [UInt64: StreamRecord]
    ) -> Bool {
        switch key {
        case .connection(let id): return connections[id] != nil
        case .stream(let id): return streams[id] != nil
        default: return false
        }
    }

    /// The scopes a memory reservation in `key` counts against, `key` first, each once.
    func memoryChain(of key: ScopeKey) -> [ScopeKey] {
        var chain: [ScopeKey] = []
        func add(_ k: ScopeKey) { if !chain.contains(k) { chain.append(k) } }
        func addConnection(_ id: UInt64) {
            add(.connection(id))
            guard let c = connections[id] else { return }
            add(c.peer.map(ScopeKey.peer) ?? .transient)
            if let address = c.address { add(address) }
        }
        add(key)
        switch key {
        case .stream(let id):
            if let s = streams[id] {
                addConnection(s.connection)
                if let p = s.protocolID { add(.protocol(p)) }
                if let service = s.service { add(.service(service)) }
            }
        case .connection(let id):
            addConnection(id)
        default:
            break
        }
        add(.system)
        return chain
    }

    mutating func reserveMemory(_ bytes: Int, in key: ScopeKey, limits: (ScopeKey) -> ScopeLimits) throws(ResourceError) {
        guard bytes > 0 else { return }
        let chain = memoryChain(of: key)
        for k in chain {
            try check(k, limits: limits(k)) { u in [(.memory, u.memory + bytes)] }
        }
        for k in chain { update(k) { $0.memory += bytes } }
    }

    mutating func releaseMemory(_ bytes: Int, in key: ScopeKey) {
        guard bytes > 0 else { return }
        // Never release more than the scope holds (a double release must not corrupt the parents).
        let held = usage[key]?.memory ?? 0
        let amount = min(bytes, held)
        guard amount > 0 else { return }
        for k in memoryChain(of: key) { update(k) { $0.memory -= amount } }
    }
}

extension ResourceError.Code {
    /// Where this resource is in limits (and, through `ResourceUsage.counts`, in usage).
    var limit: KeyPath<ScopeLimits, Int> {
        switch self {
        case .memory: return \.memory
        case .connectionsInbound: return \.connectionsInbound
        case .connectionsOutbound: return \.connectionsOutbound
        case .connections: return \.connections
        case .pendingInbound: return \.pendingInbound
        case .streamsInbound: return \.streamsInbound
        case .streamsOutbound: return \.streamsOutbound
        case .streams: return \.streams
        }
    }
}

extension ResourceUsage {
    /// The usage in the shape of limits (each resource where its limit is), so one key path
    /// reads either.
    var counts: ScopeLimits {
        ScopeLimits(
            memory: memory, connectionsInbound: connectionsInbound, connectionsOutbound: connectionsOutbound,
            connections: connections, pendingInbound: pendingInbound, streamsInbound: streamsInbound,
            streamsOutbound: streamsOutbound, streams: streams)
    }
}
