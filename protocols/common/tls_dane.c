/* TLSA record matching for DANE (RFC 6698 section 2.1, RFC 7672 section
 * 3): selects the whole certificate or its SubjectPublicKeyInfo and
 * compares it, or its SHA-256/SHA-512 digest, with the record. Part of the
 * mbedTLS backend (it parses with mbedTLS) but has no state and does no
 * I/O. Input: certificates from the network and TLSA data from DNS, both
 * untrusted in form: a certificate that does not parse matches nothing. */
#include "protocols/common/tls_dane.h"

#include <string.h>

#include <mbedtls/sha256.h>
#include <mbedtls/sha512.h>
#include <mbedtls/x509_crt.h>

bool tern_tlsa_usable(const tern_tlsa *t)
{
    if (t->usage != TERN_TLSA_DANE_TA && t->usage != TERN_TLSA_DANE_EE)
        return false;
    if (t->selector != TERN_TLSA_SEL_CERT && t->selector != TERN_TLSA_SEL_SPKI)
        return false;
    switch (t->mtype) {
    case TERN_TLSA_MATCH_FULL:
        return t->len > 0 && t->data != NULL;
    case TERN_TLSA_MATCH_SHA256:
        return t->len == 32 && t->data != NULL;
    case TERN_TLSA_MATCH_SHA512:
        return t->len == 64 && t->data != NULL;
    default:
        return false;
    }
}

size_t tern_tlsa_count_usable(const tern_tlsa *t, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (tern_tlsa_usable(&t[i]))
            k++;
    return k;
}

/* Constant time is not needed (the data is public), only exactness. */
static int same(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    return alen == blen && memcmp(a, b, alen) == 0;
}

int tern_tlsa_match_der(const uint8_t *der, size_t len, const tern_tlsa *t)
{
    if (der == NULL || len == 0)
        return -1;
    mbedtls_x509_crt crt;
    mbedtls_x509_crt_init(&crt);
    /* The no-copy parse would borrow der; the copy keeps this independent
     * of the caller's buffer lifetime, and certificates are small. */
    if (mbedtls_x509_crt_parse_der(&crt, der, len) != 0) {
        mbedtls_x509_crt_free(&crt);
        return -1;
    }
    const uint8_t *sel;
    size_t sel_len;
    if (t->selector == TERN_TLSA_SEL_CERT) {
        sel = crt.raw.p;
        sel_len = crt.raw.len;
    } else if (t->selector == TERN_TLSA_SEL_SPKI) {
        sel = crt.pk_raw.p;
        sel_len = crt.pk_raw.len;
    } else {
        mbedtls_x509_crt_free(&crt);
        return 0;
    }
    int m = 0;
    uint8_t digest[64];
    switch (t->mtype) {
    case TERN_TLSA_MATCH_FULL:
        m = same(sel, sel_len, t->data, t->len);
        break;
    case TERN_TLSA_MATCH_SHA256:
        if (mbedtls_sha256_ret(sel, sel_len, digest, 0) == 0)
            m = same(digest, 32, t->data, t->len);
        break;
    case TERN_TLSA_MATCH_SHA512:
        if (mbedtls_sha512_ret(sel, sel_len, digest, 0) == 0)
            m = same(digest, 64, t->data, t->len);
        break;
    default:
        break;
    }
    mbedtls_x509_crt_free(&crt);
    return m;
}
