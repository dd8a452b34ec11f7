/* The PostgreSQL backend's connections: non-blocking libpq connections
 * driven by uv_poll on PQsocket, connected with PQconnectStart and
 * PQconnectPoll, queries sent with PQsendQueryParams and flushed with
 * PQflush, results collected with PQconsumeInput/PQisBusy/PQgetResult. A
 * connection that breaks fails its job with ETEMP and reconnects with
 * back-off; the listener connection re-issues LISTEN each time it comes
 * back. Runs on the backend thread only.
 *
 * Input trusted: the server's bytes, as far as libpq trusts them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/util.h"
#include "storage/pg/pg_internal.h"
#include "storage/pg/pq_connect.h"

struct pg_poll {
    uv_poll_t h;
    pg_conn *conn;   /* NULL once detached: a late event is ignored */
};

static void on_poll(uv_poll_t *h, int status, int events);

static void poll_closed(uv_handle_t *h)
{
    free(h->data);
}

static void poll_detach(pg_conn *c)
{
    if (!c->poll)
        return;
    uv_poll_stop(&c->poll->h);
    c->poll->conn = NULL;
    uv_close((uv_handle_t *)&c->poll->h, poll_closed);
    c->poll = NULL;
    c->fd = -1;
}

/* Watches the connection's current socket, which libpq may change while
 * connecting (several hosts or addresses). */
static int poll_update(pg_conn *c, int events)
{
    int fd = PQsocket(c->pq);
    if (fd < 0)
        return -1;
    if (c->poll && c->fd != fd)
        poll_detach(c);
    if (!c->poll) {
        pg_poll *p = calloc(1, sizeof *p);
        if (!p)
            return -1;
        if (uv_poll_init(&c->pg->loop, &p->h, fd) != 0) {
            free(p);
            return -1;
        }
        p->h.data = p;
        p->conn = c;
        c->poll = p;
        c->fd = fd;
    }
    return uv_poll_start(&c->poll->h, events, on_poll) == 0 ? 0 : -1;
}

static const char *conn_name(const pg_conn *c)
{
    return c->listener ? "listen" : "pool";
}

static void on_retry(uv_timer_t *t)
{
    pg_conn *c = t->data;
    if (c->state == PG_C_WAIT)
        pg_conn_start(c);
}

static void schedule_retry(pg_conn *c)
{
    if (c->pg->shutting_down) {
        c->state = PG_C_DOWN;
        return;
    }
    c->state = PG_C_WAIT;
    unsigned ms = c->backoff_ms ? c->backoff_ms : PG_BACKOFF_MIN_MS;
    c->backoff_ms = ms * 2 > PG_BACKOFF_MAX_MS ? PG_BACKOFF_MAX_MS : ms * 2;
    uv_timer_start(&c->timer, on_retry, ms, 0);
}

void pg_conn_init(pg_impl *pg, pg_conn *c, int index, bool listener)
{
    memset(c, 0, sizeof *c);
    c->pg = pg;
    c->index = index;
    c->listener = listener;
    c->fd = -1;
    uv_timer_init(&pg->loop, &c->timer);
    c->timer.data = c;
}

static void drop_pipe(pg_conn *c)
{
    for (int i = 0; i < c->pipe_n; i++)
        PQclear(c->pipe[i]);
    free(c->pipe);
    c->pipe = NULL;
    c->pipe_n = c->pipe_cap = 0;
    c->pipeline = false;
}

static void drop_pq(pg_conn *c)
{
    tern_pq_lookup_cancel(c->lookup);
    c->lookup = NULL;
    poll_detach(c);
    drop_pipe(c);
    if (c->pending) {
        PQclear(c->pending);
        c->pending = NULL;
    }
    if (c->pq) {
        PQfinish(c->pq);
        c->pq = NULL;
    }
    /* The session's prepared statements went with it. */
    for (int i = 0; i < c->n_auto; i++)
        free(c->autos[i].sql);
    c->n_auto = 0;
    memset(c->seen, 0, sizeof c->seen);
    c->prepared = 0;
}

