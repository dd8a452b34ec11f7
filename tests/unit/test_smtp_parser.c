/* Unit tests for protocols/smtp/smtp_parser.h: the command line reader, the
 * argument parsers, the DATA reader and the header scanner. Every test that
 * parses a stream runs it whole, one byte at a time, in random-sized chunks
 * (fixed seed) and split in two at every position, and asserts that all of
 * these give the same result: the parsers must not care how TCP cut the
 * bytes. Inputs are literals in this file; nothing else is trusted. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "protocols/smtp/smtp_parser.h"
#include "storage/queue/spool.h"

#define S(lit) (lit), (sizeof(lit) - 1)

/* ---- feeding strategies ------------------------------------------------ */

enum { FEED_WHOLE, FEED_BYTE, FEED_RANDOM, FEED_SPLIT };

typedef struct {
    int mode;
    size_t split;   /* FEED_SPLIT: first feed's size */
    uint32_t seed;  /* FEED_RANDOM */
} feeder;

static size_t next_chunk(feeder *f, size_t off, size_t remaining)
{
    size_t n;
    switch (f->mode) {
    case FEED_BYTE:
        n = 1;
        break;
    case FEED_RANDOM:
        f->seed = f->seed * 1103515245u + 12345u;
        n = 1 + (f->seed >> 16) % 17;
        break;
    case FEED_SPLIT:
        n = off < f->split ? f->split - off : remaining;
        break;
    default:
        n = remaining;
    }
    return n < remaining ? n : remaining;
}

/* ---- line reader harness ---------------------------------------------- */

typedef struct {
    int status;
    int verb;
    char name[64];
    size_t name_len;
    char args[1100];
    size_t args_len;
} line_ev;

typedef struct {
    size_t n;
    line_ev ev[16];
} line_run;

static void run_lines_with(const char *in, size_t len, size_t max, feeder *f, line_run *out)
{
    char buf[1100];
    tern_smtp_line_reader r;
    assert_true(max <= sizeof(buf));
    tern_smtp_line_init(&r, buf, max);
    memset(out, 0, sizeof(*out));
    size_t off = 0;
    while (off < len) {
        size_t chunk = next_chunk(f, off, len - off);
        size_t used = 0;
        /* Fed as a separate copy so nothing can point into the input past
         * this feed. */
        uint8_t tmp[4096];
        assert_true(chunk <= sizeof(tmp));
        memcpy(tmp, in + off, chunk);
        while (used < chunk) {
            tern_smtp_cmd cmd;
            tern_smtp_line_status st;
            size_t c = tern_smtp_line_feed(&r, tmp + used, chunk - used, &cmd, &st);
            assert_true(c <= chunk - used);
            used += c;
            if (st == TERN_SMTP_LINE_MORE) {
                assert_int_equal(used, chunk);
                continue;
            }
            assert_true(c > 0);
            assert_true(out->n < 16);
            line_ev *e = &out->ev[out->n++];
            e->status = (int)st;
            e->verb = -1;
            if (st == TERN_SMTP_LINE_OK) {
                e->verb = (int)cmd.verb;
                assert_true(cmd.name.len < sizeof(e->name));
                memcpy(e->name, cmd.name.p, cmd.name.len);
                e->name_len = cmd.name.len;
                assert_true(cmd.args.len < sizeof(e->args));
                memcpy(e->args, cmd.args.p, cmd.args.len);
                e->args_len = cmd.args.len;
            }
        }
        off += chunk;
    }
}

static void assert_same_lines(const line_run *a, const line_run *b)
{
    assert_int_equal(a->n, b->n);
    for (size_t i = 0; i < a->n; i++) {
        assert_int_equal(a->ev[i].status, b->ev[i].status);
        assert_int_equal(a->ev[i].verb, b->ev[i].verb);
        assert_int_equal(a->ev[i].name_len, b->ev[i].name_len);
        assert_memory_equal(a->ev[i].name, b->ev[i].name, a->ev[i].name_len + 1);
        assert_int_equal(a->ev[i].args_len, b->ev[i].args_len);
        assert_memory_equal(a->ev[i].args, b->ev[i].args, a->ev[i].args_len + 1);
    }
}

/* Runs every feeding strategy and returns the (identical) result. */
static void run_lines(const char *in, size_t len, size_t max, line_run *out)
{
    static line_run other;
    feeder f = {FEED_WHOLE, 0, 0};
    run_lines_with(in, len, max, &f, out);
    f.mode = FEED_BYTE;
    run_lines_with(in, len, max, &f, &other);
    assert_same_lines(out, &other);
    for (uint32_t seed = 1; seed <= 5; seed++) {
        f.mode = FEED_RANDOM;
        f.seed = seed;
        run_lines_with(in, len, max, &f, &other);
        assert_same_lines(out, &other);
    }
    for (size_t k = 1; k < len; k++) {
        f.mode = FEED_SPLIT;
        f.split = k;
        run_lines_with(in, len, max, &f, &other);
        assert_same_lines(out, &other);
    }
}

static void assert_ok_line(const line_ev *e, tern_smtp_verb verb, const char *name,
                           const char *args)
{
    assert_int_equal(e->status, TERN_SMTP_LINE_OK);
    assert_int_equal(e->verb, verb);
    assert_string_equal(e->name, name);
    assert_string_equal(e->args, args);
}

/* ---- line reader tests ------------------------------------------------ */

static void test_line_verbs(void **state)
{
    static const struct {
        const char *line;
        tern_smtp_verb verb;
    } cases[] = {
        {"HELO x\r\n", TERN_SMTP_CMD_HELO}, {"ehlo x\r\n", TERN_SMTP_CMD_EHLO},
        {"MaIl FROM:<>\r\n", TERN_SMTP_CMD_MAIL}, {"RCPT TO:<a@b>\r\n", TERN_SMTP_CMD_RCPT},
        {"DATA\r\n", TERN_SMTP_CMD_DATA}, {"BDAT 1\r\n", TERN_SMTP_CMD_BDAT},
        {"RSET\r\n", TERN_SMTP_CMD_RSET}, {"noop\r\n", TERN_SMTP_CMD_NOOP},
        {"QUIT\r\n", TERN_SMTP_CMD_QUIT}, {"VRFY a\r\n", TERN_SMTP_CMD_VRFY},
        {"EXPN a\r\n", TERN_SMTP_CMD_EXPN}, {"HELP\r\n", TERN_SMTP_CMD_HELP},
        {"StartTLS\r\n", TERN_SMTP_CMD_STARTTLS}, {"AUTH PLAIN\r\n", TERN_SMTP_CMD_AUTH},
        {"MAILX FROM:<>\r\n", TERN_SMTP_CMD_UNKNOWN}, {"MAI\r\n", TERN_SMTP_CMD_UNKNOWN},
        {"STARTTLSX\r\n", TERN_SMTP_CMD_UNKNOWN},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        line_run run;
        run_lines(cases[i].line, strlen(cases[i].line), 512, &run);
        assert_int_equal(run.n, 1);
        assert_int_equal(run.ev[0].status, TERN_SMTP_LINE_OK);
        assert_int_equal(run.ev[0].verb, cases[i].verb);
    }
}

static void test_line_split_args(void **state)
{
    line_run run;
    run_lines(S("MAIL FROM:<x>\r\n"), 512, &run);
    assert_int_equal(run.n, 1);
    assert_ok_line(&run.ev[0], TERN_SMTP_CMD_MAIL, "MAIL", "FROM:<x>");

    run_lines(S("mail    FROM:<x> SIZE=1  \t \r\n"), 512, &run);
    assert_ok_line(&run.ev[0], TERN_SMTP_CMD_MAIL, "mail", "FROM:<x> SIZE=1");

    run_lines(S("NOOP\r\n"), 512, &run);
    assert_ok_line(&run.ev[0], TERN_SMTP_CMD_NOOP, "NOOP", "");

    run_lines(S("NOOP   \r\n"), 512, &run);
    assert_ok_line(&run.ev[0], TERN_SMTP_CMD_NOOP, "NOOP", "");

    run_lines(S("XYZZY plugh  \r\n"), 512, &run);
    assert_ok_line(&run.ev[0], TERN_SMTP_CMD_UNKNOWN, "XYZZY", "plugh");

    run_lines(S("\r\n"), 512, &run);
    assert_ok_line(&run.ev[0], TERN_SMTP_CMD_UNKNOWN, "", "");

    /* A tab does not end the verb: only a space does. */
    run_lines(S("MAIL\tFROM:<x>\r\n"), 512, &run);
    assert_ok_line(&run.ev[0], TERN_SMTP_CMD_UNKNOWN, "MAIL\tFROM:<x>", "");
}

static void test_line_bare_lf_and_more(void **state)
{
    line_run run;
    run_lines(S("NOOP\nQUIT\r\n"), 512, &run);
    assert_int_equal(run.n, 2);
    assert_ok_line(&run.ev[0], TERN_SMTP_CMD_NOOP, "NOOP", "");
    assert_ok_line(&run.ev[1], TERN_SMTP_CMD_QUIT, "QUIT", "");

    /* No end of line: nothing yet, everything consumed. */
    run_lines(S("NOOP\r"), 512, &run);
    assert_int_equal(run.n, 0);

    char buf[16];
    tern_smtp_line_reader r;
    tern_smtp_cmd cmd;
    tern_smtp_line_status st;
    tern_smtp_line_init(&r, buf, sizeof(buf));
    assert_int_equal(tern_smtp_line_feed(&r, (const uint8_t *)"NO", 2, &cmd, &st), 2);
    assert_int_equal(st, TERN_SMTP_LINE_MORE);
    assert_int_equal(tern_smtp_line_feed(&r, (const uint8_t *)"", 0, &cmd, &st), 0);
    assert_int_equal(st, TERN_SMTP_LINE_MORE);
    assert_int_equal(tern_smtp_line_feed(&r, (const uint8_t *)"OP\r\nQUIT\r\n", 10, &cmd, &st),
                     4);
    assert_int_equal(st, TERN_SMTP_LINE_OK);
    assert_int_equal(cmd.verb, TERN_SMTP_CMD_NOOP);
}

