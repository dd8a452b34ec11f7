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
 * bytes after the header section, in any chunking, that decodes
 * quoted-printable and base64 text parts well enough to match what the
 * user sees (RFC 9051 6.4.4 leaves the details to the server). */
typedef struct tern_body_matcher tern_body_matcher;
tern_body_matcher *tern_body_matcher_new(const char *needle);
void tern_body_matcher_feed(tern_body_matcher *m, const uint8_t *data, size_t len);
int tern_body_matcher_found(const tern_body_matcher *m);
void tern_body_matcher_free(tern_body_matcher *m);

/* Search compiled to SQL for one backend dialect. Criteria the SQL can
 * answer (flags, dates, sizes, uids, modseq, header fields via the index
 * tables) go into `where`; BODY/TEXT criteria are left to tern_body_matcher
 * after the SQL has narrowed the candidates (`needs_body` set). The SQL is
 * written against the table and column names in storage/schema.md, which
 * both backends follow. Parameters are returned as strings, in order. */
typedef enum { TERN_SQL_SQLITE, TERN_SQL_POSTGRES } tern_sql_dialect;
typedef struct tern_sql {
    char *where;             /* a boolean expression over table m (messages) */
    char **params;
    size_t n_params;
    int needs_body;
} tern_sql;
struct tern_search;
int tern_search_to_sql(tern_arena *a, const struct tern_search *s, tern_sql_dialect d, tern_sql *out);

#endif
