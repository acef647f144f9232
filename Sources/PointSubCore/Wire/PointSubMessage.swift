import Multiformats
import NIOCore

/// One PointSub message as it is on the wire (docs/PROTOCOL.md "Messages"):
/// `kind` (1 byte) ‖ `flags` (1 byte) ‖ uvarint `length` ‖ [uvarint `original`] ‖ payload.
public struct PointSubMessage: Sendable, Equatable {
    public enum Kind: UInt8, Sendable, Hashable, CaseIterable {
        case request = 0x01
        case response = 0x02
        case error = 0x03
    }

    /// Flag bit 0: the payload is zlib-compressed. Bits 1–7 are reserved and must be 0.
    static let compressedFlag: UInt8 = 0x01

    public var kind: Kind
    /// The payload as on the wire: zlib data when `originalLength` is set.
    public var payload: ByteBuffer
    /// The payload's size after decompression; set exactly when the payload is compressed.
    public var originalLength: Int?

    public var isCompressed: Bool { originalLength != nil }

    /// An uncompressed message.
    public init(kind: Kind, payload: ByteBuffer) {
        self.kind = kind
        self.payload = payload
        self.originalLength = nil
    }

    /// A message whose `payload` is already zlib data that decompresses to `originalLength` bytes.
    public init(kind: Kind, compressedPayload: ByteBuffer, originalLength: Int) {
        self.kind = kind
        self.payload = compressedPayload
        self.originalLength = originalLength
    }

    /// Builds the message for `payload`, compressing it when `compress` is on and the rule of
    /// docs/PROTOCOL.md "Compression" says it is worth it (≥ 1 KiB, saves ≥ 10 %).
    public static func make(kind: Kind, payload: ByteBuffer, compress: Bool) -> PointSubMessage {
        if compress, let compressed = PointSubCompression.compressIfWorthwhile(payload) {
            return PointSubMessage(kind: kind, compressedPayload: compressed, originalLength: payload.readableBytes)
        }
        return PointSubMessage(kind: kind, payload: payload)
    }

    /// An error message: `code` (1 byte) ‖ UTF-8 `message`, at most 64 KiB of text (cut at a
    /// character boundary). Error messages are never compressed.
    public static func error(_ code: RemoteErrorCode, _ message: String) -> PointSubMessage {
        let utf8 = message.utf8
        var cut = min(utf8.count, RemoteErrorPayload.maxMessageBytes)
        if cut < utf8.count {
            // Back off to the start of a scalar: UTF-8 continuation bytes are 0b10xxxxxx.
            let bytes = Array(utf8.prefix(cut + 1))
            while cut > 0 && bytes[cut] & 0xc0 == 0x80 { cut -= 1 }
        }
        var payload = ByteBuffer()
        payload.reserveCapacity(1 + cut)
        payload.writeInteger(code.rawValue)
        payload.writeBytes(utf8.prefix(cut))
        return PointSubMessage(kind: .error, payload: payload)
    }

    /// Size of the header for this message.
    public var headerLength: Int {
        var n = 2 + Varint.encodedLength(UInt64(payload.readableBytes))
        if let originalLength { n += Varint.encodedLength(UInt64(originalLength)) }
        return n
    }

    /// Appends header and payload to `buffer`.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.reserveCapacity(minimumWritableBytes: headerLength + payload.readableBytes)
        encodeHeader(into: &buffer)
        var payload = self.payload
        buffer.writeBuffer(&payload)
    }

    /// Payloads from this size on are written after their header as a buffer of their own
    /// rather than copied behind it (`wireParts()`).
    public static let separatePayloadThreshold = 16 * 1024

    /// The encoded message as buffers to write in order: one buffer (header and payload) for a
    /// small payload; for a large one the header, then the payload itself, not copied.
    public func wireParts() -> [ByteBuffer] {
        guard payload.readableBytes >= Self.separatePayloadThreshold else { return [encoded()] }
        var header = ByteBuffer()
        header.reserveCapacity(headerLength)
        encodeHeader(into: &header)
        return [header, payload]
    }

    private func encodeHeader(into buffer: inout ByteBuffer) {
        buffer.writeInteger(kind.rawValue)
        buffer.writeInteger(isCompressed ? Self.compressedFlag : 0)
        buffer.writeVarint(UInt64(payload.readableBytes))
        if let originalLength { buffer.writeVarint(UInt64(originalLength)) }
    }

    /// The encoded message in a new buffer.
    public func encoded() -> ByteBuffer {
        var buffer = ByteBuffer()
        encode(into: &buffer)
        return buffer
    }

    /// The payload after decompression (the payload itself when not compressed). Checks
    /// `original` against `maxBlockSize` first; stops as soon as the output would exceed it.
    public func decodedPayload(maxBlockSize: Int) throws(PointSubError) -> ByteBuffer {
        guard let originalLength else { return payload }
        return try PointSubCompression.decompress(payload, originalLength: originalLength, maxBlockSize: maxBlockSize)
    }
}

/// The payload of an error message (docs/PROTOCOL.md "Errors").
public struct RemoteErrorPayload: Sendable, Equatable {
    /// Spec: a sender cuts the text to at most 64 KiB (receivers do not enforce it).
    public static let maxMessageBytes = 64 * 1024

    public var code: RemoteErrorCode
    public var message: String

    public init(code: RemoteErrorCode, message: String) {
        self.code = code
        self.message = message
    }

    /// Parses a (decompressed) error payload. Only a missing code byte is a protocol violation:
    /// spec "Errors", a receiver does not enforce the 64 KiB limit on the text (a sender's rule;
    /// the maximum block size still applies) and decodes invalid UTF-8 with replacement characters.
    public init(decoding payload: ByteBuffer) throws(PointSubError) {
        var payload = payload
        guard let raw: UInt8 = payload.readInteger() else {
            throw .violation(.invalidErrorPayload, "error message without a code")
        }
        self.code = RemoteErrorCode(rawValue: raw)
        self.message = String(decoding: payload.readableBytesView, as: UTF8.self)
    }
}
