import NIOConcurrencyHelpers

/// Something memory can be reserved in before it is used, and released to after.
///
/// Reserve before allocating (a window grown, a buffer kept, a message decompressed); on
/// ``ResourceError`` do not allocate: refuse what asked for it. Release exactly what was
/// reserved once the memory is freed.
public protocol MemoryAccount: Sendable {
    /// Reserves `bytes`, or throws without reserving anything.
    func reserveMemory(_ bytes: Int) throws(ResourceError)
    /// Gives back `bytes` reserved earlier.
    func releaseMemory(_ bytes: Int)
}

/// A memory account that never refuses: for code run without a resource manager.
public struct UnlimitedMemoryAccount: MemoryAccount {
    /// The account.
    public init() {}
    /// Always succeeds.
    public func reserveMemory(_ bytes: Int) throws(ResourceError) {}
    /// Does nothing.
    public func releaseMemory(_ bytes: Int) {}
}

/// One connection's resources. Close it (``done()``) when the connection closes; what it and its
/// streams still hold is released then.
public final class ConnectionScope: MemoryAccount, @unchecked Sendable {
    // @unchecked: every stored property is immutable or a lock-guarded flag.
    let manager: ResourceManager
    /// The connection's number inside the manager.
    public let id: UInt64
    private let closing = OnceFlag()

    init(manager: ResourceManager, id: UInt64) {
        self.manager = manager
        self.id = id
    }

    deinit { done() }

    /// The security handshake named the remote: moves the connection from the transient scope
    /// to `peer`'s (checked against the peer's connection and memory limits).
    public func setPeer(_ peer: String) throws(ResourceError) {
        let key = ScopeKey.connection(id)
        let limits = manager.configuration.perPeer
        let context = manager.contextOf(connection: id)
        try manager.withState { s throws(ResourceError) in
            guard var record = s.connections[id], record.peer == nil else { return }
            let usage = s.usage[key] ?? ResourceUsage()
            let inbound = record.direction == .inbound
            try s.check(.peer(peer), limits: limits) { u in
                [
                    inbound ? (.connectionsInbound, u.connectionsInbound + 1)
                        : (.connectionsOutbound, u.connectionsOutbound + 1),
                    (.connections, u.connections + 1), (.memory, u.memory + usage.memory),
                ]
            }
            s.update(.transient) { u in
                if inbound { u.connectionsInbound -= 1 } else { u.connectionsOutbound -= 1 }
                if record.pending { u.pendingInbound -= 1 }
                u.memory -= usage.memory
            }
            record.peer = peer
            s.update(.peer(peer)) { u in
                if inbound { u.connectionsInbound += 1 } else { u.connectionsOutbound += 1 }
                if record.pending { u.pendingInbound += 1 }
                u.memory += usage.memory
            }
            s.connections[id] = record
        } refused: { error in
            manager.report(error, address: context.address, peer: peer)
        }
    }

    /// The connection finished its handshakes: it no longer counts as pending.
    public func markEstablished() {
        manager.mutate { s in
            guard var record = s.connections[id], record.pending else { return }
            record.pending = false
            s.connections[id] = record
            var keys: [ScopeKey] = [.system, record.peer.map(ScopeKey.peer) ?? .transient]
            if let address = record.address { keys.append(address) }
            for key in keys { s.update(key) { $0.pendingInbound -= 1 } }
        }
    }

