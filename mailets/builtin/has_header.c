/* Matcher HasHeader: every recipient when the message has every header
 * field the condition lists, none otherwise. The condition is one or more
 * of "Name" (the field is present) or "Name=regex" (some field of that name
 * has an unfolded value in which the PCRE2 regex is found; case-insensitive
 * unless (?-i)), joined by '+' as in James: "X-Spam-Flag=^yes$+X-Virus".
 * Since '+' separates conditions, a regex writes a literal plus as \x2b and
 * the quantifier as {1,}. Names compare case-insensitively. Input: the
 * condition (checked and compiled at init); the message's header values,
 * untrusted, matched within TERN_MATCHER_REGEX_MATCH_LIMIT. */
#include <stdlib.h>
#include <string.h>

#include "mailets/builtin/matcher_util.h"

typedef struct {
    char *name;
    tern_matcher_regex *re; /* NULL: presence only */
} hh_cond;

typedef struct {
    hh_cond *conds;
    size_t n;
} hh_state;

static void hh_deinit(void *state)
{
    hh_state *st = state;
    if (st == NULL)
        return;
    for (size_t i = 0; i < st->n; i++) {
        free(st->conds[i].name);
        tern_matcher_regex_free(st->conds[i].re);
    }
    free(st->conds);
    free(st);
}

static int hh_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    const char *c =
        tern_matcher_condition(p, "HasHeader", "X-Spam-Flag=^yes$+X-Spam-Score", err, size);
    if (c == NULL)
        return -1;
    tern_matcher_list l;
    if (tern_matcher_list_parse(c, '+', &l, err, size) != 0)
        return -1;
    hh_state *st = calloc(1, sizeof(*st));
    if (st == NULL || (st->conds = calloc(l.n, sizeof(*st->conds))) == NULL) {
        free(st);
        tern_matcher_list_free(&l);
        return tern_builtin_fail(err, size, "out of memory");
    }
    int r = 0;
    for (size_t i = 0; i < l.n && r == 0; i++) {
        char *item = l.items[i];
        char *eq = strchr(item, '=');
        char *rx = NULL;
        if (eq) {
            *eq = '\0';
            rx = eq + 1;
            while (*rx == ' ' || *rx == '\t')
                rx++;
        }
        size_t nl = strlen(item);
        while (nl > 0 && (item[nl - 1] == ' ' || item[nl - 1] == '\t'))
            item[--nl] = '\0';
        /* Stricter than RFC 5322 (any printable but ':'): names in use
         * are tokens, and a stray piece of a regex split at its '+' must
         * not pass for one. */
        bool ok = nl > 0;
        for (const unsigned char *q = (const unsigned char *)item; ok && *q; q++)
            ok = (*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') ||
                 *q == '-' || *q == '_' || *q == '.';
        if (!ok) {
            r = tern_builtin_fail(err, size,
                                  "\"%s\" is not a header field name ('+' separates "
                                  "conditions: in a regex write \\x2b for a plus, {1,} to repeat)",
                                  item);
            break;
        }
        if (rx && rx[0] == '\0') {
            r = tern_builtin_fail(err, size,
                                  "empty regex after \"%s=\" (write \"%s\" to test "
                                  "presence)",
                                  item, item);
            break;
        }
        st->conds[i].name = strdup(item);
        if (st->conds[i].name == NULL) {
            r = tern_builtin_fail(err, size, "out of memory");
            break;
        }
        st->n = i + 1;
        if (rx && (st->conds[i].re = tern_matcher_regex_new(rx, false, err, size)) == NULL)
            r = -1;
    }
    tern_matcher_list_free(&l);
    if (r != 0) {
        hh_deinit(st);
        return -1;
    }
    *state_r = st;
    return 0;
}

/* 1 when the condition holds, 0 not, -1 the regex gave up. */
static int hh_one(const hh_cond *c, tern_mail *m)
{
    size_t n = tern_mail_header_count(m, c->name);
    if (c->re == NULL)
        return n > 0;
    for (size_t i = 0; i < n; i++) {
        const char *v = tern_mail_header_get(m, c->name, i);
        int r = v ? tern_matcher_regex_match(c->re, v, strlen(v)) : 0;
        if (r != 0)
            return r;
    }
    return 0;
}

static int hh_match(void *state, tern_mail *m, bool *matched)
{
    const hh_state *st = state;
    for (size_t i = 0; i < st->n; i++) {
        int r = hh_one(&st->conds[i], m);
        if (r < 0) {
            tern_mail_log(m, TERN_MAILET_LOG_WARN, "HasHeader: regex match limit reached on %s",
                          st->conds[i].name);
            return -1;
        }
        if (r == 0)
            return 0;
    }
    tern_matcher_all(m, matched, true);
    return 0;
}

static const tern_mailet_module tern_mb_has_header = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "HasHeader",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = hh_init,
    .deinit = hh_deinit,
    .match = hh_match,
};
TERN_BUILTIN(tern_mb_has_header)
