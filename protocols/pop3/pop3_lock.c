/* The process-wide POP3 maildrop lock table and last-login times (see
 * pop3_lock.h). A small open hash of account names under one mutex:
 * entries are few (one per account that logged in recently) and
 * operations are one lookup each. Input: canonical account names. */
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "protocols/pop3/pop3_lock.h"

typedef struct lock_entry {
    struct lock_entry *next;
    bool locked;
    uint64_t last_login_ms; /* 0: none recorded */
    char account[];
} lock_entry;

#define BUCKETS 1024

static uv_once_t once = UV_ONCE_INIT;
static uv_mutex_t mu;
static lock_entry *table[BUCKETS];

static void init_once(void)
{
    if (uv_mutex_init(&mu) != 0)
        abort();
}

static unsigned hash(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h % BUCKETS;
}

/* Under mu. create: make a missing entry (NULL when out of memory). */
static lock_entry *find(const char *account, bool create)
{
    lock_entry **b = &table[hash(account)];
    for (lock_entry *e = *b; e; e = e->next)
        if (strcmp(e->account, account) == 0)
            return e;
    if (!create)
        return NULL;
    size_t n = strlen(account);
    lock_entry *e = calloc(1, sizeof(*e) + n + 1);
    if (e == NULL)
        return NULL;
    memcpy(e->account, account, n + 1);
    e->next = *b;
    *b = e;
    return e;
}

/* Under mu: entries that remember nothing go, so the table stays small. */
static void drop_if_idle(const char *account)
{
    lock_entry **pp = &table[hash(account)];
    for (lock_entry *e = *pp; e; pp = &e->next, e = e->next)
        if (strcmp(e->account, account) == 0) {
            if (!e->locked && e->last_login_ms == 0) {
                *pp = e->next;
                free(e);
            }
            return;
        }
}

bool tern_pop3_lock_acquire(const char *account)
{
    uv_once(&once, init_once);
    uv_mutex_lock(&mu);
    lock_entry *e = find(account, true);
    bool ok = e != NULL && !e->locked;
    if (ok)
        e->locked = true;
    uv_mutex_unlock(&mu);
    return ok;
}

void tern_pop3_lock_release(const char *account)
{
    uv_once(&once, init_once);
    uv_mutex_lock(&mu);
    lock_entry *e = find(account, false);
    if (e) {
        e->locked = false;
        drop_if_idle(account);
    }
    uv_mutex_unlock(&mu);
}

bool tern_pop3_login_too_soon(const char *account, uint64_t delay_ms, uint64_t now_ms)
{
    if (delay_ms == 0)
        return false;
    uv_once(&once, init_once);
    uv_mutex_lock(&mu);
    bool soon = false;
    lock_entry *e = find(account, true);
    if (e) {
        if (e->last_login_ms != 0 && now_ms - e->last_login_ms < delay_ms)
            soon = true;
        else
            e->last_login_ms = now_ms;
    }
    uv_mutex_unlock(&mu);
    return soon;
}
