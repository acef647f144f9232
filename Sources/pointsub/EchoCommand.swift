import ArgumentParser
import Foundation
import NIOCore
import PointSub
import PubSub

struct EchoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "echo",
        abstract: "Serve /echo/1.0.0 (-l/--listen), or dial an echo server, send, read back and verify (-d).")

    @OptionGroup var identity: IdentityOptions
    @OptionGroup var listenOptions: ListenOptions

    @Option(name: .short, help: "Dial this echo server (a multiaddr ending in /p2p/<id>).")
    var d: String?

    @Option(help: "Bytes to send on each stream (e.g. 1MiB).")
    var size: String = "1MiB"

    @Option(help: "Concurrent streams.")
    var streams: Int = 1

    func validate() throws {
        if d == nil && listenOptions.l == nil && listenOptions.listen.isEmpty {
            throw ValidationError("give -l PORT / --listen MULTIADDR to serve, or -d MULTIADDR to dial")
        }
        guard streams >= 1 else { throw ValidationError("--streams must be at least 1") }
    }

    func run() async throws {
        let key = try identity.privateKey()
        if let d {
            try await dial(key: key, address: try parseAddress(d))
        } else {
            let config = identity.configuration(listen: try listenOptions.addresses(), services: [EchoService()])
            try await withHost(identity: key, configuration: config) { host in
                printListenAddresses(host)
                await waitForTerminationSignal()
            }
        }
    }

    private func dial(key: PrivateKey, address: Multiaddr) async throws {
        let peer = try peerOf(address)
        let bytes = Int(try parseSize(size))
        let ok = try await withHost(identity: key, configuration: identity.configuration()) { host in
            let clock = ContinuousClock()
            let start = clock.now
            _ = try await host.connect(to: address)
            let results = try await withThrowingTaskGroup(of: Bool.self) { group in
                for index in 0..<streams {
                    group.addTask { try await Self.echoOnce(host: host, peer: peer, bytes: bytes, seed: UInt64(index)) }
                }
                return try await group.reduce(into: [Bool]()) { $0.append($1) }
            }
            let elapsed = (clock.now - start).seconds
            let total = UInt64(bytes) * UInt64(streams)
            let good = results.filter { $0 }.count
            print("echoed \(total) bytes on \(streams) stream(s) to \(peer) in \(String(format: "%.3f", elapsed)) s: \(formatRate(bytes: total * 2, seconds: elapsed)) both ways")
            if good != streams { print("MISMATCH on \(streams - good) stream(s)") }
            return good == streams
        }
        if !ok { throw ExitCode(1) }
    }

    /// Sends `bytes` of pseudo-random data while reading the echo back; true when it matches.
    static func echoOnce(host: P2PHost, peer: PeerID, bytes: Int, seed: UInt64) async throws -> Bool {
        let stream = try await host.newStream(to: peer, protocols: [EchoService.protocolID])
        let payload = SplitMix.payload(bytes: bytes, seed: seed)
        let toSend = payload
        async let sent: Void = {
            var rest = toSend
            while rest.readableBytes > 0 {
                let chunk = rest.readSlice(length: min(64 * 1024, rest.readableBytes))!
                try await stream.write(chunk)
            }
            try await stream.closeWrite()
        }()
        let received = try await stream.readToEnd(maxBytes: bytes + 1)
        try await sent
        await stream.close()
        return received == payload
    }
}

/// Deterministic test payloads (PubSub's SplitMix64 generator).
enum SplitMix {
    /// `bytes` pseudo-random bytes, filled 8 at a time.
    static func payload(bytes: Int, seed: UInt64) -> ByteBuffer {
        var generator = SplitMix64(seed: seed &+ 0x9E37_79B9)
        var buffer = ByteBuffer(repeating: 0, count: bytes)
        buffer.withUnsafeMutableReadableBytes { raw in
            var offset = 0
            while offset < raw.count {
                var word = generator.next()
                let n = min(8, raw.count - offset)
                withUnsafeBytes(of: &word) { raw.baseAddress!.advanced(by: offset).copyMemory(from: $0.baseAddress!, byteCount: n) }
                offset += n
            }
        }
        return buffer
    }
}
