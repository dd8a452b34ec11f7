/* The remote queue manager, on the main loop: it knows every spool message
 * with recipients handed to the remote queue (RemoteDelivery), groups
 * their recipients by destination domain, resolves the MX hosts (or uses
 * the smarthost), delivers through the SMTP client, and records each
 * recipient's end in the spool: delivered, or failed permanently (a DSN
 * goes to the sender), or deferred with back-off until the lifetime runs
 * out. Concurrency is bounded globally and per destination, and messages
 * are served in turn (queue_sched.h) so one huge backlog does not starve
 * the others; a kick costs what it starts, not what is queued.
 * Input: spool envelopes (ours), DNS answers and SMTP replies (untrusted,
 * parsed by lib/dns and the client). */
#include "server/queue.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "lib/dns.h"
#include "lib/dns_mx.h"
#include "lib/json_write.h"
#include "lib/log.h"
#include "lib/strmap.h"
#include "lib/util.h"
#include "protocols/smtp/smtp_client.h"
#include "protocols/smtp/smtp_pool.h"
#include "server/queue_mtasts.h"
#include "server/queue_dane.h"
#include "server/queue_sched.h"

#define MOD "queue"
#define TICK_MS 1000

typedef enum { QR_PENDING = 0, QR_BUSY, QR_DONE } qr_state;

typedef struct qrcpt {
    size_t idx;            /* in the spool envelope */
    char *addr;
    const char *domain;    /* points into addr */
    qr_state st;
    unsigned attempts;
    uint64_t next_try_ms;  /* monotonic */
    char last_error[1024]; /* the reply (when remote is set) or our reason */
    char status[16];       /* RFC 3463 code of the failure */
    char remote[80];       /* the server that answered, or "" */
    bool failed, bounced;
    uint8_t qflags;        /* TERN_QFLAG_* as persisted */
    bool delay_pending;    /* a "delayed" DSN is due at the end of this attempt */
} qrcpt;

typedef struct qmsg {
    char qid[TERN_QID_LEN];
    tern_envelope *env;
    qrcpt *r;
    size_t n;
    uint64_t added_ms;
    unsigned busy;         /* attempts in flight */
    struct qmsg *prev, *next;
    tern_qs_node sn;       /* where the scheduler keeps it */
    bool held;             /* by the admin (tern_queue_hold); persisted */
} qmsg;

typedef struct post {
    char qid[TERN_QID_LEN];
    struct post *next;
} post;

typedef struct dest {
    char domain[256];
    unsigned active;
    tern_qs_wait wait;     /* messages due here, waiting for a slot */
    struct dest *next;
} dest;

#define MSG_OF(node) ((qmsg *)((char *)(node) - offsetof(qmsg, sn)))
#define DEST_OF(w) ((dest *)((char *)(w) - offsetof(dest, wait)))

/* A destination address's circuit breaker: after host_down_threshold
 * connection failures in a row it is "down" (skipped without connecting,
 * so a dead host does not cost every message a connect timeout) for
 * host_down_cooldown; then one attempt probes it: success closes the
 * circuit, failure opens it for another cooldown. */
typedef struct qhost {
    char addr[64];         /* "192.0.2.1:25", "[2001:db8::1]:25" */
    unsigned failures;     /* consecutive connection failures */
    uint64_t down_until;   /* monotonic ms; 0: up */
    bool probing;          /* the one probe is in flight */
    unsigned inflight;     /* connections using it: never pruned then */
    struct qhost *next;
} qhost;

struct tern_queue {
    tern_queue_env env;
    uv_timer_t tick;
    uv_async_t wake;
    pthread_mutex_t mu;
    post *posts;
    qmsg *msgs;
    size_t n_msgs;
    tern_strmap by_qid;    /* qmsg by qid */
    dest *dests;
    tern_strmap by_domain; /* dest by domain, case-insensitive */
    tern_qs sched;
    unsigned active;
    tern_dns_resolver *dns;
    tern_tls_client *tls;  /* opportunistic STARTTLS */
    tern_conn_worker cw;
    bool closing;
    bool notify_closed;    /* under mu: the wake handle is gone */
    unsigned handles;
    struct attempt *attempts;
    tern_smtp_pool *pool;  /* kept connections (smtp_pool.c) */
    tern_mtasts *mtasts;   /* MTA-STS + TLS-RPT (server/queue_mtasts.c) */
    qhost *hosts;          /* circuit breakers, by address */
    size_t n_hosts;
    /* smarthost_tls verify: contexts loaded from queue.smarthost_ca_file,
     * one per file named so far. Never freed before the queue: a kept
     * connection may still use one after a SIGHUP names another file. */
    struct sh_ca {
        char *path;
        tern_tls_client *tls;
        struct sh_ca *next;
    } *sh_cas;
    bool kicking;          /* inside tern_queue_kick (an attempt may end in it) */
};

/* One delivery attempt: a message, the recipients of one domain. */
typedef struct attempt {
    tern_queue *q;
    qmsg *m;
    char domain[256];
    size_t *idx;           /* indexes into m->r */
    size_t n;
    tern_arena arena;
    tern_dns_result *mx;
    tern_mx_plan plan;
    size_t host;           /* next host of the plan */
    tern_dns_result *addrs;
    size_t addr_i;
    uint16_t port;
    uint8_t *data;
    size_t len;
    tern_envelope *cenv;   /* the envelope for the client: others marked done */
    uv_work_t work;
    int load_status;
    char last_error[1024];
    tern_smtp_client *client;   /* in flight, for cancel at shutdown */
    struct attempt *prev, *next;
    tern_sts_applied *sts;      /* the MTA-STS policy step's answer; NULL: none asked */
    /* The circuit breaker's view of the current connection. */
    struct sockaddr_storage cur_ss;
    qhost *cur_host;
    bool cur_probe;        /* this connection is the host's probe */
    unsigned conn_tries;   /* connects to cur_ss so far (connect_retries) */
    /* The current host's addresses: AAAA in addrs6, A in addrs, tried in
     * `order` (interleaved, IPv6 first), addr_i indexing it. */
    tern_dns_result *addrs6;
    const tern_dns_rr **order;
    size_t n_order;
    unsigned lookups;      /* address queries in flight */
    char lookup_error[256];
    tern_config *cfg;      /* held while a connection runs (env.config_ref) */
    tern_queue_dane dane;       /* the current host's TLSA verdict (queue_dane.c) */
    /* RFC 8689 4.2.1: a host that cannot take a REQUIRETLS message is
     * passed over; the message fails (5.7.10) only when every host failed
     * that way, and is deferred when one failed otherwise. */
    char rtls_error[512];  /* the last such refusal, or "" */
    bool other_fail;       /* a host failed for another reason */
} attempt;

/* The client's refusal to send a REQUIRETLS message to this host. */
static bool is_requiretls_refusal(const char *e)
{
    return strncmp(e, "5.7.10 REQUIRETLS", 17) == 0;
}

static uint64_t now_ms(void)
{
    return tern_now_ms();
}

/* Wall clock in unix ms: what the spool keeps, since the monotonic clock
 * starts again at every boot. */
static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The monotonic deadline of a persisted wall-clock one (0: due now). */
static uint64_t mono_of_wall(int64_t wall)
{
    int64_t w = wall_ms();
    return wall > w ? now_ms() + (uint64_t)(wall - w) : 0;
}

static int64_t wall_of_mono(uint64_t mono)
{
    uint64_t n = now_ms();
    return wall_ms() + (mono > n ? (int64_t)(mono - n) : 0);
}

static dest *dest_get(tern_queue *q, const char *domain)
{
    dest *d = tern_strmap_get(&q->by_domain, domain);
    if (d)
        return d;
    d = calloc(1, sizeof(*d));
    if (d == NULL)
        return NULL;
    snprintf(d->domain, sizeof(d->domain), "%s", domain);
    if (tern_strmap_put(&q->by_domain, d->domain, d) != 0) {
        free(d);
        return NULL;
    }
    d->next = q->dests;
    q->dests = d;
    return d;
}

/* ---- the set of queued messages ----------------------------------------- */

static void qmsg_free(qmsg *m)
{
    for (size_t i = 0; i < m->n; i++)
        free(m->r[i].addr);
    free(m->r);
    if (m->env)
        tern_envelope_free(m->env);
    free(m);
}

static qmsg *qmsg_find(tern_queue *q, const char *qid)
{
    return tern_strmap_get(&q->by_qid, qid);
}

