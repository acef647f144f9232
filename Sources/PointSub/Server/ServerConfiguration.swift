extension PointSubServer {
    public struct Configuration: Sendable, DefaultsConfigurable {
        /// How long the bytes of a request may take to arrive once its first byte came, and how
        /// long a new stream may take to send its first request. Between requests on an
        /// established stream the idle timeout applies instead.
        public var readTimeout: Duration = .seconds(30)
        /// How long writing a reply may take (a client that does not read stalls it).
        public var writeTimeout: Duration = .seconds(30)
        /// How long the handler may run; then the client gets an error of code `timeout`.
        public var handlerTimeout: Duration = .seconds(30)
        /// Largest `length` and `original` accepted (spec default 32 MiB); larger requests are
        /// refused with `tooLarge`, larger responses replaced by a `handler` error.
        public var maxBlockSize = 32 * 1024 * 1024
        /// Concurrently open PointSub streams; beyond it a new stream is refused with `busy`.
        public var connectionLimit = AdaptiveLimit.Configuration()
        /// After this many requests on one stream the server replies and then closes it; nil: no limit.
        public var maxRequestsPerConnection: Int? = nil
        /// A stream waiting for its next request longer than this is closed by the cleanup.
        public var idleTimeout: Duration = .seconds(10 * 60)
        /// How often the cleanup looks for idle streams.
        public var cleanupInterval: Duration = .seconds(5 * 60)
        /// Read buffers kept for reuse (0: no pooling), and the largest one kept.
        public var bufferPoolSize = 256
        public var bufferPoolMaxBufferSize = 1024 * 1024
        /// Compress responses per docs/PROTOCOL.md (≥ 1 KiB and saves ≥ 10 %). Compressed
        /// requests are always accepted.
        public var compression = true
        /// After refusing a request as `tooLarge` or `malformed`, how long the server keeps
        /// reading (and discarding) what the client still sends before it resets the stream.
        public var refusalLinger: Duration = .seconds(2)

        public init() {}


        /// Throws `.invalidConfiguration` naming the first bad value.
        public func validate() throws(PointSubError) {
            func fail(_ text: String) -> PointSubError { PointSubError(.invalidConfiguration, text) }
            for (name, value) in [
                ("readTimeout", readTimeout), ("writeTimeout", writeTimeout), ("handlerTimeout", handlerTimeout),
                ("idleTimeout", idleTimeout), ("cleanupInterval", cleanupInterval), ("refusalLinger", refusalLinger),
            ] where value <= .zero {
                throw fail("\(name) must be positive (is \(value))")
            }
            guard maxBlockSize > 0 else { throw fail("maxBlockSize must be positive (is \(maxBlockSize))") }
            if let maxRequestsPerConnection, maxRequestsPerConnection < 1 {
                throw fail("maxRequestsPerConnection must be at least 1 (is \(maxRequestsPerConnection))")
            }
            guard bufferPoolSize >= 0 else { throw fail("bufferPoolSize must not be negative") }
            guard bufferPoolMaxBufferSize > 0 else { throw fail("bufferPoolMaxBufferSize must be positive") }
            if let problem = connectionLimit.problem() { throw fail(problem) }
        }
    }

    /// Counters since the server was made.
    public struct Statistics: Sendable, Equatable {
        /// Streams admitted.
        public var streamsAccepted = 0
        /// Requests answered (with a response or an error message).
        public var requestsHandled = 0
        public var busyRefusals = 0
        public var unavailableRefusals = 0
        public var tooLargeRefusals = 0
        public var malformedRefusals = 0
        public var handlerErrors = 0
        public var handlerTimeouts = 0
        public var compressedRequests = 0
        public var compressedResponses = 0
        /// Streams closed by the idle cleanup.
        public var idleStreamsClosed = 0
        /// Streams closed after `maxRequestsPerConnection`.
        public var streamsRetired = 0
    }
}
