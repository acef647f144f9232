import NIOCore
#if DEBUG || FUZZING
    @testable import PubSub
#else
    import PubSub
#endif

extension FuzzTargets {
    static func fuzzPubSubRPC(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        var reader = FuzzReader(input)
        let mode = reader.byte()
        let body = reader.rest()
        if mode & 1 == 0 {
            try checkRPC(body, target: .pubsubRPC, &check)
        } else {
            guard let message = try? PubSubRPC.Message(decoding: body) else { return }
            try check((try? PubSubRPC.Message(decoding: message.encoded())) == message, "pubsub message round trip differs")
            _ = message.signableBytes()
        }
    }

    /// Decodes an RPC; if it decodes, its encoding decodes to the same RPC. An empty control
    /// message is not encoded (it means nothing), so it compares as absent.
    static func checkRPC(_ bytes: [UInt8], target: FuzzTarget, _ check: inout Checker) throws(FuzzInvariantFailure) {
        guard var rpc = try? PubSubRPC(decoding: bytes) else { return }
        if rpc.control?.isEmpty == true { rpc.control = nil }
        let again: PubSubRPC
        do {
            again = try PubSubRPC(decoding: rpc.encoded())
        } catch {
            throw FuzzInvariantFailure(target: target, message: "re-encoded RPC does not decode", cause: error)
        }
        try check(again == rpc, "pubsub RPC round trip differs")
    }
}

#if DEBUG || FUZZING
    extension FuzzTargets {
        static func fuzzPubSubFrames(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
            var reader = FuzzReader(input)
            let mode = reader.byte()
            let body = reader.rest()
            let maxFrameSize = mode & 0x80 == 0 ? 4096 : 64
            var decoder = RPCFrameDecoder(maxFrameSize: maxFrameSize)
            var fed = 0
            var reencoded = ByteBuffer()
            reading: for piece in chunks(body, mode: mode) {
                decoder.append(ByteBuffer(bytes: piece))
                fed += piece.count
                while true {
                    let frame: [UInt8]?
                    do { frame = try decoder.nextFrame() } catch { break reading }
                    guard let frame else { break }
                    try check(frame.count <= maxFrameSize, "RPC frame of \(frame.count) bytes over the limit")
                    reencoded.writeVarint(UInt64(frame.count))
                    reencoded.writeBytes(frame)
                    try checkRPC(frame, target: .pubsubFrames, &check)
                }
                try check(decoder.bufferedBytes <= fed, "decoder holds more bytes than it was given")
            }
            // Minimal length prefixes only, so the frames re-encode to exactly the bytes consumed.
            let consumed = fed - decoder.bufferedBytes
            try check(Array(reencoded.readableBytesView) == Array(body[..<consumed]), "RPC frames re-encode to different bytes")
        }
    }
#endif
