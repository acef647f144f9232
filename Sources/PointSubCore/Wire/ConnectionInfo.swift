import Identity
import LibP2P
import NIOCore

/// One live PointSub stream ("connection" in PointSub's terms), as `connectionsInfo()` lists it.
public struct ConnectionInfo: Sendable, Hashable {
    /// Identifies the stream within its server or client (never reused).
    public var id: UInt64
    public var remotePeer: PeerID
    public var protocolID: String
    public var created: ContinuousClock.Instant
    /// When the last request started or its reply was sent.
    public var lastActive: ContinuousClock.Instant
    /// Time since `lastActive` when the list was made.
    public var idleTime: Duration
    /// Requests completed on this stream.
    public var requestCount: Int
    /// Client side: the stream waits in the pool. Server side: the stream waits for a request.
    public var isIdle: Bool
}

/// What a server's handler receives.
public struct PointSubRequest: Sendable {
    /// The request body (decompressed).
    public var payload: ByteBuffer
    /// Who sent it (authenticated by the connection's Noise handshake).
    public var peer: PeerID
    public var protocolID: String
}

/// Reads the next message from `stream` through `parser`. Returns nil on a clean end of stream
/// between messages; throws `PointSubError` for bad bytes (`.truncated` when the stream ends
/// inside a message) and the stream's own errors as they are. `first`: bytes already read from
/// the stream (they go before what `read()` returns). `firstBytes` runs once the message
/// has its first bytes (already buffered ones included), before they are parsed; `incomplete`
/// runs each time a started message needs another read.
func readMessage(
    from stream: P2PStream, into parser: inout PointSubMessageParser, first: ByteBuffer? = nil,
    firstBytes: (inout PointSubMessageParser) throws -> Void = { _ in },
    incomplete: () -> Void = {},
    announced: (Int) throws -> Void = { _ in }
) async throws -> PointSubMessage? {
    var started = parser.bufferedBytes > 0 || (first?.readableBytes ?? 0) > 0
    var told = false
    if started {
        try firstBytes(&parser)
        if let first { parser.append(first) }
        if let message = try parser.next() { return message }
    }
    while true {
        // The header is in, the payload not yet: its length is announced once, before it is buffered.
        if !told, let length = parser.announcedLength {
            told = true
            try announced(length)
        }
        if started { incomplete() }
        guard let chunk = try await stream.read() else {
            try parser.finish()
            return nil
        }
        guard chunk.readableBytes > 0 else { continue }
        if !started {
            started = true
            try firstBytes(&parser)
        }
        parser.append(chunk)
        if let message = try parser.next() { return message }
    }
}
