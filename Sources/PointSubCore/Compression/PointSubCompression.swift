import CompressNIO
import Foundation
import NIOCore

/// zlib compression as docs/PROTOCOL.md "Compression" specifies it.
///
/// The wire format is RFC 1950 zlib (deflate inside a zlib header and Adler-32 trailer). In
/// compress-nio that is `ZlibAlgorithm.zlib`; its `.deflate` is raw RFC 1951 data without the
/// wrapper and `.gzip` is RFC 1952, neither of which the protocol allows.
public enum PointSubCompression {
    /// Spec: only payloads of at least 1 KiB are compressed…
    public static let minimumPayloadSize = 1024
    /// …and only when compression saves at least 10 %.
    public static func isWorthwhile(original: Int, compressed: Int) -> Bool {
        original >= minimumPayloadSize && compressed * 10 <= original * 9
    }

    /// Payloads above twice this are probed first: if their first `probeSize` bytes do not
    /// compress by 10 %, the whole payload is sent as is without spending the CPU on it (the
    /// benchmark showed whole-payload attempts on incompressible data dominating the cost).
    static let probeSize = 4 * 1024

    /// zlib level 1 (fastest): the spec allows any level, and on the payloads we measured level 6
    /// cost several times the CPU for a few percent more savings.
    static let compressionLevel: Int32 = 1

    /// The zlib data for `payload` if the spec's rule says it is worth sending compressed, else nil.
    public static func compressIfWorthwhile(_ payload: ByteBuffer) -> ByteBuffer? {
        let size = payload.readableBytes
        guard size >= minimumPayloadSize else { return nil }
        guard !looksIncompressible(payload) else { return nil }
        if size > 2 * probeSize {
            let probe = payload.getSlice(at: payload.readerIndex, length: probeSize)!
            guard let probed = compress(probe, limit: probeSize * 9 / 10),
                isWorthwhile(original: probeSize, compressed: probed.readableBytes)
            else { return nil }
        }
        guard let compressed = compress(payload, limit: size * 9 / 10),
            isWorthwhile(original: size, compressed: compressed.readableBytes)
        else { return nil }
        return compressed
    }

    /// Above this many bits per byte (order-0 entropy of the first `probeSize` bytes), zlib is not
    /// even tried. Measured here: deflate spends 40–100 µs on 1–8 KiB of random bytes (under
    /// 50 MB/s, against about 1 µs to count the bytes), which was most of a 1 KiB request's CPU. Only
    /// literals can be coded below 7.2 bits per byte (the 10 % rule); 7.5 leaves room for the
    /// small-sample bias (about 0.2 bits at 1 KiB) and for matches. What this misses: data whose
    /// bytes look random but repeat at a distance longer than the sample (a random 2 KiB block sent
    /// twice), which zlib would shrink and we send as is.
    static let incompressibleEntropy = 7.5

    /// Whether the payload's first bytes look like random data (compressed, encrypted, …).
    static func looksIncompressible(_ payload: ByteBuffer) -> Bool {
        let n = min(payload.readableBytes, probeSize)
        guard n >= 256 else { return false }
        // H = log2(n) - (1/n) Σ c·log2(c)
        let sum = withUnsafeTemporaryAllocation(of: UInt32.self, capacity: 256) { counts -> Double in
            counts.initialize(repeating: 0)
            payload.withUnsafeReadableBytes { raw in
                for byte in UnsafeRawBufferPointer(rebasing: raw[..<n]) { counts[Int(byte)] &+= 1 }
            }
            var sum = 0.0
            for c in counts where c > 1 {
                let x = Double(c)
                sum += x * log2(x)
            }
            return sum
        }
        let entropy = log2(Double(n)) - sum / Double(n)
        return entropy > incompressibleEntropy
    }

