/* The control socket (see control.h): a Unix stream socket on the main
 * loop, one JSON request per line, one JSON answer per line. The socket
 * is mode 0600 in the state directory, so whoever can connect is the
 * server's own user (or root); the requests are still untrusted input:
 * parsed by lib/json within bounds, and a line past
 * TERN_CONTROL_MAX_LINE is refused. Every operation runs on the loop and
 * is quick (no disk wait: the spool records go through its writer). */
#include "server/control.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "lib/json_write.h"
#include "lib/log.h"
#include "server/control_req.h"

#define MOD "control"
/* An answer is bounded too: the queue listing of a huge backlog is cut
 * with an error rather than using unbounded memory. */
#define MAX_ANSWER (64u << 20)

typedef struct cclient {
    uv_pipe_t pipe;
    tern_control *ctl;
    char line[TERN_CONTROL_MAX_LINE];
    size_t len;
    bool closing;
    struct cclient *prev, *next;
} cclient;

struct tern_control {
    uv_loop_t *loop;
    uv_pipe_t listen;
    char *path;
    tern_queue *queue;
    tern_auth *const *auth_slot;
    cclient *clients;
    unsigned n_clients;
    unsigned handles;
    bool closed;
    bool orphan;    /* set-up failed after the handle existed: freed on close */
};

typedef struct wreq {
    uv_write_t req;
    tern_buf buf;
} wreq;

/* ---- requests ----------------------------------------------------------- */

static void answer_error(tern_buf *out, const char *msg)
{
    out->len = 0; /* whatever part of an answer was written goes */
    tern_buf_append_str(out, "{\"ok\":false,\"error\":");
    tern_json_write_cstr(out, msg);
    tern_buf_append_str(out, "}");
}

static void answer_errno(tern_buf *out, int r, const char *qid)
{
    char msg[128];
    if (r == -ENOENT)
        snprintf(msg, sizeof(msg), "%s: not in the queue", qid ? qid : "?");
    else if (r == -EBUSY)
        snprintf(msg, sizeof(msg), "%s: a delivery attempt is in flight; try again", qid);
    else if (r == -ENOMEM)
        snprintf(msg, sizeof(msg), "answer too large or out of memory");
    else
        snprintf(msg, sizeof(msg), "%s", strerror(-r));
    answer_error(out, msg);
}

static void answer_auth_stats(tern_auth *a, tern_buf *out)
{
    if (a == NULL) {
        answer_error(out, "no authentication is configured");
        return;
    }
    tern_auth_stats st;
    tern_auth_stats_get(a, &st);
    const struct {
        const char *name;
        uint64_t v;
    } f[] = {{"ok", st.ok},
             {"failed", st.failed},
             {"refused", st.refused},
             {"errors", st.errors},
             {"lockouts_ip", st.lockouts_ip},
             {"lockouts_account", st.lockouts_account},
             {"tracked", st.tracked},
             {"locked_now", st.locked_now}};
    tern_buf_append_str(out, "{\"ok\":true,\"result\":{");
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        if (i)
            tern_buf_append_str(out, ",");
        tern_json_write_key(out, f[i].name);
        tern_json_write_uint(out, f[i].v);
    }
    tern_buf_append_str(out, "}}");
}

void tern_control_handle(tern_queue *q, tern_auth *auth, const char *line, size_t len,
                         tern_buf *out)
{
    tern_control_req req;
    char err[160];
    if (tern_control_req_parse(line, len, &req, err, sizeof(err)) != 0) {
        answer_error(out, err);
        return;
    }
    if (req.cmd == TERN_CTL_AUTH_STATS) {
        answer_auth_stats(auth, out);
        return;
    }
    if (q == NULL) {
        answer_error(out, "the queue manager is not running");
        return;
    }
    const char *qid = req.qid[0] ? req.qid : NULL;
    int r = 0;
    switch (req.cmd) {
    case TERN_CTL_QUEUE_LIST:
    case TERN_CTL_QUEUE_HOSTS:
    case TERN_CTL_QUEUE_SHOW:
        tern_buf_append_str(out, "{\"ok\":true,\"result\":");
        r = req.cmd == TERN_CTL_QUEUE_LIST    ? tern_queue_list(q, out)
            : req.cmd == TERN_CTL_QUEUE_HOSTS ? tern_queue_hosts(q, out)
                                              : tern_queue_show(q, qid, out);
        if (r == 0 && tern_buf_append_str(out, "}") != 0)
            r = -ENOMEM;
        break;
    case TERN_CTL_QUEUE_RETRY:
        r = tern_queue_retry(q, req.all ? NULL : qid);
        if (r >= 0) {
            tern_buf_append_str(out, "{\"ok\":true,\"result\":{\"recipients\":");
            tern_json_write_int(out, r);
            tern_buf_append_str(out, "}}");
            r = 0;
        }
        break;
    case TERN_CTL_QUEUE_HOLD:
    case TERN_CTL_QUEUE_RELEASE:
    case TERN_CTL_QUEUE_DELETE:
        r = req.cmd == TERN_CTL_QUEUE_HOLD      ? tern_queue_hold(q, qid)
            : req.cmd == TERN_CTL_QUEUE_RELEASE ? tern_queue_release(q, qid)
                                                : tern_queue_delete(q, qid);
        if (r == 0)
            tern_buf_append_str(out, "{\"ok\":true}");
        break;
    case TERN_CTL_AUTH_STATS:
        break; /* answered above */
    }
    if (r != 0)
        answer_errno(out, r, qid);
}

