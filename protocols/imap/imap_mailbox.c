/* IMAP mailbox commands: SELECT/EXAMINE (with CONDSTORE and QRESYNC),
 * CREATE, DELETE, RENAME, SUBSCRIBE/UNSUBSCRIBE, LIST (LIST-EXTENDED,
 * LIST-STATUS, SPECIAL-USE, CHILDREN), LSUB, STATUS (SIZE), APPEND
 * (MULTIAPPEND, UIDPLUS) and GETQUOTA/GETQUOTAROOT. Each parses its
 * arguments, asks the store, and answers from the store's result.
 * Input: parsed client arguments (untrusted values), store answers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/log.h"
#include "protocols/imap/imap_session_int.h"

void imap__selected(imap_session *s);

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* ---- SELECT / EXAMINE ---------------------------------------------------- */

typedef struct select_state {
    char *name;
    bool examine;
    bool qresync;
    uint32_t q_uidvalidity;
    uint64_t q_modseq;
    tern_mailbox_info info;
} select_state;

static void select_fail(imap_session *s, tern_store_req *r)
{
    imap__store_fail(s, r, "cannot select");
    tern_store_req_free(r);
}

static void select_qresync(imap_session *s, tern_store_req *r)
{
    if (r->status == TERN_STORE_OK) {
        const tern_changes *c = &r->out.changes;
        if (c->n_vanished) {
            imap__printf(s, "* VANISHED (EARLIER) ");
            imap__put_uidset(s, c->vanished, c->n_vanished);
            imap__printf(s, "\r\n");
        }
        for (size_t i = 0; i < c->n_changed; i++) {
            size_t msn = imap__msn_of(s, c->changed[i].uid);
            if (!msn)
                continue;
            imap__printf(s, "* %zu FETCH (UID %u FLAGS ", msn, c->changed[i].uid);
            imap__put_msg_flags(s, c->changed[i].uid, c->changed[i].flags,
                                c->changed[i].keywords, c->changed[i].n_keywords);
            imap__printf(s, " MODSEQ (%llu))\r\n", (unsigned long long)c->changed[i].modseq);
        }
    }
    /* ETOOOLD: the client must resynchronise the slow way; the rest is valid. */
    tern_store_req_free(r);
    imap__finish(s, "OK", "[%s] %s completed", s->readonly ? "READ-ONLY" : "READ-WRITE",
                 s->readonly ? "EXAMINE" : "SELECT");
}

static void select_claimed(imap_session *s, tern_store_req *r);
static void select_keywords(imap_session *s);
static void select_keywords_done(imap_session *s, tern_store_req *r);
static void select_report(imap_session *s);

static void select_uids(imap_session *s, tern_store_req *r)
{
    select_state *st = s->cmd_state;
    if (r->status != TERN_STORE_OK) {
        select_fail(s, r);
        return;
    }
    size_t n = r->out.n_uids;
    s->uids = malloc((n ? n : 1) * sizeof(*s->uids));
    s->mbox = strdup(st->name);
    if (!s->uids || !s->mbox) {
        tern_store_req_free(r);
        imap__unselect(s);
        imap__finish(s, "NO", "[SERVERBUG] out of memory");
        return;
    }
    memcpy(s->uids, r->out.uids, n * sizeof(*s->uids));
    qsort(s->uids, n, sizeof(*s->uids), cmp_u32);
    s->n_uids = s->cap_uids = n;
    if (s->cap_uids == 0)
        s->cap_uids = 1;
    tern_store_req_free(r);
    s->mbox_id = st->info.id;
    s->uidvalidity = st->info.uidvalidity;
    s->uidnext = st->info.uidnext;
    s->modseq = st->info.highest_modseq;
    s->readonly = st->examine;
    imap__recent_reset(s);
    imap__selected(s);
    /* A claim that cannot even be queued leaves nothing recent for us,
     * which is no reason to refuse the SELECT; the same for the keywords. */
    if (imap__recent_on(s) && imap__try_submit(s, imap__recent_req(s), select_claimed))
        return;
    select_keywords(s);
}

/* RFC 3501 6.3.1: SELECT takes the mailbox's recent messages for this
 * session; EXAMINE (a peek) only sees which they are. */
static void select_claimed(imap_session *s, tern_store_req *r)
{
    imap__recent_take(s, r);
    tern_store_req_free(r);
    select_keywords(s);
}