static void qmsg_unlink(tern_queue *q, qmsg *m)
{
    tern_qs_remove(&q->sched, &m->sn);
    tern_strmap_del(&q->by_qid, m->qid);
    if (m->prev)
        m->prev->next = m->next;
    else
        q->msgs = m->next;
    if (m->next)
        m->next->prev = m->prev;
    q->n_msgs--;
}

/* Puts m where the scheduler should look for it: the ready list when a
 * recipient is due now, the heap when the earliest is due later, nowhere
 * when it is held or every recipient is in flight or finished. Called
 * whenever something about m's recipients changed. */
/* Whether every recipient of m still to deliver is one of domain's: only
 * such a message may wait on domain's list, or a recipient of another
 * domain would wait for a slot it does not need. */
static bool msg_only_for(const qmsg *m, const char *domain)
{
    for (size_t i = 0; i < m->n; i++)
        if (m->r[i].st == QR_PENDING && strcasecmp(m->r[i].domain, domain) != 0)
            return false;
    return true;
}

static void msg_resched(tern_queue *q, qmsg *m)
{
    if (q->closing || m->held) {
        tern_qs_remove(&q->sched, &m->sn);
        return;
    }
    uint64_t now = now_ms(), due = UINT64_MAX;
    for (size_t i = 0; i < m->n; i++) {
        const qrcpt *r = &m->r[i];
        if (r->st != QR_PENDING)
            continue;
        if (r->next_try_ms <= now) {
            /* Already ready, or waiting for the one destination it has
             * left: it keeps its place in line. */
            bool keep = m->sn.where == TERN_QS_READY ||
                        (m->sn.where == TERN_QS_WAIT &&
                         msg_only_for(m, DEST_OF(m->sn.wait)->domain));
            if (!keep)
                tern_qs_ready(&q->sched, &m->sn, false);
            return;
        }
        if (r->next_try_ms < due)
            due = r->next_try_ms;
    }
    if (due != UINT64_MAX)
        tern_qs_defer(&q->sched, &m->sn, due);
    else
        tern_qs_remove(&q->sched, &m->sn);
}

/* Adds (or refreshes) qid: its recipients queued for remote delivery, or
 * all of them for a message the queue owns. */
static void queue_take(tern_queue *q, const char *qid)
{
    tern_envelope *env = tern_spool_envelope_dup(q->env.spool, qid);
    if (env == NULL)
        return;
    bool owned = env->pipeline && strcmp(env->pipeline, TERN_QUEUE_PIPELINE) == 0;
    qmsg *m = qmsg_find(q, qid);
    if (m == NULL) {
        m = calloc(1, sizeof(*m));
        if (m == NULL) {
            tern_envelope_free(env);
            return;
        }
        snprintf(m->qid, sizeof(m->qid), "%s", qid);
        if (tern_strmap_put(&q->by_qid, m->qid, m) != 0) {
            free(m);
            tern_envelope_free(env);
            return; /* found again by the scan at the next start */
        }
        m->added_ms = now_ms();
        m->next = q->msgs;
        if (q->msgs)
            q->msgs->prev = m;
        q->msgs = m;
        q->n_msgs++;
    }
    if (m->env)
        tern_envelope_free(m->env);
    m->env = env;
    m->held = env->held;
    for (size_t i = 0; i < env->n_rcpts; i++) {
        const tern_spool_rcpt *sr = &env->rcpts[i];
        if (sr->done || !(owned || sr->queued))
            continue;
        bool known = false;
        for (size_t k = 0; k < m->n; k++)
            if (m->r[k].idx == i)
                known = true;
        if (known)
            continue;
        qrcpt *nr = realloc(m->r, (m->n + 1) * sizeof(*nr));
        if (nr == NULL)
            break;
        m->r = nr;
        qrcpt *r = &m->r[m->n];
        memset(r, 0, sizeof(*r));
        r->idx = i;
        r->addr = strdup(sr->addr);
        if (r->addr == NULL)
            break;
        const char *at = strrchr(r->addr, '@');
        r->domain = at ? at + 1 : "";
        m->n++;
        /* A previous run's retry state: the count goes on and the next
         * try keeps its time (a restart is no reason to retry at once). */
        r->attempts = sr->attempts;
        r->qflags = sr->qflags;
        r->next_try_ms = sr->next_try > 0 ? mono_of_wall(sr->next_try) : 0;
        if (sr->last_error)
            snprintf(r->last_error, sizeof(r->last_error), "%s", sr->last_error);
        if (sr->attempts > 0) {
            char qa[600];
            uint64_t n = now_ms();
            TLOG_INFO(MOD, "event=restored qid=%s rcpt=%s attempts=%u retry_in_s=%" PRIu64, qid,
                      tern_log_q(qa, sizeof(qa), r->addr), r->attempts,
                      r->next_try_ms > n ? (r->next_try_ms - n) / 1000 : 0);
        }
    }
    msg_resched(q, m);
}

static void wake_cb(uv_async_t *a)
{
    tern_queue *q = a->data;
    pthread_mutex_lock(&q->mu);
    post *list = q->posts;
    q->posts = NULL;
    pthread_mutex_unlock(&q->mu);
    while (list) {
        post *p = list;
        list = p->next;
        if (!q->closing)
            queue_take(q, p->qid);
        free(p);
    }
    tern_queue_kick(q);
}

void tern_queue_notify(void *arg, const char *qid)
{
    tern_queue *q = arg;
    post *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return; /* the periodic scan at the next start finds it */
    snprintf(p->qid, sizeof(p->qid), "%s", qid);
    pthread_mutex_lock(&q->mu);
    if (q->notify_closed) {
        /* Shutting down: the spool keeps the recipients queued and the
         * scan at the next start finds them. */
        pthread_mutex_unlock(&q->mu);
        free(p);
        return;
    }
    p->next = q->posts;
    q->posts = p;
    uv_async_send(&q->wake);
    pthread_mutex_unlock(&q->mu);
}

/* ---- finishing recipients ----------------------------------------------- */

static void msg_maybe_done(tern_queue *q, qmsg *m)
{
    if (m->busy > 0)
        return;
    for (size_t i = 0; i < m->n; i++)
        if (m->r[i].st != QR_DONE)
            return;
    /* Every recipient the queue had is finished; the entry completes when
     * the pipeline has finished its own too (either order). */
    int r = tern_spool_complete_if_done(q->env.spool, m->qid);
    TLOG_DEBUG(MOD, "event=msg_done qid=%s completed=%d", m->qid, r);
    qmsg_unlink(q, m);
    qmsg_free(m);
}

static void rcpt_delivered(tern_queue *q, qmsg *m, qrcpt *r, const char *detail)
{
    char qa[600], qd[700];
    TLOG_INFO(MOD, "event=delivered qid=%s rcpt=%s attempts=%u detail=%s", m->qid,
              tern_log_q(qa, sizeof(qa), r->addr), r->attempts, tern_log_q(qd, sizeof(qd), detail));
    r->st = QR_DONE;
    tern_spool_rcpt_done(q->env.spool, m->qid, r->idx);
}

/* A permanent failure: bounced (with the others of the message) when no
 * other attempt of it is in flight. */
static void rcpt_fail(qrcpt *r, const char *status, const char *remote, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void rcpt_fail(qrcpt *r, const char *status, const char *remote, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->last_error, sizeof(r->last_error), fmt, ap);
    va_end(ap);
    snprintf(r->status, sizeof(r->status), "%s", status && status[0] ? status : "5.0.0");
    snprintf(r->remote, sizeof(r->remote), "%s", remote ? remote : "");
    r->st = QR_DONE;
    r->failed = true;
}

static uint64_t backoff(const tern_queue *q, unsigned attempts)
{
    const tern_queue_conf *c = q->env.conf(q->env.conf_arg);
    uint64_t d = c->retry_min_ms;
    for (unsigned i = 1; i < attempts && d < c->retry_max_ms; i++)
        d *= 2;
    return d < c->retry_max_ms ? d : c->retry_max_ms;
}

