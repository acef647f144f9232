import Basics
import Identity
import LibP2P
import Multiformats
import Resources
import NIOConcurrencyHelpers
import NIOCore

/// A libp2p stream used like a network connection (Go's `net.Conn` over a stream, as returned by
/// `PointSubNet.dial` and `PointSubListener`).
///
/// - One `read` at a time (a second concurrent one throws `.concurrentRead`); writes may come from
///   several tasks and go out in call order. Reads and writes may run concurrently.
/// - Deadlines (`setReadDeadline`, `setWriteDeadline`, `setDeadline`) are `Deadline`s (absolute,
///   e.g. `.after(.seconds(5))`), nil for none. A read or write that is pending when its deadline passes, or
///   that starts after it passed, throws `PointSubNetError(.timeout)`. Setting a deadline affects
///   pending operations too (it wakes them at the new deadline). After a timeout the connection
///   stays usable: set a later deadline (or nil) and go on, as in Go.
/// - A read that times out loses no data: anything that arrives later is returned by the next read.
/// - A write cannot be taken back once handed to the muxer: a write that times out (or whose task
///   is cancelled) keeps going in the background, and its bytes are still delivered, in order,
///   before those of later writes, unless the connection is closed or reset.
/// - `close()` is idempotent. It half-closes gracefully (FIN after the data written) and stops
///   reading; if a write is still pending in the background (e.g. after a write timeout against a
///   peer that does not read) it resets the stream instead, so `close()` never waits on the peer.
///   Pending reads and writes then throw `.closed`.
/// - Dropping the last reference without `close()` closes the connection the same way.
public final class PointSubConnection: Sendable, CustomStringConvertible {
    /// Our end: our peer ID.
    public let localAddress: PointSubAddress
    /// The other end: the remote peer ID.
    public let remoteAddress: PointSubAddress

    private let stream: P2PStream
    private let readDeadline: ConnDeadline
    private let writeDeadline: ConnDeadline
    private let state = NIOLockedValueBox(State())
    /// Fired when the connection is done with the stream, for an accepted connection whose stream
    /// handler must keep running until then; nil for a dialed one.
    private let release: ConnSignal?

    private struct State {
        var closed = false
        var writeClosed = false
        var reading = false
        /// The rest of a chunk that `read(upTo:)` split.
        var pending = ByteBuffer()
        /// Writes handed to the stream and not finished yet, including timed-out ones.
        var writesInFlight = 0
        /// Write calls still waiting for their outcome, which `close()` fails.
        var waitingWrites: [UInt64: FirstOutcome<Void>] = [:]
        var nextWriteID: UInt64 = 0
    }

    init(stream: P2PStream, localPeer: PeerID, release: ConnSignal? = nil) {
        self.stream = stream
        self.localAddress = PointSubAddress(peer: localPeer)
        self.remoteAddress = PointSubAddress(peer: stream.remotePeer)
        self.release = release
        self.readDeadline = ConnDeadline(eventLoop: stream.eventLoop)
        self.writeDeadline = ConnDeadline(eventLoop: stream.eventLoop)
    }

    deinit {
        let (wasOpen, inFlight) = state.withLockedValue { ($0.closed == false, $0.writesInFlight) }
        guard wasOpen else { return }
        let stream = self.stream
        if inFlight > 0 {
            stream.reset()
        } else {
            Task { await stream.close() }
        }
        release?.fire()
    }

    /// The protocol the stream speaks.
    public var protocolID: String { stream.protocolID }
    /// The libp2p connection the stream runs on.
    public var connection: Connection { stream.connection }

    public var description: String {
        "PointSubConnection(\(protocolID), \(localAddress) → \(remoteAddress))"
    }

    // MARK: - Deadlines

    /// Reads pending now or started later throw `.timeout` once `deadline` has passed; nil: no deadline.
    public func setReadDeadline(_ deadline: Deadline?) {
        readDeadline.set(deadline)
    }

    /// Writes pending now or started later throw `.timeout` once `deadline` has passed; nil: no deadline.
    public func setWriteDeadline(_ deadline: Deadline?) {
        writeDeadline.set(deadline)
    }

    /// Sets both the read and the write deadline.
    public func setDeadline(_ deadline: Deadline?) {
        readDeadline.set(deadline)
        writeDeadline.set(deadline)
    }

    // MARK: - Reading

    /// The next chunk of data as it arrived (any size), or nil at end of stream (the peer
    /// half-closed or closed).
    public func read() async throws -> ByteBuffer? {
        try await read(limit: nil)
    }

    /// At most `maxBytes` (> 0) of the next data, or nil at end of stream; the rest of a larger
    /// chunk is kept for the next read.
    public func read(upTo maxBytes: Int) async throws -> ByteBuffer? {
        precondition(maxBytes > 0, "read(upTo:) needs a positive maxBytes")
        return try await read(limit: maxBytes)
    }

    private func read(limit: Int?) async throws -> ByteBuffer? {
        let buffered = try state.withLockedValue { s -> ByteBuffer? in
            if s.closed { throw PointSubNetError(.closed, "read on a closed connection") }
            if s.reading { throw PointSubNetError(.concurrentRead, "a read is already pending on this connection") }
            if readDeadline.hasPassed { throw Self.timeout("read") }
            if s.pending.readableBytes > 0 { return Self.cut(&s.pending, limit: limit) }
            s.reading = true
            return nil
        }
        if let buffered { return buffered }
        defer { state.withLockedValue { $0.reading = false } }
        guard var chunk = try await readRacingDeadline() else { return nil }
        if let limit, chunk.readableBytes > limit {
            let head = Self.cut(&chunk, limit: limit)
            state.withLockedValue { $0.pending = chunk }  // empty before: we are the only reader
            return head
        }
        return chunk
    }

