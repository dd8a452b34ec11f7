/* dns_probe: runs lib/dns.c on a libuv loop for the resolver tests
 * (tests/integration/test_dns.py) and prints every result in a stable
 * text form. All queries of a round start at once on one loop, so the
 * tests exercise concurrent queries, the per-query timeout, cancellation,
 * closing with queries pending, and (with -r) the cache. Input: command
 * line arguments from the test (trusted), answers through lib/dns.c.
 *
 *   dns_probe [-s IP@PORT]... [-R RESOLV.CONF] [-t MS] [-a FILE] [-n] [-c BYTES] [-r ROUNDS]
 *             [-x] [-k MS] [-m] [-S SELF]... [-u ZONE]... TYPE:NAME...
 *
 * Without -s the resolver takes the servers of RESOLV.CONF (default
 * /etc/resolv.conf), as for `resolvers: system`. -x cancels every second
 * query right after starting it; -k closes the resolver after MS
 * milliseconds; -m prints the MX plan of MX answers;
 * -u turns off libunbound's built-in answers for ZONE (test. and the
 * documentation reverse zones need it).
 * PTR:ADDRESS asks for the reverse name of an address. A query that
 * tern_dns_resolve refuses (a bad name) is printed as refused="...".
 * Exit 0 when every started query was answered through its callback
 * (whatever the answer) and no cancelled one was, 2 on a usage or resolver
 * start-up error (printed to stderr), 1 otherwise. */
#include <ctype.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <uv.h>

#include "lib/dns.h"
#include "lib/dns_mx.h"

#define MAX_QUERIES 64
#define MAX_SELF 8
#define MAX_UNBLOCK 8
#define WATCHDOG_MS 60000

typedef struct probe_query {
    uint16_t type;
    char name[TERN_DNS_NAME_TEXT_MAX];
    tern_dns_query *handle;
    tern_dns_result *res;
    bool cancelled; /* by us, with tern_dns_cancel */
    int start_error; /* tern_dns_resolve refused it */
    bool answered;
} probe_query;

static probe_query queries[MAX_QUERIES];
static size_t n_queries, outstanding;
static unsigned rounds = 1, round_no;
static bool cancel_odd, print_plan;
static const char *self_names[MAX_SELF];
static size_t n_self;
static tern_dns_resolver *resolver;
static uv_timer_t close_timer, watchdog;
static int exit_code;

static void print_bytes(const uint8_t *p, size_t n)
{
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '"' || p[i] == '\\')
            printf("\\%c", p[i]);
        else if (isprint(p[i]))
            putchar(p[i]);
        else
            printf("\\%03u", p[i]);
    }
    putchar('"');
}

static void print_rr(const tern_dns_rr *rr)
{
    char buf[64];
    printf("  %s ", tern_dns_type_name(rr->type));
    switch (rr->type) {
    case TERN_DNS_A:
    case TERN_DNS_AAAA:
        printf("%s", tern_dns_rr_addr_text(rr, buf, sizeof(buf)));
        break;
    case TERN_DNS_MX:
        printf("%u %s", rr->u.mx.preference, rr->u.mx.host);
        break;
    case TERN_DNS_PTR:
    case TERN_DNS_CNAME:
    case TERN_DNS_NS:
        printf("%s", rr->u.name);
        break;
    case TERN_DNS_TXT:
        for (size_t i = 0; i < rr->u.txt.n; i++) {
            if (i)
                putchar(' ');
            print_bytes(rr->u.txt.strings[i].data, rr->u.txt.strings[i].len);
        }
        break;
    case TERN_DNS_TLSA:
        printf("%u %u %u ", rr->u.tlsa.usage, rr->u.tlsa.selector, rr->u.tlsa.mtype);
        for (size_t i = 0; i < rr->u.tlsa.len; i++)
            printf("%02x", rr->u.tlsa.data[i]);
        break;
    default:
        printf("(%zu octets)", rr->u.raw.len);
        break;
    }
    putchar('\n');
}

