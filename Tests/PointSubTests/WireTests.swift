import NIOCore
import Testing

import PointSub
@testable import PointSubCore

func bytes(_ hex: String) -> [UInt8] {
    let digits = Array(hex.filter { !$0.isWhitespace })
    return stride(from: 0, to: digits.count, by: 2).map { i in UInt8(String(digits[i...i + 1]), radix: 16)! }
}

func buffer(_ hex: String) -> ByteBuffer { ByteBuffer(bytes: bytes(hex)) }

/// Parses `input` fed one byte at a time; returns the messages.
func parseByteByByte(_ input: [UInt8], parser: inout PointSubMessageParser) throws(PointSubError) -> [PointSubMessage] {
    var out: [PointSubMessage] = []
    for byte in input {
        parser.append(ByteBuffer(bytes: [byte]))
        while let message = try parser.next() { out.append(message) }
    }
    return out
}

func expectViolation(
    _ input: [UInt8], _ violation: PointSubError.Violation,
    accepting: Set<PointSubMessage.Kind> = Set(PointSubMessage.Kind.allCases),
    sourceLocation: SourceLocation = #_sourceLocation
) {
    var parser = PointSubMessageParser(maxBlockSize: 1 << 20, accepting: accepting)
    #expect(sourceLocation: sourceLocation) { try parseByteByByte(input, parser: &parser) } throws: { error in
        guard let e = error as? PointSubError else { return false }
        return e.code == .protocolViolation && e.violation == violation
    }
}

@Suite struct WireCodecTests {
    // docs/PROTOCOL.md "Example".
    static let helloRequest = "01 00 05 68 65 6c 6c 6f"
    static let ollehResponse = "02 00 05 6f 6c 6c 65 68"
    static let noSuchKeyError = "03 00 0c 01 6e 6f 20 73 75 63 68 20 6b 65 79"

