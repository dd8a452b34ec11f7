/* DANE for remote delivery (RFC 7672 section 2.2): the TLSA lookup the
 * queue manager makes for an MX host whose MX and address answers were
 * DNSSEC-secure, and what it means for the connection: DANE required
 * (usable records, secure), plain opportunistic TLS (no records, an
 * insecure answer, none usable), or the host unusable for now (a bogus or
 * failed lookup). Input: DNS answers (untrusted, decoded by lib/dns). */
#ifndef TERN_QUEUE_DANE_H
#define TERN_QUEUE_DANE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/dns.h"
#include "protocols/common/tls_dane.h"

typedef enum {
    TERN_DANE_NONE = 0, /* opportunistic TLS as without DANE */
    TERN_DANE_REQUIRED, /* TLS with a certificate matching tlsa[] */
    TERN_DANE_DEFER,    /* do not deliver to this host now (why says why) */
} tern_dane_verdict;

typedef struct tern_queue_dane {
    tern_dane_verdict verdict;
    tern_tlsa *tlsa;     /* the usable records (into res), for the client */
    size_t n_tlsa;
    char why[300];       /* one line for logs and the deferral */
    /* private */
    tern_dns_result *res;
    tern_dns_query *q;
    void (*cb)(void *data);
    void *data;
} tern_queue_dane;

/* The verdict on a TLSA answer (pure; used by the lookup, and testable).
 * Fills d's verdict, records and why; records point into res. */
void tern_queue_dane_judge(tern_queue_dane *d, tern_dns_result *res);

/* Looks up _PORT._tcp.HOST TLSA; cb(data) runs once on the resolver's
 * loop with d judged (a cancelled lookup is DEFER). Returns 0, or -1 when
 * the query could not start (d is DEFER, cb will not run). */
int tern_queue_dane_lookup(tern_queue_dane *d, tern_dns_resolver *r, const char *host,
                           uint16_t port, void (*cb)(void *data), void *data);

/* Frees what d holds (cancels a lookup in flight) and resets it to NONE. */
void tern_queue_dane_clear(tern_queue_dane *d);

const char *tern_dane_verdict_name(tern_dane_verdict v);

/* Logs how a session under DANE ended, as
 * "event=dane_session qid=... host=... peer=... tls=dane-verified|dane-failed":
 * nothing when d's verdict was not REQUIRED. */
void tern_queue_dane_log_session(const tern_queue_dane *d, const char *qid, const char *host,
                                 const char *peer, bool verified, const char *error);

/* RFC 8689 section 3: the sender's "TLS-Required: No" header field asks
 * that TLS policies (DANE, MTA-STS) not block delivery; REQUIRETLS on
 * the envelope overrides it. True when DANE is to be skipped for this
 * message. Input: the message's header section (untrusted). */
bool tern_queue_tls_policy_waived(bool requiretls, const uint8_t *msg, size_t len);

#endif
