import Basics
import Identity
import LibP2P
import Logging
import Multiformats
import NIOConcurrencyHelpers
import NIOCore

/// AutoNAT v2 (`/libp2p/autonat/2/dial-request` and `/libp2p/autonat/2/dial-back`): reachability
/// per address, with a nonce that proves the dial-back happened.
///
/// As a client, the service asks connected servers to dial one of our addresses and deliver a
/// random nonce on a new connection; an address is public or private once
/// `Configuration.confirmations` answers agree (``AddressReachabilityTable``). It tests our
/// public listen addresses and every address peers observed us at, tells the host which ones
/// to advertise (an observed address proved reachable is advertised at once; one proved
/// unreachable is withheld) and reports the node's overall ``reachability``.
///
/// As a server it dials the first address it is willing to (``DialBackPolicy``), from a new
/// connection and not from its listen port (so no accidental hole punch), and when that
/// address is not on the IP it sees the client at, first makes the client send 30–100 kB (the
/// spec's amplification-attack prevention). Requests are rate-limited per peer and in total,
/// those that need data more strictly; at most `maxConcurrentRequests` are served at once; none
/// over relayed connections.
public final class AutoNATv2Service: HostService, ReachabilityReporting, Sendable {
    /// The settings.
    public struct Configuration: Sendable {
        /// Serve dial requests.
        public var serve = true
        /// Dial (as a server) and test (as a client) private-network and loopback addresses too:
        /// for test networks and LANs. On the internet only public addresses are, as the spec asks.
        public var allowPrivateAddresses = false
        /// How long the server's dial-back may take, connection and nonce (go-libp2p: 10 s).
        public var dialTimeout: Duration = .seconds(10)
        /// How long a whole request may take, on either side, dial-back included.
        public var requestTimeout: Duration = .seconds(60)
        /// Requests served per peer per minute (go-libp2p: 12).
        public var requestsPerPeerPerMinute = 12
        /// Requests served per minute in total (go-libp2p: 60).
        public var requestsPerMinute = 60
        /// Requests that need dial data (another IP than the client's) served per minute in
        /// total (go-libp2p: 12).
        public var dialDataRequestsPerMinute = 12
        /// Requests served at the same time; more are rejected.
        public var maxConcurrentRequests = 16
        /// How much data the server asks for before dialing another IP than the client's (the
        /// spec: 30 to 100 kB; a random amount in this range).
        public var dialDataBytes: ClosedRange<Int> = 30_000...100_000
        /// The most data the client agrees to send for one request.
        public var maxDialDataBytes = 100_000
        /// Test our addresses automatically (after `bootDelay`, then each round every
        /// `roundInterval`).
        public var probeAutomatically = true
        /// Wait before the first round (connections and identify come first).
        public var bootDelay: Duration = .seconds(15)
        /// Time between rounds.
        public var roundInterval: Duration = .seconds(10)
        /// How long an address whose status is unknown waits before it is tested again.
        public var retryInterval: Duration = .seconds(90)
        /// How long a known status holds before the address is tested again (go-libp2p: 1 h).
        public var recheckInterval: Duration = .seconds(3600)
        /// Addresses tested per round.
        public var addressesPerRound = 4
        /// Agreeing answers needed before an address is public or private.
        public var confirmations = 3
        /// Let the results decide what the host advertises (see the type's documentation).
        public var updateAdvertisedAddresses = true
        /// Called when an address's status changes (on the task that learned it).
        public var onAddressReachabilityChange: (@Sendable (Multiaddr, Reachability) -> Void)?
        /// Where the service logs.
        public var logger = Logger(label: "pointsub.autonat-v2", factory: { _ in SwiftLogNoOpLogHandler() })

        /// The defaults.
        public init() {}
    }

