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
