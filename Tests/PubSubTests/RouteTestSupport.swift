import NIOConcurrencyHelpers
import NIOCore
import PointSub
import Testing

@testable import PubSub

/// Hosts with route tables for the Route*Tests, listening on the in-memory transport (TCP too, to
/// dial TCP peers such as the silent listener); names prefixed so they do not clash with other
/// suites' helpers in this target.
enum RouteFixtures {
    struct Node: Sendable {
        let index: Int
        let host: P2PHost
        let table: RouteTable
        var peer: PeerID { host.peerID }
        var address: Multiaddr { host.addresses[0] }
    }


    /// Replies `"<index>:<sender>:<message>"`, where sender is our route name for the sender or
    /// its peer ID.
    static func echoHandler(_ index: Int) -> RouteTable.Handler {
        { sender, message in ByteBuffer(string: "\(index):\(sender):\(String(buffer: message))") }
    }

    /// `count` started hosts, each with a serving route table (`handler(index)` answers, the
    /// echo handler by default); closed and shut down after `body`, whether it throws or not.
    static func withNodes<T: Sendable>(
        _ count: Int,
        configuration: RouteTable.Configuration = .defaults,
        handler: (Int) -> RouteTable.Handler = echoHandler,
        _ body: ([Node]) async throws -> T
    ) async throws -> T {
        var nodes: [Node] = []
        do {
            for index in 0..<count {
                let host = P2PHost(identity: .generateEd25519(), configuration: .defaults {
                    $0.transports = [.memory, .tcp]
                    $0.listenAddresses = [Multiaddr("/memory/0")]
                })
                try await host.start()
                let table = try RouteTable(host: host, configuration: configuration)
                nodes.append(Node(index: index, host: host, table: table))
                table.handle(handler(index))
                try table.start()
            }
            let result = try await body(nodes)
            await shutDown(nodes)
            return result
        } catch {
            await shutDown(nodes)
            throw error
        }
    }

    static func shutDown(_ nodes: [Node]) async {
        for node in nodes { await node.table.close() }
        await withTaskGroup(of: Void.self) { group in
            for node in nodes { group.addTask { await node.host.shutdown(gracePeriod: .milliseconds(200)) } }
        }
    }

    /// The route error `body` throws, or nil (recorded as an issue) when it throws none or another.
    static func routeError<T>(_ body: @escaping @Sendable () async throws -> T) async -> RouteError? {
        do {
            _ = try await body()
            Issue.record("expected a RouteError, got a result")
            return nil
        } catch let error as RouteError {
            return error
        } catch {
            Issue.record("expected a RouteError, got \(error)")
            return nil
        }
    }

    /// Records an issue unless `body` throws a RouteError with `code`. (Tests here keep closures
    /// out of `#expect(…)`: with Swift 6.3.1, a closure written inside `#expect(await f { … })`
    /// ran again in place of the next such call's closure, in the same function.)
    static func expectRouteError<T>(
        _ code: RouteError.Code, sourceLocation: SourceLocation = #_sourceLocation,
        _ body: @escaping @Sendable () async throws -> T
    ) async {
        let error = await routeError(body)
        #expect(error?.code == code, sourceLocation: sourceLocation)
    }

    /// Records an issue unless `condition` holds within `timeout`.
    static func expectEventually(
        timeout: Duration = .seconds(10), sourceLocation: SourceLocation = #_sourceLocation, _ condition: () -> Bool
    ) async {
        let held = await eventually(timeout: timeout, condition)
        #expect(held, "the condition did not hold within \(timeout)", sourceLocation: sourceLocation)
    }

    /// Polls `condition` until it holds or `timeout` passes; returns whether it held.
    static func eventually(timeout: Duration = .seconds(10), _ condition: () -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return condition()
    }

    /// The reply as text, nil for an error or no result.
    static func text(_ result: Result<ByteBuffer, RouteError>?) -> String? {
        guard case .success(let reply)? = result else { return nil }
        return String(buffer: reply)
    }

    /// Outbound connections of `host` that are open.
    static func outbound(_ host: P2PHost, to peer: PeerID) -> [Connection] {
        host.connections(to: peer).filter { $0.direction == .outbound }
    }
}

/// Thread-safe counter.
final class RouteCounter: Sendable {
    private let value = NIOLockedValueBox(0)
    @discardableResult func increment() -> Int { value.withLockedValue { $0 += 1; return $0 } }
    var count: Int { value.withLockedValue { $0 } }
}
