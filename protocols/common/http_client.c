/* http_client.c: the asynchronous HTTP/1.1 client (see http_client.h):
 * resolve (lib/dns or getaddrinfo on the pool), connect each address in
 * turn (a non-blocking connect watched with uv_poll, then the socket
 * becomes a tern_conn), TLS when https, one request written whole, the
 * response fed to lib/http_response as it arrives. One timer bounds it
 * all. Input: params from the caller (trusted); the network's answers
 * (untrusted: capped by the parser and the deadline). */
#include "protocols/common/http_client.h"

#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "auth/auth.h"
#include "protocols/common/conn.h"

#define MAX_ADDRS 8
#define READ_SIZE 16384

struct tern_http_request {
    uv_loop_t *loop;
    tern_dns_resolver *dns;
    tern_tls_client *tls;
    uint64_t timeout_ms;
    tern_http_url u;
    char *req;               /* the whole request, as sent */
    size_t req_len;
    tern_http_cb cb;         /* NULL once cancelled */
    void *arg;

    uv_timer_t timer;
    uv_getaddrinfo_t gai;
    tern_dns_query *dq;
    struct sockaddr_storage addrs[MAX_ADDRS];
    socklen_t addr_lens[MAX_ADDRS];
    size_t n_addrs, next_addr;
    int fd;
    uv_poll_t poll;
    tern_conn conn;
    tern_conn_worker cw;
    unsigned pending;        /* handles and requests whose callbacks must run before free */
    bool poll_init, conn_init, gai_pending, finished, reported, tls_up, fail_now, timed_out;
    bool connected;          /* the poll saw the connect succeed */

    tern_http_resp resp;
    int ok;
    char why[400];
};

static void try_connect(tern_http_request *r);

static void req_free(tern_http_request *r)
{
    tern_http_resp_free(&r->resp);
    free(r->cw.readbuf);
    free(r->req);
    free(r);
}

static void report(tern_http_request *r)
{
    if (r->reported)
        return;
    r->reported = true;
    if (r->cb == NULL)
        return;
    tern_http_result res = {
        .ok = r->ok,
        .status = r->ok == 0 ? r->resp.status : 0,
        .content_type = r->resp.content_type,
        .body = r->resp.body ? r->resp.body : (const uint8_t *)"",
        .body_len = r->resp.body_len,
        .timed_out = r->timed_out,
        .why = r->ok == 0 ? NULL : (r->why[0] ? r->why : "failed"),
    };
    r->cb(r->arg, &res);
}

static void maybe_free(tern_http_request *r)
{
    if (r->finished && r->pending == 0 && !r->conn_init)
        req_free(r);
}

static void handle_closed(uv_handle_t *h)
{
    tern_http_request *r = h->data;
    r->pending--;
    maybe_free(r);
}

static void close_poll(tern_http_request *r, uv_close_cb cb)
{
    if (!r->poll_init)
        return;
    uv_poll_stop(&r->poll);
    r->poll_init = false;
    uv_close((uv_handle_t *)&r->poll, cb);
}

/* Ends the request: reports (now, or from on_close when a connection is
 * open) and closes what is open. */
static void finish(tern_http_request *r)
{
    if (r->finished)
        return;
    r->finished = true;
    if (r->dq != NULL) {
        tern_dns_cancel(r->dq);
        r->dq = NULL;
    }
    if (r->gai_pending)
        uv_cancel((uv_req_t *)&r->gai); /* its callback still runs, and frees */
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->timer, handle_closed);
    close_poll(r, handle_closed);
    if (r->fd >= 0) {
        close(r->fd);
        r->fd = -1;
    }
    if (r->conn_init) {
        /* After a whole answer, a TLS close_notify (bounded by conn.c's
         * linger timer); after a failure, at once. Reports from on_close. */
        tern_conn_close(&r->conn, r->ok == 0);
        return;
    }
    report(r);
}

static void fail(tern_http_request *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(tern_http_request *r, const char *fmt, ...)
{
    if (r->finished)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof(r->why), fmt, ap);
    va_end(ap);
    r->ok = -1;
    finish(r);
}

