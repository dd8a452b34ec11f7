/* Mailet AddFooter: appends a footer (a disclaimer, a list's unsubscribe
 * note) to the text of a message, MIME-correctly. Input: its YAML
 * parameters (checked at init) and the message, whose structure is the
 * sender's and untrusted: it is parsed with lib/mime.h, and a part this
 * mailet cannot change safely is left exactly as it was.
 *
 * Where the footer goes:
 *  - a single text/plain message or part: appended to the decoded text on
 *    a line of its own; text/html: inserted before the last </body> (at
 *    the end when there is none);
 *  - multipart/alternative: into its text/plain and its text/html
 *    alternative (the first of each), so every reader sees it;
 *  - multipart/mixed, related and the rest: into the first text part
 *    (descending into a first multipart, e.g. mixed[alternative, pdf]);
 *  - multipart/signed and multipart/encrypted (and S/MIME
 *    application/pkcs7-mime) are never touched, wherever they are: a
 *    footer would break the signature. The log says so. A forwarded
 *    message (message/rfc822) is not descended into.
 *
 * Encodings: the text is transfer-decoded, the footer appended, and the
 * result re-encoded in the part's own encoding (base64 in 76-column
 * lines; quoted-printable). A 7bit part that a non-ASCII footer would make
 * 8-bit becomes quoted-printable. Charsets: the footer (UTF-8) is
 * converted to the part's charset; a us-ascii part simply becomes utf-8;
 * when the footer cannot be written in the part's charset, the whole text
 * is converted to UTF-8 and the charset parameter changed. The
 * Content-Type and Content-Transfer-Encoding fields are rewritten only
 * when they must change.
 *
 * Limits: a text part larger than `max_part_size` (decoded) is left alone
 * (logged), so one huge text part cannot cost much on the event loop. */
#include <errno.h>
#include <iconv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/arena.h"
#include "lib/base64.h"
#include "lib/buf.h"
#include "lib/mime.h"
#include "lib/qp.h"
#include "lib/rfc2047.h"
#include "mailets/builtin/builtin.h"

#define AF_FOOTER_MAX 65536
#define AF_PART_DEFAULT (4u << 20)
#define AF_PART_MAX (64u << 20)
#define AF_MAX_TARGETS 8

typedef struct {
    char *text; /* UTF-8, line ends as LF, ends with one LF */
    char *html; /* UTF-8 */
    size_t max_part;
} add_footer;

/* ---- init ----------------------------------------------------------------- */

static bool utf8_text_ok(const char *s)
{
    size_t len = strlen(s);
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            if ((c < ' ' && c != '\t' && c != '\n' && c != '\r') || c == 127)
                return false;
            i++;
            continue;
        }
        size_t q = tern_utf8_seq_len((const uint8_t *)s + i, len - i);
        if (q == 0)
            return false;
        i += q;
    }
    return true;
}

/* Line ends as LF (CRLF and CR too), trailing blank lines cut, one final LF. */
static char *norm_text(const char *s)
{
    size_t len = strlen(s);
    char *o = malloc(len + 2);
    if (o == NULL)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\r') {
            o[n++] = '\n';
            if (i + 1 < len && s[i + 1] == '\n')
                i++;
        } else
            o[n++] = s[i];
    }
    while (n > 0 && (o[n - 1] == '\n' || o[n - 1] == ' ' || o[n - 1] == '\t'))
        n--;
    o[n++] = '\n';
    o[n] = '\0';
    return o;
}

/* The text footer as HTML: escaped, lines as <br>. */
static char *text_to_html(const char *t)
{
    tern_buf b;
    tern_buf_init(&b, 0);
    tern_buf_append_str(&b, "<p>");
    size_t len = strlen(t);
    while (len > 0 && t[len - 1] == '\n')
        len--;
    for (size_t i = 0; i < len; i++) {
        switch (t[i]) {
        case '&': tern_buf_append_str(&b, "&amp;"); break;
        case '<': tern_buf_append_str(&b, "&lt;"); break;
        case '>': tern_buf_append_str(&b, "&gt;"); break;
        case '"': tern_buf_append_str(&b, "&quot;"); break;
        case '\n': tern_buf_append_str(&b, "<br>\n"); break;
        default: tern_buf_append(&b, &t[i], 1);
        }
    }
    tern_buf_append_str(&b, "</p>\n");
    int rc = tern_buf_append(&b, "", 1);
    if (rc != 0) {
        tern_buf_free(&b);
        return NULL;
    }
    return (char *)b.data;
}

