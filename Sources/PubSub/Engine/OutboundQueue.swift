import NIOConcurrencyHelpers
import NIOCore

/// A peer's outbound RPC frames: bounded, in order, drained by one consumer (the peer's writer
/// task), which takes everything queued at once — several frames go out in one stream write, so
/// a busy peer costs one write (one muxer frame, one encryption, one syscall) per batch instead
/// of per RPC.
final class OutboundQueue: Sendable {
    private struct State {
        var frames = CircularBuffer<PubSubService.OutboundFrame>()
        var finished = false
        var waiter: CheckedContinuation<Void, Never>?
    }

    /// Most frames waiting; more are refused (`yield` returns false).
    let capacity: Int
    private let state = NIOLockedValueBox(State())

    init(capacity: Int) {
        self.capacity = capacity
    }

    /// Queues `frame`; false when the queue is full or finished (the frame is dropped).
    func yield(_ frame: PubSubService.OutboundFrame) -> Bool {
        let (accepted, waiter) = state.withLockedValue { s -> (Bool, CheckedContinuation<Void, Never>?) in
            guard !s.finished, s.frames.count < capacity else { return (false, nil) }
            s.frames.append(frame)
            defer { s.waiter = nil }
            return (true, s.waiter)
        }
        waiter?.resume()
        return accepted
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

    /// What is queued, oldest first, as one frame: the frames joined until `maxBytes` is reached
    /// (at least one frame, whatever its size). Waits while the queue is empty. nil once the queue
    /// is finished and drained, or when the task is cancelled (what is queued is then left).
    func next(maxBytes: Int) async -> PubSubService.OutboundFrame? {
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
        case batch(PubSubService.OutboundFrame)
        case finished
        case empty
    }

    private static func take(_ s: inout State, maxBytes: Int) -> Take {
        guard var batch = s.frames.popFirst() else { return s.finished ? .finished : .empty }
        guard let second = s.frames.first, batch.bytes.readableBytes + second.bytes.readableBytes <= maxBytes else {
            return .batch(batch)
        }
        // Joined into a buffer of our own: frames may be shared with other peers' queues.
        var bytes = ByteBuffer()
        bytes.reserveCapacity(min(maxBytes, s.frames.reduce(batch.bytes.readableBytes) { $0 + $1.bytes.readableBytes }))
        bytes.writeImmutableBuffer(batch.bytes)
        while let next = s.frames.first, bytes.readableBytes + next.bytes.readableBytes <= maxBytes {
            s.frames.removeFirst()
            bytes.writeImmutableBuffer(next.bytes)
            batch.messageCount += next.messageCount
        }
        batch.bytes = bytes
        return .batch(batch)
    }
}
