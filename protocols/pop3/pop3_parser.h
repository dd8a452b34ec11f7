/* Pure, resumable POP3 parsers (RFC 1939, RFC 2449, RFC 5034): no I/O, no
 * allocation beyond the buffers passed in, every length capped. Input: raw
 * bytes from the network, trusted in nothing. Three parts:
 *   - the command line reader (bytes -> one line at a time),
 *   - the command splitter (keyword, arguments, strict numbers),
 *   - the multi-line response writer's state machine: message bytes from
 *     the store -> CRLF lines, byte-stuffed, cut after the header and N
 *     body lines for TOP, ended by ".".
 * Each resumes exactly where it stopped when fed the next span, so a caller
 * may feed one byte at a time. */
#ifndef TERN_POP3_PARSER_H
#define TERN_POP3_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- command lines ---------------------------------------------------- */

typedef enum {
    TERN_POP3_LINE_MORE = 0, /* all input consumed, no complete line yet */
    TERN_POP3_LINE_OK,       /* one line in buf[0..len) (no CRLF, NUL-terminated) */
    TERN_POP3_LINE_TOO_LONG, /* a line past the limit was read and discarded up to its end */
    TERN_POP3_LINE_BAD_CHAR, /* a NUL or another control byte (not TAB) in the line */
} tern_pop3_line_status;

typedef struct tern_pop3_line_reader {
    char *buf;     /* caller's storage of `max` bytes: the limit, CRLF included */
    size_t max;
    size_t len;
    bool overflow; /* discarding the rest of an over-long line */
    bool bad;      /* a forbidden byte was seen in this line */
    bool cr;       /* the last byte was CR */
    bool done;     /* buf holds a returned line: start afresh at the next feed */
} tern_pop3_line_reader;

void tern_pop3_line_init(tern_pop3_line_reader *r, char *buf, size_t max);
/* Consumes bytes up to and including the end of at most one line (CRLF; a
 * bare LF also ends a line, as clients on Unix send). Returns how many bytes
 * were consumed; *st_r says whether a line is ready. After OK, TOO_LONG or
 * BAD_CHAR the reader is ready for the next line. */
size_t tern_pop3_line_feed(tern_pop3_line_reader *r, const uint8_t *in, size_t len,
                           tern_pop3_line_status *st_r);

/* ---- commands --------------------------------------------------------- */

typedef enum {
    TERN_POP3_CMD_UNKNOWN = 0,
    TERN_POP3_CMD_USER, TERN_POP3_CMD_PASS, TERN_POP3_CMD_APOP, TERN_POP3_CMD_AUTH,
    TERN_POP3_CMD_STLS, TERN_POP3_CMD_CAPA, TERN_POP3_CMD_STAT, TERN_POP3_CMD_LIST,
    TERN_POP3_CMD_RETR, TERN_POP3_CMD_DELE, TERN_POP3_CMD_NOOP, TERN_POP3_CMD_RSET,
    TERN_POP3_CMD_TOP, TERN_POP3_CMD_UIDL, TERN_POP3_CMD_QUIT, TERN_POP3_CMD_UTF8,
    TERN_POP3_CMD_LANG,
    TERN_POP3_CMD__COUNT
} tern_pop3_verb;

typedef struct tern_pop3_slice {
    const char *p;
    size_t len;
} tern_pop3_slice;

#define TERN_POP3_MAX_ARGS 2

typedef struct tern_pop3_cmd {
    tern_pop3_verb verb;
    tern_pop3_slice name;  /* the keyword as sent */
    tern_pop3_slice rest;  /* everything after the keyword and one space, verbatim (PASS:
                              a password may contain spaces, RFC 1939 7) */
    tern_pop3_slice args[TERN_POP3_MAX_ARGS]; /* space-separated arguments */
    size_t n_args;
    bool extra_args;       /* more than TERN_POP3_MAX_ARGS arguments */
    bool empty_arg;        /* two spaces in a row, or a trailing space */
} tern_pop3_cmd;

/* Splits a line (as the reader returned it). Returns 0, or -1 when the
 * keyword is empty or longer than 4 characters (RFC 1939 3) or not
 * letters/digits: the caller answers -ERR. Slices point into line. */
int tern_pop3_parse_command(const char *line, size_t len, tern_pop3_cmd *cmd);
const char *tern_pop3_verb_name(tern_pop3_verb v);

/* A message number or line count: decimal digits only (no sign, no
 * spaces), at most 10 digits and at most `max`. Returns 0 or -1. */
int tern_pop3_parse_number(tern_pop3_slice s, uint64_t max, uint64_t *n_r);

/* ---- multi-line responses --------------------------------------------- */

/* Turns a message's bytes into the lines of a RETR or TOP response: bare
 * LF becomes CRLF, a line starting with "." gets one more (RFC 1939 3),
 * TOP stops after the header, the blank line and `top_lines` body lines,
 * and finish() ends the last line if the message did not and adds ".". */
typedef struct tern_pop3_stuffer {
    bool top;            /* TOP: stop after top_lines body lines */
    uint64_t top_lines;
    uint64_t body_lines; /* body lines emitted so far */
    bool in_body;        /* the blank line that ends the header was passed */
    bool line_start;     /* at the beginning of a line */
    bool line_empty;     /* the current line has no bytes yet (header end detection) */
    bool cr;             /* a CR was held back (CRLF or a lone CR?) */
    bool done;           /* TOP reached its end: ignore the rest */
    uint64_t out_bytes;  /* emitted so far (for the log) */
} tern_pop3_stuffer;

void tern_pop3_stuffer_init(tern_pop3_stuffer *s, bool top, uint64_t top_lines);
/* Consumes from in and writes to out (at most out_cap bytes). Returns the
 * number of input bytes consumed; *out_len_r the bytes written. Consumes
 * everything as long as out_cap >= 2 * len + 2 (the worst case). */
size_t tern_pop3_stuffer_feed(tern_pop3_stuffer *s, const uint8_t *in, size_t len, uint8_t *out,
                              size_t out_cap, size_t *out_len_r);
/* Whether TOP has emitted all it wants (the caller may stop reading). */
bool tern_pop3_stuffer_done(const tern_pop3_stuffer *s);
/* Writes the end: a CRLF if a line is open, then ".\r\n". Needs 5 bytes of
 * room; returns the bytes written. */
size_t tern_pop3_stuffer_finish(tern_pop3_stuffer *s, uint8_t *out, size_t out_cap);

#endif
