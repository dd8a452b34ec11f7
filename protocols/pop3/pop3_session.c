/* The POP3 session: one state machine (AUTHORIZATION, TRANSACTION, UPDATE,
 * RFC 1939 3) over a tern_conn, with a command table of allowed states.
 *
 * The maildrop is a snapshot of INBOX taken at login (UIDs and sizes from
 * the store): message numbers and UIDLs never move during the session,
 * whatever IMAP or delivery do meanwhile. DELE only marks; the store is
 * changed at QUIT (UPDATE), as pop3.delete_policy says. RETR and TOP stream
 * the body from the store in chunks, one at a time, waiting for the socket
 * to drain, so a large message is never in memory whole.
 *
 * Input: the client's bytes (untrusted; lines bounded by
 * pop3.max_command_line, SASL responses by TERN_SASL_SRV_LINE_MAX), the
 * store's message bytes (untrusted content), the config snapshot
 * (validated). */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "auth/auth.h"
#include "lib/log.h"
#include "lib/util.h"
#include "protocols/common/sasl_server.h"
#include "protocols/pop3/pop3_lock.h"
#include "protocols/pop3/pop3_parser.h"
#include "protocols/pop3/pop3_session.h"

#define MOD "pop3"
#define OUT_HIGH_WATER (256 * 1024) /* stop producing while this much is unsent */
#define BODY_CHUNK (128 * 1024)     /* message bytes asked of the store at a time */
#define STUFF_CAP (2 * BODY_CHUNK + 16)

typedef enum {
    ST_HANDSHAKE = 1 << 0,     /* implicit TLS or STLS: the handshake runs */
    ST_AUTHORIZATION = 1 << 1, /* greeted, not logged in */
    ST_TRANSACTION = 1 << 2,   /* logged in, the maildrop is ours */
    ST_UPDATE = 1 << 3,        /* QUIT: the deletions are being applied */
    ST_CLOSED = 1 << 4,
} pop3_state;

typedef struct pop3_msg {
    uint32_t uid;
    bool deleted;
    uint64_t size;
} pop3_msg;

typedef struct pop3_session pop3_session;

/* A RETR or TOP in progress. */
typedef struct pop3_stream {
    bool active;
    bool req_out;         /* a FETCH_BODY is at the store */
    bool started;         /* the +OK line is out */
    bool top;
    size_t idx;
    uint64_t offset;
    tern_pop3_stuffer st;
    uint8_t *buf;         /* STUFF_CAP bytes, allocated at the first RETR */
} pop3_stream;

struct pop3_session {
    tern_session base;
    tern_conn conn;
    tern_config *cfg;
    tern_tls_server *tls;
    tern_auth *auth;
    const tern_listener_conf *lc;
    size_t li;
    pop3_state state;
    tern_pop3_line_reader lr;
    char *linebuf;        /* TERN_SASL_SRV_LINE_MAX + 2: commands use less of it */
    tern_sasl_srv *sasl;
    bool in_sasl;         /* AUTH exchange: lines are responses */
    char user[TERN_AUTH_MAX_USER + 1]; /* from USER, until PASS */
    bool have_user;
    char *account;        /* logged in (or logging in) as */
    bool locked;          /* we hold the maildrop lock of `account` */
    bool utf8;            /* RFC 6856 UTF8 was given */
    char greeting_ts[300];/* RFC 1939 7 APOP timestamp, or "" */
    /* the maildrop */
    pop3_msg *msgs;
    size_t n_msgs;
    uint32_t uidvalidity;
    size_t n_deleted;
    uint64_t deleted_bytes, total_bytes;
    pop3_stream out;
    /* asynchronous work */
    bool busy;            /* waiting for auth/, the store or a stream: parse nothing */
    bool in_process;      /* inside the input loop (callbacks must not re-enter it) */
    bool conn_closed;
    bool draining;
    unsigned pending;     /* store requests holding a pointer to us */
    unsigned errors;
    unsigned retrieved;
    uint64_t started_ms;
    char trash[256];      /* delete_policy trash: the Trash mailbox's name */
};

static void pop3__process(pop3_session *s);
static void pop3__continue(pop3_session *s);
static void pop3__maybe_free(pop3_session *s);

/* --- helpers ---------------------------------------------------------- */

static void pop3__reply(pop3_session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pop3__reply(pop3_session *s, const char *fmt, ...)
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
    if (line[0] == '-')
        TLOG_INFO(MOD, "event=reply session=%s text=\"%.*s\"", s->base.id, n - 2, line);
}

/* The maildrop is free for the next session: before a goodbye the client
 * may act on (it may log in again at once), after UPDATE's store work. */
static void pop3__unlock(pop3_session *s)
{
    if (s->locked)
        tern_pop3_lock_release(s->account);
    s->locked = false;
}

static void pop3__goodbye(pop3_session *s, const char *line)
{
    if (s->state == ST_CLOSED)
        return;
    if (s->state != ST_UPDATE || !s->busy)
        pop3__unlock(s);
    if (line)
        pop3__reply(s, "%s", line);
    s->state = ST_CLOSED;
    tern_conn_close(&s->conn, true);
}

/* Counts a client error; past pop3.max_errors the session ends. */
static bool pop3__error(pop3_session *s)
{
    if (++s->errors < s->cfg->pop3.max_errors)
        return false;
    TLOG_WARN(MOD, "event=too_many_errors session=%s ip=%s errors=%u", s->base.id,
              s->conn.peer_ip, s->errors);
    pop3__goodbye(s, "-ERR Too many errors, closing connection");
    return true;
}

/* A client error's reply; the one that reaches pop3.max_errors is
 * answered by the goodbye instead (one response per command). */
static void pop3__fail(pop3_session *s, const char *line)
{
    if (s->errors + 1 < s->cfg->pop3.max_errors) {
        s->errors++;
        pop3__reply(s, "%s", line);
        return;
    }
    pop3__error(s);
}

static void pop3__params(const pop3_session *s, tern_sasl_srv_params *p, char *cert, size_t size)
{
    memset(p, 0, sizeof(*p));
    p->service = "pop3";
    p->hostname = s->cfg->server.hostname;
    p->listener = s->lc->name;
    p->session_id = s->base.id;
    p->remote_ip = s->conn.peer_ip;
    p->tls_active = tern_conn_is_tls(&s->conn);
    p->allow_plaintext = s->lc->allow_plaintext_auth;
    p->success_data = false; /* RFC 5034: SCRAM's final data comes as one more "+" */
    p->cert_account = tern_sasl_srv_cert_account(&s->conn, cert, size) ? cert : NULL;
    tern_sasl_srv_channel_binding(&s->conn, p);
}

static bool pop3__may_stls(const pop3_session *s)
{
    return s->lc->tls == TERN_TLS_STARTTLS && s->tls != NULL && !tern_conn_is_tls(&s->conn);
}

