import Basics
import Identity
import LibP2P
import Logging
import Multiformats
import NIOConcurrencyHelpers
import NIOCore

/// Direct Connection Upgrade through Relay (`/libp2p/dcutr`): turns a relayed connection into a
/// direct one by a synchronised TCP simultaneous open through both NATs (hole punching).
///
/// The side that received the relayed connection starts: it opens a DCUtR stream over it, sends
/// `CONNECT` with its addresses and times the answer (`CONNECT` with the other side's), sends
/// `SYNC` and dials after half the round trip; the other side dials as soon as `SYNC` arrives.
/// Both dial from their TCP listen port (shared with the listener, SO_REUSEPORT), so each NAT
/// has a mapping for the other's packets when they arrive. The side that receives `SYNC` runs
/// security and muxer as the initiator (client), the starting side as the responder (server),
/// whichever socket connected first: the spec's roles, as rust-libp2p and py-libp2p have them
/// (go-libp2p's legacy default is the other way round: its issue 3171). Up to `maxAttempts` rounds on the same stream (the spec:
/// 3; a new stream when the peer ended the old one, as py does after each round). Once a direct
/// connection exists, streams prefer it (the relayed connection stays, unused, as a fallback
/// until it ends).
public final class DCUtRService: HostService, Sendable {
    /// The settings.
    public struct Configuration: Sendable {
        /// Rounds of CONNECT, SYNC and dials before giving up (the spec: 3).
        public var maxAttempts = 3
        /// How long one round's dials may take.
        public var dialTimeout: Duration = .seconds(5)
        /// How long reading a message may take.
        public var streamTimeout: Duration = .seconds(30)
        /// How long the side that received the relayed connection waits for identify over it
        /// (to see whether the peer has public addresses it can simply dial).
        public var identifyWait: Duration = .seconds(3)
        /// Offer and dial private-network and loopback addresses too (LAN and loopback tests);
        /// by default only addresses that can be on the internet.
        public var allowPrivateAddresses = false
        /// Dial a peer directly when identify lists dialable addresses for it, before any hole
        /// punch (the spec's unilateral upgrade).
        public var dialDirectlyFirst = true
        /// The least the starting side waits after `SYNC` before it dials (the spec: half the
        /// round trip). Through NATs the other side's early SYN is dropped and its dial still
        /// meets ours, so any wait within the dial timeout works; without a NAT (a LAN, loopback)
        /// an early dial of ours lands on the other's listener, where both ends would be the
        /// server of the handshake. A floor of a few tens of milliseconds lets a slow peer's dial
        /// arrive first there.
        public var minimumDialDelay: Duration = .zero
        /// Called with each finished attempt's outcome.
        public var onOutcome: (@Sendable (HolePunchOutcome) -> Void)?
        /// Where the service logs.
        public var logger = Logger(label: "pointsub.dcutr", factory: { _ in SwiftLogNoOpLogHandler() })

        /// The defaults.
        public init() {}
    }

    /// Counts of hole punches.
    public struct Counters: Sendable, Hashable {
        /// Upgrades started (by either side): hole punches, and direct dials to public peers.
        public var attempts = 0
        /// Hole punches that ended with a direct connection.
        public var successes = 0
        /// Upgrades that needed no hole punch: the peer's public address answered a plain dial.
        public var directDials = 0
        /// Failures by reason (`noAddresses`, `dialsFailed`, `protocol`, …).
        public var failures: [String: Int] = [:]
    }

    private struct State {
        var host: P2PHost?
        var counters = Counters()
        var follower: Task<Void, Never>?
        var inProgress: Set<PeerID> = []
        var outcomes: [PeerID: HolePunchOutcome] = [:]
    }

    /// The settings.
    public let configuration: Configuration
    private let state: NIOLockedValueBox<State>

