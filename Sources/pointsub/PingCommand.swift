import ArgumentParser
import Foundation
import PointSub

struct PingCommand: CLICommand {
    static let configuration = CommandConfiguration(
        commandName: "ping", abstract: "Ping a peer with /ipfs/ping/1.0.0 and print each round-trip time.",
        discussion: """
            With --json, stdout carries one JSON object per line: {"type":"ping","seq":N,"rtt_ms":…} \
            for each ping, then {"type":"final",…} with min, median and max; for a circuit address \
            first {"type":"connection","direct":…,"hole_punch":…}.
            """)

    @OptionGroup var identity: IdentityOptions

    @Argument(help: "The peer's multiaddr, ending in /p2p/<id>.")
    var address: String

    @Option(help: "How many pings.")
    var count: Int = 5

    @Option(help: "Milliseconds between pings.")
    var interval: Int = 200

    @Flag(help: "Print JSON lines instead of text.")
    var json = false

    var verbose: Bool { identity.verbose }

    func validate() throws {
        guard count >= 1 else { throw ValidationError("--count must be at least 1") }
        guard (0...3_600_000).contains(interval) else { throw ValidationError("--interval must be 0 to 3600000 ms") }
    }

    func execute() async throws {
        let address = try parseAddress(self.address)
        let peer = try peerOf(address)
        let (count, interval, json) = (self.count, self.interval, self.json)
        try await withClientHost(identity: try identity.privateKey(), configuration: identity.configuration()) { host in
            let connection = try await connectPeer(host, to: address)
            if json, let record = connectionRecord(host, connection, address: address) { try printJSON(record) }
            let pinger = try await PingService.pinger(host: host, peer: peer)
            var rtts: [Double] = []
            for i in 1...count {
                let rtt = try await pinger.ping().milliseconds
                rtts.append(rtt)
                if json {
                    try printJSON(["type": "ping", "seq": i, "rtt_ms": rtt])
                } else {
                    print(String(format: "ping %d: %.3f ms", i, rtt))
                    fflush(nil)
                }
                if i < count { try await Task.sleep(for: .milliseconds(interval)) }
            }
            await pinger.close()
            let sorted = rtts.sorted()
            let (low, median, high) = (sorted.first!, sorted[sorted.count / 2], sorted.last!)
            if json {
                try printJSON([
                    "type": "final", "peer": peer.b58String, "count": count,
                    "min_ms": low, "median_ms": median, "max_ms": high,
                ])
            } else {
                print(String(format: "%d pings to %@: min %.3f ms, median %.3f ms, max %.3f ms", count, peer.description, low, median, high))
            }
        }
    }
}
