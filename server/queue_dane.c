/* DANE lookups for the queue manager (RFC 7672 section 2.2). The queue
 * asks only for hosts whose MX (or smarthost) and address answers were
 * secure; this file turns the TLSA answer into a verdict for the SMTP
 * client. Input: TLSA answers from the network (decoded by lib/dns; the
 * DNSSEC status comes from libunbound's validator). */
#include "server/queue_dane.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/header.h"
#include "lib/log.h"

#define MOD "queue"

const char *tern_dane_verdict_name(tern_dane_verdict v)
{
    switch (v) {
    case TERN_DANE_NONE:
        return "none";
    case TERN_DANE_REQUIRED:
        return "required";
    case TERN_DANE_DEFER:
        return "defer";
    }
    return "?";
}

void tern_queue_dane_judge(tern_queue_dane *d, tern_dns_result *res)
{
    d->tlsa = NULL;
    d->n_tlsa = 0;
    d->found = false;
    d->why[0] = '\0';
    if (res == NULL || res->status != TERN_DNS_ANSWER) {
        /* RFC 7672 2.2: a TLSA lookup that fails for a secure host makes
         * the host unusable (an attacker could block the answer). */
        d->verdict = TERN_DANE_DEFER;
        snprintf(d->why, sizeof(d->why), "TLSA lookup failed: %s",
                 res ? (res->error ? res->error : tern_dns_status_name(res->status)) : "no result");
        return;
    }
    if (res->security == TERN_DNS_BOGUS) {
        d->verdict = TERN_DANE_DEFER;
        snprintf(d->why, sizeof(d->why), "TLSA answer is DNSSEC-bogus: %s",
                 res->why_bogus ? res->why_bogus : "validation failed");
        return;
    }
    if (res->rcode != TERN_DNS_RCODE_NOERROR && res->rcode != TERN_DNS_RCODE_NXDOMAIN) {
        d->verdict = TERN_DANE_DEFER;
        snprintf(d->why, sizeof(d->why), "TLSA lookup failed: %s", tern_dns_rcode_name(res->rcode));
        return;
    }
    if (res->security != TERN_DNS_SECURE) {
        d->verdict = TERN_DANE_NONE;
        snprintf(d->why, sizeof(d->why), "TLSA answer is insecure");
        return;
    }
    if (res->n_rrs > 0)
        d->tlsa = tern_arena_alloc(&res->arena, res->n_rrs * sizeof(*d->tlsa));
    for (size_t i = 0; d->tlsa && i < res->n_rrs; i++) {
        const tern_dns_rr *rr = &res->rrs[i];
        if (rr->type != TERN_DNS_TLSA)
            continue;
        d->found = true;
        tern_tlsa t = {rr->u.tlsa.usage, rr->u.tlsa.selector, rr->u.tlsa.mtype, rr->u.tlsa.data,
                       rr->u.tlsa.len};
        if (tern_tlsa_usable(&t))
            d->tlsa[d->n_tlsa++] = t;
    }
    if (d->n_tlsa == 0) {
        /* No records, or only unusable ones (PKIX-TA/EE, unknown types):
         * RFC 7672 2.2 leaves the host to opportunistic TLS. */
        d->verdict = TERN_DANE_NONE;
        snprintf(d->why, sizeof(d->why), "no usable TLSA record (%zu in the answer)", res->n_rrs);
        return;
    }
    d->verdict = TERN_DANE_REQUIRED;
    snprintf(d->why, sizeof(d->why), "%zu usable TLSA record(s)", d->n_tlsa);
}

static int start(tern_queue_dane *d, const char *host);

static void tlsa_done(void *data, tern_dns_result *res)
{
    tern_queue_dane *d = data;
    d->q = NULL;
    d->res = res;
    tern_queue_dane_judge(d, res);
    char qn[300], qw[400];
    TLOG_INFO(MOD, "event=dane qname=%s verdict=%s why=%s",
              tern_log_q(qn, sizeof(qn), res->qname ? res->qname : ""),
              tern_dane_verdict_name(d->verdict), tern_log_q(qw, sizeof(qw), d->why));
    if (d->at_expanded && d->verdict != TERN_DANE_DEFER && !d->found) {
        /* No TLSA RRset at the CNAME target: the MX host's own name. */
        tern_dns_result_free(d->res);
        d->res = NULL;
        d->at_expanded = false;
        if (start(d, d->host) != 0)
            d->cb(d->data);
        return;
    }
    d->base = d->at_expanded ? d->expanded : d->host;
    d->alt_name = d->at_expanded ? d->host : NULL;
    d->cb(d->data);
}

