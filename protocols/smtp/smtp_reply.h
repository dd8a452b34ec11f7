/* The SMTP client's side of the grammar: a pure, resumable parser of
 * server replies (RFC 5321 4.2: "250-..." continuation lines, then
 * "250 ..."), with the enhanced status code (RFC 3463) taken apart, and
 * the EHLO keyword parser that tells the client what the peer offers.
 * Input: bytes from a remote server, untrusted: every length is capped, a
 * malformed reply is reported as such (the client treats it as a
 * temporary failure of that peer), never a crash.
 *
 * Leniency, as real servers need: a bare LF ends a line too; a code
 * followed by end of line ("250\r\n") is a last line; continuation lines
 * whose code differs from the first make the reply malformed. */
#ifndef TERN_SMTP_REPLY_H
#define TERN_SMTP_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TERN_SMTP_REPLY_LINE_MAX 2048 /* RFC 5321 says 512; servers overshoot */
#define TERN_SMTP_REPLY_TEXT_MAX 8192 /* all lines' text, joined with '\n' */
#define TERN_SMTP_REPLY_LINES_MAX 128

typedef enum {
    TERN_REPLY_MORE = 0,  /* need more bytes */
    TERN_REPLY_DONE,      /* a whole reply is in the parser's result */
    TERN_REPLY_MALFORMED, /* not an SMTP reply: give up on the connection */
} tern_reply_status;

typedef struct tern_smtp_reply {
    int code;               /* 200..599 */
    char enhanced[16];      /* "2.1.0" from the first line, or "" */
    char text[TERN_SMTP_REPLY_TEXT_MAX]; /* lines' text after the code (and the enhanced
                                            code of each line), joined with '\n' */
    size_t text_len;
    size_t lines;
    bool truncated;         /* text or a line was cut */
} tern_smtp_reply;

typedef struct tern_reply_parser {
    char line[TERN_SMTP_REPLY_LINE_MAX];
    size_t line_len;
    bool line_long;         /* the current line went past the cap */
    tern_smtp_reply r;
    bool in_reply;
} tern_reply_parser;

void tern_reply_parser_init(tern_reply_parser *p);
/* Consumes bytes up to the end of one reply; *used_r says how many. On
 * DONE the reply is in p->r until the next call (which starts a new one);
 * the rest of the input (pipelined replies) is for the next call. */
tern_reply_status tern_reply_parse(tern_reply_parser *p, const uint8_t *data, size_t len,
                                   size_t *used_r);

/* What an EHLO reply offers (RFC 5321 and the extensions a client uses). */
typedef struct tern_ehlo_caps {
    bool pipelining, eightbitmime, smtputf8, chunking, binarymime, dsn, starttls,
        enhancedstatuscodes, requiretls;
    bool size_given;
    uint64_t size;          /* SIZE n: 0 = no limit announced */
    char auth[256];         /* AUTH mechanisms, space separated, uppercased */
} tern_ehlo_caps;

/* Parses the keywords of a 250 EHLO reply (its text, lines after the
 * first). Unknown keywords are ignored. */
void tern_ehlo_caps_parse(const tern_smtp_reply *r, tern_ehlo_caps *caps);

/* The reply class: 2 success, 3 intermediate, 4 temporary, 5 permanent. */
static inline int tern_reply_class(const tern_smtp_reply *r)
{
    return r->code / 100;
}

#endif
