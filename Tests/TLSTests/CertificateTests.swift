import Crypto
import Foundation
import Identity
import SwiftASN1
import Testing
import X509

@testable import TLS

/// Builds certificates with chosen defects, to check each verification rule.
enum CertificateFactory {
    struct Options {
        var identity: PrivateKey
        var notBefore = Date() - 3600
        var notAfter = Date() + 3600
        /// Makes the SignedKey from the certificate's key; nil: the right SignedKey for `identity`.
        var signedKey: ((Certificate.PublicKey) throws -> [UInt8])?
        var includeExtension = true
        var extensionCritical = false
        var extraExtensions: [Certificate.Extension] = []
        /// Sign the certificate with another key than its own (a broken self-signature).
        var wrongSigner = false
    }

    static func make(_ options: Options) throws -> LibP2PCertificate {
        let key = P256.Signing.PrivateKey()
        let publicKey = Certificate.PublicKey(key.publicKey)
        var extensions = options.extraExtensions
        if options.includeExtension {
            let value = try options.signedKey?(publicKey)
                ?? LibP2PCertificate.makeSignedKey(identity: options.identity, certificatePublicKey: publicKey)
            extensions.append(Certificate.Extension(
                oid: LibP2PCertificate.extensionOID, critical: options.extensionCritical, value: value[...]))
        }
        let name = try DistinguishedName { CommonName("test") }
        let signer = options.wrongSigner ? P256.Signing.PrivateKey() : key
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: publicKey,
            notValidBefore: options.notBefore, notValidAfter: options.notAfter, issuer: name, subject: name,
            signatureAlgorithm: .ecdsaWithSHA256, extensions: Certificate.Extensions(extensions),
            issuerPrivateKey: Certificate.PrivateKey(signer))
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        return LibP2PCertificate(der: serializer.serializedBytes, certificateKey: key)
    }
}

@Suite("libp2p TLS certificate")
struct CertificateTests {
    static let rsaIdentity: PrivateKey = try! PrivateKey.generateRSA(bits: 2048)

    static func identities() -> [PrivateKey] {
        [PrivateKey.generateEd25519(), PrivateKey.generateECDSA(), rsaIdentity]
    }

    @Test("a generated certificate verifies and yields the identity's peer ID (Ed25519, ECDSA, RSA)")
    func roundTrip() throws {
        for identity in Self.identities() {
            let certificate = try LibP2PCertificate.generate(identity: identity)
            let peer = try LibP2PCertificate.verify(chain: [certificate.der], expectedPeer: identity.peerID)
            #expect(peer.peerID == identity.peerID)
            #expect(peer.publicKey == identity.publicKey)
            // The certificate's key is fresh, not the identity key.
            let parsed = try Certificate(derEncoded: certificate.der)
            #expect(parsed.publicKey == Certificate.PublicKey(certificate.certificateKey.publicKey))
            #expect(parsed.extensions.count == 1)
            #expect(parsed.extensions.first?.critical == false)
            // The identity signed "libp2p-tls-handshake:" ‖ the certificate key's whole DER
            // SubjectPublicKeyInfo (swift-crypto's encoding, independent of the code under test).
            let signedKey = try #require(LibP2PCertificate.signedKey(in: certificate.der))
            let (marshaled, signature) = try LibP2PCertificate.decodeSignedKey(signedKey[...])
            #expect(marshaled == identity.publicKey.marshal())
            let spki = Array(certificate.certificateKey.publicKey.derRepresentation)
            #expect(identity.publicKey.verify(signature: signature, for: Array("libp2p-tls-handshake:".utf8) + spki))
            #expect(try Array(LibP2PCertificate.subjectPublicKeyInfo(of: parsed)) == spki)
        }
    }

    @Test("two certificates for one identity use different keys")
    func freshKeys() throws {
        let identity = PrivateKey.generateEd25519()
        let a = try LibP2PCertificate.generate(identity: identity)
        let b = try LibP2PCertificate.generate(identity: identity)
        #expect(a.certificateKey.publicKey.rawRepresentation != b.certificateKey.publicKey.rawRepresentation)
    }

    @Test("SignedKey encodes as SEQUENCE { OCTET STRING, OCTET STRING } and decodes back")
    func signedKeyRoundTrip() throws {
        let encoded = LibP2PCertificate.encodeSignedKey(publicKey: [1, 2, 3], signature: [4, 5])
        #expect(encoded == [0x30, 0x09, 0x04, 0x03, 1, 2, 3, 0x04, 0x02, 4, 5])
        let decoded = try LibP2PCertificate.decodeSignedKey(encoded[...])
        #expect(decoded.publicKey == [1, 2, 3])
        #expect(decoded.signature == [4, 5])
        // Trailing bytes, a third field, wrong tags: all refused.
        for bad: [UInt8] in [
            encoded + [0], [0x30, 0x0B, 0x04, 0x03, 1, 2, 3, 0x04, 0x02, 4, 5, 0x05, 0x00],
            [0x30, 0x09, 0x03, 0x03, 1, 2, 3, 0x04, 0x02, 4, 5], [0x30, 0x05, 0x04, 0x03, 1, 2, 3], [],
        ] {
            do {
                _ = try LibP2PCertificate.decodeSignedKey(bad[...])
                Issue.record("accepted \(bad)")
            } catch {
                #expect(error.code == .malformedExtension)
            }
        }
    }

    static func expectRefusal(
        _ code: TLSError.Code, chain: [[UInt8]], now: Date = Date(), expectedPeer: PeerID? = nil,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        do {
            _ = try LibP2PCertificate.verify(chain: chain, now: now, expectedPeer: expectedPeer)
            Issue.record("accepted; expected \(code)", sourceLocation: sourceLocation)
        } catch {
            #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
        }
    }

