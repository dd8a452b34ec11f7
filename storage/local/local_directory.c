/* Directory (domains, accounts, aliases, recipient lookup) and mailbox
 * operations of the local backend. Runs on the backend thread inside the
 * batch transaction (local.c). Input trusted: request parameters from our
 * protocol code, but every name is re-checked with store_names.c before it
 * becomes a row or a directory.
 *
 * Mailbox renames move Maildir++ folders (flat siblings ".a", ".a.b") one
 * by one before the COMMIT, each recorded for undo; a deleted folder is
 * first renamed into the Maildir's tmp/ (which reconciliation empties) so
 * a crash after the COMMIT cannot bring it back. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "lib/log.h"
#include "storage/local/local_internal.h"

static const char *param_domain(const tern_store_req *req)
{
    return req->in.domain ? req->in.domain : req->in.name;
}

static const char *lower_domain(tern_arena *a, const char *addr)
{
    char *c = tern_arena_strdup(a, addr);
    char *at = c ? strrchr(c, '@') : NULL;
    if (at)
        for (char *p = at + 1; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
    return c;
}

static int64_t domain_id(local_store *L, tern_store_req *req, const char *domain)
{
    sqlite3_stmt *st = local_stmt(L, "SELECT id FROM domains WHERE name = ?");
    if (st == NULL)
        return -1;
    sqlite3_bind_text(st, 1, domain, -1, SQLITE_STATIC);
    int r = local_step(L, req, st);
    if (r <= 0)
        return r < 0 ? -1 : 0;
    return sqlite3_column_int64(st, 0);
}

int local_account_get(local_store *L, tern_store_req *req, const char *name, lacct *out)
{
    memset(out, 0, sizeof *out);
    if (name == NULL || !tern_store__valid_account_name(name))
        return tern_store__fail(req, TERN_STORE_EINVAL, "bad account name");
    sqlite3_stmt *st = local_stmt(L, "SELECT id, name, quota_bytes, quota_messages, used_bytes,"
                                     " used_messages, highest_modseq FROM accounts WHERE name = ?");
    if (st == NULL)
        return tern_store__fail(req, TERN_STORE_EIO, "statement");
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int r = local_step(L, req, st);
    if (r < 0)
        return r;
    if (r == 0)
        return tern_store__fail(req, TERN_STORE_ENOTFOUND, "no account %s", name);
    out->id = sqlite3_column_int64(st, 0);
    out->name = local_col_text(&L->batch, st, 1);
    out->quota_bytes = (uint64_t)sqlite3_column_int64(st, 2);
    out->quota_messages = (uint64_t)sqlite3_column_int64(st, 3);
    out->used_bytes = (uint64_t)sqlite3_column_int64(st, 4);
    out->used_messages = (uint64_t)sqlite3_column_int64(st, 5);
    out->highest_modseq = (uint64_t)sqlite3_column_int64(st, 6);
    sqlite3_reset(st);
    out->maildir = local_account_maildir(L, &L->batch, out->name);
    if (out->maildir == NULL)
        return tern_store__fail(req, TERN_STORE_EINVAL, "account %s has no usable path", name);
    return TERN_STORE_OK;
}

uint64_t local_next_modseq(local_store *L, tern_store_req *req, lacct *a)
{
    sqlite3_stmt *st = local_stmt(L, "UPDATE accounts SET highest_modseq = highest_modseq + 1"
                                     " WHERE id = ? RETURNING highest_modseq");
    if (st == NULL)
        return 0;
    sqlite3_bind_int64(st, 1, a->id);
    if (local_step(L, req, st) != 1)
        return 0;
    a->highest_modseq = (uint64_t)sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return a->highest_modseq;
}

static int read_mailbox(local_store *L, const lacct *a, sqlite3_stmt *st, lmbox *out)
{
    out->id = sqlite3_column_int64(st, 0);
    out->name = local_col_text(&L->batch, st, 1);
    out->special_use = (unsigned)sqlite3_column_int(st, 2);
    out->subscribed = sqlite3_column_int(st, 3) != 0;
    out->uidvalidity = (uint32_t)sqlite3_column_int64(st, 4);
    out->uidnext = (uint32_t)sqlite3_column_int64(st, 5);
    out->highest_modseq = (uint64_t)sqlite3_column_int64(st, 6);
    out->expunged_below = (uint64_t)sqlite3_column_int64(st, 7);
    out->dir = out->name ? local_mailbox_dir(&L->batch, a->maildir, out->name) : NULL;
    return out->dir ? 0 : -1;
}

#define MBOX_COLS "id, name, special_use, subscribed, uidvalidity, uidnext, highest_modseq," \
                  " expunged_below_modseq"

int local_mailbox_get(local_store *L, tern_store_req *req, const lacct *a, const char *name,
                      lmbox *out)
{
    memset(out, 0, sizeof *out);
    if (name == NULL || !tern_store__valid_mailbox_name(name))
        return tern_store__fail(req, TERN_STORE_EINVAL, "bad mailbox name");
    const char *canon = tern_store__canon_mailbox(&L->batch, name);
    sqlite3_stmt *st = local_stmt(L, "SELECT " MBOX_COLS " FROM mailboxes"
                                     " WHERE account_id = ? AND name = ?");
    if (st == NULL || canon == NULL)
        return tern_store__fail(req, TERN_STORE_EIO, "statement");
    sqlite3_bind_int64(st, 1, a->id);
    sqlite3_bind_text(st, 2, canon, -1, SQLITE_STATIC);
    int r = local_step(L, req, st);
    if (r < 0)
        return r;
    if (r == 0)
        return tern_store__fail(req, TERN_STORE_ENOTFOUND, "no mailbox %s", name);
    if (read_mailbox(L, a, st, out) != 0) {
        sqlite3_reset(st);
        return tern_store__fail(req, TERN_STORE_EINVAL, "mailbox %s has no usable path", name);
    }
    sqlite3_reset(st);
    return TERN_STORE_OK;
}

static uint32_t next_uidvalidity(local_store *L, tern_store_req *req)
{
    /* Strictly increasing across every mailbox ever made, and near the
     * clock, so a recreated mailbox never repeats an old UIDVALIDITY. */
    sqlite3_stmt *st = local_stmt(L, "UPDATE meta SET value = max(CAST(value AS INTEGER) + 1, ?)"
                                     " WHERE key = 'last_uidvalidity' RETURNING value");
    if (st == NULL)
        return 0;
    sqlite3_bind_int64(st, 1, local_now() & 0xffffffff);
    if (local_step(L, req, st) != 1)
        return 0;
    uint32_t v = (uint32_t)sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return v ? v : 1;
}

