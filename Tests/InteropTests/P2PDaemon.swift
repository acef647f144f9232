import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PointSub
import PubSub
import TestSupport

// The go-libp2p referee: `p2pd`, the go-libp2p daemon (learning-at-home's fork of
// libp2p/go-libp2p-daemon, built on go-libp2p v0.32.1, go-yamux 4.0.1, go-libp2p-pubsub 0.10.0
// and go-libp2p-kad-dht 0.25.1), as shipped in the PyPI wheel hivemind==1.1.12 and put in
// Interop/.p2pd/ by scripts/setup-interop.sh. A missing binary is a failure, never a skip.
//
// The daemon is driven over its control socket (a unix socket): each message is a protobuf
// preceded by its length as a uvarint, `Request` from us and `Response` back (p2pd.proto; the
// spec is specs/CONTROL.md, PUBSUB.md and DHT.md of go-libp2p-daemon). Quirks the tests depend on:
// - One control connection can carry many requests, but STREAM_OPEN and PUBSUB SUBSCRIBE turn
//   it into something else (the stream's bytes, a feed of PSMessages), so every request here
//   gets a connection of its own.
// - STREAM_OPEN: the raw stream bytes follow the Response on the same connection at once (bytes
//   read past the Response belong to the stream). STREAM_HANDLER: for each inbound stream the
//   daemon dials the unix socket we registered and writes a length-prefixed StreamInfo (not
//   wrapped in a Response) before the stream's bytes.
// - The daemon's stream proxy closes the unix connection and the libp2p stream as a whole when
//   either side reaches EOF (and resets the stream when the other copy then fails): there is no
//   half-close through it. A round trip must be full duplex, reading everything before closing.
// - Timeouts in requests (`timeout` fields) are in seconds; the default is 60 s.
// - Peer IDs are raw peer ID bytes and addresses binary multiaddrs; the handler address is the
//   binary form of `/unix/<path>` (our Multiaddr has no /unix, so it is encoded here).
// - p2pd ignores SIGINT; SIGTERM makes it close its host and exit.
enum P2PD {
    static var binary: URL { ChildProcess.repoRoot.appendingPathComponent("Interop/.p2pd/p2pd") }

    static func checkInstalled() throws {
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            throw ChildProcess.Failure(
                "go-libp2p daemon missing at \(binary.path): run scripts/setup-interop.sh (the test command does)")
        }
    }

    /// Upper bound of a control message we accept (the daemon's own default limit is 4 MiB).
    static let maxMessageSize = 4 << 20

    /// The binary form of the multiaddr `/unix/<path>` (protocol code 400, a path: the value is
    /// length-prefixed and includes the leading slash).
    static func unixMultiaddrBytes(_ path: String) -> [UInt8] {
        Varint.encode(400) + Varint.encode(UInt64(path.utf8.count)) + Array(path.utf8)
    }
}

// MARK: - Control protocol messages (p2pd.proto)

/// `PeerInfo` of p2pd.proto.
struct DaemonPeerInfo: Sendable {
    var id: PeerID
    var addresses: [Multiaddr]

    init(decoding bytes: [UInt8]) throws {
        var reader = ProtobufReader(bytes)
        var id: [UInt8]?
        var addresses: [Multiaddr] = []
        while let (field, value) = try reader.next() {
            switch field {
            case 1: id = value.bytesValue
            // Skip addresses our Multiaddr cannot express (go may report e.g. /quic-v1 forms).
            case 2: if let raw = value.bytesValue, let address = try? Multiaddr(bytes: raw) { addresses.append(address) }
            default: break
            }
        }
        guard let id else { throw ChildProcess.Failure("PeerInfo without id") }
        self.id = try PeerID(bytes: id)
        self.addresses = addresses
    }
}

/// `StreamInfo` of p2pd.proto.
struct DaemonStreamInfo: Sendable {
    var peer: PeerID
    var address: Multiaddr?
    var proto: String

    init(decoding bytes: [UInt8]) throws {
        var reader = ProtobufReader(bytes)
        var peer: [UInt8]?
        var address: Multiaddr?
        var proto: String?
        while let (field, value) = try reader.next() {
            switch field {
            case 1: peer = value.bytesValue
            case 2: address = value.bytesValue.flatMap { try? Multiaddr(bytes: $0) }
            case 3: proto = value.stringValue
            default: break
            }
        }
        guard let peer, let proto else { throw ChildProcess.Failure("StreamInfo without peer or proto") }
        self.peer = try PeerID(bytes: peer)
        self.address = address
        self.proto = proto
    }
}

