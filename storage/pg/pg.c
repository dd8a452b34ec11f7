/* The `postgres` store backend: the backend table, the backend thread and
 * its loop, the job queue, and the driver that runs a job's statements
 * (BEGIN ... NOTIFY ... COMMIT/ROLLBACK around the op's own ones) and maps
 * PostgreSQL errors to TERN_STORE_E*. The queue also groups appends: while
 * one account has an append running, its next appends wait and then run
 * together in one transaction. Connections live in pg_pool.c, the ops in
 * pg_directory.c, pg_messages.c and pg_search.c.
 *
 * Change events are raised only through LISTEN (ours and other nodes'
 * NOTIFYs alike), so a change is announced once and only once committed.
 *
 * Input trusted: requests from store.c (our own code); notification
 * payloads from the database, which any client of it could have sent, so
 * they are parsed defensively. */
#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/util.h"
#include "storage/pg/pg_internal.h"

static const pg_op_fn pg_ops[TERN_STORE__OP_COUNT] = {
    [TERN_STORE_DOMAIN_ADD] = pg_op_domain_add,
    [TERN_STORE_DOMAIN_REMOVE] = pg_op_domain_remove,
    [TERN_STORE_DOMAIN_LIST] = pg_op_domain_list,
    [TERN_STORE_ACCOUNT_CREATE] = pg_op_account_create,
    [TERN_STORE_ACCOUNT_DELETE] = pg_op_account_delete,
    [TERN_STORE_ACCOUNT_GET] = pg_op_account_get,
    [TERN_STORE_ACCOUNT_LIST] = pg_op_account_list,
    [TERN_STORE_ACCOUNT_SET_PASSWORD] = pg_op_account_set_password,
    [TERN_STORE_ACCOUNT_SET_QUOTA] = pg_op_account_set_quota,
    [TERN_STORE_ALIAS_ADD] = pg_op_alias_add,
    [TERN_STORE_ALIAS_REMOVE] = pg_op_alias_remove,
    [TERN_STORE_ALIAS_LIST] = pg_op_alias_list,
    [TERN_STORE_RCPT_LOOKUP] = pg_op_rcpt_lookup,
    [TERN_STORE_MAILBOX_CREATE] = pg_op_mailbox_create,
    [TERN_STORE_MAILBOX_RENAME] = pg_op_mailbox_rename,
    [TERN_STORE_MAILBOX_DELETE] = pg_op_mailbox_delete,
    [TERN_STORE_MAILBOX_LIST] = pg_op_mailbox_list,
    [TERN_STORE_MAILBOX_STATUS] = pg_op_mailbox_status,
    [TERN_STORE_MAILBOX_SUBSCRIBE] = pg_op_mailbox_subscribe,
    [TERN_STORE_MAILBOX_SET_SPECIAL] = pg_op_mailbox_set_special,
    [TERN_STORE_APPEND] = pg_op_append,
    [TERN_STORE_FETCH] = pg_op_fetch,
    [TERN_STORE_FETCH_BODY] = pg_op_fetch_body,
    [TERN_STORE_SET_FLAGS] = pg_op_set_flags,
    [TERN_STORE_COPY] = pg_op_copy,
    [TERN_STORE_MOVE] = pg_op_move,
    [TERN_STORE_EXPUNGE] = pg_op_expunge,
    [TERN_STORE_SEARCH] = pg_op_search,
    [TERN_STORE_CHANGES] = pg_op_changes,
    [TERN_STORE_QUOTA_GET] = pg_op_quota_get,
    [TERN_STORE_RECENT_CLAIM] = pg_op_recent_claim,
    [TERN_STORE_MAILBOX_KEYWORDS] = pg_op_mailbox_keywords,
    [TERN_STORE_FETCH_HEADERS] = pg_op_fetch_headers,
    [TERN_STORE_FETCH_INDEX] = pg_op_fetch_index,
};

/* ---- job helpers -------------------------------------------------------- */

int pg_send(pg_job *j, const char *sql)
{
    int stmt = j->np > 0 ? pg_conn_auto_stmt(j->conn, sql) : -1;
    if (stmt >= 0)
        return pg_send_prepared(j, stmt, sql);
    int binary = j->binary_result;
    int np = j->np;
    j->binary_result = false;
    j->np = 0;
    if (j->res) {
        PQclear(j->res);
        j->res = NULL;
    }
    if (pg_conn_send(j->conn, sql, np, j->pv, j->pl, j->pf, binary) < 0) {
        /* The connection is gone; pg_pool.c has already failed the job or
         * will on the next event. Report ETEMP from here. */
        j->req->status = tern_store__fail(j->req, TERN_STORE_ETEMP, "database connection lost");
        return PG_DONE;
    }
    return PG_WAIT;
}

int pg_send_begin(pg_job *j)
{
    if (j->res) {
        PQclear(j->res);
        j->res = NULL;
    }
    if (pg_conn_send(j->conn, "BEGIN", 0, NULL, NULL, NULL, 0) < 0) {
        j->req->status = tern_store__fail(j->req, TERN_STORE_ETEMP, "database connection lost");
        return PG_DONE;
    }
    return PG_WAIT;
}

static int send_failed(pg_job *j)
{
    j->req->status = tern_store__fail(j->req, TERN_STORE_ETEMP, "database connection lost");
    return PG_DONE;
}

/* Runs a statement kept prepared on the connection, preparing it first
 * when this session has not seen it (pg_job_result then sends the
 * execution with the parameters kept here). */
