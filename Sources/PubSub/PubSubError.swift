import Basics

/// Errors of the pubsub layer. Errors about one peer's input close only that peer's pubsub stream.
///
/// Equality (and hashing) consider `code` and `message`, not the cause, so tests can match with
/// the static values, e.g. `#expect(throws: PubSubError.notRunning)`.
public struct PubSubError: CodedError, Hashable {
    /// The kinds of pubsub failure.
    public enum Code: String, ErrorCode {
        /// An RPC that is not valid protobuf or misses a required field.
        case malformedRPC
        /// An RPC frame longer than the configured limit (default 1 MiB), refused before allocation.
        case rpcTooLarge
        /// A configuration value that cannot work.
        case invalidConfiguration
        /// The service is not started, or was stopped.
        case notRunning
        /// A message to publish would not fit in an RPC of the configured maximum size.
        case messageTooLarge
        /// A local validator did not accept a message we tried to publish.
        case publishRejected
        /// Signing a message to publish failed (`cause` says why).
        case signingFailed
        /// Fewer peers than required are known to subscribe to the topic: from `publish(_:_:minPeers:)`
        /// (nothing was sent) and `waitForPeers(topic:count:deadline:)` (not enough joined in time).
        case notEnoughPeers
        /// A message to publish has the ID of a message seen within `seenTTL` (under StrictNoSign
        /// with content IDs: the same bytes published again); nobody would take it.
        case duplicateMessage
    }

    /// What kind of failure.
    public var code: Code
    /// What went wrong, with the values concerned (sizes, topic, peer counts).
    public var message: String
    /// The lower-level failure behind this one, if any (e.g. the protobuf or signing error).
    public var cause: (any Error)?

    /// An error of kind `code`, with the lower-level `cause`, if any.
    public init(_ code: Code, _ message: String, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    /// Equal when code and message are (the cause is not compared).
    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.code == rhs.code && lhs.message == rhs.message }
    /// Hashes code and message, consistent with `==`.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(code)
        hasher.combine(message)
    }

    /// An RPC that is not valid protobuf or misses a required field; `why` says which.
    public static func malformedRPC(_ why: String, cause: (any Error)? = nil) -> Self {
        Self(.malformedRPC, why, cause: cause)
    }
    /// An RPC frame of `length` bytes over `limit`.
    public static func rpcTooLarge(length: Int, limit: Int) -> Self {
        Self(.rpcTooLarge, "pubsub RPC of \(length) bytes exceeds the limit of \(limit)")
    }
    /// A configuration value that cannot work; `why` says which.
    public static func invalidConfiguration(_ why: String) -> Self { Self(.invalidConfiguration, why) }
    /// The service is not running.
    public static let notRunning = Self(.notRunning, "the pubsub service is not running")
    /// A message of `size` bytes does not fit in an RPC of at most `limit`.
    public static func messageTooLarge(size: Int, limit: Int) -> Self {
        Self(.messageTooLarge, "a message of \(size) bytes does not fit in an RPC of at most \(limit)")
    }
    /// The validator of `topic` answered `result` for a message we tried to publish.
    public static func publishRejected(topic: String, _ result: PubSubValidationResult) -> Self {
        Self(.publishRejected, "the validator of \(topic) did not accept the message (\(result))")
    }
    /// `known` peers known in `topic`, `required` required.
    public static func notEnoughPeers(topic: String, known: Int, required: Int) -> Self {
        Self(.notEnoughPeers, "\(known) peers known in \(topic), \(required) required")
    }
    /// A message of `topic` to publish whose ID is in the seen cache.
    public static func duplicateMessage(topic: String) -> Self {
        Self(.duplicateMessage, "a message with the same ID was seen in \(topic) within the seen TTL")
    }
}
