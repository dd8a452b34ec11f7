/* Unit tests of the resolver's pure parts: the rdata decoder (every
 * prefix of a good record is refused cleanly, as a truncated answer would
 * be; names, escapes and limits) and the MX plan (ordering, randomized
 * equal preferences, implicit MX, null MX, ourselves among the MXs,
 * failures). The resolver itself is tested against a real DNS server in
 * tests/integration/test_dns.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lib/dns.h"
#include "lib/dns_mx.h"
#include "lib/dns_rdata.h"

static tern_dns_rdata_status parse(tern_arena *a, uint16_t type, const uint8_t *p, size_t n,
                                   tern_dns_rr *rr)
{
    /* A copy of exactly n bytes, so ASan sees any read past the span. */
    uint8_t *c = malloc(n ? n : 1);
    assert_non_null(c);
    if (n)
        memcpy(c, p, n);
    const char *why = NULL;
    tern_dns_rdata_status st = tern_dns_rdata_parse(a, type, c, n, rr, &why);
    if (st != TERN_DNS_RDATA_OK)
        assert_non_null(why);
    free(c);
    return st;
}

/* Every proper prefix must fail, the whole must succeed. */
static void every_prefix_fails(uint16_t type, const uint8_t *p, size_t n)
{
    tern_arena a;
    tern_arena_init(&a, 256);
    tern_dns_rr rr;
    for (size_t i = 0; i < n; i++)
        assert_int_not_equal(parse(&a, type, p, i, &rr), TERN_DNS_RDATA_OK);
    assert_int_equal(parse(&a, type, p, n, &rr), TERN_DNS_RDATA_OK);
    tern_arena_free(&a);
}

static void test_mx(void **state)
{
    (void)state;
    static const uint8_t mx[] = {0, 10, 4, 'm', 'x', '1', 'a', 7, 'e', 'x', 'a', 'm', 'p',
                                 'l', 'e', 4, 't', 'e', 's', 't', 0};
    tern_arena a;
    tern_arena_init(&a, 256);
    tern_dns_rr rr;
    assert_int_equal(parse(&a, TERN_DNS_MX, mx, sizeof(mx), &rr), TERN_DNS_RDATA_OK);
    assert_int_equal(rr.u.mx.preference, 10);
    assert_string_equal(rr.u.mx.host, "mx1a.example.test");
    every_prefix_fails(TERN_DNS_MX, mx, sizeof(mx));
    /* A byte after the name. */
    uint8_t longer[sizeof(mx) + 1];
    memcpy(longer, mx, sizeof(mx));
    longer[sizeof(mx)] = 0;
    assert_int_equal(parse(&a, TERN_DNS_MX, longer, sizeof(longer), &rr), TERN_DNS_RDATA_TRAILING);
    /* Null MX: preference 0, the root. */
    static const uint8_t null_mx[] = {0, 0, 0};
    assert_int_equal(parse(&a, TERN_DNS_MX, null_mx, sizeof(null_mx), &rr), TERN_DNS_RDATA_OK);
    assert_string_equal(rr.u.mx.host, ".");
    /* A compression pointer cannot be followed inside rdata alone. */
    static const uint8_t ptr[] = {0, 10, 3, 'm', 'x', '1', 0xc0, 12};
    assert_int_equal(parse(&a, TERN_DNS_MX, ptr, sizeof(ptr), &rr), TERN_DNS_RDATA_BAD_NAME);
    static const uint8_t ext[] = {0, 10, 0x41, 0};
    assert_int_equal(parse(&a, TERN_DNS_MX, ext, sizeof(ext), &rr), TERN_DNS_RDATA_BAD_NAME);
    tern_arena_free(&a);
}