/// `PSMessage` of p2pd.proto: a message of a topic the daemon is subscribed to.
struct DaemonPubSubMessage: Sendable {
    var from: PeerID
    var data: [UInt8]
    var seqno: [UInt8]
    var topics: [String]
    var signed: Bool

    /// go-libp2p-pubsub's default message ID, the same as ours: from ‖ seqno.
    var id: MessageID { from.bytes + seqno }
    var text: String { String(decoding: data, as: UTF8.self) }

    init(decoding bytes: [UInt8]) throws {
        var reader = ProtobufReader(bytes)
        var from: [UInt8]?
        var data: [UInt8] = []
        var seqno: [UInt8] = []
        var topics: [String] = []
        var signed = false
        while let (field, value) = try reader.next() {
            switch field {
            case 1: from = value.bytesValue
            case 2: data = value.bytesValue ?? []
            case 3: seqno = value.bytesValue ?? []
            case 4: if let topic = value.stringValue { topics.append(topic) }
            case 5: signed = !(value.bytesValue ?? []).isEmpty
            default: break
            }
        }
        guard let from else { throw ChildProcess.Failure("PSMessage without from") }
        self.from = try PeerID(bytes: from)
        self.data = data
        self.seqno = seqno
        self.topics = topics
        self.signed = signed
    }
}

/// A decoded `Response` (the fields the tests use).
struct DaemonResponse: Sendable {
    var ok = false
    var error: String?
    var streamInfo: [UInt8]?
    var identify: (id: PeerID, addresses: [Multiaddr])?
    var dht: (type: UInt64, peer: DaemonPeerInfo?, value: [UInt8]?)?
    var peers: [DaemonPeerInfo] = []
    var pubsubTopics: [String] = []
    var pubsubPeerIDs: [PeerID] = []

    init(decoding bytes: [UInt8]) throws {
        var reader = ProtobufReader(bytes)
        while let (field, value) = try reader.next() {
            switch field {
            case 1: ok = value.varintValue == 0
            case 2:
                var inner = ProtobufReader(value.bytesValue ?? [])
                while let (f, v) = try inner.next() {
                    if f == 1 { error = v.stringValue }
                }
            case 3: streamInfo = value.bytesValue
            case 4:
                var inner = ProtobufReader(value.bytesValue ?? [])
                var id: PeerID?
                var addresses: [Multiaddr] = []
                while let (f, v) = try inner.next() {
                    if f == 1, let raw = v.bytesValue { id = try PeerID(bytes: raw) }
                    if f == 2, let raw = v.bytesValue, let address = try? Multiaddr(bytes: raw) { addresses.append(address) }
                }
                if let id { identify = (id, addresses) }
            case 5: dht = try Self.decodeDHT(value.bytesValue ?? [])
            case 6: peers.append(try DaemonPeerInfo(decoding: value.bytesValue ?? []))
            case 7:
                var inner = ProtobufReader(value.bytesValue ?? [])
                while let (f, v) = try inner.next() {
                    if f == 1, let topic = v.stringValue { pubsubTopics.append(topic) }
                    if f == 2, let raw = v.bytesValue { pubsubPeerIDs.append(try PeerID(bytes: raw)) }
                }
            default: break
            }
        }
    }
}

extension DaemonResponse {
    /// `DHTResponse`: type (BEGIN 0, VALUE 1, END 2), a PeerInfo or a value. Inside a Response,
    /// or on its own for each item of a streaming DHT answer.
    static func decodeDHT(_ bytes: [UInt8]) throws -> (type: UInt64, peer: DaemonPeerInfo?, value: [UInt8]?) {
        var inner = ProtobufReader(bytes)
        var type: UInt64 = 0
        var peer: DaemonPeerInfo?
        var dhtValue: [UInt8]?
        while let (f, v) = try inner.next() {
            switch f {
            case 1: type = v.varintValue ?? 0
            case 2: peer = try DaemonPeerInfo(decoding: v.bytesValue ?? [])
            case 3: dhtValue = v.bytesValue
            default: break
            }
        }
        return (type, peer, dhtValue)
    }
}

/// Builders of `Request` messages.
enum DaemonRequest {
    enum Kind: UInt64 {
        case identify = 0, connect = 1, streamOpen = 2, streamHandler = 3, dht = 4, listPeers = 5
        case disconnect = 7, pubsub = 8
    }

    static func make(_ kind: Kind, field: Int? = nil, _ body: ((inout ProtobufWriter) -> Void)? = nil) -> [UInt8] {
        var writer = ProtobufWriter()
        writer.writeVarintField(1, kind.rawValue)
        if let field, let body {
            var inner = ProtobufWriter()
            body(&inner)
            writer.writeBytesField(field, inner.bytes)
        }
        return writer.bytes
    }

