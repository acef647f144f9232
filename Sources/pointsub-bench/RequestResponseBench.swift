import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PointSub

/// `pointsub-bench rr`: request/response rate and latency of PointSub (client and server hosts
/// in this process, Noise + Yamux over loopback TCP, an echo handler) next to plain TCP
/// request/response with the same framing (PointSub messages, no libp2p) in the same run: once
/// with Swift tasks over `NIOAsyncChannel` (TCP), once in channel handlers only (NIO, the
/// physical limit; ÷NIO and p50×NIO are PointSub's rate and median latency relative to it).
///
/// For each payload size and number of requests in flight, both sides run the same load: that
/// many workers, each sending one request at a time and waiting for its reply (the protocol has
/// no pipelining), PointSub over pooled streams of one connection, TCP over one connection per
/// worker. Payloads are random bytes (compression is tried and skipped); one more row per size
/// uses compressible text at the highest in-flight level, so the compression cost shows.
enum RequestResponseBench {
    static let protocolID = "/pointsub-bench/echo/1.0.0"
    /// The diagnostic: the same framing on bare libp2p streams.
    static let rawProtocolID = "/pointsub-bench/raw-echo/1.0.0"
    static let sizes = [64, 1024, 64 * 1024, 1024 * 1024]
    static let inFlightLevels = [1, 64]

    enum Payload: String {
        case random
        case text
    }

    struct Cell {
        var size: Int
        var inFlight: Int
        var payload: Payload
    }

    /// What a run measures; both unless profiling one of them.
    enum Side: String, CaseIterable {
        case pointSub = "pointsub"
        case tcp
        /// Channel handlers only (`PureNIOEcho`): the physical limit.
        case nio
    }

