/* http_client.h: a small asynchronous HTTP/1.1 client, one request per
 * connection, on whatever libuv loop calls it (the auth backends call it
 * from worker loops; the main loop may too). It lives in protocols/common
 * beside the connection stream and the TLS interface it is built on
 * (tern_conn, tls.h); lib/ keeps its pure parts (lib/http_response.h:
 * URLs and the response parser) so they are unit-tested and fuzzed alone.
 * auth/ does not include this header (auth/ knows nothing of protocols):
 * the server hands the client to auth/ through tern_auth_set_http.
 *
 * What it does: GET or POST (a body and extra header fields), http:// and
 * https:// (the certificate verified against the tern_tls_client's CAs
 * and the URL's host name checked, TLS 1.2), the host name resolved off
 * the loop (lib/dns when a resolver is given: A records only; else
 * getaddrinfo on libuv's thread pool, IPv4 addresses first, then IPv6),
 * each address tried in turn until one connects, "Connection: close", one overall deadline, the
 * response head and body capped (Content-Length, chunked, or to the end
 * of the connection). Redirects are not followed: a 3xx is an answer.
 *
 * Input trusted: the params (the caller's, from a validated config).
 * Untrusted: everything the network sends. */
#ifndef TERN_HTTP_CLIENT_H
#define TERN_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "lib/dns.h"
#include "lib/http_response.h"
#include "protocols/common/tls.h"

#define TERN_HTTP_TIMEOUT_MS 30000
#define TERN_HTTP_MAX_HEADERS 32

typedef struct tern_http_request_params {
    uv_loop_t *loop;
    tern_dns_resolver *dns;     /* NULL: getaddrinfo on the thread pool */
    tern_tls_client *tls;       /* https: the trusted CAs; required for https URLs */
    const char *method;         /* "GET" or "POST"; NULL: GET, or POST with a body */
    const char *url;
    const char *const *headers; /* "Name: value" each, without line end; at most
                                   TERN_HTTP_MAX_HEADERS. Host, Connection and
                                   Content-Length are the client's own */
    size_t n_headers;
    const void *body;
    size_t body_len;
    uint64_t timeout_ms;        /* everything: lookup to last byte; 0: TERN_HTTP_TIMEOUT_MS */
    size_t max_head, max_body;  /* 0: lib/http_response.h's defaults */
} tern_http_request_params;

/* What the callback sees; valid during the callback only. */
typedef struct tern_http_result {
    int ok;                     /* 0: a complete response came (whatever its status) */
    int status;                 /* HTTP status when ok == 0 */
    const char *content_type;   /* "" when none */
    const uint8_t *body;        /* NUL-terminated; "" when none */
    size_t body_len;
    bool timed_out;             /* ok != 0 because the deadline passed */
    const char *why;            /* ok != 0: one line for the log */
} tern_http_result;

typedef void (*tern_http_cb)(void *arg, const tern_http_result *r);
typedef struct tern_http_request tern_http_request;

/* Starts a request; cb runs exactly once on p->loop, never inside this
 * call (a bad URL or header is reported from the loop too). The params'
 * strings and body are copied. NULL when out of memory (cb will not
 * run). */
tern_http_request *tern_http_request_start(const tern_http_request_params *p, tern_http_cb cb,
                                           void *arg);
/* Abandons the request: cb will not run; what is open closes from the
 * loop. */
void tern_http_request_cancel(tern_http_request *r);

/* This client as auth/ takes it (auth.h: tern_auth_set_http). */
struct tern_auth_http;
extern const struct tern_auth_http tern_http_auth_transport;

#endif