static void select_keywords(imap_session *s)
{
    tern_store_req *q = imap__req(s, TERN_STORE_MAILBOX_KEYWORDS);
    if (q)
        q->in.name = s->mbox;
    if (!imap__try_submit(s, q, select_keywords_done))
        select_report(s);
}

static void select_keywords_done(imap_session *s, tern_store_req *r)
{
    imap__kw_take(s, r);
    tern_store_req_free(r);
    select_report(s);
}

static void select_report(imap_session *s)
{
    select_state *st = s->cmd_state;
    imap__put_flag_lists(s);
    imap__printf(s, "* %zu EXISTS\r\n", s->n_uids);
    if (imap__recent_on(s))
        imap__printf(s, "* %zu RECENT\r\n", imap__recent_count(s));
    imap__printf(s, "* OK [UIDVALIDITY %u] UIDs valid\r\n", s->uidvalidity);
    imap__printf(s, "* OK [UIDNEXT %u] Predicted next UID\r\n", s->uidnext);
    if (s->condstore)
        imap__printf(s, "* OK [HIGHESTMODSEQ %llu] Highest\r\n", (unsigned long long)s->modseq);
    if (s->rev2) {
        imap__printf(s, "* LIST () \"/\" ");
        imap__put_mailbox(s, s->mbox);
        imap__printf(s, "\r\n");
    }
    if (st->qresync && st->q_uidvalidity == s->uidvalidity && st->q_modseq < s->modseq) {
        tern_store_req *q = imap__req(s, TERN_STORE_CHANGES);
        if (q) {
            q->in.name = s->mbox;
            q->in.since_modseq = st->q_modseq;
        }
        imap__submit(s, q, select_qresync);
        return;
    }
    imap__finish(s, "OK", "[%s] %s completed", s->readonly ? "READ-ONLY" : "READ-WRITE",
                 s->readonly ? "EXAMINE" : "SELECT");
}

static void select_status(imap_session *s, tern_store_req *r)
{
    select_state *st = s->cmd_state;
    if (r->status != TERN_STORE_OK) {
        select_fail(s, r);
        return;
    }
    st->info = r->out.mailbox;
    tern_store_req_free(r);
    static const tern_search all = {.kind = TERN_SEARCH_ALL};
    tern_store_req *q = imap__req(s, TERN_STORE_SEARCH);
    if (q) {
        q->in.name = st->name;
        q->in.search = &all;
    }
    imap__submit(s, q, select_uids);
}

void imap__cmd_select(imap_session *s, tern_imap_parser *ps)
{
    bool had = s->mbox != NULL;
    imap__unselect(s);
    if (had && (s->qresync || s->rev2))
        imap__printf(s, "* OK [CLOSED] Previous mailbox closed\r\n");
    select_state *st = tern_arena_alloc(&s->arena, sizeof(*st));
    if (!st) {
        imap__finish(s, "NO", "[SERVERBUG] out of memory");
        return;
    }
    st->examine = strcmp(s->cmd, "EXAMINE") == 0;
    if (!(st->name = imap__sp_mailbox(s, ps)))
        return;
    if (tern_imap_char(ps, ' ')) {
        if (!tern_imap_open(ps)) {
            imap__bad(s, ps, "bad SELECT parameters");
            return;
        }
        for (bool first = true; !tern_imap_peek(ps, ')'); first = false) {
            if (!first && !tern_imap_sp(ps))
                break;
            if (tern_imap_keyword(ps, "CONDSTORE")) {
                s->condstore = true;
            } else if (tern_imap_keyword(ps, "QRESYNC")) {
                uint64_t v, m;
                if (!s->qresync) {
                    imap__finish(s, "BAD", "QRESYNC is not enabled");
                    return;
                }
                if (!tern_imap_sp(ps) || !tern_imap_open(ps) ||
                    !tern_imap_number(ps, &v, UINT32_MAX) || !tern_imap_sp(ps) ||
                    !tern_imap_number(ps, &m, INT64_MAX))
                    break;
                /* known-uids and the sequence match data only narrow the answer. */
                while (ps->p < ps->end && *ps->p != ')' && ps->depth > 0) {
                    if (*ps->p == '(')
                        tern_imap_open(ps);
                    else if (*ps->p == ')')
                        tern_imap_close(ps);
                    else
                        ps->p++;
                    if (tern_imap_peek(ps, ')') && ps->depth > 2)
                        tern_imap_close(ps);
                }
                if (!tern_imap_close(ps))
                    break;
                st->qresync = true;
                st->q_uidvalidity = (uint32_t)v;
                st->q_modseq = m;
            } else {
                tern_imap_fail(ps, "unknown SELECT parameter");
                break;
            }
        }
        if (ps->error || !tern_imap_close(ps)) {
            imap__bad(s, ps, "bad SELECT parameters");
            return;
        }
    }
    if (!tern_imap_at_end(ps)) {
        imap__bad(s, ps, "junk after mailbox name");
        return;
    }
    s->cmd_state = st;
    tern_store_req *r = imap__req(s, TERN_STORE_MAILBOX_STATUS);
    if (r)
        r->in.name = st->name;
    imap__submit(s, r, select_status);
}

