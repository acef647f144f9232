import Multiformats
import NIOCore

/// Incremental parser of PointSub messages: feed it bytes as they arrive with `append`, take
/// complete messages with `next()`.
///
/// The header is validated as soon as it is complete, before the payload is waited for: an
/// unknown or unexpected `kind`, a reserved flag bit, a non-minimal or over-long varint, and a
/// `length` or `original` above `maxBlockSize` throw right away, and nothing is reserved for a
/// payload before its header passed these checks (the buffer only ever holds bytes that
/// arrived). Call `next()` after every `append` so a bad header is seen before more bytes are
/// buffered. After an error the parser must not be used further (the stream is to be dropped).
public struct PointSubMessageParser: Sendable {
    public let maxBlockSize: Int
    /// The kinds this side may receive (a server receives requests, a client responses and errors).
    public var accepted: Set<PointSubMessage.Kind> {
        Set(PointSubMessage.Kind.allCases.filter { acceptedMask & 1 << $0.rawValue != 0 })
    }
    /// `accepted` as bits (1 << kind): a parser per idle server stream should not hold a set's storage.
    private let acceptedMask: UInt8
    private var buffer: ByteBuffer

    /// `buffer`: storage to accumulate into (e.g. from a `BufferPool`); it is cleared first.
    public init(
        maxBlockSize: Int, accepting accepted: Set<PointSubMessage.Kind> = Set(PointSubMessage.Kind.allCases),
        buffer: ByteBuffer = ByteBuffer()
    ) {
        self.maxBlockSize = maxBlockSize
        self.acceptedMask = accepted.reduce(0) { $0 | 1 << $1.rawValue }
        self.buffer = buffer
        self.buffer.clear()
    }

    /// Bytes received but not yet returned as a message.
    public var bufferedBytes: Int { buffer.readableBytes }

    /// The payload length the header of the message being assembled announced, once the header
    /// is complete and until the message is returned (nil otherwise): what the payload will hold,
    /// known before it is buffered, so a receiver can reserve it first.
    public private(set) var announcedLength: Int?

    public mutating func append(_ bytes: ByteBuffer) {
        if buffer.readableBytes == 0 {
            // Start over at the beginning of the storage instead of growing it.
            buffer.clear()
        } else if buffer.readerIndex >= 64 * 1024 {
            buffer.discardReadBytes()
        }
        var bytes = bytes
        buffer.writeBuffer(&bytes)
    }

    /// The next complete message, or nil when more bytes are needed.
    public mutating func next() throws(PointSubError) -> PointSubMessage? {
        let start = buffer.readerIndex
        guard let rawKind: UInt8 = buffer.getInteger(at: start) else { return nil }
        guard let kind = PointSubMessage.Kind(rawValue: rawKind) else {
            throw .violation(.unknownKind(rawKind), "unknown message kind 0x\(hex(rawKind))")
        }
        guard acceptedMask & 1 << kind.rawValue != 0 else {
            throw .violation(.unexpectedKind(rawKind), "a \(kind) message is not allowed in this direction")
        }
        guard let flags: UInt8 = buffer.getInteger(at: start + 1) else { return nil }
        guard flags & ~PointSubMessage.compressedFlag == 0 else {
            throw .violation(.reservedFlags(flags), "reserved flag bits set (flags 0x\(hex(flags)))")
        }
        var index = start + 2
        guard let length = try varint(at: &index, field: "length") else { return nil }
        var original: Int?
        if flags & PointSubMessage.compressedFlag != 0 {
            guard let value = try varint(at: &index, field: "original") else { return nil }
            original = value
        }
        let headerLength = index - start
        guard buffer.readableBytes - headerLength >= length else {
            announcedLength = length
            return nil
        }
        announcedLength = nil
        buffer.moveReaderIndex(forwardBy: headerLength)
        let payload = buffer.readSlice(length: length)!
        if let original {
            return PointSubMessage(kind: kind, compressedPayload: payload, originalLength: original)
        }
        return PointSubMessage(kind: kind, payload: payload)
    }

    /// Call at end of stream: throws `.protocolViolation` (`.truncated`) if a message was cut off.
    public func finish() throws(PointSubError) {
        if buffer.readableBytes > 0 {
            throw .violation(.truncated, "the stream ended inside a message (\(buffer.readableBytes) bytes buffered)")
        }
    }

    /// Whether the parser holds storage (a parser made without a buffer has none until bytes
    /// arrive or `adoptStorage` gives it some).
    public var hasStorage: Bool { buffer.capacity > 0 }

    /// Uses `storage` (e.g. from a `BufferPool`, cleared here) to accumulate into when nothing
    /// is buffered; otherwise (bytes are pending) keeps the current storage and ignores it.
    public mutating func adoptStorage(_ storage: ByteBuffer) {
        guard buffer.readableBytes == 0 else { return }
        buffer = storage
        buffer.clear()
    }

    /// Hands the storage back (for a buffer pool); the parser is empty afterwards.
    public mutating func takeBuffer() -> ByteBuffer {
        defer { buffer = ByteBuffer() }
        return buffer
    }

    /// A uvarint field at `index`, checked against `maxBlockSize`; nil when incomplete.
    private func varint(at index: inout Int, field: String) throws(PointSubError) -> Int? {
        let available = min(buffer.writerIndex - index, Varint.maxLength)
        guard available > 0, let view = buffer.viewBytes(at: index, length: available) else { return nil }
        let decoded: (value: UInt64, length: Int)?
        do {
            decoded = try Varint.decode(view)
        } catch {
            throw PointSubError(.protocolViolation, "invalid uvarint in \(field)", violation: .invalidVarint, cause: error)
        }
        guard let (value, length) = decoded else { return nil }
        // Spec "Limits": refused before any payload byte is read or memory reserved for it.
        guard value <= UInt64(maxBlockSize) else {
            throw PointSubError(
                .messageTooLarge, "message \(field) of \(value) bytes exceeds the maximum block size of \(maxBlockSize)")
        }
        index += length
        return Int(value)
    }
}

func hex(_ byte: UInt8) -> String {
    let digits = Array("0123456789abcdef")
    return String([digits[Int(byte >> 4)], digits[Int(byte & 0xf)]])
}
