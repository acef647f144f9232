import NIOConcurrencyHelpers
import NIOCore

/// A bounded pool of byte buffers, so the storage that reads accumulate into is reused across
/// streams instead of being allocated for each.
///
/// At most `maxBuffers` are kept; a buffer that grew beyond `maxBufferCapacity` is dropped
/// instead of kept, so one large message does not pin its memory. Buffers are handed out
/// cleared. A buffer whose storage is still shared (e.g. a payload slice of it is alive) is
/// still safe to reuse: ByteBuffer copies on write.
public final class BufferPool: Sendable {
    public struct Statistics: Sendable, Equatable {
        /// `take()` calls served from the pool.
        public var reused = 0
        /// `take()` calls that made a new buffer.
        public var created = 0
        /// Buffers `give` dropped (pool full or buffer too large).
        public var dropped = 0
    }

    public let maxBuffers: Int
    public let maxBufferCapacity: Int
    private let initialCapacity: Int
    private let state = NIOLockedValueBox<(buffers: [ByteBuffer], stats: Statistics)>(([], Statistics()))

    public init(maxBuffers: Int, maxBufferCapacity: Int, initialCapacity: Int = 4096) {
        self.maxBuffers = max(0, maxBuffers)
        self.maxBufferCapacity = maxBufferCapacity
        self.initialCapacity = initialCapacity
    }

    public func take() -> ByteBuffer {
        let pooled = state.withLockedValue { s -> ByteBuffer? in
            if let buffer = s.buffers.popLast() {
                s.stats.reused += 1
                return buffer
            }
            s.stats.created += 1
            return nil
        }
        if var pooled {
            pooled.clear()
            return pooled
        }
        var buffer = ByteBuffer()
        buffer.reserveCapacity(initialCapacity)
        return buffer
    }

    public func give(_ buffer: ByteBuffer) {
        var buffer = buffer
        let keep = buffer.capacity > 0 && buffer.capacity <= maxBufferCapacity
        if keep { buffer.clear() }
        state.withLockedValue { s in
            if keep && s.buffers.count < maxBuffers {
                s.buffers.append(buffer)
            } else {
                s.stats.dropped += 1
            }
        }
    }

    public var count: Int { state.withLockedValue { $0.buffers.count } }
    public var statistics: Statistics { state.withLockedValue { $0.stats } }
}
