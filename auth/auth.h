/* auth.h: the one authentication API. SMTP AUTH, IMAP, POP3, JMAP and the
 * SASL mechanisms in auth/sasl/ ask it, and nothing else, whether a
 * credential is good, for the secrets SCRAM and CRAM-MD5 need, and whether
 * an account exists.
 *
 * Model, as store.h: a tern_auth is built from one config snapshot (at
 * start and on every SIGHUP: the file backend reads its file then, so a
 * reload re-reads it and a bad file fails the reload). Requests go through
 * a client bound to the caller's libuv loop; their callbacks run on that
 * loop, never inside tern_auth_submit. Hashing (argon2id, crypt, PBKDF2)
 * runs on libuv's thread pool; the internal backend asks the store
 * asynchronously. Parameters are borrowed until the callback; results live
 * in the request's arena.
 *
 * Backends (auth.backends) are asked in order; the first that knows the
 * user decides. A failure never says whether the user exists: an unknown
 * user costs a dummy argon2id check, and VERIFY_PASSWORD answers EFAIL for
 * both.
 *
 * The login limiter counts failures per remote IP and per account:
 * out.delay_ms says how long the caller should wait before answering a
 * failure (exponential), and past auth.max_failures the IP or account is
 * refused (ELOCKED, to be answered exactly like EFAIL) for auth.lockout.
 *
 * Input trusted: the config (validated); user names and passwords are the
 * client's, bounded (TERN_AUTH_MAX_USER, TERN_HASH_MAX_PASSWORD) and
 * never logged (user names are, quoted). */
#ifndef TERN_AUTH_H
#define TERN_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "auth/hash.h"
#include "conf/config.h"
#include "lib/arena.h"
#include "storage/store.h"

#define TERN_AUTH_OK 0
#define TERN_AUTH_EFAIL (-1)     /* VERIFY_PASSWORD: wrong password or unknown user (same
                                    answer for both, on purpose) */
#define TERN_AUTH_ENOTFOUND (-2) /* USER_EXISTS, GET_*: no backend knows the user */
#define TERN_AUTH_EUNAVAIL (-3)  /* GET_*: the user's backend has no such secret */
#define TERN_AUTH_ELOCKED (-4)   /* the limiter refuses this IP or account for now */
#define TERN_AUTH_ETEMP (-5)     /* a backend is unavailable (store down): try later */
#define TERN_AUTH_EINVAL (-6)    /* missing or over-long parameter */

#define TERN_AUTH_MAX_USER 320 /* local@domain, RFC 5321 sizes */
#define TERN_AUTH_MAX_TOKEN 8192 /* a bearer token (JWT), bytes */

const char *tern_auth_strerror(int status);

/* Credential kinds a backend can serve (CAPABILITIES). */
#define TERN_AUTH_CAP_PASSWORD 0x01  /* PLAIN, LOGIN, USER/PASS: VERIFY_PASSWORD */
#define TERN_AUTH_CAP_SCRAM_SHA_256 0x02 /* GET_SCRAM_KEYS */
#define TERN_AUTH_CAP_CRAM_MD5 0x04  /* GET_SECRET */
#define TERN_AUTH_CAP_TOKEN 0x08     /* OAUTHBEARER, XOAUTH2: VERIFY_TOKEN (a backend such as
                                        oauth2 that checks tokens is configured) */

