/* Unit tests for lib/mime.c and lib/mime_content.c: every message is fed
 * whole, byte by byte and in random chunks, and must give the same tree;
 * every tree is checked for consistency against the bytes (offsets in
 * order, sizes and LF counts recomputed, the gaps between siblings being
 * exactly a boundary line); the hand-written tricky messages in
 * tests/data/mime/NAME.eml must give exactly NAME.tree; every message of
 * the shared corpus is parsed; then parameters (RFC 2231/2047), sections,
 * limits, decoding, the text body and attachments. Input: files under
 * tests/data and ../shared/corpus, and strings below. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/address.h"
#include "lib/buf.h"
#include "lib/mime.h"
#include "lib/rfc2047.h"

/* ---- helpers ------------------------------------------------------------ */

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

static const char *flag_names[] = {"multipart", "message", "default", "no-boundary", "no-end",
                                   "limit", "encoded-message", "header-truncated",
                                   "header-no-end"};

static void render_params(tern_buf *o, const char *what, const tern_mime_param *p)
{
    for (; p; p = p->next) {
        tern_buf_printf(o, " %s%s=\"%s\"", what, p->name, p->value);
        if (strcmp(p->raw, p->value) != 0)
            tern_buf_printf(o, "{raw=%s}", p->raw);
        if (p->language)
            tern_buf_printf(o, "{lang=%s}", p->language);
    }
}

/* One line per part, indented by depth; every field that a consumer reads. */
static void render(tern_buf *o, const tern_mime_part *m)
{
    for (; m; m = m->next) {
        tern_buf_printf(o, "%*s%s/%s", (int)m->depth * 2, "", m->type, m->subtype);
        if (strcmp(m->type, m->declared_type) || strcmp(m->subtype, m->declared_subtype))
            tern_buf_printf(o, " (declared %s/%s)", m->declared_type, m->declared_subtype);
        for (size_t i = 0; i < sizeof flag_names / sizeof flag_names[0]; i++)
            if (m->flags & (1u << i))
                tern_buf_printf(o, " [%s]", flag_names[i]);
        tern_buf_printf(o, " h=%llu+%llu/%llu b=%llu+%llu/%llu %s",
                        (unsigned long long)m->header_offset, (unsigned long long)m->header_size,
                        (unsigned long long)m->header_lines, (unsigned long long)m->body_offset,
                        (unsigned long long)m->body_size, (unsigned long long)m->body_lines,
                        m->encoding_name);
        if (m->charset)
            tern_buf_printf(o, " cs=%s", m->charset);
        render_params(o, "", m->params);
        if (m->disposition)
            tern_buf_printf(o, " disp=%s", m->disposition);
        render_params(o, "d.", m->disposition_params);
        if (m->content_id)
            tern_buf_printf(o, " id=%s", m->content_id);
        if (m->description)
            tern_buf_printf(o, " desc=\"%s\"", m->description);
        if (m->language)
            tern_buf_printf(o, " lang=%s", m->language);
        if (m->location)
            tern_buf_printf(o, " loc=%s", m->location);
        if (m->md5)
            tern_buf_printf(o, " md5=%s", m->md5);
        if (m->envelope && m->envelope->subject)
            tern_buf_printf(o, " subject=\"%s\"", m->envelope->subject);
        tern_buf_append(o, "\n", 1);
        render(o, m->children);
    }
}

static uint64_t count_lf(const uint8_t *d, uint64_t s, uint64_t e)
{
    uint64_t n = 0;
    for (uint64_t i = s; i < e; i++)
        n += d[i] == '\n';
    return n;
}

static bool starts_boundary(const uint8_t *d, size_t len, uint64_t at, const char *b)
{
    size_t bl = strlen(b);
    return at + 2 + bl <= len && d[at] == '-' && d[at + 1] == '-' && memcmp(d + at + 2, b, bl) == 0;
}

/* Invariants of a tree against the message bytes. */
static void check_part(const tern_mime_part *m, const uint8_t *d, size_t len, const char *what)
{
    if (!(m->header_offset <= m->body_offset && m->body_offset <= m->body_end && m->body_end <= len))
        fail_msg("%s: offsets out of order", what);
    assert_int_equal(m->header_size, m->body_offset - m->header_offset);
    assert_int_equal(m->body_size, m->body_end - m->body_offset);
    if (m->header_lines != count_lf(d, m->header_offset, m->body_offset))
        fail_msg("%s: header lines %llu", what, (unsigned long long)m->header_lines);
    if (m->body_lines != count_lf(d, m->body_offset, m->body_end))
        fail_msg("%s: body lines %llu, counted %llu", what, (unsigned long long)m->body_lines,
                 (unsigned long long)count_lf(d, m->body_offset, m->body_end));
    assert_non_null(m->type);
    assert_non_null(m->subtype);
    size_t n = 0;
    for (const tern_mime_part *c = m->children; c; c = c->next) {
        n++;
        assert_ptr_equal(c->parent, m);
        assert_int_equal(c->depth, m->depth + 1);
        if (c->header_offset < m->body_offset || c->body_end > m->body_end)
            fail_msg("%s: child outside its parent", what);
        if (!c->next)
            assert_ptr_equal(m->last_child, c);
    }
    assert_int_equal(n, m->n_children);
    if (m->flags & TERN_MIME_F_MESSAGE) {
        assert_int_equal(n, 1);
        assert_int_equal(m->children->header_offset, m->body_offset);
        assert_int_equal(m->children->body_end, m->body_end);
        assert_non_null(m->children->envelope);
    } else if (m->flags & TERN_MIME_F_MULTIPART) {
        assert_non_null(m->boundary);
        /* Before each child: (preamble or the previous child's line end)
         * and one boundary line of this multipart. */
        uint64_t prev_end = m->body_offset;
        bool first = true;
        for (const tern_mime_part *c = m->children; c; c = c->next) {
            uint64_t h = c->header_offset;
            assert_true(h > prev_end || (h == prev_end && h == len));
            uint64_t ls = h;
            if (h > 0 && d[h - 1] == '\n')
                ls = h - 1;
            while (ls > prev_end && d[ls - 1] != '\n')
                ls--; /* the boundary line's start */
            if (!starts_boundary(d, len, ls, m->boundary))
                fail_msg("%s: no boundary line before child at %llu", what, (unsigned long long)h);
            if (!first) {
                uint64_t gap = ls - prev_end;
                bool ok = gap == 0 || (gap == 1 && d[prev_end] == '\n') ||
                          (gap == 2 && d[prev_end] == '\r' && d[prev_end + 1] == '\n');
                if (!ok)
                    fail_msg("%s: %llu bytes between a child and the next boundary", what,
                             (unsigned long long)gap);
            }
            first = false;
            prev_end = c->body_end;
        }
        /* After the last child: the end, or a line end and a boundary line. */
        if (m->last_child && m->last_child->body_end < len) {
            uint64_t e = m->last_child->body_end;
            if (d[e] == '\r')
                e++;
            if (e < len && d[e] == '\n')
                e++;
            if (!(e + 2 <= len && d[e] == '-' && d[e + 1] == '-'))
                fail_msg("%s: last child not followed by a boundary", what);
        }
    } else {
        assert_int_equal(n, 0);
    }
    for (const tern_mime_part *c = m->children; c; c = c->next)
        check_part(c, d, len, what);
}