static void complete(tern_http_request *r)
{
    r->ok = 0;
    finish(r);
}

/* ---- the connection -------------------------------------------------------- */

static void send_request(tern_http_request *r)
{
    tern_conn_write(&r->conn, r->req, r->req_len);
}

static void conn_on_data(tern_conn *c)
{
    tern_http_request *r = c->data;
    size_t len = 0;
    const uint8_t *in = tern_conn_input(c, &len);
    tern_conn_consume(c, len);
    if (r->finished)
        return;
    tern_http_resp_status st = tern_http_resp_parse(&r->resp, in, len, NULL);
    if (st == TERN_HTTP_RESP_ERROR)
        fail(r, "bad HTTP response from %s: %s", r->u.host, r->resp.why);
    else if (st == TERN_HTTP_RESP_DONE)
        complete(r);
}

static void conn_on_tls(tern_conn *c)
{
    tern_http_request *r = c->data;
    r->tls_up = true;
    send_request(r);
}

static void conn_on_timeout(tern_conn *c)
{
    (void)c; /* the request's own timer is the deadline */
}

static void conn_on_error(tern_conn *c, const char *reason)
{
    tern_http_request *r = c->data;
    if (r->finished)
        return;
    if (r->u.tls && !r->tls_up) {
        fail(r, "TLS with %s failed: %s", r->u.host, reason);
        return;
    }
    /* The end of the connection may be the end of the body. */
    if (tern_http_resp_eof(&r->resp) == TERN_HTTP_RESP_DONE) {
        complete(r);
        return;
    }
    fail(r, "%s (%s)", r->resp.why ? r->resp.why : "connection failed", reason);
}

static void conn_on_close(tern_conn *c)
{
    tern_http_request *r = c->data;
    r->conn_init = false;
    report(r);
    maybe_free(r);
}

static const tern_conn_cbs http_cbs = {
    .on_data = conn_on_data,
    .on_tls = conn_on_tls,
    .on_timeout = conn_on_timeout,
    .on_error = conn_on_error,
    .on_close = conn_on_close,
};

static void start_conn(tern_http_request *r)
{
    int fd = r->fd;
    r->fd = -1;
    if ((r->cw.readbuf = malloc(READ_SIZE)) == NULL) {
        close(fd);
        fail(r, "out of memory");
        return;
    }
    r->cw.readbuf_size = READ_SIZE;
    int rc = tern_conn_init(&r->conn, r->loop, &r->cw, fd, READ_SIZE, &http_cbs, r);
    if (rc < 0) {
        fail(r, "cannot set up the connection: %s", uv_strerror(rc));
        return;
    }
    r->conn_init = true;
    if (rc == 1) {
        fail(r, "cannot set up the connection");
        return;
    }
    if (tern_conn_start(&r->conn, NULL) != 0) {
        fail(r, "cannot read from the connection");
        return;
    }
    if (!r->u.tls) {
        send_request(r);
        return;
    }
    tern_tls_conn *t = tern_tls_conn_new_client(r->tls, r->u.host, true);
    if (t == NULL) {
        fail(r, "cannot start TLS");
        return;
    }
    tern_conn_starttls_client(&r->conn, t);
}

/* The poll is closed: the socket is ours again, to become the connection
 * or to be dropped for the next address. */
static void poll_closed(uv_handle_t *h)
{
    tern_http_request *r = h->data;
    r->pending--;
    if (r->finished) {
        maybe_free(r);
        return;
    }
    if (r->connected) {
        start_conn(r);
        return;
    }
    try_connect(r);
}

