#ifndef POINTSUB_CNOISEAEAD_H
#define POINTSUB_CNOISEAEAD_H

#include <stddef.h>
#include <stdint.h>

/// ChaCha20-Poly1305 (RFC 8439) without allocations: seals into and opens from caller-owned memory.
///
/// On Linux this calls BoringSSL's EVP_AEAD interface (with its AVX2 assembly), which swift-crypto
/// links into every program that uses `Crypto` there; swift-crypto's own `ChaChaPoly` API returns a
/// fresh `Data` per call, which costs more than the cipher for large messages. Elsewhere
/// `pointsub_chachapoly_new` returns NULL and the Swift side uses swift-crypto.

/// A context for `key` (32 bytes), or NULL when not available on this platform. Free it with
/// `pointsub_chachapoly_free`. A context is immutable: concurrent seal/open calls are safe.
void *_Nullable pointsub_chachapoly_new(const uint8_t *_Nonnull key);

void pointsub_chachapoly_free(void *_Nullable ctx);

/// Seals `length` bytes of `input` to `output` (`length` bytes, not overlapping `input` unless equal
/// to it) and the 16-byte tag to `tag`, with the 12-byte `nonce`. Returns 1 on success, 0 on failure.
int pointsub_chachapoly_seal(const void *_Nonnull ctx, const uint8_t *_Nonnull nonce,
                             const uint8_t *_Nullable input, size_t length,
                             uint8_t *_Nullable output, uint8_t *_Nonnull tag,
                             const uint8_t *_Nullable ad, size_t ad_length);

/// Opens `length` bytes of `input` with its 16-byte `tag` into `output` (`length` bytes). Returns 1
/// when the tag is valid, 0 otherwise (`output` then holds nothing usable).
int pointsub_chachapoly_open(const void *_Nonnull ctx, const uint8_t *_Nonnull nonce,
                             const uint8_t *_Nullable input, size_t length,
                             const uint8_t *_Nonnull tag, uint8_t *_Nullable output,
                             const uint8_t *_Nullable ad, size_t ad_length);

#endif