static void af_deinit(void *state)
{
    add_footer *f = state;
    if (f == NULL)
        return;
    free(f->text);
    free(f->html);
    free(f);
}

static int af_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    static const char *const known[] = {"text", "html", "max_part_size", NULL};
    if (tern_param_check(p, known, err, size) != 0)
        return -1;
    const char *text = tern_param_str(p, "text");
    const char *html = tern_param_str(p, "html");
    if (text == NULL || text[0] == '\0')
        return tern_builtin_fail(err, size, "text: the footer text is required");
    if (tern_param_get(p, "html") && (html == NULL || html[0] == '\0'))
        return tern_builtin_fail(err, size, "html: must be a non-empty string when given");
    if (strlen(text) > AF_FOOTER_MAX || (html && strlen(html) > AF_FOOTER_MAX))
        return tern_builtin_fail(err, size, "text/html: at most %d bytes", AF_FOOTER_MAX);
    if (!utf8_text_ok(text))
        return tern_builtin_fail(err, size, "text: must be UTF-8 without control characters");
    if (html && !utf8_text_ok(html))
        return tern_builtin_fail(err, size, "html: must be UTF-8 without control characters");
    size_t max_part = AF_PART_DEFAULT;
    const char *mp = tern_param_str(p, "max_part_size");
    if (tern_param_get(p, "max_part_size")) {
        char *end = NULL;
        unsigned long long v = mp ? strtoull(mp, &end, 10) : 0;
        if (mp && end && end != mp) {
            if (*end == 'k' || *end == 'K')
                v <<= 10, end++;
            else if (*end == 'm' || *end == 'M')
                v <<= 20, end++;
        }
        if (mp == NULL || mp[0] < '0' || mp[0] > '9' || *end != '\0' || v < 1024 ||
            v > AF_PART_MAX)
            return tern_builtin_fail(err, size,
                                     "max_part_size: bytes (k and M suffixes), from 1k to 64M");
        max_part = (size_t)v;
    }
    add_footer *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    f->max_part = max_part;
    f->text = norm_text(text);
    f->html = html ? norm_text(html) : (f->text ? text_to_html(f->text) : NULL);
    if (f->text == NULL || f->html == NULL) {
        af_deinit(f);
        return tern_builtin_fail(err, size, "out of memory");
    }
    *state_r = f;
    return 0;
}

/* ---- choosing the parts ----------------------------------------------------- */

typedef struct {
    const tern_mime_part *parts[AF_MAX_TARGETS];
    size_t n;
    const char *protected_type; /* a signed/encrypted container seen, for the log */
} targets;

static bool is_protected(const tern_mime_part *p)
{
    if (strcmp(p->type, "multipart") == 0)
        return strcmp(p->subtype, "signed") == 0 || strcmp(p->subtype, "encrypted") == 0;
    if (strcmp(p->type, "application") == 0)
        return strcmp(p->subtype, "pkcs7-mime") == 0 || strcmp(p->subtype, "x-pkcs7-mime") == 0 ||
               strcmp(p->subtype, "pgp-encrypted") == 0;
    return false;
}

static bool is_text_leaf(const tern_mime_part *p, bool root)
{
    if (p->flags & (TERN_MIME_F_MULTIPART | TERN_MIME_F_MESSAGE))
        return false;
    if (strcmp(p->type, "text") != 0 ||
        (strcmp(p->subtype, "plain") != 0 && strcmp(p->subtype, "html") != 0))
        return false;
    /* A text file attached is the sender's file, not the message text. */
    return root || !tern_mime_part_is_attachment(p);
}

static void add_target(targets *t, const tern_mime_part *p)
{
    if (t->n < AF_MAX_TARGETS)
        t->parts[t->n++] = p;
}

static bool subtype_is(const tern_mime_part *p, const char *sub)
{
    return strcmp(p->subtype, sub) == 0;
}

