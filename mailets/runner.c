/* Running mail through a pipeline on one event loop: loading a spool
 * message, resolving recipients against the directory, matching, splitting,
 * calling mailets (synchronous or not), routing between processors,
 * retries with back-off, the in-session outcome for the SMTP reply, and
 * the spool bookkeeping that makes a crash lose nothing and repeat little
 * (a recipient finished is recorded; the entry completes when every mail
 * made from it has ended). Input trusted: spool records; matchers' and
 * mailets' answers are checked before use. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/auth.h"
#include "lib/log.h"
#include "lib/util.h"
#include "mailets/pipeline_int.h"
#include "storage/queue/spool_record.h"

typedef struct post {
    char qid[TERN_QID_LEN];
    struct post *next;
} post;

struct tern_runner {
    tern_runner_env env;
    uv_async_t inbox;
    pthread_mutex_t mu;
    post *head, *tail;
    tern_mail_job *jobs;        /* live jobs (list) */
    size_t inflight;
    /* Jobs loaded or being loaded (their message in memory), at most
     * mailets.max_active (enough to keep the store's delivery batches
     * full; bounded so that clients faster than the disk cannot grow
     * memory); the rest wait in arrival order, holding only their
     * qid: their spool entries are durable, so waiting costs no safety. */
    size_t active;
    tern_mail_job *wait_head, *wait_tail;
    tern_auth_client *auth_client;
    struct tern_auth *auth_for;
    bool closing, inbox_closed, inbox_gone;
};

struct tern_mail_job {
    tern_runner *r;
    tern_pipeline *p;
    char qid[TERN_QID_LEN];
    tern_envelope *env;
    int entry;
    tern_mail **mails;          /* live mails made from this entry */
    size_t n_mails, cap_mails;
    size_t in_entry;            /* in-session: mails still in the entry processor */
    tern_mail **parked;         /* in-session: mails that left it, held until the outcome */
    size_t n_parked, cap_parked;
    bool in_session, outcome_sent, aborted, keep, started;
    bool *orig_remote;
    bool queued_pending;        /* recipients handed to the queue, not yet told */
    tern_pipeline_outcome_cb cb;
    void *arg;
    uv_timer_t deadline;
    bool deadline_init;
    uv_work_t work;
    bool active;                /* counted in r->active */
    tern_rcpt_hint *hints;      /* the session's RCPT answers, in hint_arena */
    size_t n_hints;
    tern_arena hint_arena;
    bool hints_init;
    tern_mail_job *wait_next;   /* in the runner's wait list */
    bool waiting;
    uint8_t *msg;
    size_t msg_len;
    int load_status;
    tern_mail_job *prev, *next;
};

enum { MS_READY = 0, MS_SERVICE, MS_WAIT, MS_LOOKUP, MS_TIMER, MS_PARKED, MS_DEAD };

typedef struct mail_priv {
    uv_timer_t timer;
    bool timer_init;
    int attempts;
    uint32_t steps_run;
    size_t lookups_out;
    bool lookup_failed;
    bool resumed;
    tern_mailet_verdict rv;
    char r_proc[80];
    int r_code;
    char r_enh[16];
    char r_text[256];
} mail_priv;

#define PRIV(m) ((mail_priv *)(m)->engine_priv)

static void run(tern_mail *m);
static void runner_maybe_free(tern_runner *r);
static void job_maybe_end(tern_mail_job *j);
static void mail_end(tern_mail *m, const char *why, bool done);

/* ---- accessors that need the job ---------------------------------------- */

const char *tern_mail_qid(const tern_mail *m)
{
    return m->job ? m->job->qid : "";
}

static const char *env_str(const tern_mail *m, size_t off)
{
    if (m->job == NULL || m->job->env == NULL)
        return NULL;
    return *(char *const *)((const char *)m->job->env + off);
}

const char *tern_mail_remote_addr(const tern_mail *m)
{
    const char *s = env_str(m, offsetof(tern_envelope, client_addr));
    return s ? s : "";
}

const char *tern_mail_helo(const tern_mail *m)
{
    const char *s = env_str(m, offsetof(tern_envelope, helo));
    return s ? s : "";
}

const char *tern_mail_auth_user(const tern_mail *m)
{
    const char *s = env_str(m, offsetof(tern_envelope, auth_user));
    return s && s[0] ? s : NULL;
}

const char *tern_mail_listener(const tern_mail *m)
{
    const char *s = env_str(m, offsetof(tern_envelope, listener));
    return s ? s : "";
}

const char *tern_mail_session_id(const tern_mail *m)
{
    const char *s = env_str(m, offsetof(tern_envelope, session_id));
    return s ? s : "";
}

const tern_envelope *tern_mail_envelope(const tern_mail *m)
{
    return m->job ? m->job->env : NULL;
}

const tern_config *tern_mail_config(const tern_mail *m)
{
    return m->pipeline->cfg;
}

struct tern_auth *tern_mail_auth(const tern_mail *m)
{
    return m->pipeline->auth;
}

tern_store_client *tern_mail_store(const tern_mail *m)
{
    return m->runner->env.store_client;
}

uv_loop_t *tern_mail_loop(const tern_mail *m)
{
    return m->runner->env.loop;
}

const tern_rcpt_entry *tern_mail_rcpt_info(const tern_mail *m, size_t i)
{
    return i < m->n_rcpts ? &m->rcpts[i] : NULL;
}

void tern_mail_log(const tern_mail *m, tern_mailet_log_level level, const char *fmt, ...)
{
    static const tern_log_level map[] = {TERN_LOG_ERROR, TERN_LOG_WARN, TERN_LOG_INFO,
                                         TERN_LOG_DEBUG};
    tern_log_level lv = level <= TERN_MAILET_LOG_DEBUG ? map[level] : TERN_LOG_DEBUG;
    if (!tern_log_enabled(lv, "mailet"))
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    char q[1100];
    tern_log(lv, "mailet", "qid=%s session=%s mailet=%s msg=%s", tern_mail_qid(m),
             tern_mail_session_id(m), m->step_name ? m->step_name : "-",
             tern_log_q(q, sizeof(q), msg));
}

/* ---- jobs and mails ----------------------------------------------------- */

static mail_priv *priv_new(void)
{
    return calloc(1, sizeof(mail_priv));
}

static int job_add_mail(tern_mail_job *j, tern_mail *m)
{
    if (j->n_mails == j->cap_mails) {
        size_t nc = j->cap_mails ? j->cap_mails * 2 : 4;
        tern_mail **v = realloc(j->mails, nc * sizeof(*v));
        if (v == NULL)
            return -1;
        j->mails = v;
        j->cap_mails = nc;
    }
    j->mails[j->n_mails++] = m;
    return 0;
}

static void job_del_mail(tern_mail_job *j, tern_mail *m)
{
    for (size_t i = 0; i < j->n_mails; i++)
        if (j->mails[i] == m) {
            j->mails[i] = j->mails[--j->n_mails];
            return;
        }
}

static void priv_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

static void mail_destroy(tern_mail *m)
{
    mail_priv *pv = PRIV(m);
    if (pv && pv->timer_init) {
        uv_timer_stop(&pv->timer);
        pv->timer.data = pv;
        uv_close((uv_handle_t *)&pv->timer, priv_timer_closed);
    } else
        free(pv);
    m->engine_priv = NULL;
    tern_mail_free(m);
}

static bool in_entry_phase(const tern_mail *m)
{
    const tern_mail_job *j = m->job;
    return j->in_session && !j->outcome_sent && (int)m->proc == j->entry;
}