/* Parses with the given chunking (0 whole, 1 byte by byte, 2 random). */
static tern_mime_part *parse_mode(tern_arena *a, const uint8_t *d, size_t len, int mode,
                                  unsigned seed, const tern_mime_limits *lim)
{
    tern_mime_parser *p = tern_mime_parser_new(a, lim);
    assert_non_null(p);
    size_t off = 0;
    while (off < len) {
        size_t n = mode == 0 ? len - off : mode == 1 ? 1 : 1 + (size_t)(rand_r(&seed) % 97);
        if (n > len - off)
            n = len - off;
        assert_int_equal(tern_mime_parser_feed(p, d + off, n), 0);
        off += n;
    }
    tern_mime_part *root = tern_mime_parser_finish(p);
    tern_mime_parser_free(p);
    assert_non_null(root);
    return root;
}

/* Parses every way, checks the trees are identical and consistent, and
 * returns the rendering (malloc'd). */
static char *parse_all(const uint8_t *d, size_t len, const tern_mime_limits *lim, const char *what)
{
    tern_buf ref;
    tern_buf_init(&ref, 0);
    for (int run = 0; run < 5; run++) {
        tern_arena a;
        tern_arena_init(&a, 0);
        int mode = run < 2 ? run : 2;
        tern_mime_part *root = parse_mode(&a, d, len, mode, (unsigned)run * 7919u, lim);
        check_part(root, d, len, what);
        assert_int_equal(root->header_offset, 0);
        assert_int_equal(root->body_end, len);
        tern_buf r;
        tern_buf_init(&r, 0);
        render(&r, root);
        tern_buf_append(&r, "", 1);
        if (run == 0) {
            tern_buf_append(&ref, r.data, r.len);
        } else if (strcmp((char *)r.data, (char *)ref.data) != 0) {
            fail_msg("%s: chunking mode %d gives\n%s\ninstead of\n%s", what, mode, (char *)r.data,
                     (char *)ref.data);
        }
        tern_buf_free(&r);
        tern_arena_free(&a);
    }
    return (char *)ref.data;
}

static char *data_path(const char *name)
{
    const char *root = getenv("TERN_TEST_DATA");
    assert_non_null(root);
    static char path[1024];
    snprintf(path, sizeof path, "%s/mime/%s", root, name);
    return path;
}

static uint8_t *load(const char *name, size_t *len_r)
{
    uint8_t *d = read_file(data_path(name), len_r);
    if (!d)
        fail_msg("cannot read %s", data_path(name));
    return d;
}

/* ---- the hand-written tricky messages ---------------------------------------- */

static void test_mime_expected_trees(void **state)
{
    (void)state;
    DIR *dp = opendir(data_path(""));
    assert_non_null(dp);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(dp))) {
        size_t nl = strlen(e->d_name);
        if (nl < 5 || strcmp(e->d_name + nl - 4, ".eml") != 0)
            continue;
        size_t len, tlen;
        uint8_t *d = load(e->d_name, &len);
        char tree[256];
        snprintf(tree, sizeof tree, "%.*s.tree", (int)(nl - 4), e->d_name);
        uint8_t *want = load(tree, &tlen);
        char *got = parse_all(d, len, NULL, e->d_name);
        if (strlen(got) != tlen || memcmp(got, want, tlen) != 0)
            fail_msg("%s:\n%s\nwant:\n%.*s", e->d_name, got, (int)tlen, (char *)want);
        free(got);
        free(want);
        free(d);
        n++;
    }
    closedir(dp);
    assert_true(n >= 12);
}

/* The same message with CRLF and with bare LF: the same tree shape, every
 * size smaller by the number of line ends before it. */
