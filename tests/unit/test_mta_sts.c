/* Unit tests of lib/mta_sts: the policy parser (every case fed whole and
 * byte by byte, results compared), the MX rule, the TXT records and the
 * HTTP response head. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lib/mta_sts.h"

/* Parses s in pieces of `step`; returns the final status. */
static tern_sts_status parse_step(const char *s, size_t len, size_t step, tern_sts_policy *pol,
                                  const char **why)
{
    static tern_sts_parser p;
    tern_sts_parser_init(&p);
    for (size_t off = 0; off < len; off += step) {
        size_t n = len - off < step ? len - off : step;
        if (tern_sts_parse(&p, (const uint8_t *)s + off, n) == TERN_STS_ERROR)
            break;
    }
    return tern_sts_finish(&p, pol, why);
}

/* Whole and byte by byte must agree; returns the status. */
static tern_sts_status parse(const char *s, tern_sts_policy *pol, const char **why)
{
    static tern_sts_policy a, b;
    const char *wa = NULL, *wb = NULL;
    tern_sts_status sa = parse_step(s, strlen(s), strlen(s) ? strlen(s) : 1, &a, &wa);
    tern_sts_status sb = parse_step(s, strlen(s), 1, &b, &wb);
    assert_int_equal(sa, sb);
    if (sa == TERN_STS_DONE)
        assert_memory_equal(&a, &b, sizeof(a));
    else
        assert_string_equal(wa, wb);
    if (pol)
        *pol = a;
    if (why)
        *why = wa;
    return sa;
}

static void test_policy_ok(void **state)
{
    (void)state;
    static tern_sts_policy pol;
    const char *s = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
                    "mx: *.Example.NET.\r\nmax_age: 604800\r\n";
    assert_int_equal(parse(s, &pol, NULL), TERN_STS_DONE);
    assert_int_equal(pol.mode, TERN_STS_ENFORCE);
    assert_int_equal(pol.max_age, 604800);
    assert_int_equal(pol.n_mx, 2);
    assert_string_equal(pol.mx[0], "mail.example.com");
    assert_string_equal(pol.mx[1], "*.example.net");
    /* LF only, no final newline, unknown fields, spaces, first wins */
    s = "version:STSv1\nmode: testing  \nfoo_bar: whatever\nmax_age: 9999999999\n"
        "mode: enforce\nmx: a.b";
    assert_int_equal(parse(s, &pol, NULL), TERN_STS_DONE);
    assert_int_equal(pol.mode, TERN_STS_TESTING);
    assert_int_equal(pol.max_age, TERN_STS_MAX_AGE_MAX);
    assert_int_equal(pol.n_mx, 1);
    /* mode none needs no mx */
    assert_int_equal(parse("version: STSv1\nmode: none\nmax_age: 1\n", &pol, NULL), TERN_STS_DONE);
    assert_int_equal(pol.mode, TERN_STS_NONE);
}

static void test_policy_bad(void **state)
{
    (void)state;
    const char *why = NULL;
    assert_int_equal(parse("mode: enforce\nmx: a.b\nmax_age: 1\n", NULL, &why), TERN_STS_ERROR);
    assert_string_equal(why, "no version field");
    assert_int_equal(parse("version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n", NULL, &why),
                     TERN_STS_ERROR);
    assert_int_equal(parse("version: STSv1\nmode: enforcing\nmx: a.b\nmax_age: 1\n", NULL, &why),
                     TERN_STS_ERROR);
    assert_int_equal(parse("version: STSv1\nmode: enforce\nmax_age: 1\n", NULL, &why),
                     TERN_STS_ERROR);
    assert_string_equal(why, "no mx field");
    assert_int_equal(parse("version: STSv1\nmode: enforce\nmx: a.b\n", NULL, &why), TERN_STS_ERROR);
    assert_string_equal(why, "no max_age field");
    assert_int_equal(parse("version: STSv1\nmode: enforce\nmx: a.b\nmax_age: -1\n", NULL, &why),
                     TERN_STS_ERROR);
    assert_int_equal(parse("version: STSv1\nmode: enforce\nmx: a..b\nmax_age: 1\n", NULL, &why),
                     TERN_STS_ERROR);
    assert_int_equal(parse("version: STSv1\nmode: enforce\nmx: *.*.b\nmax_age: 1\n", NULL, &why),
                     TERN_STS_ERROR);
    assert_int_equal(parse("version: STSv1\nno colon here\n", NULL, &why), TERN_STS_ERROR);
    assert_int_equal(parse("version: STSv1\nmode: en\x01orce\n", NULL, &why), TERN_STS_ERROR);
    assert_int_equal(parse("<html>\n", NULL, &why), TERN_STS_ERROR);
}

