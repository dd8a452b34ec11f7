/* Internals of the PostgreSQL backend, shared by the files of storage/pg/.
 *
 * One backend thread runs its own uv loop. It owns a pool of libpq
 * connections (non-blocking, driven by uv_poll on PQsocket) plus one
 * connection that only LISTENs for change events. A request becomes a job;
 * a job runs on one connection as a small state machine written as a
 * protothread (PG_BEGIN/PG_QUERY/PG_END below): each PG_QUERY sends one
 * statement and returns to the loop, and the op function is re-entered at
 * the same point when the result has arrived. Locals do not survive a
 * PG_QUERY, so every value an op needs later lives in the job.
 *
 * Input trusted: requests come from our own code (store.h says what was
 * checked); message bytes and header values are untrusted and only ever
 * travel as bound parameters. */
#ifndef TERN_STORE_PG_INTERNAL_H
#define TERN_STORE_PG_INTERNAL_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "lib/arena.h"
#include "storage/pg/pq_connect.h"
#include "storage/store_backend.h"

#define PG_MAX_PARAMS 4096        /* a search tree past this is refused */
#define PG_QUEUE_LIMIT 10000      /* queued jobs past this fail with ETEMP */
#define PG_WAIT_DOWN_MS 5000      /* a job waits this long for a dead pool */
#define PG_RUN_MAX_MS 120000      /* a statement silent this long: the link is dead */
#define PG_BACKOFF_MIN_MS 100
#define PG_BACKOFF_MAX_MS 5000
#define PG_FETCH_BODY_MAX (1024 * 1024)
#define PG_CHANNEL "tern_store"
#define PG_BLOB_PATH_MAX 4096
#define PG_BLOB_GRACE_S 3600          /* an unreferenced blob younger than this is kept */
#define PG_BLOB_SWEEP_MS (6 * 3600 * 1000) /* the periodic sweep of the blob directory */

typedef struct pg_impl pg_impl;
enum { PG_AUTO_FIRST = 16, PG_AUTO_MAX = 48, PG_AUTO_SEEN = 256 };

typedef struct pg_conn pg_conn;
typedef struct pg_job pg_job;
typedef void (*pg_work_fn)(pg_job *j);

/* What an op function returns. */
enum { PG_WAIT = 0, PG_DONE = 1 };

enum { PG_PH_OP = 0, PG_PH_NOTIFY, PG_PH_COMMIT, PG_PH_ROLLBACK };

struct pg_job {
    pg_job *next;
    pg_impl *pg;
    tern_store_req *req;
    pg_conn *conn;
    uint64_t queued_ms;
    uint64_t sent_ms;        /* when its last statement went out */
    int pt;                  /* resume point of the op's protothread */
    int phase;
    bool in_tx;
    bool binary_result;      /* next query asks for binary results */
    PGresult *res;           /* the last statement's result, valid after PG_QUERY */
    tern_arena a;            /* scratch: parameter text, intermediate values */

    int np, cap;             /* parameters of the next statement, in j->a */
    const char **pv;
    int *pl;
    int *pf;

    /* Normalised inputs and op state. */
    const char *acct;
    const char *mbox;
    const char *mbox2;
    uint64_t account_id, mailbox_id, mailbox2_id, modseq;
    uint64_t u[8];
    int64_t i, n;
    void *p, *q;
    const uint8_t *data;   /* APPEND: the message */
    size_t len;
    uint8_t *owned_data;   /* APPEND from data_path: malloc'd */
    const char *uidset_sql;  /* built by pg_uidset() */

    /* A named statement being prepared on this connection first: its
     * execution is sent when the PREPARE has answered. */
    int prep_stmt;           /* PG_STMT_* + 1, or 0 */
    int prep_np;             /* the execution's parameters (still in pv/pl/pf) */
    bool prep_binary;
    bool prep_only;          /* continue the op after PREPARE, send nothing */
    /* Results of a pipeline (pg_pool.c collects them up to the sync). */
    PGresult **pipe;
    int pipe_n;
    /* APPEND batching (pg.c): the account an append is for, whether it
     * may join a batch, and for a batch job the member jobs (in p, n of
     * them; a failed batch runs each member again alone unless the
     * connection was lost). */
    const char *acct_key;
    bool no_batch;
    bool batch;              /* a job of our own: its req is not a caller's */
    bool conn_lost;
    bool redo;               /* batch member that changed nothing: run it alone */

