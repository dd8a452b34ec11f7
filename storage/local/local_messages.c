/* Message operations of the local backend: APPEND, FETCH, FETCH_BODY,
 * COPY, MOVE, EXPUNGE, CHANGES, QUOTA_GET (SET_FLAGS is in local_flags.c,
 * SEARCH in local_search.c). Runs on the backend thread inside the batch
 * transaction. Input trusted: parameters from our protocol code; message
 * bytes are untrusted and only reach tern_msg_index_build (bounded).
 *
 * Ids: the Email id is "M" + 24 base32 characters of 120 random bits, kept
 * by MOVE and shared by COPY; a Thread id is "T" + the same, taken from the
 * thread of any message of the account that shares a Message-ID or
 * reference with the new one (thread_refs), else new. Modseqs come from
 * accounts.highest_modseq: one per APPEND, one per COPY/MOVE/EXPUNGE call.
 *
 * \Recent: every APPEND, COPY and MOVE sets messages.recent = 1 and STATUS counts
 * them; RECENT_CLAIM (local_flags.c) reads and clears them in one step for
 * the IMAP session that sees them first (RFC 3501; gone in RFC 9051). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/log.h"
#include "storage/index.h"
#include "storage/local/local_internal.h"

#define THREAD_LOOKUP_MAX 64

int local_target(local_store *L, tern_store_req *req, lacct *a, lmbox *m)
{
    int r = local_account_get(L, req, req->in.account, a);
    if (r != TERN_STORE_OK)
        return r;
    return local_mailbox_get(L, req, a, req->in.name, m);
}

static int cmp_range(const void *x, const void *y)
{
    const tern_uid_range *a = x, *b = y;
    return a->first < b->first ? -1 : a->first > b->first;
}

int local_uid_ranges(local_store *L, tern_store_req *req, const lmbox *m, const tern_uid_set *set,
                     tern_uid_range **out_r, size_t *n_r)
{
    *out_r = NULL;
    *n_r = 0;
    if (set->n == 0)
        return TERN_STORE_OK;
    uint32_t max = 0;
    bool need_max = false;
    for (size_t i = 0; i < set->n; i++)
        if (set->ranges[i].first == UINT32_MAX || set->ranges[i].last == UINT32_MAX)
            need_max = true;
    if (need_max) {
        sqlite3_stmt *st = local_stmt(L, "SELECT max(uid) FROM messages WHERE mailbox_id = ?");
        if (st == NULL)
            return TERN_STORE_EIO;
        sqlite3_bind_int64(st, 1, m->id);
        int r = local_step(L, req, st);
        if (r < 0)
            return r;
        max = (uint32_t)sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
    }
    tern_uid_range *v = malloc(set->n * sizeof *v);
    if (v == NULL)
        return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
    for (size_t i = 0; i < set->n; i++) {
        uint32_t f = set->ranges[i].first, l = set->ranges[i].last;
        if (f == UINT32_MAX)
            f = max;
        if (l == UINT32_MAX)
            l = max;
        if (f > l) {
            uint32_t t = f;
            f = l;
            l = t;
        }
        v[i].first = f;
        v[i].last = l;
    }
    qsort(v, set->n, sizeof *v, cmp_range);
    size_t n = 0;
    for (size_t i = 0; i < set->n; i++) {
        if (n > 0 && (uint64_t)v[i].first <= (uint64_t)v[n - 1].last + 1) {
            if (v[i].last > v[n - 1].last)
                v[n - 1].last = v[i].last;
        } else {
            v[n++] = v[i];
        }
    }
    *out_r = v;
    *n_r = n;
    return TERN_STORE_OK;
}

int local_rows_in_set(local_store *L, tern_store_req *req, const lmbox *m,
                      const tern_uid_set *set, const char *sql, size_t elem, void **v, size_t *n,
                      void (*fill)(void *o, sqlite3_stmt *st, void *ctx), void *ctx)
{
    *v = NULL;
    *n = 0;
    tern_uid_range *rg;
    size_t nr, cap = 0;
    int r = local_uid_ranges(L, req, m, set, &rg, &nr);
    if (r != TERN_STORE_OK)
        return r;
    for (size_t i = 0; i < nr && r == TERN_STORE_OK; i++) {
        sqlite3_stmt *st = local_stmt(L, sql);
        if (st == NULL) {
            r = TERN_STORE_EIO;
            break;
        }
        sqlite3_bind_int64(st, 1, m->id);
        sqlite3_bind_int64(st, 2, rg[i].first);
        sqlite3_bind_int64(st, 3, rg[i].last);
        while ((r = local_step(L, req, st)) == 1) {
            if (*n == cap) {
                cap = cap ? cap * 2 : 64;
                void *nv = realloc(*v, cap * elem);
                if (nv == NULL) {
                    r = tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
                    break;
                }
                *v = nv;
            }
            void *o = (char *)*v + (*n)++ * elem;
            memset(o, 0, elem);
            fill(o, st, ctx);
        }
        if (r == 0)
            r = TERN_STORE_OK;
        sqlite3_reset(st);
    }
    free(rg);
    return r;
}

int local_unlink_later(local_store *L, tern_store_req *req, const char *abs_path)
{
    size_t rl = strlen(L->root);
    const char *rel = strncmp(abs_path, L->root, rl) == 0 && abs_path[rl] == '/'
                          ? abs_path + rl + 1 : abs_path;
    sqlite3_stmt *st = local_stmt(L, "INSERT OR IGNORE INTO pending_unlink(path) VALUES(?)");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_text(st, 1, rel, -1, SQLITE_STATIC);
    int r = local_run(L, req, st);
    if (r == TERN_STORE_OK)
        local_effect(L, LEFF_POST_UNLINK, abs_path, NULL);
    return r;
}

int local_mailbox_touch(local_store *L, tern_store_req *req, lmbox *m, uint64_t modseq,
                        uint32_t uidnext)
{
    sqlite3_stmt *st = local_stmt(L, "UPDATE mailboxes SET highest_modseq = max(highest_modseq, ?),"
                                     " uidnext = max(uidnext, ?) WHERE id = ?");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, (int64_t)modseq);
    sqlite3_bind_int64(st, 2, uidnext);
    sqlite3_bind_int64(st, 3, m->id);
    int r = local_run(L, req, st);
    if (r == TERN_STORE_OK) {
        if (modseq > m->highest_modseq)
            m->highest_modseq = modseq;
        if (uidnext > m->uidnext)
            m->uidnext = uidnext;
    }
    return r;
}

static int account_usage(local_store *L, tern_store_req *req, lacct *a, int64_t bytes,
                         int64_t count)
{
    sqlite3_stmt *st = local_stmt(L, "UPDATE accounts SET used_bytes = max(0, used_bytes + ?),"
                                     " used_messages = max(0, used_messages + ?) WHERE id = ?");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, bytes);
    sqlite3_bind_int64(st, 2, count);
    sqlite3_bind_int64(st, 3, a->id);
    int r = local_run(L, req, st);
    if (r == TERN_STORE_OK) {
        a->used_bytes = (uint64_t)((int64_t)a->used_bytes + bytes);
        a->used_messages = (uint64_t)((int64_t)a->used_messages + count);
    }
    return r;
}

static int quota_check(tern_store_req *req, const lacct *a, uint64_t bytes, uint64_t count)
{
    if (a->quota_bytes && a->used_bytes + bytes > a->quota_bytes)
        return tern_store__fail(req, TERN_STORE_EQUOTA, "%s over quota: %" PRIu64 " + %" PRIu64
                                " > %" PRIu64 " bytes", a->name, a->used_bytes, bytes,
                                a->quota_bytes);
    if (a->quota_messages && a->used_messages + count > a->quota_messages)
        return tern_store__fail(req, TERN_STORE_EQUOTA, "%s over quota: %" PRIu64
                                " messages", a->name, a->quota_messages);
    return TERN_STORE_OK;
}

static void random_id(char prefix, char out[26])
{
    static const char b32[] = "abcdefghijklmnopqrstuvwxyz234567";
    uint8_t r[15];
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t n = getrandom(r + got, sizeof r - got, 0);
        if (n > 0)
            got += (size_t)n;
    }
    out[0] = prefix;
    for (size_t i = 0; i < 24; i++) {
        size_t bit = i * 5;
        unsigned v = ((unsigned)r[bit / 8] << 8 | (bit / 8 + 1 < 15 ? r[bit / 8 + 1] : 0u)) >>
                     (11 - bit % 8);
        out[1 + i] = b32[v & 31];
    }
    out[25] = '\0';
}

static int find_thread(local_store *L, tern_store_req *req, int64_t account_id,
                       const tern_msg_index *ix, char **thread_r)
{
    *thread_r = NULL;
    size_t n = ix->n_references < THREAD_LOOKUP_MAX ? ix->n_references : THREAD_LOOKUP_MAX;
    for (size_t i = 0; i <= n; i++) {
        const char *id = i < n ? ix->references[i] : ix->message_id;
        if (id == NULL || id[0] == '\0')
            continue;
        sqlite3_stmt *st = local_stmt(L, "SELECT thread_id FROM thread_refs"
                                         " WHERE account_id = ? AND msgid = ? LIMIT 1");
        if (st == NULL)
            return TERN_STORE_EIO;
        sqlite3_bind_int64(st, 1, account_id);
        sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
        int r = local_step(L, req, st);
        if (r < 0)
            return r;
        if (r == 1) {
            *thread_r = local_col_text(&L->batch, st, 0);
            sqlite3_reset(st);
            return TERN_STORE_OK;
        }
    }
    return TERN_STORE_OK;
}

static int add_thread_ref(local_store *L, tern_store_req *req, int64_t account_id,
                          const char *msgid, const char *thread)
{
    if (msgid == NULL || msgid[0] == '\0')
        return TERN_STORE_OK;
    sqlite3_stmt *st = local_stmt(L, "INSERT INTO thread_refs(account_id, msgid, thread_id)"
                                     " VALUES(?, ?, ?)");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, account_id);
    sqlite3_bind_text(st, 2, msgid, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, thread, -1, SQLITE_STATIC);
    return local_run(L, req, st);
}

static void bind_opt(sqlite3_stmt *st, int col, const char *v)
{
    if (v)
        sqlite3_bind_text(st, col, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, col);
}

int local_insert_message(local_store *L, tern_store_req *req, lacct *a, lmbox *m,
                         const char *rel_path, uint64_t size, unsigned flags,
                         const tern_keywords *kw, int64_t internal_date, const uint8_t *head,
                         size_t head_len, tern_append_result *res)
{
    tern_arena ia;
    tern_arena_init(&ia, 16 * 1024);
    tern_msg_index ix;
    memset(&ix, 0, sizeof ix);
    int r = TERN_STORE_OK;
    if (tern_msg_index_build(&ia, head ? head : (const uint8_t *)"", head_len, &ix) != 0) {
        r = tern_store__fail(req, TERN_STORE_ETEMP, "out of memory indexing");
        goto out;
    }
    uint64_t ms = local_next_modseq(L, req, a);
    if (ms == 0) {
        r = req->status ? req->status : TERN_STORE_EIO;
        goto out;
    }
    uint32_t uid = m->uidnext;
    if (uid == 0 || uid == UINT32_MAX) {
        r = tern_store__fail(req, TERN_STORE_EIO, "mailbox %s is out of uids", m->name);
        goto out;
    }
    if ((r = local_mailbox_touch(L, req, m, ms, uid + 1)) != TERN_STORE_OK)
        goto out;
    char email_id[26], new_thread[26];
    random_id('M', email_id);
    char *thread = NULL;
    if ((r = find_thread(L, req, a->id, &ix, &thread)) != TERN_STORE_OK)
        goto out;
    if (thread == NULL) {
        random_id('T', new_thread);
        thread = new_thread;
    }
    char *refs = NULL;
    for (size_t i = 0; i < ix.n_references; i++)
        refs = refs ? tern_arena_printf(&ia, "%s %s", refs, ix.references[i])
                    : tern_arena_strdup(&ia, ix.references[i]);
    sqlite3_stmt *st = local_stmt(
        L, "INSERT INTO messages(account_id, mailbox_id, uid, modseq, flags, internal_date, size,"
           " email_id, thread_id, recent, hdr_date, subject, base_subject, from_addr, to_addr,"
           " cc_addr, bcc_addr, message_id, in_reply_to, refs, body_ref)"
           " VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    if (st == NULL) {
        r = TERN_STORE_EIO;
        goto out;
    }
    sqlite3_bind_int64(st, 1, a->id);
    sqlite3_bind_int64(st, 2, m->id);
    sqlite3_bind_int64(st, 3, uid);
    sqlite3_bind_int64(st, 4, (int64_t)ms);
    sqlite3_bind_int(st, 5, (int)(flags & 0x1f));
    sqlite3_bind_int64(st, 6, internal_date);
    sqlite3_bind_int64(st, 7, (int64_t)size);
    sqlite3_bind_text(st, 8, email_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 9, thread, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 10, ix.date);
    bind_opt(st, 11, ix.subject);
    bind_opt(st, 12, ix.base_subject);
    bind_opt(st, 13, ix.from);
    bind_opt(st, 14, ix.to);
    bind_opt(st, 15, ix.cc);
    bind_opt(st, 16, ix.bcc);
    bind_opt(st, 17, ix.message_id);
    bind_opt(st, 18, ix.in_reply_to);
    bind_opt(st, 19, refs);
    sqlite3_bind_text(st, 20, rel_path, -1, SQLITE_STATIC);
    if ((r = local_run(L, req, st)) != TERN_STORE_OK)
        goto out;
    int64_t id = sqlite3_last_insert_rowid(L->db);
    for (size_t i = 0; kw && i < kw->n; i++) {
        /* As first written in this mailbox (schema.md), once per message. */
        st = local_stmt(L, "INSERT INTO keywords(message, keyword) SELECT ?1, " LOCAL_KW_SPELLING
                           " WHERE NOT EXISTS (SELECT 1 FROM keywords WHERE message = ?1"
                           " AND lower(keyword) = lower(?2))");
        if (st == NULL) {
            r = TERN_STORE_EIO;
            goto out;
        }
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_text(st, 2, kw->names[i], -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, m->id);
        if ((r = local_run(L, req, st)) != TERN_STORE_OK)
            goto out;
    }
    for (size_t i = 0; i < ix.n_fields; i++) {
        st = local_stmt(L, "INSERT INTO headers(message, name, value) VALUES(?, ?, ?)");
        if (st == NULL) {
            r = TERN_STORE_EIO;
            goto out;
        }
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_text(st, 2, ix.fields[i].name, -1, SQLITE_STATIC);
        bind_opt(st, 3, ix.fields[i].value);
        if ((r = local_run(L, req, st)) != TERN_STORE_OK)
            goto out;
    }
    if ((r = add_thread_ref(L, req, a->id, ix.message_id, thread)) != TERN_STORE_OK)
        goto out;
    for (size_t i = 0; i < ix.n_references && i < THREAD_LOOKUP_MAX; i++)
        if ((r = add_thread_ref(L, req, a->id, ix.references[i], thread)) != TERN_STORE_OK)
            goto out;
    if ((r = account_usage(L, req, a, (int64_t)size, 1)) != TERN_STORE_OK)
        goto out;
    local_event(L, a->name, (uint64_t)m->id, ms);
    if (res) {
        res->uidvalidity = m->uidvalidity;
        res->uid = uid;
        res->id = tern_arena_strdup(&req->arena, email_id);
        res->thread_id = tern_arena_strdup(&req->arena, thread);
        res->modseq = ms;
    }