    @Test func encodesTheSpecExamples() {
        #expect(
            Array(PointSubMessage(kind: .request, payload: ByteBuffer(string: "hello")).encoded().readableBytesView)
                == bytes(Self.helloRequest))
        #expect(
            Array(PointSubMessage(kind: .response, payload: ByteBuffer(string: "olleh")).encoded().readableBytesView)
                == bytes(Self.ollehResponse))
        #expect(Array(PointSubMessage.error(.handler, "no such key").encoded().readableBytesView) == bytes(Self.noSuchKeyError))
    }

    @Test(arguments: [0, 5, PointSubMessage.separatePayloadThreshold - 1, PointSubMessage.separatePayloadThreshold, 100_000])
    func wirePartsAreTheEncodingWithoutCopyingLargePayloads(size: Int) {
        let payload = ByteBuffer(bytes: (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        for message in [
            PointSubMessage(kind: .request, payload: payload),
            PointSubMessage(kind: .response, compressedPayload: payload, originalLength: size * 3 + 1),
        ] {
            let parts = message.wireParts()
            #expect(parts.flatMap { Array($0.readableBytesView) } == Array(message.encoded().readableBytesView))
            if size >= PointSubMessage.separatePayloadThreshold {
                #expect(parts.count == 2 && parts[0].readableBytes == message.headerLength && parts[1] == payload)
            } else {
                #expect(parts.count == 1)
            }
        }
    }

    @Test func compressedHeaderCarriesOriginalAfterLength() {
        // Spec example: 2,000 bytes before and 37 after compression → 02 01 25 d0 0f.
        let zlib = ByteBuffer(bytes: [UInt8](repeating: 0xab, count: 37))
        let message = PointSubMessage(kind: .response, compressedPayload: zlib, originalLength: 2000)
        let encoded = Array(message.encoded().readableBytesView)
        #expect(Array(encoded.prefix(5)) == bytes("02 01 25 d0 0f"))
        #expect(encoded.count == 5 + 37)
        #expect(message.headerLength == 5)
    }

    @Test func parsesTheSpecExamplesByteByByte() throws {
        var parser = PointSubMessageParser(maxBlockSize: 1 << 20)
        let all = bytes(Self.helloRequest) + bytes(Self.ollehResponse) + bytes(Self.noSuchKeyError)
        let messages = try parseByteByByte(all, parser: &parser)
        #expect(messages.count == 3)
        #expect(messages[0] == PointSubMessage(kind: .request, payload: ByteBuffer(string: "hello")))
        #expect(messages[1] == PointSubMessage(kind: .response, payload: ByteBuffer(string: "olleh")))
        #expect(messages[2].kind == .error)
        let error = try RemoteErrorPayload(decoding: messages[2].payload)
        #expect(error == RemoteErrorPayload(code: .handler, message: "no such key"))
        #expect(parser.bufferedBytes == 0)
        try parser.finish()
    }

    @Test func parsesSeveralMessagesInOneChunkAndCompressedHeaders() throws {
        var parser = PointSubMessageParser(maxBlockSize: 1 << 20)
        var chunk = buffer(Self.helloRequest + Self.ollehResponse)
        chunk.writeBytes(bytes("02 01 03 d0 0f aa bb cc"))
        parser.append(chunk)
        #expect(try parser.next()?.payload == ByteBuffer(string: "hello"))
        #expect(try parser.next()?.payload == ByteBuffer(string: "olleh"))
        let compressed = try #require(try parser.next())
        #expect(compressed.isCompressed)
        #expect(compressed.originalLength == 2000)
        #expect(compressed.payload == buffer("aa bb cc"))
        #expect(try parser.next() == nil)
    }

    @Test func emptyPayload() throws {
        var parser = PointSubMessageParser(maxBlockSize: 1 << 20)
        #expect(Array(PointSubMessage(kind: .request, payload: ByteBuffer()).encoded().readableBytesView) == [1, 0, 0])
        let messages = try parseByteByByte([1, 0, 0], parser: &parser)
        #expect(messages == [PointSubMessage(kind: .request, payload: ByteBuffer())])
    }

    @Test func malformedInputsAreTypedErrors() {
        expectViolation([0x00, 0x00, 0x00], .unknownKind(0x00))
        expectViolation([0x04, 0x00, 0x00], .unknownKind(0x04))
        expectViolation([0xff], .unknownKind(0xff))
        for flags: UInt8 in [0x02, 0x80, 0xfe, 0x03] {
            expectViolation([0x01, flags, 0x00], .reservedFlags(flags))
        }
        // 5 as 0x85 0x00 is not minimal; nor is original 0 as 0x80 0x00.
        expectViolation([0x01, 0x00, 0x85, 0x00], .invalidVarint)
        expectViolation([0x01, 0x01, 0x05, 0x80, 0x00], .invalidVarint)
        // More than 9 bytes.
        expectViolation([0x01, 0x00] + [UInt8](repeating: 0x80, count: 9) + [0x01], .invalidVarint)
        // Direction: a server accepts only requests, a client only responses and errors.
        expectViolation(bytes(Self.ollehResponse), .unexpectedKind(0x02), accepting: [.request])
        expectViolation(bytes(Self.noSuchKeyError), .unexpectedKind(0x03), accepting: [.request])
        expectViolation(bytes(Self.helloRequest), .unexpectedKind(0x01), accepting: [.response, .error])
    }

    @Test func truncatedInputIsReportedAtEndOfStream() throws {
        let full = bytes(Self.helloRequest)
        for cut in 1..<full.count {
            var parser = PointSubMessageParser(maxBlockSize: 1 << 20)
            #expect(try parseByteByByte(Array(full.prefix(cut)), parser: &parser).isEmpty)
            #expect { try parser.finish() } throws: { ($0 as? PointSubError)?.violation == .truncated }
        }
    }

    /// Messages of many sizes (around PointSub's 16 KiB split of header and payload, Yamux frame
    /// sizes, many frames), cut into chunks at seeded random points
    /// (several messages per chunk, a header split across chunks, a payload over many chunks):
    /// every message comes out whole and in order, whatever the cuts.
    @Test(arguments: [1, 2, 3, 4, 5])
    func largeAndSmallMessagesSurviveAnyChunking(seed: UInt64) throws {
        var random = SeededGenerator(state: seed)
        let threshold = PointSubMessage.separatePayloadThreshold
        let sizes = [0, 7, threshold - 1, threshold, threshold + 1, 3, 65_536, 70_000, 1, 300_000, 12]
        var wire = ByteBuffer()
        var expected: [ByteBuffer] = []
        for (n, size) in sizes.enumerated() {
            let payload = ByteBuffer(bytes: (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ n) })
            expected.append(payload)
            var message = PointSubMessage(kind: .request, payload: payload).encoded()
            wire.writeBuffer(&message)
        }
        var parser = PointSubMessageParser(maxBlockSize: 1 << 20)
        var received: [ByteBuffer] = []
        while wire.readableBytes > 0 {
            // Mostly frame-sized chunks, some tiny ones (headers cut in two).
            let size = random.next() % 4 == 0 ? Int(random.next() % 4) + 1 : Int(random.next() % 70_000) + 1
            parser.append(wire.readSlice(length: min(size, wire.readableBytes))!)
            while let message = try parser.next() { received.append(message.payload) }
        }
        #expect(received.count == expected.count)
        for (got, want) in zip(received, expected) { #expect(got == want) }
        #expect(parser.bufferedBytes == 0)
        try parser.finish()
    }

    @Test func aLongPayloadCutShortIsTruncated() throws {
        var parser = PointSubMessageParser(maxBlockSize: 1 << 20)
        var wire = PointSubMessage(kind: .request, payload: ByteBuffer(repeating: 1, count: 100_000)).encoded()
        parser.append(wire.readSlice(length: 30_000)!)
        parser.append(wire.readSlice(length: 30_000)!)
        #expect(try parser.next() == nil)
        #expect(parser.bufferedBytes == 60_000)
        #expect { try parser.finish() } throws: { ($0 as? PointSubError)?.violation == .truncated }
    }

    @Test func maxBlockSizeIsCheckedOnTheHeaderBeforeAnyPayload() throws {
        let max = 64 * 1024
        func header(length: Int, original: Int? = nil) -> ByteBuffer {
            var b = ByteBuffer()
            b.writeInteger(UInt8(1))
            b.writeInteger(UInt8(original == nil ? 0 : 1))
            b.writeVarint(UInt64(length))
            if let original { b.writeVarint(UInt64(original)) }
            return b
        }
        // Exactly the limit: accepted, waits for the payload.
        var parser = PointSubMessageParser(maxBlockSize: max)
        parser.append(header(length: max))
        #expect(try parser.next() == nil)
        parser.append(ByteBuffer(repeating: 7, count: max))
        #expect(try parser.next()?.payload.readableBytes == max)

        // One more: refused from the header alone, no payload byte needed.
        for bad in [header(length: max + 1), header(length: 10, original: max + 1), header(length: Int(Varint.maxValue))] {
            var parser = PointSubMessageParser(maxBlockSize: max)
            parser.append(bad)
            #expect { try parser.next() } throws: { ($0 as? PointSubError)?.code == .messageTooLarge }
        }
        var compressedAtLimit = PointSubMessageParser(maxBlockSize: max)
        compressedAtLimit.append(header(length: 3, original: max))
        #expect(try compressedAtLimit.next() == nil)
    }

    @Test func errorPayloads() throws {
        #expect(try RemoteErrorPayload(decoding: buffer("09 68 69")) == RemoteErrorPayload(code: .unknown(9), message: "hi"))
        #expect(!RemoteErrorCode.unknown(9).isRetryable)
        #expect(RemoteErrorCode.busy.isRetryable && RemoteErrorCode.unavailable.isRetryable)
        for code: UInt8 in 1...6 { #expect(RemoteErrorCode(rawValue: code).rawValue == code) }
        #expect { try RemoteErrorPayload(decoding: ByteBuffer()) } throws: {
            ($0 as? PointSubError)?.violation == .invalidErrorPayload
        }
        // Spec: receivers decode invalid UTF-8 with replacement characters and do not enforce
        // the 64 KiB limit on the text.
        #expect(try RemoteErrorPayload(decoding: buffer("01 ff fe")) == RemoteErrorPayload(code: .handler, message: "\u{FFFD}\u{FFFD}"))
        #expect(try RemoteErrorPayload(decoding: buffer("01 61 e2 82")) == RemoteErrorPayload(code: .handler, message: "a\u{FFFD}"))
        var over = ByteBuffer(bytes: [0x04])
        over.writeRepeatingByte(0x7a, count: 64 * 1024 + 1)
        #expect(try RemoteErrorPayload(decoding: over).message.utf8.count == 64 * 1024 + 1)
        // The text is cut to 64 KiB at a character boundary.
        let long = String(repeating: "é", count: 40_000)  // 80,000 UTF-8 bytes
        let message = PointSubMessage.error(.handler, long)
        let decoded = try RemoteErrorPayload(decoding: message.payload)
        #expect(decoded.message.utf8.count <= 64 * 1024)
        #expect(decoded.message.utf8.count >= 64 * 1024 - 1)
        #expect(decoded.message.allSatisfy { $0 == "é" })
    }

    @Test func retryableErrors() {
        #expect(PointSubError(.remote(.busy), "").isRetryable)
        #expect(PointSubError(.remote(.unavailable), "").isRetryable)
        #expect(!PointSubError(.remote(.handler), "").isRetryable)
        #expect(PointSubError(.timeout(requestSent: false), "").isRetryable)
        #expect(!PointSubError(.timeout(requestSent: true), "").isRetryable)
        #expect(PointSubError(.connectionFailed(requestSent: false), "").isRetryable)
        #expect(!PointSubError(.connectionFailed(requestSent: true), "").isRetryable)
        #expect(!PointSubError(.connectionFailed(requestSent: false), "", cause: HostError(.noAddresses, "")).isRetryable)
        #expect(PointSubError(.connectionFailed(requestSent: false), "", cause: HostError(.dialFailed, "")).isRetryable)
        let others: [PointSubError.Code] = [
            .messageTooLarge, .protocolNotSupported, .protocolViolation, .cancelled, .clientClosed, .invalidConfiguration,
        ]
        for code in others { #expect(!PointSubError(code, "").isRetryable) }
    }
}

@Suite struct CompressionTests {
    static let text = ByteBuffer(string: String(repeating: "PointSub carries requests and responses. ", count: 50))

    @Test func compressesWhenWorthIt() throws {
        let payload = Self.text
        let message = PointSubMessage.make(kind: .response, payload: payload, compress: true)
        #expect(message.isCompressed)
        #expect(message.originalLength == payload.readableBytes)
        #expect(message.payload.readableBytes * 10 <= payload.readableBytes * 9)
        // RFC 1950: CM 8 (deflate) in the low nibble of CMF, CINFO = log2(window) - 8 ≤ 7 in the high
        // one (the window is sized to the 2,050-byte payload: 4 KiB), and (CMF*256 + FLG) % 31 == 0.
        let cmf = message.payload.getInteger(at: message.payload.readerIndex, as: UInt8.self)!
        let flg = message.payload.getInteger(at: message.payload.readerIndex + 1, as: UInt8.self)!
        #expect(cmf & 0x0F == 8)
        #expect(cmf >> 4 == 12 - 8)
        #expect((UInt16(cmf) * 256 + UInt16(flg)) % 31 == 0)
        #expect(try message.decodedPayload(maxBlockSize: 1 << 20) == payload)
        // Round trip through the wire format.
        var parser = PointSubMessageParser(maxBlockSize: 1 << 20)
        parser.append(message.encoded())
        #expect(try parser.next()?.decodedPayload(maxBlockSize: 1 << 20) == payload)
    }

    /// zlib streams are reused per thread (ZlibStreamCache): every size class, back to back and
    /// after a failed inflate, must still produce and accept exact data.
    @Test func reusedStreamsStayExact() throws {
        var payloads: [ByteBuffer] = []
        for size in [1024, 3000, 70_000, 1024, 300_000, 5000] {
            let line = "request of \(size) bytes, reusing zlib streams. "
            payloads.append(ByteBuffer(string: String(String(repeating: line, count: size / line.utf8.count + 1).utf8.prefix(size))!))
        }
        for (round, payload) in (payloads + payloads).enumerated() {
            let message = PointSubMessage.make(kind: .request, payload: payload, compress: true)
            #expect(message.isCompressed)
            let cinfo = message.payload.getInteger(at: message.payload.readerIndex, as: UInt8.self)! >> 4
            #expect(cinfo <= 7)
            if payload.readableBytes > 32 * 1024 { #expect(cinfo == 7) }
            #expect(try message.decodedPayload(maxBlockSize: 1 << 20) == payload)
            if round == 3 {
                // A corrupt stream fails, and the next inflate on this thread is unaffected.
                var corrupt = message.payload
                corrupt.setInteger(UInt8(0xFF), at: corrupt.readerIndex + 5)
                #expect(throws: PointSubError.self) {
                    try PointSubCompression.decompress(corrupt, originalLength: payload.readableBytes, maxBlockSize: 1 << 20)
                }
            }
        }
    }

    /// The entropy pre-check skips random bytes without calling zlib and lets text, repetitive
    /// binary and short-period random data through to zlib.
    @Test func entropyPrecheck() {
        var generator = SystemRandomNumberGenerator()
        let random = ByteBuffer(bytes: (0..<4096).map { _ in UInt8.random(in: 0...255, using: &generator) })
        #expect(PointSubCompression.looksIncompressible(random))
        #expect(PointSubCompression.compressIfWorthwhile(random) == nil)
        #expect(!PointSubCompression.looksIncompressible(Self.text))
        // 256 random bytes repeated 8 times: high-entropy bytes, but zlib shrinks it a lot.
        let block = random.getBytes(at: 0, length: 256)!
        let repeated = ByteBuffer(bytes: Array((0..<8).map { _ in block }.joined()))
        #expect(!PointSubCompression.looksIncompressible(repeated))
        #expect(PointSubCompression.compressIfWorthwhile(repeated) != nil)
        // Few distinct byte values (e.g. counters, bitmaps) compress.
        let lowAlphabet = ByteBuffer(bytes: (0..<4096).map { _ in UInt8.random(in: 0...15, using: &generator) })
        #expect(!PointSubCompression.looksIncompressible(lowAlphabet))
        #expect(PointSubCompression.compressIfWorthwhile(lowAlphabet) != nil)
    }

    @Test func skipsSmallAndIncompressiblePayloads() {
        let small = ByteBuffer(repeating: 0, count: 1023)
        #expect(!PointSubMessage.make(kind: .request, payload: small, compress: true).isCompressed)
        #expect(PointSubMessage.make(kind: .request, payload: ByteBuffer(repeating: 0, count: 1024), compress: true).isCompressed)
        let noise = randomBytes(8192)
        #expect(!PointSubMessage.make(kind: .request, payload: noise, compress: true).isCompressed)
        #expect(!PointSubMessage.make(kind: .request, payload: Self.text, compress: false).isCompressed)
        // Large incompressible payloads are skipped by the probe.
        #expect(PointSubCompression.compressIfWorthwhile(randomBytes(512 * 1024)) == nil)
        #expect(!PointSubCompression.isWorthwhile(original: 1000, compressed: 500))  // under 1 KiB
        #expect(PointSubCompression.isWorthwhile(original: 2000, compressed: 1800))
        #expect(!PointSubCompression.isWorthwhile(original: 2000, compressed: 1801))
    }

    @Test func decompressionIsBoundedAndChecked() throws {
        let payload = ByteBuffer(repeating: 0x41, count: 100_000)
        let zlib = try #require(PointSubCompression.compress(payload))
        #expect(try PointSubCompression.decompress(zlib, originalLength: 100_000, maxBlockSize: 100_000) == payload)
        func failure(_ data: ByteBuffer, original: Int, max: Int = 1 << 20) -> PointSubError? {
            do {
                _ = try PointSubCompression.decompress(data, originalLength: original, maxBlockSize: max)
                return nil
            } catch { return error }
        }
        // Declared size smaller than the real one: stopped as soon as it would exceed it.
        #expect(failure(zlib, original: 99_999)?.violation == .originalSizeMismatch)
        #expect(failure(zlib, original: 10)?.violation == .originalSizeMismatch)
        #expect(failure(zlib, original: 100_001)?.violation == .originalSizeMismatch)
        // original over the block size: refused before inflating.
        #expect(failure(zlib, original: 100_000, max: 99_999)?.code == .messageTooLarge)
        // Truncated (no Adler-32 trailer), trailing bytes, corrupt, raw deflate without the zlib wrapper.
        var truncated = zlib
        truncated.moveWriterIndex(to: truncated.writerIndex - 4)
        #expect(failure(truncated, original: 100_000)?.violation == .corruptCompressedData)
        var trailing = zlib
        trailing.writeBytes([1, 2, 3])
        #expect(failure(trailing, original: 100_000)?.violation == .corruptCompressedData)
        var corrupt = zlib
        corrupt.setInteger(UInt8(0xff), at: corrupt.readerIndex + 5)
        corrupt.setInteger(UInt8(0xff), at: corrupt.readerIndex + 6)
        #expect(failure(corrupt, original: 100_000)?.code == .protocolViolation)
        var raw = zlib
        raw.moveReaderIndex(forwardBy: 2)
        #expect(failure(raw, original: 100_000)?.code == .protocolViolation)
        #expect(failure(ByteBuffer(), original: 0)?.violation == .corruptCompressedData)
        // An empty payload compressed is valid (receivers accept both forms).
        let empty = try #require(PointSubCompression.compress(ByteBuffer()))
        #expect(try PointSubCompression.decompress(empty, originalLength: 0, maxBlockSize: 10) == ByteBuffer())
    }
}

/// Pseudo-random bytes (SplitMix64; SystemRandomNumberGenerator is a syscall per call on Linux).
func randomBytes(_ count: Int) -> ByteBuffer {
    var state = UInt64.random(in: 0...UInt64.max)
    func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
    var buffer = ByteBuffer()
    buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { pointer in
        for word in 0..<(count / 8) {
            pointer.storeBytes(of: next(), toByteOffset: word * 8, as: UInt64.self)
        }
        for index in (count / 8 * 8)..<count { pointer[index] = UInt8(truncatingIfNeeded: next()) }
        return count
    }
    return buffer
}

@Suite struct AdaptiveLimitTests {
    let t0 = ContinuousClock.now

    @Test func adjustsAtMostOncePerInterval() {
        var limit = AdaptiveLimit(AdaptiveLimit.Configuration(), now: t0)
        var changed: Bool
        #expect(limit.limit == 1000)
        // High load (900/1000 = 0.9 > 0.8), but the interval has not passed.
        changed = limit.adjust(active: 900, now: t0 + .milliseconds(999))
        #expect(!changed)
        #expect(limit.limit == 1000)
        changed = limit.adjust(active: 900, now: t0 + .seconds(1))
        #expect(changed)
        #expect(limit.limit == 900)
        changed = limit.adjust(active: 900, now: t0 + .milliseconds(1500))
        #expect(!changed)
        changed = limit.adjust(active: 900, now: t0 + .seconds(2))
        #expect(changed)
        #expect(limit.limit == 810)
        // Load between the thresholds: no change.
        changed = limit.adjust(active: 400, now: t0 + .seconds(3))
        #expect(!changed)
        #expect(limit.limit == 810)
        // Low load (< 0.4): +10 %.
        changed = limit.adjust(active: 10, now: t0 + .seconds(4))
        #expect(changed)
        #expect(limit.limit == 891)
    }

    @Test func staysWithinMinimumAndMaximum() {
        var limit = AdaptiveLimit(AdaptiveLimit.Configuration(), now: t0)
        for second in 1...100 { limit.adjust(active: 100_000, now: t0 + .seconds(second)) }
        #expect(limit.limit == 100)
        for second in 101...300 { limit.adjust(active: 0, now: t0 + .seconds(second)) }
        #expect(limit.limit == 10_000)
        var fixed = AdaptiveLimit(.fixed(2), now: t0)
        let changed: Bool
        changed = fixed.adjust(active: 2, now: t0 + .seconds(10))
        #expect(!changed)
        #expect(fixed.limit == 2)
    }

    @Test func limiterRefusesBeyondTheLimitAndIsThreadSafe() async {
        let t0 = self.t0
        let limiter = ConnectionLimiter(.fixed(3), now: t0)
        #expect(limiter.tryAcquire(now: t0))
        #expect(limiter.tryAcquire(now: t0))
        #expect(limiter.tryAcquire(now: t0))
        #expect(!limiter.tryAcquire(now: t0))
        limiter.release(now: t0)
        #expect(limiter.tryAcquire(now: t0))
        for _ in 0..<3 { limiter.release(now: t0) }
        #expect(limiter.active == 0)

        var config = AdaptiveLimit.Configuration()
        config.initial = 200
        let shared = ConnectionLimiter(config, now: t0)
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    for _ in 0..<1000 where shared.tryAcquire() { shared.release() }
                }
            }
        }
        #expect(shared.active == 0)
        #expect((100...10_000).contains(shared.limit))
    }

    /// Issue 10: a peer holds at most its share of the slots, and its requests beyond a cap
    /// (well below the shrink threshold) do not count as load, so it cannot shrink the limit.
    @Test func perPeerShareAndOnePeerCannotShrinkTheLimit() throws {
        var config = AdaptiveLimit.Configuration()
        config.initial = 100
        config.minimum = 10
        config.maximum = 100
        let limiter = ConnectionLimiter(config, perPeerShare: 0.25, now: t0)
        let attacker = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        let honest = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        for _ in 0..<25 { #expect(limiter.tryAcquire(for: attacker, now: t0) == .admitted) }
        #expect(limiter.tryAcquire(for: attacker, now: t0) == .atPeerLimit)
        #expect(limiter.tryAcquire(for: honest, now: t0) == .admitted)
        // Many adjustment intervals at the attacker's full share: the limit stays.
        for second in 1...50 {
            #expect(limiter.tryAcquire(for: attacker, now: t0 + .seconds(second)) == .atPeerLimit)
        }
        #expect(limiter.limit == 100)
        limiter.release(for: honest, now: t0 + .seconds(51))
        for _ in 0..<25 { limiter.release(for: attacker, now: t0 + .seconds(51)) }
        #expect(limiter.active == 0)
        #expect(limiter.active(for: attacker) == 0)
    }

    @Test func invalidLimitConfigurations() {
        var c = AdaptiveLimit.Configuration()
        c.minimum = 0
        #expect(c.problem() != nil)
        c = AdaptiveLimit.Configuration()
        c.minimum = 500
        c.maximum = 400
        #expect(c.problem() != nil)
        c = AdaptiveLimit.Configuration()
        c.initial = 50
        #expect(c.problem() != nil)
        c = AdaptiveLimit.Configuration()
        c.adjustInterval = .zero
        #expect(c.problem() != nil)
        c = AdaptiveLimit.Configuration()
        c.lowLoad = 0.9
        #expect(c.problem() != nil)
        #expect(AdaptiveLimit.Configuration().problem() == nil)
    }
}

@Suite struct BufferPoolTests {
    @Test func reusesAndBoundsBuffers() {
        let pool = BufferPool(maxBuffers: 2, maxBufferCapacity: 1024, initialCapacity: 64)
        var a = pool.take()
        a.writeString("abc")
        pool.give(a)
        let again = pool.take()
        #expect(again.readableBytes == 0)
        #expect(pool.statistics.reused == 1)
        pool.give(again)
        pool.give(ByteBuffer(repeating: 0, count: 10))
        pool.give(ByteBuffer(repeating: 0, count: 10))
        #expect(pool.count == 2)
        #expect(pool.statistics.dropped == 1)
        // Too large to keep.
        pool.give(ByteBuffer(repeating: 0, count: 4096))
        #expect(pool.count == 2)
        #expect(pool.statistics.dropped == 2)
    }
}
