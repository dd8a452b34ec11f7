/* The asynchronous resolver (see dns.h): one libunbound context per libuv
 * loop, in threaded async mode (never forked: the server is threaded), its
 * answer pipe (ub_fd) watched by a uv_poll, and a uv_timer per query so a
 * deadline holds whatever libunbound's own retries do. Input: options and
 * names from the caller; answers from libunbound, decoded by dns_rdata.c. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unbound.h>

#include "lib/dns.h"

#define DEFAULT_TIMEOUT_MS 10000u

struct tern_dns_query {
    tern_dns_resolver *r;
    tern_dns_query *prev, *next; /* pending list, for close */
    uv_timer_t timer;            /* closed before the query is freed */
    tern_dns_cb cb;
    void *data;
    tern_dns_result *res;        /* allocated up front: delivery cannot fail */
    uint64_t timeout_ms;
    uint16_t type;
    int async_id;
    bool done;                   /* answered, timed out or cancelled */
};

struct tern_dns_resolver {
    uv_loop_t *loop;
    struct ub_ctx *ctx;
    uv_poll_t poll;
    uint64_t timeout_ms;
    tern_dns_query *pending;
    size_t n_pending;
    size_t open_handles;         /* the poll and closing query timers */
    bool closing;
    bool broken;                 /* libunbound's pipe failed: no more answers */
};

const char *tern_dns_status_name(tern_dns_status s)
{
    switch (s) {
    case TERN_DNS_ANSWER: return "answer";
    case TERN_DNS_TIMEOUT: return "timeout";
    case TERN_DNS_FAILED: return "failed";
    case TERN_DNS_MALFORMED: return "malformed";
    case TERN_DNS_CANCELLED: return "cancelled";
    }
    return "?";
}

const char *tern_dns_rcode_name(int rcode)
{
    static const char *const names[] = {"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN",
                                        "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
                                        "NXRRSET", "NOTAUTH", "NOTZONE"};
    if (rcode >= 0 && (size_t)rcode < sizeof(names) / sizeof(names[0]))
        return names[rcode];
    return "RCODE?";
}

const char *tern_dns_security_name(tern_dns_security s)
{
    switch (s) {
    case TERN_DNS_INSECURE: return "insecure";
    case TERN_DNS_SECURE: return "secure";
    case TERN_DNS_BOGUS: return "bogus";
    }
    return "?";
}

static void set_err(char *err, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t size, const char *fmt, ...)
{
    if (err == NULL || size == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, size, fmt, ap);
    va_end(ap);
}

/* ---- the resolver ------------------------------------------------------ */

static void resolver_free_if_closed(tern_dns_resolver *r)
{
    if (r->open_handles > 0)
        return;
    /* The poll is closed, so the fd libunbound owns may go with the
     * context. This joins the background thread: a short block, at close
     * only. */
    ub_ctx_delete(r->ctx);
    free(r);
}

static void on_poll_closed(uv_handle_t *h)
{
    tern_dns_resolver *r = h->data;
    r->open_handles--;
    resolver_free_if_closed(r);
}

static void fail_pending(tern_dns_resolver *r, tern_dns_status st, const char *why);

static void on_readable(uv_poll_t *h, int status, int events)
{
    tern_dns_resolver *r = h->data;
    (void)events;
    /* ub_process runs the callbacks of every answer in the pipe. If the
     * pipe itself fails (the background thread is gone), it would stay
     * readable forever: stop watching it and fail what waits, rather than
     * spin or leave callers to their timeouts. */
    int rc = status < 0 ? -1 : ub_process(r->ctx);
    if (rc != 0 && !r->closing) {
        r->broken = true;
        uv_poll_stop(&r->poll);
        fail_pending(r, TERN_DNS_FAILED, "the resolver's background thread failed");
    }
}

static int set_opt(struct ub_ctx *ctx, const char *opt, const char *val, char *err, size_t size)
{
    int rc = ub_ctx_set_option(ctx, opt, val);
    if (rc != 0)
        set_err(err, size, "dns: cannot set %s %s", opt, val);
    return rc;
}