void pg_conn_broken(pg_conn *c, const char *why)
{
    char q[256];
    bool was_up = c->state == PG_C_IDLE || c->state == PG_C_BUSY;
    const char *msg = c->pq ? PQerrorMessage(c->pq) : "";
    char clean[200];
    snprintf(clean, sizeof clean, "%s%s%s", why, *msg ? ": " : "", msg);
    for (char *p = clean; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    if (was_up)
        TLOG_WARN("store", "event=pg_conn_lost conn=%s index=%d error=%s", conn_name(c), c->index,
                  tern_log_q(q, sizeof q, clean));
    else if (!c->warned)
        /* Once per outage, so that a server refusing us (too many
         * connections, bad credentials) is visible without flooding. */
        TLOG_WARN("store", "event=pg_connect_failed conn=%s index=%d error=%s", conn_name(c),
                  c->index, tern_log_q(q, sizeof q, clean));
    else
        TLOG_DEBUG("store", "event=pg_connect_failed conn=%s index=%d error=%s", conn_name(c),
                   c->index, tern_log_q(q, sizeof q, clean));
    c->warned = true;
    c->state = PG_C_DOWN;
    pg_job *j = c->job;
    c->job = NULL;
    drop_pq(c);
    if (j)
        pg_job_abort(j, why);
    schedule_retry(c);
    pg_dispatch(c->pg);
}

/* libpq prints notices (and the server's FATAL on shutdown) to stderr
 * by default; they belong in our log, one line each. */
static void on_notice(void *arg, const char *message)
{
    pg_conn *c = arg;
    char q[256];
    char clean[240];
    snprintf(clean, sizeof clean, "%s", message);
    clean[strcspn(clean, "\r\n")] = 0;
    TLOG_DEBUG("store", "event=pg_notice conn=%s index=%d message=%s", conn_name(c), c->index,
               tern_log_q(q, sizeof q, clean));
}

static void pq_started(void *arg, PGconn *pq, const char *error)
{
    pg_conn *c = arg;
    c->lookup = NULL;
    c->pq = pq;
    if (error != NULL) {
        pg_conn_broken(c, error);
        return;
    }
    if (!c->pq || PQstatus(c->pq) == CONNECTION_BAD) {
        pg_conn_broken(c, "connect failed");
        return;
    }
    PQsetNoticeProcessor(c->pq, on_notice, c);
    /* Before the first PQconnectPoll the socket is to be waited on as if
     * it had asked for writing. */
    if (poll_update(c, UV_WRITABLE) < 0)
        pg_conn_broken(c, "cannot watch socket");
}

void pg_conn_start(pg_conn *c)
{
    if (c->pg->shutting_down) {
        c->state = PG_C_DOWN;
        return;
    }
    c->state = PG_C_CONNECTING;
    if (c->pg->resolve_host == NULL) {
        pq_started(c, tern_pq_start(c->pg->conninfo, "ternd", NULL, NULL), NULL);
        return;
    }
    c->lookup = tern_pq_start_resolved(&c->pg->loop, c->pg->conninfo, c->pg->resolve_host,
                                       "ternd", pq_started, c);
    if (c->lookup == NULL)
        pg_conn_broken(c, "cannot start a host lookup");
}

static void connected(pg_conn *c)
{
    if (PQsetnonblocking(c->pq, 1) != 0) {
        pg_conn_broken(c, "cannot set non-blocking");
        return;
    }
    bool again = c->backoff_ms > 0;
    c->backoff_ms = 0;
    c->warned = false;
    c->prepared = 0;
    c->state = PG_C_IDLE;
    if (poll_update(c, UV_READABLE) < 0) {
        pg_conn_broken(c, "cannot watch socket");
        return;
    }
    if (again)
        TLOG_INFO("store", "event=pg_reconnected conn=%s index=%d", conn_name(c), c->index);
    if (c->listener) {
        c->rewake = again;
        c->state = PG_C_BUSY;
        if (!PQsendQuery(c->pq, "LISTEN " PG_CHANNEL)) {
            pg_conn_broken(c, "LISTEN failed");
            return;
        }
        int r = PQflush(c->pq);
        if (r < 0) {
            pg_conn_broken(c, "flush failed");
            return;
        }
        c->want_write = r == 1;
        if (c->want_write && poll_update(c, UV_READABLE | UV_WRITABLE) < 0)
            pg_conn_broken(c, "cannot watch socket");
        return;
    }
    pg_dispatch(c->pg);
}

static void connect_continue(pg_conn *c)
{
    PostgresPollingStatusType st = PQconnectPoll(c->pq);
    /* libpq may have closed the socket and opened another (next address,
     * SSL or GSS fallback), quite possibly under the same number: a watch
     * kept across that would wait on a descriptor epoll no longer knows.
     * While connecting, every step gets a fresh watch. */
    poll_detach(c);
    switch (st) {
    case PGRES_POLLING_READING:
        if (poll_update(c, UV_READABLE) < 0)
            pg_conn_broken(c, "cannot watch socket");
        return;
    case PGRES_POLLING_WRITING:
        if (poll_update(c, UV_WRITABLE) < 0)
            pg_conn_broken(c, "cannot watch socket");
        return;
    case PGRES_POLLING_OK:
        connected(c);
        return;
    default:
        pg_conn_broken(c, "connect failed");
        return;
    }
}

static int after_send(pg_conn *c)
{
    if (c->job)
        c->job->sent_ms = tern_now_ms();
    int r = PQflush(c->pq);
    if (r < 0)
        return -1;
    bool want = r == 1;
    if (want != c->want_write) {
        c->want_write = want;
        if (poll_update(c, UV_READABLE | (want ? UV_WRITABLE : 0)) < 0)
            return -1;
    }
    return 0;
}

int pg_conn_send(pg_conn *c, const char *sql, int np, const char *const *pv, const int *pl,
                 const int *pf, int binary)
{
    if (!c->pq || PQstatus(c->pq) != CONNECTION_OK)
        return -1;
    if (!PQsendQueryParams(c->pq, sql, np, NULL, pv, pl, pf, binary))
        return -1;
    return after_send(c);
}

int pg_conn_auto_stmt(pg_conn *c, const char *sql)
{
    static const char *const kinds[] = {"SELECT ", "WITH ", "INSERT ", "UPDATE ", "DELETE "};
    bool dml = false;
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
        dml |= strncmp(sql, kinds[k], strlen(kinds[k])) == 0;
    if (!dml) /* DECLARE, SET, ...: not worth a name, some not preparable */
        return -1;
    uint64_t h = 1469598103934665603u; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)sql; *p; p++)
        h = (h ^ *p) * 1099511628211u;
    for (int i = 0; i < c->n_auto; i++)
        if (c->autos[i].hash == h && strcmp(c->autos[i].sql, sql) == 0)
            return PG_AUTO_FIRST + i;
    uint64_t *seen = &c->seen[h % PG_AUTO_SEEN];
    if (c->n_auto == PG_AUTO_MAX || *seen != h) {
        *seen = h;
        return -1;
    }
    char *copy = strdup(sql);
    if (copy == NULL)
        return -1;
    c->autos[c->n_auto].hash = h;
    c->autos[c->n_auto].sql = copy;
    return PG_AUTO_FIRST + c->n_auto++;
}