/* A name without its trailing dot, lowercased (answers carry the dot). */
static char *norm_name(const char *s)
{
    size_t n = strlen(s);
    if (n > 0 && s[n - 1] == '.')
        n--;
    char *o = malloc(n + 1);
    if (o == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++)
        o[i] = (char)((s[i] >= 'A' && s[i] <= 'Z') ? s[i] + 32 : s[i]);
    o[n] = '\0';
    return o;
}

static int start(tern_queue_dane *d, const char *host)
{
    char name[300];
    int n = snprintf(name, sizeof(name), "_%u._tcp.%s", (unsigned)d->port, host);
    if (n < 0 || (size_t)n >= sizeof(name) ||
        tern_dns_resolve(d->r, name, TERN_DNS_TLSA, 0, tlsa_done, d, &d->q) != 0) {
        d->q = NULL;
        d->verdict = TERN_DANE_DEFER;
        snprintf(d->why, sizeof(d->why), "cannot look up TLSA of %s", host);
        return -1;
    }
    return 0;
}

int tern_queue_dane_lookup(tern_queue_dane *d, tern_dns_resolver *r, const char *host,
                           const char *expanded, uint16_t port, void (*cb)(void *data),
                           void *data)
{
    tern_queue_dane_clear(d);
    d->cb = cb;
    d->data = data;
    d->r = r;
    d->port = port;
    d->host = norm_name(host);
    d->expanded = expanded ? norm_name(expanded) : NULL;
    if (d->host == NULL || (expanded && d->expanded == NULL)) {
        d->verdict = TERN_DANE_DEFER;
        snprintf(d->why, sizeof(d->why), "out of memory");
        return -1;
    }
    if (d->expanded && (d->expanded[0] == '\0' || strcmp(d->expanded, d->host) == 0)) {
        free(d->expanded);
        d->expanded = NULL;
    }
    d->at_expanded = d->expanded != NULL;
    return start(d, d->at_expanded ? d->expanded : d->host);
}

void tern_queue_dane_clear(tern_queue_dane *d)
{
    if (d->q)
        tern_dns_cancel(d->q);
    if (d->res)
        tern_dns_result_free(d->res);
    free(d->host);
    free(d->expanded);
    memset(d, 0, sizeof(*d));
}

bool tern_queue_tls_policy_waived(bool requiretls, const uint8_t *msg, size_t len)
{
    if (requiretls || msg == NULL)
        return false;
    tern_header_parser *p = malloc(sizeof(*p)); /* 16 KiB: not on the loop's stack */
    if (p == NULL)
        return false;
    tern_header_parser_init(p, NULL);
    bool no = false;
    size_t off = 0;
    for (;;) {
        size_t used = 0;
        tern_header_field f;
        tern_header_event ev = off < len ? tern_header_parser_feed(p, msg + off, len - off, &used, &f)
                                         : tern_header_parser_finish(p, &f);
        off += used;
        if (ev == TERN_HEADER_END)
            break;
        if (ev == TERN_HEADER_FIELD && tern_header_name_is(&f, "TLS-Required") &&
            f.value_len == 2 && (f.value[0] | 0x20) == 'n' && (f.value[1] | 0x20) == 'o')
            no = true;
    }
    free(p);
    return no;
}

void tern_queue_dane_log_session(const tern_queue_dane *d, const char *qid, const char *host,
                                 const char *peer, bool verified, const char *error)
{
    if (d->verdict != TERN_DANE_REQUIRED)
        return;
    char qh[300], qp[120], qe[500];
    TLOG_INFO(MOD, "event=dane_session qid=%s host=%s peer=%s tls=%s error=%s", qid,
              tern_log_q(qh, sizeof(qh), host ? host : ""),
              tern_log_q(qp, sizeof(qp), peer ? peer : ""),
              verified ? "dane-verified" : "dane-failed",
              tern_log_q(qe, sizeof(qe), verified || error == NULL ? "" : error));
}
