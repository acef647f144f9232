import NIOCore

/// Unsigned varint as specified by multiformats/unsigned-varint.
///
/// Spec facts this code relies on:
/// - 7 bits of payload per byte, least significant group first, MSB set on every
///   byte except the last;
/// - the encoding MUST be minimal (no trailing `0x00` groups);
/// - at most 9 bytes are allowed, so the maximum value is 2^63 - 1.
///
/// Note: this is *not* the protobuf varint (which allows 10 bytes / 64 bits);
/// see `ProtobufWriter` / `ProtobufReader` for that.
public enum Varint {
    /// Maximum number of bytes of a valid unsigned varint.
    public static let maxLength = 9
    /// Largest value representable in 9 bytes (63 bits).
    public static let maxValue: UInt64 = (1 << 63) - 1

    /// Number of bytes `encode(value)` produces.
    public static func encodedLength(_ value: UInt64) -> Int {
        var v = value
        var n = 1
        while v >= 0x80 {
            v >>= 7
            n += 1
        }
        return n
    }

    /// Encodes `value`. Precondition: `value <= Varint.maxValue` (the spec forbids
    /// larger values; passing one is a programming error).
    public static func encode(_ value: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(encodedLength(value))
        encode(value, into: &out)
        return out
    }

    /// Appends the encoding of `value` to `into`.
    public static func encode(_ value: UInt64, into out: inout [UInt8]) {
        precondition(value <= maxValue, "unsigned-varint values are limited to 63 bits")
        var v = value
        while v >= 0x80 {
            out.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        out.append(UInt8(v))
    }

    /// Decodes a varint from the start of `bytes`.
    ///
    /// - Returns: the value and the number of bytes consumed, or `nil` if `bytes`
    ///   ends before the varint is complete (more input is needed).
    /// - Throws: `.varintNonMinimal` for a non-minimal encoding, `.varintOverflow`
    ///   when the varint would need more than 9 bytes.
    public static func decode<C: Collection>(_ bytes: C) throws(MultiformatsError) -> (value: UInt64, length: Int)?
    where C.Element == UInt8 {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        var count = 0
        for byte in bytes {
            count += 1
            if count > maxLength {
                throw .varintOverflow
            }
            value |= UInt64(byte & 0x7f) << shift
            if byte & 0x80 == 0 {
                // A final 0x00 group after at least one other group adds nothing:
                // the same value has a shorter encoding.
                if byte == 0 && count > 1 {
                    throw .varintNonMinimal
                }
                return (value, count)
            }
            shift += 7
        }
        // Nine bytes that all have the continuation bit set can never be valid.
        if count >= maxLength {
            throw .varintOverflow
        }
        return nil
    }

    /// Decodes a varint that must be complete inside `bytes` starting at `offset`,
    /// advancing `offset`. Throws `truncated` (built by the caller) when incomplete.
    static func decodeComplete(
        _ bytes: [UInt8], at offset: inout Int, truncated: @autoclosure () -> MultiformatsError
    ) throws(MultiformatsError) -> UInt64 {
        guard offset <= bytes.count,
              let (value, length) = try decode(bytes[offset...])
        else { throw truncated() }
        offset += length
        return value
    }
}

extension ByteBuffer {
    /// Writes `v` as an unsigned varint; returns the number of bytes written.
    @discardableResult
    public mutating func writeVarint(_ v: UInt64) -> Int {
        precondition(v <= Varint.maxValue, "unsigned-varint values are limited to 63 bits")
        var value = v
        var written = 0
        while value >= 0x80 {
            written += self.writeInteger(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        written += self.writeInteger(UInt8(value))
        return written
    }

    /// Reads a varint at absolute index `at` without moving the reader index.
    ///
    /// Returns `nil` when the readable bytes end before the varint is complete
    /// (or `at` is outside the readable region).
    public func getVarint(at index: Int) throws -> (value: UInt64, length: Int)? {
        guard index >= self.readerIndex, index <= self.writerIndex else { return nil }
        let available = min(self.writerIndex - index, Varint.maxLength)
        guard let view = self.viewBytes(at: index, length: available) else { return nil }
        return try Varint.decode(view)
    }

    /// Reads a varint, consuming it only when it is complete.
    /// Returns `nil` (consuming nothing) when more bytes are needed.
    public mutating func readVarint() throws -> UInt64? {
        guard let (value, length) = try self.getVarint(at: self.readerIndex) else { return nil }
        self.moveReaderIndex(forwardBy: length)
        return value
    }
}
