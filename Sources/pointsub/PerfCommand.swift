import ArgumentParser
import Foundation
import PointSub

struct PerfCommand: CLICommand {
    static let configuration = CommandConfiguration(
        commandName: "perf",
        abstract: "Run a /perf/1.0.0 server (--listen / -l), or measure against one (MULTIADDR --upload --download).",
        discussion: """
            Progress goes to stderr once a second. With --json, stdout carries exactly one JSON line \
            (the results) and the text report goes to stderr.
            """)

    @OptionGroup var identity: IdentityOptions
    @OptionGroup var listenOptions: ListenOptions
    @OptionGroup var metricsOptions: MetricsOptions

    @Argument(help: "The perf server's multiaddr, ending in /p2p/<id>.")
    var address: String?

    @Option(help: "Bytes to upload (e.g. 100MiB, 1GB).", transform: ByteSize.parse)
    var upload: ByteSize = ByteSize(bytes: 0)

    @Option(help: "Bytes to download.", transform: ByteSize.parse)
    var download: ByteSize = ByteSize(bytes: 0)

    @Flag(help: "Print only one JSON line of the results on stdout (the text report goes to stderr).")
    var json = false

    var verbose: Bool { identity.verbose }

    func validate() throws {
        if address != nil && metricsOptions.metrics != nil {
            throw ValidationError("--metrics is for serving (-l / --listen), not with a MULTIADDR to measure against")
        }
        if address == nil && listenOptions.l == nil && listenOptions.listen.isEmpty {
            throw ValidationError("give --listen MULTIADDR (or -l PORT) to serve, or a MULTIADDR to measure against")
        }
    }

    func execute() async throws {
        let key = try identity.privateKey()
        guard let address else {
            let metrics = try await metricsOptions.start()
            let config = identity.configuration(listen: try listenOptions.addresses(), services: [PerfService(), EchoService()])
            try await withHost(identity: key, configuration: config) { host in
                await announce(host, listenOptions)
                try await serveHost(host, metrics: metrics)
            }
            return
        }
        let target = try parseAddress(address)
        let peer = try peerOf(target)
        let (up, down, json) = (upload.bytes, download.bytes, self.json)
        try await withClientHost(identity: key, configuration: identity.configuration()) { host in
            let clock = ContinuousClock()
            let start = clock.now
            _ = try await connectPeer(host, to: target)
            let connected = clock.now - start
            let result = try await PerfService.run(host: host, peer: peer, upload: up, download: down) { p in
                printError(String(
                    format: "… %.1f s: uploaded %llu, downloaded %llu bytes", p.elapsed.seconds, p.uploaded, p.downloaded))
            }
            let upRate = formatRate(bytes: result.uploadBytes, seconds: result.uploadTime.seconds)
            let downRate = formatRate(bytes: result.downloadBytes, seconds: result.downloadTime.seconds)
            // With --json, stdout is for the JSON line alone.
            func report(_ line: String) {
                if json { printError(line) } else { print(line) }
            }
            report("connected in \(String(format: "%.3f", connected.milliseconds)) ms")
            report("upload   \(result.uploadBytes) bytes in \(String(format: "%.3f", result.uploadTime.seconds)) s: \(upRate)")
            report("download \(result.downloadBytes) bytes in \(String(format: "%.3f", result.downloadTime.seconds)) s: \(downRate)")
            if json {
                try printJSON([
                    "type": "final",
                    "upload_bytes": result.uploadBytes, "download_bytes": result.downloadBytes,
                    "upload_seconds": result.uploadTime.seconds, "download_seconds": result.downloadTime.seconds,
                    "time_seconds": result.totalTime.seconds, "connect_seconds": connected.seconds,
                ])
            }
        }
    }
}
