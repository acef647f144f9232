import Identity
@testable import PubSub

/// A valid peer ID (sha2-256 multihash form) for test peer number `n`.
func testPeer(_ n: Int) -> PeerID {
    var digest = [UInt8](repeating: 0, count: 32)
    withUnsafeBytes(of: UInt64(n).bigEndian) { digest.replaceSubrange(0..<8, with: $0) }
    return try! PeerID(bytes: [0x12, 0x20] + digest)
}

func testMessage(_ n: Int, topic: String = "t", author: PeerID? = nil) -> (PubSubRPC.Message, MessageID) {
    let seqno = withUnsafeBytes(of: UInt64(n).bigEndian) { Array($0) }
    let message = PubSubRPC.Message(from: author?.bytes, data: Array("m\(n)".utf8), seqno: seqno, topic: topic)
    return (message, (author?.bytes ?? []) + seqno)
}

extension Array where Element == PubSubRouterAction {
    var sends: [(peer: PeerID, rpc: PubSubRPC)] {
        map { action in
            switch action { case .send(let peer, let rpc): (peer, rpc) }
        }
    }

    /// Peers sent at least one message.
    var messageRecipients: Set<PeerID> { Set(sends.filter { !$0.rpc.messages.isEmpty }.map(\.peer)) }

    func messages(to peer: PeerID) -> [PubSubRPC.Message] {
        sends.filter { $0.peer == peer }.flatMap(\.rpc.messages)
    }

    var grafted: Set<PeerID> { Set(sends.filter { !($0.rpc.control?.graft.isEmpty ?? true) }.map(\.peer)) }

    var pruned: Set<PeerID> { Set(sends.filter { !($0.rpc.control?.prune.isEmpty ?? true) }.map(\.peer)) }

    func prunes(to peer: PeerID) -> [PubSubRPC.Prune] {
        sends.filter { $0.peer == peer }.flatMap { $0.rpc.control?.prune ?? [] }
    }

    var gossiped: Set<PeerID> { Set(sends.filter { !($0.rpc.control?.ihave.isEmpty ?? true) }.map(\.peer)) }

    func ihaveIDs(to peer: PeerID) -> Set<MessageID> {
        Set(sends.filter { $0.peer == peer }.flatMap { $0.rpc.control?.ihave ?? [] }.flatMap(\.messageIDs))
    }

    func iwantIDs(to peer: PeerID) -> [MessageID] {
        sends.filter { $0.peer == peer }.flatMap { $0.rpc.control?.iwant ?? [] }.flatMap(\.messageIDs)
    }
}
