/* Building delivery notices (see dsn_build.h). Every line is CRLF; header
 * values the notice takes from the envelope are our own records; the error
 * text comes from mailets and is cleaned of control characters before it
 * goes into a header-like field. Input: the original message's bytes are
 * untrusted and are only copied whole (or up to the end of their header
 * section). */
#include "mailets/builtin/dsn_build.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <errno.h>
#include <time.h>

#include "lib/util.h"
#include "mailets/builtin/builtin.h"
#include "mailets/engine.h"

typedef struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf;

static void sb_put(sbuf *b, const void *data, size_t len)
{
    if (b->oom)
        return;
    if (b->n + len + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 4096;
        while (nc < b->n + len + 1)
            nc *= 2;
        char *np = realloc(b->p, nc);
        if (np == NULL) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, data, len);
    b->n += len;
    b->p[b->n] = '\0';
}

static void sb_str(sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void sb_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    sb_put(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* One line of text for a field or the human part: no CR, LF or other
 * control bytes, bounded. */
static void clean_line(const char *in, char *out, size_t size)
{
    size_t o = 0;
    for (const char *p = in ? in : ""; *p && o + 1 < size; p++)
        out[o++] = (unsigned char)*p < 0x20 || *p == 0x7f ? ' ' : *p;
    out[o] = '\0';
}

void tern_dsn_xtext_decode(const char *in, char *out, size_t size)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const char *p = in; *p && o + 1 < size; p++) {
        const char *h1, *h2;
        if (*p == '+' && p[1] && p[2] && (h1 = strchr(hex, p[1])) != NULL &&
            (h2 = strchr(hex, p[2])) != NULL) {
            unsigned char c = (unsigned char)(((h1 - hex) << 4) | (h2 - hex));
            out[o++] = c < 0x20 || c == 0x7f ? ' ' : (char)c;
            p += 2;
        } else
            out[o++] = (unsigned char)*p < 0x20 ? ' ' : *p;
    }
    out[o] = '\0';
}

void tern_dsn_default_postmaster(const tern_config *cfg, char *out, size_t size)
{
    if (cfg && cfg->n_domains > 0)
        snprintf(out, size, "postmaster@%s", cfg->domains[0]);
    else
        snprintf(out, size, "postmaster");
}

/* The end of the header section (offset of the body), including the empty
 * line; the whole message when there is none. */
static size_t header_end(const uint8_t *msg, size_t len)
{
    size_t i = 0;
    while (i < len) {
        const uint8_t *nl = memchr(msg + i, '\n', len - i);
        size_t eol = nl ? (size_t)(nl - msg) + 1 : len;
        size_t content = eol - i - (nl ? 1 : 0);
        if (content > 0 && msg[i + content - 1] == '\r')
            content--;
        if (content == 0)
            return eol;
        i = eol;
    }
    return len;
}

static bool has_8bit(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] & 0x80)
            return true;
    return false;
}

/* Copies message bytes so that every line ends in CRLF (the spool stores
 * CRLF already; a bare LF from a mailet's rewrite is repaired). */
static void put_crlf(sbuf *b, const uint8_t *p, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '\n')
            continue;
        if (i > 0 && p[i - 1] == '\r')
            continue;
        sb_put(b, p + start, i - start);
        sb_put(b, "\r\n", 2);
        start = i + 1;
    }
    sb_put(b, p + start, n - start);
    if (n > 0 && p[n - 1] != '\n')
        sb_put(b, "\r\n", 2);
}

static void make_boundary(const tern_dsn_info *in, char *out, size_t size)
{
    for (;;) {
        char u[TERN_UUID_LEN];
        tern_uuid(u);
        snprintf(out, size, "=_tern-%s", u);
        /* A boundary must not occur in what it encloses. */
        if (in->orig == NULL || memmem(in->orig, in->orig_len, out, strlen(out)) == NULL)
            return;
    }
}

