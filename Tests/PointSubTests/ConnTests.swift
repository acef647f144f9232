import NIOConcurrencyHelpers
import NIOCore
import PointSub
import Testing

// Everything here is fileprivate: other test files of this target are written in parallel.

private let testProtocol = "/pointsub/conn-test/1.0.0"

private func hostConfig(listening: Bool) -> P2PHost.Configuration {
    .defaults {
        if listening { $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")] }
        $0.shutdownGracePeriod = .milliseconds(500)
    }
}

/// A listening server host and a client host connected to it.
private func withHosts<T: Sendable>(_ body: (_ server: P2PHost, _ client: P2PHost) async throws -> T) async throws -> T {
    try await withHost(configuration: hostConfig(listening: true)) { server in
        try await withHost(configuration: hostConfig(listening: false)) { client in
            _ = try await client.connect(to: server.addresses[0])
            return try await body(server, client)
        }
    }
}

/// Reads until EOF.
private func readAll(_ connection: PointSubConnection) async throws -> [UInt8] {
    var out: [UInt8] = []
    while let chunk = try await connection.read() { out += chunk.readableBytesView }
    return out
}

/// Reads exactly `count` bytes (fewer only at EOF).
private func readCount(_ connection: PointSubConnection, _ count: Int) async throws -> [UInt8] {
    var out: [UInt8] = []
    while out.count < count, let chunk = try await connection.read(upTo: count - out.count) {
        out += chunk.readableBytesView
    }
    return out
}

/// Polls `condition` every 10 ms for up to 5 s.

private func netError(_ error: any Error, _ code: PointSubNetError.Code) -> Bool {
    (error as? PointSubNetError)?.code == code
}

/// Echoes every accepted connection until EOF, then closes it; ends when the listener closes.
private func serveEcho(_ listener: PointSubListener) async {
    await withTaskGroup(of: Void.self) { group in
        for await connection in listener {
            group.addTask {
                while let chunk = try? await connection.read() {
                    guard (try? await connection.write(chunk)) != nil else { break }
                }
                await connection.close()
            }
        }
    }
}

@Suite(.timeLimit(.minutes(2)))
struct ConnTests {
    @Test func dialAndListenEcho() async throws {
        try await withHosts { server, client in
            let listener = try PointSubNet.listen(host: server, protocol: testProtocol)
            let serving = Task { await serveEcho(listener) }
            let connection = try await PointSubNet.dial(host: client, peer: server.peerID, protocol: testProtocol)
            try await connection.write(ByteBuffer(string: "hello, "))
            try await connection.write(Array("pointsub".utf8))
            try await connection.closeWrite()
            #expect(String(decoding: try await readAll(connection), as: UTF8.self) == "hello, pointsub")
            #expect(connection.protocolID == testProtocol)
            await connection.close()
            listener.close()
            await serving.value
        }
    }

    @Test func addresses() async throws {
        try await withHosts { server, client in
            let listener = try PointSubNet.listen(host: server, protocol: testProtocol)
            #expect(listener.localAddress.peer == server.peerID)
            #expect(listener.localAddress.network == "pointsub")
            #expect(PointSubNet.network == "pointsub")
            let dialed = try await PointSubNet.dial(host: client, address: server.addresses[0], protocol: testProtocol)
            let accepted = try await listener.accept()
            #expect(dialed.localAddress == PointSubAddress(peer: client.peerID))
            #expect(dialed.remoteAddress == PointSubAddress(peer: server.peerID))
            #expect(accepted.localAddress.peer == server.peerID)
            #expect(accepted.remoteAddress.peer == client.peerID)
            #expect(dialed.remoteAddress.network == "pointsub")
            #expect(dialed.remoteAddress.description == server.peerID.description)
            #expect(accepted.remoteAddress.description == client.peerID.b58String)
            #expect(accepted.connection.remotePeer == client.peerID)
            await dialed.close()
            await accepted.close()
            listener.close()
        }
    }

    @Test func eofAndHalfClose() async throws {
        try await withHosts { server, client in
            let listener = try PointSubNet.listen(host: server, protocol: testProtocol)
            let dialed = try await PointSubNet.dial(host: client, peer: server.peerID, protocol: testProtocol)
            try await dialed.write(Array("request".utf8))
            try await dialed.closeWrite()
            try await dialed.closeWrite()  // a second half-close does nothing
            await #expect { try await dialed.write([1]) } throws: { netError($0, .closed) }

            let accepted = try await listener.accept()
            #expect(try await readAll(accepted) == Array("request".utf8))
            #expect(try await accepted.read() == nil, "EOF stays EOF")
            // The client half-closed; the server may still answer.
            try await accepted.write(Array("0123456789".utf8))
            await accepted.close()

            // read(upTo:) splits chunks and keeps the rest.
            #expect(try await dialed.read(upTo: 4).map { String(buffer: $0) } == "0123")
            #expect(try await dialed.read(upTo: 4).map { String(buffer: $0) } == "4567")
            #expect(try await dialed.read(upTo: 4).map { String(buffer: $0) } == "89")
            #expect(try await dialed.read() == nil)
            await dialed.close()
            await dialed.close()  // idempotent
            await #expect { try await dialed.read() } throws: { netError($0, .closed) }
            await #expect { try await dialed.write([1]) } throws: { netError($0, .closed) }
            #expect(dialed.isClosed)
            listener.close()
        }
    }

    @Test func readDeadlineExpiresWithSilentPeerAndConnectionStaysUsable() async throws {
        try await withHosts { server, client in
            let listener = try PointSubNet.listen(host: server, protocol: testProtocol)
            let dialed = try await PointSubNet.dial(host: client, peer: server.peerID, protocol: testProtocol)
            let accepted = try await listener.accept()

            let start = ContinuousClock.now
            dialed.setReadDeadline(Deadline(start + .milliseconds(200)))
            await #expect { try await dialed.read() } throws: { netError($0, .timeout) }
            let waited = ContinuousClock.now - start
            #expect(waited >= .milliseconds(190) && waited < .seconds(5), "waited \(waited)")
            // Still past: fails at once, and so does a read with a deadline in the past.
            await #expect { try await dialed.read() } throws: { ($0 as? PointSubNetError)?.isTimeout == true }
            dialed.setReadDeadline(Deadline(.now - .seconds(1)))
            await #expect { try await dialed.read() } throws: { netError($0, .timeout) }

            // A new deadline: the connection works again.
            dialed.setReadDeadline(.after(.seconds(10)))
            try await accepted.write(Array("late".utf8))
            #expect(try await dialed.read().map { String(buffer: $0) } == "late")
            dialed.setReadDeadline(nil)
            try await accepted.write(Array("later".utf8))
            #expect(try await dialed.read().map { String(buffer: $0) } == "later")

            // The accepted end has deadlines too (setDeadline sets both).
            accepted.setDeadline(.after(.milliseconds(50)))
            await #expect { try await accepted.read() } throws: { netError($0, .timeout) }
            await dialed.close()
            await accepted.close()
            listener.close()
        }
    }

    @Test func deadlineSetWhileReadIsPendingWakesItAndNoDataIsLost() async throws {
        try await withHosts { server, client in
            let listener = try PointSubNet.listen(host: server, protocol: testProtocol)
            let dialed = try await PointSubNet.dial(host: client, peer: server.peerID, protocol: testProtocol)
            let accepted = try await listener.accept()

            let start = ContinuousClock.now
            let pending = Task { try await dialed.read() }
            try await Task.sleep(for: .milliseconds(100))
            dialed.setReadDeadline(.after(.milliseconds(100)))
            await #expect { try await pending.value } throws: { netError($0, .timeout) }
            #expect(ContinuousClock.now - start >= .milliseconds(190))

            // Moving a deadline later while a read waits keeps it waiting.
            dialed.setReadDeadline(.after(.milliseconds(400)))
            let second = Task { try await dialed.read() }
            try await Task.sleep(for: .milliseconds(30))
            dialed.setReadDeadline(.after(.seconds(30)))
            try await Task.sleep(for: .milliseconds(500))  // past the first deadline
            try await accepted.write(Array("data".utf8))
            #expect(try await second.value.map { String(buffer: $0) } == "data")

            // Data sent after a timeout is read by the next read.
            dialed.setReadDeadline(.after(.milliseconds(20)))
            await #expect { try await dialed.read() } throws: { netError($0, .timeout) }
            try await accepted.write(Array("kept".utf8))
            try await accepted.closeWrite()
            dialed.setReadDeadline(nil)
            #expect(String(decoding: try await readAll(dialed), as: UTF8.self) == "kept")
            await dialed.close()
            await accepted.close()
            listener.close()
        }
    }

    @Test func clearingADeadlineKeepsAWaitingReadAndAPassedOneWakesIt() async throws {
        try await withHosts { server, client in
            let listener = try PointSubNet.listen(host: server, protocol: testProtocol)
            let dialed = try await PointSubNet.dial(host: client, peer: server.peerID, protocol: testProtocol)
            let accepted = try await listener.accept()

            // Cleared while the read waits: the read waits on past the old deadline.
            dialed.setReadDeadline(.after(.milliseconds(100)))
            let pending = Task { try await dialed.read() }
            try await Task.sleep(for: .milliseconds(20))
            dialed.setReadDeadline(nil)
            try await Task.sleep(for: .milliseconds(300))
            try await accepted.write(Array("still".utf8))
            #expect(try await pending.value.map { String(buffer: $0) } == "still")

            // Moved into the past while the read waits: it times out.
            dialed.setReadDeadline(.after(.seconds(30)))
            let second = Task { try await dialed.read() }
            try await Task.sleep(for: .milliseconds(20))
            dialed.setReadDeadline(Deadline(.now - .seconds(1)))
            await #expect { try await second.value } throws: { netError($0, .timeout) }
            await dialed.close()
            await accepted.close()
            listener.close()
        }
    }

    @Test func writeDeadlineAgainstAPeerThatDoesNotRead() async throws {
        try await withHosts { server, client in
            let listener = try PointSubNet.listen(host: server, protocol: testProtocol)
            let dialed = try await PointSubNet.dial(host: client, peer: server.peerID, protocol: testProtocol)
            let accepted = try await listener.accept()

            // More than the 256 KiB initial Yamux window: the write blocks while nobody reads.
            let big = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            let start = ContinuousClock.now
            dialed.setWriteDeadline(Deadline(start + .milliseconds(200)))
            await #expect { try await dialed.write(big) } throws: { netError($0, .timeout) }
            #expect(ContinuousClock.now - start >= .milliseconds(190))
            await #expect { try await dialed.write([0]) } throws: { netError($0, .timeout) }

            // A new deadline: usable again. The timed-out write still goes out, before later ones.
            dialed.setWriteDeadline(.after(.seconds(30)))
            let reader = Task { try await readAll(accepted) }
            try await dialed.write(Array("end".utf8))
            try await dialed.closeWrite()
            let received = try await reader.value
            #expect(received.count == big.count + 3)
            #expect(received == big + Array("end".utf8))
            await dialed.close()
            await accepted.close()
            listener.close()
        }
    }

    @Test func closeDuringABlockedWriteResetsAndDoesNotHang() async throws {
        try await withHosts { server, client in
            let listener = try PointSubNet.listen(host: server, protocol: testProtocol)
            let dialed = try await PointSubNet.dial(host: client, peer: server.peerID, protocol: testProtocol)
            let accepted = try await listener.accept()
            let big = [UInt8](repeating: 7, count: 1 << 20)
            let writer = Task { try await dialed.write(big) }
            try await Task.sleep(for: .milliseconds(100))
            let reading = Task { try await dialed.read() }
            try await Task.sleep(for: .milliseconds(50))
            await dialed.close()
            await #expect { try await writer.value } throws: { netError($0, .closed) }
            await #expect { try await reading.value } throws: { netError($0, .closed) }
            // The blocked write could not finish, so the stream was reset.
            await #expect { _ = try await readAll(accepted) } throws: { netError($0, .reset) }
            await accepted.close()
            listener.close()
        }
    }

    @Test func listenerBacklogOverflowResetsNewStreams() async throws {
        try await withHosts { server, client in
            let listener = try PointSubNet.listen(host: server, protocol: testProtocol, backlog: 2)
            #expect(listener.backlog == 2)
            var queued: [PointSubConnection] = []
            for i in 0..<2 {
                let connection = try await PointSubNet.dial(host: client, peer: server.peerID, protocol: testProtocol)
                try await connection.write([UInt8(i)])
                queued.append(connection)
                #expect(await eventually { listener.queuedCount == i + 1 })
            }
            // Beyond the backlog: reset.
            for _ in 0..<3 {
                let connection = try await PointSubNet.dial(host: client, peer: server.peerID, protocol: testProtocol)
                await #expect { try await connection.read() } throws: { netError($0, .reset) }
                await connection.close()
            }
            #expect(listener.queuedCount == 2)
            // The queued ones are intact, in order.
            for (i, connection) in queued.enumerated() {
                let accepted = try await listener.accept()
                #expect(try await accepted.read().map { Array($0.readableBytesView) } == [UInt8(i)])
                try await accepted.write([UInt8(10 + i)])
                #expect(try await connection.read().map { Array($0.readableBytesView) } == [UInt8(10 + i)])
                await accepted.close()
                await connection.close()
            }
            #expect(listener.queuedCount == 0)
            listener.close()
        }
    }

    @Test func listenerCloseResetsUnacceptedEndsSequenceAndUnregisters() async throws {
        try await withHosts { server, client in
            let listener = try PointSubNet.listen(host: server, protocol: testProtocol)
            #expect(server.supportedProtocols.contains(testProtocol))
            let first = try await PointSubNet.dial(host: client, peer: server.peerID, protocol: testProtocol)
            let accepted = try await listener.accept()
            var unaccepted: [PointSubConnection] = []
            for _ in 0..<2 {
                unaccepted.append(try await PointSubNet.dial(host: client, peer: server.peerID, protocol: testProtocol))
            }
            #expect(await eventually { listener.queuedCount == 2 })

            // A second listener with a consumer waiting: close ends its iteration.
            let idle = try PointSubNet.listen(host: server, protocol: testProtocol + "/idle")
            let iterating = Task { () -> Int in
                var count = 0
                for await _ in idle { count += 1 }
                return count
            }
            let waitingAccept = Task { try await idle.accept() }
            try await Task.sleep(for: .milliseconds(50))
            idle.close()
            #expect(await iterating.value == 0)
            await #expect { try await waitingAccept.value } throws: { netError($0, .closed) }

            listener.close()
            listener.close()  // idempotent
            #expect(listener.isClosed)
            #expect(!server.supportedProtocols.contains(testProtocol))
            for connection in unaccepted {
                await #expect { try await connection.read() } throws: { netError($0, .reset) }
                await connection.close()
            }
            var count = 0
            for await _ in listener { count += 1 }
            #expect(count == 0, "a closed listener's sequence is empty")
            await #expect { try await listener.accept() } throws: { netError($0, .closed) }

            // Connections accepted before the close keep working.
            try await first.write(Array("still here".utf8))
            #expect(try await accepted.read().map { String(buffer: $0) } == "still here")
            await first.close()
            await accepted.close()

            // The protocol is gone: a dial fails, and listening again works. When identify had told the
            // client the protocol was served, the stream is negotiated lazily (as go-libp2p does) and
            // the refusal arrives with the first read instead of from dial.
            func refused(_ error: any Error) -> Bool {
                if (error as? HostError)?.code == .protocolNotSupported { return true }
                return ((error as? PointSubNetError)?.cause as? HostError)?.code == .protocolNotSupported
            }
            do {
                let late = try await PointSubNet.dial(host: client, peer: server.peerID, protocol: testProtocol)
                await #expect { _ = try await late.read() } throws: { refused($0) }
                await late.close()
            } catch {
                #expect(refused(error), "\(error)")
            }
            let again = try PointSubNet.listen(host: server, protocol: testProtocol)
            again.close()
        }
    }

    @Test func listeningTwiceIsATypedError() async throws {
        try await withHost(configuration: hostConfig(listening: true)) { host in
            let listener = try PointSubNet.listen(host: host, protocol: testProtocol)
            #expect { try PointSubNet.listen(host: host, protocol: testProtocol) } throws: { netError($0, .alreadyListening) }
            #expect { try PointSubNet.listen(host: host, protocol: PingService.protocolID) } throws: {
                netError($0, .alreadyListening)
            }
            // The failed attempts left the existing handlers registered.
            #expect(host.supportedProtocols.contains(testProtocol))
            #expect(host.supportedProtocols.contains(PingService.protocolID))
            #expect(!listener.isClosed)
            listener.close()
        }
    }

    @Test func concurrentConnectionsReadersAndWriters() async throws {
        try await withHosts { server, client in
            let listener = try PointSubNet.listen(host: server, protocol: testProtocol)
            let serving = Task { await serveEcho(listener) }
            // Eight connections at once; on each, four tasks write 16-byte records concurrently
            // while another task reads the echo.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for c in 0..<8 {
                    group.addTask {
                        let connection = try await PointSubNet.dial(host: client, peer: server.peerID, protocol: testProtocol)
                        let reader = Task { try await readAll(connection) }
                        try await withThrowingTaskGroup(of: Void.self) { writers in
                            for w in 0..<4 {
                                writers.addTask {
                                    for i in 0..<100 {
                                        try await connection.write([UInt8](repeating: UInt8(c * 16 + w), count: 15) + [UInt8(i)])
                                    }
                                }
                            }
                            try await writers.waitForAll()
                        }
                        try await connection.closeWrite()
                        let echoed = try await reader.value
                        #expect(echoed.count == 4 * 100 * 16)
                        // Records arrive whole, and each writer's in its own order.
                        var next = [Int](repeating: 0, count: 4)
                        for start in stride(from: 0, to: echoed.count, by: 16) {
                            let record = echoed[start..<start + 16]
                            let w = Int(record.first!) - c * 16
                            #expect((0..<4).contains(w) && record.dropLast().allSatisfy { $0 == record.first! })
                            guard (0..<4).contains(w) else { break }
                            #expect(Int(record.last!) == next[w])
                            next[w] += 1
                        }
                        await connection.close()
                    }
                }
                try await group.waitForAll()
            }
            listener.close()
            await serving.value
        }
    }

    @Test func oneReaderAtATime() async throws {
        try await withHosts { server, client in
            let listener = try PointSubNet.listen(host: server, protocol: testProtocol)
            let dialed = try await PointSubNet.dial(host: client, peer: server.peerID, protocol: testProtocol)
            let accepted = try await listener.accept()
            let pending = Task { try await dialed.read() }
            try await Task.sleep(for: .milliseconds(50))
            await #expect { try await dialed.read() } throws: { netError($0, .concurrentRead) }
            try await accepted.write([42])
            #expect(try await pending.value.map { Array($0.readableBytesView) } == [42])
            // Cancelling a pending read throws CancellationError and loses nothing.
            let cancelled = Task { try await dialed.read() }
            try await Task.sleep(for: .milliseconds(50))
            cancelled.cancel()
            await #expect(throws: CancellationError.self) { try await cancelled.value }
            try await accepted.write([43])
            #expect(try await dialed.read().map { Array($0.readableBytesView) } == [43])
            // The remote resetting shows as .reset.
            accepted.reset()
            await #expect { try await dialed.read() } throws: { netError($0, .reset) }
            await dialed.close()
            listener.close()
        }
    }

    @Test func droppingAnAcceptedConnectionReleasesItsStream() async throws {
        try await withHosts { server, client in
            let listener = try PointSubNet.listen(host: server, protocol: testProtocol)
            let dialed = try await PointSubNet.dial(host: client, peer: server.peerID, protocol: testProtocol)
            do {
                let accepted = try await listener.accept()
                try await accepted.write(Array("bye".utf8))
            }
            // The dropped connection closed gracefully: data, then EOF.
            #expect(String(decoding: try await readAll(dialed), as: UTF8.self) == "bye")
            await dialed.close()
            listener.close()
        }
    }
}
