import NIOCore
import NIOEmbedded
import Testing

@testable import Yamux

typealias SM = YamuxSessionStateMachine

/// Frame-level tests of the session state machine: no channels, no event loops.
@Suite("Yamux session state machine")
struct StateMachineTests {
    static let window = 256 * 1024

    static func config(_ body: (inout YamuxConfiguration) -> Void = { _ in }) -> YamuxConfiguration {
        var c = YamuxConfiguration()
        c.keepAliveInterval = nil
        body(&c)
        return c
    }

    // MARK: helpers

    @discardableResult
    static func receive(_ sm: inout SM, _ frame: YamuxFrame) -> [SM.Action] {
        var actions: [SM.Action] = []
        sm.receive(frame, into: &actions)
        return actions
    }

    static func sent(_ actions: [SM.Action]) -> [YamuxFrame] {
        actions.compactMap { if case .send(let f) = $0 { return f } else { return nil } }
    }

    static func opened(_ actions: [SM.Action]) -> [UInt32] {
        actions.compactMap { if case .streamOpened(let id) = $0 { return id } else { return nil } }
    }

    static func delivered(_ actions: [SM.Action]) -> [(UInt32, ByteBuffer)] {
        actions.compactMap { if case .deliver(let id, let b) = $0 { return (id, b) } else { return nil } }
    }

    static func violation(_ actions: [SM.Action]) -> YamuxError? {
        for case .protocolViolation(let e) in actions { return e }
        return nil
    }

    static func contains(_ actions: [SM.Action], _ predicate: (SM.Action) -> Bool) -> Bool {
        actions.contains(where: predicate)
    }

    static func open(_ sm: inout SM) throws -> (UInt32, YamuxFrame) {
        guard case .opened(let id, let frame) = sm.openStream() else {
            Issue.record("openStream did not open")
            throw YamuxError(.invalidUsage)
        }
        return (id, frame)
    }

    /// Drains every data frame currently sendable.
    static func drain(_ sm: inout SM) -> [YamuxFrame] {
        var frames: [YamuxFrame] = []
        while let out = sm.nextDataFrame() { frames.append(out.frame) }
        return frames
    }

    /// An established stream between a client (initiator) and a server (responder).
    static func establishedPair(
        _ config: YamuxConfiguration = config()
    ) throws -> (client: SM, server: SM, id: UInt32) {
        var client = SM(role: .initiator, configuration: config)
        var server = SM(role: .responder, configuration: config)
        let (id, syn) = try open(&client)
        #expect(opened(receive(&server, syn)) == [id])
        let maybeAck = server.acceptStream(id)
        let ack = try #require(maybeAck)
        receive(&client, ack)
        return (client, server, id)
    }

    // MARK: tests

    @Test("open, accept and ACK; ID parity of both roles")
    func openAcceptAck() throws {
        var client = SM(role: .initiator, configuration: Self.config())
        var server = SM(role: .responder, configuration: Self.config())

        let (id1, syn1) = try Self.open(&client)
        #expect(id1 == 1)
        #expect(syn1 == .windowUpdate(streamID: 1, flags: .syn, delta: 0))
        #expect(client.phase(of: 1) == .synSent)
        #expect(client.outboundUnacked == 1)
        let (id3, _) = try Self.open(&client)
        #expect(id3 == 3)
        let (id2, _) = try Self.open(&server)
        #expect(id2 == 2)

        let actions = Self.receive(&server, syn1)
        #expect(Self.opened(actions) == [1])
        #expect(Self.sent(actions).isEmpty)  // no ACK until the application takes the stream
        #expect(server.phase(of: 1) == .synReceived)
        #expect(server.acceptBacklog == 1)

        let maybeAck = server.acceptStream(1)
        let ack = try #require(maybeAck)
        #expect(ack == .windowUpdate(streamID: 1, flags: .ack, delta: 0))
        #expect(server.phase(of: 1) == .established)
        #expect(server.acceptBacklog == 0)
        #expect(server.acceptStream(1) == nil)  // only once

        let acked = Self.receive(&client, ack)
        #expect(Self.contains(acked) { if case .streamAcknowledged(1) = $0 { return true } else { return false } })
        #expect(client.phase(of: 1) == .established)
        #expect(client.outboundUnacked == 1)  // stream 3 still unacked
    }

