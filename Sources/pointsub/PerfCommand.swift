import ArgumentParser
import Foundation
import PointSub

struct PerfCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perf",
        abstract: "Run a /perf/1.0.0 server (--listen / -l), or measure against one (MULTIADDR --upload --download).")

    @OptionGroup var identity: IdentityOptions
    @OptionGroup var listenOptions: ListenOptions

    @Argument(help: "The perf server's multiaddr, ending in /p2p/<id>.")
    var address: String?

    @Option(help: "Bytes to upload (e.g. 100MiB).")
    var upload: String = "0"

    @Option(help: "Bytes to download.")
    var download: String = "0"

    @Flag(help: "End with one JSON line of the results.")
    var json = false

    func validate() throws {
        if address == nil && listenOptions.l == nil && listenOptions.listen.isEmpty {
            throw ValidationError("give --listen MULTIADDR (or -l PORT) to serve, or a MULTIADDR to measure against")
        }
    }

    func run() async throws {
        let key = try identity.privateKey()
        guard let address else {
            let config = identity.configuration(listen: try listenOptions.addresses(), services: [PerfService(), EchoService()])
            try await withHost(identity: key, configuration: config) { host in
                printListenAddresses(host)
                await waitForTerminationSignal()
            }
            return
        }
        let target = try parseAddress(address)
        let peer = try peerOf(target)
        let up = try parseSize(upload)
        let down = try parseSize(download)
        let json = self.json
        try await withHost(identity: key, configuration: identity.configuration()) { host in
            let clock = ContinuousClock()
            let start = clock.now
            _ = try await host.connect(to: target)
            let connected = clock.now - start
            let result = try await PerfService.run(host: host, peer: peer, upload: up, download: down) { p in
                let line = String(
                    format: "… %.1f s: uploaded %llu, downloaded %llu bytes", p.elapsed.seconds, p.uploaded, p.downloaded)
                FileHandle.standardError.write(Data((line + "\n").utf8))
            }
            let upRate = formatRate(bytes: result.uploadBytes, seconds: result.uploadTime.seconds)
            let downRate = formatRate(bytes: result.downloadBytes, seconds: result.downloadTime.seconds)
            print("connected in \(String(format: "%.3f", connected.milliseconds)) ms")
            print("upload   \(result.uploadBytes) bytes in \(String(format: "%.3f", result.uploadTime.seconds)) s: \(upRate)")
            print("download \(result.downloadBytes) bytes in \(String(format: "%.3f", result.downloadTime.seconds)) s: \(downRate)")
            if json {
                let object: [String: Any] = [
                    "type": "final",
                    "upload_bytes": result.uploadBytes, "download_bytes": result.downloadBytes,
                    "upload_seconds": result.uploadTime.seconds, "download_seconds": result.downloadTime.seconds,
                    "time_seconds": result.totalTime.seconds, "connect_seconds": connected.seconds,
                ]
                let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            }
        }
    }
}
