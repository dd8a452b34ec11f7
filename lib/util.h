/* Small pure helpers shared by every module: duration and size literals as
 * written in the config, identifiers, edit distance for "did you mean". */
#ifndef TERN_UTIL_H
#define TERN_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* "500ms", "30s", "5m", "1h", "2d", or a bare number of seconds.
 * Returns 0 and the value in milliseconds, or -1. */
int tern_parse_duration_ms(const char *s, uint64_t *ms_r);
/* "512", "64KiB", "10MiB", "1GiB", also "64K"/"10M"/"1G" and "kB"/"MB"
 * (decimal). Returns 0 or -1 (syntax or overflow). */
int tern_parse_size(const char *s, uint64_t *bytes_r);
/* Formats a duration back as the config would write it. */
void tern_format_duration(uint64_t ms, char *buf, size_t size);

/* 36-character RFC 4122 version 4 UUID plus NUL. */
#define TERN_UUID_LEN 37
void tern_uuid(char out[TERN_UUID_LEN]);
/* Queue id: 16 chars of [0-9A-Z] from time and randomness; sorts by time. */
#define TERN_QID_LEN 17
void tern_qid(char out[TERN_QID_LEN]);

/* Levenshtein distance, capped at `cap` (returns cap when >= cap). */
size_t tern_edit_distance(const char *a, const char *b, size_t cap);

/* RFC 5322 date-time ("Sat, 21 Nov 2026 23:40:10 +0000") for `t`. */
void tern_rfc5322_date(int64_t t, char *buf, size_t size);

/* Monotonic milliseconds. */
uint64_t tern_now_ms(void);

#endif
