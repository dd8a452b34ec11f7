/* MTA-STS policy discovery, cache and enforcement for the remote queue
 * (see queue_mtasts.h), on the queue's loop. RFC 8461 5.1 decides when to
 * fetch: a `_mta-sts` TXT id that differs from the cached policy's (or no
 * cached policy) means fetch; no record, or a DNS failure, means use the
 * cached policy while it is within max_age; a failed fetch falls back to
 * it as well. The cache is written under STATE_DIR/mta-sts on the thread
 * pool (one file per domain, whole and renamed) and read back at start.
 * Input: DNS answers and policy bodies (untrusted, parsed by lib/mta_sts);
 * cache files are our own but parsed with the same parser. */
#include "server/queue_mtasts.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include "lib/log.h"
#include "server/mta_sts_fetch.h"

#define MOD "mta-sts"
#define CACHE_MAGIC "tern-mta-sts-cache 1\n"

typedef struct cached {
    char domain[256];
    char id[TERN_STS_ID_MAX + 1];
    tern_sts_policy pol;
    int64_t fetched_at;        /* wall clock, seconds */
    struct cached *next;
} cached;

struct tern_mtasts {
    tern_mtasts_env env;
    char *dir;                 /* STATE_DIR/mta-sts */
    char *state_dir;
    char *ca_file;
    tern_tls_client *tls;
    tern_tlsrpt *rpt;
    cached *cache;
    size_t n_cache;
    struct tern_mtasts_req *reqs;
    bool closing;
};

struct tern_mtasts_req {
    tern_mtasts *m;
    char domain[256];
    tern_mtasts_cb cb;
    void *arg;
    unsigned pending;          /* DNS queries in flight */
    /* what the `_mta-sts` TXT said */
    enum { TXT_NONE, TXT_ID, TXT_TEMPFAIL } txt;
    char id[TERN_STS_ID_MAX + 1];
    char rua[TERN_TLSRPT_RUA_MAX + 1];
    tern_sts_fetch *fetch;
    /* Lookups of the same domain that wait for this one's fetch (one
     * fetch per domain at a time), chained through wait_next. */
    struct tern_mtasts_req *waiters, *wait_next;
    struct tern_mtasts_req *prev, *next;
};

typedef struct cache_job {
    uv_work_t w;
    char path[600];
    char dir[560];
    char *text;
    size_t len;
} cache_job;

static bool domain_ok(const char *d)
{
    size_t n = strlen(d);
    if (n == 0 || n > 253 || d[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = d[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
              c == '_'))
            return false;
    }
    return strstr(d, "..") == NULL;
}

static cached *cache_find(tern_mtasts *m, const char *domain)
{
    for (cached *c = m->cache; c; c = c->next)
        if (strcasecmp(c->domain, domain) == 0)
            return c;
    return NULL;
}

static bool cache_valid(const cached *c)
{
    return c && (int64_t)time(NULL) < c->fetched_at + (int64_t)c->pol.max_age;
}

static cached *cache_put(tern_mtasts *m, const char *domain, const char *id,
                         const tern_sts_policy *pol, int64_t fetched_at)
{
    cached *c = cache_find(m, domain);
    if (c == NULL) {
        if (m->n_cache >= TERN_MTASTS_CACHE_MAX)
            return NULL;
        c = calloc(1, sizeof(*c));
        if (c == NULL)
            return NULL;
        snprintf(c->domain, sizeof(c->domain), "%s", domain);
        c->next = m->cache;
        m->cache = c;
        m->n_cache++;
    }
    snprintf(c->id, sizeof(c->id), "%s", id);
    c->pol = *pol;
    c->fetched_at = fetched_at;
    return c;
}

/* ---- the cache files ---------------------------------------------------- */

