/* ternd's control plane on the main loop: start-up (bind, drop privileges,
 * open the spool, start workers), the current config snapshot, SIGHUP
 * reload (built and validated on the thread pool, swapped in only when
 * whole), and SIGTERM drain. Input: a validated config snapshot, the config
 * file again on reload. */
#include "server/server.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/log.h"
#include "mailets/engine.h"
#include "server/queue.h"
#include "server/control.h"
#include "mailets/repository.h"
#include "protocols/common/http_client.h"

#define MOD "server"
#define FD_RESERVE 64 /* descriptors kept for spool, logs, listeners */
#define FORCE_EXIT_AFTER_GRACE_MS 5000

/* A reuseport listener: its sockets live in the workers; the main loop
 * remembers the key to diff on reload. */
typedef struct reuse_rec {
    char *key;
    struct reuse_rec *next;
} reuse_rec;

static reuse_rec *reuse_list;

void tern_server_snapshot(tern_server *srv, tern_config **cfg_r, tern_tls_server **tls_r,
                          tern_auth **auth_r)
{
    pthread_mutex_lock(&srv->snap_mu);
    *cfg_r = tern_config_ref(srv->cfg);
    *tls_r = srv->tls ? tern_tls_server_ref(srv->tls) : NULL;
    *auth_r = srv->auth ? tern_auth_ref(srv->auth) : NULL;
    pthread_mutex_unlock(&srv->snap_mu);
}

static bool server__uses_tls(const tern_config *cfg)
{
    for (size_t i = 0; i < cfg->n_listeners; i++)
        if (cfg->listeners[i].tls != TERN_TLS_NONE)
            return true;
    return false;
}

static uint32_t server__effective_max_connections(const tern_config *cfg, unsigned nlisten_fds)
{
    struct rlimit rl;
    uint64_t cap = cfg->server.max_connections;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        uint64_t avail = rl.rlim_cur > FD_RESERVE + nlisten_fds ? rl.rlim_cur - FD_RESERVE - nlisten_fds : 1;
        if (avail < cap) {
            TLOG_WARN(MOD, "event=max_connections_capped configured=%u fd_limit=%llu effective=%llu",
                      cfg->server.max_connections, (unsigned long long)rl.rlim_cur,
                      (unsigned long long)avail);
            cap = avail;
        }
    }
    return (uint32_t)cap;
}

static void server__raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* --- listeners -------------------------------------------------------- */

static bool server__has_key(tern_server *srv, const char *key)
{
    for (tern_acceptor *a = srv->acceptors; a; a = a->next)
        if (strcmp(a->key, key) == 0)
            return true;
    for (reuse_rec *r = reuse_list; r; r = r->next)
        if (strcmp(r->key, key) == 0)
            return true;
    return false;
}

/* Sockets for one listener, before anything is started: one, or one per
 * worker with reuse. Returns the count, or -1 with err filled. */
static int server__bind(const tern_listener_conf *lc, unsigned nworkers, int *fds, char *err,
                        size_t errlen)
{
    unsigned n = lc->reuse ? tern_listener_workers(lc, nworkers) : 1;
    for (unsigned i = 0; i < n; i++) {
        fds[i] = tern_listener_socket(lc, lc->reuse, err, errlen);
        if (fds[i] < 0) {
            for (unsigned j = 0; j < i; j++)
                close(fds[j]);
            return -1;
        }
    }
    return (int)n;
}

static void server__start_listener(tern_server *srv, const tern_listener_conf *lc, int *fds, int n)
{
    char *key = tern_listener_key(lc);
    unsigned nw = tern_listener_workers(lc, srv->nworkers);
    if (lc->reuse) {
        for (int i = 0; i < n; i++) {
            wmsg *m = calloc(1, sizeof(*m));
            m->type = WMSG_ADD_ACCEPTOR;
            m->fd = fds[i];
            m->name = strdup(lc->name);
            m->key = strdup(key);
            tern_worker_post(&srv->workers[i], m);
        }
        reuse_rec *r = calloc(1, sizeof(*r));
        r->key = key;
        r->next = reuse_list;
        reuse_list = r;
    } else {
        tern_acceptor *a = tern_acceptor_new(srv, NULL, srv->loop, fds[0], lc->name, key, nw);
        if (a) {
            a->next = srv->acceptors;
            srv->acceptors = a;
        } else {
            close(fds[0]);
        }
        free(key);
    }
    TLOG_INFO(MOD, "event=listening listener=%s protocol=%s address=%s port=%u tls=%s sockets=%d workers=%u",
              lc->name, tern_protocol_name(lc->protocol), lc->address, lc->port,
              lc->tls == TERN_TLS_IMPLICIT ? "implicit" : lc->tls == TERN_TLS_STARTTLS ? "starttls" : "none",
              n, nw);
}

