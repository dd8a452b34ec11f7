/* The \Recent UID set of an IMAP session (imap_uidlist.h): ranges kept
 * sorted so that membership is a binary search and counting against the
 * session's UID array is two binary searches per range.
 * Input trusted: UIDs from the store. */
#include <stdlib.h>
#include <string.h>

#include "protocols/imap/imap_uidlist.h"

void tern_imap_uidlist_init(tern_imap_uidlist *l, size_t max_ranges)
{
    memset(l, 0, sizeof(*l));
    l->max = max_ranges ? max_ranges : 1;
}

void tern_imap_uidlist_free(tern_imap_uidlist *l)
{
    free(l->r);
    l->r = NULL;
    l->n = l->cap = 0;
    l->dropped = false;
}

/* The first range whose first UID is above uid (l->n when none). */
static size_t first_above(const tern_imap_uidlist *l, uint32_t uid)
{
    size_t lo = 0, hi = l->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (l->r[mid].first > uid)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

bool tern_imap_uidlist_has(const tern_imap_uidlist *l, uint32_t uid)
{
    size_t i = first_above(l, uid);
    return i > 0 && l->r[i - 1].last >= uid;
}

int tern_imap_uidlist_add(tern_imap_uidlist *l, uint32_t uid)
{
    if (uid == 0 || uid == UINT32_MAX)
        return 0; /* not a UID a message can have */
    size_t i = first_above(l, uid);
    if (i > 0 && l->r[i - 1].last >= uid)
        return 0;
    bool joins_prev = i > 0 && l->r[i - 1].last + 1 == uid;
    bool joins_next = i < l->n && l->r[i].first == uid + 1;
    if (joins_prev && joins_next) {
        l->r[i - 1].last = l->r[i].last;
        memmove(l->r + i, l->r + i + 1, (l->n - i - 1) * sizeof(*l->r));
        l->n--;
        return 0;
    }
    if (joins_prev) {
        l->r[i - 1].last = uid;
        return 0;
    }
    if (joins_next) {
        l->r[i].first = uid;
        return 0;
    }
    if (l->n >= l->max) {
        l->dropped = true;
        if (i == 0)
            return 0; /* it would be the lowest range: the one to drop */
        memmove(l->r, l->r + 1, (l->n - 1) * sizeof(*l->r));
        l->n--;
        i--;
    }
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        if (cap > l->max)
            cap = l->max;
        tern_uid_range *nr = realloc(l->r, cap * sizeof(*nr));
        if (nr == NULL)
            return -1;
        l->r = nr;
        l->cap = cap;
    }
    memmove(l->r + i + 1, l->r + i, (l->n - i) * sizeof(*l->r));
    l->r[i].first = l->r[i].last = uid;
    l->n++;
    return 0;
}

/* The first index of v whose value is >= x. */
static size_t lower_bound(const uint32_t *v, size_t n, uint32_t x)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

size_t tern_imap_uidlist_count_in(const tern_imap_uidlist *l, const uint32_t *v, size_t n)
{
    size_t count = 0;
    for (size_t i = 0; i < l->n; i++) {
        size_t a = lower_bound(v, n, l->r[i].first);
        size_t b = l->r[i].last == UINT32_MAX ? n : lower_bound(v, n, l->r[i].last + 1);
        if (b > a)
            count += b - a;
    }
    return count;
}