static void cache_work(uv_work_t *w)
{
    cache_job *j = w->data;
    char tmp[700];
    snprintf(tmp, sizeof(tmp), "%s.tmp", j->path);
    if (mkdir(j->dir, 0750) != 0 && errno != EEXIST)
        goto fail;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        goto fail;
    size_t off = 0;
    while (off < j->len) {
        ssize_t n = write(fd, j->text + off, j->len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            close(fd);
            unlink(tmp);
            goto fail;
        }
        off += (size_t)n;
    }
    if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp, j->path) != 0) {
        unlink(tmp);
        goto fail;
    }
    return;
fail:
    TLOG_WARN(MOD, "event=cache_write_failed path=\"%s\" error=\"%s\"", j->path, strerror(errno));
}

static void cache_done(uv_work_t *w, int status)
{
    (void)status;
    cache_job *j = w->data;
    free(j->text);
    free(j);
}

/* The file: the magic line, "id <id>", "fetched <unix time>", an empty
 * line, then the policy as served. */
static void cache_persist(tern_mtasts *m, const cached *c, const char *body, size_t len)
{
    cache_job *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return;
    size_t cap = len + 512;
    j->text = malloc(cap);
    if (j->text == NULL) {
        free(j);
        return;
    }
    int h = snprintf(j->text, cap, CACHE_MAGIC "id %s\nfetched %" PRId64 "\n\n", c->id,
                     c->fetched_at);
    memcpy(j->text + h, body, len);
    j->len = (size_t)h + len;
    snprintf(j->dir, sizeof(j->dir), "%s", m->dir);
    snprintf(j->path, sizeof(j->path), "%s/%s", m->dir, c->domain);
    j->w.data = j;
    if (uv_queue_work(m->env.loop, &j->w, cache_work, cache_done) != 0) {
        cache_work(&j->w);
        cache_done(&j->w, 0);
    }
}

/* At start, on the loop before anything is queued: every unexpired file. */
static void cache_load(tern_mtasts *m)
{
    DIR *d = opendir(m->dir);
    if (d == NULL)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!domain_ok(de->d_name) || strstr(de->d_name, ".tmp"))
            continue;
        char path[600];
        snprintf(path, sizeof(path), "%s/%s", m->dir, de->d_name);
        FILE *f = fopen(path, "rb");
        if (f == NULL)
            continue;
        char line[128];
        char id[TERN_STS_ID_MAX + 1] = "";
        int64_t fetched = 0;
        bool ok = fgets(line, sizeof(line), f) && strcmp(line, CACHE_MAGIC) == 0 &&
                  fgets(line, sizeof(line), f) && sscanf(line, "id %32[A-Za-z0-9]", id) == 1 &&
                  fgets(line, sizeof(line), f) && sscanf(line, "fetched %" SCNd64, &fetched) == 1 &&
                  fgets(line, sizeof(line), f) && strcmp(line, "\n") == 0;
        static tern_sts_parser p;
        tern_sts_parser_init(&p);
        tern_sts_policy pol;
        uint8_t buf[4096];
        size_t n;
        while (ok && (n = fread(buf, 1, sizeof(buf), f)) > 0)
            if (tern_sts_parse(&p, buf, n) == TERN_STS_ERROR)
                ok = false;
        fclose(f);
        if (!ok || tern_sts_finish(&p, &pol, NULL) != TERN_STS_DONE) {
            TLOG_WARN(MOD, "event=cache_file_bad path=\"%s\"", path);
            continue;
        }
        if ((int64_t)time(NULL) >= fetched + (int64_t)pol.max_age) {
            unlink(path); /* expired: of no more use */
            continue;
        }
        cache_put(m, de->d_name, id, &pol, fetched);
        TLOG_INFO(MOD, "event=cache_loaded domain=%s id=%s mode=%s", de->d_name, id,
                  tern_sts_mode_name(pol.mode));
    }
    closedir(d);
}

/* ---- lookups ------------------------------------------------------------ */

