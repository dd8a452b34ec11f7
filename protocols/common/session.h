/* What a protocol session needs from the server, and what the server needs
 * from a session, without protocols/ knowing server/: the worker hands a
 * session its host (loop, shared buffers, spool client) and keeps every live
 * session on a list so it can drain them on SIGTERM. Every protocol session
 * struct starts with a tern_session. */
#ifndef TERN_SESSION_H
#define TERN_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

#include "conf/config.h"
#include "lib/util.h"
#include "protocols/common/conn.h"
#include "protocols/common/tls.h"
#include "storage/queue/spool.h"
#include "storage/store.h"

typedef struct tern_session tern_session;
typedef struct tern_session_host tern_session_host;

typedef struct tern_session_ops {
    /* The server is shutting down: finish the current exchange, then say
     * goodbye (SMTP: 421 when idle between transactions). */
    void (*drain)(tern_session *s);
    /* The grace period is over: say goodbye now and close. */
    void (*shutdown)(tern_session *s);
} tern_session_ops;

struct tern_session {
    const tern_session_ops *ops;
    tern_session *prev, *next;   /* the host's list */
    tern_session_host *host;
    struct sockaddr_storage peer; /* for the host's per-IP accounting */
    char id[TERN_UUID_LEN];
};

struct tern_session_host {
    uv_loop_t *loop;
    tern_conn_worker conn_worker;
    tern_spool *spool;
    tern_spool_client *spool_client;
    tern_store *store;
    tern_store_client *store_client;
    struct tern_runner *runner;   /* the mailet engine on this loop (may be NULL) */
    tern_session list;            /* sentinel */
    size_t count;
    bool draining;
    /* Called by tern_session_unlink when a session ends. */
    void (*released)(tern_session_host *h, tern_session *s);
    void *owner;
};

/* What a session is created with: the snapshot it keeps for its lifetime. */
typedef struct tern_session_args {
    tern_config *cfg;        /* a reference the session takes over */
    tern_tls_server *tls;    /* a reference the session takes over (may be NULL) */
    struct tern_auth *auth;  /* a reference the session takes over (may be NULL) */
    size_t listener;         /* index into cfg->listeners */
    int fd;                  /* accepted socket, ownership passes */
    struct sockaddr_storage peer; /* as admitted (for per-IP accounting) */
} tern_session_args;

static inline void tern_session_link(tern_session_host *h, tern_session *s)
{
    s->host = h;
    s->next = h->list.next;
    s->prev = &h->list;
    h->list.next->prev = s;
    h->list.next = s;
    h->count++;
}

static inline void tern_session_unlink(tern_session *s)
{
    tern_session_host *h = s->host;
    s->prev->next = s->next;
    s->next->prev = s->prev;
    s->next = s->prev = s;
    h->count--;
    if (h->released)
        h->released(h, s);
}

#endif
