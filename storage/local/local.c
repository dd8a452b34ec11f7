/* The local backend's engine: open (directories, lock, SQLite, schema,
 * reconciliation), the one backend thread that runs every request, and
 * group commit. Input trusted: requests from store.c (parameters already
 * syntax-checked by our protocol code); the mail directory and the
 * database are ours but are re-checked by reconciliation at open.
 *
 * Why one thread: SQLite serialises writers anyway, and a single owner of
 * the connection needs no locking around statements. Throughput comes from
 * batching instead: the thread takes every request queued while it was
 * busy and runs them in one transaction (one SAVEPOINT each, so one
 * failing request does not sink the others). APPENDs write their files to
 * tmp/ without fsync; before the COMMIT (or before any other request that
 * could read them) the batch's files are fsynced at once by four helper
 * threads (parallel fsyncs share journal commits: on the dev VM 330/s
 * serial against ~6,000/s four at a time), renamed into cur/, each touched
 * directory fsynced (also in parallel), then one WAL fsync
 * (synchronous=FULL) commits the whole batch.
 *
 * Durability order for a new message: file written in tmp/, fsync, rename
 * into cur/, directory fsync, then COMMIT. A crash before the COMMIT leaves
 * a file without a row, which reconciliation indexes: nothing acknowledged
 * is lost and nothing is lost silently.
 *
 * Several processes: the first opener takes an exclusive flock on
 * <path>/.tern.lock and is the only one that reconciles and cleans tmp/
 * (a second opener, e.g. ternctl beside ternd, would otherwise delete
 * files being written). Change events stay within the process. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/util.h"
#include "storage/local/local_internal.h"

#define BATCH_MAX 1024
#define PRUNE_EVERY_MS (10u * 60u * 1000u)

int64_t local_now(void)
{
    return (int64_t)time(NULL);
}

/* ---- statements and errors ------------------------------------------- */

sqlite3_stmt *local_stmt(local_store *L, const char *sql)
{
    size_t h = (size_t)(((uintptr_t)sql >> 3) * 2654435761u) % LOCAL_STMT_SLOTS;
    for (size_t i = 0; i < LOCAL_STMT_SLOTS; i++) {
        lstmt_slot *s = &L->stmts[(h + i) % LOCAL_STMT_SLOTS];
        if (s->sql == sql) {
            sqlite3_reset(s->st);
            sqlite3_clear_bindings(s->st);
            return s->st;
        }
        if (s->sql == NULL) {
            if (sqlite3_prepare_v3(L->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s->st, NULL) !=
                SQLITE_OK) {
                TLOG_ERR("store", "event=sql_prepare_failed error=\"%s\" sql=\"%.80s\"",
                         sqlite3_errmsg(L->db), sql);
                s->st = NULL;
                return NULL;
            }
            s->sql = sql;
            return s->st;
        }
    }
    TLOG_ERR("store", "event=sql_cache_full");
    return NULL;
}

int local_db_fail(local_store *L, tern_store_req *req, int rc, const char *what)
{
    int status = TERN_STORE_EIO;
    int prim = rc & 0xff;
    int err = sqlite3_system_errno(L->db);
    if (prim == SQLITE_FULL || prim == SQLITE_BUSY || prim == SQLITE_LOCKED ||
        prim == SQLITE_NOMEM || (prim == SQLITE_IOERR && (err == ENOSPC || err == EDQUOT)))
        status = TERN_STORE_ETEMP;
    TLOG_WARN("store", "event=sqlite_error what=%s rc=%d errno=%d error=\"%s\"", what, rc, err,
              sqlite3_errmsg(L->db));
    if (req == NULL)
        return status;
    return tern_store__fail(req, status, "%s: %s", what, sqlite3_errmsg(L->db));
}

int local_errno_fail(tern_store_req *req, int err, const char *what, const char *path)
{
    int status = TERN_STORE_EIO;
    if (err == ENOSPC || err == EDQUOT || err == EMFILE || err == ENFILE || err == ENOMEM ||
        err == EAGAIN)
        status = TERN_STORE_ETEMP;
    TLOG_WARN("store", "event=file_error what=%s path=\"%s\" error=\"%s\"", what,
              path ? path : "", strerror(err));
    if (req == NULL)
        return status;
    return tern_store__fail(req, status, "%s %s: %s", what, path ? path : "", strerror(err));
}

int local_step(local_store *L, tern_store_req *req, sqlite3_stmt *st)
{
    if (st == NULL)
        return req ? tern_store__fail(req, TERN_STORE_EIO, "statement unavailable")
                   : TERN_STORE_EIO;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        return 1;
    if (rc == SQLITE_DONE)
        return 0;
    int r = local_db_fail(L, req, sqlite3_extended_errcode(L->db), "step");
    sqlite3_reset(st);
    return r;
}

int local_run(local_store *L, tern_store_req *req, sqlite3_stmt *st)
{
    int r = local_step(L, req, st);
    if (r < 0)
        return r;
    sqlite3_reset(st);
    return TERN_STORE_OK;
}

