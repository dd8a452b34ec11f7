/* The backend-independent half of store.h: requests, per-loop clients with
 * their completion queues, change-event fan-out to watchers, and a
 * synchronous runner for tools. Backends (local/, pg/) run requests on
 * their own threads and hand them back through tern_store__complete().
 * Input: requests from our own code; nothing here parses client bytes. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "storage/store_backend.h"

typedef struct store_event {
    uint64_t watch_id;
    char *account;
    uint64_t mailbox_id;
    uint64_t modseq;
    struct store_event *next;
} store_event;

struct tern_store_watch {
    uint64_t id;
    tern_store_client *client;
    char *account;
    uint64_t mailbox_id;
    tern_store_event_cb cb;
    void *data;
    tern_store_watch *next;       /* store-wide list (under watch_mu) */
};

struct tern_store {
    const tern_store_backend *be;
    void *impl;
    pthread_mutex_t watch_mu;
    tern_store_watch *watches;
    uint64_t next_watch_id;
};

struct tern_store_client {
    tern_store *store;
    uv_loop_t *loop;
    uv_async_t async;
    pthread_mutex_t mu;           /* guards done_* and events_* */
    tern_store_req *done_head, *done_tail;
    store_event *events_head, *events_tail;
    unsigned pending;             /* submitted, callback not yet run (loop thread only) */
    unsigned watches;             /* live watches (loop thread only) */
    bool closing, closed;
};

const struct tern_store_default_mailbox tern_store_default_mailboxes[6] = {
    {"INBOX", 0},
    {"Drafts", TERN_SPECIAL_DRAFTS},
    {"Sent", TERN_SPECIAL_SENT},
    {"Trash", TERN_SPECIAL_TRASH},
    {"Junk", TERN_SPECIAL_JUNK},
    {"Archive", TERN_SPECIAL_ARCHIVE},
};

const char *tern_store_strerror(int status)
{
    switch (status) {
    case TERN_STORE_OK: return "ok";
    case TERN_STORE_ENOTFOUND: return "not found";
    case TERN_STORE_EEXISTS: return "already exists";
    case TERN_STORE_EQUOTA: return "over quota";
    case TERN_STORE_EINVAL: return "invalid argument";
    case TERN_STORE_ECONFLICT: return "conflicting change";
    case TERN_STORE_ENOTEMPTY: return "not empty";
    case TERN_STORE_ETOOOLD: return "changes no longer available";
    case TERN_STORE_ETEMP: return "temporarily unavailable";
    case TERN_STORE_EIO: return "storage error";
    case TERN_STORE_EFORBIDDEN: return "not allowed";
    }
    return "unknown error";
}

int tern_store__fail(tern_store_req *req, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(req->error, sizeof(req->error), fmt, ap);
    va_end(ap);
    req->status = status;
    return status;
}

/* ---- open / close ---------------------------------------------------- */

int tern_store_open(const tern_config *cfg, tern_store **store_r, char **error_r)
{
    tern_store *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        if (error_r)
            *error_r = strdup("out of memory");
        return -1;
    }
    s->be = cfg->storage.backend == TERN_STORAGE_POSTGRES ? &tern_store_backend_pg
                                                           : &tern_store_backend_local;
    pthread_mutex_init(&s->watch_mu, NULL);
    s->next_watch_id = 1;
    char *err = NULL;
    if (s->be->open(cfg, s, &s->impl, &err) != 0) {
        if (error_r)
            *error_r = err ? err : strdup("cannot open the store");
        else
            free(err);
        pthread_mutex_destroy(&s->watch_mu);
        free(s);
        return -1;
    }
    TLOG_INFO("store", "event=open backend=%s", s->be->name);
    *store_r = s;
    return 0;
}

int tern_store_seed_domains(tern_store *s, const tern_config *cfg, char **error_r)
{
    for (size_t i = 0; i < cfg->n_domains; i++) {
        tern_store_req *r = tern_store_req_new(TERN_STORE_DOMAIN_ADD, NULL, NULL);
        if (r == NULL) {
            if (error_r)
                *error_r = strdup("out of memory");
            return -1;
        }
        r->in.domain = cfg->domains[i];
        int st = tern_store_run_sync(s, r);
        if (st != TERN_STORE_OK && st != TERN_STORE_EEXISTS) {
            if (error_r) {
                char buf[512];
                snprintf(buf, sizeof(buf), "domain %s: %s%s%s", cfg->domains[i],
                         tern_store_strerror(st), r->error[0] ? ": " : "", r->error);
                *error_r = strdup(buf);
            }
            tern_store_req_free(r);
            return -1;
        }
        tern_store_req_free(r);
    }
    return 0;
}

