/* A resumable parser for an RFC 5322 header section (also a MIME part's
 * header): fed any chunking of the bytes, it hands out one field at a time
 * and says where the header section ends. Input: untrusted message bytes;
 * it never fails, every count and length is capped, and bytes are passed
 * through as they are (NULs and 8-bit included: decoding is the caller's).
 *
 * Rules, lenient where mail in the wild is:
 *  - a line ends at LF; a CR just before the LF is part of the line end;
 *  - the section ends at the first empty line (CRLF or bare LF), which is
 *    counted in the header size, or when the total limit is reached, or at
 *    the end of input (tern_header_parser_finish);
 *  - a line starting with SP or HTAB continues the previous field (obs-fold
 *    included); the value is handed out unfolded (the line breaks removed,
 *    the whitespace kept) and trimmed of leading and trailing whitespace;
 *  - a line that is not "name:" (no colon, an empty name, a name with
 *    spaces or control characters inside, like an mbox "From " line) is
 *    skipped with its continuation lines, and counted in `skipped_lines`;
 *    WSP between the name and the colon is allowed (obs-optional);
 *  - fields past max_fields are read (the section still ends in the right
 *    place) but not handed out; a value longer than max_value is cut and
 *    the field marked truncated. */
#ifndef TERN_HEADER_H
#define TERN_HEADER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TERN_HEADER_NAME_MAX 128     /* longer names are not field names */
#define TERN_HEADER_VALUE_MAX 16384  /* hard cap of the value buffer */

typedef struct tern_header_limits {
    size_t max_total;   /* header section bytes; default 256 KiB */
    size_t max_fields;  /* fields handed out; default 1000 */
    size_t max_value;   /* value bytes kept, <= TERN_HEADER_VALUE_MAX; default 8 KiB */
} tern_header_limits;

/* A field, valid until the next call on the parser. Not NUL-terminated. */
typedef struct tern_header_field {
    const char *name;
    size_t name_len;
    const char *value;   /* unfolded, trimmed; may hold NUL, CR and 8-bit bytes */
    size_t value_len;
    uint64_t offset;     /* where the field's first line starts in the input */
    bool truncated;      /* the value was longer than max_value */
} tern_header_field;

typedef enum {
    TERN_HEADER_MORE = 0,  /* every byte given was used; feed more */
    TERN_HEADER_FIELD,     /* a field is in *field_r */
    TERN_HEADER_END,       /* the header section is over */
} tern_header_event;

typedef struct tern_header_parser {
    tern_header_limits lim;
    int state;
    bool pending;          /* a field is being collected */
    bool skip_cont;        /* continuation lines belong to a skipped line */
    bool ended;
    bool truncated_total;  /* ended by max_total, not by an empty line */
    size_t name_len, value_len;
    bool value_truncated;
    uint64_t field_offset;
    uint64_t size;         /* bytes consumed so far: the header size once ended */
    size_t n_fields;       /* fields seen (including those past max_fields) */
    size_t skipped_lines;
    char name[TERN_HEADER_NAME_MAX];
    char value[TERN_HEADER_VALUE_MAX];
} tern_header_parser;

/* lim may be NULL for the defaults; zero members also mean the default. */
void tern_header_parser_init(tern_header_parser *p, const tern_header_limits *lim);

/* Reads from data[0..len) until it has an event. *used_r is how many bytes
 * were consumed (possibly fewer than len: call again with the rest). After
 * TERN_HEADER_END, p->size is the header size (the body starts there) and
 * further calls consume nothing and return TERN_HEADER_END. */
tern_header_event tern_header_parser_feed(tern_header_parser *p, const uint8_t *data, size_t len,
                                          size_t *used_r, tern_header_field *field_r);

/* The input is over: returns the last pending field, then TERN_HEADER_END. */
tern_header_event tern_header_parser_finish(tern_header_parser *p, tern_header_field *field_r);

/* Case-insensitive (ASCII) comparison of a field name with `name`. */
bool tern_header_name_is(const tern_header_field *f, const char *name);

#endif
