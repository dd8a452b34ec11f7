/* libFuzzer target: SORT/THREAD's pure parts (protocols/imap/imap_thread.c).
 * The input is lines "subject<TAB>message-id<TAB>references"; the first byte
 * picks the date spread. Every line's subject goes through base subject
 * extraction, then both threading algorithms and a SORT run over all of
 * them, and the sort criteria parser reads the whole input as a command
 * argument. The output must be balanced parentheses. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "protocols/imap/imap_thread.h"

#define MAX_MSGS 512

static const char *field(const char **p, const char *end, tern_arena *a, char stop)
{
    const char *s = *p;
    while (*p < end && **p != stop && **p != '\n')
        (*p)++;
    char *v = tern_arena_strndup(a, s, (size_t)(*p - s));
    if (*p < end && **p == stop)
        (*p)++;
    return v ? v : "";
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tern_arena a;
    tern_arena_init(&a, 4096);
    tern_imap_parser ps;
    tern_imap_sort_crit crit[TERN_IMAP_SORT_MAX];
    size_t n_crit = 0;
    tern_imap_parser_init(&ps, data, size, &a, 16);
    if (!tern_imap_sort_criteria(&ps, crit, &n_crit))
        n_crit = 0;

    unsigned spread = size ? data[0] % 7 + 1 : 1;
    tern_imap_thread_msg *m = calloc(MAX_MSGS, sizeof(*m));
    tern_imap_sort_msg *s = calloc(MAX_MSGS, sizeof(*s));
    if (!m || !s) {
        free(m);
        free(s);
        tern_arena_free(&a);
        return 0;
    }
    const char *p = (const char *)data, *end = p + size;
    size_t n = 0;
    while (p < end && n < MAX_MSGS) {
        const char *subj = field(&p, end, &a, '\t');
        const char *mid = field(&p, end, &a, '\t');
        const char *refs = field(&p, end, &a, '\n');
        m[n].id = m[n].seq = (uint32_t)(n + 1);
        m[n].date = (int64_t)((n * 7919) % spread);
        m[n].subject = tern_imap_base_subject(&a, subj, strlen(subj), &m[n].refwd);
        if (!m[n].subject)
            m[n].subject = "";
        char **ids;
        m[n].message_id = tern_imap_msgids(&a, mid, strlen(mid), 1, &ids) ? ids[0] : NULL;
        m[n].n_refs = tern_imap_msgids(&a, refs, strlen(refs), 64, &m[n].refs);
        s[n].id = s[n].seq = m[n].id;
        s[n].date = s[n].arrival = m[n].date;
        s[n].size = strlen(refs);
        s[n].subject = m[n].subject;
        s[n].cc = s[n].from = s[n].to = s[n].display_from = s[n].display_to = mid;
        n++;
    }
    for (int algo = TERN_IMAP_THREAD_ORDEREDSUBJECT; algo <= TERN_IMAP_THREAD_REFERENCES; algo++) {
        tern_buf b;
        tern_buf_init(&b, 0);
        if (tern_imap_thread(&a, (tern_imap_thread_algo)algo, m, n, &b) == 0) {
            long depth = 0;
            size_t ids = 0;
            for (size_t i = 0; i < b.len; i++) {
                depth += b.data[i] == '(' ? 1 : b.data[i] == ')' ? -1 : 0;
                if (depth < 0)
                    abort();
                if (b.data[i] >= '0' && b.data[i] <= '9' && (i == 0 || b.data[i - 1] < '0' ||
                                                            b.data[i - 1] > '9'))
                    ids++;
            }
            if (depth != 0 || ids != n)
                abort(); /* every message once, parentheses balanced */
        }
        tern_buf_free(&b);
    }
    if (n_crit)
        tern_imap_sort(s, n, crit, n_crit);
    free(m);
    free(s);
    tern_arena_free(&a);
    return 0;
}
