/* Unit tests for DANE: TLSA matching (protocols/common/tls_dane.c) against
 * known answers computed with openssl for a fixed certificate, and the
 * queue's verdict on TLSA answers (server/queue_dane.c). Input: fixed test
 * data. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "protocols/common/tls_dane.h"
#include "server/queue_dane.h"

/* openssl req -x509 -newkey ec (P-256) -subj /CN=dane-unit.test, as DER. */
static const uint8_t cert_der[398] = {
    0x30, 0x82, 0x01, 0x8a, 0x30, 0x82, 0x01, 0x2f, 0xa0, 0x03, 0x02, 0x01,
    0x02, 0x02, 0x14, 0x30, 0x5d, 0xeb, 0xd4, 0x04, 0x40, 0x09, 0xce, 0x51,
    0x65, 0x52, 0xa6, 0x02, 0xe9, 0x44, 0xd1, 0xdc, 0x2b, 0xd6, 0x75, 0x30,
    0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02, 0x30,
    0x19, 0x31, 0x17, 0x30, 0x15, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x0e,
    0x64, 0x61, 0x6e, 0x65, 0x2d, 0x75, 0x6e, 0x69, 0x74, 0x2e, 0x74, 0x65,
    0x73, 0x74, 0x30, 0x20, 0x17, 0x0d, 0x32, 0x36, 0x31, 0x31, 0x32, 0x32,
    0x30, 0x35, 0x31, 0x31, 0x32, 0x35, 0x5a, 0x18, 0x0f, 0x32, 0x31, 0x32,
    0x36, 0x31, 0x30, 0x32, 0x39, 0x30, 0x35, 0x31, 0x31, 0x32, 0x35, 0x5a,
    0x30, 0x19, 0x31, 0x17, 0x30, 0x15, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c,
    0x0e, 0x64, 0x61, 0x6e, 0x65, 0x2d, 0x75, 0x6e, 0x69, 0x74, 0x2e, 0x74,
    0x65, 0x73, 0x74, 0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03,
    0x01, 0x07, 0x03, 0x42, 0x00, 0x04, 0x1e, 0x6d, 0x72, 0xd1, 0x06, 0x55,
    0x6d, 0x36, 0xf4, 0x3b, 0xaa, 0x10, 0xcb, 0x2d, 0xb9, 0x76, 0xa0, 0x8e,
    0x4c, 0x09, 0x5c, 0xef, 0xfb, 0x6d, 0xa1, 0x56, 0x92, 0xbd, 0xa5, 0xd0,
    0x0c, 0x80, 0x1e, 0xf5, 0xcf, 0x9e, 0xf8, 0xbf, 0x01, 0x84, 0x41, 0x5e,
    0x15, 0xe8, 0x3d, 0xf9, 0xa8, 0x79, 0xa1, 0x34, 0x57, 0x49, 0x35, 0x92,
    0x44, 0x8f, 0x04, 0xab, 0xd2, 0xf0, 0x05, 0x79, 0xa1, 0x7f, 0xa3, 0x53,
    0x30, 0x51, 0x30, 0x1d, 0x06, 0x03, 0x55, 0x1d, 0x0e, 0x04, 0x16, 0x04,
    0x14, 0x1c, 0xab, 0x48, 0x20, 0xa8, 0x37, 0x2c, 0x2d, 0x8a, 0x46, 0x67,
    0xbc, 0xa4, 0x09, 0xb7, 0x16, 0x4a, 0xfe, 0x48, 0x51, 0x30, 0x1f, 0x06,
    0x03, 0x55, 0x1d, 0x23, 0x04, 0x18, 0x30, 0x16, 0x80, 0x14, 0x1c, 0xab,
    0x48, 0x20, 0xa8, 0x37, 0x2c, 0x2d, 0x8a, 0x46, 0x67, 0xbc, 0xa4, 0x09,
    0xb7, 0x16, 0x4a, 0xfe, 0x48, 0x51, 0x30, 0x0f, 0x06, 0x03, 0x55, 0x1d,
    0x13, 0x01, 0x01, 0xff, 0x04, 0x05, 0x30, 0x03, 0x01, 0x01, 0xff, 0x30,
    0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02, 0x03,
    0x49, 0x00, 0x30, 0x46, 0x02, 0x21, 0x00, 0xfc, 0xc0, 0xca, 0x81, 0x1e,
    0xe2, 0xbc, 0x3c, 0x76, 0xfc, 0x58, 0x9e, 0x18, 0x27, 0x8c, 0x14, 0x30,
    0x43, 0x63, 0x14, 0x67, 0xf7, 0xee, 0x1f, 0x48, 0x41, 0xfc, 0x35, 0x9f,
    0x3a, 0x07, 0x9d, 0x02, 0x21, 0x00, 0xf6, 0xf7, 0x11, 0xd5, 0x04, 0xe6,
    0xc8, 0xaf, 0x36, 0xf8, 0xeb, 0xd3, 0xe6, 0xe3, 0x2d, 0x47, 0x23, 0xd1,
    0x46, 0x71, 0xf5, 0xaa, 0x0e, 0x85, 0x21, 0xda, 0x8f, 0x7b, 0x7e, 0x1c,
    0xf0, 0x63,
};


