/* Test plugins that misbehave on purpose (built by test_pipeline.py with
 * -DFAULT=...): a verdict out of range, a wrong ABI version, a failing
 * init. The engine must refuse or isolate them and lose no mail. */
#include <stdio.h>
#include <tern/mailet.h>

static int faulty_init(const tern_mailet_host *host, const tern_mailet_params *p, void **state_r,
                       char *err, size_t err_size)
{
#if FAULT == 3
    snprintf(err, err_size, "refusing to start on purpose");
    return -1;
#else
    *state_r = NULL;
    return 0;
#endif
}

static tern_mailet_verdict faulty_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    return (tern_mailet_verdict)42;
}

const tern_mailet_module tern_mailet_module_v1 = {
#if FAULT == 2
    .abi_version = TERN_MAILET_ABI_VERSION + 1,
#else
    .abi_version = TERN_MAILET_ABI_VERSION,
#endif
    .struct_size = sizeof(tern_mailet_module),
    .name = "Faulty",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = faulty_init,
    .service = faulty_service,
};
