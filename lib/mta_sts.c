/* MTA-STS policy, TXT records, the policy response head and the MX rule
 * (see mta_sts.h). Input: untrusted bytes from DNS and a web server. The
 * two resumable parsers share one idea: collect a line up to a cap, then
 * look at the whole line, so a split anywhere in the input cannot change
 * the result. */
#include "lib/mta_sts.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static bool is_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static bool is_wsp(unsigned char c)
{
    return c == ' ' || c == '\t';
}

static char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

const char *tern_sts_mode_name(tern_sts_mode m)
{
    switch (m) {
    case TERN_STS_ENFORCE:
        return "enforce";
    case TERN_STS_TESTING:
        return "testing";
    case TERN_STS_NONE:
        return "none";
    default:
        return "unset";
    }
}

tern_sts_mode tern_sts_mode_from_name(const char *s)
{
    if (strcasecmp(s, "enforce") == 0)
        return TERN_STS_ENFORCE;
    if (strcasecmp(s, "testing") == 0)
        return TERN_STS_TESTING;
    if (strcasecmp(s, "none") == 0)
        return TERN_STS_NONE;
    return TERN_STS_MODE_UNSET;
}

/* A host name (LDH labels of 1..63, joined by dots); with `wild` a
 * leading "*." is allowed. A single trailing dot is tolerated. */
static bool name_ok(const char *s, size_t len, bool wild)
{
    if (len > 0 && s[len - 1] == '.')
        len--;
    if (wild && len >= 2 && s[0] == '*' && s[1] == '.') {
        s += 2;
        len -= 2;
    }
    if (len == 0 || len > 253)
        return false;
    size_t label = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '.') {
            if (label == 0 || s[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        if (!(is_alpha(c) || is_digit(c) || c == '-' || c == '_'))
            return false;
        if (label == 0 && c == '-')
            return false;
        if (++label > 63)
            return false;
    }
    return label > 0 && s[len - 1] != '-';
}

/* ---- the policy file ---------------------------------------------------- */

void tern_sts_parser_init(tern_sts_parser *p)
{
    memset(p, 0, sizeof(*p));
    p->st = TERN_STS_MORE;
}

static tern_sts_status sts_fail(tern_sts_parser *p, const char *why)
{
    p->st = TERN_STS_ERROR;
    p->why = why;
    return p->st;
}

/* One complete line (without its terminator). */
static tern_sts_status sts_line(tern_sts_parser *p)
{
    char *l = p->line;
    size_t n = p->line_len;
    l[n] = '\0';
    while (n > 0 && is_wsp((unsigned char)l[n - 1]))
        l[--n] = '\0';
    if (n == 0)
        return TERN_STS_MORE; /* blank lines carry nothing; tolerated */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)l[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return sts_fail(p, "control character in the policy");
    }
    size_t k = 0;
    if (!is_alpha((unsigned char)l[0]) && !is_digit((unsigned char)l[0]))
        return sts_fail(p, "a policy line does not start with a field name");
    while (k < n && (is_alpha((unsigned char)l[k]) || is_digit((unsigned char)l[k]) ||
                     l[k] == '_' || l[k] == '-' || l[k] == '.'))
        k++;
    if (k > 32)
        return sts_fail(p, "field name too long");
    if (k >= n || l[k] != ':')
        return sts_fail(p, "a policy line is not \"key: value\"");
    l[k] = '\0';
    const char *key = l;
    const char *v = l + k + 1;
    while (is_wsp((unsigned char)*v))
        v++;
    size_t vlen = strlen(v);
    if (strcmp(key, "version") == 0) {
        if (p->have_version)
            return TERN_STS_MORE;
        if (strcmp(v, "STSv1") != 0)
            return sts_fail(p, "version is not STSv1");
        p->have_version = true;
    } else if (strcmp(key, "mode") == 0) {
        if (p->have_mode)
            return TERN_STS_MORE;
        tern_sts_mode m = tern_sts_mode_from_name(v);
        if (m == TERN_STS_MODE_UNSET)
            return sts_fail(p, "mode is not enforce, testing or none");
        p->pol.mode = m;
        p->have_mode = true;
    } else if (strcmp(key, "max_age") == 0) {
        if (p->have_max_age)
            return TERN_STS_MORE;
        if (vlen == 0 || vlen > 10)
            return sts_fail(p, "max_age is not 1 to 10 digits");
        uint64_t age = 0;
        for (size_t i = 0; i < vlen; i++) {
            if (!is_digit((unsigned char)v[i]))
                return sts_fail(p, "max_age is not a number");
            age = age * 10 + (uint64_t)(v[i] - '0');
        }
        /* RFC 8461 3.2 caps it; a longer one is read as the cap. */
        p->pol.max_age = age > TERN_STS_MAX_AGE_MAX ? TERN_STS_MAX_AGE_MAX : (uint32_t)age;
        p->have_max_age = true;
    } else if (strcmp(key, "mx") == 0) {
        if (!name_ok(v, vlen, true))
            return sts_fail(p, "mx is not a host name or *.domain pattern");
        if (p->pol.n_mx >= TERN_STS_MX_MAX)
            return sts_fail(p, "too many mx patterns");
        char *dst = p->pol.mx[p->pol.n_mx++];
        if (v[vlen - 1] == '.')
            vlen--;
        for (size_t i = 0; i < vlen; i++)
            dst[i] = lower(v[i]);
        dst[vlen] = '\0';
    }
    /* Unknown fields are ignored (RFC 8461 3.2: extensions). */
    return TERN_STS_MORE;
}

