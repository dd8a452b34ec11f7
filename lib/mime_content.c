/* What the mailets, IMAP BINARY and JMAP ask of a parsed message's content:
 * a part's body transfer-decoded and as UTF-8 text, "the text body", the
 * attachments and their filenames. Input: a tree from lib/mime.c and the
 * untrusted message bytes it was parsed from (offsets are checked against
 * the length given, so a wrong pairing reads nothing out of bounds). */
#include "lib/mime.h"

#include <string.h>

#include "lib/base64.h"
#include "lib/qp.h"
#include "lib/rfc2047.h"

static bool span(const tern_mime_part *m, size_t len, const uint8_t *msg, const uint8_t **s_r,
                 size_t *n_r)
{
    if (m->body_offset > len || m->body_end > len || m->body_end < m->body_offset)
        return false;
    *s_r = msg + m->body_offset;
    *n_r = (size_t)(m->body_end - m->body_offset);
    return true;
}

int tern_mime_part_decode(const tern_mime_part *m, const uint8_t *msg, size_t len, tern_buf *out)
{
    const uint8_t *s;
    size_t n;
    if (!span(m, len, msg, &s, &n))
        return 0;
    if (m->encoding == TERN_MIME_ENC_BASE64) {
        tern_base64_stream st;
        tern_base64_stream_init(&st);
        if (n == 0)
            return 0;
        int rc = tern_buf_reserve(out, n);
        if (rc)
            return rc;
        out->len += tern_base64_stream_decode(&st, s, n, out->data + out->len);
        return 0;
    }
    if (m->encoding == TERN_MIME_ENC_QP) {
        tern_qp_decoder d;
        tern_qp_decoder_init(&d);
        int rc = tern_qp_decode(&d, out, s, n);
        return rc ? rc : tern_qp_decode_finish(&d, out);
    }
    return tern_buf_append(out, s, n);
}

int tern_mime_part_text(const tern_mime_part *m, const uint8_t *msg, size_t len, tern_buf *out)
{
    tern_buf raw;
    tern_buf_init(&raw, 0);
    int rc = tern_mime_part_decode(m, msg, len, &raw);
    if (rc == 0 && raw.len) {
        const char *cs = m->charset ? m->charset : "us-ascii";
        rc = tern_charset_to_utf8(out, cs, strlen(cs), raw.data, raw.len);
    }
    tern_buf_free(&raw);
    return rc;
}

static const char *fname(const tern_mime_part *m)
{
    const tern_mime_param *p = tern_mime_param_get(m->disposition_params, "filename");
    if (!p || !p->value_len)
        p = tern_mime_param_get(m->params, "name");
    return p && p->value_len ? p->value : NULL;
}

const char *tern_mime_part_filename(const tern_mime_part *m)
{
    return fname(m);
}

static bool is_text_body_type(const tern_mime_part *m)
{
    return strcmp(m->type, "text") == 0 &&
           (strcmp(m->subtype, "plain") == 0 || strcmp(m->subtype, "html") == 0);
}

bool tern_mime_part_is_attachment(const tern_mime_part *m)
{
    if (m->flags & TERN_MIME_F_MULTIPART)
        return false;
    if (m->parent && (m->parent->flags & TERN_MIME_F_MESSAGE) && m->parent->children == m)
        return false; /* an encapsulated message: its container is the attachment */
    if (m->flags & TERN_MIME_F_MESSAGE)
        return true;
    if (m->disposition && strcmp(m->disposition, "attachment") == 0)
        return true;
    if (fname(m))
        return true;
    return !is_text_body_type(m);
}

/* Next part in tree order, not entering encapsulated messages. */
static const tern_mime_part *next_part(const tern_mime_part *root, const tern_mime_part *m)
{
    if (m->children && !(m->flags & TERN_MIME_F_MESSAGE))
        return m->children;
    while (m && m != root && !m->next)
        m = m->parent;
    return m && m != root ? m->next : NULL;
}

static const tern_mime_part *first_text(const tern_mime_part *root, const char *subtype)
{
    for (const tern_mime_part *m = root; m; m = next_part(root, m)) {
        if (m->flags & (TERN_MIME_F_MULTIPART | TERN_MIME_F_MESSAGE))
            continue;
        if (strcmp(m->type, "text") != 0 || strcmp(m->subtype, subtype) != 0)
            continue;
        if ((m->disposition && strcmp(m->disposition, "attachment") == 0) || fname(m))
            continue;
        return m;
    }
    return NULL;
}

