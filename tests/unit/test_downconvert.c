/* Unit tests for protocols/smtp/downconvert.c (8BITMIME downconversion):
 * fixed messages (a bare 8-bit text, a multipart mixing 8bit, base64 and
 * 7bit parts, an 8-bit message/rfc822 inside), and every message of the
 * shared MIME corpus with the property that the converted message has the
 * same tree, every leaf decodes to the same bytes, and converted leaves
 * are 7-bit. Input: fixed strings and the corpus files. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/arena.h"
#include "lib/buf.h"
#include "lib/mime.h"
#include "protocols/smtp/downconvert.h"

static bool leaf(const tern_mime_part *p)
{
    return p->children == NULL;
}

static bool convertible(const tern_mime_part *p)
{
    return (p->encoding == TERN_MIME_ENC_7BIT || p->encoding == TERN_MIME_ENC_8BIT ||
            p->encoding == TERN_MIME_ENC_BINARY) &&
           !(p->flags & (TERN_MIME_F_LIMIT | TERN_MIME_F_HEADER_TRUNCATED | TERN_MIME_F_HEADER_NO_END));
}

/* Walks both trees in step: same shape, same decoded leaves, and a leaf
 * that could be converted has no 8-bit octet left in its body. */
static void same_tree(const tern_mime_part *a, const uint8_t *am, size_t al,
                      const tern_mime_part *b, const uint8_t *bm, size_t bl)
{
    assert_non_null(b);
    assert_int_equal(a->n_children, b->n_children);
    if (leaf(a)) {
        tern_buf da, db;
        tern_buf_init(&da, 0);
        tern_buf_init(&db, 0);
        assert_int_equal(tern_mime_part_decode(a, am, al, &da), 0);
        assert_int_equal(tern_mime_part_decode(b, bm, bl, &db), 0);
        assert_int_equal(da.len, db.len);
        if (da.len)
            assert_memory_equal(da.data, db.data, da.len);
        if (convertible(a))
            assert_false(tern_has_8bit(bm + b->body_offset, (size_t)(b->body_end - b->body_offset)));
        tern_buf_free(&da);
        tern_buf_free(&db);
        return;
    }
    const tern_mime_part *cb = b->children;
    for (const tern_mime_part *ca = a->children; ca; ca = ca->next, cb = cb->next)
        same_tree(ca, am, al, cb, bm, bl);
}

/* Converts, checks the property, returns the output (caller frees). */
static tern_buf convert(const char *msg, int want)
{
    tern_buf out;
    tern_buf_init(&out, 0);
    size_t len = strlen(msg);
    assert_int_equal(tern_downconvert_8bit((const uint8_t *)msg, len, &out), want);
    if (want == 1) {
        tern_arena a;
        tern_arena_init(&a, 0);
        tern_mime_part *ra = tern_mime_parse(&a, (const uint8_t *)msg, len, NULL);
        tern_mime_part *rb = tern_mime_parse(&a, out.data, out.len, NULL);
        same_tree(ra, (const uint8_t *)msg, len, rb, out.data, out.len);
        tern_arena_free(&a);
        assert_int_equal(tern_buf_append(&out, "", 1), 0); /* NUL for strstr */
    } else {
        assert_int_equal(out.len, 0);
    }
    return out;
}

static void test_seven_bit_untouched(void **state)
{
    (void)state;
    tern_buf o = convert("Subject: x\r\n\r\nplain ascii\r\n", 0);
    tern_buf_free(&o);
    /* 8-bit only in a base64 part's neighbour header? Only the body counts;
     * an 8-bit header is SMTPUTF8's business. */
    o = convert("Subject: caf\xc3\xa9\r\n\r\nascii body\r\n", 0);
    tern_buf_free(&o);
}

static void test_simple_text(void **state)
{
    (void)state;
    tern_buf o = convert("Subject: x\r\nContent-Transfer-Encoding: 8bit\r\n"
                         "Content-Type: text/plain; charset=utf-8\r\n\r\n"
                         "caf\xc3\xa9 cr\xc3\xa8me\r\n.dot\r\n",
                         1);
    const char *s = (const char *)o.data;
    assert_non_null(strstr(s, "Content-Transfer-Encoding: quoted-printable\r\n\r\n"));
    assert_null(strstr(s, "8bit"));
    assert_non_null(strstr(s, "MIME-Version: 1.0\r\n"));
    assert_non_null(strstr(s, "caf=C3=A9 cr=C3=A8me\r\n"));
    assert_non_null(strstr(s, "Subject: x\r\n"));
    tern_buf_free(&o);
}

