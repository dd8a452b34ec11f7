/* Mailet AddHeader: adds one header field at the top of the message (where
 * trace fields go), keeping any field of that name already there. Input:
 * its YAML parameters (name, value), checked at init so that no value can
 * carry a line break and inject fields. */
#include <stdlib.h>

#include "mailets/builtin/header_param.h"

static int ah_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    return tern_header_param_init(p, state_r, err, size);
}

static void ah_deinit(void *state)
{
    free(state);
}

static tern_mailet_verdict ah_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    tern_header_param *a = state;
    if (tern_mail_header_add(m, a->name, a->value) != 0) {
        res->text = "could not add the header field (too many fields, or out of memory)";
        return TERN_MAILET_ERROR;
    }
    return TERN_MAILET_CONTINUE;
}

static const tern_mailet_module tern_mb_add_header = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "AddHeader",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = ah_init,
    .deinit = ah_deinit,
    .service = ah_service,
};
TERN_BUILTIN(tern_mb_add_header)