static void rcpt_defer(tern_queue *q, qmsg *m, qrcpt *r, const char *why)
{
    const tern_queue_conf *c = q->env.conf(q->env.conf_arg);
    snprintf(r->last_error, sizeof(r->last_error), "%s", why);
    int64_t age_ms = ((int64_t)time(NULL) - m->env->received_at) * 1000;
    if (age_ms > 0 && (uint64_t)age_ms >= c->max_lifetime_ms) {
        rcpt_fail(r, "4.4.7", NULL, "delivery time expired; last error: %.900s", why);
        TLOG_INFO(MOD, "event=expired qid=%s attempts=%u", m->qid, r->attempts);
        return;
    }
    r->st = QR_PENDING;
    r->next_try_ms = now_ms() + backoff(q, r->attempts);
    /* RFC 3461 NOTIFY=DELAY: one "delayed" DSN per recipient once it has
     * waited delay_warning; the flag is persisted with the retry state so
     * a restart does not send it again. */
    const tern_spool_rcpt *sr = &m->env->rcpts[r->idx];
    if (!q->closing && (sr->notify & TERN_NOTIFY_DELAY) && !(r->qflags & TERN_QFLAG_DELAY_SENT) &&
        age_ms > 0 && (uint64_t)age_ms >= c->delay_warning_ms && q->env.delay &&
        m->env->mail_from && m->env->mail_from[0]) {
        r->qflags |= TERN_QFLAG_DELAY_SENT;
        r->delay_pending = true;
    }
    /* Persisted (with the next group commit) so a restart keeps the count
     * and the time. Not when shutting down: an attempt cut short by the
     * stop is retried at the next start, as if it had not begun. */
    if (!q->closing) {
        int pr = tern_spool_rcpt_retry(q->env.spool, m->qid, r->idx, r->attempts,
                                       wall_of_mono(r->next_try_ms), r->qflags, why);
        if (pr != 0)
            TLOG_WARN(MOD, "event=retry_state_not_saved qid=%s error=\"%s\"", m->qid,
                      strerror(-pr));
    }
    char qa[600], qd[500];
    TLOG_INFO(MOD, "event=deferred qid=%s rcpt=%s attempts=%u retry_in_s=%" PRIu64 " reason=%s",
              m->qid, tern_log_q(qa, sizeof(qa), r->addr), r->attempts,
              (r->next_try_ms - now_ms()) / 1000, tern_log_q(qd, sizeof(qd), why));
}

/* One DSN to the sender for every failed recipient of m not bounced yet.
 * Their spool records say done (a bounce is their end). */
static void bounce_failed(tern_queue *q, qmsg *m, const uint8_t *msg, size_t len)
{
    tern_dsn_rcpt *dr = calloc(m->n ? m->n : 1, sizeof(*dr));
    size_t k = 0;
    bool null_sender = m->env->mail_from == NULL || m->env->mail_from[0] == '\0';
    for (size_t i = 0; i < m->n; i++) {
        qrcpt *r = &m->r[i];
        if (!r->failed || r->bounced)
            continue;
        r->bounced = true;
        char qa[600], qd[1100];
        TLOG_INFO(MOD, "event=failed qid=%s rcpt=%s status=%s attempts=%u detail=%s", m->qid,
                  tern_log_q(qa, sizeof(qa), r->addr), r->status, r->attempts,
                  tern_log_q(qd, sizeof(qd), r->last_error));
        tern_spool_rcpt_done(q->env.spool, m->qid, r->idx);
        const tern_spool_rcpt *sr = &m->env->rcpts[r->idx];
        if (dr == NULL || null_sender || (sr->notify && !(sr->notify & TERN_NOTIFY_FAILURE)))
            continue; /* never to <>; NOTIFY=NEVER or without FAILURE */
        dr[k].addr = r->addr;
        dr[k].orcpt = sr->orcpt;
        dr[k].status = r->status;
        dr[k].remote_mta = r->remote[0] ? r->remote : NULL;
        dr[k].diagnostic = r->last_error;
        k++;
    }
    if (k > 0 && q->env.bounce)
        q->env.bounce(q->env.bounce_arg, m->env, dr, k, msg, len);
    else if (null_sender)
        TLOG_INFO(MOD, "event=no_bounce qid=%s reason=\"null sender\"", m->qid);
    free(dr);
}

/* One "delayed" DSN to the sender for the recipients of m that became
 * due for one in this attempt. */
static void delay_notify(tern_queue *q, qmsg *m, const uint8_t *msg, size_t len)
{
    tern_dsn_rcpt *dr = calloc(m->n ? m->n : 1, sizeof(*dr));
    char (*codes)[16] = calloc(m->n ? m->n : 1, 16);
    size_t k = 0;
    for (size_t i = 0; dr && codes && i < m->n; i++) {
        qrcpt *r = &m->r[i];
        if (!r->delay_pending)
            continue;
        r->delay_pending = false;
        const tern_spool_rcpt *sr = &m->env->rcpts[r->idx];
        /* The status of the last error when it has one ("451 4.4.1 ..."
         * or "4.4.1 ..."), else 4.4.7 (delivery time... delayed). */
        const char *e = r->last_error;
        const char *enh = strstr(e, " 4.");
        enh = strncmp(e, "4.", 2) == 0 ? e : enh ? enh + 1 : NULL;
        snprintf(codes[k], 16, "4.4.7");
        if (enh)
            sscanf(enh, "%15s", codes[k]);
        dr[k].addr = r->addr;
        dr[k].orcpt = sr->orcpt;
        dr[k].status = codes[k];
        dr[k].diagnostic = r->last_error[0] ? r->last_error : "not delivered yet";
        char qa[600];
        TLOG_INFO(MOD, "event=delay_dsn qid=%s rcpt=%s attempts=%u", m->qid,
                  tern_log_q(qa, sizeof(qa), r->addr), r->attempts);
        k++;
    }
    if (k > 0)
        q->env.delay(q->env.bounce_arg, m->env, dr, k, msg, len);
    free(codes);
    free(dr);
}

/* ---- one attempt ------------------------------------------------------- */

static void attempt_free(attempt *a)
{
    tern_queue_dane_clear(&a->dane);
    if (a->mx)
        tern_dns_result_free(a->mx);
    if (a->addrs)
        tern_dns_result_free(a->addrs);
    if (a->addrs6)
        tern_dns_result_free(a->addrs6);
    free(a->order);
    if (a->cenv)
        tern_envelope_free(a->cenv);
    free(a->data);
    free(a->idx);
    free(a->sts);
    if (a->cfg)
        tern_config_unref(a->cfg);
    tern_arena_free(&a->arena);
    free(a);
}

/* The attempt is over: what was not finished is deferred (or bounced when
 * its lifetime ran out). */
static void attempt_end(attempt *a)
{
    tern_queue *q = a->q;
    qmsg *m = a->m;
    for (size_t i = 0; i < a->n; i++) {
        qrcpt *r = &m->r[a->idx[i]];
        if (r->st == QR_BUSY)
            rcpt_defer(q, m, r, a->last_error[0] ? a->last_error : "4.4.0 not attempted");
    }
    /* The last attempt of the message in flight sends the bounce for
     * every failure so far: one DSN, not one per domain. */
    if (m->busy == 1)
        bounce_failed(q, m, a->data, a->len);
    delay_notify(q, m, a->data, a->len);
    dest *d = dest_get(q, a->domain);
    if (d && d->active)
        d->active--;
    q->active--;
    m->busy--;
    if (d) {
        /* Its slot is free: the oldest waiters get their turn first. */
        unsigned per = q->env.conf(q->env.conf_arg)->per_destination;
        tern_qs_wake(&q->sched, &d->wait, per > d->active ? per - d->active : 0);
    }
    if (a->prev)
        a->prev->next = a->next;
    else
        q->attempts = a->next;
    if (a->next)
        a->next->prev = a->prev;
    attempt_free(a);
    msg_resched(q, m);
    msg_maybe_done(q, m);
    if (!q->closing)
        tern_queue_kick(q);
}

static void try_host(attempt *a);
static void connect_ss(attempt *a, const struct sockaddr_storage *ss);

/* ---- circuit breaker, per destination address --------------------------- */

#define MAX_HOSTS 4096 /* breakers kept; idle ones beyond it are dropped */

static void ss_text(const struct sockaddr_storage *ss, char *out, size_t size)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        snprintf(out, size, "[%s]:%u", ip, ntohs(s6->sin6_port));
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        snprintf(out, size, "%s:%u", ip, ntohs(s4->sin_port));
    }
}

static void hosts_prune(tern_queue *q)
{
    /* Forget breakers that are closed and have no failures first; they
     * carry no state worth keeping. */
    for (qhost **pp = &q->hosts; *pp && q->n_hosts >= MAX_HOSTS;) {
        qhost *h = *pp;
        if (h->failures == 0 && h->down_until == 0 && h->inflight == 0) {
            *pp = h->next;
            free(h);
            q->n_hosts--;
        } else {
            pp = &h->next;
        }
    }
}

