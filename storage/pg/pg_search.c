/* SEARCH and CHANGES for the PostgreSQL backend. SEARCH compiles the tree
 * with tern_search_to_sql; header, flag, date, size, uid and modseq
 * criteria run in the database. BODY/TEXT criteria are checked here on the
 * candidates the SQL leaves, reading their bodies a batch at a time so
 * that memory stays bounded by the batch, not the mailbox.
 *
 * Input trusted: the search tree from our own IMAP/JMAP code; bodies and
 * header values are untrusted and only handed to the index matchers. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "storage/index.h"
#include "storage/pg/pg_internal.h"

#define PG_SEARCH_BATCH 64
#define PG_SEARCH_BATCH_BYTES (8u << 20) /* bodies read at once, past the first */
#define PG_SEARCH_MAX_BODY_NODES 64

typedef struct cand {
    uint64_t id;
    uint32_t uid;
    unsigned flags;
    int64_t internal_date, hdr_date;
    uint64_t size, modseq;
    char **keywords;
    size_t n_keywords;
    tern_index_field *fields;
    size_t n_fields, cap_fields;
    unsigned char found[PG_SEARCH_MAX_BODY_NODES];
} cand;

typedef struct search_state {
    tern_sql sql;
    const tern_search *nodes[PG_SEARCH_MAX_BODY_NODES];
    size_t n_nodes;
    cand *c;
    size_t n;
    uint32_t *hits;
    size_t n_hits;
} search_state;

static uint64_t be64(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | u[i];
    return v;
}

static cand *find_cand(search_state *st, size_t from, size_t to, uint64_t id)
{
    for (size_t i = from; i < to; i++)
        if (st->c[i].id == id)
            return &st->c[i];
    return NULL;
}

/* Binds the ids of candidates [from, to) as one bigint[] parameter. */
static void bind_ids(pg_job *j, search_state *st, size_t from, size_t to)
{
    char *s = tern_arena_alloc(&j->a, (to - from) * 22 + 3);
    size_t o = 0;
    s[o++] = '{';
    for (size_t i = from; i < to; i++)
        o += (size_t)sprintf(s + o, "%s%" PRIu64, i > from ? "," : "", st->c[i].id);
    s[o++] = '}';
    s[o] = 0;
    pg_p_str(j, s);
}

/* Where an external body (blob directory) of the batch's rows was read
 * to, in j->owned_data: prefix, then the file. */
typedef struct blob_slot {
    size_t off, len;
} blob_slot;

/* Thread pool: reads the files of the external rows of j->res. */
static void search_read_blobs(pg_job *j)
{
    blob_slot *sl = j->q;
    int n = PQntuples(j->res);
    size_t total = 0;
    char hex[65];
    for (int i = 0; i < n; i++) {
        sl[i].off = sl[i].len = 0;
        if (PQgetvalue(j->res, i, 2)[0] == 0)
            continue;
        uint64_t size = 0;
        int rc = PQgetlength(j->res, i, 3) == 32 ? 0 : -EINVAL;
        if (rc == 0) {
            pg_blob_hex((const uint8_t *)PQgetvalue(j->res, i, 3), hex);
            rc = pg_blob_size(j->pg->blob_dir, hex, &size);
        }
        if (rc < 0) {
            TLOG_ERR("store", "event=blob_read_failed hash=%s error=\"%s\"", rc == -EINVAL ? "-" : hex,
                     strerror(-rc));
            pg_done(j, TERN_STORE_EIO, "message body %s unreadable: %s", hex, strerror(-rc));
            return;
        }
        sl[i].off = total;
        sl[i].len = (size_t)PQgetlength(j->res, i, 4) + (size_t)size;
        total += sl[i].len;
    }
    free(j->owned_data);
    j->owned_data = malloc(total ? total : 1);
    if (!j->owned_data) {
        pg_done(j, TERN_STORE_ETEMP, "out of memory");
        return;
    }
    for (int i = 0; i < n; i++) {
        if (PQgetvalue(j->res, i, 2)[0] == 0)
            continue;
        size_t pl = (size_t)PQgetlength(j->res, i, 4), got = 0;
        memcpy(j->owned_data + sl[i].off, PQgetvalue(j->res, i, 4), pl);
        pg_blob_hex((const uint8_t *)PQgetvalue(j->res, i, 3), hex);
        int rc = pg_blob_read(j->pg->blob_dir, hex, 0, sl[i].len - pl, j->owned_data + sl[i].off + pl,
                              &got);
        if (rc < 0 || got != sl[i].len - pl) {
            TLOG_ERR("store", "event=blob_read_failed hash=%s error=\"%s\"", hex,
                     rc < 0 ? strerror(-rc) : "short file");
            pg_done(j, TERN_STORE_EIO, "message body %s unreadable", hex);
            return;
        }
    }
}

