import Crypto
import Foundation
import NIOCore
import NIOPosix
import Noise
import PointSub

/// `swift run -c release pointsub-bench [host | stream | connect | rr | pubsub] [--quick] [--default-executor]`
///
/// - `host`: for this machine, the ChaChaPoly seal rate on one core, single-stream throughput
///   over raw TCP and over Noise + Yamux, connect + first stream + 1-byte echo latency, and
///   secured connections per second.
/// - `stream`: only the seal rate and the two single-stream throughputs of `host`.
/// - `stream`: only the seal rate and the two single-stream throughputs of `host`.
/// - `connect`: only the connect + first stream + echo latencies (`--iterations=N`, default 500),
///   for profiling them; `--two-processes` puts the server in a child process (`echo-server`),
///   so that client and server do not share event loops, as between real peers.
/// - `rr`: PointSub request/response (requests/s, p50/p99 latency) next to plain TCP with the
///   same framing (see `RequestResponseBench`).
/// - `pubsub`: a 50-node gossipsub and floodsub broadcast network in this process: delivery
///   latency, copies and transmissions per message (see `PubSubBench`).
/// - `attack`: the attacks of issue 10 from 127.0.0.2 against a server process while an honest
///   client on 127.0.0.1 pings and sends (see `AttackBench`); not part of the default run.
/// - no subcommand: all three.
@main
struct Bench {
    static let usage = """
        usage: pointsub-bench [host | stream | connect | rr | pubsub | dht | relay | attack] [--quick] [--default-executor] [--iterations=N] [--two-processes] [--no-compression] [--size=BYTES] [--in-flight=N] [--only=pointsub|tcp|nio] [--payload=random|text] [--raw-streams] [--rate=N] [--nodes=N] [--degree=N] [--seconds=N] [--router=gossipsub|floodsub] [--protocol=1.1|1.2|both] [--message-size=BYTES] [--validate-ms=N]
          host                host-level figures (crypto, stream throughput, connect latency)
          stream              only the seal rate, raw TCP and single-stream throughput of `host`
          connect             only the connect + first stream + echo latencies of `host`
          --iterations=N      connect: samples per figure (default 500)
          --two-processes     connect: the server runs in a child process
          rr                  request/response: PointSub vs plain TCP (tasks, and pure NIO) with the same framing
          dht                 Kademlia: --nodes (default 200) in-process DHT nodes; lookups (found %, hops,
                              requests, latency), memory per node, then with a tenth of the nodes gone
          relay               circuit relay v2 on 127.0.0.1: time to reservation, time to a relayed
                              connection, ping and echo throughput relayed vs direct
          pubsub              broadcast: 50 in-process nodes on a random 6-regular graph, gossipsub
                              and floodsub, messages at a fixed rate; latency, copies, transmissions
          attack              attacks from 127.0.0.2 on a server process, an honest client on
                              127.0.0.1: honest success and latency, server peak RSS and fds
          --attack=NAME       attack: only this attack (repeatable; none, rsa-key, silent-sockets,
                              idle-connections, idle-requests, window-fill, ping-flood,
                              unknown-stream, zip-bomb)
          --budget=MIB        attack: the server's system memory budget (default 256)
          (none)              all three
          --quick             shorter runs
          --default-executor  keep Swift's default executor (default: NIO's event loops)
          --no-compression    rr: PointSub client and server with compression off
          --size=BYTES        rr: only this payload size (repeatable)
          --in-flight=N       rr: only this number of requests in flight (repeatable)
          --only=SIDE         rr: only pointsub, tcp (tasks) or nio (handlers only), for profiling
          --payload=KIND      rr: only random or only text payloads
          --raw-streams       rr diagnostic: bare libp2p streams with the same framing in place of
                              PointSubClient/PointSubServer
          --rate=N            pubsub: messages published per second (default 100)
          --nodes=N           pubsub: nodes (default 50)
          --degree=N          pubsub: links per node (default 6)
          --seconds=N         pubsub: measured seconds (default 10, --quick 3)
          --router=NAME       pubsub: only gossipsub or only floodsub
          --protocol=V        pubsub: gossipsub v1.2 (default, IDONTWANT), 1.1, or both (1.2 then 1.1)
          --message-size=N    pubsub: bytes of data per message (default 128; IDONTWANT from 1024)
          --validate-ms=N     pubsub: every node's topic validator takes N ms per message (default none)
        """

