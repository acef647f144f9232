import Identity
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
            #if DEBUG || FUZZING
                try checkPeerExchange(body, &check)
            #endif
        } else {
            guard let message = try? PubSubRPC.Message(decoding: body) else { return }
            try check((try? PubSubRPC.Message(decoding: message.encoded())) == message, "pubsub message round trip differs")
            _ = message.signableBytes()
            // Both signature policies: a message passing StrictNoSign has no author fields; one
            // passing StrictSign has an author.
            if case .success(let author) = MessageSigning.check(message, policy: .strictNoSign) {
                try check(author == nil && message.from == nil && message.signature == nil, "StrictNoSign passed an authored message")
            }
            if case .success(let author) = MessageSigning.check(message, policy: .strictSign) {
                try check(author != nil && message.signature != nil, "StrictSign passed an unsigned message")
            }
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
        /// The peer-exchange offers of a decoded RPC's PRUNEs (signed peer records from the
        /// network): every offer considered is a candidate, an invalid record or skipped, and a
        /// candidate's record is about the candidate.
        static func checkPeerExchange(_ bytes: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
            guard let rpc = try? PubSubRPC(decoding: bytes), let prunes = rpc.control?.prune, !prunes.isEmpty else { return }
            let offers = prunes.flatMap(\.peers)
            let plan = PeerExchange.plan(offers, localPeer: fuzzLocalPeer, limit: 16, isConnected: { _ in false })
            try check(plan.candidates.count <= 16, "peer exchange over its limit")
            try check(plan.candidates.count + plan.invalidRecords + plan.skipped <= offers.count, "peer exchange counts more offers than given")
            for candidate in plan.candidates {
                if let record = candidate.record {
                    try check(record.peerID == candidate.peer, "peer exchange kept a record of another peer")
                }
            }
        }

        private static let fuzzLocalPeer = PrivateKey.ed25519(seed: 1).peerID

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
