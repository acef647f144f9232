import NIOConcurrencyHelpers

/// Something that learns whether this node is reachable from the internet (AutoNAT v1's
/// ``AutoNATService``, AutoNAT v2's ``AutoNATv2Service``), for those who act on it (the DHT's
/// automatic mode).
public protocol ReachabilityReporting: AnyObject, Sendable {
    /// What is known now.
    var reachability: Reachability { get }
    /// Each change from now on (the current status first); ends when the reporter stops.
    func updates() -> AsyncStream<Reachability>
}

/// The subscribers to a reporter's changes: each gets the current value on subscribing, then
/// every change (the newest 8 kept when it reads slowly), until `finish()`.
final class ReachabilityUpdates: Sendable {
    private struct State {
        var subscribers: [UInt64: AsyncStream<Reachability>.Continuation] = [:]
        var next: UInt64 = 0
        var finished = false
    }

    private let state = NIOLockedValueBox(State())

    /// A new subscription that starts with `current`.
    func subscribe(current: Reachability) -> AsyncStream<Reachability> {
        let (stream, continuation) = AsyncStream<Reachability>.makeStream(bufferingPolicy: .bufferingNewest(8))
        let id = state.withLockedValue { s -> UInt64? in
            guard !s.finished else { return nil }
            defer { s.next += 1 }
            s.subscribers[s.next] = continuation
            return s.next
        }
        continuation.yield(current)
        guard let id else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLockedValue { $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    /// Sends `value` to every subscriber.
    func yield(_ value: Reachability) {
        state.withLockedValue { Array($0.subscribers.values) }.forEach { $0.yield(value) }
    }

    /// Ends every subscription, and those made later at once.
    func finish() {
        let subscribers = state.withLockedValue { s in
            defer { s.subscribers = [:]; s.finished = true }
            return Array(s.subscribers.values)
        }
        subscribers.forEach { $0.finish() }
    }
}
