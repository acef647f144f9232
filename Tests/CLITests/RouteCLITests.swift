import Foundation
import Testing

/// `pointsub route`, the named-routes demo, run as a user would.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct RouteCLITests {
    @Test func persistentDemoDispatchesAndReportsTheDeadRoute() async throws {
        let run = try await CLI.run(["route"], timeout: 90)
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let out = run.stdout
        #expect(out.contains("route demo: 4 nodes on 127.0.0.1, mode persistent"))
        #expect(out.contains("  node-0 12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X at /ip4/127.0.0.1/tcp/"))
        #expect(out.contains("a second route to node-1's address is refused: duplicateAddress"))
        #expect(out.contains("dispatch node-1: reply \"node-1 got \"hello node-1\" from node-0\""))
        #expect(out.contains("dispatchAll to 4 routes in "))
        for index in 1...3 {
            #expect(out.contains("  node-\(index): reply \"node-\(index) got \"hello all\" from node-0\""))
        }
        #expect(out.contains("  node-dead: error connectionFailed: "))
        // One connection per live node, dialed once and kept.
        #expect(out.contains("node-0: 5 dispatches, 4 replies, 1 failures; connections dialed 3, closed 0, open 3"))
        #expect(out.contains("deleted route node-dead; routes of node-0: node-1, node-2, node-3"))
        #expect(out.hasSuffix("all nodes shut down cleanly\n"))
    }

    @Test func shortModeClosesEveryConnection() async throws {
        let run = try await CLI.run(["route", "--nodes", "3", "--mode", "short"], timeout: 90)
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("route demo: 3 nodes on 127.0.0.1, mode short"))
        #expect(run.stdout.contains("  node-2: reply \"node-2 got \"hello all\" from node-0\""))
        #expect(run.stdout.contains("node-0: 4 dispatches, 3 replies, 1 failures; connections dialed 3, closed 3, open 0"))
        #expect(run.stdout.hasSuffix("all nodes shut down cleanly\n"))
    }

    @Test func badOptionsFail() async throws {
        #expect(try await CLI.run(["route", "--nodes", "1"]).status != 0)
        #expect(try await CLI.run(["route", "--mode", "sometimes"]).status != 0)
        #expect(try await CLI.run(["route", "--timeout", "0"]).status != 0)
    }
}
