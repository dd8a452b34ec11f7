/* Matcher SenderIsLocal: every recipient when the envelope sender's domain
 * is one of ours, none otherwise (the null sender never matches). "Ours"
 * means listed in the config's `domains:`: a domain that exists only in the
 * store (added with ternctl) is not seen, because a matcher must answer
 * synchronously and asking the store is a round trip. It says nothing about
 * whether the sender is genuine: combine with SMTPAuthSuccessful or
 * RemoteAddrInNetwork for that. Input: no condition; the envelope sender and
 * the mail's config snapshot. */
#include <string.h>

#include "mailets/builtin/matcher_util.h"

static int sil_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                    char *err, size_t size)
{
    *state_r = NULL;
    return tern_matcher_no_condition(p, "SenderIsLocal", err, size);
}

static int sil_match(void *state, tern_mail *m, bool *matched)
{
    const char *s = tern_mail_sender(m);
    if (s == NULL || s[0] == '\0')
        return 0;
    if (m->pipeline == NULL)
        return -1; /* no config to ask (a mail outside any pipeline) */
    const char *d = tern_addr_domain(s);
    tern_matcher_all(
        m, matched, d[0] != '\0' && tern_config_is_local_domain(tern_mail_config(m), d, strlen(d)));
    return 0;
}

static const tern_mailet_module tern_mb_sender_is_local = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "SenderIsLocal",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = sil_init,
    .match = sil_match,
};
TERN_BUILTIN(tern_mb_sender_is_local)
