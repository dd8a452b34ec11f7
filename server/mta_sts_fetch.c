/* The HTTPS GET of an MTA-STS policy (see mta_sts_fetch.h): resolve, connect,
 * TLS with a required verified certificate for mta-sts.<domain>, one
 * request, the response head and body parsed by lib/mta_sts as they come.
 * Input: the network's answers (untrusted, capped: head 8 KiB, body
 * 64 KiB, one overall deadline). */
#include "server/mta_sts_fetch.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include "lib/log.h"

#define MOD "mta-sts"

struct tern_sts_fetch {
    tern_sts_fetch_params p;
    char domain[256];
    char host[300];
    tern_sts_fetch_cb cb;
    void *arg;
    tern_dns_query *dq;
    uv_timer_t timer;
    uv_poll_t poll;
    bool poll_init, conn_init, finished, reported, fail_now, head_done, tls_up;
    int fd;
    tern_conn conn;
    unsigned handles;
    tern_sts_http head;
    tern_sts_parser parser;
    char *body;
    size_t body_len;
    int ok;
    bool webpki;
    tern_sts_policy pol;
    char why[400];
};

static void fetch_free(tern_sts_fetch *f)
{
    free(f->body);
    free(f);
}

static void report(tern_sts_fetch *f)
{
    if (f->reported)
        return;
    f->reported = true;
    tern_sts_fetched r = {
        .ok = f->ok,
        .webpki_invalid = f->webpki,
        .policy = f->pol,
        .body = f->body ? f->body : "",
        .body_len = f->body_len,
        .why = f->ok == 0 ? NULL : (f->why[0] ? f->why : "failed"),
    };
    f->cb(f->arg, &r);
}

static void maybe_free(tern_sts_fetch *f)
{
    if (f->finished && f->handles == 0 && !f->conn_init)
        fetch_free(f);
}

static void handle_closed(uv_handle_t *h)
{
    tern_sts_fetch *f = h->data;
    f->handles--;
    maybe_free(f);
}

/* Ends the fetch: reports (now, or from on_close when a connection is
 * open) and closes what is open. */
static void finish(tern_sts_fetch *f)
{
    if (f->finished)
        return;
    f->finished = true;
    if (f->dq) {
        tern_dns_cancel(f->dq);
        f->dq = NULL;
    }
    uv_timer_stop(&f->timer);
    uv_close((uv_handle_t *)&f->timer, handle_closed);
    if (f->poll_init) {
        uv_poll_stop(&f->poll);
        uv_close((uv_handle_t *)&f->poll, handle_closed);
        f->poll_init = false;
    }
    if (f->fd >= 0) {
        close(f->fd);
        f->fd = -1;
    }
    if (f->conn_init) {
        tern_conn_close(&f->conn, false); /* reports from on_close */
        return;
    }
    report(f);
}

static void fail(tern_sts_fetch *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(tern_sts_fetch *f, const char *fmt, ...)
{
    if (f->finished)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->why, sizeof(f->why), fmt, ap);
    va_end(ap);
    f->ok = -1;
    finish(f);
}

/* The body is complete: the policy must parse. */
static void complete(tern_sts_fetch *f)
{
    const char *why = NULL;
    if (tern_sts_finish(&f->parser, &f->pol, &why) != TERN_STS_DONE) {
        fail(f, "invalid policy: %s", why ? why : "?");
        return;
    }
    f->ok = 0;
    finish(f);
}

static void on_body(tern_sts_fetch *f, const uint8_t *d, size_t n)
{
    if (f->body_len + n > TERN_STS_POLICY_MAX) {
        fail(f, "policy larger than %d bytes", TERN_STS_POLICY_MAX);
        return;
    }
    memcpy(f->body + f->body_len, d, n);
    f->body_len += n;
    f->body[f->body_len] = '\0';
    if (tern_sts_parse(&f->parser, d, n) == TERN_STS_ERROR) {
        fail(f, "invalid policy: %s", f->parser.why);
        return;
    }
    if (f->head.have_length && f->body_len >= f->head.content_length)
        complete(f);
}

