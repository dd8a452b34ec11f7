/* What the store keeps from a message's header section so that SEARCH,
 * SORT, THREAD and JMAP queries never re-read message files for header
 * criteria: the fields clients ask for, and every header field (name and
 * unfolded, RFC 2047-decoded value) for HEADER searches. Built once at
 * append by both backends. Input: message bytes (untrusted); everything is
 * bounded (header section read up to 256 KiB, 1000 fields, 8 KiB a value). */
#ifndef TERN_STORE_INDEX_H
#define TERN_STORE_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "lib/arena.h"

typedef struct tern_index_field {
    char *name;      /* lowercased */
    char *value;     /* unfolded, RFC 2047 words decoded to UTF-8, trimmed */
} tern_index_field;

typedef struct tern_msg_index {
    int64_t date;            /* Date: as unix seconds; 0 when absent or unparsable */
    char *subject;           /* decoded */
    char *base_subject;      /* RFC 5256 base subject (Re:, Fwd:, [tags] removed), lowercased */
    char *from, *to, *cc, *bcc, *reply_to, *sender; /* decoded display forms */
    char *message_id;        /* without <>, or NULL */
    char **references;       /* message-ids from References then In-Reply-To, without <>,
                                oldest first, duplicates removed */
    size_t n_references;
    char *in_reply_to;       /* first id of In-Reply-To, or NULL */
    tern_index_field *fields;
    size_t n_fields;
    uint64_t header_size;    /* bytes up to and including the blank line */
    uint64_t body_offset;
    uint32_t lines;          /* total lines of the message */
} tern_msg_index;

/* Parses the header section of a message. Everything is allocated in `a`.
 * Never fails on bad input: it indexes what it can. Returns 0, or -1 only
 * when out of memory. */
int tern_msg_index_build(tern_arena *a, const uint8_t *msg, size_t len, tern_msg_index *out);

/* Case-insensitive substring test over UTF-8 (ASCII case folding; other
 * characters compared as bytes), as IMAP SEARCH needs. */
int tern_index_contains(const char *haystack, size_t hlen, const char *needle, size_t nlen);

/* BODY/TEXT criteria need the body: a streaming matcher fed the message
 * bytes, in any chunking, that decodes quoted-printable and base64 text
 * parts well enough to match what the user sees (RFC 9051 6.4.4 leaves the
 * details to the server).
 *
 * Feed it the WHOLE message, header section included: it parses the
 * header for the MIME structure (Content-Type, boundaries, transfer
 * encodings, charsets). If the first line is not a header field (the
 * caller fed only the bytes after the header section), the input is taken
 * as a text/plain body, so feeding from body_offset still works for plain
 * messages but loses the MIME decoding. Text parts (text/x, and parts with
 * no Content-Type) are decoded (QP, base64, charset to UTF-8) and matched;
 * message/rfc822 parts are walked into; other parts (images,
 * application/x) are skipped. Matching is ASCII case-insensitive, over
 * UTF-8, across chunk boundaries, not across parts. An empty needle
 * matches every message. State is bounded (about 24 KiB, most of it the
 * header parser) whatever the input. Text in UTF-8, in no declared charset
 * or in one iconv does not know is matched as UTF-8 where valid and as
 * Latin-1 elsewhere (as header values are decoded); bytes a known charset
 * rejects become U+FFFD. HTML is matched with its markup.
 *
 * tern_body_matcher_new matches the body only (BODY); _new_text also
 * matches every header field, as "name: decoded value" (TEXT). */
typedef struct tern_body_matcher tern_body_matcher;
tern_body_matcher *tern_body_matcher_new(const char *needle);
tern_body_matcher *tern_body_matcher_new_text(const char *needle);
void tern_body_matcher_feed(tern_body_matcher *m, const uint8_t *data, size_t len);
int tern_body_matcher_found(const tern_body_matcher *m);
void tern_body_matcher_free(tern_body_matcher *m);

/* Search compiled to SQL for one backend dialect. Criteria the SQL can
 * answer (flags, dates, sizes, uids, modseq, header fields via the index
 * tables) go into `where`; BODY/TEXT criteria are left to tern_body_matcher
 * after the SQL has narrowed the candidates (`needs_body` set). The SQL is
 * written against the table and column names in storage/schema.md, which
 * both backends follow. Parameters are returned as strings, in order.
 *
 * Placeholders: SQLite gets "?" (bind the params after the caller's own,
 * in order); PostgreSQL gets "$N" numbered from `first_param`, so a caller
 * writing "m.mailbox_id = $1 AND (where)" passes 2. Numeric parameters are
 * cast in the SQL (CAST(? AS INTEGER), $N::bigint), so binding every
 * parameter as text is right.
 *
 * With BODY/TEXT, `where` is a superset of the answer (a body criterion
 * counts as true, or as false under an odd number of NOTs), and each
 * candidate row must be checked:
 *  - needs_eval == 0: every BODY/TEXT criterion sits in a chain of ANDs
 *    from the root; a candidate is an answer when every needle of
 *    tern_search_body_nodes() is found (a TEXT node with a matcher from
 *    tern_body_matcher_new_text, a BODY node with tern_body_matcher_new).
 *  - needs_eval == 1 (a BODY/TEXT criterion under OR or NOT): run the same
 *    matchers, fill a tern_search_row for the candidate and keep it when
 *    tern_search_eval() says so.
 * SENTBEFORE/SENTSINCE use m.hdr_date, or m.internal_date when the message
 * has no usable Date: (hdr_date = 0), as other IMAP servers do.
 * Returns 0, or -1 when out of memory or the tree is deeper than
 * TERN_SEARCH_MAX_DEPTH. */
#define TERN_SEARCH_MAX_DEPTH 64
typedef enum { TERN_SQL_SQLITE, TERN_SQL_POSTGRES } tern_sql_dialect;
typedef struct tern_sql {
    char *where;             /* a boolean expression over table m (messages) */
    char **params;
    size_t n_params;
    int needs_body;
    int needs_eval;          /* see above */
} tern_sql;
struct tern_search;
int tern_search_to_sql(tern_arena *a, const struct tern_search *s, tern_sql_dialect d,
                       int first_param, tern_sql *out);

/* The BODY and TEXT nodes of a tree in pre-order (the order of
 * tern_search_row.body_found). Stores up to `max` of them in nodes (may be
 * NULL with max 0) and returns how many there are. */
size_t tern_search_body_nodes(const struct tern_search *s, const struct tern_search **nodes,
                              size_t max);

/* One message as the C evaluator sees it, for trees SQL cannot answer alone. */
typedef struct tern_search_row {
    uint32_t uid;
    unsigned flags;               /* TERN_FLAG_* */
    const char *const *keywords;  /* compared case-insensitively */
    size_t n_keywords;
    int64_t internal_date;
    int64_t hdr_date;             /* 0: none */
    uint64_t size;
    uint64_t modseq;
    const tern_index_field *fields;  /* the headers table rows (name lowercased) */
    size_t n_fields;
    const unsigned char *body_found; /* per tern_search_body_nodes(): nonzero if found */
    size_t n_body;
} tern_search_row;

/* Evaluates the whole tree over `row`, with the same semantics as the SQL
 * (header values compared with tern_index_contains). Returns 1 or 0. */
int tern_search_eval(const struct tern_search *s, const tern_search_row *row);

#endif
