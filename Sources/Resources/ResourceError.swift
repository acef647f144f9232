import Basics

/// A refusal by the resource manager: a reservation or an open that would take a scope over one
/// of its limits. Nothing was reserved; the caller refuses whatever asked for it (closes the
/// connection, resets the stream, drops the message).
public struct ResourceError: CodedError, Hashable {
    /// Which resource ran out.
    public enum Code: String, ErrorCode, CaseIterable {
        /// Bytes of memory.
        case memory
        /// Inbound connections.
        case connectionsInbound
        /// Outbound connections.
        case connectionsOutbound
        /// Connections, both directions.
        case connections
        /// Inbound connections still upgrading.
        case pendingInbound
        /// Inbound streams.
        case streamsInbound
        /// Outbound streams.
        case streamsOutbound
        /// Streams, both directions.
        case streams
    }

    /// The kind of scope whose limit was hit: `system`, `transient`, `address`, `peer`,
    /// `connection`, `stream`, `protocol` or `service`.
    public var scope: String
    /// The scope's name where it has one: the IP address, peer ID, protocol or service.
    public var scopeName: String?
    /// The resource that ran out.
    public var code: Code
    /// The scope's limit for that resource.
    public var limit: Int
    /// What was asked for (bytes for memory, 1 for a connection or stream).
    public var requested: Int

    /// A refusal of `requested` units of `resource` by a scope at `limit`.
    public init(scope: String, scopeName: String? = nil, resource: Code, limit: Int, requested: Int) {
        self.scope = scope
        self.scopeName = scopeName
        self.code = resource
        self.limit = limit
        self.requested = resource == .memory ? requested : 1
    }

    /// E.g. `address 127.0.0.2: limit 16 reached` (the description puts the resource first).
    public var message: String {
        let who = scopeName.map { "\(scope) \($0)" } ?? scope
        if code == .memory {
            return "\(who): limit \(ResourceUsage.formatBytes(limit)) reached (asked for \(requested) bytes)"
        }
        return "\(who): limit \(limit) reached"
    }

    /// None: a refusal is where a failure starts.
    public var cause: (any Error)? { nil }
}
