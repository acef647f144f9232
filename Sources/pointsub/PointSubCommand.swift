import ArgumentParser
import Foundation
import Logging
import NIOCore
import NIOPosix
import PointSub

/// The version `pointsub --version` prints.
let pointsubVersion = "0.1.0"

@main
enum Main {
    static func main() async {
        TerminationSignal.shared.install()
        // Swift tasks run on NIO's event loops: no thread hop between a task and its connection.
        _ = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
        let parsed: any ParsableCommand
        do {
            parsed = try PointSubCommand.parseAsRoot()
        } catch {
            PointSubCommand.exit(withError: error)  // usage errors, --help and --version: ArgumentParser's way
        }
        do {
            var command = parsed
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error where isArgumentParserError(error) {
            // `--help` parses as ArgumentParser's own help command, whose run() throws its
            // (internal) help request: ArgumentParser prints the help for it.
            PointSubCommand.exit(withError: error)
        } catch {
            // One line: what failed, with the root cause once.
            printError("error: \(describe(error))")
            exit(1)
        }
        exit(0)
    }
}

/// Errors ArgumentParser handles itself: usage and validation errors, `--help` requests, exit
/// codes. Some of them are internal to it (the help request), so they are told by their module.
func isArgumentParserError(_ error: any Error) -> Bool {
    error is ExitCode || error is CleanExit || error is ValidationError
        || String(reflecting: type(of: error)).hasPrefix("ArgumentParser.")
}

struct PointSubCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pointsub",
        abstract: "A libp2p node in Swift: identity, echo, ping, perf, PointSub request/response, routes, pubsub chat.",
        discussion: """
            Every command ends cleanly on SIGINT or SIGTERM (servers finish what is in flight, for up \
            to a second) and then exits with 130 or 143 (128 + the signal's number); a second signal \
            ends it at once.
            """,
        version: pointsubVersion,
        subcommands: [
            IDCommand.self, KeygenCommand.self, EchoCommand.self, PingCommand.self, PerfCommand.self,
            ServeCommand.self, SendCommand.self, DemoCommand.self, RouteCommand.self, ChatCommand.self, DHTCommand.self, RelayCommand.self,
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

    @Option(help: "Security protocols offered, in order of preference: noise, tls, or both (noise,tls).")
    var security = "noise"

    @Flag(help: "Serving commands: do not announce and discover peers with mDNS on the local network.")
    var noMdns = false

    @Flag(help: "Serving commands: do not run AutoNAT v1 and v2 (ask peers to dial back; serve their requests).")
    var noAutonat = false

    @Option(help: "Serving commands: seconds before the first AutoNAT probe.")
    var autonatBootDelay: Int = 15

    @Option(help: "Serving commands: seconds between AutoNAT probes while the reachability is unknown.")
    var autonatRetry: Int = 90

    func validate() throws {
        if seed != nil && key != nil { throw ValidationError("use --seed or --key, not both") }
        guard autonatBootDelay >= 0, autonatRetry >= 1 else {
            throw ValidationError("--autonat-boot-delay must be ≥ 0 and --autonat-retry ≥ 1")
        }
        _ = try securityOptions()
    }

    /// `--security` as the host's list.
    func securityOptions() throws -> [SecurityOption] {
        let names = security.split(separator: ",", omittingEmptySubsequences: false).map {
            $0.trimmingCharacters(in: .whitespaces)
        }
        var options: [SecurityOption] = []
        for name in names {
            let option: SecurityOption
            switch name {
            case "noise": option = .noise
            case "tls": option = .tls
            default: throw ValidationError("unknown security protocol '\(name)' (use noise, tls or noise,tls)")
            }
            guard !options.contains(where: { $0.protocolID == option.protocolID }) else {
                throw ValidationError("--security names \(name) twice")
            }
            options.append(option)
        }
        return options
    }

    func privateKey() throws -> PrivateKey {
        if let seed { return .ed25519(seed: seed) }
        if let key { return try KeyFile.read(path: key) }
        return .generateEd25519()
    }

    /// mDNS on the interface of the first IPv4 listen address (127.0.0.1 keeps it on loopback; a
    /// wildcard uses the default interface). Each peer found is printed on stderr.
    static func mdns(for listen: [Multiaddr]) -> MDNSService {
        var configuration = MDNSService.Configuration()
        for address in listen {
            guard case .ip4(let ip)? = address.components.first else { continue }
            configuration.interfaceAddress = ip.bytes[0] == 127 ? "127.0.0.1" : ip.description
            break
        }
        configuration.onDiscovered = { peer, addresses in
            printError("mdns: found \(peer) at \(addresses.map(\.description).joined(separator: " "))")
        }
        return MDNSService(configuration: configuration)
    }

    /// AutoNAT v1 and v2 for a serving command: they probe connected peers and serve their
    /// requests. Each change is printed on stderr: the node's reachability from v1
    /// (`autonat: reachability private`), each address's from v2
    /// (`autonat v2: /ip4/…/tcp/4001 private`).
    func autonat() -> [any HostService] {
        var v1 = AutoNATService.Configuration()
        v1.bootDelay = .seconds(autonatBootDelay)
        v1.retryInterval = .seconds(autonatRetry)
        v1.onReachabilityChange = { printError("autonat: reachability \($0.rawValue)") }
        v1.logger = CLILogging.logger(verbose: verbose)
        var v2 = AutoNATv2Service.Configuration()
        v2.bootDelay = .seconds(autonatBootDelay)
        v2.retryInterval = .seconds(autonatRetry)
        v2.roundInterval = .seconds(min(autonatRetry, 10))
        v2.onAddressReachabilityChange = { printError("autonat v2: \($0) \($1.rawValue)") }
        v2.logger = CLILogging.logger(verbose: verbose)
        return [AutoNATService(configuration: v1), AutoNATv2Service(configuration: v2)]
    }

    /// Hosts made by the CLI let open streams finish for at most this long when a signal stops them.
    static let shutdownGracePeriod: Duration = .seconds(1)

    func configuration(listen: [Multiaddr] = [], services: [any HostService] = []) -> P2PHost.Configuration {
        var c = P2PHost.Configuration.defaults
        c.listenAddresses = listen
        // The CLI listens on and dials TCP and WebSocket addresses (`…/tcp/PORT/ws`).
        c.transports = [.tcp, .webSocket]
        // Checked by validate().
        c.security = (try? securityOptions()) ?? [.noise]
        c.services = services
        if !listen.isEmpty, !noMdns { c.services.append(Self.mdns(for: listen)) }
        if !listen.isEmpty, !noAutonat { c.services += autonat() }
        // Every CLI host hole-punches relayed connections (DCUtR); outcomes go to stderr.
        var dcutr = DCUtRService.Configuration()
        dcutr.onOutcome = { printError("hole punching with \($0.peer): \($0)") }
        dcutr.logger = CLILogging.logger(verbose: verbose)
        c.services.append(DCUtRService(configuration: dcutr))
        // Every CLI host dials circuit addresses (`…/p2p/<relay>/p2p-circuit/p2p/<peer>`) and
        // accepts the relayed connections of relays it reserved on (`--relay`).
        RelayClient().install(in: &c)
        c.shutdownGracePeriod = Self.shutdownGracePeriod
        c.logger = CLILogging.logger(verbose: verbose)
        return c
    }
}

struct IDCommand: CLICommand {
    static let configuration = CommandConfiguration(commandName: "id", abstract: "Print the peer ID of an identity.")
    @OptionGroup var identity: IdentityOptions
    @Flag(help: "Print the CIDv1 (base32) form instead of base58.")
    var cid = false