static void req_answer(tern_mtasts_req *r, const tern_sts_policy *pol)
{
    tern_mtasts *m = r->m;
    tern_sts_applied s;
    memset(&s, 0, sizeof(s));
    if (pol && pol->mode != TERN_STS_NONE) {
        s.mode = pol->mode;
        s.policy = *pol;
    }
    snprintf(s.rua, sizeof(s.rua), "%s", r->rua);
    if (r->prev)
        r->prev->next = r->next;
    else
        m->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    TLOG_DEBUG(MOD, "event=policy domain=%s mode=%s", r->domain, tern_sts_mode_name(s.mode));
    tern_mtasts_cb cb = r->cb;
    void *arg = r->arg;
    free(r);
    cb(arg, &s);
}

/* Answers r and every lookup waiting for its fetch. */
static void req_answer_all(tern_mtasts_req *r, const tern_sts_policy *pol)
{
    tern_sts_policy copy;
    if (pol)
        copy = *pol;
    tern_mtasts_req *w = r->waiters;
    r->waiters = NULL;
    req_answer(r, pol ? &copy : NULL);
    while (w) {
        tern_mtasts_req *next = w->wait_next;
        req_answer(w, pol ? &copy : NULL);
        w = next;
    }
}

static void fetched(void *arg, const tern_sts_fetched *f)
{
    tern_mtasts_req *r = arg;
    tern_mtasts *m = r->m;
    r->fetch = NULL;
    if (f->ok == 0) {
        cached *c = cache_put(m, r->domain, r->id, &f->policy, (int64_t)time(NULL));
        TLOG_INFO(MOD, "event=policy_fetched domain=%s id=%s mode=%s max_age=%" PRIu32
                       " mx_patterns=%zu",
                  r->domain, r->id, tern_sts_mode_name(f->policy.mode), f->policy.max_age,
                  f->policy.n_mx);
        if (c && !m->closing)
            cache_persist(m, c, f->body, f->body_len);
        req_answer_all(r, &f->policy);
        return;
    }
    char qw[600];
    TLOG_WARN(MOD, "event=policy_fetch_failed domain=%s error=%s", r->domain,
              tern_log_q(qw, sizeof(qw), f->why));
    cached *c = cache_find(m, r->domain);
    if (!m->closing && strcmp(f->why, "cancelled") != 0) {
        /* RFC 8460 4.3.2.2: the fetch failure is reported for the domain. */
        const char *type = f->webpki_invalid                       ? "sts-webpki-invalid"
                           : strncmp(f->why, "invalid policy", 14) == 0 ? "sts-policy-invalid"
                                                                    : "sts-policy-fetch-error";
        char host[300];
        snprintf(host, sizeof(host), "mta-sts.%s", r->domain);
        tern_tlsrpt_session(m->rpt, r->domain, TERN_TLSRPT_STS, cache_valid(c) ? &c->pol : NULL,
                            r->rua[0] ? r->rua : NULL, false, type, host, NULL, f->why);
    }
    req_answer_all(r, cache_valid(c) ? &c->pol : NULL);
}

/* Both TXT answers are in: decide. */
static void decide(tern_mtasts_req *r)
{
    tern_mtasts *m = r->m;
    cached *c = cache_find(m, r->domain);
    bool valid = cache_valid(c);
    if (r->txt == TXT_ID && !(valid && strcmp(c->id, r->id) == 0) && !m->closing) {
        for (tern_mtasts_req *o = m->reqs; o; o = o->next)
            if (o != r && o->fetch && strcmp(o->domain, r->domain) == 0) {
                r->wait_next = o->waiters;
                o->waiters = r;
                return;
            }
        tern_sts_fetch_params p = {
            .loop = m->env.loop,
            .worker = m->env.worker,
            .dns = m->env.dns,
            .tls = m->tls,
            .domain = r->domain,
            .port = m->env.port,
        };
        r->fetch = tern_sts_fetch_start(&p, fetched, r);
        if (r->fetch != NULL)
            return;
    }
    req_answer(r, valid ? &c->pol : NULL);
}

