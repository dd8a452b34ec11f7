/* Matcher SMTPAuthUserIs: every recipient when the SMTP AUTH identity of
 * the session is in the condition's comma list of users (addresses compare
 * with the domain case-insensitive; a bare login name case-insensitively).
 * Input: the condition (checked at init); the envelope's identity. */
#include <stdlib.h>

#include "mailets/builtin/matcher_util.h"

static int saui_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                     char *err, size_t size)
{
    const char *c =
        tern_matcher_condition(p, "SMTPAuthUserIs", "alice@example.org, relayuser", err, size);
    if (c == NULL)
        return -1;
    tern_matcher_list *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    if (tern_matcher_list_parse(c, ',', l, err, size) != 0) {
        free(l);
        return -1;
    }
    for (size_t i = 0; i < l->n; i++)
        for (const unsigned char *q = (const unsigned char *)l->items[i]; *q; q++)
            if (*q <= ' ' || *q == 127) {
                tern_builtin_fail(err, size, "\"%s\" is not a user name", l->items[i]);
                tern_matcher_list_free(l);
                free(l);
                return -1;
            }
    *state_r = l;
    return 0;
}

static void saui_deinit(void *state)
{
    tern_matcher_list_free(state);
    free(state);
}

static int saui_match(void *state, tern_mail *m, bool *matched)
{
    const tern_matcher_list *l = state;
    const char *u = tern_mail_auth_user(m);
    bool yes = false;
    for (size_t k = 0; u && u[0] && k < l->n && !yes; k++)
        yes = tern_addr_equal(u, l->items[k]);
    tern_matcher_all(m, matched, yes);
    return 0;
}

static const tern_mailet_module tern_mb_smtp_auth_user_is = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "SMTPAuthUserIs",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = saui_init,
    .deinit = saui_deinit,
    .match = saui_match,
};
TERN_BUILTIN(tern_mb_smtp_auth_user_is)