int local_exec(local_store *L, tern_store_req *req, const char *sql)
{
    /* Callers pass literals (BEGIN, SAVEPOINT, COMMIT, several per batch):
     * kept prepared instead of parsed again every time. */
    sqlite3_stmt *st = local_stmt(L, sql);
    if (st != NULL)
        return local_run(L, req, st);
    char *msg = NULL;
    int rc = sqlite3_exec(L->db, sql, NULL, NULL, &msg);
    sqlite3_free(msg);
    if (rc != SQLITE_OK)
        return local_db_fail(L, req, sqlite3_extended_errcode(L->db), "exec");
    return TERN_STORE_OK;
}

char *local_col_text(tern_arena *a, sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    if (t == NULL)
        return NULL;
    return tern_arena_strndup(a, (const char *)t, (size_t)sqlite3_column_bytes(st, col));
}

static void pending_cancel(local_store *L, const char *path);

/* ---- effects ---------------------------------------------------------- */

void local_effect(local_store *L, leffect_kind kind, const char *a, const char *b)
{
    leffect *e = tern_arena_alloc(&L->batch, sizeof *e);
    if (e == NULL)
        return; /* out of memory: the effect is lost, reconciliation repairs */
    e->kind = kind;
    e->a = a ? tern_arena_strdup(&L->batch, a) : NULL;
    e->b = b ? tern_arena_strdup(&L->batch, b) : NULL;
    e->next = L->ctx->effects;
    L->ctx->effects = e;
}

void local_event(local_store *L, const char *account, uint64_t mailbox_id, uint64_t modseq)
{
    for (lnotify *n = L->ctx->events; n; n = n->next)
        if (n->mailbox_id == mailbox_id && strcmp(n->account, account) == 0) {
            if (modseq > n->modseq)
                n->modseq = modseq;
            return;
        }
    lnotify *n = tern_arena_alloc(&L->batch, sizeof *n);
    if (n == NULL)
        return;
    n->account = tern_arena_strdup(&L->batch, account);
    n->mailbox_id = mailbox_id;
    n->modseq = modseq;
    n->next = L->ctx->events;
    L->ctx->events = n;
}

void local_sync_dir(local_store *L, const char *dir)
{
    for (size_t i = 0; i < L->n_sync_dirs; i++)
        if (strcmp(L->sync_dirs[i], dir) == 0)
            return;
    if (L->n_sync_dirs == L->cap_sync_dirs) {
        size_t cap = L->cap_sync_dirs ? L->cap_sync_dirs * 2 : 16;
        char **n = tern_arena_alloc(&L->batch, cap * sizeof *n);
        if (n == NULL)
            return;
        if (L->n_sync_dirs)
            memcpy(n, L->sync_dirs, L->n_sync_dirs * sizeof *n);
        L->sync_dirs = n;
        L->cap_sync_dirs = cap;
    }
    L->sync_dirs[L->n_sync_dirs++] = tern_arena_strdup(&L->batch, dir);
}

static void undo_effects(local_store *L, lctx *c)
{
    for (leffect *e = c->effects; e; e = e->next) {
        switch (e->kind) {
        case LEFF_UNDO_UNLINK:
            pending_cancel(L, e->a);
            if (unlink(e->a) != 0 && errno != ENOENT)
                TLOG_WARN("store", "event=undo_failed op=unlink path=\"%s\" error=\"%s\"", e->a,
                          strerror(errno));
            break;
        case LEFF_UNDO_RENAME:
            if (rename(e->b, e->a) != 0)
                TLOG_WARN("store", "event=undo_failed op=rename from=\"%s\" to=\"%s\" error=\"%s\"",
                          e->b, e->a, strerror(errno));
            break;
        case LEFF_UNDO_RMDIR:
            local_rmtree(e->a);
            break;
        default:
            break;
        }
    }
    c->effects = NULL;
    c->events = NULL;
}

static void post_effects(local_store *L, lctx *c)
{
    /* Unlinks were queued newest first; order does not matter here. */
    for (leffect *e = c->effects; e; e = e->next) {
        if (e->kind == LEFF_POST_UNLINK) {
            if (unlink(e->a) != 0 && errno != ENOENT)
                TLOG_WARN("store", "event=unlink_failed path=\"%s\" error=\"%s\"", e->a,
                          strerror(errno));
            L->unlink_pending = true;
        } else if (e->kind == LEFF_POST_RMTREE) {
            local_rmtree(e->a);
        }
    }
}

/* ---- pending files and the fsync helpers ------------------------------ */

static void sync_some(local_store *L)
{
    for (;;) {
        pthread_mutex_lock(&L->sync_mu);
        if (L->sync_next >= L->sync_n) {
            pthread_mutex_unlock(&L->sync_mu);
            return;
        }
        size_t i = L->sync_next++;
        pthread_mutex_unlock(&L->sync_mu);
        int err = 0;
        if (L->sync_fds[i] >= 0 && fdatasync(L->sync_fds[i]) != 0)
            err = errno;
        pthread_mutex_lock(&L->sync_mu);
        L->sync_errs[i] = err;
        if (++L->sync_finished == L->sync_n)
            pthread_cond_signal(&L->sync_done);
        pthread_mutex_unlock(&L->sync_mu);
    }
}

