import Basics
import Crypto
import Identity
import LibP2P
import Multiformats
import Resources
import NIOCore

/// Server nodes and `sendClosest`: a request goes to the node "closest" to it, failing over down
/// the list when a node fails.
///
/// Every method may be called from any task (the nodes live in a thread-safe `NodeList`).
///
/// **Ordering.** `.xorDistance` (the default) sorts the protocol's nodes by the XOR of
/// SHA-256(request) and SHA-256(peer ID bytes), nearest first: the same request goes to the same
/// node as long as the membership and the nodes' health hold, and different requests spread
/// evenly. `.roundTripTime` sorts by the smoothed time the nodes took to answer (see below),
/// fastest first.
///
/// **Round-trip time.** Every successful `sendClosest` exchange (whatever the ordering) records
/// the time from starting to write the request to having the response into the node's smoothed
/// RTT (`NodeList.recordRTT`, 7/8 old + 1/8 new, per peer). That is the time to an answer as this
/// client sees it, handler time included — which is what "the fastest node" has to mean for a
/// request/response service — but not the time to connect or open a stream, which would
/// penalize a node for its first request (and it would never get another to correct that). Yamux
/// pings are not used: they measure only the network, and mixing them with answer times would
/// rank a slow server with a fast link first. With `.roundTripTime`, nodes never measured are
/// tried first (nearest to the request first), so a new node gets its first measurement from
/// real traffic instead of waiting behind the measured ones forever; measured nodes follow,
/// fastest first, ties nearest to the request first.
///
/// **Failover.** Nodes are tried in order. An attempt is one `send` without the client's retries
/// (a retryable error moves on to the next node instead of retrying the same one; a dead pooled
/// stream is still replaced once within the attempt). A node that fails — connection errors,
/// `protocolNotSupported`, timeouts, protocol violations, a reply over our block size, and the
/// remote errors `busy`, `unavailable`, `tooLarge`, `malformed` and `timeout` — is put in
/// cool-down (`NodeList.markFailure`: 2^(n−1) s after n failures in a row, at most 15 minutes)
/// and left out of later orderings while it cools (unless every node is cooling). A node that
/// answers is marked healthy (`markSuccess`), which ends its cool-down.
///
/// **Handler errors are answers.** A remote `handler` error is the application's answer to the
/// request: it is thrown as `.remote(.handler)` at once, without failing over, and the node is
/// marked healthy. (The Go original fails over on any error; but every node runs the same
/// handler, so repeating the request elsewhere would most likely repeat the error, multiply the
/// side effects and punish healthy nodes with cool-downs.)
///
/// **Time.** `deadline` (default: `configuration.requestTimeout` from now) bounds the whole call. Each round
/// (one node, or `fanout` nodes at once) gets an equal share of the time left: time left ÷ rounds
/// left. A lone node gets the whole time; a node that fails fast passes its unused share on; a
/// node that hangs cannot eat the time of the nodes after it.
///
/// **Fanout.** With `fanout` k > 1 the request goes to the first k nodes at once; the first
/// answer (a response, or a handler error) wins and the other attempts are cancelled (their
/// streams reset; they are not marked failed). If all k fail, the next k are tried the same way.
/// Use it only for requests that are safe to process more than once.
///
/// **Errors.** `.invalidConfiguration` for `fanout` < 1;
/// `.messageTooLarge` for a request over `maxBlockSize` (nothing sent, no node marked);
/// `.noServerNodes` when the protocol has no nodes; `.remote(.handler)` as above; `.cancelled`
/// when the calling task is cancelled (at once; no node is marked failed); `.clientClosed`;
/// `.allNodesFailed` when every node failed, with each node's error in `nodeFailures`, in the
/// order tried; `.timeout(requestSent:)` (also with `nodeFailures`) if the time ran out before
/// every node was tried (at once, trying none, for a deadline that has passed).
///
/// **Node sources (e.g. the DHT).** With a `ClosestNodeSource` set for the protocol
/// (`setClosestNodeSource(_:protocol:)`), the node list is not used: the source names the nodes
/// that serve the protocol nearest to the request's *key*, and they are tried in that order (by
/// XOR distance; `.roundTripTime` is refused with `.invalidConfiguration`). The key is `key` if
/// given, else the SHA-256 of the request (32 bytes: a DHT lookup carries the key, and a request
/// may be megabytes). `DHTClosestNodes` hashes the key once more, as the kad-dht spec hashes
/// every key: the node chosen is the serving peer whose SHA-256(peer ID) is nearest by XOR to
/// SHA-256(key). The source is asked for at most `configuration.closestNodeLimit` nodes, and
/// asked again (the tried ones excluded) when all it gave have failed, until that many were tried.
/// A node that fails is reported to the source (`nodeFailed`), which stops offering it from its
/// cache. `.noServerNodes` when the source knows no serving node; the source's errors otherwise
/// (`.timeout` with `nodeFailures` when the time ran out while it looked).
extension PointSubClient {
    /// How `sendClosest` orders the nodes of a protocol.
    public enum NodeOrdering: Sendable, Hashable {
        /// By XOR distance between SHA-256 of the request and SHA-256 of the peer ID, nearest first.
        case xorDistance
        /// By measured time to an answer, fastest first; unmeasured nodes first of all.
        case roundTripTime
    }

