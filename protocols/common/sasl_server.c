/* The protocol-independent SASL server driver (see sasl_server.h): runs
 * auth/sasl's mechanisms, asks auth/ on the caller's loop, applies the
 * login limiter, and reports results the protocol frames itself.
 * Input: client response lines (untrusted, base64, bounded by
 * TERN_SASL_SRV_LINE_MAX); the session's parameters (trusted). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <mbedtls/md5.h>

#include "auth/sasl/sasl.h"
#include "lib/base64.h"
#include "lib/log.h"
#include "lib/util.h"
#include "protocols/common/sasl_server.h"

#define MOD "sasl"

struct tern_sasl_srv {
    tern_auth *auth;
    uv_loop_t *loop;
    tern_auth_client *client;  /* created at the first backend request */
    tern_sasl_srv_cb cb;
    void *data;
    tern_sasl *sasl;           /* the exchange in progress, or NULL */
    /* Copies of the start parameters: the exchange outlives the call. */
    char service[16];
    char ip[64];
    char sid[64];
    const char *listener;      /* the config snapshot's, which the session holds */
    char cert[TERN_AUTH_MAX_USER + 1];
    bool has_cert;
    char mech[32];
    bool active;               /* lines are responses */
    bool password_only;        /* USER/PASS or LOGIN, not a SASL exchange */
    bool apop;                 /* APOP: the GET_SECRET answer is checked here */
    char apop_challenge[256];
    char apop_digest[33];
    char apop_user[TERN_AUTH_MAX_USER + 1];
    bool dead;                 /* freed by the owner; goes when nothing is outstanding */
    unsigned pending;          /* backend request or delay timer outstanding */
    unsigned closing;          /* delay timers whose handle is still closing */
    unsigned in_cb;
    uint64_t fail_delay_ms;    /* from a refused token, applied at the final failure */
    char *out;                 /* the last base64 data handed out */
    char account[TERN_AUTH_MAX_USER + 1];
    char backend[32];
    /* The account was verified here (SCRAM, CRAM-MD5, APOP, EXTERNAL) and
     * a backend other than the store knows it: auth/ makes its store
     * account before the success is told (TERN_AUTH_PROVISION). */
    bool provision;
    const char *success_data;  /* s->out or NULL, held while provisioning */
    uv_timer_t reaper;         /* the last free runs from the loop, see srv_maybe_free */
};

/* --- offering ------------------------------------------------------------ */

bool tern_sasl_srv_cert_account(const tern_conn *c, char *out, size_t size)
{
    if (!tern_conn_is_tls(c) || !tern_tls_conn_peer_verified(c->tls))
        return false;
    const char *dn = tern_tls_conn_peer_subject(c->tls);
    const char *cn = NULL;
    for (const char *p = dn; p && *p; p++)
        if ((p == dn || p[-1] == ' ' || p[-1] == ',') && strncmp(p, "CN=", 3) == 0)
            cn = p + 3;
    if (cn == NULL)
        return false;
    size_t n = strcspn(cn, ",");
    if (n == 0 || n >= size)
        return false;
    for (size_t i = 0; i < n; i++)
        out[i] = (char)tolower((unsigned char)cn[i]);
    out[n] = '\0';
    return strchr(out, '@') != NULL;
}

void tern_sasl_srv_channel_binding(const tern_conn *c, tern_sasl_srv_params *p)
{
    p->cb_len = tern_conn_is_tls(c) ? tern_tls_conn_tls_unique(c->tls, p->cb, sizeof(p->cb)) : 0;
}