static void test_name_escapes_and_limits(void **state)
{
    (void)state;
    char out[TERN_DNS_NAME_TEXT_MAX];
    size_t used;
    /* A dot, a backslash, a space and a control byte inside labels. */
    static const uint8_t odd[] = {4, 'a', '.', 'b', '\\', 3, ' ', 1, 'x', 0};
    assert_int_equal(tern_dns_name_read(odd, sizeof(odd), &used, out, sizeof(out), NULL),
                     TERN_DNS_RDATA_OK);
    assert_int_equal(used, sizeof(odd));
    assert_string_equal(out, "a\\.b\\\\.\\032\\001x");
    /* 255 octets is the most: four 63-byte labels are 256. */
    uint8_t big[300];
    size_t n = 0;
    for (int l = 0; l < 4; l++) {
        big[n++] = 63;
        memset(big + n, 'a', 63);
        n += 63;
    }
    big[n++] = 0;
    assert_int_equal(tern_dns_name_read(big, n, &used, out, sizeof(out), NULL),
                     TERN_DNS_RDATA_BAD_NAME);
    /* 3 x 63 + a 61-byte label + root = 255: accepted. */
    big[3 * 64] = 61;
    big[3 * 64 + 62] = 0;
    assert_int_equal(tern_dns_name_read(big, 3 * 64 + 63, &used, out, sizeof(out), NULL),
                     TERN_DNS_RDATA_OK);
    assert_int_equal(strlen(out), 3 * 64 + 61);
    /* The worst case of escapes fits TERN_DNS_NAME_TEXT_MAX. */
    uint8_t esc[256];
    n = 0;
    for (int l = 0; l < 4; l++) {
        size_t len = l < 3 ? 63 : 61;
        esc[n++] = (uint8_t)len;
        memset(esc + n, 0x01, len);
        n += len;
    }
    esc[n++] = 0;
    assert_int_equal(tern_dns_name_read(esc, n, &used, out, sizeof(out), NULL), TERN_DNS_RDATA_OK);
    assert_int_equal(strlen(out), 250 * 4 + 3);
    /* A too small buffer is an error, not an overflow. */
    char tiny[8];
    assert_int_equal(tern_dns_name_read(esc, n, &used, tiny, sizeof(tiny), NULL),
                     TERN_DNS_RDATA_NOMEM);
}

static void test_addresses(void **state)
{
    (void)state;
    tern_arena a;
    tern_arena_init(&a, 256);
    tern_dns_rr rr;
    char buf[64];
    static const uint8_t v4[] = {192, 0, 2, 10};
    every_prefix_fails(TERN_DNS_A, v4, sizeof(v4));
    assert_int_equal(parse(&a, TERN_DNS_A, v4, 4, &rr), TERN_DNS_RDATA_OK);
    assert_string_equal(tern_dns_rr_addr_text(&rr, buf, sizeof(buf)), "192.0.2.10");
    struct sockaddr_storage ss;
    assert_int_equal(tern_dns_rr_sockaddr(&rr, 25, &ss), sizeof(struct sockaddr_in));
    assert_int_equal(((struct sockaddr_in *)&ss)->sin_port, htons(25));
    static const uint8_t v6[16] = {0x20, 0x01, 0x0d, 0xb8, [15] = 0x20};
    every_prefix_fails(TERN_DNS_AAAA, v6, sizeof(v6));
    assert_int_equal(parse(&a, TERN_DNS_AAAA, v6, 16, &rr), TERN_DNS_RDATA_OK);
    assert_string_equal(tern_dns_rr_addr_text(&rr, buf, sizeof(buf)), "2001:db8::20");
    assert_int_equal(tern_dns_rr_sockaddr(&rr, 25, &ss), sizeof(struct sockaddr_in6));
    uint8_t v4long[5] = {1, 2, 3, 4, 5};
    assert_int_equal(parse(&a, TERN_DNS_A, v4long, 5, &rr), TERN_DNS_RDATA_BAD_LENGTH);
    tern_arena_free(&a);
}

