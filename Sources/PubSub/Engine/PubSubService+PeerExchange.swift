import Basics
import Identity
import LibP2P

// Peer exchange, the I/O part: the records of accepted offers go to the peerstore, and the
// offered peers are connected to by a few connector tasks, each attempt with a deadline. Once
// connected, the connection observer opens our pubsub stream as for any other connection.
extension PubSubService {
    /// Takes the peers `peer`'s PRUNEs offered (the router accepted them: `peer` scores at least
    /// `acceptPX`): verifies their records (`PeerExchange.plan`), stores the valid ones' addresses
    /// (temporary TTL, as go-libp2p-pubsub) and queues the peers for connection attempts.
    /// Invalid records are counted (`PubSubCounters.peerExchangeInvalidRecords`) and ignored.
    func takePeerExchange(_ offers: [PubSubRPC.Prune.PeerInfo], from peer: PeerID) {
        let plan = PeerExchange.plan(
            offers, localPeer: host.peerID, limit: configuration.peerExchangeMaxPending,
            isConnected: { !host.connections(to: $0).isEmpty })
        if plan.invalidRecords > 0 {
            state.withLockedValue { $0.counters.peerExchangeInvalidRecords += plan.invalidRecords }
            peerLog.log(.debug, key: "pubsub px invalid record", "peer exchange: invalid signed peer records ignored",
                metadata: ["peer": "\(peer)", "count": "\(plan.invalidRecords)",
                           "error": "\(plan.firstFailure.map { "\($0)" } ?? "?")"])
        }
        if plan.overLimit > 0 {
            state.withLockedValue { $0.counters.peerExchangeDropped += plan.overLimit }
        }
        guard !plan.candidates.isEmpty else { return }
        for candidate in plan.candidates {
            if let record = candidate.record { host.peerstore.addSignedRecord(record, ttl: .temporary) }
        }
        let maxPending = configuration.peerExchangeMaxPending
        let concurrency = configuration.peerExchangeConcurrency
        let connectors = state.withLockedValue { s -> Int in
            guard s.phase == .running else { return 0 }
            for candidate in plan.candidates where !s.exchangePending.contains(candidate.peer) {
                guard s.exchangeQueue.count < maxPending else {
                    s.counters.peerExchangeDropped += 1
                    continue
                }
                s.exchangeQueue.append(candidate.peer)
                s.exchangePending.insert(candidate.peer)
            }
            let start = min(concurrency - s.exchangeConnectors, s.exchangeQueue.count)
            guard start > 0 else { return 0 }
            s.exchangeConnectors += start
            return start
        }
        for _ in 0..<connectors {
            // Spawned on the host, so a host shutdown cancels it.
            host.spawn { [weak self] in await self?.runPeerExchangeConnector() }
        }
    }

    /// One connector: takes queued peers one after the other and connects to each (unless a
    /// connection exists by then), each attempt bounded by `peerExchangeConnectTimeout`. Ends
    /// when the queue is empty or the service stopped.
    func runPeerExchangeConnector() async {
        let timeout = configuration.peerExchangeConnectTimeout
        while let peer = state.withLockedValue({ s -> PeerID? in
            guard s.phase == .running, !s.exchangeQueue.isEmpty, !Task.isCancelled else {
                s.exchangeConnectors -= 1
                return nil
            }
            return s.exchangeQueue.removeFirst()
        }) {
            if host.connections(to: peer).isEmpty {
                state.withLockedValue { $0.counters.peerExchangeDials += 1 }
                do {
                    let host = self.host
                    try await withDeadline(
                        .after(timeout), on: host.eventLoopGroup.any(),
                        onTimeout: { HostError(.timeout, "peer exchange: connecting to \(peer) timed out") }
                    ) {
                        _ = try await host.connect(to: peer)
                    }
                    state.withLockedValue { $0.counters.peerExchangeConnected += 1 }
                } catch {
                    peerLog.log(.debug, key: "pubsub px connect failed", "peer exchange: connecting failed",
                        metadata: ["peer": "\(peer)", "error": "\(error)"])
                }
            }
            _ = state.withLockedValue { $0.exchangePending.remove(peer) }
        }
    }
}
