import NIOConcurrencyHelpers
import PointSub
import Testing

@testable import PubSub

/// The transport test hosts use: in-memory by default (no sockets, so networks of any size cost
/// no file descriptors), TCP on 127.0.0.1 for the tests that also run over a real transport.
enum TestTransport: String, Sendable, CaseIterable {
    case memory, tcp

    /// Makes `configuration` use this transport only and listen on a fresh address of it.
    func apply(to configuration: inout P2PHost.Configuration) {
        switch self {
        case .memory:
            configuration.transports = [.memory]
            configuration.listenAddresses = [Multiaddr("/memory/0")]
        case .tcp:
            configuration.transports = [.tcp]
            configuration.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")]
        }
    }
}

/// Hosts, each with a started `PubSubService`, connected along `edges` over the in-memory
/// transport (or TCP on 127.0.0.1); for tests of any size and topology. `with` tears everything
/// down however the body ends.
///
///     try await PubSubTestNetwork.with(nodes: 5, edges: PubSubTestNetwork.line(5)) { net in … }
final class PubSubTestNetwork: Sendable {
    let hosts: [P2PHost]
    let services: [PubSubService]
    let edges: [(Int, Int)]

    private init(hosts: [P2PHost], services: [PubSubService], edges: [(Int, Int)]) {
        self.hosts = hosts
        self.services = services
        self.edges = edges
    }

    static func line(_ count: Int) -> [(Int, Int)] { (0..<(count - 1)).map { ($0, $0 + 1) } }
    static func ring(_ count: Int) -> [(Int, Int)] { line(count) + [(count - 1, 0)] }

    static func with<T: Sendable>(
        nodes count: Int, edges: [(Int, Int)],
        router: @escaping (Int) -> any PubSubRouter = { _ in FloodSubRouter() },
        configuration: (Int) -> PubSubConfiguration = { _ in .defaults },
        transport: TestTransport = .memory,
        _ body: (PubSubTestNetwork) async throws -> T
    ) async throws -> T {
        var hosts: [P2PHost] = []
        var services: [PubSubService] = []
        do {
            for index in 0..<count {
                let host = P2PHost(identity: .generateEd25519(), configuration: .defaults {
                    transport.apply(to: &$0)
                    $0.services = [IdentifyService()]
                    $0.shutdownGracePeriod = .milliseconds(200)
                })
                hosts.append(host)
                try await host.start()
                let service = try PubSubService(host: host, router: router(index), configuration: configuration(index))
                services.append(service)
                try service.start()
            }
            let network = PubSubTestNetwork(hosts: hosts, services: services, edges: edges)
            for (a, b) in edges { try await network.connect(a, b) }
            try await network.waitUntil("every link has its pubsub streams") {
                edges.allSatisfy { a, b in
                    services[a].peers.contains(hosts[b].peerID) && services[b].peers.contains(hosts[a].peerID)
                }
            }
            let result = try await body(network)
            await tearDown(hosts, services)
            return result
        } catch {
            await tearDown(hosts, services)
            throw error
        }
    }

    private static func tearDown(_ hosts: [P2PHost], _ services: [PubSubService]) async {
        for service in services { await service.stop() }
        await withTaskGroup(of: Void.self) { group in
            for host in hosts { group.addTask { await host.shutdown(gracePeriod: .milliseconds(100)) } }
        }
    }

    func connect(_ a: Int, _ b: Int) async throws {
        _ = try await hosts[a].connect(to: hosts[b].addresses[0])
    }

    func peerID(_ index: Int) -> PeerID { hosts[index].peerID }

    func neighbours(of index: Int) -> [Int] {
        edges.compactMap { a, b in a == index ? b : b == index ? a : nil }
    }

    /// Waits until every node in `subscribers` is known as a subscriber of `topic` by each of its
    /// neighbours.
    func waitForSubscriptions(_ topic: String, subscribers: some Sequence<Int>) async throws {
        let subscribers = Array(subscribers)
        try await waitUntil("subscriptions to \(topic) reached the neighbours") {
            subscribers.allSatisfy { node in
                neighbours(of: node).allSatisfy { services[$0].peers(topic: topic).contains(peerID(node)) }
            }
        }
    }

    /// The counters of every node.
    var counters: [PubSubCounters] { services.map(\.counters) }

    /// Polls `condition` every 10 ms; throws if it does not hold within `timeout`.
    func waitUntil(
        _ what: String, timeout: Duration = .seconds(10), _ condition: () -> Bool
    ) async throws {
        let deadline = ContinuousClock.now + timeout
        while !condition() {
            guard ContinuousClock.now < deadline else { throw TestNetworkError(description: "timed out: \(what)") }
            try await Task.sleep(for: .milliseconds(10))
        }
    }
}

struct TestNetworkError: Error, CustomStringConvertible {
    let description: String
}

/// Collects what a subscription delivers, in a task of its own.
final class Collector: Sendable {
    private let received = NIOLockedValueBox<[PubSubMessage]>([])
    private let task: Task<Void, Never>

    init(_ subscription: PubSubSubscription) {
        let received = self.received
        task = Task {
            for await message in subscription { received.withLockedValue { $0.append(message) } }
        }
    }

    deinit { task.cancel() }

    var messages: [PubSubMessage] { received.withLockedValue { $0 } }
    var texts: [String] { messages.map(\.text) }

    /// Ends the collecting task (which releases the subscription, unsubscribing it).
    func cancel() { task.cancel() }
}