/* Returns true when it chose at least one part under p. */
static bool choose(targets *t, const tern_mime_part *p, bool root)
{
    if (is_protected(p)) {
        t->protected_type = p->subtype;
        return false;
    }
    if (!(p->flags & TERN_MIME_F_MULTIPART))
        return is_text_leaf(p, root) ? (add_target(t, p), true) : false;
    if (subtype_is(p, "alternative")) {
        bool plain = false, html = false, any = false;
        for (const tern_mime_part *c = p->children; c; c = c->next) {
            if (is_text_leaf(c, false)) {
                bool *seen = subtype_is(c, "plain") ? &plain : &html;
                if (!*seen) {
                    *seen = true;
                    add_target(t, c);
                    any = true;
                }
            } else if ((c->flags & TERN_MIME_F_MULTIPART) && choose(t, c, false))
                any = true;
        }
        return any;
    }
    for (const tern_mime_part *c = p->children; c; c = c->next) {
        if (is_protected(c)) {
            t->protected_type = c->subtype;
            return false; /* the text is inside the signature: leave it all */
        }
        if (choose(t, c, false))
            return true;
    }
    return false;
}

/* ---- rewriting one part ------------------------------------------------------ */

typedef struct {
    tern_buf body;       /* the new encoded body */
    const char *cte;     /* new Content-Transfer-Encoding, or NULL */
    bool set_utf8;       /* charset parameter becomes utf-8 */
    bool skip;           /* leave this part as it is */
    const char *why;     /* when skipped */
} part_edit;

static bool has_8bit(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] >= 0x80)
            return true;
    return false;
}

static bool ascii_compatible(const char *norm)
{
    return strncmp(norm, "utf-16", 6) != 0 && strncmp(norm, "utf-32", 6) != 0 &&
           strncmp(norm, "ucs-", 4) != 0 && strncmp(norm, "ucs2", 4) != 0 &&
           strncmp(norm, "ucs4", 4) != 0 && strcmp(norm, "utf-7") != 0;
}

/* Converts UTF-8 text to `charset` strictly: -1 when a character has no
 * form there. */
static int from_utf8(tern_buf *out, const char *charset, const char *in, size_t len)
{
    iconv_t cd = iconv_open(charset, "UTF-8");
    if (cd == (iconv_t)-1)
        return -1;
    char *ip = (char *)in;
    size_t il = len;
    int rc = 0;
    while (il > 0 && rc == 0) {
        if (tern_buf_reserve(out, il * 4 + 16) != 0) {
            rc = -1;
            break;
        }
        char *op = (char *)out->data + out->len;
        size_t ol = out->cap - out->len;
        size_t r = iconv(cd, &ip, &il, &op, &ol);
        out->len = (size_t)(op - (char *)out->data);
        if (r == (size_t)-1 && errno != E2BIG)
            rc = -1;
        else if (r != (size_t)-1 && r > 0)
            rc = -1; /* irreversible conversions: a character was replaced */
    }
    iconv_close(cd);
    return rc;
}

/* The footer with the message's line ends. */
static int put_lines(tern_buf *out, const char *s, const char *eol)
{
    int rc = 0;
    for (const char *p = s; *p && rc == 0; p++)
        rc = *p == '\n' ? tern_buf_append_str(out, eol) : tern_buf_append(out, p, 1);
    return rc;
}

static const uint8_t *find_body_close(const uint8_t *s, size_t n)
{
    if (n < 6)
        return NULL;
    for (size_t i = n - 6 + 1; i-- > 0;)
        if (s[i] == '<' && s[i + 1] == '/' && strncasecmp((const char *)s + i + 2, "body", 4) == 0)
            return s + i;
    return NULL;
}

static int base64_lines(tern_buf *out, const uint8_t *in, size_t len, const char *eol)
{
    /* 57 bytes make one 76-character line. */
    char line[80];
    int rc = 0;
    for (size_t i = 0; i < len && rc == 0; i += 57) {
        size_t n = len - i < 57 ? len - i : 57;
        long w = tern_base64_encode(in + i, n, line, sizeof(line));
        if (w < 0)
            return -1;
        rc = tern_buf_append(out, line, (size_t)w);
        if (rc == 0)
            rc = tern_buf_append_str(out, eol);
    }
    return rc;
}

/* Would a line of s[0..n) read as a boundary line of a multipart around
 * part p? (A boundary line is "--" + boundary at a line start; what
 * follows it on the line does not matter.) */
