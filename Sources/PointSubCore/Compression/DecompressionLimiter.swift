import Basics
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Resources

/// Bounds what decompressing PointSub payloads may cost (issue 10, zip bombs): a 32 KB message
/// can declare and inflate to 32 MiB, so 64 of them at once held ~650 MB and ~15 CPU-seconds of
/// the event loops.
///
/// - Memory: before a payload is inflated, its declared decompressed size (`original`) is
///   reserved against `capacity` — a global bound on decompressed bytes in flight, FIFO, waiting
///   at most `wait` for room — and in the resource manager's `pointsub` service scope. Both stay
///   reserved while the caller holds the `Reservation` (until the request is answered or the
///   reply handed to the caller). Nothing of the claimed size is allocated up front: inflating
///   goes in 64 KiB chunks and stops as soon as the output crosses `original`.
/// - CPU: payloads declaring more than `inlineLimit` bytes are inflated on `inflatePool`
///   (one thread fewer than the cores), never on an event loop; with the memory bound that also caps
///   how many large inflations run at once. Small ones (the common case) stay inline: a thread
///   hop costs more than inflating 64 KiB.
final class DecompressionLimiter: Sendable {
    /// A payload's share of the bound; give it back with `release()` exactly once.
    struct Reservation: Sendable {
        fileprivate let bytes: Int
        fileprivate let limiter: DecompressionLimiter?
        /// Whether the bytes also hold a share of the in-flight bound (large payloads only).
        fileprivate var inBound = true

        static let none = Reservation(bytes: 0, limiter: nil)

        func release() { limiter?.release(bytes, inBound: inBound) }
    }

    private struct Waiter {
        let id: UInt64
        let bytes: Int
        let continuation: CheckedContinuation<Bool, Never>
    }

    private struct State {
        var inUse = 0
        var waiters: [Waiter] = []
        var nextWaiter: UInt64 = 0
    }

    /// Decompressed bytes in flight at most.
    let capacity: Int
    /// How long a payload may wait for room before it is refused.
    let wait: Duration
    let memory: any MemoryAccount
    private let threadPool: NIOThreadPool
    private let state = NIOLockedValueBox(State())

    /// Larger declared sizes are inflated off the event loops.
    static let inlineLimit = 64 * 1024

