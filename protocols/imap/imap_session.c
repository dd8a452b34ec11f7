/* The IMAP server session (RFC 9051 IMAP4rev2 and RFC 3501 IMAP4rev1): the
 * state machine (not authenticated, authenticated, selected, logout), the
 * command table, the connection callbacks, LOGIN, IDLE, and the
 * synchronisation that tells a client about changes other sessions made
 * (EXISTS, EXPUNGE/VANISHED, FETCH FLAGS) from the store's change log.
 * Commands run one at a time: the next is not parsed while one is running
 * or its replies are unsent past a high-water mark.
 * Input: the client's bytes (untrusted, parsed by imap_parser.c), the
 * config snapshot (validated), store answers (trusted). */
#include "protocols/imap/imap_session.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "lib/log.h"
#include "protocols/common/sasl_server.h"
#include "protocols/imap/imap_session_int.h"

#define PREAUTH_LITERAL_MAX 8192 /* before login a literal carries a user or password */

/* ---- output ------------------------------------------------------------- */

void imap__printf(imap_session *s, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line)) {
        /* Long lines (LIST, SEARCH results) go through the buffer's own printf. */
        va_start(ap, fmt);
        char *big = NULL;
        if (vasprintf(&big, fmt, ap) >= 0 && big) {
            tern_buf_append_str(&s->ob, big);
            free(big);
        }
        va_end(ap);
        return;
    }
    tern_buf_append(&s->ob, line, (size_t)n);
}

void imap__flush(imap_session *s)
{
    if (s->ob.len == 0)
        return;
    if (!s->conn_closed)
        tern_conn_write(&s->conn, s->ob.data, s->ob.len);
    s->ob.len = 0;
    tern_buf_shrink(&s->ob, 8 * 1024);
}

void imap__put_string(imap_session *s, const char *str, size_t len)
{
    bool literal = false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)str[i];
        if (c == '\r' || c == '\n' || c == 0 || (c >= 0x80 && !s->utf8)) {
            literal = true;
            break;
        }
    }
    if (literal) {
        imap__printf(s, "{%zu}\r\n", len);
        tern_buf_append(&s->ob, str, len);
        return;
    }
    tern_buf_append(&s->ob, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        if (str[i] == '"' || str[i] == '\\')
            tern_buf_append(&s->ob, "\\", 1);
        tern_buf_append(&s->ob, str + i, 1);
    }
    tern_buf_append(&s->ob, "\"", 1);
}

void imap__put_mailbox(imap_session *s, const char *name)
{
    char *enc = NULL;
    if (!s->utf8 && tern_imap_mutf7_encode(name, &s->arena, &enc))
        name = enc;
    imap__put_string(s, name, strlen(name));
}

static void put_flags(imap_session *s, unsigned flags, char **kw, size_t n_kw, bool recent);

void imap__put_flags(imap_session *s, unsigned flags, char **kw, size_t n_kw)
{
    put_flags(s, flags, kw, n_kw, false);
}

void imap__put_msg_flags(imap_session *s, uint32_t uid, unsigned flags, char **kw, size_t n_kw)
{
    imap__kw_note(s, kw, n_kw);
    put_flags(s, flags, kw, n_kw, imap__recent_on(s) && imap__recent_has(s, uid));
}

static void put_flags(imap_session *s, unsigned flags, char **kw, size_t n_kw, bool recent)
{
    static const struct {
        unsigned bit;
        const char *name;
    } names[] = {{TERN_FLAG_SEEN, "\\Seen"},       {TERN_FLAG_ANSWERED, "\\Answered"},
                 {TERN_FLAG_FLAGGED, "\\Flagged"}, {TERN_FLAG_DELETED, "\\Deleted"},
                 {TERN_FLAG_DRAFT, "\\Draft"}};
    bool first = true;
    tern_buf_append(&s->ob, "(", 1);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (flags & names[i].bit) {
            imap__printf(s, "%s%s", first ? "" : " ", names[i].name);
            first = false;
        }
    if (recent) {
        imap__printf(s, "%s\\Recent", first ? "" : " ");
        first = false;
    }
    for (size_t i = 0; i < n_kw; i++) {
        imap__printf(s, "%s%s", first ? "" : " ", kw[i]);
        first = false;
    }
    tern_buf_append(&s->ob, ")", 1);
}

void imap__put_uidset(imap_session *s, const uint32_t *uids, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j + 1 < n && uids[j + 1] == uids[j] + 1)
            j++;
        if (j > i)
            imap__printf(s, "%s%u:%u", i ? "," : "", uids[i], uids[j]);
        else
            imap__printf(s, "%s%u", i ? "," : "", uids[i]);
        i = j + 1;
    }
}

static void imap__log_reply(imap_session *s, const char *status, const char *text)
{
    if (strcmp(status, "OK") != 0)
        TLOG_INFO(MOD, "event=reply session=%s cmd=%s status=%s text=\"%.200s\"", s->base.id,
                  s->cmd[0] ? s->cmd : "-", status, text);
}

/* ---- capabilities ----------------------------------------------------- */

static bool imap__plaintext_ok(const imap_session *s)
{
    return tern_conn_is_tls(&s->conn) || s->lc->allow_plaintext_auth;
}

static uint64_t imap__appendlimit(const imap_session *s)
{
    uint64_t l = s->cfg->imap.max_literal;
    if (s->lc->max_message_size && s->lc->max_message_size < l)
        l = s->lc->max_message_size;
    return l;
}

static void imap__sasl_params(imap_session *s, tern_sasl_srv_params *p);

static void imap__put_capabilities(imap_session *s)
{
    imap__printf(s, "IMAP4rev1 IMAP4rev2 LITERAL+ ID ENABLE IDLE NAMESPACE UNSELECT UIDPLUS MOVE "
                    "CHILDREN SPECIAL-USE LIST-EXTENDED LIST-STATUS ESEARCH SEARCHRES CONDSTORE "
                    "QRESYNC QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE STATUS=SIZE MULTIAPPEND "
                    "UTF8=ACCEPT BINARY SORT SORT=DISPLAY THREAD=ORDEREDSUBJECT "
                    "THREAD=REFERENCES APPENDLIMIT=%llu",
                 (unsigned long long)imap__appendlimit(s));
    if (s->state & (IS_NOAUTH | IS_HANDSHAKE)) {
        char mechs[256];
        tern_sasl_srv_params p;
        imap__sasl_params((imap_session *)s, &p);
        if (s->auth && tern_sasl_srv_mechs(s->auth, &p, mechs, sizeof(mechs)) > 0) {
            imap__printf(s, " SASL-IR");
            char *save = NULL;
            for (char *tok = strtok_r(mechs, " ", &save); tok; tok = strtok_r(NULL, " ", &save))
                imap__printf(s, " AUTH=%s", tok);
        }
        if (s->lc->tls == TERN_TLS_STARTTLS && s->tls && !tern_conn_is_tls(&s->conn))
            imap__printf(s, " STARTTLS");
        if (!imap__plaintext_ok(s))
            imap__printf(s, " LOGINDISABLED");
    }
}

/* ---- sequence numbers --------------------------------------------------- */

