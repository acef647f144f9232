import Basics
import Foundation
import Identity
import LibP2P
import Logging
import Multiformats
import NIOConcurrencyHelpers
import NIOCore

/// The relay: serves the hop protocol of Circuit Relay v2 (`/libp2p/circuit/relay/0.2.0/hop`).
/// Peers reserve a slot (and get a signed voucher and the relay's addresses); others then reach
/// them through `…/p2p/<relay>/p2p-circuit/p2p/<peer>`: the relay opens a stop stream to the
/// target over the target's own connection and joins the two streams within the circuit limits.
///
/// Everything a peer can make the relay hold is bounded: reservations (in total and per source
/// address, and each charges memory to the resource manager's `relay` service scope), circuits
/// (per peer and in total, each charging its buffers to that scope as well), hop requests per
/// peer per second, the time a request may take, and the duration and bytes of each circuit.
/// Hop requests over relayed connections are refused (a relay does not relay relayed peers).
public final class RelayService: HostService, Sendable {
    /// The relay's settings.
    public struct Configuration: Sendable {
        /// How long a reservation lasts (the client refreshes it before; go-libp2p: 1 hour).
        public var reservationTTL: Duration = .seconds(3600)
        /// Limits on reservations and circuits.
        public var limits = ReservationTable.Limits()
        /// The limits of each relayed connection, sent to both ends; nil relays without limits.
        /// go-libp2p's defaults: 2 minutes and 128 KiB per direction, enough for hole punching.
        public var circuitLimit: RelayLimit? = RelayLimit(duration: 120, data: 1 << 17)
        /// How long reading a request, and the target's answer to a stop CONNECT, may take.
        public var requestTimeout: Duration = .seconds(30)
        /// Hop requests (reservations and connects) a peer may make per second; more are refused.
        public var requestsPerPeerPerSecond: Double = 4
        /// Memory charged to the `relay` service scope per reservation.
        public var memoryPerReservation = 1024
        /// Memory charged to the `relay` service scope per circuit (the buffers of its two streams).
        public var memoryPerCircuit = 2 * 2048
        /// The relay addresses given with a reservation (ending in `/p2p/<relay>`); nil gives the
        /// host's addresses. A public relay would give only its public addresses here.
        public var announcedAddresses: (@Sendable () -> [Multiaddr])?
        /// Where the relay logs.
        public var logger = Logger(label: "pointsub.relay", factory: { _ in SwiftLogNoOpLogHandler() })

        /// The defaults.
        public init() {}
    }

    /// Counts of what the relay did, since it started.
    public struct Counters: Sendable, Hashable {
        /// Reservations made or renewed.
        public var reservationsAccepted = 0
        /// Reservations refused (limits, relayed connection, rate).
        public var reservationsRefused = 0
        /// Circuits opened.
        public var circuitsOpened = 0
        /// Connect requests refused or failed, by the status answered.
        public var circuitsRefused: [RelayStatus: Int] = [:]
        /// Circuits ended, by how.
        public var circuitsEnded: [String: Int] = [:]
        /// Requests that were malformed or of an unexpected type.
        public var badRequests = 0
    }

    private struct State {
        var host: P2PHost?
        var table: ReservationTable
        var rates: [PeerID: TokenBucket] = [:]
        var counters = Counters()
        var follower: Task<Void, Never>?
    }

    /// The settings.
    public let configuration: Configuration
    private let state: NIOLockedValueBox<State>