uint8_t *tern_dsn_build(const tern_dsn_info *in, size_t *len_r)
{
    sbuf b = {0};
    char boundary[80], date[64], u[TERN_UUID_LEN], line[1024];
    make_boundary(in, boundary, sizeof(boundary));
    tern_rfc5322_date(in->now, date, sizeof(date));
    tern_uuid(u);
    const char *host = in->reporting_mta && in->reporting_mta[0] ? in->reporting_mta : "localhost";
    const char *enh = in->enhanced && in->enhanced[0] ? in->enhanced : "5.0.0";
    char text[512];
    clean_line(in->text, text, sizeof(text));

    sb_printf(&b, "From: %s\r\n", in->from);
    sb_printf(&b, "To: %s\r\n", in->to);
    sb_printf(&b, "Subject: %s\r\n", in->subject);
    sb_printf(&b, "Date: %s\r\n", date);
    sb_printf(&b, "Message-ID: <%s@%s>\r\n", u, host);
    sb_str(&b, "Auto-Submitted: auto-replied\r\n");
    if (in->marker)
        sb_printf(&b, "X-Tern-Notice: %s\r\n", in->marker);
    sb_str(&b, "MIME-Version: 1.0\r\n");
    if (in->style == TERN_DSN_REPORT)
        sb_printf(&b, "Content-Type: multipart/report; report-type=delivery-status;\r\n"
                      "\tboundary=\"%s\"\r\n", boundary);
    else
        sb_printf(&b, "Content-Type: multipart/mixed; boundary=\"%s\"\r\n", boundary);
    sb_str(&b, "\r\nThis is a MIME-encapsulated message.\r\n\r\n");

    /* The human-readable part. */
    sb_printf(&b, "--%s\r\n", boundary);
    sb_str(&b, "Content-Type: text/plain; charset=utf-8\r\n");
    sb_str(&b, "Content-Transfer-Encoding: 8bit\r\n\r\n");
    sb_printf(&b, "This is the mail system at host %s.\r\n\r\n", host);
    if (in->intro)
        sb_printf(&b, "%s\r\n\r\n", in->intro);
    for (size_t i = 0; i < in->n_rcpts; i++) {
        clean_line(in->rcpts[i].addr, line, sizeof(line));
        if (in->rcpts[i].diagnostic) {
            char d[512], h[256];
            clean_line(in->rcpts[i].diagnostic, d, sizeof(d));
            if (in->rcpts[i].remote_mta) {
                clean_line(in->rcpts[i].remote_mta, h, sizeof(h));
                sb_printf(&b, "<%s>: host %s said: %s\r\n", line, h, d);
            } else
                sb_printf(&b, "<%s>: %s\r\n", line, d);
        } else
            sb_printf(&b, "<%s>: %s\r\n", line, text[0] ? text : "delivery failed");
    }
    sb_printf(&b, "\r\nQueue ID: %s\r\n", in->qid ? in->qid : "-");
    if (in->code > 0)
        sb_printf(&b, "Reason: %d %s %s\r\n", in->code, enh, text);
    else if (text[0])
        sb_printf(&b, "Reason: %s %s\r\n", enh, text);
    sb_str(&b, "\r\n");

    if (in->style == TERN_DSN_REPORT) {
        sb_printf(&b, "--%s\r\n", boundary);
        sb_str(&b, "Content-Type: message/delivery-status\r\n\r\n");
        sb_printf(&b, "Reporting-MTA: dns; %s\r\n", host);
        if (in->envid && in->envid[0]) {
            clean_line(in->envid, line, sizeof(line));
            sb_printf(&b, "Original-Envelope-Id: %s\r\n", line);
        }
        if (in->qid && in->qid[0])
            sb_printf(&b, "X-Tern-Queue-ID: %s\r\n", in->qid);
        if (in->arrival > 0) {
            tern_rfc5322_date(in->arrival, date, sizeof(date));
            sb_printf(&b, "Arrival-Date: %s\r\n", date);
        }
        for (size_t i = 0; i < in->n_rcpts; i++) {
            sb_str(&b, "\r\n");
            clean_line(in->rcpts[i].addr, line, sizeof(line));
            sb_printf(&b, "Final-Recipient: rfc822; %s\r\n", line);
            if (in->rcpts[i].orcpt && in->rcpts[i].orcpt[0]) {
                char dec[600];
                tern_dsn_xtext_decode(in->rcpts[i].orcpt, dec, sizeof(dec));
                /* "type;address": written back with the usual space. */
                char *semi = strchr(dec, ';');
                if (semi) {
                    *semi = '\0';
                    const char *addr = semi + 1;
                    while (*addr == ' ')
                        addr++;
                    sb_printf(&b, "Original-Recipient: %s; %s\r\n", dec, addr);
                }
            }
            sb_printf(&b, "Action: %s\r\n", in->action ? in->action : "failed");
            if (in->rcpts[i].diagnostic) {
                char d[512], st[32];
                clean_line(in->rcpts[i].diagnostic, d, sizeof(d));
                clean_line(in->rcpts[i].status ? in->rcpts[i].status : enh, st, sizeof(st));
                sb_printf(&b, "Status: %s\r\n", st);
                if (in->rcpts[i].remote_mta) {
                    char h[256];
                    clean_line(in->rcpts[i].remote_mta, h, sizeof(h));
                    sb_printf(&b, "Remote-MTA: dns; %s\r\nDiagnostic-Code: smtp; %s\r\n", h, d);
                } else
                    sb_printf(&b, "Diagnostic-Code: x-tern; %s\r\n", d);
                continue;
            }
            sb_printf(&b, "Status: %s\r\n", enh);
            if (in->code > 0)
                sb_printf(&b, "Diagnostic-Code: smtp; %d %s\r\n", in->code, text);
            else if (text[0])
                sb_printf(&b, "Diagnostic-Code: x-tern; %s\r\n", text);
        }
        sb_str(&b, "\r\n");
    }

    if (in->attach != TERN_DSN_ATTACH_NONE && in->orig != NULL) {
        sb_printf(&b, "--%s\r\n", boundary);
        if (in->attach == TERN_DSN_ATTACH_HEADERS) {
            size_t he = header_end(in->orig, in->orig_len);
            sb_printf(&b, "Content-Type: text/rfc822-headers\r\n");
            if (has_8bit(in->orig, he))
                sb_str(&b, "Content-Transfer-Encoding: 8bit\r\n");
            sb_str(&b, "\r\n");
            put_crlf(&b, in->orig, he);
        } else {
            sb_str(&b, "Content-Type: message/rfc822\r\n");
            if (has_8bit(in->orig, in->orig_len))
                sb_str(&b, "Content-Transfer-Encoding: 8bit\r\n");
            sb_str(&b, "\r\n");
            put_crlf(&b, in->orig, in->orig_len);
        }
    }
    sb_printf(&b, "\r\n--%s--\r\n", boundary);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    *len_r = b.n;
    return (uint8_t *)b.p;
}