static qhost *host_get(tern_queue *q, const struct sockaddr_storage *ss)
{
    char key[64];
    ss_text(ss, key, sizeof(key));
    for (qhost *h = q->hosts; h; h = h->next)
        if (strcmp(h->addr, key) == 0)
            return h;
    if (q->n_hosts >= MAX_HOSTS)
        hosts_prune(q);
    qhost *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    snprintf(h->addr, sizeof(h->addr), "%s", key);
    h->next = q->hosts;
    q->hosts = h;
    q->n_hosts++;
    return h;
}

/* Before connecting to ss: true when the host is down (or its probe is
 * already out), after moving the attempt on to the next address. */
static bool breaker_skip(attempt *a, const struct sockaddr_storage *ss)
{
    tern_queue *q = a->q;
    qhost *h = host_get(q, ss);
    a->cur_ss = *ss;
    a->cur_host = h;
    a->cur_probe = false;
    if (h == NULL)
        return false; /* out of memory: connect without a breaker */
    uint64_t now = now_ms();
    if (h->down_until == 0) {
        h->inflight++;
        return false;
    }
    if (now >= h->down_until && !h->probing) {
        h->probing = true;
        h->inflight++;
        a->cur_probe = true;
        TLOG_INFO(MOD, "event=host_probe qid=%s addr=%s", a->m->qid, h->addr);
        return false;
    }
    uint64_t left = h->down_until > now ? h->down_until - now : 0;
    snprintf(a->last_error, sizeof(a->last_error),
             "4.4.1 %s is down (circuit open after %u connection failures; next probe in %" PRIu64
             "s)", h->addr, h->failures, (left + 999) / 1000);
    TLOG_INFO(MOD, "event=host_skipped qid=%s domain=%s addr=%s reason=\"circuit open\"", a->m->qid,
              a->domain, h->addr);
    a->cur_host = NULL;
    if (a->order && a->addr_i < a->n_order)
        a->addr_i++;
    try_host(a);
    return true;
}

/* The connection's outcome for the breaker: failed to connect, or got
 * through (any reply, even a 4xx banner: the host is up). */
static void breaker_result(attempt *a, bool connect_failed)
{
    qhost *h = a->cur_host;
    if (h == NULL)
        return;
    const tern_queue_conf *c = a->q->env.conf(a->q->env.conf_arg);
    if (h->inflight)
        h->inflight--;
    if (a->cur_probe)
        h->probing = false;
    if (!connect_failed) {
        if (h->down_until || h->failures)
            TLOG_INFO(MOD, "event=host_up addr=%s failures=%u", h->addr, h->failures);
        h->failures = 0;
        h->down_until = 0;
        return;
    }
    h->failures++;
    if (a->cur_probe || h->failures >= c->host_down_threshold) {
        h->down_until = now_ms() + c->host_down_cooldown_ms;
        TLOG_INFO(MOD, "event=host_down addr=%s failures=%u cooldown_s=%" PRIu64, h->addr,
                  h->failures, c->host_down_cooldown_ms / 1000);
    }
}

int tern_queue_hosts(tern_queue *q, tern_buf *out)
{
    uint64_t now = now_ms();
    int r = tern_buf_append_str(out, "{\"hosts\":[");
    bool first = true;
    for (qhost *h = q->hosts; h; h = h->next) {
        const char *st = h->probing ? "probing" : h->down_until == 0 ? "up"
                         : h->down_until > now                     ? "down"
                                                                   : "probe-due";
        r |= tern_buf_append_str(out, first ? "{" : ",{");
        first = false;
        r |= tern_json_write_key(out, "addr");
        r |= tern_json_write_cstr(out, h->addr);
        r |= tern_buf_append_str(out, ",");
        r |= tern_json_write_key(out, "state");
        r |= tern_json_write_cstr(out, st);
        r |= tern_buf_append_str(out, ",");
        r |= tern_json_write_key(out, "failures");
        r |= tern_json_write_uint(out, h->failures);
        r |= tern_buf_append_str(out, ",");
        r |= tern_json_write_key(out, "down_until");
        r |= tern_json_write_int(out, h->down_until ? wall_of_mono(h->down_until) / 1000 : 0);
        r |= tern_buf_append_str(out, "}");
    }
    r |= tern_buf_append_str(out, "]}");
    return r ? -ENOMEM : 0;
}

static void delivered(void *arg, const tern_smtp_outcome *o)
{
    attempt *a = arg;
    a->client = NULL;
    tern_queue *q = a->q;
    qmsg *m = a->m;
    bool any_tried = false;
    if (a->host > 0 && a->dane.verdict == TERN_DANE_REQUIRED) /* TLS-RPT data */
        tern_mtasts_outcome_dane(q->mtasts, a->domain, a->sts, a->plan.hosts[a->host - 1].host,
                                 a->dane.tlsa, a->dane.n_tlsa, o);
    else if (a->sts && a->host > 0)
        tern_mtasts_outcome(q->mtasts, a->domain, a->sts, a->plan.hosts[a->host - 1].host, o);
    tern_queue_dane_log_session(&a->dane, m->qid,
                                a->host > 0 && a->host <= a->plan.n_hosts
                                    ? a->plan.hosts[a->host - 1].host
                                    : a->domain,
                                o->peer, o->tls_dane, o->error);
    if (o->session_class == 5 && is_requiretls_refusal(o->error) && !q->closing) {
        /* This host cannot take it; another MX of the domain may. */
        breaker_result(a, false);
        a->conn_tries = 0;
        snprintf(a->rtls_error, sizeof(a->rtls_error), "%s", o->error);
        snprintf(a->last_error, sizeof(a->last_error), "%s", o->error);
        TLOG_INFO(MOD, "event=host_failed qid=%s domain=%s peer=%s stage=requiretls "
                       "error=\"%.300s\"", m->qid, a->domain, o->peer, o->error);
        a->addr_i++;
        try_host(a);
        return;
    }
    for (size_t i = 0; i < a->n; i++) {
        qrcpt *r = &m->r[a->idx[i]];
        const tern_smtp_rcpt_result *rr = &o->rcpts[r->idx];
        if (r->st != QR_BUSY)
            continue;
        if (o->session_class == 5) {
            /* MAIL FROM or the message refused, SIZE, SMTPUTF8: for all.
             * The error is "550 5.x.y text" (a reply) or "5.x.y text" (ours). */
            char code[16] = "5.0.0";
            const char *e = o->error;
            bool reply = e[0] == '5' && e[1] >= '0' && e[1] <= '9' && e[3] == ' ';
            const char *enh = reply ? e + 4 : e;
            if (enh[0] == '5' && enh[1] == '.')
                sscanf(enh, "%15s", code);
            rcpt_fail(r, code, reply ? o->peer : NULL, "%s", e);
            any_tried = true;
            continue;
        }
        if (rr->code == 0)
            continue;
        any_tried = true;
        char detail[512];
        snprintf(detail, sizeof(detail), "%d%s%s %.300s", rr->code, rr->enhanced[0] ? " " : "",
                 rr->enhanced, rr->text);
        if (rr->code / 100 == 2) {
            char said[700];
            snprintf(said, sizeof(said), "%s said: %s (%s%s%s)", o->peer, detail,
                     o->tls ? o->tls_version : "no TLS", o->tls ? " " : "",
                     o->tls ? (o->tls_dane       ? "dane-verified"
                               : o->tls_verified ? "verified"
                                                 : "unverified")
                            : "");
            rcpt_delivered(q, m, r, said);
        } else if (rr->code / 100 == 5) {
            rcpt_fail(r, rr->enhanced[0] == '5' ? rr->enhanced : "5.0.0", o->peer, "%s", detail);
        } else {
            snprintf(a->last_error, sizeof(a->last_error), "%s said: %s", o->peer, detail);
            rcpt_defer(q, m, r, a->last_error);
        }
    }
    bool connect_failed = o->session_class == 4 && strcmp(o->stage, "connect") == 0;
    breaker_result(a, connect_failed);
    if (!any_tried && connect_failed && !q->closing && a->cur_host &&
        a->cur_host->down_until == 0 && a->conn_tries < q->env.conf(q->env.conf_arg)->connect_retries) {
        /* queue.connect_retries: the same address again before the next. */
        a->conn_tries++;
        TLOG_INFO(MOD, "event=connect_retry qid=%s addr=%s try=%u error=\"%.300s\"", m->qid,
                  a->cur_host->addr, a->conn_tries, o->error);
        struct sockaddr_storage ss = a->cur_ss;
        connect_ss(a, &ss);
        return;
    }
    a->conn_tries = 0;
    if (!any_tried && o->session_class == 4 && !q->closing) {
        /* The host did not take part (connect refused, 4xx banner...):
         * RFC 5321 5.1 says try the next one. */
        snprintf(a->last_error, sizeof(a->last_error), "%s: %s", o->peer, o->error);
        TLOG_INFO(MOD, "event=host_failed qid=%s domain=%s peer=%s stage=%s error=\"%.300s\"",
                  m->qid, a->domain, o->peer, o->stage, o->error);
        a->addr_i++;
        try_host(a);
        return;
    }
    attempt_end(a);
}

