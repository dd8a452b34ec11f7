/* The SMTP client session (see smtp_client.h): one server, one
 * connection, one message at a time. A state machine over tern_conn, fed
 * by the pure reply parser. With PIPELINING, MAIL, every RCPT and DATA go
 * out in one write and their replies are matched in order (RFC 2920);
 * without it, one command per reply. With CHUNKING the message goes as
 * one BDAT ... LAST (RFC 3030), unstuffed. When the pool (smtp_pool.c)
 * keeps the connection, the next message starts with RSET on it, and a
 * parked connection found dead before MAIL is answered is replaced by a
 * fresh one. Input: the server's replies (untrusted). */
#include "protocols/smtp/smtp_client.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/base64.h"
#include "lib/log.h"
#include "lib/util.h"
#include "protocols/smtp/downconvert.h"
#include "protocols/smtp/smtp_reply.h"

#define MOD "smtp_client"
#define BODY_CHUNK (256 * 1024)

typedef enum {
    CS_CONNECT = 0, CS_BANNER, CS_EHLO, CS_HELO, CS_STARTTLS, CS_HANDSHAKE, CS_MAIL, CS_RCPT,
    CS_DATA, CS_BODY, CS_DOT, CS_QUIT, CS_DONE, CS_RSET, CS_IDLE, CS_CONVERT, CS_AUTH, CS_AUTH_USER, CS_AUTH_PASS,
} cstate;

static const char *const stage_names[] = {"connect", "banner", "ehlo", "helo", "starttls",
                                          "handshake", "mail", "rcpt", "data", "body", "dot",
                                          "quit", "done", "rset", "idle", "convert", "auth", "auth", "auth"};

struct tern_smtp_client {
    tern_smtp_client_params p;
    tern_smtp_client_cb cb;
    void *arg;
    uv_poll_t poll;
    uv_timer_t ctimer;
    int fd;
    bool poll_init, ctimer_init, conn_init, finished, reported;
    tern_conn conn;
    tern_reply_parser rp;
    tern_ehlo_caps caps;
    cstate st;
    size_t next_rcpt;       /* next RCPT reply expected (index into env->rcpts) */
    size_t accepted;        /* recipients the server took */
    bool pipelined;
    size_t body_off;        /* bytes of the message sent (before stuffing) */
    bool at_line_start;
    tern_smtp_outcome out;
    unsigned handles;
    struct sockaddr_storage addr;   /* a copy: a fresh connection may need it later */
    bool chunking;          /* this message goes with BDAT */
    bool parked;            /* idle in the pool (keep->gone runs at the end) */
    /* The reply to the end of the message (dot or BDAT LAST) was read:
     * only then does a recipient's 2xx mean delivered. Before it, a 2xx
     * is the RCPT reply of a transaction that never completed. */
    bool final_seen;
    bool reused;            /* this transaction runs on a kept connection */
    bool mail_replied;      /* the server answered MAIL FROM on this connection */
    bool reconnecting;      /* the kept connection died: a fresh one follows its close */
    unsigned messages;      /* messages sent on the connection */
    uv_work_t work;         /* 8BITMIME downconversion, off the loop */
    tern_buf conv;          /* the converted message */
    int conv_result;
    bool converted;         /* p.data is final for this peer */
    bool authed;            /* AUTH succeeded on this connection */
    struct sockaddr_storage source; /* a copy of p.source */
};

/* ---- outcome ------------------------------------------------------------ */