void tern_store_close(tern_store *s)
{
    if (s == NULL)
        return;
    s->be->close(s->impl);
    pthread_mutex_lock(&s->watch_mu);
    while (s->watches) {
        tern_store_watch *w = s->watches;
        s->watches = w->next;
        free(w->account);
        free(w);
    }
    pthread_mutex_unlock(&s->watch_mu);
    pthread_mutex_destroy(&s->watch_mu);
    free(s);
}

const char *tern_store_backend_name(const tern_store *s)
{
    return s->be->name;
}

/* ---- requests -------------------------------------------------------- */

tern_store_req *tern_store_req_new(tern_store_op op, tern_store_cb cb, void *data)
{
    tern_store_req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->op = op;
    r->cb = cb;
    r->data = data;
    tern_arena_init(&r->arena, 4096);
    return r;
}

void tern_store_req_free(tern_store_req *r)
{
    if (r == NULL)
        return;
    tern_arena_free(&r->arena);
    free(r);
}

/* ---- clients --------------------------------------------------------- */

static void client__free(uv_handle_t *h)
{
    tern_store_client *c = h->data;
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static void client__maybe_close(tern_store_client *c)
{
    if (c->closing && !c->closed && c->pending == 0 && c->watches == 0) {
        c->closed = true;
        uv_close((uv_handle_t *)&c->async, client__free);
    }
}

static tern_store_watch *client__find_watch(tern_store_client *c, uint64_t id)
{
    tern_store *s = c->store;
    tern_store_watch *found = NULL;
    pthread_mutex_lock(&s->watch_mu);
    for (tern_store_watch *w = s->watches; w; w = w->next)
        if (w->id == id && w->client == c) {
            found = w;
            break;
        }
    pthread_mutex_unlock(&s->watch_mu);
    return found;
}

static void client__wake(uv_async_t *a)
{
    tern_store_client *c = a->data;
    pthread_mutex_lock(&c->mu);
    tern_store_req *r = c->done_head;
    store_event *e = c->events_head;
    c->done_head = c->done_tail = NULL;
    c->events_head = c->events_tail = NULL;
    pthread_mutex_unlock(&c->mu);
    while (r) {
        tern_store_req *next = r->priv_.next;
        c->pending--;
        if (r->cb)
            r->cb(r);
        r = next;
    }
    while (e) {
        store_event *next = e->next;
        /* The watch is looked up by id: it may have been removed since the
         * event was queued, and then the event is dropped. Removal happens
         * on this same loop, so the watch cannot vanish during the call. */
        tern_store_watch *w = client__find_watch(c, e->watch_id);
        if (w)
            w->cb(w->data, e->account, e->mailbox_id, e->modseq);
        free(e->account);
        free(e);
        e = next;
    }
    client__maybe_close(c);
}

tern_store_client *tern_store_client_new(tern_store *s, uv_loop_t *loop)
{
    tern_store_client *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->store = s;
    c->loop = loop;
    pthread_mutex_init(&c->mu, NULL);
    if (uv_async_init(loop, &c->async, client__wake) != 0) {
        pthread_mutex_destroy(&c->mu);
        free(c);
        return NULL;
    }
    c->async.data = c;
    return c;
}

void tern_store_client_close(tern_store_client *c)
{
    if (c == NULL)
        return;
    c->closing = true;
    client__maybe_close(c);
}

int tern_store_submit(tern_store_client *c, tern_store_req *r)
{
    if (c->closing)
        return tern_store__fail(r, TERN_STORE_EINVAL, "client is closing");
    if (r->op <= 0 || r->op >= TERN_STORE__OP_COUNT)
        return tern_store__fail(r, TERN_STORE_EINVAL, "unknown operation %d", (int)r->op);
    r->priv_.client = c;
    r->priv_.next = NULL;
    r->status = TERN_STORE_OK;
    r->error[0] = '\0';
    c->pending++;
    c->store->be->submit(c->store->impl, r);
    return 0;
}

void tern_store__complete(tern_store_req *req)
{
    tern_store_client *c = req->priv_.client;
    req->priv_.next = NULL;
    pthread_mutex_lock(&c->mu);
    if (c->done_tail)
        c->done_tail->priv_.next = req;
    else
        c->done_head = req;
    c->done_tail = req;
    pthread_mutex_unlock(&c->mu);
    uv_async_send(&c->async);
}

/* ---- change events ---------------------------------------------------- */

tern_store_watch *tern_store_watch_add(tern_store_client *c, const char *account,
                                       uint64_t mailbox_id, tern_store_event_cb cb, void *data)
{
    tern_store *s = c->store;
    tern_store_watch *w = calloc(1, sizeof(*w));
    if (w == NULL || (w->account = strdup(account)) == NULL) {
        free(w);
        return NULL;
    }
    w->client = c;
    w->mailbox_id = mailbox_id;
    w->cb = cb;
    w->data = data;
    bool first = true;
    pthread_mutex_lock(&s->watch_mu);
    for (tern_store_watch *o = s->watches; o; o = o->next)
        if (strcmp(o->account, account) == 0)
            first = false;
    w->id = s->next_watch_id++;
    w->next = s->watches;
    s->watches = w;
    pthread_mutex_unlock(&s->watch_mu);
    c->watches++;
    if (first && s->be->watch_changed)
        s->be->watch_changed(s->impl, account, true);
    return w;
}

void tern_store_watch_remove(tern_store_watch *w)
{
    if (w == NULL)
        return;
    tern_store_client *c = w->client;
    tern_store *s = c->store;
    bool last = true;
    pthread_mutex_lock(&s->watch_mu);
    for (tern_store_watch **pp = &s->watches; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    for (tern_store_watch *o = s->watches; o; o = o->next)
        if (strcmp(o->account, w->account) == 0)
            last = false;
    pthread_mutex_unlock(&s->watch_mu);
    if (last && s->be->watch_changed)
        s->be->watch_changed(s->impl, w->account, false);
    free(w->account);
    free(w);
    c->watches--;
    client__maybe_close(c);
}

void tern_store__notify(tern_store *s, const char *account, uint64_t mailbox_id, uint64_t modseq)
{
    pthread_mutex_lock(&s->watch_mu);
    for (tern_store_watch *w = s->watches; w; w = w->next) {
        if (strcmp(w->account, account) != 0)
            continue;
        if (w->mailbox_id != 0 && mailbox_id != 0 && w->mailbox_id != mailbox_id)
            continue;
        store_event *e = calloc(1, sizeof(*e));
        if (e == NULL || (e->account = strdup(account)) == NULL) {
            free(e);
            continue; /* a lost wake-up; the watcher's next poll catches up */
        }
        e->watch_id = w->id;
        e->mailbox_id = mailbox_id;
        e->modseq = modseq;
        tern_store_client *c = w->client;
        pthread_mutex_lock(&c->mu);
        if (c->events_tail)
            c->events_tail->next = e;
        else
            c->events_head = e;
        c->events_tail = e;
        pthread_mutex_unlock(&c->mu);
        uv_async_send(&c->async);
    }
    pthread_mutex_unlock(&s->watch_mu);
}

/* ---- synchronous use -------------------------------------------------- */

static void sync__done(tern_store_req *r)
{
    *(bool *)r->data = true;
}

int tern_store_run_sync(tern_store *s, tern_store_req *r)
{
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0)
        return tern_store__fail(r, TERN_STORE_EIO, "cannot create a loop");
    tern_store_client *c = tern_store_client_new(s, &loop);
    if (c == NULL) {
        uv_loop_close(&loop);
        return tern_store__fail(r, TERN_STORE_EIO, "out of memory");
    }
    bool done = false;
    tern_store_cb saved_cb = r->cb;
    void *saved_data = r->data;
    r->cb = sync__done;
    r->data = &done;
    if (tern_store_submit(c, r) == 0)
        while (!done)
            uv_run(&loop, UV_RUN_ONCE);
    r->cb = saved_cb;
    r->data = saved_data;
    tern_store_client_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return r->status;
}

/* ---- header blocks ------------------------------------------------------ */

bool tern_store_header_end(const uint8_t *msg, size_t len, size_t *end_r)
{
    /* A message that starts with its blank line has an empty header. */
    if (len >= 1 && msg[0] == '\n') {
        *end_r = 1;
        return true;
    }
    if (len >= 2 && msg[0] == '\r' && msg[1] == '\n') {
        *end_r = 2;
        return true;
    }
    for (const uint8_t *p = msg, *e = msg + len; (p = memchr(p, '\n', (size_t)(e - p))) != NULL;
         p++) {
        size_t i = (size_t)(p - msg);
        if (i + 1 < len && msg[i + 1] == '\n') {
            *end_r = i + 2;
            return true;
        }
        if (i + 2 < len && msg[i + 1] == '\r' && msg[i + 2] == '\n') {
            *end_r = i + 3;
            return true;
        }
    }
    return false;
}
