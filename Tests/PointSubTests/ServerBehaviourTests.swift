import NIOCore
import TestSupport
import Testing

import PointSub
@testable import PointSubCore

/// Replies with the request's size as text.
let sizeHandler: PointSubServer.Handler = { ByteBuffer(string: "\($0.payload.readableBytes)") }

@Suite(.timeLimit(.minutes(3)))
struct LimitTests {
    @Test func maxBlockSizeExactlyWorksAndOneMoreIsRefused() async throws {
        let max = 64 * 1024
        let server = PointSubServer.Configuration.defaults {
            $0.maxBlockSize = max
            $0.compression = false
        }
        let client = PointSubClient.Configuration.defaults {
            $0.maxBlockSize = max
            $0.compression = false
        }
        try await withServerAndClient(server: server, client: client) { server, client, serverHost in
            let peer = serverHost.peerID
            try server.start("/size/1.0.0", handler: sizeHandler)
            try server.start("/echo/1.0.0") { $0.payload }
            try server.start("/big-reply/1.0.0") { _ in ByteBuffer(repeating: 1, count: max + 1) }
            try server.start("/exact-reply/1.0.0") { _ in ByteBuffer(repeating: 1, count: max) }

            let exact = randomBytes(max)
            #expect(try await client.send(exact, to: peer, protocol: "/echo/1.0.0") == exact)
            // One byte more: our own client refuses before sending anything.
            await #expect { try await client.send(randomBytes(max + 1), to: peer, protocol: "/size/1.0.0") } throws: {
                pointSubError($0)?.code == .messageTooLarge
            }
            // A client with a larger limit gets the server's typed refusal.
            let generous = try PointSubClient(
                host: client.host, configuration: .defaults { $0.maxBlockSize = 1 << 20; $0.compression = false })
            await #expect { try await generous.send(randomBytes(max + 1), to: peer, protocol: "/size/1.0.0") } throws: {
                guard let e = pointSubError($0) else { return false }
                return e.code == .remote(.tooLarge) && !e.isRetryable
            }
            #expect(server.statistics.tooLargeRefusals == 1)
            // Replies: exactly the limit works; one byte more the server refuses to send.
            #expect(try await client.send(ByteBuffer(string: "x"), to: peer, protocol: "/exact-reply/1.0.0").readableBytes == max)
            await #expect { try await client.send("x", to: peer, protocol: "/big-reply/1.0.0") } throws: {
                pointSubError($0)?.code == .remote(.handler)
            }
            // The server keeps serving, on old and new streams.
            #expect(try await client.send("still", to: peer, protocol: "/size/1.0.0") == "5")
            #expect(try await generous.send("here", to: peer, protocol: "/size/1.0.0") == "4")
            await generous.close()
        }
    }

    @Test func replyOverTheClientsLimitIsRefusedByTheClient() async throws {
        let client = PointSubClient.Configuration.defaults { $0.maxBlockSize = 64 * 1024 }
        try await withServerAndClient(client: client) { server, client, serverHost in
            try server.start("/big-reply/1.0.0") { _ in randomBytes(64 * 1024 + 1) }
            try server.start("/size/1.0.0", handler: sizeHandler)
            await #expect { try await client.send("x", to: serverHost.peerID, protocol: "/big-reply/1.0.0") } throws: {
                pointSubError($0)?.code == .messageTooLarge
            }
            #expect(client.pooledStreamCount(peer: serverHost.peerID, protocol: "/big-reply/1.0.0") == 0)
            #expect(try await client.send("ok", to: serverHost.peerID, protocol: "/size/1.0.0") == "2")
        }
    }

    @Test func realDefaultMaxBlockSizeOf32MiB() async throws {
        try await withServerAndClient { server, client, serverHost in
            let max = 32 * 1024 * 1024
            #expect(server.configuration.maxBlockSize == max && client.configuration.maxBlockSize == max)
            try server.start("/size/1.0.0", handler: sizeHandler)
            // Random bytes: the compression probe skips them, so the wire carries exactly 32 MiB.
            let exact = randomBytes(max)
            #expect(try await client.send(exact, to: serverHost.peerID, protocol: "/size/1.0.0") == ByteBuffer(string: "\(max)"))
            #expect(client.statistics.compressedRequests == 0)
            await #expect { try await client.send(randomBytes(max + 1), to: serverHost.peerID, protocol: "/size/1.0.0") } throws: {
                pointSubError($0)?.code == .messageTooLarge
            }
            #expect(try await client.send("ok", to: serverHost.peerID, protocol: "/size/1.0.0") == "2")
        }
    }

    @Test func malformedRequestOnARawStreamGetsATypedAnswer() async throws {
        try await withServerAndClient { server, client, serverHost in
            try server.start("/size/1.0.0", handler: sizeHandler)
            let host = client.host
            // Reserved flag bit set.
            let stream = try await host.newStream(to: serverHost.peerID, protocols: ["/size/1.0.0"])
            try await stream.write(buffer("01 02 01 41"))
            var parser = PointSubMessageParser(maxBlockSize: 1 << 20, accepting: [.response, .error])
            let reply = try #require(try await readMessage(from: stream, into: &parser))
            let error = try RemoteErrorPayload(decoding: reply.payload)
            #expect(error.code == .malformed)
            #expect(try await readMessage(from: stream, into: &parser) == nil)  // the server closed its side
            stream.reset()
            // A response sent to the server is malformed too.
            let other = try await host.newStream(to: serverHost.peerID, protocols: ["/size/1.0.0"])
            let answer = try await rawExchange(other, PointSubMessage(kind: .response, payload: ByteBuffer(string: "x")))
            #expect(try RemoteErrorPayload(decoding: #require(answer).payload).code == .malformed)
            other.reset()
            #expect(server.statistics.malformedRefusals == 2)
            #expect(try await client.send("fine", to: serverHost.peerID, protocol: "/size/1.0.0") == "4")
        }
    }

    @Test func busyRefusalThenRetrySucceeds() async throws {
        let serverConfig = PointSubServer.Configuration.defaults { $0.connectionLimit = .fixed(1) }
        // No pooling for the first client: its stream (and server slot) goes away after its call.
        let firstConfig = PointSubClient.Configuration.defaults { $0.maxIdleStreams = 0 }
        try await withServerAndClient(server: serverConfig, client: firstConfig) { server, first, serverHost in
            let peer = serverHost.peerID
            let entered = Gate()
            let release = Gate()
            try server.start("/work/1.0.0") { request in
                if String(buffer: request.payload) == "slow" {
                    entered.open()
                    await release.wait()
                }
                return request.payload
            }
            let slow = Task { try await first.send("slow", to: peer, protocol: "/work/1.0.0") }
            await entered.wait()

            // Without retries the refusal is a typed, retryable busy error.
            let impatient = try PointSubClient(host: first.host, configuration: .defaults { $0.maxRetries = 0 })
            await #expect { try await impatient.send("x", to: peer, protocol: "/work/1.0.0") } throws: {
                guard let e = pointSubError($0) else { return false }
                return e.code == .remote(.busy) && e.isRetryable
            }
            // With retries it succeeds once the slot is free.
            let patient = try PointSubClient(
                host: first.host,
                configuration: .defaults {
                    $0.maxRetries = 20
                    $0.retryInterval = .milliseconds(100)
                })
            let fast = Task { try await patient.send("fast", to: peer, protocol: "/work/1.0.0") }
            #expect(await eventually { server.statistics.busyRefusals >= 2 })
            release.open()
            #expect(try await slow.value == "slow")
            #expect(try await fast.value == "fast")
            #expect(patient.statistics.retries >= 1)
            #expect(server.connectionLimit == 1)
            await impatient.close()
            await patient.close()
        }
    }

    @Test func maxRequestsPerConnection() async throws {
        let config = PointSubServer.Configuration.defaults { $0.maxRequestsPerConnection = 3 }
        try await withServerAndClient(server: config) { server, client, serverHost in
            try server.start("/size/1.0.0", handler: sizeHandler)
            for i in 0..<7 {
                #expect(try await client.send(String(repeating: "x", count: i), to: serverHost.peerID, protocol: "/size/1.0.0") == "\(i)")
            }
            #expect(server.statistics.streamsRetired == 2)
            #expect(client.statistics.streamsOpened == 3)
            // The retired streams were found dead on reuse and replaced without a counted retry.
            #expect(client.statistics.staleStreamRetries == 2)
            #expect(client.statistics.retries == 0)
        }
    }
}

