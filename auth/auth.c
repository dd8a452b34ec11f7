/* auth.c: the auth API (auth.h): backends in order, hashing on the thread
 * pool, answers that do not tell whether a user exists, and the login
 * limiter. Input trusted: the validated config; user names and passwords
 * from clients, bounded here before any backend sees them. */
#include <errno.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "auth/auth_backend.h"
#include "lib/log.h"

const char *tern_auth_strerror(int status)
{
    switch (status) {
    case TERN_AUTH_OK: return "ok";
    case TERN_AUTH_EFAIL: return "authentication failed";
    case TERN_AUTH_ENOTFOUND: return "no such user";
    case TERN_AUTH_EUNAVAIL: return "no such credential for this user";
    case TERN_AUTH_ELOCKED: return "temporarily refused after too many failures";
    case TERN_AUTH_ETEMP: return "authentication backend unavailable";
    case TERN_AUTH_EINVAL: return "invalid request";
    default: return "unknown error";
    }
}

static _Atomic(const tern_auth_http *) auth_http;

void tern_auth_set_http(const tern_auth_http *h)
{
    atomic_store(&auth_http, h);
}

const tern_auth_http *tern_auth_get_http(void)
{
    return atomic_load(&auth_http);
}

int tern_auth__normalise(const char *in, const char *default_domain, char *out, size_t size)
{
    size_t n = strlen(in);
    if (n == 0 || n > TERN_AUTH_MAX_USER || n >= size)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)in[i];
        if (ch <= ' ' || ch == 0x7f || ch == ':')
            return -1;
    }
    memcpy(out, in, n + 1);
    char *at = strrchr(out, '@');
    if (at == NULL && default_domain != NULL) {
        if (n + 1 + strlen(default_domain) >= size ||
            n + 1 + strlen(default_domain) > TERN_AUTH_MAX_USER)
            return -1;
        out[n] = '@';
        strcpy(out + n + 1, default_domain);
        at = out + n;
    }
    if (at != NULL && (at == out || at[1] == '\0'))
        return -1;
    for (char *p = at; p && *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p + 32);
    return 0;
}

/* ---- the limiter ---------------------------------------------------------- */

/* A fixed table keyed by a keyed hash of "ip:..." or "acct:...": memory is
 * bounded whatever an attacker sends, and when the probe window is full the
 * entry idle longest is replaced. */
#define LIM_SLOTS 16384
#define LIM_PROBE 8

typedef struct lim_entry {
    uint64_t key;         /* 0: free */
    uint64_t last_ms;     /* last failure */
    uint64_t locked_until;
    uint32_t failures;
} lim_entry;

typedef struct limiter {
    atomic_int refs;
    pthread_mutex_t mu;
    uint8_t key[crypto_shorthash_KEYBYTES];
    lim_entry slots[LIM_SLOTS];
    /* Counters for the admin view (tern_auth_stats): here because the
     * limiter is what a reload carries over. */
    _Atomic uint64_t n_ok, n_failed, n_refused, n_errors;
    uint64_t n_lockouts_ip, n_lockouts_account; /* under mu */
} limiter;

static limiter *limiter_new(void)
{
    limiter *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    atomic_init(&l->refs, 1);
    pthread_mutex_init(&l->mu, NULL);
    randombytes_buf(l->key, sizeof(l->key));
    return l;
}

static void limiter_unref(limiter *l)
{
    if (l != NULL && atomic_fetch_sub(&l->refs, 1) == 1) {
        pthread_mutex_destroy(&l->mu);
        free(l);
    }
}

static uint64_t lim_key(const limiter *l, const char *kind, const char *name)
{
    char buf[TERN_AUTH_MAX_USER + 16];
    int n = snprintf(buf, sizeof(buf), "%s:%s", kind, name);
    uint8_t h[crypto_shorthash_BYTES];
    crypto_shorthash(h, (const uint8_t *)buf, (unsigned long long)(n > 0 ? n : 0), l->key);
    uint64_t k;
    memcpy(&k, h, sizeof(k));
    return k == 0 ? 1 : k;
}

typedef struct tern_auth_limits {
    uint32_t max_failures;
    uint64_t lockout_ms, delay_ms, max_delay_ms;
} tern_auth_limits;

/* An entry whose last failure is older than the lockout and that is not
 * locked has been forgiven: its slot is as good as free. */
static bool lim_stale(const lim_entry *e, const tern_auth_limits *lm, uint64_t now)
{
    return e->key == 0 || (e->locked_until <= now && now - e->last_ms >= lm->lockout_ms);
}

static lim_entry *lim_find(limiter *l, uint64_t key, bool create, const tern_auth_limits *lm,
                           uint64_t now)
{
    size_t base = (size_t)(key % LIM_SLOTS);
    lim_entry *victim = NULL;
    for (size_t i = 0; i < LIM_PROBE; i++) {
        lim_entry *e = &l->slots[(base + i) % LIM_SLOTS];
        if (e->key == key) {
            if (lim_stale(e, lm, now))
                *e = (lim_entry){.key = key};
            return e;
        }
        if (!create)
            continue;
        if (lim_stale(e, lm, now)) {
            if (victim == NULL || !lim_stale(victim, lm, now))
                victim = e;
        } else if (victim == NULL ||
                   (!lim_stale(victim, lm, now) && e->last_ms < victim->last_ms)) {
            victim = e;
        }
    }
    if (victim != NULL)
        *victim = (lim_entry){.key = key};
    return victim;
}

