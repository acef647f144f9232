import Identity

/// A change in who subscribes to what, from `PubSubService.events()`.
public enum PubSubEvent: Sendable, Hashable {
    /// `peer` (with a pubsub stream to or from us) announced a subscription to `topic`.
    case peerJoined(topic: String, peer: PeerID)
    /// `peer` unsubscribed from `topic`, or is no longer a pubsub peer (its streams or its
    /// connection ended, or it was dropped).
    case peerLeft(topic: String, peer: PeerID)
}