    /// Accounts for a new stream on this connection, before it is accepted or opened.
    public func openStream(direction: ResourceDirection) throws(ResourceError) -> StreamScope {
        let connectionKey = ScopeKey.connection(id)
        let manager = self.manager
        let context = manager.contextOf(connection: id)
        let streamID = try manager.withState { s throws(ResourceError) -> UInt64 in
            guard let record = s.connections[id] else {
                throw ResourceError(scope: "connection", scopeName: "#\(id)", resource: .streams, limit: 0, requested: 1)
            }
            let keys: [ScopeKey] = [connectionKey, record.peer.map(ScopeKey.peer) ?? .transient, .transient, .system]
            var seen: [ScopeKey] = []
            for key in keys where !seen.contains(key) {
                seen.append(key)
                try s.check(key, limits: manager.limits(for: key)) { u in
                    direction == .inbound
                        ? [(.streamsInbound, u.streamsInbound + 1), (.streams, u.streams + 1)]
                        : [(.streamsOutbound, u.streamsOutbound + 1), (.streams, u.streams + 1)]
                }
            }
            for key in seen {
                s.update(key) { u in if direction == .inbound { u.streamsInbound += 1 } else { u.streamsOutbound += 1 } }
            }
            let streamID = s.takeID()
            s.streams[streamID] = StreamRecord(connection: id, direction: direction)
            s.usage[.stream(streamID)] = ResourceUsage()
            return streamID
        } refused: { error in
            manager.report(error, address: context.address, peer: context.peer)
        }
        return StreamScope(manager: manager, id: streamID)
    }

    /// Reserves `bytes` for this connection (its peer or transient, address and system scopes too).
    public func reserveMemory(_ bytes: Int) throws(ResourceError) {
        try manager.reserve(bytes, in: .connection(id))
    }

    /// Gives back `bytes` reserved with ``reserveMemory(_:)``.
    public func releaseMemory(_ bytes: Int) {
        manager.release(bytes, in: .connection(id))
    }

    /// What this connection (with its streams) holds now.
    public var usage: ResourceUsage { manager.usage(of: .connection(id)) }

    /// Releases everything the connection still holds and its place in every scope. Streams still
    /// open on it are closed in the accounting too. Idempotent.
    public func done() {
        guard closing.claim() else { return }
        let id = self.id
        manager.mutate { s in
            for (streamID, stream) in s.streams where stream.connection == id {
                StreamScope.release(streamID, in: &s)
            }
            guard let record = s.connections[id] else { return }
            let key = ScopeKey.connection(id)
            let memory = s.usage[key]?.memory ?? 0
            if memory > 0 { s.releaseMemory(memory, in: key) }
            var keys: [ScopeKey] = [.system, record.peer.map(ScopeKey.peer) ?? .transient]
            if let address = record.address { keys.append(address) }
            for k in keys {
                s.update(k) { u in
                    if record.direction == .inbound { u.connectionsInbound -= 1 } else { u.connectionsOutbound -= 1 }
                    if record.pending { u.pendingInbound -= 1 }
                }
            }
            s.connections[id] = nil
            s.usage[key] = nil
        }
    }
}

/// One stream's resources. Close it (``done()``) when the stream ends.
public final class StreamScope: MemoryAccount, @unchecked Sendable {
    // @unchecked: every stored property is immutable or a lock-guarded flag.
    let manager: ResourceManager
    /// The stream's number inside the manager.
    public let id: UInt64
    private let closing = OnceFlag()

    init(manager: ResourceManager, id: UInt64) {
        self.manager = manager
        self.id = id
    }

    deinit { done() }

    private var context: (address: String?, peer: String?) { manager.context(of: .stream(id)) }

    /// The stream's protocol is negotiated: it moves from the transient scope to `protocolID`'s.
    public func setProtocol(_ protocolID: String) throws(ResourceError) {
        try attach(to: .protocol(protocolID), leavingTransient: true) { record in
            guard record.protocolID == nil else { return false }
            record.protocolID = protocolID
            return true
        }
    }

    /// The stream belongs to service `name` (its streams and memory count there too).
    public func setService(_ name: String) throws(ResourceError) {
        try attach(to: .service(name), leavingTransient: false) { record in
            guard record.service == nil else { return false }
            record.service = name
            return true
        }
    }