    /// Counts of what the service did.
    public struct Counters: Sendable, Hashable {
        /// Requests served, by the response status.
        public var served: [AutoNATv2Message.ResponseStatus: Int] = [:]
        /// Dial-backs made as a server, by their outcome.
        public var dialBacks: [AutoNATv2Message.DialStatus: Int] = [:]
        /// Requests for which the server asked for dial data.
        public var dialDataRequested = 0
        /// Requests dropped as a server: malformed, dial data not sent or not in time.
        public var badRequests = 0
        /// Answers received as a client, by response status.
        public var probes: [AutoNATv2Message.ResponseStatus: Int] = [:]
        /// Probes that failed before an answer, or whose answer could not be believed (a
        /// claimed dial-back whose nonce never came).
        public var probeFailures = 0
        /// Dial-backs received with a nonce we did not send (or sent twice).
        public var unknownNonces = 0
    }

    /// What one test of our addresses gave.
    public struct ProbeResult: Sendable, Hashable {
        /// The server's response.
        public var response: AutoNATv2Message.DialResponse
        /// The address the server dialed (when the response status is OK).
        public var address: Multiaddr?
        /// Whether the address is reachable: `true` when the dial-back delivered our nonce,
        /// `false` when the server could not connect, `nil` when the answer says nothing.
        public var reachable: Bool?
    }

    private struct Pending {
        /// The local address of the connection the nonce arrived on, once it did.
        var arrivedOn: Multiaddr??
    }

    private struct State {
        var host: P2PHost?
        var table: AddressReachabilityTable
        var limiter: RequestRateLimiter
        var dialDataLimiter: TokenBucket?
        var serving = 0
        var pending: [UInt64: Pending] = [:]
        var counters = Counters()
        var prober: Task<Void, Never>?
    }

    /// The settings.
    public let configuration: Configuration
    private let state: NIOLockedValueBox<State>
    private let subscribers = EventBroadcaster<Reachability>(bufferingNewest: 8)

    /// An AutoNAT v2 service with `configuration`; add it to the host's services.
    public init(configuration: Configuration = Configuration()) {
        precondition(configuration.dialDataBytes.lowerBound > 0, "dial data must be asked for")
        self.configuration = configuration
        self.state = NIOLockedValueBox(State(
            table: AddressReachabilityTable(confirmations: configuration.confirmations),
            limiter: RequestRateLimiter(
                perPeerPerMinute: configuration.requestsPerPeerPerMinute, totalPerMinute: configuration.requestsPerMinute)))
    }

    /// The node's reachability from its addresses' (``AddressReachabilityTable/overall``).
    public var reachability: Reachability { state.withLockedValue { $0.table.overall } }
    /// The addresses whose status is known.
    public var addressReachability: [Multiaddr: Reachability] { state.withLockedValue { $0.table.known } }
    /// The status of one of our addresses.
    public func reachability(of address: Multiaddr) -> Reachability {
        state.withLockedValue { $0.table.status(of: address.removingPeerID()) }
    }
    /// What the service did so far.
    public var counters: Counters { state.withLockedValue { $0.counters } }

    /// Each change of ``reachability`` from now on (the current status first).
    public func updates() -> AsyncStream<Reachability> {
        subscribers.subscribe(first: reachability)
    }

    /// Serves the protocols and starts the automatic rounds (when asked).
    public func attach(to host: P2PHost) async throws {
        state.withLockedValue { $0.host = host }
        // Neither protocol over a relayed connection: the requester's IP is unknown there, and a
        // dial-back must arrive on a connection of the tested address's own.
        if configuration.serve {
            try host.setStreamHandler(AutoNATv2Message.dialRequestProtocol, allowOnLimitedConnections: false) { [weak self] stream in
                await self?.serve(stream)
            }
        }
        try host.setStreamHandler(AutoNATv2Message.dialBackProtocol, allowOnLimitedConnections: false) { [weak self] stream in
            await self?.receiveDialBack(stream)
        }
        if configuration.updateAdvertisedAddresses {
            host.setAddressVerdict { [weak self] address in
                switch self?.reachability(of: address) {
                case .public: return true
                case .private: return false
                default: return nil
                }
            }
        }
        if configuration.probeAutomatically {
            let prober = periodicRounds(of: self, bootDelay: configuration.bootDelay) { [configuration] service in
                await service.probeRound()
                return configuration.roundInterval
            }
            state.withLockedValue { $0.prober = prober }
        }
    }

