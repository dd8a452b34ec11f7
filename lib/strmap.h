/* A map from a string key to a pointer, for indexes that must not cost a
 * walk per lookup (the queue's messages by queue id, its destinations by
 * domain). Keys are borrowed: the caller keeps each key's bytes alive and
 * unchanged while it is in the map (typically the key is a field of the
 * value). Optionally ASCII case-insensitive, as domain names are.
 * Input: keys from our own structures (any bytes, NUL-terminated). */
#ifndef TERN_LIB_STRMAP_H
#define TERN_LIB_STRMAP_H

#include <stdbool.h>
#include <stddef.h>

typedef struct tern_strmap_slot {
    const char *key;  /* NULL: empty */
    void *val;
    size_t hash;
} tern_strmap_slot;

typedef struct tern_strmap {
    tern_strmap_slot *slots;
    size_t cap;       /* a power of two, or 0 */
    size_t n;
    bool nocase;
} tern_strmap;

void tern_strmap_init(tern_strmap *m, bool nocase);
void tern_strmap_free(tern_strmap *m);
void *tern_strmap_get(const tern_strmap *m, const char *key);
/* Adds or replaces key's value. -ENOMEM when the table could not grow
 * (the map is unchanged then). */
int tern_strmap_put(tern_strmap *m, const char *key, void *val);
/* Removes key; returns its value, or NULL when it was not there. */
void *tern_strmap_del(tern_strmap *m, const char *key);

#endif
