import Crypto
import Foundation
import DNS
import Identity
import Kademlia
import Multiformats
import Multistream
import NIOCore
import PointSubCore
import Protocols
import PubSub
import Reachability
import Relay
import TLS
import Yamux

extension FuzzTargets {
    /// Small valid inputs for `target`, built from the real encoders, so that the fuzzer starts
    /// from real structure. `FuzzTesting/Seeds/<target>/` holds them as files (written by
    /// `pointsub-fuzz` with `FUZZ_WRITE_SEEDS=<dir>`); the test suite replays them.
    public static func seeds(for target: FuzzTarget) -> [[UInt8]] {
        switch target {
        case .varint:
            return [0, 1, 127, 128, 300, 1 << 32, Varint.maxValue].map { Varint.encode($0) }
        case .multibase:
            let data = Array("hello pointsub".utf8)
            return Multibase.Encoding.allCases.map { Array(Multibase.encode(data, as: $0).utf8) }
                + [Array("BNBSWY3DP".utf8), Array("maGVsbG8".utf8), Array("F68656C6C6F".utf8)]
        case .multihash:
            let peer = SeedKeys.ed25519.peerID
            let cid = CID(codec: Multicodec.libp2pKey, multihash: Multihash.sha256(Array("x".utf8)))
            return [
                [0] + Multihash.sha256(Array("pointsub".utf8)).bytes,
                [0] + Multihash.identity(Array("inline".utf8)).bytes,
                [1] + cid.bytes,
                [2] + Array(cid.string().utf8),
                [2] + Array(peer.cidString.utf8),
            ]
        case .multiaddr:
            let texts = [
                "/ip4/127.0.0.1/tcp/4001", "/ip6/::1/udp/4001/quic-v1",
                "/dns4/example.com/tcp/443/wss/p2p/\(SeedKeys.ed25519.peerID)",
                "/ip4/1.2.3.4/tcp/1/p2p/\(SeedKeys.ecdsa.peerID)/p2p-circuit",
                "/dnsaddr/bootstrap.libp2p.io", "/ip4/10.0.0.1/udp/443/quic-v1/webtransport",
                "/ip6/fe80::1/tcp/80/http", "/dns/localhost/tcp/443/tls/sni/example.com/ws",
            ]
            var seeds: [[UInt8]] = []
            for text in texts {
                guard let address = try? Multiaddr(text) else { continue }
                seeds.append([0] + address.bytes)
                seeds.append([1] + Array(text.utf8))
            }
            return seeds
        case .protobuf:
            return [SeedKeys.ed25519.publicKey.marshal(), SeedKeys.ed25519.marshal(), identifySeed(), rpcSeed()]
        case .keys:
            let keys = [SeedKeys.ed25519, SeedKeys.ecdsa]
            var seeds: [[UInt8]] = []
            for key in keys {
                let publicKey = key.publicKey.marshal()
                seeds.append([0] + publicKey)
                if let signature = try? key.sign(signedMessage), publicKey.count < 256 {
                    seeds.append([1, UInt8(publicKey.count)] + publicKey + signature)
                }
                seeds.append([2] + key.marshal())
                seeds.append([3] + key.peerID.bytes)
                seeds.append([4] + Array(key.peerID.b58String.utf8))
                seeds.append([4] + Array(key.peerID.cidString.utf8))
            }
            // Secp256k1: a real key when libsecp256k1 is installed, and an off-curve one.
            if let key = SeedKeys.secp256k1 {
                let publicKey = key.publicKey.marshal()
                seeds.append([0] + publicKey)
                if let signature = try? key.sign(signedMessage) {
                    seeds.append([1, UInt8(publicKey.count)] + publicKey + signature)
                }
                seeds.append([2] + key.marshal())
                seeds.append([3] + key.peerID.bytes)
            }
            var secp = ProtobufWriter()
            secp.writeVarintField(1, UInt64(KeyType.secp256k1.rawValue))
            secp.writeBytesField(2, [0x02] + [UInt8](repeating: 0x5a, count: 32))
            seeds.append([0] + secp.bytes)
            return seeds
        case .secp256k1:
            guard let key = SeedKeys.secp256k1 else { return [[0, 0x02] + [UInt8](repeating: 0x5a, count: 32)] }
            var seeds: [[UInt8]] = [[0] + key.publicKey.raw, [1] + key.raw]
            if let own = secp256k1Key, let signature = try? own.sign(signedMessage) {
                seeds.append([2] + signature)
            }
            if let signature = try? key.sign(signedMessage) {
                seeds.append([3, UInt8(key.publicKey.raw.count)] + key.publicKey.raw + [UInt8(signature.count)] + signature + signedMessage)
            }
            return seeds
        case .identify:
            return [identifySeed(), IdentifyMessage().encoded()]
        case .peerRecord:
            return peerRecordSeeds()
        case .multistream:
            var listener: [UInt8] = []
            MultistreamNegotiator.encode(MultistreamNegotiator.header, into: &listener)
            MultistreamNegotiator.encode("/mplex/6.7.0", into: &listener)
            MultistreamNegotiator.encode("/yamux/1.0.0", into: &listener)
            var dialer: [UInt8] = []
            MultistreamNegotiator.encode(MultistreamNegotiator.header, into: &dialer)
            MultistreamNegotiator.encode(MultistreamNegotiator.notAvailable, into: &dialer)
            MultistreamNegotiator.encode("/mplex/6.7.0", into: &dialer)
            return [[0] + listener, [1] + listener, [0x80] + dialer, [0x82] + dialer + [1, 2, 3]]
        case .noise:
            #if DEBUG || FUZZING
                let fixture = NoiseFixture.shared
                return [
                    [0] + ((try? Curve25519.KeyAgreement.PrivateKey(rawRepresentation: [UInt8](repeating: 9, count: 32)))
                        .map { Array($0.publicKey.rawRepresentation) } ?? []),
                    [2] + NoiseFixture.payload(NoiseFixture.initiatorIdentity, staticKey: fixture.initiatorStatic),
                    [3] + NoiseFixture.payload(NoiseFixture.responderIdentity, staticKey: fixture.responderStatic),
                ]
            #else
                return []
            #endif
        case .yamuxFrames:
            var buffer = ByteBuffer()
            for frame in [
                YamuxFrame.windowUpdate(streamID: 1, flags: .syn, delta: 0),
                .data(streamID: 1, flags: [], payload: ByteBuffer(string: "hello")),
                .ping(opaque: 7, ack: false), .windowUpdate(streamID: 1, flags: .rst, delta: 0), .goAway(.normal),
            ] {
                frame.encode(into: &buffer)
            }
            let bytes = Array(buffer.readableBytesView)
            return [[0] + bytes, [1] + bytes, [0x82] + bytes]
        case .yamuxSession:
            // Responder: the peer opens stream 1 with data, we accept, read, answer, close;
            // we open stream 2, the peer ACKs it and sends a window update; go away.
            let program: [UInt8] = [
                1,
                2, 0, 0x01, 1, 5, 104, 101, 108, 108, 111,  // data SYN on 1, "hello"
                6, 0, 0,  // accept
                6, 0, 1, 42,  // write 1 byte
                6, 0, 5,  // pull data frames
                6, 0, 2,  // close write
                5, 3, 1, 2, 3,  // open with 3 bytes
                2, 1, 0x02, 2, 0, 0, 1, 0,  // window update ACK on 2
                2, 0, 0x04, 1, 0,  // FIN on 1
                2, 2, 0x01, 0, 0, 0, 0, 9,  // ping
                7, 0,  // go away
            ]
            return [program, [0] + Array(program.dropFirst())]
        case .pubsubRPC:
            let message = PubSubRPC.Message(
                from: SeedKeys.ed25519.peerID.bytes, data: Array("payload".utf8), seqno: [0, 0, 0, 1], topic: "t",
                signature: [UInt8](repeating: 1, count: 64), key: nil)
            return [[0] + rpcSeed(), [1] + message.encoded(), [0] + PubSubRPC().encoded(), [0] + idontwantSeed()]
        case .pubsubFrames:
            var buffer = ByteBuffer()
            for rpc in [
                rpcSeed(), PubSubRPC(subscriptions: [.init(subscribe: false, topic: "x")]).encoded(), idontwantSeed(),
            ] {
                buffer.writeVarint(UInt64(rpc.count))
                buffer.writeBytes(rpc)
            }
            let bytes = Array(buffer.readableBytesView)
            return [[0] + bytes, [1] + bytes, [3] + bytes]
        case .pointsubParser:
            var buffer = ByteBuffer()
            PointSubMessage(kind: .request, payload: ByteBuffer(string: "ping")).encode(into: &buffer)
            PointSubMessage.make(kind: .response, payload: ByteBuffer(string: String(repeating: "pointsub ", count: 300)), compress: true)
                .encode(into: &buffer)
            PointSubMessage.error(.busy, "try later").encode(into: &buffer)
            let bytes = Array(buffer.readableBytesView)
            return [[0, 2] + bytes, [1, 2] + bytes, [2, 1] + bytes, [3, 2] + bytes]
        case .pointsubDecompress:
            let text = Array(String(repeating: "compressible text ", count: 100).utf8)
            let size = UInt32(text.count)
            let declared: [UInt8] = [UInt8(size >> 24), UInt8(size >> 16 & 0xff), UInt8(size >> 8 & 0xff), UInt8(size & 0xff)]
            let zlib = PointSubCompression.compress(ByteBuffer(bytes: text)).map { Array($0.readableBytesView) } ?? []
            return [[1] + declared + zlib, [2] + declared + zlib, [0x81] + declared + text, [0xc1] + declared + text]
        case .kadMessage:
            let peer = PeerID(publicKey: SeedKeys.ed25519.publicKey).bytes
            let address = Multiaddr("/ip4/127.0.0.1/tcp/4001")
            return [
                KadMessage(type: .findNode, key: peer).encoded(),
                KadMessage(
                    type: .getValue, key: Array("/pk/key".utf8),
                    record: .init(key: Array("/pk/key".utf8), value: [1, 2, 3], timeReceived: "2026-12-07T00:00:00Z"),
                    closerPeers: [.init(id: peer, addresses: [address], connection: .connected)]
                ).encoded(),
                KadMessage(type: .getProviders, key: [0x12, 0x20] + [UInt8](repeating: 7, count: 32),
                    providerPeers: [.init(id: peer, addresses: [address])]).encoded(),
            ]
        case .dcutrMessage:
            let addresses = [Multiaddr("/ip4/198.51.100.2/tcp/4001"), Multiaddr("/ip6/2001:db8::1/tcp/4001")]
            return [
                HolePunchMessage(type: .connect, addresses: addresses).encoded(),
                HolePunchMessage(type: .sync).encoded(),
            ]
        case .autonatMessage:
            let peer = PeerID(publicKey: SeedKeys.ed25519.publicKey)
            let address = Multiaddr("/ip4/1.2.3.4/tcp/4001")
            return [
                AutoNATMessage(type: .dial, dial: .init(peerID: peer.bytes, addresses: [address])).encoded(),
                AutoNATMessage(type: .dialResponse, dialResponse: .init(status: .ok, address: address)).encoded(),
                AutoNATMessage(type: .dialResponse, dialResponse: .init(status: .dialError, statusText: "dial failed")).encoded(),
            ]
        case .autonatV2Message:
            let address = Multiaddr("/ip4/1.2.3.4/tcp/4001")
            return [
                [0] + AutoNATv2Message.dialRequest(.init(addresses: [address, Multiaddr("/ip6/2001:db8::1/tcp/4001")], nonce: 42)).encoded(),
                [0] + AutoNATv2Message.dialResponse(.init(status: .ok, addressIndex: 1, dialStatus: .dialError)).encoded(),
                [0] + AutoNATv2Message.dialDataRequest(.init(addressIndex: 0, byteCount: 30_000)).encoded(),
                [0] + AutoNATv2Message.dialDataResponse(.init(count: 64)).encoded(),
                [1] + AutoNATv2DialBack.encode(nonce: 42),
                [2] + AutoNATv2DialBack.encodeResponse(),
            ]
        case .relayMessage:
            let key = SeedKeys.ed25519
            let peer = PeerID(publicKey: key.publicKey)
            let voucher = (try? ReservationVoucher(relay: peer, peer: peer, expiration: 1_800_000_000).sealed(with: key)) ?? []
            let reservation = RelayReservationInfo(
                expire: 1_800_000_000, addresses: [Multiaddr("/ip4/127.0.0.1/tcp/4001")], voucher: voucher)
            return [
                [0] + HopMessage(type: .connect, peer: RelayPeer(id: peer.bytes)).encoded(),
                [0] + HopMessage(type: .status, reservation: reservation, limit: RelayLimit(duration: 120, data: 1 << 17), status: .ok).encoded(),
                [1] + StopMessage(type: .connect, peer: RelayPeer(id: peer.bytes), limit: RelayLimit(duration: 60)).encoded(),
                [2] + voucher,
            ]
        case .dagCBOR:
            return [
                DAGCBOR.map([
                    ("Value", .bytes(Array("/ipfs/bafkqaaa".utf8))), ("TTL", .int(60_000_000_000)), ("Sequence", .int(-2)),
                    ("list", .array([.bool(true), .bool(false), .null, .float(1.5), .text("é")])),
                    ("link", .link([0x01, 0x55, 0x00, 0x00])), ("nested", .map([("a", .map([]))])),
                ]).encoded(),
                [0x1B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], [0x3B, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
            ]
        case .ipnsRecord:
            // Valid until 2126, so they verify at the target's fixed clock.
            let eol = Date(timeIntervalSince1970: 4_922_000_000)
            var seeds: [[UInt8]] = []
            for (key, v1) in [(SeedKeys.ed25519, true), (SeedKeys.ed25519, false), (SeedKeys.ecdsa, true)] {
                guard let record = try? IPNSRecord.make(
                    value: "/ipfs/bafkqaaa", sequence: 3, validity: eol, ttl: .seconds(300), key: key, v1Compatible: v1)
                else { continue }
                seeds.append(record.encoded())
            }
            return seeds
        case .dnsMessage:
            let txt = (try? DNSMessage.txtData(["dnsaddr=/ip4/127.0.0.1/tcp/4001"])) ?? []
            let answer = DNSMessage(
                id: 7, flags: 0x8180, questions: [.init(name: "_dnsaddr.a.test", type: 16)],
                answers: [.init(name: "_dnsaddr.a.test", type: 16, ttl: 60, data: txt)])
            var compressed: [UInt8] = [0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0x78, 2, 0x69, 0x6F, 0, 0, 16, 0, 1]
            compressed += [0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0, 4, 3, 0x61, 0x62, 0x63]
            return [(try? answer.encoded()) ?? [], compressed]
        case .tlsCertificate:
            // Real certificates (their P-256 key and ECDSA signatures are random, so regenerated
            // seed files differ; each is valid for 100 years).
            var seeds: [[UInt8]] = []
            for key in [SeedKeys.ed25519, SeedKeys.ecdsa] {
                guard let certificate = try? LibP2PCertificate.generate(identity: key) else { continue }
                let der = certificate.der
                let length = UInt16(der.count)
                let signedKey = LibP2PCertificate.signedKey(in: der) ?? []
                seeds += [[0] + der, [1, UInt8(length >> 8), UInt8(length & 0xff)] + der + der, [2] + signedKey]
            }
            return seeds
        case .webSocketFrames, .webSocketUpgrade:
            #if DEBUG || FUZZING
                return webSocketSeeds(for: target)
            #else
                return []
            #endif
        }
    }

    private static func identifySeed() -> [UInt8] {
        var message = IdentifyMessage()
        message.publicKey = SeedKeys.ed25519.publicKey
        // String literals: Multiaddr's literal initializer (valid constants).
        message.listenAddresses = ["/ip4/127.0.0.1/tcp/4001", "/ip6/::1/tcp/4001"]
        message.observedAddress = "/ip4/1.2.3.4/tcp/5555"
        message.protocols = ["/ipfs/id/1.0.0", "/meshsub/1.1.0"]
        message.protocolVersion = "ipfs/0.1.0"
        message.agentVersion = "pointsub/fuzz"
        return message.encoded()
    }

    private static func rpcSeed() -> [UInt8] {
        PubSubRPC(
            subscriptions: [.init(subscribe: true, topic: "news")],
            messages: [.init(from: SeedKeys.ed25519.peerID.bytes, data: Array("hi".utf8), seqno: [1], topic: "news")],
            control: .init(
                ihave: [.init(topic: "news", messageIDs: [[1, 2, 3]])], iwant: [.init(messageIDs: [[4, 5]])],
                graft: [.init(topic: "news")],
                prune: [.init(topic: "old", peers: [.init(peerID: SeedKeys.ed25519.peerID.bytes)], backoff: 60)],
                idontwant: [.init(messageIDs: [SeedKeys.ed25519.peerID.bytes + [0, 0, 0, 7], [9]])])
        ).encoded()
    }

    /// Gossipsub v1.2: an RPC carrying only IDONTWANTs (one of them empty), as a mesh peer sends them.
    private static func idontwantSeed() -> [UInt8] {
        PubSubRPC(control: .init(idontwant: [
            .init(messageIDs: [SeedKeys.ed25519.peerID.bytes + [0, 0, 0, 1], [0xff, 0, 0xff]]), .init(messageIDs: []),
        ])).encoded()
    }
}

/// Fixed keys for the seeds (deterministic, so regenerated seeds are the same files).
enum SeedKeys {
    static let ed25519 = PrivateKey.ed25519(seed: 7)
    /// Nil without libsecp256k1 (then the seeds leave real secp256k1 keys out).
    static let secp256k1: PrivateKey? = try? PrivateKey.secp256k1(seed: 7)
    static let ecdsa: PrivateKey = {
        guard let key = try? P256.Signing.PrivateKey(rawRepresentation: [UInt8](repeating: 0x42, count: 32)),
            let parsed = try? PrivateKey(type: .ecdsa, raw: Array(key.derRepresentation)) else {
            return PrivateKey.ed25519(seed: 8)
        }
        return parsed
    }()
}
