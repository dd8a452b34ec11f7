/* Structured log: one line per event, `key=value` pairs, written to stderr
 * with a single write(2) so lines from several threads never interleave.
 * Callers pass the key=value tail; values that may hold spaces or quotes
 * from the network must go through tern_log_q(). */
#ifndef TERN_LOG_H
#define TERN_LOG_H

#include <stdbool.h>
#include <stddef.h>

typedef enum {
    TERN_LOG_ERROR = 0,
    TERN_LOG_WARN = 1,
    TERN_LOG_INFO = 2,
    TERN_LOG_DEBUG = 3,
} tern_log_level;

/* Parses "info" or "info,smtp=debug,tls=warn" and installs it atomically.
 * Returns 0, or -1 with a message in error_r (static storage, may be NULL). */
int tern_log_configure(const char *spec, const char **error_r);
/* Only validates a spec, for config validation. */
int tern_log_check_spec(const char *spec, const char **error_r);
bool tern_log_enabled(tern_log_level level, const char *module);
void tern_log(tern_log_level level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Quotes and escapes a value for key=value output when it needs it. The
 * result is in `buf` (truncated to fit, marked with "..."). */
const char *tern_log_q(char *buf, size_t size, const char *s);
/* Redirects output to an fd (tests); default 2. */
void tern_log_set_fd(int fd);

#define TLOG(lvl, mod, ...)                                                \
    do {                                                                   \
        if (tern_log_enabled((lvl), (mod)))                                \
            tern_log((lvl), (mod), __VA_ARGS__);                           \
    } while (0)
#define TLOG_ERR(mod, ...)   TLOG(TERN_LOG_ERROR, mod, __VA_ARGS__)
#define TLOG_WARN(mod, ...)  TLOG(TERN_LOG_WARN, mod, __VA_ARGS__)
#define TLOG_INFO(mod, ...)  TLOG(TERN_LOG_INFO, mod, __VA_ARGS__)
#define TLOG_DEBUG(mod, ...) TLOG(TERN_LOG_DEBUG, mod, __VA_ARGS__)

#endif