typedef enum {
    TERN_AUTH_VERIFY_PASSWORD = 1, /* in: service, user, password, remote_ip.
                                      out: account, backend, delay_ms */
    TERN_AUTH_GET_SCRAM_KEYS,      /* in: user. out: account, scram. ENOTFOUND still fills
                                      out.scram with stable fake keys for the user, so a
                                      SCRAM exchange can run to its failure without telling */
    TERN_AUTH_GET_SECRET,          /* in: user. out: account, cram_md5 (CRAM-MD5 context,
                                      from a {PLAIN} or {CRAM-MD5} credential) */
    TERN_AUTH_USER_EXISTS,         /* in: user. out: account, backend. OK or ENOTFOUND */
    TERN_AUTH_VERIFY_TOKEN,        /* in: service, user (the SASL authzid; may be "": then
                                      the token alone names the account), token, remote_ip.
                                      out: account, backend, delay_ms. Asked of the backends
                                      that check tokens; EFAIL for any bad token */
    TERN_AUTH_PROVISION,           /* in: user (an account a mechanism verified outside
                                      auth/: SCRAM, CRAM-MD5, APOP), backend (its
                                      out.backend). Makes sure the store has the account
                                      and its mailboxes, as VERIFY_PASSWORD does for the
                                      accounts it verifies. OK unless the request is bad;
                                      a store failure is logged, not returned */
} tern_auth_op;

typedef struct tern_auth tern_auth;
typedef struct tern_auth_client tern_auth_client;
typedef struct tern_auth_req tern_auth_req;
typedef void (*tern_auth_cb)(tern_auth_req *req);

struct tern_auth_req {
    tern_auth_op op;
    tern_auth_cb cb;
    void *data;             /* the caller's */
    int status;             /* TERN_AUTH_OK or TERN_AUTH_E* */
    char error[256];        /* for the log: backend failures; never says "no such user" to
                               be shown to a client */
    tern_arena arena;

    struct {
        const char *service;    /* "smtp", "imap", "pop3", "jmap": for logs */
        const char *user;       /* as the client gave it */
        const char *password;   /* VERIFY_PASSWORD; need not be NUL-terminated */
        size_t password_len;
        const char *token;      /* VERIFY_TOKEN: the bearer token; need not be NUL-terminated */
        size_t token_len;
        const char *remote_ip;  /* limiter key; NULL: no per-IP accounting */
        const char *backend;    /* PROVISION: the backend that knows the account */
        const char *listener;   /* VERIFY_PASSWORD: the listener's name, or NULL. A listener
                                   with auth_static has its fixed login checked before
                                   auth.backends (backend "static"); a user other than
                                   that one falls through to them as usual */
    } in;

    struct {
        char *account;          /* canonical account name (local@domain) */
        const char *backend;    /* "internal", "file", "static": which one decided */
        uint64_t delay_ms;      /* VERIFY_PASSWORD failure: wait this long before answering */
        tern_scram_keys scram;  /* GET_SCRAM_KEYS */
        uint8_t cram_md5[32];   /* GET_SECRET: the HMAC-MD5 context (tern_hash_cram_md5_digest) */
        const char *secret;     /* GET_SECRET: the plaintext secret when the user has a {PLAIN}
                                   credential, else NULL (POP3 APOP needs it: RFC 1939 7) */
        size_t secret_len;
    } out;

    struct {                /* auth.c's bookkeeping */
        tern_auth_client *client;
        size_t backend;
        char *stored;       /* the deciding backend's credential list */
        bool found;
        uv_work_t work;
        char user[TERN_AUTH_MAX_USER + 1];
    } priv_;
};

/* ---- HTTP for token introspection ---------------------------------------
 * The oauth2 backend's introspection (RFC 7662) posts to an HTTP endpoint.
 * The HTTP client lives in protocols/common (auth/ knows nothing of
 * protocols), so a program that wants introspection hands it in once,
 * before building a tern_auth (ternd does: tern_http_auth_transport).
 * Without one, an introspection config still loads (tools such as ternctl
 * never verify tokens) and a token that needs it fails as ETEMP. */