static void server__stop_listener_key(tern_server *srv, const char *key)
{
    for (tern_acceptor **pp = &srv->acceptors; *pp;) {
        tern_acceptor *a = *pp;
        if (strcmp(a->key, key) == 0) {
            TLOG_INFO(MOD, "event=listener_removed listener=%s", a->name);
            *pp = a->next;
            tern_acceptor_close(a);
        } else {
            pp = &a->next;
        }
    }
    for (reuse_rec **pp = &reuse_list; *pp;) {
        reuse_rec *r = *pp;
        if (strcmp(r->key, key) == 0) {
            TLOG_INFO(MOD, "event=listener_removed key=\"%s\"", key);
            for (unsigned i = 0; i < srv->nworkers; i++) {
                wmsg *m = calloc(1, sizeof(*m));
                m->type = WMSG_DEL_ACCEPTOR;
                m->fd = -1;
                m->key = strdup(key);
                tern_worker_post(&srv->workers[i], m);
            }
            *pp = r->next;
            free(r->key);
            free(r);
        } else {
            pp = &r->next;
        }
    }
}

static bool server__key_in(const tern_config *cfg, const char *key)
{
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        char *k = tern_listener_key(&cfg->listeners[i]);
        bool eq = strcmp(k, key) == 0;
        free(k);
        if (eq)
            return true;
    }
    return false;
}

/* Applies the listener set of a new snapshot: binds what is new first (so a
 * failure leaves everything as it was), then closes what went away.
 * Returns 0 or -1 with every bind error logged. */
static int server__apply_listeners(tern_server *srv, const tern_config *ncfg)
{
    size_t n = ncfg->n_listeners;
    int (*fds)[256] = calloc(n ? n : 1, sizeof(*fds));
    int *counts = calloc(n ? n : 1, sizeof(int));
    bool failed = false;
    for (size_t i = 0; i < n; i++) {
        const tern_listener_conf *lc = &ncfg->listeners[i];
        char *key = tern_listener_key(lc);
        bool have = server__has_key(srv, key);
        free(key);
        if (have)
            continue;
        char err[256];
        int c = server__bind(lc, srv->nworkers, fds[i], err, sizeof(err));
        if (c < 0 && errno == EADDRINUSE) {
            /* Probably the same address and port under an old key that is
             * going away: release it first, then bind again. */
            for (tern_acceptor *a = srv->acceptors; a; a = a->next) {
                if (!server__key_in(ncfg, a->key)) {
                    server__stop_listener_key(srv, a->key);
                    break;
                }
            }
            c = server__bind(lc, srv->nworkers, fds[i], err, sizeof(err));
        }
        if (c < 0) {
            TLOG_ERR(MOD, "event=reload_listener_failed listener=%s error=\"%s\"", lc->name, err);
            failed = true;
            break;
        }
        counts[i] = c;
    }
    if (failed) {
        for (size_t i = 0; i < n; i++)
            for (int j = 0; j < counts[i]; j++)
                close(fds[i][j]);
        free(fds);
        free(counts);
        return -1;
    }
    /* Close listeners absent from the new snapshot. */
    for (;;) {
        const char *gone = NULL;
        for (tern_acceptor *a = srv->acceptors; a && !gone; a = a->next)
            if (!server__key_in(ncfg, a->key))
                gone = a->key;
        for (reuse_rec *r = reuse_list; r && !gone; r = r->next)
            if (!server__key_in(ncfg, r->key))
                gone = r->key;
        if (!gone)
            break;
        char *k = strdup(gone);
        server__stop_listener_key(srv, k);
        free(k);
    }
    for (size_t i = 0; i < n; i++)
        if (counts[i] > 0)
            server__start_listener(srv, &ncfg->listeners[i], fds[i], counts[i]);
    free(fds);
    free(counts);
    return 0;
}

/* --- reload ----------------------------------------------------------- */

typedef struct reload_req {
    uv_work_t work;
    tern_server *srv;
    tern_config *cfg;
    tern_tls_server *tls;
    tern_auth *auth;
    tern_pipeline *pipeline;
    tern_config_errors errs;
} reload_req;

static void server__reload_work(uv_work_t *w)
{
    reload_req *r = w->data;
    tern_config_errors_init(&r->errs);
    r->cfg = tern_config_load(r->srv->config_path, &r->errs);
    if (r->cfg == NULL)
        return;
    char *serr = NULL;
    if (tern_store_seed_domains(r->srv->store, r->cfg, &serr) != 0) {
        tern_config_errors_add(&r->errs, "domains: cannot add to the directory: %s",
                               serr ? serr : "?");
        free(serr);
        tern_config_unref(r->cfg);
        r->cfg = NULL;
        return;
    }
    /* Rebuilding auth re-reads the password file: a broken file fails the
     * reload and the old one keeps serving. */
    r->auth = tern_auth_new(r->cfg, r->srv->store, &serr);
    if (r->auth == NULL) {
        tern_config_errors_add(&r->errs, "auth: %s", serr ? serr : "cannot set up");
        free(serr);
        tern_config_unref(r->cfg);
        r->cfg = NULL;
        return;
    }
    /* The mailet chain: plugins are loaded (a new version of a .so is
     * picked up here) and every instance initialised; a failure keeps the
     * old chain. */
    r->pipeline = tern_pipeline_build(r->cfg, r->auth, &r->errs);
    if (r->pipeline == NULL) {
        tern_config_unref(r->cfg);
        r->cfg = NULL;
        return;
    }
    if (server__uses_tls(r->cfg)) {
        char *err = NULL;
        r->tls = tern_tls_server_new(r->cfg, &err);
        if (r->tls == NULL) {
            tern_config_errors_add(&r->errs, "tls: %s", err ? err : "cannot set up TLS");
            free(err);
            tern_config_unref(r->cfg);
            r->cfg = NULL;
        }
    }
}