static bool hits_boundary(const uint8_t *s, size_t n, const tern_mime_part *p)
{
    for (size_t i = 0; i + 2 <= n;) {
        if (s[i] == '-' && s[i + 1] == '-') {
            for (const tern_mime_part *a = p->parent; a; a = a->parent) {
                size_t bl = a->boundary ? strlen(a->boundary) : 0;
                if (bl && i + 2 + bl <= n && memcmp(s + i + 2, a->boundary, bl) == 0)
                    return true;
            }
        }
        const uint8_t *nl = memchr(s + i, '\n', n - i);
        if (nl == NULL)
            break;
        i = (size_t)(nl - s) + 1;
    }
    return false;
}

/* QP output with "=2D" for the first '-' of every line starting "--", so
 * no line of the encoded part can be taken for a boundary. */
static int qp_safe(tern_buf *out, const uint8_t *in, size_t len)
{
    tern_buf q;
    tern_buf_init(&q, 0);
    int rc = tern_qp_encode(&q, in, len, 0);
    for (size_t i = 0; rc == 0 && i < q.len;) {
        const uint8_t *nl = memchr(q.data + i, '\n', q.len - i);
        size_t end = nl ? (size_t)(nl - q.data) + 1 : q.len;
        if (end - i >= 2 && q.data[i] == '-' && q.data[i + 1] == '-') {
            rc = tern_buf_append_str(out, "=2D");
            i++;
        }
        if (rc == 0)
            rc = tern_buf_append(out, q.data + i, end - i);
        i = end;
    }
    tern_buf_free(&q);
    return rc;
}

static void edit_part(const add_footer *f, const tern_mime_part *p, const uint8_t *msg,
                      size_t len, bool root, const char *eol, part_edit *e)
{
    bool html = strcmp(p->subtype, "html") == 0;
    const char *footer = html ? f->html : f->text;
    if (p->encoding == TERN_MIME_ENC_OTHER) {
        e->skip = true;
        e->why = "an encoding it cannot rewrite";
        return;
    }
    if (!root && (p->flags & TERN_MIME_F_HEADER_NO_END)) {
        e->skip = true;
        e->why = "a part header without its end";
        return;
    }
    tern_buf text;
    tern_buf_init(&text, f->max_part + AF_FOOTER_MAX * 2);
    if (p->body_size > (uint64_t)f->max_part * 3 + 1024 ||
        tern_mime_part_decode(p, msg, len, &text) != 0 || text.len > f->max_part) {
        tern_buf_free(&text);
        e->skip = true;
        e->why = "a text part over max_part_size";
        return;
    }
    /* The footer in the part's charset. */
    tern_buf foot;
    tern_buf_init(&foot, 0);
    int rc = put_lines(&foot, footer, eol);
    char norm[64] = "us-ascii";
    if (p->charset)
        if (tern_charset_normalize(p->charset, strlen(p->charset), norm, sizeof(norm)) != 0)
            snprintf(norm, sizeof(norm), "unknown");
    bool ascii_footer = rc == 0 && !has_8bit(foot.data, foot.len);
    bool is_utf8 = strcmp(norm, "utf-8") == 0 || strcmp(norm, "utf8") == 0;
    bool is_ascii = strcmp(norm, "us-ascii") == 0 || strcmp(norm, "ascii") == 0;
    if (rc == 0 && !(ascii_footer && ascii_compatible(norm)) && !is_utf8) {
        if (is_ascii && !has_8bit(text.data, text.len)) {
            e->set_utf8 = true; /* ASCII text is already UTF-8 */
        } else {
            tern_buf conv;
            tern_buf_init(&conv, 0);
            if (ascii_compatible(norm) && from_utf8(&conv, norm, (const char *)foot.data, foot.len) == 0) {
                tern_buf_free(&foot);
                foot = conv;
            } else {
                /* Not expressible there: the whole text goes to UTF-8. */
                tern_buf_free(&conv);
                tern_buf u;
                tern_buf_init(&u, 0);
                const char *cs = p->charset ? p->charset : "us-ascii";
                rc = tern_charset_to_utf8(&u, cs, strlen(cs), text.data, text.len);
                tern_buf_free(&text);
                text = u;
                e->set_utf8 = true;
            }
        }
    }
    /* Where the footer goes in the decoded text. */
    tern_buf out;
    tern_buf_init(&out, 0);
    size_t at = text.len;
    const uint8_t *close = html && text.len ? find_body_close(text.data, text.len) : NULL;
    if (close)
        at = (size_t)(close - text.data);
    if (rc == 0 && at)
        rc = tern_buf_append(&out, text.data, at);
    if (rc == 0 && !html && out.len && out.data[out.len - 1] != '\n')
        rc = tern_buf_append_str(&out, eol);
    if (rc == 0)
        rc = tern_buf_append(&out, foot.data, foot.len);
    if (rc == 0 && at < text.len)
        rc = tern_buf_append(&out, text.data + at, text.len - at);
    tern_buf_free(&foot);
    tern_buf_free(&text);
    /* Inside a multipart the line end before the boundary is the
     * boundary's: the part's own text ends without one. */
    size_t el = strlen(eol);
    if (!root && rc == 0 && out.len >= el && memcmp(out.data + out.len - el, eol, el) == 0 &&
        p->encoding != TERN_MIME_ENC_BASE64)
        out.len -= el;
    /* Encoded as the part was. */
    tern_buf_init(&e->body, 0);
    if (rc == 0) {
        switch (p->encoding) {
        case TERN_MIME_ENC_BASE64:
            rc = base64_lines(&e->body, out.data, out.len, eol);
            if (rc == 0 && !root && e->body.len >= el)
                e->body.len -= el;
            break;
        case TERN_MIME_ENC_QP:
            rc = qp_safe(&e->body, out.data, out.len);
            break;
        case TERN_MIME_ENC_7BIT:
        case TERN_MIME_ENC_8BIT:
        case TERN_MIME_ENC_BINARY:
            /* As they are, unless 8-bit bytes would go into a 7bit part or
             * the footer (or moved text) would make a boundary line. */
            if ((p->encoding == TERN_MIME_ENC_7BIT && has_8bit(out.data, out.len)) ||
                (!root && hits_boundary(out.data, out.len, p))) {
                rc = qp_safe(&e->body, out.data, out.len);
                e->cte = "quoted-printable";
                break;
            }
            /* fall through */
        default:
            rc = tern_buf_append(&e->body, out.data ? out.data : (const uint8_t *)"", out.len);
        }
    }
    tern_buf_free(&out);
    if (rc != 0) {
        tern_buf_free(&e->body);
        e->skip = true;
        e->why = "out of memory";
    }
}

