/* Reconciliation at open: makes the Maildir tree and the SQLite rows agree
 * again after a crash, a power loss or a Maildir tool working behind our
 * back. Runs before the backend thread starts, in the process holding the
 * lock. Input not trusted: every file name found on disk is parsed
 * defensively; a name we cannot place is logged and left alone.
 *
 * Rules, per folder, matching files and rows by the file's base (the name
 * before ':', which flag renames keep):
 *   - tmp/: everything removed (never acknowledged: the COMMIT follows the
 *     rename into cur/).
 *   - new/: moved into cur/ with an empty ":2," suffix, then as cur/.
 *   - a file without a row: indexed into the mailbox (new uid), logged.
 *   - a row without a file: removed as an expunge (recorded for QRESYNC),
 *     logged.
 *   - both, different names: the row's flags win; the file is renamed.
 *   - pending_unlink rows (expunged, COMMIT durable, unlink maybe not):
 *     unlinked first, so an expunged message never comes back.
 * A folder on disk without a mailbox gets one; a mailbox whose folder or
 * whole Maildir is missing keeps its rows (logged as an error, not
 * expunged): an unmounted disk must not empty a mailbox. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/log.h"
#include "storage/local/local_internal.h"

typedef struct rrow {
    int64_t id;
    uint32_t uid;
    unsigned flags;
    uint64_t size;
    char *ref;
    const char *file; /* inside ref */
} rrow;

typedef struct names {
    char **v;
    size_t n, cap;
} names;

static int names_add(names *s, const char *name)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        char **nv = realloc(s->v, cap * sizeof *nv);
        if (nv == NULL)
            return -1;
        s->v = nv;
        s->cap = cap;
    }
    if ((s->v[s->n] = strdup(name)) == NULL)
        return -1;
    s->n++;
    return 0;
}

static void names_free(names *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    memset(s, 0, sizeof *s);
}

static int base_cmp(const char *a, const char *b)
{
    size_t la = local_base_len(a), lb = local_base_len(b);
    int c = memcmp(a, b, la < lb ? la : lb);
    if (c != 0)
        return c;
    return la < lb ? -1 : la > lb;
}

static int cmp_names(const void *x, const void *y)
{
    return base_cmp(*(char *const *)x, *(char *const *)y);
}

static int cmp_rows(const void *x, const void *y)
{
    return base_cmp(((const rrow *)x)->file, ((const rrow *)y)->file);
}

/* Regular files in dir (names that could be Maildir messages). */
static int list_files(const char *dir, names *out)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return errno == ENOENT ? 1 : -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (e->d_type != DT_REG && e->d_type != DT_UNKNOWN)
            continue;
        if (names_add(out, e->d_name) != 0) {
            closedir(d);
            return -1;
        }
    }
    closedir(d);
    return 0;
}

static void clean_tmp(const char *dir, const char *account)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/tmp", dir);
    DIR *d = opendir(p);
    if (d == NULL)
        return;
    struct dirent *e;
    size_t n = 0;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char f[4400];
        snprintf(f, sizeof f, "%s/%s", p, e->d_name);
        if (local_rmtree(f) == 0)
            n++;
    }
    closedir(d);
    if (n)
        TLOG_WARN("store", "event=reconcile_tmp_removed account=%s dir=\"%s\" files=%zu", account,
                  dir, n);
}

static void move_new(const char *dir, const char *account)
{
    char nd[4096];
    snprintf(nd, sizeof nd, "%s/new", dir);
    names s = {0};
    if (list_files(nd, &s) != 0) {
        names_free(&s);
        return;
    }
    for (size_t i = 0; i < s.n; i++) {
        char from[4400], to[4400];
        snprintf(from, sizeof from, "%s/%s", nd, s.v[i]);
        if (strchr(s.v[i], ':'))
            snprintf(to, sizeof to, "%s/cur/%s", dir, s.v[i]);
        else
            snprintf(to, sizeof to, "%s/cur/%s:2,", dir, s.v[i]);
        if (rename(from, to) != 0)
            TLOG_WARN("store", "event=reconcile_new_failed account=%s path=\"%s\" error=\"%s\"",
                      account, from, strerror(errno));
    }
    if (s.n) {
        snprintf(nd, sizeof nd, "%s/cur", dir);
        local_fsync_path(nd);
    }
    names_free(&s);
}