@Suite(.timeLimit(.minutes(2)))
struct StreamLifecycleTests {
    @Test func consecutiveRequestsReuseOneStream() async throws {
        try await withServerAndClient { server, client, serverHost in
            try server.start("/reverse/1.0.0", handler: reverseHandler)
            let peer = serverHost.peerID
            #expect(try await client.send("one", to: peer, protocol: "/reverse/1.0.0") == "eno")
            let ids = client.pooledStreamIDs(peer: peer, protocol: "/reverse/1.0.0")
            #expect(ids.count == 1)
            for _ in 0..<4 { _ = try await client.send("again", to: peer, protocol: "/reverse/1.0.0") }
            #expect(client.pooledStreamIDs(peer: peer, protocol: "/reverse/1.0.0") == ids)
            #expect(client.statistics.streamsOpened == 1)
            #expect(client.statistics.streamsReused == 4)
            #expect(client.connectionsInfo().map(\.requestCount) == [5])
            #expect(server.connectionsInfo().map(\.requestCount) == [5])
        }
    }

    @Test func brokenPooledStreamIsDropped() async throws {
        try await withServerAndClient { server, client, serverHost in
            try server.start("/reverse/1.0.0", handler: reverseHandler)
            let peer = serverHost.peerID
            #expect(try await client.send("ab", to: peer, protocol: "/reverse/1.0.0") == "ba")
            let before = client.pooledStreamIDs(peer: peer, protocol: "/reverse/1.0.0")
            // Break the pooled stream: the server resets it behind the client's back.
            let serverStreams = server.connectionsInfo()
            #expect(serverStreams.count == 1)
            let connection = try #require(client.host.connections(to: peer).first)
            // Only our pooled stream is left once identify's streams are done.
            #expect(await eventually { connection.streamCount == 1 })
            server.debugResetStreams()
            #expect(await eventually { server.connectionsInfo().isEmpty })
            // Once the client's side has seen the reset (the stream is gone from its session),
            // the pooled stream fails on reuse before the request is written, and the request
            // goes out again on a fresh stream. (A reset that crosses the request on the wire
            // is reported as connectionFailed(requestSent: true): the server might have
            // processed it.)
            #expect(await eventually { connection.streamCount == 0 })
            #expect(try await client.send("cd", to: peer, protocol: "/reverse/1.0.0") == "dc")
            let after = client.pooledStreamIDs(peer: peer, protocol: "/reverse/1.0.0")
            #expect(after.count == 1 && after != before)
            #expect(client.statistics.streamsDropped == 1)
            #expect(client.statistics.retries == 0)

            // Losing the whole connection: pooled streams on it are skipped.
            for connection in serverHost.allConnections { await connection.close(graceful: false) }
            #expect(await eventually { client.host.connections(to: peer).isEmpty })
            _ = try await client.host.connect(to: serverHost.addresses[0])
            #expect(try await client.send("ef", to: peer, protocol: "/reverse/1.0.0") == "fe")
            #expect(!client.pooledStreamIDs(peer: peer, protocol: "/reverse/1.0.0").contains(after[0]))
        }
    }

