import NIOCore

/// The protocol logic of one yamux session, without any I/O: frames and local operations go
/// in, actions come out. It is owned by `YamuxHandler` and only used on the channel's event
/// loop (it holds write promises, which are plain values here; unit tests pass nil).
///
/// What it tracks per stream: phase (SYN sent / SYN received / established), half-close
/// flags, the peer's send window, how much the peer may still send us (`recvRemaining`), and
/// queued outbound data. What the application consumed (the other half of receive flow
/// control) is tracked by `YamuxReceiveWindow` in the stream's read state; it reports credit
/// back through `windowCredit(streamID:delta:)`.
struct YamuxSessionStateMachine {
    enum StreamPhase: Hashable, Sendable {
        /// Outbound, our SYN is sent, the peer's ACK not yet received.
        case synSent
        /// Inbound, SYN received, not yet taken by the application (so not ACKed).
        case synReceived
        case established
    }

    struct PendingWrite {
        var data: ByteBuffer
        var promise: EventLoopPromise<Void>?
    }

    struct StreamState {
        let isOutbound: Bool
        var phase: StreamPhase
        /// Bytes we may still send (the peer's receive window as we know it).
        var sendWindow: UInt32
        /// Bytes the peer may still send us before it needs credit.
        var recvRemaining: UInt32
        var pendingWrites = Queue<PendingWrite>()
        var pendingBytes = 0
        /// `closeWrite` was requested; FIN goes out once `pendingWrites` are sent.
        var finRequested = false
        var finPromise: EventLoopPromise<Void>?
        var localFINSent = false
        var remoteFIN = false
        var inReadyQueue = false

        var canSendData: Bool { pendingBytes > 0 && sendWindow > 0 }
    }

    enum Action {
        /// Write this frame now (control frames; data frames come from `nextDataFrame()`).
        case send(YamuxFrame)
        /// The peer opened a stream; it is in the accept backlog (not ACKed yet).
        case streamOpened(UInt32)
        /// The peer ACKed a stream we opened.
        case streamAcknowledged(UInt32)
        /// Payload for the stream's reader.
        case deliver(UInt32, ByteBuffer)
        /// The peer half-closed (FIN): the reader gets EOF after the queued data.
        case remoteFinished(UInt32)
        /// The stream was reset (by the peer, or by us because of a peer's misbehaviour, in
        /// which case an RST `.send` precedes this). The writes are to be failed.
        case streamReset(UInt32, failing: [EventLoopPromise<Void>])
        /// Both directions are finished; the stream is forgotten.
        case streamClosed(UInt32)
        /// Answer to one of our pings.
        case pong(UInt32)
        case goAwayReceived(YamuxGoAwayCode)
        /// Some stream can send data now: pull frames with `nextDataFrame()`.
        case dataReady
        /// The peer broke the protocol. A GoAway(protocol error) `.send` precedes this; the
        /// session must be closed with this error.
        case protocolViolation(YamuxError)
    }

    enum OpenResult {
        case opened(streamID: UInt32, frame: YamuxFrame)
        /// `maxOutboundAckBacklog` of our streams are not ACKed yet: try again after an ACK.
        case mustWait
        case failed(YamuxError)
    }

    enum CloseWriteResult {
        /// FIN written now in this frame; `closed` if that completed the stream.
        case send(YamuxFrame, closed: Bool)
        /// FIN will be piggybacked on the last queued data frame.
        case queued
        case alreadyClosed
        case failed(YamuxError)
    }

    struct OutboundData {
        var frame: YamuxFrame
        /// Write promise (if this frame completes a write) and FIN promise (if it carries FIN).
        var writePromise: EventLoopPromise<Void>?
        var finPromise: EventLoopPromise<Void>?
        /// Set when this frame's FIN completed the stream (it was removed).
        var closedStreamID: UInt32?
    }

    let role: YamuxRole
    let configuration: YamuxConfiguration

