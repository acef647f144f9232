import Foundation
import Logging
import Metrics
import PointSub
import Prometheus
import ServiceLifecycle
import Testing

// The README's Swift examples, line for line (without their imports), in functions that are
// compiled but never run: if an example stops compiling, this file stops compiling. The test at
// the bottom checks that every example in README.md and in the DocC articles appears here
// verbatim, so they cannot drift.
// The names an example uses but does not define are the functions' parameters.

func readmeLibrary(someAddress: Multiaddr) async throws {

try await withHost(identity: .ed25519(seed: 7), configuration: .defaults {
    $0.listenAddresses = ["/ip4/127.0.0.1/tcp/0"]
}) { host in
    try host.setStreamHandler("/echo/1.0.0") { stream in
        for try await chunk in stream.inbound { try await stream.write(chunk) }
    }
    print(host.addresses)                       // [/ip4/127.0.0.1/tcp/40123/p2p/12D3KooW…]
    let stream = try await host.newStream(to: someAddress, protocols: ["/echo/1.0.0"])
    try await stream.write(ByteBuffer(string: "hi"))
    try await stream.closeWrite()
    let reply = try await stream.readToEnd(maxBytes: 1 << 20)
    print(String(buffer: reply))                // hi
}
}

func readmeRequestResponse(
    host: P2PHost, serverPeer: PeerID, nodeA: PeerID, request: ByteBuffer, dht: KademliaDHT
) async throws {
@Sendable func handle(_ payload: ByteBuffer, from peer: PeerID) async throws -> ByteBuffer { payload }
let server = try PointSubServer(host: host)                       // timeouts, 32 MiB limit, adaptive
try server.start("/kv/1.0.0") { request in                        // concurrency limit, compression…
    try await handle(request.payload, from: request.peer)          // a thrown error reaches the client
}                                                                  // as PointSubError .remote(.handler)
let client = try PointSubClient(host: host)                       // stream pool, retries, compression
let reply = try await client.send(ByteBuffer(string: "get a"), to: serverPeer, protocol: "/kv/1.0.0")

try client.addServerNode(nodeA, protocol: "/kv/1.0.0")            // node lists: the same request goes
let (answer, node) = try await client.sendClosest(request, protocol: "/kv/1.0.0")  // to the same node
client.setClosestNodeSource(try DHTClosestNodes(dht: dht, host: host), protocol: "/kv/1.0.0")
let (value, owner) = try await client.sendClosest(request, key: Array("user 42".utf8), protocol: "/kv/1.0.0")
    _ = (reply, answer, node, value, owner)
}

func readmeRoutesAndBroadcast(host: P2PHost, request: ByteBuffer) async throws {
@Sendable func reply(to message: ByteBuffer) -> ByteBuffer { message }
let routes = try RouteTable(host: host)                           // persistent or short connections
routes.handle { sender, message in reply(to: message) }
try routes.start()
try routes.addRoute("billing", address: "/ip4/10.0.0.2/tcp/4001/p2p/12D3KooW…")
let answer = try await routes.dispatch("billing", request)        // one route
let results = try await routes.dispatchAll(request)               // [name: Result<reply, RouteError>]

try await withPubSub(host: host, router: try GossipSubRouter(configuration: .defaults)) { pubsub in
    let news = try pubsub.subscribe("news")                       // AsyncSequence of PubSubMessage
    try await pubsub.publish("news", Array("hello".utf8))         // signed (StrictSign), delivered once
    for await message in news { print(message.from?.b58String ?? "-", message.text) }
}
    _ = (answer, results)
}

func readmeRelay(relayAddress: Multiaddr) async throws {

let relayClient = RelayClient()
let autonat = AutoNATService()
var configuration = P2PHost.Configuration.defaults
configuration.listenAddresses = ["/ip4/0.0.0.0/tcp/4001"]
configuration.services = [autonat]
relayClient.install(in: &configuration)           // dial and accept …/p2p-circuit/… addresses
try await withHost(configuration: configuration) { host in
    try await relayClient.keepReservation(on: relayAddress)   // refreshed before it expires
    print(relayClient.circuitAddresses)           // [/ip4/…/p2p/<relay>/p2p-circuit/p2p/<us>]
    for await reachability in autonat.updates() { print(reachability) }   // unknown, then private
}
}

