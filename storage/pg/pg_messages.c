/* Mailbox and message ops of the PostgreSQL backend: create, rename
 * (INBOX moves its messages out), delete, list, status, subscribe,
 * special-use; append, fetch, fetch body, flags, copy, move, expunge.
 *
 * Concurrency: every op that changes an account starts by taking a new
 * modseq with UPDATE accounts ... RETURNING, which row-locks the account
 * for the transaction. That one lock serialises the account's writers
 * across all nodes (uid allocation, quota, refcounts of shared bodies), and
 * since it is always the first lock taken, writers cannot deadlock.
 *
 * Input trusted: parameters from our own code; message bytes untrusted,
 * parsed only by tern_msg_index_build and always bound as parameters. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/log.h"
#include "storage/index.h"
#include "storage/pg/pg_internal.h"

#define PG_APPEND_MAX (1024ULL * 1024 * 1024)
#define PG_INDEX_HEAD_MAX (256u * 1024u) /* of the shared part, indexed behind a prefix */

static uint64_t affected(const PGresult *r)
{
    const char *s = PQcmdTuples((PGresult *)r);
    return s && *s ? strtoull(s, NULL, 10) : 0;
}

static bool is_true(const PGresult *r, int row, int col)
{
    return PQgetvalue(r, row, col)[0] == 't';
}

void pg_mailbox_row(pg_job *j, const PGresult *r, int row, tern_mailbox_info *out)
{
    out->id = pg_u64(r, row, 0);
    out->name = pg_str(j, r, row, 1);
    out->special_use = (unsigned)pg_u64(r, row, 2);
    out->subscribed = pg_u64(r, row, 3) != 0;
    out->uidvalidity = (uint32_t)pg_u64(r, row, 4);
    out->uidnext = (uint32_t)pg_u64(r, row, 5);
    out->messages = (uint32_t)pg_u64(r, row, 6);
    out->unseen = (uint32_t)pg_u64(r, row, 7);
    out->recent = (uint32_t)pg_u64(r, row, 8);
    out->size = pg_u64(r, row, 9);
    out->highest_modseq = pg_u64(r, row, 10);
    out->has_children = is_true(r, row, 11);
}

void pg_message_row(pg_job *j, const PGresult *r, int row, tern_message_info *out)
{
    out->uid = (uint32_t)pg_u64(r, row, 0);
    out->id = pg_str(j, r, row, 1);
    out->thread_id = pg_str(j, r, row, 2);
    out->flags = (unsigned)pg_u64(r, row, 3);
    out->modseq = pg_u64(r, row, 4);
    out->internal_date = pg_i64(r, row, 5);
    out->size = pg_u64(r, row, 6);
    out->keywords = pg_split_words(&j->req->arena, PQgetisnull(r, row, 7) ? NULL : PQgetvalue(r, row, 7),
                                   &out->n_keywords);
}

const char **pg_parents(pg_job *j, const char *name, size_t *n_r)
{
    size_t n = 0;
    for (const char *p = name; *p; p++)
        n += *p == '/';
    const char **v = tern_arena_alloc(&j->a, (n + 1) * sizeof *v);
    size_t k = 0;
    for (const char *p = name; *p; p++)
        if (*p == '/' && p > name)
            v[k++] = tern_arena_strndup(&j->a, name, (size_t)(p - name));
    *n_r = k;
    return v;
}

static const char *canon(pg_job *j, const char *name)
{
    return name ? tern_store__canon_mailbox(&j->a, name) : NULL;
}

/* ---- mailboxes ---------------------------------------------------------- */

