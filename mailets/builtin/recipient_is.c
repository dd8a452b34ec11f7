/* Matcher RecipientIs: the recipients named in the condition, a comma list
 * of addresses (the domain compared case-insensitively, the local part as
 * written, like the directory). Input: the condition (checked at init). */
#include <stdlib.h>

#include "mailets/builtin/matcher_util.h"

static int ri_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    const char *c = tern_matcher_condition(p, "RecipientIs",
                                           "postmaster@example.org, abuse@example.org", err, size);
    if (c == NULL)
        return -1;
    tern_matcher_list *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    if (tern_matcher_list_parse(c, ',', l, err, size) != 0 ||
        tern_matcher_check_addresses(l, err, size) != 0) {
        tern_matcher_list_free(l);
        free(l);
        return -1;
    }
    *state_r = l;
    return 0;
}

static void ri_deinit(void *state)
{
    tern_matcher_list_free(state);
    free(state);
}

static int ri_match(void *state, tern_mail *m, bool *matched)
{
    const tern_matcher_list *l = state;
    for (size_t i = 0; i < tern_mail_rcpt_count(m); i++)
        for (size_t k = 0; k < l->n && !matched[i]; k++)
            matched[i] = tern_addr_equal(tern_mail_rcpt(m, i), l->items[k]);
    return 0;
}

static const tern_mailet_module tern_mb_recipient_is = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "RecipientIs",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = ri_init,
    .deinit = ri_deinit,
    .match = ri_match,
};
TERN_BUILTIN(tern_mb_recipient_is)
