import Crypto
import Foundation
import Identity
import SwiftASN1
import X509

/// The libp2p TLS certificate (libp2p TLS spec, "Peer Authentication"): a self-signed X.509
/// certificate for a fresh key that is unrelated to the host key, carrying the libp2p public key
/// extension, whose `SignedKey` binds the host's identity key to the certificate's key.
///
/// Pure values: building and verifying certificates does no I/O, so every rule is testable without
/// sockets.
public struct LibP2PCertificate: Sendable {
    /// The extension's OID, 1.3.6.1.4.1.53594.1.1 (53594 is libp2p's private enterprise number).
    public static let extensionOID: ASN1ObjectIdentifier = [1, 3, 6, 1, 4, 1, 53594, 1, 1]
    /// What the identity key signs, in front of the certificate's DER SubjectPublicKeyInfo.
    public static let signaturePrefix: [UInt8] = Array("libp2p-tls-handshake:".utf8)
    /// Upper bound on a peer's certificate: an RSA-8192 identity key (~1.1 KB marshaled) and its
    /// ~1 KB signature in the extension, plus an RSA-8192 certificate key and signature, fit well.
    public static let maxCertificateBytes = 16 * 1024
    /// Upper bound on the extension's value (`SignedKey`).
    public static let maxExtensionBytes = 8 * 1024
    /// How long a certificate we make is valid. go-libp2p uses ~100 years too: the certificate
    /// authenticates nothing by itself, the `SignedKey` does.
    public static let validity: TimeInterval = 100 * 365 * 24 * 3600
    /// How far back a certificate we make is valid from, for peers whose clocks run behind.
    public static let backdating: TimeInterval = 3600

    /// The certificate, DER.
    public let der: [UInt8]
    /// The certificate's own (P-256) private key, which signs the TLS handshake.
    public var certificateKey: P256.Signing.PrivateKey { key.key }
    private let key: ImmutableKey

    /// swift-crypto's keys are immutable values but not marked `Sendable`.
    private struct ImmutableKey: @unchecked Sendable {
        let key: P256.Signing.PrivateKey
    }

    /// A certificate and the private key of its public key.
    init(der: [UInt8], certificateKey: P256.Signing.PrivateKey) {
        self.der = der
        self.key = ImmutableKey(key: certificateKey)
    }

