/* SEARCH for the local backend: the criteria compiled to one SQLite WHERE
 * clause over the header index (search_sql.c), and for BODY/TEXT the
 * candidate files read once each through tern_body_matcher (and, when such
 * a criterion sits under OR/NOT, the whole tree re-checked in C with
 * tern_search_eval). Runs on the backend thread. Input trusted: the search
 * tree from our protocol code; user strings only travel as parameters. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "storage/index.h"
#include "storage/local/local_internal.h"

#define READ_CHUNK (64u * 1024u)
#define MAX_BODY_NODES 64

typedef struct cand {
    int64_t id;
    uint32_t uid;
    unsigned flags;
    int64_t internal_date, hdr_date;
    uint64_t size, modseq;
    char *ref;
} cand;

static int push_uid(tern_store_req *req, uint32_t **v, size_t *n, size_t *cap, uint32_t uid)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        uint32_t *nv = realloc(*v, nc * sizeof *nv);
        if (nv == NULL)
            return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
        *v = nv;
        *cap = nc;
    }
    (*v)[(*n)++] = uid;
    return TERN_STORE_OK;
}

/* Keywords and header fields of one message, for tern_search_eval. */
static int load_row_extras(local_store *L, tern_store_req *req, tern_arena *a, int64_t id,
                           tern_search_row *row)
{
    sqlite3_stmt *st = local_stmt(L, "SELECT keyword FROM keywords WHERE message = ?");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, id);
    size_t n = 0, cap = 8;
    const char **kw = tern_arena_alloc(a, cap * sizeof *kw);
    int r;
    while ((r = local_step(L, req, st)) == 1) {
        if (n == cap) {
            const char **nk = tern_arena_alloc(a, cap * 2 * sizeof *nk);
            if (nk == NULL)
                return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
            memcpy(nk, kw, n * sizeof *nk);
            kw = nk;
            cap *= 2;
        }
        kw[n++] = local_col_text(a, st, 0);
    }
    if (r < 0)
        return r;
    row->keywords = kw;
    row->n_keywords = n;
    st = local_stmt(L, "SELECT name, value FROM headers WHERE message = ?");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, id);
    n = 0;
    cap = 16;
    tern_index_field *f = tern_arena_alloc(a, cap * sizeof *f);
    while ((r = local_step(L, req, st)) == 1) {
        if (n == cap) {
            tern_index_field *nf = tern_arena_alloc(a, cap * 2 * sizeof *nf);
            if (nf == NULL)
                return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
            memcpy(nf, f, n * sizeof *nf);
            f = nf;
            cap *= 2;
        }
        f[n].name = local_col_text(a, st, 0);
        f[n].value = local_col_text(a, st, 1);
        if (f[n].value == NULL)
            f[n].value = tern_arena_strdup(a, "");
        n++;
    }
    if (r < 0)
        return r;
    row->fields = f;
    row->n_fields = n;
    return TERN_STORE_OK;
}

