import CompressNIO
import NIOPosix

/// zlib streams kept per thread and reused with `deflateReset`/`inflateReset`.
///
/// Measured (`pointsub-bench rr`, 1 KiB requests): a fresh `deflateInit2` per message allocated and
/// cleared a few hundred KiB of window and hash tables and made libz a fifth of all CPU samples.
/// Streams are sized to the payload (a window no larger than the data, hash tables to match), so a
/// 1 KiB message resets a few KiB of state instead of 256 KiB. Any window up to 32 KiB
/// inflates with the default `windowBits` 15, so receivers (ours and py's `zlib`) need no change.
///
/// Only synchronous code touches a cache (no suspension between taking a stream and finishing
/// with it), so each thread's streams are used by one caller at a time.
final class ZlibStreamCache: @unchecked Sendable {
    private static let perThread = ThreadSpecificVariable<ZlibStreamCache>()

    static var current: ZlibStreamCache {
        if let cache = perThread.currentValue { return cache }
        let cache = ZlibStreamCache()
        perThread.currentValue = cache
        return cache
    }

    /// Smallest and largest window (log2 bytes) used; zlib refuses 8 for zlib streams in some versions.
    static let windowBits: ClosedRange<Int32> = 9...15

    private var compressors: [Int32: ZlibCompressor] = [:]
    private var cachedDecompressor: ZlibDecompressor?

    /// The window for `size` bytes: the smallest power of two holding the whole payload.
    static func windowBits(for size: Int) -> Int32 {
        let needed = Int32(Int.bitWidth - max(size - 1, 1).leadingZeroBitCount)
        return min(max(needed, windowBits.lowerBound), windowBits.upperBound)
    }

    /// A reset compressor for a payload of `size` bytes at `level`.
    func compressor(for size: Int, level: Int32) throws -> ZlibCompressor {
        let bits = Self.windowBits(for: size)
        if let compressor = compressors[bits] {
            try compressor.reset()
            return compressor
        }
        // Hash table of 2^(memLevel + 7) entries: as many as the window has bytes.
        let configuration = ZlibConfiguration(
            windowSize: bits, compressionLevel: level, memoryLevel: max(1, min(8, bits - 7)), strategy: .default)
        let compressor = try ZlibCompressor(algorithm: .zlib, configuration: configuration)
        compressors[bits] = compressor
        return compressor
    }

    /// A reset decompressor (window up to 32 KiB).
    func decompressor() throws -> ZlibDecompressor {
        if let decompressor = cachedDecompressor {
            try decompressor.reset()
            return decompressor
        }
        let fresh = try ZlibDecompressor(algorithm: .zlib)
        cachedDecompressor = fresh
        return fresh
    }
}
