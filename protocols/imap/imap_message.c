/* IMAP message commands on the selected mailbox: SEARCH (ESEARCH, SEARCHRES),
 * STORE (.SILENT, UNCHANGEDSINCE), COPY and MOVE (UIDPLUS COPYUID),
 * EXPUNGE, UID EXPUNGE and CLOSE. Message numbers are turned into UIDs
 * with the session's map before the store is asked.
 * Input: parsed client arguments (untrusted values), store answers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/log.h"
#include "protocols/imap/imap_session_int.h"

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* A sequence set argument of the current command, as UIDs. Sends BAD and
 * returns false when it is malformed or names a message that is not there. */
static bool set_arg(imap_session *s, tern_imap_parser *ps, tern_uid_set *out)
{
    tern_imap_seqset set;
    if (!tern_imap_sp(ps) || !tern_imap_parse_seqset(ps, &set)) {
        imap__bad(s, ps, "bad sequence set");
        return false;
    }
    if (!imap__seq_to_uids(s, &set, s->uid_cmd, out)) {
        s->errors++;
        imap__finish(s, "BAD", "No such message");
        return false;
    }
    return true;
}

/* ---- SEARCH -------------------------------------------------------------- */

typedef struct search_state {
    tern_imap_search_opts o;
    uint32_t *uids;          /* the matches, ascending, while their modseqs are read */
    size_t n_uids;
} search_state;

/* The answer for the UIDs v[0..n) (ascending; modified in place). */
static void search_answer(imap_session *s, uint32_t *v, size_t n, uint64_t modseq)
{
    search_state *st = s->cmd_state;
    if (st->o.ret_save) {
        /* RFC 5182: '$' is kept as UIDs, whatever the command numbered. */
        free(s->saved);
        s->saved = NULL;
        s->n_saved = 0;
        if (n) {
            s->saved = malloc(n * sizeof(*s->saved));
            if (s->saved) {
                size_t k = 0;
                for (size_t i = 0; i < n; i++) {
                    if (k && s->saved[k - 1].last + 1 == v[i])
                        s->saved[k - 1].last = v[i];
                    else
                        s->saved[k].first = s->saved[k].last = v[i], k++;
                }
                s->n_saved = k;
            }
        }
    }
    if (!s->uid_cmd) {
        for (size_t i = 0; i < n; i++)
            v[i] = (uint32_t)imap__msn_of(s, v[i]);
    }
    if (st->o.esearch) {
        bool only_save = st->o.ret_save && !st->o.ret_min && !st->o.ret_max &&
                         !st->o.ret_all && !st->o.ret_count;
        if (!only_save) {
            imap__printf(s, "* ESEARCH (TAG ");
            imap__put_string(s, s->tag, strlen(s->tag));
            imap__printf(s, ")%s", s->uid_cmd ? " UID" : "");
            if (st->o.ret_min && n)
                imap__printf(s, " MIN %u", v[0]);
            if (st->o.ret_max && n)
                imap__printf(s, " MAX %u", v[n - 1]);
            if (st->o.ret_count)
                imap__printf(s, " COUNT %zu", n);
            if (st->o.ret_all && n) {
                imap__printf(s, " ALL ");
                imap__put_uidset(s, v, n);
            }
            if (st->o.modseq && n)
                imap__printf(s, " MODSEQ %llu", (unsigned long long)modseq);
            imap__printf(s, "\r\n");
        }
    } else {
        imap__printf(s, "* SEARCH");
        for (size_t i = 0; i < n; i++) {
            imap__printf(s, " %u", v[i]);
            if (s->ob.len > 64 * 1024)
                imap__flush(s);
        }
        if (st->o.modseq && n)
            imap__printf(s, " (MODSEQ %llu)", (unsigned long long)modseq);
        imap__printf(s, "\r\n");
    }
    imap__finish(s, "OK", "SEARCH completed");
}

/* RFC 7162 3.1.5: the MODSEQ of the answer is the highest of the matched
 * messages', read with one FETCH of their metadata. */
