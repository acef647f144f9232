import Multiformats
import NIOCore

/// Splits a pubsub stream into RPC frames: `uvarint(length) ‖ RPC protobuf`, as every libp2p
/// pubsub implementation frames them. A parser in the style of the other wire parsers: append what
/// the stream gives, then take frames until `nextFrame()` returns nil.
///
/// The declared length is checked against `maxFrameSize` as soon as the prefix is complete, before
/// the body is buffered, so a peer cannot make us hold more than `maxFrameSize` plus one read chunk.
struct RPCFrameDecoder {
    let maxFrameSize: Int
    private var buffer = ByteBuffer()

    init(maxFrameSize: Int) {
        self.maxFrameSize = maxFrameSize
    }

    /// Bytes received but not yet returned as a frame (a frame in progress).
    var bufferedBytes: Int { buffer.readableBytes }

    mutating func append(_ chunk: ByteBuffer) {
        var chunk = chunk
        if buffer.readableBytes == 0 {
            buffer = chunk  // the common case: no copy
        } else {
            buffer.writeBuffer(&chunk)
        }
    }

    /// The next complete frame's body, nil when more bytes are needed.
    mutating func nextFrame() throws(PubSubError) -> [UInt8]? {
        let view = buffer.readableBytesView
        let decoded: (value: UInt64, length: Int)?
        do {
            decoded = try Varint.decode(view.prefix(Varint.maxLength))
        } catch {
            throw .malformedRPC("invalid frame length prefix", cause: error)
        }
        guard let (length, prefixLength) = decoded else { return nil }
        guard length <= UInt64(maxFrameSize) else {
            throw .rpcTooLarge(length: Int(clamping: length), limit: maxFrameSize)
        }
        guard view.count - prefixLength >= Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: prefixLength)
        let frame = buffer.readBytes(length: Int(length))!
        if buffer.readableBytes == 0 {
            buffer.clear()
        } else if buffer.readerIndex > 64 * 1024 {
            buffer.discardReadBytes()
        }
        return frame
    }
}
