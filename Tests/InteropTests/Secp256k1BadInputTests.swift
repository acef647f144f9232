// Crypto: our Noise static key (a transitive dependency of PointSub; only Curve25519 is used).
import Crypto
import Foundation
import NIOCore
import NIOPosix
import PointSub
import Testing

/// A Noise handshake whose libp2p payload carries a malformed secp256k1 identity key or signature
/// (issue 11, "bad input"): the host refuses it with a typed error, closes that connection, and
/// keeps serving others — a peer connected before and a new one after. The handshake is driven by
/// hand over a raw TCP connection to 127.0.0.1, with our own Noise state machine as the initiator.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct Secp256k1BadInputTests {
    static let signaturePrefix = Array("noise-libp2p-static-key:".utf8)

    /// What the initiator puts in Noise message 3: a marshaled identity key and a signature.
    struct Payload: Sendable {
        var name: String
        /// Makes (identity key bytes, signature) from our Noise static public key.
        var make: @Sendable ([UInt8]) throws -> (key: [UInt8], signature: [UInt8])
        var expected: NoiseError.Code
    }

    static func marshaledSecp256k1(_ raw: [UInt8]) -> [UInt8] {
        var w = ProtobufWriter()
        w.writeVarintField(1, UInt64(KeyType.secp256k1.rawValue))
        w.writeBytesField(2, raw)
        return w.bytes
    }

    static let payloads: [Payload] = [
        Payload(name: "key not on the curve", make: { staticKey in
            let signer = try PrivateKey.secp256k1(seed: 3)
            return (marshaledSecp256k1([0x02] + [UInt8](repeating: 0, count: 32)), try signer.sign(signaturePrefix + staticKey))
        }, expected: .invalidPayload),
        Payload(name: "uncompressed key", make: { staticKey in
            let signer = try PrivateKey.secp256k1(seed: 3)
            return (marshaledSecp256k1([0x04] + [UInt8](repeating: 7, count: 64)), try signer.sign(signaturePrefix + staticKey))
        }, expected: .invalidPayload),
        Payload(name: "32-byte key", make: { staticKey in
            let signer = try PrivateKey.secp256k1(seed: 3)
            return (marshaledSecp256k1(Array(signer.publicKey.raw.dropFirst())), try signer.sign(signaturePrefix + staticKey))
        }, expected: .invalidPayload),
        Payload(name: "signature not DER", make: { _ in
            let signer = try PrivateKey.secp256k1(seed: 3)
            return (signer.publicKey.marshal(), [UInt8](repeating: 0x30, count: 70))
        }, expected: .invalidSignature),
        Payload(name: "signature over other bytes", make: { _ in
            let signer = try PrivateKey.secp256k1(seed: 3)
            return (signer.publicKey.marshal(), try signer.sign(signaturePrefix + [UInt8](repeating: 1, count: 32)))
        }, expected: .invalidSignature),
        Payload(name: "signature with a trailing byte", make: { staticKey in
            let signer = try PrivateKey.secp256k1(seed: 3)
            return (signer.publicKey.marshal(), try signer.sign(signaturePrefix + staticKey) + [0])
        }, expected: .invalidSignature),
    ]

    /// The Noise code inside an upgrade failure (the host may wrap it).
    static func noiseCode(_ error: (any Error)?) -> NoiseError.Code? {
        if let noise = error as? NoiseError { return noise.code }
        if let host = error as? HostError {
            for underlying in host.causes { if let code = noiseCode(underlying) { return code } }
        }
        return nil
    }

    static func echo(_ client: P2PHost, _ server: P2PHost, _ text: String) async throws -> String {
        let stream = try await client.newStream(to: server.peerID, protocols: [EchoService.protocolID])
        try await stream.write(ByteBuffer(string: text))
        try await stream.closeWrite()
        return String(buffer: try await stream.readToEnd(maxBytes: 1024))
    }

    @Test func malformedSecp256k1KeyOrSignatureClosesOnlyThatConnection() async throws {
        let listening = P2PHost.Configuration.defaults {
            $0.services = [EchoService()]
            $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")]
        }
        try await withHost(identity: try .secp256k1(seed: 21), configuration: listening) { server in
            try await withHost(identity: try .secp256k1(seed: 22)) { bystander in
                _ = try await bystander.connect(to: server.addresses[0])
                #expect(try await Self.echo(bystander, server, "before") == "before")
                for payload in Self.payloads {
                    let events = server.events()
                    try await Self.handshake(to: server.addresses[0], payload: payload)
                    var failure: (any Error)?
                    for await event in events {
                        if case .inboundUpgradeFailed(_, let error) = event {
                            failure = error
                            break
                        }
                    }
                    #expect(Self.noiseCode(failure) == payload.expected, "\(payload.name): \(String(describing: failure))")
                    #expect(try await Self.echo(bystander, server, payload.name) == payload.name)
                }
            }
            // A new secp256k1 peer is still served.
            try await withHost(identity: try .secp256k1(seed: 23)) { late in
                _ = try await late.connect(to: server.addresses[0])
                #expect(try await Self.echo(late, server, "after") == "after")
            }
        }
    }

    /// multistream-select to /noise, Noise XX as initiator with `payload` in message 3, then reads
    /// until the host closes the connection (bounded by the suite's time limit and a deadline).
    static func handshake(to address: Multiaddr, payload: Payload) async throws {
        let socket = try address.removingPeerID().socketAddress()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(to: socket) { channel in
            channel.eventLoop.makeCompletedFuture {
                try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
            }
        }
        try await channel.executeThenClose { inbound, outbound in
            var reader = inbound.makeAsyncIterator()
            var pending = ByteBuffer()
            func fill(_ count: Int) async throws -> Bool {
                while pending.readableBytes < count {
                    guard var chunk = try await reader.next() else { return false }
                    pending.writeBuffer(&chunk)
                }
                return true
            }
            func readFrame() async throws -> [UInt8]? {
                guard try await fill(2), let length = pending.getInteger(at: pending.readerIndex, as: UInt16.self),
                    try await fill(2 + Int(length))
                else { return nil }
                pending.moveReaderIndex(forwardBy: 2)
                return pending.readBytes(length: Int(length))
            }
            func writeFrame(_ message: [UInt8]) async throws {
                var b = ByteBuffer()
                b.writeInteger(UInt16(message.count))
                b.writeBytes(message)
                try await outbound.write(b)
            }
            var negotiation: [UInt8] = []
            MultistreamNegotiator.encode(MultistreamNegotiator.header, into: &negotiation)
            MultistreamNegotiator.encode("/noise", into: &negotiation)
            try await outbound.write(ByteBuffer(bytes: negotiation))
            guard try await fill(negotiation.count), pending.readBytes(length: negotiation.count) == negotiation else {
                Issue.record("\(payload.name): the host did not accept /noise")
                return
            }
            let staticKey = Curve25519.KeyAgreement.PrivateKey()
            var noise = NoiseHandshakeState(role: .initiator, staticKey: staticKey)
            try await writeFrame(try noise.writeMessage(payload: []))
            guard let message2 = try await readFrame() else {
                Issue.record("\(payload.name): the host closed before Noise message 2")
                return
            }
            _ = try noise.readMessage(message2)
            let (key, signature) = try payload.make(Array(staticKey.publicKey.rawRepresentation))
            var body = ProtobufWriter()
            body.writeBytesField(1, key)
            body.writeBytesField(2, signature)
            try await writeFrame(try noise.writeMessage(payload: body.bytes))
            // The host must close the connection (anything it sends before is ignored).
            let deadline = ContinuousClock.now + .seconds(20)
            while try await reader.next() != nil {
                guard ContinuousClock.now < deadline else {
                    Issue.record("\(payload.name): the host kept the connection open")
                    return
                }
            }
        }
    }
}
