/* IMAP SORT and THREAD (RFC 5256; DISPLAYFROM/DISPLAYTO of RFC 5957), and
 * their UID forms. The store answers the search, then one FETCH_INDEX
 * request gives every matched message's size, internal date and the header
 * fields the store indexed at append (Date, Subject, From, To, Cc,
 * Message-ID, References/In-Reply-To): no message is read for them. The
 * index keeps address fields RFC 2047-decoded, which can change how a list
 * parses (an encoded "Doe, Jane" display name reads as two addresses), so a
 * message whose indexed From/To/Cc is not plain ASCII or does not parse
 * cleanly has its header block read (FETCH_HEADERS, HEADER_BATCH messages
 * per request) when an address key needs it, and parsed with lib/header.h.
 * Ordering and threading are the pure functions of imap_thread.c.
 * Input: parsed client arguments (untrusted), store answers, message
 * headers and indexed values (untrusted bytes). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/address.h"
#include "lib/header.h"
#include "lib/log.h"
#include "protocols/imap/imap_session_int.h"
#include "protocols/imap/imap_thread.h"

#define MAX_REFS 256 /* msg-ids taken from one References field */

enum { H_DATE, H_SUBJECT, H_FROM, H_TO, H_CC, H_MSGID, H_REFS, H_IRT, H_COUNT };
static const char *const hdr_names[H_COUNT] = {
    "Date", "Subject", "From", "To", "Cc", "Message-ID", "References", "In-Reply-To",
};

typedef struct sort_msg {
    uint32_t uid;
    bool gone;              /* expunged while we worked: left out */
    bool raw;               /* its address fields come from its header (h[]) */
    bool raw_read;          /* ... and that header has been read */
    int64_t arrival;
    uint64_t size;
    int64_t date;           /* sent date: the Date field, else the arrival */
    tern_message_index ixv; /* what the store indexed, strings in the session arena */
    const tern_message_index *ix; /* &ixv once the index answered */
    char *h[H_COUNT];       /* raw values read from the header, when raw */
} sort_msg;

typedef struct sort_state {
    bool thread;
    tern_imap_thread_algo algo;
    tern_imap_sort_crit crit[TERN_IMAP_SORT_MAX];
    size_t n_crit;
    bool need_addresses;    /* a FROM/TO/CC/DISPLAY* key */
    sort_msg *m;
    size_t n;
    size_t bcur;            /* the next message to consider for a batched header read */
    size_t cur;             /* the message whose header is being read alone */
    uint64_t off;
    tern_header_parser *hp;
} sort_state;

