import NIOConcurrencyHelpers
import NIOCore

/// A peer's outbound RPC frames: bounded, in order, written to the peer's stream from the stream's
/// event loop — no task in between. A frame queued while the queue is idle schedules one drain on
/// the loop; the drain takes everything queued at once and writes it in one stream write (one
/// muxer frame, one encryption, one syscall per batch instead of per RPC), and keeps taking while
/// writes complete at once. While a write waits (the peer's receive window is full), frames queue
/// up and go out together when it completes.
///
/// The queue also remembers which messages the peer sent us lately (`peerSent`): a frame that
/// carries only such a message is left out, when queued or when its turn comes — the peer has
/// the message, another copy would only be a duplicate there. In a flood most copies are
/// duplicates, and the longer frames wait the more of them this saves.
final class OutboundQueue: Sendable {
    /// Where the batches go: normally the peer's pubsub stream.
    struct Sink: Sendable {
        let eventLoop: any EventLoop
        /// Called on `eventLoop`. The future completes once the data is handed to the connection
        /// (within the peer's receive window): the back-pressure.
        let write: @Sendable (ByteBuffer) -> EventLoopFuture<Void>
        /// After a batch was written (or only had left-out frames), on `eventLoop`.
        let wrote: @Sendable (_ messages: Int, _ suppressed: Int) -> Void
        /// The queue was finished and everything in it was written; called once, on `eventLoop`.
        let finished: @Sendable () -> Void
        /// A write failed; called once, on `eventLoop`, and nothing more is written.
        let failed: @Sendable (any Error) -> Void
    }

    private struct State {
        var frames = CircularBuffer<PubSubService.OutboundFrame>()
        var finished = false
        var peerHas: RecentIDs
        var sink: Sink?
        /// A drain is scheduled on the sink's loop or runs, or a write is under way.
        var draining = false
        /// The sink was told `finished` or `failed`.
        var done = false

        /// The sink to schedule a drain on, if one is due.
        mutating func drainDue() -> Sink? {
            guard let sink, !draining, !done else { return nil }
            draining = true
            return sink
        }
    }

    /// What the queue took for one write: the joined frames (empty when every frame taken was
    /// left out), how many messages they carry, and how many message frames were left out.
    struct Batch {
        var bytes: ByteBuffer
        var messageCount: Int
        var suppressed: Int
    }

    enum YieldResult: Equatable {
        case queued
        /// The queue is full or finished.
        case dropped
        /// The frame carries only a message the peer sent us.
        case suppressed
    }

    /// How many message IDs the peer sent us are remembered.
    static let rememberedIDs = 512

    /// Most frames waiting; more are refused (`yield` returns `.dropped`).
    let capacity: Int
    /// Most bytes of frames joined into one write (a larger frame goes alone).
    let maxBatchBytes: Int
    private let state: NIOLockedValueBox<State>

    init(capacity: Int, maxBatchBytes: Int = 4 * 1024) {
        self.capacity = capacity
        self.maxBatchBytes = maxBatchBytes
        state = NIOLockedValueBox(State(peerHas: RecentIDs(capacity: Self.rememberedIDs)))
    }

    /// Queues `frame`, unless the queue is full or finished, or the frame carries only a message
    /// the peer sent us.
    func yield(_ frame: PubSubService.OutboundFrame) -> YieldResult {
        let (result, sink) = state.withLockedValue { s -> (YieldResult, Sink?) in
            guard !s.finished, !s.done, s.frames.count < capacity else { return (.dropped, nil) }
            if let id = frame.messageID, s.peerHas.contains(id) { return (.suppressed, nil) }
            s.frames.append(frame)
            return (.queued, s.drainDue())
        }
        if let sink { schedule(on: sink) }
        return result
    }

    /// The peer sent us message `id`: frames carrying only that message need not go out.
    func peerSent(_ id: MessageKey) {
        state.withLockedValue { $0.peerHas.insert(id) }
    }

    /// Starts writing to `sink`: what is queued now and everything queued later. Once only.
    func attach(_ sink: Sink) {
        let due = state.withLockedValue { s -> Sink? in
            precondition(s.sink == nil, "an outbound queue has one sink")
            s.sink = sink
            return s.drainDue()
        }
        if let due { schedule(on: due) }
    }

