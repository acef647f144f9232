import Foundation
import NIOConcurrencyHelpers
import PointSub
import TestSupport
import Testing

/// Interop of our Kademlia DHT (`KademliaDHT`, `/ipfs/kad/1.0.0`) with go-libp2p-kad-dht 0.25.1
/// through its daemon `p2pd` (P2PDaemon.swift), over real TCP on 127.0.0.1, in both directions:
/// go's routing table takes our node, provider records, peer lookups through the other side's
/// nodes, and `/pk` values.
///
/// Quirks of the daemon and of go's DHT the tests depend on:
/// - `-dht` is ModeAuto, which stays a client on a private network: a go node that must answer
///   queries is started with `-dhtServer`, one that only asks with `-dhtClient`.
/// - go puts a peer in its routing table only after identify listed `/ipfs/kad/1.0.0` and the
///   peer answered a FIND_NODE of its own ID with at least one peer (`lookupCheck`); until then
///   go's lookups, PROVIDE and PUT_VALUE fail at once ("failed to find any peer in table").
///   The tests wait for it with `goKnows`: go's GET_CLOSEST_PEERS, which starts from its table.
/// - go answers FIND_NODE of a peer ID with that peer whenever its peerstore has addresses for
///   it, routing table or not (so a go node finds any peer its neighbour is connected to).
/// - ADD_PROVIDER has no response in go (it sends it with SendMessage and its handler answers
///   nothing), and go reuses a stream for many requests.
/// - FIND_PROVIDERS and GET_CLOSEST_PEERS answer as a stream: Response(DHT BEGIN), bare
///   DHTResponse VALUEs, DHTResponse END (`P2PDaemon.dhtStream`).
/// - A provider key is a CID's multihash (the daemon takes the binary CID: we use CIDv1 raw).
/// - The `/pk/<peer ID bytes>` namespace is validated by go-libp2p-record's PublicKeyValidator:
///   the value must be a marshalled public key whose peer ID is the key's.
/// - `/ipns/<peer ID bytes>` is validated by boxo's ipns.Validator (go-libp2p-kad-dht's default
///   next to /pk; p2pd does not change it), and a PUT_VALUE older than the record held is refused.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct DHTInteropTests {
    static let agent = "pointsub-dht-interop/0.1.0"
    static let timeout: Duration = .seconds(30)

    /// A host listening on 127.0.0.1 with identify and a DHT node (server mode unless told).
    static func withDHTHost<T: Sendable>(
        seed: UInt64, mode: KademliaDHT.Mode = .server, _ body: (P2PHost, KademliaDHT) async throws -> T
    ) async throws -> T {
        var dhtConfiguration = KademliaDHT.Configuration()
        dhtConfiguration.mode = mode
        dhtConfiguration.refreshInterval = nil
        dhtConfiguration.requestTimeout = .seconds(10)
        dhtConfiguration.lookupTimeout = .seconds(30)
        let dht = KademliaDHT(configuration: dhtConfiguration)
        let configuration = P2PHost.Configuration.defaults {
            $0.agentVersion = Self.agent
            $0.services = [IdentifyService(), dht]
            $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")]
        }
        return try await withHost(identity: .ed25519(seed: seed), configuration: configuration) { host in
            defer { dht.stop() }
            return try await body(host, dht)
        }
    }

    /// Polls `condition` every 20 ms until it holds; throws after `timeout`.
    static func until(_ what: String, timeout: Duration = Self.timeout, _ condition: () async throws -> Bool) async throws {
        try await GoInteropTests.until(what, timeout: timeout, condition)
    }

    /// Runs `attempt` every 200 ms until it returns a value (nil or an error: not yet); throws
    /// with the last error after `timeout`.
    static func eventually<T>(_ what: String, timeout: Duration = Self.timeout, _ attempt: () async throws -> T?) async throws -> T {
        let deadline = ContinuousClock.now + timeout
        var last = "no attempt"
        for _ in 0..<1_000 {
            do {
                if let value = try await attempt() { return value }
                last = "not yet"
            } catch {
                last = "\(error)"
            }
            guard ContinuousClock.now < deadline else { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw ChildProcess.Failure("timed out waiting for \(what): \(last)")
    }

    /// Waits until `go`'s routing table holds `peer`: go's GET_CLOSEST_PEERS (a lookup that
    /// starts from its table) lists it. Returns the list.
    @discardableResult
    static func goKnows(_ go: P2PDaemon, _ peer: PeerID, key: String = "pointsub-dht-interop") async throws -> [PeerID] {
        try await eventually("go's routing table taking \(peer)") {
            let peers = try await go.closestPeers(key: Array(key.utf8), timeout: 10)
            return peers.contains(peer) ? peers : nil
        }
    }

    /// CIDv1 raw of `text`'s SHA-256: the daemon takes the CID, the DHT key is its multihash.
    static func cid(_ text: String) -> CID {
        CID(codec: 0x55, multihash: Multihash.sha256(Array(text.utf8)))
    }

    static func pkKey(_ peer: PeerID) -> [UInt8] { Array("/pk/".utf8) + peer.bytes }

    // MARK: - Routing table

    /// We connect to go B (a DHT server): B identifies us as a DHT server, checks us with a
    /// FIND_NODE and puts us in its routing table: B's own lookup lists us, and go C (a client that
    /// knows only B) learns us from B's FIND_NODE answer (B's table: a key that is no peer ID)
    /// and queries us.
    @Test func goRoutingTableTakesSwift() async throws {
        try await withDaemon(seed: 130, ["-dhtServer"]) { goB in
            try await withDaemon(seed: 131, ["-dhtClient"]) { goC in
                try await Self.withDHTHost(seed: 230) { host, dht in
                    _ = try await host.connect(to: goB.fullAddress)
                    try await Self.until("go B in our routing table") { dht.routingTablePeers.contains(goB.peerID) }
                    let fromB = try await Self.goKnows(goB, host.peerID)
                    #expect(fromB == [host.peerID])

                    // C is given only B's address. (Whether C reaches us in its own lookup or
                    // already in the table refresh go runs once B is in its table is a race: both
                    // learn us from B's FIND_NODE answer.)
                    try await goC.connect(goB.peerID, [goB.address])
                    let fromC = try await Self.goKnows(goC, host.peerID, key: "another key")
                    #expect(fromC.contains(host.peerID))
                    #expect(!fromC.contains(goC.peerID))
                    // C dialed us (at the address B gave it) to query us.
                    try await Self.until("go C's connection to us") { !host.connections(to: goC.peerID).isEmpty }
                    let allInbound = host.connections(to: goC.peerID).allSatisfy { $0.direction == .inbound }
                    #expect(allInbound)
                    // A client is not a DHT server: not in our table.
                    #expect(!dht.routingTablePeers.contains(goC.peerID))
                }
            }
        }
    }

    /// Our run-time mode switch as go sees it: in client mode we stop advertising the protocol
    /// (identify push), and go B (a server) drops us from its routing table; we still query B.
    /// Back in server mode, B checks us again (FIND_NODE of our ID) and takes us back.
    @Test func goFollowsOurModeSwitch() async throws {
        try await withDaemon(seed: 160, ["-dhtServer"]) { goB in
            try await Self.withDHTHost(seed: 260) { host, dht in
                _ = try await host.connect(to: goB.fullAddress)
                try await Self.until("go B in our routing table") { dht.routingTablePeers.contains(goB.peerID) }
                try await Self.goKnows(goB, host.peerID)

                try dht.setMode(.client)
                _ = try await Self.eventually("go B dropping us from its routing table") { () -> Bool? in
                    // With us gone, B's table is empty and its lookup fails at once.
                    let peers = (try? await goB.closestPeers(key: Array("pointsub-dht-interop".utf8), timeout: 10)) ?? []
                    return peers.contains(host.peerID) ? nil : true
                }
                #expect(!host.connections(to: goB.peerID).isEmpty, "the connection stays")
                let asked = try await dht.closestPeers(to: Array("a key".utf8))
                #expect(asked == [goB.peerID], "a client still queries")

                try dht.setMode(.server)
                try await Self.goKnows(goB, host.peerID)
            }
        }
    }

    // MARK: - Providers

    /// go B PROVIDEs a CID: its ADD_PROVIDER reaches our server (its only table peer), which
    /// stores it (asked directly by a second node of ours); that node, a client knowing only B,
    /// finds B through B's GET_PROVIDERS answer.
    @Test func swiftFindsGoProvider() async throws {
        try await withDaemon(seed: 132, ["-dhtServer"]) { goB in
            try await Self.withDHTHost(seed: 232) { host, dht in
                _ = try await host.connect(to: goB.fullAddress)
                try await Self.goKnows(goB, host.peerID)
                let cid = Self.cid("provided by go")
                let key = cid.multihash.bytes
                try await goB.provide(cid: cid.bytes, timeout: 20)

                try await Self.withDHTHost(seed: 233, mode: .client) { other, otherDHT in
                    _ = try await other.connect(to: goB.fullAddress)
                    _ = try await other.connect(to: host.addresses[0])
                    // Our server stored go's record: its GET_PROVIDERS answer, asked directly.
                    let answer = try await Self.eventually("go's ADD_PROVIDER at our node") {
                        let answer = try await otherDHT.request(KadMessage(type: .getProviders, key: key), to: host.peerID)
                        return answer.providerPeers.isEmpty ? nil : answer
                    }
                    #expect(answer.providerPeers.map(\.id) == [goB.peerID.bytes])
                    #expect(answer.providerPeers.first?.addresses.contains(goB.address) == true)

                    // go's GET_PROVIDERS answer, asked directly, then the whole lookup.
                    let fromGo = try await otherDHT.request(KadMessage(type: .getProviders, key: key), to: goB.peerID)
                    #expect(fromGo.providerPeers.map(\.id) == [goB.peerID.bytes])
                    try await Self.until("go B in the client's routing table") { otherDHT.routingTablePeers.contains(goB.peerID) }
                    let found = try await otherDHT.findProviders(key, count: 1)
                    #expect(found.map(\.peer) == [goB.peerID])
                    // And our own node finds it (its store first).
                    let ourFind = try await dht.findProviders(key, count: 1)
                    #expect(ourFind.map(\.peer) == [goB.peerID])
                }
            }
        }
    }

    /// We `provide` a CID: go B (our only table peer) takes our ADD_PROVIDER (no response) and
    /// its FIND_PROVIDERS answers us from its store, with our listen address; go C, a client
    /// that knows only us, finds us through our GET_PROVIDERS answer.
    @Test func goFindsSwiftProvider() async throws {
        try await withDaemon(seed: 134, ["-dhtServer"]) { goB in
            try await withDaemon(seed: 135, ["-dhtClient"]) { goC in
                try await Self.withDHTHost(seed: 234) { host, dht in
                    let ours = host.addresses[0].removingPeerID()
                    _ = try await host.connect(to: goB.fullAddress)
                    try await Self.until("go B in our routing table") { dht.routingTablePeers.contains(goB.peerID) }
                    let cid = Self.cid("provided by PointSub")
                    let took = try await withDeadline(.seconds(20), "provide") {
                        try await dht.provide(cid.multihash.bytes)
                    }
                    #expect(took == 1)

                    let atB = try await Self.eventually("go B's FIND_PROVIDERS listing us") {
                        let providers = try await goB.findProviders(cid: cid.bytes, count: 1, timeout: 10)
                        return providers.isEmpty ? nil : providers
                    }
                    #expect(atB.map(\.id) == [host.peerID])
                    #expect(atB.first?.addresses.contains(ours) == true, "B gave \(atB.first?.addresses ?? [])")

                    try await goC.connect(host.peerID, [ours])
                    let atC = try await Self.eventually("go C's FIND_PROVIDERS through us") {
                        let providers = try await goC.findProviders(cid: cid.bytes, count: 1, timeout: 10)
                        return providers.isEmpty ? nil : providers
                    }
                    #expect(atC.map(\.id) == [host.peerID])
                    #expect(atC.first?.addresses.contains(ours) == true, "C got \(atC.first?.addresses ?? [])")
                    // go still talks to us on its reused streams after ADD_PROVIDER: a lookup works.
                    try await Self.goKnows(goB, host.peerID, key: "after provide")
                }
            }
        }
    }

    // MARK: - Peer routing

    /// go A is known only to go B (A dialed B); we know only B. Our findPeer of A asks B, whose
    /// FIND_NODE answer gives A's listen address, and we connect to A there.
    @Test func swiftFindsGoPeerThroughGo() async throws {
        try await withDaemon(seed: 136, ["-dhtServer"]) { goB in
            try await withDaemon(seed: 137, ["-dhtServer"]) { goA in
                try await Self.withDHTHost(seed: 236) { host, dht in
                    try await goA.connect(goB.peerID, [goB.address])
                    _ = try await host.connect(to: goB.fullAddress)
                    try await Self.until("go B in our routing table") { dht.routingTablePeers.contains(goB.peerID) }
                    #expect(host.peerstore.addresses(for: goA.peerID).isEmpty)
                    #expect(host.connections(to: goA.peerID).isEmpty)

                    let addresses = try await dht.findPeer(goA.peerID)
                    #expect(addresses.contains(goA.address), "findPeer gave \(addresses)")
                    let connection = try await host.connect(to: goA.peerID, addresses: addresses)
                    #expect(connection.remotePeer == goA.peerID)
                    #expect(connection.direction == .outbound)
                }
            }
        }
    }

    /// Our node B2 is known only to our DHT node B1 (B2 dialed B1); go A knows only B1. go's
    /// FIND_PEER of B2 asks B1, whose FIND_NODE answer gives B2's listen address; go dials B2.
    @Test func goFindsSwiftPeerThroughSwift() async throws {
        try await withDaemon(seed: 138, ["-dhtClient"]) { goA in
            try await Self.withDHTHost(seed: 238) { b1, dht1 in
                try await Self.withDHTHost(seed: 239) { b2, _ in
                    let b2Address = b2.addresses[0].removingPeerID()
                    _ = try await b1.connect(to: goA.fullAddress)
                    // A takes B1 into its table first (and runs its first table refresh through
                    // B1, which would find B2 too if B2 were there already).
                    try await Self.goKnows(goA, b1.peerID)
                    _ = try await b2.connect(to: b1.addresses[0])
                    try await Self.until("B2 in B1's routing table") { dht1.routingTablePeers.contains(b2.peerID) }
                    let before = try await goA.peers().map(\.id)
                    #expect(!before.contains(b2.peerID))

                    let found = try await Self.eventually("go A's FIND_PEER of B2") {
                        try await goA.findPeer(b2.peerID, timeout: 10)
                    }
                    #expect(found.id == b2.peerID)
                    #expect(found.addresses.contains(b2Address), "FIND_PEER gave \(found.addresses)")
                    try await Self.until("go A's connection to B2") { !b2.connections(to: goA.peerID).isEmpty }
                    let allInbound = b2.connections(to: goA.peerID).allSatisfy { $0.direction == .inbound }
                    #expect(allInbound)
                }
            }
        }
    }

    // MARK: - Values

    /// `/pk` records both ways. Ours: we put our public key under `/pk/<our ID>`; go B (our only
    /// table peer) validates and stores it and answers GET_VALUE, and go C (a client that knows
    /// only B) reads it through the network. go's: B puts its own public key (as go marshals it,
    /// from GET_PUBLIC_KEY) under `/pk/<B's ID>`; its PUT_VALUE reaches our server, which
    /// validates and stores it; a client node of ours reads it from our server and from B, and
    /// through a whole lookup.
    @Test func pkValuesBothWays() async throws {
        try await withDaemon(seed: 140, ["-dhtServer"]) { goB in
            try await withDaemon(seed: 141, ["-dhtClient"]) { goC in
                try await Self.withDHTHost(seed: 240) { host, dht in
                    _ = try await host.connect(to: goB.fullAddress)
                    try await Self.until("go B in our routing table") { dht.routingTablePeers.contains(goB.peerID) }
                    try await Self.goKnows(goB, host.peerID)

                    // Ours, read by go.
                    let ourKey = Self.pkKey(host.peerID)
                    let ourValue = host.identity.publicKey.marshal()
                    let stored = try await dht.putValue(ourValue, for: ourKey)
                    #expect(stored == 1, "go B echoed our PUT_VALUE")
                    let atB = try await goB.getValue(key: ourKey, timeout: 10)
                    #expect(atB == ourValue)
                    try await goC.connect(goB.peerID, [goB.address])
                    let atC = try await Self.eventually("go C's GET_VALUE of our /pk record") {
                        try await goC.getValue(key: ourKey, timeout: 10)
                    }
                    #expect(atC == ourValue)

                    // go's, read by us.
                    let goKey = Self.pkKey(goB.peerID)
                    let goValue = try await goB.publicKey(of: goB.peerID, timeout: 10)
                    let goKeyMatches = (try? PublicKey(marshaled: goValue)).map { goB.peerID.matches($0) }
                    #expect(goKeyMatches == true)
                    try await goB.putValue(key: goKey, value: goValue, timeout: 20)

                    try await Self.withDHTHost(seed: 241, mode: .client) { other, otherDHT in
                        _ = try await other.connect(to: host.addresses[0])
                        _ = try await other.connect(to: goB.fullAddress)
                        // go's PUT_VALUE reached our server (go waits for its puts before answering).
                        let ourAnswer = try await otherDHT.request(KadMessage(type: .getValue, key: goKey), to: host.peerID)
                        #expect(ourAnswer.record?.key == goKey)
                        #expect(ourAnswer.record?.value == goValue)
                        let goAnswer = try await otherDHT.request(KadMessage(type: .getValue, key: goKey), to: goB.peerID)
                        #expect(goAnswer.record?.value == goValue)
                        try await Self.until("our nodes in the client's routing table") {
                            Set(otherDHT.routingTablePeers) == [host.peerID, goB.peerID]
                        }
                        let read = try await otherDHT.getValue(goKey)
                        #expect(read == goValue)
                    }
                }
            }
        }
    }

    /// `/ipns` records both ways: go-libp2p-kad-dht 0.25.1 registers boxo's ipns.Validator
    /// next to /pk by default, and p2pd keeps the defaults. Ours: an IPNS record we sign for our
    /// own name, put by us, is validated and stored by go B and read through go C. go's: go B
    /// puts (after validating it itself) a record we made for another key; its PUT_VALUE reaches
    /// our server, which validates and stores it; a client node of ours reads it. go's validation
    /// is real: it refuses a record whose signed data was altered and one older than what it holds.
    @Test func ipnsValuesBothWays() async throws {
        try await withDaemon(seed: 150, ["-dhtServer"]) { goB in
            try await withDaemon(seed: 151, ["-dhtClient"]) { goC in
                try await Self.withDHTHost(seed: 250) { host, dht in
                    _ = try await host.connect(to: goB.fullAddress)
                    try await Self.until("go B in our routing table") { dht.routingTablePeers.contains(goB.peerID) }
                    try await Self.goKnows(goB, host.peerID)
                    let eol = Date().addingTimeInterval(3600)

                    // Ours, read by go.
                    let ourKey = IPNSRecord.routingKey(for: host.peerID)
                    let ours = try IPNSRecord.make(
                        value: "/ipfs/bafkqaaa", sequence: 3, validity: eol, ttl: .seconds(60), key: host.identity)
                    #expect(try await dht.putValue(ours.encoded(), for: ourKey) == 1, "go B took our PUT_VALUE")
                    #expect(try await goB.getValue(key: ourKey, timeout: 10) == ours.encoded())
                    try await goC.connect(goB.peerID, [goB.address])
                    let atC = try await Self.eventually("go C's GET_VALUE of our /ipns record") {
                        try await goC.getValue(key: ourKey, timeout: 10)
                    }
                    #expect(atC == ours.encoded())

                    // go validates: an older sequence and altered signed data are refused.
                    let older = try IPNSRecord.make(
                        value: "/ipfs/bafkqaaa", sequence: 2, validity: eol, ttl: .seconds(60), key: host.identity)
                    await #expect(throws: (any Error).self) { try await goB.putValue(key: ourKey, value: older.encoded(), timeout: 10) }
                    var altered = ours.encoded()
                    altered[altered.count - 3] ^= 1
                    await #expect(throws: (any Error).self) { try await goB.putValue(key: ourKey, value: altered, timeout: 10) }
                    #expect(try await goB.getValue(key: ourKey, timeout: 10) == ours.encoded())

                    // go's PUT_VALUE of a record (another key's), stored by our server.
                    let otherKey = PrivateKey.ed25519(seed: 252)
                    let otherName = PeerID(publicKey: otherKey.publicKey)
                    let goKey = IPNSRecord.routingKey(for: otherName)
                    let theirs = try IPNSRecord.make(
                        value: "/ipfs/bafkqaab", sequence: 1, validity: eol, ttl: .seconds(60), key: otherKey)
                    try await goB.putValue(key: goKey, value: theirs.encoded(), timeout: 20)
                    try await Self.withDHTHost(seed: 251, mode: .client) { other, otherDHT in
                        _ = try await other.connect(to: host.addresses[0])
                        _ = try await other.connect(to: goB.fullAddress)
                        let ourAnswer = try await otherDHT.request(KadMessage(type: .getValue, key: goKey), to: host.peerID)
                        #expect(ourAnswer.record?.value == theirs.encoded())
                        try await Self.until("our nodes in the client's routing table") {
                            Set(otherDHT.routingTablePeers) == [host.peerID, goB.peerID]
                        }
                        let read = try IPNSRecord(decoding: try await otherDHT.getValue(goKey))
                        #expect(read.signedValue == Array("/ipfs/bafkqaab".utf8))
                        try read.validate(for: otherName)
                    }
                }
            }
        }
    }
}

// MARK: - py-libp2p

/// A running `Interop/kad_peer.py` (py-libp2p 0.8.1's `KadDHT`), driven through its stdin: each
/// command `<n> <word> args` is answered by one JSON line `{"n":"<n>","ok":…}`.
final class PyKadPeer: Sendable {
    static var script: URL { ChildProcess.repoRoot.appendingPathComponent("Interop/kad_peer.py") }

    let running: ChildProcess.Running
    /// `/ip4/127.0.0.1/tcp/P/p2p/ID`
    let address: Multiaddr
    let peerID: PeerID
    private let counter = NIOLockedValueBox(0)

    private init(running: ChildProcess.Running, address: Multiaddr) throws {
        self.running = running
        self.address = address
        guard let id = address.peerID else { throw ChildProcess.Failure("kad_peer.py address without /p2p: \(address)") }
        self.peerID = id
    }

    /// `kad_peer.py --seed N --mode M --lifetime 180`, once it printed its LISTEN line.
    static func start(seed: UInt64, mode: String = "server") async throws -> PyKadPeer {
        try PyPeer.checkInstalled()
        let running = try ChildProcess.Running(
            PyPeer.python, [script.path, "--seed", "\(seed)", "--mode", mode, "--lifetime", "180"], captureStderr: true)
        do {
            let line = try await running.firstLine(timeout: .seconds(60)) { $0.hasPrefix("LISTEN ") }
            return try PyKadPeer(running: running, address: try Multiaddr(String(line.dropFirst("LISTEN ".count))))
        } catch {
            _ = try? await running.stop(signal: SIGKILL)
            throw ChildProcess.Failure("kad_peer.py did not start: \(error); stderr: \(running.errorLines.suffix(20))")
        }
    }

    /// Sends `<n> line` and returns the answer's JSON object; throws on `"ok":false`.
    func command(_ line: String, timeout: Duration = .seconds(60)) async throws -> [String: Any] {
        let n = counter.withLockedValue { $0 += 1; return $0 }
        try running.send("\(n) \(line)")
        func parse(_ text: String) -> [String: Any]? {
            guard text.hasPrefix("{"), let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
                object["n"] as? String == "\(n)"
            else { return nil }
            return object
        }
        let answer: String
        do {
            answer = try await running.firstLine(timeout: timeout) { parse($0) != nil }
        } catch {
            throw ChildProcess.Failure("kad_peer.py: no answer to “\(line)”: \(error); stderr: \(running.errorLines.suffix(20).joined(separator: "\n"))")
        }
        let object = parse(answer)!
        guard object["ok"] as? Bool == true else { throw ChildProcess.Failure("kad_peer.py “\(line)” failed: \(answer)") }
        return object
    }

    /// Connects to `address` (with `/p2p/`) and waits until py's table takes the peer.
    func connect(_ address: Multiaddr) async throws -> Bool {
        try await command("connect \(address)")["added"] as? Bool == true
    }

    func table() async throws -> [String] { try await command("table")["peers"] as? [String] ?? [] }

    func provide(_ key: [UInt8]) async throws -> Bool { try await command("provide \(Self.hex(key))")["result"] as? Bool == true }

    func hasProvider(_ key: [UInt8], _ peer: PeerID) async throws -> Bool {
        try await command("has_provider \(Self.hex(key)) \(peer)")["result"] as? Bool == true
    }

    /// py's find_providers: (peer ID text, addresses as text) pairs.
    func findProviders(_ key: [UInt8], count: Int) async throws -> [(peer: String, addresses: [String])] {
        let list = try await command("find_providers \(Self.hex(key)) \(count)")["providers"] as? [[String: Any]] ?? []
        return list.map { ($0["peer"] as? String ?? "", $0["addrs"] as? [String] ?? []) }
    }

    /// py's find_peer: its addresses (empty when not found).
    func findPeer(_ peer: PeerID) async throws -> [String] {
        let answer = try await command("find_peer \(peer)")
        guard answer["peer"] as? String == peer.description else { return [] }
        return answer["addrs"] as? [String] ?? []
    }

    static func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    /// Closes its stdin (it exits 0 on EOF); kills it if it does not.
    func stop() async {
        if (try? await running.stop()) == nil { _ = try? await running.stop(signal: SIGKILL, timeout: 5) }
    }
}

/// Runs `body` with a started `kad_peer.py`; stops it afterwards. A failure carries its stderr.
func withPyKadPeer<T: Sendable>(seed: UInt64, _ body: (PyKadPeer) async throws -> T) async throws -> T {
    let py = try await PyKadPeer.start(seed: seed)
    do {
        let result = try await body(py)
        await py.stop()
        return result
    } catch {
        let log = py.running.errorLines.suffix(30).joined(separator: "\n")
        await py.stop()
        throw ChildProcess.Failure("\(error)\nkad_peer.py (seed \(seed)) stderr:\n\(log)")
    }
}

/// py-libp2p 0.8.1's kad-dht (`kad_peer.py`) and ours, both ways: provider records, peer
/// lookups through the other side's nodes. (Values are not driven: py's value API takes keys as
/// UTF-8 strings, so no binary `/pk/<peer ID>` key.)
///
/// py quirks: its routing table takes a peer on `add_peer` once identify listed
/// `/ipfs/kad/1.0.0`, or when the peer opens a kad stream to it; its `find_peer` and
/// `find_providers` look at its own table/peerstore/store first; its server answers ADD_PROVIDER
/// with an echo (go does not; we neither wait for nor need one).
@Suite(.serialized, .timeLimit(.minutes(3)))
struct PyDHTInteropTests {
    /// Our B2 is known only to our B1 (B2 dialed B1 and provided a key there); py knows only
    /// B1. py finds B2's provider record and B2 itself through B1's answers.
    @Test func pyFindsSwiftProviderAndPeer() async throws {
        try await withPyKadPeer(seed: 150) { py in
            try await DHTInteropTests.withDHTHost(seed: 250) { b1, dht1 in
                try await DHTInteropTests.withDHTHost(seed: 251) { b2, dht2 in
                    _ = try await b2.connect(to: b1.addresses[0])
                    try await DHTInteropTests.until("B1 in B2's routing table") { dht2.routingTablePeers.contains(b1.peerID) }
                    try await DHTInteropTests.until("B2 in B1's routing table") { dht1.routingTablePeers.contains(b2.peerID) }
                    let key = DHTInteropTests.cid("provided by B2 for py").multihash.bytes
                    let took = try await dht2.provide(key)
                    #expect(took == 1)

                    // py's table takes B1 (identify lists /ipfs/kad/1.0.0).
                    let added = try await py.connect(b1.addresses[0])
                    #expect(added)
                    #expect(try await py.table() == [b1.peerID.description])

                    let providers = try await py.findProviders(key, count: 1)
                    #expect(providers.map(\.peer) == [b2.peerID.description])
                    let b2Address = b2.addresses[0].removingPeerID().description
                    #expect(providers.first?.addresses.contains(b2Address) == true, "py got \(providers)")

                    let addresses = try await py.findPeer(b2.peerID)
                    #expect(addresses.contains(b2Address), "py's find_peer gave \(addresses)")
                }
            }
        }
    }

    /// py P knows py Q; we know only P. We find Q through P's FIND_NODE answer; we provide a key
    /// (to P and Q, which our lookup found through P) and py stores our ADD_PROVIDER; P provides
    /// a key and a client node of ours that knows only P finds P's record in P's answer.
    @Test func swiftAndPyProvidersAndPeers() async throws {
        try await withPyKadPeer(seed: 152) { p in
            try await withPyKadPeer(seed: 153) { q in
                try await DHTInteropTests.withDHTHost(seed: 252) { host, dht in
                    #expect(try await p.connect(q.address))
                    #expect(try await p.connect(host.addresses[0]))
                    try await DHTInteropTests.until("py P in our routing table") { dht.routingTablePeers.contains(p.peerID) }
                    #expect(host.connections(to: q.peerID).isEmpty)
                    #expect(host.peerstore.addresses(for: q.peerID).isEmpty)

                    // Q, known only to P.
                    let addresses = try await dht.findPeer(q.peerID)
                    #expect(addresses == [q.address.removingPeerID()], "findPeer gave \(addresses)")
                    let connection = try await host.connect(to: q.peerID, addresses: addresses)
                    #expect(connection.remotePeer == q.peerID)

                    // Ours at py: the lookup finds Q through P too.
                    let ourKey = DHTInteropTests.cid("provided by PointSub for py").multihash.bytes
                    let took = try await dht.provide(ourKey)
                    #expect(took == 2)
                    try await DHTInteropTests.until("our ADD_PROVIDER at py Q") { try await q.hasProvider(ourKey, host.peerID) }
                    try await DHTInteropTests.until("our ADD_PROVIDER at py P") { try await p.hasProvider(ourKey, host.peerID) }

                    // py's, found by us: P announces to its table (us and Q).
                    let pyKey = DHTInteropTests.cid("provided by py").multihash.bytes
                    #expect(try await p.provide(pyKey))
                    try await DHTInteropTests.withDHTHost(seed: 253, mode: .client) { other, otherDHT in
                        _ = try await other.connect(to: p.address)
                        try await DHTInteropTests.until("py P in the client's routing table") { otherDHT.routingTablePeers.contains(p.peerID) }
                        let found = try await otherDHT.findProviders(pyKey, count: 1)
                        #expect(found.map(\.peer) == [p.peerID])
                        // (py lists them with a /p2p/<its ID> suffix, which our decoder drops.)
                        #expect(found.first?.addresses == [p.address.removingPeerID()], "found \(found)")
                        let connection = try await other.connect(to: p.peerID, addresses: found.first?.addresses ?? [])
                        #expect(connection.remotePeer == p.peerID)
                    }
                    let atOurs = try await dht.findProviders(pyKey, count: 1)
                    #expect(atOurs.map(\.peer) == [p.peerID])
                }
            }
        }
    }
}