/* openssl x509 -outform DER | sha256sum */
static const char cert_sha256[] = "5cf21fd94f78d3b4f6b109e62bb9f12bf820a965a49c35ae0b48d6414dbc4aef";
/* openssl x509 -pubkey | openssl pkey -pubin -outform DER | sha256sum, sha512sum */
static const char spki_sha256[] = "cec80de9054b2326c1f73caaae5dd0bafea075f9b28a37546c5297fad0b043dd";
static const char spki_sha512[] =
    "2a19dd6478f57e9b8f32d53af023f652dca077b746fdf8e2ee236c2519fcbd38"
    "cd2567dc38953b3f14a720a602b49f576072f3d99a8fb3f5820bb5c6825df455";
#define SPKI_LEN 91

static size_t unhex(const char *s, uint8_t *out)
{
    size_t n = strlen(s) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        assert_int_equal(sscanf(s + 2 * i, "%2x", &v), 1);
        out[i] = (uint8_t)v;
    }
    return n;
}

static tern_tlsa rec(uint8_t u, uint8_t s, uint8_t m, const uint8_t *d, size_t len)
{
    tern_tlsa t = {u, s, m, d, len};
    return t;
}

/* The SPKI is the certificate's only 91-byte run starting with the
 * SEQUENCE { SEQUENCE { id-ecPublicKey ... header of a P-256 key. */
static const uint8_t *find_spki(void)
{
    static const uint8_t head[] = {0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce};
    for (size_t i = 0; i + SPKI_LEN <= sizeof(cert_der); i++)
        if (memcmp(cert_der + i, head, sizeof(head)) == 0)
            return cert_der + i;
    return NULL;
}

static void test_usable(void **state)
{
    (void)state;
    uint8_t d32[32] = {0}, d64[64] = {0}, d1[1] = {0};
    tern_tlsa t;
    t = rec(3, 1, 1, d32, 32);
    assert_true(tern_tlsa_usable(&t));
    t = rec(2, 0, 2, d64, 64);
    assert_true(tern_tlsa_usable(&t));
    t = rec(3, 0, 0, d1, 1);
    assert_true(tern_tlsa_usable(&t));
    /* PKIX-TA and PKIX-EE are not for SMTP (RFC 7672 3.1.3). */
    t = rec(0, 1, 1, d32, 32);
    assert_false(tern_tlsa_usable(&t));
    t = rec(1, 1, 1, d32, 32);
    assert_false(tern_tlsa_usable(&t));
    t = rec(4, 1, 1, d32, 32);
    assert_false(tern_tlsa_usable(&t));
    t = rec(3, 2, 1, d32, 32);
    assert_false(tern_tlsa_usable(&t));
    t = rec(3, 1, 3, d32, 32);
    assert_false(tern_tlsa_usable(&t));
    /* A digest of the wrong length can never match: unusable. */
    t = rec(3, 1, 1, d64, 31);
    assert_false(tern_tlsa_usable(&t));
    t = rec(3, 1, 2, d32, 32);
    assert_false(tern_tlsa_usable(&t));
    t = rec(3, 0, 0, d1, 0);
    assert_false(tern_tlsa_usable(&t));
    tern_tlsa set[3] = {rec(3, 1, 1, d32, 32), rec(1, 1, 1, d32, 32), rec(2, 1, 2, d64, 64)};
    assert_int_equal(tern_tlsa_count_usable(set, 3), 2);
}