static void search_modseq_done(imap_session *s, tern_store_req *r)
{
    search_state *st = s->cmd_state;
    if (r->status != TERN_STORE_OK) {
        imap__store_fail(s, r, "SEARCH");
        tern_store_req_free(r);
        return;
    }
    uint64_t hi = 0;
    for (size_t i = 0; i < r->out.n_messages; i++)
        if (r->out.messages[i].modseq > hi)
            hi = r->out.messages[i].modseq;
    tern_store_req_free(r);
    search_answer(s, st->uids, st->n_uids, hi);
}

size_t imap__known_uids(const imap_session *s, uint32_t *v, size_t n)
{
    qsort(v, n, sizeof(*v), cmp_u32);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (imap__msn_of(s, v[i]))
            v[k++] = v[i];
    return k;
}

static void search_done(imap_session *s, tern_store_req *r)
{
    search_state *st = s->cmd_state;
    if (r->status != TERN_STORE_OK) {
        imap__store_fail(s, r, "SEARCH");
        tern_store_req_free(r);
        return;
    }
    uint32_t *v = r->out.uids;
    size_t n = imap__known_uids(s, v, r->out.n_uids);
    if (!st->o.modseq || n == 0) {
        search_answer(s, v, n, 0);
        tern_store_req_free(r);
        return;
    }
    /* Copied to the command's arena: a request is not freed for us when the
     * connection closes while the next one is out. */
    st->uids = tern_arena_alloc(&s->arena, n * sizeof(*st->uids));
    tern_uid_range *ranges = tern_arena_alloc(&s->arena, n * sizeof(*ranges));
    if (!st->uids || !ranges) {
        tern_store_req_free(r);
        imap__finish(s, "NO", "[SERVERBUG] out of memory");
        return;
    }
    memcpy(st->uids, v, n * sizeof(*v));
    st->n_uids = n;
    tern_store_req_free(r);
    size_t nr = 0;
    for (size_t i = 0; i < n; i++) {
        if (nr && ranges[nr - 1].last + 1 == st->uids[i])
            ranges[nr - 1].last = st->uids[i];
        else
            ranges[nr].first = ranges[nr].last = st->uids[i], nr++;
    }
    tern_store_req *f = imap__req(s, TERN_STORE_FETCH);
    if (f) {
        f->in.name = s->mbox;
        f->in.uids.ranges = ranges;
        f->in.uids.n = nr;
    }
    imap__submit(s, f, search_modseq_done);
}

void imap__cmd_search(imap_session *s, tern_imap_parser *ps)
{
    search_state *st = tern_arena_alloc(&s->arena, sizeof(*st));
    if (st)
        memset(st, 0, sizeof(*st));
    tern_imap_seqmap map = imap__seqmap_proto;
    map.ctx = s;
    tern_search *tree;
    if (!st || !tern_imap_sp(ps) || !tern_imap_search(ps, &map, &st->o, &tree)) {
        imap__bad(s, ps, "bad SEARCH");
        return;
    }
    if (st->o.charset && strcasecmp(st->o.charset, "UTF-8") != 0 &&
        strcasecmp(st->o.charset, "US-ASCII") != 0) {
        imap__finish(s, "NO", "[BADCHARSET (US-ASCII UTF-8)] unsupported charset");
        return;
    }
    if (st->o.modseq)
        s->condstore = true; /* RFC 7162 3.1: a MODSEQ search enables CONDSTORE */
    s->cmd_state = st;
    tern_store_req *r = imap__req(s, TERN_STORE_SEARCH);
    if (r) {
        r->in.name = s->mbox;
        r->in.search = tree;
    }
    imap__submit(s, r, search_done);
}

/* ---- STORE ---------------------------------------------------------------- */

typedef struct store_state {
    bool silent;
    bool unchangedsince;
    tern_uid_set uids;       /* the set asked */
    uint32_t *failed;        /* UNCHANGEDSINCE failures, ascending */
    size_t n_failed;
    char reply[400];         /* the tagged reply, sent after the FETCH answers */
} store_state;

static bool u32_in(const uint32_t *v, size_t n, uint32_t x)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && v[lo] == x;
}