static void test_txt(void **state)
{
    (void)state;
    static const uint8_t txt[] = {5, 'v', '=', 's', 'p', 'f', 0, 3, 'a', 0, 'b'};
    tern_arena a;
    tern_arena_init(&a, 256);
    tern_dns_rr rr;
    assert_int_equal(parse(&a, TERN_DNS_TXT, txt, sizeof(txt), &rr), TERN_DNS_RDATA_OK);
    assert_int_equal(rr.u.txt.n, 3);
    assert_int_equal(rr.u.txt.strings[0].len, 5);
    assert_memory_equal(rr.u.txt.strings[0].data, "v=spf", 5);
    assert_int_equal(rr.u.txt.strings[1].len, 0);
    assert_int_equal(rr.u.txt.strings[2].len, 3);
    assert_memory_equal(rr.u.txt.strings[2].data, "a\0b", 3);
    /* Prefixes that end between strings are whole TXT records; those that
     * end inside one are not. */
    assert_int_equal(parse(&a, TERN_DNS_TXT, txt, 0, &rr), TERN_DNS_RDATA_BAD_LENGTH);
    for (size_t i = 1; i < sizeof(txt); i++) {
        bool boundary = i == 6 || i == 7;
        assert_int_equal(parse(&a, TERN_DNS_TXT, txt, i, &rr),
                         boundary ? TERN_DNS_RDATA_OK : TERN_DNS_RDATA_TRUNCATED);
    }
    tern_arena_free(&a);
}

static void test_tlsa_ptr_raw(void **state)
{
    (void)state;
    static const uint8_t tlsa[] = {3, 1, 1, 0xde, 0xad, 0xbe, 0xef};
    tern_arena a;
    tern_arena_init(&a, 256);
    tern_dns_rr rr;
    every_prefix_fails(TERN_DNS_TLSA, tlsa, 3);
    assert_int_equal(parse(&a, TERN_DNS_TLSA, tlsa, sizeof(tlsa), &rr), TERN_DNS_RDATA_OK);
    assert_int_equal(rr.u.tlsa.usage, 3);
    assert_int_equal(rr.u.tlsa.selector, 1);
    assert_int_equal(rr.u.tlsa.mtype, 1);
    assert_int_equal(rr.u.tlsa.len, 4);
    assert_memory_equal(rr.u.tlsa.data, tlsa + 3, 4);
    static const uint8_t ptr[] = {2, 'm', 'x', 4, 't', 'e', 's', 't', 0};
    every_prefix_fails(TERN_DNS_PTR, ptr, sizeof(ptr));
    assert_int_equal(parse(&a, TERN_DNS_PTR, ptr, sizeof(ptr), &rr), TERN_DNS_RDATA_OK);
    assert_string_equal(rr.u.name, "mx.test");
    static const uint8_t soa_like[] = {1, 2, 3};
    assert_int_equal(parse(&a, 6, soa_like, 3, &rr), TERN_DNS_RDATA_OK);
    assert_int_equal(rr.u.raw.len, 3);
    assert_memory_equal(rr.u.raw.data, soa_like, 3);
    assert_int_equal(tern_dns_type_from_name("tlsa"), TERN_DNS_TLSA);
    assert_int_equal(tern_dns_type_from_name("nope"), 0);
    tern_arena_free(&a);
}

static void test_reverse_name(void **state)
{
    (void)state;
    char out[128];
    assert_int_equal(tern_dns_reverse_name("192.0.2.10", out, sizeof(out)), 0);
    assert_string_equal(out, "10.2.0.192.in-addr.arpa");
    assert_int_equal(tern_dns_reverse_name("2001:db8::20", out, sizeof(out)), 0);
    assert_string_equal(out, "0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa");
    assert_int_equal(tern_dns_reverse_name("mx.example.test", out, sizeof(out)), -1);
    assert_int_equal(tern_dns_reverse_name("2001:db8::20", out, 40), -1);
}

/* ---- MX plans ----------------------------------------------------------- */

typedef struct mx_in {
    uint16_t pref;
    const char *host;
} mx_in;

