/* introspect.c: RFC 7662 token introspection for the oauth2 backend (see
 * introspect.h). The request is section 2.1's: a form POST of
 * token=...&token_type_hint=access_token with HTTP Basic client
 * authentication (RFC 6749 2.3.1: id and secret form-encoded first). The
 * answer must be a JSON object with "active": true; exp, nbf, iss and aud
 * are checked as for a JWT, and the account is a configured member.
 *
 * The cache holds answers under a keyed BLAKE2b hash of the token, so a
 * memory dump or a log of cache keys shows no usable token, and a chosen
 * token cannot be made to land on another's slot on purpose. It is a
 * fixed table: an entry is simply overwritten.
 *
 * Trusted: the params. Untrusted: the token, the user, the answer. */
#include "auth/oauth2/introspect.h"
#include "auth/oauth2/oauth2.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <sodium.h>

#include "lib/base64.h"
#include "lib/json.h"
#include "lib/log.h"

typedef struct slot {
    uint8_t hash[32];
    uint64_t expires_ms; /* monotonic; 0: empty */
    bool active;
    char account[TERN_AUTH_MAX_USER + 1];
} slot;

struct tern_introspect {
    char *url, *claim, *issuer, *audience;
    char *auth_header;   /* "Authorization: Basic ..." */
    int64_t leeway;
    uint64_t timeout_ms, cache_ttl_ms, negative_ttl_ms;
    const tern_auth_http *http;
    void *tls;
    atomic_uint_fast64_t requests;
    uint8_t key[crypto_generichash_KEYBYTES];
    pthread_mutex_t mu;
    slot *slots;
};

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* application/x-www-form-urlencoded (the WHATWG serializer): unreserved
 * characters as they are, space as '+', every other byte %XX. */
static size_t form_encode(const char *in, size_t len, char *out)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '*') {
            out[o++] = (char)c;
        } else if (c == ' ') {
            out[o++] = '+';
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
    return o;
}

tern_introspect *tern_introspect_new(const tern_introspect_params *p, char **error_r)
{
    tern_introspect *in = calloc(1, sizeof(*in));
    if (in == NULL || sodium_init() < 0) {
        free(in);
        *error_r = strdup("out of memory");
        return NULL;
    }
    pthread_mutex_init(&in->mu, NULL);
    atomic_init(&in->requests, 0);
    in->url = dup_or_null(p->url);
    in->claim = strdup(p->account_claim ? p->account_claim : "username");
    in->issuer = dup_or_null(p->issuer);
    in->audience = dup_or_null(p->audience);
    in->leeway = p->leeway_s < 0 ? 0 : p->leeway_s;
    in->timeout_ms = p->timeout_ms ? p->timeout_ms : 10000;
    in->cache_ttl_ms = p->cache_ttl_ms;
    in->negative_ttl_ms = p->negative_ttl_ms;
    in->slots = calloc(TERN_INTROSPECT_CACHE_SLOTS, sizeof(slot));
    crypto_generichash_keygen(in->key);
    const char *id = p->client_id ? p->client_id : "";
    const char *secret = p->client_secret ? p->client_secret : "";
    size_t il = strlen(id), sl = strlen(secret);
    char *cred = malloc(3 * (il + sl) + 2);
    size_t b64cap = TERN_BASE64_ENCODED_LEN(3 * (il + sl) + 1) + 1;
    in->auth_header = malloc(b64cap + 32);
    if (in->url == NULL || in->claim == NULL || in->slots == NULL || cred == NULL ||
        in->auth_header == NULL || (p->issuer && !in->issuer) || (p->audience && !in->audience)) {
        free(cred);
        tern_introspect_free(in);
        *error_r = strdup("out of memory");
        return NULL;
    }
    size_t cl = form_encode(id, il, cred);
    cred[cl++] = ':';
    cl += form_encode(secret, sl, cred + cl);
    int hl = snprintf(in->auth_header, 32, "Authorization: Basic ");
    tern_base64_encode((const uint8_t *)cred, cl, in->auth_header + hl, b64cap);
    sodium_memzero(cred, cl);
    free(cred);
    in->http = tern_auth_get_http();
    if (in->http != NULL && strncasecmp(in->url, "https://", 8) == 0) {
        in->tls = in->http->tls_new(p->ca_file, error_r);
        if (in->tls == NULL) {
            tern_introspect_free(in);
            return NULL;
        }
    }
    return in;
}

void tern_introspect_free(tern_introspect *in)
{
    if (in == NULL)
        return;
    if (in->tls != NULL && in->http != NULL)
        in->http->tls_free(in->tls);
    if (in->auth_header != NULL) {
        sodium_memzero(in->auth_header, strlen(in->auth_header));
        free(in->auth_header);
    }
    if (in->slots != NULL) {
        sodium_memzero(in->slots, TERN_INTROSPECT_CACHE_SLOTS * sizeof(slot));
        free(in->slots);
    }
    pthread_mutex_destroy(&in->mu);
    free(in->url);
    free(in->claim);
    free(in->issuer);
    free(in->audience);
    free(in);
}