int local_mailbox_insert(local_store *L, tern_store_req *req, lacct *a, const char *name,
                         unsigned special_use, bool make_dir, lmbox *out)
{
    memset(out, 0, sizeof *out);
    char *dir = local_mailbox_dir(&L->batch, a->maildir, name);
    if (dir == NULL)
        return tern_store__fail(req, TERN_STORE_EINVAL, "mailbox name too long for a folder");
    uint32_t uidv = next_uidvalidity(L, req);
    uint64_t ms = uidv ? local_next_modseq(L, req, a) : 0;
    if (ms == 0)
        return req->status != TERN_STORE_OK ? req->status
                                            : tern_store__fail(req, TERN_STORE_EIO, "modseq");
    sqlite3_stmt *st = local_stmt(L, "INSERT INTO mailboxes(account_id, name, special_use,"
                                     " subscribed, uidvalidity, uidnext, highest_modseq,"
                                     " expunged_below_modseq) VALUES(?, ?, ?, ?, ?, 1, ?, 0)");
    if (st == NULL)
        return tern_store__fail(req, TERN_STORE_EIO, "statement");
    sqlite3_bind_int64(st, 1, a->id);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 3, (int)special_use);
    sqlite3_bind_int(st, 4, special_use != 0 || strcmp(name, "INBOX") == 0);
    sqlite3_bind_int64(st, 5, uidv);
    sqlite3_bind_int64(st, 6, (int64_t)ms);
    int r = local_run(L, req, st);
    if (r != TERN_STORE_OK)
        return r;
    out->id = sqlite3_last_insert_rowid(L->db);
    out->name = tern_arena_strdup(&L->batch, name);
    out->dir = dir;
    out->special_use = special_use;
    out->uidvalidity = uidv;
    out->uidnext = 1;
    out->highest_modseq = ms;
    if (make_dir) {
        bool existed = access(dir, F_OK) == 0;
        if (local_mkdir_folder(dir) != 0)
            return local_errno_fail(req, errno, "mkdir", dir);
        if (!existed) {
            local_effect(L, LEFF_UNDO_RMDIR, dir, NULL);
            char *parent = tern_arena_strdup(&L->batch, dir);
            char *slash = parent ? strrchr(parent, '/') : NULL;
            if (slash) {
                *slash = '\0';
                local_sync_dir(L, parent);
            }
        }
    }
    local_event(L, a->name, (uint64_t)out->id, ms);
    return TERN_STORE_OK;
}