/* RFC 9051 6.4.6: without .SILENT every message of the set gets its flags,
 * changed or not (those that failed UNCHANGEDSINCE excepted). */
static void store_flags_done(imap_session *s, tern_store_req *r)
{
    store_state *st = s->cmd_state;
    if (r->status == TERN_STORE_OK) {
        for (size_t i = 0; i < r->out.n_messages; i++) {
            const tern_message_info *m = &r->out.messages[i];
            size_t msn = imap__msn_of(s, m->uid);
            if (!msn || u32_in(st->failed, st->n_failed, m->uid))
                continue;
            imap__printf(s, "* %zu FETCH (", msn);
            if (s->uid_cmd || s->qresync)
                imap__printf(s, "UID %u ", m->uid);
            imap__printf(s, "FLAGS ");
            imap__put_msg_flags(s, m->uid, m->flags, m->keywords, m->n_keywords);
            if (s->condstore)
                imap__printf(s, " MODSEQ (%llu)", (unsigned long long)m->modseq);
            imap__printf(s, ")\r\n");
            if (s->ob.len > 64 * 1024)
                imap__flush(s);
        }
    }
    tern_store_req_free(r);
    imap__finish(s, "OK", "%s", st->reply);
}

static void store_done(imap_session *s, tern_store_req *r)
{
    store_state *st = s->cmd_state;
    if (r->status != TERN_STORE_OK) {
        imap__store_fail(s, r, "STORE");
        tern_store_req_free(r);
        return;
    }
    uint64_t lo = UINT64_MAX, hi = 0;
    for (size_t i = 0; i < r->out.n_messages; i++) {
        const tern_message_info *m = &r->out.messages[i];
        if (m->modseq < lo)
            lo = m->modseq;
        if (m->modseq > hi)
            hi = m->modseq;
        size_t msn = imap__msn_of(s, m->uid);
        if (!msn || !st->silent || !st->unchangedsince)
            continue; /* non-silent answers come from store_flags_done */
        imap__printf(s, "* %zu FETCH (", msn);
        if (s->uid_cmd || s->qresync)
            imap__printf(s, "UID %u ", m->uid);
        if (!st->silent) {
            imap__printf(s, "FLAGS ");
            imap__put_msg_flags(s, m->uid, m->flags, m->keywords, m->n_keywords);
        }
        if (s->condstore)
            imap__printf(s, "%sMODSEQ (%llu)", st->silent ? "" : " ",
                         (unsigned long long)m->modseq);
        imap__printf(s, ")\r\n");
    }
    if (hi) {
        s->own_lo = lo;
        s->own_hi = hi;
    }
    if (r->out.n_uids) {
        uint32_t *v = r->out.uids;
        size_t n = r->out.n_uids, k = 0;
        qsort(v, n, sizeof(*v), cmp_u32);
        st->failed = tern_arena_alloc(&s->arena, n * sizeof(*st->failed));
        if (st->failed) {
            memcpy(st->failed, v, n * sizeof(*v));
            st->n_failed = n;
        }
        if (!s->uid_cmd) {
            for (size_t i = 0; i < n; i++) {
                size_t msn = imap__msn_of(s, v[i]);
                if (msn)
                    v[k++] = (uint32_t)msn;
            }
            n = k;
        }
        char set[300];
        size_t save = s->ob.len;
        imap__put_uidset(s, v, n);
        snprintf(set, sizeof(set), "%.*s", (int)(s->ob.len - save), s->ob.data + save);
        s->ob.len = save;
        tern_store_req_free(r);
        snprintf(st->reply, sizeof(st->reply), "[MODIFIED %s] Conditional STORE failed", set);
    } else {
        tern_store_req_free(r);
        snprintf(st->reply, sizeof(st->reply), "STORE completed");
    }
    if (st->silent) {
        imap__finish(s, "OK", "%s", st->reply);
        return;
    }
    tern_store_req *q = imap__req(s, TERN_STORE_FETCH);
    if (q) {
        q->in.name = s->mbox;
        q->in.uids = st->uids;
    }
    imap__submit(s, q, store_flags_done);
}

