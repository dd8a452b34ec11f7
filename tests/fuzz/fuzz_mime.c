/* libFuzzer target for the MIME parser (lib/mime.c), its content helpers
 * (lib/mime_content.c) and the QP decoder/encoder (lib/qp.c). Input:
 * arbitrary bytes; the first byte picks the limits and how the rest is cut
 * into feeds. Checked: any chunking gives the same tree as one feed; every
 * part's offsets are in order and inside the input, its sizes and LF
 * counts match the bytes, children lie inside their parent, in order;
 * the part count respects max_parts and the depth max_depth; the text
 * body and filenames are valid UTF-8; section lookups return parts of the
 * tree; QP decoding is chunking-independent and QP encoding round-trips.
 * Any broken invariant calls abort(). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/mime.h"
#include "lib/qp.h"
#include "lib/rfc2047.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

static void check_utf8(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t k = tern_utf8_seq_len(s + i, n - i);
        CHECK(k > 0);
        i += k;
    }
}

static uint64_t lf(const uint8_t *d, uint64_t s, uint64_t e)
{
    uint64_t n = 0;
    for (uint64_t i = s; i < e; i++)
        n += d[i] == '\n';
    return n;
}

static void str(tern_buf *o, const char *s)
{
    if (s)
        tern_buf_append(o, s, strlen(s) + 1);
    else
        tern_buf_append(o, "\1", 1);
}

/* Checks the part and its subtree; appends a digest of it to `o`. */
static size_t walk(const tern_mime_part *m, const uint8_t *d, size_t len,
                   const tern_mime_limits *lim, tern_buf *o)
{
    size_t parts = 1;
    CHECK(m->header_offset <= m->body_offset && m->body_offset <= m->body_end && m->body_end <= len);
    CHECK(m->header_size == m->body_offset - m->header_offset);
    CHECK(m->body_size == m->body_end - m->body_offset);
    CHECK(m->header_lines == lf(d, m->header_offset, m->body_offset));
    CHECK(m->body_lines == lf(d, m->body_offset, m->body_end));
    CHECK(m->depth <= lim->max_depth);
    CHECK(m->type && m->subtype && m->declared_type && m->declared_subtype && m->encoding_name);
    tern_buf_append(o, &m->header_offset, sizeof m->header_offset);
    tern_buf_append(o, &m->body_offset, sizeof m->body_offset);
    tern_buf_append(o, &m->body_end, sizeof m->body_end);
    tern_buf_append(o, &m->flags, sizeof m->flags);
    str(o, m->type);
    str(o, m->subtype);
    str(o, m->charset);
    str(o, m->disposition);
    str(o, m->content_id);
    for (const tern_mime_param *p = m->params; p; p = p->next) {
        str(o, p->name);
        str(o, p->value);
        str(o, p->raw);
        CHECK(strlen(p->value) == p->value_len);
        check_utf8((const uint8_t *)p->value, p->value_len);
        for (size_t i = 0; i < p->value_len; i++)
            CHECK((uint8_t)p->value[i] >= 0x20 && p->value[i] != 0x7f);
    }
    uint64_t prev = m->body_offset;
    size_t n = 0;
    for (const tern_mime_part *c = m->children; c; c = c->next) {
        CHECK(c->parent == m && c->depth == m->depth + 1);
        CHECK(c->header_offset >= prev && c->body_end <= m->body_end);
        prev = c->body_end;
        n++;
        parts += walk(c, d, len, lim, o);
    }
    CHECK(n == m->n_children);
    if (m->flags & TERN_MIME_F_MESSAGE)
        CHECK(n == 1 && m->children->header_offset == m->body_offset &&
              m->children->body_end == m->body_end);
    if (!(m->flags & (TERN_MIME_F_MESSAGE | TERN_MIME_F_MULTIPART)))
        CHECK(n == 0);
    return parts;
}

static tern_mime_part *parse(tern_arena *a, const uint8_t *in, size_t len,
                             const tern_mime_limits *lim, uint8_t pattern)
{
    tern_mime_parser *p = tern_mime_parser_new(a, lim);
    CHECK(p);
    size_t off = 0;
    unsigned step = 0;
    while (off < len) {
        size_t n = pattern == 0 ? len - off : 1 + ((pattern >> (step++ % 8)) & 7);
        if (n > len - off)
            n = len - off;
        CHECK(tern_mime_parser_feed(p, in + off, n) == 0);
        off += n;
    }
    tern_mime_part *r = tern_mime_parser_finish(p);
    tern_mime_parser_free(p);
    CHECK(r);
    return r;
}

