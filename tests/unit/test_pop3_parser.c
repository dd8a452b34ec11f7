/* Unit tests for protocols/pop3/pop3_parser.h: the line reader, the command
 * splitter, strict numbers and the RETR/TOP writer (CRLF, byte-stuffing,
 * TOP's cut, the final dot). Every stream is fed whole, one byte at a time
 * and split in two at every position, and every way must give the same
 * result: the parsers must not care how TCP or the store cut the bytes.
 * Inputs are literals in this file; nothing else is trusted. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "protocols/pop3/pop3_parser.h"

#define S(lit) (lit), (sizeof(lit) - 1)

/* ---- the line reader ---------------------------------------------------- */

/* Feeds `in` in pieces of `step` bytes (0: whole; otherwise the first piece
 * is `split` bytes when split > 0) and writes each event as one text line:
 * "OK:<line>", "LONG", "BAD". */
static void lines_of(const char *in, size_t len, size_t max, size_t step, size_t split, char *out,
                     size_t out_size)
{
    char buf[256];
    tern_pop3_line_reader r;
    tern_pop3_line_init(&r, buf, max);
    size_t o = 0, off = 0;
    out[0] = '\0';
    while (off < len) {
        size_t n = len - off;
        if (split > 0 && off == 0)
            n = split;
        else if (step > 0 && n > step)
            n = step;
        size_t used_total = 0;
        while (used_total < n) {
            tern_pop3_line_status st;
            size_t used = tern_pop3_line_feed(&r, (const uint8_t *)in + off + used_total,
                                              n - used_total, &st);
            assert_true(used > 0);
            used_total += used;
            int w = 0;
            if (st == TERN_POP3_LINE_OK)
                w = snprintf(out + o, out_size - o, "OK:%s|", buf);
            else if (st == TERN_POP3_LINE_TOO_LONG)
                w = snprintf(out + o, out_size - o, "LONG|");
            else if (st == TERN_POP3_LINE_BAD_CHAR)
                w = snprintf(out + o, out_size - o, "BAD|");
            o += (size_t)w;
        }
        off += n;
    }
}

static void check_lines(const char *in, size_t len, size_t max, const char *want)
{
    char got[2048];
    lines_of(in, len, max, 0, 0, got, sizeof(got));
    assert_string_equal(got, want);
    lines_of(in, len, max, 1, 0, got, sizeof(got));
    assert_string_equal(got, want);
    for (size_t k = 1; k < len; k++) {
        lines_of(in, len, max, 0, k, got, sizeof(got));
        assert_string_equal(got, want);
    }
}

static void test_lines_basic(void **state)
{
    (void)state;
    check_lines(S("CAPA\r\nUSER alice@example.test\r\nPASS a b  c\r\n"), 64,
                "OK:CAPA|OK:USER alice@example.test|OK:PASS a b  c|");
    /* bare LF ends a line too; an empty line is a line */
    check_lines(S("STAT\nQUIT\r\n\r\n"), 64, "OK:STAT|OK:QUIT|OK:|");
    /* no line end yet: nothing */
    check_lines(S("RETR 1"), 64, "");
}

static void test_lines_limits(void **state)
{
    (void)state;
    /* max 8 counts the CRLF: 6 characters fit, 7 do not */
    check_lines(S("ABCDEF\r\nABCDEFG\r\nNOOP\r\n"), 8, "OK:ABCDEF|LONG|OK:NOOP|");
    /* a long line is swallowed to its end, however long */
    char big[1000];
    memset(big, 'x', sizeof(big) - 6);
    memcpy(big + sizeof(big) - 6, "\r\nOK\r\n", 6);
    char got[256];
    lines_of(big, sizeof(big), 64, 1, 0, got, sizeof(got));
    assert_string_equal(got, "LONG|OK:OK|");
}

static void test_lines_bad_bytes(void **state)
{
    (void)state;
    check_lines(S("US\0R x\r\nNOOP\r\n"), 64, "BAD|OK:NOOP|");
    check_lines(S("A\rB\r\nNOOP\r\n"), 64, "BAD|OK:NOOP|");
    check_lines(S("A\x01" "B\r\n"), 64, "BAD|");
    check_lines(S("A\x7f\r\n"), 64, "BAD|");
    check_lines(S("TAB\tOK\r\n"), 64, "OK:TAB\tOK|");
    /* UTF-8 bytes are text (RFC 6856) */
    check_lines(S("USER j\xc3\xb6rg\r\n"), 64, "OK:USER j\xc3\xb6rg|");
}

