import Logging
import Testing

@testable import Resources

@Suite struct ResourceManagerTests {
    func manager(_ configure: (inout ResourceManager.Configuration) -> Void = { _ in }) -> ResourceManager {
        ResourceManager(configuration: .defaults(configure))
    }

    @Test func pendingHandshakesAreLimitedPerAddressNotGlobally() throws {
        let rm = manager {
            $0.perAddress.pendingInbound = 2
            $0.system.pendingInbound = 10
        }
        let a = try rm.openConnection(direction: .inbound, remoteAddress: "127.0.0.2")
        let b = try rm.openConnection(direction: .inbound, remoteAddress: "127.0.0.2")
        #expect(throws: ResourceError.self) {
            try rm.openConnection(direction: .inbound, remoteAddress: "127.0.0.2")
        }
        // Another source is not affected by the first one's handshakes.
        let honest = try rm.openConnection(direction: .inbound, remoteAddress: "127.0.0.1")
        #expect(rm.usage(ofAddress: "127.0.0.2").pendingInbound == 2)
        #expect(rm.systemUsage.pendingInbound == 3)
        // An established connection no longer counts as pending, so the source may handshake again.
        try a.setPeer("peer-a")
        a.markEstablished()
        _ = try rm.openConnection(direction: .inbound, remoteAddress: "127.0.0.2").done()
        b.done()
        a.done()
        honest.done()
        #expect(rm.systemUsage.isEmpty)
        #expect(rm.trackedScopeCount == 2)
    }

    @Test func refusalNamesTheScopeAndResource() throws {
        let rm = manager { $0.perAddress.connectionsInbound = 1 }
        let held = try rm.openConnection(direction: .inbound, remoteAddress: "10.1.2.3")
        do {
            _ = try rm.openConnection(direction: .inbound, remoteAddress: "10.1.2.3")
            Issue.record("second connection from the address was admitted")
        } catch {
            #expect(error.scope == "address")
            #expect(error.scopeName == "10.1.2.3")
            #expect(error.code == .connectionsInbound)
            #expect(error.limit == 1)
        }
        held.done()
    }

    @Test func ipv6AddressesShareTheirSlash64() {
        #expect(ResourceManager.addressBucket("2001:db8:1:2::5") == "2001:db8:1:2::/64")
        #expect(ResourceManager.addressBucket("2001:db8:1:2:aa:bb:cc:dd") == "2001:db8:1:2::/64")
        #expect(ResourceManager.addressBucket("::1") == "0:0:0:0::/64")
        #expect(ResourceManager.addressBucket("127.0.0.1") == "127.0.0.1")
    }

    @Test func streamMemoryCountsAgainstEveryScopeAboveIt() throws {
        let rm = manager {
            $0.perConnection.memory = 1000
            $0.perStream.memory = 600
        }
        let connection = try rm.openConnection(direction: .inbound, remoteAddress: "127.0.0.1")
        try connection.setPeer("p")
        connection.markEstablished()
        let s1 = try connection.openStream(direction: .inbound)
        let s2 = try connection.openStream(direction: .inbound)
        try s1.reserveMemory(600)
        #expect(throws: ResourceError.self) { try s1.reserveMemory(1) }  // stream limit
        try s2.reserveMemory(400)
        #expect(throws: ResourceError.self) { try s2.reserveMemory(1) }  // connection limit
        #expect(rm.usage(ofPeer: "p").memory == 1000)
        #expect(rm.usage(ofAddress: "127.0.0.1").memory == 1000)
        #expect(rm.systemUsage.memory == 1000)
        try s1.setProtocol("/echo/1.0.0")
        #expect(rm.usage(ofProtocol: "/echo/1.0.0").memory == 600)
        #expect(rm.usage(ofProtocol: "/echo/1.0.0").streamsInbound == 1)
        s1.releaseMemory(100)
        #expect(rm.usage(ofProtocol: "/echo/1.0.0").memory == 500)
        s1.done()
        #expect(rm.systemUsage.memory == 400)
        #expect(rm.usage(ofProtocol: "/echo/1.0.0").isEmpty)
        // Closing the connection releases what its open streams still hold.
        connection.done()
        #expect(rm.systemUsage.isEmpty)
        #expect(rm.transientUsage.isEmpty)
        #expect(rm.trackedScopeCount == 2)
        // Late calls on closed scopes change nothing.
        s2.releaseMemory(400)
        s2.done()
        #expect(rm.systemUsage.isEmpty)
    }

    @Test func setPeerMovesConnectionFromTransientAndChecksPeerLimits() throws {
        let rm = manager { $0.perPeer.connections = 1 }
        let first = try rm.openConnection(direction: .outbound)
        try first.reserveMemory(64)
        #expect(rm.transientUsage.memory == 64)
        try first.setPeer("p")
        #expect(rm.transientUsage.isEmpty)
        #expect(rm.usage(ofPeer: "p").connectionsOutbound == 1)
        #expect(rm.usage(ofPeer: "p").memory == 64)
        let second = try rm.openConnection(direction: .inbound, remoteAddress: "127.0.0.1")
        #expect(throws: ResourceError.self) { try second.setPeer("p") }
        second.done()
        first.done()
        #expect(rm.systemUsage.isEmpty)
    }

    @Test func serviceMemoryIsBoundedGlobally() throws {
        let rm = manager { $0.services["pointsub"] = ScopeLimits(memory: 100) }
        let service = rm.serviceScope("pointsub")
        try service.reserveMemory(80)
        #expect(throws: ResourceError.self) { try service.reserveMemory(21) }
        try rm.serviceScope("other").reserveMemory(1000)
        service.releaseMemory(80)
        rm.serviceScope("other").releaseMemory(1000)
        #expect(rm.systemUsage.isEmpty)
    }

    @Test func unlimitedManagerNeverRefuses() throws {
        let rm = ResourceManager.unlimited()
        var scopes: [ConnectionScope] = []
        for _ in 0..<100 { scopes.append(try rm.openConnection(direction: .inbound, remoteAddress: "127.0.0.9")) }
        #expect(rm.usage(ofAddress: "127.0.0.9").connectionsInbound == 100)
        scopes.removeAll()  // deinit releases
        #expect(rm.systemUsage.isEmpty)
    }

    @Test func rateLimitedLoggerSuppressesFloodsAndCountsThem() {
        let lines = LineCounter()
        var logger = Logger(label: "test", factory: { _ in lines })
        logger.logLevel = .info
        let limited = RateLimitedLogger(logger, perSecond: 1, burst: 5)
        for i in 0..<10_000 { limited.log(.info, key: "refusal", "refused \(i)") }
        #expect(lines.count == 5)
        limited.log(.info, key: "other kind", "a different event still gets through")
        #expect(lines.count == 6)
    }
}

final class LineCounter: LogHandler, @unchecked Sendable {
    private let lock = NSLockLike()
    private var lines = 0
    var count: Int { lock.sync { lines } }
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) { lock.sync { lines += 1 } }
}

/// A tiny mutex for the test log handler.
final class NSLockLike: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }
    func sync<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return body()
    }
}

#if canImport(Glibc)
import Glibc
#endif