/* ---- the auth object ------------------------------------------------------- */

#define MAX_BACKENDS 8

/* Accounts whose store account is known to exist, so that a login by a
 * file/sql/ldap/oauth2 user writes to the store once per PROVISIONED_TTL
 * instead of at every login. Entries expire so that an account deleted
 * from the store (ternctl account remove) gets its mailboxes back at a
 * later login; the table is a cache, so a slot is simply overwritten. The
 * key is a keyed hash (SipHash) of the account: a chosen name cannot
 * evict another on purpose. */
#define PROVISIONED_SLOTS 4096
#define PROVISIONED_TTL_MS (10 * 60 * 1000)

typedef struct provisioned {
    pthread_mutex_t mu;
    unsigned char key[crypto_shorthash_KEYBYTES];
    struct {
        uint64_t hash;
        uint64_t expires_ms;
    } slot[PROVISIONED_SLOTS];
} provisioned;

typedef struct backend {
    const tern_auth_backend_ops *ops;
    void *state;
} backend;

struct tern_auth {
    atomic_int refs;
    backend backends[MAX_BACKENDS];
    size_t n_backends;
    unsigned caps;
    bool lookups;        /* a backend knows users by name, not only by token */
    unsigned token_caps; /* TERN_AUTH_CAP_TOKEN when a backend checks tokens */
    char *default_domain;
    tern_auth_limits limits;
    _Atomic(limiter *) lim;
    tern_store *store;      /* for first-login account creation; may be NULL */
    provisioned *prov;      /* store accounts known to exist (with store) */
    struct static_login {   /* listeners[].auth_static, by listener name */
        char *listener;
        void *state;
    } *statics;
    size_t n_statics;
};

struct tern_auth_client {
    tern_auth *auth;
    uv_loop_t *loop;
    void *bstate[MAX_BACKENDS];
    tern_store_client *store_client; /* made at the first first-login creation */
    size_t pending;
    bool closing;
};

static const tern_auth_backend_ops *backend_by_name(const char *name)
{
    if (strcmp(name, "file") == 0)
        return &tern_auth_file_backend;
    if (strcmp(name, "internal") == 0)
        return &tern_auth_internal_backend;
    if (strcmp(name, "oauth2") == 0)
        return &tern_auth_oauth2_backend;
    if (strcmp(name, "ldap") == 0)
        return &tern_auth_ldap_backend;
    if (strcmp(name, "sql") == 0)
        return &tern_auth_sql_backend;
    return NULL;
}

tern_auth *tern_auth_new(const tern_config *cfg, tern_store *store, char **error_r)
{
    if (tern_hash_init() != 0) {
        *error_r = strdup("libsodium failed to initialise");
        return NULL;
    }
    tern_auth *a = calloc(1, sizeof(*a));
    limiter *lim = limiter_new();
    if (a == NULL || lim == NULL) {
        free(a);
        limiter_unref(lim);
        *error_r = strdup("out of memory");
        return NULL;
    }
    atomic_init(&a->refs, 1);
    atomic_init(&a->lim, lim);
    a->limits = (tern_auth_limits){
        .max_failures = cfg->auth.max_failures ? cfg->auth.max_failures : 10,
        .lockout_ms = cfg->auth.lockout_ms ? cfg->auth.lockout_ms : 15 * 60 * 1000,
        .delay_ms = cfg->auth.failure_delay_ms,
        .max_delay_ms = cfg->auth.max_delay_ms,
    };
    if (cfg->auth_file.default_domain != NULL)
        a->default_domain = strdup(cfg->auth_file.default_domain);
    a->caps = TERN_AUTH_CAP_PASSWORD | TERN_AUTH_CAP_SCRAM_SHA_256 | TERN_AUTH_CAP_CRAM_MD5;
    static const char *const def[] = {"internal"};
    const char *const *names = cfg->auth.n_backends ? (const char *const *)cfg->auth.backends : def;
    size_t n = cfg->auth.n_backends ? cfg->auth.n_backends : 1;
    for (size_t i = 0; i < n; i++) {
        const tern_auth_backend_ops *ops = backend_by_name(names[i]);
        if (ops == NULL || a->n_backends == MAX_BACKENDS) {
            char buf[128];
            snprintf(buf, sizeof(buf), "auth.backends: \"%s\" is not available", names[i]);
            *error_r = strdup(buf);
            tern_auth_unref(a);
            return NULL;
        }
        void *st = ops->create(cfg, store, error_r);
        if (st == NULL) {
            tern_auth_unref(a);
            return NULL;
        }
        a->backends[a->n_backends++] = (backend){ops, st};
        /* A token backend knows no one by password: it takes nothing from
         * what the others offer, and adds tokens. */
        if (ops->verify_token == NULL) {
            a->caps &= ops->caps(st);
            a->lookups = true;
        } else {
            a->token_caps |= ops->caps(st) & TERN_AUTH_CAP_TOKEN;
        }
    }
    a->store = store;
    if (store != NULL) {
        if ((a->prov = calloc(1, sizeof(*a->prov))) == NULL) {
            *error_r = strdup("out of memory");
            tern_auth_unref(a);
            return NULL;
        }
        pthread_mutex_init(&a->prov->mu, NULL);
        crypto_shorthash_keygen(a->prov->key);
    }
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        const tern_listener_conf *l = &cfg->listeners[i];
        if (l->auth_static.username == NULL && l->auth_static.password == NULL)
            continue;
        if (a->statics == NULL &&
            (a->statics = calloc(cfg->n_listeners, sizeof(*a->statics))) == NULL) {
            *error_r = strdup("out of memory");
            tern_auth_unref(a);
            return NULL;
        }
        struct static_login *sl = &a->statics[a->n_statics];
        sl->state = tern_auth__static_new(l, a->default_domain, error_r);
        if (sl->state == NULL) {
            tern_auth_unref(a);
            return NULL;
        }
        a->n_statics++;
        if ((sl->listener = strdup(l->name ? l->name : "")) == NULL) {
            *error_r = strdup("out of memory");
            tern_auth_unref(a);
            return NULL;
        }
    }
    return a;
}

