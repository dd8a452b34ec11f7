/* Matcher HasAttachment: every recipient when some part of the message is
 * an attachment, none otherwise. A part is an attachment when its
 * Content-Disposition is "attachment" or carries a filename parameter, or
 * its Content-Type carries a name parameter (RFC 2231 forms included:
 * filename*, filename*0*...). lib/mime.h is not on main yet, so this walks
 * the MIME structure itself: multipart bodies are split on their boundary
 * delimiter lines (RFC 2046 5.1.1: "--boundary", optionally "--", then only
 * white space), message/rfc822 parts are looked into, and the walk is
 * bounded in depth, parts and header bytes (HA_MAX_*); what lies past a
 * bound is not looked at. Input: the message, untrusted bytes; the walk
 * only reads within the body span and never fails on malformed MIME. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mailets/builtin/matcher_util.h"

#define HA_MAX_DEPTH 32
#define HA_MAX_PARTS 1000
#define HA_MAX_HEADER 65536 /* bytes of a part's header looked at */
#define HA_MAX_BOUNDARY 200 /* RFC 2046 says 70; some senders go further */

/* A field value as it stands in the part (still folded: the scanner
 * treats CR and LF as white space). */
typedef struct {
    const uint8_t *p;
    size_t len;
} ha_span;

typedef struct {
    size_t parts;
} ha_walk;

static int ha_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    *state_r = NULL;
    return tern_matcher_no_condition(p, "HasAttachment", err, size);
}

/* ---- parameters ----------------------------------------------------------- */

