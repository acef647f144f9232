import Identity

/// Which connected pubsub peers subscribe to which topics, and which protocol each peer speaks.
/// Shared bookkeeping of every router (floodsub, gossipsub); a value type like the routers.
public struct TopicMembership: Sendable {
    /// Connected pubsub peers and the protocol their stream negotiated.
    public private(set) var protocolOf: [PeerID: String] = [:]
    private var peersByTopic: [String: Set<PeerID>] = [:]
    private var topicsByPeer: [PeerID: Set<String>] = [:]

    public init() {}

    public var peers: Dictionary<PeerID, String>.Keys { protocolOf.keys }

    public func contains(_ peer: PeerID) -> Bool { protocolOf[peer] != nil }

    public mutating func addPeer(_ peer: PeerID, protocolID: String) {
        protocolOf[peer] = protocolID
    }

    /// Forgets the peer and its subscriptions; returns the topics it was subscribed to.
    @discardableResult
    public mutating func removePeer(_ peer: PeerID) -> Set<String> {
        protocolOf[peer] = nil
        let topics = topicsByPeer.removeValue(forKey: peer) ?? []
        for topic in topics {
            peersByTopic[topic]?.remove(peer)
            if peersByTopic[topic]?.isEmpty == true { peersByTopic[topic] = nil }
        }
        return topics
    }

    /// Records a subscription change; returns whether anything changed.
    @discardableResult
    public mutating func setSubscription(_ peer: PeerID, topic: String, subscribed: Bool) -> Bool {
        if subscribed {
            let inserted = topicsByPeer[peer, default: []].insert(topic).inserted
            peersByTopic[topic, default: []].insert(peer)
            return inserted
        }
        guard topicsByPeer[peer]?.remove(topic) != nil else { return false }
        if topicsByPeer[peer]?.isEmpty == true { topicsByPeer[peer] = nil }
        peersByTopic[topic]?.remove(peer)
        if peersByTopic[topic]?.isEmpty == true { peersByTopic[topic] = nil }
        return true
    }

    public func peers(in topic: String) -> Set<PeerID> { peersByTopic[topic] ?? [] }

    public func topics(of peer: PeerID) -> Set<String> { topicsByPeer[peer] ?? [] }
}
