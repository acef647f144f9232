import Multiformats
import NIOCore

/// multistream-select 1.0 as a value-type state machine: bytes in, bytes to send and an outcome out.
/// It does no I/O, so the same logic drives the connection upgrade (in a NIO handler) and stream
/// negotiation (in async code), and is unit-tested byte by byte.
///
/// Wire format (multistream-select spec): every message is `uvarint(len) ‖ utf8 ‖ '\n'`, where `len`
/// counts the newline. Both sides start with the header `/multistream/1.0.0`. The dialer proposes a
/// protocol; the listener echoes it to accept or answers `na`.
public struct MultistreamNegotiator: Sendable {
    public static let header = "/multistream/1.0.0"
    public static let notAvailable = "na"
    /// Protocol IDs are short; nothing legitimate comes near this. Checked before buffering a message.
    public static let maxMessageLength = 1024
    /// How many `na`s a listener hands out before it gives up on a dialer.
    public static let maxListenerAttempts = 32

    public enum Role: Sendable {
        /// Proposes `proposals` in order until one is accepted.
        case dialer(proposals: [String])
        /// Accepts the first proposal in `protocols`.
        case listener(protocols: [String])
    }

    /// What one call to `receive` produced.
    public struct Step: Sendable {
        /// Bytes to write to the peer, possibly empty.
        public var send: [UInt8]
        /// The agreed protocol once negotiation is finished.
        public var negotiated: String?
    }

    private enum State: Sendable {
        case idle
        case dialerAwaitingHeader(index: Int)
        case dialerAwaitingResponse(index: Int)
        case listenerAwaitingHeader
        case listenerAwaitingProposal(attempts: Int)
        case done(String)
        case failed
    }

    private let role: Role
    private var state: State = .idle
    private var buffer: ByteBuffer

    public init(role: Role) {
        self.role = role
        self.buffer = ByteBuffer()
        if case .dialer(let proposals) = role {
            precondition(!proposals.isEmpty, "a dialer needs at least one protocol to propose")
        }
    }

    /// The bytes to send first. The dialer pipelines the header with its first proposal (one write).
    /// The listener sends nothing yet: its header goes out with its first answer, in one write, as
    /// soon as the dialer has spoken (a dialer always speaks first, so nobody waits on it).
    public mutating func start() -> [UInt8] {
        precondition(isIdle, "start() called twice")
        var out: [UInt8] = []
        switch role {
        case .dialer(let proposals):
            Self.encode(Self.header, into: &out)
            Self.encode(proposals[0], into: &out)
            state = .dialerAwaitingHeader(index: 0)
        case .listener:
            state = .listenerAwaitingHeader
            listenerHeaderPending = true
        }
        return out
    }

    private var listenerHeaderPending = false

    private var isIdle: Bool {
        if case .idle = state { return true }
        return false
    }

    /// The protocol agreed on, once negotiation is done.
    public var negotiatedProtocol: String? {
        if case .done(let p) = state { return p }
        return nil
    }

    /// Feed bytes from the peer. Throws `MultistreamError` on a protocol violation.
    public mutating func receive(_ bytes: ByteBuffer) throws(MultistreamError) -> Step {
        buffer.writeImmutableBuffer(bytes)
        var step = Step(send: [], negotiated: nil)
        if listenerHeaderPending && bytes.readableBytes > 0 {
            listenerHeaderPending = false
            Self.encode(Self.header, into: &step.send)
        }
        do {
            while negotiatedProtocol == nil, let message = try nextMessage() {
                try handle(message, step: &step)
            }
        } catch {
            state = .failed
            throw error
        }
        return step
    }

    /// Bytes that arrived after the final negotiation message: they belong to the next protocol.
    public mutating func takeLeftover() -> ByteBuffer {
        let rest = buffer
        buffer = ByteBuffer()
        return rest
    }