static void pop3__busy(pop3_session *s)
{
    s->busy = true;
    tern_conn_pause(&s->conn);
}

static void pop3__idle(pop3_session *s)
{
    s->busy = false;
    pop3__continue(s);
}

/* Message number argument: 1..n, not deleted. Replies and returns NULL
 * when it is not. */
static pop3_msg *pop3__msg_arg(pop3_session *s, tern_pop3_slice a, size_t *idx_r)
{
    uint64_t n;
    if (tern_pop3_parse_number(a, UINT32_MAX, &n) != 0) {
        pop3__fail(s, "-ERR Invalid message number");
        return NULL;
    }
    if (n == 0 || n > s->n_msgs) {
        pop3__fail(s, "-ERR No such message");
        return NULL;
    }
    pop3_msg *m = &s->msgs[n - 1];
    if (m->deleted) {
        pop3__fail(s, "-ERR Message already deleted");
        return NULL;
    }
    *idx_r = (size_t)(n - 1);
    return m;
}

/* RFC 1939 7 allows 1..70 printable characters; this is Dovecot's default
 * (%08Xu%08Xv), so UIDLs survive a migration from Dovecot both ways. */
static void pop3__uidl(const pop3_session *s, const pop3_msg *m, char *buf, size_t size)
{
    snprintf(buf, size, "%08" PRIX32 "%08" PRIX32, m->uid, s->uidvalidity);
}

/* --- AUTHORIZATION ------------------------------------------------------ */

static void pop3__greet(pop3_session *s)
{
    s->state = ST_AUTHORIZATION;
    tern_conn_set_timeout(&s->conn, s->cfg->pop3.idle_timeout_ms);
    if (s->greeting_ts[0])
        pop3__reply(s, "+OK Tern POP3 ready %s", s->greeting_ts);
    else
        pop3__reply(s, "+OK Tern POP3 ready");
}

static void cmd_capa(pop3_session *s, const tern_pop3_cmd *cmd)
{
    if (cmd->rest.len || cmd->empty_arg) {
        pop3__fail(s, "-ERR Syntax: CAPA");
        return;
    }
    tern_conn_printf(&s->conn, "+OK Capability list follows\r\n"
                               "TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n");
    if (s->state == ST_AUTHORIZATION) {
        tern_sasl_srv_params p;
        char cert[TERN_AUTH_MAX_USER + 1], mechs[512];
        pop3__params(s, &p, cert, sizeof(cert));
        if (tern_sasl_srv_password_allowed(s->auth, &p))
            tern_conn_printf(&s->conn, "USER\r\n");
        if (tern_sasl_srv_mechs(s->auth, &p, mechs, sizeof(mechs)) > 0)
            tern_conn_printf(&s->conn, "SASL %s\r\n", mechs);
        if (pop3__may_stls(s))
            tern_conn_printf(&s->conn, "STLS\r\n");
        tern_conn_printf(&s->conn, "UTF8 USER\r\n");
    }
    const char *exp = s->cfg->pop3.expire;
    tern_conn_printf(&s->conn, "EXPIRE %s\r\n", strcmp(exp, "never") == 0 ? "NEVER" : exp);
    if (s->cfg->pop3.login_delay_ms)
        tern_conn_printf(&s->conn, "LOGIN-DELAY %" PRIu64 "\r\n",
                         (s->cfg->pop3.login_delay_ms + 999) / 1000);
    tern_conn_printf(&s->conn, "IMPLEMENTATION Tern\r\n.\r\n");
}

static void cmd_stls(pop3_session *s, const tern_pop3_cmd *cmd)
{
    if (!pop3__may_stls(s)) {
        pop3__fail(s, tern_conn_is_tls(&s->conn) ? "-ERR TLS already active"
                                                 : "-ERR STLS not available");
        return;
    }
    if (cmd->rest.len || cmd->empty_arg) {
        pop3__fail(s, "-ERR Syntax: STLS");
        return;
    }
    tern_tls_conn *t = tern_tls_conn_new(s->tls, s->li);
    if (t == NULL) {
        pop3__reply(s, "-ERR [SYS/TEMP] TLS not available now");
        return;
    }
    pop3__reply(s, "+OK Begin TLS negotiation");
    s->state = ST_HANDSHAKE;
    s->have_user = false;
    tern_conn_starttls(&s->conn, t);
}

static void cmd_utf8(pop3_session *s, const tern_pop3_cmd *cmd)
{
    if (cmd->rest.len || cmd->empty_arg) {
        pop3__fail(s, "-ERR Syntax: UTF8");
        return;
    }
    s->utf8 = true;
    pop3__reply(s, "+OK UTF8 enabled");
}

static bool pop3__utf8_ok(const char *p, size_t len)
{
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)p[i];
        size_t n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
                             : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (n == 0 || i + n > len || (n == 2 && c < 0xc2))
            return false;
        for (size_t k = 1; k < n; k++)
            if (((unsigned char)p[i + k] & 0xc0) != 0x80)
                return false;
        i += n;
    }
    return true;
}

static void cmd_user(pop3_session *s, const tern_pop3_cmd *cmd)
{
    tern_sasl_srv_params p;
    char cert[TERN_AUTH_MAX_USER + 1];
    pop3__params(s, &p, cert, sizeof(cert));
    s->have_user = false;
    if (!tern_sasl_srv_password_allowed(s->auth, &p)) {
        pop3__fail(s, !p.tls_active && !p.allow_plaintext
                          ? "-ERR [AUTH] Plaintext authentication disallowed without TLS (use STLS)"
                          : "-ERR [AUTH] USER/PASS not available");
        return;
    }
    if (cmd->n_args != 1 || cmd->extra_args || cmd->empty_arg) {
        pop3__fail(s, "-ERR Syntax: USER name");
        return;
    }
    if (cmd->args[0].len > TERN_AUTH_MAX_USER || !pop3__utf8_ok(cmd->args[0].p, cmd->args[0].len)) {
        pop3__fail(s, "-ERR [AUTH] Invalid user name");
        return;
    }
    memcpy(s->user, cmd->args[0].p, cmd->args[0].len);
    s->user[cmd->args[0].len] = '\0';
    s->have_user = true;
    pop3__reply(s, "+OK Send PASS");
}

static void pop3__login(pop3_session *s, const char *account);

