import Identity
import LibP2P
import Multiformats
import Resources

extension PointSubClient {
    public struct Configuration: Sendable, DefaultsConfigurable {
        /// Default time limit of one `send`, retries included.
        public var requestTimeout: Duration = .seconds(30)
        /// Time limit to connect and open a negotiated stream, per attempt.
        public var connectTimeout: Duration = .seconds(5)
        /// Retries of a retryable failure (see `PointSubError.isRetryable`) after the first attempt.
        public var maxRetries = 3
        /// Pause before a retry, varied by ± `retryJitter` (a fraction) so clients spread out.
        public var retryInterval: Duration = .seconds(1)
        public var retryJitter = 0.2
        /// Idle streams kept per (peer, protocol) for reuse; 0 disables the pool.
        public var maxIdleStreams = 100
        /// A pooled stream unused for this long is closed instead of reused.
        public var idleTimeout: Duration = .seconds(5 * 60)
        /// How often expired pooled streams are closed in the background.
        public var cleanupInterval: Duration = .seconds(60)
        /// Largest request we send and largest reply (`length` and `original`) we accept.
        public var maxBlockSize = 32 * 1024 * 1024
        /// Compress requests per docs/PROTOCOL.md (≥ 1 KiB and saves ≥ 10 %). Compressed
        /// replies are always accepted.
        public var compression = true
        /// Decompressed bytes of replies being inflated at once, over all calls (64 MiB: two
        /// replies at the 32 MiB maximum block size). A compressed reply reserves its declared
        /// size (and as much in the host resource manager's `pointsub` service scope) before it
        /// is inflated; a reply that finds no room before the send's deadline fails with
        /// `.timeout(requestSent: true)`.
        public var maxDecompressedBytesInFlight = 64 * 1024 * 1024
        /// Read buffers kept for reuse, and the largest one kept.
        public var bufferPoolSize = 64
        public var bufferPoolMaxBufferSize = 1024 * 1024
        /// Nodes one `sendClosest` tries at most when a `ClosestNodeSource` names them (the
        /// protocol's hand-made node list is always tried in full).
        public var closestNodeLimit = 8

        public init() {}


        /// Throws `.invalidConfiguration` naming the first bad value.
        public func validate() throws(PointSubError) {
            func fail(_ text: String) -> PointSubError { PointSubError(.invalidConfiguration, text) }
            for (name, value) in [
                ("requestTimeout", requestTimeout), ("connectTimeout", connectTimeout),
                ("idleTimeout", idleTimeout), ("cleanupInterval", cleanupInterval),
            ] where value <= .zero {
                throw fail("\(name) must be positive (is \(value))")
            }
            guard retryInterval >= .zero else { throw fail("retryInterval must not be negative") }
            guard (0...1).contains(retryJitter) else { throw fail("retryJitter must be within 0...1 (is \(retryJitter))") }
            guard maxRetries >= 0 else { throw fail("maxRetries must not be negative (is \(maxRetries))") }
            guard maxIdleStreams >= 0 else { throw fail("maxIdleStreams must not be negative") }
            guard maxBlockSize > 0 else { throw fail("maxBlockSize must be positive (is \(maxBlockSize))") }
            guard maxDecompressedBytesInFlight > 0 else { throw fail("maxDecompressedBytesInFlight must be positive") }
            guard bufferPoolSize >= 0 else { throw fail("bufferPoolSize must not be negative") }
            guard bufferPoolMaxBufferSize > 0 else { throw fail("bufferPoolMaxBufferSize must be positive") }
            guard closestNodeLimit >= 1 else { throw fail("closestNodeLimit must be at least 1 (is \(closestNodeLimit))") }
        }
    }

    /// Counters since the client was made.
    public struct Statistics: Sendable, Equatable {
        /// `send` calls, and how they ended.
        public var requests = 0
        public var succeeded = 0
        public var failed = 0
        /// Attempts repeated because of a retryable error (counted against `maxRetries`).
        public var retries = 0
        /// Requests repeated on a fresh stream because a pooled one turned out to be dead
        /// (not counted as retries).
        public var staleStreamRetries = 0
        public var streamsOpened = 0
        public var streamsReused = 0
        /// Streams dropped because they broke or the server ended them.
        public var streamsDropped = 0
        public var compressedRequests = 0
        public var compressedResponses = 0
    }
}