tern_dns_resolver *tern_dns_resolver_new(uv_loop_t *loop, const tern_dns_options *o, char *err,
                                         size_t err_size)
{
    char num[32];
    if (o->n_forwarders > TERN_DNS_MAX_FORWARDERS) {
        set_err(err, err_size, "dns: more than %d forwarders", TERN_DNS_MAX_FORWARDERS);
        return NULL;
    }
    if (o->timeout_ms != 0 &&
        (o->timeout_ms < TERN_DNS_TIMEOUT_MIN_MS || o->timeout_ms > TERN_DNS_TIMEOUT_MAX_MS)) {
        set_err(err, err_size, "dns: timeout out of bounds (100 ms to 5 min)");
        return NULL;
    }
    tern_dns_resolver *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        set_err(err, err_size, "dns: out of memory");
        return NULL;
    }
    r->loop = loop;
    r->timeout_ms = o->timeout_ms ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
    r->ctx = ub_ctx_create();
    if (r->ctx == NULL) {
        set_err(err, err_size, "dns: cannot create the libunbound context");
        free(r);
        return NULL;
    }
    int rc = ub_ctx_async(r->ctx, 1);
    if (rc != 0) {
        set_err(err, err_size, "dns: threaded mode: %s", ub_strerror(rc));
        goto fail;
    }
    for (size_t i = 0; i < o->n_forwarders; i++) {
        rc = ub_ctx_set_fwd(r->ctx, o->forwarders[i]);
        if (rc != 0) {
            set_err(err, err_size, "dns: forwarder \"%.64s\": %s", o->forwarders[i],
                    ub_strerror(rc));
            goto fail;
        }
    }
    /* Either way the servers are forwarders the operator chose, and a
     * local cache on loopback (127.0.0.1 or 127.0.0.53 in resolv.conf, the
     * tests' server) is a common one: libunbound refuses loopback unless
     * told otherwise. */
    if (set_opt(r->ctx, "do-not-query-localhost:", "no", err, err_size) != 0)
        goto fail;
    if (o->n_forwarders == 0) {
        rc = ub_ctx_resolvconf(r->ctx, o->resolv_conf);
        if (rc != 0) {
            set_err(err, err_size, "dns: reading %s: %s",
                    o->resolv_conf ? o->resolv_conf : "/etc/resolv.conf", ub_strerror(rc));
            goto fail;
        }
    }
    if (!o->dnssec) {
        if (set_opt(r->ctx, "module-config:", "iterator", err, err_size) != 0)
            goto fail;
    } else if (o->trust_anchor_file != NULL) {
        rc = ub_ctx_add_ta_file(r->ctx, o->trust_anchor_file);
        if (rc != 0) {
            set_err(err, err_size, "dns: trust anchor file %s: %s", o->trust_anchor_file,
                    ub_strerror(rc));
            goto fail;
        }
    }
    if (o->cache_size > 0) {
        /* Half each: messages point into the RRset cache. */
        snprintf(num, sizeof(num), "%llu", (unsigned long long)(o->cache_size / 2));
        if (set_opt(r->ctx, "msg-cache-size:", num, err, err_size) != 0 ||
            set_opt(r->ctx, "rrset-cache-size:", num, err, err_size) != 0)
            goto fail;
    }
    if (o->cache_max_ttl > 0) {
        snprintf(num, sizeof(num), "%u", (unsigned)o->cache_max_ttl);
        if (set_opt(r->ctx, "cache-max-ttl:", num, err, err_size) != 0)
            goto fail;
    }
    /* libunbound's own patience per server; ours per query is the timer. */
    snprintf(num, sizeof(num), "%llu", (unsigned long long)r->timeout_ms);
    (void)ub_ctx_set_option(r->ctx, "infra-cache-max-rtt:", num);
    /* RFC 6761 6.4: "invalid." never resolves. Adding that local zone also
     * finalizes the context, which reads the trust anchor file now, so a
     * bad file is a start-up error rather than every query's. */
    rc = ub_ctx_zone_add(r->ctx, "invalid.", "always_nxdomain");
    if (rc != 0) {
        set_err(err, err_size, "dns: %s%s", ub_strerror(rc),
                o->trust_anchor_file ? " (is the trust anchor file valid?)" : "");
        goto fail;
    }
    /* Removing the built-in zone after finalizing is what works: a
     * "nodefault" set as an option does not reach the defaults. */
    for (size_t i = 0; i < o->n_unblock_zones; i++) {
        const char *z = o->unblock_zones[i];
        size_t zl = strlen(z);
        char zone[TERN_DNS_NAME_TEXT_MAX];
        if (zl == 0 || zl + 2 > sizeof(zone)) {
            set_err(err, err_size, "dns: bad zone name to unblock");
            goto fail;
        }
        snprintf(zone, sizeof(zone), "%s%s", z, z[zl - 1] == '.' ? "" : ".");
        rc = ub_ctx_zone_remove(r->ctx, zone);
        if (rc != 0) {
            set_err(err, err_size, "dns: cannot unblock zone \"%.64s\": %s", z, ub_strerror(rc));
            goto fail;
        }
    }
    int fd = ub_fd(r->ctx);
    if (fd < 0 || uv_poll_init(loop, &r->poll, fd) != 0) {
        set_err(err, err_size, "dns: cannot watch libunbound's descriptor");
        goto fail;
    }
    r->poll.data = r;
    r->open_handles = 1;
    uv_poll_start(&r->poll, UV_READABLE, on_readable);
    /* The pending queries' timers keep the loop alive; an idle resolver
     * must not. */
    uv_unref((uv_handle_t *)&r->poll);
    return r;
