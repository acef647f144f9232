import Identity
import Multiformats

/// Errors of the host layer. Lower layers' typed errors (NoiseError, YamuxError, MultistreamError,
/// TransportError) are passed through as `cause` where they are the cause; several (one per
/// address a dial tried) as an `ErrorList`.
public struct HostError: CodedError {
    /// The kinds of host failure.
    public enum Code: String, ErrorCode {
        /// Tried to dial our own peer ID.
        case dialSelf
        /// No dialable address is known for the peer.
        case noAddresses
        /// Every address failed; `cause` holds each address's error (an `ErrorList` when several).
        case dialFailed
        /// The dial (TCP connect + upgrade) did not finish in time.
        case dialTimeout
        /// The security/muxer upgrade of a connection failed or timed out.
        case upgradeFailed
        /// The remote supports none of the requested protocols.
        case protocolNotSupported
        /// An operation did not finish within its deadline.
        case timeout
        /// The host is shutting down or stopped.
        case shutDown
        /// A limit (connections, streams) was reached.
        case limitReached
        /// A stream handler is already registered for the protocol.
        case handlerExists
        /// The address cannot be used (no /p2p/ part where one is needed, unsupported transport…).
        case invalidAddress
        /// A message on a stream broke its protocol (malformed, unexpected).
        case protocolViolation
        /// A length-prefixed message declared more bytes than the reader's limit (refused before
        /// anything was buffered).
        case messageTooLarge
        /// The stream ended before the expected data arrived.
        case unexpectedEOF
        /// The stream was reset, by the remote or by us.
        case streamReset
        /// The operation is no longer possible on this stream (a write after `closeWrite`, a
        /// read after `close`).
        case streamClosed
        /// The stream's connection ended (closed, failed, or its keep-alive went unanswered).
        case connectionClosed
    }

    /// What kind of failure.
    public var code: Code
    /// What failed at the host layer (not the cause's text).
    public var message: String
    /// The lower layer's error behind this one, if any; an `ErrorList` when there were several.
    public var cause: (any Error)?

    /// An error of kind `code`, with the lower-level `cause`, if any.
    public init(_ code: Code, _ message: String, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    /// An error of kind `code` caused by `causes`: none, one, or an `ErrorList` of several.
    public init(_ code: Code, _ message: String, causes: [any Error]) {
        self.init(code, message, cause: causes.count > 1 ? ErrorList(causes) : causes.first)
    }

    /// The causes as a list: the errors of the `ErrorList` cause, the one cause, or none.
    public var causes: [any Error] {
        guard let cause else { return [] }
        return (cause as? ErrorList)?.errors ?? [cause]
    }
}