    @Test("each rule refuses with its own error")
    func rules() throws {
        let identity = PrivateKey.generateEd25519()
        let good = try LibP2PCertificate.generate(identity: identity)

        Self.expectRefusal(.noCertificate, chain: [])
        Self.expectRefusal(.certificateChainTooLong, chain: [good.der, good.der])
        Self.expectRefusal(.peerIDMismatch, chain: [good.der], expectedPeer: PrivateKey.generateEd25519().peerID)
        Self.expectRefusal(.certificateExpired, chain: [good.der], now: Date() + LibP2PCertificate.validity + 86400)
        Self.expectRefusal(.certificateNotYetValid, chain: [good.der], now: Date() - 2 * LibP2PCertificate.backdating)
        Self.expectRefusal(.certificateTooLarge, chain: [good.der + [UInt8](repeating: 0, count: LibP2PCertificate.maxCertificateBytes)])
        Self.expectRefusal(.malformedCertificate, chain: [Array(good.der.dropLast())])
        Self.expectRefusal(.malformedCertificate, chain: [[0x30, 0x00]])

        let expired = try CertificateFactory.make(.init(identity: identity, notBefore: Date() - 7200, notAfter: Date() - 3600))
        Self.expectRefusal(.certificateExpired, chain: [expired.der])

        let noExtension = try CertificateFactory.make(.init(identity: identity, includeExtension: false))
        Self.expectRefusal(.missingExtension, chain: [noExtension.der])

        let wrongSigner = try CertificateFactory.make(.init(identity: identity, wrongSigner: true))
        Self.expectRefusal(.invalidCertificateSignature, chain: [wrongSigner.der])

        let critical = Certificate.Extension(oid: [1, 2, 3, 4, 5], critical: true, value: [0x05, 0x00])
        let unknownCritical = try CertificateFactory.make(.init(identity: identity, extraExtensions: [critical]))
        Self.expectRefusal(.unknownCriticalExtension, chain: [unknownCritical.der])

        // A bad SignedKey signature: the identity signed another certificate key.
        let otherKey = Certificate.PublicKey(P256.Signing.PrivateKey().publicKey)
        let stolen = try LibP2PCertificate.makeSignedKey(identity: identity, certificatePublicKey: otherKey)
        let badSignature = try CertificateFactory.make(.init(identity: identity, signedKey: { _ in stolen }))
        Self.expectRefusal(.invalidSignedKeySignature, chain: [badSignature.der])

        // A signature over the right key, but without the "libp2p-tls-handshake:" prefix.
        let unprefixed = try CertificateFactory.make(.init(identity: identity, signedKey: { key in
            var serializer = DER.Serializer()
            try serializer.serialize(key)
            return LibP2PCertificate.encodeSignedKey(
                publicKey: identity.publicKey.marshal(), signature: try identity.sign(serializer.serializedBytes))
        }))
        Self.expectRefusal(.invalidSignedKeySignature, chain: [unprefixed.der])

        // A signature over the key's BIT STRING contents only, not the whole SubjectPublicKeyInfo.
        let keyOnly = try CertificateFactory.make(.init(identity: identity, signedKey: { key in
            LibP2PCertificate.encodeSignedKey(
                publicKey: identity.publicKey.marshal(),
                signature: try identity.sign(LibP2PCertificate.signaturePrefix + Array(key.subjectPublicKeyInfoBytes)))
        }))
        Self.expectRefusal(.invalidSignedKeySignature, chain: [keyOnly.der])

        // The SignedKey of another identity: its signature does not verify with the key it names.
        let otherIdentity = PrivateKey.generateEd25519()
        let mixed = try CertificateFactory.make(.init(identity: identity, signedKey: { key in
            let real = try LibP2PCertificate.makeSignedKey(identity: identity, certificatePublicKey: key)
            let signature = try LibP2PCertificate.decodeSignedKey(real[...]).signature
            return LibP2PCertificate.encodeSignedKey(publicKey: otherIdentity.publicKey.marshal(), signature: signature)
        }))
        Self.expectRefusal(.invalidSignedKeySignature, chain: [mixed.der])

        let garbage = try CertificateFactory.make(.init(identity: identity, signedKey: { _ in [0x30, 0x03, 0x04, 0x01] }))
        Self.expectRefusal(.malformedExtension, chain: [garbage.der])

        let badKey = LibP2PCertificate.encodeSignedKey(publicKey: [0x08, 0x01, 0x12, 0x01, 0x00], signature: [1])
        let invalidKey = try CertificateFactory.make(.init(identity: identity, signedKey: { _ in badKey }))
        Self.expectRefusal(.invalidPublicKey, chain: [invalidKey.der])
    }

    @Test("non-critical unknown extensions are ignored; a critical libp2p extension is accepted")
    func acceptedVariants() throws {
        let identity = PrivateKey.generateECDSA()
        let unknown = Certificate.Extension(oid: [1, 2, 3, 4, 5], critical: false, value: [0x05, 0x00])
        let withUnknown = try CertificateFactory.make(.init(identity: identity, extraExtensions: [unknown]))
        #expect(try LibP2PCertificate.verify(chain: [withUnknown.der]).peerID == identity.peerID)
        let criticalOwn = try CertificateFactory.make(.init(identity: identity, extensionCritical: true))
        #expect(try LibP2PCertificate.verify(chain: [criticalOwn.der]).peerID == identity.peerID)
    }
}
