import Foundation
import NIOConcurrencyHelpers
import PointSub
import PubSub
import TestSupport
import Testing

// pubsub between our PubSubService and py-libp2p 0.8.1 (Interop/pubsub_peer.py; its docstring has
// the JSON events, the stdin commands and py's pubsub quirks), over real TCP on 127.0.0.1.
//
// Every wait is on an event (a py event line, a message at our subscription, a peer in our
// topic view), bounded by `PubSubInteropTests.timeout`; nothing sleeps for a fixed time. "Exactly
// once" is checked behind a barrier: after the expected messages, one more message is sent the
// same way, and the count is taken once the barrier has arrived.
//
// (No closures inside `#expect`: with Swift 6.3.1 such a closure, within an enclosing closure, can
// run in place of another one; see Tests/PubSubTests/RouteTestSupport.swift.)

/// One event line of `pubsub_peer.py` (the fields the tests use; others are ignored).
struct PyPubSubEvent: Decodable, Sendable {
    var event: String
    var peer: String?
    var from: String?
    var topic: String?
    var seqno: UInt64?
    var data: String?
    var id: String?
    var signed: Bool?
    var verified: Bool?
    var subscribed: Bool?
    var `protocol`: String?
    var type: String?
    var dir: String?
    var reason: String?
    var peers: [String]?
}

/// A running `Interop/pubsub_peer.py`, driven through its stdin.
final class PyPubSubPeer: Sendable {
    static var script: URL { ChildProcess.repoRoot.appendingPathComponent("Interop/pubsub_peer.py") }

    let running: ChildProcess.Running
    /// `/ip4/127.0.0.1/tcp/P/p2p/ID`
    let address: String
    let peerID: String
    /// Decoded events, and how many stdout lines they come from.
    private let decoded = NIOLockedValueBox<(events: [PyPubSubEvent], lines: Int)>(([], 0))

    private init(running: ChildProcess.Running, address: String) {
        self.running = running
        self.address = address
        self.peerID = String(address.split(separator: "/").last ?? "")
    }

    /// `pubsub_peer.py <arguments…> --lifetime 180`, once it printed its LISTEN line. The lifetime
    /// bounds a py process a crashed test run would leave behind.
    static func start(_ arguments: [String]) async throws -> PyPubSubPeer {
        try PyPeer.checkInstalled()
        let running = try ChildProcess.Running(
            PyPeer.python, [script.path] + arguments + ["--lifetime", "180"], captureStderr: true)
        do {
            let line = try await running.firstLine(timeout: PubSubInteropTests.timeout) { $0.hasPrefix("LISTEN ") }
            return PyPubSubPeer(running: running, address: String(line.dropFirst("LISTEN ".count)))
        } catch {
            _ = try? await running.stop(signal: SIGKILL)
            throw ChildProcess.Failure("pubsub_peer.py did not start: \(error); stderr: \(running.errorLines.suffix(20))")
        }
    }

    /// Every event so far, in order.
    var events: [PyPubSubEvent] {
        let lines = running.lines
        return decoded.withLockedValue { d in
            for line in lines[d.lines...] where line.hasPrefix("{") {
                if let event = try? JSONDecoder().decode(PyPubSubEvent.self, from: Data(line.utf8)) {
                    d.events.append(event)
                }
            }
            d.lines = lines.count
            return d.events
        }
    }

