/* Mailet LogMessage: one log line per mail with its envelope and chosen
 * header fields (and optionally the start of the body), to see what goes
 * through a processor. Input: its YAML parameters (checked at init) and the
 * mail, whose header and body bytes are the sender's: every value goes
 * through tern_log_q, so a crafted value can neither break the line nor
 * forge keys.
 *
 * The log writes lines of at most 2 KiB, so values are cut: header values
 * at LM_VALUE_MAX, recipients after LM_RCPTS_MAX, the body at `body` bytes
 * (at most LM_BODY_MAX). Header values are logged RFC 2047 decoded (UTF-8);
 * body bytes raw (controls escaped, CRLF shows as \x0d\x0a). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/arena.h"
#include "lib/buf.h"
#include "lib/log.h"
#include "lib/rfc2047.h"
#include "mailets/builtin/builtin.h"

#define LM_MAX_HEADERS 16
#define LM_BODY_MAX 512
#define LM_VALUE_MAX 200
#define LM_RCPTS_MAX 10

typedef struct {
    const char *headers[LM_MAX_HEADERS];
    size_t n_headers;
    size_t body;
    tern_log_level level;
    const char *tag;
} log_message;

static bool field_name_ok(const char *s)
{
    if (s == NULL || s[0] == '\0' || strlen(s) > 64)
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p <= ' ' || *p >= 127 || *p == ':' || *p == '=' || *p == '"' || *p == '\\')
            return false;
    return true;
}

static int lm_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    static const char *const known[] = {"headers", "body", "level", "tag", NULL};
    static const char *const defaults[] = {"From", "To", "Subject", "Message-ID"};
    if (tern_param_check(p, known, err, size) != 0)
        return -1;
    log_message *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    const tern_mailet_param *hp = tern_param_get(p, "headers");
    if (hp == NULL) {
        for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++)
            l->headers[l->n_headers++] = defaults[i];
    } else {
        const char *const *names = hp->value ? &hp->value : hp->list;
        size_t n = hp->value ? 1 : hp->n_list;
        if (hp->value && hp->value[0] == '\0')
            n = 0; /* headers: "" logs the envelope only */
        if (n > LM_MAX_HEADERS) {
            free(l);
            return tern_builtin_fail(err, size, "headers: at most %d names", LM_MAX_HEADERS);
        }
        for (size_t i = 0; i < n; i++) {
            if (!field_name_ok(names[i])) {
                free(l);
                return tern_builtin_fail(err, size, "headers: \"%s\" is not a header field name",
                                         names[i] ? names[i] : "");
            }
            l->headers[l->n_headers++] = names[i];
        }
    }
    const char *b = tern_param_str(p, "body");
    if (tern_param_get(p, "body") && b == NULL) {
        free(l);
        return tern_builtin_fail(err, size, "body: a number of bytes, not a list");
    }
    if (b) {
        char *end = NULL;
        unsigned long v = strtoul(b, &end, 10);
        if (b[0] < '0' || b[0] > '9' || *end != '\0' || v > LM_BODY_MAX) {
            free(l);
            return tern_builtin_fail(err, size, "body: a number of bytes from 0 to %d", LM_BODY_MAX);
        }
        l->body = v;
    }
    l->level = TERN_LOG_INFO;
    const char *lv = tern_param_str(p, "level");
    if (lv) {
        if (strcmp(lv, "info") == 0)
            l->level = TERN_LOG_INFO;
        else if (strcmp(lv, "debug") == 0)
            l->level = TERN_LOG_DEBUG;
        else if (strcmp(lv, "warn") == 0)
            l->level = TERN_LOG_WARN;
        else {
            free(l);
            return tern_builtin_fail(err, size, "level: \"info\", \"debug\" or \"warn\"");
        }
    }
    l->tag = tern_param_str(p, "tag");
    if (l->tag && (strlen(l->tag) > 64 || l->tag[0] == '\0')) {
        free(l);
        return tern_builtin_fail(err, size, "tag: 1 to 64 characters");
    }
    *state_r = l;
    return 0;
}

