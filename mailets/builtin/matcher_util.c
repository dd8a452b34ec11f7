/* Helpers shared by the builtin matchers (see matcher_util.h). Input: the
 * config's condition text, checked strictly at init; at match time the
 * mail's addresses and header values, which are untrusted bytes and only
 * ever compared or fed to a bounded regex match. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "mailets/builtin/matcher_util.h"

#include <arpa/inet.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the condition -------------------------------------------------------- */

int tern_matcher_no_condition(const tern_mailet_params *p, const char *name, char *err, size_t size)
{
    static const char *const known[] = {"condition", NULL};
    if (tern_param_check(p, known, err, size) != 0)
        return -1;
    if (tern_param_get(p, "condition"))
        return tern_builtin_fail(err, size, "takes no condition (write \"%s\", not \"%s=...\")",
                                 name, name);
    return 0;
}

static bool blank(const char *s)
{
    for (; *s; s++)
        if (*s != ' ' && *s != '\t')
            return false;
    return true;
}

const char *tern_matcher_condition(const tern_mailet_params *p, const char *name, const char *usage,
                                   char *err, size_t size)
{
    static const char *const known[] = {"condition", NULL};
    if (tern_param_check(p, known, err, size) != 0)
        return NULL;
    const char *c = tern_param_str(p, "condition");
    if (c == NULL || blank(c)) {
        tern_builtin_fail(err, size, "needs a condition, e.g. %s=%s", name, usage);
        return NULL;
    }
    return c;
}

/* ---- lists ----------------------------------------------------------------- */