    /// The first event matching `predicate`; throws after `timeout` or when py has exited.
    @discardableResult
    func event(
        _ what: String, timeout: Duration = PubSubInteropTests.timeout, _ predicate: (PyPubSubEvent) -> Bool
    ) async throws -> PyPubSubEvent {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let match = events.first(where: predicate) { return match }
            guard running.process.isRunning, ContinuousClock.now < deadline else { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        // The process may have printed the event just before exiting.
        if let match = events.first(where: predicate) { return match }
        throw ChildProcess.Failure("""
            pubsub_peer.py \(peerID): no event “\(what)” within \(timeout) (running: \(running.process.isRunning))
            last stdout: \(running.lines.suffix(12).joined(separator: "\n"))
            last stderr: \(running.errorLines.suffix(12).joined(separator: "\n"))
            """)
    }

    /// py's message events of `topic` from `author`.
    func messages(topic: String, from author: String) -> [PyPubSubEvent] {
        events.filter { $0.event == "message" && $0.topic == topic && $0.from == author }
    }

    /// Sends a stdin command (`publish TEXT`, `subscribe T`, …).
    func command(_ line: String) throws {
        try running.send(line)
    }

    /// Publishes `text` on py's `--topic` and returns py's `published` event (with py's seqno).
    func publish(_ text: String) async throws -> PyPubSubEvent {
        let before = events.count { $0.event == "published" }
        try command("publish \(text)")
        // py publishes stdin commands one after the other: the next `published` event is this one.
        try await event("published \(text)") { _ in events.count { $0.event == "published" } > before }
        return events.filter { $0.event == "published" }[before]
    }

    /// py's gossipsub mesh of `topic` right now (the `mesh` command).
    func mesh(_ topic: String) async throws -> [String] {
        let before = events.count { $0.event == "mesh" }
        try command("mesh \(topic)")
        try await event("mesh of \(topic)") { _ in events.count { $0.event == "mesh" } > before }
        return events.filter { $0.event == "mesh" }[before].peers ?? []
    }

    /// Closes its stdin (it exits 0 on EOF, after an `exit` event); the exit status, nil when it had
    /// to be killed.
    func stop() async -> Int32? {
        do {
            return try await running.stop()
        } catch {
            _ = try? await running.stop(signal: SIGKILL, timeout: 5)
            return nil
        }
    }
}

/// Collects a subscription's messages in a task of its own; the sequence ends when the service
/// stops (the task is never cancelled: that would unsubscribe the topic).
final class PubSubInbox: Sendable {
    private let messages = NIOLockedValueBox<[PubSubMessage]>([])

    init(_ subscription: PubSubSubscription) {
        let messages = self.messages
        Task {
            for await message in subscription { messages.withLockedValue { $0.append(message) } }
        }
    }

    var all: [PubSubMessage] { messages.withLockedValue { $0 } }

    /// The first message matching `predicate`; throws after `timeout`.
    @discardableResult
    func message(
        _ what: String, timeout: Duration = PubSubInteropTests.timeout, _ predicate: (PubSubMessage) -> Bool
    ) async throws -> PubSubMessage {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let match = all.first(where: predicate) { return match }
            try await Task.sleep(for: .milliseconds(20))
        }
        if let match = all.first(where: predicate) { return match }
        throw ChildProcess.Failure("no message “\(what)” within \(timeout); got \(all.map(\.text))")
    }
}

extension [UInt8] {
    var hex: String { map { String(format: "%02x", $0) }.joined() }
}

