import Basics
import PubSub
/// Fuzz entry points for every parser and state machine that reads bytes from the network
/// (issue 10). The same code runs under libFuzzer (`FuzzTesting/`, `scripts/fuzz.sh`) and in the
/// normal test suite (`FuzzRegressionTests` replays `FuzzTesting/Regressions/<target>/` and
/// `FuzzTesting/Seeds/<target>/` and runs every target on seeded pseudo-random inputs).
///
/// A target must never crash, hang or over-allocate on any input: bad input is a typed error
/// from the code under test, which the target swallows. Where it is cheap, a target also checks
/// invariants (decode → encode → decode gives the same value, a parser accounts for every byte,
/// counters of a state machine agree); a broken invariant is thrown as `FuzzInvariantFailure`,
/// which the libFuzzer driver turns into a crash so that the input is kept.
///
/// Several targets reach internal types (the yamux session state machine, the pubsub RPC frame
/// decoder, the Noise payload) through `@testable import`, which needs modules built for testing:
/// debug builds are (the tests), and `scripts/fuzz.sh` builds release with `-enable-testing
/// -DFUZZING`. In any other release build those targets do nothing (`FuzzTarget.isAvailable` is
/// false) so that `swift build -c release` still builds.
public enum FuzzTarget: String, CaseIterable, ErrorCode {
    /// Multiformats unsigned varints (`Varint.decode`, `ByteBuffer.readVarint`).
    case varint
    /// Multibase text and the bases behind it (base58btc, base32, base64, base16).
    case multibase
    /// Multihash and CIDv1, binary and text.
    case multihash
    /// Multiaddr, binary and text.
    case multiaddr
    /// The minimal protobuf reader every libp2p message goes through.
    case protobuf
    /// `PublicKey` / `PrivateKey` protobufs, peer IDs from bytes and from text, signatures.
    case keys
    /// secp256k1 public and private key bytes and DER signatures (libsecp256k1, loaded at run time).
    case secp256k1
    /// The identify message.
    case identify
    /// Signed envelopes (RFC 0002) and the signed peer records in them (RFC 0003).
    case peerRecord = "peer-record"
    /// The multistream-select negotiator, listener and dialer, fed in random chunks.
    case multistream
    /// The Noise XX handshake messages and the libp2p handshake payload (key and signature check).
    case noise
    /// The yamux frame decoder, fed in random chunks.
    case yamuxFrames = "yamux-frames"
    /// The yamux session state machine, driven by decoded frames and local operations.
    case yamuxSession = "yamux-session"
    /// Pubsub RPC protobuf decoding.
    case pubsubRPC = "pubsub-rpc"
    /// The pubsub stream's RPC frame decoder (uvarint length ‖ RPC), fed in random chunks.
    case pubsubFrames = "pubsub-frames"
    /// The PointSub message parser, fed in random chunks.
    case pointsubParser = "pointsub-parser"
    /// PointSub zlib decompression with its declared size and output limit.
    case pointsubDecompress = "pointsub-decompress"
    /// The libp2p TLS certificate: X.509 parsing, the verification rules, the `SignedKey` extension.
    case tlsCertificate = "tls-certificate"
    /// A kad-dht message (protobuf with records and peer lists) under its decoding limits.
    case kadMessage = "kad-message"
    /// DAG-CBOR (the data of IPNS records) under its decoding limits.
    case dagCBOR = "dag-cbor"
    /// An IPNS record (`IpnsEntry` protobuf with DAG-CBOR data) and its verification.
    case ipnsRecord = "ipns-record"
    /// A DNS message (dnsaddr answers, mDNS): names with compression pointers, records, TXT strings.
    case dnsMessage = "dns-message"
    /// Circuit relay v2: a hop or stop message, or a reservation voucher (first byte picks which).
    case relayMessage = "relay-message"
    /// An AutoNAT v1 message (dial request or response).
    case autonatMessage = "autonat-message"
    /// AutoNAT v2: a dial-request stream message, a dial-back or a dial-back response (first
    /// byte picks which).
    case autonatV2Message = "autonat-v2-message"
    /// A DCUtR hole-punching message (CONNECT or SYNC with addresses).
    case dcutrMessage = "dcutr-message"
    /// The WebSocket frame path: NIO's frame decoder between our frame accounting and our frame
    /// policy, either role, random chunks, fuzzed frame and memory limits.
    case webSocketFrames = "websocket-frames"
    /// The WebSocket HTTP upgrade, server and client side, with the transport's byte, time and
    /// memory bounds, then the frame path.
    case webSocketUpgrade = "websocket-upgrade"

    /// False for the targets that need `@testable import` in a build without testability (release).
    public var isAvailable: Bool {
        #if DEBUG || FUZZING
            return true
        #else
            switch self {
            case .yamuxSession, .pubsubFrames, .noise, .webSocketFrames, .webSocketUpgrade: return false
            default: return true
            }
        #endif
    }
}

/// A target found an input on which an invariant of the code under test does not hold.
public struct FuzzInvariantFailure: CodedError {
    /// The target that found it is the code.
    public typealias Code = FuzzTarget

