/* Test plugins that misbehave on purpose (built by test_pipeline.py with
 * -DFAULT=...): 1 a verdict out of range, 2 a wrong ABI version, 3 a
 * failing init, 4 a slow (asynchronous) mailet for the root deadline. The engine must refuse or isolate them and lose no mail. */
#include <stdio.h>
#include <tern/mailet.h>
#include <unistd.h>

#if FAULT == 4
static const tern_mailet_host *H;
#endif

static int faulty_init(const tern_mailet_host *host, const tern_mailet_params *p, void **state_r,
                       char *err, size_t err_size)
{
#if FAULT == 3
    snprintf(err, err_size, "refusing to start on purpose");
    return -1;
#else
#if FAULT == 4
    H = host;
#endif
    *state_r = NULL;
    return 0;
#endif
}

#if FAULT == 4
/* A slow mailet done right: the blocking part on a pool thread. */
static void slow_work(void *arg)
{
    (void)arg;
    sleep(2);
}

static void slow_done(tern_mail *m, void *arg)
{
    (void)arg;
    H->header_add(m, "X-Slow", "done");
    H->resume(m, TERN_MAILET_CONTINUE, NULL);
}
#endif

static tern_mailet_verdict faulty_service(void *state, tern_mail *m, tern_mailet_result *res)
{
#if FAULT == 4
    if (H->call_async(m, slow_work, slow_done, NULL) != 0)
        return TERN_MAILET_ERROR;
    return TERN_MAILET_PENDING;
#else
    return (tern_mailet_verdict)42;
#endif
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
