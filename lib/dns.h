/* The asynchronous resolver: libunbound driven from a libuv loop. One
 * resolver per loop (its libunbound context, cache and background thread
 * are that loop's alone); queries are cheap (one small allocation and a
 * timer) so a message's many SPF/DKIM/DMARC lookups can run at once.
 * Results come back typed (lib/dns_rdata.h) with the rcode, the DNSSEC
 * status DANE needs, and the TTL. Input: options from the caller (trusted,
 * validated by conf/), names from the caller (checked here for length),
 * answers from the network (untrusted: decoded by the pure rdata parser).
 * lib/ knows nothing of the server: the options are a plain struct. */
#ifndef TERN_DNS_H
#define TERN_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "lib/arena.h"
#include "lib/dns_rdata.h"

/* Bounds kept here so conf/ and the resolver agree. */
#define TERN_DNS_MAX_FORWARDERS 16
#define TERN_DNS_TIMEOUT_MIN_MS 100
#define TERN_DNS_TIMEOUT_MAX_MS (5 * 60 * 1000)

typedef struct tern_dns_options {
    /* "IP" or "IP@PORT" (IPv4 or IPv6); none: the system's resolvers from
     * resolv_conf. At most TERN_DNS_MAX_FORWARDERS. */
    const char *const *forwarders;
    size_t n_forwarders;
    const char *resolv_conf;       /* NULL: /etc/resolv.conf (when no forwarders) */
    bool dnssec;                   /* run the validator; false: iterator only */
    const char *trust_anchor_file; /* DS/DNSKEY records in zone-file form; NULL: none,
                                      so nothing can come back secure */
    uint64_t timeout_ms;           /* per query, enforced on our side; 0: 10 s */
    uint64_t cache_size;           /* bytes, split between message and RRset caches;
                                      0: libunbound's default */
    uint32_t cache_max_ttl;        /* seconds; 0: libunbound's default (1 day) */
    /* Zones that libunbound answers itself by default (RFC 6761 names such
     * as test., RFC 6303 private and documentation reverse zones) that
     * must be asked of the resolvers instead: a LAN's reverse zone, or the
     * tests' zone. Names with or without the trailing dot. */
    const char *const *unblock_zones;
    size_t n_unblock_zones;
} tern_dns_options;

typedef enum {
    TERN_DNS_ANSWER = 0, /* the resolver answered: see rcode and rrs */
    TERN_DNS_TIMEOUT,    /* no answer within the query's timeout */
    TERN_DNS_FAILED,     /* the resolver could not resolve (error says why) */
    TERN_DNS_MALFORMED,  /* an answer came whose rdata does not decode */
    TERN_DNS_CANCELLED,  /* the resolver was closed with the query pending */
} tern_dns_status;

enum {
    TERN_DNS_RCODE_NOERROR = 0,
    TERN_DNS_RCODE_FORMERR = 1,
    TERN_DNS_RCODE_SERVFAIL = 2,
    TERN_DNS_RCODE_NXDOMAIN = 3,
    TERN_DNS_RCODE_NOTIMP = 4,
    TERN_DNS_RCODE_REFUSED = 5,
};

typedef enum {
    TERN_DNS_INSECURE = 0, /* no DNSSEC for this name (or validation off) */
    TERN_DNS_SECURE,       /* validated up to a trust anchor */
    TERN_DNS_BOGUS,        /* validation failed: treat as a temporary failure */
} tern_dns_security;

typedef struct tern_dns_result {
    tern_arena arena;          /* everything below lives in it */
    tern_dns_status status;
    int rcode;                 /* meaningful for TERN_DNS_ANSWER */
    tern_dns_security security;
    const char *why_bogus;           /* libunbound's reason when BOGUS, else NULL */
    uint32_t ttl;              /* of the answer (0 when there is none) */
    const char *qname;
    uint16_t qtype;
    const char *canonname;           /* the name at the end of any CNAME chain, or NULL */
    tern_dns_rr *rrs;          /* records of qtype at canonname; none when BOGUS */
    size_t n_rrs;
    const char *error;               /* for FAILED, MALFORMED, TIMEOUT: one line */
} tern_dns_result;

typedef struct tern_dns_resolver tern_dns_resolver;
typedef struct tern_dns_query tern_dns_query;

/* Called once per query on the resolver's loop, unless the query was
 * cancelled with tern_dns_cancel. The result belongs to the callee: free it
 * with tern_dns_result_free. The query handle is gone when this runs. */
typedef void (*tern_dns_cb)(void *data, tern_dns_result *res);

/* Creates the resolver for `loop`; must be used and closed on the thread
 * that runs that loop. Configuration errors (a bad forwarder, an unreadable
 * or unparsable trust anchor file) are found here, not at the first query.
 * Returns NULL with a message in err. */
tern_dns_resolver *tern_dns_resolver_new(uv_loop_t *loop, const tern_dns_options *o, char *err,
                                         size_t err_size);
/* Every pending query is answered TERN_DNS_CANCELLED (callbacks run before
 * this returns), then the handles close and the libunbound context is
 * deleted once they have: the loop must run on for that. Safe inside a
 * callback. */
void tern_dns_resolver_close(tern_dns_resolver *r);
size_t tern_dns_resolver_pending(const tern_dns_resolver *r);

/* Starts a query for `name` (presentation form, trailing dot optional) of
 * `type` (class IN). timeout_ms 0: the resolver's. Returns 0 and, if q_r is
 * not NULL, a handle valid until the callback runs or tern_dns_cancel; or a
 * negative code (UV_EINVAL for a bad name, UV_ENOMEM, UV_ECANCELED when
 * closing, UV_EIO from libunbound) and the callback will not run. */
int tern_dns_resolve(tern_dns_resolver *r, const char *name, uint16_t type, uint64_t timeout_ms,
                     tern_dns_cb cb, void *data, tern_dns_query **q_r);
/* The callback will not run. */
void tern_dns_cancel(tern_dns_query *q);

void tern_dns_result_free(tern_dns_result *res);

const char *tern_dns_status_name(tern_dns_status s);
const char *tern_dns_rcode_name(int rcode);
const char *tern_dns_security_name(tern_dns_security s);

/* A PTR query name for an IPv4 or IPv6 address in text form
 * ("192.0.2.1" -> "1.2.0.192.in-addr.arpa"); -1 if it is not an address. */
int tern_dns_reverse_name(const char *addr, char *out, size_t out_size);

#endif
