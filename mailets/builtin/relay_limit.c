/* Matcher RelayLimit: every recipient when the message carries at least N
 * Received fields (N the condition, 1 to 10000): a mail loop, or a message
 * that has hopped too often, so a chain can bounce it before it goes round
 * again (RFC 5321 6.3). Input: the condition (checked at init); the
 * message's header, whose fields are only counted. */
#include <stdint.h>
#include <stdlib.h>

#include "mailets/builtin/matcher_util.h"

#define RELAY_LIMIT_MAX 10000

static int rl_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    const char *c = tern_matcher_condition(p, "RelayLimit", "30", err, size);
    if (c == NULL)
        return -1;
    uint64_t n;
    if (tern_matcher_parse_count(c, 1, RELAY_LIMIT_MAX, &n) != 0)
        return tern_builtin_fail(err, size, "\"%s\" is not a count of Received fields (1 to %d)", c,
                                 RELAY_LIMIT_MAX);
    size_t *st = malloc(sizeof(*st));
    if (st == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    *st = (size_t)n;
    *state_r = st;
    return 0;
}

static void rl_deinit(void *state)
{
    free(state);
}

static int rl_match(void *state, tern_mail *m, bool *matched)
{
    tern_matcher_all(m, matched, tern_mail_header_count(m, "Received") >= *(size_t *)state);
    return 0;
}

static const tern_mailet_module tern_mb_relay_limit = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "RelayLimit",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = rl_init,
    .deinit = rl_deinit,
    .match = rl_match,
};
TERN_BUILTIN(tern_mb_relay_limit)
