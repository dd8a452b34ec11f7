/* The MIME structure parser (RFC 2045-2049): fed a message's bytes in any
 * chunking, it builds the tree of parts with the offsets and sizes IMAP
 * (BODYSTRUCTURE, BODY[section], BINARY), JMAP and the mailets need. It
 * keeps no body bytes: the caller keeps the message and uses the offsets.
 * Input: untrusted message bytes. It never fails on malformed input (only
 * when out of memory); every count is capped by tern_mime_limits.
 *
 * Offsets are from the start of the message. For every part:
 *   header_offset <= body_offset <= body_end
 *   header = [header_offset, body_offset), the blank line included;
 *   body   = [body_offset, body_end). A part followed by a boundary line
 *            ends before the line end (CRLF or bare LF) that precedes the
 *            boundary: that line end belongs to the boundary (RFC 2046
 *            5.1.1), and IMAP counts sizes that way. A header cut by a
 *            boundary keeps its last line end (the body is then empty),
 *            and a container ends no earlier than its last child: both
 *            as Dovecot counts. The last part of the message ends at the
 *            end of the input.
 * header_lines and body_lines count the LF bytes in those spans (IMAP
 * body-fld-lines); a last line without a line end is not counted.
 *
 * Tree shape (the same as Dovecot's, so IMAP section numbers follow):
 *  - the root is the message itself (header_offset 0);
 *  - a multipart has one child per body part, in order; the preamble and
 *    epilogue are in the multipart's body and in no child;
 *  - a message/rfc822 or message/global part has exactly one child: the
 *    encapsulated message, whose header starts at the parent's body_offset
 *    and whose body ends at the parent's body_end. Even when (against RFC
 *    2046) it is base64 or QP encoded: Dovecot parses the encoded text as
 *    the message, and so do we, with TERN_MIME_F_ENCODED_MESSAGE set so
 *    that JMAP and the mailets know to decode it (tern_mime_part_decode)
 *    and parse that instead.
 *
 * How malformed input degrades (modelled on Dovecot's parser):
 *  - no Content-Type, or one that does not parse as type/subtype: text/plain
 *    with charset=us-ascii (RFC 2045 5.2); message/rfc822 inside a
 *    multipart/digest (RFC 2046 5.1.5); TERN_MIME_F_DEFAULT_TYPE is set;
 *  - a multipart without a usable boundary parameter (missing or empty) is
 *    a leaf and reads as text/plain (TERN_MIME_F_NO_BOUNDARY;
 *    declared_type/subtype keep what it said), so its text stays readable.
 *    Dovecot instead answers an empty multipart (one empty text/plain);
 *  - a boundary longer than TERN_MIME_BOUNDARY_MAX is matched on its
 *    first TERN_MIME_BOUNDARY_MAX characters (Dovecot's rule); its close
 *    delimiter is still recognised when the whole boundary (up to 200
 *    characters) is followed by "--";
 *  - a Content-Type without a subtype ("text") is the default text/plain
 *    (RFC 2045 5.2; Dovecot answers "text" ""); a missing ';' before a
 *    parameter is tolerated (Dovecot drops the whole field);
 *  - a boundary line is "--" + boundary at a line start; what follows the
 *    boundary on that line is ignored (transport padding and worse, so
 *    "--abcdef" is a line of boundary "abc", as in Dovecot), "--" right
 *    after it makes it the close delimiter. When several open
 *    boundaries match (one is a prefix of another), the longest wins, then
 *    the innermost: so an inner boundary that is a prefix of an outer one
 *    does not end the outer multipart;
 *  - a boundary line of an outer multipart ends every part inside it; the
 *    inner multiparts that never saw their close delimiter, and any that
 *    reach the end of input open, get TERN_MIME_F_NO_END;
 *  - a boundary line inside a part's header ends the header there (the
 *    part then has an empty body; TERN_MIME_F_HEADER_NO_END, also set
 *    when the input ends inside a header);
 *  - a multipart whose boundary never appears has no children (IMAP must
 *    still write one body for it: Dovecot writes an empty text/plain);
 *  - past max_depth or max_parts, a would-be container is a leaf (its
 *    bytes are opaque body) and reads as application/octet-stream
 *    (TERN_MIME_F_LIMIT); reaching max_parts also stops looking for
 *    boundaries, so the rest of the message is body of the open parts;
 *  - a header longer than max_header_bytes ends there; the rest is body.
 *
 * Parameters (Content-Type, Content-Disposition) are parsed leniently:
 * comments skipped, values quoted or not, an unquoted value may hold
 * spaces up to the next ';' (whitespace then a comment or another
 * "name=" ends it), junk between parameters skipped, the first of
 * duplicates kept. RFC 2231 continuations (name*0, name*1*, ...)
 * are joined and the extended form's charset converted to UTF-8 (language
 * kept) and win over a plain parameter of the same name; RFC 2047
 * encoded-words in plain values are decoded too (invalid, but what many
 * mailers write for filenames). An extended boundary*= is used by value. */
