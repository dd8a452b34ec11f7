/* Matcher RecipientIsLocal: the recipients the directory knows, an account
 * or an alias (catch-alls included), as the engine resolved them against
 * the store and the auth backends before this step. Input: no condition;
 * the engine's lookup results. */
#include "mailets/builtin/matcher_util.h"

static int ril_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                    char *err, size_t size)
{
    *state_r = NULL;
    return tern_matcher_no_condition(p, "RecipientIsLocal", err, size);
}

static int ril_match(void *state, tern_mail *m, bool *matched)
{
    for (size_t i = 0; i < tern_mail_rcpt_count(m); i++) {
        const tern_rcpt_entry *r = tern_mail_rcpt_info(m, i);
        /* A recipient whose lookup did not finish cannot be judged; the
         * engine tempfails before matching, so this is a safeguard. */
        if (r == NULL || r->lookup != TERN_LOOKUP_DONE)
            return -1;
        matched[i] = r->kind == TERN_RCPT_ACCOUNT || r->kind == TERN_RCPT_ALIAS;
    }
    return 0;
}

static const tern_mailet_module tern_mb_recipient_is_local = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "RecipientIsLocal",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = ril_init,
    .match = ril_match,
};
TERN_BUILTIN(tern_mb_recipient_is_local)