/* A mail leaves the entry processor (or ends) while the client waits. */
static void entry_left(tern_mail *m);

static void outcome_send(tern_mail_job *j, const tern_pipeline_outcome *o)
{
    if (j->outcome_sent)
        return;
    j->outcome_sent = true;
    if (j->deadline_init)
        uv_timer_stop(&j->deadline);
    tern_pipeline_outcome_cb cb = j->cb;
    j->cb = NULL;
    if (cb)
        cb(j->arg, o);
}

static void unpark_all(tern_mail_job *j)
{
    /* Copy first: running a mail may park or end others. */
    size_t n = j->n_parked;
    tern_mail **v = j->parked;
    j->parked = NULL;
    j->n_parked = j->cap_parked = 0;
    for (size_t i = 0; i < n; i++) {
        v[i]->state = MS_READY;
        if (j->aborted)
            mail_end(v[i], "aborted", true); /* refused in the session: not ours */
        else
            run(v[i]);
    }
    free(v);
}

static void outcome_accept(tern_mail_job *j)
{
    tern_pipeline_outcome o = {.accepted = true, .code = 250};
    outcome_send(j, &o);
    unpark_all(j);
}

static void entry_left(tern_mail *m)
{
    tern_mail_job *j = m->job;
    if (!j->in_session || j->outcome_sent || j->in_entry == 0)
        return;
    if (--j->in_entry == 0 && !j->aborted)
        outcome_accept(j);
}

static void deadline_fired(uv_timer_t *t)
{
    tern_mail_job *j = t->data;
    TLOG_WARN("mailet", "event=root_deadline qid=%s session=%s", j->qid,
              j->env && j->env->session_id ? j->env->session_id : "");
    /* The mail is durable: the client gets its 250 and processing goes on. */
    outcome_accept(j);
}

static void job_free_cb(uv_handle_t *h)
{
    tern_mail_job *j = h->data;
    free(j);
}

static void runner_admit(tern_runner *r);
static void job_apply_hints(tern_mail_job *j, tern_mail *m);

/* Tells the queue manager about recipients handed over since the last
 * call. Once per mailet step, not once per recipient: the queue runs on
 * another loop and would otherwise start a delivery for the first
 * recipient before the others of the same domain arrive, sending the
 * message twice where one transaction would do. */
static void job_flush_queued(tern_mail_job *j)
{
    if (!j->queued_pending)
        return;
    j->queued_pending = false;
    if (j->r && j->r->env.queued)
        j->r->env.queued(j->r->env.queued_arg, j->qid);
}

static void job_end(tern_mail_job *j)
{
    tern_runner *r = j->r;
    job_flush_queued(j);
    if (j->in_session && !j->outcome_sent) {
        /* Ended before anyone answered (everything finished in root):
         * the message was taken care of. */
        tern_pipeline_outcome o = {.accepted = true, .code = 250};
        outcome_send(j, &o);
    }
    if (j->started) {
        if (j->keep) {
            /* The queue manager may have finished its part already. */
            if (tern_spool_complete_if_done(r->env.spool, j->qid) != 1)
                TLOG_DEBUG("mailet", "event=kept qid=%s reason=remote-or-unfinished", j->qid);
        } else if (tern_spool_complete(r->env.spool, j->qid) == 0)
            TLOG_DEBUG("mailet", "event=complete qid=%s", j->qid);
    }
    if (j->prev)
        j->prev->next = j->next;
    else
        r->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
    r->inflight--;
    if (j->active)
        r->active--;
    if (j->env)
        tern_envelope_free(j->env);
    free(j->msg);
    free(j->mails);
    free(j->parked);
    free(j->orig_remote);
    if (j->hints_init)
        tern_arena_free(&j->hint_arena);
    if (j->p)
        tern_pipeline_unref(j->p);
    if (j->deadline_init) {
        uv_timer_stop(&j->deadline);
        j->deadline.data = j;
        uv_close((uv_handle_t *)&j->deadline, job_free_cb);
    } else
        free(j);
    if (r->closing)
        runner_maybe_free(r);
    else
        runner_admit(r);
}

static void job_maybe_end(tern_mail_job *j)
{
    if (j->n_mails == 0)
        job_end(j);
}

/* Whether some live mail of the job still has a recipient from orig. */
static bool orig_alive(const tern_mail_job *j, int orig)
{
    for (size_t i = 0; i < j->n_mails; i++)
        for (size_t k = 0; k < j->mails[i]->n_rcpts; k++)
            if (j->mails[i]->rcpts[k].orig == orig)
                return true;
    return false;
}

static void rcpt_leave(tern_mail *m, size_t i, bool remote, const char *how)
{
    tern_mail_job *j = m->job;
    int orig = m->rcpts[i].orig;
    char q[600];
    TLOG_INFO("mailet", "event=rcpt_%s qid=%s session=%s rcpt=%s how=%s",
              remote ? "remote" : "done", j->qid, tern_mail_session_id(m),
              tern_log_q(q, sizeof(q), m->rcpts[i].addr), how);
    tern_mail_rcpt_remove(m, i);
    /* A standalone mail (unit tests) has no runner and no spool entry. */
    if (j->r == NULL || orig < 0 || (size_t)orig >= j->env->n_rcpts)
        return;
    if (remote) {
        j->orig_remote[orig] = true;
        j->keep = true;
        tern_spool_rcpt_queued(j->r->env.spool, j->qid, (size_t)orig);
        j->queued_pending = true;
        return;
    }
    if (!j->orig_remote[orig] && !orig_alive(j, orig))
        tern_spool_rcpt_done(j->r->env.spool, j->qid, (size_t)orig);
}

void tern_mail_rcpt_done(tern_mail *m, size_t i, const char *how)
{
    if (i < m->n_rcpts)
        rcpt_leave(m, i, false, how ? how : "done");
}

bool tern_mail_remote_as_stored(const tern_mail *m, size_t i)
{
    if (m->modified || i >= m->n_rcpts || m->job == NULL || m->job->env == NULL)
        return false;
    int orig = m->rcpts[i].orig;
    const tern_envelope *env = m->job->env;
    if (orig < 0 || (size_t)orig >= env->n_rcpts || strcmp(env->mail_from, m->sender) != 0)
        return false;
    /* The same address, and no other recipient of the mail derived from it. */
    if (strcmp(env->rcpts[orig].addr, m->rcpts[i].addr) != 0)
        return false;
    const tern_mail_job *j = m->job;
    for (size_t k = 0; k < j->n_mails; k++)
        for (size_t r = 0; r < j->mails[k]->n_rcpts; r++)
            if (j->mails[k]->rcpts[r].orig == orig && &j->mails[k]->rcpts[r] != &m->rcpts[i])
                return false;
    return true;
}

void tern_mail_rcpt_remote(tern_mail *m, size_t i)
{
    if (i < m->n_rcpts)
        rcpt_leave(m, i, true, "queued");
}

/* done: the remaining recipients are finished (recorded); otherwise the
 * mail is abandoned and its spool entry stays for the next start. */
static void mail_end(tern_mail *m, const char *why, bool done)
{
    tern_mail_job *j = m->job;
    if (in_entry_phase(m) && m->state != MS_PARKED)
        entry_left(m);
    if (done) {
        while (m->n_rcpts > 0)
            rcpt_leave(m, m->n_rcpts - 1, false, why);
    } else if (m->n_rcpts > 0) {
        j->keep = true;
    }
    m->state = MS_DEAD;
    job_del_mail(j, m);
    mail_destroy(m);
    job_maybe_end(j);
}

/* ---- directory lookups -------------------------------------------------- */

