/* Test and benchmark harness over store.h: see harness.h. Trusts the
 * conninfo it is given and the temp dirs it makes; nothing else. */
#include "tests/store/harness.h"

#include <errno.h>
#include <ftw.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "lib/log.h"

static int pg_exec(const char *conninfo, const char *sql)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "harness: cannot connect (%s): %s", conninfo, PQerrorMessage(c));
        PQfinish(c);
        return -1;
    }
    PGresult *r = PQexec(c, sql);
    int rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : -1;
    if (rc != 0)
        fprintf(stderr, "harness: %s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
    return rc;
}

int harness_pg_create_db(const char *name)
{
    const char *ci = getenv("TERN_TEST_PG_CONNINFO");
    if (ci == NULL)
        return -1;
    char sql[160];
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", name);
    return pg_exec(ci, sql);
}

int harness_pg_drop_db(const char *name)
{
    const char *ci = getenv("TERN_TEST_PG_CONNINFO");
    if (ci == NULL)
        return -1;
    char sql[160];
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
    return pg_exec(ci, sql);
}

int harness_init(harness *h, const char *backend, const char *dir, const char *db)
{
    memset(h, 0, sizeof(*h));
    /* Info lines per account would bury the test output; TERN_LOG asks
     * for more. */
    const char *lv = getenv("TERN_LOG");
    tern_log_configure(lv && *lv ? lv : "warn", NULL);
    if (strcmp(backend, "pg") == 0 || strcmp(backend, "postgres") == 0) {
        h->pg = true;
    } else if (strcmp(backend, "pg-blob") == 0) {
        /* pg with postgres.blob_dir: bodies as files under the temp dir. */
        h->pg = true;
        h->blob = true;
    } else if (strcmp(backend, "local") != 0) {
        fprintf(stderr, "harness: unknown backend %s (local, pg or pg-blob)\n", backend);
        return -1;
    }
    if (h->pg) {
        const char *ci = getenv("TERN_TEST_PG_CONNINFO");
        if (ci == NULL || *ci == '\0') {
            printf("SKIP: TERN_TEST_PG_CONNINFO is not set (start a cluster with tests/pg/start)\n");
            return 1;
        }
        h->pg_base = strdup(ci);
    }
    if (dir) {
        snprintf(h->dir, sizeof(h->dir), "%s", dir);
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(h->dir, sizeof(h->dir), "%s/tern-store.XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (mkdtemp(h->dir) == NULL) {
            fprintf(stderr, "harness: mkdtemp: %s\n", strerror(errno));
            return -1;
        }
    }

    tern_config *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -1;
    atomic_init(&c->refs, 1);
    tern_arena_init(&c->arena, 4096);
    c->server.hostname = tern_arena_strdup(&c->arena, "mail.example.test");
    c->server.state_dir = tern_arena_strdup(&c->arena, h->dir);
    c->server.workers = 1;
    c->server.log_level = tern_arena_strdup(&c->arena, "warn");
    c->domains = tern_arena_alloc(&c->arena, 2 * sizeof(char *));
    c->domains[0] = tern_arena_strdup(&c->arena, "example.test");
    c->domains[1] = tern_arena_strdup(&c->arena, "alias.test");
    c->n_domains = 2;
    c->storage.backend = h->pg ? TERN_STORAGE_POSTGRES : TERN_STORAGE_LOCAL;
    c->storage.changes_retention_ms = 30ull * 24 * 3600 * 1000;
    c->local.path = tern_arena_printf(&c->arena, "%s/mail", h->dir);
    if (h->pg) {
        if (db) {
            snprintf(h->pg_db, sizeof(h->pg_db), "%s", db);
            h->db_given = true;
        } else {
            static atomic_uint seq;
            snprintf(h->pg_db, sizeof(h->pg_db), "tern_t_%ld_%u_%ld", (long)getpid(),
                     atomic_fetch_add(&seq, 1), (long)time(NULL));
            char sql[160];
            snprintf(sql, sizeof(sql), "CREATE DATABASE %s", h->pg_db);
            if (pg_exec(h->pg_base, sql) != 0) {
                free(c);
                if (dir == NULL)
                    rmdir(h->dir);
                return -1;
            }
        }
        c->postgres.present = true;
        /* Later keywords win in a libpq conninfo, so appending dbname
         * points the base conninfo at our own database. */
        c->postgres.conninfo = tern_arena_printf(&c->arena, "%s dbname=%s", h->pg_base, h->pg_db);
        c->postgres.pool_size = 8;
        if (h->blob) {
            snprintf(h->blob_dir, sizeof(h->blob_dir), "%s/blobs", h->dir);
            c->postgres.blob_dir = tern_arena_strdup(&c->arena, h->blob_dir);
        }
    }
    h->cfg = c;
    return 0;
}

int harness_open(harness *h)
{
    char *err = NULL;
    if (tern_store_open(h->cfg, &h->store, &err) != 0) {
        fprintf(stderr, "harness: tern_store_open: %s\n", err ? err : "?");
        free(err);
        h->store = NULL;
        return -1;
    }
    return 0;
}