    private(set) var streams: [UInt32: StreamState] = [:]
    private var nextStreamID: UInt32
    private var streamIDsExhausted = false
    private(set) var inboundCount = 0
    private(set) var outboundCount = 0
    /// Inbound streams not yet taken by the application.
    private(set) var acceptBacklog = 0
    /// Outbound streams not yet ACKed by the peer.
    private(set) var outboundUnacked = 0
    private(set) var localGoAway = false
    private(set) var remoteGoAway = false
    /// Graceful close under way: new streams are refused.
    private(set) var isClosing = false
    private(set) var isFailed = false
    /// Streams that may be able to send data, in round-robin order (may hold stale IDs).
    private var readyQueue = CircularBuffer<UInt32>(initialCapacity: 16)

    init(role: YamuxRole, configuration: YamuxConfiguration) {
        self.role = role
        self.configuration = configuration.normalized
        // Spec: "The client side should use odd ID's, and the server even."
        self.nextStreamID = role == .initiator ? 1 : 2
    }

    private static let specWindow = YamuxConfiguration.specInitialStreamWindow

    /// Extra window announced on our SYN / ACK on top of the spec's implicit 256 KiB.
    private var initialWindowBonus: UInt32 { configuration.initialStreamWindow - Self.specWindow }

    var openStreamCount: Int { streams.count }

    func phase(of streamID: UInt32) -> StreamPhase? { streams[streamID]?.phase }
    func sendWindow(of streamID: UInt32) -> UInt32? { streams[streamID]?.sendWindow }
    func receiveRemaining(of streamID: UInt32) -> UInt32? { streams[streamID]?.recvRemaining }
    func isLocallyFinished(_ streamID: UInt32) -> Bool? { streams[streamID]?.localFINSent }
    func isRemotelyFinished(_ streamID: UInt32) -> Bool? { streams[streamID]?.remoteFIN }

    private func isRemoteInitiated(_ id: UInt32) -> Bool {
        let odd = id & 1 == 1
        // The remote is the initiator (odd IDs) iff we are the responder.
        return role == .responder ? odd : !odd
    }

    // MARK: - Inbound

    /// What `receive` will do with a frame, decided from its header alone.
    enum HeaderDisposition: Equatable {
        /// Its payload is delivered (or it has none).
        case keep
        /// Its payload is dropped: the stream is unknown, gone, refused, or already finished.
        case discard
        /// A SYN the session would accept: a new inbound stream (the caller may still refuse it
        /// for lack of resources, see `receive(_:into:admitNewStream:)`).
        case newStream
    }

    /// Checks a frame header as soon as it is parsed, before its payload is buffered.
    func validateHeader(_ header: YamuxFrameHeader) throws(YamuxError) {
        _ = try classify(header)
    }

    /// Checks a frame header as soon as it is parsed (before its payload is buffered) and tells
    /// what `receive` will do with the frame, mirroring its decisions, so that the payload of a
    /// frame nobody will read is skipped as it arrives instead of being buffered whole first (a
    /// 16 MiB data frame for an unknown stream costs no memory). Nothing changes between this
    /// call and `receive` of a discarded frame: the decoder hands it over right after its header.
    func classify(_ header: YamuxFrameHeader) throws(YamuxError) -> HeaderDisposition {
        guard header.type == .data || header.type == .windowUpdate, !isFailed else { return .keep }
        let id = header.streamID
        guard id != 0 else {
            // Spec: ID 0 is reserved for the session (ping / go away).
            throw YamuxError(.invalidStreamID, "stream frame on stream ID 0")
        }
        if header.flags.contains(.syn) {
            guard streams.index(forKey: id) == nil else {
                throw YamuxError(.invalidStreamID, "duplicate SYN for open stream \(id)")
            }
            guard isRemoteInitiated(id) else {
                throw YamuxError(.invalidStreamID, "SYN with stream ID \(id) of our parity")
            }
            // Before our ACK, the peer may only assume the spec's 256 KiB.
            if header.type == .data && header.length > Self.specWindow {
                throw YamuxError(.windowExceeded, "SYN data frame of \(header.length) bytes exceeds the initial window")
            }
            return header.flags.contains(.rst) || refusesInboundStreams ? .discard : .newStream
        }
        guard let index = streams.index(forKey: id) else {
            // Yamux spec and go-yamux: a frame for a stream we do not know is not an error (it
            // can be data still in flight for a stream we reset); go-yamux drains its payload.
            // maxFrameSize bounds one frame; its bytes are skipped as they arrive.
            return .discard
        }
        guard header.type == .data else { return .keep }
        let remaining = streams.values[index].recvRemaining
        guard header.length <= remaining else {
            throw YamuxError(.windowExceeded, "data frame of \(header.length) bytes on stream \(id) exceeds the remaining receive window \(remaining)")
        }
        // Data after the peer's FIN: `receive` resets the stream and drops the data.
        return streams.values[index].remoteFIN && header.length > 0 ? .discard : .keep
    }

