import Foundation
import NIOCore
import NIOSSL
import PointSub
import TestSupport
import Testing

/// Interop over WebSocket (`/ip4/127.0.0.1/tcp/P/ws`, Noise, Yamux) in both directions: with
/// py-libp2p 0.8.1 (`peer.py --transport ws`: its WebsocketTransport, built on the `websockets`
/// package) and with go-libp2p 0.32.1 (p2pd listening on a `/ws` host address; gorilla/websocket).
/// Echo, ping and identify on each; with py-libp2p over secure WebSocket (`/tls/ws`, a
/// self-signed test certificate) too.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct WebSocketInteropTests {
    static let agent = "pointsub-ws-interop/0.1.0"

    /// `security`: "noise" or "tls" (the libp2p security protocol, over the WebSocket).
    static func configuration(listen: Bool, security: String = "noise") -> P2PHost.Configuration {
        .defaults {
            $0.agentVersion = Self.agent
            $0.transports = [.webSocket]
            $0.security = security == "tls" ? [.tls] : [.noise]
            $0.services = [EchoService()]
            if listen { $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0/ws")] }
        }
    }

    /// 1 MiB (or `count`) of pseudo-random bytes through our `/echo/1.0.0` client to `peer`.
    static func echo(_ host: P2PHost, peer: PeerID, count: Int = 1 << 20) async throws {
        let stream = try await host.newStream(to: peer, protocols: [EchoService.protocolID])
        let payload = GoInteropTests.payload(count, seed: 7)
        async let sent: Void = {
            var rest = payload
            while rest.readableBytes > 0 {
                try await stream.write(rest.readSlice(length: min(60_000, rest.readableBytes))!)
            }
            try await stream.closeWrite()
        }()
        let back = try await stream.readToEnd(maxBytes: count)
        try await sent
        #expect(back.readableBytes == count)
        #expect(back == payload, "echo over WebSocket returned different bytes")
    }

    // MARK: - py-libp2p

    /// `peer.py listen --transport ws --security SECURITY`, stopped afterwards.
    func withPyListener<T: Sendable>(
        seed: UInt64, security: String = "noise", _ body: (ChildProcess.Running, Multiaddr) async throws -> T
    ) async throws -> T {
        try PyPeer.checkInstalled()
        let running = try ChildProcess.Running(
            PyPeer.python,
            [PyPeer.script.path, "listen", "--seed", "\(seed)", "--transport", "ws", "--security", security])
        do {
            let line = try await running.firstLine(timeout: .seconds(60)) { $0.hasPrefix("LISTEN ") }
            let address = try Multiaddr(String(line.dropFirst("LISTEN ".count)))
            let result = try await body(running, address)
            _ = try? await running.stop()
            return result
        } catch {
            _ = try? await running.stop()
            throw error
        }
    }

    /// Over the WebSocket, libp2p Noise or TLS 1.3 (issue 11: WebSocket with both).
    @Test(arguments: ["noise", "tls"])
    func swiftDialsPyOverWebSocket(security: String) async throws {
        try await withPyListener(seed: 61, security: security) { py, address in
            #expect(address.removingPeerID().components.last == .ws, "py listens on \(address)")
            try await withHost(
                identity: .ed25519(seed: 71), configuration: Self.configuration(listen: false, security: security)
            ) { host in
                let connection = try await host.connect(to: address)
                #expect(connection.remotePeer == address.peerID)
                #expect(connection.security == (security == "tls" ? "/tls/1.0.0" : "/noise"))
                try await Self.echo(host, peer: connection.remotePeer)

                let rtts = try await PingService.ping(host: host, peer: connection.remotePeer, count: 3)
                #expect(rtts.count == 3)

                let info = try await IdentifyService.identify(connection, host: host)
                #expect(info.agentVersion == "py-libp2p-interop/0.8.1")
                #expect(info.protocols.contains("/echo/1.0.0"))
                #expect(info.publicKey.map { connection.remotePeer.matches($0) } == true)
                #expect(info.listenAddresses.contains { $0.components.last == .ws })

                // py identified us over the same connection.
                let line = try await py.firstLine(timeout: .seconds(20)) { line in
                    line.contains("\"identified\"") && line.contains(host.peerID.b58String)
                }
                let seen = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
                #expect(seen?["agent"] as? String == Self.agent)
                let protocols: [String] = seen?["protocols"] as? [String] ?? []
                #expect(protocols.contains("/echo/1.0.0"))
            }
        }
    }

    @Test(arguments: ["noise", "tls"])
    func pyDialsSwiftOverWebSocket(security: String) async throws {
        try await withHost(
            identity: .ed25519(seed: 62), configuration: Self.configuration(listen: true, security: security)
        ) { host in
            let target = host.addresses[0].description
            #expect(target.contains("/ws/p2p/"))
            let common = ["--transport", "ws", "--security", security, "--seed", "72"]
            let echo = try await PyPeer.run(["dial", target] + common + ["--test", "echo", "--size", "\(1 << 20)"])
            #expect(echo["bytes"] as? Int == 1 << 20)

            let ping = try await PyPeer.run(["dial", target] + common + ["--test", "ping", "--count", "3"])
            #expect((ping["rtts_ms"] as? [Double])?.count == 3)

            let identify = try await PyPeer.run(["dial", target] + common + ["--test", "identify"])
            #expect(identify["agent"] as? String == Self.agent)
            #expect(identify["peer"] as? String == host.peerID.b58String)
            #expect(identify["public_key_matches"] as? Bool == true)
            let protocols: [String] = identify["protocols"] as? [String] ?? []
            #expect(Set(host.supportedProtocols).isSubset(of: Set(protocols)))

            // We identified py on its inbound WebSocket connection too.
            let pyPeer = PeerID(publicKey: PrivateKey.ed25519(seed: 72).publicKey)
            #expect(host.peerstore.info(for: pyPeer)?.agentVersion == "py-libp2p-interop/0.8.1")
        }
    }

    // MARK: - py-libp2p over secure WebSocket

    /// A self-signed certificate for "localhost" and 127.0.0.1 (P-256, valid 2000-2100), test
    /// only (the same as in WebSocketTransportTests), and its key.
    static let certificate = """
        -----BEGIN CERTIFICATE-----
        MIIBZDCCAQqgAwIBAgIBATAKBggqhkjOPQQDAjAUMRIwEAYDVQQDDAlsb2NhbGhv
        c3QwIBcNMDAwMTAxMDAwMDAwWhgPMjEwMDAxMDEwMDAwMDBaMBQxEjAQBgNVBAMM
        CWxvY2FsaG9zdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABMb4qHjilXhdwkum
        c4Dns6UDrtfyijFJsSWY5P5izok+LGRxYYuLp724+zoxYGDFnARXynIxQONKsU+q
        QwiYUlOjSzBJMBoGA1UdEQQTMBGCCWxvY2FsaG9zdIcEfwAAATAMBgNVHRMBAf8E
        AjAAMB0GA1UdDgQWBBQfrwzLPepgpzfJJk/XGhd97lwlxDAKBggqhkjOPQQDAgNI
        ADBFAiAekWT9oJ/1p4ri+Tlu1jYFk4WRNz4ncQrRvlGMCTItSwIhAMxpIsIvqJRx
        esPD3wXgOBMIHQL+q3/ePpa5b/Hjtb28
        -----END CERTIFICATE-----

        """
    static let key = """
        -----BEGIN PRIVATE KEY-----
        MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgUELwHE7vuJ4bs/LG
        rALudPOLCjQsim9DxOfYy4FwLzyhRANCAATG+Kh44pV4XcJLpnOA57OlA67X8oox
        SbElmOT+Ys6JPixkcWGLi6e9uPs6MWBgxZwEV8pyMUDjSrFPqkMImFJT
        -----END PRIVATE KEY-----

        """

    /// Our TLS (presents the certificate, trusts only it) and the PEM files for py, in a
    /// temporary directory removed afterwards.
    func withTLS<T: Sendable>(_ body: (TransportOption, _ certPath: String, _ keyPath: String) async throws -> T) async throws -> T {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("pointsub-wss-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(at: directory) }
        let certPath = directory.appendingPathComponent("cert.pem").path
        let keyPath = directory.appendingPathComponent("key.pem").path
        try Self.certificate.write(toFile: certPath, atomically: true, encoding: .utf8)
        try Self.key.write(toFile: keyPath, atomically: true, encoding: .utf8)
        let certificate = try NIOSSLCertificate(bytes: Array(Self.certificate.utf8), format: .pem)
        let key = try NIOSSLPrivateKey(bytes: Array(Self.key.utf8), format: .pem)
        var client = TLSConfiguration.makeClientConfiguration()
        client.trustRoots = .certificates([certificate])
        let tls = try WebSocketTLS(
            server: .makeServerConfiguration(certificateChain: [.certificate(certificate)], privateKey: .privateKey(key)),
            client: client)
        return try await body(.webSocket(tls: tls), certPath, keyPath)
    }

    @Test func swiftDialsPyOverSecureWebSocket() async throws {
        try await withTLS { tls, certPath, keyPath in
            try PyPeer.checkInstalled()
            let running = try ChildProcess.Running(
                PyPeer.python,
                [PyPeer.script.path, "listen", "--seed", "65", "--transport", "wss", "--tls-cert", certPath, "--tls-key", keyPath])
            do {
                let line = try await running.firstLine(timeout: .seconds(60)) { $0.hasPrefix("LISTEN ") }
                let address = try Multiaddr(String(line.dropFirst("LISTEN ".count)))
                // py-libp2p 0.8.1 advertises the older spelling, …/wss.
                #expect(WebSocketTransport.canHandle(address) && address.removingPeerID().components.last != .ws)
                let config = P2PHost.Configuration.defaults {
                    $0.agentVersion = Self.agent
                    $0.transports = [tls]
                    $0.services = [EchoService()]
                }
                try await withHost(identity: .ed25519(seed: 75), configuration: config) { host in
                    let connection = try await host.connect(to: address)
                    #expect(connection.remotePeer == address.peerID)
                    try await Self.echo(host, peer: connection.remotePeer)
                    let rtts = try await PingService.ping(host: host, peer: connection.remotePeer, count: 3)
                    #expect(rtts.count == 3)
                    let info = try await IdentifyService.identify(connection, host: host)
                    #expect(info.agentVersion == "py-libp2p-interop/0.8.1")
                    #expect(info.publicKey.map { connection.remotePeer.matches($0) } == true)
                }
                _ = try? await running.stop()
            } catch {
                _ = try? await running.stop()
                throw error
            }
        }
    }

    @Test func pyDialsSwiftOverSecureWebSocket() async throws {
        try await withTLS { tls, certPath, _ in
            let config = P2PHost.Configuration.defaults {
                $0.agentVersion = Self.agent
                $0.transports = [tls]
                $0.services = [EchoService()]
                $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0/tls/ws")]
            }
            try await withHost(identity: .ed25519(seed: 66), configuration: config) { host in
                let ours = host.addresses[0]
                #expect(ours.description.contains("/tls/ws/p2p/"))
                // py-libp2p 0.8.1 parses `/tls/ws` only without a trailing /p2p/ (its
                // parse_websocket_multiaddr rejects `…/tls/ws/p2p/ID`, so its swarm cannot dial
                // it), while `…/wss/p2p/ID` works: give it that spelling, the same on the wire.
                let port = try #require(ours.tcpPort)
                let target = "/ip4/127.0.0.1/tcp/\(port)/wss/p2p/\(host.peerID)"
                let common = ["--transport", "wss", "--tls-ca", certPath, "--seed", "76"]
                let echo = try await PyPeer.run(["dial", target] + common + ["--test", "echo", "--size", "\(1 << 20)"])
                #expect(echo["bytes"] as? Int == 1 << 20)
                let ping = try await PyPeer.run(["dial", target] + common + ["--test", "ping", "--count", "3"])
                #expect((ping["rtts_ms"] as? [Double])?.count == 3)
                let identify = try await PyPeer.run(["dial", target] + common + ["--test", "identify"])
                #expect(identify["agent"] as? String == Self.agent)
                #expect(identify["public_key_matches"] as? Bool == true)
            }
        }
    }

    // MARK: - go-libp2p (p2pd)

    /// p2pd listening on TCP and WebSocket (its `-hostAddrs` given again replaces the default);
    /// its `/ws` address, from IDENTIFY.
    func withGoDaemon<T: Sendable>(seed: UInt64, _ body: (P2PDaemon, Multiaddr) async throws -> T) async throws -> T {
        let go = try await P2PDaemon.start(seed: seed, ["-hostAddrs", "/ip4/127.0.0.1/tcp/0,/ip4/127.0.0.1/tcp/0/ws"])
        do {
            let identify = try await DaemonSocket.with(path: go.controlPath) { try await $0.request(DaemonRequest.identify) }
            guard let ws = identify.identify?.addresses.first(where: { WebSocketTransport.canHandle($0) }) else {
                throw ChildProcess.Failure("p2pd has no /ws address: \(String(describing: identify.identify?.addresses))")
            }
            let result = try await body(go, ws)
            await go.stop()
            return result
        } catch {
            let log = go.log
            await go.stop()
            throw ChildProcess.Failure("\(error)\np2pd stderr:\n\(log)")
        }
    }

    @Test func swiftDialsGoOverWebSocket() async throws {
        try await withGoDaemon(seed: 63) { go, ws in
            try await withHost(identity: .ed25519(seed: 73), configuration: Self.configuration(listen: false)) { host in
                let connection = try await host.connect(to: ws.appending(peerID: go.peerID))
                #expect(connection.remotePeer == go.peerID)
                #expect(connection.remoteAddress == ws)
                let rtts = try await PingService.ping(host: host, peer: go.peerID, count: 3)
                #expect(rtts.count == 3)
                let info = try await IdentifyService.identify(connection, host: host)
                #expect(info.agentVersion == "p2pd/0.1")
                #expect(info.publicKey.map { go.peerID.matches($0) } == true)
                #expect(info.listenAddresses.contains(ws))
                // p2pd serves no echo protocol of its own: go opens a stream to ours over this
                // connection, through the daemon's proxy.
                try await go.withStream(to: host.peerID, [EchoService.protocolID]) { info, socket in
                    #expect(info.proto == EchoService.protocolID)
                    let payload = GoInteropTests.payload(256 << 10, seed: 3)
                    let back = try await GoInteropTests.roundTrip(socket, payload)
                    #expect(back == payload)
                }
            }
        }
    }

    @Test func goDialsSwiftOverWebSocket() async throws {
        try await withGoDaemon(seed: 64) { go, _ in
            try await withHost(identity: .ed25519(seed: 74), configuration: Self.configuration(listen: true)) { host in
                let ours = host.addresses[0].removingPeerID()
                #expect(ours.components.last == .ws)
                try await go.connect(host.peerID, [ours])
                let peers = try await go.peers()
                #expect(peers.first { $0.id == host.peerID }?.addresses == [ours])
                try await GoInteropTests.until("the inbound connection from go") { !host.connections(to: go.peerID).isEmpty }
                let inbound = host.connections(to: go.peerID).first
                #expect(inbound?.direction == .inbound)
                #expect(inbound?.remoteAddress.components.last == .ws)
                try await GoInteropTests.until("our identify of go") { host.peerstore.info(for: go.peerID)?.agentVersion != nil }
                #expect(host.peerstore.info(for: go.peerID)?.agentVersion == "p2pd/0.1")

                try await goPingsAndEchoesThrough(go, host, echoSeed: 5)
            }
        }
    }
}