void tern_auth_keep_state(tern_auth *next, tern_auth *prev)
{
    limiter *l = atomic_load(&prev->lim);
    atomic_fetch_add(&l->refs, 1);
    limiter_unref(atomic_exchange(&next->lim, l));
}

tern_auth *tern_auth_ref(tern_auth *a)
{
    atomic_fetch_add(&a->refs, 1);
    return a;
}

void tern_auth_unref(tern_auth *a)
{
    if (a == NULL || atomic_fetch_sub(&a->refs, 1) != 1)
        return;
    for (size_t i = 0; i < a->n_backends; i++)
        a->backends[i].ops->destroy(a->backends[i].state);
    for (size_t i = 0; i < a->n_statics; i++) {
        tern_auth_static_backend.destroy(a->statics[i].state);
        free(a->statics[i].listener);
    }
    free(a->statics);
    if (a->prov) {
        pthread_mutex_destroy(&a->prov->mu);
        free(a->prov);
    }
    limiter_unref(atomic_load(&a->lim));
    free(a->default_domain);
    free(a);
}

unsigned tern_auth_capabilities(const tern_auth *a)
{
    return (a->lookups ? a->caps : 0) | a->token_caps;
}

/* ---- limiter API ------------------------------------------------------------ */

int tern_auth_limiter_check(tern_auth *a, const char *ip, const char *account, uint64_t now_ms)
{
    limiter *l = atomic_load(&a->lim);
    int rc = 0;
    pthread_mutex_lock(&l->mu);
    const char *kinds[2] = {"ip", "acct"}, *names[2] = {ip, account};
    for (int i = 0; i < 2; i++) {
        if (names[i] == NULL)
            continue;
        lim_entry *e = lim_find(l, lim_key(l, kinds[i], names[i]), false, &a->limits, now_ms);
        if (e != NULL && e->locked_until > now_ms)
            rc = TERN_AUTH_ELOCKED;
    }
    pthread_mutex_unlock(&l->mu);
    if (rc != 0)
        atomic_fetch_add(&l->n_refused, 1);
    return rc;
}

uint64_t tern_auth_limiter_failure(tern_auth *a, const char *ip, const char *account,
                                   uint64_t now_ms)
{
    limiter *l = atomic_load(&a->lim);
    const tern_auth_limits *lm = &a->limits;
    uint32_t worst = 0;
    pthread_mutex_lock(&l->mu);
    const char *kinds[2] = {"ip", "acct"}, *names[2] = {ip, account};
    for (int i = 0; i < 2; i++) {
        if (names[i] == NULL)
            continue;
        lim_entry *e = lim_find(l, lim_key(l, kinds[i], names[i]), true, lm, now_ms);
        if (e == NULL)
            continue;
        if (e->failures < UINT32_MAX)
            e->failures++;
        e->last_ms = now_ms;
        if (e->failures >= lm->max_failures && e->locked_until <= now_ms) {
            e->locked_until = now_ms + lm->lockout_ms;
            if (i == 0)
                l->n_lockouts_ip++;
            else
                l->n_lockouts_account++;
            /* A security event: alerting keys on event=security. The
             * account is not named (it may be a guessed one); the address
             * that caused it is. */
            TLOG_WARN("auth", "event=security kind=auth_lockout scope=%s ip=%s failures=%u "
                              "lockout_ms=%llu",
                      i == 0 ? "ip" : "account", ip ? ip : "-", e->failures,
                      (unsigned long long)lm->lockout_ms);
        }
        if (e->failures > worst)
            worst = e->failures;
    }
    pthread_mutex_unlock(&l->mu);
    atomic_fetch_add(&l->n_failed, 1);
    if (worst == 0)
        return 0;
    uint64_t d = lm->delay_ms;
    for (uint32_t i = 1; i < worst && d < lm->max_delay_ms; i++)
        d *= 2;
    return d > lm->max_delay_ms ? lm->max_delay_ms : d;
}