    static var identify: [UInt8] { make(.identify) }
    static var listPeers: [UInt8] { make(.listPeers) }

    static func connect(_ peer: PeerID, _ addresses: [Multiaddr], timeout seconds: Int64) -> [UInt8] {
        make(.connect, field: 2) {
            $0.writeBytesField(1, peer.bytes)
            for address in addresses { $0.writeBytesField(2, address.bytes) }
            $0.writeVarintField(3, UInt64(seconds))
        }
    }

    static func streamOpen(_ peer: PeerID, _ protocols: [String], timeout seconds: Int64) -> [UInt8] {
        make(.streamOpen, field: 3) {
            $0.writeBytesField(1, peer.bytes)
            for p in protocols { $0.writeStringField(2, p) }
            $0.writeVarintField(3, UInt64(seconds))
        }
    }

    static func streamHandler(path: String, _ protocols: [String]) -> [UInt8] {
        make(.streamHandler, field: 4) {
            $0.writeBytesField(1, P2PD.unixMultiaddrBytes(path))
            for p in protocols { $0.writeStringField(2, p) }
            $0.writeBoolField(3, false)
        }
    }

    /// DHTRequest FIND_PEER (type 0).
    static func findPeer(_ peer: PeerID, timeout seconds: Int64) -> [UInt8] {
        make(.dht, field: 5) {
            $0.writeVarintField(1, 0)
            $0.writeBytesField(2, peer.bytes)
            $0.writeVarintField(7, UInt64(seconds))
        }
    }

    /// DHTRequest types (p2pd.proto).
    enum DHTType: UInt64 {
        case findPeer = 0, findPeersConnectedToPeer = 1, findProviders = 2, getClosestPeers = 3
        case getPublicKey = 4, getValue = 5, searchValue = 6, putValue = 7, provide = 8
    }

    /// A DHTRequest: peer 2, cid 3, key 4, value 5, count 6, timeout 7 (seconds).
    static func dht(
        _ type: DHTType, peer: PeerID? = nil, cid: [UInt8]? = nil, key: [UInt8]? = nil, value: [UInt8]? = nil,
        count: Int? = nil, timeout seconds: Int64
    ) -> [UInt8] {
        make(.dht, field: 5) {
            $0.writeVarintField(1, type.rawValue)
            if let peer { $0.writeBytesField(2, peer.bytes) }
            if let cid { $0.writeBytesField(3, cid) }
            if let key { $0.writeBytesField(4, key) }
            if let value { $0.writeBytesField(5, value) }
            if let count { $0.writeVarintField(6, UInt64(count)) }
            $0.writeVarintField(7, UInt64(seconds))
        }
    }

    /// PSRequest: GET_TOPICS 0, LIST_PEERS 1, PUBLISH 2, SUBSCRIBE 3.
    static func pubsub(_ type: UInt64, topic: String?, data: [UInt8]? = nil) -> [UInt8] {
        make(.pubsub, field: 8) {
            $0.writeVarintField(1, type)
            if let topic { $0.writeStringField(2, topic) }
            if let data { $0.writeBytesField(3, data) }
        }
    }
}

/// Runs `work` in a child task; throws (and cancels it) if it takes longer than `limit`.
func withDeadline<T: Sendable>(
    _ limit: Duration, _ what: String, _ work: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await work() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw ChildProcess.Failure("\(what) took longer than \(limit)")
        }
        return value
    }
}

// MARK: - Unix socket connections

/// One connection over a unix socket to or from the daemon: length-prefixed control messages,
/// then (for proxied streams) raw bytes. Used by one task; its `writer` may be handed to another
/// for full-duplex transfers.
final class DaemonSocket {
    typealias Channel = NIOAsyncChannel<ByteBuffer, ByteBuffer>

    private var iterator: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    /// Received bytes not consumed yet.
    private var pending = ByteBuffer()
    private var ended = false
    let writer: NIOAsyncChannelOutboundWriter<ByteBuffer>

    init(inbound: NIOAsyncChannelInboundStream<ByteBuffer>, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) {
        self.iterator = inbound.makeAsyncIterator()
        self.writer = outbound
    }

    /// Connects to the unix socket at `path` and runs `body`; the connection is closed afterwards.
    static func with<T: Sendable>(path: String, _ body: (DaemonSocket) async throws -> T) async throws -> T {
        try await with(address: try SocketAddress(unixDomainSocketPath: path), body)
    }

