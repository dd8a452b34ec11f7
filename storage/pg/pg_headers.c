/* The PostgreSQL backend's batched reads for FETCH, SORT and THREAD:
 * FETCH_HEADERS (the first octets of each message of a UID set, its
 * per-copy prefix and then its body, cut at the end of its header block) and FETCH_INDEX (the header index columns), each
 * one statement for the whole set. The header read is bounded in SQL: a
 * running sum over the set stops reading bodies once
 * TERN_STORE_HEADERS_BUDGET would be passed, so a large set cannot make
 * libpq hold more than that. Input trusted: parameters from our protocol
 * code; message bytes are untrusted and only scanned for the blank line
 * that ends the header. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"

#include "storage/pg/pg_internal.h"

/* The mailbox named by (account, name) as a CTE, $1 and $2. */
#define PG_HDR_MAILBOX                                                            \
    "WITH b AS (SELECT b.id FROM mailboxes b JOIN accounts a ON a.id = b.account_id " \
    "WHERE a.name = $1 AND b.name = $2) "

static bool needs_max(const tern_uid_set *set)
{
    for (size_t i = 0; i < set->n; i++)
        if (set->ranges[i].first == UINT32_MAX || set->ranges[i].last == UINT32_MAX)
            return true;
    return false;
}

static uint64_t be64(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | u[i];
    return v;
}

/* Binds account and mailbox as $1, $2 (the CTE above). */
static void bind_target(pg_job *j)
{
    tern_store_req *r = j->req;
    pg_p_str(j, pg_norm_account(&j->a, r->in.account));
    pg_p_str(j, tern_store__canon_mailbox(&j->a, r->in.name));
}

typedef struct hdr_slot {
    uint8_t *d;
    size_t len;
} hdr_slot;

/* Thread pool: the first j->u[1] octets (prefix, then file) of each
 * external row of j->res. */
static void headers_read_blobs(pg_job *j)
{
    hdr_slot *sl = j->q;
    size_t each = (size_t)j->u[1];
    char hex[65];
    for (int i = 0; i < PQntuples(j->res); i++) {
        sl[i].d = NULL;
        sl[i].len = 0;
        if (PQgetlength(j->res, i, 3) != 1 || PQgetvalue(j->res, i, 3)[0] == 0)
            continue;
        if (PQgetlength(j->res, i, 4) != 32) {
            pg_done(j, TERN_STORE_EIO, "external body without a hash");
            return;
        }
        size_t pl = (size_t)PQgetlength(j->res, i, 5);
        if (pl > each)
            pl = each;
        uint64_t size = be64(PQgetvalue(j->res, i, 1));
        size_t want = each - pl;
        if (size < pl)
            want = 0;
        else if (want > size - pl)
            want = (size_t)(size - pl);
        sl[i].d = tern_arena_alloc(&j->a, pl + want + 1);
        if (!sl[i].d) {
            pg_done(j, TERN_STORE_ETEMP, "out of memory");
            return;
        }
        memcpy(sl[i].d, PQgetvalue(j->res, i, 5), pl);
        pg_blob_hex((const uint8_t *)PQgetvalue(j->res, i, 4), hex);
        size_t got = 0;
        int rc = pg_blob_read(j->pg->blob_dir, hex, 0, want, sl[i].d + pl, &got);
        if (rc < 0 || got != want) {
            TLOG_ERR("store", "event=blob_read_failed hash=%s error=\"%s\"", hex,
                     rc < 0 ? strerror(-rc) : "short file");
            pg_done(j, TERN_STORE_EIO, "message body %s unreadable", hex);
            return;
        }
        sl[i].len = pl + got;
    }
}