static void test_mime_bare_lf(void **state)
{
    (void)state;
    size_t l1, l2;
    uint8_t *crlf = load("nested.eml", &l1);
    uint8_t *lf = load("bare-lf.eml", &l2);
    tern_arena a;
    tern_arena_init(&a, 0);
    tern_mime_part *r1 = tern_mime_parse(&a, crlf, l1, NULL);
    tern_mime_part *r2 = tern_mime_parse(&a, lf, l2, NULL);
    assert_int_equal(l1 - l2, count_lf(crlf, 0, l1));
    assert_int_equal(tern_mime_count_parts(r1), 5);
    assert_int_equal(tern_mime_count_parts(r2), 5);
    const tern_mime_part *p1 = r1, *p2 = r2;
    while (p1 && p2) {
        assert_string_equal(p1->type, p2->type);
        assert_int_equal(p1->body_lines, p2->body_lines);
        assert_int_equal(p1->header_lines, p2->header_lines);
        assert_int_equal(p1->body_size - p2->body_size, p1->body_lines);
        assert_int_equal(p1->header_size - p2->header_size, p1->header_lines);
        assert_int_equal(p1->body_offset - p2->body_offset, count_lf(crlf, 0, p1->body_offset));
        p1 = p1->children ? p1->children : p1->next ? p1->next : p1->parent ? p1->parent->next : NULL;
        p2 = p2->children ? p2->children : p2->next ? p2->next : p2->parent ? p2->parent->next : NULL;
    }
    assert_null(p1);
    assert_null(p2);
    tern_arena_free(&a);
    free(crlf);
    free(lf);
}

/* ---- the shared corpus --------------------------------------------------------- */

static bool utf8_ok(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t k = tern_utf8_seq_len(s + i, n - i);
        if (!k)
            return false;
        i += k;
    }
    return true;
}

/* Flags anywhere in the tree, but not below an encoded message (whose
 * "message" is base64 text, so never well-formed). */
static unsigned all_flags(const tern_mime_part *m)
{
    unsigned f = 0;
    for (; m; m = m->next)
        f |= m->flags | ((m->flags & TERN_MIME_F_ENCODED_MESSAGE) ? 0 : all_flags(m->children));
    return f;
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
        free(parse_all(d, len, NULL, path));
        tern_arena a;
        tern_arena_init(&a, 0);
        tern_mime_part *r = tern_mime_parse(&a, d, len, NULL);
        assert_non_null(r);
        unsigned bad = TERN_MIME_F_NO_END | TERN_MIME_F_NO_BOUNDARY | TERN_MIME_F_HEADER_NO_END |
                       TERN_MIME_F_HEADER_TRUNCATED | TERN_MIME_F_LIMIT;
        if (sane && (all_flags(r) & bad))
            fail_msg("%s: a well-formed message parsed with flags %x", path, all_flags(r) & bad);
        /* Text and attachments: never out of bounds, always UTF-8. */
        tern_buf t;
        tern_buf_init(&t, 0);
        int rc = tern_mime_text_body(r, d, len, &t, NULL);
        assert_true(rc == 0 || rc == 1);
        if (!utf8_ok(t.data, t.len))
            fail_msg("%s: text body not UTF-8", path);
        tern_buf_free(&t);
        size_t na;
        for (tern_mime_attachment *at = tern_mime_attachments(&a, r, &na); at; at = at->next) {
            assert_non_null(at->type);
            if (at->filename && !utf8_ok((const uint8_t *)at->filename, strlen(at->filename)))
                fail_msg("%s: filename not UTF-8", path);
        }
        tern_arena_free(&a);
        free(d);
        files++;
    }
    closedir(dp);
    return files;
}

static void test_mime_corpus(void **state)
{
    (void)state;
    int n = corpus_dir("rfc", true) + corpus_dir("legacy", true) + corpus_dir("malformed", false);
    /* In CI the corpus is at ../shared: finding none there is a failure. */
    if (getenv("TERN_CORPUS"))
        assert_true(n > 50);
}

/* ---- parameters ------------------------------------------------------------------ */

static const char *pv(const tern_mime_param *l, const char *name)
{
    const tern_mime_param *p = tern_mime_param_get(l, name);
    return p ? p->value : NULL;
}

static void test_mime_params(void **state)
{
    (void)state;
    tern_arena a;
    tern_arena_init(&a, 0);
    const char *t, *st;
    tern_mime_param *p;
#define CV(s) tern_mime_parse_content_value(&a, s, strlen(s), &t, &st, &p)
    assert_int_equal(CV("Text/HTML ; Charset=\"UTF-8\" (comment); format = flowed"), 0);
    assert_string_equal(t, "text");
    assert_string_equal(st, "html");
    assert_string_equal(pv(p, "charset"), "UTF-8");
    assert_string_equal(pv(p, "format"), "flowed");
    /* RFC 2045's own example: a comment after an unquoted value. */
    assert_int_equal(CV("text/plain; charset=us-ascii (Plain text)"), 0);
    assert_string_equal(pv(p, "charset"), "us-ascii");
    /* Escapes in quoted strings, unquoted values with spaces, a missing ';'. */
    assert_int_equal(CV("a/b; x=\"q\\\"uo\\\\te\"; name=my file.pdf; y=1 z=2"), 0);
    assert_string_equal(pv(p, "x"), "q\"uo\\te");
    assert_string_equal(pv(p, "name"), "my file.pdf");
    assert_string_equal(pv(p, "y"), "1");
    assert_string_equal(pv(p, "z"), "2");
    /* Junk between parameters is skipped; the first of duplicates wins. */
    assert_int_equal(CV("a/b; junk; c=1; c=2; =x; d"), 0);
    assert_string_equal(pv(p, "c"), "1");
    assert_null(pv(p, "d"));
    /* RFC 2231: sections out of order, mixed encoded and plain; the
     * extended form wins over the plain fallback. */
    assert_int_equal(CV("application/x; title*2=\" end\"; title*0*=us-ascii'en'This%20is%20;"
                        " title*1*=%2A%2A%2Afun%2A%2A%2A; title=fallback"),
                     0);
    const tern_mime_param *q = tern_mime_param_get(p, "title");
    assert_non_null(q);
    assert_string_equal(q->value, "This is ***fun*** end");
    assert_true(q->extended);
    assert_string_equal(q->charset, "us-ascii");
    assert_string_equal(q->language, "en");
    assert_string_equal(q->raw, "us-ascii'en'This%20is%20%2A%2A%2Afun%2A%2A%2A%20end");
    assert_int_equal(CV("a/b; name*=iso-8859-1''%E9t%E9.txt"), 0);
    assert_string_equal(pv(p, "name"), "\xc3\xa9t\xc3\xa9.txt");
    /* A gap in the sections ends the value. */
    assert_int_equal(CV("a/b; n*0=a; n*1=b; n*3=d"), 0);
    assert_string_equal(pv(p, "n"), "ab");
    /* RFC 2047 in a plain value (invalid, but common). */
    assert_int_equal(CV("a/b; name=\"=?UTF-8?Q?r=C3=A9sum=C3=A9.pdf?=\""), 0);
    q = tern_mime_param_get(p, "name");
    assert_string_equal(q->value, "r\xc3\xa9sum\xc3\xa9.pdf");
    assert_string_equal(q->raw, "=?UTF-8?Q?r=C3=A9sum=C3=A9.pdf?=");
    /* No type: -1, parameters still read. */
    assert_int_equal(CV("; charset=utf-8"), -1);
    assert_null(t);
    assert_string_equal(pv(p, "charset"), "utf-8");
    assert_int_equal(CV("text"), 0);
    assert_null(st);
    /* A charset name that glibc folds into UTF-8, with bytes its UTF-8
     * decoder lets through: the value is still valid UTF-8 (found by
     * fuzzing). */
    assert_int_equal(CV("a/b; n*=utf<8''%FB%BD%BD%BD%BD%BDx; m=\"=?utf<8?q?=FB=BD=BD=BD=BD=BD?=\""), 0);
    q = tern_mime_param_get(p, "n");
    assert_true(utf8_ok((const uint8_t *)q->value, q->value_len));
    assert_int_equal(q->value[q->value_len - 1], 'x');
    q = tern_mime_param_get(p, "m");
    assert_true(utf8_ok((const uint8_t *)q->value, q->value_len));
    /* Controls never reach a decoded value. */
    assert_int_equal(CV("a/b; n*=utf-8''a%00b%0Ac"), 0);
    assert_string_equal(pv(p, "n"), "a b c");
#undef CV
    tern_arena_free(&a);
}