/* ---- connections -------------------------------------------------------- */

static void client_closed(uv_handle_t *h)
{
    cclient *cl = h->data;
    tern_control *c = cl->ctl;
    if (cl->prev)
        cl->prev->next = cl->next;
    else
        c->clients = cl->next;
    if (cl->next)
        cl->next->prev = cl->prev;
    c->n_clients--;
    free(cl);
}

static void client_close(cclient *cl)
{
    if (cl->closing)
        return;
    cl->closing = true;
    uv_close((uv_handle_t *)&cl->pipe, client_closed);
}

static void written(uv_write_t *req, int status)
{
    (void)status; /* a client gone before the answer: nothing to do */
    wreq *w = (wreq *)req;
    tern_buf_free(&w->buf);
    free(w);
}

static void client_send(cclient *cl, wreq *w)
{
    if (tern_buf_append_str(&w->buf, "\n") != 0) {
        tern_buf_free(&w->buf);
        free(w);
        client_close(cl);
        return;
    }
    uv_buf_t b = uv_buf_init((char *)w->buf.data, (unsigned)w->buf.len);
    if (uv_write(&w->req, (uv_stream_t *)&cl->pipe, &b, 1, written) != 0) {
        tern_buf_free(&w->buf);
        free(w);
        client_close(cl);
    }
}

static void client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    cclient *cl = h->data;
    buf->base = cl->line + cl->len;
    buf->len = sizeof(cl->line) - cl->len;
}

static void client_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    cclient *cl = s->data;
    if (n < 0) {
        client_close(cl);
        return;
    }
    cl->len += (size_t)n;
    char *nl;
    while (!cl->closing && (nl = memchr(cl->line, '\n', cl->len)) != NULL) {
        size_t ll = (size_t)(nl - cl->line);
        wreq *w = calloc(1, sizeof(*w));
        if (w == NULL) {
            client_close(cl);
            return;
        }
        tern_buf_init(&w->buf, MAX_ANSWER);
        tern_control_handle(cl->ctl->queue, cl->ctl->auth_slot ? *cl->ctl->auth_slot : NULL,
                            cl->line, ll > 0 && cl->line[ll - 1] == '\r' ? ll - 1 : ll,
                            &w->buf);
        client_send(cl, w);
        memmove(cl->line, nl + 1, cl->len - ll - 1);
        cl->len -= ll + 1;
    }
    if (!cl->closing && cl->len == sizeof(cl->line)) {
        /* No newline within the bound: refuse, then close (the rest of
         * the line cannot be told from the next request). */
        TLOG_WARN(MOD, "event=line_too_long limit=%d", TERN_CONTROL_MAX_LINE);
        wreq *w = calloc(1, sizeof(*w));
        if (w) {
            tern_buf_init(&w->buf, MAX_ANSWER);
            answer_error(&w->buf, "request line too long");
            client_send(cl, w);
        }
        uv_read_stop(s);
        client_close(cl);
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    tern_control *c = server->data;
    if (status != 0 || c->closed)
        return;
    cclient *cl = calloc(1, sizeof(*cl));
    if (cl == NULL)
        return;
    cl->ctl = c;
    uv_pipe_init(c->loop, &cl->pipe, 0);
    cl->pipe.data = cl;
    cl->next = c->clients;
    if (c->clients)
        c->clients->prev = cl;
    c->clients = cl;
    c->n_clients++;
    if (uv_accept(server, (uv_stream_t *)&cl->pipe) != 0) {
        client_close(cl);
        return;
    }
    if (c->n_clients > TERN_CONTROL_MAX_CLIENTS) {
        TLOG_WARN(MOD, "event=too_many_clients limit=%d", TERN_CONTROL_MAX_CLIENTS);
        client_close(cl);
        return;
    }
    if (uv_read_start((uv_stream_t *)&cl->pipe, client_alloc, client_read) != 0)
        client_close(cl);
}

