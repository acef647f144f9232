import ArgumentParser
import Foundation
import PointSub

/// `pointsub dht …`: a Kademlia DHT server node, and one-shot queries through bootstrap peers.
struct DHTCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dht",
        abstract: "Kademlia DHT (/ipfs/kad/1.0.0): serve a node, find peers and providers, put and get records.",
        subcommands: [
            DHTServeCommand.self, DHTFindPeerCommand.self, DHTProvideCommand.self, DHTFindProvidersCommand.self,
            DHTPutCommand.self, DHTGetCommand.self,
        ])
}

/// What every DHT command takes: the identity, bootstrap peers, the protocol, JSON output.
struct DHTOptions: ParsableArguments {
    @Option(help: "A DHT node to start from (a multiaddr ending in /p2p/<id>); repeatable.")
    var bootstrap: [String] = []

    @Option(help: "The DHT protocol ID (a network of its own uses /<name>/kad/1.0.0).")
    var dhtProtocol = "/ipfs/kad/1.0.0"

    @Flag(help: "Print JSON instead of text.")
    var json = false

    func bootstrapAddresses() throws -> [Multiaddr] { try bootstrap.map(parseAddress) }

    func dht(mode: KademliaDHT.Mode) throws -> KademliaDHT {
        var configuration = KademliaDHT.Configuration()
        configuration.protocolID = dhtProtocol
        configuration.mode = mode
        configuration.bootstrapPeers = try bootstrapAddresses()
        return KademliaDHT(configuration: configuration)
    }
}

/// Runs a one-shot DHT query: a client-mode node, bootstrapped, then `body`.
private func withQueryNode<T: Sendable>(
    _ identity: IdentityOptions, _ options: DHTOptions, listen: [Multiaddr] = [], mode: KademliaDHT.Mode = .client,
    _ body: @escaping @Sendable (P2PHost, KademliaDHT) async throws -> T
) async throws -> T {
    guard !options.bootstrap.isEmpty else { throw ValidationError("give at least one --bootstrap peer") }
    let dht = try options.dht(mode: mode)
    return try await withClientHost(
        identity: try identity.privateKey(), configuration: identity.configuration(listen: listen, services: [dht])
    ) { host in
        defer { dht.stop() }
        guard await dht.bootstrap() > 0 else {
            throw KademliaError(.notFound, "no bootstrap peer answered")
        }
        return try await body(host, dht)
    }
}

/// The multihash bytes of a CID given as text (the DHT key of its provider records).
private func providerKey(_ text: String) throws -> [UInt8] {
    do {
        return try CID(text).multihash.bytes
    } catch {
        throw ValidationError("invalid CID \(text): \(error)")
    }
}

/// A record key as text: `/pk/<peer ID>` and `/ipns/<peer ID>` become the prefix and the peer
/// ID's bytes (as go writes them); any other key is taken as its UTF-8 bytes.
private func recordKey(_ text: String) throws -> [UInt8] {
    for prefix in ["/pk/", "/ipns/"] where text.hasPrefix(prefix) {
        guard let peer = PeerID(String(text.dropFirst(prefix.count))) else {
            throw ValidationError("a \(prefix) key is \(prefix)<peer ID>; \(text.dropFirst(prefix.count)) is not a peer ID")
        }
        return Array(prefix.utf8) + peer.bytes
    }
    return Array(text.utf8)
}

struct DHTServeCommand: CLICommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run a DHT server node: print its addresses (ending in /p2p/<id>), answer queries until SIGINT.")

    @OptionGroup var identity: IdentityOptions
    @OptionGroup var listenOptions: ListenOptions
    @OptionGroup var options: DHTOptions

    var verbose: Bool { identity.verbose }

    func execute() async throws {
        let dht = try options.dht(mode: .server)
        let config = identity.configuration(listen: try listenOptions.addresses(defaultPort: 0), services: [dht])
        try await withHost(identity: try identity.privateKey(), configuration: config) { host in
            await announce(host, listenOptions)
            if !options.bootstrap.isEmpty {
                let answered = await dht.bootstrap()
                printError("bootstrapped: \(answered) of \(options.bootstrap.count) peer(s) answered")
            }
            try await serveHost(host, metrics: nil)
            dht.stop()
        }
    }
}

struct DHTFindPeerCommand: CLICommand {
    static let configuration = CommandConfiguration(
        commandName: "find-peer", abstract: "Find a peer's addresses through the DHT.")

