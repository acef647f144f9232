import Crypto
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Noise
import PointSub

/// `pointsub-bench attack`: the attacks of issue 10, each run from 127.0.0.2 against a server in a
/// child process (`attack-server`: echo, ping, identify and a PointSub server, with a memory
/// budget), while an honest client on 127.0.0.1 pings and sends PointSub requests. Per attack it
/// prints the honest success rate and latency, and the server's peak RSS and open descriptors.
/// Loopback only; every attack is bounded in time (`--seconds=N`, default 6) and in count.
enum AttackBench {
    struct Options: Sendable {
        var seconds = 6
        var only: Set<String>?
        /// The server's resource manager's system memory budget.
        var budgetMiB = 256
    }

    static let attacks: [(name: String, what: String)] = [
        ("none", "baseline, no attack"),
        ("rsa-key", "Noise handshakes whose message 3 carries PublicKey{RSA, empty DER}"),
        ("silent-sockets", "300 TCP sockets that never speak, re-opened as they are closed"),
        ("idle-connections", "200 secured connections (200 peer IDs) that stay idle"),
        ("idle-requests", "1,000 PointSub streams that each send a request and never read"),
        ("window-fill", "1,024 echo streams on one connection writing 256 KiB, never reading"),
        ("ping-flood", "Yamux pings as fast as TCP takes them, replies never read"),
        ("unknown-stream", "16 MiB data frames for a stream that was never opened"),
        ("zip-bomb", "64 concurrent PointSub requests of ~32 KB inflating to 32 MiB each"),
    ]

    static let kvProtocol = "/kv/1.0.0"
    static let attacker = "127.0.0.2"

    // MARK: - The server process

    /// `attack-server --budget=MiB`: prints its address, serves until stdin closes.
    static func serve(budgetMiB: Int) async throws {
        var configuration = P2PHost.Configuration.defaults {
            $0.listenAddresses = ["/ip4/127.0.0.1/tcp/0"]
            $0.services = [EchoService(), PingService(), IdentifyService()]
        }
        configuration.resources.system.memory = budgetMiB << 20
        try await withHost(configuration: configuration) { host in
            let server = try PointSubServer(host: host)
            // Answers with the request's size, as a store would: the server's work is what the
            // attacker makes it do, not an amplification of our own (an echo of a 32 MiB bomb).
            try server.start(kvProtocol) { request in ByteBuffer(string: "\(request.payload.readableBytes)") }
            FileHandle.standardOutput.write(Data("\(host.addresses[0])\n".utf8))
            Thread.detachNewThread {
                _ = FileHandle.standardInput.readDataToEndOfFile()
                exit(0)
            }
            while true { try await Task.sleep(for: .seconds(3600)) }
        }
    }

    // MARK: - Running the attacks

    static func run(options: Options) async throws {
        print("attacks from \(attacker) on a server in a child process (system memory budget \(options.budgetMiB) MiB),")
        print("while an honest client on 127.0.0.1 pings and sends 1 KiB PointSub requests; \(options.seconds) s each")
        print(
            "attack            honest ok     p50 ms   p99 ms  requests  server peak RSS  peak fds  attacker")
        for (name, _) in attacks where options.only?.contains(name) ?? true {
            let seconds = options.seconds
            let (result, alive) = try await Bench.withServerProcess(["attack-server", "--budget=\(options.budgetMiB)"]) {
                address, pid in
                let result = try await measure(attack: name, address: address, server: address.peerID!, pid: pid, seconds: seconds)
                return (result, isAlive(pid))
            }
            print(
                name.padding(toLength: 16, withPad: " ", startingAt: 0)
                + String(
                    format: " %7.1f %%  %9.2f %8.2f  %8d  %11.1f MiB  %8d  %@",
                    result.successRate * 100, result.p50, result.p99, result.requests,
                    Double(result.peakRSS) / 1_048_576, result.peakFDs,
                    alive ? result.attackerNote : "SERVER DIED"))
        }
    }

    struct Result {
        var successRate: Double
        var p50: Double
        var p99: Double
        var requests: Int
        var peakRSS: Int
        var peakFDs: Int
        var attackerNote: String
    }