void tern_auth_limiter_success(tern_auth *a, const char *ip, const char *account)
{
    limiter *l = atomic_load(&a->lim);
    atomic_fetch_add(&l->n_ok, 1);
    pthread_mutex_lock(&l->mu);
    const char *kinds[2] = {"ip", "acct"}, *names[2] = {ip, account};
    for (int i = 0; i < 2; i++) {
        if (names[i] == NULL)
            continue;
        lim_entry *e = lim_find(l, lim_key(l, kinds[i], names[i]), false, &a->limits, UINT64_MAX);
        if (e != NULL)
            *e = (lim_entry){0};
    }
    pthread_mutex_unlock(&l->mu);
}

size_t tern_auth_limiter_entries(const tern_auth *a)
{
    limiter *l = atomic_load(&((tern_auth *)a)->lim);
    size_t n = 0;
    pthread_mutex_lock(&l->mu);
    for (size_t i = 0; i < LIM_SLOTS; i++)
        n += l->slots[i].key != 0;
    pthread_mutex_unlock(&l->mu);
    return n;
}

static uint64_t now_ms(void);

void tern_auth_stats_get(const tern_auth *a, tern_auth_stats *out)
{
    limiter *l = atomic_load(&((tern_auth *)a)->lim);
    memset(out, 0, sizeof(*out));
    out->ok = atomic_load(&l->n_ok);
    out->failed = atomic_load(&l->n_failed);
    out->refused = atomic_load(&l->n_refused);
    out->errors = atomic_load(&l->n_errors);
    uint64_t now = now_ms();
    pthread_mutex_lock(&l->mu);
    out->lockouts_ip = l->n_lockouts_ip;
    out->lockouts_account = l->n_lockouts_account;
    for (size_t i = 0; i < LIM_SLOTS; i++) {
        const lim_entry *e = &l->slots[i];
        if (e->key == 0)
            continue;
        out->tracked++;
        if (e->locked_until > now)
            out->locked_now++;
    }
    pthread_mutex_unlock(&l->mu);
}

/* ---- clients and requests ---------------------------------------------------- */

tern_auth_client *tern_auth_client_new(tern_auth *a, uv_loop_t *loop)
{
    tern_auth_client *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->auth = tern_auth_ref(a);
    c->loop = loop;
    for (size_t i = 0; i < a->n_backends; i++)
        if (a->backends[i].ops->client_new)
            c->bstate[i] = a->backends[i].ops->client_new(a->backends[i].state, loop);
    return c;
}

static void client_maybe_free(tern_auth_client *c)
{
    if (!c->closing || c->pending > 0)
        return;
    tern_auth *a = c->auth;
    for (size_t i = 0; i < a->n_backends; i++)
        if (a->backends[i].ops->client_close && c->bstate[i])
            a->backends[i].ops->client_close(a->backends[i].state, c->bstate[i]);
    if (c->store_client != NULL)
        tern_store_client_close(c->store_client);
    tern_auth_unref(a);
    free(c);
}

void tern_auth_client_close(tern_auth_client *c)
{
    if (c == NULL)
        return;
    c->closing = true;
    client_maybe_free(c);
}

tern_auth_req *tern_auth_req_new(tern_auth_op op, tern_auth_cb cb, void *data)
{
    tern_auth_req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->op = op;
    r->cb = cb;
    r->data = data;
    tern_arena_init(&r->arena, 1024);
    return r;
}

void tern_auth_req_free(tern_auth_req *r)
{
    if (r == NULL)
        return;
    tern_arena_free(&r->arena);
    sodium_memzero(&r->out.cram_md5, sizeof(r->out.cram_md5));
    sodium_memzero(&r->out.scram, sizeof(r->out.scram));
    free(r);
}

static int req_fail(tern_auth_req *r, int status, const char *msg)
{
    r->status = status;
    snprintf(r->error, sizeof(r->error), "%s", msg);
    return status;
}

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static uint8_t fake_secret[crypto_generichash_KEYBYTES];
static pthread_once_t fake_once = PTHREAD_ONCE_INIT;

static void fake_secret_init(void)
{
    randombytes_buf(fake_secret, sizeof(fake_secret));
}

/* Keys for a user no backend knows (or who has none): derived from a
 * process secret and the name, so asking twice gives the same salt, as it
 * would for a real user. */
static void fake_scram(const char *user, tern_scram_keys *k)
{
    uint8_t a[16 + 32], b[32];
    crypto_generichash_state st;
    pthread_once(&fake_once, fake_secret_init);
    crypto_generichash(a, sizeof(a), (const uint8_t *)user, strlen(user), fake_secret,
                       sizeof(fake_secret));
    crypto_generichash_init(&st, fake_secret, sizeof(fake_secret), sizeof(b));
    crypto_generichash_update(&st, (const uint8_t *)"server:", 7);
    crypto_generichash_update(&st, (const uint8_t *)user, strlen(user));
    crypto_generichash_final(&st, b, sizeof(b));
    k->iterations = TERN_HASH_SCRAM_DEFAULT_ITERATIONS;
    memcpy(k->salt, a, 16);
    k->salt_len = 16;
    memcpy(k->stored_key, a + 16, 32);
    memcpy(k->server_key, b, 32);
}