    /// zlib-compresses `payload`; nil if the result would be longer than `limit` bytes (or zlib fails).
    public static func compress(_ payload: ByteBuffer, limit: Int = .max) -> ByteBuffer? {
        do {
            let compressor = try ZlibStreamCache.current.compressor(for: payload.readableBytes, level: compressionLevel)
            var input = payload
            // Room for the whole output when it fits under the limit; otherwise zlib stops with
            // bufferOverflow once `limit` bytes are written and we give up.
            let bound = compressor.maxSize(from: payload)
            var output = ByteBuffer()
            output.reserveCapacity(max(16, min(bound, limit)))
            try compressor.deflate(from: &input, to: &output, flush: .finish)
            guard output.readableBytes <= limit else { return nil }
            return output
        } catch {
            return nil
        }
    }

    /// Decompresses zlib `data` that must decompress to exactly `originalLength` bytes.
    ///
    /// `originalLength` is checked against `maxBlockSize` before anything is done; inflating
    /// goes in chunks and stops as soon as the output would exceed `originalLength`. Corrupt or
    /// truncated data, bytes after the zlib stream, or a size other than `originalLength` are
    /// protocol violations.
    public static func decompress(
        _ data: ByteBuffer, originalLength: Int, maxBlockSize: Int
    ) throws(PointSubError) -> ByteBuffer {
        guard originalLength <= maxBlockSize else {
            throw PointSubError(
                .messageTooLarge, "original size of \(originalLength) bytes exceeds the maximum block size of \(maxBlockSize)")
        }
        guard data.readableBytes > 0 else {
            throw .violation(.corruptCompressedData, "empty zlib data")
        }
        let chunkSize = 64 * 1024
        let decompressor: ZlibDecompressor
        do {
            decompressor = try ZlibStreamCache.current.decompressor()
        } catch {
            throw PointSubError(.protocolViolation, "cannot start zlib", violation: .corruptCompressedData, cause: error)
        }
        var input = data
        var output = ByteBuffer()
        output.reserveCapacity(min(originalLength, chunkSize))
        var chunk = ByteBuffer()
        chunk.reserveCapacity(min(originalLength, chunkSize) + 1)
        while true {
            chunk.clear()
            var outputFull = false
            do {
                try decompressor.inflate(from: &input, to: &chunk)
            } catch let error as CompressNIOError where error == .bufferOverflow {
                outputFull = true  // the chunk is full; more output may follow
            } catch let error as CompressNIOError where error == .inputBufferOverflow {
                throw .violation(.corruptCompressedData, "zlib data is truncated")
            } catch {
                throw PointSubError(
                    .protocolViolation, "corrupt zlib data", violation: .corruptCompressedData, cause: error)
            }
            // Stop as soon as the output would exceed what the sender declared.
            guard output.readableBytes + chunk.readableBytes <= originalLength else {
                throw .violation(
                    .originalSizeMismatch, "zlib data decompresses to more than the declared \(originalLength) bytes")
            }
            // Grow by doubling but never past the declared size (a write that needs room rounds
            // up to a power of two: up to twice what the receiver reserved for it).
            if output.writableBytes < chunk.readableBytes {
                let needed = output.readableBytes + chunk.readableBytes
                output.reserveCapacity(min(originalLength, max(needed, 2 * output.capacity)))
            }
            output.writeBuffer(&chunk)
            if outputFull { continue }
            break
        }
        // inflate returned without error: either Z_STREAM_END, or all input consumed with the
        // stream unfinished. Bytes left over mean data after the stream's end.
        guard input.readableBytes == 0 else {
            throw .violation(.corruptCompressedData, "\(input.readableBytes) bytes after the end of the zlib stream")
        }
        // Tell the two apart: a finished stream does not consume another byte; an unfinished
        // one (e.g. its Adler-32 trailer is missing) does.
        var probe = ByteBuffer(bytes: [0])
        chunk.clear()
        do {
            try decompressor.inflate(from: &probe, to: &chunk)
        } catch {
            throw .violation(.corruptCompressedData, "zlib data is truncated")
        }
        guard probe.readableBytes == 1, chunk.readableBytes == 0 else {
            throw .violation(.corruptCompressedData, "zlib data is truncated")
        }
        guard output.readableBytes == originalLength else {
            throw .violation(
                .originalSizeMismatch,
                "zlib data decompresses to \(output.readableBytes) bytes, not the declared \(originalLength)")
        }
        return output
    }
}