static void test_line_pipelined(void **state)
{
    line_run run;
    run_lines(S("EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
                "RCPT TO:<e@d.example>\nDATA\r\n"),
              512, &run);
    assert_int_equal(run.n, 5);
    assert_ok_line(&run.ev[0], TERN_SMTP_CMD_EHLO, "EHLO", "client.example");
    assert_ok_line(&run.ev[1], TERN_SMTP_CMD_MAIL, "MAIL", "FROM:<a@b.example>");
    assert_ok_line(&run.ev[2], TERN_SMTP_CMD_RCPT, "RCPT", "TO:<c@d.example>");
    assert_ok_line(&run.ev[3], TERN_SMTP_CMD_RCPT, "RCPT", "TO:<e@d.example>");
    assert_ok_line(&run.ev[4], TERN_SMTP_CMD_DATA, "DATA", "");
}

static void test_line_limits(void **state)
{
    line_run run;
    /* max 16 bytes including the line end. */
    run_lines(S("NOOP 6789012345\r\n"), 17, &run); /* 17 bytes with max 17 */
    assert_int_equal(run.ev[0].status, TERN_SMTP_LINE_OK);

    run_lines(S("NOOP 678901234\r\n"), 16, &run); /* exactly 16 */
    assert_int_equal(run.n, 1);
    assert_ok_line(&run.ev[0], TERN_SMTP_CMD_NOOP, "NOOP", "678901234");

    run_lines(S("NOOP 6789012345\r\n"), 16, &run); /* 17: one past */
    assert_int_equal(run.n, 1);
    assert_int_equal(run.ev[0].status, TERN_SMTP_LINE_TOO_LONG);

    run_lines(S("NOOP 6789012345\n"), 16, &run); /* exactly 16 with bare LF */
    assert_ok_line(&run.ev[0], TERN_SMTP_CMD_NOOP, "NOOP", "6789012345");

    run_lines(S("NOOP 67890123456\n"), 16, &run);
    assert_int_equal(run.ev[0].status, TERN_SMTP_LINE_TOO_LONG);

    /* Over-long, reported once, then the reader is back in step. */
    run_lines(S("NOOP 6789012345678901234567890123456789012345678901234567890\r\nQUIT\r\n"), 16,
              &run);
    assert_int_equal(run.n, 2);
    assert_int_equal(run.ev[0].status, TERN_SMTP_LINE_TOO_LONG);
    assert_ok_line(&run.ev[1], TERN_SMTP_CMD_QUIT, "QUIT", "");

    /* Two over-long lines in a row, then a valid one. */
    run_lines(S("AAAAAAAAAAAAAAAAAAAAAAAAA\r\nBBBBBBBBBBBBBBBBBBBBBBBB\nRSET\r\n"), 16, &run);
    assert_int_equal(run.n, 3);
    assert_int_equal(run.ev[0].status, TERN_SMTP_LINE_TOO_LONG);
    assert_int_equal(run.ev[1].status, TERN_SMTP_LINE_TOO_LONG);
    assert_ok_line(&run.ev[2], TERN_SMTP_CMD_RSET, "RSET", "");

    /* The CR of an exactly-max line may come as the max-th byte. */
    run_lines(S("NOOP 67890123\r\r\n"), 16, &run);
    assert_int_equal(run.ev[0].status, TERN_SMTP_LINE_BAD_CHAR);

    /* An RFC 5321 size command line: 512 with CRLF. */
    char big[600];
    memset(big, 'x', sizeof(big));
    memcpy(big, "NOOP ", 5);
    memcpy(big + 510, "\r\n", 2);
    run_lines(big, 512, 512, &run);
    assert_int_equal(run.n, 1);
    assert_int_equal(run.ev[0].status, TERN_SMTP_LINE_OK);
    assert_int_equal(run.ev[0].args_len, 505);
    memset(big, 'x', sizeof(big));
    memcpy(big, "NOOP ", 5);
    memcpy(big + 511, "\r\nQUIT\r\n", 8);
    run_lines(big, 519, 512, &run);
    assert_int_equal(run.n, 2);
    assert_int_equal(run.ev[0].status, TERN_SMTP_LINE_TOO_LONG);
    assert_ok_line(&run.ev[1], TERN_SMTP_CMD_QUIT, "QUIT", "");
}

static void test_line_bad_chars(void **state)
{
    line_run run;
    run_lines(S("NO\0OP\r\nQUIT\r\n"), 512, &run);
    assert_int_equal(run.n, 2);
    assert_int_equal(run.ev[0].status, TERN_SMTP_LINE_BAD_CHAR);
    assert_ok_line(&run.ev[1], TERN_SMTP_CMD_QUIT, "QUIT", "");

    run_lines(S("MAIL FROM:<a@b>\rRCPT TO:<c@d>\r\nQUIT\r\n"), 512, &run);
    assert_int_equal(run.n, 2);
    assert_int_equal(run.ev[0].status, TERN_SMTP_LINE_BAD_CHAR);
    assert_ok_line(&run.ev[1], TERN_SMTP_CMD_QUIT, "QUIT", "");

    /* NUL in an over-long line: the length is what gets reported. */
    run_lines(S("AAAAAAAAAAAAAAAAAAAAA\0AAAAAAAAAA\r\nQUIT\r\n"), 16, &run);
    assert_int_equal(run.ev[0].status, TERN_SMTP_LINE_TOO_LONG);
    assert_ok_line(&run.ev[1], TERN_SMTP_CMD_QUIT, "QUIT", "");

    /* 8-bit bytes are not forbidden in a line (SMTPUTF8 addresses). */
    run_lines(S("RCPT TO:<\xC3\xA9@b>\r\n"), 512, &run);
    assert_ok_line(&run.ev[0], TERN_SMTP_CMD_RCPT, "RCPT", "TO:<\xC3\xA9@b>");
}

static void test_verb_name(void **state)
{
    assert_string_equal(tern_smtp_verb_name(TERN_SMTP_CMD_HELO), "HELO");
    assert_string_equal(tern_smtp_verb_name(TERN_SMTP_CMD_STARTTLS), "STARTTLS");
    assert_string_equal(tern_smtp_verb_name(TERN_SMTP_CMD_AUTH), "AUTH");
    assert_string_equal(tern_smtp_verb_name(TERN_SMTP_CMD_UNKNOWN), "UNKNOWN");
    assert_string_equal(tern_smtp_verb_name(TERN_SMTP_CMD__COUNT), "UNKNOWN");
    assert_string_equal(tern_smtp_verb_name((tern_smtp_verb)-1), "UNKNOWN");
    for (int v = 0; v < TERN_SMTP_CMD__COUNT; v++)
        assert_non_null(tern_smtp_verb_name((tern_smtp_verb)v));
}

/* ---- MAIL ------------------------------------------------------------- */

static int mail(const char *s, tern_smtp_mail_args *m)
{
    return tern_smtp_parse_mail(s, strlen(s), m);
}

static void assert_slice(tern_smtp_slice sl, const char *want)
{
    assert_int_equal(sl.len, strlen(want));
    assert_memory_equal(sl.p, want, sl.len);
}