    @Test("a larger initial window is announced on SYN and ACK")
    func largerInitialWindow() throws {
        let config = Self.config { $0.initialStreamWindow = 1024 * 1024 }
        var client = SM(role: .initiator, configuration: config)
        var server = SM(role: .responder, configuration: config)
        let (id, syn) = try Self.open(&client)
        #expect(syn.length == UInt32(1024 * 1024 - Self.window))
        #expect(client.receiveRemaining(of: id) == UInt32(1024 * 1024))
        Self.receive(&server, syn)
        #expect(server.sendWindow(of: id) == UInt32(1024 * 1024))
        #expect(server.receiveRemaining(of: id) == UInt32(Self.window))
        let maybeAck = server.acceptStream(id)
        let ack = try #require(maybeAck)
        #expect(ack.length == UInt32(1024 * 1024 - Self.window))
        #expect(server.receiveRemaining(of: id) == UInt32(1024 * 1024))
        Self.receive(&client, ack)
        #expect(client.sendWindow(of: id) == UInt32(1024 * 1024))

        // Smaller than the spec's 256 KiB cannot be announced: raised to 256 KiB.
        let small = SM(role: .initiator, configuration: Self.config { $0.initialStreamWindow = 1000 })
        #expect(small.configuration.initialStreamWindow == UInt32(Self.window))
    }

    @Test("first data rides on the SYN when no larger window must be announced")
    func firstDataOnSyn() throws {
        var client = SM(role: .initiator, configuration: Self.config())
        var server = SM(role: .responder, configuration: Self.config())
        let hello = ByteBuffer(string: "hello")
        guard case .opened(let id, let syn) = client.openStream(firstData: hello) else {
            Issue.record("openStream did not open")
            return
        }
        #expect(syn == .data(streamID: id, flags: .syn, payload: hello))
        #expect(client.sendWindow(of: id) == UInt32(Self.window - 5))
        #expect(Self.drain(&client).isEmpty)  // nothing left to send
        let actions = Self.receive(&server, syn)
        #expect(Self.opened(actions) == [id])
        #expect(Self.delivered(actions).map(\.1) == [hello])
        #expect(server.receiveRemaining(of: id) == UInt32(Self.window - 5))

        // A larger initial window needs the window-update SYN: the data is the caller's to queue.
        var big = SM(role: .initiator, configuration: Self.config { $0.initialStreamWindow = 1024 * 1024 })
        guard case .opened(_, let plainSyn) = big.openStream(firstData: hello) else {
            Issue.record("openStream did not open")
            return
        }
        #expect(plainSyn.type == .windowUpdate)
    }

    @Test("data flows and half-close works in both directions")
    func halfClose() throws {
        var (client, server, id) = try Self.establishedPair()

        // client -> server data, then FIN
        #expect(client.write(streamID: id, data: ByteBuffer(string: "request"), promise: nil).isQueued)
        let frames = Self.drain(&client)
        #expect(frames == [.data(streamID: id, payload: ByteBuffer(string: "request"))])
        #expect(Self.delivered(Self.receive(&server, frames[0])).map(\.1) == [ByteBuffer(string: "request")])

        guard case .send(let fin, closed: false) = client.closeWrite(streamID: id, promise: nil) else {
            Issue.record("FIN not sent")
            return
        }
        #expect(fin == .data(streamID: id, flags: .fin, payload: ByteBuffer()))
        #expect(client.isLocallyFinished(id) == true)
        #expect(client.write(streamID: id, data: ByteBuffer(string: "x"), promise: nil).failure?.code == .streamClosed)
        let finActions = Self.receive(&server, fin)
        #expect(Self.contains(finActions) { if case .remoteFinished(id) = $0 { return true } else { return false } })
        #expect(server.isRemotelyFinished(id) == true)

        // server can still answer (half-close), then FIN -> stream fully closed on both sides.
        _ = server.write(streamID: id, data: ByteBuffer(string: "response"), promise: nil)
        _ = server.closeWrite(streamID: id, promise: nil)  // queued behind the data: piggybacked
        let reply = Self.drain(&server)
        #expect(reply == [.data(streamID: id, flags: .fin, payload: ByteBuffer(string: "response"))])
        #expect(server.phase(of: id) == nil)  // both FINs: forgotten
        #expect(server.openStreamCount == 0)

        let replyActions = Self.receive(&client, reply[0])
        #expect(Self.delivered(replyActions).map(\.1) == [ByteBuffer(string: "response")])
        #expect(Self.contains(replyActions) { if case .streamClosed(id) = $0 { return true } else { return false } })
        #expect(client.openStreamCount == 0)
        #expect(client.outboundCount == 0)
    }

