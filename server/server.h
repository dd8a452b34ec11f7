/* ternd's runtime: the main control loop, the worker threads and their
 * loops, the listeners, and the current config snapshot. Only main.c and
 * the files of server/ see this. Input: a validated config snapshot. */
#ifndef TERN_SERVER_H
#define TERN_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "conf/config.h"
#include "protocols/common/session.h"
#include "auth/auth.h"
#include "protocols/common/tls.h"
#include "server/limits.h"
#include "storage/queue/spool.h"

typedef struct tern_server tern_server;
typedef struct tern_worker tern_worker;

/* A listening socket and the poll handle that accepts on it. Owned by the
 * main loop (shared listeners, handing connections round robin) or by one
 * worker (reuse: true, one SO_REUSEPORT socket per worker). */
typedef struct tern_acceptor {
    uv_poll_t poll;
    int fd;
    char *name;              /* listener name: looked up in the current snapshot */
    char *key;               /* "name address port reuse workers": identity across reloads */
    tern_server *srv;
    tern_worker *owner;      /* NULL: main loop */
    unsigned nworkers;       /* workers that serve this listener */
    unsigned rr;             /* round robin cursor */
    struct tern_acceptor *next;
    bool closing;
} tern_acceptor;

/* Work posted to a worker's loop. */
typedef enum {
    WMSG_CONN = 1,       /* serve an accepted fd */
    WMSG_ADD_ACCEPTOR,   /* start polling a reuseport socket */
    WMSG_DEL_ACCEPTOR,   /* stop and close acceptors with this key */
    WMSG_DRAIN,          /* stop accepting, drain sessions */
    WMSG_SHUTDOWN,       /* grace over: close sessions */
} wmsg_type;

typedef struct wmsg {
    wmsg_type type;
    int fd;
    char *name;          /* listener name (CONN, ADD) or key (DEL) */
    char *key;
    tern_config *cfg;    /* CONN: the snapshot admitted with (a reference) */
    tern_tls_server *tls;
    tern_auth *auth;
    struct wmsg *next;
} wmsg;

struct tern_worker {
    tern_server *srv;
    unsigned index;
    uv_thread_t thread;
    uv_loop_t loop;
    uv_async_t wake;
    pthread_mutex_t mu;
    wmsg *head, *tail;
    tern_session_host host;
    struct tern_runner *runner;
    tern_acceptor *acceptors;
    bool draining, stopping, done;
};

struct tern_server {
    uv_loop_t *loop;          /* main control loop */
    char *config_path;
    pthread_mutex_t snap_mu;  /* guards cfg and tls swaps */
    tern_config *cfg;
    tern_tls_server *tls;
    tern_auth *auth;
    struct tern_pipeline *pipeline; /* the mailet chain of the current snapshot */
    struct tern_queue *queue;       /* the remote queue manager (main loop) */
    tern_spool_client *spool_client;/* the main loop's: bounces from the queue, releases */
    uv_timer_t repo_timer;          /* picks up mail released from repositories */
    bool repo_scanning;
    atomic_uint next_runner;        /* round robin for replayed and spawned mail */
    tern_limits *limits;
    tern_spool *spool;
    tern_store *store;
    tern_worker *workers;
    unsigned nworkers;
    tern_acceptor *acceptors; /* the main loop's */
    uv_signal_t sig_hup, sig_term, sig_int;
    uv_timer_t grace_timer, stop_timer;
    uv_async_t worker_done;
    atomic_uint workers_running;
    bool reloading, draining;
    uint32_t max_connections; /* effective: min(config, fd limit) */
    int exit_code;
    struct tern_control *control;   /* the control socket (main loop), or NULL */
};

/* server.c */
int tern_server_run(const char *config_path, tern_config *cfg);
/* Takes references to the current snapshot. */
void tern_server_snapshot(tern_server *srv, tern_config **cfg_r, tern_tls_server **tls_r,
                          tern_auth **auth_r);
/* Accepted connection on any thread: admission, then a session (or a
 * refusal) on worker `w`. Takes ownership of fd and the references. */
void tern_server_serve(tern_worker *w, int fd, const char *listener, tern_config *cfg,
                       tern_tls_server *tls, tern_auth *auth);

/* The runner env's callbacks: the current pipeline (a reference) and the
 * next worker's runner, round robin. */
struct tern_pipeline *tern_server_pipeline(void *srv);
struct tern_runner *tern_server_pick_runner(void *srv);

/* listener.c */
/* Creates and binds a listening socket for listener `lc`; reuseport when
 * asked. Returns the fd or -1 with *error_r (static text + errno). */
int tern_listener_socket(const tern_listener_conf *lc, bool reuseport, char *err, size_t errlen);
char *tern_listener_key(const tern_listener_conf *lc);
unsigned tern_listener_workers(const tern_listener_conf *lc, unsigned nworkers);
tern_acceptor *tern_acceptor_new(tern_server *srv, tern_worker *owner, uv_loop_t *loop, int fd,
                                 const char *name, const char *key, unsigned nworkers);
void tern_acceptor_close(tern_acceptor *a);

/* worker.c */
int tern_worker_start(tern_worker *w);
void tern_worker_post(tern_worker *w, wmsg *m);

#endif
