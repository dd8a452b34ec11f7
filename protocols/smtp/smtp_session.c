/* The SMTP server session: one state machine per connection, a separate
 * per-transaction struct, and a command table of {verb, allowed states,
 * handler}. Bytes come from the connection stream (protocols/common/conn.c)
 * and are parsed by the pure parsers of smtp_parser.h; nothing here touches
 * the socket or the disk directly. A message is acknowledged (250) only
 * after the spool reports it durable.
 * Input: the client's bytes (untrusted), the config snapshot (validated). */
#include "protocols/smtp/smtp_session.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "lib/arena.h"
#include "lib/log.h"
#include "mailets/engine.h"
#include "lib/net.h"
#include "auth/auth.h"
#include "auth/sasl/sasl.h"
#include "lib/base64.h"
#include "protocols/smtp/smtp_parser.h"

#include "protocols/smtp/smtp_session_int.h"

typedef struct smtp_cmd_def {
    tern_smtp_verb verb;
    unsigned states; /* where the command is allowed */
    void (*handler)(smtp_session *s, const tern_smtp_cmd *cmd);
} smtp_cmd_def;

void smtp__reply(smtp_session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void smtp__process(smtp_session *s);
void smtp__tx_reset(smtp_session *s);
void smtp__goodbye(smtp_session *s, const char *line);

/* --- helpers ---------------------------------------------------------- */

void smtp__reply(smtp_session *s, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line) - 2, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof(line) - 3)
        n = (int)sizeof(line) - 3;
    line[n++] = '\r';
    line[n++] = '\n';
    tern_conn_write(&s->conn, line, (size_t)n);
    if (line[0] >= '4')
        TLOG_INFO(MOD, "event=reply session=%s code=%.3s text=\"%.*s\"", s->base.id, line,
                  n - 6 > 0 ? n - 6 : 0, line + 4);
}

static uint64_t smtp__command_timeout(const smtp_session *s)
{
    uint64_t t = s->lc->timeout_ms;
    if (s->cfg->smtp.command_timeout_ms && s->cfg->smtp.command_timeout_ms < t)
        t = s->cfg->smtp.command_timeout_ms;
    return t;
}

/* Counts a client error; past the limit the session ends. Returns true if
 * the session was closed. */
bool smtp__error(smtp_session *s)
{
    if (++s->errors < s->cfg->smtp.max_errors)
        return false;
    TLOG_WARN(MOD, "event=too_many_errors session=%s ip=%s errors=%u", s->base.id, s->conn.peer_ip,
              s->errors);
    smtp__goodbye(s, "421 4.7.0 Too many errors, closing connection");
    return true;
}

void smtp__goodbye(smtp_session *s, const char *line)
{
    if (s->state == ST_CLOSED)
        return;
    if (line)
        smtp__reply(s, "%s", line);
    s->state = ST_CLOSED;
    tern_conn_close(&s->conn, true);
}

void smtp__maybe_free(smtp_session *s);


/* Input resumes only here, once nothing the session waits for is
 * outstanding: the pause reasons (recipient lookup, body write, spool
 * submit, unsent replies) overlap, and whoever finishes first must not
 * resume for the others. */
void smtp__continue(smtp_session *s);

typedef enum { RCPT_LOCAL, RCPT_REMOTE, RCPT_UNKNOWN, RCPT_TEMPFAIL } rcpt_verdict;
static void smtp__rcpt_finish(smtp_session *s, rcpt_verdict v);
static void smtp__mail_accept(smtp_session *s, bool ok);
static bool smtp__send_as_granted(const tern_smtp_conf *sc, const char *user, const char *from);
static void smtp__sender_looked_up(tern_store_req *r);
static void smtp__rcpt_looked_up(tern_store_req *r);
static bool smtp__rcpt_ask_auth(smtp_session *s);

/* --- greeting and EHLO ------------------------------------------------ */

static void smtp__greet(smtp_session *s)
{
    s->state = ST_INIT;
    tern_conn_set_timeout(&s->conn, s->cfg->smtp.greeting_timeout_ms ? s->cfg->smtp.greeting_timeout_ms
                                                                      : s->lc->timeout_ms);
    if (s->base.host->draining) {
        smtp__goodbye(s, "421 4.3.2 Service shutting down, try again later");
        return;
    }
    smtp__reply(s, "220 %s ESMTP Tern", s->cfg->server.hostname);
}

static void cmd_ehlo(smtp_session *s, const tern_smtp_cmd *cmd)
{
    tern_smtp_slice dom;
    if (tern_smtp_parse_helo(cmd->args.p, cmd->args.len, &dom) != 0) {
        smtp__reply(s, "501 5.5.4 Syntax: %s hostname", cmd->verb == TERN_SMTP_CMD_EHLO ? "EHLO" : "HELO");
        smtp__error(s);
        return;
    }
    size_t n = dom.len < sizeof(s->helo) - 1 ? dom.len : sizeof(s->helo) - 1;
    memcpy(s->helo, dom.p, n);
    s->helo[n] = '\0';
    smtp__tx_reset(s);
    s->state = ST_READY;
    s->esmtp = cmd->verb == TERN_SMTP_CMD_EHLO;
    char q[300];
    TLOG_DEBUG(MOD, "event=helo session=%s helo=%s esmtp=%d", s->base.id,
               tern_log_q(q, sizeof(q), s->helo), s->esmtp);
    if (!s->esmtp) {
        smtp__reply(s, "250 %s", s->cfg->server.hostname);
        return;
    }
    /* One write for the whole multi-line reply: it is one packet. */
    char mechs[256];
    smtp__auth_mechs(s, mechs, sizeof(mechs));
    char buf[1400]; /* hostname, helo, peer and mechanisms at their longest fit */
    int len = snprintf(buf, sizeof(buf),
                       "250-%s Hello %s [%s]\r\n"
                       "250-PIPELINING\r\n"
                       "250-SIZE %llu\r\n"
                       "250-8BITMIME\r\n"
                       "250-SMTPUTF8\r\n"
                       "250-ENHANCEDSTATUSCODES\r\n"
                       "250-CHUNKING\r\n"
                       "%s%s%s%s%s"
                       "250 DSN\r\n",
                       s->cfg->server.hostname, s->helo, s->conn.peer_ip,
                       (unsigned long long)s->max_size,
                       s->lc->tls == TERN_TLS_STARTTLS && !tern_conn_is_tls(&s->conn) && s->tls
                           ? "250-STARTTLS\r\n"
                           : "",
                       /* RFC 8689 2: offered only over TLS. */
                       tern_conn_is_tls(&s->conn) ? "250-REQUIRETLS\r\n" : "",
                       mechs[0] ? "250-AUTH " : "", mechs, mechs[0] ? "\r\n" : "");
    tern_conn_write(&s->conn, buf, (size_t)len);
}

/* --- transaction ------------------------------------------------------ */

void smtp__tx_reset(smtp_session *s)
{
    smtp_tx *tx = &s->tx;
    if (tx->body)
        tern_body_free(tx->body);
    tern_arena_reset(&tx->arena);
    tern_arena a = tx->arena;
    memset(tx, 0, sizeof(*tx));
    tx->arena = a;
    if (s->state & (ST_TX | ST_DATA | ST_BDAT | ST_SUBMIT))
        s->state = ST_READY;
}

static bool smtp__may_relay(const smtp_session *s)
{
    return s->relay_client || s->auth_user != NULL;
}