/* ---- CREATE, DELETE, RENAME, (UN)SUBSCRIBE ---------------------------------- */

static void simple_done(imap_session *s, tern_store_req *r)
{
    if (r->status != TERN_STORE_OK)
        imap__store_fail(s, r, s->cmd);
    else
        imap__finish(s, "OK", "%s completed", s->cmd);
    tern_store_req_free(r);
}

static char *strip_sep(char *name)
{
    size_t n = strlen(name);
    while (n > 1 && name[n - 1] == '/')
        name[--n] = '\0';
    return name;
}

static unsigned special_use_of(const char *p, size_t len)
{
    static const struct {
        const char *name;
        unsigned bit;
    } su[] = {{"Drafts", TERN_SPECIAL_DRAFTS}, {"Sent", TERN_SPECIAL_SENT},
              {"Trash", TERN_SPECIAL_TRASH},   {"Junk", TERN_SPECIAL_JUNK},
              {"Archive", TERN_SPECIAL_ARCHIVE}, {"All", TERN_SPECIAL_ALL}};
    for (size_t i = 0; i < sizeof(su) / sizeof(su[0]); i++)
        if (strlen(su[i].name) == len && strncasecmp(su[i].name, p, len) == 0)
            return su[i].bit;
    return 0;
}

void imap__cmd_create(imap_session *s, tern_imap_parser *ps)
{
    char *name;
    if (!(name = imap__sp_mailbox(s, ps)))
        return;
    unsigned special = 0;
    if (tern_imap_char(ps, ' ')) {
        /* RFC 6154 CREATE-SPECIAL-USE: (USE (\Drafts ...)) */
        if (!tern_imap_open(ps) || !tern_imap_keyword(ps, "USE") || !tern_imap_sp(ps) ||
            !tern_imap_open(ps)) {
            imap__bad(s, ps, "bad CREATE parameters");
            return;
        }
        for (bool first = true; !tern_imap_peek(ps, ')'); first = false) {
            tern_imap_slice a;
            if ((!first && !tern_imap_sp(ps)) || !tern_imap_char(ps, '\\') ||
                !tern_imap_atom(ps, &a, NULL)) {
                imap__bad(s, ps, "bad USE list");
                return;
            }
            unsigned b = special_use_of(a.p, a.len);
            if (!b) {
                imap__finish(s, "NO", "[USEATTR] unsupported special-use attribute");
                return;
            }
            special |= b;
        }
        if (!tern_imap_close(ps) || !tern_imap_close(ps)) {
            imap__bad(s, ps, "bad CREATE parameters");
            return;
        }
    }
    if (!tern_imap_at_end(ps)) {
        imap__bad(s, ps, "junk after mailbox name");
        return;
    }
    strip_sep(name);
    if (strcmp(name, "INBOX") == 0) {
        imap__finish(s, "NO", "[ALREADYEXISTS] INBOX always exists");
        return;
    }
    tern_store_req *r = imap__req(s, TERN_STORE_MAILBOX_CREATE);
    if (r) {
        r->in.name = name;
        r->in.create_parents = true;
        r->in.special_use = special;
    }
    imap__submit(s, r, simple_done);
}