typedef struct lookup_ctx {
    tern_mail *m;
    size_t idx;
} lookup_ctx;

static void lookup_finish_one(tern_mail *m)
{
    mail_priv *pv = PRIV(m);
    if (--pv->lookups_out > 0)
        return;
    m->state = MS_READY;
    if (m->runner->closing) {
        mail_end(m, "shutdown", false);
        return;
    }
    run(m);
}

static void auth_looked_up(tern_auth_req *q)
{
    lookup_ctx *c = q->data;
    tern_rcpt_entry *r = &c->m->rcpts[c->idx];
    if (q->status == TERN_AUTH_OK && q->out.account) {
        r->kind = TERN_RCPT_ACCOUNT;
        r->account = strdup(q->out.account);
        r->lookup = r->account ? TERN_LOOKUP_DONE : TERN_LOOKUP_FAILED;
    } else if (q->status == TERN_AUTH_ENOTFOUND) {
        r->lookup = TERN_LOOKUP_DONE;
    } else {
        r->lookup = TERN_LOOKUP_FAILED;
        PRIV(c->m)->lookup_failed = true;
    }
    tern_mail *m = c->m;
    free(c);
    tern_auth_req_free(q);
    lookup_finish_one(m);
}

static tern_auth_client *runner_auth(tern_runner *r, struct tern_auth *a)
{
    if (a == NULL || r->closing)
        return NULL;
    if (r->auth_for != a) {
        if (r->auth_client)
            tern_auth_client_close(r->auth_client);
        r->auth_client = tern_auth_client_new(a, r->env.loop);
        r->auth_for = r->auth_client ? a : NULL;
    }
    return r->auth_client;
}

static void store_looked_up(tern_store_req *q)
{
    lookup_ctx *c = q->data;
    tern_mail *m = c->m;
    tern_rcpt_entry *r = &m->rcpts[c->idx];
    if (q->status != TERN_STORE_OK) {
        r->lookup = TERN_LOOKUP_FAILED;
        PRIV(m)->lookup_failed = true;
        free(c);
        tern_store_req_free(q);
        lookup_finish_one(m);
        return;
    }
    const tern_rcpt_result *res = &q->out.rcpt;
    r->kind = res->kind;
    r->catch_all = res->catch_all;
    r->detail = res->detail ? strdup(res->detail) : NULL;
    if (res->kind == TERN_RCPT_ACCOUNT && res->n_targets > 0)
        r->account = strdup(res->targets[0]);
    if (res->kind == TERN_RCPT_ALIAS && res->n_targets > 0) {
        r->targets = calloc(res->n_targets, sizeof(char *));
        if (r->targets)
            for (size_t i = 0; i < res->n_targets; i++)
                if ((r->targets[r->n_targets] = strdup(res->targets[i])) != NULL)
                    r->n_targets++;
    }
    r->lookup = TERN_LOOKUP_DONE;
    tern_store_req_free(q);
    /* Our domain but unknown to the directory: an auth backend (LDAP,
     * SQL, file) may know the account; its mailboxes are made at first
     * delivery. */
    tern_auth_client *ac = r->kind == TERN_RCPT_UNKNOWN
                               ? runner_auth(m->runner, m->pipeline->auth)
                               : NULL;
    tern_auth_req *aq = ac ? tern_auth_req_new(TERN_AUTH_USER_EXISTS, auth_looked_up, c) : NULL;
    if (aq) {
        aq->in.service = "smtp";
        aq->in.user = r->addr;
        if (tern_auth_submit(ac, aq) == 0)
            return;
        tern_auth_req_free(aq);
    }
    free(c);
    lookup_finish_one(m);
}

/* Starts lookups for recipients not resolved yet; true when some are out
 * (run() continues when they are back). */
static bool lookups_start(tern_mail *m)
{
    mail_priv *pv = PRIV(m);
    size_t need = 0;
    for (size_t i = 0; i < m->n_rcpts; i++)
        if (m->rcpts[i].lookup == TERN_LOOKUP_PENDING)
            need++;
    if (need == 0)
        return false;
    TLOG_DEBUG("mailet", "event=rcpt_lookup qid=%s n=%zu", tern_mail_qid(m), need);
    pv->lookups_out = 1; /* held until every submit is done */
    m->state = MS_LOOKUP;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        tern_rcpt_entry *r = &m->rcpts[i];
        if (r->lookup != TERN_LOOKUP_PENDING)
            continue;
        lookup_ctx *c = malloc(sizeof(*c));
        tern_store_req *q = c ? tern_store_req_new(TERN_STORE_RCPT_LOOKUP, store_looked_up, c)
                              : NULL;
        if (q == NULL) {
            free(c);
            r->lookup = TERN_LOOKUP_FAILED;
            pv->lookup_failed = true;
            continue;
        }
        c->m = m;
        c->idx = i;
        q->in.name = r->addr;
        pv->lookups_out++;
        if (tern_store_submit(m->runner->env.store_client, q) != 0) {
            tern_store_req_free(q);
            free(c);
            pv->lookups_out--;
            r->lookup = TERN_LOOKUP_FAILED;
            pv->lookup_failed = true;
        }
    }
    lookup_finish_one(m);
    return true;
}

/* ---- matching ------------------------------------------------------------ */

static int match_eval(const pl_match *mt, tern_mail *m, bool *out)
{
    size_t n = m->n_rcpts;
    switch (mt->op) {
    case TERN_MATCH_NAME: {
        memset(out, 0, n * sizeof(bool));
        return mt->inst.mod->match(mt->inst.state, m, out);
    }
    case TERN_MATCH_NOT: {
        int r = match_eval(&mt->kids[0], m, out);
        for (size_t i = 0; i < n; i++)
            out[i] = !out[i];
        return r;
    }
    case TERN_MATCH_AND:
    case TERN_MATCH_OR: {
        bool *tmp = calloc(n ? n : 1, sizeof(bool));
        if (tmp == NULL)
            return -1;
        bool is_and = mt->op == TERN_MATCH_AND;
        for (size_t i = 0; i < n; i++)
            out[i] = is_and;
        int r = 0;
        for (size_t k = 0; k < mt->n_kids && r == 0; k++) {
            r = match_eval(&mt->kids[k], m, tmp);
            for (size_t i = 0; i < n; i++)
                out[i] = is_and ? out[i] && tmp[i] : out[i] || tmp[i];
        }
        free(tmp);
        return r;
    }
    }
    return -1;
}

/* ---- verdicts ------------------------------------------------------------ */

static const char *verdict_name(tern_mailet_verdict v)
{
    static const char *const names[] = {"continue", "goto", "finish", "reject", "tempfail",
                                        "error", "pending"};
    return (unsigned)v < sizeof(names) / sizeof(names[0]) ? names[v] : "invalid";
}

static uint64_t backoff_ms(const tern_mail *m)
{
    const tern_mailets_conf *c = &m->pipeline->cfg->mailets;
    uint64_t d = c->retry_min_ms;
    for (int i = 0; i < PRIV(m)->attempts && d < c->retry_max_ms; i++)
        d *= 2;
    return d < c->retry_max_ms ? d : c->retry_max_ms;
}

static void retry_fired(uv_timer_t *t)
{
    tern_mail *m = t->data;
    m->state = MS_READY;
    run(m);
}

static void goto_proc(tern_mail *m, int proc);

static void set_error(tern_mail *m, int code, const char *enh, const char *text)
{
    tern_mail_attr_set_int(m, "tern.error.code", code);
    if (enh)
        tern_mail_attr_set_str(m, "tern.error.enhanced", enh);
    tern_mail_attr_set_str(m, "tern.error.text", text ? text : "");
    tern_mail_attr_set_str(m, "tern.error.processor", m->pipeline->procs[m->proc].name);
}