uint64_t tern_introspect_requests(const tern_introspect *in)
{
    return atomic_load(&((tern_introspect *)in)->requests);
}

/* ---- judging an answer ------------------------------------------------------ */

/* A NumericDate member of obj: 0 absent, 1 present (*out), -1 not a number. */
static int date_member(const tern_json *obj, const char *key, double *out)
{
    return tern_oauth2_numeric_date(tern_json_get(obj, key), out);
}

int tern_introspect_judge(const tern_introspect *in, const char *body, size_t len, int64_t now,
                          tern_arena *arena, char **account_r, int64_t *exp_r, char *why,
                          size_t why_size)
{
    *account_r = NULL;
    *exp_r = 0;
    static const tern_json_limits lim = {.max_input = TERN_INTROSPECT_MAX_ANSWER,
                                         .max_depth = 8, .max_nodes = 1024, .max_string = 8192};
    tern_arena a;
    tern_arena_init(&a, 2048);
    tern_json *root = NULL;
    int rc = TERN_AUTH_EFAIL;
    if (tern_json_parse(body, len, &lim, &a, &root, NULL) != TERN_JSON_OK ||
        root->type != TERN_JSON_OBJECT) {
        snprintf(why, why_size, "introspection answer is not a JSON object");
        rc = TERN_AUTH_ETEMP;
        goto out;
    }
    const tern_json *active = tern_json_get(root, "active");
    if (active == NULL || active->type != TERN_JSON_BOOL) {
        snprintf(why, why_size, "introspection answer has no boolean \"active\"");
        rc = TERN_AUTH_ETEMP;
        goto out;
    }
    if (!active->boolean) {
        snprintf(why, why_size, "token not active (introspection)");
        goto out;
    }
    double t = (double)now, lw = (double)in->leeway, exp = 0, nbf = 0;
    int ep = date_member(root, "exp", &exp), np = date_member(root, "nbf", &nbf);
    if (ep < 0 || np < 0) {
        snprintf(why, why_size, "introspection answer has a bad exp or nbf");
        goto out;
    }
    if (ep == 1 && exp <= t - lw) {
        snprintf(why, why_size, "token expired (introspection)");
        goto out;
    }
    if (np == 1 && nbf > t + lw) {
        snprintf(why, why_size, "token not yet valid (introspection)");
        goto out;
    }
    if (in->issuer != NULL) {
        const char *iss = tern_json_str(tern_json_get(root, "iss"));
        if (iss == NULL || strcmp(iss, in->issuer) != 0) {
            snprintf(why, why_size, "wrong issuer (introspection)");
            goto out;
        }
    }
    if (in->audience != NULL && !tern_oauth2_aud_holds(tern_json_get(root, "aud"), in->audience)) {
        snprintf(why, why_size, "wrong audience (introspection)");
        goto out;
    }
    const char *acct = tern_json_str(tern_json_get(root, in->claim));
    if (acct == NULL || acct[0] == '\0' || strlen(acct) > TERN_AUTH_MAX_USER) {
        snprintf(why, why_size, "introspection answer's %.64s missing, not a string or too long",
                 in->claim);
        goto out;
    }
    if ((*account_r = tern_arena_strdup(arena, acct)) == NULL) {
        snprintf(why, why_size, "out of memory");
        rc = TERN_AUTH_ETEMP;
        goto out;
    }
    *exp_r = ep == 1 ? (int64_t)exp : 0;
    rc = TERN_AUTH_OK;
out:
    tern_arena_free(&a);
    return rc;
}

/* ---- the cache --------------------------------------------------------------- */

static slot *slot_for(tern_introspect *in, const char *token, size_t len, uint8_t h[32])
{
    crypto_generichash(h, 32, (const uint8_t *)token, len, in->key, sizeof(in->key));
    uint64_t idx;
    memcpy(&idx, h, sizeof(idx));
    return &in->slots[idx % TERN_INTROSPECT_CACHE_SLOTS];
}

int tern_introspect_cached(tern_introspect *in, const char *token, size_t len, uint64_t now_ms,
                           tern_arena *arena, int *status_r, char **account_r, char *why,
                           size_t why_size)
{
    uint8_t h[32];
    slot *s = slot_for(in, token, len, h);
    int hit = 0;
    pthread_mutex_lock(&in->mu);
    if (s->expires_ms > now_ms && sodium_memcmp(s->hash, h, sizeof(h)) == 0) {
        hit = 1;
        if (s->active) {
            *status_r = TERN_AUTH_OK;
            *account_r = tern_arena_strdup(arena, s->account);
            if (*account_r == NULL) {
                *status_r = TERN_AUTH_ETEMP;
                snprintf(why, why_size, "out of memory");
            }
        } else {
            *status_r = TERN_AUTH_EFAIL;
            *account_r = NULL;
            snprintf(why, why_size, "token not active (introspection, cached)");
        }
    }
    pthread_mutex_unlock(&in->mu);
    return hit;
}