func articleReachable(relayAddress: Multiaddr) async throws {
let relayClient = RelayClient()
let autonat = AutoNATv2Service()
let dht = KademliaDHT()
var configuration = P2PHost.Configuration.defaults
configuration.listenAddresses = ["/ip4/0.0.0.0/tcp/4001"]
configuration.services = [AutoNATService(), autonat, DCUtRService(), dht]
relayClient.install(in: &configuration)                        // dial and accept circuit addresses
try await withHost(configuration: configuration) { host in
    try await relayClient.keepReservation(on: relayAddress)   // refreshed before it expires
    dht.followReachability(of: autonat)                        // DHT server while an address is public
    for await reachability in autonat.updates() {
        print(reachability, autonat.addressReachability)       // each tested address: public or private
    }
}
}

func readmeLifecycle() async throws {

let registry = PrometheusCollectorRegistry()                       // swift-metrics → Prometheus text
MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))

let host = P2PHost(identity: try KeyFile.read(path: "node.key"), configuration: .defaults {
    $0.listenAddresses = ["/ip4/0.0.0.0/tcp/4001"]
    $0.services = [IdentifyService(), PingService()]
    $0.resources.system.memory = 512 << 20                         // the node's memory budget (1 GiB)
    $0.resources.perAddress.connectionsInbound = 32                // what one source IP may hold (128)
    $0.connectionManager.highWater = 400                           // trim above it, down to lowWater
})
let pubsub = try PubSubService(host: host, router: try GossipSubRouter(configuration: .defaults))
let group = ServiceGroup(
    services: [host, pubsub], gracefulShutdownSignals: [.sigterm, .sigint],
    logger: Logger(label: "node"))
try await group.run()                                              // until SIGINT/SIGTERM, then drains

var text: [UInt8] = []
registry.emit(into: &text)                                         // what `--metrics` serves on /metrics
}

@Suite struct ReadmeExampleTests {
    static let here = URL(fileURLWithPath: #filePath)
    static let root = here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The Swift code blocks of the Markdown file at `path` (from the repository's root).
    static func examples(in path: String) throws -> [String] {
        let text = try String(contentsOf: root.appendingPathComponent(path), encoding: .utf8)
        return text.components(separatedBy: "```swift\n").dropFirst().map { $0.components(separatedBy: "```")[0] }
    }

    static func expectCompiled(_ examples: [String], from file: String) throws {
        let compiled = try String(contentsOf: here, encoding: .utf8)
        for example in examples {
            let lines = example.split(separator: "\n", omittingEmptySubsequences: false)
                .filter { !$0.hasPrefix("import ") }
            let body = lines.joined(separator: "\n").trimmingCharacters(in: .newlines)
            #expect(compiled.contains(body), "\(file) example not compiled here:\n\(body)")
        }
    }

    @Test func everyReadmeExampleIsCompiledHere() throws {
        let examples = try Self.examples(in: "README.md")
        #expect(examples.count == 5)
        try Self.expectCompiled(examples, from: "README.md")
    }

    /// The DocC catalog's articles: their examples are compiled here too.
    @Test func everyArticleExampleIsCompiledHere() throws {
        let catalog = "Sources/PointSub/PointSub.docc"
        let articles = try FileManager.default.contentsOfDirectory(atPath: Self.root.appendingPathComponent(catalog).path)
            .filter { $0.hasSuffix(".md") }
        #expect(articles.contains("GettingStarted.md"))
        var count = 0
        for article in articles {
            let examples = try Self.examples(in: "\(catalog)/\(article)")
            count += examples.count
            try Self.expectCompiled(examples, from: article)
        }
        #expect(count == 4)
    }
}