static void *sync_main(void *arg)
{
    local_store *L = arg;
    uint64_t seen = 0;
    for (;;) {
        pthread_mutex_lock(&L->sync_mu);
        while (L->sync_gen == seen && !L->sync_stop)
            pthread_cond_wait(&L->sync_work, &L->sync_mu);
        if (L->sync_stop) {
            pthread_mutex_unlock(&L->sync_mu);
            return NULL;
        }
        seen = L->sync_gen;
        pthread_mutex_unlock(&L->sync_mu);
        sync_some(L);
    }
}

/* Hands fds[0..n) to the helpers (fd -1 is skipped); sync_wait() waits
 * for them. Split so the caller can do other durable work in between. */
static void sync_start(local_store *L, int *fds, int *errs, size_t n, bool caller_helps)
{
    pthread_mutex_lock(&L->sync_mu);
    L->sync_fds = fds;
    L->sync_errs = errs;
    L->sync_n = n;
    L->sync_next = 0;
    L->sync_finished = 0;
    L->sync_gen++;
    /* As many helpers as there are fsyncs (beyond the caller's own when it
     * helps at once): one directory should not wake every helper. */
    size_t wake = caller_helps && n > 0 ? n - 1 : n;
    if (wake > L->n_sync_th)
        wake = L->n_sync_th;
    for (size_t i = 0; i < wake; i++)
        pthread_cond_signal(&L->sync_work);
    pthread_mutex_unlock(&L->sync_mu);
}

/* Takes its share of the job (all of it without helpers), then waits. */
static void sync_wait(local_store *L)
{
    sync_some(L);
    pthread_mutex_lock(&L->sync_mu);
    while (L->sync_finished < L->sync_n)
        pthread_cond_wait(&L->sync_done, &L->sync_mu);
    L->sync_n = 0;
    pthread_mutex_unlock(&L->sync_mu);
}

/* fsyncs fds[0..n) on the helpers and this thread; fd -1 is skipped. */
static void sync_all(local_store *L, int *fds, int *errs, size_t n)
{
    if (n == 0)
        return;
    sync_start(L, fds, errs, n, true);
    sync_wait(L);
}

int local_pending_flush(local_store *L)
{
    if (L->n_pending == 0)
        return 0;
    int fds[LOCAL_PENDING_MAX], errs[LOCAL_PENDING_MAX];
    for (size_t i = 0; i < L->n_pending; i++)
        fds[i] = L->pending[i].cancelled ? -1 : L->pending[i].fd;
    sync_all(L, fds, errs, L->n_pending);
    int err = 0;
    for (size_t i = 0; i < L->n_pending; i++) {
        lpending *p = &L->pending[i];
        p->err = errs[i];
        if (!p->cancelled && err == 0 && p->err == 0) {
            if (rename(p->tmp, p->final) != 0)
                p->err = errno;
            else
                local_sync_dir(L, p->cur_dir);
        }
        if (!p->cancelled && p->err != 0 && err == 0) {
            err = p->err;
            TLOG_ERR("store", "event=message_sync_failed path=\"%s\" error=\"%s\"", p->tmp,
                     strerror(err));
        }
        close(p->fd);
    }
    L->n_pending = 0;
    if (err != 0 && L->broken_err == 0)
        L->broken_err = err;
    return err;
}

/* The fsyncs of the directories queued for this group, in parallel on
 * the helpers: dirs_begin() opens them and hands them out, dirs_end()
 * waits (helping) and closes. The COMMIT may run in between. */
typedef struct ldirjob {
    size_t n;
    int *fds, *errs, *open_errs;
    int err;                /* set before any fsync: ENOMEM */
} ldirjob;

