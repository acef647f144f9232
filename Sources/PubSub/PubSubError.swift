/// Errors of the pubsub layer. Errors about one peer's input close only that peer's pubsub stream.
public enum PubSubError: Error, Sendable, Equatable, CustomStringConvertible {
    /// An RPC that is not valid protobuf or misses a required field.
    case malformedRPC(String)
    /// An RPC frame longer than the configured limit (default 1 MiB), refused before allocation.
    case rpcTooLarge(length: Int, limit: Int)
    /// A configuration value that cannot work.
    case invalidConfiguration(String)
    /// The service is not started, or was stopped.
    case notRunning
    /// A message to publish would not fit in an RPC of the configured maximum size.
    case messageTooLarge(size: Int, limit: Int)
    /// A local validator did not accept a message we tried to publish.
    case publishRejected(topic: String, PubSubValidationResult)
    /// Signing a message to publish failed.
    case signingFailed(String)
    /// Fewer peers than required are known to subscribe to the topic: from `publish(_:_:minPeers:)`
    /// (nothing was sent) and `waitForPeers(topic:count:deadline:)` (not enough joined in time).
    case notEnoughPeers(topic: String, known: Int, required: Int)

    public var description: String {
        switch self {
        case .malformedRPC(let why): "malformed pubsub RPC: \(why)"
        case .rpcTooLarge(let length, let limit): "pubsub RPC of \(length) bytes exceeds the limit of \(limit)"
        case .invalidConfiguration(let why): "invalid pubsub configuration: \(why)"
        case .notRunning: "the pubsub service is not running"
        case .messageTooLarge(let size, let limit): "a message of \(size) bytes does not fit in an RPC of at most \(limit)"
        case .publishRejected(let topic, let result): "the validator of \(topic) did not accept the message (\(result))"
        case .signingFailed(let why): "signing the message failed: \(why)"
        case .notEnoughPeers(let topic, let known, let required):
            "\(known) peers known in \(topic), \(required) required"
        }
    }
}