static void set_error(tern_smtp_client *c, int cls, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_error(tern_smtp_client *c, int cls, const char *fmt, ...)
{
    if (c->out.session_class == 0)
        c->out.session_class = cls;
    snprintf(c->out.stage, sizeof(c->out.stage), "%s", stage_names[c->st]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->out.error, sizeof(c->out.error), fmt, ap);
    va_end(ap);
}

static void reply_to_error(tern_smtp_client *c, const tern_smtp_reply *r)
{
    set_error(c, r->code >= 500 ? 5 : 4, "%d%s%s %.300s", r->code, r->enhanced[0] ? " " : "",
              r->enhanced, r->text);
}

static void free_client(tern_smtp_client *c)
{
    if (c->p.keep && c->p.keep->gone)
        c->p.keep->gone(c->p.keep->arg, c);
    tern_buf_free(&c->conv);
    free(c->out.rcpts);
    free(c);
}

/* The callback gets its own copy of the outcome: it may hand this
 * connection the next message, which starts a new outcome in c. */
static void report(tern_smtp_client *c)
{
    if (c->reported)
        return;
    c->reported = true;
    if (c->out.stage[0] == '\0')
        snprintf(c->out.stage, sizeof(c->out.stage), "%s", stage_names[c->st]);
    /* The connection ended (closed, timed out, refused) before the
     * server answered the message's end: nothing was delivered, whatever
     * RCPT said. Such recipients read as not tried, and the caller
     * retries them. */
    if (!c->final_seen)
        for (size_t i = 0; i < c->out.n_rcpts; i++)
            if (c->out.rcpts[i].code / 100 == 2)
                memset(&c->out.rcpts[i], 0, sizeof(c->out.rcpts[i]));
    tern_smtp_outcome o = c->out;
    c->out.rcpts = NULL;
    c->cb(c->arg, &o);
    free(o.rcpts);
}

static int begin_connect(tern_smtp_client *c);
static void finish(tern_smtp_client *c, bool flush);

static void handle_closed(uv_handle_t *h)
{
    tern_smtp_client *c = h->data;
    if (--c->handles == 0 && c->finished)
        free_client(c);
}

/* The kept connection is gone: the same message on a new connection,
 * from the start (banner, EHLO, STARTTLS...). */
static void fresh_connection(tern_smtp_client *c)
{
    memset(&c->caps, 0, sizeof(c->caps));
    tern_reply_parser_init(&c->rp);
    c->out.tls = c->out.tls_verified = false;
    c->out.tls_dane = false;
    c->out.tls_version[0] = c->out.tls_cipher[0] = '\0';
    c->out.session_class = 0;
    c->out.stage[0] = c->out.error[0] = '\0';
    c->out.reused = false;
    memset(c->out.rcpts, 0, c->out.n_rcpts * sizeof(*c->out.rcpts));
    c->pipelined = c->mail_replied = false;
    c->final_seen = false;
    c->accepted = c->next_rcpt = 0;
    c->messages = 0;
    c->authed = false;
    if (begin_connect(c) != 0) {
        set_error(c, 4, "4.4.1 cannot open a new connection to %s", c->out.peer);
        finish(c, false);
    }
}

static void conn_on_close(tern_conn *conn)
{
    tern_smtp_client *c = conn->data;
    c->conn_init = false;
    if (c->reconnecting && !c->finished) {
        c->reconnecting = false;
        fresh_connection(c);
        return;
    }
    report(c);
    if (c->handles == 0)
        free_client(c);
}

/* Ends the session: reports and closes what is open. */
static void finish(tern_smtp_client *c, bool flush)
{
    if (c->finished)
        return;
    c->finished = true;
    if (c->ctimer_init) {
        uv_timer_stop(&c->ctimer);
        uv_close((uv_handle_t *)&c->ctimer, handle_closed);
        c->ctimer_init = false;
    }
    if (c->poll_init) {
        uv_poll_stop(&c->poll);
        uv_close((uv_handle_t *)&c->poll, handle_closed);
        c->poll_init = false;
    }
    if (c->conn_init) {
        tern_conn_close(&c->conn, flush); /* report() runs from on_close */
        return;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    report(c);
    if (c->handles == 0)
        free_client(c);
}

/* ---- commands ----------------------------------------------------------- */

/* xtext (RFC 3461 4): '+', '=' and bytes outside 33..126 as +XX. */
static size_t xtext(char *out, size_t size, const char *in)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p && o + 4 < size; p++) {
        if (*p < 33 || *p > 126 || *p == '+' || *p == '=') {
            out[o++] = '+';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        } else
            out[o++] = (char)*p;
    }
    out[o] = '\0';
    return o;
}

static void send_mail(tern_smtp_client *c)
{
    const tern_envelope *e = c->p.env;
    char params[600] = "";
    size_t at = 0;
    if (c->caps.size_given)
        at += (size_t)snprintf(params + at, sizeof(params) - at, " SIZE=%zu", c->p.len);
    if (e->body == TERN_BODY_8BITMIME && c->caps.eightbitmime)
        at += (size_t)snprintf(params + at, sizeof(params) - at, " BODY=8BITMIME");
    if (e->smtputf8 && c->caps.smtputf8)
        at += (size_t)snprintf(params + at, sizeof(params) - at, " SMTPUTF8");
    if (e->requiretls) /* RFC 8689 4.2.1; message_fits checked the peer offers it */
        at += (size_t)snprintf(params + at, sizeof(params) - at, " REQUIRETLS");
    if (c->caps.dsn) {
        if (e->ret != TERN_RET_NONE)
            at += (size_t)snprintf(params + at, sizeof(params) - at, " RET=%s",
                                   e->ret == TERN_RET_FULL ? "FULL" : "HDRS");
        if (e->envid && at + 8 < sizeof(params)) {
            char x[300];
            xtext(x, sizeof(x), e->envid);
            snprintf(params + at, sizeof(params) - at, " ENVID=%s", x);
        }
    }
    tern_conn_printf(&c->conn, "MAIL FROM:<%s>%s\r\n", e->mail_from ? e->mail_from : "", params);
}

static void send_rcpt(tern_smtp_client *c, size_t i)
{
    const tern_spool_rcpt *r = &c->p.env->rcpts[i];
    char params[600] = "";
    size_t at = 0;
    if (c->caps.dsn && r->notify) {
        at += (size_t)snprintf(params, sizeof(params), " NOTIFY=");
        if (r->notify & TERN_NOTIFY_NEVER)
            at += (size_t)snprintf(params + at, sizeof(params) - at, "NEVER");
        else {
            const char *sep = "";
            if (r->notify & TERN_NOTIFY_SUCCESS) {
                at += (size_t)snprintf(params + at, sizeof(params) - at, "%sSUCCESS", sep);
                sep = ",";
            }
            if (r->notify & TERN_NOTIFY_FAILURE) {
                at += (size_t)snprintf(params + at, sizeof(params) - at, "%sFAILURE", sep);
                sep = ",";
            }
            if (r->notify & TERN_NOTIFY_DELAY)
                at += (size_t)snprintf(params + at, sizeof(params) - at, "%sDELAY", sep);
        }
    }
    if (c->caps.dsn && r->orcpt && at + 8 < sizeof(params))
        snprintf(params + at, sizeof(params) - at, " ORCPT=%s", r->orcpt);
    tern_conn_printf(&c->conn, "RCPT TO:<%s>%s\r\n", r->addr, params);
}

