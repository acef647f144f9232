import Identity
import Multiformats
import Multistream
import NIOConcurrencyHelpers
import NIOCore
import Resources
import Yamux

/// A negotiated libp2p stream: one protocol, between us and `remotePeer`, over a Yamux stream.
///
/// One reader and one writer at a time (reads and writes may run concurrently with each other).
/// Reading credits the peer's send window as data is consumed, so a slow reader slows the sender.
public final class P2PStream: Sendable {
    public let protocolID: String
    public let connection: Connection
    private let stream: YamuxStream
    /// Bytes read from the stream but not yet returned (negotiation leftovers, partial reads).
    private let pending: NIOLockedValueBox<ByteBuffer>
    /// Lazy negotiation: the listener's answer to our proposal, still to be checked by the first read.
    private let unverified: NIOLockedValueBox<MultistreamNegotiator?>
    /// Counts `setReadHandler` calls (see there).
    private let readHandlerChanges = NIOLockedValueBox<UInt64>(0)

    init(
        stream: YamuxStream, protocolID: String, connection: Connection, leftover: ByteBuffer,
        unverified: MultistreamNegotiator? = nil
    ) {
        self.stream = stream
        self.protocolID = protocolID
        self.connection = connection
        self.pending = NIOLockedValueBox(leftover)
        self.unverified = NIOLockedValueBox(unverified)
    }

    public var remotePeer: PeerID { connection.remotePeer }
    /// The stream's place in the host's resource manager (memory a protocol holds for this stream
    /// is reserved here); nil on a session without accounting.
    public var resourceScope: StreamScope? { stream.resourceScope }
    public var streamID: UInt32 { stream.id }

    /// The next chunk of data, or nil once the remote has closed its write side.
    public func read() async throws -> ByteBuffer? {
        if var negotiator = unverified.withLockedValue({ $0 }) {
            try await verifyNegotiation(&negotiator)
        }
        let buffered: ByteBuffer? = pending.withLockedValue { pending in
            guard pending.readableBytes > 0 else { return nil }
            defer { pending = ByteBuffer() }
            return pending
        }
        if let buffered { return buffered }
        do {
            return try await stream.read()
        } catch {
            throw Self.mapped(error)
        }
    }

    /// The muxer's errors as the host layer's: users of a stream never see `YamuxError` (it stays
    /// the cause). Everything else passes unchanged. (Package: for the errors `writeOnEventLoop`
    /// and a read handler are given.)
    package static func mapped(_ error: any Error) -> any Error {
        guard let error = error as? YamuxError else { return error }
        switch error.code {
        case .streamReset:
            return HostError(.streamReset, "the stream was reset", cause: error)
        case .streamClosed:
            return HostError(.streamClosed, "the stream is closed", cause: error)
        case .sessionClosed, .keepAliveTimeout, .goAwayReceived, .goAwaySent:
            return HostError(.connectionClosed, "the connection ended", cause: error)
        case .resourceLimit, .streamLimit:
            return HostError(.limitReached, "the stream's resources are exhausted", cause: error)
        case .invalidUsage:
            return HostError(.streamClosed, "the stream cannot be used this way", cause: error)
        default:
            return HostError(.protocolViolation, "the muxer failed", cause: error)
        }
    }

    /// Reads the listener's answer to a lazily sent proposal. A refusal resets the stream.
    private func verifyNegotiation(_ negotiator: inout MultistreamNegotiator) async throws {
        do {
            while true {
                let chunk: ByteBuffer?
                do {
                    chunk = try await stream.read()
                } catch {
                    throw Self.mapped(error)
                }
                guard let chunk else {
                    throw MultistreamError(.unexpectedEOF, "stream closed during negotiation")
                }
                if try negotiator.receive(chunk).negotiated != nil { break }
            }
        } catch let error as MultistreamError {
            unverified.withLockedValue { $0 = nil }
            stream.reset()
            if error.code == .noProtocolInCommon {
                throw HostError(.protocolNotSupported, "\(remotePeer) does not support \(protocolID)", cause: error)
            }
            throw error
        }
        unverified.withLockedValue { $0 = nil }
        unread(negotiator.takeLeftover())
    }

    private func unread(_ buffer: ByteBuffer) {
        guard buffer.readableBytes > 0 else { return }
        pending.withLockedValue { pending in
            var buffer = buffer
            if pending.readableBytes > 0 { buffer.writeBuffer(&pending) }
            pending = buffer
        }
    }

    /// Reads exactly `count` bytes; throws `.unexpectedEOF` if the stream ends first.
    public func readExactly(_ count: Int) async throws -> ByteBuffer {
        var out = ByteBuffer()
        out.reserveCapacity(count)
        while out.readableBytes < count {
            guard var chunk = try await read() else {
                throw HostError(.unexpectedEOF, "stream ended after \(out.readableBytes) of \(count) bytes")
            }
            let take = min(count - out.readableBytes, chunk.readableBytes)
            var part = chunk.readSlice(length: take)!
            out.writeBuffer(&part)
            unread(chunk)
        }
        return out
    }

    /// Reads until the remote closes its write side; throws `.limitReached` beyond `maxBytes`.
    public func readToEnd(maxBytes: Int) async throws -> ByteBuffer {
        var out = ByteBuffer()
        while var chunk = try await read() {
            guard out.readableBytes + chunk.readableBytes <= maxBytes else {
                throw HostError(.limitReached, "stream sent more than \(maxBytes) bytes")
            }
            out.writeBuffer(&chunk)
        }
        return out
    }