    static func main() async throws {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if arguments.contains("--help") || arguments.contains("-h") {
            print(usage)
            return
        }
        let flags: Set<String> = ["--quick", "--default-executor", "--no-compression", "--raw-streams", "--two-processes"]
        func values(_ option: String) -> [Int]? {
            let given = arguments.filter { $0.hasPrefix(option + "=") }.map { Int($0.dropFirst(option.count + 1)) }
            guard !given.isEmpty else { return nil }
            guard given.allSatisfy({ ($0 ?? 0) > 0 }) else {
                FileHandle.standardError.write(Data("pointsub-bench: \(option) needs a positive integer\n".utf8))
                exit(2)
            }
            return given.map { $0! }
        }
        let sizes = values("--size")
        let iterations = values("--iterations")?.last
        let inFlight = values("--in-flight")
        var sides = Set(RequestResponseBench.Side.allCases)
        if let only = arguments.last(where: { $0.hasPrefix("--only=") }) {
            guard let side = RequestResponseBench.Side(rawValue: String(only.dropFirst("--only=".count))) else {
                FileHandle.standardError.write(Data("pointsub-bench: --only takes pointsub or tcp\n".utf8))
                exit(2)
            }
            sides = [side]
        }
        var payloads: Set<RequestResponseBench.Payload> = [.random, .text]
        if let only = arguments.last(where: { $0.hasPrefix("--payload=") }) {
            guard let payload = RequestResponseBench.Payload(rawValue: String(only.dropFirst("--payload=".count))) else {
                FileHandle.standardError.write(Data("pointsub-bench: --payload takes random or text\n".utf8))
                exit(2)
            }
            payloads = [payload]
        }
        var pubsub = PubSubBench.Options()
        if let rate = values("--rate")?.last { pubsub.rate = rate }
        if let nodes = values("--nodes")?.last { pubsub.nodes = nodes }
        if let degree = values("--degree")?.last { pubsub.degree = degree }
        if let seconds = values("--seconds")?.last { pubsub.measure = .seconds(seconds) }
        guard pubsub.nodes > pubsub.degree, pubsub.degree >= 2 else {
            FileHandle.standardError.write(Data("pointsub-bench: --degree must be at least 2 and below --nodes\n".utf8))
            exit(2)
        }
        if let only = arguments.last(where: { $0.hasPrefix("--router=") }) {
            guard let router = PubSubBench.Router(rawValue: String(only.dropFirst("--router=".count))) else {
                FileHandle.standardError.write(Data("pointsub-bench: --router takes gossipsub or floodsub\n".utf8))
                exit(2)
            }
            pubsub.routers = [router]
        }
        if let version = arguments.last(where: { $0.hasPrefix("--protocol=") })?.dropFirst("--protocol=".count) {
            let gossip: [PubSubBench.Router]
            switch version {
            case "1.2": gossip = [.gossipsub]
            case "1.1": gossip = [.gossipsub11]
            case "both": gossip = [.gossipsub, .gossipsub11]
            default:
                FileHandle.standardError.write(Data("pointsub-bench: --protocol takes 1.1, 1.2 or both\n".utf8))
                exit(2)
            }
            pubsub.routers = pubsub.routers.flatMap { $0 == .gossipsub ? gossip : [$0] }
        }
        if let size = values("--message-size")?.last { pubsub.payloadSize = size }
        if let milliseconds = values("--validate-ms")?.last { pubsub.validation = .milliseconds(milliseconds) }
        let valueOptions = [
            "--attack=", "--budget=", "--address=", "--size=", "--in-flight=", "--only=", "--payload=", "--iterations=", "--rate=", "--nodes=", "--degree=", "--seconds=", "--router=",
            "--protocol=", "--message-size=", "--validate-ms=",
        ]
        let commands = arguments.filter { argument in
            !flags.contains(argument) && !valueOptions.contains(where: { argument.hasPrefix($0) })
        }
        guard commands.count <= 1, commands.allSatisfy({ ["host", "stream", "connect", "rr", "pubsub", "dht", "relay", "echo-server", "attack", "attack-server", "attack-honest"].contains($0) }) else {
            FileHandle.standardError.write(Data("pointsub-bench: unexpected arguments \(commands)\n\(usage)\n".utf8))
            exit(2)
        }
        // Run Swift tasks on NIO's event loops, as the CLI does: no thread hop between a task and
        // its channel's loop.
        if !arguments.contains("--default-executor") {
            _ = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
        }
        let quick = arguments.contains("--quick")
        let command = commands.first
        if command == "echo-server" {
            try await echoServer()
            return
        }
        var attack = AttackBench.Options()
        if let budget = values("--budget")?.last { attack.budgetMiB = budget }
        if command == "attack-server" {
            try await AttackBench.serve(budgetMiB: attack.budgetMiB)
            return
        }
        if let seconds = values("--seconds")?.last { attack.seconds = seconds }
        if command == "attack-honest" {
            guard let text = arguments.last(where: { $0.hasPrefix("--address=") })?.dropFirst("--address=".count),
                let address = Multiaddr(text)
            else {
                FileHandle.standardError.write(Data("pointsub-bench: attack-honest needs --address=MULTIADDR\n".utf8))
                exit(2)
            }
            try await AttackBench.honest(address: address, seconds: attack.seconds)
            return
        }
        let chosen = arguments.filter { $0.hasPrefix("--attack=") }.map { String($0.dropFirst("--attack=".count)) }
        if !chosen.isEmpty {
            let known = Set(AttackBench.attacks.map(\.name))
            guard chosen.allSatisfy(known.contains) else {
                FileHandle.standardError.write(Data("pointsub-bench: --attack takes one of \(known.sorted())\n".utf8))
                exit(2)
            }
            attack.only = Set(chosen)
        }
        print("pointsub-bench on \(machineDescription())")
        if command == nil || command == "host" {
            print(String(repeating: "-", count: 72))
            try await hostFigures(quick: quick)
        }
        if command == "stream" {
            print(String(repeating: "-", count: 72))
            try await throughputFigures(quick: quick)
        }
        if command == "connect" {
            print(String(repeating: "-", count: 72))
            if arguments.contains("--two-processes") {
                try await withEchoServerProcess { server in
                    try await connectFigures(iterations: iterations ?? (quick ? 50 : 500), server: server)
                }
            } else {
                try await connectFigures(iterations: iterations ?? (quick ? 50 : 500))
            }
        }
        if command == "attack" {
            print(String(repeating: "-", count: 72))
            try await AttackBench.run(options: attack)
        }
        if command == nil || command == "rr" {
            if command == nil { print() }
            try await RequestResponseBench.run(
                quick: quick, compression: !arguments.contains("--no-compression"),
                sizes: sizes ?? RequestResponseBench.sizes, inFlightLevels: inFlight ?? RequestResponseBench.inFlightLevels, sides: sides,
                payloads: payloads, rawStreams: arguments.contains("--raw-streams"))
        }
        if command == nil || command == "pubsub" {
            if command == nil { print() }
            try await PubSubBench.run(quick: quick, options: pubsub)
        }
        // Not part of the default run (it builds a whole network): `dht [--nodes=N]`.
        if command == "relay" {
            try await RelayBench.run(quick: quick)
            return
        }
        if command == "dht" {
            try await DHTBench.run(nodes: values("--nodes")?.last ?? 200, lookups: quick ? 30 : 100)
        }
    }