    /// Whether a new inbound stream would be refused (with RST) right now.
    private var refusesInboundStreams: Bool {
        localGoAway || isClosing || inboundCount >= configuration.maxStreams
            || acceptBacklog >= configuration.maxAcceptBacklog
    }

    /// The decoder (or anything else) found a protocol violation.
    mutating func protocolViolation(_ error: YamuxError, into actions: inout [Action]) {
        guard !isFailed else { return }
        isFailed = true
        actions.append(.send(.goAway(.protocolError)))
        actions.append(.protocolViolation(error))
    }

    /// Handles one frame from the peer. `admitNewStream == false`: a SYN the session would accept
    /// is refused with RST all the same (the caller could not reserve resources for it).
    mutating func receive(_ frame: YamuxFrame, into actions: inout [Action], admitNewStream: Bool = true) {
        guard !isFailed else { return }
        switch frame.type {
        case .ping:
            // Spec: a ping with SYN is a request, echoed with ACK and the same opaque value.
            if frame.flags.contains(.syn) {
                actions.append(.send(.ping(opaque: frame.length, ack: true)))
            } else if frame.flags.contains(.ack) {
                actions.append(.pong(frame.length))
            }
        case .goAway:
            // Existing streams continue; we just may not open new ones.
            remoteGoAway = true
            actions.append(.goAwayReceived(YamuxGoAwayCode(rawValue: frame.length)))
        case .data, .windowUpdate:
            receiveStreamFrame(frame, into: &actions, admitNewStream: admitNewStream)
        }
    }

