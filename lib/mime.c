/* The MIME structure parser: a line-aware stream over the message bytes
 * that hands each part's header to lib/header's resumable parser and
 * watches line starts for the open boundaries. Only the start of a line
 * that may be a boundary is ever held (at most LINE_HOLD_MAX bytes), so
 * any chunking gives the same tree. Input: untrusted
 * message bytes; see mime.h for the degradation rules and the limits. */
#include "lib/mime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/header.h"
#include "lib/rfc2047.h"

/* A boundary up to this long is also checked whole when its line is
 * "--boundary--": the close delimiter of a long boundary is found too. */
#define BOUNDARY_FULL_MAX 200
#define LINE_HOLD_MAX (2 + BOUNDARY_FULL_MAX + 2)
#define PARAMS_MAX 64         /* parameters kept per header field; more is abuse */
#define PARAM_SECTION_MAX 999 /* highest RFC 2231 section number honoured */

/* The public part plus what only the parser needs. pub must stay first. */
typedef struct {
    tern_mime_part pub;
    uint64_t nl_header, nl_body; /* LF count at header_offset and body_offset */
    const char *ct, *cte, *cd;   /* raw Content-Type, -Transfer-Encoding, -Disposition */
    size_t ct_len, cte_len, cd_len;
} part_priv;

typedef struct {
    tern_mime_part *part;
    const char *b;   /* the boundary as matched: at most TERN_MIME_BOUNDARY_MAX */
    size_t len;
    const char *full; /* the whole parameter, for the close delimiter */
    size_t full_len;
} bound;

enum { AFTER_NONE = 0, AFTER_CHILD, AFTER_EPILOGUE };

struct tern_mime_parser {
    tern_arena *a;
    tern_mime_limits lim;
    bool oom, finished, no_boundaries;
    tern_mime_part *root, *cur;
    bool in_header;
    size_t n_parts;
    uint64_t off, nl;        /* bytes and LFs consumed so far */
    uint8_t last_byte;
    uint8_t eol_len;         /* 1 or 2: the line end before the current line start */
    bool line_start;
    /* a line start held back until we know whether it is a boundary */
    bool hold;
    size_t hold_len;
    uint8_t held[LINE_HOLD_MAX];
    /* the rest of a boundary line, skipped; then what comes next */
    bool skip_line;
    int after;
    tern_mime_part *after_mp;
    bound *bstack;
    size_t nb;
    tern_header_parser hp;
};

static uint8_t lc(uint8_t c)
{
    return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c;
}

