import ArgumentParser
import Foundation
import NIOCore
import PointSub

/// `pointsub serve`: a PointSub request/response server with a built-in handler.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve PointSub requests on a protocol with a built-in handler (echo, reverse, upper).")

    enum Handler: String, ExpressibleByArgument, CaseIterable {
        case echo, reverse, upper
    }

    @OptionGroup var identity: IdentityOptions
    @OptionGroup var listenOptions: ListenOptions

    @Option(help: "The protocol ID to serve, e.g. /kv/1.0.0.")
    var `protocol`: String

    @Option(help: "What to answer: echo, reverse (byte order) or upper (ASCII upper case).")
    var handler: Handler = .echo

    func validate() throws {
        if listenOptions.l == nil && listenOptions.listen.isEmpty {
            throw ValidationError("give --listen MULTIADDR or -l PORT")
        }
    }

    func run() async throws {
        let config = identity.configuration(listen: try listenOptions.addresses())
        let protocolID = self.protocol
        let handler = self.handler
        try await withHost(identity: try identity.privateKey(), configuration: config) { host in
            let server = try PointSubServer(host: host)
            try server.start(protocolID) { request in
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
            printListenAddresses(host)
            await waitForTerminationSignal()
            await server.stop()
        }
    }
}