    private mutating func receiveStreamFrame(_ frame: YamuxFrame, into actions: inout [Action], admitNewStream: Bool) {
        let id = frame.streamID
        let flags = frame.flags
        guard id != 0 else {
            // Spec: ID 0 is reserved for the session (ping / go away).
            return protocolViolation(YamuxError(.invalidStreamID, "stream frame on stream ID 0"), into: &actions)
        }

        if flags.contains(.syn) {
            guard streams[id] == nil else {
                return protocolViolation(YamuxError(.invalidStreamID, "duplicate SYN for open stream \(id)"), into: &actions)
            }
            guard isRemoteInitiated(id) else {
                return protocolViolation(YamuxError(.invalidStreamID, "SYN with stream ID \(id) of our parity"), into: &actions)
            }
            // No "IDs must increase" check: go-yamux allocates IDs atomically but sends the
            // SYNs from the opening goroutines, so concurrently opened streams can arrive out
            // of order. A SYN for an ID that is currently open is rejected above.
            if frame.type == .data && frame.length > Self.specWindow {
                return protocolViolation(YamuxError(.windowExceeded, "SYN data frame exceeds the initial window"), into: &actions)
            }
            if flags.contains(.rst) { return }
            if refusesInboundStreams || !admitNewStream {
                // Refuse the stream; any data on it is dropped, later frames for it ignored.
                actions.append(.send(.windowUpdate(streamID: id, flags: .rst, delta: 0)))
                return
            }
            streams[id] = StreamState(
                isOutbound: false, phase: .synReceived,
                sendWindow: Self.specWindow, recvRemaining: Self.specWindow)
            inboundCount += 1
            acceptBacklog += 1
            actions.append(.streamOpened(id))
        }

        guard let index = streams.index(forKey: id) else {
            // Frame for a stream we no longer (or never) know: closed, reset, or refused.
            // Ignored (go-yamux / rust-yamux do the same); its data is dropped.
            return
        }

        if flags.contains(.rst) {
            let promises = removeStream(id)
            actions.append(.streamReset(id, failing: promises))
            return
        }

        if flags.contains(.ack) && streams.values[index].phase == .synSent {
            streams.values[index].phase = .established
            outboundUnacked -= 1
            actions.append(.streamAcknowledged(id))
        }

        switch frame.type {
        case .windowUpdate:
            let (sum, overflow) = streams.values[index].sendWindow.addingReportingOverflow(frame.length)
            guard !overflow else {
                return protocolViolation(YamuxError(.protocolError, "window update overflows the send window of stream \(id)"), into: &actions)
            }
            streams.values[index].sendWindow = sum
            if frame.length > 0 { markReady(index, into: &actions) }
        case .data:
            let length = frame.length
            guard length <= streams.values[index].recvRemaining else {
                return protocolViolation(YamuxError(.windowExceeded, "data frame of \(length) bytes on stream \(id) exceeds the remaining receive window \(streams.values[index].recvRemaining)"), into: &actions)
            }
            if streams.values[index].remoteFIN {
                if length > 0 {
                    // Data after the peer's own FIN: reset that stream (not worth killing
                    // the whole session over).
                    let promises = removeStream(id)
                    actions.append(.send(.windowUpdate(streamID: id, flags: .rst, delta: 0)))
                    actions.append(.streamReset(id, failing: promises))
                }
                return
            }
            streams.values[index].recvRemaining -= length
            if length > 0 { actions.append(.deliver(id, frame.payload)) }
        case .ping, .goAway:
            preconditionFailure("not a stream frame")
        }

        if flags.contains(.fin) && !streams.values[index].remoteFIN {
            streams.values[index].remoteFIN = true
            actions.append(.remoteFinished(id))
            if streams.values[index].localFINSent {
                _ = removeStream(id)
                actions.append(.streamClosed(id))
            }
        }
    }

    private mutating func markReady(_ index: Dictionary<UInt32, StreamState>.Index, into actions: inout [Action]) {
        guard streams.values[index].canSendData, !streams.values[index].inReadyQueue else { return }
        streams.values[index].inReadyQueue = true
        readyQueue.append(streams.keys[index])
        actions.append(.dataReady)
    }

    /// Forgets a stream, returning the promises of its unsent writes (and FIN).
    private mutating func removeStream(_ id: UInt32) -> [EventLoopPromise<Void>] {
        guard let stream = streams.removeValue(forKey: id) else { return [] }
        if stream.isOutbound {
            outboundCount -= 1
            if stream.phase == .synSent { outboundUnacked -= 1 }
        } else {
            inboundCount -= 1
            if stream.phase == .synReceived { acceptBacklog -= 1 }
        }
        var promises = stream.pendingWrites.all.compactMap(\.promise)
        if let fin = stream.finPromise { promises.append(fin) }
        return promises
    }

    // MARK: - Outbound operations