typedef struct tern_auth_http_answer {
    int ok;                 /* 0: a complete response came; status is set */
    int status;             /* HTTP status */
    const char *body;       /* NUL-terminated */
    size_t body_len;
    bool timed_out;
    const char *why;        /* ok != 0: one line */
} tern_auth_http_answer;
typedef void (*tern_auth_http_cb)(void *arg, const tern_auth_http_answer *a);
typedef struct tern_auth_http {
    /* Blocking (start-up, reload): the trusted CAs from ca_file, or the
     * system bundle when NULL. Shared by every loop's requests. NULL with
     * *error_r (malloc'd). */
    void *(*tls_new)(const char *ca_file, char **error_r);
    void (*tls_free)(void *tls);
    /* A POST on `loop`; cb runs once, on that loop, never inside this
     * call. Returns -1 (cb will not run) when it could not start. */
    int (*post)(uv_loop_t *loop, void *tls, const char *url, const char *const *headers,
                size_t n_headers, const char *body, size_t body_len, uint64_t timeout_ms,
                size_t max_body, tern_auth_http_cb cb, void *arg);
} tern_auth_http;
/* Process-wide; call before the first tern_auth_new. NULL: none. */
void tern_auth_set_http(const tern_auth_http *h);
const tern_auth_http *tern_auth_get_http(void);

/* Builds the backends of cfg->auth (the file backend reads and parses its
 * file here: blocking, call at start-up or reload). `store` may be NULL when
 * no backend needs it (internal does); it must outlive the tern_auth.
 * Returns NULL with *error_r (malloc'd, "file:line: why" for file errors). */
tern_auth *tern_auth_new(const tern_config *cfg, tern_store *store, char **error_r);
/* On reload: the new snapshot takes over the old one's limiter counters, so
 * a SIGHUP does not forgive an attacker. */
void tern_auth_keep_state(tern_auth *next, tern_auth *prev);
tern_auth *tern_auth_ref(tern_auth *a);
void tern_auth_unref(tern_auth *a);

/* CAPABILITIES: the credential kinds that every configured backend can
 * serve for every user it knows (TERN_AUTH_CAP_*): what SASL may offer.
 * Immediate: computed when the snapshot was built. */
unsigned tern_auth_capabilities(const tern_auth *a);

/* One per loop that submits requests; completions run on that loop. */
tern_auth_client *tern_auth_client_new(tern_auth *a, uv_loop_t *loop);
/* Pending requests still complete (callbacks run) before it is freed. */
void tern_auth_client_close(tern_auth_client *c);

tern_auth_req *tern_auth_req_new(tern_auth_op op, tern_auth_cb cb, void *data);
void tern_auth_req_free(tern_auth_req *r);
/* Returns 0 (cb will run) or TERN_AUTH_EINVAL (cb will not run). */
int tern_auth_submit(tern_auth_client *c, tern_auth_req *r);

/* Runs one request on a private loop: for tools and tests. */
int tern_auth_run_sync(tern_auth *a, tern_auth_req *r);

/* The limiter, exposed for tests and the admin API. `now_ms` is monotonic.
 * check: 0, or TERN_AUTH_ELOCKED. failure returns the delay to apply. */
int tern_auth_limiter_check(tern_auth *a, const char *ip, const char *account, uint64_t now_ms);
uint64_t tern_auth_limiter_failure(tern_auth *a, const char *ip, const char *account,
                                   uint64_t now_ms);
void tern_auth_limiter_success(tern_auth *a, const char *ip, const char *account);
size_t tern_auth_limiter_entries(const tern_auth *a);

/* Counters since start (a reload keeps them), for the admin view
 * (`ternctl auth stats`, the control socket's auth.stats). A login is
 * counted once whatever the mechanism: ok and failed as the limiter saw
 * them, refused when a lockout answered instead of a check, errors for
 * temporary failures (a backend down). tracked: addresses and accounts
 * with recent failures; locked_now: those locked out at this moment. */
typedef struct tern_auth_stats {
    uint64_t ok, failed, refused, errors;
    uint64_t lockouts_ip, lockouts_account;
    uint64_t tracked, locked_now;
} tern_auth_stats;
void tern_auth_stats_get(const tern_auth *a, tern_auth_stats *out);

#endif
