/* sql.c: the `sql` auth backend: users in a PostgreSQL table the admin
 * already has, found by the admin's own query (auth_sql.password_query,
 * user_query). Each loop gets its own few libpq connections, opened lazily
 * and driven without blocking (PQconnectPoll, PQsendQueryParams, uv_poll on
 * PQsocket); auth.c hashes on the thread pool, so a lookup only fetches the
 * stored credential list. libpq would resolve a host name inside
 * PQconnectStart/PQconnectPoll, synchronously, stalling the loop: a
 * conninfo whose host= is one DNS name (and has no hostaddr=) is resolved
 * first on libuv's thread pool (storage/pg/pq_connect.h), and libpq gets
 * the addresses as hostaddr= while host= still names the server for TLS
 * verification and the password file.
 *
 * Input trusted: the validated config (the queries are the admin's SQL).
 * The user name comes bounded and normalised from auth.c but is still the
 * client's: it only ever travels as a bound parameter. Rows are the
 * database's and are copied, bounded, into the request's arena. */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth_backend.h"
#include "lib/log.h"
#include "storage/pg/pq_connect.h"

#define SQL_MAX_POOL 64
#define SQL_MAX_FIELD 4096 /* a credential list or account name longer than this is bad data */

typedef struct sql_backend {
    char *conninfo;
    char *resolve_host; /* host= to resolve before connecting, or NULL */
    char *password_query;
    char *user_query;
    uint32_t pool_size;
    uint64_t timeout_ms;
    bool scram;
} sql_backend;

typedef struct sql_job sql_job;
struct sql_job {
    tern_auth_lookup *lk;
    const char *query;
    bool needs_password; /* password_query: the `password` column must exist */
    sql_job *next;
};

typedef enum { CONN_DOWN, CONN_CONNECTING, CONN_IDLE, CONN_BUSY } conn_state;

typedef struct sql_client sql_client;
typedef struct sql_conn sql_conn;

/* A poll handle of its own allocation: libpq may replace its socket while
 * connecting, so each step gets a fresh watch and the old one is closed
 * whenever libuv is done with it. */
typedef struct sql_poll {
    uv_poll_t h;
    sql_conn *conn;
} sql_poll;

struct sql_conn {
    sql_client *client;
    PGconn *pq;
    tern_pq_lookup *lookup; /* host name lookup before the connect, or NULL */
    conn_state state;
    sql_poll *poll;
    int poll_fd;
    int poll_events;
    uv_timer_t timer;
    sql_job *job; /* BUSY */
    PGresult *result;
};

struct sql_client {
    const sql_backend *b; /* valid until client_close */
    uv_loop_t *loop;
    sql_job *head, *tail;
    size_t open_handles; /* freed when the last close callback has run */
    bool closing;
    bool failing;        /* the last connect failed: log the next success, not each failure */
    size_t n_conns;
    sql_conn conns[];
};

/* ---- backend ------------------------------------------------------------ */

static void sql_destroy(void *p)
{
    sql_backend *b = p;
    if (b == NULL)
        return;
    free(b->conninfo);
    free(b->resolve_host);
    free(b->password_query);
    free(b->user_query);
    free(b);
}

static void *sql_create(const tern_config *cfg, tern_store *store, char **error_r)
{
    (void)store;
    const tern_auth_sql_conf *sc = &cfg->auth_sql;
    const char *ci = sc->conninfo ? sc->conninfo : cfg->postgres.conninfo;
    if (ci == NULL || sc->password_query == NULL) {
        *error_r = strdup("auth backend sql needs auth_sql.password_query and a conninfo "
                          "(auth_sql.conninfo or postgres.conninfo)");
        return NULL;
    }
    /* A bad conninfo is a config error now, not a login failure later. */
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(ci, &perr);
    if (opts == NULL) {
        char buf[300];
        snprintf(buf, sizeof(buf), "auth_sql.conninfo: %s", perr ? perr : "cannot be parsed");
        buf[strcspn(buf, "\n")] = '\0';
        PQfreemem(perr);
        *error_r = strdup(buf);
        return NULL;
    }
    PQconninfoFree(opts);
    sql_backend *b = calloc(1, sizeof(*b));
    if (b == NULL)
        goto oom;
    b->resolve_host = tern_pq_host_to_resolve(ci);
    b->conninfo = strdup(ci);
    b->password_query = strdup(sc->password_query);
    b->user_query = sc->user_query ? strdup(sc->user_query) : NULL;
    if (b->conninfo == NULL || b->password_query == NULL || (sc->user_query && !b->user_query))
        goto oom;
    b->pool_size = sc->pool_size ? sc->pool_size : 2;
    if (b->pool_size > SQL_MAX_POOL)
        b->pool_size = SQL_MAX_POOL;
    b->timeout_ms = sc->timeout_ms ? sc->timeout_ms : 10000;
    b->scram = sc->scram;
    return b;
oom:
    sql_destroy(b);
    *error_r = strdup("out of memory");
    return NULL;
}