/* ---- domains, accounts, aliases ---------------------------------------- */

static int domain_add(local_store *L, tern_store_req *req)
{
    const char *d = param_domain(req);
    if (d == NULL || !tern_store__valid_domain(d))
        return tern_store__fail(req, TERN_STORE_EINVAL, "bad domain");
    sqlite3_stmt *st = local_stmt(L, "INSERT OR IGNORE INTO domains(name) VALUES(?)");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_text(st, 1, d, -1, SQLITE_STATIC);
    int r = local_run(L, req, st);
    if (r != TERN_STORE_OK)
        return r;
    if (sqlite3_changes(L->db) == 0)
        return tern_store__fail(req, TERN_STORE_EEXISTS, "domain %s exists", d);
    return TERN_STORE_OK;
}

static int domain_remove(local_store *L, tern_store_req *req)
{
    const char *d = param_domain(req);
    if (d == NULL)
        return tern_store__fail(req, TERN_STORE_EINVAL, "no domain");
    int64_t id = domain_id(L, req, d);
    if (id < 0)
        return req->status ? req->status : TERN_STORE_EIO;
    if (id == 0)
        return tern_store__fail(req, TERN_STORE_ENOTFOUND, "no domain %s", d);
    sqlite3_stmt *st = local_stmt(L, "SELECT 1 FROM accounts WHERE domain_id = ? LIMIT 1");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, id);
    int r = local_step(L, req, st);
    if (r < 0)
        return r;
    if (r == 1) {
        sqlite3_reset(st);
        return tern_store__fail(req, TERN_STORE_ENOTEMPTY, "domain %s has accounts", d);
    }
    st = local_stmt(L, "DELETE FROM aliases WHERE substr(address, -(length(?1) + 1)) = '@' || ?1");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_text(st, 1, d, -1, SQLITE_STATIC);
    if ((r = local_run(L, req, st)) != TERN_STORE_OK)
        return r;
    st = local_stmt(L, "DELETE FROM domains WHERE id = ?");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, id);
    return local_run(L, req, st);
}

static int domain_list(local_store *L, tern_store_req *req)
{
    sqlite3_stmt *st = local_stmt(L, "SELECT name FROM domains ORDER BY name");
    if (st == NULL)
        return TERN_STORE_EIO;
    size_t cap = 16, n = 0;
    char **names = tern_arena_alloc(&req->arena, cap * sizeof *names);
    int r;
    while ((r = local_step(L, req, st)) == 1) {
        if (n == cap) {
            char **nn = tern_arena_alloc(&req->arena, cap * 2 * sizeof *nn);
            if (nn == NULL)
                return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
            memcpy(nn, names, n * sizeof *nn);
            names = nn;
            cap *= 2;
        }
        names[n++] = local_col_text(&req->arena, st, 0);
    }
    if (r < 0)
        return r;
    req->out.names = names;
    req->out.n_names = n;
    return TERN_STORE_OK;
}

