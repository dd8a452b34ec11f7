/* Pure, resumable SMTP parsers: no I/O, no allocation beyond the fixed
 * buffers passed in, every length capped. Input: raw bytes from the network,
 * trusted in nothing. Four parts:
 *   - the command line reader (bytes -> one command line at a time),
 *   - argument parsers for EHLO/HELO, MAIL FROM, RCPT TO, BDAT, AUTH,
 *   - the DATA reader (dot-unstuffing, end at <CRLF>.<CRLF> only, bare CR/LF
 *     detection, text-line length),
 *   - the header scanner (counts Received: headers of the message header
 *     section, for loop detection).
 * Each resumes exactly where it stopped when fed the next span, so a caller
 * may feed one byte at a time. */
#ifndef TERN_SMTP_PARSER_H
#define TERN_SMTP_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- command lines ---------------------------------------------------- */

typedef enum {
    TERN_SMTP_CMD_UNKNOWN = 0,
    TERN_SMTP_CMD_HELO, TERN_SMTP_CMD_EHLO, TERN_SMTP_CMD_MAIL, TERN_SMTP_CMD_RCPT,
    TERN_SMTP_CMD_DATA, TERN_SMTP_CMD_BDAT, TERN_SMTP_CMD_RSET, TERN_SMTP_CMD_NOOP,
    TERN_SMTP_CMD_QUIT, TERN_SMTP_CMD_VRFY, TERN_SMTP_CMD_EXPN, TERN_SMTP_CMD_HELP,
    TERN_SMTP_CMD_STARTTLS, TERN_SMTP_CMD_AUTH,
    TERN_SMTP_CMD__COUNT
} tern_smtp_verb;

typedef struct tern_smtp_slice {
    const char *p;
    size_t len;
} tern_smtp_slice;

typedef struct tern_smtp_cmd {
    tern_smtp_verb verb;
    tern_smtp_slice name; /* the verb as sent (for UNKNOWN replies) */
    tern_smtp_slice args; /* after the verb and one or more spaces, trailing spaces trimmed */
} tern_smtp_cmd;

typedef enum {
    TERN_SMTP_LINE_MORE = 0,  /* all input consumed, no complete line yet */
    TERN_SMTP_LINE_OK,        /* one command in *cmd (slices into the reader's buffer,
                                 valid until the next feed) */
    TERN_SMTP_LINE_TOO_LONG,  /* a line past the limit was read and discarded up to
                                 its end: reply 500 5.5.2 */
    TERN_SMTP_LINE_BAD_CHAR,  /* NUL or other forbidden byte in the line: reply 500 5.5.2 */
} tern_smtp_line_status;

typedef struct tern_smtp_line_reader {
    char *buf;       /* caller-provided storage of `max` bytes (line limit incl. CRLF) */
    size_t max;
    size_t len;
    bool overflow;   /* discarding the rest of an over-long line */
    bool bad;        /* a forbidden byte was seen in this line */
} tern_smtp_line_reader;

void tern_smtp_line_init(tern_smtp_line_reader *r, char *buf, size_t max);
/* Consumes bytes up to and including the end of at most one line (CRLF; a
 * bare LF also ends a command line, as real MTAs accept). Returns the number
 * of bytes consumed; *status says what happened. Call again with the rest. */
size_t tern_smtp_line_feed(tern_smtp_line_reader *r, const uint8_t *data, size_t len,
                           tern_smtp_cmd *cmd, tern_smtp_line_status *status);

/* ---- command arguments ------------------------------------------------ */

typedef struct tern_smtp_mail_args {
    tern_smtp_slice path;  /* reverse-path without <>, may be empty (null sender) */
    bool has_size; uint64_t size;
    int body;              /* -1 not given, else TERN_BODY_* from spool.h (0 7BIT, 1 8BITMIME, 2 BINARYMIME) */
    bool smtputf8;
    int ret;               /* 0 not given, 1 FULL, 2 HDRS */
    tern_smtp_slice envid; /* raw xtext, empty if not given */
    tern_smtp_slice auth;  /* AUTH= value, empty if not given */
    bool requiretls;       /* REQUIRETLS (RFC 8689); the session checks it came over TLS */
} tern_smtp_mail_args;

typedef struct tern_smtp_rcpt_args {
    tern_smtp_slice path;  /* forward-path without <> ("postmaster" allowed bare of a domain) */
    uint8_t notify;        /* TERN_NOTIFY_* bits, 0 when not given */
    tern_smtp_slice orcpt; /* raw "addr-type;xtext", empty if not given */
} tern_smtp_rcpt_args;

/* Results of argument parsing: 0 OK, or one of these (the session picks the
 * reply code from it). */