    /// Reads a uvarint length followed by that many bytes. Returns nil on a clean end of stream
    /// before the first byte. The length is checked against `maxLength` before anything is buffered.
    public func readLengthPrefixed(maxLength: Int) async throws -> ByteBuffer? {
        var header = ByteBuffer()
        while true {
            guard var chunk = try await read() else {
                if header.readableBytes == 0 { return nil }
                throw HostError(.unexpectedEOF, "stream ended inside a length prefix")
            }
            header.writeBuffer(&chunk)
            let parsed: (value: UInt64, length: Int)?
            do {
                parsed = try header.getVarint(at: header.readerIndex)
            } catch {
                throw HostError(.protocolViolation, "invalid length prefix", cause: error)
            }
            guard let (length, prefixLength) = parsed else { continue }
            guard length <= UInt64(maxLength) else {
                throw HostError(.messageTooLarge, "message of \(length) bytes exceeds the limit of \(maxLength)")
            }
            header.moveReaderIndex(forwardBy: prefixLength)
            unread(header)
            return try await readExactly(Int(length))
        }
    }

    /// Writes `uvarint(count) ‖ bytes`.
    public func writeLengthPrefixed(_ message: some Collection<UInt8>) async throws {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(message.count + 10)
        buffer.writeVarint(UInt64(message.count))
        buffer.writeBytes(message)
        try await write(buffer)
    }

    /// Suspends until the data is within the peer's window and handed to the connection.
    public func write(_ buffer: ByteBuffer) async throws {
        do {
            try await stream.write(buffer)
        } catch {
            throw Self.mapped(error)
        }
    }

    /// Writes the buffers in order as one operation (no copy into one buffer); suspends like
    /// `write(_:)` until the last is handed to the connection.
    public func write(contentsOf buffers: [ByteBuffer]) async throws {
        do {
            try await stream.write(contentsOf: buffers)
        } catch {
            throw Self.mapped(error)
        }
    }

    /// The event loop of the stream's connection.
    package var eventLoop: any EventLoop { stream.eventLoop }

    /// On `eventLoop`, from outside its channel handlers: writes `buffer` like `write` does,
    /// without a task. The future completes when `write` would return (the data is within the
    /// peer's window and handed to the connection).
    package func writeOnEventLoop(_ buffer: ByteBuffer) -> EventLoopFuture<Void> {
        stream.writeFromEventLoop(buffer)
    }

    /// `writeOnEventLoop` for several buffers in order, as one operation (like
    /// `write(contentsOf:)`); the future completes when the last is handed to the connection.
    package func writeOnEventLoop(contentsOf buffers: [ByteBuffer]) -> EventLoopFuture<Void> {
        stream.writeFromEventLoop(contentsOf: buffers)
    }

    /// Whether `setReadHandler` may be used now: no lazy negotiation is left to check (an inbound
    /// stream, or an outbound one after its first read).
    package var readsOnEventLoop: Bool { unverified.withLockedValue { $0 == nil } }

    /// What a read handler is given (`setReadHandler`).
    package typealias ReadEvent = YamuxStream.ReadEvent

    /// On `eventLoop`, for a stream without a lazy negotiation pending (an inbound stream): data,
    /// the remote's end and failures go to `handler` on the loop as they arrive, instead of
    /// waiting for `read()` — see `YamuxStream.setReadHandler` for what `handler` may do. nil
    /// gives the stream back to `read()`.
    package func setReadHandler(_ handler: (@Sendable (ReadEvent) -> Void)?) {
        let change = readHandlerChanges.withLockedValue { changes in
            changes &+= 1
            return changes
        }
        guard let handler else { return stream.setReadHandler(nil) }
        precondition(unverified.withLockedValue { $0 == nil }, "setReadHandler before the negotiation was checked")
        let buffered = pending.withLockedValue { pending -> ByteBuffer? in
            guard pending.readableBytes > 0 else { return nil }
            defer { pending = ByteBuffer() }
            return pending
        }
        if let buffered {
            handler(.data(buffered))
            // The handler removed (or replaced) itself on this data: it is not installed.
            guard readHandlerChanges.withLockedValue({ $0 }) == change else { return }
        }
        stream.setReadHandler(handler)
    }

    /// Writes `bytes` like `write(_:)` with a buffer.
    public func write(_ bytes: some Sequence<UInt8>) async throws {
        try await write(ByteBuffer(bytes: bytes))
    }

    /// Half-closes: we send no more, the remote may still send.
    public func closeWrite() async throws {
        do {
            try await stream.closeWrite()
        } catch {
            throw Self.mapped(error)
        }
    }

    /// Calls `watcher` once when the stream fails (reset by either side, or the connection
    /// ended), right away if it failed already; nil removes it. A FIN is not a failure.
    public func setFailureWatcher(_ watcher: (@Sendable () -> Void)?) {
        stream.setFailureWatcher(watcher)
    }

    /// Abruptly ends both directions.
    public func reset() {
        stream.reset()
    }

    /// Closes our write side and stops reading.
    public func close() async {
        await stream.close()
    }

    /// The stream's data as an AsyncSequence of chunks (single consumer).
    public var inbound: Inbound { Inbound(stream: self) }

    public struct Inbound: AsyncSequence, Sendable {
        public typealias Element = ByteBuffer
        let stream: P2PStream
        public struct AsyncIterator: AsyncIteratorProtocol {
            let stream: P2PStream
            public mutating func next() async throws -> ByteBuffer? { try await stream.read() }
        }
        public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(stream: stream) }
    }
}