static void schedule_retry(tern_mail *m, const char *why)
{
    mail_priv *pv = PRIV(m);
    const tern_envelope *env = m->job->env;
    int64_t age_ms = ((int64_t)time(NULL) - env->received_at) * 1000;
    if (age_ms > 0 && (uint64_t)age_ms > m->pipeline->cfg->mailets.max_lifetime_ms &&
        (int)m->proc != m->pipeline->bounces && (int)m->proc != m->pipeline->error) {
        set_error(m, 554, "4.4.7", "delivery time expired");
        goto_proc(m, m->pipeline->bounces);
        return;
    }
    if (!pv->timer_init) {
        if (uv_timer_init(m->runner->env.loop, &pv->timer) != 0) {
            mail_end(m, "timer", false);
            return;
        }
        pv->timer_init = true;
        pv->timer.data = m;
    }
    uint64_t d = backoff_ms(m);
    pv->attempts++;
    m->state = MS_TIMER;
    char q[300];
    TLOG_INFO("mailet", "event=retry_later qid=%s session=%s processor=%s step=%zu in_ms=%llu "
              "reason=%s", tern_mail_qid(m), tern_mail_session_id(m),
              m->pipeline->procs[m->proc].name, m->step, (unsigned long long)d,
              tern_log_q(q, sizeof(q), why));
    uv_timer_start(&pv->timer, retry_fired, d, 0);
}

static void goto_proc(tern_mail *m, int proc)
{
    bool was_entry = in_entry_phase(m);
    m->proc = (size_t)proc;
    m->step = 0;
    if (was_entry && (int)m->proc != m->job->entry) {
        /* Held until the client has its answer: a reject decided by
         * another part of the mail must not follow a delivery. */
        m->state = MS_PARKED;
        tern_mail_job *j = m->job;
        if (j->n_parked == j->cap_parked) {
            size_t nc = j->cap_parked ? j->cap_parked * 2 : 4;
            tern_mail **v = realloc(j->parked, nc * sizeof(*v));
            if (v == NULL) {
                m->state = MS_READY;
                entry_left(m);
                run(m);
                return;
            }
            j->parked = v;
            j->cap_parked = nc;
        }
        /* It stays among the job's live mails (the job must not end
         * under it); the parked list only says who waits for the answer. */
        j->parked[j->n_parked++] = m;
        entry_left(m);
        return;
    }
    m->state = MS_READY;
    run(m);
}

/* Sends the mail to an error processor, or retries when there is none
 * left to go to: nothing is dropped. */
static void to_error(tern_mail *m, int target, const char *why)
{
    const tern_pipeline *p = m->pipeline;
    if (target < 0 || target == (int)m->proc) {
        schedule_retry(m, why);
        return;
    }
    set_error(m, 451, "4.3.0", why);
    (void)p;
    goto_proc(m, target);
}

static void in_session_fail(tern_mail *m, bool temp, const tern_mailet_result *res)
{
    tern_mail_job *j = m->job;
    tern_pipeline_outcome o = {.tempfail = temp};
    o.code = res && res->code ? res->code : temp ? 451 : 550;
    if (temp ? (o.code < 400 || o.code > 499) : (o.code < 500 || o.code > 599))
        o.code = temp ? 451 : 550;
    snprintf(o.enhanced, sizeof(o.enhanced), "%s",
             res && res->enhanced ? res->enhanced : temp ? "4.3.0" : "5.7.1");
    if (o.enhanced[0] != (temp ? '4' : '5'))
        snprintf(o.enhanced, sizeof(o.enhanced), "%s", temp ? "4.3.0" : "5.7.1");
    snprintf(o.text, sizeof(o.text), "%s",
             res && res->text && res->text[0] ? res->text : temp ? "Try again later" : "Rejected");
    for (char *c = o.text; *c; c++)
        if (*c == '\r' || *c == '\n')
            *c = ' ';
    j->aborted = true;
    outcome_send(j, &o);
    /* The client was told no: the message is not ours (nothing of it was
     * delivered: parked mails are dropped with it). */
    for (size_t i = 0; i < j->n_mails; i++)
        if (j->mails[i] != m && j->mails[i]->state == MS_READY)
            j->mails[i]->state = MS_DEAD;
    unpark_all(j);
    mail_end(m, temp ? "tempfail-in-session" : "reject-in-session", true);
}

static void apply_verdict(tern_mail *m, tern_mailet_verdict v, const char *proc_name, int code,
                          const char *enh, const char *text)
{
    tern_mail_job *j = m->job;
    const pl_step *st = &m->pipeline->procs[m->proc].steps[m->step];
    char q1[300], q2[300];
    tern_log_level lv = v == TERN_MAILET_CONTINUE ? TERN_LOG_DEBUG : TERN_LOG_INFO;
    if (tern_log_enabled(lv, "mailet"))
        tern_log(lv, "mailet", "event=step qid=%s session=%s step=%s mailet=%s rcpts=%zu verdict=%s"
                 "%s%s%s%s", j->qid, tern_mail_session_id(m), st->path, st->mailet.name,
                 m->n_rcpts, verdict_name(v), proc_name ? " to=" : "",
                 proc_name ? tern_log_q(q1, sizeof(q1), proc_name) : "", text ? " text=" : "",
                 text ? tern_log_q(q2, sizeof(q2), text) : "");
    if (j->aborted || m->runner->closing) {
        mail_end(m, "aborted", !m->runner->closing && j->aborted);
        return;
    }
    switch (v) {
    case TERN_MAILET_CONTINUE:
        m->step++;
        m->state = MS_READY;
        run(m);
        return;
    case TERN_MAILET_GOTO: {
        int target = tern_pipeline_processor(m->pipeline, proc_name);
        if (target < 0) {
            char why[160];
            snprintf(why, sizeof(why), "%s sent the mail to unknown processor \"%.60s\"",
                     st->mailet.name, proc_name ? proc_name : "");
            to_error(m, m->pipeline->error, why);
            return;
        }
        goto_proc(m, target);
        return;
    }
    case TERN_MAILET_FINISH:
        mail_end(m, "finish", true);
        return;
    case TERN_MAILET_REJECT:
    case TERN_MAILET_TEMPFAIL: {
        bool temp = v == TERN_MAILET_TEMPFAIL;
        if (in_entry_phase(m)) {
            tern_mailet_result res = {.code = code, .enhanced = enh, .text = text};
            in_session_fail(m, temp, &res);
            return;
        }
        if (temp) {
            schedule_retry(m, text ? text : "tempfail");
            return;
        }
        if ((int)m->proc == m->pipeline->bounces) {
            to_error(m, m->pipeline->error, text ? text : "rejected while bouncing");
            return;
        }
        set_error(m, code >= 500 && code <= 599 ? code : 550, enh, text ? text : "rejected");
        goto_proc(m, m->pipeline->bounces);
        return;
    }
    case TERN_MAILET_ERROR:
    default: {
        char why[300];
        snprintf(why, sizeof(why), "%s failed%s%s", st->mailet.name, text ? ": " : "",
                 text ? text : "");
        if (st->on_error == PL_ERR_IGNORE) {
            m->step++;
            m->state = MS_READY;
            run(m);
        } else if (st->on_error == PL_ERR_RETRY)
            schedule_retry(m, why);
        else
            to_error(m, st->on_error_proc, why);
        return;
    }
    }
}

