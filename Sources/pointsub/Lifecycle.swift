import ArgumentParser
import Foundation
import Logging
import NIOConcurrencyHelpers
import PointSub
import PubSub
import ServiceLifecycle

/// A `pointsub` subcommand: `execute()` runs as the one service of a ServiceGroup that shuts down
/// gracefully on SIGINT/SIGTERM, after which the process exits with 130/143.
protocol CLICommand: AsyncParsableCommand, Sendable {
    /// The command's work. Servers run their host and services with `serve(_:)`; clients wrap
    /// their exchange in `untilShutdown(host:_:)` so a signal stops it promptly.
    func execute() async throws

    /// With `-v`, logs go to stderr at debug level.
    var verbose: Bool { get }
}

extension CLICommand {
    var verbose: Bool { false }

    mutating func run() async throws {
        CLILogging.bootstrap(verbose: verbose)
        let command = self
        try await runOnServiceGroup { try await command.execute() }
    }
}

/// The process-wide logging setup: everything goes to stderr (stdout carries results and JSON).
enum CLILogging {
    private static let once = NIOLockedValueBox(false)

    /// Routes swift-log to stderr, at debug level with `-v` and at warning level without.
    static func bootstrap(verbose: Bool) {
        let first = once.withLockedValue { done in
            defer { done = true }
            return !done
        }
        guard first else { return }
        let level: Logger.Level = verbose ? .debug : .warning
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }

    /// The logger for hosts and services: debug-level on stderr with `-v`, silent otherwise (the
    /// library's refusals and closes, with peer and address, are debug lines).
    static func logger(verbose: Bool) -> Logger {
        guard verbose else { return Logger(label: "pointsub", factory: { _ in SwiftLogNoOpLogHandler() }) }
        var logger = Logger(label: "pointsub", factory: { StreamLogHandler.standardError(label: $0) })
        logger.logLevel = .debug
        return logger
    }
}

/// A closure as a ServiceLifecycle service.
struct WorkService: Service, CustomStringConvertible {
    let description: String
    let work: @Sendable () async throws -> Void

    func run() async throws { try await work() }
}

/// Runs `body` on a ServiceGroup with SIGTERM and SIGINT as graceful shutdown signals. When a
/// signal arrived, throws `ExitCode(128 + signal)` (130 for SIGINT, 143 for SIGTERM), whatever
/// the body did after it was asked to stop.
func runOnServiceGroup(_ body: @escaping @Sendable () async throws -> Void) async throws {
    // The command is only ever asked to shut down because of a signal (ours or the group's).
    let shutdownRequested = NIOLockedValueBox(false)
    let command = ServiceGroupConfiguration.ServiceConfiguration(
        service: WorkService(description: "command") {
            try await withGracefulShutdownHandler {
                try await body()
            } onGracefulShutdown: {
                shutdownRequested.withLockedValue { $0 = true }
            }
        },
        successTerminationBehavior: .gracefullyShutdownGroup,
        failureTerminationBehavior: .gracefullyShutdownGroup)
    var configuration = ServiceGroupConfiguration(
        services: [command], gracefulShutdownSignals: [.sigterm, .sigint],
        logger: Logger(label: "pointsub.lifecycle"))
    configuration.maximumGracefulShutdownDuration = .seconds(3)
    configuration.maximumCancellationDuration = .seconds(1)
    let group = ServiceGroup(configuration: configuration)
    // A signal that came before the group installed its own handlers (they are installed when
    // `run()` starts) was caught by TerminationSignal: hand it on. Triggering twice is harmless.
    let bridge = Task {
        await TerminationSignal.shared.wait()
        await group.triggerGracefulShutdown()
    }
    defer { bridge.cancel() }
    func signalStatus() async -> Int32? {
        guard shutdownRequested.withLockedValue({ $0 }) || TerminationSignal.shared.received != nil else { return nil }
        // Both handlers see every signal; ours may run a moment after the group's.
        let signal = await TerminationSignal.shared.awaitReceived(timeout: .seconds(1)) ?? SIGTERM
        return 128 + signal
    }
    do {
        try await group.run()
    } catch {
        if let status = await signalStatus() { throw ExitCode(status) }
        throw error
    }
    if let status = await signalStatus() { throw ExitCode(status) }
}

