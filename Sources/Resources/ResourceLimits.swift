/// What a scope may hold at once. `Int.max` means "no limit" for that resource.
///
/// Counted per scope: a connection counts against the system, its source address, and (once
/// the security handshake names it) its peer; a stream against its connection, its peer, the
/// system, and its protocol and service once those are known. Memory reserved in a scope counts
/// against every scope above it as well.
public struct ScopeLimits: Sendable, Hashable, CustomStringConvertible {
    /// Bytes that may be reserved (buffers, windows, queues, decompression output).
    public var memory: Int
    /// Inbound connections, handshaking or established.
    public var connectionsInbound: Int
    /// Outbound connections, handshaking or established.
    public var connectionsOutbound: Int
    /// Connections in both directions together.
    public var connections: Int
    /// Inbound connections still in their security/muxer handshake.
    public var pendingInbound: Int
    /// Streams the remote opened.
    public var streamsInbound: Int
    /// Streams we opened.
    public var streamsOutbound: Int
    /// Streams in both directions together.
    public var streams: Int

    /// Limits with every value given explicitly; unlimited where omitted.
    public init(
        memory: Int = .max, connectionsInbound: Int = .max, connectionsOutbound: Int = .max,
        connections: Int = .max, pendingInbound: Int = .max, streamsInbound: Int = .max,
        streamsOutbound: Int = .max, streams: Int = .max
    ) {
        self.memory = memory
        self.connectionsInbound = connectionsInbound
        self.connectionsOutbound = connectionsOutbound
        self.connections = connections
        self.pendingInbound = pendingInbound
        self.streamsInbound = streamsInbound
        self.streamsOutbound = streamsOutbound
        self.streams = streams
    }

    /// No limit on anything.
    public static let unlimited = ScopeLimits()

    /// The non-default limits, e.g. `memory=64MiB connections=8`.
    public var description: String {
        var parts: [String] = []
        func add(_ name: String, _ value: Int, bytes: Bool = false) {
            guard value != .max else { return }
            parts.append("\(name)=\(bytes ? ResourceUsage.formatBytes(value) : String(value))")
        }
        add("memory", memory, bytes: true)
        add("connectionsInbound", connectionsInbound)
        add("connectionsOutbound", connectionsOutbound)
        add("connections", connections)
        add("pendingInbound", pendingInbound)
        add("streamsInbound", streamsInbound)
        add("streamsOutbound", streamsOutbound)
        add("streams", streams)
        return parts.isEmpty ? "unlimited" : parts.joined(separator: " ")
    }
}

/// What a scope holds now.
public struct ResourceUsage: Sendable, Hashable, CustomStringConvertible {
    /// Bytes reserved.
    public var memory = 0
    /// Inbound connections (handshaking or established).
    public var connectionsInbound = 0
    /// Outbound connections (handshaking or established).
    public var connectionsOutbound = 0
    /// Inbound connections still handshaking.
    public var pendingInbound = 0
    /// Streams the remote opened.
    public var streamsInbound = 0
    /// Streams we opened.
    public var streamsOutbound = 0

    /// An empty usage.
    public init() {}

    /// Connections in both directions.
    public var connections: Int { connectionsInbound + connectionsOutbound }
    /// Streams in both directions.
    public var streams: Int { streamsInbound + streamsOutbound }
    /// Whether the scope holds nothing at all.
    public var isEmpty: Bool { self == ResourceUsage() }

    /// A one-line summary, e.g. `memory=1.5MiB connections=2/0 pending=1 streams=3/4`.
    public var description: String {
        "memory=\(Self.formatBytes(memory)) connections=\(connectionsInbound)/\(connectionsOutbound) "
            + "pending=\(pendingInbound) streams=\(streamsInbound)/\(streamsOutbound)"
    }

    static func formatBytes(_ n: Int) -> String {
        if n >= 1 << 30, n % (1 << 30) == 0 { return "\(n >> 30)GiB" }
        if n >= 1 << 20, n % (1 << 20) == 0 { return "\(n >> 20)MiB" }
        if n >= 1 << 10, n % (1 << 10) == 0 { return "\(n >> 10)KiB" }
        return "\(n)B"
    }
}

