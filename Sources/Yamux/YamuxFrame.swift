import NIOCore

/// The fixed part of every yamux frame (12 bytes, all fields big endian):
/// version u8, type u8, flags u16, stream ID u32, length u32.
public struct YamuxFrameHeader: Sendable, Hashable {
    public var type: YamuxFrame.FrameType
    public var flags: YamuxFrame.Flags
    public var streamID: UInt32
    /// Data: payload length. Window update: window delta. Ping: opaque value. GoAway: error code.
    public var length: UInt32

    public init(type: YamuxFrame.FrameType, flags: YamuxFrame.Flags, streamID: UInt32, length: UInt32) {
        self.type = type
        self.flags = flags
        self.streamID = streamID
        self.length = length
    }
}

/// One yamux frame. Only data frames carry a payload; for them `length == payload.readableBytes`,
/// except for a frame whose payload the decoder discarded (`YamuxPayloadDisposition.discard`),
/// which comes with an empty payload.
public struct YamuxFrame: Sendable, Hashable {
    /// The only protocol version (spec: "always set to 0").
    public static let protocolVersion: UInt8 = 0
    public static let headerSize = 12

    public enum FrameType: UInt8, Sendable, Hashable {
        case data = 0
        case windowUpdate = 1
        case ping = 2
        case goAway = 3
    }

    public struct Flags: OptionSet, Sendable, Hashable {
        public var rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }

        public static let syn = Flags(rawValue: 0x1)
        public static let ack = Flags(rawValue: 0x2)
        public static let fin = Flags(rawValue: 0x4)
        public static let rst = Flags(rawValue: 0x8)
    }

    public var header: YamuxFrameHeader
    /// Payload of a data frame; empty for every other type.
    public var payload: ByteBuffer

    public var type: FrameType { header.type }
    public var flags: Flags { header.flags }
    public var streamID: UInt32 { header.streamID }
    public var length: UInt32 { header.length }

    public init(header: YamuxFrameHeader, payload: ByteBuffer = ByteBuffer()) {
        self.header = header
        self.payload = payload
    }

    public init(type: FrameType, flags: Flags = [], streamID: UInt32, length: UInt32, payload: ByteBuffer = ByteBuffer()) {
        self.header = YamuxFrameHeader(type: type, flags: flags, streamID: streamID, length: length)
        self.payload = payload
    }

    // MARK: Constructors for each frame kind

    public static func data(streamID: UInt32, flags: Flags = [], payload: ByteBuffer) -> YamuxFrame {
        precondition(payload.readableBytes <= Int(UInt32.max))
        return YamuxFrame(type: .data, flags: flags, streamID: streamID, length: UInt32(payload.readableBytes), payload: payload)
    }

    public static func windowUpdate(streamID: UInt32, flags: Flags = [], delta: UInt32) -> YamuxFrame {
        YamuxFrame(type: .windowUpdate, flags: flags, streamID: streamID, length: delta)
    }

    /// A ping request (`ack == false`, flag SYN) or response (flag ACK). Pings use stream ID 0.
    public static func ping(opaque: UInt32, ack: Bool) -> YamuxFrame {
        YamuxFrame(type: .ping, flags: ack ? .ack : .syn, streamID: 0, length: opaque)
    }

    public static func goAway(_ code: YamuxGoAwayCode) -> YamuxFrame {
        YamuxFrame(type: .goAway, flags: [], streamID: 0, length: code.rawValue)
    }

    // MARK: Encoding

    /// Appends header and payload to `buffer`.
    public func encode(into buffer: inout ByteBuffer) {
        encodeHeader(into: &buffer)
        if header.type == .data {
            var payload = self.payload
            buffer.writeBuffer(&payload)
        }
    }

    /// Appends the 12-byte header only (for a data frame, the payload is to follow).
    public func encodeHeader(into buffer: inout ByteBuffer) {
        buffer.writeInteger(Self.protocolVersion)
        buffer.writeInteger(header.type.rawValue)
        buffer.writeInteger(header.flags.rawValue)
        buffer.writeInteger(header.streamID)
        buffer.writeInteger(header.length)
    }

    /// The encoded size of this frame.
    public var encodedSize: Int {
        Self.headerSize + (header.type == .data ? payload.readableBytes : 0)
    }

    /// Header and payload encoded into one fresh buffer, so that a record layer below (Noise)
    /// seals a small frame as one message. The handler writes large data frames as header and
    /// payload instead (`YamuxHandler.separatePayloadThreshold`), without this copy.
    public func encoded(allocator: ByteBufferAllocator) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: encodedSize)
        encode(into: &buffer)
        return buffer
    }
}

/// What to do with the payload of a data frame whose header was just parsed.
public enum YamuxPayloadDisposition: Sendable, Hashable {
    /// Buffer it and return the frame with it once complete.
    case keep
    /// Nobody wants it (a stream that is gone or refused): return the frame at once with an
    /// empty payload and drop its payload bytes as they arrive, without buffering them.
    case discard
}

/// Incremental frame parser: `append` bytes as they arrive, then call `nextFrame()` until it
/// returns nil (more bytes needed).
///
/// The length field is untrusted: it is checked against `maxFrameSize` (and the caller's
/// header validation) as soon as the header is complete, before any payload is buffered.
/// Payload bytes are only buffered as they arrive; nothing is allocated from the length. A
/// payload the caller discards (`YamuxPayloadDisposition.discard`) is skipped as it arrives:
/// the decoder then holds at most the bytes of one `append`.
public struct YamuxFrameDecoder: Sendable {
    /// 16 MiB (the default largest stream window, so the largest legal data frame) + 64 KiB.
    public static let defaultMaxFrameSize = 16 * 1024 * 1024 + 64 * 1024