fail:
    ub_ctx_delete(r->ctx);
    free(r);
    return NULL;
}

size_t tern_dns_resolver_pending(const tern_dns_resolver *r)
{
    return r->n_pending;
}

/* ---- queries ----------------------------------------------------------- */

static void unlink_query(tern_dns_query *q)
{
    tern_dns_resolver *r = q->r;
    if (q->prev)
        q->prev->next = q->next;
    else
        r->pending = q->next;
    if (q->next)
        q->next->prev = q->prev;
    q->prev = q->next = NULL;
    r->n_pending--;
}

static void on_timer_closed(uv_handle_t *h)
{
    tern_dns_query *q = h->data;
    tern_dns_resolver *r = q->r;
    tern_dns_result_free(q->res);
    free(q);
    r->open_handles--;
    resolver_free_if_closed(r);
}

/* The query leaves the pending list at once; its memory goes when its
 * timer has closed. */
static void finish_query(tern_dns_query *q)
{
    q->done = true;
    unlink_query(q);
    uv_timer_stop(&q->timer);
    q->r->open_handles++;
    uv_close((uv_handle_t *)&q->timer, on_timer_closed);
}

static tern_dns_result *result_new(const char *name, uint16_t type)
{
    tern_dns_result *res = calloc(1, sizeof(*res));
    if (res == NULL)
        return NULL;
    tern_arena_init(&res->arena, 1024);
    res->qtype = type;
    res->qname = tern_arena_strdup(&res->arena, name);
    if (res->qname == NULL) {
        tern_dns_result_free(res);
        return NULL;
    }
    return res;
}

static void set_error(tern_dns_result *res, tern_dns_status st, const char *error)
{
    res->status = st;
    res->error = tern_arena_strdup(&res->arena, error);
    if (res->error == NULL)
        res->error = "out of memory";
}

void tern_dns_result_free(tern_dns_result *res)
{
    if (res == NULL)
        return;
    tern_arena_free(&res->arena);
    free(res);
}

/* Turns libunbound's result into ours; on a decoding failure the status is
 * MALFORMED and no record is kept, so nobody acts on half an answer. */
static void fill_result(tern_dns_result *res, const struct ub_result *u)
{
    tern_arena *a = &res->arena;
    res->rcode = u->rcode;
    res->security = u->secure ? TERN_DNS_SECURE : u->bogus ? TERN_DNS_BOGUS : TERN_DNS_INSECURE;
    if (u->bogus && u->why_bogus)
        res->why_bogus = tern_arena_strdup(a, u->why_bogus);
    res->ttl = u->ttl > 0 ? (uint32_t)u->ttl : 0;
    if (u->canonname)
        res->canonname = tern_arena_strdup(a, u->canonname);
    /* libunbound hands out the records of a bogus answer too; they are
     * forged or broken, and a caller that forgot to look at `security`
     * must not act on them. */
    if (res->security == TERN_DNS_BOGUS)
        return;
    size_t n = 0;
    if (u->havedata && u->data)
        while (u->data[n] != NULL)
            n++;
    if (n == 0)
        return;
    res->rrs = tern_arena_alloc(a, n * sizeof(*res->rrs));
    if (res->rrs == NULL) {
        set_error(res, TERN_DNS_FAILED, "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const char *why = NULL;
        size_t len = u->len[i] > 0 ? (size_t)u->len[i] : 0;
        tern_dns_rdata_status st = tern_dns_rdata_parse(
            a, res->qtype, (const uint8_t *)u->data[i], len, &res->rrs[i], &why);
        if (st != TERN_DNS_RDATA_OK) {
            res->status = st == TERN_DNS_RDATA_NOMEM ? TERN_DNS_FAILED : TERN_DNS_MALFORMED;
            res->error = tern_arena_printf(a, "%s record %zu: %s", tern_dns_type_name(res->qtype),
                                           i + 1, why ? why : "undecodable");
            if (res->error == NULL)
                res->error = "undecodable record";
            res->rrs = NULL;
            res->n_rrs = 0;
            return;
        }
    }
    res->n_rrs = n;
}

/* Hands the result over and retires the query; the callback may start
 * new queries, cancel others or close the resolver. */
static void deliver(tern_dns_query *q)
{
    tern_dns_cb cb = q->cb;
    void *data = q->data;
    tern_dns_result *res = q->res;
    q->res = NULL;
    finish_query(q);
    cb(data, res);
}

static void on_ub_answer(void *mydata, int err, struct ub_result *u)
{
    tern_dns_query *q = mydata;
    if (q->done) {
        ub_resolve_free(u);
        return;
    }
    if (err != 0 || u == NULL)
        set_error(q->res, TERN_DNS_FAILED, ub_strerror(err));
    else
        fill_result(q->res, u);
    ub_resolve_free(u);
    deliver(q);
}

static void on_timeout(uv_timer_t *t)
{
    tern_dns_query *q = t->data;
    (void)ub_cancel(q->r->ctx, q->async_id);
    char msg[64];
    snprintf(msg, sizeof(msg), "no answer within %llu ms", (unsigned long long)q->timeout_ms);
    set_error(q->res, TERN_DNS_TIMEOUT, msg);
    deliver(q);
}

/* Names come from mail (domains, DKIM selectors, SPF macros): refuse
 * here what cannot be a query name, so a caller learns it at once. */
static bool name_ok(const char *name)
{
    size_t len = strlen(name), label = 0;
    if (strcmp(name, ".") == 0)
        return true;
    if (len > 1 && name[len - 1] == '.')
        len--;
    if (len == 0 || len > 253)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c <= 0x20 || c >= 0x7f)
            return false;
        if (c == '.') {
            if (label == 0)
                return false;
            label = 0;
        } else if (++label > TERN_DNS_LABEL_MAX) {
            return false;
        }
    }
    return label > 0;
}