static size_t skip_done(const tern_smtp_client *c, size_t i)
{
    while (i < c->p.env->n_rcpts && c->p.env->rcpts[i].done)
        i++;
    return i;
}

/* Writes the message with dot-stuffing, a chunk at a time (the rest when
 * the output drains), then the final dot; with BDAT, the bytes as they
 * are (the BDAT command announced their count). */
static void send_body(tern_smtp_client *c)
{
    const uint8_t *d = c->p.data;
    size_t len = c->p.len;
    size_t end = c->body_off + BODY_CHUNK < len ? c->body_off + BODY_CHUNK : len;
    if (c->chunking) {
        tern_conn_write(&c->conn, d + c->body_off, end - c->body_off);
        c->body_off = end;
        if (c->body_off < len)
            return;
        c->st = CS_DOT;
        tern_conn_set_timeout(&c->conn, c->p.data_timeout_ms);
        return;
    }
    size_t run = c->body_off;
    for (size_t i = c->body_off; i < end; i++) {
        if (c->at_line_start && d[i] == '.') {
            tern_conn_write(&c->conn, d + run, i - run);
            tern_conn_write(&c->conn, ".", 1);
            run = i;
        }
        c->at_line_start = d[i] == '\n';
    }
    tern_conn_write(&c->conn, d + run, end - run);
    c->body_off = end;
    if (c->body_off < len)
        return; /* on_drain continues */
    if (len > 0 && d[len - 1] != '\n')
        tern_conn_write(&c->conn, "\r\n", 2);
    tern_conn_write(&c->conn, ".\r\n", 3);
    c->st = CS_DOT;
    tern_conn_set_timeout(&c->conn, c->p.data_timeout_ms);
}

static void quit(tern_smtp_client *c)
{
    c->st = CS_QUIT;
    tern_conn_printf(&c->conn, "QUIT\r\n");
    tern_conn_set_timeout(&c->conn, 10000);
}

/* ---- replies ------------------------------------------------------------ */

/* What this message needs of the server; false: refused (and QUIT sent). */
static bool message_fits(tern_smtp_client *c)
{
    bool authenticated = c->out.tls_dane || (c->out.tls_verified && c->p.mx_authenticated);
    if (c->p.env->requiretls && !(c->out.tls && authenticated && c->caps.requiretls)) {
        /* RFC 8689 4.2.1: TLS, a verified certificate (PKIX for an MX
         * name from an authenticated source, or DANE) and REQUIRETLS
         * offered, or the message is not sent; section 5: it comes back
         * with 5.7.10. Checked per message: a kept connection carries
         * messages with and without. */
        const char *name = c->p.tls_name ? c->p.tls_name : c->out.peer;
        if (!c->out.tls)
            set_error(c, 5, "5.7.10 REQUIRETLS: %s does not offer STARTTLS", name);
        else if (!c->out.tls_verified)
            set_error(c, 5, "5.7.10 REQUIRETLS: the certificate of %s does not verify", name);
        else if (!authenticated)
            set_error(c, 5, "5.7.10 REQUIRETLS: the MX host %s was not found through DNSSEC "
                            "(or MTA-STS), so its certificate proves nothing", name);
        else
            set_error(c, 5, "5.7.10 REQUIRETLS: %s does not support REQUIRETLS", name);
        quit(c);
        return false;
    }
    if (c->p.env->smtputf8 && !c->caps.smtputf8) {
        set_error(c, 5, "5.6.7 the server does not support SMTPUTF8, which this message needs");
        quit(c);
        return false;
    }
    if (c->caps.size_given && c->caps.size > 0 && c->p.len > c->caps.size) {
        set_error(c, 5, "5.3.4 message of %zu bytes exceeds the server's limit of %llu",
                  c->p.len, (unsigned long long)c->caps.size);
        quit(c);
        return false;
    }
    c->chunking = c->p.use_chunking && c->caps.chunking;
    return true;
}

static void send_transaction(tern_smtp_client *c);

/* The message as this peer can take it: MAIL (or RSET first on a kept
 * connection). */
static void go_transaction(tern_smtp_client *c)
{
    if (!message_fits(c))
        return;
    if (c->reused) {
        c->st = CS_RSET;
        tern_conn_printf(&c->conn, "RSET\r\n");
        if (c->caps.pipelining)
            send_transaction(c); /* RFC 2920 3.1: RSET may lead a group */
        return;
    }
    c->st = CS_MAIL;
    send_transaction(c);
}

static void convert_work(uv_work_t *w)
{
    tern_smtp_client *c = w->data;
    c->conv_result = tern_downconvert_8bit(c->p.data, c->p.len, &c->conv);
}