    /// Connects to `address` and runs `body`; the connection is closed afterwards.
    static func with<T: Sendable>(address: SocketAddress, _ body: (DaemonSocket) async throws -> T) async throws -> T {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(to: address) { channel in
                channel.eventLoop.makeCompletedFuture { try Channel(wrappingChannelSynchronously: channel) }
            }
        return try await channel.executeThenClose { inbound, outbound in
            try await body(DaemonSocket(inbound: inbound, outbound: outbound))
        }
    }

    /// Writes `message` preceded by its uvarint length.
    func send(_ message: [UInt8]) async throws {
        var buffer = ByteBuffer()
        buffer.writeBytes(Varint.encode(UInt64(message.count)))
        buffer.writeBytes(message)
        try await writer.write(buffer)
    }

    /// Reads more bytes into `pending`; false at EOF.
    private func fill() async throws -> Bool {
        guard !ended, var chunk = try await iterator.next() else {
            ended = true
            return false
        }
        pending.writeBuffer(&chunk)
        return true
    }

    /// The next length-prefixed message; nil on a clean EOF before it. Bounded by
    /// `P2PD.maxMessageSize`.
    func readMessage() async throws -> [UInt8]? {
        while true {
            let view = pending.readableBytesView
            if let (length, prefix) = try Varint.decode(view) {
                guard length <= P2PD.maxMessageSize else {
                    throw ChildProcess.Failure("daemon message of \(length) bytes is over the limit")
                }
                if view.count >= prefix + Int(length) {
                    pending.moveReaderIndex(forwardBy: prefix)
                    return pending.readBytes(length: Int(length))
                }
            }
            guard try await fill() else {
                if pending.readableBytes == 0 { return nil }
                throw ChildProcess.Failure("daemon connection ended inside a message")
            }
        }
    }

    /// Sends `request` and decodes the response; throws on EOF or an ERROR response.
    func request(_ request: [UInt8]) async throws -> DaemonResponse {
        try await send(request)
        return try await response()
    }

    /// The next `Response`; throws on EOF or an ERROR response.
    func response() async throws -> DaemonResponse {
        guard let bytes = try await readMessage() else {
            throw ChildProcess.Failure("daemon closed the control connection without a response")
        }
        let response = try DaemonResponse(decoding: bytes)
        guard response.ok else {
            throw DaemonError(message: response.error ?? "ERROR response without a message")
        }
        return response
    }

    /// The next chunk of raw bytes (bytes left over after a message first); nil at EOF.
    func readChunk() async throws -> ByteBuffer? {
        if pending.readableBytes > 0 {
            defer { pending.clear() }
            return pending
        }
        guard try await fill() else { return nil }
        defer { pending.clear() }
        return pending
    }

    /// Exactly `count` raw bytes; throws at an early EOF.
    func readExactly(_ count: Int) async throws -> ByteBuffer {
        var out = ByteBuffer()
        out.reserveCapacity(count)
        while out.readableBytes < count {
            if pending.readableBytes == 0, try await !fill() {
                throw ChildProcess.Failure("stream ended after \(out.readableBytes) of \(count) bytes")
            }
            let take = min(count - out.readableBytes, pending.readableBytes)
            var slice = pending.readSlice(length: take)!
            out.writeBuffer(&slice)
            pending.discardReadBytes()
        }
        return out
    }
}

/// An ERROR response of the daemon.
struct DaemonError: Error, CustomStringConvertible {
    var message: String
    var description: String { "p2pd error: \(message)" }
}

/// A unix socket the daemon dials for each inbound stream of the protocols registered with
/// STREAM_HANDLER: reads the StreamInfo, records it, then echoes every byte back until the
/// daemon closes the connection.
final class DaemonEchoHandler: Sendable {
    typealias Server = NIOAsyncChannel<DaemonSocket.Channel, Never>

    let path: String
    private let channel: any Channel
    private let task: Task<Void, Never>
    private let infos: NIOLockedValueBox<[DaemonStreamInfo]>
    private let echoed: NIOLockedValueBox<Int>

    /// StreamInfos of the streams the daemon handed us so far.
    var streams: [DaemonStreamInfo] { infos.withLockedValue { $0 } }
    /// Bytes echoed so far over all streams.
    var echoedBytes: Int { echoed.withLockedValue { $0 } }

    private init(path: String, channel: any Channel, task: Task<Void, Never>,
                 infos: NIOLockedValueBox<[DaemonStreamInfo]>, echoed: NIOLockedValueBox<Int>) {
        self.path = path
        self.channel = channel
        self.task = task
        self.infos = infos
        self.echoed = echoed
    }

