import Basics
import Identity
import LibP2P
import Multiformats
import Resources

/// Errors of the stream-as-connection layer (`PointSubNet`, `PointSubConnection`, `PointSubListener`).
///
/// `PointSubNet.dial` passes the host's own errors through unchanged (`HostError` with
/// `.protocolNotSupported`, `.dialFailed`, `.noAddresses`, …), since they are typed already.
public struct PointSubNetError: CodedError {
    /// The kinds of failure.
    public enum Code: String, ErrorCode {
        /// A read or write did not finish before its deadline (Go's `os.ErrDeadlineExceeded`).
        /// The connection stays usable; set a later deadline (or none) to continue.
        case timeout
        /// The connection (or listener) was closed locally, or the write side was half-closed.
        case closed
        /// The stream was reset, by the peer or locally, or its libp2p connection ended.
        case reset
        /// A handler for the protocol is registered already (another listener or service).
        case alreadyListening
        /// A second `read` while one is pending: a connection has one reader at a time.
        case concurrentRead
    }

    /// What kind of failure.
    public var code: Code
    /// What went wrong at this layer.
    public var message: String
    /// The lower layer's error behind this one (a `YamuxError`, a `HostError`), if any.
    public var cause: (any Error)?

    /// An error of kind `code`, with the lower-level `cause`, if any.
    public init(_ code: Code, _ message: String, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    /// Like Go's `net.Error.Timeout()`.
    public var isTimeout: Bool { code == .timeout }
}

/// The address of either end of a `PointSubConnection` or `PointSubListener`: a peer ID on the
/// `pointsub` network (Go's `net.Addr` with `Network() == "pointsub"`, `String()` = the peer ID).
public struct PointSubAddress: Sendable, Hashable, CustomStringConvertible {
    public static let networkName = "pointsub"

    public let peer: PeerID
    public var network: String { Self.networkName }
    public var description: String { peer.description }

    public init(peer: PeerID) {
        self.peer = peer
    }
}