int local_add_file_message(local_store *L, tern_store_req *req, lacct *a, lmbox *m,
                           const char *cur_name)
{
    char *path = tern_arena_printf(&L->batch, "%s/cur/%s", m->dir, cur_name);
    char *rel = tern_arena_printf(&L->batch, "%scur/%s", local_mailbox_rel(&L->batch, m->name),
                                  cur_name);
    if (path == NULL || rel == NULL)
        return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
    struct stat sb;
    if (stat(path, &sb) != 0)
        return local_errno_fail(req, errno, "stat", path);
    uint8_t *head;
    size_t hl;
    int err = local_read_head(path, &head, &hl);
    if (err != 0)
        return local_errno_fail(req, -err, "read", path);
    int r = local_insert_message(L, req, a, m, rel, (uint64_t)sb.st_size,
                                 local_flags_from_name(cur_name), NULL, (int64_t)sb.st_mtime,
                                 head, hl, NULL);
    free(head);
    return r;
}

static int remove_row(local_store *L, tern_store_req *req, lacct *a, lmbox *m, const rrow *row,
                      uint64_t *ms)
{
    if (*ms == 0 && (*ms = local_next_modseq(L, req, a)) == 0)
        return req->status ? req->status : TERN_STORE_EIO;
    int r = local_delete_rows(L, req, row->id);
    if (r != TERN_STORE_OK)
        return r;
    sqlite3_stmt *st = local_stmt(L, "INSERT INTO expunged(mailbox_id, uid, modseq, time)"
                                     " VALUES(?, ?, ?, ?)");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, m->id);
    sqlite3_bind_int64(st, 2, row->uid);
    sqlite3_bind_int64(st, 3, (int64_t)*ms);
    sqlite3_bind_int64(st, 4, local_now());
    if ((r = local_run(L, req, st)) != TERN_STORE_OK)
        return r;
    st = local_stmt(L, "UPDATE accounts SET used_bytes = max(0, used_bytes - ?),"
                       " used_messages = max(0, used_messages - 1) WHERE id = ?");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, (int64_t)row->size);
    sqlite3_bind_int64(st, 2, a->id);
    if ((r = local_run(L, req, st)) != TERN_STORE_OK)
        return r;
    return local_mailbox_touch(L, req, m, *ms, 0);
}

static int load_rows(local_store *L, tern_store_req *req, const lmbox *m, rrow **out_r,
                     size_t *n_r)
{
    sqlite3_stmt *st = local_stmt(L, "SELECT id, uid, flags, size, body_ref FROM messages"
                                     " WHERE mailbox_id = ?");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, m->id);
    size_t n = 0, cap = 0;
    rrow *v = NULL;
    int r;
    while ((r = local_step(L, req, st)) == 1) {
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            rrow *nv = realloc(v, cap * sizeof *nv);
            if (nv == NULL) {
                free(v);
                sqlite3_reset(st);
                return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
            }
            v = nv;
        }
        rrow *o = &v[n++];
        o->id = sqlite3_column_int64(st, 0);
        o->uid = (uint32_t)sqlite3_column_int64(st, 1);
        o->flags = (unsigned)sqlite3_column_int(st, 2);
        o->size = (uint64_t)sqlite3_column_int64(st, 3);
        o->ref = local_col_text(&L->batch, st, 4);
        if (o->ref == NULL)
            o->ref = tern_arena_strdup(&L->batch, "");
        const char *s = o->ref ? strrchr(o->ref, '/') : NULL;
        o->file = s ? s + 1 : (o->ref ? o->ref : "");
    }
    if (r < 0) {
        free(v);
        return r;
    }
    *out_r = v;
    *n_r = n;
    return TERN_STORE_OK;
}

