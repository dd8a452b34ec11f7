/* Mailet PostmasterAlias: RFC 5321 4.5.1 requires every domain to accept
 * mail for "postmaster" (the local part in any case) and a bare
 * <postmaster>; this rewrites postmaster@<any local domain> and
 * "postmaster" without a domain to the configured `postmaster` address
 * (default postmaster@<first config domain>). An account or alias that the
 * directory knows under that very address wins: the admin named it on
 * purpose. Input: its YAML parameters and the config's domain list. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mailets/builtin/builtin.h"
#include "mailets/builtin/dsn_build.h"

static int pa_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    static const char *const known[] = {"postmaster", NULL};
    if (tern_param_check(p, known, err, size) != 0)
        return -1;
    const char *pm = tern_param_str(p, "postmaster");
    if (tern_param_get(p, "postmaster")) {
        const char *at = pm ? strrchr(pm, '@') : NULL;
        if (at == NULL || at == pm || at[1] == '\0' || strpbrk(pm, " <>\t\r\n"))
            return tern_builtin_fail(err, size, "postmaster: expected an address local@domain");
    }
    *state_r = (void *)pm;
    return 0;
}

static bool is_postmaster(const tern_mail *m, const char *addr)
{
    const char *at = strrchr(addr, '@');
    size_t ll = at ? (size_t)(at - addr) : strlen(addr);
    if (ll != 10 || strncasecmp(addr, "postmaster", 10) != 0)
        return false;
    if (at == NULL)
        return true;
    return tern_config_is_local_domain(tern_mail_config(m), at + 1, strlen(at + 1));
}

static tern_mailet_verdict pa_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    char def[300];
    const char *target = state;
    if (target == NULL) {
        tern_dsn_default_postmaster(tern_mail_config(m), def, sizeof(def));
        target = def;
    }
    for (size_t i = 0; i < tern_mail_rcpt_count(m); i++) {
        const tern_rcpt_entry *e = tern_mail_rcpt_info(m, i);
        if (!is_postmaster(m, e->addr) || tern_addr_equal(e->addr, target))
            continue;
        if (e->lookup == TERN_LOOKUP_DONE &&
            (e->kind == TERN_RCPT_ACCOUNT || e->kind == TERN_RCPT_ALIAS))
            continue;
        char was[600];
        snprintf(was, sizeof(was), "%s", e->addr);
        bool dup = false;
        for (size_t k = 0; k < tern_mail_rcpt_count(m) && !dup; k++)
            dup = k != i && tern_addr_equal(tern_mail_rcpt(m, k), target);
        if (dup) {
            /* postmaster@a and postmaster@b in one mail: one copy. The
             * standalone mail of unit tests has no spool to record it. */
            tern_mail_log(m, TERN_MAILET_LOG_INFO, "postmaster: %s -> %s (already a recipient)",
                          was, target);
            if (m->runner)
                tern_mail_rcpt_done(m, i, "postmaster-duplicate");
            else
                tern_mail_rcpt_remove(m, i);
            i--;
            continue;
        }
        if (tern_mail_rcpt_replace(m, i, target) != 0) {
            res->text = "cannot rewrite a postmaster recipient";
            return TERN_MAILET_ERROR;
        }
        tern_mail_log(m, TERN_MAILET_LOG_INFO, "postmaster: %s -> %s", was, target);
    }
    return TERN_MAILET_CONTINUE;
}

static const tern_mailet_module tern_mb_postmaster_alias = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "PostmasterAlias",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = pa_init,
    .service = pa_service,
};
TERN_BUILTIN(tern_mb_postmaster_alias)