    static func start(path: String) async throws -> DaemonEchoHandler {
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true) { channel in
                channel.eventLoop.makeCompletedFuture { try DaemonSocket.Channel(wrappingChannelSynchronously: channel) }
            }
        let infos = NIOLockedValueBox<[DaemonStreamInfo]>([])
        let echoed = NIOLockedValueBox(0)
        let channel = server.channel
        let task = Task {
            _ = try? await server.executeThenClose { connections in
                await withDiscardingTaskGroup { group in
                    do {
                        for try await connection in connections {
                            group.addTask {
                                _ = try? await connection.executeThenClose { inbound, outbound in
                                    let socket = DaemonSocket(inbound: inbound, outbound: outbound)
                                    guard let bytes = try await socket.readMessage() else { return }
                                    let info = try DaemonStreamInfo(decoding: bytes)
                                    infos.withLockedValue { $0.append(info) }
                                    while let chunk = try await socket.readChunk() {
                                        echoed.withLockedValue { $0 += chunk.readableBytes }
                                        try await outbound.write(chunk)
                                    }
                                }
                            }
                        }
                    } catch {}
                }
            }
        }
        return DaemonEchoHandler(path: path, channel: channel, task: task, infos: infos, echoed: echoed)
    }

    /// Closes the listener and ends the open connections (bounded: they are cancelled).
    func stop() async {
        try? await channel.close()
        task.cancel()
        await task.value
        unlink(path)
    }
}

// MARK: - The daemon process

/// A running `p2pd` with its own control socket and key, in a directory of its own under /tmp
/// (unix socket paths are limited to 107 bytes, so not under a long $TMPDIR).
final class P2PDaemon: Sendable {
    let running: ChildProcess.Running
    let directory: String
    let controlPath: String
    /// The daemon's peer ID (from its key, checked against IDENTIFY).
    let peerID: PeerID
    /// Its TCP listen address on 127.0.0.1, or the `ip` it was started with (from IDENTIFY).
    let address: Multiaddr
    /// Where it serves its metrics (`start(metrics: true)`).
    let metricsPort: Int?
    /// `address` with `/p2p/<peerID>`.
    var fullAddress: Multiaddr { address.appending(peerID: peerID) }

    private static let counter = NIOLockedValueBox(0)

    private init(
        running: ChildProcess.Running, directory: String, controlPath: String, peerID: PeerID, address: Multiaddr,
        metricsPort: Int?
    ) {
        self.metricsPort = metricsPort
        self.running = running
        self.directory = directory
        self.controlPath = controlPath
        self.peerID = peerID
        self.address = address
    }

    /// Starts `p2pd` with the Ed25519 key of `seed` (written as a libp2p PrivateKey protobuf file,
    /// as `pointsub keygen` does), listening on 127.0.0.1 only, plus `arguments` (e.g. `-pubsub`).
    /// With `metrics`, it serves go-libp2p's Prometheus metrics on a free 127.0.0.1 port.
    ///
    /// `namespace`: run it inside that network namespace (`ip netns exec`, which execs p2pd in
    /// place, so signals reach it), listening on `ip` there. Its control socket is a unix path,
    /// which network namespaces do not separate: we drive it from ours. (Not with `metrics`: that
    /// port would be on the namespace's 127.0.0.1.)
    static func start(
        seed: UInt64, _ arguments: [String] = [], metrics: Bool = false, namespace: String? = nil, ip: String = "127.0.0.1"
    ) async throws -> P2PDaemon {
        try await start(key: PrivateKey.ed25519(seed: seed), arguments, metrics: metrics, namespace: namespace, ip: ip)
    }