int tern_sasl_srv_mechs(const tern_auth *auth, const tern_sasl_srv_params *p, char *buf,
                        size_t size)
{
    if (size == 0)
        return -1;
    buf[0] = '\0';
    if (auth == NULL)
        return 0;
    /* Nothing before TLS (unless allowed): even SCRAM, which hides the
     * password, shows the user name and then the mail in the clear. */
    if (!p->tls_active && !p->allow_plaintext)
        return 0;
    unsigned caps = 0, ac = tern_auth_capabilities(auth);
    if (ac & TERN_AUTH_CAP_PASSWORD)
        caps |= TERN_SASL_CAP_PASSWORD;
    if (ac & TERN_AUTH_CAP_SCRAM_SHA_256)
        caps |= TERN_SASL_CAP_SCRAM;
    if (ac & TERN_AUTH_CAP_TOKEN)
        caps |= TERN_SASL_CAP_TOKEN;
    if (ac & TERN_AUTH_CAP_CRAM_MD5)
        caps |= TERN_SASL_CAP_CRAM;
    if (p->cert_account && p->cert_account[0])
        caps |= TERN_SASL_CAP_EXTERNAL;
    return tern_sasl_mechanisms(caps, p->tls_active, p->allow_plaintext, p->cb_len > 0, buf,
                                size);
}

bool tern_sasl_srv_password_allowed(const tern_auth *auth, const tern_sasl_srv_params *p)
{
    return auth != NULL && (p->tls_active || p->allow_plaintext) &&
           (tern_auth_capabilities(auth) & TERN_AUTH_CAP_PASSWORD);
}

static bool mech_offered(const tern_auth *auth, const tern_sasl_srv_params *p, const char *mech)
{
    char list[512];
    if (tern_sasl_srv_mechs(auth, p, list, sizeof(list)) <= 0)
        return false;
    size_t n = strlen(mech);
    for (const char *q = list; *q;) {
        size_t l = strcspn(q, " ");
        if (l == n && strncasecmp(q, mech, n) == 0)
            return true;
        q += l;
        if (*q == ' ')
            q++;
    }
    return false;
}

/* --- life ---------------------------------------------------------------- */

tern_sasl_srv *tern_sasl_srv_new(tern_auth *auth, uv_loop_t *loop, tern_sasl_srv_cb cb,
                                 void *data)
{
    tern_sasl_srv *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    /* Our own reference: a request may still be out when the session that
     * made us is gone. */
    s->auth = auth ? tern_auth_ref(auth) : NULL;
    s->loop = loop;
    s->cb = cb;
    s->data = data;
    return s;
}

static void srv_destroy(tern_sasl_srv *s)
{
    tern_sasl_free(s->sasl);
    if (s->client)
        tern_auth_client_close(s->client);
    free(s->out);
    if (s->auth)
        tern_auth_unref(s->auth);
    free(s);
}

static void reaper_closed(uv_handle_t *h)
{
    srv_destroy(h->data);
}

static void reaper_fired(uv_timer_t *t)
{
    uv_close((uv_handle_t *)t, reaper_closed);
}

static void srv_maybe_free(tern_sasl_srv *s)
{
    if (!s->dead || s->pending > 0 || s->closing > 0 || s->in_cb > 0)
        return;
    /* The last reference may go inside the auth client's own callback,
     * where closing that client would free it under its caller: with a
     * client, the end comes from the loop. */
    s->closing++; /* never again */
    if (s->client == NULL || uv_timer_init(s->loop, &s->reaper) != 0) {
        srv_destroy(s);
        return;
    }
    s->reaper.data = s;
    uv_timer_start(&s->reaper, reaper_fired, 0, 0);
}

void tern_sasl_srv_free(tern_sasl_srv *s)
{
    if (s == NULL)
        return;
    s->dead = true;
    srv_maybe_free(s);
}

bool tern_sasl_srv_active(const tern_sasl_srv *s)
{
    return s != NULL && s->active;
}

bool tern_sasl_srv_pending(const tern_sasl_srv *s)
{
    return s != NULL && s->pending > 0;
}

/* --- results ------------------------------------------------------------- */

static void srv_end(tern_sasl_srv *s)
{
    tern_sasl_free(s->sasl);
    s->sasl = NULL;
    s->active = false;
    s->password_only = false;
    s->apop = false;
    s->fail_delay_ms = 0;
    s->provision = false;
}

static void deliver(tern_sasl_srv *s, tern_sasl_srv_status st, const char *data)
{
    if (st != TERN_SASL_SRV_CHALLENGE)
        srv_end(s);
    if (s->dead)
        return;
    tern_sasl_srv_result r = {
        .status = st,
        .data = data,
        .account = st == TERN_SASL_SRV_SUCCESS ? s->account : NULL,
        .backend = st == TERN_SASL_SRV_SUCCESS ? s->backend : NULL,
        .mech = s->mech,
    };
    s->in_cb++;
    s->cb(s->data, &r);
    s->in_cb--;
}