static int account_create(local_store *L, tern_store_req *req)
{
    const char *name = req->in.account ? req->in.account : req->in.name;
    if (name == NULL || !tern_store__valid_account_name(name))
        return tern_store__fail(req, TERN_STORE_EINVAL, "bad account name");
    int64_t did = domain_id(L, req, strrchr(name, '@') + 1);
    if (did < 0)
        return req->status ? req->status : TERN_STORE_EIO;
    if (did == 0)
        return tern_store__fail(req, TERN_STORE_ENOTFOUND, "no domain for %s", name);
    sqlite3_stmt *st = local_stmt(L, "INSERT OR IGNORE INTO accounts(name, domain_id,"
                                     " password_hash, quota_bytes, quota_messages)"
                                     " VALUES(?, ?, ?, ?, ?)");
    if (st == NULL)
        return TERN_STORE_EIO;
    uint64_t qb = req->in.quota_bytes ? req->in.quota_bytes : L->default_quota_bytes;
    uint64_t qm = req->in.quota_messages ? req->in.quota_messages : L->default_quota_messages;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, did);
    if (req->in.password_hash)
        sqlite3_bind_text(st, 3, req->in.password_hash, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (int64_t)qb);
    sqlite3_bind_int64(st, 5, (int64_t)qm);
    int r = local_run(L, req, st);
    if (r != TERN_STORE_OK)
        return r;
    if (sqlite3_changes(L->db) == 0)
        return tern_store__fail(req, TERN_STORE_EEXISTS, "account %s exists", name);
    lacct a;
    if ((r = local_account_get(L, req, name, &a)) != TERN_STORE_OK)
        return r;
    char *acct_dir = tern_arena_strdup(&L->batch, a.maildir);
    char *slash = strrchr(acct_dir, '/'); /* <root>/<domain>/<lp> */
    *slash = '\0';
    char *dom_dir = tern_arena_strdup(&L->batch, acct_dir);
    *strrchr(dom_dir, '/') = '\0';
    bool existed = access(acct_dir, F_OK) == 0;
    if (mkdir(dom_dir, 0700) != 0 && errno != EEXIST)
        return local_errno_fail(req, errno, "mkdir", dom_dir);
    if (mkdir(acct_dir, 0700) != 0 && errno != EEXIST)
        return local_errno_fail(req, errno, "mkdir", acct_dir);
    if (!existed)
        local_effect(L, LEFF_UNDO_RMDIR, acct_dir, NULL);
    local_sync_dir(L, L->root);
    local_sync_dir(L, dom_dir);
    local_sync_dir(L, acct_dir);
    for (size_t i = 0; i < 6; i++) {
        lmbox m;
        r = local_mailbox_insert(L, req, &a, tern_store_default_mailboxes[i].name,
                                 tern_store_default_mailboxes[i].special_use, true, &m);
        if (r != TERN_STORE_OK)
            return r;
    }
    TLOG_INFO("store", "event=account_created account=%s", name);
    return TERN_STORE_OK;
}