static unsigned sql_caps(void *p)
{
    const sql_backend *b = p;
    /* Rows hold whatever the admin's database holds: SCRAM only when the
     * admin vouches that every row has keys. */
    return TERN_AUTH_CAP_PASSWORD | (b->scram ? TERN_AUTH_CAP_SCRAM_SHA_256 : 0);
}

/* ---- connections ---------------------------------------------------------- */

static void dispatch(sql_client *c);
static void on_poll(uv_poll_t *h, int status, int events);

static void handle_closed(uv_handle_t *h)
{
    sql_client *c = h->data;
    if (h->type == UV_POLL)
        free(h);
    if (--c->open_handles == 0 && c->closing)
        free(c);
}

static void unwatch(sql_conn *cn)
{
    if (cn->poll != NULL) {
        cn->poll->h.data = cn->client;
        uv_close((uv_handle_t *)&cn->poll->h, handle_closed);
        cn->poll = NULL;
    }
}

/* fresh: a new handle even for the same fd number (connect steps). */
static int watch(sql_conn *cn, int events, bool fresh)
{
    int fd = PQsocket(cn->pq);
    if (fd < 0)
        return -1;
    if (cn->poll != NULL && (fresh || fd != cn->poll_fd))
        unwatch(cn);
    if (cn->poll == NULL) {
        sql_poll *p = calloc(1, sizeof(*p));
        if (p == NULL)
            return -1;
        if (uv_poll_init(cn->client->loop, &p->h, fd) != 0) {
            free(p);
            return -1;
        }
        cn->client->open_handles++;
        p->conn = cn;
        cn->poll = p;
        cn->poll_fd = fd;
        cn->poll_events = 0;
    }
    if (events != cn->poll_events) {
        if (uv_poll_start(&cn->poll->h, events, on_poll) != 0)
            return -1;
        cn->poll_events = events;
    }
    return 0;
}

static void job_finish(sql_job *j, int status)
{
    j->lk->status = status;
    j->lk->done(j->lk);
}

static void job_error(sql_job *j, const char *what, const char *msg)
{
    char *e = j->lk->req->error;
    size_t size = sizeof(j->lk->req->error);
    snprintf(e, size, "sql: %s%s%.200s", what, msg && *msg ? ": " : "", msg ? msg : "");
    e[strcspn(e, "\r\n")] = '\0';
}

/* Drops the connection; its job (if any) fails with ETEMP. The next job
 * opens a fresh one. */
static void conn_drop(sql_conn *cn, const char *why)
{
    sql_job *j = cn->job;
    char msg[256];
    snprintf(msg, sizeof(msg), "%s", cn->pq ? PQerrorMessage(cn->pq) : "");
    tern_pq_lookup_cancel(cn->lookup);
    cn->lookup = NULL;
    unwatch(cn);
    uv_timer_stop(&cn->timer);
    if (cn->result)
        PQclear(cn->result);
    cn->result = NULL;
    if (cn->pq)
        PQfinish(cn->pq);
    cn->pq = NULL;
    cn->state = CONN_DOWN;
    cn->job = NULL;
    if (j != NULL) {
        job_error(j, why, msg);
        job_finish(j, TERN_AUTH_ETEMP);
    }
}

/* Jobs waiting while nothing could serve them: no point in holding them
 * until the timeout once every connection attempt has failed. */
