import NIOCore

extension MultistreamNegotiator {
    /// Negotiates over an async byte stream (a multiplexed stream). Returns the protocol and the
    /// bytes that followed the last negotiation message, which belong to the application protocol.
    public static func negotiate(
        role: Role,
        write: (ByteBuffer) async throws -> Void,
        read: () async throws -> ByteBuffer?
    ) async throws -> (protocol: String, leftover: ByteBuffer) {
        var negotiator = MultistreamNegotiator(role: role)
        let first = negotiator.start()
        if !first.isEmpty { try await write(ByteBuffer(bytes: first)) }
        return try await negotiate(continuing: negotiator, write: write, read: read)
    }

    /// Continues a negotiation whose `start()` bytes the caller already sent (e.g. with the
    /// stream's SYN).
    public static func negotiate(
        continuing negotiator: MultistreamNegotiator,
        write: (ByteBuffer) async throws -> Void,
        read: () async throws -> ByteBuffer?
    ) async throws -> (protocol: String, leftover: ByteBuffer) {
        var negotiator = negotiator
        while true {
            guard let chunk = try await read() else {
                throw MultistreamError(.unexpectedEOF, "stream closed during negotiation")
            }
            let step = try negotiator.receive(chunk)
            if !step.send.isEmpty { try await write(ByteBuffer(bytes: step.send)) }
            if let proto = step.negotiated { return (proto, negotiator.takeLeftover()) }
        }
    }
}