void tern_mail_resume(tern_mail *m, tern_mailet_verdict v, const tern_mailet_result *res)
{
    mail_priv *pv = PRIV(m);
    if (pv == NULL || (m->state != MS_SERVICE && m->state != MS_WAIT))
        return; /* a second resume, or one without a pending service: ignored */
    job_flush_queued(m->job);
    pv->rv = v;
    pv->r_proc[0] = pv->r_enh[0] = pv->r_text[0] = '\0';
    pv->r_code = 0;
    if (res) {
        if (res->processor)
            snprintf(pv->r_proc, sizeof(pv->r_proc), "%s", res->processor);
        if (res->enhanced)
            snprintf(pv->r_enh, sizeof(pv->r_enh), "%s", res->enhanced);
        if (res->text)
            snprintf(pv->r_text, sizeof(pv->r_text), "%s", res->text);
        pv->r_code = res->code;
    }
    if (m->state == MS_SERVICE) {
        /* Called from inside the service hook: run() picks it up when the
         * hook returns PENDING. */
        pv->resumed = true;
        return;
    }
    m->state = MS_READY;
    if (v == TERN_MAILET_PENDING || (unsigned)v > TERN_MAILET_PENDING)
        v = TERN_MAILET_ERROR;
    apply_verdict(m, v, pv->r_proc[0] ? pv->r_proc : NULL, pv->r_code,
                  pv->r_enh[0] ? pv->r_enh : NULL, pv->r_text[0] ? pv->r_text : NULL);
}

/* ---- the run loop --------------------------------------------------------- */

static void run(tern_mail *m)
{
    tern_pipeline *p = m->pipeline;
    mail_priv *pv = PRIV(m);
    for (;;) {
        tern_mail_job *j = m->job;
        if (m->state == MS_DEAD || j->aborted) {
            mail_end(m, "aborted", j->aborted);
            return;
        }
        if (m->runner->closing) {
            mail_end(m, "shutdown", false);
            return;
        }
        if (m->n_rcpts == 0) {
            mail_end(m, "no-recipients", true);
            return;
        }
        if (lookups_start(m))
            return;
        if (pv->lookup_failed) {
            pv->lookup_failed = false;
            for (size_t i = 0; i < m->n_rcpts; i++)
                if (m->rcpts[i].lookup == TERN_LOOKUP_FAILED)
                    m->rcpts[i].lookup = TERN_LOOKUP_PENDING;
            if (in_entry_phase(m)) {
                tern_mailet_result res = {.code = 451, .enhanced = "4.3.0",
                                          .text = "Temporary directory lookup failure"};
                in_session_fail(m, true, &res);
            } else
                schedule_retry(m, "directory lookup failed");
            return;
        }
        pl_proc *pr = &p->procs[m->proc];
        if (m->step >= pr->n_steps) {
            char why[160];
            snprintf(why, sizeof(why), "reached the end of processor %s", pr->name);
            to_error(m, p->error, why);
            return;
        }
        if (++pv->steps_run > p->cfg->mailets.max_steps) {
            pv->steps_run = 0;
            to_error(m, p->error, "too many steps (a processor loop?)");
            return;
        }
        pl_step *st = &pr->steps[m->step];
        m->step_name = st->mailet.name;
        size_t n = m->n_rcpts;
        bool *matched = calloc(n, sizeof(bool));
        if (matched == NULL || match_eval(&st->match, m, matched) != 0) {
            free(matched);
            apply_verdict(m, TERN_MAILET_ERROR, NULL, 0, NULL, "the matcher could not decide");
            return;
        }
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            k += matched[i];
        if (k == 0) {
            free(matched);
            m->step++;
            continue;
        }
        if (k < n) {
            /* Split: the matched recipients go on through this mailet in a
             * copy; the rest move on to the next step here. */
            tern_mail *c = tern_mail_clone_empty(m);
            mail_priv *cp = c ? priv_new() : NULL;
            if (c == NULL || cp == NULL || job_add_mail(j, c) != 0) {
                free(matched);
                free(cp);
                tern_mail_free(c);
                schedule_retry(m, "out of memory splitting a mail");
                return;
            }
            c->engine_priv = cp;
            cp->steps_run = pv->steps_run;
            for (size_t i = n; i-- > 0;)
                if (!matched[i]) {
                    tern_rcpt_entry *r = &m->rcpts[i];
                    /* Moves the recipient with its lookup. */
                    if (tern_mail_rcpt_add_derived(c, r->addr, r->orig) == 0) {
                        tern_rcpt_entry *cr = &c->rcpts[c->n_rcpts - 1];
                        char *addr = cr->addr;
                        *cr = *r;
                        free(addr);
                        memset(r, 0, sizeof(*r));
                        r->addr = strdup("");
                    }
                    tern_mail_rcpt_remove(m, i);
                }
            free(matched);
            c->step = m->step + 1;
            c->state = MS_READY;
            if (in_entry_phase(m))
                j->in_entry++;
            /* The unmatched part waits for its turn behind this one. */
            run(c);
            /* The loop's top ends this part if that one was refused in the
             * session (aborted) meanwhile. */
            continue;
        }
        free(matched);
        m->state = MS_SERVICE;
        pv->resumed = false;
        tern_mailet_result res = {0};
        tern_mailet_verdict v = st->mailet.mod->service(st->mailet.state, m, &res);
        job_flush_queued(j);
        if ((unsigned)v > TERN_MAILET_PENDING)
            v = TERN_MAILET_ERROR;
        if (v == TERN_MAILET_PENDING) {
            if (pv->resumed) {
                m->state = MS_READY;
                v = pv->rv == TERN_MAILET_PENDING || (unsigned)pv->rv > TERN_MAILET_PENDING
                        ? TERN_MAILET_ERROR
                        : pv->rv;
                apply_verdict(m, v, pv->r_proc[0] ? pv->r_proc : NULL, pv->r_code,
                              pv->r_enh[0] ? pv->r_enh : NULL, pv->r_text[0] ? pv->r_text : NULL);
            } else
                m->state = MS_WAIT;
            return;
        }
        m->state = MS_READY;
        if (v == TERN_MAILET_CONTINUE) {
            if (tern_log_enabled(TERN_LOG_DEBUG, "mailet"))
                TLOG_DEBUG("mailet", "event=step qid=%s step=%s mailet=%s rcpts=%zu verdict=continue",
                           j->qid, st->path, st->mailet.name, m->n_rcpts);
            m->step++;
            continue;
        }
        char proc[80] = "", enh[16] = "", text[256] = "";
        if (res.processor)
            snprintf(proc, sizeof(proc), "%s", res.processor);
        if (res.enhanced)
            snprintf(enh, sizeof(enh), "%s", res.enhanced);
        if (res.text)
            snprintf(text, sizeof(text), "%s", res.text);
        apply_verdict(m, v, proc[0] ? proc : NULL, res.code, enh[0] ? enh : NULL,
                      text[0] ? text : NULL);
        return;
    }
}

/* ---- starting --------------------------------------------------------- */

static void load_work(uv_work_t *w)
{
    tern_mail_job *j = w->data;
    tern_spool *s = j->r->env.spool;
    j->env = tern_spool_envelope_dup(s, j->qid);
    if (j->env == NULL) {
        j->load_status = -ENOENT;
        return;
    }
    j->load_status = tern_spool_read_message(s, j->qid, &j->msg, &j->msg_len);
}