#ifndef TERN_MIME_H
#define TERN_MIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/arena.h"
#include "lib/buf.h"

#define TERN_MIME_BOUNDARY_MAX 80 /* RFC 2046 says 70; longer ones are matched on this prefix */

typedef struct tern_mime_limits {
    unsigned max_depth;      /* nesting of containers; default 32 */
    size_t max_parts;        /* parts in the whole tree; default 1000 */
    size_t max_header_bytes; /* per part header; default 256 KiB */
} tern_mime_limits;

typedef struct tern_mime_param tern_mime_param;
struct tern_mime_param {
    tern_mime_param *next;
    const char *name;     /* lowercase, without the RFC 2231 "*n*" suffix */
    const char *value;    /* decoded: UTF-8, NUL-terminated, controls as spaces */
    size_t value_len;
    /* As written, quotes and backslashes removed; for RFC 2231 forms, the
     * sections joined: when extended, one "charset'lang'%XX..." value (every
     * byte not an attribute-char percent-encoded), else the plain text.
     * What IMAP BODYSTRUCTURE sends. NUL-terminated (cut at a NUL inside). */
    const char *raw;
    bool extended;        /* name* / name*0* form: raw is percent-encoded */
    const char *charset;  /* RFC 2231 charset, or NULL */
    const char *language; /* RFC 2231 language, or NULL */
};

typedef enum {
    TERN_MIME_ENC_7BIT = 0, /* also the default when the header is missing */
    TERN_MIME_ENC_8BIT,
    TERN_MIME_ENC_BINARY,
    TERN_MIME_ENC_QP,
    TERN_MIME_ENC_BASE64,
    TERN_MIME_ENC_OTHER,    /* x-uuencode and the like: not decoded */
} tern_mime_encoding;

enum {
    TERN_MIME_F_MULTIPART = 1 << 0,        /* parsed as multipart: children are body parts */
    TERN_MIME_F_MESSAGE = 1 << 1,          /* parsed as message/rfc822|global: one child */
    TERN_MIME_F_DEFAULT_TYPE = 1 << 2,     /* no (valid) Content-Type: the default applies */
    TERN_MIME_F_NO_BOUNDARY = 1 << 3,      /* multipart without a usable boundary */
    TERN_MIME_F_NO_END = 1 << 4,           /* multipart whose close delimiter never came */
    TERN_MIME_F_LIMIT = 1 << 5,            /* not descended into: max_depth or max_parts */
    TERN_MIME_F_ENCODED_MESSAGE = 1 << 6,  /* a message part with base64/QP (see above) */
    TERN_MIME_F_HEADER_TRUNCATED = 1 << 7, /* header cut by max_header_bytes */
    TERN_MIME_F_HEADER_NO_END = 1 << 8,    /* header ended by a boundary or the input end */
};

/* The fields IMAP ENVELOPE needs, raw (unfolded, trimmed; NULL if absent;
 * the first occurrence counts). Kept for the root and every encapsulated
 * message; parse the address fields with lib/address.h. */
typedef struct tern_mime_envelope {
    const char *date, *subject, *from, *sender, *reply_to, *to, *cc, *bcc, *in_reply_to,
        *message_id;
} tern_mime_envelope;

typedef struct tern_mime_part tern_mime_part;
struct tern_mime_part {
    tern_mime_part *parent;
    tern_mime_part *next;        /* next sibling */
    tern_mime_part *children;    /* first child */
    tern_mime_part *last_child;
    size_t n_children;
    unsigned depth;              /* root 0; a child or encapsulated message +1 */
    unsigned flags;              /* TERN_MIME_F_* */

    uint64_t header_offset, body_offset, body_end;
    uint64_t header_size, body_size; /* body_offset - header_offset, body_end - body_offset */
    uint64_t header_lines, body_lines;

    /* The structural type (see above for the degraded cases), lowercase. */
    const char *type, *subtype;
    const char *declared_type, *declared_subtype; /* as the header said (lowercased) or the default */
    tern_mime_param *params;     /* Content-Type parameters, in order */
    const char *charset;         /* the charset param, or "us-ascii" for text/ (default); else NULL */
    const char *boundary;        /* a parsed multipart's boundary as matched, or NULL */

    tern_mime_encoding encoding;
    const char *encoding_name;   /* lowercase token; "7bit" when absent */

    /* Raw values (unfolded, trimmed), NULL when absent. NUL-terminated;
     * a NUL byte inside the field cuts them there. */
    const char *content_id, *description, *language, *location, *md5;
    const char *disposition;     /* lowercase token, or NULL */
    tern_mime_param *disposition_params;

    tern_mime_envelope *envelope; /* the root and encapsulated messages; else NULL */
};

typedef struct tern_mime_parser tern_mime_parser;

/* The tree is allocated in `a` and lives as long as it; the parser itself
 * is malloc'd (about 20 KiB) and freed by tern_mime_parser_free. lim may
 * be NULL; zero members mean the default. NULL when out of memory. */