void tern_matcher_list_free(tern_matcher_list *l)
{
    for (size_t i = 0; l->items && i < l->n; i++)
        free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

int tern_matcher_list_parse(const char *s, char sep, tern_matcher_list *out, char *err, size_t size)
{
    out->items = NULL;
    out->n = 0;
    size_t count = 1;
    for (const char *p = s; *p; p++)
        count += *p == sep;
    if (count > TERN_MATCHER_MAX_ITEMS)
        return tern_builtin_fail(err, size, "more than %d items", TERN_MATCHER_MAX_ITEMS);
    out->items = calloc(count, sizeof(char *));
    if (out->items == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    const char *p = s;
    for (size_t i = 0; i < count; i++) {
        const char *end = strchr(p, sep);
        if (end == NULL)
            end = p + strlen(p);
        const char *a = p, *b = end;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        if (a == b) {
            tern_matcher_list_free(out);
            return tern_builtin_fail(err, size, "empty item %zu in \"%s\"", i + 1, s);
        }
        if ((size_t)(b - a) > TERN_MATCHER_MAX_ITEM_LEN) {
            tern_matcher_list_free(out);
            return tern_builtin_fail(err, size, "item %zu is longer than %d bytes", i + 1,
                                     TERN_MATCHER_MAX_ITEM_LEN);
        }
        out->items[i] = strndup(a, (size_t)(b - a));
        if (out->items[i] == NULL) {
            tern_matcher_list_free(out);
            return tern_builtin_fail(err, size, "out of memory");
        }
        out->n = i + 1;
        p = *end ? end + 1 : end;
    }
    return 0;
}

int tern_matcher_check_addresses(tern_matcher_list *l, char *err, size_t size)
{
    for (size_t i = 0; i < l->n; i++) {
        char *a = l->items[i];
        size_t n = strlen(a);
        if (n >= 2 && a[0] == '<' && a[n - 1] == '>') {
            memmove(a, a + 1, n - 2);
            a[n - 2] = '\0';
        }
        if (a[0] == '\0')
            return tern_builtin_fail(err, size,
                                     "\"<>\" is the null sender, not an address "
                                     "(SenderIsNull matches it)");
        const char *at = strrchr(a, '@');
        bool ok = at != NULL && at != a && at[1] != '\0';
        for (const unsigned char *c = (const unsigned char *)a; ok && *c; c++)
            if (*c <= ' ' || *c == 127 || *c == '<' || *c == '>')
                ok = false;
        if (!ok)
            return tern_builtin_fail(err, size, "\"%s\" is not an address (local@domain)", a);
    }
    return 0;
}

int tern_matcher_parse_count(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s < '0' || *s > '9')
        return -1;
    uint64_t v = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        if (v > (UINT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

void tern_matcher_all(tern_mail *m, bool *matched, bool yes)
{
    size_t n = tern_mail_rcpt_count(m);
    for (size_t i = 0; i < n; i++)
        matched[i] = yes;
}

/* ---- regexes ---------------------------------------------------------------- */

struct tern_matcher_regex {
    pcre2_code *code;
    pcre2_match_context *mctx;
};

tern_matcher_regex *tern_matcher_regex_new(const char *pattern, bool whole, char *err, size_t size)
{
    tern_matcher_regex *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        tern_builtin_fail(err, size, "out of memory");
        return NULL;
    }
    /* MATCH_INVALID_UTF: header bytes are the sender's and need not be
     * UTF-8; they must not make the match fail as an error. */
    uint32_t opts = PCRE2_CASELESS | PCRE2_UTF | PCRE2_MATCH_INVALID_UTF;
    if (whole)
        opts |= PCRE2_ANCHORED | PCRE2_ENDANCHORED;
    int code = 0;
    PCRE2_SIZE off = 0;
    r->code = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, opts, &code, &off, NULL);
    if (r->code == NULL) {
        PCRE2_UCHAR msg[160];
        if (pcre2_get_error_message(code, msg, sizeof(msg)) < 0)
            snprintf((char *)msg, sizeof(msg), "error %d", code);
        tern_builtin_fail(err, size, "invalid regex \"%s\": %s at offset %zu", pattern,
                          (const char *)msg, (size_t)off);
        free(r);
        return NULL;
    }
    r->mctx = pcre2_match_context_create(NULL);
    if (r->mctx == NULL) {
        pcre2_code_free(r->code);
        free(r);
        tern_builtin_fail(err, size, "out of memory");
        return NULL;
    }
    pcre2_set_match_limit(r->mctx, TERN_MATCHER_REGEX_MATCH_LIMIT);
    pcre2_set_depth_limit(r->mctx, TERN_MATCHER_REGEX_DEPTH_LIMIT);
    return r;
}

int tern_matcher_regex_match(const tern_matcher_regex *r, const char *subject, size_t len)
{
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (md == NULL)
        return -1;
    int rc = pcre2_match(r->code, (PCRE2_SPTR)subject, len, 0, 0, md, r->mctx);
    pcre2_match_data_free(md);
    if (rc >= 0)
        return 1;
    if (rc == PCRE2_ERROR_NOMATCH)
        return 0;
    return -1;
}

void tern_matcher_regex_free(tern_matcher_regex *r)
{
    if (r == NULL)
        return;
    pcre2_match_context_free(r->mctx);
    pcre2_code_free(r->code);
    free(r);
}

/* ---- networks ----------------------------------------------------------------- */

/* "255.255.240.0" -> 20; -1 unless the mask is contiguous ones. */
static int mask_prefix(const char *s)
{
    struct in_addr a;
    if (inet_pton(AF_INET, s, &a) != 1)
        return -1;
    uint32_t m = ntohl(a.s_addr);
    int bits = 0;
    while (bits < 32 && (m & (0x80000000u >> bits)))
        bits++;
    if (bits < 32 && (m << bits) != 0)
        return -1;
    return bits;
}

/* Rewrites James's forms into the CIDR text tern_cidr_parse takes. */
static int net_normalise(const char *in, char *out, size_t size)
{
    size_t n = strlen(in);
    if (n >= 2 && in[0] == '[' && in[n - 1] == ']') {
        in++;
        n -= 2;
    }
    if (n == 0 || n >= size || n >= 64)
        return -1;
    char tmp[64];
    memcpy(tmp, in, n);
    tmp[n] = '\0';
    if (strchr(tmp, '*')) {
        /* "192.168.*" or "10.*.*.*": wildcards only after the fixed octets. */
        unsigned oct[4] = {0, 0, 0, 0};
        int fixed = 0, parts = 0;
        bool wild = false;
        if (strstr(tmp, "..") || tmp[0] == '.' || tmp[n - 1] == '.')
            return -1;
        for (char *save = NULL, *tok = strtok_r(tmp, ".", &save); tok;
             tok = strtok_r(NULL, ".", &save)) {
            if (parts == 4)
                return -1;
            if (strcmp(tok, "*") == 0) {
                wild = true;
            } else {
                uint64_t v;
                if (wild || tern_matcher_parse_count(tok, 0, 255, &v) != 0 || strlen(tok) > 3)
                    return -1;
                oct[fixed++] = (unsigned)v;
            }
            parts++;
        }
        if (!wild || fixed == 0 || (parts != 4 && in[n - 1] != '*'))
            return -1;
        snprintf(out, size, "%u.%u.%u.%u/%d", oct[0], oct[1], oct[2], oct[3], fixed * 8);
        return 0;
    }
    char *slash = strchr(tmp, '/');
    if (slash && strchr(slash + 1, '.')) {
        int bits = mask_prefix(slash + 1);
        if (bits < 0)
            return -1;
        *slash = '\0';
        snprintf(out, size, "%s/%d", tmp, bits);
        return 0;
    }
    memcpy(out, tmp, n + 1);
    return 0;
}

int tern_matcher_nets_parse(const char *cond, tern_matcher_nets *out, char *err, size_t size)
{
    out->nets = NULL;
    out->n = 0;
    tern_matcher_list l;
    if (tern_matcher_list_parse(cond, ',', &l, err, size) != 0)
        return -1;
    out->nets = calloc(l.n, sizeof(*out->nets));
    if (out->nets == NULL) {
        tern_matcher_list_free(&l);
        return tern_builtin_fail(err, size, "out of memory");
    }
    for (size_t i = 0; i < l.n; i++) {
        char norm[80];
        if (net_normalise(l.items[i], norm, sizeof(norm)) != 0 ||
            tern_cidr_parse(norm, &out->nets[i]) != 0) {
            tern_builtin_fail(err, size,
                              "\"%s\" is not a network (10.0.0.0/8, 192.168.*, "
                              "192.168.0.0/255.255.0.0, 2001:db8::/32 or an address)",
                              l.items[i]);
            tern_matcher_list_free(&l);
            tern_matcher_nets_free(out);
            return -1;
        }
        out->n = i + 1;
    }
    tern_matcher_list_free(&l);
    return 0;
}

int tern_matcher_nets_match(const tern_matcher_nets *n, const char *addr)
{
    char tmp[64];
    size_t len = strlen(addr);
    if (len >= 2 && addr[0] == '[' && addr[len - 1] == ']') {
        addr++;
        len -= 2;
    }
    if (len == 0 || len >= sizeof(tmp))
        return -1;
    memcpy(tmp, addr, len);
    tmp[len] = '\0';
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, tmp, &in4->sin_addr) == 1)
        in4->sin_family = AF_INET;
    else if (inet_pton(AF_INET6, tmp, &in6->sin6_addr) == 1)
        in6->sin6_family = AF_INET6;
    else
        return -1;
    for (size_t i = 0; i < n->n; i++)
        if (tern_cidr_match(&n->nets[i], (const struct sockaddr *)&ss))
            return 1;
    return 0;
}