void imap__cmd_store(imap_session *s, tern_imap_parser *ps)
{
    store_state *st = tern_arena_alloc(&s->arena, sizeof(*st));
    tern_uid_set uids;
    if (!st || !set_arg(s, ps, &uids))
        return;
    uint64_t unchanged = 0;
    if (!tern_imap_sp(ps)) {
        imap__bad(s, ps, "bad STORE");
        return;
    }
    if (tern_imap_peek(ps, '(')) {
        tern_imap_open(ps);
        if (!tern_imap_keyword(ps, "UNCHANGEDSINCE") || !tern_imap_sp(ps) ||
            !tern_imap_number(ps, &unchanged, INT64_MAX) || !tern_imap_close(ps) ||
            !tern_imap_sp(ps)) {
            imap__bad(s, ps, "bad STORE modifier");
            return;
        }
        st->unchangedsince = true;
        s->condstore = true;
    }
    tern_flags_mode mode = TERN_FLAGS_REPLACE;
    if (tern_imap_char(ps, '+'))
        mode = TERN_FLAGS_ADD;
    else if (tern_imap_char(ps, '-'))
        mode = TERN_FLAGS_REMOVE;
    tern_imap_slice item;
    if (!tern_imap_atom(ps, &item, NULL)) {
        imap__bad(s, ps, "bad STORE item");
        return;
    }
    if (item.len == 12 && strncasecmp(item.p, "FLAGS.SILENT", 12) == 0)
        st->silent = true;
    else if (!(item.len == 5 && strncasecmp(item.p, "FLAGS", 5) == 0)) {
        imap__finish(s, "BAD", "STORE item must be FLAGS or FLAGS.SILENT");
        return;
    }
    tern_imap_flags fl;
    if (!tern_imap_sp(ps) || !tern_imap_flag_list(ps, &fl, true) || !tern_imap_at_end(ps)) {
        imap__bad(s, ps, "bad flag list");
        return;
    }
    if (s->readonly) {
        imap__finish(s, "NO", "[READ-ONLY] mailbox is read-only");
        return;
    }
    if (uids.n == 0) {
        imap__finish(s, "OK", "STORE completed");
        return;
    }
    st->uids = uids;
    s->cmd_state = st;
    tern_store_req *r = imap__req(s, TERN_STORE_SET_FLAGS);
    if (r) {
        r->in.name = s->mbox;
        r->in.uids = uids;
        r->in.flags = fl.flags;
        r->in.keywords.names = fl.keywords;
        r->in.keywords.n = fl.n_keywords;
        r->in.flags_mode = mode;
        /* store.h has 0 for "no condition"; UNCHANGEDSINCE 0 (RFC 7162 3.1.3: fails for
         * every message) becomes 1, which only a never-changed message passes. */
        r->in.unchanged_since = st->unchangedsince ? (unchanged ? unchanged : 1) : 0;
    }
    imap__submit(s, r, store_done);
}

/* ---- COPY / MOVE --------------------------------------------------------- */

static void copy_done(imap_session *s, tern_store_req *r)
{
    bool move = strcmp(s->cmd, "MOVE") == 0;
    if (r->status != TERN_STORE_OK) {
        if (r->status == TERN_STORE_ENOTFOUND)
            imap__finish(s, "NO", "[TRYCREATE] no such mailbox");
        else
            imap__store_fail(s, r, s->cmd);
        tern_store_req_free(r);
        return;
    }
    size_t n = r->out.n_copied;
    char code[600] = "";
    if (n) {
        size_t save = s->ob.len;
        imap__printf(s, "COPYUID %u ", r->out.dst_uidvalidity);
        imap__put_uidset(s, r->out.src_uids, n);
        imap__printf(s, " ");
        imap__put_uidset(s, r->out.dst_uids, n);
        if (s->ob.len - save < sizeof(code) - 3)
            snprintf(code, sizeof(code), "[%.*s] ", (int)(s->ob.len - save), s->ob.data + save);
        s->ob.len = save;
    }
    if (move) {
        if (code[0])
            imap__printf(s, "* OK %sMoved\r\n", code);
        uint32_t *src = r->out.src_uids;
        qsort(src, n, sizeof(*src), cmp_u32);
        imap__report_expunged(s, src, n);
        tern_store_req_free(r);
        imap__finish(s, "OK", "MOVE completed");
        return;
    }
    tern_store_req_free(r);
    imap__finish(s, "OK", "%sCOPY completed", code);
}

