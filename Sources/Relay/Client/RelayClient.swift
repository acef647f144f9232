import Basics
import Foundation
import Identity
import LibP2P
import Logging
import Multiformats
import NIOConcurrencyHelpers
import NIOCore
import Transport

/// The client side of Circuit Relay v2: reserves slots on relays (and keeps them), accepts
/// relayed connections the relays announce over the stop protocol, and dials circuit addresses
/// (`…/p2p/<relay>/p2p-circuit/p2p/<peer>`) through ``transport``.
///
/// A relayed connection is a transport connection like any other: the swarm runs security and
/// the muxer over it exactly as over TCP, and marks it limited (`Connection.isLimited`).
///
/// Install both parts in the host's configuration before starting it:
/// ```swift
/// let relayClient = RelayClient()
/// relayClient.install(in: &configuration)
/// ```
public final class RelayClient: HostService, Sendable {
    /// The client's settings.
    public struct Configuration: Sendable {
        /// How long a reservation or connect request to a relay may take.
        public var requestTimeout: Duration = .seconds(30)
        /// Relayed connections being set up or open at once through all relays; more announced
        /// by relays are refused (`RESOURCE_LIMIT_EXCEEDED`).
        public var maxInboundCircuits = 128
        /// Accept relayed connections only from relays we hold a reservation with (a relay has
        /// no other reason to announce one: the spec deprecates "active relay").
        public var acceptOnlyFromReservedRelays = true
        /// Refresh a kept reservation when this much of its lifetime is left (go-libp2p refreshes
        /// a few minutes before expiry); at least a second before expiry in any case.
        public var refreshBeforeExpiry: Duration = .seconds(120)
        /// Where the client logs.
        public var logger = Logger(label: "pointsub.relay.client", factory: { _ in SwiftLogNoOpLogHandler() })

        /// The defaults.
        public init() {}
    }

    struct State {
        var host: P2PHost?
        var acceptor: (@Sendable (any Channel, RemoteEndpoint) -> EventLoopFuture<Void>)?
        var reservations: [PeerID: RelayReservation] = [:]
        var keepers: [PeerID: Task<Void, Never>] = [:]
        var inboundCircuits = 0
    }

    /// The settings.
    public let configuration: Configuration
    let state: NIOLockedValueBox<State>