static void finish_work(uv_work_t *w);
static void after_work(uv_work_t *w, int status);
static void next_backend(tern_auth_req *r);

/* Every answer goes through the pool, hashing or not, so the callback
 * never runs inside tern_auth_submit and all answers take the same path. */
static void queue_finish(tern_auth_req *r)
{
    r->priv_.work.data = r;
    if (uv_queue_work(r->priv_.client->loop, &r->priv_.work, finish_work, after_work) != 0) {
        r->status = TERN_AUTH_ETEMP;
        snprintf(r->error, sizeof(r->error), "cannot queue work");
        after_work(&r->priv_.work, 0);
    }
}

/* priv_.stored of a user whose backend checked the password itself. */
static char verified_mark[] = "";

static void lookup_done(tern_auth_lookup *lk)
{
    tern_auth_req *r = lk->req;
    tern_auth *a = r->priv_.client->auth;
    if (lk->status == TERN_AUTH_ETEMP) {
        r->status = TERN_AUTH_ETEMP;
        if (r->error[0] == '\0')
            snprintf(r->error, sizeof(r->error), "backend %s unavailable",
                     a->backends[r->priv_.backend].ops->name);
        queue_finish(r);
        return;
    }
    if (lk->status == TERN_AUTH_LOOKUP_FOUND) {
        r->priv_.found = true;
        r->priv_.stored = lk->verified ? verified_mark : lk->stored;
        r->out.account = lk->account;
        r->out.backend = a->backends[r->priv_.backend].ops->name;
        queue_finish(r);
        return;
    }
    r->priv_.backend++;
    next_backend(r);
}

static void next_backend(tern_auth_req *r)
{
    tern_auth_client *c = r->priv_.client;
    tern_auth *a = c->auth;
    if (r->priv_.backend >= a->n_backends) {
        queue_finish(r); /* nobody knows the user */
        return;
    }
    tern_auth_lookup *lk = tern_arena_alloc(&r->arena, sizeof(*lk));
    if (lk == NULL) {
        r->status = TERN_AUTH_ETEMP;
        snprintf(r->error, sizeof(r->error), "out of memory");
        queue_finish(r);
        return;
    }
    *lk = (tern_auth_lookup){.req = r, .user = r->priv_.user,
                             .client_state = c->bstate[r->priv_.backend], .done = lookup_done};
    const backend *b = &a->backends[r->priv_.backend];
    b->ops->lookup(b->state, lk);
}

static void static_done(tern_auth_lookup *lk)
{
    tern_auth_req *r = lk->req;
    if (lk->status == TERN_AUTH_LOOKUP_FOUND) {
        r->priv_.found = true;
        r->priv_.stored = lk->stored;
        r->out.account = lk->account;
        r->out.backend = tern_auth_static_backend.name;
        queue_finish(r);
        return;
    }
    next_backend(r); /* not the listener's fixed user: the others may know it */
}

/* The listener's fixed login, when the request names a listener that has
 * one. True when the lookup was started (it continues from static_done). */
static bool try_static(tern_auth_client *c, tern_auth_req *r)
{
    tern_auth *a = c->auth;
    if (r->op != TERN_AUTH_VERIFY_PASSWORD || r->in.listener == NULL ||
        r->priv_.backend >= a->n_backends)
        return false;
    for (size_t i = 0; i < a->n_statics; i++) {
        if (strcmp(a->statics[i].listener, r->in.listener) != 0)
            continue;
        tern_auth_lookup *lk = tern_arena_alloc(&r->arena, sizeof(*lk));
        if (lk == NULL)
            return false;
        *lk = (tern_auth_lookup){.req = r, .user = r->priv_.user, .done = static_done};
        tern_auth_static_backend.lookup(a->statics[i].state, lk);
        return true;
    }
    return false;
}

/* A token names its own account: nothing is looked up, the backends that
 * check tokens do it on the pool (finish_work). The limiter counts by IP,
 * and by the user when the client named one. */
static int submit_token(tern_auth_client *c, tern_auth_req *r)
{
    const char *user = r->in.user ? r->in.user : "";
    if (r->in.token == NULL || r->in.token_len == 0 || r->in.token_len > TERN_AUTH_MAX_TOKEN)
        return req_fail(r, TERN_AUTH_EINVAL, "no token, or longer than 8192 bytes");
    if (strlen(user) > TERN_AUTH_MAX_USER)
        return req_fail(r, TERN_AUTH_EINVAL, "user name too long");
    c->pending++;
    memcpy(r->priv_.user, user, strlen(user) + 1);
    if (tern_auth_limiter_check(c->auth, r->in.remote_ip, user[0] ? user : NULL, now_ms()) != 0)
        r->status = TERN_AUTH_ELOCKED;
    queue_finish(r);
    return 0;
}