out:
    tern_arena_free(&ia);
    return r;
}

int local_delete_rows(local_store *L, tern_store_req *req, int64_t msg_id)
{
    static const char *const dels[] = {
        "DELETE FROM keywords WHERE message = ?",
        "DELETE FROM headers WHERE message = ?",
        "DELETE FROM messages WHERE id = ?",
    };
    for (size_t i = 0; i < 3; i++) {
        sqlite3_stmt *st = local_stmt(L, dels[i]);
        if (st == NULL)
            return TERN_STORE_EIO;
        sqlite3_bind_int64(st, 1, msg_id);
        int r = local_run(L, req, st);
        if (r != TERN_STORE_OK)
            return r;
    }
    return TERN_STORE_OK;
}

/* ---- APPEND ---------------------------------------------------------------- */

static int64_t ts_ns(struct timespec t)
{
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static lshared_body *shared_find(local_store *L, const char *src, const struct stat *sb)
{
    for (size_t i = 0; i < LOCAL_SHARED_MAX; i++) {
        lshared_body *e = &L->shared[i];
        if (e->src && strcmp(e->src, src) == 0 && e->dev == (uint64_t)sb->st_dev &&
            e->ino == (uint64_t)sb->st_ino && e->size == (uint64_t)sb->st_size &&
            e->mtime_ns == ts_ns(sb->st_mtim) && e->ctime_ns == ts_ns(sb->st_ctim))
            return e;
    }
    return NULL;
}

static void shared_remember(local_store *L, const char *src, const struct stat *sb,
                            const char *stored)
{
    lshared_body *e = shared_find(L, src, sb);
    if (e == NULL) {
        e = &L->shared[L->shared_next++ % LOCAL_SHARED_MAX];
        free(e->src);
        e->src = strdup(src);
    }
    free(e->stored);
    e->stored = strdup(stored);
    e->dev = (uint64_t)sb->st_dev;
    e->ino = (uint64_t)sb->st_ino;
    e->size = (uint64_t)sb->st_size;
    e->mtime_ns = ts_ns(sb->st_mtim);
    e->ctime_ns = ts_ns(sb->st_ctim);
    if (e->src == NULL || e->stored == NULL) {
        free(e->src);
        free(e->stored);
        e->src = e->stored = NULL;
    }
}

/* Stores the message as a new hard link of a file an earlier APPEND of the
 * same spool file wrote. 1 done, 0 not possible (copy instead), <0 error. */
static int append_linked(local_store *L, tern_store_req *req, lacct *a, lmbox *m,
                         lshared_body *e, int64_t idate)
{
    if (L->n_pending && local_pending_flush(L) != 0)
        return tern_store__fail(req, TERN_STORE_EIO, "writing a message failed");
    struct stat sb;
    if (stat(e->stored, &sb) != 0 || (uint64_t)sb.st_size != e->size)
        return 0;
    char *name = local_file_name(L, &L->batch, e->size, req->in.flags);
    char *cur = tern_arena_printf(&L->batch, "%s/cur", m->dir);
    char *to = cur && name ? tern_arena_printf(&L->batch, "%s/%s", cur, name) : NULL;
    char *rel = name ? tern_arena_printf(&L->batch, "%scur/%s",
                                         local_mailbox_rel(&L->batch, m->name), name) : NULL;
    if (to == NULL || rel == NULL)
        return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
    if (link(e->stored, to) != 0)
        return 0;
    local_effect(L, LEFF_UNDO_UNLINK, to, NULL);
    local_sync_dir(L, cur);
    uint8_t *head;
    size_t hl;
    int err = local_read_head(to, &head, &hl);
    if (err != 0)
        return local_errno_fail(req, -err, "read", to);
    int r = local_insert_message(L, req, a, m, rel, e->size, req->in.flags, &req->in.keywords,
                                 idate, head, hl, &req->out.append);
    free(head);
    return r == TERN_STORE_OK ? 1 : r;
}

static int append(local_store *L, tern_store_req *req)
{
    if (!local_valid_keywords(&req->in.keywords))
        return tern_store__fail(req, TERN_STORE_EINVAL, "bad keyword");
    lacct a;
    lmbox m;
    int r = local_target(L, req, &a, &m);
    if (r != TERN_STORE_OK)
        return r;
    uint64_t want = req->in.len;
    struct stat sb;
    if (req->in.data_path) {
        if (stat(req->in.data_path, &sb) != 0)
            return local_errno_fail(req, errno, "stat", req->in.data_path);
        want = (uint64_t)sb.st_size;
    } else if (req->in.data == NULL && req->in.len > 0) {
        return tern_store__fail(req, TERN_STORE_EINVAL, "no message data");
    }
    if (req->in.prefix == NULL && req->in.prefix_len > 0)
        return tern_store__fail(req, TERN_STORE_EINVAL, "no prefix data");
    /* A prefix makes this copy's file differ from the others: no link. */
    bool linkable = req->in.data_path && req->in.prefix_len == 0;
    want += req->in.prefix_len;
    if ((r = quota_check(req, &a, want, 1)) != TERN_STORE_OK)
        return r;
    int64_t idate = req->in.internal_date ? req->in.internal_date : local_now();
    lshared_body *shared = linkable ? shared_find(L, req->in.data_path, &sb) : NULL;
    if (shared && (r = append_linked(L, req, &a, &m, shared, idate)) != 0)
        return r < 0 ? r : TERN_STORE_OK;
    char *name, *tmp;
    uint64_t size;
    uint8_t *head = NULL;
    size_t head_len = 0;
    int fd;
    int err = local_write_message(L, &L->batch, m.dir, req->in.prefix, req->in.prefix_len,
                                  req->in.data_path ? NULL : req->in.data,
                                  req->in.len, req->in.data_path, req->in.flags, idate, &name,
                                  &size, &head, &head_len, &fd, &tmp);
    if (err != 0)
        return local_errno_fail(req, -err, "write message into", m.dir);
    char *abs = tern_arena_printf(&L->batch, "%s/cur/%s", m.dir, name);
    char *cur = tern_arena_printf(&L->batch, "%s/cur", m.dir);
    char *rel = tern_arena_printf(&L->batch, "%scur/%s", local_mailbox_rel(&L->batch, m.name), name);
    if (abs == NULL || cur == NULL || rel == NULL) {
        close(fd);
        unlink(tmp);
        free(head);
        return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
    }
    if (local_pending_add(L, fd, tmp, abs, cur) != 0) {
        free(head);
        return local_errno_fail(req, errno, "write message into", m.dir);
    }
    local_effect(L, LEFF_UNDO_UNLINK, tmp, NULL);
    local_effect(L, LEFF_UNDO_UNLINK, abs, NULL);
    if (linkable && size == want)
        shared_remember(L, req->in.data_path, &sb, abs);
    if (size != want && (r = quota_check(req, &a, size, 1)) != TERN_STORE_OK) {
        free(head);
        return r;
    }
    const uint8_t *h = head;
    if (h == NULL) {
        h = req->in.data;
        head_len = req->in.len < LOCAL_HEADER_MAX ? req->in.len : LOCAL_HEADER_MAX;
    }
    r = local_insert_message(L, req, &a, &m, rel, size, req->in.flags, &req->in.keywords, idate,
                             h, head_len, &req->out.append);
    free(head);
    return r;
}

/* ---- FETCH ------------------------------------------------------------------ */

static char **split_keywords(tern_arena *a, const char *s, size_t *n_r)
{
    *n_r = 0;
    if (s == NULL || *s == '\0')
        return NULL;
    size_t n = 1;
    for (const char *p = s; *p; p++)
        n += *p == ' ';
    char **v = tern_arena_alloc(a, n * sizeof *v);
    char *copy = tern_arena_strdup(a, s);
    if (v == NULL || copy == NULL)
        return NULL;
    size_t k = 0;
    for (char *tok = strtok(copy, " "); tok && k < n; tok = strtok(NULL, " "))
        v[k++] = tok;
    *n_r = k;
    return v;
}

static void info_row(void *v, sqlite3_stmt *st, void *ctx)
{
    tern_message_info *o = v;
    tern_arena *ar = ctx;
    o->uid = (uint32_t)sqlite3_column_int64(st, 0);
    o->id = local_col_text(ar, st, 1);
    o->thread_id = local_col_text(ar, st, 2);
    o->flags = (unsigned)sqlite3_column_int(st, 3);
    o->modseq = (uint64_t)sqlite3_column_int64(st, 4);
    o->internal_date = sqlite3_column_int64(st, 5);
    o->size = (uint64_t)sqlite3_column_int64(st, 6);
    if (sqlite3_column_type(st, 7) != SQLITE_NULL)
        o->keywords = split_keywords(ar, (const char *)sqlite3_column_text(st, 7), &o->n_keywords);
}

static int fetch(local_store *L, tern_store_req *req)
{
    lacct a;
    lmbox m;
    int r = local_target(L, req, &a, &m);
    if (r != TERN_STORE_OK)
        return r;
    size_t n = 0;
    tern_message_info *v = NULL;
    r = local_rows_in_set(L, req, &m, &req->in.uids,
                          "SELECT uid, email_id, thread_id, flags, modseq, internal_date, size,"
                          " (SELECT group_concat(keyword, ' ') FROM keywords WHERE message = m.id)"
                          " FROM messages m WHERE mailbox_id = ? AND uid BETWEEN ? AND ? ORDER BY uid",
                          sizeof *v, (void **)&v, &n, info_row, &req->arena);
    if (r != TERN_STORE_OK) {
        free(v);
        return r;
    }
    req->out.messages = tern_arena_alloc(&req->arena, (n ? n : 1) * sizeof *v);
    if (req->out.messages == NULL) {
        free(v);
        return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
    }
    if (n)
        memcpy(req->out.messages, v, n * sizeof *v);
    req->out.n_messages = n;
    free(v);
    return TERN_STORE_OK;
}

/* Opens a message file; when the name is stale (a Maildir tool renamed it
 * for a flag change), finds it by its base in the same directory. */
static int open_body(local_store *L, const char *maildir, const char *ref)
{
    char *path = tern_arena_printf(&L->batch, "%s/%s", maildir, ref);
    if (path == NULL)
        return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0 || errno != ENOENT)
        return fd;
    char *dir = tern_arena_strdup(&L->batch, path);
    char *slash = dir ? strrchr(dir, '/') : NULL;
    if (slash == NULL)
        return -1;
    *slash = '\0';
    const char *file = slash + 1;
    size_t bl = local_base_len(file);
    static const char *const subs[] = {"", "/../new"};
    for (size_t s = 0; s < 2; s++) {
        char *d = tern_arena_printf(&L->batch, "%s%s", dir, subs[s]);
        DIR *dh = d ? opendir(d) : NULL;
        if (dh == NULL)
            continue;
        struct dirent *e;
        while ((e = readdir(dh)) != NULL) {
            if (strncmp(e->d_name, file, bl) == 0 &&
                (e->d_name[bl] == ':' || e->d_name[bl] == '\0')) {
                char *p = tern_arena_printf(&L->batch, "%s/%s", d, e->d_name);
                closedir(dh);
                return p ? open(p, O_RDONLY | O_CLOEXEC) : -1;
            }
        }
        closedir(dh);
    }
    errno = ENOENT;
    return -1;
}