    /// The host-level figures.
    static func hostFigures(quick: Bool) async throws {
        try await throughputFigures(quick: quick)

        try await connectFigures(iterations: quick ? 50 : 500)

        let (streamMedian, streamP99) = try await streamEchoLatency(iterations: quick ? 200 : 2000)
        print(String(format: "new stream + 1-byte echo (identified peer)   median %8.3f ms, p99 %.3f ms", streamMedian, streamP99))

        let perSecond = try await connectionsPerSecond(seconds: quick ? 1 : 3, workers: 4)
        print(String(format: "new secured connections per second (4 dialers)   %8.0f /s", perSecond))
    }

    /// The seal rate, raw TCP and single-stream throughput.
    static func throughputFigures(quick: Bool) async throws {
        let seal = chachaRate(seconds: quick ? 0.5 : 2)
        print(String(format: "ChaChaPoly seal (one core, 65519-byte messages)   %8.1f MiB/s", seal))
        let allocating = swiftCryptoChachaRate(seconds: quick ? 0.3 : 1)
        print(String(format: "  the same through swift-crypto's ChaChaPoly API  %8.1f MiB/s  (a new Data per call)", allocating))

        let streamBytes = quick ? 64 << 20 : 512 << 20
        var cpu = RequestResponseBench.processCPUTime()
        let tcp = try await rawTCPThroughput(bytes: streamBytes)
        let tcpCPU = (RequestResponseBench.processCPUTime() - cpu) * 1e9 / Double(streamBytes)
        print(String(format: "raw TCP single connection                        %8.1f MiB/s  CPU %.2f ns/B", tcp, tcpCPU))

        cpu = RequestResponseBench.processCPUTime()
        let p2p = try await streamThroughput(bytes: streamBytes)
        let p2pCPU = (RequestResponseBench.processCPUTime() - cpu) * 1e9 / Double(streamBytes)
        print(String(format: "Noise+Yamux single stream                        %8.1f MiB/s  CPU %.2f ns/B  (%.2f × seal rate)", p2p, p2pCPU, p2p / seal))
        // Both ends share the two cores: their CPU per byte, less TCP's and one seal and one open
        // per byte, is what Noise, Yamux and the host add.
        let cipher = 2 * 1e9 / (seal * 1_048_576)
        print(String(format: "  CPU per byte beyond TCP and the cipher (2 × %.2f ns/B)  %.2f ns/B", cipher / 2, p2pCPU - tcpCPU - cipher))
        // TLS (issue 11): AES-GCM, which this CPU runs in hardware.
        cpu = RequestResponseBench.processCPUTime()
        let tls = try await streamThroughput(bytes: streamBytes, security: [.tls])
        let tlsCPU = (RequestResponseBench.processCPUTime() - cpu) * 1e9 / Double(streamBytes)
        print(String(format: "TLS 1.3 (AES-GCM)+Yamux single stream            %8.1f MiB/s  CPU %.2f ns/B", tls, tlsCPU))
    }

