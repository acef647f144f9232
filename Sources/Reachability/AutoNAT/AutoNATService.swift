import Basics
import Identity
import LibP2P
import Logging
import Multiformats
import NIOConcurrencyHelpers
import NIOCore

/// AutoNAT v1 (`/libp2p/autonat/1.0.0`): as a server, dials peers back on the addresses they ask
/// for, to tell them whether they are reachable; as a client, asks connected servers to dial us
/// back and keeps a ``Reachability`` status from their answers (``ReachabilityTracker``).
///
/// The server dials only addresses on the IP address it observes the requester at (the spec's
/// defence against making us attack a third party), never over a relayed connection, on a new
/// connection (reusing one would prove nothing), within per-peer and global rate limits, and
/// answers with the first address that worked.
public final class AutoNATService: HostService, ReachabilityReporting, Sendable {
    /// The settings.
    public struct Configuration: Sendable {
        /// Serve dial-back requests (a node behind a NAT should not: its dials prove nothing).
        public var serve = true
        /// Dial back private-network and loopback addresses too (for test networks and LANs; on
        /// the internet only public addresses are dialed, as go-libp2p does).
        public var allowPrivateAddresses = false
        /// How long one dial-back, over all the addresses, may take (go-libp2p: 15 s).
        public var dialTimeout: Duration = .seconds(15)
        /// How long reading a request or an answer may take.
        public var streamTimeout: Duration = .seconds(60)
        /// Dial-back requests served per peer per minute (go-libp2p: 3).
        public var requestsPerPeerPerMinute = 3
        /// Dial-back requests served per minute in total (go-libp2p: 30).
        public var requestsPerMinute = 30
        /// Ask servers automatically (after `bootDelay`, then every `probeInterval`, or every
        /// `retryInterval` while the status is unknown).
        public var probeAutomatically = true
        /// Wait before the first automatic probe (connections and identify come first).
        public var bootDelay: Duration = .seconds(15)
        /// Time between probes while the status is unknown (go-libp2p: 90 s).
        public var retryInterval: Duration = .seconds(90)
        /// Time between probes once the status is known (go-libp2p: 15 min).
        public var probeInterval: Duration = .seconds(900)
        /// Servers asked per probe round.
        public var serversPerRound = 3
        /// Called with the new status each time ``reachability`` changes (on a task of the
        /// service's; also see `updates()`).
        public var onReachabilityChange: (@Sendable (Reachability) -> Void)?
        /// Where the service logs.
        public var logger = Logger(label: "pointsub.autonat", factory: { _ in SwiftLogNoOpLogHandler() })

        /// The defaults.
        public init() {}
    }

    /// Counts of what the service did.
    public struct Counters: Sendable, Hashable {
        /// Requests served, by the status answered.
        public var served: [AutoNATMessage.Status: Int] = [:]
        /// Probes made, by the status received.
        public var probes: [AutoNATMessage.Status: Int] = [:]
        /// Probes that failed before an answer (no stream, timeout, malformed answer).
        public var probeFailures = 0
    }

    private struct State {
        var host: P2PHost?
        var tracker = ReachabilityTracker()
        var limiter: RequestRateLimiter
        var counters = Counters()
        var prober: Task<Void, Never>?
    }

    /// The settings.
    public let configuration: Configuration
    private let state: NIOLockedValueBox<State>
    private let subscribers = EventBroadcaster<Reachability>(bufferingNewest: 8)