static void test_match_known_answers(void **state)
{
    (void)state;
    uint8_t h[64];
    tern_tlsa t;
    size_t n = unhex(spki_sha256, h);
    t = rec(3, 1, 1, h, n);
    assert_int_equal(tern_tlsa_match_der(cert_der, sizeof(cert_der), &t), 1);
    h[31] ^= 1;
    assert_int_equal(tern_tlsa_match_der(cert_der, sizeof(cert_der), &t), 0);

    n = unhex(cert_sha256, h);
    t = rec(3, 0, 1, h, n);
    assert_int_equal(tern_tlsa_match_der(cert_der, sizeof(cert_der), &t), 1);
    /* The certificate's digest is not the key's. */
    t = rec(3, 1, 1, h, n);
    assert_int_equal(tern_tlsa_match_der(cert_der, sizeof(cert_der), &t), 0);

    n = unhex(spki_sha512, h);
    t = rec(2, 1, 2, h, n);
    assert_int_equal(tern_tlsa_match_der(cert_der, sizeof(cert_der), &t), 1);
    h[0] ^= 0x80;
    assert_int_equal(tern_tlsa_match_der(cert_der, sizeof(cert_der), &t), 0);

    /* Full data: the whole certificate, the whole SPKI; a prefix is not. */
    t = rec(3, 0, 0, cert_der, sizeof(cert_der));
    assert_int_equal(tern_tlsa_match_der(cert_der, sizeof(cert_der), &t), 1);
    t = rec(3, 0, 0, cert_der, sizeof(cert_der) - 1);
    assert_int_equal(tern_tlsa_match_der(cert_der, sizeof(cert_der), &t), 0);
    const uint8_t *spki = find_spki();
    assert_non_null(spki);
    t = rec(3, 1, 0, spki, SPKI_LEN);
    assert_int_equal(tern_tlsa_match_der(cert_der, sizeof(cert_der), &t), 1);
    t = rec(3, 0, 0, spki, SPKI_LEN);
    assert_int_equal(tern_tlsa_match_der(cert_der, sizeof(cert_der), &t), 0);
}

static void test_match_bad_certificates(void **state)
{
    (void)state;
    uint8_t h[32];
    size_t n = unhex(spki_sha256, h);
    tern_tlsa t = rec(3, 1, 1, h, n);
    assert_int_equal(tern_tlsa_match_der(NULL, 0, &t), -1);
    assert_int_equal(tern_tlsa_match_der(cert_der, sizeof(cert_der) - 1, &t), -1);
    for (size_t len = 0; len < 64; len++)
        assert_int_equal(tern_tlsa_match_der(cert_der, len, &t), -1);
    uint8_t junk[sizeof(cert_der)];
    memset(junk, 0x30, sizeof(junk));
    assert_int_equal(tern_tlsa_match_der(junk, sizeof(junk), &t), -1);
}

/* ---- the queue's verdict ---- */

static tern_dns_result answer(tern_dns_security sec, int rcode, tern_dns_rr *rrs, size_t n)
{
    tern_dns_result r;
    memset(&r, 0, sizeof(r));
    tern_arena_init(&r.arena, 256);
    r.status = TERN_DNS_ANSWER;
    r.rcode = rcode;
    r.security = sec;
    r.rrs = rrs;
    r.n_rrs = n;
    r.qtype = TERN_DNS_TLSA;
    return r;
}

static tern_dns_rr tlsa_rr(uint8_t u, uint8_t s, uint8_t m, const uint8_t *d, size_t len)
{
    tern_dns_rr rr;
    memset(&rr, 0, sizeof(rr));
    rr.type = TERN_DNS_TLSA;
    rr.u.tlsa.usage = u;
    rr.u.tlsa.selector = s;
    rr.u.tlsa.mtype = m;
    rr.u.tlsa.data = d;
    rr.u.tlsa.len = len;
    return rr;
}

