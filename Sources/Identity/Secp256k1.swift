#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Crypto
import Foundation

/// secp256k1 ECDSA through libsecp256k1 (bitcoin-core's reference C library), loaded at run time.
///
/// The library is opened with `dlopen` the first time a secp256k1 key is used, never linked: the
/// package builds and runs without it, and only secp256k1 operations fail (with
/// ``IdentityError/Code/libraryUnavailable`` naming the package to install) when it is missing.
/// `POINTSUB_LIBSECP256K1=/path/to/libsecp256k1.so` picks a library file explicitly (and only
/// that one).
///
/// libp2p's rules (peer-ids spec, "Secp256k1": Bitcoin encodings and BIP-62 signatures):
/// - public key: the 33-byte compressed SEC1 point (go and py both send only this form);
/// - private key: the 32-byte big-endian scalar, in 1..<n;
/// - signature: ECDSA over SHA-256(message), strict DER, low S (BIP-62). libsecp256k1 signs with
///   RFC 6979 nonces and always produces low S; go-libp2p (decred) does too, py-libp2p
///   (coincurve) as well. On verification py (libsecp256k1 without normalisation) rejects high S
///   while go accepts it; we follow the spec and py and reject it.
enum Secp256k1 {
    static let publicKeyLength = 33
    static let privateKeyLength = 32
    /// A DER ECDSA signature is at most 72 bytes (two 33-byte INTEGERs plus headers).
    static let maxSignatureLength = 72

    /// The environment variable naming the library file to load (instead of the default sonames).
    static let libraryVariable = "POINTSUB_LIBSECP256K1"

    /// What to tell the user when the library cannot be loaded.
    static let installHint =
        "secp256k1 keys need libsecp256k1 at run time (Debian/Ubuntu: apt-get install libsecp256k1-dev; "
        + "macOS: brew install secp256k1; or set \(libraryVariable) to the library file)"

    /// The sonames tried in order: newer releases (.so.2), Debian 12's libsecp256k1-1 0.2.0
    /// (.so.1), older distributions (.so.0), then the unversioned symlink of the -dev package.
    #if canImport(Darwin)
    static let defaultNames = ["libsecp256k1.dylib", "libsecp256k1.2.dylib", "libsecp256k1.1.dylib",
                               "/opt/homebrew/lib/libsecp256k1.dylib", "/usr/local/lib/libsecp256k1.dylib"]
    #else
    static let defaultNames = ["libsecp256k1.so.2", "libsecp256k1.so.1", "libsecp256k1.so.0", "libsecp256k1.so"]
    #endif

    /// The process-wide library and context, loaded on first use (a `static let` is initialised
    /// once, thread-safely).
    static let shared: Result<Library, IdentityError> = {
        if let path = getenv(libraryVariable).map({ String(cString: $0) }), !path.isEmpty {
            return Library.load(names: [path])
        }
        return Library.load(names: defaultNames)
    }()

    /// The loaded library, or `.libraryUnavailable`.
    static func library() throws(IdentityError) -> Library {
        switch shared {
        case .success(let library): return library
        case .failure(let error): throw error
        }
    }

    /// Whether libsecp256k1 could be loaded in this process.
    static var isAvailable: Bool {
        if case .success = shared { return true }
        return false
    }

    // MARK: The C API (secp256k1.h), declared here because nothing links against the library

    // `secp256k1_pubkey` and `secp256k1_ecdsa_signature` are opaque 64-byte structs
    // (`unsigned char data[64]`, alignment 1): we pass pointers to 64-byte buffers.
    static let opaqueLength = 64

    typealias Context = OpaquePointer
    typealias ContextCreate = @convention(c) (UInt32) -> Context?
    typealias ContextRandomize = @convention(c) (Context?, UnsafePointer<UInt8>?) -> Int32
    typealias Callback = @convention(c) (UnsafePointer<CChar>?, UnsafeMutableRawPointer?) -> Void
    typealias SetCallback = @convention(c) (Context?, Callback?, UnsafeRawPointer?) -> Void
    typealias SeckeyVerify = @convention(c) (Context?, UnsafePointer<UInt8>?) -> Int32
    typealias PubkeyCreate = @convention(c) (Context?, UnsafeMutableRawPointer?, UnsafePointer<UInt8>?) -> Int32
    typealias PubkeyParse = @convention(c) (Context?, UnsafeMutableRawPointer?, UnsafePointer<UInt8>?, Int) -> Int32
    typealias PubkeySerialize = @convention(c) (
        Context?, UnsafeMutablePointer<UInt8>?, UnsafeMutablePointer<Int>?, UnsafeRawPointer?, UInt32
    ) -> Int32
    typealias SignatureParseDER = @convention(c) (Context?, UnsafeMutableRawPointer?, UnsafePointer<UInt8>?, Int) -> Int32
    typealias SignatureSerializeDER = @convention(c) (
        Context?, UnsafeMutablePointer<UInt8>?, UnsafeMutablePointer<Int>?, UnsafeRawPointer?
    ) -> Int32
    typealias SignatureNormalize = @convention(c) (Context?, UnsafeMutableRawPointer?, UnsafeRawPointer?) -> Int32
    typealias Verify = @convention(c) (Context?, UnsafeRawPointer?, UnsafePointer<UInt8>?, UnsafeRawPointer?) -> Int32
    typealias Sign = @convention(c) (
        Context?, UnsafeMutableRawPointer?, UnsafePointer<UInt8>?, UnsafePointer<UInt8>?, OpaquePointer?, UnsafeRawPointer?
    ) -> Int32

