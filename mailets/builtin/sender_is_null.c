/* Matcher SenderIsNull: every recipient when the envelope sender is the
 * null reverse-path "<>" (bounces, DSNs, auto-replies), none otherwise.
 * Input: no condition; the envelope sender. */
#include "mailets/builtin/matcher_util.h"

static int sin_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                    char *err, size_t size)
{
    *state_r = NULL;
    return tern_matcher_no_condition(p, "SenderIsNull", err, size);
}

static int sin_match(void *state, tern_mail *m, bool *matched)
{
    const char *s = tern_mail_sender(m);
    tern_matcher_all(m, matched, s == NULL || s[0] == '\0');
    return 0;
}

static const tern_mailet_module tern_mb_sender_is_null = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "SenderIsNull",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = sin_init,
    .match = sin_match,
};
TERN_BUILTIN(tern_mb_sender_is_null)
