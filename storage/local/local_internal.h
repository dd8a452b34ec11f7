/* What the files of the local backend (Maildir bodies + SQLite metadata)
 * share. Everything declared here runs on the backend's one thread; nothing
 * here is safe to call from another thread except local.c's submit path.
 *
 * Transactions: the thread takes every queued request and runs them inside
 * one SQLite transaction, each request under its own SAVEPOINT. File
 * changes a request makes before the commit are recorded as effects so that
 * a failed request (or a failed COMMIT) can undo them; unlinks wait until
 * after the commit (and are recorded in the private table pending_unlink,
 * so a crash in between cannot resurrect an expunged message). */
#ifndef TERN_LOCAL_INTERNAL_H
#define TERN_LOCAL_INTERNAL_H

#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

#include "storage/store_backend.h"

#define LOCAL_SCHEMA_VERSION "1"
#define LOCAL_FETCH_BODY_MAX (1u << 20)
#define LOCAL_HEADER_MAX (256u * 1024u) /* what tern_msg_index_build reads */
#define LOCAL_STMT_SLOTS 256

typedef enum {
    LEFF_UNDO_UNLINK = 1, /* a file we created: unlink it on rollback */
    LEFF_UNDO_RENAME,     /* a rename a -> b: rename b back to a on rollback */
    LEFF_UNDO_RMDIR,      /* a mailbox folder we created: remove it on rollback */
    LEFF_POST_UNLINK,     /* unlink after commit */
    LEFF_POST_RMTREE,     /* remove a directory tree after commit */
} leffect_kind;

typedef struct leffect {
    leffect_kind kind;
    char *a, *b;
    struct leffect *next;
} leffect;

typedef struct lnotify {
    char *account;
    uint64_t mailbox_id, modseq;
    struct lnotify *next;
} lnotify;

/* One request's pending file effects and events, in the batch arena. */
typedef struct lctx {
    leffect *effects; /* newest first */
    lnotify *events;
} lctx;

/* A message file written to tmp/ and not yet durable. */
typedef struct lpending {
    int fd;
    int err;
    bool cancelled;        /* its request was rolled back */
    char *tmp, *final, *cur_dir;
} lpending;

/* A spool file recently stored by APPEND (data_path), so that the same
 * delivery fanned out to several local recipients becomes hard links of
 * one file instead of copies. Keyed by the source's identity, not only its
 * name, since spool temp names are reused. */
typedef struct lshared_body {
    char *src, *stored;    /* malloc'd; stored: absolute path in some cur/ */
    uint64_t dev, ino, size;
    int64_t mtime_ns, ctime_ns;
} lshared_body;

#define LOCAL_SHARED_MAX 16
#define LOCAL_SYNC_THREADS 4
#define LOCAL_PENDING_MAX 256 /* open fds held by one batch */

#define LOCAL_SEARCH_CACHE 8

typedef struct lstmt_slot {
    const char *sql;
    sqlite3_stmt *st;
} lstmt_slot;

typedef struct local_store {
    tern_store *store;
    char *root;            /* cfg->local.path, no trailing '/' */
    char *db_path;
    char hostname[128];    /* sanitized for Maildir names */
    uint64_t retention_ms;
    uint64_t default_quota_bytes, default_quota_messages;
    sqlite3 *db;
    int lock_fd;
    bool owner;            /* holds the lock: reconciles, cleans tmp/ */

    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    tern_store_req **queue;
    size_t n_queue, cap_queue;
    bool stopping;
    bool started;

    lstmt_slot stmts[LOCAL_STMT_SLOTS];
    /* SEARCH statements are built per query; the same few (a client's
     * UNSEEN, the mailbox's uid list) come back all the time, so the last
     * ones are kept prepared, keyed by their text (local_search.c). */
    struct {
        char *sql;
        sqlite3_stmt *st;
        uint64_t used;
    } search_cache[LOCAL_SEARCH_CACHE];
    uint64_t search_tick;
    uint64_t file_seq;     /* the Q part of unique file names */
    uint64_t last_prune_ms;
    bool unlink_pending;   /* pending_unlink has rows that are done */

    /* The batch being run. */
    tern_arena batch;
    lctx *ctx;             /* the request being run */
    char **sync_dirs;      /* directories to fsync before COMMIT */
    size_t n_sync_dirs, cap_sync_dirs;
    lshared_body shared[LOCAL_SHARED_MAX];
    size_t shared_next;
    lpending pending[LOCAL_PENDING_MAX];
    size_t n_pending;
    int broken_err;        /* a flush failed: the whole group must roll back */

    /* fsync helpers: one fsync takes a few ms on most disks, but several
     * running at once share one journal commit (or, without a journal, the
     * block layer merges their cache flushes), so a batch's files are
     * synced in parallel. Tried sixteen: in the pipeline bench device flushes
     * per message fell from 1.2-1.3 to 0.55-0.9, but CPU per message rose
     * by a third and, on the shared 2-core VM, throughput did not improve:
     * kept at four until measured on a quiet machine. */
    pthread_t sync_th[LOCAL_SYNC_THREADS];
    size_t n_sync_th;
    pthread_mutex_t sync_mu;
    pthread_cond_t sync_work, sync_done;
    uint64_t sync_gen;
    size_t sync_next, sync_finished;
    int *sync_fds, *sync_errs;  /* the job: fsync each fd, errno or 0 out */
    size_t sync_n;
    bool sync_stop;

    /* The reader: a second connection on its own thread that answers
     * RCPT_LOOKUP (the SMTP RCPT check and the mailet runner's recipient
     * resolution) without queueing behind delivery batches on this
     * thread. WAL lets it read the last committed state while the writer
     * commits. Its own local_store (db, statement cache, queue) so nothing
     * is shared with the writer but the file. NULL when it could not
     * start: lookups then run on the writer thread as before. */
    struct local_store *reader;
    bool is_reader;        /* this is one: run lookups, no transactions of writes */
} local_store;