    /// Stops the automatic rounds and ends the update streams.
    public func stop() {
        let prober = state.withLockedValue { s in
            defer { s.prober = nil }
            return s.prober
        }
        prober?.cancel()
        subscribers.finish()
    }

    // MARK: - Client

    /// Our addresses worth testing: listen addresses, each observed IP with our TCP listen port
    /// (what a port-preserving or forwarding NAT gives our listener), and the observed addresses
    /// themselves; public ones unless private ones are allowed, without relayed ones, each once.
    public var candidateAddresses: [Multiaddr] {
        guard let host = state.withLockedValue({ $0.host }) else { return [] }
        var seen = Set<Multiaddr>()
        let all = host.listenAddresses + ListenPortMapping.predictedAddresses(host) + host.observedAddresses.all.map(\.address)
        return all.map { $0.removingPeerID() }.filter {
            DialBackPolicy.isDialable($0, allowPrivateAddresses: configuration.allowPrivateAddresses) && seen.insert($0).inserted
        }
    }

    /// One automatic round: the addresses due for a test (at most `addressesPerRound`), each
    /// asked of a random connected server (over a direct connection).
    public func probeRound() async {
        guard let host = state.withLockedValue({ $0.host }) else { return }
        let candidates = candidateAddresses
        let now = ContinuousClock.now
        let (due, forgotten) = state.withLockedValue { s in
            let forgotten = s.table.keep(only: Set(candidates))
            let due = s.table.due(
                candidates, now: now, retryInterval: configuration.retryInterval, recheckInterval: configuration.recheckInterval)
            return (due, forgotten)
        }
        if forgotten { statusChanged(host: host) }
        let servers = host.connectedPeers.filter { peer in
            host.peerstore.protocols(for: peer).contains(AutoNATv2Message.dialRequestProtocol)
                && host.connections(to: peer).contains { !$0.isLimited }
        }
        guard !servers.isEmpty else { return }
        for address in due.prefix(configuration.addressesPerRound) {
            guard let server = servers.randomElement() else { return }
            _ = try? await probe([address], using: server)
        }
    }

    /// Asks `server` to dial one of `addresses` (first = most wanted) and records what it
    /// finds. Returns the answer; throws `AutoNATError` for a malformed or unbelievable one (a
    /// dial-back claimed but never received), a dial data request we will not pay, and the
    /// host's errors otherwise.
    @discardableResult
    public func probe(_ addresses: [Multiaddr], using server: PeerID, deadline: Deadline? = nil) async throws -> ProbeResult {
        guard let host = state.withLockedValue({ $0.host }) else {
            throw HostError(.shutDown, "the AutoNAT v2 service is not attached to a started host")
        }
        let addresses = addresses.prefix(AutoNATv2Message.maxAddresses).map { $0.removingPeerID() }
        guard !addresses.isEmpty else { throw AutoNATError(.malformedMessage, "no address to test") }
        let nonce = state.withLockedValue { s -> UInt64 in
            var nonce = UInt64.random(in: .min ... .max)
            while s.pending[nonce] != nil { nonce = UInt64.random(in: .min ... .max) }
            s.pending[nonce] = Pending()
            return nonce
        }
        let now = ContinuousClock.now
        state.withLockedValue { s in addresses.forEach { s.table.markTested($0, now: now) } }
        defer { _ = state.withLockedValue { $0.pending.removeValue(forKey: nonce) } }
        let response: AutoNATv2Message.DialResponse
        do {
            response = try await withDeadline(
                deadline ?? .after(configuration.requestTimeout), on: host.eventLoopGroup.next(),
                onTimeout: { HostError(.timeout, "AutoNAT v2 server \(server) did not answer in time") }
            ) {
                let stream = try await host.newStream(to: server, protocols: [AutoNATv2Message.dialRequestProtocol])
                defer { Task { await stream.close() } }
                return try await self.request(addresses, nonce: nonce, on: stream)
            }
        } catch {
            state.withLockedValue { $0.counters.probeFailures += 1 }
            throw error
        }
        return try conclude(response, addresses: addresses, nonce: nonce, host: host)
    }

