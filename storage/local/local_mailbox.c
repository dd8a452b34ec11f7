/* Mailbox operations of the local backend: create, rename (with children,
 * and the RFC 9051 INBOX rename), delete, list, status, subscribe,
 * special-use. Runs on the backend thread inside the batch transaction.
 * Input trusted: names are re-checked with store_names.c.
 *
 * Folders are flat Maildir++ siblings (".a", ".a.b"), so a rename moves
 * each affected folder, recording every move for undo; body_ref (relative
 * to the account's Maildir) is rewritten in the same transaction. A
 * deleted folder is renamed into the Maildir's tmp/ before the COMMIT and
 * removed after it, so a crash in between never brings it back. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/log.h"
#include "storage/local/local_internal.h"

static int status_counts(local_store *L, tern_store_req *req, const lmbox *m, tern_mailbox_info *o)
{
    sqlite3_stmt *st = local_stmt(L, "SELECT count(*), total((flags & 1) = 0), total(recent),"
                                     " total(size) FROM messages WHERE mailbox_id = ?");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, m->id);
    int r = local_step(L, req, st);
    if (r < 0)
        return r;
    o->messages = (uint32_t)sqlite3_column_int64(st, 0);
    o->unseen = (uint32_t)sqlite3_column_double(st, 1);
    o->recent = (uint32_t)sqlite3_column_double(st, 2);
    o->size = (uint64_t)sqlite3_column_double(st, 3);
    sqlite3_reset(st);
    return TERN_STORE_OK;
}

static int has_children(local_store *L, tern_store_req *req, int64_t account_id, const char *name)
{
    sqlite3_stmt *st = local_stmt(L, "SELECT 1 FROM mailboxes WHERE account_id = ?1 AND"
                                     " substr(name, 1, length(?2) + 1) = ?2 || '/' LIMIT 1");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, account_id);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    int r = local_step(L, req, st);
    sqlite3_reset(st);
    return r;
}

static int fill_info(local_store *L, tern_store_req *req, const lacct *a, const lmbox *m,
                     tern_mailbox_info *o)
{
    memset(o, 0, sizeof *o);
    o->id = (uint64_t)m->id;
    o->name = tern_arena_strdup(&req->arena, m->name);
    o->special_use = m->special_use;
    o->subscribed = m->subscribed;
    o->uidvalidity = m->uidvalidity;
    o->uidnext = m->uidnext;
    o->highest_modseq = m->highest_modseq;
    int r = has_children(L, req, a->id, m->name);
    if (r < 0)
        return r;
    o->has_children = r == 1;
    return status_counts(L, req, m, o);
}

/* Creates the missing ancestors of `name` ("a" and "a/b" for "a/b/c"). */
static int create_parents(local_store *L, tern_store_req *req, lacct *a, const char *name)
{
    char *buf = tern_arena_strdup(&L->batch, name);
    if (buf == NULL)
        return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
    for (char *s = strchr(buf, '/'); s; s = strchr(s + 1, '/')) {
        *s = '\0';
        lmbox m;
        int r = local_mailbox_get(L, req, a, buf, &m);
        if (r == TERN_STORE_ENOTFOUND) {
            req->status = TERN_STORE_OK;
            r = local_mailbox_insert(L, req, a, buf, 0, true, &m);
        }
        if (r != TERN_STORE_OK)
            return r;
        *s = '/';
    }
    return TERN_STORE_OK;
}

static int mailbox_create(local_store *L, tern_store_req *req, lacct *a)
{
    const char *name = req->in.name;
    if (name == NULL || !tern_store__valid_mailbox_name(name))
        return tern_store__fail(req, TERN_STORE_EINVAL, "bad mailbox name");
    if (req->in.special_use & ~LOCAL_SPECIAL_MASK)
        return tern_store__fail(req, TERN_STORE_EINVAL, "bad special-use");
    name = tern_store__canon_mailbox(&L->batch, name);
    lmbox m;
    int r = local_mailbox_get(L, req, a, name, &m);
    if (r == TERN_STORE_OK)
        return tern_store__fail(req, TERN_STORE_EEXISTS, "mailbox %s exists", name);
    if (r != TERN_STORE_ENOTFOUND)
        return r;
    req->status = TERN_STORE_OK;
    if (req->in.create_parents && (r = create_parents(L, req, a, name)) != TERN_STORE_OK)
        return r;
    if ((r = local_mailbox_insert(L, req, a, name, req->in.special_use, true, &m)) != 0)
        return r;
    return fill_info(L, req, a, &m, &req->out.mailbox);
}