void imap__cmd_delete(imap_session *s, tern_imap_parser *ps)
{
    char *name;
    if (!(name = imap__sp_mailbox(s, ps)))
        return;
    if (!tern_imap_at_end(ps)) {
        imap__bad(s, ps, "junk after mailbox name");
        return;
    }
    if (strcmp(name, "INBOX") == 0) {
        imap__finish(s, "NO", "[CANNOT] INBOX cannot be deleted");
        return;
    }
    if (s->mbox && strcmp(s->mbox, name) == 0)
        imap__unselect(s);
    tern_store_req *r = imap__req(s, TERN_STORE_MAILBOX_DELETE);
    if (r)
        r->in.name = strip_sep(name);
    imap__submit(s, r, simple_done);
}

void imap__cmd_rename(imap_session *s, tern_imap_parser *ps)
{
    char *from, *to;
    if (!(from = imap__sp_mailbox(s, ps)))
        return;
    if (!(to = imap__sp_mailbox(s, ps)))
        return;
    if (!tern_imap_at_end(ps)) {
        imap__bad(s, ps, "junk after mailbox names");
        return;
    }
    tern_store_req *r = imap__req(s, TERN_STORE_MAILBOX_RENAME);
    if (r) {
        r->in.name = strip_sep(from);
        r->in.new_name = strip_sep(to);
    }
    imap__submit(s, r, simple_done);
}

void imap__cmd_subscribe(imap_session *s, tern_imap_parser *ps)
{
    char *name;
    if (!(name = imap__sp_mailbox(s, ps)))
        return;
    if (!tern_imap_at_end(ps)) {
        imap__bad(s, ps, "junk after mailbox name");
        return;
    }
    tern_store_req *r = imap__req(s, TERN_STORE_MAILBOX_SUBSCRIBE);
    if (r) {
        r->in.name = strip_sep(name);
        r->in.subscribed = strcmp(s->cmd, "SUBSCRIBE") == 0;
    }
    imap__submit(s, r, simple_done);
}

/* ---- STATUS items ---------------------------------------------------------- */

enum {
    ST_MESSAGES = 1 << 0, ST_UIDNEXT = 1 << 1, ST_UIDVALIDITY = 1 << 2, ST_UNSEEN = 1 << 3,
    ST_RECENT = 1 << 4, ST_SIZE = 1 << 5, ST_HIGHESTMODSEQ = 1 << 6, ST_DELETED = 1 << 7,
    ST_APPENDLIMIT = 1 << 8,
};

static bool status_items(tern_imap_parser *ps, unsigned *items)
{
    static const struct {
        const char *name;
        unsigned bit;
    } names[] = {{"MESSAGES", ST_MESSAGES}, {"UIDNEXT", ST_UIDNEXT},
                 {"UIDVALIDITY", ST_UIDVALIDITY}, {"UNSEEN", ST_UNSEEN},
                 {"RECENT", ST_RECENT}, {"SIZE", ST_SIZE},
                 {"HIGHESTMODSEQ", ST_HIGHESTMODSEQ}, {"DELETED", ST_DELETED},
                 {"APPENDLIMIT", ST_APPENDLIMIT}};
    *items = 0;
    if (!tern_imap_open(ps))
        return false;
    for (bool first = true; !tern_imap_peek(ps, ')'); first = false) {
        if (!first && !tern_imap_sp(ps))
            return false;
        size_t i;
        for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
            if (tern_imap_keyword(ps, names[i].name)) {
                *items |= names[i].bit;
                break;
            }
        if (i == sizeof(names) / sizeof(names[0]))
            return tern_imap_fail(ps, "unknown STATUS item");
    }
    return tern_imap_close(ps);
}

static void put_status(imap_session *s, const tern_mailbox_info *m, unsigned items,
                       uint32_t deleted)
{
    imap__printf(s, "* STATUS ");
    imap__put_mailbox(s, m->name);
    imap__printf(s, " (");
    const char *sp = "";
#define ITEM(bit, fmt, v)                                  \
    if (items & (bit)) {                                   \
        imap__printf(s, "%s" fmt, sp, v);                  \
        sp = " ";                                          \
    }
    ITEM(ST_MESSAGES, "MESSAGES %u", m->messages);
    ITEM(ST_UIDNEXT, "UIDNEXT %u", m->uidnext);
    ITEM(ST_UIDVALIDITY, "UIDVALIDITY %u", m->uidvalidity);
    ITEM(ST_UNSEEN, "UNSEEN %u", m->unseen);
    ITEM(ST_RECENT, "RECENT %u", m->recent);
    ITEM(ST_SIZE, "SIZE %llu", (unsigned long long)m->size);
    ITEM(ST_HIGHESTMODSEQ, "HIGHESTMODSEQ %llu", (unsigned long long)m->highest_modseq);
    ITEM(ST_DELETED, "DELETED %u", deleted);
#undef ITEM
    imap__printf(s, ")\r\n");
}

