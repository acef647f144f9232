import NIOCore
#if DEBUG || FUZZING
    @testable import Yamux
#else
    import Yamux
#endif

extension FuzzTargets {
    static func fuzzYamuxFrames(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        var reader = FuzzReader(input)
        let mode = reader.byte()
        let body = reader.rest()
        // A small limit too, so that the frame-too-large path is reachable with short inputs.
        let maxFrameSize = mode & 0x80 == 0 ? YamuxFrameDecoder.defaultMaxFrameSize : 1024
        var decoder = YamuxFrameDecoder(maxFrameSize: maxFrameSize)
        var fed = 0
        var reencoded = ByteBuffer()
        reading: for piece in chunks(body, mode: mode) {
            decoder.append(ByteBuffer(bytes: piece))
            fed += piece.count
            while true {
                let frame: YamuxFrame?
                do { frame = try decoder.nextFrame() } catch { break reading }
                guard let frame else { break }
                if frame.type == .data {
                    try check(frame.payload.readableBytes == Int(frame.length), "data frame length field and payload differ")
                    try check(Int(frame.length) <= maxFrameSize, "data frame over the limit accepted")
                } else {
                    try check(frame.payload.readableBytes == 0, "non-data frame with a payload")
                }
                frame.encode(into: &reencoded)
            }
            try check(decoder.bufferedBytes <= fed, "decoder holds more bytes than it was given")
        }
        // Every byte is accounted for: the frames re-encode to exactly the bytes consumed.
        let consumed = fed - decoder.bufferedBytes
        try check(reencoded.readableBytes == consumed, "frames re-encode to \(reencoded.readableBytes) bytes, \(consumed) were consumed")
        try check(Array(reencoded.readableBytesView) == Array(body[..<consumed]), "frames re-encode to different bytes")
    }
}