    @OptionGroup var identity: IdentityOptions
    @OptionGroup var options: DHTOptions

    @Argument(help: "The peer ID to find.")
    var peer: String

    var verbose: Bool { identity.verbose }

    func execute() async throws {
        guard let target = PeerID(peer) else { throw ValidationError("\(peer) is not a peer ID") }
        let json = options.json
        try await withQueryNode(identity, options) { _, dht in
            let addresses = try await dht.findPeer(target)
            if json {
                try printJSON(["peer": target.b58String, "addresses": addresses.map(\.description)])
            } else {
                for address in addresses { print(address.appending(peerID: target)) }
            }
        }
    }
}

struct DHTProvideCommand: CLICommand {
    static let configuration = CommandConfiguration(
        commandName: "provide",
        abstract: "Announce that this node provides a CID, then stay reachable for --stay seconds.")

    @OptionGroup var identity: IdentityOptions
    @OptionGroup var listenOptions: ListenOptions
    @OptionGroup var options: DHTOptions

    @Argument(help: "The CID (multibase text, e.g. bafk…).")
    var cid: String

    @Option(help: "Seconds to stay online after announcing (providers must be reachable to be useful).")
    var stay: Int = 0

    var verbose: Bool { identity.verbose }

    func validate() throws {
        guard (0...86_400).contains(stay) else { throw ValidationError("--stay must be 0 to 86400 seconds") }
    }

    func execute() async throws {
        let key = try providerKey(cid)
        let (json, stay, cid) = (options.json, stay, cid)
        // A provider others can dial: it listens (on an ephemeral port unless told otherwise).
        try await withQueryNode(identity, options, listen: try listenOptions.addresses(defaultPort: 0), mode: .server) {
            host, dht in
            let took = try await dht.provide(key)
            if json {
                try printJSON(["cid": cid, "peer": host.peerID.b58String, "stored_at": took])
            } else {
                print("announced \(cid) as \(host.peerID) to \(took) peer(s)")
                fflush(nil)
            }
            if stay > 0 { try await Task.sleep(for: .seconds(stay)) }
        }
    }
}

struct DHTFindProvidersCommand: CLICommand {
    static let configuration = CommandConfiguration(
        commandName: "find-providers", abstract: "Find the peers that provide a CID.")

    @OptionGroup var identity: IdentityOptions
    @OptionGroup var options: DHTOptions

    @Argument(help: "The CID (multibase text).")
    var cid: String

    @Option(help: "Stop after this many providers.")
    var count: Int = 20

    var verbose: Bool { identity.verbose }

    func validate() throws {
        guard (1...1000).contains(count) else { throw ValidationError("--count must be 1 to 1000") }
    }

    func execute() async throws {
        let key = try providerKey(cid)
        let (json, count, cid) = (options.json, count, cid)
        try await withQueryNode(identity, options) { _, dht in
            let providers = try await dht.findProviders(key, count: count)
            if json {
                try printJSON([
                    "cid": cid,
                    "providers": providers.map { ["peer": $0.peer.b58String, "addresses": $0.addresses.map(\.description)] },
                ])
            } else if providers.isEmpty {
                print("no providers of \(cid) found")
            } else {
                for provider in providers {
                    print(provider.peer, provider.addresses.map(\.description).joined(separator: " "))
                }
            }
        }
    }
}

struct DHTPutCommand: CLICommand {
    static let configuration = CommandConfiguration(
        commandName: "put",
        abstract: "Store a record (validated by its namespace): /pk/<peer ID> → that peer's public key, or a signed IPNS record under /ipns/<peer ID>.")

    @OptionGroup var identity: IdentityOptions
    @OptionGroup var options: DHTOptions

    @Argument(help: "The key: /pk/<peer ID>, /ipns/<peer ID>, or /<namespace>/<text>.")
    var key: String

    @Argument(help: "A file with the value's bytes.")
    var valueFile: String?

    @Option(help: "Instead of a value file: the public key of this key file (the value of its /pk record).")
    var publicKeyOf: String?

    @Option(help: "Instead of a value file: make an IPNS record signed with this key file (the key's peer ID is the name).")
    var ipnsKey: String?

    @Option(help: "With --ipns-key: what the name points at (a path such as /ipfs/<cid>).")
    var value: String?

    @Option(help: "With --ipns-key: the record's sequence number (higher replaces lower).")
    var sequence: UInt64 = 0

