/* The mailet engine: a pipeline (the processors of one config snapshot,
 * with their matcher and mailet instances, builtin or plugin) and a runner
 * per event loop that carries mails through it. The server builds a
 * pipeline with each config snapshot (start-up and SIGHUP, on a pool
 * thread: plugins are dlopened and regexes compiled there, and every error
 * is reported like a config error); a mail holds a reference to the
 * pipeline it started on and finishes on it.
 *
 * Input trusted: the config snapshot (validated) and the spool's records;
 * what matchers and mailets return is range-checked. */
#ifndef TERN_MAILETS_ENGINE_H
#define TERN_MAILETS_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "conf/config.h"
#include "mailets/mail.h"
#include "mailets/tern/mailet.h"
#include "storage/queue/spool.h"
#include "storage/store.h"

struct tern_auth;
typedef struct tern_pipeline tern_pipeline;
typedef struct tern_runner tern_runner;

/* ---- building a pipeline ------------------------------------------------ */

/* Builds the processors of cfg (cfg->processors, or the shipped default
 * chain), instantiating every matcher and mailet and loading the plugins.
 * Every problem is added to errs with its config path; returns NULL then.
 * Keeps references to cfg and auth (auth may be NULL: no backend lookups).
 * Blocking (dlopen, init hooks): call at start-up or on a pool thread. */
tern_pipeline *tern_pipeline_build(tern_config *cfg, struct tern_auth *auth,
                                   tern_config_errors *errs);
tern_pipeline *tern_pipeline_ref(tern_pipeline *p);
void tern_pipeline_unref(tern_pipeline *p);
const tern_config *tern_pipeline_config(const tern_pipeline *p);
/* Index of a processor by name, or -1. */
int tern_pipeline_processor(const tern_pipeline *p, const char *name);

/* ---- the module registry (builtins) ------------------------------------- */

const tern_mailet_module *tern_builtin_find(const char *name);
/* Copies up to max registered builtins into out; returns how many exist. */
size_t tern_builtin_list(const tern_mailet_module **out, size_t max);
/* The host table given to every module (builtin or plugin). */
const tern_mailet_host *tern_mailet_host_table(void);

/* Parameter lookup for builtins: the scalar value of key, or NULL. */
const char *tern_param_str(const tern_mailet_params *p, const char *key);
const tern_mailet_param *tern_param_get(const tern_mailet_params *p, const char *key);
/* Fails init with "unknown parameter X (known: ...)" unless every key of p
 * is in the NULL-terminated `known`. Returns 0 or -1 with err filled. */
int tern_param_check(const tern_mailet_params *p, const char *const *known, char *err, size_t size);

/* ---- runners ------------------------------------------------------------ */

/* What a runner needs from the server: where new mail is written and where
 * mailboxes are, and the pipeline of the current snapshot (a reference). */
typedef struct tern_runner_env {
    uv_loop_t *loop;
    tern_spool *spool;
    tern_spool_client *spool_client;
    tern_store_client *store_client;
    tern_pipeline *(*current)(void *arg); /* returns a new reference */
    void *current_arg;
    /* Picks the runner a new or replayed mail goes to (spreading work
     * over the worker loops); NULL: this runner. */
    tern_runner *(*pick)(void *arg);
    void *pick_arg;
    /* Tells the remote queue that spool message qid has recipients for it
     * (thread-safe on the callee's side); NULL: nobody listens. */
    void (*queued)(void *arg, const char *qid);
    void *queued_arg;
} tern_runner_env;

tern_runner *tern_runner_new(const tern_runner_env *env);
/* Stops timers; mails in flight keep their spool entries and are replayed
 * at the next start. Call on the runner's loop. Frees once idle. */
void tern_runner_close(tern_runner *r);
size_t tern_runner_inflight(const tern_runner *r);

/* The answer to the SMTP client after the entry processor (in-session). */
typedef struct tern_pipeline_outcome {
    bool accepted;        /* 250 */
    bool tempfail;        /* 4xx */
    int code;             /* the reply code when not accepted */
    char enhanced[16];
    char text[256];
} tern_pipeline_outcome;
typedef void (*tern_pipeline_outcome_cb)(void *arg, const tern_pipeline_outcome *o);

typedef struct tern_mail_job tern_mail_job;

/* Starts processing the durable spool message `qid` on this runner's loop,
 * from its envelope's pipeline (or "root"). With cb (in-session), cb runs
 * once the entry processor is done, or after deadline_ms (then accepted:
 * the mail is already durable and goes on in the background). Returns a
 * handle that tern_mail_job_forget() detaches from cb (the session went
 * away), or NULL when it could not start (cb will not run; the spool
 * entry stays and is replayed at the next start). */
