/// Errors of the pubsub layer. Errors about one peer's input close only that peer's pubsub stream.
public enum PubSubError: Error, Sendable, Equatable, CustomStringConvertible {
    /// An RPC that is not valid protobuf or misses a required field.
    case malformedRPC(String)
    /// An RPC frame longer than the configured limit (default 1 MiB), refused before allocation.
    case rpcTooLarge(length: Int, limit: Int)

    public var description: String {
        switch self {
        case .malformedRPC(let why): "malformed pubsub RPC: \(why)"
        case .rpcTooLarge(let length, let limit): "pubsub RPC of \(length) bytes exceeds the limit of \(limit)"
        }
    }
}