static int account_delete(local_store *L, tern_store_req *req)
{
    lacct a;
    int r = local_account_get(L, req, req->in.account ? req->in.account : req->in.name, &a);
    if (r != TERN_STORE_OK)
        return r;
    static const char *const dels[] = {
        "DELETE FROM keywords WHERE message IN (SELECT id FROM messages WHERE account_id = ?)",
        "DELETE FROM headers WHERE message IN (SELECT id FROM messages WHERE account_id = ?)",
        "DELETE FROM messages WHERE account_id = ?",
        "DELETE FROM expunged WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE account_id = ?)",
        "DELETE FROM mailboxes WHERE account_id = ?",
        "DELETE FROM thread_refs WHERE account_id = ?",
        "DELETE FROM accounts WHERE id = ?",
    };
    for (size_t i = 0; i < sizeof dels / sizeof dels[0]; i++) {
        sqlite3_stmt *st = local_stmt(L, dels[i]);
        if (st == NULL)
            return TERN_STORE_EIO;
        sqlite3_bind_int64(st, 1, a.id);
        if ((r = local_run(L, req, st)) != TERN_STORE_OK)
            return r;
    }
    char *acct_dir = tern_arena_strdup(&L->batch, a.maildir);
    *strrchr(acct_dir, '/') = '\0';
    local_effect(L, LEFF_POST_RMTREE, acct_dir, NULL);
    local_event(L, a.name, 0, a.highest_modseq + 1);
    TLOG_INFO("store", "event=account_deleted account=%s", a.name);
    return TERN_STORE_OK;
}

static void fill_account(local_store *L, tern_store_req *req, sqlite3_stmt *st,
                         tern_account_info *o)
{
    (void)L;
    o->name = local_col_text(&req->arena, st, 0);
    o->quota_bytes = (uint64_t)sqlite3_column_int64(st, 1);
    o->quota_messages = (uint64_t)sqlite3_column_int64(st, 2);
    o->used_bytes = (uint64_t)sqlite3_column_int64(st, 3);
    o->used_messages = (uint64_t)sqlite3_column_int64(st, 4);
    o->has_password = sqlite3_column_type(st, 5) != SQLITE_NULL;
}

#define ACCT_COLS "name, quota_bytes, quota_messages, used_bytes, used_messages, password_hash"

static int account_get(local_store *L, tern_store_req *req)
{
    const char *name = req->in.account ? req->in.account : req->in.name;
    if (name == NULL)
        return tern_store__fail(req, TERN_STORE_EINVAL, "no account");
    sqlite3_stmt *st = local_stmt(L, "SELECT " ACCT_COLS " FROM accounts WHERE name = ?");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int r = local_step(L, req, st);
    if (r < 0)
        return r;
    if (r == 0)
        return tern_store__fail(req, TERN_STORE_ENOTFOUND, "no account %s", name);
    fill_account(L, req, st, &req->out.account);
    req->out.account.password_hash = local_col_text(&req->arena, st, 5);
    return TERN_STORE_OK;
}

static int account_list(local_store *L, tern_store_req *req)
{
    const char *d = param_domain(req);
    sqlite3_stmt *st;
    if (d) {
        st = local_stmt(L, "SELECT " ACCT_COLS " FROM accounts WHERE domain_id ="
                           " (SELECT id FROM domains WHERE name = ?) ORDER BY name");
        if (st)
            sqlite3_bind_text(st, 1, d, -1, SQLITE_STATIC);
    } else {
        st = local_stmt(L, "SELECT " ACCT_COLS " FROM accounts ORDER BY name");
    }
    if (st == NULL)
        return TERN_STORE_EIO;
    size_t cap = 16, n = 0;
    tern_account_info *v = tern_arena_alloc(&req->arena, cap * sizeof *v);
    int r;
    while ((r = local_step(L, req, st)) == 1) {
        if (n == cap) {
            tern_account_info *nv = tern_arena_alloc(&req->arena, cap * 2 * sizeof *nv);
            if (nv == NULL)
                return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
            memcpy(nv, v, n * sizeof *nv);
            v = nv;
            cap *= 2;
        }
        fill_account(L, req, st, &v[n++]);
    }
    if (r < 0)
        return r;
    req->out.accounts = v;
    req->out.n_accounts = n;
    return TERN_STORE_OK;
}