tern_mime_parser *tern_mime_parser_new(tern_arena *a, const tern_mime_limits *lim);

/* Consumes all of data[0..len). Returns 0, or -1 when out of memory (the
 * parser is then useless: free it). */
int tern_mime_parser_feed(tern_mime_parser *p, const uint8_t *data, size_t len);

/* The input is over: closes every open part and returns the root (NULL
 * only when out of memory). Call once. */
tern_mime_part *tern_mime_parser_finish(tern_mime_parser *p);

void tern_mime_parser_free(tern_mime_parser *p);

/* The same in one call over a whole message. */
tern_mime_part *tern_mime_parse(tern_arena *a, const uint8_t *msg, size_t len,
                                const tern_mime_limits *lim);

/* Number of parts in the tree (the root included). */
size_t tern_mime_count_parts(const tern_mime_part *root);

/* A parameter by (case-insensitive) name, or NULL. */
const tern_mime_param *tern_mime_param_get(const tern_mime_param *list, const char *name);

/* Parses a Content-Type, Content-Disposition or Content-Transfer-Encoding
 * value into lowercase token(s) and parameters (the parser uses it; the
 * mailets may too). *type_r gets the first token; with subtype_r given,
 * "type/subtype" is split (*subtype_r NULL when there is no subtype).
 * Returns 0, -1 if the value does not start with a token (*type_r is then
 * NULL; parameters are still read), -2 when out of memory. */
int tern_mime_parse_content_value(tern_arena *a, const char *value, size_t len,
                                  const char **type_r, const char **subtype_r,
                                  tern_mime_param **params_r);

/* ---- IMAP sections (RFC 3501 6.4.5) -------------------------------------- */

/* The part that section "N.N.N" (digits and dots only, no HEADER/TEXT...)
 * names, or NULL. As in IMAP: a message/rfc822 part's subparts are those
 * of the message it encapsulates; a non-multipart has only part 1 (itself).
 * So for a result `p`:
 *   BODY[sec]          = p's body (for message/rfc822: the whole message)
 *   BODY[sec.MIME]     = p's header
 *   BODY[sec.HEADER] / BODY[sec.TEXT] = the header / body of
 *                        p->children when p is a message (TERN_MIME_F_MESSAGE).
 * An empty section ("") is the root. */
const tern_mime_part *tern_mime_part_by_section(const tern_mime_part *root, const char *section,
                                                size_t len);

/* ---- Content --------------------------------------------------------------- */

/* Appends the part's body, transfer-decoded (base64, QP; others as they
 * are), to out: IMAP BINARY. msg/len is the whole message the tree was
 * parsed from. Returns 0 or TERN_BUF_E*. */
int tern_mime_part_decode(const tern_mime_part *part, const uint8_t *msg, size_t len, tern_buf *out);

/* Appends the part's body transfer-decoded and converted from its charset
 * to UTF-8 (always valid UTF-8). Returns 0 or TERN_BUF_E*. */
int tern_mime_part_text(const tern_mime_part *part, const uint8_t *msg, size_t len, tern_buf *out);

/* True if the part is an attachment: Content-Disposition attachment, or a
 * filename, or a leaf that is neither text/plain nor text/html, or an
 * encapsulated message (which is listed, not descended into). */
bool tern_mime_part_is_attachment(const tern_mime_part *part);

/* "The text body": the first text/plain part that is not an attachment,
 * else (if allow_html) the first such text/html, looking outside
 * encapsulated messages. NULL when there is none. */
const tern_mime_part *tern_mime_find_text(const tern_mime_part *root, bool allow_html);

/* Appends the text body as UTF-8 (an HTML one roughly converted to plain
 * text: tags dropped, block tags as line breaks, common entities decoded).
 * *part_r (may be NULL) gets the part used. Returns 0, 1 when there is no
 * text body (nothing appended), or TERN_BUF_E*. */
int tern_mime_text_body(const tern_mime_part *root, const uint8_t *msg, size_t len, tern_buf *out,
                        const tern_mime_part **part_r);

typedef struct tern_mime_attachment tern_mime_attachment;
struct tern_mime_attachment {
    tern_mime_attachment *next;
    const tern_mime_part *part;
    const char *filename;  /* UTF-8 (RFC 2231/2047 decoded), or NULL */
    const char *type;      /* "type/subtype" as declared (or defaulted), lowercase */
    uint64_t size;         /* decoded size, estimated from the encoded body */
};

/* The attachments in tree order (see tern_mime_part_is_attachment), in `a`.
 * *count_r (may be NULL) gets their number. NULL when none (or no memory). */
tern_mime_attachment *tern_mime_attachments(tern_arena *a, const tern_mime_part *root,
                                            size_t *count_r);

/* The filename of a part: Content-Disposition filename, else Content-Type
 * name (decoded, UTF-8), else NULL. */
const char *tern_mime_part_filename(const tern_mime_part *part);

#endif