static void server__reload_done(uv_work_t *w, int status)
{
    reload_req *r = w->data;
    tern_server *srv = r->srv;
    srv->reloading = false;
    if (r->cfg == NULL || srv->draining) {
        for (size_t i = 0; i < r->errs.n; i++) {
            char q[1024];
            TLOG_ERR(MOD, "event=reload_error error=%s", tern_log_q(q, sizeof(q), r->errs.items[i]));
        }
        if (r->cfg == NULL)
            TLOG_ERR(MOD, "event=reload status=failed errors=%zu generation=%llu", r->errs.n,
                     (unsigned long long)srv->cfg->generation);
        goto out;
    }
    if (tern_config_workers(r->cfg) != srv->nworkers)
        TLOG_WARN(MOD, "event=reload_needs_restart key=server.workers running=%u configured=%u",
                  srv->nworkers, tern_config_workers(r->cfg));
    if (strcmp(r->cfg->server.state_dir, srv->cfg->server.state_dir) != 0)
        TLOG_WARN(MOD, "event=reload_needs_restart key=server.state_dir");
    {
        const char *a = r->cfg->postgres.blob_dir, *b = srv->cfg->postgres.blob_dir;
        if ((a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0))
            TLOG_WARN(MOD, "event=reload_needs_restart key=postgres.blob_dir");
    }
    if (server__apply_listeners(srv, r->cfg) != 0) {
        TLOG_ERR(MOD, "event=reload status=failed reason=listeners generation=%llu",
                 (unsigned long long)srv->cfg->generation);
        goto out;
    }
    tern_auth_keep_state(r->auth, srv->auth);
    pthread_mutex_lock(&srv->snap_mu);
    tern_config *old_cfg = srv->cfg;
    tern_tls_server *old_tls = srv->tls;
    tern_auth *old_auth = srv->auth;
    tern_pipeline *old_pipeline = srv->pipeline;
    srv->cfg = r->cfg;
    srv->tls = r->tls;
    srv->auth = r->auth;
    srv->pipeline = r->pipeline;
    r->cfg = NULL;
    r->tls = NULL;
    r->auth = NULL;
    r->pipeline = NULL;
    pthread_mutex_unlock(&srv->snap_mu);
    /* Mail in flight holds its own reference and finishes on the old chain. */
    if (old_pipeline)
        tern_pipeline_unref(old_pipeline);
    if (old_auth)
        tern_auth_unref(old_auth);
    if (getenv("TERN_LOG") == NULL)
        tern_log_configure(srv->cfg->server.log_level, NULL);
    srv->max_connections = server__effective_max_connections(srv->cfg, 0);
    tern_limits_configure(srv->limits, &srv->cfg->limits, srv->max_connections);
    TLOG_INFO(MOD, "event=reload status=ok generation=%llu listeners=%zu max_connections=%u",
              (unsigned long long)srv->cfg->generation, srv->cfg->n_listeners, srv->max_connections);
    tern_config_unref(old_cfg);
    if (old_tls)
        tern_tls_server_unref(old_tls);
out:
    if (r->pipeline)
        tern_pipeline_unref(r->pipeline);
    if (r->cfg)
        tern_config_unref(r->cfg);
    if (r->tls)
        tern_tls_server_unref(r->tls);
    if (r->auth)
        tern_auth_unref(r->auth);
    tern_config_errors_free(&r->errs);
    free(r);
}

static void server__on_hup(uv_signal_t *h, int sig)
{
    tern_server *srv = h->data;
    if (srv->draining)
        return;
    if (srv->reloading) {
        TLOG_WARN(MOD, "event=reload status=skipped reason=\"reload already running\"");
        return;
    }
    reload_req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return;
    r->srv = srv;
    r->work.data = r;
    srv->reloading = true;
    TLOG_INFO(MOD, "event=reload status=started path=%s", srv->config_path);
    if (uv_queue_work(srv->loop, &r->work, server__reload_work, server__reload_done) != 0) {
        srv->reloading = false;
        free(r);
    }
}

/* --- drain and stop --------------------------------------------------- */

