/* Mailet DSNBounce: an RFC 3464 delivery status notification
 * (multipart/report; report-type=delivery-status) for the mail's
 * recipients, from the null sender to the envelope sender, into processor
 * `processor` (default transport); the mail then ends. The reason comes
 * from the tern.error.* attributes the engine (or ToProcessor's notice)
 * set. Input: its YAML parameters; the message is the sender's. */
#include <stdlib.h>

#include "mailets/builtin/builtin.h"
#include "mailets/builtin/dsn_build.h"

static int dsnb_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                  char *err, size_t size)
{
    return tern_dsn_bounce_init(p, TERN_DSN_REPORT, state_r, err, size);
}

static void dsnb_deinit(void *state)
{
    free(state);
}

static tern_mailet_verdict dsnb_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    return tern_dsn_bounce(state, m, res);
}

static const tern_mailet_module tern_mb_dsn_bounce = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "DSNBounce",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = dsnb_init,
    .deinit = dsnb_deinit,
    .service = dsnb_service,
};
TERN_BUILTIN(tern_mb_dsn_bounce)
