import Basics
import Multistream
import NIOConcurrencyHelpers
import NIOCore
import Yamux

/// Inbound streams: multistream-select as the listener, then the protocol's handler.
extension P2PHost {
    /// One task per inbound stream, started from the event loop as its SYN arrives (no task
    /// iterating `inboundStreams` in between: one task switch less per stream).
    ///
    /// Dialers send the multistream header right behind the SYN, and most their first proposal
    /// with it (we and go-libp2p in one write; py-libp2p 0.8.1 waits for our header first), so
    /// they are usually here already: the answer (or our header) is then written from the loop,
    /// in the same write as the ACK, instead of by the task a scheduling round later; the task
    /// continues whatever negotiation is left.
    func serveInboundStreams(of connection: Connection) {
        connection.session.setInboundStreamHandler { [weak self] stream in
            guard let self else { return stream.reset() }
            connection.markStreamActivity()
            var negotiator = MultistreamNegotiator(role: .listener(protocols: self.supportedProtocols(on: connection)))
            _ = negotiator.start()  // a listener sends nothing first
            if let early = stream.takeAvailable() {
                do {
                    let step = try negotiator.receive(early)
                    if !step.send.isEmpty { stream.writeFromEventLoop(ByteBuffer(bytes: step.send)) }
                } catch {
                    self.logger.debug("inbound stream negotiation failed", metadata: ["error": "\(error)"])
                    stream.reset()
                    return
                }
            }
            if let proto = negotiator.negotiatedProtocol,
                case .eventLoop(let handler) = self.state.withLockedValue({ $0.handlers[proto] })
            {
                // Negotiated in the first bytes, for a handler that needs no task: none is started.
                if let p2pStream = self.openInbound(stream, protocolID: proto, leftover: negotiator.takeLeftover(), on: connection) {
                    handler(p2pStream)
                }
                return
            }
            let started = negotiator
            self.track { await self.handleInbound(stream, negotiator: started, on: connection) }
        }
    }

    /// Runs `work` as a task that `shutdown()` cancels and waits for. Services use it for their
    /// background work (e.g. identify on a new connection). Returns the task (e.g. to cancel it).
    @discardableResult
    public func spawn(_ work: @escaping @Sendable () async -> Void) -> Task<Void, Never> {
        track(work)
    }

    @discardableResult
    private func track(_ work: @escaping @Sendable () async -> Void) -> Task<Void, Never> {
        let id = state.withLockedValue { $0.takeID() }
        let task = Task { [weak self] in
            await work()
            _ = self?.state.withLockedValue { $0.handlerTasks.removeValue(forKey: id) }
        }
        state.withLockedValue { s in
            if s.shuttingDown { task.cancel() } else { s.handlerTasks[id] = task }
        }
        return task
    }

    /// `negotiator`: the listener's negotiation, possibly finished already (see `serveInboundStreams`).
    private func handleInbound(_ stream: YamuxStream, negotiator: MultistreamNegotiator, on connection: Connection) async {
        var negotiator = negotiator
        let negotiated: (protocol: String, leftover: ByteBuffer)
        if let proto = negotiator.negotiatedProtocol {
            negotiated = (proto, negotiator.takeLeftover())
        } else {
            do {
                negotiated = try await Self.negotiate(
                    stream, continuing: negotiator, timeout: configuration.streamNegotiationTimeout)
            } catch {
                remoteLog.log(
                    .debug, key: "inbound stream negotiation failed", "inbound stream negotiation failed",
                    metadata: [
                        "peer": "\(connection.remotePeer)", "remote_address": "\(connection.remoteAddress)",
                        "error": "\(error)",
                    ])
                stream.reset()
                return
            }
        }
        guard let handler = state.withLockedValue({ $0.handlers[negotiated.protocol] }) else {
            stream.reset()  // removed while we negotiated
            return
        }
        guard let p2pStream = openInbound(
            stream, protocolID: negotiated.protocol, leftover: negotiated.leftover, on: connection)
        else { return }
        switch handler {
        case .eventLoop(let handler):
            handler(p2pStream)
        case .task(let handler):
            do {
                try await handler(p2pStream)
                await p2pStream.close()
            } catch {
                logger.debug(
                    "stream handler failed",
                    metadata: [
                        "protocol": "\(negotiated.protocol)", "peer": "\(connection.remotePeer)",
                        "remote_address": "\(connection.remoteAddress)", "error": "\(error)",
                    ])
                p2pStream.reset()
            }
        }
    }

    /// The negotiated stream, counted against its protocol's limits; nil (the stream reset) when
    /// the protocol's stream limit is reached.
    private func openInbound(
        _ stream: YamuxStream, protocolID: String, leftover: ByteBuffer, on connection: Connection
    ) -> P2PStream? {
        do {
            try stream.resourceScope?.setProtocol(protocolID)
        } catch {
            // The protocol's stream limit is reached (the manager logged it): refuse this stream.
            metrics.streamRefused(reason: "protocol")
            stream.reset()
            return nil
        }
        metrics.streamOpened(.inbound, protocolID: protocolID)
        return P2PStream(stream: stream, protocolID: protocolID, connection: connection, leftover: leftover)
    }

    /// multistream-select on a new stream, continuing `negotiator` (started, its first bytes
    /// sent), bounded by `timeout`: a timer on the stream's event loop resets the stream (cheaper
    /// than a task group per stream on this hot path).
    static func negotiate(
        _ stream: YamuxStream, continuing negotiator: MultistreamNegotiator, timeout: Duration
    ) async throws -> (protocol: String, leftover: ByteBuffer) {
        let timedOut = NIOLockedValueBox(false)
        let timer = Deadline.after(timeout).schedule(on: stream.eventLoop) {
            timedOut.withLockedValue { $0 = true }
            stream.reset()
        }
        defer { timer.cancel() }
        do {
            return try await MultistreamNegotiator.negotiate(
                continuing: negotiator, write: { try await stream.write($0) }, read: { try await stream.read() })
        } catch {
            if timedOut.withLockedValue({ $0 }) {
                throw HostError(.timeout, "protocol negotiation timed out after \(timeout)", cause: error)
            }
            throw error
        }
    }
}
