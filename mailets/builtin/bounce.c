/* Mailet Bounce: a plain failure notice (James's Bounce): a text part saying
 * which recipients failed and why, and the original attached, for the mail's
 * recipients, from the null sender to the envelope sender, into processor
 * `processor` (default transport); the mail then ends. The reason comes
 * from the tern.error.* attributes the engine (or ToProcessor's notice)
 * set. Input: its YAML parameters; the message is the sender's. */
#include <stdlib.h>

#include "mailets/builtin/builtin.h"
#include "mailets/builtin/dsn_build.h"

static int bounce_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                    char *err, size_t size)
{
    return tern_dsn_bounce_init(p, TERN_DSN_PLAIN, state_r, err, size);
}

static void bounce_deinit(void *state)
{
    free(state);
}

static tern_mailet_verdict bounce_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    return tern_dsn_bounce(state, m, res);
}

static const tern_mailet_module tern_mb_bounce = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "Bounce",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = bounce_init,
    .deinit = bounce_deinit,
    .service = bounce_service,
};
TERN_BUILTIN(tern_mb_bounce)
