/* The remote queue manager (server/queue.c): delivers the recipients that
 * RemoteDelivery handed over, with MX resolution, retries, bounces and
 * concurrency limits. Runs on the main loop. */
#ifndef TERN_SERVER_QUEUE_H
#define TERN_SERVER_QUEUE_H

#include <stddef.h>
#include <uv.h>

#include "conf/config.h"
#include "lib/buf.h"
#include "lib/dns.h"
#include "mailets/builtin/dsn_build.h"
#include "storage/queue/spool.h"

typedef struct tern_queue tern_queue;

typedef struct tern_queue_env {
    uv_loop_t *loop;
    tern_spool *spool;
    const tern_dns_options *dns;          /* read at creation */
    /* The current config's queue settings and our host name (the snapshot
     * changes on SIGHUP; these read the current one, on the loop). */
    const tern_queue_conf *(*conf)(void *arg);
    const char *(*helo)(void *arg);
    void *conf_arg;
    /* A delivery failed for these recipients: send the sender a DSN. */
    void (*bounce)(void *arg, const tern_envelope *env, const tern_dsn_rcpt *rcpts, size_t n,
                   const uint8_t *msg, size_t len);
    void *bounce_arg;
    const char *state_dir;   /* MTA-STS cache and TLS-RPT files live under it; NULL: "." */
    /* Recipients that asked NOTIFY=DELAY are still deferred after
     * queue.delay_warning: send the sender a "delayed" DSN (bounce_arg).
     * NULL: none are sent. */
    void (*delay)(void *arg, const tern_envelope *env, const tern_dsn_rcpt *rcpts, size_t n,
                  const uint8_t *msg, size_t len);
    /* A reference to the current config snapshot (conf_arg). A delivery
     * holds one while its connection runs: the client keeps pointers into
     * it (HELO name, smarthost login), and a SIGHUP must not free them
     * under it. NULL: nothing is held (tests with a static config). */
    tern_config *(*config_ref)(void *arg);
} tern_queue_env;

/* Creates the manager (and its resolver) and schedules a scan of the spool
 * for messages with queued recipients. Call on the loop's thread. */
tern_queue *tern_queue_new(const tern_queue_env *env, char *err, size_t err_size);
/* Thread-safe: message qid has (new) recipients for the queue. The
 * signature fits tern_runner_env.queued. */
void tern_queue_notify(void *q, const char *qid);
/* Starts what is due now (also runs every second). */
void tern_queue_kick(tern_queue *q);
size_t tern_queue_size(const tern_queue *q);
/* Cancels deliveries in flight (retried at the next start) and closes the
 * handles; later notifications are dropped (the spool keeps what they
 * said). The loop must run on for the handles to close. */
void tern_queue_close(tern_queue *q);
/* ---- administration (the control socket, later the admin HTTP API) ----
 * All on the loop's thread. The writers append one JSON value to out. */
/* {"messages":[MESSAGE...]}; MESSAGE is what tern_queue_show writes. */
int tern_queue_list(tern_queue *q, tern_buf *out);
/* {"qid","age_s","sender","size","held","recipients":[{"rcpt","state"
 * (pending|deferred|held|active),"attempts","next_try" (unix s, 0: now),
 * "last_error"}]}. -ENOENT when qid is not in the queue. */
int tern_queue_show(tern_queue *q, const char *qid, tern_buf *out);
/* Makes qid's waiting recipients (every message's with qid NULL) due now.
 * Returns how many recipients, or -ENOENT. */
int tern_queue_retry(tern_queue *q, const char *qid);
/* Held messages are not delivered until released; persisted in the
 * spool. Attempts in flight finish. 0 or -ENOENT. */
int tern_queue_hold(tern_queue *q, const char *qid);
int tern_queue_release(tern_queue *q, const char *qid);
/* Ends qid's recipients without a bounce (logged) and completes the entry
 * when the pipeline has none left. -ENOENT, or -EBUSY while an attempt is
 * in flight (retry after it). */
int tern_queue_delete(tern_queue *q, const char *qid);

/* {"hosts":[{"addr","state" (up|down|probe-due|probing),"failures",
 * "down_until" (unix s, 0: up)}]}: the circuit breakers. */
int tern_queue_hosts(tern_queue *q, tern_buf *out);

/* Frees the manager: after tern_queue_close, once the loop has stopped
 * and no thread can notify any more (the workers are joined). */
void tern_queue_free(tern_queue *q);

#endif