#if DEBUG || FUZZING
    extension FuzzTargets {
        /// A small session configuration so that limits (streams, backlog, windows) are reached
        /// with short inputs.
        static let yamuxFuzzConfiguration: YamuxConfiguration = {
            var configuration = YamuxConfiguration()
            configuration.maxStreams = 8
            configuration.maxAcceptBacklog = 4
            configuration.maxOutboundAckBacklog = 4
            configuration.maxDataFrameSize = 1024
            return configuration
        }()

        /// The input is a program: each step either delivers wire bytes (raw, or a frame built from
        /// a few fields so that the fuzzer reaches deep states quickly) or performs a local
        /// operation (open, accept, write, close, reset, credit, pull data frames, go away).
        /// After every step the session's counters must agree with its streams, and every frame
        /// it asks us to send must be well formed.
        static func fuzzYamuxSession(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
            var reader = FuzzReader(input)
            let role: YamuxRole = reader.byte() & 1 == 0 ? .initiator : .responder
            let configuration = yamuxFuzzConfiguration
            var machine = YamuxSessionStateMachine(role: role, configuration: configuration)
            var decoder = YamuxFrameDecoder(maxFrameSize: 64 * 1024)
            var failed = false
            var steps = 0
            while !reader.isAtEnd && steps < 4096 {
                steps += 1
                var actions: [YamuxSessionStateMachine.Action] = []
                let op = reader.byte()
                switch op % 8 {
                case 0, 1:
                    // Raw wire bytes.
                    decoder.append(ByteBuffer(bytes: reader.take(Int(reader.byte()))))
                case 2, 3, 4:
                    // One frame from fields: type, flags, small stream ID, length / payload.
                    let type = YamuxFrame.FrameType(rawValue: reader.byte() % 4) ?? .data
                    let flags = YamuxFrame.Flags(rawValue: UInt16(reader.byte() & 0x0f))
                    let streamID = UInt32(reader.byte() % 16)
                    let frame: YamuxFrame
                    if type == .data {
                        let payload = reader.take(Int(reader.byte()))
                        frame = .data(streamID: streamID, flags: flags, payload: ByteBuffer(bytes: payload))
                    } else {
                        frame = YamuxFrame(type: type, flags: flags, streamID: streamID, length: reader.uint32())
                    }
                    decoder.append(frame.encoded(allocator: ByteBufferAllocator()))
                case 5:
                    let firstData = reader.take(Int(reader.byte() % 64))
                    switch machine.openStream(firstData: firstData.isEmpty ? nil : ByteBuffer(bytes: firstData)) {
                    case .opened(let id, let frame):
                        try check(frame.streamID == id && frame.flags.contains(.syn), "open did not send a SYN for its stream")
                        try check(machine.isRemoteInitiatedForFuzz(id) == false, "opened a stream with the peer's parity")
                        actions.append(.send(frame))
                    case .mustWait, .failed: break
                    }
                case 6:
                    let ids = machine.streams.keys.sorted()
                    let choice = reader.byte()
                    let argument = reader.byte()
                    guard !ids.isEmpty else { break }
                    let id = ids[Int(choice) % ids.count]
                    switch argument % 6 {
                    case 0:
                        if let frame = machine.acceptStream(id) { actions.append(.send(frame)) }
                    case 1:
                        _ = machine.write(streamID: id, data: ByteBuffer(bytes: reader.take(Int(argument))), promise: nil)
                    case 2:
                        if case .send(let frame, _) = machine.closeWrite(streamID: id, promise: nil) { actions.append(.send(frame)) }
                    case 3:
                        if let (frame, failing) = machine.reset(streamID: id) {
                            try check(failing.isEmpty, "promises returned where none were given")
                            actions.append(.send(frame))
                        }
                    case 4:
                        if let frame = machine.windowCredit(streamID: id, delta: UInt32(argument) << 8) { actions.append(.send(frame)) }
                    default:
                        while let out = machine.nextDataFrame() {
                            try check(out.frame.payload.readableBytes <= configuration.maxDataFrameSize, "data frame over maxDataFrameSize")
                            actions.append(.send(out.frame))
                        }
                    }
                default:
                    switch reader.byte() % 3 {
                    case 0: actions.append(.send(machine.goAway(.normal)))
                    case 1: actions += machine.beginClosing().map { YamuxSessionStateMachine.Action.send($0.frame) }
                    default:
                        var sent = 0
                        while let out = machine.nextDataFrame(), sent < 1024 {
                            sent += 1
                            actions.append(.send(out.frame))
                        }
                    }
                }
                // Feed whatever frames are complete, validating headers first as the handler does.
                while !failed {
                    let frame: YamuxFrame?
                    do {
                        frame = try decoder.nextFrame(validatingHeader: { header throws(YamuxError) in
                            try machine.validateHeader(header)
                        })
                    } catch {
                        machine.protocolViolation(error, into: &actions)
                        break
                    }
                    guard let frame else { break }
                    let before = actions.count
                    machine.receive(frame, into: &actions)
                    if machine.isFailed { break }
                    try check(actions[before...].allSatisfy { if case .protocolViolation = $0 { false } else { true } },
                              "a protocol violation reported without failing the session")
                }
                try checkYamux(machine, actions, configuration, &check)
                failed = machine.isFailed
            }
        }

        private static func checkYamux(
            _ machine: YamuxSessionStateMachine, _ actions: [YamuxSessionStateMachine.Action],
            _ configuration: YamuxConfiguration, _ check: inout Checker
        ) throws(FuzzInvariantFailure) {
            try check(machine.inboundCount + machine.outboundCount == machine.streams.count,
                      "stream counters \(machine.inboundCount)+\(machine.outboundCount) != \(machine.streams.count) streams")
            try check(machine.inboundCount <= configuration.maxStreams, "more inbound streams than maxStreams")
            try check(machine.outboundCount <= configuration.maxStreams, "more outbound streams than maxStreams")
            try check(machine.acceptBacklog >= 0 && machine.acceptBacklog <= configuration.maxAcceptBacklog,
                      "accept backlog \(machine.acceptBacklog) out of range")
            try check(machine.outboundUnacked >= 0 && machine.outboundUnacked <= configuration.maxOutboundAckBacklog,
                      "unacknowledged outbound streams \(machine.outboundUnacked) out of range")
            let backlog = machine.streams.values.filter { !$0.isOutbound && $0.phase == .synReceived }.count
            try check(backlog == machine.acceptBacklog, "accept backlog \(machine.acceptBacklog) but \(backlog) streams wait")
            let unacked = machine.streams.values.filter { $0.isOutbound && $0.phase == .synSent }.count
            try check(unacked == machine.outboundUnacked, "\(machine.outboundUnacked) unacked counted, \(unacked) streams")
            for stream in machine.streams.values {
                try check(stream.pendingBytes == stream.pendingWrites.all.reduce(0) { $0 + $1.data.readableBytes },
                          "pending byte count differs from the queued writes")
            }
            var violations = 0
            for action in actions {
                switch action {
                case .send(let frame):
                    // What we send must decode to the same frame.
                    var decoder = YamuxFrameDecoder()
                    decoder.append(frame.encoded(allocator: ByteBufferAllocator()))
                    let again = try? decoder.nextFrame()
                    try check(again == frame, "a frame we send does not decode to itself")
                case .deliver(let id, let payload):
                    try check(payload.readableBytes > 0, "empty delivery on stream \(id)")
                case .protocolViolation:
                    violations += 1
                default:
                    break
                }
            }
            try check(violations <= 1, "more than one protocol violation reported in one step")
            if violations == 1 { try check(machine.isFailed, "protocol violation without failing the session") }
        }
    }

    extension YamuxSessionStateMachine {
        /// Whether `id` has the peer's parity (odd IDs belong to the initiator).
        fileprivate func isRemoteInitiatedForFuzz(_ id: UInt32) -> Bool {
            let odd = id & 1 == 1
            return role == .responder ? odd : !odd
        }
    }
#endif
