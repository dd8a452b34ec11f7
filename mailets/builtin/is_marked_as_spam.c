/* Matcher IsMarkedAsSpam: every recipient when a spam scorer marked the
 * mail, i.e. the bool attribute tern.spam (or the one the condition names)
 * is true; none when it is false, absent or not a bool. Input: the
 * condition (an attribute key, optional); the mail's attributes. */
#include <stdlib.h>
#include <string.h>

#include "mailets/builtin/matcher_util.h"

#define SPAM_ATTR "tern.spam"

static int ims_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                    char *err, size_t size)
{
    static const char *const known[] = {"condition", NULL};
    if (tern_param_check(p, known, err, size) != 0)
        return -1;
    const char *c = tern_param_str(p, "condition");
    const char *key = SPAM_ATTR;
    size_t kl = strlen(key);
    if (c) {
        while (*c == ' ' || *c == '\t')
            c++;
        kl = strlen(c);
        while (kl > 0 && (c[kl - 1] == ' ' || c[kl - 1] == '\t'))
            kl--;
        bool ok = kl > 0;
        for (size_t i = 0; ok && i < kl; i++)
            ok = (unsigned char)c[i] > ' ' && (unsigned char)c[i] < 127 && c[i] != '=';
        if (!ok)
            return tern_builtin_fail(err, size,
                                     "the condition names a bool attribute "
                                     "(default " SPAM_ATTR "), not \"%s\"",
                                     c);
        key = c;
    }
    char *st = strndup(key, kl);
    if (st == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    *state_r = st;
    return 0;
}

static void ims_deinit(void *state)
{
    free(state);
}

static int ims_match(void *state, tern_mail *m, bool *matched)
{
    bool spam = false;
    if (!tern_mail_attr_get_bool(m, state, &spam))
        spam = false;
    tern_matcher_all(m, matched, spam);
    return 0;
}

static const tern_mailet_module tern_mb_is_marked_as_spam = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "IsMarkedAsSpam",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = ims_init,
    .deinit = ims_deinit,
    .match = ims_match,
};
TERN_BUILTIN(tern_mb_is_marked_as_spam)