extension ResourceManager {
    /// Limits for every kind of scope. Start from `.defaults` and change what you need.
    ///
    /// The defaults keep a node useful to honest peers while one source misbehaves: one source
    /// address can hold at most 16 handshakes, 128 connections and 256 MiB, a quarter of the
    /// 1 GiB system budget, so it cannot starve the others; a peer at most 8 connections and
    /// 256 MiB; a connection at most 128 MiB (512 Yamux streams with full 256 KiB windows).
    public struct Configuration: Sendable, DefaultsConfigurable {
        /// Everything together.
        public var system = ScopeLimits(
            memory: 1 << 30, connectionsInbound: 1024, connectionsOutbound: 1024, connections: 2048,
            pendingInbound: 256, streamsInbound: 16_384, streamsOutbound: 16_384, streams: 32_768)
        /// Connections whose peer is not known yet and streams whose protocol is not known yet.
        public var transient = ScopeLimits(
            memory: 128 << 20, connectionsInbound: 512, connectionsOutbound: 512, connections: 1024,
            pendingInbound: 256, streamsInbound: 1024, streamsOutbound: 1024, streams: 2048)
        /// One remote IP address (IPv4 /32, IPv6 /64), inbound connections only: the unit a
        /// single attacker cannot multiply for free.
        public var perAddress = ScopeLimits(
            memory: 256 << 20, connectionsInbound: 128, connections: 128, pendingInbound: 16)
        /// One remote peer.
        public var perPeer = ScopeLimits(
            memory: 256 << 20, connectionsInbound: 8, connectionsOutbound: 8, connections: 8,
            streamsInbound: 2048, streamsOutbound: 2048, streams: 4096)
        /// One connection.
        public var perConnection = ScopeLimits(
            memory: 128 << 20, streamsInbound: 1024, streamsOutbound: 1024, streams: 2048)
        /// One stream.
        public var perStream = ScopeLimits(memory: 64 << 20)
        /// A protocol without an entry in `protocols`.
        public var perProtocol = ScopeLimits(memory: 512 << 20, streamsInbound: 8192, streamsOutbound: 8192)
        /// Limits for named protocols (e.g. `/ipfs/ping/1.0.0`).
        public var protocols: [String: ScopeLimits] = [:]
        /// A service without an entry in `services`.
        public var perService = ScopeLimits(memory: 256 << 20)
        /// Limits for named services (e.g. `pointsub`, `pubsub`).
        public var services: [String: ScopeLimits] = [:]

        /// The defaults described above.
        public init() {}

        /// Every limit removed (tests and benchmarks that measure without accounting).
        public static var unlimited: Self {
            var c = Self()
            c.system = .unlimited
            c.transient = .unlimited
            c.perAddress = .unlimited
            c.perPeer = .unlimited
            c.perConnection = .unlimited
            c.perStream = .unlimited
            c.perProtocol = .unlimited
            c.perService = .unlimited
            return c
        }

        func limits(for key: ScopeKey) -> ScopeLimits {
            switch key {
            case .system: return system
            case .transient: return transient
            case .address: return perAddress
            case .peer: return perPeer
            case .connection: return perConnection
            case .stream: return perStream
            case .protocol(let name): return protocols[name] ?? perProtocol
            case .service(let name): return services[name] ?? perService
            }
        }
    }
}

/// `static var defaults` and `.defaults { $0.x = … }` for configuration structs.
public protocol DefaultsConfigurable {
    /// A value with every field at its default.
    init()
}

extension DefaultsConfigurable {
    /// A value with every field at its default.
    public static var defaults: Self { Self() }

    /// The defaults, changed by `configure`.
    public static func defaults(_ configure: (inout Self) -> Void) -> Self {
        var value = Self()
        configure(&value)
        return value
    }
}
