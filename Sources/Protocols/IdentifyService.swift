import Basics
import Identity
import LibP2P
import Multiformats
import NIOCore

/// Identify (`/ipfs/id/1.0.0`) and identify push (`/ipfs/id/push/1.0.0`).
///
/// On every new connection we ask the remote who it is and record its protocols, agent version,
/// listen addresses and key in the peerstore, then emit `.peerIdentified`. We answer the same
/// question for others, and push our new protocol list to connected peers when it changes.
/// Both py-libp2p and go-libp2p frame the message with a uvarint length, and so do we.
///
/// When we ask: identify is background work, and the first moments of a connection belong to
/// whoever opened it, who usually has a request to send right away. On a connection we dialed
/// we ask once the tasks already waiting (the dialer's own continuation) had their turn, so its
/// first stream goes out before ours. On a connection we accepted we ask `inboundDelay` later,
/// if it is still open: asking at once raced the dialer's first request for both peers' CPUs.
/// (Measured by alternating the two schedules within runs of `pointsub-bench connect`, load
/// average 3: connect + first stream + 1-byte echo, median 1.22–1.57 ms instead of 1.39–1.79 ms.)
/// We answer at once, always.
///
/// Signed peer records (RFC 0003): every message we send carries our record in field 8 (signed
/// once per set of listen addresses); a record we receive is verified against the connection's
/// peer and stored as its certified addresses, or ignored (a debug line and a counter, see
/// `P2PHost.consumeSignedPeerRecord`), never failing the connection. The observed address
/// (field 4) goes to `host.observedAddresses`, attributed to the reporting peer and its source
/// address.
public struct IdentifyService: HostService {
    public static let protocolID = "/ipfs/id/1.0.0"
    public static let pushProtocolID = "/ipfs/id/push/1.0.0"
    /// Far above any real message (a few hundred bytes); bounds what a peer can make us buffer.
    public static let maxMessageSize = 64 * 1024

    /// How long after accepting a connection we ask the dialer to identify itself; zero asks at once.
    public var inboundDelay: Duration

    public init(inboundDelay: Duration = .milliseconds(5)) {
        self.inboundDelay = inboundDelay
    }

    public func attach(to host: P2PHost) async throws {
        try host.setStreamHandler(Self.protocolID) { stream in
            let message = Self.localMessage(host: host, observed: stream.connection.remoteAddress)
            try await stream.writeLengthPrefixed(message.encoded())
            try await stream.closeWrite()
        }
        try host.setStreamHandler(Self.pushProtocolID) { stream in
            guard let bytes = try await stream.readLengthPrefixed(maxLength: Self.maxMessageSize) else { return }
            let message = try IdentifyMessage(decoding: Array(buffer: bytes))
            Self.record(message, from: stream.connection, host: host)
        }
        let inboundDelay = self.inboundDelay
        host.addConnectionObserver { connection in
            connection.session.closeFuture.whenComplete { _ in host.observedAddresses.connectionClosed(connection) }
            @Sendable func ask() {
                host.spawn {
                    // Dialer: let the tasks already waiting (the caller's continuation) go first.
                    if connection.direction == .outbound { await Task.yield() }
                    do {
                        _ = try await Self.identify(connection, host: host)
                    } catch {
                        host.configuration.logger.debug("identify failed", metadata: ["error": "\(error)"])
                    }
                }
            }
            guard connection.direction == .inbound, inboundDelay > .zero else { return ask() }
            // A timer on the connection's event loop, dropped if the connection closes first
            // (short connections then cost no task at all).
            let session = connection.session
            let timer = Deadline.after(inboundDelay).schedule(on: session.eventLoop) { ask() }
            session.closeFuture.whenComplete { _ in timer.cancel() }
        }
        host.addProtocolsObserver {
            let connections = host.allConnections
            guard !connections.isEmpty else { return }
            host.spawn { await Self.push(to: connections, host: host) }
        }
    }

    /// Asks the peer on `connection` to identify itself; records and returns the answer.
    @discardableResult
    public static func identify(_ connection: Connection, host: P2PHost) async throws -> IdentifyMessage {
        let stream = try await connection.newStream(protocols: [protocolID])
        defer { stream.reset() }
        guard let bytes = try await stream.readLengthPrefixed(maxLength: maxMessageSize) else {
            throw HostError(.unexpectedEOF, "identify stream closed without a message")
        }
        let message = try IdentifyMessage(decoding: Array(buffer: bytes))
        if let key = message.publicKey, !connection.remotePeer.matches(key) {
            throw HostError(.protocolViolation, "identify public key does not match \(connection.remotePeer)")
        }
        record(message, from: connection, host: host)
        return message
    }

    static func localMessage(host: P2PHost, observed: Multiaddr?) -> IdentifyMessage {
        var message = IdentifyMessage()
        message.publicKey = host.identity.publicKey
        message.listenAddresses = host.advertisedAddresses
        message.protocols = host.supportedProtocols
        message.observedAddress = observed
        message.protocolVersion = host.configuration.protocolVersion
        message.agentVersion = host.configuration.agentVersion
        // Our record certifies the addresses of field 2 (signed once per set of addresses).
        message.signedPeerRecord = host.peerstore.localSignedRecord(
            addresses: message.listenAddresses, key: host.identity)?.bytes
        return message
    }

    static func record(_ message: IdentifyMessage, from connection: Connection, host: P2PHost) {
        let peer = connection.remotePeer
        if let key = message.publicKey { host.peerstore.setPublicKey(key, for: peer) }
        host.peerstore.setProtocols(message.protocols, for: peer)
        host.peerstore.setAgentVersion(message.agentVersion, protocolVersion: message.protocolVersion, for: peer)
        host.peerstore.addAddresses(message.listenAddresses, for: peer, ttl: .connected)
        if let record = message.signedPeerRecord {
            host.consumeSignedPeerRecord(record, from: peer, ttl: .connected)
        }
        if let observed = message.observedAddress {
            do {
                try host.observedAddresses.record(observed, on: connection)
                // The report may have activated an address (enough distinct observers): then
                // peers hear of it by a push, as go-libp2p's address manager does.
                host.addressesChanged()
            } catch {
                host.configuration.logger.debug(
                    "ignoring an observed address",
                    metadata: ["peer": "\(peer)", "address": "\(observed)", "reason": "\(error)"])
            }
        }
        host.emit(.peerIdentified(peer))
    }

    static func push(to connections: [Connection], host: P2PHost) async {
        await withTaskGroup(of: Void.self) { group in
            for connection in connections {
                group.addTask {
                    do {
                        let stream = try await connection.newStream(protocols: [pushProtocolID])
                        let message = localMessage(host: host, observed: connection.remoteAddress)
                        try await stream.writeLengthPrefixed(message.encoded())
                        await stream.close()
                    } catch {
                        host.configuration.logger.debug("identify push failed", metadata: ["error": "\(error)"])
                    }
                }
            }
        }
    }
}