    /// Opens an outbound stream. `firstData`, if given, rides on the SYN: the frame returned is
    /// then a data frame with SYN carrying it (its window is taken), provided no extra initial
    /// window must be announced and it fits one frame; otherwise the SYN is a window update and
    /// the caller queues the data with `write` (a `.data` frame tells which happened).
    /// Yamux spec: SYN "may be sent with a data or window update message"; go-yamux, rust-yamux
    /// and py-libp2p 0.8.1 (yamux.py, `handle_incoming`) all accept data on a SYN.
    mutating func openStream(firstData: ByteBuffer? = nil) -> OpenResult {
        if isFailed { return .failed(YamuxError(.sessionClosed, "session closed")) }
        if localGoAway || isClosing { return .failed(YamuxError(.goAwaySent, "session is going away")) }
        if remoteGoAway { return .failed(YamuxError(.goAwayReceived, "peer sent GoAway")) }
        if outboundCount >= configuration.maxStreams {
            return .failed(YamuxError(.streamLimit, "\(outboundCount) outbound streams open (maxStreams)"))
        }
        if streamIDsExhausted { return .failed(YamuxError(.streamLimit, "stream IDs exhausted")) }
        if outboundUnacked >= configuration.maxOutboundAckBacklog { return .mustWait }

        let id = nextStreamID
        let (next, overflow) = nextStreamID.addingReportingOverflow(2)
        if overflow { streamIDsExhausted = true } else { nextStreamID = next }
        streams[id] = StreamState(
            isOutbound: true, phase: .synSent,
            sendWindow: Self.specWindow, recvRemaining: configuration.initialStreamWindow)
        outboundCount += 1
        outboundUnacked += 1
        if let firstData, firstData.readableBytes > 0, initialWindowBonus == 0,
            firstData.readableBytes <= min(Int(Self.specWindow), configuration.maxDataFrameSize)
        {
            streams[id]!.sendWindow -= UInt32(firstData.readableBytes)
            return .opened(streamID: id, frame: .data(streamID: id, flags: .syn, payload: firstData))
        }
        // SYN as a window update (like go-yamux) that also announces any extra initial window.
        return .opened(streamID: id, frame: .windowUpdate(streamID: id, flags: .syn, delta: initialWindowBonus))
    }

    /// Whether `openStream` would answer `.mustWait` (the outbound ACK backlog is full).
    var mustWaitToOpen: Bool {
        !isFailed && !localGoAway && !isClosing && !remoteGoAway && outboundCount < configuration.maxStreams
            && !streamIDsExhausted && outboundUnacked >= configuration.maxOutboundAckBacklog
    }

    /// The application took an inbound stream: returns the ACK frame to send (nil if the
    /// stream is gone meanwhile).
    mutating func acceptStream(_ id: UInt32) -> YamuxFrame? {
        guard let index = streams.index(forKey: id), streams.values[index].phase == .synReceived else { return nil }
        streams.values[index].phase = .established
        streams.values[index].recvRemaining += initialWindowBonus
        acceptBacklog -= 1
        return .windowUpdate(streamID: id, flags: .ack, delta: initialWindowBonus)
    }

    enum WriteResult {
        /// Queued; `ready` if the handler should pull data frames now.
        case queued(ready: Bool)
        case failed(YamuxError)
    }

    mutating func write(streamID id: UInt32, data: ByteBuffer, promise: EventLoopPromise<Void>?) -> WriteResult {
        guard !isFailed else { return .failed(YamuxError(.sessionClosed, "session closed")) }
        guard let index = streams.index(forKey: id) else {
            return .failed(YamuxError(.streamClosed, "stream \(id) is closed"))
        }
        guard !streams.values[index].finRequested else {
            return .failed(YamuxError(.streamClosed, "write after closeWrite on stream \(id)"))
        }
        guard data.readableBytes > 0 else {
            // Ordering with earlier writes does not matter for an empty write: complete it.
            promise?.succeed(())
            return .queued(ready: false)
        }
        streams.values[index].pendingWrites.append(PendingWrite(data: data, promise: promise))
        streams.values[index].pendingBytes += data.readableBytes
        var actions: [Action] = []
        markReady(index, into: &actions)
        return .queued(ready: !actions.isEmpty)
    }

    mutating func closeWrite(streamID id: UInt32, promise: EventLoopPromise<Void>?) -> CloseWriteResult {
        guard !isFailed else { return .failed(YamuxError(.sessionClosed, "session closed")) }
        guard let index = streams.index(forKey: id) else {
            return .failed(YamuxError(.streamClosed, "stream \(id) is closed"))
        }
        if streams.values[index].finRequested { return .alreadyClosed }
        streams.values[index].finRequested = true
        if streams.values[index].pendingWrites.isEmpty {
            streams.values[index].localFINSent = true
            let closed = streams.values[index].remoteFIN
            if closed { _ = removeStream(id) }
            // FIN as an empty data frame: it uses no window, so it need not wait for credit.
            return .send(.data(streamID: id, flags: .fin, payload: ByteBuffer()), closed: closed)
        }
        streams.values[index].finPromise = promise
        return .queued
    }