/// Runs `services` on a ServiceGroup nested in the command's: they run until the command's group
/// shuts down (a signal), then stop in reverse order — so list the host before what runs on it.
/// One that ends or fails shuts the others down too.
func serve(_ services: [any Service]) async throws {
    let configurations = services.map {
        ServiceGroupConfiguration.ServiceConfiguration(
            service: $0, successTerminationBehavior: .gracefullyShutdownGroup,
            failureTerminationBehavior: .gracefullyShutdownGroup)
    }
    let group = ServiceGroup(configuration: .init(services: configurations, logger: Logger(label: "pointsub.lifecycle")))
    try await group.run()
}

/// A started PointSub server as a service: on graceful shutdown it stops taking requests and lets
/// those in flight finish (at most `gracePeriod`). PointSubServer itself is becoming a `Service`;
/// this wrapper goes away then.
struct PointSubServerService: Service, CustomStringConvertible {
    let server: PointSubServer
    let gracePeriod: Duration
    var description: String { "pointsub server" }

    func run() async throws {
        try? await gracefulShutdown()
        await server.stop(gracePeriod: gracePeriod)
    }
}

/// Runs a client exchange on `host` until it ends or the command is asked to stop: on graceful
/// shutdown (a signal) the exchange is cancelled and the host's connections are closed at once,
/// so a transfer blocked in a read or a write ends now rather than when it would have finished.
func untilShutdown<T: Sendable>(host: P2PHost, _ work: @escaping @Sendable () async throws -> T) async throws -> T {
    try await cancelWhenGracefulShutdown {
        try await withTaskCancellationHandler {
            try await work()
        } onCancel: {
            Task { await host.shutdown(gracePeriod: .zero) }
        }
    }
}

/// Starts a client host (no listeners), runs `body` with it until it ends or a signal stops it,
/// and shuts the host down.
func withClientHost<T: Sendable>(
    identity: PrivateKey, configuration: P2PHost.Configuration,
    _ body: @escaping @Sendable (P2PHost) async throws -> T
) async throws -> T {
    try await withHost(identity: identity, configuration: configuration) { host in
        try await untilShutdown(host: host) { try await body(host) }
    }
}

/// Connects to `address`, turning a failure into one line: what failed, then the root cause once.
///
/// A circuit address (`…/p2p-circuit/p2p/<peer>`) goes through the relay; the host first listens
/// on a TCP port (hole punching dials from it), and then waits (at most 20 s) for DCUtR to make
/// the connection direct, saying on stderr which it became: `direct via hole punching after N
/// ms`, `direct (the peer dialed our public address)` or why not. The connection returned is the direct one when there is one.
func connectPeer(_ host: P2PHost, to address: Multiaddr) async throws -> Connection {
    let relayed = address.isCircuit
    if relayed, !host.listenAddresses.contains(where: { $0.components.count == 2 && $0.tcpPort != nil }) {
        _ = try? await host.listen(on: Multiaddr([.ip4(IPv4Address(0, 0, 0, 0)), .tcp(0)]))
    }
    let connection: Connection
    do {
        connection = try await host.connect(to: address)
    } catch let error as HostError where error.code != .shutDown {
        throw CLIError("cannot connect to \(address): \(rootCause(of: error))")
    }
    guard relayed, connection.isLimited,
          let dcutr = host.configuration.services.lazy.compactMap({ $0 as? DCUtRService }).first
    else { return connection }
    let peer = connection.remotePeer
    let deadline = ContinuousClock.now + .seconds(20)
    while ContinuousClock.now < deadline {
        if let direct = host.connections(to: peer).first(where: { !$0.isLimited }) {
            // Our DCUtR side records an outcome only when the peer hole-punched with us; a peer
            // that simply dialed our public address (the unilateral upgrade) leaves none.
            if let outcome = dcutr.lastOutcome(for: peer) {
                printError(String(format: "connection to \(peer): direct via hole punching after %.0f ms", outcome.elapsed.seconds * 1000))
            } else {
                printError("connection to \(peer): direct (the peer dialed our public address)")
            }
            return direct
        }
        if let outcome = dcutr.lastOutcome(for: peer), !outcome.isDirect {
            printError("connection to \(peer): relayed (\(outcome))")
            return connection
        }
        try await Task.sleep(for: .milliseconds(50))
    }
    printError("connection to \(peer): relayed (no hole punch within 20 s)")
    return connection
}