    /// Starts `p2pd` with `key` (any key type go-libp2p reads from a key file), as `start(seed:)`.
    static func start(
        key: PrivateKey, _ arguments: [String] = [], metrics: Bool = false, namespace: String? = nil, ip: String = "127.0.0.1"
    ) async throws -> P2PDaemon {
        try P2PD.checkInstalled()
        if namespace != nil, metrics { throw ChildProcess.Failure("p2pd's metrics are not reachable in another network namespace") }
        let n = counter.withLockedValue { $0 += 1; return $0 }
        let directory = "/tmp/pointsub-p2pd-\(getpid())-\(n)"
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        try KeyFile.write(key, to: "\(directory)/key")
        let controlPath = "\(directory)/control.sock"
        var metricsPort: Int?
        if metrics {
            // A port free a moment ago (p2pd takes no port 0 here: it would not tell us which).
            let probe = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .bind(host: "127.0.0.1", port: 0).get()
            metricsPort = probe.localAddress?.port
            try await probe.close()
        }
        let daemonArguments = [
            "-listen", "/unix\(controlPath)", "-id", "\(directory)/key",
            "-hostAddrs", "/ip4/\(ip)/tcp/0",
            // Keep it to TCP on `ip`: no relay service/client, no NAT port mapping.
            "-relay=false",
        ] + (metricsPort.map { ["-metricsAddr", "127.0.0.1:\($0)"] } ?? []) + arguments
        let running: ChildProcess.Running
        if let namespace {
            guard let ipCommand = NATNetwork.ip else {
                throw ChildProcess.Failure("iproute2 (the ip command) is needed; scripts/setup-interop.sh installs it")
            }
            running = try ChildProcess.Running(
                URL(fileURLWithPath: ipCommand), NATNetwork.exec(in: namespace, [P2PD.binary.path] + daemonArguments),
                captureStderr: true)
        } else {
            running = try ChildProcess.Running(P2PD.binary, daemonArguments, captureStderr: true)
        }
        do {
            // p2pd prints "Peer ID: …" once its control socket listens.
            _ = try await running.firstLine(timeout: .seconds(30)) { $0.hasPrefix("Peer ID: ") }
            let identify = try await DaemonSocket.with(path: controlPath) { try await $0.request(DaemonRequest.identify) }
            guard let (id, addresses) = identify.identify else { throw ChildProcess.Failure("IDENTIFY without identify") }
            let expected = PeerID(publicKey: key.publicKey)
            guard id == expected else { throw ChildProcess.Failure("p2pd runs as \(id), not \(expected) of its key file") }
            guard let address = addresses.first(where: { $0.tcpPort != nil && $0.ipAddress?.description == ip }) else {
                throw ChildProcess.Failure("p2pd has no \(ip) TCP address: \(addresses)")
            }
            return P2PDaemon(
                running: running, directory: directory, controlPath: controlPath, peerID: id, address: address,
                metricsPort: metricsPort)
        } catch {
            _ = try? await running.stop(signal: SIGKILL, timeout: 5)
            try? FileManager.default.removeItem(atPath: directory)
            throw ChildProcess.Failure("p2pd did not start: \(error)\nstderr: \(running.errorLines.suffix(20).joined(separator: "\n"))")
        }
    }

    /// Its stderr so far (for failure messages).
    var log: String { running.errorLines.suffix(30).joined(separator: "\n") }

    /// SIGTERM, then SIGKILL if it does not exit within 5 s; removes its directory.
    func stop() async {
        if (try? await running.stop(signal: SIGTERM, timeout: 5)) == nil {
            _ = try? await running.stop(signal: SIGKILL, timeout: 5)
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// go-libp2p's Prometheus metrics (`start(metrics: true)`), keyed by `name{labels}` as printed.
    /// go-libp2p 0.32 counts what it received in identify messages here (protocols, addresses,
    /// whether the peer lists identify push): the only view the daemon gives of what go learned
    /// from our identify.
    func metrics() async throws -> [String: Double] {
        guard let metricsPort else { throw ChildProcess.Failure("p2pd was started without metrics") }
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: metricsPort)
        let text = try await withDeadline(.seconds(20), "p2pd metrics") {
            try await DaemonSocket.with(address: address) { socket in
                try await socket.writer.write(ByteBuffer(string: "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"))
                var body = ByteBuffer()
                while let chunk = try await socket.readChunk() {
                    guard body.readableBytes + chunk.readableBytes <= 16 << 20 else { throw ChildProcess.Failure("metrics over 16 MiB") }
                    body.writeImmutableBuffer(chunk)
                }
                return String(buffer: body)
            }
        }
        guard text.hasPrefix("HTTP/1.") else { throw ChildProcess.Failure("metrics: not an HTTP response: \(text.prefix(200))") }
        var values: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            values[String(line[..<space])] = value
        }
        return values
    }

    /// One request on a connection of its own.
    /// Bounded by 60 s, above the daemon's own limits (the `timeout` fields the tests send).
    func request(_ request: [UInt8]) async throws -> DaemonResponse {
        let path = controlPath
        return try await withDeadline(.seconds(60), "p2pd request") {
            try await DaemonSocket.with(path: path) { try await $0.request(request) }
        }
    }

    /// CONNECT: the daemon dials `peer` at `addresses`.
    func connect(_ peer: PeerID, _ addresses: [Multiaddr], timeout seconds: Int64 = 20) async throws {
        _ = try await request(DaemonRequest.connect(peer, addresses, timeout: seconds))
    }