static void on_writable(uv_poll_t *h, int status, int events)
{
    (void)events;
    tern_http_request *r = h->data;
    int err = 0;
    socklen_t el = sizeof(err);
    if (status < 0)
        err = -status;
    else if (getsockopt(r->fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
        err = errno;
    if (err != 0) {
        snprintf(r->why, sizeof(r->why), "connection to %s port %u failed: %s", r->u.host,
                 r->u.port, strerror(err));
        close(r->fd);
        r->fd = -1;
    } else {
        r->connected = true;
    }
    /* The poll handle must be gone before libuv owns the fd as a stream. */
    close_poll(r, poll_closed);
}

/* Connects to the next address; when none is left, fails with the last
 * reason. */
static void try_connect(tern_http_request *r)
{
    while (r->next_addr < r->n_addrs) {
        size_t i = r->next_addr++;
        const struct sockaddr *sa = (const struct sockaddr *)&r->addrs[i];
        r->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (r->fd < 0) {
            snprintf(r->why, sizeof(r->why), "socket: %s", strerror(errno));
            continue;
        }
        if (connect(r->fd, sa, r->addr_lens[i]) != 0 && errno != EINPROGRESS) {
            snprintf(r->why, sizeof(r->why), "connection to %s port %u failed: %s", r->u.host,
                     r->u.port, strerror(errno));
            close(r->fd);
            r->fd = -1;
            continue;
        }
        if (uv_poll_init(r->loop, &r->poll, r->fd) != 0) {
            snprintf(r->why, sizeof(r->why), "cannot poll the connection");
            close(r->fd);
            r->fd = -1;
            continue;
        }
        r->poll.data = r;
        r->poll_init = true;
        r->pending++;
        uv_poll_start(&r->poll, UV_WRITABLE, on_writable);
        return;
    }
    r->ok = -1;
    if (r->why[0] == '\0')
        snprintf(r->why, sizeof(r->why), "no usable address for %s", r->u.host);
    finish(r);
}

static void add_addr(tern_http_request *r, const struct sockaddr *sa, socklen_t len)
{
    if (r->n_addrs == MAX_ADDRS || len > sizeof(r->addrs[0]))
        return;
    memcpy(&r->addrs[r->n_addrs], sa, len);
    r->addr_lens[r->n_addrs++] = len;
}

/* IPv4 first: loopback names resolve to ::1 and 127.0.0.1, and services
 * on a loopback port are more often on the latter. */
static void order_addrs(tern_http_request *r)
{
    struct sockaddr_storage a[MAX_ADDRS];
    socklen_t l[MAX_ADDRS];
    size_t n = 0;
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < r->n_addrs; i++)
            if ((r->addrs[i].ss_family == AF_INET) == (pass == 0)) {
                a[n] = r->addrs[i];
                l[n++] = r->addr_lens[i];
            }
    memcpy(r->addrs, a, n * sizeof(a[0]));
    memcpy(r->addr_lens, l, n * sizeof(l[0]));
}

static void gai_done(uv_getaddrinfo_t *g, int status, struct addrinfo *res)
{
    tern_http_request *r = g->data;
    r->gai_pending = false;
    r->pending--;
    if (r->finished) {
        uv_freeaddrinfo(res);
        maybe_free(r);
        return;
    }
    if (status != 0) {
        uv_freeaddrinfo(res);
        fail(r, "no address for %s: %s", r->u.host, uv_strerror(status));
        return;
    }
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        add_addr(r, ai->ai_addr, ai->ai_addrlen);
    }
    uv_freeaddrinfo(res);
    order_addrs(r);
    try_connect(r);
}

static void dns_done(void *data, tern_dns_result *res)
{
    tern_http_request *r = data;
    r->dq = NULL;
    if (res->status != TERN_DNS_ANSWER || res->n_rrs == 0) {
        fail(r, "no address for %s: %s", r->u.host,
             res->status == TERN_DNS_ANSWER ? tern_dns_rcode_name(res->rcode)
                                            : (res->error ? res->error : "lookup failed"));
        tern_dns_result_free(res);
        return;
    }
    for (size_t i = 0; i < res->n_rrs; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = tern_dns_rr_sockaddr(&res->rrs[i], r->u.port, &ss);
        if (sl != 0)
            add_addr(r, (struct sockaddr *)&ss, sl);
    }
    tern_dns_result_free(res);
    try_connect(r);
}

