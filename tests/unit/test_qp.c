/* Unit tests for lib/qp.c (quoted-printable decoding fed whole, byte by
 * byte and in random chunks with identical output; encoding rules and
 * round trips) and the lenient base64 stream decoder of lib/base64.c.
 * Input: fixed strings and pseudo-random bytes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/base64.h"
#include "lib/buf.h"
#include "lib/qp.h"

/* Decodes with the given chunking (0 whole, 1 byte by byte, 2 random). */
static void qp_dec(tern_buf *out, const uint8_t *in, size_t len, int mode, unsigned seed)
{
    tern_qp_decoder d;
    tern_qp_decoder_init(&d);
    size_t off = 0;
    while (off < len) {
        size_t n = mode == 0 ? len - off : mode == 1 ? 1 : 1 + (size_t)(rand_r(&seed) % 13);
        if (n > len - off)
            n = len - off;
        assert_int_equal(tern_qp_decode(&d, out, in + off, n), 0);
        off += n;
    }
    assert_int_equal(tern_qp_decode_finish(&d, out), 0);
}

static void check_dec(const char *in, const char *want, size_t want_len)
{
    for (int run = 0; run < 6; run++) {
        tern_buf o;
        tern_buf_init(&o, 0);
        qp_dec(&o, (const uint8_t *)in, strlen(in), run < 2 ? run : 2, (unsigned)run);
        if (o.len != want_len || (want_len && memcmp(o.data, want, want_len) != 0))
            fail_msg("decode(%s) mode %d = \"%.*s\"", in, run, (int)o.len, (char *)o.data);
        tern_buf_free(&o);
    }
}

#define DEC(in, want) check_dec(in, want, sizeof(want) - 1)

static void test_qp_decode(void **state)
{
    (void)state;
    DEC("", "");
    DEC("plain text", "plain text");
    DEC("Caf=C3=A9", "Caf\xc3\xa9");
    DEC("lower =c3=a9 case", "lower \xc3\xa9 case");
    /* Soft line breaks, with CRLF, LF, and padding after the "=". */
    DEC("soft=\r\nbreak", "softbreak");
    DEC("soft=\nbreak", "softbreak");
    DEC("soft= \t \r\nbreak", "softbreak");
    /* Hard line breaks pass through as they came. */
    DEC("a\r\nb\nc", "a\r\nb\nc");
    /* Trailing whitespace is transport padding: dropped. */
    DEC("trail   \r\nx \t\nend  ", "trail\r\nx\nend");
    /* Whitespace inside a line is kept. */
    DEC("a  b\t c", "a  b\t c");
    /* Encoded whitespace before a line end is data. */
    DEC("a=20\r\n", "a \r\n");
    /* Broken escapes are kept as they are. */
    DEC("=ZZ", "=ZZ");
    DEC("=4", "=4");
    DEC("=4x", "=4x");
    DEC("a=", "a");        /* "=" at the very end: a soft break */
    DEC("a = b", "a = b"); /* "=" then whitespace that is not a line end */
    DEC("==41", "=A");
    DEC("=\r", "");
    /* A bare CR is data. */
    DEC("a\rb", "a\rb");
    DEC("a \rb", "a \rb");
    DEC("x\r", "x\r");
    /* NUL and 8-bit bytes decode. */
    check_dec("=00=FF", "\0\xff", 2);
}

static void test_qp_long_whitespace(void **state)
{
    (void)state;
    /* A run longer than the hold buffer: the first part is data, the held
     * rest still dropped at the line end. */
    size_t n = TERN_QP_WS_MAX + 10;
    char *in = malloc(n + 3);
    in[0] = 'a';
    memset(in + 1, ' ', n);
    in[n + 1] = 'b';
    in[n + 2] = '\0';
    char *want = strdup(in);
    check_dec(in, want, n + 2);
    in[n + 1] = '\n';
    tern_buf o;
    tern_buf_init(&o, 0);
    qp_dec(&o, (const uint8_t *)in, n + 2, 1, 0);
    assert_true(o.len == 1 + TERN_QP_WS_MAX + 1);
    assert_int_equal(o.data[o.len - 1], '\n');
    tern_buf_free(&o);
    free(in);
    free(want);
}

static void check_lines(const tern_buf *b)
{
    size_t col = 0;
    for (size_t i = 0; i < b->len; i++) {
        uint8_t c = b->data[i];
        if (c == '\r') {
            assert_true(i + 1 < b->len && b->data[i + 1] == '\n');
            /* no whitespace right before a line end */
            assert_true(i == 0 || (b->data[i - 1] != ' ' && b->data[i - 1] != '\t'));
            col = 0;
            i++;
            continue;
        }
        assert_true(c == '\t' || (c >= 0x20 && c < 0x7f));
        assert_true(++col <= 76);
    }
    if (b->len)
        assert_true(b->data[b->len - 1] != ' ' && b->data[b->len - 1] != '\t');
}

static void enc_str(tern_buf *o, const char *in, unsigned flags)
{
    o->len = 0;
    assert_int_equal(tern_qp_encode(o, (const uint8_t *)in, strlen(in), flags), 0);
    tern_buf_append(o, "", 1);
    o->len--;
}

