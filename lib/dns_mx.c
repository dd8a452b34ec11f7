/* MX ordering and the null MX (see dns_mx.h). Input: a decoded resolver
 * result; the records' host names are untrusted text, compared only. */
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "lib/dns_mx.h"

static uint32_t default_random(void *data, uint32_t upper)
{
    (void)data;
    return randombytes_uniform(upper);
}

/* Names compare without case and without a trailing dot. */
static bool same_host(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 1 && a[la - 1] == '.')
        la--;
    if (lb > 1 && b[lb - 1] == '.')
        lb--;
    return la == lb && strncasecmp(a, b, la) == 0;
}

static bool is_self(const char *host, const char *const *self, size_t n_self)
{
    for (size_t i = 0; i < n_self; i++)
        if (self[i] != NULL && same_host(host, self[i]))
            return true;
    return false;
}

const char *tern_mx_outcome_name(tern_mx_outcome o)
{
    switch (o) {
    case TERN_MX_HOSTS: return "hosts";
    case TERN_MX_NULL: return "null-mx";
    case TERN_MX_NO_DOMAIN: return "no-domain";
    case TERN_MX_TEMPFAIL: return "tempfail";
    case TERN_MX_LOOP: return "loop";
    }
    return "?";
}

int tern_dns_mx_plan(tern_arena *a, const char *domain, const tern_dns_result *mx,
                     const char *const *self, size_t n_self, tern_dns_random_fn rnd,
                     void *rnd_data, tern_mx_plan *plan_r)
{
    tern_mx_plan *p = plan_r;
    memset(p, 0, sizeof(*p));
    if (rnd == NULL)
        rnd = default_random;
    if (mx->status != TERN_DNS_ANSWER) {
        p->outcome = TERN_MX_TEMPFAIL;
        p->why = mx->error ? mx->error : tern_dns_status_name(mx->status);
        return 0;
    }
    /* A forged answer must not decide anything, not even "no such domain". */
    if (mx->security == TERN_DNS_BOGUS) {
        p->outcome = TERN_MX_TEMPFAIL;
        p->why = "DNSSEC validation of the MX answer failed";
        return 0;
    }
    if (mx->rcode == TERN_DNS_RCODE_NXDOMAIN) {
        p->outcome = TERN_MX_NO_DOMAIN;
        p->why = "the domain does not exist (NXDOMAIN)";
        return 0;
    }
    if (mx->rcode != TERN_DNS_RCODE_NOERROR) {
        p->outcome = TERN_MX_TEMPFAIL;
        p->why = tern_dns_rcode_name(mx->rcode);
        return 0;
    }
    p->secure = mx->security == TERN_DNS_SECURE;

    size_t n_mx = 0, n_root = 0;
    for (size_t i = 0; i < mx->n_rrs; i++)
        if (mx->rrs[i].type == TERN_DNS_MX) {
            n_mx++;
            if (strcmp(mx->rrs[i].u.mx.host, ".") == 0)
                n_root++;
        }
    if (n_mx == 0) {
        /* RFC 5321 5.1: no MX means the domain itself at preference 0. */
        size_t len = strlen(domain);
        if (len > 1 && domain[len - 1] == '.')
            len--;
        p->hosts = tern_arena_alloc(a, sizeof(*p->hosts));
        char *h = tern_arena_strndup(a, domain, len);
        if (p->hosts == NULL || h == NULL)
            return -1;
        p->hosts[0].host = h;
        p->hosts[0].preference = 0;
        p->n_hosts = 1;
        p->implicit = true;
        p->outcome = TERN_MX_HOSTS;
        p->why = "no MX records: implicit MX";
        return 0;
    }
    /* RFC 7505 3: a null MX is the domain's only MX. Should a domain also
     * publish others, the "." target is still undeliverable: it is dropped
     * and the real ones are used. */
    if (n_root == n_mx) {
        p->outcome = TERN_MX_NULL;
        p->why = "the domain publishes a null MX (RFC 7505): it accepts no mail";
        return 0;
    }
    tern_mx_host *h = tern_arena_alloc(a, (n_mx - n_root) * sizeof(*h));
    if (h == NULL)
        return -1;
    size_t n = 0;
    for (size_t i = 0; i < mx->n_rrs; i++) {
        const tern_dns_rr *rr = &mx->rrs[i];
        if (rr->type != TERN_DNS_MX || strcmp(rr->u.mx.host, ".") == 0)
            continue;
        /* Insertion by preference keeps the answer's order within a
         * preference; the shuffle below then randomizes it. */
        size_t at = n;
        while (at > 0 && h[at - 1].preference > rr->u.mx.preference) {
            h[at] = h[at - 1];
            at--;
        }
        h[at].host = rr->u.mx.host;
        h[at].preference = rr->u.mx.preference;
        n++;
    }
    /* Equal preferences in random order (RFC 5321 5.1), Fisher-Yates per
     * run of equal preference. */
    for (size_t s = 0; s < n;) {
        size_t e = s + 1;
        while (e < n && h[e].preference == h[s].preference)
            e++;
        for (size_t i = e - 1; i > s; i--) {
            size_t j = s + rnd(rnd_data, (uint32_t)(i - s + 1));
            tern_mx_host t = h[i];
            h[i] = h[j];
            h[j] = t;
        }
        s = e;
    }
    /* The same host twice is tried once, at its best preference. */
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        bool dup = false;
        for (size_t j = 0; j < kept && !dup; j++)
            dup = same_host(h[j].host, h[i].host);
        if (!dup)
            h[kept++] = h[i];
    }
    n = kept;
    /* RFC 5321 5.1: if we are one of the MXs, only hosts strictly more
     * preferred than our best entry may be used. */
    for (size_t i = 0; i < n; i++) {
        if (is_self(h[i].host, self, n_self)) {
            uint16_t ours = h[i].preference;
            size_t k = 0;
            while (k < n && h[k].preference < ours)
                k++;
            n = k;
            break;
        }
    }
    if (n == 0) {
        p->outcome = TERN_MX_LOOP;
        p->why = "the most preferred MX is this host: mail would loop";
        return 0;
    }
    p->hosts = h;
    p->n_hosts = n;
    p->outcome = TERN_MX_HOSTS;
    p->why = "MX records";
    return 0;
}