    /// Makes a fresh certificate for `identity`: a new P-256 key, self-signed, valid from
    /// `now - backdating` to `now + validity`, with the `SignedKey` extension (non-critical, as
    /// go-libp2p marks it; we accept it either way).
    public static func generate(identity: PrivateKey, now: Date = Date()) throws(TLSError) -> LibP2PCertificate {
        let key = P256.Signing.PrivateKey()
        do {
            let publicKey = Certificate.PublicKey(key.publicKey)
            let signedKey = try makeSignedKey(identity: identity, certificatePublicKey: publicKey)
            let extensions = try Certificate.Extensions([
                Certificate.Extension(oid: extensionOID, critical: false, value: signedKey[...])
            ])
            let name = try DistinguishedName { CommonName("libp2p") }
            let certificate = try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: publicKey,
                notValidBefore: now - backdating, notValidAfter: now + validity,
                issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
                extensions: extensions, issuerPrivateKey: Certificate.PrivateKey(key))
            var serializer = DER.Serializer()
            try serializer.serialize(certificate)
            return LibP2PCertificate(der: serializer.serializedBytes, certificateKey: key)
        } catch let error as TLSError {
            throw error
        } catch {
            throw TLSError(.localSetupFailed, "could not build the certificate", cause: error)
        }
    }

    /// The DER `SignedKey ::= SEQUENCE { publicKey OCTET STRING, signature OCTET STRING }`:
    /// the marshaled identity public key, and its signature over
    /// `"libp2p-tls-handshake:" ‖ certificate SubjectPublicKeyInfo`.
    public static func makeSignedKey(
        identity: PrivateKey, certificatePublicKey: Certificate.PublicKey
    ) throws(TLSError) -> [UInt8] {
        // The whole DER SubjectPublicKeyInfo, as the certificate carries it. (X509's
        // `subjectPublicKeyInfoBytes` is only the key's BIT STRING contents: signing that
        // interoperates with nobody.)
        var serializer = DER.Serializer()
        do {
            try serializer.serialize(certificatePublicKey)
        } catch {
            throw TLSError(.localSetupFailed, "could not encode the certificate key", cause: error)
        }
        let message = signaturePrefix + serializer.serializedBytes
        let signature: [UInt8]
        do {
            signature = try identity.sign(message)
        } catch {
            throw TLSError(.localSetupFailed, "the identity key could not sign", cause: error)
        }
        return encodeSignedKey(publicKey: identity.publicKey.marshal(), signature: signature)
    }

    /// DER-encodes a `SignedKey` from its two fields.
    public static func encodeSignedKey(publicKey: [UInt8], signature: [UInt8]) -> [UInt8] {
        var serializer = DER.Serializer()
        // Two OCTET STRINGs in a SEQUENCE cannot fail to serialise.
        try? serializer.appendConstructedNode(identifier: .sequence) { coder in
            try coder.serialize(ASN1OctetString(contentBytes: publicKey[...]))
            try coder.serialize(ASN1OctetString(contentBytes: signature[...]))
        }
        return serializer.serializedBytes
    }

    /// The raw value of the libp2p extension in a DER certificate, if it parses and has one.
    public static func signedKey(in der: [UInt8]) -> [UInt8]? {
        guard der.count <= maxCertificateBytes, let certificate = try? Certificate(derEncoded: der) else { return nil }
        return certificate.extensions.first { $0.oid == extensionOID }.map { Array($0.value) }
    }

    /// Parses a DER `SignedKey` into (marshaled public key, signature). Nothing may follow it.
    public static func decodeSignedKey(_ bytes: ArraySlice<UInt8>) throws(TLSError) -> (publicKey: [UInt8], signature: [UInt8]) {
        guard bytes.count <= maxExtensionBytes else {
            throw TLSError(.malformedExtension, "SignedKey of \(bytes.count) bytes exceeds \(maxExtensionBytes)")
        }
        do {
            let node = try DER.parse(bytes)
            return try DER.sequence(node, identifier: .sequence) { nodes in
                let publicKey = try ASN1OctetString(derEncoded: &nodes)
                let signature = try ASN1OctetString(derEncoded: &nodes)
                return (Array(publicKey.bytes), Array(signature.bytes))
            }
        } catch {
            throw TLSError(.malformedExtension, "SignedKey is not DER SEQUENCE { OCTET STRING, OCTET STRING }", cause: error)
        }
    }
}

/// A peer authenticated by its certificate.
public struct VerifiedPeer: Sendable, Hashable {
    /// The identity key from the `SignedKey`.
    public var publicKey: PublicKey
    /// The peer ID derived from it.
    public var peerID: PeerID
}

extension LibP2PCertificate {
    /// Extensions we understand well enough to accept when critical (we ignore their content: the
    /// certificate is trusted through the `SignedKey` only). Any other critical extension is
    /// refused, as RFC 5280 requires; non-critical unknown ones are ignored (libp2p TLS spec).
    static let understoodExtensions: Set<ASN1ObjectIdentifier> = [
        extensionOID,
        .X509ExtensionID.basicConstraints, .X509ExtensionID.keyUsage, .X509ExtensionID.extendedKeyUsage,
        .X509ExtensionID.subjectKeyIdentifier, .X509ExtensionID.authorityKeyIdentifier,
        .X509ExtensionID.subjectAlternativeName,
    ]

    /// Verifies the certificate chain a peer presented, by the spec's rules, in this order:
    /// exactly one certificate; within the size limit; DER X.509; valid at `now`; its
    /// self-signature verifies; no critical extension we do not understand; the libp2p extension
    /// present, a well-formed `SignedKey`, a valid identity key whose signature over
    /// `"libp2p-tls-handshake:" ‖ SPKI` verifies; and, when `expectedPeer` is set (we dialed a
    /// known peer), the derived peer ID is that one. Each rule failing has its own `TLSError.Code`.
    public static func verify(
        chain: [[UInt8]], now: Date = Date(), expectedPeer: PeerID? = nil
    ) throws(TLSError) -> VerifiedPeer {
        guard let der = chain.first else { throw TLSError(.noCertificate, "the peer presented no certificate") }
        guard chain.count == 1 else {
            throw TLSError(.certificateChainTooLong, "the peer presented \(chain.count) certificates; exactly one is allowed")
        }
        let peer = try verify(certificate: der, now: now)
        if let expectedPeer, expectedPeer != peer.peerID {
            throw TLSError(.peerIDMismatch, "dialed \(expectedPeer), but the peer is \(peer.peerID)")
        }
        return peer
    }

