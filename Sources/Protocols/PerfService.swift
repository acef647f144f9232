import Identity
import LibP2P
import NIOCore

/// Perf (`/perf/1.0.0`, libp2p perf spec): the client sends the number of bytes it wants back as a
/// big-endian u64, uploads, closes its write side; the server reads to EOF, then sends the bytes.
/// The spec says it must not be on by default, since it lets clients make the server work: the CLI
/// turns it on.
public struct PerfService: HostService {
    public static let protocolID = "/perf/1.0.0"
    static let chunkSize = 64 * 1024

    /// The most a client may ask the server to send.
    public var maxDownload: UInt64

    public init(maxDownload: UInt64 = 1 << 40) {
        self.maxDownload = maxDownload
    }

    public func attach(to host: P2PHost) async throws {
        let maxDownload = self.maxDownload
        // Bulk transfer: not over a relay's limited connection.
        try host.setStreamHandler(Self.protocolID, allowOnLimitedConnections: false) { stream in
            let header = try await stream.readExactly(8)
            let requested = header.getInteger(at: header.readerIndex, as: UInt64.self)!
            guard requested <= maxDownload else {
                throw HostError(.limitReached, "perf client asked for \(requested) bytes, limit \(maxDownload)")
            }
            // Step 2 (read to EOF) must finish before step 3 (send) starts.
            while try await stream.read() != nil {}
            try await Self.send(requested, on: stream, progress: nil)
            try await stream.closeWrite()
        }
    }

    public struct Progress: Sendable {
        public var uploaded: UInt64
        public var downloaded: UInt64
        public var elapsed: Duration
    }

    public struct Result: Sendable, Equatable {
        public var uploadBytes: UInt64
        public var downloadBytes: UInt64
        public var uploadTime: Duration
        public var downloadTime: Duration
        public var totalTime: Duration
    }

    static func send(_ count: UInt64, on stream: P2PStream, progress: ((UInt64) -> Void)?) async throws {
        let chunk = ByteBuffer(repeating: 0, count: chunkSize)
        var remaining = count
        while remaining > 0 {
            let n = Int(min(UInt64(chunkSize), remaining))
            try await stream.write(n == chunkSize ? chunk : chunk.getSlice(at: chunk.readerIndex, length: n)!)
            remaining -= UInt64(n)
            progress?(count - remaining)
        }
    }

    /// Runs one perf exchange against `peer`. `progress` is called about once a second.
    public static func run(
        host: P2PHost, peer: PeerID, upload: UInt64, download: UInt64,
        progress: (@Sendable (Progress) -> Void)? = nil
    ) async throws -> Result {
        let stream = try await host.newStream(to: peer, protocols: [protocolID])
        let clock = ContinuousClock()
        let start = clock.now
        var lastReport = start
        func report(_ up: UInt64, _ down: UInt64) {
            let now = clock.now
            if let progress, now - lastReport >= .seconds(1) {
                lastReport = now
                progress(Progress(uploaded: up, downloaded: down, elapsed: now - start))
            }
        }
        do {
            var header = ByteBuffer()
            header.writeInteger(download)
            try await stream.write(header)
            try await send(upload, on: stream) { report($0, 0) }
            try await stream.closeWrite()
            let uploaded = clock.now
            var received: UInt64 = 0
            while let chunk = try await stream.read() {
                received += UInt64(chunk.readableBytes)
                guard received <= download else {
                    throw HostError(.protocolViolation, "perf server sent more than the \(download) bytes asked for")
                }
                report(upload, received)
            }
            guard received == download else {
                throw HostError(.unexpectedEOF, "perf server sent \(received) of \(download) bytes")
            }
            let end = clock.now
            return Result(
                uploadBytes: upload, downloadBytes: received, uploadTime: uploaded - start,
                downloadTime: end - uploaded, totalTime: end - start)
        } catch {
            stream.reset()
            throw error
        }
    }
}