/* The context that verifies the smarthost's certificate: the system
 * bundle (the opportunistic context's) or queue.smarthost_ca_file, loaded
 * the first time it is named (a small file, read once). NULL: it cannot
 * be loaded (logged); the delivery then defers rather than go unverified. */
static tern_tls_client *smarthost_ca(tern_queue *q, const char *path)
{
    if (path == NULL)
        return q->tls;
    for (struct sh_ca *x = q->sh_cas; x; x = x->next)
        if (strcmp(x->path, path) == 0)
            return x->tls;
    char *err = NULL;
    tern_tls_client *cl = tern_tls_client_new(path, &err);
    struct sh_ca *x = cl ? calloc(1, sizeof(*x)) : NULL;
    if (x == NULL || (x->path = strdup(path)) == NULL) {
        TLOG_ERR(MOD, "event=smarthost_ca_failed file=\"%s\" error=\"%s\"", path,
                 err ? err : "out of memory");
        free(err);
        free(x);
        tern_tls_client_free(cl);
        return NULL;
    }
    x->tls = cl;
    x->next = q->sh_cas;
    q->sh_cas = x;
    return cl;
}

static void connect_ss(attempt *a, const struct sockaddr_storage *ss)
{
    const tern_queue_conf *qc = a->q->env.conf(a->q->env.conf_arg);
    bool sh_verify = qc->smarthost && qc->smarthost[0] &&
                     qc->smarthost_tls == TERN_SMARTHOST_TLS_VERIFY;
    tern_tls_client *sh_tls = sh_verify ? smarthost_ca(a->q, qc->smarthost_ca_file) : NULL;
    if (sh_verify && sh_tls == NULL) {
        /* Without the CAs nothing can be verified, so nothing is sent. */
        snprintf(a->last_error, sizeof(a->last_error),
                 "4.7.5 cannot load queue.smarthost_ca_file to verify the smarthost");
        attempt_end(a);
        return;
    }
    if (breaker_skip(a, ss))
        return;
    /* The client and the pool read the current snapshot now and keep
     * pointers into it; hold it until the attempt ends. */
    if (a->q->env.config_ref) {
        tern_config *now = a->q->env.config_ref(a->q->env.conf_arg);
        if (a->cfg)
            tern_config_unref(a->cfg);
        a->cfg = now;
    }
    const tern_queue_conf *c = a->q->env.conf(a->q->env.conf_arg);
    tern_smtp_client_params p = {
        .loop = a->q->env.loop,
        .worker = &a->q->cw,
        .addr = (const struct sockaddr *)ss,
        .helo = a->q->env.helo(a->q->env.conf_arg),
        .connect_timeout_ms = c->connect_timeout_ms,
        .command_timeout_ms = c->command_timeout_ms,
        .data_timeout_ms = c->data_timeout_ms,
        .env = a->cenv,
        .data = a->data,
        .len = a->len,
        .tls = a->q->tls,
        .tls_name = a->dane.verdict == TERN_DANE_REQUIRED && a->dane.base ? a->dane.base
                    : a->host > 0 && a->host <= a->plan.n_hosts ? a->plan.hosts[a->host - 1].host
                                                                : a->domain,
        /* DANE (queue_dane.c): the host's usable TLSA records, for the
         * TLSA base domain (SNI), with the MX name as a second name when
         * that is its CNAME target. */
        .dane_tlsa = a->dane.verdict == TERN_DANE_REQUIRED ? a->dane.tlsa : NULL,
        .n_dane_tlsa = a->dane.verdict == TERN_DANE_REQUIRED ? a->dane.n_tlsa : 0,
        .dane_alt_name = a->dane.verdict == TERN_DANE_REQUIRED ? a->dane.alt_name : NULL,
        .tls_required = a->dane.verdict == TERN_DANE_REQUIRED,
        /* REQUIRETLS: PKIX counts for an MX name from a secure answer. */
        .mx_authenticated = a->plan.secure || (c->smarthost && c->smarthost[0]) ||
                            (a->sts && a->sts->mode == TERN_STS_ENFORCE),
    };
    /* RFC 8689 section 3: "TLS-Required: No" (without REQUIRETLS) sets
     * MTA-STS aside as it does DANE (addrs_ready); our own smarthost
     * settings below still apply. */
    if (!tern_queue_tls_policy_waived(a->cenv->requiretls, a->data, a->len))
        tern_mtasts_params(a->q->mtasts, a->sts, &p); /* MTA-STS enforce: verified STARTTLS */
    if (sh_verify) {
        /* Verified for the smarthost's name, or the one configured for a
         * smarthost given by address. */
        p.tls = sh_tls;
        p.tls_required = true;
        if (c->smarthost_tls_name)
            p.tls_name = c->smarthost_tls_name;
    }
    a->client = tern_smtp_pool_start(a->q->pool, &p, delivered, a);
    if (a->client == NULL) {
        if (a->cur_host && a->cur_host->inflight)
            a->cur_host->inflight--;
        if (a->cur_probe && a->cur_host)
            a->cur_host->probing = false;
        snprintf(a->last_error, sizeof(a->last_error), "4.3.0 cannot start a connection");
        attempt_end(a);
    }
}

static void connect_addr(attempt *a)
{
    struct sockaddr_storage ss;
    const tern_dns_rr *rr = a->order[a->addr_i];
    if (tern_dns_rr_sockaddr(rr, a->port, &ss) == 0) {
        a->addr_i++;
        try_host(a);
        return;
    }
    connect_ss(a, &ss);
}

/* DANE (RFC 7672 2.2): the TLSA verdict for the current host is in. */
static void dane_done(void *data)
{
    attempt *a = data;
    if (a->dane.verdict == TERN_DANE_DEFER) {
        snprintf(a->last_error, sizeof(a->last_error), "4.7.5 %s: %s",
                 a->plan.hosts[a->host - 1].host, a->dane.why);
        if (!a->q->closing)
            tern_mtasts_dane_unusable(a->q->mtasts, a->domain, a->sts,
                                      a->plan.hosts[a->host - 1].host, a->dane.why);
        a->addr_i = a->n_order; /* this host is out: the next */
        try_host(a);
        return;
    }
    connect_addr(a);
}

static void addrs_clear(attempt *a)
{
    if (a->addrs)
        tern_dns_result_free(a->addrs);
    if (a->addrs6)
        tern_dns_result_free(a->addrs6);
    free(a->order);
    a->addrs = a->addrs6 = NULL;
    a->order = NULL;
    a->n_order = a->addr_i = 0;
}

/* Both lookups are in: the addresses in the order to try them, IPv6 and
 * IPv4 alternating (RFC 8305 4: the first of each family early, so a
 * broken family costs one failed connect, not all of them). */
static void addrs_ready(attempt *a)
{
    size_t n6 = a->addrs6 ? a->addrs6->n_rrs : 0, n4 = a->addrs ? a->addrs->n_rrs : 0;
    if (n6 + n4 == 0) {
        snprintf(a->last_error, sizeof(a->last_error), "4.4.3 no address for %s: %s",
                 a->plan.hosts[a->host - 1].host,
                 a->lookup_error[0] ? a->lookup_error : "no A or AAAA record");
        addrs_clear(a);
        try_host(a);
        return;
    }
    a->order = calloc(n6 + n4, sizeof(*a->order));
    if (a->order == NULL) {
        snprintf(a->last_error, sizeof(a->last_error), "4.3.0 out of memory");
        addrs_clear(a);
        try_host(a);
        return;
    }
    for (size_t i6 = 0, i4 = 0; i6 < n6 || i4 < n4;) {
        if (i6 < n6)
            a->order[a->n_order++] = &a->addrs6->rrs[i6++];
        if (i4 < n4)
            a->order[a->n_order++] = &a->addrs->rrs[i4++];
    }
    a->addr_i = 0;
    /* DANE only for a host reached through secure answers: the MX set
     * (or the configured smarthost) and its address sets. */
    const tern_queue_conf *c = a->q->env.conf(a->q->env.conf_arg);
    bool addrs_secure = (a->addrs == NULL || a->addrs->security == TERN_DNS_SECURE) &&
                        (a->addrs6 == NULL || a->addrs6->security == TERN_DNS_SECURE);
    if (c->dane && addrs_secure && (a->plan.secure || (c->smarthost && c->smarthost[0])) &&
        !tern_queue_tls_policy_waived(a->cenv->requiretls, a->data, a->len)) {
        /* A host name that is a CNAME (secure, as its addresses are): the
         * TLSA records are looked for at its target first (RFC 7672
         * 2.2.2). */
        const char *expanded = a->addrs && a->addrs->canonname ? a->addrs->canonname
                               : a->addrs6 ? a->addrs6->canonname : NULL;
        if (tern_queue_dane_lookup(&a->dane, a->q->dns, a->plan.hosts[a->host - 1].host,
                                   expanded, a->port, dane_done, a) != 0)
            dane_done(a);
        return;
    }
    connect_addr(a);
}