static void dirs_begin(local_store *L, ldirjob *j)
{
    memset(j, 0, sizeof *j);
    size_t n = L->n_sync_dirs;
    if (n == 0)
        return;
    j->fds = tern_arena_alloc(&L->batch, n * sizeof *j->fds);
    j->errs = tern_arena_alloc(&L->batch, n * sizeof *j->errs);
    j->open_errs = tern_arena_alloc(&L->batch, n * sizeof *j->open_errs);
    if (j->fds == NULL || j->errs == NULL || j->open_errs == NULL) {
        j->err = ENOMEM;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        j->fds[i] = open(L->sync_dirs[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        j->open_errs[i] = j->fds[i] < 0 ? errno : 0;
        j->errs[i] = 0;
    }
    j->n = n;
    sync_start(L, j->fds, j->errs, n, false);
}

/* Returns 0 or an errno with the failing directory in *which_r. */
static int dirs_end(local_store *L, ldirjob *j, const char **which_r)
{
    if (j->err != 0) {
        *which_r = "directories";
        return j->err;
    }
    if (j->n == 0)
        return 0;
    sync_wait(L);
    int rc = 0;
    for (size_t i = 0; i < j->n; i++) {
        int e = j->fds[i] < 0 ? j->open_errs[i] : j->errs[i];
        if (j->fds[i] >= 0)
            close(j->fds[i]);
        /* A directory removed in this group (a rolled-back create) is
         * not an error. */
        if (e != 0 && e != ENOENT && rc == 0) {
            rc = e;
            *which_r = L->sync_dirs[i];
        }
    }
    j->n = 0;
    return rc;
}

int local_pending_add(local_store *L, int fd, const char *tmp, const char *final,
                      const char *cur_dir)
{
    if (L->n_pending == LOCAL_PENDING_MAX) {
        int err = local_pending_flush(L);
        if (err != 0) {
            close(fd);
            unlink(tmp);
            errno = err;
            return -1;
        }
    }
    lpending *p = &L->pending[L->n_pending++];
    p->fd = fd;
    p->err = 0;
    p->cancelled = false;
    p->tmp = tern_arena_strdup(&L->batch, tmp);
    p->final = tern_arena_strdup(&L->batch, final);
    p->cur_dir = tern_arena_strdup(&L->batch, cur_dir);
    if (p->tmp == NULL || p->final == NULL || p->cur_dir == NULL) {
        L->n_pending--;
        close(fd);
        unlink(tmp);
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

static void pending_cancel(local_store *L, const char *path)
{
    for (size_t i = 0; i < L->n_pending; i++)
        if (strcmp(L->pending[i].tmp, path) == 0)
            L->pending[i].cancelled = true;
}

/* ---- the thread ---------------------------------------------------------- */

/* Ops that move or remove directories run in a batch of their own, so that
 * paths recorded by earlier requests (unlinks after commit) stay valid. */
static bool is_structural(tern_store_op op)
{
    return op == TERN_STORE_MAILBOX_RENAME || op == TERN_STORE_MAILBOX_DELETE ||
           op == TERN_STORE_ACCOUNT_DELETE;
}

static int dispatch(local_store *L, tern_store_req *req)
{
    switch (req->op) {
    case TERN_STORE_DOMAIN_ADD: case TERN_STORE_DOMAIN_REMOVE: case TERN_STORE_DOMAIN_LIST:
    case TERN_STORE_ACCOUNT_CREATE: case TERN_STORE_ACCOUNT_DELETE: case TERN_STORE_ACCOUNT_GET:
    case TERN_STORE_ACCOUNT_LIST: case TERN_STORE_ACCOUNT_SET_PASSWORD:
    case TERN_STORE_ACCOUNT_SET_QUOTA: case TERN_STORE_ALIAS_ADD: case TERN_STORE_ALIAS_REMOVE:
    case TERN_STORE_ALIAS_LIST: case TERN_STORE_RCPT_LOOKUP:
        return local_op_directory(L, req);
    case TERN_STORE_MAILBOX_CREATE: case TERN_STORE_MAILBOX_RENAME:
    case TERN_STORE_MAILBOX_DELETE: case TERN_STORE_MAILBOX_LIST:
    case TERN_STORE_MAILBOX_STATUS: case TERN_STORE_MAILBOX_SUBSCRIBE:
    case TERN_STORE_MAILBOX_SET_SPECIAL:
        return local_op_mailbox(L, req);
    case TERN_STORE_SEARCH:
        return local_op_search(L, req);
    case TERN_STORE_APPEND: case TERN_STORE_FETCH: case TERN_STORE_FETCH_BODY:
    case TERN_STORE_SET_FLAGS: case TERN_STORE_COPY: case TERN_STORE_MOVE:
    case TERN_STORE_EXPUNGE: case TERN_STORE_CHANGES: case TERN_STORE_QUOTA_GET:
    case TERN_STORE_RECENT_CLAIM: case TERN_STORE_MAILBOX_KEYWORDS:
        return local_op_message(L, req);
    case TERN_STORE_FETCH_HEADERS: case TERN_STORE_FETCH_INDEX:
        return local_op_headers(L, req);
    default:
        return tern_store__fail(req, TERN_STORE_EINVAL, "unknown operation %d", (int)req->op);
    }
}

static void reset_statements(local_store *L)
{
    for (sqlite3_stmt *st = sqlite3_next_stmt(L->db, NULL); st; st = sqlite3_next_stmt(L->db, st))
        if (sqlite3_stmt_busy(st))
            sqlite3_reset(st);
}

static void fail_group(local_store *L, tern_store_req **reqs, lctx *ctxs, size_t n, int status,
                       const char *why)
{
    for (size_t i = 0; i < n; i++) {
        if (reqs[i]->status == TERN_STORE_OK)
            tern_store__fail(reqs[i], status, "%s", why);
        undo_effects(L, &ctxs[i]);
    }
}

/* Runs reqs[0..n) in one transaction; completes none of them. */
static void pending_discard(local_store *L)
{
    for (size_t i = 0; i < L->n_pending; i++) {
        close(L->pending[i].fd);
        unlink(L->pending[i].tmp);
    }
    L->n_pending = 0;
}

/* Whether the group's COMMIT may run while its directories are fsynced
 * (one flush round trip instead of two, in series, per batch), rather than
 * after. Only when every file change of the group is a new name in a
 * cur/ (APPEND, COPY; the file itself is already fsynced): after a crash
 * with the row durable and the entry not, reconciliation drops the row;
 * with the entry durable and the row not, it indexes the file. Either way
 * nothing reported done is lost, as with strict order (whose crash window
 * between the two also leaves an indexed file). Renames (flags, mailbox
 * rename, delete) and new folders keep strict order: a row naming a path
 * that a crash undid is not something reconciliation is written for. */
static bool commit_may_overlap(tern_store_req **reqs, lctx *ctxs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        switch (reqs[i]->op) {
        case TERN_STORE_APPEND: case TERN_STORE_COPY: case TERN_STORE_FETCH:
        case TERN_STORE_FETCH_BODY: case TERN_STORE_SEARCH: case TERN_STORE_CHANGES:
        case TERN_STORE_QUOTA_GET: case TERN_STORE_MAILBOX_LIST: case TERN_STORE_MAILBOX_STATUS:
        case TERN_STORE_RCPT_LOOKUP: case TERN_STORE_ACCOUNT_GET: case TERN_STORE_ACCOUNT_LIST:
        case TERN_STORE_DOMAIN_LIST: case TERN_STORE_ALIAS_LIST:
        case TERN_STORE_FETCH_HEADERS: case TERN_STORE_FETCH_INDEX:
            break;
        default:
            return false;
        }
        for (leffect *e = ctxs[i].effects; e; e = e->next)
            if (e->kind != LEFF_UNDO_UNLINK)
                return false;
    }
    return true;
}

static void run_group(local_store *L, tern_store_req **reqs, lctx *ctxs, size_t n)
{
    L->n_sync_dirs = 0;
    L->broken_err = 0;
    if (local_exec(L, NULL, "BEGIN IMMEDIATE") != TERN_STORE_OK) {
        int st = local_db_fail(L, NULL, sqlite3_extended_errcode(L->db), "begin");
        for (size_t i = 0; i < n; i++)
            tern_store__fail(reqs[i], st, "begin: %s", sqlite3_errmsg(L->db));
        return;
    }
    if (L->unlink_pending) {
        if (local_exec(L, NULL, "DELETE FROM pending_unlink") == TERN_STORE_OK)
            L->unlink_pending = false;
    }
    if (L->retention_ms && tern_now_ms() - L->last_prune_ms > PRUNE_EVERY_MS) {
        L->last_prune_ms = tern_now_ms();
        local_exec(L, NULL, "SAVEPOINT prune");
        if (local_prune_expunged(L, NULL) != TERN_STORE_OK)
            local_exec(L, NULL, "ROLLBACK TO prune");
        local_exec(L, NULL, "RELEASE prune");
    }
    for (size_t i = 0; i < n; i++) {
        tern_store_req *req = reqs[i];
        L->ctx = &ctxs[i];
        /* Only APPENDs leave files in tmp/; anything else may read them. */
        if (req->op != TERN_STORE_APPEND && L->n_pending)
            local_pending_flush(L);
        if (L->broken_err)
            break;
        if (local_exec(L, req, "SAVEPOINT r") != TERN_STORE_OK)
            continue;
        req->status = TERN_STORE_OK;
        int st = dispatch(L, req);
        reset_statements(L);
        if (st != TERN_STORE_OK) {
            if (req->status == TERN_STORE_OK)
                req->status = st;
            undo_effects(L, &ctxs[i]);
            if (sqlite3_get_autocommit(L->db)) {
                /* SQLite rolled the whole transaction back (disk full, I/O
                 * error): every earlier request of the group is undone. */
                fail_group(L, reqs, ctxs, i, req->status, req->error);
                for (size_t j = i + 1; j < n; j++)
                    tern_store__fail(reqs[j], req->status, "%s", req->error);
                pending_discard(L);
                return;
            }
            local_exec(L, NULL, "ROLLBACK TO r");
        }
        local_exec(L, NULL, "RELEASE r");
    }
    L->ctx = NULL;
    if (L->broken_err == 0)
        local_pending_flush(L);
    if (L->broken_err != 0) {
        int err = L->broken_err;
        local_exec(L, NULL, "ROLLBACK");
        char why[200];
        snprintf(why, sizeof why, "writing a message: %s", strerror(err));
        fail_group(L, reqs, ctxs, n, local_errno_fail(NULL, err, "fsync", "batch"), why);
        pending_discard(L);
        return;
    }
    const char *which = NULL;
    ldirjob dj;
    dirs_begin(L, &dj);
    if (!commit_may_overlap(reqs, ctxs, n)) {
        int derr = dirs_end(L, &dj, &which);
        if (derr != 0) {
            local_exec(L, NULL, "ROLLBACK");
            char why[200];
            snprintf(why, sizeof why, "fsync %s: %s", which, strerror(derr));
            fail_group(L, reqs, ctxs, n, local_errno_fail(NULL, derr, "fsync", which), why);
            return;
        }
    }
    /* Overlapped or not, the directories are durable (or known not to be)
     * before any request of the group is reported done. */
    if (local_exec(L, NULL, "COMMIT") != TERN_STORE_OK) {
        int st = local_db_fail(L, NULL, sqlite3_extended_errcode(L->db), "commit");
        char why[200];
        snprintf(why, sizeof why, "commit: %s", sqlite3_errmsg(L->db));
        if (!sqlite3_get_autocommit(L->db))
            local_exec(L, NULL, "ROLLBACK");
        dirs_end(L, &dj, &which);
        fail_group(L, reqs, ctxs, n, st, why);
        return;
    }
    int derr = dirs_end(L, &dj, &which);
    if (derr != 0) {
        /* Committed, but a new file's directory entry may not be on disk:
         * not reported done, so the caller retries (a second copy after a
         * crash is possible; a loss of an acknowledged message is not).
         * The rows stay: the files are there until the next crash, and
         * reconciliation drops a row whose file is gone. */
        char why[200];
        snprintf(why, sizeof why, "fsync %s: %s", which, strerror(derr));
        int st = local_errno_fail(NULL, derr, "fsync", which);
        TLOG_ERR("store", "event=dir_sync_failed_after_commit dir=\"%s\" error=\"%s\"", which,
                 strerror(derr));
        for (size_t i = 0; i < n; i++)
            if (reqs[i]->status == TERN_STORE_OK)
                tern_store__fail(reqs[i], st, "%s", why);
    }
    for (size_t i = 0; i < n; i++) {
        if (reqs[i]->status != TERN_STORE_OK)
            continue;
        post_effects(L, &ctxs[i]);
        for (lnotify *e = ctxs[i].events; e; e = e->next)
            tern_store__notify(L->store, e->account, e->mailbox_id, e->modseq);
    }
}

static void run_batch(local_store *L, tern_store_req **reqs, size_t n)
{
    tern_arena_reset(&L->batch);
    L->sync_dirs = NULL;
    L->cap_sync_dirs = 0;
    lctx *ctxs = tern_arena_alloc(&L->batch, n * sizeof *ctxs);
    if (ctxs == NULL) {
        for (size_t i = 0; i < n; i++) {
            tern_store__fail(reqs[i], TERN_STORE_ETEMP, "out of memory");
            tern_store__complete(reqs[i]);
        }
        return;
    }
    size_t i = 0;
    while (i < n) {
        size_t j = i + 1;
        if (!is_structural(reqs[i]->op))
            while (j < n && !is_structural(reqs[j]->op))
                j++;
        run_group(L, reqs + i, ctxs + i, j - i);
        for (size_t k = i; k < j; k++)
            tern_store__complete(reqs[k]);
        i = j;
    }
}

/* The reader's batch: every lookup queued while it was busy, in one read
 * transaction (one snapshot, one WAL lock), completed together. */
static int dispatch_read(local_store *R, tern_store_req *req)
{
    switch (req->op) {
    case TERN_STORE_FETCH: case TERN_STORE_FETCH_BODY:
        return local_op_message(R, req);
    case TERN_STORE_SEARCH:
        return local_op_search(R, req);
    case TERN_STORE_FETCH_HEADERS: case TERN_STORE_FETCH_INDEX:
        return local_op_headers(R, req);
    default:
        return local_op_directory(R, req);
    }
}

static void run_reads(local_store *R, tern_store_req **reqs, size_t n)
{
    /* Paths and scratch of the message reads live here until the batch is done. */
    tern_arena_reset(&R->batch);
    bool txn = local_exec(R, NULL, "BEGIN") == TERN_STORE_OK;
    for (size_t i = 0; i < n; i++) {
        tern_store_req *req = reqs[i];
        req->status = TERN_STORE_OK;
        int st = dispatch_read(R, req);
        reset_statements(R);
        if (st != TERN_STORE_OK && req->status == TERN_STORE_OK)
            req->status = st;
    }
    if (txn && !sqlite3_get_autocommit(R->db))
        local_exec(R, NULL, "COMMIT");
    for (size_t i = 0; i < n; i++)
        tern_store__complete(reqs[i]);
}

static void *thread_main(void *arg)
{
    local_store *L = arg;
    tern_store_req **batch = malloc(BATCH_MAX * sizeof *batch);
    if (batch == NULL)
        abort();
    for (;;) {
        pthread_mutex_lock(&L->mu);
        while (L->n_queue == 0 && !L->stopping)
            pthread_cond_wait(&L->cv, &L->mu);
        if (L->n_queue == 0 && L->stopping) {
            pthread_mutex_unlock(&L->mu);
            break;
        }
        size_t n = L->n_queue < BATCH_MAX ? L->n_queue : BATCH_MAX;
        memcpy(batch, L->queue, n * sizeof *batch);
        memmove(L->queue, L->queue + n, (L->n_queue - n) * sizeof *L->queue);
        L->n_queue -= n;
        pthread_mutex_unlock(&L->mu);
        if (L->is_reader)
            run_reads(L, batch, n);
        else
            run_batch(L, batch, n);
    }
    free(batch);
    return NULL;
}

/* ---- the backend table --------------------------------------------------- */

static int mkdir_p(const char *path)
{
    char buf[4096];
    size_t len = strlen(path);
    if (len >= sizeof buf)
        return -1;
    memcpy(buf, path, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char c = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0700) != 0 && errno != EEXIST)
                return -1;
            buf[i] = c;
        }
    }
    return 0;
}

