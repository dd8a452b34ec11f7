/* TLS-RPT data collection and its daily files (see tlsrpt.h). Runs on the
 * queue's loop; file writes go to the thread pool, each a whole new file
 * renamed into place, and a sequence number per write keeps an older
 * snapshot from replacing a newer one. Input: our own outcomes; today's
 * file read back at start (our own output, but parsed as untrusted JSON
 * with limits, and a bad file only means counting starts over). */
#include "server/tlsrpt.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include "lib/arena.h"
#include "lib/buf.h"
#include "lib/json.h"
#include "lib/json_write.h"
#include "lib/log.h"
#include "protocols/common/tls_dane.h"

#define MOD "tlsrpt"
#define FILE_MAX (64u * 1024 * 1024)

typedef struct detail {
    char type[48];
    char mx[256];
    char ip[64];
    char why[256];
    uint64_t n;
} detail;

typedef struct entry {
    char day[11];
    char domain[256];
    char ptype[20];
    tern_sts_policy pol;
    bool have_pol;
    char rua[TERN_TLSRPT_RUA_MAX + 1];
    /* "tlsa" policies are per MX host: the host and its records. */
    char mx[256];
    char tlsa[TERN_TLSRPT_MAX_TLSA][160];
    size_t n_tlsa;
    uint64_t ok, failed;
    detail *d;
    size_t nd;
    struct entry *next;
} entry;

struct tern_tlsrpt {
    uv_loop_t *loop;
    char *dir;            /* STATE_DIR/tlsrpt */
    char *org;
    entry *list;
    size_t n;
    uv_timer_t timer;
    bool closed;
    pthread_mutex_t mu;   /* seq and written, shared with the pool */
    uint64_t seq, written;
};

typedef struct job {
    uv_work_t w;
    tern_tlsrpt *t;
    char path[600];
    tern_buf body;
    uint64_t seq;
} job;

static void today(char out[11])
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(out, 11, "%Y-%m-%d", &tm);
}

static void entry_free(entry *e)
{
    free(e->d);
    free(e);
}

static entry *entry_get(tern_tlsrpt *t, const char *day, const char *domain, const char *ptype,
                        const char *mx)
{
    for (entry *e = t->list; e; e = e->next)
        if (strcmp(e->day, day) == 0 && strcasecmp(e->domain, domain) == 0 &&
            strcmp(e->ptype, ptype) == 0 && strcasecmp(e->mx, mx) == 0)
            return e;
    if (t->n >= TERN_TLSRPT_MAX_DOMAINS)
        return NULL;
    entry *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return NULL;
    snprintf(e->day, sizeof(e->day), "%s", day);
    snprintf(e->domain, sizeof(e->domain), "%s", domain);
    snprintf(e->ptype, sizeof(e->ptype), "%s", ptype);
    snprintf(e->mx, sizeof(e->mx), "%s", mx);
    e->next = t->list;
    t->list = e;
    t->n++;
    return e;
}

static detail *detail_get(entry *e, const char *type, const char *mx, const char *ip)
{
    for (size_t i = 0; i < e->nd; i++)
        if (strcmp(e->d[i].type, type) == 0 && strcasecmp(e->d[i].mx, mx) == 0 &&
            strcmp(e->d[i].ip, ip) == 0)
            return &e->d[i];
    if (e->nd >= TERN_TLSRPT_MAX_DETAILS)
        return NULL;
    detail *nd = realloc(e->d, (e->nd + 1) * sizeof(*nd));
    if (nd == NULL)
        return NULL;
    e->d = nd;
    detail *d = &e->d[e->nd++];
    memset(d, 0, sizeof(*d));
    snprintf(d->type, sizeof(d->type), "%s", type);
    snprintf(d->mx, sizeof(d->mx), "%s", mx);
    snprintf(d->ip, sizeof(d->ip), "%s", ip);
    return d;
}

/* ---- the report text ---------------------------------------------------- */