    /// A relay client with `configuration`.
    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        self.state = NIOLockedValueBox(State())
    }

    /// The circuit transport to add to the host's transports (it dials circuit addresses through
    /// this client, and its `/p2p-circuit` listener receives the relayed connections).
    public var transport: TransportOption {
        TransportOption(name: "p2p-circuit") { _ in CircuitTransport(client: self) }
    }

    /// Adds the circuit transport and this service to a host's configuration, and the
    /// `/p2p-circuit` listen address relayed connections arrive on.
    public func install(in configuration: inout P2PHost.Configuration) {
        configuration.transports.append(transport)
        configuration.services.append(self)
        configuration.listenAddresses.append(Multiaddr([.p2pCircuit]))
    }

    /// Handles the stop protocol.
    public func attach(to host: P2PHost) async throws {
        state.withLockedValue { $0.host = host }
        // Our circuit addresses are advertised (identify, peer records) while reservations last.
        host.addAddressSource { [weak self] in
            self?.state.withLockedValue { s in s.reservations.values.flatMap(\.circuitAddresses) } ?? []
        }
        try host.setStreamHandler(RelayWire.stopProtocol) { [weak self] stream in
            await self?.acceptStop(stream)
        }
    }

    /// Ends the kept reservations' refreshing (the relays let them expire).
    public func stop() {
        let keepers = state.withLockedValue { s in
            defer { s.keepers = [:] }
            return Array(s.keepers.values)
        }
        keepers.forEach { $0.cancel() }
    }

    /// The reservations held now.
    public var reservations: [RelayReservation] {
        state.withLockedValue { Array($0.reservations.values) }
    }

    /// Our circuit addresses through every relay we hold a reservation with, ending in
    /// `/p2p/<our peer ID>`, ready to hand out.
    public var circuitAddresses: [Multiaddr] {
        state.withLockedValue { s -> [Multiaddr] in
            guard let host = s.host else { return [] }
            return s.reservations.values.flatMap(\.circuitAddresses).map { $0.appending(peerID: host.peerID) }
        }
    }

    func requireHost() throws -> P2PHost {
        guard let host = state.withLockedValue({ $0.host }) else {
            throw HostError(.shutDown, "the relay client is not attached to a started host")
        }
        return host
    }

    // MARK: - Reservations

    /// Reserves a slot on the relay at `relayAddress` (ending in `/p2p/<relay>`) once, connecting
    /// first if needed. Throws `RelayError` `.refused` (with the relay's status) or
    /// `.malformedMessage`, `.invalidVoucher`; the host's errors for the connection.
    @discardableResult
    public func reserve(on relayAddress: Multiaddr, deadline: Deadline? = nil) async throws -> RelayReservation {
        let host = try requireHost()
        guard let relay = relayAddress.peerID else {
            throw RelayError(.invalidAddress, "a relay address must end in /p2p/<relay>: \(relayAddress)")
        }
        let reservation = try await withDeadline(
            deadline ?? .after(configuration.requestTimeout), on: host.eventLoopGroup.next(),
            onTimeout: { HostError(.timeout, "relay \(relay) did not grant a reservation in time") }
        ) {
            let connection = try await host.connect(to: relay, addresses: [relayAddress.removingPeerID()])
            guard !connection.isLimited else {
                throw RelayError(.invalidAddress, "will not reserve on \(relay) through another relay")
            }
            let stream = try await connection.newStream(protocols: [RelayWire.hopProtocol])
            defer { Task { await stream.close() } }
            try await stream.writeLengthPrefixed(HopMessage(type: .reserve).encoded())
            let answer = try await Self.readHop(stream)
            return try Self.reservation(from: answer, relay: relay, us: host.peerID, fallback: relayAddress)
        }
        state.withLockedValue { $0.reservations[relay] = reservation }
        host.addressesChanged()
        configuration.logger.info(
            "reserved a relay slot",
            metadata: ["relay": "\(relay)", "expires": "\(reservation.expiration)"])
        return reservation
    }

    /// Reserves on the relay and keeps the reservation: refreshes it before it expires and
    /// again after a failure (retrying with backoff while time is left), until `release(relay:)`,
    /// `stop()` or the host's shutdown. Returns the first reservation; throws if it fails.
    @discardableResult
    public func keepReservation(on relayAddress: Multiaddr, deadline: Deadline? = nil) async throws -> RelayReservation {
        let first = try await reserve(on: relayAddress, deadline: deadline)
        let keeper = Task { [weak self] in
            var current = first
            var failures = 0
            while !Task.isCancelled {
                guard let self else { return }
                let left = current.expiration.timeIntervalSinceNow
                let margin = min(self.configuration.refreshBeforeExpiry.seconds, left / 2)
                let wait = failures == 0 ? max(1, left - margin) : min(Double(1 << min(failures, 6)), max(1, left / 2))
                guard (try? await Task.sleep(for: .seconds(wait))) != nil else { return }
                do {
                    current = try await self.reserve(on: relayAddress)
                    failures = 0
                } catch {
                    failures += 1
                    self.configuration.logger.info(
                        "refreshing a relay reservation failed",
                        metadata: ["relay": "\(first.relay)", "error": "\(error)"])
                    if current.expiration.timeIntervalSinceNow <= 0 {
                        _ = self.state.withLockedValue { $0.reservations.removeValue(forKey: first.relay) }
                        try? self.requireHost().addressesChanged()
                    }
                }
            }
        }
        let previous = state.withLockedValue { s in
            defer { s.keepers[first.relay] = keeper }
            return s.keepers[first.relay]
        }
        previous?.cancel()
        return first
    }

    /// Stops keeping the reservation on `relay` and forgets it (the relay lets it expire).
    public func release(relay: PeerID) {
        let keeper = state.withLockedValue { s in
            s.reservations[relay] = nil
            return s.keepers.removeValue(forKey: relay)
        }
        keeper?.cancel()
        try? requireHost().addressesChanged()
    }

    static func readHop(_ stream: P2PStream) async throws -> HopMessage {
        guard let frame = try await stream.readLengthPrefixed(maxLength: RelayWire.maxMessageSize) else {
            throw RelayError(.malformedMessage, "the relay closed the stream without an answer")
        }
        return try HopMessage(decoding: frame.readableBytesView)
    }

    /// The reservation an answer grants, or the error it means.
    static func reservation(from answer: HopMessage, relay: PeerID, us: PeerID, fallback: Multiaddr) throws -> RelayReservation {
        guard answer.type == .status else {
            throw RelayError(.unexpectedMessage, "the relay answered a reservation with \(answer.type)")
        }
        guard answer.status == .ok else {
            throw RelayError(.refused, "relay \(relay) refused the reservation", status: answer.status)
        }
        guard let info = answer.reservation, let expire = info.expire else {
            throw RelayError(.malformedMessage, "the relay accepted without a reservation expiry")
        }
        var voucher: ReservationVoucher?
        if let bytes = info.voucher {
            let opened = try ReservationVoucher.open(bytes)
            guard opened.relay == relay, opened.peer == us else {
                throw RelayError(.invalidVoucher, "the voucher is for relay \(opened.relay) and peer \(opened.peer)")
            }
            voucher = opened
        }
        // The relay's addresses end in its /p2p/ (spec); add it where one does not, keep only
        // the relay's own, and use the address we reached it on when it gave none.
        var bases = info.addresses.compactMap { address -> Multiaddr? in
            if let id = address.peerID { return id == relay ? address : nil }
            return address.appending(peerID: relay)
        }
        if bases.isEmpty { bases = [fallback.peerID == nil ? fallback.appending(peerID: relay) : fallback] }
        return RelayReservation(
            relay: relay, expiration: Date(timeIntervalSince1970: TimeInterval(expire)),
            circuitAddresses: bases.map { Multiaddr($0.components + [.p2pCircuit]) },
            limit: answer.limit, voucher: voucher)
    }

    // MARK: - Relayed connections to us (stop protocol)

    func setAcceptor(_ acceptor: (@Sendable (any Channel, RemoteEndpoint) -> EventLoopFuture<Void>)?) {
        state.withLockedValue { $0.acceptor = acceptor }
    }

    private func acceptStop(_ stream: P2PStream) async {
        let relay = stream.remotePeer
        let admitted = state.withLockedValue { s -> (@Sendable (any Channel, RemoteEndpoint) -> EventLoopFuture<Void>)? in
            guard let acceptor = s.acceptor, s.inboundCircuits < configuration.maxInboundCircuits,
                  !configuration.acceptOnlyFromReservedRelays || s.reservations[relay] != nil
            else { return nil }
            s.inboundCircuits += 1
            return acceptor
        }
        let request: StopMessage
        do {
            let frame = try await withDeadline(
                .after(configuration.requestTimeout), on: stream.eventLoop,
                onTimeout: { RelayError(.limitExceeded, "no stop request within \(self.configuration.requestTimeout)") }
            ) {
                try await stream.readLengthPrefixed(maxLength: RelayWire.maxMessageSize)
            }
            guard let frame else { throw RelayError(.malformedMessage, "the relay closed the stop stream") }
            request = try StopMessage(decoding: frame.readableBytesView)
        } catch {
            if admitted != nil { circuitEnded() }
            try? await stream.writeLengthPrefixed(StopMessage(type: .status, status: .malformedMessage).encoded())
            await stream.close()
            return
        }
        guard let acceptor = admitted else {
            try? await stream.writeLengthPrefixed(StopMessage(type: .status, status: .resourceLimitExceeded).encoded())
            await stream.close()
            return
        }
        guard request.type == .connect, let id = request.peer?.id, let initiator = try? PeerID(bytes: id) else {
            circuitEnded()
            try? await stream.writeLengthPrefixed(StopMessage(type: .status, status: .unexpectedMessage).encoded())
            await stream.close()
            return
        }
        let relayBase = Multiaddr([.p2p(relay.bytes), .p2pCircuit])
        let remote = relayBase.appending(peerID: initiator)
        do {
            try await stream.writeLengthPrefixed(StopMessage(type: .status, status: .ok).encoded())
            let (channel, joined) = try await StreamBridge.channel(for: stream, local: relayBase, remote: remote)
            do {
                // No source address: the relay's IP says nothing of the initiator; relayed
                // connections are bounded by maxInboundCircuits instead.
                // Transports call the acceptor on the channel's event loop (the swarm relies on it).
                try await channel.eventLoop.flatSubmit {
                    acceptor(channel, RemoteEndpoint(address: remote, source: nil))
                }.get()
                try await channel.activate().get()
            } catch {
                channel.close(promise: nil)
                throw error
            }
            await joined.value
            circuitEnded()
        } catch {
            circuitEnded()
            stream.reset()
        }
    }

    private func circuitEnded() {
        state.withLockedValue { $0.inboundCircuits = max(0, $0.inboundCircuits - 1) }
    }
}
