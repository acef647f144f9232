import NIOCore
import Testing

import PointSub
@testable import PointSubCore

/// A large request's payload is reserved in the stream's resource scope as soon as its header
/// announces it, before it is buffered; what the resource manager refuses is answered `busy`.
@Suite(.timeLimit(.minutes(1)))
struct MessageReservationTests {
    @Test func largeRequestsAreReservedBeforeTheyAreBuffered() async throws {
        var serverConfig = listening()
        serverConfig.resources.perStream.memory = 1 << 20 + 512 << 10  // the window (256 KiB) + ~1.25 MiB
        try await withHost(configuration: serverConfig) { serverHost in
            let server = try PointSubServer(host: serverHost, configuration: .defaults { $0.compression = false })
            try server.start("/echo-size/1.0.0") { request in
                ByteBuffer(string: "\(request.payload.readableBytes)")
            }
            try await withHost { clientHost in
                let client = try PointSubClient(host: clientHost, configuration: .defaults {
                    $0.compression = false
                    $0.maxRetries = 0
                })
                _ = try await clientHost.connect(to: serverHost.addresses[0])
                let fits = ByteBuffer(repeating: 1, count: 1 << 20)
                let reply = try await client.send(fits, to: serverHost.peerID, protocol: "/echo-size/1.0.0")
                #expect(String(buffer: reply) == "\(1 << 20)")
                let tooBig = ByteBuffer(repeating: 2, count: 2 << 20)
                do {
                    _ = try await client.send(tooBig, to: serverHost.peerID, protocol: "/echo-size/1.0.0")
                    Issue.record("a request over the stream's memory limit was served")
                } catch {
                    #expect((error as? PointSubError)?.code == .remote(.busy), "\(error)")
                }
                // Nothing stays reserved once the exchanges are over.
                let deadline = ContinuousClock.now + .seconds(5)
                while serverHost.resourceManager.usage(ofService: "pointsub").memory > 0, ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(20))
                }
                #expect(serverHost.resourceManager.usage(ofService: "pointsub").memory == 0)
                #expect(serverHost.resourceManager.usage(ofProtocol: "/echo-size/1.0.0").memory <= 1 << 20)
            }
        }
    }
}