/* A parameter value of a Content-Type field, case-insensitively, quotes
 * removed; false when absent. */
static bool ct_param(const char *ct, const char *name, char *out, size_t size)
{
    size_t nl = strlen(name);
    for (const char *p = strchr(ct, ';'); p; p = strchr(p + 1, ';')) {
        const char *k = p + 1;
        while (*k == ' ' || *k == '\t')
            k++;
        if (strncasecmp(k, name, nl) != 0)
            continue;
        const char *v = k + nl;
        while (*v == ' ' || *v == '\t')
            v++;
        if (*v != '=')
            continue;
        v++;
        while (*v == ' ' || *v == '\t')
            v++;
        bool q = *v == '"';
        if (q)
            v++;
        size_t o = 0;
        while (*v && o + 1 < size && (q ? *v != '"' : *v != ';' && *v != ' ' && *v != '\t'))
            out[o++] = *v++;
        out[o] = '\0';
        return true;
    }
    return false;
}

bool tern_dsn_is_report(const tern_mail *m)
{
    const char *ct = tern_mail_header_get(m, "Content-Type", 0);
    if (ct) {
        while (*ct == ' ')
            ct++;
        char rt[64];
        if (strncasecmp(ct, "multipart/report", 16) == 0 &&
            ct_param(ct, "report-type", rt, sizeof(rt)) &&
            strcasecmp(rt, "delivery-status") == 0)
            return true;
    }
    /* Our own plain bounces and postmaster notices. */
    return tern_mail_header_get(m, "X-Tern-Notice", 0) != NULL;
}