static void write_policy(tern_buf *b, const entry *e)
{
    tern_buf_append_str(b, "{\"policy\":{");
    tern_json_write_key(b, "policy-type");
    tern_json_write_cstr(b, e->ptype);
    if (e->have_pol) {
        char line[TERN_STS_NAME_MAX + 16];
        tern_buf_append_str(b, ",");
        tern_json_write_key(b, "policy-string");
        tern_buf_append_str(b, "[\"version: STSv1\",");
        snprintf(line, sizeof(line), "mode: %s", tern_sts_mode_name(e->pol.mode));
        tern_json_write_cstr(b, line);
        for (size_t i = 0; i < e->pol.n_mx; i++) {
            snprintf(line, sizeof(line), "mx: %s", e->pol.mx[i]);
            tern_buf_append_str(b, ",");
            tern_json_write_cstr(b, line);
        }
        snprintf(line, sizeof(line), "max_age: %" PRIu32, e->pol.max_age);
        tern_buf_append_str(b, ",");
        tern_json_write_cstr(b, line);
        tern_buf_append_str(b, "],");
        tern_json_write_key(b, "mx-host");
        tern_buf_append_str(b, "[");
        for (size_t i = 0; i < e->pol.n_mx; i++) {
            if (i)
                tern_buf_append_str(b, ",");
            tern_json_write_cstr(b, e->pol.mx[i]);
        }
        tern_buf_append_str(b, "]");
    } else if (e->mx[0]) {
        tern_buf_append_str(b, ",");
        tern_json_write_key(b, "policy-string");
        tern_buf_append_str(b, "[");
        for (size_t i = 0; i < e->n_tlsa; i++) {
            if (i)
                tern_buf_append_str(b, ",");
            tern_json_write_cstr(b, e->tlsa[i]);
        }
        tern_buf_append_str(b, "],");
        tern_json_write_key(b, "mx-host");
        tern_buf_append_str(b, "[");
        tern_json_write_cstr(b, e->mx);
        tern_buf_append_str(b, "]");
    }
    tern_buf_append_str(b, ",");
    tern_json_write_key(b, "policy-domain");
    tern_json_write_cstr(b, e->domain);
    tern_buf_append_str(b, "},\"summary\":{");
    tern_json_write_key(b, "total-successful-session-count");
    tern_json_write_uint(b, e->ok);
    tern_buf_append_str(b, ",");
    tern_json_write_key(b, "total-failure-session-count");
    tern_json_write_uint(b, e->failed);
    tern_buf_append_str(b, "}");
    if (e->nd > 0) {
        tern_buf_append_str(b, ",");
        tern_json_write_key(b, "failure-details");
        tern_buf_append_str(b, "[");
        for (size_t i = 0; i < e->nd; i++) {
            const detail *d = &e->d[i];
            tern_buf_append_str(b, i ? ",{" : "{");
            tern_json_write_key(b, "result-type");
            tern_json_write_cstr(b, d->type);
            if (d->mx[0]) {
                tern_buf_append_str(b, ",");
                tern_json_write_key(b, "receiving-mx-hostname");
                tern_json_write_cstr(b, d->mx);
            }
            if (d->ip[0]) {
                tern_buf_append_str(b, ",");
                tern_json_write_key(b, "receiving-ip");
                tern_json_write_cstr(b, d->ip);
            }
            tern_buf_append_str(b, ",");
            tern_json_write_key(b, "failed-session-count");
            tern_json_write_uint(b, d->n);
            if (d->why[0]) {
                tern_buf_append_str(b, ",");
                tern_json_write_key(b, "additional-information");
                tern_json_write_cstr(b, d->why);
            }
            tern_buf_append_str(b, "}");
        }
        tern_buf_append_str(b, "]");
    }
    tern_buf_append_str(b, "}");
}

/* The file of one day: {"date": ..., "reports": [one RFC 8460 report per
 * policy domain, with "x-tern-rua"]}. */
static void build_day(const tern_tlsrpt *t, const char *day, tern_buf *b)
{
    tern_buf_append_str(b, "{");
    tern_json_write_key(b, "date");
    tern_json_write_cstr(b, day);
    tern_buf_append_str(b, ",\"reports\":[");
    bool first = true;
    for (const entry *e = t->list; e; e = e->next) {
        if (strcmp(e->day, day) != 0)
            continue;
        /* Once per domain: at its first entry in the list. */
        bool seen = false;
        for (const entry *p = t->list; p != e; p = p->next)
            if (strcmp(p->day, day) == 0 && strcasecmp(p->domain, e->domain) == 0)
                seen = true;
        if (seen)
            continue;
        char s[64];
        tern_buf_append_str(b, first ? "\n{" : ",\n{");
        first = false;
        tern_json_write_key(b, "organization-name");
        tern_json_write_cstr(b, t->org);
        tern_buf_append_str(b, ",\"date-range\":{");
        snprintf(s, sizeof(s), "%.10sT00:00:00Z", day);
        tern_json_write_key(b, "start-datetime");
        tern_json_write_cstr(b, s);
        snprintf(s, sizeof(s), "%.10sT23:59:59Z", day);
        tern_buf_append_str(b, ",");
        tern_json_write_key(b, "end-datetime");
        tern_json_write_cstr(b, s);
        tern_buf_append_str(b, "},");
        char contact[300];
        snprintf(contact, sizeof(contact), "mailto:postmaster@%s", t->org);
        tern_json_write_key(b, "contact-info");
        tern_json_write_cstr(b, contact);
        char id[600];
        snprintf(id, sizeof(id), "%s_%s@%s", day, e->domain, t->org);
        tern_buf_append_str(b, ",");
        tern_json_write_key(b, "report-id");
        tern_json_write_cstr(b, id);
        const char *rua = NULL;
        for (const entry *p = e; p; p = p->next)
            if (strcmp(p->day, day) == 0 && strcasecmp(p->domain, e->domain) == 0 && p->rua[0])
                rua = p->rua;
        tern_buf_append_str(b, ",");
        tern_json_write_key(b, "x-tern-rua");
        tern_json_write_cstr(b, rua);
        tern_buf_append_str(b, ",\"policies\":[");
        bool pfirst = true;
        for (const entry *p = e; p; p = p->next) {
            if (strcmp(p->day, day) != 0 || strcasecmp(p->domain, e->domain) != 0)
                continue;
            if (!pfirst)
                tern_buf_append_str(b, ",");
            pfirst = false;
            write_policy(b, p);
        }
        tern_buf_append_str(b, "]}");
    }
    tern_buf_append_str(b, "\n]}\n");
}

