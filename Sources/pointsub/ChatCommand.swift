import ArgumentParser
import Dispatch
import Foundation
import PointSub
import PubSub
import ServiceLifecycle

/// `pointsub chat`: publish each stdin line on a topic, print each message received on it.
struct ChatCommand: CLICommand {
    static let configuration = CommandConfiguration(
        commandName: "chat",
        abstract: "Chat on a pubsub topic: publish each stdin line, print each message received.",
        discussion: """
            Runs until SIGINT/SIGTERM (exit 130/143), also after stdin ends unless --exit-on-eof is given \
            (then it exits 0 when stdin ends), so it can be a pure receiver (`< /dev/null`). With --json, \
            stdout carries exactly one JSON object per received message and nothing else (seqno is a \
            decimal string: it is a 64-bit number, more than a JSON reader's double holds exactly); \
            listen addresses go to stderr.
            """)

    enum RouterChoice: String, ExpressibleByArgument, CaseIterable {
        case gossipsub, floodsub
    }

    @OptionGroup var identity: IdentityOptions
    @OptionGroup var listenOptions: ListenOptions
    @OptionGroup var metricsOptions: MetricsOptions

    @Option(help: "The topic to join.")
    var topic: String

    @Option(help: "Connect to this peer at start (a multiaddr ending in /p2p/<id>; repeatable).")
    var connect: [String] = []

    @Option(help: "The pubsub router.")
    var router: RouterChoice = .gossipsub

    @Flag(help: "Print each received message as one JSON object {from, topic, seqno, data} per line.")
    var json = false

    @Flag(help: "Exit when stdin ends instead of waiting for a signal.")
    var exitOnEof = false

    var verbose: Bool { identity.verbose }

    func validate() throws {
        for address in connect { _ = try peerOf(try parseAddress(address)) }
    }

    func makeRouter() throws -> any PubSubRouter {
        switch router {
        case .floodsub:
            return FloodSubRouter()
        case .gossipsub:
            return try GossipSubRouter(configuration: .defaults)
        }
    }

    func execute() async throws {
        let router = try makeRouter()
        let targets = try connect.map { try parseAddress($0) }
        let metrics = try await metricsOptions.start()
        let hostConfiguration = identity.configuration(listen: try listenOptions.addresses(defaultPort: 0))
        let pubsubConfiguration = PubSubConfiguration.defaults { $0.logger = hostConfiguration.logger }
        let output = ChatOutput(json: json)
        let (topic, exitOnEOF) = (self.topic, exitOnEof)
        try await withHost(identity: try identity.privateKey(), configuration: hostConfiguration) { host in
            let pubsub = try PubSubService(host: host, router: router, configuration: pubsubConfiguration)
            try pubsub.start()
            do {
                let subscription = try pubsub.subscribe(topic)
                for address in host.addresses { output.status("\(address)") }
                let chat = WorkService(description: "chat") {
                    try await cancelWhenGracefulShutdown {
                        try await Self.chat(
                            host: host, pubsub: pubsub, subscription: subscription, topic: topic, targets: targets,
                            output: output, exitOnEOF: exitOnEOF)
                    }
                }
                try await serveHost(host, metrics: metrics, extra: [pubsub, chat])
            } catch {
                await pubsub.stop()
                throw error
            }
        }
    }

    /// Dials `targets`, then publishes stdin lines and prints received messages until stdin ends
    /// (with `exitOnEOF`) or the task is cancelled (a signal).
    private static func chat(
        host: P2PHost, pubsub: PubSubService, subscription: PubSubSubscription, topic: String, targets: [Multiaddr],
        output: ChatOutput, exitOnEOF: Bool
    ) async throws {
        let printer = Task {
            for await message in subscription { await output.message(message) }
        }
        defer { printer.cancel() }
        do {
            for target in targets { _ = try await connectPeer(host, to: target) }
            // The first lines should reach the peers we dialed: wait (bounded) until they have
            // announced the topic.
            let dialed = Set(try targets.map(peerOf))
            let deadline = Deadline.after(.seconds(10))
            while !dialed.isSubset(of: pubsub.peers(topic: topic)), !deadline.hasPassed {
                try await Task.sleep(for: .milliseconds(20))
            }
            let input = StandardInputLines()
            // Ends when stdin does, or at once when this task is cancelled.
            for await line in input.lines {
                do {
                    try await pubsub.publish(topic, Array(line.utf8))
                } catch {
                    output.error("not published: \(error)")
                }
                input.consumed()
            }
            guard exitOnEOF else {
                // A pure receiver now: until a signal cancels us.
                while true { try await Task.sleep(for: .seconds(3600)) }
            }
        } catch is CancellationError {
            return  // a signal: the group shuts the rest down
        }
    }
}

/// Where chat output goes: with `--json` stdout is reserved for one JSON object per message.
///
/// Output is written with write(2) on a queue of its own, not through stdio: flushing stdio
/// would wait for the stdin lock that the line reader holds while it blocks in read(2), and a
/// blocking write must not hold up the event loop our tasks run on. The printer waits for each
/// write, so a stuck stdout fills the subscription's buffer (which then drops), not memory.
private struct ChatOutput: Sendable {
    let json: Bool
    private let queue = DispatchQueue(label: "pointsub.chat.output")

    init(json: Bool) {
        self.json = json
    }

    private struct Record: Encodable {
        /// nil for an unsigned (StrictNoSign) message.
        let from: String?
        let topic: String
        /// A decimal string: seqnos are 64-bit (often nanoseconds since 1970, above 2^53), and
        /// JSON readers that parse numbers as doubles would round them. nil when unsigned.
        let seqno: String?
        let data: String
    }

    /// Listen addresses and the like: stdout, or stderr with `--json`.
    func status(_ line: String) {
        if json { error(line) } else { queue.sync { Self.write(line, to: .standardOutput) } }
    }

    func error(_ line: String) {
        queue.sync { Self.write(line, to: .standardError) }
    }

    func message(_ message: PubSubMessage) async {
        let line: String
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            let record = Record(
                from: message.from?.b58String, topic: message.topic, seqno: message.seqno.map { String($0) },
                data: message.text)
            guard let encoded = try? encoder.encode(record) else { return }
            line = String(decoding: encoded, as: UTF8.self)
        } else {
            // StrictNoSign messages have no author: the neighbour that passed it on stands in.
            line = "\(message.from ?? message.receivedFrom): \(message.text)"
        }
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            queue.async {
                Self.write(line, to: .standardOutput)
                done.resume()
            }
        }
    }

    private static func write(_ line: String, to handle: FileHandle) {
        try? handle.write(contentsOf: Data((line + "\n").utf8))
    }
}

/// Lines of stdin, read on a thread of their own (reading blocks). At most 16 lines wait to be
/// published: the reader stops until the consumer calls `consumed()`.
private final class StandardInputLines: Sendable {
    let lines: AsyncStream<String>
    private let room = DispatchSemaphore(value: 16)

    init() {
        let (lines, continuation) = AsyncStream.makeStream(of: String.self)
        self.lines = lines
        let room = self.room
        Thread.detachNewThread {
            while let line = readLine() {
                room.wait()
                if case .terminated = continuation.yield(line) { return }
            }
            continuation.finish()
        }
    }

    func consumed() { room.signal() }
}
