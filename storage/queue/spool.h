/* The durable spool: where a message becomes the server's. A message is
 * acknowledged (SMTP 250) only after its record is on disk and fsynced.
 * Writes happen on the spool's own thread, never an event-loop thread, and
 * are group-committed: every message that arrived while the previous fsync
 * ran is written and made durable by one fdatasync. Completion callbacks run
 * on the submitting loop. Input trusted: envelopes and bodies from our own
 * sessions; on replay, the files on disk are checked (length, checksum) and a
 * damaged record is logged and skipped, never crashes the server. */
#ifndef TERN_SPOOL_H
#define TERN_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "lib/util.h"

/* DSN NOTIFY bits (RFC 3461); 0 = not given. */
#define TERN_NOTIFY_NEVER   0x01
#define TERN_NOTIFY_SUCCESS 0x02
#define TERN_NOTIFY_FAILURE 0x04
#define TERN_NOTIFY_DELAY   0x08

/* The envelope's `pipeline` of a message owned by the remote queue: the
 * mailet chain is done with it (RemoteDelivery wrote it, with the final
 * message and only the remote recipients); the queue manager delivers it
 * and replay does not run the pipeline on it again. */
#define TERN_QUEUE_PIPELINE "@queue"

typedef enum { TERN_RET_NONE = 0, TERN_RET_FULL, TERN_RET_HDRS } tern_dsn_ret;
typedef enum { TERN_BODY_7BIT = 0, TERN_BODY_8BITMIME, TERN_BODY_BINARYMIME } tern_body_type;

typedef struct tern_spool_rcpt {
    char *addr;     /* the forward-path without <>; UTF-8 when smtputf8 */
    char *orcpt;    /* ORCPT value as received ("rfc822;x@y"), or NULL */
    uint8_t notify; /* TERN_NOTIFY_* */
    bool done;      /* finished by the pipeline (a RCPT_STATE record); not in the envelope */
    bool queued;    /* handed to the remote queue as it is (a RCPT_STATE record) */
    /* The remote queue's retry state (the last RCPT_RETRY record), so a
     * restart neither retries everything at once nor restarts the count.
     * Not in the envelope encoding. */
    uint32_t attempts;
    int64_t next_try;     /* wall clock, unix milliseconds; 0: now */
    uint8_t qflags;       /* TERN_QFLAG_* */
    char *last_error;     /* or NULL; bounded by TERN_SPOOL_MAX_RETRY_ERROR */
} tern_spool_rcpt;

/* tern_spool_rcpt.qflags */
#define TERN_QFLAG_DELAY_SENT 0x01 /* the "delayed" DSN went out (once per recipient) */
#define TERN_SPOOL_MAX_RETRY_ERROR 512

typedef struct tern_envelope {
    char qid[TERN_QID_LEN];
    char *mail_from;        /* reverse-path without <>; "" is the null sender */
    tern_spool_rcpt *rcpts;
    size_t n_rcpts;
    char *envid;            /* DSN ENVID (xtext-decoded) or NULL */
    tern_dsn_ret ret;
    tern_body_type body;
    bool smtputf8;
    char *auth_user;        /* authenticated identity or NULL */
    char *helo;             /* EHLO/HELO argument */
    char *client_addr;      /* text address of the client */
    char *session_id;       /* session UUID, for the log */
    char *listener;         /* listener name */
    char *pipeline;         /* mailet processor the message enters */
    int64_t received_at;    /* unix seconds */
    uint64_t size;          /* message bytes as stored (with our Received header) */
    bool held;              /* the queue must not deliver it (a RCPT_RETRY record) */
    bool requiretls;        /* MAIL FROM ... REQUIRETLS (RFC 8689): TLS all the way */
} tern_envelope;

/* A message body being received: in memory up to `mem_threshold`, then in
 * an unlinked temp file under the spool's tmp/ directory. Appends that need
 * the disk are done on the libuv thread pool; tern_body_append reports
 * whether the caller must wait (pause reading) for `cb`. */
typedef struct tern_body tern_body;
typedef void (*tern_body_cb)(void *arg, int status); /* status 0 or -errno */

tern_body *tern_body_new(uv_loop_t *loop, const char *tmpdir, uint64_t mem_threshold);
/* Returns 0 when the bytes were taken synchronously, 1 when a disk write is
 * in flight and cb will be called (do not append again before it), or
 * -errno. */
int tern_body_append(tern_body *b, const uint8_t *data, size_t len, tern_body_cb cb, void *arg);
uint64_t tern_body_size(const tern_body *b);
/* Frees memory and closes the temp file; must not be called while an append
 * is in flight. */
void tern_body_free(tern_body *b);

typedef struct tern_spool tern_spool;
typedef struct tern_spool_client tern_spool_client;