    /// A DCUtR service; add it to the host's services (on both sides).
    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        self.state = NIOLockedValueBox(State())
    }

    /// What the service did so far.
    public var counters: Counters { state.withLockedValue { $0.counters } }

    /// The last hole punch with `peer` (either side's), if one finished.
    public func lastOutcome(for peer: PeerID) -> HolePunchOutcome? {
        state.withLockedValue { $0.outcomes[peer] }
    }

    /// Serves DCUtR (also over relayed connections: that is where it runs) and starts hole
    /// punching on each inbound relayed connection.
    public func attach(to host: P2PHost) async throws {
        state.withLockedValue { $0.host = host }
        try host.setStreamHandler(HolePunchMessage.protocolID) { [weak self] stream in
            try await self?.respond(on: stream)
        }
        let events = host.events()
        let follower = Task { [weak self] in
            for await event in events {
                guard case .connectionOpened(let connection) = event, connection.isLimited,
                      connection.direction == .inbound, let self
                else { continue }
                host.spawn { [weak self] in await self?.initiate(on: connection) }
            }
        }
        state.withLockedValue { $0.follower = follower }
    }

    /// Stops starting hole punches.
    public func stop() {
        state.withLockedValue { $0.follower?.cancel() }
    }

    // MARK: - The side that received the relayed connection

    /// Hole-punches `connection`'s peer (a relayed connection): the starting side's protocol.
    /// Returns the outcome (also given to `onOutcome`).
    @discardableResult
    public func initiate(on connection: Connection) async -> HolePunchOutcome {
        let peer = connection.remotePeer
        let started = ContinuousClock.now
        guard let host = state.withLockedValue({ s -> P2PHost? in
            guard s.inProgress.insert(peer).inserted else { return nil }
            s.counters.attempts += 1
            return s.host
        }) else { return finish(.init(peer: peer, result: .failure("already in progress"), attempts: 0, elapsed: .zero)) }
        defer { _ = state.withLockedValue { $0.inProgress.remove(peer) } }
        // The spec's unilateral upgrade: when identify (over the relayed connection) says the
        // peer has public addresses, dial them first; no hole punch is needed for a peer that
        // is not behind a NAT.
        let advertised = configuration.dialDirectlyFirst ? await identifiedAddresses(of: peer, host: host) : []
        if !advertised.isEmpty, (try? await dialDirectly(peer, at: advertised, host: host)) != nil {
            return finish(.init(peer: peer, result: .dialedDirectly, attempts: 0, elapsed: .now - started))
        }
        var attempts = 0
        var streams: [P2PStream] = []
        defer { for stream in streams { Task { await stream.close() } } }
        do {
            streams.append(try await connection.newStream(protocols: [HolePunchMessage.protocolID]))
            var lastError: (any Error)?
            while attempts < configuration.maxAttempts {
                attempts += 1
                var round = try await connectRound(on: streams[streams.count - 1], host: host)
                if round == nil, attempts > 1 {
                    // The spec retries on the same stream; py-libp2p 0.8.1 answers one round per
                    // stream and then closes it, so a retry it ended goes on a new stream.
                    streams.append(try await connection.newStream(protocols: [HolePunchMessage.protocolID]))
                    round = try await connectRound(on: streams[streams.count - 1], host: host)
                }
                guard let (answer, rtt) = round else { throw HolePunchError(.malformedMessage, "the DCUtR stream ended") }
                try await write(HolePunchMessage(type: .sync), on: streams[streams.count - 1])
                try await Task.sleep(for: max(rtt / 2, configuration.minimumDialDelay))
                do {
                    // The side that starts is the server of the direct connection (the spec, as
                    // rust-libp2p and py-libp2p read it; go-libp2p's legacy default is the reverse).
                    try await dial(peer, at: answer.addresses, host: host, asResponder: true)
                    return finish(.init(peer: peer, result: .direct(rtt: rtt), attempts: attempts, elapsed: .now - started))
                } catch {
                    lastError = error
                    configuration.logger.debug("hole punch attempt failed", metadata: ["peer": "\(peer)", "attempt": "\(attempts)", "error": "\(error)"])
                }
            }
            return finish(.init(peer: peer, result: .failure(reason(lastError)), attempts: attempts, elapsed: .now - started))
        } catch {
            return finish(.init(peer: peer, result: .failure(reason(error)), attempts: attempts, elapsed: .now - started))
        }
    }

    /// One CONNECT exchange: ours out, theirs back, timed. Nil when the stream ended (or could
    /// not be written) before the answer.
    private func connectRound(on stream: P2PStream, host: P2PHost) async throws -> (HolePunchMessage, Duration)? {
        let sent = ContinuousClock.now
        do {
            try await write(HolePunchMessage(type: .connect, addresses: ownAddresses(host)), on: stream)
        } catch {
            return nil
        }
        guard let answer = try await readOrEnd(from: stream) else { return nil }
        guard answer.type == .connect else {
            throw HolePunchError(.malformedMessage, "expected CONNECT, got \(answer.type)")
        }
        return (answer, ContinuousClock.now - sent)
    }

    // MARK: - The side that dialed through the relay

    private func respond(on stream: P2PStream) async throws {
        let peer = stream.remotePeer
        guard let host = state.withLockedValue({ $0.host }) else { return }
        let started = ContinuousClock.now
        state.withLockedValue { $0.counters.attempts += 1 }
        var attempts = 0
        var lastError: (any Error)?
        while attempts < configuration.maxAttempts {
            let connect: HolePunchMessage
            do {
                guard let message = try await readOrEnd(from: stream) else { break }
                connect = message
            } catch {
                lastError = error
                break
            }
            guard connect.type == .connect else {
                lastError = HolePunchError(.malformedMessage, "expected CONNECT, got \(connect.type)")
                break
            }
            attempts += 1
            let sync: HolePunchMessage
            do {
                try await write(HolePunchMessage(type: .connect, addresses: ownAddresses(host)), on: stream)
                sync = try await read(from: stream)
            } catch {
                lastError = error
                break
            }
            guard sync.type == .sync else {
                lastError = HolePunchError(.malformedMessage, "expected SYNC, got \(sync.type)")
                break
            }
            do {
                // At once: the other side waits half a round trip, so both SYNs cross. The side
                // that receives SYNC is the client of the direct connection, also when the other
                // side's dial reaches our listener rather than our dialing socket (no NAT here).
                try await host.withInboundAsInitiator(from: connect.addresses, peer: peer) {
                    try await dial(peer, at: connect.addresses, host: host, asResponder: false)
                }
                finish(.init(peer: peer, result: .direct(rtt: nil), attempts: attempts, elapsed: .now - started))
                return
            } catch {
                lastError = error
            }
        }
        if attempts > 0 || lastError != nil {
            finish(.init(peer: peer, result: .failure(reason(lastError)), attempts: attempts, elapsed: .now - started))
        }
    }

    // MARK: - Parts

    @discardableResult
    private func finish(_ outcome: HolePunchOutcome) -> HolePunchOutcome {
        state.withLockedValue { s in
            // Bounded: a busy relay peer meets many peers.
            if s.outcomes.count >= 1024 { s.outcomes.removeAll(keepingCapacity: true) }
            s.outcomes[outcome.peer] = outcome
            switch outcome.result {
            case .direct: s.counters.successes += 1
            case .dialedDirectly: s.counters.directDials += 1
            case .failure(let reason): s.counters.failures[reason, default: 0] += 1
            }
        }
        configuration.logger.info("hole punch", metadata: ["peer": "\(outcome.peer)", "outcome": "\(outcome)"])
        configuration.onOutcome?(outcome)
        return outcome
    }

    private func reason(_ error: (any Error)?) -> String {
        if let error = error as? HolePunchError { return error.code.rawValue }
        if let error = error as? HostError, error.code == .messageTooLarge { return HolePunchError.Code.limitExceeded.rawValue }
        if error is HostError { return "protocol" }
        return error == nil ? "stream ended" : "protocol"
    }

    private func write(_ message: HolePunchMessage, on stream: P2PStream) async throws {
        try await stream.writeLengthPrefixed(message.encoded())
    }

    private func read(from stream: P2PStream) async throws -> HolePunchMessage {
        guard let message = try await readOrEnd(from: stream) else {
            throw HolePunchError(.malformedMessage, "the DCUtR stream ended")
        }
        return message
    }

    private func readOrEnd(from stream: P2PStream) async throws -> HolePunchMessage? {
        let frame = try await withDeadline(
            .after(configuration.streamTimeout), on: stream.eventLoop,
            onTimeout: { HolePunchError(.malformedMessage, "no DCUtR message in time") }
        ) {
            try await stream.readLengthPrefixed(maxLength: HolePunchMessage.maxMessageSize)
        }
        return try frame.map { try HolePunchMessage(decoding: $0.readableBytesView) }
    }

    /// The peer's dialable addresses as identify gave them, waiting at most `identifyWait` for
    /// identify to finish when it has not yet.
    private func identifiedAddresses(of peer: PeerID, host: P2PHost) async -> [Multiaddr] {
        let events = host.events()
        if host.peerstore.protocols(for: peer).isEmpty {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await event in events {
                        if case .peerIdentified(let identified) = event, identified == peer { return }
                    }
                }
                group.addTask { [configuration] in try? await Task.sleep(for: configuration.identifyWait) }
                await group.next()
                group.cancelAll()
            }
        }
        return host.peerstore.addresses(for: peer).filter(isDialable)
    }

    /// Dials `peer` on `addresses` at once from ordinary ports (a plain dial, no simultaneous
    /// open); returns when one connected.
    private func dialDirectly(_ peer: PeerID, at addresses: [Multiaddr], host: P2PHost) async throws {
        let deadline = Deadline.after(configuration.dialTimeout)
        let connected = await withTaskGroup(of: Bool.self) { group in
            for address in addresses.prefix(4) {
                group.addTask {
                    let connection = try? await withDeadline(
                        deadline, on: host.eventLoopGroup.next(),
                        onTimeout: { HolePunchError(.dialsFailed, "direct dial timed out") },
                        discard: { connection in Task { await connection.close() } }
                    ) {
                        try await host.dialNewConnection(to: address, expectedPeer: peer)
                    }
                    return connection != nil
                }
            }
            for await success in group where success {
                group.cancelAll()
                return true
            }
            return false
        }
        guard connected else { throw HolePunchError(.dialsFailed, "no direct dial to \(peer) worked") }
    }

    /// Dials `peer` on its TCP addresses at once from our TCP listen port; returns when one
    /// direct connection exists (ours, or one its dial made through our listener).
    private func dial(_ peer: PeerID, at addresses: [Multiaddr], host: P2PHost, asResponder: Bool) async throws {
        let targets = addresses.filter(isDialable).prefix(8)
        guard !targets.isEmpty else { throw HolePunchError(.noAddresses, "the peer gave no dialable address") }
        let port = ListenPortMapping.tcpListenPort(host)
        let deadline = Deadline.after(configuration.dialTimeout)
        let connected = await withTaskGroup(of: Bool.self) { group in
            for address in targets {
                group.addTask {
                    let attempt = try? await withDeadline(
                        deadline, on: host.eventLoopGroup.next(),
                        onTimeout: { HolePunchError(.dialsFailed, "hole punch dial timed out") },
                        discard: { connection in Task { await connection.close() } }
                    ) {
                        try await host.dialNewConnection(to: address, expectedPeer: peer, localPort: port, asResponder: asResponder)
                    }
                    return attempt != nil
                }
            }
            // A SYN that crossed ours may have come in through our listener instead.
            group.addTask {
                while !deadline.hasPassed {
                    if host.connections(to: peer).contains(where: { !$0.isLimited }) { return true }
                    try? await Task.sleep(for: .milliseconds(20))
                }
                return false
            }
            var any = false
            for await success in group where success {
                any = true
                group.cancelAll()
            }
            return any
        }
        guard connected || host.connections(to: peer).contains(where: { !$0.isLimited }) else {
            throw HolePunchError(.dialsFailed, "no direct connection to \(peer)")
        }
    }

    private func isDialable(_ address: Multiaddr) -> Bool {
        let plain = address.removingPeerID()
        guard !plain.isCircuit, plain.components.count == 2, case .tcp = plain.components[1] else { return false }
        let locality = DialRanker.locality(of: plain)
        return locality == .publicNetwork
            || (configuration.allowPrivateAddresses && (locality == .privateNetwork || locality == .loopback))
    }

    /// What we tell the other side: for each IP peers observed us at our TCP listen port (the
    /// mapping a port-preserving NAT gives the dial from that port), then the observed and
    /// listen addresses themselves; dialable ones only, each once.
    func ownAddresses(_ host: P2PHost) -> [Multiaddr] {
        var seen = Set<Multiaddr>()
        let candidates = ListenPortMapping.predictedAddresses(host) + host.observedAddresses.all.map(\.address) + host.listenAddresses
        return Array(candidates.filter { isDialable($0) && seen.insert($0).inserted }.prefix(HolePunchMessage.maxAddresses))
    }
}