static void pop3__sasl_cb(void *data, const tern_sasl_srv_result *r)
{
    pop3_session *s = data;
    if (s->state == ST_CLOSED || s->conn_closed)
        return;
    switch (r->status) {
    case TERN_SASL_SRV_CHALLENGE:
        tern_conn_printf(&s->conn, "+ %s\r\n", r->data ? r->data : "");
        pop3__idle(s); /* the exchange goes on: the next line is a response */
        return;
    case TERN_SASL_SRV_SUCCESS:
        s->in_sasl = false;
        pop3__login(s, r->account);
        return;
    case TERN_SASL_SRV_FAILED:
        s->in_sasl = false;
        pop3__fail(s, "-ERR [AUTH] Authentication failed");
        break;
    case TERN_SASL_SRV_ABORTED:
        s->in_sasl = false;
        pop3__fail(s, "-ERR Authentication aborted");
        break;
    case TERN_SASL_SRV_MALFORMED:
        s->in_sasl = false;
        pop3__fail(s, "-ERR Invalid authentication response");
        break;
    case TERN_SASL_SRV_TEMPFAIL:
        s->in_sasl = false;
        pop3__reply(s, "-ERR [SYS/TEMP] Temporary authentication failure, try again later");
        break;
    }
    /* Back in AUTHORIZATION. */
    tern_pop3_line_init(&s->lr, s->linebuf, s->cfg->pop3.max_command_line);
    pop3__idle(s);
}

static bool pop3__ensure_sasl(pop3_session *s)
{
    if (s->sasl == NULL)
        s->sasl = tern_sasl_srv_new(s->auth, s->base.host->loop, pop3__sasl_cb, s);
    return s->sasl != NULL;
}

static void cmd_pass(pop3_session *s, const tern_pop3_cmd *cmd)
{
    if (!s->have_user) {
        pop3__fail(s, "-ERR Send USER first");
        return;
    }
    s->have_user = false;
    if (cmd->rest.len == 0) {
        pop3__fail(s, "-ERR Syntax: PASS password");
        return;
    }
    if (!pop3__ensure_sasl(s)) {
        pop3__reply(s, "-ERR [SYS/TEMP] Out of memory");
        return;
    }
    tern_sasl_srv_params p;
    char cert[TERN_AUTH_MAX_USER + 1];
    pop3__params(s, &p, cert, sizeof(cert));
    pop3__busy(s);
    /* RFC 1939 7: the password is the rest of the line, spaces included. */
    if (tern_sasl_srv_password(s->sasl, &p, s->user, cmd->rest.p, cmd->rest.len) != 0) {
        s->busy = false;
        pop3__reply(s, "-ERR [SYS/TEMP] Authentication busy");
    }
}

static void cmd_auth(pop3_session *s, const tern_pop3_cmd *cmd)
{
    tern_sasl_srv_params p;
    char cert[TERN_AUTH_MAX_USER + 1], mechs[512];
    pop3__params(s, &p, cert, sizeof(cert));
    s->have_user = false;
    if (cmd->n_args == 0 && !cmd->empty_arg) {
        /* Not in RFC 5034, but clients (and Dovecot, Cyrus) list the
         * mechanisms this way. */
        tern_conn_printf(&s->conn, "+OK\r\n");
        if (tern_sasl_srv_mechs(s->auth, &p, mechs, sizeof(mechs)) > 0)
            for (char *m = strtok(mechs, " "); m; m = strtok(NULL, " "))
                tern_conn_printf(&s->conn, "%s\r\n", m);
        tern_conn_printf(&s->conn, ".\r\n");
        return;
    }
    if (cmd->n_args < 1 || cmd->extra_args || cmd->empty_arg) {
        pop3__fail(s, "-ERR Syntax: AUTH mechanism [initial-response]");
        return;
    }
    char mech[32];
    if (cmd->args[0].len >= sizeof(mech)) {
        pop3__fail(s, "-ERR Unrecognized authentication mechanism");
        return;
    }
    memcpy(mech, cmd->args[0].p, cmd->args[0].len);
    mech[cmd->args[0].len] = '\0';
    if (!pop3__ensure_sasl(s)) {
        pop3__reply(s, "-ERR [SYS/TEMP] Out of memory");
        return;
    }
    /* Responses may be far longer than a command line (RFC 5034 4). */
    tern_pop3_line_init(&s->lr, s->linebuf, TERN_SASL_SRV_LINE_MAX + 2);
    s->in_sasl = true;
    pop3__busy(s); /* until the callback says what comes next */
    int rc = tern_sasl_srv_start(s->sasl, &p, mech, cmd->n_args > 1 ? cmd->args[1].p : NULL,
                                 cmd->n_args > 1 ? cmd->args[1].len : 0);
    if (rc == 0)
        return; /* the callback replied, or will */
    s->in_sasl = false;
    s->busy = false;
    tern_pop3_line_init(&s->lr, s->linebuf, s->cfg->pop3.max_command_line);
    pop3__fail(s, rc == TERN_SASL_SRV_ENEEDTLS
                      ? "-ERR [AUTH] This mechanism needs TLS (use STLS)"
                      : "-ERR Unrecognized authentication mechanism");
}

/* RFC 1939 7. Offered (a timestamp in the greeting) only with pop3.apop;
 * it works for users whose backend holds a {PLAIN} secret. */
static void cmd_apop(pop3_session *s, const tern_pop3_cmd *cmd)
{
    tern_sasl_srv_params p;
    char cert[TERN_AUTH_MAX_USER + 1];
    pop3__params(s, &p, cert, sizeof(cert));
    if (s->greeting_ts[0] == '\0') {
        pop3__fail(s, "-ERR APOP not available");
        return;
    }
    if (!tern_sasl_srv_password_allowed(s->auth, &p)) {
        pop3__fail(s, "-ERR [AUTH] Authentication disallowed without TLS (use STLS)");
        return;
    }
    if (cmd->n_args != 2 || cmd->extra_args || cmd->empty_arg || cmd->args[1].len != 32 ||
        cmd->args[0].len > TERN_AUTH_MAX_USER) {
        pop3__fail(s, "-ERR Syntax: APOP name digest");
        return;
    }
    if (!pop3__ensure_sasl(s)) {
        pop3__reply(s, "-ERR [SYS/TEMP] Out of memory");
        return;
    }
    char user[TERN_AUTH_MAX_USER + 1], digest[33];
    memcpy(user, cmd->args[0].p, cmd->args[0].len);
    user[cmd->args[0].len] = '\0';
    memcpy(digest, cmd->args[1].p, 32);
    digest[32] = '\0';
    pop3__busy(s);
    if (tern_sasl_srv_apop(s->sasl, &p, user, s->greeting_ts, digest) != 0) {
        s->busy = false;
        pop3__reply(s, "-ERR [SYS/TEMP] Authentication busy");
    }
}

/* --- login: lock, LOGIN-DELAY, the snapshot ------------------------------ */

static void pop3__snapshot_done(tern_store_req *r);
static void pop3__snapshot_finish(pop3_session *s);

static void pop3__login_refused(pop3_session *s, const char *line)
{
    pop3__unlock(s);
    free(s->account);
    s->account = NULL;
    pop3__reply(s, "%s", line);
    pop3__idle(s);
}