tern_mail_job *tern_runner_start(tern_runner *r, const char *qid, uint64_t deadline_ms,
                                 tern_pipeline_outcome_cb cb, void *arg);
/* The directory's answer the SMTP session already had for recipient i of
 * the envelope (its RCPT check), so the runner does not ask again before
 * the first step. addr NULL: no answer for that recipient. */
typedef struct tern_rcpt_hint {
    const char *addr;       /* the recipient it answers for, as spooled */
    tern_rcpt_result res;
} tern_rcpt_hint;
/* tern_runner_start with hints[0..n) for the envelope's recipients (copied:
 * the caller's may go away at once). */
tern_mail_job *tern_runner_start_hinted(tern_runner *r, const char *qid, uint64_t deadline_ms,
                                        tern_pipeline_outcome_cb cb, void *arg,
                                        const tern_rcpt_hint *hints, size_t n_hints);
void tern_mail_job_forget(tern_mail_job *j);
/* Thread-safe: queue spool message qid for processing on runner r (its
 * loop picks it up). For replay at start-up and for mail made by mailets
 * on other loops. */
int tern_runner_post(tern_runner *r, const char *qid);

/* ---- what builtins may use besides mail.h ------------------------------ */

const tern_config *tern_mail_config(const tern_mail *m);
struct tern_auth *tern_mail_auth(const tern_mail *m);
tern_store_client *tern_mail_store(const tern_mail *m);
uv_loop_t *tern_mail_loop(const tern_mail *m);
/* The directory's answer for recipient i (filled before every step). */
const tern_rcpt_entry *tern_mail_rcpt_info(const tern_mail *m, size_t i);
void tern_mail_log(const tern_mail *m, tern_mailet_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int tern_mail_call_async(tern_mail *m, tern_mailet_work_fn work, tern_mailet_done_fn done,
                         void *arg);
void tern_mail_resume(tern_mail *m, tern_mailet_verdict v, const tern_mailet_result *res);
/* Recipient i reached its end (delivered, or handed over) and leaves this
 * mail: `how` is logged. Its original spool recipient is recorded done
 * once nothing derived from it is left, so a replay never repeats it. */
void tern_mail_rcpt_done(tern_mail *m, size_t i, const char *how);
/* Recipient i is handed to the remote queue with the message as stored in
 * the spool (only valid when tern_mail_remote_as_stored() says so): it
 * leaves the mail, is recorded queued, and the entry stays alive for the
 * queue manager. */
void tern_mail_rcpt_remote(tern_mail *m, size_t i);
/* Whether recipient i can be queued from the stored message as it is: the
 * mail is unchanged and i is one of the envelope's own recipients. */
bool tern_mail_remote_as_stored(const tern_mail *m, size_t i);

/* A new mail made by a mailet (bounce, forward copy, notification): written
 * durably to the spool with the parent's session data, then processed from
 * `processor` on some runner. done(m, arg) runs on m's loop with status 0
 * once durable or -errno. */
typedef void (*tern_mail_spawn_cb)(tern_mail *m, void *arg, int status);
int tern_mail_spawn(tern_mail *m, const char *sender, const char *const *rcpts, size_t n_rcpts,
                    const uint8_t *msg, size_t len, const char *processor,
                    tern_mail_spawn_cb done, void *arg);

/* Writes the mail as it is now (header changes included) to the spool as
 * a message owned by the remote queue (TERN_QUEUE_PIPELINE) for the
 * recipients at `idx` (each keeps its ORCPT and NOTIFY; ENVID, RET and
 * the session data are the original's). done(m, arg, status, qid) runs on
 * m's loop once durable (status 0) or failed. The caller then finishes
 * those recipients: they are the queue's from now on. */
typedef void (*tern_mail_queued_cb)(tern_mail *m, void *arg, int status, const char *qid);
int tern_mail_queue_remote(tern_mail *m, const size_t *idx, size_t n, tern_mail_queued_cb done,
                           void *arg);

/* ---- a mail outside any runner: unit tests of matchers and mailets ------ */

/* A mail built from an envelope and a message, attached to pipeline p (may
 * be NULL; then tern_mail_config() must not be called) but to no runner:
 * matchers and synchronous mailets can run on it; the store, spawn and
 * call_async cannot. Free with tern_mail_standalone_free. */
tern_mail *tern_mail_standalone(const tern_envelope *env, const uint8_t *msg, size_t len,
                                tern_pipeline *p);
void tern_mail_standalone_free(tern_mail *m);

#endif