    /* Blob directory (pg_blob.c). File work runs on the thread pool while
     * the job keeps its connection (pg_work); a job whose connection was
     * lost meanwhile is finished when the work returns. */
    uv_work_t work;
    pg_work_fn work_fn;
    bool working;
    bool finishing;
    int work_left;           /* pg_work_each: items not back yet */
    bool reap;               /* a job of our own removing unreferenced blobs */
    bool blob_ready;         /* APPEND: the body's file is written (blob_hash) */
    bool blob_reused;        /* ... it was there already: checked after the commit */
    uint8_t blob_hash[32];
    char **dead;             /* hex hashes of external rows deleted (j->a) */
    int n_dead, cap_dead;

    /* Change events to raise with the commit: "account\tmailbox\tmodseq". */
    const char *notes[4];
    int n_notes;
};

typedef struct pg_poll pg_poll;

enum { PG_C_DOWN = 0, PG_C_WAIT, PG_C_CONNECTING, PG_C_IDLE, PG_C_BUSY };

struct pg_conn {
    pg_impl *pg;
    PGconn *pq;
    tern_pq_lookup *lookup; /* host name lookup before the connect, or NULL */
    pg_poll *poll;
    int fd;
    int state;
    bool listener;
    bool want_write;
    bool rewake;         /* listener: wake every watch once LISTEN is back */
    bool warned;         /* this outage has been logged at warn level */
    unsigned backoff_ms;
    uv_timer_t timer;
    pg_job *job;
    PGresult *pending;   /* the result being collected for job */
    uint64_t prepared;   /* bit per statement id prepared on this session */
    /* Statements prepared on their second sight (pg_conn_auto_stmt), ids
     * PG_AUTO_FIRST + index; gone with the session. */
    struct { uint64_t hash; char *sql; } autos[PG_AUTO_MAX];
    int n_auto;
    uint64_t seen[PG_AUTO_SEEN]; /* hashes of texts sent unnamed once */
    bool pipeline;       /* in libpq pipeline mode, collecting up to the sync */
    PGresult **pipe;     /* results collected so far, malloc'd */
    int pipe_n, pipe_cap;
    int index;
};

struct pg_impl {
    tern_store *store;
    char *conninfo;
    char *resolve_host;  /* host= looked up off the loop before each connect, or NULL */
    uint64_t retention_ms;
    uint64_t default_quota_bytes, default_quota_messages;
    char *blob_dir;      /* postgres.blob_dir, or NULL: bodies in the database */
    unsigned n_work;     /* jobs' file work on the thread pool */
    uv_timer_t sweep_timer;
    uv_work_t sweep_work;
    bool sweeping;

    uv_thread_t thread;
    uv_loop_t loop;
    uv_async_t wake;
    uv_timer_t tick;

    uv_mutex_t mu;       /* guards inbox_head/tail, closing and watched */
    pg_job *inbox_head, *inbox_tail;
    bool closing;
    char **watched;      /* accounts with watches (store.c tells us) */
    size_t n_watched, cap_watched;

    /* loop-thread only */
    pg_job *q_head, *q_tail;
    size_t q_len;
    pg_conn *conns;
    size_t n_conns;
    pg_conn listen;
    bool shutting_down;
    bool dispatching;
};

/* pg.c */
void pg_dispatch(pg_impl *pg);
void pg_job_start(pg_job *j);
void pg_job_result(pg_job *j, PGresult *res);
void pg_job_pipeline_done(pg_job *j, PGresult **res, int n);
void pg_job_abort(pg_job *j, const char *why);
void pg_job_finish(pg_job *j);
void pg_notify_payload(pg_impl *pg, const char *payload);
void pg_maybe_shutdown(pg_impl *pg);
void pg_wake_watched(pg_impl *pg);

/* Statements run often enough to keep prepared on every connection
 * (planning them each time costs more than running them). */
enum { PG_STMT_APPEND = 0, PG_STMT_LOCK_MAILBOX, PG_STMT_LOOKUP_MAILBOX, PG_STMT_APPEND_BATCH,
       PG_STMT__COUNT };