/* ---- commands ------------------------------------------------------------ */

static void test_commands(void **state)
{
    (void)state;
    tern_pop3_cmd c;
    assert_int_equal(tern_pop3_parse_command(S("retr 12"), &c), 0);
    assert_int_equal(c.verb, TERN_POP3_CMD_RETR);
    assert_int_equal(c.n_args, 1);
    assert_int_equal(c.args[0].len, 2);
    assert_memory_equal(c.args[0].p, "12", 2);

    assert_int_equal(tern_pop3_parse_command(S("TOP 1 10"), &c), 0);
    assert_int_equal(c.verb, TERN_POP3_CMD_TOP);
    assert_int_equal(c.n_args, 2);
    assert_false(c.extra_args);

    assert_int_equal(tern_pop3_parse_command(S("TOP 1 10 x"), &c), 0);
    assert_true(c.extra_args);

    assert_int_equal(tern_pop3_parse_command(S("PASS  two  spaces "), &c), 0);
    assert_int_equal(c.verb, TERN_POP3_CMD_PASS);
    assert_int_equal(c.rest.len, strlen(" two  spaces "));
    assert_true(c.empty_arg);

    assert_int_equal(tern_pop3_parse_command(S("STAT "), &c), 0);
    assert_true(c.empty_arg);
    assert_int_equal(c.n_args, 0);

    assert_int_equal(tern_pop3_parse_command(S("XYZW"), &c), 0);
    assert_int_equal(c.verb, TERN_POP3_CMD_UNKNOWN);
    assert_int_equal(tern_pop3_parse_command(S("STATS"), &c), -1);
    assert_int_equal(tern_pop3_parse_command(S(""), &c), -1);
    assert_int_equal(tern_pop3_parse_command(S(" STAT"), &c), -1);
    assert_int_equal(tern_pop3_parse_command(S("ST-T"), &c), -1);

    for (int v = 1; v < TERN_POP3_CMD__COUNT; v++) {
        const char *name = tern_pop3_verb_name((tern_pop3_verb)v);
        assert_int_equal(tern_pop3_parse_command(name, strlen(name), &c), 0);
        assert_int_equal(c.verb, v);
    }
}

static void test_numbers(void **state)
{
    (void)state;
    uint64_t n;
    tern_pop3_slice s = {"42", 2};
    assert_int_equal(tern_pop3_parse_number(s, 100, &n), 0);
    assert_int_equal(n, 42);
    s = (tern_pop3_slice){"101", 3};
    assert_int_equal(tern_pop3_parse_number(s, 100, &n), -1);
    s = (tern_pop3_slice){"-1", 2};
    assert_int_equal(tern_pop3_parse_number(s, 100, &n), -1);
    s = (tern_pop3_slice){"+1", 2};
    assert_int_equal(tern_pop3_parse_number(s, 100, &n), -1);
    s = (tern_pop3_slice){"", 0};
    assert_int_equal(tern_pop3_parse_number(s, 100, &n), -1);
    s = (tern_pop3_slice){"4294967295", 10};
    assert_int_equal(tern_pop3_parse_number(s, UINT32_MAX, &n), 0);
    assert_int_equal(n, UINT32_MAX);
    s = (tern_pop3_slice){"4294967296", 10};
    assert_int_equal(tern_pop3_parse_number(s, UINT32_MAX, &n), -1);
    s = (tern_pop3_slice){"99999999999", 11};
    assert_int_equal(tern_pop3_parse_number(s, UINT64_MAX, &n), -1);
    s = (tern_pop3_slice){"0012", 4};
    assert_int_equal(tern_pop3_parse_number(s, 100, &n), 0);
    assert_int_equal(n, 12);
}

/* ---- the RETR/TOP writer --------------------------------------------------- */

/* The whole response body for `msg` with input pieces of `step` bytes and
 * output room `room` (at least 4). */
