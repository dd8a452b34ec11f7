/* The keywords an IMAP session lists in FLAGS and PERMANENTFLAGS for the
 * selected mailbox (RFC 9051 7.3.5): read from the store at SELECT, then
 * grown whenever the session writes a message's FLAGS with a keyword the
 * client has not been told about (its own STORE, another session's, an
 * APPEND), in which case FLAGS and PERMANENTFLAGS go out again before the
 * command's tagged reply. Keywords compare without case (a mailbox has one
 * spelling of each); the list is bounded like the store's answer.
 * Input trusted: keywords from the store (IMAP atoms). */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "protocols/imap/imap_session_int.h"

void imap__kw_free(imap_session *s)
{
    for (size_t i = 0; i < s->n_kw; i++)
        free(s->kw[i]);
    free(s->kw);
    s->kw = NULL;
    s->n_kw = 0;
    s->kw_changed = false;
}

static bool listed(const imap_session *s, const char *k)
{
    for (size_t i = 0; i < s->n_kw; i++)
        if (strcasecmp(s->kw[i], k) == 0)
            return true;
    return false;
}

/* Adds k unless listed or the list is full; true when added. */
static bool add(imap_session *s, const char *k)
{
    if (k == NULL || *k == '\0' || s->n_kw >= TERN_STORE_MAILBOX_KEYWORDS_MAX || listed(s, k))
        return false;
    if (s->kw == NULL) {
        s->kw = malloc(TERN_STORE_MAILBOX_KEYWORDS_MAX * sizeof(*s->kw));
        if (s->kw == NULL)
            return false;
    }
    char *c = strdup(k);
    if (c == NULL)
        return false;
    s->kw[s->n_kw++] = c;
    return true;
}

void imap__kw_take(imap_session *s, const tern_store_req *r)
{
    if (r->status != TERN_STORE_OK)
        return; /* FLAGS lists the system flags only; keywords still work (\*) */
    for (size_t i = 0; i < r->out.n_names; i++)
        add(s, r->out.names[i]);
}

void imap__kw_note(imap_session *s, char **kw, size_t n)
{
    if (s->mbox == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        if (add(s, kw[i]))
            s->kw_changed = true;
}

void imap__put_flag_lists(imap_session *s)
{
    static const char sys[] = "\\Answered \\Flagged \\Deleted \\Seen \\Draft";
    imap__printf(s, "* FLAGS (%s", sys);
    for (size_t i = 0; i < s->n_kw; i++)
        imap__printf(s, " %s", s->kw[i]);
    imap__printf(s, ")\r\n");
    if (s->readonly) {
        imap__printf(s, "* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n");
        return;
    }
    imap__printf(s, "* OK [PERMANENTFLAGS (%s", sys);
    for (size_t i = 0; i < s->n_kw; i++)
        imap__printf(s, " %s", s->kw[i]);
    imap__printf(s, " \\*)] Flags permitted\r\n");
    s->kw_changed = false;
}

void imap__kw_report(imap_session *s)
{
    if (s->kw_changed && s->mbox)
        imap__put_flag_lists(s);
    s->kw_changed = false;
}
