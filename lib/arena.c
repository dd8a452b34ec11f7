/* Region allocator, see arena.h. Blocks are chained; a request bigger than
 * the block size gets a block of its own so that large objects do not waste
 * the tail of a regular block. */
#include "lib/arena.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tern_arena_block {
    tern_arena_block *next;
    size_t size;
    size_t used;
    _Alignas(max_align_t) unsigned char data[];
};

#define ALIGN (_Alignof(max_align_t))

void tern_arena_init(tern_arena *a, size_t block_size)
{
    a->head = NULL;
    a->block_size = block_size ? block_size : 4096;
    a->total = 0;
}

static tern_arena_block *arena__new_block(tern_arena *a, size_t size)
{
    if (size > SIZE_MAX - sizeof(tern_arena_block))
        return NULL;
    tern_arena_block *b = malloc(sizeof(*b) + size);
    if (b == NULL)
        return NULL;
    b->size = size;
    b->used = 0;
    a->total += sizeof(*b) + size;
    return b;
}

void *tern_arena_alloc(tern_arena *a, size_t size)
{
    if (size == 0)
        size = 1;
    if (size > SIZE_MAX - ALIGN)
        return NULL;
    size_t need = (size + ALIGN - 1) & ~(ALIGN - 1);
    tern_arena_block *b = a->head;
    if (b == NULL || b->size - b->used < need) {
        if (need > a->block_size / 2) {
            /* Oversized: a dedicated block placed after the head so the
             * head's free space stays usable. */
            tern_arena_block *big = arena__new_block(a, need);
            if (big == NULL)
                return NULL;
            big->used = need;
            if (b == NULL) {
                big->next = NULL;
                a->head = big;
            } else {
                big->next = b->next;
                b->next = big;
            }
            memset(big->data, 0, need);
            return big->data;
        }
        tern_arena_block *nb = arena__new_block(a, a->block_size);
        if (nb == NULL)
            return NULL;
        nb->next = b;
        a->head = nb;
        b = nb;
    }
    void *p = b->data + b->used;
    b->used += need;
    memset(p, 0, need);
    return p;
}

char *tern_arena_strndup(tern_arena *a, const char *s, size_t n)
{
    if (n == SIZE_MAX)
        return NULL;
    char *d = tern_arena_alloc(a, n + 1);
    if (d == NULL)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *tern_arena_strdup(tern_arena *a, const char *s)
{
    return s ? tern_arena_strndup(a, s, strlen(s)) : NULL;
}

char *tern_arena_printf(tern_arena *a, const char *fmt, ...)
{
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        va_end(ap2);
        return NULL;
    }
    char *d = tern_arena_alloc(a, (size_t)n + 1);
    if (d != NULL)
        vsnprintf(d, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    return d;
}

void tern_arena_reset(tern_arena *a)
{
    tern_arena_block *keep = NULL;
    tern_arena_block *b = a->head;
    while (b != NULL) {
        tern_arena_block *next = b->next;
        if (keep == NULL && b->size == a->block_size) {
            keep = b;
        } else {
            a->total -= sizeof(*b) + b->size;
            free(b);
        }
        b = next;
    }
    if (keep != NULL) {
        keep->used = 0;
        keep->next = NULL;
    }
    a->head = keep;
}

void tern_arena_free(tern_arena *a)
{
    tern_arena_block *b = a->head;
    while (b != NULL) {
        tern_arena_block *next = b->next;
        free(b);
        b = next;
    }
    a->head = NULL;
    a->total = 0;
}