static void pop3__status_done(tern_store_req *r)
{
    pop3_session *s = r->data;
    s->pending--;
    if (s->conn_closed || s->state == ST_CLOSED) {
        tern_store_req_free(r);
        pop3__maybe_free(s);
        return;
    }
    if (r->status == TERN_STORE_ENOTFOUND) {
        /* An account that has no INBOX yet: an empty maildrop. */
        tern_store_req_free(r);
        s->uidvalidity = 0;
        s->n_msgs = 0;
        pop3__snapshot_finish(s);
        return;
    }
    if (r->status != TERN_STORE_OK) {
        TLOG_WARN(MOD, "event=snapshot_failed session=%s account=%s error=\"%s\"", s->base.id,
                  s->account, r->error);
        tern_store_req_free(r);
        pop3__login_refused(s, "-ERR [SYS/TEMP] Mailbox unavailable, try again later");
        return;
    }
    s->uidvalidity = r->out.mailbox.uidvalidity;
    tern_store_req_free(r);
    static const tern_uid_range all = {1, UINT32_MAX};
    tern_store_req *f = tern_store_req_new(TERN_STORE_FETCH, pop3__snapshot_done, s);
    if (f == NULL) {
        pop3__login_refused(s, "-ERR [SYS/TEMP] Out of memory");
        return;
    }
    f->in.account = s->account;
    f->in.name = "INBOX";
    f->in.uids.ranges = &all;
    f->in.uids.n = 1;
    if (tern_store_submit(s->base.host->store_client, f) != 0) {
        tern_store_req_free(f);
        pop3__login_refused(s, "-ERR [SYS/TEMP] Mailbox unavailable, try again later");
        return;
    }
    s->pending++;
}

static int msg_cmp(const void *a, const void *b)
{
    uint32_t x = ((const pop3_msg *)a)->uid, y = ((const pop3_msg *)b)->uid;
    return x < y ? -1 : x > y;
}

static void pop3__snapshot_done(tern_store_req *r)
{
    pop3_session *s = r->data;
    {
        s->pending--;
        if (s->conn_closed || s->state == ST_CLOSED) {
            tern_store_req_free(r);
            pop3__maybe_free(s);
            return;
        }
        if (r->status != TERN_STORE_OK && r->status != TERN_STORE_ENOTFOUND) {
            TLOG_WARN(MOD, "event=snapshot_failed session=%s account=%s error=\"%s\"", s->base.id,
                      s->account, r->error);
            tern_store_req_free(r);
            pop3__login_refused(s, "-ERR [SYS/TEMP] Mailbox unavailable, try again later");
            return;
        }
        size_t n = r->status == TERN_STORE_OK ? r->out.n_messages : 0;
        s->msgs = n ? calloc(n, sizeof(*s->msgs)) : NULL;
        if (n && s->msgs == NULL) {
            tern_store_req_free(r);
            pop3__login_refused(s, "-ERR [SYS/TEMP] Out of memory");
            return;
        }
        size_t k = 0;
        bool hide_deleted = s->cfg->pop3.delete_policy == TERN_POP3_DELETE_KEEP;
        for (size_t i = 0; i < n; i++) {
            const tern_message_info *mi = &r->out.messages[i];
            /* delete_policy keep leaves DELE'd messages flagged: they
             * were retrieved and deleted by POP3 already. */
            if (hide_deleted && (mi->flags & TERN_FLAG_DELETED))
                continue;
            s->msgs[k].uid = mi->uid;
            s->msgs[k].size = mi->size;
            k++;
        }
        tern_store_req_free(r);
        if (k > 1)
            qsort(s->msgs, k, sizeof(*s->msgs), msg_cmp);
        if (k > s->cfg->pop3.max_messages)
            k = s->cfg->pop3.max_messages; /* the oldest; the rest wait for the next login */
        s->n_msgs = k;
    }
    pop3__snapshot_finish(s);
}

static void pop3__snapshot_finish(pop3_session *s)
{
    s->total_bytes = 0;
    for (size_t i = 0; i < s->n_msgs; i++)
        s->total_bytes += s->msgs[i].size;
    s->state = ST_TRANSACTION;
    TLOG_INFO(MOD, "event=login session=%s ip=%s account=%s messages=%zu octets=%" PRIu64,
              s->base.id, s->conn.peer_ip, s->account, s->n_msgs, s->total_bytes);
    pop3__reply(s, "+OK Logged in, %zu messages (%" PRIu64 " octets)", s->n_msgs, s->total_bytes);
    pop3__idle(s);
}

static void pop3__login(pop3_session *s, const char *account)
{
    free(s->account);
    s->account = strdup(account ? account : "");
    if (s->account == NULL || s->account[0] == '\0') {
        pop3__login_refused(s, "-ERR [SYS/TEMP] Out of memory");
        return;
    }
    if (!tern_pop3_lock_acquire(s->account)) {
        TLOG_INFO(MOD, "event=in_use session=%s account=%s", s->base.id, s->account);
        pop3__login_refused(s, "-ERR [IN-USE] Maildrop is locked by another session");
        return;
    }
    s->locked = true;
    if (tern_pop3_login_too_soon(s->account, s->cfg->pop3.login_delay_ms, tern_now_ms())) {
        pop3__login_refused(s, "-ERR [LOGIN-DELAY] Logged in too recently, try again later");
        return;
    }
    tern_store_req *r = tern_store_req_new(TERN_STORE_MAILBOX_STATUS, pop3__status_done, s);
    if (r == NULL) {
        pop3__login_refused(s, "-ERR [SYS/TEMP] Out of memory");
        return;
    }
    r->in.account = s->account;
    r->in.name = "INBOX";
    if (tern_store_submit(s->base.host->store_client, r) != 0) {
        tern_store_req_free(r);
        pop3__login_refused(s, "-ERR [SYS/TEMP] Mailbox unavailable, try again later");
        return;
    }
    s->pending++;
    s->busy = true;
    tern_conn_pause(&s->conn);
}

/* --- TRANSACTION ------------------------------------------------------- */

static void cmd_stat(pop3_session *s, const tern_pop3_cmd *cmd)
{
    if (cmd->rest.len || cmd->empty_arg) {
        pop3__fail(s, "-ERR Syntax: STAT");
        return;
    }
    pop3__reply(s, "+OK %zu %" PRIu64, s->n_msgs - s->n_deleted,
                s->total_bytes - s->deleted_bytes);
}