typedef struct srv_delay {
    uv_timer_t timer;
    tern_sasl_srv *s;
} srv_delay;

static void delay_closed(uv_handle_t *h)
{
    srv_delay *d = (srv_delay *)h;
    tern_sasl_srv *s = d->s;
    free(d);
    s->closing--;
    srv_maybe_free(s);
}

static void delay_fired(uv_timer_t *t)
{
    srv_delay *d = (srv_delay *)t;
    tern_sasl_srv *s = d->s;
    /* The delay is over: a new exchange may start from the callback
     * while the handle is still closing. */
    s->pending--;
    s->closing++;
    uv_close((uv_handle_t *)t, delay_closed);
    s->in_cb++;
    deliver(s, TERN_SASL_SRV_FAILED, NULL);
    s->in_cb--;
    srv_maybe_free(s);
}

/* A refused credential answers late, by the limiter's delay, so guessing
 * passwords over one connection is slow. */
static void fail_creds(tern_sasl_srv *s, uint64_t delay_ms)
{
    srv_end(s);
    srv_delay *d = delay_ms ? malloc(sizeof(*d)) : NULL;
    if (d == NULL || uv_timer_init(s->loop, &d->timer) != 0) {
        free(d);
        deliver(s, TERN_SASL_SRV_FAILED, NULL);
        return;
    }
    d->s = s;
    s->pending++;
    uv_timer_start(&d->timer, delay_fired, delay_ms, 0);
}

static void sasl_result(tern_sasl_srv *s, const tern_sasl_result *r);

static const char *encode(tern_sasl_srv *s, const uint8_t *data, size_t len)
{
    size_t cap = (len + 2) / 3 * 4 + 1;
    char *b = malloc(cap);
    if (b == NULL || tern_base64_encode(data, len, b, cap) < 0) {
        free(b);
        return NULL;
    }
    free(s->out);
    s->out = b;
    return b;
}

static bool uses_limiter_here(const tern_sasl_srv *s)
{
    /* Mechanisms verified here rather than by VERIFY_PASSWORD or
     * VERIFY_TOKEN keep the limiter's books themselves. */
    return strcasecmp(s->mech, "SCRAM-SHA-256") == 0 || strcasecmp(s->mech, "CRAM-MD5") == 0;
}

/* MD5(challenge secret) in lowercase hex against the client's digest,
 * without an early exit. */
static bool apop_match(const char *challenge, const char *secret, size_t secret_len,
                       const char *digest)
{
    uint8_t md[16];
    mbedtls_md5_context c;
    mbedtls_md5_init(&c);
    int rc = mbedtls_md5_starts_ret(&c);
    if (rc == 0)
        rc = mbedtls_md5_update_ret(&c, (const uint8_t *)challenge, strlen(challenge));
    if (rc == 0)
        rc = mbedtls_md5_update_ret(&c, (const uint8_t *)secret, secret_len);
    if (rc == 0)
        rc = mbedtls_md5_finish_ret(&c, md);
    mbedtls_md5_free(&c);
    if (rc != 0 || strlen(digest) != 32)
        return false;
    static const char hex[] = "0123456789abcdef";
    unsigned diff = 0;
    for (size_t i = 0; i < 16; i++) {
        diff |= (unsigned)(hex[md[i] >> 4] ^ tolower((unsigned char)digest[2 * i]));
        diff |= (unsigned)(hex[md[i] & 15] ^ tolower((unsigned char)digest[2 * i + 1]));
    }
    return diff == 0;
}

static void ask(tern_sasl_srv *s, tern_auth_op op, const char *user, const uint8_t *password,
                size_t password_len, const char *token);

/* After q (a lookup that found the account) said which backend knows it:
 * whether the store must be asked to make the account at login. */