static int move_folder(local_store *L, tern_store_req *req, lacct *a, lmbox *m,
                       const char *new_name)
{
    char *new_dir = local_mailbox_dir(&L->batch, a->maildir, new_name);
    char *old_rel = local_mailbox_rel(&L->batch, m->name);
    char *new_rel = local_mailbox_rel(&L->batch, new_name);
    if (new_dir == NULL || old_rel == NULL || new_rel == NULL)
        return tern_store__fail(req, TERN_STORE_EINVAL, "mailbox name too long for a folder");
    if (access(new_dir, F_OK) == 0)
        return tern_store__fail(req, TERN_STORE_EEXISTS, "folder %s exists on disk", new_dir);
    uint64_t ms = local_next_modseq(L, req, a);
    if (ms == 0)
        return req->status ? req->status : TERN_STORE_EIO;
    sqlite3_stmt *st = local_stmt(L, "UPDATE mailboxes SET name = ?, highest_modseq = ?"
                                     " WHERE id = ?");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_text(st, 1, new_name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (int64_t)ms);
    sqlite3_bind_int64(st, 3, m->id);
    int r = local_run(L, req, st);
    if (r != TERN_STORE_OK)
        return r;
    st = local_stmt(L, "UPDATE messages SET body_ref = ?1 || substr(body_ref, length(?2) + 1)"
                       " WHERE mailbox_id = ?3");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_text(st, 1, new_rel, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, old_rel, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, m->id);
    if ((r = local_run(L, req, st)) != TERN_STORE_OK)
        return r;
    if (rename(m->dir, new_dir) != 0) {
        if (errno != ENOENT)
            return local_errno_fail(req, errno, "rename", m->dir);
        /* The folder was never made on disk (or lost): make the new one so
         * the mailbox is usable; reconciliation already handled rows. */
        if (local_mkdir_folder(new_dir) != 0)
            return local_errno_fail(req, errno, "mkdir", new_dir);
        local_effect(L, LEFF_UNDO_RMDIR, new_dir, NULL);
    } else {
        local_effect(L, LEFF_UNDO_RENAME, m->dir, new_dir);
    }
    local_sync_dir(L, a->maildir);
    local_event(L, a->name, (uint64_t)m->id, ms);
    return TERN_STORE_OK;
}

/* RFC 9051 6.3.6: renaming INBOX moves its messages to a new mailbox and
 * leaves INBOX empty; INBOX's children stay where they are. */