static void token_work(tern_auth_req *r)
{
    tern_auth *a = r->priv_.client->auth;
    r->status = TERN_AUTH_EFAIL;
    snprintf(r->error, sizeof(r->error), "no backend checks tokens");
    for (size_t i = 0; i < a->n_backends; i++) {
        const backend *b = &a->backends[i];
        if (b->ops->verify_token == NULL)
            continue;
        char *account = NULL;
        r->error[0] = '\0';
        r->status = b->ops->verify_token(b->state, r, &account);
        if (r->status == TERN_AUTH__ASYNC) {
            if (b->ops->verify_token_async == NULL) {
                r->status = TERN_AUTH_ETEMP;
                snprintf(r->error, sizeof(r->error), "backend %s cannot decide", b->ops->name);
                return;
            }
            r->priv_.backend = i; /* after_work asks it on the loop */
            return;
        }
        if (r->status == TERN_AUTH_OK) {
            r->priv_.found = true;
            r->out.account = account;
            r->out.backend = b->ops->name;
            return;
        }
    }
}

int tern_auth_submit(tern_auth_client *c, tern_auth_req *r)
{
    r->status = TERN_AUTH_OK;
    r->error[0] = '\0';
    r->priv_.client = c;
    r->priv_.backend = 0;
    r->priv_.found = false;
    r->priv_.stored = NULL;
    if (c->closing)
        return req_fail(r, TERN_AUTH_EINVAL, "client is closing");
    if (r->op < TERN_AUTH_VERIFY_PASSWORD || r->op > TERN_AUTH_PROVISION)
        return req_fail(r, TERN_AUTH_EINVAL, "unknown operation");
    if (r->op == TERN_AUTH_PROVISION) {
        if (r->in.user == NULL || r->in.backend == NULL)
            return req_fail(r, TERN_AUTH_EINVAL, "no account or backend");
        r->out.account = tern_arena_strdup(&r->arena, r->in.user);
        r->out.backend = r->in.backend;
        if (r->out.account == NULL)
            return req_fail(r, TERN_AUTH_ETEMP, "out of memory");
        c->pending++;
        /* Through the pool like every answer, so the callback never runs
         * inside this call. */
        queue_finish(r);
        return 0;
    }
    if (r->op == TERN_AUTH_VERIFY_TOKEN)
        return submit_token(c, r);
    if (r->in.user == NULL)
        return req_fail(r, TERN_AUTH_EINVAL, "no user");
    if (r->op == TERN_AUTH_VERIFY_PASSWORD &&
        (r->in.password == NULL || r->in.password_len > TERN_HASH_MAX_PASSWORD))
        return req_fail(r, TERN_AUTH_EINVAL, "no password, or longer than 1024 bytes");
    c->pending++;
    if (tern_auth__normalise(r->in.user, c->auth->default_domain, r->priv_.user,
                             sizeof(r->priv_.user)) != 0) {
        /* Not a user name any backend could hold: an unknown user, with
         * the same cost and answer. */
        snprintf(r->priv_.user, sizeof(r->priv_.user), "invalid");
        r->priv_.backend = c->auth->n_backends;
    }
    if (r->op == TERN_AUTH_VERIFY_PASSWORD &&
        tern_auth_limiter_check(c->auth, r->in.remote_ip, r->priv_.user, now_ms()) != 0) {
        r->status = TERN_AUTH_ELOCKED;
        queue_finish(r);
        return 0;
    }
    if (!try_static(c, r))
        next_backend(r);
    return 0;
}

/* On a pool thread: the hashing, and filling the outputs from the stored
 * credentials. Touches only the request. */
static void finish_work(uv_work_t *w)
{
    tern_auth_req *r = w->data;
    if (r->status != TERN_AUTH_OK)
        return;
    const char *stored = r->priv_.stored;
    size_t len = 0;
    const char *d;
    switch (r->op) {
    case TERN_AUTH_VERIFY_PASSWORD: {
        if (r->priv_.found && stored == verified_mark)
            break;
        if (!r->priv_.found || stored == NULL) {
            tern_hash_verify_dummy(r->in.password, r->in.password_len);
            r->status = TERN_AUTH_EFAIL;
            break;
        }
        int v = tern_hash_verify(stored, r->in.password, r->in.password_len);
        if (v == TERN_HASH_EUNSUPPORTED) {
            char scheme[32];
            snprintf(r->error, sizeof(r->error), "stored password of scheme %s not supported",
                     tern_hash_scheme(stored, scheme, sizeof(scheme)));
        }
        r->status = v == TERN_HASH_MATCH ? TERN_AUTH_OK : TERN_AUTH_EFAIL;
        break;
    }
    case TERN_AUTH_GET_SCRAM_KEYS:
        d = stored ? tern_hash_find(stored, "SCRAM-SHA-256", &len) : NULL;
        if (!r->priv_.found) {
            r->status = TERN_AUTH_ENOTFOUND;
        } else if (d == NULL || tern_hash_scram_parse(d, len, &r->out.scram) != 0) {
            r->status = TERN_AUTH_EUNAVAIL;
        }
        if (r->status != TERN_AUTH_OK)
            fake_scram(r->priv_.user, &r->out.scram);
        break;
    case TERN_AUTH_GET_SECRET:
        if (!r->priv_.found) {
            r->status = TERN_AUTH_ENOTFOUND;
        } else if (stored && (d = tern_hash_find(stored, "CRAM-MD5", &len)) != NULL) {
            if (tern_hash_cram_md5_parse(d, len, r->out.cram_md5) != 0)
                r->status = TERN_AUTH_EUNAVAIL;
        } else if (stored && (d = tern_hash_find(stored, "PLAIN", &len)) != NULL) {
            tern_hash_cram_md5_context(d, len, r->out.cram_md5);
        } else {
            r->status = TERN_AUTH_EUNAVAIL;
        }
        if (r->status == TERN_AUTH_OK && (d = tern_hash_find(stored, "PLAIN", &len)) != NULL &&
            (r->out.secret = tern_arena_strndup(&r->arena, d, len)) != NULL)
            r->out.secret_len = len;
        break;
    case TERN_AUTH_USER_EXISTS:
        if (!r->priv_.found)
            r->status = TERN_AUTH_ENOTFOUND;
        break;
    case TERN_AUTH_VERIFY_TOKEN:
        token_work(r);
        break;
    case TERN_AUTH_PROVISION:
        break; /* the store request is made on the loop, in after_work */
    }
}