/* ---- header rewriting --------------------------------------------------------- */

static bool needs_quotes(const char *v)
{
    if (v[0] == '\0')
        return true;
    for (const char *c = v; *c; c++)
        if ((unsigned char)*c <= ' ' || strchr("()<>@,;:\\\"/[]?=", *c) || (unsigned char)*c >= 127)
            return true;
    return false;
}

/* "type/subtype; param=value..." with charset=utf-8. */
static int content_type_utf8(tern_buf *out, const tern_mime_part *p)
{
    int rc = tern_buf_printf(out, "%s/%s", p->declared_type, p->declared_subtype);
    bool had = false;
    for (const tern_mime_param *q = p->params; q && rc == 0; q = q->next) {
        if (strcasecmp(q->name, "charset") == 0) {
            if (!had)
                rc = tern_buf_append_str(out, "; charset=utf-8");
            had = true;
            continue;
        }
        if (q->extended)
            rc = tern_buf_printf(out, "; %s*=%s", q->name, q->raw);
        else if (!needs_quotes(q->raw))
            rc = tern_buf_printf(out, "; %s=%s", q->name, q->raw);
        else {
            rc = tern_buf_printf(out, "; %s=\"", q->name);
            for (const char *c = q->raw; *c && rc == 0; c++)
                rc = (*c == '"' || *c == '\\') ? tern_buf_printf(out, "\\%c", *c)
                                                : tern_buf_append(out, c, 1);
            if (rc == 0)
                rc = tern_buf_append_str(out, "\"");
        }
    }
    if (rc == 0 && !had)
        rc = tern_buf_append_str(out, "; charset=utf-8");
    return rc;
}

static bool line_is_field(const uint8_t *s, size_t n, const char *name)
{
    size_t nl = strlen(name);
    if (n <= nl || strncasecmp((const char *)s, name, nl) != 0)
        return false;
    size_t i = nl;
    while (i < n && (s[i] == ' ' || s[i] == '\t'))
        i++;
    return i < n && s[i] == ':';
}

/* The part's header again, without the fields that change, then the new
 * ones, then the empty line. */
