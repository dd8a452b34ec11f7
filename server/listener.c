/* Listening sockets and the acceptors that poll them. Sockets are created
 * with plain socket(2) so that SO_REUSEPORT can be set before bind (libuv
 * 1.44 cannot), and accepted with accept4(2) so the fd can be handed to
 * another worker's loop. Input: validated listener config. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/log.h"
#include "server/server.h"

#define ACCEPT_BATCH 64 /* accepts per wake-up: fairness with other work */

int tern_listener_socket(const tern_listener_conf *lc, bool reuseport, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t sl;
    int family;
    struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, lc->address, &in4->sin_addr) == 1) {
        family = AF_INET;
        in4->sin_family = AF_INET;
        in4->sin_port = htons(lc->port);
        sl = sizeof(*in4);
    } else if (inet_pton(AF_INET6, lc->address, &in6->sin6_addr) == 1) {
        family = AF_INET6;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(lc->port);
        sl = sizeof(*in6);
    } else {
        snprintf(err, errlen, "bad address %s", lc->address);
        return -1;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
        snprintf(err, errlen, "SO_REUSEPORT: %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (family == AF_INET6) {
        /* "::" means every address, IPv4 included; a specific IPv6 address
         * means only that one. */
        int v6only = IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr) ? 0 : 1;
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only));
    }
    if (bind(fd, (struct sockaddr *)&ss, sl) != 0) {
        snprintf(err, errlen, "bind %s port %u: %s", lc->address, lc->port, strerror(errno));
        close(fd);
        return -1;
    }
    if (listen(fd, 4096) != 0) {
        snprintf(err, errlen, "listen: %s", strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

char *tern_listener_key(const tern_listener_conf *lc)
{
    char buf[512];
    snprintf(buf, sizeof(buf), "%s %s %u %d %u", lc->name, lc->address, lc->port, lc->reuse,
             lc->workers);
    return strdup(buf);
}

unsigned tern_listener_workers(const tern_listener_conf *lc, unsigned nworkers)
{
    if (lc->workers == 0 || lc->workers > nworkers)
        return nworkers;
    return lc->workers;
}

static void acceptor__poll_cb(uv_poll_t *p, int status, int events)
{
    tern_acceptor *a = p->data;
    if (status < 0 || a->closing)
        return;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        int fd = accept4(a->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                TLOG_ERR("server", "event=accept_failed listener=%s error=\"%s\"", a->name,
                         strerror(errno));
            return;
        }
        tern_config *cfg;
        tern_tls_server *tls;
        tern_auth *auth;
        tern_server_snapshot(a->srv, &cfg, &tls, &auth);
        tern_worker *w = a->owner;
        if (w == NULL) {
            w = &a->srv->workers[a->rr % a->nworkers];
            a->rr++;
            wmsg *m = calloc(1, sizeof(*m));
            if (m == NULL) {
                close(fd);
                tern_config_unref(cfg);
                if (tls)
                    tern_tls_server_unref(tls);
                if (auth)
                    tern_auth_unref(auth);
                continue;
            }
            m->type = WMSG_CONN;
            m->fd = fd;
            m->name = strdup(a->name);
            m->cfg = cfg;
            m->tls = tls;
            m->auth = auth;
            tern_worker_post(w, m);
        } else {
            tern_server_serve(w, fd, a->name, cfg, tls, auth);
        }
    }
}

tern_acceptor *tern_acceptor_new(tern_server *srv, tern_worker *owner, uv_loop_t *loop, int fd,
                                 const char *name, const char *key, unsigned nworkers)
{
    tern_acceptor *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return NULL;
    a->fd = fd;
    a->srv = srv;
    a->owner = owner;
    a->nworkers = nworkers ? nworkers : 1;
    a->name = strdup(name);
    a->key = strdup(key);
    if (uv_poll_init(loop, &a->poll, fd) != 0) {
        free(a->name);
        free(a->key);
        free(a);
        return NULL;
    }
    a->poll.data = a;
    uv_poll_start(&a->poll, UV_READABLE, acceptor__poll_cb);
    return a;
}

static void acceptor__closed(uv_handle_t *h)
{
    tern_acceptor *a = h->data;
    free(a->name);
    free(a->key);
    free(a);
}

void tern_acceptor_close(tern_acceptor *a)
{
    a->closing = true;
    uv_poll_stop(&a->poll);
    /* uv_close forgets the fd in epoll synchronously; closing the socket
     * right after frees the port at once, so a reload can bind it again. */
    uv_close((uv_handle_t *)&a->poll, acceptor__closed);
    close(a->fd);
    a->fd = -1;
}