static void print_plan_of(const probe_query *q)
{
    tern_arena a;
    tern_mx_plan plan;
    tern_arena_init(&a, 512);
    if (tern_dns_mx_plan(&a, q->name, q->res, self_names, n_self, NULL, NULL, &plan) != 0) {
        printf("  plan: out of memory\n");
        tern_arena_free(&a);
        return;
    }
    printf("  plan %s implicit=%d secure=%d:", tern_mx_outcome_name(plan.outcome), plan.implicit,
           plan.secure);
    for (size_t i = 0; i < plan.n_hosts; i++)
        printf(" %s/%u", plan.hosts[i].host, plan.hosts[i].preference);
    printf("\n");
    tern_arena_free(&a);
}

static void print_round(void)
{
    for (size_t i = 0; i < n_queries; i++) {
        probe_query *q = &queries[i];
        printf("Q%u %s %s ", round_no + 1, tern_dns_type_name(q->type), q->name);
        if (q->start_error) {
            printf("refused=\"%s\"\n", uv_strerror(q->start_error));
            continue;
        }
        if (q->cancelled) {
            printf("cancelled-by-caller%s\n", q->answered ? " BUT-ANSWERED" : "");
            continue;
        }
        const tern_dns_result *r = q->res;
        printf("status=%s", tern_dns_status_name(r->status));
        if (r->status == TERN_DNS_ANSWER)
            printf(" rcode=%s security=%s ttl=%u n=%zu", tern_dns_rcode_name(r->rcode),
                   tern_dns_security_name(r->security), r->ttl, r->n_rrs);
        if (r->canonname && strcasecmp(r->canonname, r->qname) != 0 &&
            strcasecmp(r->canonname, q->name) != 0) {
            /* libunbound writes names with the trailing dot. */
            size_t l = strlen(q->name);
            if (!(strncasecmp(r->canonname, q->name, l) == 0 && strcmp(r->canonname + l, ".") == 0))
                printf(" canon=%s", r->canonname);
        }
        if (r->error)
            printf(" error=\"%s\"", r->error);
        if (r->why_bogus)
            printf(" why_bogus=\"%s\"", r->why_bogus);
        printf("\n");
        for (size_t k = 0; k < r->n_rrs; k++)
            print_rr(&r->rrs[k]);
        if (print_plan && q->type == TERN_DNS_MX)
            print_plan_of(q);
    }
    fflush(stdout);
}

static void finish(void)
{
    uv_timer_stop(&watchdog);
    uv_timer_stop(&close_timer);
    uv_close((uv_handle_t *)&watchdog, NULL);
    uv_close((uv_handle_t *)&close_timer, NULL);
    if (resolver) {
        tern_dns_resolver_close(resolver);
        resolver = NULL;
    }
}

static void start_round(void);

static void on_result(void *data, tern_dns_result *res)
{
    probe_query *q = data;
    if (q->cancelled) {
        /* Must never happen: the test looks for this mark. */
        q->answered = true;
        tern_dns_result_free(res);
        exit_code = 1;
        return;
    }
    q->answered = true;
    q->handle = NULL;
    q->res = res;
    if (--outstanding > 0)
        return;
    print_round();
    for (size_t i = 0; i < n_queries; i++) {
        tern_dns_result_free(queries[i].res);
        queries[i].res = NULL;
    }
    if (++round_no < rounds && resolver != NULL)
        start_round(); /* from inside a callback, on purpose */
    else
        finish();
}

static void start_round(void)
{
    outstanding = 0;
    for (size_t i = 0; i < n_queries; i++) {
        probe_query *q = &queries[i];
        q->cancelled = q->answered = false;
        q->start_error = 0;
        q->res = NULL;
        int rc = tern_dns_resolve(resolver, q->name, q->type, 0, on_result, q, &q->handle);
        if (rc != 0) {
            q->start_error = rc;
            continue;
        }
        if (cancel_odd && i % 2 == 1) {
            tern_dns_cancel(q->handle);
            q->handle = NULL;
            q->cancelled = true;
            continue;
        }
        outstanding++;
    }
    if (outstanding == 0) {
        print_round();
        finish();
    }
}

static void on_close_timer(uv_timer_t *t)
{
    (void)t;
    if (resolver) {
        /* Every pending query is answered CANCELLED inside this call. */
        tern_dns_resolver *r = resolver;
        tern_dns_resolver_close(r);
    }
}