static void note_backend(tern_sasl_srv *s, const tern_auth_req *q)
{
    if (q->status != TERN_AUTH_OK)
        return;
    snprintf(s->backend, sizeof(s->backend), "%s", q->out.backend ? q->out.backend : "");
    s->provision = s->backend[0] && strcmp(s->backend, "internal") != 0 &&
                   strcmp(s->backend, "static") != 0;
}

/* The success, once the store has the account when it needs to. */
static void succeed(tern_sasl_srv *s, const char *data)
{
    if (s->provision) {
        s->provision = false;
        s->success_data = data;
        ask(s, TERN_AUTH_PROVISION, s->account, NULL, 0, NULL);
        return;
    }
    deliver(s, TERN_SASL_SRV_SUCCESS, data);
}

static void apop_check(tern_sasl_srv *s, tern_auth_req *q)
{
    if (q->status != TERN_AUTH_OK && q->status != TERN_AUTH_ENOTFOUND &&
        q->status != TERN_AUTH_EUNAVAIL) {
        deliver(s, TERN_SASL_SRV_TEMPFAIL, NULL);
        return;
    }
    /* Unknown user, no plaintext secret, wrong digest: one answer. */
    bool ok = q->status == TERN_AUTH_OK && q->out.secret != NULL &&
              apop_match(s->apop_challenge, q->out.secret, q->out.secret_len, s->apop_digest);
    if (ok) {
        snprintf(s->account, sizeof(s->account), "%s", q->out.account ? q->out.account : "");
        snprintf(s->backend, sizeof(s->backend), "%s", q->out.backend ? q->out.backend : "");
        tern_auth_limiter_success(s->auth, s->ip, s->account);
        TLOG_INFO(MOD, "event=auth session=%s service=%s ip=%s mech=APOP account=%s", s->sid,
                  s->service, s->ip, s->account);
        note_backend(s, q);
        succeed(s, NULL);
        return;
    }
    char u[300];
    TLOG_WARN(MOD, "event=auth_failed session=%s service=%s ip=%s mech=APOP user=%s "
              "reason=bad_credentials", s->sid, s->service, s->ip,
              tern_log_q(u, sizeof(u), s->apop_user));
    fail_creds(s, tern_auth_limiter_failure(s->auth, s->ip, s->apop_user, tern_now_ms()));
}