static const char *stmt_name(int stmt, char buf[16])
{
    snprintf(buf, 16, "tern_%d", stmt);
    return buf;
}

int pg_conn_prepare(pg_conn *c, int stmt, const char *sql, int np)
{
    char name[16];
    if (!c->pq || PQstatus(c->pq) != CONNECTION_OK)
        return -1;
    if (!PQsendPrepare(c->pq, stmt_name(stmt, name), sql, np, NULL))
        return -1;
    return after_send(c);
}

int pg_conn_send_prepared(pg_conn *c, int stmt, int np, const char *const *pv, const int *pl,
                          const int *pf, int binary)
{
    char name[16];
    if (!c->pq || PQstatus(c->pq) != CONNECTION_OK)
        return -1;
    if (!PQsendQueryPrepared(c->pq, stmt_name(stmt, name), np, pv, pl, pf, binary))
        return -1;
    return after_send(c);
}

int pg_conn_pipeline_enter(pg_conn *c)
{
    if (!c->pq || PQstatus(c->pq) != CONNECTION_OK || !PQenterPipelineMode(c->pq))
        return -1;
    c->pipeline = true;
    return 0;
}

int pg_conn_pipeline_query(pg_conn *c, const char *sql)
{
    return PQsendQueryParams(c->pq, sql, 0, NULL, NULL, NULL, NULL, 0) ? 0 : -1;
}

int pg_conn_pipeline_prepared(pg_conn *c, int stmt, int np, const char *const *pv, const int *pl,
                              const int *pf)
{
    char name[16];
    return PQsendQueryPrepared(c->pq, stmt_name(stmt, name), np, pv, pl, pf, 0) ? 0 : -1;
}

int pg_conn_pipeline_params(pg_conn *c, const char *sql, int np, const char *const *pv,
                            const int *pl, const int *pf)
{
    return PQsendQueryParams(c->pq, sql, np, NULL, pv, pl, pf, 0) ? 0 : -1;
}

int pg_conn_pipeline_sync(pg_conn *c)
{
    if (!PQpipelineSync(c->pq))
        return -1;
    return after_send(c);
}

/* In pipeline mode each statement's results end with a NULL, and the sync
 * comes last as PGRES_PIPELINE_SYNC; two NULLs in a row mean nothing more
 * is queued. Everything is kept and handed over at the sync. */