static void test_policy_limits(void **state)
{
    (void)state;
    const char *why = NULL;
    /* one line over the cap */
    char *s = malloc(TERN_STS_POLICY_MAX + 100);
    assert_non_null(s);
    int n = snprintf(s, 64, "version: STSv1\nx: ");
    memset(s + n, 'a', TERN_STS_LINE_MAX);
    s[n + TERN_STS_LINE_MAX] = '\0';
    assert_int_equal(parse(s, NULL, &why), TERN_STS_ERROR);
    assert_string_equal(why, "policy line too long");
    /* more than 64 KiB in short lines */
    size_t off = 0;
    while (off < TERN_STS_POLICY_MAX + 10)
        off += (size_t)sprintf(s + off, "x: y\n");
    assert_int_equal(parse(s, NULL, &why), TERN_STS_ERROR);
    assert_string_equal(why, "policy larger than 64 KiB");
    /* too many mx */
    off = (size_t)sprintf(s, "version: STSv1\nmode: enforce\nmax_age: 5\n");
    for (int i = 0; i <= TERN_STS_MX_MAX; i++)
        off += (size_t)sprintf(s + off, "mx: mx%d.example.com\n", i);
    assert_int_equal(parse(s, NULL, &why), TERN_STS_ERROR);
    assert_string_equal(why, "too many mx patterns");
    free(s);
}

static void test_mx_match(void **state)
{
    (void)state;
    assert_true(tern_sts_mx_match("mail.example.com", "MAIL.example.com."));
    assert_false(tern_sts_mx_match("mail.example.com", "mail2.example.com"));
    assert_true(tern_sts_mx_match("*.example.com", "mx1.example.com"));
    assert_false(tern_sts_mx_match("*.example.com", "a.mx1.example.com"));
    assert_false(tern_sts_mx_match("*.example.com", "example.com"));
    assert_false(tern_sts_mx_match("*.example.com", ".example.com"));
    assert_false(tern_sts_mx_match("*.example.com", "mx1.example.org"));
    assert_false(tern_sts_mx_match("*.example.com", "mx1example.com"));
    static tern_sts_policy pol;
    assert_int_equal(parse("version: STSv1\nmode: enforce\nmax_age: 5\nmx: a.test\nmx: *.b.test\n",
                           &pol, NULL),
                     TERN_STS_DONE);
    assert_true(tern_sts_policy_match(&pol, "a.test"));
    assert_true(tern_sts_policy_match(&pol, "x.b.test"));
    assert_false(tern_sts_policy_match(&pol, "b.test"));
}

