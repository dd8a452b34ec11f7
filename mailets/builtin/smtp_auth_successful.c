/* Matcher SMTPAuthSuccessful: every recipient when the client logged in
 * with SMTP AUTH (or a verified client certificate through EXTERNAL) in
 * the session that brought the mail; none for anonymous or internal mail.
 * Input: no condition; the envelope's authenticated identity. */
#include "mailets/builtin/matcher_util.h"

static int sas_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                    char *err, size_t size)
{
    *state_r = NULL;
    return tern_matcher_no_condition(p, "SMTPAuthSuccessful", err, size);
}

static int sas_match(void *state, tern_mail *m, bool *matched)
{
    const char *u = tern_mail_auth_user(m);
    tern_matcher_all(m, matched, u != NULL && u[0] != '\0');
    return 0;
}

static const tern_mailet_module tern_mb_smtp_auth_successful = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "SMTPAuthSuccessful",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = sas_init,
    .match = sas_match,
};
TERN_BUILTIN(tern_mb_smtp_auth_successful)