static void cmd_list_uidl(pop3_session *s, const tern_pop3_cmd *cmd)
{
    bool uidl = cmd->verb == TERN_POP3_CMD_UIDL;
    char u[40];
    if (cmd->n_args > 1 || cmd->extra_args || cmd->empty_arg) {
        pop3__fail(s, uidl ? "-ERR Syntax: UIDL [msg]" : "-ERR Syntax: LIST [msg]");
        return;
    }
    if (cmd->n_args == 1) {
        size_t i;
        pop3_msg *m = pop3__msg_arg(s, cmd->args[0], &i);
        if (m == NULL)
            return;
        if (uidl) {
            pop3__uidl(s, m, u, sizeof(u));
            pop3__reply(s, "+OK %zu %s", i + 1, u);
        } else {
            pop3__reply(s, "+OK %zu %" PRIu64, i + 1, m->size);
        }
        return;
    }
    if (uidl)
        tern_conn_printf(&s->conn, "+OK Unique-ID listing follows\r\n");
    else
        tern_conn_printf(&s->conn, "+OK %zu messages (%" PRIu64 " octets)\r\n",
                         s->n_msgs - s->n_deleted, s->total_bytes - s->deleted_bytes);
    /* Batched: one write per few hundred lines, not one per message. */
    char buf[8192];
    size_t o = 0;
    for (size_t i = 0; i < s->n_msgs; i++) {
        const pop3_msg *m = &s->msgs[i];
        if (m->deleted)
            continue;
        int n;
        if (uidl) {
            pop3__uidl(s, m, u, sizeof(u));
            n = snprintf(buf + o, sizeof(buf) - o, "%zu %s\r\n", i + 1, u);
        } else {
            n = snprintf(buf + o, sizeof(buf) - o, "%zu %" PRIu64 "\r\n", i + 1, m->size);
        }
        o += (size_t)n;
        if (sizeof(buf) - o < 64) {
            tern_conn_write(&s->conn, buf, o);
            o = 0;
        }
    }
    memcpy(buf + o, ".\r\n", 3);
    tern_conn_write(&s->conn, buf, o + 3);
}

static void cmd_dele(pop3_session *s, const tern_pop3_cmd *cmd)
{
    if (cmd->n_args != 1 || cmd->extra_args || cmd->empty_arg) {
        pop3__fail(s, "-ERR Syntax: DELE msg");
        return;
    }
    size_t i;
    pop3_msg *m = pop3__msg_arg(s, cmd->args[0], &i);
    if (m == NULL)
        return;
    m->deleted = true;
    s->n_deleted++;
    s->deleted_bytes += m->size;
    pop3__reply(s, "+OK Message %zu deleted", i + 1);
}

static void cmd_noop(pop3_session *s, const tern_pop3_cmd *cmd)
{
    if (cmd->rest.len || cmd->empty_arg) {
        pop3__fail(s, "-ERR Syntax: NOOP");
        return;
    }
    pop3__reply(s, "+OK");
}

static void cmd_rset(pop3_session *s, const tern_pop3_cmd *cmd)
{
    if (cmd->rest.len || cmd->empty_arg) {
        pop3__fail(s, "-ERR Syntax: RSET");
        return;
    }
    for (size_t i = 0; i < s->n_msgs; i++)
        s->msgs[i].deleted = false;
    s->n_deleted = 0;
    s->deleted_bytes = 0;
    pop3__reply(s, "+OK %zu messages (%" PRIu64 " octets)", s->n_msgs, s->total_bytes);
}

/* --- RETR and TOP: streaming --------------------------------------------- */

static void pop3__stream_next(pop3_session *s);

static void pop3__stream_end(pop3_session *s)
{
    s->retrieved++;
    pop3__idle(s);
}

static void pop3__body_done(tern_store_req *r)
{
    pop3_session *s = r->data;
    pop3_stream *o = &s->out;
    s->pending--;
    /* req_out stays set while we write: a write may flush at once and call
     * on_drain, which must not ask for another chunk under us. */
    if (s->conn_closed || s->state == ST_CLOSED) {
        o->req_out = false;
        tern_store_req_free(r);
        pop3__maybe_free(s);
        return;
    }
    if (r->status != TERN_STORE_OK) {
        TLOG_WARN(MOD, "event=fetch_failed session=%s account=%s uid=%" PRIu32 " error=\"%s\"",
                  s->base.id, s->account, s->msgs[o->idx].uid, r->error);
        int st = r->status;
        tern_store_req_free(r);
        o->active = false;
        o->req_out = false;
        if (o->started) {
            /* Part of it is out: no way to say so in the middle of a
             * multi-line response but to stop talking. */
            pop3__goodbye(s, NULL);
            return;
        }
        pop3__reply(s, st == TERN_STORE_ENOTFOUND
                           ? "-ERR Message was removed by another session"
                           : "-ERR [SYS/TEMP] Message unavailable, try again later");
        pop3__idle(s);
        return;
    }
    if (!o->started) {
        if (o->top)
            tern_conn_printf(&s->conn, "+OK\r\n");
        else
            tern_conn_printf(&s->conn, "+OK %" PRIu64 " octets\r\n", s->msgs[o->idx].size);
        o->started = true;
    }
    size_t used = 0;
    while (used < r->out.body_len && !tern_pop3_stuffer_done(&o->st)) {
        size_t w = 0;
        size_t chunk = r->out.body_len - used;
        if (chunk > BODY_CHUNK)
            chunk = BODY_CHUNK;
        used += tern_pop3_stuffer_feed(&o->st, r->out.body + used, chunk, o->buf, STUFF_CAP, &w);
        if (w)
            tern_conn_write(&s->conn, o->buf, w);
    }
    o->offset += r->out.body_len;
    bool end = r->out.body_len == 0 || o->offset >= r->out.body_total ||
               tern_pop3_stuffer_done(&o->st);
    tern_store_req_free(r);
    if (end) {
        o->active = false;
        o->req_out = false;
        size_t w = tern_pop3_stuffer_finish(&o->st, o->buf, STUFF_CAP);
        tern_conn_write(&s->conn, o->buf, w);
        pop3__stream_end(s);
        return;
    }
    o->req_out = false;
    /* Back-pressure: the next chunk is asked for once the socket drained. */
    if (tern_conn_unsent(&s->conn) <= OUT_HIGH_WATER)
        pop3__stream_next(s);
}

static void pop3__stream_next(pop3_session *s)
{
    pop3_stream *o = &s->out;
    tern_store_req *r = tern_store_req_new(TERN_STORE_FETCH_BODY, pop3__body_done, s);
    if (r == NULL) {
        pop3__goodbye(s, o->started ? NULL : "-ERR [SYS/TEMP] Out of memory");
        return;
    }
    r->in.account = s->account;
    r->in.name = "INBOX";
    r->in.uid = s->msgs[o->idx].uid;
    r->in.offset = o->offset;
    r->in.max_len = BODY_CHUNK;
    if (tern_store_submit(s->base.host->store_client, r) != 0) {
        tern_store_req_free(r);
        o->active = false;
        if (o->started) {
            pop3__goodbye(s, NULL);
        } else {
            pop3__reply(s, "-ERR [SYS/TEMP] Message unavailable, try again later");
            pop3__idle(s);
        }
        return;
    }
    s->pending++;
    o->req_out = true;
}