static void fail_waiting_if_hopeless(sql_client *c, const char *msg)
{
    for (size_t i = 0; i < c->n_conns; i++)
        if (c->conns[i].state != CONN_DOWN)
            return;
    sql_job *j = c->head;
    c->head = c->tail = NULL;
    while (j != NULL) {
        sql_job *next = j->next;
        job_error(j, "cannot connect", msg);
        job_finish(j, TERN_AUTH_ETEMP);
        j = next;
    }
}

static void connect_failed_msg(sql_conn *cn, const char *why)
{
    char msg[256];
    snprintf(msg, sizeof(msg), "%s", why);
    msg[strcspn(msg, "\r\n")] = '\0';
    sql_client *c = cn->client;
    if (!c->failing)
        TLOG_WARN("auth", "event=auth_sql_error error=\"cannot connect: %s\"", msg);
    c->failing = true;
    conn_drop(cn, "cannot connect");
    fail_waiting_if_hopeless(c, msg);
}

static void connect_failed(sql_conn *cn)
{
    connect_failed_msg(cn, cn->pq ? PQerrorMessage(cn->pq) : "out of memory");
}

static void on_timeout(uv_timer_t *t)
{
    sql_conn *cn = t->data;
    if (cn->state == CONN_CONNECTING) {
        sql_client *c = cn->client;
        if (!c->failing)
            TLOG_WARN("auth", "event=auth_sql_error error=\"connect timed out\"");
        c->failing = true;
        conn_drop(cn, "connect timed out");
        fail_waiting_if_hopeless(c, "connect timed out");
    } else {
        conn_drop(cn, "query timed out");
    }
    dispatch(cn->client);
}

static void connect_step(sql_conn *cn)
{
    switch (PQconnectPoll(cn->pq)) {
    case PGRES_POLLING_READING:
        if (watch(cn, UV_READABLE, true) != 0)
            connect_failed(cn);
        return;
    case PGRES_POLLING_WRITING:
        if (watch(cn, UV_WRITABLE, true) != 0)
            connect_failed(cn);
        return;
    case PGRES_POLLING_OK:
        if (PQsetnonblocking(cn->pq, 1) != 0) {
            connect_failed(cn);
            return;
        }
        if (cn->client->failing)
            TLOG_INFO("auth", "event=auth_sql_connected");
        cn->client->failing = false;
        cn->state = CONN_IDLE;
        uv_timer_stop(&cn->timer);
        /* An idle connection is watched too, so one the server closed is
         * noticed and replaced before a login needs it. */
        if (watch(cn, UV_READABLE, true) != 0) {
            conn_drop(cn, "cannot watch the socket");
            return;
        }
        dispatch(cn->client);
        return;
    default:
        connect_failed(cn);
        return;
    }
}

/* libpq would print server notices on stderr; a server has a log. */
static void on_notice(void *arg, const char *msg)
{
    (void)arg;
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", msg);
    buf[strcspn(buf, "\r\n")] = '\0';
    char q[300];
    TLOG_INFO("auth", "event=auth_sql_notice message=%s", tern_log_q(q, sizeof(q), buf));
}

static void pq_started(void *arg, PGconn *pq, const char *error)
{
    sql_conn *cn = arg;
    cn->lookup = NULL;
    cn->pq = pq;
    if (error != NULL) {
        connect_failed_msg(cn, error);
        return;
    }
    if (cn->pq == NULL || PQstatus(cn->pq) == CONNECTION_BAD) {
        connect_failed(cn);
        return;
    }
    PQsetNoticeProcessor(cn->pq, on_notice, NULL);
    connect_step(cn);
}

static void conn_start(sql_conn *cn)
{
    const sql_backend *b = cn->client->b;
    cn->state = CONN_CONNECTING;
    uv_timer_start(&cn->timer, on_timeout, b->timeout_ms, 0);
    if (b->resolve_host == NULL) {
        pq_started(cn, tern_pq_start(b->conninfo, "ternd-auth", NULL, NULL), NULL);
        return;
    }
    cn->lookup = tern_pq_start_resolved(cn->client->loop, b->conninfo, b->resolve_host,
                                        "ternd-auth", pq_started, cn);
    if (cn->lookup == NULL)
        connect_failed_msg(cn, "cannot start a host lookup");
}

/* ---- queries ---------------------------------------------------------------- */