static void local_free(local_store *L)
{
    pthread_mutex_lock(&L->sync_mu);
    L->sync_stop = true;
    pthread_cond_broadcast(&L->sync_work);
    pthread_mutex_unlock(&L->sync_mu);
    for (size_t i = 0; i < L->n_sync_th; i++)
        pthread_join(L->sync_th[i], NULL);
    pthread_mutex_destroy(&L->sync_mu);
    pthread_cond_destroy(&L->sync_work);
    pthread_cond_destroy(&L->sync_done);
    for (size_t i = 0; i < LOCAL_STMT_SLOTS; i++)
        if (L->stmts[i].st)
            sqlite3_finalize(L->stmts[i].st);
    local_search_cache_free(L);
    if (L->db)
        sqlite3_close(L->db);
    if (L->lock_fd >= 0)
        close(L->lock_fd);
    for (size_t i = 0; i < LOCAL_SHARED_MAX; i++) {
        free(L->shared[i].src);
        free(L->shared[i].stored);
    }
    tern_arena_free(&L->batch);
    free(L->queue);
    free(L->root);
    free(L->db_path);
    pthread_mutex_destroy(&L->mu);
    pthread_cond_destroy(&L->cv);
    free(L);
}

static int open_fail(local_store *L, char **error_r, const char *what, const char *arg)
{
    if (error_r) {
        size_t n = strlen(what) + strlen(arg) + 1;
        if ((*error_r = malloc(n)) != NULL) {
            memcpy(*error_r, what, strlen(what));
            memcpy(*error_r + strlen(what), arg, strlen(arg) + 1);
        }
    }
    local_free(L);
    return -1;
}