/* Any other statement with parameters (the ops build their SQL from a
 * few shapes: UID sets and search criteria are parameters, never text)
 * is prepared on the connection the second time its text is sent: an
 * unnamed statement is parsed and planned at every call, which under IMAP
 * load was half the database's CPU. Texts seen once stay unnamed, so
 * one-off shapes do not fill the table. */
int pg_conn_auto_stmt(pg_conn *c, const char *sql);

/* pg_pool.c */
void pg_conn_init(pg_impl *pg, pg_conn *c, int index, bool listener);
void pg_conn_start(pg_conn *c);
int pg_conn_send(pg_conn *c, const char *sql, int np, const char *const *pv, const int *pl,
                 const int *pf, int binary);
int pg_conn_prepare(pg_conn *c, int stmt, const char *sql, int np);
int pg_conn_send_prepared(pg_conn *c, int stmt, int np, const char *const *pv, const int *pl,
                          const int *pf, int binary);
void pg_conn_close(pg_conn *c);
/* Pipeline: enter, queue statements (nothing is read until the sync), then
 * sync; the job gets every result at once through pg_job_pipeline_done. */
int pg_conn_pipeline_enter(pg_conn *c);
int pg_conn_pipeline_query(pg_conn *c, const char *sql);
int pg_conn_pipeline_prepared(pg_conn *c, int stmt, int np, const char *const *pv, const int *pl,
                              const int *pf);
int pg_conn_pipeline_params(pg_conn *c, const char *sql, int np, const char *const *pv,
                            const int *pl, const int *pf);
int pg_conn_pipeline_sync(pg_conn *c);
void pg_conn_broken(pg_conn *c, const char *why);

/* pg.c: runs fn(j) on the thread pool, then re-enters the op (PG_WORK). */
int pg_work(pg_job *j, pg_work_fn fn);
/* fn(mem[i]) for each member, in parallel on the pool, then the op goes on. */
int pg_work_each(pg_job *j, pg_job **mem, int n, pg_work_fn fn);
/* Records the external hashes a PG_BODY_DELETE returned: their files are
 * removed after the commit. */
void pg_blob_note_dead(pg_job *j, const PGresult *res);

/* pg_blob.c */
void pg_blob_hex(const uint8_t h[32], char out[65]);
bool pg_blob_valid_hex(const char *s);
int pg_blob_dir_prepare(const char *dir, char **error_r);
/* At open, on a blocking connection: with a blob directory, records it in
 * meta (key blob_dir); without one, refuses a database whose meta says one
 * was used and that still has external bodies (they would all answer EIO),
 * and forgets the record when none is left. 0, or -1 with *error_r. */
int pg_blob_marker(const char *conninfo, const char *blob_dir, char **error_r);
/* Hashes data and makes sure BLOB_DIR/ab/cd/<hash> holds it, durably.
 * Returns 0 or -errno. */
int pg_blob_write(const char *dir, const uint8_t *data, size_t len, uint8_t hash[32],
                  bool *existed_r);
/* After the commit of an append that found its file there: writes it
 * again if it went meanwhile. */
int pg_blob_ensure(const char *dir, const uint8_t hash[32], const uint8_t *data, size_t len);
int pg_blob_read(const char *dir, const char *hex, uint64_t off, size_t len, uint8_t *out,
                 size_t *got_r);
int pg_blob_size(const char *dir, const char *hex, uint64_t *size_r);
/* Removal in two steps around a database check (see pg_blob.c). */
int pg_blob_reap_take(const char *dir, const char *hex, char *taken, size_t cap);
int pg_blob_reap_settle(const char *dir, const char *hex, const char *taken, bool keep);
/* Removes unreferenced blobs older than grace_s (blocking: own connection). */
int pg_blob_sweep(const char *dir, const char *conninfo, uint64_t grace_s, char **error_r);
int pg_op_blob_reap(pg_job *j);
/* Settles every file a reap job took aside, as its alive[] says. */
void pg_blob_reap_settle_all(pg_job *j);

/* pg_schema.c */
int pg_schema_create(const char *conninfo, char **error_r);

