/* IMAP FETCH and UID FETCH, streamed: message metadata comes from the store
 * in batches of imap.fetch_batch UIDs, each batch is written before the
 * next is asked for, and bodies go out in BODY_CHUNK pieces read from the
 * store, pausing whenever the socket has more than OUT_HIGH_WATER unsent.
 * So a FETCH of a large mailbox or a large message holds one batch and one
 * chunk, never the whole answer. Non-PEEK body fetches set \Seen first.
 * Input: parsed fetch attributes (untrusted values), store answers; the
 * message bytes are the sender's (untrusted), only split at the header end
 * and filtered by field name here. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "lib/log.h"
#include "protocols/imap/imap_session_int.h"

struct imap_fetch_job {
    tern_imap_fetch f;
    uint32_t *todo;          /* UIDs to answer for, ascending */
    size_t n_todo, next;
    tern_uid_range *req_ranges; /* the UID ranges asked (VANISHED) */
    size_t n_req_ranges;
    bool set_seen;           /* a non-PEEK body item on a read-write mailbox */
    tern_store_req *batch;   /* the metadata of the current batch */
    size_t bi;               /* message of the batch being written */
    size_t ai;               /* its next item */
    bool open;               /* "* n FETCH (" is out for the current message */
    bool first_item;
    bool seen_now;           /* \Seen was just set on the current message */
    uint32_t *seen_uids;     /* set by this batch's implicit \Seen */
    size_t n_seen;
    /* the header of the current message, for HEADER/TEXT sections */
    uint8_t *hdr;
    size_t hdr_len, hdr_cap;
    uint32_t hdr_uid;
    bool hdr_complete;
    size_t hdr_end;          /* octets of the header block, blank line included */
    /* header blocks of the next messages of the batch, read in one store
     * request (FETCH_HEADERS) for uids hb_first..hb_last; a message it
     * could not give whole is read alone */
    tern_store_req *hb;
    uint32_t hb_first, hb_last;
    size_t hb_pos;
    /* the MIME tree of the current message (ENVELOPE, BODYSTRUCTURE, parts) */
    bool need_tree;
    bool env_only;           /* only ENVELOPE needs it: parsed from the header block */
    tern_arena tree_arena;
    tern_mime_parser *parser;
    tern_mime_part *tree;
    uint32_t tree_uid;
    uint64_t tree_off;
    /* a byte range of the current message read into memory (a part's
     * header for HEADER.FIELDS) */
    uint8_t *rng;
    size_t rng_len, rng_cap;
    uint32_t rng_uid;
    uint64_t rng_start, rng_want;
    bool rng_ready;
    /* a literal being streamed from the store */
    bool streaming;
    uint64_t body_off, body_left;
    bool cte_error;          /* BINARY of a part in an unknown encoding */
};

static void fetch_write(imap_session *s);
static void fetch_next_batch(imap_session *s);

void imap__fetch_free(imap_session *s)
{
    imap_fetch_job *j = s->job;
    if (!j)
        return;
    if (j->batch)
        tern_store_req_free(j->batch);
    if (j->hb)
        tern_store_req_free(j->hb);
    free(j->todo);
    free(j->hdr);
    free(j->rng);
    tern_mime_parser_free(j->parser);
    tern_arena_free(&j->tree_arena);
    free(j->seen_uids);
    free(j);
    s->job = NULL;
}

static void fetch_end(imap_session *s, const char *status, const char *text)
{
    imap__fetch_free(s);
    imap__finish(s, status, "%s", text);
}

static bool out_full(imap_session *s)
{
    return tern_conn_unsent(&s->conn) + s->ob.len > OUT_HIGH_WATER;
}

/* Waits for on_drain before going on. */
static bool fetch_backpressure(imap_session *s)
{
    imap__flush(s);
    if (tern_conn_unsent(&s->conn) > OUT_HIGH_WATER) {
        s->job_waits_drain = true;
        return true;
    }
    return false;
}

void imap__fetch_resume(imap_session *s)
{
    fetch_write(s);
    imap__flush(s);
}

/* ---- static items -------------------------------------------------------- */

static void put_item_sep(imap_session *s, imap_fetch_job *j)
{
    if (!j->first_item)
        tern_buf_append(&s->ob, " ", 1);
    j->first_item = false;
}