static void req_complete(tern_auth_req *r)
{
    tern_auth_client *c = r->priv_.client;
    c->pending--;
    if (r->cb)
        r->cb(r);
    client_maybe_free(c);
}

/* The slot of account; with `mark`, records it as existing for the TTL.
 * Returns whether it was (or now is) recorded as existing. */
static bool provisioned_check(provisioned *p, const char *account, bool mark)
{
    if (p == NULL)
        return false;
    char low[512];
    size_t n = strlen(account);
    if (n >= sizeof(low))
        return false; /* never cached: the store decides every time */
    for (size_t i = 0; i <= n; i++)
        low[i] = (char)((account[i] >= 'A' && account[i] <= 'Z') ? account[i] + 32 : account[i]);
    unsigned char h[crypto_shorthash_BYTES];
    crypto_shorthash(h, (const unsigned char *)low, n, p->key);
    uint64_t hash;
    memcpy(&hash, h, sizeof(hash));
    hash |= 1; /* 0 marks an empty slot */
    uint64_t now = now_ms();
    size_t i = (size_t)(hash >> 20) % PROVISIONED_SLOTS;
    pthread_mutex_lock(&p->mu);
    bool hit = p->slot[i].hash == hash && p->slot[i].expires_ms > now;
    if (mark) {
        p->slot[i].hash = hash;
        p->slot[i].expires_ms = now + PROVISIONED_TTL_MS;
        hit = true;
    }
    pthread_mutex_unlock(&p->mu);
    return hit;
}

static void account_created(tern_store_req *sr)
{
    tern_auth_req *r = sr->data;
    char qu[128];
    if (sr->status == TERN_STORE_OK || sr->status == TERN_STORE_EEXISTS)
        provisioned_check(r->priv_.client->auth->prov, r->out.account, true);
    if (sr->status == TERN_STORE_OK)
        TLOG_INFO("auth", "event=account_created account=%s backend=%s",
                  tern_log_q(qu, sizeof(qu), r->out.account), r->out.backend);
    else if (sr->status == TERN_STORE_ENOTFOUND || sr->status == TERN_STORE_EINVAL)
        TLOG_INFO("auth", "event=account_not_created account=%s backend=%s "
                          "why=\"not a local domain of the store\"",
                  tern_log_q(qu, sizeof(qu), r->out.account), r->out.backend);
    else if (sr->status != TERN_STORE_EEXISTS)
        TLOG_WARN("auth", "event=account_create_failed account=%s status=%d error=\"%s\"",
                  tern_log_q(qu, sizeof(qu), r->out.account), sr->status, sr->error);
    tern_store_req_free(sr);
    req_complete(r);
}

/* An account that a backend other than the store knows gets its store
 * account (and so its default mailboxes) at its first login, before the
 * caller hears of the success, so that what it does next (SELECT INBOX)
 * finds them. EEXISTS is the usual answer. Returns true when the request
 * completes from account_created. */
static bool ensure_account(tern_auth_req *r)
{
    tern_auth_client *c = r->priv_.client;
    tern_auth *a = c->auth;
    if (a->store == NULL ||
        (r->op != TERN_AUTH_VERIFY_PASSWORD && r->op != TERN_AUTH_VERIFY_TOKEN &&
         r->op != TERN_AUTH_PROVISION) ||
        r->status != TERN_AUTH_OK ||
        r->out.backend == NULL || strcmp(r->out.backend, "internal") == 0 ||
        strcmp(r->out.backend, tern_auth_static_backend.name) == 0)
        return false;
    if (strchr(r->out.account, '@') == NULL) {
        char qu[128];
        TLOG_INFO("auth", "event=account_not_created account=%s backend=%s why=\"no domain\"",
                  tern_log_q(qu, sizeof(qu), r->out.account), r->out.backend);
        return false;
    }
    if (provisioned_check(a->prov, r->out.account, false))
        return false;
    if (c->store_client == NULL &&
        (c->store_client = tern_store_client_new(a->store, c->loop)) == NULL)
        return false;
    tern_store_req *sr = tern_store_req_new(TERN_STORE_ACCOUNT_CREATE, account_created, r);
    if (sr == NULL)
        return false;
    sr->in.account = r->out.account;
    sr->in.password_hash = NULL; /* the password stays with the backend that knows it */
    char qu[128];
    TLOG_DEBUG("auth", "event=account_ensure account=%s backend=%s",
               tern_log_q(qu, sizeof(qu), r->out.account), r->out.backend);
    if (tern_store_submit(c->store_client, sr) != 0) {
        tern_store_req_free(sr);
        return false;
    }
    return true;
}

