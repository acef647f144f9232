import Foundation
import Testing

@testable import Identity

/// Malformed RSA keys from the network must be refused with a typed error, never reach the
/// crypto library's error path (swift-crypto 3.12.3 double-frees there and the process aborts).
@Suite struct RSAKeyValidationTests {
    /// A valid 2048-bit key's SubjectPublicKeyInfo, generated once for the suite.
    static let validSPKI: [UInt8] = {
        let key = try! PrivateKey.generateRSA(bits: 2048)
        return key.publicKey.raw
    }()

    @Test func theRemoteCrashInputIsATypedErrorEveryTime() {
        // PublicKey{Type=RSA, Data=<empty>}: the smallest input that aborted the process after
        // 200–2,800 tries through Noise message 3, identify or PeerID parsing.
        let smallest: [UInt8] = [0x08, 0x00, 0x12, 0x00]
        // A double free corrupts the heap silently unless the freed block is still at the head of
        // its cache, so keep the allocator busy with blocks of the sizes involved in between.
        var keep: [[UInt8]] = []
        for i in 0..<4_000 {
            #expect(throws: IdentityError.self) { try PublicKey(marshaled: smallest) }
            keep.append([UInt8](repeating: UInt8(truncatingIfNeeded: i), count: 16 + (i % 7) * 8))
            if keep.count > 64 { keep.removeFirst(32) }
        }
        var garbage: [UInt8] = [0x08, 0x00, 0x12, 0x04, 0x30, 0x02, 0x05, 0x00]
        for i in 0..<2_000 {
            garbage[7] = UInt8(truncatingIfNeeded: i)
            #expect(throws: IdentityError.self) { try PublicKey(marshaled: garbage) }
        }
    }

    /// The same loop in a child process under glibc's checking allocator (MALLOC_CHECK_=3 with
    /// libc_malloc_debug preloaded), which aborts at the first double free instead of letting it
    /// corrupt the heap silently: on the old code this child died at once.
    @Test func theCrashInputUnderACheckingAllocator() throws {
        let debugMalloc = "/usr/lib/x86_64-linux-gnu/libc_malloc_debug.so.0"
        guard FileManager.default.fileExists(atPath: debugMalloc) else {
            Issue.record("\(debugMalloc) is missing (glibc's libc6 package provides it)")
            return
        }
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        child.arguments = ["--testing-library", "swift-testing", "--filter", "theRemoteCrashInputIsATypedErrorEveryTime"]
        var environment = ProcessInfo.processInfo.environment
        environment["LD_PRELOAD"] = debugMalloc
        environment["MALLOC_CHECK_"] = "3"
        child.environment = environment
        child.standardOutput = FileHandle.nullDevice
        child.standardError = FileHandle.nullDevice
        try child.run()
        child.waitUntilExit()
        #expect(child.terminationReason == .exit)
        #expect(child.terminationStatus == 0)
    }

    @Test func validKeysStillParseAndRoundTrip() throws {
        let key = try PublicKey(type: .rsa, raw: Self.validSPKI)
        #expect(key.raw == Self.validSPKI)
        #expect(try PublicKey(marshaled: key.marshal()) == key)
    }

    @Test func everyTruncationIsRefused() {
        let spki = Self.validSPKI
        for length in 0..<spki.count {
            #expect(throws: IdentityError.self) { try PublicKey(type: .rsa, raw: Array(spki[..<length])) }
        }
        #expect(throws: IdentityError.self) { try PublicKey(type: .rsa, raw: spki + [0x00]) }
    }

    @Test func everySingleByteCorruptionIsRefusedOrCanonical() {
        // Flipping any bit either breaks the structure (typed error) or yields another key that
        // must then be accepted as itself; it may never crash.
        let spki = Self.validSPKI
        for index in stride(from: 0, to: spki.count, by: 3) {
            var corrupted = spki
            corrupted[index] ^= 0x41
            if let key = try? PublicKey(type: .rsa, raw: corrupted) {
                #expect(key.raw == corrupted)
            }
        }
    }

    /// A SubjectPublicKeyInfo around `n` and `e` (content bytes of the INTEGERs).
    static func spki(n: [UInt8], e: [UInt8], oid: [UInt8] = DER.rsaEncryptionOID, null: Bool = true) -> [UInt8] {
        let rsaKey = DER.tlv(0x30, DER.tlv(0x02, n) + DER.tlv(0x02, e))
        let algorithm = DER.tlv(0x30, DER.tlv(0x06, oid) + (null ? [0x05, 0x00] : []))
        return DER.tlv(0x30, algorithm + DER.tlv(0x03, [0x00] + rsaKey))
    }

    @Test func badParametersAreRefusedBeforeTheCryptoLibrarySeesThem() {
        let odd2048: [UInt8] = [0x00, 0xc1] + Array(repeating: 0x5a, count: 254) + [0x01]  // 2048 bits, odd
        #expect((try? PublicKey(type: .rsa, raw: Self.spki(n: odd2048, e: [0x01, 0x00, 0x01]))) != nil)

        func refused(_ raw: [UInt8], _ code: IdentityError.Code = .invalidKey) {
            #expect {
                try PublicKey(type: .rsa, raw: raw)
            } throws: { error in
                (error as? IdentityError)?.code == code
            }
        }
        var even = odd2048
        even[even.count - 1] = 0x02
        refused(Self.spki(n: even, e: [0x01, 0x00, 0x01]))  // even modulus
        refused(Self.spki(n: odd2048, e: [0x01]))  // e = 1
        refused(Self.spki(n: odd2048, e: [0x01, 0x00, 0x02]))  // even e
        refused(Self.spki(n: odd2048, e: [0x01] + Array(repeating: 0x00, count: 4) + [0x01]))  // 41-bit e
        refused(Self.spki(n: Array(odd2048.dropFirst()), e: [0x01, 0x00, 0x01]))  // negative n
        refused(Self.spki(n: [0x00] + odd2048, e: [0x01, 0x00, 0x01]))  // non-minimal n
        refused(Self.spki(n: odd2048, e: [0x01, 0x00, 0x01], null: false))  // no NULL parameters
        refused(Self.spki(n: odd2048, e: [0x01, 0x00, 0x01], oid: DER.p256OID))  // not rsaEncryption
        refused(Self.spki(n: [0x00, 0xc1] + Array(repeating: 0x5a, count: 126) + [0x01], e: [0x03]), .rsaKeyTooSmall)
        refused(Self.spki(n: [0x7f] + Array(repeating: 0x5a, count: 1100) + [0x01], e: [0x03]), .rsaKeyTooLarge)
    }

    @Test func peerIDsWithMalformedRSAKeysAreRefused() {
        // An identity multihash of the crash key: PeerID parsing reaches the same parser.
        let key: [UInt8] = [0x08, 0x00, 0x12, 0x00]
        let identityMultihash: [UInt8] = [0x00, UInt8(key.count)] + key
        for _ in 0..<1_000 {
            // Either refused as a peer ID or accepted without an extractable key; never a crash.
            if let peer = try? PeerID(bytes: identityMultihash) { #expect(peer.publicKey == nil) }
        }
    }
}
