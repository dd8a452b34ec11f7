/* internal.c: the `internal` auth backend: accounts in the store, the
 * default on a fresh install. A lookup is one ACCOUNT_GET through the
 * store's async client on the caller's loop; the stored password_hash is
 * the credential list (ternctl writes "{ARGON2ID}... {SCRAM-SHA-256}...").
 * Input trusted: the store's answers; the user name comes normalised from
 * auth.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth_backend.h"

typedef struct internal {
    tern_store *store;
    bool scram;
} internal;

static void *internal_create(const tern_config *cfg, tern_store *store, char **error_r)
{
    if (store == NULL) {
        *error_r = strdup("auth backend internal needs the store");
        return NULL;
    }
    internal *in = calloc(1, sizeof(*in));
    if (in == NULL) {
        *error_r = strdup("out of memory");
        return NULL;
    }
    in->store = store;
    in->scram = cfg->auth_internal.scram;
    return in;
}

static void internal_destroy(void *b)
{
    free(b);
}

static unsigned internal_caps(void *b)
{
    const internal *in = b;
    /* Accounts hold hashes, never a plaintext or CRAM-MD5 secret that
     * ternctl would write; SCRAM only when the admin says every account
     * has keys (passwords set before they were stored do not). */
    return TERN_AUTH_CAP_PASSWORD | (in->scram ? TERN_AUTH_CAP_SCRAM_SHA_256 : 0);
}

static void *internal_client_new(void *b, uv_loop_t *loop)
{
    internal *in = b;
    return tern_store_client_new(in->store, loop);
}

static void internal_client_close(void *b, void *cs)
{
    (void)b;
    tern_store_client_close(cs);
}

static void internal_got(tern_store_req *sr)
{
    tern_auth_lookup *lk = sr->data;
    tern_auth_req *r = lk->req;
    if (sr->status == TERN_STORE_OK) {
        lk->status = TERN_AUTH_LOOKUP_FOUND;
        lk->account = tern_arena_strdup(&r->arena, sr->out.account.name);
        lk->stored = sr->out.account.password_hash
                         ? tern_arena_strdup(&r->arena, sr->out.account.password_hash)
                         : NULL;
        if (lk->account == NULL)
            lk->status = TERN_AUTH_ETEMP;
    } else if (sr->status == TERN_STORE_ENOTFOUND || sr->status == TERN_STORE_EINVAL) {
        lk->status = TERN_AUTH_LOOKUP_UNKNOWN;
    } else {
        lk->status = TERN_AUTH_ETEMP;
        snprintf(r->error, sizeof(r->error), "store: %s%s%.200s", tern_store_strerror(sr->status),
                 sr->error[0] ? ": " : "", sr->error);
    }
    tern_store_req_free(sr);
    lk->done(lk);
}

static void internal_lookup(void *b, tern_auth_lookup *lk)
{
    (void)b;
    if (strchr(lk->user, '@') == NULL) {
        lk->status = TERN_AUTH_LOOKUP_UNKNOWN; /* store accounts are always local@domain */
        lk->done(lk);
        return;
    }
    if (lk->client_state == NULL) {
        lk->status = TERN_AUTH_ETEMP;
        lk->done(lk);
        return;
    }
    tern_store_req *sr = tern_store_req_new(TERN_STORE_ACCOUNT_GET, internal_got, lk);
    if (sr == NULL) {
        lk->status = TERN_AUTH_ETEMP;
        lk->done(lk);
        return;
    }
    sr->in.account = lk->user;
    int rc = tern_store_submit(lk->client_state, sr);
    if (rc != 0) {
        lk->status = TERN_AUTH_ETEMP;
        snprintf(lk->req->error, sizeof(lk->req->error), "store: %s", tern_store_strerror(rc));
        tern_store_req_free(sr);
        lk->done(lk);
    }
}

const tern_auth_backend_ops tern_auth_internal_backend = {
    .name = "internal",
    .create = internal_create,
    .destroy = internal_destroy,
    .caps = internal_caps,
    .client_new = internal_client_new,
    .client_close = internal_client_close,
    .lookup = internal_lookup,
};