    static func run(
        quick: Bool, compression: Bool, sizes: [Int] = sizes, inFlightLevels: [Int] = inFlightLevels,
        sides: Set<Side> = Set(Side.allCases), payloads: Set<Payload> = [.random, .text], rawStreams: Bool = false
    ) async throws {
        let phases = Phases(warmUp: .milliseconds(quick ? 100 : 500), measure: .milliseconds(quick ? 300 : 2500))
        var cells: [Cell] = []
        for size in sizes {
            if payloads.contains(.random) {
                for inFlight in inFlightLevels { cells.append(Cell(size: size, inFlight: inFlight, payload: .random)) }
            }
            if payloads.contains(.text) { cells.append(Cell(size: size, inFlight: inFlightLevels.last!, payload: .text)) }
        }

        if rawStreams {
            print("DIAGNOSTIC: the PointSub columns show bare libp2p streams (one per worker, same framing, no")
            print("PointSubClient/PointSubServer), to separate the transport's cost from PointSub's")
        }
        print("request/response, echo over loopback: PointSub (Noise + Yamux, pooled streams) vs plain TCP")
        print("(same framing, one request at a time per TCP connection), \(phases.measure) per cell after")
        print("\(phases.warmUp) warm-up; PointSub compression \(compression ? "on" : "off"), TCP never compresses")
        print("CPU µs: process CPU time per request, client and server together; CPU ratio: TCP's CPU µs / PointSub's")
        // What an encrypted transport can reach at best: it pays what plain TCP pays plus the
        // cipher. Each request and each response is sealed once and opened once (4 × size of
        // ChaChaPoly work per exchange, open costing about what seal does). Where both sides are
        // CPU-bound (the cores busy), the rate is inversely proportional to CPU per exchange, so
        // the best ratio is TCP CPU / (TCP CPU + cipher CPU).
        let sealRate = Bench.chachaRate(seconds: quick ? 0.3 : 1) * 1_048_576
        print(String(format: "ChaChaPoly seal rate on one core: %.0f MiB/s; \"enc. bound\": TCP CPU µs / (TCP CPU µs +", sealRate / 1_048_576))
        print("4 × size of seal/open), the ratio a transport that adds only encryption to TCP's costs reaches")
        print("load average at start: \(loadAverage())")
        let header = [
            pad("size", 7), pad("in-flight", 9, right: true), pad("payload", 8, right: true), " |",
            pad("PointSub req/s", 15, right: true), pad("p50 ms", 9, right: true), pad("p99 ms", 9, right: true),
            pad("CPU µs", 8, right: true), " |",
            pad("TCP req/s", 11, right: true), pad("p50 ms", 9, right: true), pad("p99 ms", 9, right: true),
            pad("CPU µs", 8, right: true), " |",
            pad("NIO req/s", 11, right: true), pad("p50 ms", 9, right: true), pad("p99 ms", 9, right: true),
            pad("CPU µs", 8, right: true), " |", pad("÷TCP", 6, right: true), pad("CPU ratio", 10, right: true),
            pad("enc.bound", 10, right: true), pad("÷NIO", 6, right: true), pad("p50×NIO", 8, right: true),
        ].joined()
        print(String(repeating: "-", count: header.count))
        print(header)
        print(String(repeating: "-", count: header.count))

        // Every client end on one event loop, every server end on the other, for PointSub and TCP
        // alike: like two peers on the two cores. (Round-robin placement put a client and its
        // server on the same loop in some runs and not in others, which moved TCP's CPU per
        // request by up to 2.4 times between runs.)
        let loops = Bench.twoLoops()
        let server = try await PlainTCPEchoServer.start(on: loops.server)
        let nioServer = try await PureNIOEcho.startServer(on: loops.server)
        let serverConfig = P2PHost.Configuration.defaults { $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")] }
        var lowest: (Cell, Double)?
        var lowestNIO: (Cell, Double)?
        do {
            try await withHost(configuration: serverConfig, eventLoopGroup: loops.server) { serverHost in
                let pointSubServer = try PointSubServer(host: serverHost, configuration: .defaults {
                    $0.compression = compression
                })
                try pointSubServer.start(protocolID) { (request: PointSubRequest) in request.payload }
                try serverHost.setStreamHandler(rawProtocolID) { stream in
                    var parser = PointSubMessageParser(maxBlockSize: PlainTCPEchoServer.maxBlockSize, accepting: [.request])
                    while let chunk = try await stream.read() {
                        parser.append(chunk)
                        while let request = try parser.next() {
                            try await stream.write(PointSubMessage(kind: .response, payload: request.payload).encoded())
                        }
                    }
                    await stream.close()
                }
                try await withHost(eventLoopGroup: loops.client) { clientHost in
                    _ = try await clientHost.connect(to: serverHost.addresses[0])
                    let client = try PointSubClient(host: clientHost, configuration: .defaults {
                        $0.compression = compression
                    })
                    for cell in cells {
                        let payload = makePayload(cell.payload, size: cell.size)
                        let before = client.statistics
                        var pointSub: Result?
                        if sides.contains(.pointSub) {
                            pointSub = try await measure(inFlight: cell.inFlight, phases: phases) { _, window in
                                if rawStreams {
                                    let stream = try await clientHost.newStream(to: serverHost.peerID, protocols: [rawProtocolID])
                                    var parser = PointSubMessageParser(
                                        maxBlockSize: PlainTCPEchoServer.maxBlockSize, accepting: [.response, .error])
                                    let samples = try await window.loop {
                                        try await exchange(
                                            payload, parser: &parser, write: { try await stream.write($0) },
                                            read: { try await stream.read() })
                                    }
                                    await stream.close()
                                    return samples
                                }
                                return try await window.loop {
                                    let reply = try await client.send(payload, to: serverHost.peerID, protocol: protocolID)
                                    guard reply.readableBytes == payload.readableBytes else {
                                        throw BenchError("PointSub reply of \(reply.readableBytes) bytes to \(payload.readableBytes)")
                                    }
                                }
                            }
                        }
                        let after = client.statistics
                        var tcp: Result?
                        if sides.contains(.tcp) {
                            tcp = try await PlainTCPEchoServer.measure(
                                server.address, from: loops.client, payload: payload, inFlight: cell.inFlight, phases: phases)
                        }
                        var nio: Result?
                        if sides.contains(.nio) {
                            nio = try await PureNIOEcho.measure(
                                nioServer.localAddress!, from: loops.client, payload: payload, inFlight: cell.inFlight,
                                phases: phases)
                        }
                        var nioRatio: Double?
                        var p50Ratio: Double?
                        if let pointSub, let nio {
                            nioRatio = pointSub.requestsPerSecond / nio.requestsPerSecond
                            p50Ratio = pointSub.p50 / nio.p50
                            if lowestNIO == nil || nioRatio! < lowestNIO!.1 { lowestNIO = (cell, nioRatio!) }
                        }
                        var ratio: Double?
                        var cpuRatio: Double?
                        var encryptionBound: Double?
                        if let tcp {
                            let cipherMicroseconds = 4 * Double(cell.size) / sealRate * 1_000_000
                            encryptionBound = tcp.cpuPerRequest / (tcp.cpuPerRequest + cipherMicroseconds)
                        }
                        if let pointSub, let tcp {
                            ratio = pointSub.requestsPerSecond / tcp.requestsPerSecond
                            cpuRatio = tcp.cpuPerRequest / pointSub.cpuPerRequest
                            if lowest == nil || ratio! < lowest!.1 { lowest = (cell, ratio!) }
                        }
                        func columns(_ result: Result?, rateWidth: Int) -> [String] {
                            guard let result else {
                                return [pad("-", rateWidth, right: true), pad("-", 9, right: true), pad("-", 9, right: true), pad("-", 8, right: true)]
                            }
                            return [
                                pad(String(format: "%.0f", result.requestsPerSecond), rateWidth, right: true),
                                pad(String(format: "%.3f", result.p50), 9, right: true),
                                pad(String(format: "%.3f", result.p99), 9, right: true),
                                pad(String(format: "%.1f", result.cpuPerRequest), 8, right: true),
                            ]
                        }
                        print(
                            ([pad(sizeLabel(cell.size), 7), pad("\(cell.inFlight)", 9, right: true), pad(cell.payload.rawValue, 8, right: true), " |"]
                                + columns(pointSub, rateWidth: 15) + [" |"] + columns(tcp, rateWidth: 11) + [" |"]
                                + columns(nio, rateWidth: 11) + [" |"]
                                + [pad(ratio.map { String(format: "%.2f", $0) } ?? "-", 6, right: true)]
                                + [pad(cpuRatio.map { String(format: "%.2f", $0) } ?? "-", 10, right: true)]
                                + [pad(encryptionBound.map { String(format: "%.2f", $0) } ?? "-", 10, right: true)]
                                + [pad(nioRatio.map { String(format: "%.2f", $0) } ?? "-", 6, right: true)]
                                + [pad(p50Ratio.map { String(format: "%.2f", $0) } ?? "-", 8, right: true)]).joined())
                        let retries = (after.retries - before.retries) + (after.staleStreamRetries - before.staleStreamRetries)
                        if retries > 0 || after.failed != before.failed {
                            print("  (PointSub client: \(retries) retries, \(after.failed - before.failed) failures)")
                        }
                    }
                    print(String(repeating: "-", count: header.count))
                    let stats = client.statistics
                    let serverStats = pointSubServer.statistics
                    print(
                        "PointSub client: \(stats.requests) requests, \(stats.streamsOpened) streams opened, "
                            + "\(stats.compressedRequests) requests and \(stats.compressedResponses) responses compressed; "
                            + "server: \(serverStats.requestsHandled) handled, \(serverStats.busyRefusals) busy refusals")
                    await client.close()
                    await pointSubServer.stop(gracePeriod: .seconds(1))
                }
            }
        } catch {
            await server.stop()
            try? await nioServer.close()
            throw error
        }
        await server.stop()
        try? await nioServer.close()
        print("load average at end: \(loadAverage())")
        if let (cell, ratio) = lowest {
            print(String(
                format: "lowest PointSub/TCP ratio %.2f (%@, %d in flight, %@)",
                ratio, sizeLabel(cell.size), cell.inFlight, cell.payload.rawValue))
        }
        if let (cell, ratio) = lowestNIO {
            print(String(
                format: "lowest PointSub/pure-NIO ratio %.2f (%@, %d in flight, %@); target ≥ 0.50 at 64 B and 1 KiB with 64 in flight, p50×NIO ≤ 1.5 at 1 in flight",
                ratio, sizeLabel(cell.size), cell.inFlight, cell.payload.rawValue))
        }
    }

    // MARK: - Load and measurement

    /// Warm-up (connections and streams opened, pools filled), then the measured window.
    struct Phases {
        var warmUp: Duration
        var measure: Duration
    }

    /// When one request started and when its reply was complete.
    struct Sample: Sendable {
        var start: ContinuousClock.Instant
        var end: ContinuousClock.Instant
    }

    struct Result {
        var requestsPerSecond: Double
        /// Milliseconds.
        var p50: Double
        var p99: Double
        /// Requests whose latency was sampled (started within the window).
        var samples: Int
        /// Process CPU time (user + system, both sides of the exchange) per request, in µs, over
        /// the whole run including warm-up. Less sensitive than the rate to other processes on
        /// the machine: with both sides CPU-bound on N cores, rate ≈ N / CPU per request.
        var cpuPerRequest: Double
    }

    /// The measured window, shared by the workers of one run. It opens once every worker
    /// completed a request and the warm-up time passed (so no worker is still opening its
    /// stream or connection), and closes at the first reply after `measure` has passed and at
    /// least two replies per worker arrived within it (so slow cells are not judged on a
    /// handful of requests). The workers keep the load up until it closed, so the window sees
    /// steady state only.
    final class Window: Sendable {
        private struct State {
            var waiting: Int
            var opens: ContinuousClock.Instant?
            var closes: ContinuousClock.Instant?
            var completed = 0
        }

        private let phases: Phases
        private let minCompletions: Int
        private let began = ContinuousClock.now
        private let state: NIOLockedValueBox<State>

        init(workers: Int, phases: Phases) {
            self.phases = phases
            self.minCompletions = 2 * workers
            self.state = NIOLockedValueBox(State(waiting: workers))
        }

        /// The window's bounds, once it closed.
        var bounds: (ContinuousClock.Instant, ContinuousClock.Instant)? {
            state.withLockedValue { s in s.opens.flatMap { opens in s.closes.map { (opens, $0) } } }
        }

        func workerReady() {
            state.withLockedValue { s in
                s.waiting -= 1
                if s.waiting == 0 { s.opens = max(ContinuousClock.now, began + phases.warmUp) }
            }
        }

        /// A reply arrived at `end`; returns whether the window has closed.
        func completed(at end: ContinuousClock.Instant) -> Bool {
            state.withLockedValue { s in
                guard s.closes == nil else { return true }
                guard let opens = s.opens, end >= opens else { return false }
                s.completed += 1
                if end >= opens + phases.measure && s.completed >= minCompletions { s.closes = end }
                return s.closes != nil
            }
        }

        /// Runs `request` repeatedly until the window has closed; returns when each ran.
        func loop(_ request: () async throws -> Void) async throws -> [Sample] {
            var samples: [Sample] = []
            samples.reserveCapacity(4096)
            let clock = ContinuousClock()
            while true {
                let start = clock.now
                try await request()
                let end = clock.now
                samples.append(Sample(start: start, end: end))
                if samples.count == 1 { workerReady() }
                if completed(at: end) { return samples }
            }
        }
    }

    /// Runs `inFlight` workers, each looping with `window.loop`, and evaluates the window:
    /// requests/s from the replies completed within it, latencies of the requests started within it.
    static func measure(
        inFlight: Int, phases: Phases, worker: @escaping @Sendable (Int, Window) async throws -> [Sample]
    ) async throws -> Result {
        let window = Window(workers: inFlight, phases: phases)
        let cpuBefore = processCPUTime()
        let samples = try await withThrowingTaskGroup(of: [Sample].self) { group in
            for index in 0..<inFlight {
                group.addTask { try await worker(index, window) }
            }
            return try await group.reduce(into: [Sample]()) { $0 += $1 }
        }
        let cpu = processCPUTime() - cpuBefore
        guard let (opens, closes) = window.bounds else { throw BenchError("the measured window never opened") }
        let completed = samples.count(where: { $0.end >= opens && $0.end <= closes })
        var latencies = samples.filter { $0.start >= opens && $0.start < closes }.map { ($0.end - $0.start).seconds * 1000 }
        latencies.sort()
        func percentile(_ q: Double) -> Double {
            guard !latencies.isEmpty else { return .nan }
            let rank = Int((q * Double(latencies.count)).rounded(.up)) - 1
            return latencies[min(max(rank, 0), latencies.count - 1)]
        }
        return Result(
            requestsPerSecond: Double(completed) / (closes - opens).seconds,
            p50: percentile(0.50), p99: percentile(0.99), samples: latencies.count,
            cpuPerRequest: cpu * 1e6 / Double(samples.count))
    }

    /// One request/reply with PointSub framing over a byte stream, without PointSub's client:
    /// the message is encoded per request (as `PointSubClient` does), never compressed.
    static func exchange(
        _ payload: ByteBuffer, parser: inout PointSubMessageParser, write: (ByteBuffer) async throws -> Void,
        read: () async throws -> ByteBuffer?
    ) async throws {
        try await write(PointSubMessage(kind: .request, payload: payload).encoded())
        while true {
            if let reply = try parser.next() {
                guard reply.kind == .response, reply.payload.readableBytes == payload.readableBytes else {
                    throw BenchError("reply of \(reply.payload.readableBytes) bytes to \(payload.readableBytes)")
                }
                return
            }
            guard let chunk = try await read() else { throw BenchError("the server closed the stream") }
            parser.append(chunk)
        }
    }

    // MARK: - Payloads and formatting

    static func makePayload(_ kind: Payload, size: Int) -> ByteBuffer {
        switch kind {
        case .random:
            var generator = SystemRandomNumberGenerator()
            var buffer = ByteBuffer()
            buffer.reserveCapacity(size)
            var left = size
            while left > 0 {
                let word = generator.next() as UInt64
                _ = withUnsafeBytes(of: word) { buffer.writeBytes($0.prefix(left)) }
                left -= min(8, left)
            }
            return buffer
        case .text:
            // Log-like lines: compress by zlib to roughly a fifth.
            var buffer = ByteBuffer()
            buffer.reserveCapacity(size + 64)
            var line = 0
            while buffer.readableBytes < size {
                buffer.writeString(
                    "\(line) level=info peer=node-\(line % 17) op=get key=/data/\(line * 7919 % 1000) bytes=\(line * 31 % 4096)\n")
                line += 1
            }
            buffer.moveWriterIndex(to: size)
            return buffer
        }
    }

    static func sizeLabel(_ size: Int) -> String {
        if size >= 1 << 20 { return "\(size >> 20) MiB" }
        if size >= 1 << 10 { return "\(size >> 10) KiB" }
        return "\(size) B"
    }

    static func pad(_ text: String, _ width: Int, right: Bool = false) -> String {
        let fill = String(repeating: " ", count: max(0, width - text.count))
        return right ? fill + text : text + fill
    }

    /// User + system CPU seconds of this process so far.
    static func processCPUTime() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
        return seconds(usage.ru_utime) + seconds(usage.ru_stime)
    }

