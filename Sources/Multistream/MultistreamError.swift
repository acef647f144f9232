import Basics

/// Why a multistream-select negotiation failed.
public struct MultistreamError: CodedError, Hashable {
    /// The kinds of failure.
    public enum Code: String, ErrorCode {
        /// A message's length prefix is over `MultistreamNegotiator.maxMessageLength`.
        case messageTooLong
        /// The length prefix is not a valid minimal uvarint.
        case invalidLength
        /// A message is empty, does not end in a newline, or is not UTF-8.
        case malformedMessage
        /// The remote's first message was not `/multistream/1.0.0`.
        case unsupportedVersion
        /// The listener refused every protocol the dialer proposed.
        case noProtocolInCommon
        /// The listener answered with something other than our proposal or `na`.
        case unexpectedResponse
        /// The dialer kept proposing unsupported protocols.
        case tooManyAttempts
        /// The peer closed before negotiation finished.
        case unexpectedEOF
    }

    /// What kind of failure.
    public var code: Code
    /// What went wrong at this layer.
    public var message: String
    /// The lower-level failure behind this one, if any.
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
}
