import ArgumentParser
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import PointSub

/// `pointsub send`: one request (prints the reply) or many (prints rate and latency).
struct SendCommand: CLICommand {
    static let configuration = CommandConfiguration(
        commandName: "send",
        abstract: "Send PointSub requests: one prints the reply; --count N prints the rate and p50/p99 latency.",
        discussion: """
            With --json, stdout carries one JSON object: {"type":"reply",…} for one request, \
            {"type":"final",…} for --count; for a circuit address first \
            {"type":"connection","direct":…,"hole_punch":…}. Runs longer than a second print their progress on stderr. \
            With --closest-dht --bootstrap ADDR (and no ADDRESS), each request goes to the server nearest \
            to its key (--closest-key, or the request's SHA-256) by XOR distance among the DHT's peers that serve \
            the protocol (see `serve --dht`), failing over to the next nearest; the reply's "node" (or a \
            line on stderr) names it.
            """)

    /// The largest request `--size` makes: PointSub's default block limit (servers refuse more).
    static let maxRequestSize: UInt64 = 32 << 20

    @OptionGroup var identity: IdentityOptions

    @Argument(help: "The server's multiaddr, ending in /p2p/<id> (not with --closest-dht).")
    var address: String?

    @Flag(help: "Send to the server nearest to the key in the Kademlia DHT (see `serve --dht`) instead of ADDRESS.")
    var closestDht = false

    @Option(help: "With --closest-dht: a DHT node to start from (a multiaddr ending in /p2p/<id>); repeatable.")
    var bootstrap: [String] = []

    @Option(help: "With --closest-dht: the key (text) that picks the server (default: the SHA-256 of the request).")
    var closestKey: String?

    @Option(help: "The protocol ID, e.g. /kv/1.0.0.")
    var `protocol`: String

    @Option(help: "The request payload as text.")
    var data: String?

    @Option(help: "A request of this many pseudo-random bytes (e.g. 1KiB, 1.5MB) instead of --data.", transform: ByteSize.parse)
    var size: ByteSize?

    @Option(help: "Send this many requests and report the rate and latency.")
    var count: Int = 1

    @Option(help: "Requests in flight at once (with --count).")
    var concurrency: Int = 1

    @Option(help: "Per-request timeout in seconds.")
    var timeout: Double = 30

    @Flag(help: "Print the result as one JSON object on stdout (and nothing else there).")
    var json = false

    var verbose: Bool { identity.verbose }

    func validate() throws {
        guard (data == nil) != (size == nil) else { throw ValidationError("give exactly one of --data or --size") }
        if closestDht {
            guard address == nil else { throw ValidationError("give either ADDRESS or --closest-dht, not both") }
            guard !bootstrap.isEmpty else { throw ValidationError("--closest-dht needs at least one --bootstrap peer") }
        } else {
            guard address != nil else { throw ValidationError("give the server's ADDRESS (or --closest-dht)") }
            guard bootstrap.isEmpty, closestKey == nil else {
                throw ValidationError("--bootstrap and --closest-key go with --closest-dht")
            }
        }
        guard count >= 1, concurrency >= 1 else { throw ValidationError("--count and --concurrency must be at least 1") }
        guard timeout > 0, timeout <= 86_400 else { throw ValidationError("--timeout must be positive and at most a day") }
        if let size, size.bytes > Self.maxRequestSize {
            throw ValidationError("--size \(size) is larger than a request may be (\(ByteSize(bytes: Self.maxRequestSize)))")
        }
    }