static void pop3__stream_start(pop3_session *s, size_t idx, bool top, uint64_t lines)
{
    pop3_stream *o = &s->out;
    if (o->buf == NULL && (o->buf = malloc(STUFF_CAP)) == NULL) {
        pop3__reply(s, "-ERR [SYS/TEMP] Out of memory");
        return;
    }
    o->active = true;
    o->started = false;
    o->top = top;
    o->idx = idx;
    o->offset = 0;
    tern_pop3_stuffer_init(&o->st, top, lines);
    pop3__busy(s);
    pop3__stream_next(s);
}

static void cmd_retr(pop3_session *s, const tern_pop3_cmd *cmd)
{
    if (cmd->n_args != 1 || cmd->extra_args || cmd->empty_arg) {
        pop3__fail(s, "-ERR Syntax: RETR msg");
        return;
    }
    size_t i;
    if (pop3__msg_arg(s, cmd->args[0], &i) == NULL)
        return;
    pop3__stream_start(s, i, false, 0);
}

static void cmd_top(pop3_session *s, const tern_pop3_cmd *cmd)
{
    if (cmd->n_args != 2 || cmd->extra_args || cmd->empty_arg) {
        pop3__fail(s, "-ERR Syntax: TOP msg lines");
        return;
    }
    uint64_t lines;
    /* A non-negative count (RFC 1939 7); one past the message's line
     * count simply gives the whole body. */
    if (tern_pop3_parse_number(cmd->args[1], UINT64_MAX, &lines) != 0) {
        pop3__fail(s, "-ERR Invalid line count");
        return;
    }
    size_t i;
    if (pop3__msg_arg(s, cmd->args[0], &i) == NULL)
        return;
    pop3__stream_start(s, i, true, lines);
}

/* --- QUIT and UPDATE ---------------------------------------------------- */

static void pop3__update_done(pop3_session *s, bool ok)
{
    pop3__unlock(s);
    if (ok) {
        TLOG_INFO(MOD, "event=update session=%s account=%s deleted=%zu policy=%d", s->base.id,
                  s->account, s->n_deleted, (int)s->cfg->pop3.delete_policy);
        pop3__goodbye(s, "+OK Bye");
    } else {
        pop3__goodbye(s, "-ERR [SYS/TEMP] Some deleted messages were not removed");
    }
}

/* The deleted messages' UIDs as ranges, in the arena of the request. */
static bool pop3__deleted_set(pop3_session *s, tern_store_req *r)
{
    tern_uid_range *rs = tern_arena_alloc(&r->arena, s->n_deleted * sizeof(*rs));
    if (rs == NULL)
        return false;
    size_t n = 0;
    for (size_t i = 0; i < s->n_msgs; i++) {
        if (!s->msgs[i].deleted)
            continue;
        uint32_t u = s->msgs[i].uid;
        if (n > 0 && rs[n - 1].last + 1 == u)
            rs[n - 1].last = u;
        else
            rs[n++] = (tern_uid_range){u, u};
    }
    r->in.uids.ranges = rs;
    r->in.uids.n = n;
    return true;
}

static void pop3__update_step(tern_store_req *r);

static bool pop3__update_submit(pop3_session *s, tern_store_op op)
{
    tern_store_req *r = tern_store_req_new(op, pop3__update_step, s);
    if (r == NULL)
        return false;
    r->in.account = s->account;
    r->in.name = "INBOX";
    if (op != TERN_STORE_MAILBOX_LIST && !pop3__deleted_set(s, r)) {
        tern_store_req_free(r);
        return false;
    }
    if (op == TERN_STORE_MAILBOX_LIST)
        r->in.name = NULL;
    if (op == TERN_STORE_SET_FLAGS) {
        r->in.flags = TERN_FLAG_DELETED |
                      (s->cfg->pop3.delete_policy == TERN_POP3_DELETE_KEEP ? TERN_FLAG_SEEN : 0);
        r->in.flags_mode = TERN_FLAGS_ADD;
    }
    if (op == TERN_STORE_MOVE)
        r->in.new_name = s->trash;
    if (tern_store_submit(s->base.host->store_client, r) != 0) {
        tern_store_req_free(r);
        return false;
    }
    s->pending++;
    return true;
}

static void pop3__update_step(tern_store_req *r)
{
    pop3_session *s = r->data;
    s->pending--;
    tern_store_op op = r->op;
    int st = r->status;
    if (st != TERN_STORE_OK)
        TLOG_WARN(MOD, "event=update_failed session=%s account=%s op=%d error=\"%s\"", s->base.id,
                  s->account, (int)op, r->error);
    if (op == TERN_STORE_MAILBOX_LIST && st == TERN_STORE_OK) {
        snprintf(s->trash, sizeof(s->trash), "Trash");
        for (size_t i = 0; i < r->out.n_mailboxes; i++)
            if (r->out.mailboxes[i].special_use & TERN_SPECIAL_TRASH) {
                snprintf(s->trash, sizeof(s->trash), "%s", r->out.mailboxes[i].name);
                break;
            }
    }
    tern_store_req_free(r);
    /* The client may be gone: UPDATE still finishes (it sent QUIT). */
    if (st != TERN_STORE_OK) {
        pop3__update_done(s, false);
        pop3__maybe_free(s);
        return;
    }
    bool ok = true;
    switch (op) {
    case TERN_STORE_MAILBOX_LIST:
        ok = pop3__update_submit(s, TERN_STORE_MOVE);
        break;
    case TERN_STORE_SET_FLAGS:
        if (s->cfg->pop3.delete_policy == TERN_POP3_DELETE_EXPUNGE)
            ok = pop3__update_submit(s, TERN_STORE_EXPUNGE);
        else
            pop3__update_done(s, true);
        break;
    default:
        pop3__update_done(s, true);
        break;
    }
    if (!ok)
        pop3__update_done(s, false);
    pop3__maybe_free(s);
}

static void cmd_quit(pop3_session *s, const tern_pop3_cmd *cmd)
{
    (void)cmd;
    if (s->state != ST_TRANSACTION || s->n_deleted == 0) {
        pop3__goodbye(s, "+OK Bye");
        return;
    }
    s->state = ST_UPDATE;
    pop3__busy(s);
    bool ok = s->cfg->pop3.delete_policy == TERN_POP3_DELETE_TRASH
                  ? pop3__update_submit(s, TERN_STORE_MAILBOX_LIST)
                  : pop3__update_submit(s, TERN_STORE_SET_FLAGS);
    if (!ok)
        pop3__update_done(s, false);
}

/* --- command dispatch ------------------------------------------------- */