    /// Runs the honest client, the attack and the sampler side by side for `seconds`.
    static func measure(
        attack: String, address: Multiaddr, server: PeerID, pid: Int32, seconds: Int
    ) async throws -> Result {
        let stop = ContinuousClock.now + .seconds(seconds)
        let peak = NIOLockedValueBox((rss: 0, fds: 0))
        let note = NIOLockedValueBox("")
        let honest = try await withThrowingTaskGroup(of: [Double?]?.self) { group in
            group.addTask {
                while ContinuousClock.now < stop {
                    let sample = (rss: residentBytes(pid), fds: openDescriptors(pid))
                    peak.withLockedValue { $0 = (max($0.rss, sample.rss), max($0.fds, sample.fds)) }
                    try await Task.sleep(for: .milliseconds(100))
                }
                return nil
            }
            group.addTask {
                do {
                    let text = try await runAttack(attack, address: address, server: server, until: stop)
                    note.withLockedValue { $0 = text }
                } catch {
                    note.withLockedValue { $0 = "attack ended: \(error)" }
                }
                return nil
            }
            group.addTask { try await honestProcess(address: address, seconds: seconds) }
            var samples: [Double?] = []
            for try await result in group { if let result { samples = result } }
            return samples
        }
        let latencies = honest.compactMap { $0 }.sorted()
        func percentile(_ p: Double) -> Double {
            latencies.isEmpty ? .nan : latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))]
        }
        let (rss, fds) = peak.withLockedValue { $0 }
        return Result(
            successRate: honest.isEmpty ? 0 : Double(latencies.count) / Double(honest.count), p50: percentile(0.5),
            p99: percentile(0.99), requests: honest.count, peakRSS: rss, peakFDs: fds,
            attackerNote: note.withLockedValue { $0 })
    }

    /// The honest client runs in a process of its own (`attack-honest`), so that the attacker's
    /// own CPU work in this process cannot delay it: one line per exchange, its latency in ms or
    /// `fail`.
    static func honestProcess(address: Multiaddr, seconds: Int) async throws -> [Double?] {
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/proc/self/exe")
        child.arguments = ["attack-honest", "--address=\(address)", "--seconds=\(seconds)"]
        let output = Pipe()
        child.standardOutput = output
        try child.run()
        let text = await withCheckedContinuation { (continuation: CheckedContinuation<String, Never>) in
            Thread.detachNewThread {
                let data = output.fileHandleForReading.readDataToEndOfFile()
                continuation.resume(returning: String(decoding: data, as: UTF8.self))
            }
        }
        child.waitUntilExit()
        return text.split(separator: "\n").map { Double($0) }
    }

    /// `attack-honest --address=A --seconds=N`: the honest client, printing one line per exchange.
    static func honest(address: Multiaddr, seconds: Int) async throws {
        guard let server = address.peerID else { throw HostError(.invalidAddress, "\(address) has no /p2p/") }
        let samples = try await honestClient(address: address, server: server, until: .now + .seconds(seconds))
        let lines = samples.map { $0.map { String(format: "%.3f", $0) } ?? "fail" }
        FileHandle.standardOutput.write(Data((lines.joined(separator: "\n") + "\n").utf8))
    }

    /// A ping and a 1 KiB PointSub request every 20 ms, each with a 2 s limit; one latency per
    /// exchange (ms), nil for a failure. The attack runs for half a second before the first one.
    static func honestClient(address: Multiaddr, server: PeerID, until stop: ContinuousClock.Instant) async throws -> [Double?] {
        try await withHost { host in
            let client = try PointSubClient(host: host)
            var samples: [Double?] = []
            try await Task.sleep(for: .milliseconds(500))
            let payload = ByteBuffer(repeating: 0x61, count: 1024)
            let clock = ContinuousClock()
            while clock.now < stop {
                let start = clock.now
                let ok: Bool
                do {
                    let deadline = Deadline.after(.seconds(2))
                    _ = try await withDeadline(
                        deadline, on: host.eventLoopGroup.next(), onTimeout: { BenchError("honest exchange timed out") }
                    ) {
                        _ = try await host.connect(to: address)
                        _ = try await PingService.ping(host: host, peer: server, count: 1)
                        return try await client.send(payload, to: server, protocol: kvProtocol, deadline: deadline)
                    }
                    ok = true
                } catch {
                    ok = false
                }
                let elapsed = clock.now - start
                samples.append(ok ? elapsed.seconds * 1e3 : nil)
                try await Task.sleep(for: .milliseconds(20))
            }
            return samples
        }
    }

    // MARK: - The attacks

    static func runAttack(_ name: String, address: Multiaddr, server: PeerID, until stop: ContinuousClock.Instant) async throws -> String {
        let port = Int(address.tcpPort ?? 0)
        switch name {
        case "rsa-key": return try await rsaKeyHandshakes(port: port, until: stop)
        case "silent-sockets": return try await silentSockets(port: port, until: stop)
        case "idle-connections": return try await idleConnections(address: address, until: stop)
        case "idle-requests": return try await idleRequests(address: address, server: server, until: stop)
        case "window-fill": return try await windowFill(address: address, server: server, until: stop)
        case "ping-flood": return try await rawFlood(port: port, kind: .pings, until: stop)
        case "unknown-stream": return try await rawFlood(port: port, kind: .unknownStream, until: stop)
        case "zip-bomb": return try await zipBomb(address: address, server: server, until: stop)
        default:
            try await Task.sleep(until: stop)
            return ""
        }
    }

    static func attackerHost() -> P2PHost {
        P2PHost(identity: .generateEd25519(), configuration: .defaults { $0.dialSourceAddress = attacker })
    }

    static func rsaKeyHandshakes(port: Int, until stop: ContinuousClock.Instant) async throws -> String {
        let done = NIOLockedValueBox(0)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<4 {
                group.addTask {
                    while ContinuousClock.now < stop {
                        if (try? await RawConnection.rsaKeyHandshake(port: port)) != nil {
                            done.withLockedValue { $0 += 1 }
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        return "\(done.withLockedValue { $0 }) bad-key handshakes sent"
    }

    static func silentSockets(port: Int, until stop: ContinuousClock.Instant) async throws -> String {
        let group = MultiThreadedEventLoopGroup.singleton
        var open: [Channel] = []
        var opened = 0
        while ContinuousClock.now < stop {
            open.removeAll { !$0.isActive }
            while open.count < 300, ContinuousClock.now < stop {
                guard let channel = try? await ClientBootstrap(group: group)
                    .bind(to: try SocketAddress(ipAddress: attacker, port: 0))
                    .connect(host: "127.0.0.1", port: port).get()
                else { break }
                open.append(channel)
                opened += 1
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        for channel in open { try? await channel.close() }
        return "\(opened) sockets opened"
    }

    static func idleConnections(address: Multiaddr, until stop: ContinuousClock.Instant) async throws -> String {
        var hosts: [P2PHost] = []
        var admitted = 0
        for _ in 0..<200 where ContinuousClock.now < stop {
            let host = attackerHost()
            try await host.start()
            hosts.append(host)
            if (try? await host.connect(to: address)) != nil { admitted += 1 }
        }
        try await Task.sleep(until: stop)
        let open = hosts.reduce(0) { $0 + $1.allConnections.filter { !$0.isClosed }.count }
        for host in hosts { await host.shutdown(gracePeriod: .zero) }
        return "\(admitted) of 200 connected, \(open) still open at the end"
    }

    static func idleRequests(address: Multiaddr, server: PeerID, until stop: ContinuousClock.Instant) async throws -> String {
        let host = attackerHost()
        try await host.start()
        var streams: [P2PStream] = []
        var request = PointSubMessage.make(kind: .request, payload: ByteBuffer(string: "hold a slot"), compress: false).encoded()
        _ = try? await host.connect(to: address)
        for _ in 0..<1000 where ContinuousClock.now < stop {
            guard let stream = try? await host.newStream(to: server, protocols: [kvProtocol]) else { break }
            try? await stream.write(request)
            streams.append(stream)
        }
        request.clear()
        try await Task.sleep(until: stop)
        let count = streams.count
        for stream in streams { stream.reset() }
        await host.shutdown(gracePeriod: .zero)
        return "\(count) streams opened"
    }

    static func windowFill(address: Multiaddr, server: PeerID, until stop: ContinuousClock.Instant) async throws -> String {
        let host = attackerHost()
        try await host.start()
        _ = try? await host.connect(to: address)
        let chunk = ByteBuffer(repeating: 0x42, count: 256 << 10)
        let opened = NIOLockedValueBox(0)
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<1024 {
                group.addTask {
                    guard ContinuousClock.now < stop,
                        let stream = try? await host.newStream(to: server, protocols: [EchoService.protocolID])
                    else { return }
                    opened.withLockedValue { $0 += 1 }
                    // Never read the echo: the server's replies fill our window, its reads stop.
                    _ = try? await withDeadline(
                        max(Deadline(stop), .after(.milliseconds(100))), on: host.eventLoopGroup.next(),
                        onTimeout: { BenchError("the write outlasted the attack") }
                    ) {
                        try await stream.write(chunk)
                    }
                    try? await Task.sleep(until: stop)
                    stream.reset()
                }
            }
        }
        await host.shutdown(gracePeriod: .zero)
        return "\(opened.withLockedValue { $0 }) echo streams filled"
    }

    static func zipBomb(address: Multiaddr, server: PeerID, until stop: ContinuousClock.Instant) async throws -> String {
        let host = attackerHost()
        try await host.start()
        _ = try? await host.connect(to: address)
        var zeros = ByteBuffer()
        zeros.writeRepeatingByte(0, count: 32 << 20)
        let bomb = PointSubMessage.make(kind: .request, payload: zeros, compress: true)
        let wire = bomb.encoded()
        let sent = NIOLockedValueBox(0)
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<64 {
                group.addTask {
                    while ContinuousClock.now < stop {
                        guard let stream = try? await host.newStream(to: server, protocols: [kvProtocol]) else {
                            try? await Task.sleep(for: .milliseconds(50))
                            continue
                        }
                        _ = try? await stream.write(wire)
                        sent.withLockedValue { $0 += 1 }
                        // Read whatever comes back (an error or the 32 MiB echo), up to a point.
                        _ = try? await withDeadline(
                            .after(.seconds(2)), on: host.eventLoopGroup.next(), onTimeout: { BenchError("no reply in time") }
                        ) { try await stream.readToEnd(maxBytes: 64 << 20) }
                        stream.reset()
                    }
                }
            }
        }
        await host.shutdown(gracePeriod: .zero)
        return "\(sent.withLockedValue { $0 }) bombs of \(wire.readableBytes) bytes"
    }

    static func rawFlood(port: Int, kind: RawConnection.Flood, until stop: ContinuousClock.Instant) async throws -> String {
        let sent = NIOLockedValueBox(0)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<4 {
                group.addTask {
                    while ContinuousClock.now < stop {
                        let bytes = (try? await RawConnection.flood(kind, port: port, until: stop)) ?? 0
                        sent.withLockedValue { $0 += bytes }
                        if bytes == 0 { try await Task.sleep(for: .milliseconds(50)) }
                    }
                }
            }
            try await group.waitForAll()
        }
        return String(format: "%.1f MiB of frames sent", Double(sent.withLockedValue { $0 }) / 1_048_576)
    }

    // MARK: - Process figures

    static func residentBytes(_ pid: Int32) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
            let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
        else { return 0 }
        return kib * 1024
    }

    /// Whether the process still runs (not gone, not a zombie waiting to be reaped).
    static func isAlive(_ pid: Int32) -> Bool {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("State:") })
        else { return false }
        return !line.contains("Z")
    }

    static func openDescriptors(_ pid: Int32) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? 0
    }
}