/* ---- sections, envelope, content ------------------------------------------------- */

static void test_mime_sections(void **state)
{
    (void)state;
    size_t len;
    uint8_t *d = load("rfc822.eml", &len);
    tern_arena a;
    tern_arena_init(&a, 0);
    tern_mime_part *r = tern_mime_parse(&a, d, len, NULL);
    const tern_mime_part *p;
#define SEC(s) tern_mime_part_by_section(r, s, strlen(s))
    assert_ptr_equal(SEC(""), r);
    p = SEC("1");
    assert_string_equal(p->subtype, "plain");
    assert_memory_equal(d + p->body_offset, "see attached", 12);
    p = SEC("2");
    assert_string_equal(p->type, "message");
    assert_true(p->flags & TERN_MIME_F_MESSAGE);
    /* BODY[2.HEADER] is the encapsulated message's header. */
    assert_memory_equal(d + p->children->header_offset, "From: \"Carol", 12);
    assert_string_equal(p->children->envelope->subject, "=?utf-8?q?inner_=C3=A9?=");
    assert_string_equal(p->children->envelope->to, "Dave <dave@example.test>, Eve <eve@example.test>");
    p = SEC("2.1");
    assert_non_null(p);
    assert_memory_equal(d + p->body_offset, "inner text", 10);
    p = SEC("2.2");
    assert_memory_equal(d + p->body_offset, "<b>inner</b>", 12);
    assert_null(SEC("2.3"));
    assert_null(SEC("3"));
    assert_null(SEC("0"));
    assert_null(SEC("1."));
    assert_null(SEC(".1"));
    assert_null(SEC("1..1"));
    assert_null(SEC("1x"));
    assert_null(SEC("99999999999999999999"));
    /* A non-multipart has only part 1, itself. */
    assert_ptr_equal(SEC("1.1"), SEC("1"));
    assert_null(SEC("1.2"));
    assert_string_equal(r->envelope->from, "a@example.test");
    assert_string_equal(r->envelope->subject, "forward");
    assert_null(r->envelope->cc);
    free(d);
    d = load("defaults.eml", &len);
    r = tern_mime_parse(&a, d, len, NULL);
    assert_ptr_equal(SEC("1"), r);
    assert_null(SEC("2"));
#undef SEC
    tern_arena_free(&a);
    free(d);
}