static void addr_answer(attempt *a, tern_dns_result *res, tern_dns_result **slot)
{
    if (res->status != TERN_DNS_ANSWER || res->n_rrs == 0) {
        /* Kept for the error when the other family has nothing either. */
        if (res->status != TERN_DNS_ANSWER || res->rcode != 0 || a->lookup_error[0] == '\0')
            snprintf(a->lookup_error, sizeof(a->lookup_error), "%s",
                     res->status == TERN_DNS_ANSWER ? (res->rcode ? tern_dns_rcode_name(res->rcode)
                                                                  : "no address record")
                                                    : (res->error ? res->error : "lookup failed"));
        tern_dns_result_free(res);
    } else {
        *slot = res;
    }
    if (--a->lookups == 0)
        addrs_ready(a);
}

static void addrs_resolved(void *data, tern_dns_result *res)
{
    attempt *a = data;
    addr_answer(a, res, &a->addrs);
}

static void addrs6_resolved(void *data, tern_dns_result *res)
{
    attempt *a = data;
    addr_answer(a, res, &a->addrs6);
}

/* The next address of the current host, else the next host, else the end. */
static void try_host(attempt *a)
{
    /* Every failure sets last_error and comes back here for the next
     * host: note whether one was something else than REQUIRETLS. */
    if (a->last_error[0] && !is_requiretls_refusal(a->last_error))
        a->other_fail = true;
    if (a->q->closing) {
        snprintf(a->last_error, sizeof(a->last_error), "4.3.2 shutting down");
        attempt_end(a);
        return;
    }
    if (a->order && a->addr_i < a->n_order) {
        connect_addr(a);
        return;
    }
    if (a->host >= a->plan.n_hosts) {
        if (a->rtls_error[0] && !a->other_fail) {
            for (size_t i = 0; i < a->n; i++) {
                qrcpt *r = &a->m->r[a->idx[i]];
                if (r->st == QR_BUSY)
                    rcpt_fail(r, "5.7.10", NULL, "%s", a->rtls_error);
            }
        } else if (a->rtls_error[0]) {
            /* Some host could not be asked: deferred, not refused. */
            snprintf(a->last_error, sizeof(a->last_error),
                     "4.7.10 no host of %s took the REQUIRETLS message yet; last refusal: %.400s",
                     a->domain, a->rtls_error);
        } else if (a->last_error[0] == '\0') {
            snprintf(a->last_error, sizeof(a->last_error), "4.4.1 no host of %s could be reached",
                     a->domain);
        }
        attempt_end(a);
        return;
    }
    const char *host = a->plan.hosts[a->host++].host;
    tern_queue_dane_clear(&a->dane); /* the previous host's */
    /* MTA-STS: in enforce mode a host the policy does not list is skipped. */
    if (a->sts && tern_mtasts_check_host(a->q->mtasts, a->domain, a->sts, host, a->last_error,
                                         sizeof(a->last_error)) != 0) {
        try_host(a);
        return;
    }
    /* A literal address (smarthost "[192.0.2.1]" or "192.0.2.1") needs no lookup. */
    char lit[128];
    snprintf(lit, sizeof(lit), "%s", host[0] == '[' ? host + 1 : host);
    char *rb = strchr(lit, ']');
    if (rb)
        *rb = '\0';
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, lit, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(a->port);
        connect_ss(a, &ss);
        return;
    }
    if (inet_pton(AF_INET6, lit, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(a->port);
        connect_ss(a, &ss);
        return;
    }
    /* AAAA and A at once (queue.address_family may drop one); the
     * count is set first: an answer may come before the second query is
     * even sent. */
    addrs_clear(a);
    a->lookup_error[0] = '\0';
    tern_addr_family fam = a->q->env.conf(a->q->env.conf_arg)->address_family;
    bool want6 = fam != TERN_AF_IPV4, want4 = fam != TERN_AF_IPV6;
    a->lookups = 1 + (want6 ? 1 : 0) + (want4 ? 1 : 0); /* +1: ours, until both are sent */
    if (want6 && tern_dns_resolve(a->q->dns, host, 28 /* AAAA */, 0, addrs6_resolved, a, NULL) != 0) {
        snprintf(a->lookup_error, sizeof(a->lookup_error), "cannot look up %s", host);
        a->lookups--;
    }
    if (want4 && tern_dns_resolve(a->q->dns, host, 1 /* A */, 0, addrs_resolved, a, NULL) != 0) {
        snprintf(a->lookup_error, sizeof(a->lookup_error), "cannot look up %s", host);
        a->lookups--;
    }
    if (--a->lookups == 0)
        addrs_ready(a);
}

/* ---- MTA-STS policy step (server/queue_mtasts.c) ---- */

static void sts_ready(void *arg, const tern_sts_applied *s)
{
    attempt *a = arg;
    a->sts = malloc(sizeof(*a->sts));
    if (a->sts)
        *a->sts = *s;
    try_host(a);
}

/* Between MX resolution and the first host: true when the policy lookup
 * runs (it goes on with try_host). DANE hook: when the domain's TLSA
 * lookup is secure, DANE takes precedence over MTA-STS (RFC 8461 2); the
 * DANE step decides that here and skips this lookup. */
static bool sts_begin(attempt *a)
{
    const tern_queue_conf *c = a->q->env.conf(a->q->env.conf_arg);
    if (!c->mta_sts || a->q->mtasts == NULL || a->q->closing)
        return false;
    return tern_mtasts_lookup(a->q->mtasts, a->domain, sts_ready, a) == 0;
}

/* ---- end MTA-STS ---- */

static void mx_resolved(void *data, tern_dns_result *res)
{
    attempt *a = data;
    a->mx = res;
    const char *self = a->q->env.helo(a->q->env.conf_arg);
    if (tern_dns_mx_plan(&a->arena, a->domain, res, &self, 1, NULL, NULL, &a->plan) != 0) {
        snprintf(a->last_error, sizeof(a->last_error), "4.3.0 out of memory");
        attempt_end(a);
        return;
    }
    switch (a->plan.outcome) {
    case TERN_MX_HOSTS:
        if (sts_begin(a))
            return;
        try_host(a);
        return;
    case TERN_MX_TEMPFAIL:
        snprintf(a->last_error, sizeof(a->last_error), "4.4.3 %s", a->plan.why ? a->plan.why : "DNS failure");
        attempt_end(a);
        return;
    default: {
        /* Null MX, no such domain, a loop to ourselves: permanent. */
        const char *code = a->plan.outcome == TERN_MX_NULL        ? "5.1.10"
                           : a->plan.outcome == TERN_MX_NO_DOMAIN ? "5.1.2"
                                                                   : "5.4.6";
        for (size_t i = 0; i < a->n; i++)
            rcpt_fail(&a->m->r[a->idx[i]], code, NULL, "%s",
                      a->plan.why ? a->plan.why : tern_mx_outcome_name(a->plan.outcome));
        attempt_end(a);
        return;
    }
    }
}

static void smarthost_plan(attempt *a, const char *smarthost)
{
    char host[256];
    snprintf(host, sizeof(host), "%s", smarthost);
    /* "host:port" or "[v6]:port" */
    char *colon = strrchr(host, ':');
    char *rb = strrchr(host, ']');
    if (colon && (rb == NULL || colon > rb) && strchr(host, ':') == colon) {
        a->port = (uint16_t)atoi(colon + 1);
        *colon = '\0';
    }
    a->plan.outcome = TERN_MX_HOSTS;
    a->plan.hosts = tern_arena_alloc(&a->arena, sizeof(tern_mx_host));
    if (a->plan.hosts) {
        a->plan.hosts[0].host = tern_arena_strdup(&a->arena, host);
        a->plan.n_hosts = a->plan.hosts[0].host ? 1 : 0;
    }
    try_host(a);
}