static void auth_done(tern_auth_req *q)
{
    tern_sasl_srv *s = q->data;
    s->pending--;
    if (s->dead || (s->sasl == NULL && !s->password_only && !s->apop)) {
        tern_auth_req_free(q);
        srv_maybe_free(s);
        return;
    }
    s->in_cb++;
    tern_sasl_result r;
    bool have = false;
    switch (q->op) {
    case TERN_AUTH_VERIFY_PASSWORD:
        if (q->status == TERN_AUTH_OK) {
            snprintf(s->backend, sizeof(s->backend), "%s", q->out.backend ? q->out.backend : "");
            if (s->password_only) {
                snprintf(s->account, sizeof(s->account), "%s",
                         q->out.account ? q->out.account : "");
                TLOG_INFO(MOD, "event=auth session=%s service=%s ip=%s mech=%s account=%s",
                          s->sid, s->service, s->ip, s->mech, s->account);
                deliver(s, TERN_SASL_SRV_SUCCESS, NULL);
            } else {
                tern_sasl_verified(s->sasl, true, q->out.account, &r);
                have = true;
            }
        } else if (q->status == TERN_AUTH_EFAIL || q->status == TERN_AUTH_ELOCKED) {
            TLOG_WARN(MOD, "event=auth_failed session=%s service=%s ip=%s mech=%s "
                      "reason=bad_credentials", s->sid, s->service, s->ip, s->mech);
            fail_creds(s, q->out.delay_ms);
        } else {
            TLOG_WARN(MOD, "event=auth_failed session=%s service=%s ip=%s mech=%s reason=%s "
                      "error=\"%s\"", s->sid, s->service, s->ip, s->mech,
                      tern_auth_strerror(q->status), q->error);
            deliver(s, TERN_SASL_SRV_TEMPFAIL, NULL);
        }
        break;
    case TERN_AUTH_GET_SCRAM_KEYS:
        if (q->status == TERN_AUTH_OK || q->status == TERN_AUTH_ENOTFOUND ||
            q->status == TERN_AUTH_EUNAVAIL) {
            /* Unknown users come back with stable fake keys: the exchange
             * runs to its end and fails there, telling nothing. */
            note_backend(s, q);
            tern_sasl_scram_keys(s->sasl, &q->out.scram,
                                 q->status == TERN_AUTH_OK ? q->out.account : NULL, &r);
            have = true;
        } else {
            deliver(s, TERN_SASL_SRV_TEMPFAIL, NULL);
        }
        break;
    case TERN_AUTH_VERIFY_TOKEN:
        if (q->status == TERN_AUTH_OK || q->status == TERN_AUTH_EFAIL ||
            q->status == TERN_AUTH_EINVAL || q->status == TERN_AUTH_ELOCKED) {
            /* A refused token may first get RFC 7628's error challenge:
             * the delay waits for the final failure. */
            s->fail_delay_ms = q->status == TERN_AUTH_OK ? 0 : q->out.delay_ms;
            if (q->status == TERN_AUTH_OK)
                snprintf(s->backend, sizeof(s->backend), "%s",
                         q->out.backend ? q->out.backend : "");
            tern_sasl_verified(s->sasl, q->status == TERN_AUTH_OK, q->out.account, &r);
            have = true;
        } else {
            deliver(s, TERN_SASL_SRV_TEMPFAIL, NULL);
        }
        break;
    case TERN_AUTH_GET_SECRET:
        if (s->apop) {
            apop_check(s, q);
            break;
        }
        if (q->status == TERN_AUTH_OK || q->status == TERN_AUTH_ENOTFOUND ||
            q->status == TERN_AUTH_EUNAVAIL) {
            /* Unknown user or no secret: the digest cannot match, and the
             * answer is the same as for a wrong one. */
            note_backend(s, q);
            tern_sasl_cram_context(s->sasl, q->status == TERN_AUTH_OK ? q->out.cram_md5 : NULL,
                                   q->status == TERN_AUTH_OK ? q->out.account : NULL, &r);
            have = true;
        } else {
            deliver(s, TERN_SASL_SRV_TEMPFAIL, NULL);
        }
        break;
    case TERN_AUTH_USER_EXISTS:
        if (q->status == TERN_AUTH_OK || q->status == TERN_AUTH_ENOTFOUND) {
            note_backend(s, q);
            tern_sasl_verified(s->sasl, q->status == TERN_AUTH_OK, q->out.account, &r);
            have = true;
        } else {
            deliver(s, TERN_SASL_SRV_TEMPFAIL, NULL);
        }
        break;
    case TERN_AUTH_PROVISION:
        /* A store that could not make the account was logged by auth/;
         * the login itself stands, as for VERIFY_PASSWORD. */
        deliver(s, TERN_SASL_SRV_SUCCESS, s->success_data);
        break;
    default:
        deliver(s, TERN_SASL_SRV_TEMPFAIL, NULL);
        break;
    }
    if (have)
        sasl_result(s, &r);
    tern_auth_req_free(q);
    s->in_cb--;
    srv_maybe_free(s);
}

static void ask(tern_sasl_srv *s, tern_auth_op op, const char *user, const uint8_t *password,
                size_t password_len, const char *token)
{
    if (s->client == NULL)
        s->client = tern_auth_client_new(s->auth, s->loop);
    tern_auth_req *q = s->client ? tern_auth_req_new(op, auth_done, s) : NULL;
    if (q == NULL) {
        deliver(s, TERN_SASL_SRV_TEMPFAIL, NULL);
        return;
    }
    q->in.service = s->service;
    q->in.user = user;
    q->in.password = (const char *)password;
    q->in.password_len = password_len;
    q->in.remote_ip = s->ip;
    q->in.listener = s->listener;
    q->in.backend = s->backend;
    if (op == TERN_AUTH_VERIFY_TOKEN) {
        q->in.token = token;
        q->in.token_len = token ? strlen(token) : 0;
    }
    int rc = tern_auth_submit(s->client, q);
    if (rc != 0) {
        tern_auth_req_free(q);
        /* EINVAL: a name or password past auth/'s bounds: no account can
         * have it, so it is a wrong credential, not a server problem. */
        if (rc == TERN_AUTH_EINVAL)
            fail_creds(s, 0);
        else
            deliver(s, TERN_SASL_SRV_TEMPFAIL, NULL);
        return;
    }
    s->pending++;
}