tern_sts_status tern_sts_parse(tern_sts_parser *p, const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len && p->st == TERN_STS_MORE; i++) {
        if (++p->total > TERN_STS_POLICY_MAX)
            return sts_fail(p, "policy larger than 64 KiB");
        uint8_t c = data[i];
        if (c == '\n') {
            if (p->line_len > 0 && p->line[p->line_len - 1] == '\r')
                p->line_len--;
            sts_line(p);
            p->line_len = 0;
            continue;
        }
        if (c == '\0')
            return sts_fail(p, "NUL in the policy");
        if (p->line_len >= TERN_STS_LINE_MAX)
            return sts_fail(p, "policy line too long");
        p->line[p->line_len++] = (char)c;
    }
    return p->st;
}

tern_sts_status tern_sts_finish(tern_sts_parser *p, tern_sts_policy *out, const char **why_r)
{
    if (p->st == TERN_STS_MORE && p->line_len > 0) {
        if (p->line[p->line_len - 1] == '\r')
            p->line_len--;
        sts_line(p);
        p->line_len = 0;
    }
    if (p->st == TERN_STS_MORE) {
        if (!p->have_version)
            sts_fail(p, "no version field");
        else if (!p->have_mode)
            sts_fail(p, "no mode field");
        else if (!p->have_max_age)
            sts_fail(p, "no max_age field");
        else if (p->pol.mode != TERN_STS_NONE && p->pol.n_mx == 0)
            sts_fail(p, "no mx field");
        else
            p->st = TERN_STS_DONE;
    }
    if (p->st == TERN_STS_DONE && out)
        *out = p->pol;
    if (why_r)
        *why_r = p->st == TERN_STS_ERROR ? p->why : NULL;
    return p->st;
}

/* ---- the MX rule -------------------------------------------------------- */

/* Compares a[0..n) with b case-insensitively, ignoring one trailing dot
 * on either side. */
static bool name_eq(const char *a, size_t an, const char *b, size_t bn)
{
    if (an > 0 && a[an - 1] == '.')
        an--;
    if (bn > 0 && b[bn - 1] == '.')
        bn--;
    return an == bn && an > 0 && strncasecmp(a, b, an) == 0;
}

bool tern_sts_mx_match(const char *pattern, const char *host)
{
    size_t pl = strlen(pattern), hl = strlen(host);
    if (pl >= 2 && pattern[0] == '*' && pattern[1] == '.') {
        /* RFC 8461 4.1: the wildcard stands for exactly one label. */
        const char *dot = memchr(host, '.', hl);
        if (dot == NULL || dot == host)
            return false;
        size_t rest = hl - (size_t)(dot + 1 - host);
        return name_eq(pattern + 2, pl - 2, dot + 1, rest);
    }
    return name_eq(pattern, pl, host, hl);
}

bool tern_sts_policy_match(const tern_sts_policy *pol, const char *host)
{
    for (size_t i = 0; i < pol->n_mx; i++)
        if (tern_sts_mx_match(pol->mx[i], host))
            return true;
    return false;
}

