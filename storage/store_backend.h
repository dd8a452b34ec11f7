/* The contract between store.c (clients, completions, change events) and a
 * backend (local/, pg/). Only storage/ includes this. A backend gets whole
 * requests, runs them on its own thread or loop, fills req->status and
 * req->out (allocating in req->arena, which is only touched by one thread
 * at a time), then calls tern_store__complete(); it calls
 * tern_store__notify() after every committed change so watchers wake. */
#ifndef TERN_STORE_BACKEND_H
#define TERN_STORE_BACKEND_H

#include "storage/store.h"

typedef struct tern_store_backend {
    const char *name;
    /* Opens (creates the schema, reconciles). `store` is the handle to pass
     * back to tern_store__complete/__notify. Blocking. */
    int (*open)(const tern_config *cfg, tern_store *store, void **impl_r, char **error_r);
    /* Runs every queued request to completion, then frees. Blocking. */
    void (*close)(void *impl);
    /* Takes the request; must not call back before returning. */
    void (*submit)(void *impl, tern_store_req *req);
    /* Optional: a watch on `account` was added or the last one removed
     * (pg: LISTEN/UNLISTEN is per channel, and the channel is global, so
     * pg may ignore these). */
    void (*watch_changed)(void *impl, const char *account, bool watched);
} tern_store_backend;

extern const tern_store_backend tern_store_backend_local;
extern const tern_store_backend tern_store_backend_pg;

/* From any thread: the request is done; its callback will run on the
 * submitting client's loop. */
void tern_store__complete(tern_store_req *req);
/* From any thread: a mailbox of `account` changed (committed). With pg it
 * is also called for changes made by other processes (NOTIFY). */
void tern_store__notify(tern_store *s, const char *account, uint64_t mailbox_id, uint64_t modseq);
/* Formats req->error and returns `status`, for one-line error exits. */
int tern_store__fail(tern_store_req *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Name checks shared by the backends, so both refuse the same names. */
bool tern_store__valid_mailbox_name(const char *name);
bool tern_store__valid_account_name(const char *name);  /* local@domain */
bool tern_store__valid_domain(const char *name);
/* "INBOX" in any case becomes "INBOX"; other names unchanged. Returns a
 * string in `a`. */
const char *tern_store__canon_mailbox(tern_arena *a, const char *name);
/* IMAP LIST pattern match: '*' matches anything, '%' anything but '/'. */
bool tern_store__pattern_match(const char *pattern, const char *name);
/* Splits "user+detail@domain": returns true and the parts if it has a
 * detail. */
bool tern_store__split_detail(tern_arena *a, const char *addr, char **base_r, char **detail_r);

#endif
