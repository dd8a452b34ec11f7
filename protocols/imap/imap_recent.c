/* \Recent for the IMAP session (RFC 3501 2.3.2; RFC 9051 dropped it, so a
 * session that enabled IMAP4rev2 neither claims nor reports it). SELECT
 * claims the mailbox's recent messages through the store, which hands each
 * one to a single session; the session keeps the UIDs it got (a bounded
 * range list, imap_uidlist.h) and claims again whenever a sync finds new
 * messages, so mail that arrives while it is selected is recent for the
 * first session to notice it. EXAMINE only looks (RFC 3501 6.3.2: it must
 * not take \Recent away from others).
 * Input trusted: store answers. */
#include "lib/log.h"
#include "protocols/imap/imap_session_int.h"

/* At most this many UID ranges per session (8 bytes each): past it the
 * oldest stop being recent. Each range is two parameters of a SEARCH
 * RECENT, so this also keeps such a search far from the store's limits. */
#define IMAP_RECENT_MAX_RANGES 256

bool imap__recent_on(const imap_session *s)
{
    return !s->rev2;
}

void imap__recent_free(imap_session *s)
{
    tern_imap_uidlist_free(&s->recent);
}

void imap__recent_reset(imap_session *s)
{
    tern_imap_uidlist_free(&s->recent);
    tern_imap_uidlist_init(&s->recent, IMAP_RECENT_MAX_RANGES);
}

tern_store_req *imap__recent_req(imap_session *s)
{
    tern_store_req *r = imap__req(s, TERN_STORE_RECENT_CLAIM);
    if (r) {
        r->in.name = s->mbox;
        r->in.recent_peek = s->readonly;
    }
    return r;
}

void imap__recent_take(imap_session *s, const tern_store_req *r)
{
    if (r->status != TERN_STORE_OK) {
        /* Not worth failing the command for: the messages are simply not
         * recent for this session (and stay recent for the next one). */
        TLOG_WARN(MOD, "event=recent_claim_failed session=%s status=%s error=\"%s\"", s->base.id,
                  tern_store_strerror(r->status), r->error);
        return;
    }
    bool dropped = s->recent.dropped;
    for (size_t i = 0; i < r->out.n_uids; i++)
        if (tern_imap_uidlist_add(&s->recent, r->out.uids[i]) != 0)
            break; /* out of memory: the rest are not recent for us */
    if (s->recent.dropped && !dropped)
        TLOG_INFO(MOD, "event=recent_bounded session=%s ranges=%d", s->base.id,
                  IMAP_RECENT_MAX_RANGES);
}

size_t imap__recent_count(const imap_session *s)
{
    return tern_imap_uidlist_count_in(&s->recent, s->uids, s->n_uids);
}

bool imap__recent_has(const imap_session *s, uint32_t uid)
{
    return tern_imap_uidlist_has(&s->recent, uid);
}