    @Test func idleStreamsAreCleanedUp() async throws {
        // Long enough that a fresh stream's first request always arrives before it counts as idle,
        // even on a loaded 2-core machine (at 200 ms a retry stream was sometimes closed first).
        let serverConfig = PointSubServer.Configuration.defaults {
            $0.idleTimeout = .seconds(1)
            $0.cleanupInterval = .milliseconds(100)
        }
        let clientConfig = PointSubClient.Configuration.defaults {
            $0.idleTimeout = .milliseconds(1500)
            $0.cleanupInterval = .milliseconds(100)
        }
        try await withServerAndClient(server: serverConfig) { server, client, serverHost in
            try server.start("/reverse/1.0.0", handler: reverseHandler)
            let peer = serverHost.peerID
            #expect(try await client.send("ab", to: peer, protocol: "/reverse/1.0.0") == "ba")
            #expect(server.connectionsInfo().count == 1)
            #expect(await eventually { server.connectionsInfo().isEmpty })
            #expect(server.statistics.idleStreamsClosed == 1)
            // The client's pooled stream is now closed by the server; the next call still works.
            #expect(try await client.send("cd", to: peer, protocol: "/reverse/1.0.0") == "dc")
            #expect(client.statistics.staleStreamRetries == 1)
        }
        try await withServerAndClient(client: clientConfig) { server, client, serverHost in
            try server.start("/reverse/1.0.0", handler: reverseHandler)
            let peer = serverHost.peerID
            #expect(try await client.send("ab", to: peer, protocol: "/reverse/1.0.0") == "ba")
            #expect(client.pooledStreamCount(peer: peer, protocol: "/reverse/1.0.0") == 1)
            #expect(await eventually { client.pooledStreamCount(peer: peer, protocol: "/reverse/1.0.0") == 0 })
            #expect(client.connectionsInfo().isEmpty)
            #expect(await eventually { server.connectionsInfo().isEmpty })
        }
    }