static void content(tern_arena *a, const tern_mime_part *r, const uint8_t *in, size_t len)
{
    tern_buf t;
    tern_buf_init(&t, 0);
    int rc = tern_mime_text_body(r, in, len, &t, NULL);
    CHECK(rc == 0 || rc == 1);
    check_utf8(t.data, t.len);
    tern_buf_free(&t);
    size_t n;
    for (tern_mime_attachment *at = tern_mime_attachments(a, r, &n); at; at = at->next)
        if (at->filename)
            check_utf8((const uint8_t *)at->filename, strlen(at->filename));
    /* Every leaf decodes within bounds. */
    for (const tern_mime_part *m = r; m;) {
        tern_buf b;
        tern_buf_init(&b, 0);
        CHECK(tern_mime_part_decode(m, in, len, &b) == 0);
        CHECK(b.len <= m->body_size);
        tern_buf_free(&b);
        if (m->children) {
            m = m->children;
            continue;
        }
        while (m && !m->next)
            m = m->parent;
        if (m)
            m = m->next;
    }
    /* Sections made of the input's own bytes. */
    for (size_t i = 0; i + 6 <= len && i < 64; i += 6) {
        const tern_mime_part *p = tern_mime_part_by_section(r, (const char *)in + i, 6);
        (void)p;
    }
    CHECK(tern_mime_part_by_section(r, "", 0) == r);
}

static void qp(const uint8_t *in, size_t len, uint8_t pattern)
{
    tern_buf a, b, e;
    tern_buf_init(&a, 0);
    tern_buf_init(&b, 0);
    tern_buf_init(&e, 0);
    tern_qp_decoder d;
    tern_qp_decoder_init(&d);
    CHECK(tern_qp_decode(&d, &a, in, len) == 0 && tern_qp_decode_finish(&d, &a) == 0);
    tern_qp_decoder_init(&d);
    unsigned step = 0;
    for (size_t off = 0; off < len;) {
        size_t n = 1 + ((pattern >> (step++ % 8)) & 7);
        if (n > len - off)
            n = len - off;
        CHECK(tern_qp_decode(&d, &b, in + off, n) == 0);
        off += n;
    }
    CHECK(tern_qp_decode_finish(&d, &b) == 0);
    CHECK(a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0));
    CHECK(a.len <= len);
    /* Binary mode round trip. */
    CHECK(tern_qp_encode(&e, in, len, TERN_QP_BINARY) == 0);
    b.len = 0;
    tern_qp_decoder_init(&d);
    CHECK(tern_qp_decode(&d, &b, e.data, e.len) == 0 && tern_qp_decode_finish(&d, &b) == 0);
    CHECK(b.len == len && (len == 0 || memcmp(b.data, in, len) == 0));
    tern_buf_free(&a);
    tern_buf_free(&b);
    tern_buf_free(&e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t ctl = data[0];
    const uint8_t *in = data + 1;
    size_t len = size - 1;
    tern_mime_limits lim = {.max_depth = 32, .max_parts = 1000, .max_header_bytes = 256 * 1024};
    if (ctl & 1) {
        lim.max_depth = 1 + ((ctl >> 1) & 7);
        lim.max_parts = 1 + ((ctl >> 4) & 15);
        lim.max_header_bytes = 1 + (size_t)(ctl >> 2) * 4;
    }
    tern_arena a;
    tern_arena_init(&a, 0);
    tern_buf da, db;
    tern_buf_init(&da, 0);
    tern_buf_init(&db, 0);
    tern_mime_part *r1 = parse(&a, in, len, &lim, 0);
    tern_mime_part *r2 = parse(&a, in, len, &lim, (uint8_t)(ctl | 1));
    CHECK(r1->header_offset == 0 && r1->body_end == len);
    size_t n1 = walk(r1, in, len, &lim, &da);
    size_t n2 = walk(r2, in, len, &lim, &db);
    CHECK(n1 == n2 && n1 <= lim.max_parts && n1 == tern_mime_count_parts(r1));
    CHECK(da.len == db.len && memcmp(da.data, db.data, da.len) == 0);
    content(&a, r1, in, len);
    tern_buf_free(&da);
    tern_buf_free(&db);
    tern_arena_free(&a);
    qp(in, len < 4096 ? len : 4096, ctl);
    return 0;
}