typedef struct tern_spool_opts {
    uint64_t segment_size;          /* rotate segments past this size */
    uint32_t group_commit_max;      /* messages per fsync at most */
    uint64_t group_commit_delay_us; /* extra wait to gather a batch; 0 = none */
    bool fsync;                     /* false only for benchmarks comparing against no-fsync peers */
} tern_spool_opts;

/* Opens (creating) the spool in `dir`, replays it to rebuild the set of live
 * messages, and starts the writer thread. Returns 0 or -1 with *error_r
 * (malloc'd). */
int tern_spool_open(const char *dir, const tern_spool_opts *opts, tern_spool **spool_r, char **error_r);
/* Stops the writer after finishing what was submitted, closes files. */
void tern_spool_close(tern_spool *s);
const char *tern_spool_tmpdir(const tern_spool *s);

/* One per event loop that submits; completion callbacks run on that loop. */
tern_spool_client *tern_spool_client_new(tern_spool *s, uv_loop_t *loop);
/* Closes the client's handles; pending submissions still complete first. */
void tern_spool_client_close(tern_spool_client *c);

/* Called on the submitting loop once the message is durable (status 0, and
 * env->qid filled) or failed (status -errno, message in error). */
typedef void (*tern_spool_submit_cb)(void *arg, int status, const char *qid, const char *error);

/* Takes ownership of `body` (freed by the spool) and copies what it needs
 * from `env` and `prefix` (our Received header, prepended to the stored
 * message) before returning. When env->qid already holds a valid qid
 * (from tern_qid) it is used, so the caller can name it in the message;
 * otherwise one is assigned here and written to env->qid. The caller must
 * not reuse a qid. Returns 0 or -errno (then nothing was taken). */
int tern_spool_submit(tern_spool_client *c, tern_envelope *env, const char *prefix,
                      size_t prefix_len, tern_body *body, tern_spool_submit_cb cb, void *arg);

/* Live messages (durable and not yet completed). `cb` gets each envelope,
 * in arrival order; the envelope is valid only during the call. Safe from
 * any thread. Returns the count. */
typedef void (*tern_spool_each_cb)(void *arg, const tern_envelope *env);
size_t tern_spool_each(tern_spool *s, tern_spool_each_cb cb, void *arg);
/* Called on the writer thread for every message once it is durable (new
 * ones, and at open for those replayed): the hand-off to processing. */
typedef void (*tern_spool_sink_cb)(void *arg, const tern_envelope *env);
void tern_spool_set_sink(tern_spool *s, tern_spool_sink_cb cb, void *arg);

/* Reads the stored message (prefix + body) of a live qid into a malloc'd
 * buffer. Blocking: call from a pool thread, not a loop thread. */
int tern_spool_read_message(tern_spool *s, const char *qid, uint8_t **data_r, size_t *len_r);
/* Marks a message completed (every recipient done). Durable by the next
 * group commit; space is reclaimed when a segment holds no live message. */
int tern_spool_complete(tern_spool *s, const char *qid);

/* Records that recipient `idx` of a live message is finished (delivered,
 * bounced or dropped on purpose), so that a replay after a crash does not
 * process it again. Durable with the next group commit. Safe from any
 * thread. Returns 0 or -errno (-ENOENT: not live). */
int tern_spool_rcpt_done(tern_spool *s, const char *qid, size_t idx);
/* Records that recipient `idx` is handed to the remote queue with the
 * message as stored: the pipeline is done with it, the entry stays live
 * for the queue manager. */
int tern_spool_rcpt_queued(tern_spool *s, const char *qid, size_t idx);
/* Completes the message if every recipient is recorded done (the pipeline
 * and the queue manager may finish their parts in either order). Returns
 * 1 when it completed it, 0 when some recipient is not done, -errno. */
int tern_spool_complete_if_done(tern_spool *s, const char *qid);
/* Records recipient `idx`'s retry state for the remote queue (attempts,
 * next try in unix ms, flags, last error truncated to
 * TERN_SPOOL_MAX_RETRY_ERROR). A bookkeeping record: durable with the next
 * group commit, replayed into the envelope's rcpts (last one wins). Safe
 * from any thread. Returns 0 or -errno (-ENOENT: not live). */
int tern_spool_rcpt_retry(tern_spool *s, const char *qid, size_t idx, uint32_t attempts,
                          int64_t next_try, uint8_t qflags, const char *last_error);
/* Records that the whole message is held (or released) by the admin. */
int tern_spool_hold(tern_spool *s, const char *qid, bool held);
/* A deep copy of a live message's envelope (recipients' done flags
 * included), or NULL. Free with tern_envelope_free. Safe from any thread. */
tern_envelope *tern_spool_envelope_dup(tern_spool *s, const char *qid);
void tern_envelope_free(tern_envelope *env);

/* Offline inspection for tools: opens read-only, no writer thread. */
int tern_spool_open_readonly(const char *dir, tern_spool **spool_r, char **error_r);

#endif