int local_open_body(local_store *L, const char *maildir, const char *ref)
{
    return open_body(L, maildir, ref);
}

static int fetch_body(local_store *L, tern_store_req *req)
{
    lacct a;
    lmbox m;
    int r = local_target(L, req, &a, &m);
    if (r != TERN_STORE_OK)
        return r;
    sqlite3_stmt *st = local_stmt(L, "SELECT body_ref, size FROM messages"
                                     " WHERE mailbox_id = ? AND uid = ?");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, m.id);
    sqlite3_bind_int64(st, 2, req->in.uid);
    if ((r = local_step(L, req, st)) < 0)
        return r;
    if (r == 0)
        return tern_store__fail(req, TERN_STORE_ENOTFOUND, "no uid %" PRIu32, req->in.uid);
    char *ref = local_col_text(&L->batch, st, 0);
    uint64_t size = (uint64_t)sqlite3_column_int64(st, 1);
    sqlite3_reset(st);
    int fd = ref ? open_body(L, a.maildir, ref) : -1;
    if (fd < 0)
        return local_errno_fail(req, errno == ENOENT ? EIO : errno, "open message", ref);
    size_t want = req->in.max_len && req->in.max_len < LOCAL_FETCH_BODY_MAX ? req->in.max_len
                                                                            : LOCAL_FETCH_BODY_MAX;
    if (req->in.offset >= size)
        want = 0;
    else if (size - req->in.offset < want)
        want = (size_t)(size - req->in.offset);
    uint8_t *buf = tern_arena_alloc(&req->arena, want ? want : 1);
    if (buf == NULL) {
        close(fd);
        return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
    }
    size_t got = 0;
    while (got < want) {
        ssize_t n = pread(fd, buf + got, want - got, (off_t)(req->in.offset + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int err = errno;
            close(fd);
            return local_errno_fail(req, err, "read message", ref);
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    req->out.body = buf;
    req->out.body_len = got;
    req->out.body_total = size;
    return TERN_STORE_OK;
}

/* ---- COPY, MOVE, EXPUNGE --------------------------------------------------- */

typedef struct lmsg {
    int64_t id;
    uint32_t uid;
    unsigned flags;
    uint64_t size;
    char *ref;
} lmsg;

/* Messages of `m` in the ranges (or every one when rg is NULL), by uid;
 * with only_deleted, those with \Deleted. malloc'd array. */
static int collect(local_store *L, tern_store_req *req, const lmbox *m, const tern_uid_range *rg,
                   size_t nr, bool only_deleted, lmsg **out_r, size_t *n_r)
{
    *out_r = NULL;
    *n_r = 0;
    size_t n = 0, cap = 0;
    lmsg *v = NULL;
    tern_uid_range all = {1, UINT32_MAX - 1};
    if (rg == NULL) {
        rg = &all;
        nr = 1;
    }
    int r = TERN_STORE_OK;
    for (size_t i = 0; i < nr && r == TERN_STORE_OK; i++) {
        sqlite3_stmt *st = local_stmt(L, "SELECT id, uid, flags, size, body_ref FROM messages"
                                         " WHERE mailbox_id = ? AND uid BETWEEN ? AND ?"
                                         " AND (flags & ?) = ? ORDER BY uid");
        if (st == NULL)
            return TERN_STORE_EIO;
        sqlite3_bind_int64(st, 1, m->id);
        sqlite3_bind_int64(st, 2, rg[i].first);
        sqlite3_bind_int64(st, 3, rg[i].last);
        sqlite3_bind_int(st, 4, only_deleted ? TERN_FLAG_DELETED : 0);
        sqlite3_bind_int(st, 5, only_deleted ? TERN_FLAG_DELETED : 0);
        while ((r = local_step(L, req, st)) == 1) {
            if (n == cap) {
                cap = cap ? cap * 2 : 32;
                lmsg *nv = realloc(v, cap * sizeof *nv);
                if (nv == NULL) {
                    r = tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
                    break;
                }
                v = nv;
            }
            lmsg *o = &v[n++];
            o->id = sqlite3_column_int64(st, 0);
            o->uid = (uint32_t)sqlite3_column_int64(st, 1);
            o->flags = (unsigned)sqlite3_column_int(st, 2);
            o->size = (uint64_t)sqlite3_column_int64(st, 3);
            o->ref = local_col_text(&L->batch, st, 4);
        }
        if (r == 0)
            r = TERN_STORE_OK;
        sqlite3_reset(st);
    }
    if (r != TERN_STORE_OK) {
        free(v);
        return r;
    }
    *out_r = v;
    *n_r = n;
    return TERN_STORE_OK;
}

static int expunge_one(local_store *L, tern_store_req *req, lacct *a, lmbox *m, const lmsg *msg,
                       uint64_t ms, int64_t now)
{
    int r = local_delete_rows(L, req, msg->id);
    if (r != TERN_STORE_OK)
        return r;
    sqlite3_stmt *st = local_stmt(L, "INSERT INTO expunged(mailbox_id, uid, modseq, time)"
                                     " VALUES(?, ?, ?, ?)");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, m->id);
    sqlite3_bind_int64(st, 2, msg->uid);
    sqlite3_bind_int64(st, 3, (int64_t)ms);
    sqlite3_bind_int64(st, 4, now);
    if ((r = local_run(L, req, st)) != TERN_STORE_OK)
        return r;
    if (msg->ref) {
        char *abs = tern_arena_printf(&L->batch, "%s/%s", a->maildir, msg->ref);
        if (abs == NULL)
            return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
        return local_unlink_later(L, req, abs);
    }
    return TERN_STORE_OK;
}

static int copy_move(local_store *L, tern_store_req *req, bool move)
{
    lacct a;
    lmbox src, dst;
    int r = local_target(L, req, &a, &src);
    if (r != TERN_STORE_OK)
        return r;
    if (req->in.new_name == NULL)
        return tern_store__fail(req, TERN_STORE_EINVAL, "no target mailbox");
    if ((r = local_mailbox_get(L, req, &a, req->in.new_name, &dst)) != TERN_STORE_OK)
        return r;
    if (dst.id == src.id)
        dst = src;
    tern_uid_range *rg;
    size_t nr;
    if ((r = local_uid_ranges(L, req, &src, &req->in.uids, &rg, &nr)) != TERN_STORE_OK)
        return r;
    lmsg *v = NULL;
    size_t n = 0;
    if (nr > 0)
        r = collect(L, req, &src, rg, nr, false, &v, &n);
    free(rg);
    if (r != TERN_STORE_OK)
        return r;
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += v[i].size;
    if (!move && (r = quota_check(req, &a, total, n)) != TERN_STORE_OK)
        goto out;
    req->out.src_uids = tern_arena_alloc(&req->arena, (n ? n : 1) * sizeof(uint32_t));
    req->out.dst_uids = tern_arena_alloc(&req->arena, (n ? n : 1) * sizeof(uint32_t));
    if (req->out.src_uids == NULL || req->out.dst_uids == NULL) {
        r = tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
        goto out;
    }
    req->out.dst_uidvalidity = dst.uidvalidity;
    if (n == 0)
        goto out;
    uint64_t ms = local_next_modseq(L, req, &a);
    if (ms == 0) {
        r = req->status ? req->status : TERN_STORE_EIO;
        goto out;
    }
    char *dst_rel = local_mailbox_rel(&L->batch, dst.name);
    char *dst_cur = tern_arena_printf(&L->batch, "%s/cur", dst.dir);
    if (dst_rel == NULL || dst_cur == NULL) {
        r = tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
        goto out;
    }
    uint32_t uid = dst.uidnext;
    int64_t now = local_now();
    for (size_t i = 0; i < n; i++, uid++) {
        if (uid == UINT32_MAX) {
            r = tern_store__fail(req, TERN_STORE_EIO, "mailbox %s is out of uids", dst.name);
            goto out;
        }
        char *name = local_file_name(L, &L->batch, v[i].size, v[i].flags);
        char *from = tern_arena_printf(&L->batch, "%s/%s", a.maildir, v[i].ref);
        char *to = tern_arena_printf(&L->batch, "%s/%s", dst_cur, name);
        char *rel = tern_arena_printf(&L->batch, "%scur/%s", dst_rel, name);
        if (name == NULL || from == NULL || to == NULL || rel == NULL) {
            r = tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
            goto out;
        }
        /* One inode for every copy: the body is never stored twice. */
        if (link(from, to) != 0) {
            r = local_errno_fail(req, errno, "link", from);
            goto out;
        }
        local_effect(L, LEFF_UNDO_UNLINK, to, NULL);
        sqlite3_stmt *st = local_stmt(
            L, "INSERT INTO messages(account_id, mailbox_id, uid, modseq, flags, internal_date,"
               " size, email_id, thread_id, recent, hdr_date, subject, base_subject, from_addr,"
               " to_addr, cc_addr, bcc_addr, message_id, in_reply_to, refs, body_ref)"
               " SELECT account_id, ?, ?, ?, flags, internal_date, size, email_id, thread_id, 1,"
               " hdr_date, subject, base_subject, from_addr, to_addr, cc_addr, bcc_addr,"
               " message_id, in_reply_to, refs, ? FROM messages WHERE id = ?");
        if (st == NULL) {
            r = TERN_STORE_EIO;
            goto out;
        }
        sqlite3_bind_int64(st, 1, dst.id);
        sqlite3_bind_int64(st, 2, uid);
        sqlite3_bind_int64(st, 3, (int64_t)ms);
        sqlite3_bind_text(st, 4, rel, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 5, v[i].id);
        if ((r = local_run(L, req, st)) != TERN_STORE_OK)
            goto out;
        int64_t nid = sqlite3_last_insert_rowid(L->db);
        /* Keywords take the spelling the target mailbox already uses. */
        static const char *const copies[] = {
            "INSERT INTO keywords(message, keyword) SELECT ?1, coalesce((SELECT k2.keyword"
            " FROM keywords k2 JOIN messages m2 ON m2.id = k2.message WHERE m2.mailbox_id = ?3"
            " AND m2.id <> ?1 AND lower(k2.keyword) = lower(k.keyword) LIMIT 1), k.keyword)"
            " FROM keywords k WHERE k.message = ?2",
            "INSERT INTO headers(message, name, value) SELECT ?, name, value FROM headers"
            " WHERE message = ?",
        };
        for (size_t k = 0; k < 2; k++) {
            st = local_stmt(L, copies[k]);
            if (st == NULL) {
                r = TERN_STORE_EIO;
                goto out;
            }
            sqlite3_bind_int64(st, 1, nid);
            sqlite3_bind_int64(st, 2, v[i].id);
            if (k == 0)
                sqlite3_bind_int64(st, 3, dst.id);
            if ((r = local_run(L, req, st)) != TERN_STORE_OK)
                goto out;
        }
        if (move && (r = expunge_one(L, req, &a, &src, &v[i], ms, now)) != TERN_STORE_OK)
            goto out;
        req->out.src_uids[i] = v[i].uid;
        req->out.dst_uids[i] = uid;
    }
    req->out.n_copied = n;
    local_sync_dir(L, dst_cur);
    if (!move && (r = account_usage(L, req, &a, (int64_t)total, (int64_t)n)) != TERN_STORE_OK)
        goto out;
    if ((r = local_mailbox_touch(L, req, &dst, ms, uid)) != TERN_STORE_OK)
        goto out;
    local_event(L, a.name, (uint64_t)dst.id, ms);
    if (move) {
        if (src.id != dst.id && (r = local_mailbox_touch(L, req, &src, ms, 0)) != TERN_STORE_OK)
            goto out;
        local_event(L, a.name, (uint64_t)src.id, ms);
    }
    req->out.highest_modseq = src.id == dst.id ? dst.highest_modseq : src.highest_modseq;
out:
    free(v);
    return r;
}

static int expunge(local_store *L, tern_store_req *req)
{
    lacct a;
    lmbox m;
    int r = local_target(L, req, &a, &m);
    if (r != TERN_STORE_OK)
        return r;
    tern_uid_range *rg = NULL;
    size_t nr = 0;
    if (req->in.uids.n &&
        (r = local_uid_ranges(L, req, &m, &req->in.uids, &rg, &nr)) != TERN_STORE_OK)
        return r;
    lmsg *v = NULL;
    size_t n = 0;
    if (req->in.uids.n == 0 || nr > 0)
        r = collect(L, req, &m, rg, nr, true, &v, &n);
    free(rg);
    if (r != TERN_STORE_OK)
        return r;
    req->out.uids = tern_arena_alloc(&req->arena, (n ? n : 1) * sizeof(uint32_t));
    if (req->out.uids == NULL) {
        free(v);
        return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
    }
    req->out.highest_modseq = m.highest_modseq;
    if (n == 0) {
        free(v);
        return TERN_STORE_OK;
    }
    uint64_t ms = local_next_modseq(L, req, &a);
    if (ms == 0) {
        free(v);
        return req->status ? req->status : TERN_STORE_EIO;
    }
    int64_t now = local_now(), bytes = 0;
    for (size_t i = 0; i < n; i++) {
        if ((r = expunge_one(L, req, &a, &m, &v[i], ms, now)) != TERN_STORE_OK)
            break;
        req->out.uids[i] = v[i].uid;
        bytes += (int64_t)v[i].size;
    }
    free(v);
    if (r != TERN_STORE_OK)
        return r;
    req->out.n_uids = n;
    if ((r = account_usage(L, req, &a, -bytes, -(int64_t)n)) != TERN_STORE_OK)
        return r;
    if ((r = local_mailbox_touch(L, req, &m, ms, 0)) != TERN_STORE_OK)
        return r;
    req->out.highest_modseq = m.highest_modseq;
    local_event(L, a.name, (uint64_t)m.id, ms);
    return TERN_STORE_OK;
}

/* ---- CHANGES, QUOTA ------------------------------------------------------- */

static int changes(local_store *L, tern_store_req *req)
{
    lacct a;
    lmbox m;
    int r = local_target(L, req, &a, &m);
    if (r != TERN_STORE_OK)
        return r;
    uint64_t since = req->in.since_modseq;
    if (since < m.expunged_below)
        return tern_store__fail(req, TERN_STORE_ETOOOLD, "changes since %" PRIu64
                                " are past retention (oldest %" PRIu64 ")", since,
                                m.expunged_below);
    tern_changes *c = &req->out.changes;
    memset(c, 0, sizeof *c);
    c->highest_modseq = m.highest_modseq;
    sqlite3_stmt *st = local_stmt(
        L, "SELECT uid, modseq, flags, (SELECT group_concat(keyword, ' ') FROM keywords"
           " WHERE message = m.id) FROM messages m WHERE mailbox_id = ? AND modseq > ?"
           " ORDER BY uid");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, m.id);
    sqlite3_bind_int64(st, 2, (int64_t)since);
    size_t cap = 0;
    tern_change *v = NULL;
    while ((r = local_step(L, req, st)) == 1) {
        if (c->n_changed == cap) {
            cap = cap ? cap * 2 : 32;
            tern_change *nv = tern_arena_alloc(&req->arena, cap * sizeof *nv);
            if (nv == NULL)
                return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
            if (c->n_changed)
                memcpy(nv, v, c->n_changed * sizeof *nv);
            v = nv;
        }
        tern_change *o = &v[c->n_changed++];
        memset(o, 0, sizeof *o);
        o->uid = (uint32_t)sqlite3_column_int64(st, 0);
        o->modseq = (uint64_t)sqlite3_column_int64(st, 1);
        o->flags = (unsigned)sqlite3_column_int(st, 2);
        if (sqlite3_column_type(st, 3) != SQLITE_NULL)
            o->keywords = split_keywords(&req->arena, (const char *)sqlite3_column_text(st, 3),
                                         &o->n_keywords);
    }
    if (r < 0)
        return r;
    c->changed = v;
    st = local_stmt(L, "SELECT DISTINCT uid FROM expunged WHERE mailbox_id = ? AND modseq > ?"
                       " ORDER BY uid");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, m.id);
    sqlite3_bind_int64(st, 2, (int64_t)since);
    cap = 0;
    uint32_t *u = NULL;
    while ((r = local_step(L, req, st)) == 1) {
        if (c->n_vanished == cap) {
            cap = cap ? cap * 2 : 64;
            uint32_t *nu = tern_arena_alloc(&req->arena, cap * sizeof *nu);
            if (nu == NULL)
                return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
            if (c->n_vanished)
                memcpy(nu, u, c->n_vanished * sizeof *nu);
            u = nu;
        }
        u[c->n_vanished++] = (uint32_t)sqlite3_column_int64(st, 0);
    }
    if (r < 0)
        return r;
    c->vanished = u;
    return TERN_STORE_OK;
}

