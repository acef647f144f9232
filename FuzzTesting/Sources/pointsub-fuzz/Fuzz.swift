import NIOCore
import PointSub

/// One libFuzzer entry point; the first byte picks the parser, the rest is its input.
/// Each parser must either succeed or throw its typed error — never crash, hang or over-allocate.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let input = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    switch data[0] % 8 {
    case 0:
        _ = try? Varint.decode(input)
    case 1:
        _ = try? Multiaddr(bytes: input)
        if let text = String(validating: input, as: UTF8.self) { _ = try? Multiaddr(text) }
    case 2:
        _ = try? PeerID(bytes: input)
        _ = try? PublicKey(marshaled: input)
        _ = try? PrivateKey(marshaled: input)
    case 3:
        var reader = ProtobufReader(input)
        while let next = try? reader.next(), next != nil {}
        _ = try? IdentifyMessage(decoding: input)
    case 4:
        // Listener and dialer, fed in two pieces to exercise buffering.
        var listener = MultistreamNegotiator(role: .listener(protocols: ["/noise", "/yamux/1.0.0"]))
        _ = listener.start()
        let cut = input.count / 2
        if (try? listener.receive(ByteBuffer(bytes: input[..<cut]))) != nil {
            _ = try? listener.receive(ByteBuffer(bytes: input[cut...]))
        }
        var dialer = MultistreamNegotiator(role: .dialer(proposals: ["/noise"]))
        _ = dialer.start()
        _ = try? dialer.receive(ByteBuffer(bytes: input))
    case 5:
        var decoder = YamuxFrameDecoder()
        decoder.append(ByteBuffer(bytes: input))
        while let frame = try? decoder.nextFrame(), frame != nil {}
    case 6:
        // A Noise responder reading an arbitrary first message, then an initiator reading an
        // arbitrary second one.
        var responder = NoiseHandshakeState(role: .responder, staticKey: .init())
        _ = try? responder.readMessage(input)
        var initiator = NoiseHandshakeState(role: .initiator, staticKey: .init())
        _ = try? initiator.writeMessage(payload: [])
        _ = try? initiator.readMessage(input)
    default:
        _ = try? Multibase.decode(String(decoding: input, as: UTF8.self))
        _ = try? PeerID(String(decoding: input, as: UTF8.self))
    }
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt

/// SwiftPM links an executable's `main` to `<target>_main`; with `-parse-as-library` there is none,
/// so this one hands control to libFuzzer's driver.
@_cdecl("pointsub_fuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var arguments = argv
    return runFuzzerDriver(&count, &arguments) { data, size in fuzz(data, size) }
}