typedef struct pop3_cmd_def {
    tern_pop3_verb verb;
    unsigned states;
    void (*handler)(pop3_session *s, const tern_pop3_cmd *cmd);
} pop3_cmd_def;

static const pop3_cmd_def pop3_commands[] = {
    {TERN_POP3_CMD_CAPA, ST_AUTHORIZATION | ST_TRANSACTION, cmd_capa},
    {TERN_POP3_CMD_STLS, ST_AUTHORIZATION, cmd_stls},
    {TERN_POP3_CMD_UTF8, ST_AUTHORIZATION, cmd_utf8},
    {TERN_POP3_CMD_USER, ST_AUTHORIZATION, cmd_user},
    {TERN_POP3_CMD_PASS, ST_AUTHORIZATION, cmd_pass},
    {TERN_POP3_CMD_APOP, ST_AUTHORIZATION, cmd_apop},
    {TERN_POP3_CMD_AUTH, ST_AUTHORIZATION, cmd_auth},
    {TERN_POP3_CMD_QUIT, ST_AUTHORIZATION | ST_TRANSACTION, cmd_quit},
    {TERN_POP3_CMD_STAT, ST_TRANSACTION, cmd_stat},
    {TERN_POP3_CMD_LIST, ST_TRANSACTION, cmd_list_uidl},
    {TERN_POP3_CMD_UIDL, ST_TRANSACTION, cmd_list_uidl},
    {TERN_POP3_CMD_RETR, ST_TRANSACTION, cmd_retr},
    {TERN_POP3_CMD_TOP, ST_TRANSACTION, cmd_top},
    {TERN_POP3_CMD_DELE, ST_TRANSACTION, cmd_dele},
    {TERN_POP3_CMD_NOOP, ST_TRANSACTION, cmd_noop},
    {TERN_POP3_CMD_RSET, ST_TRANSACTION, cmd_rset},
};

static void pop3__dispatch(pop3_session *s, const char *line, size_t len)
{
    tern_pop3_cmd cmd;
    if (tern_pop3_parse_command(line, len, &cmd) != 0) {
        pop3__fail(s, "-ERR Unknown command");
        return;
    }
    /* PASS must come right after USER (RFC 1939 7). */
    if (cmd.verb != TERN_POP3_CMD_PASS)
        s->have_user = false;
    for (size_t i = 0; i < sizeof(pop3_commands) / sizeof(pop3_commands[0]); i++) {
        const pop3_cmd_def *d = &pop3_commands[i];
        if (d->verb != cmd.verb)
            continue;
        if (!(d->states & s->state)) {
            pop3__fail(s, s->state == ST_TRANSACTION ? "-ERR Already logged in"
                                                     : "-ERR Command not valid in this state");
            return;
        }
        d->handler(s, &cmd);
        return;
    }
    TLOG_DEBUG(MOD, "event=unknown_command session=%s", s->base.id);
    pop3__fail(s, "-ERR Unknown command");
}

/* Runs input through the state machine until it is used up or we must wait. */
static void pop3__process(pop3_session *s)
{
    if (s->in_process)
        return;
    s->in_process = true;
    while (s->state != ST_CLOSED && !s->busy && !s->conn.paused && !s->conn.closing) {
        size_t len;
        const uint8_t *in = tern_conn_input(&s->conn, &len);
        if (len == 0)
            break;
        if (s->state == ST_HANDSHAKE || s->state == ST_UPDATE)
            break;
        /* Replies not yet taken by the client: stop parsing until they are,
         * so a client that pipelines without reading cannot grow our queue. */
        if (tern_conn_unsent(&s->conn) > OUT_HIGH_WATER) {
            tern_conn_pause(&s->conn);
            break;
        }
        tern_pop3_line_status st;
        size_t used = tern_pop3_line_feed(&s->lr, in, len, &st);
        tern_conn_consume(&s->conn, used);
        if (st == TERN_POP3_LINE_MORE)
            continue;
        tern_conn_set_timeout(&s->conn, s->cfg->pop3.idle_timeout_ms);
        if (s->in_sasl) {
            /* The callback replies and says when to read again. An
             * over-long or broken line is not base64: "!" makes the driver
             * end the exchange as MALFORMED. */
            pop3__busy(s);
            if (st == TERN_POP3_LINE_OK)
                tern_sasl_srv_response(s->sasl, s->lr.buf, strlen(s->lr.buf));
            else
                tern_sasl_srv_response(s->sasl, "!", 1);
            continue;
        }
        switch (st) {
        case TERN_POP3_LINE_OK:
            pop3__dispatch(s, s->lr.buf, strlen(s->lr.buf));
            break;
        case TERN_POP3_LINE_TOO_LONG:
            if (s->errors + 1 < s->cfg->pop3.max_errors)
                pop3__reply(s, "-ERR Line too long (limit %u octets)",
                            s->cfg->pop3.max_command_line);
            pop3__error(s);
            break;
        case TERN_POP3_LINE_BAD_CHAR:
            pop3__fail(s, "-ERR Invalid character in command");
            break;
        default:
            break;
        }
        if (s->draining && s->state == ST_AUTHORIZATION && !s->busy)
            pop3__goodbye(s, "-ERR [SYS/TEMP] Server shutting down");
    }
    s->in_process = false;
}

/* --- connection callbacks --------------------------------------------- */

static void pop3__on_data(tern_conn *c)
{
    pop3__process(c->data);
}

static void pop3__on_tls(tern_conn *c)
{
    pop3_session *s = c->data;
    char sni[300];
    TLOG_INFO(MOD, "event=tls session=%s version=%s cipher=%s sni=%s peer=%s", s->base.id,
              tern_tls_conn_version(c->tls), tern_tls_conn_cipher(c->tls),
              tern_log_q(sni, sizeof(sni), tern_tls_conn_sni(c->tls)),
              tern_tls_conn_peer_subject(c->tls) ? "present" : "none");
    if (s->lc->tls == TERN_TLS_IMPLICIT && s->state == ST_HANDSHAKE) {
        pop3__greet(s);
        return;
    }
    /* RFC 2595 4: forget what was learnt before TLS; no new greeting. */
    s->state = ST_AUTHORIZATION;
    s->have_user = false;
    tern_conn_set_timeout(&s->conn, s->cfg->pop3.idle_timeout_ms);
}

static void pop3__on_timeout(tern_conn *c)
{
    pop3_session *s = c->data;
    if (s->state == ST_UPDATE)
        return; /* the store is finishing QUIT's work; it will close */
    TLOG_INFO(MOD, "event=timeout session=%s state=%d", s->base.id, (int)s->state);
    /* RFC 1939 3: an autologout does not enter UPDATE: nothing is deleted. */
    pop3__goodbye(s, s->state == ST_HANDSHAKE ? NULL : "-ERR Autologout; idle for too long");
}