static int account_update(local_store *L, tern_store_req *req)
{
    const char *name = req->in.account ? req->in.account : req->in.name;
    if (name == NULL)
        return tern_store__fail(req, TERN_STORE_EINVAL, "no account");
    sqlite3_stmt *st;
    if (req->op == TERN_STORE_ACCOUNT_SET_PASSWORD) {
        st = local_stmt(L, "UPDATE accounts SET password_hash = ? WHERE name = ?");
        if (st == NULL)
            return TERN_STORE_EIO;
        if (req->in.password_hash)
            sqlite3_bind_text(st, 1, req->in.password_hash, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    } else {
        st = local_stmt(L, "UPDATE accounts SET quota_bytes = ?, quota_messages = ? WHERE name = ?");
        if (st == NULL)
            return TERN_STORE_EIO;
        sqlite3_bind_int64(st, 1, (int64_t)req->in.quota_bytes);
        sqlite3_bind_int64(st, 2, (int64_t)req->in.quota_messages);
        sqlite3_bind_text(st, 3, name, -1, SQLITE_STATIC);
    }
    int r = local_run(L, req, st);
    if (r != TERN_STORE_OK)
        return r;
    if (sqlite3_changes(L->db) == 0)
        return tern_store__fail(req, TERN_STORE_ENOTFOUND, "no account %s", name);
    return TERN_STORE_OK;
}

static bool valid_alias_address(const char *addr)
{
    if (addr == NULL)
        return false;
    if (addr[0] == '@')
        return tern_store__valid_domain(addr + 1);
    return tern_store__valid_account_name(addr);
}

static int alias_add(local_store *L, tern_store_req *req)
{
    const char *addr = req->in.name;
    if (!valid_alias_address(addr))
        return tern_store__fail(req, TERN_STORE_EINVAL, "bad alias address");
    if (req->in.n_targets == 0)
        return tern_store__fail(req, TERN_STORE_EINVAL, "alias without targets");
    int64_t did = domain_id(L, req, strrchr(addr, '@') + 1);
    if (did < 0)
        return req->status ? req->status : TERN_STORE_EIO;
    if (did == 0)
        return tern_store__fail(req, TERN_STORE_ENOTFOUND, "no domain for %s", addr);
    size_t added = 0;
    for (size_t i = 0; i < req->in.n_targets; i++) {
        const char *t = req->in.targets[i];
        if (t == NULL || strchr(t, '@') == NULL || strlen(t) > 320)
            return tern_store__fail(req, TERN_STORE_EINVAL, "bad alias target");
        sqlite3_stmt *st = local_stmt(L, "INSERT OR IGNORE INTO aliases(address, target)"
                                         " VALUES(?, ?)");
        if (st == NULL)
            return TERN_STORE_EIO;
        sqlite3_bind_text(st, 1, addr, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, lower_domain(&L->batch, t), -1, SQLITE_STATIC);
        int r = local_run(L, req, st);
        if (r != TERN_STORE_OK)
            return r;
        added += (size_t)sqlite3_changes(L->db);
    }
    if (added == 0)
        return tern_store__fail(req, TERN_STORE_EEXISTS, "alias %s exists", addr);
    return TERN_STORE_OK;
}

static int alias_remove(local_store *L, tern_store_req *req)
{
    const char *addr = req->in.name;
    if (addr == NULL)
        return tern_store__fail(req, TERN_STORE_EINVAL, "no alias address");
    size_t removed = 0;
    size_t n = req->in.n_targets ? req->in.n_targets : 1;
    for (size_t i = 0; i < n; i++) {
        sqlite3_stmt *st;
        if (req->in.n_targets) {
            st = local_stmt(L, "DELETE FROM aliases WHERE address = ? AND target = ?");
            if (st == NULL)
                return TERN_STORE_EIO;
            sqlite3_bind_text(st, 2, lower_domain(&L->batch, req->in.targets[i]), -1,
                              SQLITE_STATIC);
        } else {
            st = local_stmt(L, "DELETE FROM aliases WHERE address = ?");
            if (st == NULL)
                return TERN_STORE_EIO;
        }
        sqlite3_bind_text(st, 1, addr, -1, SQLITE_STATIC);
        int r = local_run(L, req, st);
        if (r != TERN_STORE_OK)
            return r;
        removed += (size_t)sqlite3_changes(L->db);
    }
    if (removed == 0)
        return tern_store__fail(req, TERN_STORE_ENOTFOUND, "no alias %s", addr);
    return TERN_STORE_OK;
}

static int alias_list(local_store *L, tern_store_req *req)
{
    const char *d = param_domain(req);
    sqlite3_stmt *st;
    if (d) {
        st = local_stmt(L, "SELECT address, group_concat(target, ',') FROM"
                           " (SELECT address, target FROM aliases WHERE substr(address, -(length(?1) + 1))"
                           " = '@' || ?1 ORDER BY address, target)"
                           " GROUP BY address ORDER BY address");
        if (st)
            sqlite3_bind_text(st, 1, d, -1, SQLITE_STATIC);
    } else {
        st = local_stmt(L, "SELECT address, group_concat(target, ',') FROM"
                           " (SELECT address, target FROM aliases ORDER BY address, target)"
                           " GROUP BY address ORDER BY address");
    }
    if (st == NULL)
        return TERN_STORE_EIO;
    size_t cap = 16, n = 0;
    char **names = tern_arena_alloc(&req->arena, cap * sizeof *names);
    int r;
    while ((r = local_step(L, req, st)) == 1) {
        if (n == cap) {
            char **nn = tern_arena_alloc(&req->arena, cap * 2 * sizeof *nn);
            if (nn == NULL)
                return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
            memcpy(nn, names, n * sizeof *nn);
            names = nn;
            cap *= 2;
        }
        names[n++] = tern_arena_printf(&req->arena, "%s %s", sqlite3_column_text(st, 0),
                                       sqlite3_column_text(st, 1));
    }
    if (r < 0)
        return r;
    req->out.names = names;
    req->out.n_names = n;
    return TERN_STORE_OK;
}

/* ---- recipient lookup ---------------------------------------------------- */

/* 1 and the canonical name when `addr` is an account, 0 when not. */
static int find_account(local_store *L, tern_store_req *req, const char *addr, char **name_r)
{
    sqlite3_stmt *st = local_stmt(L, "SELECT name FROM accounts WHERE name = ?1 UNION ALL"
                                     " SELECT name FROM accounts WHERE name = ?1 COLLATE NOCASE"
                                     " LIMIT 1");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_text(st, 1, addr, -1, SQLITE_STATIC);
    int r = local_step(L, req, st);
    if (r == 1)
        *name_r = local_col_text(&req->arena, st, 0);
    sqlite3_reset(st);
    return r;
}

/* 1 when `addr` is an alias (result filled), 0 when not. */
static int find_alias(local_store *L, tern_store_req *req, const char *addr)
{
    sqlite3_stmt *st = local_stmt(L, "SELECT a.target, (SELECT 1 FROM accounts c"
                                     " WHERE c.name = a.target) FROM aliases a"
                                     " WHERE a.address = ?1 COLLATE NOCASE ORDER BY a.target");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_text(st, 1, addr, -1, SQLITE_STATIC);
    size_t cap = 4, n = 0;
    char **t = tern_arena_alloc(&req->arena, cap * sizeof *t);
    bool *loc = tern_arena_alloc(&req->arena, cap * sizeof *loc);
    int r;
    while ((r = local_step(L, req, st)) == 1) {
        if (n == cap) {
            char **nt = tern_arena_alloc(&req->arena, cap * 2 * sizeof *nt);
            bool *nl = tern_arena_alloc(&req->arena, cap * 2 * sizeof *nl);
            if (nt == NULL || nl == NULL)
                return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
            memcpy(nt, t, n * sizeof *nt);
            memcpy(nl, loc, n * sizeof *nl);
            t = nt;
            loc = nl;
            cap *= 2;
        }
        t[n] = local_col_text(&req->arena, st, 0);
        loc[n] = sqlite3_column_type(st, 1) != SQLITE_NULL;
        n++;
    }
    if (r < 0)
        return r;
    if (n == 0)
        return 0;
    req->out.rcpt.kind = TERN_RCPT_ALIAS;
    req->out.rcpt.targets = t;
    req->out.rcpt.target_is_local = loc;
    req->out.rcpt.n_targets = n;
    return 1;
}

static int set_account_result(tern_store_req *req, char *name)
{
    req->out.rcpt.kind = TERN_RCPT_ACCOUNT;
    req->out.rcpt.targets = tern_arena_alloc(&req->arena, sizeof(char *));
    req->out.rcpt.target_is_local = tern_arena_alloc(&req->arena, sizeof(bool));
    if (req->out.rcpt.targets == NULL || req->out.rcpt.target_is_local == NULL)
        return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
    req->out.rcpt.targets[0] = name;
    req->out.rcpt.target_is_local[0] = true;
    req->out.rcpt.n_targets = 1;
    return TERN_STORE_OK;
}

static int rcpt_lookup(local_store *L, tern_store_req *req)
{
    const char *raw = req->in.name ? req->in.name : req->in.account;
    if (raw == NULL || strrchr(raw, '@') == NULL || strlen(raw) > 320)
        return tern_store__fail(req, TERN_STORE_EINVAL, "bad address");
    const char *addr = lower_domain(&req->arena, raw);
    const char *domain = strrchr(addr, '@') + 1;
    memset(&req->out.rcpt, 0, sizeof req->out.rcpt);
    int64_t did = domain_id(L, req, domain);
    if (did < 0)
        return req->status ? req->status : TERN_STORE_EIO;
    if (did == 0) {
        req->out.rcpt.kind = TERN_RCPT_NOT_LOCAL;
        return TERN_STORE_OK;
    }
    char *name = NULL;
    int r = find_account(L, req, addr, &name);
    if (r < 0)
        return r;
    if (r == 1)
        return set_account_result(req, name);
    if ((r = find_alias(L, req, addr)) != 0)
        return r < 0 ? r : TERN_STORE_OK;
    char *base, *detail;
    if (tern_store__split_detail(&req->arena, addr, &base, &detail)) {
        if ((r = find_account(L, req, base, &name)) < 0)
            return r;
        if (r == 1) {
            req->out.rcpt.detail = detail;
            return set_account_result(req, name);
        }
        if ((r = find_alias(L, req, base)) != 0) {
            req->out.rcpt.detail = detail;
            return r < 0 ? r : TERN_STORE_OK;
        }
    }
    char *catchall = tern_arena_printf(&req->arena, "@%s", domain);
    if ((r = find_alias(L, req, catchall)) != 0) {
        req->out.rcpt.catch_all = r > 0;
        return r < 0 ? r : TERN_STORE_OK;
    }
    req->out.rcpt.kind = TERN_RCPT_UNKNOWN;
    return TERN_STORE_OK;
}

int local_op_directory(local_store *L, tern_store_req *req)
{
    switch (req->op) {
    case TERN_STORE_DOMAIN_ADD: return domain_add(L, req);
    case TERN_STORE_DOMAIN_REMOVE: return domain_remove(L, req);
    case TERN_STORE_DOMAIN_LIST: return domain_list(L, req);
    case TERN_STORE_ACCOUNT_CREATE: return account_create(L, req);
    case TERN_STORE_ACCOUNT_DELETE: return account_delete(L, req);
    case TERN_STORE_ACCOUNT_GET: return account_get(L, req);
    case TERN_STORE_ACCOUNT_LIST: return account_list(L, req);
    case TERN_STORE_ACCOUNT_SET_PASSWORD:
    case TERN_STORE_ACCOUNT_SET_QUOTA: return account_update(L, req);
    case TERN_STORE_ALIAS_ADD: return alias_add(L, req);
    case TERN_STORE_ALIAS_REMOVE: return alias_remove(L, req);
    case TERN_STORE_ALIAS_LIST: return alias_list(L, req);
    case TERN_STORE_RCPT_LOOKUP: return rcpt_lookup(L, req);
    default: return tern_store__fail(req, TERN_STORE_EINVAL, "not a directory op");
    }
}