static bool is_ws(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Whether the parameter name (up to '=') is `base`, `base*`, `base*N` or
 * `base*N*`: RFC 2231 splits and encodes long or non-ASCII filenames. */
static bool param_is(const uint8_t *n, size_t len, const char *base)
{
    size_t bl = strlen(base);
    if (len < bl || strncasecmp((const char *)n, base, bl) != 0)
        return false;
    if (len == bl)
        return true;
    if (n[bl] != '*')
        return false;
    for (size_t i = bl + 1; i < len; i++)
        if (!(n[i] >= '0' && n[i] <= '9') && !(i == len - 1 && n[i] == '*'))
            return false;
    return true;
}

/* Walks "token; a=b; c=\"d;e\"" and reports the first token (lowercased
 * into tok, cut to its size) and, for the parameter `want` (base name),
 * whether it is present and (into val) its value when unquoted or quoted. */
static void content_value(ha_span v, char *tok, size_t tok_size, const char *want, bool *has_r,
                          char *val, size_t val_size)
{
    size_t i = 0, t = 0;
    *has_r = false;
    if (val_size)
        val[0] = '\0';
    while (i < v.len && is_ws(v.p[i]))
        i++;
    while (i < v.len && v.p[i] != ';' && !is_ws(v.p[i])) {
        if (t + 1 < tok_size) {
            uint8_t c = v.p[i];
            tok[t++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        }
        i++;
    }
    if (tok_size)
        tok[t] = '\0';
    while (i < v.len) {
        /* Skip to the next ';' outside quotes. */
        bool q = false;
        while (i < v.len && (q || v.p[i] != ';')) {
            if (v.p[i] == '"')
                q = !q;
            else if (v.p[i] == '\\' && q && i + 1 < v.len)
                i++;
            i++;
        }
        if (i >= v.len)
            break;
        i++; /* ';' */
        while (i < v.len && is_ws(v.p[i]))
            i++;
        size_t ns = i;
        while (i < v.len && v.p[i] != '=' && v.p[i] != ';' && !is_ws(v.p[i]))
            i++;
        size_t nl = i - ns;
        while (i < v.len && is_ws(v.p[i]))
            i++;
        if (i >= v.len || v.p[i] != '=')
            continue;
        i++;
        while (i < v.len && is_ws(v.p[i]))
            i++;
        if (!param_is(v.p + ns, nl, want))
            continue;
        *has_r = true;
        if (val_size == 0 || val[0] != '\0')
            continue; /* the first one counts (boundary) */
        size_t o = 0;
        if (i < v.len && v.p[i] == '"') {
            for (i++; i < v.len && v.p[i] != '"'; i++) {
                if (v.p[i] == '\\' && i + 1 < v.len)
                    i++;
                if (v.p[i] == '\r' || v.p[i] == '\n')
                    continue;
                if (o + 1 < val_size)
                    val[o++] = (char)v.p[i];
            }
        } else {
            for (; i < v.len && v.p[i] != ';' && !is_ws(v.p[i]); i++)
                if (o + 1 < val_size)
                    val[o++] = (char)v.p[i];
        }
        val[o] = '\0';
    }
}

/* ---- a part's header ------------------------------------------------------ */

typedef struct {
    ha_span type, disp;
    bool has_type, has_disp;
} ha_fields;

/* Finds Content-Type and Content-Disposition in a header block; returns the
 * offset of the body (after the empty line), or len when there is none. */
static size_t header_scan(const uint8_t *p, size_t len, ha_fields *f)
{
    memset(f, 0, sizeof(*f));
    size_t lim = len < HA_MAX_HEADER ? len : HA_MAX_HEADER;
    size_t i = 0;
    while (i < lim) {
        const uint8_t *nl = memchr(p + i, '\n', lim - i);
        size_t end = nl ? (size_t)(nl - p) + 1 : lim;
        if (end - i <= 2 && (p[i] == '\n' || (p[i] == '\r' && end - i == 2)))
            return end; /* the empty line */
        /* The field goes on while the next line starts with white space. */
        size_t fend = end;
        while (fend < lim && (p[fend] == ' ' || p[fend] == '\t')) {
            const uint8_t *n2 = memchr(p + fend, '\n', lim - fend);
            fend = n2 ? (size_t)(n2 - p) + 1 : lim;
        }
        const uint8_t *colon = memchr(p + i, ':', fend - i);
        if (colon) {
            size_t nlen = (size_t)(colon - (p + i));
            ha_span val = {colon + 1, fend - (size_t)(colon + 1 - p)};
            if (nlen == 12 && strncasecmp((const char *)p + i, "Content-Type", 12) == 0 &&
                !f->has_type) {
                f->type = val;
                f->has_type = true;
            } else if (nlen == 19 &&
                       strncasecmp((const char *)p + i, "Content-Disposition", 19) == 0 &&
                       !f->has_disp) {
                f->disp = val;
                f->has_disp = true;
            }
        }
        i = fend;
    }
    return len <= HA_MAX_HEADER ? len : lim;
}

/* ---- the walk -------------------------------------------------------------- */

static bool walk_body(ha_walk *w, const ha_fields *f, const uint8_t *body, size_t len,
                      unsigned depth);

/* Whether the part with these fields is an attachment, or contains one. */
static bool part_check(ha_walk *w, const ha_fields *f, const uint8_t *body, size_t len,
                       unsigned depth)
{
    char tok[64], dummy[1];
    bool has;
    if (f->has_disp) {
        content_value(f->disp, tok, sizeof(tok), "filename", &has, dummy, 0);
        if (has || strcmp(tok, "attachment") == 0)
            return true;
    }
    if (f->has_type) {
        content_value(f->type, tok, sizeof(tok), "name", &has, dummy, 0);
        if (has)
            return true;
    }
    return walk_body(w, f, body, len, depth);
}

static bool walk_part(ha_walk *w, const uint8_t *p, size_t len, unsigned depth)
{
    if (++w->parts > HA_MAX_PARTS || depth > HA_MAX_DEPTH)
        return false;
    ha_fields f;
    size_t b = header_scan(p, len, &f);
    return part_check(w, &f, p + b, len - b, depth);
}

/* A delimiter line at p (a line start): "--" boundary, then "--" (close)
 * or only white space to the line end. Returns 0 no, 1 delimiter, 2 close. */
static int delimiter(const uint8_t *p, size_t len, const char *bd, size_t bl)
{
    if (len < bl + 2 || p[0] != '-' || p[1] != '-' || memcmp(p + 2, bd, bl) != 0)
        return 0;
    size_t i = bl + 2;
    int kind = 1;
    if (i + 1 < len && p[i] == '-' && p[i + 1] == '-') {
        kind = 2;
        i += 2;
    }
    for (; i < len && p[i] != '\n'; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r')
            return 0;
    return kind;
}

static bool walk_multipart(ha_walk *w, const char *bd, const uint8_t *body, size_t len,
                           unsigned depth)
{
    size_t bl = strlen(bd);
    size_t part_start = 0;
    bool in_part = false;
    size_t i = 0;
    while (i < len) {
        const uint8_t *nl = memchr(body + i, '\n', len - i);
        size_t eol = nl ? (size_t)(nl - body) + 1 : len;
        int d = delimiter(body + i, eol - i, bd, bl);
        if (d) {
            if (in_part) {
                /* The line end before the delimiter belongs to it. */
                size_t pe = i;
                if (pe > part_start && body[pe - 1] == '\n')
                    pe--;
                if (pe > part_start && body[pe - 1] == '\r')
                    pe--;
                if (walk_part(w, body + part_start, pe - part_start, depth + 1))
                    return true;
                if (w->parts > HA_MAX_PARTS)
                    return false;
            }
            if (d == 2)
                return false; /* the epilogue is no part */
            in_part = true;
            part_start = eol;
        }
        i = eol;
    }
    /* No close delimiter: the last part runs to the end. */
    return in_part && walk_part(w, body + part_start, len - part_start, depth + 1);
}

static bool walk_body(ha_walk *w, const ha_fields *f, const uint8_t *body, size_t len,
                      unsigned depth)
{
    if (!f->has_type || depth >= HA_MAX_DEPTH)
        return false;
    char tok[64], bd[HA_MAX_BOUNDARY + 2];
    bool has;
    content_value(f->type, tok, sizeof(tok), "boundary", &has, bd, sizeof(bd));
    if (strncmp(tok, "multipart/", 10) == 0) {
        size_t bl = strlen(bd);
        if (!has || bl == 0 || bl > HA_MAX_BOUNDARY)
            return false;
        return walk_multipart(w, bd, body, len, depth);
    }
    if (strcmp(tok, "message/rfc822") == 0 || strcmp(tok, "message/global") == 0)
        return walk_part(w, body, len, depth + 1);
    return false;
}

static int ha_match(void *state, tern_mail *m, bool *matched)
{
    /* The top-level fields come from the mail's own header (mailets may
     * have changed it); the body from its shared bytes. */
    ha_fields f;
    memset(&f, 0, sizeof(f));
    const char *ct = tern_mail_header_get(m, "Content-Type", 0);
    const char *cd = tern_mail_header_get(m, "Content-Disposition", 0);
    if (ct) {
        f.type = (ha_span){(const uint8_t *)ct, strlen(ct)};
        f.has_type = true;
    }
    if (cd) {
        f.disp = (ha_span){(const uint8_t *)cd, strlen(cd)};
        f.has_disp = true;
    }
    ha_walk w = {.parts = 1};
    const uint8_t *body = tern_mail_body_data(m);
    size_t len = (size_t)tern_mail_body_size(m);
    tern_matcher_all(m, matched,
                     part_check(&w, &f, body ? body : (const uint8_t *)"", body ? len : 0, 0));
    return 0;
}

static const tern_mailet_module tern_mb_has_attachment = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "HasAttachment",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = ha_init,
    .match = ha_match,
};
TERN_BUILTIN(tern_mb_has_attachment)
