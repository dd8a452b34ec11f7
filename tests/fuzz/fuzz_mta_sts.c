/* libFuzzer target for lib/mta_sts.c. Input: arbitrary bytes, as a hostile
 * web server or DNS zone would send them. The first byte picks what is
 * fed: a policy file, an HTTP response head, or a TXT record (STS and
 * TLS-RPT). Checked: the parsers give the same answer whole and split at
 * a point the input chooses; parsed names obey the MX rule they came
 * from; every string stays NUL-terminated within its buffer. Any broken
 * invariant calls abort(). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/mta_sts.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

static tern_sts_status policy(const uint8_t *d, size_t n, size_t split, tern_sts_policy *pol)
{
    static tern_sts_parser p;
    tern_sts_parser_init(&p);
    if (split > n)
        split = n;
    if (tern_sts_parse(&p, d, split) != TERN_STS_ERROR)
        tern_sts_parse(&p, d + split, n - split);
    const char *why = NULL;
    tern_sts_status st = tern_sts_finish(&p, pol, &why);
    CHECK(st == TERN_STS_DONE || (st == TERN_STS_ERROR && why != NULL));
    return st;
}

static tern_sts_status head(const uint8_t *d, size_t n, size_t split, tern_sts_http *h, size_t *used)
{
    tern_sts_http_init(h);
    if (split > n)
        split = n;
    size_t u1 = 0, u2 = 0;
    tern_sts_status st = tern_sts_http_parse(h, d, split, &u1);
    CHECK(u1 <= split);
    if (st == TERN_STS_MORE) {
        st = tern_sts_http_parse(h, d + split, n - split, &u2);
        CHECK(u2 <= n - split);
    }
    *used = u1 + u2;
    return st;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint8_t kind = data[0] % 3;
    size_t split = data[1];
    const uint8_t *d = data + 2;
    size_t n = size - 2;
    if (kind == 0) {
        static tern_sts_policy a, b;
        tern_sts_status sa = policy(d, n, n, &a);
        tern_sts_status sb = policy(d, n, split, &b);
        CHECK(sa == sb);
        if (sa == TERN_STS_DONE) {
            CHECK(memcmp(&a, &b, sizeof(a)) == 0);
            CHECK(a.n_mx <= TERN_STS_MX_MAX);
            CHECK(a.max_age <= TERN_STS_MAX_AGE_MAX);
            for (size_t i = 0; i < a.n_mx; i++) {
                CHECK(memchr(a.mx[i], '\0', sizeof(a.mx[i])) != NULL);
                /* a pattern without wildcard matches its own name */
                if (a.mx[i][0] != '*')
                    CHECK(tern_sts_policy_match(&a, a.mx[i]));
                else
                    CHECK(!tern_sts_mx_match(a.mx[i], a.mx[i] + 2));
            }
        }
    } else if (kind == 1) {
        static tern_sts_http a, b;
        size_t ua = 0, ub = 0;
        tern_sts_status sa = head(d, n, n, &a, &ua);
        tern_sts_status sb = head(d, n, split, &b, &ub);
        CHECK(sa == sb);
        if (sa == TERN_STS_DONE) {
            CHECK(ua == ub);
            CHECK(a.status == b.status && a.text_plain == b.text_plain &&
                  a.content_length == b.content_length && a.chunked == b.chunked);
            CHECK(a.status >= 0 && a.status <= 999);
        }
    } else {
        char id[TERN_STS_ID_MAX + 1];
        char rua[TERN_TLSRPT_RUA_MAX + 1];
        const char *why = NULL;
        if (tern_sts_txt_parse((const char *)d, n, id, &why) == 0)
            CHECK(strlen(id) >= 1 && strlen(id) <= TERN_STS_ID_MAX);
        else
            CHECK(why != NULL);
        why = NULL;
        if (tern_tlsrpt_txt_parse((const char *)d, n, rua, &why) == 0)
            CHECK(strlen(rua) <= TERN_TLSRPT_RUA_MAX);
        else
            CHECK(why != NULL);
    }
    return 0;
}