size_t tern_dsn_failed_rcpts(const tern_mail *m, tern_dsn_rcpt *rcpts)
{
    const tern_envelope *env = tern_mail_envelope(m);
    size_t n = 0;
    for (size_t i = 0; i < tern_mail_rcpt_count(m); i++) {
        const tern_rcpt_entry *r = &m->rcpts[i];
        const tern_spool_rcpt *o =
            env && r->orig >= 0 && (size_t)r->orig < env->n_rcpts ? &env->rcpts[r->orig] : NULL;
        /* NOTIFY=NEVER, or a list without FAILURE: no failure report. */
        if (o && o->notify != 0 && !(o->notify & TERN_NOTIFY_FAILURE))
            continue;
        rcpts[n].addr = r->addr;
        rcpts[n].orcpt = o ? o->orcpt : NULL;
        n++;
    }
    return n;
}

void tern_dsn_from(const tern_config *cfg, char *out, size_t size)
{
    const char *host = cfg && cfg->server.hostname && cfg->server.hostname[0]
                           ? cfg->server.hostname
                           : "localhost";
    snprintf(out, size, "Mail Delivery System <MAILER-DAEMON@%s>", host);
}

static void bounce_spawned(tern_mail *m, void *arg, int status)
{
    (void)arg;
    if (status != 0) {
        tern_mailet_result r = {.text = "could not write the bounce to the spool"};
        tern_mail_resume(m, TERN_MAILET_ERROR, &r);
        return;
    }
    tern_mail_resume(m, TERN_MAILET_FINISH, NULL);
}

