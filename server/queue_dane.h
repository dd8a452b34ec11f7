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
    /* The TLSA base domain the verdict is for: the MX host, or its CNAME
     * target when the records were found there (RFC 7672 2.2.2); the
     * client sends it as SNI. alt_name: the MX host then, a second name
     * DANE-TA accepts; NULL otherwise. Both NULL before a lookup. */
    const char *base;
    const char *alt_name;
    bool found;          /* the answer held a secure TLSA RRset */
    /* private */
    tern_dns_result *res;
    tern_dns_query *q;
    tern_dns_resolver *r;
    char *host, *expanded;
    uint16_t port;
    bool at_expanded;    /* the lookup in flight is the expanded name's */
    void (*cb)(void *data);
    void *data;
} tern_queue_dane;

/* The verdict on a TLSA answer (pure; used by the lookup, and testable).
 * Fills d's verdict, records and why; records point into res. */
void tern_queue_dane_judge(tern_queue_dane *d, tern_dns_result *res);

/* Looks up _PORT._tcp.HOST TLSA; cb(data) runs once on the resolver's
 * loop with d judged (a cancelled lookup is DEFER). expanded (NULL: none)
 * is where HOST's secure address lookup ended after CNAMEs: its TLSA
 * RRset is looked up first, and HOST's only when it has none (a secure
 * denial, or an insecure answer); a failed or bogus lookup there decides
 * (DEFER), as do records there that are all unusable (NONE). Returns 0,
 * or -1 when the query could not start (d is DEFER, cb will not run). */
int tern_queue_dane_lookup(tern_queue_dane *d, tern_dns_resolver *r, const char *host,
                           const char *expanded, uint16_t port, void (*cb)(void *data),
                           void *data);

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