static void convert_done(uv_work_t *w, int status)
{
    tern_smtp_client *c = w->data;
    c->handles--;
    if (c->finished) {
        if (c->handles == 0 && !c->conn_init)
            free_client(c);
        return;
    }
    if (status != 0 || c->conv_result < 0) {
        set_error(c, 4, "4.3.0 cannot convert the message to 7 bit (out of memory)");
        quit(c);
        return;
    }
    c->converted = true;
    if (c->conv_result == 1) {
        TLOG_INFO(MOD, "event=downconverted peer=%s size=%zu new_size=%zu", c->out.peer, c->p.len,
                  c->conv.len);
        c->p.data = c->conv.data;
        c->p.len = c->conv.len;
    }
    go_transaction(c);
}

/* RFC 6152 3: a server without 8BITMIME gets 8-bit parts as
 * quoted-printable. The conversion runs on the thread pool (a big message
 * takes a while); the connection waits. */
static void prepare_transaction(tern_smtp_client *c)
{
    const tern_envelope *e = c->p.env;
    bool utf8_refused = e->smtputf8 && !c->caps.smtputf8; /* message_fits bounces it */
    if (!c->converted && !c->caps.eightbitmime && !utf8_refused &&
        (e->body == TERN_BODY_8BITMIME || tern_has_8bit(c->p.data, c->p.len))) {
        c->st = CS_CONVERT;
        c->work.data = c;
        tern_buf_init(&c->conv, 0);
        if (uv_queue_work(c->p.loop, &c->work, convert_work, convert_done) == 0) {
            c->handles++;
            return;
        }
        set_error(c, 4, "4.3.0 cannot convert the message to 7 bit");
        quit(c);
        return;
    }
    go_transaction(c);
}

/* MAIL FROM, and with PIPELINING every RCPT and DATA behind it (BDAT
 * waits for the RCPT replies: its data cannot be taken back). */
static void send_transaction(tern_smtp_client *c)
{
    const tern_envelope *e = c->p.env;
    send_mail(c);
    c->next_rcpt = skip_done(c, 0);
    if (c->caps.pipelining) {
        c->pipelined = true;
        for (size_t i = c->next_rcpt; i < e->n_rcpts; i = skip_done(c, i + 1))
            send_rcpt(c, i);
        if (!c->chunking)
            tern_conn_printf(&c->conn, "DATA\r\n");
    }
}

static void prepare_transaction(tern_smtp_client *c);

/* Sends "<prefix><base64 of data>\r\n" and wipes the copies: the data is
 * a credential. */
static void send_b64(tern_smtp_client *c, const char *prefix, const uint8_t *data, size_t len)
{
    char line[1100];
    size_t pl = strlen(prefix);
    memcpy(line, prefix, pl);
    long n = tern_base64_encode(data, len, line + pl, sizeof(line) - pl - 3);
    if (n < 0)
        n = 0;
    memcpy(line + pl + (size_t)n, "\r\n", 2);
    tern_conn_write(&c->conn, line, pl + (size_t)n + 2);
    explicit_bzero(line, sizeof(line));
}

static bool offers_mech(const tern_smtp_client *c, const char *mech)
{
    size_t ml = strlen(mech);
    for (const char *p = c->caps.auth; (p = strstr(p, mech)) != NULL; p += ml)
        if ((p == c->caps.auth || p[-1] == ' ') && (p[ml] == '\0' || p[ml] == ' '))
            return true;
    return false;
}

/* AUTH before the first MAIL on this connection; true when it went out
 * (or the session ended), false when there is nothing to do. */
static bool start_auth(tern_smtp_client *c)
{
    if (c->p.auth_username == NULL || c->authed)
        return false;
    if (!c->out.tls && !c->p.auth_allow_plaintext) {
        set_error(c, 4, "4.7.10 not sending credentials to %s without TLS", c->out.peer);
        quit(c);
        return true;
    }
    if (offers_mech(c, "PLAIN")) {
        /* RFC 4616: authzid (empty) NUL authcid NUL password. */
        uint8_t raw[520];
        size_t ul = strlen(c->p.auth_username), pl = strlen(c->p.auth_password);
        if (ul > 255 || pl > 255) {
            set_error(c, 4, "4.7.0 credentials too long");
            quit(c);
            return true;
        }
        raw[0] = 0;
        memcpy(raw + 1, c->p.auth_username, ul);
        raw[1 + ul] = 0;
        memcpy(raw + 2 + ul, c->p.auth_password, pl);
        send_b64(c, "AUTH PLAIN ", raw, 2 + ul + pl);
        explicit_bzero(raw, sizeof(raw));
        c->st = CS_AUTH;
        return true;
    }
    if (offers_mech(c, "LOGIN")) {
        tern_conn_printf(&c->conn, "AUTH LOGIN\r\n");
        c->st = CS_AUTH_USER;
        return true;
    }
    set_error(c, 4, "4.7.0 %s offers no AUTH mechanism we use (PLAIN, LOGIN)%s", c->out.peer,
              c->caps.auth[0] ? "" : ": no AUTH at all");
    quit(c);
    return true;
}