    /// A relay with `configuration`; add it to the host's services.
    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        self.state = NIOLockedValueBox(State(table: ReservationTable(limits: configuration.limits)))
    }

    /// What the relay did so far.
    public var counters: Counters { state.withLockedValue { $0.counters } }
    /// Reservations held now.
    public var reservationCount: Int { state.withLockedValue { $0.table.reservationCount } }
    /// Relayed connections open now.
    public var circuitCount: Int { state.withLockedValue { $0.table.circuitCount } }

    /// Serves the hop protocol; drops a peer's reservation when its last connection closes.
    public func attach(to host: P2PHost) async throws {
        state.withLockedValue { $0.host = host }
        try host.setStreamHandler(RelayWire.hopProtocol) { [weak self] stream in
            await self?.serve(stream)
        }
        let events = host.events()
        let follower = Task { [weak self] in
            for await event in events {
                guard case .peerDisconnected(let peer) = event, let self else { continue }
                self.dropReservation(of: peer)
            }
        }
        state.withLockedValue { $0.follower = follower }
    }

    /// Stops following the host (its shutdown ends the streams and circuits).
    public func stop() {
        state.withLockedValue { $0.follower?.cancel() }
    }

    private func dropReservation(of peer: PeerID) {
        let had = state.withLockedValue { s -> Bool in
            s.rates[peer] = nil
            guard s.table.hasReservation(peer, now: .now) else { return false }
            s.table.remove(peer)
            return true
        }
        if had { state.withLockedValue { $0.host }?.resourceManager.serviceScope("relay").releaseMemory(configuration.memoryPerReservation) }
    }

    // MARK: - Hop requests

    private func serve(_ stream: P2PStream) async {
        defer { Task { await stream.close() } }
        let peer = stream.remotePeer
        let message: HopMessage
        do {
            try? stream.resourceScope?.setService("relay")
            let frame = try await withDeadline(
                .after(configuration.requestTimeout), on: stream.eventLoop,
                onTimeout: { RelayError(.limitExceeded, "no hop request within \(self.configuration.requestTimeout)") }
            ) {
                try await stream.readLengthPrefixed(maxLength: RelayWire.maxMessageSize)
            }
            guard let frame else { return stream.reset() }
            message = try HopMessage(decoding: frame.readableBytesView)
        } catch {
            count { $0.badRequests += 1 }
            configuration.logger.debug("bad hop request", metadata: ["peer": "\(peer)", "error": "\(error)"])
            try? await answer(stream, .malformedMessage)
            return
        }
        let allowed = state.withLockedValue { s in
            s.rates[peer, default: TokenBucket(burst: 2 * configuration.requestsPerPeerPerSecond)]
                .take(rate: configuration.requestsPerPeerPerSecond, burst: 2 * configuration.requestsPerPeerPerSecond)
        }
        // The spec: a relay does not relay for peers it reaches only through a relay.
        let relayed = stream.connection.remoteAddress.isCircuit
        switch message.type {
        case .reserve:
            guard allowed, !relayed else {
                count { $0.reservationsRefused += 1 }
                try? await answer(stream, relayed ? .permissionDenied : .reservationRefused)
                return
            }
            await reserve(for: peer, on: stream)
        case .connect:
            guard allowed, !relayed else {
                count { $0.circuitsRefused[relayed ? .permissionDenied : .resourceLimitExceeded, default: 0] += 1 }
                try? await answer(stream, relayed ? .permissionDenied : .resourceLimitExceeded)
                return
            }
            await connect(from: peer, request: message, on: stream)
        case .status:
            count { $0.badRequests += 1 }
            try? await answer(stream, .unexpectedMessage)
        }
    }

    private func answer(_ stream: P2PStream, _ status: RelayStatus, limit: RelayLimit? = nil) async throws {
        try await stream.writeLengthPrefixed(HopMessage(type: .status, limit: limit, status: status).encoded())
    }

    private func count(_ change: (inout Counters) -> Void) {
        state.withLockedValue { change(&$0.counters) }
    }

    private func reserve(for peer: PeerID, on stream: P2PStream) async {
        guard let host = state.withLockedValue({ $0.host }) else { return }
        let now = ContinuousClock.now
        let ttl = configuration.reservationTTL
        let scope = host.resourceManager.serviceScope("relay")
        let source = stream.connection.remoteAddress.ipAddressText
        let outcome = state.withLockedValue { s -> (RelayStatus?, renewed: Bool) in
            let renewed = s.table.hasReservation(peer, now: now)
            return (s.table.reserve(peer, source: source, until: now + ttl, now: now), renewed)
        }
        var refusal = outcome.0
        if refusal == nil, !outcome.renewed {
            do {
                try scope.reserveMemory(configuration.memoryPerReservation)
            } catch {
                state.withLockedValue { $0.table.remove(peer) }
                refusal = .reservationRefused
            }
        }
        if let refusal {
            count { $0.reservationsRefused += 1 }
            try? await answer(stream, refusal)
            return
        }
        let expire = UInt64(max(0, Date().timeIntervalSince1970 + ttl.seconds))
        let voucher = try? ReservationVoucher(relay: host.peerID, peer: peer, expiration: expire).sealed(with: host.identity)
        let addresses = (configuration.announcedAddresses?() ?? host.addresses).prefix(RelayWire.maxAddresses)
        let reply = HopMessage(
            type: .status,
            reservation: RelayReservationInfo(expire: expire, addresses: Array(addresses), voucher: voucher),
            limit: configuration.circuitLimit, status: .ok)
        do {
            try await stream.writeLengthPrefixed(reply.encoded())
            count { $0.reservationsAccepted += 1 }
        } catch {
            dropReservation(of: peer)
        }
    }

    private func connect(from initiator: PeerID, request: HopMessage, on hop: P2PStream) async {
        guard let host = state.withLockedValue({ $0.host }) else { return }
        guard let id = request.peer?.id, let target = try? PeerID(bytes: id) else {
            count { $0.badRequests += 1 }
            try? await answer(hop, .malformedMessage)
            return
        }
        // Only over the target's own connection: no "active relay" dialing (the spec deprecates it).
        let connection = host.connections(to: target).first { !$0.remoteAddress.isCircuit && !$0.isClosed }
        let refusal: RelayStatus? = connection == nil
            ? .noReservation
            : state.withLockedValue { $0.table.openCircuit(from: initiator, to: target, now: .now) }
        if let refusal {
            count { $0.circuitsRefused[refusal, default: 0] += 1 }
            try? await answer(hop, refusal)
            return
        }
        let scope = host.resourceManager.serviceScope("relay")
        defer {
            state.withLockedValue { $0.table.closeCircuit(from: initiator, to: target) }
        }
        do {
            try scope.reserveMemory(configuration.memoryPerCircuit)
        } catch {
            count { $0.circuitsRefused[.resourceLimitExceeded, default: 0] += 1 }
            try? await answer(hop, .resourceLimitExceeded)
            return
        }
        defer { scope.releaseMemory(configuration.memoryPerCircuit) }
        let stop: P2PStream
        do {
            stop = try await withDeadline(
                .after(configuration.requestTimeout), on: hop.eventLoop,
                onTimeout: { RelayError(.refused, "the target did not answer the stop CONNECT in time", status: .connectionFailed) },
                discard: { $0.reset() }
            ) { [configuration] in
                let stop = try await connection!.newStream(protocols: [RelayWire.stopProtocol])
                try? stop.resourceScope?.setService("relay")
                let connect = StopMessage(
                    type: .connect, peer: RelayPeer(id: initiator.bytes), limit: configuration.circuitLimit)
                try await stop.writeLengthPrefixed(connect.encoded())
                guard let frame = try await stop.readLengthPrefixed(maxLength: RelayWire.maxMessageSize) else {
                    throw RelayError(.malformedMessage, "the target closed the stop stream without an answer")
                }
                let answer = try StopMessage(decoding: frame.readableBytesView)
                guard answer.type == .status, answer.status == .ok else {
                    stop.reset()
                    throw RelayError(.refused, "the target refused the circuit", status: answer.status)
                }
                return stop
            }
        } catch {
            configuration.logger.debug(
                "circuit to target failed", metadata: ["initiator": "\(initiator)", "target": "\(target)", "error": "\(error)"])
            count { $0.circuitsRefused[.connectionFailed, default: 0] += 1 }
            try? await answer(hop, .connectionFailed)
            return
        }
        do {
            try await answer(hop, .ok, limit: configuration.circuitLimit)
        } catch {
            stop.reset()
            return
        }
        count { $0.circuitsOpened += 1 }
        let outcome = await CircuitPipe.run(hop, stop, limit: configuration.circuitLimit)
        count { $0.circuitsEnded[outcome.rawValue, default: 0] += 1 }
    }
}

extension Multiaddr {
    /// The IP address of an `/ip4/…` or `/ip6/…` address as text, nil for others.
    var ipAddressText: String? {
        for component in components {
            switch component {
            case .ip4(let ip): return "\(ip)"
            case .ip6(let ip): return "\(ip)"
            default: continue
            }
        }
        return nil
    }
}
