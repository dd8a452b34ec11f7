/* SASL CRAM-MD5 (RFC 2195): the server sends <random.time@host>, the
 * client answers "user hexdigest" with HMAC-MD5(secret, challenge). Input:
 * the decoded client response (untrusted). The secret comes from the
 * caller: the plaintext through tern_sasl_cram_secret(), or the HMAC-MD5
 * context (Dovecot's {CRAM-MD5}, what auth/ stores and hands out) through
 * tern_sasl_cram_context(). MD5 is mbedTLS's. The context digest lives
 * here, not in auth/hash.c, because sasl must not depend on auth. */
#include "auth/sasl/sasl_private.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <mbedtls/md.h>
#include <mbedtls/md5.h>
#include <sodium.h>

bool tern_cram_md5_verify(const uint8_t *secret, size_t secret_len, const char *challenge,
                          const uint8_t digest[16])
{
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_MD5);
    uint8_t mac[16];
    if (!md || mbedtls_md_hmac(md, secret, secret_len, (const uint8_t *)challenge,
                               strlen(challenge), mac) != 0)
        return false;
    bool ok = sodium_memcmp(mac, digest, 16) == 0;
    sodium_memzero(mac, sizeof mac);
    return ok;
}

/* A context that has absorbed exactly one 64-byte block (the HMAC key
 * pad), rebuilt from its four little-endian state words: resuming from it
 * is the point of Dovecot's format. */
static void md5_resume(mbedtls_md5_context *m, const uint8_t *in)
{
    mbedtls_md5_init(m);
    mbedtls_md5_starts_ret(m);
    for (int i = 0; i < 4; i++)
        m->state[i] = (uint32_t)in[i * 4] | (uint32_t)in[i * 4 + 1] << 8 |
                      (uint32_t)in[i * 4 + 2] << 16 | (uint32_t)in[i * 4 + 3] << 24;
    m->total[0] = 64;
    m->total[1] = 0;
}

void tern_cram_md5_digest(const uint8_t ctx[32], const uint8_t *challenge, size_t len,
                          uint8_t digest[16])
{
    mbedtls_md5_context m;
    uint8_t inner[16];
    md5_resume(&m, ctx + 16);
    mbedtls_md5_update_ret(&m, challenge, len);
    mbedtls_md5_finish_ret(&m, inner);
    mbedtls_md5_free(&m);
    md5_resume(&m, ctx);
    mbedtls_md5_update_ret(&m, inner, sizeof(inner));
    mbedtls_md5_finish_ret(&m, digest);
    mbedtls_md5_free(&m);
    sodium_memzero(inner, sizeof inner);
}

bool tern_cram_md5_verify_context(const uint8_t ctx[32], const char *challenge,
                                  const uint8_t digest[16])
{
    uint8_t mac[16];
    tern_cram_md5_digest(ctx, (const uint8_t *)challenge, strlen(challenge), mac);
    bool ok = sodium_memcmp(mac, digest, 16) == 0;
    sodium_memzero(mac, sizeof mac);
    return ok;
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

void sasl__cram_step(tern_sasl *s, const uint8_t *m, size_t len, tern_sasl_result *r)
{
    if (s->state == 0) {
        /* CRAM-MD5 is server-first: an initial response cannot be right. */
        if (m && len) {
            sasl__fail(s, r, TERN_SASL_EMALFORMED);
            return;
        }
        if (s->fixed[0]) {
            snprintf(s->cram_chal, sizeof s->cram_chal, "%s", s->fixed);
        } else {
            uint64_t rnd;
            randombytes_buf(&rnd, sizeof rnd);
            int64_t t = s->now ? s->now : (int64_t)time(NULL);
            snprintf(s->cram_chal, sizeof s->cram_chal, "<%" PRIu64 ".%" PRId64 "@%s>", rnd, t,
                     s->hostname);
        }
        s->state = 1;
        sasl__challenge(s, r, s->cram_chal, strlen(s->cram_chal));
        return;
    }
    /* The digest is the last word, so a username may contain spaces. */
    size_t sp = len;
    while (sp > 0 && m[sp - 1] != ' ')
        sp--;
    if (sp < 2 || len - sp != 32) {
        sasl__fail(s, r, TERN_SASL_EMALFORMED);
        return;
    }
    for (size_t i = 0; i < 16; i++) {
        int hi = hexval(m[sp + 2 * i]), lo = hexval(m[sp + 2 * i + 1]);
        if (hi < 0 || lo < 0) {
            sasl__fail(s, r, TERN_SASL_EMALFORMED);
            return;
        }
        s->cram_digest[i] = (uint8_t)(hi << 4 | lo);
    }
    int rc = sasl__set_name(s, s->authcid, m, sp - 1);
    if (rc) {
        sasl__fail(s, r, rc == -1 ? TERN_SASL_ETOOLONG : TERN_SASL_EMALFORMED);
        return;
    }
    s->state = 2;
    sasl__need(s, r, TERN_SASL_NEED_CRAM_SECRET, WAIT_CRAM_SECRET);
    r->challenge = s->cram_chal;
    r->digest = s->cram_digest;
}

void tern_sasl_cram_context(tern_sasl *s, const uint8_t *ctx, const char *account,
                            tern_sasl_result *r)
{
    if (s->wait != WAIT_CRAM_SECRET) {
        sasl__fail(s, r, TERN_SASL_ESTATE);
        return;
    }
    if (ctx && tern_cram_md5_verify_context(ctx, s->cram_chal, s->cram_digest))
        sasl__success(s, r, account);
    else
        sasl__fail(s, r, TERN_SASL_EBADCRED);
}