    // MARK: - Nodes

    /// Adds `peer` as a server node for `protocolID`; returns false if it is one already (it keeps
    /// its health and RTT). Throws `.invalidNode` for our own peer ID.
    @discardableResult
    public func addServerNode(_ peer: PeerID, protocol protocolID: String) throws(PointSubError) -> Bool {
        do {
            return try nodeList.add(peer, protocol: protocolID)
        } catch {
            throw PointSubError(.invalidNode, "\(peer) cannot serve \(protocolID)", cause: error)
        }
    }

    /// Removes `peer` from `protocolID`'s server nodes; returns whether it was one. A
    /// `sendClosest` already under way may still try it.
    @discardableResult
    public func removeServerNode(_ peer: PeerID, protocol protocolID: String) -> Bool {
        nodeList.remove(peer, protocol: protocolID)
    }

    /// The server nodes of `protocolID` in the order they were added, including those cooling down.
    public func serverNodes(protocol protocolID: String) -> [PeerID] {
        nodeList.nodes(protocol: protocolID)
    }

    /// Removes every server node of `protocolID`.
    public func clearServerNodes(protocol protocolID: String) {
        nodeList.clear(protocol: protocolID)
    }

    /// A server node's health and measured RTT, or nil if `peer` is not a node of `protocolID`.
    public func serverNodeStatus(_ peer: PeerID, protocol protocolID: String) -> NodeList.Status? {
        nodeList.status(of: peer, protocol: protocolID)
    }

    /// The order `sendClosest` would try the nodes of `protocolID` in for `request` right now
    /// (nodes cooling down left out unless all are).
    public func serverNodeOrder(
        for request: ByteBuffer, protocol protocolID: String, ordering: NodeOrdering = .xorDistance
    ) -> [PeerID] {
        switch ordering {
        case .xorDistance:
            return nodeList.orderedByXOR(request: request, protocol: protocolID)
        case .roundTripTime:
            return rttOrder(
                nodeList.orderedByRTT(request: request.readableBytesView, protocol: protocolID), protocol: protocolID)
        }
    }

    /// The RTT order with the unmeasured nodes first.
    private func rttOrder(_ order: [PeerID], protocol protocolID: String) -> [PeerID] {
        // If the first is cooling, all are, sorted by when they become available: keep that.
        guard let first = order.first, nodeList.status(of: first, protocol: protocolID)?.availableAt == nil else {
            return order
        }
        let measured = Set(order.filter { nodeList.rtt(of: $0) != nil })
        return order.filter { !measured.contains($0) } + order.filter { measured.contains($0) }
    }