static tern_dns_result *mx_result(int rcode, const mx_in *in, size_t n)
{
    tern_dns_result *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    tern_arena_init(&r->arena, 256);
    r->status = TERN_DNS_ANSWER;
    r->rcode = rcode;
    r->qtype = TERN_DNS_MX;
    r->rrs = tern_arena_alloc(&r->arena, (n ? n : 1) * sizeof(*r->rrs));
    for (size_t i = 0; i < n; i++) {
        r->rrs[i].type = TERN_DNS_MX;
        r->rrs[i].u.mx.preference = in[i].pref;
        r->rrs[i].u.mx.host = tern_arena_strdup(&r->arena, in[i].host);
    }
    r->n_rrs = n;
    return r;
}

/* A scripted "random" source: returns the next value modulo upper. */
typedef struct script {
    const uint32_t *v;
    size_t n, at;
} script;

static uint32_t scripted(void *data, uint32_t upper)
{
    script *s = data;
    uint32_t v = s->n ? s->v[s->at++ % s->n] : 0;
    return v % upper;
}

static void test_mx_order(void **state)
{
    (void)state;
    static const mx_in in[] = {{20, "mx2.example.test"}, {10, "mx1a.example.test"},
                               {30, "backup.example.net"}, {10, "mx1b.example.test"},
                               {10, "MX1A.example.test."}};
    tern_dns_result *r = mx_result(0, in, 5);
    tern_arena a;
    tern_arena_init(&a, 256);
    tern_mx_plan p;
    /* A source that always says 0: the preference-10 run [mx1a mx1b
     * MX1A.] becomes [MX1A. mx1b mx1a] (i=2 swaps with 0), then
     * [mx1b MX1A. mx1a] (i=1 swaps with 0); the later mx1a is a duplicate. */
    script s = {(const uint32_t[]){0}, 1, 0};
    assert_int_equal(tern_dns_mx_plan(&a, "example.test", r, NULL, 0, scripted, &s, &p), 0);
    assert_int_equal(p.outcome, TERN_MX_HOSTS);
    assert_false(p.implicit);
    /* The duplicate (another case, trailing dot) is tried once. */
    assert_int_equal(p.n_hosts, 4);
    assert_string_equal(p.hosts[0].host, "mx1b.example.test");
    assert_string_equal(p.hosts[1].host, "MX1A.example.test.");
    assert_int_equal(p.hosts[1].preference, 10);
    assert_string_equal(p.hosts[2].host, "mx2.example.test");
    assert_string_equal(p.hosts[3].host, "backup.example.net");
    /* Both orders of the equal pair occur with a real random source, and
     * nothing else ever moves. */
    int first_a = 0, first_b = 0;
    for (int i = 0; i < 200; i++) {
        tern_arena_reset(&a);
        assert_int_equal(tern_dns_mx_plan(&a, "example.test", r, NULL, 0, NULL, NULL, &p), 0);
        assert_int_equal(p.n_hosts, 4);
        assert_string_equal(p.hosts[2].host, "mx2.example.test");
        if (strcasecmp(p.hosts[0].host, "mx1a.example.test") == 0 ||
            strcasecmp(p.hosts[0].host, "mx1a.example.test.") == 0)
            first_a++;
        else
            first_b++;
    }
    assert_true(first_a > 20 && first_b > 20);
    tern_arena_free(&a);
    tern_dns_result_free(r);
}