static size_t stuff(const char *msg, size_t len, bool top, uint64_t lines, size_t step,
                    size_t room, char *out, size_t out_size)
{
    tern_pop3_stuffer st;
    tern_pop3_stuffer_init(&st, top, lines);
    uint8_t tmp[64];
    assert_true(room <= sizeof(tmp));
    size_t o = 0, off = 0;
    while (off < len && !tern_pop3_stuffer_done(&st)) {
        size_t n = len - off;
        if (step && n > step)
            n = step;
        size_t w = 0;
        size_t used = tern_pop3_stuffer_feed(&st, (const uint8_t *)msg + off, n, tmp, room, &w);
        assert_true(used > 0 || w > 0);
        assert_true(o + w <= out_size);
        memcpy(out + o, tmp, w);
        o += w;
        off += used;
    }
    size_t w = tern_pop3_stuffer_finish(&st, tmp, room < 5 ? 5 : room);
    assert_true(o + w <= out_size);
    memcpy(out + o, tmp, w);
    return o + w;
}

static void check_stuff(const char *msg, size_t len, bool top, uint64_t lines, const char *want)
{
    char out[4096];
    size_t steps[] = {0, 1, 2, 3, 7};
    size_t rooms[] = {64, 4, 5};
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++)
        for (size_t k = 0; k < sizeof(rooms) / sizeof(rooms[0]); k++) {
            size_t n = stuff(msg, len, top, lines, steps[i], rooms[k], out, sizeof(out));
            out[n] = '\0';
            assert_string_equal(out, want);
        }
}

static void test_stuff_retr(void **state)
{
    (void)state;
    check_stuff(S("Subject: x\r\n\r\nhello\r\n"), false, 0, "Subject: x\r\n\r\nhello\r\n.\r\n");
    /* lines starting with '.' get one more, and only those */
    check_stuff(S("A: b\r\n\r\n.\r\n..x\r\na.b\r\n.\r\n"), false, 0,
                "A: b\r\n\r\n..\r\n...x\r\na.b\r\n..\r\n.\r\n");
    /* bare LF, lone CR: CRLF on the wire */
    check_stuff(S("A: b\n\nx\ny\rz"), false, 0, "A: b\r\n\r\nx\r\ny\r\nz\r\n.\r\n");
    /* no final line end: one is added before the dot */
    check_stuff(S("A: b\r\n\r\nlast"), false, 0, "A: b\r\n\r\nlast\r\n.\r\n");
    check_stuff(S("A: b\r\n\r\nlast\r"), false, 0, "A: b\r\n\r\nlast\r\n.\r\n");
    /* empty message */
    check_stuff("", 0, false, 0, ".\r\n");
    /* a dot after a held CR at a chunk edge */
    check_stuff(S("A\r\n.B\r\n"), false, 0, "A\r\n..B\r\n.\r\n");
}

static void test_stuff_top(void **state)
{
    (void)state;
    const char *m = "A: 1\r\nB: 2\r\n\r\nl1\r\n.l2\r\nl3\r\n";
    check_stuff(m, strlen(m), true, 0, "A: 1\r\nB: 2\r\n\r\n.\r\n");
    check_stuff(m, strlen(m), true, 1, "A: 1\r\nB: 2\r\n\r\nl1\r\n.\r\n");
    check_stuff(m, strlen(m), true, 2, "A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\n.\r\n");
    check_stuff(m, strlen(m), true, 3, "A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\nl3\r\n.\r\n");
    check_stuff(m, strlen(m), true, UINT64_MAX, "A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\nl3\r\n.\r\n");
    /* a header without body or blank line */
    check_stuff(S("A: 1\r\nB: 2"), true, 5, "A: 1\r\nB: 2\r\n.\r\n");
    /* bare LF header end */
    check_stuff(S("A: 1\n\nbody\nmore\n"), true, 1, "A: 1\r\n\r\nbody\r\n.\r\n");
}

static void test_stuff_worst_case(void **state)
{
    (void)state;
    /* 2 * len + 2 bytes of room always take the whole input */
    const char *m = "\r.\r.\r.\n.\n.";
    size_t len = strlen(m);
    tern_pop3_stuffer st;
    tern_pop3_stuffer_init(&st, false, 0);
    uint8_t out[64];
    size_t w = 0;
    assert_int_equal(tern_pop3_stuffer_feed(&st, (const uint8_t *)m, len, out, 2 * len + 2, &w),
                     len);
    assert_true(w <= 2 * len + 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lines_basic),
        cmocka_unit_test(test_lines_limits),
        cmocka_unit_test(test_lines_bad_bytes),
        cmocka_unit_test(test_commands),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_stuff_retr),
        cmocka_unit_test(test_stuff_top),
        cmocka_unit_test(test_stuff_worst_case),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
