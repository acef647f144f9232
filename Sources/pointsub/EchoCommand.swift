import ArgumentParser
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import PointSub
import PubSub

struct EchoCommand: CLICommand {
    static let configuration = CommandConfiguration(
        commandName: "echo",
        abstract: "Serve /echo/1.0.0 (-l/--listen), or dial an echo server, send, read back and verify (-d).",
        discussion: """
            The client streams deterministic pseudo-random bytes and checks the echo as it arrives, so \
            it holds about one flow-control window per stream, whatever --size is (4GiB works). \
            Transfers longer than a second print their progress on stderr once a second.
            """)

    @OptionGroup var identity: IdentityOptions
    @OptionGroup var listenOptions: ListenOptions
    @OptionGroup var metricsOptions: MetricsOptions

    @Option(name: .short, help: "Dial this echo server (a multiaddr ending in /p2p/<id>).")
    var d: String?

    @Option(help: "Bytes to send on each stream (e.g. 1MiB, 1.5MiB, 512KB, 4GiB).", transform: ByteSize.parse)
    var size: ByteSize = ByteSize(bytes: 1 << 20)

    @Option(help: "Concurrent streams.")
    var streams: Int = 1

    var verbose: Bool { identity.verbose }

    func validate() throws {
        if d != nil && metricsOptions.metrics != nil {
            throw ValidationError("--metrics is for serving (-l / --listen), not with -d")
        }
        if d == nil && listenOptions.l == nil && listenOptions.listen.isEmpty {
            throw ValidationError("give -l PORT / --listen MULTIADDR to serve, or -d MULTIADDR to dial")
        }
        guard (1...1024).contains(streams) else { throw ValidationError("--streams must be between 1 and 1024") }
        guard !size.bytes.multipliedReportingOverflow(by: UInt64(streams)).overflow else {
            throw ValidationError("--size \(size) × --streams \(streams) is more than 2^64 - 1 bytes")
        }
    }

    func execute() async throws {
        let key = try identity.privateKey()
        if let d {
            try await dial(key: key, address: try parseAddress(d))
        } else {
            let metrics = try await metricsOptions.start()
            let config = identity.configuration(listen: try listenOptions.addresses(), services: [EchoService()])
            try await withHost(identity: key, configuration: config) { host in
                await announce(host, listenOptions)
                try await serveHost(host, metrics: metrics)
            }
        }
    }

    private func dial(key: PrivateKey, address: Multiaddr) async throws {
        let peer = try peerOf(address)
        let (bytes, streams) = (size.bytes, self.streams)
        let total = bytes * UInt64(streams)
        let ok = try await withClientHost(identity: key, configuration: identity.configuration()) { host in
            let clock = ContinuousClock()
            let start = clock.now
            _ = try await connectPeer(host, to: address)
            let echoed = NIOLockedValueBox<UInt64>(0)
            let progress = startProgress { elapsed in
                let done = echoed.withLockedValue { $0 }
                printError(String(format: "… %.1f s: echoed %llu of %llu bytes", elapsed.seconds, done, total))
            }
            defer { progress.cancel() }
            let failures = try await withThrowingTaskGroup(of: String?.self) { group in
                for index in 0..<streams {
                    group.addTask {
                        try await Self.echoOnce(host: host, peer: peer, bytes: bytes, seed: UInt64(index), echoed: echoed)
                            .map { "stream \(index): \($0)" }
                    }
                }
                return try await group.reduce(into: [String]()) { if let failure = $1 { $0.append(failure) } }
            }
            let elapsed = (clock.now - start).seconds
            print("echoed \(total) bytes on \(streams) stream(s) to \(peer) in \(String(format: "%.3f", elapsed)) s: \(formatRate(bytes: total * 2, seconds: elapsed)) both ways")
            for failure in failures.sorted() { print("MISMATCH on \(failure)") }
            return failures.isEmpty
        }
        if !ok { throw ExitCode(1) }
    }

