import Identity
import LibP2P
import NIOConcurrencyHelpers
import NIOCore

/// A peer's outbound RPC frames: bounded, in order, written to the peer's stream from the stream's
/// event loop — no task in between. A frame queued while the queue is idle schedules one drain on
/// the loop; the drain takes everything queued at once and writes it in one stream write (one
/// muxer frame, one encryption, one syscall per batch instead of per RPC), and keeps taking while
/// writes complete at once. While a write waits (the peer's receive window is full), frames queue
/// up and go out together when it completes.
///
/// Frames marked `urgent` (gossipsub v1.2 IDONTWANT) go before the others waiting.
///
/// The queue also remembers which messages the peer sent us lately (`peerSent`): a frame that
/// carries only such a message is left out, when queued or when its turn comes — the peer has
/// the message, another copy would only be a duplicate there. In a flood most copies are
/// duplicates, and the longer frames wait the more of them this saves.
///
/// Memory: the bytes of every frame are reserved in the memory account before the frame is
/// queued (a refusal drops the frame) and released once it is written, left out or thrown away;
/// the queue holds at most `capacity` frames and `maxBytes` bytes. A peer that does not read
/// gets newer frames dropped, never an unbounded queue.
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
        /// Bytes reserved for the frames in `frames`, and for those taken and being written.
        var queuedBytes = 0
        var writingBytes = 0

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
        /// Reserved bytes of the frames written, and of those left out.
        var writtenBytes = 0
        var suppressedBytes = 0
    }

    enum DropReason: String, Equatable, Sendable {
        /// `capacity` frames or `maxBytes` bytes are queued.
        case full
        /// The memory account refused the frame's bytes.
        case noMemory
        /// The queue is finished (the peer is gone or the service stopping).
        case finished
    }

    enum YieldResult: Equatable {
        case queued
        /// Not queued, and why.
        case dropped(DropReason)
        /// The frame carries only a message the peer sent us.
        case suppressed
    }

    /// How many message IDs the peer sent us are remembered.
    static let rememberedIDs = 512

    /// Most frames waiting; more are refused (`yield` returns `.dropped(.full)`).
    let capacity: Int
    /// Most bytes of frames waiting or being written.
    let maxBytes: Int
    /// Most bytes of frames joined into one write (a larger frame goes alone).
    let maxBatchBytes: Int
    /// Where the bytes of queued frames are reserved.
    let memory: any MemoryAccount
    /// The peer the frames are for (for the logs).
    let peer: PeerID?
    private let state: NIOLockedValueBox<State>

    init(
        capacity: Int, maxBytes: Int = .max, memory: any MemoryAccount = UnlimitedMemoryAccount(),
        peer: PeerID? = nil, maxBatchBytes: Int = 4 * 1024
    ) {
        self.capacity = capacity
        self.maxBytes = maxBytes
        self.memory = memory
        self.peer = peer
        self.maxBatchBytes = maxBatchBytes
        state = NIOLockedValueBox(State(peerHas: RecentIDs(capacity: Self.rememberedIDs)))
    }

    deinit {
        // Frames never written (the queue was dropped with them, e.g. its stream never opened).
        let held = state.withLockedValue { $0.queuedBytes + $0.writingBytes }
        if held > 0 { memory.releaseMemory(held) }
    }

    /// Queues `frame`, unless the queue is full or finished, the memory account refuses its
    /// bytes, or the frame carries only a message the peer sent us.
    func yield(_ frame: PubSubService.OutboundFrame) -> YieldResult {
        let size = frame.bytes.readableBytes
        // Reserved before the frame is queued, outside the queue's lock (the account has its own).
        do {
            try memory.reserveMemory(size)
        } catch {
            return .dropped(.noMemory)
        }
        let (result, sink) = state.withLockedValue { s -> (YieldResult, Sink?) in
            guard !s.finished, !s.done else { return (.dropped(.finished), nil) }
            guard s.frames.count < capacity, s.queuedBytes + s.writingBytes + size <= maxBytes else {
                return (.dropped(.full), nil)
            }
            if let id = frame.messageID, s.peerHas.contains(id) { return (.suppressed, nil) }
            if frame.urgent {
                // Behind the urgent frames already queued (they stay in order), before the rest.
                s.frames.insert(frame, at: s.frames.firstIndex { !$0.urgent } ?? s.frames.endIndex)
            } else {
                s.frames.append(frame)
            }
            s.queuedBytes += size
            return (.queued, s.drainDue())
        }
        if result != .queued { memory.releaseMemory(size) }
        if let sink { schedule(on: sink) }
        return result
    }

    /// Bytes reserved for frames queued or being written.
    var reservedBytes: Int { state.withLockedValue { $0.queuedBytes + $0.writingBytes } }

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
        // Without a sink the frames wait for one; if none comes, `deinit` gives their bytes back.
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
                    s.queuedBytes -= batch.writtenBytes + batch.suppressedBytes
                    s.writingBytes += batch.writtenBytes
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
                if batch.suppressedBytes > 0 { memory.releaseMemory(batch.suppressedBytes) }
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
            state.withLockedValue { $0.writingBytes -= batch.writtenBytes }
            if batch.writtenBytes > 0 { memory.releaseMemory(batch.writtenBytes) }
            sink.wrote(batch.messageCount, batch.suppressed)
            return true
        case .failure(let error):
            let released = state.withLockedValue { s -> Int in
                s.done = true
                s.draining = false
                s.frames.removeAll()
                defer {
                    s.queuedBytes = 0
                    s.writingBytes = 0
                }
                return s.queuedBytes + s.writingBytes
            }
            if released > 0 { memory.releaseMemory(released) }
            sink.failed(error)
            return false
        }
    }

    /// Takes what is queued, oldest first, as one batch: the frames joined until `maxBytes` is
    /// reached (at least one frame, whatever its size), less those the peer no longer needs. nil
    /// when nothing is queued.
    func take(maxBytes: Int) -> Batch? {
        let batch = state.withLockedValue { s -> Batch? in
            let batch = Self.take(&s.frames, peerHas: s.peerHas, maxBytes: maxBytes)
            if let batch { s.queuedBytes -= batch.writtenBytes + batch.suppressedBytes }
            return batch
        }
        // Taken out of the queue's hands: the caller writes (or drops) them.
        if let batch, batch.writtenBytes + batch.suppressedBytes > 0 {
            memory.releaseMemory(batch.writtenBytes + batch.suppressedBytes)
        }
        return batch
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
                batch.suppressedBytes += frame.bytes.readableBytes
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
            batch.writtenBytes += frame.bytes.readableBytes
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