static bool ieq(const char *a, size_t n, const char *b)
{
    if (strlen(b) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (lc((uint8_t)a[i]) != lc((uint8_t)b[i]))
            return false;
    return true;
}

static bool is_wsp(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static char *lower_dup(tern_arena *a, const char *s, size_t n)
{
    char *d = tern_arena_strndup(a, s, n);
    if (d)
        for (size_t i = 0; i < n; i++)
            d[i] = (char)lc((uint8_t)d[i]);
    return d;
}

/* ---- Content-Type style values -------------------------------------------- */

/* Skips whitespace and (nested) comments. */
static size_t skip_cfws(const char *s, size_t len, size_t i)
{
    while (i < len) {
        uint8_t c = (uint8_t)s[i];
        if (is_wsp(c)) {
            i++;
        } else if (c == '(') {
            int depth = 0;
            while (i < len) {
                if (s[i] == '\\' && i + 1 < len) {
                    i += 2;
                    continue;
                }
                if (s[i] == '(')
                    depth++;
                else if (s[i] == ')' && --depth == 0) {
                    i++;
                    break;
                }
                i++;
            }
        } else {
            break;
        }
    }
    return i;
}

static bool is_tspecial_or_ctl(uint8_t c)
{
    return c <= 0x20 || c == 0x7f || strchr("()<>@,;:\\\"/[]?=", c) != NULL;
}

static size_t token_end(const char *s, size_t len, size_t i)
{
    while (i < len && !is_tspecial_or_ctl((uint8_t)s[i]))
        i++;
    return i;
}

typedef struct rawp rawp;
struct rawp {
    rawp *next;
    char *name;       /* base name, lowercase */
    int section;      /* -1: no section */
    bool star;        /* extended (percent-encoded) */
    char *val;        /* as written, unquoted */
    size_t val_len;
    bool used;
};

static int hexv(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = lc(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static void pct_decode(tern_buf *out, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int h, l;
        if (s[i] == '%' && i + 2 < n && (h = hexv((uint8_t)s[i + 1])) >= 0 &&
            (l = hexv((uint8_t)s[i + 2])) >= 0) {
            uint8_t b = (uint8_t)(h * 16 + l);
            tern_buf_append(out, &b, 1);
            i += 2;
        } else {
            tern_buf_append(out, s + i, 1);
        }
    }
}

static void controls_to_space(tern_buf *b, size_t from)
{
    for (size_t i = from; i < b->len; i++)
        if (b->data[i] < 0x20 || b->data[i] == 0x7f)
            b->data[i] = ' ';
}

/* Joins the raw parameters into the public list (RFC 2231 merging). */
static int merge_params(tern_arena *a, rawp *raw, tern_mime_param **out_r)
{
    tern_mime_param *head = NULL, **tail = &head;
    tern_buf dec, rawv, utf;
    tern_buf_init(&dec, 0);
    tern_buf_init(&rawv, 0);
    tern_buf_init(&utf, 0);
    int rc = 0;
    for (rawp *r = raw; r; r = r->next) {
        if (r->used)
            continue;
        /* Any RFC 2231 form of this name wins over the plain one: mailers
         * send both, the plain one as a fallback for old readers. */
        bool has2231 = false;
        for (rawp *q = r; q; q = q->next)
            if (!q->used && strcmp(q->name, r->name) == 0 && (q->section >= 0 || q->star))
                has2231 = true;
        tern_mime_param *p = tern_arena_alloc(a, sizeof *p);
        if (!p)
            goto oom;
        p->name = r->name;
        dec.len = rawv.len = utf.len = 0;
        if (!has2231) {
            r->used = true;
            for (rawp *q = r->next; q; q = q->next)
                if (!q->used && strcmp(q->name, r->name) == 0)
                    q->used = true; /* a duplicate: the first counts */
            if (tern_buf_append(&rawv, r->val, r->val_len) ||
                tern_rfc2047_decode(&utf, r->val, r->val_len))
                goto oom;
        } else {
            /* Sections in number order; "name*" alone is section 0. */
            const char *cs = NULL, *lang = NULL;
            size_t cs_len = 0, lang_len = 0;
            bool ext = false;
            for (int want = 0; want <= PARAM_SECTION_MAX; want++) {
                rawp *sec = NULL;
                for (rawp *q = r; q; q = q->next) {
                    if (q->used || strcmp(q->name, r->name) != 0)
                        continue;
                    if (q->section < 0 && !q->star) {
                        q->used = true; /* the plain fallback */
                        continue;
                    }
                    int num = q->section < 0 ? 0 : q->section;
                    if (num == want) {
                        if (!sec)
                            sec = q;
                        q->used = true;
                    }
                }
                if (!sec)
                    break;
                const char *v = sec->val;
                size_t vl = sec->val_len;
                if (want == 0 && sec->star) {
                    ext = true;
                    const char *q1 = memchr(v, '\'', vl);
                    const char *q2 = q1 ? memchr(q1 + 1, '\'', vl - (size_t)(q1 + 1 - v)) : NULL;
                    if (q1 && q2) {
                        cs = v;
                        cs_len = (size_t)(q1 - v);
                        lang = q1 + 1;
                        lang_len = (size_t)(q2 - lang);
                        v = q2 + 1;
                        vl -= (size_t)(v - sec->val);
                    }
                }
                if (sec->star)
                    pct_decode(&dec, v, vl);
                else if (tern_buf_append(&dec, v, vl))
                    goto oom;
                if (dec.len > 65536)
                    break;
            }
            /* Sections past a gap were never used: drop them. */
            for (rawp *q = r; q; q = q->next)
                if (strcmp(q->name, r->name) == 0)
                    q->used = true;
            p->extended = ext;
            if (ext) {
                /* One extended value, "charset'lang'" then every byte that
                 * is not an attribute-char percent-encoded (RFC 2231). */
                tern_buf_append(&rawv, cs ? cs : "", cs_len);
                tern_buf_append(&rawv, "'", 1);
                tern_buf_append(&rawv, lang ? lang : "", lang_len);
                tern_buf_append(&rawv, "'", 1);
                for (size_t k = 0; k < dec.len; k++) {
                    uint8_t c = dec.data[k];
                    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                        (c && strchr("!#$&+-.^_`|~", c))) {
                        tern_buf_append(&rawv, &c, 1);
                    } else {
                        char e[4];
                        snprintf(e, sizeof e, "%%%02X", c);
                        tern_buf_append(&rawv, e, 3);
                    }
                }
            } else {
                tern_buf_append(&rawv, dec.data ? (const char *)dec.data : "", dec.len);
            }
            if (cs && cs_len && !(p->charset = tern_arena_strndup(a, cs, cs_len)))
                goto oom;
            if (lang && lang_len && !(p->language = tern_arena_strndup(a, lang, lang_len)))
                goto oom;
            int crc = cs && cs_len ? tern_charset_to_utf8(&utf, cs, cs_len, dec.data, dec.len)
                                   : tern_utf8_sanitize(&utf, dec.data, dec.len);
            if (crc)
                goto oom;
            controls_to_space(&utf, 0);
        }
        p->raw = tern_arena_strndup(a, rawv.len ? (const char *)rawv.data : "", rawv.len);
        p->value = tern_arena_strndup(a, utf.len ? (const char *)utf.data : "", utf.len);
        p->value_len = utf.len;
        if (!p->raw || !p->value)
            goto oom;
        *tail = p;
        tail = &p->next;
    }
    *out_r = head;
    goto done;
oom:
    rc = -2;
done:
    tern_buf_free(&dec);
    tern_buf_free(&rawv);
    tern_buf_free(&utf);
    return rc;
}

/* "token=" (whitespace allowed before the "=") starts at s[i]. */
static bool looks_like_param(const char *s, size_t len, size_t i)
{
    size_t e = i;
    while (e < len && !is_tspecial_or_ctl((uint8_t)s[e]))
        e++;
    if (e == i)
        return false;
    while (e < len && (s[e] == ' ' || s[e] == '\t'))
        e++;
    return e < len && s[e] == '=';
}

/* One "name=value". Returns the index after it. */
static size_t parse_one_param(tern_arena *a, const char *s, size_t len, size_t i, rawp **r_out,
                              size_t *count, bool *oom)
{
    *r_out = NULL;
    i = skip_cfws(s, len, i);
    size_t ns = i;
    while (i < len && s[i] != '=' && s[i] != ';' && !is_wsp((uint8_t)s[i]) && s[i] != '"')
        i++;
    size_t ne = i;
    i = skip_cfws(s, len, i);
    if (ne == ns || i >= len || s[i] != '=') {
        while (i < len && s[i] != ';')
            i++;
        return i; /* not a parameter: skipped */
    }
    i = skip_cfws(s, len, i + 1);
    tern_buf v;
    tern_buf_init(&v, 0);
    if (i < len && s[i] == '"') {
        for (i++; i < len && s[i] != '"'; i++) {
            if (s[i] == '\\' && i + 1 < len)
                i++;
            tern_buf_append(&v, s + i, 1);
        }
        if (i < len)
            i++;
    } else {
        /* Unquoted, leniently: spaces may be inside ("name=my file.pdf"),
         * but whitespace then a comment ("charset=us-ascii (Plain text)")
         * or then another "name=" (a missing ';') ends it. */
        size_t vs = i;
        while (i < len && s[i] != ';') {
            if (is_wsp((uint8_t)s[i])) {
                size_t j = i;
                while (j < len && is_wsp((uint8_t)s[j]))
                    j++;
                if (j < len && (s[j] == '(' || looks_like_param(s, len, j)))
                    break;
                i = j; /* the run is inside the value: never rescanned */
                continue;
            }
            i++;
        }
        size_t ve = i;
        while (ve > vs && is_wsp((uint8_t)s[ve - 1]))
            ve--;
        tern_buf_append(&v, s + vs, ve - vs);
    }
    if (*count >= PARAMS_MAX) {
        tern_buf_free(&v);
        return i;
    }
    rawp *r = tern_arena_alloc(a, sizeof *r);
    char *name = r ? lower_dup(a, s + ns, ne - ns) : NULL;
    char *val = name ? tern_arena_strndup(a, v.len ? (const char *)v.data : "", v.len) : NULL;
    if (!val) {
        *oom = true;
        tern_buf_free(&v);
        return len;
    }
    r->val = val;
    r->val_len = v.len;
    r->section = -1;
    r->name = name;
    tern_buf_free(&v);
    char *star = strchr(name, '*');
    if (star && star > name) {
        /* name*, name*N, name*N*: anything else is a plain odd name */
        const char *t = star + 1;
        int num = -1;
        bool ext = false, ok = true;
        if (*t == '\0') {
            ext = true;
        } else if (*t >= '0' && *t <= '9') {
            num = 0;
            while (*t >= '0' && *t <= '9' && num <= PARAM_SECTION_MAX)
                num = num * 10 + (*t++ - '0');
            if (*t == '*') {
                ext = true;
                t++;
            }
            ok = *t == '\0' && num <= PARAM_SECTION_MAX;
        } else {
            ok = false;
        }
        if (ok) {
            *star = '\0';
            r->section = num;
            r->star = ext;
        }
    }
    (*count)++;
    *r_out = r;
    return i;
}

int tern_mime_parse_content_value(tern_arena *a, const char *s, size_t len, const char **type_r,
                                  const char **subtype_r, tern_mime_param **params_r)
{
    *type_r = NULL;
    if (subtype_r)
        *subtype_r = NULL;
    *params_r = NULL;
    int rc = 0;
    size_t i = skip_cfws(s, len, 0);
    size_t ts = i, te = token_end(s, len, i);
    if (te > ts) {
        if (!(*type_r = lower_dup(a, s + ts, te - ts)))
            return -2;
        i = skip_cfws(s, len, te);
        if (subtype_r && i < len && s[i] == '/') {
            i = skip_cfws(s, len, i + 1);
            size_t se = token_end(s, len, i);
            if (se > i && !(*subtype_r = lower_dup(a, s + i, se - i)))
                return -2;
            i = se;
        }
    } else {
        rc = -1;
    }
    rawp *head = NULL, *tail = NULL;
    size_t count = 0;
    bool oom = false;
    for (;;) {
        i = skip_cfws(s, len, i);
        if (i >= len)
            break;
        if (s[i] == ';') {
            i++;
            continue;
        }
        if (!looks_like_param(s, len, i)) {
            /* Junk: skipped up to the next ';' (a quoted string whole). */
            while (i < len && s[i] != ';') {
                if (s[i] == '"')
                    for (i++; i < len && s[i] != '"'; i++)
                        if (s[i] == '\\' && i + 1 < len)
                            i++;
                if (i < len)
                    i++;
            }
            continue;
        }
        rawp *r;
        i = parse_one_param(a, s, len, i, &r, &count, &oom);
        if (oom)
            return -2;
        if (r) {
            if (tail)
                tail->next = r;
            else
                head = r;
            tail = r;
        }
    }
    if (head && merge_params(a, head, params_r))
        return -2;
    return rc;
}

/* ---- parts ------------------------------------------------------------------ */

static tern_mime_part *new_part(tern_mime_parser *p, tern_mime_part *parent, uint64_t at,
                                uint64_t nl_at)
{
    part_priv *pp = tern_arena_alloc(p->a, sizeof *pp);
    if (!pp) {
        p->oom = true;
        return NULL;
    }
    tern_mime_part *m = &pp->pub;
    m->parent = parent;
    m->header_offset = m->body_offset = m->body_end = at;
    pp->nl_header = pp->nl_body = nl_at;
    if (parent) {
        m->depth = parent->depth + 1;
        if (parent->last_child)
            parent->last_child->next = m;
        else
            parent->children = m;
        parent->last_child = m;
        parent->n_children++;
    }
    if (!parent || (parent->flags & TERN_MIME_F_MESSAGE)) {
        m->envelope = tern_arena_alloc(p->a, sizeof *m->envelope);
        if (!m->envelope)
            p->oom = true;
    }
    p->n_parts++;
    tern_header_limits hl = {.max_total = p->lim.max_header_bytes};
    tern_header_parser_init(&p->hp, &hl);
    p->in_header = true;
    p->cur = m;
    return m;
}

static void keep(tern_mime_parser *p, const char **dst, const tern_header_field *f)
{
    if (*dst)
        return; /* the first occurrence counts */
    *dst = tern_arena_strndup(p->a, f->value, f->value_len);
    if (!*dst)
        p->oom = true;
}

static void on_field(tern_mime_parser *p, const tern_header_field *f)
{
    part_priv *pp = (part_priv *)p->cur;
    tern_mime_part *m = p->cur;
    const char *n = f->name;
    size_t nl = f->name_len;
    if (nl > 8 && ieq(n, 8, "content-")) {
        const char *r = n + 8;
        size_t rl = nl - 8;
        const char **raw = NULL;
        size_t *raw_len = NULL;
        if (ieq(r, rl, "type")) {
            raw = &pp->ct;
            raw_len = &pp->ct_len;
        } else if (ieq(r, rl, "transfer-encoding")) {
            raw = &pp->cte;
            raw_len = &pp->cte_len;
        } else if (ieq(r, rl, "disposition")) {
            raw = &pp->cd;
            raw_len = &pp->cd_len;
        } else if (ieq(r, rl, "id")) {
            keep(p, &m->content_id, f);
        } else if (ieq(r, rl, "description")) {
            keep(p, &m->description, f);
        } else if (ieq(r, rl, "language")) {
            keep(p, &m->language, f);
        } else if (ieq(r, rl, "location")) {
            keep(p, &m->location, f);
        } else if (ieq(r, rl, "md5")) {
            keep(p, &m->md5, f);
        }
        if (raw && !*raw) {
            *raw = tern_arena_strndup(p->a, f->value, f->value_len);
            *raw_len = f->value_len;
            if (!*raw)
                p->oom = true;
        }
        return;
    }
    tern_mime_envelope *e = m->envelope;
    if (!e)
        return;
    static const struct {
        const char *name;
        size_t off;
    } env[] = {
        {"date", offsetof(tern_mime_envelope, date)},
        {"subject", offsetof(tern_mime_envelope, subject)},
        {"from", offsetof(tern_mime_envelope, from)},
        {"sender", offsetof(tern_mime_envelope, sender)},
        {"reply-to", offsetof(tern_mime_envelope, reply_to)},
        {"to", offsetof(tern_mime_envelope, to)},
        {"cc", offsetof(tern_mime_envelope, cc)},
        {"bcc", offsetof(tern_mime_envelope, bcc)},
        {"in-reply-to", offsetof(tern_mime_envelope, in_reply_to)},
        {"message-id", offsetof(tern_mime_envelope, message_id)},
    };
    for (size_t i = 0; i < sizeof env / sizeof env[0]; i++)
        if (ieq(n, nl, env[i].name)) {
            keep(p, (const char **)(void *)((char *)e + env[i].off), f);
            return;
        }
}

static void set_type(tern_mime_part *m, const char *t, const char *s)
{
    m->type = t;
    m->subtype = s;
}

/* Reads the Content-* fields of the part whose header just ended. */
static void interpret(tern_mime_parser *p, tern_mime_part *m)
{
    part_priv *pp = (part_priv *)m;
    const char *t = NULL, *st = NULL;
    tern_mime_param *params = NULL;
    if (pp->ct) {
        int rc = tern_mime_parse_content_value(p->a, pp->ct, pp->ct_len, &t, &st, &params);
        if (rc == -2) {
            p->oom = true;
            return;
        }
    }
    m->params = params;
    if (!t || !st) {
        bool digest = m->parent && (m->parent->flags & TERN_MIME_F_MULTIPART) &&
                      strcmp(m->parent->subtype, "digest") == 0;
        m->flags |= TERN_MIME_F_DEFAULT_TYPE;
        if (digest) {
            t = "message";
            st = "rfc822";
        } else {
            t = "text";
            st = "plain";
            if (!tern_mime_param_get(params, "charset")) {
                tern_mime_param *cs = tern_arena_alloc(p->a, sizeof *cs);
                if (!cs) {
                    p->oom = true;
                    return;
                }
                cs->name = "charset";
                cs->value = cs->raw = "us-ascii";
                cs->value_len = 8;
                cs->next = params;
                m->params = cs;
            }
        }
    }
    m->declared_type = t;
    m->declared_subtype = st;
    set_type(m, t, st);

    m->encoding = TERN_MIME_ENC_7BIT;
    m->encoding_name = "7bit";
    if (pp->cte) {
        const char *e = NULL;
        tern_mime_param *junk;
        int rc = tern_mime_parse_content_value(p->a, pp->cte, pp->cte_len, &e, NULL, &junk);
        if (rc == -2) {
            p->oom = true;
            return;
        }
        if (e) {
            m->encoding_name = e;
            if (strcmp(e, "7bit") == 0)
                m->encoding = TERN_MIME_ENC_7BIT;
            else if (strcmp(e, "8bit") == 0)
                m->encoding = TERN_MIME_ENC_8BIT;
            else if (strcmp(e, "binary") == 0)
                m->encoding = TERN_MIME_ENC_BINARY;
            else if (strcmp(e, "quoted-printable") == 0)
                m->encoding = TERN_MIME_ENC_QP;
            else if (strcmp(e, "base64") == 0)
                m->encoding = TERN_MIME_ENC_BASE64;
            else
                m->encoding = TERN_MIME_ENC_OTHER;
        }
    }
    if (pp->cd) {
        const char *d = NULL;
        if (tern_mime_parse_content_value(p->a, pp->cd, pp->cd_len, &d, NULL,
                                          &m->disposition_params) == -2) {
            p->oom = true;
            return;
        }
        m->disposition = d;
    }
}

static void set_charset(tern_mime_part *m)
{
    m->charset = NULL;
    if (strcmp(m->type, "text") != 0)
        return;
    const tern_mime_param *cs = tern_mime_param_get(m->params, "charset");
    m->charset = cs && cs->value_len ? cs->value : "us-ascii";
}

/* The header of p->cur is over at `at`, with nl_at LFs before it. */
static void header_done(tern_mime_parser *p, unsigned hflags, uint64_t at, uint64_t nl_at)
{
    tern_mime_part *m = p->cur;
    part_priv *pp = (part_priv *)m;
    p->in_header = false;
    m->flags |= hflags;
    m->body_offset = m->body_end = at;
    m->header_size = m->body_offset - m->header_offset;
    m->header_lines = nl_at - pp->nl_header;
    pp->nl_body = nl_at;
    interpret(p, m);
    if (p->oom)
        return;
    bool can_open = m->depth + 1 <= p->lim.max_depth && p->n_parts < p->lim.max_parts;
    if (strcmp(m->type, "multipart") == 0) {
        const tern_mime_param *b = tern_mime_param_get(m->params, "boundary");
        /* boundary*=us-ascii''x is odd but unambiguous: its value is the boundary */
        const char *bs = b ? (b->extended ? b->value : b->raw) : NULL;
        size_t bl = bs ? strlen(bs) : 0;
        const char *full = bs;
        size_t full_len = bl;
        if (bl > TERN_MIME_BOUNDARY_MAX) {
            /* Matched on its first characters only, as Dovecot does. */
            bl = TERN_MIME_BOUNDARY_MAX;
            if (!(bs = tern_arena_strndup(p->a, bs, bl))) {
                p->oom = true;
                return;
            }
        }
        if (bl == 0) {
            m->flags |= TERN_MIME_F_NO_BOUNDARY;
            set_type(m, "text", "plain");
        } else if (!can_open || p->no_boundaries) {
            m->flags |= TERN_MIME_F_LIMIT;
            set_type(m, "application", "octet-stream");
        } else {
            m->flags |= TERN_MIME_F_MULTIPART;
            m->boundary = bs;
            p->bstack[p->nb].part = m;
            p->bstack[p->nb].b = bs;
            p->bstack[p->nb].len = bl;
            p->bstack[p->nb].full = full;
            p->bstack[p->nb].full_len = full_len;
            p->nb++;
        }
    } else if (strcmp(m->type, "message") == 0 &&
               (strcmp(m->subtype, "rfc822") == 0 || strcmp(m->subtype, "global") == 0)) {
        /* RFC 2046 forbids encoding a message/rfc822; when it is anyway, the
         * encoded text is parsed as the message, as Dovecot does (IMAP
         * then answers as Dovecot would); the flag tells the others. */
        if (m->encoding == TERN_MIME_ENC_QP || m->encoding == TERN_MIME_ENC_BASE64 ||
            m->encoding == TERN_MIME_ENC_OTHER)
            m->flags |= TERN_MIME_F_ENCODED_MESSAGE;
        if (!can_open) {
            m->flags |= TERN_MIME_F_LIMIT;
            set_type(m, "application", "octet-stream");
        } else {
            m->flags |= TERN_MIME_F_MESSAGE;
            set_charset(m);
            new_part(p, m, at, nl_at); /* the encapsulated message: cur moves to it */
            return;
        }
    }
    set_charset(m);
}

/* The header ends before all of it was seen: the last fields, then done. */
static void header_finish(tern_mime_parser *p, unsigned hflags, uint64_t at, uint64_t nl_at)
{
    tern_header_field f;
    while (tern_header_parser_finish(&p->hp, &f) == TERN_HEADER_FIELD)
        on_field(p, &f);
    header_done(p, hflags, at, nl_at);
}

/* Ends p->cur at `at`: the start of a boundary line (eol true), or the end
 * of the input. Before a boundary, the body ends before the line end that
 * precedes the boundary line (RFC 2046: that CRLF is the boundary's); a
 * header cut by the boundary keeps its last line end, and a container
 * ends no earlier than its last child (both as Dovecot counts, so that a
 * message/rfc822 part's size is its encapsulated message's). p->cur
 * becomes the parent. */
static void close_cur(tern_mime_parser *p, uint64_t at, bool eol)
{
    tern_mime_part *m = p->cur;
    part_priv *pp = (part_priv *)m;
    if (p->in_header) {
        header_finish(p, TERN_MIME_F_HEADER_NO_END, at, p->nl);
        if (p->cur != m)
            return; /* an encapsulated message opened: it closes first */
    }
    uint64_t end = at;
    if (eol && at >= p->eol_len)
        end = at - p->eol_len;
    if (end < m->body_offset)
        end = m->body_offset; /* the header's blank line was the boundary's line end */
    if (m->last_child && m->last_child->body_end > end)
        end = m->last_child->body_end;
    m->body_end = end;
    m->body_size = end - m->body_offset;
    m->body_lines = end > m->body_offset ? p->nl - pp->nl_body - (end < at ? 1 : 0) : 0;
    if (p->nb > 0 && p->bstack[p->nb - 1].part == m) {
        m->flags |= TERN_MIME_F_NO_END;
        p->nb--;
    }
    p->cur = m->parent;
}

/* A boundary line of bstack[k] starts at p->off. */
static void on_boundary(tern_mime_parser *p, size_t k, bool final)
{
    tern_mime_part *mp = p->bstack[k].part;
    while (p->cur != mp && !p->oom)
        close_cur(p, p->off, true);
    if (p->oom)
        return;
    /* Closing can only pop boundaries inside mp, so mp is on top now. */
    if (final) {
        p->nb--;
        p->after = AFTER_EPILOGUE;
    } else {
        p->after = AFTER_CHILD;
        p->after_mp = mp;
    }
}

/* The boundary line is over (its LF consumed, or the input ended). */
static void after_boundary(tern_mime_parser *p)
{
    int what = p->after;
    p->after = AFTER_NONE;
    if (what != AFTER_CHILD)
        return;
    if (p->n_parts >= p->lim.max_parts) {
        /* No more parts: the rest of the message is this multipart's body. */
        p->after_mp->flags |= TERN_MIME_F_LIMIT;
        p->no_boundaries = true;
        return;
    }
    new_part(p, p->after_mp, p->off, p->nl);
}

/* Consumes bytes that are not a boundary line start: counters only. */
static void advance(tern_mime_parser *p, const uint8_t *d, size_t n)
{
    if (n == 0)
        return;
    const uint8_t *s = d, *e = d + n;
    while ((s = memchr(s, '\n', (size_t)(e - s))) != NULL) {
        p->nl++;
        s++;
    }
    p->off += n;
    if (d[n - 1] == '\n') {
        uint8_t before = n >= 2 ? d[n - 2] : p->last_byte;
        p->eol_len = before == '\r' ? 2 : 1;
        p->line_start = true;
    } else {
        p->line_start = false;
    }
    p->last_byte = d[n - 1];
}

/* Gives bytes to the open part: its header parser, or its body. */
static void dispatch(tern_mime_parser *p, const uint8_t *d, size_t n)
{
    while (n > 0 && !p->oom) {
        if (!p->in_header) {
            advance(p, d, n);
            return;
        }
        size_t used;
        tern_header_field f;
        tern_header_event ev = tern_header_parser_feed(&p->hp, d, n, &used, &f);
        advance(p, d, used);
        d += used;
        n -= used;
        if (ev == TERN_HEADER_FIELD)
            on_field(p, &f);
        else if (ev == TERN_HEADER_END)
            header_done(p, p->hp.truncated_total ? TERN_MIME_F_HEADER_TRUNCATED : 0, p->off, p->nl);
    }
}

/* Which open boundary the held line is, longest match first, then the
 * innermost. -1 if none. */
static int match_boundary(tern_mime_parser *p, bool *final_r)
{
    if (p->hold_len < 2 || p->held[0] != '-' || p->held[1] != '-')
        return -1;
    const uint8_t *s = p->held + 2;
    size_t n = p->hold_len - 2;
    int best = -1;
    size_t best_len = 0;
    for (size_t i = p->nb; i-- > 0;) {
        size_t bl = p->bstack[i].len;
        if (bl <= n && bl > best_len && memcmp(s, p->bstack[i].b, bl) == 0) {
            best = (int)i;
            best_len = bl;
        }
    }
    if (best >= 0) {
        const bound *b = &p->bstack[best];
        *final_r = n >= best_len + 2 && s[best_len] == '-' && s[best_len + 1] == '-';
        if (!*final_r && b->full_len > best_len && b->full_len <= BOUNDARY_FULL_MAX &&
            n >= b->full_len + 2 && memcmp(s, b->full, b->full_len) == 0)
            *final_r = s[b->full_len] == '-' && s[b->full_len + 1] == '-';
    }
    return best;
}

/* Decides about the held line start: a boundary or data. */
static void decide(tern_mime_parser *p)
{
    bool final = false;
    int k = match_boundary(p, &final);
    p->hold = false;
    if (k < 0) {
        dispatch(p, p->held, p->hold_len);
        return;
    }
    on_boundary(p, (size_t)k, final);
    if (p->oom)
        return;
    bool complete = p->held[p->hold_len - 1] == '\n';
    advance(p, p->held, p->hold_len);
    if (complete)
        after_boundary(p);
    else
        p->skip_line = true;
}

tern_mime_parser *tern_mime_parser_new(tern_arena *a, const tern_mime_limits *lim)
{
    tern_mime_parser *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->a = a;
    p->lim.max_depth = 32;
    p->lim.max_parts = 1000;
    p->lim.max_header_bytes = 256 * 1024;
    if (lim) {
        if (lim->max_depth)
            p->lim.max_depth = lim->max_depth;
        if (lim->max_parts)
            p->lim.max_parts = lim->max_parts;
        if (lim->max_header_bytes)
            p->lim.max_header_bytes = lim->max_header_bytes;
    }
    p->bstack = calloc((size_t)p->lim.max_depth + 1, sizeof *p->bstack);
    if (!p->bstack) {
        free(p);
        return NULL;
    }
    p->line_start = true;
    p->eol_len = 1;
    p->root = new_part(p, NULL, 0, 0);
    if (!p->root) {
        tern_mime_parser_free(p);
        return NULL;
    }
    return p;
}

int tern_mime_parser_feed(tern_mime_parser *p, const uint8_t *data, size_t len)
{
    size_t i = 0;
    while (i < len && !p->oom && !p->finished) {
        if (p->skip_line) {
            const uint8_t *e = memchr(data + i, '\n', len - i);
            size_t n = e ? (size_t)(e - (data + i)) + 1 : len - i;
            advance(p, data + i, n);
            i += n;
            if (e) {
                p->skip_line = false;
                after_boundary(p);
            }
            continue;
        }
        if (p->hold) {
            uint8_t c = data[i++];
            p->held[p->hold_len++] = c;
            if ((p->hold_len <= 2 && c != '-') || c == '\n' || p->hold_len == LINE_HOLD_MAX)
                decide(p);
            continue;
        }
        if (p->line_start && p->nb > 0 && !p->no_boundaries) {
            p->hold = true;
            p->hold_len = 0;
            continue;
        }
        /* Up to the end of this line, in one piece. */
        const uint8_t *e = memchr(data + i, '\n', len - i);
        size_t n = e ? (size_t)(e - (data + i)) + 1 : len - i;
        dispatch(p, data + i, n);
        i += n;
    }
    return p->oom ? -1 : 0;
}

tern_mime_part *tern_mime_parser_finish(tern_mime_parser *p)
{
    if (p->oom || p->finished)
        return p->oom ? NULL : p->root;
    if (p->hold && p->hold_len > 0)
        decide(p);
    p->hold = false;
    if (p->skip_line || p->after != AFTER_NONE) {
        p->skip_line = false;
        after_boundary(p);
    }
    while (p->cur && !p->oom)
        close_cur(p, p->off, false);
    p->finished = true;
    return p->oom ? NULL : p->root;
}

void tern_mime_parser_free(tern_mime_parser *p)
{
    if (!p)
        return;
    free(p->bstack);
    free(p);
}

tern_mime_part *tern_mime_parse(tern_arena *a, const uint8_t *msg, size_t len,
                                const tern_mime_limits *lim)
{
    tern_mime_parser *p = tern_mime_parser_new(a, lim);
    if (!p)
        return NULL;
    tern_mime_part *root = NULL;
    if (tern_mime_parser_feed(p, msg, len) == 0)
        root = tern_mime_parser_finish(p);
    tern_mime_parser_free(p);
    return root;
}

/* ---- queries -------------------------------------------------------------------- */

size_t tern_mime_count_parts(const tern_mime_part *m)
{
    size_t n = 0;
    while (m) {
        n++;
        if (m->children) {
            m = m->children;
            continue;
        }
        while (m && !m->next)
            m = m->parent;
        if (m)
            m = m->next;
    }
    return n;
}

const tern_mime_param *tern_mime_param_get(const tern_mime_param *l, const char *name)
{
    for (; l; l = l->next)
        if (ieq(l->name, strlen(l->name), name))
            return l;
    return NULL;
}

const tern_mime_part *tern_mime_part_by_section(const tern_mime_part *root, const char *s,
                                                size_t len)
{
    const tern_mime_part *m = root;
    size_t i = 0;
    while (i < len && m) {
        unsigned long num = 0;
        size_t ds = i;
        while (i < len && s[i] >= '0' && s[i] <= '9' && num < 1000000)
            num = num * 10 + (unsigned long)(s[i++] - '0');
        if (i == ds || num == 0 || (i < len && s[i] != '.') || (i < len && i + 1 == len))
            return NULL;
        if (i < len)
            i++; /* the dot */
        if (m->flags & TERN_MIME_F_MESSAGE)
            m = m->children;
        if (!(m->flags & TERN_MIME_F_MULTIPART)) {
            if (num != 1)
                return NULL;
            continue;
        }
        m = m->children;
        while (m && --num > 0)
            m = m->next;
    }
    return m;
}