    func execute() async throws {
        let key = try identity.privateKey()
        printIdentity(key, cid: cid)
    }
}

/// The peer ID on the first line (alone, for scripts: `pointsub id … | head -1`), then the key type.
func printIdentity(_ key: PrivateKey, cid: Bool = false) {
    let peer = PeerID(publicKey: key.publicKey)
    print(cid ? peer.cidString : peer.b58String)
    print("key type: \(key.type)")
}

/// The key types `keygen --type` makes.
enum KeyTypeOption: String, ExpressibleByArgument, CaseIterable {
    case ed25519, secp256k1, ecdsa, rsa

    /// A fresh key of this type (ECDSA: P-256; RSA: 2048 bits; secp256k1 needs libsecp256k1).
    func generate() throws -> PrivateKey {
        switch self {
        case .ed25519: return .generateEd25519()
        case .secp256k1: return try .generateSecp256k1()
        case .ecdsa: return .generateECDSA()
        case .rsa: return try .generateRSA(bits: 2048)
        }
    }
}

struct KeygenCommand: CLICommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen", abstract: "Write a new identity to a key file and print its peer ID and key type.")
    @Argument(help: "Where to write the key (created with mode 0600).")
    var path: String

    @Option(help: "The key type: ed25519, secp256k1 (needs libsecp256k1 installed), ecdsa (P-256) or rsa (2048 bits).")
    var type: KeyTypeOption = .ed25519