    /// SECP256K1_CONTEXT_SIGN | SECP256K1_CONTEXT_VERIFY: what libraries before 0.2 need; 0.2 and
    /// later treat these (deprecated) flags as SECP256K1_CONTEXT_NONE.
    static let contextFlags: UInt32 = 0x0301
    /// SECP256K1_EC_COMPRESSED.
    static let compressedFlag: UInt32 = 0x0102

    /// The opened library, its functions and one randomized context.
    ///
    /// `@unchecked Sendable`: the context is written only while loading (creation, randomization,
    /// callbacks); afterwards only functions taking a `const secp256k1_context*` are called,
    /// which libsecp256k1 documents as safe to call from several threads at once. The library
    /// handle is never closed.
    struct Library: @unchecked Sendable {
        let context: Context
        let seckeyVerify: SeckeyVerify
        let pubkeyCreate: PubkeyCreate
        let pubkeyParse: PubkeyParse
        let pubkeySerialize: PubkeySerialize
        let signatureParseDER: SignatureParseDER
        let signatureSerializeDER: SignatureSerializeDER
        let signatureNormalize: SignatureNormalize
        let ecdsaVerify: Verify
        let ecdsaSign: Sign

        /// Opens the first of `names` that loads and has every function; creates and randomizes
        /// the context.
        static func load(names: [String]) -> Result<Library, IdentityError> {
            var problems: [String] = []
            for name in names {
                guard let handle = dlopen(name, RTLD_NOW | RTLD_LOCAL) else {
                    problems.append(dlerror().map { String(cString: $0) } ?? "\(name): cannot be opened")
                    continue
                }
                do {
                    return .success(try open(handle: handle, name: name))
                } catch {
                    problems.append(error.reason)
                    dlclose(handle)
                }
            }
            return .failure(IdentityError(
                .libraryUnavailable, "\(installHint); tried \(names.joined(separator: ", ")): \(problems.joined(separator: "; "))"))
        }

        /// Why an opened file is not a usable libsecp256k1.
        struct OpenFailure: Error {
            let reason: String
        }

        private static func open(handle: UnsafeMutableRawPointer, name: String) throws(OpenFailure) -> Library {
            func symbol<F>(_ symbolName: String, as type: F.Type) -> F? {
                guard let address = dlsym(handle, symbolName) else { return nil }
                return unsafeBitCast(address, to: type)
            }
            guard let create = symbol("secp256k1_context_create", as: ContextCreate.self),
                let randomize = symbol("secp256k1_context_randomize", as: ContextRandomize.self),
                let setIllegal = symbol("secp256k1_context_set_illegal_callback", as: SetCallback.self),
                let seckeyVerify = symbol("secp256k1_ec_seckey_verify", as: SeckeyVerify.self),
                let pubkeyCreate = symbol("secp256k1_ec_pubkey_create", as: PubkeyCreate.self),
                let pubkeyParse = symbol("secp256k1_ec_pubkey_parse", as: PubkeyParse.self),
                let pubkeySerialize = symbol("secp256k1_ec_pubkey_serialize", as: PubkeySerialize.self),
                let parseDER = symbol("secp256k1_ecdsa_signature_parse_der", as: SignatureParseDER.self),
                let serializeDER = symbol("secp256k1_ecdsa_signature_serialize_der", as: SignatureSerializeDER.self),
                let normalize = symbol("secp256k1_ecdsa_signature_normalize", as: SignatureNormalize.self),
                let verify = symbol("secp256k1_ecdsa_verify", as: Verify.self),
                let sign = symbol("secp256k1_ecdsa_sign", as: Sign.self)
            else {
                throw OpenFailure(reason: "\(name) lacks a secp256k1 function this code needs")
            }
            guard let context = create(contextFlags) else { throw OpenFailure(reason: "\(name): secp256k1_context_create failed") }
            // The default "illegal argument" callback aborts the process. Our calls never pass
            // illegal arguments, but if one ever did, the call returns 0 (a typed error here)
            // instead — the library guarantees it does not crash after the callback returns.
            setIllegal(context, { _, _ in }, nil)
            // Blinding for the signing (and key generation) multiplications, against side channels.
            var seed = randomBytes(32)
            defer { for i in seed.indices { seed[i] = 0 } }
            guard randomize(context, seed) == 1 else { throw OpenFailure(reason: "\(name): secp256k1_context_randomize failed") }
            return Library(
                context: context, seckeyVerify: seckeyVerify, pubkeyCreate: pubkeyCreate, pubkeyParse: pubkeyParse,
                pubkeySerialize: pubkeySerialize, signatureParseDER: parseDER, signatureSerializeDER: serializeDER,
                signatureNormalize: normalize, ecdsaVerify: verify, ecdsaSign: sign)
        }

