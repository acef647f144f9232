import NIOConcurrencyHelpers
import NIOCore
import PointSub
import Testing

@testable import PubSub

/// Many tasks adding, deleting, dispatching and broadcasting at once, with handlers that call
/// back into the dispatching table. The design this replaces held its lock during network I/O
/// and re-entered it from its broadcast: this load deadlocked it.
@Suite(.timeLimit(.minutes(3)))
struct RouteConcurrencyTests {
    private enum Op: String, CaseIterable {
        /// `dispatchAll` is the call, `dispatchAll result` each route's result in it.
        case add, delete, dispatch, dispatchAll, result = "dispatchAll result", list
    }

    /// What one operation ended with: success, or the code of its RouteError.
    private struct Outcome {
        var op: Op
        var error: RouteError.Code?
    }

    @Test(arguments: RouteTable.Mode.allCases)
    func mixedOperationsFinishWithAReplyOrATypedError(mode: RouteTable.Mode) async throws {
        let peerCount = 8
        let operations = 200
        let workers = 16
        let configuration = RouteTable.Configuration.defaults {
            $0.mode = mode
            $0.timeout = .seconds(10)
            $0.closeGracePeriod = .milliseconds(300)
        }
        // Peers answer after up to 15 ms; a message starting with "back:" makes the peer dispatch
        // to node 0 first, whose handler reads node 0's table: re-entry while node 0 dispatches.
        let backRoute = "zero"
        let tables = NIOLockedValueBox<[Int: RouteTable]>([:])
        try await RouteFixtures.withNodes(peerCount + 1, configuration: configuration, handler: { index in
            { sender, message in
                let text = String(buffer: message)
                guard index != 0 else {
                    let routes = tables.withLockedValue { $0[0] }?.routes().count ?? -1
                    return ByteBuffer(string: "0:\(sender):routes=\(routes)")
                }
                try await Task.sleep(for: .milliseconds(Int.random(in: 0...15)))
                if text.hasPrefix("back:"), let table = tables.withLockedValue({ $0[index] }) {
                    let answer = try await table.dispatch(backRoute, message)
                    return ByteBuffer(string: "\(index):back:\(String(buffer: answer)):\(text)")
                }
                return ByteBuffer(string: "\(index):\(sender):\(text)")
            }
        }) { nodes in
            tables.withLockedValue { t in for node in nodes { t[node.index] = node.table } }
            for peer in nodes.dropFirst() { try peer.table.addRoute(backRoute, address: nodes[0].address) }
            let table = nodes[0].table
            let addresses = nodes.dropFirst().map(\.address)
            for k in 0..<peerCount / 2 { try table.addRoute("r\(k)", address: addresses[k]) }
            let start = ContinuousClock.now

            let outcomes = try await withThrowingTaskGroup(of: [Outcome].self) { group in
                for worker in 0..<workers {
                    group.addTask {
                        var random = SplitMix64(seed: UInt64(worker) &* 0x9E37 &+ 1)  // replayable
                        var outcomes: [Outcome] = []
                        for i in stride(from: worker, to: operations, by: workers) {
                            let k = Int.random(in: 0..<peerCount, using: &random)
                            let name = "r\(k)"
                            let roll = Int.random(in: 0..<100, using: &random)
                            let message = (roll % 3 == 0 ? "back:" : "") + "w\(worker)-op\(i)"
                            switch roll {
                            case 0..<30:
                                // Mostly r<k> → peer k; sometimes crossed, which collides by name or address.
                                let target = Int.random(in: 0..<5, using: &random) == 0 ? (k + 1) % peerCount : k
                                do throws(RouteError) {
                                    try table.addRoute(name, address: addresses[target])
                                    outcomes.append(Outcome(op: .add))
                                } catch {
                                    outcomes.append(Outcome(op: .add, error: error.code))
                                }
                            case 30..<40:
                                do throws(RouteError) {
                                    try await table.deleteRoute(name)
                                    outcomes.append(Outcome(op: .delete))
                                } catch {
                                    outcomes.append(Outcome(op: .delete, error: error.code))
                                }
                            case 40..<80:
                                do throws(RouteError) {
                                    let reply = try await table.dispatch(name, ByteBuffer(string: message))
                                    #expect(Self.isReply(String(buffer: reply), to: message), "\(String(buffer: reply))")
                                    outcomes.append(Outcome(op: .dispatch))
                                } catch {
                                    outcomes.append(Outcome(op: .dispatch, error: error.code))
                                }
                            case 80..<95:
                                do throws(RouteError) {
                                    let results = try await table.dispatchAll(ByteBuffer(string: message))
                                    outcomes.append(Outcome(op: .dispatchAll))
                                    for result in results.values {
                                        switch result {
                                        case .success(let reply):
                                            #expect(Self.isReply(String(buffer: reply), to: message), "\(String(buffer: reply))")
                                            outcomes.append(Outcome(op: .result))
                                        case .failure(let error):
                                            outcomes.append(Outcome(op: .result, error: error.code))
                                        }
                                    }
                                } catch {
                                    outcomes.append(Outcome(op: .dispatchAll, error: error.code))
                                }
                            default:
                                let routes = table.routes()
                                #expect(Set(routes.map(\.name)).count == routes.count)
                                #expect(Set(routes.map(\.peer)).count == routes.count)
                                outcomes.append(Outcome(op: .list))
                            }
                        }
                        return outcomes
                    }
                }
                return try await group.reduce(into: [Outcome]()) { $0 += $1 }
            }
            let elapsed = ContinuousClock.now - start

            // Every operation ended, in bounded time, with a success or an expected typed error.
            #expect(elapsed < .seconds(60), "\(mode): took \(elapsed)")
            let expected: [Op: Set<RouteError.Code>] = [
                .add: [.duplicateName, .duplicateAddress],
                .delete: [.unknownRoute],
                .dispatch: [.unknownRoute],
                .dispatchAll: [],
                .result: [],
                .list: [],
            ]
            var summary: [String: Int] = [:]
            for outcome in outcomes {
                summary["\(outcome.op.rawValue) \(outcome.error.map { "\($0)" } ?? "ok")", default: 0] += 1
                if let code = outcome.error {
                    #expect(expected[outcome.op]!.contains(code), "\(mode): \(outcome.op) failed with \(code)")
                }
            }
            print("RouteConcurrencyTests \(mode) in \(elapsed): \(summary.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ", "))")
            let calls = outcomes.filter { $0.op != .result }.count
            let replies = outcomes.filter { $0.op == .dispatch && $0.error == nil }.count
            let broadcastReplies = outcomes.filter { $0.op == .result && $0.error == nil }.count
            #expect(calls == operations)
            #expect(replies > 0 && broadcastReplies > 0)
            let stats = table.statistics
            #expect(stats.dispatches == stats.replies + stats.failures)

            // Nothing leaks: once closed, no connection node 0's table dialed stays open.
            await table.close()
            #expect(stats.connectionsDialed >= 1)
            await RouteFixtures.expectEventually(timeout: .seconds(5)) {
                nodes[0].host.allConnections.allSatisfy { $0.direction == .inbound || $0.isClosed }
            }
            if mode == .short {
                #expect(table.statistics.connectionsClosed == table.statistics.connectionsDialed)
            }
        }
    }

    /// `"<k>:<sender>:<message>"` from a peer, or for "back:" messages the peer's answer
    /// wrapping node 0's.
    private static func isReply(_ reply: String, to message: String) -> Bool {
        if message.hasPrefix("back:") { return reply.contains(":back:0:") && reply.hasSuffix(":" + message) }
        return reply.hasSuffix(":" + message) && reply.first?.isNumber == true
    }
}