static void loaded(uv_work_t *w, int status)
{
    attempt *a = w->data;
    tern_queue *q = a->q;
    if (status != 0 || a->load_status != 0 || q->closing) {
        snprintf(a->last_error, sizeof(a->last_error), "4.3.0 cannot read the message: %s",
                 a->load_status ? strerror(-a->load_status) : "cancelled");
        attempt_end(a);
        return;
    }
    const tern_queue_conf *c = q->env.conf(q->env.conf_arg);
    a->port = c->port;
    if (c->smarthost && c->smarthost[0]) {
        smarthost_plan(a, c->smarthost);
        return;
    }
    if (tern_dns_resolve(q->dns, a->domain, 15 /* MX */, 0, mx_resolved, a, NULL) != 0) {
        snprintf(a->last_error, sizeof(a->last_error), "4.4.3 cannot look up the MX of %s",
                 a->domain);
        attempt_end(a);
    }
}

static void load_work(uv_work_t *w)
{
    attempt *a = w->data;
    a->load_status = tern_spool_read_message(a->q->env.spool, a->m->qid, &a->data, &a->len);
}

static bool attempt_start(tern_queue *q, qmsg *m, const char *domain, uint64_t now)
{
    attempt *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return false;
    a->q = q;
    a->m = m;
    snprintf(a->domain, sizeof(a->domain), "%s", domain);
    tern_arena_init(&a->arena, 1024);
    a->idx = calloc(m->n, sizeof(size_t));
    a->cenv = tern_spool_envelope_dup(q->env.spool, m->qid);
    if (a->idx == NULL || a->cenv == NULL) {
        attempt_free(a);
        return false;
    }
    for (size_t i = 0; i < a->cenv->n_rcpts; i++)
        a->cenv->rcpts[i].done = true; /* the client skips done recipients */
    for (size_t i = 0; i < m->n; i++) {
        qrcpt *r = &m->r[i];
        if (r->st != QR_PENDING || r->next_try_ms > now || strcasecmp(r->domain, domain) != 0)
            continue;
        r->st = QR_BUSY;
        r->attempts++;
        a->cenv->rcpts[r->idx].done = false;
        a->idx[a->n++] = i;
    }
    if (a->n == 0) {
        attempt_free(a);
        return false;
    }
    dest *d = dest_get(q, domain);
    if (d)
        d->active++;
    q->active++;
    m->busy++;
    a->next = q->attempts;
    if (q->attempts)
        q->attempts->prev = a;
    q->attempts = a;
    a->work.data = a;
    TLOG_DEBUG(MOD, "event=attempt qid=%s domain=%s rcpts=%zu", m->qid, domain, a->n);
    if (uv_queue_work(q->env.loop, &a->work, load_work, loaded) != 0) {
        a->load_status = -EIO;
        loaded(&a->work, -1);
    }
    return true;
}

/* Starts what is due, within the concurrency limits: the messages the
 * heap says are due join the ready list, and the ready list is served in
 * order until the global limit is reached. A message whose destination is
 * full waits on that destination's list instead of being looked at again
 * at every kick. */
void tern_queue_kick(tern_queue *q)
{
    if (q->closing || q->kicking)
        return; /* inside a kick, an ended attempt's slot is used by the outer walk */
    const tern_queue_conf *c = q->env.conf(q->env.conf_arg);
    if (c->hold)
        return; /* held: nothing leaves until the setting is lifted (SIGHUP) */
    uint64_t now = now_ms();
    tern_qs_release_due(&q->sched, now);
    q->kicking = true;
    /* Each message at most once per kick: one that could not start
     * (memory) goes back to the tail and waits for the next tick. */
    size_t budget = q->sched.ready.n;
    while (budget-- > 0 && q->active < c->max_concurrency) {
        tern_qs_node *node = tern_qs_pop_ready(&q->sched);
        if (node == NULL)
            break;
        qmsg *m = MSG_OF(node);
        dest *blocked = NULL;
        bool stalled = false, cut = false;
        for (size_t i = 0; i < m->n; i++) {
            qrcpt *r = &m->r[i];
            if (r->st != QR_PENDING || r->next_try_ms > now)
                continue;
            if (q->active >= c->max_concurrency) {
                cut = true;
                break;
            }
            dest *d = dest_get(q, r->domain);
            if (d == NULL) {
                stalled = true;
                continue;
            }
            if (d->active >= c->per_destination) {
                if (blocked == NULL)
                    blocked = d;
                continue;
            }
            /* Starts every due recipient of this domain in one attempt. */
            if (!attempt_start(q, m, r->domain, now))
                stalled = true;
        }
        if (m->sn.where != TERN_QS_NONE)
            continue; /* an attempt ended at once and placed it */
        if (cut)
            tern_qs_ready(&q->sched, &m->sn, true); /* its turn goes on next time */
        else if (blocked && msg_only_for(m, blocked->domain))
            tern_qs_wait_on(&q->sched, &blocked->wait, &m->sn);
        else if (blocked)
            /* Recipients of other domains too: looked at again each tick,
             * so theirs go when due, not when this destination frees. */
            tern_qs_defer(&q->sched, &m->sn, now + TICK_MS);
        else if (stalled)
            tern_qs_ready(&q->sched, &m->sn, false);
        else
            msg_resched(q, m);
    }
    q->kicking = false;
}

static void tick_cb(uv_timer_t *t)
{
    tern_queue_kick(t->data);
}

static void scan_one(void *arg, const tern_envelope *env)
{
    tern_queue *q = arg;
    bool owned = env->pipeline && strcmp(env->pipeline, TERN_QUEUE_PIPELINE) == 0;
    for (size_t i = 0; i < env->n_rcpts; i++)
        if (!env->rcpts[i].done && (owned || env->rcpts[i].queued)) {
            tern_queue_notify(q, env->qid);
            return;
        }
}

tern_queue *tern_queue_new(const tern_queue_env *env, char *err, size_t err_size)
{
    tern_queue *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    q->env = *env;
    tern_strmap_init(&q->by_qid, false);
    tern_strmap_init(&q->by_domain, true);
    tern_qs_init(&q->sched);
    pthread_mutex_init(&q->mu, NULL);
    q->cw.readbuf_size = 65536;
    q->cw.readbuf = malloc(q->cw.readbuf_size);
    q->dns = q->cw.readbuf ? tern_dns_resolver_new(env->loop, env->dns, err, err_size) : NULL;
    char *terr = NULL;
    q->tls = q->dns ? tern_tls_client_new(NULL, &terr) : NULL;
    if (q->dns && q->tls == NULL) {
        snprintf(err, err_size, "TLS client: %s", terr ? terr : "?");
        free(terr);
        tern_dns_resolver_close(q->dns);
        q->dns = NULL;
    }
    q->pool = q->dns ? tern_smtp_pool_new(env->loop, env->conf, env->conf_arg) : NULL;
    if (q->dns && q->pool == NULL) {
        snprintf(err, err_size, "out of memory");
        tern_tls_client_free(q->tls);
        tern_dns_resolver_close(q->dns);
        q->dns = NULL;
    }
    if (q->dns) { /* MTA-STS + TLS-RPT */
        const tern_queue_conf *qc = env->conf(env->conf_arg);
        tern_mtasts_env me = {
            .loop = env->loop,
            .worker = &q->cw,
            .dns = q->dns,
            .state_dir = env->state_dir,
            .ca_file = qc->mta_sts_ca_file,
            .port = qc->mta_sts_port ? qc->mta_sts_port : 443,
            .org = env->helo(env->conf_arg),
        };
        q->mtasts = tern_mtasts_new(&me, err, err_size);
        if (q->mtasts == NULL) {
            tern_tls_client_free(q->tls);
            q->tls = NULL;
            tern_dns_resolver_close(q->dns);
            q->dns = NULL;
        }
    }
    if (q->dns == NULL) {
        tern_smtp_pool_free(q->pool);
        free(q->cw.readbuf);
        pthread_mutex_destroy(&q->mu);
        free(q);
        return NULL;
    }
    uv_timer_init(env->loop, &q->tick);
    uv_async_init(env->loop, &q->wake, wake_cb);
    q->tick.data = q->wake.data = q;
    q->handles = 2;
    uv_timer_start(&q->tick, tick_cb, TICK_MS, TICK_MS);
    size_t n = tern_spool_each(env->spool, scan_one, q);
    TLOG_INFO(MOD, "event=started spool_messages=%zu", n);
    return q;
}

