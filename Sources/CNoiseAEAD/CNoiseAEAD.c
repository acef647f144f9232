#include "CNoiseAEAD.h"

#if defined(__linux__)

// BoringSSL's AEAD interface as swift-crypto builds it (every symbol prefixed with
// "CCryptoBoringSSL_"). Declared here because swift-crypto does not export its BoringSSL module;
// the definitions come from the `Crypto` product this package links. If a swift-crypto release
// renamed them, linking fails (it cannot silently pick something else).
typedef struct evp_aead_st EVP_AEAD;
typedef struct evp_aead_ctx_st EVP_AEAD_CTX;

extern const EVP_AEAD *CCryptoBoringSSL_EVP_aead_chacha20_poly1305(void);
extern EVP_AEAD_CTX *CCryptoBoringSSL_EVP_AEAD_CTX_new(const EVP_AEAD *aead, const uint8_t *key,
                                                       size_t key_len, size_t tag_len);
extern void CCryptoBoringSSL_EVP_AEAD_CTX_free(EVP_AEAD_CTX *ctx);
extern int CCryptoBoringSSL_EVP_AEAD_CTX_seal_scatter(
    const EVP_AEAD_CTX *ctx, uint8_t *out, uint8_t *out_tag, size_t *out_tag_len,
    size_t max_out_tag_len, const uint8_t *nonce, size_t nonce_len, const uint8_t *in,
    size_t in_len, const uint8_t *extra_in, size_t extra_in_len, const uint8_t *ad,
    size_t ad_len);
extern int CCryptoBoringSSL_EVP_AEAD_CTX_open_gather(
    const EVP_AEAD_CTX *ctx, uint8_t *out, const uint8_t *nonce, size_t nonce_len,
    const uint8_t *in, size_t in_len, const uint8_t *in_tag, size_t in_tag_len,
    const uint8_t *ad, size_t ad_len);
extern void CCryptoBoringSSL_ERR_clear_error(void);

static const uint8_t empty[1] = {0};

void *pointsub_chachapoly_new(const uint8_t *key) {
    return CCryptoBoringSSL_EVP_AEAD_CTX_new(CCryptoBoringSSL_EVP_aead_chacha20_poly1305(), key,
                                             32, 16);
}

void pointsub_chachapoly_free(void *ctx) {
    if (ctx != NULL) CCryptoBoringSSL_EVP_AEAD_CTX_free((EVP_AEAD_CTX *)ctx);
}

int pointsub_chachapoly_seal(const void *ctx, const uint8_t *nonce, const uint8_t *input,
                             size_t length, uint8_t *output, uint8_t *tag, const uint8_t *ad,
                             size_t ad_length) {
    size_t tag_length = 0;
    int ok = CCryptoBoringSSL_EVP_AEAD_CTX_seal_scatter(
        (const EVP_AEAD_CTX *)ctx, length ? output : (uint8_t *)empty, tag, &tag_length, 16,
        nonce, 12, length ? input : empty, length, NULL, 0, ad_length ? ad : empty, ad_length);
    if (!ok || tag_length != 16) {
        CCryptoBoringSSL_ERR_clear_error();
        return 0;
    }
    return 1;
}

int pointsub_chachapoly_open(const void *ctx, const uint8_t *nonce, const uint8_t *input,
                             size_t length, const uint8_t *tag, uint8_t *output,
                             const uint8_t *ad, size_t ad_length) {
    int ok = CCryptoBoringSSL_EVP_AEAD_CTX_open_gather(
        (const EVP_AEAD_CTX *)ctx, length ? output : (uint8_t *)empty, nonce, 12,
        length ? input : empty, length, tag, 16, ad_length ? ad : empty, ad_length);
    if (!ok) {
        CCryptoBoringSSL_ERR_clear_error();
        return 0;
    }
    return 1;
}

#else

void *pointsub_chachapoly_new(const uint8_t *key) {
    (void)key;
    return NULL;
}

void pointsub_chachapoly_free(void *ctx) { (void)ctx; }

int pointsub_chachapoly_seal(const void *ctx, const uint8_t *nonce, const uint8_t *input,
                             size_t length, uint8_t *output, uint8_t *tag, const uint8_t *ad,
                             size_t ad_length) {
    (void)ctx; (void)nonce; (void)input; (void)length; (void)output; (void)tag; (void)ad;
    (void)ad_length;
    return 0;
}

int pointsub_chachapoly_open(const void *ctx, const uint8_t *nonce, const uint8_t *input,
                             size_t length, const uint8_t *tag, uint8_t *output,
                             const uint8_t *ad, size_t ad_length) {
    (void)ctx; (void)nonce; (void)input; (void)length; (void)tag; (void)output; (void)ad;
    (void)ad_length;
    return 0;
}

#endif
