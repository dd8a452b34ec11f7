/* Matcher TooManyRecipients: every recipient when the mail has more than N
 * of them (N the condition, at least 1), none otherwise: a broadcast from a
 * compromised account looks like this. Input: the condition (checked at
 * init); the recipient count. */
#include <stdint.h>
#include <stdlib.h>

#include "mailets/builtin/matcher_util.h"

static int tmr_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                    char *err, size_t size)
{
    const char *c = tern_matcher_condition(p, "TooManyRecipients", "50", err, size);
    if (c == NULL)
        return -1;
    uint64_t n;
    if (tern_matcher_parse_count(c, 1, TERN_MAIL_MAX_RCPTS, &n) != 0)
        return tern_builtin_fail(err, size, "\"%s\" is not a recipient count (1 to %d)", c,
                                 TERN_MAIL_MAX_RCPTS);
    size_t *st = malloc(sizeof(*st));
    if (st == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    *st = (size_t)n;
    *state_r = st;
    return 0;
}

static void tmr_deinit(void *state)
{
    free(state);
}

static int tmr_match(void *state, tern_mail *m, bool *matched)
{
    tern_matcher_all(m, matched, tern_mail_rcpt_count(m) > *(size_t *)state);
    return 0;
}

static const tern_mailet_module tern_mb_too_many_recipients = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "TooManyRecipients",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = tmr_init,
    .deinit = tmr_deinit,
    .match = tmr_match,
};
TERN_BUILTIN(tern_mb_too_many_recipients)