    /// The DER SubjectPublicKeyInfo exactly as the certificate carries it (the signed bytes: a
    /// re-encoding of the parsed key could differ from what the peer signed). TBSCertificate:
    /// `[0] version` (optional), serialNumber, signature, issuer, validity, subject,
    /// subjectPublicKeyInfo, ….
    static func subjectPublicKeyInfo(of certificate: Certificate) throws(TLSError) -> ArraySlice<UInt8> {
        do {
            let tbs = try DER.parse(certificate.tbsCertificateBytes)
            guard case .constructed(let fields) = tbs.content else {
                throw TLSError(.malformedCertificate, "TBSCertificate is not a SEQUENCE")
            }
            var iterator = fields.makeIterator()
            // The version, then the serial number; or the serial number alone.
            if iterator.next()?.identifier == ASN1Identifier(tagWithNumber: 0, tagClass: .contextSpecific) {
                _ = iterator.next()
            }
            for _ in 0..<4 { _ = iterator.next() }  // signature, issuer, validity, subject
            guard let spki = iterator.next(), spki.identifier == .sequence else {
                throw TLSError(.malformedCertificate, "TBSCertificate has no SubjectPublicKeyInfo")
            }
            return spki.encodedBytes
        } catch let error as TLSError {
            throw error
        } catch {
            throw TLSError(.malformedCertificate, "TBSCertificate does not parse", cause: error)
        }
    }

    /// Verifies one DER certificate (every rule but the chain length and the expected peer).
    public static func verify(certificate der: [UInt8], now: Date = Date()) throws(TLSError) -> VerifiedPeer {
        guard der.count <= maxCertificateBytes else {
            throw TLSError(.certificateTooLarge, "certificate of \(der.count) bytes exceeds \(maxCertificateBytes)")
        }
        let certificate: Certificate
        do {
            certificate = try Certificate(derEncoded: der)
        } catch {
            throw TLSError(.malformedCertificate, "certificate is not valid DER X.509", cause: error)
        }
        guard now >= certificate.notValidBefore else {
            throw TLSError(.certificateNotYetValid, "certificate is valid only from \(certificate.notValidBefore)")
        }
        guard now <= certificate.notValidAfter else {
            throw TLSError(.certificateExpired, "certificate expired at \(certificate.notValidAfter)")
        }
        guard certificate.publicKey.isValidSignature(certificate.signature, for: certificate) else {
            throw TLSError(.invalidCertificateSignature, "certificate's self-signature does not verify")
        }
        var signedKey: ArraySlice<UInt8>?
        for ext in certificate.extensions {
            if ext.oid == extensionOID {
                signedKey = ext.value
            } else if ext.critical && !understoodExtensions.contains(ext.oid) {
                throw TLSError(.unknownCriticalExtension, "certificate has an unknown critical extension \(ext.oid)")
            }
        }
        guard let signedKey else {
            throw TLSError(.missingExtension, "certificate lacks the libp2p public key extension")
        }
        let (marshaledKey, signature) = try decodeSignedKey(signedKey)
        let publicKey: PublicKey
        do {
            publicKey = try PublicKey(marshaled: marshaledKey)
        } catch {
            throw TLSError(.invalidPublicKey, "SignedKey public key is invalid", cause: error)
        }
        let message = signaturePrefix + Array(try subjectPublicKeyInfo(of: certificate))
        do {
            try publicKey.verifyThrowing(signature: signature, for: message)
        } catch {
            if error.code == .unsupportedKeyType {
                throw TLSError(.invalidPublicKey, "SignedKey key type \(publicKey.type) cannot verify", cause: error)
            }
            throw TLSError(.invalidSignedKeySignature, "SignedKey signature does not verify with the identity key")
        }
        return VerifiedPeer(publicKey: publicKey, peerID: PeerID(publicKey: publicKey))
    }
}