static int rewrite_part_header(tern_buf *out, const tern_mime_part *p, const uint8_t *msg,
                               const part_edit *e, const char *eol)
{
    const uint8_t *s = msg + p->header_offset;
    size_t n = (size_t)p->header_size;
    bool drop = false;
    int rc = 0;
    size_t i = 0;
    while (i < n && rc == 0) {
        const uint8_t *nlp = memchr(s + i, '\n', n - i);
        size_t end = nlp ? (size_t)(nlp - s) + 1 : n;
        size_t content = end - i;
        while (content > 0 && (s[i + content - 1] == '\n' || s[i + content - 1] == '\r'))
            content--;
        if (content == 0)
            break; /* the empty line: written below */
        if (s[i] != ' ' && s[i] != '\t')
            drop = (e->set_utf8 && line_is_field(s + i, content, "content-type")) ||
                   (e->cte && line_is_field(s + i, content, "content-transfer-encoding"));
        if (!drop)
            rc = tern_buf_append(out, s + i, end - i);
        i = end;
    }
    if (rc == 0 && e->set_utf8) {
        rc = tern_buf_append_str(out, "Content-Type: ");
        if (rc == 0)
            rc = content_type_utf8(out, p);
        if (rc == 0)
            rc = tern_buf_append_str(out, eol);
    }
    if (rc == 0 && e->cte)
        rc = tern_buf_printf(out, "Content-Transfer-Encoding: %s%s", e->cte, eol);
    if (rc == 0)
        rc = tern_buf_append_str(out, eol);
    return rc;
}

/* Writes the edits into x (the mail, or a rehearsal copy of it). */
static int apply(tern_mail *m, const targets *t, part_edit *edits, const tern_mime_part *root,
                 const uint8_t *msg, size_t len, const char *eol)
{
    if (t->parts[0] == root) {
        /* The message is the text: its header fields are the mail's. */
        part_edit *e = &edits[0];
        if (e->set_utf8) {
            tern_buf ct;
            tern_buf_init(&ct, TERN_MAIL_MAX_VALUE);
            int rc = content_type_utf8(&ct, root);
            if (rc == 0)
                rc = tern_buf_append(&ct, "", 1);
            if (rc == 0 && !tern_mail_header_get(m, "MIME-Version", 0))
                rc = tern_mail_header_set(m, "MIME-Version", "1.0");
            if (rc == 0)
                rc = tern_mail_header_set(m, "Content-Type", (const char *)ct.data);
            tern_buf_free(&ct);
            if (rc != 0)
                return -1;
        }
        if (e->cte) {
            if (!tern_mail_header_get(m, "MIME-Version", 0) &&
                tern_mail_header_set(m, "MIME-Version", "1.0") != 0)
                return -1;
            if (tern_mail_header_set(m, "Content-Transfer-Encoding", e->cte) != 0)
                return -1;
        }
        if (tern_mail_body_replace(m, e->body.data ? e->body.data : (const uint8_t *)"",
                                   e->body.len) != 0)
            return -1;
    } else {
        /* Splice the new parts into the body, in document order. */
        tern_buf nb;
        tern_buf_init(&nb, 0);
        uint64_t pos = root->body_offset;
        int rc = 0;
        for (size_t i = 0; i < t->n && rc == 0; i++) {
            const tern_mime_part *p = t->parts[i];
            part_edit *e = &edits[i];
            if (e->skip)
                continue;
            bool hdr = e->set_utf8 || e->cte;
            uint64_t from = hdr ? p->header_offset : p->body_offset;
            if (from < pos)
                continue; /* cannot happen with tree order; never write twice */
            rc = tern_buf_append(&nb, msg + pos, (size_t)(from - pos));
            if (rc == 0 && hdr)
                rc = rewrite_part_header(&nb, p, msg, e, eol);
            if (rc == 0)
                rc = tern_buf_append(&nb, e->body.data ? e->body.data : (const uint8_t *)"",
                                     e->body.len);
            pos = p->body_end;
        }
        if (rc == 0)
            rc = tern_buf_append(&nb, msg + pos, (size_t)(len - pos));
        if (rc != 0 || tern_mail_body_replace(m, nb.data, nb.len) != 0) {
            tern_buf_free(&nb);
            return -1;
        }
        tern_buf_free(&nb);
    }
    return 0;
}

/* The same tree of parts with the same types: the footer did not make or
 * unmake any part. */
