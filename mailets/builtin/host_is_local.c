/* Matcher HostIsLocal: the recipients whose domain is ours (known to the
 * store or the config), whether or not the mailbox exists; with
 * RecipientIsLocal it tells "no such user here" from "not our domain".
 * Input: no condition; the engine's lookup results. */
#include "mailets/builtin/matcher_util.h"

static int hil_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                    char *err, size_t size)
{
    *state_r = NULL;
    return tern_matcher_no_condition(p, "HostIsLocal", err, size);
}

static int hil_match(void *state, tern_mail *m, bool *matched)
{
    for (size_t i = 0; i < tern_mail_rcpt_count(m); i++) {
        const tern_rcpt_entry *r = tern_mail_rcpt_info(m, i);
        if (r == NULL || r->lookup != TERN_LOOKUP_DONE)
            return -1; /* not resolved: cannot say (the engine tempfails first) */
        matched[i] = r->kind != TERN_RCPT_NOT_LOCAL;
    }
    return 0;
}

static const tern_mailet_module tern_mb_host_is_local = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "HostIsLocal",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = hil_init,
    .match = hil_match,
};
TERN_BUILTIN(tern_mb_host_is_local)