static void conn_on_data(tern_conn *c)
{
    tern_sts_fetch *f = c->data;
    size_t len = 0;
    const uint8_t *in = tern_conn_input(c, &len);
    if (f->finished) {
        tern_conn_consume(c, len);
        return;
    }
    size_t used = 0;
    if (!f->head_done) {
        tern_sts_status st = tern_sts_http_parse(&f->head, in, len, &used);
        if (st == TERN_STS_ERROR) {
            tern_conn_consume(c, len);
            fail(f, "bad HTTP response: %s", f->head.why);
            return;
        }
        if (st == TERN_STS_MORE) {
            tern_conn_consume(c, len);
            return;
        }
        f->head_done = true;
        /* RFC 8461 3.3: no redirects; only a 200 counts. */
        if (f->head.status != 200) {
            tern_conn_consume(c, len);
            fail(f, "HTTP status %d (redirects are not followed)", f->head.status);
            return;
        }
        if (!f->head.text_plain) {
            tern_conn_consume(c, len);
            fail(f, "Content-Type is not text/plain");
            return;
        }
        if (f->head.chunked) {
            tern_conn_consume(c, len);
            fail(f, "transfer encodings other than identity are not supported");
            return;
        }
        if (f->head.have_length && f->head.content_length > TERN_STS_POLICY_MAX) {
            tern_conn_consume(c, len);
            fail(f, "policy of %llu bytes is over the %d byte limit",
                 (unsigned long long)f->head.content_length, TERN_STS_POLICY_MAX);
            return;
        }
        if (f->head.have_length && f->head.content_length == 0) {
            tern_conn_consume(c, len);
            complete(f);
            return;
        }
    }
    size_t n = len - used;
    if (f->head.have_length && n > f->head.content_length - f->body_len)
        n = (size_t)(f->head.content_length - f->body_len); /* ignore what follows */
    on_body(f, in + used, n);
    tern_conn_consume(c, len);
}

static void conn_on_tls(tern_conn *c)
{
    tern_sts_fetch *f = c->data;
    f->tls_up = true;
    char port[16] = "";
    if (f->p.port != 443)
        snprintf(port, sizeof(port), ":%u", f->p.port);
    tern_conn_printf(c,
                     "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: %s%s\r\n"
                     "User-Agent: ternd\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
                     f->host, port);
}

static void conn_on_timeout(tern_conn *c)
{
    fail(c->data, "timed out");
}

static void conn_on_error(tern_conn *c, const char *reason)
{
    tern_sts_fetch *f = c->data;
    if (f->finished)
        return;
    if (f->head_done && !f->head.have_length) {
        complete(f); /* the body ran to the end of the connection */
        return;
    }
    if (!f->tls_up) {
        /* The handshake failed. mbedTLS names certificate problems
         * "X509 - ..." (sts-webpki-invalid, RFC 8460 4.3.2.2); anything
         * else (a reset, no common cipher) is a plain fetch error. */
        f->webpki = strstr(reason, "X509") != NULL;
        fail(f, "TLS with %s failed: %s", f->host, reason);
        return;
    }
    fail(f, "%s", f->head_done ? "the connection closed inside the body" : reason);
}

static void conn_on_close(tern_conn *c)
{
    tern_sts_fetch *f = c->data;
    f->conn_init = false;
    report(f);
    maybe_free(f);
}

static const tern_conn_cbs fetch_cbs = {
    .on_data = conn_on_data,
    .on_tls = conn_on_tls,
    .on_timeout = conn_on_timeout,
    .on_error = conn_on_error,
    .on_close = conn_on_close,
};

static void poll_closed_then_connect(uv_handle_t *h)
{
    tern_sts_fetch *f = h->data;
    f->handles--;
    if (f->finished) {
        maybe_free(f);
        return;
    }
    int fd = f->fd;
    f->fd = -1;
    int r = tern_conn_init(&f->conn, f->p.loop, f->p.worker, fd, 16384, &fetch_cbs, f);
    if (r < 0) {
        fail(f, "cannot set up the connection: %s", uv_strerror(r));
        return;
    }
    f->conn_init = true;
    if (r == 1) {
        snprintf(f->why, sizeof(f->why), "cannot set up the connection");
        f->ok = -1;
        finish(f);
        return;
    }
    if (tern_conn_start(&f->conn, NULL) != 0) {
        fail(f, "cannot read from the connection");
        return;
    }
    tern_tls_conn *t = tern_tls_conn_new_client(f->p.tls, f->host, true);
    if (t == NULL) {
        fail(f, "out of memory");
        return;
    }
    tern_conn_starttls_client(&f->conn, t);
}

