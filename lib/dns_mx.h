/* Where to deliver for a domain, from its MX answer: RFC 5321 section 5.1
 * ordering (by preference, equal preferences in random order, the implicit
 * MX when there is none, our own names and everything after them
 * dropped) and the RFC 7505 null MX. Pure: no I/O, the randomness comes
 * from the caller so tests are repeatable. Input: a resolver result
 * (decoded from untrusted answers) and the caller's names. */
#ifndef TERN_DNS_MX_H
#define TERN_DNS_MX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/arena.h"
#include "lib/dns.h"

typedef enum {
    TERN_MX_HOSTS = 0, /* deliver to hosts[] in order */
    TERN_MX_NULL,      /* RFC 7505 null MX: the domain takes no mail (permanent, 5.1.10) */
    TERN_MX_NO_DOMAIN, /* NXDOMAIN: permanent (5.1.2) */
    TERN_MX_TEMPFAIL,  /* SERVFAIL, timeout, bogus or malformed answer: retry later */
    TERN_MX_LOOP,      /* the best MX is ourselves: mail would loop (5.4.6) */
} tern_mx_outcome;

typedef struct tern_mx_host {
    const char *host;    /* presentation form, no trailing dot */
    uint16_t preference;
} tern_mx_host;

typedef struct tern_mx_plan {
    tern_mx_outcome outcome;
    bool implicit;       /* no MX records: hosts[0] is the domain itself (look up A/AAAA) */
    bool secure;         /* the MX answer validated (DANE needs a secure MX set) */
    tern_mx_host *hosts;
    size_t n_hosts;
    const char *why;     /* one line for logs and DSNs */
} tern_mx_plan;

/* Returns a uniform number in [0, upper); upper >= 1. */
typedef uint32_t (*tern_dns_random_fn)(void *data, uint32_t upper);

/* Builds the plan for `domain` from the result of its MX query. `self`
 * lists our own host names (may be NULL): an MX naming one of them drops
 * it and every MX of equal or higher preference. rnd NULL: libsodium's
 * uniform random. Strings in the plan point into mx's arena or `a`. */
int tern_dns_mx_plan(tern_arena *a, const char *domain, const tern_dns_result *mx,
                     const char *const *self, size_t n_self, tern_dns_random_fn rnd,
                     void *rnd_data, tern_mx_plan *plan_r);

const char *tern_mx_outcome_name(tern_mx_outcome o);

#endif