    /// connect + first stream + echo, to a new and to a known peer.
    static func connectFigures(iterations: Int, server: Multiaddr? = nil) async throws {
        let latency = try await connectEchoLatency(iterations: iterations, server: server)
        print(String(format: "connect + first stream + 1-byte echo   median %8.3f ms, p99 %.3f ms", latency.median, latency.p99))
        print(String(format: "  of which (medians): connect %.3f ms, stream open %.3f ms, echo %.3f ms", latency.connect, latency.open, latency.echo))

        let known = try await connectEchoLatency(iterations: iterations, knownPeer: true, server: server)
        print(String(format: "same, reconnecting to a known (identified) peer  median %8.3f ms, p99 %.3f ms", known.median, known.p99))
    }

    static func machineDescription() -> String {
        let cpu = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?
            .split(separator: "\n").first { $0.hasPrefix("model name") }
            .map { $0.split(separator: ":", maxSplits: 1)[1].trimmingCharacters(in: .whitespaces) } ?? "unknown CPU"
        return "\(cpu), \(System.coreCount) cores"
    }

    static func chachaRate(seconds: Double) -> Double {
        var state = NoiseHandshakeState(role: .initiator, staticKey: .init())
        var responder = NoiseHandshakeState(role: .responder, staticKey: .init())
        _ = try! responder.readMessage(state.writeMessage(payload: []))
        _ = try! state.readMessage(responder.writeMessage(payload: []))
        _ = try! responder.readMessage(state.writeMessage(payload: []))
        var (cipher, _) = state.split()
        return sealRate(seconds: seconds) { message, out in
            message.withUnsafeBytes { try! cipher.seal($0, into: &out) }
        }
    }

