/* A bounded set of UIDs kept as ascending, disjoint, non-touching ranges:
 * what an IMAP session holds as \Recent (RFC 3501 2.3.2). New mail takes
 * ever higher UIDs, so the set is a handful of ranges however many
 * messages it holds; it fragments only when sessions claim interleaved
 * UIDs. Past `max` ranges the lowest (oldest) range is dropped: those
 * messages stop being recent for the session, which is the cheap,
 * harmless way to stay bounded. Pure: no I/O, malloc only.
 * Input trusted: UIDs from the store. */
#ifndef TERN_IMAP_UIDLIST_H
#define TERN_IMAP_UIDLIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storage/store.h"

typedef struct tern_imap_uidlist {
    tern_uid_range *r;       /* malloc'd; r[i].last + 1 < r[i + 1].first */
    size_t n, cap;
    size_t max;              /* ranges kept at most (>= 1) */
    bool dropped;            /* a range was dropped to stay within max */
} tern_imap_uidlist;

void tern_imap_uidlist_init(tern_imap_uidlist *l, size_t max_ranges);
void tern_imap_uidlist_free(tern_imap_uidlist *l);
/* Adds one UID (1..UINT32_MAX-1). Returns 0, or -1 when out of memory
 * (the list is unchanged). */
int tern_imap_uidlist_add(tern_imap_uidlist *l, uint32_t uid);
bool tern_imap_uidlist_has(const tern_imap_uidlist *l, uint32_t uid);
/* How many of v[0..n) (ascending, no duplicates) are in the list. */
size_t tern_imap_uidlist_count_in(const tern_imap_uidlist *l, const uint32_t *v, size_t n);

#endif