tern_mailet_verdict tern_dsn_bounce(const tern_bounce_conf *c, tern_mail *m,
                                    tern_mailet_result *res)
{
    const char *sender = tern_mail_sender(m);
    if (sender[0] == '\0') {
        tern_mail_log(m, TERN_MAILET_LOG_INFO,
                      "no bounce: the sender is the null sender (a bounce is never bounced)");
        return TERN_MAILET_FINISH;
    }
    if (tern_dsn_is_report(m)) {
        tern_mail_log(m, TERN_MAILET_LOG_INFO,
                      "no bounce: the message is itself a delivery report (loop guard)");
        return TERN_MAILET_FINISH;
    }
    size_t n = tern_mail_rcpt_count(m);
    tern_dsn_rcpt *rcpts = calloc(n ? n : 1, sizeof(*rcpts));
    if (rcpts == NULL) {
        res->text = "out of memory";
        return TERN_MAILET_ERROR;
    }
    size_t k = tern_dsn_failed_rcpts(m, rcpts);
    if (k == 0) {
        free(rcpts);
        tern_mail_log(m, TERN_MAILET_LOG_INFO,
                      "no bounce: NOTIFY excludes FAILURE for all %zu recipient(s)", n);
        return TERN_MAILET_FINISH;
    }
    const tern_config *cfg = tern_mail_config(m);
    const tern_envelope *env = tern_mail_envelope(m);
    int64_t code = 0;
    tern_mail_attr_get_int(m, "tern.error.code", &code);
    char from[300];
    tern_dsn_from(cfg, from, sizeof(from));
    char to[600];
    snprintf(to, sizeof(to), "<%s>", sender);
    size_t olen = 0;
    uint8_t *orig = tern_mail_serialize(m, &olen);
    tern_dsn_attach attach = c->attach;
    if (env && env->ret == TERN_RET_HDRS && attach == TERN_DSN_ATTACH_FULL)
        attach = TERN_DSN_ATTACH_HEADERS;
    tern_dsn_info in = {
        .style = c->style,
        .reporting_mta = cfg->server.hostname,
        .from = from,
        .to = to,
        .subject = "Undelivered Mail Returned to Sender",
        .intro = "I'm sorry to have to inform you that your message could not be delivered "
                 "to one or more recipients.",
        .qid = tern_mail_qid(m),
        .envid = env ? env->envid : NULL,
        .arrival = env ? env->received_at : 0,
        .now = (int64_t)time(NULL),
        .code = (int)code,
        .enhanced = tern_mail_attr_get_str(m, "tern.error.enhanced"),
        .text = tern_mail_attr_get_str(m, "tern.error.text"),
        .rcpts = rcpts,
        .n_rcpts = k,
        .attach = attach,
        .orig = orig,
        .orig_len = olen,
        .marker = c->style == TERN_DSN_PLAIN ? "bounce" : NULL,
    };
    size_t len = 0;
    uint8_t *msg = orig ? tern_dsn_build(&in, &len) : NULL;
    free(orig);
    free(rcpts);
    if (msg == NULL) {
        res->text = "out of memory building the bounce";
        return TERN_MAILET_ERROR;
    }
    const char *to_rcpt[1] = {sender};
    if (tern_pipeline_processor(m->pipeline, c->processor) < 0) {
        tern_mail_log(m, TERN_MAILET_LOG_ERROR, "processor %s does not exist", c->processor);
        free(msg);
        res->text = "the processor for new mail does not exist";
        return TERN_MAILET_ERROR;
    }
    int rc = tern_mail_spawn(m, "", to_rcpt, 1, msg, len, c->processor, bounce_spawned, NULL);
    free(msg);
    if (rc != 0) {
        tern_mail_log(m, TERN_MAILET_LOG_ERROR, "bounce to %s not written: %s", sender,
                      strerror(-rc));
        res->text = "could not spawn the bounce";
        return TERN_MAILET_ERROR;
    }
    tern_mail_log(m, TERN_MAILET_LOG_INFO, "bounce to %s for %zu recipient(s) status=%s", sender,
                  k, in.enhanced ? in.enhanced : "5.0.0");
    return TERN_MAILET_PENDING;
}

int tern_dsn_bounce_init(const tern_mailet_params *p, tern_dsn_style style, void **state_r,
                         char *err, size_t size)
{
    static const char *const known[] = {"processor", "attachment", NULL};
    if (tern_param_check(p, known, err, size) != 0)
        return -1;
    tern_bounce_conf *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    c->style = style;
    const char *proc = tern_param_str(p, "processor");
    if (tern_param_get(p, "processor") && (proc == NULL || proc[0] == '\0')) {
        free(c);
        return tern_builtin_fail(err, size, "processor: a processor name is required");
    }
    c->processor = proc ? proc : "transport";
    const char *a = tern_param_str(p, "attachment");
    if (a == NULL || strcmp(a, "message") == 0)
        c->attach = TERN_DSN_ATTACH_FULL;
    else if (strcmp(a, "headers") == 0)
        c->attach = TERN_DSN_ATTACH_HEADERS;
    else if (strcmp(a, "none") == 0)
        c->attach = TERN_DSN_ATTACH_NONE;
    else {
        free(c);
        return tern_builtin_fail(err, size, "attachment: expected message, headers or none");
    }
    *state_r = c;
    return 0;
}