/* One folder, in the caller's transaction. */
static int reconcile_folder(local_store *L, tern_store_req *req, lacct *a, lmbox *m)
{
    char cur[4200];
    snprintf(cur, sizeof cur, "%s/cur", m->dir);
    rrow *rows = NULL;
    size_t nrows = 0;
    int r = load_rows(L, req, m, &rows, &nrows);
    if (r != TERN_STORE_OK)
        return r;
    struct stat sb;
    if (stat(cur, &sb) != 0) {
        if (nrows > 0) {
            TLOG_ERR("store", "event=reconcile_folder_missing account=%s mailbox_id=%" PRId64
                     " dir=\"%s\" messages=%zu note=\"rows kept\"", a->name, m->id, m->dir, nrows);
            free(rows);
            return TERN_STORE_OK;
        }
        local_mkdir_folder(m->dir);
    }
    clean_tmp(m->dir, a->name);
    move_new(m->dir, a->name);
    names files = {0};
    if (list_files(cur, &files) < 0) {
        free(rows);
        names_free(&files);
        return local_errno_fail(req, errno, "list", cur);
    }
    if (files.n > 1)
        qsort(files.v, files.n, sizeof *files.v, cmp_names);
    if (nrows > 1)
        qsort(rows, nrows, sizeof *rows, cmp_rows);
    char *rel = local_mailbox_rel(&L->batch, m->name);
    uint64_t ms = 0;
    size_t i = 0, j = 0, added = 0, removed = 0;
    const char *prev = NULL;
    while (r == TERN_STORE_OK && (i < files.n || j < nrows)) {
        int c = i >= files.n ? 1 : j >= nrows ? -1 : base_cmp(files.v[i], rows[j].file);
        if (c < 0) {
            const char *name = files.v[i];
            if (prev && base_cmp(prev, name) == 0) {
                /* Same base twice (a tool copied a file): give this one a
                 * base of its own before indexing it. */
                struct stat fs;
                char from[4400], to[4400];
                snprintf(from, sizeof from, "%s/%s", cur, name);
                char *nn = stat(from, &fs) == 0
                               ? local_file_name(L, &L->batch, (uint64_t)fs.st_size,
                                                 local_flags_from_name(name))
                               : NULL;
                if (nn == NULL) {
                    i++;
                    continue;
                }
                snprintf(to, sizeof to, "%s/%s", cur, nn);
                if (rename(from, to) != 0) {
                    i++;
                    continue;
                }
                name = nn;
            }
            r = local_add_file_message(L, req, a, m, name);
            if (r == TERN_STORE_OK) {
                added++;
                TLOG_WARN("store", "event=reconcile_added account=%s mailbox_id=%" PRId64
                          " file=\"%s\" uid=%" PRIu32, a->name, m->id, name, m->uidnext - 1);
            }
            prev = files.v[i];
            i++;
        } else if (c > 0) {
            r = remove_row(L, req, a, m, &rows[j], &ms);
            if (r == TERN_STORE_OK) {
                removed++;
                TLOG_WARN("store", "event=reconcile_removed account=%s mailbox_id=%" PRId64
                          " uid=%" PRIu32 " file=\"%s\" note=\"file missing; expunged\"",
                          a->name, m->id, rows[j].uid, rows[j].ref);
            }
            j++;
        } else {
            const char *disk = files.v[i];
            char *want = local_rename_flags(&L->batch, disk, rows[j].flags);
            if (want && strcmp(want, disk) != 0) {
                char from[4400], to[4400];
                snprintf(from, sizeof from, "%s/%s", cur, disk);
                snprintf(to, sizeof to, "%s/%s", cur, want);
                if (rename(from, to) == 0)
                    disk = want;
            }
            char *nref = tern_arena_printf(&L->batch, "%scur/%s", rel ? rel : "", disk);
            if (nref && strcmp(nref, rows[j].ref) != 0) {
                sqlite3_stmt *st = local_stmt(L, "UPDATE messages SET body_ref = ? WHERE id = ?");
                if (st == NULL) {
                    r = TERN_STORE_EIO;
                    break;
                }
                sqlite3_bind_text(st, 1, nref, -1, SQLITE_STATIC);
                sqlite3_bind_int64(st, 2, rows[j].id);
                r = local_run(L, req, st);
                TLOG_INFO("store", "event=reconcile_renamed account=%s mailbox_id=%" PRId64
                          " uid=%" PRIu32 " file=\"%s\"", a->name, m->id, rows[j].uid, disk);
            }
            prev = files.v[i];
            i++;
            j++;
        }
    }
    if (added || removed)
        local_fsync_path(cur);
    free(rows);
    names_free(&files);
    return r;
}

static int run_pending_unlinks(local_store *L)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(L->db, "SELECT path FROM pending_unlink", -1, &st, NULL) != SQLITE_OK)
        return -1;
    while (sqlite3_step(st) == SQLITE_ROW) {
        char p[4400];
        snprintf(p, sizeof p, "%s/%s", L->root, (const char *)sqlite3_column_text(st, 0));
        if (unlink(p) == 0)
            TLOG_INFO("store", "event=reconcile_unlinked path=\"%s\"", p);
    }
    sqlite3_finalize(st);
    return sqlite3_exec(L->db, "DELETE FROM pending_unlink", NULL, NULL, NULL) == SQLITE_OK ? 0
                                                                                             : -1;
}

