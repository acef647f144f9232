import ArgumentParser
import Foundation
import PointSub

/// `pointsub relay`: a Circuit Relay v2 relay (hop service) for nodes that cannot be dialed.
struct RelayCommand: CLICommand {
    static let configuration = CommandConfiguration(
        commandName: "relay",
        abstract: "Run a circuit relay (v2): print its addresses (ending in /p2p/<id>), relay until SIGINT.",
        discussion: """
            Nodes reserve a slot with `--relay ADDR` on their serving commands and are then reached at \
            ADDR/p2p-circuit/p2p/<their id>. Each relayed connection is limited in time and bytes \
            (--circuit-seconds, --circuit-bytes; 0 lifts a limit).
            """)

    @OptionGroup var identity: IdentityOptions
    @OptionGroup var listenOptions: ListenOptions
    @OptionGroup var metricsOptions: MetricsOptions

    @Option(help: "Most reservations held at once.")
    var maxReservations = 128

    @Option(help: "Longest life of a relayed connection, in seconds (0: no limit).")
    var circuitSeconds: UInt32 = 120

    @Option(help: "Most bytes relayed in each direction of a relayed connection (0: no limit).")
    var circuitBytes: UInt64 = 1 << 17

    @Option(help: "How long a reservation lasts, in seconds (clients refresh before).")
    var reservationSeconds = 3600

    var verbose: Bool { identity.verbose }

    func validate() throws {
        guard maxReservations > 0 else { throw ValidationError("--max-reservations must be positive") }
        guard reservationSeconds >= 10 else { throw ValidationError("--reservation-seconds must be at least 10") }
    }

    func execute() async throws {
        let metrics = try await metricsOptions.start()
        var relayConfiguration = RelayService.Configuration()
        relayConfiguration.limits.maxReservations = maxReservations
        relayConfiguration.reservationTTL = .seconds(reservationSeconds)
        relayConfiguration.circuitLimit = circuitSeconds == 0 && circuitBytes == 0
            ? nil : RelayLimit(duration: circuitSeconds, data: circuitBytes)
        relayConfiguration.logger = CLILogging.logger(verbose: verbose)
        let relay = RelayService(configuration: relayConfiguration)
        let config = identity.configuration(
            listen: try listenOptions.addresses(defaultPort: 0), services: [IdentifyService(), PingService(), relay])
        try await withHost(identity: try identity.privateKey(), configuration: config) { host in
            await announce(host, listenOptions)
            try await serveHost(host, metrics: metrics)
            relay.stop()
            let counters = relay.counters
            printError("relay: \(counters.reservationsAccepted) reservation(s), \(counters.circuitsOpened) circuit(s)")
        }
    }
}
