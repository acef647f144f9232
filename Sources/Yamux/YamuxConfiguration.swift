import Basics
import NIOCore
import Resources

/// Which side of the underlying connection this session is.
///
/// The initiator (the side that dialed the connection) allocates odd stream IDs,
/// the responder even ones (yamux spec, "StreamID Field": client odd, server even).
public enum YamuxRole: Sendable, Hashable {
    case initiator
    case responder
}

/// Tunables of a yamux session. The defaults follow the spec and go-yamux / rust-yamux.
public struct YamuxConfiguration: Sendable, Hashable {
    /// The spec's initial window: both sides assume it for every new stream without any frame.
    public static let specInitialStreamWindow: UInt32 = 256 * 1024

    /// Receive window every stream starts with. The spec lets a peer *assume* 256 KiB, so a
    /// smaller value cannot be announced (there is no negative window update); values below
    /// 256 KiB are raised to it. A larger value is announced with the SYN / ACK frame.
    public var initialStreamWindow: UInt32 = YamuxConfiguration.specInitialStreamWindow {
        didSet { initialStreamWindow = max(initialStreamWindow, Self.specInitialStreamWindow) }
    }

    /// Upper bound of the auto-tuned receive window of one stream (this bounds the memory one
    /// stream can make us buffer).
    public var maxStreamWindow: UInt32 = 16 * 1024 * 1024

    /// Total window growth (beyond `initialStreamWindow`) all streams of one session may hold
    /// together; nil for no limit. The memory a peer can make us buffer on one connection is at
    /// most `maxStreams × initialStreamWindow + maxSessionWindowGrowth` (per direction of stream
    /// opening). One stream can still reach `maxStreamWindow` alone.
    public var maxSessionWindowGrowth: Int? = 64 * 1024 * 1024

    /// Concurrently open streams per session, counted separately for each direction.
    public var maxStreams: Int = 1024

    /// Inbound streams whose SYN was received but that the application has not taken from
    /// `inboundStreams` yet (so they are not ACKed). A SYN beyond this is answered with RST.
    public var maxAcceptBacklog: Int = 256

    /// Outbound streams we have opened that the peer has not ACKed yet. The libp2p spec says
    /// an implementation SHOULD NOT exceed 256; `openStream()` waits while the backlog is full.
    public var maxOutboundAckBacklog: Int = 256

    /// Largest payload of one data frame we send.
    ///
    /// Default 65 507 = 65 535 (largest Noise transport message) − 16 (AEAD tag) − 12 (yamux
    /// header): yamux usually runs over Noise, and a frame of this size plus its header fits
    /// exactly into one Noise message, so no frame is split across two Noise messages and no
    /// tiny trailing message is produced. It also keeps one stream from hogging the connection
    /// for long: streams with data take turns frame by frame.
    public var maxDataFrameSize: Int = 65_535 - 16 - 12

    /// Interval between keep-alive pings; `nil` disables keep-alive (and the initial RTT ping).
    public var keepAliveInterval: TimeAmount? = .seconds(30)

    /// How long a keep-alive ping may stay unanswered before the session is closed with
    /// `YamuxError.Code.keepAliveTimeout`.
    public var keepAliveTimeout: TimeAmount = .seconds(30)
    /// After `YamuxStream.close()`, how long the peer has to end its side (FIN or RST) before the
    /// stream is reset, so a peer that never finishes cannot pin stream slots. nil waits forever.
    public var closeLingerTimeout: TimeAmount? = .seconds(60)

    public init() {}

    public static var defaults: Self { .init() }

    /// Largest frame the decoder accepts: a data frame can never legally exceed the largest
    /// receive window, plus slack for control frames (which have no payload).
    var maxFrameSize: Int { Int(maxStreamWindow) + 64 * 1024 }

    /// The configuration with every value clamped to something workable.
    var normalized: Self {
        var copy = self
        copy.initialStreamWindow = max(initialStreamWindow, Self.specInitialStreamWindow)
        copy.maxStreamWindow = max(maxStreamWindow, copy.initialStreamWindow)
        copy.maxStreams = max(1, maxStreams)
        copy.maxAcceptBacklog = max(1, maxAcceptBacklog)
        copy.maxOutboundAckBacklog = max(1, maxOutboundAckBacklog)
        copy.maxDataFrameSize = min(max(1, maxDataFrameSize), Int(UInt32.max))
        return copy
    }
}