int tern_dns_resolve(tern_dns_resolver *r, const char *name, uint16_t type, uint64_t timeout_ms,
                     tern_dns_cb cb, void *data, tern_dns_query **q_r)
{
    if (q_r)
        *q_r = NULL;
    if (r->closing)
        return UV_ECANCELED;
    if (r->broken)
        return UV_EIO;
    if (name == NULL || !name_ok(name) || cb == NULL)
        return UV_EINVAL;
    if (timeout_ms == 0)
        timeout_ms = r->timeout_ms;
    tern_dns_query *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return UV_ENOMEM;
    q->res = result_new(name, type);
    if (q->res == NULL) {
        free(q);
        return UV_ENOMEM;
    }
    q->timeout_ms = timeout_ms;
    q->r = r;
    q->cb = cb;
    q->data = data;
    q->type = type;
    int rc = ub_resolve_async(r->ctx, name, type, 1 /* IN */, q, on_ub_answer, &q->async_id);
    if (rc != 0) {
        tern_dns_result_free(q->res);
        free(q);
        return rc == UB_SYNTAX ? UV_EINVAL : rc == UB_NOMEM ? UV_ENOMEM : UV_EIO;
    }
    uv_timer_init(r->loop, &q->timer);
    q->timer.data = q;
    uv_timer_start(&q->timer, on_timeout, timeout_ms, 0);
    q->next = r->pending;
    if (r->pending)
        r->pending->prev = q;
    r->pending = q;
    r->n_pending++;
    if (q_r)
        *q_r = q;
    return 0;
}

void tern_dns_cancel(tern_dns_query *q)
{
    if (q == NULL || q->done)
        return;
    (void)ub_cancel(q->r->ctx, q->async_id);
    finish_query(q);
}

/* The callbacks run here cannot add queries (closing or broken is set
 * before), so the loop ends. */
static void fail_pending(tern_dns_resolver *r, tern_dns_status st, const char *why)
{
    while (r->pending != NULL) {
        tern_dns_query *q = r->pending;
        (void)ub_cancel(r->ctx, q->async_id);
        set_error(q->res, st, why);
        deliver(q);
    }
}

void tern_dns_resolver_close(tern_dns_resolver *r)
{
    if (r == NULL || r->closing)
        return;
    r->closing = true;
    fail_pending(r, TERN_DNS_CANCELLED, "the resolver was closed");
    uv_poll_stop(&r->poll);
    uv_close((uv_handle_t *)&r->poll, on_poll_closed);
}

/* ---- names ------------------------------------------------------------- */

int tern_dns_reverse_name(const char *addr, char *out, size_t out_size)
{
    unsigned char b[16];
    static const char hex[] = "0123456789abcdef";
    if (inet_pton(AF_INET, addr, b) == 1) {
        int n = snprintf(out, out_size, "%u.%u.%u.%u.in-addr.arpa", b[3], b[2], b[1], b[0]);
        return n > 0 && (size_t)n < out_size ? 0 : -1;
    }
    if (inet_pton(AF_INET6, addr, b) == 1) {
        /* 32 nibbles, each "x.", then "ip6.arpa". */
        if (out_size < 64 + 9)
            return -1;
        size_t o = 0;
        for (int i = 15; i >= 0; i--) {
            out[o++] = hex[b[i] & 0xf];
            out[o++] = '.';
            out[o++] = hex[b[i] >> 4];
            out[o++] = '.';
        }
        memcpy(out + o, "ip6.arpa", 9);
        return 0;
    }
    return -1;
}
