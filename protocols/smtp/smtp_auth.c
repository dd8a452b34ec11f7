/* SMTP AUTH (RFC 4954) for the SMTP session: which SASL mechanisms a
 * session offers, the exchange driven through auth/sasl's state machines,
 * the credential checks handed to auth/ (asynchronously), the limiter's
 * delays, and EXTERNAL from a verified client certificate. Input: the
 * client's base64 lines (untrusted), the session's config snapshot. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/base64.h"
#include "lib/log.h"
#include "lib/util.h"
#include "protocols/common/sasl_server.h"
#include "protocols/smtp/smtp_session_int.h"

/* --- AUTH (RFC 4954) ---------------------------------------------------- */

/* The account a verified client certificate names (sasl_server.h). */
bool smtp__cert_account(const smtp_session *s, char *out, size_t size)
{
    return tern_sasl_srv_cert_account(&s->conn, out, size);
}

/* What the session may offer: nothing once authenticated or where the
 * listener takes no credentials; otherwise what sasl_server.h offers
 * (the backends' capabilities, nothing before TLS unless
 * allow_plaintext_auth). */
int smtp__auth_mechs(const struct smtp_session *s, char *buf, size_t size)
{
    buf[0] = '\0';
    if (!s->lc->auth || s->auth == NULL || s->auth_user != NULL)
        return 0;
    char acct[TERN_AUTH_MAX_USER + 1];
    tern_sasl_srv_params p = {
        .service = "smtp",
        .tls_active = tern_conn_is_tls(&s->conn),
        .allow_plaintext = s->lc->allow_plaintext_auth,
        .cert_account = smtp__cert_account(s, acct, sizeof(acct)) ? acct : NULL,
    };
    tern_sasl_srv_channel_binding(&s->conn, &p);
    return tern_sasl_srv_mechs(s->auth, &p, buf, size);
}

static bool smtp__mech_offered(const smtp_session *s, const char *mech)
{
    char list[256];
    if (smtp__auth_mechs(s, list, sizeof(list)) <= 0)
        return false;
    size_t n = strlen(mech);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ' ');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == n && strncasecmp(p, mech, n) == 0)
            return true;
        p += l;
        if (*p == ' ')
            p++;
    }
    return false;
}

static void smtp__auth_end(smtp_session *s)
{
    tern_sasl_free(s->sasl);
    s->sasl = NULL;
    if (s->state == ST_AUTH)
        s->state = ST_READY;
    tern_smtp_line_init(&s->lr, s->linebuf, s->cfg->smtp.max_command_line);
    free(s->auth_line);
    s->auth_line = NULL;
}

typedef struct auth_delay {
    smtp_session *s;
    char reply[128];
} auth_delay;

void smtp__delay_closed(uv_handle_t *h)
{
    smtp_session *s = h->data;
    free(h);
    s->pending--;
    smtp__maybe_free(s);
}

static void smtp__delay_fired(uv_timer_t *t)
{
    smtp_session *s = t->data;
    auth_delay *d = (auth_delay *)(t + 1);
    s->delay_timer = NULL;
    uv_close((uv_handle_t *)t, smtp__delay_closed);
    if (s->conn_closed || s->state == ST_CLOSED)
        return;
    smtp__reply(s, "%s", d->reply);
    smtp__continue(s);
}

/* A failed exchange answers late, by the limiter's delay, so guessing
 * passwords over one connection is slow; input waits meanwhile. */
void smtp__auth_fail(smtp_session *s, uint64_t delay_ms, const char *reply)
{
    smtp__auth_end(s);
    s->errors++;
    if (delay_ms == 0) {
        smtp__reply(s, "%s", reply);
        return;
    }
    uv_timer_t *t = malloc(sizeof(uv_timer_t) + sizeof(auth_delay));
    if (t == NULL || uv_timer_init(s->base.host->loop, t) != 0) {
        free(t);
        smtp__reply(s, "%s", reply);
        return;
    }
    auth_delay *d = (auth_delay *)(t + 1);
    snprintf(d->reply, sizeof(d->reply), "%s", reply);
    t->data = s;
    s->delay_timer = t;
    s->pending++;
    tern_conn_pause(&s->conn);
    uv_timer_start(t, smtp__delay_fired, delay_ms, 0);
}