static void cmd_mail(smtp_session *s, const tern_smtp_cmd *cmd)
{
    if (s->state == ST_INIT) {
        smtp__reply(s, "503 5.5.1 Send EHLO or HELO first");
        smtp__error(s);
        return;
    }
    if (s->draining) {
        smtp__goodbye(s, "421 4.3.2 Service shutting down, try again later");
        return;
    }
    /* Submission (RFC 6409) takes mail only from clients allowed to send as
     * users: authenticated ones, or hosts listed in relay_networks. */
    if (s->lc->protocol == TERN_PROTO_SUBMISSION && !smtp__may_relay(s)) {
        smtp__reply(s, "530 5.7.0 Authentication required");
        smtp__error(s);
        return;
    }
    tern_smtp_mail_args m;
    int r = tern_smtp_parse_mail(cmd->args.p, cmd->args.len, &m);
    if (r == 0 && !s->esmtp &&
        (m.has_size || m.body >= 0 || m.smtputf8 || m.ret || m.envid.len || m.auth.len ||
         m.requiretls))
        r = TERN_SMTP_EPARAM; /* HELO clients get no extensions */
    if (r == 0 && m.body == 2)
        r = TERN_SMTP_EPARAM; /* BINARYMIME is not advertised */
    switch (r) {
    case 0:
        break;
    case TERN_SMTP_EPATH:
        smtp__reply(s, "553 5.1.7 Bad sender address syntax");
        smtp__error(s);
        return;
    case TERN_SMTP_EUTF8:
        smtp__reply(s, "553 5.6.7 Non-ASCII sender address requires SMTPUTF8");
        smtp__error(s);
        return;
    case TERN_SMTP_EPARAM:
        smtp__reply(s, "555 5.5.4 Unsupported or repeated MAIL parameter");
        smtp__error(s);
        return;
    default:
        smtp__reply(s, "501 5.5.4 Syntax: MAIL FROM:<address>");
        smtp__error(s);
        return;
    }
    if (m.requiretls && !tern_conn_is_tls(&s->conn)) {
        /* RFC 8689 4.1: only over TLS (it is not even advertised before). */
        smtp__reply(s, "530 5.7.10 REQUIRETLS needs a TLS connection");
        smtp__error(s);
        return;
    }
    if (m.has_size && m.size > s->max_size) {
        smtp__reply(s, "552 5.3.4 Message size exceeds fixed limit of %llu bytes",
                    (unsigned long long)s->max_size);
        return;
    }
    smtp_tx *tx = &s->tx;
    smtp__tx_reset(s);
    tx->mail = m;
    tx->from = tern_arena_strndup(&tx->arena, m.path.p, m.path.len);
    if (m.envid.len) {
        char dec[128];
        long dl = tern_smtp_xtext_decode(m.envid.p, m.envid.len, dec, sizeof(dec));
        if (dl < 0) {
            smtp__reply(s, "501 5.5.4 Bad ENVID");
            smtp__error(s);
            return;
        }
        tx->envid = tern_arena_strndup(&tx->arena, dec, (size_t)dl);
    }
    tx->started_ms = tern_now_ms();
    /* Submission (RFC 6409 6.1): an authenticated user sends only as an
     * address it owns. */
    /* A listener's fixed login (auth_static) is an ingest identity, not a
     * directory account: it owns no address, and the listener exists to
     * take mail from the device or service that holds it. */
    if (s->lc->protocol == TERN_PROTO_SUBMISSION && s->auth_user != NULL && !s->auth_static) {
        if (tx->from[0] != '\0' && smtp__send_as_granted(&s->cfg->smtp, s->auth_user, tx->from)) {
            char q[600];
            TLOG_INFO(MOD, "event=send_as session=%s account=%s from=%s", s->base.id, s->auth_user,
                      tern_log_q(q, sizeof(q), tx->from));
            smtp__mail_accept(s, true);
            return;
        }
        tern_store_req *lq = s->base.host->store_client
                                 ? tern_store_req_new(TERN_STORE_RCPT_LOOKUP, smtp__sender_looked_up, s)
                                 : NULL;
        if (tx->from[0] == '\0' || lq == NULL) {
            tern_store_req_free(lq);
            smtp__mail_accept(s, false);
            return;
        }
        lq->in.name = tx->from;
        if (tern_store_submit(s->base.host->store_client, lq) != 0) {
            tern_store_req_free(lq);
            smtp__reply(s, "451 4.3.0 Temporary sender lookup failure");
            smtp__tx_reset(s);
            return;
        }
        s->pending++;
        s->lookup_pending = true;
        tern_conn_pause(&s->conn);
        return;
    }
    smtp__mail_accept(s, true);
}

/* smtp.send_as: the grants configured for this login. An exact grant
 * matches the whole address (no +detail: a grant names what it grants);
 * "@domain" matches every address of that domain. Case-insensitive, as
 * the store's own lookup is. */
static bool smtp__send_as_granted(const tern_smtp_conf *sc, const char *user, const char *from)
{
    const char *at = strrchr(from, '@');
    for (size_t i = 0; i < sc->n_send_as; i++) {
        const tern_send_as_conf *g = &sc->send_as[i];
        if (strcasecmp(g->account, user) != 0)
            continue;
        for (size_t k = 0; k < g->n_addresses; k++) {
            const char *a = g->addresses[k];
            if (a[0] == '@' ? at != NULL && strcasecmp(a + 1, at + 1) == 0
                            : strcasecmp(a, from) == 0)
                return true;
        }
    }
    return false;
}

static void smtp__mail_accept(smtp_session *s, bool ok)
{
    smtp_tx *tx = &s->tx;
    char q[600];
    if (!ok) {
        TLOG_WARN(MOD, "event=mail session=%s from=%s result=not_owned account=%s", s->base.id,
                  tern_log_q(q, sizeof(q), tx->from), s->auth_user ? s->auth_user : "-");
        smtp__reply(s, "553 5.7.1 <%s>: Sender address not owned by user %s", tx->from,
                    s->auth_user ? s->auth_user : "");
        smtp__tx_reset(s);
        smtp__error(s);
        return;
    }
    s->state = ST_MAIL;
    TLOG_INFO(MOD, "event=mail session=%s from=%s", s->base.id,
              tern_log_q(q, sizeof(q), tx->from));
    smtp__reply(s, "250 2.1.0 Ok");
}

static void smtp__sender_looked_up(tern_store_req *r)
{
    smtp_session *s = r->data;
    s->pending--;
    s->lookup_pending = false;
    if (s->conn_closed) {
        tern_store_req_free(r);
        smtp__maybe_free(s);
        return;
    }
    if (s->state == ST_CLOSED) {
        tern_store_req_free(r);
        return;
    }
    if (r->status != TERN_STORE_OK) {
        TLOG_WARN(MOD, "event=sender_lookup_failed session=%s error=\"%s: %s\"", s->base.id,
                  tern_store_strerror(r->status), r->error);
        smtp__reply(s, "451 4.3.0 Temporary sender lookup failure");
        smtp__tx_reset(s);
    } else {
        /* The account's own address (with or without +detail), or an
         * alias that delivers to it. A catch-all does not count: it must
         * not let a user send as every address of the domain. */
        const tern_rcpt_result *rr = &r->out.rcpt;
        bool owned = false;
        if (rr->kind == TERN_RCPT_ACCOUNT || (rr->kind == TERN_RCPT_ALIAS && !rr->catch_all))
            for (size_t i = 0; i < rr->n_targets && !owned; i++)
                owned = strcasecmp(rr->targets[i], s->auth_user) == 0;
        smtp__mail_accept(s, owned);
    }
    tern_store_req_free(r);
    smtp__continue(s);
}

