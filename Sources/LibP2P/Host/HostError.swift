import Identity
import Multiformats

/// Errors of the host layer. Lower layers' typed errors (NoiseError, YamuxError, MultistreamError,
/// TransportError) are passed through as `underlying` where they are the cause.
public struct HostError: Error, Sendable, CustomStringConvertible {
    public enum Code: Sendable, Hashable {
        /// Tried to dial our own peer ID.
        case dialSelf
        /// No dialable address is known for the peer.
        case noAddresses
        /// Every address failed; see `underlying`.
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
        /// A message on a stream broke its protocol (too long, malformed).
        case protocolViolation
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

    public var code: Code
    public var message: String
    public var underlying: [any Error]

    public init(_ code: Code, _ message: String, underlying: [any Error] = []) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String {
        underlying.isEmpty ? message : "\(message) (\(underlying.map { "\($0)" }.joined(separator: "; ")))"
    }
}