static void test_mime_content(void **state)
{
    (void)state;
    size_t len;
    uint8_t *d = load("nested.eml", &len);
    tern_arena a;
    tern_arena_init(&a, 0);
    tern_mime_part *r = tern_mime_parse(&a, d, len, NULL);
    tern_buf b;
    tern_buf_init(&b, 0);
    const tern_mime_part *tp;
    assert_int_equal(tern_mime_text_body(r, d, len, &b, &tp), 0);
    assert_int_equal(b.len, 13);
    assert_memory_equal(b.data, "Caf\xc3\xa9 au lait", 13);
    assert_ptr_equal(tp, r->children->children);
    /* BINARY of the PDF: base64 decoded. */
    b.len = 0;
    const tern_mime_part *pdf = tern_mime_part_by_section(r, "2", 1);
    assert_int_equal(tern_mime_part_decode(pdf, d, len, &b), 0);
    assert_int_equal(b.len, 9);
    assert_memory_equal(b.data, "%PDF-1.4\n", 9);
    assert_string_equal(pdf->content_id, "<pdf1@example.test>");
    assert_string_equal(pdf->description, "a document");
    size_t n;
    tern_mime_attachment *at = tern_mime_attachments(&a, r, &n);
    assert_int_equal(n, 1);
    assert_ptr_equal(at->part, pdf);
    assert_string_equal(at->filename, "doc.pdf");
    assert_string_equal(at->type, "application/pdf");
    assert_int_equal(at->size, 9);
    assert_null(at->next);
    /* A wrong message length reads nothing out of bounds. */
    b.len = 0;
    assert_int_equal(tern_mime_part_decode(pdf, d, 10, &b), 0);
    assert_int_equal(b.len, 0);
    free(d);

    d = load("rfc2231.eml", &len);
    r = tern_mime_parse(&a, d, len, NULL);
    at = tern_mime_attachments(&a, r, &n);
    assert_int_equal(n, 2);
    assert_string_equal(at->filename, "\xc3\xbc" "bersicht.txt"); /* filename* over name* */
    assert_string_equal(tern_mime_param_get(at->part->params, "name")->value,
                        "\xe2\x82\xac rates for 2026.txt");
    assert_string_equal(at->next->filename, "\xc3\xbc" "ber.png");
    assert_int_equal(tern_mime_text_body(r, d, len, &b, &tp), 1);
    assert_null(tp);
    free(d);

    /* HTML only, Latin-1 QP: converted to UTF-8 and to rough text. */
    static const char html[] =
        "Content-Type: text/html; charset=iso-8859-1\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        "<html><head><style>p {x: y}</style><script>alert(1)</script></head>"
        "<body><p>Gr=FC&szlig;e &amp; more<br>line &#233;&#x20AC;</p><!-- c --><div>end</div>"
        "</body></html>\r\n";
    r = tern_mime_parse(&a, (const uint8_t *)html, sizeof html - 1, NULL);
    b.len = 0;
    assert_int_equal(tern_mime_text_body(r, (const uint8_t *)html, sizeof html - 1, &b, &tp), 0);
    tern_buf_append(&b, "", 1);
    assert_string_equal((char *)b.data, "Gr\xc3\xbc&szlig;e & more\nline \xc3\xa9\xe2\x82\xac\nend");
    assert_null(tern_mime_find_text(r, false));
    tern_buf_free(&b);
    tern_arena_free(&a);
}

/* ---- limits -------------------------------------------------------------------------- */

static void test_mime_limits(void **state)
{
    (void)state;
    tern_buf m;
    tern_buf_init(&m, 0);
    /* 40 nested multiparts, boundary xNy (none a prefix of another). */
    for (int i = 0; i < 40; i++)
        tern_buf_printf(&m, "Content-Type: multipart/mixed; boundary=x%dy\r\n\r\n--x%dy\r\n", i, i);
    tern_buf_printf(&m, "Content-Type: text/plain\r\n\r\ndeep\r\n");
    for (int i = 39; i >= 0; i--)
        tern_buf_printf(&m, "--x%dy--\r\n", i);
    tern_mime_limits lim = {.max_depth = 5};
    char *got = parse_all(m.data, m.len, &lim, "deep");
    free(got);
    tern_arena a;
    tern_arena_init(&a, 0);
    tern_mime_part *r = tern_mime_parse(&a, m.data, m.len, &lim);
    const tern_mime_part *p = r;
    int depth = 0;
    while (p->children) {
        p = p->children;
        depth++;
    }
    assert_int_equal(depth, 5);
    assert_true(p->flags & TERN_MIME_F_LIMIT);
    assert_string_equal(p->type, "application");
    assert_string_equal(p->declared_type, "multipart");
    /* Its body runs to its parent's next boundary: the deepest inner ones
     * are opaque. */
    assert_true(p->body_size > 0);
    /* Below the limit, all 40 and the text. */
    lim.max_depth = 40;
    r = tern_mime_parse(&a, m.data, m.len, &lim);
    assert_int_equal(tern_mime_count_parts(r), 41);
    assert_int_equal(all_flags(r) & (TERN_MIME_F_LIMIT | TERN_MIME_F_NO_END), 0);
    tern_arena_free(&a);

    /* max_parts: the rest is body of the open parts. */
    m.len = 0;
    tern_buf_printf(&m, "Content-Type: multipart/mixed; boundary=x\r\n\r\n");
    for (int i = 0; i < 10; i++)
        tern_buf_printf(&m, "--x\r\nContent-Type: text/plain\r\n\r\npart %d\r\n", i);
    tern_buf_printf(&m, "--x--\r\n");
    lim = (tern_mime_limits){.max_parts = 4};
    free(parse_all(m.data, m.len, &lim, "parts"));
    tern_arena_init(&a, 0);
    r = tern_mime_parse(&a, m.data, m.len, &lim);
    assert_int_equal(tern_mime_count_parts(r), 4);
    assert_true(r->flags & TERN_MIME_F_LIMIT);
    assert_int_equal(r->body_end, m.len);

    /* max_header_bytes: the header is cut there, the rest is body. */
    m.len = 0;
    tern_buf_printf(&m, "Subject: ");
    for (int i = 0; i < 100; i++)
        tern_buf_printf(&m, "long ");
    tern_buf_printf(&m, "\r\nContent-Type: text/html\r\n\r\nbody\r\n");
    lim = (tern_mime_limits){.max_header_bytes = 100};
    free(parse_all(m.data, m.len, &lim, "header"));
    r = tern_mime_parse(&a, m.data, m.len, &lim);
    assert_int_equal(r->header_size, 100);
    assert_true(r->flags & TERN_MIME_F_HEADER_TRUNCATED);
    assert_string_equal(r->type, "text");
    assert_string_equal(r->subtype, "plain"); /* the Content-Type was past the cut */
    tern_arena_free(&a);
    tern_buf_free(&m);
}

/* Small inputs that once were edge cases: empty, no header end, a lone
 * boundary, CR without LF. Parsed every way; consistency is checked. */
