/* Unit tests for lib/header.c (every case fed whole, byte by byte and in
 * random chunks, with identical results; every corpus file), lib/rfc2047.c
 * (the examples of RFC 2047 section 8, charsets, fallbacks) and
 * lib/datetime.c (RFC 5322 and obsolete date-times). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/datetime.h"
#include "lib/header.h"
#include "lib/rfc2047.h"

/* ---- header parser ------------------------------------------------------- */

/* The fields as "name=value\n" lines, then "#size" and flags. */
static void parse_to(tern_buf *out, const uint8_t *d, size_t len, int mode, unsigned seed,
                     const tern_header_limits *lim)
{
    tern_header_parser *p = malloc(sizeof *p);
    tern_header_parser_init(p, lim);
    size_t off = 0;
    bool over = false;
    for (;;) {
        tern_header_field f;
        tern_header_event ev;
        if (over) {
            ev = tern_header_parser_finish(p, &f);
        } else {
            size_t n = mode == 0 ? len - off : mode == 1 ? 1 : 1 + (size_t)(rand_r(&seed) % 61);
            if (n > len - off)
                n = len - off;
            size_t used;
            ev = tern_header_parser_feed(p, d + off, n, &used, &f);
            assert_true(used <= n);
            off += used;
            if (ev == TERN_HEADER_MORE) {
                assert_int_equal(used, n);
                if (off == len)
                    over = true;
                continue;
            }
        }
        if (ev == TERN_HEADER_END)
            break;
        assert_int_equal(ev, TERN_HEADER_FIELD);
        assert_true(f.name_len > 0 && f.name_len <= TERN_HEADER_NAME_MAX);
        tern_buf_append(out, f.name, f.name_len);
        tern_buf_append(out, "=", 1);
        tern_buf_append(out, f.value, f.value_len);
        tern_buf_printf(out, "%s@%llu\n", f.truncated ? "[T]" : "", (unsigned long long)f.offset);
    }
    tern_buf_printf(out, "#%llu%s skipped=%zu n=%zu", (unsigned long long)p->size,
                    p->truncated_total ? " cut" : "", p->skipped_lines, p->n_fields);
    /* After the end: nothing more is consumed. */
    size_t used = 99;
    tern_header_field f;
    assert_int_equal(tern_header_parser_feed(p, (const uint8_t *)"X: y\n", 5, &used, &f),
                     TERN_HEADER_END);
    assert_int_equal(used, 0);
    free(p);
}

/* Parses every way; all must agree. Returns the result (malloc'd). */
static char *parse_all(const uint8_t *d, size_t len, const tern_header_limits *lim)
{
    tern_buf whole;
    tern_buf_init(&whole, 0);
    parse_to(&whole, d, len, 0, 0, lim);
    tern_buf_append(&whole, "", 1);
    for (int mode = 1; mode <= 4; mode++) {
        tern_buf b;
        tern_buf_init(&b, 0);
        parse_to(&b, d, len, mode == 1 ? 1 : 2, (unsigned)mode, lim);
        tern_buf_append(&b, "", 1);
        if (strcmp((char *)b.data, (char *)whole.data) != 0)
            fail_msg("chunking %d gives\n%s\ninstead of\n%s", mode, (char *)b.data, (char *)whole.data);
        tern_buf_free(&b);
    }
    return (char *)whole.data;
}

static void expect(const char *in, const char *want)
{
    char *got = parse_all((const uint8_t *)in, strlen(in), NULL);
    if (strcmp(got, want) != 0)
        fail_msg("for %s\ngot\n%s\nwant\n%s", in, got, want);
    free(got);
}

