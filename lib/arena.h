/* Region allocator: many small allocations freed at once with their owner
 * (a session, a transaction, a config snapshot). Trusts nothing; every
 * allocation is checked for size overflow. */
#ifndef TERN_ARENA_H
#define TERN_ARENA_H

#include <stddef.h>

typedef struct tern_arena_block tern_arena_block;

typedef struct tern_arena {
    tern_arena_block *head;
    size_t block_size;
    size_t total; /* bytes obtained from malloc, for accounting */
} tern_arena;

void tern_arena_init(tern_arena *a, size_t block_size);
/* Returns zeroed memory aligned for any type, or NULL when out of memory. */
void *tern_arena_alloc(tern_arena *a, size_t size);
char *tern_arena_strdup(tern_arena *a, const char *s);
char *tern_arena_strndup(tern_arena *a, const char *s, size_t n);
char *tern_arena_printf(tern_arena *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Frees every block but the first, which is kept for reuse. */
void tern_arena_reset(tern_arena *a);
void tern_arena_free(tern_arena *a);

#endif
