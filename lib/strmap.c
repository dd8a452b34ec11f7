/* The string map of strmap.h: open addressing with linear probing, kept
 * at most half full, and deletion by shifting the following run back so
 * that no tombstones build up in a map that sees many adds and removes
 * (a mail queue). Input: the caller's keys. */
#include "lib/strmap.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static size_t hash_of(const tern_strmap *m, const char *k)
{
    /* FNV-1a, 64-bit: keys are ours (queue ids, domains we deliver to),
     * not chosen to collide, and the table stays half empty. */
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *p = (const unsigned char *)k; *p; p++) {
        unsigned char c = *p;
        if (m->nocase && c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        h ^= c;
        h *= 1099511628211ULL;
    }
    return (size_t)(h ^ (h >> 29));
}

static bool same(const tern_strmap *m, const char *a, const char *b)
{
    return m->nocase ? strcasecmp(a, b) == 0 : strcmp(a, b) == 0;
}

void tern_strmap_init(tern_strmap *m, bool nocase)
{
    memset(m, 0, sizeof(*m));
    m->nocase = nocase;
}

void tern_strmap_free(tern_strmap *m)
{
    free(m->slots);
    m->slots = NULL;
    m->cap = m->n = 0;
}

static tern_strmap_slot *find(const tern_strmap *m, const char *key, size_t h)
{
    if (m->cap == 0)
        return NULL;
    for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        tern_strmap_slot *s = &m->slots[i];
        if (s->key == NULL)
            return NULL;
        if (s->hash == h && same(m, s->key, key))
            return s;
    }
}

void *tern_strmap_get(const tern_strmap *m, const char *key)
{
    tern_strmap_slot *s = find(m, key, hash_of(m, key));
    return s ? s->val : NULL;
}

static void place(tern_strmap_slot *slots, size_t cap, const tern_strmap_slot *e)
{
    size_t i = e->hash & (cap - 1);
    while (slots[i].key)
        i = (i + 1) & (cap - 1);
    slots[i] = *e;
}

static int grow(tern_strmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 16;
    if (cap < m->cap)
        return -ENOMEM;
    tern_strmap_slot *slots = calloc(cap, sizeof(*slots));
    if (slots == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key)
            place(slots, cap, &m->slots[i]);
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
    return 0;
}

int tern_strmap_put(tern_strmap *m, const char *key, void *val)
{
    size_t h = hash_of(m, key);
    tern_strmap_slot *s = find(m, key, h);
    if (s) {
        s->key = key;
        s->val = val;
        return 0;
    }
    if ((m->n + 1) * 2 > m->cap && grow(m) != 0)
        return -ENOMEM;
    tern_strmap_slot e = {.key = key, .val = val, .hash = h};
    place(m->slots, m->cap, &e);
    m->n++;
    return 0;
}

void *tern_strmap_del(tern_strmap *m, const char *key)
{
    tern_strmap_slot *s = find(m, key, hash_of(m, key));
    if (s == NULL)
        return NULL;
    void *val = s->val;
    size_t mask = m->cap - 1;
    size_t hole = (size_t)(s - m->slots);
    /* Shift back every entry of the run after the hole that would not be
     * found any more with the hole empty (its home is not between the
     * hole and its slot, cyclically). */
    for (size_t i = (hole + 1) & mask; m->slots[i].key; i = (i + 1) & mask) {
        size_t home = m->slots[i].hash & mask;
        bool reachable = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
        if (!reachable) {
            m->slots[hole] = m->slots[i];
            hole = i;
        }
    }
    m->slots[hole].key = NULL;
    m->slots[hole].val = NULL;
    m->n--;
    return val;
}
