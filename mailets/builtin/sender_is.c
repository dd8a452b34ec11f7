/* Matcher SenderIs: every recipient when the envelope sender is one of the
 * condition's comma list of addresses; none otherwise (the null sender
 * never matches: SenderIsNull is for that). Input: the condition (checked
 * at init); the envelope sender. */
#include <stdlib.h>

#include "mailets/builtin/matcher_util.h"

static int si_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    const char *c =
        tern_matcher_condition(p, "SenderIs", "boss@example.org, cfo@example.org", err, size);
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

static void si_deinit(void *state)
{
    tern_matcher_list_free(state);
    free(state);
}

static int si_match(void *state, tern_mail *m, bool *matched)
{
    const tern_matcher_list *l = state;
    const char *s = tern_mail_sender(m);
    bool yes = false;
    for (size_t k = 0; s && s[0] && k < l->n && !yes; k++)
        yes = tern_addr_equal(s, l->items[k]);
    tern_matcher_all(m, matched, yes);
    return 0;
}

static const tern_mailet_module tern_mb_sender_is = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "SenderIs",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = si_init,
    .deinit = si_deinit,
    .match = si_match,
};
TERN_BUILTIN(tern_mb_sender_is)