static int rename_inbox(local_store *L, tern_store_req *req, lacct *a, lmbox *inbox,
                        const char *new_name)
{
    lmbox nm;
    int r = local_mailbox_insert(L, req, a, new_name, 0, true, &nm);
    if (r != TERN_STORE_OK)
        return r;
    char *new_rel = local_mailbox_rel(&L->batch, new_name);
    if (new_rel == NULL)
        return tern_store__fail(req, TERN_STORE_EINVAL, "mailbox name too long");
    uint64_t ms = local_next_modseq(L, req, a);
    if (ms == 0)
        return req->status ? req->status : TERN_STORE_EIO;
    sqlite3_stmt *sel = local_stmt(L, "SELECT id, uid, body_ref FROM messages WHERE mailbox_id = ?"
                                      " ORDER BY uid");
    if (sel == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(sel, 1, inbox->id);
    int64_t now = local_now();
    /* Collected first: the loop below moves rows out of the range read. */
    size_t n = 0, cap = 64;
    int64_t *ids = malloc(cap * sizeof *ids);
    uint32_t *uids = malloc(cap * sizeof *uids);
    char **refs = malloc(cap * sizeof *refs);
    while (ids && uids && refs && (r = local_step(L, req, sel)) == 1) {
        if (n == cap) {
            cap *= 2;
            int64_t *ni = realloc(ids, cap * sizeof *ids);
            if (ni) ids = ni;
            uint32_t *nu = realloc(uids, cap * sizeof *uids);
            if (nu) uids = nu;
            char **nr = realloc(refs, cap * sizeof *refs);
            if (nr) refs = nr;
            if (!ni || !nu || !nr)
                break;
        }
        ids[n] = sqlite3_column_int64(sel, 0);
        uids[n] = (uint32_t)sqlite3_column_int64(sel, 1);
        refs[n] = local_col_text(&L->batch, sel, 2);
        n++;
    }
    sqlite3_reset(sel);
    if (ids == NULL || uids == NULL || refs == NULL || (r == 1))
        r = tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
    for (size_t i = 0; r == 0 && i < n; i++) {
        const char *ref = refs[i];
        const char *file = ref ? strrchr(ref, '/') : NULL;
        if (file == NULL)
            continue;
        char *from = tern_arena_printf(&L->batch, "%s/%s", a->maildir, ref);
        char *to = tern_arena_printf(&L->batch, "%s/cur%s", nm.dir, file);
        char *nref = tern_arena_printf(&L->batch, "%scur%s", new_rel, file);
        if (from == NULL || to == NULL || nref == NULL) {
            r = tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
            break;
        }
        if (rename(from, to) != 0) {
            r = local_errno_fail(req, errno, "rename", from);
            break;
        }
        local_effect(L, LEFF_UNDO_RENAME, from, to);
        sqlite3_stmt *up = local_stmt(L, "UPDATE messages SET mailbox_id = ?, body_ref = ?,"
                                         " modseq = ? WHERE id = ?");
        sqlite3_stmt *ex = local_stmt(L, "INSERT INTO expunged(mailbox_id, uid, modseq, time)"
                                         " VALUES(?, ?, ?, ?)");
        if (up == NULL || ex == NULL) {
            r = TERN_STORE_EIO;
            break;
        }
        sqlite3_bind_int64(up, 1, nm.id);
        sqlite3_bind_text(up, 2, nref, -1, SQLITE_STATIC);
        sqlite3_bind_int64(up, 3, (int64_t)ms);
        sqlite3_bind_int64(up, 4, ids[i]);
        if ((r = local_run(L, req, up)) != TERN_STORE_OK)
            break;
        sqlite3_bind_int64(ex, 1, inbox->id);
        sqlite3_bind_int64(ex, 2, uids[i]);
        sqlite3_bind_int64(ex, 3, (int64_t)ms);
        sqlite3_bind_int64(ex, 4, now);
        r = local_run(L, req, ex);
    }
    free(ids);
    free(uids);
    free(refs);
    if (r < 0)
        return r;
    sqlite3_stmt *st = local_stmt(L, "UPDATE mailboxes SET uidnext = ?, highest_modseq = ?"
                                     " WHERE id = ?");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, inbox->uidnext);
    sqlite3_bind_int64(st, 2, (int64_t)ms);
    sqlite3_bind_int64(st, 3, nm.id);
    if ((r = local_run(L, req, st)) != TERN_STORE_OK)
        return r;
    st = local_stmt(L, "UPDATE mailboxes SET highest_modseq = ? WHERE id = ?");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, (int64_t)ms);
    sqlite3_bind_int64(st, 2, inbox->id);
    if ((r = local_run(L, req, st)) != TERN_STORE_OK)
        return r;
    local_sync_dir(L, tern_arena_printf(&L->batch, "%s/cur", inbox->dir));
    local_sync_dir(L, tern_arena_printf(&L->batch, "%s/cur", nm.dir));
    local_event(L, a->name, (uint64_t)inbox->id, ms);
    local_event(L, a->name, (uint64_t)nm.id, ms);
    return TERN_STORE_OK;
}

static int mailbox_rename(local_store *L, tern_store_req *req, lacct *a)
{
    const char *from = req->in.name, *to = req->in.new_name;
    if (from == NULL || to == NULL || !tern_store__valid_mailbox_name(from) ||
        !tern_store__valid_mailbox_name(to))
        return tern_store__fail(req, TERN_STORE_EINVAL, "bad mailbox name");
    from = tern_store__canon_mailbox(&L->batch, from);
    to = tern_store__canon_mailbox(&L->batch, to);
    lmbox src, dst;
    int r = local_mailbox_get(L, req, a, from, &src);
    if (r != TERN_STORE_OK)
        return r;
    r = local_mailbox_get(L, req, a, to, &dst);
    if (r == TERN_STORE_OK)
        return tern_store__fail(req, TERN_STORE_EEXISTS, "mailbox %s exists", to);
    if (r != TERN_STORE_ENOTFOUND)
        return r;
    req->status = TERN_STORE_OK;
    size_t fl = strlen(from);
    if (strncmp(to, from, fl) == 0 && to[fl] == '/')
        return tern_store__fail(req, TERN_STORE_EINVAL, "cannot move %s under itself", from);
    if ((r = create_parents(L, req, a, to)) != TERN_STORE_OK)
        return r;
    if (strcmp(from, "INBOX") == 0)
        return rename_inbox(L, req, a, &src, to);

    /* The mailbox and its children, found before any of them moves. */
    sqlite3_stmt *st = local_stmt(L, "SELECT id, name FROM mailboxes WHERE account_id = ?1 AND"
                                     " (name = ?2 OR substr(name, 1, length(?2) + 1) = ?2 || '/')"
                                     " ORDER BY name");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, a->id);
    sqlite3_bind_text(st, 2, from, -1, SQLITE_STATIC);
    size_t n = 0, cap = 8;
    char **names = tern_arena_alloc(&L->batch, cap * sizeof *names);
    while ((r = local_step(L, req, st)) == 1) {
        if (n == cap) {
            char **nn = tern_arena_alloc(&L->batch, cap * 2 * sizeof *nn);
            if (nn == NULL)
                return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
            memcpy(nn, names, n * sizeof *nn);
            names = nn;
            cap *= 2;
        }
        names[n++] = local_col_text(&L->batch, st, 1);
    }
    if (r < 0)
        return r;
    for (size_t i = 0; i < n; i++) {
        char *nn = tern_arena_printf(&L->batch, "%s%s", to, names[i] + fl);
        if (nn == NULL || !tern_store__valid_mailbox_name(nn))
            return tern_store__fail(req, TERN_STORE_EINVAL, "bad target name");
        if ((r = local_mailbox_get(L, req, a, nn, &dst)) == TERN_STORE_OK)
            return tern_store__fail(req, TERN_STORE_EEXISTS, "mailbox %s exists", nn);
        req->status = TERN_STORE_OK;
        lmbox m;
        if ((r = local_mailbox_get(L, req, a, names[i], &m)) != TERN_STORE_OK)
            return r;
        if ((r = move_folder(L, req, a, &m, nn)) != TERN_STORE_OK)
            return r;
    }
    TLOG_INFO("store", "event=mailbox_renamed account=%s mailboxes=%zu", a->name, n);
    return TERN_STORE_OK;
}

