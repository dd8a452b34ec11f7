/* Which queued messages the queue manager looks at, so that a kick costs
 * what it starts, not what is queued: messages with a recipient due now
 * wait in a FIFO (the ready list, served in order: round robin), those
 * whose recipients all wait for a retry time sit in a min-heap by that
 * time, and those blocked by a destination's concurrency limit wait on
 * that destination's list until one of its deliveries ends. A message is
 * in at most one of these places; a node embedded in it says which.
 * Input: our own structures (no external data). */
#ifndef TERN_SERVER_QUEUE_SCHED_H
#define TERN_SERVER_QUEUE_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { TERN_QS_NONE = 0, TERN_QS_READY, TERN_QS_HEAP, TERN_QS_WAIT } tern_qs_where;

struct tern_qs_wait;

typedef struct tern_qs_node {
    struct tern_qs_node *prev, *next; /* on the ready list or a wait list */
    struct tern_qs_wait *wait;        /* the wait list it is on */
    size_t heap_idx;
    uint64_t due;                     /* in the heap: when */
    tern_qs_where where;
} tern_qs_node;

typedef struct tern_qs_list {
    tern_qs_node *head, *tail;
    size_t n;
} tern_qs_list;

/* A destination's waiters. */
typedef struct tern_qs_wait {
    tern_qs_list list;
} tern_qs_wait;

typedef struct tern_qs {
    tern_qs_list ready;
    tern_qs_node **heap;
    size_t n_heap, cap_heap;
} tern_qs;

void tern_qs_init(tern_qs *s);
/* Frees the scheduler's own memory; the nodes belong to the caller. */
void tern_qs_free(tern_qs *s);
/* Takes n out of wherever it is. */
void tern_qs_remove(tern_qs *s, tern_qs_node *n);
/* Moves n to the ready list's tail (or head: its turn was cut short). */
void tern_qs_ready(tern_qs *s, tern_qs_node *n, bool front);
/* Moves n into the heap, due at `due`. When the heap cannot grow, n goes
 * to the ready list instead (it is looked at too often, not lost). */
void tern_qs_defer(tern_qs *s, tern_qs_node *n, uint64_t due);
/* Moves n onto w's list (tail). */
void tern_qs_wait_on(tern_qs *s, tern_qs_wait *w, tern_qs_node *n);
/* The ready list's head, taken off it; NULL when it is empty. */
tern_qs_node *tern_qs_pop_ready(tern_qs *s);
/* Moves every heap node due at or before now to the ready list's tail, in
 * order of due time; returns how many. */
size_t tern_qs_release_due(tern_qs *s, uint64_t now);
/* The earliest due time in the heap, UINT64_MAX when it is empty. */
uint64_t tern_qs_next_due(const tern_qs *s);
/* Moves up to max of w's waiters (oldest first) to the ready list's head,
 * keeping their order; returns how many. */
size_t tern_qs_wake(tern_qs *s, tern_qs_wait *w, size_t max);

#endif