    /// Counts the stream (and the memory it holds) in `target` too, if `update` says the record
    /// changed; with `leavingTransient` its stream count leaves the transient scope.
    private func attach(
        to target: ScopeKey, leavingTransient: Bool, _ update: (inout StreamRecord) -> Bool
    ) throws(ResourceError) {
        let manager = self.manager
        let context = self.context
        let key = ScopeKey.stream(id)
        try manager.withState { s throws(ResourceError) in
            guard var record = s.streams[id], update(&record) else { return }
            let inbound = record.direction == .inbound
            let memory = s.usage[key]?.memory ?? 0
            try s.check(target, limits: manager.limits(for: target)) { u in
                [
                    inbound ? (.streamsInbound, u.streamsInbound + 1) : (.streamsOutbound, u.streamsOutbound + 1),
                    (.streams, u.streams + 1), (.memory, u.memory + memory),
                ]
            }
            if leavingTransient {
                s.update(.transient) { u in if inbound { u.streamsInbound -= 1 } else { u.streamsOutbound -= 1 } }
            }
            s.update(target) { u in
                if inbound { u.streamsInbound += 1 } else { u.streamsOutbound += 1 }
                u.memory += memory
            }
            s.streams[id] = record
        } refused: { error in
            manager.report(error, address: context.address, peer: context.peer)
        }
    }

    /// Reserves `bytes` for this stream (and its connection, peer, protocol, service, system).
    public func reserveMemory(_ bytes: Int) throws(ResourceError) {
        try manager.reserve(bytes, in: .stream(id))
    }

    /// Gives back `bytes` reserved with ``reserveMemory(_:)``.
    public func releaseMemory(_ bytes: Int) {
        manager.release(bytes, in: .stream(id))
    }

    /// What this stream holds now.
    public var usage: ResourceUsage { manager.usage(of: .stream(id)) }

    /// Releases the stream's memory and its place in every scope. Idempotent.
    public func done() {
        guard closing.claim() else { return }
        let id = self.id
        manager.mutate { StreamScope.release(id, in: &$0) }
    }

    static func release(_ id: UInt64, in s: inout State) {
        guard let record = s.streams[id] else { return }
        let key = ScopeKey.stream(id)
        let memory = s.usage[key]?.memory ?? 0
        if memory > 0 { s.releaseMemory(memory, in: key) }
        let peer = s.connections[record.connection]?.peer
        var keys: [ScopeKey] = [.connection(record.connection), peer.map(ScopeKey.peer) ?? .transient, .system]
        keys.append(record.protocolID.map(ScopeKey.protocol) ?? .transient)
        if let service = record.service { keys.append(.service(service)) }
        var seen: [ScopeKey] = []
        for k in keys where !seen.contains(k) {
            seen.append(k)
            s.update(k) { u in
                if record.direction == .inbound { u.streamsInbound -= 1 } else { u.streamsOutbound -= 1 }
            }
        }
        s.streams[id] = nil
        s.usage[key] = nil
    }
}

/// Memory a service holds outside any one stream (decompression output in flight, queues): counts
/// against the service scope and the system.
public struct ServiceScope: MemoryAccount {
    let manager: ResourceManager
    /// The service's name (`pointsub`, `pubsub`, …).
    public let name: String

    init(manager: ResourceManager, name: String) {
        self.manager = manager
        self.name = name
    }

    /// Reserves `bytes` for the service, or throws without reserving anything.
    public func reserveMemory(_ bytes: Int) throws(ResourceError) {
        try manager.reserve(bytes, in: .service(name))
    }

    /// Gives back `bytes` reserved earlier.
    public func releaseMemory(_ bytes: Int) {
        manager.release(bytes, in: .service(name))
    }
}

/// A flag that only the first `claim()` finds unset.
final class OnceFlag: @unchecked Sendable {
    // @unchecked: `claimed` is guarded by `lock`.
    private let lock = NIOLock()
    private var claimed = false

    /// Whether this call is the first.
    func claim() -> Bool {
        lock.withLock {
            defer { claimed = true }
            return !claimed
        }
    }
}
