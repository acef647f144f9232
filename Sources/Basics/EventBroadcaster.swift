import NIOConcurrencyHelpers

/// Subscribers to a stream of events, each with an `AsyncStream` of its own that holds the
/// newest `bufferingNewest` events its reader has not consumed (older ones are dropped: a slow
/// reader never holds up the sender or grows memory). After `finish()` every subscription ends,
/// and later ones end at once.
public final class EventBroadcaster<Element: Sendable>: Sendable {
    private struct State {
        var subscribers: [UInt64: AsyncStream<Element>.Continuation] = [:]
        var next: UInt64 = 0
        var finished = false
    }

    private let state = NIOLockedValueBox(State())
    /// How many unconsumed events each subscription holds.
    public let bufferingNewest: Int

    /// No subscribers yet; each will hold up to `bufferingNewest` unconsumed events.
    public init(bufferingNewest: Int) {
        self.bufferingNewest = bufferingNewest
    }

    /// A new subscription; its first element is `first` when given (e.g. the current state).
    public func subscribe(first: Element? = nil) -> AsyncStream<Element> {
        let (stream, continuation) = AsyncStream<Element>.makeStream(bufferingPolicy: .bufferingNewest(bufferingNewest))
        let id = state.withLockedValue { s -> UInt64? in
            guard !s.finished else { return nil }
            defer { s.next += 1 }
            s.subscribers[s.next] = continuation
            return s.next
        }
        if let first { continuation.yield(first) }
        guard let id else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLockedValue { $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    /// Sends `element` to every subscriber.
    public func yield(_ element: Element) {
        for subscriber in state.withLockedValue({ Array($0.subscribers.values) }) { subscriber.yield(element) }
    }

    /// Ends every subscription, and those made later at once.
    public func finish() {
        let subscribers = state.withLockedValue { s in
            defer { s.subscribers = [:]; s.finished = true }
            return Array(s.subscribers.values)
        }
        subscribers.forEach { $0.finish() }
    }
}
