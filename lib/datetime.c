/* RFC 5322 date-time to unix seconds, read as tokens rather than by the
 * grammar, since Date: headers in the wild bend every rule (see
 * datetime.h). Input: untrusted header values; bounded by `len`. */
#include "lib/datetime.h"

#include <stdbool.h>
#include <string.h>

int64_t tern_days_from_civil(int64_t y, unsigned m, unsigned d)
{
    /* Eras of 400 years, March-based years so the leap day comes last. */
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (int64_t)(m > 2 ? m - 3 : m + 9) + 2) / 5 + (int64_t)d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static const char *const months[12] = {"january", "february", "march", "april", "may", "june",
                                       "july", "august", "september", "october", "november",
                                       "december"};
static const char *const days[7] = {"monday", "tuesday", "wednesday", "thursday", "friday",
                                    "saturday", "sunday"};

static const struct {
    const char *name;
    int minutes;
} zones[] = {
    {"ut", 0}, {"utc", 0}, {"gmt", 0}, {"z", 0},
    {"est", -300}, {"edt", -240}, {"cst", -360}, {"cdt", -300},
    {"mst", -420}, {"mdt", -360}, {"pst", -480}, {"pdt", -420},
};

/* A prefix of `full` of at least 3 letters. */
static bool name_match(const char *w, size_t n, const char *full)
{
    return n >= 3 && n <= strlen(full) && memcmp(w, full, n) == 0;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

int tern_datetime_parse(const char *s, size_t len, int64_t *t_r)
{
    int day = -1, month = -1, hour = -1, min = 0, sec = 0, zone_min = 0;
    int64_t year = -1;
    int year_digits = 0;
    bool have_zone = false;
    int ampm = 0; /* 1 am, 2 pm */
    size_t i = 0;

    while (i < len) {
        char c = s[i];
        if (c == '(') {
            int depth = 0;
            for (; i < len; i++) {
                if (s[i] == '\\' && i + 1 < len)
                    i++;
                else if (s[i] == '(')
                    depth++;
                else if (s[i] == ')' && --depth == 0)
                    break;
            }
            i++;
            continue;
        }
        if ((c == '+' || c == '-') && i + 1 < len && is_digit(s[i + 1]) && year >= 0) {
            size_t j = i + 1;
            int v = 0, n = 0;
            while (j < len && is_digit(s[j]) && n < 5) {
                v = v * 10 + (s[j] - '0');
                j++;
                n++;
            }
            if (!have_zone && n == 4 && v % 100 < 60) {
                zone_min = (v / 100) * 60 + v % 100;
                if (c == '-')
                    zone_min = -zone_min;
                have_zone = true;
            }
            i = j;
            continue;
        }
        if (is_alpha(c)) {
            char w[16];
            size_t n = 0;
            while (i < len && is_alpha(s[i])) {
                if (n < sizeof w)
                    w[n++] = (char)(s[i] | 0x20);
                i++;
            }
            if (n == sizeof w)
                continue; /* too long to be anything we know */
            bool known = false;
            for (int k = 0; k < 12 && !known; k++) {
                if (name_match(w, n, months[k])) {
                    if (month < 0)
                        month = k + 1;
                    known = true;
                }
            }
            for (int k = 0; k < 7 && !known; k++)
                known = name_match(w, n, days[k]);
            if (known)
                continue;
            if (n == 2 && (memcmp(w, "am", 2) == 0 || memcmp(w, "pm", 2) == 0)) {
                ampm = w[0] == 'a' ? 1 : 2;
                continue;
            }
            if (have_zone || hour < 0)
                continue; /* a zone comes after the time; other words are noise */
            for (size_t k = 0; k < sizeof zones / sizeof zones[0]; k++) {
                if (strlen(zones[k].name) == n && memcmp(w, zones[k].name, n) == 0) {
                    zone_min = zones[k].minutes;
                    have_zone = true;
                }
            }
            if (!have_zone && n == 1 && w[0] != 'j') {
                zone_min = 0; /* military zones: RFC 5322 4.3 says take them as -0000 */
                have_zone = true;
            }
            continue;
        }
        if (is_digit(c)) {
            int64_t v = 0;
            int n = 0;
            while (i < len && is_digit(s[i])) {
                if (n < 10)
                    v = v * 10 + (s[i] - '0');
                n++;
                i++;
            }
            if (n > 10)
                return -1;
            if (i < len && s[i] == ':' && hour < 0) {
                /* hh:mm[:ss] */
                if (n > 2)
                    return -1;
                hour = (int)v;
                int parts[2] = {-1, -1};
                for (int k = 0; k < 2 && i < len && s[i] == ':'; k++) {
                    size_t j = i + 1;
                    int pv = 0, pn = 0;
                    while (j < len && is_digit(s[j]) && pn < 3) {
                        pv = pv * 10 + (s[j] - '0');
                        j++;
                        pn++;
                    }
                    if (pn == 0 || pn > 2)
                        return -1;
                    parts[k] = pv;
                    i = j;
                }
                if (parts[0] < 0)
                    return -1;
                min = parts[0];
                sec = parts[1] < 0 ? 0 : parts[1];
                continue;
            }
            if (n <= 2 && day < 0) {
                day = (int)v;
            } else if (year < 0 && n >= 2 && n <= 4) {
                year = v;
                year_digits = n;
            }
            continue;
        }
        i++;
    }

    if (day < 1 || month < 1 || year < 0)
        return -1;
    if (year_digits == 2)
        year += year < 50 ? 2000 : 1900;
    else if (year_digits == 3)
        year += 1900;
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int dim = mdays[month - 1] + (month == 2 && leap(year));
    if (day > dim)
        return -1;
    if (hour < 0)
        hour = 0;
    if (ampm) {
        if (hour < 1 || hour > 12)
            return -1;
        hour = hour % 12 + (ampm == 2 ? 12 : 0);
    }
    if (hour > 23 || min > 59 || sec > 60)
        return -1;
    if (sec == 60)
        sec = 59;
    int64_t t = tern_days_from_civil(year, (unsigned)month, (unsigned)day) * 86400 +
                hour * 3600 + min * 60 + sec;
    *t_r = t - (int64_t)zone_min * 60;
    return 0;
}
