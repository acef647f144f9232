/// A refusal by the resource manager: a reservation or an open that would take a scope over one
/// of its limits. Nothing was reserved; the caller refuses whatever asked for it (closes the
/// connection, resets the stream, drops the message).
public struct ResourceError: Error, Sendable, Hashable, CustomStringConvertible {
    /// Which resource ran out.
    public enum Resource: String, Sendable, Hashable, CaseIterable {
        case memory
        case connectionsInbound
        case connectionsOutbound
        case connections
        case pendingInbound
        case streamsInbound
        case streamsOutbound
        case streams
    }

    /// The kind of scope whose limit was hit: `system`, `transient`, `address`, `peer`,
    /// `connection`, `stream`, `protocol` or `service`.
    public var scope: String
    /// The scope's name where it has one: the IP address, peer ID, protocol or service.
    public var scopeName: String?
    /// The resource that ran out.
    public var resource: Resource
    /// The scope's limit for that resource.
    public var limit: Int
    /// What was asked for (bytes for memory, 1 for a connection or stream).
    public var requested: Int

    /// A refusal of `requested` units of `resource` by a scope at `limit`.
    public init(scope: String, scopeName: String? = nil, resource: Resource, limit: Int, requested: Int) {
        self.scope = scope
        self.scopeName = scopeName
        self.resource = resource
        self.limit = limit
        self.requested = resource == .memory ? requested : 1
    }

    /// E.g. `address 127.0.0.2: pendingInbound limit 16 reached`.
    public var description: String {
        let who = scopeName.map { "\(scope) \($0)" } ?? scope
        if resource == .memory {
            return "\(who): memory limit \(ResourceUsage.formatBytes(limit)) reached (asked for \(requested) bytes)"
        }
        return "\(who): \(resource.rawValue) limit \(limit) reached"
    }
}