static int mailbox_delete(local_store *L, tern_store_req *req, lacct *a)
{
    lmbox m;
    int r = local_mailbox_get(L, req, a, req->in.name, &m);
    if (r != TERN_STORE_OK)
        return r;
    if (strcmp(m.name, "INBOX") == 0)
        return tern_store__fail(req, TERN_STORE_EFORBIDDEN, "INBOX cannot be deleted");
    if ((r = has_children(L, req, a->id, m.name)) != 0)
        return r < 0 ? r : tern_store__fail(req, TERN_STORE_ENOTEMPTY, "%s has children", m.name);
    sqlite3_stmt *st = local_stmt(L, "UPDATE accounts SET"
                                     " used_bytes = used_bytes - (SELECT total(size) FROM messages"
                                     " WHERE mailbox_id = ?1), used_messages = used_messages -"
                                     " (SELECT count(*) FROM messages WHERE mailbox_id = ?1)"
                                     " WHERE id = ?2");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, m.id);
    sqlite3_bind_int64(st, 2, a->id);
    if ((r = local_run(L, req, st)) != TERN_STORE_OK)
        return r;
    static const char *const dels[] = {
        "DELETE FROM keywords WHERE message IN (SELECT id FROM messages WHERE mailbox_id = ?)",
        "DELETE FROM headers WHERE message IN (SELECT id FROM messages WHERE mailbox_id = ?)",
        "DELETE FROM messages WHERE mailbox_id = ?",
        "DELETE FROM expunged WHERE mailbox_id = ?",
        "DELETE FROM mailboxes WHERE id = ?",
    };
    for (size_t i = 0; i < sizeof dels / sizeof dels[0]; i++) {
        st = local_stmt(L, dels[i]);
        if (st == NULL)
            return TERN_STORE_EIO;
        sqlite3_bind_int64(st, 1, m.id);
        if ((r = local_run(L, req, st)) != TERN_STORE_OK)
            return r;
    }
    uint64_t ms = local_next_modseq(L, req, a);
    if (ms == 0)
        return req->status ? req->status : TERN_STORE_EIO;
    char *grave = tern_arena_printf(&L->batch, "%s/tmp/deleted.%" PRId64 ".%" PRIu64, a->maildir,
                                    m.id, ++L->file_seq);
    if (grave == NULL)
        return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
    if (rename(m.dir, grave) == 0) {
        local_effect(L, LEFF_UNDO_RENAME, m.dir, grave);
        local_effect(L, LEFF_POST_RMTREE, grave, NULL);
        local_sync_dir(L, a->maildir);
    } else if (errno != ENOENT) {
        return local_errno_fail(req, errno, "rename", m.dir);
    }
    local_event(L, a->name, (uint64_t)m.id, ms);
    TLOG_INFO("store", "event=mailbox_deleted account=%s mailbox_id=%" PRId64, a->name, m.id);
    return TERN_STORE_OK;
}

