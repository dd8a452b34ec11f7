/* Shared by the store conformance suite, the fault-test program and the
 * store benchmark: a tern_config built by hand for one backend (no YAML),
 * a private PostgreSQL database per run, and small synchronous wrappers
 * over store.h. Trusts: TERN_TEST_PG_CONNINFO (from tests/pg/start) names a
 * cluster where we may CREATE and DROP databases. */
#ifndef TERN_TEST_STORE_HARNESS_H
#define TERN_TEST_STORE_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storage/store.h"

typedef struct harness {
    tern_config *cfg;
    tern_store *store;
    bool pg;
    bool blob;              /* pg-blob: pg with postgres.blob_dir = blob_dir */
    char blob_dir[300];
    char dir[256];          /* temp dir: state_dir, local.path under it */
    char *pg_base;          /* the conninfo we were given (pg) */
    char pg_db[64];         /* the database this run made (pg) */
    bool db_given;          /* the database is the caller's: never dropped */
    bool keep;              /* leave the dir / database for a later process */
} harness;

/* "local", "pg" or "pg-blob" (pg with a blob directory). For pg, base_conninfo NULL means TERN_TEST_PG_CONNINFO;
 * returns 1 (and prints why) when pg has no conninfo: the caller skips.
 * dir NULL: a fresh mkdtemp dir. db NULL: a fresh database (dropped by
 * harness_fini); db given: an existing one, kept. Returns 0 or -1
 * with a message on stderr. Does not open the store. */
int harness_init(harness *h, const char *backend, const char *dir, const char *db);
int harness_open(harness *h);
void harness_close_store(harness *h);
/* Closes the store, then removes the dir and drops the database unless
 * h->keep. */
void harness_fini(harness *h);

/* CREATE / DROP DATABASE `name` on the cluster of TERN_TEST_PG_CONNINFO. */
int harness_pg_create_db(const char *name);
int harness_pg_drop_db(const char *name);

/* A synchronous request on h->store; the caller frees it. */
tern_store_req *hreq(tern_store_op op);
int hrun(harness *h, tern_store_req *r);

/* Creates the domain (EEXISTS is fine) and the account (EEXISTS fine). */
int harness_account(harness *h, const char *account, uint64_t quota_bytes, uint64_t quota_messages);

/* A message of about `size` bytes, CRLF line endings, whose content is a
 * pure function of (tag, n, size): the fault tests regenerate it to check
 * what they read back. malloc'd. */
uint8_t *harness_message(const char *tag, unsigned n, size_t size, size_t *len_r);

/* Reads a message's whole body through FETCH_BODY in chunks of `chunk`
 * bytes. malloc'd, or NULL with the status in *status_r. */
uint8_t *harness_fetch_body(harness *h, const char *account, const char *mailbox, uint32_t uid,
                            size_t chunk, size_t *len_r, int *status_r);

double harness_now(void);
/* VmRSS in KiB. */
long harness_rss_kib(void);

#endif