static void timer_cb(uv_timer_t *t)
{
    tern_http_request *r = t->data;
    if (r->fail_now) {
        r->ok = -1;
        finish(r);
        return;
    }
    r->timed_out = true;
    fail(r, "no complete answer from %s within %llu ms", r->u.host,
         (unsigned long long)r->timeout_ms);
}

/* Starts the lookup. An address literal goes through getaddrinfo too
 * (it looks nothing up then), so that connecting always starts from the
 * loop and never inside tern_http_request_start. Returns 0, or -1 with
 * why set. */
static int resolve(tern_http_request *r)
{
    char port[8];
    snprintf(port, sizeof(port), "%u", r->u.port);
    uint8_t probe[sizeof(struct in6_addr)];
    bool literal = inet_pton(AF_INET, r->u.host, probe) == 1 ||
                   inet_pton(AF_INET6, r->u.host, probe) == 1;
    if (r->dns != NULL && !literal) {
        int rc = tern_dns_resolve(r->dns, r->u.host, TERN_DNS_A, 0, dns_done, r, &r->dq);
        if (rc != 0) {
            r->dq = NULL;
            snprintf(r->why, sizeof(r->why), "cannot look up %s: %s", r->u.host, uv_strerror(rc));
            return -1;
        }
        return 0;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | (literal ? AI_NUMERICHOST : 0)};
    r->gai.data = r;
    int rc = uv_getaddrinfo(r->loop, &r->gai, gai_done, r->u.host, port, &hints);
    if (rc != 0) {
        snprintf(r->why, sizeof(r->why), "cannot look up %s: %s", r->u.host, uv_strerror(rc));
        return -1;
    }
    r->gai_pending = true;
    r->pending++;
    return 0;
}

static bool header_ok(const char *h)
{
    const char *colon = strchr(h, ':');
    return colon != NULL && colon != h && strpbrk(h, "\r\n") == NULL;
}

/* The request bytes. Returns 0, -1 (bad params: why set) or -2 (memory). */
static int build_request(tern_http_request *r, const tern_http_request_params *p)
{
    const char *method = p->method ? p->method : p->body_len ? "POST" : "GET";
    if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0) {
        snprintf(r->why, sizeof(r->why), "method %.16s is not supported", method);
        return -1;
    }
    if (p->n_headers > TERN_HTTP_MAX_HEADERS) {
        snprintf(r->why, sizeof(r->why), "more than %d header fields", TERN_HTTP_MAX_HEADERS);
        return -1;
    }
    size_t need = 512 + strlen(r->u.path) + strlen(r->u.host) + p->body_len;
    for (size_t i = 0; i < p->n_headers; i++) {
        if (!header_ok(p->headers[i])) {
            snprintf(r->why, sizeof(r->why), "header field %zu is not \"Name: value\"", i);
            return -1;
        }
        need += strlen(p->headers[i]) + 2;
    }
    if ((r->req = malloc(need)) == NULL)
        return -2;
    char hostport[TERN_HTTP_MAX_HOST + 16], port[8] = "";
    if (r->u.port != (r->u.tls ? 443 : 80))
        snprintf(port, sizeof(port), ":%u", r->u.port);
    snprintf(hostport, sizeof(hostport), "%s%s%s%s", r->u.host_is_ipv6 ? "[" : "", r->u.host,
             r->u.host_is_ipv6 ? "]" : "", port);
    int n = snprintf(r->req, need, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: ternd\r\n"
                                   "Connection: close\r\n",
                     method, r->u.path, hostport);
    size_t off = (size_t)n;
    for (size_t i = 0; i < p->n_headers; i++)
        off += (size_t)snprintf(r->req + off, need - off, "%s\r\n", p->headers[i]);
    if (strcmp(method, "POST") == 0)
        off += (size_t)snprintf(r->req + off, need - off, "Content-Length: %zu\r\n",
                                p->body_len);
    off += (size_t)snprintf(r->req + off, need - off, "\r\n");
    if (p->body_len)
        memcpy(r->req + off, p->body, p->body_len);
    r->req_len = off + p->body_len;
    return 0;
}