static void test_header_basic(void **state)
{
    expect("From: a@b\r\nSubject: hi\r\n\r\nbody",
           "From=a@b@0\nSubject=hi@11\n#26 skipped=0 n=2");
    /* folding kept as whitespace, line breaks removed, value trimmed */
    expect("Subject:   one\r\n two\r\n\tthree  \r\nX:\r\n  late\r\n\r\n",
           "Subject=one two\tthree@0\nX=late@32\n#46 skipped=0 n=2");
    /* bare LF, and an empty header */
    expect("A: 1\nB: 2\n\nrest", "A=1@0\nB=2@5\n#11 skipped=0 n=2");
    expect("\r\nbody", "#2 skipped=0 n=0");
    expect("\nbody", "#1 skipped=0 n=0");
    /* no blank line: the header runs to the end of the input */
    expect("A: 1\r\nB: 2", "A=1@0\nB=2@6\n#10 skipped=0 n=2");
    expect("", "#0 skipped=0 n=0");
    /* garbage: mbox From line, no colon, spaces in a name, leading continuation */
    expect(" orphan\r\nFrom me Mon Jan  1 00:00:00 2024\r\nno colon here\r\n"
           "  its continuation\r\nBad Name: x\r\nGood : y\r\n\r\n",
           "Good=y@91\n#103 skipped=4 n=1");
    /* NULs, bare CR and 8-bit are data */
    static const uint8_t nul[] = "X: a\0b\rc\xff\r\n\r\n";
    char *got = parse_all(nul, sizeof nul - 1, NULL);
    assert_memory_equal(got, "X=a\0b\rc\xff@0\n", 11);
    free(got);
    /* CR CR LF ends nothing; a line of "\r" then text is garbage */
    expect("A: 1\r\n\rX: 2\r\n\r\n", "A=1@0\n#15 skipped=1 n=1");
    /* empty name */
    expect(": v\r\nA: 1\r\n\r\n", "A=1@5\n#13 skipped=1 n=1");
}

static void test_header_limits(void **state)
{
    tern_header_limits lim = {.max_total = 40, .max_fields = 2, .max_value = 8};
    char *got = parse_all((const uint8_t *)"A: 0123456789\r\nB: 1\r\nC: 2\r\nD: 3\r\n\r\n", 35, &lim);
    assert_string_equal(got, "A=01234567[T]@0\nB=1@15\n#35 skipped=0 n=4");
    free(got);
    got = parse_all((const uint8_t *)"A: 1\r\nB: 0123456789012345678901234567890123456789\r\n\r\nbody",
                    57, &lim);
    assert_string_equal(got, "A=1@0\nB=01234567[T]@6\n#40 cut skipped=0 n=2");
    free(got);
    /* a name past the cap is not a name */
    char big[300];
    memset(big, 'n', sizeof big);
    memcpy(big + 200, ": v\r\n\r\n", 7);
    got = parse_all((const uint8_t *)big, 207, NULL);
    assert_string_equal(got, "#207 skipped=1 n=0");
    free(got);
}

static void test_header_random(void **state)
{
    /* Random bytes from a small alphabet that makes headers likely. */
    static const char alpha[] = "ab:: \t\r\n\n\r\0\xff-";
    unsigned seed = 7;
    for (int round = 0; round < 300; round++) {
        uint8_t buf[200];
        size_t n = (size_t)(rand_r(&seed) % sizeof buf);
        for (size_t i = 0; i < n; i++)
            buf[i] = (uint8_t)alpha[rand_r(&seed) % (sizeof alpha - 1)];
        tern_header_limits lim = {.max_total = 1 + (size_t)(rand_r(&seed) % 300),
                                  .max_fields = 1 + (size_t)(rand_r(&seed) % 5),
                                  .max_value = 1 + (size_t)(rand_r(&seed) % 20)};
        free(parse_all(buf, n, round % 2 ? &lim : NULL));
    }
}

static uint8_t *read_file(const char *path, size_t *len_r)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, len = 0, n;
    uint8_t *d = malloc(cap);
    while ((n = fread(d + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap)
            d = realloc(d, cap *= 2);
    }
    fclose(f);
    *len_r = len;
    return d;
}

