/* Worker threads: each runs its own libuv loop and owns every session it
 * serves. Other threads talk to a worker only through its message queue and
 * uv_async wake-up. Input: fds accepted by ternd, messages from the main
 * loop. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/log.h"
#include "mailets/engine.h"
#include "protocols/imap/imap_session.h"
#include "server/queue.h"
#include "protocols/pop3/pop3_session.h"
#include "protocols/smtp/smtp_session.h"
#include "server/server.h"

#define READBUF_SIZE (1024 * 1024) /* the upper bound of listeners[].buffer_size */

void tern_worker_post(tern_worker *w, wmsg *m)
{
    m->next = NULL;
    pthread_mutex_lock(&w->mu);
    if (w->tail)
        w->tail->next = m;
    else
        w->head = m;
    w->tail = m;
    pthread_mutex_unlock(&w->mu);
    uv_async_send(&w->wake);
}

static void worker__msg_free(wmsg *m)
{
    if (m->fd >= 0)
        close(m->fd);
    if (m->cfg)
        tern_config_unref(m->cfg);
    if (m->tls)
        tern_tls_server_unref(m->tls);
    if (m->auth)
        tern_auth_unref(m->auth);
    free(m->name);
    free(m->key);
    free(m);
}

static void worker__maybe_stop(tern_worker *w);

static void worker__released(tern_session_host *h, tern_session *s)
{
    tern_worker *w = h->owner;
    tern_limits_release(w->srv->limits, (struct sockaddr *)&s->peer);
    if (w->draining && h->count == 0)
        worker__maybe_stop(w);
}

static void worker__closed_async(uv_handle_t *h)
{
    (void)h;
}

static void worker__maybe_stop(tern_worker *w)
{
    if (!w->draining || w->host.count > 0 || w->stopping)
        return;
    w->stopping = true;
    for (tern_acceptor *a = w->acceptors, *n; a; a = n) {
        n = a->next;
        tern_acceptor_close(a);
    }
    w->acceptors = NULL;
    /* Mail being processed here keeps its spool entry (finished recipients
     * are recorded) and is picked up again at the next start. */
    if (w->runner) {
        tern_runner_close(w->runner);
        w->runner = NULL;
        w->host.runner = NULL;
    }
    tern_spool_client_close(w->host.spool_client);
    tern_store_client_close(w->host.store_client);
    uv_close((uv_handle_t *)&w->wake, worker__closed_async);
}

static void worker__handle(tern_worker *w, wmsg *m)
{
    switch (m->type) {
    case WMSG_CONN:
        if (w->draining) {
            worker__msg_free(m);
            return;
        }
        tern_server_serve(w, m->fd, m->name, m->cfg, m->tls, m->auth);
        m->fd = -1;
        m->cfg = NULL;
        m->tls = NULL;
        m->auth = NULL;
        break;
    case WMSG_ADD_ACCEPTOR: {
        if (w->draining)
            break;
        tern_acceptor *a = tern_acceptor_new(w->srv, w, &w->loop, m->fd, m->name, m->key, 1);
        if (a) {
            m->fd = -1;
            a->next = w->acceptors;
            w->acceptors = a;
        }
        break;
    }
    case WMSG_DEL_ACCEPTOR:
        for (tern_acceptor **pp = &w->acceptors; *pp;) {
            tern_acceptor *a = *pp;
            if (strcmp(a->key, m->key) == 0) {
                *pp = a->next;
                tern_acceptor_close(a);
            } else {
                pp = &a->next;
            }
        }
        break;
    case WMSG_DRAIN:
        w->draining = true;
        for (tern_acceptor *a = w->acceptors, *n; a; a = n) {
            n = a->next;
            tern_acceptor_close(a);
        }
        w->acceptors = NULL;
        w->host.draining = true;
        for (tern_session *s = w->host.list.next, *n; s != &w->host.list; s = n) {
            n = s->next;
            s->ops->drain(s);
        }
        worker__maybe_stop(w);
        break;
    case WMSG_SHUTDOWN:
        for (tern_session *s = w->host.list.next, *n; s != &w->host.list; s = n) {
            n = s->next;
            s->ops->shutdown(s);
        }
        break;
    }
    worker__msg_free(m);
}

static wmsg *worker__take_all(tern_worker *w)
{
    pthread_mutex_lock(&w->mu);
    wmsg *m = w->head;
    w->head = w->tail = NULL;
    pthread_mutex_unlock(&w->mu);
    return m;
}

static void worker__wake(uv_async_t *a)
{
    tern_worker *w = a->data;
    wmsg *m = worker__take_all(w);
    while (m) {
        wmsg *n = m->next;
        if (w->stopping)
            worker__msg_free(m);
        else
            worker__handle(w, m);
        m = n;
    }
}

static void worker__main(void *arg)
{
    tern_worker *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    /* Anything posted after the loop stopped. */
    wmsg *m = worker__take_all(w);
    while (m) {
        wmsg *n = m->next;
        worker__msg_free(m);
        m = n;
    }
    w->done = true;
    atomic_fetch_sub(&w->srv->workers_running, 1);
    uv_async_send(&w->srv->worker_done);
}