static void server__close_main_handles(tern_server *srv)
{
    uv_close((uv_handle_t *)&srv->repo_timer, NULL);
    if (srv->spool_client) {
        tern_spool_client_close(srv->spool_client);
        srv->spool_client = NULL;
    }
    uv_close((uv_handle_t *)&srv->sig_hup, NULL);
    uv_close((uv_handle_t *)&srv->sig_term, NULL);
    uv_close((uv_handle_t *)&srv->sig_int, NULL);
    uv_close((uv_handle_t *)&srv->grace_timer, NULL);
    uv_close((uv_handle_t *)&srv->stop_timer, NULL);
    uv_close((uv_handle_t *)&srv->worker_done, NULL);
}

static void server__worker_done(uv_async_t *a)
{
    tern_server *srv = a->data;
    if (atomic_load(&srv->workers_running) == 0 && srv->draining &&
        !uv_is_closing((uv_handle_t *)&srv->worker_done)) {
        TLOG_INFO(MOD, "event=stopped");
        server__close_main_handles(srv);
    }
}

static void server__post_all(tern_server *srv, wmsg_type t)
{
    for (unsigned i = 0; i < srv->nworkers; i++) {
        if (srv->workers[i].done)
            continue;
        wmsg *m = calloc(1, sizeof(*m));
        if (m == NULL)
            continue;
        m->type = t;
        m->fd = -1;
        tern_worker_post(&srv->workers[i], m);
    }
}

static void server__force_stop(uv_timer_t *t)
{
    tern_server *srv = t->data;
    TLOG_WARN(MOD, "event=forced_stop workers_running=%u", atomic_load(&srv->workers_running));
    /* Sessions that still hold on are past grace and past their goodbye;
     * what they had acknowledged is on disk. */
    fflush(NULL);
    _exit(srv->exit_code);
}

static void server__grace_over(uv_timer_t *t)
{
    tern_server *srv = t->data;
    TLOG_INFO(MOD, "event=grace_over");
    server__post_all(srv, WMSG_SHUTDOWN);
    uv_timer_start(&srv->stop_timer, server__force_stop, FORCE_EXIT_AFTER_GRACE_MS, 0);
}

static void server__on_term(uv_signal_t *h, int sig)
{
    tern_server *srv = h->data;
    if (srv->draining) {
        TLOG_INFO(MOD, "event=shutdown_now signal=%d", sig);
        uv_timer_stop(&srv->grace_timer);
        server__grace_over(&srv->grace_timer);
        return;
    }
    srv->draining = true;
    if (srv->queue) {
        /* Deliveries in flight stop; their recipients are retried at the
         * next start (nothing about them was recorded yet). Freed after
         * the workers, whose runners may still notify it. */
        tern_queue_close(srv->queue);
    }
    tern_control_close(srv->control);
    TLOG_INFO(MOD, "event=draining signal=%d grace_ms=%llu sessions_open=%u", sig,
              (unsigned long long)srv->cfg->server.shutdown_grace_ms, tern_limits_active(srv->limits));
    for (tern_acceptor *a = srv->acceptors, *n; a; a = n) {
        n = a->next;
        tern_acceptor_close(a);
    }
    srv->acceptors = NULL;
    server__post_all(srv, WMSG_DRAIN);
    uv_timer_start(&srv->grace_timer, server__grace_over, srv->cfg->server.shutdown_grace_ms, 0);
}

/* --- start-up --------------------------------------------------------- */

