import Identity
import LibP2P
import Multiformats
import Resources
import NIOConcurrencyHelpers

/// Accepts inbound streams of one protocol as `PointSubConnection`s (Go's `net.Listener` over
/// libp2p streams). Made by `PointSubNet.listen`.
///
/// The listener is an AsyncSequence of accepted connections; it ends when the listener is
/// closed. `accept()` is the throwing, one-at-a-time form. Several tasks may consume at once.
///
/// Backlog: streams that arrive while nobody waits in `accept`/`next` are queued, up to `backlog`
/// of them; a stream beyond that is reset at once (the dialer's reads and writes fail with a
/// reset). `close()` unregisters the protocol handler (new streams for the protocol are then
/// refused during negotiation, so a dial fails with `HostError(.protocolNotSupported)`), resets the
/// queued connections nobody accepted, and ends the sequence. Accepted connections are not affected.
/// Dropping the last reference to the listener closes it.
public final class PointSubListener: AsyncSequence, Sendable, CustomStringConvertible {
    public typealias Element = PointSubConnection
    public typealias Failure = Never

    /// Our peer ID.
    public let localAddress: PointSubAddress
    public let protocolID: String
    public let backlog: Int
    private let queue: Queue
    /// Held weakly: the listener must not keep a host alive, nor the host the listener.
    private weak let host: P2PHost?

    init(host: P2PHost, protocolID: String, backlog: Int) throws {
        precondition(backlog >= 0, "the backlog cannot be negative")
        self.localAddress = PointSubAddress(peer: host.peerID)
        self.protocolID = protocolID
        self.backlog = backlog
        self.host = host
        let queue = Queue(backlog: backlog)
        self.queue = queue
        let localPeer = host.peerID
        do {
            // The handler captures only the queue: the host holds its handlers until they are removed.
            try host.setStreamHandler(protocolID) { stream in
                guard let release = queue.admit(stream, localPeer: localPeer) else { return }
                // The host closes the stream when the handler returns: wait until the connection
                // is closed (or dropped), or the host shuts down and cancels this task.
                await release.wait()
            }
        } catch {
            // Not registered: mark the queue closed so that deinit (which runs for a class whose
            // initializer throws after initializing every property) leaves the other handler alone.
            _ = queue.close()
            if let error = error as? HostError, error.code == .handlerExists {
                throw PointSubNetError(
                    .alreadyListening, "a handler for \(protocolID) is already registered", cause: error)
            }
            throw error
        }
    }

    deinit {
        close()
    }

    public var description: String { "PointSubListener(\(protocolID) on \(localAddress))" }

    /// Connections accepted but not yet taken.
    public var queuedCount: Int { queue.count }

    public var isClosed: Bool { queue.isClosed }

    /// The next connection; throws `PointSubNetError(.closed)` once the listener is closed, or
    /// `CancellationError` when the task is cancelled.
    public func accept() async throws -> PointSubConnection {
        if let connection = await queue.next() { return connection }
        try Task.checkCancellation()
        throw PointSubNetError(.closed, "the listener for \(protocolID) is closed")
    }

    /// Stops listening (see the type's notes). Idempotent.
    public func close() {
        guard let (queued, waiters) = queue.close() else { return }
        host?.removeStreamHandler(protocolID)
        for waiter in waiters { waiter.resume(returning: nil) }
        for connection in queued { connection.reset() }
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        public typealias Element = PointSubConnection
        public typealias Failure = Never
        /// Keeps the listener alive while it is being iterated.
        let listener: PointSubListener

        /// The next accepted connection; nil once the listener is closed or the task is cancelled.
        public mutating func next() async -> PointSubConnection? {
            await listener.queue.next()
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(listener: self) }

    /// The accepted connections waiting to be taken, and the tasks waiting for one.
    final class Queue: Sendable {
        private struct State {
            var connections: [PointSubConnection] = []
            var waiters: [(id: UInt64, continuation: CheckedContinuation<PointSubConnection?, Never>)] = []
            var nextID: UInt64 = 0
            var closed = false
        }

        let backlog: Int
        private let state = NIOLockedValueBox(State())

        init(backlog: Int) { self.backlog = backlog }

        var count: Int { state.withLockedValue { $0.connections.count } }
        var isClosed: Bool { state.withLockedValue { $0.closed } }

        /// Wraps `stream` in a connection and offers it; resets it if refused. Returns the signal
        /// that fires when the connection is done with the stream, or nil if it was refused.
        /// (Synchronous, so the handler that awaits the signal holds no reference to the
        /// connection, which must be free to deinitialize when its user drops it.)
        func admit(_ stream: P2PStream, localPeer: PeerID) -> ConnSignal? {
            let release = ConnSignal()
            let connection = PointSubConnection(stream: stream, localPeer: localPeer, release: release)
            guard offer(connection) else {
                connection.reset()
                return nil
            }
            return release
        }

        /// Hands `connection` to a waiting consumer or queues it. False: closed or the backlog is full.
        func offer(_ connection: PointSubConnection) -> Bool {
            let outcome = state.withLockedValue { s -> (Bool, CheckedContinuation<PointSubConnection?, Never>?) in
                if s.closed { return (false, nil) }
                if !s.waiters.isEmpty { return (true, s.waiters.removeFirst().continuation) }
                guard s.connections.count < backlog else { return (false, nil) }
                s.connections.append(connection)
                return (true, nil)
            }
            outcome.1?.resume(returning: connection)
            return outcome.0
        }

        /// The next connection, or nil when closed or cancelled.
        func next() async -> PointSubConnection? {
            let id = state.withLockedValue { s in
                defer { s.nextID &+= 1 }
                return s.nextID
            }
            return await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<PointSubConnection?, Never>) in
                    let ready = state.withLockedValue { s -> PointSubConnection?? in
                        if !s.connections.isEmpty { return .some(s.connections.removeFirst()) }
                        if s.closed || Task.isCancelled { return .some(nil) }
                        s.waiters.append((id, continuation))
                        return nil
                    }
                    if let ready { continuation.resume(returning: ready) }
                }
            } onCancel: {
                let waiter = state.withLockedValue { s -> CheckedContinuation<PointSubConnection?, Never>? in
                    guard let index = s.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                    return s.waiters.remove(at: index).continuation
                }
                waiter?.resume(returning: nil)
            }
        }

        /// Marks the queue closed. Returns the queued connections and the waiters, or nil if it
        /// was closed already.
        func close() -> ([PointSubConnection], [CheckedContinuation<PointSubConnection?, Never>])? {
            state.withLockedValue { s in
                guard !s.closed else { return nil }
                s.closed = true
                defer {
                    s.connections = []
                    s.waiters = []
                }
                return (s.connections, s.waiters.map(\.continuation))
            }
        }
    }
}