static void auth_done(tern_smtp_client *c, const tern_smtp_reply *r)
{
    if (r->code == 235) {
        c->authed = true;
        TLOG_INFO(MOD, "event=authenticated peer=%s user=%s", c->out.peer, c->p.auth_username);
        prepare_transaction(c);
        return;
    }
    /* A refused login is the operator's to fix: defer, never bounce. */
    set_error(c, 4, "4.7.0 authentication to %s failed: %d %s %.200s", c->out.peer, r->code,
              r->enhanced, r->text);
    quit(c);
}

static void after_ehlo(tern_smtp_client *c)
{
    if (!c->out.tls && c->p.tls && c->caps.starttls) {
        c->st = CS_STARTTLS;
        tern_conn_printf(&c->conn, "STARTTLS\r\n");
        return;
    }
    if (c->p.tls_encrypt_required && !c->out.tls) {
        set_error(c, 4, "4.7.10 TLS is required for %s but %s", c->out.peer,
                  c->caps.starttls ? "STARTTLS failed" : "the server does not offer STARTTLS");
        quit(c);
        return;
    }
    if (c->p.tls_required && !(c->out.tls && c->out.tls_verified)) {
        set_error(c, 4, c->out.tls ? "4.7.5 the server's certificate does not verify for %s"
                                   : "4.7.10 TLS is required for %s but the server does not offer it",
                  c->p.tls_name ? c->p.tls_name : c->out.peer);
        quit(c);
        return;
    }
    if (start_auth(c))
        return;
    prepare_transaction(c);
}

static void start_bdat(tern_smtp_client *c)
{
    tern_conn_printf(&c->conn, "BDAT %zu LAST\r\n", c->p.len);
    c->st = CS_BODY;
    c->body_off = 0;
    send_body(c);
}

/* The last reply was 2xx and the pool wants the connection: wait for the
 * next message instead of QUIT. */
static bool park(tern_smtp_client *c)
{
    const tern_smtp_client_keep *k = c->p.keep;
    if (k == NULL || k->idle == NULL || c->messages >= k->max_messages)
        return false;
    c->st = CS_IDLE;
    if (!k->idle(k->arg, c)) {
        c->st = CS_DOT;
        return false;
    }
    c->parked = true;
    tern_conn_set_timeout(&c->conn, k->idle_timeout_ms);
    return true;
}

/* A kept connection failed before MAIL FROM was answered: nothing of the
 * message was taken, so it goes on a fresh connection (once) instead of
 * counting against the host. */
static bool retry_fresh(tern_smtp_client *c, const char *why)
{
    if (!c->reused || c->mail_replied || c->finished || c->reconnecting || !c->conn_init)
        return false;
    TLOG_INFO(MOD, "event=reuse_failed peer=%s reason=\"%.200s\" action=reconnect", c->out.peer,
              why);
    c->reused = false;
    c->reconnecting = true;
    tern_conn_close(&c->conn, false); /* on_close connects again */
    return true;
}

