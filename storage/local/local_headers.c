/* The local backend's batched reads for FETCH, SORT and THREAD:
 * FETCH_HEADERS (the header block of each message of a UID set, read from
 * its Maildir file in the same store-thread job) and FETCH_INDEX (the
 * header index columns of the messages table, one query per UID range).
 * One request for a whole batch instead of one hop to the store thread per
 * message is what makes a header FETCH or a SORT of many messages cheap.
 * Runs on the backend thread inside the batch transaction. Input trusted:
 * parameters from our protocol code; message bytes are untrusted and only
 * scanned for the blank line that ends the header. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "storage/local/local_internal.h"

typedef struct hrow {
    uint32_t uid;
    uint64_t size;
    char *ref;
} hrow;

/* Reads up to `want` first octets of the message; returns how many, or -1
 * with errno. */
static ssize_t read_head(int fd, uint8_t *buf, size_t want)
{
    size_t got = 0;
    while (got < want) {
        ssize_t n = pread(fd, buf + got, want - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

static void hrow_fill(void *v, sqlite3_stmt *st, void *ctx)
{
    hrow *o = v;
    o->uid = (uint32_t)sqlite3_column_int64(st, 0);
    o->size = (uint64_t)sqlite3_column_int64(st, 1);
    o->ref = local_col_text(ctx, st, 2);
}

static int fetch_headers(local_store *L, tern_store_req *req)
{
    lacct a;
    lmbox m;
    int r = local_target(L, req, &a, &m);
    if (r != TERN_STORE_OK)
        return r;
    hrow *rows = NULL;
    size_t n = 0;
    r = local_rows_in_set(L, req, &m, &req->in.uids,
                          "SELECT uid, size, body_ref FROM messages"
                          " WHERE mailbox_id = ? AND uid BETWEEN ? AND ? ORDER BY uid",
                          sizeof *rows, (void **)&rows, &n, hrow_fill, &L->batch);
    size_t each = req->in.max_len ? req->in.max_len : TERN_STORE_HEADERS_EACH;
    if (each > TERN_STORE_HEADERS_EACH_MAX)
        each = TERN_STORE_HEADERS_EACH_MAX;
    uint8_t *buf = r == TERN_STORE_OK ? malloc(each) : NULL;
    tern_message_header *out = NULL;
    if (r == TERN_STORE_OK) {
        out = tern_arena_alloc(&req->arena, (n ? n : 1) * sizeof *out);
        if (buf == NULL || out == NULL)
            r = tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
    }
    size_t budget = TERN_STORE_HEADERS_BUDGET;
    for (size_t i = 0; i < n && r == TERN_STORE_OK; i++) {
        tern_message_header *h = &out[i];
        memset(h, 0, sizeof *h);
        h->uid = rows[i].uid;
        h->size = rows[i].size;
        if (budget == 0 || rows[i].ref == NULL)
            continue; /* left to the caller's FETCH_BODY */
        size_t want = rows[i].size < each ? (size_t)rows[i].size : each;
        if (want > budget)
            want = budget;
        int fd = local_open_body(L, a.maildir, rows[i].ref);
        if (fd < 0)
            continue; /* FETCH_BODY will report it, for this message only */
        ssize_t got = read_head(fd, buf, want);
        close(fd);
        if (got < 0)
            continue;
        size_t end;
        if (tern_store_header_end(buf, (size_t)got, &end)) {
            h->complete = true;
        } else {
            end = (size_t)got;
            h->complete = (uint64_t)got >= rows[i].size; /* all header, no blank line */
        }
        if (!h->complete)
            continue;
        h->data = tern_arena_alloc(&req->arena, end ? end : 1);
        if (h->data == NULL) {
            r = tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
            break;
        }
        memcpy(h->data, buf, end);
        h->len = end;
        budget -= end < budget ? end : budget;
    }
    free(buf);
    free(rows);
    if (r != TERN_STORE_OK)
        return r;
    req->out.headers = out;
    req->out.n_headers = n;
    return TERN_STORE_OK;
}

static int64_t col_i64(sqlite3_stmt *st, int col)
{
    return sqlite3_column_type(st, col) == SQLITE_NULL ? 0 : sqlite3_column_int64(st, col);
}

static void index_row(void *v, sqlite3_stmt *st, void *ctx)
{
    tern_message_index *o = v;
    tern_arena *ar = ctx;
    o->uid = (uint32_t)sqlite3_column_int64(st, 0);
    o->size = (uint64_t)sqlite3_column_int64(st, 1);
    o->internal_date = sqlite3_column_int64(st, 2);
    o->hdr_date = col_i64(st, 3);
    o->subject = local_col_text(ar, st, 4);
    o->from = local_col_text(ar, st, 5);
    o->to = local_col_text(ar, st, 6);
    o->cc = local_col_text(ar, st, 7);
    o->message_id = local_col_text(ar, st, 8);
    o->in_reply_to = local_col_text(ar, st, 9);
    o->refs = local_col_text(ar, st, 10);
}

static int fetch_index(local_store *L, tern_store_req *req)
{
    lacct a;
    lmbox m;
    int r = local_target(L, req, &a, &m);
    if (r != TERN_STORE_OK)
        return r;
    tern_message_index *v = NULL;
    size_t n = 0;
    r = local_rows_in_set(L, req, &m, &req->in.uids,
                          "SELECT uid, size, internal_date, hdr_date, subject, from_addr, to_addr,"
                          " cc_addr, message_id, in_reply_to, refs FROM messages"
                          " WHERE mailbox_id = ? AND uid BETWEEN ? AND ? ORDER BY uid",
                          sizeof *v, (void **)&v, &n, index_row, &req->arena);
    if (r == TERN_STORE_OK) {
        req->out.index = tern_arena_alloc(&req->arena, (n ? n : 1) * sizeof *v);
        if (req->out.index == NULL)
            r = tern_store__fail(req, TERN_STORE_ETEMP, "out of memory");
        else if (n)
            memcpy(req->out.index, v, n * sizeof *v);
        req->out.n_index = req->out.index ? n : 0;
    }
    free(v);
    return r;
}

int local_op_headers(local_store *L, tern_store_req *req)
{
    switch (req->op) {
    case TERN_STORE_FETCH_HEADERS: return fetch_headers(L, req);
    case TERN_STORE_FETCH_INDEX: return fetch_index(L, req);
    default: return tern_store__fail(req, TERN_STORE_EINVAL, "not a header op");
    }
}