/// An error the CLI reports as it is: one line, no "Error:" decoration beyond `error:`.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The innermost cause of `error`, said once: "connection refused", not "HostError.dialFailed:
/// could not connect to X (cause: TransportError.connectionRefused: cannot connect to X (cause:
/// connection reset (error set): Connection refused (errno: 111)))".
func rootCause(of error: any Error) -> String {
    switch error {
    case let error as TransportError:
        return error.reason.isEmpty ? error.message : error.reason
    case let error as PointSubError:
        return error.cause.map(rootCause(of:)) ?? error.message
    case let error as HostError:
        guard !error.causes.isEmpty else { return error.message }
        // One cause per address tried; the same cause from several addresses is said once.
        var causes: [String] = []
        for underlying in error.causes {
            let cause = rootCause(of: underlying)
            if !causes.contains(cause) { causes.append(cause) }
        }
        if error.code == .upgradeFailed { return "handshake failed: " + causes.joined(separator: "; ") }
        return causes.joined(separator: "; ")
    case let error as any CodedError:
        if let cause = error.cause { return rootCause(of: cause) }
        return error.message.isEmpty ? "\(error)" : error.message
    default:
        return "\(error)"
    }
}

/// One line for an error that ends a command: what failed, then the root cause once.
func describe(_ error: any Error) -> String {
    switch error {
    case let error as HostError:
        // "X supports none of /p": the message is the whole story; the multistream detail repeats it.
        guard error.cause != nil, error.code != .protocolNotSupported else { return error.message }
        return "\(error.message): \(rootCause(of: error))"
    case let error as PointSubError:
        switch error.code {
        case .protocolNotSupported:
            return error.message
        case .remote(let code):
            return "the server answered with an error (\(code)): \(error.message)"
        default:
            guard let cause = error.cause else { return error.message }
            return "\(error.message): \(rootCause(of: cause))"
        }
    case let error as TransportError:
        return error.message
    default:
        return "\(error)"
    }
}

/// Serves a started host (and what runs on it) until a signal: `metrics` stops last, then the
/// host, then `extra` first — each after the ones that depend on it.
func serveHost(_ host: P2PHost, metrics: MetricsServer?, extra: [any Service] = []) async throws {
    var services: [any Service] = []
    if let metrics { services.append(metrics) }
    services.append(host)
    services += extra
    try await serve(services)
}

/// For `--json`: how a connection made to a circuit address ended up, as one JSON object
/// (`{"type":"connection","direct":true,"hole_punch":"direct after 5 ms (1 attempt)",…}`);
/// nil for a direct address.
func connectionRecord(_ host: P2PHost, _ connection: Connection, address: Multiaddr) -> [String: Any]? {
    guard address.isCircuit else { return nil }
    let outcome = host.configuration.services.lazy.compactMap { $0 as? DCUtRService }.first?
        .lastOutcome(for: connection.remotePeer)
    var record: [String: Any] = [
        "type": "connection", "peer": connection.remotePeer.b58String, "relayed": true, "direct": !connection.isLimited,
    ]
    if let outcome {
        record["hole_punch"] = outcome.description
        if outcome.isDirect { record["hole_punch_ms"] = outcome.elapsed.seconds * 1000 }
    }
    return record
}
