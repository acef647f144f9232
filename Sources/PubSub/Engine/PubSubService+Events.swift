import Basics
import Identity
import LibP2P
import Logging

extension PubSubService {
    // MARK: - Events

    /// A new subscription to the service's events: peers joining and leaving topics, in the
    /// order they happened. Holds the newest 1024 events if not consumed; ends when the service
    /// stops (at once if it has stopped already).
    public func events() -> AsyncStream<PubSubEvent> {
        let (stream, continuation) = AsyncStream<PubSubEvent>.makeStream(bufferingPolicy: .bufferingNewest(1024))
        let id = state.withLockedValue { s -> UInt64? in
            guard s.phase != .stopped else { return nil }
            let id = s.takeID()
            s.eventSubscribers[id] = continuation
            return id
        }
        guard let id else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLockedValue { $0.eventSubscribers.removeValue(forKey: id) }
        }
        return stream
    }

    /// Waits until at least `count` peers are known to subscribe to `topic` (e.g. before
    /// publishing the first message) and returns them. Throws `.notEnoughPeers` if that does not
    /// happen before `deadline` (or the calling task is cancelled), `.notRunning` if the service
    /// is not running or stops meanwhile.
    @discardableResult
    public func waitForPeers(topic: String, count: Int = 1, deadline: Deadline) async throws(PubSubError) -> [PeerID] {
        // Subscribed before looking, so no join in between is missed.
        let events = events()
        let known = peers(topic: topic)
        if known.count >= count { return known }
        guard state.withLockedValue({ $0.phase == .running }) else { throw .notRunning }
        enum Outcome: Sendable { case reached, stopped, timedOut }
        struct TimedOut: Error {}
        let outcome: Outcome
        do {
            outcome = try await withDeadline(deadline, on: host.eventLoopGroup.any(), onTimeout: { TimedOut() }) {
                [weak self] () -> Outcome in
                for await event in events {
                    guard let self else { return .stopped }
                    if case .peerJoined(topic, _) = event, self.peers(topic: topic).count >= count { return .reached }
                }
                // Ended: the service stopped (or the deadline cancelled this task: that result is dropped).
                return .stopped
            }
        } catch {
            outcome = .timedOut
        }
        let now = peers(topic: topic)
        if now.count >= count { return now }
        switch outcome {
        case .stopped: throw .notRunning
        case .reached, .timedOut: throw .notEnoughPeers(topic: topic, known: now.count, required: count)
        }
    }

    /// Under the lock: delivers `event` to every subscriber (yielding runs no subscriber code, and
    /// under the lock the events keep their order).
    func emit(_ event: PubSubEvent, in s: inout State) {
        for subscriber in s.eventSubscribers.values { subscriber.yield(event) }
    }

    /// Under the lock: a subscription change announced by `peer` (which is in the router). A peer
    /// subscribed to `maxTopicsPerPeer` topics has further subscriptions ignored.
    func peerSubscription(
        _ peer: PeerID, _ subscription: PubSubRPC.SubOpts, now: ContinuousClock.Instant, in s: inout State
    ) -> [PubSubRouterAction] {
        let topic = subscription.topic
        if subscription.subscribe {
            guard s.peerTopics[peer]?.contains(topic) != true else { return [] }
            guard (s.peerTopics[peer]?.count ?? 0) < configuration.maxTopicsPerPeer else {
                s.counters.refusedSubscriptions += 1
                metrics.refusedSubscriptions.increment()
                peerLog.log(
                    .info, key: "pubsub too many topics", "pubsub subscription refused: the peer has too many topics",
                    metadata: ["peer": "\(peer)", "limit": "\(configuration.maxTopicsPerPeer)"])
                return []
            }
            s.peerTopics[peer, default: []].insert(topic)
            let actions = s.router.peerSubscription(peer, topic: topic, subscribed: true, now: now)
            emit(.peerJoined(topic: topic, peer: peer), in: &s)
            return actions
        }
        guard s.peerTopics[peer]?.remove(topic) != nil else { return [] }
        if s.peerTopics[peer]?.isEmpty == true { s.peerTopics[peer] = nil }
        let actions = s.router.peerSubscription(peer, topic: topic, subscribed: false, now: now)
        emit(.peerLeft(topic: topic, peer: peer), in: &s)
        return actions
    }

    /// Under the lock: the set of pubsub peers may have changed; updates the gauge.
    func peersChanged(_ s: inout State) {
        metrics.peers.record(s.sessions.values.reduce(0) { $0 + ($1.inRouter ? 1 : 0) })
    }
}
