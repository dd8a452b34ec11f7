/* SET_FLAGS for the local backend: flags and keywords with modes, the
 * CONDSTORE UNCHANGEDSINCE condition, one new modseq per changed message,
 * and the Maildir file renamed so its ":2,<letters>" suffix follows the
 * system flags. Runs on the backend thread inside the batch transaction.
 * Input trusted: keywords are IMAP atoms checked by the protocol layer
 * (and again here). A keyword is stored as first written in the mailbox
 * and compared without case (schema.md): a new one takes the spelling a
 * message of the mailbox already carries. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "storage/local/local_internal.h"

typedef struct fmsg {
    int64_t id;
    uint32_t uid;
    unsigned flags;
    uint64_t modseq, size;
    int64_t internal_date;
    char *email_id, *thread_id, *ref, *kw;
} fmsg;

typedef struct kwset {
    char **v;
    size_t n, cap;
} kwset;

static bool kw_has(const kwset *s, const char *k)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcasecmp(s->v[i], k) == 0)
            return true;
    return false;
}

static int kw_add(tern_arena *a, kwset *s, const char *k)
{
    if (k == NULL || *k == '\0' || kw_has(s, k))
        return 0;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        char **nv = tern_arena_alloc(a, cap * sizeof *nv);
        if (nv == NULL)
            return -1;
        if (s->n)
            memcpy(nv, s->v, s->n * sizeof *nv);
        s->v = nv;
        s->cap = cap;
    }
    char *c = tern_arena_strdup(a, k);
    if (c == NULL)
        return -1;
    s->v[s->n++] = c;
    return 0;
}

/* The spelling keyword `k` takes in the mailbox; NULL after failing req. */
static const char *spelling(local_store *L, tern_store_req *req, int64_t mailbox_id,
                            const char *k)
{
    sqlite3_stmt *st = local_stmt(L, "SELECT " LOCAL_KW_SPELLING);
    if (st == NULL) {
        tern_store__fail(req, TERN_STORE_EIO, "statement");
        return NULL;
    }
    sqlite3_bind_text(st, 2, k, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, mailbox_id);
    int r = local_step(L, req, st);
    char *out = r == 1 ? local_col_text(&L->batch, st, 0) : NULL;
    sqlite3_reset(st);
    if (r == 1 && out == NULL)
        tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
    else if (r == 0)
        tern_store__fail(req, TERN_STORE_EIO, "keyword spelling: no row");
    return out;
}

static void kw_remove(kwset *s, const char *k)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcasecmp(s->v[i], k) == 0) {
            s->v[i] = s->v[--s->n];
            return;
        }
}

static bool kw_equal(const kwset *x, const kwset *y)
{
    if (x->n != y->n)
        return false;
    for (size_t i = 0; i < x->n; i++)
        if (!kw_has(y, x->v[i]))
            return false;
    return true;
}

static int kw_parse(tern_arena *a, kwset *s, const char *joined)
{
    if (joined == NULL)
        return 0;
    char *c = tern_arena_strdup(a, joined);
    if (c == NULL)
        return -1;
    char *save = NULL;
    for (char *t = strtok_r(c, " ", &save); t; t = strtok_r(NULL, " ", &save))
        if (kw_add(a, s, t) != 0)
            return -1;
    return 0;
}

bool local_valid_keywords(const tern_keywords *kw)
{
    for (size_t i = 0; i < kw->n; i++) {
        const char *k = kw->names[i];
        size_t n = k ? strlen(k) : 0;
        if (n == 0 || n > 255 || k[0] == '\\')
            return false;
        for (size_t j = 0; j < n; j++) {
            unsigned char c = (unsigned char)k[j];
            if (c <= 0x20 || c >= 0x7f || strchr("(){%*\"\\]", c) != NULL)
                return false;
        }
    }
    return true;
}