static void test_multipart(void **state)
{
    (void)state;
    const char *m =
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
        "preamble\r\n--b1\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\nna\xefve\r\n"
        "--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        "AAEC/w==\r\n"
        "--b1\r\nContent-Type: text/plain\r\n\r\nseven bit stays\r\n"
        "--b1\r\nContent-Type: application/x-raw\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        "\x01\xff\r\n\xfe\r\n"
        "--b1--\r\nepilogue\r\n";
    tern_buf o = convert(m, 1);
    const char *s = (const char *)o.data;
    /* The container says 7bit now; the base64 and 7bit parts are as they were. */
    assert_non_null(strstr(s, "boundary=\"b1\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\npreamble\r\n--b1\r\n"));
    assert_non_null(strstr(s, "na=EFve"));
    assert_non_null(strstr(s, "Content-Transfer-Encoding: base64\r\n\r\nAAEC/w==\r\n--b1\r\n"));
    assert_non_null(strstr(s, "Content-Type: text/plain\r\n\r\nseven bit stays\r\n--b1\r\n"));
    /* Binary content keeps its line ends as data. */
    assert_non_null(strstr(s, "=01=FF=0D=0A=FE"));
    assert_non_null(strstr(s, "--b1--\r\nepilogue\r\n"));
    tern_buf_free(&o);
}

static void test_message_rfc822(void **state)
{
    (void)state;
    const char *m = "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
                    "--zz\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                    "Subject: inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                    "gr\xc3\xbc\xc3\x9f\x65\r\n"
                    "--zz--\r\n";
    tern_buf o = convert(m, 1);
    const char *s = (const char *)o.data;
    assert_non_null(strstr(s, "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
                              "Subject: inner\r\nContent-Type: text/plain; charset=utf-8\r\n"
                              "Content-Transfer-Encoding: quoted-printable\r\n\r\ngr=C3=BC=C3=9Fe"));
    /* MIME-Version goes on the root only. */
    assert_null(strstr(s, "inner\r\nMIME-Version"));
    tern_buf_free(&o);
}

/* A soft line break must not start a line that reads as the boundary:
 * across every wrap position, the tree stays the same (convert checks),
 * and where QP would have made one, the part goes base64 instead. */
static void test_soft_break_boundary(void **state)
{
    (void)state;
    int b64 = 0;
    for (int n = 60; n < 80; n++) {
        char m[1024];
        char pad[100];
        memset(pad, 'a', (size_t)n);
        pad[n] = 0;
        snprintf(m, sizeof(m),
                 "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=bnd\r\n\r\n"
                 "--bnd\r\nContent-Type: text/plain\r\n\r\n\xe9%s--bnd and more\r\n--bnd--\r\n",
                 pad);
        tern_buf o = convert(m, 1);
        if (strstr((const char *)o.data, "Content-Transfer-Encoding: base64"))
            b64++;
        tern_buf_free(&o);
    }
    assert_true(b64 > 0 && b64 < 20);
}

static void test_empty_multipart_left_alone(void **state)
{
    (void)state;
    /* Declared multipart, but no boundary line ever comes: its 8-bit text
     * is not encoded (that could make a boundary appear). */
    tern_buf o = convert("Content-Type: multipart/mixed; boundary=\"x=00=\"\r\n\r\n"
                         "--x\x01\xe9\r\n", 0);
    tern_buf_free(&o);
}

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    /* Twice the room: bare LF becomes CRLF, as in our spool. */
    uint8_t *raw = malloc((size_t)n + 1), *d = malloc(2 * (size_t)n + 1);
    size_t got = fread(raw, 1, (size_t)n, f);
    fclose(f);
    size_t o = 0;
    for (size_t i = 0; i < got; i++) {
        if (raw[i] == '\n' && (i == 0 || raw[i - 1] != '\r'))
            d[o++] = '\r';
        d[o++] = raw[i];
    }
    d[o] = 0;
    free(raw);
    *len = o;
    return d;
}

static int corpus_dir(const char *sub, int *converted)
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
        tern_buf out;
        tern_buf_init(&out, 0);
        int r = tern_downconvert_8bit(d, len, &out);
        assert_true(r == 0 || r == 1);
        if (r == 1) {
            (*converted)++;
            tern_arena a;
            tern_arena_init(&a, 0);
            tern_mime_part *ra = tern_mime_parse(&a, d, len, NULL);
            tern_mime_part *rb = tern_mime_parse(&a, out.data, out.len, NULL);
            same_tree(ra, d, len, rb, out.data, out.len);
            /* Converting again changes nothing more in the bodies. */
            tern_buf again;
            tern_buf_init(&again, 0);
            int r2 = tern_downconvert_8bit(out.data, out.len, &again);
            assert_true(r2 == 0 || r2 == 1);
            if (r2 == 1) {
                tern_mime_part *rc = tern_mime_parse(&a, again.data, again.len, NULL);
                same_tree(rb, out.data, out.len, rc, again.data, again.len);
            }
            tern_buf_free(&again);
            tern_arena_free(&a);
        }
        tern_buf_free(&out);
        free(d);
        files++;
    }
    closedir(dp);
    return files;
}

static void test_corpus(void **state)
{
    (void)state;
    int converted = 0;
    int n = corpus_dir("rfc", &converted) + corpus_dir("legacy", &converted) +
            corpus_dir("malformed", &converted);
    if (getenv("TERN_CORPUS")) {
        assert_true(n > 50);
        assert_true(converted > 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seven_bit_untouched),
        cmocka_unit_test(test_simple_text),
        cmocka_unit_test(test_multipart),
        cmocka_unit_test(test_message_rfc822),
        cmocka_unit_test(test_soft_break_boundary),
        cmocka_unit_test(test_empty_multipart_left_alone),
        cmocka_unit_test(test_corpus),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
