/// Why a multistream-select negotiation failed.
public struct MultistreamError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: Sendable, Hashable {
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

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "multistream-select: \(message)" }
}
