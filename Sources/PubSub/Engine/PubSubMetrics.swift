import Metrics

/// The service's swift-metrics instruments (`pointsub_pubsub_…`). No dimension carries a topic
/// name: topics are chosen by remote peers, and every distinct value would be a new time series.
struct PubSubMetrics: Sendable {
    /// Messages we published.
    let published = Counter(label: "pointsub_pubsub_messages_published_total")
    /// Messages that arrived from peers, every copy counted.
    let received = Counter(label: "pointsub_pubsub_messages_received_total")
    /// Messages handed to local subscriptions.
    let delivered = Counter(label: "pointsub_pubsub_messages_delivered_total")
    /// Copies of messages already seen.
    let duplicates = Counter(label: "pointsub_pubsub_messages_duplicate_total")
    /// Messages that failed StrictSign or that a validator rejected.
    let rejected = Counter(label: "pointsub_pubsub_messages_rejected_total")
    /// RPCs not queued for a peer: its queue was full (frames or bytes), or the memory account
    /// refused the bytes.
    let dropped = Counter(label: "pointsub_pubsub_rpcs_dropped_total")
    /// RPCs ignored because the router graylisted their sender.
    let graylisted = Counter(label: "pointsub_pubsub_rpcs_graylisted_total")
    /// Peers dropped for an oversized or malformed RPC.
    let badRPCs = Counter(label: "pointsub_pubsub_bad_rpcs_total")
    /// Peers dropped because the memory account refused what they were sending.
    let memoryRefusals = Counter(label: "pointsub_pubsub_memory_refusals_total")
    /// Subscriptions of peers ignored because the peer had `maxTopicsPerPeer` already.
    let refusedSubscriptions = Counter(label: "pointsub_pubsub_subscriptions_refused_total")
    /// Pubsub peers (with a stream to or from us) now.
    let peers = Gauge(label: "pointsub_pubsub_peers")
}