void tern_introspect_remember(tern_introspect *in, const char *token, size_t len,
                              const char *account, int64_t exp, int64_t now_s, uint64_t now_ms)
{
    uint64_t ttl = account ? in->cache_ttl_ms : in->negative_ttl_ms;
    if (account != NULL && exp != 0) {
        /* Never past the token's own expiry. */
        uint64_t left = exp > now_s ? (uint64_t)(exp - now_s) * 1000u : 0;
        if (left < ttl)
            ttl = left;
    }
    if (ttl == 0 || (account != NULL && strlen(account) > TERN_AUTH_MAX_USER))
        return;
    uint8_t h[32];
    slot *s = slot_for(in, token, len, h);
    pthread_mutex_lock(&in->mu);
    memcpy(s->hash, h, sizeof(h));
    s->expires_ms = now_ms + ttl;
    s->active = account != NULL;
    snprintf(s->account, sizeof(s->account), "%s", account ? account : "");
    pthread_mutex_unlock(&in->mu);
}

/* ---- asking -------------------------------------------------------------------- */

typedef struct ask {
    tern_introspect *in;
    tern_auth_req *r;
    void (*done)(tern_auth_req *r, char *account);
} ask;

static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static void asked(void *arg, const tern_auth_http_answer *a)
{
    ask *k = arg;
    tern_auth_req *r = k->r;
    tern_introspect *in = k->in;
    char *account = NULL;
    r->error[0] = '\0';
    if (a->ok != 0) {
        r->status = TERN_AUTH_ETEMP;
        snprintf(r->error, sizeof(r->error), "introspection %s: %s",
                 a->timed_out ? "timed out" : "failed", a->why ? a->why : "?");
    } else if (a->status == 401 || a->status == 403) {
        r->status = TERN_AUTH_ETEMP;
        snprintf(r->error, sizeof(r->error),
                 "introspection endpoint refused our client credentials (HTTP %d): check "
                 "auth_oauth2.introspection.client_id and client_secret", a->status);
    } else if (a->status != 200) {
        r->status = TERN_AUTH_ETEMP;
        snprintf(r->error, sizeof(r->error), "introspection endpoint answered HTTP %d",
                 a->status);
    } else {
        int64_t exp = 0, now = (int64_t)time(NULL);
        r->status = tern_introspect_judge(in, a->body, a->body_len, now, &r->arena, &account,
                                          &exp, r->error, sizeof(r->error));
        if (r->status == TERN_AUTH_OK)
            tern_introspect_remember(in, r->in.token, r->in.token_len, account, exp, now,
                                     mono_ms());
        else if (r->status == TERN_AUTH_EFAIL)
            tern_introspect_remember(in, r->in.token, r->in.token_len, NULL, 0, now, mono_ms());
        if (r->status == TERN_AUTH_OK && r->in.user != NULL && r->in.user[0] != '\0' &&
            strcasecmp(r->in.user, account) != 0) {
            r->status = TERN_AUTH_EFAIL;
            snprintf(r->error, sizeof(r->error), "user does not match the token's %.64s",
                     in->claim);
            account = NULL;
        }
    }
    k->done(r, r->status == TERN_AUTH_OK ? account : NULL);
}

void tern_introspect_ask(tern_introspect *in, uv_loop_t *loop, tern_auth_req *r,
                         void (*done)(tern_auth_req *r, char *account))
{
    ask *k = tern_arena_alloc(&r->arena, sizeof(*k));
    size_t cap = 3 * r->in.token_len + 64;
    char *body = tern_arena_alloc(&r->arena, cap);
    if (k == NULL || body == NULL) {
        r->status = TERN_AUTH_ETEMP;
        snprintf(r->error, sizeof(r->error), "out of memory");
        done(r, NULL);
        return;
    }
    if (in->http == NULL) {
        r->status = TERN_AUTH_ETEMP;
        snprintf(r->error, sizeof(r->error), "introspection needs an HTTP client, and this "
                                             "program has none");
        done(r, NULL);
        return;
    }
    *k = (ask){.in = in, .r = r, .done = done};
    memcpy(body, "token=", 6);
    size_t n = 6 + form_encode(r->in.token, r->in.token_len, body + 6);
    n += (size_t)snprintf(body + n, cap - n, "&token_type_hint=access_token");
    const char *headers[] = {
        in->auth_header,
        "Content-Type: application/x-www-form-urlencoded",
        "Accept: application/json",
    };
    atomic_fetch_add(&in->requests, 1);
    if (in->http->post(loop, in->tls, in->url, headers, 3, body, n, in->timeout_ms,
                       TERN_INTROSPECT_MAX_ANSWER, asked, k) != 0) {
        sodium_memzero(body, n);
        r->status = TERN_AUTH_ETEMP;
        snprintf(r->error, sizeof(r->error), "cannot start the introspection request");
        done(r, NULL);
        return;
    }
    sodium_memzero(body, n); /* the client made its own copy */
}