typedef struct lacct {
    int64_t id;
    char *name;
    char *maildir;         /* absolute path of the account's Maildir */
    uint64_t quota_bytes, quota_messages, used_bytes, used_messages;
    uint64_t highest_modseq;
} lacct;

typedef struct lmbox {
    int64_t id;
    char *name;
    char *dir;             /* absolute folder path (Maildir root for INBOX) */
    unsigned special_use;
    bool subscribed;
    uint32_t uidvalidity, uidnext;
    uint64_t highest_modseq, expunged_below;
} lmbox;

/* local.c: statements and errors */
sqlite3_stmt *local_stmt(local_store *L, const char *sql);
/* Steps: 1 row, 0 done, or a negative TERN_STORE_E* after failing req. */
int local_step(local_store *L, tern_store_req *req, sqlite3_stmt *st);
/* Runs a statement to completion (no rows expected). */
int local_run(local_store *L, tern_store_req *req, sqlite3_stmt *st);
/* One statement, a string literal (it is kept prepared, keyed by its address). */
int local_exec(local_store *L, tern_store_req *req, const char *sql);
int local_db_fail(local_store *L, tern_store_req *req, int rc, const char *what);
int local_errno_fail(tern_store_req *req, int err, const char *what, const char *path);
void local_effect(local_store *L, leffect_kind kind, const char *a, const char *b);
void local_event(local_store *L, const char *account, uint64_t mailbox_id, uint64_t modseq);
void local_sync_dir(local_store *L, const char *dir);
/* Takes ownership of fd. Returns 0, or -1 after closing and unlinking when
 * a flush to make room failed (errno set). */
int local_pending_add(local_store *L, int fd, const char *tmp, const char *final,
                      const char *cur_dir);
/* fsyncs every pending file (in parallel), renames them into cur/ and
 * queues their directories for fsync. Returns 0 or an errno. */
int local_pending_flush(local_store *L);
char *local_col_text(tern_arena *a, sqlite3_stmt *st, int col);
int64_t local_now(void);

/* local_schema.c */
int local_schema_create(local_store *L, char **error_r);
int local_prune_expunged(local_store *L, tern_store_req *req);

/* local_maildir.c: names and files (pure helpers first) */
/* Mailbox name <-> Maildir++ folder name (without the leading '.').
 * Returns NULL when the name cannot be encoded (too long). */
char *local_folder_encode(tern_arena *a, const char *name);
char *local_folder_decode(tern_arena *a, const char *folder);
char *local_localpart_encode(tern_arena *a, const char *localpart);
/* "DFRST" letters for TERN_FLAG_*, sorted, into buf (>= 6 bytes). */
void local_flag_letters(unsigned flags, char *buf);
unsigned local_flags_from_name(const char *filename);
/* The part of a file name before ":2," (or the whole name). */
size_t local_base_len(const char *filename);
char *local_file_name(local_store *L, tern_arena *a, uint64_t size, unsigned flags);
char *local_rename_flags(tern_arena *a, const char *filename, unsigned flags);
void local_sanitize_hostname(const char *in, char *out, size_t size);
char *local_account_maildir(local_store *L, tern_arena *a, const char *account);
char *local_mailbox_dir(tern_arena *a, const char *maildir, const char *name);
/* Relative folder prefix of a mailbox ("" for INBOX, ".A.B/" otherwise). */
char *local_mailbox_rel(tern_arena *a, const char *name);
int local_mkdir_folder(const char *dir);
int local_fsync_path(const char *path);
int local_rmtree(const char *path);
/* Writes a message into dir/tmp, without fsync: the caller hands the open
 * fd to local_pending_add, which fsyncs (in parallel with the rest of the
 * batch) and renames it into cur/ as *name_r before the COMMIT. Either
 * `data`/`len` or `src_path` gives the bytes, after `prefix` (may be
 * empty). Returns 0 or -errno; on success *size_r is its size and `head`
 * holds up to LOCAL_HEADER_MAX first bytes when read from src_path or
 * behind a prefix (malloc'd, caller frees). */