typedef struct status_state {
    char *name;
    unsigned items;
    tern_mailbox_info info;
} status_state;

static void status_deleted(imap_session *s, tern_store_req *r)
{
    status_state *st = s->cmd_state;
    if (r->status != TERN_STORE_OK) {
        imap__store_fail(s, r, "STATUS");
        tern_store_req_free(r);
        return;
    }
    put_status(s, &st->info, st->items, (uint32_t)r->out.n_uids);
    tern_store_req_free(r);
    imap__finish(s, "OK", "STATUS completed");
}

static void status_done(imap_session *s, tern_store_req *r)
{
    status_state *st = s->cmd_state;
    if (r->status != TERN_STORE_OK) {
        imap__store_fail(s, r, "STATUS");
        tern_store_req_free(r);
        return;
    }
    st->info = r->out.mailbox;
    st->info.name = st->name;
    tern_store_req_free(r);
    if (st->items & ST_DELETED) {
        static const tern_search deleted = {.kind = TERN_SEARCH_FLAGS_SET,
                                            .flags = TERN_FLAG_DELETED};
        tern_store_req *q = imap__req(s, TERN_STORE_SEARCH);
        if (q) {
            q->in.name = st->name;
            q->in.search = &deleted;
        }
        imap__submit(s, q, status_deleted);
        return;
    }
    put_status(s, &st->info, st->items, 0);
    imap__finish(s, "OK", "STATUS completed");
}

void imap__cmd_status(imap_session *s, tern_imap_parser *ps)
{
    status_state *st = tern_arena_alloc(&s->arena, sizeof(*st));
    if (!st) {
        imap__finish(s, "NO", "[SERVERBUG] out of memory");
        return;
    }
    if (!(st->name = imap__sp_mailbox(s, ps)))
        return;
    if (!tern_imap_sp(ps) || !status_items(ps, &st->items) || !tern_imap_at_end(ps)) {
        imap__bad(s, ps, "bad STATUS items");
        return;
    }
    s->cmd_state = st;
    tern_store_req *r = imap__req(s, TERN_STORE_MAILBOX_STATUS);
    if (r)
        r->in.name = st->name;
    imap__submit(s, r, status_done);
}

/* ---- LIST / LSUB -------------------------------------------------------------- */

typedef struct list_state {
    char **patterns;
    size_t n_patterns, next;
    bool lsub;
    bool sel_subscribed, sel_special, sel_recursive;
    bool ret_subscribed, ret_children, ret_special;
    unsigned status_items;
} list_state;