static void pop3__on_error(tern_conn *c, const char *reason)
{
    pop3_session *s = c->data;
    TLOG_DEBUG(MOD, "event=connection_error session=%s reason=\"%s\"", s->base.id, reason);
    if (s->state != ST_UPDATE)
        s->state = ST_CLOSED;
}

static void pop3__on_drain(tern_conn *c)
{
    pop3_session *s = c->data;
    if (s->out.active && !s->out.req_out && s->state == ST_TRANSACTION) {
        if (tern_conn_unsent(c) <= OUT_HIGH_WATER / 2)
            pop3__stream_next(s);
        return;
    }
    if (s->conn.paused && !s->busy && tern_conn_unsent(c) <= OUT_HIGH_WATER / 2)
        pop3__continue(s);
}

static void pop3__continue(pop3_session *s)
{
    if (s->state == ST_CLOSED || s->busy || s->conn_closed || s->in_process)
        return;
    tern_conn_resume(&s->conn);
}

static void pop3__free(pop3_session *s)
{
    tern_sasl_srv_free(s->sasl);
    pop3__unlock(s);
    free(s->account);
    free(s->msgs);
    free(s->out.buf);
    if (s->auth)
        tern_auth_unref(s->auth);
    tern_config_unref(s->cfg);
    if (s->tls)
        tern_tls_server_unref(s->tls);
    free(s->linebuf);
    free(s);
}

static void pop3__maybe_free(pop3_session *s)
{
    if (s->conn_closed && s->pending == 0)
        pop3__free(s);
}

static void pop3__on_close(tern_conn *c)
{
    pop3_session *s = c->data;
    TLOG_INFO(MOD, "event=disconnect session=%s ip=%s account=%s retrieved=%u errors=%u "
              "bytes_in=%llu bytes_out=%llu ms=%llu", s->base.id, c->peer_ip,
              s->account ? s->account : "-", s->retrieved, s->errors,
              (unsigned long long)c->bytes_in, (unsigned long long)c->bytes_out,
              (unsigned long long)(tern_now_ms() - s->started_ms));
    s->conn_closed = true;
    s->state = ST_CLOSED;
    /* The driver may still wait for auth/ or a delay: it frees itself. */
    tern_sasl_srv_free(s->sasl);
    s->sasl = NULL;
    /* The lock is released at free, after UPDATE's store work: the next
     * session's snapshot must not see messages being deleted. */
    tern_session_unlink(&s->base);
    pop3__maybe_free(s);
}

static const tern_conn_cbs pop3_conn_cbs = {
    .on_data = pop3__on_data,
    .on_tls = pop3__on_tls,
    .on_timeout = pop3__on_timeout,
    .on_error = pop3__on_error,
    .on_drain = pop3__on_drain,
    .on_close = pop3__on_close,
};

/* --- drain ------------------------------------------------------------ */

static void pop3__drain(tern_session *base)
{
    pop3_session *s = (pop3_session *)base;
    s->draining = true;
    if (s->state == ST_HANDSHAKE)
        pop3__goodbye(s, NULL);
    else if (s->state == ST_AUTHORIZATION && !s->busy)
        pop3__goodbye(s, "-ERR [SYS/TEMP] Server shutting down");
    /* TRANSACTION runs on: the client may still QUIT and commit. */
}

static void pop3__shutdown(tern_session *base)
{
    pop3_session *s = (pop3_session *)base;
    if (s->state == ST_CLOSED || s->state == ST_UPDATE)
        return;
    pop3__goodbye(s, s->state == ST_HANDSHAKE ? NULL : "-ERR [SYS/TEMP] Server shutting down");
}

static const tern_session_ops pop3_session_ops = {
    .drain = pop3__drain,
    .shutdown = pop3__shutdown,
};

/* --- creation --------------------------------------------------------- */

int tern_pop3_session_start(tern_session_host *h, tern_session_args *a)
{
    pop3_session *s = calloc(1, sizeof(*s));
    const tern_config *cfg = a->cfg;
    char *linebuf = s ? malloc(TERN_SASL_SRV_LINE_MAX + 2) : NULL;
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
    s->base.ops = &pop3_session_ops;
    tern_uuid(s->base.id);
    s->cfg = a->cfg;
    s->tls = a->tls;
    s->auth = a->auth;
    s->li = a->listener;
    s->lc = &cfg->listeners[a->listener];
    s->linebuf = linebuf;
    tern_pop3_line_init(&s->lr, linebuf, cfg->pop3.max_command_line);
    /* The APOP timestamp: the session's random UUID makes it unique. */
    if (cfg->pop3.apop && s->auth && (tern_auth_capabilities(s->auth) & TERN_AUTH_CAP_CRAM_MD5))
        snprintf(s->greeting_ts, sizeof(s->greeting_ts), "<%s@%s>", s->base.id,
                 cfg->server.hostname);
    s->started_ms = tern_now_ms();
    memcpy(&s->base.peer, &a->peer, sizeof(s->base.peer));
    tern_session_link(h, &s->base);
    int r = tern_conn_init(&s->conn, h->loop, &h->conn_worker, a->fd, s->lc->buffer_size,
                           &pop3_conn_cbs, s);
    if (r < 0) {
        tern_session_unlink(&s->base);
        pop3__free(s);
        return 0; /* accounted for by the unlink above */
    }
    if (r > 0) {
        s->state = ST_CLOSED;
        return 0; /* on_close cleans up */
    }
    TLOG_INFO(MOD, "event=connect session=%s ip=%s port=%d listener=%s tls=%s", s->base.id,
              s->conn.peer_ip, s->conn.peer_port, s->lc->name,
              s->lc->tls == TERN_TLS_IMPLICIT   ? "implicit"
              : s->lc->tls == TERN_TLS_STARTTLS ? "starttls"
                                                : "none");
    if (s->lc->tls == TERN_TLS_IMPLICIT) {
        tern_tls_conn *t = s->tls ? tern_tls_conn_new(s->tls, s->li) : NULL;
        if (t == NULL) {
            TLOG_ERR(MOD, "event=tls_unavailable session=%s", s->base.id);
            s->state = ST_CLOSED;
            tern_conn_close(&s->conn, false);
            return 0;
        }
        s->state = ST_HANDSHAKE;
        tern_conn_set_timeout(&s->conn, s->cfg->pop3.idle_timeout_ms);
        tern_conn_start(&s->conn, t);
        return 0;
    }
    pop3__greet(s);
    tern_conn_start(&s->conn, NULL);
    return 0;
}

size_t tern_pop3_refusal(const char *why, char *buf, size_t size)
{
    int n = snprintf(buf, size, "-ERR [SYS/TEMP] Too many connections (%s), try again later\r\n",
                     why);
    if (n < 0)
        return 0;
    return (size_t)n < size ? (size_t)n : size - 1;
}