static int mailbox_list(local_store *L, tern_store_req *req, lacct *a)
{
    sqlite3_stmt *st = local_stmt(L, "SELECT " "id, name, special_use, subscribed, uidvalidity,"
                                     " uidnext, highest_modseq, expunged_below_modseq"
                                     " FROM mailboxes WHERE account_id = ? ORDER BY name");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, a->id);
    size_t n = 0, cap = 16;
    lmbox *v = tern_arena_alloc(&L->batch, cap * sizeof *v);
    int r;
    while ((r = local_step(L, req, st)) == 1) {
        if (n == cap) {
            lmbox *nv = tern_arena_alloc(&L->batch, cap * 2 * sizeof *nv);
            if (nv == NULL)
                return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
            memcpy(nv, v, n * sizeof *nv);
            v = nv;
            cap *= 2;
        }
        lmbox *m = &v[n];
        m->id = sqlite3_column_int64(st, 0);
        m->name = local_col_text(&L->batch, st, 1);
        m->special_use = (unsigned)sqlite3_column_int(st, 2);
        m->subscribed = sqlite3_column_int(st, 3) != 0;
        m->uidvalidity = (uint32_t)sqlite3_column_int64(st, 4);
        m->uidnext = (uint32_t)sqlite3_column_int64(st, 5);
        m->highest_modseq = (uint64_t)sqlite3_column_int64(st, 6);
        if (req->in.subscribed_only && !m->subscribed)
            continue;
        if (req->in.pattern && !tern_store__pattern_match(req->in.pattern, m->name))
            continue;
        n++;
    }
    if (r < 0)
        return r;
    tern_mailbox_info *out = tern_arena_alloc(&req->arena, (n ? n : 1) * sizeof *out);
    if (out == NULL)
        return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
    for (size_t i = 0; i < n; i++)
        if ((r = fill_info(L, req, a, &v[i], &out[i])) != TERN_STORE_OK)
            return r;
    req->out.mailboxes = out;
    req->out.n_mailboxes = n;
    return TERN_STORE_OK;
}

static int mailbox_update(local_store *L, tern_store_req *req, lacct *a)
{
    if (req->op == TERN_STORE_MAILBOX_SET_SPECIAL && (req->in.special_use & ~LOCAL_SPECIAL_MASK))
        return tern_store__fail(req, TERN_STORE_EINVAL, "bad special-use");
    lmbox m;
    int r = local_mailbox_get(L, req, a, req->in.name, &m);
    if (r != TERN_STORE_OK)
        return r;
    sqlite3_stmt *st;
    if (req->op == TERN_STORE_MAILBOX_SUBSCRIBE) {
        st = local_stmt(L, "UPDATE mailboxes SET subscribed = ? WHERE id = ?");
        if (st == NULL)
            return TERN_STORE_EIO;
        sqlite3_bind_int(st, 1, req->in.subscribed);
        m.subscribed = req->in.subscribed;
    } else {
        st = local_stmt(L, "UPDATE mailboxes SET special_use = ? WHERE id = ?");
        if (st == NULL)
            return TERN_STORE_EIO;
        sqlite3_bind_int(st, 1, (int)req->in.special_use);
        m.special_use = req->in.special_use;
    }
    sqlite3_bind_int64(st, 2, m.id);
    if ((r = local_run(L, req, st)) != TERN_STORE_OK)
        return r;
    return fill_info(L, req, a, &m, &req->out.mailbox);
}

int local_op_mailbox(local_store *L, tern_store_req *req)
{
    lacct a;
    int r = local_account_get(L, req, req->in.account, &a);
    if (r != TERN_STORE_OK)
        return r;
    switch (req->op) {
    case TERN_STORE_MAILBOX_CREATE: return mailbox_create(L, req, &a);
    case TERN_STORE_MAILBOX_RENAME: return mailbox_rename(L, req, &a);
    case TERN_STORE_MAILBOX_DELETE: return mailbox_delete(L, req, &a);
    case TERN_STORE_MAILBOX_LIST: return mailbox_list(L, req, &a);
    case TERN_STORE_MAILBOX_STATUS: {
        lmbox m;
        if ((r = local_mailbox_get(L, req, &a, req->in.name, &m)) != TERN_STORE_OK)
            return r;
        return fill_info(L, req, &a, &m, &req->out.mailbox);
    }
    case TERN_STORE_MAILBOX_SUBSCRIBE:
    case TERN_STORE_MAILBOX_SET_SPECIAL: return mailbox_update(L, req, &a);
    default: return tern_store__fail(req, TERN_STORE_EINVAL, "not a mailbox op");
    }
}
