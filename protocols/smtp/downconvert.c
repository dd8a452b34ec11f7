/* 8BITMIME downconversion (see downconvert.h). The MIME parser gives the
 * tree with byte offsets; this walks it and writes the message again,
 * copying every span it does not change byte for byte, so a message that
 * needs nothing comes out identical (and is not copied at all). Input: a
 * message whose content is untrusted; the MIME parser's limits bound the
 * tree, and a part it did not descend into is copied as it is. */
#include "protocols/smtp/downconvert.h"

#include <string.h>
#include <strings.h>

#include "lib/arena.h"
#include "lib/base64.h"
#include "lib/mime.h"
#include "lib/qp.h"

bool tern_has_8bit(const uint8_t *msg, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (msg[i] & 0x80)
            return true;
    return false;
}

static bool is_container(const tern_mime_part *p)
{
    return (p->flags & (TERN_MIME_F_MULTIPART | TERN_MIME_F_MESSAGE)) && p->children &&
           !(p->flags & TERN_MIME_F_ENCODED_MESSAGE);
}

/* Does anything under p need converting? */
static bool needs(const tern_mime_part *p, const uint8_t *msg)
{
    if (is_container(p)) {
        for (const tern_mime_part *c = p->children; c; c = c->next)
            if (needs(c, msg))
                return true;
        return false;
    }
    if (p->encoding != TERN_MIME_ENC_7BIT && p->encoding != TERN_MIME_ENC_8BIT &&
        p->encoding != TERN_MIME_ENC_BINARY)
        return false; /* QP and base64 are 7-bit already; unknown ones we cannot touch */
    if (p->flags & (TERN_MIME_F_LIMIT | TERN_MIME_F_HEADER_TRUNCATED | TERN_MIME_F_HEADER_NO_END))
        return false;
    /* A multipart or message the parser found no parts in: encoding it
     * would turn its text into something else; leave it. */
    if (p->flags & (TERN_MIME_F_MULTIPART | TERN_MIME_F_MESSAGE))
        return false;
    return tern_has_8bit(msg + p->body_offset, (size_t)(p->body_end - p->body_offset));
}

/* The header ends with its blank line: where that line starts, else
 * (a header cut short) -1, and the part is not rewritten. */
static long blank_line(const uint8_t *h, size_t n)
{
    if (n >= 2 && h[n - 2] == '\r' && h[n - 1] == '\n') {
        if (n == 2 || h[n - 3] == '\n')
            return (long)(n - 2);
    } else if (n >= 1 && h[n - 1] == '\n') {
        if (n == 1 || h[n - 2] == '\n')
            return (long)(n - 1);
    }
    return -1;
}

static bool field_is(const uint8_t *line, size_t n, const char *name)
{
    size_t k = strlen(name);
    if (n <= k || strncasecmp((const char *)line, name, k) != 0)
        return false;
    size_t i = k;
    while (i < n && (line[i] == ' ' || line[i] == '\t'))
        i++;
    return i < n && line[i] == ':';
}

/* Writes the header with every Content-Transfer-Encoding field dropped
 * and `cte` added before the blank line (and MIME-Version when the root
 * part gets an encoding and has none). */
static int write_header(tern_buf *out, const uint8_t *h, size_t n, const char *cte, bool root)
{
    long blank = blank_line(h, n);
    if (blank < 0)
        return tern_buf_append(out, h, n);
    bool drop = false, have_version = false;
    int r = 0;
    for (size_t i = 0; i < (size_t)blank && r == 0;) {
        const uint8_t *nl = memchr(h + i, '\n', (size_t)blank - i);
        size_t end = nl ? (size_t)(nl - h) + 1 : (size_t)blank;
        const uint8_t *line = h + i;
        size_t ln = end - i;
        if (line[0] != ' ' && line[0] != '\t') {
            drop = field_is(line, ln, "Content-Transfer-Encoding");
            if (field_is(line, ln, "MIME-Version"))
                have_version = true;
        }
        if (!drop)
            r = tern_buf_append(out, line, ln);
        i = end;
    }
    if (r == 0 && root && !have_version)
        r = tern_buf_append_str(out, "MIME-Version: 1.0\r\n");
    if (r == 0)
        r = tern_buf_printf(out, "Content-Transfer-Encoding: %s\r\n", cte);
    if (r == 0)
        r = tern_buf_append(out, h + blank, n - (size_t)blank);
    return r;
}