int pg_op_search(pg_job *j)
{
    tern_store_req *r = j->req;
    search_state *st = j->p;
    PG_BEGIN(j);
    if (!r->in.account || !r->in.name || !r->in.search)
        return pg_done(j, TERN_STORE_EINVAL, "no mailbox or search");
    st = tern_arena_alloc(&j->a, sizeof *st);
    if (!st)
        return pg_done(j, TERN_STORE_ETEMP, "out of memory");
    j->p = st;
    if (tern_search_to_sql(&j->a, r->in.search, TERN_SQL_POSTGRES, 2, &st->sql) != 0)
        return pg_done(j, TERN_STORE_EINVAL, "search too deep or out of memory");
    if (st->sql.n_params + 1 >= PG_MAX_PARAMS / 2)
        return pg_done(j, TERN_STORE_EINVAL, "search too large");
    st->n_nodes = tern_search_body_nodes(r->in.search, st->nodes, PG_SEARCH_MAX_BODY_NODES);
    if (st->n_nodes > PG_SEARCH_MAX_BODY_NODES)
        return pg_done(j, TERN_STORE_EINVAL, "too many BODY/TEXT criteria");
    pg_p_str(j, pg_norm_account(&j->a, r->in.account));
    pg_p_str(j, tern_store__canon_mailbox(&j->a, r->in.name));
    PG_QUERY(j, "SELECT b.id, b.highest_modseq FROM mailboxes b JOIN accounts a "
                "ON a.id = b.account_id WHERE a.name = $1 AND b.name = $2");
    if (PQntuples(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such mailbox");
    j->mailbox_id = pg_u64(j->res, 0, 0);
    r->out.highest_modseq = pg_u64(j->res, 0, 1);
    pg_p_u64(j, j->mailbox_id);
    for (size_t i = 0; i < st->sql.n_params; i++)
        pg_p_str(j, pg_clean_text(j, st->sql.params[i]));
    PG_QUERY(j, tern_arena_printf(&j->a,
        "SELECT m.id, m.uid, m.flags, m.internal_date, coalesce(m.hdr_date, 0), m.size, m.modseq, "
        "(SELECT string_agg(k.keyword, ' ') FROM keywords k WHERE k.message = m.id) "
        "FROM messages m WHERE m.mailbox_id = $1 AND (%s) ORDER BY m.uid", st->sql.where));
    {
        size_t n = (size_t)PQntuples(j->res);
        if (!st->sql.needs_body) {
            r->out.uids = tern_arena_alloc(&r->arena, (n + 1) * sizeof *r->out.uids);
            for (size_t i = 0; i < n; i++)
                r->out.uids[i] = (uint32_t)pg_u64(j->res, (int)i, 1);
            r->out.n_uids = n;
            return PG_DONE;
        }
        st->c = tern_arena_alloc(&j->a, (n + 1) * sizeof *st->c);
        st->hits = tern_arena_alloc(&r->arena, (n + 1) * sizeof *st->hits);
        if (!st->c || !st->hits)
            return pg_done(j, TERN_STORE_ETEMP, "out of memory");
        for (size_t i = 0; i < n; i++) {
            cand *c = &st->c[i];
            c->id = pg_u64(j->res, (int)i, 0);
            c->uid = (uint32_t)pg_u64(j->res, (int)i, 1);
            c->flags = (unsigned)pg_u64(j->res, (int)i, 2);
            c->internal_date = pg_i64(j->res, (int)i, 3);
            c->hdr_date = pg_i64(j->res, (int)i, 4);
            c->size = pg_u64(j->res, (int)i, 5);
            c->modseq = pg_u64(j->res, (int)i, 6);
            if (st->sql.needs_eval)
                c->keywords = pg_split_words(&j->a, PQgetisnull(j->res, (int)i, 7) ? NULL
                                                    : PQgetvalue(j->res, (int)i, 7), &c->n_keywords);
        }
        st->n = n;
    }
    for (j->i = 0; j->i < (int64_t)st->n; j->i = (int64_t)j->u[1]) {
        j->u[0] = (uint64_t)j->i;
        {
            /* A batch is bounded in messages and in bytes, so a mailbox of
             * large messages is read a few at a time. */
            size_t end = (size_t)j->u[0] + 1;
            uint64_t bytes = st->c[j->u[0]].size;
            while (end < st->n && end - (size_t)j->u[0] < PG_SEARCH_BATCH &&
                   bytes + st->c[end].size <= PG_SEARCH_BATCH_BYTES)
                bytes += st->c[end++].size;
            j->u[1] = end;
        }
        if (st->sql.needs_eval) {
            bind_ids(j, st, (size_t)j->u[0], (size_t)j->u[1]);
            PG_QUERY(j, "SELECT message, name, value FROM headers WHERE message = ANY ($1::bigint[])");
            st = j->p;
            for (int i = 0; i < PQntuples(j->res); i++) {
                cand *c = find_cand(st, (size_t)j->u[0], (size_t)j->u[1], pg_u64(j->res, i, 0));
                if (!c)
                    continue;
                if (c->n_fields == c->cap_fields) {
                    size_t cap = c->cap_fields ? c->cap_fields * 2 : 16;
                    tern_index_field *f = tern_arena_alloc(&j->a, cap * sizeof *f);
                    if (!f)
                        return pg_done(j, TERN_STORE_ETEMP, "out of memory");
                    if (c->n_fields)
                        memcpy(f, c->fields, c->n_fields * sizeof *f);
                    c->fields = f;
                    c->cap_fields = cap;
                }
                c->fields[c->n_fields].name = tern_arena_strdup(&j->a, PQgetvalue(j->res, i, 1));
                c->fields[c->n_fields].value = tern_arena_strdup(&j->a, PQgetvalue(j->res, i, 2));
                c->n_fields++;
            }
        }
        st = j->p;
        bind_ids(j, st, (size_t)j->u[0], (size_t)j->u[1]);
        j->binary_result = true;
        PG_QUERY(j, "SELECT m.id, CASE WHEN m.prefix IS NULL THEN bd.data ELSE m.prefix || bd.data END, "
                    "bd.external, coalesce(bd.hash, ''::bytea), coalesce(m.prefix, ''::bytea) "
                    "FROM messages m JOIN bodies bd ON bd.id = m.body_ref "
                    "WHERE m.id = ANY ($1::bigint[])");
        {
            bool ext = false;
            for (int i = 0; i < PQntuples(j->res); i++)
                ext = ext || PQgetvalue(j->res, i, 2)[0] != 0;
            j->q = NULL;
            if (ext) {
                if (!j->pg->blob_dir)
                    return pg_done(j, TERN_STORE_EIO, "message bodies are in the blob directory, "
                                                      "and postgres.blob_dir is not set");
                j->q = tern_arena_alloc(&j->a, (size_t)PQntuples(j->res) * sizeof(blob_slot));
                if (!j->q)
                    return pg_done(j, TERN_STORE_ETEMP, "out of memory");
            }
        }
        if (j->q) {
            PG_WORK(j, search_read_blobs);
            if (r->status != TERN_STORE_OK)
                return PG_DONE;
        }
        st = j->p;
        for (int i = 0; i < PQntuples(j->res); i++) {
            cand *c = find_cand(st, (size_t)j->u[0], (size_t)j->u[1], be64(PQgetvalue(j->res, i, 0)));
            if (!c)
                continue;
            const uint8_t *data = (const uint8_t *)PQgetvalue(j->res, i, 1);
            size_t len = (size_t)PQgetlength(j->res, i, 1);
            if (j->q && PQgetvalue(j->res, i, 2)[0] != 0) {
                const blob_slot *sl = (const blob_slot *)j->q + i;
                data = j->owned_data + sl->off;
                len = sl->len;
            }
            for (size_t k = 0; k < st->n_nodes; k++) {
                const tern_search *node = st->nodes[k];
                tern_body_matcher *m = node->kind == TERN_SEARCH_TEXT
                                           ? tern_body_matcher_new_text(node->str ? node->str : "")
                                           : tern_body_matcher_new(node->str ? node->str : "");
                if (!m)
                    return pg_done(j, TERN_STORE_ETEMP, "out of memory");
                tern_body_matcher_feed(m, data, len);
                c->found[k] = tern_body_matcher_found(m) ? 1 : 0;
                tern_body_matcher_free(m);
            }
        }
        for (size_t i = (size_t)j->u[0]; i < (size_t)j->u[1]; i++) {
            cand *c = &st->c[i];
            bool hit;
            if (!st->sql.needs_eval) {
                hit = true;
                for (size_t k = 0; k < st->n_nodes; k++)
                    hit = hit && c->found[k];
            } else {
                tern_search_row row = {
                    .uid = c->uid,
                    .flags = c->flags,
                    .keywords = (const char *const *)c->keywords,
                    .n_keywords = c->n_keywords,
                    .internal_date = c->internal_date,
                    .hdr_date = c->hdr_date,
                    .size = c->size,
                    .modseq = c->modseq,
                    .fields = c->fields,
                    .n_fields = c->n_fields,
                    .body_found = c->found,
                    .n_body = st->n_nodes,
                };
                hit = tern_search_eval(r->in.search, &row) != 0;
            }
            if (hit)
                st->hits[st->n_hits++] = c->uid;
        }
    }
    st = j->p;
    r->out.uids = st->hits;
    r->out.n_uids = st->n_hits;
    PG_END(j);
}

int pg_op_changes(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account || !r->in.name)
        return pg_done(j, TERN_STORE_EINVAL, "no mailbox");
    pg_p_str(j, pg_norm_account(&j->a, r->in.account));
    pg_p_str(j, tern_store__canon_mailbox(&j->a, r->in.name));
    PG_QUERY(j, "SELECT b.id, b.highest_modseq, b.expunged_below_modseq FROM mailboxes b "
                "JOIN accounts a ON a.id = b.account_id WHERE a.name = $1 AND b.name = $2");
    if (PQntuples(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such mailbox");
    j->mailbox_id = pg_u64(j->res, 0, 0);
    r->out.changes.highest_modseq = pg_u64(j->res, 0, 1);
    r->out.highest_modseq = r->out.changes.highest_modseq;
    if (r->in.since_modseq < pg_u64(j->res, 0, 2))
        return pg_done(j, TERN_STORE_ETOOOLD, "changes before modseq %" PRIu64 " are no longer kept",
                       pg_u64(j->res, 0, 2));
    pg_p_u64(j, j->mailbox_id);
    pg_p_u64(j, r->in.since_modseq);
    PG_QUERY(j, "SELECT " PG_MESSAGE_COLS " FROM messages m WHERE m.mailbox_id = $1 "
                "AND m.modseq > $2 ORDER BY m.uid");
    {
        int n = PQntuples(j->res);
        tern_changes *ch = &r->out.changes;
        ch->changed = tern_arena_alloc(&r->arena, (size_t)(n + 1) * sizeof *ch->changed);
        for (int i = 0; i < n; i++) {
            tern_message_info mi;
            memset(&mi, 0, sizeof mi);
            pg_message_row(j, j->res, i, &mi);
            ch->changed[i].uid = mi.uid;
            ch->changed[i].modseq = mi.modseq;
            ch->changed[i].flags = mi.flags;
            ch->changed[i].keywords = mi.keywords;
            ch->changed[i].n_keywords = mi.n_keywords;
        }
        ch->n_changed = (size_t)n;
    }
    pg_p_u64(j, j->mailbox_id);
    pg_p_u64(j, r->in.since_modseq);
    PG_QUERY(j, "SELECT DISTINCT uid FROM expunged WHERE mailbox_id = $1 AND modseq > $2 ORDER BY uid");
    {
        int n = PQntuples(j->res);
        tern_changes *ch = &r->out.changes;
        ch->vanished = tern_arena_alloc(&r->arena, (size_t)(n + 1) * sizeof *ch->vanished);
        for (int i = 0; i < n; i++)
            ch->vanished[i] = (uint32_t)pg_u64(j->res, i, 0);
        ch->n_vanished = (size_t)n;
    }
    PG_END(j);
}