static void on_writable(uv_poll_t *h, int status, int events)
{
    (void)events;
    tern_sts_fetch *f = h->data;
    int err = 0;
    socklen_t el = sizeof(err);
    if (status < 0)
        err = -status;
    else if (getsockopt(f->fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
        err = errno;
    uv_poll_stop(&f->poll);
    f->poll_init = false;
    if (err != 0) {
        uv_close((uv_handle_t *)&f->poll, handle_closed);
        fail(f, "connection to %s failed: %s", f->host, strerror(err));
        return;
    }
    /* The poll handle must be gone before libuv owns the fd as a stream. */
    uv_close((uv_handle_t *)&f->poll, poll_closed_then_connect);
}

static void resolved(void *data, tern_dns_result *res)
{
    tern_sts_fetch *f = data;
    f->dq = NULL;
    if (res->status != TERN_DNS_ANSWER || res->n_rrs == 0) {
        fail(f, "no address for %s: %s", f->host,
             res->status == TERN_DNS_ANSWER ? tern_dns_rcode_name(res->rcode)
                                            : (res->error ? res->error : "lookup failed"));
        tern_dns_result_free(res);
        return;
    }
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    for (size_t i = 0; i < res->n_rrs && sl == 0; i++)
        sl = tern_dns_rr_sockaddr(&res->rrs[i], f->p.port, &ss);
    tern_dns_result_free(res);
    if (sl == 0) {
        fail(f, "no usable address for %s", f->host);
        return;
    }
    f->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (f->fd < 0) {
        fail(f, "socket: %s", strerror(errno));
        return;
    }
    if (connect(f->fd, (struct sockaddr *)&ss, sl) != 0 && errno != EINPROGRESS) {
        fail(f, "connection to %s failed: %s", f->host, strerror(errno));
        return;
    }
    if (uv_poll_init(f->p.loop, &f->poll, f->fd) != 0) {
        fail(f, "cannot poll the connection");
        return;
    }
    f->poll.data = f;
    f->poll_init = true;
    f->handles++;
    uv_poll_start(&f->poll, UV_WRITABLE, on_writable);
}

static void timer_cb(uv_timer_t *t)
{
    tern_sts_fetch *f = t->data;
    if (f->fail_now) {
        f->ok = -1;
        finish(f);
        return;
    }
    fail(f, "timed out after %llu ms", (unsigned long long)f->p.timeout_ms);
}

tern_sts_fetch *tern_sts_fetch_start(const tern_sts_fetch_params *p, tern_sts_fetch_cb cb,
                                     void *arg)
{
    tern_sts_fetch *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->body = malloc(TERN_STS_POLICY_MAX + 1);
    if (f->body == NULL) {
        free(f);
        return NULL;
    }
    f->body[0] = '\0';
    f->p = *p;
    if (f->p.timeout_ms == 0)
        f->p.timeout_ms = TERN_STS_FETCH_TIMEOUT_MS;
    snprintf(f->domain, sizeof(f->domain), "%s", p->domain);
    f->p.domain = f->domain;
    snprintf(f->host, sizeof(f->host), "mta-sts.%s", p->domain);
    f->cb = cb;
    f->arg = arg;
    f->fd = -1;
    f->ok = -1;
    tern_sts_http_init(&f->head);
    tern_sts_parser_init(&f->parser);
    uv_timer_init(p->loop, &f->timer);
    f->timer.data = f;
    f->handles = 1;
    int r = tern_dns_resolve(p->dns, f->host, TERN_DNS_A, 0, resolved, f, &f->dq);
    if (r != 0) {
        f->dq = NULL;
        snprintf(f->why, sizeof(f->why), "cannot look up %s: %s", f->host, uv_strerror(r));
        f->fail_now = true;
        uv_timer_start(&f->timer, timer_cb, 0, 0);
        return f;
    }
    uv_timer_start(&f->timer, timer_cb, f->p.timeout_ms, 0);
    return f;
}

void tern_sts_fetch_cancel(tern_sts_fetch *f)
{
    if (f == NULL)
        return;
    fail(f, "cancelled");
}
