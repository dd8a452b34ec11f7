/* Mailet Null: ends the mail's journey on purpose; its recipients are
 * recorded finished and nothing is delivered (James's Null). The log line
 * of the step says so. Input: no parameters. */
#include "mailets/builtin/builtin.h"

static int null_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                     char *err, size_t size)
{
    static const char *const known[] = {NULL};
    *state_r = NULL;
    return tern_param_check(p, known, err, size);
}

static tern_mailet_verdict null_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    tern_mail_log(m, TERN_MAILET_LOG_INFO, "dropped %zu recipient(s) on purpose",
                  tern_mail_rcpt_count(m));
    return TERN_MAILET_FINISH;
}

static const tern_mailet_module tern_mb_null = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "Null",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = null_init,
    .service = null_service,
};
TERN_BUILTIN(tern_mb_null)