static int server__mkdir(const char *path, uid_t uid, gid_t gid, bool chown_it)
{
    if (mkdir(path, 0750) != 0 && errno != EEXIST) {
        TLOG_ERR(MOD, "event=mkdir_failed path=%s error=\"%s\"", path, strerror(errno));
        return -1;
    }
    if (chown_it && chown(path, uid, gid) != 0) {
        TLOG_ERR(MOD, "event=chown_failed path=%s error=\"%s\"", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int server__drop_privileges(const tern_config *cfg, const char *spool_dir)
{
    if (geteuid() != 0 || cfg->server.user == NULL)
        return server__mkdir(cfg->server.state_dir, 0, 0, false) ||
               server__mkdir(spool_dir, 0, 0, false);
    struct passwd *pw = getpwnam(cfg->server.user);
    if (pw == NULL) {
        TLOG_ERR(MOD, "event=no_such_user user=%s", cfg->server.user);
        return -1;
    }
    gid_t gid = pw->pw_gid;
    if (cfg->server.group) {
        struct group *gr = getgrnam(cfg->server.group);
        if (gr == NULL) {
            TLOG_ERR(MOD, "event=no_such_group group=%s", cfg->server.group);
            return -1;
        }
        gid = gr->gr_gid;
    }
    if (server__mkdir(cfg->server.state_dir, pw->pw_uid, gid, true) != 0 ||
        server__mkdir(spool_dir, pw->pw_uid, gid, true) != 0)
        return -1;
    /* The spool may hold files from a run as root: hand them over. */
    char sub[4200];
    const char *subs[] = {"segments", "tmp"};
    for (size_t i = 0; i < 2; i++) {
        snprintf(sub, sizeof(sub), "%s/%s", spool_dir, subs[i]);
        if (chown(sub, pw->pw_uid, gid) != 0 && errno != ENOENT)
            TLOG_WARN(MOD, "event=chown_failed path=%s error=\"%s\"", sub, strerror(errno));
    }
    if (initgroups(pw->pw_name, gid) != 0 || setgid(gid) != 0 || setuid(pw->pw_uid) != 0) {
        TLOG_ERR(MOD, "event=drop_privileges_failed user=%s error=\"%s\"", cfg->server.user,
                 strerror(errno));
        return -1;
    }
    if (setuid(0) == 0) {
        TLOG_ERR(MOD, "event=drop_privileges_failed reason=\"could regain root\"");
        return -1;
    }
    TLOG_INFO(MOD, "event=privileges_dropped user=%s uid=%u gid=%u", cfg->server.user,
              (unsigned)pw->pw_uid, (unsigned)gid);
    return 0;
}

static void server__log_replayed(void *arg, const tern_envelope *env)
{
    char q[600];
    TLOG_INFO("spool", "event=replay qid=%s from=%s nrcpt=%zu size=%llu session=%s", env->qid,
              tern_log_q(q, sizeof(q), env->mail_from), env->n_rcpts, (unsigned long long)env->size,
              env->session_id ? env->session_id : "-");
}

tern_pipeline *tern_server_pipeline(void *arg)
{
    tern_server *srv = arg;
    pthread_mutex_lock(&srv->snap_mu);
    tern_pipeline *p = srv->pipeline ? tern_pipeline_ref(srv->pipeline) : NULL;
    pthread_mutex_unlock(&srv->snap_mu);
    return p;
}

tern_runner *tern_server_pick_runner(void *arg)
{
    tern_server *srv = arg;
    unsigned i = atomic_fetch_add(&srv->next_runner, 1) % srv->nworkers;
    return srv->workers[i].runner;
}

/* ---- the remote queue's hooks ---- */

static const tern_queue_conf *server__queue_conf(void *arg)
{
    tern_server *srv = arg;
    return &srv->cfg->queue;
}

static tern_config *server__queue_config_ref(void *arg)
{
    tern_server *srv = arg;
    return tern_config_ref(srv->cfg);
}

static const char *server__queue_helo(void *arg)
{
    tern_server *srv = arg;
    return srv->cfg->server.hostname;
}

static void server__bounce_spooled(void *arg, int status, const char *qid, const char *error)
{
    tern_server *srv = arg;
    if (status != 0) {
        TLOG_ERR("queue", "event=bounce_failed error=\"%s\"", error ? error : strerror(-status));
        return;
    }
    tern_runner *r = tern_server_pick_runner(srv);
    TLOG_INFO("queue", "event=bounce qid=%s", qid);
    if (r == NULL || tern_runner_post(r, qid) != 0)
        TLOG_WARN("queue", "event=bounce_deferred qid=%s reason=\"processed at next start\"", qid);
}

/* A DSN to the sender of a message whose remote delivery failed: spooled
 * like any message, from <>, and sent through the pipeline's transport so
 * a local sender gets it in a mailbox and a remote one through the queue. */
static void server__queue_notice(tern_server *srv, const tern_envelope *orig,
                                 const tern_dsn_rcpt *rcpts, size_t n, const uint8_t *msg,
                                 size_t len, bool delayed);

static void server__queue_bounce(void *arg, const tern_envelope *orig, const tern_dsn_rcpt *rcpts,
                                 size_t n, const uint8_t *msg, size_t len)
{
    server__queue_notice(arg, orig, rcpts, n, msg, len, false);
}

/* The same notice saying "delayed" (RFC 3464 Action: delayed), for
 * recipients that asked NOTIFY=DELAY and are still waiting. */
static void server__queue_delay(void *arg, const tern_envelope *orig, const tern_dsn_rcpt *rcpts,
                                size_t n, const uint8_t *msg, size_t len)
{
    server__queue_notice(arg, orig, rcpts, n, msg, len, true);
}

static void server__queue_notice(tern_server *srv, const tern_envelope *orig,
                                 const tern_dsn_rcpt *rcpts, size_t n, const uint8_t *msg,
                                 size_t len, bool delayed)
{
    char from[300], to[600];
    tern_dsn_from(srv->cfg, from, sizeof(from));
    snprintf(to, sizeof(to), "<%s>", orig->mail_from);
    tern_dsn_info info = {
        .style = TERN_DSN_REPORT,
        .reporting_mta = srv->cfg->server.hostname,
        .from = from,
        .to = to,
        .subject = delayed ? "Delayed Mail (still being retried)" : "Undelivered Mail Returned to Sender",
        .intro = delayed ? "Your message has not been delivered to one or more recipients yet. "
                           "Delivery is still being attempted; you need not resend it."
                         : "Your message could not be delivered to one or more recipients.",
        .action = delayed ? "delayed" : NULL,
        .qid = orig->qid,
        .envid = orig->envid,
        .arrival = orig->received_at,
        .now = (int64_t)time(NULL),
        .rcpts = rcpts,
        .n_rcpts = n,
        /* RFC 3461 4.3: the whole message only when RET=FULL was asked;
         * RFC 8689 5: never the body of a REQUIRETLS message. */
        .attach = orig->ret == TERN_RET_FULL && !orig->requiretls ? TERN_DSN_ATTACH_FULL
                                                                  : TERN_DSN_ATTACH_HEADERS,
        .orig = msg,
        .orig_len = len,
        .marker = "queue",
    };
    size_t dlen = 0;
    uint8_t *dsn = tern_dsn_build(&info, &dlen);
    tern_body *b = dsn ? tern_body_new(srv->loop, tern_spool_tmpdir(srv->spool), dlen + 1) : NULL;
    if (b == NULL || tern_body_append(b, dsn, dlen, NULL, NULL) != 0) {
        TLOG_ERR("queue", "event=bounce_failed error=\"out of memory\"");
        if (b)
            tern_body_free(b);
        free(dsn);
        return;
    }
    free(dsn);
    tern_spool_rcpt rcpt = {.addr = orig->mail_from, .notify = TERN_NOTIFY_NEVER};
    tern_envelope env;
    memset(&env, 0, sizeof(env));
    env.mail_from = (char *)"";
    env.rcpts = &rcpt;
    env.n_rcpts = 1;
    env.pipeline = (char *)(tern_config_processor(srv->cfg, "transport") ? "transport" : "root");
    env.listener = (char *)"queue";
    env.session_id = orig->session_id;
    env.client_addr = (char *)"";
    env.helo = (char *)"";
    env.received_at = (int64_t)time(NULL);
    env.body = TERN_BODY_8BITMIME;
    env.size = dlen;
    /* RFC 8689 5: the notice of a REQUIRETLS message travels under the
     * same requirement (its headers are the message's). */
    env.requiretls = orig->requiretls;
    if (tern_spool_submit(srv->spool_client, &env, NULL, 0, b, server__bounce_spooled, srv) != 0) {
        tern_body_free(b);
        TLOG_ERR("queue", "event=bounce_failed error=\"spool refused\"");
    }
}

/* ---- mail released from a repository (ternctl repository release) ---- */

static void server__repo_posted(void *arg, const char *qid)
{
    tern_server *srv = arg;
    tern_runner *r = tern_server_pick_runner(srv);
    if (r == NULL || tern_runner_post(r, qid) != 0)
        TLOG_WARN("mailet", "event=release_deferred qid=%s reason=\"processed at next start\"", qid);
}

static void server__repo_done(void *arg, size_t submitted, size_t failed)
{
    tern_server *srv = arg;
    srv->repo_scanning = false;
    if (submitted || failed)
        TLOG_INFO("mailet", "event=released submitted=%zu failed=%zu", submitted, failed);
}

static void server__repo_tick(uv_timer_t *t)
{
    tern_server *srv = t->data;
    if (srv->repo_scanning || srv->draining || srv->spool_client == NULL)
        return;
    srv->repo_scanning = true;
    if (tern_repository_scan_released(srv->cfg, srv->loop, srv->spool, srv->spool_client,
                                      server__repo_posted, server__repo_done, srv) != 0)
        srv->repo_scanning = false;
}

typedef struct replay_ctx {
    tern_server *srv;
    size_t n, queued;
} replay_ctx;

/* Mail that was in the spool at start (acknowledged, not finished) goes
 * through the pipeline again from its entry processor; recipients
 * recorded finished are skipped. */
static void server__replay_one(void *arg, const tern_envelope *env)
{
    replay_ctx *c = arg;
    bool pending = false;
    for (size_t i = 0; i < env->n_rcpts; i++)
        if (!env->rcpts[i].done && !env->rcpts[i].queued)
            pending = true;
    if (!pending || (env->pipeline && strcmp(env->pipeline, TERN_QUEUE_PIPELINE) == 0)) {
        c->queued++; /* the remote queue's, not the pipeline's */
        return;
    }
    tern_runner *r = tern_server_pick_runner(c->srv);
    if (r && tern_runner_post(r, env->qid) == 0)
        c->n++;
}

int tern_server_run(const char *config_path, tern_config *cfg)
{
    static tern_server server;
    tern_server *srv = &server;
    memset(srv, 0, sizeof(*srv));
    srv->loop = uv_default_loop();
    srv->config_path = strdup(config_path);
    srv->cfg = cfg;
    pthread_mutex_init(&srv->snap_mu, NULL);
    signal(SIGPIPE, SIG_IGN);
    server__raise_nofile();

    if (server__uses_tls(cfg)) {
        char *err = NULL;
        srv->tls = tern_tls_server_new(cfg, &err);
        if (srv->tls == NULL) {
            TLOG_ERR(MOD, "event=tls_setup_failed error=\"%s\"", err ? err : "?");
            free(err);
            return 1;
        }
    }
    srv->nworkers = tern_config_workers(cfg);
    srv->workers = calloc(srv->nworkers, sizeof(tern_worker));
    srv->limits = tern_limits_new();
    if (srv->workers == NULL || srv->limits == NULL)
        return 1;

    /* Bind everything first (as root, if we are), so that a port in use
     * fails the start before any privilege is dropped. */
    size_t nl = cfg->n_listeners;
    int(*fds)[256] = calloc(nl, sizeof(*fds));
    int *counts = calloc(nl, sizeof(int));
    unsigned nfds = 0;
    for (size_t i = 0; i < nl; i++) {
        char err[256];
        counts[i] = server__bind(&cfg->listeners[i], srv->nworkers, fds[i], err, sizeof(err));
        if (counts[i] < 0) {
            TLOG_ERR(MOD, "event=bind_failed listener=%s error=\"%s\"", cfg->listeners[i].name, err);
            return 1;
        }
        nfds += (unsigned)counts[i];
    }
    srv->max_connections = server__effective_max_connections(cfg, nfds);
    tern_limits_configure(srv->limits, &cfg->limits, srv->max_connections);

    char spool_dir[4096];
    snprintf(spool_dir, sizeof(spool_dir), "%s/spool", cfg->server.state_dir);
    if (server__drop_privileges(cfg, spool_dir) != 0)
        return 1;

    tern_spool_opts so = {
        .segment_size = cfg->spool.segment_size,
        .group_commit_max = cfg->spool.group_commit_max,
        .group_commit_delay_us = cfg->spool.group_commit_delay_us,
        .fsync = getenv("TERN_UNSAFE_NO_FSYNC") == NULL,
    };
    if (!so.fsync)
        TLOG_WARN(MOD, "event=unsafe_no_fsync reason=\"TERN_UNSAFE_NO_FSYNC is set: benchmarks only\"");
    char *err = NULL;
    if (tern_spool_open(spool_dir, &so, &srv->spool, &err) != 0) {
        TLOG_ERR(MOD, "event=spool_open_failed dir=%s error=\"%s\"", spool_dir, err ? err : "?");
        free(err);
        return 1;
    }
    if (tern_store_open(cfg, &srv->store, &err) != 0) {
        TLOG_ERR(MOD, "event=store_open_failed backend=%s error=\"%s\"",
                 cfg->storage.backend == TERN_STORAGE_POSTGRES ? "postgres" : "local",
                 err ? err : "?");
        free(err);
        return 1;
    }
    if (tern_store_seed_domains(srv->store, cfg, &err) != 0) {
        TLOG_ERR(MOD, "event=domain_seed_failed error=\"%s\"", err ? err : "?");
        free(err);
        return 1;
    }
    /* Token introspection (auth_oauth2.introspection) posts through it. */
    tern_auth_set_http(&tern_http_auth_transport);
    srv->auth = tern_auth_new(cfg, srv->store, &err);
    if (srv->auth == NULL) {
        TLOG_ERR(MOD, "event=auth_setup_failed error=\"%s\"", err ? err : "?");
        free(err);
        return 1;
    }
    {
        tern_config_errors perrs;
        tern_config_errors_init(&perrs);
        srv->pipeline = tern_pipeline_build(cfg, srv->auth, &perrs);
        for (size_t i = 0; i < perrs.n; i++) {
            char q[1024];
            TLOG_ERR(MOD, "event=pipeline_error error=%s", tern_log_q(q, sizeof(q), perrs.items[i]));
        }
        tern_config_errors_free(&perrs);
        if (srv->pipeline == NULL)
            return 1;
    }
    size_t live = tern_spool_each(srv->spool, server__log_replayed, NULL);
    TLOG_INFO("spool", "event=opened dir=%s live=%zu", spool_dir, live);

    /* The remote queue, before the workers: their runners tell it about
     * recipients RemoteDelivery hands over. */
    srv->spool_client = tern_spool_client_new(srv->spool, srv->loop);
    {
        const tern_dns_conf *dc = &cfg->dns;
        tern_dns_options dopt = {
            .forwarders = (const char *const *)dc->resolvers,
            .n_forwarders = dc->n_resolvers,
            .dnssec = dc->dnssec,
            .trust_anchor_file = dc->trust_anchor_file,
            .timeout_ms = dc->timeout_ms,
            .cache_size = dc->cache_size,
            .cache_max_ttl = (uint32_t)(dc->cache_max_ttl_ms / 1000),
            .unblock_zones = (const char *const *)dc->unblock_zones,
            .n_unblock_zones = dc->n_unblock_zones,
        };
        tern_queue_env qenv = {
            .loop = srv->loop,
            .spool = srv->spool,
            .dns = &dopt,
            .conf = server__queue_conf,
            .helo = server__queue_helo,
            .conf_arg = srv,
            .bounce = server__queue_bounce,
            .bounce_arg = srv,
            .state_dir = srv->cfg->server.state_dir,
            .delay = server__queue_delay,
            .config_ref = server__queue_config_ref,
        };
        char qerr[256];
        srv->queue = srv->spool_client ? tern_queue_new(&qenv, qerr, sizeof(qerr)) : NULL;
        if (srv->queue == NULL) {
            TLOG_ERR(MOD, "event=queue_setup_failed error=\"%s\"",
                     srv->spool_client ? qerr : "out of memory");
            return 1;
        }
    }
    /* The control socket: ternctl queue talks to the queue through it. */
    {
        char cerr[512];
        const char *cpath = cfg->server.control_socket;
        srv->control = tern_control_new(srv->loop, cpath, srv->queue, &srv->auth, cerr,
                                        sizeof(cerr));
        if (srv->control == NULL) {
            TLOG_ERR(MOD, "event=control_socket_failed error=\"%s\"", cerr);
            free(fds);
            free(counts);
            return 1;
        }
    }
    uv_timer_init(srv->loop, &srv->repo_timer);
    srv->repo_timer.data = srv;
    uv_timer_start(&srv->repo_timer, server__repo_tick, 2000, 2000);
    uv_async_init(srv->loop, &srv->worker_done, server__worker_done);
    srv->worker_done.data = srv;
    for (unsigned i = 0; i < srv->nworkers; i++) {
        srv->workers[i].srv = srv;
        srv->workers[i].index = i;
        int r = tern_worker_start(&srv->workers[i]);
        if (r != 0) {
            TLOG_ERR(MOD, "event=worker_start_failed index=%u error=%s", i, uv_strerror(r));
            return 1;
        }
    }
    for (size_t i = 0; i < nl; i++)
        server__start_listener(srv, &cfg->listeners[i], fds[i], counts[i]);
    free(fds);
    free(counts);
    if (live > 0) {
        replay_ctx rc = {srv, 0, 0};
        tern_spool_each(srv->spool, server__replay_one, &rc);
        TLOG_INFO("spool", "event=replay_started messages=%zu remote_queue=%zu", rc.n, rc.queued);
    }

    uv_signal_init(srv->loop, &srv->sig_hup);
    uv_signal_init(srv->loop, &srv->sig_term);
    uv_signal_init(srv->loop, &srv->sig_int);
    srv->sig_hup.data = srv->sig_term.data = srv->sig_int.data = srv;
    uv_signal_start(&srv->sig_hup, server__on_hup, SIGHUP);
    uv_signal_start(&srv->sig_term, server__on_term, SIGTERM);
    uv_signal_start(&srv->sig_int, server__on_term, SIGINT);
    /* main() blocked these before any thread started; every worker keeps
     * them blocked, so they reach the main thread's handlers. */
    sigset_t ctl;
    sigemptyset(&ctl);
    sigaddset(&ctl, SIGHUP);
    sigaddset(&ctl, SIGTERM);
    sigaddset(&ctl, SIGINT);
    pthread_sigmask(SIG_UNBLOCK, &ctl, NULL);
    uv_timer_init(srv->loop, &srv->grace_timer);
    uv_timer_init(srv->loop, &srv->stop_timer);
    srv->grace_timer.data = srv->stop_timer.data = srv;

    TLOG_INFO(MOD, "event=ready hostname=%s workers=%u listeners=%zu max_connections=%u generation=%llu",
              cfg->server.hostname, srv->nworkers, nl, srv->max_connections,
              (unsigned long long)cfg->generation);
    uv_run(srv->loop, UV_RUN_DEFAULT);

    for (unsigned i = 0; i < srv->nworkers; i++) {
        uv_thread_join(&srv->workers[i].thread);
        uv_loop_close(&srv->workers[i].loop);
        free(srv->workers[i].host.conn_worker.readbuf);
        pthread_mutex_destroy(&srv->workers[i].mu);
    }
    tern_control_free(srv->control);
    tern_queue_free(srv->queue);
    tern_spool_close(srv->spool);
    if (srv->pipeline)
        tern_pipeline_unref(srv->pipeline);
    if (srv->auth)
        tern_auth_unref(srv->auth);
    tern_store_close(srv->store);
    free(srv->workers);
    tern_limits_free(srv->limits);
    while (reuse_list) {
        reuse_rec *r = reuse_list;
        reuse_list = r->next;
        free(r->key);
        free(r);
    }
    tern_config_unref(srv->cfg);
    if (srv->tls)
        tern_tls_server_unref(srv->tls);
    free(srv->config_path);
    uv_loop_close(srv->loop);
    return srv->exit_code;
}