int pg_op_fetch_headers(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account || !r->in.name)
        return pg_done(j, TERN_STORE_EINVAL, "no mailbox");
    j->u[0] = 0;
    if (needs_max(&r->in.uids)) {
        bind_target(j);
        PG_QUERY(j, PG_HDR_MAILBOX "SELECT coalesce(max(m.uid), 0) FROM b "
                    "JOIN messages m ON m.mailbox_id = b.id");
        j->u[0] = PQntuples(j->res) ? pg_u64(j->res, 0, 0) : 0;
    }
    {
        size_t each = r->in.max_len ? r->in.max_len : TERN_STORE_HEADERS_EACH;
        if (each > TERN_STORE_HEADERS_EACH_MAX)
            each = TERN_STORE_HEADERS_EACH_MAX;
        j->u[1] = each;
        bind_target(j);
        pg_p_u64(j, each);
        pg_p_u64(j, TERN_STORE_HEADERS_BUDGET);
        pg_uidset(j, &r->in.uids, j->u[0]);
    }
    j->binary_result = true;
    PG_QUERY(j, tern_arena_printf(&j->a, PG_HDR_MAILBOX
             ", s AS (SELECT m.uid, m.size, m.body_ref, m.prefix, sum(least(m.size, $3::bigint)) "
             "OVER (ORDER BY m.uid) AS run FROM messages m JOIN b ON m.mailbox_id = b.id "
             "WHERE %s) "
             /* The message is the row's prefix (this copy's Return-Path and
              * Delivered-To), then the maybe shared body. */
             "SELECT s.uid::int8, s.size::int8, CASE WHEN s.run <= $4::bigint THEN "
             "substring(coalesce(s.prefix, ''::bytea) || "
             "substring(bd.data FROM 1 FOR $3::int) FROM 1 FOR $3::int) END, "
             /* An external body (blob directory) is read from its file. */
             "coalesce(s.run <= $4::bigint AND bd.external, false), coalesce(bd.hash, ''::bytea), "
             "coalesce(s.prefix, ''::bytea) "
             "FROM b LEFT JOIN s ON true LEFT JOIN bodies bd ON bd.id = s.body_ref ORDER BY s.uid",
             j->uidset_sql));
    {
        bool ext = false;
        for (int i = 0; i < PQntuples(j->res); i++)
            ext = ext || (PQgetlength(j->res, i, 3) == 1 && PQgetvalue(j->res, i, 3)[0] != 0);
        j->q = NULL;
        if (ext) {
            if (!j->pg->blob_dir)
                return pg_done(j, TERN_STORE_EIO, "message bodies are in the blob directory, "
                                                  "and postgres.blob_dir is not set");
            j->q = tern_arena_alloc(&j->a, (size_t)PQntuples(j->res) * sizeof(hdr_slot));
            if (!j->q)
                return pg_done(j, TERN_STORE_ETEMP, "out of memory");
        }
    }
    if (j->q) {
        PG_WORK(j, headers_read_blobs);
        if (r->status != TERN_STORE_OK)
            return PG_DONE;
    }
    {
        int n = PQntuples(j->res);
        if (n == 0)
            return pg_done(j, TERN_STORE_ENOTFOUND, "no such mailbox");
        tern_message_header *out = tern_arena_alloc(&r->arena, (size_t)n * sizeof *out);
        if (!out)
            return pg_done(j, TERN_STORE_ETEMP, "out of memory");
        size_t k = 0;
        for (int i = 0; i < n; i++) {
            if (PQgetisnull(j->res, i, 0) || PQgetlength(j->res, i, 0) != 8)
                continue; /* the mailbox's row when the set matched nothing */
            tern_message_header *h = &out[k++];
            memset(h, 0, sizeof *h);
            h->uid = (uint32_t)be64(PQgetvalue(j->res, i, 0));
            h->size = be64(PQgetvalue(j->res, i, 1));
            bool ext = j->q && PQgetvalue(j->res, i, 3)[0] != 0;
            if (!ext && PQgetisnull(j->res, i, 2))
                continue; /* past the budget: the caller reads it alone */
            const uint8_t *d = (const uint8_t *)PQgetvalue(j->res, i, 2);
            size_t got = (size_t)PQgetlength(j->res, i, 2), end;
            if (ext) {
                const hdr_slot *sl = (const hdr_slot *)j->q + i;
                d = sl->d;
                got = sl->len;
            }
            if (tern_store_header_end(d, got, &end)) {
                h->complete = true;
            } else {
                end = got;
                h->complete = (uint64_t)got >= h->size;
            }
            if (!h->complete)
                continue;
            h->data = tern_arena_alloc(&r->arena, end ? end : 1);
            if (!h->data)
                return pg_done(j, TERN_STORE_ETEMP, "out of memory");
            memcpy(h->data, d, end);
            h->len = end;
        }
        r->out.headers = out;
        r->out.n_headers = k;
    }
    PG_END(j);
}

int pg_op_fetch_index(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account || !r->in.name)
        return pg_done(j, TERN_STORE_EINVAL, "no mailbox");
    j->u[0] = 0;
    if (needs_max(&r->in.uids)) {
        bind_target(j);
        PG_QUERY(j, PG_HDR_MAILBOX "SELECT coalesce(max(m.uid), 0) FROM b "
                    "JOIN messages m ON m.mailbox_id = b.id");
        j->u[0] = PQntuples(j->res) ? pg_u64(j->res, 0, 0) : 0;
    }
    bind_target(j);
    pg_uidset(j, &r->in.uids, j->u[0]);
    PG_QUERY(j, tern_arena_printf(&j->a, PG_HDR_MAILBOX
             "SELECT m.uid, m.size, m.internal_date, m.hdr_date, m.subject, m.from_addr, "
             "m.to_addr, m.cc_addr, m.message_id, m.in_reply_to, m.refs "
             "FROM b LEFT JOIN messages m ON m.mailbox_id = b.id AND %s ORDER BY m.uid",
             j->uidset_sql));
    {
        int n = PQntuples(j->res);
        if (n == 0)
            return pg_done(j, TERN_STORE_ENOTFOUND, "no such mailbox");
        tern_message_index *out = tern_arena_alloc(&r->arena, (size_t)n * sizeof *out);
        if (!out)
            return pg_done(j, TERN_STORE_ETEMP, "out of memory");
        size_t k = 0;
        for (int i = 0; i < n; i++) {
            if (PQgetisnull(j->res, i, 0))
                continue;
            tern_message_index *o = &out[k++];
            o->uid = (uint32_t)pg_u64(j->res, i, 0);
            o->size = pg_u64(j->res, i, 1);
            o->internal_date = pg_i64(j->res, i, 2);
            o->hdr_date = pg_i64(j->res, i, 3);
            o->subject = pg_str(j, j->res, i, 4);
            o->from = pg_str(j, j->res, i, 5);
            o->to = pg_str(j, j->res, i, 6);
            o->cc = pg_str(j, j->res, i, 7);
            o->message_id = pg_str(j, j->res, i, 8);
            o->in_reply_to = pg_str(j, j->res, i, 9);
            o->refs = pg_str(j, j->res, i, 10);
        }
        r->out.index = out;
        r->out.n_index = k;
    }
    PG_END(j);
}
