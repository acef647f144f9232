import NIOCore
import TestSupport
import Testing

import PointSub
@testable import PointSubCore

private struct HandlerFailure: Error, CustomStringConvertible {
    var description: String
}

@Suite(.timeLimit(.minutes(2)))
struct RequestResponseTests {
    @Test func reverseEcho() async throws {
        try await withServerAndClient { server, client, serverHost in
            try server.start("/reverse/1.0.0", handler: reverseHandler)
            let peer = serverHost.peerID
            #expect(try await client.send("hello", to: peer, protocol: "/reverse/1.0.0") == "olleh")
            #expect(try await client.send("", to: peer, protocol: "/reverse/1.0.0") == "")
            #expect(try await client.send("ünïcødé ✓ 日本", to: peer, protocol: "/reverse/1.0.0") == "本日 ✓ édøcïnü")
            let results = try await withThrowingTaskGroup(of: (Int, String).self) { group in
                for i in 0..<10 {
                    group.addTask { (i, try await client.send("request \(i)", to: peer, protocol: "/reverse/1.0.0")) }
                }
                return try await group.reduce(into: [Int: String]()) { $0[$1.0] = $1.1 }
            }
            for i in 0..<10 { #expect(results[i] == String("request \(i)".reversed())) }
            // The [UInt8] forms.
            try server.start("/bytes/1.0.0") { (bytes: [UInt8]) in bytes.map { $0 &+ 1 } }
            #expect(try await client.send([1, 2, 255], to: peer, protocol: "/bytes/1.0.0") == [2, 3, 0])
        }
    }

    @Test func threeClientsOnOneServerWithDifferentHandlers() async throws {
        try await withHost(configuration: listening()) { serverHost in
            let server = try PointSubServer(host: serverHost)
            try server.start("/upper/1.0.0") { ByteBuffer(string: String(buffer: $0.payload).uppercased()) }
            try server.start("/lower/1.0.0") { ByteBuffer(string: String(buffer: $0.payload).lowercased()) }
            try server.start("/who/1.0.0") { ByteBuffer(string: $0.peer.b58String) }
            let address = serverHost.addresses[0]
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<3 {
                    group.addTask {
                        try await withHost { host in
                            let client = try PointSubClient(host: host)
                            _ = try await host.connect(to: address)
                            let peer = serverHost.peerID
                            for round in 0..<5 {
                                let text = "Client \(index) Round \(round)"
                                switch index {
                                case 0: #expect(try await client.send(text, to: peer, protocol: "/upper/1.0.0") == text.uppercased())
                                case 1: #expect(try await client.send(text, to: peer, protocol: "/lower/1.0.0") == text.lowercased())
                                default: #expect(try await client.send(text, to: peer, protocol: "/who/1.0.0") == host.peerID.b58String)
                                }
                            }
                            await client.close()
                        }
                    }
                }
                try await group.waitForAll()
            }
            #expect(server.statistics.requestsHandled == 15)
            await server.stop()
        }
    }

    @Test func fiveNodesInAFullMesh() async throws {
        let count = 5
        let hosts = (0..<count).map { _ in P2PHost(identity: .generateEd25519(), configuration: listening()) }
        for host in hosts { try await host.start() }
        do {
            var servers: [PointSubServer] = []
            var clients: [PointSubClient] = []
            for (index, host) in hosts.enumerated() {
                let server = try PointSubServer(host: host)
                try server.start("/node/\(index)") { request in ByteBuffer(string: "node \(index) got \(String(buffer: request.payload))") }
                servers.append(server)
                clients.append(try PointSubClient(host: host))
            }
            for a in 0..<count {
                for b in 0..<count where a != b { hosts[a].peerstore.addAddresses(hosts[b].addresses, for: hosts[b].peerID, ttl: .permanent) }
            }
            let peers = hosts.map(\.peerID)
            let clientsCopy = clients
            let replies = try await withThrowingTaskGroup(of: Int.self) { group in
                for a in 0..<count {
                    for b in 0..<count where a != b {
                        group.addTask {
                            let reply = try await clientsCopy[a].send("hi from \(a)", to: peers[b], protocol: "/node/\(b)")
                            #expect(reply == "node \(b) got hi from \(a)")
                            return 1
                        }
                    }
                }
                return try await group.reduce(0, +)
            }
            #expect(replies == count * (count - 1))
            for server in servers { #expect(server.statistics.requestsHandled == count - 1) }
            for client in clients { await client.close() }
            for server in servers { await server.stop(gracePeriod: .milliseconds(100)) }
        } catch {
            for host in hosts { await host.shutdown() }
            throw error
        }
        for host in hosts { await host.shutdown() }
    }

    @Test func unsupportedProtocolFailsClearly() async throws {
        try await withServerAndClient { server, client, serverHost in
            try server.start("/reverse/1.0.0", handler: reverseHandler)
            await #expect { try await client.send("x", to: serverHost.peerID, protocol: "/nope/1.0.0") } throws: {
                pointSubError($0)?.code == .protocolNotSupported
            }
            #expect(client.statistics.retries == 0)
            #expect(try await client.send("ok", to: serverHost.peerID, protocol: "/reverse/1.0.0") == "ko")
        }
    }

