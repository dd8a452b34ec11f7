/* SASL CRAM-MD5 (RFC 2195): the server sends <random.time@host>, the
 * client answers "user hexdigest" with HMAC-MD5(secret, challenge). Input:
 * the decoded client response (untrusted). The secret comes from the
 * caller through tern_sasl_cram_secret(); MD5 is mbedTLS's. */
#include "auth/sasl/sasl_private.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <mbedtls/md.h>
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