    /// MiB/s of `seal` over 65,519-byte messages for `seconds`, into a buffer cleared per call.
    private static func sealRate(seconds: Double, _ seal: ([UInt8], inout ByteBuffer) -> Void) -> Double {
        let message = [UInt8](repeating: 0xAB, count: NoiseHandler.maxPlaintextLength)
        var out = ByteBuffer()
        out.reserveCapacity(70_000)
        let clock = ContinuousClock()
        let start = clock.now
        var bytes = 0
        while (clock.now - start) < .seconds(seconds) {
            for _ in 0..<16 {
                out.clear()
                seal(message, &out)
                bytes += message.count
            }
        }
        return Double(bytes) / 1_048_576 / (clock.now - start).seconds
    }

    /// `ChaChaPoly.seal` of swift-crypto, which returns a fresh `Data` per message: what Noise
    /// used before it sealed into its own buffers (`chachaRate`).
    static func swiftCryptoChachaRate(seconds: Double) -> Double {
        let key = SymmetricKey(size: .bits256)
        let nonce = ChaChaPoly.Nonce()
        return sealRate(seconds: seconds) { message, out in
            let box = try! ChaChaPoly.seal(message, using: key, nonce: nonce)
            out.writeBytes(box.ciphertext)
            out.writeBytes(box.tag)
        }
    }

