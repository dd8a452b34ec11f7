/* Matcher All: every recipient. Input: none. */
#include "mailets/builtin/builtin.h"

static int all_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                    char *err, size_t size)
{
    if (tern_param_get(p, "condition"))
        return tern_builtin_fail(err, size, "All takes no condition");
    *state_r = NULL;
    return 0;
}

static int all_match(void *state, tern_mail *m, bool *matched)
{
    for (size_t i = 0; i < tern_mail_rcpt_count(m); i++)
        matched[i] = true;
    return 0;
}

static const tern_mailet_module tern_mb_all = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "All",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = all_init,
    .match = all_match,
};
TERN_BUILTIN(tern_mb_all)