    @Test func stopLetsAnInFlightRequestFinish() async throws {
        try await withServerAndClient { server, client, serverHost in
            let entered = Gate()
            try server.start("/slow/1.0.0") { request in
                entered.open()
                try await Task.sleep(for: .milliseconds(300))
                return request.payload
            }
            try server.start("/idle/1.0.0", handler: reverseHandler)
            let peer = serverHost.peerID
            #expect(try await client.send("ab", to: peer, protocol: "/idle/1.0.0") == "ba")  // leaves an idle stream
            let call = Task { try await client.send("done", to: peer, protocol: "/slow/1.0.0") }
            await entered.wait()
            await server.stop(gracePeriod: .seconds(5))
            #expect(try await call.value == "done")
            #expect(server.connectionsInfo().isEmpty)
            #expect(!serverHost.supportedProtocols.contains("/slow/1.0.0"))
            await #expect { try await client.send("x", to: peer, protocol: "/slow/1.0.0") } throws: {
                pointSubError($0)?.code == .protocolNotSupported
            }
            await #expect { try await client.send("x", to: peer, protocol: "/idle/1.0.0") } throws: {
                pointSubError($0)?.code == .protocolNotSupported
            }
        }
    }

    @Test func stopResetsWhatOutlastsTheGracePeriod() async throws {
        try await withServerAndClient { server, client, serverHost in
            let entered = Gate()
            try server.start("/stuck/1.0.0") { request in
                entered.open()
                try await Task.sleep(for: .seconds(30))
                return request.payload
            }
            let call = Task { try await client.send("x", to: serverHost.peerID, protocol: "/stuck/1.0.0") }
            await entered.wait()
            let start = ContinuousClock.now
            await server.stop(gracePeriod: .milliseconds(200))
            #expect(ContinuousClock.now - start < .seconds(3))
            await #expect { try await call.value } throws: {
                pointSubError($0)?.code == .connectionFailed(requestSent: true)
            }
        }
    }

    @Test func connectionsInfoContents() async throws {
        try await withServerAndClient { server, client, serverHost in
            try server.start("/reverse/1.0.0", handler: reverseHandler)
            let peer = serverHost.peerID
            let before = ContinuousClock.now
            _ = try await client.send("a", to: peer, protocol: "/reverse/1.0.0")
            _ = try await client.send("b", to: peer, protocol: "/reverse/1.0.0")
            let serverSide = try #require(server.connectionsInfo().first)
            #expect(server.connectionsInfo().count == 1)
            #expect(serverSide.remotePeer == client.host.peerID)
            #expect(serverSide.protocolID == "/reverse/1.0.0")
            #expect(serverSide.requestCount == 2)
            #expect(serverSide.created >= before && serverSide.lastActive >= serverSide.created)
            #expect(serverSide.idleTime >= .zero && serverSide.idleTime < .seconds(10))
            // The reply can reach the client a moment before the server marks the stream as waiting.
            #expect(await eventually { server.connectionsInfo().first?.isIdle == true })
            let clientSide = try #require(client.connectionsInfo().first)
            #expect(client.connectionsInfo().count == 1)
            #expect(clientSide.remotePeer == peer)
            #expect(clientSide.protocolID == "/reverse/1.0.0")
            #expect(clientSide.requestCount == 2)
            #expect(clientSide.isIdle)
            #expect(client.pooledStreamIDs(peer: peer, protocol: "/reverse/1.0.0") == [clientSide.id])
        }
    }
}