static void test_mime_edges(void **state)
{
    (void)state;
    static const char *cases[] = {
        "",
        "\r\n",
        "\n",
        "Subject: x",
        "Subject: x\r\n",
        "Content-Type: multipart/mixed; boundary=a\r\n\r\n",
        "Content-Type: multipart/mixed; boundary=a\r\n\r\n--a",
        "Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r",
        "Content-Type: multipart/mixed; boundary=a\r\n\r\n--a--",
        "Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n\r\n--a--\r\n",
        "Content-Type: multipart/mixed; boundary=a\n\n--a\rx\n--a--",
        "Content-Type: multipart/mixed; boundary=a\r\n\r\n-\r\n--\r\n--a\r\n",
        "Content-Type: message/rfc822\r\n\r\n",
        "Content-Type: message/rfc822\r\n\r\nContent-Type: message/rfc822\r\n\r\nx",
        "Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n",
        "Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\n--d--",
        /* an empty last part right after a boundary line's LF (found by fuzzing) */
        "Content-Type: multipart/mixed; boundary=o\n\n--o\nContent-Type: multipart/mixed;"
        " boundary=i\n\n--i\n--o--\n",
        "Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: message/rfc822\r\n"
        "\r\n--o--\r\n",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char what[32];
        snprintf(what, sizeof what, "edge %zu", i);
        free(parse_all((const uint8_t *)cases[i], strlen(cases[i]), NULL, what));
    }
}

/* ---- Dovecot's answers ----------------------------------------------------------
 * tests/data/mime/dovecot/NAME.bs and NAME.env hold Dovecot 2.3.19's IMAP
 * BODYSTRUCTURE and ENVELOPE for a message (from "doveadm fetch
 * 'imap.bodystructure imap.envelope'" over a Maildir of the corpus and of
 * tests/data/mime; sizes there count line ends as CRLF).
 * Every part's type, size and line count, and every envelope address list,
 * must agree, except where mime.h documents a deliberate difference. */

typedef struct sx sx;
struct sx {
    bool list, nil;
    const char *s; /* string or atom */
    sx **v;
    size_t n;
};

static sx *sx_parse(tern_arena *a, const char *d, size_t len, size_t *i)
{
    while (*i < len && (d[*i] == ' ' || d[*i] == '\r' || d[*i] == '\n'))
        (*i)++;
    assert_true(*i < len);
    sx *x = tern_arena_alloc(a, sizeof *x);
    if (d[*i] == '(') {
        x->list = true;
        (*i)++;
        sx *items[64];
        for (;;) {
            while (*i < len && (d[*i] == ' ' || d[*i] == '\r' || d[*i] == '\n'))
                (*i)++;
            assert_true(*i < len);
            if (d[*i] == ')') {
                (*i)++;
                break;
            }
            assert_true(x->n < 64);
            items[x->n++] = sx_parse(a, d, len, i);
        }
        x->v = tern_arena_alloc(a, (x->n + 1) * sizeof *x->v);
        memcpy(x->v, items, x->n * sizeof *x->v);
    } else if (d[*i] == '"') {
        tern_buf b;
        tern_buf_init(&b, 0);
        for ((*i)++; *i < len && d[*i] != '"'; (*i)++) {
            if (d[*i] == '\\')
                (*i)++;
            tern_buf_append(&b, d + *i, 1);
        }
        (*i)++;
        x->s = tern_arena_strndup(a, b.len ? (char *)b.data : "", b.len);
        tern_buf_free(&b);
    } else if (d[*i] == '{') {
        size_t n = strtoul(d + *i + 1, NULL, 10);
        while (d[*i] != '\n')
            (*i)++;
        (*i)++;
        x->s = tern_arena_strndup(a, d + *i, n);
        *i += n;
    } else {
        size_t s = *i;
        while (*i < len && d[*i] != ' ' && d[*i] != '(' && d[*i] != ')' && d[*i] != '\n')
            (*i)++;
        if (*i - s == 3 && memcmp(d + s, "NIL", 3) == 0)
            x->nil = true;
        else
            x->s = tern_arena_strndup(a, d + s, *i - s);
    }
    return x;
}

static bool ieq_str(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    for (; *a && *b; a++, b++) {
        char x = *a >= 'A' && *a <= 'Z' ? (char)(*a + 32) : *a;
        char y = *b >= 'A' && *b <= 'Z' ? (char)(*b + 32) : *b;
        if (x != y)
            return false;
    }
    return *a == *b;
}

/* Size as IMAP counts it: every bare LF as CRLF. */
static uint64_t crlf_size(const uint8_t *d, uint64_t s, uint64_t e)
{
    uint64_t n = e - s;
    for (uint64_t i = s; i < e; i++)
        if (d[i] == '\n' && (i == s || d[i - 1] != '\r'))
            n++;
    return n;
}

static int dv_mismatch;

#define DV_FAIL(...) do { fprintf(stderr, "%s %s: ", what, path); fprintf(stderr, __VA_ARGS__); \
                          fprintf(stderr, "\n"); dv_mismatch++; return; } while (0)

static const char *nstr(const sx *x)
{
    return x->nil ? NULL : x->s;
}