static void smtp__sasl_result(smtp_session *s, tern_sasl_result *r);

/* A backend could not answer (store or directory down): 454, try later. */
static void smtp__auth_tempfail(smtp_session *s, tern_auth_req *q)
{
    tern_auth_req_free(q);
    smtp__auth_fail(s, 0, "454 4.7.0 Temporary authentication failure");
    smtp__continue(s);
}

static void smtp__auth_done(tern_auth_req *q)
{
    smtp_session *s = q->data;
    s->pending--;
    s->auth_pending = false;
    if (s->conn_closed || s->sasl == NULL) {
        tern_auth_req_free(q);
        smtp__maybe_free(s);
        return;
    }
    tern_sasl_result r;
    const char *ip = s->conn.peer_ip;
    switch (q->op) {
    case TERN_AUTH_VERIFY_PASSWORD:
        if (q->status == TERN_AUTH_OK) {
            s->auth_static = q->out.backend && strcmp(q->out.backend, "static") == 0;
            tern_sasl_verified(s->sasl, true, q->out.account, &r);
        } else if (q->status == TERN_AUTH_EFAIL) {
            uint64_t delay = q->out.delay_ms;
            tern_auth_req_free(q);
            TLOG_WARN(MOD, "event=auth_failed session=%s ip=%s mech=%s reason=bad_credentials",
                      s->base.id, ip, s->auth_mech);
            smtp__auth_fail(s, delay, "535 5.7.8 Authentication credentials invalid");
            smtp__continue(s);
            return;
        } else {
            TLOG_WARN(MOD, "event=auth_failed session=%s ip=%s mech=%s reason=%s error=\"%s\"",
                      s->base.id, ip, s->auth_mech, tern_auth_strerror(q->status), q->error);
            smtp__auth_tempfail(s, q);
            return;
        }
        break;
    case TERN_AUTH_GET_SCRAM_KEYS:
        if (q->status == TERN_AUTH_OK || q->status == TERN_AUTH_ENOTFOUND ||
            q->status == TERN_AUTH_EUNAVAIL) {
            /* Unknown users come back with stable fake keys: the exchange
             * runs to its end and fails there, telling nothing. */
            tern_sasl_scram_keys(s->sasl, &q->out.scram,
                                 q->status == TERN_AUTH_OK ? q->out.account : NULL, &r);
        } else {
            smtp__auth_tempfail(s, q);
            return;
        }
        break;
    case TERN_AUTH_VERIFY_TOKEN:
        if (q->status == TERN_AUTH_OK || q->status == TERN_AUTH_EFAIL ||
            q->status == TERN_AUTH_EINVAL) {
            /* A refused token may first get RFC 7628's error challenge:
             * the delay waits for the final failure. */
            s->auth_fail_delay_ms = q->status == TERN_AUTH_OK ? 0 : q->out.delay_ms;
            tern_sasl_verified(s->sasl, q->status == TERN_AUTH_OK, q->out.account, &r);
        } else {
            smtp__auth_tempfail(s, q);
            return;
        }
        break;
    case TERN_AUTH_GET_SECRET:
        if (q->status == TERN_AUTH_OK || q->status == TERN_AUTH_ENOTFOUND ||
            q->status == TERN_AUTH_EUNAVAIL) {
            /* Unknown user or no secret: the digest cannot match, and the
             * answer is the same 535 as a wrong one. */
            tern_sasl_cram_context(s->sasl, q->status == TERN_AUTH_OK ? q->out.cram_md5 : NULL,
                                   q->status == TERN_AUTH_OK ? q->out.account : NULL, &r);
        } else {
            smtp__auth_tempfail(s, q);
            return;
        }
        break;
    case TERN_AUTH_USER_EXISTS:
        if (q->status == TERN_AUTH_OK || q->status == TERN_AUTH_ENOTFOUND) {
            tern_sasl_verified(s->sasl, q->status == TERN_AUTH_OK, q->out.account, &r);
        } else {
            smtp__auth_tempfail(s, q);
            return;
        }
        break;
    default:
        smtp__auth_tempfail(s, q);
        return;
    }
    smtp__sasl_result(s, &r);
    tern_auth_req_free(q);
    smtp__continue(s);
}