    /// The target that found it.
    public let target: FuzzTarget
    /// What does not hold.
    public let message: String
    /// The error that shows it, e.g. a re-encoded value's parse failure.
    public let cause: (any Error)?

    /// Makes a failure report.
    public init(target: FuzzTarget, message: String, cause: (any Error)? = nil) {
        self.target = target
        self.message = message
        self.cause = cause
    }

    /// The target that found it.
    public var code: FuzzTarget { target }
}

/// Runs fuzz targets on byte inputs.
public enum FuzzTargets {
    /// The longest input worth giving a target (`-max_len` of the fuzz runs). Longer inputs are
    /// cut: every parser's own limits are far below what this lets through, and long inputs only
    /// slow the fuzzer down.
    public static let maxInputLength = 64 * 1024

    /// Runs `target` on `bytes`. Returns normally whatever the code under test thought of the
    /// input; throws only when an invariant does not hold.
    public static func run(_ target: FuzzTarget, _ bytes: [UInt8]) throws(FuzzInvariantFailure) {
        let input = bytes.count > maxInputLength ? Array(bytes.prefix(maxInputLength)) : bytes
        var check = Checker(target: target)
        switch target {
        case .varint: try fuzzVarint(input, &check)
        case .multibase: try fuzzMultibase(input, &check)
        case .multihash: try fuzzMultihash(input, &check)
        case .multiaddr: try fuzzMultiaddr(input, &check)
        case .protobuf: try fuzzProtobuf(input, &check)
        case .keys: try fuzzKeys(input, &check)
        case .secp256k1: try fuzzSecp256k1(input, &check)
        case .identify: try fuzzIdentify(input, &check)
        case .peerRecord: try fuzzPeerRecord(input, &check)
        case .multistream: try fuzzMultistream(input, &check)
        case .pubsubRPC: try fuzzPubSubRPC(input, &check)
        case .yamuxFrames: try fuzzYamuxFrames(input, &check)
        case .pointsubParser: try fuzzPointSubParser(input, &check)
        case .pointsubDecompress: try fuzzPointSubDecompress(input, &check)
        case .tlsCertificate: try fuzzTLSCertificate(input, &check)
        case .kadMessage: try fuzzKadMessage(input, &check)
        case .dagCBOR: try fuzzDAGCBOR(input, &check)
        case .ipnsRecord: try fuzzIPNSRecord(input, &check)
        case .dnsMessage: try fuzzDNSMessage(input, &check)
        case .relayMessage: try fuzzRelayMessage(input, &check)
        case .autonatMessage: try fuzzAutoNATMessage(input, &check)
        case .autonatV2Message: try fuzzAutoNATv2Message(input, &check)
        case .dcutrMessage: try fuzzHolePunchMessage(input, &check)
        case .noise, .yamuxSession, .pubsubFrames, .webSocketFrames, .webSocketUpgrade:
            #if DEBUG || FUZZING
                switch target {
                case .noise: try fuzzNoise(input, &check)
                case .yamuxSession: try fuzzYamuxSession(input, &check)
                case .webSocketFrames: try fuzzWebSocketFrames(input, &check)
                case .webSocketUpgrade: try fuzzWebSocketUpgrade(input, &check)
                default: try fuzzPubSubFrames(input, &check)
                }
            #else
                break
            #endif
        }
    }
}

/// Throws `FuzzInvariantFailure` for a condition that does not hold.
struct Checker {
    let target: FuzzTarget

    func callAsFunction(
        _ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String
    ) throws(FuzzInvariantFailure) {
        if !condition() { throw FuzzInvariantFailure(target: target, message: message()) }
    }
}

/// Reads control values and pieces from the front of a fuzz input. Past the end it yields zeros
/// and empty pieces, so every input means something.
struct FuzzReader {
    private let bytes: [UInt8]
    private(set) var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var isAtEnd: Bool { offset >= bytes.count }

    mutating func byte() -> UInt8 {
        guard offset < bytes.count else { return 0 }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func uint16() -> UInt16 { UInt16(byte()) << 8 | UInt16(byte()) }

    mutating func uint32() -> UInt32 { UInt32(uint16()) << 16 | UInt32(uint16()) }

    mutating func take(_ count: Int) -> [UInt8] {
        let end = min(bytes.count, offset + max(0, count))
        defer { offset = max(offset, end) }
        return offset < end ? Array(bytes[offset..<end]) : []
    }

    mutating func rest() -> [UInt8] { take(bytes.count - offset) }
}

/// `bytes` cut into pieces as a network read would deliver them; `mode` picks how: whole, one
/// byte at a time, small random pieces or larger random pieces.
func chunks(_ bytes: [UInt8], mode: UInt8) -> [ArraySlice<UInt8>] {
    var rng = SplitMix64(seed: UInt64(mode))
    let maxPiece: Int
    switch mode % 4 {
    case 0: return [bytes[...]]
    case 1: maxPiece = 1
    case 2: maxPiece = 16
    default: maxPiece = 512
    }
    var pieces: [ArraySlice<UInt8>] = []
    var start = 0
    while start < bytes.count {
        let length = Int.random(in: 1...maxPiece, using: &rng)
        let end = min(bytes.count, start + length)
        pieces.append(bytes[start..<end])
        start = end
    }
    return pieces
}
