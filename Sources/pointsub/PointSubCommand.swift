import ArgumentParser
import Foundation
import Logging
import NIOCore
import NIOPosix
import PointSub

@main
enum Main {
    static func main() async {
        TerminationSignal.shared.install()
        // Swift tasks run on NIO's event loops: no thread hop between a task and its connection.
        _ = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
        await PointSubCommand.main()
    }
}

struct PointSubCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pointsub",
        abstract: "A libp2p node in Swift: identity, echo, ping, perf, PointSub request/response, routes, pubsub chat.",
        subcommands: [
            IDCommand.self, KeygenCommand.self, EchoCommand.self, PingCommand.self, PerfCommand.self,
            ServeCommand.self, SendCommand.self, DemoCommand.self, RouteCommand.self, ChatCommand.self,
        ]
    )
}

/// `--seed N` or `--key FILE`; neither means a fresh random identity.
struct IdentityOptions: ParsableArguments {
    @Option(help: "Ed25519 secret key = the 32-byte little-endian encoding of N (test and demo convention).")
    var seed: UInt64?

    @Option(help: "A private key file (libp2p PrivateKey protobuf, as written by `pointsub keygen`).")
    var key: String?

    @Flag(name: .shortAndLong, help: "Log connection events to stderr.")
    var verbose = false

    func validate() throws {
        if seed != nil && key != nil { throw ValidationError("use --seed or --key, not both") }
    }

    func privateKey() throws -> PrivateKey {
        if let seed { return .ed25519(seed: seed) }
        if let key { return try KeyFile.read(path: key) }
        return .generateEd25519()
    }

    func configuration(listen: [Multiaddr] = [], services: [any HostService] = []) -> P2PHost.Configuration {
        var c = P2PHost.Configuration.defaults
        c.listenAddresses = listen
        c.services = services
        if verbose {
            var logger = Logger(label: "pointsub", factory: { StreamLogHandler.standardError(label: $0) })
            logger.logLevel = .debug
            c.logger = logger
        }
        return c
    }
}

struct IDCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "id", abstract: "Print the peer ID of an identity.")
    @OptionGroup var identity: IdentityOptions
    @Flag(help: "Print the CIDv1 (base32) form instead of base58.")
    var cid = false

    func run() async throws {
        let peer = PeerID(publicKey: try identity.privateKey().publicKey)
        print(cid ? peer.cidString : peer.b58String)
    }
}

struct KeygenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen", abstract: "Write a new Ed25519 identity to a key file and print its peer ID.")
    @Argument(help: "Where to write the key (created with mode 0600).")
    var path: String

    func run() async throws {
        let key = PrivateKey.generateEd25519()
        try KeyFile.write(key, to: path)
        print(PeerID(publicKey: key.publicKey))
    }
}

/// Listen options shared by serving commands: `-l PORT` or `--listen MULTIADDR`.
struct ListenOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: "Listen on this TCP port on 127.0.0.1 (0 picks a free one).")
    var l: Int?

    @Option(name: .long, help: "Listen on this multiaddr, e.g. /ip4/0.0.0.0/tcp/4001 (repeatable).")
    var listen: [String] = []

    func addresses(defaultPort: Int? = nil) throws -> [Multiaddr] {
        var out = try listen.map { try Multiaddr($0) }
        if let port = l ?? (out.isEmpty ? defaultPort : nil) {
            guard (0...65535).contains(port) else { throw ValidationError("port \(port) out of range") }
            out.append(try Multiaddr("/ip4/127.0.0.1/tcp/\(port)"))
        }
        return out
    }
}

func printListenAddresses(_ host: P2PHost) {
    for address in host.addresses { print(address) }
    fflush(nil)
}

func parseAddress(_ text: String) throws -> Multiaddr {
    do {
        return try Multiaddr(text)
    } catch {
        throw ValidationError("invalid multiaddr \(text): \(error)")
    }
}

func peerOf(_ address: Multiaddr) throws -> PeerID {
    guard let peer = address.peerID else {
        throw ValidationError("the address must end in /p2p/<peer id>: \(address)")
    }
    return peer
}