int tern_worker_start(tern_worker *w)
{
    int r = uv_loop_init(&w->loop);
    if (r != 0)
        return r;
    pthread_mutex_init(&w->mu, NULL);
    uv_async_init(&w->loop, &w->wake, worker__wake);
    w->wake.data = w;
    w->host.loop = &w->loop;
    w->host.conn_worker.readbuf = malloc(READBUF_SIZE);
    w->host.conn_worker.readbuf_size = READBUF_SIZE;
    if (w->host.conn_worker.readbuf == NULL)
        return UV_ENOMEM;
    w->host.spool = w->srv->spool;
    /* uv_async_init inside the spool client is not thread-safe against a
     * running loop; the loop is not running yet, so this is fine here. */
    w->host.spool_client = tern_spool_client_new(w->srv->spool, &w->loop);
    if (w->host.spool_client == NULL)
        return UV_ENOMEM;
    w->host.store = w->srv->store;
    w->host.store_client = tern_store_client_new(w->srv->store, &w->loop);
    if (w->host.store_client == NULL)
        return UV_ENOMEM;
    tern_runner_env renv = {
        .loop = &w->loop,
        .spool = w->srv->spool,
        .spool_client = w->host.spool_client,
        .store_client = w->host.store_client,
        .current = tern_server_pipeline,
        .current_arg = w->srv,
        .pick = tern_server_pick_runner,
        .pick_arg = w->srv,
        .queued = w->srv->queue ? tern_queue_notify : NULL,
        .queued_arg = w->srv->queue,
    };
    w->runner = tern_runner_new(&renv);
    if (w->runner == NULL)
        return UV_ENOMEM;
    w->host.runner = w->runner;
    w->host.list.next = w->host.list.prev = &w->host.list;
    w->host.released = worker__released;
    w->host.owner = w;
    atomic_fetch_add(&w->srv->workers_running, 1);
    r = uv_thread_create(&w->thread, worker__main, w);
    if (r != 0)
        atomic_fetch_sub(&w->srv->workers_running, 1);
    return r;
}

static void serve__drop(int fd, tern_config *cfg, tern_tls_server *tls, tern_auth *auth)
{
    close(fd);
    tern_config_unref(cfg);
    if (tls)
        tern_tls_server_unref(tls);
    if (auth)
        tern_auth_unref(auth);
}

void tern_server_serve(tern_worker *w, int fd, const char *listener, tern_config *cfg,
                       tern_tls_server *tls, tern_auth *auth)
{
    size_t li = cfg->n_listeners;
    for (size_t i = 0; i < cfg->n_listeners; i++)
        if (strcmp(cfg->listeners[i].name, listener) == 0) {
            li = i;
            break;
        }
    struct sockaddr_storage peer;
    socklen_t pl = sizeof(peer);
    if (li == cfg->n_listeners || w->draining ||
        getpeername(fd, (struct sockaddr *)&peer, &pl) != 0) {
        serve__drop(fd, cfg, tls, auth);
        return;
    }
    tern_admit adm = tern_limits_admit(w->srv->limits, (struct sockaddr *)&peer, tern_now_ms());
    if (adm != TERN_ADMIT_OK) {
        char ip[64];
        tern_sockaddr_str((struct sockaddr *)&peer, ip, sizeof(ip), NULL);
        TLOG_WARN("server", "event=refused listener=%s ip=%s reason=%s", listener, ip,
                  tern_admit_name(adm));
        const tern_listener_conf *lc = &cfg->listeners[li];
        if (lc->tls != TERN_TLS_IMPLICIT &&
            (lc->protocol == TERN_PROTO_SMTP || lc->protocol == TERN_PROTO_SUBMISSION)) {
            char line[300];
            size_t n = tern_smtp_refusal(cfg, tern_admit_name(adm), line, sizeof(line));
            /* A fresh socket's send buffer is empty: this cannot block. */
            ssize_t wr = send(fd, line, n, MSG_DONTWAIT | MSG_NOSIGNAL);
            (void)wr;
        }
        if (lc->tls != TERN_TLS_IMPLICIT && lc->protocol == TERN_PROTO_POP3) {
            char line[200];
            size_t n = tern_pop3_refusal(tern_admit_name(adm), line, sizeof(line));
            ssize_t wr = send(fd, line, n, MSG_DONTWAIT | MSG_NOSIGNAL);
            (void)wr;
        }
        serve__drop(fd, cfg, tls, auth);
        return;
    }
    tern_session_args args = {.cfg = cfg, .tls = tls, .auth = auth, .listener = li, .fd = fd};
    memcpy(&args.peer, &peer, sizeof(peer));
    tern_protocol proto = cfg->listeners[li].protocol;
    int r = proto == TERN_PROTO_POP3   ? tern_pop3_session_start(&w->host, &args)
            : proto == TERN_PROTO_IMAP ? tern_imap_session_start(&w->host, &args)
                                       : tern_smtp_session_start(&w->host, &args);
    if (r < 0) {
        tern_limits_release(w->srv->limits, (struct sockaddr *)&peer);
        TLOG_ERR("server", "event=session_failed listener=%s error=%s", listener, uv_strerror(r));
    }
}
