/* Mail repositories: named directories where mailets (ToRepository) keep
 * mails for an admin to look at, delete or release back into processing.
 * One file per mail: a one-line JSON header (the envelope: sender,
 * recipients, qid, session, error attributes, time), a newline, then the
 * message. Files are written atomically (tmp/, fsync, rename, fsync of the
 * directory). Releasing moves a file to release/ under the name
 * "<id>@<processor>"; ternd's scan re-submits released mails to the spool
 * with that processor as the envelope's pipeline.
 *
 * Used by the ToRepository mailet, by ternctl (tools/ternctl_repository.c)
 * and by the server's release scan; it depends on lib/, conf/ and the
 * spool only. Input trusted: repository names and ids are checked here
 * (they become path components); file contents are parsed as untrusted
 * (an admin or a damaged disk may have changed them). */
#ifndef TERN_MAILETS_REPOSITORY_H
#define TERN_MAILETS_REPOSITORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "conf/config.h"
#include "lib/arena.h"
#include "lib/json.h"
#include "storage/queue/spool.h"

#define TERN_REPO_ID_MAX 96
#define TERN_REPO_MAX_FILE (512u << 20) /* a repository file larger than this is refused */
#define TERN_REPO_SCAN_BATCH 32         /* released mails re-submitted per scan at most */

/* [A-Za-z0-9._-], 1..64, not starting with '.'. */
bool tern_repository_name_ok(const char *name);
/* [A-Za-z0-9_-], 1..TERN_REPO_ID_MAX-1. */
bool tern_repository_id_ok(const char *id);
/* The base directory: mailets.repository_dir, or STATE_DIR/repositories. */
void tern_repository_base(const tern_config *cfg, char *out, size_t size);
/* A fresh id "<qid>-<8 hex>". */
void tern_repository_new_id(const char *qid, char *out, size_t size);

/* The JSON header of a mail (one line, no newline); malloc'd. Strings are
 * escaped; bytes that are not UTF-8 become U+FFFD. */
typedef struct tern_repo_meta {
    const char *id, *repository, *qid, *session, *sender, *processor;
    const char *listener, *remote_addr, *helo, *auth_user, *envid;
    tern_dsn_ret ret;
    bool smtputf8;
    int64_t time;
    const char *const *rcpts;
    const char *const *orcpts; /* per recipient, entries may be NULL; may be NULL */
    const uint8_t *notify;     /* per recipient; may be NULL */
    size_t n_rcpts;
    int64_t error_code; /* 0: none */
    const char *error_enhanced, *error_text, *error_processor;
    bool requiretls;    /* RFC 8689; written only when true */
} tern_repo_meta;
char *tern_repository_meta_json(const tern_repo_meta *m);

/* Blocking: writes dir/<id> atomically (dir/tmp/<id>, fsync, rename,
 * fsync dir), creating dir, dir/tmp and dir/release (0700) as needed.
 * Returns 0 or -errno. */
int tern_repository_write(const char *dir, const char *id, const char *json, const uint8_t *msg,
                          size_t len);

/* A loaded repository file. */
typedef struct tern_repo_entry {
    tern_arena arena;
    const tern_json *meta; /* the header object */
    uint8_t *data;         /* the whole file */
    size_t len;
    size_t msg_off;        /* where the message starts */
} tern_repo_entry;
/* Blocking. 0, or -1 with a reason in err. */
int tern_repository_load(const char *path, tern_repo_entry *e, char *err, size_t size);
/* The same from bytes in memory (pure): takes ownership of data (malloc'd;
 * freed by tern_repository_entry_free, also on failure); `what` names the
 * source in err. */
int tern_repository_parse(tern_repo_entry *e, uint8_t *data, size_t len, const char *what,
                          char *err, size_t size);
void tern_repository_entry_free(tern_repo_entry *e);
/* The envelope a released mail goes back to the spool with (strings
 * malloc'd; free with tern_repository_envelope_free). NULL when the header
 * lacks a sender or recipients. */
tern_envelope *tern_repository_envelope(const tern_repo_entry *e, const char *processor);
void tern_repository_envelope_free(tern_envelope *env);

/* The release scan. Reads up to TERN_REPO_SCAN_BATCH files from every
 * BASE/<repository>/release/ on a pool thread of `loop`, then, on the
 * loop, submits each to the spool through sc (pipeline = the processor of
 * its file name) and deletes the file once the spool entry is durable.
 * `posted(arg, qid)` runs for each new spool entry (hand it to a runner
 * with tern_runner_post, unless the spool's sink already does);
 * `done(arg, submitted, failed)` runs once at the end. A file that cannot
 * be read or submitted stays where it is and is logged (retried at the
 * next scan). Returns 0, or -errno when the scan could not start (done
 * is not called then). Run one scan at a time. */
typedef void (*tern_repo_posted_cb)(void *arg, const char *qid);
typedef void (*tern_repo_scan_done_cb)(void *arg, size_t submitted, size_t failed);
int tern_repository_scan_released(const tern_config *cfg, uv_loop_t *loop, tern_spool *spool,
                                  tern_spool_client *sc, tern_repo_posted_cb posted,
                                  tern_repo_scan_done_cb done, void *arg);

#endif