@Suite(.timeLimit(.minutes(2)))
struct CompressionOnTheWireTests {
    static let compressible = ByteBuffer(string: String(repeating: "a fairly repetitive sentence; ", count: 200))

    @Test func compressionIsAppliedAndSkipped() async throws {
        try await withServerAndClient { server, client, serverHost in
            try server.start("/echo/1.0.0") { $0.payload }
            let peer = serverHost.peerID
            // Through the client: both directions compressed, payload intact.
            #expect(try await client.send(Self.compressible, to: peer, protocol: "/echo/1.0.0") == Self.compressible)
            #expect(client.statistics.compressedRequests == 1)
            #expect(client.statistics.compressedResponses == 1)
            #expect(server.statistics.compressedRequests == 1)
            #expect(server.statistics.compressedResponses == 1)
            // Small and incompressible payloads go as is.
            _ = try await client.send(ByteBuffer(string: "tiny"), to: peer, protocol: "/echo/1.0.0")
            let noise = randomBytes(16 * 1024)
            #expect(try await client.send(noise, to: peer, protocol: "/echo/1.0.0") == noise)
            #expect(client.statistics.compressedRequests == 1)
            #expect(server.statistics.compressedResponses == 1)

            // On a raw stream: the flag byte of the server's replies.
            let stream = try await client.host.newStream(to: peer, protocols: ["/echo/1.0.0"])
            let compressed = try #require(try await rawExchange(stream, PointSubMessage(kind: .request, payload: Self.compressible)))
            #expect(compressed.isCompressed)
            #expect(compressed.payload.readableBytes * 10 <= Self.compressible.readableBytes * 9)
            #expect(try compressed.decodedPayload(maxBlockSize: 1 << 20) == Self.compressible)
            let small = try #require(try await rawExchange(stream, PointSubMessage(kind: .request, payload: ByteBuffer(string: "tiny"))))
            #expect(!small.isCompressed)
            let random = try #require(try await rawExchange(stream, PointSubMessage(kind: .request, payload: noise)))
            #expect(!random.isCompressed)
            // A compressed request from us is accepted as well.
            let request = PointSubMessage.make(kind: .request, payload: Self.compressible, compress: true)
            #expect(request.isCompressed)
            let reply = try #require(try await rawExchange(stream, request))
            #expect(try reply.decodedPayload(maxBlockSize: 1 << 20) == Self.compressible)
            try await stream.closeWrite()
        }
    }

    @Test func compressionCanBeTurnedOff() async throws {
        let server = PointSubServer.Configuration.defaults { $0.compression = false }
        let client = PointSubClient.Configuration.defaults { $0.compression = false }
        try await withServerAndClient(server: server, client: client) { server, client, serverHost in
            try server.start("/echo/1.0.0") { $0.payload }
            #expect(try await client.send(Self.compressible, to: serverHost.peerID, protocol: "/echo/1.0.0") == Self.compressible)
            #expect(client.statistics.compressedRequests == 0 && client.statistics.compressedResponses == 0)
        }
    }
}

@Suite(.timeLimit(.minutes(3)))
struct LoadTests {
    @Test func tenThousandRequestsFromFiftyWorkers() async throws {
        try await withServerAndClient { server, client, serverHost in
            try server.start("/work/1.0.0") { request in
                try await Task.sleep(for: .milliseconds(Int.random(in: 10...50)))
                return request.payload
            }
            let peer = serverHost.peerID
            let workers = 50
            let perWorker = 10_000 / workers
            let start = ContinuousClock.now
            let succeeded = try await withThrowingTaskGroup(of: Int.self) { group in
                for worker in 0..<workers {
                    group.addTask {
                        var ok = 0
                        for i in 0..<perWorker {
                            let text = "w\(worker)-\(i)"
                            if try await client.send(text, to: peer, protocol: "/work/1.0.0") == text { ok += 1 }
                        }
                        return ok
                    }
                }
                return try await group.reduce(0, +)
            }
            let elapsed = ContinuousClock.now - start
            #expect(succeeded == 10_000)
            #expect(server.statistics.requestsHandled == 10_000)
            #expect(client.statistics.retries == 0)
            #expect(client.statistics.streamsOpened <= workers)
            print("load test: 10,000 requests from \(workers) workers in \(elapsed)")
        }
    }
}