/* ---- writing ------------------------------------------------------------ */

/* On any thread: writes body to path unless a newer snapshot was written. */
static int write_file(tern_tlsrpt *t, const char *path, const tern_buf *body, uint64_t seq)
{
    pthread_mutex_lock(&t->mu);
    int rc = 0;
    if (seq < t->written)
        goto out;
    char tmp[700];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    if (mkdir(t->dir, 0750) != 0 && errno != EEXIST) {
        rc = -errno;
        goto out;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    size_t off = 0;
    while (off < body->len) {
        ssize_t w = write(fd, body->data + off, body->len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        off += (size_t)w;
    }
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    close(fd);
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    if (rc != 0)
        unlink(tmp);
    else
        t->written = seq;
out:
    pthread_mutex_unlock(&t->mu);
    return rc;
}

static void job_work(uv_work_t *w)
{
    job *j = w->data;
    int rc = write_file(j->t, j->path, &j->body, j->seq);
    if (rc != 0)
        TLOG_WARN(MOD, "event=write_failed path=\"%s\" error=\"%s\"", j->path, strerror(-rc));
}

static void job_done(uv_work_t *w, int status)
{
    (void)status;
    job *j = w->data;
    tern_buf_free(&j->body);
    free(j);
}

/* Every day held: a snapshot each, written on the pool (or here when
 * `sync`). Days before today are dropped from memory once written. */
static void flush(tern_tlsrpt *t, bool sync)
{
    char now[11];
    today(now);
    char days[8][11];
    size_t nd = 0;
    for (entry *e = t->list; e; e = e->next) {
        bool have = false;
        for (size_t i = 0; i < nd; i++)
            if (strcmp(days[i], e->day) == 0)
                have = true;
        if (!have && nd < 8)
            snprintf(days[nd++], sizeof(days[0]), "%s", e->day);
    }
    for (size_t i = 0; i < nd; i++) {
        job *j = calloc(1, sizeof(*j));
        if (j == NULL)
            return;
        j->t = t;
        snprintf(j->path, sizeof(j->path), "%s/%s.json", t->dir, days[i]);
        tern_buf_init(&j->body, FILE_MAX);
        build_day(t, days[i], &j->body);
        pthread_mutex_lock(&t->mu);
        j->seq = ++t->seq;
        pthread_mutex_unlock(&t->mu);
        j->w.data = j;
        if (sync || uv_queue_work(t->loop, &j->w, job_work, job_done) != 0) {
            job_work(&j->w);
            job_done(&j->w, 0);
        }
        if (strcmp(days[i], now) != 0) {
            /* A past day is complete: its file has it all. */
            for (entry **pp = &t->list; *pp;) {
                entry *e = *pp;
                if (strcmp(e->day, days[i]) == 0) {
                    *pp = e->next;
                    t->n--;
                    entry_free(e);
                } else {
                    pp = &e->next;
                }
            }
        }
    }
}

static void timer_cb(uv_timer_t *h)
{
    flush(h->data, false);
}

/* ---- reading today's file back ------------------------------------------ */

static void load_policy(tern_tlsrpt *t, const char *day, const tern_json *pol, const char *rua)
{
    const tern_json *p = tern_json_get(pol, "policy");
    const char *ptype = tern_json_str(tern_json_get(p, "policy-type"));
    const char *domain = tern_json_str(tern_json_get(p, "policy-domain"));
    if (ptype == NULL || domain == NULL || strlen(ptype) >= 20 || strlen(domain) >= 256)
        return;
    const char *pmx = "";
    if (strcmp(ptype, TERN_TLSRPT_TLSA) == 0) {
        const tern_json *mh = tern_json_get(p, "mx-host");
        pmx = mh && mh->type == TERN_JSON_ARRAY ? tern_json_str(mh->child) : NULL;
        if (pmx == NULL || pmx[0] == '\0' || strlen(pmx) >= 256)
            return;
    }
    entry *e = entry_get(t, day, domain, ptype, pmx);
    if (e == NULL)
        return;
    if (rua && strlen(rua) <= TERN_TLSRPT_RUA_MAX)
        snprintf(e->rua, sizeof(e->rua), "%s", rua);
    const tern_json *ps = tern_json_get(p, "policy-string");
    if (ps && ps->type == TERN_JSON_ARRAY && e->mx[0]) {
        e->n_tlsa = 0;
        for (const tern_json *l = ps->child; l && e->n_tlsa < TERN_TLSRPT_MAX_TLSA; l = l->next) {
            const char *s = tern_json_str(l);
            if (s && strlen(s) < sizeof(e->tlsa[0]))
                snprintf(e->tlsa[e->n_tlsa++], sizeof(e->tlsa[0]), "%s", s);
        }
    } else if (ps && ps->type == TERN_JSON_ARRAY) {
        static tern_sts_parser sp;
        tern_sts_parser_init(&sp);
        for (const tern_json *l = ps->child; l; l = l->next) {
            const char *s = tern_json_str(l);
            if (s) {
                tern_sts_parse(&sp, (const uint8_t *)s, strlen(s));
                tern_sts_parse(&sp, (const uint8_t *)"\n", 1);
            }
        }
        e->have_pol = tern_sts_finish(&sp, &e->pol, NULL) == TERN_STS_DONE;
    }
    const tern_json *sum = tern_json_get(pol, "summary");
    int64_t v = 0;
    if (tern_json_int64(tern_json_get(sum, "total-successful-session-count"), &v) == 0 && v > 0)
        e->ok += (uint64_t)v;
    if (tern_json_int64(tern_json_get(sum, "total-failure-session-count"), &v) == 0 && v > 0)
        e->failed += (uint64_t)v;
    const tern_json *fd = tern_json_get(pol, "failure-details");
    for (const tern_json *d = fd && fd->type == TERN_JSON_ARRAY ? fd->child : NULL; d;
         d = d->next) {
        const char *type = tern_json_str(tern_json_get(d, "result-type"));
        const char *mx = tern_json_str(tern_json_get(d, "receiving-mx-hostname"));
        const char *ip = tern_json_str(tern_json_get(d, "receiving-ip"));
        const char *why = tern_json_str(tern_json_get(d, "additional-information"));
        if (type == NULL)
            continue;
        detail *dt = detail_get(e, type, mx ? mx : "", ip ? ip : "");
        if (dt == NULL)
            continue;
        if (tern_json_int64(tern_json_get(d, "failed-session-count"), &v) == 0 && v > 0)
            dt->n += (uint64_t)v;
        if (why)
            snprintf(dt->why, sizeof(dt->why), "%s", why);
    }
}

static void load_today(tern_tlsrpt *t)
{
    char day[11], path[600];
    today(day);
    snprintf(path, sizeof(path), "%s/%s.json", t->dir, day);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return;
    tern_buf b;
    tern_buf_init(&b, FILE_MAX);
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        if (tern_buf_append(&b, chunk, n) != 0)
            break;
    fclose(f);
    tern_arena a;
    tern_arena_init(&a, 65536);
    tern_json *root = NULL;
    tern_json_limits lim = {.max_input = FILE_MAX, .max_nodes = 4 * 1024 * 1024};
    if (b.len > 0 && tern_json_parse((const char *)b.data, b.len, &lim, &a, &root, NULL) == 0) {
        const tern_json *reps = tern_json_get(root, "reports");
        for (const tern_json *r = reps && reps->type == TERN_JSON_ARRAY ? reps->child : NULL; r;
             r = r->next) {
            const char *rua = tern_json_str(tern_json_get(r, "x-tern-rua"));
            const tern_json *pols = tern_json_get(r, "policies");
            for (const tern_json *p = pols && pols->type == TERN_JSON_ARRAY ? pols->child : NULL;
                 p; p = p->next)
                load_policy(t, day, p, rua);
        }
        TLOG_INFO(MOD, "event=loaded path=\"%s\" domains=%zu", path, t->n);
    } else {
        TLOG_WARN(MOD, "event=unreadable path=\"%s\" (counting starts over)", path);
    }
    tern_arena_free(&a);
    tern_buf_free(&b);
}

/* ---- the interface ------------------------------------------------------ */

tern_tlsrpt *tern_tlsrpt_new(uv_loop_t *loop, const char *state_dir, const char *org_name)
{
    tern_tlsrpt *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    size_t dl = strlen(state_dir) + sizeof("/tlsrpt");
    t->dir = malloc(dl);
    t->org = strdup(org_name && org_name[0] ? org_name : "localhost");
    if (t->dir == NULL || t->org == NULL) {
        free(t->dir);
        free(t->org);
        free(t);
        return NULL;
    }
    snprintf(t->dir, dl, "%s/tlsrpt", state_dir);
    t->loop = loop;
    pthread_mutex_init(&t->mu, NULL);
    uv_timer_init(loop, &t->timer);
    t->timer.data = t;
    load_today(t);
    return t;
}

static void record(tern_tlsrpt *t, entry *e, const char *rua, bool ok, const char *result_type,
                   const char *mx_host, const char *ip, const char *why);

void tern_tlsrpt_session(tern_tlsrpt *t, const char *domain, const char *policy_type,
                         const tern_sts_policy *pol, const char *rua, bool ok,
                         const char *result_type, const char *mx_host, const char *ip,
                         const char *why)
{
    if (t == NULL || t->closed)
        return;
    char day[11];
    today(day);
    entry *e = entry_get(t, day, domain, policy_type, "");
    if (e == NULL)
        return;
    if (pol) {
        e->pol = *pol;
        e->have_pol = true;
    }
    record(t, e, rua, ok, result_type, mx_host, ip, why);
}

void tern_tlsrpt_session_tlsa(tern_tlsrpt *t, const char *domain, const char *mx_host,
                              const tern_tlsa *recs, size_t n, const char *rua, bool ok,
                              const char *result_type, const char *ip, const char *why)
{
    if (t == NULL || t->closed || mx_host == NULL || mx_host[0] == '\0')
        return;
    char day[11];
    today(day);
    entry *e = entry_get(t, day, domain, TERN_TLSRPT_TLSA, mx_host);
    if (e == NULL)
        return;
    if (n > 0) { /* the records of the latest lookup */
        e->n_tlsa = 0;
        for (size_t i = 0; i < n && e->n_tlsa < TERN_TLSRPT_MAX_TLSA; i++) {
            char *line = e->tlsa[e->n_tlsa++];
            int k = snprintf(line, sizeof(e->tlsa[0]), "%u %u %u ", recs[i].usage,
                             recs[i].selector, recs[i].mtype);
            if (recs[i].len > 64) {
                /* A whole certificate (matching type 0) would not fit a line. */
                snprintf(line + k, sizeof(e->tlsa[0]) - (size_t)k, "(%zu bytes)", recs[i].len);
                continue;
            }
            for (size_t j = 0; j < recs[i].len; j++)
                k += snprintf(line + k, sizeof(e->tlsa[0]) - (size_t)k, "%02X", recs[i].data[j]);
        }
    }
    record(t, e, rua, ok, result_type, mx_host, ip, why);
}

/* Counts one session of e's policy. */
static void record(tern_tlsrpt *t, entry *e, const char *rua, bool ok, const char *result_type,
                   const char *mx_host, const char *ip, const char *why)
{
    if (rua)
        snprintf(e->rua, sizeof(e->rua), "%s", rua);
    if (ok) {
        e->ok++;
    } else {
        e->failed++;
        detail *d = detail_get(e, result_type ? result_type : "validation-failure",
                               mx_host ? mx_host : "", ip ? ip : "");
        if (d) {
            d->n++;
            if (why)
                snprintf(d->why, sizeof(d->why), "%s", why);
        }
    }
    if (!uv_is_active((uv_handle_t *)&t->timer))
        uv_timer_start(&t->timer, timer_cb, TERN_TLSRPT_FLUSH_MS, 0);
}

void tern_tlsrpt_close(tern_tlsrpt *t)
{
    if (t == NULL || t->closed)
        return;
    t->closed = true;
    if (uv_is_active((uv_handle_t *)&t->timer))
        flush(t, true);
    uv_close((uv_handle_t *)&t->timer, NULL);
}

void tern_tlsrpt_free(tern_tlsrpt *t)
{
    if (t == NULL)
        return;
    while (t->list) {
        entry *e = t->list;
        t->list = e->next;
        entry_free(e);
    }
    pthread_mutex_destroy(&t->mu);
    free(t->dir);
    free(t->org);
    free(t);
}