/* QP's soft line breaks make new line starts: one that reads as a
 * boundary of an enclosing multipart would split the part. */
static bool clashes(const uint8_t *enc, size_t n, const tern_mime_part *p)
{
    for (size_t i = 0; i + 2 < n; i++) {
        if ((i > 0 && enc[i - 1] != '\n') || enc[i] != '-' || enc[i + 1] != '-')
            continue;
        for (const tern_mime_part *q = p->parent; q; q = q->parent) {
            if (q->boundary == NULL)
                continue;
            size_t bl = strlen(q->boundary);
            if (bl > TERN_MIME_BOUNDARY_MAX)
                bl = TERN_MIME_BOUNDARY_MAX;
            if (n - i - 2 >= bl && memcmp(enc + i + 2, q->boundary, bl) == 0)
                return true;
        }
    }
    return false;
}

/* Base64 in lines of 76 (RFC 2045 6.8): it has no '-', so no boundary. */
static int base64_lines(tern_buf *out, const uint8_t *in, size_t len)
{
    char line[80];
    for (size_t i = 0; i < len; i += 57) {
        size_t k = len - i < 57 ? len - i : 57;
        long n = tern_base64_encode(in + i, k, line, sizeof(line));
        if (n < 0)
            return TERN_BUF_ENOMEM;
        line[n] = '\r';
        line[n + 1] = '\n';
        int r = tern_buf_append(out, line, (size_t)n + 2);
        if (r != 0)
            return r;
    }
    return 0;
}

static int emit(tern_buf *out, const tern_mime_part *p, const uint8_t *msg)
{
    const uint8_t *h = msg + p->header_offset;
    size_t hn = (size_t)(p->body_offset - p->header_offset);
    if (!needs(p, msg))
        return tern_buf_append(out, h, (size_t)(p->body_end - p->header_offset));
    int r;
    if (is_container(p)) {
        /* Its content is 7-bit now: an 8bit/binary label would be wrong. */
        bool relabel = p->encoding == TERN_MIME_ENC_8BIT || p->encoding == TERN_MIME_ENC_BINARY;
        r = relabel ? write_header(out, h, hn, "7bit", false) : tern_buf_append(out, h, hn);
        uint64_t pos = p->body_offset;
        for (const tern_mime_part *c = p->children; c && r == 0; c = c->next) {
            if (c->header_offset > pos)
                r = tern_buf_append(out, msg + pos, (size_t)(c->header_offset - pos));
            if (r == 0)
                r = emit(out, c, msg);
            if (c->body_end > pos)
                pos = c->body_end;
        }
        if (r == 0 && p->body_end > pos)
            r = tern_buf_append(out, msg + pos, (size_t)(p->body_end - pos));
        return r;
    }
    if (blank_line(h, hn) < 0)
        return tern_buf_append(out, h, (size_t)(p->body_end - p->header_offset));
    size_t at = out->len;
    const uint8_t *body = msg + p->body_offset;
    size_t blen = (size_t)(p->body_end - p->body_offset);
    r = write_header(out, h, hn, "quoted-printable", p->header_offset == 0);
    size_t body_at = out->len;
    /* Text keeps its lines; anything else must come back byte for byte,
     * line ends included. */
    unsigned flags = strcmp(p->type, "text") == 0 ? 0 : TERN_QP_BINARY;
    if (r == 0)
        r = tern_qp_encode(out, body, blen, flags);
    if (r == 0 && clashes(out->data + body_at, out->len - body_at, p)) {
        out->len = at;
        r = write_header(out, h, hn, "base64", p->header_offset == 0);
        if (r == 0)
            r = base64_lines(out, body, blen);
    }
    return r;
}

int tern_downconvert_8bit(const uint8_t *msg, size_t len, tern_buf *out)
{
    if (!tern_has_8bit(msg, len))
        return 0;
    tern_arena a;
    tern_arena_init(&a, 16384);
    tern_mime_part *root = tern_mime_parse(&a, msg, len, NULL);
    if (root == NULL) {
        tern_arena_free(&a);
        return TERN_BUF_ENOMEM;
    }
    int r = 0;
    if (needs(root, msg)) {
        size_t before = out->len;
        r = emit(out, root, msg);
        if (r == 0 && root->body_end < len)
            r = tern_buf_append(out, msg + root->body_end, len - (size_t)root->body_end);
        if (r == 0)
            r = 1;
        else
            out->len = before;
    }
    tern_arena_free(&a);
    return r;
}