tern_http_request *tern_http_request_start(const tern_http_request_params *p, tern_http_cb cb,
                                           void *arg)
{
    tern_http_request *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->loop = p->loop;
    r->dns = p->dns;
    r->tls = p->tls;
    r->timeout_ms = p->timeout_ms ? p->timeout_ms : TERN_HTTP_TIMEOUT_MS;
    r->cb = cb;
    r->arg = arg;
    r->fd = -1;
    r->ok = -1;
    tern_http_resp_init(&r->resp, p->max_head, p->max_body, false);
    uv_timer_init(p->loop, &r->timer);
    r->timer.data = r;
    r->pending = 1;
    const char *why = NULL;
    int rc = 0;
    if (tern_http_url_parse(p->url, &r->u, &why) != 0) {
        snprintf(r->why, sizeof(r->why), "bad URL: %s", why);
        rc = -1;
    } else if (r->u.tls && r->tls == NULL) {
        snprintf(r->why, sizeof(r->why), "https without a TLS client context");
        rc = -1;
    } else {
        rc = build_request(r, p);
    }
    if (rc == -2) {
        /* The timer's memory stays until libuv has closed it. */
        r->finished = true;
        r->cb = NULL;
        uv_close((uv_handle_t *)&r->timer, handle_closed);
        return NULL;
    }
    if (rc == 0 && resolve(r) != 0)
        rc = -1;
    if (rc != 0) {
        /* Reported from the loop, never inside this call. */
        r->fail_now = true;
        uv_timer_start(&r->timer, timer_cb, 0, 0);
        return r;
    }
    uv_timer_start(&r->timer, timer_cb, r->timeout_ms, 0);
    return r;
}

void tern_http_request_cancel(tern_http_request *r)
{
    if (r == NULL)
        return;
    r->cb = NULL;
    fail(r, "cancelled");
}

/* ---- the transport auth/ is handed (auth.h: tern_auth_http) ------------------ */

typedef struct auth_post {
    tern_auth_http_cb cb;
    void *arg;
} auth_post;

static void auth_posted(void *arg, const tern_http_result *res)
{
    auth_post *ap = arg;
    tern_auth_http_answer a = {
        .ok = res->ok,
        .status = res->status,
        .body = (const char *)res->body,
        .body_len = res->body_len,
        .timed_out = res->timed_out,
        .why = res->why,
    };
    ap->cb(ap->arg, &a);
    free(ap);
}

static void *auth_tls_new(const char *ca_file, char **error_r)
{
    return tern_tls_client_new(ca_file, error_r);
}

static void auth_tls_free(void *tls)
{
    tern_tls_client_free(tls);
}

static int auth_post_start(uv_loop_t *loop, void *tls, const char *url,
                           const char *const *headers, size_t n_headers, const char *body,
                           size_t body_len, uint64_t timeout_ms, size_t max_body,
                           tern_auth_http_cb cb, void *arg)
{
    auth_post *ap = malloc(sizeof(*ap));
    if (ap == NULL)
        return -1;
    *ap = (auth_post){.cb = cb, .arg = arg};
    tern_http_request_params p = {
        .loop = loop,
        .tls = tls,
        .method = "POST",
        .url = url,
        .headers = headers,
        .n_headers = n_headers,
        .body = body,
        .body_len = body_len,
        .timeout_ms = timeout_ms,
        .max_body = max_body,
    };
    if (tern_http_request_start(&p, auth_posted, ap) == NULL) {
        free(ap);
        return -1;
    }
    return 0;
}

/* One tern_tls_client serves every worker loop's introspection requests:
 * its configurations and CA chain are only read during handshakes, and
 * its random generator takes its own lock (Debian's mbedTLS is built with
 * MBEDTLS_THREADING_C). */
const tern_auth_http tern_http_auth_transport = {
    .tls_new = auth_tls_new,
    .tls_free = auth_tls_free,
    .post = auth_post_start,
};
