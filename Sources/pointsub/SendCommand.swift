import ArgumentParser
import Foundation
import NIOCore
import PointSub

/// `pointsub send`: one request (prints the reply) or many (prints rate and latency).
struct SendCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "send",
        abstract: "Send PointSub requests: one prints the reply; --count N prints the rate and p50/p99 latency.")

    @OptionGroup var identity: IdentityOptions

    @Argument(help: "The server's multiaddr, ending in /p2p/<id>.")
    var address: String

    @Option(help: "The protocol ID, e.g. /kv/1.0.0.")
    var `protocol`: String

    @Option(help: "The request payload as text.")
    var data: String?

    @Option(help: "A request of this many bytes (e.g. 1KiB) instead of --data.")
    var size: String?

    @Option(help: "Send this many requests and report the rate and latency.")
    var count: Int = 1

    @Option(help: "Requests in flight at once (with --count).")
    var concurrency: Int = 1

    @Option(help: "Per-request timeout in seconds.")
    var timeout: Double = 30

    func validate() throws {
        guard (data == nil) != (size == nil) else { throw ValidationError("give exactly one of --data or --size") }
        guard count >= 1, concurrency >= 1 else { throw ValidationError("--count and --concurrency must be at least 1") }
        guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
    }

    func run() async throws {
        let target = try parseAddress(address)
        let peer = try peerOf(target)
        let payload: ByteBuffer
        if let data {
            payload = ByteBuffer(string: data)
        } else {
            payload = SplitMix.payload(bytes: Int(try parseSize(size!)), seed: 1)
        }
        let protocolID = self.protocol
        let timeout = Duration.milliseconds(Int64(self.timeout * 1000))
        try await withHost(identity: try identity.privateKey(), configuration: identity.configuration()) { host in
            _ = try await host.connect(to: target)
            let client = try PointSubClient(host: host)
            do {
                try await exchange(client: client, peer: peer, payload: payload, protocolID: protocolID, timeout: timeout)
                await client.close()
            } catch {
                await client.close()
                throw error
            }
        }
    }

    private func exchange(
        client: PointSubClient, peer: PeerID, payload: ByteBuffer, protocolID: String, timeout: Duration
    ) async throws {
        let count = self.count
        let concurrency = min(self.concurrency, count)
        if count == 1 {
            let reply = try await client.send(payload, to: peer, protocol: protocolID, timeout: timeout)
            if data != nil {
                print(String(buffer: reply))
            } else {
                print("reply: \(reply.readableBytes) bytes")
            }
            return
        }
        let clock = ContinuousClock()
        let start = clock.now
        let latencies = try await withThrowingTaskGroup(of: [Double].self) { group in
            for worker in 0..<concurrency {
                let share = count / concurrency + (worker < count % concurrency ? 1 : 0)
                group.addTask {
                    var samples: [Double] = []
                    samples.reserveCapacity(share)
                    for _ in 0..<share {
                        let t0 = clock.now
                        _ = try await client.send(payload, to: peer, protocol: protocolID, timeout: timeout)
                        samples.append((clock.now - t0).milliseconds)
                    }
                    return samples
                }
            }
            return try await group.reduce(into: [Double]()) { $0 += $1 }.sorted()
        }
        let elapsed = (clock.now - start).seconds
        func percentile(_ p: Double) -> Double { latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))] }
        print(String(
            format: "%d requests of %d bytes, %d in flight: %.0f requests/s, p50 %.3f ms, p99 %.3f ms",
            count, payload.readableBytes, concurrency, Double(count) / elapsed, percentile(0.5), percentile(0.99)))
    }
}