static void load_done(uv_work_t *w, int status)
{
    tern_mail_job *j = w->data;
    tern_runner *r = j->r;
    tern_mail *m = NULL;
    mail_priv *pv = NULL;
    if (status == 0 && j->load_status == 0 && !r->closing) {
        j->orig_remote = calloc(j->env->n_rcpts ? j->env->n_rcpts : 1, sizeof(bool));
        m = j->orig_remote ? tern_mail_from_message(j->env, j->msg, j->msg_len) : NULL;
        pv = m ? priv_new() : NULL;
    }
    free(j->msg);
    j->msg = NULL;
    if (m == NULL || pv == NULL || job_add_mail(j, m) != 0) {
        if (!r->closing)
            TLOG_ERR("mailet", "event=load_failed qid=%s error=\"%s\"", j->qid,
                     j->load_status ? strerror(-j->load_status) : "out of memory");
        tern_mail_free(m);
        free(pv);
        if (j->in_session && !r->closing) {
            /* The client hears 451 and keeps the message; ours must go, or
             * it would be delivered twice. */
            tern_pipeline_outcome o = {.tempfail = true, .code = 451};
            snprintf(o.enhanced, sizeof(o.enhanced), "4.3.0");
            snprintf(o.text, sizeof(o.text), "Temporary processing failure");
            outcome_send(j, &o);
            tern_spool_complete(r->env.spool, j->qid);
        }
        job_end(j);
        return;
    }
    if (j->env->pipeline && strcmp(j->env->pipeline, TERN_QUEUE_PIPELINE) == 0) {
        /* Owned by the remote queue: never run the chain on it again. */
        tern_mail_free(m);
        free(pv);
        job_end(j);
        return;
    }
    j->started = true;
    for (size_t i = 0; i < j->env->n_rcpts; i++)
        if (j->env->rcpts[i].queued)
            j->keep = true; /* the queue manager's part of the entry */
    m->engine_priv = pv;
    m->job = j;
    m->runner = r;
    m->pipeline = j->p;
    if (j->hints_init) {
        job_apply_hints(j, m);
        tern_arena_free(&j->hint_arena);
        j->hints_init = false;
        j->hints = NULL;
        j->n_hints = 0;
    }
    const char *entry = j->env->pipeline && j->env->pipeline[0] ? j->env->pipeline : "root";
    j->entry = tern_pipeline_processor(j->p, entry);
    if (j->entry < 0) {
        /* The processor went away with a reload: start over from root. */
        TLOG_WARN("mailet", "event=no_processor qid=%s processor=%s using=root", j->qid, entry);
        j->entry = j->p->root;
    }
    m->proc = (size_t)j->entry;
    if (j->in_session)
        j->in_entry = 1;
    if (m->n_rcpts == 0) {
        mail_end(m, "already-done", true);
        return;
    }
    run(m);
}

/* The bound of the job's config snapshot (0 in a config built without
 * the schema's defaults: unbounded). */
static size_t runner_max_active(const tern_pipeline *p)
{
    uint32_t n = p && p->cfg ? p->cfg->mailets.max_active : 0;
    return n ? n : SIZE_MAX;
}

/* Reads the job's spool entry on the pool; load_done() runs it. */
static int job_load(tern_mail_job *j)
{
    if (uv_queue_work(j->r->env.loop, &j->work, load_work, load_done) != 0)
        return -1;
    j->active = true;
    j->r->active++;
    return 0;
}

/* Copies the hints into the job (all or none: a partial copy is simply
 * not used, and the runner asks the store as before). */
static void job_copy_hints(tern_mail_job *j, const tern_rcpt_hint *hints, size_t n)
{
    if (hints == NULL || n == 0)
        return;
    tern_arena_init(&j->hint_arena, 1024);
    j->hints_init = true;
    tern_arena *a = &j->hint_arena;
    tern_rcpt_hint *h = tern_arena_alloc(a, n * sizeof(*h));
    if (h == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        const tern_rcpt_hint *src = &hints[i];
        memset(&h[i], 0, sizeof(h[i]));
        if (src->addr == NULL)
            continue;
        h[i].res.kind = src->res.kind;
        h[i].res.catch_all = src->res.catch_all;
        h[i].addr = tern_arena_strdup(a, src->addr);
        if (h[i].addr == NULL)
            return;
        if (src->res.detail && (h[i].res.detail = tern_arena_strdup(a, src->res.detail)) == NULL)
            return;
        size_t nt = src->res.n_targets;
        if (nt) {
            h[i].res.targets = tern_arena_alloc(a, nt * sizeof(char *));
            if (h[i].res.targets == NULL)
                return;
            for (size_t k = 0; k < nt; k++)
                if ((h[i].res.targets[k] = tern_arena_strdup(a, src->res.targets[k])) == NULL)
                    return;
            h[i].res.n_targets = nt;
        }
    }
    j->hints = h;
    j->n_hints = n;
}

/* Fills recipients from the session's answers where they are for the same
 * address: an account, an alias or not ours. Anything else (unknown to the
 * directory: auth may know it; no answer) is looked up as before. */
static void job_apply_hints(tern_mail_job *j, tern_mail *m)
{
    for (size_t k = 0; k < m->n_rcpts; k++) {
        tern_rcpt_entry *r = &m->rcpts[k];
        if (r->orig < 0 || (size_t)r->orig >= j->n_hints || r->lookup != TERN_LOOKUP_PENDING)
            continue;
        const tern_rcpt_hint *h = &j->hints[r->orig];
        if (h->addr == NULL || r->addr == NULL || strcmp(h->addr, r->addr) != 0)
            continue;
        const tern_rcpt_result *res = &h->res;
        if (res->kind == TERN_RCPT_ACCOUNT && res->n_targets > 0) {
            if ((r->account = strdup(res->targets[0])) == NULL)
                continue;
        } else if (res->kind == TERN_RCPT_ALIAS && res->n_targets > 0) {
            r->targets = calloc(res->n_targets, sizeof(char *));
            if (r->targets == NULL)
                continue;
            for (size_t i = 0; i < res->n_targets; i++)
                if ((r->targets[r->n_targets] = strdup(res->targets[i])) != NULL)
                    r->n_targets++;
        } else if (res->kind != TERN_RCPT_NOT_LOCAL) {
            continue;
        }
        r->kind = res->kind;
        r->catch_all = res->catch_all;
        r->detail = res->detail ? strdup(res->detail) : NULL;
        r->lookup = TERN_LOOKUP_DONE;
    }
}

tern_mail_job *tern_runner_start(tern_runner *r, const char *qid, uint64_t deadline_ms,
                                 tern_pipeline_outcome_cb cb, void *arg)
{
    return tern_runner_start_hinted(r, qid, deadline_ms, cb, arg, NULL, 0);
}

tern_mail_job *tern_runner_start_hinted(tern_runner *r, const char *qid, uint64_t deadline_ms,
                                        tern_pipeline_outcome_cb cb, void *arg,
                                        const tern_rcpt_hint *hints, size_t n_hints)
{
    if (r == NULL || r->closing)
        return NULL;
    tern_mail_job *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return NULL;
    j->p = r->env.current(r->env.current_arg);
    if (j->p == NULL) {
        free(j);
        return NULL;
    }
    j->r = r;
    snprintf(j->qid, sizeof(j->qid), "%s", qid);
    j->cb = cb;
    j->arg = arg;
    j->in_session = cb != NULL;
    if (cb && deadline_ms > 0 && uv_timer_init(r->env.loop, &j->deadline) == 0) {
        j->deadline_init = true;
        j->deadline.data = j;
        uv_timer_start(&j->deadline, deadline_fired, deadline_ms, 0);
    }
    job_copy_hints(j, hints, n_hints);
    j->work.data = j;
    j->next = r->jobs;
    if (r->jobs)
        r->jobs->prev = j;
    r->jobs = j;
    r->inflight++;
    if (r->active >= runner_max_active(j->p)) {
        /* Back-pressure: an in-session job waits here (its deadline still
         * runs), so the SMTP client's 250 follows the delivery rate
         * instead of piling mail up in memory. */
        j->waiting = true;
        TLOG_DEBUG("mailet", "event=wait qid=%s active=%zu", j->qid, r->active);
        if (r->wait_tail)
            r->wait_tail->wait_next = j;
        else
            r->wait_head = j;
        r->wait_tail = j;
        return j;
    }
    if (job_load(j) != 0) {
        j->cb = NULL;
        job_end(j);
        return NULL;
    }
    return j;
}

