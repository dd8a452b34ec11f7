/* Unit tests of the SMTP client's reply parser and EHLO keyword parser,
 * every case fed whole and byte by byte. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "protocols/smtp/smtp_reply.h"

/* Parses one reply from s, fed in pieces of `step`; returns the status and
 * how much was used in total. */
static tern_reply_status feed(tern_reply_parser *p, const char *s, size_t step, size_t *used_r)
{
    size_t len = strlen(s), off = 0;
    tern_reply_status st = TERN_REPLY_MORE;
    while (off < len) {
        size_t n = len - off < step ? len - off : step, used = 0;
        st = tern_reply_parse(p, (const uint8_t *)s + off, n, &used);
        off += used;
        if (st != TERN_REPLY_MORE)
            break;
    }
    *used_r = off;
    return st;
}

static void both(const char *s, tern_reply_status want, int code, const char *enh,
                 const char *text, size_t want_used)
{
    size_t steps[] = {1, 2, 7, 4096};
    for (size_t k = 0; k < 4; k++) {
        tern_reply_parser p;
        tern_reply_parser_init(&p);
        size_t used = 0;
        assert_int_equal(feed(&p, s, steps[k], &used), want);
        if (want != TERN_REPLY_DONE)
            continue;
        assert_int_equal(used, want_used ? want_used : strlen(s));
        assert_int_equal(p.r.code, code);
        assert_string_equal(p.r.enhanced, enh);
        assert_string_equal(p.r.text, text);
    }
}

static void test_single_and_multiline(void **st)
{
    both("220 mx.example.org ESMTP\r\n", TERN_REPLY_DONE, 220, "", "mx.example.org ESMTP", 0);
    both("250 2.1.0 Sender ok\r\n", TERN_REPLY_DONE, 250, "2.1.0", "Sender ok", 0);
    both("550-5.1.1 No such\r\n550 5.1.1 user here\r\n", TERN_REPLY_DONE, 550, "5.1.1",
         "No such\nuser here", 0);
    both("250\r\n", TERN_REPLY_DONE, 250, "", "", 0);
    both("354 Go ahead\n", TERN_REPLY_DONE, 354, "", "Go ahead", 0); /* bare LF */
    /* Pipelined replies: one at a time, the rest left for the next call. */
    both("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n", TERN_REPLY_DONE, 250, "2.1.0", "Ok", 14);
    /* Something that looks like an enhanced code but is not. */
    both("250 2.1 x\r\n", TERN_REPLY_DONE, 250, "", "2.1 x", 0);
    both("421 4.7.0x\r\n", TERN_REPLY_DONE, 421, "", "4.7.0x", 0);
}

static void test_malformed(void **st)
{
    both("hello\r\n", TERN_REPLY_MALFORMED, 0, "", "", 0);
    both("250-a\r\n251 b\r\n", TERN_REPLY_MALFORMED, 0, "", "", 0);
    both("25\r\n", TERN_REPLY_MALFORMED, 0, "", "", 0);
    both("650 x\r\n", TERN_REPLY_MALFORMED, 0, "", "", 0);
    both("250x\r\n", TERN_REPLY_MALFORMED, 0, "", "", 0);
    both("250-unfinished\r\n", TERN_REPLY_MORE, 0, "", "", 0);
}

static void test_limits(void **st)
{
    static char big[TERN_SMTP_REPLY_LINE_MAX * 3];
    memset(big, 'x', sizeof(big));
    memcpy(big, "250 ", 4);
    memcpy(big + sizeof(big) - 3, "\r\n", 3);
    tern_reply_parser p;
    tern_reply_parser_init(&p);
    size_t used;
    assert_int_equal(feed(&p, big, 1000, &used), TERN_REPLY_DONE);
    assert_true(p.r.truncated);
    assert_int_equal(p.r.code, 250);
    /* Too many continuation lines is not a reply. */
    static char many[200 * 8 + 16];
    size_t o = 0;
    for (int i = 0; i < 200; i++)
        o += (size_t)snprintf(many + o, sizeof(many) - o, "250-x\r\n");
    tern_reply_parser_init(&p);
    assert_int_equal(feed(&p, many, 3, &used), TERN_REPLY_MALFORMED);
}

static void test_ehlo_caps(void **st)
{
    const char *s = "250-mx.example.org Hello client\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
                    "250-auth plain login\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n"
                    "250-DSN\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250-X-UNKNOWN 1\r\n250 STARTTLS\r\n";
    tern_reply_parser p;
    tern_reply_parser_init(&p);
    size_t used;
    assert_int_equal(feed(&p, s, 5, &used), TERN_REPLY_DONE);
    tern_ehlo_caps c;
    tern_ehlo_caps_parse(&p.r, &c);
    assert_true(c.pipelining && c.eightbitmime && c.smtputf8 && c.chunking && c.dsn &&
                c.starttls && c.enhancedstatuscodes && c.size_given);
    assert_false(c.binarymime || c.requiretls);
    assert_int_equal(c.size, 10240000);
    assert_string_equal(c.auth, "PLAIN LOGIN");
    /* The greeting line's words are not keywords. */
    tern_reply_parser_init(&p);
    assert_int_equal(feed(&p, "250 PIPELINING\r\n", 3, &used), TERN_REPLY_DONE);
    tern_ehlo_caps_parse(&p.r, &c);
    assert_false(c.pipelining);
    tern_reply_parser_init(&p);
    assert_int_equal(feed(&p, "250-x\r\n250 SIZE\r\n", 3, &used), TERN_REPLY_DONE);
    tern_ehlo_caps_parse(&p.r, &c);
    assert_true(c.size_given);
    assert_int_equal(c.size, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_and_multiline),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_ehlo_caps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