    /// `serverNodeOrder(for:protocol:ordering:)` measured from SHA-256(`point`) instead of the request's hash.
    func serverNodeOrder(point: [UInt8], protocol protocolID: String, ordering: NodeOrdering) -> [PeerID] {
        switch ordering {
        case .xorDistance:
            return nodeList.orderedByXOR(request: point, protocol: protocolID)
        case .roundTripTime:
            return rttOrder(nodeList.orderedByRTT(request: point, protocol: protocolID), protocol: protocolID)
        }
    }

    // MARK: - Node sources

    /// Makes `sendClosest` for `protocolID` ask `source` for the nodes instead of using the node
    /// list (see the notes on this extension); nil goes back to the node list. A call under way
    /// keeps the source it started with.
    public func setClosestNodeSource(_ source: (any ClosestNodeSource)?, protocol protocolID: String) {
        nodeSources.withLockedValue { $0[protocolID] = source }
    }

    /// The node source of `protocolID`, if one is set.
    public func closestNodeSource(protocol protocolID: String) -> (any ClosestNodeSource)? {
        nodeSources.withLockedValue { $0[protocolID] }
    }

    /// The key a node source is asked about for `request` when `sendClosest` is given none:
    /// the SHA-256 of the request's bytes.
    public static func closestNodeKey(for request: ByteBuffer) -> [UInt8] {
        Array(request.withUnsafeReadableBytes { SHA256.hash(data: $0) })
    }

    // MARK: - Sending

    /// Sends `request` to the closest available node of `protocolID` (see the notes on this
    /// extension), failing over down the list, and returns the response with the node that
    /// answered. `deadline` (default: `requestTimeout` from now) bounds the whole call and is
    /// shared out among the rounds still to go.
    ///
    /// `key` (default: the request itself for node lists, its SHA-256 for a node source) is what
    /// "closest" is measured from; with a key, both kinds of node sets use the point SHA-256(key).
    public func sendClosest(
        _ request: ByteBuffer, key: [UInt8]? = nil, protocol protocolID: String,
        ordering: NodeOrdering = .xorDistance, fanout: Int = 1, deadline: Deadline? = nil
    ) async throws(PointSubError) -> (response: ByteBuffer, node: PeerID) {
        let deadline = deadline ?? .after(configuration.requestTimeout)
        guard fanout >= 1 else { throw PointSubError(.invalidConfiguration, "fanout must be at least 1 (is \(fanout))") }
        guard request.readableBytes <= configuration.maxBlockSize else {
            throw PointSubError(
                .messageTooLarge,
                "request of \(request.readableBytes) bytes exceeds the maximum block size of \(configuration.maxBlockSize)")
        }
        guard !Task.isCancelled else { throw PointSubError(.cancelled, "the send was cancelled") }
        if let source = closestNodeSource(protocol: protocolID) {
            guard ordering == .xorDistance else {
                throw PointSubError(
                    .invalidConfiguration, "\(protocolID) has a node source, which orders by XOR distance only")
            }
            return try await sendClosest(
                request, key: key ?? Self.closestNodeKey(for: request), protocolID: protocolID, source: source,
                fanout: fanout, deadline: deadline)
        }
        let nodes: [PeerID]
        if let key {
            nodes = serverNodeOrder(point: key, protocol: protocolID, ordering: ordering)
        } else {
            nodes = serverNodeOrder(for: request, protocol: protocolID, ordering: ordering)
        }
        guard !nodes.isEmpty else { throw PointSubError(.noServerNodes, "no server nodes for \(protocolID)") }

        var failures: [PointSubError.NodeFailure] = []
        var next = 0
        while next < nodes.count {
            guard !Task.isCancelled else { throw PointSubError(.cancelled, "the send was cancelled") }
            let share = try Self.roundShare(
                of: deadline, left: nodes.count - next, fanout: fanout, protocolID: protocolID, failures: failures)
            let batch = Array(nodes[next..<min(next + fanout, nodes.count)])
            next += batch.count
            switch await round(request, nodes: batch, protocolID: protocolID, source: nil, deadline: .after(share)) {
            case .answered(let response, let node):
                return (response, node)
            case .final(let error):
                throw error
            case .failed(let roundFailures):
                failures += roundFailures
            }
        }
        var error = PointSubError(.allNodesFailed, "all \(nodes.count) nodes of \(protocolID) failed")
        error.nodeFailures = failures
        throw error
    }

