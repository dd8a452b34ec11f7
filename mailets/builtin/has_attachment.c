/* Matcher HasAttachment: every recipient when some part of the message is
 * an attachment, none otherwise. A part is an attachment when its
 * Content-Disposition is "attachment" or carries a filename parameter, or
 * its Content-Type carries a name parameter (RFC 2231 forms included). The
 * structure comes from lib/mime.h, the parser IMAP and JMAP use, so what
 * matches here is what a client is shown as a part; its bounds (depth,
 * parts, header bytes) apply. The message is fed as it is now (header
 * fields a mailet changed included) without copying the body. Input: the
 * message, untrusted bytes; the parser never fails on malformed MIME, only
 * when out of memory (then the matcher cannot decide). An attached message
 * that is base64 or QP encoded is not looked into. */
#include <string.h>

#include "lib/arena.h"
#include "lib/mime.h"
#include "mailets/builtin/matcher_util.h"

static int ha_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    *state_r = NULL;
    return tern_matcher_no_condition(p, "HasAttachment", err, size);
}

static bool is_attachment(const tern_mime_part *part)
{
    if (part->disposition && strcmp(part->disposition, "attachment") == 0)
        return true;
    return tern_mime_param_get(part->disposition_params, "filename") != NULL ||
           tern_mime_param_get(part->params, "name") != NULL;
}

/* Depth is bounded by the parser's max_depth. */
static bool any_attachment(const tern_mime_part *part)
{
    if (is_attachment(part))
        return true;
    /* A base64/QP message/rfc822: its child is the encoded text parsed as
     * if it were a message, which says nothing. */
    if (part->flags & TERN_MIME_F_ENCODED_MESSAGE)
        return false;
    for (const tern_mime_part *c = part->children; c; c = c->next)
        if (any_attachment(c))
            return true;
    return false;
}

static int feed_header(tern_mime_parser *p, const tern_mail *m)
{
    for (size_t i = 0; i < m->n_fields; i++) {
        const tern_mail_field *f = &m->fields[i];
        if (f->raw) {
            /* raw_len, not strlen: the sender's bytes may hold a NUL. */
            if (tern_mime_parser_feed(p, (const uint8_t *)f->raw, f->raw_len) != 0)
                return -1;
            continue;
        }
        if (tern_mime_parser_feed(p, (const uint8_t *)f->name, strlen(f->name)) != 0 ||
            tern_mime_parser_feed(p, (const uint8_t *)": ", 2) != 0 ||
            tern_mime_parser_feed(p, (const uint8_t *)f->value, strlen(f->value)) != 0 ||
            tern_mime_parser_feed(p, (const uint8_t *)"\r\n", 2) != 0)
            return -1;
    }
    return tern_mime_parser_feed(p, (const uint8_t *)"\r\n", 2);
}

static int ha_match(void *state, tern_mail *m, bool *matched)
{
    tern_arena a;
    tern_arena_init(&a, 8192);
    tern_mime_parser *p = tern_mime_parser_new(&a, NULL);
    int r = -1;
    if (p && feed_header(p, m) == 0 &&
        tern_mime_parser_feed(p, tern_mail_body_data(m), (size_t)tern_mail_body_size(m)) == 0) {
        const tern_mime_part *root = tern_mime_parser_finish(p);
        if (root) {
            tern_matcher_all(m, matched, any_attachment(root));
            r = 0;
        }
    }
    tern_mime_parser_free(p);
    tern_arena_free(&a);
    if (r != 0)
        tern_mail_log(m, TERN_MAILET_LOG_WARN, "HasAttachment: out of memory parsing MIME");
    return r;
}

static const tern_mailet_module tern_mb_has_attachment = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "HasAttachment",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = ha_init,
    .match = ha_match,
};
TERN_BUILTIN(tern_mb_has_attachment)