static void test_mail_paths(void **state)
{
    tern_smtp_mail_args m;
    static const struct {
        const char *args;
        const char *path;
    } ok[] = {
        {"FROM:<a@b.example>", "a@b.example"},
        {"from:<a@b.example>", "a@b.example"},
        {"FROM: <a@b.example>", "a@b.example"},
        {"FROM:  <a@b.example>  ", "a@b.example"},
        {"FROM:<>", ""},
        {"FROM:<@r1.example,@r2.example:a@b.example>", "a@b.example"},
        {"FROM:<@r1.example:a@b.example>", "a@b.example"},
        {"FROM:<\"a b\"@c.example>", "\"a b\"@c.example"},
        {"FROM:<\"a\\\"@b\"@c.example>", "\"a\\\"@b\"@c.example"},
        {"FROM:<\"\"@c.example>", "\"\"@c.example"},
        {"FROM:<first.last+tag@sub-1.c.example>", "first.last+tag@sub-1.c.example"},
        {"FROM:<!#$%&'*+-/=?^_`{|}~@x>", "!#$%&'*+-/=?^_`{|}~@x"},
        {"FROM:<a@localhost>", "a@localhost"},
        {"FROM:<a@123.example>", "a@123.example"},
        {"FROM:<a@[192.0.2.1]>", "a@[192.0.2.1]"},
        {"FROM:<a@[0.0.0.0]>", "a@[0.0.0.0]"},
        {"FROM:<a@[255.255.255.255]>", "a@[255.255.255.255]"},
        {"FROM:<a@[IPv6:::1]>", "a@[IPv6:::1]"},
        {"FROM:<a@[IPv6:::]>", "a@[IPv6:::]"},
        {"FROM:<a@[ipv6:2001:db8::1]>", "a@[ipv6:2001:db8::1]"},
        {"FROM:<a@[IPv6:2001:db8:0:0:0:0:0:1]>", "a@[IPv6:2001:db8:0:0:0:0:0:1]"},
        {"FROM:<a@[IPv6:1:2:3:4:5:6::]>", "a@[IPv6:1:2:3:4:5:6::]"},
        {"FROM:<a@[IPv6:::ffff:192.0.2.1]>", "a@[IPv6:::ffff:192.0.2.1]"},
        {"FROM:<a@[IPv6:1:2:3:4:5:6:192.0.2.1]>", "a@[IPv6:1:2:3:4:5:6:192.0.2.1]"},
        {"FROM:<a@[IPv6:1:2:3:4::192.0.2.1]>", "a@[IPv6:1:2:3:4::192.0.2.1]"},
        {"FROM:<a@[x-tag:any-thing]>", "a@[x-tag:any-thing]"},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        int rc = mail(ok[i].args, &m);
        if (rc != 0)
            fail_msg("MAIL %s: %d", ok[i].args, rc);
        assert_slice(m.path, ok[i].path);
        assert_false(m.has_size);
        assert_int_equal(m.body, -1);
        assert_false(m.smtputf8);
        assert_int_equal(m.ret, 0);
        assert_int_equal(m.envid.len, 0);
        assert_int_equal(m.auth.len, 0);
    }

    static const struct {
        const char *args;
        int rc;
    } bad[] = {
        {"", TERN_SMTP_ESYNTAX},
        {"FROM", TERN_SMTP_ESYNTAX},
        {"FROM:", TERN_SMTP_ESYNTAX},
        {"FROM<a@b>", TERN_SMTP_ESYNTAX},
        {"FROM :<a@b>", TERN_SMTP_ESYNTAX},
        {"TO:<a@b>", TERN_SMTP_ESYNTAX},
        {"FROM:a@b.example", TERN_SMTP_ESYNTAX}, /* no brackets: refused */
        {"FROM:a@b.example SIZE=1", TERN_SMTP_ESYNTAX},
        {"FROM:<a@b.example>x", TERN_SMTP_ESYNTAX},
        {"FROM:<a@b.example><c@d>", TERN_SMTP_ESYNTAX},
        {"FROM:<>SIZE=1", TERN_SMTP_ESYNTAX},
        {"FROM:<a@b.example", TERN_SMTP_EPATH},
        {"FROM:<", TERN_SMTP_EPATH},
        {"FROM:< a@b.example>", TERN_SMTP_EPATH},
        {"FROM:<a@b.example >", TERN_SMTP_EPATH},
        {"FROM:<a>", TERN_SMTP_EPATH},
        {"FROM:<postmaster>", TERN_SMTP_EPATH},
        {"FROM:<a@>", TERN_SMTP_EPATH},
        {"FROM:<@b.example>", TERN_SMTP_EPATH},
        {"FROM:<a..b@c.example>", TERN_SMTP_EPATH},
        {"FROM:<.a@c.example>", TERN_SMTP_EPATH},
        {"FROM:<a.@c.example>", TERN_SMTP_EPATH},
        {"FROM:<a b@c.example>", TERN_SMTP_EPATH},
        {"FROM:<a(b)@c.example>", TERN_SMTP_EPATH},
        {"FROM:<a@b@c.example>", TERN_SMTP_EPATH},
        {"FROM:<a@-b.example>", TERN_SMTP_EPATH},
        {"FROM:<a@b-.example>", TERN_SMTP_EPATH},
        {"FROM:<a@b..example>", TERN_SMTP_EPATH},
        {"FROM:<a@b.example.>", TERN_SMTP_EPATH},
        {"FROM:<a@.b.example>", TERN_SMTP_EPATH},
        {"FROM:<a@b_c.example>", TERN_SMTP_EPATH},
        {"FROM:<\"a@b.example>", TERN_SMTP_EPATH},
        {"FROM:<\"a\tb\"@c.example>", TERN_SMTP_EPATH},
        {"FROM:<\"a\\", TERN_SMTP_EPATH},
        {"FROM:<@r1.example a@b.example>", TERN_SMTP_EPATH},
        {"FROM:<@r1.example,r2.example:a@b.example>", TERN_SMTP_EPATH},
        {"FROM:<@:a@b.example>", TERN_SMTP_EPATH},
        {"FROM:<@r1.example:>", TERN_SMTP_EPATH},
        {"FROM:<a@[192.0.2.256]>", TERN_SMTP_EPATH},
        {"FROM:<a@[192.0.2]>", TERN_SMTP_EPATH},
        {"FROM:<a@[192.0.2.1.5]>", TERN_SMTP_EPATH},
        {"FROM:<a@[0192.0.2.1]>", TERN_SMTP_EPATH},
        {"FROM:<a@[192.0.2.1>", TERN_SMTP_EPATH},
        {"FROM:<a@[]>", TERN_SMTP_EPATH},
        {"FROM:<a@[IPv6:1:2:3:4:5:6:7]>", TERN_SMTP_EPATH},
        {"FROM:<a@[IPv6:1:2:3:4:5:6:7:8:9]>", TERN_SMTP_EPATH},
        {"FROM:<a@[IPv6:1::2::3]>", TERN_SMTP_EPATH},
        {"FROM:<a@[IPv6:1:2:3:4:5:6:7::]>", TERN_SMTP_EPATH},
        {"FROM:<a@[IPv6:12345::]>", TERN_SMTP_EPATH},
        {"FROM:<a@[IPv6:1:]>", TERN_SMTP_EPATH},
        {"FROM:<a@[IPv6::1]>", TERN_SMTP_EPATH},
        {"FROM:<a@[IPv6:::g]>", TERN_SMTP_EPATH},
        {"FROM:<a@[IPv6:1:2:3:4:5::192.0.2.1]>", TERN_SMTP_EPATH},
        {"FROM:<a@[IPv6:1:2:3:4:5:192.0.2.1]>", TERN_SMTP_EPATH},
        {"FROM:<a@[IPv6:::1.2.3]>", TERN_SMTP_EPATH},
        {"FROM:<a@[x-tag:]>", TERN_SMTP_EPATH},
        {"FROM:<a@[-tag:x]>", TERN_SMTP_EPATH},
        {"FROM:<a@[tag-:x]>", TERN_SMTP_EPATH},
        {"FROM:<a@[a\\b]>", TERN_SMTP_EPATH},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = mail(bad[i].args, &m);
        if (rc != bad[i].rc)
            fail_msg("MAIL %s: got %d want %d", bad[i].args, rc, bad[i].rc);
    }
}

/* Builds "FROM:<" local "@" domain ">" with given part lengths. */
static void build_path(char *buf, const char *prefix, size_t local, size_t label, size_t labels)
{
    size_t o = strlen(prefix);
    memcpy(buf, prefix, o);
    buf[o++] = '<';
    memset(buf + o, 'l', local);
    o += local;
    buf[o++] = '@';
    for (size_t i = 0; i < labels; i++) {
        if (i)
            buf[o++] = '.';
        memset(buf + o, 'd', label);
        o += label;
    }
    buf[o++] = '>';
    buf[o] = 0;
}

static void test_mail_limits(void **state)
{
    char buf[1200];
    tern_smtp_mail_args m;
    build_path(buf, "FROM:", 64, 10, 1);
    assert_int_equal(mail(buf, &m), 0);
    build_path(buf, "FROM:", 65, 10, 1);
    assert_int_equal(mail(buf, &m), TERN_SMTP_EPATH);
    build_path(buf, "FROM:", 1, 63, 1);
    assert_int_equal(mail(buf, &m), 0);
    build_path(buf, "FROM:", 1, 64, 1);
    assert_int_equal(mail(buf, &m), TERN_SMTP_EPATH);
    /* Path "<" 62 "@" 3*63+2 ">" = 256 octets: the largest allowed. */
    build_path(buf, "FROM:", 62, 63, 3);
    assert_int_equal(strlen(buf) - 5, 256);
    assert_int_equal(mail(buf, &m), 0);
    build_path(buf, "FROM:", 63, 63, 3);
    assert_int_equal(mail(buf, &m), TERN_SMTP_EPATH);
    /* Domain over 255 octets. */
    build_path(buf, "FROM:", 1, 63, 5);
    assert_int_equal(mail(buf, &m), TERN_SMTP_EPATH);
}

