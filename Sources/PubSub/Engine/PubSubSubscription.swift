/// The messages of one topic, from `PubSubService.subscribe(_:)`, as an AsyncSequence (one consumer).
///
/// The subscription holds at most `PubSubConfiguration.subscriptionBufferSize` messages; while it
/// is full, new messages for it are dropped (counted in `PubSubCounters.subscriberOverflows`), so a
/// slow consumer loses messages but never slows the network down. The sequence ends on `cancel()`,
/// `PubSubService.unsubscribe(_:)` or `stop()`. Cancelling the consuming task, calling `cancel()`,
/// or releasing the subscription (and its iterator) unsubscribes it; the topic is left when its
/// last subscription goes.
public final class PubSubSubscription: AsyncSequence, Sendable {
    public typealias Element = PubSubMessage
    public typealias Failure = Never

    public let topic: String
    private let messages: AsyncStream<PubSubMessage>
    private let onCancel: @Sendable () -> Void

    init(topic: String, messages: AsyncStream<PubSubMessage>, onCancel: @escaping @Sendable () -> Void) {
        self.topic = topic
        self.messages = messages
        self.onCancel = onCancel
    }

    deinit { onCancel() }

    /// Ends this subscription (idempotent).
    public func cancel() { onCancel() }

    public struct AsyncIterator: AsyncIteratorProtocol {
        public typealias Failure = Never
        /// Keeps the subscription alive while it is iterated (`for await m in try service.subscribe(t)`).
        let subscription: PubSubSubscription
        var base: AsyncStream<PubSubMessage>.AsyncIterator

        public mutating func next() async -> PubSubMessage? {
            await base.next()
        }

        public mutating func next(isolation actor: isolated (any Actor)?) async -> PubSubMessage? {
            await base.next(isolation: actor)
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(subscription: self, base: messages.makeAsyncIterator())
    }
}