/* The character-strings of a TXT record, joined (RFC 7208-style). */
static size_t txt_join(const tern_dns_rr *rr, char *out, size_t size)
{
    size_t n = 0;
    for (size_t i = 0; i < rr->u.txt.n; i++) {
        const tern_dns_bytes *b = &rr->u.txt.strings[i];
        if (n + b->len >= size)
            break;
        memcpy(out + n, b->data, b->len);
        n += b->len;
    }
    out[n] = '\0';
    return n;
}

static void sts_txt(void *data, tern_dns_result *res)
{
    tern_mtasts_req *r = data;
    r->pending--;
    if (res->status != TERN_DNS_ANSWER || res->security == TERN_DNS_BOGUS ||
        (res->rcode != TERN_DNS_RCODE_NOERROR && res->rcode != TERN_DNS_RCODE_NXDOMAIN)) {
        r->txt = TXT_TEMPFAIL;
    } else {
        /* RFC 8461 3.1: keep the records that start with "v=STSv1;"; not
         * exactly one of them means no policy. */
        size_t found = 0;
        char buf[2048];
        for (size_t i = 0; i < res->n_rrs; i++) {
            size_t n = txt_join(&res->rrs[i], buf, sizeof(buf));
            if (n < 8 || strncmp(buf, "v=STSv1;", 8) != 0)
                continue;
            const char *why = NULL;
            if (++found == 1 && tern_sts_txt_parse(buf, n, r->id, &why) != 0) {
                TLOG_INFO(MOD, "event=bad_txt domain=%s why=\"%s\"", r->domain, why);
                r->id[0] = '\0';
            }
        }
        r->txt = found == 1 && r->id[0] ? TXT_ID : TXT_NONE;
    }
    tern_dns_result_free(res);
    if (r->pending == 0)
        decide(r);
}

static void rpt_txt(void *data, tern_dns_result *res)
{
    tern_mtasts_req *r = data;
    r->pending--;
    if (res->status == TERN_DNS_ANSWER && res->rcode == TERN_DNS_RCODE_NOERROR) {
        char buf[2048];
        size_t found = 0;
        char rua[TERN_TLSRPT_RUA_MAX + 1];
        for (size_t i = 0; i < res->n_rrs; i++) {
            size_t n = txt_join(&res->rrs[i], buf, sizeof(buf));
            if (n >= 11 && strncmp(buf, "v=TLSRPTv1;", 11) == 0 && ++found == 1 &&
                tern_tlsrpt_txt_parse(buf, n, rua, NULL) == 0)
                snprintf(r->rua, sizeof(r->rua), "%s", rua);
        }
        if (found != 1)
            r->rua[0] = '\0'; /* RFC 8460 3: not exactly one record: none */
    }
    tern_dns_result_free(res);
    if (r->pending == 0)
        decide(r);
}

int tern_mtasts_lookup(tern_mtasts *m, const char *domain, tern_mtasts_cb cb, void *arg)
{
    /* Domains compare (and name cache files) in lowercase. */
    char low[256];
    size_t n = strlen(domain);
    if (m == NULL || m->closing || n == 0 || n >= sizeof(low))
        return -1;
    for (size_t i = 0; i <= n; i++)
        low[i] = domain[i] >= 'A' && domain[i] <= 'Z' ? (char)(domain[i] - 'A' + 'a') : domain[i];
    if (low[n - 1] == '.')
        low[n - 1] = '\0';
    if (!domain_ok(low))
        return -1;
    tern_mtasts_req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -1;
    r->m = m;
    snprintf(r->domain, sizeof(r->domain), "%s", low);
    r->cb = cb;
    r->arg = arg;
    char name[300];
    snprintf(name, sizeof(name), "_mta-sts.%s", domain);
    if (tern_dns_resolve(m->env.dns, name, TERN_DNS_TXT, 0, sts_txt, r, NULL) != 0) {
        free(r);
        return -1;
    }
    r->pending = 1;
    r->next = m->reqs;
    if (m->reqs)
        m->reqs->prev = r;
    m->reqs = r;
    snprintf(name, sizeof(name), "_smtp._tls.%s", domain);
    if (tern_dns_resolve(m->env.dns, name, TERN_DNS_TXT, 0, rpt_txt, r, NULL) == 0)
        r->pending++;
    return 0;
}

