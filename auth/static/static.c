/* static.c: the `static` auth backend: one username and credential fixed
 * on a listener (listeners[].auth_static), for an ingest-only SMTP
 * endpoint where a single sender (an application, a scanner) logs in.
 * auth.c builds one per listener that has the section and asks it first
 * for VERIFY_PASSWORD requests that name that listener; other listeners
 * never see it. Input trusted: the validated config (the credential is
 * parsed again here, as auth/hash.h reads it); the user name arrives
 * normalised from auth.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "auth/auth_backend.h"

typedef struct static_backend {
    char user[TERN_AUTH_MAX_USER + 1]; /* normalised as auth.c normalises the client's */
    char *stored;
} static_backend;

static void static_destroy(void *b)
{
    static_backend *sb = b;
    if (sb == NULL)
        return;
    if (sb->stored != NULL) {
        sodium_memzero(sb->stored, strlen(sb->stored));
        free(sb->stored);
    }
    free(sb);
}

static char *fail(char **error_r, const tern_listener_conf *l, const char *key, const char *why)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "listeners \"%s\": auth_static.%s %s", l->name ? l->name : "?",
             key, why);
    *error_r = strdup(buf);
    return NULL;
}

void *tern_auth__static_new(const tern_listener_conf *l, const char *default_domain,
                            char **error_r)
{
    const char *user = l->auth_static.username, *pw = l->auth_static.password;
    if (user == NULL || pw == NULL)
        return fail(error_r, l, "username", "and password are both required");
    static_backend *sb = calloc(1, sizeof(*sb));
    if (sb == NULL) {
        *error_r = strdup("out of memory");
        return NULL;
    }
    if (tern_auth__normalise(user, default_domain, sb->user, sizeof(sb->user)) != 0) {
        static_destroy(sb);
        return fail(error_r, l, "username",
                    "is not a user name (empty, too long, or holds a space, ':' or control)");
    }
    /* One check with a wrong password: the only way to know that crypt(3)
     * or libsodium accept the stored value. It costs one hash per listener
     * per reload, and finding out at the first login would cost more. */
    if (strlen(pw) > TERN_HASH_MAX || tern_hash_verify(pw, "", 0) == TERN_HASH_EUNSUPPORTED) {
        static_destroy(sb);
        return fail(error_r, l, "password", "is not a credential auth/ can verify");
    }
    sb->stored = strdup(pw);
    if (sb->stored == NULL) {
        static_destroy(sb);
        *error_r = strdup("out of memory");
        return NULL;
    }
    return sb;
}

static unsigned static_caps(void *b)
{
    (void)b;
    /* Consulted for VERIFY_PASSWORD only: the mechanisms offered on a
     * listener come from the configured backends. */
    return TERN_AUTH_CAP_PASSWORD;
}

static void static_lookup(void *b, tern_auth_lookup *lk)
{
    static_backend *sb = b;
    lk->status = TERN_AUTH_LOOKUP_UNKNOWN;
    if (strcmp(lk->user, sb->user) == 0) {
        lk->account = tern_arena_strdup(&lk->req->arena, sb->user);
        lk->stored = tern_arena_strdup(&lk->req->arena, sb->stored);
        lk->status = lk->account && lk->stored ? TERN_AUTH_LOOKUP_FOUND : TERN_AUTH_ETEMP;
    }
    lk->done(lk);
}

const tern_auth_backend_ops tern_auth_static_backend = {
    .name = "static",
    .destroy = static_destroy,
    .caps = static_caps,
    .lookup = static_lookup,
};
