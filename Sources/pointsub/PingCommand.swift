import ArgumentParser
import Foundation
import PointSub

struct PingCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ping", abstract: "Ping a peer with /ipfs/ping/1.0.0 and print each round-trip time.")

    @OptionGroup var identity: IdentityOptions

    @Argument(help: "The peer's multiaddr, ending in /p2p/<id>.")
    var address: String

    @Option(help: "How many pings.")
    var count: Int = 5

    @Option(help: "Milliseconds between pings.")
    var interval: Int = 200

    func validate() throws {
        guard count >= 1 else { throw ValidationError("--count must be at least 1") }
    }

    func run() async throws {
        let address = try parseAddress(self.address)
        let peer = try peerOf(address)
        try await withHost(identity: try identity.privateKey(), configuration: identity.configuration()) { host in
            _ = try await host.connect(to: address)
            let pinger = try await PingService.pinger(host: host, peer: peer)
            var rtts: [Double] = []
            for i in 1...count {
                let rtt = try await pinger.ping().milliseconds
                rtts.append(rtt)
                print(String(format: "ping %d: %.3f ms", i, rtt))
                fflush(nil)
                if i < count { try await Task.sleep(for: .milliseconds(interval)) }
            }
            await pinger.close()
            let sorted = rtts.sorted()
            print(String(format: "%d pings to %@: min %.3f ms, median %.3f ms, max %.3f ms", count, peer.description, sorted.first!, sorted[sorted.count / 2], sorted.last!))
        }
    }
}