    static func loadAverage() -> String {
        guard let text = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8) else { return "unknown" }
        return text.split(separator: " ").prefix(3).joined(separator: " ")
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// The baseline: request/response with PointSub's framing over plain TCP, no libp2p. The
/// server reads a request message per connection, answers with a response message of the
/// same payload, and waits for the next; a client connection sends one request at a time.
/// Both sides use Swift tasks over `NIOAsyncChannel`, as PointSub's client and handler do.
struct PlainTCPEchoServer: Sendable {
    typealias Connection = NIOAsyncChannel<ByteBuffer, ByteBuffer>
    static let maxBlockSize = 32 * 1024 * 1024

    let channel: any Channel
    let task: Task<Void, Never>
    var address: SocketAddress { channel.localAddress! }

    static func start(on group: any EventLoopGroup) async throws -> PlainTCPEchoServer {
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .bind(host: "127.0.0.1", port: 0) { channel in
                channel.eventLoop.makeCompletedFuture { try Connection(wrappingChannelSynchronously: channel) }
            }
        let channel = server.channel
        let task = Task { () -> Void in
            _ = try? await server.executeThenClose { connections in
                await withDiscardingTaskGroup { group in
                    do {
                        for try await connection in connections {
                            group.addTask { try? await serve(connection) }
                        }
                    } catch {}
                }
            }
        }
        return PlainTCPEchoServer(channel: channel, task: task)
    }