    /// Local reset: returns the RST frame and the promises of the unsent writes (nil if the
    /// stream is already gone).
    mutating func reset(streamID id: UInt32) -> (frame: YamuxFrame, failing: [EventLoopPromise<Void>])? {
        guard !isFailed, streams[id] != nil else { return nil }
        let promises = removeStream(id)
        return (.windowUpdate(streamID: id, flags: .rst, delta: 0), promises)
    }

    /// The application consumed data: grant `delta` more bytes to the peer. Returns the
    /// WINDOW_UPDATE to send (nil if the stream is gone or the peer already finished sending).
    mutating func windowCredit(streamID id: UInt32, delta: UInt32) -> YamuxFrame? {
        guard !isFailed, delta > 0, let index = streams.index(forKey: id), !streams.values[index].remoteFIN else { return nil }
        let (sum, overflow) = streams.values[index].recvRemaining.addingReportingOverflow(delta)
        guard !overflow else { return nil }
        streams.values[index].recvRemaining = sum
        return .windowUpdate(streamID: id, delta: delta)
    }

    /// Next data frame to send, taking streams in round-robin order, each frame at most
    /// `maxDataFrameSize` bytes and within the stream's send window. nil when no stream can
    /// send (no data, or no window: such streams resume on the peer's WINDOW_UPDATE).
    mutating func nextDataFrame() -> OutboundData? {
        guard !isFailed else { return nil }
        while let id = readyQueue.popFirst() {
            guard let index = streams.index(forKey: id) else { continue }
            streams.values[index].inReadyQueue = false
            guard streams.values[index].canSendData else { continue }

            let available = streams.values[index].pendingWrites.first!.data.readableBytes
            let length = min(available, Int(streams.values[index].sendWindow), configuration.maxDataFrameSize)
            let payload = streams.values[index].pendingWrites.modifyFirst { $0.data.readSlice(length: length)! }
            streams.values[index].sendWindow -= UInt32(length)
            streams.values[index].pendingBytes -= length

            var out = OutboundData(frame: .data(streamID: id, payload: payload))
            if length == available {
                out.writePromise = streams.values[index].pendingWrites.popFirst()!.promise
            }
            if streams.values[index].pendingWrites.isEmpty && streams.values[index].finRequested {
                out.frame.header.flags.insert(.fin)
                out.finPromise = streams.values[index].finPromise
                streams.values[index].finPromise = nil
                streams.values[index].localFINSent = true
                if streams.values[index].remoteFIN {
                    _ = removeStream(id)
                    out.closedStreamID = id
                    return out
                }
            }
            if streams.values[index].canSendData {
                streams.values[index].inReadyQueue = true
                readyQueue.append(id)
            }
            return out
        }
        return nil
    }

    /// We send GoAway: no new streams either way from now on.
    mutating func goAway(_ code: YamuxGoAwayCode) -> YamuxFrame {
        localGoAway = true
        return .goAway(code)
    }

    /// Graceful close begins: new streams are refused, streams still in the accept backlog
    /// are reset. Returns the RST frames and the IDs of the reset streams.
    mutating func beginClosing() -> [(streamID: UInt32, frame: YamuxFrame)] {
        isClosing = true
        let backlog = streams.filter { $0.value.phase == .synReceived }.map(\.key).sorted()
        return backlog.compactMap { id in
            reset(streamID: id).map { (id, $0.frame) }
        }
    }

    /// The session ended: forget every stream, returning all unsent write promises.
    mutating func failSession() -> [EventLoopPromise<Void>] {
        isFailed = true
        var promises: [EventLoopPromise<Void>] = []
        for id in Array(streams.keys) {
            promises += removeStream(id)
        }
        readyQueue.removeAll()
        return promises
    }
}
