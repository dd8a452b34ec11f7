/* Matcher RecipientIsRegex: the recipients whose whole address matches the
 * condition, a PCRE2 regex (case-insensitive unless it starts with (?-i)),
 * compiled once at init. Input: the condition (an invalid regex fails init
 * with PCRE2's message and offset); recipient addresses, untrusted, matched
 * within TERN_MATCHER_REGEX_MATCH_LIMIT. */
#include <string.h>

#include "mailets/builtin/matcher_util.h"

static int rir_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                    char *err, size_t size)
{
    const char *c =
        tern_matcher_condition(p, "RecipientIsRegex", "^(postmaster|abuse)@.*$", err, size);
    if (c == NULL)
        return -1;
    *state_r = tern_matcher_regex_new(c, true, err, size);
    return *state_r ? 0 : -1;
}

static void rir_deinit(void *state)
{
    tern_matcher_regex_free(state);
}

static int rir_match(void *state, tern_mail *m, bool *matched)
{
    for (size_t i = 0; i < tern_mail_rcpt_count(m); i++) {
        const char *a = tern_mail_rcpt(m, i);
        int r = tern_matcher_regex_match(state, a, strlen(a));
        if (r < 0) {
            tern_mail_log(m, TERN_MAILET_LOG_WARN, "RecipientIsRegex: regex match limit reached");
            return -1;
        }
        matched[i] = r == 1;
    }
    return 0;
}

static const tern_mailet_module tern_mb_recipient_is_regex = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "RecipientIsRegex",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = rir_init,
    .deinit = rir_deinit,
    .match = rir_match,
};
TERN_BUILTIN(tern_mb_recipient_is_regex)
