import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Testing

@testable import PubSub

/// The per-peer outbound queue: bounded, in order, what queued up is taken in one batch, and
/// written from the sink's event loop.
@Suite(.timeLimit(.minutes(1)))
struct OutboundQueueTests {
    static func frame(_ text: String, messages: Int = 1, id: MessageID? = nil) -> PubSubService.OutboundFrame {
        PubSubService.OutboundFrame(bytes: ByteBuffer(string: text), messageCount: messages, messageID: id.map(MessageKey.init))
    }

    @Test func queuedFramesAreJoinedInOrderUpToTheByteLimit() throws {
        let queue = OutboundQueue(capacity: 10)
        for text in ["aa", "bb", "cc", "dd"] { #expect(queue.yield(Self.frame(text)) == .queued) }
        #expect(queue.yield(Self.frame("control", messages: 0)) == .queued)
        let first = try #require(queue.take(maxBytes: 6))
        #expect(String(buffer: first.bytes) == "aabbcc")
        #expect(first.messageCount == 3)
        let second = try #require(queue.take(maxBytes: 100))
        #expect(String(buffer: second.bytes) == "ddcontrol")
        #expect(second.messageCount == 1)
        #expect(queue.take(maxBytes: 100) == nil)
    }

    /// Gossipsub v1.2 IDONTWANT frames overtake the frames waiting, in their own order.
    @Test func urgentFramesGoFirst() throws {
        let queue = OutboundQueue(capacity: 10)
        for text in ["aa", "bb"] { _ = queue.yield(Self.frame(text)) }
        var urgent = Self.frame("U1", messages: 0)
        urgent.urgent = true
        _ = queue.yield(urgent)
        _ = queue.yield(Self.frame("cc"))
        urgent.bytes = ByteBuffer(string: "U2")
        _ = queue.yield(urgent)
        let batch = try #require(queue.take(maxBytes: 100))
        #expect(String(buffer: batch.bytes) == "U1U2aabbcc")
        #expect(batch.messageCount == 3)
        let idontwant = PubSubRPC(control: .init(idontwant: [.init(messageIDs: [[1]])]))
        #expect(PubSubService.isIDontWantOnly(idontwant))
        #expect(!PubSubService.isIDontWantOnly(PubSubRPC(control: .init(graft: [.init(topic: "t")], idontwant: [.init(messageIDs: [[1]])]))))
        #expect(!PubSubService.isIDontWantOnly(PubSubRPC(subscriptions: [.init(subscribe: true, topic: "t")])))
    }

    @Test func aFrameLargerThanTheLimitGoesAlone() throws {
        let queue = OutboundQueue(capacity: 10)
        _ = queue.yield(Self.frame("0123456789"))
        _ = queue.yield(Self.frame("x"))
        let first = try #require(queue.take(maxBytes: 4))
        #expect(String(buffer: first.bytes) == "0123456789")
        let second = try #require(queue.take(maxBytes: 4))
        #expect(String(buffer: second.bytes) == "x")
    }

    @Test func aFrameSharedWithAnotherQueueIsNotChanged() throws {
        let shared = Self.frame("shared")
        let a = OutboundQueue(capacity: 4)
        let b = OutboundQueue(capacity: 4)
        _ = a.yield(shared)
        _ = a.yield(Self.frame("+a"))
        _ = b.yield(shared)
        let joined = try #require(a.take(maxBytes: 100))
        #expect(String(buffer: joined.bytes) == "shared+a")
        let alone = try #require(b.take(maxBytes: 100))
        #expect(String(buffer: alone.bytes) == "shared")
        #expect(String(buffer: shared.bytes) == "shared")
    }

    @Test func aFullQueueRefusesNewFrames() {
        let queue = OutboundQueue(capacity: 2)
        #expect(queue.yield(Self.frame("1")) == .queued)
        #expect(queue.yield(Self.frame("2")) == .queued)
        #expect(queue.yield(Self.frame("3")) == .dropped(.full))
    }

    @Test func framesOfAMessageThePeerSentUsAreLeftOut() throws {
        let queue = OutboundQueue(capacity: 10)
        _ = queue.yield(Self.frame("m1", id: [1]))
        _ = queue.yield(Self.frame("m2", id: [2]))
        _ = queue.yield(Self.frame("ctl+m2", id: nil))  // more than the message: always sent
        queue.peerSent(MessageKey([2]))
        #expect(queue.yield(Self.frame("m2 again", id: [2])) == .suppressed)
        let batch = try #require(queue.take(maxBytes: 100))
        #expect(String(buffer: batch.bytes) == "m1ctl+m2")
        #expect(batch.messageCount == 2)
        #expect(batch.suppressed == 1)

        // Only left-out frames: an empty batch still reports them.
        _ = queue.yield(Self.frame("m3", id: [3]))
        queue.peerSent(MessageKey([3]))
        let empty = try #require(queue.take(maxBytes: 100))
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

    // MARK: - Draining to a sink on its event loop

    /// A sink on an embedded loop that records what it is given; writes complete at once unless
    /// `hold` is set, then when `release()` is called.
    final class RecordingSink: Sendable {
        struct Log {
            var writes: [String] = []
            var messages = 0
            var suppressed = 0
            var finished = 0
            var failures: [String] = []
            var hold = false
            var held: [EventLoopPromise<Void>] = []
        }

        let loop = EmbeddedEventLoop()
        let log = NIOLockedValueBox(Log())

        var sink: OutboundQueue.Sink {
            OutboundQueue.Sink(
                eventLoop: loop,
                write: { [log, loop] buffer in
                    log.withLockedValue { l -> EventLoopFuture<Void> in
                        l.writes.append(String(buffer: buffer))
                        guard l.hold else { return loop.makeSucceededVoidFuture() }
                        let promise = loop.makePromise(of: Void.self)
                        l.held.append(promise)
                        return promise.futureResult
                    }
                },
                wrote: { [log] messages, suppressed in
                    log.withLockedValue {
                        $0.messages += messages
                        $0.suppressed += suppressed
                    }
                },
                finished: { [log] in log.withLockedValue { $0.finished += 1 } },
                failed: { [log] error in log.withLockedValue { $0.failures.append("\(error)") } })
        }

        var writes: [String] { log.withLockedValue(\.writes) }

        func setHold(_ hold: Bool) { log.withLockedValue { $0.hold = hold } }

        /// Completes the held writes (with `error`, if given).
        func release(failing error: (any Error)? = nil) {
            let held = log.withLockedValue { l -> [EventLoopPromise<Void>] in
                defer { l.held = [] }
                return l.held
            }
            for promise in held {
                if let error { promise.fail(error) } else { promise.succeed() }
            }
        }
    }

    struct WriteFailed: Error {}

    @Test func framesAreWrittenFromTheSinksLoopInOneBatchPerDrain() {
        let queue = OutboundQueue(capacity: 10)
        let recorder = RecordingSink()
        _ = queue.yield(Self.frame("before"))
        queue.attach(recorder.sink)
        _ = queue.yield(Self.frame("+after", messages: 2))
        #expect(recorder.writes.isEmpty)  // nothing is written outside the loop
        recorder.loop.run()
        #expect(recorder.writes == ["before+after"])
        #expect(recorder.log.withLockedValue(\.messages) == 3)
        #expect(queue.count == 0)

        // Idle again: the next frame schedules the next drain.
        _ = queue.yield(Self.frame("later"))
        recorder.loop.run()
        #expect(recorder.writes == ["before+after", "later"])
    }

    @Test func framesQueuedWhileAWriteWaitsGoOutTogetherWhenItCompletes() {
        let queue = OutboundQueue(capacity: 10)
        let recorder = RecordingSink()
        queue.attach(recorder.sink)
        recorder.setHold(true)
        _ = queue.yield(Self.frame("first"))
        recorder.loop.run()
        _ = queue.yield(Self.frame("a"))
        _ = queue.yield(Self.frame("b"))
        recorder.loop.run()
        #expect(recorder.writes == ["first"])  // waits for the first write
        #expect(recorder.log.withLockedValue(\.messages) == 0)
        recorder.setHold(false)
        recorder.release()
        recorder.loop.run()
        #expect(recorder.writes == ["first", "ab"])
        #expect(recorder.log.withLockedValue(\.messages) == 3)
    }

    @Test func finishWritesWhatIsQueuedThenReportsFinishedOnce() {
        let queue = OutboundQueue(capacity: 4)
        let recorder = RecordingSink()
        _ = queue.yield(Self.frame("last"))
        queue.finish()
        #expect(queue.yield(Self.frame("too late")) == .dropped(.finished))
        queue.attach(recorder.sink)
        recorder.loop.run()
        #expect(recorder.writes == ["last"])
        #expect(recorder.log.withLockedValue(\.finished) == 1)
        queue.finish()
        recorder.loop.run()
        #expect(recorder.log.withLockedValue(\.finished) == 1)
    }

    @Test func leftOutFramesAreCountedWithoutAWrite() {
        let queue = OutboundQueue(capacity: 4)
        let recorder = RecordingSink()
        queue.attach(recorder.sink)
        _ = queue.yield(Self.frame("m1", id: [1]))
        queue.peerSent(MessageKey([1]))
        recorder.loop.run()
        #expect(recorder.writes.isEmpty)
        #expect(recorder.log.withLockedValue(\.suppressed) == 1)
    }

    @Test func aFailedWriteEndsTheQueue() {
        let queue = OutboundQueue(capacity: 4)
        let recorder = RecordingSink()
        queue.attach(recorder.sink)
        recorder.setHold(true)
        _ = queue.yield(Self.frame("doomed"))
        recorder.loop.run()
        _ = queue.yield(Self.frame("never"))
        recorder.release(failing: WriteFailed())
        recorder.loop.run()
        #expect(recorder.log.withLockedValue(\.failures).count == 1)
        #expect(recorder.writes == ["doomed"])
        #expect(queue.yield(Self.frame("after")) == .dropped(.finished))
        queue.finish()
        recorder.loop.run()
        #expect(recorder.log.withLockedValue(\.finished) == 0)
    }
}