static int collect(local_store *L, tern_store_req *req, const lmbox *m, const tern_uid_range *rg,
                   size_t nr, fmsg **out_r, size_t *n_r)
{
    size_t n = 0, cap = 0;
    fmsg *v = NULL;
    int r = TERN_STORE_OK;
    for (size_t i = 0; i < nr && r == TERN_STORE_OK; i++) {
        sqlite3_stmt *st = local_stmt(
            L, "SELECT id, uid, flags, modseq, size, internal_date, email_id, thread_id,"
               " body_ref, (SELECT group_concat(keyword, ' ') FROM keywords WHERE message = m.id)"
               " FROM messages m WHERE mailbox_id = ? AND uid BETWEEN ? AND ? ORDER BY uid");
        if (st == NULL) {
            r = TERN_STORE_EIO;
            break;
        }
        sqlite3_bind_int64(st, 1, m->id);
        sqlite3_bind_int64(st, 2, rg[i].first);
        sqlite3_bind_int64(st, 3, rg[i].last);
        while ((r = local_step(L, req, st)) == 1) {
            if (n == cap) {
                cap = cap ? cap * 2 : 32;
                fmsg *nv = realloc(v, cap * sizeof *nv);
                if (nv == NULL) {
                    r = tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
                    break;
                }
                v = nv;
            }
            fmsg *o = &v[n++];
            o->id = sqlite3_column_int64(st, 0);
            o->uid = (uint32_t)sqlite3_column_int64(st, 1);
            o->flags = (unsigned)sqlite3_column_int(st, 2);
            o->modseq = (uint64_t)sqlite3_column_int64(st, 3);
            o->size = (uint64_t)sqlite3_column_int64(st, 4);
            o->internal_date = sqlite3_column_int64(st, 5);
            o->email_id = local_col_text(&L->batch, st, 6);
            o->thread_id = local_col_text(&L->batch, st, 7);
            o->ref = local_col_text(&L->batch, st, 8);
            o->kw = local_col_text(&L->batch, st, 9);
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

/* Renames the file for new flag letters; returns the new body_ref, or the
 * old one when the file is not where the row says (reconciliation will
 * sort it out). */
static char *rename_file(local_store *L, const lacct *a, const char *ref, unsigned flags)
{
    const char *slash = strrchr(ref, '/');
    const char *file = slash ? slash + 1 : ref;
    char *nfile = local_rename_flags(&L->batch, file, flags);
    if (nfile == NULL || strcmp(nfile, file) == 0)
        return (char *)ref;
    char *nref = tern_arena_printf(&L->batch, "%.*s%s", (int)(file - ref), ref, nfile);
    char *from = tern_arena_printf(&L->batch, "%s/%s", a->maildir, ref);
    char *to = nref ? tern_arena_printf(&L->batch, "%s/%s", a->maildir, nref) : NULL;
    if (from == NULL || to == NULL || rename(from, to) != 0)
        return (char *)ref;
    local_effect(L, LEFF_UNDO_RENAME, from, to);
    char *dir = tern_arena_strdup(&L->batch, to);
    char *s = dir ? strrchr(dir, '/') : NULL;
    if (s) {
        *s = '\0';
        local_sync_dir(L, dir);
    }
    return nref;
}

static int apply(local_store *L, tern_store_req *req, lacct *a, fmsg *f, unsigned nf,
                 const kwset *nk, bool kw_changed, tern_message_info *o)
{
    uint64_t ms = local_next_modseq(L, req, a);
    if (ms == 0)
        return req->status ? req->status : TERN_STORE_EIO;
    const unsigned maildir_bits = TERN_FLAG_SEEN | TERN_FLAG_ANSWERED | TERN_FLAG_FLAGGED |
                                  TERN_FLAG_DELETED | TERN_FLAG_DRAFT;
    char *ref = f->ref;
    if (ref && (nf & maildir_bits) != (f->flags & maildir_bits))
        ref = rename_file(L, a, ref, nf);
    sqlite3_stmt *st = local_stmt(L, "UPDATE messages SET flags = ?, modseq = ?, body_ref = ?"
                                     " WHERE id = ?");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int(st, 1, (int)nf);
    sqlite3_bind_int64(st, 2, (int64_t)ms);
    sqlite3_bind_text(st, 3, ref ? ref : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, f->id);
    int r = local_run(L, req, st);
    if (r != TERN_STORE_OK)
        return r;
    if (kw_changed) {
        st = local_stmt(L, "DELETE FROM keywords WHERE message = ?");
        if (st == NULL)
            return TERN_STORE_EIO;
        sqlite3_bind_int64(st, 1, f->id);
        if ((r = local_run(L, req, st)) != TERN_STORE_OK)
            return r;
        for (size_t i = 0; i < nk->n; i++) {
            st = local_stmt(L, "INSERT INTO keywords(message, keyword) VALUES(?, ?)");
            if (st == NULL)
                return TERN_STORE_EIO;
            sqlite3_bind_int64(st, 1, f->id);
            sqlite3_bind_text(st, 2, nk->v[i], -1, SQLITE_STATIC);
            if ((r = local_run(L, req, st)) != TERN_STORE_OK)
                return r;
        }
    }
    memset(o, 0, sizeof *o);
    o->uid = f->uid;
    o->id = tern_arena_strdup(&req->arena, f->email_id ? f->email_id : "");
    o->thread_id = tern_arena_strdup(&req->arena, f->thread_id ? f->thread_id : "");
    o->flags = nf;
    o->modseq = ms;
    o->internal_date = f->internal_date;
    o->size = f->size;
    o->n_keywords = nk->n;
    o->keywords = tern_arena_alloc(&req->arena, (nk->n ? nk->n : 1) * sizeof(char *));
    for (size_t i = 0; o->keywords && i < nk->n; i++)
        o->keywords[i] = tern_arena_strdup(&req->arena, nk->v[i]);
    f->modseq = ms;
    return TERN_STORE_OK;
}

int local_set_flags(local_store *L, tern_store_req *req)
{
    if (!local_valid_keywords(&req->in.keywords))
        return tern_store__fail(req, TERN_STORE_EINVAL, "bad keyword");
    lacct a;
    lmbox m;
    int r = local_target(L, req, &a, &m);
    if (r != TERN_STORE_OK)
        return r;
    tern_uid_range *rg;
    size_t nr;
    if ((r = local_uid_ranges(L, req, &m, &req->in.uids, &rg, &nr)) != TERN_STORE_OK)
        return r;
    fmsg *v = NULL;
    size_t n = 0;
    if (nr)
        r = collect(L, req, &m, rg, nr, &v, &n);
    free(rg);
    if (r != TERN_STORE_OK)
        return r;
    req->out.messages = tern_arena_alloc(&req->arena, (n ? n : 1) * sizeof *req->out.messages);
    req->out.uids = tern_arena_alloc(&req->arena, (n ? n : 1) * sizeof *req->out.uids);
    if (req->out.messages == NULL || req->out.uids == NULL) {
        free(v);
        return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
    }
    kwset in = {0};
    for (size_t i = 0; i < req->in.keywords.n; i++) {
        const char *k = spelling(L, req, m.id, req->in.keywords.names[i]);
        if (k == NULL || kw_add(&L->batch, &in, k) != 0) {
            free(v);
            return k == NULL ? req->status : tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
        }
    }
    unsigned want = req->in.flags & 0x1f;
    uint64_t last = 0;
    for (size_t i = 0; i < n && r == TERN_STORE_OK; i++) {
        fmsg *f = &v[i];
        if (req->in.unchanged_since && f->modseq > req->in.unchanged_since) {
            req->out.uids[req->out.n_uids++] = f->uid;
            continue;
        }
        kwset old = {0}, nk = {0};
        if (kw_parse(&L->batch, &old, f->kw) != 0) {
            r = tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
            break;
        }
        unsigned nf = f->flags;
        switch (req->in.flags_mode) {
        case TERN_FLAGS_REPLACE:
            nf = want;
            nk = in;
            break;
        case TERN_FLAGS_ADD:
            nf = f->flags | want;
            nk = old;
            for (size_t k = 0; k < in.n; k++)
                if (kw_add(&L->batch, &nk, in.v[k]) != 0)
                    r = tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
            break;
        case TERN_FLAGS_REMOVE:
            nf = f->flags & ~want;
            nk = old;
            for (size_t k = 0; k < in.n; k++)
                kw_remove(&nk, in.v[k]);
            break;
        }
        if (r != TERN_STORE_OK)
            break;
        bool kw_changed = !kw_equal(&old, &nk);
        if (nf == f->flags && !kw_changed)
            continue; /* RFC 7162 3.1.3: no change, no new modseq */
        r = apply(L, req, &a, f, nf, &nk, kw_changed, &req->out.messages[req->out.n_messages]);
        if (r == TERN_STORE_OK) {
            req->out.n_messages++;
            last = f->modseq;
        }
    }
    free(v);
    if (r != TERN_STORE_OK)
        return r;
    if (last) {
        if ((r = local_mailbox_touch(L, req, &m, last, 0)) != TERN_STORE_OK)
            return r;
        local_event(L, a.name, (uint64_t)m.id, last);
    }
    req->out.highest_modseq = m.highest_modseq;
    return TERN_STORE_OK;
}

static int cmp_u32(const void *x, const void *y)
{
    uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
    return a < b ? -1 : a > b;
}

/* RECENT_CLAIM. The backend thread runs one request at a time inside its
 * batch transaction, so the UPDATE and what it returns cannot interleave
 * with another session's claim: each message is handed out once. The
 * modseq is left alone (RFC 3501 2.3.2: \Recent is per session, not a flag
 * other sessions are told about). */
int local_recent_claim(local_store *L, tern_store_req *req)
{
    lacct a;
    lmbox m;
    int r = local_target(L, req, &a, &m);
    if (r != TERN_STORE_OK)
        return r;
    sqlite3_stmt *st = local_stmt(
        L, req->in.recent_peek
               ? "SELECT uid FROM messages WHERE mailbox_id = ? AND recent <> 0"
               : "UPDATE messages SET recent = 0 WHERE mailbox_id = ? AND recent <> 0"
                 " RETURNING uid");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, m.id);
    size_t n = 0, cap = 0;
    uint32_t *v = NULL;
    while ((r = local_step(L, req, st)) == 1) {
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 64;
            uint32_t *nv = tern_arena_alloc(&req->arena, nc * sizeof *nv);
            if (nv == NULL) {
                r = tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
                break;
            }
            if (n)
                memcpy(nv, v, n * sizeof *nv);
            v = nv;
            cap = nc;
        }
        v[n++] = (uint32_t)sqlite3_column_int64(st, 0);
    }
    sqlite3_reset(st);
    if (r < 0)
        return r;
    if (n > 1)
        qsort(v, n, sizeof *v, cmp_u32);
    if (v == NULL && (v = tern_arena_alloc(&req->arena, sizeof *v)) == NULL)
        return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory"); /* callers may copy from it */
    req->out.uids = v;
    req->out.n_uids = n;
    return TERN_STORE_OK;
}

/* MAILBOX_KEYWORDS: one spelling per keyword (there is only one per
 * mailbox, see the top of this file), sorted without case, bounded. */
int local_mailbox_keywords(local_store *L, tern_store_req *req)
{
    lacct a;
    lmbox m;
    int r = local_target(L, req, &a, &m);
    if (r != TERN_STORE_OK)
        return r;
    sqlite3_stmt *st = local_stmt(
        L, "SELECT min(k.keyword) FROM keywords k JOIN messages m ON m.id = k.message"
           " WHERE m.mailbox_id = ? GROUP BY lower(k.keyword) ORDER BY lower(k.keyword) LIMIT ?");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, m.id);
    sqlite3_bind_int(st, 2, TERN_STORE_MAILBOX_KEYWORDS_MAX);
    req->out.names = tern_arena_alloc(&req->arena,
                                      TERN_STORE_MAILBOX_KEYWORDS_MAX * sizeof(*req->out.names));
    if (req->out.names == NULL) {
        sqlite3_reset(st);
        return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
    }
    while ((r = local_step(L, req, st)) == 1 && req->out.n_names < TERN_STORE_MAILBOX_KEYWORDS_MAX) {
        char *k = local_col_text(&req->arena, st, 0);
        if (k == NULL) {
            r = tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
            break;
        }
        req->out.names[req->out.n_names++] = k;
    }
    sqlite3_reset(st);
    return r < 0 ? r : TERN_STORE_OK;
}