static void on_watchdog(uv_timer_t *t)
{
    (void)t;
    fprintf(stderr, "dns_probe: watchdog: giving up after %d ms\n", WATCHDOG_MS);
    exit_code = 1;
    on_close_timer(NULL);
}

static int usage(void)
{
    fprintf(stderr, "usage: dns_probe [-s IP@PORT]... [-R RESOLV.CONF] [-t MS] [-a FILE] [-n] [-c BYTES] "
                    "[-r ROUNDS] [-x] [-k MS] [-m] [-S SELF]... [-u ZONE]... TYPE:NAME...\n");
    return 2;
}

int main(int argc, char **argv)
{
    const char *fwd[TERN_DNS_MAX_FORWARDERS];
    const char *unblock[MAX_UNBLOCK];
    tern_dns_options o = {.forwarders = fwd, .dnssec = true, .unblock_zones = unblock};
    uint64_t close_after = 0;
    int c;
    while ((c = getopt(argc, argv, "s:t:a:nc:r:xk:mS:u:R:")) != -1) {
        switch (c) {
        case 's':
            if (o.n_forwarders == TERN_DNS_MAX_FORWARDERS)
                return usage();
            fwd[o.n_forwarders++] = optarg;
            break;
        case 't': o.timeout_ms = strtoull(optarg, NULL, 10); break;
        case 'a': o.trust_anchor_file = optarg; break;
        case 'R': o.resolv_conf = optarg; break;
        case 'n': o.dnssec = false; break;
        case 'c': o.cache_size = strtoull(optarg, NULL, 10); break;
        case 'r': rounds = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'x': cancel_odd = true; break;
        case 'k': close_after = strtoull(optarg, NULL, 10); break;
        case 'm': print_plan = true; break;
        case 'u':
            if (o.n_unblock_zones == MAX_UNBLOCK)
                return usage();
            unblock[o.n_unblock_zones++] = optarg;
            break;
        case 'S':
            if (n_self == MAX_SELF)
                return usage();
            self_names[n_self++] = optarg;
            break;
        default: return usage();
        }
    }
    if (optind >= argc || rounds == 0)
        return usage();
    for (int i = optind; i < argc; i++) {
        const char *colon = strchr(argv[i], ':');
        if (colon == NULL || n_queries == MAX_QUERIES)
            return usage();
        char tname[16];
        size_t tl = (size_t)(colon - argv[i]);
        if (tl == 0 || tl >= sizeof(tname))
            return usage();
        memcpy(tname, argv[i], tl);
        tname[tl] = '\0';
        probe_query *q = &queries[n_queries++];
        q->type = tern_dns_type_from_name(tname);
        if (q->type == 0) {
            char *end;
            unsigned long t = strtoul(tname, &end, 10);
            if (*end != '\0' || t == 0 || t > 65535)
                return usage();
            q->type = (uint16_t)t;
        }
        if (q->type == TERN_DNS_PTR &&
            tern_dns_reverse_name(colon + 1, q->name, sizeof(q->name)) == 0)
            continue;
        snprintf(q->name, sizeof(q->name), "%s", colon + 1);
    }

    uv_loop_t loop;
    uv_loop_init(&loop);
    char err[256];
    resolver = tern_dns_resolver_new(&loop, &o, err, sizeof(err));
    if (resolver == NULL) {
        fprintf(stderr, "dns_probe: %s\n", err);
        uv_loop_close(&loop);
        return 2;
    }
    uv_timer_init(&loop, &close_timer);
    uv_timer_init(&loop, &watchdog);
    uv_timer_start(&watchdog, on_watchdog, WATCHDOG_MS, 0);
    if (close_after)
        uv_timer_start(&close_timer, on_close_timer, close_after, 0);
    start_round();
    uv_run(&loop, UV_RUN_DEFAULT);
    for (size_t i = 0; i < n_queries; i++)
        if (queries[i].answered && queries[i].cancelled)
            exit_code = 1;
    if (uv_loop_close(&loop) != 0) {
        fprintf(stderr, "dns_probe: handles left open on the loop\n");
        exit_code = 1;
    }
    return exit_code;
}
