import NIOCore
import Testing

@testable import PubSub

/// The per-peer outbound queue: bounded, in order, and what queued up is taken in one batch.
@Suite(.timeLimit(.minutes(1)))
struct OutboundQueueTests {
    static func frame(_ text: String, messages: Int = 1, id: MessageID? = nil) -> PubSubService.OutboundFrame {
        PubSubService.OutboundFrame(bytes: ByteBuffer(string: text), messageCount: messages, messageID: id.map(MessageKey.init))
    }

    @Test func queuedFramesAreJoinedInOrderUpToTheByteLimit() async throws {
        let queue = OutboundQueue(capacity: 10)
        for text in ["aa", "bb", "cc", "dd"] { #expect(queue.yield(Self.frame(text)) == .queued) }
        #expect(queue.yield(Self.frame("control", messages: 0)) == .queued)
        let first = try #require(await queue.next(maxBytes: 6))
        #expect(String(buffer: first.bytes) == "aabbcc")
        #expect(first.messageCount == 3)
        let second = try #require(await queue.next(maxBytes: 100))
        #expect(String(buffer: second.bytes) == "ddcontrol")
        #expect(second.messageCount == 1)
    }

    @Test func aFrameLargerThanTheLimitGoesAlone() async throws {
        let queue = OutboundQueue(capacity: 10)
        _ = queue.yield(Self.frame("0123456789"))
        _ = queue.yield(Self.frame("x"))
        let first = try #require(await queue.next(maxBytes: 4))
        #expect(String(buffer: first.bytes) == "0123456789")
        let second = try #require(await queue.next(maxBytes: 4))
        #expect(String(buffer: second.bytes) == "x")
    }

    @Test func aFrameSharedWithAnotherQueueIsNotChanged() async throws {
        let shared = Self.frame("shared")
        let a = OutboundQueue(capacity: 4)
        let b = OutboundQueue(capacity: 4)
        _ = a.yield(shared)
        _ = a.yield(Self.frame("+a"))
        _ = b.yield(shared)
        let joined = try #require(await a.next(maxBytes: 100))
        #expect(String(buffer: joined.bytes) == "shared+a")
        let alone = try #require(await b.next(maxBytes: 100))
        #expect(String(buffer: alone.bytes) == "shared")
        #expect(String(buffer: shared.bytes) == "shared")
    }

    @Test func aFullQueueRefusesNewFrames() {
        let queue = OutboundQueue(capacity: 2)
        #expect(queue.yield(Self.frame("1")) == .queued)
        #expect(queue.yield(Self.frame("2")) == .queued)
        #expect(queue.yield(Self.frame("3")) == .dropped)
    }

    @Test func afterFinishWhatIsQueuedIsStillTakenThenNil() async throws {
        let queue = OutboundQueue(capacity: 4)
        _ = queue.yield(Self.frame("last"))
        queue.finish()
        #expect(queue.yield(Self.frame("too late")) == .dropped)
        let frame = try #require(await queue.next(maxBytes: 100))
        #expect(String(buffer: frame.bytes) == "last")
        let end = await queue.next(maxBytes: 100)
        #expect(end == nil)
    }

    @Test func aWaitingConsumerWakesForAFrameAndForFinish() async throws {
        let queue = OutboundQueue(capacity: 4)
        let consumer = Task { () -> [String] in
            var taken: [String] = []
            while let frame = await queue.next(maxBytes: 100) { taken.append(String(buffer: frame.bytes)) }
            return taken
        }
        try await Task.sleep(for: .milliseconds(20))
        _ = queue.yield(Self.frame("woke"))
        try await Task.sleep(for: .milliseconds(20))
        queue.finish()
        let taken = await consumer.value
        #expect(taken == ["woke"])
    }

    @Test func framesOfAMessageThePeerSentUsAreLeftOut() async throws {
        let queue = OutboundQueue(capacity: 10)
        _ = queue.yield(Self.frame("m1", id: [1]))
        _ = queue.yield(Self.frame("m2", id: [2]))
        _ = queue.yield(Self.frame("ctl+m2", id: nil))  // more than the message: always sent
        queue.peerSent(MessageKey([2]))
        #expect(queue.yield(Self.frame("m2 again", id: [2])) == .suppressed)
        let batch = try #require(await queue.next(maxBytes: 100))
        #expect(String(buffer: batch.bytes) == "m1ctl+m2")
        #expect(batch.messageCount == 2)
        #expect(batch.suppressed == 1)

        // Only left-out frames: an empty batch still reports them.
        _ = queue.yield(Self.frame("m3", id: [3]))
        queue.peerSent(MessageKey([3]))
        let empty = try #require(await queue.next(maxBytes: 100))
        #expect(empty.bytes.readableBytes == 0 && empty.messageCount == 0 && empty.suppressed == 1)
    }

    @Test func recentIDsForgetTheOldestBeyondCapacity() {
        var ids = RecentIDs(capacity: 2)
        ids.insert(MessageKey([1]))
        ids.insert(MessageKey([2]))
        ids.insert(MessageKey([1]))  // already there: not moved, not counted twice
        ids.insert(MessageKey([3]))
        #expect(!ids.contains(MessageKey([1])))
        #expect(ids.contains(MessageKey([2])) && ids.contains(MessageKey([3])))
    }

    @Test func cancellingTheConsumerEndsItsWait() async {
        let queue = OutboundQueue(capacity: 4)
        let consumer = Task { await queue.next(maxBytes: 100) }
        try? await Task.sleep(for: .milliseconds(20))
        consumer.cancel()
        let result = await consumer.value
        #expect(result == nil)
    }
}
