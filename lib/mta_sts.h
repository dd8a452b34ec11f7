/* MTA-STS (RFC 8461) and TLS-RPT (RFC 8460) text formats: the policy file
 * served at https://mta-sts.<domain>/.well-known/mta-sts.txt, the
 * `_mta-sts` and `_smtp._tls` TXT records, the head of the HTTP response
 * that carries the policy, and the rule that matches an MX host against
 * the policy's `mx:` patterns. Pure: no I/O, no allocation; the parsers
 * are resumable over byte spans (any split gives the same result).
 * Input: untrusted bytes from DNS and from a web server; every length and
 * count is capped and going past a cap is an error with a reason. */
#ifndef TERN_MTA_STS_H
#define TERN_MTA_STS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Limits. RFC 8461 3.3: senders may limit the policy body (64 KiB is the
 * suggested cap); a line of a policy is far shorter in practice. */
#define TERN_STS_POLICY_MAX (64 * 1024)
#define TERN_STS_LINE_MAX 1024
#define TERN_STS_MX_MAX 32
#define TERN_STS_NAME_MAX 254          /* a host name pattern, with "*." */
#define TERN_STS_ID_MAX 32             /* RFC 8461 3.1: 1*32(ALPHA / DIGIT) */
#define TERN_STS_MAX_AGE_MAX 31557600u /* RFC 8461 3.2: about one year */
#define TERN_STS_HTTP_HEAD_MAX 8192    /* status line plus headers */
#define TERN_TLSRPT_RUA_MAX 1024

typedef enum {
    TERN_STS_MODE_UNSET = 0,
    TERN_STS_ENFORCE,
    TERN_STS_TESTING,
    TERN_STS_NONE,
} tern_sts_mode;

typedef struct tern_sts_policy {
    tern_sts_mode mode;
    uint32_t max_age;                              /* seconds, capped at the maximum */
    char mx[TERN_STS_MX_MAX][TERN_STS_NAME_MAX + 1]; /* lowercase, no trailing dot */
    size_t n_mx;
} tern_sts_policy;

typedef enum {
    TERN_STS_MORE = 0, /* give more bytes (or call finish at the end) */
    TERN_STS_DONE,     /* finish only: the result is complete */
    TERN_STS_ERROR,    /* the input is not acceptable: see why */
} tern_sts_status;

/* The policy file parser. Lines end in CRLF or LF; "key: value" fields,
 * unknown keys ignored, the first occurrence of a key wins except mx. */
typedef struct tern_sts_parser {
    tern_sts_policy pol;
    char line[TERN_STS_LINE_MAX + 1];
    size_t line_len;
    size_t total;
    bool have_version, have_mode, have_max_age;
    tern_sts_status st;
    const char *why;
} tern_sts_parser;

void tern_sts_parser_init(tern_sts_parser *p);
/* Feeds bytes; returns TERN_STS_MORE or TERN_STS_ERROR (sticky). */
tern_sts_status tern_sts_parse(tern_sts_parser *p, const uint8_t *data, size_t len);
/* The input ended: checks the required fields (version STSv1, mode,
 * max_age, and at least one mx unless mode is none). DONE with the policy
 * in *out, or ERROR with *why_r. */
tern_sts_status tern_sts_finish(tern_sts_parser *p, tern_sts_policy *out, const char **why_r);

/* Does MX host `host` (any case, trailing dot allowed) match pattern
 * `pattern`? "*.example.com" matches exactly one more leftmost label. */
bool tern_sts_mx_match(const char *pattern, const char *host);
/* Does it match one of the policy's patterns? */
bool tern_sts_policy_match(const tern_sts_policy *pol, const char *host);

/* The `_mta-sts` TXT record, its character-strings already joined:
 * "v=STSv1; id=...". 0 and the id in id_r, or -1 with *why_r. */
int tern_sts_txt_parse(const char *txt, size_t len, char id_r[TERN_STS_ID_MAX + 1],
                       const char **why_r);
/* The `_smtp._tls` TXT record "v=TLSRPTv1; rua=..." (joined): 0 and the
 * rua value (the comma-separated URIs, as given) in rua_r, or -1. */
int tern_tlsrpt_txt_parse(const char *txt, size_t len, char rua_r[TERN_TLSRPT_RUA_MAX + 1],
                          const char **why_r);

const char *tern_sts_mode_name(tern_sts_mode m);
/* "enforce", "testing", "none" to the mode; UNSET if none of them. */
tern_sts_mode tern_sts_mode_from_name(const char *s);

/* The head of the HTTP/1.x response carrying a policy: the status line
 * and headers up to the empty line. Resumable; the bytes after the head
 * are the body (used_r tells where it starts). */
typedef struct tern_sts_http {
    char line[TERN_STS_LINE_MAX + 1];
    size_t line_len;
    size_t total;
    int status;             /* the status code */
    bool status_seen;
    bool text_plain;        /* Content-Type is text/plain (any parameters) */
    bool content_type_seen;
    bool chunked;           /* Transfer-Encoding other than identity */
    bool have_length;
    uint64_t content_length;
    tern_sts_status st;     /* DONE once the empty line was read */
    const char *why;
} tern_sts_http;

void tern_sts_http_init(tern_sts_http *h);
/* Feeds bytes; stops at the end of the head. Returns MORE, DONE (with
 * *used_r the bytes of data that were part of the head) or ERROR. */
tern_sts_status tern_sts_http_parse(tern_sts_http *h, const uint8_t *data, size_t len,
                                    size_t *used_r);

#endif
