/* Mailet RemoteDelivery: the hand-off from the pipeline to the remote
 * queue. Each recipient is marked queued for remote delivery: it leaves
 * the mail, and the spool entry stays alive (with the recipients already
 * finished recorded) for the queue manager, which owns retries, MX
 * lookups and bounces from here on. Input: no parameters. */
#include "mailets/builtin/builtin.h"

static int rd_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    static const char *const known[] = {NULL};
    *state_r = NULL;
    return tern_param_check(p, known, err, size);
}

static tern_mailet_verdict rd_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    while (tern_mail_rcpt_count(m) > 0)
        tern_mail_rcpt_remote(m, tern_mail_rcpt_count(m) - 1);
    return TERN_MAILET_FINISH;
}

static const tern_mailet_module tern_mb_remote_delivery = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "RemoteDelivery",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = rd_init,
    .service = rd_service,
};
TERN_BUILTIN(tern_mb_remote_delivery)