    @Test("RST removes the stream on both sides and fails its writes")
    func reset() throws {
        var (client, server, id) = try Self.establishedPair()
        let loop = EmbeddedEventLoop()
        defer { try? loop.syncShutdownGracefully() }

        // Server has a write stuck behind an exhausted window.
        let big = ByteBuffer(repeating: 7, count: Self.window + 10)
        let promise = loop.makePromise(of: Void.self)
        _ = server.write(streamID: id, data: big, promise: promise)
        #expect(Self.drain(&server).reduce(0) { $0 + $1.payload.readableBytes } == Self.window)

        let maybeReset = client.reset(streamID: id)
        let (rst, failing) = try #require(maybeReset)
        #expect(rst == .windowUpdate(streamID: id, flags: .rst, delta: 0))
        #expect(failing.isEmpty)
        #expect(client.phase(of: id) == nil)
        #expect(client.reset(streamID: id)?.frame == nil)

        let actions = Self.receive(&server, rst)
        guard case .streamReset(id, let promises)? = actions.first else {
            Issue.record("expected streamReset, got \(actions)")
            return
        }
        #expect(promises.count == 1)
        promises.forEach { $0.fail(YamuxError(.streamReset)) }
        #expect(server.phase(of: id) == nil)
        #expect(server.inboundCount == 0)

        // Late frames for the reset stream are ignored.
        #expect(Self.receive(&client, .data(streamID: id, payload: ByteBuffer(string: "late"))).isEmpty)
        #expect(Self.receive(&client, .windowUpdate(streamID: id, delta: 100)).isEmpty)
    }

    @Test("a sender stops at the peer's 256 KiB window and credit resumes it")
    func sendWindow() throws {
        var (client, server, id) = try Self.establishedPair()
        let total = Self.window + 44 * 1024
        _ = client.write(streamID: id, data: ByteBuffer(repeating: 1, count: total), promise: nil)
        _ = client.closeWrite(streamID: id, promise: nil)

        let first = Self.drain(&client)
        #expect(first.reduce(0) { $0 + $1.payload.readableBytes } == Self.window)
        #expect(first.allSatisfy { $0.payload.readableBytes <= client.configuration.maxDataFrameSize })
        #expect(first.allSatisfy { !$0.flags.contains(.fin) })
        #expect(client.sendWindow(of: id) == 0)
        #expect(client.nextDataFrame()?.frame == nil)

        for frame in first { Self.receive(&server, frame) }
        #expect(server.receiveRemaining(of: id) == 0)

        // The application consumed 128 KiB: credit.
        let maybeUpdate = server.windowCredit(streamID: id, delta: 128 * 1024)
        let update = try #require(maybeUpdate)
        #expect(update == .windowUpdate(streamID: id, delta: 128 * 1024))
        let ready = Self.receive(&client, update)
        #expect(Self.contains(ready) { if case .dataReady = $0 { return true } else { return false } })
        let rest = Self.drain(&client)
        #expect(rest.reduce(0) { $0 + $1.payload.readableBytes } == 44 * 1024)
        #expect(rest.last?.flags.contains(.fin) == true)  // FIN rides on the last data frame
        #expect(client.sendWindow(of: id) == UInt32(84 * 1024))
    }

    @Test("data frames are split at maxDataFrameSize and streams take turns")
    func framingAndFairness() throws {
        var config = Self.config()
        config.maxDataFrameSize = 1000
        var client = SM(role: .initiator, configuration: config)
        let (a, _) = try Self.open(&client)
        let (b, _) = try Self.open(&client)
        _ = client.write(streamID: a, data: ByteBuffer(repeating: 1, count: 2500), promise: nil)
        _ = client.write(streamID: b, data: ByteBuffer(repeating: 2, count: 1500), promise: nil)
        let frames = Self.drain(&client)
        #expect(frames.map(\.streamID) == [a, b, a, b, a])
        #expect(frames.map(\.payload.readableBytes) == [1000, 1000, 1000, 500, 500])
    }

    @Test("data beyond the receive window is a protocol error")
    func windowExceeded() throws {
        var (client, server, id) = try Self.establishedPair()
        _ = client  // only the server matters here
        let header = YamuxFrameHeader(type: .data, flags: [], streamID: id, length: UInt32(Self.window + 1))
        #expect(throws: YamuxError.self) { try server.validateHeader(header) }
        #expect(
            (try? server.validateHeader(YamuxFrameHeader(type: .data, flags: [], streamID: id, length: UInt32(Self.window)))) != nil)

