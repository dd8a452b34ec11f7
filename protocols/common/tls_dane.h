/* DANE for SMTP (RFC 7672): which TLSA records can be used, and whether a
 * certificate matches one. The TLS connection (tls_mbedtls.c) applies them
 * in its verify callback; the queue manager (server/queue_dane.c) finds
 * them in DNS. Pure: no I/O. Input: TLSA records from DNSSEC-validated
 * answers and certificates from the peer (both untrusted in form: every
 * length is checked, a certificate that does not parse matches nothing). */
#ifndef TERN_TLS_DANE_H
#define TERN_TLS_DANE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Usages, selectors and matching types (RFC 6698 section 7). */
enum {
    TERN_TLSA_PKIX_TA = 0, /* unusable in SMTP (RFC 7672 3.1.3) */
    TERN_TLSA_PKIX_EE = 1, /* idem */
    TERN_TLSA_DANE_TA = 2,
    TERN_TLSA_DANE_EE = 3,
};
enum { TERN_TLSA_SEL_CERT = 0, TERN_TLSA_SEL_SPKI = 1 };
enum { TERN_TLSA_MATCH_FULL = 0, TERN_TLSA_MATCH_SHA256 = 1, TERN_TLSA_MATCH_SHA512 = 2 };

typedef struct tern_tlsa {
    uint8_t usage, selector, mtype;
    const uint8_t *data;  /* association data (borrowed) */
    size_t len;
} tern_tlsa;

/* Whether SMTP can use the record: DANE-TA or DANE-EE, a known selector
 * and matching type, and digest data of the digest's length. Records that
 * are not usable are ignored; a set with none left means "no DANE". */
bool tern_tlsa_usable(const tern_tlsa *t);

/* Whether the certificate (DER) matches the record's selector, matching
 * type and data (the usage is not looked at). 1 yes, 0 no, -1 the
 * certificate does not parse. */
int tern_tlsa_match_der(const uint8_t *der, size_t len, const tern_tlsa *t);

/* How many of the n records are usable. */
size_t tern_tlsa_count_usable(const tern_tlsa *t, size_t n);

#endif