static void on_reply(tern_smtp_client *c, const tern_smtp_reply *r)
{
    const tern_envelope *e = c->p.env;
    switch (c->st) {
    case CS_BANNER:
        if (r->code != 220) {
            reply_to_error(c, r);
            quit(c);
            return;
        }
        c->st = CS_EHLO;
        tern_conn_printf(&c->conn, "EHLO %s\r\n", c->p.helo);
        return;
    case CS_EHLO:
        if (r->code / 100 != 2) {
            /* RFC 5321 4.1.4: an old server; try HELO. */
            c->st = CS_HELO;
            tern_conn_printf(&c->conn, "HELO %s\r\n", c->p.helo);
            return;
        }
        tern_ehlo_caps_parse(r, &c->caps);
        after_ehlo(c);
        return;
    case CS_HELO:
        if (r->code / 100 != 2) {
            reply_to_error(c, r);
            quit(c);
            return;
        }
        memset(&c->caps, 0, sizeof(c->caps));
        after_ehlo(c);
        return;
    case CS_STARTTLS: {
        tern_tls_conn *t = r->code != 220 ? NULL
                           : c->p.n_dane_tlsa
                               ? tern_tls_conn_new_client_dane(c->p.tls, c->p.tls_name,
                                                               c->p.dane_alt_name,
                                                               c->p.dane_tlsa, c->p.n_dane_tlsa)
                               : tern_tls_conn_new_client(c->p.tls, c->p.tls_name, false);
        if (t == NULL) {
            /* Refused (or no memory): go on in the clear unless TLS is required. */
            c->p.tls = NULL;
            after_ehlo(c);
            return;
        }
        c->st = CS_HANDSHAKE;
        tern_conn_starttls_client(&c->conn, t);
        return;
    }
    case CS_RSET:
        if (r->code / 100 != 2) {
            char why[64];
            snprintf(why, sizeof(why), "RSET answered %d", r->code);
            if (!retry_fresh(c, why)) {
                reply_to_error(c, r);
                finish(c, false);
            }
            return;
        }
        c->st = CS_MAIL;
        if (!c->pipelined)
            send_transaction(c);
        return;
    case CS_AUTH_USER:
    case CS_AUTH_PASS:
        if (r->code == 334) {
            const char *v = c->st == CS_AUTH_USER ? c->p.auth_username : c->p.auth_password;
            send_b64(c, "", (const uint8_t *)v, strlen(v));
            c->st = c->st == CS_AUTH_USER ? CS_AUTH_PASS : CS_AUTH;
            return;
        }
        auth_done(c, r);
        return;
    case CS_AUTH:
        auth_done(c, r);
        return;
    case CS_IDLE:
        /* Unasked (a 421 before the server's own idle close): done. */
        finish(c, false);
        return;
    case CS_MAIL:
        c->mail_replied = true;
        if (r->code / 100 != 2) {
            reply_to_error(c, r);
            if (c->pipelined) {
                /* The RCPT and DATA replies that follow are read and
                 * ignored: count them down through the RCPT state. */
                c->st = CS_RCPT;
                c->accepted = 0;
                c->out.session_class = r->code >= 500 ? 5 : 4;
                return;
            }
            quit(c);
            return;
        }
        c->st = CS_RCPT;
        if (!c->pipelined) {
            if (c->next_rcpt < e->n_rcpts)
                send_rcpt(c, c->next_rcpt);
            else
                quit(c);
        }
        return;
    case CS_RCPT: {
        size_t i = c->next_rcpt;
        if (i < e->n_rcpts) {
            tern_smtp_rcpt_result *rr = &c->out.rcpts[i];
            if (c->out.session_class == 0) {
                rr->code = r->code;
                snprintf(rr->enhanced, sizeof(rr->enhanced), "%s", r->enhanced);
                snprintf(rr->text, sizeof(rr->text), "%.290s", r->text);
                if (r->code / 100 == 2)
                    c->accepted++;
            }
            c->next_rcpt = skip_done(c, i + 1);
        }
        if (c->next_rcpt < e->n_rcpts) {
            if (!c->pipelined)
                send_rcpt(c, c->next_rcpt);
            return;
        }
        c->st = CS_DATA;
        if (c->chunking) {
            if (c->accepted == 0 || c->out.session_class != 0)
                quit(c);
            else
                start_bdat(c);
            return;
        }
        if (!c->pipelined) {
            if (c->accepted == 0) {
                quit(c);
                return;
            }
            tern_conn_printf(&c->conn, "DATA\r\n");
        }
        return;
    }
    case CS_DATA:
        if (r->code != 354) {
            if (c->accepted > 0 && c->out.session_class == 0)
                reply_to_error(c, r);
            /* The accepted recipients get the DATA failure. */
            for (size_t i = 0; i < e->n_rcpts && c->accepted > 0; i++)
                if (c->out.rcpts[i].code / 100 == 2) {
                    c->out.rcpts[i].code = r->code;
                    snprintf(c->out.rcpts[i].enhanced, sizeof(c->out.rcpts[i].enhanced), "%s",
                             r->enhanced);
                    snprintf(c->out.rcpts[i].text, sizeof(c->out.rcpts[i].text), "%.290s",
                             r->text);
                }
            quit(c);
            return;
        }
        if (c->accepted == 0) {
            /* Pipelined DATA was taken although no recipient was: send an
             * empty message body end, as RFC 2920 3.1 requires. */
            tern_conn_printf(&c->conn, ".\r\n");
            c->st = CS_DOT;
            return;
        }
        c->st = CS_BODY;
        c->at_line_start = true;
        c->body_off = 0;
        send_body(c);
        return;
    case CS_DOT:
        c->final_seen = true;
        /* The final answer for every recipient the server accepted. */
        for (size_t i = 0; i < e->n_rcpts; i++)
            if (c->out.rcpts[i].code / 100 == 2 && c->accepted > 0) {
                c->out.rcpts[i].code = r->code;
                snprintf(c->out.rcpts[i].enhanced, sizeof(c->out.rcpts[i].enhanced), "%s",
                         r->enhanced);
                snprintf(c->out.rcpts[i].text, sizeof(c->out.rcpts[i].text), "%.290s", r->text);
            }
        c->messages++;
        if (r->code / 100 == 2 && c->accepted > 0 && park(c)) {
            report(c); /* may hand c the next message */
            return;
        }
        quit(c);
        return;
    case CS_QUIT:
        c->st = CS_DONE;
        finish(c, true);
        return;
    default:
        return;
    }
}

static void conn_on_data(tern_conn *conn)
{
    tern_smtp_client *c = conn->data;
    for (;;) {
        size_t len = 0;
        const uint8_t *in = tern_conn_input(conn, &len);
        if (len == 0 || c->finished || c->reconnecting)
            return;
        size_t used = 0;
        tern_reply_status st = tern_reply_parse(&c->rp, in, len, &used);
        tern_conn_consume(conn, used);
        if (st == TERN_REPLY_MORE)
            return;
        if (st == TERN_REPLY_MALFORMED) {
            if (retry_fresh(c, "malformed reply"))
                return;
            set_error(c, 4, "4.5.0 malformed reply from the server");
            finish(c, false);
            return;
        }
        tern_conn_set_timeout(conn, c->p.command_timeout_ms);
        on_reply(c, &c->rp.r);
    }
}