        // MARK: Keys

        /// Whether `secret` (32 bytes) is a valid private key: 0 < k < n.
        func isValidSecret(_ secret: UnsafeRawBufferPointer) -> Bool {
            guard secret.count == privateKeyLength else { return false }
            return seckeyVerify(context, secret.assumingMemoryBound(to: UInt8.self).baseAddress) == 1
        }

        /// The compressed public key of a valid secret.
        func publicKey(secret: UnsafeRawBufferPointer) throws(IdentityError) -> [UInt8] {
            var pubkey = [UInt8](repeating: 0, count: opaqueLength)
            let ok = secret.count == privateKeyLength && pubkey.withUnsafeMutableBytes {
                pubkeyCreate(context, $0.baseAddress, secret.assumingMemoryBound(to: UInt8.self).baseAddress) == 1
            }
            guard ok else { throw IdentityError(.invalidKey, "invalid Secp256k1 private key") }
            return try serialize(pubkey)
        }

        /// Parses a compressed public key (on the curve, x < p) into libsecp256k1's internal form.
        func parsePublicKey(_ raw: [UInt8]) throws(IdentityError) -> [UInt8] {
            guard raw.count == publicKeyLength, raw[0] == 0x02 || raw[0] == 0x03 else {
                throw IdentityError(.invalidKey, "Secp256k1 public key must be the 33-byte compressed form, got \(raw.count) bytes")
            }
            var pubkey = [UInt8](repeating: 0, count: opaqueLength)
            let ok = pubkey.withUnsafeMutableBytes { out in
                raw.withUnsafeBufferPointer { pubkeyParse(context, out.baseAddress, $0.baseAddress, $0.count) == 1 }
            }
            guard ok else { throw IdentityError(.invalidKey, "Secp256k1 public key is not a point on the curve") }
            // Canonical by construction for 33 bytes (x >= p is refused above); checked anyway.
            guard try serialize(pubkey) == raw else {
                throw IdentityError(.invalidKey, "Secp256k1 public key is not in canonical compressed form")
            }
            return pubkey
        }

        private func serialize(_ pubkey: [UInt8]) throws(IdentityError) -> [UInt8] {
            var out = [UInt8](repeating: 0, count: publicKeyLength)
            var length = publicKeyLength
            let ok = out.withUnsafeMutableBufferPointer { buffer in
                pubkey.withUnsafeBytes { pubkeySerialize(context, buffer.baseAddress, &length, $0.baseAddress, compressedFlag) == 1 }
            }
            guard ok, length == publicKeyLength else {
                throw IdentityError(.invalidKey, "Secp256k1 public key could not be serialized")
            }
            return out
        }

        // MARK: Signatures

        /// Signs SHA-256(`message`): RFC 6979 nonce, low S, DER.
        func sign(_ message: some DataProtocol, secret: UnsafeRawBufferPointer) throws(IdentityError) -> [UInt8] {
            let digest = Array(SHA256.hash(data: message))
            var signature = [UInt8](repeating: 0, count: opaqueLength)
            let signed = secret.count == privateKeyLength && signature.withUnsafeMutableBytes { sig in
                digest.withUnsafeBufferPointer { hash in
                    // noncefp NULL: secp256k1_nonce_function_default (RFC 6979).
                    ecdsaSign(context, sig.baseAddress, hash.baseAddress, secret.assumingMemoryBound(to: UInt8.self).baseAddress, nil, nil) == 1
                }
            }
            guard signed else { throw IdentityError(.signingFailed, "Secp256k1 signing failed") }
            var der = [UInt8](repeating: 0, count: maxSignatureLength)
            var length = maxSignatureLength
            let ok = der.withUnsafeMutableBufferPointer { out in
                signature.withUnsafeBytes { signatureSerializeDER(context, out.baseAddress, &length, $0.baseAddress) == 1 }
            }
            guard ok, length <= maxSignatureLength else {
                throw IdentityError(.signingFailed, "Secp256k1 signature could not be DER-encoded")
            }
            return Array(der.prefix(length))
        }

