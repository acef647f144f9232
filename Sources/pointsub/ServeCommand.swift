import ArgumentParser
import Foundation
import Metrics
import NIOCore
import PointSub

/// `pointsub serve`: a PointSub request/response server with a built-in handler.
struct ServeCommand: CLICommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve PointSub requests on a protocol with a built-in handler (echo, reverse, upper).",
        discussion: """
            On SIGINT/SIGTERM it stops taking requests, lets those in flight finish (at most a second), \
            and exits with 130/143. With --metrics, pointsub_serve_requests_total{protocol} counts the \
            requests answered, beside the library's pointsub_… metrics.
            """)

    enum Handler: String, ExpressibleByArgument, CaseIterable {
        case echo, reverse, upper
    }

    @OptionGroup var identity: IdentityOptions
    @OptionGroup var listenOptions: ListenOptions
    @OptionGroup var metricsOptions: MetricsOptions

    @Option(help: "The protocol ID to serve, e.g. /kv/1.0.0.")
    var `protocol`: String

    @Option(help: "What to answer: echo, reverse (byte order) or upper (ASCII upper case).")
    var handler: Handler = .echo

    @Flag(help: "Also be a Kademlia DHT server (/ipfs/kad/1.0.0), so `send --closest-dht` finds this node.")
    var dht = false

    @Option(help: "With --dht: a DHT node to start from (a multiaddr ending in /p2p/<id>); repeatable.")
    var bootstrap: [String] = []

    var verbose: Bool { identity.verbose }

    func validate() throws {
        if listenOptions.l == nil && listenOptions.listen.isEmpty {
            throw ValidationError("give --listen MULTIADDR or -l PORT")
        }
        if !bootstrap.isEmpty && !dht { throw ValidationError("--bootstrap needs --dht") }
    }

    func execute() async throws {
        let metrics = try await metricsOptions.start()
        var dhtNode: KademliaDHT?
        if dht {
            var dhtConfiguration = KademliaDHT.Configuration()
            dhtConfiguration.bootstrapPeers = try bootstrap.map(parseAddress)
            dhtNode = KademliaDHT(configuration: dhtConfiguration)
        }
        let config = identity.configuration(listen: try listenOptions.addresses(), services: dhtNode.map { [$0] } ?? [])
        let protocolID = self.protocol
        let handler = self.handler
        // Made before the first request, so a scrape shows 0 rather than nothing.
        let answered = Counter(label: "pointsub_serve_requests_total", dimensions: [("protocol", protocolID)])
        try await withHost(identity: try identity.privateKey(), configuration: config) { host in
            let server = try PointSubServer(host: host)
            try server.start(protocolID) { request in
                defer { answered.increment() }
                var payload = request.payload
                switch handler {
                case .echo:
                    return payload
                case .reverse:
                    return ByteBuffer(bytes: Array(payload.readableBytesView.reversed()))
                case .upper:
                    let bytes = payload.readBytes(length: payload.readableBytes) ?? []
                    return ByteBuffer(bytes: bytes.map { (0x61...0x7A).contains($0) ? $0 - 0x20 : $0 })
                }
            }
            // After the handler: the peers met while bootstrapping learn from identify that we serve it.
            if let dhtNode, !dhtNode.configuration.bootstrapPeers.isEmpty, await dhtNode.bootstrap() == 0 {
                printError("dht: no bootstrap peer answered")
            }
            await announce(host, listenOptions)
            defer { dhtNode?.stop() }
            try await serveHost(
                host, metrics: metrics,
                extra: [PointSubServerService(server: server, gracePeriod: IdentityOptions.shutdownGracePeriod)])
        }
    }
}