int pg_op_mailbox_create(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account || !r->in.name || !tern_store__valid_mailbox_name(r->in.name))
        return pg_done(j, TERN_STORE_EINVAL, "bad mailbox name");
    j->acct = pg_norm_account(&j->a, r->in.account);
    j->mbox = canon(j, r->in.name);
    PG_TX(j);
    pg_p_str(j, j->acct);
    PG_QUERY(j, "UPDATE accounts SET highest_modseq = highest_modseq + 1 WHERE name = $1 "
                "RETURNING id, highest_modseq");
    if (PQntuples(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such account");
    j->account_id = pg_u64(j->res, 0, 0);
    j->modseq = pg_u64(j->res, 0, 1);
    {
        size_t n;
        const char **parents = pg_parents(j, j->mbox, &n);
        if (!r->in.create_parents)
            n = 0;
        pg_p_u64(j, j->account_id);
        pg_p_strarray(j, parents, n, false);
        pg_p_u64(j, j->modseq);
    }
    PG_QUERY(j, "INSERT INTO mailboxes (account_id, name, uidvalidity, highest_modseq) "
                "SELECT $1, p, nextval('uidvalidity_seq'), $3 FROM unnest($2::text[]) p "
                "ON CONFLICT DO NOTHING");
    pg_p_u64(j, j->account_id);
    pg_p_str(j, j->mbox);
    pg_p_u64(j, r->in.special_use & 0x3f);
    pg_p_u64(j, j->modseq);
    PG_QUERY(j, "INSERT INTO mailboxes (account_id, name, special_use, uidvalidity, highest_modseq) "
                "VALUES ($1, $2, $3, nextval('uidvalidity_seq'), $4) RETURNING id");
    j->mailbox_id = pg_u64(j->res, 0, 0);
    pg_p_u64(j, j->mailbox_id);
    PG_QUERY(j, "SELECT " PG_MAILBOX_COLS " FROM mailboxes b WHERE b.id = $1");
    pg_mailbox_row(j, j->res, 0, &r->out.mailbox);
    pg_note(j, j->mailbox_id, j->modseq);
    PG_END(j);
}

int pg_op_mailbox_rename(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account || !r->in.name || !r->in.new_name ||
        !tern_store__valid_mailbox_name(r->in.new_name))
        return pg_done(j, TERN_STORE_EINVAL, "bad mailbox name");
    j->acct = pg_norm_account(&j->a, r->in.account);
    j->mbox = canon(j, r->in.name);
    j->mbox2 = canon(j, r->in.new_name);
    if (!strcmp(j->mbox2, "INBOX") || !strcmp(j->mbox, j->mbox2))
        return pg_done(j, TERN_STORE_EEXISTS, "target mailbox exists");
    {
        size_t l = strlen(j->mbox);
        if (!strncmp(j->mbox2, j->mbox, l) && j->mbox2[l] == '/' && strcmp(j->mbox, "INBOX"))
            return pg_done(j, TERN_STORE_EINVAL, "cannot rename a mailbox into itself");
    }
    PG_TX(j);
    pg_p_str(j, j->acct);
    pg_p_str(j, j->mbox);
    PG_QUERY(j, "WITH a AS (UPDATE accounts SET highest_modseq = highest_modseq + 1 "
                "WHERE name = $1 RETURNING id, highest_modseq) "
                "SELECT a.id, a.highest_modseq, b.id, b.uidnext FROM a "
                "JOIN mailboxes b ON b.account_id = a.id AND b.name = $2");
    if (PQntuples(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such mailbox");
    j->account_id = pg_u64(j->res, 0, 0);
    j->modseq = pg_u64(j->res, 0, 1);
    j->mailbox_id = pg_u64(j->res, 0, 2);
    j->u[0] = pg_u64(j->res, 0, 3);
    {
        size_t n;
        const char **parents = pg_parents(j, j->mbox2, &n);
        pg_p_u64(j, j->account_id);
        pg_p_strarray(j, parents, n, false);
        pg_p_u64(j, j->modseq);
    }
    PG_QUERY(j, "INSERT INTO mailboxes (account_id, name, uidvalidity, highest_modseq) "
                "SELECT $1, p, nextval('uidvalidity_seq'), $3 FROM unnest($2::text[]) p "
                "ON CONFLICT DO NOTHING");
    if (!strcmp(j->mbox, "INBOX")) {
        /* RFC 9051 6.3.6: renaming INBOX moves its messages to a new
         * mailbox and leaves INBOX, and its children, in place. The moved
         * messages keep their uids under the new UIDVALIDITY. */
        pg_p_u64(j, j->account_id);
        pg_p_str(j, j->mbox2);
        pg_p_u64(j, j->u[0]);
        pg_p_u64(j, j->modseq);
        PG_QUERY(j, "INSERT INTO mailboxes (account_id, name, uidvalidity, uidnext, highest_modseq) "
                    "VALUES ($1, $2, nextval('uidvalidity_seq'), $3, $4) RETURNING id");
        j->mailbox2_id = pg_u64(j->res, 0, 0);
        pg_p_u64(j, j->mailbox_id);
        pg_p_u64(j, j->mailbox2_id);
        pg_p_u64(j, j->modseq);
        pg_p_i64(j, (int64_t)time(NULL));
        PG_QUERY(j, "WITH mv AS (UPDATE messages SET mailbox_id = $2, modseq = $3 "
                    "WHERE mailbox_id = $1 RETURNING uid), "
                    "e AS (INSERT INTO expunged (mailbox_id, uid, modseq, at) "
                    "SELECT $1, uid, $3, $4 FROM mv) "
                    "UPDATE mailboxes SET highest_modseq = $3 WHERE id = $1");
        pg_note(j, j->mailbox_id, j->modseq);
        pg_note(j, j->mailbox2_id, j->modseq);
    } else {
        pg_p_u64(j, j->account_id);
        pg_p_str(j, j->mbox);
        pg_p_str(j, j->mbox2);
        pg_p_u64(j, j->modseq);
        PG_QUERY(j, "UPDATE mailboxes SET name = $3 || substr(name, length($2) + 1), "
                    "highest_modseq = $4 WHERE account_id = $1 "
                    "AND (name = $2 OR left(name, length($2) + 1) = $2 || '/')");
        j->mailbox2_id = j->mailbox_id;
        pg_note(j, j->mailbox_id, j->modseq);
    }
    pg_p_u64(j, j->mailbox2_id);
    PG_QUERY(j, "SELECT " PG_MAILBOX_COLS " FROM mailboxes b WHERE b.id = $1");
    pg_mailbox_row(j, j->res, 0, &r->out.mailbox);
    PG_END(j);
}

int pg_op_mailbox_delete(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account || !r->in.name)
        return pg_done(j, TERN_STORE_EINVAL, "no mailbox");
    j->acct = pg_norm_account(&j->a, r->in.account);
    j->mbox = canon(j, r->in.name);
    if (!strcmp(j->mbox, "INBOX"))
        return pg_done(j, TERN_STORE_EFORBIDDEN, "INBOX cannot be deleted");
    PG_TX(j);
    pg_p_str(j, j->acct);
    pg_p_str(j, j->mbox);
    PG_QUERY(j, "WITH a AS (UPDATE accounts SET highest_modseq = highest_modseq + 1 "
                "WHERE name = $1 RETURNING id, highest_modseq) "
                "SELECT a.id, a.highest_modseq, b.id, EXISTS (SELECT 1 FROM mailboxes c "
                "WHERE c.account_id = a.id AND left(c.name, length($2) + 1) = $2 || '/') "
                "FROM a JOIN mailboxes b ON b.account_id = a.id AND b.name = $2");
    if (PQntuples(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such mailbox");
    if (is_true(j->res, 0, 3))
        return pg_done(j, TERN_STORE_ENOTEMPTY, "mailbox has children");
    j->account_id = pg_u64(j->res, 0, 0);
    j->modseq = pg_u64(j->res, 0, 1);
    j->mailbox_id = pg_u64(j->res, 0, 2);
    pg_p_u64(j, j->mailbox_id);
    pg_p_u64(j, j->account_id);
    PG_QUERY(j, "WITH c AS (SELECT body_ref, count(*) AS n, sum(size) AS s FROM messages "
                "WHERE mailbox_id = $1 GROUP BY body_ref), "
                PG_BODY_UNREF ", "
                "u AS (UPDATE accounts SET used_bytes = used_bytes - (SELECT coalesce(sum(s), 0) FROM c), "
                "used_messages = used_messages - (SELECT coalesce(sum(n), 0) FROM c) WHERE id = $2) "
                "SELECT " PG_BODY_DEAD);
    j->p = PQgetisnull(j->res, 0, 0) ? NULL : tern_arena_strdup(&j->a, PQgetvalue(j->res, 0, 0));
    if (j->p) {
        pg_p_str(j, j->p);
        PG_QUERY(j, PG_BODY_DELETE);
        pg_blob_note_dead(j, j->res);
    }
    pg_p_u64(j, j->mailbox_id);
    PG_QUERY(j, "WITH e AS (DELETE FROM expunged WHERE mailbox_id = $1) "
                "DELETE FROM mailboxes WHERE id = $1");
    pg_note(j, j->mailbox_id, j->modseq);
    PG_END(j);
}

int pg_op_mailbox_list(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account)
        return pg_done(j, TERN_STORE_EINVAL, "no account");
    pg_p_str(j, pg_norm_account(&j->a, r->in.account));
    PG_QUERY(j, "SELECT id FROM accounts WHERE name = $1");
    if (PQntuples(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such account");
    pg_p_u64(j, pg_u64(j->res, 0, 0));
    pg_p_str(j, r->in.subscribed_only ? "1" : "0");
    PG_QUERY(j, "SELECT " PG_MAILBOX_COLS " FROM mailboxes b WHERE b.account_id = $1 "
                "AND ($2::int = 0 OR b.subscribed <> 0) ORDER BY b.name");
    {
        int n = PQntuples(j->res);
        r->out.mailboxes = tern_arena_alloc(&r->arena, (size_t)(n + 1) * sizeof *r->out.mailboxes);
        size_t k = 0;
        for (int i = 0; i < n; i++) {
            const char *name = PQgetvalue(j->res, i, 1);
            if (r->in.pattern && !tern_store__pattern_match(r->in.pattern, name))
                continue;
            pg_mailbox_row(j, j->res, i, &r->out.mailboxes[k++]);
        }
        r->out.n_mailboxes = k;
    }
    PG_END(j);
}

int pg_op_mailbox_status(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account || !r->in.name)
        return pg_done(j, TERN_STORE_EINVAL, "no mailbox");
    pg_p_str(j, pg_norm_account(&j->a, r->in.account));
    pg_p_str(j, canon(j, r->in.name));
    PG_QUERY(j, "SELECT " PG_MAILBOX_COLS " FROM mailboxes b JOIN accounts a ON a.id = b.account_id "
                "WHERE a.name = $1 AND b.name = $2");
    if (PQntuples(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such mailbox");
    pg_mailbox_row(j, j->res, 0, &r->out.mailbox);
    PG_END(j);
}

int pg_op_mailbox_subscribe(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account || !r->in.name)
        return pg_done(j, TERN_STORE_EINVAL, "no mailbox");
    pg_p_str(j, pg_norm_account(&j->a, r->in.account));
    pg_p_str(j, canon(j, r->in.name));
    pg_p_str(j, r->in.subscribed ? "1" : "0");
    PG_QUERY(j, "UPDATE mailboxes b SET subscribed = $3::int FROM accounts a "
                "WHERE a.id = b.account_id AND a.name = $1 AND b.name = $2");
    if (affected(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such mailbox");
    PG_END(j);
}

int pg_op_mailbox_set_special(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account || !r->in.name)
        return pg_done(j, TERN_STORE_EINVAL, "no mailbox");
    pg_p_str(j, pg_norm_account(&j->a, r->in.account));
    pg_p_str(j, canon(j, r->in.name));
    pg_p_u64(j, r->in.special_use & 0x3f);
    PG_QUERY(j, "UPDATE mailboxes b SET special_use = $3::int FROM accounts a "
                "WHERE a.id = b.account_id AND a.name = $1 AND b.name = $2");
    if (affected(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such mailbox");
    PG_END(j);
}

/* ---- messages ----------------------------------------------------------- */

/* APPEND from a file (a spooled message): read whole on the backend
 * thread. That blocks only our own loop, for a local read, and the bytes
 * must be in memory anyway to be bound as the body parameter. */
static int read_file(pg_job *j, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return pg_done(j, TERN_STORE_EIO, "open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || (uint64_t)st.st_size > PG_APPEND_MAX) {
        close(fd);
        return pg_done(j, TERN_STORE_EINVAL, "message file unreadable or too large");
    }
    size_t len = (size_t)st.st_size;
    j->owned_data = malloc(len ? len : 1);
    if (!j->owned_data) {
        close(fd);
        return pg_done(j, TERN_STORE_ETEMP, "out of memory");
    }
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, j->owned_data + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            close(fd);
            return pg_done(j, TERN_STORE_EIO, "read %s: %s", path, n < 0 ? strerror(errno) : "short");
        }
        got += (size_t)n;
    }
    close(fd);
    j->data = j->owned_data;
    j->len = len;
    return 0;
}

static const char *opt_text(pg_job *j, const char *s)
{
    return s ? pg_clean_text(j, s) : NULL;
}

/* An append is one call of tern_append (pg_schema.c, version 4), which
 * takes the account's next modseq (row-locking the account and charging
 * the quota), the mailbox's next uid, finds the thread, writes the body
 * (or, when a row with the same bytes exists, takes a reference to it: the
 * copies of one delivery to several accounts share it; the per-copy prefix
 * $21 goes in the message row), the message, its keywords and header
 * index. With a blob directory $4 is NULL and $22 the body's sha256 (the
 * file was written first); without one $22 is NULL. Two transactions
 * appending equal bytes wait for each other on the body row, after their
 * account locks, so no cycle forms between single appends. It returns no
 * row only when it changed nothing (no account, no mailbox, over quota). */
#define PG_APPEND_CALL                                                                        \
    "tern_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, " \
    "$18, $19, $20, $21, $22)"
#define PG_APPEND_SQL                                                                         \
    "SELECT r.uidvalidity, r.uid, r.modseq, r.email_id, r.thread_id, "                        \
    "pg_notify('" PG_CHANNEL "', $1 || E'\\t' || r.mailbox_id || E'\\t' || r.modseq) "      \
    "FROM " PG_APPEND_CALL " r"
#define PG_APPEND_SQL_BATCH                                                                   \
    "SELECT r.uidvalidity, r.uid, r.modseq, r.email_id, r.thread_id FROM " PG_APPEND_CALL " r"

/* The body's file (thread pool): the message's bytes are read here when
 * they come from a file, hashed, and written to the blob directory. A
 * write error fails this append alone (nothing stored is touched). */
static void blob_write_member(pg_job *m)
{
    tern_store_req *r = m->req;
    if (m->blob_ready || r->status != TERN_STORE_OK || !r->in.account || !r->in.name)
        return;
    if (r->in.data_path && !r->in.data) {
        if (!m->owned_data && read_file(m, r->in.data_path) != 0)
            return;
    } else {
        m->data = r->in.data ? r->in.data : (const uint8_t *)"";
        m->len = r->in.data ? r->in.len : 0;
    }
    if (m->len > PG_APPEND_MAX)
        return; /* append_prepare refuses it */
    bool existed = false;
    int rc = pg_blob_write(m->pg->blob_dir, m->data, m->len, m->blob_hash, &existed);
    if (rc < 0) {
        char hex[65];
        pg_blob_hex(m->blob_hash, hex);
        TLOG_ERR("store", "event=blob_write_failed hash=%s error=\"%s\"", hex, strerror(-rc));
        pg_done(m, rc == -ENOSPC || rc == -EDQUOT || rc == -ENOMEM ? TERN_STORE_ETEMP
                                                                    : TERN_STORE_EIO,
                "cannot write the message body to the blob directory: %s", strerror(-rc));
        return;
    }
    m->blob_ready = true;
    m->blob_reused = existed;
}

static void blob_write_one(pg_job *j)
{
    blob_write_member(j);
}

/* After the commit: a body whose file was found in place may have been
 * taken away by the removal of an older row of the same bytes (see
 * pg_blob.c); it is written again from the bytes still in memory. */
static void blob_ensure_member(pg_job *m)
{
    if (!m->blob_ready || !m->blob_reused || m->redo || m->req->status != TERN_STORE_OK)
        return;
    int rc = pg_blob_ensure(m->pg->blob_dir, m->blob_hash, m->data, m->len);
    if (rc < 0) {
        char hex[65];
        pg_blob_hex(m->blob_hash, hex);
        TLOG_ERR("store", "event=blob_ensure_failed hash=%s error=\"%s\"", hex, strerror(-rc));
    }
}

static void blob_ensure_one(pg_job *j)
{
    blob_ensure_member(j);
}

static void blob_ensure_batch(pg_job *j)
{
    pg_job **mem = j->p;
    for (int64_t i = 0; i < j->n; i++)
        blob_ensure_member(mem[i]);
}
/* In a batch, one NOTIFY per mailbox touched, with its highest modseq,
 * goes after the members' statements (watchers need one wake-up, and each
 * notification costs the commit and every listener). */
#define PG_APPEND_NOTIFY                                                                      \
    "SELECT pg_notify('" PG_CHANNEL "', a.name || E'\\t' || b.id || E'\\t' || b.highest_modseq) " \
    "FROM accounts a JOIN mailboxes b ON b.account_id = a.id "                                 \
    "WHERE a.name = $1 AND b.name = ANY ($2::text[])"

/* Checks an append, reads its bytes, indexes its header and binds the
 * statement's parameters on m (kept there until sent). Returns 0, or -1
 * with m's status set. */
static int append_prepare(pg_job *m)
{
    tern_store_req *r = m->req;
    if (r->status != TERN_STORE_OK)
        return -1; /* its file could not be written */
    if (!r->in.account || !r->in.name)
        return pg_done(m, TERN_STORE_EINVAL, "no mailbox"), -1;
    m->acct = pg_norm_account(&m->a, r->in.account);
    m->mbox = canon(m, r->in.name);
    if (r->in.data_path && !r->in.data) {
        if (!m->owned_data && read_file(m, r->in.data_path) != 0)
            return -1;
    } else {
        m->data = r->in.data ? r->in.data : (const uint8_t *)"";
        m->len = r->in.data ? r->in.len : 0;
    }
    size_t plen = r->in.prefix ? r->in.prefix_len : 0;
    if (!r->in.prefix && r->in.prefix_len)
        return pg_done(m, TERN_STORE_EINVAL, "no prefix data"), -1;
    if (m->len > PG_APPEND_MAX || plen > PG_APPEND_MAX - m->len)
        return pg_done(m, TERN_STORE_EINVAL, "message too large"), -1;
    /* The header index is of the whole message: prefix, then the head of
     * the shared part. */
    const uint8_t *head = m->data;
    size_t head_len = m->len;
    if (plen) {
        size_t take = m->len < PG_INDEX_HEAD_MAX ? m->len : PG_INDEX_HEAD_MAX;
        uint8_t *h = tern_arena_alloc(&m->a, plen + take + 1);
        if (!h)
            return pg_done(m, TERN_STORE_ETEMP, "out of memory"), -1;
        memcpy(h, r->in.prefix, plen);
        if (take)
            memcpy(h + plen, m->data, take);
        head = h;
        head_len = plen + take;
    }
    tern_msg_index idx;
    if (tern_msg_index_build(&m->a, head, head_len, &idx) != 0)
        return pg_done(m, TERN_STORE_ETEMP, "out of memory indexing the message"), -1;
    size_t refs_len = 1;
    for (size_t i = 0; i < idx.n_references; i++)
        refs_len += strlen(idx.references[i]) + 1;
    char *refs = tern_arena_alloc(&m->a, refs_len);
    size_t o = 0;
    for (size_t i = 0; i < idx.n_references; i++) {
        size_t l = strlen(idx.references[i]);
        if (o)
            refs[o++] = ' ';
        memcpy(refs + o, idx.references[i], l);
        o += l;
    }
    refs[o] = 0;
    const char **names = tern_arena_alloc(&m->a, (idx.n_fields + 1) * sizeof *names);
    const char **values = tern_arena_alloc(&m->a, (idx.n_fields + 1) * sizeof *values);
    for (size_t i = 0; i < idx.n_fields; i++) {
        names[i] = idx.fields[i].name ? idx.fields[i].name : "";
        values[i] = idx.fields[i].value ? idx.fields[i].value : "";
    }
    int64_t idate = r->in.internal_date ? r->in.internal_date : (int64_t)time(NULL);
    m->np = 0;
    pg_p_str(m, m->acct);                   /* $1 */
    pg_p_str(m, m->mbox);                   /* $2 */
    pg_p_u64(m, plen + m->len);             /* $3 */
    if (m->pg->blob_dir)
        pg_p_bin(m, NULL, 0);               /* $4: in the blob directory */
    else
        pg_p_bin(m, m->data, m->len);       /* $4 */
    pg_p_u64(m, r->in.flags & 0x1f);        /* $5 */
    pg_p_i64(m, idate);                     /* $6 */
    pg_p_strarray(m, (const char *const *)idx.references, idx.n_references, false); /* $7 */
    pg_p_str(m, opt_text(m, idx.message_id)); /* $8 */
    if (idx.date)
        pg_p_i64(m, idx.date);              /* $9 */
    else
        pg_p_str(m, NULL);
    pg_p_str(m, opt_text(m, idx.subject));  /* $10 */
    pg_p_str(m, opt_text(m, idx.base_subject));
    pg_p_str(m, opt_text(m, idx.from));
    pg_p_str(m, opt_text(m, idx.to));
    pg_p_str(m, opt_text(m, idx.cc));
    pg_p_str(m, opt_text(m, idx.bcc));      /* $15 */
    pg_p_str(m, opt_text(m, idx.in_reply_to));
    pg_p_str(m, o ? pg_clean_text(m, refs) : NULL); /* $17 */
    pg_p_strarray(m, r->in.keywords.names, r->in.keywords.n, false); /* $18: as written */
    pg_p_strarray(m, names, idx.n_fields, true);
    pg_p_strarray(m, values, idx.n_fields, false); /* $20 */
    pg_p_bin(m, plen ? r->in.prefix : NULL, plen); /* $21: NULL when none */
    if (m->pg->blob_dir) {
        if (!m->blob_ready)
            return pg_done(m, TERN_STORE_EIO, "message body not written"), -1;
        pg_p_bin(m, m->blob_hash, sizeof m->blob_hash); /* $22 */
    } else {
        pg_p_bin(m, NULL, 0); /* $22: NULL, the database hashes $4 */
    }
    return 0;
}

static void append_out(pg_job *m, const PGresult *res)
{
    tern_store_req *r = m->req;
    r->out.append.uidvalidity = (uint32_t)pg_u64(res, 0, 0);
    r->out.append.uid = (uint32_t)pg_u64(res, 0, 1);
    r->out.append.modseq = pg_u64(res, 0, 2);
    r->out.append.id = tern_arena_strdup(&r->arena, PQgetvalue(res, 0, 3));
    r->out.append.thread_id = tern_arena_strdup(&r->arena, PQgetvalue(res, 0, 4));
}

/* An append alone is that one statement in autocommit: one round trip
 * (BEGIN and COMMIT around it were two more, and bought nothing: the
 * statement is atomic, and the follow-up below only explains a no-op). */
int pg_op_append(pg_job *j)
{
    PG_BEGIN(j);
    if (j->pg->blob_dir && !j->blob_ready)
        PG_WORK(j, blob_write_one);
    if (append_prepare(j) != 0)
        return PG_DONE;
    PG_QUERY_PREPARED(j, PG_STMT_APPEND, PG_APPEND_SQL);
    if (PQntuples(j->res) == 0) {
        pg_p_str(j, j->acct);
        pg_p_str(j, j->mbox);
        pg_p_u64(j, j->len + (j->req->in.prefix ? j->req->in.prefix_len : 0));
        PG_QUERY(j, "SELECT EXISTS (SELECT 1 FROM mailboxes b WHERE b.account_id = a.id "
                    "AND b.name = $2), (quota_bytes = 0 OR used_bytes + $3 <= quota_bytes) "
                    "AND (quota_messages = 0 OR used_messages + 1 <= quota_messages) "
                    "FROM accounts a WHERE a.name = $1");
        if (PQntuples(j->res) == 0)
            return pg_done(j, TERN_STORE_ENOTFOUND, "no such account");
        if (!is_true(j->res, 0, 0))
            return pg_done(j, TERN_STORE_ENOTFOUND, "no such mailbox");
        if (!is_true(j->res, 0, 1))
            return pg_done(j, TERN_STORE_EQUOTA, "over quota");
        return pg_done(j, TERN_STORE_ETEMP, "append raced with a concurrent change; retry");
    }
    append_out(j, j->res);
    if (j->blob_reused)
        PG_WORK(j, blob_ensure_one);
    PG_END(j);
}

/* The statements inside tern_append are planned once per connection:
 * generic plans from the first call (the default makes five custom plans
 * first, then keeps choosing), with sequential scans off while they are
 * made. Every access there is by key, and a plan made while a table was
 * small (a new database) must not scan it after it has grown. Both
 * settings are LOCAL, so they end with the batch's transaction and never
 * reach the connection's other statements. */
#define PG_APPEND_PLANNING                                                          \
    "SELECT set_config('plan_cache_mode', 'force_generic_plan', true), "            \
    "set_config('enable_seqscan', 'off', true)"

/* Appends to one account that were queued together (pg.c groups them):
 * one pipeline of BEGIN, the planner settings, one statement each, one NOTIFY per mailbox,
 * COMMIT and a sync, so they cost one round trip, share the account's
 * lock and one WAL flush. A
 * member whose statement changed nothing (no mailbox, over quota) is run
 * again alone after the commit, where it gets its precise answer; if a
 * statement fails, the whole batch rolls back and pg.c runs each member
 * alone. */
int pg_op_append_batch(pg_job *j)
{
    pg_job **mem = j->p;
    PG_BEGIN(j);
    /* Every member's file is durable before the transaction is sent. */
    if (j->pg->blob_dir)
        PG_WORK_EACH(j, mem, (int)j->n, blob_write_member);
    for (int64_t i = 0; i < j->n; i++)
        append_prepare(mem[i]);
    if (!(j->conn->prepared & ((uint64_t)1 << PG_STMT_APPEND_BATCH)))
        PG_PREPARE(j, PG_STMT_APPEND_BATCH, PG_APPEND_SQL_BATCH);
    {
        pg_conn *c = j->conn;
        int sent = 0;
        const char **boxes = tern_arena_alloc(&j->a, (size_t)j->n * sizeof *boxes);
        if (!boxes)
            return pg_done(j, TERN_STORE_ETEMP, "out of memory");
        for (int64_t i = 0; i < j->n; i++)
            if (mem[i]->req->status == TERN_STORE_OK)
                boxes[sent++] = mem[i]->mbox;
        if (sent == 0)
            return PG_DONE;
        j->np = 0;
        pg_p_str(j, j->acct_key);
        pg_p_strarray(j, boxes, (size_t)sent, false);
        if (pg_conn_pipeline_enter(c) < 0 || pg_conn_pipeline_query(c, "BEGIN") < 0 ||
            pg_conn_pipeline_query(c, PG_APPEND_PLANNING) < 0)
            return pg_done(j, TERN_STORE_ETEMP, "database connection lost");
        j->in_tx = true;
        for (int64_t i = 0; i < j->n; i++) {
            pg_job *m = mem[i];
            if (m->req->status != TERN_STORE_OK)
                continue;
            if (pg_conn_pipeline_prepared(c, PG_STMT_APPEND_BATCH, m->np, m->pv, m->pl, m->pf) < 0)
                return pg_done(j, TERN_STORE_ETEMP, "database connection lost");
        }
        if (pg_conn_pipeline_params(c, PG_APPEND_NOTIFY, j->np, j->pv, j->pl, j->pf) < 0 ||
            pg_conn_pipeline_query(c, "COMMIT") < 0 || pg_conn_pipeline_sync(c) < 0)
            return pg_done(j, TERN_STORE_ETEMP, "database connection lost");
        j->u[0] = (uint64_t)sent;
    }
    PG_AWAIT(j);
    {
        const PGresult *last = j->pipe_n ? j->pipe[j->pipe_n - 1] : NULL;
        bool committed = last && PQresultStatus(last) == PGRES_COMMAND_OK &&
                         !strcmp(PQcmdStatus((PGresult *)last), "COMMIT");
        if (!committed) {
            for (int i = 0; i < j->pipe_n; i++)
                if (PQresultStatus(j->pipe[i]) == PGRES_FATAL_ERROR)
                    return pg_map_error(j, j->pipe[i]), PG_DONE;
            return pg_done(j, TERN_STORE_EIO, "batch transaction not committed");
        }
        if ((uint64_t)j->pipe_n != j->u[0] + 4) {
            /* Committed, but which result is whose is unknown: the members
             * fail without a rerun, which could store them twice. */
            j->in_tx = false;
            j->conn_lost = true;
            return pg_done(j, TERN_STORE_EIO, "pipeline answered %d results for %d", j->pipe_n,
                           (int)j->u[0] + 4);
        }
    }
    j->in_tx = false;
    {
        int k = 2;
        for (int64_t i = 0; i < j->n; i++) {
            pg_job *m = mem[i];
            if (m->req->status != TERN_STORE_OK)
                continue;
            const PGresult *res = j->pipe[k++];
            if (PQntuples(res) == 0)
                m->redo = true;
            else
                append_out(m, res);
        }
        bool reused = false;
        for (int64_t i = 0; i < j->n; i++)
            reused = reused || (mem[i]->blob_reused && !mem[i]->redo);
        if (!reused)
            return PG_DONE;
    }
    PG_WORK(j, blob_ensure_batch);
    PG_END(j);
}

/* The mailbox of (account, name) with its largest uid, for "*". */
#define PG_LOOKUP_MAILBOX                                                        \
    "SELECT b.id, (SELECT coalesce(max(m.uid), 0) FROM messages m WHERE m.mailbox_id = b.id), " \
    "b.highest_modseq, b.expunged_below_modseq, b.uidvalidity "                 \
    "FROM mailboxes b JOIN accounts a ON a.id = b.account_id WHERE a.name = $1 AND b.name = $2"

#define PG_FETCH_PAGE 50000

/* How many uids a set can name at most, "*" being max_uid. */
static uint64_t uidset_span(const tern_uid_set *set, uint64_t max_uid)
{
    uint64_t n = 0;
    for (size_t i = 0; i < set->n; i++) {
        uint64_t x = set->ranges[i].first == UINT32_MAX ? max_uid : set->ranges[i].first;
        uint64_t y = set->ranges[i].last == UINT32_MAX ? max_uid : set->ranges[i].last;
        uint64_t lo = x < y ? x : y, hi = x < y ? y : x;
        if (hi > max_uid)
            hi = max_uid;
        if (lo <= hi)
            n += hi - lo + 1;
    }
    return n;
}

typedef struct fetch_page {
    struct fetch_page *next;
    tern_message_info *m;
    size_t n;
} fetch_page;

typedef struct fetch_kw {
    uint32_t *uid;           /* ascending */
    char **word;
    size_t n, at;
} fetch_kw;

/* Gives m the keywords listed for its uid in kw (both in uid order). */
static void attach_keywords(pg_job *j, fetch_kw *kw, tern_message_info *m)
{
    while (kw->at < kw->n && kw->uid[kw->at] < m->uid)
        kw->at++;
    size_t from = kw->at;
    while (kw->at < kw->n && kw->uid[kw->at] == m->uid)
        kw->at++;
    m->n_keywords = kw->at - from;
    m->keywords = NULL;
    if (m->n_keywords) {
        m->keywords = tern_arena_alloc(&j->req->arena, m->n_keywords * sizeof(char *));
        if (m->keywords)
            memcpy(m->keywords, kw->word + from, m->n_keywords * sizeof(char *));
        else
            m->n_keywords = 0;
    }
}

/* Small sets are one statement (keywords by a subquery per message, an
 * index probe each). A set that may be large takes the mailbox's keywords
 * for the set first, then reads the messages through a cursor a page at a
 * time and merges, so libpq never holds the whole mailbox's rows next to
 * the result being built, and no plan can join per message against an
 * aggregate. */
int pg_op_fetch(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account || !r->in.name)
        return pg_done(j, TERN_STORE_EINVAL, "no mailbox");
    pg_p_str(j, pg_norm_account(&j->a, r->in.account));
    pg_p_str(j, canon(j, r->in.name));
    PG_QUERY_PREPARED(j, PG_STMT_LOOKUP_MAILBOX, PG_LOOKUP_MAILBOX);
    if (PQntuples(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such mailbox");
    j->mailbox_id = pg_u64(j->res, 0, 0);
    j->u[0] = pg_u64(j->res, 0, 1);
    if (uidset_span(&r->in.uids, j->u[0]) <= PG_FETCH_PAGE) {
        pg_p_u64(j, j->mailbox_id);
        pg_uidset(j, &r->in.uids, j->u[0]);
        PG_QUERY(j, tern_arena_printf(&j->a, "SELECT " PG_MESSAGE_COLS " FROM messages m "
                                      "WHERE m.mailbox_id = $1 AND %s ORDER BY m.uid",
                                      j->uidset_sql));
        {
            int n = PQntuples(j->res);
            r->out.messages = tern_arena_alloc(&r->arena, (size_t)(n + 1) * sizeof *r->out.messages);
            for (int i = 0; i < n; i++)
                pg_message_row(j, j->res, i, &r->out.messages[i]);
            r->out.n_messages = (size_t)n;
        }
        return PG_DONE;
    }
    /* One snapshot for the keywords and the cursor. */
    PG_TX(j);
    PG_QUERY(j, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY");
    pg_p_u64(j, j->mailbox_id);
    pg_uidset(j, &r->in.uids, j->u[0]);
    PG_QUERY(j, tern_arena_printf(&j->a, "SELECT m.uid, k.keyword FROM keywords k "
                                  "JOIN messages m ON m.id = k.message WHERE m.mailbox_id = $1 "
                                  "AND %s ORDER BY m.uid, k.keyword", j->uidset_sql));
    {
        size_t n = (size_t)PQntuples(j->res);
        fetch_kw *kw = tern_arena_alloc(&j->a, sizeof *kw);
        kw->uid = tern_arena_alloc(&j->a, (n + 1) * sizeof *kw->uid);
        kw->word = tern_arena_alloc(&j->a, (n + 1) * sizeof *kw->word);
        if (!kw->uid || !kw->word)
            return pg_done(j, TERN_STORE_ETEMP, "out of memory");
        for (size_t i = 0; i < n; i++) {
            kw->uid[i] = (uint32_t)pg_u64(j->res, (int)i, 0);
            kw->word[i] = pg_str(j, j->res, (int)i, 1);
        }
        kw->n = n;
        j->q = kw;
    }
    pg_p_u64(j, j->mailbox_id);
    pg_uidset(j, &r->in.uids, j->u[0]);
    PG_QUERY(j, tern_arena_printf(&j->a, "DECLARE tern_fetch NO SCROLL CURSOR FOR "
                                  "SELECT m.uid, m.email_id, m.thread_id, m.flags, m.modseq, "
                                  "m.internal_date, m.size, NULL FROM messages m "
                                  "WHERE m.mailbox_id = $1 AND %s ORDER BY m.uid", j->uidset_sql));
    j->p = NULL;
    j->n = 0;
    do {
        PG_QUERY(j, tern_arena_printf(&j->a, "FETCH %d FROM tern_fetch", PG_FETCH_PAGE));
        {
            size_t n = (size_t)PQntuples(j->res);
            fetch_kw *kw = j->q;
            fetch_page *page = tern_arena_alloc(&j->a, sizeof *page);
            page->m = tern_arena_alloc(&j->a, (n + 1) * sizeof *page->m);
            if (!page->m)
                return pg_done(j, TERN_STORE_ETEMP, "out of memory");
            for (size_t i = 0; i < n; i++) {
                pg_message_row(j, j->res, (int)i, &page->m[i]);
                attach_keywords(j, kw, &page->m[i]);
            }
            page->n = n;
            /* Pages are kept newest first; assembled in order below. */
            page->next = j->p;
            j->p = page;
            j->n += (int64_t)n;
            j->i = (int64_t)n;
        }
    } while (j->i == PG_FETCH_PAGE);
    {
        size_t total = (size_t)j->n, at = total;
        r->out.messages = tern_arena_alloc(&r->arena, (total + 1) * sizeof *r->out.messages);
        if (!r->out.messages)
            return pg_done(j, TERN_STORE_ETEMP, "out of memory");
        for (fetch_page *page = j->p; page; page = page->next) {
            at -= page->n;
            memcpy(r->out.messages + at, page->m, page->n * sizeof *page->m);
        }
        r->out.n_messages = total;
    }
    PG_END(j);
}

static uint64_t be_u32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return ((uint64_t)u[0] << 24) | ((uint64_t)u[1] << 16) | ((uint64_t)u[2] << 8) | u[3];
}

/* The slice of an external body (thread pool): j->q is the output with
 * the prefix's part already in it (j->u[2] bytes), j->u[3] the offset in
 * the body, j->u[4] the bytes wanted, j->mbox2 the hash. */
static void fetch_body_read(pg_job *j)
{
    tern_store_req *r = j->req;
    uint8_t *out = j->q;
    size_t got = 0;
    int rc = pg_blob_read(j->pg->blob_dir, j->mbox2, j->u[3], (size_t)j->u[4], out + j->u[2], &got);
    if (rc < 0 || got != (size_t)j->u[4]) {
        TLOG_ERR("store", "event=blob_read_failed hash=%s error=\"%s\"", j->mbox2,
                 rc < 0 ? strerror(-rc) : "file shorter than its message");
        pg_done(j, TERN_STORE_EIO, "message body %s unreadable: %s", j->mbox2,
                rc < 0 ? strerror(-rc) : "short file");
        return;
    }
    r->out.body = out;
    r->out.body_len = (size_t)(j->u[2] + got);
}

int pg_op_fetch_body(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account || !r->in.name)
        return pg_done(j, TERN_STORE_EINVAL, "no mailbox");
    {
        size_t max = r->in.max_len && r->in.max_len < PG_FETCH_BODY_MAX ? r->in.max_len
                                                                        : PG_FETCH_BODY_MAX;
        if (r->in.offset > (uint64_t)INT32_MAX)
            return pg_done(j, TERN_STORE_EINVAL, "offset too large");
        j->u[1] = max;
        pg_p_str(j, pg_norm_account(&j->a, r->in.account));
        pg_p_str(j, canon(j, r->in.name));
        pg_p_u64(j, r->in.uid);
        pg_p_u64(j, r->in.offset + 1);
        pg_p_u64(j, max);
    }
    j->binary_result = true;
    /* The message is the row's prefix, then the (maybe shared) body: the
     * slice takes what it needs of each, so only the body's chunks in
     * range are read ($4 is 1-based). An external body (blob directory)
     * has no data: its length is the message's size less the prefix, and
     * its part of the slice is read from the file. */
    PG_QUERY(j, "SELECT (x.pl + coalesce(length(x.data), x.size - x.pl))::int4, "
                "substring(x.p FROM $4::int FOR $5::int) || "
                "CASE WHEN x.data IS NOT NULL AND $4::int - 1 + $5::int > x.pl THEN substring(x.data FROM "
                "greatest($4::int - x.pl, 1) FOR $5::int - greatest(least(x.pl - $4::int + 1, "
                "$5::int), 0)) ELSE ''::bytea END, x.ext, x.pl::int4, coalesce(x.hash, ''::bytea) "
                "FROM (SELECT coalesce(m.prefix, ''::bytea) AS p, "
                "coalesce(length(m.prefix), 0) AS pl, bd.data, bd.external AS ext, bd.hash, m.size "
                "FROM accounts a JOIN mailboxes b ON b.account_id = a.id "
                "JOIN messages m ON m.mailbox_id = b.id JOIN bodies bd ON bd.id = m.body_ref "
                "WHERE a.name = $1 AND b.name = $2 AND m.uid = $3) x");
    if (PQntuples(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such message");
    {
        uint64_t total = be_u32(PQgetvalue(j->res, 0, 0));
        size_t n = (size_t)PQgetlength(j->res, 0, 1);
        bool ext = PQgetvalue(j->res, 0, 2)[0] != 0;
        uint64_t pl = be_u32(PQgetvalue(j->res, 0, 3));
        r->out.body_total = total;
        uint64_t at = r->in.offset + n; /* where the prefix's part ends */
        uint64_t want = 0;
        if (ext && at < total && n < j->u[1]) {
            want = j->u[1] - n;
            if (want > total - at)
                want = total - at;
        }
        r->out.body = tern_arena_alloc(&r->arena, n + want + 1);
        if (!r->out.body)
            return pg_done(j, TERN_STORE_ETEMP, "out of memory");
        memcpy(r->out.body, PQgetvalue(j->res, 0, 1), n);
        r->out.body_len = n;
        if (want == 0)
            return PG_DONE;
        if (!j->pg->blob_dir)
            return pg_done(j, TERN_STORE_EIO, "message body is in the blob directory, and "
                                              "postgres.blob_dir is not set");
        if (PQgetlength(j->res, 0, 4) != 32)
            return pg_done(j, TERN_STORE_EIO, "external body without a hash");
        char *hex = tern_arena_alloc(&j->a, 65);
        if (!hex)
            return pg_done(j, TERN_STORE_ETEMP, "out of memory");
        pg_blob_hex((const uint8_t *)PQgetvalue(j->res, 0, 4), hex);
        j->mbox2 = hex;
        j->q = r->out.body;
        j->u[2] = n;
        j->u[3] = at - pl;
        j->u[4] = want;
    }
    PG_WORK(j, fetch_body_read);
    PG_END(j);
}

/* The first statement of the ops that change messages in one mailbox:
 * takes the account's next modseq (and so its lock), finds the mailbox. */
#define PG_LOCK_MAILBOX                                                          \
    "WITH a AS (UPDATE accounts SET highest_modseq = highest_modseq + 1 WHERE name = $1 " \
    "RETURNING id, highest_modseq, quota_bytes, quota_messages, used_bytes, used_messages) " \
    "SELECT a.id, a.highest_modseq, a.quota_bytes, a.quota_messages, a.used_bytes, "      \
    "a.used_messages, b.id, (SELECT coalesce(max(m.uid), 0) FROM messages m "              \
    "WHERE m.mailbox_id = b.id), b.uidvalidity, b.uidnext "                                \
    "FROM a JOIN mailboxes b ON b.account_id = a.id AND b.name = $2"

static void locked_row(pg_job *j)
{
    j->account_id = pg_u64(j->res, 0, 0);
    j->modseq = pg_u64(j->res, 0, 1);
    j->mailbox_id = pg_u64(j->res, 0, 6);
    j->u[0] = pg_u64(j->res, 0, 7); /* max uid */
}

int pg_op_set_flags(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account || !r->in.name)
        return pg_done(j, TERN_STORE_EINVAL, "no mailbox");
    j->acct = pg_norm_account(&j->a, r->in.account);
    PG_TX(j);
    pg_p_str(j, j->acct);
    pg_p_str(j, canon(j, r->in.name));
    PG_QUERY_PREPARED(j, PG_STMT_LOCK_MAILBOX, PG_LOCK_MAILBOX);
    if (PQntuples(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such mailbox");
    locked_row(j);
    if (r->in.unchanged_since) {
        pg_p_u64(j, j->mailbox_id);
        pg_p_u64(j, r->in.unchanged_since);
        pg_uidset(j, &r->in.uids, j->u[0]);
        PG_QUERY(j, tern_arena_printf(&j->a, "SELECT m.uid FROM messages m WHERE m.mailbox_id = $1 "
                                      "AND m.modseq > $2 AND %s ORDER BY m.uid", j->uidset_sql));
        {
            int n = PQntuples(j->res);
            r->out.uids = tern_arena_alloc(&r->arena, (size_t)(n + 1) * sizeof *r->out.uids);
            for (int i = 0; i < n; i++)
                r->out.uids[i] = (uint32_t)pg_u64(j->res, i, 0);
            r->out.n_uids = (size_t)n;
        }
    }
    {
        const char *fexpr = r->in.flags_mode == TERN_FLAGS_ADD      ? "(m.flags | $3::int)"
                            : r->in.flags_mode == TERN_FLAGS_REMOVE ? "(m.flags & ~$3::int)"
                                                                    : "$3::int";
        const char *kd = "", *ki = "", *kchanged = "";
        bool kw = r->in.keywords.n > 0;
        pg_p_u64(j, j->mailbox_id);                 /* $1 */
        pg_p_u64(j, j->modseq);                     /* $2 */
        pg_p_u64(j, r->in.flags & 0x1f);            /* $3 */
        pg_p_u64(j, r->in.unchanged_since ? r->in.unchanged_since : UINT64_MAX >> 1); /* $4 */
        /* Keywords as written ($5); matched without case, and a new one
         * takes the spelling the mailbox already uses (schema.md). */
        pg_p_strarray(j, r->in.keywords.names, r->in.keywords.n, false); /* $5 */
        if (r->in.flags_mode == TERN_FLAGS_REPLACE)
            kd = ", kd AS (DELETE FROM keywords k USING t WHERE k.message = t.id "
                 "AND NOT (lower(k.keyword) = ANY (SELECT lower(w) FROM unnest($5::text[]) w)) "
                 "RETURNING k.message)";
        else if (r->in.flags_mode == TERN_FLAGS_REMOVE && kw)
            kd = ", kd AS (DELETE FROM keywords k USING t WHERE k.message = t.id "
                 "AND lower(k.keyword) = ANY (SELECT lower(w) FROM unnest($5::text[]) w) "
                 "RETURNING k.message)";
        if (r->in.flags_mode != TERN_FLAGS_REMOVE && kw)
            ki = ", sp AS (SELECT DISTINCT ON (lower(w)) coalesce((SELECT k.keyword FROM keywords k "
                 "JOIN messages mm ON mm.id = k.message WHERE mm.mailbox_id = $1 "
                 "AND lower(k.keyword) = lower(w) LIMIT 1), w) AS kw "
                 "FROM unnest($5::text[]) WITH ORDINALITY u(w, i) ORDER BY lower(w), i), "
                 "ki AS (INSERT INTO keywords (message, keyword) SELECT DISTINCT t.id, sp.kw "
                 "FROM t, sp WHERE NOT EXISTS (SELECT 1 FROM keywords x WHERE x.message = t.id "
                 "AND lower(x.keyword) = lower(sp.kw)) ON CONFLICT DO NOTHING RETURNING message)";
        if (*kd && *ki)
            kchanged = " OR m.id IN (SELECT message FROM kd) OR m.id IN (SELECT message FROM ki)";
        else if (*kd)
            kchanged = " OR m.id IN (SELECT message FROM kd)";
        else if (*ki)
            kchanged = " OR m.id IN (SELECT message FROM ki)";
        pg_uidset(j, &r->in.uids, j->u[0]);
        j->uidset_sql = tern_arena_printf(&j->a,
            "WITH t AS (SELECT m.id FROM messages m WHERE m.mailbox_id = $1 AND m.modseq <= $4 "
            "AND $5::text[] IS NOT NULL AND %s)%s%s UPDATE messages m SET flags = %s, modseq = $2 FROM t "
            "WHERE m.id = t.id AND (m.flags <> %s%s)",
            j->uidset_sql, kd, ki, fexpr, fexpr, kchanged);
    }
    PG_QUERY(j, j->uidset_sql);
    j->n = (int64_t)affected(j->res);
    pg_p_u64(j, j->mailbox_id);
    pg_p_u64(j, j->modseq);
    pg_p_str(j, j->n > 0 ? "t" : "f");
    PG_QUERY(j, "UPDATE mailboxes SET highest_modseq = CASE WHEN $3::bool THEN $2 "
                "ELSE highest_modseq END WHERE id = $1 RETURNING highest_modseq");
    r->out.highest_modseq = pg_u64(j->res, 0, 0);
    if (j->n > 0) {
        pg_note(j, j->mailbox_id, j->modseq);
        pg_p_u64(j, j->mailbox_id);
        pg_p_u64(j, j->modseq);
        PG_QUERY(j, "SELECT " PG_MESSAGE_COLS " FROM messages m WHERE m.mailbox_id = $1 "
                    "AND m.modseq = $2 ORDER BY m.uid");
        {
            int n = PQntuples(j->res);
            r->out.messages = tern_arena_alloc(&r->arena, (size_t)(n + 1) * sizeof *r->out.messages);
            for (int i = 0; i < n; i++)
                pg_message_row(j, j->res, i, &r->out.messages[i]);
            r->out.n_messages = (size_t)n;
        }
    }
    PG_END(j);
}

int pg_op_expunge(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account || !r->in.name)
        return pg_done(j, TERN_STORE_EINVAL, "no mailbox");
    j->acct = pg_norm_account(&j->a, r->in.account);
    PG_TX(j);
    pg_p_str(j, j->acct);
    pg_p_str(j, canon(j, r->in.name));
    PG_QUERY_PREPARED(j, PG_STMT_LOCK_MAILBOX, PG_LOCK_MAILBOX);
    if (PQntuples(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such mailbox");
    locked_row(j);
    pg_p_u64(j, j->mailbox_id);
    pg_p_u64(j, j->modseq);
    pg_p_i64(j, (int64_t)time(NULL));
    pg_p_u64(j, j->account_id);
    if (r->in.uids.n)
        pg_uidset(j, &r->in.uids, j->u[0]);
    else
        j->uidset_sql = "true";
    PG_QUERY(j, tern_arena_printf(&j->a,
        "WITH d AS (DELETE FROM messages m WHERE m.mailbox_id = $1 AND m.flags & 8 <> 0 AND %s "
        "RETURNING m.uid, m.size, m.body_ref), "
        "c AS (SELECT body_ref, count(*) AS n FROM d GROUP BY body_ref), "
        PG_BODY_UNREF ", "
        "e AS (INSERT INTO expunged (mailbox_id, uid, modseq, at) SELECT $1, uid, $2, $3 FROM d), "
        "au AS (UPDATE accounts SET used_bytes = used_bytes - (SELECT coalesce(sum(size), 0) FROM d), "
        "used_messages = used_messages - (SELECT count(*) FROM d) WHERE id = $4) "
        "SELECT uid, " PG_BODY_DEAD " FROM d ORDER BY uid", j->uidset_sql));
    {
        int n = PQntuples(j->res);
        r->out.uids = tern_arena_alloc(&r->arena, (size_t)(n + 1) * sizeof *r->out.uids);
        for (int i = 0; i < n; i++)
            r->out.uids[i] = (uint32_t)pg_u64(j->res, i, 0);
        r->out.n_uids = (size_t)n;
        j->n = n;
        j->p = n > 0 && !PQgetisnull(j->res, 0, 1) ? tern_arena_strdup(&j->a, PQgetvalue(j->res, 0, 1)) : NULL;
    }
    if (j->p) {
        pg_p_str(j, j->p);
        PG_QUERY(j, PG_BODY_DELETE);
        pg_blob_note_dead(j, j->res);
    }
    {
        /* Expunge records older than the retention bound go; the mailbox
         * remembers the newest modseq it can no longer answer for. */
        uint64_t ret_s = j->pg->retention_ms / 1000;
        int64_t now = (int64_t)time(NULL);
        pg_p_u64(j, j->mailbox_id);
        pg_p_u64(j, j->modseq);
        pg_p_str(j, j->n > 0 ? "t" : "f");
        pg_p_i64(j, ret_s ? now - (int64_t)ret_s : INT64_MIN);
    }
    PG_QUERY(j, "WITH p AS (DELETE FROM expunged WHERE mailbox_id = $1 AND at < $4 RETURNING modseq) "
                "UPDATE mailboxes SET highest_modseq = CASE WHEN $3::bool THEN $2 ELSE highest_modseq END, "
                "expunged_below_modseq = greatest(expunged_below_modseq, "
                "(SELECT coalesce(max(modseq), 0) FROM p)) WHERE id = $1 RETURNING highest_modseq");
    r->out.highest_modseq = pg_u64(j->res, 0, 0);
    if (j->n > 0)
        pg_note(j, j->mailbox_id, j->modseq);
    PG_END(j);
}

/* COPY and MOVE: same account, source and target found under the
 * account's lock; new uids are the target's uidnext onwards in source uid
 * order, which is the UIDPLUS map. */
static int copy_or_move(pg_job *j, bool move)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account || !r->in.name || !r->in.new_name)
        return pg_done(j, TERN_STORE_EINVAL, "no mailbox");
    j->acct = pg_norm_account(&j->a, r->in.account);
    PG_TX(j);
    pg_p_str(j, j->acct);
    pg_p_str(j, canon(j, r->in.name));
    pg_p_str(j, canon(j, r->in.new_name));
    PG_QUERY(j, "WITH a AS (UPDATE accounts SET highest_modseq = highest_modseq + 1 WHERE name = $1 "
                "RETURNING id, highest_modseq, quota_bytes, quota_messages, used_bytes, used_messages) "
                "SELECT a.id, a.highest_modseq, a.quota_bytes, a.quota_messages, a.used_bytes, "
                "a.used_messages, s.id, (SELECT coalesce(max(m.uid), 0) FROM messages m "
                "WHERE m.mailbox_id = s.id), d.id, d.uidvalidity, d.uidnext "
                "FROM a JOIN mailboxes s ON s.account_id = a.id AND s.name = $2 "
                "JOIN mailboxes d ON d.account_id = a.id AND d.name = $3");
    if (PQntuples(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such mailbox");
    locked_row(j);
    j->u[1] = pg_u64(j->res, 0, 2); /* quota bytes */
    j->u[2] = pg_u64(j->res, 0, 3); /* quota messages */
    j->u[3] = pg_u64(j->res, 0, 4); /* used bytes */
    j->u[4] = pg_u64(j->res, 0, 5); /* used messages */
    j->mailbox2_id = pg_u64(j->res, 0, 8);
    r->out.dst_uidvalidity = (uint32_t)pg_u64(j->res, 0, 9);
    j->u[5] = pg_u64(j->res, 0, 10); /* target uidnext */
    pg_p_u64(j, j->mailbox_id);
    pg_uidset(j, &r->in.uids, j->u[0]);
    PG_QUERY(j, tern_arena_printf(&j->a, "SELECT count(*), coalesce(sum(m.size), 0) FROM messages m "
                                  "WHERE m.mailbox_id = $1 AND %s", j->uidset_sql));
    j->n = pg_i64(j->res, 0, 0);
    j->u[6] = pg_u64(j->res, 0, 1);
    if (j->n == 0)
        return PG_DONE;
    if (!move && ((j->u[1] && j->u[3] + j->u[6] > j->u[1]) ||
                  (j->u[2] && j->u[4] + (uint64_t)j->n > j->u[2])))
        return pg_done(j, TERN_STORE_EQUOTA, "over quota");
    if ((uint64_t)j->u[5] + (uint64_t)j->n > UINT32_MAX)
        return pg_done(j, TERN_STORE_EIO, "target mailbox out of uids");
    pg_p_u64(j, j->mailbox_id);    /* $1 */
    pg_p_u64(j, j->mailbox2_id);   /* $2 */
    pg_p_u64(j, j->u[5]);          /* $3 */
    pg_p_u64(j, j->modseq);        /* $4 */
    pg_p_i64(j, (int64_t)time(NULL)); /* $5 */
    pg_uidset(j, &r->in.uids, j->u[0]);
    if (move)
        j->uidset_sql = tern_arena_printf(&j->a,
            "WITH s AS (SELECT m.id, m.uid, row_number() OVER (ORDER BY m.uid) AS rn "
            "FROM messages m WHERE m.mailbox_id = $1 AND %s), "
            "mv AS (UPDATE messages m SET mailbox_id = $2, uid = $3 + s.rn - 1, modseq = $4, recent = 1 "
            "FROM s WHERE m.id = s.id RETURNING s.uid AS old_uid, m.uid AS new_uid), "
            "kf AS (UPDATE keywords k SET keyword = coalesce((SELECT k2.keyword FROM keywords k2 "
            "JOIN messages m2 ON m2.id = k2.message WHERE m2.mailbox_id = $2 "
            "AND lower(k2.keyword) = lower(k.keyword) LIMIT 1), k.keyword) FROM s "
            "WHERE k.message = s.id), "
            "e AS (INSERT INTO expunged (mailbox_id, uid, modseq, at) "
            "SELECT $1, old_uid, $4, $5 FROM mv) "
            "SELECT old_uid, new_uid FROM mv ORDER BY old_uid", j->uidset_sql);
    else
        j->uidset_sql = tern_arena_printf(&j->a,
            "WITH s AS (SELECT m.*, row_number() OVER (ORDER BY m.uid) AS rn "
            "FROM messages m WHERE m.mailbox_id = $1 AND %s AND $5::bigint IS NOT NULL), "
            "ins AS (INSERT INTO messages (account_id, mailbox_id, uid, modseq, flags, internal_date, "
            "size, email_id, thread_id, recent, hdr_date, subject, base_subject, from_addr, to_addr, "
            "cc_addr, bcc_addr, message_id, in_reply_to, refs, body_ref, prefix) "
            "SELECT account_id, $2, $3 + rn - 1, $4, flags, internal_date, size, email_id, thread_id, "
            "1, hdr_date, subject, base_subject, from_addr, to_addr, cc_addr, bcc_addr, message_id, "
            "in_reply_to, refs, body_ref, prefix FROM s RETURNING id, uid), "
            "map AS (SELECT s.id AS old_id, s.uid AS old_uid, ins.id AS new_id, ins.uid AS new_uid "
            "FROM s JOIN ins ON ins.uid = $3 + s.rn - 1), "
            "kw AS (INSERT INTO keywords (message, keyword) SELECT map.new_id, "
            "coalesce((SELECT k2.keyword FROM keywords k2 JOIN messages m2 ON m2.id = k2.message "
            "WHERE m2.mailbox_id = $2 AND lower(k2.keyword) = lower(k.keyword) LIMIT 1), k.keyword) "
            "FROM map JOIN keywords k ON k.message = map.old_id ON CONFLICT DO NOTHING), "
            "hd AS (INSERT INTO headers (message, name, value) SELECT map.new_id, h.name, h.value "
            "FROM map JOIN headers h ON h.message = map.old_id), "
            "bu AS (UPDATE bodies b SET refcount = b.refcount + c.n FROM "
            "(SELECT body_ref, count(*) AS n FROM s GROUP BY body_ref) c WHERE b.id = c.body_ref) "
            "SELECT old_uid, new_uid FROM map ORDER BY old_uid", j->uidset_sql);
    PG_QUERY(j, j->uidset_sql);
    {
        int n = PQntuples(j->res);
        r->out.src_uids = tern_arena_alloc(&r->arena, (size_t)(n + 1) * sizeof(uint32_t));
        r->out.dst_uids = tern_arena_alloc(&r->arena, (size_t)(n + 1) * sizeof(uint32_t));
        for (int i = 0; i < n; i++) {
            r->out.src_uids[i] = (uint32_t)pg_u64(j->res, i, 0);
            r->out.dst_uids[i] = (uint32_t)pg_u64(j->res, i, 1);
        }
        r->out.n_copied = (size_t)n;
        j->n = n;
    }
    pg_p_u64(j, j->mailbox_id);
    pg_p_u64(j, j->mailbox2_id);
    pg_p_i64(j, j->n);
    pg_p_u64(j, j->modseq);
    pg_p_u64(j, move ? 0 : j->u[6]);
    pg_p_i64(j, move ? 0 : j->n);
    pg_p_u64(j, j->account_id);
    PG_QUERY(j, "WITH u AS (UPDATE accounts SET used_bytes = used_bytes + $5, "
                "used_messages = used_messages + $6 WHERE id = $7) "
                "UPDATE mailboxes SET uidnext = uidnext + CASE WHEN id = $2 THEN $3 ELSE 0 END, "
                "highest_modseq = $4 WHERE id = $2 OR (id = $1 AND $6 = 0)");
    if (move)
        pg_note(j, j->mailbox_id, j->modseq);
    pg_note(j, j->mailbox2_id, j->modseq);
    PG_END(j);
}

int pg_op_copy(pg_job *j)
{
    return copy_or_move(j, false);
}

int pg_op_move(pg_job *j)
{
    return copy_or_move(j, true);
}

/* RECENT_CLAIM. The account's row lock (taken, like every writer takes it,
 * first) orders claims with the account's writers, so row locks on the
 * messages cannot deadlock with theirs; the UPDATE ... RETURNING is what
 * hands each message out once: a second claim waiting on the same rows
 * sees recent = 0 when it gets them and skips them. No modseq is taken:
 * \Recent is per session (RFC 3501 2.3.2), not a change others see. */
int pg_op_recent_claim(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account || !r->in.name)
        return pg_done(j, TERN_STORE_EINVAL, "no mailbox");
    j->acct = pg_norm_account(&j->a, r->in.account);
    if (r->in.recent_peek) {
        pg_p_str(j, j->acct);
        pg_p_str(j, canon(j, r->in.name));
        PG_QUERY(j, "SELECT b.id, m.uid FROM mailboxes b JOIN accounts a ON a.id = b.account_id "
                    "LEFT JOIN messages m ON m.mailbox_id = b.id AND m.recent <> 0 "
                    "WHERE a.name = $1 AND b.name = $2 ORDER BY m.uid");
        if (PQntuples(j->res) == 0)
            return pg_done(j, TERN_STORE_ENOTFOUND, "no such mailbox");
        {
            int n = PQntuples(j->res), k = 0;
            r->out.uids = tern_arena_alloc(&r->arena, (size_t)(n + 1) * sizeof *r->out.uids);
            if (r->out.uids == NULL)
                return pg_done(j, TERN_STORE_ETEMP, "out of memory");
            for (int i = 0; i < n; i++)
                if (!PQgetisnull(j->res, i, 1))
                    r->out.uids[k++] = (uint32_t)pg_u64(j->res, i, 1);
            r->out.n_uids = (size_t)k;
        }
        return PG_DONE;
    }
    PG_TX(j);
    pg_p_str(j, j->acct);
    pg_p_str(j, canon(j, r->in.name));
    PG_QUERY(j, "SELECT b.id FROM accounts a JOIN mailboxes b ON b.account_id = a.id "
                "AND b.name = $2 WHERE a.name = $1 FOR NO KEY UPDATE OF a");
    if (PQntuples(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such mailbox");
    j->mailbox_id = pg_u64(j->res, 0, 0);
    pg_p_u64(j, j->mailbox_id);
    PG_QUERY(j, "WITH c AS (UPDATE messages SET recent = 0 WHERE mailbox_id = $1 AND recent <> 0 "
                "RETURNING uid) SELECT uid FROM c ORDER BY uid");
    {
        int n = PQntuples(j->res);
        r->out.uids = tern_arena_alloc(&r->arena, (size_t)(n + 1) * sizeof *r->out.uids);
        if (r->out.uids == NULL)
            return pg_done(j, TERN_STORE_ETEMP, "out of memory");
        for (int i = 0; i < n; i++)
            r->out.uids[i] = (uint32_t)pg_u64(j->res, i, 0);
        r->out.n_uids = (size_t)n;
    }
    PG_END(j);
}

/* MAILBOX_KEYWORDS: one spelling per keyword, sorted without case. */
int pg_op_mailbox_keywords(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account || !r->in.name)
        return pg_done(j, TERN_STORE_EINVAL, "no mailbox");
    pg_p_str(j, pg_norm_account(&j->a, r->in.account));
    pg_p_str(j, canon(j, r->in.name));
    PG_QUERY_PREPARED(j, PG_STMT_LOOKUP_MAILBOX, PG_LOOKUP_MAILBOX);
    if (PQntuples(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such mailbox");
    pg_p_u64(j, pg_u64(j->res, 0, 0));
    pg_p_u64(j, TERN_STORE_MAILBOX_KEYWORDS_MAX);
    PG_QUERY(j, "SELECT DISTINCT ON (lower(k.keyword)) k.keyword FROM keywords k "
                "JOIN messages m ON m.id = k.message WHERE m.mailbox_id = $1 "
                "ORDER BY lower(k.keyword), k.keyword LIMIT $2");
    {
        int n = PQntuples(j->res);
        r->out.names = tern_arena_alloc(&r->arena, (size_t)(n + 1) * sizeof *r->out.names);
        if (r->out.names == NULL)
            return pg_done(j, TERN_STORE_ETEMP, "out of memory");
        for (int i = 0; i < n; i++) {
            r->out.names[i] = tern_arena_strdup(&r->arena, PQgetvalue(j->res, i, 0));
            if (r->out.names[i] == NULL)
                return pg_done(j, TERN_STORE_ETEMP, "out of memory");
        }
        r->out.n_names = (size_t)n;
    }
    PG_END(j);
}
