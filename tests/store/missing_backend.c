/* Stands in for a backend whose sources are not in the tree yet (the
 * backends land separately), so the suite links and the other backend can
 * be tested. Built only when storage/local/local.c or storage/pg/pg.c is
 * absent; opening it fails with a clear message. Trusts nothing. */
#include <stdlib.h>
#include <string.h>

#include "storage/store_backend.h"

static int missing_open(const tern_config *cfg, tern_store *store, void **impl_r, char **error_r)
{
    (void)cfg; (void)store; (void)impl_r;
    *error_r = strdup("this backend is not in the tree yet");
    return -1;
}

static void missing_close(void *impl)
{
    (void)impl;
}

static void missing_submit(void *impl, tern_store_req *req)
{
    (void)impl;
    tern_store__fail(req, TERN_STORE_EIO, "backend missing");
    tern_store__complete(req);
}

#ifdef MISSING_LOCAL
const tern_store_backend tern_store_backend_local = {"local (missing)", missing_open,
                                                     missing_close, missing_submit, NULL};
#endif
#ifdef MISSING_PG
const tern_store_backend tern_store_backend_pg = {"postgres (missing)", missing_open,
                                                  missing_close, missing_submit, NULL};
#endif