static int corpus_dir(const char *sub, bool sane)
{
    const char *root = getenv("TERN_CORPUS");
    if (!root)
        return 0;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/mime/%s", root, sub);
    DIR *dp = opendir(dir);
    if (!dp)
        return 0;
    int files = 0;
    struct dirent *e;
    while ((e = readdir(dp))) {
        if (e->d_name[0] == '.')
            continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        size_t len;
        uint8_t *d = read_file(path, &len);
        if (!d)
            continue;
        char *got = parse_all(d, len, NULL);
        if (sane) {
            /* The header ends at a blank line inside the file, has fields,
             * and every line of it was a field or a continuation. */
            const char *size = strrchr(got, '#');
            unsigned long long hs = strtoull(size + 1, NULL, 10);
            if (!(hs > 0 && hs <= len && d[hs - 1] == '\n' && strstr(got, "skipped=0") &&
                  !strstr(got, " n=0")))
                fail_msg("%s: %s", path, size);
        }
        free(got);
        free(d);
        files++;
    }
    closedir(dp);
    return files;
}

static void test_header_corpus(void **state)
{
    int n = corpus_dir("rfc", true) + corpus_dir("legacy", true) + corpus_dir("malformed", false);
    if (getenv("TERN_CORPUS"))
        assert_true(n > 50);
}

/* ---- RFC 2047 --------------------------------------------------------------- */

static void dec(const char *in, const char *want)
{
    tern_buf b;
    tern_buf_init(&b, 0);
    assert_int_equal(tern_rfc2047_decode(&b, in, strlen(in)), 0);
    tern_buf_append(&b, "", 1);
    if (strcmp((char *)b.data, want) != 0)
        fail_msg("decode(%s) = \"%s\", want \"%s\"", in, (char *)b.data, want);
    tern_buf_free(&b);
}