static void smtp__auth_ask(smtp_session *s, tern_auth_op op, const tern_sasl_result *r)
{
    if (s->auth_client == NULL)
        s->auth_client = tern_auth_client_new(s->auth, s->base.host->loop);
    tern_auth_req *q = s->auth_client ? tern_auth_req_new(op, smtp__auth_done, s) : NULL;
    if (q == NULL) {
        smtp__auth_fail(s, 0, "454 4.7.0 Temporary authentication failure");
        return;
    }
    q->in.service = "smtp";
    q->in.user = r->authcid;
    q->in.password = (const char *)r->password;
    q->in.password_len = r->password_len;
    q->in.remote_ip = s->conn.peer_ip;
    q->in.listener = s->lc->name; /* a listener's fixed login (auth_static) */
    if (op == TERN_AUTH_VERIFY_TOKEN) {
        q->in.user = r->authzid && r->authzid[0] ? r->authzid : NULL;
        q->in.token = r->token;
        q->in.token_len = r->token ? strlen(r->token) : 0;
    }
    int rc = tern_auth_submit(s->auth_client, q);
    if (rc != 0) {
        tern_auth_req_free(q);
        /* EINVAL: a name or password past auth/'s bounds: no account can
         * have it, so it is a wrong credential, not a server problem. */
        smtp__auth_fail(s, 0, rc == TERN_AUTH_EINVAL ? "535 5.7.8 Authentication credentials invalid"
                                                     : "454 4.7.0 Temporary authentication failure");
        return;
    }
    s->pending++;
    s->auth_pending = true;
    tern_conn_pause(&s->conn);
}