static void pipeline_drain(pg_conn *c)
{
    int nulls = 0;
    while (c->pq && !PQisBusy(c->pq)) {
        PGresult *r = PQgetResult(c->pq);
        if (!r) {
            if (++nulls >= 2)
                return;
            continue;
        }
        nulls = 0;
        if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            c->pipeline = false;
            if (PQexitPipelineMode(c->pq) != 1) {
                pg_conn_broken(c, "cannot leave pipeline mode");
                return;
            }
            PGresult **res = c->pipe;
            int n = c->pipe_n;
            c->pipe = NULL;
            c->pipe_n = c->pipe_cap = 0;
            if (c->job) {
                pg_job *j = c->job;
                pg_job_pipeline_done(j, res, n);
                if (c->job != j && c->pq && PQstatus(c->pq) == CONNECTION_BAD)
                    pg_conn_broken(c, "connection lost");
            } else {
                for (int i = 0; i < n; i++)
                    PQclear(res[i]);
                free(res);
            }
            return;
        }
        if (c->pipe_n == c->pipe_cap) {
            int cap = c->pipe_cap ? c->pipe_cap * 2 : 16;
            PGresult **v = realloc(c->pipe, (size_t)cap * sizeof *v);
            if (!v) {
                PQclear(r);
                pg_conn_broken(c, "out of memory");
                return;
            }
            c->pipe = v;
            c->pipe_cap = cap;
        }
        c->pipe[c->pipe_n++] = r;
    }
}

static void listener_drain(pg_conn *c)
{
    while (!PQisBusy(c->pq)) {
        PGresult *r = PQgetResult(c->pq);
        if (!r)
            break;
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            PQclear(r);
            pg_conn_broken(c, "LISTEN refused");
            return;
        }
        PQclear(r);
        c->state = PG_C_IDLE;
        if (c->rewake) {
            /* NOTIFYs sent while we were not listening are lost: every
             * watcher looks again (a spurious wake is harmless). */
            c->rewake = false;
            pg_wake_watched(c->pg);
        }
    }
    PGnotify *n;
    while ((n = PQnotifies(c->pq)) != NULL) {
        if (!strcmp(n->relname, PG_CHANNEL) && n->extra)
            pg_notify_payload(c->pg, n->extra);
        PQfreemem(n);
    }
}

/* Collects the results of the job's statement; hands the job the first
 * error or else the last result once libpq says the statement is done. */
static void pool_drain(pg_conn *c)
{
    while (c->pq && !PQisBusy(c->pq)) {
        PGresult *r = PQgetResult(c->pq);
        if (!r) {
            pg_job *j = c->job;
            PGresult *res = c->pending;
            c->pending = NULL;
            if (!j) {
                if (res)
                    PQclear(res);
                return;
            }
            if (!res) {
                /* Nothing came back at all: the connection died under it. */
                pg_conn_broken(c, "no result");
                return;
            }
            pg_job_result(j, res);
            /* The job either sent its next statement (busy again) or
             * finished; in both cases nothing more is buffered for it. */
            if (c->job == j)
                return;
            if (c->pq && PQstatus(c->pq) == CONNECTION_BAD)
                pg_conn_broken(c, "connection lost");
            return;
        }
        if (!c->pending) {
            c->pending = r;
        } else if (PQresultStatus(c->pending) == PGRES_FATAL_ERROR) {
            PQclear(r);
        } else {
            PQclear(c->pending);
            c->pending = r;
        }
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    pg_poll *p = h->data;
    pg_conn *c = p->conn;
    if (!c)
        return;
    if (status < 0) {
        if (c->state == PG_C_CONNECTING)
            connect_continue(c);
        else
            pg_conn_broken(c, uv_strerror(status));
        pg_dispatch(c->pg);
        return;
    }
    if (c->state == PG_C_CONNECTING) {
        connect_continue(c);
        return;
    }
    if (c->want_write && (events & UV_WRITABLE)) {
        int r = PQflush(c->pq);
        if (r < 0) {
            pg_conn_broken(c, "flush failed");
            return;
        }
        if (r == 0) {
            c->want_write = false;
            if (poll_update(c, UV_READABLE) < 0) {
                pg_conn_broken(c, "cannot watch socket");
                return;
            }
        }
    }
    if (events & UV_READABLE) {
        if (!PQconsumeInput(c->pq) || PQstatus(c->pq) == CONNECTION_BAD) {
            pg_conn_broken(c, "connection lost");
            return;
        }
        if (c->want_write) {
            /* libpq may need input read before it can write more. */
            if (PQflush(c->pq) < 0) {
                pg_conn_broken(c, "flush failed");
                return;
            }
        }
        if (c->listener)
            listener_drain(c);
        else if (c->pipeline)
            pipeline_drain(c);
        else
            pool_drain(c);
    }
    pg_dispatch(c->pg);
}

static void timer_closed(uv_handle_t *h)
{
    (void)h;
}

void pg_conn_close(pg_conn *c)
{
    drop_pq(c);
    c->state = PG_C_DOWN;
    uv_timer_stop(&c->timer);
    if (!uv_is_closing((uv_handle_t *)&c->timer))
        uv_close((uv_handle_t *)&c->timer, timer_closed);
}