    private static func cut(_ buffer: inout ByteBuffer, limit: Int?) -> ByteBuffer {
        guard let limit, buffer.readableBytes > limit else {
            defer { buffer = ByteBuffer() }
            return buffer
        }
        return buffer.readSlice(length: limit)!
    }

    /// Reads from the stream, cancelling the read when the read deadline passes first.
    private func readRacingDeadline() async throws -> ByteBuffer? {
        let stream = self.stream
        // The read runs in a task of its own so that the deadline's timer can cancel it, and is
        // awaited either way: no read outlives this call (the next one must not race it for data).
        let read = Task { try await stream.read() }
        let timedOut = NIOLockedValueBox(false)
        let watch = readDeadline.watch {
            timedOut.withLockedValue { $0 = true }
            read.cancel()
        }
        let result = await withTaskCancellationHandler {
            await read.result
        } onCancel: {
            read.cancel()
        }
        readDeadline.unwatch(watch)
        switch result {
        case .success(let chunk):
            // Data (or EOF) that arrived together with the deadline is still returned.
            return chunk
        case .failure(let error):
            if error is CancellationError, timedOut.withLockedValue({ $0 }) { throw Self.timeout("read") }
            throw mapError(error, "read")
        }
    }

    // MARK: - Writing

    /// Suspends until the data is within the peer's flow-control window and handed to the
    /// connection (back-pressure), or the write deadline passes.
    public func write(_ buffer: ByteBuffer) async throws {
        try await runWrite("write", closing: false) { try await $0.write(buffer) }
    }

    public func write(_ bytes: [UInt8]) async throws {
        try await write(ByteBuffer(bytes: bytes))
    }

    /// Half-closes: sends FIN after the data written; the peer reads EOF, and we may still read.
    /// Later writes throw `.closed`; a second `closeWrite()` does nothing. The write deadline applies.
    public func closeWrite() async throws {
        try await runWrite("closeWrite", closing: true) { try await $0.closeWrite() }
    }

    private func runWrite(
        _ operation: String, closing: Bool, _ body: @escaping @Sendable (P2PStream) async throws -> Void
    ) async throws {
        let outcome = FirstOutcome<Void>()
        let id = try state.withLockedValue { s -> UInt64? in
            if s.closed { throw PointSubNetError(.closed, "\(operation) on a closed connection") }
            if s.writeClosed {
                if closing { return nil }
                throw PointSubNetError(.closed, "\(operation) after closeWrite()")
            }
            if writeDeadline.hasPassed { throw Self.timeout(operation) }
            if closing { s.writeClosed = true }
            defer { s.nextWriteID &+= 1 }
            s.writesInFlight += 1
            s.waitingWrites[s.nextWriteID] = outcome
            return s.nextWriteID
        }
        guard let id else { return }
        let stream = self.stream
        let state = self.state
        // The muxer cannot take a write back, so it runs on its own and the caller waits for the
        // first of: its end, the deadline, close(), or cancellation.
        Task {
            let result: Result<Void, any Error>
            do {
                try await body(stream)
                result = .success(())
            } catch {
                result = .failure(error)
            }
            state.withLockedValue { $0.writesInFlight -= 1 }
            outcome.decide(result)
        }
        let watch = writeDeadline.watch { outcome.decide(.failure(Self.timeout(operation))) }
        defer {
            writeDeadline.unwatch(watch)
            _ = state.withLockedValue { $0.waitingWrites.removeValue(forKey: id) }
        }
        do {
            try await outcome.wait()
        } catch {
            throw mapError(error, operation)
        }
    }

    // MARK: - Closing

    /// Closes both directions (see the type's notes); idempotent.
    public func close() async {
        guard let inFlight = markClosed() else { return }
        if inFlight > 0 {
            stream.reset()
        } else {
            await stream.close()
        }
        release?.fire()
    }

    /// Aborts the stream in both directions (RST): data not yet read by either side is dropped.
    public func reset() {
        guard markClosed() != nil else { return }
        stream.reset()
        release?.fire()
    }

    /// Marks the connection closed and fails the waiting writes. Returns the number of writes
    /// still in flight, or nil if it was closed already.
    private func markClosed() -> Int? {
        let result = state.withLockedValue { s -> (Int, [FirstOutcome<Void>])? in
            guard !s.closed else { return nil }
            s.closed = true
            s.pending = ByteBuffer()
            defer { s.waitingWrites = [:] }
            return (s.writesInFlight, Array(s.waitingWrites.values))
        }
        guard let (inFlight, waiting) = result else { return nil }
        let error = PointSubNetError(.closed, "connection closed")
        for outcome in waiting { outcome.decide(.failure(error)) }
        return inFlight
    }

    public var isClosed: Bool { state.withLockedValue { $0.closed } }

    // MARK: - Errors

    private static func timeout(_ operation: String) -> PointSubNetError {
        PointSubNetError(.timeout, "\(operation) deadline exceeded")
    }

    private func mapError(_ error: any Error, _ operation: String) -> any Error {
        if error is CancellationError || error is PointSubNetError { return error }
        if isClosed {
            return PointSubNetError(.closed, "\(operation) on a closed connection", cause: error)
        }
        if let error = error as? HostError {
            switch error.code {
            case .streamReset, .connectionClosed:
                return PointSubNetError(.reset, "\(operation): the stream was reset", cause: error)
            case .streamClosed:
                return PointSubNetError(.closed, "\(operation) on a closed stream", cause: error)
            default:
                break
            }
        }
        return error
    }
}
