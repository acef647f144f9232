import Foundation
import NIOCore
import PointSub
import PubSub
import TestSupport
import Testing

/// secp256k1 identities (`16Uiu2…` peer IDs) against py-libp2p 0.8.1 (coincurve) and go-libp2p
/// 0.32.1 (decred secp256k1, p2pd started with a secp256k1 key file), both directions: the Noise
/// handshake signs and checks secp256k1 signatures on both sides, then echo, ping and identify
/// (the identify message carries the secp256k1 public key), and gossipsub messages signed with
/// secp256k1 keys travel through go each way.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct Secp256k1InteropTests {
    static let agent = "pointsub-secp256k1-interop/0.1.0"
    static let pyKeyType = ["--key-type", "secp256k1"]

    static func configuration(listen: Bool) -> P2PHost.Configuration {
        .defaults {
            $0.agentVersion = Self.agent
            $0.services = [EchoService()]
            if listen { $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")] }
        }
    }

    static func withSecpHost<T: Sendable>(seed: UInt64, listen: Bool, _ body: (P2PHost) async throws -> T) async throws -> T {
        let key = try PrivateKey.secp256k1(seed: seed)
        return try await withHost(identity: key, configuration: configuration(listen: listen), body)
    }

    // MARK: - py-libp2p

    @Test func peerIDsAgreeWithPy() async throws {
        for seed: UInt64 in [1, 2, 7, 1 << 40] {
            let py = try await PyPeer.output(["id", "--seed", "\(seed)"] + Self.pyKeyType)
            let ours = try PrivateKey.secp256k1(seed: seed).peerID.b58String
            #expect(py == ours, "seed \(seed)")
            #expect(ours.hasPrefix("16Uiu2"))
        }
    }

    @Test func swiftDialsPyEchoPingIdentify() async throws {
        let py = try await PyListener.start(seed: 51, Self.pyKeyType)
        do {
            let address = try Multiaddr(py.address)
            #expect(py.address.contains("/p2p/16Uiu2"))
            try await Self.withSecpHost(seed: 61, listen: false) { host in
                let connection = try await host.connect(to: address)
                #expect(connection.remotePeer == address.peerID)
                let rtts = try await PingService.ping(host: host, peer: connection.remotePeer, count: 3)
                #expect(rtts.count == 3)
                // py's secp256k1 key reaches us in identify…
                let info = try await IdentifyService.identify(connection, host: host)
                #expect(info.agentVersion == "py-libp2p-interop/0.8.1")
                #expect(info.publicKey?.type == .secp256k1)
                #expect(info.publicKey.map { connection.remotePeer.matches($0) } == true)
                try await InteropTests.echo(host, peer: connection.remotePeer, bytes: 256 << 10, streams: 2)
                // …and ours reaches py.
                let seen = try await py.identified(peer: host.peerID.b58String)
                #expect(seen["agent"] as? String == Self.agent)
                #expect((seen["protocols"] as? [String] ?? []).contains("/echo/1.0.0"))
            }
            await py.stop()
        } catch {
            await py.stop()
            throw error
        }
    }

    @Test func pyDialsSwiftEchoPingIdentify() async throws {
        try await Self.withSecpHost(seed: 62, listen: true) { host in
            let target = host.addresses[0].description
            #expect(target.contains("/p2p/16Uiu2"))
            let dial = ["dial", target, "--seed", "52"] + Self.pyKeyType
            let echo = try await PyPeer.run(dial + ["--test", "echo", "--size", "\(256 << 10)", "--streams", "2"])
            #expect(echo["bytes"] as? Int == 256 << 10)
            #expect(echo["streams"] as? Int == 2)
            let ping = try await PyPeer.run(dial + ["--test", "ping", "--count", "3"])
            #expect((ping["rtts_ms"] as? [Double])?.count == 3)
            let identify = try await PyPeer.run(dial + ["--test", "identify"])
            #expect(identify["peer"] as? String == host.peerID.b58String)
            #expect(identify["agent"] as? String == Self.agent)
            #expect(identify["public_key_matches"] as? Bool == true)
            // We identified py on its inbound connection: its secp256k1 key is in our peerstore.
            let pyPeer = try PrivateKey.secp256k1(seed: 52).peerID
            let info = host.peerstore.info(for: pyPeer)
            #expect(info?.agentVersion == "py-libp2p-interop/0.8.1")
            #expect(info?.publicKey.map { pyPeer.matches($0) } == true)
        }
    }

    // MARK: - go-libp2p (p2pd with a secp256k1 key file)

    func withSecpDaemon<T: Sendable>(
        seed: UInt64, _ arguments: [String] = [], metrics: Bool = false, _ body: (P2PDaemon) async throws -> T
    ) async throws -> T {
        let daemon = try await P2PDaemon.start(key: try PrivateKey.secp256k1(seed: seed), arguments, metrics: metrics)
        do {
            // The daemon checked IDENTIFY's peer ID against the key file's.
            #expect(daemon.peerID.b58String.hasPrefix("16Uiu2"))
            let result = try await body(daemon)
            await daemon.stop()
            return result
        } catch {
            let log = daemon.log
            await daemon.stop()
            throw ChildProcess.Failure("\(error)\np2pd (secp256k1 seed \(seed)) stderr:\n\(log)")
        }
    }

    /// Waits until go's metrics show its identify of us complete. go-libp2p records the protocols
    /// it received a moment before it counts the identify itself and our push support, so
    /// `checkGoIdentifiedUs` (which waits for the first only) could read the others as missing.
    static func goFinishedIdentifying(_ go: P2PDaemon) async throws {
        try await GoInteropTests.until("go's identify of us in its metrics") {
            let metrics = try await go.metrics()
            return metrics["libp2p_identify_identify_total{dir=\"outbound\"}"] != nil
                && metrics["libp2p_identify_conn_push_support_total{support=\"supported\"}"] != nil
        }
    }

    @Test func swiftDialsGoEchoPingIdentify() async throws {
        try await withSecpDaemon(seed: 151, metrics: true) { go in
            let handler = try await DaemonEchoHandler.start(path: "\(go.directory)/echo.sock")
            do {
                try await go.setStreamHandler(path: handler.path, [EchoService.protocolID])
                try await Self.withSecpHost(seed: 251, listen: false) { host in
                    let connection = try await host.connect(to: go.fullAddress)
                    #expect(connection.remotePeer == go.peerID)
                    let message = try await IdentifyService.identify(connection, host: host)
                    #expect(message.publicKey?.type == .secp256k1)
                    #expect(message.publicKey.map { go.peerID.matches($0) } == true)
                    GoInteropTests.checkGoIdentify(host.peerstore.info(for: go.peerID), listenAddress: go.address)
                    try await Self.goFinishedIdentifying(go)
                    try await GoInteropTests.checkGoIdentifiedUs(go, host)
                    let rtts = try await PingService.ping(host: host, peer: go.peerID, count: 3)
                    #expect(rtts.count == 3)
                    // Echo through the handler the test registered on go.
                    let stream = try await host.newStream(to: go.peerID, protocols: [EchoService.protocolID])
                    let payload = GoInteropTests.payload(256 << 10, seed: 11)
                    let back = try await echoFullDuplex(stream, payload)
                    #expect(back == payload)
                    stream.reset()  // everything is back; a FIN would make the proxy reset anyway
                    #expect(handler.streams.first?.peer == host.peerID)
                }
                await handler.stop()
            } catch {
                await handler.stop()
                throw error
            }
        }
    }

    @Test func goDialsSwiftEchoPingIdentify() async throws {
        try await withSecpDaemon(seed: 152, metrics: true) { go in
            try await Self.withSecpHost(seed: 252, listen: true) { host in
                try await go.connect(host.peerID, [host.addresses[0].removingPeerID()])
                try await GoInteropTests.until("the inbound connection from go") { !host.connections(to: go.peerID).isEmpty }
                #expect(host.connections(to: go.peerID).first?.direction == .inbound)
                try await GoInteropTests.until("our identify of go") { host.peerstore.info(for: go.peerID)?.agentVersion != nil }
                let info = host.peerstore.info(for: go.peerID)
                GoInteropTests.checkGoIdentify(info, listenAddress: go.address)
                #expect(info?.publicKey?.type == .secp256k1)
                try await Self.goFinishedIdentifying(go)
                try await GoInteropTests.checkGoIdentifiedUs(go, host)
                // go pings us and echoes through us (the test writes through the daemon's proxy).
                try await go.withStream(to: host.peerID, [PingService.protocolID]) { info, socket in
                    #expect(info.peer == host.peerID)
                    for round in 0..<3 {
                        let payload = GoInteropTests.payload(PingService.payloadSize, seed: UInt64(round + 1))
                        let back = try await GoInteropTests.roundTrip(socket, payload)
                        #expect(back == payload, "ping round \(round)")
                    }
                }
                try await go.withStream(to: host.peerID, [EchoService.protocolID]) { info, socket in
                    #expect(info.proto == EchoService.protocolID)
                    let payload = GoInteropTests.payload(256 << 10, seed: 5)
                    let back = try await GoInteropTests.roundTrip(socket, payload)
                    #expect(back == payload)
                }
            }
        }
    }

    /// Gossipsub with secp256k1 authors on both sides: go's message reaches us (we checked its
    /// secp256k1 signature) and ours reaches go's subscription signed (go-libp2p-pubsub drops
    /// messages whose signature does not verify).
    @Test func gossipsubSignaturesBothWaysWithGo() async throws {
        let topic = "secp256k1"
        try await withSecpDaemon(seed: 153, ["-pubsub", "-pubsubRouter=gossipsub"]) { go in
            let feed = try await go.subscribe(topic)
            do {
                try await Self.withSecpHost(seed: 253, listen: false) { host in
                    try await withPubSub(host: host, router: try GossipSubRouter()) { pubsub in
                        let inbox = PubSubInbox(try pubsub.subscribe(topic))
                        _ = try await host.connect(to: go.fullAddress)
                        try await GoInteropTests.until("go and us in each other's topic") {
                            let goPeers = try await go.pubsubPeers(topic)
                            return goPeers.contains(host.peerID) && pubsub.peers(topic: topic).contains(go.peerID)
                        }
                        // Until go's mesh has us, a message may not get across: retry (bounded).
                        var ours: [MessageID] = []
                        let deadline = ContinuousClock.now + GoInteropTests.timeout
                        while true {
                            ours.append(try await pubsub.publish(topic, Array("from swift \(ours.count)".utf8)))
                            try await go.publish(topic, Array("from go \(ours.count)".utf8))
                            try await Task.sleep(for: .milliseconds(200))
                            let goGotOne = try feed.messages().contains { $0.from == host.peerID }
                            let weGotOne = inbox.all.contains { $0.from == go.peerID }
                            if goGotOne && weGotOne { break }
                            guard ContinuousClock.now < deadline, ours.count < 100 else {
                                throw ChildProcess.Failure("no secp256k1-signed message got across each way")
                            }
                        }
                        let atGo = try feed.messages().filter { $0.from == host.peerID }
                        #expect(!atGo.isEmpty && atGo.allSatisfy { $0.signed && ours.contains($0.id) })
                        let fromGo = inbox.all.filter { $0.from == go.peerID }
                        #expect(fromGo.allSatisfy { $0.text.hasPrefix("from go ") && $0.receivedFrom == go.peerID })
                        #expect(pubsub.counters.rejected == 0)
                        #expect(pubsub.counters.badRPCs == 0)
                    }
                }
                await feed.stop()
            } catch {
                await feed.stop()
                throw error
            }
        }
    }
}