/// A hand-driven libp2p connection for attacks the library would never send: multistream and the
/// Noise XX handshake by hand over a raw NIO channel bound to the attacker's address.
enum RawConnection {
    enum Flood {
        /// Yamux pings, replies never read.
        case pings
        /// One 16 MiB data frame for a stream that was never opened.
        case unknownStream
    }

    typealias Channel = NIOAsyncChannel<ByteBuffer, ByteBuffer>

    static func connect(port: Int) async throws -> Channel {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(to: try SocketAddress(ipAddress: AttackBench.attacker, port: 0))
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
    }

    /// Reads from `inbound` into `buffer` until `count` bytes are there.
    static func fill(
        _ buffer: inout ByteBuffer, to count: Int, from inbound: inout NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    ) async throws {
        while buffer.readableBytes < count {
            guard var more = try await inbound.next() else { throw HostError(.unexpectedEOF, "closed by the server") }
            buffer.writeBuffer(&more)
        }
    }

    static func multistream(_ protocols: [String]) -> ByteBuffer {
        var out = ByteBuffer()
        for line in ["/multistream/1.0.0"] + protocols {
            var length: [UInt8] = []
            Varint.encode(UInt64(line.utf8.count + 1), into: &length)
            out.writeBytes(length)
            out.writeString(line + "\n")
        }
        return out
    }