    @Test func handlerSlowerThanTheCallTimeout() async throws {
        try await withServerAndClient { server, client, serverHost in
            try server.start("/slow/1.0.0") { request in
                if String(buffer: request.payload) == "slow" { try await Task.sleep(for: .seconds(10)) }
                return request.payload
            }
            // A pooled stream first, so the request surely goes out before the deadline.
            #expect(try await client.send("fast", to: serverHost.peerID, protocol: "/slow/1.0.0") == "fast")
            let start = ContinuousClock.now
            await #expect {
                try await client.send("slow", to: serverHost.peerID, protocol: "/slow/1.0.0", deadline: .after(.seconds(1)))
            } throws: { error in
                guard let e = pointSubError(error) else { return false }
                return e.code == .timeout(requestSent: true) && !e.isRetryable
            }
            #expect(ContinuousClock.now - start < .seconds(8))
            #expect(client.pooledStreamCount(peer: serverHost.peerID, protocol: "/slow/1.0.0") == 0)
            #expect(client.statistics.retries == 0)
        }
    }

    @Test func serverHandlerTimeLimit() async throws {
        let config = PointSubServer.Configuration.defaults { $0.handlerTimeout = .milliseconds(200) }
        try await withServerAndClient(server: config) { server, client, serverHost in
            try server.start("/slow/1.0.0") { request in
                if String(buffer: request.payload) == "slow" { try await Task.sleep(for: .seconds(5)) }
                return request.payload
            }
            await #expect { try await client.send("slow", to: serverHost.peerID, protocol: "/slow/1.0.0") } throws: {
                pointSubError($0)?.code == .remote(.timeout)
            }
            #expect(server.statistics.handlerTimeouts == 1)
            // The stream stays usable.
            #expect(try await client.send("fast", to: serverHost.peerID, protocol: "/slow/1.0.0") == "fast")
            #expect(client.statistics.streamsOpened == 1)
        }
    }

    @Test func handlerErrorIsATypedRemoteErrorWithItsMessage() async throws {
        try await withServerAndClient { server, client, serverHost in
            try server.start("/kv/1.0.0") { request in
                throw HandlerFailure(description: "no such key: \(String(buffer: request.payload))")
            }
            do {
                _ = try await client.send("k1", to: serverHost.peerID, protocol: "/kv/1.0.0")
                Issue.record("a handler error must not come back as a reply")
            } catch {
                let e = try #require(pointSubError(error))
                #expect(e.code == .remote(.handler))
                #expect(e.message == "no such key: k1")
                #expect(!e.isRetryable)
            }
            #expect(client.statistics.retries == 0)
            #expect(server.statistics.handlerErrors == 1)
            // The stream stays in the pool and is reused.
            #expect(client.pooledStreamCount(peer: serverHost.peerID, protocol: "/kv/1.0.0") == 1)
        }
    }

    /// Spec "Errors": a receiver does not enforce the 64 KiB limit on the text (only the maximum
    /// block size) and decodes invalid UTF-8 with replacement characters; both are still the
    /// server's typed error, not a protocol violation, and the stream stays usable.
    @Test func errorTextIsNotLimitedTo64KiBAndInvalidUTF8IsReplaced() async throws {
        try await withServerAndClient { _, client, serverHost in
            let long = String(repeating: "e", count: 70_000)
            let replies: [[UInt8]] = [
                [0x01] + Array("bad ".utf8) + [0xff, 0xc3],  // an invalid byte, then a cut-off sequence
                [0x05] + Array(long.utf8),
            ]
            // A server that answers every request with the next raw error payload.
            try serverHost.setStreamHandler("/raw-errors/1.0.0") { stream in
                var parser = PointSubMessageParser(maxBlockSize: 1 << 20, accepting: [.request])
                for reply in replies {
                    guard (try? await readMessage(from: stream, into: &parser)) != nil else { return stream.reset() }
                    try? await stream.write(PointSubMessage(kind: .error, payload: ByteBuffer(bytes: reply)).encoded())
                }
                _ = try? await readMessage(from: stream, into: &parser)
                await stream.close()
            }
            let peer = serverHost.peerID
            for (index, want) in [(RemoteErrorCode.handler, "bad \u{FFFD}\u{FFFD}"), (.timeout, long)].enumerated() {
                do {
                    _ = try await client.send("x", to: peer, protocol: "/raw-errors/1.0.0")
                    Issue.record("an error message must not come back as a reply")
                } catch {
                    let e = try #require(pointSubError(error))
                    #expect(e.code == .remote(want.0), "reply \(index): \(e.code), \(e.message.prefix(80))")
                    let same = e.message == want.1  // (not in #expect: 70,000 characters)
                    #expect(same, "reply \(index): \(e.message.utf8.count) bytes: \(e.message.prefix(80))")
                }
            }
            #expect(client.statistics.streamsOpened == 1)
            #expect(client.statistics.streamsDropped == 0)
        }
    }

    @Test func invalidConfigurationsAreRefused() async throws {
        try await withHost { host in
            let badServers: [PointSubServer.Configuration] = [
                .defaults { $0.readTimeout = .zero },
                .defaults { $0.writeTimeout = .seconds(-1) },
                .defaults { $0.handlerTimeout = .zero },
                .defaults { $0.idleTimeout = .zero },
                .defaults { $0.cleanupInterval = .seconds(-5) },
                .defaults { $0.maxBlockSize = 0 },
                .defaults { $0.maxBlockSize = -1 },
                .defaults { $0.maxRequestsPerConnection = 0 },
                .defaults { $0.bufferPoolSize = -1 },
                .defaults { $0.connectionLimit.minimum = 2000 },  // min > max initial
                .defaults { $0.connectionLimit.minimum = 0 },
                .defaults { $0.connectionLimit.maximum = 50 },  // max < min
                .defaults { $0.connectionLimit.adjustInterval = .zero },
            ]
            for config in badServers {
                #expect { try PointSubServer(host: host, configuration: config) } throws: {
                    pointSubError($0)?.code == .invalidConfiguration
                }
            }
            let badClients: [PointSubClient.Configuration] = [
                .defaults { $0.requestTimeout = .zero },
                .defaults { $0.connectTimeout = .seconds(-1) },
                .defaults { $0.idleTimeout = .zero },
                .defaults { $0.maxRetries = -1 },
                .defaults { $0.retryInterval = .seconds(-1) },
                .defaults { $0.retryJitter = 2 },
                .defaults { $0.maxIdleStreams = -1 },
                .defaults { $0.maxBlockSize = 0 },
            ]
            for config in badClients {
                #expect { try PointSubClient(host: host, configuration: config) } throws: {
                    pointSubError($0)?.code == .invalidConfiguration
                }
            }
            _ = try PointSubServer(host: host)
            let client = try PointSubClient(host: host)
            // A deadline that has passed: a timeout at once, nothing sent.
            await #expect { try await client.send("x", to: host.peerID, protocol: "/a", deadline: .now) } throws: {
                pointSubError($0)?.code == .timeout(requestSent: false)
            }
            await client.close()
        }
    }

    @Test func secondStartForTheSameProtocolIsAnError() async throws {
        try await withHost { host in
            let server = try PointSubServer(host: host)
            try server.start("/a/1.0.0", handler: reverseHandler)
            #expect { try server.start("/a/1.0.0", handler: reverseHandler) } throws: {
                pointSubError($0)?.code == .alreadyServing
            }
            try host.setStreamHandler("/taken/1.0.0") { _ in }
            #expect { try server.start("/taken/1.0.0", handler: reverseHandler) } throws: {
                pointSubError($0)?.code == .alreadyServing
            }
            await server.stop()
            #expect(!host.supportedProtocols.contains("/a/1.0.0"))
            #expect { try server.start("/b/1.0.0", handler: reverseHandler) } throws: {
                pointSubError($0)?.code == .serverStopped
            }
        }
    }

    @Test func cancellingASend() async throws {
        try await withServerAndClient { server, client, serverHost in
            let entered = Gate()
            try server.start("/hang/1.0.0") { request in
                entered.open()
                try await Task.sleep(for: .seconds(30))
                return request.payload
            }
            let peer = serverHost.peerID
            let task = Task { try await client.send("x", to: peer, protocol: "/hang/1.0.0") }
            await entered.wait()
            let start = ContinuousClock.now
            task.cancel()
            await #expect { try await task.value } throws: { pointSubError($0)?.code == .cancelled }
            #expect(ContinuousClock.now - start < .seconds(5))
            #expect(client.pooledStreamCount(peer: peer, protocol: "/hang/1.0.0") == 0)
            // The server sees the reset stream go away.
            #expect(await eventually { server.connectionsInfo().isEmpty })
        }
    }

    @Test func closedClientRefusesToSend() async throws {
        try await withServerAndClient { server, client, serverHost in
            try server.start("/reverse/1.0.0", handler: reverseHandler)
            #expect(try await client.send("ab", to: serverHost.peerID, protocol: "/reverse/1.0.0") == "ba")
            #expect(client.pooledStreamCount(peer: serverHost.peerID, protocol: "/reverse/1.0.0") == 1)
            await client.close()
            #expect(client.pooledStreamCount(peer: serverHost.peerID, protocol: "/reverse/1.0.0") == 0)
            await #expect { try await client.send("ab", to: serverHost.peerID, protocol: "/reverse/1.0.0") } throws: {
                pointSubError($0)?.code == .clientClosed
            }
            // The server sees the pooled stream closed.
            #expect(await eventually { server.connectionsInfo().isEmpty })
        }
    }
}
