import Identity
import LibP2P
import Multiformats
import Resources

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
        /// Requests in progress at once (being read, handled or answered; an idle stream holds
        /// no slot), adapted to the load; a request beyond it is refused with `busy`.
        public var connectionLimit = AdaptiveLimit.Configuration()
        /// Fraction of `connectionLimit`'s current value one peer may use at once (at least one
        /// request): 1/4 by default, so one peer can never take every slot and an honest peer is
        /// still served while another saturates its share. Beyond it the peer's request gets `busy`.
        public var perPeerRequestShare = 0.25
        /// Streams waiting for a request (idle between requests, or new and not yet sent a byte),
        /// in total and per peer. A new stream beyond either is refused with `busy`; a stream that
        /// would become idle beyond either after its reply is closed (the client opens another).
        /// An idle stream holds no request slot and little memory (no read buffer).
        public var maxIdleStreams = 8192
        /// See `maxIdleStreams`; above a client's default pool of 100 streams per protocol.
        public var maxIdleStreamsPerPeer = 256
        /// Decompressed bytes of requests in flight at most, over all streams (64 MiB by default:
        /// two requests at the 32 MiB maximum block size). A compressed request reserves its
        /// declared decompressed size (and as much in the host resource manager's `pointsub`
        /// service scope) before it is inflated, until it is answered; when no room comes within
        /// `readTimeout` it is refused with `busy`.
        public var maxDecompressedBytesInFlight = 64 * 1024 * 1024
        /// `run()` (ServiceLifecycle): how long requests in progress may take to finish after a
        /// graceful shutdown was requested before what is left is reset.
        public var drainTimeout: Duration = .seconds(5)
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
                ("drainTimeout", drainTimeout),
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
            guard perPeerRequestShare > 0, perPeerRequestShare <= 1 else {
                throw fail("perPeerRequestShare must be within (0, 1] (is \(perPeerRequestShare))")
            }
            guard maxIdleStreams >= 0 else { throw fail("maxIdleStreams must not be negative") }
            guard maxIdleStreamsPerPeer >= 0 else { throw fail("maxIdleStreamsPerPeer must not be negative") }
            guard maxDecompressedBytesInFlight > 0 else { throw fail("maxDecompressedBytesInFlight must be positive") }
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
        /// New streams refused (`busy`) because of `maxIdleStreams` or `maxIdleStreamsPerPeer`,
        /// and streams closed after a reply for the same reason.
        public var idleStreamRefusals = 0
        /// Requests refused with `busy` because their peer held its share of the slots (also
        /// counted in `busyRefusals`).
        public var perPeerRefusals = 0
        /// Streams reset because a request did not arrive within `readTimeout`.
        public var readTimeouts = 0
    }
}