    private func request(_ addresses: [Multiaddr], nonce: UInt64, on stream: P2PStream) async throws -> AutoNATv2Message.DialResponse {
        try await stream.writeLengthPrefixed(
            AutoNATv2Message.dialRequest(.init(addresses: addresses, nonce: nonce)).encoded())
        var paid = false
        while true {
            switch try await Self.readMessage(from: stream) {
            case .dialResponse(let response):
                return response
            case .dialDataRequest(let request) where !paid:
                guard request.addressIndex < addresses.count, request.byteCount <= UInt64(configuration.maxDialDataBytes) else {
                    // The spec: a client that will not pay resets the stream; the request is aborted.
                    stream.reset()
                    throw AutoNATError(
                        .refused, "the server wants \(request.byteCount) bytes to dial address \(request.addressIndex)")
                }
                paid = true
                try await Self.sendDialData(Int(request.byteCount), on: stream)
            default:
                stream.reset()
                throw AutoNATError(.malformedMessage, "unexpected AutoNAT v2 message from the server")
            }
        }
    }

    /// Sends `count` bytes of dial data in chunks of the spec's 4096 (one message encoded once).
    private static func sendDialData(_ count: Int, on stream: P2PStream) async throws {
        let chunk = AutoNATv2Message.dialDataResponse(.init(count: AutoNATv2Message.maxDialDataChunk)).encoded()
        var frame = ByteBuffer()
        frame.writeVarint(UInt64(chunk.count))
        frame.writeBytes(chunk)
        var sent = 0
        while sent < count {
            try await stream.write(frame)
            sent += AutoNATv2Message.maxDialDataChunk
        }
    }

    private func conclude(
        _ response: AutoNATv2Message.DialResponse, addresses: [Multiaddr], nonce: UInt64, host: P2PHost
    ) throws -> ProbeResult {
        let arrivedOn = state.withLockedValue { s -> Multiaddr?? in
            s.counters.probes[response.status, default: 0] += 1
            return s.pending[nonce]?.arrivedOn ?? nil
        }
        guard response.status == .ok else { return ProbeResult(response: response) }
        guard response.addressIndex < addresses.count else {
            state.withLockedValue { $0.counters.probeFailures += 1 }
            throw AutoNATError(.malformedMessage, "the server dialed address \(response.addressIndex) of \(addresses.count)")
        }
        let address = addresses[response.addressIndex]
        let reachable: Bool?
        switch response.dialStatus {
        case .ok:
            // The spec: believe a dial-back only with our nonce, on a connection of the same
            // kind of transport as the address (its local address; the IP differs behind a NAT).
            guard let arrival = arrivedOn else {
                state.withLockedValue { $0.counters.probeFailures += 1 }
                throw AutoNATError(.malformedMessage, "the server claims a dial-back to \(address) that never came")
            }
            if let local = arrival, Self.shape(of: local) != Self.shape(of: address) {
                state.withLockedValue { $0.counters.probeFailures += 1 }
                throw AutoNATError(.malformedMessage, "the dial-back for \(address) came over \(local)")
            }
            reachable = true
        case .dialError: reachable = false
        case .dialBackError, .unused: reachable = nil  // connected but no nonce: proves nothing
        }
        if let reachable {
            let changed = state.withLockedValue { $0.table.record(address, reachable: reachable) }
            if changed {
                let status = self.reachability(of: address)
                configuration.logger.info("address reachability changed", metadata: ["address": "\(address)", "reachability": "\(status)"])
                configuration.onAddressReachabilityChange?(address, status)
                statusChanged(host: host)
            }
        }
        return ProbeResult(response: response, address: address, reachable: reachable)
    }

    /// The protocol names of `address` without its values: `/ip4/tcp`, `/ip6/tcp/ws`.
    static func shape(of address: Multiaddr) -> [String] {
        address.removingPeerID().components.map(\.name)
    }

    private func statusChanged(host: P2PHost) {
        subscribers.yield(reachability)
        if configuration.updateAdvertisedAddresses { host.addressesChanged() }
    }