static int quota_get(local_store *L, tern_store_req *req)
{
    lacct a;
    int r = local_account_get(L, req, req->in.account ? req->in.account : req->in.name, &a);
    if (r != TERN_STORE_OK)
        return r;
    tern_account_info *o = &req->out.account;
    o->name = tern_arena_strdup(&req->arena, a.name);
    o->quota_bytes = a.quota_bytes;
    o->quota_messages = a.quota_messages;
    o->used_bytes = a.used_bytes;
    o->used_messages = a.used_messages;
    return TERN_STORE_OK;
}

int local_op_message(local_store *L, tern_store_req *req)
{
    switch (req->op) {
    case TERN_STORE_APPEND: return append(L, req);
    case TERN_STORE_FETCH: return fetch(L, req);
    case TERN_STORE_FETCH_BODY: return fetch_body(L, req);
    case TERN_STORE_SET_FLAGS: return local_set_flags(L, req);
    case TERN_STORE_COPY: return copy_move(L, req, false);
    case TERN_STORE_MOVE: return copy_move(L, req, true);
    case TERN_STORE_EXPUNGE: return expunge(L, req);
    case TERN_STORE_CHANGES: return changes(L, req);
    case TERN_STORE_QUOTA_GET: return quota_get(L, req);
    case TERN_STORE_RECENT_CLAIM: return local_recent_claim(L, req);
    case TERN_STORE_MAILBOX_KEYWORDS: return local_mailbox_keywords(L, req);
    default: return tern_store__fail(req, TERN_STORE_EINVAL, "not a message op");
    }
}
