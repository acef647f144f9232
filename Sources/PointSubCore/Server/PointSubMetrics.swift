import Metrics

/// The server's swift-metrics instruments (`pointsub_…`). Dimension values are fixed words
/// chosen here, never text from the network (a remote peer must not grow the label space).
struct PointSubServerMetrics: Sendable {
    /// How a request ended, the `result` dimension of `pointsub_requests_total`.
    enum Result: String, CaseIterable, Sendable {
        case ok, busy, tooLarge, malformed, timeout, handlerError, unavailable
    }

    /// Why a request or stream was refused, the `reason` dimension of `pointsub_refusals_total`.
    enum Refusal: String, CaseIterable, Sendable {
        /// Every request slot was taken.
        case busy
        /// The peer held its share of the slots.
        case peerBusy
        /// Too many idle streams (in total or of the peer).
        case idleStreams
        /// No room to decompress within the decompressed-bytes-in-flight bound.
        case decompression
        /// The resource manager refused memory for a large request's payload.
        case memory
        case tooLarge, malformed
        /// The request did not arrive within the read timeout.
        case readTimeout
        case unavailable
    }

    private let results: [Result: Counter]
    private let refusals: [Refusal: Counter]
    /// From a request's first bytes to its reply written.
    let latency: Metrics.Timer
    /// Request bytes as received (compressed where they were) and reply bytes as sent.
    let bytesIn: Counter
    let bytesOut: Counter
    /// Compressed request payload bytes received and what they decompressed to (their ratio is
    /// the compression ratio).
    let compressedBytesIn: Counter
    let decompressedBytesIn: Counter
    /// Requests being read, handled or answered now.
    let inFlight: Gauge
    /// Decompressed bytes reserved now.
    let decompressedInFlight: Gauge

    init() {
        var results: [Result: Counter] = [:]
        for result in Result.allCases {
            results[result] = Counter(label: "pointsub_requests_total", dimensions: [("result", result.rawValue)])
        }
        self.results = results
        var refusals: [Refusal: Counter] = [:]
        for reason in Refusal.allCases {
            refusals[reason] = Counter(label: "pointsub_refusals_total", dimensions: [("reason", reason.rawValue)])
        }
        self.refusals = refusals
        latency = Metrics.Timer(label: "pointsub_request_duration_seconds", preferredDisplayUnit: .seconds)
        bytesIn = Counter(label: "pointsub_request_bytes_total")
        bytesOut = Counter(label: "pointsub_response_bytes_total")
        compressedBytesIn = Counter(label: "pointsub_request_compressed_bytes_total")
        decompressedBytesIn = Counter(label: "pointsub_request_decompressed_bytes_total")
        inFlight = Gauge(label: "pointsub_requests_in_flight")
        decompressedInFlight = Gauge(label: "pointsub_decompressed_bytes_in_flight")
    }

    func count(_ result: Result) { results[result]?.increment() }
    func refused(_ reason: Refusal) { refusals[reason]?.increment() }
}