    private func receiveDialBack(_ stream: P2PStream) async {
        do {
            let frame = try await withDeadline(
                .after(configuration.dialTimeout), on: stream.eventLoop,
                onTimeout: { AutoNATError(.limitExceeded, "no dial-back nonce in time") }
            ) {
                try await stream.readLengthPrefixed(maxLength: AutoNATv2Message.maxMessageSize)
            }
            guard let frame else { throw AutoNATError(.malformedMessage, "the dial-back ended without a nonce") }
            let nonce = try AutoNATv2DialBack.decodeNonce(frame.readableBytesView)
            let local = stream.connection.localAddress
            let known = state.withLockedValue { s -> Bool in
                guard s.pending[nonce] != nil, s.pending[nonce]?.arrivedOn == nil else {
                    s.counters.unknownNonces += 1
                    return false
                }
                s.pending[nonce]?.arrivedOn = .some(local)
                return true
            }
            guard known else { throw AutoNATError(.malformedMessage, "a dial-back with a nonce we did not send") }
            try await stream.writeLengthPrefixed(AutoNATv2DialBack.encodeResponse())
            await stream.close()
        } catch {
            configuration.logger.debug("dial-back refused", metadata: ["peer": "\(stream.remotePeer)", "error": "\(error)"])
            stream.reset()
        }
    }

    // MARK: - Server

    private func serve(_ stream: P2PStream) async {
        let peer = stream.remotePeer
        let admitted = state.withLockedValue { s -> Bool in
            guard s.serving < configuration.maxConcurrentRequests else { return false }
            s.serving += 1
            return true
        }
        guard admitted else {
            await respond(.init(status: .requestRejected), on: stream)
            return
        }
        defer { state.withLockedValue { $0.serving -= 1 } }
        do {
            try await withDeadline(
                .after(configuration.requestTimeout), on: stream.eventLoop,
                onTimeout: { AutoNATError(.limitExceeded, "the AutoNAT v2 request took too long") }
            ) {
                let response = try await self.handle(stream)
                await self.respond(response, on: stream)
            }
        } catch {
            state.withLockedValue { $0.counters.badRequests += 1 }
            configuration.logger.debug("AutoNAT v2 request dropped", metadata: ["peer": "\(peer)", "error": "\(error)"])
            stream.reset()
        }
    }

    private func respond(_ response: AutoNATv2Message.DialResponse, on stream: P2PStream) async {
        state.withLockedValue { s in
            s.counters.served[response.status, default: 0] += 1
            if response.status == .ok { s.counters.dialBacks[response.dialStatus, default: 0] += 1 }
        }
        try? await stream.writeLengthPrefixed(AutoNATv2Message.dialResponse(response).encoded())
        await stream.close()
    }

    private func handle(_ stream: P2PStream) async throws -> AutoNATv2Message.DialResponse {
        let peer = stream.remotePeer
        guard case .dialRequest(let request) = try await Self.readMessage(from: stream) else {
            throw AutoNATError(.malformedMessage, "expected a dial request")
        }
        guard state.withLockedValue({ $0.limiter.admit(peer) }) else { return .init(status: .requestRejected) }
        guard let host = state.withLockedValue({ $0.host }) else { return .init(status: .internalError) }
        let families = Set(host.listenAddresses.compactMap { $0.components.first.flatMap { $0.isIPAddress ? Self.family($0) : nil } })
        // The first address we are willing to dial, and only that one (the spec). We dial only
        // address families we listen on (an IPv4-only server refuses IPv6 addresses).
        guard let index = request.addresses.firstIndex(where: { address in
            guard let address else { return false }
            return DialBackPolicy.isDialable(address, allowPrivateAddresses: configuration.allowPrivateAddresses)
                && address.components.first.map { families.contains(Self.family($0)) } == true
        }), let address = request.addresses[index]?.removingPeerID() else {
            return .init(status: .dialRefused)
        }
        if !DialBackPolicy.sameIP(stream.connection.remoteAddress, address) {
            guard admitDialData() else { return .init(status: .requestRejected) }
            let wanted = Int.random(in: configuration.dialDataBytes)
            state.withLockedValue { $0.counters.dialDataRequested += 1 }
            try await stream.writeLengthPrefixed(
                AutoNATv2Message.dialDataRequest(.init(addressIndex: index, byteCount: UInt64(wanted))).encoded())
            try await Self.receiveDialData(wanted, on: stream)
        }
        let dialStatus = await dialBack(address, peer: peer, nonce: request.nonce, host: host, eventLoop: stream.eventLoop)
        return .init(status: .ok, addressIndex: index, dialStatus: dialStatus)
    }

