import NIOCore
import NIOEmbedded
import Testing

@testable import Yamux

/// Two yamux sessions over two `NIOAsyncTestingChannel`s whose outbound bytes are shuttled
/// into each other, like the two ends of a TCP connection.
struct SessionPair: Sendable {
    let clientChannel: NIOAsyncTestingChannel
    let serverChannel: NIOAsyncTestingChannel
    let client: YamuxSession
    let server: YamuxSession
    private let shuttles: [Task<Void, Never>]

    static func make(
        client clientConfig: YamuxConfiguration = .testing,
        server serverConfig: YamuxConfiguration = .testing
    ) async throws -> SessionPair {
        let (clientChannel, client) = try await makeSession(role: .initiator, configuration: clientConfig)
        let (serverChannel, server) = try await makeSession(role: .responder, configuration: serverConfig)
        return SessionPair(
            clientChannel: clientChannel, serverChannel: serverChannel, client: client, server: server,
            shuttles: [shuttle(from: clientChannel, to: serverChannel), shuttle(from: serverChannel, to: clientChannel)])
    }

    /// Moves every buffer written by `source` into `destination`; when `source` closes, the
    /// bytes already written are still delivered, then `destination` is closed too (as the
    /// peer of a closed TCP connection would see EOF).
    private static func shuttle(from source: NIOAsyncTestingChannel, to destination: NIOAsyncTestingChannel) -> Task<Void, Never> {
        Task {
            while true {
                do {
                    let buffer = try await source.waitForOutboundWrite(as: ByteBuffer.self)
                    try await destination.writeInbound(buffer)
                } catch {
                    try? await destination.close()
                    return
                }
            }
        }
    }

    /// Closes both channels and waits for the shuttles.
    func tearDown() async {
        try? await clientChannel.close()
        try? await serverChannel.close()
        for task in shuttles { await task.value }
    }
}

func makeSession(role: YamuxRole, configuration: YamuxConfiguration) async throws -> (NIOAsyncTestingChannel, YamuxSession) {
    let channel = NIOAsyncTestingChannel()
    try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 4001)).get()
    let session = try await channel.eventLoop.submit {
        try YamuxSession.install(on: channel, role: role, configuration: configuration)
    }.get()
    return (channel, session)
}

extension YamuxConfiguration {
    /// Defaults without keep-alive, so tests see no unsolicited pings.
    static var testing: YamuxConfiguration {
        var c = YamuxConfiguration()
        c.keepAliveInterval = nil
        return c
    }
}

/// Reads everything until EOF.
func readAll(_ stream: YamuxStream) async throws -> ByteBuffer {
    var all = ByteBuffer()
    while var chunk = try await stream.read() { all.writeBuffer(&chunk) }
    return all
}

/// Waits (bounded) until `condition` holds, sleeping 1 ms between checks; false if it never did.
func eventually(_ iterations: Int = 5000, _ condition: () async -> Bool) async -> Bool {
    for _ in 0..<iterations {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(1))
    }
    return await condition()
}

/// Deterministic test data: byte at absolute `offset` of stream `seed`.
@inline(__always)
func patternByte(seed: Int, offset: Int) -> UInt8 {
    UInt8(truncatingIfNeeded: (offset &* 31) &+ (offset >> 11) &+ seed &* 17)
}

func patternBuffer(seed: Int, offset: Int, count: Int) -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { raw in
        for i in 0..<count { raw[i] = patternByte(seed: seed, offset: offset + i) }
        return count
    }
    return buffer
}

/// Checks `buffer` against the pattern at `offset`; returns the first mismatching offset.
func firstMismatch(_ buffer: ByteBuffer, seed: Int, offset: Int) -> Int? {
    buffer.withUnsafeReadableBytes { raw in
        for i in 0..<raw.count where raw[i] != patternByte(seed: seed, offset: offset + i) {
            return offset + i
        }
        return nil
    }
}

/// Raw-frame access to one session: inject frames, read what it wrote.
struct RawPeer {
    let channel: NIOAsyncTestingChannel
    let session: YamuxSession

    static func make(role: YamuxRole, configuration: YamuxConfiguration = .testing) async throws -> RawPeer {
        let (channel, session) = try await makeSession(role: role, configuration: configuration)
        return RawPeer(channel: channel, session: session)
    }

    func inject(_ frames: YamuxFrame...) async throws {
        var buffer = ByteBuffer()
        for frame in frames { frame.encode(into: &buffer) }
        try await channel.writeInbound(buffer)
    }

    /// The next frame the session wrote: one buffer, or for a data frame with a large payload
    /// two (its header, then the payload).
    func nextFrame() async throws -> YamuxFrame {
        var decoder = YamuxFrameDecoder()
        decoder.append(try await channel.waitForOutboundWrite(as: ByteBuffer.self))
        if let frame = try decoder.nextFrame() {
            #expect(decoder.bufferedBytes == 0)
            return frame
        }
        #expect(decoder.bufferedBytes == YamuxFrame.headerSize)
        decoder.append(try await channel.waitForOutboundWrite(as: ByteBuffer.self))
        let frame = try #require(try decoder.nextFrame())
        #expect(frame.payload.readableBytes >= YamuxHandler.separatePayloadThreshold)
        #expect(decoder.bufferedBytes == 0)
        return frame
    }

    /// A frame already written, if any.
    func writtenFrame() async throws -> YamuxFrame? {
        guard let buffer = try await channel.readOutbound(as: ByteBuffer.self) else { return nil }
        var decoder = YamuxFrameDecoder()
        decoder.append(buffer)
        return try decoder.nextFrame()
    }

    /// Waits until every operation submitted to the loop so far has run.
    func barrier() async throws {
        try await channel.eventLoop.submit {}.get()
    }
}
