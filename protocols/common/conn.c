/* The connection stream under every protocol session, see conn.h.
 *
 * Reads land in the worker's shared buffer and are handed to the session in
 * place; only bytes the session leaves (because it paused, or a partial
 * token) are copied into the connection's own buffer. That keeps an idle
 * connection to a few hundred bytes. While the session is paused, or holds
 * leftover input, the socket is not read at all: back-pressure reaches the
 * client through TCP instead of through our memory.
 *
 * Closing is "lingering": queued output is written, the write side shut
 * down, and input drained for a moment, so a client that pipelined past our
 * last reply (421, 221) still receives it instead of a reset. */
#include "protocols/common/conn.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/net.h"

#define CONN_IN_LIMIT (256 * 1024)  /* leftover plaintext held per connection, plus two reads */
#define CONN_LINGER_MS 2000         /* drain input this long after our last byte */
#define CONN_FLUSH_MS 10000         /* give a slow reader this long to take our last reply */

static void conn__start_reading(tern_conn *c);
static void conn__flush(tern_conn *c);
static void conn__fail(tern_conn *c, const char *reason);
static void conn__pump(tern_conn *c);

static void conn__alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    tern_conn *c = h->data;
    tern_conn_worker *w = c->worker;
    size_t n = c->read_size < w->readbuf_size ? c->read_size : w->readbuf_size;
    if (c->tls) {
        /* TLS keeps a bounded amount of unread ciphertext: never read more
         * than it can take (0 makes libuv report UV_ENOBUFS). */
        size_t room = tern_tls_conn_feed_room(c->tls);
        if (room < n)
            n = room;
    }
    buf->base = (char *)w->readbuf;
    buf->len = n;
}

static void conn__handle_closed(uv_handle_t *h)
{
    tern_conn *c = h->data;
    if (--c->handles_open > 0)
        return;
    if (c->tls)
        tern_tls_conn_free(c->tls);
    c->tls = NULL;
    tern_buf_free(&c->in);
    tern_buf_free(&c->out);
    tern_buf_free(&c->inflight);
    c->cbs->on_close(c);
}