static char *field(tern_auth_req *r, const PGresult *res, int col)
{
    if (col < 0 || PQgetisnull(res, 0, col))
        return NULL;
    const char *v = PQgetvalue(res, 0, col);
    size_t n = (size_t)PQgetlength(res, 0, col);
    if (n == 0 || n > SQL_MAX_FIELD || memchr(v, '\0', n) != NULL)
        return NULL;
    return tern_arena_strndup(&r->arena, v, n);
}

/* The job's answer from its one result. Returns the lookup status. */
static int job_read(sql_job *j, const PGresult *res)
{
    tern_auth_lookup *lk = j->lk;
    tern_auth_req *r = lk->req;
    if (res == NULL) {
        job_error(j, "query gave no result", NULL);
        return TERN_AUTH_ETEMP;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        job_error(j, "query failed", PQresultErrorMessage(res));
        return TERN_AUTH_ETEMP;
    }
    int rows = PQntuples(res);
    if (rows == 0)
        return TERN_AUTH_LOOKUP_UNKNOWN;
    if (rows > 1) {
        /* Two rows for one login: the admin's query is wrong, and
         * picking one would guess whose password counts. */
        char msg[64];
        snprintf(msg, sizeof(msg), "%d rows for one user", rows);
        job_error(j, "query is ambiguous", msg);
        return TERN_AUTH_ETEMP;
    }
    int pcol = PQfnumber(res, "password");
    if (j->needs_password && pcol < 0) {
        job_error(j, "password_query returns no column \"password\"", NULL);
        return TERN_AUTH_ETEMP;
    }
    lk->stored = field(r, res, pcol);
    lk->account = field(r, res, PQfnumber(res, "account"));
    if (lk->account == NULL)
        lk->account = tern_arena_strdup(&r->arena, lk->user);
    if (lk->account == NULL) {
        job_error(j, "out of memory", NULL);
        return TERN_AUTH_ETEMP;
    }
    return TERN_AUTH_LOOKUP_FOUND;
}

static void conn_flush(sql_conn *cn)
{
    int f = PQflush(cn->pq);
    if (f < 0 || watch(cn, f == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE, false) != 0)
        conn_drop(cn, "cannot send the query");
}

static void conn_send(sql_conn *cn, sql_job *j)
{
    tern_auth_lookup *lk = j->lk;
    const char *user = lk->user;
    const char *at = strrchr(user, '@');
    char local[TERN_AUTH_MAX_USER + 1];
    size_t ln = at ? (size_t)(at - user) : strlen(user);
    if (ln >= sizeof(local))
        ln = sizeof(local) - 1;
    memcpy(local, user, ln);
    local[ln] = '\0';
    /* Declared as text so a query may use any subset of $1..$3. */
    static const Oid types[3] = {25, 25, 25};
    const char *vals[3] = {user, local, at ? at + 1 : ""};
    cn->job = j;
    cn->state = CONN_BUSY;
    if (!PQsendQueryParams(cn->pq, j->query, 3, types, vals, NULL, NULL, 0)) {
        conn_drop(cn, "cannot send the query");
        return;
    }
    uv_timer_start(&cn->timer, on_timeout, cn->client->b->timeout_ms, 0);
    conn_flush(cn);
}

static void conn_readable(sql_conn *cn)
{
    if (!PQconsumeInput(cn->pq)) {
        conn_drop(cn, "connection lost");
        return;
    }
    if (cn->state == CONN_IDLE) {
        PGnotify *n;
        while ((n = PQnotifies(cn->pq)) != NULL)
            PQfreemem(n);
        if (PQstatus(cn->pq) == CONNECTION_BAD)
            conn_drop(cn, "connection lost");
        return;
    }
    while (!PQisBusy(cn->pq)) {
        PGresult *res = PQgetResult(cn->pq);
        if (res == NULL)
            break;
        if (cn->result == NULL)
            cn->result = res;
        else
            PQclear(res);
    }
    if (PQisBusy(cn->pq)) {
        if (PQstatus(cn->pq) == CONNECTION_BAD)
            conn_drop(cn, "connection lost");
        return;
    }
    /* Every result is in: the connection is free again. */
    sql_job *j = cn->job;
    int status = job_read(j, cn->result);
    PQclear(cn->result);
    cn->result = NULL;
    cn->job = NULL;
    uv_timer_stop(&cn->timer);
    if (PQstatus(cn->pq) == CONNECTION_BAD)
        conn_drop(cn, "connection lost");
    else
        cn->state = CONN_IDLE;
    job_finish(j, status);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    sql_poll *p = (sql_poll *)h;
    sql_conn *cn = p->conn;
    sql_client *c = cn->client;
    if (cn->state == CONN_CONNECTING) {
        connect_step(cn);
    } else if (status < 0) {
        conn_drop(cn, "socket error");
    } else {
        if ((events & UV_WRITABLE) && cn->state == CONN_BUSY)
            conn_flush(cn);
        if ((events & UV_READABLE) && cn->pq != NULL)
            conn_readable(cn);
    }
    dispatch(c);
}