    /// `sendClosest` with plain bytes.
    public func sendClosest(
        _ request: [UInt8], key: [UInt8]? = nil, protocol protocolID: String, ordering: NodeOrdering = .xorDistance,
        fanout: Int = 1, deadline: Deadline? = nil
    ) async throws(PointSubError) -> (response: [UInt8], node: PeerID) {
        let (response, node) = try await sendClosest(
            ByteBuffer(bytes: request), key: key, protocol: protocolID, ordering: ordering, fanout: fanout,
            deadline: deadline)
        return (Array(response.readableBytesView), node)
    }

    /// `sendClosest` with the nodes from `source`: asks for a batch, tries it round by round,
    /// asks for the next batch (the tried nodes excluded) when it is used up.
    private func sendClosest(
        _ request: ByteBuffer, key: [UInt8], protocolID: String, source: any ClosestNodeSource, fanout: Int,
        deadline: Deadline
    ) async throws(PointSubError) -> (response: ByteBuffer, node: PeerID) {
        guard !isClosed else { throw PointSubError(.clientClosed, "the client is closed") }
        let limit = configuration.closestNodeLimit
        var tried = Set<PeerID>()
        var failures: [PointSubError.NodeFailure] = []
        var nodes: [PeerID] = []
        var next = 0
        while true {
            guard !Task.isCancelled else { throw PointSubError(.cancelled, "the send was cancelled") }
            if next == nodes.count {
                let wanted = limit - tried.count
                guard wanted > 0 else { break }
                do {
                    nodes = try await source.closestNodes(
                        to: key, protocol: protocolID, count: wanted, excluding: tried, deadline: deadline)
                } catch {
                    switch error.code {
                    case .cancelled, .clientClosed:
                        throw error
                    case .timeout:
                        var error = error
                        error.nodeFailures = failures
                        throw error
                    default:
                        guard !failures.isEmpty else { throw error }
                        var failed = PointSubError(
                            .allNodesFailed,
                            "all \(failures.count) nodes of \(protocolID) tried failed, and finding more failed",
                            cause: error)
                        failed.nodeFailures = failures
                        throw failed
                    }
                }
                // Whatever the source does, a node is tried once and never ourselves.
                let local = host.peerID
                var seen = Set<PeerID>()
                nodes = Array(nodes.filter { $0 != local && !tried.contains($0) && seen.insert($0).inserted }.prefix(wanted))
                next = 0
                guard !nodes.isEmpty else { break }
            }
            let share = try Self.roundShare(
                of: deadline, left: nodes.count - next, fanout: fanout, protocolID: protocolID, failures: failures)
            let batch = Array(nodes[next..<min(next + fanout, nodes.count)])
            next += batch.count
            tried.formUnion(batch)
            switch await round(request, nodes: batch, protocolID: protocolID, source: source, deadline: .after(share)) {
            case .answered(let response, let node):
                return (response, node)
            case .final(let error):
                throw error
            case .failed(let roundFailures):
                failures += roundFailures
            }
        }
        guard !failures.isEmpty else {
            throw PointSubError(.noServerNodes, "no node serving \(protocolID) found for the key")
        }
        var error = PointSubError(.allNodesFailed, "all \(failures.count) nodes of \(protocolID) tried failed")
        error.nodeFailures = failures
        throw error
    }

    // MARK: - Rounds

    private enum RoundOutcome {
        /// A node answered with a response.
        case answered(ByteBuffer, PeerID)
        /// The call ends with this error (a handler error, cancellation, the client closed).
        case final(PointSubError)
        /// Every node of the round failed.
        case failed([PointSubError.NodeFailure])
    }

    /// What one node's attempt means for the call.
    private enum Verdict {
        case answer(ByteBuffer)
        case final(PointSubError)
        case failover(PointSubError)
    }