static void conn__close_handles(tern_conn *c)
{
    if (uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    c->handles_open = 2;
    uv_close((uv_handle_t *)&c->tcp, conn__handle_closed);
    uv_close((uv_handle_t *)&c->timer, conn__handle_closed);
}

int tern_conn_init(tern_conn *c, uv_loop_t *loop, tern_conn_worker *w, int fd, size_t read_size,
                   const tern_conn_cbs *cbs, void *data)
{
    memset(c, 0, sizeof(*c));
    c->worker = w;
    c->cbs = cbs;
    c->data = data;
    c->read_size = read_size;
    c->out_high = 64 * 1024;
    tern_buf_init(&c->in, CONN_IN_LIMIT + 2 * read_size);
    tern_buf_init(&c->out, 0);
    tern_buf_init(&c->inflight, 0);
    int r = uv_tcp_init(loop, &c->tcp);
    if (r != 0) {
        close(fd);
        return r;
    }
    c->tcp.data = c;
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    r = uv_tcp_open(&c->tcp, (uv_os_sock_t)fd);
    if (r != 0) {
        /* The handles exist now: they must be closed through libuv, and
         * on_close will run as for any other connection. */
        close(fd);
        c->failed = c->closing = true;
        conn__close_handles(c);
        return 1;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    int len = sizeof(c->peer);
    uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&c->peer, &len);
    len = sizeof(c->local);
    uv_tcp_getsockname(&c->tcp, (struct sockaddr *)&c->local, &len);
    tern_sockaddr_str((struct sockaddr *)&c->peer, c->peer_ip, sizeof(c->peer_ip), &c->peer_port);
    return 0;
}

/* --- output ----------------------------------------------------------- */

static void conn__take_tls_output(tern_conn *c)
{
    tern_buf *o = tern_tls_conn_output(c->tls);
    if (o->len == 0)
        return;
    if (tern_buf_append(&c->out, o->data, o->len) != 0) {
        conn__fail(c, "out of memory");
        return;
    }
    o->len = 0;
}

static void conn__do_close(tern_conn *c);

static void conn__linger_timer(uv_timer_t *t)
{
    conn__close_handles(t->data);
}

static void conn__shutdown_cb(uv_shutdown_t *req, int status)
{
    tern_conn *c = req->data;
    free(req);
    if (status != 0 || uv_is_closing((uv_handle_t *)&c->tcp)) {
        conn__close_handles(c);
        return;
    }
    /* Lingering: keep reading (and discarding) until EOF or the timer. */
    c->reading = false;
    conn__start_reading(c);
    uv_timer_start(&c->timer, conn__linger_timer, CONN_LINGER_MS, 0);
}


static void conn__do_close(tern_conn *c)
{
    if (uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    if (c->failed) {
        conn__close_handles(c);
        return;
    }
    uv_shutdown_t *req = malloc(sizeof(*req));
    if (req == NULL || uv_shutdown(req, (uv_stream_t *)&c->tcp, conn__shutdown_cb) != 0) {
        free(req);
        conn__close_handles(c);
        return;
    }
    req->data = c;
    uv_timer_stop(&c->timer);
}

static void conn__write_cb(uv_write_t *req, int status)
{
    tern_conn *c = req->data;
    c->inflight.len = 0;
    if (status != 0) {
        conn__fail(c, uv_strerror(status));
        return;
    }
    tern_buf_shrink(&c->inflight, 0);
    if (c->out.len > 0) {
        conn__flush(c);
        return;
    }
    if (c->close_after_flush) {
        conn__do_close(c);
        return;
    }
    if (c->cbs->on_drain && !c->closing)
        c->cbs->on_drain(c);
}

static void conn__flush(tern_conn *c)
{
    if (c->inflight.len > 0 || uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    if (c->out.len == 0) {
        if (c->close_after_flush)
            conn__do_close(c);
        return;
    }
    uv_buf_t b = uv_buf_init((char *)c->out.data, (unsigned)c->out.len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n > 0) {
        c->bytes_out += (uint64_t)n;
        tern_buf_consume(&c->out, (size_t)n);
    } else if (n != UV_EAGAIN && n != UV_ENOSYS) {
        conn__fail(c, uv_strerror(n));
        return;
    }
    if (c->out.len == 0) {
        tern_buf_shrink(&c->out, 0);
        if (c->close_after_flush)
            conn__do_close(c);
        else if (c->cbs->on_drain && !c->closing && n > 0)
            c->cbs->on_drain(c);
        return;
    }
    /* Hand the rest to libuv; new output accumulates in `out` meanwhile. */
    tern_buf tmp = c->inflight;
    c->inflight = c->out;
    c->out = tmp;
    c->bytes_out += c->inflight.len;
    b = uv_buf_init((char *)c->inflight.data, (unsigned)c->inflight.len);
    c->wreq.data = c;
    int r = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, conn__write_cb);
    if (r != 0) {
        c->inflight.len = 0;
        conn__fail(c, uv_strerror(r));
    }
}

void tern_conn_write(tern_conn *c, const void *data, size_t len)
{
    if (c->failed || c->close_after_flush || len == 0)
        return;
    if (c->tls && !c->tls_pending) {
        if (tern_tls_conn_write(c->tls, data, len) != TERN_TLS_OK) {
            conn__fail(c, "tls write failed");
            return;
        }
        conn__take_tls_output(c);
    } else if (tern_buf_append(&c->out, data, len) != 0) {
        conn__fail(c, "out of memory");
        return;
    }
    if (!c->in_callback)
        conn__flush(c);
}

void tern_conn_printf(tern_conn *c, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    tern_conn_write(c, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

size_t tern_conn_unsent(const tern_conn *c)
{
    return c->out.len + c->inflight.len;
}

/* --- input ------------------------------------------------------------ */

const uint8_t *tern_conn_input(tern_conn *c, size_t *len_r)
{
    *len_r = c->view_len - c->view_used;
    return c->view + c->view_used;
}

void tern_conn_consume(tern_conn *c, size_t n)
{
    size_t left = c->view_len - c->view_used;
    c->view_used += n < left ? n : left;
}

/* Shows `data` to the session; returns how much it consumed. */
static size_t conn__show(tern_conn *c, const uint8_t *data, size_t len)
{
    c->view = data;
    c->view_len = len;
    c->view_used = 0;
    c->in_callback = true;
    c->cbs->on_data(c);
    c->in_callback = false;
    size_t used = c->view_used;
    c->view = NULL;
    c->view_len = c->view_used = 0;
    return used;
}

static void conn__stop_reading(tern_conn *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

/* New plaintext from the network. */
static void conn__deliver(tern_conn *c, const uint8_t *data, size_t len)
{
    if (c->closing)
        return;
    if (c->in.len == 0 && !c->paused) {
        size_t used = conn__show(c, data, len);
        data += used;
        len -= used;
        if (c->failed || uv_is_closing((uv_handle_t *)&c->tcp))
            return;
        if (len > 0 && !c->closing && tern_buf_append(&c->in, data, len) != 0)
            conn__fail(c, "input buffer limit");
        return;
    }
    /* Earlier bytes are still waiting: keep the order, then let the
     * session see everything together. */
    if (!c->closing && tern_buf_append(&c->in, data, len) != 0) {
        conn__fail(c, "input buffer limit");
        return;
    }
    conn__pump(c);
}

/* Runs buffered input through the session for as long as it makes progress. */
static void conn__pump(tern_conn *c)
{
    if (c->in_callback)
        return;
    while (!c->paused && !c->closing && !c->failed && c->in.len > 0) {
        size_t used = conn__show(c, c->in.data, c->in.len);
        if (c->failed || uv_is_closing((uv_handle_t *)&c->tcp))
            return;
        if (used == 0)
            break; /* needs more bytes than are buffered */
        tern_buf_consume(&c->in, used);
    }
    if (c->in.len == 0)
        tern_buf_shrink(&c->in, 0);
    conn__flush(c);
}

static void conn__tls_read_all(tern_conn *c)
{
    uint8_t plain[16384];
    while (c->tls && !c->tls_pending && !c->paused && !c->closing && !c->failed) {
        size_t n = 0;
        int r = tern_tls_conn_read(c->tls, plain, sizeof(plain), &n);
        conn__take_tls_output(c);
        if (r == TERN_TLS_OK && n > 0) {
            conn__deliver(c, plain, n);
            continue;
        }
        if (r == TERN_TLS_AGAIN || r == TERN_TLS_OK)
            break;
        conn__fail(c, r == TERN_TLS_CLOSED ? "tls close_notify" : tern_tls_conn_error(c->tls));
        return;
    }
}

static void conn__tls_input(tern_conn *c, const uint8_t *data, size_t len)
{
    if (tern_tls_conn_feed(c->tls, data, len) != 0) {
        conn__fail(c, "tls input overflow");
        return;
    }
    if (c->tls_pending) {
        int r = tern_tls_conn_handshake(c->tls);
        conn__take_tls_output(c);
        if (r == TERN_TLS_AGAIN) {
            conn__flush(c);
            return;
        }
        if (r != TERN_TLS_OK) {
            char reason[256];
            snprintf(reason, sizeof(reason), "tls handshake: %s", tern_tls_conn_error(c->tls));
            conn__flush(c);
            conn__fail(c, reason);
            return;
        }
        c->tls_pending = false;
        c->in_callback = true;
        if (c->cbs->on_tls)
            c->cbs->on_tls(c);
        c->in_callback = false;
        if (c->closing || c->failed)
            return;
    }
    conn__tls_read_all(c);
}

static void conn__read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    tern_conn *c = s->data;
    if (nread == 0)
        return;
    if (nread == UV_ENOBUFS) {
        conn__stop_reading(c); /* resumes when the session takes its input */
        return;
    }
    if (nread < 0) {
        conn__stop_reading(c);
        if (c->closing) {
            conn__close_handles(c); /* lingering close: peer finished */
            return;
        }
        conn__fail(c, nread == UV_EOF ? "eof" : uv_strerror((int)nread));
        return;
    }
    if (c->closing)
        return; /* lingering: discard */
    c->bytes_in += (uint64_t)nread;
    tern_conn_set_timeout(c, c->timeout_ms); /* activity restarts the idle timer */
    if (c->tls)
        conn__tls_input(c, (const uint8_t *)buf->base, (size_t)nread);
    else
        conn__deliver(c, (const uint8_t *)buf->base, (size_t)nread);
    if (c->failed || uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    /* A paused session reads nothing more: TCP pushes back on the client. */
    if (c->paused)
        conn__stop_reading(c);
    conn__flush(c);
}

static void conn__start_reading(tern_conn *c)
{
    if (c->reading || uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    if (uv_read_start((uv_stream_t *)&c->tcp, conn__alloc, conn__read_cb) == 0)
        c->reading = true;
}

int tern_conn_start(tern_conn *c, tern_tls_conn *tls)
{
    if (tls) {
        c->tls = tls;
        c->tls_pending = true;
    }
    conn__start_reading(c);
    return c->reading ? 0 : UV_EIO;
}

void tern_conn_pause(tern_conn *c)
{
    c->paused = true;
}

void tern_conn_resume(tern_conn *c)
{
    /* Even when not paused: input may be buffered from an earlier pause
     * that was lifted while the session could not take it. */
    c->paused = false;
    if (c->closing || c->failed)
        return;
    conn__pump(c);
    if (c->paused || c->closing || c->failed)
        return;
    if (c->tls && !c->tls_pending)
        conn__tls_read_all(c);
    if (!c->paused && !c->closing && !c->failed)
        conn__start_reading(c);
    conn__flush(c);
}

void tern_conn_starttls(tern_conn *c, tern_tls_conn *tls)
{
    /* Whatever the client sent after STARTTLS and before the handshake was
     * sent in the clear and could have been injected: drop it. */
    c->view_used = c->view_len;
    c->in.len = 0;
    c->tls = tls;
    c->tls_pending = true;
}

void tern_conn_starttls_client(tern_conn *c, tern_tls_conn *tls)
{
    tern_conn_starttls(c, tls);
    /* The client speaks first: nothing arrives until our ClientHello. */
    int r = tern_tls_conn_handshake(c->tls);
    conn__take_tls_output(c);
    conn__flush(c);
    if (r == TERN_TLS_ERROR) {
        char reason[256];
        snprintf(reason, sizeof(reason), "tls handshake: %s", tern_tls_conn_error(c->tls));
        conn__fail(c, reason);
    }
}

/* --- timers and closing ----------------------------------------------- */

static void conn__timer_cb(uv_timer_t *t)
{
    tern_conn *c = t->data;
    if (c->closing) {
        conn__close_handles(c);
        return;
    }
    if (c->cbs->on_timeout)
        c->cbs->on_timeout(c);
}

void tern_conn_set_timeout(tern_conn *c, uint64_t ms)
{
    c->timeout_ms = ms;
    if (c->closing || uv_is_closing((uv_handle_t *)&c->timer))
        return;
    if (ms == 0)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, conn__timer_cb, ms, 0);
}

static void conn__fail(tern_conn *c, const char *reason)
{
    if (c->failed)
        return;
    c->failed = true;
    conn__stop_reading(c);
    if (c->closing) {
        conn__close_handles(c);
        return;
    }
    c->closing = true;
    if (c->cbs->on_error)
        c->cbs->on_error(c, reason);
    conn__close_handles(c);
}

void tern_conn_close(tern_conn *c, bool flush)
{
    if (c->closing)
        return;
    c->closing = true;
    c->paused = true;
    conn__stop_reading(c);
    if (!flush || c->failed) {
        conn__close_handles(c);
        return;
    }
    if (c->tls && !c->tls_pending) {
        tern_tls_conn_close_notify(c->tls);
        conn__take_tls_output(c);
    }
    c->close_after_flush = true;
    /* A peer that never reads must not hold the connection forever. */
    uv_timer_start(&c->timer, conn__linger_timer, CONN_FLUSH_MS, 0);
    if (!c->in_callback)
        conn__flush(c);
    else if (c->out.len == 0 && c->inflight.len == 0)
        conn__do_close(c);
}

bool tern_conn_is_tls(const tern_conn *c)
{
    return c->tls != NULL && !c->tls_pending;
}