/* ---- the listening socket ----------------------------------------------- */

/* 0 when path is free (absent, or a stale socket now unlinked), else -1
 * with err set. */
static int claim_path(const char *path, char *err, size_t err_size)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : (snprintf(err, err_size, "%s: %s", path, strerror(errno)), -1);
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, err_size, "%s exists and is not a socket", path);
        return -1;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, err_size, "socket: %s", strerror(errno));
        return -1;
    }
    /* A local connect answers at once: accepted by a live server (even
     * one busy: the backlog takes it) or refused when nobody listens. */
    int r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    int e = errno;
    close(fd);
    if (r == 0) {
        snprintf(err, err_size, "%s: another server is running with it", path);
        return -1;
    }
    if (e != ECONNREFUSED) {
        snprintf(err, err_size, "%s: %s", path, strerror(e));
        return -1;
    }
    if (unlink(path) != 0 && errno != ENOENT) {
        snprintf(err, err_size, "%s: cannot remove the stale socket: %s", path, strerror(errno));
        return -1;
    }
    TLOG_INFO(MOD, "event=stale_socket_removed path=%s", path);
    return 0;
}

static void listen_closed(uv_handle_t *h)
{
    tern_control *c = h->data;
    c->handles--;
    if (c->orphan && c->handles == 0) {
        free(c->path);
        free(c);
    }
}

tern_control *tern_control_new(uv_loop_t *loop, const char *path, tern_queue *queue,
                               tern_auth *const *auth_slot, char *err, size_t err_size)
{
    if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        snprintf(err, err_size, "%s: path too long for a Unix socket", path);
        return NULL;
    }
    if (claim_path(path, err, err_size) != 0)
        return NULL;
    tern_control *c = calloc(1, sizeof(*c));
    if (c == NULL || (c->path = strdup(path)) == NULL) {
        free(c);
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    c->loop = loop;
    c->queue = queue;
    c->auth_slot = auth_slot;
    /* The socket is made by hand so that a failure leaves no libuv handle
     * to close, and so its mode is set before listen(): until then every
     * connect is refused, so no one gets in through the umask's mode. */
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    const char *step = "socket";
    bool bound = false;
    if (fd >= 0 && (step = "bind", bind(fd, (struct sockaddr *)&sa, sizeof(sa))) == 0 &&
        (bound = true, step = "chmod", chmod(path, 0600)) == 0 &&
        (step = "listen", listen(fd, 16)) == 0) {
        uv_pipe_init(loop, &c->listen, 0);
        c->listen.data = c;
        c->handles = 1;
        int r = uv_pipe_open(&c->listen, fd);
        if (r == 0)
            r = uv_listen((uv_stream_t *)&c->listen, 16, on_connection);
        if (r != 0) {
            /* The handle exists now: close it through the loop. */
            snprintf(err, err_size, "%s: %s", path, uv_strerror(r));
            unlink(path);
            c->orphan = true;
            tern_control_close(c);
            return NULL; /* freed by listen_closed */
        }
    } else {
        snprintf(err, err_size, "%s: %s: %s", path, step, strerror(errno));
        if (fd >= 0)
            close(fd);
        if (bound)
            unlink(path);
        free(c->path);
        free(c);
        return NULL;
    }
    TLOG_INFO(MOD, "event=listening path=%s", path);
    return c;
}

void tern_control_close(tern_control *c)
{
    if (c == NULL || c->closed)
        return;
    c->closed = true;
    uv_close((uv_handle_t *)&c->listen, listen_closed);
    for (cclient *cl = c->clients; cl; cl = cl->next)
        client_close(cl);
    unlink(c->path);
}

void tern_control_free(tern_control *c)
{
    if (c == NULL)
        return;
    free(c->path);
    free(c);
}