size_t imap__msn_of(const imap_session *s, uint32_t uid)
{
    size_t lo = 0, hi = s->n_uids;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->uids[mid] < uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->n_uids && s->uids[lo] == uid ? lo + 1 : 0;
}

/* Message numbers (or, with `uid`, UIDs that exist) to UID ranges. '*' in a
 * message-number set is the last message; in a UID set, the highest UID. */
bool imap__seq_to_uids(imap_session *s, const tern_imap_seqset *set, bool uid,
                       tern_uid_set *out)
{
    if (set->saved) {
        out->ranges = s->saved;
        out->n = s->n_saved;
        return true;
    }
    tern_uid_range *r = tern_arena_alloc(&s->arena, (set->n ? set->n : 1) * sizeof(*r));
    if (!r)
        return false;
    size_t n = 0;
    uint32_t last_uid = s->n_uids ? s->uids[s->n_uids - 1] : 0;
    for (size_t i = 0; i < set->n; i++) {
        uint32_t a = set->ranges[i].first, b = set->ranges[i].last;
        if (uid) {
            /* "*" is the largest UID in use; n:* with n past it still means it. */
            if (a == UINT32_MAX)
                a = last_uid ? last_uid : UINT32_MAX;
            if (b == UINT32_MAX)
                b = last_uid ? last_uid : UINT32_MAX;
            if (a > b) {
                uint32_t t = a;
                a = b;
                b = t;
            }
            if (last_uid == 0)
                continue;
        } else {
            if (s->n_uids == 0)
                return false;
            if (a == UINT32_MAX)
                a = (uint32_t)s->n_uids;
            if (b == UINT32_MAX)
                b = (uint32_t)s->n_uids;
            if (a > b) {
                uint32_t t = a;
                a = b;
                b = t;
            }
            if (b > s->n_uids)
                return false; /* RFC 9051 6.4: a bad message number is BAD */
            a = s->uids[a - 1];
            b = s->uids[b - 1];
        }
        r[n].first = a;
        r[n].last = b;
        n++;
    }
    out->ranges = r;
    out->n = n;
    return true;
}

static bool seqmap_msn(void *ctx, const tern_imap_seqset *msns, tern_arena *a, tern_uid_set *out)
{
    (void)a;
    return imap__seq_to_uids(ctx, msns, false, out);
}

static bool seqmap_saved(void *ctx, tern_arena *a, tern_uid_set *out)
{
    imap_session *s = ctx;
    (void)a;
    out->ranges = s->saved;
    out->n = s->n_saved;
    return true;
}

/* A copy: a sync may add to the set while the search is still in use. */
static bool seqmap_recent(void *ctx, tern_arena *a, tern_uid_set *out)
{
    imap_session *s = ctx;
    out->ranges = NULL;
    out->n = 0;
    if (!imap__recent_on(s) || s->recent.n == 0)
        return true;
    tern_uid_range *r = tern_arena_alloc(a, s->recent.n * sizeof(*r));
    if (r == NULL)
        return false;
    memcpy(r, s->recent.r, s->recent.n * sizeof(*r));
    out->ranges = r;
    out->n = s->recent.n;
    return true;
}

const tern_imap_seqmap imap__seqmap_proto = {seqmap_msn, seqmap_saved, NULL, seqmap_recent};

void imap__remove_uid(imap_session *s, size_t idx)
{
    memmove(s->uids + idx, s->uids + idx + 1, (s->n_uids - idx - 1) * sizeof(*s->uids));
    s->n_uids--;
}

void imap__report_expunged(imap_session *s, const uint32_t *uids, size_t n)
{
    if (n == 0)
        return;
    if (s->qresync) {
        /* RFC 7162 3.2.10: VANISHED replaces EXPUNGE once QRESYNC is on. */
        uint32_t *gone = tern_arena_alloc(&s->arena, n * sizeof(*gone));
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            size_t msn = imap__msn_of(s, uids[i]);
            if (msn) {
                imap__remove_uid(s, msn - 1);
                if (gone)
                    gone[k++] = uids[i];
            }
        }
        if (k) {
            imap__printf(s, "* VANISHED ");
            imap__put_uidset(s, gone, k);
            imap__printf(s, "\r\n");
        }
        return;
    }
    /* Highest first, so every number sent is still the one the client knows. */
    for (size_t i = n; i-- > 0;) {
        size_t msn = imap__msn_of(s, uids[i]);
        if (msn) {
            imap__remove_uid(s, msn - 1);
            imap__printf(s, "* %zu EXPUNGE\r\n", msn);
        }
    }
}

/* ---- store requests ----------------------------------------------------- */

static void imap__maybe_free(imap_session *s);
static void imap__continue(imap_session *s);
static void imap__sync(imap_session *s);
static void imap__process(imap_session *s);

static void imap__store_done(tern_store_req *r)
{
    imap_session *s = r->data;
    s->pending--;
    imap_step st = s->step;
    s->step = NULL;
    if (s->conn_closed || st == NULL) {
        tern_store_req_free(r);
        imap__maybe_free(s);
        return;
    }
    st(s, r);
    imap__flush(s);
}

tern_store_req *imap__req(imap_session *s, tern_store_op op)
{
    tern_store_req *r = tern_store_req_new(op, imap__store_done, s);
    if (r)
        r->in.account = s->user;
    return r;
}

void imap__submit(imap_session *s, tern_store_req *r, imap_step step)
{
    if (r == NULL) {
        imap__finish(s, "NO", "[SERVERBUG] out of memory");
        return;
    }
    s->step = step;
    s->pending++;
    int rc = tern_store_submit(s->base.host->store_client, r);
    if (rc != 0) {
        s->pending--;
        s->step = NULL;
        tern_store_req_free(r);
        imap__finish(s, "NO", "[UNAVAILABLE] storage unavailable, try again later");
    }
}

bool imap__try_submit(imap_session *s, tern_store_req *r, imap_step step)
{
    if (!r)
        return false;
    s->step = step;
    s->pending++;
    if (tern_store_submit(s->base.host->store_client, r) != 0) {
        s->pending--;
        s->step = NULL;
        tern_store_req_free(r);
        return false;
    }
    return true;
}

void imap__store_fail(imap_session *s, tern_store_req *r, const char *what)
{
    const char *code;
    switch (r->status) {
    case TERN_STORE_ENOTFOUND: code = "[NONEXISTENT]"; break;
    case TERN_STORE_EEXISTS: code = "[ALREADYEXISTS]"; break;
    case TERN_STORE_EQUOTA: code = "[OVERQUOTA]"; break;
    case TERN_STORE_EINVAL: code = "[CANNOT]"; break;
    case TERN_STORE_ENOTEMPTY: code = "[INUSE]"; break;
    case TERN_STORE_EFORBIDDEN: code = "[CANNOT]"; break;
    case TERN_STORE_ETEMP: code = "[UNAVAILABLE]"; break;
    default: code = "[SERVERBUG]"; break;
    }
    if (r->status == TERN_STORE_EIO || r->status == TERN_STORE_ETEMP)
        TLOG_WARN(MOD, "event=store_error session=%s cmd=%s status=%s error=\"%s\"", s->base.id,
                  s->cmd, tern_store_strerror(r->status), r->error);
    imap__finish(s, "NO", "%s %s: %s", code, what, tern_store_strerror(r->status));
}