/* Starts jobs that waited, while there is room. */
static void runner_admit(tern_runner *r)
{
    while (r->wait_head && r->active < runner_max_active(r->wait_head->p) && !r->closing) {
        tern_mail_job *j = r->wait_head;
        r->wait_head = j->wait_next;
        if (r->wait_head == NULL)
            r->wait_tail = NULL;
        j->wait_next = NULL;
        j->waiting = false;
        if (job_load(j) != 0) {
            /* Not started: its spool entry stays for the next start. */
            TLOG_ERR("mailet", "event=start_failed qid=%s", j->qid);
            job_end(j);
        }
    }
}

void tern_mail_job_forget(tern_mail_job *j)
{
    if (j) {
        j->cb = NULL;
        j->arg = NULL;
    }
}

/* ---- the inbox (posts from any thread) -------------------------------- */

static void inbox_cb(uv_async_t *a)
{
    tern_runner *r = a->data;
    pthread_mutex_lock(&r->mu);
    post *list = r->head;
    r->head = r->tail = NULL;
    pthread_mutex_unlock(&r->mu);
    while (list) {
        post *p = list;
        list = p->next;
        if (!r->closing && tern_runner_start(r, p->qid, 0, NULL, NULL) == NULL)
            TLOG_ERR("mailet", "event=start_failed qid=%s", p->qid);
        free(p);
    }
}