const tern_mime_part *tern_mime_find_text(const tern_mime_part *root, bool allow_html)
{
    const tern_mime_part *m = first_text(root, "plain");
    if (!m && allow_html)
        m = first_text(root, "html");
    return m;
}

/* ---- HTML to rough plain text ---------------------------------------------- */

static bool tag_is(const uint8_t *t, size_t n, const char *name)
{
    size_t k = strlen(name);
    if (n < k)
        return false;
    for (size_t i = 0; i < k; i++) {
        uint8_t c = t[i];
        if (c >= 'A' && c <= 'Z')
            c = (uint8_t)(c + 32);
        if (c != (uint8_t)name[i])
            return false;
    }
    return n == k || !((t[k] >= 'a' && t[k] <= 'z') || (t[k] >= 'A' && t[k] <= 'Z') ||
                       (t[k] >= '0' && t[k] <= '9'));
}

static const struct {
    const char *name;
    const char *utf8;
} entities[] = {
    {"amp", "&"}, {"lt", "<"}, {"gt", ">"}, {"quot", "\""}, {"apos", "'"},
    {"nbsp", " "}, {"copy", "\xc2\xa9"}, {"reg", "\xc2\xae"}, {"hellip", "\xe2\x80\xa6"},
    {"mdash", "\xe2\x80\x94"}, {"ndash", "\xe2\x80\x93"}, {"euro", "\xe2\x82\xac"},
};

