import NIOCore
import Resources

/// A yamux session (`/yamux/1.0.0`) over one channel.
///
/// All protocol state lives in a `YamuxHandler` on the channel's event loop; this façade is
/// `Sendable` and hops to the loop for every operation.
///
/// Flow control and back-pressure, end to end:
/// - Receiving: each stream's queue holds at most the window we granted (256 KiB at first,
///   auto-tuned up to `maxStreamWindow`, see `YamuxReceiveWindow`); credit is only given for
///   data the application read, so a slow reader stalls its sender, never our memory.
/// - Sending: `YamuxStream.write` suspends until its bytes fitted into the peer's window and
///   the last frame was written to the channel; data frames are only produced while the
///   channel is writable, so a slow connection (TCP, Noise below) stalls the writers.
/// - Streams: the peer's unaccepted streams are bounded by `maxAcceptBacklog` (excess SYNs
///   get RST), open streams per direction by `maxStreams`, and our unacknowledged SYNs by
///   `maxOutboundAckBacklog` (`openStream()` waits).
/// - Replies: what the peer's frames ask for one to one (ping ACKs, RSTs) pauses reading once
///   64 KiB of it waits in a channel that is not writable; a peer that never reads cannot make
///   the write queue grow.
/// - Discarded data: the payload of a frame for a stream that is gone (or refused) is skipped
///   as it arrives, never buffered.
/// - Resources: with a `ConnectionScope`, every stream's scope and initial window are reserved
///   before the stream exists, and window growth before it is granted.
package final class YamuxSession: Sendable {
    package static let protocolID = "/yamux/1.0.0"

    package let eventLoop: EventLoop
    /// Completes when the session ended: succeeds on a normal end (close, GoAway, the
    /// channel closed), fails with the `YamuxError` that ended it otherwise.
    package let closeFuture: EventLoopFuture<Void>
    package let role: YamuxRole

    let handler: NIOLoopBound<YamuxHandler>
    let shared: YamuxSharedState

    private init(role: YamuxRole, handler: YamuxHandler) {
        self.role = role
        self.eventLoop = handler.eventLoop
        self.handler = NIOLoopBound(handler, eventLoop: handler.eventLoop)
        self.shared = handler.shared
        self.closeFuture = handler.closePromise.futureResult
    }

    /// Adds the yamux handler to the end of `channel`'s pipeline and returns the session.
    /// Must be called on the channel's event loop. The handler accepts bytes right away, so
    /// bytes left over from the protocol negotiation can be fired into it immediately after.
    ///
    /// `resourceScope`: the connection's scope in the resource manager. Every stream, inbound or
    /// outbound, then opens a `StreamScope` in it (`YamuxStream.resourceScope`) and reserves its
    /// initial receive window there before it exists; window growth is reserved before it is
    /// granted (and simply not granted when refused). A refused inbound stream is answered with
    /// RST, a refused `openStream()` throws `.resourceLimit`. nil: no accounting.
    package static func install(
        on channel: Channel, role: YamuxRole, configuration: YamuxConfiguration = .defaults,
        resourceScope: ConnectionScope? = nil
    ) throws -> YamuxSession {
        channel.eventLoop.preconditionInEventLoop()
        let handler = YamuxHandler(
            role: role, configuration: configuration, eventLoop: channel.eventLoop, resourceScope: resourceScope)
        let session = YamuxSession(role: role, handler: handler)
        do {
            try channel.pipeline.syncOperations.addHandler(handler)
        } catch {
            handler.closePromise.fail(error)
            throw error
        }
        return session
    }

    /// Opens a new outbound stream. The SYN is sent right away (data may follow at once);
    /// suspends while `maxOutboundAckBacklog` of our streams are unacknowledged.
    /// Throws `.resourceLimit` when the resource manager refuses the stream, `.streamLimit` at `maxStreams`, `.goAwayReceived` / `.goAwaySent` after GoAway,
    /// `.sessionClosed` when the session ended.
    ///
    /// `initialData`: the stream's first bytes, sent with the SYN — in the same data frame when
    /// they fit (one frame and one write for, say, a multistream proposal), else right after
    /// it. Returns once they were handed to the connection, as `write` does.
    package func openStream(sending initialData: ByteBuffer? = nil) async throws -> YamuxStream {
        let handler = self.handler
        return try await YamuxStream.mapErrors {
            try await self.eventLoop.runInline { handler.value.openStream(sending: initialData) }
        }
    }

    /// Hands every inbound stream to `handler`, on the event loop, as soon as its SYN arrives
    /// (streams already waiting first), ACKing it at once; use it instead of `inboundStreams`,
    /// which then yields nothing. It saves a task switch per stream over iterating
    /// `inboundStreams` to spawn a task per stream. `handler` runs at the end of the read that
    /// brought the SYN, so the data that came with it is queued on the stream already (see
    /// `YamuxStream.takeAvailable()`), and what it writes (`writeFromEventLoop`) leaves in the
    /// same flush as the ACK. Keep it short; it is dropped when the session ends.
    package func setInboundStreamHandler(_ handler: @escaping @Sendable (YamuxStream) -> Void) {
        let bound = self.handler
        if eventLoop.inEventLoop {
            bound.value.setInboundHandler(handler)
        } else {
            eventLoop.execute { bound.value.setInboundHandler(handler) }
        }
    }

    /// Streams opened by the peer, in order (single consumer). A stream is ACKed when it is
    /// taken from this sequence. Ends when the session ends or stops accepting streams.
    package var inboundStreams: YamuxInboundStreams { YamuxInboundStreams(session: self) }

    /// Sends a ping and returns the round-trip time.
    package func ping() async throws -> Duration {
        let handler = self.handler
        let rtt = try await YamuxStream.mapErrors {
            try await self.eventLoop.flatSubmit { handler.value.ping() }.get()
        }
        return .nanoseconds(rtt.nanoseconds)
    }

    /// Sends GoAway with `code` and refuses new streams in both directions from now on;
    /// existing streams continue. (py-libp2p tears the connection down on any GoAway: to
    /// end a session politely, use `close(graceful: true)`.)
    package func goAway(_ code: YamuxGoAwayCode = .normal) async {
        let handler = self.handler
        try? await eventLoop.submit { handler.value.goAway(code) }.get()
    }

    /// Closes the session. `graceful`: refuse new streams (and reset those the application
    /// never took), wait until every open stream is closed or reset or `deadline` passes,
    /// then send GoAway(normal) and close the channel. Otherwise GoAway(normal) and close at
    /// once, failing the open streams with `.sessionClosed`. Returns when the session ended.
    package func close(graceful: Bool = true, deadline: NIODeadline? = nil) async {
        let handler = self.handler
        eventLoop.execute { handler.value.close(graceful: graceful, deadline: deadline) }
        try? await closeFuture.get()
    }

    package var isClosed: Bool { shared.isClosed.load(ordering: .acquiring) }

    /// Streams currently open in either direction (including unaccepted inbound ones).
    package var openStreamCount: Int { shared.openStreams.load(ordering: .relaxed) }

    /// Inbound streams answered with RST because the resource manager refused them.
    package var refusedInboundStreamCount: Int { shared.refusedInboundStreams.load(ordering: .relaxed) }

    /// Smoothed round-trip time measured by pings, if any.
    package var roundTripTime: Duration? {
        shared.rtt.map { .nanoseconds($0.nanoseconds) }
    }
}

/// The peer's new streams (single consumer). Iteration ends (nil) when the session ends or
/// stops accepting streams; the session's error, if any, is in `closeFuture`.
package struct YamuxInboundStreams: AsyncSequence, Sendable {
    package typealias Element = YamuxStream
    let session: YamuxSession

    package struct AsyncIterator: AsyncIteratorProtocol {
        let session: YamuxSession

        package mutating func next() async -> YamuxStream? {
            let handler = session.handler
            let eventLoop = session.eventLoop
            let future = eventLoop.flatSubmit { handler.value.nextInbound() }
            return await withTaskCancellationHandler {
                (try? await future.get()) ?? nil
            } onCancel: {
                eventLoop.execute { handler.value.cancelInboundWait() }
            }
        }
    }

    package func makeAsyncIterator() -> AsyncIterator { AsyncIterator(session: session) }
}