    /// The threads large payloads are inflated on: one fewer than the cores (at least one), so
    /// that a flood of zip bombs, which keeps every inflating thread busy, leaves a core to the
    /// event loops and the other peers' traffic. Measured with `pointsub-bench attack`: on two
    /// cores, inflating on NIO's shared pool (two threads) put honest p99 at 750 ms.
    static let inflatePool: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: max(1, System.coreCount - 1))
        pool.start()
        return pool
    }()

    init(capacity: Int, wait: Duration, memory: any MemoryAccount, threadPool: NIOThreadPool = DecompressionLimiter.inflatePool) {
        self.capacity = max(1, capacity)
        self.wait = wait
        self.memory = memory
        self.threadPool = threadPool
    }

    /// No room to decompress a payload: none came in time, or the resource manager refused.
    struct Refused: Error, CustomStringConvertible {
        /// Waited for room in vain (rather than refused by the resource manager).
        var timedOut: Bool
        var description: String
        var cause: ResourceError?
    }

    /// Decompressed bytes reserved now.
    var inFlight: Int { state.withLockedValue { $0.inUse } }

    /// The message's payload, decompressed within the bounds. Throws `Refused` when no room came
    /// before `deadline` (nil: `wait` from now), or the resource manager refused, and
    /// `PointSubError`: `.messageTooLarge` when `original` exceeds `maxBlockSize`, protocol
    /// violations for bad zlib data.
    func decode(
        _ message: PointSubMessage, maxBlockSize: Int, eventLoop: any EventLoop, deadline: Deadline? = nil
    ) async throws -> (payload: ByteBuffer, reservation: Reservation) {
        guard let original = message.originalLength else { return (message.payload, .none) }
        guard original <= maxBlockSize else {
            throw PointSubError(
                .messageTooLarge, "original size of \(original) bytes exceeds the maximum block size of \(maxBlockSize)")
        }
        // Larger than the whole bound: it takes the whole bound (it cannot do with less).
        let bytes = min(max(original, 1), capacity)
        // Small payloads do not queue for the bound: they are bounded by the request slots (64 KiB
        // each at most), and must not wait behind another peer's bombs (measured: a flood of
        // 32 MiB bombs kept 1 KiB compressed requests waiting for room until they timed out).
        let small = original <= Self.inlineLimit
        let deadline = deadline ?? .after(wait)
        let admitted = small ? true : await acquire(bytes, until: deadline, eventLoop: eventLoop)
        guard admitted else {
            throw Refused(
                timedOut: true,
                description: "no room to decompress \(original) bytes in time (\(capacity) bytes in flight at most)")
        }
        do {
            try memory.reserveMemory(bytes)
        } catch {
            if !small { releaseBudget(bytes) }
            throw Refused(
                timedOut: false, description: "the resource manager refused \(bytes) bytes for decompression",
                cause: error)
        }
        let reservation = Reservation(bytes: bytes, limiter: self, inBound: !small)
        do {
            let payload: ByteBuffer
            if original <= Self.inlineLimit {
                payload = try message.decodedPayload(maxBlockSize: maxBlockSize)
            } else {
                payload = try await inflateOffLoop(message, maxBlockSize: maxBlockSize)
            }
            return (payload, reservation)
        } catch {
            reservation.release()
            throw error
        }
    }

    private func inflateOffLoop(_ message: PointSubMessage, maxBlockSize: Int) async throws(PointSubError) -> ByteBuffer {
        let result: Result<ByteBuffer, PointSubError>
        do {
            result = try await threadPool.runIfActive {
                Result { () throws(PointSubError) in try message.decodedPayload(maxBlockSize: maxBlockSize) }
            }
        } catch {
            // Only when the pool was shut down (never the singleton's case).
            throw PointSubError(.protocolViolation, "the decompression thread pool is not running", cause: error)
        }
        return try result.get()
    }

    private func acquire(_ bytes: Int, until deadline: Deadline, eventLoop: any EventLoop) async -> Bool {
        let id = state.withLockedValue { s -> UInt64? in
            if s.waiters.isEmpty, s.inUse + bytes <= capacity {
                s.inUse += bytes
                return nil
            }
            s.nextWaiter += 1
            return s.nextWaiter
        }
        guard let id else { return true }
        return await withCheckedContinuation { continuation in
            let ready = state.withLockedValue { s -> Bool? in
                // Room may have come between the two locks.
                if s.waiters.isEmpty, s.inUse + bytes <= capacity {
                    s.inUse += bytes
                    return true
                }
                s.waiters.append(Waiter(id: id, bytes: bytes, continuation: continuation))
                return nil
            }
            if let ready { return continuation.resume(returning: ready) }
            deadline.schedule(on: eventLoop) { [self] in
                let expired = state.withLockedValue { s -> Waiter? in
                    guard let index = s.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                    return s.waiters.remove(at: index)
                }
                expired?.continuation.resume(returning: false)
            }
        }
    }

    private func release(_ bytes: Int, inBound: Bool) {
        memory.releaseMemory(bytes)
        if inBound { releaseBudget(bytes) }
    }

    private func releaseBudget(_ bytes: Int) {
        let woken = state.withLockedValue { s -> [Waiter] in
            s.inUse -= bytes
            // FIFO: the first waiter goes first even if a later, smaller one would fit now, so
            // a stream of small payloads cannot starve a large one.
            var woken: [Waiter] = []
            while let first = s.waiters.first, s.inUse + first.bytes <= capacity {
                s.inUse += first.bytes
                woken.append(s.waiters.removeFirst())
            }
            return woken
        }
        for waiter in woken { waiter.continuation.resume(returning: true) }
    }
}
