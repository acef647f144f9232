#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif
import DNS
import Identity
import LibP2P
import Logging
import Multiformats
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// mDNS peer discovery (libp2p mDNS spec) as a host service: it answers queries for
/// `_p2p._udp.local` with the host's addresses, asks that question when it starts and every
/// `queryInterval`, and puts the peers it hears of in the peerstore (and dials them, unless
/// `connect` is off).
///
/// Traffic stays on one interface: `interfaceAddress` picks it (`127.0.0.1` keeps mDNS on the
/// loopback device, which needs multicast enabled there, as in a test network namespace).
/// What a neighbour can make us do is bounded: datagrams are decoded within `DNSMessage.Limits`,
/// at most `maxPeersPerAnswer` peers per answer are taken, answers to queries go out at most once
/// a second, and at most `maxDialsInFlight` discovery dials run at once.
public final class MDNSService: HostService, Sendable {
    /// Settings.
    public struct Configuration: Sendable {
        /// The service name (`_p2p._udp.local`).
        public var serviceName = MDNSRecords.serviceName
        /// The multicast group (224.0.0.251).
        public var group = "224.0.0.251"
        /// The port (5353).
        public var port = 5353
        /// The local interface's IPv4 address to send and listen on (`0.0.0.0`: the default one).
        public var interfaceAddress = "0.0.0.0"
        /// How often we ask (the first question goes out at start).
        public var queryInterval: Duration = .seconds(10)
        /// Dial the peers found.
        public var connect = true
        /// Peers taken from one answer, at most.
        public var maxPeersPerAnswer = 16
        /// Discovery dials running at once, at most.
        public var maxDialsInFlight = 4
        /// Called once per peer when it is first heard of (its addresses as announced).
        public var onDiscovered: (@Sendable (PeerID, [Multiaddr]) -> Void)?

        /// The defaults.
        public init() {}
    }

    private struct State {
        var channel: (any Channel)?
        var host: P2PHost?
        var task: Task<Void, Never>?
        var lastAnswer: ContinuousClock.Instant?
        var dialsInFlight = 0
        var discovered: Set<PeerID> = []
    }

    /// The settings.
    public let configuration: Configuration
    /// Our instance label (random, per service).
    public let peerName = MDNSRecords.randomPeerName()
    private let state = NIOLockedValueBox(State())