static sort_msg *find_msg(sort_state *st, uint32_t uid)
{
    size_t lo = 0, hi = st->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (st->m[mid].uid < uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < st->n && st->m[lo].uid == uid ? &st->m[lo] : NULL;
}

/* First mailbox of an address list: its local part and its RFC 5957
 * display name (the decoded name, else local@domain). */
static void first_address(tern_arena *a, const char *v, const char **mbox, const char **display)
{
    *mbox = *display = "";
    if (!v)
        return;
    for (tern_address *ad = tern_address_list_parse(a, v, strlen(v), TERN_ADDRESS_DECODE, NULL);
         ad; ad = ad->next) {
        if (ad->kind != TERN_ADDRESS_MAILBOX)
            continue;
        *mbox = ad->local ? ad->local : "";
        if (ad->name_decoded && *ad->name_decoded) {
            *display = ad->name_decoded;
        } else if (ad->local && !*ad->local && !ad->domain) {
            *display = ""; /* "<>" */
        } else {
            /* RFC 5957: addr-mailbox "@" addr-host, as ENVELOPE writes them
             * (with its placeholders for a broken address). */
            char *spec = tern_arena_printf(a, "%s@%s", ad->local ? ad->local : "MISSING_MAILBOX",
                                           ad->domain ? ad->domain : "MISSING_DOMAIN");
            *display = spec ? spec : "";
        }
        return;
    }
}

/* Whether an indexed (decoded) address list may not be what the header
 * says: decoding can bring specials (",", "<", quotes) into a display
 * name. Plain ASCII that parses into a whole first mailbox is taken as is;
 * anything else is read from the header. */
static bool address_doubtful(tern_arena *a, const char *v)
{
    if (!v)
        return false;
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if (*p >= 0x80)
            return true;
    for (tern_address *ad = tern_address_list_parse(a, v, strlen(v), 0, NULL); ad; ad = ad->next)
        if (ad->kind == TERN_ADDRESS_MAILBOX)
            return ad->invalid;
    return false;
}

/* The ids of the index's space-separated list, at most MAX_REFS. */
static size_t split_ids(tern_arena *a, const char *v, char ***ids_r)
{
    *ids_r = NULL;
    if (!v)
        return 0;
    size_t n = 1;
    for (const char *p = v; *p; p++)
        n += *p == ' ';
    if (n > MAX_REFS)
        n = MAX_REFS;
    char **ids = tern_arena_alloc(a, n * sizeof(*ids));
    char *copy = tern_arena_strdup(a, v);
    if (!ids || !copy)
        return 0;
    size_t k = 0;
    for (char *save = NULL, *t = strtok_r(copy, " ", &save); t && k < n;
         t = strtok_r(NULL, " ", &save))
        ids[k++] = t;
    *ids_r = ids;
    return k;
}

static const char *addr_value(const sort_msg *m, int h)
{
    if (m->raw)
        return m->h[h];
    if (!m->ix)
        return NULL;
    return h == H_FROM ? m->ix->from : h == H_TO ? m->ix->to : m->ix->cc;
}

static void sort_answer(imap_session *s)
{
    sort_state *st = s->cmd_state;
    tern_arena *a = &s->arena;
    size_t k = 0;
    for (size_t i = 0; i < st->n; i++)
        if (!st->m[i].gone && imap__msn_of(s, st->m[i].uid))
            st->m[k++] = st->m[i];
    st->n = k;
    if (st->thread) {
        tern_imap_thread_msg *t = tern_arena_alloc(a, (k ? k : 1) * sizeof(*t));
        if (!t) {
            imap__finish(s, "NO", "[SERVERBUG] out of memory");
            return;
        }
        for (size_t i = 0; i < k; i++) {
            sort_msg *m = &st->m[i];
            size_t msn = imap__msn_of(s, m->uid);
            t[i].id = s->uid_cmd ? m->uid : (uint32_t)msn;
            t[i].seq = (uint32_t)msn;
            t[i].date = m->date;
            const char *subj = m->ix ? m->ix->subject : NULL;
            t[i].subject = tern_imap_base_subject(a, subj ? subj : "", subj ? strlen(subj) : 0,
                                                  &t[i].refwd);
            if (!t[i].subject)
                t[i].subject = "";
            t[i].message_id = m->ix && m->ix->message_id && *m->ix->message_id
                                  ? m->ix->message_id : NULL;
            /* The index keeps References' ids, then In-Reply-To's first id
             * when References lacks it (storage/index.c). */
            t[i].refs = NULL;
            t[i].n_refs = m->ix ? split_ids(a, m->ix->refs, &t[i].refs) : 0;
        }
        tern_buf out;
        tern_buf_init(&out, 0);
        int rc = tern_imap_thread(a, st->algo, t, k, &out);
        if (rc != 0) {
            tern_buf_free(&out);
            imap__finish(s, "NO", "[SERVERBUG] out of memory");
            return;
        }
        imap__printf(s, "* THREAD%s", out.len ? " " : "");
        for (size_t off = 0; off < out.len;) {
            size_t chunk = out.len - off < 32768 ? out.len - off : 32768;
            imap__printf(s, "%.*s", (int)chunk, (const char *)out.data + off);
            off += chunk;
            if (s->ob.len > 64 * 1024)
                imap__flush(s);
        }
        imap__printf(s, "\r\n");
        tern_buf_free(&out);
        imap__finish(s, "OK", "%sTHREAD completed", s->uid_cmd ? "UID " : "");
        return;
    }
    tern_imap_sort_msg *v = tern_arena_alloc(a, (k ? k : 1) * sizeof(*v));
    if (!v) {
        imap__finish(s, "NO", "[SERVERBUG] out of memory");
        return;
    }
    for (size_t i = 0; i < k; i++) {
        sort_msg *m = &st->m[i];
        size_t msn = imap__msn_of(s, m->uid);
        v[i].id = s->uid_cmd ? m->uid : (uint32_t)msn;
        v[i].seq = (uint32_t)msn;
        v[i].arrival = m->arrival;
        v[i].size = m->size;
        v[i].date = m->date;
        const char *subj = m->ix ? m->ix->subject : NULL;
        v[i].subject = "";
        if (subj) {
            const char *b = tern_imap_base_subject(a, subj, strlen(subj), NULL);
            v[i].subject = b ? b : "";
        }
        first_address(a, addr_value(m, H_FROM), &v[i].from, &v[i].display_from);
        first_address(a, addr_value(m, H_TO), &v[i].to, &v[i].display_to);
        const char *unused;
        first_address(a, addr_value(m, H_CC), &v[i].cc, &unused);
    }
    tern_imap_sort(v, k, st->crit, st->n_crit);
    imap__printf(s, "* SORT");
    for (size_t i = 0; i < k; i++) {
        imap__printf(s, " %u", v[i].id);
        if (s->ob.len > 64 * 1024)
            imap__flush(s);
    }
    imap__printf(s, "\r\n");
    imap__finish(s, "OK", "%sSORT completed", s->uid_cmd ? "UID " : "");
}

/* ---- header fields of the messages whose index is not enough ------------- */

static void header_next(imap_session *s);
static void raw_next(imap_session *s);

/* The first occurrence of each field counts, as for ENVELOPE. A NUL
 * inside a value cuts it there: these are used as texts. */
static void keep_field(imap_session *s, sort_msg *m, const tern_header_field *f)
{
    for (size_t k = 0; k < H_COUNT; k++) {
        if (!m->h[k] && tern_header_name_is(f, hdr_names[k])) {
            m->h[k] = tern_arena_strndup(&s->arena, f->value, f->value_len);
            return;
        }
    }
}

/* Feeds bytes to the header parser; true once the header has ended. */
static bool header_feed(imap_session *s, sort_msg *m, const uint8_t *p, size_t n)
{
    sort_state *st = s->cmd_state;
    tern_header_field f;
    while (n > 0) {
        size_t used = 0;
        tern_header_event ev = tern_header_parser_feed(st->hp, p, n, &used, &f);
        p += used;
        n -= used;
        if (ev == TERN_HEADER_FIELD)
            keep_field(s, m, &f);
        else if (ev == TERN_HEADER_END)
            return true;
        else
            break; /* TERN_HEADER_MORE: all of this chunk was used */
    }
    return false;
}

static void header_feed_end(imap_session *s, sort_msg *m)
{
    sort_state *st = s->cmd_state;
    tern_header_field f;
    while (tern_header_parser_finish(st->hp, &f) == TERN_HEADER_FIELD)
        keep_field(s, m, &f);
}

static void raw_batch_done(imap_session *s, tern_store_req *r)
{
    sort_state *st = s->cmd_state;
    /* A failed batch leaves its messages to be read alone, which reports. */
    for (size_t i = 0; r->status == TERN_STORE_OK && i < r->out.n_headers; i++) {
        const tern_message_header *h = &r->out.headers[i];
        sort_msg *m = find_msg(st, h->uid);
        if (!m || !m->raw || !h->complete)
            continue;
        tern_header_parser_init(st->hp, NULL);
        if (!header_feed(s, m, h->data, h->len))
            header_feed_end(s, m);
        m->raw_read = true;
    }
    tern_store_req_free(r);
    raw_next(s);
}

/* The doubtful messages' header blocks, HEADER_BATCH per store request. */
static void raw_next(imap_session *s)
{
    sort_state *st = s->cmd_state;
    tern_uid_range *rg = NULL;
    size_t nr = 0, taken = 0;
    for (; st->bcur < st->n && taken < HEADER_BATCH; st->bcur++) {
        sort_msg *m = &st->m[st->bcur];
        if (m->gone || !m->raw)
            continue;
        if (!rg && !(rg = tern_arena_alloc(&s->arena, HEADER_BATCH * sizeof(*rg)))) {
            imap__finish(s, "NO", "[SERVERBUG] out of memory");
            return;
        }
        if (nr && rg[nr - 1].last + 1 == m->uid)
            rg[nr - 1].last = m->uid;
        else
            rg[nr].first = rg[nr].last = m->uid, nr++;
        taken++;
    }
    if (taken == 0) {
        st->cur = 0;
        st->off = 0;
        header_next(s);
        return;
    }
    tern_store_req *r = imap__req(s, TERN_STORE_FETCH_HEADERS);
    if (r) {
        r->in.name = s->mbox;
        r->in.uids.ranges = rg;
        r->in.uids.n = nr;
        r->in.max_len = TERN_STORE_HEADERS_EACH_MAX;
    }
    imap__submit(s, r, raw_batch_done);
}

static void header_chunk_done(imap_session *s, tern_store_req *r)
{
    sort_state *st = s->cmd_state;
    sort_msg *m = &st->m[st->cur];
    if (r->status == TERN_STORE_ENOTFOUND) {
        m->gone = true; /* expunged by another session meanwhile */
        tern_store_req_free(r);
        st->cur++;
        st->off = 0;
        header_next(s);
        return;
    }
    if (r->status != TERN_STORE_OK) {
        imap__store_fail(s, r, st->thread ? "THREAD" : "SORT");
        tern_store_req_free(r);
        return;
    }
    bool done = header_feed(s, m, r->out.body, r->out.body_len);
    st->off += r->out.body_len;
    bool at_end = r->out.body_len == 0 || st->off >= r->out.body_total;
    tern_store_req_free(r);
    if (!done && at_end) {
        header_feed_end(s, m);
        done = true;
    }
    if (done) {
        m->raw_read = true;
        st->cur++;
        st->off = 0;
    }
    header_next(s);
}

/* A header the batch could not give whole (past its bound), read alone. */
static void header_next(imap_session *s)
{
    sort_state *st = s->cmd_state;
    while (st->cur < st->n &&
           (st->m[st->cur].gone || !st->m[st->cur].raw || st->m[st->cur].raw_read))
        st->cur++;
    if (st->cur == st->n) {
        sort_answer(s);
        return;
    }
    if (st->off == 0)
        tern_header_parser_init(st->hp, NULL);
    tern_store_req *r = imap__req(s, TERN_STORE_FETCH_BODY);
    if (r) {
        r->in.name = s->mbox;
        r->in.uid = st->m[st->cur].uid;
        r->in.offset = st->off;
        r->in.max_len = st->off == 0 ? HEADER_FIRST_READ : BODY_CHUNK;
    }
    imap__submit(s, r, header_chunk_done);
}

/* ---- the index, then the doubtful headers --------------------------------- */

static char *adup(tern_arena *a, const char *v)
{
    return v ? tern_arena_strdup(a, v) : NULL;
}

static void index_done(imap_session *s, tern_store_req *r)
{
    sort_state *st = s->cmd_state;
    if (r->status != TERN_STORE_OK) {
        imap__store_fail(s, r, st->thread ? "THREAD" : "SORT");
        tern_store_req_free(r);
        return;
    }
    tern_arena *a = &s->arena;
    for (size_t i = 0; i < st->n; i++)
        st->m[i].gone = true;
    for (size_t i = 0; i < r->out.n_index; i++) {
        const tern_message_index *x = &r->out.index[i];
        sort_msg *m = find_msg(st, x->uid);
        if (!m)
            continue;
        m->gone = false;
        m->arrival = x->internal_date;
        m->size = x->size;
        m->date = x->hdr_date ? x->hdr_date : x->internal_date;
        m->ixv = *x;
        m->ixv.subject = adup(a, x->subject);
        m->ixv.from = adup(a, x->from);
        m->ixv.to = adup(a, x->to);
        m->ixv.cc = adup(a, x->cc);
        m->ixv.message_id = adup(a, x->message_id);
        m->ixv.in_reply_to = adup(a, x->in_reply_to);
        m->ixv.refs = adup(a, x->refs);
        m->ix = &m->ixv;
    }
    tern_store_req_free(r);
    if (!st->need_addresses) {
        sort_answer(s);
        return;
    }
    size_t doubtful = 0;
    for (size_t i = 0; i < st->n; i++) {
        sort_msg *m = &st->m[i];
        if (m->gone)
            continue;
        m->raw = address_doubtful(a, m->ix->from) || address_doubtful(a, m->ix->to) ||
                 address_doubtful(a, m->ix->cc);
        doubtful += m->raw;
    }
    if (doubtful == 0) {
        sort_answer(s);
        return;
    }
    st->hp = tern_arena_alloc(a, sizeof(*st->hp));
    if (!st->hp) {
        imap__finish(s, "NO", "[SERVERBUG] out of memory");
        return;
    }
    st->bcur = 0;
    raw_next(s);
}

static void search_done(imap_session *s, tern_store_req *r)
{
    sort_state *st = s->cmd_state;
    if (r->status != TERN_STORE_OK) {
        imap__store_fail(s, r, st->thread ? "THREAD" : "SORT");
        tern_store_req_free(r);
        return;
    }
    uint32_t *v = r->out.uids;
    size_t n = imap__known_uids(s, v, r->out.n_uids);
    st->m = tern_arena_alloc(&s->arena, (n ? n : 1) * sizeof(*st->m));
    tern_uid_range *ranges = tern_arena_alloc(&s->arena, (n ? n : 1) * sizeof(*ranges));
    if (!st->m || !ranges) {
        tern_store_req_free(r);
        imap__finish(s, "NO", "[SERVERBUG] out of memory");
        return;
    }
    size_t nr = 0;
    for (size_t i = 0; i < n; i++) {
        memset(&st->m[i], 0, sizeof(st->m[i]));
        st->m[i].uid = v[i];
        if (nr && ranges[nr - 1].last + 1 == v[i])
            ranges[nr - 1].last = v[i];
        else
            ranges[nr].first = ranges[nr].last = v[i], nr++;
    }
    st->n = n;
    tern_store_req_free(r);
    if (n == 0) {
        sort_answer(s);
        return;
    }
    tern_store_req *f = imap__req(s, TERN_STORE_FETCH_INDEX);
    if (f) {
        f->in.name = s->mbox;
        f->in.uids.ranges = ranges;
        f->in.uids.n = nr;
    }
    imap__submit(s, f, index_done);
}

static bool needs_addresses(const sort_state *st)
{
    for (size_t i = 0; !st->thread && i < st->n_crit; i++)
        switch (st->crit[i].key) {
        case TERN_IMAP_SORT_CC: case TERN_IMAP_SORT_FROM: case TERN_IMAP_SORT_TO:
        case TERN_IMAP_SORT_DISPLAYFROM: case TERN_IMAP_SORT_DISPLAYTO:
            return true;
        default:
            break;
        }
    return false;
}

/* SORT SP (criteria) SP charset SP search-keys
 * THREAD SP algorithm SP charset SP search-keys */
void imap__cmd_sort(imap_session *s, tern_imap_parser *ps)
{
    sort_state *st = tern_arena_alloc(&s->arena, sizeof(*st));
    if (!st) {
        imap__finish(s, "NO", "[SERVERBUG] out of memory");
        return;
    }
    memset(st, 0, sizeof(*st));
    st->thread = strcmp(s->cmd, "THREAD") == 0;
    if (!tern_imap_sp(ps)) {
        imap__bad(s, ps, st->thread ? "bad THREAD" : "bad SORT");
        return;
    }
    if (st->thread) {
        if (tern_imap_keyword(ps, "ORDEREDSUBJECT"))
            st->algo = TERN_IMAP_THREAD_ORDEREDSUBJECT;
        else if (tern_imap_keyword(ps, "REFERENCES"))
            st->algo = TERN_IMAP_THREAD_REFERENCES;
        else {
            imap__bad(s, ps, "unknown threading algorithm");
            return;
        }
    } else if (!tern_imap_sort_criteria(ps, st->crit, &st->n_crit)) {
        imap__bad(s, ps, "bad sort criteria");
        return;
    }
    char *charset;
    if (!tern_imap_sp(ps) || !tern_imap_astring(ps, &charset, NULL) || !tern_imap_sp(ps)) {
        imap__bad(s, ps, "expected a charset and search keys");
        return;
    }
    tern_imap_seqmap map = imap__seqmap_proto;
    map.ctx = s;
    tern_imap_search_opts o;
    memset(&o, 0, sizeof(o));
    tern_search *tree;
    if (!tern_imap_search_keys(ps, &map, &o, &tree)) {
        imap__bad(s, ps, "bad search keys");
        return;
    }
    if (strcasecmp(charset, "UTF-8") != 0 && strcasecmp(charset, "US-ASCII") != 0) {
        imap__finish(s, "NO", "[BADCHARSET (US-ASCII UTF-8)] unsupported charset");
        return;
    }
    st->need_addresses = needs_addresses(st);
    s->cmd_state = st;
    tern_store_req *r = imap__req(s, TERN_STORE_SEARCH);
    if (r) {
        r->in.name = s->mbox;
        r->in.search = tree;
    }
    imap__submit(s, r, search_done);
}