    /// No more frames are taken; what is queued is still written, then the sink is told
    /// `finished`.
    func finish() {
        let sink = state.withLockedValue { s -> Sink? in
            s.finished = true
            return s.drainDue()
        }
        if let sink { schedule(on: sink) }
    }

    /// Frames waiting to be written.
    var count: Int { state.withLockedValue { $0.frames.count } }

    private func schedule(on sink: Sink) {
        sink.eventLoop.execute { self.drain() }
    }

    private enum Step {
        case write(Batch, Sink)
        case finish(Sink)
        case idle
    }

    /// On the sink's loop: writes batches while writes complete at once; a write that has to wait
    /// drains again when it completes.
    private func drain() {
        while true {
            let step = state.withLockedValue { s -> Step in
                guard let sink = s.sink, !s.done else {
                    s.draining = false
                    return .idle
                }
                if let batch = Self.take(&s.frames, peerHas: s.peerHas, maxBytes: maxBatchBytes) {
                    return .write(batch, sink)
                }
                s.draining = false
                guard s.finished else { return .idle }
                s.done = true
                return .finish(sink)
            }
            switch step {
            case .idle:
                return
            case .finish(let sink):
                sink.finished()
                return
            case .write(let batch, let sink):
                guard batch.bytes.readableBytes > 0 else {
                    sink.wrote(0, batch.suppressed)
                    continue
                }
                // On the loop, a future that is complete already calls back at once.
                var completedInline: Result<Void, any Error>?
                var returned = false
                sink.write(batch.bytes).assumeIsolated().whenComplete { result in
                    if returned {
                        if self.wrote(batch, result, to: sink) { self.drain() }
                    } else {
                        completedInline = result
                    }
                }
                returned = true
                guard let result = completedInline, wrote(batch, result, to: sink) else { return }
            }
        }
    }

    /// Reports a finished write; false when it failed (the queue is then done).
    private func wrote(_ batch: Batch, _ result: Result<Void, any Error>, to sink: Sink) -> Bool {
        switch result {
        case .success:
            sink.wrote(batch.messageCount, batch.suppressed)
            return true
        case .failure(let error):
            state.withLockedValue { s in
                s.done = true
                s.draining = false
                s.frames.removeAll()
            }
            sink.failed(error)
            return false
        }
    }

    /// Takes what is queued, oldest first, as one batch: the frames joined until `maxBytes` is
    /// reached (at least one frame, whatever its size), less those the peer no longer needs. nil
    /// when nothing is queued.
    func take(maxBytes: Int) -> Batch? {
        state.withLockedValue { s in Self.take(&s.frames, peerHas: s.peerHas, maxBytes: maxBytes) }
    }

    private static func take(
        _ frames: inout CircularBuffer<PubSubService.OutboundFrame>, peerHas: RecentIDs, maxBytes: Int
    ) -> Batch? {
        var batch = Batch(bytes: ByteBuffer(), messageCount: 0, suppressed: 0)
        var joined = false
        while let frame = frames.first {
            if let id = frame.messageID, peerHas.contains(id) {
                frames.removeFirst()
                batch.suppressed += 1
                continue
            }
            if batch.bytes.readableBytes == 0 {
                batch.bytes = frame.bytes  // the common case, a lone frame: no copy
            } else {
                guard batch.bytes.readableBytes + frame.bytes.readableBytes <= maxBytes else { break }
                if !joined {
                    // Joined into a buffer of our own: frames may be shared with other peers' queues.
                    var bytes = ByteBuffer()
                    bytes.reserveCapacity(maxBytes)
                    bytes.writeImmutableBuffer(batch.bytes)
                    batch.bytes = bytes
                    joined = true
                }
                batch.bytes.writeImmutableBuffer(frame.bytes)
            }
            batch.messageCount += frame.messageCount
            frames.removeFirst()
        }
        return batch.bytes.readableBytes > 0 || batch.suppressed > 0 ? batch : nil
    }
}

/// The last `capacity` distinct message IDs recorded, oldest forgotten first.
struct RecentIDs {
    let capacity: Int
    private var members: Set<MessageKey> = []
    private var order = CircularBuffer<MessageKey>()

    init(capacity: Int) {
        self.capacity = capacity
    }

    func contains(_ id: MessageKey) -> Bool { members.contains(id) }

    mutating func insert(_ id: MessageKey) {
        guard members.insert(id).inserted else { return }
        order.append(id)
        if order.count > capacity { members.remove(order.removeFirst()) }
    }
}