    /// A discovery service; add it to a host's `services`.
    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
    }

    /// The peers discovered so far.
    public var discoveredPeers: Set<PeerID> { state.withLockedValue { $0.discovered } }

    /// Binds the mDNS port (shared with other processes), joins the group, asks once and then
    /// every `queryInterval`. Discovery is best effort: when the socket or the group cannot be had
    /// (no multicast on the interface), the failure is logged and the host runs without it.
    public func attach(to host: P2PHost) async throws {
        do {
            try await start(on: host)
        } catch {
            host.configuration.logger.warning("mDNS discovery is off", metadata: ["error": "\(error)"])
        }
    }

    private func start(on host: P2PHost) async throws {
        let configuration = self.configuration
        let group = try SocketAddress(ipAddress: configuration.group, port: configuration.port)
        let interface = try SocketAddress(ipAddress: configuration.interfaceAddress, port: 0)
        let channel = try await DatagramBootstrap(group: host.eventLoopGroup)
            .channelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            // Several processes (and the system's responder) share the port, as mDNS expects.
            .channelOption(ChannelOptions.socketOption(NIOBSDSocket.Option(rawValue: SO_REUSEPORT)), value: 1)
            .channelOption(ChannelOptions.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 9000))
            .channelInitializer { [weak self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Receiver(service: self))
                }
            }
            .bind(host: "0.0.0.0", port: configuration.port).get()
        do {
            guard let multicast = channel as? any MulticastChannel else {
                throw DNSError(.queryFailed, "the datagram channel does not support multicast")
            }
            if case .v4(let address) = interface, configuration.interfaceAddress != "0.0.0.0" {
                // Send on that interface only (IP_MULTICAST_IF), and join the group there.
                guard let options = channel as? any SocketOptionProvider else {
                    throw DNSError(.queryFailed, "the datagram channel has no socket options")
                }
                try await options.setIPMulticastIF(address.address.sin_addr).get()
                let device = try System.enumerateDevices().first { $0.address?.ipAddress == configuration.interfaceAddress }
                try await multicast.joinGroup(group, device: device).get()
            } else {
                try await multicast.joinGroup(group).get()
            }
        } catch {
            try? await channel.close()
            throw error
        }
        state.withLockedValue { s in
            s.channel = channel
            s.host = host
        }
        let task = Task { [weak self] in
            // Announce ourselves once (peers already there learn of us at once), then ask. The
            // host listens after its services attach: wait (bounded) for its addresses first.
            for _ in 0..<100 where host.addresses.isEmpty && !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(20))
            }
            self?.announce()
            while !Task.isCancelled {
                self?.ask()
                try? await Task.sleep(for: configuration.queryInterval)
            }
        }
        state.withLockedValue { $0.task = task }
        // The host's event stream ends when it shuts down: so do we.
        let events = host.events()
        Task { [weak self] in
            for await _ in events {}
            self?.stop()
        }
    }

    /// Stops asking and answering.
    public func stop() {
        let (channel, task) = state.withLockedValue { s in
            defer {
                s.channel = nil
                s.task = nil
            }
            return (s.channel, s.task)
        }
        task?.cancel()
        channel?.close(promise: nil)
    }

    private func send(_ message: DNSMessage) {
        guard let channel = state.withLockedValue({ $0.channel }),
            let group = try? SocketAddress(ipAddress: configuration.group, port: configuration.port),
            let bytes = try? message.encoded()
        else { return }
        channel.writeAndFlush(AddressedEnvelope(remoteAddress: group, data: ByteBuffer(bytes: bytes)), promise: nil)
    }

    /// Multicasts our records unasked.
    func announce() {
        guard let host = state.withLockedValue({ $0.host }),
            let response = try? MDNSRecords.response(peerName: peerName, addresses: host.addresses, service: configuration.serviceName)
        else { return }
        send(response)
    }

    /// Multicasts the question.
    func ask() {
        send(MDNSRecords.query(service: configuration.serviceName))
    }

    /// A datagram arrived: answer a query (at most once a second), take the peers of an answer.
    fileprivate func received(_ bytes: [UInt8]) {
        guard let message = try? DNSMessage(decoding: bytes), let host = state.withLockedValue({ $0.host }) else { return }
        if MDNSRecords.isQuery(message, service: configuration.serviceName) {
            let now = ContinuousClock.now
            let due = state.withLockedValue { s -> Bool in
                if let last = s.lastAnswer, now - last < .seconds(1) { return false }
                s.lastAnswer = now
                return true
            }
            guard due, let response = try? MDNSRecords.response(
                peerName: peerName, addresses: host.addresses, service: configuration.serviceName)
            else { return }
            send(response)
            return
        }
        for (peer, addresses) in MDNSRecords.peers(in: message, maxPeers: configuration.maxPeersPerAnswer)
        where peer != host.peerID {
            host.peerstore.addAddresses(addresses, for: peer, ttl: .temporary)
            let (isNew, dial) = state.withLockedValue { s -> (Bool, Bool) in
                let isNew = s.discovered.insert(peer).inserted
                guard configuration.connect, host.connections(to: peer).isEmpty, s.dialsInFlight < configuration.maxDialsInFlight
                else { return (isNew, false) }
                s.dialsInFlight += 1
                return (isNew, true)
            }
            if isNew {
                host.configuration.logger.debug("mDNS found a peer", metadata: ["peer": "\(peer)"])
                configuration.onDiscovered?(peer, addresses)
            }
            guard dial else { continue }
            let state = self.state
            host.spawn {
                _ = try? await host.connect(to: peer)
                state.withLockedValue { $0.dialsInFlight -= 1 }
            }
        }
    }

    private final class Receiver: ChannelInboundHandler, Sendable {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        weak let service: MDNSService?

        init(service: MDNSService?) { self.service = service }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let envelope = unwrapInboundIn(data)
            service?.received(Array(envelope.data.readableBytesView))
        }
    }
}
