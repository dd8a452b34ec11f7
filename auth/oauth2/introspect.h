/* introspect.h: OAuth 2.0 token introspection (RFC 7662) for the oauth2
 * backend: the POST to the authorization server's endpoint (through the
 * HTTP client the program handed to auth/, tern_auth_set_http), the
 * judgement of its JSON answer, and a cache of answers keyed by a keyed
 * hash of the token (never the token itself). Private to auth/; exposed
 * so tests can judge answers and drive the cache with a fixed clock.
 *
 * Trusted: the params (validated config). Untrusted: the token and the
 * SASL user (the client's) and the endpoint's answer (parsed with tight
 * limits; only "active": true with every configured check passing lets
 * anyone in). */
#ifndef TERN_AUTH_INTROSPECT_H
#define TERN_AUTH_INTROSPECT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "auth/auth.h"
#include "lib/arena.h"

#define TERN_INTROSPECT_CACHE_SLOTS 4096
#define TERN_INTROSPECT_MAX_ANSWER (64 * 1024)

typedef struct tern_introspect_params {
    const char *url;
    const char *client_id, *client_secret;
    const char *ca_file;        /* NULL: the system bundle (https only) */
    const char *account_claim;  /* NULL: "username" */
    const char *issuer;         /* NULL: not checked; else "iss" must equal it */
    const char *audience;       /* NULL: not checked; else "aud" must hold it */
    int64_t leeway_s;
    uint64_t timeout_ms;
    uint64_t cache_ttl_ms;      /* 0: positive answers are not cached */
    uint64_t negative_ttl_ms;   /* 0: negative answers are not cached */
} tern_introspect_params;

typedef struct tern_introspect tern_introspect;

/* Blocking (the CA file is read when the URL is https and an HTTP client
 * was handed in). NULL with *error_r (malloc'd). */
tern_introspect *tern_introspect_new(const tern_introspect_params *p, char **error_r);
void tern_introspect_free(tern_introspect *in);

/* Judges an answer body at unix time `now`. TERN_AUTH_OK with *account_r
 * (in arena) and *exp_r (the token's exp, 0 when absent); TERN_AUTH_EFAIL
 * when the token is not active or fails a check (why); TERN_AUTH_ETEMP
 * when the body is not an introspection answer. The SASL user is not
 * checked here. */
int tern_introspect_judge(const tern_introspect *in, const char *body, size_t len, int64_t now,
                          tern_arena *arena, char **account_r, int64_t *exp_r, char *why,
                          size_t why_size);

/* Looks the token up in the cache at monotonic time now_ms: 0 on a miss;
 * 1 on a hit with *status_r TERN_AUTH_OK and *account_r (in arena), or
 * TERN_AUTH_EFAIL (why). Thread-safe. */
int tern_introspect_cached(tern_introspect *in, const char *token, size_t len, uint64_t now_ms,
                           tern_arena *arena, int *status_r, char **account_r, char *why,
                           size_t why_size);
/* Records an answer: account non-NULL for an active token (kept until
 * min(cache_ttl, exp - now_s)), NULL for an inactive one (negative_ttl). */
void tern_introspect_remember(tern_introspect *in, const char *token, size_t len,
                              const char *account, int64_t exp, int64_t now_s, uint64_t now_ms);

/* Asks the endpoint about r->in.token on `loop`, checks r->in.user
 * against the account, caches the answer, and calls done once from the
 * loop with r->status set (OK, EFAIL, or ETEMP for a timeout, a 5xx, a
 * refused client (401/403) or an unreadable answer; r->error says
 * which). */
void tern_introspect_ask(tern_introspect *in, uv_loop_t *loop, tern_auth_req *r,
                         void (*done)(tern_auth_req *r, char *account));

/* How many requests were sent to the endpoint (for tests and logs). */
uint64_t tern_introspect_requests(const tern_introspect *in);

#endif