/// How a hole punch ended.
public struct HolePunchOutcome: Sendable, CustomStringConvertible {
    /// Direct, or why not.
    public enum Result: Sendable {
        /// A direct connection exists; `rtt` is the relayed round trip the starting side measured.
        case direct(rtt: Duration?)
        /// The peer has a public address and the starting side dialed it: no hole punch needed
        /// (the spec's unilateral connection upgrade).
        case dialedDirectly
        /// No direct connection (`noAddresses`, `dialsFailed`, `protocol`, …).
        case failure(String)
    }

    /// The peer.
    public var peer: PeerID
    /// The result.
    public var result: Result
    /// Rounds made.
    public var attempts: Int
    /// From the start to the end.
    public var elapsed: Duration

    /// Whether a direct connection came of it.
    public var isDirect: Bool {
        switch result {
        case .direct, .dialedDirectly: return true
        case .failure: return false
        }
    }

    /// E.g. `direct after 123 ms (1 attempt)`, `direct after 4 ms (dialed its public address)` or
    /// `failed: dialsFailed (3 attempts)`.
    public var description: String {
        let rounds = "\(attempts) attempt\(attempts == 1 ? "" : "s")"
        switch result {
        case .direct: return String(format: "direct after %.0f ms (%@)", elapsed.seconds * 1000, rounds)
        case .dialedDirectly: return String(format: "direct after %.0f ms (dialed its public address)", elapsed.seconds * 1000)
        case .failure(let reason): return "failed: \(reason) (\(rounds))"
        }
    }
}
