/* RFC 5322 date-time parsing (Date:, Resent-Date:, IMAP APPEND dates are
 * not this) to unix seconds. Input: untrusted header values.
 *
 * Accepted, beyond RFC 5322 3.3: the obsolete forms of 4.3 (2- and 3-digit
 * years, named zones UT GMT EST EDT CST CDT MST MDT PST PDT, military
 * one-letter zones read as -0000, i.e. UTC, comments and folding anywhere),
 * an optional day of week with or without its comma, missing seconds, a
 * missing zone (UTC), a missing time (midnight), full month and day names,
 * "." or "-" between day, month and year, and the asctime order
 * ("Mon Jan  2 15:04:05 2006"). A second of 60 is read as 59. Anything
 * else (no day, month or year; a value out of range) is a failure. */
#ifndef TERN_DATETIME_H
#define TERN_DATETIME_H

#include <stddef.h>
#include <stdint.h>

/* Returns 0 and the time in *t_r, or -1. */
int tern_datetime_parse(const char *s, size_t len, int64_t *t_r);

/* Days since 1970-01-01 of a proleptic Gregorian date (month 1..12). */
int64_t tern_days_from_civil(int64_t y, unsigned m, unsigned d);

#endif