static void smtp__sasl_result(smtp_session *s, tern_sasl_result *r)
{
    const char *ip = s->conn.peer_ip;
    switch (r->status) {
    case TERN_SASL_CHALLENGE: {
        size_t cap = (r->data_len + 2) / 3 * 4 + 1;
        char *b64 = malloc(cap);
        if (b64 == NULL || tern_base64_encode(r->data, r->data_len, b64, cap) < 0) {
            free(b64);
            smtp__auth_fail(s, 0, "454 4.7.0 Temporary authentication failure");
            return;
        }
        tern_conn_printf(&s->conn, "334 %s\r\n", b64);
        free(b64);
        return;
    }
    case TERN_SASL_NEED_VERIFY_PASSWORD:
        smtp__auth_ask(s, TERN_AUTH_VERIFY_PASSWORD, r);
        return;
    case TERN_SASL_NEED_SCRAM_KEYS:
        if (tern_auth_limiter_check(s->auth, ip, r->authcid, tern_now_ms()) != 0) {
            smtp__auth_fail(s, 0, "454 4.7.0 Temporary authentication failure");
            return;
        }
        smtp__auth_ask(s, TERN_AUTH_GET_SCRAM_KEYS, r);
        return;
    case TERN_SASL_NEED_VERIFY_TOKEN:
        smtp__auth_ask(s, TERN_AUTH_VERIFY_TOKEN, r);
        return;
    case TERN_SASL_NEED_CRAM_SECRET:
        if (tern_auth_limiter_check(s->auth, ip, r->authcid, tern_now_ms()) != 0) {
            smtp__auth_fail(s, 0, "454 4.7.0 Temporary authentication failure");
            return;
        }
        smtp__auth_ask(s, TERN_AUTH_GET_SECRET, r);
        return;
    case TERN_SASL_NEED_EXTERNAL: {
        /* The certificate names the account; an authzid may only repeat
         * it. The directory must still know the account. */
        char acct[TERN_AUTH_MAX_USER + 1];
        if (!smtp__cert_account(s, acct, sizeof(acct)) ||
            (r->authzid && r->authzid[0] && strcasecmp(r->authzid, acct) != 0)) {
            tern_sasl_result f;
            tern_sasl_verified(s->sasl, false, NULL, &f);
            smtp__sasl_result(s, &f);
            return;
        }
        tern_sasl_result q = *r;
        q.authcid = acct;
        smtp__auth_ask(s, TERN_AUTH_USER_EXISTS, &q);
        return;
    }
    case TERN_SASL_SUCCESS:
        free(s->auth_user);
        s->auth_user = strdup(r->account ? r->account : "");
        /* Mechanisms verified here rather than by VERIFY_PASSWORD keep
         * the limiter's books themselves. */
        if (strcasecmp(s->auth_mech, "SCRAM-SHA-256") == 0 || strcasecmp(s->auth_mech, "CRAM-MD5") == 0)
            tern_auth_limiter_success(s->auth, ip, s->auth_user);
        TLOG_INFO(MOD, "event=auth session=%s ip=%s mech=%s account=%s", s->base.id, ip,
                  s->auth_mech, s->auth_user ? s->auth_user : "?");
        smtp__auth_end(s);
        smtp__reply(s, "235 2.7.0 Authentication successful");
        return;
    case TERN_SASL_FAIL: {
        char q[300];
        TLOG_WARN(MOD, "event=auth_failed session=%s ip=%s mech=%s user=%s reason=%s", s->base.id,
                  ip, s->auth_mech, tern_log_q(q, sizeof(q), r->authcid),
                  tern_sasl_error_name(r->error));
        if (r->error == TERN_SASL_EABORTED) {
            smtp__auth_fail(s, 0, "501 5.0.0 Authentication aborted");
        } else if (r->error == TERN_SASL_EMALFORMED || r->error == TERN_SASL_ETOOLONG) {
            smtp__auth_fail(s, 0, "501 5.5.2 Cannot decode the response");
        } else {
            uint64_t delay = s->auth_fail_delay_ms;
            s->auth_fail_delay_ms = 0;
            if (strcasecmp(s->auth_mech, "SCRAM-SHA-256") == 0 ||
                strcasecmp(s->auth_mech, "CRAM-MD5") == 0)
                delay = tern_auth_limiter_failure(s->auth, ip, r->authcid && r->authcid[0]
                                                                   ? r->authcid : NULL,
                                                  tern_now_ms());
            smtp__auth_fail(s, delay, "535 5.7.8 Authentication credentials invalid");
        }
        return;
    }
    default:
        /* Tokens and certificates have no backend yet; never offered. */
        smtp__auth_fail(s, 0, "535 5.7.8 Authentication credentials invalid");
        return;
    }
}

/* One client line while in ST_AUTH: base64, "*", or "" (empty). */
void smtp__auth_response(smtp_session *s, const char *line, size_t len)
{
    uint8_t *dec = malloc(AUTH_LINE_MAX);
    size_t n = 0;
    if (dec == NULL) {
        smtp__auth_fail(s, 0, "454 4.7.0 Temporary authentication failure");
        return;
    }
    tern_sasl_result r;
    switch (tern_sasl_decode_response(line, len, false, dec, AUTH_LINE_MAX, &n)) {
    case TERN_SASL_RESP_OK:
        tern_sasl_step(s->sasl, dec, n, &r);
        smtp__sasl_result(s, &r);
        break;
    case TERN_SASL_RESP_ABORT:
        tern_sasl_abort(s->sasl, &r);
        smtp__sasl_result(s, &r);
        break;
    default:
        smtp__auth_fail(s, 0, "501 5.5.2 Cannot decode the response");
        break;
    }
    free(dec);
}

