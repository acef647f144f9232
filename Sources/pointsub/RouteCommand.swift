import ArgumentParser
import Foundation
import NIOCore
import PointSub
import PubSub
import ServiceLifecycle

/// `pointsub route`: N nodes in this process on 127.0.0.1 with named routes between them;
/// node-0 dispatches to one route, then to all of them (one is dead), and prints what happened.
struct RouteCommand: CLICommand {
    static let configuration = CommandConfiguration(
        commandName: "route",
        abstract: "Named routes demo: local nodes, Dispatch to one route, DispatchAll to every route (one dead).")

    enum Mode: String, ExpressibleByArgument, CaseIterable {
        case persistent
        case short

        var table: RouteTable.Mode {
            switch self {
            case .persistent: .persistent
            case .short: .short
            }
        }
    }

    @Option(help: "How many nodes to start (2 to 16).")
    var nodes = 4

    @Option(help: "persistent: connections are kept and reused; short: closed after each exchange.")
    var mode = Mode.persistent

    @Option(help: "Per-peer timeout of a dispatch, in milliseconds.")
    var timeout = 3000

    func validate() throws {
        guard (2...16).contains(nodes) else { throw ValidationError("--nodes must be between 2 and 16") }
        guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
    }

    func execute() async throws {
        // An in-process demo: a signal cancels it (its hosts close as it unwinds).
        let command = self
        try await cancelWhenGracefulShutdown { try await command.runDemo() }
    }

    func runDemo() async throws {
        let configuration = RouteTable.Configuration.defaults {
            $0.mode = mode.table
            $0.timeout = .milliseconds(timeout)
        }
        print("route demo: \(nodes) nodes on 127.0.0.1, mode \(mode.rawValue), per-peer timeout \(timeout) ms")
        var hosts: [P2PHost] = []
        var tables: [RouteTable] = []
        do {
            for index in 0..<nodes {
                let host = P2PHost(identity: .ed25519(seed: UInt64(index + 1)), configuration: Self.listening)
                hosts.append(host)
                try await host.start()
                let table = try RouteTable(host: host, configuration: configuration)
                tables.append(table)
                let name = "node-\(index)"
                table.handle { sender, message in
                    ByteBuffer(string: "\(name) got \"\(String(buffer: message))\" from \(sender)")
                }
                try table.start()
                print("  \(name) \(host.peerID) at \(host.addresses[0])")
            }
            // A node that went away: started, then shut down, so its port refuses connections.
            let dead = P2PHost(identity: .ed25519(seed: 1000), configuration: Self.listening)
            try await dead.start()
            let deadAddress = dead.addresses[0]
            await dead.shutdown()
            print("  node-dead \(dead.peerID) at \(deadAddress) (shut down)")

            try await demo(hosts: hosts, tables: tables, deadAddress: deadAddress)
        } catch {
            await Self.shutDown(hosts, tables)
            throw error
        }
        await Self.shutDown(hosts, tables)
        print("all nodes shut down cleanly")
    }

    private func demo(hosts: [P2PHost], tables: [RouteTable], deadAddress: Multiaddr) async throws {
        let origin = tables[0]
        for index in 1..<nodes {
            try origin.addRoute("node-\(index)", address: hosts[index].addresses[0])
            try tables[index].addRoute("node-0", address: hosts[0].addresses[0])
        }
        try origin.addRoute("node-dead", address: deadAddress)
        print("routes of node-0:")
        for route in origin.routes() { print("  \(route.name) → \(route.address)") }
        do {
            try origin.addRoute("node-1-again", address: hosts[1].addresses[0])
        } catch {
            print("a second route to node-1's address is refused: \(error.code)")
        }

        let clock = ContinuousClock()
        var start = clock.now
        let reply = try await origin.dispatch("node-1", ByteBuffer(string: "hello node-1"))
        print("dispatch node-1: reply \"\(String(buffer: reply))\" in \(Self.format(clock.now - start))")

        start = clock.now
        let results = try await origin.dispatchAll(ByteBuffer(string: "hello all"))
        print("dispatchAll to \(results.count) routes in \(Self.format(clock.now - start)):")
        for (name, result) in results.sorted(by: { $0.key < $1.key }) {
            switch result {
            case .success(let reply): print("  \(name): reply \"\(String(buffer: reply))\"")
            case .failure(let error):
                print("  \(name): error \(error.code): \(error.message)" + (error.cause.map { " (\($0))" } ?? ""))
            }
        }

        let open = hosts[0].allConnections.filter { $0.direction == .outbound && !$0.isClosed }.count
        let stats = origin.statistics
        print("node-0: \(stats.dispatches) dispatches, \(stats.replies) replies, \(stats.failures) failures; connections dialed \(stats.connectionsDialed), closed \(stats.connectionsClosed), open \(open)")
        switch mode {
        case .persistent: print("persistent mode: node-0 keeps its connections open and reused them (node-1's served both calls)")
        case .short: print("short mode: node-0 closed each connection after its exchange")
        }

        try await origin.deleteRoute("node-dead")
        print("deleted route node-dead; routes of node-0: \(origin.routes().map(\.name).joined(separator: ", "))")
    }

    private static var listening: P2PHost.Configuration {
        .defaults { $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")] }
    }

    private static func shutDown(_ hosts: [P2PHost], _ tables: [RouteTable]) async {
        for table in tables { await table.close() }
        for host in hosts { await host.shutdown(gracePeriod: .seconds(1)) }
    }

    private static func format(_ duration: Duration) -> String {
        String(format: "%.1f ms", duration.milliseconds)
    }
}