    func execute() async throws {
        let payload: ByteBuffer
        if let data {
            payload = ByteBuffer(string: data)
        } else {
            payload = PayloadStream.payload(bytes: Int(size!.bytes), seed: 1)
        }
        let protocolID = self.protocol
        let timeout = Duration.milliseconds(Int64(self.timeout * 1000))
        let command = self
        guard closestDht else {
            let target = try parseAddress(address ?? "")
            let peer = try peerOf(target)
            try await withClientHost(identity: try identity.privateKey(), configuration: identity.configuration()) { host in
                let connection = try await connectPeer(host, to: target)
                if command.json, let record = connectionRecord(host, connection, address: target) { try printJSON(record) }
                let client = try PointSubClient(host: host)
                do {
                    try await command.exchange(payload: payload, timeout: timeout) { request, deadline in
                        (try await client.send(request, to: peer, protocol: protocolID, deadline: deadline), peer)
                    }
                    await client.close()
                } catch {
                    await client.close()
                    throw error
                }
            }
            return
        }
        // A DHT client node (it asks, it does not answer), bootstrapped; the DHT names the server.
        var dhtConfiguration = KademliaDHT.Configuration()
        dhtConfiguration.mode = .client
        dhtConfiguration.bootstrapPeers = try bootstrap.map(parseAddress)
        let dht = KademliaDHT(configuration: dhtConfiguration)
        let key = closestKey.map { Array($0.utf8) }
        try await withClientHost(
            identity: try identity.privateKey(), configuration: identity.configuration(services: [dht])
        ) { host in
            defer { dht.stop() }
            guard await dht.bootstrap() > 0 else { throw CLIError("no bootstrap peer answered") }
            let client = try PointSubClient(host: host)
            client.setClosestNodeSource(try DHTClosestNodes(dht: dht, host: host), protocol: protocolID)
            do {
                try await command.exchange(payload: payload, timeout: timeout) { request, deadline in
                    try await client.sendClosest(request, key: key, protocol: protocolID, deadline: deadline)
                }
                await client.close()
            } catch {
                await client.close()
                throw error
            }
        }
    }

    /// Sends the request(s) with `send`, which returns the reply and the node that answered.
    private func exchange(
        payload: ByteBuffer, timeout: Duration,
        send: @escaping @Sendable (ByteBuffer, Deadline) async throws -> (ByteBuffer, PeerID)
    ) async throws {
        let count = self.count
        let concurrency = min(self.concurrency, count)
        let clock = ContinuousClock()
        if count == 1 {
            let start = clock.now
            let (reply, node) = try await send(payload, .after(timeout))
            let elapsed = clock.now - start
            if json {
                var object: [String: Any] = [
                    "type": "reply", "request_bytes": payload.readableBytes, "reply_bytes": reply.readableBytes,
                    "seconds": elapsed.seconds, "node": node.description,
                ]
                if data != nil { object["reply"] = String(buffer: reply) }
                try printJSON(object)
            } else if data != nil {
                print(String(buffer: reply))
            } else {
                print("reply: \(reply.readableBytes) bytes")
            }
            if closestDht, !json { printError("answered by \(node)") }
            return
        }
        let start = clock.now
        let done = NIOLockedValueBox(0)
        let progress = startProgress { elapsed in
            let sent = done.withLockedValue { $0 }
            printError(String(format: "… %.1f s: %d of %d requests", elapsed.seconds, sent, count))
        }
        defer { progress.cancel() }
        let latencies = try await withThrowingTaskGroup(of: [Double].self) { group in
            for worker in 0..<concurrency {
                let share = count / concurrency + (worker < count % concurrency ? 1 : 0)
                group.addTask {
                    var samples: [Double] = []
                    samples.reserveCapacity(share)
                    for _ in 0..<share {
                        let t0 = clock.now
                        _ = try await send(payload, .after(timeout))
                        samples.append((clock.now - t0).milliseconds)
                        done.withLockedValue { $0 += 1 }
                    }
                    return samples
                }
            }
            return try await group.reduce(into: [Double]()) { $0 += $1 }.sorted()
        }
        let elapsed = (clock.now - start).seconds
        func percentile(_ p: Double) -> Double { latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))] }
        if json {
            try printJSON([
                "type": "final", "requests": count, "request_bytes": payload.readableBytes, "concurrency": concurrency,
                "seconds": elapsed, "requests_per_second": Double(count) / elapsed,
                "p50_ms": percentile(0.5), "p99_ms": percentile(0.99),
            ])
        } else {
            print(String(
                format: "%d requests of %d bytes, %d in flight: %.0f requests/s, p50 %.3f ms, p99 %.3f ms",
                count, payload.readableBytes, concurrency, Double(count) / elapsed, percentile(0.5), percentile(0.99)))
        }
    }
}
