import Basics
import Identity
import Multiformats
import Resources
import LibP2P

/// The error code of an error message (`kind` 0x03), docs/PROTOCOL.md "Errors".
public enum RemoteErrorCode: Sendable, Hashable, CustomStringConvertible {
    /// 1: the application handler failed; the message is its error text.
    case handler
    /// 2: the server is at its concurrency limit; nothing was processed.
    case busy
    /// 3: the request exceeded the server's maximum block size.
    case tooLarge
    /// 4: the request broke the protocol.
    case malformed
    /// 5: the handler did not finish within the server's time limit.
    case timeout
    /// 6: the server is shutting down or no longer serves the protocol; nothing was processed.
    case unavailable
    /// A code this implementation does not know (reported as such, never retried).
    case unknown(UInt8)

    /// The code with wire value `rawValue` (`.unknown` for values this version does not define).
    public init(rawValue: UInt8) {
        switch rawValue {
        case 1: self = .handler
        case 2: self = .busy
        case 3: self = .tooLarge
        case 4: self = .malformed
        case 5: self = .timeout
        case 6: self = .unavailable
        default: self = .unknown(rawValue)
        }
    }

    /// The wire value.
    public var rawValue: UInt8 {
        switch self {
        case .handler: 1
        case .busy: 2
        case .tooLarge: 3
        case .malformed: 4
        case .timeout: 5
        case .unavailable: 6
        case .unknown(let code): code
        }
    }

    /// Spec table: only `busy` and `unavailable` guarantee that nothing was processed.
    public var isRetryable: Bool {
        switch self {
        case .busy, .unavailable: true
        default: false
        }
    }

    /// The case's name, e.g. `busy`.
    public var description: String {
        switch self {
        case .handler: "handler"
        case .busy: "busy"
        case .tooLarge: "tooLarge"
        case .malformed: "malformed"
        case .timeout: "timeout"
        case .unavailable: "unavailable"
        case .unknown(let code): "unknown(\(code))"
        }
    }
}

/// Every error the PointSub request/response layer reports.
public struct PointSubError: CodedError {
    /// The kinds of failure.
    public enum Code: Sendable, Hashable, CustomStringConvertible {
        /// The server answered with an error message; `message` is the server's text.
        case remote(RemoteErrorCode)
        /// A message is larger than our maximum block size (we refused to send or to read it).
        case messageTooLarge
        /// A local deadline passed. `requestSent`: the whole request had been written, so the
        /// server may have processed it.
        case timeout(requestSent: Bool)
        /// Dialing, opening the stream, or the stream itself failed (see `cause`).
        case connectionFailed(requestSent: Bool)
        /// The remote does not serve the protocol.
        case protocolNotSupported
        /// The remote broke the wire protocol (see `violation`).
        case protocolViolation
        /// The calling task was cancelled.
        case cancelled
        /// The client was closed.
        case clientClosed
        /// A configuration value is out of range.
        case invalidConfiguration
        /// `start` for a protocol this server (or another handler on the host) already serves.
        case alreadyServing
        /// The server was stopped.
        case serverStopped
        /// A peer that cannot be a server node (our own peer ID).
        case invalidNode
        /// `sendClosest` for a protocol without server nodes.
        case noServerNodes
        /// `sendClosest` tried every node and each failed; `nodeFailures` holds each node's error.
        case allNodesFailed

        /// The case's name, e.g. `timeout(requestSent: true)`.
        public var description: String {
            switch self {
            case .remote(let code): "remote(\(code))"
            case .messageTooLarge: "messageTooLarge"
            case .timeout(let sent): "timeout(requestSent: \(sent))"
            case .connectionFailed(let sent): "connectionFailed(requestSent: \(sent))"
            case .protocolNotSupported: "protocolNotSupported"
            case .protocolViolation: "protocolViolation"
            case .cancelled: "cancelled"
            case .clientClosed: "clientClosed"
            case .invalidConfiguration: "invalidConfiguration"
            case .alreadyServing: "alreadyServing"
            case .serverStopped: "serverStopped"
            case .invalidNode: "invalidNode"
            case .noServerNodes: "noServerNodes"
            case .allNodesFailed: "allNodesFailed"
            }
        }
    }

    /// What exactly broke the protocol, for `.protocolViolation`.
    public enum Violation: Sendable, Hashable {
        /// A message kind this version does not define.
        case unknownKind(UInt8)
        /// A valid kind from the wrong side (e.g. a response sent to a server).
        case unexpectedKind(UInt8)
        /// Flag bits that must be zero were set.
        case reservedFlags(UInt8)
        /// Non-minimal or over-long (more than 9 bytes) uvarint.
        case invalidVarint
        /// The stream ended inside a message.
        case truncated
        /// The zlib data is corrupt, truncated, or followed by extra bytes.
        case corruptCompressedData
        /// The decompressed size differs from `original`.
        case originalSizeMismatch
        /// An error message without a code byte (an empty payload).
        case invalidErrorPayload
        /// Bytes that are not an answer to anything (e.g. after a reply, before the next request).
        case unsolicitedData
    }

    /// What kind of failure.
    public var code: Code
    /// Human-readable text; for `.remote` exactly the server's message.
    public var message: String
    /// What exactly broke the protocol, for `.protocolViolation`.
    public var violation: Violation?
    /// The lower layer's error behind this one (a `HostError`, a `YamuxError`…), if any.
    public var cause: (any Error)?
    /// For `sendClosest` failures (`.allNodesFailed`, or `.timeout` when the call ran out of time
    /// before trying every node): the node tried and the error it failed with, in the order tried.
    public var nodeFailures: [NodeFailure] = []

    /// One node's failure within a `sendClosest` call.
    public struct NodeFailure: Sendable, CustomStringConvertible {
        /// The node tried.
        public var node: PeerID
        /// Its error.
        public var error: PointSubError

        /// `node` failed with `error`.
        public init(node: PeerID, error: PointSubError) {
            self.node = node
            self.error = error
        }

        /// `node: error`.
        public var description: String { "\(node): \(error)" }
    }

    /// An error of kind `code`, with the lower-level `cause`, if any.
    public init(_ code: Code, _ message: String, violation: Violation? = nil, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.violation = violation
        self.cause = cause
    }

    static func violation(_ violation: Violation, _ message: String) -> PointSubError {
        PointSubError(.protocolViolation, message, violation: violation)
    }

    /// Whether sending the same request again is safe and may succeed: the server said nothing
    /// was processed (`busy`, `unavailable`), or the request never fully left us (connection
    /// refused/reset, connect timeout) — except failures that cannot go away by retrying (no
    /// address known for the peer, our own host shut down).
    public var isRetryable: Bool {
        switch code {
        case .remote(let remote): return remote.isRetryable
        case .timeout(let sent): return !sent
        case .connectionFailed(let sent):
            if sent { return false }
            if let host = cause as? HostError {
                switch host.code {
                case .noAddresses, .dialSelf, .invalidAddress, .shutDown: return false
                default: return true
                }
            }
            return true
        default: return false
        }
    }

    /// The standard description, then each node's failure: `nodeFailures` are not the cause (a
    /// `sendClosest` failure has none of its own) and would be lost otherwise.
    public var description: String {
        var text = codedDescription
        if !nodeFailures.isEmpty { text += " [" + nodeFailures.map(\.description).joined(separator: "; ") + "]" }
        return text
    }
}