static void cmd_rcpt(smtp_session *s, const tern_smtp_cmd *cmd)
{
    if (!(s->state & ST_TX)) {
        smtp__reply(s, "503 5.5.1 Need MAIL before RCPT");
        smtp__error(s);
        return;
    }
    smtp_tx *tx = &s->tx;
    tern_smtp_rcpt_args ra;
    int r = tern_smtp_parse_rcpt(cmd->args.p, cmd->args.len, tx->mail.smtputf8, &ra);
    if (r == 0 && !s->esmtp && (ra.notify || ra.orcpt.len))
        r = TERN_SMTP_EPARAM;
    switch (r) {
    case 0:
        break;
    case TERN_SMTP_EPATH:
        smtp__reply(s, "553 5.1.3 Bad recipient address syntax");
        smtp__error(s);
        return;
    case TERN_SMTP_EUTF8:
        smtp__reply(s, "553 5.6.7 Non-ASCII recipient address requires SMTPUTF8");
        smtp__error(s);
        return;
    case TERN_SMTP_EPARAM:
        smtp__reply(s, "555 5.5.4 Unsupported or repeated RCPT parameter");
        smtp__error(s);
        return;
    default:
        smtp__reply(s, "501 5.5.4 Syntax: RCPT TO:<address>");
        smtp__error(s);
        return;
    }
    if (tx->n_rcpts >= s->cfg->smtp.max_recipients) {
        smtp__reply(s, "452 4.5.3 Too many recipients");
        return;
    }
    char addr[520];
    size_t al = ra.path.len < sizeof(addr) - 1 ? ra.path.len : sizeof(addr) - 1;
    memcpy(addr, ra.path.p, al);
    addr[al] = '\0';
    tern_smtp_slice dom = {0};
    bool bare_postmaster = tern_smtp_mailbox_domain(ra.path.p, ra.path.len, &dom) != 0;
    tx->pending_rcpt.addr = tern_arena_strdup(&tx->arena, addr);
    tx->pending_rcpt.orcpt = ra.orcpt.len ? tern_arena_strndup(&tx->arena, ra.orcpt.p, ra.orcpt.len) : NULL;
    tx->pending_rcpt.notify = ra.notify;
    memset(&tx->pending_hint, 0, sizeof(tx->pending_hint));
    if (tx->pending_rcpt.addr == NULL) {
        smtp__reply(s, "452 4.3.1 Insufficient system resources");
        return;
    }
    /* Only <postmaster> parses without a domain (RFC 5321 4.5.1): ours. */
    if (bare_postmaster) {
        smtp__rcpt_finish(s, RCPT_LOCAL);
        return;
    }
    if (s->base.host->store_client == NULL || dom.p[0] == '[') {
        bool local = dom.p[0] != '[' && tern_config_is_local_domain(s->cfg, dom.p, dom.len);
        smtp__rcpt_finish(s, local ? RCPT_LOCAL : RCPT_REMOTE);
        return;
    }
    /* The directory decides: it knows the configured domains (seeded at
     * start) and those added with ternctl. */
    tern_store_req *lq = tern_store_req_new(TERN_STORE_RCPT_LOOKUP, smtp__rcpt_looked_up, s);
    if (lq == NULL) {
        smtp__reply(s, "451 4.3.0 Temporary recipient lookup failure");
        return;
    }
    lq->in.name = tx->pending_rcpt.addr;
    if (tern_store_submit(s->base.host->store_client, lq) != 0) {
        tern_store_req_free(lq);
        smtp__reply(s, "451 4.3.0 Temporary recipient lookup failure");
        return;
    }
    s->pending++;
    s->lookup_pending = true;
    tern_conn_pause(&s->conn);
}

static void smtp__rcpt_auth_done(tern_auth_req *q)
{
    smtp_session *s = q->data;
    s->pending--;
    s->lookup_pending = false;
    if (s->conn_closed) {
        tern_auth_req_free(q);
        smtp__maybe_free(s);
        return;
    }
    rcpt_verdict v = q->status == TERN_AUTH_OK         ? RCPT_LOCAL
                     : q->status == TERN_AUTH_ENOTFOUND ? RCPT_UNKNOWN
                                                        : RCPT_TEMPFAIL;
    if (v == RCPT_TEMPFAIL)
        TLOG_WARN(MOD, "event=rcpt_lookup_failed session=%s source=auth error=\"%s: %s\"",
                  s->base.id, tern_auth_strerror(q->status), q->error);
    tern_auth_req_free(q);
    if (s->state != ST_CLOSED) {
        smtp__rcpt_finish(s, v);
        smtp__continue(s);
    }
}

/* Asks auth/ whether a backend knows the pending recipient. Returns true
 * when the question is out (the answer finishes the RCPT). */
static bool smtp__rcpt_ask_auth(smtp_session *s)
{
    if (s->auth_client == NULL)
        s->auth_client = tern_auth_client_new(s->auth, s->base.host->loop);
    tern_auth_req *q = s->auth_client
                           ? tern_auth_req_new(TERN_AUTH_USER_EXISTS, smtp__rcpt_auth_done, s)
                           : NULL;
    if (q == NULL)
        return false;
    q->in.service = "smtp";
    q->in.user = s->tx.pending_rcpt.addr;
    if (tern_auth_submit(s->auth_client, q) != 0) {
        tern_auth_req_free(q);
        return false;
    }
    s->pending++;
    s->lookup_pending = true;
    return true;
}

/* The outcome of a recipient lookup, then the relay rule. */
/* Records the pending recipient's directory answer at index n_rcpts. */
static void smtp__keep_hint(smtp_tx *tx)
{
    if (tx->hints_off)
        return;
    if (tx->n_rcpts >= tx->cap_hints) {
        size_t nc = tx->cap_hints ? tx->cap_hints * 2 : 4;
        tern_rcpt_hint *n = tern_arena_alloc(&tx->arena, nc * sizeof(*n));
        if (n == NULL) {
            tx->hints_off = true;
            return;
        }
        if (tx->n_rcpts)
            memcpy(n, tx->hints, tx->n_rcpts * sizeof(*n));
        tx->hints = n;
        tx->cap_hints = nc;
    }
    tx->hints[tx->n_rcpts] = tx->pending_hint;
}

/* Keeps the store's answer for the runner (strings into the tx arena);
 * only the kinds the runner takes as they are. */
static void smtp__save_hint(smtp_tx *tx, const tern_rcpt_result *res)
{
    tern_rcpt_hint *h = &tx->pending_hint;
    memset(h, 0, sizeof(*h));
    if (res->kind != TERN_RCPT_ACCOUNT && res->kind != TERN_RCPT_ALIAS &&
        res->kind != TERN_RCPT_NOT_LOCAL)
        return;
    tern_arena *a = &tx->arena;
    char **t = res->n_targets ? tern_arena_alloc(a, res->n_targets * sizeof(char *)) : NULL;
    if (res->n_targets && t == NULL)
        return;
    for (size_t i = 0; i < res->n_targets; i++)
        if ((t[i] = tern_arena_strdup(a, res->targets[i])) == NULL)
            return;
    char *detail = res->detail ? tern_arena_strdup(a, res->detail) : NULL;
    if (res->detail && detail == NULL)
        return;
    h->res.kind = res->kind;
    h->res.catch_all = res->catch_all;
    h->res.targets = t;
    h->res.n_targets = res->n_targets;
    h->res.detail = detail;
    h->addr = tx->pending_rcpt.addr; /* set last: the hint is whole */
}