    private static func serve(_ connection: Connection) async throws {
        try await connection.executeThenClose { inbound, outbound in
            var parser = PointSubMessageParser(maxBlockSize: maxBlockSize, accepting: [.request])
            for try await chunk in inbound {
                parser.append(chunk)
                while let request = try parser.next() {
                    let payload = try request.decodedPayload(maxBlockSize: maxBlockSize)
                    try await outbound.write(PointSubMessage(kind: .response, payload: payload).encoded())
                }
            }
        }
    }

    /// Closes the listener; connections end when their clients close them.
    func stop() async {
        try? await channel.close()
        await task.value
    }

    /// `inFlight` connections, each a worker sending `payload` one request at a time.
    static func measure(
        _ address: SocketAddress, from group: any EventLoopGroup, payload: ByteBuffer, inFlight: Int,
        phases: RequestResponseBench.Phases
    ) async throws -> RequestResponseBench.Result {
        var connections: [Connection] = []
        for _ in 0..<inFlight {
            connections.append(
                try await ClientBootstrap(group: group)
                    .channelOption(.socketOption(.tcp_nodelay), value: 1)
                    .connect(to: address) { channel in
                        channel.eventLoop.makeCompletedFuture { try Connection(wrappingChannelSynchronously: channel) }
                    })
        }
        let opened = connections
        return try await RequestResponseBench.measure(inFlight: inFlight, phases: phases) { index, window in
            try await opened[index].executeThenClose { inbound, outbound in
                var replies = inbound.makeAsyncIterator()
                var parser = PointSubMessageParser(maxBlockSize: maxBlockSize, accepting: [.response, .error])
                return try await window.loop {
                    try await RequestResponseBench.exchange(
                        payload, parser: &parser, write: { try await outbound.write($0) }, read: { try await replies.next() })
                }
            }
        }
    }
}