static void sasl_result(tern_sasl_srv *s, const tern_sasl_result *r)
{
    switch (r->status) {
    case TERN_SASL_CHALLENGE: {
        const char *b = encode(s, r->data, r->data_len);
        deliver(s, b ? TERN_SASL_SRV_CHALLENGE : TERN_SASL_SRV_TEMPFAIL, b);
        return;
    }
    case TERN_SASL_NEED_VERIFY_PASSWORD:
        ask(s, TERN_AUTH_VERIFY_PASSWORD, r->authcid, r->password, r->password_len, NULL);
        return;
    case TERN_SASL_NEED_SCRAM_KEYS:
    case TERN_SASL_NEED_CRAM_SECRET:
        if (tern_auth_limiter_check(s->auth, s->ip, r->authcid, tern_now_ms()) != 0) {
            TLOG_WARN(MOD, "event=auth_refused session=%s service=%s ip=%s reason=lockout",
                      s->sid, s->service, s->ip);
            deliver(s, TERN_SASL_SRV_TEMPFAIL, NULL);
            return;
        }
        ask(s, r->status == TERN_SASL_NEED_SCRAM_KEYS ? TERN_AUTH_GET_SCRAM_KEYS
                                                      : TERN_AUTH_GET_SECRET,
            r->authcid, NULL, 0, NULL);
        return;
    case TERN_SASL_NEED_VERIFY_TOKEN:
        ask(s, TERN_AUTH_VERIFY_TOKEN, r->authzid && r->authzid[0] ? r->authzid : NULL, NULL, 0,
            r->token);
        return;
    case TERN_SASL_NEED_EXTERNAL: {
        /* The certificate names the account; an authzid may only repeat
         * it. The directory must still know the account. */
        if (!s->has_cert || (r->authzid && r->authzid[0] && strcasecmp(r->authzid, s->cert) != 0)) {
            tern_sasl_result f;
            tern_sasl_verified(s->sasl, false, NULL, &f);
            sasl_result(s, &f);
            return;
        }
        ask(s, TERN_AUTH_USER_EXISTS, s->cert, NULL, 0, NULL);
        return;
    }
    case TERN_SASL_SUCCESS: {
        snprintf(s->account, sizeof(s->account), "%s", r->account ? r->account : "");
        if (uses_limiter_here(s))
            tern_auth_limiter_success(s->auth, s->ip, s->account);
        TLOG_INFO(MOD, "event=auth session=%s service=%s ip=%s mech=%s account=%s", s->sid,
                  s->service, s->ip, s->mech, s->account);
        const char *b = NULL;
        if (r->data_len > 0) {
            b = encode(s, r->data, r->data_len);
            if (b == NULL) {
                deliver(s, TERN_SASL_SRV_TEMPFAIL, NULL);
                return;
            }
        }
        succeed(s, b);
        return;
    }
    case TERN_SASL_FAIL: {
        char q[300];
        TLOG_WARN(MOD, "event=auth_failed session=%s service=%s ip=%s mech=%s user=%s reason=%s",
                  s->sid, s->service, s->ip, s->mech, tern_log_q(q, sizeof(q), r->authcid),
                  tern_sasl_error_name(r->error));
        if (r->error == TERN_SASL_EABORTED) {
            deliver(s, TERN_SASL_SRV_ABORTED, NULL);
        } else if (r->error == TERN_SASL_EMALFORMED || r->error == TERN_SASL_ETOOLONG) {
            deliver(s, TERN_SASL_SRV_MALFORMED, NULL);
        } else if (r->error == TERN_SASL_EINTERNAL) {
            deliver(s, TERN_SASL_SRV_TEMPFAIL, NULL);
        } else {
            uint64_t delay = s->fail_delay_ms;
            if (uses_limiter_here(s))
                delay = tern_auth_limiter_failure(s->auth, s->ip,
                                                  r->authcid && r->authcid[0] ? r->authcid : NULL,
                                                  tern_now_ms());
            fail_creds(s, delay);
        }
        return;
    }
    }
    fail_creds(s, 0);
}