/* ---- ending a command ----------------------------------------------------- */

static void imap__end_command(imap_session *s)
{
    s->busy = false;
    s->cmd_state = NULL;
    s->uid_cmd = false;
    tern_arena_reset(&s->arena);
    s->cmd[0] = '\0';
    if (s->draining && !s->bye_sent && s->state != IS_IDLE) {
        imap__printf(s, "* BYE Server shutting down\r\n");
        s->bye_sent = true;
        imap__flush(s);
        s->state = IS_LOGOUT;
        tern_conn_close(&s->conn, true);
        return;
    }
    imap__continue(s);
}

static void imap__send_final(imap_session *s)
{
    s->final_pending = false;
    imap__kw_report(s);
    imap__printf(s, "%s\r\n", s->final);
    imap__flush(s);
    imap__end_command(s);
}

/* RFC 9051 7.5.1: no EXPUNGE during FETCH, STORE, SEARCH, SORT or THREAD (they use
 * message numbers); with UID variants and other commands, report first. */
static bool imap__may_sync(const imap_session *s)
{
    if (s->state != IS_SELECTED || !s->changed)
        return false;
    if (!s->uid_cmd && (strcmp(s->cmd, "FETCH") == 0 || strcmp(s->cmd, "STORE") == 0 ||
                        strcmp(s->cmd, "SEARCH") == 0 || strcmp(s->cmd, "SORT") == 0 ||
                        strcmp(s->cmd, "THREAD") == 0))
        return false;
    return true;
}

