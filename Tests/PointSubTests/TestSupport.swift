import NIOConcurrencyHelpers
import NIOCore
import Testing

@testable import PointSub

let loopback = Multiaddr("/ip4/127.0.0.1/tcp/0")

func listening() -> P2PHost.Configuration {
    .defaults { $0.listenAddresses = [loopback] }
}

/// Reverses the characters of a UTF-8 payload.
let reverseHandler: PointSubServer.Handler = { request in
    ByteBuffer(string: String(String(buffer: request.payload).reversed()))
}

/// A server host with a PointSubServer and a client host with a PointSubClient, connected.
func withServerAndClient<T: Sendable>(
    server serverConfiguration: PointSubServer.Configuration = .defaults,
    client clientConfiguration: PointSubClient.Configuration = .defaults,
    _ body: (PointSubServer, PointSubClient, P2PHost) async throws -> T
) async throws -> T {
    try await withHost(configuration: listening()) { serverHost in
        let server = try PointSubServer(host: serverHost, configuration: serverConfiguration)
        return try await withHost { clientHost in
            let client = try PointSubClient(host: clientHost, configuration: clientConfiguration)
            _ = try await clientHost.connect(to: serverHost.addresses[0])
            do {
                let result = try await body(server, client, serverHost)
                await client.close()
                await server.stop(gracePeriod: .milliseconds(100))
                return result
            } catch {
                await client.close()
                await server.stop(gracePeriod: .milliseconds(100))
                throw error
            }
        }
    }
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
func eventually(timeout: Duration = .seconds(10), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return condition()
}

extension PointSubClient {
    func send(_ text: String, to peer: PeerID, protocol protocolID: String, timeout: Duration? = nil) async throws -> String {
        String(buffer: try await send(ByteBuffer(string: text), to: peer, protocol: protocolID, timeout: timeout))
    }
}

func pointSubError(_ error: any Error) -> PointSubError? { error as? PointSubError }

/// A one-shot gate tests open to let a handler go on.
final class Gate: Sendable {
    private let state = NIOLockedValueBox<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func wait() async {
        await withCheckedContinuation { continuation in
            let resume = state.withLockedValue { s -> Bool in
                if s.open { return true }
                s.waiters.append(continuation)
                return false
            }
            if resume { continuation.resume() }
        }
    }

    func open() {
        let waiters = state.withLockedValue { s in
            s.open = true
            defer { s.waiters = [] }
            return s.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// A thread-safe counter.
final class Counter: Sendable {
    private let value = NIOLockedValueBox(0)
    @discardableResult func increment() -> Int { value.withLockedValue { $0 += 1; return $0 } }
    var count: Int { value.withLockedValue { $0 } }
}

/// Sends one encoded message on a raw stream and reads the raw reply.
func rawExchange(_ stream: P2PStream, _ message: PointSubMessage, maxBlockSize: Int = 1 << 26) async throws -> PointSubMessage? {
    try await stream.write(message.encoded())
    var parser = PointSubMessageParser(maxBlockSize: maxBlockSize, accepting: [.response, .error])
    return try await readMessage(from: stream, into: &parser)
}