static void put_special(imap_session *s, unsigned su)
{
    static const struct {
        unsigned bit;
        const char *name;
    } names[] = {{TERN_SPECIAL_DRAFTS, "\\Drafts"}, {TERN_SPECIAL_SENT, "\\Sent"},
                 {TERN_SPECIAL_TRASH, "\\Trash"},   {TERN_SPECIAL_JUNK, "\\Junk"},
                 {TERN_SPECIAL_ARCHIVE, "\\Archive"}, {TERN_SPECIAL_ALL, "\\All"}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (su & names[i].bit)
            imap__printf(s, " %s", names[i].name);
}

static void list_next(imap_session *s);

static void list_done(imap_session *s, tern_store_req *r)
{
    list_state *st = s->cmd_state;
    if (r->status != TERN_STORE_OK) {
        imap__store_fail(s, r, s->cmd);
        tern_store_req_free(r);
        return;
    }
    for (size_t i = 0; i < r->out.n_mailboxes; i++) {
        const tern_mailbox_info *m = &r->out.mailboxes[i];
        if (st->sel_special && !m->special_use)
            continue;
        imap__printf(s, "* %s (%s", st->lsub ? "LSUB" : "LIST",
                     m->has_children ? "\\HasChildren" : "\\HasNoChildren");
        if (m->subscribed && (st->ret_subscribed || st->sel_subscribed))
            imap__printf(s, " \\Subscribed");
        if (!st->lsub)
            put_special(s, m->special_use);
        imap__printf(s, ") \"/\" ");
        imap__put_mailbox(s, m->name);
        imap__printf(s, "\r\n");
        if (st->status_items)
            put_status(s, m, st->status_items & ~ST_DELETED, 0);
        if (s->ob.len > 64 * 1024)
            imap__flush(s);
    }
    tern_store_req_free(r);
    list_next(s);
}

static void list_next(imap_session *s)
{
    list_state *st = s->cmd_state;
    if (st->next == st->n_patterns) {
        imap__finish(s, "OK", "%s completed", s->cmd);
        return;
    }
    tern_store_req *r = imap__req(s, TERN_STORE_MAILBOX_LIST);
    if (r) {
        r->in.pattern = st->patterns[st->next++];
        r->in.subscribed_only = st->lsub || st->sel_subscribed;
    }
    imap__submit(s, r, list_done);
}

/* list-mailbox: an atom with wildcards, or a string. */
static bool list_pattern(imap_session *s, tern_imap_parser *ps, char **out)
{
    if (tern_imap_peek(ps, '"') || tern_imap_peek(ps, '{'))
        return tern_imap_string(ps, out, NULL, false);
    tern_imap_slice a;
    if (!tern_imap_atom(ps, &a, "%*]"))
        return false;
    *out = tern_arena_strndup(&s->arena, a.p, a.len);
    return *out != NULL;
}

void imap__cmd_list(imap_session *s, tern_imap_parser *ps)
{
    list_state *st = tern_arena_alloc(&s->arena, sizeof(*st));
    if (!st || !tern_imap_sp(ps)) {
        imap__bad(s, ps, "bad LIST arguments");
        return;
    }
    st->lsub = strcmp(s->cmd, "LSUB") == 0;
    if (!st->lsub && tern_imap_peek(ps, '(')) {
        tern_imap_open(ps);
        for (bool first = true; !tern_imap_peek(ps, ')'); first = false) {
            if (!first && !tern_imap_sp(ps))
                break;
            if (tern_imap_keyword(ps, "SUBSCRIBED"))
                st->sel_subscribed = true;
            else if (tern_imap_keyword(ps, "SPECIAL-USE"))
                st->sel_special = true;
            else if (tern_imap_keyword(ps, "RECURSIVEMATCH"))
                st->sel_recursive = true;
            else if (tern_imap_keyword(ps, "REMOTE"))
                ;
            else {
                tern_imap_fail(ps, "unknown LIST selection option");
                break;
            }
        }
        if (ps->error || !tern_imap_close(ps) || !tern_imap_sp(ps)) {
            imap__bad(s, ps, "bad LIST selection options");
            return;
        }
        if (st->sel_recursive && !st->sel_subscribed) {
            imap__finish(s, "BAD", "RECURSIVEMATCH needs another selection option");
            return;
        }
    }
    char *ref;
    if (!tern_imap_astring(ps, &ref, NULL) || !tern_imap_sp(ps)) {
        imap__bad(s, ps, "bad LIST reference");
        return;
    }
    char *pats[64];
    size_t np = 0;
    if (!st->lsub && tern_imap_peek(ps, '(')) {
        tern_imap_open(ps);
        for (bool first = true; !tern_imap_peek(ps, ')'); first = false) {
            if ((!first && !tern_imap_sp(ps)) || np == 64 || !list_pattern(s, ps, &pats[np++])) {
                imap__bad(s, ps, "bad LIST patterns");
                return;
            }
        }
        if (!tern_imap_close(ps) || np == 0) {
            imap__bad(s, ps, "bad LIST patterns");
            return;
        }
    } else if (!list_pattern(s, ps, &pats[np++])) {
        imap__bad(s, ps, "bad LIST pattern");
        return;
    }
    if (!st->lsub && tern_imap_char(ps, ' ')) {
        if (!tern_imap_keyword(ps, "RETURN") || !tern_imap_sp(ps) || !tern_imap_open(ps)) {
            imap__bad(s, ps, "bad LIST return options");
            return;
        }
        for (bool first = true; !tern_imap_peek(ps, ')'); first = false) {
            if (!first && !tern_imap_sp(ps))
                break;
            if (tern_imap_keyword(ps, "SUBSCRIBED"))
                st->ret_subscribed = true;
            else if (tern_imap_keyword(ps, "CHILDREN"))
                st->ret_children = true;
            else if (tern_imap_keyword(ps, "SPECIAL-USE"))
                st->ret_special = true;
            else if (tern_imap_keyword(ps, "STATUS")) {
                if (!tern_imap_sp(ps) || !status_items(ps, &st->status_items))
                    break;
            } else {
                tern_imap_fail(ps, "unknown LIST return option");
                break;
            }
        }
        if (ps->error || !tern_imap_close(ps)) {
            imap__bad(s, ps, "bad LIST return options");
            return;
        }
    }
    if (!tern_imap_at_end(ps)) {
        imap__bad(s, ps, "junk after LIST arguments");
        return;
    }
    /* LIST "" "": the hierarchy delimiter and the root. */
    if (np == 1 && pats[0][0] == '\0') {
        imap__printf(s, "* %s (\\Noselect) \"/\" \"\"\r\n", st->lsub ? "LSUB" : "LIST");
        imap__finish(s, "OK", "%s completed", s->cmd);
        return;
    }
    st->patterns = tern_arena_alloc(&s->arena, np * sizeof(char *));
    if (!st->patterns) {
        imap__finish(s, "NO", "[SERVERBUG] out of memory");
        return;
    }
    for (size_t i = 0; i < np; i++) {
        char *p = pats[i];
        if (ref[0] && p[0] != '/')
            p = tern_arena_printf(&s->arena, "%s%s", ref, p);
        char *dec = p;
        if (p && !s->utf8 && !tern_imap_mutf7_decode(p, &s->arena, &dec))
            dec = p;
        if (dec && strncasecmp(dec, "INBOX", 5) == 0 && (dec[5] == '\0' || dec[5] == '/'))
            memcpy(dec, "INBOX", 5);
        st->patterns[i] = dec;
    }
    st->n_patterns = np;
    s->cmd_state = st;
    list_next(s);
}

/* ---- APPEND -------------------------------------------------------------- */

typedef struct append_msg {
    tern_imap_flags flags;
    int64_t date;
    tern_imap_slice data;
} append_msg;

typedef struct append_state {
    char *name;
    append_msg *msgs;
    size_t n, next;
    uint32_t uidvalidity;
    uint32_t *uids;
} append_state;

static void append_next(imap_session *s);

static void append_done(imap_session *s, tern_store_req *r)
{
    append_state *st = s->cmd_state;
    if (r->status != TERN_STORE_OK) {
        if (r->status == TERN_STORE_ENOTFOUND)
            imap__finish(s, "NO", "[TRYCREATE] no such mailbox");
        else
            imap__store_fail(s, r, "APPEND");
        tern_store_req_free(r);
        return;
    }
    st->uidvalidity = r->out.append.uidvalidity;
    st->uids[st->next - 1] = r->out.append.uid;
    tern_store_req_free(r);
    append_next(s);
}

static void append_next(imap_session *s)
{
    append_state *st = s->cmd_state;
    if (st->next == st->n) {
        if (s->mbox && strcmp(s->mbox, st->name) == 0)
            s->changed = true; /* EXISTS before the tagged OK */
        char set[256];
        size_t save = s->ob.len;
        imap__put_uidset(s, st->uids, st->n);
        snprintf(set, sizeof(set), "%.*s", (int)(s->ob.len - save), s->ob.data + save);
        s->ob.len = save;
        imap__finish(s, "OK", "[APPENDUID %u %s] APPEND completed", st->uidvalidity, set);
        return;
    }
    append_msg *m = &st->msgs[st->next++];
    tern_store_req *r = imap__req(s, TERN_STORE_APPEND);
    if (r) {
        r->in.name = st->name;
        r->in.data = (const uint8_t *)m->data.p;
        r->in.len = m->data.len;
        r->in.flags = m->flags.flags;
        r->in.keywords.names = m->flags.keywords;
        r->in.keywords.n = m->flags.n_keywords;
        r->in.internal_date = m->date;
    }
    imap__submit(s, r, append_done);
}

void imap__cmd_append(imap_session *s, tern_imap_parser *ps)
{
    append_state *st = tern_arena_alloc(&s->arena, sizeof(*st));
    if (!st) {
        imap__finish(s, "NO", "[SERVERBUG] out of memory");
        return;
    }
    if (!(st->name = imap__sp_mailbox(s, ps)))
        return;
    size_t cap = 0;
    uint64_t limit = s->rd.max_literal;
    while (tern_imap_char(ps, ' ')) {
        if (st->n == cap) {
            if (cap >= 1024) {
                imap__finish(s, "NO", "[LIMIT] too many messages in one APPEND");
                return;
            }
            size_t nc = cap ? cap * 2 : 4;
            append_msg *nm = tern_arena_alloc(&s->arena, nc * sizeof(*nm));
            if (!nm) {
                imap__finish(s, "NO", "[SERVERBUG] out of memory");
                return;
            }
            if (st->n)
                memcpy(nm, st->msgs, st->n * sizeof(*nm));
            st->msgs = nm;
            cap = nc;
        }
        append_msg *m = &st->msgs[st->n];
        memset(m, 0, sizeof(*m));
        if (tern_imap_peek(ps, '(')) {
            if (!tern_imap_flag_list(ps, &m->flags, false) || !tern_imap_sp(ps)) {
                imap__bad(s, ps, "bad APPEND flags");
                return;
            }
        }
        if (tern_imap_peek(ps, '"')) {
            if (!tern_imap_date_time(ps, &m->date) || !tern_imap_sp(ps)) {
                imap__bad(s, ps, "bad APPEND date-time");
                return;
            }
        }
        if (!tern_imap_literal_slice(ps, &m->data, true)) {
            imap__bad(s, ps, "APPEND needs a literal");
            return;
        }
        if (m->data.len > limit) {
            imap__finish(s, "NO", "[TOOBIG] Message too big");
            return;
        }
        st->n++;
    }
    if (st->n == 0 || !tern_imap_at_end(ps)) {
        imap__bad(s, ps, "bad APPEND arguments");
        return;
    }
    st->uids = tern_arena_alloc(&s->arena, st->n * sizeof(*st->uids));
    if (!st->uids) {
        imap__finish(s, "NO", "[SERVERBUG] out of memory");
        return;
    }
    s->cmd_state = st;
    append_next(s);
}

/* ---- QUOTA ------------------------------------------------------------- */

static void quota_done(imap_session *s, tern_store_req *r)
{
    if (r->status != TERN_STORE_OK) {
        imap__store_fail(s, r, s->cmd);
        tern_store_req_free(r);
        return;
    }
    const tern_account_info *a = &r->out.account;
    char *mbox = s->cmd_state;
    if (mbox) {
        imap__printf(s, "* QUOTAROOT ");
        imap__put_mailbox(s, mbox);
        imap__printf(s, " \"\"\r\n");
    }
    imap__printf(s, "* QUOTA \"\" (");
    const char *sp = "";
    if (a->quota_bytes) {
        imap__printf(s, "STORAGE %llu %llu", (unsigned long long)(a->used_bytes / 1024),
                     (unsigned long long)(a->quota_bytes / 1024));
        sp = " ";
    }
    if (a->quota_messages)
        imap__printf(s, "%sMESSAGE %llu %llu", sp, (unsigned long long)a->used_messages,
                     (unsigned long long)a->quota_messages);
    imap__printf(s, ")\r\n");
    tern_store_req_free(r);
    imap__finish(s, "OK", "%s completed", s->cmd);
}

void imap__cmd_quota(imap_session *s, tern_imap_parser *ps)
{
    char *arg;
    bool root = strcmp(s->cmd, "GETQUOTAROOT") == 0;
    if (!tern_imap_sp(ps)) {
        imap__bad(s, ps, "needs an argument");
        return;
    }
    if (root) {
        if (!(arg = imap__mailbox_arg(s, ps)))
            return;
        s->cmd_state = arg;
    } else {
        if (!tern_imap_astring(ps, &arg, NULL)) {
            imap__bad(s, ps, "GETQUOTA needs a quota root");
            return;
        }
        if (arg[0] != '\0') {
            imap__finish(s, "NO", "[NONEXISTENT] no such quota root");
            return;
        }
    }
    if (!tern_imap_at_end(ps)) {
        imap__bad(s, ps, "junk after argument");
        return;
    }
    tern_store_req *r = imap__req(s, TERN_STORE_QUOTA_GET);
    imap__submit(s, r, quota_done);
}