int local_write_message(local_store *L, tern_arena *a, const char *dir, const uint8_t *prefix,
                        size_t prefix_len, const uint8_t *data,
                        size_t len, const char *src_path, unsigned flags, int64_t mtime,
                        char **name_r, uint64_t *size_r, uint8_t **head_r, size_t *head_len_r,
                        int *fd_r, char **tmp_r);
/* Reads up to LOCAL_HEADER_MAX first bytes of a file (malloc'd). */
int local_read_head(const char *path, uint8_t **head_r, size_t *len_r);

/* local_directory.c */
int local_account_get(local_store *L, tern_store_req *req, const char *name, lacct *out);
int local_mailbox_get(local_store *L, tern_store_req *req, const lacct *a, const char *name,
                      lmbox *out);
int local_mailbox_insert(local_store *L, tern_store_req *req, lacct *a, const char *name,
                         unsigned special_use, bool make_dir, lmbox *out);
uint64_t local_next_modseq(local_store *L, tern_store_req *req, lacct *a);
int local_op_directory(local_store *L, tern_store_req *req);
int local_op_mailbox(local_store *L, tern_store_req *req);

/* local_messages.c */
int local_op_message(local_store *L, tern_store_req *req);
/* The account and mailbox a message request names (in.account, in.name). */
int local_target(local_store *L, tern_store_req *req, lacct *a, lmbox *m);
/* A uid set with "*" resolved, sorted and merged (malloc'd; *n_r may be 0). */
int local_uid_ranges(local_store *L, tern_store_req *req, const lmbox *m, const tern_uid_set *set,
                     tern_uid_range **out_r, size_t *n_r);
/* The rows of m's messages in the uid set `set`: `sql` selects from
 * messages with ?1 the mailbox id and ?2..?3 a uid range (ORDER BY uid);
 * each row becomes one element of `elem` bytes, appended to *v (malloc'd,
 * the caller frees it even on error) and filled by fill(element, row, ctx).
 * TERN_STORE_OK or the error (req says why). */
int local_rows_in_set(local_store *L, tern_store_req *req, const lmbox *m,
                      const tern_uid_set *set, const char *sql, size_t elem, void **v, size_t *n,
                      void (*fill)(void *o, sqlite3_stmt *st, void *ctx), void *ctx);
/* Records a file for unlinking once the COMMIT is durable. */
int local_unlink_later(local_store *L, tern_store_req *req, const char *abs_path);
/* Sets mailboxes.highest_modseq (and uidnext when nonzero). */
int local_mailbox_touch(local_store *L, tern_store_req *req, lmbox *m, uint64_t modseq,
                        uint32_t uidnext);
/* local_flags.c */
/* The spelling a keyword (?2) takes in mailbox ?3: the one a message of the
 * mailbox already carries, whatever its case, else ?2 as given. */
#define LOCAL_KW_SPELLING                                                          \
    "coalesce((SELECT k.keyword FROM keywords k JOIN messages m ON m.id = k.message" \
    " WHERE m.mailbox_id = ?3 AND lower(k.keyword) = lower(?2) LIMIT 1), ?2)"
int local_set_flags(local_store *L, tern_store_req *req);
int local_recent_claim(local_store *L, tern_store_req *req);
int local_mailbox_keywords(local_store *L, tern_store_req *req);
/* IMAP atoms only (RFC 9051 flag-keyword): 1..255 printable ASCII without
 * atom-specials, not starting with '\\'. */
bool local_valid_keywords(const tern_keywords *kw);
#define LOCAL_SPECIAL_MASK 0x3fu
/* Indexes a file already in a folder's cur/ (reconciliation). */
int local_insert_message(local_store *L, tern_store_req *req, lacct *a, lmbox *m,
                         const char *rel_path, uint64_t size, unsigned flags,
                         const tern_keywords *kw, int64_t internal_date, const uint8_t *head,
                         size_t head_len, tern_append_result *res);
int local_delete_rows(local_store *L, tern_store_req *req, int64_t msg_id);
int local_add_file_message(local_store *L, tern_store_req *req, lacct *a, lmbox *m,
                           const char *cur_name);
int local_reconcile(local_store *L, char **error_r);

/* local_search.c */
int local_op_search(local_store *L, tern_store_req *req);
/* Finalizes the kept SEARCH statements (before the connection closes). */
void local_search_cache_free(local_store *L);

/* local_headers.c: FETCH_HEADERS, FETCH_INDEX */
int local_op_headers(local_store *L, tern_store_req *req);
/* Opens a message file of `maildir` by its body_ref (following a rename by
 * a Maildir tool); fd or -1 with errno. */
int local_open_body(local_store *L, const char *maildir, const char *ref);

#endif