        // Fill the window exactly, then one more byte.
        Self.receive(&server, .data(streamID: id, payload: ByteBuffer(repeating: 0, count: Self.window)))
        #expect(server.receiveRemaining(of: id) == 0)
        let actions = Self.receive(&server, .data(streamID: id, payload: ByteBuffer(repeating: 0, count: 1)))
        #expect(Self.sent(actions) == [.goAway(.protocolError)])
        #expect(Self.violation(actions)?.code == .windowExceeded)
        #expect(server.isFailed)
        #expect(Self.receive(&server, .ping(opaque: 1, ack: false)).isEmpty)  // dead afterwards
    }

    @Test("SYN with a wrong-parity, reused or zero stream ID is a protocol error")
    func badStreamIDs() throws {
        // The responder expects odd IDs from the initiator.
        var server = SM(role: .responder, configuration: Self.config())
        var actions = Self.receive(&server, .windowUpdate(streamID: 2, flags: .syn, delta: 0))
        #expect(Self.violation(actions)?.code == .invalidStreamID)
        #expect(Self.sent(actions) == [.goAway(.protocolError)])

        // The initiator expects even IDs.
        var client = SM(role: .initiator, configuration: Self.config())
        actions = Self.receive(&client, .windowUpdate(streamID: 7, flags: .syn, delta: 0))
        #expect(Self.violation(actions)?.code == .invalidStreamID)

        // Duplicate SYN for an open stream.
        server = SM(role: .responder, configuration: Self.config())
        #expect(Self.opened(Self.receive(&server, .windowUpdate(streamID: 5, flags: .syn, delta: 0))) == [5])
        actions = Self.receive(&server, .data(streamID: 5, flags: .syn, payload: ByteBuffer(string: "x")))
        #expect(Self.violation(actions)?.code == .invalidStreamID)

        // Stream frames on the session ID 0.
        server = SM(role: .responder, configuration: Self.config())
        actions = Self.receive(&server, .data(streamID: 0, payload: ByteBuffer(string: "x")))
        #expect(Self.violation(actions)?.code == .invalidStreamID)

        // Out-of-order (lower) new IDs are fine: go-yamux may send concurrent SYNs out of order.
        server = SM(role: .responder, configuration: Self.config())
        #expect(Self.opened(Self.receive(&server, .windowUpdate(streamID: 5, flags: .syn, delta: 0))) == [5])
        #expect(Self.opened(Self.receive(&server, .windowUpdate(streamID: 3, flags: .syn, delta: 0))) == [3])
    }

    @Test("SYN beyond the accept backlog is answered with RST")
    func acceptBacklog() throws {
        var server = SM(role: .responder, configuration: Self.config { $0.maxAcceptBacklog = 2 })
        #expect(Self.opened(Self.receive(&server, .windowUpdate(streamID: 1, flags: .syn, delta: 0))) == [1])
        #expect(Self.opened(Self.receive(&server, .data(streamID: 3, flags: .syn, payload: ByteBuffer(string: "hi")))) == [3])
        let refused = Self.receive(&server, .data(streamID: 5, flags: .syn, payload: ByteBuffer(string: "hi")))
        #expect(Self.opened(refused).isEmpty)
        #expect(Self.delivered(refused).isEmpty)
        #expect(Self.sent(refused) == [.windowUpdate(streamID: 5, flags: .rst, delta: 0)])
        #expect(server.phase(of: 5) == nil)
        #expect(!server.isFailed)
        // Frames for the refused stream are ignored.
        #expect(Self.receive(&server, .data(streamID: 5, payload: ByteBuffer(string: "more"))).isEmpty)

        // Taking one stream from the backlog makes room again.
        _ = server.acceptStream(1)
        #expect(Self.opened(Self.receive(&server, .windowUpdate(streamID: 7, flags: .syn, delta: 0))) == [7])
    }

    @Test("maxStreams bounds each direction")
    func maxStreams() throws {
        let config = Self.config { $0.maxStreams = 2 }
        var server = SM(role: .responder, configuration: config)
        for id: UInt32 in [1, 3] {
            Self.receive(&server, .windowUpdate(streamID: id, flags: .syn, delta: 0))
            _ = server.acceptStream(id)
        }
        let refused = Self.receive(&server, .windowUpdate(streamID: 5, flags: .syn, delta: 0))
        #expect(Self.sent(refused) == [.windowUpdate(streamID: 5, flags: .rst, delta: 0)])
        // Our own outbound streams are counted separately.
        let (own, _) = try Self.open(&server)
        #expect(own == 2)

        var client = SM(role: .initiator, configuration: config)
        _ = try Self.open(&client)
        let (second, _) = try Self.open(&client)
        guard case .failed(let error) = client.openStream() else {
            Issue.record("third stream opened")
            return
        }
        #expect(error.code == .streamLimit)
        _ = client.reset(streamID: second)
        _ = try Self.open(&client)
    }

    @Test("openStream waits while too many of our SYNs are unacknowledged")
    func outboundAckBacklog() throws {
        let config = Self.config { $0.maxOutboundAckBacklog = 2 }
        var client = SM(role: .initiator, configuration: config)
        var server = SM(role: .responder, configuration: config)
        let (a, synA) = try Self.open(&client)
        _ = try Self.open(&client)
        guard case .mustWait = client.openStream() else {
            Issue.record("expected mustWait")
            return
        }
        Self.receive(&server, synA)
        let ackA = server.acceptStream(a)
        Self.receive(&client, try #require(ackA))
        _ = try Self.open(&client)
    }

    @Test("GoAway received: no new outbound streams, existing ones continue")
    func goAwayReceived() throws {
        var (client, server, id) = try Self.establishedPair()
        let actions = Self.receive(&client, .goAway(.normal))
        #expect(Self.contains(actions) { if case .goAwayReceived(.normal) = $0 { return true } else { return false } })
        guard case .failed(let error) = client.openStream() else {
            Issue.record("opened after GoAway")
            return
        }
        #expect(error.code == .goAwayReceived)
        _ = client.write(streamID: id, data: ByteBuffer(string: "still here"), promise: nil)
        let frames = Self.drain(&client)
        #expect(Self.delivered(Self.receive(&server, frames[0])).count == 1)
    }

    @Test("GoAway sent: new streams refused both ways")
    func goAwaySent() throws {
        var server = SM(role: .responder, configuration: Self.config())
        #expect(server.goAway(.normal) == .goAway(.normal))
        let refused = Self.receive(&server, .windowUpdate(streamID: 1, flags: .syn, delta: 0))
        #expect(Self.sent(refused) == [.windowUpdate(streamID: 1, flags: .rst, delta: 0)])
        guard case .failed(let error) = server.openStream() else {
            Issue.record("opened after GoAway")
            return
        }
        #expect(error.code == .goAwaySent)
    }

    @Test("ping is answered with the same opaque value; pong reported")
    func pingPong() {
        var sm = SM(role: .initiator, configuration: Self.config())
        #expect(Self.sent(Self.receive(&sm, .ping(opaque: 0x1234_5678, ack: false))) == [.ping(opaque: 0x1234_5678, ack: true)])
        let pong = Self.receive(&sm, .ping(opaque: 99, ack: true))
        #expect(Self.contains(pong) { if case .pong(99) = $0 { return true } else { return false } })
        #expect(Self.sent(pong).isEmpty)
    }

    @Test("data after the peer's FIN resets the stream; window overflow is a protocol error")
    func peerMisbehaviourOnStream() throws {
        var (client, server, id) = try Self.establishedPair()
        Self.receive(&server, .data(streamID: id, flags: .fin, payload: ByteBuffer(string: "last")))
        let late = Self.receive(&server, .data(streamID: id, payload: ByteBuffer(string: "more")))
        #expect(Self.sent(late) == [.windowUpdate(streamID: id, flags: .rst, delta: 0)])
        #expect(server.phase(of: id) == nil)
        #expect(!server.isFailed)

        let overflow = Self.receive(&client, .windowUpdate(streamID: id, delta: UInt32.max))
        #expect(Self.violation(overflow)?.code == .protocolError)
    }

    @Test("credit is not sent once the peer finished sending")
    func noCreditAfterFIN() throws {
        var (client, server, id) = try Self.establishedPair()
        _ = client
        Self.receive(&server, .data(streamID: id, flags: .fin, payload: ByteBuffer(string: "x")))
        #expect(server.windowCredit(streamID: id, delta: 1) == nil)
    }
}

