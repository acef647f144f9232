import Crypto
import Multistream
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Noise
import PointSub
import Testing

/// A raw TCP connection to poke a host with arbitrary bytes.
struct RawConnection {
    let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>

    static func open(_ address: Multiaddr, group: any EventLoopGroup) async throws -> RawConnection {
        let socket = try address.removingPeerID().socketAddress()
        let channel = try await ClientBootstrap(group: group).connect(to: socket) { channel in
            channel.eventLoop.makeCompletedFuture {
                try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
            }
        }
        return RawConnection(channel: channel)
    }

    /// Writes `bytes`, then reads until the host closes the connection; returns what it sent.
    func send(_ bytes: [UInt8], thenReadUntilClosed: Bool = true) async throws -> [UInt8] {
        try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(bytes: bytes))
            var received: [UInt8] = []
            for try await chunk in inbound { received += Array(buffer: chunk) }
            return received
        }
    }
}

/// Waits for the first `.inboundUpgradeFailed` event and returns its error.
func firstUpgradeFailure(_ events: AsyncStream<HostEvent>) async -> (any Error)? {
    for await event in events {
        if case .inboundUpgradeFailed(_, let error) = event { return error }
    }
    return nil
}

private func frame(_ messages: String...) -> [UInt8] {
    var out: [UInt8] = []
    for m in messages { MultistreamNegotiator.encode(m, into: &out) }
    return out
}

@Suite(.timeLimit(.minutes(2)))
struct BadInputTests {
    let group = MultiThreadedEventLoopGroup.singleton

    func withServer(_ body: (P2PHost) async throws -> Void) async throws {
        try await withHost(configuration: listeningConfig(), body)
    }

    func stillServes(_ server: P2PHost) async throws {
        try await withHost { client in
            _ = try await client.connect(to: server.addresses[0])
            #expect(try await echo(client, to: server.peerID, "alive") == "alive")
        }
    }

    @Test func malformedMultistreamLineClosesOnlyThatConnection() async throws {
        try await withServer { server in
            // A healthy client connected before the bad one must keep working afterwards.
            try await withHost { bystander in
                _ = try await bystander.connect(to: server.addresses[0])
                let events = server.events()
                let raw = try await RawConnection.open(server.addresses[0], group: group)
                // Header, then a "protocol" without its newline.
                let reply = try await raw.send(frame(MultistreamNegotiator.header) + [4] + Array("/noi".utf8))
                #expect(reply.count < 64, "the host answered a malformed negotiation with \(reply.count) bytes")
                let error = await firstUpgradeFailure(events)
                #expect((error as? MultistreamError)?.code == .malformedMessage, "\(String(describing: error))")
                #expect(try await echo(bystander, to: server.peerID, "still here") == "still here")
            }
            try await stillServes(server)
        }
    }

    @Test func overlongVarintClosesTheConnection() async throws {
        try await withServer { server in
            let events = server.events()
            let raw = try await RawConnection.open(server.addresses[0], group: group)
            _ = try await raw.send([UInt8](repeating: 0xFF, count: 12))
            let error = await firstUpgradeFailure(events)
            #expect((error as? MultistreamError)?.code == .messageTooLong, "\(String(describing: error))")
            try await stillServes(server)
        }
    }

    @Test func noiseHandshakeWithBadSignatureIsRejected() async throws {
        try await withServer { server in
            let events = server.events()
            let raw = try await RawConnection.open(server.addresses[0], group: group)
            try await raw.channel.executeThenClose { inbound, outbound in
                var reader = inbound.makeAsyncIterator()
                var pending = ByteBuffer()
                func readFrame() async throws -> [UInt8]? {
                    while true {
                        if let length = pending.getInteger(at: pending.readerIndex, as: UInt16.self),
                            pending.readableBytes >= 2 + Int(length)
                        {
                            pending.moveReaderIndex(forwardBy: 2)
                            return pending.readBytes(length: Int(length))
                        }
                        guard var chunk = try await reader.next() else { return nil }
                        pending.writeBuffer(&chunk)
                    }
                }
                func writeFrame(_ message: [UInt8]) async throws {
                    var b = ByteBuffer()
                    b.writeInteger(UInt16(message.count))
                    b.writeBytes(message)
                    try await outbound.write(b)
                }
                // multistream: header + /noise, and read both answers.
                try await outbound.write(ByteBuffer(bytes: frame(MultistreamNegotiator.header, "/noise")))
                let expected = frame(MultistreamNegotiator.header, "/noise")
                while pending.readableBytes < expected.count {
                    guard var chunk = try await reader.next() else { break }
                    pending.writeBuffer(&chunk)
                }
                #expect(pending.readBytes(length: expected.count) == expected)

                let staticKey = Curve25519.KeyAgreement.PrivateKey()
                var noise = NoiseHandshakeState(role: .initiator, staticKey: staticKey)
                try await writeFrame(try noise.writeMessage(payload: []))
                guard let m2 = try await readFrame() else {
                    Issue.record("host closed before message 2")
                    return
                }
                _ = try noise.readMessage(m2)
                // A valid identity key, but a signature over the wrong bytes.
                let identity = PrivateKey.generateEd25519()
                var payload = ProtobufWriter()
                payload.writeBytesField(1, identity.publicKey.marshal())
                payload.writeBytesField(2, try identity.sign(Array("noise-libp2p-static-key:".utf8) + [UInt8](repeating: 1, count: 32)))
                try await writeFrame(try noise.writeMessage(payload: payload.bytes))
                // The host must close the connection.
                while try await reader.next() != nil {}
            }
            let error = await firstUpgradeFailure(events)
            #expect((error as? NoiseError)?.code == .invalidSignature, "\(String(describing: error))")
            try await stillServes(server)
        }
    }

    @Test func remoteWithAnotherPeerIDThanDialedIsRejected() async throws {
        try await withServer { server in
            try await withHost { client in
                let impostor = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
                let wrong = server.addresses[0].removingPeerID().appending(peerID: impostor)
                do {
                    _ = try await client.connect(to: wrong)
                    Issue.record("connected although the remote is not the peer dialed")
                } catch let error as HostError {
                    #expect(error.code == .dialFailed)
                    let upgrade = error.causes.first as? HostError
                    #expect(upgrade?.code == .upgradeFailed)
                    #expect((upgrade?.causes.first as? NoiseError)?.code == .peerIDMismatch, "\(error)")
                }
                #expect(client.connections(to: impostor).isEmpty)
            }
            try await stillServes(server)
        }
    }
}