static void test_txt(void **state)
{
    (void)state;
    char id[TERN_STS_ID_MAX + 1];
    const char *why = NULL;
    const char *t = "v=STSv1; id=20160831085700Z;";
    assert_int_equal(tern_sts_txt_parse(t, strlen(t), id, &why), 0);
    assert_string_equal(id, "20160831085700Z");
    t = "v=STSv1;id=abc ; ext=1";
    assert_int_equal(tern_sts_txt_parse(t, strlen(t), id, &why), 0);
    assert_string_equal(id, "abc");
    t = "v=STSv2; id=abc";
    assert_int_equal(tern_sts_txt_parse(t, strlen(t), id, &why), -1);
    t = "id=abc; v=STSv1";
    assert_int_equal(tern_sts_txt_parse(t, strlen(t), id, &why), -1);
    t = "v=STSv1; id=a-b";
    assert_int_equal(tern_sts_txt_parse(t, strlen(t), id, &why), -1);
    t = "v=STSv1; id=012345678901234567890123456789012";
    assert_int_equal(tern_sts_txt_parse(t, strlen(t), id, &why), -1);
    t = "v=STSv1;";
    assert_int_equal(tern_sts_txt_parse(t, strlen(t), id, &why), -1);
    assert_string_equal(why, "no id field");
    char rua[TERN_TLSRPT_RUA_MAX + 1];
    t = "v=TLSRPTv1; rua=mailto:tls@example.com,https://r.example.com/x";
    assert_int_equal(tern_tlsrpt_txt_parse(t, strlen(t), rua, &why), 0);
    assert_string_equal(rua, "mailto:tls@example.com,https://r.example.com/x");
    t = "v=TLSRPTv1;";
    assert_int_equal(tern_tlsrpt_txt_parse(t, strlen(t), rua, &why), -1);
    t = "v=STSv1; rua=mailto:x@y";
    assert_int_equal(tern_tlsrpt_txt_parse(t, strlen(t), rua, &why), -1);
}

static tern_sts_status http(const char *s, size_t step, tern_sts_http *h, size_t *used_r)
{
    tern_sts_http_init(h);
    size_t len = strlen(s), off = 0;
    tern_sts_status st = TERN_STS_MORE;
    while (off < len && st == TERN_STS_MORE) {
        size_t n = len - off < step ? len - off : step, used = 0;
        st = tern_sts_http_parse(h, (const uint8_t *)s + off, n, &used);
        off += used;
    }
    *used_r = off;
    return st;
}

static void test_http(void **state)
{
    (void)state;
    static tern_sts_http h;
    size_t used = 0;
    const char *s = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    "Content-Length: 12\r\n\r\nversion: STS";
    for (size_t step = 1; step <= strlen(s); step += strlen(s) - 1) {
        assert_int_equal(http(s, step, &h, &used), TERN_STS_DONE);
        assert_int_equal(h.status, 200);
        assert_true(h.text_plain);
        assert_true(h.have_length);
        assert_int_equal(h.content_length, 12);
        assert_int_equal(strlen(s) - used, 12);
    }
    assert_int_equal(http("HTTP/1.0 301 Moved\nLocation: x\n\n", 1, &h, &used), TERN_STS_DONE);
    assert_int_equal(h.status, 301);
    assert_int_equal(http("HTTP/1.1 200 OK\r\nContent-Type: text/plainx\r\n\r\n", 1, &h, &used),
                     TERN_STS_DONE);
    assert_false(h.text_plain);
    assert_int_equal(http("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 1, &h, &used),
                     TERN_STS_DONE);
    assert_true(h.chunked);
    assert_int_equal(http("HTTP/2 200\r\n\r\n", 1, &h, &used), TERN_STS_ERROR);
    assert_int_equal(http("HTTP/1.1 200 OK\r\n folded\r\n\r\n", 1, &h, &used), TERN_STS_ERROR);
    assert_int_equal(
        http("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 1, &h, &used),
        TERN_STS_ERROR);
    char *big = malloc(TERN_STS_HTTP_HEAD_MAX + 100);
    assert_non_null(big);
    size_t off = (size_t)sprintf(big, "HTTP/1.1 200 OK\r\n");
    while (off < TERN_STS_HTTP_HEAD_MAX + 10)
        off += (size_t)sprintf(big + off, "X-A: b\r\n");
    assert_int_equal(http(big, 7, &h, &used), TERN_STS_ERROR);
    assert_string_equal(h.why, "HTTP response head too long");
    free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_policy_ok),  cmocka_unit_test(test_policy_bad),
        cmocka_unit_test(test_policy_limits), cmocka_unit_test(test_mx_match),
        cmocka_unit_test(test_txt),        cmocka_unit_test(test_http),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