/* --- the exchange ---------------------------------------------------------- */

static void take_params(tern_sasl_srv *s, const tern_sasl_srv_params *p)
{
    snprintf(s->service, sizeof(s->service), "%s", p->service ? p->service : "?");
    snprintf(s->ip, sizeof(s->ip), "%s", p->remote_ip ? p->remote_ip : "");
    snprintf(s->sid, sizeof(s->sid), "%s", p->session_id ? p->session_id : "-");
    s->listener = p->listener;
    s->has_cert = p->cert_account && p->cert_account[0] &&
                  strlen(p->cert_account) < sizeof(s->cert);
    snprintf(s->cert, sizeof(s->cert), "%s", s->has_cert ? p->cert_account : "");
    s->account[0] = s->backend[0] = '\0';
    s->fail_delay_ms = 0;
    s->provision = false;
    s->success_data = NULL;
}

static int srv_start(tern_sasl_srv *s, const tern_sasl_srv_params *p, const char *mech,
                        const char *initial, size_t initial_len)
{
    if (s->active || s->pending > 0)
        return TERN_SASL_SRV_EBUSY;
    if (strlen(mech) >= sizeof(s->mech) || !tern_sasl_mech_known(mech))
        return TERN_SASL_SRV_ENOMECH;
    if (!mech_offered(s->auth, p, mech)) {
        /* Would it be offered over TLS? Then say that, not "unknown". */
        tern_sasl_srv_params tp = *p;
        tp.tls_active = true;
        return !p->tls_active && mech_offered(s->auth, &tp, mech) ? TERN_SASL_SRV_ENEEDTLS
                                                                  : TERN_SASL_SRV_ENOMECH;
    }
    take_params(s, p);
    size_t i;
    for (i = 0; mech[i]; i++)
        s->mech[i] = (char)toupper((unsigned char)mech[i]);
    s->mech[i] = '\0';
    s->active = true;
    if (tern_auth_limiter_check(s->auth, s->ip, NULL, tern_now_ms()) != 0) {
        TLOG_WARN(MOD, "event=auth_refused session=%s service=%s ip=%s reason=lockout", s->sid,
                  s->service, s->ip);
        deliver(s, TERN_SASL_SRV_TEMPFAIL, NULL);
        return 0;
    }
    tern_sasl_params sp = {
        .service = s->service,
        .hostname = p->hostname,
        .external_available = s->has_cert,
        .success_data = p->success_data,
        .cb_type = p->cb_len ? "tls-unique" : NULL,
        .cb_data = p->cb_len ? p->cb : NULL,
        .cb_len = p->cb_len,
    };
    s->sasl = tern_sasl_new(s->mech, &sp);
    if (s->sasl == NULL) {
        deliver(s, TERN_SASL_SRV_TEMPFAIL, NULL);
        return 0;
    }
    tern_sasl_result r;
    if (initial == NULL) {
        tern_sasl_step(s->sasl, NULL, 0, &r);
        sasl_result(s, &r);
        return 0;
    }
    uint8_t *dec = malloc(TERN_SASL_SRV_LINE_MAX);
    size_t n = 0;
    if (dec == NULL) {
        deliver(s, TERN_SASL_SRV_TEMPFAIL, NULL);
        return 0;
    }
    switch (tern_sasl_decode_response(initial, initial_len, true, dec, TERN_SASL_SRV_LINE_MAX,
                                      &n)) {
    case TERN_SASL_RESP_OK:
        tern_sasl_step(s->sasl, dec, n, &r);
        sasl_result(s, &r);
        break;
    case TERN_SASL_RESP_ABORT:
        deliver(s, TERN_SASL_SRV_ABORTED, NULL);
        break;
    default:
        deliver(s, TERN_SASL_SRV_MALFORMED, NULL);
        break;
    }
    free(dec);
    return 0;
}