void imap__finish(imap_session *s, const char *status, const char *fmt, ...)
{
    char text[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    imap__log_reply(s, status, text);
    snprintf(s->final, sizeof(s->final), "%s %s %s", s->tag, status, text);
    s->final_pending = true;
    if (imap__may_sync(s)) {
        imap__flush(s);
        imap__sync(s);
        return;
    }
    imap__send_final(s);
}

void imap__bad(imap_session *s, tern_imap_parser *ps, const char *fallback)
{
    s->errors++;
    const char *why = ps && ps->error ? ps->error : fallback;
    imap__finish(s, "BAD", "%s%s", ps && ps->depth_error ? "[LIMIT] " : "", why);
}

/* ---- mailbox synchronisation --------------------------------------------- */

/* The end of a sync: the tagged reply that waited for it, or in IDLE the
 * next sync if more came meanwhile. */
static void imap__sync_end(imap_session *s)
{
    s->syncing = false;
    if (s->final_pending) {
        imap__send_final(s);
        return;
    }
    imap__kw_report(s);
    imap__flush(s);
    if (s->state == IS_IDLE && s->changed)
        imap__sync(s);
}

/* New messages were reported: those nobody claimed yet are ours. */
static void imap__sync_claimed(imap_session *s, tern_store_req *r)
{
    if (s->mbox && s->state & (IS_SELECTED | IS_IDLE)) {
        imap__recent_take(s, r);
        imap__printf(s, "* %zu RECENT\r\n", imap__recent_count(s));
    }
    tern_store_req_free(r);
    imap__sync_end(s);
}

static void imap__sync_done(imap_session *s, tern_store_req *r)
{
    bool claim = false;
    if (r->status == TERN_STORE_OK && s->state & (IS_SELECTED | IS_IDLE) && s->mbox) {
        const tern_changes *c = &r->out.changes;
        imap__report_expunged(s, c->vanished, c->n_vanished);
        size_t before = s->n_uids;
        uint32_t last = s->n_uids ? s->uids[s->n_uids - 1] : 0;
        for (size_t i = 0; i < c->n_changed; i++) {
            const tern_change *ch = &c->changed[i];
            if (ch->uid > last) {
                if (s->n_uids == s->cap_uids) {
                    size_t nc = s->cap_uids ? s->cap_uids * 2 : 64;
                    uint32_t *nu = realloc(s->uids, nc * sizeof(*nu));
                    if (!nu)
                        break;
                    s->uids = nu;
                    s->cap_uids = nc;
                }
                s->uids[s->n_uids++] = ch->uid;
                last = ch->uid;
                continue;
            }
            if (ch->modseq >= s->own_lo && ch->modseq <= s->own_hi)
                continue;
            size_t msn = imap__msn_of(s, ch->uid);
            if (msn == 0 || msn > before)
                continue;
            imap__printf(s, "* %zu FETCH (UID %u FLAGS ", msn, ch->uid);
            imap__put_msg_flags(s, ch->uid, ch->flags, ch->keywords, ch->n_keywords);
            if (s->condstore)
                imap__printf(s, " MODSEQ (%llu)", (unsigned long long)ch->modseq);
            imap__printf(s, ")\r\n");
        }
        if (s->n_uids != before) {
            imap__printf(s, "* %zu EXISTS\r\n", s->n_uids);
            claim = imap__recent_on(s);
        }
        if (c->highest_modseq > s->modseq)
            s->modseq = c->highest_modseq;
    } else if (r->status == TERN_STORE_ETOOOLD) {
        /* Past the change log's retention: nothing better to say than the count. */
        s->modseq = r->out.changes.highest_modseq;
    } else if (r->status != TERN_STORE_OK) {
        TLOG_WARN(MOD, "event=sync_failed session=%s status=%s error=\"%s\"", s->base.id,
                  tern_store_strerror(r->status), r->error);
    }
    tern_store_req_free(r);
    if (claim && imap__try_submit(s, imap__recent_req(s), imap__sync_claimed))
        return;
    imap__sync_end(s);
}

static void imap__sync(imap_session *s)
{
    s->changed = false;
    s->syncing = true;
    tern_store_req *r = imap__req(s, TERN_STORE_CHANGES);
    if (!r) {
        s->syncing = false;
        if (s->final_pending)
            imap__send_final(s);
        return;
    }
    r->in.name = s->mbox;
    r->in.since_modseq = s->modseq;
    s->step = imap__sync_done;
    s->pending++;
    if (tern_store_submit(s->base.host->store_client, r) != 0) {
        s->pending--;
        s->step = NULL;
        s->syncing = false;
        tern_store_req_free(r);
        if (s->final_pending)
            imap__send_final(s);
    }
}

static void imap__on_event(void *data, const char *account, uint64_t mailbox_id, uint64_t modseq)
{
    imap_session *s = data;
    (void)account;
    (void)modseq;
    if (s->conn_closed || s->mbox == NULL)
        return;
    if (mailbox_id != 0 && mailbox_id != s->mbox_id)
        return;
    s->changed = true;
    /* IDLE answers at once; otherwise the next command reports. */
    if (s->state == IS_IDLE && !s->syncing && s->step == NULL)
        imap__sync(s);
}

void imap__unselect(imap_session *s)
{
    if (s->watch) {
        tern_store_watch_remove(s->watch);
        s->watch = NULL;
    }
    free(s->mbox);
    s->mbox = NULL;
    free(s->uids);
    s->uids = NULL;
    s->n_uids = s->cap_uids = 0;
    free(s->saved);
    s->saved = NULL;
    s->n_saved = 0;
    imap__recent_free(s);
    imap__kw_free(s);
    s->changed = false;
    s->own_lo = s->own_hi = 0;
    if (s->state == IS_SELECTED)
        s->state = IS_AUTH;
}

/* Called by SELECT once it knows the mailbox: starts the change watch. */
void imap__selected(imap_session *s);
void imap__selected(imap_session *s)
{
    s->watch = tern_store_watch_add(s->base.host->store_client, s->user, s->mbox_id,
                                    imap__on_event, s);
    s->state = IS_SELECTED;
}

/* ---- mailbox names -------------------------------------------------------- */

char *imap__mailbox_arg(imap_session *s, tern_imap_parser *ps)
{
    char *raw;
    size_t len;
    if (!tern_imap_astring(ps, &raw, &len)) {
        imap__bad(s, ps, "expected a mailbox name");
        return NULL;
    }
    if (memchr(raw, '\0', len)) {
        imap__finish(s, "BAD", "NUL in mailbox name");
        return NULL;
    }
    char *name = raw;
    if (!s->utf8) {
        if (!tern_imap_mutf7_decode(raw, &s->arena, &name)) {
            imap__finish(s, "NO", "[CANNOT] mailbox name is not valid modified UTF-7");
            return NULL;
        }
    } else {
        for (const unsigned char *p = (const unsigned char *)raw; *p; p++)
            if (*p < 0x20) {
                imap__finish(s, "NO", "[CANNOT] control character in mailbox name");
                return NULL;
            }
    }
    if (strncasecmp(name, "INBOX", 5) == 0 && (name[5] == '\0' || name[5] == '/'))
        memcpy(name, "INBOX", 5);
    return name;
}

char *imap__sp_mailbox(imap_session *s, tern_imap_parser *ps)
{
    if (!tern_imap_sp(ps)) {
        imap__bad(s, ps, "expected a mailbox name");
        return NULL;
    }
    return imap__mailbox_arg(s, ps);
}

/* ---- the simple commands -------------------------------------------------- */

static void cmd_capability(imap_session *s, tern_imap_parser *ps)
{
    if (!tern_imap_at_end(ps)) {
        imap__bad(s, NULL, "CAPABILITY takes no arguments");
        return;
    }
    imap__printf(s, "* CAPABILITY ");
    imap__put_capabilities(s);
    imap__printf(s, "\r\n");
    imap__finish(s, "OK", "CAPABILITY completed");
}

static void cmd_noop(imap_session *s, tern_imap_parser *ps)
{
    if (!tern_imap_at_end(ps)) {
        imap__bad(s, NULL, "takes no arguments");
        return;
    }
    imap__finish(s, "OK", "%s completed", s->cmd);
}

static void cmd_logout(imap_session *s, tern_imap_parser *ps)
{
    imap__printf(s, "* BYE Logging out\r\n");
    s->bye_sent = true;
    imap__printf(s, "%s OK LOGOUT completed\r\n", s->tag);
    imap__flush(s);
    imap__unselect(s);
    s->state = IS_LOGOUT;
    s->busy = true;
    tern_conn_close(&s->conn, true);
}

static void cmd_id(imap_session *s, tern_imap_parser *ps)
{
    /* RFC 2971: the client's parameters are accepted and ignored (bounded by the parser). */
    if (!tern_imap_sp(ps)) {
        imap__bad(s, ps, "ID needs a list or NIL");
        return;
    }
    if (!tern_imap_keyword(ps, "NIL")) {
        if (!tern_imap_open(ps)) {
            imap__bad(s, ps, "bad ID list");
            return;
        }
        unsigned n = 0;
        while (!tern_imap_peek(ps, ')')) {
            char *k, *v;
            if ((n && !tern_imap_sp(ps)) || !tern_imap_string(ps, &k, NULL, false) ||
                !tern_imap_sp(ps) || !tern_imap_nstring(ps, &v) || ++n > 30) {
                imap__bad(s, ps, "bad ID list");
                return;
            }
        }
        tern_imap_close(ps);
    }
    imap__printf(s, "* ID (\"name\" \"Tern\" \"vendor\" \"Tern\")\r\n");
    imap__finish(s, "OK", "ID completed");
}

static void cmd_enable(imap_session *s, tern_imap_parser *ps)
{
    char enabled[128] = "";
    if (!tern_imap_sp(ps)) {
        imap__bad(s, ps, "ENABLE needs a capability");
        return;
    }
    for (bool first = true; !tern_imap_at_end(ps); first = false) {
        tern_imap_slice a;
        if ((!first && !tern_imap_sp(ps)) || !tern_imap_atom(ps, &a, NULL)) {
            imap__bad(s, ps, "bad ENABLE argument");
            return;
        }
        const char *name = NULL;
        if (a.len == 9 && strncasecmp(a.p, "CONDSTORE", 9) == 0 && !s->condstore) {
            s->condstore = true;
            name = "CONDSTORE";
        } else if (a.len == 7 && strncasecmp(a.p, "QRESYNC", 7) == 0 && !s->qresync) {
            s->qresync = s->condstore = true;
            name = "QRESYNC";
        } else if (a.len == 11 && strncasecmp(a.p, "UTF8=ACCEPT", 11) == 0 && !s->utf8) {
            s->utf8 = true;
            name = "UTF8=ACCEPT";
        } else if (a.len == 9 && strncasecmp(a.p, "IMAP4rev2", 9) == 0 && !s->rev2) {
            s->rev2 = s->utf8 = true;
            name = "IMAP4rev2";
        }
        if (name && strlen(enabled) + strlen(name) + 2 < sizeof(enabled)) {
            strcat(enabled, " ");
            strcat(enabled, name);
        }
    }
    imap__printf(s, "* ENABLED%s\r\n", enabled);
    imap__finish(s, "OK", "ENABLE completed");
}

static void cmd_namespace(imap_session *s, tern_imap_parser *ps)
{
    imap__printf(s, "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
    imap__finish(s, "OK", "NAMESPACE completed");
}

static void cmd_starttls(imap_session *s, tern_imap_parser *ps)
{
    if (s->lc->tls != TERN_TLS_STARTTLS || s->tls == NULL || tern_conn_is_tls(&s->conn)) {
        imap__finish(s, "BAD", tern_conn_is_tls(&s->conn) ? "TLS already active"
                                                          : "STARTTLS not available");
        return;
    }
    tern_tls_conn *t = tern_tls_conn_new(s->tls, s->li);
    if (t == NULL) {
        imap__finish(s, "NO", "[UNAVAILABLE] TLS not available");
        return;
    }
    imap__printf(s, "%s OK Begin TLS negotiation now\r\n", s->tag);
    imap__flush(s);
    s->state = IS_HANDSHAKE;
    /* Discards pipelined plaintext (RFC 9051 6.2.1, the STARTTLS injection). */
    tern_conn_starttls(&s->conn, t);
    tern_imap_reader_refuse(&s->rd);
    s->busy = false;
    tern_arena_reset(&s->arena);
}

static void cmd_check(imap_session *s, tern_imap_parser *ps)
{
    s->changed = true; /* CHECK and NOOP are where clients expect news */
    imap__finish(s, "OK", "%s completed", s->cmd);
}

static void cmd_unselect(imap_session *s, tern_imap_parser *ps)
{
    imap__unselect(s);
    imap__finish(s, "OK", "UNSELECT completed");
}

static void cmd_idle(imap_session *s, tern_imap_parser *ps)
{
    if (!tern_imap_at_end(ps)) {
        imap__bad(s, NULL, "IDLE takes no arguments");
        return;
    }
    imap__printf(s, "+ idling\r\n");
    imap__flush(s);
    /* An idle session may wait for hours: hold no output buffer meanwhile. */
    tern_buf_shrink(&s->ob, 0);
    s->state = IS_IDLE;
    s->busy = false;
    tern_conn_set_timeout(&s->conn, s->cfg->imap.idle_timeout_ms);
    if (s->mbox && s->changed)
        imap__sync(s);
}

static void imap__idle_input(imap_session *s, const uint8_t *cmd, size_t len)
{
    s->state = s->mbox ? IS_SELECTED : IS_AUTH;
    tern_conn_set_timeout(&s->conn, s->lc->timeout_ms);
    s->busy = true;
    if (len == 4 && strncasecmp((const char *)cmd, "DONE", 4) == 0) {
        if (s->syncing) {
            /* The sync in flight will send the final reply. */
            snprintf(s->final, sizeof(s->final), "%s OK IDLE terminated", s->tag);
            s->final_pending = true;
            return;
        }
        imap__finish(s, "OK", "IDLE terminated");
        return;
    }
    s->errors++;
    imap__finish(s, "BAD", "expected DONE");
}

/* ---- LOGIN and AUTHENTICATE (through protocols/common/sasl_server) ------ */

static void imap__sasl_params(imap_session *s, tern_sasl_srv_params *p)
{
    memset(p, 0, sizeof(*p));
    p->service = "imap";
    p->hostname = s->cfg->server.hostname;
    p->listener = s->lc->name;
    p->session_id = s->base.id;
    p->remote_ip = s->conn.peer_ip;
    p->tls_active = tern_conn_is_tls(&s->conn);
    p->allow_plaintext = s->lc->allow_plaintext_auth;
    /* Server-final data (SCRAM) goes as one more "+" continuation. */
    p->success_data = false;
    p->cert_account = tern_sasl_srv_cert_account(&s->conn, s->cert_account,
                                                 sizeof(s->cert_account))
                          ? s->cert_account
                          : NULL;
    tern_sasl_srv_channel_binding(&s->conn, p);
}

static void imap__logged_in(imap_session *s, const char *account, const char *mech)
{
    s->user = strdup(account);
    if (!s->user) {
        imap__finish(s, "NO", "[SERVERBUG] out of memory");
        return;
    }
    s->state = IS_AUTH;
    s->rd.max_literal = s->cfg->imap.max_literal;
    s->rd.max_command = s->cfg->imap.max_literal + s->cfg->imap.max_line;
    TLOG_INFO(MOD, "event=login session=%s ip=%s user=%s mech=%s", s->base.id, s->conn.peer_ip,
              s->user, mech ? mech : "-");
    char caps[1024];
    size_t save = s->ob.len;
    imap__put_capabilities(s);
    snprintf(caps, sizeof(caps), "%.*s", (int)(s->ob.len - save), s->ob.data + save);
    s->ob.len = save;
    imap__finish(s, "OK", "[CAPABILITY %s] Logged in", caps);
}

static void imap__sasl_cb(void *data, const tern_sasl_srv_result *r)
{
    imap_session *s = data;
    if (s->conn_closed)
        return;
    switch (r->status) {
    case TERN_SASL_SRV_CHALLENGE:
        imap__printf(s, "+ %s\r\n", r->data ? r->data : "");
        imap__flush(s);
        s->state = IS_SASL;
        s->busy = false;
        imap__continue(s);
        return;
    case TERN_SASL_SRV_SUCCESS:
        if (r->data && r->data[0]) {
            /* Not expected with success_data off; never lose it. */
            imap__printf(s, "+ %s\r\n", r->data);
        }
        s->state = IS_NOAUTH;
        s->busy = true;
        imap__logged_in(s, r->account, r->mech);
        break;
    case TERN_SASL_SRV_FAILED:
        s->state = IS_NOAUTH;
        s->busy = true;
        s->errors++;
        imap__finish(s, "NO", "[AUTHENTICATIONFAILED] Authentication failed");
        break;
    case TERN_SASL_SRV_ABORTED:
        s->state = IS_NOAUTH;
        s->busy = true;
        imap__finish(s, "BAD", "Authentication aborted");
        break;
    case TERN_SASL_SRV_MALFORMED:
        s->state = IS_NOAUTH;
        s->busy = true;
        s->errors++;
        imap__finish(s, "BAD", "Malformed authentication response");
        break;
    case TERN_SASL_SRV_TEMPFAIL:
        s->state = IS_NOAUTH;
        s->busy = true;
        imap__finish(s, "NO", "[UNAVAILABLE] Temporary authentication failure");
        break;
    }
    imap__flush(s);
}

static bool imap__sasl_ready(imap_session *s)
{
    if (s->auth == NULL) {
        imap__finish(s, "NO", "[UNAVAILABLE] No authentication configured");
        return false;
    }
    if (s->sasl == NULL)
        s->sasl = tern_sasl_srv_new(s->auth, s->base.host->loop, imap__sasl_cb, s);
    if (s->sasl == NULL) {
        imap__finish(s, "NO", "[UNAVAILABLE] Temporary authentication failure");
        return false;
    }
    return true;
}

static void cmd_login(imap_session *s, tern_imap_parser *ps)
{
    char *user, *pass;
    size_t ulen, plen;
    if (!tern_imap_sp(ps) || !tern_imap_astring(ps, &user, &ulen) || !tern_imap_sp(ps) ||
        !tern_imap_astring(ps, &pass, &plen) || !tern_imap_at_end(ps)) {
        imap__bad(s, ps, "LOGIN needs a user name and a password");
        return;
    }
    tern_sasl_srv_params p;
    imap__sasl_params(s, &p);
    if (s->auth && !tern_sasl_srv_password_allowed(s->auth, &p)) {
        s->errors++;
        imap__finish(s, "NO", "[PRIVACYREQUIRED] Use STARTTLS first");
        return;
    }
    if (ulen == 0 || ulen > TERN_AUTH_MAX_USER || memchr(user, '\0', ulen)) {
        s->errors++;
        imap__finish(s, "NO", "[AUTHENTICATIONFAILED] Authentication failed");
        return;
    }
    if (!imap__sasl_ready(s))
        return;
    if (tern_sasl_srv_password(s->sasl, &p, user, pass, plen) != 0)
        imap__finish(s, "NO", "[UNAVAILABLE] Temporary authentication failure");
}

static void cmd_authenticate(imap_session *s, tern_imap_parser *ps)
{
    tern_imap_slice mech;
    if (!tern_imap_sp(ps) || !tern_imap_atom(ps, &mech, NULL) || mech.len >= 32) {
        imap__bad(s, ps, "AUTHENTICATE needs a mechanism");
        return;
    }
    char m[32];
    memcpy(m, mech.p, mech.len);
    m[mech.len] = '\0';
    const char *initial = NULL;
    size_t ilen = 0;
    if (tern_imap_char(ps, ' ')) {
        /* RFC 4959 SASL-IR: the initial response, "=" for an empty one. */
        tern_imap_slice ir;
        if (!tern_imap_atom(ps, &ir, NULL) || ir.len > TERN_SASL_SRV_LINE_MAX) {
            imap__bad(s, ps, "bad initial response");
            return;
        }
        initial = ir.p;
        ilen = ir.len;
    }
    if (!tern_imap_at_end(ps)) {
        imap__bad(s, ps, "junk after AUTHENTICATE");
        return;
    }
    if (!imap__sasl_ready(s))
        return;
    tern_sasl_srv_params p;
    imap__sasl_params(s, &p);
    int r = tern_sasl_srv_start(s->sasl, &p, m, initial, ilen);
    if (r == TERN_SASL_SRV_ENEEDTLS) {
        s->errors++;
        imap__finish(s, "NO", "[PRIVACYREQUIRED] Use STARTTLS first");
    } else if (r == TERN_SASL_SRV_ENOMECH) {
        s->errors++;
        imap__finish(s, "NO", "[CANNOT] Unsupported authentication mechanism");
    } else if (r != 0) {
        imap__finish(s, "NO", "[UNAVAILABLE] Temporary authentication failure");
    }
}

/* A response line inside AUTHENTICATE. */
static void imap__sasl_input(imap_session *s, const uint8_t *line, size_t len)
{
    s->state = IS_NOAUTH;
    s->busy = true;
    tern_sasl_srv_response(s->sasl, (const char *)line, len);
}

/* ---- the command table ---------------------------------------------------- */

#define S_ANY (IS_NOAUTH | IS_AUTH | IS_SELECTED)
#define S_LOGGED (IS_AUTH | IS_SELECTED)

typedef struct imap_cmd_def {
    const char *name;
    unsigned states;
    bool uid_ok;   /* may follow "UID" */
    void (*handler)(imap_session *s, tern_imap_parser *ps);
} imap_cmd_def;

static const imap_cmd_def commands[] = {
    {"CAPABILITY", S_ANY, false, cmd_capability},
    {"NOOP", S_ANY, false, cmd_noop},
    {"LOGOUT", S_ANY, false, cmd_logout},
    {"ID", S_ANY, false, cmd_id},
    {"STARTTLS", IS_NOAUTH, false, cmd_starttls},
    {"LOGIN", IS_NOAUTH, false, cmd_login},
    {"AUTHENTICATE", IS_NOAUTH, false, cmd_authenticate},
    {"ENABLE", S_LOGGED, false, cmd_enable},
    {"SELECT", S_LOGGED, false, imap__cmd_select},
    {"EXAMINE", S_LOGGED, false, imap__cmd_select},
    {"CREATE", S_LOGGED, false, imap__cmd_create},
    {"DELETE", S_LOGGED, false, imap__cmd_delete},
    {"RENAME", S_LOGGED, false, imap__cmd_rename},
    {"SUBSCRIBE", S_LOGGED, false, imap__cmd_subscribe},
    {"UNSUBSCRIBE", S_LOGGED, false, imap__cmd_subscribe},
    {"LIST", S_LOGGED, false, imap__cmd_list},
    {"LSUB", S_LOGGED, false, imap__cmd_list},
    {"NAMESPACE", S_LOGGED, false, cmd_namespace},
    {"STATUS", S_LOGGED, false, imap__cmd_status},
    {"APPEND", S_LOGGED, false, imap__cmd_append},
    {"IDLE", S_LOGGED, false, cmd_idle},
    {"GETQUOTA", S_LOGGED, false, imap__cmd_quota},
    {"GETQUOTAROOT", S_LOGGED, false, imap__cmd_quota},
    {"CHECK", IS_SELECTED, false, cmd_check},
    {"CLOSE", IS_SELECTED, false, imap__cmd_close},
    {"UNSELECT", IS_SELECTED, false, cmd_unselect},
    {"EXPUNGE", IS_SELECTED, true, imap__cmd_expunge},
    {"SEARCH", IS_SELECTED, true, imap__cmd_search},
    {"SORT", IS_SELECTED, true, imap__cmd_sort},
    {"THREAD", IS_SELECTED, true, imap__cmd_sort},
    {"FETCH", IS_SELECTED, true, imap__cmd_fetch},
    {"STORE", IS_SELECTED, true, imap__cmd_store},
    {"COPY", IS_SELECTED, true, imap__cmd_copy},
    {"MOVE", IS_SELECTED, true, imap__cmd_copy},
};

static void imap__dispatch(imap_session *s, const uint8_t *cmd, size_t len)
{
    tern_imap_parser ps;
    tern_imap_parser_init(&ps, cmd, len, &s->arena, s->cfg->imap.max_depth);
    tern_imap_slice tag, name;
    s->busy = true;
    if (!tern_imap_tag_command(&ps, &tag, &name)) {
        snprintf(s->tag, sizeof(s->tag), "%s", tag.len && tag.len < 64 ? "*" : "*");
        if (tag.p && tag.len > 0 && tag.len < sizeof(s->tag)) {
            memcpy(s->tag, tag.p, tag.len);
            s->tag[tag.len] = '\0';
        }
        imap__bad(s, &ps, "missing tag or command");
        return;
    }
    if (tag.len >= sizeof(s->tag)) {
        snprintf(s->tag, sizeof(s->tag), "*");
        imap__bad(s, NULL, "tag too long");
        return;
    }
    memcpy(s->tag, tag.p, tag.len);
    s->tag[tag.len] = '\0';
    if (name.len == 3 && strncasecmp(name.p, "UID", 3) == 0) {
        s->uid_cmd = true;
        if (!tern_imap_sp(&ps) || !tern_imap_atom(&ps, &name, NULL)) {
            imap__bad(s, &ps, "UID needs a command");
            return;
        }
    }
    size_t n = name.len < sizeof(s->cmd) - 1 ? name.len : sizeof(s->cmd) - 1;
    for (size_t i = 0; i < n; i++)
        s->cmd[i] = (char)toupper((unsigned char)name.p[i]);
    s->cmd[n] = '\0';
    const imap_cmd_def *def = NULL;
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strlen(commands[i].name) == name.len &&
            strncasecmp(commands[i].name, name.p, name.len) == 0) {
            def = &commands[i];
            break;
        }
    if (def == NULL || (s->uid_cmd && !def->uid_ok)) {
        s->errors++;
        imap__finish(s, "BAD", "Unknown command");
        return;
    }
    if (!(def->states & s->state)) {
        s->errors++;
        imap__finish(s, "BAD", "%s not allowed %s", def->name,
                     s->state == IS_NOAUTH     ? "before login"
                     : s->state == IS_SELECTED ? "now"
                     : (def->states & IS_NOAUTH) ? "after login"
                                                 : "without a selected mailbox");
        return;
    }
    TLOG_DEBUG(MOD, "event=command session=%s cmd=%s%s", s->base.id, s->uid_cmd ? "UID " : "",
               s->cmd);
    def->handler(s, &ps);
}

/* ---- input ------------------------------------------------------------- */

static bool imap__too_many_errors(imap_session *s)
{
    if (s->errors < s->cfg->imap.max_errors)
        return false;
    TLOG_WARN(MOD, "event=too_many_errors session=%s ip=%s errors=%u", s->base.id,
              s->conn.peer_ip, s->errors);
    imap__printf(s, "* BYE Too many errors\r\n");
    imap__flush(s);
    s->bye_sent = true;
    s->state = IS_LOGOUT;
    tern_conn_close(&s->conn, true);
    return true;
}

static void imap__reader_error(imap_session *s, tern_imap_status st)
{
    size_t tl;
    const char *t = tern_imap_reader_tag(&s->rd, &tl);
    snprintf(s->tag, sizeof(s->tag), "%.*s", (int)tl, t);
    s->busy = true;
    s->errors++;
    switch (st) {
    case TERN_IMAP_TOO_LONG:
        imap__finish(s, "BAD", "[TOOBIG] Command line too long (limit %u octets)",
                     s->cfg->imap.max_line);
        break;
    case TERN_IMAP_LITERAL_TOO_BIG:
        imap__finish(s, "BAD", "[TOOBIG] Literal too big (limit %llu octets)",
                     (unsigned long long)s->rd.max_literal);
        break;
    default:
        imap__finish(s, "BAD", "Bad literal");
        break;
    }
}

/* A "{n}" literal: go ahead, or refuse before the client sends it. */
static void imap__literal_decision(imap_session *s)
{
    uint64_t n = tern_imap_reader_literal_size(&s->rd);
    size_t tl;
    const char *t = tern_imap_reader_tag(&s->rd, &tl);
    if (n <= s->rd.max_literal && s->rd.cmd.len + n <= s->rd.max_command) {
        tern_imap_reader_accept(&s->rd);
        tern_conn_write(&s->conn, "+ Ready for literal data\r\n", 26);
        return;
    }
    snprintf(s->tag, sizeof(s->tag), "%.*s", (int)tl, t);
    bool append = s->rd.cmd.len > tl + 7 &&
                  strncasecmp((const char *)s->rd.cmd.data + tl + 1, "APPEND", 6) == 0;
    tern_imap_reader_refuse(&s->rd);
    s->busy = true;
    s->errors++;
    if (append && s->state != IS_NOAUTH)
        imap__finish(s, "NO", "[TOOBIG] Message too big (limit %llu octets)",
                     (unsigned long long)s->rd.max_literal);
    else
        imap__finish(s, "BAD", "[TOOBIG] Literal too big (limit %llu octets)",
                     (unsigned long long)s->rd.max_literal);
}

static void imap__continue(imap_session *s);

static void imap__retry_closed(uv_handle_t *h)
{
    imap_session *s = h->data;
    free(h);
    s->pending--;
    imap__maybe_free(s);
}

static void imap__retry_fired(uv_timer_t *t)
{
    imap_session *s = t->data;
    s->retry_timer = NULL;
    uv_close((uv_handle_t *)t, imap__retry_closed);
    if (!s->conn_closed)
        imap__continue(s); /* the connection shows its buffered input again */
}

/* The SASL driver is still winding down an exchange (its failure delay's
 * timer closing): it must not be fed yet, so look at the input again on
 * the next loop turn. */
static bool imap__sasl_wait(imap_session *s)
{
    if (!s->sasl || !tern_sasl_srv_pending(s->sasl))
        return false;
    tern_conn_pause(&s->conn); /* keeps the unread input for later */
    if (s->retry_timer)
        return true;
    uv_timer_t *t = malloc(sizeof(*t));
    if (!t || uv_timer_init(s->base.host->loop, t) != 0) {
        free(t);
        return false;
    }
    t->data = s;
    s->retry_timer = t;
    s->pending++;
    uv_timer_start(t, imap__retry_fired, 1, 0);
    return true;
}

static void imap__process(imap_session *s)
{
    while (!s->busy && !s->conn_closed && !(s->state & (IS_LOGOUT | IS_HANDSHAKE))) {
        if (imap__too_many_errors(s))
            return;
        if (imap__sasl_wait(s))
            return;
        /* Replies not yet taken by the client: stop reading until they are. */
        if (tern_conn_unsent(&s->conn) > OUT_HIGH_WATER) {
            tern_conn_pause(&s->conn);
            return;
        }
        size_t len;
        const uint8_t *in = tern_conn_input(&s->conn, &len);
        if (len == 0)
            break;
        tern_imap_status st;
        size_t used = tern_imap_reader_feed(&s->rd, in, len, &st);
        tern_conn_consume(&s->conn, used);
        switch (st) {
        case TERN_IMAP_MORE:
            break;
        case TERN_IMAP_LITERAL_SYNC:
            if (s->state == IS_IDLE || s->state == IS_SASL) {
                tern_imap_reader_refuse(&s->rd);
                if (s->state == IS_IDLE) {
                    imap__idle_input(s, (const uint8_t *)"", 0);
                } else {
                    tern_sasl_srv_free(s->sasl);
                    s->sasl = NULL;
                    s->state = IS_NOAUTH;
                    s->busy = true;
                    imap__finish(s, "BAD", "Malformed authentication response");
                }
                break;
            }
            imap__literal_decision(s);
            break;
        case TERN_IMAP_COMMAND: {
            size_t cl;
            const uint8_t *c = tern_imap_reader_command(&s->rd, &cl);
            tern_conn_set_timeout(&s->conn, s->lc->timeout_ms);
            if (s->state == IS_IDLE) {
                imap__idle_input(s, c, cl);
                break;
            }
            if (s->state == IS_SASL) {
                imap__sasl_input(s, c, cl);
                break;
            }
            if (cl == 0)
                break; /* an empty line: nothing to answer */
            imap__dispatch(s, c, cl);
            break;
        }
        default:
            if (s->state == IS_IDLE) {
                imap__idle_input(s, (const uint8_t *)"", 0);
                break;
            }
            if (s->state == IS_SASL) {
                /* An over-long response ends the exchange. */
                tern_sasl_srv_free(s->sasl);
                s->sasl = NULL;
                s->state = IS_NOAUTH;
            }
            imap__reader_error(s, st);
            break;
        }
        imap__flush(s);
    }
    imap__flush(s);
    if (s->busy && !s->conn_closed)
        tern_conn_pause(&s->conn);
    else
        tern_imap_reader_shrink(&s->rd);
}

static void imap__continue(imap_session *s)
{
    if (s->conn_closed || s->busy || (s->state & IS_LOGOUT))
        return;
    tern_conn_resume(&s->conn);
}

/* ---- connection callbacks ------------------------------------------------- */

static void imap__greet(imap_session *s)
{
    s->state = IS_NOAUTH;
    imap__printf(s, "* OK [CAPABILITY ");
    imap__put_capabilities(s);
    imap__printf(s, "] %s Tern IMAP ready\r\n", s->cfg->server.hostname);
    imap__flush(s);
    tern_conn_set_timeout(&s->conn, s->lc->timeout_ms);
}

static void imap__on_data(tern_conn *c)
{
    imap__process(c->data);
}

static void imap__on_tls(tern_conn *c)
{
    imap_session *s = c->data;
    TLOG_INFO(MOD, "event=tls session=%s version=%s cipher=%s", s->base.id,
              tern_tls_conn_version(c->tls), tern_tls_conn_cipher(c->tls));
    if (s->lc->tls == TERN_TLS_IMPLICIT && s->state == IS_HANDSHAKE) {
        imap__greet(s);
        return;
    }
    s->state = IS_NOAUTH;
    tern_conn_set_timeout(&s->conn, s->lc->timeout_ms);
    imap__continue(s);
}

static void imap__on_timeout(tern_conn *c)
{
    imap_session *s = c->data;
    TLOG_INFO(MOD, "event=timeout session=%s state=%d", s->base.id, (int)s->state);
    if (!(s->state & IS_HANDSHAKE)) {
        imap__printf(s, "* BYE Autologout; idle for too long\r\n");
        imap__flush(s);
    }
    s->state = IS_LOGOUT;
    tern_conn_close(&s->conn, true);
}

static void imap__on_error(tern_conn *c, const char *reason)
{
    imap_session *s = c->data;
    TLOG_DEBUG(MOD, "event=connection_error session=%s reason=\"%s\"", s->base.id, reason);
    s->state = IS_LOGOUT;
}

static void imap__on_drain(tern_conn *c)
{
    imap_session *s = c->data;
    if (s->job && s->job_waits_drain) {
        s->job_waits_drain = false;
        imap__fetch_resume(s);
        return;
    }
    if (s->conn.paused && tern_conn_unsent(c) <= OUT_HIGH_WATER / 2)
        imap__continue(s);
}

static void imap__free(imap_session *s)
{
    imap__fetch_free(s);
    imap__unselect(s);
    tern_sasl_srv_free(s->sasl);
    if (s->auth)
        tern_auth_unref(s->auth);
    free(s->user);
    tern_imap_reader_free(&s->rd);
    tern_arena_free(&s->arena);
    tern_buf_free(&s->ob);
    tern_config_unref(s->cfg);
    if (s->tls)
        tern_tls_server_unref(s->tls);
    free(s);
}

static void imap__maybe_free(imap_session *s)
{
    if (s->conn_closed && s->pending == 0)
        imap__free(s);
}

static void imap__on_close(tern_conn *c)
{
    imap_session *s = c->data;
    TLOG_INFO(MOD, "event=disconnect session=%s ip=%s user=%s errors=%u bytes_in=%llu "
                   "bytes_out=%llu ms=%llu",
              s->base.id, c->peer_ip, s->user ? s->user : "-", s->errors,
              (unsigned long long)c->bytes_in, (unsigned long long)c->bytes_out,
              (unsigned long long)(tern_now_ms() - s->started_ms));
    s->conn_closed = true;
    s->state = IS_LOGOUT;
    if (s->watch) {
        tern_store_watch_remove(s->watch);
        s->watch = NULL;
    }
    tern_sasl_srv_free(s->sasl); /* its callback must not run on a closed session */
    s->sasl = NULL;
    if (s->retry_timer) {
        uv_timer_stop(s->retry_timer);
        uv_close((uv_handle_t *)s->retry_timer, imap__retry_closed);
        s->retry_timer = NULL;
    }
    tern_session_unlink(&s->base);
    imap__maybe_free(s);
}

static const tern_conn_cbs imap_conn_cbs = {
    .on_data = imap__on_data,
    .on_tls = imap__on_tls,
    .on_timeout = imap__on_timeout,
    .on_error = imap__on_error,
    .on_drain = imap__on_drain,
    .on_close = imap__on_close,
};

/* ---- drain ------------------------------------------------------------ */

static void imap__drain(tern_session *base)
{
    imap_session *s = (imap_session *)base;
    s->draining = true;
    if (s->busy || s->conn_closed || s->bye_sent)
        return; /* the running command ends first (imap__end_command) */
    if (!(s->state & IS_HANDSHAKE)) {
        imap__printf(s, "* BYE Server shutting down\r\n");
        imap__flush(s);
    }
    s->bye_sent = true;
    s->state = IS_LOGOUT;
    tern_conn_close(&s->conn, true);
}

static void imap__shutdown(tern_session *base)
{
    imap_session *s = (imap_session *)base;
    if (s->conn_closed)
        return;
    if (!s->bye_sent && !(s->state & IS_HANDSHAKE)) {
        imap__printf(s, "* BYE Server shutting down\r\n");
        imap__flush(s);
    }
    s->bye_sent = true;
    s->state = IS_LOGOUT;
    tern_conn_close(&s->conn, true);
}

static const tern_session_ops imap_session_ops = {
    .drain = imap__drain,
    .shutdown = imap__shutdown,
};

/* ---- creation --------------------------------------------------------- */

int tern_imap_session_start(tern_session_host *h, tern_session_args *a)
{
    imap_session *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        close(a->fd);
        tern_config_unref(a->cfg);
        if (a->tls)
            tern_tls_server_unref(a->tls);
        if (a->auth)
            tern_auth_unref(a->auth);
        return UV_ENOMEM;
    }
    const tern_config *cfg = a->cfg;
    s->base.ops = &imap_session_ops;
    tern_uuid(s->base.id);
    s->cfg = a->cfg;
    s->tls = a->tls;
    s->auth = a->auth;
    s->li = a->listener;
    s->lc = &cfg->listeners[a->listener];
    s->started_ms = tern_now_ms();
    tern_arena_init(&s->arena, 2048);
    tern_buf_init(&s->ob, 0);
    tern_imap_reader_init(&s->rd, cfg->imap.max_line, PREAUTH_LITERAL_MAX,
                          PREAUTH_LITERAL_MAX + cfg->imap.max_line);
    memcpy(&s->base.peer, &a->peer, sizeof(s->base.peer));
    tern_session_link(h, &s->base);
    int r = tern_conn_init(&s->conn, h->loop, &h->conn_worker, a->fd, s->lc->buffer_size,
                           &imap_conn_cbs, s);
    if (r < 0) {
        tern_session_unlink(&s->base);
        imap__free(s);
        return 0;
    }
    if (r > 0) {
        s->state = IS_LOGOUT;
        return 0;
    }
    TLOG_INFO(MOD, "event=connect session=%s ip=%s port=%d listener=%s", s->base.id,
              s->conn.peer_ip, s->conn.peer_port, s->lc->name);
    if (s->lc->tls == TERN_TLS_IMPLICIT) {
        tern_tls_conn *t = s->tls ? tern_tls_conn_new(s->tls, s->li) : NULL;
        if (t == NULL) {
            TLOG_ERR(MOD, "event=tls_unavailable session=%s", s->base.id);
            s->state = IS_LOGOUT;
            tern_conn_close(&s->conn, false);
            return 0;
        }
        s->state = IS_HANDSHAKE;
        tern_conn_set_timeout(&s->conn, s->lc->timeout_ms);
        tern_conn_start(&s->conn, t);
        return 0;
    }
    imap__greet(s);
    tern_conn_start(&s->conn, NULL);
    return 0;
}