/// GoAway error code (the "Length" field of a GoAway frame).
public struct YamuxGoAwayCode: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let normal = YamuxGoAwayCode(rawValue: 0)
    public static let protocolError = YamuxGoAwayCode(rawValue: 1)
    public static let internalError = YamuxGoAwayCode(rawValue: 2)

    public var description: String {
        switch self {
        case .normal: return "normal"
        case .protocolError: return "protocol error"
        case .internalError: return "internal error"
        default: return "code \(rawValue)"
        }
    }
}

/// Every error the Yamux module throws.
public struct YamuxError: CodedError, Hashable {
    /// The kinds of failure, in one byte.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        // One byte, not the name: errors are stored per stream (twice), so their size counts.
        private let index: UInt8
        private init(_ index: UInt8) { self.index = index }
        private static let names = ["protocolError", "windowExceeded", "frameTooLarge", "unknownFrameType", "invalidVersion", "invalidStreamID", "streamLimit", "acceptBacklogFull", "streamReset", "streamClosed", "sessionClosed", "goAwayReceived", "goAwaySent", "keepAliveTimeout", "invalidUsage", "resourceLimit"]
        /// The code's name, e.g. `protocolError`.
        public var description: String { Self.names[Int(index)] }

        /// The peer violated the protocol (generic).
        public static let protocolError = Code(0)
        /// The peer sent more data than the receive window allowed.
        public static let windowExceeded = Code(1)
        /// A frame longer than the decoder's limit.
        public static let frameTooLarge = Code(2)
        /// Frame type other than 0...3.
        public static let unknownFrameType = Code(3)
        /// Header version other than 0.
        public static let invalidVersion = Code(4)
        /// Stream ID 0 on a stream frame, a SYN of the wrong parity, or a duplicate SYN.
        public static let invalidStreamID = Code(5)
        /// `maxStreams` outbound streams are already open, or stream IDs are exhausted.
        public static let streamLimit = Code(6)
        /// The accept backlog was full. (Part of the contract; currently never thrown: refused
        /// inbound SYNs are answered with RST and never reach the application.)
        public static let acceptBacklogFull = Code(7)
        /// The stream was reset (by the peer, or locally with `reset()`).
        public static let streamReset = Code(8)
        /// The operation is not possible any more on this stream (e.g. write after closeWrite).
        public static let streamClosed = Code(9)
        /// The session (or its channel) is closed.
        public static let sessionClosed = Code(10)
        /// The peer sent GoAway: no new streams may be opened.
        public static let goAwayReceived = Code(11)
        /// We sent GoAway (or are closing): no new streams may be opened.
        public static let goAwaySent = Code(12)
        /// A keep-alive ping was not answered in time.
        public static let keepAliveTimeout = Code(13)
        /// API misuse, e.g. two concurrent readers of one stream.
        public static let invalidUsage = Code(14)
        /// The resource manager refused what the operation needs (a new outbound stream and its
        /// initial receive window); `resourceError` tells which limit.
        public static let resourceLimit = Code(15)
    }

    /// What kind of failure this is.
    public var code: Code
    /// Details for people.
    public var message: String
    /// The error behind this one: the resource manager's refusal behind a `.resourceLimit`
    /// error, the channel's error behind a `.sessionClosed`. (Stored as is: an `any Error` is one
    /// pointer to a box already, the size a separate box would take.)
    public var cause: (any Error)?
    /// The resource manager's refusal behind a `.resourceLimit` error.
    public var resourceError: ResourceError? { cause as? ResourceError }

    /// An error of kind `code`, with the error behind it, if any.
    public init(_ code: Code, _ message: String = "", cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    /// Equal when code and message are, and the resource errors behind them (other causes are
    /// not compared).
    public static func == (lhs: YamuxError, rhs: YamuxError) -> Bool {
        lhs.code == rhs.code && lhs.message == rhs.message && lhs.resourceError == rhs.resourceError
    }

    /// Hashes code, message and resource error, consistent with `==`.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(code)
        hasher.combine(message)
        hasher.combine(resourceError)
    }

    /// Whether this error means the peer broke the protocol (answered with GoAway(protocol error)).
    var isProtocolViolation: Bool {
        switch code {
        case .protocolError, .windowExceeded, .frameTooLarge, .unknownFrameType, .invalidVersion,
            .invalidStreamID:
            return true
        default:
            return false
        }
    }
}