    /// Streams `bytes` of pseudo-random data and checks the echo as it comes back, holding only
    /// the data in flight (the writer waits for the Yamux window; the reader compares each chunk
    /// with the regenerated sequence and drops it). nil when everything came back unchanged, else
    /// what went wrong.
    static func echoOnce(
        host: P2PHost, peer: PeerID, bytes: UInt64, seed: UInt64, echoed: NIOLockedValueBox<UInt64>
    ) async throws -> String? {
        let stream = try await host.newStream(to: peer, protocols: [EchoService.protocolID])
        let writer = Task {
            var generator = PayloadStream(seed: seed)
            var remaining = bytes
            while remaining > 0 {
                let n = Int(min(remaining, UInt64(PayloadStream.chunkSize)))
                try await stream.write(generator.next(n))
                remaining -= UInt64(n)
            }
            try await stream.closeWrite()
        }
        var expected = PayloadStream(seed: seed)
        var received: UInt64 = 0
        var failure: String?
        do {
            while let chunk = try await stream.read() {
                let n = UInt64(chunk.readableBytes)
                guard n <= bytes - received else {
                    failure = "the echo is longer than the \(bytes) bytes sent"
                    break
                }
                if let offset = expected.mismatch(in: chunk) {
                    failure = "byte \(received + UInt64(offset)) differs"
                    break
                }
                received += n
                echoed.withLockedValue { $0 += n }
            }
        } catch {
            writer.cancel()
            stream.reset()
            throw error
        }
        if failure == nil && received != bytes { failure = "the echo ended after \(received) of \(bytes) bytes" }
        if failure != nil {
            stream.reset()
            writer.cancel()
            _ = try? await writer.value
        } else {
            try await writer.value
            await stream.close()
        }
        return failure
    }
}

/// Deterministic pseudo-random bytes (PubSub's SplitMix64, each word little-endian), produced in
/// order as a stream so that a sender and a verifier can each regenerate any length without
/// holding it.
struct PayloadStream {
    /// How much the echo client writes at once.
    static let chunkSize = 64 * 1024

    private var generator: SplitMix64
    /// The current word's bytes not yet handed out: `word`'s low `left` bytes... in order.
    private var word: UInt64 = 0
    private var left = 0
    /// Reused by `mismatch(in:)`.
    private var scratch: [UInt8] = []

    init(seed: UInt64) {
        generator = SplitMix64(seed: seed &+ 0x9E37_79B9)
    }

    /// Fills `out` with the next `out.count` bytes of the sequence.
    mutating func fill(_ out: UnsafeMutableRawBufferPointer) {
        var offset = 0
        // The rest of a word started by an earlier call.
        while left > 0 && offset < out.count {
            out[offset] = UInt8(truncatingIfNeeded: word)
            word >>= 8
            left -= 1
            offset += 1
        }
        // Whole words.
        while out.count - offset >= 8 {
            let next = generator.next().littleEndian
            out.storeBytes(of: next, toByteOffset: offset, as: UInt64.self)
            offset += 8
        }
        // The start of a word, the rest kept for the next call.
        if offset < out.count {
            word = generator.next()
            left = 8
            while offset < out.count {
                out[offset] = UInt8(truncatingIfNeeded: word)
                word >>= 8
                left -= 1
                offset += 1
            }
        }
    }

    /// The next `count` bytes as a buffer.
    mutating func next(_ count: Int) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: count)
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { raw in
            fill(UnsafeMutableRawBufferPointer(rebasing: raw[0..<count]))
            return count
        }
        return buffer
    }

    /// Consumes `chunk.readableBytes` bytes of the sequence; the offset in `chunk` of the first
    /// byte that differs from them, or nil when all match.
    mutating func mismatch(in chunk: ByteBuffer) -> Int? {
        var scratch = self.scratch
        defer { self.scratch = scratch }
        return chunk.withUnsafeReadableBytes { got -> Int? in
            var offset = 0
            while offset < got.count {
                let n = min(Self.chunkSize, got.count - offset)
                if scratch.count < n { scratch = [UInt8](repeating: 0, count: Self.chunkSize) }
                let differs = scratch.withUnsafeMutableBytes { want -> Int? in
                    let window = UnsafeMutableRawBufferPointer(rebasing: want[0..<n])
                    fill(window)
                    guard memcmp(window.baseAddress!, got.baseAddress! + offset, n) != 0 else { return nil }
                    return (0..<n).first { window[$0] != got[offset + $0] }
                }
                if let differs { return offset + differs }
                offset += n
            }
            return nil
        }
    }

    /// `bytes` bytes of the sequence for `seed`, in one buffer (for requests, which are whole).
    static func payload(bytes: Int, seed: UInt64) -> ByteBuffer {
        var stream = PayloadStream(seed: seed)
        return stream.next(bytes)
    }
}