    /// Negotiates `/noise` and reads the server's two answers.
    static func negotiateNoise(
        _ outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>,
        _ inbound: inout NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator, buffer: inout ByteBuffer
    ) async throws {
        try await outbound.write(multistream(["/noise"]))
        let expected = multistream(["/noise"]).readableBytes
        try await fill(&buffer, to: expected, from: &inbound)
        buffer.moveReaderIndex(forwardBy: expected)
    }

    static func noiseFrame(_ message: [UInt8]) -> ByteBuffer {
        var out = ByteBuffer()
        out.writeInteger(UInt16(message.count))
        out.writeBytes(message)
        return out
    }

    static func readNoiseFrame(
        _ inbound: inout NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator, buffer: inout ByteBuffer
    ) async throws -> [UInt8] {
        try await fill(&buffer, to: 2, from: &inbound)
        let length = Int(buffer.getInteger(at: buffer.readerIndex, as: UInt16.self)!)
        try await fill(&buffer, to: 2 + length, from: &inbound)
        buffer.moveReaderIndex(forwardBy: 2)
        return buffer.readBytes(length: length)!
    }

    /// One handshake whose message 3 names an RSA identity key with empty DER data.
    static func rsaKeyHandshake(port: Int) async throws {
        let channel = try await connect(port: port)
        try await channel.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            var buffer = ByteBuffer()
            try await negotiateNoise(outbound, &iterator, buffer: &buffer)
            var state = NoiseHandshakeState(role: .initiator, staticKey: .init())
            try await outbound.write(noiseFrame(try state.writeMessage(payload: [])))
            _ = try state.readMessage(try await readNoiseFrame(&iterator, buffer: &buffer))
            var payload = ProtobufWriter()
            payload.writeBytesField(1, [0x08, 0x00, 0x12, 0x00])  // PublicKey{Type=RSA, Data=<empty>}
            payload.writeBytesField(2, [UInt8](repeating: 7, count: 64))
            try await outbound.write(noiseFrame(try state.writeMessage(payload: payload.bytes)))
            // The server answers by closing the connection: wait for that (bounded).
            let deadline = Deadline.after(.seconds(2))
            while !deadline.hasPassed, (try? await iterator.next()) ?? nil != nil {}
        }
    }

    /// A full secured connection (Noise, then `/yamux/1.0.0` proposed inside it), then the flood
    /// until `stop` or until the server closes the connection. Returns the bytes sent.
    static func flood(_ kind: Flood, port: Int, until stop: ContinuousClock.Instant) async throws -> Int {
        let channel = try await connect(port: port)
        let loop = channel.channel.eventLoop
        return try await channel.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            var buffer = ByteBuffer()
            try await negotiateNoise(outbound, &iterator, buffer: &buffer)
            var handshake = try NoiseLibp2pHandshake(role: .initiator, identity: .generateEd25519())
            try await outbound.write(noiseFrame(try handshake.start()!))
            let message3 = try handshake.receive(try await readNoiseFrame(&iterator, buffer: &buffer))!
            try await outbound.write(noiseFrame(message3))
            try handshake.verifyDeferredSignature()
            var (send, _) = handshake.split()
            func sealed(_ plaintext: ByteBuffer) throws -> ByteBuffer {
                var out = ByteBuffer()
                var rest = plaintext
                while rest.readableBytes > 0 {
                    let piece = rest.readSlice(length: min(rest.readableBytes, 65_535 - NoiseCipherState.tagLength))!
                    var cipher = ByteBuffer()
                    try piece.withUnsafeReadableBytes { try send.seal($0, into: &cipher) }
                    out.writeInteger(UInt16(cipher.readableBytes))
                    out.writeBuffer(&cipher)
                }
                return out
            }
            try await outbound.write(try sealed(multistream(["/yamux/1.0.0"])))
            var sent = 0
            var opaque: UInt32 = 0
            while ContinuousClock.now < stop {
                var frames = ByteBuffer()
                switch kind {
                case .pings:
                    for _ in 0..<5_000 {
                        opaque &+= 1
                        YamuxFrame.ping(opaque: opaque, ack: false).encode(into: &frames)
                    }
                case .unknownStream:
                    var payload = ByteBuffer()
                    payload.writeRepeatingByte(0x55, count: 16 << 20)
                    YamuxFrame.data(streamID: 1001, payload: payload).encode(into: &frames)
                }
                let wire = try sealed(frames)
                // Bounded: a write that the server's back-pressure holds past the stop ends the flood.
                guard (try? await withDeadline(
                    max(Deadline(stop), .after(.milliseconds(50))), on: loop,
                    onTimeout: { BenchError("the write outlasted the flood") }
                ) {
                    try await outbound.write(wire)
                }) != nil else { break }
                sent += wire.readableBytes
                // Writes that complete at once never suspend: give the honest client its turn on
                // this process's event loops (it must measure the server, not our own loop).
                await Task.yield()
            }
            return sent
        }
    }
}