void tern_matcher_nets_free(tern_matcher_nets *n)
{
    free(n->nets);
    n->nets = NULL;
    n->n = 0;
}

int tern_matcher_remote_nets_init(const tern_mailet_params *p, const char *name, void **state_r,
                                  char *err, size_t size)
{
    const char *c = tern_matcher_condition(p, name, "127.0.0.0/8, ::1, 192.168.*", err, size);
    if (c == NULL)
        return -1;
    tern_matcher_nets *n = calloc(1, sizeof(*n));
    if (n == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    if (tern_matcher_nets_parse(c, n, err, size) != 0) {
        free(n);
        return -1;
    }
    *state_r = n;
    return 0;
}

void tern_matcher_remote_nets_deinit(void *state)
{
    tern_matcher_nets_free(state);
    free(state);
}

int tern_matcher_remote_nets_match(void *state, tern_mail *m, const char *name, bool inside,
                                   bool *matched)
{
    const char *a = tern_mail_remote_addr(m);
    if (a == NULL || a[0] == '\0')
        return 0; /* internal mail: no client */
    int r = tern_matcher_nets_match(state, a);
    if (r < 0) {
        tern_mail_log(m, TERN_MAILET_LOG_WARN, "%s: client address \"%.64s\" is not an IP", name,
                      a);
        return -1;
    }
    tern_matcher_all(m, matched, (r == 1) == inside);
    return 0;
}
