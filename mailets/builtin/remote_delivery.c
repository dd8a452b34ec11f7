/* Mailet RemoteDelivery: the hand-off from the pipeline to the remote
 * queue. A recipient whose message is exactly what the spool holds (the
 * chain changed nothing, the address is the envelope's own) is marked
 * queued in place: nothing is written but one small record. Otherwise the
 * mail as the chain left it (headers added by mailets included) is written
 * to the spool as a new message owned by the queue manager, with the
 * recipients and their DSN parameters, and once that is durable the
 * recipients are finished here. The queue manager owns retries, MX
 * lookups, TLS policy and bounces from then on. Input: no parameters. */
#include <stdio.h>
#include <stdlib.h>

#include "mailets/builtin/builtin.h"

static int rd_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    static const char *const known[] = {NULL};
    *state_r = NULL;
    return tern_param_check(p, known, err, size);
}

static void rd_queued(tern_mail *m, void *arg, int status, const char *qid)
{
    if (status != 0) {
        tern_mailet_result res = {.code = 451, .enhanced = "4.3.0",
                                  .text = "cannot write to the remote queue"};
        tern_mail_resume(m, TERN_MAILET_TEMPFAIL, &res);
        return;
    }
    char how[64];
    snprintf(how, sizeof(how), "queued:%s", qid);
    while (tern_mail_rcpt_count(m) > 0)
        tern_mail_rcpt_done(m, tern_mail_rcpt_count(m) - 1, how);
    tern_mail_resume(m, TERN_MAILET_FINISH, NULL);
}

static tern_mailet_verdict rd_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    for (size_t i = tern_mail_rcpt_count(m); i-- > 0;)
        if (tern_mail_remote_as_stored(m, i))
            tern_mail_rcpt_remote(m, i);
    size_t n = tern_mail_rcpt_count(m);
    if (n == 0)
        return TERN_MAILET_FINISH;
    size_t *idx = malloc(n * sizeof(*idx));
    if (idx == NULL) {
        res->text = "out of memory";
        return TERN_MAILET_TEMPFAIL;
    }
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    int rc = tern_mail_queue_remote(m, idx, n, rd_queued, NULL);
    free(idx);
    if (rc != 0) {
        res->code = 451;
        res->text = "cannot write to the remote queue";
        return TERN_MAILET_TEMPFAIL;
    }
    return TERN_MAILET_PENDING;
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
