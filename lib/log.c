/* Structured logging, see log.h. The level spec is swapped in as one
 * immutable object so a reload on the main thread never races a worker
 * reading it; old specs are kept (they are tiny and reloads are rare) so a
 * reader holding a pointer never sees freed memory. */
#include "lib/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_MODULE_RULES 16

typedef struct log_spec {
    int level;
    size_t n;
    struct {
        char module[24];
        int level;
    } rules[MAX_MODULE_RULES];
    struct log_spec *prev; /* retired specs, never freed while running */
} log_spec;

static log_spec default_spec = {.level = TERN_LOG_INFO};
static _Atomic(log_spec *) current = &default_spec;
static atomic_int log_fd = 2;

static const char *level_names[] = {"error", "warn", "info", "debug"};

static int log__level_from(const char *s, size_t n)
{
    for (int i = 0; i < 4; i++)
        if (strlen(level_names[i]) == n && strncasecmp(s, level_names[i], n) == 0)
            return i;
    if (n == 7 && strncasecmp(s, "warning", 7) == 0)
        return TERN_LOG_WARN;
    return -1;
}

static int log__parse(const char *spec, log_spec *out, const char **error_r)
{
    memset(out, 0, sizeof(*out));
    out->level = TERN_LOG_INFO;
    const char *p = spec;
    bool have_default = false;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        if (eq == NULL) {
            int l = log__level_from(p, len);
            if (l < 0 || have_default) {
                if (error_r)
                    *error_r = l < 0 ? "unknown log level (error, warn, info, debug)"
                                     : "more than one default level";
                return -1;
            }
            out->level = l;
            have_default = true;
        } else {
            size_t mlen = (size_t)(eq - p);
            int l = log__level_from(eq + 1, len - mlen - 1);
            if (mlen == 0 || mlen >= sizeof(out->rules[0].module) || l < 0 ||
                out->n >= MAX_MODULE_RULES) {
                if (error_r)
                    *error_r = "bad module rule, expected module=level";
                return -1;
            }
            memcpy(out->rules[out->n].module, p, mlen);
            out->rules[out->n].level = l;
            out->n++;
        }
        p += len;
        if (*p == ',')
            p++;
    }
    return 0;
}

int tern_log_check_spec(const char *spec, const char **error_r)
{
    log_spec tmp;
    return log__parse(spec, &tmp, error_r);
}

int tern_log_configure(const char *spec, const char **error_r)
{
    log_spec *s = malloc(sizeof(*s));
    if (s == NULL)
        return -1;
    if (log__parse(spec, s, error_r) != 0) {
        free(s);
        return -1;
    }
    s->prev = atomic_load(&current);
    atomic_store(&current, s);
    return 0;
}

void tern_log_set_fd(int fd)
{
    atomic_store(&log_fd, fd);
}

bool tern_log_enabled(tern_log_level level, const char *module)
{
    const log_spec *s = atomic_load_explicit(&current, memory_order_acquire);
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->rules[i].module, module) == 0)
            return (int)level <= s->rules[i].level;
    return (int)level <= s->level;
}

void tern_log(tern_log_level level, const char *module, const char *fmt, ...)
{
    char line[2048];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s module=%s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (long)(tv.tv_usec / 1000), level_names[level], module);
    if (n < 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    ssize_t w = write(atomic_load(&log_fd), line, len);
    (void)w;
}

const char *tern_log_q(char *buf, size_t size, const char *s)
{
    if (s == NULL)
        s = "";
    bool need = *s == '\0';
    for (const char *p = s; *p && !need; p++)
        if (*p == ' ' || *p == '"' || *p == '=' || *p == '\\' || (unsigned char)*p < 0x20 ||
            *p == 0x7f)
            need = true;
    if (!need) {
        size_t n = strlen(s);
        if (n < size) {
            memcpy(buf, s, n + 1);
            return buf;
        }
    }
    size_t o = 0;
    buf[o++] = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char tmp[5];
        size_t tl;
        if (*p == '"' || *p == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)*p;
            tl = 2;
        } else if (*p < 0x20 || *p == 0x7f) {
            snprintf(tmp, sizeof(tmp), "\\x%02x", *p);
            tl = 4;
        } else {
            tmp[0] = (char)*p;
            tl = 1;
        }
        if (o + tl + 5 > size) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(buf + o, tmp, tl);
        o += tl;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}