#define TERN_SMTP_ESYNTAX   (-1) /* 501 5.5.4 / 501 5.1.7 for bad paths */
#define TERN_SMTP_EPATH     (-2) /* 553 5.1.3 / 501 5.1.7: malformed address */
#define TERN_SMTP_EPARAM    (-3) /* 555 5.5.4: unknown or repeated parameter */
#define TERN_SMTP_EUTF8     (-4) /* non-ASCII address without SMTPUTF8: 553 5.6.7 */

/* "FROM:<path> [params]" (case-insensitive FROM:, optional space after ':'
 * tolerated). `utf8_ok` : SMTPUTF8 was given (checked inside for MAIL). */
int tern_smtp_parse_mail(const char *args, size_t len, tern_smtp_mail_args *out);
/* "TO:<path> [params]"; `smtputf8` from the transaction. */
int tern_smtp_parse_rcpt(const char *args, size_t len, bool smtputf8, tern_smtp_rcpt_args *out);
/* EHLO/HELO argument: a domain or an address literal. 0 or TERN_SMTP_ESYNTAX. */
int tern_smtp_parse_helo(const char *args, size_t len, tern_smtp_slice *domain_r);
/* "<size> [LAST]". 0 or TERN_SMTP_ESYNTAX. */
int tern_smtp_parse_bdat(const char *args, size_t len, uint64_t *size_r, bool *last_r);
/* "mechanism [initial-response]" (RFC 4954 4): the mechanism is 1*20 of
 * letters, digits, '-' and '_'; the response is base64 or "=" (empty). The
 * response slice is empty when absent. 0 or TERN_SMTP_ESYNTAX. */
int tern_smtp_parse_auth(const char *args, size_t len, tern_smtp_slice *mech_r,
                         tern_smtp_slice *initial_r);
/* xtext (RFC 3461 4) decode into out (at most out_size-1 bytes, NUL
 * terminated). Returns decoded length or -1 on bad xtext / overflow. */
long tern_smtp_xtext_decode(const char *in, size_t len, char *out, size_t out_size);
/* Splits a mailbox "local@domain" (domain may be an address literal):
 * returns 0 and the domain slice, or -1. Quoted local parts are honoured. */
int tern_smtp_mailbox_domain(const char *path, size_t len, tern_smtp_slice *domain_r);

/* ---- DATA ------------------------------------------------------------- */

typedef enum {
    TERN_SMTP_DATA_MORE = 0, /* consumed all input; end not reached */
    TERN_SMTP_DATA_END,      /* <CRLF>.<CRLF> seen; bytes after it are not consumed */
} tern_smtp_data_status;

/* Errors are latched, not returned, so the reader keeps consuming until the
 * real end of data and the session replies once, after the final dot. */
#define TERN_SMTP_DATA_ERR_BARE_LF   0x01 /* a bare LF (not preceded by CR) */
#define TERN_SMTP_DATA_ERR_BARE_CR   0x02 /* a CR not followed by LF */
#define TERN_SMTP_DATA_ERR_LONG_LINE 0x04 /* a line longer than max_line (CRLF included) */
#define TERN_SMTP_DATA_ERR_NUL       0x08 /* a NUL byte */

typedef struct tern_smtp_data_reader {
    size_t max_line;   /* e.g. 1000 */
    bool normalize;    /* bare LF / bare CR become CRLF in the output instead of
                          latching an error; they still never end the data */
    /* private state */
    int state;
    size_t line_len;
    unsigned errors;   /* TERN_SMTP_DATA_ERR_* latched */
    uint64_t out_bytes;
} tern_smtp_data_reader;

void tern_smtp_data_init(tern_smtp_data_reader *r, size_t max_line, bool normalize);
/* Reads a span of DATA input. Un-stuffed message bytes (CRLF line endings)
 * are written to `out` (capacity out_cap, which must be >= 2*len + 3 so any
 * normalisation fits); *out_len_r is set to what was written. Returns bytes
 * consumed; *status says whether the end was reached. */
size_t tern_smtp_data_feed(tern_smtp_data_reader *r, const uint8_t *in, size_t len, uint8_t *out,
                           size_t out_cap, size_t *out_len_r, tern_smtp_data_status *status);

/* ---- header section scanner ------------------------------------------- */

typedef struct tern_smtp_hdr_scan {
    int state;
    bool done;           /* the blank line ending the header section was seen */
    uint32_t received;   /* count of Received: header fields */
    bool has_message_id; /* a Message-ID: field was seen */
    bool has_date;       /* a Date: field was seen */
    size_t match;        /* private */
    int which;           /* private: the field name being matched */
    bool at_line_start;  /* private */
} tern_smtp_hdr_scan;

void tern_smtp_hdr_scan_init(tern_smtp_hdr_scan *h);
/* Feed message bytes (after un-stuffing); stops counting at the end of the
 * header section. */
void tern_smtp_hdr_scan_feed(tern_smtp_hdr_scan *h, const uint8_t *data, size_t len);

const char *tern_smtp_verb_name(tern_smtp_verb v);

#endif
