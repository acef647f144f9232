import Foundation
import NIOCore
import PointSub
import Testing

/// Interop with py-libp2p 0.8.1 in both directions, over real TCP on 127.0.0.1: Noise, Yamux,
/// multistream-select, identify, ping, echo and perf must agree byte for byte.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct InteropTests {
    static let agent = "pointsub-interop-test/0.1.0"

    func withSwiftHost<T: Sendable>(seed: UInt64, listen: Bool = false, _ body: (P2PHost) async throws -> T) async throws -> T {
        let config = P2PHost.Configuration.defaults {
            $0.agentVersion = Self.agent
            $0.services = [EchoService(), PerfService()]
            if listen { $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")] }
        }
        return try await withHost(identity: .ed25519(seed: seed), configuration: config, body)
    }

    // MARK: identities

    @Test func peerIDsFromTheSameSeedsAgree() async throws {
        for seed: UInt64 in [0, 1, 2, 7, 1 << 40] {
            let py = try await PyPeer.output(["id", "--seed", "\(seed)"])
            #expect(py == PeerID(publicKey: PrivateKey.ed25519(seed: seed).publicKey).b58String, "seed \(seed)")
        }
    }

    // MARK: Swift dials py

    func withPyListener<T: Sendable>(seed: UInt64, _ body: (PyListener, Multiaddr) async throws -> T) async throws -> T {
        let py = try await PyListener.start(seed: seed)
        do {
            let result = try await body(py, try Multiaddr(py.address))
            await py.stop()
            return result
        } catch {
            await py.stop()
            throw error
        }
    }

    static func echo(_ host: P2PHost, peer: PeerID, bytes: Int, streams: Int) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<streams {
                group.addTask {
                    let stream = try await host.newStream(to: peer, protocols: ["/echo/1.0.0"])
                    // Pseudo-random, filled 8 bytes at a time (a per-byte loop is slow in debug builds).
                    var payload = ByteBuffer(repeating: 0, count: bytes)
                    var x = UInt64(index + 1) &* 0x9E37_79B9_7F4A_7C15
                    payload.withUnsafeMutableReadableBytes { raw in
                        for offset in stride(from: 0, to: raw.count - raw.count % 8, by: 8) {
                            x ^= x << 13
                            x ^= x >> 7
                            x ^= x << 17
                            raw.storeBytes(of: x, toByteOffset: offset, as: UInt64.self)
                        }
                    }
                    let toSend = payload
                    async let sent: Void = {
                        var rest = toSend
                        while rest.readableBytes > 0 {
                            try await stream.write(rest.readSlice(length: min(60_000, rest.readableBytes))!)
                        }
                        try await stream.closeWrite()
                    }()
                    let back = try await stream.readToEnd(maxBytes: bytes)
                    try await sent
                    #expect(back.readableBytes == bytes)
                    #expect(back == payload, "stream \(index) echoed different bytes")
                }
            }
            try await group.waitForAll()
        }
    }

    @Test func swiftDialsPyEchoFourStreamsOf1MiB() async throws {
        try await withPyListener(seed: 11) { _, address in
            try await withSwiftHost(seed: 21) { host in
                let connection = try await host.connect(to: address)
                #expect(connection.remotePeer == address.peerID)
                try await Self.echo(host, peer: connection.remotePeer, bytes: 1 << 20, streams: 4)
            }
        }
    }

    @Test func swiftDialsPyEcho16MiBOnOneStream() async throws {
        try await withPyListener(seed: 12) { _, address in
            try await withSwiftHost(seed: 22) { host in
                let connection = try await host.connect(to: address)
                try await Self.echo(host, peer: connection.remotePeer, bytes: 16 << 20, streams: 1)
            }
        }
    }

    @Test func swiftDialsPyPingAndIdentifyBothWays() async throws {
        try await withPyListener(seed: 13) { py, address in
            try await withSwiftHost(seed: 23) { host in
                let connection = try await host.connect(to: address)
                let rtts = try await PingService.ping(host: host, peer: connection.remotePeer, count: 3)
                #expect(rtts.count == 3)

                // py's identity reaches us…
                let info = try await IdentifyService.identify(connection, host: host)
                #expect(info.agentVersion == "py-libp2p-interop/0.8.1")
                #expect(info.protocols.contains("/echo/1.0.0"))
                #expect(info.protocols.contains("/ipfs/ping/1.0.0"))
                #expect(info.publicKey.map { connection.remotePeer.matches($0) } == true)
                #expect(host.peerstore.info(for: connection.remotePeer)?.agentVersion == "py-libp2p-interop/0.8.1")

                // …and ours reaches py.
                // Now that identify told us py speaks /echo/1.0.0, streams to it are negotiated lazily.
                try await Self.echo(host, peer: connection.remotePeer, bytes: 4096, streams: 2)

                let seen = try await py.identified(peer: host.peerID.b58String)
                #expect(seen["agent"] as? String == Self.agent)
                let protocols = seen["protocols"] as? [String] ?? []
                for p in ["/echo/1.0.0", "/perf/1.0.0", "/ipfs/ping/1.0.0", "/ipfs/id/1.0.0"] {
                    #expect(protocols.contains(p), "py did not learn \(p)")
                }
            }
        }
    }

    @Test func swiftDialsPyPerf() async throws {
        try await withPyListener(seed: 14) { _, address in
            try await withSwiftHost(seed: 24) { host in
                let peer = try await host.connect(to: address).remotePeer
                let result = try await PerfService.run(host: host, peer: peer, upload: 8 << 20, download: 8 << 20)
                #expect(result.uploadBytes == 8 << 20)
                #expect(result.downloadBytes == 8 << 20)
            }
        }
    }

    @Test func swiftRejectsPyWithWrongPeerID() async throws {
        try await withPyListener(seed: 15) { _, address in
            try await withSwiftHost(seed: 25) { host in
                let impostor = PeerID(publicKey: PrivateKey.ed25519(seed: 99).publicKey)
                let wrong = address.removingPeerID().appending(peerID: impostor)
                do {
                    _ = try await host.connect(to: wrong)
                    Issue.record("connected to py under the wrong peer ID")
                } catch let error as HostError {
                    let noise = error.causes.compactMap { ($0 as? HostError)?.causes.first as? NoiseError }.first
                    #expect(noise?.code == .peerIDMismatch, "\(error)")
                }
                // The right ID still works.
                _ = try await host.connect(to: address)
            }
        }
    }

    // MARK: py dials Swift

    @Test func pyDialsSwiftEchoFourStreamsOf1MiBAnd16MiBOnOne() async throws {
        try await withSwiftHost(seed: 31, listen: true) { host in
            let target = host.addresses[0].description
            let four = try await PyPeer.run(["dial", target, "--seed", "41", "--test", "echo", "--size", "\(1 << 20)", "--streams", "4"])
            #expect(four["ok"] as? Bool == true)
            #expect(four["streams"] as? Int == 4)
            let one = try await PyPeer.run(["dial", target, "--seed", "41", "--test", "echo", "--size", "\(16 << 20)", "--streams", "1"])
            #expect(one["ok"] as? Bool == true)
            #expect(one["bytes"] as? Int == 16 << 20)
        }
    }

    @Test func pyDialsSwiftPingIdentifyAndPerf() async throws {
        try await withSwiftHost(seed: 32, listen: true) { host in
            let target = host.addresses[0].description
            let ping = try await PyPeer.run(["dial", target, "--seed", "42", "--test", "ping", "--count", "3"])
            #expect((ping["rtts_ms"] as? [Double])?.count == 3)

            let identify = try await PyPeer.run(["dial", target, "--seed", "42", "--test", "identify"])
            #expect(identify["agent"] as? String == Self.agent)
            #expect(identify["peer"] as? String == host.peerID.b58String)
            #expect(identify["public_key_matches"] as? Bool == true)
            let protocols = identify["protocols"] as? [String] ?? []
            #expect(Set(host.supportedProtocols).isSubset(of: Set(protocols)))

            // We identified py on its inbound connection too.
            let pyPeer = PeerID(publicKey: PrivateKey.ed25519(seed: 42).publicKey)
            #expect(host.peerstore.info(for: pyPeer)?.agentVersion == "py-libp2p-interop/0.8.1")

            let perf = try await PyPeer.run([
                "dial", target, "--seed", "42", "--test", "perf", "--upload", "\(8 << 20)", "--download", "\(8 << 20)",
            ])
            #expect(perf["upload_bytes"] as? Int == 8 << 20)
            #expect(perf["download_bytes"] as? Int == 8 << 20)
        }
    }
}
