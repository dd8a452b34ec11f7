/* The pure parts of IMAP SORT and THREAD (RFC 5256, RFC 5957): base
 * subject extraction, Message-ID lists, the sort order, and the two
 * threading algorithms (ORDEREDSUBJECT, REFERENCES) written as the THREAD
 * response's thread-list text. No I/O: the session collects the header
 * fields and calls these.
 * Input: header values from messages (untrusted bytes, any length the
 * header parser let through). */
#ifndef TERN_IMAP_THREAD_H
#define TERN_IMAP_THREAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/arena.h"
#include "lib/buf.h"
#include "protocols/imap/imap_parser.h"

/* RFC 5256 2.1: the base subject, UTF-8 (encoded-words decoded, runs of
 * white space made one space), in `a`. *refwd_r (may be NULL) says whether
 * the subject was a reply or forward (a "Re:"/"Fwd:" leader, a "(fwd)"
 * trailer or a "[fwd: ...]" wrapper was removed). NULL only when out of
 * memory. */
char *tern_imap_base_subject(tern_arena *a, const char *subj, size_t len, bool *refwd_r);

/* The msg-ids "<...>" of a References or In-Reply-To value, brackets
 * stripped and white space inside removed, in order; at most `max`.
 * Returns the count; *ids_r in `a`. */
size_t tern_imap_msgids(tern_arena *a, const char *v, size_t len, size_t max, char ***ids_r);

/* i;ascii-casemap ordering (RFC 4790): bytes compared with a-z as A-Z. */
int tern_imap_casemap_cmp(const char *a, const char *b);

typedef struct tern_imap_sort_msg {
    uint32_t id;              /* what the answer prints: sequence number or UID */
    uint32_t seq;             /* the mailbox order: the last tie-break */
    int64_t arrival;          /* INTERNALDATE */
    int64_t date;             /* sent date; the internal date when Date is missing or bad */
    uint64_t size;
    const char *cc, *from, *to; /* addr-mailbox of the first address; "" when none */
    const char *subject;      /* base subject; "" when none */
    const char *display_from, *display_to; /* RFC 5957 display names; "" when none */
} tern_imap_sort_msg;

/* Sorts in place by the criteria, then by `seq`. */
void tern_imap_sort(tern_imap_sort_msg *m, size_t n, const tern_imap_sort_crit *crit,
                    size_t n_crit);

typedef struct tern_imap_thread_msg {
    uint32_t id;              /* printed */
    uint32_t seq;             /* tie-break after the sent date */
    int64_t date;             /* sent date (see above) */
    const char *subject;      /* base subject, "" when none */
    bool refwd;               /* the subject was a reply or forward */
    const char *message_id;   /* without brackets; NULL when missing */
    char **refs;              /* References ids, oldest first; else In-Reply-To's first */
    size_t n_refs;
} tern_imap_thread_msg;

typedef enum {
    TERN_IMAP_THREAD_ORDEREDSUBJECT = 1,
    TERN_IMAP_THREAD_REFERENCES,
} tern_imap_thread_algo;

/* Threads the messages and appends the thread-lists ("(1 2)(3 (4)(5))",
 * nothing when n is 0) to `out`. Scratch memory comes from `a`. Returns 0,
 * or -1 when out of memory. */
int tern_imap_thread(tern_arena *a, tern_imap_thread_algo algo, const tern_imap_thread_msg *m,
                     size_t n, tern_buf *out);

#endif