/* Feeds the whole file to every matcher; stops early once all have found. */
static int match_file(local_store *L, const char *maildir, const char *ref,
                      tern_body_matcher **mt, size_t nm, unsigned char *found)
{
    char *path = tern_arena_printf(&L->batch, "%s/%s", maildir, ref);
    int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    if (fd < 0)
        return -1;
    uint8_t *buf = malloc(READ_CHUNK);
    if (buf == NULL) {
        close(fd);
        return -1;
    }
    for (;;) {
        size_t done = 0;
        for (size_t i = 0; i < nm; i++)
            done += tern_body_matcher_found(mt[i]) != 0;
        if (done == nm)
            break;
        ssize_t n = read(fd, buf, READ_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (size_t i = 0; i < nm; i++)
            if (!tern_body_matcher_found(mt[i]))
                tern_body_matcher_feed(mt[i], buf, (size_t)n);
    }
    free(buf);
    close(fd);
    for (size_t i = 0; i < nm; i++)
        found[i] = tern_body_matcher_found(mt[i]) != 0;
    return 0;
}

static int check_bodies(local_store *L, tern_store_req *req, const lacct *a, const tern_sql *sql,
                        const cand *c, size_t nc, uint32_t **out, size_t *n_out, size_t *cap_out)
{
    const tern_search *nodes[MAX_BODY_NODES];
    size_t nn = tern_search_body_nodes(req->in.search, nodes, MAX_BODY_NODES);
    if (nn > MAX_BODY_NODES)
        return tern_store__fail(req, TERN_STORE_EINVAL, "too many BODY/TEXT criteria");
    tern_body_matcher *mt[MAX_BODY_NODES];
    unsigned char found[MAX_BODY_NODES];
    int r = TERN_STORE_OK;
    tern_arena ra;
    tern_arena_init(&ra, 16 * 1024);
    for (size_t i = 0; i < nc && r == TERN_STORE_OK; i++) {
        size_t made = 0;
        for (; made < nn; made++) {
            const char *needle = nodes[made]->str ? nodes[made]->str : "";
            mt[made] = nodes[made]->kind == TERN_SEARCH_TEXT ? tern_body_matcher_new_text(needle)
                                                             : tern_body_matcher_new(needle);
            if (mt[made] == NULL)
                break;
        }
        if (made < nn) {
            r = tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
        } else if (match_file(L, a->maildir, c[i].ref ? c[i].ref : "", mt, nn, found) != 0) {
            /* An unreadable body matches nothing; reconciliation at the
             * next start repairs a missing file. */
            memset(found, 0, nn);
        }
        for (size_t k = 0; k < made; k++)
            tern_body_matcher_free(mt[k]);
        if (r != TERN_STORE_OK)
            break;
        bool keep;
        if (!sql->needs_eval) {
            keep = true;
            for (size_t k = 0; k < nn; k++)
                keep = keep && found[k];
        } else {
            tern_arena_reset(&ra);
            tern_search_row row = {
                .uid = c[i].uid, .flags = c[i].flags, .internal_date = c[i].internal_date,
                .hdr_date = c[i].hdr_date, .size = c[i].size, .modseq = c[i].modseq,
                .body_found = found, .n_body = nn,
            };
            if ((r = load_row_extras(L, req, &ra, c[i].id, &row)) != TERN_STORE_OK)
                break;
            keep = tern_search_eval(req->in.search, &row) != 0;
        }
        if (keep)
            r = push_uid(req, out, n_out, cap_out, c[i].uid);
    }
    tern_arena_free(&ra);
    return r;
}

void local_search_cache_free(local_store *L)
{
    for (size_t i = 0; i < LOCAL_SEARCH_CACHE; i++) {
        if (L->search_cache[i].st)
            sqlite3_finalize(L->search_cache[i].st);
        free(L->search_cache[i].sql);
        L->search_cache[i].st = NULL;
        L->search_cache[i].sql = NULL;
    }
}

/* The prepared statement for `text`, kept among the last LOCAL_SEARCH_CACHE
 * ones (the least recently used goes); NULL when it does not prepare. */
static sqlite3_stmt *search_stmt(local_store *L, const char *text)
{
    size_t victim = 0;
    for (size_t i = 0; i < LOCAL_SEARCH_CACHE; i++) {
        if (L->search_cache[i].sql && strcmp(L->search_cache[i].sql, text) == 0) {
            L->search_cache[i].used = ++L->search_tick;
            return L->search_cache[i].st;
        }
        if (L->search_cache[i].used < L->search_cache[victim].used)
            victim = i;
    }
    sqlite3_stmt *st = NULL;
    char *copy = strdup(text);
    if (copy == NULL ||
        sqlite3_prepare_v3(L->db, text, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
        free(copy);
        return NULL;
    }
    if (L->search_cache[victim].st)
        sqlite3_finalize(L->search_cache[victim].st);
    free(L->search_cache[victim].sql);
    L->search_cache[victim].sql = copy;
    L->search_cache[victim].st = st;
    L->search_cache[victim].used = ++L->search_tick;
    return st;
}

int local_op_search(local_store *L, tern_store_req *req)
{
    lacct a;
    lmbox m;
    int r = local_target(L, req, &a, &m);
    if (r != TERN_STORE_OK)
        return r;
    tern_search all = {.kind = TERN_SEARCH_ALL};
    const tern_search *s = req->in.search ? req->in.search : &all;
    tern_sql sql;
    memset(&sql, 0, sizeof sql);
    if (tern_search_to_sql(&L->batch, s, TERN_SQL_SQLITE, 1, &sql) != 0)
        return tern_store__fail(req, TERN_STORE_EINVAL, "search too deep or out of memory");
    /* Without BODY/TEXT only the uid is read: SEARCH ALL (every SELECT's
     * uid list) then never leaves the (mailbox_id, uid) index. */
    char *text = tern_arena_printf(&L->batch,
                                   sql.needs_body
                                       ? "SELECT m.id, m.uid, m.flags, m.internal_date, m.hdr_date,"
                                         " m.size, m.modseq, m.body_ref FROM messages m"
                                         " WHERE m.mailbox_id = ? AND (%s) ORDER BY m.uid"
                                       : "SELECT 0, m.uid FROM messages m"
                                         " WHERE m.mailbox_id = ? AND (%s) ORDER BY m.uid",
                                   sql.where && sql.where[0] ? sql.where : "1");
    if (text == NULL)
        return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
    sqlite3_stmt *st = search_stmt(L, text);
    if (st == NULL)
        return local_db_fail(L, req, sqlite3_extended_errcode(L->db), "search prepare");
    sqlite3_bind_int64(st, 1, m.id);
    for (size_t i = 0; i < sql.n_params; i++)
        sqlite3_bind_text(st, (int)i + 2, sql.params[i], -1, SQLITE_STATIC);
    uint32_t *uids = NULL;
    size_t n = 0, cap = 0;
    cand *c = NULL;
    size_t nc = 0, ccap = 0;
    while ((r = local_step(L, req, st)) == 1) {
        if (!sql.needs_body) {
            if ((r = push_uid(req, &uids, &n, &cap, (uint32_t)sqlite3_column_int64(st, 1))) != 0)
                break;
            continue;
        }
        if (nc == ccap) {
            ccap = ccap ? ccap * 2 : 64;
            cand *nv = realloc(c, ccap * sizeof *nv);
            if (nv == NULL) {
                r = tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
                break;
            }
            c = nv;
        }
        cand *o = &c[nc++];
        o->id = sqlite3_column_int64(st, 0);
        o->uid = (uint32_t)sqlite3_column_int64(st, 1);
        o->flags = (unsigned)sqlite3_column_int(st, 2);
        o->internal_date = sqlite3_column_int64(st, 3);
        o->hdr_date = sqlite3_column_int64(st, 4);
        o->size = (uint64_t)sqlite3_column_int64(st, 5);
        o->modseq = (uint64_t)sqlite3_column_int64(st, 6);
        o->ref = local_col_text(&L->batch, st, 7);
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (r == 0 && sql.needs_body)
        r = check_bodies(L, req, &a, &sql, c, nc, &uids, &n, &cap);
    free(c);
    if (r != TERN_STORE_OK) {
        free(uids);
        return r;
    }
    req->out.uids = tern_arena_alloc(&req->arena, (n ? n : 1) * sizeof *uids);
    if (req->out.uids == NULL) {
        free(uids);
        return tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
    }
    if (n)
        memcpy(req->out.uids, uids, n * sizeof *uids);
    req->out.n_uids = n;
    free(uids);
    req->out.highest_modseq = m.highest_modseq;
    return TERN_STORE_OK;
}