int pg_send_prepared(pg_job *j, int stmt, const char *sql)
{
    if (j->res) {
        PQclear(j->res);
        j->res = NULL;
    }
    pg_conn *c = j->conn;
    if (c->prepared & ((uint64_t)1 << stmt)) {
        int np = j->np;
        bool binary = j->binary_result;
        j->np = 0;
        j->binary_result = false;
        if (pg_conn_send_prepared(c, stmt, np, j->pv, j->pl, j->pf, binary) < 0)
            return send_failed(j);
        return PG_WAIT;
    }
    j->prep_stmt = stmt + 1;
    j->prep_np = j->np;
    j->prep_binary = j->binary_result;
    j->np = 0;
    j->binary_result = false;
    if (pg_conn_prepare(c, stmt, sql, j->prep_np) < 0)
        return send_failed(j);
    return PG_WAIT;
}

/* Prepares a statement on the connection without running it (for
 * pipelines, which then run it several times); the op resumes after. */
int pg_send_prepare_only(pg_job *j, int stmt, const char *sql)
{
    if (j->res) {
        PQclear(j->res);
        j->res = NULL;
    }
    j->prep_stmt = stmt + 1;
    j->prep_only = true;
    if (pg_conn_prepare(j->conn, stmt, sql, 0) < 0)
        return send_failed(j);
    return PG_WAIT;
}

int pg_done(pg_job *j, int status, const char *fmt, ...)
{
    va_list ap;
    char msg[200];
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    j->req->status = tern_store__fail(j->req, status, "%s", msg);
    return PG_DONE;
}

int pg_ok(pg_job *j)
{
    return PG_DONE;
}

static void pg_param(pg_job *j, const char *v, int len, int fmt)
{
    if (j->np == j->cap) {
        int cap = j->cap ? j->cap * 2 : 32;
        const char **pv = tern_arena_alloc(&j->a, (size_t)cap * sizeof *pv);
        int *pl = tern_arena_alloc(&j->a, (size_t)cap * sizeof *pl);
        int *pf = tern_arena_alloc(&j->a, (size_t)cap * sizeof *pf);
        if (!pv || !pl || !pf || cap > PG_MAX_PARAMS) {
            /* Ops check their counts first; this is out of memory. */
            TLOG_ERR("store", "event=pg_params_overflow op=%d", (int)j->req->op);
            abort();
        }
        if (j->np) {
            memcpy(pv, j->pv, (size_t)j->np * sizeof *pv);
            memcpy(pl, j->pl, (size_t)j->np * sizeof *pl);
            memcpy(pf, j->pf, (size_t)j->np * sizeof *pf);
        }
        j->pv = pv;
        j->pl = pl;
        j->pf = pf;
        j->cap = cap;
    }
    j->pv[j->np] = v;
    j->pl[j->np] = len;
    j->pf[j->np] = fmt;
    j->np++;
}

void pg_p_str(pg_job *j, const char *s)
{
    pg_param(j, s, 0, 0);
}

void pg_p_u64(pg_job *j, uint64_t v)
{
    pg_param(j, tern_arena_printf(&j->a, "%" PRIu64, v), 0, 0);
}

void pg_p_i64(pg_job *j, int64_t v)
{
    pg_param(j, tern_arena_printf(&j->a, "%" PRId64, v), 0, 0);
}

void pg_p_bin(pg_job *j, const uint8_t *data, size_t len)
{
    pg_param(j, (const char *)data, (int)len, 1);
}

/* A text[] literal: every element double-quoted, '"' and '\' escaped. */
void pg_p_strarray(pg_job *j, const char *const *v, size_t n, bool lower)
{
    size_t cap = 3;
    for (size_t i = 0; i < n; i++)
        cap += strlen(v[i]) * 2 + 3;
    char *out = tern_arena_alloc(&j->a, cap);
    char *p = out;
    *p++ = '{';
    for (size_t i = 0; i < n; i++) {
        if (i)
            *p++ = ',';
        *p++ = '"';
        for (const char *s = pg_clean_text(j, v[i]); *s; s++) {
            char c = lower ? (char)tolower((unsigned char)*s) : *s;
            if (c == '"' || c == '\\')
                *p++ = '\\';
            *p++ = c;
        }
        *p++ = '"';
    }
    *p++ = '}';
    *p = 0;
    pg_param(j, out, 0, 0);
}

void pg_note(pg_job *j, uint64_t mailbox_id, uint64_t modseq)
{
    if (j->n_notes >= (int)(sizeof j->notes / sizeof j->notes[0]))
        return;
    j->notes[j->n_notes++] =
        tern_arena_printf(&j->a, "%s\t%" PRIu64 "\t%" PRIu64, j->acct, mailbox_id, modseq);
}

void pg_uidset(pg_job *j, const tern_uid_set *set, uint64_t max_uid)
{
    if (set->n == 0) {
        j->uidset_sql = "false";
        return;
    }
    char *a = tern_arena_alloc(&j->a, set->n * 24 + 3);
    char *b = tern_arena_alloc(&j->a, set->n * 24 + 3);
    size_t pa = 0, pb = 0;
    uint64_t lo0 = 0, hi0 = 0;
    a[pa++] = '{';
    b[pb++] = '{';
    for (size_t i = 0; i < set->n; i++) {
        uint64_t x = set->ranges[i].first == UINT32_MAX ? max_uid : set->ranges[i].first;
        uint64_t y = set->ranges[i].last == UINT32_MAX ? max_uid : set->ranges[i].last;
        uint64_t lo = x < y ? x : y, hi = x < y ? y : x;
        if (i == 0) {
            lo0 = lo;
            hi0 = hi;
        }
        pa += (size_t)sprintf(a + pa, "%s%" PRIu64, i ? "," : "", lo);
        pb += (size_t)sprintf(b + pb, "%s%" PRIu64, i ? "," : "", hi);
    }
    a[pa++] = '}';
    b[pb++] = '}';
    if (set->n == 1) {
        /* One range: a plain BETWEEN the planner can use the index for. */
        pg_p_u64(j, lo0);
        pg_p_u64(j, hi0);
        j->uidset_sql = tern_arena_printf(&j->a, "m.uid BETWEEN $%d AND $%d", j->np - 1, j->np);
        return;
    }
    pg_param(j, a, 0, 0);
    pg_param(j, b, 0, 0);
    j->uidset_sql = tern_arena_printf(&j->a,
        "EXISTS (SELECT 1 FROM unnest($%d::bigint[], $%d::bigint[]) r(lo, hi) "
        "WHERE m.uid BETWEEN r.lo AND r.hi)", j->np - 1, j->np);
}