    /// LIST_PEERS: the peers it has connections to, with each connection's remote address.
    func peers() async throws -> [DaemonPeerInfo] {
        try await request(DaemonRequest.listPeers).peers
    }

    /// STREAM_HANDLER: inbound streams of `protocols` go to the unix socket at `path`.
    func setStreamHandler(path: String, _ protocols: [String]) async throws {
        _ = try await request(DaemonRequest.streamHandler(path: path, protocols))
    }

    /// STREAM_OPEN: the daemon opens a stream to `peer`; `body` gets the StreamInfo and the socket
    /// now carrying the stream's bytes.
    func withStream<T: Sendable>(
        to peer: PeerID, _ protocols: [String], _ body: (DaemonStreamInfo, DaemonSocket) async throws -> T
    ) async throws -> T {
        try await DaemonSocket.with(path: controlPath) { socket in
            let response = try await socket.request(DaemonRequest.streamOpen(peer, protocols, timeout: 20))
            guard let info = response.streamInfo else { throw ChildProcess.Failure("STREAM_OPEN response without StreamInfo") }
            return try await body(try DaemonStreamInfo(decoding: info), socket)
        }
    }

    /// DHT FIND_PEER.
    func findPeer(_ peer: PeerID, timeout seconds: Int64) async throws -> DaemonPeerInfo {
        let response = try await request(DaemonRequest.findPeer(peer, timeout: seconds))
        guard let info = response.dht?.peer else { throw ChildProcess.Failure("FIND_PEER response without a PeerInfo") }
        return info
    }

    /// A streaming DHT request (FIND_PROVIDERS, GET_CLOSEST_PEERS, SEARCH_VALUE): a Response
    /// carrying DHTResponse BEGIN, then one bare length-prefixed DHTResponse VALUE per item, then
    /// END (go-libp2p-daemon's conn.go). Returns the items; at most `limit` are read.
    func dhtStream(_ request: [UInt8], limit: Int = 256) async throws -> [(peer: DaemonPeerInfo?, value: [UInt8]?)] {
        let path = controlPath
        return try await withDeadline(.seconds(60), "p2pd streaming DHT request") {
            try await DaemonSocket.with(path: path) { socket in
                let begin = try await socket.request(request)
                guard begin.dht?.type == 0 else { throw ChildProcess.Failure("streaming DHT answer without BEGIN") }
                var items: [(peer: DaemonPeerInfo?, value: [UInt8]?)] = []
                while items.count < limit {
                    guard let bytes = try await socket.readMessage() else {
                        throw ChildProcess.Failure("the daemon closed a streaming DHT answer before END")
                    }
                    let item = try DaemonResponse.decodeDHT(bytes)
                    if item.type == 2 { return items }
                    guard item.type == 1 else { throw ChildProcess.Failure("DHTResponse of type \(item.type) in a stream") }
                    items.append((item.peer, item.value))
                }
                throw ChildProcess.Failure("more than \(limit) items in a streaming DHT answer")
            }
        }
    }

    /// DHT FIND_PROVIDERS of a CID (binary): the providers go found, at most `count`.
    func findProviders(cid: [UInt8], count: Int, timeout seconds: Int64) async throws -> [DaemonPeerInfo] {
        try await dhtStream(DaemonRequest.dht(.findProviders, cid: cid, count: count, timeout: seconds)).compactMap { $0.peer }
    }

    /// DHT GET_CLOSEST_PEERS of a key: the peers go's lookup ended with.
    func closestPeers(key: [UInt8], timeout seconds: Int64) async throws -> [PeerID] {
        try await dhtStream(DaemonRequest.dht(.getClosestPeers, key: key, timeout: seconds)).map { item in
            guard let value = item.value else { throw ChildProcess.Failure("GET_CLOSEST_PEERS item without a peer ID") }
            return try PeerID(bytes: value)
        }
    }

    /// DHT PROVIDE of a CID (binary): go stores it and announces it to the closest peers.
    func provide(cid: [UInt8], timeout seconds: Int64) async throws {
        _ = try await request(DaemonRequest.dht(.provide, cid: cid, timeout: seconds))
    }

    /// DHT GET_VALUE.
    func getValue(key: [UInt8], timeout seconds: Int64) async throws -> [UInt8] {
        let response = try await request(DaemonRequest.dht(.getValue, key: key, timeout: seconds))
        guard let value = response.dht?.value else { throw ChildProcess.Failure("GET_VALUE response without a value") }
        return value
    }

    /// DHT PUT_VALUE: go validates the record, stores it and sends it to the closest peers.
    func putValue(key: [UInt8], value: [UInt8], timeout seconds: Int64) async throws {
        _ = try await request(DaemonRequest.dht(.putValue, key: key, value: value, timeout: seconds))
    }

