/* Matcher HasMailAttribute: every recipient when the mail carries the
 * attribute named by the condition ("key"), or carries it with that value
 * ("key=value": a string compared exactly, an integer in decimal, a bool as
 * true/false), none otherwise. Attributes are set by earlier mailets (a
 * spam scorer's tern.spam.score, a plugin's own keys). Input: the
 * condition (checked at init); the mail's attributes. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mailets/builtin/matcher_util.h"

typedef struct {
    char *key;
    char *value; /* NULL: presence only */
} hma_state;

static void hma_deinit(void *state)
{
    hma_state *st = state;
    if (st) {
        free(st->key);
        free(st->value);
        free(st);
    }
}

static int hma_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                    char *err, size_t size)
{
    const char *c = tern_matcher_condition(p, "HasMailAttribute", "tern.spam=true", err, size);
    if (c == NULL)
        return -1;
    while (*c == ' ' || *c == '\t')
        c++;
    const char *eq = strchr(c, '=');
    size_t kl = eq ? (size_t)(eq - c) : strlen(c);
    while (kl > 0 && (c[kl - 1] == ' ' || c[kl - 1] == '\t'))
        kl--;
    bool ok = kl > 0;
    for (size_t i = 0; ok && i < kl; i++)
        ok = (unsigned char)c[i] > ' ' && (unsigned char)c[i] < 127;
    if (!ok)
        return tern_builtin_fail(err, size, "\"%s\" does not start with a key", c);
    hma_state *st = calloc(1, sizeof(*st));
    if (st == NULL || (st->key = strndup(c, kl)) == NULL ||
        (eq && (st->value = strdup(eq + 1)) == NULL)) {
        hma_deinit(st);
        return tern_builtin_fail(err, size, "out of memory");
    }
    *state_r = st;
    return 0;
}

static int hma_match(void *state, tern_mail *m, bool *matched)
{
    const hma_state *st = state;
    if (!tern_mail_attr_has(m, st->key))
        return 0;
    bool yes = st->value == NULL;
    if (!yes) {
        const char *s = tern_mail_attr_get_str(m, st->key);
        int64_t i;
        bool b;
        char buf[32];
        if (s == NULL && tern_mail_attr_get_int(m, st->key, &i)) {
            snprintf(buf, sizeof(buf), "%" PRId64, i);
            s = buf;
        } else if (s == NULL && tern_mail_attr_get_bool(m, st->key, &b)) {
            s = b ? "true" : "false";
        }
        yes = s != NULL && strcmp(s, st->value) == 0;
    }
    tern_matcher_all(m, matched, yes);
    return 0;
}

static const tern_mailet_module tern_mb_has_mail_attribute = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "HasMailAttribute",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = hma_init,
    .deinit = hma_deinit,
    .match = hma_match,
};
TERN_BUILTIN(tern_mb_has_mail_attribute)