/* ---- TXT records -------------------------------------------------------- */

/* Walks "k=v; k=v;" fields (RFC 8461 3.1, RFC 8460 3): calls `field` with
 * each key and value (trimmed). The first field must be v=<version>.
 * Returns -1 with *why_r on a syntax error. */
typedef int (*txt_field_fn)(void *arg, const char *k, size_t kl, const char *v, size_t vl);

static int txt_walk(const char *t, size_t len, const char *version, txt_field_fn fn, void *arg,
                    const char **why_r)
{
    size_t i = 0;
    bool first = true;
    while (i < len) {
        while (i < len && is_wsp((unsigned char)t[i]))
            i++;
        if (i >= len)
            break;
        size_t ks = i;
        while (i < len && t[i] != '=' && t[i] != ';')
            i++;
        if (i >= len || t[i] != '=') {
            *why_r = "a field is not key=value";
            return -1;
        }
        size_t kl = i - ks;
        i++;
        size_t vs = i;
        while (i < len && t[i] != ';')
            i++;
        size_t vl = i - vs;
        while (vl > 0 && is_wsp((unsigned char)t[vs + vl - 1]))
            vl--;
        if (i < len)
            i++; /* the ';' */
        if (kl == 0) {
            *why_r = "empty key";
            return -1;
        }
        for (size_t j = vs; j < vs + vl; j++)
            if ((unsigned char)t[j] < 0x20 || (unsigned char)t[j] == 0x7f) {
                *why_r = "control character in the record";
                return -1;
            }
        if (first) {
            if (!(kl == 1 && t[ks] == 'v' && vl == strlen(version) &&
                  memcmp(t + vs, version, vl) == 0)) {
                *why_r = "the record does not start with the expected version";
                return -1;
            }
            first = false;
            continue;
        }
        if (fn(arg, t + ks, kl, t + vs, vl) != 0) {
            *why_r = "bad field value";
            return -1;
        }
    }
    if (first) {
        *why_r = "empty record";
        return -1;
    }
    return 0;
}

typedef struct {
    char *out;
    size_t cap;
    const char *key;
    bool seen;
} one_field;

static int take_id(void *arg, const char *k, size_t kl, const char *v, size_t vl)
{
    one_field *f = arg;
    if (kl != strlen(f->key) || memcmp(k, f->key, kl) != 0 || f->seen)
        return 0;
    if (vl == 0 || vl > f->cap)
        return -1;
    for (size_t i = 0; i < vl; i++)
        if (!is_alpha((unsigned char)v[i]) && !is_digit((unsigned char)v[i]))
            return -1;
    memcpy(f->out, v, vl);
    f->out[vl] = '\0';
    f->seen = true;
    return 0;
}

static int take_rua(void *arg, const char *k, size_t kl, const char *v, size_t vl)
{
    one_field *f = arg;
    if (kl != strlen(f->key) || memcmp(k, f->key, kl) != 0 || f->seen)
        return 0;
    if (vl == 0 || vl > f->cap)
        return -1;
    memcpy(f->out, v, vl);
    f->out[vl] = '\0';
    f->seen = true;
    return 0;
}

/* A record of version `v` whose one field of interest `take` copies. */
static int one_field_parse(const char *txt, size_t len, const char *v,
                           txt_field_fn take,
                           one_field *f, const char *missing, const char **why_r)
{
    const char *why = NULL;
    if (txt_walk(txt, len, v, take, f, &why) != 0) {
        if (why_r)
            *why_r = why;
        return -1;
    }
    if (!f->seen) {
        if (why_r)
            *why_r = missing;
        return -1;
    }
    return 0;
}

int tern_sts_txt_parse(const char *txt, size_t len, char id_r[TERN_STS_ID_MAX + 1],
                       const char **why_r)
{
    one_field f = {id_r, TERN_STS_ID_MAX, "id", false};
    return one_field_parse(txt, len, "STSv1", take_id, &f, "no id field", why_r);
}

int tern_tlsrpt_txt_parse(const char *txt, size_t len, char rua_r[TERN_TLSRPT_RUA_MAX + 1],
                          const char **why_r)
{
    one_field f = {rua_r, TERN_TLSRPT_RUA_MAX, "rua", false};
    return one_field_parse(txt, len, "TLSRPTv1", take_rua, &f, "no rua field", why_r);
}