        /// Verifies a strict-DER, low-S signature of SHA-256(`message`) by `publicKey` (the parsed
        /// 64-byte form); throws `.invalidSignature` with the reason.
        func verify(
            signature der: [UInt8], for message: some DataProtocol, publicKey: [UInt8]
        ) throws(IdentityError) {
            guard !der.isEmpty, der.count <= maxSignatureLength else {
                throw IdentityError(.invalidSignature, "Secp256k1 DER signature of \(der.count) bytes (at most \(maxSignatureLength))")
            }
            var signature = [UInt8](repeating: 0, count: opaqueLength)
            let parsed = signature.withUnsafeMutableBytes { sig in
                der.withUnsafeBufferPointer { signatureParseDER(context, sig.baseAddress, $0.baseAddress, $0.count) == 1 }
            }
            guard parsed else { throw IdentityError(.invalidSignature, "Secp256k1 signature is not valid DER") }
            // libsecp256k1's DER parser takes r or s >= n (as 0, which never verifies); BIP-62
            // (and go's parser) refuse them. Re-encoding shows both and any other non-canonical form.
            var again = [UInt8](repeating: 0, count: maxSignatureLength)
            var length = maxSignatureLength
            let encoded = again.withUnsafeMutableBufferPointer { out in
                signature.withUnsafeBytes { signatureSerializeDER(context, out.baseAddress, &length, $0.baseAddress) == 1 }
            }
            guard encoded, length == der.count, Array(again.prefix(length)) == der else {
                throw IdentityError(.invalidSignature, "Secp256k1 signature is not canonical DER (r or s out of range)")
            }
            // normalize returns 1 when it had to replace a high S.
            var normalized = [UInt8](repeating: 0, count: opaqueLength)
            let wasHigh = normalized.withUnsafeMutableBytes { out in
                signature.withUnsafeBytes { signatureNormalize(context, out.baseAddress, $0.baseAddress) == 1 }
            }
            guard !wasHigh else {
                throw IdentityError(.invalidSignature, "Secp256k1 signature has a high S value (BIP-62 requires low S)")
            }
            let digest = Array(SHA256.hash(data: message))
            let valid = signature.withUnsafeBytes { sig in
                digest.withUnsafeBufferPointer { hash in
                    publicKey.withUnsafeBytes { ecdsaVerify(context, sig.baseAddress, hash.baseAddress, $0.baseAddress) == 1 }
                }
            }
            guard valid else { throw IdentityError(.invalidSignature, "Secp256k1 signature does not verify") }
        }
    }

    /// `count` bytes from the system's cryptographically secure generator.
    static func randomBytes(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        var bytes = [UInt8](repeating: 0, count: count)
        for i in bytes.indices { bytes[i] = UInt8.random(in: 0...255, using: &generator) }
        return bytes
    }

    /// A private key's 32 secret bytes in memory of their own, zeroed when the last copy goes.
    ///
    /// `@unchecked Sendable`: written once in `init`, only read afterwards.
    final class Secret: @unchecked Sendable {
        private let storage: UnsafeMutableRawBufferPointer

        /// Copies `bytes` (exactly 32).
        init(_ bytes: some Collection<UInt8>) {
            storage = .allocate(byteCount: privateKeyLength, alignment: 8)
            storage.initializeMemory(as: UInt8.self, repeating: 0)
            for (i, byte) in bytes.prefix(privateKeyLength).enumerated() { storage[i] = byte }
        }

        deinit {
            // explicit_bzero: a zeroing the optimizer may not drop (glibc >= 2.25).
            #if canImport(Glibc)
            if let base = storage.baseAddress { explicit_bzero(base, storage.count) }
            #else
            storage.initializeMemory(as: UInt8.self, repeating: 0)
            #endif
            storage.deallocate()
        }

        /// Calls `body` with the 32 secret bytes (valid only during the call).
        func withBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
            try body(UnsafeRawBufferPointer(storage))
        }

        /// A copy of the secret (for marshaling).
        var bytes: [UInt8] { Array(storage) }
    }
}
