/* http_response.h: the pure parts of Tern's HTTP/1.1 client
 * (protocols/common/http_client.h): splitting an http:// or https:// URL,
 * and the response parser, a resumable state machine over byte spans
 * (status line, header fields, then a body framed by Content-Length, by
 * chunked transfer-coding, or by the end of the connection). No I/O here,
 * so the parser is unit-tested byte by byte and fuzzed.
 *
 * Input trusted: the limits and the URL come from the caller (a validated
 * config). Untrusted: every response byte; each line, the whole head and
 * the body are capped, numbers are checked for overflow, and anything the
 * client would have to guess at (a body framed two ways, a transfer-coding
 * other than chunked, folded header lines) is an error. */
#ifndef TERN_HTTP_RESPONSE_H
#define TERN_HTTP_RESPONSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TERN_HTTP_MAX_HOST 253
#define TERN_HTTP_MAX_PATH 2048
#define TERN_HTTP_MAX_LINE 8192    /* one status, header or chunk-size line */
#define TERN_HTTP_DEFAULT_MAX_HEAD (16 * 1024)
#define TERN_HTTP_DEFAULT_MAX_BODY (1024 * 1024)

/* ---- URLs ---------------------------------------------------------------- */

typedef struct tern_http_url {
    bool tls;                           /* https */
    char host[TERN_HTTP_MAX_HOST + 1];  /* a name, an IPv4 address, or an IPv6 one
                                           without its brackets */
    bool host_is_ipv6;
    uint16_t port;                      /* default 80 / 443 */
    bool port_given;
    char path[TERN_HTTP_MAX_PATH + 1];  /* path and query, "/" when empty */
} tern_http_url;

/* Splits `url` (scheme "http" or "https", any case). Userinfo ("user@")
 * is refused (credentials go in headers, not in URLs that end up in
 * logs) and a fragment is dropped. Returns 0, or -1 with *why_r set to a
 * static reason. */
int tern_http_url_parse(const char *url, tern_http_url *u, const char **why_r);

/* Whether host (as in tern_http_url.host) is this machine: "localhost",
 * a name under ".localhost", 127.0.0.0/8 or ::1. A config may send a
 * secret over clear text only to such a host. */
bool tern_http_host_is_loopback(const char *host);

/* ---- responses ------------------------------------------------------------ */

typedef enum {
    TERN_HTTP_RESP_MORE = 0,  /* everything was consumed; feed more (or tern_http_resp_eof) */
    TERN_HTTP_RESP_DONE = 1,  /* a whole response; bytes after it were not consumed */
    TERN_HTTP_RESP_ERROR = -1 /* see why; the connection is useless now */
} tern_http_resp_status;

typedef struct tern_http_resp {
    /* Results, valid once the head is parsed (head_done). */
    int status;                 /* 200..599 (1xx interim responses are skipped) */
    int minor;                  /* HTTP/1.minor */
    bool head_done;
    bool chunked;
    bool have_length;
    uint64_t content_length;
    bool conn_close;            /* "Connection: close" was sent */
    char content_type[128];     /* the field value trimmed, "" when absent or too long */
    uint8_t *body;              /* malloc'd, NUL-terminated (not counted), may be NULL */
    size_t body_len;
    const char *why;            /* ERROR: a static reason */

    /* The parser's own. */
    size_t max_head, max_body;
    bool no_body;               /* the request was HEAD */
    int state;
    size_t head_len;
    char line[TERN_HTTP_MAX_LINE + 1];
    size_t line_len;
    uint64_t remaining;         /* of the Content-Length body or of the current chunk */
    size_t body_cap;
} tern_http_resp;

/* max_head / max_body 0: the defaults above. no_body: the response to a
 * HEAD request (no body whatever the head says). */
void tern_http_resp_init(tern_http_resp *p, size_t max_head, size_t max_body, bool no_body);
void tern_http_resp_free(tern_http_resp *p);

/* Feeds len bytes. *used_r (may be NULL) is how many were consumed: all
 * of them on MORE, those up to the end of the response on DONE. */
tern_http_resp_status tern_http_resp_parse(tern_http_resp *p, const uint8_t *data, size_t len,
                                           size_t *used_r);
/* The connection ended: DONE when the body runs to the end of the
 * connection (no length, not chunked) or the response was complete,
 * ERROR (why: truncated) otherwise. */
tern_http_resp_status tern_http_resp_eof(tern_http_resp *p);

#endif