uint64_t pg_u64(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return 0;
    return strtoull(PQgetvalue(r, row, col), NULL, 10);
}

int64_t pg_i64(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return 0;
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

char *pg_str(pg_job *j, const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return NULL;
    return tern_arena_strdup(&j->req->arena, PQgetvalue(r, row, col));
}

/* Length of a valid UTF-8 sequence at s, or 0. */
static size_t utf8_len(const unsigned char *s)
{
    unsigned c = s[0];
    size_t n;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    unsigned cp = c & (0x3f >> (n - 1));
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* Header values come decoded from untrusted charsets: a text column
 * refuses invalid UTF-8, and a refused header must not refuse the mail. */
const char *pg_clean_text(pg_job *j, const char *s)
{
    if (!s)
        return NULL;
    const unsigned char *p = (const unsigned char *)s;
    bool clean = true;
    while (*p) {
        size_t n = utf8_len(p);
        if (!n) {
            clean = false;
            break;
        }
        p += n;
    }
    if (clean)
        return s;
    size_t len = strlen(s);
    char *out = tern_arena_alloc(&j->a, len + 1);
    size_t o = 0;
    p = (const unsigned char *)s;
    while (*p) {
        size_t n = utf8_len(p);
        if (!n) {
            out[o++] = '?';
            p++;
        } else {
            memcpy(out + o, p, n);
            o += n;
            p += n;
        }
    }
    out[o] = 0;
    return out;
}

const char *pg_lower(tern_arena *a, const char *s)
{
    char *d = tern_arena_strdup(a, s);
    for (char *p = d; p && *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return d;
}

const char *pg_norm_account(tern_arena *a, const char *name)
{
    if (!name)
        return NULL;
    char *d = tern_arena_strdup(a, name);
    char *at = d ? strrchr(d, '@') : NULL;
    for (char *p = at; p && *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return d;
}

char **pg_split_words(tern_arena *a, const char *s, size_t *n_r)
{
    *n_r = 0;
    if (!s || !*s)
        return NULL;
    size_t n = 1;
    for (const char *p = s; *p; p++)
        n += *p == ' ';
    char **v = tern_arena_alloc(a, n * sizeof *v);
    size_t k = 0;
    const char *p = s;
    while (*p) {
        const char *e = strchr(p, ' ');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l)
            v[k++] = tern_arena_strndup(a, p, l);
        p += l;
        if (*p)
            p++;
    }
    *n_r = k;
    return v;
}

/* ---- the driver ---------------------------------------------------------- */

int pg_map_error(pg_job *j, const PGresult *res)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorMessage(res);
    char clean[200];
    snprintf(clean, sizeof clean, "%s", msg && *msg ? msg : "unknown database error");
    for (char *p = clean; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    int st = TERN_STORE_EIO;
    if (!state || PQstatus(j->conn->pq) == CONNECTION_BAD)
        st = TERN_STORE_ETEMP;
    else if (!strcmp(state, "23505"))
        st = TERN_STORE_EEXISTS;
    else if (!strncmp(state, "08", 2) || !strncmp(state, "57P", 3) || !strncmp(state, "53", 2) ||
             !strcmp(state, "40001") || !strcmp(state, "40P01") || !strcmp(state, "55P03"))
        st = TERN_STORE_ETEMP;
    if (st == TERN_STORE_EIO) {
        char q[220];
        TLOG_WARN("store", "event=pg_error op=%d sqlstate=%s error=%s", (int)j->req->op,
                  state ? state : "-", tern_log_q(q, sizeof q, clean));
    }
    j->req->status = tern_store__fail(j->req, st, "%s%s%s", state ? state : "",
                                      state ? ": " : "", clean);
    return st;
}

static void send_control(pg_job *j, const char *sql)
{
    if (pg_send(j, sql) == PG_DONE)
        pg_job_finish(j);
}

static void run_op(pg_job *j)
{
    pg_op_fn fn = j->batch ? pg_op_append_batch : j->reap ? pg_op_blob_reap : pg_ops[j->req->op];
    if (fn(j) == PG_WAIT)
        return;
    if (!j->conn || PQstatus(j->conn->pq) == CONNECTION_BAD) {
        pg_job_finish(j);
        return;
    }
    if (j->req->status == TERN_STORE_OK && j->in_tx && j->n_notes > 0) {
        j->phase = PG_PH_NOTIFY;
        pg_p_strarray(j, j->notes, (size_t)j->n_notes, false);
        send_control(j, "SELECT pg_notify('" PG_CHANNEL "', p) FROM unnest($1::text[]) p");
    } else if (j->req->status == TERN_STORE_OK && j->in_tx) {
        j->phase = PG_PH_COMMIT;
        send_control(j, "COMMIT");
    } else if (j->in_tx) {
        j->phase = PG_PH_ROLLBACK;
        send_control(j, "ROLLBACK");
    } else {
        pg_job_finish(j);
    }
}

void pg_job_start(pg_job *j)
{
    j->phase = PG_PH_OP;
    if (!j->batch && !j->reap && !pg_ops[j->req->op]) {
        pg_done(j, TERN_STORE_EINVAL, "unknown store op %d", (int)j->req->op);
        pg_job_finish(j);
        return;
    }
    run_op(j);
}

/* ---- file work on the thread pool (blob directory) ------------------------ */

static void work_cb(uv_work_t *w)
{
    pg_job *j = w->data;
    j->work_fn(j);
}

static void after_work_cb(uv_work_t *w, int status)
{
    pg_job *j = w->data;
    pg_impl *pg = j->pg;
    (void)status;
    pg->n_work--;
    j->working = false;
    if (j->finishing)
        pg_job_finish(j);   /* its connection was lost meanwhile */
    else
        run_op(j);
    pg_dispatch(pg);
}

int pg_work(pg_job *j, pg_work_fn fn)
{
    j->work_fn = fn;
    j->work.data = j;
    /* No statement is out: the silent-connection bound does not apply. */
    j->sent_ms = 0;
    if (uv_queue_work(&j->pg->loop, &j->work, work_cb, after_work_cb) != 0)
        return pg_done(j, TERN_STORE_ETEMP, "cannot queue file work");
    j->working = true;
    j->pg->n_work++;
    return PG_WAIT;
}

/* One work item per member (a batch's files are written in parallel: the
 * file system commits concurrent fsyncs together). */
typedef struct pg_work_item {
    uv_work_t w;
    pg_job *j, *m;
} pg_work_item;

static void noop_work(pg_job *j)
{
    (void)j;
}

static void item_cb(uv_work_t *w)
{
    pg_work_item *it = w->data;
    it->j->work_fn(it->m);
}

static void item_after_cb(uv_work_t *w, int status)
{
    pg_work_item *it = w->data;
    pg_job *j = it->j;
    pg_impl *pg = j->pg;
    (void)status;
    pg->n_work--;
    if (--j->work_left > 0)
        return;
    j->working = false;
    if (j->finishing)
        pg_job_finish(j);
    else
        run_op(j);
    pg_dispatch(pg);
}

int pg_work_each(pg_job *j, pg_job **mem, int n, pg_work_fn fn)
{
    pg_work_item *it = n ? tern_arena_alloc(&j->a, (size_t)n * sizeof *it) : NULL;
    if (n == 0)
        return pg_work(j, noop_work);
    if (!it)
        return pg_done(j, TERN_STORE_ETEMP, "out of memory");
    j->work_fn = fn;
    j->sent_ms = 0;
    j->work_left = 0;
    for (int i = 0; i < n; i++) {
        it[i].w.data = &it[i];
        it[i].j = j;
        it[i].m = mem[i];
        if (uv_queue_work(&j->pg->loop, &it[i].w, item_cb, item_after_cb) != 0) {
            fn(mem[i]); /* cannot queue: on this thread rather than not at all */
            continue;
        }
        j->work_left++;
        j->pg->n_work++;
    }
    if (j->work_left == 0)
        return pg_work(j, noop_work); /* continue through the usual path */
    j->working = true;
    return PG_WAIT;
}

void pg_blob_note_dead(pg_job *j, const PGresult *res)
{
    for (int i = 0; i < PQntuples(res); i++) {
        if (PQgetisnull(res, i, 0))
            continue;
        if (j->n_dead == j->cap_dead) {
            int cap = j->cap_dead ? j->cap_dead * 2 : 16;
            char **v = tern_arena_alloc(&j->a, (size_t)cap * sizeof *v);
            if (!v)
                return; /* the sweep removes what is not noted */
            if (j->n_dead)
                memcpy(v, j->dead, (size_t)j->n_dead * sizeof *v);
            j->dead = v;
            j->cap_dead = cap;
        }
        j->dead[j->n_dead++] = tern_arena_strdup(&j->a, PQgetvalue(res, i, 0));
    }
}

static void q_push_back(pg_impl *pg, pg_job *j)
{
    j->next = NULL;
    if (pg->q_tail)
        pg->q_tail->next = j;
    else
        pg->q_head = j;
    pg->q_tail = j;
    pg->q_len++;
}

/* After a commit that deleted external rows: a job of our own removes
 * their files (pg_op_blob_reap). If it cannot be made, the sweep will. */
static void spawn_reap(pg_job *j)
{
    pg_job *x = calloc(1, sizeof *x);
    tern_store_req *req = calloc(1, sizeof *req);
    if (!x || !req) {
        free(x);
        free(req);
        return;
    }
    tern_arena_init(&x->a, 1024);
    tern_arena_init(&req->arena, 256);
    req->op = TERN_STORE_FETCH; /* never dispatched by op: x->reap */
    x->req = req;
    x->pg = j->pg;
    x->reap = true;
    x->queued_ms = tern_now_ms();
    x->dead = tern_arena_alloc(&x->a, (size_t)j->n_dead * sizeof *x->dead);
    if (!x->dead) {
        tern_arena_free(&x->a);
        free(req);
        free(x);
        return;
    }
    for (int i = 0; i < j->n_dead; i++)
        x->dead[i] = tern_arena_strdup(&x->a, j->dead[i]);
    x->n_dead = j->n_dead;
    q_push_back(j->pg, x);
    uv_async_send(&j->pg->wake);
}

void pg_job_result(pg_job *j, PGresult *res)
{
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (j->res)
        PQclear(j->res);
    j->res = res;
    if (j->prep_stmt && ok) {
        int stmt = j->prep_stmt - 1;
        j->prep_stmt = 0;
        j->conn->prepared |= (uint64_t)1 << stmt;
        if (j->prep_only) {
            j->prep_only = false;
            run_op(j);
            return;
        }
        PQclear(j->res);
        j->res = NULL;
        if (pg_conn_send_prepared(j->conn, stmt, j->prep_np, j->pv, j->pl, j->pf,
                                  j->prep_binary) < 0) {
            send_failed(j);
            pg_job_finish(j);
        }
        return;
    }
    j->prep_stmt = 0;
    j->prep_only = false;
    switch (j->phase) {
    case PG_PH_OP:
        if (!ok) {
            pg_map_error(j, res);
            if (j->in_tx && PQstatus(j->conn->pq) != CONNECTION_BAD) {
                j->phase = PG_PH_ROLLBACK;
                send_control(j, "ROLLBACK");
            } else {
                pg_job_finish(j);
            }
            return;
        }
        run_op(j);
        return;
    case PG_PH_NOTIFY:
        if (!ok) {
            pg_map_error(j, res);
            j->phase = PG_PH_ROLLBACK;
            send_control(j, "ROLLBACK");
            return;
        }
        j->phase = PG_PH_COMMIT;
        send_control(j, "COMMIT");
        return;
    case PG_PH_COMMIT:
        if (!ok)
            pg_map_error(j, res);
        else if (PQcmdStatus(res) && !strcmp(PQcmdStatus(res), "ROLLBACK"))
            /* COMMIT of a failed transaction answers ROLLBACK. */
            j->req->status = tern_store__fail(j->req, TERN_STORE_EIO, "transaction rolled back");
        j->in_tx = false;
        pg_job_finish(j);
        return;
    default:
        j->in_tx = false;
        pg_job_finish(j);
        return;
    }
}

/* The results of a pipeline the op queued; the op reads them from j->pipe
 * and decides. */
void pg_job_pipeline_done(pg_job *j, PGresult **res, int n)
{
    j->pipe = res;
    j->pipe_n = n;
    run_op(j);
}

static void free_pipe(pg_job *j)
{
    for (int i = 0; i < j->pipe_n; i++)
        PQclear(j->pipe[i]);
    free(j->pipe);
    j->pipe = NULL;
    j->pipe_n = 0;
}

void pg_job_abort(pg_job *j, const char *why)
{
    j->conn_lost = true;
    if (j->req->status == TERN_STORE_OK || j->phase == PG_PH_COMMIT)
        /* A lost COMMIT may or may not have committed: the caller must
         * treat it as a temporary failure and look again. */
        j->req->status = tern_store__fail(j->req, TERN_STORE_ETEMP, "database connection lost: %s", why);
    pg_job_finish(j);
}

static void q_push_front(pg_impl *pg, pg_job *j)
{
    j->next = pg->q_head;
    pg->q_head = j;
    if (!pg->q_tail)
        pg->q_tail = j;
    pg->q_len++;
}

/* A member of a failed batch goes back to the head of the queue to run
 * on its own. */
static void requeue_alone(pg_impl *pg, pg_job *m)
{
    if (m->res)
        PQclear(m->res);
    m->res = NULL;
    m->pt = 0;
    m->phase = PG_PH_OP;
    m->in_tx = false;
    m->np = 0;
    m->prep_stmt = 0;
    m->n_notes = 0;
    m->conn = NULL;
    m->no_batch = true;
    m->redo = false;
    m->req->status = TERN_STORE_OK;
    m->req->error[0] = 0;
    q_push_front(pg, m);
}

static void finish_batch(pg_job *b)
{
    pg_job **mem = b->p;
    int st = b->req->status;
    /* Back to front so that requeued members keep their order. */
    for (int64_t i = b->n - 1; i >= 0; i--) {
        pg_job *m = mem[i];
        if (st == TERN_STORE_OK && m->redo) {
            requeue_alone(b->pg, m);
            continue;
        }
        if (st != TERN_STORE_OK && m->req->status == TERN_STORE_OK) {
            if (!b->conn_lost) {
                requeue_alone(b->pg, m);
                continue;
            }
            m->req->status = tern_store__fail(m->req, st, "%s", b->req->error);
        }
        pg_job_finish(m);
    }
    if (b->res)
        PQclear(b->res);
    tern_arena_free(&b->req->arena);
    free(b->req);
    tern_arena_free(&b->a);
    free(b);
}

void pg_job_finish(pg_job *j)
{
    pg_conn *c = j->conn;
    j->conn = NULL;
    if (c) {
        c->job = NULL;
        if (c->state == PG_C_BUSY) {
            c->state = PG_C_IDLE;
            if (!c->pq || PQstatus(c->pq) == CONNECTION_BAD)
                pg_conn_broken(c, "connection lost");
        }
    }
    j->finishing = true;
    if (j->working)
        return; /* after_work_cb finishes it */
    free_pipe(j);
    if (j->n_dead && !j->reap && j->req->status == TERN_STORE_OK && j->pg->blob_dir)
        spawn_reap(j);
    if (j->reap && j->req->status != TERN_STORE_OK && j->q && j->p && !j->redo) {
        /* The check did not answer: every file taken aside goes back
         * (an unreferenced one is left to the sweep). */
        bool *alive = j->p;
        for (int i = 0; i < j->n_dead; i++)
            alive[i] = true;
        j->redo = true;
        j->finishing = true;
        if (pg_work(j, pg_blob_reap_settle_all) == PG_WAIT)
            return;
    }
    if (j->reap) {
        if (j->res)
            PQclear(j->res);
        tern_arena_free(&j->req->arena);
        free(j->req);
        tern_arena_free(&j->a);
        free(j);
        return;
    }
    if (j->batch) {
        finish_batch(j);
        return;
    }
    if (j->res)
        PQclear(j->res);
    free(j->owned_data);
    tern_arena_free(&j->a);
    tern_store_req *req = j->req;
    free(j);
    tern_store__complete(req);
}

static pg_conn *idle_conn(pg_impl *pg)
{
    for (size_t i = 0; i < pg->n_conns; i++)
        if (pg->conns[i].state == PG_C_IDLE)
            return &pg->conns[i];
    return NULL;
}

static bool any_alive(pg_impl *pg)
{
    for (size_t i = 0; i < pg->n_conns; i++)
        if (pg->conns[i].state == PG_C_IDLE || pg->conns[i].state == PG_C_BUSY)
            return true;
    return false;
}

static pg_job *q_pop(pg_impl *pg)
{
    pg_job *j = pg->q_head;
    if (j) {
        pg->q_head = j->next;
        if (!pg->q_head)
            pg->q_tail = NULL;
        pg->q_len--;
        j->next = NULL;
    }
    return j;
}

static void fail_queued(pg_impl *pg, const char *why)
{
    pg_job *j;
    while ((j = q_pop(pg)) != NULL) {
        j->req->status = tern_store__fail(j->req, TERN_STORE_ETEMP, "%s", why);
        pg_job_finish(j);
    }
}

#define PG_SCAN_MAX 512
#define PG_BATCH_MAX 64

static bool append_busy(pg_impl *pg, const char *key)
{
    for (size_t i = 0; i < pg->n_conns; i++) {
        pg_job *x = pg->conns[i].job;
        if (x && x->acct_key && !strcmp(x->acct_key, key))
            return true;
    }
    return false;
}

static void q_unlink(pg_impl *pg, pg_job *prev, pg_job *j)
{
    if (prev)
        prev->next = j->next;
    else
        pg->q_head = j->next;
    if (pg->q_tail == j)
        pg->q_tail = prev;
    pg->q_len--;
    j->next = NULL;
}

/* Appends to one account wait while one of its appends is running, and
 * those that queued up meanwhile then go together in one transaction:
 * in-process contention on the account's row lock turns into group
 * commit. */
static pg_job *gather(pg_impl *pg, pg_job *first)
{
    pg_job *found[PG_BATCH_MAX];
    int n = 0;
    pg_job *prev = NULL, *x = pg->q_head;
    for (int scanned = 0; x && scanned < PG_SCAN_MAX && n < PG_BATCH_MAX - 1; scanned++) {
        pg_job *next = x->next;
        if (x->acct_key && !x->no_batch && !strcmp(x->acct_key, first->acct_key)) {
            q_unlink(pg, prev, x);
            found[n++] = x;
        } else {
            prev = x;
        }
        x = next;
    }
    /* A lone append goes as a batch of one too: the batch's transaction
     * plans its statement once per connection (see pg_op_append_batch),
     * where the autocommit statement was planned at every call. */
    pg_job *b = calloc(1, sizeof *b);
    tern_store_req *req = calloc(1, sizeof *req);
    if (!b || !req) {
        free(b);
        free(req);
        for (int i = n - 1; i >= 0; i--)
            q_push_front(pg, found[i]);
        return first;
    }
    tern_arena_init(&b->a, 1024);
    tern_arena_init(&req->arena, 256);
    req->op = TERN_STORE_APPEND;
    b->req = req;
    b->pg = pg;
    b->batch = true;
    b->acct_key = tern_arena_strdup(&b->a, first->acct_key);
    pg_job **mem = tern_arena_alloc(&b->a, (size_t)(n + 1) * sizeof *mem);
    mem[0] = first;
    for (int i = 0; i < n; i++)
        mem[i + 1] = found[i];
    b->p = mem;
    b->n = n + 1;
    return b;
}

static pg_job *pick(pg_impl *pg)
{
    pg_job *prev = NULL, *j = pg->q_head;
    for (int scanned = 0; j && scanned < PG_SCAN_MAX; scanned++) {
        if (!j->acct_key || !append_busy(pg, j->acct_key)) {
            q_unlink(pg, prev, j);
            if (j->acct_key && !j->no_batch)
                j = gather(pg, j);
            return j;
        }
        prev = j;
        j = j->next;
    }
    return NULL;
}

void pg_dispatch(pg_impl *pg)
{
    if (pg->dispatching)
        return;
    pg->dispatching = true;
    for (;;) {
        pg_conn *c;
        pg_job *j;
        if (!pg->q_head || (c = idle_conn(pg)) == NULL || (j = pick(pg)) == NULL)
            break;
        c->state = PG_C_BUSY;
        c->job = j;
        j->conn = c;
        pg_job_start(j);
    }
    pg->dispatching = false;
    if (pg->q_head && pg->shutting_down && !any_alive(pg))
        fail_queued(pg, "store closing and database unavailable");
    pg_maybe_shutdown(pg);
}

static void take_inbox(pg_impl *pg)
{
    uv_mutex_lock(&pg->mu);
    pg_job *in = pg->inbox_head;
    pg->inbox_head = pg->inbox_tail = NULL;
    bool closing = pg->closing;
    uv_mutex_unlock(&pg->mu);
    uint64_t now = tern_now_ms();
    while (in) {
        pg_job *j = in;
        in = in->next;
        j->next = NULL;
        j->queued_ms = now;
        if (j->req->op == TERN_STORE_APPEND && j->req->in.account)
            j->acct_key = pg_norm_account(&j->a, j->req->in.account);
        if (pg->q_len >= PG_QUEUE_LIMIT) {
            j->req->status = tern_store__fail(j->req, TERN_STORE_ETEMP, "database queue full");
            pg_job_finish(j);
            continue;
        }
        q_push_back(pg, j);
    }
    if (closing)
        pg->shutting_down = true;
}

static void on_wake(uv_async_t *h)
{
    pg_impl *pg = h->data;
    take_inbox(pg);
    pg_dispatch(pg);
}

/* Jobs do not wait forever for a pool that is down: a caller told ETEMP
 * can retry, one left hanging cannot. */
static void on_tick(uv_timer_t *t)
{
    pg_impl *pg = t->data;
    uint64_t now0 = tern_now_ms();
    /* A server that stopped answering without closing the socket (host
     * gone, network cut) would hold the job forever: past the bound the
     * connection is dropped, the job fails with ETEMP, and the pool
     * reconnects. */
    for (size_t i = 0; i < pg->n_conns; i++) {
        pg_conn *c = &pg->conns[i];
        if (c->state == PG_C_BUSY && c->job && c->job->sent_ms &&
            now0 - c->job->sent_ms > PG_RUN_MAX_MS)
            pg_conn_broken(c, "no answer from the database");
    }
    if (any_alive(pg))
        return;
    uint64_t now = tern_now_ms();
    while (pg->q_head && now - pg->q_head->queued_ms >= PG_WAIT_DOWN_MS) {
        pg_job *j = q_pop(pg);
        j->req->status = tern_store__fail(j->req, TERN_STORE_ETEMP, "database unavailable");
        pg_job_finish(j);
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    (void)h;
}

void pg_maybe_shutdown(pg_impl *pg)
{
    if (!pg->shutting_down || pg->q_head || pg->n_work || pg->sweeping)
        return;
    for (size_t i = 0; i < pg->n_conns; i++)
        if (pg->conns[i].job)
            return;
    /* Idempotent: the handles are closed once. */
    if (uv_is_closing((uv_handle_t *)&pg->wake))
        return;
    for (size_t i = 0; i < pg->n_conns; i++)
        pg_conn_close(&pg->conns[i]);
    pg_conn_close(&pg->listen);
    uv_close((uv_handle_t *)&pg->tick, on_handle_closed);
    if (pg->blob_dir)
        uv_close((uv_handle_t *)&pg->sweep_timer, on_handle_closed);
    uv_close((uv_handle_t *)&pg->wake, on_handle_closed);
}

void pg_notify_payload(pg_impl *pg, const char *payload)
{
    /* "account\tmailbox_id\tmodseq" */
    const char *t1 = strchr(payload, '\t');
    if (!t1 || t1 == payload || t1 - payload > 512)
        return;
    char *end;
    uint64_t mailbox_id = strtoull(t1 + 1, &end, 10);
    if (*end != '\t')
        return;
    uint64_t modseq = strtoull(end + 1, &end, 10);
    if (*end)
        return;
    char account[520];
    memcpy(account, payload, (size_t)(t1 - payload));
    account[t1 - payload] = 0;
    tern_store__notify(pg->store, account, mailbox_id, modseq);
}

void pg_wake_watched(pg_impl *pg)
{
    uv_mutex_lock(&pg->mu);
    size_t n = pg->n_watched;
    char **copy = n ? calloc(n, sizeof *copy) : NULL;
    for (size_t i = 0; copy && i < n; i++)
        copy[i] = strdup(pg->watched[i]);
    uv_mutex_unlock(&pg->mu);
    if (!copy)
        return;
    for (size_t i = 0; i < n; i++) {
        if (copy[i])
            tern_store__notify(pg->store, copy[i], 0, 0);
        free(copy[i]);
    }
    free(copy);
}

static void pg_watch_changed(void *impl, const char *account, bool watched)
{
    pg_impl *pg = impl;
    uv_mutex_lock(&pg->mu);
    if (watched) {
        if (pg->n_watched == pg->cap_watched) {
            size_t cap = pg->cap_watched ? pg->cap_watched * 2 : 16;
            char **v = realloc(pg->watched, cap * sizeof *v);
            if (v) {
                pg->watched = v;
                pg->cap_watched = cap;
            }
        }
        char *a = strdup(account);
        if (a && pg->n_watched < pg->cap_watched)
            pg->watched[pg->n_watched++] = a;
        else
            free(a);
    } else {
        for (size_t i = 0; i < pg->n_watched; i++) {
            if (!strcmp(pg->watched[i], account)) {
                free(pg->watched[i]);
                pg->watched[i] = pg->watched[--pg->n_watched];
                break;
            }
        }
    }
    uv_mutex_unlock(&pg->mu);
}

/* The periodic sweep of the blob directory: on the thread pool, with a
 * blocking connection of its own (pg_blob_sweep). */
static void sweep_work_cb(uv_work_t *w)
{
    pg_impl *pg = w->data;
    char *err = NULL;
    if (pg_blob_sweep(pg->blob_dir, pg->conninfo, PG_BLOB_GRACE_S, &err) < 0) {
        TLOG_WARN("store", "event=blob_sweep_failed error=\"%s\"", err ? err : "?");
        free(err);
    }
}

static void sweep_after_cb(uv_work_t *w, int status)
{
    pg_impl *pg = w->data;
    (void)status;
    pg->sweeping = false;
    pg_maybe_shutdown(pg);
}

static void on_sweep_timer(uv_timer_t *t)
{
    pg_impl *pg = t->data;
    if (pg->sweeping || pg->shutting_down)
        return;
    pg->sweep_work.data = pg;
    if (uv_queue_work(&pg->loop, &pg->sweep_work, sweep_work_cb, sweep_after_cb) == 0)
        pg->sweeping = true;
}

static void thread_main(void *arg)
{
    pg_impl *pg = arg;
    for (size_t i = 0; i < pg->n_conns; i++)
        pg_conn_start(&pg->conns[i]);
    pg_conn_start(&pg->listen);
    uv_run(&pg->loop, UV_RUN_DEFAULT);
}

/* ---- the backend table --------------------------------------------------- */

static int pg_open(const tern_config *cfg, tern_store *store, void **impl_r, char **error_r)
{
    if (!cfg->postgres.present || !cfg->postgres.conninfo) {
        *error_r = strdup("storage backend postgres needs a postgres: section with conninfo");
        return -1;
    }
    if (pg_schema_create(cfg->postgres.conninfo, error_r) < 0)
        return -1;
    const char *blob_dir = cfg->postgres.blob_dir;
    if (pg_blob_marker(cfg->postgres.conninfo, blob_dir, error_r) < 0)
        return -1;
    if (blob_dir) {
        /* Before the store takes requests: orphans of a crash between a
         * commit and its unlinks, and writes that never got their name. */
        if (pg_blob_dir_prepare(blob_dir, error_r) < 0 ||
            pg_blob_sweep(blob_dir, cfg->postgres.conninfo, PG_BLOB_GRACE_S, error_r) < 0)
            return -1;
    }
    pg_impl *pg = calloc(1, sizeof *pg);
    if (!pg) {
        *error_r = strdup("out of memory");
        return -1;
    }
    pg->blob_dir = blob_dir ? strdup(blob_dir) : NULL;
    pg->store = store;
    pg->conninfo = strdup(cfg->postgres.conninfo);
    pg->resolve_host = tern_pq_host_to_resolve(cfg->postgres.conninfo);
    pg->retention_ms = cfg->storage.changes_retention_ms;
    pg->default_quota_bytes = cfg->storage.default_quota_bytes;
    pg->default_quota_messages = cfg->storage.default_quota_messages;
    pg->n_conns = cfg->postgres.pool_size ? cfg->postgres.pool_size : 8;
    pg->conns = calloc(pg->n_conns, sizeof *pg->conns);
    if (!pg->conninfo || !pg->conns || uv_loop_init(&pg->loop) != 0) {
        free(pg->conninfo);
        free(pg->resolve_host);
        free(pg->blob_dir);
        free(pg->conns);
        free(pg);
        *error_r = strdup("out of memory");
        return -1;
    }
    uv_mutex_init(&pg->mu);
    uv_async_init(&pg->loop, &pg->wake, on_wake);
    pg->wake.data = pg;
    uv_timer_init(&pg->loop, &pg->tick);
    pg->tick.data = pg;
    uv_timer_start(&pg->tick, on_tick, 500, 500);
    if (pg->blob_dir) {
        uv_timer_init(&pg->loop, &pg->sweep_timer);
        pg->sweep_timer.data = pg;
        uv_timer_start(&pg->sweep_timer, on_sweep_timer, PG_BLOB_SWEEP_MS, PG_BLOB_SWEEP_MS);
    }
    for (size_t i = 0; i < pg->n_conns; i++)
        pg_conn_init(pg, &pg->conns[i], (int)i, false);
    pg_conn_init(pg, &pg->listen, -1, true);
    if (uv_thread_create(&pg->thread, thread_main, pg) != 0) {
        *error_r = strdup("cannot start the postgres backend thread");
        return -1;
    }
    TLOG_INFO("store", "event=pg_open pool=%zu blob_dir=%s", pg->n_conns,
              pg->blob_dir ? pg->blob_dir : "-");
    *impl_r = pg;
    return 0;
}

static void pg_close(void *impl)
{
    pg_impl *pg = impl;
    uv_mutex_lock(&pg->mu);
    pg->closing = true;
    uv_mutex_unlock(&pg->mu);
    uv_async_send(&pg->wake);
    uv_thread_join(&pg->thread);
    uv_loop_close(&pg->loop);
    uv_mutex_destroy(&pg->mu);
    for (size_t i = 0; i < pg->n_watched; i++)
        free(pg->watched[i]);
    free(pg->watched);
    free(pg->conns);
    free(pg->conninfo);
    free(pg->resolve_host);
    free(pg->blob_dir);
    free(pg);
}

static void pg_submit(void *impl, tern_store_req *req)
{
    pg_impl *pg = impl;
    pg_job *j = calloc(1, sizeof *j);
    if (!j) {
        /* Nothing to queue it with: complete it from here (store.c runs
         * callbacks on the client's loop, never inside submit). */
        req->status = tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
        tern_store__complete(req);
        return;
    }
    j->pg = pg;
    j->req = req;
    tern_arena_init(&j->a, 4096);
    uv_mutex_lock(&pg->mu);
    if (pg->inbox_tail)
        pg->inbox_tail->next = j;
    else
        pg->inbox_head = j;
    pg->inbox_tail = j;
    uv_mutex_unlock(&pg->mu);
    uv_async_send(&pg->wake);
}

const tern_store_backend tern_store_backend_pg = {
    .name = "postgres",
    .open = pg_open,
    .close = pg_close,
    .submit = pg_submit,
    .watch_changed = pg_watch_changed,
};
