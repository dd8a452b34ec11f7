/* IMAP ENVELOPE, BODY and BODYSTRUCTURE (RFC 9051 7.5.2) written from
 * lib/mime.h's tree of a message and lib/address.h's address lists: the
 * octet and line counts are the parser's, section numbering follows its
 * tree (Dovecot's shape). Input: the tree and raw header values of an
 * untrusted message (bounded by the parser's limits). */
#include <stdio.h>
#include <string.h>

#include "lib/address.h"
#include "protocols/imap/imap_session_int.h"

static void put_nstring(imap_session *s, const char *v)
{
    if (v == NULL) {
        imap__printf(s, "NIL");
        return;
    }
    imap__put_string(s, v, strlen(v));
}

static void put_addresses(imap_session *s, tern_arena *a, const char *field)
{
    if (field == NULL) {
        imap__printf(s, "NIL");
        return;
    }
    size_t n = 0;
    tern_address *list = tern_address_list_parse(a, field, strlen(field), 0, &n);
    if (list == NULL) {
        imap__printf(s, "NIL");
        return;
    }
    imap__printf(s, "(");
    for (const tern_address *ad = list; ad; ad = ad->next) {
        switch (ad->kind) {
        case TERN_ADDRESS_GROUP_START:
            imap__printf(s, "(NIL NIL ");
            put_nstring(s, ad->name ? ad->name : "");
            imap__printf(s, " NIL)");
            break;
        case TERN_ADDRESS_GROUP_END:
            imap__printf(s, "(NIL NIL NIL NIL)");
            break;
        default:
            imap__printf(s, "(");
            put_nstring(s, ad->name);
            imap__printf(s, " ");
            put_nstring(s, ad->route);
            imap__printf(s, " ");
            /* A NIL host would read as a group marker (RFC 9051 7.5.2): a
             * broken address gets Dovecot's placeholders instead. "<>" keeps
             * its empty local part and NIL host. */
            put_nstring(s, ad->local ? ad->local : "MISSING_MAILBOX");
            imap__printf(s, " ");
            put_nstring(s, ad->domain ? ad->domain
                                      : ad->local && !*ad->local ? NULL : "MISSING_DOMAIN");
            imap__printf(s, ")");
            break;
        }
    }
    imap__printf(s, ")");
}

void imap__put_envelope(imap_session *s, tern_arena *a, const tern_mime_envelope *e)
{
    static const tern_mime_envelope none = {0};
    if (e == NULL)
        e = &none;
    imap__printf(s, "(");
    put_nstring(s, e->date);
    imap__printf(s, " ");
    put_nstring(s, e->subject);
    imap__printf(s, " ");
    put_addresses(s, a, e->from);
    imap__printf(s, " ");
    /* RFC 9051 7.5.2: Sender and Reply-To default to From. */
    put_addresses(s, a, e->sender ? e->sender : e->from);
    imap__printf(s, " ");
    put_addresses(s, a, e->reply_to ? e->reply_to : e->from);
    imap__printf(s, " ");
    put_addresses(s, a, e->to);
    imap__printf(s, " ");
    put_addresses(s, a, e->cc);
    imap__printf(s, " ");
    put_addresses(s, a, e->bcc);
    imap__printf(s, " ");
    put_nstring(s, e->in_reply_to);
    imap__printf(s, " ");
    put_nstring(s, e->message_id);
    imap__printf(s, ")");
}

/* `charset`, when not NULL, is added last unless a charset parameter is
 * there: a text part always shows its charset, the default included. */
static void put_params(imap_session *s, const tern_mime_param *p, const char *charset)
{
    for (const tern_mime_param *q = p; q && charset; q = q->next)
        if (strcmp(q->name, "charset") == 0)
            charset = NULL;
    if (p == NULL && charset == NULL) {
        imap__printf(s, "NIL");
        return;
    }
    imap__printf(s, "(");
    bool first = true;
    for (; p; p = p->next, first = false) {
        if (!first)
            imap__printf(s, " ");
        if (p->extended) {
            char name[256];
            snprintf(name, sizeof(name), "%s*", p->name);
            put_nstring(s, name);
        } else {
            put_nstring(s, p->name);
        }
        imap__printf(s, " ");
        put_nstring(s, p->raw ? p->raw : p->value);
    }
    if (charset) {
        imap__printf(s, "%s\"charset\" ", first ? "" : " ");
        put_nstring(s, charset);
    }
    imap__printf(s, ")");
}

static void put_disposition(imap_session *s, const tern_mime_part *p)
{
    if (p->disposition == NULL) {
        imap__printf(s, "NIL");
        return;
    }
    imap__printf(s, "(");
    put_nstring(s, p->disposition);
    imap__printf(s, " ");
    put_params(s, p->disposition_params, NULL);
    imap__printf(s, ")");
}

/* body-ext-1part / body-ext-mpart tail: disposition, language, location. */
static void put_ext_tail(imap_session *s, const tern_mime_part *p)
{
    imap__printf(s, " ");
    put_disposition(s, p);
    imap__printf(s, " ");
    put_nstring(s, p->language);
    imap__printf(s, " ");
    put_nstring(s, p->location);
}

void imap__put_body(imap_session *s, tern_arena *a, const tern_mime_part *p, bool ext)
{
    if (p->flags & TERN_MIME_F_MULTIPART) {
        imap__printf(s, "(");
        if (p->children == NULL) {
            /* A multipart whose boundary never came still needs one body. */
            imap__printf(s, "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)");
        }
        for (const tern_mime_part *c = p->children; c; c = c->next)
            imap__put_body(s, a, c, ext);
        imap__printf(s, " ");
        put_nstring(s, p->subtype);
        if (ext) {
            imap__printf(s, " ");
            put_params(s, p->params, NULL);
            put_ext_tail(s, p);
        }
        imap__printf(s, ")");
        return;
    }
    imap__printf(s, "(");
    put_nstring(s, p->type);
    imap__printf(s, " ");
    put_nstring(s, p->subtype);
    imap__printf(s, " ");
    put_params(s, p->params, p->charset);
    imap__printf(s, " ");
    put_nstring(s, p->content_id);
    imap__printf(s, " ");
    put_nstring(s, p->description);
    imap__printf(s, " ");
    put_nstring(s, p->encoding_name ? p->encoding_name : "7bit");
    imap__printf(s, " %llu", (unsigned long long)p->body_size);
    if ((p->flags & TERN_MIME_F_MESSAGE) && p->children) {
        imap__printf(s, " ");
        imap__put_envelope(s, a, p->children->envelope);
        imap__printf(s, " ");
        imap__put_body(s, a, p->children, ext);
        imap__printf(s, " %llu", (unsigned long long)p->body_lines);
    } else if (p->type && strcmp(p->type, "text") == 0) {
        imap__printf(s, " %llu", (unsigned long long)p->body_lines);
    }
    if (ext) {
        imap__printf(s, " ");
        put_nstring(s, p->md5);
        put_ext_tail(s, p);
    }
    imap__printf(s, ")");
}