static void conn_on_timeout(tern_conn *conn)
{
    tern_smtp_client *c = conn->data;
    if (c->st == CS_IDLE) {
        quit(c); /* idle long enough: say goodbye */
        return;
    }
    if (retry_fresh(c, "timeout"))
        return;
    if (c->st != CS_QUIT && c->st != CS_DONE)
        set_error(c, 4, "4.4.2 timeout waiting for the server");
    finish(c, false);
}

static void conn_on_error(tern_conn *conn, const char *reason)
{
    tern_smtp_client *c = conn->data;
    if (c->st != CS_IDLE && retry_fresh(c, reason))
        return;
    if (c->st == CS_HANDSHAKE && c->p.n_dane_tlsa) /* DANE: RFC 7672 2.2 */
        set_error(c, 4, "4.7.5 %s", reason);
    else if (c->st != CS_QUIT && c->st != CS_DONE)
        set_error(c, 4, "4.4.2 connection lost: %s", reason);
    finish(c, false);
}

static void conn_on_drain(tern_conn *conn)
{
    tern_smtp_client *c = conn->data;
    if (c->st == CS_BODY && !c->finished)
        send_body(c);
}

static void conn_on_tls(tern_conn *conn)
{
    tern_smtp_client *c = conn->data;
    c->out.tls = true;
    c->out.tls_verified = tern_tls_conn_peer_verified(conn->tls);
    c->out.tls_dane = tern_tls_conn_dane_verified(conn->tls);
    snprintf(c->out.tls_version, sizeof(c->out.tls_version), "%s", tern_tls_conn_version(conn->tls));
    snprintf(c->out.tls_cipher, sizeof(c->out.tls_cipher), "%s", tern_tls_conn_cipher(conn->tls));
    /* RFC 3207 4.2: forget what the server said in the clear, ask again. */
    tern_reply_parser_init(&c->rp);
    memset(&c->caps, 0, sizeof(c->caps));
    c->st = CS_EHLO;
    tern_conn_printf(&c->conn, "EHLO %s\r\n", c->p.helo);
}

static const tern_conn_cbs client_cbs = {
    .on_data = conn_on_data,
    .on_tls = conn_on_tls,
    .on_timeout = conn_on_timeout,
    .on_error = conn_on_error,
    .on_drain = conn_on_drain,
    .on_close = conn_on_close,
};

/* ---- connecting --------------------------------------------------------- */

static void connected(tern_smtp_client *c)
{
    int fd = c->fd;
    c->fd = -1;
    int r = tern_conn_init(&c->conn, c->p.loop, c->p.worker, fd, 16384, &client_cbs, c);
    if (r < 0) {
        set_error(c, 4, "4.4.1 cannot set up the connection: %s", uv_strerror(r));
        finish(c, false);
        return;
    }
    c->conn_init = true;
    if (r == 1) {
        set_error(c, 4, "4.4.1 cannot set up the connection");
        c->finished = true; /* on_close reports */
        return;
    }
    c->st = CS_BANNER;
    tern_conn_set_timeout(&c->conn, c->p.command_timeout_ms);
    if (tern_conn_start(&c->conn, NULL) != 0) {
        set_error(c, 4, "4.4.1 cannot read from the connection");
        finish(c, false);
    }
}

static void poll_closed_then_connect(uv_handle_t *h)
{
    tern_smtp_client *c = h->data;
    c->handles--;
    if (c->finished) {
        if (c->handles == 0)
            free_client(c);
        return;
    }
    connected(c);
}

static void on_writable(uv_poll_t *h, int status, int events)
{
    tern_smtp_client *c = h->data;
    int err = 0;
    socklen_t el = sizeof(err);
    /* libuv reports a socket error (a refused connect) as UV_EBADF: the
     * socket's own error says what happened. */
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
        err = errno;
    if (err == 0 && status < 0)
        err = -status;
    uv_poll_stop(&c->poll);
    if (c->ctimer_init) {
        uv_timer_stop(&c->ctimer);
        uv_close((uv_handle_t *)&c->ctimer, handle_closed);
        c->ctimer_init = false;
    }
    c->poll_init = false;
    if (err != 0) {
        set_error(c, 4, "4.4.1 connection to %s failed: %s", c->out.peer, strerror(err));
        uv_close((uv_handle_t *)&c->poll, handle_closed);
        finish(c, false);
        return;
    }
    /* The poll handle must be gone before libuv owns the fd as a stream. */
    uv_close((uv_handle_t *)&c->poll, poll_closed_then_connect);
}

static void connect_timeout(uv_timer_t *t)
{
    tern_smtp_client *c = t->data;
    set_error(c, 4, "4.4.1 connection to %s timed out", c->out.peer);
    finish(c, false);
}

static void connect_failed_now(uv_timer_t *t)
{
    finish(t->data, false);
}