    /// DHT GET_PUBLIC_KEY: the peer's public key, marshalled by go.
    func publicKey(of peer: PeerID, timeout seconds: Int64) async throws -> [UInt8] {
        let response = try await request(DaemonRequest.dht(.getPublicKey, peer: peer, timeout: seconds))
        guard let value = response.dht?.value else { throw ChildProcess.Failure("GET_PUBLIC_KEY response without a value") }
        return value
    }

    /// PUBSUB PUBLISH.
    func publish(_ topic: String, _ data: [UInt8]) async throws {
        _ = try await request(DaemonRequest.pubsub(2, topic: topic, data: data))
    }

    /// PUBSUB LIST_PEERS: the peers it knows to be subscribed to `topic`.
    func pubsubPeers(_ topic: String) async throws -> [PeerID] {
        try await request(DaemonRequest.pubsub(1, topic: topic)).pubsubPeerIDs
    }

    /// PUBSUB SUBSCRIBE, collecting the messages in the background until `stop()`.
    func subscribe(_ topic: String) async throws -> DaemonSubscription {
        try await DaemonSubscription.start(controlPath: controlPath, topic: topic)
    }
}

/// A PUBSUB SUBSCRIBE connection: the daemon's subscription lasts as long as the connection.
final class DaemonSubscription: Sendable {
    private let task: Task<Void, Never>
    private let received: NIOLockedValueBox<[DaemonPubSubMessage]>
    private let failure: NIOLockedValueBox<String?>

    private init(task: Task<Void, Never>, received: NIOLockedValueBox<[DaemonPubSubMessage]>, failure: NIOLockedValueBox<String?>) {
        self.task = task
        self.received = received
        self.failure = failure
    }

    static func start(controlPath: String, topic: String) async throws -> DaemonSubscription {
        let received = NIOLockedValueBox<[DaemonPubSubMessage]>([])
        let failure = NIOLockedValueBox<String?>(nil)
        let subscribed = AsyncStream<Result<Void, any Error>>.makeStream()
        let task = Task {
            do {
                try await DaemonSocket.with(path: controlPath) { socket in
                    _ = try await socket.request(DaemonRequest.pubsub(3, topic: topic))
                    subscribed.continuation.yield(.success(()))
                    while !Task.isCancelled, let bytes = try await socket.readMessage() {
                        let message = try DaemonPubSubMessage(decoding: bytes)
                        received.withLockedValue { $0.append(message) }
                    }
                }
            } catch {
                if !Task.isCancelled { failure.withLockedValue { $0 = "\(error)" } }
                subscribed.continuation.yield(.failure(error))
            }
            subscribed.continuation.finish()
        }
        for await result in subscribed.stream {
            if case .failure(let error) = result { throw error }
            break
        }
        return DaemonSubscription(task: task, received: received, failure: failure)
    }

    /// The messages so far; throws if the feed failed.
    func messages() throws -> [DaemonPubSubMessage] {
        if let failure = failure.withLockedValue({ $0 }) { throw ChildProcess.Failure("subscription feed failed: \(failure)") }
        return received.withLockedValue { $0 }
    }

    func stop() async {
        task.cancel()
        await task.value
    }
}

/// Runs `body` with a started daemon; stops it afterwards. A failure carries its stderr.
func withDaemon<T: Sendable>(
    seed: UInt64, _ arguments: [String] = [], metrics: Bool = false, namespace: String? = nil, ip: String = "127.0.0.1",
    _ body: (P2PDaemon) async throws -> T
) async throws -> T {
    let daemon = try await P2PDaemon.start(seed: seed, arguments, metrics: metrics, namespace: namespace, ip: ip)
    do {
        let result = try await body(daemon)
        await daemon.stop()
        return result
    } catch {
        let log = daemon.log
        await daemon.stop()
        throw ChildProcess.Failure("\(error)\np2pd (seed \(seed)) stderr:\n\(log)")
    }
}

/// Sends `payload` on `stream` while reading it back, and returns what came back: p2pd's stream
/// proxy cannot pass a half-close, so echoes through go run full duplex.
func echoFullDuplex(_ stream: P2PStream, _ payload: ByteBuffer) async throws -> ByteBuffer {
    async let sent: Void = {
        var rest = payload
        while rest.readableBytes > 0 {
            try await stream.write(rest.readSlice(length: min(60_000, rest.readableBytes))!)
        }
    }()
    let back = try await stream.readExactly(payload.readableBytes)
    try await sent
    return back
}