static void test_qp_encode(void **state)
{
    (void)state;
    tern_buf o;
    tern_buf_init(&o, 0);
    enc_str(&o, "Caf\xc3\xa9 = ok", 0);
    assert_string_equal((char *)o.data, "Caf=C3=A9 =3D ok");
    enc_str(&o, "trailing space \nand tab\t\r\nend ", 0);
    assert_string_equal((char *)o.data, "trailing space=20\r\nand tab=09\r\nend=20");
    enc_str(&o, ".\nFrom me\nA From", 0);
    assert_string_equal((char *)o.data, "=2E\r\n=46rom me\r\nA From");
    enc_str(&o, "a\r\nb", TERN_QP_BINARY);
    assert_string_equal((char *)o.data, "a=0D=0Ab");
    /* Long lines are cut by soft breaks at 76 columns at most. */
    char line[300];
    memset(line, 'x', sizeof line - 1);
    line[sizeof line - 1] = '\0';
    enc_str(&o, line, 0);
    check_lines(&o);
    assert_non_null(strstr((char *)o.data, "=\r\n"));
    /* An escape is never split by a soft break. */
    memset(line, 'x', 74);
    strcpy(line + 74, "\xc3\xa9\xc3\xa9");
    enc_str(&o, line, 0);
    check_lines(&o);
    tern_buf_free(&o);
}

/* Random bytes survive encode then decode, in binary mode exactly, in
 * text mode with line ends as CRLF. */
static void test_qp_roundtrip(void **state)
{
    (void)state;
    unsigned seed = 42;
    for (int round = 0; round < 200; round++) {
        size_t n = (size_t)(rand_r(&seed) % 600);
        uint8_t *in = malloc(n + 1);
        int kind = round % 3;
        for (size_t i = 0; i < n; i++) {
            int r = rand_r(&seed);
            in[i] = kind == 0 ? (uint8_t)r
                    : kind == 1 ? (uint8_t)" \t.=Fabc\n"[r % 10]
                                : (uint8_t)"From .\t \r\n=x"[r % 13];
        }
        tern_buf e, d;
        tern_buf_init(&e, 0);
        tern_buf_init(&d, 0);
        unsigned flags = kind == 0 ? TERN_QP_BINARY : 0;
        assert_int_equal(tern_qp_encode(&e, in, n, flags), 0);
        check_lines(&e);
        qp_dec(&d, e.data, e.len, round % 2 ? 1 : 2, (unsigned)round);
        if (kind == 0) {
            assert_int_equal(d.len, n);
            if (n)
                assert_memory_equal(d.data, in, n);
        } else {
            /* What went in, with every line end as CRLF. */
            tern_buf w;
            tern_buf_init(&w, 0);
            for (size_t i = 0; i < n; i++) {
                if (in[i] == '\n' || (in[i] == '\r' && i + 1 < n && in[i + 1] == '\n')) {
                    if (in[i] == '\r')
                        i++;
                    tern_buf_append(&w, "\r\n", 2);
                } else {
                    tern_buf_append(&w, in + i, 1);
                }
            }
            assert_int_equal(d.len, w.len);
            if (w.len)
                assert_memory_equal(d.data, w.data, w.len);
            tern_buf_free(&w);
        }
        tern_buf_free(&e);
        tern_buf_free(&d);
        free(in);
    }
}

/* ---- base64 stream ------------------------------------------------------ */

static void b64(const char *in, const char *want, size_t want_len)
{
    size_t len = strlen(in);
    for (int mode = 0; mode < 2; mode++) {
        tern_base64_stream s;
        tern_base64_stream_init(&s);
        uint8_t out[256];
        size_t o = 0;
        if (mode == 0) {
            o = tern_base64_stream_decode(&s, (const uint8_t *)in, len, out);
        } else {
            for (size_t i = 0; i < len; i++)
                o += tern_base64_stream_decode(&s, (const uint8_t *)in + i, 1, out + o);
        }
        if (o != want_len || memcmp(out, want, want_len) != 0)
            fail_msg("base64(%s) mode %d: %zu bytes", in, mode, o);
    }
}

static void test_base64_stream(void **state)
{
    (void)state;
    b64("", "", 0);
    b64("aGVsbG8=", "hello", 5);
    b64("aGVs\r\nbG8h\r\n", "hello!", 6);
    b64("aGVsbG8", "hello", 5);           /* no padding */
    b64("a G V s b G 8 =", "hello", 5);   /* spaces */
    b64("aGVs*bG8=", "hello", 5);         /* junk skipped */
    b64("aGVsbG8=aGVsbG8=", "hello", 5);  /* "=" ends the data */
    b64("AP8A/w==", "\0\xff\0\xff", 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qp_decode),
        cmocka_unit_test(test_qp_long_whitespace),
        cmocka_unit_test(test_qp_encode),
        cmocka_unit_test(test_qp_roundtrip),
        cmocka_unit_test(test_base64_stream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