static void put_internaldate(imap_session *s, int64_t t)
{
    static const char *const mon[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    imap__printf(s, "INTERNALDATE \"%02d-%s-%04d %02d:%02d:%02d +0000\"", tm.tm_mday,
                 mon[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* ---- sections ---------------------------------------------------------- */

static bool name_in(const char *p, size_t len, char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strlen(names[i]) == len && strncasecmp(names[i], p, len) == 0)
            return true;
    return false;
}

/* HEADER.FIELDS (.NOT): the matching fields of the header block, with
 * their continuation lines, and the blank line that ends a header. */
static void put_header_fields(imap_session *s, const tern_imap_fetch_att *a, const uint8_t *h,
                              size_t hlen, tern_buf *out)
{
    size_t i = 0;
    while (i < hlen) {
        size_t start = i;
        /* one field: a line and its folded continuations */
        for (;;) {
            const uint8_t *nl = memchr(h + i, '\n', hlen - i);
            i = nl ? (size_t)(nl - h) + 1 : hlen;
            if (i >= hlen || (h[i] != ' ' && h[i] != '\t'))
                break;
        }
        size_t flen = i - start;
        if (flen <= 2 && (h[start] == '\r' || h[start] == '\n'))
            break; /* the blank line */
        const uint8_t *colon = memchr(h + start, ':', flen);
        if (!colon)
            continue;
        size_t nlen = (size_t)(colon - (h + start));
        while (nlen > 0 && (h[start + nlen - 1] == ' ' || h[start + nlen - 1] == '\t'))
            nlen--;
        bool match = name_in((const char *)h + start, nlen, a->fields, a->n_fields);
        if (match != (a->sec == TERN_IMAP_SEC_HEADER_FIELDS_NOT))
            tern_buf_append(out, h + start, flen);
    }
    tern_buf_append(out, "\r\n", 2);
    (void)s;
}

/* Writes "NAME<origin> {n}\r\n" for content of `total` octets, clipped by
 * the partial; returns the clipped window. */
static void put_literal_head(imap_session *s, const tern_imap_fetch_att *a, uint64_t total,
                             uint64_t *off_r, uint64_t *len_r)
{
    uint64_t off = 0, len = total;
    if (a->has_partial) {
        off = a->partial_off < total ? a->partial_off : total;
        len = total - off;
        if (len > a->partial_len)
            len = a->partial_len;
    }
    if (a->has_partial)
        imap__printf(s, "%s<%llu> {%llu}\r\n", a->name, (unsigned long long)a->partial_off,
                     (unsigned long long)len);
    else
        imap__printf(s, "%s {%llu}\r\n", a->name, (unsigned long long)len);
    *off_r = off;
    *len_r = len;
}

static void fetch_body_chunk_done(imap_session *s, tern_store_req *r);

static void fetch_stream_next(imap_session *s)
{
    imap_fetch_job *j = s->job;
    const tern_message_info *m = &j->batch->out.messages[j->bi];
    if (j->body_left == 0) {
        j->streaming = false;
        j->ai++;
        fetch_write(s);
        return;
    }
    if (fetch_backpressure(s))
        return;
    tern_store_req *r = imap__req(s, TERN_STORE_FETCH_BODY);
    if (r) {
        r->in.name = s->mbox;
        r->in.uid = m->uid;
        r->in.offset = j->body_off;
        r->in.max_len = j->body_left < BODY_CHUNK ? (size_t)j->body_left : BODY_CHUNK;
    }
    if (!r) {
        fetch_end(s, "NO", "[SERVERBUG] out of memory");
        return;
    }
    if (!imap__try_submit(s, r, fetch_body_chunk_done))
        fetch_end(s, "NO", "[UNAVAILABLE] storage unavailable");
}

static void fetch_body_chunk_done(imap_session *s, tern_store_req *r)
{
    imap_fetch_job *j = s->job;
    if (r->status != TERN_STORE_OK || r->out.body_len == 0) {
        /* The literal's length is promised: the stream cannot be mended. */
        TLOG_WARN(MOD, "event=fetch_body_failed session=%s status=%s error=\"%s\"", s->base.id,
                  tern_store_strerror(r->status), r->error);
        tern_store_req_free(r);
        imap__printf(s, "* BYE Message body unavailable\r\n");
        imap__flush(s);
        imap__fetch_free(s);
        s->bye_sent = true;
        s->state = IS_LOGOUT;
        tern_conn_close(&s->conn, true);
        return;
    }
    size_t n = r->out.body_len < j->body_left ? r->out.body_len : (size_t)j->body_left;
    tern_buf_append(&s->ob, r->out.body, n);
    j->body_off += n;
    j->body_left -= n;
    tern_store_req_free(r);
    imap__flush(s);
    fetch_stream_next(s);
}

static void fetch_header_done(imap_session *s, tern_store_req *r);
static void fetch_headers_batch_done(imap_session *s, tern_store_req *r);

/* Copies the header block into j->hdr; false when out of memory. */
static bool hdr_take(imap_fetch_job *j, uint32_t uid, const uint8_t *p, size_t len)
{
    if (len > j->hdr_cap) {
        size_t nc = j->hdr_cap ? j->hdr_cap : BODY_CHUNK;
        while (nc < len)
            nc *= 2;
        uint8_t *nh = realloc(j->hdr, nc);
        if (!nh)
            return false;
        j->hdr = nh;
        j->hdr_cap = nc;
    }
    if (len)
        memcpy(j->hdr, p, len);
    j->hdr_uid = uid;
    j->hdr_len = j->hdr_end = len;
    j->hdr_complete = true;
    return true;
}

/* Asks the store for the header blocks of the current message and the
 * next ones of the batch (up to HEADER_BATCH), in one request. */
static void fetch_headers_batch(imap_session *s)
{
    imap_fetch_job *j = s->job;
    const tern_message_info *v = j->batch->out.messages;
    size_t from = j->bi, n = j->batch->out.n_messages - from;
    if (n > HEADER_BATCH)
        n = HEADER_BATCH;
    tern_uid_range *rg = tern_arena_alloc(&s->arena, n * sizeof(*rg));
    tern_store_req *r = rg ? imap__req(s, TERN_STORE_FETCH_HEADERS) : NULL;
    if (!r) {
        fetch_end(s, "NO", "[SERVERBUG] out of memory");
        return;
    }
    size_t nr = 0;
    for (size_t i = from; i < from + n; i++) {
        if (nr && rg[nr - 1].last + 1 == v[i].uid)
            rg[nr - 1].last = v[i].uid;
        else
            rg[nr].first = rg[nr].last = v[i].uid, nr++;
    }
    j->hb_first = v[from].uid;
    j->hb_last = v[from + n - 1].uid;
    r->in.name = s->mbox;
    r->in.uids.ranges = rg;
    r->in.uids.n = nr;
    r->in.max_len = HEADER_FIRST_READ;
    if (!imap__try_submit(s, r, fetch_headers_batch_done))
        fetch_end(s, "NO", "[UNAVAILABLE] storage unavailable");
}

static void fetch_headers_batch_done(imap_session *s, tern_store_req *r)
{
    imap_fetch_job *j = s->job;
    if (j->hb)
        tern_store_req_free(j->hb);
    /* A failed batch is kept empty: each message is then read alone, and
     * its own read reports what is wrong. */
    if (r->status != TERN_STORE_OK)
        r->out.n_headers = 0;
    j->hb = r;
    j->hb_pos = 0;
    fetch_write(s);
}

/* Reads the header block of the current message into j->hdr. Returns true
 * when it is there; false when a read is out (fetch_write runs again). */
static bool fetch_need_header(imap_session *s)
{
    imap_fetch_job *j = s->job;
    const tern_message_info *m = &j->batch->out.messages[j->bi];
    if (j->hdr_uid == m->uid && j->hdr_complete)
        return true;
    if (j->hdr_uid != m->uid) {
        if (!j->hb || m->uid < j->hb_first || m->uid > j->hb_last) {
            fetch_headers_batch(s);
            return false;
        }
        const tern_message_header *h = j->hb->out.headers;
        while (j->hb_pos < j->hb->out.n_headers && h[j->hb_pos].uid < m->uid)
            j->hb_pos++;
        if (j->hb_pos < j->hb->out.n_headers && h[j->hb_pos].uid == m->uid &&
            h[j->hb_pos].complete) {
            if (!hdr_take(j, m->uid, h[j->hb_pos].data, h[j->hb_pos].len)) {
                fetch_end(s, "NO", "[SERVERBUG] out of memory");
                return false;
            }
            return true;
        }
        j->hdr_uid = m->uid;
        j->hdr_len = 0;
        j->hdr_complete = false;
    }
    tern_store_req *r = imap__req(s, TERN_STORE_FETCH_BODY);
    if (r) {
        r->in.name = s->mbox;
        r->in.uid = m->uid;
        r->in.offset = j->hdr_len;
        /* Most headers fit in a few KiB: read more only when they do not. */
        r->in.max_len = j->hdr_len == 0 ? HEADER_FIRST_READ : BODY_CHUNK;
    }
    if (!r) {
        fetch_end(s, "NO", "[SERVERBUG] out of memory");
        return false;
    }
    if (!imap__try_submit(s, r, fetch_header_done))
        fetch_end(s, "NO", "[UNAVAILABLE] storage unavailable");
    return false;
}

static void fetch_header_done(imap_session *s, tern_store_req *r)
{
    imap_fetch_job *j = s->job;
    if (r->status != TERN_STORE_OK) {
        tern_store_req_free(r);
        /* Nothing of this message's literal is out yet: a NO is still possible. */
        imap__printf(s, ")\r\n");
        fetch_end(s, "NO", "[UNAVAILABLE] message body unavailable");
        return;
    }
    size_t n = r->out.body_len;
    if (j->hdr_len + n > j->hdr_cap) {
        size_t nc = j->hdr_cap ? j->hdr_cap : BODY_CHUNK;
        while (nc < j->hdr_len + n)
            nc *= 2;
        uint8_t *nh = realloc(j->hdr, nc);
        if (!nh) {
            tern_store_req_free(r);
            imap__printf(s, ")\r\n");
            fetch_end(s, "NO", "[SERVERBUG] out of memory");
            return;
        }
        j->hdr = nh;
        j->hdr_cap = nc;
    }
    memcpy(j->hdr + j->hdr_len, r->out.body, n);
    j->hdr_len += n;
    uint64_t total = r->out.body_total;
    tern_store_req_free(r);
    /* The header ends at the first empty line, cut as FETCH_HEADERS cuts it. */
    j->hdr_complete = tern_store_header_end(j->hdr, j->hdr_len, &j->hdr_end);
    if (!j->hdr_complete && (n == 0 || j->hdr_len >= total || j->hdr_len >= HEADER_MAX)) {
        /* No blank line: the whole (or the capped) message is header. */
        j->hdr_end = j->hdr_len;
        j->hdr_complete = true;
    }
    fetch_write(s);
}

/* ---- the MIME tree ------------------------------------------------------ */

static void fetch_tree_done(imap_session *s, tern_store_req *r);

static bool fetch_submit_body(imap_session *s, uint32_t uid, uint64_t off, size_t max,
                              imap_step step)
{
    tern_store_req *r = imap__req(s, TERN_STORE_FETCH_BODY);
    if (!r) {
        fetch_end(s, "NO", "[SERVERBUG] out of memory");
        return false;
    }
    r->in.name = s->mbox;
    r->in.uid = uid;
    r->in.offset = off;
    r->in.max_len = max;
    if (!imap__try_submit(s, r, step)) {
        fetch_end(s, "NO", "[UNAVAILABLE] storage unavailable");
        return false;
    }
    return true;
}

/* Parses the current message's structure, reading it in chunks (the parser
 * keeps offsets, not bytes). True when the tree is there. */
static bool fetch_need_tree(imap_session *s)
{
    imap_fetch_job *j = s->job;
    const tern_message_info *m = &j->batch->out.messages[j->bi];
    if (j->tree && j->tree_uid == m->uid)
        return true;
    if (j->parser == NULL || j->tree_uid != m->uid) {
        tern_mime_parser_free(j->parser);
        tern_arena_reset(&j->tree_arena);
        j->tree = NULL;
        j->tree_uid = m->uid;
        j->tree_off = 0;
        j->parser = tern_mime_parser_new(&j->tree_arena, NULL);
        if (!j->parser) {
            fetch_end(s, "NO", "[SERVERBUG] out of memory");
            return false;
        }
    }
    fetch_submit_body(s, m->uid, j->tree_off, BODY_CHUNK, fetch_tree_done);
    return false;
}

static void fetch_tree_done(imap_session *s, tern_store_req *r)
{
    imap_fetch_job *j = s->job;
    if (r->status != TERN_STORE_OK) {
        tern_store_req_free(r);
        fetch_end(s, "NO", "[UNAVAILABLE] message unavailable");
        return;
    }
    size_t n = r->out.body_len;
    uint64_t total = r->out.body_total;
    if (n && tern_mime_parser_feed(j->parser, r->out.body, n) != 0) {
        tern_store_req_free(r);
        fetch_end(s, "NO", "[SERVERBUG] out of memory");
        return;
    }
    tern_store_req_free(r);
    j->tree_off += n;
    if (n == 0 || j->tree_off >= total) {
        j->tree = tern_mime_parser_finish(j->parser);
        tern_mime_parser_free(j->parser);
        j->parser = NULL;
        if (!j->tree) {
            fetch_end(s, "NO", "[SERVERBUG] out of memory");
            return;
        }
    }
    fetch_write(s);
}

/* ENVELOPE alone: the tree of the header block (from the batched header
 * read), not of the whole message. True when it is there. */
static bool fetch_need_envelope(imap_session *s)
{
    imap_fetch_job *j = s->job;
    const tern_message_info *m = &j->batch->out.messages[j->bi];
    if (j->tree && j->tree_uid == m->uid)
        return true;
    if (!fetch_need_header(s))
        return false;
    tern_mime_parser_free(j->parser);
    j->parser = NULL;
    tern_arena_reset(&j->tree_arena);
    j->tree = NULL;
    j->tree_uid = m->uid;
    tern_mime_parser *p = tern_mime_parser_new(&j->tree_arena, NULL);
    if (p && (j->hdr_end == 0 || tern_mime_parser_feed(p, j->hdr, j->hdr_end) == 0))
        j->tree = tern_mime_parser_finish(p);
    tern_mime_parser_free(p);
    if (!j->tree) {
        fetch_end(s, "NO", "[SERVERBUG] out of memory");
        return false;
    }
    return true;
}

static void fetch_range_done(imap_session *s, tern_store_req *r);

/* Reads [start, start+len) of the current message into j->rng, at most
 * `cap` octets. */
static bool fetch_need_range(imap_session *s, uint64_t start, uint64_t len, uint64_t cap)
{
    imap_fetch_job *j = s->job;
    const tern_message_info *m = &j->batch->out.messages[j->bi];
    if (len > cap)
        len = cap;
    if (j->rng_ready && j->rng_uid == m->uid && j->rng_start == start && j->rng_want == len)
        return true;
    if (j->rng_uid != m->uid || j->rng_start != start || j->rng_want != len) {
        j->rng_uid = m->uid;
        j->rng_start = start;
        j->rng_want = len;
        j->rng_len = 0;
        j->rng_ready = false;
        if (j->rng_cap < len) {
            uint8_t *nb = realloc(j->rng, len ? len : 1);
            if (!nb) {
                fetch_end(s, "NO", "[SERVERBUG] out of memory");
                return false;
            }
            j->rng = nb;
            j->rng_cap = len;
        }
    }
    if (j->rng_len >= len) {
        j->rng_ready = true;
        return true;
    }
    size_t want = len - j->rng_len < BODY_CHUNK ? (size_t)(len - j->rng_len) : BODY_CHUNK;
    fetch_submit_body(s, m->uid, start + j->rng_len, want, fetch_range_done);
    return false;
}

static void fetch_range_done(imap_session *s, tern_store_req *r)
{
    imap_fetch_job *j = s->job;
    if (r->status != TERN_STORE_OK) {
        tern_store_req_free(r);
        fetch_end(s, "NO", "[UNAVAILABLE] message unavailable");
        return;
    }
    size_t n = r->out.body_len;
    if (n > j->rng_want - j->rng_len)
        n = (size_t)(j->rng_want - j->rng_len);
    memcpy(j->rng + j->rng_len, r->out.body, n);
    j->rng_len += n;
    if (n == 0)
        j->rng_ready = true; /* the message is shorter than its tree said */
    tern_store_req_free(r);
    fetch_write(s);
}

/* BODY[1.2...] and its .MIME/.HEADER/.TEXT/.HEADER.FIELDS forms, from the
 * tree's offsets. False when it went asynchronous. */
static bool fetch_part_section(imap_session *s, const tern_imap_fetch_att *a,
                               const tern_message_info *m)
{
    imap_fetch_job *j = s->job;
    char sec[TERN_IMAP_MAX_PART_DEPTH * 11 + 1];
    size_t sl = 0;
    for (size_t i = 0; i < a->n_part; i++)
        sl += (size_t)snprintf(sec + sl, sizeof(sec) - sl, "%s%u", i ? "." : "", a->part[i]);
    const tern_mime_part *p = tern_mime_part_by_section(j->tree, sec, sl);
    uint64_t start = 0, end = 0;
    bool fields = false;
    if (p) {
        switch (a->sec) {
        case TERN_IMAP_SEC_ALL:
            start = p->body_offset;
            end = p->body_end;
            break;
        case TERN_IMAP_SEC_MIME:
            start = p->header_offset;
            end = p->body_offset;
            break;
        default:
            if (!(p->flags & TERN_MIME_F_MESSAGE) || !p->children)
                break; /* HEADER/TEXT of a part that is no message: empty */
            start = a->sec == TERN_IMAP_SEC_TEXT ? p->children->body_offset
                                                 : p->children->header_offset;
            end = a->sec == TERN_IMAP_SEC_TEXT ? p->children->body_end
                                               : p->children->body_offset;
            fields = a->sec == TERN_IMAP_SEC_HEADER_FIELDS ||
                     a->sec == TERN_IMAP_SEC_HEADER_FIELDS_NOT;
            break;
        }
    }
    if (end > m->size)
        end = m->size;
    if (start > end)
        start = end;
    if (fields && !fetch_need_range(s, start, end - start, HEADER_MAX))
        return false;
    put_item_sep(s, j);
    if (!p) {
        imap__printf(s, "%s NIL", a->name);
        return true;
    }
    if (fields) {
        tern_buf tmp;
        tern_buf_init(&tmp, 0);
        put_header_fields(s, a, j->rng, j->rng_len, &tmp);
        uint64_t off, len;
        put_literal_head(s, a, tmp.len, &off, &len);
        if (len)
            tern_buf_append(&s->ob, tmp.data + off, (size_t)len);
        tern_buf_free(&tmp);
        return true;
    }
    uint64_t off, len;
    put_literal_head(s, a, end - start, &off, &len);
    j->body_off = start + off;
    j->body_left = len;
    j->streaming = true;
    fetch_stream_next(s);
    return false;
}

/* One section item; returns false when it went asynchronous. */
static bool fetch_section(imap_session *s, const tern_imap_fetch_att *a,
                          const tern_message_info *m)
{
    imap_fetch_job *j = s->job;
    if (a->n_part > 0)
        return fetch_part_section(s, a, m);
    if (a->sec == TERN_IMAP_SEC_ALL) {
        put_item_sep(s, j);
        put_literal_head(s, a, m->size, &j->body_off, &j->body_left);
        j->streaming = true;
        fetch_stream_next(s);
        return false;
    }
    if (!fetch_need_header(s))
        return false;
    put_item_sep(s, j);
    if (a->sec == TERN_IMAP_SEC_TEXT) {
        uint64_t off, len;
        uint64_t total = m->size > j->hdr_end ? m->size - j->hdr_end : 0;
        put_literal_head(s, a, total, &off, &len);
        j->body_off = j->hdr_end + off;
        j->body_left = len;
        j->streaming = true;
        fetch_stream_next(s);
        return false;
    }
    const uint8_t *content = j->hdr;
    size_t clen = j->hdr_end;
    tern_buf tmp;
    tern_buf_init(&tmp, 0);
    if (a->sec == TERN_IMAP_SEC_HEADER_FIELDS || a->sec == TERN_IMAP_SEC_HEADER_FIELDS_NOT) {
        put_header_fields(s, a, j->hdr, j->hdr_end, &tmp);
        content = tmp.data;
        clen = tmp.len;
    }
    uint64_t off, len;
    put_literal_head(s, a, clen, &off, &len);
    if (len)
        tern_buf_append(&s->ob, content + off, (size_t)len);
    tern_buf_free(&tmp);
    return true;
}

/* BINARY[n] and BINARY.SIZE[n] (RFC 3516): the part's body decoded from
 * its transfer encoding, in memory (bounded by imap.max_literal). */
static bool fetch_binary(imap_session *s, const tern_imap_fetch_att *a, const tern_message_info *m)
{
    imap_fetch_job *j = s->job;
    if (a->n_part == 0) {
        /* The whole message is not transfer-decoded. */
        if (a->kind == TERN_IMAP_FA_BINARY_SIZE) {
            put_item_sep(s, j);
            imap__printf(s, "%s %llu", a->name, (unsigned long long)m->size);
            return true;
        }
        return fetch_section(s, a, m);
    }
    char sec[TERN_IMAP_MAX_PART_DEPTH * 11 + 1];
    size_t sl = 0;
    for (size_t i = 0; i < a->n_part; i++)
        sl += (size_t)snprintf(sec + sl, sizeof(sec) - sl, "%s%u", i ? "." : "", a->part[i]);
    const tern_mime_part *p = tern_mime_part_by_section(j->tree, sec, sl);
    if (p == NULL) {
        put_item_sep(s, j);
        imap__printf(s, "%s NIL", a->name);
        return true;
    }
    if (p->encoding == TERN_MIME_ENC_OTHER) {
        j->cte_error = true;
        return true;
    }
    uint64_t start = p->body_offset, end = p->body_end < m->size ? p->body_end : m->size;
    if (start > end)
        start = end;
    if (!fetch_need_range(s, start, end - start, s->rd.max_literal))
        return false;
    tern_mime_part leaf = *p;
    leaf.parent = NULL;
    leaf.children = leaf.last_child = leaf.next = NULL;
    leaf.n_children = 0;
    leaf.header_offset = leaf.body_offset = 0;
    leaf.body_end = leaf.body_size = j->rng_len;
    if (p->flags & (TERN_MIME_F_MULTIPART | TERN_MIME_F_MESSAGE))
        leaf.encoding = TERN_MIME_ENC_7BIT; /* containers are not decoded */
    tern_buf out;
    tern_buf_init(&out, 0);
    if (tern_mime_part_decode(&leaf, j->rng, j->rng_len, &out) != 0) {
        tern_buf_free(&out);
        fetch_end(s, "NO", "[SERVERBUG] out of memory");
        return false;
    }
    put_item_sep(s, j);
    if (a->kind == TERN_IMAP_FA_BINARY_SIZE) {
        imap__printf(s, "%s %zu", a->name, out.len);
    } else {
        uint64_t off = 0, len = out.len;
        if (a->has_partial) {
            off = a->partial_off < out.len ? a->partial_off : out.len;
            len = out.len - off;
            if (len > a->partial_len)
                len = a->partial_len;
        }
        bool nul = len && memchr(out.data + off, '\0', (size_t)len) != NULL;
        if (a->has_partial)
            imap__printf(s, "%s<%llu> %s{%llu}\r\n", a->name, (unsigned long long)a->partial_off,
                         nul ? "~" : "", (unsigned long long)len);
        else
            imap__printf(s, "%s %s{%llu}\r\n", a->name, nul ? "~" : "", (unsigned long long)len);
        if (len)
            tern_buf_append(&s->ob, out.data + off, (size_t)len);
    }
    tern_buf_free(&out);
    return true;
}

/* ---- the writer --------------------------------------------------------- */

static bool was_seen_now(const imap_fetch_job *j, uint32_t uid)
{
    for (size_t i = 0; i < j->n_seen; i++)
        if (j->seen_uids[i] == uid)
            return true;
    return false;
}

static void fetch_write(imap_session *s)
{
    imap_fetch_job *j = s->job;
    while (j->batch && j->bi < j->batch->out.n_messages) {
        const tern_message_info *m = &j->batch->out.messages[j->bi];
        size_t msn = imap__msn_of(s, m->uid);
        bool skip = msn == 0 || (j->f.changedsince && m->modseq <= j->f.changedsince_modseq);
        if (skip) {
            j->bi++;
            j->ai = 0;
            continue;
        }
        if (j->need_tree && !(j->env_only ? fetch_need_envelope(s) : fetch_need_tree(s)))
            return; /* resumes once the structure is parsed */
        if (!j->open) {
            imap__printf(s, "* %zu FETCH (", msn);
            j->open = true;
            j->first_item = true;
            j->seen_now = was_seen_now(j, m->uid);
        }
        while (j->ai < j->f.n) {
            const tern_imap_fetch_att *a = &j->f.atts[j->ai];
            switch (a->kind) {
            case TERN_IMAP_FA_UID:
                put_item_sep(s, j);
                imap__printf(s, "UID %u", m->uid);
                break;
            case TERN_IMAP_FA_FLAGS:
                put_item_sep(s, j);
                imap__printf(s, "FLAGS ");
                imap__put_msg_flags(s, m->uid, m->flags, m->keywords, m->n_keywords);
                break;
            case TERN_IMAP_FA_INTERNALDATE:
                put_item_sep(s, j);
                put_internaldate(s, m->internal_date);
                break;
            case TERN_IMAP_FA_RFC822_SIZE:
                put_item_sep(s, j);
                imap__printf(s, "RFC822.SIZE %llu", (unsigned long long)m->size);
                break;
            case TERN_IMAP_FA_MODSEQ:
                put_item_sep(s, j);
                imap__printf(s, "MODSEQ (%llu)", (unsigned long long)m->modseq);
                break;
            case TERN_IMAP_FA_EMAILID:
                put_item_sep(s, j);
                imap__printf(s, "EMAILID (%s)", m->id ? m->id : "");
                break;
            case TERN_IMAP_FA_THREADID:
                put_item_sep(s, j);
                if (m->thread_id)
                    imap__printf(s, "THREADID (%s)", m->thread_id);
                else
                    imap__printf(s, "THREADID NIL");
                break;
            case TERN_IMAP_FA_ENVELOPE:
                put_item_sep(s, j);
                imap__printf(s, "ENVELOPE ");
                imap__put_envelope(s, &j->tree_arena, j->tree->envelope);
                break;
            case TERN_IMAP_FA_BODYSTRUCTURE:
            case TERN_IMAP_FA_BODY_STRUCT:
                put_item_sep(s, j);
                imap__printf(s, "%s ", a->kind == TERN_IMAP_FA_BODYSTRUCTURE ? "BODYSTRUCTURE"
                                                                          : "BODY");
                imap__put_body(s, &j->tree_arena, j->tree,
                               a->kind == TERN_IMAP_FA_BODYSTRUCTURE);
                break;
            case TERN_IMAP_FA_BINARY_SIZE:
                if (!fetch_binary(s, a, m))
                    return;
                break;
            case TERN_IMAP_FA_SECTION:
                if (a->binary ? !fetch_binary(s, a, m) : !fetch_section(s, a, m))
                    return; /* resumes through a store callback */
                break;
            default:
                break; /* refused at parse time */
            }
            j->ai++;
        }
        if (j->seen_now) {
            bool has_flags = false;
            for (size_t i = 0; i < j->f.n; i++)
                has_flags |= j->f.atts[i].kind == TERN_IMAP_FA_FLAGS;
            if (!has_flags) {
                put_item_sep(s, j);
                imap__printf(s, "FLAGS ");
                imap__put_msg_flags(s, m->uid, m->flags, m->keywords, m->n_keywords);
            }
        }
        imap__printf(s, ")\r\n");
        j->open = false;
        j->bi++;
        j->ai = 0;
        if (out_full(s) && fetch_backpressure(s))
            return;
    }
    if (j->batch) {
        tern_store_req_free(j->batch);
        j->batch = NULL;
    }
    if (j->hb) {
        tern_store_req_free(j->hb);
        j->hb = NULL;
    }
    /* After the last batch the tagged reply follows at once: one write. */
    if (j->next < j->n_todo)
        imap__flush(s);
    fetch_next_batch(s);
}

/* ---- batches ----------------------------------------------------------- */

static void fetch_seen_done(imap_session *s, tern_store_req *r)
{
    imap_fetch_job *j = s->job;
    if (r->status == TERN_STORE_OK) {
        uint64_t lo = UINT64_MAX, hi = 0;
        for (size_t i = 0; i < r->out.n_messages; i++) {
            const tern_message_info *c = &r->out.messages[i];
            for (size_t k = 0; k < j->batch->out.n_messages; k++)
                if (j->batch->out.messages[k].uid == c->uid) {
                    j->batch->out.messages[k].flags |= TERN_FLAG_SEEN;
                    j->batch->out.messages[k].modseq = c->modseq;
                }
            if (c->modseq < lo)
                lo = c->modseq;
            if (c->modseq > hi)
                hi = c->modseq;
        }
        if (hi) {
            /* Told here: a later sync need not repeat it. */
            s->own_lo = lo;
            s->own_hi = hi;
        }
    } else {
        TLOG_WARN(MOD, "event=set_seen_failed session=%s status=%s", s->base.id,
                  tern_store_strerror(r->status));
        j->n_seen = 0;
    }
    tern_store_req_free(r);
    fetch_write(s);
}

static void fetch_batch_done(imap_session *s, tern_store_req *r)
{
    imap_fetch_job *j = s->job;
    if (r->status != TERN_STORE_OK) {
        imap__store_fail(s, r, "FETCH");
        tern_store_req_free(r);
        imap__fetch_free(s);
        return;
    }
    j->batch = r;
    j->bi = 0;
    j->ai = 0;
    j->n_seen = 0;
    if (j->set_seen) {
        size_t n = r->out.n_messages;
        uint32_t *v = realloc(j->seen_uids, (n ? n : 1) * sizeof(*v));
        if (v) {
            j->seen_uids = v;
            for (size_t i = 0; i < n; i++)
                if (!(r->out.messages[i].flags & TERN_FLAG_SEEN) &&
                    imap__msn_of(s, r->out.messages[i].uid))
                    v[j->n_seen++] = r->out.messages[i].uid;
        }
        if (j->n_seen) {
            tern_uid_range *rg = tern_arena_alloc(&s->arena, j->n_seen * sizeof(*rg));
            tern_store_req *q = rg ? imap__req(s, TERN_STORE_SET_FLAGS) : NULL;
            if (q) {
                for (size_t i = 0; i < j->n_seen; i++)
                    rg[i].first = rg[i].last = j->seen_uids[i];
                q->in.name = s->mbox;
                q->in.uids.ranges = rg;
                q->in.uids.n = j->n_seen;
                q->in.flags = TERN_FLAG_SEEN;
                q->in.flags_mode = TERN_FLAGS_ADD;
                s->step = fetch_seen_done;
                s->pending++;
                if (tern_store_submit(s->base.host->store_client, q) == 0)
                    return;
                s->pending--;
                s->step = NULL;
                tern_store_req_free(q);
            }
            j->n_seen = 0;
        }
    }
    fetch_write(s);
}

static void fetch_next_batch(imap_session *s)
{
    imap_fetch_job *j = s->job;
    if (j->next >= j->n_todo) {
        if (j->cte_error)
            fetch_end(s, "NO", "[UNKNOWN-CTE] a part has an encoding BINARY cannot decode");
        else
            fetch_end(s, "OK", "FETCH completed");
        return;
    }
    size_t want = s->cfg->imap.fetch_batch;
    if (want > j->n_todo - j->next)
        want = j->n_todo - j->next;
    tern_uid_range *rg = tern_arena_alloc(&s->arena, want * sizeof(*rg));
    if (!rg) {
        fetch_end(s, "NO", "[SERVERBUG] out of memory");
        return;
    }
    size_t nr = 0;
    for (size_t i = 0; i < want; i++) {
        uint32_t u = j->todo[j->next + i];
        if (nr && rg[nr - 1].last + 1 == u)
            rg[nr - 1].last = u;
        else
            rg[nr].first = rg[nr].last = u, nr++;
    }
    j->next += want;
    tern_store_req *r = imap__req(s, TERN_STORE_FETCH);
    if (!r) {
        fetch_end(s, "NO", "[SERVERBUG] out of memory");
        return;
    }
    r->in.name = s->mbox;
    r->in.uids.ranges = rg;
    r->in.uids.n = nr;
    if (!imap__try_submit(s, r, fetch_batch_done))
        fetch_end(s, "NO", "[UNAVAILABLE] storage unavailable");
}

/* ---- VANISHED (EARLIER) ----------------------------------------------------- */

static bool in_ranges(const tern_uid_range *r, size_t n, uint32_t u)
{
    for (size_t i = 0; i < n; i++)
        if (u >= r[i].first && u <= r[i].last)
            return true;
    return false;
}

static void fetch_vanished_done(imap_session *s, tern_store_req *r)
{
    imap_fetch_job *j = s->job;
    if (r->status == TERN_STORE_OK) {
        size_t k = 0;
        uint32_t *v = r->out.changes.vanished;
        for (size_t i = 0; i < r->out.changes.n_vanished; i++)
            if (in_ranges(j->req_ranges, j->n_req_ranges, v[i]))
                v[k++] = v[i];
        if (k) {
            imap__printf(s, "* VANISHED (EARLIER) ");
            imap__put_uidset(s, v, k);
            imap__printf(s, "\r\n");
        }
    }
    tern_store_req_free(r);
    fetch_next_batch(s);
}

/* ---- the command ------------------------------------------------------------ */

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

void imap__cmd_fetch(imap_session *s, tern_imap_parser *ps)
{
    tern_imap_seqset set;
    tern_uid_set uids;
    if (!tern_imap_sp(ps) || !tern_imap_parse_seqset(ps, &set)) {
        imap__bad(s, ps, "bad sequence set");
        return;
    }
    if (!imap__seq_to_uids(s, &set, s->uid_cmd, &uids)) {
        s->errors++;
        imap__finish(s, "BAD", "No such message");
        return;
    }
    imap_fetch_job *j = calloc(1, sizeof(*j));
    if (!j) {
        imap__finish(s, "NO", "[SERVERBUG] out of memory");
        return;
    }
    s->job = j;
    tern_arena_init(&j->tree_arena, 4096);
    if (!tern_imap_sp(ps) || !tern_imap_fetch_atts(ps, &j->f)) {
        imap__fetch_free(s);
        imap__bad(s, ps, "bad FETCH items");
        return;
    }
    if (j->f.vanished && (!s->uid_cmd || !s->qresync)) {
        imap__fetch_free(s);
        imap__finish(s, "BAD", "VANISHED needs UID FETCH and QRESYNC");
        return;
    }
    /* UID FETCH answers with UID; CHANGEDSINCE with MODSEQ (RFC 7162 3.1.4). */
    bool has_uid = false, has_modseq = false;
    for (size_t i = 0; i < j->f.n; i++) {
        has_uid |= j->f.atts[i].kind == TERN_IMAP_FA_UID;
        has_modseq |= j->f.atts[i].kind == TERN_IMAP_FA_MODSEQ;
        if (j->f.atts[i].kind == TERN_IMAP_FA_SECTION && !j->f.atts[i].peek && !s->readonly)
            j->set_seen = true;
        tern_imap_fa_kind k = j->f.atts[i].kind;
        if (k == TERN_IMAP_FA_ENVELOPE || k == TERN_IMAP_FA_BODYSTRUCTURE ||
            k == TERN_IMAP_FA_BODY_STRUCT || j->f.atts[i].n_part > 0)
            j->need_tree = true;
    }
    if (j->need_tree) {
        j->env_only = true;
        for (size_t i = 0; i < j->f.n; i++)
            if (j->f.atts[i].kind != TERN_IMAP_FA_ENVELOPE &&
                (j->f.atts[i].kind == TERN_IMAP_FA_BODYSTRUCTURE ||
                 j->f.atts[i].kind == TERN_IMAP_FA_BODY_STRUCT || j->f.atts[i].n_part > 0))
                j->env_only = false;
    }
    if (j->f.changedsince || has_modseq)
        s->condstore = true;
    size_t extra = (s->uid_cmd && !has_uid) + (s->condstore && j->f.changedsince && !has_modseq);
    if (extra) {
        tern_imap_fetch_att *na = tern_arena_alloc(&s->arena, (j->f.n + extra) * sizeof(*na));
        if (!na) {
            imap__fetch_free(s);
            imap__finish(s, "NO", "[SERVERBUG] out of memory");
            return;
        }
        size_t k = 0;
        if (s->uid_cmd && !has_uid)
            na[k++].kind = TERN_IMAP_FA_UID;
        memcpy(na + k, j->f.atts, j->f.n * sizeof(*na));
        k += j->f.n;
        if (s->condstore && j->f.changedsince && !has_modseq)
            na[k++].kind = TERN_IMAP_FA_MODSEQ;
        j->f.atts = na;
        j->f.n = k;
    }
    /* The UIDs this session knows that fall in the set, ascending, once each. */
    size_t cap = 0;
    for (size_t i = 0; i < uids.n; i++) {
        uint32_t a = uids.ranges[i].first, b = uids.ranges[i].last;
        size_t lo = 0, hi = s->n_uids;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (s->uids[mid] < a)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (size_t k = lo; k < s->n_uids && s->uids[k] <= b; k++) {
            if (j->n_todo == cap) {
                size_t nc = cap ? cap * 2 : 64;
                uint32_t *nt = realloc(j->todo, nc * sizeof(*nt));
                if (!nt) {
                    imap__fetch_free(s);
                    imap__finish(s, "NO", "[SERVERBUG] out of memory");
                    return;
                }
                j->todo = nt;
                cap = nc;
            }
            j->todo[j->n_todo++] = s->uids[k];
        }
    }
    if (uids.n > 1 && j->n_todo > 1) {
        qsort(j->todo, j->n_todo, sizeof(*j->todo), cmp_u32);
        size_t k = 1;
        for (size_t i = 1; i < j->n_todo; i++)
            if (j->todo[i] != j->todo[k - 1])
                j->todo[k++] = j->todo[i];
        j->n_todo = k;
    }
    if (j->f.vanished) {
        j->req_ranges = (tern_uid_range *)uids.ranges;
        j->n_req_ranges = uids.n;
        tern_store_req *r = imap__req(s, TERN_STORE_CHANGES);
        if (!r) {
            fetch_end(s, "NO", "[SERVERBUG] out of memory");
            return;
        }
        r->in.name = s->mbox;
        r->in.since_modseq = j->f.changedsince_modseq;
        if (!imap__try_submit(s, r, fetch_vanished_done))
            fetch_end(s, "NO", "[UNAVAILABLE] storage unavailable");
        return;
    }
    fetch_next_batch(s);
}