/* ---- per host ----------------------------------------------------------- */

int tern_mtasts_check_host(tern_mtasts *m, const char *domain, const tern_sts_applied *s,
                           const char *host, char *err, size_t err_size)
{
    if (m == NULL || s == NULL || s->mode == TERN_STS_MODE_UNSET)
        return 0;
    if (tern_sts_policy_match(&s->policy, host))
        return 0;
    TLOG_INFO(MOD, "event=mx_mismatch domain=%s host=%s mode=%s", domain, host,
              tern_sts_mode_name(s->mode));
    if (s->mode != TERN_STS_ENFORCE)
        return 0; /* testing: the session's outcome records the mismatch */
    snprintf(err, err_size, "4.7.5 MX host %s does not match the MTA-STS policy of %s", host,
             domain);
    /* No session takes place: this is the one record of it. */
    tern_tlsrpt_session(m->rpt, domain, TERN_TLSRPT_STS, &s->policy, s->rua[0] ? s->rua : NULL,
                        false, "validation-failure", host, NULL,
                        "MX host not listed in the policy");
    return -1;
}

void tern_mtasts_params(tern_mtasts *m, const tern_sts_applied *s, tern_smtp_client_params *p)
{
    if (m == NULL || s == NULL || s->mode == TERN_STS_MODE_UNSET || s->mode == TERN_STS_NONE)
        return;
    /* The certificate is judged under the MTA-STS CA set in both modes,
     * so testing mode reports what enforce mode would do. */
    p->tls = m->tls;
    /* RFC 8461 4.2: STARTTLS, and a certificate valid for the MX name
     * under the CAs we trust; the client fails with 4.7.10/4.7.5 else. */
    if (s->mode == TERN_STS_ENFORCE)
        p->tls_required = true;
}

/* Sessions that ended before EHLO never got to TLS: not counted. */
static bool before_tls(const tern_smtp_outcome *o)
{
    return !o->tls && (strcmp(o->stage, "connect") == 0 || strcmp(o->stage, "banner") == 0 ||
                       strstr(o->error, "shutdown") != NULL);
}

void tern_mtasts_outcome(tern_mtasts *m, const char *domain, const tern_sts_applied *s,
                         const char *host, const tern_smtp_outcome *o)
{
    if (m == NULL || o == NULL || before_tls(o))
        return;
    bool sts = s && s->mode != TERN_STS_MODE_UNSET;
    const char *ptype = sts ? TERN_TLSRPT_STS : TERN_TLSRPT_NO_POLICY;
    const tern_sts_policy *pol = sts ? &s->policy : NULL;
    const char *rua = s && s->rua[0] ? s->rua : NULL;
    char ip[80];
    snprintf(ip, sizeof(ip), "%s", o->peer);
    char *colon = strrchr(ip, ':');
    if (colon)
        *colon = '\0'; /* "addr:port" -> addr */
    bool ok = o->tls && (o->tls_verified || !sts);
    const char *type = NULL;
    const char *why = o->error;
    if (ok && sts && !tern_sts_policy_match(&s->policy, host)) {
        ok = false; /* testing mode let it through */
        type = "validation-failure";
        why = "MX host not listed in the policy";
    } else if (!ok) {
        if (!o->tls && (strcmp(o->stage, "starttls") == 0 || strcmp(o->stage, "handshake") == 0))
            type = "validation-failure"; /* offered, but the handshake failed */
        else if (!o->tls)
            type = "starttls-not-supported";
        else
            type = "validation-failure"; /* a certificate that does not verify for host */
    }
    tern_tlsrpt_session(m->rpt, domain, ptype, pol, rua, ok, type, host, ip, ok ? NULL : why);
}