extension SM.WriteResult {
    var isQueued: Bool { if case .queued = self { return true } else { return false } }
    var failure: YamuxError? { if case .failed(let e) = self { return e } else { return nil } }
}

@Suite("Yamux receive window auto-tuning")
struct ReceiveWindowTests {
    static let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    static let kib: Int = 1024

    @Test("credit only once half the window was consumed")
    func halfWindowRule() {
        var window = YamuxReceiveWindow(initialWindow: 256 * 1024, maxWindow: 256 * 1024, now: Self.start)
        #expect(window.consumed(100 * Self.kib, now: Self.start + .seconds(1), rtt: nil) == nil)
        #expect(window.consumed(27 * Self.kib, now: Self.start + .seconds(1), rtt: nil) == nil)
        #expect(window.consumed(1 * Self.kib, now: Self.start + .seconds(1), rtt: nil) == UInt32(128 * Self.kib))
        #expect(window.consumedUncredited == 0)
        #expect(window.windowSize == UInt32(256 * Self.kib))  // at max: never grows
    }

    @Test("window doubles when half of it is consumed within 2 RTTs, up to the maximum")
    func autoTune() {
        var window = YamuxReceiveWindow(initialWindow: 256 * 1024, maxWindow: 1024 * 1024, now: Self.start)
        let rtt = TimeAmount.milliseconds(50)
        // Fast: 128 KiB within 20 ms < 100 ms -> double to 512 KiB; delta = consumed + growth.
        #expect(window.consumed(128 * Self.kib, now: Self.start + .milliseconds(20), rtt: rtt) == UInt32(128 * Self.kib + 256 * Self.kib))
        #expect(window.windowSize == UInt32(512 * Self.kib))
        // Slow: 256 KiB over one second -> no growth.
        #expect(window.consumed(256 * Self.kib, now: Self.start + .milliseconds(1020), rtt: rtt) == UInt32(256 * Self.kib))
        #expect(window.windowSize == UInt32(512 * Self.kib))
        // Fast again -> 1 MiB, then capped.
        #expect(window.consumed(256 * Self.kib, now: Self.start + .milliseconds(1030), rtt: rtt) == UInt32(768 * Self.kib))
        #expect(window.windowSize == UInt32(1024 * Self.kib))
        #expect(window.consumed(512 * Self.kib, now: Self.start + .milliseconds(1040), rtt: rtt) == UInt32(512 * Self.kib))
        #expect(window.windowSize == UInt32(1024 * Self.kib))
    }