/* Dovecot's address list (or NIL) against ours for the same header. */
static void cmp_addresses(tern_arena *a, const sx *dv, const char *hdr, const char *what,
                          const char *path)
{
    size_t n = 0;
    tern_address *l = hdr ? tern_address_list_parse(a, hdr, strlen(hdr), 0, &n) : NULL;
    if (dv->nil) {
        if (l)
            DV_FAIL("Dovecot has no addresses, we have %zu", n);
        return;
    }
    size_t k = 0;
    for (; l && k < dv->n; l = l->next, k++) {
        const sx *e = dv->v[k];
        const char *name = nstr(e->v[0]), *adl = nstr(e->v[1]), *mbox = nstr(e->v[2]),
                   *host = nstr(e->v[3]);
        if (l->kind == TERN_ADDRESS_GROUP_START) {
            if (!(host == NULL && mbox && l->name && strcmp(mbox, l->name) == 0))
                DV_FAIL("group %s vs %s", mbox ? mbox : "NIL", l->name ? l->name : "NIL");
        } else if (l->kind == TERN_ADDRESS_GROUP_END) {
            if (mbox || host)
                DV_FAIL("group end vs %s@%s", mbox ? mbox : "NIL", host ? host : "NIL");
        } else {
            /* Dovecot's stand-ins for what an invalid mailbox lacks */
            const char *local = l->local ? l->local : l->invalid ? "MISSING_MAILBOX" : NULL;
            const char *domain = l->domain ? l->domain : l->invalid ? "MISSING_DOMAIN" : NULL;
            if (!mbox || !local || strcmp(mbox, local) != 0 || !ieq_str(host, domain) ||
                !((name == NULL && l->name == NULL) ||
                  (name && l->name && strcmp(name, l->name) == 0)) ||
                !((adl == NULL && l->route == NULL) || (adl && l->route && strcmp(adl, l->route) == 0)))
                DV_FAIL("address (%s %s %s %s) vs (%s %s %s %s)", name ? name : "NIL",
                        adl ? adl : "NIL", mbox ? mbox : "NIL", host ? host : "NIL",
                        l->name ? l->name : "NIL", l->route ? l->route : "NIL",
                        l->local ? l->local : "NIL", l->domain ? l->domain : "NIL");
        }
    }
    if (l || k != dv->n)
        DV_FAIL("%zu addresses vs %zu", dv->n, n);
}

static void cmp_envelope(tern_arena *a, const sx *env, const tern_mime_part *m, const char *what,
                         const char *path)
{
    const tern_mime_envelope *e = m->envelope;
    assert_non_null(e);
    if (!env->list || env->n != 10)
        fail_msg("%s %s: an ENVELOPE of %zu items", what, path, env->n);
    if (!((env->v[1]->nil && !e->subject) || (e->subject && env->v[1]->s &&
                                              strcmp(env->v[1]->s, e->subject) == 0)))
        DV_FAIL("subject");
    /* Dovecot writes From for a missing Sender and Reply-To (RFC 3501). */
    const char *hdrs[6] = {e->from, e->sender ? e->sender : e->from,
                           e->reply_to ? e->reply_to : e->from, e->to, e->cc, e->bcc};
    for (int i = 0; i < 6; i++)
        cmp_addresses(a, env->v[2 + i], hdrs[i], what, path);
}

static void cmp_part(tern_arena *a, const sx *dv, const tern_mime_part *m, const uint8_t *d,
                     const char *what, const char *path)
{
    char sub[256];
    if (dv->v[0]->list) {
        size_t n = 0;
        while (n < dv->n && dv->v[n]->list)
            n++;
        if (!(m->flags & TERN_MIME_F_MULTIPART))
            DV_FAIL("multipart vs %s/%s", m->type, m->subtype);
        if (!ieq_str(dv->v[n]->s, m->subtype))
            DV_FAIL("subtype %s vs %s", dv->v[n]->s, m->subtype);
        if (m->n_children == 0 && n == 1)
            return; /* Dovecot's stand-in empty text/plain for a multipart without parts */
        if (n != m->n_children)
            DV_FAIL("%zu parts vs %zu", n, m->n_children);
        const tern_mime_part *c = m->children;
        for (size_t k = 0; k < n; k++, c = c->next) {
            snprintf(sub, sizeof sub, "%s.%zu", path, k + 1);
            cmp_part(a, dv->v[k], c, d, what, sub);
        }
        return;
    }
    if (!ieq_str(dv->v[0]->s, m->type) || !ieq_str(dv->v[1]->s, m->subtype))
        DV_FAIL("type %s/%s vs %s/%s", dv->v[0]->s, dv->v[1]->s, m->type, m->subtype);
    uint64_t size = strtoull(dv->v[6]->s, NULL, 10);
    if (size != crlf_size(d, m->body_offset, m->body_end))
        DV_FAIL("size %llu vs %llu", (unsigned long long)size,
                (unsigned long long)crlf_size(d, m->body_offset, m->body_end));
    if (ieq_str(m->type, "text") && strtoull(dv->v[7]->s, NULL, 10) != m->body_lines)
        DV_FAIL("lines %s vs %llu", dv->v[7]->s, (unsigned long long)m->body_lines);
    if (m->flags & TERN_MIME_F_MESSAGE) {
        if (strtoull(dv->v[9]->s, NULL, 10) != m->body_lines)
            DV_FAIL("message lines %s vs %llu", dv->v[9]->s, (unsigned long long)m->body_lines);
        snprintf(sub, sizeof sub, "%s.M", path);
        cmp_envelope(a, dv->v[7], m->children, what, sub);
        cmp_part(a, dv->v[8], m->children, d, what, sub);
    }
}

/* Where we differ from Dovecot on purpose (see mime.h). */
static const char *dovecot_differs[] = {
    "defaults",       /* "Content-Type: text": text/plain here, "text" "" there */
    "no-boundary",    /* a multipart without boundary: text/plain here */
    "malformed-017",  /* a missing ';' before boundary=: tolerated here */
};

