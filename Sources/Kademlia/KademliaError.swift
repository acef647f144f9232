import Basics

/// Every error the Kademlia DHT reports.
public struct KademliaError: CodedError {
    /// The kind of failure.
    public enum Code: String, Sendable, Hashable, CustomStringConvertible {
        /// A message that is not valid protobuf, misses a required field, or has an unknown type.
        case malformedMessage
        /// A message, key, record or peer list over its limit (checked before buffering it).
        case limitExceeded
        /// A lookup ended without the key's value, provider or peer.
        case notFound
        /// A record its namespace's validator refused.
        case invalidRecord

        /// The code's name.
        public var description: String { rawValue }
    }

    /// The kind of failure.
    public var code: Code
    /// What went wrong.
    public var message: String
    /// The lower-level error, if any.
    public var cause: (any Error)?

    /// An error of kind `code`.
    public init(_ code: Code, _ message: String, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }
}
