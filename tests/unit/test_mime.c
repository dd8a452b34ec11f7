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

static unsigned all_flags(const tern_mime_part *m)
{
    unsigned f = 0;
    for (; m; m = m->next)
        f |= m->flags | all_flags(m->children);
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
    /* Longer than TERN_MIME_BOUNDARY_MAX: refused. */
    char longb[TERN_MIME_BOUNDARY_MAX + 2];
    memset(longb, 'b', sizeof longb - 1);
    longb[sizeof longb - 1] = '\0';
    tern_buf m;
    tern_buf_init(&m, 0);
    tern_buf_printf(&m, "Content-Type: multipart/mixed; boundary=%s\r\n\r\n--%s\r\n\r\nx\r\n", longb, longb);
    tern_mime_part *r = tern_mime_parse(&a, m.data, m.len, NULL);
    assert_true(r->flags & TERN_MIME_F_NO_BOUNDARY);
    m.len = 0;
    longb[TERN_MIME_BOUNDARY_MAX] = '\0'; /* exactly the maximum: fine */
    tern_buf_printf(&m, "Content-Type: multipart/mixed; boundary=%s\r\n\r\n--%s\r\n\r\nx\r\n", longb, longb);
    free(parse_all(m.data, m.len, NULL, "long boundary"));
    r = tern_mime_parse(&a, m.data, m.len, NULL);
    assert_true(r->flags & TERN_MIME_F_MULTIPART);
    assert_int_equal(r->n_children, 1);
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