    /// An AutoNAT service with `configuration`; add it to the host's services.
    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        self.state = NIOLockedValueBox(State(limiter: RequestRateLimiter(
            perPeerPerMinute: configuration.requestsPerPeerPerMinute, totalPerMinute: configuration.requestsPerMinute)))
    }

    /// What the service has learned about our reachability.
    public var reachability: Reachability { state.withLockedValue { $0.tracker.status } }
    /// The tracker, with its confidence.
    public var tracker: ReachabilityTracker { state.withLockedValue { $0.tracker } }
    /// What the service did so far.
    public var counters: Counters { state.withLockedValue { $0.counters } }

    /// Each change of ``reachability`` from now on (the current status first).
    public func updates() -> AsyncStream<Reachability> {
        subscribers.subscribe(first: reachability)
    }

    /// Serves the protocol (when `serve`) and starts the automatic probes (when asked).
    public func attach(to host: P2PHost) async throws {
        state.withLockedValue { $0.host = host }
        if configuration.serve {
            try host.setStreamHandler(AutoNATMessage.protocolID) { [weak self] stream in
                await self?.serve(stream)
            }
        }
        if configuration.probeAutomatically {
            let prober = periodicRounds(of: self, bootDelay: configuration.bootDelay) { [configuration] service in
                await service.probeRound()
                return service.reachability == .unknown ? configuration.retryInterval : configuration.probeInterval
            }
            state.withLockedValue { $0.prober = prober }
        }
    }

    /// Stops the automatic probes and ends the update streams.
    public func stop() {
        let prober = state.withLockedValue { s in
            defer { s.prober = nil }
            return s.prober
        }
        prober?.cancel()
        subscribers.finish()
    }

    // MARK: - Client

    /// Asks `server` (connected, or reachable through the peerstore) to dial us back on our
    /// listen and observed addresses, and records its answer in ``reachability``. Returns the
    /// answer; throws `AutoNATError` for a malformed one, the host's errors otherwise.
    @discardableResult
    public func probe(using server: PeerID, deadline: Deadline? = nil) async throws -> AutoNATMessage.DialResponse {
        guard let host = state.withLockedValue({ $0.host }) else {
            throw HostError(.shutDown, "the AutoNAT service is not attached to a started host")
        }
        let addresses = Self.addressesToProbe(host)
        let request = AutoNATMessage(type: .dial, dial: .init(peerID: host.peerID.bytes, addresses: addresses))
        let response: AutoNATMessage.DialResponse
        do {
            response = try await withDeadline(
                deadline ?? .after(configuration.streamTimeout), on: host.eventLoopGroup.next(),
                onTimeout: { HostError(.timeout, "AutoNAT server \(server) did not answer in time") }
            ) {
                let stream = try await host.newStream(to: server, protocols: [AutoNATMessage.protocolID])
                defer { Task { await stream.close() } }
                try await stream.writeLengthPrefixed(request.encoded())
                guard let frame = try await stream.readLengthPrefixed(maxLength: AutoNATMessage.maxMessageSize) else {
                    throw AutoNATError(.malformedMessage, "the server closed the stream without an answer")
                }
                let answer = try AutoNATMessage(decoding: frame.readableBytesView)
                guard answer.type == .dialResponse, let response = answer.dialResponse else {
                    throw AutoNATError(.malformedMessage, "the server answered without a dial response")
                }
                return response
            }
        } catch {
            state.withLockedValue { $0.counters.probeFailures += 1 }
            throw error
        }
        record(response, from: server)
        return response
    }

    /// One automatic round: up to `serversPerRound` connected peers that serve AutoNAT, over
    /// direct connections, each asked once.
    public func probeRound() async {
        guard let host = state.withLockedValue({ $0.host }) else { return }
        let servers = host.connectedPeers.filter { peer in
            host.peerstore.protocols(for: peer).contains(AutoNATMessage.protocolID)
                && host.connections(to: peer).contains { !$0.isLimited }
        }.shuffled().prefix(configuration.serversPerRound)
        for server in servers {
            _ = try? await probe(using: server)
        }
    }

    private func record(_ response: AutoNATMessage.DialResponse, from server: PeerID) {
        let (changed, status) = state.withLockedValue { s -> (Bool, Reachability) in
            s.counters.probes[response.status, default: 0] += 1
            var changed = false
            switch response.status {
            case .ok: changed = s.tracker.record(dialedBack: true)
            case .dialError: changed = s.tracker.record(dialedBack: false)
            default: break  // a refusal says nothing about our reachability
            }
            return (changed, s.tracker.status)
        }
        configuration.logger.debug(
            "AutoNAT answer", metadata: ["server": "\(server)", "status": "\(response.status)", "reachability": "\(status)"])
        if changed {
            configuration.logger.info("reachability changed", metadata: ["reachability": "\(status)"])
            subscribers.yield(status)
            configuration.onReachabilityChange?(status)
        }
    }

    /// Our listen addresses and the addresses peers observed us at, without relayed ones.
    static func addressesToProbe(_ host: P2PHost) -> [Multiaddr] {
        var seen = Set<Multiaddr>()
        let all = host.listenAddresses + host.observedAddresses.all.map(\.address)
        return all.filter { !$0.isCircuit && seen.insert($0).inserted }.prefix(AutoNATMessage.maxAddresses).map { $0 }
    }

    // MARK: - Server

    private func serve(_ stream: P2PStream) async {
        let peer = stream.remotePeer
        let response = await dialBack(for: stream)
        state.withLockedValue { $0.counters.served[response.status, default: 0] += 1 }
        configuration.logger.debug(
            "AutoNAT request", metadata: ["peer": "\(peer)", "status": "\(response.status)", "text": "\(response.statusText ?? "")"])
        try? await stream.writeLengthPrefixed(AutoNATMessage(type: .dialResponse, dialResponse: response).encoded())
    }

    private func dialBack(for stream: P2PStream) async -> AutoNATMessage.DialResponse {
        let peer = stream.remotePeer
        // The spec: a relayed requester's IP cannot be known, so it is not dialed at all.
        guard !stream.connection.isLimited else {
            return .init(status: .dialRefused, statusText: "no dial-back over a relayed connection")
        }
        let request: AutoNATMessage
        do {
            let frame = try await withDeadline(
                .after(configuration.streamTimeout), on: stream.eventLoop,
                onTimeout: { AutoNATError(.limitExceeded, "no AutoNAT request in time") }
            ) {
                try await stream.readLengthPrefixed(maxLength: AutoNATMessage.maxMessageSize)
            }
            guard let frame else { return .init(status: .badRequest, statusText: "no request") }
            request = try AutoNATMessage(decoding: frame.readableBytesView)
        } catch {
            return .init(status: .badRequest, statusText: "malformed request")
        }
        guard request.type == .dial, let dial = request.dial else {
            return .init(status: .badRequest, statusText: "expected a DIAL")
        }
        guard dial.peerID == nil || dial.peerID! == peer.bytes else {
            return .init(status: .badRequest, statusText: "the peer ID is not the requester's")
        }
        guard admit(peer) else {
            return .init(status: .dialRefused, statusText: "too many dial-back requests")
        }
        let observed = stream.connection.remoteAddress
        let candidates = dialableAddresses(dial.addresses + [observed], observedAt: observed)
        guard !candidates.isEmpty else {
            return .init(status: .dialRefused, statusText: "no dialable addresses")
        }
        guard let host = state.withLockedValue({ $0.host }) else {
            return .init(status: .internalError, statusText: "shutting down")
        }
        let deadline = Deadline.after(configuration.dialTimeout)
        for address in candidates where !deadline.hasPassed {
            do {
                let connection = try await withDeadline(
                    deadline, on: stream.eventLoop,
                    onTimeout: { HostError(.timeout, "dial-back timed out") },
                    discard: { connection in Task { await connection.close() } }
                ) {
                    try await host.dialNewConnection(to: address, expectedPeer: peer)
                }
                await connection.close()
                return .init(status: .ok, address: address)
            } catch {
                configuration.logger.debug("dial-back failed", metadata: ["address": "\(address)", "error": "\(error)"])
            }
        }
        return .init(status: .dialError, statusText: "dial failed")
    }

    private func admit(_ peer: PeerID) -> Bool {
        state.withLockedValue { $0.limiter.admit(peer) }
    }

    /// The addresses to dial back: on the observed IP only (never a third party's), TCP-like
    /// addresses with an IP (no DNS names, no relays), public ones unless private ones are
    /// allowed; each once, at most `maxAddresses`.
    func dialableAddresses(_ addresses: [Multiaddr], observedAt observed: Multiaddr) -> [Multiaddr] {
        var seen = Set<Multiaddr>()
        return addresses.map { $0.removingPeerID() }.filter { address in
            DialBackPolicy.sameIP(observed, address)
                && DialBackPolicy.isDialable(address, allowPrivateAddresses: configuration.allowPrivateAddresses)
                && seen.insert(address).inserted
        }.prefix(AutoNATMessage.maxAddresses).map { $0 }
    }
}