    /// Sends to every node of `nodes` at once; the first answer wins. Failed nodes are reported
    /// to `source`, if any.
    private func round(
        _ request: ByteBuffer, nodes: [PeerID], protocolID: String, source: (any ClosestNodeSource)?,
        deadline: Deadline
    ) async -> RoundOutcome {
        if nodes.count == 1 {
            let node = nodes[0]
            let result = await attempt(request, node: node, protocolID: protocolID, deadline: deadline)
            switch judge(result, node: node, protocolID: protocolID, source: source) {
            case .answer(let response): return .answered(response, node)
            case .final(let error): return .final(error)
            case .failover(let error): return .failed([.init(node: node, error: error)])
            }
        }
        return await withTaskGroup(of: (PeerID, Result<ByteBuffer, PointSubError>).self) { group in
            for node in nodes {
                group.addTask { (node, await self.attempt(request, node: node, protocolID: protocolID, deadline: deadline)) }
            }
            var failures: [PointSubError.NodeFailure] = []
            for await (node, result) in group {
                switch judge(result, node: node, protocolID: protocolID, source: source) {
                case .answer(let response):
                    // The losers' sends return at once when cancelled (their streams are reset).
                    group.cancelAll()
                    return .answered(response, node)
                case .final(let error):
                    group.cancelAll()
                    return .final(error)
                case .failover(let error):
                    failures.append(.init(node: node, error: error))
                }
            }
            return .failed(failures)
        }
    }

    /// One node, one send without retries; records the time to a response.
    private func attempt(
        _ request: ByteBuffer, node: PeerID, protocolID: String, deadline: Deadline
    ) async -> Result<ByteBuffer, PointSubError> {
        do {
            let (response, roundTrip) = try await send(
                request, to: node, protocol: protocolID, deadline: deadline, maxRetries: 0)
            nodeList.recordRTT(peer: node, roundTrip)
            return .success(response)
        } catch {
            return .failure(error)
        }
    }

    /// Classifies an attempt's result and updates the node's health accordingly.
    private func judge(
        _ result: Result<ByteBuffer, PointSubError>, node: PeerID, protocolID: String, source: (any ClosestNodeSource)?
    ) -> Verdict {
        switch result {
        case .success(let response):
            nodeList.markSuccess(node, protocol: protocolID)
            return .answer(response)
        case .failure(let error):
            switch error.code {
            case .remote(.handler):
                // The node is fine: this is the application's answer.
                nodeList.markSuccess(node, protocol: protocolID)
                return .final(error)
            case .cancelled, .clientClosed, .invalidConfiguration:
                // Not the node's fault; within a fanout round only the caller's cancellation
                // reaches here (losers are cancelled after the round is decided).
                return .final(error)
            default:
                nodeList.markFailure(node, protocol: protocolID)
                source?.nodeFailed(node, protocol: protocolID)
                return .failover(error)
            }
        }
    }
}

extension PointSubError {
    /// Whether the failed request may have been processed by the node.
    fileprivate var requestMaybeProcessed: Bool {
        switch code {
        case .timeout(let sent), .connectionFailed(let sent): sent
        case .remote(let remote): !remote.isRetryable
        case .protocolViolation, .messageTooLarge: true
        default: false
        }
    }
}

extension PointSubClient {
    /// The time one round of `fanout` nodes gets when `left` nodes remain: an equal share of
    /// what is left before `deadline`. Throws the timeout (with the failures so far) when none is.
    static func roundShare(
        of deadline: Deadline, left: Int, fanout: Int, protocolID: String, failures: [PointSubError.NodeFailure]
    ) throws(PointSubError) -> Duration {
        let roundsLeft = (left + fanout - 1) / fanout
        let share = deadline.remaining / roundsLeft
        guard share > .zero else {
            var error = PointSubError(
                .timeout(requestSent: failures.contains { $0.error.requestMaybeProcessed }),
                "no answer from the nodes of \(protocolID) by the deadline; \(left) not tried")
            error.nodeFailures = failures
            throw error
        }
        return share
    }
}