void harness_close_store(harness *h)
{
    if (h->store)
        tern_store_close(h->store);
    h->store = NULL;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st; (void)flag; (void)ftw;
    remove(path);
    return 0;
}

void harness_fini(harness *h)
{
    harness_close_store(h);
    if (!h->keep) {
        if (h->dir[0])
            nftw(h->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        if (h->pg && h->pg_db[0] && !h->db_given) {
            char sql[160];
            snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", h->pg_db);
            pg_exec(h->pg_base, sql);
        }
    }
    if (h->cfg)
        tern_config_unref(h->cfg);
    free(h->pg_base);
    memset(h, 0, sizeof(*h));
}

tern_store_req *hreq(tern_store_op op)
{
    tern_store_req *r = tern_store_req_new(op, NULL, NULL);
    if (r == NULL) {
        fprintf(stderr, "harness: out of memory\n");
        abort();
    }
    return r;
}

int hrun(harness *h, tern_store_req *r)
{
    return tern_store_run_sync(h->store, r);
}

int harness_account(harness *h, const char *account, uint64_t quota_bytes, uint64_t quota_messages)
{
    const char *at = strrchr(account, '@');
    if (at == NULL)
        return TERN_STORE_EINVAL;
    tern_store_req *r = hreq(TERN_STORE_DOMAIN_ADD);
    r->in.domain = at + 1;
    r->in.name = at + 1;
    int st = hrun(h, r);
    if (st != TERN_STORE_OK && st != TERN_STORE_EEXISTS)
        fprintf(stderr, "harness: DOMAIN_ADD %s: %s %s\n", at + 1, tern_store_strerror(st), r->error);
    tern_store_req_free(r);
    if (st != TERN_STORE_OK && st != TERN_STORE_EEXISTS)
        return st;
    r = hreq(TERN_STORE_ACCOUNT_CREATE);
    r->in.account = account;
    r->in.quota_bytes = quota_bytes;
    r->in.quota_messages = quota_messages;
    st = hrun(h, r);
    if (st != TERN_STORE_OK && st != TERN_STORE_EEXISTS)
        fprintf(stderr, "harness: ACCOUNT_CREATE %s: %s %s\n", account, tern_store_strerror(st),
                r->error);
    tern_store_req_free(r);
    return st == TERN_STORE_EEXISTS ? TERN_STORE_OK : st;
}

uint8_t *harness_message(const char *tag, unsigned n, size_t size, size_t *len_r)
{
    size_t cap = size + 1024;
    char *m = malloc(cap);
    if (m == NULL)
        abort();
    int hl = snprintf(m, cap,
                      "From: Burst <burst@example.org>\r\n"
                      "To: <user@example.test>\r\n"
                      "Subject: %s %u\r\n"
                      "Message-ID: <%s.%u@example.org>\r\n"
                      "Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
                      "\r\n",
                      tag, n, tag, n);
    size_t len = (size_t)hl;
    /* Body lines depend on n so two messages of one size still differ. */
    unsigned line = 0;
    while (len + 2 < size || line == 0) {
        int k = snprintf(m + len, cap - len, "%s %u line %u %08x\r\n", tag, n, line,
                         (n * 2654435761u) ^ (line * 40503u));
        if (k < 0 || len + (size_t)k >= cap)
            break;
        len += (size_t)k;
        line++;
    }
    *len_r = len;
    return (uint8_t *)m;
}

uint8_t *harness_fetch_body(harness *h, const char *account, const char *mailbox, uint32_t uid,
                            size_t chunk, size_t *len_r, int *status_r)
{
    uint8_t *out = NULL;
    size_t len = 0;
    uint64_t total = 0;
    *status_r = TERN_STORE_OK;
    for (int rounds = 0;; rounds++) {
        tern_store_req *r = hreq(TERN_STORE_FETCH_BODY);
        r->in.account = account;
        r->in.name = mailbox;
        r->in.uid = uid;
        r->in.offset = len;
        r->in.max_len = chunk;
        int st = hrun(h, r);
        if (st != TERN_STORE_OK) {
            *status_r = st;
            tern_store_req_free(r);
            free(out);
            return NULL;
        }
        total = r->out.body_total;
        if (r->out.body_len > chunk || len + r->out.body_len > total ||
            (r->out.body_len == 0 && len < total) || rounds > 1000000) {
            /* A backend that returns too much, or nothing before the end,
             * would loop forever or overflow: report it as a failure. */
            *status_r = TERN_STORE_EIO;
            tern_store_req_free(r);
            free(out);
            return NULL;
        }
        uint8_t *n = realloc(out, len + r->out.body_len + 1);
        if (n == NULL)
            abort();
        out = n;
        if (r->out.body_len)
            memcpy(out + len, r->out.body, r->out.body_len);
        len += r->out.body_len;
        tern_store_req_free(r);
        if (len >= total)
            break;
    }
    if (out == NULL)
        out = malloc(1);
    *len_r = len;
    return out;
}

double harness_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

long harness_rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return -1;
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kib;
}