void smtp__cmd_auth(smtp_session *s, const tern_smtp_cmd *cmd)
{
    if (s->state == ST_INIT) {
        smtp__reply(s, "503 5.5.1 Send EHLO first");
        smtp__error(s);
        return;
    }
    if (s->auth_user) {
        smtp__reply(s, "503 5.5.1 Already authenticated");
        smtp__error(s);
        return;
    }
    tern_smtp_slice mech, initial;
    if (tern_smtp_parse_auth(cmd->args.p, cmd->args.len, &mech, &initial) != 0 ||
        mech.len >= sizeof(s->auth_mech)) {
        smtp__reply(s, "501 5.5.4 Syntax: AUTH mechanism [initial-response]");
        smtp__error(s);
        return;
    }
    memcpy(s->auth_mech, mech.p, mech.len);
    s->auth_mech[mech.len] = '\0';
    for (char *p = s->auth_mech; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    if (!smtp__mech_offered(s, s->auth_mech)) {
        bool any = s->lc->auth && s->auth != NULL;
        smtp__reply(s, any && !tern_conn_is_tls(&s->conn) && !s->lc->allow_plaintext_auth
                           ? "538 5.7.11 Encryption required for requested authentication mechanism"
                           : "504 5.5.4 Unrecognized authentication type");
        smtp__error(s);
        return;
    }
    if (tern_auth_limiter_check(s->auth, s->conn.peer_ip, NULL, tern_now_ms()) != 0) {
        TLOG_WARN(MOD, "event=auth_refused session=%s ip=%s reason=lockout", s->base.id,
                  s->conn.peer_ip);
        smtp__reply(s, "454 4.7.0 Temporary authentication failure, try again later");
        return;
    }
    char cert_acct[TERN_AUTH_MAX_USER + 1];
    uint8_t cb[TERN_SASL_CB_MAX];
    size_t cb_len = tern_conn_is_tls(&s->conn) ? tern_tls_conn_tls_unique(s->conn.tls, cb,
                                                                          sizeof(cb))
                                               : 0;
    tern_sasl_params sp = {
        .service = "smtp",
        .hostname = s->cfg->server.hostname,
        .external_available = smtp__cert_account(s, cert_acct, sizeof(cert_acct)),
        .success_data = false, /* SMTP has no data with 235: SCRAM's v= comes as a 334 */
        .cb_type = cb_len ? "tls-unique" : NULL,
        .cb_data = cb_len ? cb : NULL,
        .cb_len = cb_len,
    };
    s->sasl = tern_sasl_new(s->auth_mech, &sp);
    s->auth_line = malloc(AUTH_LINE_MAX);
    if (s->sasl == NULL || s->auth_line == NULL) {
        smtp__auth_end(s);
        smtp__reply(s, "454 4.7.0 Temporary authentication failure");
        return;
    }
    s->state = ST_AUTH;
    /* Responses may be far longer than a command line. The reader holds no
     * partial line here: it has just returned the AUTH line. */
    tern_smtp_line_init(&s->lr, s->auth_line, AUTH_LINE_MAX);
    tern_sasl_result r;
    if (initial.len == 0) {
        tern_sasl_step(s->sasl, NULL, 0, &r);
        smtp__sasl_result(s, &r);
        return;
    }
    uint8_t *dec = malloc(AUTH_LINE_MAX);
    size_t n = 0;
    if (dec == NULL) {
        smtp__auth_fail(s, 0, "454 4.7.0 Temporary authentication failure");
        return;
    }
    tern_sasl_resp rr = tern_sasl_decode_response(initial.p, initial.len, true, dec, AUTH_LINE_MAX, &n);
    if (rr == TERN_SASL_RESP_OK) {
        tern_sasl_step(s->sasl, dec, n, &r);
        smtp__sasl_result(s, &r);
    } else if (rr == TERN_SASL_RESP_ABORT) {
        smtp__auth_fail(s, 0, "501 5.0.0 Authentication aborted");
    } else {
        smtp__auth_fail(s, 0, "501 5.5.2 Cannot decode the initial response");
    }
    free(dec);
}