static void test_verdict(void **state)
{
    (void)state;
    static const uint8_t d32[32] = {1};
    tern_dns_rr rrs[3] = {tlsa_rr(1, 1, 1, d32, 32), tlsa_rr(3, 1, 1, d32, 32),
                          tlsa_rr(2, 0, 1, d32, 32)};
    tern_queue_dane d;
    memset(&d, 0, sizeof(d));

    tern_dns_result r = answer(TERN_DNS_SECURE, TERN_DNS_RCODE_NOERROR, rrs, 3);
    tern_queue_dane_judge(&d, &r);
    assert_int_equal(d.verdict, TERN_DANE_REQUIRED);
    assert_int_equal(d.n_tlsa, 2); /* the PKIX-EE record is dropped */
    assert_int_equal(d.tlsa[0].usage, 3);
    assert_int_equal(d.tlsa[1].usage, 2);
    assert_true(d.found);
    tern_arena_free(&r.arena);

    /* Only unusable records: opportunistic, but an RRset was found (a
     * CNAME'd MX host's own name is then not tried). */
    r = answer(TERN_DNS_SECURE, TERN_DNS_RCODE_NOERROR, rrs, 1);
    tern_queue_dane_judge(&d, &r);
    assert_int_equal(d.verdict, TERN_DANE_NONE);
    assert_true(d.found);
    tern_arena_free(&r.arena);

    /* Secure denial of existence, or an insecure answer: no DANE, and
     * no RRset (the MX host's own name is tried next). */
    r = answer(TERN_DNS_SECURE, TERN_DNS_RCODE_NXDOMAIN, NULL, 0);
    tern_queue_dane_judge(&d, &r);
    assert_int_equal(d.verdict, TERN_DANE_NONE);
    assert_false(d.found);
    tern_arena_free(&r.arena);
    r = answer(TERN_DNS_INSECURE, TERN_DNS_RCODE_NOERROR, rrs, 3);
    tern_queue_dane_judge(&d, &r);
    assert_int_equal(d.verdict, TERN_DANE_NONE);
    assert_int_equal(d.n_tlsa, 0);
    assert_false(d.found);
    tern_arena_free(&r.arena);

    /* Bogus, SERVFAIL, no answer at all: the host is not used now. */
    r = answer(TERN_DNS_BOGUS, TERN_DNS_RCODE_NOERROR, NULL, 0);
    r.why_bogus = "signature expired";
    tern_queue_dane_judge(&d, &r);
    assert_int_equal(d.verdict, TERN_DANE_DEFER);
    assert_non_null(strstr(d.why, "bogus"));
    assert_non_null(strstr(d.why, "signature expired"));
    tern_arena_free(&r.arena);
    r = answer(TERN_DNS_INSECURE, TERN_DNS_RCODE_SERVFAIL, NULL, 0);
    tern_queue_dane_judge(&d, &r);
    assert_int_equal(d.verdict, TERN_DANE_DEFER);
    tern_arena_free(&r.arena);
    r = answer(TERN_DNS_INSECURE, TERN_DNS_RCODE_NOERROR, NULL, 0);
    r.status = TERN_DNS_TIMEOUT;
    tern_queue_dane_judge(&d, &r);
    assert_int_equal(d.verdict, TERN_DANE_DEFER);
    tern_arena_free(&r.arena);
}

static bool waived(bool requiretls, const char *msg)
{
    return tern_queue_tls_policy_waived(requiretls, (const uint8_t *)msg, strlen(msg));
}

static void test_tls_required_no(void **state)
{
    (void)state;
    assert_true(waived(false, "Subject: x\r\nTLS-Required: No\r\n\r\nbody\r\n"));
    assert_true(waived(false, "tls-required:   no  \r\n\r\n"));
    assert_true(waived(false, "TLS-Required:\r\n No\r\n\r\n")); /* folded */
    assert_true(waived(false, "From: a@b\nTLS-Required: NO\n")); /* bare LF, no body */
    /* REQUIRETLS wins (RFC 8689 section 3). */
    assert_false(waived(true, "TLS-Required: No\r\n\r\n"));
    assert_false(waived(false, "TLS-Required: Yes\r\n\r\n"));
    assert_false(waived(false, "TLS-Required: Nope\r\n\r\n"));
    assert_false(waived(false, "X-TLS-Required: No\r\n\r\n"));
    /* Only the header counts, not a line of the body. */
    assert_false(waived(false, "Subject: x\r\n\r\nTLS-Required: No\r\n"));
    assert_false(waived(false, ""));
    assert_false(tern_queue_tls_policy_waived(false, NULL, 0));
    /* Byte by byte makes no difference to a whole-buffer parser, but a
     * message cut inside the field must not read past its end. */
    const char *m = "TLS-Required: No\r\n\r\n";
    for (size_t cut = 0; cut < strlen(m); cut++) {
        char *copy = malloc(cut ? cut : 1);
        assert_non_null(copy);
        memcpy(copy, m, cut);
        bool w = tern_queue_tls_policy_waived(false, (const uint8_t *)copy, cut);
        assert_true(w == (cut >= 16));
        free(copy);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_usable),
        cmocka_unit_test(test_match_known_answers),
        cmocka_unit_test(test_match_bad_certificates),
        cmocka_unit_test(test_verdict),
        cmocka_unit_test(test_tls_required_no),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