    @Test("without a measured RTT the floor stands in")
    func rttFloor() {
        var window = YamuxReceiveWindow(initialWindow: 256 * 1024, maxWindow: 1024 * 1024, now: Self.start)
        // 1 µs measured RTT is floored at 5 ms: 128 KiB in 1 ms still counts as fast.
        #expect(window.consumed(128 * Self.kib, now: Self.start + .milliseconds(1), rtt: .microseconds(1)) == UInt32(384 * Self.kib))
        var slow = YamuxReceiveWindow(initialWindow: 256 * 1024, maxWindow: 1024 * 1024, now: Self.start)
        #expect(slow.consumed(128 * Self.kib, now: Self.start + .milliseconds(11), rtt: nil) == UInt32(128 * Self.kib))
    }

    @Test("growth comes from the session's budget and goes back to it")
    func sessionBudget() {
        let budget = YamuxWindowBudget(limit: 384 * Self.kib)
        let fast = TimeAmount.milliseconds(1)
        var a = YamuxReceiveWindow(initialWindow: 256 * 1024, maxWindow: 16 * 1024 * 1024, now: Self.start)
        var b = YamuxReceiveWindow(initialWindow: 256 * 1024, maxWindow: 16 * 1024 * 1024, now: Self.start)
        // a doubles to 512 KiB (256 KiB of growth), leaving 128 KiB.
        #expect(a.consumed(128 * Self.kib, now: Self.start + fast, rtt: nil, budget: budget) == UInt32(384 * Self.kib))
        #expect(budget.available == 128 * Self.kib)
        // b may grow by only the 128 KiB left; then nothing is left for anyone.
        #expect(b.consumed(128 * Self.kib, now: Self.start + fast, rtt: nil, budget: budget) == UInt32(256 * Self.kib))
        #expect(b.windowSize == UInt32(384 * Self.kib))
        #expect(a.consumed(256 * Self.kib, now: Self.start + fast * 2, rtt: nil, budget: budget) == UInt32(256 * Self.kib))
        #expect(a.windowSize == UInt32(512 * Self.kib))
        #expect(budget.available == 0)
        // a goes away: its growth returns and b can grow again.
        budget.release(a.reservedGrowth)
        #expect(budget.available == 256 * Self.kib)
        #expect(b.consumed(192 * Self.kib, now: Self.start + fast * 2, rtt: nil, budget: budget) == UInt32(192 * Self.kib + 256 * Self.kib))
        #expect(b.windowSize == UInt32(640 * Self.kib))
    }
}
