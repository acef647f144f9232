import LibP2P

extension RouteTable {
    /// What happens to a connection the table dialed once a dispatch over it is over.
    public enum Mode: String, Sendable, CaseIterable {
        /// Kept open and reused by later dispatches to the same route (the request stream too).
        case persistent
        /// Closed after the exchange, unless another dispatch of this table to the same peer is
        /// still running (the last one closes it).
        case short
    }

    public struct Configuration: Sendable, DefaultsConfigurable {
        /// The PointSub protocol dispatches travel on; both sides must use the same.
        public var protocolID = "/pointsub/route/1.0.0"
        public var mode = Mode.persistent
        /// Time limit of one dispatch to one peer, connecting included: the default deadline of
        /// `dispatch` and `dispatchAll` (whose routes all run until that one deadline).
        public var timeout: Duration = .seconds(10)
        /// Largest message sent or accepted, and largest reply accepted, in bytes.
        public var maxMessageSize = 4 * 1024 * 1024
        /// Retries of a failure where the request was never sent (connection refused, a
        /// connection closing under us), after `retryInterval`, within `timeout`. Requests that
        /// may have reached the peer are never sent twice.
        public var maxRetries = 1
        public var retryInterval: Duration = .milliseconds(100)
        /// How long the handler of an incoming dispatch may run; then the sender gets a
        /// `.remote(.timeout)` error.
        public var handlerTimeout: Duration = .seconds(30)
        /// Closing a connection the table dialed lets streams still open on it (other protocols,
        /// the peer's own requests) finish for at most this long.
        public var closeGracePeriod: Duration = .seconds(1)

        public init() {}

        /// Throws `.invalidConfiguration` naming the first bad value.
        public func validate() throws(RouteError) {
            func fail(_ text: String) -> RouteError { RouteError(.invalidConfiguration, text) }
            guard protocolID.hasPrefix("/") else { throw fail("protocolID must start with / (is \(protocolID))") }
            for (name, value) in [
                ("timeout", timeout), ("handlerTimeout", handlerTimeout), ("closeGracePeriod", closeGracePeriod),
            ] where value <= .zero {
                throw fail("\(name) must be positive (is \(value))")
            }
            guard retryInterval >= .zero else { throw fail("retryInterval must not be negative") }
            guard maxRetries >= 0 else { throw fail("maxRetries must not be negative (is \(maxRetries))") }
            guard maxMessageSize > 0 else { throw fail("maxMessageSize must be positive (is \(maxMessageSize))") }
        }
    }

    /// Counters since the table was made.
    public struct Statistics: Sendable, Equatable {
        /// Dispatches to a known route (each route of a `dispatchAll` counts), and how they ended.
        public var dispatches = 0
        public var replies = 0
        public var failures = 0
        /// Connections the table's dispatches dialed, and those it closed again.
        public var connectionsDialed = 0
        public var connectionsClosed = 0
        /// Incoming dispatches answered by the handler (with a reply or its error).
        public var handled = 0
    }
}