void imap__cmd_copy(imap_session *s, tern_imap_parser *ps)
{
    tern_uid_set uids;
    if (!set_arg(s, ps, &uids))
        return;
    char *target = imap__sp_mailbox(s, ps);
    if (!target)
        return;
    if (!tern_imap_at_end(ps)) {
        imap__bad(s, ps, "junk after mailbox name");
        return;
    }
    bool move = strcmp(s->cmd, "MOVE") == 0;
    if (move && s->readonly) {
        imap__finish(s, "NO", "[READ-ONLY] mailbox is read-only");
        return;
    }
    if (uids.n == 0) {
        imap__finish(s, "OK", "%s completed", s->cmd);
        return;
    }
    if (strcmp(target, s->mbox) == 0 && move) {
        imap__finish(s, "NO", "[CANNOT] source and target are the same mailbox");
        return;
    }
    tern_store_req *r = imap__req(s, move ? TERN_STORE_MOVE : TERN_STORE_COPY);
    if (r) {
        r->in.name = s->mbox;
        r->in.new_name = target;
        r->in.uids = uids;
    }
    if (strcmp(target, s->mbox) == 0)
        s->changed = true;
    imap__submit(s, r, copy_done);
}

/* ---- EXPUNGE, UID EXPUNGE, CLOSE --------------------------------------- */

static void expunge_done(imap_session *s, tern_store_req *r)
{
    if (r->status != TERN_STORE_OK) {
        imap__store_fail(s, r, "EXPUNGE");
        tern_store_req_free(r);
        return;
    }
    uint32_t *v = r->out.uids;
    qsort(v, r->out.n_uids, sizeof(*v), cmp_u32);
    imap__report_expunged(s, v, r->out.n_uids);
    if (s->condstore && r->out.highest_modseq > s->modseq && !s->changed)
        s->modseq = r->out.highest_modseq;
    tern_store_req_free(r);
    imap__finish(s, "OK", "%s completed", s->cmd);
}

void imap__cmd_expunge(imap_session *s, tern_imap_parser *ps)
{
    tern_uid_set uids = {0};
    if (s->uid_cmd && !set_arg(s, ps, &uids))
        return;
    if (!tern_imap_at_end(ps)) {
        imap__bad(s, ps, "junk after EXPUNGE");
        return;
    }
    if (s->readonly) {
        imap__finish(s, "NO", "[READ-ONLY] mailbox is read-only");
        return;
    }
    if (s->uid_cmd && uids.n == 0) {
        /* An empty set must not become "every deleted message". */
        imap__finish(s, "OK", "EXPUNGE completed");
        return;
    }
    tern_store_req *r = imap__req(s, TERN_STORE_EXPUNGE);
    if (r) {
        r->in.name = s->mbox;
        r->in.uids = uids;
    }
    imap__submit(s, r, expunge_done);
}

static void close_done(imap_session *s, tern_store_req *r)
{
    if (r->status != TERN_STORE_OK)
        TLOG_WARN(MOD, "event=close_expunge_failed session=%s status=%s", s->base.id,
                  tern_store_strerror(r->status));
    tern_store_req_free(r);
    imap__unselect(s);
    imap__finish(s, "OK", "CLOSE completed");
}

void imap__cmd_close(imap_session *s, tern_imap_parser *ps)
{
    if (!tern_imap_at_end(ps)) {
        imap__bad(s, ps, "CLOSE takes no arguments");
        return;
    }
    if (s->readonly) {
        imap__unselect(s);
        imap__finish(s, "OK", "CLOSE completed");
        return;
    }
    /* RFC 9051 6.4.1: expunge silently, then leave the selected state. */
    tern_store_req *r = imap__req(s, TERN_STORE_EXPUNGE);
    if (r)
        r->in.name = s->mbox;
    imap__submit(s, r, close_done);
}
