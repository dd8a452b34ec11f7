/* The queue's scheduling sets (see queue_sched.h): an intrusive doubly
 * linked ready list, intrusive wait lists, and a binary min-heap of node
 * pointers whose nodes remember their index so that any one can be taken
 * out in O(log n) (a retry by the administrator, a hold, a delete).
 * Input: our own nodes. */
#include "server/queue_sched.h"

#include <stdlib.h>
#include <string.h>

void tern_qs_init(tern_qs *s)
{
    memset(s, 0, sizeof(*s));
}

void tern_qs_free(tern_qs *s)
{
    free(s->heap);
    memset(s, 0, sizeof(*s));
}

static void list_add(tern_qs_list *l, tern_qs_node *n, bool front)
{
    n->prev = n->next = NULL;
    if (l->head == NULL) {
        l->head = l->tail = n;
    } else if (front) {
        n->next = l->head;
        l->head->prev = n;
        l->head = n;
    } else {
        n->prev = l->tail;
        l->tail->next = n;
        l->tail = n;
    }
    l->n++;
}

static void list_del(tern_qs_list *l, tern_qs_node *n)
{
    if (n->prev)
        n->prev->next = n->next;
    else
        l->head = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        l->tail = n->prev;
    n->prev = n->next = NULL;
    l->n--;
}

/* ---- the heap ---------------------------------------------------------- */

static void heap_set(tern_qs *s, size_t i, tern_qs_node *n)
{
    s->heap[i] = n;
    n->heap_idx = i;
}

static void sift_up(tern_qs *s, size_t i)
{
    tern_qs_node *n = s->heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (s->heap[p]->due <= n->due)
            break;
        heap_set(s, i, s->heap[p]);
        i = p;
    }
    heap_set(s, i, n);
}

static void sift_down(tern_qs *s, size_t i)
{
    tern_qs_node *n = s->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= s->n_heap)
            break;
        if (c + 1 < s->n_heap && s->heap[c + 1]->due < s->heap[c]->due)
            c++;
        if (s->heap[c]->due >= n->due)
            break;
        heap_set(s, i, s->heap[c]);
        i = c;
    }
    heap_set(s, i, n);
}

static void heap_del(tern_qs *s, tern_qs_node *n)
{
    size_t i = n->heap_idx;
    s->n_heap--;
    if (i != s->n_heap) {
        tern_qs_node *moved = s->heap[s->n_heap];
        heap_set(s, i, moved);
        sift_down(s, i);
        sift_up(s, moved->heap_idx);
    }
}

/* ---- moving nodes ------------------------------------------------------ */

void tern_qs_remove(tern_qs *s, tern_qs_node *n)
{
    switch (n->where) {
    case TERN_QS_READY:
        list_del(&s->ready, n);
        break;
    case TERN_QS_HEAP:
        heap_del(s, n);
        break;
    case TERN_QS_WAIT:
        list_del(&n->wait->list, n);
        n->wait = NULL;
        break;
    case TERN_QS_NONE:
        break;
    }
    n->where = TERN_QS_NONE;
}

void tern_qs_ready(tern_qs *s, tern_qs_node *n, bool front)
{
    tern_qs_remove(s, n);
    list_add(&s->ready, n, front);
    n->where = TERN_QS_READY;
}

void tern_qs_defer(tern_qs *s, tern_qs_node *n, uint64_t due)
{
    tern_qs_remove(s, n);
    if (s->n_heap == s->cap_heap) {
        size_t cap = s->cap_heap ? s->cap_heap * 2 : 64;
        tern_qs_node **h = realloc(s->heap, cap * sizeof(*h));
        if (h == NULL) {
            tern_qs_ready(s, n, false);
            return;
        }
        s->heap = h;
        s->cap_heap = cap;
    }
    n->due = due;
    n->where = TERN_QS_HEAP;
    heap_set(s, s->n_heap++, n);
    sift_up(s, n->heap_idx);
}

void tern_qs_wait_on(tern_qs *s, tern_qs_wait *w, tern_qs_node *n)
{
    tern_qs_remove(s, n);
    list_add(&w->list, n, false);
    n->wait = w;
    n->where = TERN_QS_WAIT;
}

tern_qs_node *tern_qs_pop_ready(tern_qs *s)
{
    tern_qs_node *n = s->ready.head;
    if (n)
        tern_qs_remove(s, n);
    return n;
}

size_t tern_qs_release_due(tern_qs *s, uint64_t now)
{
    size_t k = 0;
    while (s->n_heap > 0 && s->heap[0]->due <= now) {
        tern_qs_ready(s, s->heap[0], false);
        k++;
    }
    return k;
}

uint64_t tern_qs_next_due(const tern_qs *s)
{
    return s->n_heap ? s->heap[0]->due : UINT64_MAX;
}

size_t tern_qs_wake(tern_qs *s, tern_qs_wait *w, size_t max)
{
    size_t k = 0;
    /* From the youngest to the oldest, each to the front: the oldest ends
     * up first. */
    tern_qs_node *n = w->list.head;
    while (n && k < max) {
        n = n->next;
        k++;
    }
    tern_qs_node *last = n ? n->prev : w->list.tail;
    for (size_t i = 0; i < k; i++) {
        tern_qs_node *p = last->prev;
        tern_qs_ready(s, last, true);
        last = p;
    }
    return k;
}