    @Option(help: "With --ipns-key: seconds the record stays valid (its EOL is now plus this; go's default 48 h).")
    var lifetime: Int = 48 * 3600

    @Option(help: "With --ipns-key: seconds resolvers may cache the record (its TTL).")
    var ttl: Int = 3600

    var verbose: Bool { identity.verbose }

    func validate() throws {
        let sources = [valueFile != nil, publicKeyOf != nil, ipnsKey != nil].filter { $0 }.count
        guard sources == 1 else { throw ValidationError("give a VALUE-FILE, --public-key-of KEYFILE or --ipns-key KEYFILE") }
        guard (ipnsKey == nil) == (value == nil) else { throw ValidationError("--ipns-key and --value go together") }
        guard (1...365 * 86_400).contains(lifetime) else { throw ValidationError("--lifetime must be 1 to 31536000 seconds") }
        guard (0...365 * 86_400).contains(ttl) else { throw ValidationError("--ttl must be 0 to 31536000 seconds") }
    }

    func execute() async throws {
        let keyBytes = try recordKey(key)
        let data: Data
        if let publicKeyOf {
            data = Data(try KeyFile.read(path: publicKeyOf).publicKey.marshal())
        } else if let ipnsKey, let value {
            let signer = try KeyFile.read(path: ipnsKey)
            guard keyBytes == IPNSRecord.routingKey(for: PeerID(publicKey: signer.publicKey)) else {
                throw ValidationError("the key of \(ipnsKey) is \(PeerID(publicKey: signer.publicKey)): use /ipns/<that peer ID>")
            }
            let record = try IPNSRecord.make(
                value: value, sequence: sequence, validity: Date().addingTimeInterval(Double(lifetime)),
                ttl: .seconds(ttl), key: signer)
            data = Data(record.encoded())
        } else if let valueFile, let contents = FileManager.default.contents(atPath: valueFile) {
            data = contents
        } else {
            throw ValidationError("cannot read \(valueFile ?? "")")
        }
        guard data.count <= KadMessage.Limits().maxValueSize else {
            throw ValidationError("the value has \(data.count) bytes; records hold at most \(KadMessage.Limits().maxValueSize)")
        }
        let (json, key) = (options.json, key)
        let value = [UInt8](data)
        try await withQueryNode(identity, options) { _, dht in
            let took = try await dht.putValue(value, for: keyBytes)
            if json {
                try printJSON(["key": key, "bytes": value.count, "stored_at": took])
            } else {
                print("stored \(value.count) bytes under \(key) at \(took) peer(s)")
            }
        }
    }
}

struct DHTGetCommand: CLICommand {
    static let configuration = CommandConfiguration(
        commandName: "get",
        abstract: "Read a record; prints its value (base64 with --json, raw bytes otherwise; an IPNS record decoded).")

    @OptionGroup var identity: IdentityOptions
    @OptionGroup var options: DHTOptions

    @Argument(help: "The key: /pk/<peer ID>, /ipns/<peer ID>, or /<namespace>/<text>.")
    var key: String

    var verbose: Bool { identity.verbose }

    func execute() async throws {
        let keyBytes = try recordKey(key)
        let (json, key) = (options.json, key)
        try await withQueryNode(identity, options) { _, dht in
            let value = try await dht.getValue(keyBytes)
            if key.hasPrefix("/ipns/") {
                // Validated by the DHT already: decode it for display.
                let record = try IPNSRecord(decoding: value)
                let fields = ipnsFields(record)
                if json {
                    try printJSON(fields.merging(["key": key, "record_base64": Data(value).base64EncodedString()]) { a, _ in a })
                } else {
                    for name in ["value", "sequence", "validity", "ttl_seconds"] { print("\(name): \(fields[name] ?? "")") }
                }
            } else if json {
                try printJSON(["key": key, "value_base64": Data(value).base64EncodedString()])
            } else {
                FileHandle.standardOutput.write(Data(value))
            }
        }
    }
}

/// The signed fields of an IPNS record, for printing.
private func ipnsFields(_ record: IPNSRecord) -> [String: String] {
    [
        "value": record.signedValue.map { String(decoding: $0, as: UTF8.self) } ?? "",
        "sequence": record.signedSequence.map { String($0) } ?? "",
        "validity": record.expiry?.rfc3339 ?? "",
        "ttl_seconds": record.signedTTL.map { String(Double($0) / 1e9) } ?? "",
    ]
}
