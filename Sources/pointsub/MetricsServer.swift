import ArgumentParser
import Foundation
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import PointSub
import Prometheus
import ServiceLifecycle

/// `--metrics HOST:PORT` on serving commands: the library's swift-metrics (`pointsub_…`) in
/// Prometheus text format at `http://HOST:PORT/metrics`.
struct MetricsOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "Serve metrics in Prometheus text format at http://HOST:PORT/metrics (port 0 picks a free one; the URL goes to stderr).",
        valueName: "host:port"))
    var metrics: String?

    func validate() throws {
        if let metrics { _ = try MetricsEndpoint.parse(metrics) }
    }

    /// Bootstraps the metrics system (once per process) and binds the endpoint; nil without
    /// `--metrics`. Call before creating hosts: metrics made before the bootstrap go nowhere.
    func start() async throws -> MetricsServer? {
        guard let metrics else { return nil }
        let (host, port) = try MetricsEndpoint.parse(metrics)
        let registry = MetricsEndpoint.bootstrap()
        let server = try await MetricsServer.bind(host: host, port: port, registry: registry)
        printError("metrics on http://\(server.displayAddress)/metrics")
        return server
    }
}

enum MetricsEndpoint {
    private static let registry = NIOLockedValueBox<PrometheusCollectorRegistry?>(nil)

    /// The registry every metric of this process lands in; bootstraps MetricsSystem on first use.
    static func bootstrap() -> PrometheusCollectorRegistry {
        registry.withLockedValue { registry in
            if let registry { return registry }
            let made = PrometheusCollectorRegistry()
            MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: made))
            registry = made
            return made
        }
    }

    /// "127.0.0.1:9100", "[::1]:9100", "localhost:0" → (host, port).
    static func parse(_ text: String) throws -> (host: String, port: Int) {
        guard let colon = text.lastIndex(of: ":") else {
            throw ValidationError("--metrics wants HOST:PORT, e.g. 127.0.0.1:9100 (got \(text))")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
            throw ValidationError("--metrics wants HOST:PORT with a port from 0 to 65535 (got \(text))")
        }
        return (host, port)
    }
}

/// A minimal HTTP/1.1 server: `GET /metrics` answers with the registry's Prometheus text, anything
/// else with 404. One request per connection; at most `maxConnections` at once, each closed
/// `connectionLifetime` after it was accepted, answered or not (request heads are limited by
/// NIOHTTP1's parser), so a slow client holds a slot for a bounded time.
/// Runs as a service: closes its listener on graceful shutdown.
final class MetricsServer: Service, Sendable, CustomStringConvertible {
    static let maxConnections = 16
    static let connectionLifetime: Duration = .seconds(10)

    let channel: any Channel
    /// "127.0.0.1:9100" as bound (port 0 resolved).
    let displayAddress: String

    var description: String { "metrics server on \(displayAddress)" }

    private init(channel: any Channel, displayAddress: String) {
        self.channel = channel
        self.displayAddress = displayAddress
    }

    static func bind(host: String, port: Int, registry: PrometheusCollectorRegistry) async throws -> MetricsServer {
        let open = NIOLockedValueBox(0)
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    let admitted = open.withLockedValue { count in
                        guard count < maxConnections else { return false }
                        count += 1
                        return true
                    }
                    guard admitted else { return channel.close() }
                    let deadline = Deadline.after(connectionLifetime).schedule(on: channel.eventLoop) { channel.close(promise: nil) }
                    channel.closeFuture.whenComplete { _ in
                        deadline.cancel()
                        open.withLockedValue { $0 -= 1 }
                    }
                    return channel.eventLoop.makeCompletedFuture {
                        let sync = channel.pipeline.syncOperations
                        try sync.configureHTTPServerPipeline(withErrorHandling: true)
                        try sync.addHandler(MetricsHTTPHandler(registry: registry))
                    }
                }
                .bind(host: host, port: port)
                .get()
        } catch {
            throw CLIError("cannot serve metrics on \(host):\(port): \(error)")
        }
        let bound = channel.localAddress
        let boundHost = bound?.ipAddress ?? host
        let shown = boundHost.contains(":") ? "[\(boundHost)]" : boundHost
        return MetricsServer(channel: channel, displayAddress: "\(shown):\(bound?.port ?? port)")
    }

    func run() async throws {
        try? await gracefulShutdown()
        try? await channel.close()
    }
}

/// Answers one request per connection, then closes it.
private final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let registry: PrometheusCollectorRegistry
    private var head: HTTPRequestHead?

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break  // a GET has none; anything else is discarded
        case .end:
            guard let head else { return }
            self.head = nil
            respond(to: head, context: context)
        }
    }

    private func respond(to request: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = request.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.uri
        let status: HTTPResponseStatus
        var body = context.channel.allocator.buffer(capacity: 0)
        var headers = HTTPHeaders()
        if request.method == .GET && path == "/metrics" {
            status = .ok
            body.writeBytes(registry.emitToBuffer())
            headers.add(name: "Content-Type", value: "text/plain; version=0.0.4; charset=utf-8")
        } else {
            status = request.method == .GET ? .notFound : .methodNotAllowed
            body.writeString("only GET /metrics is served here\n")
            headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
        }
        headers.add(name: "Content-Length", value: "\(body.readableBytes)")
        headers.add(name: "Connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}
