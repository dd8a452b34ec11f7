/* Connection admission, see limits.h. One mutex-protected hash table of
 * per-IP entries; an entry lives while the IP has connections open or its
 * token bucket is not yet full again, so the table holds at most about
 * max_connections entries plus the recently refused. A sweep runs when the
 * table grows past a bound so a flood from many addresses cannot grow it
 * without limit. */
#include "server/limits.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "lib/net.h"

#define NBUCKETS 4096
#define MAX_ENTRIES (1u << 20)

typedef struct ip_entry {
    struct ip_entry *next;
    uint8_t key[16];
    uint32_t active;
    double tokens;
    uint64_t refill_ms;
} ip_entry;

struct tern_limits {
    pthread_mutex_t mu;
    ip_entry *buckets[NBUCKETS];
    size_t entries;
    uint32_t active;
    uint32_t max_connections;
    uint32_t per_ip;
    double rate;
    double burst;
};

tern_limits *tern_limits_new(void)
{
    tern_limits *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    pthread_mutex_init(&l->mu, NULL);
    l->max_connections = UINT32_MAX;
    return l;
}

void tern_limits_free(tern_limits *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < NBUCKETS; i++) {
        ip_entry *e = l->buckets[i];
        while (e) {
            ip_entry *n = e->next;
            free(e);
            e = n;
        }
    }
    pthread_mutex_destroy(&l->mu);
    free(l);
}

void tern_limits_configure(tern_limits *l, const tern_limits_conf *conf, uint32_t max_connections)
{
    pthread_mutex_lock(&l->mu);
    l->max_connections = max_connections;
    l->per_ip = conf->max_connections_per_ip;
    l->rate = conf->connection_rate_per_ip;
    l->burst = conf->connection_burst_per_ip > 0 ? conf->connection_burst_per_ip : 1;
    pthread_mutex_unlock(&l->mu);
}

static uint32_t limits__hash(const uint8_t key[16])
{
    /* FNV-1a: the key is an address, not attacker-chosen content beyond the
     * client's own IP, and the table is bounded anyway. */
    uint32_t h = 2166136261u;
    for (int i = 0; i < 16; i++)
        h = (h ^ key[i]) * 16777619u;
    return h % NBUCKETS;
}

static ip_entry **limits__find(tern_limits *l, const uint8_t key[16])
{
    ip_entry **pp = &l->buckets[limits__hash(key)];
    while (*pp && memcmp((*pp)->key, key, 16) != 0)
        pp = &(*pp)->next;
    return pp;
}

static void limits__refill(tern_limits *l, ip_entry *e, uint64_t now_ms)
{
    if (l->rate <= 0) {
        e->tokens = l->burst;
    } else if (now_ms > e->refill_ms) {
        e->tokens += (double)(now_ms - e->refill_ms) * l->rate / 1000.0;
        if (e->tokens > l->burst)
            e->tokens = l->burst;
    }
    e->refill_ms = now_ms;
}

/* Drops entries with no connection whose bucket has refilled: they carry
 * no state that a fresh entry would not have. */
static void limits__sweep(tern_limits *l, uint64_t now_ms)
{
    for (size_t i = 0; i < NBUCKETS; i++) {
        ip_entry **pp = &l->buckets[i];
        while (*pp) {
            ip_entry *e = *pp;
            limits__refill(l, e, now_ms);
            if (e->active == 0 && e->tokens >= l->burst) {
                *pp = e->next;
                free(e);
                l->entries--;
            } else {
                pp = &e->next;
            }
        }
    }
}

tern_admit tern_limits_admit(tern_limits *l, const struct sockaddr *peer, uint64_t now_ms)
{
    uint8_t key[16];
    tern_sockaddr_key(peer, key);
    tern_admit res = TERN_ADMIT_OK;
    pthread_mutex_lock(&l->mu);
    if (l->active >= l->max_connections) {
        res = TERN_ADMIT_GLOBAL;
        goto out;
    }
    /* Entries are kept even with per-IP limits off, so that turning them
     * on by SIGHUP counts the connections already open. */
    ip_entry **pp = limits__find(l, key);
    ip_entry *e = *pp;
    if (e == NULL) {
        if (l->entries >= MAX_ENTRIES / 2)
            limits__sweep(l, now_ms);
        if (l->entries >= MAX_ENTRIES) {
            res = TERN_ADMIT_GLOBAL;
            goto out;
        }
        e = calloc(1, sizeof(*e));
        if (e == NULL) {
            res = TERN_ADMIT_GLOBAL;
            goto out;
        }
        memcpy(e->key, key, 16);
        e->tokens = l->burst;
        e->refill_ms = now_ms;
        e->next = l->buckets[limits__hash(key)];
        l->buckets[limits__hash(key)] = e;
        l->entries++;
    }
    limits__refill(l, e, now_ms);
    if (l->per_ip != 0 && e->active >= l->per_ip) {
        res = TERN_ADMIT_PER_IP;
        goto out;
    }
    if (l->rate > 0) {
        if (e->tokens < 1.0) {
            res = TERN_ADMIT_RATE;
            goto out;
        }
        e->tokens -= 1.0;
    }
    e->active++;
    l->active++;
out:
    pthread_mutex_unlock(&l->mu);
    return res;
}

void tern_limits_release(tern_limits *l, const struct sockaddr *peer)
{
    uint8_t key[16];
    tern_sockaddr_key(peer, key);
    pthread_mutex_lock(&l->mu);
    if (l->active > 0)
        l->active--;
    ip_entry *e = *limits__find(l, key);
    if (e && e->active > 0)
        e->active--;
    pthread_mutex_unlock(&l->mu);
}

uint32_t tern_limits_active(tern_limits *l)
{
    pthread_mutex_lock(&l->mu);
    uint32_t n = l->active;
    pthread_mutex_unlock(&l->mu);
    return n;
}

uint32_t tern_limits_active_ip(tern_limits *l, const struct sockaddr *peer)
{
    uint8_t key[16];
    tern_sockaddr_key(peer, key);
    pthread_mutex_lock(&l->mu);
    ip_entry *e = *limits__find(l, key);
    uint32_t n = e ? e->active : 0;
    pthread_mutex_unlock(&l->mu);
    return n;
}

const char *tern_admit_name(tern_admit a)
{
    switch (a) {
    case TERN_ADMIT_OK: return "ok";
    case TERN_ADMIT_GLOBAL: return "max_connections";
    case TERN_ADMIT_PER_IP: return "max_connections_per_ip";
    case TERN_ADMIT_RATE: return "connection_rate_per_ip";
    }
    return "?";
}