/* Folders on disk that have no mailbox get one. */
static int adopt_folders(local_store *L, tern_store_req *req, lacct *a)
{
    DIR *d = opendir(a->maildir);
    if (d == NULL)
        return TERN_STORE_OK;
    struct dirent *e;
    int r = TERN_STORE_OK;
    while (r == TERN_STORE_OK && (e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.' || strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *name = local_folder_decode(&L->batch, e->d_name + 1);
        if (name == NULL || !tern_store__valid_mailbox_name(name) ||
            strcmp(tern_store__canon_mailbox(&L->batch, name), name) != 0 ||
            strcmp(name, "INBOX") == 0) {
            TLOG_WARN("store", "event=reconcile_folder_ignored account=%s folder=\"%s\"", a->name,
                      e->d_name);
            continue;
        }
        char *cur = tern_arena_printf(&L->batch, "%s/%s/cur", a->maildir, e->d_name);
        struct stat sb;
        if (cur == NULL || stat(cur, &sb) != 0 || !S_ISDIR(sb.st_mode))
            continue;
        lmbox m;
        r = local_mailbox_get(L, req, a, name, &m);
        if (r == TERN_STORE_ENOTFOUND) {
            req->status = TERN_STORE_OK;
            r = local_mailbox_insert(L, req, a, name, 0, false, &m);
            if (r == TERN_STORE_OK)
                TLOG_WARN("store", "event=reconcile_mailbox_added account=%s mailbox=\"%s\"",
                          a->name, name);
        }
    }
    closedir(d);
    return r;
}

static int reconcile_account(local_store *L, tern_store_req *req, const char *account)
{
    lacct a;
    int r = local_account_get(L, req, account, &a);
    if (r != TERN_STORE_OK)
        return r;
    struct stat sb;
    if (stat(a.maildir, &sb) != 0) {
        if (a.used_messages > 0) {
            TLOG_ERR("store", "event=reconcile_maildir_missing account=%s dir=\"%s\""
                     " note=\"rows kept\"", a.name, a.maildir);
            return TERN_STORE_OK;
        }
    }
    if ((r = adopt_folders(L, req, &a)) != TERN_STORE_OK)
        return r;
    sqlite3_stmt *st = local_stmt(L, "SELECT name FROM mailboxes WHERE account_id = ?");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, a.id);
    names mboxes = {0};
    while ((r = local_step(L, req, st)) == 1)
        if (names_add(&mboxes, (const char *)sqlite3_column_text(st, 0)) != 0) {
            r = tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
            break;
        }
    for (size_t i = 0; r == 0 && i < mboxes.n; i++) {
        lmbox m;
        if ((r = local_mailbox_get(L, req, &a, mboxes.v[i], &m)) != TERN_STORE_OK)
            break;
        r = reconcile_folder(L, req, &a, &m);
    }
    names_free(&mboxes);
    return r;
}

int local_reconcile(local_store *L, char **error_r)
{
    if (run_pending_unlinks(L) != 0) {
        if (error_r)
            *error_r = strdup("reconcile: pending unlinks failed");
        return -1;
    }
    names accounts = {0};
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(L->db, "SELECT name FROM accounts ORDER BY name", -1, &st, NULL) ==
        SQLITE_OK) {
        while (sqlite3_step(st) == SQLITE_ROW)
            names_add(&accounts, (const char *)sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
    }
    lctx ctx = {0};
    tern_store_req *req = calloc(1, sizeof *req);
    if (req == NULL) {
        names_free(&accounts);
        return -1;
    }
    tern_arena_init(&req->arena, 4096);
    int rc = 0;
    for (size_t i = 0; i < accounts.n; i++) {
        tern_arena_reset(&L->batch);
        L->sync_dirs = NULL;
        L->n_sync_dirs = L->cap_sync_dirs = 0;
        memset(&ctx, 0, sizeof ctx);
        L->ctx = &ctx;
        req->status = TERN_STORE_OK;
        req->error[0] = '\0';
        if (sqlite3_exec(L->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
            rc = -1;
            break;
        }
        int r = reconcile_account(L, req, accounts.v[i]);
        for (sqlite3_stmt *s = sqlite3_next_stmt(L->db, NULL); s; s = sqlite3_next_stmt(L->db, s))
            if (sqlite3_stmt_busy(s))
                sqlite3_reset(s);
        for (size_t k = 0; k < L->n_sync_dirs; k++)
            local_fsync_path(L->sync_dirs[k]);
        if (r != TERN_STORE_OK) {
            sqlite3_exec(L->db, "ROLLBACK", NULL, NULL, NULL);
            TLOG_ERR("store", "event=reconcile_failed account=%s error=\"%s\"", accounts.v[i],
                     req->error);
            continue; /* the account is served as it is; the next start retries */
        }
        if (sqlite3_exec(L->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
            sqlite3_exec(L->db, "ROLLBACK", NULL, NULL, NULL);
            rc = -1;
            break;
        }
    }
    L->ctx = NULL;
    tern_arena_free(&req->arena);
    free(req);
    names_free(&accounts);
    tern_arena_reset(&L->batch);
    L->sync_dirs = NULL;
    L->n_sync_dirs = L->cap_sync_dirs = 0;
    if (rc != 0 && error_r)
        *error_r = strdup("reconcile: database error");
    return rc;
}