static void lm_deinit(void *state)
{
    free(state);
}

/* Appends " key=<quoted value>", the value cut at max bytes. */
static void put_kv(tern_buf *line, const char *key, const char *val, size_t vlen, size_t max)
{
    char cut[LM_BODY_MAX + 4];
    if (vlen > max)
        vlen = max;
    if (vlen > LM_BODY_MAX)
        vlen = LM_BODY_MAX;
    memcpy(cut, val, vlen);
    cut[vlen] = '\0';
    char q[LM_BODY_MAX * 4 + 8];
    tern_buf_printf(line, " %s=%s", key, tern_log_q(q, sizeof(q), cut));
}

static tern_mailet_verdict lm_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    log_message *l = state;
    if (!tern_log_enabled(l->level, "mailet"))
        return TERN_MAILET_CONTINUE;
    tern_buf line;
    tern_buf_init(&line, 8192);
    const char *s;
    tern_buf_printf(&line, "qid=%s", tern_mail_qid(m));
    s = tern_mail_session_id(m);
    put_kv(&line, "session", s, strlen(s), 64);
    tern_buf_append_str(&line, " mailet=LogMessage");
    if (l->tag)
        put_kv(&line, "tag", l->tag, strlen(l->tag), 64);
    s = tern_mail_sender(m);
    put_kv(&line, "from", s, strlen(s), LM_VALUE_MAX);
    size_t n = tern_mail_rcpt_count(m);
    tern_buf rc;
    tern_buf_init(&rc, 0);
    for (size_t i = 0; i < n && i < LM_RCPTS_MAX; i++) {
        if (i)
            tern_buf_append(&rc, ",", 1);
        tern_buf_append_str(&rc, tern_mail_rcpt(m, i));
    }
    if (n > LM_RCPTS_MAX)
        tern_buf_printf(&rc, ",+%zu more", n - LM_RCPTS_MAX);
    put_kv(&line, "rcpts", rc.data ? (const char *)rc.data : "", rc.len, LM_BODY_MAX);
    tern_buf_free(&rc);
    tern_buf_printf(&line, " nrcpt=%zu", n);
    s = tern_mail_remote_addr(m);
    put_kv(&line, "remote", s, strlen(s), 64);
    tern_buf_printf(&line, " size=%llu", (unsigned long long)tern_mail_size(m));
    tern_arena a;
    tern_arena_init(&a, 2048);
    for (size_t i = 0; i < l->n_headers; i++) {
        const char *v = tern_mail_header_get(m, l->headers[i], 0);
        if (v == NULL)
            continue;
        size_t dl = 0;
        const char *d = tern_rfc2047_decode_arena(&a, v, strlen(v), &dl);
        char key[80];
        snprintf(key, sizeof(key), "h.%s", l->headers[i]);
        for (char *k = key; *k; k++)
            if (*k >= 'A' && *k <= 'Z')
                *k = (char)(*k - 'A' + 'a');
        put_kv(&line, key, d ? d : v, d ? dl : strlen(v), LM_VALUE_MAX);
    }
    tern_arena_free(&a);
    if (l->body > 0) {
        char buf[LM_BODY_MAX];
        size_t got = tern_mail_body_read(m, 0, buf, l->body);
        /* A NUL would end the quoted copy early: show it as a space. */
        for (size_t i = 0; i < got; i++)
            if (buf[i] == '\0')
                buf[i] = ' ';
        put_kv(&line, "body", buf, got, l->body);
    }
    if (line.data) {
        tern_log(l->level, "mailet", "%.*s", (int)line.len, (const char *)line.data);
    }
    tern_buf_free(&line);
    return TERN_MAILET_CONTINUE;
}

static const tern_mailet_module tern_mb_log_message = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "LogMessage",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = lm_init,
    .deinit = lm_deinit,
    .service = lm_service,
};
TERN_BUILTIN(tern_mb_log_message)
