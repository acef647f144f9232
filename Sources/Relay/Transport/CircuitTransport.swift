import Basics
import LibP2P
import Multiformats
import NIOConcurrencyHelpers
import NIOCore
import Transport

/// The circuit relay transport: dials `…/p2p/<relay>/p2p-circuit/p2p/<peer>` by asking the relay
/// (hop `CONNECT`) and turning the hop stream into a channel for the swarm's upgrader; listens on
/// `/p2p-circuit`, where the ``RelayClient`` delivers the relayed connections relays announce.
struct CircuitTransport: Transport {
    let client: RelayClient

    /// A circuit address as dialed (without the target's `/p2p/`): the relay's part ends in
    /// `/p2p/<relay>`, then `/p2p-circuit` ends the address.
    static func relayPart(of address: Multiaddr) -> Multiaddr? {
        let parts = address.components
        guard parts.count >= 2, parts.last == .p2pCircuit, parts.filter({ $0 == .p2pCircuit }).count == 1 else { return nil }
        let relay = Multiaddr(Array(parts.dropLast()))
        return relay.peerID == nil ? nil : relay
    }

    func canDial(_ address: Multiaddr) -> Bool { Self.relayPart(of: address) != nil }

    func canListen(_ address: Multiaddr) -> Bool { address.components == [.p2pCircuit] }

    func dial(
        _ address: Multiaddr, options: DialOptions, initializer: @escaping ConnectionInitializer
    ) async throws -> any Channel {
        guard let relayAddress = Self.relayPart(of: address), let relay = relayAddress.peerID,
              let target = options.fullAddress?.peerID
        else {
            throw RelayError(.invalidAddress, "not a circuit address ending in /p2p/<peer>: \(options.fullAddress ?? address)")
        }
        let host = try client.requireHost()
        let hop = try await withDeadline(
            options.deadline, on: host.eventLoopGroup.next(),
            onTimeout: { HostError(.timeout, "relay \(relay) did not connect us to \(target) in time") },
            discard: { $0.reset() }
        ) {
            // Only the relay's own addresses: never a circuit within a circuit.
            let direct = relayAddress.removingPeerID()
            let connection = try await host.connect(to: relay, addresses: direct.components.isEmpty ? [] : [direct])
            guard !connection.isLimited else {
                throw RelayError(.invalidAddress, "will not reach relay \(relay) through another relay")
            }
            let hop = try await connection.newStream(protocols: [RelayWire.hopProtocol])
            do {
                try await hop.writeLengthPrefixed(HopMessage(type: .connect, peer: RelayPeer(id: target.bytes)).encoded())
                let answer = try await RelayClient.readHop(hop)
                guard answer.type == .status else {
                    throw RelayError(.unexpectedMessage, "the relay answered a connect with \(answer.type)")
                }
                guard answer.status == .ok else {
                    throw RelayError(.refused, "relay \(relay) could not connect us to \(target)", status: answer.status)
                }
                return hop
            } catch {
                hop.reset()
                throw error
            }
        }
        let (channel, _) = try await StreamBridge.channel(
            for: hop, local: Multiaddr([.p2p(relay.bytes), .p2pCircuit]), remote: address)
        do {
            try await initializer(channel).get()
            try await channel.activate().get()
        } catch {
            channel.close(promise: nil)
            throw error
        }
        return channel
    }

    func listen(
        on address: Multiaddr, acceptor: @escaping @Sendable (any Channel, RemoteEndpoint) -> EventLoopFuture<Void>
    ) async throws -> any TransportListener {
        guard canListen(address) else {
            throw TransportError(.unsupportedAddress, "the circuit transport listens only on /p2p-circuit, not \(address)")
        }
        client.setAcceptor(acceptor)
        return CircuitListener(client: client)
    }
}

/// The `/p2p-circuit` listener: while open, relayed connections go to the swarm.
struct CircuitListener: TransportListener {
    let client: RelayClient

    var address: Multiaddr { Multiaddr([.p2pCircuit]) }

    func close() async {
        client.setAcceptor(nil)
    }
}