/* Gives waiting jobs to idle connections, and opens connections (up to
 * the pool size) for the ones left waiting. */
static void dispatch(sql_client *c)
{
    if (c->closing)
        return;
    for (size_t i = 0; i < c->n_conns && c->head != NULL; i++) {
        sql_conn *cn = &c->conns[i];
        if (cn->state != CONN_IDLE)
            continue;
        sql_job *j = c->head;
        c->head = j->next;
        if (c->head == NULL)
            c->tail = NULL;
        conn_send(cn, j);
        i = (size_t)-1; /* sending may have dropped or finished anything: look again */
    }
    size_t waiting = 0, connecting = 0;
    for (sql_job *j = c->head; j; j = j->next)
        waiting++;
    for (size_t i = 0; i < c->n_conns; i++)
        connecting += c->conns[i].state == CONN_CONNECTING;
    for (size_t i = 0; i < c->n_conns && connecting < waiting; i++) {
        if (c->conns[i].state != CONN_DOWN)
            continue;
        connecting++;
        conn_start(&c->conns[i]);
        if (c->head == NULL) /* that connect failed them all */
            return;
    }
}

/* ---- per-loop client -------------------------------------------------------- */

static void *sql_client_new(void *p, uv_loop_t *loop)
{
    sql_backend *b = p;
    sql_client *c = calloc(1, sizeof(*c) + b->pool_size * sizeof(sql_conn));
    if (c == NULL)
        return NULL;
    c->b = b;
    c->loop = loop;
    c->n_conns = b->pool_size;
    for (size_t i = 0; i < c->n_conns; i++) {
        sql_conn *cn = &c->conns[i];
        cn->client = c;
        uv_timer_init(loop, &cn->timer);
        cn->timer.data = cn;
        c->open_handles++;
    }
    return c;
}

static void sql_client_close(void *p, void *cs)
{
    (void)p;
    sql_client *c = cs;
    /* auth.c closes a client only when no request is pending, so no job
     * is left to answer. */
    c->closing = true;
    for (size_t i = 0; i < c->n_conns; i++) {
        sql_conn *cn = &c->conns[i];
        cn->job = NULL;
        conn_drop(cn, "closing");
        cn->timer.data = c;
        uv_close((uv_handle_t *)&cn->timer, handle_closed);
    }
}

static void sql_lookup(void *p, tern_auth_lookup *lk)
{
    sql_backend *b = p;
    sql_client *c = lk->client_state;
    if (c == NULL) {
        lk->status = TERN_AUTH_ETEMP;
        lk->done(lk);
        return;
    }
    sql_job *j = tern_arena_alloc(&lk->req->arena, sizeof(*j));
    if (j == NULL) {
        lk->status = TERN_AUTH_ETEMP;
        lk->done(lk);
        return;
    }
    bool exists = lk->req->op == TERN_AUTH_USER_EXISTS && b->user_query != NULL;
    *j = (sql_job){.lk = lk, .query = exists ? b->user_query : b->password_query,
                   .needs_password = !exists};
    if (c->tail)
        c->tail->next = j;
    else
        c->head = j;
    c->tail = j;
    dispatch(c);
}

const tern_auth_backend_ops tern_auth_sql_backend = {
    .name = "sql",
    .create = sql_create,
    .destroy = sql_destroy,
    .caps = sql_caps,
    .client_new = sql_client_new,
    .client_close = sql_client_close,
    .lookup = sql_lookup,
};