void tern_mtasts_outcome_dane(tern_mtasts *m, const char *domain, const tern_sts_applied *s,
                              const char *host, const tern_tlsa *recs, size_t n,
                              const tern_smtp_outcome *o)
{
    if (m == NULL || o == NULL || before_tls(o))
        return;
    char ip[80];
    snprintf(ip, sizeof(ip), "%s", o->peer);
    char *colon = strrchr(ip, ':');
    if (colon)
        *colon = '\0';
    bool ok = o->tls && o->tls_dane;
    /* The client ends the handshake when no record matches the
     * certificate: RFC 8460's tlsa-invalid ("none of the records in the
     * RRset were found to be valid"). */
    const char *type = ok ? NULL : o->tls ? "validation-failure"
                           : (strcmp(o->stage, "starttls") == 0 || strcmp(o->stage, "handshake") == 0)
                               ? "tlsa-invalid"
                               : "starttls-not-supported";
    tern_tlsrpt_session_tlsa(m->rpt, domain, host, recs, n, s && s->rua[0] ? s->rua : NULL, ok,
                             type, ip, ok ? NULL : o->error);
}

void tern_mtasts_dane_unusable(tern_mtasts *m, const char *domain, const tern_sts_applied *s,
                               const char *host, const char *why)
{
    if (m == NULL)
        return;
    tern_tlsrpt_session_tlsa(m->rpt, domain, host, NULL, 0, s && s->rua[0] ? s->rua : NULL, false,
                             "dnssec-invalid", "", why);
}

/* ---- life --------------------------------------------------------------- */

tern_mtasts *tern_mtasts_new(const tern_mtasts_env *env, char *err, size_t err_size)
{
    tern_mtasts *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    m->env = *env;
    const char *sd = env->state_dir ? env->state_dir : ".";
    size_t dl = strlen(sd) + sizeof("/mta-sts");
    m->dir = malloc(dl);
    m->state_dir = strdup(sd);
    m->ca_file = env->ca_file ? strdup(env->ca_file) : NULL;
    if (m->dir == NULL || m->state_dir == NULL || (env->ca_file && m->ca_file == NULL)) {
        snprintf(err, err_size, "out of memory");
        tern_mtasts_free(m);
        return NULL;
    }
    snprintf(m->dir, dl, "%s/mta-sts", sd);
    m->env.state_dir = m->state_dir;
    m->env.ca_file = m->ca_file;
    char *terr = NULL;
    m->tls = tern_tls_client_new(m->ca_file, &terr);
    if (m->tls == NULL) {
        snprintf(err, err_size, "MTA-STS TLS client: %s", terr ? terr : "?");
        free(terr);
        tern_mtasts_free(m);
        return NULL;
    }
    m->rpt = tern_tlsrpt_new(env->loop, m->state_dir, env->org);
    if (m->rpt == NULL) {
        snprintf(err, err_size, "out of memory");
        tern_mtasts_free(m);
        return NULL;
    }
    cache_load(m);
    return m;
}

void tern_mtasts_close(tern_mtasts *m)
{
    if (m == NULL || m->closing)
        return;
    m->closing = true;
    for (tern_mtasts_req *r = m->reqs, *next; r; r = next) {
        next = r->next; /* the cancel may answer and free r */
        if (r->fetch)
            tern_sts_fetch_cancel(r->fetch);
    }
    tern_tlsrpt_close(m->rpt);
}

void tern_mtasts_free(tern_mtasts *m)
{
    if (m == NULL)
        return;
    while (m->cache) {
        cached *c = m->cache;
        m->cache = c->next;
        free(c);
    }
    tern_tlsrpt_free(m->rpt);
    tern_tls_client_free(m->tls);
    free(m->dir);
    free(m->state_dir);
    free(m->ca_file);
    free(m);
}