/* ---- administration --------------------------------------------------- */

static const char *rcpt_state_name(const qmsg *m, const qrcpt *r, uint64_t now)
{
    if (r->st == QR_BUSY)
        return "active";
    if (m->held)
        return "held";
    return r->attempts > 0 && r->next_try_ms > now ? "deferred" : "pending";
}

static int show_msg(const qmsg *m, tern_buf *out)
{
    uint64_t now = now_ms();
    int64_t age = (int64_t)time(NULL) - m->env->received_at;
    int r = tern_buf_append_str(out, "{");
    r |= tern_json_write_key(out, "qid");
    r |= tern_json_write_cstr(out, m->qid);
    r |= tern_buf_append_str(out, ",");
    r |= tern_json_write_key(out, "age_s");
    r |= tern_json_write_int(out, age > 0 ? age : 0);
    r |= tern_buf_append_str(out, ",");
    r |= tern_json_write_key(out, "sender");
    r |= tern_json_write_cstr(out, m->env->mail_from ? m->env->mail_from : "");
    r |= tern_buf_append_str(out, ",");
    r |= tern_json_write_key(out, "size");
    r |= tern_json_write_uint(out, m->env->size);
    r |= tern_buf_append_str(out, ",");
    r |= tern_json_write_key(out, "held");
    r |= tern_buf_append_str(out, m->held ? "true" : "false");
    r |= tern_buf_append_str(out, ",");
    r |= tern_json_write_key(out, "recipients");
    r |= tern_buf_append_str(out, "[");
    bool first = true;
    for (size_t i = 0; i < m->n; i++) {
        const qrcpt *qr = &m->r[i];
        if (qr->st == QR_DONE)
            continue;
        r |= tern_buf_append_str(out, first ? "{" : ",{");
        first = false;
        r |= tern_json_write_key(out, "rcpt");
        r |= tern_json_write_cstr(out, qr->addr);
        r |= tern_buf_append_str(out, ",");
        r |= tern_json_write_key(out, "state");
        r |= tern_json_write_cstr(out, rcpt_state_name(m, qr, now));
        r |= tern_buf_append_str(out, ",");
        r |= tern_json_write_key(out, "attempts");
        r |= tern_json_write_uint(out, qr->attempts);
        r |= tern_buf_append_str(out, ",");
        r |= tern_json_write_key(out, "next_try");
        r |= tern_json_write_int(out, qr->next_try_ms > now ? wall_of_mono(qr->next_try_ms) / 1000 : 0);
        r |= tern_buf_append_str(out, ",");
        r |= tern_json_write_key(out, "last_error");
        r |= tern_json_write_cstr(out, qr->last_error);
        r |= tern_buf_append_str(out, "}");
    }
    r |= tern_buf_append_str(out, "]}");
    return r ? -ENOMEM : 0;
}

int tern_queue_list(tern_queue *q, tern_buf *out)
{
    int r = tern_buf_append_str(out, "{\"messages\":[");
    /* Oldest first: the list is newest first. */
    qmsg *last = q->msgs;
    while (last && last->next)
        last = last->next;
    for (qmsg *m = last; m && r == 0; m = m->prev) {
        if (m != last)
            r = tern_buf_append_str(out, ",");
        r |= show_msg(m, out);
    }
    r |= tern_buf_append_str(out, "]}");
    return r ? -ENOMEM : 0;
}

int tern_queue_show(tern_queue *q, const char *qid, tern_buf *out)
{
    qmsg *m = qmsg_find(q, qid);
    return m ? show_msg(m, out) : -ENOENT;
}

static int retry_msg(tern_queue *q, qmsg *m)
{
    int n = 0;
    for (size_t i = 0; i < m->n; i++) {
        qrcpt *r = &m->r[i];
        if (r->st != QR_PENDING)
            continue;
        r->next_try_ms = 0;
        if (r->attempts > 0)
            tern_spool_rcpt_retry(q->env.spool, m->qid, r->idx, r->attempts, 0, r->qflags,
                                  r->last_error);
        n++;
    }
    msg_resched(q, m);
    return n;
}

int tern_queue_retry(tern_queue *q, const char *qid)
{
    int n = 0;
    if (qid) {
        qmsg *m = qmsg_find(q, qid);
        if (m == NULL)
            return -ENOENT;
        n = retry_msg(q, m);
    } else {
        for (qmsg *m = q->msgs; m; m = m->next)
            n += retry_msg(q, m);
    }
    TLOG_INFO(MOD, "event=admin_retry qid=%s rcpts=%d", qid ? qid : "all", n);
    tern_queue_kick(q);
    return n;
}

static int set_held(tern_queue *q, const char *qid, bool held)
{
    qmsg *m = qmsg_find(q, qid);
    if (m == NULL)
        return -ENOENT;
    int r = tern_spool_hold(q->env.spool, m->qid, held);
    if (r != 0)
        return r;
    m->held = held;
    msg_resched(q, m);
    TLOG_INFO(MOD, "event=%s qid=%s", held ? "held" : "released", m->qid);
    if (!held)
        tern_queue_kick(q);
    return 0;
}

int tern_queue_hold(tern_queue *q, const char *qid)
{
    return set_held(q, qid, true);
}

int tern_queue_release(tern_queue *q, const char *qid)
{
    return set_held(q, qid, false);
}

int tern_queue_delete(tern_queue *q, const char *qid)
{
    qmsg *m = qmsg_find(q, qid);
    if (m == NULL)
        return -ENOENT;
    if (m->busy > 0)
        return -EBUSY;
    for (size_t i = 0; i < m->n; i++) {
        qrcpt *r = &m->r[i];
        if (r->st == QR_DONE)
            continue;
        char qa[600];
        TLOG_INFO(MOD, "event=deleted qid=%s rcpt=%s attempts=%u reason=\"by the administrator\"",
                  m->qid, tern_log_q(qa, sizeof(qa), r->addr), r->attempts);
        r->st = QR_DONE;
        tern_spool_rcpt_done(q->env.spool, m->qid, r->idx);
    }
    /* Failed ones not bounced yet are ended by the delete too (their
     * done records were written above or by bounce_failed). */
    msg_maybe_done(q, m);
    return 0;
}

size_t tern_queue_size(const tern_queue *q)
{
    return q ? q->n_msgs : 0;
}

static void q_handle_closed(uv_handle_t *h)
{
    tern_queue *q = h->data;
    q->handles--;
}

void tern_queue_free(tern_queue *q)
{
    if (q == NULL)
        return;
    while (q->msgs) {
        qmsg *m = q->msgs;
        qmsg_unlink(q, m);
        qmsg_free(m);
    }
    while (q->posts) {
        post *p = q->posts;
        q->posts = p->next;
        free(p);
    }
    while (q->dests) {
        dest *d = q->dests;
        q->dests = d->next;
        free(d);
    }
    tern_strmap_free(&q->by_qid);
    tern_strmap_free(&q->by_domain);
    tern_qs_free(&q->sched);
    tern_smtp_pool_free(q->pool);
    while (q->hosts) {
        qhost *h = q->hosts;
        q->hosts = h->next;
        free(h);
    }
    while (q->sh_cas) {
        struct sh_ca *x = q->sh_cas;
        q->sh_cas = x->next;
        tern_tls_client_free(x->tls);
        free(x->path);
        free(x);
    }
    free(q->cw.readbuf);
    tern_tls_client_free(q->tls);
    tern_mtasts_free(q->mtasts);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

void tern_queue_close(tern_queue *q)
{
    if (q == NULL)
        return;
    q->closing = true;
    pthread_mutex_lock(&q->mu);
    q->notify_closed = true;
    pthread_mutex_unlock(&q->mu);
    /* Attempts in flight end with "shutting down" and are retried at the
     * next start (nothing was recorded for them). Their callbacks run
     * while the loop finishes; the resolver answers CANCELLED. */
    tern_mtasts_close(q->mtasts); /* first: its fetches end, its lookups answer */
    tern_dns_resolver_close(q->dns);
    for (attempt *a = q->attempts, *next; a; a = next) {
        next = a->next; /* a may end inside the cancel */
        if (a->client)
            tern_smtp_client_cancel(a->client);
    }
    tern_smtp_pool_close(q->pool);
    uv_close((uv_handle_t *)&q->tick, q_handle_closed);
    uv_close((uv_handle_t *)&q->wake, q_handle_closed);
}