static void test_rfc2047(void **state)
{
    /* RFC 2047 section 8 */
    dec("=?US-ASCII?Q?Keith_Moore?= <moore@cs.utk.edu>", "Keith Moore <moore@cs.utk.edu>");
    dec("=?ISO-8859-1?Q?Keld_J=F8rn_Simonsen?= <keld@dkuug.dk>",
        "Keld J\xc3\xb8rn Simonsen <keld@dkuug.dk>");
    dec("=?ISO-8859-1?Q?Andr=E9?= Pirard <PIRARD@vm1.ulg.ac.be>",
        "Andr\xc3\xa9 Pirard <PIRARD@vm1.ulg.ac.be>");
    dec("=?ISO-8859-1?B?SWYgeW91IGNhbiByZWFkIHRoaXMgeW8=?=\r\n"
        "    =?ISO-8859-2?B?dSB1bmRlcnN0YW5kIHRoZSBleGFtcGxlLg==?=",
        "If you can read this you understand the example.");
    dec("Nathaniel Borenstein <nsb@thumper.bellcore.com> (=?iso-8859-8?b?7eXs+SDv4SDp7Oj08A==?=)",
        "Nathaniel Borenstein <nsb@thumper.bellcore.com> (\xd7\x9d\xd7\x95\xd7\x9c\xd7\xa9 "
        "\xd7\x9f\xd7\x91 \xd7\x99\xd7\x9c\xd7\x98\xd7\xa4\xd7\xa0)");
    dec("(=?ISO-8859-1?Q?a?=)", "(a)");
    dec("(=?ISO-8859-1?Q?a?= b)", "(a b)");
    dec("(=?ISO-8859-1?Q?a?= =?ISO-8859-1?Q?b?=)", "(ab)");
    dec("(=?ISO-8859-1?Q?a?=  =?ISO-8859-1?Q?b?=)", "(ab)");
    dec("(=?ISO-8859-1?Q?a?=\r\n    =?ISO-8859-1?Q?b?=)", "(ab)");
    dec("(=?ISO-8859-1?Q?a_b?=)", "(a b)");
    dec("(=?ISO-8859-1?Q?a?= =?ISO-8859-2?Q?_b?=)", "(a b)");
    /* RFC 2231 language suffix */
    dec("=?US-ASCII*EN?Q?Keith_Moore?=", "Keith Moore");
    /* a character split across two words of one charset */
    dec("=?utf-8?q?caf=C3?= =?utf-8?q?=A9?=", "caf\xc3\xa9");
    dec("=?utf-8?b?5pel?= =?UTF-8?B?5pys?=", "\xe6\x97\xa5\xe6\x9c\xac");
    /* ISO-2022-JP through iconv */
    dec("=?ISO-2022-JP?B?GyRCRnxLXBsoQg==?=", "\xe6\x97\xa5\xe6\x9c\xac");
    /* invalid words stay as they are */
    dec("=?utf-8?x?abc?=", "=?utf-8?x?abc?=");
    dec("=?utf-8?q?no end", "=?utf-8?q?no end");
    dec("=??q?abc?=", "=??q?abc?=");
    dec("=?utf-8?q?has space?=", "=?utf-8?q?has space?=");
    dec("a =?utf-8?q?b?= c", "a b c");
    /* glued to text, as mailers do */
    dec("Re:=?utf-8?q?x?=", "Re:x");
    /* unknown charset: Latin-1 for what is not UTF-8 */
    dec("=?x-no-such?q?caf=E9?=", "caf\xc3\xa9");
    dec("=?x-no-such?q?caf=C3=A9?=", "caf\xc3\xa9");
    /* bytes iconv rejects */
    dec("=?utf-16le?b?AA==?=", "\xef\xbf\xbd");
    /* raw 8-bit and controls */
    dec("caf\xe9 \xc3\xa9t\xc3\xa9", "caf\xc3\xa9 \xc3\xa9t\xc3\xa9");
    dec("a\tb\x01" "c", "a b c");
    dec("\xed\xa0\x80", "\xc3\xad\xc2\xa0\xc2\x80"); /* a surrogate is not UTF-8 */
    dec("", "");
    /* Q decoding details */
    dec("=?utf-8?q?a=3Db=ZZ=4?=", "a=b=ZZ=4");
    dec("=?utf-8?b?YWJj?=", "abc");
    dec("=?utf-8?b?YW?=", "a");
    char *s;
    tern_arena a;
    tern_arena_init(&a, 1024);
    size_t len;
    s = tern_rfc2047_decode_arena(&a, "x\0y", 3, &len);
    assert_int_equal(len, 3);
    assert_string_equal(s, "x y");
    tern_arena_free(&a);
}

static void test_charsets(void **state)
{
    tern_buf b;
    tern_buf_init(&b, 0);
    assert_int_equal(tern_charset_to_utf8(&b, "windows-1252", 12, (const uint8_t *)"\x93q\x94", 3), 0);
    assert_int_equal(b.len, 7);
    assert_memory_equal(b.data, "\xe2\x80\x9cq\xe2\x80\x9d", 7);
    b.len = 0;
    assert_int_equal(tern_charset_to_utf8(&b, "ks_c_5601-1987", 14, (const uint8_t *)"\xc7\xd1", 2), 0);
    assert_int_equal(b.len, 3);
    assert_memory_equal(b.data, "\xed\x95\x9c", 3);
    b.len = 0;
    /* a sequence cut at the end */
    assert_int_equal(tern_charset_to_utf8(&b, "shift_jis", 9, (const uint8_t *)"a\x93", 2), 0);
    assert_int_equal(b.len, 4);
    assert_memory_equal(b.data, "a\xef\xbf\xbd", 4);
    tern_buf_free(&b);
    char name[32];
    assert_int_equal(tern_charset_normalize("UTF-8*en", 8, name, sizeof name), 0);
    assert_string_equal(name, "utf-8");
    assert_int_equal(tern_charset_normalize("bad name", 8, name, sizeof name), -1);
    assert_int_equal(tern_charset_normalize("", 0, name, sizeof name), -1);
}