    private func admitDialData() -> Bool {
        let rate = Double(configuration.dialDataRequestsPerMinute)
        let now = ContinuousClock.now
        return state.withLockedValue { s in
            var bucket = s.dialDataLimiter ?? TokenBucket(burst: rate, now: now)
            defer { s.dialDataLimiter = bucket }
            return bucket.take(rate: rate / 60, burst: rate, now: now)
        }
    }

    /// Reads `DialDataResponse`s until `wanted` bytes of data came; anything else, or a chunk
    /// over 4096 bytes, is a protocol violation. The data is counted, never kept.
    private static func receiveDialData(_ wanted: Int, on stream: P2PStream) async throws {
        var received = 0
        while received < wanted {
            guard case .dialDataResponse(let data) = try await readMessage(from: stream) else {
                throw AutoNATError(.malformedMessage, "expected dial data")
            }
            guard data.count <= AutoNATv2Message.maxDialDataChunk else {
                throw AutoNATError(.limitExceeded, "a dial data chunk of \(data.count) bytes")
            }
            received += data.count
            // An empty chunk would let a client hold the request open for free.
            guard data.count > 0 else { throw AutoNATError(.malformedMessage, "an empty dial data chunk") }
        }
    }

    /// Dials `address` on a new connection (not from our listen port), delivers the nonce on a
    /// dial-back stream and waits for the client's acknowledgement.
    private func dialBack(
        _ address: Multiaddr, peer: PeerID, nonce: UInt64, host: P2PHost, eventLoop: any EventLoop
    ) async -> AutoNATv2Message.DialStatus {
        let deadline = Deadline.after(configuration.dialTimeout)
        let connection: Connection
        do {
            connection = try await withDeadline(
                deadline, on: eventLoop, onTimeout: { HostError(.timeout, "dial-back timed out") },
                discard: { connection in Task { await connection.close() } }
            ) {
                try await host.dialNewConnection(to: address, expectedPeer: peer)
            }
        } catch {
            configuration.logger.debug("dial-back failed", metadata: ["address": "\(address)", "error": "\(error)"])
            return .dialError
        }
        defer { Task { await connection.close() } }
        do {
            try await withDeadline(deadline, on: eventLoop, onTimeout: { HostError(.timeout, "dial-back stream timed out") }) {
                let stream = try await connection.newStream(protocols: [AutoNATv2Message.dialBackProtocol])
                defer { Task { await stream.close() } }
                try await stream.writeLengthPrefixed(AutoNATv2DialBack.encode(nonce: nonce))
                guard let answer = try await stream.readLengthPrefixed(maxLength: AutoNATv2Message.maxMessageSize) else {
                    throw AutoNATError(.malformedMessage, "no dial-back response")
                }
                try AutoNATv2DialBack.decodeResponse(answer.readableBytesView)
            }
            return .ok
        } catch {
            configuration.logger.debug("dial-back nonce not delivered", metadata: ["address": "\(address)", "error": "\(error)"])
            return .dialBackError
        }
    }

    private static func readMessage(from stream: P2PStream) async throws -> AutoNATv2Message {
        guard let frame = try await stream.readLengthPrefixed(maxLength: AutoNATv2Message.maxMessageSize) else {
            throw AutoNATError(.malformedMessage, "the stream ended before an AutoNAT v2 message")
        }
        return try AutoNATv2Message(decoding: frame.readableBytesView)
    }

    private static func family(_ component: Multiaddr.Component) -> Int {
        if case .ip6 = component { return 6 }
        return 4
    }
}