static void srv_response(tern_sasl_srv *s, const char *line, size_t len)
{
    if (!s->active || s->sasl == NULL || s->pending > 0)
        return;
    uint8_t *dec = malloc(TERN_SASL_SRV_LINE_MAX);
    size_t n = 0;
    if (dec == NULL) {
        deliver(s, TERN_SASL_SRV_TEMPFAIL, NULL);
        return;
    }
    tern_sasl_result r;
    switch (tern_sasl_decode_response(line, len, false, dec, TERN_SASL_SRV_LINE_MAX, &n)) {
    case TERN_SASL_RESP_OK:
        tern_sasl_step(s->sasl, dec, n, &r);
        sasl_result(s, &r);
        break;
    case TERN_SASL_RESP_ABORT:
        tern_sasl_abort(s->sasl, &r);
        sasl_result(s, &r);
        break;
    default:
        deliver(s, TERN_SASL_SRV_MALFORMED, NULL);
        break;
    }
    free(dec);
}

static int srv_password(tern_sasl_srv *s, const tern_sasl_srv_params *p, const char *user,
                           const char *password, size_t password_len)
{
    if (s->active || s->pending > 0)
        return TERN_SASL_SRV_EBUSY;
    take_params(s, p);
    snprintf(s->mech, sizeof(s->mech), "USER");
    s->password_only = true;
    if (tern_auth_limiter_check(s->auth, s->ip, NULL, tern_now_ms()) != 0) {
        TLOG_WARN(MOD, "event=auth_refused session=%s service=%s ip=%s reason=lockout", s->sid,
                  s->service, s->ip);
        deliver(s, TERN_SASL_SRV_TEMPFAIL, NULL);
        return 0;
    }
    ask(s, TERN_AUTH_VERIFY_PASSWORD, user, (const uint8_t *)password, password_len, NULL);
    return 0;
}

static int srv_apop(tern_sasl_srv *s, const tern_sasl_srv_params *p, const char *user,
                    const char *challenge, const char *digest)
{
    if (s->active || s->pending > 0)
        return TERN_SASL_SRV_EBUSY;
    take_params(s, p);
    snprintf(s->mech, sizeof(s->mech), "APOP");
    s->apop = true;
    snprintf(s->apop_challenge, sizeof(s->apop_challenge), "%s", challenge);
    snprintf(s->apop_digest, sizeof(s->apop_digest), "%s", strlen(digest) == 32 ? digest : "");
    snprintf(s->apop_user, sizeof(s->apop_user), "%s", user);
    if (tern_auth_limiter_check(s->auth, s->ip, user, tern_now_ms()) != 0) {
        TLOG_WARN(MOD, "event=auth_refused session=%s service=%s ip=%s reason=lockout", s->sid,
                  s->service, s->ip);
        deliver(s, TERN_SASL_SRV_TEMPFAIL, NULL);
        return 0;
    }
    ask(s, TERN_AUTH_GET_SECRET, s->apop_user, NULL, 0, NULL);
    return 0;
}

int tern_sasl_srv_apop(tern_sasl_srv *s, const tern_sasl_srv_params *p, const char *user,
                       const char *challenge, const char *digest)
{
    s->in_cb++;
    int rc = srv_apop(s, p, user, challenge, digest);
    s->in_cb--;
    srv_maybe_free(s);
    return rc;
}

/* The callback may free the driver; it goes once the call is over. */
int tern_sasl_srv_start(tern_sasl_srv *s, const tern_sasl_srv_params *p, const char *mech,
                        const char *initial, size_t initial_len)
{
    s->in_cb++;
    int rc = srv_start(s, p, mech, initial, initial_len);
    s->in_cb--;
    srv_maybe_free(s);
    return rc;
}

void tern_sasl_srv_response(tern_sasl_srv *s, const char *line, size_t len)
{
    s->in_cb++;
    srv_response(s, line, len);
    s->in_cb--;
    srv_maybe_free(s);
}

int tern_sasl_srv_password(tern_sasl_srv *s, const tern_sasl_srv_params *p, const char *user,
                           const char *password, size_t password_len)
{
    s->in_cb++;
    int rc = srv_password(s, p, user, password, password_len);
    s->in_cb--;
    srv_maybe_free(s);
    return rc;
}
