import LibP2P
import Multiformats
import NIOCore
import Transport

/// Turns a relayed stream into a channel the swarm can upgrade: a ``MemoryChannel`` pair whose
/// one end is joined to the stream by a task, the other end returned for security and muxer,
/// exactly as a TCP channel. Back-pressure holds both ways (the joined end is read only as fast
/// as the stream takes the bytes, and the stream only as fast as the channel takes them). A
/// half-close passes through; closing the channel closes the stream and vice versa.
enum StreamBridge {
    /// The channel end to upgrade, not yet active (activate it once its handlers are in place, as
    /// a transport does), and the task that joins it to the stream (done when both have ended;
    /// a stream handler awaits it, since the host closes a handler's stream when it returns).
    /// `local` and `remote` become the channel's addresses.
    static func channel(
        for stream: P2PStream, local: Multiaddr, remote: Multiaddr
    ) async throws -> (channel: MemoryChannel, joined: Task<Void, Never>) {
        let loop = stream.eventLoop
        let (upgraded, joined) = MemoryChannel.makePair(loop, loop, firstAddress: local, secondAddress: remote)
        let wrapped = try await loop.submit { () throws -> NIOAsyncChannel<ByteBuffer, ByteBuffer> in
            _ = joined.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: joined)
        }.get()
        try await joined.activate().get()
        // A reset of the stream (the relay ended the circuit, the connection to the relay
        // closed) closes the channel at once, whatever the copying tasks are blocked on.
        stream.setFailureWatcher { joined.close(promise: nil) }
        let task = Task {
            do {
                try await wrapped.executeThenClose { inbound, outbound in
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask {
                            for try await buffer in inbound { try await stream.write(buffer) }
                            try await stream.closeWrite()
                            // The channel closed entirely (not just its writing): stop reading too.
                            if !joined.isActive { await stream.close() }
                        }
                        group.addTask {
                            while let buffer = try await stream.read() { try await outbound.write(buffer) }
                            outbound.finish()
                        }
                        try await group.waitForAll()
                    }
                }
            } catch {
                stream.reset()
                joined.close(promise: nil)
            }
        }
        return (upgraded, task)
    }
}