    public let maxFrameSize: Int
    private var buffer = ByteBuffer()
    /// Header of the frame whose payload is still incomplete (already validated).
    private var pendingHeader: YamuxFrameHeader?
    /// Payload bytes of a discarded frame still to come (they will be skipped, not stored).
    public private(set) var discardingBytes = 0

    public init(maxFrameSize: Int = YamuxFrameDecoder.defaultMaxFrameSize) {
        self.maxFrameSize = maxFrameSize
    }

    /// Bytes received but not yet returned as frames (including a parsed pending header).
    public var bufferedBytes: Int { buffer.readableBytes + (pendingHeader == nil ? 0 : YamuxFrame.headerSize) }

    public mutating func append(_ bytes: ByteBuffer) {
        var bytes = bytes
        if discardingBytes > 0 {
            // The payload of a discarded frame: drop it before it is stored.
            let skipped = min(discardingBytes, bytes.readableBytes)
            bytes.moveReaderIndex(forwardBy: skipped)
            discardingBytes -= skipped
            if bytes.readableBytes == 0 { return }
        }
        if buffer.readableBytes == 0 {
            // Common case: take the buffer over without copying.
            buffer = bytes
        } else {
            if buffer.readerIndex > 0 && buffer.readerIndex >= buffer.readableBytes {
                buffer.discardReadBytes()
            }
            buffer.writeBuffer(&bytes)
        }
    }

    public mutating func nextFrame() throws(YamuxError) -> YamuxFrame? {
        try nextFrame(classifyingHeader: { _ throws(YamuxError) in .keep })
    }

    /// Like `nextFrame()`, but calls `validate` once per frame as soon as its header is
    /// complete (before its payload is buffered), so that e.g. a data frame longer than the
    /// stream's receive window is rejected without first reading megabytes of it.
    public mutating func nextFrame(
        validatingHeader validate: (YamuxFrameHeader) throws(YamuxError) -> Void
    ) throws(YamuxError) -> YamuxFrame? {
        try nextFrame(classifyingHeader: { header throws(YamuxError) in
            try validate(header)
            return .keep
        })
    }

    /// Like `nextFrame(validatingHeader:)`, and `classify` also decides whether a data frame's
    /// payload is wanted. A discarded frame is returned right after its header, with an empty
    /// payload (its `length` still tells the size); its payload bytes are then skipped as they
    /// arrive, never buffered whole.
    public mutating func nextFrame(
        classifyingHeader classify: (YamuxFrameHeader) throws(YamuxError) -> YamuxPayloadDisposition
    ) throws(YamuxError) -> YamuxFrame? {
        if discardingBytes > 0 {
            let skipped = min(discardingBytes, buffer.readableBytes)
            buffer.moveReaderIndex(forwardBy: skipped)
            discardingBytes -= skipped
            if discardingBytes > 0 { return nil }
        }
        let header: YamuxFrameHeader
        if let pending = pendingHeader {
            header = pending
        } else {
            guard buffer.readableBytes >= YamuxFrame.headerSize else { return nil }
            header = try Self.parseHeader(&buffer, maxFrameSize: maxFrameSize)
            let disposition = try classify(header)
            if header.type == .data && disposition == .discard {
                let skipped = min(Int(header.length), buffer.readableBytes)
                buffer.moveReaderIndex(forwardBy: skipped)
                discardingBytes = Int(header.length) - skipped
                if buffer.readableBytes == 0 { buffer = ByteBuffer() }
                return YamuxFrame(header: header)
            }
            pendingHeader = header
        }
        guard header.type == .data else {
            pendingHeader = nil
            return YamuxFrame(header: header)
        }
        let length = Int(header.length)
        guard buffer.readableBytes >= length else { return nil }
        let payload = buffer.readSlice(length: length)!
        pendingHeader = nil
        if buffer.readableBytes == 0 {
            // Drop our reference to the storage so that the payload slice handed out is the
            // only owner (no copy-on-write on the next append).
            buffer = ByteBuffer()
        }
        return YamuxFrame(header: header, payload: payload)
    }

    private static func parseHeader(_ buffer: inout ByteBuffer, maxFrameSize: Int) throws(YamuxError) -> YamuxFrameHeader {
        let start = buffer.readerIndex
        let version = buffer.getInteger(at: start, as: UInt8.self)!
        let rawType = buffer.getInteger(at: start + 1, as: UInt8.self)!
        let flags = buffer.getInteger(at: start + 2, as: UInt16.self)!
        let streamID = buffer.getInteger(at: start + 4, as: UInt32.self)!
        let length = buffer.getInteger(at: start + 8, as: UInt32.self)!
        guard version == YamuxFrame.protocolVersion else {
            throw YamuxError(.invalidVersion, "unsupported yamux version \(version)")
        }
        guard let type = YamuxFrame.FrameType(rawValue: rawType) else {
            throw YamuxError(.unknownFrameType, "unknown yamux frame type \(rawType)")
        }
        if type == .data && UInt64(length) > UInt64(maxFrameSize) {
            throw YamuxError(.frameTooLarge, "data frame of \(length) bytes exceeds limit \(maxFrameSize)")
        }
        buffer.moveReaderIndex(forwardBy: YamuxFrame.headerSize)
        return YamuxFrameHeader(type: type, flags: YamuxFrame.Flags(rawValue: flags), streamID: streamID, length: length)
    }
}