static void test_mx_implicit_null_and_failures(void **state)
{
    (void)state;
    tern_arena a;
    tern_arena_init(&a, 256);
    tern_mx_plan p;
    tern_dns_result *r = mx_result(0, NULL, 0);
    assert_int_equal(tern_dns_mx_plan(&a, "implicit.example.test.", r, NULL, 0, NULL, NULL, &p), 0);
    assert_int_equal(p.outcome, TERN_MX_HOSTS);
    assert_true(p.implicit);
    assert_int_equal(p.n_hosts, 1);
    assert_string_equal(p.hosts[0].host, "implicit.example.test");
    tern_dns_result_free(r);

    static const mx_in null_mx[] = {{0, "."}};
    r = mx_result(0, null_mx, 1);
    assert_int_equal(tern_dns_mx_plan(&a, "nullmx.example.test", r, NULL, 0, NULL, NULL, &p), 0);
    assert_int_equal(p.outcome, TERN_MX_NULL);
    r->security = TERN_DNS_SECURE;
    assert_int_equal(tern_dns_mx_plan(&a, "nullmx.example.test", r, NULL, 0, NULL, NULL, &p), 0);
    assert_true(p.secure);
    tern_dns_result_free(r);
    /* A "." next to a real MX is only dropped. */
    static const mx_in mixed[] = {{0, "."}, {10, "mx.example.test"}};
    r = mx_result(0, mixed, 2);
    assert_int_equal(tern_dns_mx_plan(&a, "example.test", r, NULL, 0, NULL, NULL, &p), 0);
    assert_int_equal(p.outcome, TERN_MX_HOSTS);
    assert_int_equal(p.n_hosts, 1);
    assert_string_equal(p.hosts[0].host, "mx.example.test");
    /* Bogus decides nothing. */
    r->security = TERN_DNS_BOGUS;
    assert_int_equal(tern_dns_mx_plan(&a, "example.test", r, NULL, 0, NULL, NULL, &p), 0);
    assert_int_equal(p.outcome, TERN_MX_TEMPFAIL);
    tern_dns_result_free(r);

    r = mx_result(TERN_DNS_RCODE_NXDOMAIN, NULL, 0);
    assert_int_equal(tern_dns_mx_plan(&a, "nope.example.test", r, NULL, 0, NULL, NULL, &p), 0);
    assert_int_equal(p.outcome, TERN_MX_NO_DOMAIN);
    r->rcode = TERN_DNS_RCODE_SERVFAIL;
    assert_int_equal(tern_dns_mx_plan(&a, "nope.example.test", r, NULL, 0, NULL, NULL, &p), 0);
    assert_int_equal(p.outcome, TERN_MX_TEMPFAIL);
    r->rcode = 0;
    r->status = TERN_DNS_TIMEOUT;
    r->error = "no answer within 10 ms";
    assert_int_equal(tern_dns_mx_plan(&a, "nope.example.test", r, NULL, 0, NULL, NULL, &p), 0);
    assert_int_equal(p.outcome, TERN_MX_TEMPFAIL);
    assert_string_equal(p.why, "no answer within 10 ms");
    tern_dns_result_free(r);
    tern_arena_free(&a);
}

static void test_mx_self(void **state)
{
    (void)state;
    static const mx_in in[] = {{10, "mx1.example.test"}, {20, "mx2.example.test"},
                               {20, "me.example.test"}, {30, "mx3.example.test"}};
    tern_dns_result *r = mx_result(0, in, 4);
    tern_arena a;
    tern_arena_init(&a, 256);
    tern_mx_plan p;
    const char *self[] = {"ME.example.test"};
    assert_int_equal(tern_dns_mx_plan(&a, "example.test", r, self, 1, NULL, NULL, &p), 0);
    assert_int_equal(p.outcome, TERN_MX_HOSTS);
    assert_int_equal(p.n_hosts, 1);
    assert_string_equal(p.hosts[0].host, "mx1.example.test");
    const char *self1[] = {"mx1.example.test"};
    assert_int_equal(tern_dns_mx_plan(&a, "example.test", r, self1, 1, NULL, NULL, &p), 0);
    assert_int_equal(p.outcome, TERN_MX_LOOP);
    tern_arena_free(&a);
    tern_dns_result_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mx),
        cmocka_unit_test(test_name_escapes_and_limits),
        cmocka_unit_test(test_addresses),
        cmocka_unit_test(test_txt),
        cmocka_unit_test(test_tlsa_ptr_raw),
        cmocka_unit_test(test_reverse_name),
        cmocka_unit_test(test_mx_order),
        cmocka_unit_test(test_mx_implicit_null_and_failures),
        cmocka_unit_test(test_mx_self),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