static void smtp__rcpt_finish(smtp_session *s, rcpt_verdict v)
{
    smtp_tx *tx = &s->tx;
    tern_spool_rcpt *pr = &tx->pending_rcpt;
    char q[600];
    switch (v) {
    case RCPT_TEMPFAIL:
        smtp__reply(s, "451 4.3.0 <%s>: Temporary recipient lookup failure", pr->addr);
        return;
    case RCPT_UNKNOWN:
        TLOG_INFO(MOD, "event=rcpt session=%s to=%s result=unknown_user", s->base.id,
                  tern_log_q(q, sizeof(q), pr->addr));
        smtp__reply(s, "550 5.1.1 <%s>: Recipient address rejected: user unknown", pr->addr);
        smtp__error(s);
        return;
    case RCPT_REMOTE:
        if (!smtp__may_relay(s)) {
            TLOG_INFO(MOD, "event=rcpt session=%s to=%s result=relay_denied ip=%s", s->base.id,
                      tern_log_q(q, sizeof(q), pr->addr), s->conn.peer_ip);
            smtp__reply(s, "554 5.7.1 <%s>: Relay access denied", pr->addr);
            smtp__error(s);
            return;
        }
        break;
    case RCPT_LOCAL:
        break;
    }
    if (tx->n_rcpts == tx->cap_rcpts) {
        size_t nc = tx->cap_rcpts ? tx->cap_rcpts * 2 : 4;
        tern_spool_rcpt *n = tern_arena_alloc(&tx->arena, nc * sizeof(*n));
        if (n == NULL) {
            smtp__reply(s, "452 4.3.1 Insufficient system resources");
            return;
        }
        if (tx->n_rcpts)
            memcpy(n, tx->rcpts, tx->n_rcpts * sizeof(*n));
        tx->rcpts = n;
        tx->cap_rcpts = nc;
    }
    smtp__keep_hint(tx);
    tx->rcpts[tx->n_rcpts++] = *pr;
    s->state = ST_RCPT;
    TLOG_INFO(MOD, "event=rcpt session=%s to=%s result=ok local=%d", s->base.id,
              tern_log_q(q, sizeof(q), pr->addr), v == RCPT_LOCAL);
    smtp__reply(s, "250 2.1.5 Ok");
}

static void smtp__rcpt_looked_up(tern_store_req *r)
{
    smtp_session *s = r->data;
    s->pending--;
    s->lookup_pending = false;
    if (s->conn_closed) {
        tern_store_req_free(r);
        smtp__maybe_free(s);
        return;
    }
    rcpt_verdict v;
    if (r->status != TERN_STORE_OK) {
        TLOG_WARN(MOD, "event=rcpt_lookup_failed session=%s error=\"%s: %s\"", s->base.id,
                  tern_store_strerror(r->status), r->error);
        v = RCPT_TEMPFAIL;
    } else {
        smtp__save_hint(&s->tx, &r->out.rcpt);
        switch (r->out.rcpt.kind) {
        case TERN_RCPT_NOT_LOCAL:
            v = RCPT_REMOTE;
            break;
        case TERN_RCPT_UNKNOWN: {
            /* postmaster@ every local domain must work (RFC 5321 4.5.1),
             * account or not; and verification can be switched off. */
            const char *a = s->tx.pending_rcpt.addr;
            v = (strncasecmp(a, "postmaster@", 11) == 0 || !s->cfg->smtp.verify_recipients)
                    ? RCPT_LOCAL
                    : RCPT_UNKNOWN;
            /* Not in the directory yet: a user that an auth backend
             * (file, sql, ldap) knows gets its account at first login, so
             * ask those before refusing. */
            if (v == RCPT_UNKNOWN && s->auth != NULL && smtp__rcpt_ask_auth(s)) {
                tern_store_req_free(r);
                return;
            }
            break;
        }
        default:
            v = RCPT_LOCAL;
            break;
        }
    }
    tern_store_req_free(r);
    if (s->state != ST_CLOSED) {
        smtp__rcpt_finish(s, v);
        smtp__continue(s);
    }
}

static void cmd_rset(smtp_session *s, const tern_smtp_cmd *cmd)
{
    smtp__tx_reset(s);
    if (s->state != ST_INIT)
        s->state = ST_READY;
    smtp__reply(s, "250 2.0.0 Ok");
}

static void cmd_noop(smtp_session *s, const tern_smtp_cmd *cmd)
{
    smtp__reply(s, "250 2.0.0 Ok");
}

static void cmd_quit(smtp_session *s, const tern_smtp_cmd *cmd)
{
    smtp__goodbye(s, "221 2.0.0 Bye");
}

static void cmd_vrfy(smtp_session *s, const tern_smtp_cmd *cmd)
{
    if (cmd->args.len == 0) {
        smtp__reply(s, "501 5.5.4 Syntax: VRFY address");
        smtp__error(s);
        return;
    }
    if (s->cfg->smtp.vrfy) {
        /* Without a directory (storage comes later) the most we can say is
         * whether the domain is ours. */
        tern_smtp_slice dom;
        const char *a = cmd->args.p;
        size_t al = cmd->args.len;
        if (al >= 2 && a[0] == '<' && a[al - 1] == '>') {
            a++;
            al -= 2;
        }
        if (tern_smtp_mailbox_domain(a, al, &dom) == 0 &&
            !tern_config_is_local_domain(s->cfg, dom.p, dom.len)) {
            smtp__reply(s, "551 5.1.6 Not a local domain");
            return;
        }
    }
    smtp__reply(s, "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery");
}

static void cmd_expn(smtp_session *s, const tern_smtp_cmd *cmd)
{
    smtp__reply(s, "502 5.5.1 EXPN not available");
}

static void cmd_help(smtp_session *s, const tern_smtp_cmd *cmd)
{
    tern_conn_write(&s->conn,
                    "214-2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS\r\n"
                    "214 2.0.0 See RFC 5321\r\n",
                    strlen("214-2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS\r\n"
                           "214 2.0.0 See RFC 5321\r\n"));
}

static void cmd_starttls(smtp_session *s, const tern_smtp_cmd *cmd)
{
    if (s->lc->tls != TERN_TLS_STARTTLS || s->tls == NULL || tern_conn_is_tls(&s->conn)) {
        smtp__reply(s, tern_conn_is_tls(&s->conn) ? "503 5.5.1 TLS already active"
                                                  : "502 5.5.1 STARTTLS not available");
        smtp__error(s);
        return;
    }
    if (cmd->args.len) {
        smtp__reply(s, "501 5.5.4 Syntax: STARTTLS");
        smtp__error(s);
        return;
    }
    tern_tls_conn *t = tern_tls_conn_new(s->tls, s->li);
    if (t == NULL) {
        smtp__reply(s, "454 4.7.0 TLS not available due to temporary reason");
        return;
    }
    smtp__reply(s, "220 2.0.0 Ready to start TLS");
    smtp__tx_reset(s);
    s->state = ST_HANDSHAKE;
    tern_conn_starttls(&s->conn, t);
    tern_conn_set_timeout(&s->conn, s->cfg->smtp.greeting_timeout_ms ? s->cfg->smtp.greeting_timeout_ms
                                                                      : s->lc->timeout_ms);
}

/* --- message body ----------------------------------------------------- */

static bool smtp__begin_body(smtp_session *s)
{
    smtp_tx *tx = &s->tx;
    if (tx->body)
        return true;
    tx->body = tern_body_new(s->base.host->loop, tern_spool_tmpdir(s->base.host->spool),
                             s->cfg->smtp.memory_threshold);
    if (tx->body == NULL)
        return false;
    tern_smtp_hdr_scan_init(&tx->hs);
    return true;
}

