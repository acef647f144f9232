import NIOCore
import NIOWebSocket

/// What a WebSocket connection does with each received frame: the libp2p rules for WebSocket
/// (binary frames carry the connection's bytes, nothing else is data) as a value type without
/// I/O. ``WebSocketFrameHandler`` carries out its decisions.
///
/// libp2p over WebSocket (libp2p/specs, and go-libp2p's and py-libp2p's transports) is a byte
/// stream inside binary messages: message boundaries mean nothing, so each frame's payload is
/// handed on at once and a fragmented message is never reassembled (no buffering beyond one
/// frame, which the frame decoder bounds).
public struct WebSocketFramePolicy: Sendable {
    /// Which end of the WebSocket connection this is: RFC 6455 §5.1 has the client mask every
    /// frame and the server none, and each side must fail a connection that breaks this.
    public enum Role: Sendable, Hashable {
        /// The dialing side (sends masked frames).
        case client
        /// The accepting side (sends unmasked frames).
        case server
    }

    /// The decision for one frame.
    public enum Action: Sendable {
        /// Pass these bytes (unmasked, possibly empty) to the handlers after.
        case deliver(ByteBuffer)
        /// Answer with a pong carrying this payload (RFC 6455 §5.5.2).
        case pong(ByteBuffer)
        /// Nothing to do (an unsolicited pong).
        case ignore
        /// The peer closes: answer with a close frame (echoing its status code, if any) and close
        /// the connection.
        case close(WebSocketErrorCode?)
        /// The peer broke the protocol: send a close frame with this code, then close the
        /// connection with the error.
        case fail(TransportError, WebSocketErrorCode)
    }

    /// Our end.
    public let role: Role
    private var inFragmentedMessage = false
    private var closed = false

    /// A policy for a new connection.
    public init(role: Role) {
        self.role = role
    }

    /// Decides what to do with `frame`. After a `.close` or `.fail`, every further frame is
    /// ignored.
    public mutating func receive(_ frame: WebSocketFrame) -> Action {
        if closed { return .ignore }
        let action = decide(frame)
        switch action {
        case .close, .fail: closed = true
        default: break
        }
        return action
    }

    private mutating func decide(_ frame: WebSocketFrame) -> Action {
        // No extension is negotiated in the upgrade, so no reserved bit may be set (§5.2).
        if frame.rsv1 || frame.rsv2 || frame.rsv3 {
            return Self.violation("frame with reserved bits set")
        }
        switch (role, frame.maskKey) {
        case (.server, nil): return Self.violation("unmasked frame from a client")
        case (.client, .some): return Self.violation("masked frame from a server")
        default: break
        }
        switch frame.opcode {
        case .binary:
            if inFragmentedMessage { return Self.violation("new binary message inside a fragmented one") }
            inFragmentedMessage = !frame.fin
            return .deliver(frame.unmaskedData)
        case .continuation:
            if !inFragmentedMessage { return Self.violation("continuation frame outside a fragmented message") }
            inFragmentedMessage = !frame.fin
            return .deliver(frame.unmaskedData)
        case .text:
            // libp2p sends its bytes in binary messages only; a text message must be UTF-8,
            // which arbitrary libp2p bytes are not.
            return Self.violation("text frame (libp2p uses binary frames)")
        case .ping:
            return .pong(frame.unmaskedData)
        case .pong:
            return .ignore
        case .connectionClose:
            var data = frame.unmaskedData
            return .close(data.readWebSocketErrorCode())
        default:
            return Self.violation("unknown opcode \(frame.opcode)")
        }
    }

    private static func violation(_ what: String) -> Action {
        .fail(TransportError(.protocolViolation, "WebSocket: \(what)", reason: what), .protocolError)
    }

    /// Decides what to do when the frame decoder refused a frame (over the size limit, a bad
    /// control frame): always a `.fail`, or `.ignore` once closed.
    public mutating func receiveDecoderError(_ error: NIOWebSocketError, maxFrameSize: Int) -> Action {
        if closed { return .ignore }
        closed = true
        switch error {
        case .invalidFrameLength:
            let what = "frame larger than \(maxFrameSize) bytes"
            return .fail(TransportError(.frameTooLarge, "WebSocket: \(what)", reason: what), .messageTooLarge)
        case .fragmentedControlFrame:
            return Self.violation("fragmented control frame")
        case .multiByteControlFrameLength:
            return Self.violation("control frame longer than 125 bytes")
        }
    }
}