static void test_mail_params(void **state)
{
    tern_smtp_mail_args m;
    assert_int_equal(mail("FROM:<a@b> SIZE=0", &m), 0);
    assert_true(m.has_size);
    assert_int_equal(m.size, 0);
    assert_int_equal(mail("FROM:<a@b> size=18446744073709551615", &m), 0);
    assert_true(m.size == UINT64_MAX);
    assert_int_equal(mail("FROM:<a@b> SIZE=00000000000000012345", &m), 0);
    assert_true(m.size == 12345);
    assert_int_equal(mail("FROM:<a@b> SIZE=18446744073709551616", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> SIZE=99999999999999999999", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> SIZE=000000000000000000001", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> SIZE=", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> SIZE", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> SIZE=12a", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> SIZE=-1", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> SIZE=1 SIZE=2", &m), TERN_SMTP_EPARAM);
    assert_int_equal(mail("FROM:<a@b> size=1 SIZE=1", &m), TERN_SMTP_EPARAM);

    assert_int_equal(mail("FROM:<a@b> BODY=7BIT", &m), 0);
    assert_int_equal(m.body, TERN_BODY_7BIT);
    assert_int_equal(mail("FROM:<a@b> BODY=8bitmime", &m), 0);
    assert_int_equal(m.body, TERN_BODY_8BITMIME);
    assert_int_equal(mail("FROM:<a@b> body=BINARYMIME", &m), 0);
    assert_int_equal(m.body, TERN_BODY_BINARYMIME);
    assert_int_equal(mail("FROM:<a@b> BODY=9BIT", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> BODY", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> BODY=7BIT BODY=7BIT", &m), TERN_SMTP_EPARAM);

    assert_int_equal(mail("FROM:<a@b> SMTPUTF8", &m), 0);
    assert_true(m.smtputf8);
    assert_int_equal(mail("FROM:<a@b> smtputf8", &m), 0);
    assert_int_equal(mail("FROM:<a@b> SMTPUTF8=yes", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> SMTPUTF8 SMTPUTF8", &m), TERN_SMTP_EPARAM);

    /* RFC 8689 REQUIRETLS: a bare keyword, once. */
    assert_int_equal(mail("FROM:<a@b> SMTPUTF8", &m), 0);
    assert_false(m.requiretls);
    assert_int_equal(mail("FROM:<a@b> REQUIRETLS", &m), 0);
    assert_true(m.requiretls);
    assert_int_equal(mail("FROM:<> SIZE=10 requiretls BODY=8BITMIME", &m), 0);
    assert_true(m.requiretls);
    assert_int_equal(m.size, 10);
    assert_int_equal(mail("FROM:<a@b> REQUIRETLS=yes", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> REQUIRETLS REQUIRETLS", &m), TERN_SMTP_EPARAM);
    assert_int_equal(mail("FROM:<a@b> REQUIRETLSX", &m), TERN_SMTP_EPARAM);

    assert_int_equal(mail("FROM:<a@b> RET=FULL", &m), 0);
    assert_int_equal(m.ret, 1);
    assert_int_equal(mail("FROM:<a@b> ret=hdrs", &m), 0);
    assert_int_equal(m.ret, 2);
    assert_int_equal(mail("FROM:<a@b> RET=ALL", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> RET", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> RET=FULL RET=HDRS", &m), TERN_SMTP_EPARAM);

    assert_int_equal(mail("FROM:<a@b> ENVID=QQ314159+2B+3D", &m), 0);
    assert_slice(m.envid, "QQ314159+2B+3D");
    assert_int_equal(mail("FROM:<a@b> ENVID=a+2b", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> ENVID=a+2", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> ENVID=a+", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> ENVID=a+ZZ", &m), TERN_SMTP_ESYNTAX);
    /* +00 would decode to NUL: refused here as the decoder refuses it. */
    assert_int_equal(mail("FROM:<a@b> ENVID=a+00b", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> AUTH=+00", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> ENVID=", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> ENVID=x ENVID=y", &m), TERN_SMTP_EPARAM);
    char buf[300];
    snprintf(buf, sizeof(buf), "FROM:<a@b> ENVID=%0100d", 7);
    assert_int_equal(mail(buf, &m), 0);
    assert_int_equal(m.envid.len, 100);
    snprintf(buf, sizeof(buf), "FROM:<a@b> ENVID=%0101d", 7);
    assert_int_equal(mail(buf, &m), TERN_SMTP_ESYNTAX);

    assert_int_equal(mail("FROM:<a@b> AUTH=<>", &m), 0);
    assert_slice(m.auth, "<>");
    assert_int_equal(mail("FROM:<a@b> AUTH=user+40example.com", &m), 0);
    assert_slice(m.auth, "user+40example.com");
    assert_int_equal(mail("FROM:<a@b> AUTH=a+4", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> AUTH=a=b", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> AUTH", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> AUTH=<> AUTH=<>", &m), TERN_SMTP_EPARAM);

    assert_int_equal(mail("FROM:<a@b> FOO=bar", &m), TERN_SMTP_EPARAM);
    assert_int_equal(mail("FROM:<a@b> NOTIFY=NEVER", &m), TERN_SMTP_EPARAM);
    assert_int_equal(mail("FROM:<a@b> X-FOO", &m), TERN_SMTP_EPARAM);
    assert_int_equal(mail("FROM:<a@b> -X=1", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> SIZE:1", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> SIZE = 1", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> =1", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> SIZE=1\tBODY=7BIT", &m), TERN_SMTP_ESYNTAX);
    assert_int_equal(mail("FROM:<a@b> SIZE=1 SMTPUTF8 BODY=\xC3\xA9", &m), TERN_SMTP_ESYNTAX);

    /* Everything at once, several spaces between. */
    assert_int_equal(mail("FROM:<> SIZE=1000  BODY=8BITMIME SMTPUTF8   RET=HDRS "
                          "ENVID=id+2B1 AUTH=<>  ",
                          &m),
                     0);
    assert_slice(m.path, "");
    assert_true(m.has_size && m.size == 1000);
    assert_int_equal(m.body, TERN_BODY_8BITMIME);
    assert_true(m.smtputf8);
    assert_int_equal(m.ret, 2);
    assert_slice(m.envid, "id+2B1");
    assert_slice(m.auth, "<>");
}

static void test_mail_utf8(void **state)
{
    tern_smtp_mail_args m;
    /* "δοκιμή@παράδειγμα.δοκιμή" */
    const char *greek = "FROM:<\xCE\xB4\xCE\xBF\xCE\xBA\xCE\xB9\xCE\xBC\xCE\xAE@"
                        "\xCF\x80\xCE\xB1\xCF\x81\xCE\xAC\xCE\xB4\xCE\xB5\xCE\xB9\xCE\xB3\xCE\xBC"
                        "\xCE\xB1.\xCE\xB4\xCE\xBF\xCE\xBA\xCE\xB9\xCE\xBC\xCE\xAE>";
    char buf[300];
    snprintf(buf, sizeof(buf), "%s SMTPUTF8", greek);
    assert_int_equal(mail(buf, &m), 0);
    assert_true(m.smtputf8);
    assert_int_equal(mail(greek, &m), TERN_SMTP_EUTF8);
    snprintf(buf, sizeof(buf), "%s SIZE=10", greek);
    assert_int_equal(mail(buf, &m), TERN_SMTP_EUTF8);

    assert_int_equal(mail("FROM:<\"\xE2\x82\xAC uro\"@b.example> SMTPUTF8", &m), 0);
    assert_int_equal(mail("FROM:<\"\xE2\x82\xAC uro\"@b.example>", &m), TERN_SMTP_EUTF8);
    assert_int_equal(mail("FROM:<a@b.\xF0\x9F\x98\x80" "x> SMTPUTF8", &m), 0);
    assert_int_equal(mail("FROM:<@r\xC3\xA9.example:a@b> SMTPUTF8", &m), 0);
    assert_int_equal(mail("FROM:<@r\xC3\xA9.example:a@b>", &m), TERN_SMTP_EUTF8);

    static const char *const invalid[] = {
        "FROM:<\xC3@b> SMTPUTF8",                 /* truncated before '@' */
        "FROM:<\xC0\xAF@b> SMTPUTF8",             /* overlong '/' */
        "FROM:<\xE0\x80\xAF@b> SMTPUTF8",         /* overlong 3-byte */
        "FROM:<\xED\xA0\x80@b> SMTPUTF8",         /* surrogate */
        "FROM:<\xF4\x90\x80\x80@b> SMTPUTF8",     /* above U+10FFFF */
        "FROM:<\xF8\x88\x80\x80\x80@b> SMTPUTF8", /* 5-byte form */
        "FROM:<\x80@b> SMTPUTF8",                 /* lone continuation */
        "FROM:<a@b\xE2\x82> SMTPUTF8",            /* truncated before '>' */
        "FROM:<\"\xFF\"@b> SMTPUTF8",
    };
    for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        int rc = mail(invalid[i], &m);
        if (rc != TERN_SMTP_EPATH)
            fail_msg("%zu: got %d", i, rc);
        /* Without SMTPUTF8 any non-ASCII is refused as such. */
        size_t n = strlen(invalid[i]) - strlen(" SMTPUTF8");
        assert_int_equal(tern_smtp_parse_mail(invalid[i], n, &m), TERN_SMTP_EUTF8);
    }
    /* A bad continuation that is itself a forbidden ASCII byte breaks the
     * syntax first. */
    assert_int_equal(mail("FROM:<\xC3\x28@b> SMTPUTF8", &m), TERN_SMTP_EPATH);
    assert_int_equal(mail("FROM:<\xC3\x28@b>", &m), TERN_SMTP_EPATH);
    /* Truncated sequence at the very end of the args. */
    assert_int_equal(tern_smtp_parse_mail("FROM:<a@b\xE2", 10, &m), TERN_SMTP_EPATH);
}

/* ---- RCPT ------------------------------------------------------------- */

static int rcpt(const char *s, bool utf8, tern_smtp_rcpt_args *r)
{
    return tern_smtp_parse_rcpt(s, strlen(s), utf8, r);
}

static void test_rcpt(void **state)
{
    tern_smtp_rcpt_args r;
    assert_int_equal(rcpt("TO:<a@b.example>", false, &r), 0);
    assert_slice(r.path, "a@b.example");
    assert_int_equal(r.notify, 0);
    assert_int_equal(r.orcpt.len, 0);
    assert_int_equal(rcpt("to: <a@b.example>  ", false, &r), 0);
    assert_slice(r.path, "a@b.example");
    assert_int_equal(rcpt("TO:<@relay.example:a@b.example>", false, &r), 0);
    assert_slice(r.path, "a@b.example");
    assert_int_equal(rcpt("TO:<a@[IPv6:2001:db8::1]>", false, &r), 0);

    assert_int_equal(rcpt("TO:<postmaster>", false, &r), 0);
    assert_slice(r.path, "postmaster");
    assert_int_equal(rcpt("TO:<PostMaster>", false, &r), 0);
    assert_slice(r.path, "PostMaster");
    assert_int_equal(rcpt("TO:<postmaster@b.example>", false, &r), 0);
    assert_slice(r.path, "postmaster@b.example");
    assert_int_equal(rcpt("TO:<postmaster> NOTIFY=NEVER", false, &r), 0);
    assert_int_equal(rcpt("TO:<postmasterx>", false, &r), TERN_SMTP_EPATH);
    assert_int_equal(rcpt("TO:<postmaste>", false, &r), TERN_SMTP_EPATH);
    assert_int_equal(rcpt("TO:<@r.example:postmaster>", false, &r), TERN_SMTP_EPATH);
    assert_int_equal(rcpt("TO:<\"postmaster\">", false, &r), TERN_SMTP_EPATH);
    assert_int_equal(rcpt("TO:<postmaster", false, &r), TERN_SMTP_EPATH);

    assert_int_equal(rcpt("TO:<>", false, &r), TERN_SMTP_EPATH);
    assert_int_equal(rcpt("TO:a@b.example", false, &r), TERN_SMTP_ESYNTAX);
    assert_int_equal(rcpt("FROM:<a@b.example>", false, &r), TERN_SMTP_ESYNTAX);
    assert_int_equal(rcpt("TO:", false, &r), TERN_SMTP_ESYNTAX);
    assert_int_equal(rcpt("", false, &r), TERN_SMTP_ESYNTAX);
    assert_int_equal(rcpt("TO:<a@b.example>junk", false, &r), TERN_SMTP_ESYNTAX);
    assert_int_equal(rcpt("TO:<a@b..example>", false, &r), TERN_SMTP_EPATH);

    /* UTF-8 paths follow the transaction's SMTPUTF8 flag. */
    assert_int_equal(rcpt("TO:<\xC3\xA9t\xC3\xA9@b.example>", true, &r), 0);
    assert_int_equal(rcpt("TO:<\xC3\xA9t\xC3\xA9@b.example>", false, &r), TERN_SMTP_EUTF8);
    assert_int_equal(rcpt("TO:<a@\xC3\xA9t\xC3\xA9.example>", true, &r), 0);
    assert_int_equal(rcpt("TO:<a@\xC3\xA9t\xC3\xA9.example>", false, &r), TERN_SMTP_EUTF8);
    assert_int_equal(rcpt("TO:<\xC3@b.example>", true, &r), TERN_SMTP_EPATH);
    assert_int_equal(rcpt("TO:<\xC3@b.example>", false, &r), TERN_SMTP_EUTF8);
    assert_int_equal(rcpt("TO:<a@-\xC3\xA9.example>", true, &r), TERN_SMTP_EPATH);
}

static void test_rcpt_params(void **state)
{
    tern_smtp_rcpt_args r;
    assert_int_equal(rcpt("TO:<a@b> NOTIFY=NEVER", false, &r), 0);
    assert_int_equal(r.notify, TERN_NOTIFY_NEVER);
    assert_int_equal(rcpt("TO:<a@b> NOTIFY=SUCCESS", false, &r), 0);
    assert_int_equal(r.notify, TERN_NOTIFY_SUCCESS);
    assert_int_equal(rcpt("TO:<a@b> NOTIFY=SUCCESS,FAILURE,DELAY", false, &r), 0);
    assert_int_equal(r.notify, TERN_NOTIFY_SUCCESS | TERN_NOTIFY_FAILURE | TERN_NOTIFY_DELAY);
    assert_int_equal(rcpt("TO:<a@b> notify=delay,failure", false, &r), 0);
    assert_int_equal(r.notify, TERN_NOTIFY_FAILURE | TERN_NOTIFY_DELAY);
    assert_int_equal(rcpt("TO:<a@b> NOTIFY=never", false, &r), 0);
    assert_int_equal(r.notify, TERN_NOTIFY_NEVER);
    assert_int_equal(rcpt("TO:<a@b> NOTIFY=NEVER,SUCCESS", false, &r), TERN_SMTP_ESYNTAX);
    assert_int_equal(rcpt("TO:<a@b> NOTIFY=SUCCESS,NEVER", false, &r), TERN_SMTP_ESYNTAX);
    assert_int_equal(rcpt("TO:<a@b> NOTIFY=SUCCESS,", false, &r), TERN_SMTP_ESYNTAX);
    assert_int_equal(rcpt("TO:<a@b> NOTIFY=,SUCCESS", false, &r), TERN_SMTP_ESYNTAX);
    assert_int_equal(rcpt("TO:<a@b> NOTIFY=SUCCESS,,DELAY", false, &r), TERN_SMTP_ESYNTAX);
    assert_int_equal(rcpt("TO:<a@b> NOTIFY=SOMETIMES", false, &r), TERN_SMTP_ESYNTAX);
    assert_int_equal(rcpt("TO:<a@b> NOTIFY=", false, &r), TERN_SMTP_ESYNTAX);
    assert_int_equal(rcpt("TO:<a@b> NOTIFY", false, &r), TERN_SMTP_ESYNTAX);
    assert_int_equal(rcpt("TO:<a@b> NOTIFY=NEVER NOTIFY=NEVER", false, &r), TERN_SMTP_EPARAM);

    assert_int_equal(rcpt("TO:<a@b> ORCPT=rfc822;a+40b.example", false, &r), 0);
    assert_slice(r.orcpt, "rfc822;a+40b.example");
    assert_int_equal(rcpt("TO:<a@b> NOTIFY=FAILURE ORCPT=rfc822;x@y", false, &r), 0);
    assert_int_equal(r.notify, TERN_NOTIFY_FAILURE);
    assert_slice(r.orcpt, "rfc822;x@y");
    assert_int_equal(rcpt("TO:<a@b> ORCPT=rfc822", false, &r), TERN_SMTP_ESYNTAX);
    assert_int_equal(rcpt("TO:<a@b> ORCPT=;a@b", false, &r), TERN_SMTP_ESYNTAX);
    assert_int_equal(rcpt("TO:<a@b> ORCPT=rfc822;", false, &r), TERN_SMTP_ESYNTAX);
    assert_int_equal(rcpt("TO:<a@b> ORCPT=rfc822;a+4", false, &r), TERN_SMTP_ESYNTAX);
    assert_int_equal(rcpt("TO:<a@b> ORCPT=rfc822;a+4g", false, &r), TERN_SMTP_ESYNTAX);
    assert_int_equal(rcpt("TO:<a@b> ORCPT=rfc(822;a", false, &r), TERN_SMTP_ESYNTAX);
    assert_int_equal(rcpt("TO:<a@b> ORCPT", false, &r), TERN_SMTP_ESYNTAX);
    assert_int_equal(rcpt("TO:<a@b> ORCPT=a;b ORCPT=a;b", false, &r), TERN_SMTP_EPARAM);
    assert_int_equal(rcpt("TO:<a@b> ORCPT=utf-8;\xC3\xA9@b", true, &r), 0);
    assert_int_equal(rcpt("TO:<a@b> ORCPT=utf-8;\xC3\xA9@b", false, &r), TERN_SMTP_EUTF8);
    assert_int_equal(rcpt("TO:<a@b> ORCPT=utf-8;\xC3@b", true, &r), TERN_SMTP_ESYNTAX);

    char buf[700];
    int n = snprintf(buf, sizeof(buf), "TO:<a@b> ORCPT=rfc822;");
    memset(buf + n, 'x', 493);
    buf[n + 493] = 0; /* value: 7 + 493 = 500 */
    assert_int_equal(rcpt(buf, false, &r), 0);
    assert_int_equal(r.orcpt.len, 500);
    buf[n + 493] = 'x';
    buf[n + 494] = 0;
    assert_int_equal(rcpt(buf, false, &r), TERN_SMTP_ESYNTAX);

    assert_int_equal(rcpt("TO:<a@b> SIZE=1", false, &r), TERN_SMTP_EPARAM);
    assert_int_equal(rcpt("TO:<a@b> FOO", false, &r), TERN_SMTP_EPARAM);
    assert_int_equal(rcpt("TO:<a@b> -X", false, &r), TERN_SMTP_ESYNTAX);
}

/* ---- HELO, BDAT, xtext, mailbox_domain -------------------------------- */

static int helo(const char *s, tern_smtp_slice *d)
{
    return tern_smtp_parse_helo(s, strlen(s), d);
}

static void test_helo(void **state)
{
    tern_smtp_slice d;
    static const struct {
        const char *in, *want;
    } ok[] = {
        {"client.example", "client.example"},
        {"localhost", "localhost"},
        {"  mx-1.Example.ORG  ", "mx-1.Example.ORG"},
        {"[192.0.2.1]", "[192.0.2.1]"},
        {"[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]"},
        {"192.0.2.1", "192.0.2.1"},
        {"DESKTOP_4F2A", "DESKTOP_4F2A"},
        {"_dmarc.example", "_dmarc.example"},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        if (helo(ok[i].in, &d) != 0)
            fail_msg("HELO %s", ok[i].in);
        assert_slice(d, ok[i].want);
    }
    static const char *const bad[] = {
        "",          "   ",         "a b",         "-a.example", "a-.example", "a..example",
        "a.example.", ".a.example", "[192.0.2]",   "[1.2.3.4",   "[IPv6:1::2::3]",
        "a@b",       "a/b",         "\xC3\xA9.example", "[192.0.2.1] x",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (helo(bad[i], &d) != TERN_SMTP_ESYNTAX)
            fail_msg("HELO '%s' accepted", bad[i]);

    char buf[400];
    memset(buf, 0, sizeof(buf));
    for (int i = 0; i < 4; i++) {
        memset(buf + i * 64, 'a', 63);
        if (i < 3)
            buf[i * 64 + 63] = '.';
    }
    assert_int_equal(strlen(buf), 255);
    assert_int_equal(helo(buf, &d), 0);
    buf[255] = 'a'; /* 64-char last label */
    assert_int_equal(helo(buf, &d), TERN_SMTP_ESYNTAX);
    buf[255] = '.';
    buf[256] = 'a'; /* 257 chars */
    assert_int_equal(helo(buf, &d), TERN_SMTP_ESYNTAX);
}

static int bdat(const char *s, uint64_t *n, bool *last)
{
    return tern_smtp_parse_bdat(s, strlen(s), n, last);
}

static void test_bdat(void **state)
{
    uint64_t n = 99;
    bool last = true;
    assert_int_equal(bdat("100", &n, &last), 0);
    assert_true(n == 100 && !last);
    assert_int_equal(bdat("100 LAST", &n, &last), 0);
    assert_true(n == 100 && last);
    assert_int_equal(bdat("0 last", &n, &last), 0);
    assert_true(n == 0 && last);
    assert_int_equal(bdat("7  LaSt  ", &n, &last), 0);
    assert_true(n == 7 && last);
    assert_int_equal(bdat("18446744073709551615", &n, &last), 0);
    assert_true(n == UINT64_MAX);
    static const char *const bad[] = {
        "", "LAST", "18446744073709551616", "100000000000000000000000", "-1", "+1", "1x",
        "1 LASTX", "1 LAST x", "1 FIRST", "1,LAST", "1\tLAST", "0x10",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (bdat(bad[i], &n, &last) != TERN_SMTP_ESYNTAX)
            fail_msg("BDAT '%s' accepted", bad[i]);
}

static void test_auth(void **state)
{
    tern_smtp_slice mech, ir;
    assert_int_equal(tern_smtp_parse_auth(S("PLAIN"), &mech, &ir), 0);
    assert_slice(mech, "PLAIN");
    assert_int_equal(ir.len, 0);
    assert_int_equal(tern_smtp_parse_auth(S("PLAIN AGFsaWNlAHNlY3JldA=="), &mech, &ir), 0);
    assert_slice(mech, "PLAIN");
    assert_slice(ir, "AGFsaWNlAHNlY3JldA==");
    assert_int_equal(tern_smtp_parse_auth(S("scram-sha-256  =  "), &mech, &ir), 0);
    assert_slice(mech, "scram-sha-256");
    assert_slice(ir, "=");
    assert_int_equal(tern_smtp_parse_auth(S("X_OAUTH2 dXNlcj1h+/8="), &mech, &ir), 0);
    static const char *const bad[] = {
        "", "   ", "PL@IN", "PLAIN\tx", "ABCDEFGHIJKLMNOPQRSTU", "PLAIN a b", "PLAIN ===",
        "PLAIN ab=c", "PLAIN a===", "PLAIN ==", "PLAIN *",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (tern_smtp_parse_auth(bad[i], strlen(bad[i]), &mech, &ir) != TERN_SMTP_ESYNTAX)
            fail_msg("AUTH '%s' accepted", bad[i]);
    assert_int_equal(tern_smtp_parse_auth(S("ABCDEFGHIJKLMNOPQRST"), &mech, &ir), 0);
}

static void test_xtext(void **state)
{
    char out[32];
    assert_int_equal(tern_smtp_xtext_decode(S("abc"), out, sizeof(out)), 3);
    assert_string_equal(out, "abc");
    assert_int_equal(tern_smtp_xtext_decode(S("a+2Bb+3D"), out, sizeof(out)), 4);
    assert_string_equal(out, "a+b=");
    assert_int_equal(tern_smtp_xtext_decode(S("+7F+20"), out, sizeof(out)), 2);
    assert_string_equal(out, "\x7f ");
    assert_int_equal(tern_smtp_xtext_decode(S("+C3+A9"), out, sizeof(out)), 2);
    assert_int_equal(tern_smtp_xtext_decode(S(""), out, sizeof(out)), 0);
    assert_string_equal(out, "");
    assert_int_equal(tern_smtp_xtext_decode(S("!~<>\\\""), out, sizeof(out)), 6);

    static const char *const bad[] = {"a+2b", "a+", "a+2", "+G0", "a=b", "a b", "+00",
                                      "\xC3\xA9", "a\tb", "a\x7f"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (tern_smtp_xtext_decode(bad[i], strlen(bad[i]), out, sizeof(out)) != -1)
            fail_msg("xtext '%s' accepted", bad[i]);

    /* Output bounds: room for exactly the text and its NUL. */
    memset(out, 'Z', sizeof(out));
    assert_int_equal(tern_smtp_xtext_decode(S("abcd"), out, 5), 4);
    assert_string_equal(out, "abcd");
    memset(out, 'Z', sizeof(out));
    assert_int_equal(tern_smtp_xtext_decode(S("abcd"), out, 4), -1);
    assert_int_equal(out[4], 'Z');
    assert_int_equal(tern_smtp_xtext_decode(S("a+2B"), out, 2), -1);
    assert_int_equal(tern_smtp_xtext_decode(S("a+2B"), out, 3), 2);
    assert_int_equal(tern_smtp_xtext_decode(S("a"), out, 0), -1);
    assert_int_equal(tern_smtp_xtext_decode(S(""), out, 1), 0);
}

static void test_mailbox_domain(void **state)
{
    tern_smtp_slice d;
    assert_int_equal(tern_smtp_mailbox_domain(S("a@b.example"), &d), 0);
    assert_slice(d, "b.example");
    assert_int_equal(tern_smtp_mailbox_domain(S("\"a@x\"@b.example"), &d), 0);
    assert_slice(d, "b.example");
    assert_int_equal(tern_smtp_mailbox_domain(S("\"a\\\"@x\"@b"), &d), 0);
    assert_slice(d, "b");
    assert_int_equal(tern_smtp_mailbox_domain(S("a@[192.0.2.1]"), &d), 0);
    assert_slice(d, "[192.0.2.1]");
    assert_int_equal(tern_smtp_mailbox_domain(S("a@[IPv6:::1]"), &d), 0);
    assert_slice(d, "[IPv6:::1]");
    assert_int_equal(tern_smtp_mailbox_domain(S("postmaster"), &d), -1);
    assert_int_equal(tern_smtp_mailbox_domain(S("a@"), &d), -1);
    assert_int_equal(tern_smtp_mailbox_domain(S("@b"), &d), -1);
    assert_int_equal(tern_smtp_mailbox_domain(S(""), &d), -1);
    assert_int_equal(tern_smtp_mailbox_domain(S("\"a@b\""), &d), -1);

    /* What parse_rcpt returns splits as expected. */
    tern_smtp_rcpt_args r;
    assert_int_equal(rcpt("TO:<\"x@y\"@dom.example>", false, &r), 0);
    assert_int_equal(tern_smtp_mailbox_domain(r.path.p, r.path.len, &d), 0);
    assert_slice(d, "dom.example");
}

/* ---- DATA harness ----------------------------------------------------- */

typedef struct {
    uint8_t out[8192];
    size_t out_len;
    size_t consumed; /* bytes of input consumed in total */
    bool ended;
    unsigned errors;
    uint64_t out_bytes;
} data_run;

/* Feeds `in` by the strategy in f, with an output buffer of `cap_per`
 * bytes per feed (0: exactly 2*chunk+3, the documented minimum). */
static void run_data_with(const char *in, size_t len, size_t max_line, bool normalize,
                          feeder *f, size_t cap_per, data_run *res)
{
    tern_smtp_data_reader r;
    tern_smtp_data_init(&r, max_line, normalize);
    memset(res, 0, sizeof(*res));
    size_t off = 0;
    int stuck = 0;
    while (off < len && !res->ended) {
        size_t chunk = next_chunk(f, off, len - off);
        size_t used = 0;
        while (used < chunk && !res->ended) {
            uint8_t out[20000];
            size_t cap = cap_per ? cap_per : 2 * (chunk - used) + 3;
            assert_true(cap + 16 <= sizeof(out));
            memset(out, 0xA5, cap + 16);
            size_t olen = 12345;
            tern_smtp_data_status st;
            size_t c = tern_smtp_data_feed(&r, (const uint8_t *)in + off + used, chunk - used, out,
                                           cap, &olen, &st);
            assert_true(c <= chunk - used);
            assert_true(olen <= cap);
            for (size_t k = cap; k < cap + 16; k++)
                assert_int_equal(out[k], 0xA5);
            assert_true(res->out_len + olen <= sizeof(res->out));
            memcpy(res->out + res->out_len, out, olen);
            res->out_len += olen;
            used += c;
            if (st == TERN_SMTP_DATA_END)
                res->ended = true;
            else if (cap_per == 0)
                assert_int_equal(used, chunk); /* with enough room, all is taken */
            if (c == 0 && st != TERN_SMTP_DATA_END)
                assert_true(++stuck < 3);
            else
                stuck = 0;
        }
        off += used;
    }
    res->consumed = off;
    res->errors = r.errors;
    res->out_bytes = r.out_bytes;
    assert_true(res->out_bytes == res->out_len);
}

static void assert_same_data(const data_run *a, const data_run *b)
{
    assert_int_equal(a->ended, b->ended);
    assert_int_equal(a->consumed, b->consumed);
    assert_int_equal(a->errors, b->errors);
    assert_int_equal(a->out_len, b->out_len);
    assert_memory_equal(a->out, b->out, a->out_len);
}

static void run_data(const char *in, size_t len, size_t max_line, bool normalize, data_run *res)
{
    static data_run other;
    feeder f = {FEED_WHOLE, 0, 0};
    run_data_with(in, len, max_line, normalize, &f, 0, res);
    f.mode = FEED_BYTE;
    run_data_with(in, len, max_line, normalize, &f, 0, &other);
    assert_same_data(res, &other);
    for (uint32_t seed = 1; seed <= 5; seed++) {
        f.mode = FEED_RANDOM;
        f.seed = seed;
        run_data_with(in, len, max_line, normalize, &f, 0, &other);
        assert_same_data(res, &other);
    }
    for (size_t k = 1; k < len; k++) {
        f.mode = FEED_SPLIT;
        f.split = k;
        run_data_with(in, len, max_line, normalize, &f, 0, &other);
        assert_same_data(res, &other);
    }
    /* Output buffers far below the documented minimum: slower, same result. */
    for (size_t cap = 4; cap <= 6; cap++) {
        f.mode = FEED_WHOLE;
        run_data_with(in, len, max_line, normalize, &f, cap, &other);
        assert_same_data(res, &other);
    }
}

static void assert_data(const data_run *res, bool ended, size_t consumed, unsigned errors,
                        const char *out, size_t out_len)
{
    assert_int_equal(res->ended, ended);
    assert_int_equal(res->consumed, consumed);
    assert_int_equal(res->errors, errors);
    assert_int_equal(res->out_len, out_len);
    assert_memory_equal(res->out, out, out_len);
}

/* No bare CR or LF anywhere: what normalize mode promises. */
static void assert_only_crlf(const data_run *res)
{
    for (size_t i = 0; i < res->out_len; i++) {
        if (res->out[i] == '\r')
            assert_true(i + 1 < res->out_len && res->out[i + 1] == '\n');
        if (res->out[i] == '\n')
            assert_true(i > 0 && res->out[i - 1] == '\r');
    }
}

#define DATA_IS(res, ended, consumed, errors, lit) \
    assert_data(res, ended, consumed, errors, lit, sizeof(lit) - 1)

/* ---- DATA tests -------------------------------------------------------- */

static void test_data_basic(void **state)
{
    data_run res;
    for (int norm = 0; norm < 2; norm++) {
        run_data(S("Subject: x\r\n\r\nbody\r\n.\r\n"), 1000, norm, &res);
        DATA_IS(&res, true, 23, 0, "Subject: x\r\n\r\nbody\r\n");

        /* Bytes after the end are left for the command reader. */
        run_data(S("a\r\n.\r\nQUIT\r\n"), 1000, norm, &res);
        DATA_IS(&res, true, 6, 0, "a\r\n");

        /* The first line counts as following a CRLF. */
        run_data(S(".\r\nQUIT\r\n"), 1000, norm, &res);
        DATA_IS(&res, true, 3, 0, "");

        /* Not ended yet. */
        run_data(S("a\r\nb\r\n."), 1000, norm, &res);
        DATA_IS(&res, false, 7, 0, "a\r\nb\r\n");
        run_data(S("a\r\nb\r\n.\r"), 1000, norm, &res);
        DATA_IS(&res, false, 8, 0, "a\r\nb\r\n");
        run_data(S(""), 1000, norm, &res);
        DATA_IS(&res, false, 0, 0, "");
    }
}

static void test_data_dot_stuffing(void **state)
{
    data_run res;
    for (int norm = 0; norm < 2; norm++) {
        run_data(S("..\r\n.\r\n"), 1000, norm, &res);
        DATA_IS(&res, true, 7, 0, ".\r\n");
        run_data(S("..hidden\r\n...\r\n.x\r\nmid.dle\r\n .\r\n.\r\n"), 1000, norm, &res);
        DATA_IS(&res, true, 35, 0, ".hidden\r\n..\r\nx\r\nmid.dle\r\n .\r\n");
        run_data(S("a\r\n..\r\n.\r\n"), 1000, norm, &res);
        DATA_IS(&res, true, 10, 0, "a\r\n.\r\n");
        /* ".." then CRLF is a stuffed ".", never the end. */
        run_data(S("a\r\n..\r\nb\r\n.\r\n"), 1000, norm, &res);
        DATA_IS(&res, true, 13, 0, "a\r\n.\r\nb\r\n");
    }
}

/* The SMTP smuggling shapes: none of them may end the data. Each is put
 * between "a" and a smuggled command, and the real end comes last. */
static void test_data_smuggling(void **state)
{
    static const struct {
        const char *seq;
        unsigned reject_errors;  /* latched in reject mode */
        const char *reject_out;  /* expected output for the seq, reject mode */
        const char *norm_out;    /* normalize mode */
    } vec[] = {
        {"\n.\n", TERN_SMTP_DATA_ERR_BARE_LF, "\n.\n", "\r\n.\r\n"},
        {"\r.\r", TERN_SMTP_DATA_ERR_BARE_CR, "\r.\r", "\r\n.\r\n"},
        {"\n.\r\n", TERN_SMTP_DATA_ERR_BARE_LF, "\n.\r\n", "\r\n.\r\n"},
        {"\r.\r\n", TERN_SMTP_DATA_ERR_BARE_CR, "\r.\r\n", "\r\n.\r\n"},
        {"\r\n.\n", TERN_SMTP_DATA_ERR_BARE_LF, "\r\n.\n", "\r\n.\r\n"},
        {"\r\n.\r", TERN_SMTP_DATA_ERR_BARE_CR, "\r\n.\r", "\r\n.\r\n"},
        {"\n.\r", TERN_SMTP_DATA_ERR_BARE_LF | TERN_SMTP_DATA_ERR_BARE_CR, "\n.\r",
         "\r\n.\r\n"},
        {"\r.\n", TERN_SMTP_DATA_ERR_BARE_CR | TERN_SMTP_DATA_ERR_BARE_LF, "\r.\n",
         "\r\n.\r\n"},
        {"\r\n.\r\r\n", TERN_SMTP_DATA_ERR_BARE_CR, "\r\n.\r\r\n", "\r\n.\r\n\r\n"},
        {"\r\n\n.\r\n", TERN_SMTP_DATA_ERR_BARE_LF, "\r\n\n.\r\n", "\r\n\r\n.\r\n"},
        {"\r\n\r.\r\n", TERN_SMTP_DATA_ERR_BARE_CR, "\r\n\r.\r\n", "\r\n\r\n.\r\n"},
        {"\n\n.\n\n", TERN_SMTP_DATA_ERR_BARE_LF, "\n\n.\n\n", "\r\n\r\n.\r\n\r\n"},
        {"\r\n\0.\r\n", TERN_SMTP_DATA_ERR_NUL, "\r\n\0.\r\n", "\r\n\0.\r\n"},
        {"\r\n.\0\r\n", TERN_SMTP_DATA_ERR_NUL, "\r\n\0\r\n", "\r\n\0\r\n"},
        {"\r\n .\r\n", 0, "\r\n .\r\n", "\r\n .\r\n"},
        {"\r\n.\r\n", 0, NULL, NULL}, /* control: the real thing ends */
    };
    static const char smuggled[] = "MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\n"
                                   "From: ceo@x\r\n\r\nsend money\r\n";
    for (size_t i = 0; i < sizeof(vec) / sizeof(vec[0]); i++) {
        /* Sequences may hold a NUL: their lengths are given by hand. */
        static const size_t lens[] = {3, 3, 4, 4, 4, 4, 3, 3, 6, 6, 6, 5, 6, 6, 6, 5};
        const char *seq = vec[i].seq;
        size_t sl = lens[i];
        char in[512];
        size_t n = 0;
        in[n++] = 'a';
        memcpy(in + n, seq, sl);
        n += sl;
        memcpy(in + n, smuggled, sizeof(smuggled) - 1);
        n += sizeof(smuggled) - 1;
        memcpy(in + n, "\r\n.\r\n", 5);
        n += 5;

        for (int norm = 0; norm < 2; norm++) {
            data_run res;
            run_data(in, n, 1000, norm, &res);
            assert_true(res.ended);
            if (vec[i].reject_out == NULL) {
                /* Control: ends right after the sequence. */
                assert_int_equal(res.consumed, 1 + sl);
                assert_int_equal(res.out_len, 3);
                continue;
            }
            if (res.consumed != n)
                fail_msg("vector %zu norm %d ended early at %zu of %zu", i, norm, res.consumed,
                         n);
            const char *want = norm ? vec[i].norm_out : vec[i].reject_out;
            /* Expected output lengths, by hand for the same reason. */
            static const size_t rl[] = {3, 3, 4, 4, 4, 4, 3, 3, 6, 6, 6, 5, 6, 5, 6, 0};
            static const size_t nl[] = {5, 5, 5, 5, 5, 5, 5, 5, 7, 7, 7, 9, 6, 5, 6, 0};
            size_t wl = norm ? nl[i] : rl[i];
            assert_int_equal(res.out[0], 'a');
            assert_memory_equal(res.out + 1, want, wl);
            assert_memory_equal(res.out + 1 + wl, smuggled, sizeof(smuggled) - 1);
            assert_int_equal(res.out_len, 1 + wl + sizeof(smuggled) - 1 + 2);
            unsigned want_err = vec[i].reject_errors;
            if (norm)
                want_err &= TERN_SMTP_DATA_ERR_NUL;
            if (res.errors != want_err)
                fail_msg("vector %zu norm %d errors %x want %x", i, norm, res.errors, want_err);
            if (norm)
                assert_only_crlf(&res);
        }
    }
}

static void test_data_crlf_shapes(void **state)
{
    data_run res;
    /* A bare CR before a real CRLF: the CRLF still counts. */
    run_data(S("a\r\r\n.\r\n"), 1000, false, &res);
    DATA_IS(&res, true, 7, TERN_SMTP_DATA_ERR_BARE_CR, "a\r\r\n");
    run_data(S("a\r\r\n.\r\n"), 1000, true, &res);
    DATA_IS(&res, true, 7, 0, "a\r\n\r\n");

    run_data(S("a\nb\rc\r\n.\r\n"), 1000, false, &res);
    DATA_IS(&res, true, 10, TERN_SMTP_DATA_ERR_BARE_LF | TERN_SMTP_DATA_ERR_BARE_CR,
            "a\nb\rc\r\n");
    run_data(S("a\nb\rc\r\n.\r\n"), 1000, true, &res);
    DATA_IS(&res, true, 10, 0, "a\r\nb\r\nc\r\n");

    run_data(S("\r\r\r\n.\r\n"), 1000, true, &res);
    DATA_IS(&res, true, 7, 0, "\r\n\r\n\r\n");

    /* A dot after a bare line break is not stuffing: kept as is. */
    run_data(S("a\n..\r\n.\r\n"), 1000, true, &res);
    DATA_IS(&res, true, 9, 0, "a\r\n..\r\n");
    /* A stuffed dot line ending in a bare CR keeps its dot. */
    run_data(S("a\r\n.\rb\r\n.\r\n"), 1000, false, &res);
    DATA_IS(&res, true, 11, TERN_SMTP_DATA_ERR_BARE_CR, "a\r\n.\rb\r\n");
    run_data(S("a\r\n.\rb\r\n.\r\n"), 1000, true, &res);
    DATA_IS(&res, true, 11, 0, "a\r\n.\r\nb\r\n");
    run_data(S("a\r\n.\r\r\n.\r\n"), 1000, true, &res);
    DATA_IS(&res, true, 10, 0, "a\r\n.\r\n\r\n");
}

static void test_data_line_length(void **state)
{
    data_run res;
    for (int norm = 0; norm < 2; norm++) {
        run_data(S("12345678\r\n.\r\n"), 10, norm, &res); /* exactly 10 */
        DATA_IS(&res, true, 13, 0, "12345678\r\n");
        run_data(S("123456789\r\n.\r\n"), 10, norm, &res); /* 11 */
        DATA_IS(&res, true, 14, TERN_SMTP_DATA_ERR_LONG_LINE, "123456789\r\n");
        /* The stuffed dot is not counted (RFC 5321 4.5.3.1.6). */
        run_data(S("..2345678\r\n.\r\n"), 10, norm, &res);
        DATA_IS(&res, true, 14, 0, ".2345678\r\n");
        run_data(S("..23456789\r\n.\r\n"), 10, norm, &res);
        DATA_IS(&res, true, 15, TERN_SMTP_DATA_ERR_LONG_LINE, ".23456789\r\n");
        /* Counting restarts at each line; nothing is cut. */
        run_data(S("12345678\r\n12345678\r\n1234567890123456789\r\nok\r\n.\r\n"), 10, norm,
                 &res);
        DATA_IS(&res, true, 48, TERN_SMTP_DATA_ERR_LONG_LINE,
                "12345678\r\n12345678\r\n1234567890123456789\r\nok\r\n");
        /* max_line 0: no limit. */
        run_data(S("1234567890123456789\r\n.\r\n"), 0, norm, &res);
        assert_int_equal(res.errors, 0);
    }
    /* Lines broken by bare LF are counted separately. */
    run_data(S("12345678\n12345678\r\n.\r\n"), 10, true, &res);
    DATA_IS(&res, true, 22, 0, "12345678\r\n12345678\r\n");
    run_data(S("123456789\n1\r\n.\r\n"), 10, true, &res);
    DATA_IS(&res, true, 16, 0, "123456789\r\n1\r\n");
    run_data(S("1234567890\n1\r\n.\r\n"), 10, true, &res);
    assert_int_equal(res.errors, TERN_SMTP_DATA_ERR_LONG_LINE);

    /* A long line made of 1000-byte units at the RFC limit. */
    static char big[2100];
    memset(big, 'x', sizeof(big));
    memcpy(big + 998, "\r\n", 2);
    memcpy(big + 1000, ".\r\n", 3);
    run_data(big, 1003, 1000, false, &res);
    assert_true(res.ended);
    assert_int_equal(res.errors, 0);
    memset(big, 'x', sizeof(big));
    memcpy(big + 999, "\r\n.\r\n", 5);
    run_data(big, 1004, 1000, false, &res);
    assert_true(res.ended);
    assert_int_equal(res.errors, TERN_SMTP_DATA_ERR_LONG_LINE);
    assert_int_equal(res.out_len, 1001);
}

static void test_data_nul_and_latch(void **state)
{
    data_run res;
    run_data(S("a\0b\r\n.\r\n"), 1000, false, &res);
    DATA_IS(&res, true, 8, TERN_SMTP_DATA_ERR_NUL, "a\0b\r\n");
    run_data(S("a\0b\r\n.\r\n"), 1000, true, &res);
    DATA_IS(&res, true, 8, TERN_SMTP_DATA_ERR_NUL, "a\0b\r\n");
    /* Errors stay latched across clean lines. */
    run_data(S("a\nb\r\nc\r\nd\r\n.\r\n"), 1000, false, &res);
    assert_int_equal(res.errors, TERN_SMTP_DATA_ERR_BARE_LF);
}

static void test_data_after_end_and_tiny_out(void **state)
{
    tern_smtp_data_reader r;
    uint8_t out[64];
    size_t olen;
    tern_smtp_data_status st;
    tern_smtp_data_init(&r, 1000, false);
    assert_int_equal(tern_smtp_data_feed(&r, (const uint8_t *)"x\r\n.\r\nQUIT", 10, out,
                                         sizeof(out), &olen, &st),
                     6);
    assert_int_equal(st, TERN_SMTP_DATA_END);
    assert_int_equal(olen, 3);
    /* Once ended, nothing more is taken. */
    assert_int_equal(tern_smtp_data_feed(&r, (const uint8_t *)"QUIT", 4, out, sizeof(out), &olen,
                                         &st),
                     0);
    assert_int_equal(st, TERN_SMTP_DATA_END);
    assert_int_equal(olen, 0);
    assert_true(r.out_bytes == 3);

    /* An output buffer too small for any progress takes nothing. */
    tern_smtp_data_init(&r, 1000, true);
    assert_int_equal(tern_smtp_data_feed(&r, (const uint8_t *)"abc", 3, out, 1, &olen, &st), 0);
    assert_int_equal(st, TERN_SMTP_DATA_MORE);
    assert_int_equal(olen, 0);
    assert_int_equal(tern_smtp_data_feed(&r, (const uint8_t *)"abc", 3, out, 0, &olen, &st), 0);
    /* Held-back ".\r" needs room for 4 bytes once the next byte shows it
     * was not the end. */
    assert_int_equal(tern_smtp_data_feed(&r, (const uint8_t *)".\r", 2, out, 3, &olen, &st), 2);
    assert_int_equal(olen, 0);
    assert_int_equal(tern_smtp_data_feed(&r, (const uint8_t *)"x", 1, out, 3, &olen, &st), 0);
    assert_int_equal(tern_smtp_data_feed(&r, (const uint8_t *)"x", 1, out, 4, &olen, &st), 1);
    assert_int_equal(olen, 4);
    assert_memory_equal(out, ".\r\nx", 4);
}

/* A whole session's bytes in one buffer: commands, DATA, then commands
 * again, handed between the two readers by their consumption counts. */
static void test_session_stream(void **state)
{
    static const char in[] = "EHLO c.example\r\nMAIL FROM:<a@b.example> BODY=8BITMIME\r\n"
                             "RCPT TO:<c@d.example> NOTIFY=NEVER\r\nDATA\r\n"
                             "Received: x\r\nSubject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n";
    char buf[512];
    tern_smtp_line_reader lr;
    tern_smtp_data_reader dr;
    tern_smtp_hdr_scan hs;
    uint8_t out[512];
    size_t off = 0, n = sizeof(in) - 1, nlines = 0;
    bool in_data = false;
    tern_smtp_line_init(&lr, buf, sizeof(buf));
    tern_smtp_hdr_scan_init(&hs);
    while (off < n) {
        if (in_data) {
            size_t olen;
            tern_smtp_data_status st;
            off += tern_smtp_data_feed(&dr, (const uint8_t *)in + off, n - off, out, sizeof(out),
                                       &olen, &st);
            tern_smtp_hdr_scan_feed(&hs, out, olen);
            assert_int_equal(st, TERN_SMTP_DATA_END);
            assert_memory_equal(out, "Received: x\r\nSubject: hi\r\n\r\n.dot\r\n", olen);
            in_data = false;
            continue;
        }
        tern_smtp_cmd cmd;
        tern_smtp_line_status st;
        off += tern_smtp_line_feed(&lr, (const uint8_t *)in + off, n - off, &cmd, &st);
        assert_int_equal(st, TERN_SMTP_LINE_OK);
        nlines++;
        if (cmd.verb == TERN_SMTP_CMD_MAIL) {
            tern_smtp_mail_args m;
            assert_int_equal(tern_smtp_parse_mail(cmd.args.p, cmd.args.len, &m), 0);
            assert_int_equal(m.body, TERN_BODY_8BITMIME);
        } else if (cmd.verb == TERN_SMTP_CMD_RCPT) {
            tern_smtp_rcpt_args r;
            assert_int_equal(tern_smtp_parse_rcpt(cmd.args.p, cmd.args.len, false, &r), 0);
            assert_int_equal(r.notify, TERN_NOTIFY_NEVER);
        } else if (cmd.verb == TERN_SMTP_CMD_DATA) {
            tern_smtp_data_init(&dr, 1000, false);
            in_data = true;
        }
    }
    assert_int_equal(nlines, 5);
    assert_true(hs.done);
    assert_int_equal(hs.received, 1);
}

/* ---- header scanner ---------------------------------------------------- */

typedef struct {
    bool done;
    uint32_t received;
    bool msgid, date;
} hdr_res;

static void run_hdr_with(const char *in, size_t len, feeder *f, hdr_res *res)
{
    tern_smtp_hdr_scan h;
    tern_smtp_hdr_scan_init(&h);
    size_t off = 0;
    while (off < len) {
        size_t chunk = next_chunk(f, off, len - off);
        tern_smtp_hdr_scan_feed(&h, (const uint8_t *)in + off, chunk);
        off += chunk;
    }
    tern_smtp_hdr_scan_feed(&h, (const uint8_t *)"", 0);
    res->done = h.done;
    res->received = h.received;
    res->msgid = h.has_message_id;
    res->date = h.has_date;
}

static void run_hdr(const char *in, size_t len, hdr_res *res)
{
    hdr_res other;
    feeder f = {FEED_WHOLE, 0, 0};
    run_hdr_with(in, len, &f, res);
    f.mode = FEED_BYTE;
    run_hdr_with(in, len, &f, &other);
    assert_int_equal(res->done, other.done);
    assert_int_equal(res->received, other.received);
    for (uint32_t seed = 1; seed <= 5; seed++) {
        f.mode = FEED_RANDOM;
        f.seed = seed;
        run_hdr_with(in, len, &f, &other);
        assert_int_equal(res->done, other.done);
        assert_int_equal(res->received, other.received);
    }
    for (size_t k = 1; k < len; k++) {
        f.mode = FEED_SPLIT;
        f.split = k;
        run_hdr_with(in, len, &f, &other);
        assert_int_equal(res->done, other.done);
        assert_int_equal(res->received, other.received);
        assert_int_equal(res->msgid, other.msgid);
        assert_int_equal(res->date, other.date);
    }
}

static void test_hdr_scan_msgid_date(void **state)
{
    hdr_res h;
    run_hdr(S("Subject: x\r\nmessage-ID : <a@b>\r\nDATE:\tMon, 1 Jan 2024\r\n\r\nbody\r\n"), &h);
    assert_true(h.msgid);
    assert_true(h.date);
    assert_int_equal(h.received, 0);
    /* Look-alikes, folded lines and the body do not count. */
    run_hdr(S("X-Message-ID: <a@b>\r\nDated: x\r\nMessage-IDs: y\r\n Date: folded\r\n"
              "Subject: Date: no\r\nReceived: r\r\n\r\nMessage-ID: <body@x>\r\nDate: body\r\n"), &h);
    assert_false(h.msgid);
    assert_false(h.date);
    assert_int_equal(h.received, 1);
}

static void test_hdr_scan(void **state)
{
    hdr_res h;
    run_hdr(S("Received: a\r\nReceived : b\r\nX-Received: c\r\nreceived:\td\r\n"
              "RECEIVED\t \t:e\r\n  Received: folded\r\n\tReceived: folded\r\n"
              "Receivedx: f\r\nReceive: g\r\nReceived\r\nSubject: Received: h\r\n\r\n"
              "Received: body\r\n"),
            &h);
    assert_true(h.done);
    assert_int_equal(h.received, 4);

    run_hdr(S("Received: a\nReceived: b\n\nReceived: c\n"), &h);
    assert_true(h.done);
    assert_int_equal(h.received, 2);

    run_hdr(S("Received: a\r\n\nReceived: c\n"), &h);
    assert_true(h.done);
    assert_int_equal(h.received, 1);

    /* No separator: everything is header. */
    run_hdr(S("Received: a\r\nReceived: b\r\nReceived: c"), &h);
    assert_false(h.done);
    assert_int_equal(h.received, 3);

    /* Empty header section. */
    run_hdr(S("\r\nReceived: a\r\n"), &h);
    assert_true(h.done);
    assert_int_equal(h.received, 0);

    /* A CR that is not an empty line does not end the section. */
    run_hdr(S("\r\r\nReceived: a\r\n\r\n"), &h);
    assert_true(h.done);
    assert_int_equal(h.received, 1);
    run_hdr(S("X: y\r\rReceived: a\r\n"), &h);
    assert_false(h.done);
    assert_int_equal(h.received, 0);

    run_hdr(S(""), &h);
    assert_false(h.done);
    assert_int_equal(h.received, 0);

    /* Many of them, e.g. a mail loop. */
    static char loop[2000];
    size_t o = 0;
    for (int i = 0; i < 100; i++) {
        memcpy(loop + o, "Received: x\r\n", 13);
        o += 13;
    }
    memcpy(loop + o, "\r\n", 2);
    run_hdr(loop, o + 2, &h);
    assert_true(h.done);
    assert_int_equal(h.received, 100);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_line_verbs),
        cmocka_unit_test(test_line_split_args),
        cmocka_unit_test(test_line_bare_lf_and_more),
        cmocka_unit_test(test_line_pipelined),
        cmocka_unit_test(test_line_limits),
        cmocka_unit_test(test_line_bad_chars),
        cmocka_unit_test(test_verb_name),
        cmocka_unit_test(test_mail_paths),
        cmocka_unit_test(test_mail_limits),
        cmocka_unit_test(test_mail_params),
        cmocka_unit_test(test_mail_utf8),
        cmocka_unit_test(test_rcpt),
        cmocka_unit_test(test_rcpt_params),
        cmocka_unit_test(test_helo),
        cmocka_unit_test(test_bdat),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_xtext),
        cmocka_unit_test(test_mailbox_domain),
        cmocka_unit_test(test_data_basic),
        cmocka_unit_test(test_data_dot_stuffing),
        cmocka_unit_test(test_data_smuggling),
        cmocka_unit_test(test_data_crlf_shapes),
        cmocka_unit_test(test_data_line_length),
        cmocka_unit_test(test_data_nul_and_latch),
        cmocka_unit_test(test_data_after_end_and_tiny_out),
        cmocka_unit_test(test_session_stream),
        cmocka_unit_test(test_hdr_scan),
        cmocka_unit_test(test_hdr_scan_msgid_date),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