/* Opens the socket and starts a non-blocking connect to c->addr. */
static int begin_connect(tern_smtp_client *c)
{
    const struct sockaddr *sa = (const struct sockaddr *)&c->addr;
    socklen_t alen = sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                               : sizeof(struct sockaddr_in);
    c->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    c->st = CS_CONNECT;
    bool failed_now = false;
    if (c->p.source) {
        const struct sockaddr *src = c->p.source;
        socklen_t sl = src->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                  : sizeof(struct sockaddr_in);
        if (bind(c->fd, src, sl) != 0) {
            char ip[64];
            tern_sockaddr_str(src, ip, sizeof(ip), NULL);
            set_error(c, 4, "4.4.1 cannot bind to the source address %s: %s", ip, strerror(errno));
            failed_now = true;
        }
    }
    if (!failed_now && connect(c->fd, sa, alen) != 0 && errno != EINPROGRESS) {
        set_error(c, 4, "4.4.1 connection to %s failed: %s", c->out.peer, strerror(errno));
        failed_now = true;
    }
    if (uv_poll_init(c->p.loop, &c->poll, c->fd) != 0) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    if (uv_timer_init(c->p.loop, &c->ctimer) != 0) {
        /* The poll handle exists now: it must be closed through the loop. */
        c->poll.data = c;
        c->handles++;
        uv_close((uv_handle_t *)&c->poll, handle_closed);
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    c->poll_init = c->ctimer_init = true;
    c->handles += 2;
    c->poll.data = c->ctimer.data = c;
    /* Reported from the loop, never from inside start. */
    if (failed_now)
        uv_timer_start(&c->ctimer, connect_failed_now, 0, 0);
    else {
        uv_poll_start(&c->poll, UV_WRITABLE, on_writable);
        uv_timer_start(&c->ctimer, connect_timeout, c->p.connect_timeout_ms, 0);
    }
    return 0;
}

static void set_params(tern_smtp_client *c, const tern_smtp_client_params *params)
{
    c->p = *params;
    if (c->p.connect_timeout_ms == 0)
        c->p.connect_timeout_ms = 30000;
    if (c->p.command_timeout_ms == 0)
        c->p.command_timeout_ms = 300000;
    if (c->p.data_timeout_ms == 0)
        c->p.data_timeout_ms = 600000;
    socklen_t alen = params->addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                         : sizeof(struct sockaddr_in);
    memset(&c->addr, 0, sizeof(c->addr));
    memcpy(&c->addr, params->addr, alen);
    c->p.addr = (const struct sockaddr *)&c->addr;
    if (params->source) {
        socklen_t sl = params->source->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                             : sizeof(struct sockaddr_in);
        memset(&c->source, 0, sizeof(c->source));
        memcpy(&c->source, params->source, sl);
        c->p.source = (const struct sockaddr *)&c->source;
    }
}

tern_smtp_client *tern_smtp_client_start(const tern_smtp_client_params *params,
                                         tern_smtp_client_cb cb, void *arg)
{
    tern_smtp_client *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    set_params(c, params);
    c->cb = cb;
    c->arg = arg;
    c->fd = -1;
    tern_reply_parser_init(&c->rp);
    c->out.n_rcpts = params->env->n_rcpts;
    c->out.rcpts = calloc(c->out.n_rcpts ? c->out.n_rcpts : 1, sizeof(*c->out.rcpts));
    if (c->out.rcpts == NULL) {
        free(c);
        return NULL;
    }
    int port = 0;
    tern_sockaddr_str(params->addr, c->out.peer, sizeof(c->out.peer), &port);
    size_t pl = strlen(c->out.peer);
    snprintf(c->out.peer + pl, sizeof(c->out.peer) - pl, ":%d", port);
    if (begin_connect(c) != 0) {
        if (c->handles == 0)
            free_client(c);
        else
            c->finished = c->reported = true; /* freed when the poll handle closes */
        return NULL;
    }
    return c;
}

int tern_smtp_client_reuse(tern_smtp_client *c, const tern_smtp_client_params *params,
                           tern_smtp_client_cb cb, void *arg)
{
    if (c == NULL || c->st != CS_IDLE || c->finished || !c->parked)
        return -1;
    tern_smtp_rcpt_result *rr = calloc(params->env->n_rcpts ? params->env->n_rcpts : 1, sizeof(*rr));
    if (rr == NULL)
        return -1;
    free(c->out.rcpts);
    c->out.rcpts = rr;
    c->out.n_rcpts = params->env->n_rcpts;
    c->out.session_class = 0;
    c->out.stage[0] = c->out.error[0] = '\0';
    c->out.reused = true;
    const tern_smtp_client_keep *keep = c->p.keep;
    set_params(c, params);
    if (c->p.keep == NULL)
        c->p.keep = keep;
    c->cb = cb;
    c->arg = arg;
    c->parked = false;
    c->reported = false;
    c->final_seen = false;
    c->reused = true;
    c->mail_replied = false;
    c->pipelined = false;
    c->accepted = c->next_rcpt = 0;
    tern_buf_free(&c->conv);
    c->converted = false;
    tern_conn_set_timeout(&c->conn, c->p.command_timeout_ms);
    prepare_transaction(c); /* a refusal QUITs: the outcome comes at the close */
    return 0;
}

void tern_smtp_client_release(tern_smtp_client *c)
{
    if (c == NULL || c->st != CS_IDLE || c->finished)
        return;
    quit(c);
}

unsigned tern_smtp_client_messages(const tern_smtp_client *c)
{
    return c ? c->messages : 0;
}

void tern_smtp_client_cancel(tern_smtp_client *c)
{
    if (c == NULL || c->finished)
        return;
    set_error(c, 4, "4.3.2 delivery interrupted (shutdown)");
    finish(c, false);
}