    private mutating func handle(_ message: String, step: inout Step) throws(MultistreamError) {
        switch state {
        case .idle, .done, .failed:
            preconditionFailure("receive() in state \(state)")
        case .dialerAwaitingHeader(let index):
            guard message == Self.header else {
                throw MultistreamError(.unsupportedVersion, "expected \(Self.header), got \(message.debugDescription)")
            }
            state = .dialerAwaitingResponse(index: index)
        case .dialerAwaitingResponse(let index):
            guard case .dialer(let proposals) = role else { preconditionFailure() }
            if message == proposals[index] {
                state = .done(message)
                step.negotiated = message
            } else if message == Self.notAvailable {
                let next = index + 1
                guard next < proposals.count else {
                    throw MultistreamError(.noProtocolInCommon, "peer supports none of \(proposals)")
                }
                Self.encode(proposals[next], into: &step.send)
                state = .dialerAwaitingResponse(index: next)
            } else {
                throw MultistreamError(
                    .unexpectedResponse, "proposed \(proposals[index]), peer answered \(message.debugDescription)")
            }
        case .listenerAwaitingHeader:
            guard message == Self.header else {
                throw MultistreamError(.unsupportedVersion, "expected \(Self.header), got \(message.debugDescription)")
            }
            state = .listenerAwaitingProposal(attempts: 0)
        case .listenerAwaitingProposal(let attempts):
            guard case .listener(let protocols) = role else { preconditionFailure() }
            if protocols.contains(message) {
                Self.encode(message, into: &step.send)
                state = .done(message)
                step.negotiated = message
            } else {
                // `ls` is optional in the spec; we answer it like any unsupported protocol.
                guard attempts + 1 < Self.maxListenerAttempts else {
                    throw MultistreamError(.tooManyAttempts, "dialer proposed \(attempts + 1) unsupported protocols")
                }
                Self.encode(Self.notAvailable, into: &step.send)
                state = .listenerAwaitingProposal(attempts: attempts + 1)
            }
        }
    }

    /// The next complete message, or nil when more bytes are needed. Limits are checked before
    /// waiting for (and so buffering) the body.
    private mutating func nextMessage() throws(MultistreamError) -> String? {
        // A valid prefix for a ≤ 1024-byte message has at most 2 bytes: anything longer is refused
        // before it is decoded (and before its body could be buffered).
        if let b0 = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self),
            let b1 = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt8.self), b0 & 0x80 != 0, b1 & 0x80 != 0
        {
            throw MultistreamError(.messageTooLong, "message length prefix too long")
        }
        let prefix: (value: UInt64, length: Int)?
        do {
            prefix = try buffer.getVarint(at: buffer.readerIndex)
        } catch {
            throw MultistreamError(.invalidLength, "invalid length prefix", cause: error)
        }
        guard let (length, prefixLength) = prefix else { return nil }
        guard length <= UInt64(Self.maxMessageLength) else {
            throw MultistreamError(.messageTooLong, "message of \(length) bytes exceeds \(Self.maxMessageLength)")
        }
        guard length >= 1 else { throw MultistreamError(.malformedMessage, "empty message") }
        let total = prefixLength + Int(length)
        guard buffer.readableBytes >= total else { return nil }
        buffer.moveReaderIndex(forwardBy: prefixLength)
        guard let body = buffer.readBytes(length: Int(length)), body.last == UInt8(ascii: "\n") else {
            throw MultistreamError(.malformedMessage, "message does not end in a newline")
        }
        guard let text = String(validating: body.dropLast(), as: UTF8.self) else {
            throw MultistreamError(.malformedMessage, "message is not UTF-8")
        }
        if buffer.readerIndex > 4096 { buffer.discardReadBytes() }
        return text
    }

    /// Appends one framed message.
    public static func encode(_ message: String, into out: inout [UInt8]) {
        let utf8 = Array(message.utf8)
        Varint.encode(UInt64(utf8.count + 1), into: &out)
        out.append(contentsOf: utf8)
        out.append(UInt8(ascii: "\n"))
    }
}