static void local_close(void *impl);

/* Ops the reader answers: read-only, and nothing a caller could expect to
 * see its own not yet completed write in (a caller that waited for the
 * completion of a write sees it: the write was committed first). */
static bool reader_op(tern_store_op op)
{
    /* The message reads too (FETCH, bodies, headers, SEARCH): they need not
     * wait behind a batch's fsyncs, and run next to the writer. A caller
     * (an IMAP command) waits for its write to complete before it reads,
     * and a write completes only after its COMMIT. */
    return op == TERN_STORE_RCPT_LOOKUP || op == TERN_STORE_FETCH ||
           op == TERN_STORE_FETCH_BODY || op == TERN_STORE_SEARCH ||
           op == TERN_STORE_FETCH_HEADERS || op == TERN_STORE_FETCH_INDEX;
}

/* Opens the reader's connection and starts its thread; NULL (logged) when
 * it cannot, and the writer thread keeps answering lookups. */
static local_store *reader_open(local_store *L)
{
    local_store *R = calloc(1, sizeof *R);
    if (R == NULL)
        return NULL;
    R->lock_fd = -1;
    R->is_reader = true;
    pthread_mutex_init(&R->mu, NULL);
    pthread_cond_init(&R->cv, NULL);
    pthread_mutex_init(&R->sync_mu, NULL);
    pthread_cond_init(&R->sync_work, NULL);
    pthread_cond_init(&R->sync_done, NULL);
    tern_arena_init(&R->batch, 4096);
    R->store = L->store;
    R->root = strdup(L->root);
    R->db_path = strdup(L->db_path);
    const char *why = "out of memory";
    if (R->root == NULL || R->db_path == NULL)
        goto fail;
    why = "open";
    /* Read-write open (a read-only connection to a WAL database cannot
     * always map the -shm file), query_only so it never writes. */
    if (sqlite3_open_v2(R->db_path, &R->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK)
        goto fail;
    sqlite3_busy_timeout(R->db, 5000);
    why = "pragmas";
    if (sqlite3_exec(R->db, "PRAGMA query_only=1; PRAGMA temp_store=MEMORY;", NULL, NULL, NULL) !=
        SQLITE_OK)
        goto fail;
    why = "thread";
    if (pthread_create(&R->thread, NULL, thread_main, R) != 0)
        goto fail;
    R->started = true;
    return R;
fail:
    TLOG_WARN("store", "event=reader_unavailable step=%s error=\"%s\" note=\"lookups run on the "
              "writer thread\"", why, R->db ? sqlite3_errmsg(R->db) : "");
    local_free(R);
    return NULL;
}

static int local_open(const tern_config *cfg, tern_store *store, void **impl_r, char **error_r)
{
    local_store *L = calloc(1, sizeof *L);
    if (L == NULL) {
        if (error_r)
            *error_r = strdup("out of memory");
        return -1;
    }
    L->lock_fd = -1;
    pthread_mutex_init(&L->mu, NULL);
    pthread_cond_init(&L->cv, NULL);
    pthread_mutex_init(&L->sync_mu, NULL);
    pthread_cond_init(&L->sync_work, NULL);
    pthread_cond_init(&L->sync_done, NULL);
    tern_arena_init(&L->batch, 64 * 1024);
    L->store = store;
    L->retention_ms = cfg->storage.changes_retention_ms;
    L->default_quota_bytes = cfg->storage.default_quota_bytes;
    L->default_quota_messages = cfg->storage.default_quota_messages;
    const char *path = cfg->local.path;
    if (path == NULL || path[0] != '/')
        return open_fail(L, error_r, "local.path must be an absolute path: ",
                         path ? path : "unset");
    L->root = strdup(path);
    size_t rl = strlen(L->root);
    while (rl > 1 && L->root[rl - 1] == '/')
        L->root[--rl] = '\0';
    char host[256];
    if (gethostname(host, sizeof host) != 0)
        strcpy(host, "localhost");
    host[sizeof host - 1] = '\0';
    local_sanitize_hostname(host, L->hostname, sizeof L->hostname);

    if (mkdir_p(L->root) != 0)
        return open_fail(L, error_r, "cannot create ", L->root);
    char lock_path[4200];
    snprintf(lock_path, sizeof lock_path, "%s/.tern.lock", L->root);
    L->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (L->lock_fd < 0)
        return open_fail(L, error_r, "cannot open ", lock_path);
    L->owner = flock(L->lock_fd, LOCK_EX | LOCK_NB) == 0;

    size_t dl = strlen(L->root) + 32;
    L->db_path = malloc(dl);
    snprintf(L->db_path, dl, "%s/.tern.sqlite", L->root);
    if (sqlite3_open_v2(L->db_path, &L->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK)
        return open_fail(L, error_r, "cannot open database ", L->db_path);
    sqlite3_busy_timeout(L->db, 5000);
    if (local_schema_create(L, error_r) != 0) {
        local_free(L);
        return -1;
    }
    if (L->owner) {
        if (local_reconcile(L, error_r) != 0) {
            local_free(L);
            return -1;
        }
    } else {
        TLOG_INFO("store", "event=store_shared path=\"%s\" note=\"another process holds the "
                  "lock; no reconciliation\"", L->root);
    }
    L->last_prune_ms = 0;
    for (size_t i = 0; i < LOCAL_SYNC_THREADS; i++) {
        if (pthread_create(&L->sync_th[i], NULL, sync_main, L) != 0)
            break;
        L->n_sync_th++;
    }
    if (pthread_create(&L->thread, NULL, thread_main, L) != 0)
        return open_fail(L, error_r, "cannot start the store thread", "");
    L->started = true;
    L->reader = reader_open(L);
    TLOG_INFO("store", "event=store_open backend=local path=\"%s\" owner=%d", L->root, L->owner);
    *impl_r = L;
    return 0;
}

static void local_close(void *impl)
{
    local_store *L = impl;
    if (L == NULL)
        return;
    /* The reader first: the lookups it still holds complete before the
     * connection they need goes away. */
    if (L->reader)
        local_close(L->reader);
    L->reader = NULL;
    pthread_mutex_lock(&L->mu);
    L->stopping = true;
    pthread_cond_signal(&L->cv);
    pthread_mutex_unlock(&L->mu);
    if (L->started)
        pthread_join(L->thread, NULL);
    local_free(L);
}

static void local_submit(void *impl, tern_store_req *req)
{
    local_store *L = impl;
    if (L->reader && reader_op(req->op)) {
        local_submit(L->reader, req);
        return;
    }
    pthread_mutex_lock(&L->mu);
    if (L->n_queue == L->cap_queue) {
        size_t cap = L->cap_queue ? L->cap_queue * 2 : 64;
        tern_store_req **q = realloc(L->queue, cap * sizeof *q);
        if (q == NULL) {
            pthread_mutex_unlock(&L->mu);
            /* Cannot queue: fail it through the normal completion path,
             * which runs the callback on the client's loop later. */
            tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
            tern_store__complete(req);
            return;
        }
        L->queue = q;
        L->cap_queue = cap;
    }
    L->queue[L->n_queue++] = req;
    pthread_cond_signal(&L->cv);
    pthread_mutex_unlock(&L->mu);
}

const tern_store_backend tern_store_backend_local = {
    .name = "local",
    .open = local_open,
    .close = local_close,
    .submit = local_submit,
    .watch_changed = NULL,
};