/// pubsub with py-libp2p 0.8.1, floodsub and gossipsub: each direction of publishing, both
/// directions of dialing, and a chain py — Swift — py in which our node forwards.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct PubSubInteropTests {
    /// Bound of every single wait (py starting, an event, a message). Generous: the machine may be
    /// busy; a passing run waits a fraction of it.
    static let timeout: Duration = .seconds(45)
    static let topic = "interop"

    enum Dialer: String, CustomTestStringConvertible, CaseIterable {
        case swiftDialsPy, pyDialsSwift
        var testDescription: String { rawValue }
    }

    static func router(_ name: String) throws -> any PubSubRouter {
        name == "floodsub" ? FloodSubRouter() : try GossipSubRouter()
    }

    /// The protocol py's stream to us ends up on: py proposes /floodsub/1.0.0, or /meshsub/1.1.0
    /// then /meshsub/1.0.0; our gossipsub router also serves /floodsub/1.0.0.
    static func negotiated(py: String) -> String {
        py == "floodsub" ? "/floodsub/1.0.0" : "/meshsub/1.1.0"
    }

    static func listening() -> P2PHost.Configuration {
        .defaults { $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")] }
    }

    /// Runs `body` with a started py peer and stops it afterwards (also when `body` throws).
    func withPy<T: Sendable>(
        _ arguments: [String], _ body: (PyPubSubPeer) async throws -> T
    ) async throws -> T {
        let py = try await PyPubSubPeer.start(arguments)
        do {
            let result = try await body(py)
            _ = await py.stop()
            return result
        } catch {
            _ = await py.stop()
            throw error
        }
    }

    /// Waits until `condition` holds; throws after `timeout`.
    func until(_ what: String, timeout: Duration = Self.timeout, _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while !condition() {
            guard ContinuousClock.now < deadline else { throw ChildProcess.Failure("timed out waiting for \(what)") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Waits until `py` and we know of each other's subscription to `topic`, and, with gossipsub,
    /// until py has us in its mesh (py publishes to its mesh only). py either GRAFTed us or took
    /// our GRAFT, depending on timing (see "Mesh" in pubsub_peer.py's quirks). If we GRAFTed py,
    /// py is in our mesh already; if py GRAFTed us, it is once we have read that GRAFT, which is
    /// before any message py publishes from now on (py's stream to us is in order).
    func waitUntilReady(_ py: PyPubSubPeer, _ pubsub: PubSubService, topic: String, gossip: Bool) async throws {
        let us = pubsub.host.peerID.b58String
        try await py.event("py sees our subscription to \(topic)") {
            $0.event == "peer" && $0.peer == us && $0.topic == topic && $0.subscribed == true
        }
        try await until("py's subscription to \(topic) reaching us") {
            pubsub.peers(topic: topic).contains { $0.b58String == py.peerID }
        }
        if gossip {
            let deadline = ContinuousClock.now + Self.timeout
            while try await !py.mesh(topic).contains(us) {
                guard ContinuousClock.now < deadline else {
                    throw ChildProcess.Failure("py did not put us in its mesh of \(topic); events: \(py.running.lines.suffix(12))")
                }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }

    // MARK: - One py peer

    /// One py peer and us, connected either way, same router on both sides:
    /// py publishes (two texts and an empty message) and we receive each exactly once with py's
    /// peer ID as `from` and py's seqno; we publish (the same) and py receives each exactly once,
    /// signed, accepted by py's signature check, with the same from ‖ seqno message ID. We publish
    /// to a topic we have not joined. Then unsubscriptions travel both ways. With gossipsub also
    /// the mesh on the wire: a GRAFT (py's or ours) and no PRUNE either way; when we join a topic
    /// py is already in, we GRAFT py and py keeps us.
    @Test(arguments: ["floodsub", "gossipsub"], Dialer.allCases)
    func publishBothWays(router: String, dialer: Dialer) async throws {
        let gossip = router == "gossipsub"
        try await withHost(identity: .ed25519(seed: 61), configuration: Self.listening()) { host in
            try await withPubSub(host: host, router: try Self.router(router)) { pubsub in
                let inbox = PubSubInbox(try pubsub.subscribe(Self.topic))
                let us = host.peerID.b58String
                var arguments = ["--seed", "62", "--router", router, "--topic", Self.topic]
                switch dialer {
                case .swiftDialsPy: arguments = ["listen"] + arguments
                case .pyDialsSwift: arguments = ["dial", host.addresses[0].description] + arguments
                }
                let status = try await withPy(arguments) { py in
                    if dialer == .swiftDialsPy {
                        let connection = try await host.connect(to: Multiaddr(py.address))
                        #expect(connection.remotePeer.b58String == py.peerID)
                    }
                    let connected = try await py.event("py's stream to us") { $0.event == "connected" && $0.peer == us }
                    #expect(connected.protocol == Self.negotiated(py: router))
                    try await waitUntilReady(py, pubsub, topic: Self.topic, gossip: gossip)

                    // py → us.
                    let texts = ["py says hi", "", "py says bye"]
                    var published: [PyPubSubEvent] = []
                    for text in texts { published.append(try await py.publish(text)) }
                    for event in published {
                        try await inbox.message("py's “\(event.data ?? "?")”") { $0.seqno == event.seqno }
                    }
                    let barrier = try await py.publish("py barrier")
                    try await inbox.message("py's barrier") { $0.seqno == barrier.seqno }
                    let received = inbox.all.filter { $0.text != "py barrier" }
                    #expect(received.count == texts.count, "each of py's messages exactly once")
                    for event in published {
                        let copies = received.filter { $0.seqno == event.seqno }
                        #expect(copies.count == 1)
                        #expect(copies.first?.text == event.data)
                        #expect(copies.first?.from?.b58String == py.peerID)
                        #expect(copies.first?.receivedFrom.b58String == py.peerID)
                        #expect(copies.first?.topic == Self.topic)
                    }
                    #expect(pubsub.counters.rejected == 0)
                    #expect(pubsub.counters.badRPCs == 0, "py's RPCs parse (its non-standard senderRecord, field 4, is skipped)")

                    // us → py. The empty message checks that we sign the encoding py re-creates
                    // to verify (py always encodes from, data and seqno, an empty data included).
                    var ids: [String: String] = [:]
                    for text in texts { ids[text] = try await pubsub.publish(Self.topic, Array(text.utf8)).hex }
                    for text in texts {
                        let event = try await py.event("py receives our “\(text)”") {
                            $0.event == "message" && $0.id == ids[text]
                        }
                        #expect(event.data == text)
                        #expect(event.from == us)
                        #expect(event.topic == Self.topic)
                        #expect(event.signed == true)
                        #expect(event.verified == true, "py's signature_validator accepts our signature")
                        // Our message ID is from ‖ seqno: its last 8 bytes are the seqno.
                        let seqnoHex = String(format: "%016llx", event.seqno ?? 0)
                        #expect(ids[text]?.hasSuffix(seqnoHex) == true)
                    }
                    let ourBarrier = try await pubsub.publish(Self.topic, Array("swift barrier".utf8)).hex
                    try await py.event("py receives our barrier") { $0.event == "message" && $0.id == ourBarrier }
                    let pyReceived = py.messages(topic: Self.topic, from: us).filter { $0.data != "swift barrier" }
                    #expect(pyReceived.count == texts.count, "each of our messages exactly once")
                    #expect(Set(pyReceived.compactMap(\.id)) == Set(ids.values))
                    // And on the wire: we sent each message once, never py's back to py, and py
                    // sent none of ours back to us.
                    #expect(pubsub.counters.forwarded == texts.count + 1)
                    #expect(pubsub.counters.duplicates == 0)

                    if gossip {
                        // The mesh formed with a GRAFT on the wire, py's or ours.
                        let grafts = py.events.filter {
                            $0.event == "control" && $0.type == "graft" && $0.peer == us && $0.topic == Self.topic
                        }
                        #expect(!grafts.isEmpty)
                    }

                    // Publishing to a topic we have not joined (floodsub: to its peers; gossipsub:
                    // flood publishing, to every peer in the topic).
                    try py.command("subscribe late")
                    try await until("py's subscription to late reaching us") {
                        pubsub.peers(topic: "late").contains { $0.b58String == py.peerID }
                    }
                    let notJoined = try await pubsub.publish("late", Array("not joined".utf8)).hex
                    let got = try await py.event("our message to a topic we did not join") {
                        $0.event == "message" && $0.id == notJoined
                    }
                    #expect(got.topic == "late")
                    #expect(got.verified == true)

                    if gossip {
                        // Joining a topic py is already in, we GRAFT py at once, and py keeps us.
                        _ = PubSubInbox(try pubsub.subscribe("late"))
                        try await py.event("our GRAFT for late") {
                            $0.event == "control" && $0.dir == "in" && $0.type == "graft" && $0.peer == us
                                && $0.topic == "late"
                        }
                        let deadline = ContinuousClock.now + Self.timeout
                        while try await !py.mesh("late").contains(us), ContinuousClock.now < deadline {
                            try await Task.sleep(for: .milliseconds(50))
                        }
                        // py handles a control message before it reads the next RPC of the stream,
                        // so once it has this message of ours, any PRUNE for our GRAFT is out; and
                        // a PRUNE from us for py's GRAFT would have reached py before our messages.
                        let joined = try await pubsub.publish("late", Array("joined".utf8)).hex
                        try await py.event("our message in late, joined") { $0.event == "message" && $0.id == joined }
                        let prunes = py.events.filter { $0.event == "control" && $0.type == "prune" }
                        #expect(prunes.isEmpty, "nobody pruned: \(prunes)")
                        let mesh = try await py.mesh("late")
                        #expect(mesh.contains(us))
                    }

                    // Unsubscriptions, both ways.
                    try py.command("unsubscribe \(Self.topic)")
                    try await until("py's unsubscription reaching us") {
                        !pubsub.peers(topic: Self.topic).contains { $0.b58String == py.peerID }
                    }
                    pubsub.unsubscribe(Self.topic)
                    try await py.event("py sees our unsubscription") {
                        $0.event == "peer" && $0.peer == us && $0.topic == Self.topic && $0.subscribed == false
                    }
                    let status = await py.stop()
                    try await py.event("py's exit event") { $0.event == "exit" }
                    return status
                }
                #expect(status == 0, "py exits 0 on stdin EOF")
            }
        }
    }

    // MARK: - py — Swift — py

    /// Two py peers that are not connected to each other, only to us: A dials us, we dial B. What
    /// one publishes reaches the other only through our forwarding: exactly once, unmodified (the
    /// receiver reports the author's peer ID and seqno, and py's own check of the author's
    /// signature passes), an empty message included. The routers: py A, us, py B.
    @Test(arguments: [
        ["floodsub", "floodsub", "floodsub"],
        ["gossipsub", "gossipsub", "gossipsub"],
        // Our gossipsub router serves floodsub peers (py A) next to gossipsub ones.
        ["floodsub", "gossipsub", "gossipsub"],
    ])
    func weForwardBetweenPyPeers(routers: [String]) async throws {
        try await withHost(identity: .ed25519(seed: 63), configuration: Self.listening()) { host in
            try await withPubSub(host: host, router: try Self.router(routers[1])) { pubsub in
                let inbox = PubSubInbox(try pubsub.subscribe(Self.topic))
                let options = ["--topic", Self.topic]
                try await withPy(["dial", host.addresses[0].description, "--seed", "64", "--router", routers[0]] + options) { a in
                    try await withPy(["listen", "--seed", "65", "--router", routers[2]] + options) { b in
                        _ = try await host.connect(to: Multiaddr(b.address))
                        try await waitUntilReady(a, pubsub, topic: Self.topic, gossip: routers[0] == "gossipsub")
                        try await waitUntilReady(b, pubsub, topic: Self.topic, gossip: routers[2] == "gossipsub")
                        #expect(pubsub.peers(topic: Self.topic).count == 2)
                        // A "ready" message from each: once we have it, the GRAFT py may have sent
                        // before it has been handled too, so with gossipsub both are in our mesh
                        // from now on. (A's may not reach B: if B was not in our mesh yet when we
                        // forwarded it, gossip does not repair that once B is, as gossip goes to
                        // peers outside the mesh only. It is not counted below.)
                        for py in [a, b] {
                            let ready = try await py.publish("ready \(py.peerID)")
                            try await inbox.message("\(py.peerID) ready") { $0.seqno == ready.seqno && $0.from?.b58String == py.peerID }
                        }

                        let texts = ["chain 1", "", "chain 3"]
                        var fromA: [PyPubSubEvent] = []
                        var fromB: [PyPubSubEvent] = []
                        for text in texts { fromA.append(try await a.publish("A \(text)")) }
                        fromB.append(try await b.publish("B chain"))
                        fromB.append(try await b.publish(""))

                        for (sender, receiver, published) in [(a, b, fromA), (b, a, fromB)] {
                            for event in published {
                                let got = try await receiver.event("forwarded “\(event.data ?? "?")”") {
                                    $0.event == "message" && $0.from == sender.peerID && $0.seqno == event.seqno
                                }
                                #expect(got.data == event.data)
                                #expect(got.topic == Self.topic)
                                #expect(got.signed == true)
                                #expect(got.verified == true, "the author's signature survives our forwarding")
                            }
                        }
                        // Barriers through us in both directions, then: everything exactly once.
                        let barrierA = try await a.publish("A barrier")
                        let barrierB = try await b.publish("B barrier")
                        try await b.event("A's barrier") { $0.event == "message" && $0.from == a.peerID && $0.seqno == barrierA.seqno }
                        try await a.event("B's barrier") { $0.event == "message" && $0.from == b.peerID && $0.seqno == barrierB.seqno }
                        for (sender, receiver, published) in [(a, b, fromA), (b, a, fromB)] {
                            // + the barrier
                            let got = receiver.messages(topic: Self.topic, from: sender.peerID).filter {
                                !($0.data ?? "").hasPrefix("ready ")
                            }
                            #expect(got.count == published.count + 1, "each of \(sender.peerID)'s messages exactly once")
                            #expect(Set(got.compactMap(\.seqno)).count == got.count)
                        }
                        // We delivered everything to our own subscription as well, once each.
                        let ours = inbox.all
                        #expect(ours.count == fromA.count + fromB.count + 4)
                        #expect(Set(ours.map(\.id)).count == ours.count)
                        #expect(pubsub.counters.rejected == 0)
                        #expect(pubsub.counters.badRPCs == 0, "py's RPCs parse (its non-standard senderRecord, field 4, is skipped)")
                        // On the wire: A and B can only have their messages from us, and py
                        // delivers each message once, so each of our transmissions must be one
                        // delivery (a message sent twice would show as a transmission too many).
                        // Neither py sent us a copy of what we had.
                        let deliveredByPy = a.messages(topic: Self.topic, from: b.peerID).count
                            + b.messages(topic: Self.topic, from: a.peerID).count
                        #expect(pubsub.counters.forwarded == deliveredByPy)
                        #expect(pubsub.counters.duplicates == 0)
                    }
                }
            }
        }
    }
}
