/* Starting a libpq connection without a DNS lookup on the event loop.
 * libpq resolves host= names inside PQconnectStart/PQconnectPoll with a
 * blocking getaddrinfo; both users of libpq in ternd (the store's pool on
 * its own loop, the sql auth backend on the worker loops) start their
 * connections here instead, so a conninfo naming its server by host name
 * costs a thread-pool lookup, not a stalled loop. Lives with the pg
 * backend because every libpq user already links it. */
#ifndef TERN_STORAGE_PG_PQ_CONNECT_H
#define TERN_STORAGE_PG_PQ_CONNECT_H

#include <libpq-fe.h>
#include <uv.h>

/* The host= of conninfo when it is one DNS name without hostaddr=, which
 * must be looked up before connecting (malloc'd), else NULL: addresses,
 * unix socket directories and lists (host=a,b) are libpq's. NULL too when
 * conninfo does not parse. */
char *tern_pq_host_to_resolve(const char *conninfo);

/* PQconnectStartParams of conninfo with fallback_application_name, and,
 * when given, host and hostaddr lists overriding the conninfo's. */
PGconn *tern_pq_start(const char *conninfo, const char *appname, const char *hosts,
                      const char *addrs);

typedef struct tern_pq_lookup tern_pq_lookup;
/* The lookup ended: pq is the started connection (check PQstatus), or
 * NULL with error saying why (the name did not resolve). */
typedef void (*tern_pq_started_cb)(void *arg, PGconn *pq, const char *error);

/* Looks host up on libuv's thread pool, then starts the connection with
 * every address found (libpq tries them in turn; host= still names the
 * server for sslmode=verify-full and .pgpass). The strings are copied.
 * Returns NULL when the lookup could not start. */
tern_pq_lookup *tern_pq_start_resolved(uv_loop_t *loop, const char *conninfo, const char *host,
                                       const char *appname, tern_pq_started_cb cb, void *arg);
/* The callback will not run; the lookup frees itself when libuv is done. */
void tern_pq_lookup_cancel(tern_pq_lookup *l);

#endif
