import Identity
import LibP2P
import NIOCore

/// Ping (`/ipfs/ping/1.0.0`): the dialer sends 32 random bytes, the listener echoes them, repeated on
/// one stream for as long as the dialer likes.
public struct PingService: HostService {
    public static let protocolID = "/ipfs/ping/1.0.0"
    public static let payloadSize = 32

    public init() {}

    public func attach(to host: P2PHost) async throws {
        try host.setStreamHandler(Self.protocolID) { stream in
            // Echo what arrives as it arrives: memory stays bounded by the stream window.
            while let chunk = try await stream.read() {
                try await stream.write(chunk)
            }
        }
    }

    /// A ping stream to one peer.
    public final class Pinger: Sendable {
        let stream: P2PStream

        init(stream: P2PStream) {
            self.stream = stream
        }

        /// One round trip; throws if the echo differs from what was sent.
        public func ping() async throws -> Duration {
            let payload = (0..<PingService.payloadSize).map { _ in UInt8.random(in: 0...255) }
            let clock = ContinuousClock()
            let start = clock.now
            try await stream.write(payload)
            let echo = try await stream.readExactly(PingService.payloadSize)
            let rtt = clock.now - start
            guard Array(buffer: echo) == payload else {
                throw HostError(.protocolViolation, "ping echo does not match what was sent")
            }
            return rtt
        }

        public func close() async {
            await stream.close()
        }
    }

    public static func pinger(host: P2PHost, peer: PeerID) async throws -> Pinger {
        Pinger(stream: try await host.newStream(to: peer, protocols: [protocolID]))
    }

    /// `count` round trips on one stream.
    public static func ping(host: P2PHost, peer: PeerID, count: Int = 1) async throws -> [Duration] {
        let pinger = try await pinger(host: host, peer: peer)
        var rtts: [Duration] = []
        for _ in 0..<count { rtts.append(try await pinger.ping()) }
        await pinger.close()
        return rtts
    }
}