static void answer(tern_auth_req *r);

/* A backend asked a server about the token (verify_token_async). */
static void token_async_done(tern_auth_req *r, char *account)
{
    tern_auth *a = r->priv_.client->auth;
    if (r->status == TERN_AUTH_OK && account != NULL) {
        r->priv_.found = true;
        r->out.account = account;
        r->out.backend = a->backends[r->priv_.backend].ops->name;
    } else if (r->status == TERN_AUTH_OK || r->status == TERN_AUTH__ASYNC) {
        r->status = TERN_AUTH_ETEMP;
    }
    answer(r);
}

static void after_work(uv_work_t *w, int status)
{
    tern_auth_req *r = w->data;
    if (status != 0 && (r->status == TERN_AUTH_OK || r->status == TERN_AUTH__ASYNC))
        r->status = TERN_AUTH_ETEMP;
    if (r->op == TERN_AUTH_VERIFY_TOKEN && r->status == TERN_AUTH__ASYNC) {
        tern_auth_client *c = r->priv_.client;
        const backend *b = &c->auth->backends[r->priv_.backend];
        b->ops->verify_token_async(b->state, c->loop, r, token_async_done);
        return;
    }
    answer(r);
}

/* Logs the outcome, feeds the limiter, provisions, and calls back. */
static void answer(tern_auth_req *r)
{
    tern_auth_client *c = r->priv_.client;
    tern_auth *a = c->auth;
    if (r->op == TERN_AUTH_VERIFY_PASSWORD || r->op == TERN_AUTH_VERIFY_TOKEN) {
        char qu[128];
        const char *svc = r->in.service ? r->in.service : "-";
        const char *ip = r->in.remote_ip ? r->in.remote_ip : "-";
        if (r->status == TERN_AUTH_OK) {
            tern_auth_limiter_success(a, r->in.remote_ip, r->priv_.user);
            TLOG_INFO("auth", "event=auth_ok service=%s ip=%s account=%s backend=%s", svc, ip,
                      tern_log_q(qu, sizeof(qu), r->out.account), r->out.backend);
        } else if (r->status == TERN_AUTH_EFAIL || r->status == TERN_AUTH_ELOCKED) {
            if (r->status == TERN_AUTH_EFAIL)
                r->out.delay_ms =
                    tern_auth_limiter_failure(a, r->in.remote_ip,
                                              r->priv_.user[0] ? r->priv_.user : NULL, now_ms());
            else
                r->out.delay_ms = a->limits.max_delay_ms;
            /* The account is only named once a backend knows it: a log
             * full of guessed names helps no one. */
            TLOG_INFO("auth", "event=auth_failed service=%s ip=%s user=%s known=%s locked=%s "
                              "delay_ms=%llu%s%s",
                      svc, ip, tern_log_q(qu, sizeof(qu), r->priv_.user),
                      r->priv_.found ? "yes" : "no", r->status == TERN_AUTH_ELOCKED ? "yes" : "no",
                      (unsigned long long)r->out.delay_ms, r->error[0] ? " error=" : "",
                      r->error[0] ? r->error : "");
            r->out.account = NULL;
            r->out.backend = NULL;
        } else {
            atomic_fetch_add(&atomic_load(&a->lim)->n_errors, 1);
            TLOG_WARN("auth", "event=auth_error service=%s ip=%s status=%d error=\"%s\"", svc, ip,
                      r->status, r->error);
        }
    }
    if (!ensure_account(r))
        req_complete(r);
}

/* ---- sync ------------------------------------------------------------------- */

static void sync_done(tern_auth_req *r)
{
    *(bool *)r->data = true;
}

int tern_auth_run_sync(tern_auth *a, tern_auth_req *r)
{
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0)
        return req_fail(r, TERN_AUTH_ETEMP, "cannot create a loop");
    tern_auth_client *c = tern_auth_client_new(a, &loop);
    if (c == NULL) {
        uv_loop_close(&loop);
        return req_fail(r, TERN_AUTH_ETEMP, "out of memory");
    }
    bool done = false;
    tern_auth_cb saved_cb = r->cb;
    void *saved_data = r->data;
    r->cb = sync_done;
    r->data = &done;
    if (tern_auth_submit(c, r) == 0)
        while (!done)
            uv_run(&loop, UV_RUN_ONCE);
    r->cb = saved_cb;
    r->data = saved_data;
    tern_auth_client_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return r->status;
}
