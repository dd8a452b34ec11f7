/* Matcher SenderIsRegex: every recipient when the whole envelope sender
 * matches the condition, a PCRE2 regex (case-insensitive unless it starts
 * with (?-i)), compiled once at init; none otherwise. The null sender never
 * matches (SenderIsNull is for that). Input: the condition (an invalid
 * regex fails init with PCRE2's message and offset); the sender, matched
 * within TERN_MATCHER_REGEX_MATCH_LIMIT. */
#include <string.h>

#include "mailets/builtin/matcher_util.h"

static int sir_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                    char *err, size_t size)
{
    const char *c = tern_matcher_condition(p, "SenderIsRegex", ".*@example\\.org", err, size);
    if (c == NULL)
        return -1;
    *state_r = tern_matcher_regex_new(c, true, err, size);
    return *state_r ? 0 : -1;
}

static void sir_deinit(void *state)
{
    tern_matcher_regex_free(state);
}

static int sir_match(void *state, tern_mail *m, bool *matched)
{
    const char *s = tern_mail_sender(m);
    if (s == NULL || s[0] == '\0')
        return 0;
    int r = tern_matcher_regex_match(state, s, strlen(s));
    if (r < 0) {
        tern_mail_log(m, TERN_MAILET_LOG_WARN, "SenderIsRegex: regex match limit reached");
        return -1;
    }
    tern_matcher_all(m, matched, r == 1);
    return 0;
}

static const tern_mailet_module tern_mb_sender_is_regex = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "SenderIsRegex",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = sir_init,
    .deinit = sir_deinit,
    .match = sir_match,
};
TERN_BUILTIN(tern_mb_sender_is_regex)