    @Flag(help: "Replace the file if it exists (without it, an existing file is never touched).")
    var force = false

    func execute() async throws {
        let key = try type.generate()
        if force {
            try KeyFile.write(key, to: path)
        } else {
            try Self.writeNew(key, to: path)
        }
        printIdentity(key)
    }

    /// Writes the key to a temporary file beside `path`, then link(2)s it to `path`: link never
    /// replaces an existing file, so there is no window in which a file created meanwhile is lost.
    static func writeNew(_ key: PrivateKey, to path: String) throws {
        if FileManager.default.fileExists(atPath: path) { throw Self.exists(path) }
        let temporary = path + ".new-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try KeyFile.write(key, to: temporary)
        defer { unlink(temporary) }
        guard link(temporary, path) == 0 else {
            let code = errno
            if code == EEXIST { throw Self.exists(path) }
            throw CLIError("cannot write \(path): \(String(cString: strerror(code)).lowercased())")
        }
    }

    private static func exists(_ path: String) -> CLIError {
        CLIError("\(path) exists; not overwriting it (use --force to replace it)")
    }
}

/// Listen options shared by serving commands: `-l PORT` and/or `--listen MULTIADDR` (repeatable, any
/// transport the CLI's hosts have: TCP, WebSocket).
struct ListenOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: "Listen on this TCP port on 127.0.0.1 (0 picks a free one).")
    var l: Int?

    @Option(
        name: .long,
        help: "Listen on this multiaddr: TCP (/ip4/0.0.0.0/tcp/4001) or WebSocket (/ip4/127.0.0.1/tcp/0/ws); repeatable.")
    var listen: [String] = []

    @Option(
        name: .long,
        help: "Reserve a slot on this relay (a multiaddr ending in /p2p/<relay id>) and print the /p2p-circuit address others reach this node on; repeatable.")
    var relay: [String] = []

    func validate() throws {
        for text in relay { _ = try peerOf(try parseAddress(text)) }
    }

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

/// Prints the listen addresses, then reserves on each `--relay` (keeping the reservation) and
/// prints this node's circuit address there as soon as it is usable. A relay that refuses is
/// reported on stderr; the node keeps serving on its other addresses.
func announce(_ host: P2PHost, _ listen: ListenOptions) async {
    printListenAddresses(host)
    guard !listen.relay.isEmpty else { return }
    guard let client = host.configuration.services.lazy.compactMap({ $0 as? RelayClient }).first else { return }
    for text in listen.relay {
        do {
            let reservation = try await client.keepReservation(on: try parseAddress(text))
            for address in reservation.circuitAddresses { print(address.appending(peerID: host.peerID)) }
            fflush(nil)
        } catch {
            printError("relay \(text): no reservation: \(error)")
        }
    }
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
