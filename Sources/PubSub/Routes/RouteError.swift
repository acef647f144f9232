import Basics
import LibP2P
import PointSubCore

/// Every error a `RouteTable` reports: bad routes, unknown names, and the outcome of a dispatch
/// that got no reply. `route` names the route concerned, when there is one.
public struct RouteError: CodedError {
    /// The kinds of failure.
    public enum Code: Sendable, Hashable, CustomStringConvertible {
        /// The route name is empty or too long.
        case invalidName
        /// The address cannot be a route: no `/p2p/<peer id>` at the end, or nothing to dial before it.
        case invalidAddress
        /// The address is our own peer.
        case selfRoute
        /// A route with this name exists already.
        case duplicateName
        /// A route to this address (the same peer ID) exists already, under another or the same name.
        case duplicateAddress
        /// No route has this name.
        case unknownRoute
        /// No reply within the per-peer timeout (connecting included).
        case timeout
        /// Connecting, opening the stream, or the stream itself failed.
        case connectionFailed
        /// The peer does not serve the table's protocol.
        case protocolNotSupported
        /// The peer's reply broke the PointSub wire protocol.
        case protocolViolation
        /// The peer answered with an error (its handler failed, it is busy or shutting down…).
        case remote(RemoteErrorCode)
        /// The message exceeds `maxMessageSize`: ours (nothing was sent), or the peer's (it
        /// answered `tooLarge`).
        case messageTooLarge
        /// The calling task was cancelled.
        case cancelled
        /// The table was closed.
        case closed
        /// Another handler on the host serves the table's protocol already.
        case protocolInUse
        /// A configuration value is out of range.
        case invalidConfiguration

        /// The case's name, e.g. `remote(busy)`.
        public var description: String {
            switch self {
            case .invalidName: "invalidName"
            case .invalidAddress: "invalidAddress"
            case .selfRoute: "selfRoute"
            case .duplicateName: "duplicateName"
            case .duplicateAddress: "duplicateAddress"
            case .unknownRoute: "unknownRoute"
            case .timeout: "timeout"
            case .connectionFailed: "connectionFailed"
            case .protocolNotSupported: "protocolNotSupported"
            case .protocolViolation: "protocolViolation"
            case .remote(let code): "remote(\(code))"
            case .messageTooLarge: "messageTooLarge"
            case .cancelled: "cancelled"
            case .closed: "closed"
            case .protocolInUse: "protocolInUse"
            case .invalidConfiguration: "invalidConfiguration"
            }
        }
    }

    /// What kind of failure.
    public var code: Code
    /// What went wrong at this layer; for `.remote`, exactly the peer's text.
    public var message: String
    /// The route concerned, if any.
    public var route: String?
    /// The cause, e.g. the `PointSubError` of a failed dispatch (it tells whether the request
    /// had been sent when a timeout struck).
    public var cause: (any Error)?

    /// An error of kind `code` about `route`, with the lower-level `cause`, if any.
    public init(_ code: Code, _ message: String, route: String? = nil, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.route = route
        self.cause = cause
    }

    /// The dispatch outcome for a PointSub failure.
    init(dispatchFailure error: PointSubError, route: String) {
        let code: Code =
            switch error.code {
            case .timeout: .timeout
            case .connectionFailed: .connectionFailed
            case .protocolNotSupported: .protocolNotSupported
            case .protocolViolation: .protocolViolation
            case .remote(.tooLarge), .messageTooLarge: .messageTooLarge
            case .remote(let remote): .remote(remote)
            case .cancelled: .cancelled
            case .clientClosed: .closed
            case .invalidConfiguration: .invalidConfiguration
            // Server-side and node-list codes a send never produces.
            case .alreadyServing, .serverStopped, .invalidNode, .noServerNodes, .allNodesFailed: .connectionFailed
            }
        if case .remote = code {
            // The peer's answer is the whole story: its text is this error's message, and the
            // PointSubError (the same code and text) is not kept as a cause that would repeat it.
            self.init(code, error.message, route: route)
        } else {
            self.init(code, "dispatch to \(route) failed", route: route, cause: error)
        }
    }
}