/* Job helpers (pg.c). */
int pg_send(pg_job *j, const char *sql);
int pg_send_begin(pg_job *j);
int pg_send_prepared(pg_job *j, int stmt, const char *sql);
int pg_send_prepare_only(pg_job *j, int stmt, const char *sql);
int pg_done(pg_job *j, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int pg_ok(pg_job *j);
/* Sets the job's status from an error result; returns it. */
int pg_map_error(pg_job *j, const PGresult *res);
void pg_p_str(pg_job *j, const char *s);
void pg_p_u64(pg_job *j, uint64_t v);
void pg_p_i64(pg_job *j, int64_t v);
void pg_p_bin(pg_job *j, const uint8_t *data, size_t len);
void pg_p_strarray(pg_job *j, const char *const *v, size_t n, bool lower);
void pg_note(pg_job *j, uint64_t mailbox_id, uint64_t modseq);
/* Binds the set as parameters and sets j->uidset_sql to a condition on
 * m.uid; "*" resolves to max_uid. */
void pg_uidset(pg_job *j, const tern_uid_set *set, uint64_t max_uid);
uint64_t pg_u64(const PGresult *r, int row, int col);
int64_t pg_i64(const PGresult *r, int row, int col);
char *pg_str(pg_job *j, const PGresult *r, int row, int col);
/* Text made safe to bind as TEXT (valid UTF-8, no NUL), in j->a. */
const char *pg_clean_text(pg_job *j, const char *s);
const char *pg_norm_account(tern_arena *a, const char *name);
const char *pg_lower(tern_arena *a, const char *s);
char **pg_split_words(tern_arena *a, const char *s, size_t *n_r);

/* The protothread. Locals do not survive PG_QUERY. */
#define PG_BEGIN(j) switch ((j)->pt) { case 0:
#define PG_QUERY(j, sql)                                                   \
    do {                                                                   \
        (j)->pt = __LINE__;                                                \
        return pg_send((j), (sql));                                        \
        case __LINE__:;                                                    \
    } while (0)
#define PG_QUERY_PREPARED(j, stmt, sql)                                    \
    do {                                                                   \
        (j)->pt = __LINE__;                                                \
        return pg_send_prepared((j), (stmt), (sql));                       \
        case __LINE__:;                                                    \
    } while (0)
/* Prepares without running (pipelines run it afterwards). */
#define PG_PREPARE(j, stmt, sql)                                           \
    do {                                                                   \
        (j)->pt = __LINE__;                                                \
        return pg_send_prepare_only((j), (stmt), (sql));                   \
        case __LINE__:;                                                    \
    } while (0)
/* Waits for what was queued by hand (a pipeline) without sending. */
#define PG_AWAIT(j)                                                        \
    do {                                                                   \
        (j)->pt = __LINE__;                                                \
        return PG_WAIT;                                                    \
        case __LINE__:;                                                    \
    } while (0)
/* Runs fn(j) on the thread pool (file I/O), then continues here. */
#define PG_WORK(j, fn)                                                     \
    do {                                                                   \
        (j)->pt = __LINE__;                                                \
        return pg_work((j), (fn));                                         \
        case __LINE__:;                                                    \
    } while (0)
#define PG_WORK_EACH(j, mem, n, fn)                                        \
    do {                                                                   \
        (j)->pt = __LINE__;                                                \
        return pg_work_each((j), (mem), (n), (fn));                        \
        case __LINE__:;                                                    \
    } while (0)
#define PG_END(j) } return pg_ok(j)

/* Op functions, one per tern_store_op (pg_directory.c, pg_messages.c,
 * pg_search.c). */
typedef int (*pg_op_fn)(pg_job *j);
int pg_op_domain_add(pg_job *j);
int pg_op_domain_remove(pg_job *j);
int pg_op_domain_list(pg_job *j);
int pg_op_account_create(pg_job *j);
int pg_op_account_delete(pg_job *j);
int pg_op_account_get(pg_job *j);
int pg_op_account_list(pg_job *j);
int pg_op_account_set_password(pg_job *j);
int pg_op_account_set_quota(pg_job *j);
int pg_op_alias_add(pg_job *j);
int pg_op_alias_remove(pg_job *j);
int pg_op_alias_list(pg_job *j);
int pg_op_rcpt_lookup(pg_job *j);
int pg_op_quota_get(pg_job *j);
int pg_op_mailbox_create(pg_job *j);
int pg_op_mailbox_rename(pg_job *j);
int pg_op_mailbox_delete(pg_job *j);
int pg_op_mailbox_list(pg_job *j);
int pg_op_mailbox_status(pg_job *j);
int pg_op_mailbox_subscribe(pg_job *j);
int pg_op_mailbox_set_special(pg_job *j);
int pg_op_append(pg_job *j);
int pg_op_append_batch(pg_job *j);
int pg_op_fetch(pg_job *j);
int pg_op_fetch_body(pg_job *j);
int pg_op_set_flags(pg_job *j);
int pg_op_copy(pg_job *j);
int pg_op_move(pg_job *j);
int pg_op_expunge(pg_job *j);
int pg_op_search(pg_job *j);
int pg_op_changes(pg_job *j);
int pg_op_recent_claim(pg_job *j);
int pg_op_mailbox_keywords(pg_job *j);
/* pg_headers.c */
int pg_op_fetch_headers(pg_job *j);
int pg_op_fetch_index(pg_job *j);

/* Shared by the mailbox ops: the parents of `name` ("a", "a/b" for
 * "a/b/c"), in j->a. */
const char **pg_parents(pg_job *j, const char *name, size_t *n_r);
/* Fills a tern_mailbox_info from a row laid out as PG_MAILBOX_COLS. */
void pg_mailbox_row(pg_job *j, const PGresult *r, int row, tern_mailbox_info *out);
#define PG_MAILBOX_COLS                                                          \
    "b.id, b.name, b.special_use, b.subscribed, b.uidvalidity, b.uidnext, "      \
    "(SELECT count(*) FROM messages m WHERE m.mailbox_id = b.id), "              \
    "(SELECT count(*) FROM messages m WHERE m.mailbox_id = b.id AND m.flags & 1 = 0), " \
    "(SELECT count(*) FROM messages m WHERE m.mailbox_id = b.id AND m.recent <> 0), " \
    "(SELECT coalesce(sum(m.size), 0) FROM messages m WHERE m.mailbox_id = b.id), " \
    "b.highest_modseq, "                                                         \
    "EXISTS (SELECT 1 FROM mailboxes c WHERE c.account_id = b.account_id "       \
    "AND left(c.name, length(b.name) + 1) = b.name || '/')"

/* Fills a tern_message_info from a row laid out as PG_MESSAGE_COLS. */
void pg_message_row(pg_job *j, const PGresult *r, int row, tern_message_info *out);
#define PG_MESSAGE_COLS                                                          \
    "m.uid, m.email_id, m.thread_id, m.flags, m.modseq, m.internal_date, m.size, " \
    "(SELECT string_agg(k.keyword, ' ' ORDER BY k.keyword) FROM keywords k WHERE k.message = m.id)"

/* Dropping references to bodies, which other accounts may share (so the
 * account's lock does not cover them): a CTE `c (body_ref, n)` of the
 * references going, PG_BODY_UNREF as a further CTE takes them off under
 * the rows' own locks, PG_BODY_DEAD (in the final SELECT) lists the rows
 * left at 0 as a text[] literal or NULL, and PG_BODY_DELETE ($1: that
 * list) removes them as a second statement of the same transaction: one
 * statement cannot both update and delete a row, and deciding from the
 * snapshot's refcount instead would let two accounts each keep the last
 * reference. An append of equal bytes waits on the locked row and, once
 * it is deleted, inserts a new one. */
#define PG_BODY_UNREF                                                      \
    "bu AS (UPDATE bodies b SET refcount = b.refcount - c.n FROM c "       \
    "WHERE b.id = c.body_ref RETURNING b.id, b.refcount)"
#define PG_BODY_DEAD "(SELECT array_agg(id)::text FROM bu WHERE refcount <= 0)"
#define PG_BODY_DELETE "DELETE FROM bodies WHERE id = ANY ($1::bigint[]) AND refcount <= 0 " \
    "RETURNING CASE WHEN external THEN encode(hash, 'hex') END"

/* BEGIN leaves parameters already bound for the next statement alone. */
#define PG_TX(j)                                                           \
    do {                                                                   \
        (j)->pt = __LINE__;                                                \
        return pg_send_begin(j);                                           \
        case __LINE__:;                                                    \
    } while (0);                                                           \
    (j)->in_tx = true

#endif