int tern_runner_post(tern_runner *r, const char *qid)
{
    post *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return -ENOMEM;
    snprintf(p->qid, sizeof(p->qid), "%s", qid);
    pthread_mutex_lock(&r->mu);
    if (r->inbox_closed) {
        pthread_mutex_unlock(&r->mu);
        free(p);
        return -ESHUTDOWN;
    }
    if (r->tail)
        r->tail->next = p;
    else
        r->head = p;
    r->tail = p;
    uv_async_send(&r->inbox);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

tern_runner *tern_runner_new(const tern_runner_env *env)
{
    tern_runner *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->env = *env;
    pthread_mutex_init(&r->mu, NULL);
    if (uv_async_init(env->loop, &r->inbox, inbox_cb) != 0) {
        pthread_mutex_destroy(&r->mu);
        free(r);
        return NULL;
    }
    r->inbox.data = r;
    return r;
}

size_t tern_runner_inflight(const tern_runner *r)
{
    return r ? r->inflight : 0;
}

static void runner_maybe_free(tern_runner *r)
{
    if (!r->inbox_gone || r->inflight > 0)
        return;
    pthread_mutex_lock(&r->mu);
    post *list = r->head;
    r->head = r->tail = NULL;
    pthread_mutex_unlock(&r->mu);
    while (list) {
        post *p = list;
        list = p->next;
        free(p);
    }
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static void inbox_closed_cb(uv_handle_t *h)
{
    tern_runner *r = h->data;
    r->inbox_gone = true;
    runner_maybe_free(r);
}

void tern_runner_close(tern_runner *r)
{
    if (r == NULL)
        return;
    r->closing = true;
    /* Closed here, not when the runner is freed: that may happen inside
     * one of this client's own callbacks. Pending requests still call back. */
    if (r->auth_client) {
        tern_auth_client_close(r->auth_client);
        r->auth_client = NULL;
        r->auth_for = NULL;
    }
    pthread_mutex_lock(&r->mu);
    r->inbox_closed = true;
    pthread_mutex_unlock(&r->mu);
    /* Mails waiting on a timer or parked are abandoned now (their spool
     * entries stay for the next start); those inside a store, auth or
     * pool call end when it returns, since `closing` is seen there. */
    size_t n = 0, cap = 0;
    tern_mail **v = NULL;
    for (tern_mail_job *j = r->jobs; j; j = j->next) {
        j->cb = NULL;
        j->n_parked = 0; /* parked mails are among j->mails */
        for (size_t i = 0; i < j->n_mails; i++) {
            tern_mail *m = j->mails[i];
            if (m->state != MS_TIMER && m->state != MS_PARKED)
                continue;
            if (n == cap) {
                size_t nc = cap ? cap * 2 : 16;
                tern_mail **nv = realloc(v, nc * sizeof(*nv));
                if (nv == NULL)
                    break;
                v = nv;
                cap = nc;
            }
            v[n++] = m;
        }
    }
    for (size_t i = 0; i < n; i++)
        mail_end(v[i], "shutdown", false);
    free(v);
    /* Jobs that never loaded end now; their entries stay in the spool. */
    while (r->wait_head) {
        tern_mail_job *j = r->wait_head;
        r->wait_head = j->wait_next;
        j->waiting = false;
        j->cb = NULL;
        job_end(j);
    }
    r->wait_tail = NULL;
    uv_close((uv_handle_t *)&r->inbox, inbox_closed_cb);
}

/* ---- asynchronous help for mailets -------------------------------------- */

typedef struct async_call {
    uv_work_t w;
    tern_mail *m;
    tern_mailet_work_fn work;
    tern_mailet_done_fn done;
    void *arg;
} async_call;

static void async_work(uv_work_t *w)
{
    async_call *c = w->data;
    c->work(c->arg);
}

static void async_after(uv_work_t *w, int status)
{
    (void)status;
    async_call *c = w->data;
    tern_mail *m = c->m;
    c->done(m, c->arg);
    free(c);
}

int tern_mail_call_async(tern_mail *m, tern_mailet_work_fn work, tern_mailet_done_fn done,
                         void *arg)
{
    if (m == NULL || work == NULL || done == NULL)
        return -1;
    async_call *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -1;
    c->m = m;
    c->work = work;
    c->done = done;
    c->arg = arg;
    c->w.data = c;
    if (uv_queue_work(m->runner->env.loop, &c->w, async_work, async_after) != 0) {
        free(c);
        return -1;
    }
    return 0;
}

typedef struct spawn_ctx {
    tern_mail *m;
    tern_runner *r;
    tern_mail_spawn_cb done;
    void *arg;
    tern_envelope env;
} spawn_ctx;

static void spawn_free_env(tern_envelope *e)
{
    for (size_t i = 0; i < e->n_rcpts; i++) {
        free(e->rcpts[i].addr);
        free(e->rcpts[i].orcpt);
    }
    free(e->envid);
    free(e->auth_user);
    free(e->rcpts);
    free(e->mail_from);
    free(e->pipeline);
    free(e->session_id);
    free(e->listener);
    free(e->client_addr);
    free(e->helo);
}

static void spawn_durable(void *arg, int status, const char *qid, const char *error)
{
    spawn_ctx *c = arg;
    tern_runner *r = c->r;
    if (status == 0) {
        tern_runner *to = r->env.pick ? r->env.pick(r->env.pick_arg) : r;
        if (to == NULL || tern_runner_post(to, qid) != 0)
            TLOG_ERR("mailet", "event=spawn_post_failed qid=%s (processed at next start)", qid);
        else
            TLOG_INFO("mailet", "event=spawned qid=%s parent=%s processor=%s", qid,
                      c->m ? tern_mail_qid(c->m) : "-", c->env.pipeline);
    } else
        TLOG_ERR("mailet", "event=spawn_failed error=\"%s\"", error ? error : strerror(-status));
    spawn_free_env(&c->env);
    if (c->done)
        c->done(c->m, c->arg, status);
    free(c);
}

int tern_mail_spawn(tern_mail *m, const char *sender, const char *const *rcpts, size_t n_rcpts,
                    const uint8_t *msg, size_t len, const char *processor,
                    tern_mail_spawn_cb done, void *arg)
{
    tern_runner *r = m->runner;
    if (n_rcpts == 0 || sender == NULL || processor == NULL ||
        tern_pipeline_processor(m->pipeline, processor) < 0)
        return -EINVAL;
    spawn_ctx *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    c->m = m;
    c->r = r;
    c->done = done;
    c->arg = arg;
    tern_envelope *e = &c->env;
    e->mail_from = strdup(sender);
    e->pipeline = strdup(processor);
    e->session_id = strdup(tern_mail_session_id(m));
    e->listener = strdup("internal");
    e->client_addr = strdup("");
    e->helo = strdup("");
    e->rcpts = calloc(n_rcpts, sizeof(*e->rcpts));
    bool ok = e->mail_from && e->pipeline && e->session_id && e->listener && e->client_addr &&
              e->helo && e->rcpts;
    for (size_t i = 0; ok && i < n_rcpts; i++) {
        e->rcpts[i].addr = strdup(rcpts[i]);
        ok = e->rcpts[i].addr != NULL;
        e->n_rcpts = i + 1;
    }
    e->received_at = (int64_t)time(NULL);
    e->body = TERN_BODY_8BITMIME;
    const tern_envelope *pe = tern_mail_envelope(m);
    e->smtputf8 = pe ? pe->smtputf8 : false;
    tern_body *b = ok ? tern_body_new(r->env.loop, tern_spool_tmpdir(r->env.spool), len + 1) : NULL;
    if (b == NULL || tern_body_append(b, msg, len, NULL, NULL) != 0) {
        if (b)
            tern_body_free(b);
        spawn_free_env(e);
        free(c);
        return -ENOMEM;
    }
    e->size = len;
    int rc = tern_spool_submit(r->env.spool_client, e, NULL, 0, b, spawn_durable, c);
    if (rc != 0) {
        tern_body_free(b);
        spawn_free_env(e);
        free(c);
        return rc;
    }
    return 0;
}

/* ---- a mail outside any runner (unit tests, tools) ----------------------- */

tern_mail *tern_mail_standalone(const tern_envelope *env, const uint8_t *msg, size_t len,
                                tern_pipeline *p)
{
    tern_mail_job *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return NULL;
    /* A private copy of the envelope through the spool's own codec, so the
     * mail owns every string it points to. */
    size_t elen = 0;
    uint8_t *blob = spool_env_encode(env, &elen);
    const char *why = NULL;
    j->env = blob ? spool_env_decode(blob, elen, &why) : NULL;
    free(blob);
    tern_mail *m = j->env ? tern_mail_from_message(env, msg, len) : NULL;
    if (m == NULL) {
        if (j->env)
            tern_envelope_free(j->env);
        free(j);
        return NULL;
    }
    memcpy(j->qid, env->qid, TERN_QID_LEN);
    j->p = p ? tern_pipeline_ref(p) : NULL;
    m->job = j;
    m->pipeline = p;
    return m;
}

void tern_mail_standalone_free(tern_mail *m)
{
    if (m == NULL)
        return;
    tern_mail_job *j = m->job;
    tern_mail_free(m);
    if (j) {
        if (j->env)
            tern_envelope_free(j->env);
        if (j->p)
            tern_pipeline_unref(j->p);
        free(j);
    }
}

typedef struct queue_ctx {
    tern_mail *m;
    tern_mail_queued_cb done;
    void *arg;
    tern_envelope env;
} queue_ctx;

static void queue_durable(void *arg, int status, const char *qid, const char *error)
{
    queue_ctx *c = arg;
    if (status == 0) {
        TLOG_INFO("mailet", "event=queued_remote qid=%s parent=%s nrcpt=%zu", qid,
                  tern_mail_qid(c->m), c->env.n_rcpts);
        tern_runner *r = c->m->runner;
        if (r->env.queued)
            r->env.queued(r->env.queued_arg, qid);
    }
    else
        TLOG_ERR("mailet", "event=queue_failed parent=%s error=\"%s\"", tern_mail_qid(c->m),
                 error ? error : strerror(-status));
    spawn_free_env(&c->env);
    c->done(c->m, c->arg, status, status == 0 ? qid : NULL);
    free(c);
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

int tern_mail_queue_remote(tern_mail *m, const size_t *idx, size_t n, tern_mail_queued_cb done,
                           void *arg)
{
    tern_runner *r = m->runner;
    const tern_envelope *pe = tern_mail_envelope(m);
    if (n == 0 || done == NULL || r == NULL || pe == NULL)
        return -EINVAL;
    queue_ctx *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    c->m = m;
    c->done = done;
    c->arg = arg;
    tern_envelope *e = &c->env;
    e->mail_from = strdup(tern_mail_sender(m));
    e->pipeline = strdup(TERN_QUEUE_PIPELINE);
    e->session_id = dup_or_null(pe->session_id);
    e->listener = dup_or_null(pe->listener);
    e->client_addr = dup_or_null(pe->client_addr);
    e->helo = dup_or_null(pe->helo);
    e->auth_user = dup_or_null(pe->auth_user);
    e->envid = dup_or_null(pe->envid);
    e->ret = pe->ret;
    e->body = pe->body;
    e->smtputf8 = pe->smtputf8;
    e->requiretls = pe->requiretls;
    e->received_at = pe->received_at;
    e->rcpts = calloc(n, sizeof(*e->rcpts));
    bool ok = e->mail_from && e->pipeline && e->rcpts;
    for (size_t i = 0; ok && i < n; i++) {
        if (idx[i] >= m->n_rcpts) {
            ok = false;
            break;
        }
        const tern_rcpt_entry *re = &m->rcpts[idx[i]];
        tern_spool_rcpt *sr = &e->rcpts[i];
        e->n_rcpts = i + 1;
        sr->addr = strdup(re->addr);
        ok = sr->addr != NULL;
        /* DSN parameters follow the recipient they were given for. */
        if (ok && re->orig >= 0 && (size_t)re->orig < pe->n_rcpts) {
            const tern_spool_rcpt *o = &pe->rcpts[re->orig];
            sr->notify = o->notify;
            if (o->orcpt && (sr->orcpt = strdup(o->orcpt)) == NULL)
                ok = false;
        }
    }
    size_t len = 0;
    uint8_t *msg = ok ? tern_mail_serialize(m, &len) : NULL;
    tern_body *b = msg ? tern_body_new(r->env.loop, tern_spool_tmpdir(r->env.spool), len + 1)
                       : NULL;
    if (b == NULL || tern_body_append(b, msg, len, NULL, NULL) != 0) {
        free(msg);
        if (b)
            tern_body_free(b);
        spawn_free_env(e);
        free(c);
        return ok ? -ENOMEM : -EINVAL;
    }
    free(msg);
    e->size = len;
    int rc = tern_spool_submit(r->env.spool_client, e, NULL, 0, b, queue_durable, c);
    if (rc != 0) {
        tern_body_free(b);
        spawn_free_env(e);
        free(c);
        return rc;
    }
    return 0;
}