/* ---- the response head -------------------------------------------------- */

void tern_sts_http_init(tern_sts_http *h)
{
    memset(h, 0, sizeof(*h));
    h->st = TERN_STS_MORE;
}

static tern_sts_status http_fail(tern_sts_http *h, const char *why)
{
    h->st = TERN_STS_ERROR;
    h->why = why;
    return h->st;
}

static bool ieq_prefix(const char *s, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    return n >= l && strncasecmp(s, lit, l) == 0;
}

static tern_sts_status http_line(tern_sts_http *h)
{
    char *l = h->line;
    size_t n = h->line_len;
    l[n] = '\0';
    if (!h->status_seen) {
        /* "HTTP/1.x NNN reason" */
        if (n < 12 || memcmp(l, "HTTP/1.", 7) != 0 || !is_digit((unsigned char)l[7]) ||
            l[8] != ' ' || !is_digit((unsigned char)l[9]) || !is_digit((unsigned char)l[10]) ||
            !is_digit((unsigned char)l[11]) || (n > 12 && l[12] != ' '))
            return http_fail(h, "malformed HTTP status line");
        h->status = (l[9] - '0') * 100 + (l[10] - '0') * 10 + (l[11] - '0');
        h->status_seen = true;
        return TERN_STS_MORE;
    }
    if (n == 0) {
        h->st = TERN_STS_DONE;
        return h->st;
    }
    if (is_wsp((unsigned char)l[0]))
        return http_fail(h, "obsolete header line folding");
    char *colon = memchr(l, ':', n);
    if (colon == NULL || colon == l)
        return http_fail(h, "malformed HTTP header");
    size_t kl = (size_t)(colon - l);
    const char *v = colon + 1;
    while (is_wsp((unsigned char)*v))
        v++;
    size_t vl = strlen(v);
    while (vl > 0 && is_wsp((unsigned char)v[vl - 1]))
        vl--;
    if (kl == 12 && strncasecmp(l, "Content-Type", 12) == 0) {
        if (h->content_type_seen)
            return http_fail(h, "two Content-Type headers");
        h->content_type_seen = true;
        /* text/plain, optionally followed by parameters */
        h->text_plain = ieq_prefix(v, vl, "text/plain") &&
                        (vl == 10 || v[10] == ';' || is_wsp((unsigned char)v[10]));
    } else if (kl == 14 && strncasecmp(l, "Content-Length", 14) == 0) {
        if (vl == 0 || vl > 19)
            return http_fail(h, "bad Content-Length");
        uint64_t cl = 0;
        for (size_t i = 0; i < vl; i++) {
            if (!is_digit((unsigned char)v[i]))
                return http_fail(h, "bad Content-Length");
            cl = cl * 10 + (uint64_t)(v[i] - '0');
        }
        if (h->have_length && h->content_length != cl)
            return http_fail(h, "conflicting Content-Length headers");
        h->have_length = true;
        h->content_length = cl;
    } else if (kl == 17 && strncasecmp(l, "Transfer-Encoding", 17) == 0) {
        if (!(vl == 8 && strncasecmp(v, "identity", 8) == 0))
            h->chunked = true;
    }
    return TERN_STS_MORE;
}

tern_sts_status tern_sts_http_parse(tern_sts_http *h, const uint8_t *data, size_t len,
                                    size_t *used_r)
{
    size_t i = 0;
    for (; i < len && h->st == TERN_STS_MORE; i++) {
        if (++h->total > TERN_STS_HTTP_HEAD_MAX) {
            http_fail(h, "HTTP response head too long");
            break;
        }
        uint8_t c = data[i];
        if (c == '\n') {
            if (h->line_len > 0 && h->line[h->line_len - 1] == '\r')
                h->line_len--;
            http_line(h);
            h->line_len = 0;
            continue;
        }
        if (c == '\0' || (c < 0x20 && c != '\t' && c != '\r') || c == 0x7f) {
            http_fail(h, "control character in the HTTP head");
            break;
        }
        if (h->line_len >= TERN_STS_LINE_MAX) {
            http_fail(h, "HTTP header line too long");
            break;
        }
        h->line[h->line_len++] = (char)c;
    }
    if (used_r)
        *used_r = i;
    return h->st;
}
