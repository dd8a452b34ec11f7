/* Fetching one MTA-STS policy (RFC 8461 3.3): an asynchronous HTTPS GET of
 * https://mta-sts.<domain>/.well-known/mta-sts.txt on the caller's libuv
 * loop, the host's address through lib/dns, the certificate checked
 * (PKIX) against mta-sts.<domain>, HTTP/1.1 with Connection: close, no
 * redirects, Content-Type text/plain, the body capped at 64 KiB and the
 * whole fetch bounded in time. The body is parsed as it arrives.
 * Input: the domain from our queue (trusted to be a host name); the
 * address, certificate and response from the network (untrusted). */
#ifndef TERN_MTA_STS_FETCH_H
#define TERN_MTA_STS_FETCH_H

#include <stdint.h>
#include <uv.h>

#include "lib/dns.h"
#include "lib/mta_sts.h"
#include "protocols/common/conn.h"

/* The result of a fetch, valid during the callback. */
typedef struct tern_sts_fetched {
    int ok;                   /* 0: policy holds a valid policy */
    bool webpki_invalid;      /* failed because the certificate did not verify */
    tern_sts_policy policy;
    const char *body;         /* the policy text as served (for the cache file) */
    size_t body_len;
    const char *why;          /* failure: one line */
} tern_sts_fetched;

typedef void (*tern_sts_fetch_cb)(void *arg, const tern_sts_fetched *r);

typedef struct tern_sts_fetch tern_sts_fetch;

typedef struct tern_sts_fetch_params {
    uv_loop_t *loop;
    tern_conn_worker *worker;
    tern_dns_resolver *dns;
    tern_tls_client *tls;      /* the trusted CAs */
    const char *domain;        /* the policy domain: the host is mta-sts.<domain> */
    uint16_t port;             /* 443, or a test port */
    uint64_t timeout_ms;       /* the whole fetch; 0: TERN_STS_FETCH_TIMEOUT_MS */
} tern_sts_fetch_params;

#define TERN_STS_FETCH_TIMEOUT_MS 30000

/* Starts a fetch; cb runs exactly once, from the loop (never inside this
 * call). NULL when it could not start (out of memory; cb will not run). */
tern_sts_fetch *tern_sts_fetch_start(const tern_sts_fetch_params *p, tern_sts_fetch_cb cb,
                                     void *arg);
/* Ends it now: cb runs (before this returns or from the loop) with a
 * failure "cancelled". */
void tern_sts_fetch_cancel(tern_sts_fetch *f);

#endif
