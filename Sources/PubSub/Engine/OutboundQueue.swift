import NIOConcurrencyHelpers
import NIOCore

/// A peer's outbound RPC frames: bounded, in order, drained by one consumer (the peer's writer
/// task), which takes everything queued at once — several frames go out in one stream write, so
/// a busy peer costs one write (one muxer frame, one encryption, one syscall) per batch instead
/// of per RPC.
///
/// The queue also remembers which messages the peer sent us lately (`peerSent`): a frame that
/// carries only such a message is left out, when queued or when its turn comes — the peer has
/// the message, another copy would only be a duplicate there. In a flood most copies are
/// duplicates, and the longer frames wait the more of them this saves.
final class OutboundQueue: Sendable {
    private struct State {
        var frames = CircularBuffer<PubSubService.OutboundFrame>()
        var finished = false
        var waiter: CheckedContinuation<Void, Never>?
        var peerHas: RecentIDs
    }

    /// What `next` hands the writer: the joined frames (empty when every frame taken was left
    /// out), how many messages they carry, and how many message frames were left out.
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

    /// Most frames waiting; more are refused (`yield` returns false).
    let capacity: Int
    private let state: NIOLockedValueBox<State>

    init(capacity: Int) {
        self.capacity = capacity
        state = NIOLockedValueBox(State(peerHas: RecentIDs(capacity: Self.rememberedIDs)))
    }

    /// Queues `frame`, unless the queue is full or finished, or the frame carries only a message
    /// the peer sent us.
    func yield(_ frame: PubSubService.OutboundFrame) -> YieldResult {
        let (result, waiter) = state.withLockedValue { s -> (YieldResult, CheckedContinuation<Void, Never>?) in
            guard !s.finished, s.frames.count < capacity else { return (.dropped, nil) }
            if let id = frame.messageID, s.peerHas.contains(id) { return (.suppressed, nil) }
            s.frames.append(frame)
            defer { s.waiter = nil }
            return (.queued, s.waiter)
        }
        waiter?.resume()
        return result
    }

    /// The peer sent us message `id`: frames carrying only that message need not go out.
    func peerSent(_ id: MessageKey) {
        state.withLockedValue { $0.peerHas.insert(id) }
    }

    /// No more frames are taken; the consumer still gets what is queued, then nil.
    func finish() {
        let waiter = state.withLockedValue { s -> CheckedContinuation<Void, Never>? in
            s.finished = true
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume()
    }

    /// What is queued, oldest first, as one batch: the frames joined until `maxBytes` is reached
    /// (at least one frame, whatever its size), less those the peer no longer needs. Waits while
    /// the queue is empty. nil once the queue is finished and drained, or when the task is
    /// cancelled (what is queued is then left).
    func next(maxBytes: Int) async -> Batch? {
        while true {
            switch state.withLockedValue({ Self.take(&$0, maxBytes: maxBytes) }) {
            case .batch(let frame): return frame
            case .finished: return nil
            case .empty: break
            }
            if Task.isCancelled { return nil }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let resumeNow = state.withLockedValue { s -> Bool in
                        // Checked under the lock: either the cancellation is seen here, or the
                        // handler runs after the waiter is stored and resumes it.
                        guard s.frames.isEmpty, !s.finished, !Task.isCancelled else { return true }
                        s.waiter = continuation
                        return false
                    }
                    if resumeNow { continuation.resume() }
                }
            } onCancel: {
                let waiter = state.withLockedValue { s -> CheckedContinuation<Void, Never>? in
                    defer { s.waiter = nil }
                    return s.waiter
                }
                waiter?.resume()
            }
        }
    }

    private enum Take {
        case batch(Batch)
        case finished
        case empty
    }

    private static func take(_ s: inout State, maxBytes: Int) -> Take {
        var batch = Batch(bytes: ByteBuffer(), messageCount: 0, suppressed: 0)
        var joined = false
        while let frame = s.frames.first {
            if let id = frame.messageID, s.peerHas.contains(id) {
                s.frames.removeFirst()
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
            s.frames.removeFirst()
        }
        if batch.bytes.readableBytes > 0 || batch.suppressed > 0 { return .batch(batch) }
        return s.finished ? .finished : .empty
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