static void test_mime_dovecot(void **state)
{
    (void)state;
    DIR *dp = opendir(data_path("dovecot"));
    assert_non_null(dp);
    struct dirent *e;
    int checked = 0, corpus = 0;
    while ((e = readdir(dp))) {
        size_t nl = strlen(e->d_name);
        if (nl < 4 || strcmp(e->d_name + nl - 3, ".bs") != 0)
            continue;
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)(nl - 3), e->d_name);
        bool skip = false;
        for (size_t i = 0; i < sizeof dovecot_differs / sizeof dovecot_differs[0]; i++)
            skip |= strcmp(name, dovecot_differs[i]) == 0;
        if (skip)
            continue;
        char path[2048];
        const char *dash = strchr(name, '-');
        const char *croot = getenv("TERN_CORPUS");
        bool in_corpus = dash && (strncmp(name, "rfc-", 4) == 0 || strncmp(name, "legacy-", 7) == 0 ||
                                  strncmp(name, "malformed-", 10) == 0);
        if (in_corpus) {
            if (!croot)
                continue;
            snprintf(path, sizeof path, "%s/mime/%.*s/%s.eml", croot, (int)(dash - name), name,
                     dash + 1);
            corpus++;
        } else {
            snprintf(path, sizeof path, "%s", data_path(""));
            snprintf(path + strlen(path), sizeof path - strlen(path), "%s.eml", name);
        }
        size_t len, blen;
        uint8_t *d = read_file(path, &len);
        if (!d)
            fail_msg("cannot read %s", path);
        char bsname[300];
        snprintf(bsname, sizeof bsname, "dovecot/%s", e->d_name);
        uint8_t *bs = load(bsname, &blen);
        tern_arena a;
        tern_arena_init(&a, 0);
        /* One body structure: wrapped, it is a multipart's list or a leaf's fields. */
        char *wrapped = tern_arena_printf(&a, "(%.*s)", (int)blen, (char *)bs);
        size_t i = 0;
        sx *dv = sx_parse(&a, wrapped, strlen(wrapped), &i);
        tern_mime_part *r = tern_mime_parse(&a, d, len, NULL);
        int before = dv_mismatch;
        cmp_part(&a, dv, r, d, name, "");
        /* NAME.env: the message's own ENVELOPE. */
        snprintf(bsname, sizeof bsname, "dovecot/%s.env", name);
        size_t elen;
        uint8_t *env = load(bsname, &elen);
        char *ew = tern_arena_printf(&a, "(%.*s)", (int)elen, (char *)env);
        i = 0;
        cmp_envelope(&a, sx_parse(&a, ew, strlen(ew), &i), r, name, "envelope");
        free(env);
        if (dv_mismatch != before)
            fprintf(stderr, "  (%s)\n", path);
        tern_arena_free(&a);
        free(bs);
        free(d);
        checked++;
    }
    closedir(dp);
    assert_int_equal(dv_mismatch, 0);
    assert_true(checked >= 14);
    if (getenv("TERN_CORPUS"))
        assert_true(corpus > 50);
}

/* The forms a boundary parameter comes in, and the ones refused. */
static void test_mime_boundary_forms(void **state)
{
    (void)state;
    static const struct {
        const char *param, *line;
        bool ok;
    } cases[] = {
        {"boundary=simple", "simple", true},
        {"boundary=\"with space\"", "with space", true},
        {"boundary*=us-ascii''ext%2Dended", "ext-ended", true},
        {"boundary*0=\"con\"; boundary*1=tinued", "continued", true},
        {"BOUNDARY=\"Upper\"", "Upper", true},
        {"boundary=\"\"", "", false},
        {"charset=x", "x", false},
    };
    tern_arena a;
    tern_arena_init(&a, 0);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tern_buf m;
        tern_buf_init(&m, 0);
        tern_buf_printf(&m, "Content-Type: multipart/mixed; %s\r\n\r\n--%s\r\n\r\nbody\r\n--%s--\r\n",
                        cases[i].param, cases[i].line, cases[i].line);
        tern_mime_part *r = tern_mime_parse(&a, m.data, m.len, NULL);
        if (cases[i].ok) {
            assert_true(r->flags & TERN_MIME_F_MULTIPART);
            assert_string_equal(r->boundary, cases[i].line);
            assert_int_equal(r->n_children, 1);
            assert_memory_equal(m.data + r->children->body_offset, "body", 4);
            assert_int_equal(r->children->body_size, 4);
        } else {
            assert_true(r->flags & TERN_MIME_F_NO_BOUNDARY);
            assert_string_equal(r->type, "text");
            assert_string_equal(r->declared_type, "multipart");
            assert_null(r->children);
        }
        tern_buf_free(&m);
    }
    /* Longer than TERN_MIME_BOUNDARY_MAX: matched on that prefix (Dovecot's
     * rule), so two that differ only past it are the same boundary. */
    char longb[TERN_MIME_BOUNDARY_MAX + 3];
    memset(longb, 'b', sizeof longb - 1);
    longb[sizeof longb - 1] = '\0';
    tern_buf m;
    tern_buf_init(&m, 0);
    tern_buf_printf(&m, "Content-Type: multipart/mixed; boundary=%sX\r\n\r\n--%sX\r\n\r\nx\r\n"
                    "--%sY\r\n\r\ny\r\n--%sX--\r\nepilogue\r\n", longb, longb, longb, longb);
    free(parse_all(m.data, m.len, NULL, "long boundary"));
    tern_mime_part *r = tern_mime_parse(&a, m.data, m.len, NULL);
    assert_true(r->flags & TERN_MIME_F_MULTIPART);
    assert_int_equal(strlen(r->boundary), TERN_MIME_BOUNDARY_MAX);
    assert_int_equal(r->n_children, 2);
    assert_memory_equal(m.data + r->last_child->body_offset, "y", 1);
    assert_int_equal(r->last_child->body_size, 1);
    assert_false(r->flags & TERN_MIME_F_NO_END); /* the whole boundary then "--" closes */
    /* The parameter itself keeps every character. */
    assert_int_equal(strlen(tern_mime_param_get(r->params, "boundary")->value), sizeof longb);
    tern_buf_free(&m);
    tern_arena_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mime_expected_trees),
        cmocka_unit_test(test_mime_bare_lf),
        cmocka_unit_test(test_mime_corpus),
        cmocka_unit_test(test_mime_params),
        cmocka_unit_test(test_mime_sections),
        cmocka_unit_test(test_mime_content),
        cmocka_unit_test(test_mime_limits),
        cmocka_unit_test(test_mime_edges),
        cmocka_unit_test(test_mime_boundary_forms),
        cmocka_unit_test(test_mime_dovecot),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