/* ---- dates ---------------------------------------------------------------- */

static void date_ok(const char *s, int64_t want)
{
    int64_t t = 0;
    if (tern_datetime_parse(s, strlen(s), &t) != 0)
        fail_msg("\"%s\" not parsed", s);
    if (t != want)
        fail_msg("\"%s\" = %lld, want %lld", s, (long long)t, (long long)want);
}

static void date_bad(const char *s)
{
    int64_t t;
    if (tern_datetime_parse(s, strlen(s), &t) == 0)
        fail_msg("\"%s\" parsed as %lld", s, (long long)t);
}

static void test_datetime(void **state)
{
    date_ok("Fri, 21 Nov 1997 09:55:06 -0600", 880127706);
    date_ok("Fri, 21 Nov 1997 09:55:06 -0600 (CST)", 880127706);
    date_ok("  Fri,\r\n 21 Nov 1997\r\n 09:55:06\r\n -0600", 880127706);
    date_ok("21 Nov 1997 09:55:06 -0600", 880127706);
    date_ok("Friday, 21 November 1997 09:55:06 -0600", 880127706);
    date_ok("Fri 21 Nov 1997 15:55:06 GMT", 880127706);
    date_ok("21 Nov 97 09:55:06 GMT", 880106106);
    date_ok("21 Nov 097 09:55:06 UT", 880106106);
    date_ok("21-Nov-1997 09:55:06 +0000", 880106106);
    date_ok("Thu, 13 Feb 1969 23:32:54 -0330", -27723426);
    date_ok("Fri, 21 Nov 1997 09:55 PST", 880134900);
    date_ok("Fri, 21 Nov 1997 10:55 PDT", 880134900);
    date_ok("Fri, 21 Nov 1997 10:55 MST", 880134900);
    date_ok("Fri, 21 Nov 1997 11:55 MDT", 880134900);
    date_ok("Fri, 21 Nov 1997 12:55 CDT", 880134900);
    date_ok("Fri, 21 Nov 1997 12:55 EST", 880134900);
    date_ok("Fri, 21 Nov 1997 13:55 EDT", 880134900);
    date_ok("Fri, 21 Nov 1997 11:55 CST", 880134900);
    date_ok("21 Nov 1997 09:55:06 Z", 880106106);
    date_ok("21 Nov 1997 09:55:06 A", 880106106); /* military: -0000 */
    date_ok("21 Nov 1997 09:55:06", 880106106);   /* no zone */
    date_ok("21 Nov 1997", 880070400);            /* no time */
    date_ok("Mon Jan  2 15:04:05 2006", 1136214245);
    date_ok("Mon, 2 Jan 2006 03:04:05 PM +0000", 1136214245);
    date_ok("29 Feb 2020 00:00:00 +0000", 1582934400);
    date_ok("1 Jan 49 00:00:00 +0000", 2493072000);
    date_ok("1 Jan 50 00:00:00 +0000", -631152000);
    date_ok("Sat, 31 Dec 2016 23:59:60 +0000", 1483228799);
    date_bad("");
    date_bad("Whenever");
    date_bad("32 Jan 2020 00:00:00 +0000");
    date_bad("29 Feb 2019 00:00:00 +0000");
    date_bad("1 Jan 2020 24:00:00 +0000");
    date_bad("1 Jan 2020 10:61 +0000");
    date_bad("Feb 2020");
    date_bad("Tue, 7 Apr 2026 10:00:t <x@y>");
    date_bad("1 Jan 99999999999 00:00");
    assert_int_equal(tern_days_from_civil(1970, 1, 1), 0);
    assert_int_equal(tern_days_from_civil(2000, 3, 1), 11017);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_basic),
        cmocka_unit_test(test_header_limits),
        cmocka_unit_test(test_header_random),
        cmocka_unit_test(test_header_corpus),
        cmocka_unit_test(test_rfc2047),
        cmocka_unit_test(test_charsets),
        cmocka_unit_test(test_datetime),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