static void cmd_data(smtp_session *s, const tern_smtp_cmd *cmd)
{
    smtp_tx *tx = &s->tx;
    if (cmd->args.len) {
        smtp__reply(s, "501 5.5.4 Syntax: DATA");
        smtp__error(s);
        return;
    }
    if (s->state == ST_MAIL) {
        smtp__reply(s, "554 5.5.1 No valid recipients");
        smtp__error(s);
        return;
    }
    if (s->state != ST_RCPT || tx->bdat) {
        smtp__reply(s, "503 5.5.1 Bad sequence of commands");
        smtp__error(s);
        return;
    }
    if (!smtp__begin_body(s)) {
        smtp__reply(s, "451 4.3.0 Cannot buffer the message now");
        return;
    }
    tern_smtp_data_init(&tx->dr, s->cfg->smtp.max_text_line, s->cfg->smtp.bare_lf == TERN_BARE_LF_NORMALIZE);
    s->state = ST_DATA;
    tern_conn_set_timeout(&s->conn, s->cfg->smtp.data_block_timeout_ms);
    smtp__reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

static void smtp__body_written(void *arg, int status);

/* Hands body bytes to the sink unless the message is already refused.
 * Returns false when the caller must wait for the write to finish. */
static bool smtp__keep(smtp_session *s, const uint8_t *p, size_t n)
{
    smtp_tx *tx = &s->tx;
    if (!tx->hs.done)
        tern_smtp_hdr_scan_feed(&tx->hs, p, n);
    tx->size += n;
    if (tx->size > s->max_size)
        tx->too_big = true;
    if (tx->too_big || tx->write_error || n == 0)
        return true;
    int r = tern_body_append(tx->body, p, n, smtp__body_written, s);
    if (r == 1) {
        s->pending++;
        s->body_writing = true;
        tern_conn_pause(&s->conn);
        return false;
    }
    if (r < 0) {
        TLOG_ERR(MOD, "event=body_write_failed session=%s error=%s", s->base.id, strerror(-r));
        tx->write_error = true;
    }
    return true;
}

static void smtp__end_of_message(smtp_session *s);
static void smtp__bdat_chunk_done(smtp_session *s);

static void smtp__body_written(void *arg, int status)
{
    smtp_session *s = arg;
    s->pending--;
    s->body_writing = false;
    if (s->conn_closed) {
        smtp__maybe_free(s);
        return;
    }
    if (status < 0) {
        TLOG_ERR(MOD, "event=body_write_failed session=%s error=%s", s->base.id, strerror(-status));
        s->tx.write_error = true;
    }
    if (s->tx.end_pending) {
        s->tx.end_pending = false;
        if (s->tx.bdat)
            smtp__bdat_chunk_done(s);
        else
            smtp__end_of_message(s);
    }
    smtp__continue(s);
}

/* Returns bytes consumed. */
static size_t smtp__data_input(smtp_session *s, const uint8_t *in, size_t len)
{
    smtp_tx *tx = &s->tx;
    uint8_t out[2 * DATA_CHUNK + 3];
    if (len > DATA_CHUNK)
        len = DATA_CHUNK;
    size_t out_len = 0;
    tern_smtp_data_status st;
    size_t used = tern_smtp_data_feed(&tx->dr, in, len, out, sizeof(out), &out_len, &st);
    bool sync = smtp__keep(s, out, out_len);
    if (st == TERN_SMTP_DATA_END) {
        if (sync)
            smtp__end_of_message(s);
        else
            tx->end_pending = true;
    }
    return used;
}

static void smtp__bdat_chunk_done(smtp_session *s)
{
    smtp_tx *tx = &s->tx;
    if (tx->bdat_failed) {
        smtp__reply(s, "%s", tx->bdat_reply);
        smtp__tx_reset(s);
        s->state = s->helo[0] ? ST_READY : ST_INIT;
        tern_conn_set_timeout(&s->conn, smtp__command_timeout(s));
        return;
    }
    if (tx->bdat_last) {
        smtp__end_of_message(s);
        return;
    }
    s->state = ST_RCPT;
    tern_conn_set_timeout(&s->conn, smtp__command_timeout(s));
    smtp__reply(s, "250 2.0.0 %llu octets received", (unsigned long long)tx->size);
}

static size_t smtp__bdat_input(smtp_session *s, const uint8_t *in, size_t len)
{
    smtp_tx *tx = &s->tx;
    size_t n = len < tx->bdat_remaining ? len : (size_t)tx->bdat_remaining;
    tx->bdat_remaining -= n;
    bool sync = tx->bdat_failed ? true : smtp__keep(s, in, n);
    if (tx->bdat_remaining == 0) {
        if (sync)
            smtp__bdat_chunk_done(s);
        else
            tx->end_pending = true; /* smtp__body_written finishes the chunk */
    }
    return n;
}

static void cmd_bdat(smtp_session *s, const tern_smtp_cmd *cmd)
{
    smtp_tx *tx = &s->tx;
    uint64_t size;
    bool last;
    if (tern_smtp_parse_bdat(cmd->args.p, cmd->args.len, &size, &last) != 0) {
        /* Without a valid size we cannot find the end of the chunk: the
         * stream is unusable. */
        smtp__goodbye(s, "501 5.5.4 Syntax: BDAT size [LAST], closing connection");
        return;
    }
    tx->bdat_remaining = size;
    tx->bdat_last = last;
    tx->bdat_failed = false;
    if (s->state != ST_RCPT) {
        snprintf(tx->bdat_reply, sizeof(tx->bdat_reply),
                 s->state == ST_MAIL ? "554 5.5.1 No valid recipients"
                                     : "503 5.5.1 Bad sequence of commands");
        tx->bdat_failed = true;
        s->errors++;
    } else if (!smtp__begin_body(s)) {
        snprintf(tx->bdat_reply, sizeof(tx->bdat_reply), "451 4.3.0 Cannot buffer the message now");
        tx->bdat_failed = true;
    } else if (tx->size + size > s->max_size) {
        snprintf(tx->bdat_reply, sizeof(tx->bdat_reply),
                 "552 5.3.4 Message size exceeds fixed limit of %llu bytes",
                 (unsigned long long)s->max_size);
        tx->bdat_failed = true;
    }
    tx->bdat = true;
    if (size == 0) {
        smtp__bdat_chunk_done(s);
        return;
    }
    s->state = ST_BDAT;
    tern_conn_set_timeout(&s->conn, s->cfg->smtp.data_block_timeout_ms);
}

/* --- end of message: checks, Received header, spool ------------------- */

static const char *smtp__with(const smtp_session *s)
{
    /* RFC 3848 and RFC 6531 7.9: S for TLS, A for authenticated. */
    bool tls = tern_conn_is_tls(&s->conn);
    bool a = s->auth_user != NULL;
    if (s->tx.mail.smtputf8)
        return tls ? (a ? "UTF8SMTPSA" : "UTF8SMTPS") : (a ? "UTF8SMTPA" : "UTF8SMTP");
    if (!s->esmtp)
        return "SMTP";
    return tls ? (a ? "ESMTPSA" : "ESMTPS") : (a ? "ESMTPA" : "ESMTP");
}

static size_t smtp__received(smtp_session *s, char *buf, size_t size)
{
    char date[64];
    tern_rfc5322_date(time(NULL), date, sizeof(date));
    const char *v6 = strchr(s->conn.peer_ip, ':') ? "IPv6:" : "";
    int n = snprintf(buf, size, "Received: from %s ([%s%s])\r\n\tby %s (Tern) with %s id %s",
                     s->helo[0] ? s->helo : "unknown", v6, s->conn.peer_ip,
                     s->cfg->server.hostname, smtp__with(s), s->tx.qid);
    if (n < 0)
        return 0;
    size_t len = (size_t)n < size ? (size_t)n : size - 1;
    if (tern_conn_is_tls(&s->conn) && s->conn.tls) {
        n = snprintf(buf + len, size - len, "\r\n\t(using %s with cipher %s)",
                     tern_tls_conn_version(s->conn.tls), tern_tls_conn_cipher(s->conn.tls));
        if (n > 0)
            len += (size_t)n < size - len ? (size_t)n : size - len - 1;
    }
    /* "for" only with one recipient: more would disclose the others. */
    if (s->tx.n_rcpts == 1)
        n = snprintf(buf + len, size - len, "\r\n\tfor <%s>; %s\r\n", s->tx.rcpts[0].addr, date);
    else
        n = snprintf(buf + len, size - len, ";\r\n\t%s\r\n", date);
    if (n > 0)
        len += (size_t)n < size - len ? (size_t)n : size - len - 1;
    return len;
}

static void smtp__after_message(smtp_session *s)
{
    smtp__tx_reset(s);
    s->state = ST_READY;
    tern_conn_set_timeout(&s->conn, smtp__command_timeout(s));
    if (s->draining)
        smtp__goodbye(s, "421 4.3.2 Service shutting down, try again later");
}

static void smtp__processed(void *arg, const tern_pipeline_outcome *o);
static void smtp__message_answer(smtp_session *s, bool stored, const char *qid,
                                 const tern_pipeline_outcome *o);

static void smtp__submitted(void *arg, int status, const char *qid, const char *error)
{
    smtp_session *s = arg;
    s->pending--;
    smtp_tx *tx = &s->tx;
    uint64_t ms = tern_now_ms() - tx->started_ms;
    if (status == 0)
        TLOG_INFO(MOD, "event=queued session=%s qid=%s size=%llu nrcpt=%zu ms=%llu%s", s->base.id, qid,
                  (unsigned long long)tx->size, tx->n_rcpts, (unsigned long long)ms,
                  tx->abandoned ? " late=1" : "");
    else
        TLOG_ERR(MOD, "event=spool_failed session=%s error=\"%s\"", s->base.id, error ? error : "");
    /* Durable: the entry processor of the mailet chain may still refuse
     * it, with a reply the client sees (its deadline bounds the wait). */
    if (status == 0 && s->base.host->runner != NULL && !s->conn_closed) {
        memcpy(tx->qid, qid, sizeof(tx->qid));
        s->pending++;
        if (tern_runner_start_hinted(s->base.host->runner, qid, s->cfg->mailets.root_deadline_ms,
                                     smtp__processed, s, tx->hints_off ? NULL : tx->hints,
                                     tx->hints_off ? 0 : tx->n_rcpts) != NULL)
            return;
        s->pending--;
        /* Not started: the message stays in the spool and is processed at
         * the next start. */
        TLOG_ERR(MOD, "event=pipeline_start_failed session=%s qid=%s", s->base.id, qid);
    }
    smtp__message_answer(s, status == 0, qid, NULL);
}

/* The entry processor is done (or its deadline passed). */
static void smtp__processed(void *arg, const tern_pipeline_outcome *o)
{
    smtp_session *s = arg;
    s->pending--;
    smtp__message_answer(s, true, s->tx.qid, o);
}

static void smtp__message_answer(smtp_session *s, bool stored, const char *qid,
                                 const tern_pipeline_outcome *o)
{
    smtp_tx *tx = &s->tx;
    if (s->conn_closed) {
        smtp__maybe_free(s);
        return;
    }
    if (!tx->abandoned) {
        if (!stored)
            smtp__reply(s, "451 4.3.0 Error: queue file write error");
        else if (o == NULL || o->accepted)
            smtp__reply(s, "250 2.0.0 Ok: queued as %s", qid);
        else {
            TLOG_INFO(MOD, "event=message_refused session=%s qid=%s code=%d reason=\"%.200s\"",
                      s->base.id, qid, o->code, o->text);
            smtp__reply(s, "%d %s %s", o->code, o->enhanced, o->text);
        }
        s->messages++;
    }
    if (s->state == ST_CLOSED)
        return;
    smtp__after_message(s);
    smtp__continue(s);
}

static void smtp__end_of_message(smtp_session *s)
{
    smtp_tx *tx = &s->tx;
    tern_conn_set_timeout(&s->conn, smtp__command_timeout(s));
    const char *refuse = NULL;
    char buf[160];
    unsigned derr = tx->bdat ? 0 : tx->dr.errors;
    if (tx->too_big) {
        snprintf(buf, sizeof(buf), "552 5.3.4 Message size exceeds fixed limit of %llu bytes",
                 (unsigned long long)s->max_size);
        refuse = buf;
    } else if (derr & (TERN_SMTP_DATA_ERR_BARE_LF | TERN_SMTP_DATA_ERR_BARE_CR)) {
        refuse = "550 5.6.0 Message contains bare CR or LF characters; lines must end with CRLF";
    } else if (derr & TERN_SMTP_DATA_ERR_NUL) {
        refuse = "554 5.6.0 Message contains NUL characters";
    } else if (derr & TERN_SMTP_DATA_ERR_LONG_LINE) {
        snprintf(buf, sizeof(buf), "500 5.5.2 Message line longer than %u octets",
                 s->cfg->smtp.max_text_line);
        refuse = buf;
    } else if (tx->hs.received > s->cfg->smtp.max_hops) {
        snprintf(buf, sizeof(buf), "554 5.4.6 Too many hops (%u Received headers), possible mail loop",
                 tx->hs.received);
        refuse = buf;
    } else if (tx->write_error) {
        refuse = "451 4.3.0 Error: temporary failure buffering the message";
    }
    if (refuse) {
        TLOG_INFO(MOD, "event=message_refused session=%s size=%llu reason=\"%.40s\"", s->base.id,
                  (unsigned long long)tx->size, refuse);
        smtp__reply(s, "%s", refuse);
        smtp__after_message(s);
        return;
    }
    tern_qid(tx->qid);
    char received[1600];
    size_t rlen = smtp__received(s, received, sizeof(received));
    /* RFC 6409 8.2 and 8.3: a submission server completes a message that
     * lacks Date or Message-ID, so that it is valid (RFC 5322 3.6) when it
     * leaves. An MX relays what it got. */
    if (s->lc->protocol == TERN_PROTO_SUBMISSION) {
        int n;
        if (!tx->hs.has_date && rlen < sizeof(received)) {
            char date[64];
            tern_rfc5322_date(time(NULL), date, sizeof(date));
            n = snprintf(received + rlen, sizeof(received) - rlen, "Date: %s\r\n", date);
            if (n > 0 && (size_t)n < sizeof(received) - rlen)
                rlen += (size_t)n;
        }
        if (!tx->hs.has_message_id && rlen < sizeof(received)) {
            n = snprintf(received + rlen, sizeof(received) - rlen, "Message-ID: <%s.%lld@%s>\r\n",
                         tx->qid, (long long)time(NULL), s->cfg->server.hostname);
            if (n > 0 && (size_t)n < sizeof(received) - rlen)
                rlen += (size_t)n;
        }
    }
    tern_envelope env;
    memset(&env, 0, sizeof(env));
    memcpy(env.qid, tx->qid, sizeof(env.qid));
    env.mail_from = tx->from;
    env.rcpts = tx->rcpts;
    env.n_rcpts = tx->n_rcpts;
    env.envid = tx->envid;
    env.ret = tx->mail.ret == 1 ? TERN_RET_FULL : tx->mail.ret == 2 ? TERN_RET_HDRS : TERN_RET_NONE;
    env.body = tx->mail.body == 1 ? TERN_BODY_8BITMIME : TERN_BODY_7BIT;
    env.smtputf8 = tx->mail.smtputf8;
    env.requiretls = tx->mail.requiretls;
    env.helo = s->helo;
    env.auth_user = s->auth_user;
    env.client_addr = s->conn.peer_ip;
    env.session_id = s->base.id;
    env.listener = s->lc->name;
    env.pipeline = s->lc->pipeline;
    env.received_at = (int64_t)time(NULL);
    tern_body *body = tx->body;
    tx->body = NULL;
    int r = tern_spool_submit(s->base.host->spool_client, &env, received, rlen, body,
                              smtp__submitted, s);
    if (r != 0) {
        tern_body_free(body);
        TLOG_ERR(MOD, "event=spool_failed session=%s error=%s", s->base.id, strerror(-r));
        smtp__reply(s, "451 4.3.0 Error: queue file write error");
        smtp__after_message(s);
        return;
    }
    memcpy(tx->qid, env.qid, sizeof(tx->qid));
    s->pending++;
    s->state = ST_SUBMIT;
    tern_conn_pause(&s->conn);
    tern_conn_set_timeout(&s->conn, s->cfg->smtp.data_done_timeout_ms);
}

/* --- command dispatch ------------------------------------------------- */

static const smtp_cmd_def smtp_commands[] = {
    {TERN_SMTP_CMD_EHLO, ST_ANY, cmd_ehlo},
    {TERN_SMTP_CMD_HELO, ST_ANY, cmd_ehlo},
    {TERN_SMTP_CMD_MAIL, ST_INIT | ST_READY, cmd_mail},
    {TERN_SMTP_CMD_RCPT, ST_ANY, cmd_rcpt},
    {TERN_SMTP_CMD_DATA, ST_ANY, cmd_data},
    {TERN_SMTP_CMD_BDAT, ST_ANY, cmd_bdat},
    {TERN_SMTP_CMD_RSET, ST_ANY, cmd_rset},
    {TERN_SMTP_CMD_NOOP, ST_ANY, cmd_noop},
    {TERN_SMTP_CMD_QUIT, ST_ANY, cmd_quit},
    {TERN_SMTP_CMD_VRFY, ST_ANY, cmd_vrfy},
    {TERN_SMTP_CMD_EXPN, ST_ANY, cmd_expn},
    {TERN_SMTP_CMD_HELP, ST_ANY, cmd_help},
    {TERN_SMTP_CMD_STARTTLS, ST_INIT | ST_READY, cmd_starttls},
    {TERN_SMTP_CMD_AUTH, ST_INIT | ST_READY, smtp__cmd_auth},
};

static void smtp__dispatch(smtp_session *s, const tern_smtp_cmd *cmd)
{
    for (size_t i = 0; i < sizeof(smtp_commands) / sizeof(smtp_commands[0]); i++) {
        const smtp_cmd_def *d = &smtp_commands[i];
        if (d->verb != cmd->verb)
            continue;
        if (!(d->states & s->state)) {
            smtp__reply(s, cmd->verb == TERN_SMTP_CMD_MAIL ? "503 5.5.1 Nested MAIL command"
                                                            : "503 5.5.1 Bad sequence of commands");
            smtp__error(s);
            return;
        }
        d->handler(s, cmd);
        return;
    }
    {
        char q[80];
        TLOG_DEBUG(MOD, "event=unknown_command session=%s name=%s", s->base.id,
                   tern_log_q(q, sizeof(q), cmd->name.len < 32 ? cmd->name.p : ""));
        smtp__reply(s, "500 5.5.1 Command unrecognized");
    }
    smtp__error(s);
}

/* Runs input through the state machine until it is used up or we must wait. */
static void smtp__process(smtp_session *s)
{
    while (s->state != ST_CLOSED && !s->conn.paused && !s->conn.closing) {
        size_t len;
        const uint8_t *in = tern_conn_input(&s->conn, &len);
        if (len == 0)
            return;
        if (s->state == ST_DATA) {
            tern_conn_consume(&s->conn, smtp__data_input(s, in, len));
            continue;
        }
        if (s->state == ST_BDAT) {
            tern_conn_consume(&s->conn, smtp__bdat_input(s, in, len));
            continue;
        }
        if (s->state == ST_HANDSHAKE || s->state == ST_SUBMIT)
            return;
        /* Replies not yet taken by the client: stop parsing until they are,
         * so a client that pipelines without reading cannot grow our queue. */
        if (tern_conn_unsent(&s->conn) > OUT_HIGH_WATER) {
            tern_conn_pause(&s->conn);
            return;
        }
        tern_smtp_cmd cmd;
        tern_smtp_line_status st;
        size_t used = tern_smtp_line_feed(&s->lr, in, len, &cmd, &st);
        tern_conn_consume(&s->conn, used);
        if (s->state == ST_AUTH && st != TERN_SMTP_LINE_MORE) {
            if (st == TERN_SMTP_LINE_OK && cmd.args.len == 0)
                smtp__auth_response(s, cmd.name.p, cmd.name.len);
            else
                smtp__auth_fail(s, 0, "501 5.5.2 Cannot decode the response");
            continue;
        }
        switch (st) {
        case TERN_SMTP_LINE_MORE:
            break;
        case TERN_SMTP_LINE_OK:
            tern_conn_set_timeout(&s->conn, smtp__command_timeout(s));
            smtp__dispatch(s, &cmd);
            break;
        case TERN_SMTP_LINE_TOO_LONG:
            smtp__reply(s, "500 5.5.2 Line too long (limit %u octets)", s->cfg->smtp.max_command_line);
            smtp__error(s);
            break;
        case TERN_SMTP_LINE_BAD_CHAR:
            smtp__reply(s, "500 5.5.2 Invalid character in command");
            smtp__error(s);
            break;
        }
    }
}

/* --- connection callbacks --------------------------------------------- */

static void smtp__on_data(tern_conn *c)
{
    smtp__process(c->data);
}

static void smtp__on_tls(tern_conn *c)
{
    smtp_session *s = c->data;
    char sni[300];
    TLOG_INFO(MOD, "event=tls session=%s version=%s cipher=%s sni=%s peer=%s", s->base.id,
              tern_tls_conn_version(c->tls), tern_tls_conn_cipher(c->tls),
              tern_log_q(sni, sizeof(sni), tern_tls_conn_sni(c->tls)),
              tern_tls_conn_peer_subject(c->tls) ? "present" : "none");
    if (s->lc->tls == TERN_TLS_IMPLICIT && s->state == ST_HANDSHAKE) {
        smtp__greet(s);
        return;
    }
    /* RFC 3207 4.2: forget everything learnt before TLS. */
    s->helo[0] = '\0';
    s->esmtp = false;
    free(s->auth_user);
    s->auth_user = NULL;
    smtp__tx_reset(s);
    s->state = ST_INIT;
    tern_conn_set_timeout(&s->conn, smtp__command_timeout(s));
}

static void smtp__on_timeout(tern_conn *c)
{
    smtp_session *s = c->data;
    if (s->state == ST_SUBMIT) {
        /* The spool is slower than the client may wait: tell it to retry
         * (the message may still be stored; the client's retry makes a
         * duplicate, which is the lesser evil, RFC 1047). */
        s->tx.abandoned = true;
        TLOG_WARN(MOD, "event=data_done_timeout session=%s", s->base.id);
        smtp__goodbye(s, "451 4.3.0 Timeout storing the message, try again later");
        return;
    }
    TLOG_INFO(MOD, "event=timeout session=%s state=%d", s->base.id, (int)s->state);
    smtp__goodbye(s, "421 4.4.2 Timeout, closing connection");
}

static void smtp__on_error(tern_conn *c, const char *reason)
{
    smtp_session *s = c->data;
    if (s->state & (ST_DATA | ST_BDAT | ST_TX))
        TLOG_INFO(MOD, "event=lost_connection session=%s state=%d reason=\"%s\"", s->base.id,
                  (int)s->state, reason);
    else
        TLOG_DEBUG(MOD, "event=connection_error session=%s reason=\"%s\"", s->base.id, reason);
    s->state = ST_CLOSED;
}

static void smtp__on_drain(tern_conn *c)
{
    smtp_session *s = c->data;
    if (s->conn.paused && tern_conn_unsent(c) <= OUT_HIGH_WATER / 2)
        smtp__continue(s);
}

void smtp__continue(smtp_session *s)
{
    if (s->state == ST_CLOSED || s->state == ST_SUBMIT || s->lookup_pending || s->body_writing ||
        s->auth_pending || s->delay_timer != NULL || s->conn_closed)
        return;
    tern_conn_resume(&s->conn);
}

static void smtp__free(smtp_session *s)
{
    tern_sasl_free(s->sasl);
    free(s->auth_line);
    free(s->auth_user);
    if (s->auth_client)
        tern_auth_client_close(s->auth_client);
    if (s->auth)
        tern_auth_unref(s->auth);
    smtp__tx_reset(s);
    tern_arena_free(&s->tx.arena);
    tern_config_unref(s->cfg);
    if (s->tls)
        tern_tls_server_unref(s->tls);
    free(s->linebuf);
    free(s);
}

void smtp__maybe_free(smtp_session *s)
{
    if (s->conn_closed && s->pending == 0)
        smtp__free(s);
}

static void smtp__on_close(tern_conn *c)
{
    smtp_session *s = c->data;
    TLOG_INFO(MOD, "event=disconnect session=%s ip=%s messages=%u errors=%u bytes_in=%llu bytes_out=%llu ms=%llu",
              s->base.id, c->peer_ip, s->messages, s->errors, (unsigned long long)c->bytes_in,
              (unsigned long long)c->bytes_out, (unsigned long long)(tern_now_ms() - s->started_ms));
    s->conn_closed = true;
    s->state = ST_CLOSED;
    if (s->delay_timer) {
        uv_timer_stop(s->delay_timer);
        uv_close((uv_handle_t *)s->delay_timer, smtp__delay_closed);
        s->delay_timer = NULL;
    }
    tern_session_unlink(&s->base);
    smtp__maybe_free(s);
}

static const tern_conn_cbs smtp_conn_cbs = {
    .on_data = smtp__on_data,
    .on_tls = smtp__on_tls,
    .on_timeout = smtp__on_timeout,
    .on_error = smtp__on_error,
    .on_drain = smtp__on_drain,
    .on_close = smtp__on_close,
};

/* --- drain ------------------------------------------------------------ */

static void smtp__drain(tern_session *base)
{
    smtp_session *s = (smtp_session *)base;
    s->draining = true;
    if (s->state & (ST_INIT | ST_READY | ST_HANDSHAKE))
        smtp__goodbye(s, s->state == ST_HANDSHAKE ? NULL
                                                  : "421 4.3.2 Service shutting down, try again later");
}

static void smtp__shutdown(tern_session *base)
{
    smtp_session *s = (smtp_session *)base;
    if (s->state == ST_CLOSED)
        return;
    if (s->state == ST_SUBMIT)
        s->tx.abandoned = true;
    smtp__goodbye(s, s->state == ST_HANDSHAKE ? NULL : "421 4.3.2 Service shutting down, try again later");
}

static const tern_session_ops smtp_session_ops = {
    .drain = smtp__drain,
    .shutdown = smtp__shutdown,
};

/* --- creation --------------------------------------------------------- */

int tern_smtp_session_start(tern_session_host *h, tern_session_args *a)
{
    smtp_session *s = calloc(1, sizeof(*s));
    const tern_config *cfg = a->cfg;
    uint32_t linemax = cfg->smtp.max_command_line;
    char *linebuf = s ? malloc(linemax) : NULL;
    if (s == NULL || linebuf == NULL) {
        free(s);
        free(linebuf);
        close(a->fd);
        tern_config_unref(a->cfg);
        if (a->tls)
            tern_tls_server_unref(a->tls);
        if (a->auth)
            tern_auth_unref(a->auth);
        return UV_ENOMEM;
    }
    s->base.ops = &smtp_session_ops;
    tern_uuid(s->base.id);
    s->cfg = a->cfg;
    s->tls = a->tls;
    s->auth = a->auth;
    s->li = a->listener;
    s->lc = &cfg->listeners[a->listener];
    s->linebuf = linebuf;
    tern_smtp_line_init(&s->lr, linebuf, linemax);
    tern_arena_init(&s->tx.arena, 2048);
    s->max_size = s->lc->max_message_size ? s->lc->max_message_size : cfg->smtp.max_message_size;
    s->started_ms = tern_now_ms();
    memcpy(&s->base.peer, &a->peer, sizeof(s->base.peer));
    tern_session_link(h, &s->base);
    int r = tern_conn_init(&s->conn, h->loop, &h->conn_worker, a->fd, s->lc->buffer_size,
                           &smtp_conn_cbs, s);
    if (r < 0) {
        tern_session_unlink(&s->base);
        smtp__free(s);
        return 0; /* accounted for by the unlink above */
    }
    if (r > 0) {
        s->state = ST_CLOSED;
        return 0; /* on_close cleans up */
    }
    for (size_t i = 0; i < cfg->smtp.n_relay_networks; i++)
        if (tern_cidr_match(&cfg->smtp.relay_networks[i], (struct sockaddr *)&s->conn.peer)) {
            s->relay_client = true;
            break;
        }
    TLOG_INFO(MOD, "event=connect session=%s ip=%s port=%d listener=%s tls=%s", s->base.id,
              s->conn.peer_ip, s->conn.peer_port, s->lc->name,
              s->lc->tls == TERN_TLS_IMPLICIT ? "implicit" : s->lc->tls == TERN_TLS_STARTTLS ? "starttls" : "none");
    if (s->lc->tls == TERN_TLS_IMPLICIT) {
        tern_tls_conn *t = s->tls ? tern_tls_conn_new(s->tls, s->li) : NULL;
        if (t == NULL) {
            TLOG_ERR(MOD, "event=tls_unavailable session=%s", s->base.id);
            s->state = ST_CLOSED;
            tern_conn_close(&s->conn, false);
            return 0;
        }
        s->state = ST_HANDSHAKE;
        tern_conn_set_timeout(&s->conn, cfg->smtp.greeting_timeout_ms ? cfg->smtp.greeting_timeout_ms
                                                                       : s->lc->timeout_ms);
        tern_conn_start(&s->conn, t);
        return 0;
    }
    smtp__greet(s);
    tern_conn_start(&s->conn, NULL);
    return 0;
}

size_t tern_smtp_refusal(const tern_config *cfg, const char *why, char *buf, size_t size)
{
    int n = snprintf(buf, size, "421 4.7.0 %s Too many connections (%s), try again later\r\n",
                     cfg->server.hostname, why);
    if (n < 0)
        return 0;
    return (size_t)n < size ? (size_t)n : size - 1;
}