static bool same_shape(const tern_mime_part *a, const tern_mime_part *b)
{
    for (; a && b; a = a->next, b = b->next) {
        if (strcmp(a->type, b->type) != 0 || strcmp(a->subtype, b->subtype) != 0 ||
            a->n_children != b->n_children || !same_shape(a->children, b->children))
            return false;
    }
    return a == NULL && b == NULL;
}

/* ---- service ---------------------------------------------------------------------- */

static tern_mailet_verdict af_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    add_footer *f = state;
    size_t len = 0;
    uint8_t *msg = tern_mail_serialize(m, &len);
    if (msg == NULL) {
        res->text = "out of memory";
        return TERN_MAILET_ERROR;
    }
    tern_arena a;
    tern_arena_init(&a, 8192);
    tern_mime_part *root = tern_mime_parse(&a, msg, len, NULL);
    tern_mailet_verdict v = TERN_MAILET_CONTINUE;
    part_edit edits[AF_MAX_TARGETS];
    memset(edits, 0, sizeof(edits));
    targets t = {0};
    if (root == NULL) {
        res->text = "out of memory";
        v = TERN_MAILET_ERROR;
        goto out;
    }
    /* The message's own line ends (the spool keeps CRLF; be safe anyway). */
    const uint8_t *first_nl = memchr(msg, '\n', len);
    const char *eol = (first_nl && first_nl > msg && first_nl[-1] == '\r') || first_nl == NULL
                          ? "\r\n" : "\n";
    /* The parse must see the mail's own header/body split, or the offsets
     * below would cut the body in the wrong place (a header field the
     * mail keeps as raw bytes can hide its end from the parser). */
    if (root->body_offset != len - tern_mail_body_size(m)) {
        tern_mail_log(m, TERN_MAILET_LOG_INFO,
                      "footer not added: the header does not end where the body starts");
        goto out;
    }
    choose(&t, root, true);
    if (t.protected_type && t.n == 0) {
        tern_mail_log(m, TERN_MAILET_LOG_INFO,
                      "footer not added: the text is in a %s part (a footer would break it)",
                      t.protected_type);
        goto out;
    }
    if (t.n == 0) {
        tern_mail_log(m, TERN_MAILET_LOG_DEBUG, "footer not added: no text part");
        goto out;
    }
    size_t done = 0;
    for (size_t i = 0; i < t.n; i++) {
        edit_part(f, t.parts[i], msg, len, t.parts[i] == root, eol, &edits[i]);
        if (edits[i].skip)
            tern_mail_log(m, TERN_MAILET_LOG_INFO, "footer not added to a %s/%s part: %s",
                          t.parts[i]->type, t.parts[i]->subtype, edits[i].why);
        else
            done++;
    }
    if (done == 0)
        goto out;
    /* Rehearsed on a copy first: if the result would not parse into the
     * same tree of parts, the mail is left as it was. */
    tern_mail *copy = tern_mail_clone_empty(m);
    if (copy == NULL || apply(copy, &t, edits, root, msg, len, eol) != 0) {
        tern_mail_free(copy);
        goto fail;
    }
    size_t clen = 0;
    uint8_t *cmsg = tern_mail_serialize(copy, &clen);
    tern_mail_free(copy);
    if (cmsg == NULL)
        goto fail;
    tern_arena ca;
    tern_arena_init(&ca, 8192);
    const tern_mime_part *croot = tern_mime_parse(&ca, cmsg, clen, NULL);
    bool same = croot && same_shape(root, croot);
    tern_arena_free(&ca);
    free(cmsg);
    if (!same) {
        tern_mail_log(m, TERN_MAILET_LOG_INFO,
                      "footer not added: the message would not keep its MIME structure");
        goto out;
    }
    if (apply(m, &t, edits, root, msg, len, eol) != 0)
        goto fail;
    tern_mail_log(m, TERN_MAILET_LOG_DEBUG, "footer added to %zu part(s)", done);
    goto out;
fail:
    res->text = "could not rewrite the message (out of memory)";
    v = TERN_MAILET_ERROR;
out:
    for (size_t i = 0; i < AF_MAX_TARGETS; i++)
        tern_buf_free(&edits[i].body);
    tern_arena_free(&a);
    free(msg);
    return v;
}

static const tern_mailet_module tern_mb_add_footer = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "AddFooter",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = af_init,
    .deinit = af_deinit,
    .service = af_service,
};
TERN_BUILTIN(tern_mb_add_footer)
