/* MTA-STS for the remote queue (RFC 8461): which policy applies to a
 * destination domain (the `_mta-sts` TXT record, the policy fetched over
 * HTTPS, a cache in memory and under STATE_DIR/mta-sts that survives a
 * restart within max_age), what it means for each MX host (enforce: only
 * matching hosts, only over STARTTLS with a certificate valid for the host
 * name; testing: deliver, but record), and the TLS-RPT data (RFC 8460) of
 * every outcome. The queue calls in at three points: after MX resolution
 * (tern_mtasts_lookup), before connecting to a host (tern_mtasts_check_host,
 * tern_mtasts_params) and with the client's outcome (tern_mtasts_outcome).
 * Input: DNS answers and HTTPS responses (untrusted, parsed by lib/mta_sts);
 * the config and our own queue state (trusted). */
#ifndef TERN_QUEUE_MTASTS_H
#define TERN_QUEUE_MTASTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "lib/dns.h"
#include "lib/mta_sts.h"
#include "protocols/common/conn.h"
#include "protocols/smtp/smtp_client.h"
#include "server/tlsrpt.h"

/* At most this many domains' policies are kept (memory and files). */
#define TERN_MTASTS_CACHE_MAX 10000

typedef struct tern_mtasts tern_mtasts;

typedef struct tern_mtasts_env {
    uv_loop_t *loop;
    tern_conn_worker *worker;
    tern_dns_resolver *dns;    /* the queue's; outlives the requests */
    const char *state_dir;     /* the cache and the TLS-RPT files live under it */
    const char *ca_file;       /* NULL: the system bundle */
    uint16_t port;             /* of the policy host; 443 */
    const char *org;           /* our host name, for the TLS-RPT reports */
} tern_mtasts_env;

/* The policy an attempt applies (copied into the attempt). mode UNSET:
 * none (no record, mode none, or fetching failed without a cache). */
typedef struct tern_sts_applied {
    tern_sts_mode mode;
    tern_sts_policy policy;
    char rua[TERN_TLSRPT_RUA_MAX + 1]; /* "" when the domain publishes none */
} tern_sts_applied;

typedef void (*tern_mtasts_cb)(void *arg, const tern_sts_applied *s);
typedef struct tern_mtasts_req tern_mtasts_req;

/* NULL with a message in err (the CA file does not load, no memory). */
tern_mtasts *tern_mtasts_new(const tern_mtasts_env *env, char *err, size_t err_size);
/* Ends fetches in flight (their lookups answer "no policy"), writes the
 * TLS-RPT data, closes the handles: the loop must run on, then free. */
void tern_mtasts_close(tern_mtasts *m);
void tern_mtasts_free(tern_mtasts *m);

/* The policy of `domain`, asynchronously: cb runs once on the loop (it may
 * run before this returns while the queue is closing). Returns -1 when the
 * lookup could not start (cb will not run: go on without a policy). */
int tern_mtasts_lookup(tern_mtasts *m, const char *domain, tern_mtasts_cb cb, void *arg);

/* May the queue connect to MX `host` of `domain` under s? 0: yes; -1: no
 * (enforce and the host matches no mx pattern), with a 4.7.5 reason in
 * err. A mismatch is recorded for TLS-RPT in enforce and testing mode. */
int tern_mtasts_check_host(tern_mtasts *m, const char *domain, const tern_sts_applied *s,
                           const char *host, char *err, size_t err_size);
/* Sets the client parameters a policy needs: the MTA-STS CA set for the
 * certificate check, and in enforce mode STARTTLS required with a
 * certificate that verifies (PKIX) for the MX name. */
void tern_mtasts_params(tern_mtasts *m, const tern_sts_applied *s, tern_smtp_client_params *p);
/* Records the outcome of one session with `host` for TLS-RPT. */
void tern_mtasts_outcome(tern_mtasts *m, const char *domain, const tern_sts_applied *s,
                         const char *host, const tern_smtp_outcome *o);
/* The same for a session under DANE (the host's usable TLSA records
 * recs[0..n)): a "tlsa" policy in TLS-RPT instead of the MTA-STS one
 * (RFC 8461 2: DANE takes precedence). s may be NULL (then no rua). */
void tern_mtasts_outcome_dane(tern_mtasts *m, const char *domain, const tern_sts_applied *s,
                              const char *host, const tern_tlsa *recs, size_t n,
                              const tern_smtp_outcome *o);
/* A host left out because its TLSA lookup failed or was bogus: a failed
 * "tlsa" session of type dnssec-invalid. */
void tern_mtasts_dane_unusable(tern_mtasts *m, const char *domain, const tern_sts_applied *s,
                               const char *host, const char *why);

#endif