    /// Counts bytes until `expected`, then completes.
    final class Sink: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        let expected: Int
        let done: EventLoopPromise<Void>
        var received = 0
        init(expected: Int, done: EventLoopPromise<Void>) {
            self.expected = expected
            self.done = done
        }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            received += unwrapInboundIn(data).readableBytes
            if received >= expected { done.succeed() }
        }
    }

    static func rawTCPThroughput(bytes: Int) async throws -> Double {
        let loops = twoLoops()
        let done = loops.server.makePromise(of: Void.self)
        let server = try await ServerBootstrap(group: loops.server)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Sink(expected: bytes, done: done))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let client = try await ClientBootstrap(group: loops.client)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connect(to: server.localAddress!) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        let chunk = ByteBuffer(repeating: 0x5A, count: 256 * 1024)
        let clock = ContinuousClock()
        let start = clock.now
        try await client.executeThenClose { _, outbound in
            var sent = 0
            while sent < bytes {
                try await outbound.write(chunk)
                sent += chunk.readableBytes
            }
            try await done.futureResult.get()
        }
        let rate = Double(bytes) / 1_048_576 / (clock.now - start).seconds
        try await server.close()
        return rate
    }

    static func serverConfig() -> P2PHost.Configuration {
        .defaults {
            $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")]
            $0.services = [EchoService()]
        }
    }

    /// The two event loops of NIO's shared group (this machine has two cores), so that the two
    /// ends of a one-connection benchmark run on different cores, as two machines would. Left to
    /// round robin, both ends sometimes land on one loop, and one core then does both sides' work
    /// (it halved the raw TCP and the stream figures in about one run out of three).
    static func twoLoops() -> (server: any EventLoop, client: any EventLoop) {
        let group = MultiThreadedEventLoopGroup.singleton
        let first = group.next()
        var second = group.next()
        while second === first { second = group.next() }
        return (first, second)
    }

    static func streamThroughput(bytes: Int, security: [SecurityOption] = [.noise]) async throws -> Double {
        let loops = twoLoops()
        var serverConfiguration = serverConfig()
        serverConfiguration.security = security
        let server = P2PHost(identity: .generateEd25519(), configuration: serverConfiguration, eventLoopGroup: loops.server)
        let client = P2PHost(identity: .generateEd25519(), configuration: .defaults { $0.security = security }, eventLoopGroup: loops.client)
        try await server.start()
        try await client.start()
        do {
            try server.setStreamHandler("/bench/sink/1.0.0") { stream in
                var received = 0
                while let chunk = try await stream.read() { received += chunk.readableBytes }
                try await stream.write(ByteBuffer(string: "\(received)"))
            }
            _ = try await client.connect(to: server.addresses[0])
            let stream = try await client.newStream(to: server.peerID, protocols: ["/bench/sink/1.0.0"])
            let chunk = ByteBuffer(repeating: 0x5A, count: 256 * 1024)
            let clock = ContinuousClock()
            let start = clock.now
            var sent = 0
            while sent < bytes {
                try await stream.write(chunk)
                sent += chunk.readableBytes
            }
            try await stream.closeWrite()
            let reply = try await stream.readToEnd(maxBytes: 64)
            let elapsed = (clock.now - start).seconds
            precondition(String(buffer: reply) == "\(bytes)", "sink received \(String(buffer: reply)) of \(bytes)")
            await client.shutdown()
            await server.shutdown()
            return Double(bytes) / 1_048_576 / elapsed
        } catch {
            await client.shutdown()
            await server.shutdown()
            throw error
        }
    }

    struct Latency {
        var median: Double
        var p99: Double
        var connect: Double
        var open: Double
        var echo: Double
    }

    /// `knownPeer`: the stream is opened through `P2PHost.newStream`, which proposes the protocol
    /// lazily because identify (on an earlier connection) said the peer serves it — what a node
    /// reconnecting to a peer it knows gets. Otherwise the first stream negotiates eagerly.
    ///
    /// `server`: the address (with `/p2p/`) of an echo server elsewhere; by default one runs in
    /// this process (a new one per call).
    static func connectEchoLatency(iterations: Int, knownPeer: Bool = false, server: Multiaddr? = nil) async throws -> Latency {
        if let server {
            return try await withHost { client in
                try await connectEchoLatency(iterations: iterations, knownPeer: knownPeer, client: client, server: server)
            }
        }
        return try await withHost(configuration: serverConfig()) { server in
            try await withHost { client in
                try await connectEchoLatency(iterations: iterations, knownPeer: knownPeer, client: client, server: server.addresses[0])
            }
        }
    }

    static func connectEchoLatency(iterations: Int, knownPeer: Bool, client: P2PHost, server address: Multiaddr) async throws -> Latency {
                let serverPeer = address.peerID!
                var total: [Double] = []
                var connect: [Double] = []
                var open: [Double] = []
                var echo: [Double] = []
                let clock = ContinuousClock()
                for i in 0..<(iterations + 10) {
                    let t0 = clock.now
                    let connection = try await client.connect(to: address)
                    let t1 = clock.now
                    let stream =
                        knownPeer
                        ? try await client.newStream(to: serverPeer, protocols: [EchoService.protocolID])
                        : try await connection.newStream(protocols: [EchoService.protocolID])
                    let t2 = clock.now
                    try await stream.write(ByteBuffer(bytes: [42]))
                    let reply = try await stream.readExactly(1)
                    let t3 = clock.now
                    precondition(reply.getInteger(at: reply.readerIndex, as: UInt8.self) == 42)
                    if i >= 10 {  // the first few warm up
                        total.append((t3 - t0).seconds * 1000)
                        connect.append((t1 - t0).seconds * 1000)
                        open.append((t2 - t1).seconds * 1000)
                        echo.append((t3 - t2).seconds * 1000)
                    }
                    stream.reset()
                    await connection.close(graceful: false)
                }
                func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }
                let sorted = total.sorted()
                return Latency(
                    median: median(total), p99: sorted[min(sorted.count - 1, Int(Double(sorted.count) * 0.99))],
                    connect: median(connect), open: median(open), echo: median(echo))
    }

    /// `echo-server`: an echo host on 127.0.0.1; prints its address, exits when stdin closes.
    static func echoServer() async throws {
        try await withHost(configuration: serverConfig()) { server in
            FileHandle.standardOutput.write(Data("\(server.addresses[0])\n".utf8))
            // Blocking read on a thread of its own, not on an event loop.
            Thread.detachNewThread {
                _ = FileHandle.standardInput.readDataToEndOfFile()
                exit(0)
            }
            while true { try await Task.sleep(for: .seconds(3600)) }
        }
    }

    /// Runs `body` with the address of an `echo-server` child process, which ends with it.
    static func withEchoServerProcess<T: Sendable>(_ body: @Sendable (Multiaddr) async throws -> T) async throws -> T {
        let extra = CommandLine.arguments.contains("--default-executor") ? ["--default-executor"] : []
        return try await withServerProcess(["echo-server"] + extra) { address, _ in try await body(address) }
    }

    /// Starts this binary with `arguments` as a server that prints its address on its first line
    /// and runs until its stdin closes; runs `body` with that address and the child's pid.
    static func withServerProcess<T: Sendable>(
        _ arguments: [String], _ body: @Sendable (Multiaddr, Int32) async throws -> T
    ) async throws -> T {
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/proc/self/exe")
        child.arguments = arguments
        let input = Pipe()
        let output = Pipe()
        child.standardInput = input
        child.standardOutput = output
        try child.run()
        defer {
            try? input.fileHandleForWriting.close()
            child.waitUntilExit()
        }
        let line = await withCheckedContinuation { (continuation: CheckedContinuation<String, Never>) in
            Thread.detachNewThread {
                var bytes: [UInt8] = []
                while let byte = try? output.fileHandleForReading.read(upToCount: 1)?.first, byte != UInt8(ascii: "\n") {
                    bytes.append(byte)
                }
                continuation.resume(returning: String(decoding: bytes, as: UTF8.self))
            }
        }
        guard let address = Multiaddr(line[...]), address.peerID != nil else {
            throw HostError(.invalidAddress, "\(arguments[0]) printed \(line.debugDescription)")
        }
        return try await body(address, child.processIdentifier)
    }

    /// Streams on one open connection to a peer that identify has described (so the protocol is
    /// proposed lazily).
    static func streamEchoLatency(iterations: Int) async throws -> (Double, Double) {
        try await withHost(configuration: serverConfig()) { server in
            try await withHost { client in
                let connection = try await client.connect(to: server.addresses[0])
                try await IdentifyService.identify(connection, host: client)
                let clock = ContinuousClock()
                var samples: [Double] = []
                for i in 0..<(iterations + 20) {
                    let start = clock.now
                    let stream = try await client.newStream(to: server.peerID, protocols: [EchoService.protocolID])
                    try await stream.write(ByteBuffer(bytes: [7]))
                    _ = try await stream.readExactly(1)
                    if i >= 20 { samples.append((clock.now - start).seconds * 1000) }
                    await stream.close()
                }
                samples.sort()
                return (samples[samples.count / 2], samples[min(samples.count - 1, Int(Double(samples.count) * 0.99))])
            }
        }
    }

    static func connectionsPerSecond(seconds: Double, workers: Int) async throws -> Double {
        try await withHost(configuration: serverConfig()) { server in
            let address = server.addresses[0]
            let clock = ContinuousClock()
            let start = clock.now
            let total = try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<workers {
                    group.addTask {
                        try await withHost { client in
                            var count = 0
                            while (clock.now - start) < .seconds(seconds) {
                                let connection = try await client.connect(to: address)
                                count += 1
                                await connection.close(graceful: false)
                            }
                            return count
                        }
                    }
                }
                return try await group.reduce(0, +)
            }
            return Double(total) / (clock.now - start).seconds
        }
    }
}