static void put_cp(tern_buf *o, unsigned long cp)
{
    uint8_t b[4];
    size_t n;
    if (cp == 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        cp = 0xfffd;
    if (cp < 0x80) {
        b[0] = (uint8_t)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (uint8_t)(0xc0 | (cp >> 6));
        b[1] = (uint8_t)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (uint8_t)(0xe0 | (cp >> 12));
        b[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        b[2] = (uint8_t)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        b[0] = (uint8_t)(0xf0 | (cp >> 18));
        b[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
        b[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        b[3] = (uint8_t)(0x80 | (cp & 0x3f));
        n = 4;
    }
    tern_buf_append(o, b, n);
}

/* Tags dropped (script and style with their content), block tags and <br>
 * as line breaks, runs of whitespace as one space, entities decoded. The
 * input is already UTF-8, so the output is too. */
static int html_to_text(tern_buf *o, const uint8_t *s, size_t n)
{
    size_t start = o->len;
    bool space = false;
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        if (c == '<') {
            const uint8_t *gt = memchr(s + i, '>', n - i);
            size_t e = gt ? (size_t)(gt - s) + 1 : n;
            const uint8_t *t = s + i + 1;
            size_t tl = e - i - 1;
            bool close = tl && t[0] == '/';
            if (close) {
                t++;
                tl--;
            }
            if (!close && (tag_is(t, tl, "script") || tag_is(t, tl, "style"))) {
                const char *end = tag_is(t, tl, "script") ? "</script" : "</style";
                size_t el = strlen(end), j = e;
                for (; j + el <= n; j++)
                    if (tag_is(s + j, n - j, end))
                        break;
                const uint8_t *g2 = j < n ? memchr(s + j, '>', n - j) : NULL;
                e = g2 ? (size_t)(g2 - s) + 1 : n;
            } else if (tag_is(t, tl, "!--")) {
                size_t j = i + 4;
                for (; j + 3 <= n && memcmp(s + j, "-->", 3) != 0; j++)
                    ;
                e = j + 3 <= n ? j + 3 : n;
            } else if (tag_is(t, tl, "br") || tag_is(t, tl, "p") || tag_is(t, tl, "div") ||
                       tag_is(t, tl, "tr") || tag_is(t, tl, "li") || tag_is(t, tl, "h1") ||
                       tag_is(t, tl, "h2") || tag_is(t, tl, "h3") || tag_is(t, tl, "table")) {
                if (o->len > start && o->data[o->len - 1] != '\n')
                    tern_buf_append(o, "\n", 1);
                space = false;
            }
            i = e;
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            space = true;
            i++;
            continue;
        }
        if (space && o->len > start && o->data[o->len - 1] != '\n')
            tern_buf_append(o, " ", 1);
        space = false;
        if (c == '&') {
            const uint8_t *semi = memchr(s + i, ';', n - i < 12 ? n - i : 12);
            if (semi) {
                const char *name = (const char *)s + i + 1;
                size_t nl = (size_t)(semi - s) - i - 1;
                bool done = false;
                if (nl > 1 && name[0] == '#') {
                    unsigned long cp = 0;
                    bool hx = name[1] == 'x' || name[1] == 'X';
                    size_t k = hx ? 2 : 1;
                    bool ok = k < nl;
                    for (; k < nl && ok; k++) {
                        char d = name[k];
                        int v = d >= '0' && d <= '9' ? d - '0'
                                : hx && d >= 'a' && d <= 'f' ? d - 'a' + 10
                                : hx && d >= 'A' && d <= 'F' ? d - 'A' + 10 : -1;
                        if (v < 0 || cp > 0x10ffff)
                            ok = false;
                        else
                            cp = cp * (hx ? 16 : 10) + (unsigned long)v;
                    }
                    if (ok) {
                        put_cp(o, cp);
                        done = true;
                    }
                } else {
                    for (size_t k = 0; k < sizeof entities / sizeof entities[0]; k++)
                        if (strlen(entities[k].name) == nl && memcmp(entities[k].name, name, nl) == 0) {
                            tern_buf_append_str(o, entities[k].utf8);
                            done = true;
                            break;
                        }
                }
                if (done) {
                    i = (size_t)(semi - s) + 1;
                    continue;
                }
            }
        }
        int rc = tern_buf_append(o, &c, 1);
        if (rc)
            return rc;
        i++;
    }
    while (o->len > start && o->data[o->len - 1] == '\n')
        o->len--; /* from closing block tags */
    return 0;
}

int tern_mime_text_body(const tern_mime_part *root, const uint8_t *msg, size_t len, tern_buf *out,
                        const tern_mime_part **part_r)
{
    const tern_mime_part *m = tern_mime_find_text(root, true);
    if (part_r)
        *part_r = m;
    if (!m)
        return 1;
    if (strcmp(m->subtype, "html") != 0)
        return tern_mime_part_text(m, msg, len, out);
    tern_buf u;
    tern_buf_init(&u, 0);
    int rc = tern_mime_part_text(m, msg, len, &u);
    if (rc == 0)
        rc = html_to_text(out, u.data ? u.data : (const uint8_t *)"", u.len);
    tern_buf_free(&u);
    return rc;
}

/* The decoded size from the encoded one, without decoding. */
static uint64_t decoded_size(const tern_mime_part *m)
{
    uint64_t n = m->body_size;
    if (m->encoding == TERN_MIME_ENC_BASE64) {
        uint64_t eol = m->body_lines * 2;
        n = n > eol ? n - eol : 0;
        return n / 4 * 3;
    }
    if (m->encoding == TERN_MIME_ENC_QP) {
        /* Soft breaks and escapes shrink it; a fair guess for text. */
        return n - n / 20;
    }
    return n;
}

tern_mime_attachment *tern_mime_attachments(tern_arena *a, const tern_mime_part *root,
                                            size_t *count_r)
{
    tern_mime_attachment *head = NULL, *tail = NULL;
    size_t count = 0;
    for (const tern_mime_part *m = root; m; m = next_part(root, m)) {
        if (m == root && !(m->flags & TERN_MIME_F_MULTIPART) && !fname(m) &&
            !(m->disposition && strcmp(m->disposition, "attachment") == 0) &&
            is_text_body_type(m))
            continue;
        if (m == root && (m->flags & TERN_MIME_F_MESSAGE))
            continue; /* a whole message of type message/rfc822 is not its own attachment */
        if (!tern_mime_part_is_attachment(m))
            continue;
        tern_mime_attachment *t = tern_arena_alloc(a, sizeof *t);
        char *type = t ? tern_arena_printf(a, "%s/%s", m->declared_type, m->declared_subtype) : NULL;
        if (!type) {
            if (count_r)
                *count_r = 0;
            return NULL;
        }
        t->part = m;
        t->filename = fname(m);
        t->type = type;
        t->size = decoded_size(m);
        if (tail)
            tail->next = t;
        else
            head = t;
        tail = t;
        count++;
    }
    if (count_r)
        *count_r = count;
    return head;
}
