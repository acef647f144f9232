import Foundation
import NIOCore
import PointSub
import Testing

/// AutoNAT v2: the wire format byte by byte, the per-address table, and client and server on
/// real hosts (TCP on 127.0.0.x): nonces, dial data, refusals, lying servers, floods.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct AutoNATv2Tests {
    // MARK: - Wire

    @Test func messageBytes() throws {
        let address = Multiaddr("/ip4/1.2.3.4/tcp/4001")
        let request = AutoNATv2Message.dialRequest(.init(addresses: [address], nonce: 0x0102_0304_0506_0708))
        // Message { dialRequest (1) { addrs (1), nonce (2, fixed64 little endian) } }
        let inner: [UInt8] = [0x0a, UInt8(address.bytes.count)] + address.bytes + [0x11, 8, 7, 6, 5, 4, 3, 2, 1]
        #expect(request.encoded() == [0x0a, UInt8(inner.count)] + inner)
        #expect(try AutoNATv2Message(decoding: request.encoded()) == request)

        let response = AutoNATv2Message.dialResponse(.init(status: .ok, addressIndex: 1, dialStatus: .ok))
        // status 200 and dial status 200 are two-byte varints (0xc8 0x01).
        #expect(response.encoded() == [0x12, 0x08, 0x08, 0xc8, 0x01, 0x10, 0x01, 0x18, 0xc8, 0x01])
        #expect(try AutoNATv2Message(decoding: response.encoded()) == response)

        let dataRequest = AutoNATv2Message.dialDataRequest(.init(addressIndex: 0, byteCount: 30_000))
        #expect(dataRequest.encoded() == [0x1a, 0x06, 0x08, 0x00, 0x10, 0xb0, 0xea, 0x01])
        #expect(try AutoNATv2Message(decoding: dataRequest.encoded()) == dataRequest)

        let data = AutoNATv2Message.dialDataResponse(.init(count: 4096))
        #expect(Array(data.encoded().prefix(6)) == [0x22, 0x83, 0x20, 0x0a, 0x80, 0x20])
        #expect(try AutoNATv2Message(decoding: data.encoded()) == data)

        #expect(AutoNATv2DialBack.encode(nonce: 1) == [0x09, 1, 0, 0, 0, 0, 0, 0, 0])
        #expect(try AutoNATv2DialBack.decodeNonce([0x09, 1, 0, 0, 0, 0, 0, 0, 0]) == 1)
        #expect(AutoNATv2DialBack.encodeResponse().isEmpty)
        try AutoNATv2DialBack.decodeResponse([])
        try AutoNATv2DialBack.decodeResponse([0x08, 0x00])
    }

    @Test func badMessagesAreTypedErrors() {
        func code(_ bytes: [UInt8]) -> AutoNATError.Code? {
            do { _ = try AutoNATv2Message(decoding: bytes); return nil } catch { return error.code }
        }
        #expect(code([]) == .malformedMessage)                                     // nothing set
        #expect(code([0x0a, 0x00]) == .malformedMessage)                           // request without nonce
        #expect(code([0x0a, 0x02, 0x10, 0x01]) == .malformedMessage)               // nonce as a varint
        #expect(code([0x12, 0x03, 0x08, 0xc9, 0x01]) == .malformedMessage)         // unknown status 201
        #expect(code([0x12, 0x03, 0x08, 0x64, 0x00]) == .malformedMessage)         // trailing garbage
        #expect(code([0x12, 0x02, 0x18, 0x05]) == .malformedMessage)               // unknown dial status
        #expect(code([0x1a, 0x06, 0x08, 0x80, 0x80, 0x80, 0x80, 0x10]) == .malformedMessage)  // index beyond uint32
        #expect(code([0x0a, 0x05, 0x0a]) == .malformedMessage)                     // truncated
        #expect(code([UInt8](repeating: 0, count: AutoNATv2Message.maxMessageSize + 1)) == .limitExceeded)
        #expect(code([0x2a, 0x00, 0x22, 0x00]) == nil)                             // unknown field skipped
        // Unparsable addresses keep their index (the response's addrIdx counts them).
        let request = try? AutoNATv2Message(decoding: [0x0a, 0x0d, 0x0a, 0x02, 0xff, 0xff] + [0x11, 0, 0, 0, 0, 0, 0, 0, 0])
        if case .dialRequest(let parsed)? = request {
            #expect(parsed.addresses == [nil])
        } else {
            Issue.record("a request with an unparsable address is still a request")
        }
        #expect(throws: AutoNATError.self) { try AutoNATv2DialBack.decodeNonce([]) }
        #expect(throws: AutoNATError.self) { try AutoNATv2DialBack.decodeResponse([0x08, 0x01]) }
    }

    // MARK: - Table

    @Test func tableNeedsAgreeingAnswers() {
        var table = AddressReachabilityTable(confirmations: 3, capacity: 2)
        func record(_ address: Multiaddr, _ reachable: Bool) -> Bool { table.record(address, reachable: reachable) }
        let a = Multiaddr("/ip4/1.2.3.4/tcp/1"), b = Multiaddr("/ip4/1.2.3.4/tcp/2"), c = Multiaddr("/ip4/1.2.3.4/tcp/3")
        #expect(!record(a, true))
        #expect(!record(a, false))
        #expect(!record(a, true))
        #expect(table.status(of: a) == .unknown)
        #expect(record(a, true))
        #expect(table.status(of: a) == .public)
        // The window is the last 5 results (T F T T F): still a majority of successes.
        #expect(!record(a, false))
        #expect(table.status(of: a) == .public)
        // F T T F F: the failures have it.
        #expect(record(a, false))
        #expect(table.status(of: a) == .private)
        #expect(table.overall == .private)
        for _ in 0..<3 { table.record(b, reachable: true) }
        #expect(table.overall == .public)
        // Capacity: a third address is not tracked.
        #expect(!record(c, true))
        #expect(table.entries.count == 2)
        let forgot = table.keep(only: [b])
        #expect(forgot)
        #expect(table.known == [b: .public])
    }

    @Test func dueAddressesComeInOrderOfNeed() {
        var table = AddressReachabilityTable(confirmations: 1)
        let start = ContinuousClock.now
        let known = Multiaddr("/ip4/1.2.3.4/tcp/1"), unknown = Multiaddr("/ip4/1.2.3.4/tcp/2"), fresh = Multiaddr("/ip4/1.2.3.4/tcp/3")
        table.markTested(known, now: start)
        table.record(known, reachable: true)
        table.markTested(unknown, now: start)
        let all = [known, unknown, fresh]
        #expect(table.due(all, now: start + .seconds(1), retryInterval: .seconds(90), recheckInterval: .seconds(3600)) == [fresh])
        #expect(table.due(all, now: start + .seconds(100), retryInterval: .seconds(90), recheckInterval: .seconds(3600)) == [fresh, unknown])
        #expect(table.due(all, now: start + .seconds(4000), retryInterval: .seconds(90), recheckInterval: .seconds(3600)) == [fresh, unknown, known])
    }

    // MARK: - On hosts

    static func service(serve: Bool = true, _ adjust: (inout AutoNATv2Service.Configuration) -> Void = { _ in }) -> AutoNATv2Service {
        var configuration = AutoNATv2Service.Configuration()
        configuration.serve = serve
        configuration.allowPrivateAddresses = true
        configuration.probeAutomatically = false
        configuration.dialTimeout = .seconds(5)
        configuration.requestTimeout = .seconds(20)
        adjust(&configuration)
        return AutoNATv2Service(configuration: configuration)
    }

    static func withHost<T: Sendable>(
        seed: UInt64, listen: [String] = ["/ip4/127.0.0.1/tcp/0"], announce: [String] = [], services: [any HostService],
        _ body: (P2PHost) async throws -> T
    ) async throws -> T {
        var configuration = P2PHost.Configuration.defaults
        configuration.services = [IdentifyService()] + services
        configuration.listenAddresses = try listen.map { try Multiaddr($0) }
        configuration.announceAddresses = try announce.map { try Multiaddr($0) }
        return try await PointSub.withHost(identity: .ed25519(seed: seed), configuration: configuration) { host in
            defer { for case let service as AutoNATv2Service in services { service.stop() } }
            return try await body(host)
        }
    }

    /// Connects `client` to `server` and waits until identify says the server speaks v2.
    static func connect(_ client: P2PHost, to server: P2PHost) async throws {
        _ = try await client.connect(to: server.addresses[0])
        try await AutoNATTests.until {
            client.peerstore.protocols(for: server.peerID).contains(AutoNATv2Message.dialRequestProtocol)
        }
    }

    /// A listening client: the nonce comes back on a new connection; after three answers the
    /// address is public and the node too. An address where nothing listens: three dial errors
    /// make it private, and the host stops advertising it.
    @Test func addressesAreTestedOneByOne() async throws {
        let server = Self.service()
        try await Self.withHost(seed: 401, services: [server]) { serverHost in
            let closed = "/ip4/127.0.0.1/tcp/\(try Self.closedPort())"
            let closedAddress = try Multiaddr(closed)
            let client = Self.service(serve: false)
            try await Self.withHost(seed: 402, services: [client]) { clientHost in
                let listening = clientHost.listenAddresses[0]
                try await Self.connect(clientHost, to: serverHost)
                let updates = client.updates()
                var iterator = updates.makeAsyncIterator()
                #expect(await iterator.next() == .unknown)
                for round in 1...3 {
                    let result = try await client.probe([listening], using: serverHost.peerID)
                    #expect(result.response.status == .ok)
                    #expect(result.response.dialStatus == .ok)
                    #expect(result.address == listening)
                    #expect(result.reachable == true)
                    #expect(client.reachability(of: listening) == (round == 3 ? .public : .unknown))
                }
                #expect(client.reachability == .public)
                #expect(await iterator.next() == .public)
                // The first connection stays; the dial-back connections were closed.
                try await AutoNATTests.until { clientHost.connections(to: serverHost.peerID).count == 1 }
            }

            let other = Self.service(serve: false)
            try await Self.withHost(seed: 403, announce: [closed], services: [other]) { clientHost in
                try await Self.connect(clientHost, to: serverHost)
                #expect(clientHost.advertisedAddresses.map(\.description).contains(closed))
                for _ in 1...3 {
                    let result = try await other.probe([closedAddress], using: serverHost.peerID)
                    #expect(result.response.status == .ok)
                    #expect(result.response.dialStatus == .dialError)
                    #expect(result.reachable == false)
                }
                #expect(other.reachability(of: closedAddress) == .private)
                #expect(other.reachability == .private)
                #expect(!clientHost.advertisedAddresses.map(\.description).contains(closed))
            }
            #expect(server.counters.dialBacks[.ok] == 3)
            #expect(server.counters.dialBacks[.dialError] == 3)
            #expect(server.counters.dialDataRequested == 0)
        }
    }

    /// An address on another IP than the one the client is seen at costs dial data first: the
    /// client pays (and is dialed there), or refuses the price and the request is aborted.
    @Test func anotherIPCostsDialData() async throws {
        let server = Self.service()
        try await Self.withHost(seed: 411, services: [server]) { serverHost in
            let client = Self.service(serve: false)
            try await Self.withHost(seed: 412, listen: ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.2/tcp/0"], services: [client]) { clientHost in
                try await Self.connect(clientHost, to: serverHost)
                let elsewhere = try #require(clientHost.listenAddresses.first { $0.description.hasPrefix("/ip4/127.0.0.2/") })
                let result = try await client.probe([elsewhere], using: serverHost.peerID)
                #expect(result.reachable == true)
                #expect(server.counters.dialDataRequested == 1)
            }
            let stingy = Self.service(serve: false) { $0.maxDialDataBytes = 1000 }
            try await Self.withHost(seed: 413, listen: ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.2/tcp/0"], services: [stingy]) { clientHost in
                try await Self.connect(clientHost, to: serverHost)
                let elsewhere = try #require(clientHost.listenAddresses.first { $0.description.hasPrefix("/ip4/127.0.0.2/") })
                let error = await #expect(throws: AutoNATError.self) { try await stingy.probe([elsewhere], using: serverHost.peerID) }
                #expect(error?.code == .refused)
                #expect(stingy.reachability(of: elsewhere) == .unknown)
                try await AutoNATTests.until { server.counters.badRequests == 1 }
                #expect(server.counters.dialBacks[.ok] == 1)
            }
        }
    }

    /// The server dials only the first address it is willing to dial; private ones are refused
    /// unless allowed; a flood from one peer is rejected; the address of another peer gets a
    /// dial error (its key is not the requester's), never its nonce.
    @Test func refusalsAndRateLimits() async throws {
        let strict = Self.service { $0.allowPrivateAddresses = false; $0.requestsPerPeerPerMinute = 3 }
        try await Self.withHost(seed: 421, services: [strict]) { serverHost in
            let client = Self.service(serve: false)
            try await Self.withHost(seed: 422, services: [client]) { clientHost in
                try await Self.connect(clientHost, to: serverHost)
                let refused = try await client.probe(clientHost.listenAddresses, using: serverHost.peerID)
                #expect(refused.response.status == .dialRefused)
                #expect(refused.reachable == nil)
                _ = try await client.probe(clientHost.listenAddresses, using: serverHost.peerID)
                _ = try await client.probe(clientHost.listenAddresses, using: serverHost.peerID)
                let flood = try await client.probe(clientHost.listenAddresses, using: serverHost.peerID)
                #expect(flood.response.status == .requestRejected)
                #expect(strict.counters.served[.requestRejected] == 1)
                #expect(strict.counters.served[.dialRefused] == 3)
            }
        }
        let server = Self.service()
        try await Self.withHost(seed: 431, services: [server]) { serverHost in
            try await Self.withHost(seed: 433, services: [Self.service(serve: false)]) { victim in
                let client = Self.service(serve: false)
                try await Self.withHost(seed: 432, services: [client]) { clientHost in
                    try await Self.connect(clientHost, to: serverHost)
                    // Unparsable and relayed addresses are skipped: the victim's comes first.
                    let result = try await client.probe(
                        [Multiaddr("/ip4/127.0.0.1/tcp/1/p2p/\(victim.peerID)/p2p-circuit")] + victim.listenAddresses,
                        using: serverHost.peerID)
                    #expect(result.response.addressIndex == 1)
                    #expect(result.reachable == false)
                    #expect(victim.connections(to: serverHost.peerID).isEmpty)
                }
            }
        }
    }

    /// A server that claims a dial-back it never made is not believed; a dial-back carrying a
    /// nonce we never sent is reset; garbage to a server is dropped and the next honest
    /// request is served; so is a dial data chunk over 4096 bytes.
    @Test func liesAndGarbageAreRefused() async throws {
        var liarConfiguration = P2PHost.Configuration.defaults
        liarConfiguration.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")]
        try await PointSub.withHost(identity: .ed25519(seed: 441), configuration: liarConfiguration) { liar in
            try liar.setStreamHandler(AutoNATv2Message.dialRequestProtocol) { stream in
                _ = try? await stream.readLengthPrefixed(maxLength: AutoNATv2Message.maxMessageSize)
                try? await stream.writeLengthPrefixed(
                    AutoNATv2Message.dialResponse(.init(status: .ok, addressIndex: 0, dialStatus: .ok)).encoded())
                await stream.close()
            }
            let client = Self.service(serve: false)
            try await Self.withHost(seed: 442, services: [client]) { clientHost in
                _ = try await clientHost.connect(to: liar.addresses[0])
                let error = await #expect(throws: AutoNATError.self) {
                    try await client.probe(clientHost.listenAddresses, using: liar.peerID)
                }
                #expect(error?.code == .malformedMessage)
                #expect(client.reachability(of: clientHost.listenAddresses[0]) == .unknown)
                #expect(client.counters.probeFailures == 1)

                // The liar delivers a nonce of its own making.
                let dialBack = try await liar.newStream(to: clientHost.peerID, protocols: [AutoNATv2Message.dialBackProtocol])
                try await dialBack.writeLengthPrefixed(AutoNATv2DialBack.encode(nonce: 42))
                let answer = try? await dialBack.readLengthPrefixed(maxLength: 100)
                #expect(answer == nil)
                #expect(client.counters.unknownNonces == 1)
            }
        }

        let server = Self.service()
        try await Self.withHost(seed: 451, services: [server]) { serverHost in
            let client = Self.service(serve: false)
            try await Self.withHost(seed: 452, listen: ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.2/tcp/0"], services: [client]) { clientHost in
                try await Self.connect(clientHost, to: serverHost)
                let garbage = try await clientHost.newStream(to: serverHost.peerID, protocols: [AutoNATv2Message.dialRequestProtocol])
                try await garbage.writeLengthPrefixed([0xff, 0xff, 0xff])
                #expect((try? await garbage.readLengthPrefixed(maxLength: 100)) == nil)

                // A dial data chunk over the spec's 4096 bytes.
                let elsewhere = try #require(clientHost.listenAddresses.first { $0.description.hasPrefix("/ip4/127.0.0.2/") })
                let greedy = try await clientHost.newStream(to: serverHost.peerID, protocols: [AutoNATv2Message.dialRequestProtocol])
                try await greedy.writeLengthPrefixed(AutoNATv2Message.dialRequest(.init(addresses: [elsewhere], nonce: 7)).encoded())
                let frame = try #require(try await greedy.readLengthPrefixed(maxLength: AutoNATv2Message.maxMessageSize))
                guard case .dialDataRequest = try AutoNATv2Message(decoding: frame.readableBytesView) else {
                    Issue.record("expected a dial data request")
                    return
                }
                try await greedy.writeLengthPrefixed(AutoNATv2Message.dialDataResponse(.init(count: 5000)).encoded())
                #expect((try? await greedy.readLengthPrefixed(maxLength: 100)) == nil)
                try await AutoNATTests.until { server.counters.badRequests == 2 }

                let honest = try await client.probe(clientHost.listenAddresses, using: serverHost.peerID)
                #expect(honest.reachable == true)
            }
        }
    }

    /// The DHT can follow v2 as it follows v1: private addresses only → client mode.
    @Test func dhtModeFollowsAddressReachability() async throws {
        let server = Self.service()
        try await Self.withHost(seed: 461, services: [server]) { serverHost in
            let autonat = Self.service(serve: false) { $0.confirmations = 1 }
            var dhtConfiguration = KademliaDHT.Configuration()
            dhtConfiguration.refreshInterval = nil
            let dht = KademliaDHT(configuration: dhtConfiguration)
            let closed = "/ip4/127.0.0.1/tcp/\(try Self.closedPort())"
            let closedAddress = try Multiaddr(closed)
            try await Self.withHost(seed: 462, listen: [], announce: [closed], services: [autonat, dht]) { host in
                defer { dht.stop() }
                let following = dht.followReachability(of: autonat)
                defer { following.cancel() }
                try await Self.connect(host, to: serverHost)
                try await autonat.probe([closedAddress], using: serverHost.peerID)
                #expect(autonat.reachability == .private)
                try await AutoNATTests.until { dht.mode == .client }
            }
        }
    }

    /// A TCP port on 127.0.0.1 where nothing listens (bound, then closed).
    static func closedPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw POSIXError(.EADDRINUSE) }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
