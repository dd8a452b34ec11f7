/* The mail as the engine and the builtins see it: envelope, recipients with
 * their directory lookup, header fields, a shared body and attributes.
 * Builtins call these functions directly; plugins reach the same functions
 * through the host table of tern/mailet.h. Input trusted: the spool's
 * envelope and message (our own record); header and body bytes themselves
 * are the sender's and are handled as untrusted bytes. */
#ifndef TERN_MAILETS_MAIL_H
#define TERN_MAILETS_MAIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mailets/tern/mailet.h"
#include "storage/queue/spool.h"
#include "storage/store.h"

/* Bounds that keep one mail from growing without limit in a chain. */
#define TERN_MAIL_MAX_RCPTS 10000
#define TERN_MAIL_MAX_FIELDS 2000
#define TERN_MAIL_MAX_ATTRS 1000
#define TERN_MAIL_MAX_VALUE 65536

typedef enum {
    TERN_LOOKUP_PENDING = 0, /* not asked yet */
    TERN_LOOKUP_DONE,
    TERN_LOOKUP_FAILED,      /* the directory could not answer (tempfail) */
} tern_lookup_state;

typedef struct tern_rcpt_entry {
    char *addr;
    int orig;               /* index of the spool recipient it derives from, -1 if added */
    /* The directory's answer (store RCPT_LOOKUP, then auth USER_EXISTS for
     * our domains), filled by the engine before each step. */
    tern_lookup_state lookup;
    tern_rcpt_kind kind;
    char *account;          /* ACCOUNT: the account; NULL otherwise */
    char *detail;           /* "+detail" when sub-addressing matched */
    char **targets;         /* ALIAS: targets */
    size_t n_targets;
    bool catch_all;
} tern_rcpt_entry;

typedef struct tern_mail_field {
    char *name;
    char *value;            /* unfolded, trimmed */
    char *raw;              /* the field as received, folded, with CRLF; NULL once changed */
    size_t raw_len;         /* its length (the sender's bytes may hold a NUL) */
} tern_mail_field;

typedef enum { TERN_ATTR_STR = 1, TERN_ATTR_INT, TERN_ATTR_BOOL } tern_attr_type;

typedef struct tern_mail_attr {
    char *key;
    tern_attr_type type;
    char *s;
    int64_t i;
} tern_mail_attr;

typedef struct tern_mail_body tern_mail_body; /* refcounted, shared by clones */

struct tern_mail_job;
struct tern_runner;
struct tern_pipeline;

struct tern_mail {
    struct tern_mail_job *job;  /* the spool entry it came from (shared by clones) */
    struct tern_runner *runner; /* the loop it runs on */
    struct tern_pipeline *pipeline;
    char *sender;
    tern_rcpt_entry *rcpts;
    size_t n_rcpts, cap_rcpts;
    tern_mail_field *fields;
    size_t n_fields, cap_fields;
    tern_mail_body *body;
    tern_mail_attr *attrs;
    size_t n_attrs, cap_attrs;
    /* Where it is: processor index and step index. */
    size_t proc, step;
    const char *step_name;      /* for the log: the current mailet */
    bool modified;              /* sender, header or body changed since the spool */
    int state;                  /* engine's */
    void *engine_priv;          /* engine's */
};

/* ---- building ---------------------------------------------------------- */

/* Parses a stored message (header section, then body) into a new mail with
 * the envelope's sender and the recipients not yet done. NULL on OOM. */
tern_mail *tern_mail_from_message(const tern_envelope *env, const uint8_t *msg, size_t len);
/* A copy sharing the body; recipients are not copied (the caller adds). */
tern_mail *tern_mail_clone_empty(const tern_mail *m);
void tern_mail_free(tern_mail *m);
/* The whole message (fields, empty line, body) in a malloc'd buffer. */
uint8_t *tern_mail_serialize(const tern_mail *m, size_t *len_r);

/* ---- envelope ---------------------------------------------------------- */

const char *tern_mail_qid(const tern_mail *m);
const char *tern_mail_sender(const tern_mail *m);
int tern_mail_set_sender(tern_mail *m, const char *addr);
size_t tern_mail_rcpt_count(const tern_mail *m);
const char *tern_mail_rcpt(const tern_mail *m, size_t i);
int tern_mail_rcpt_add(tern_mail *m, const char *addr);
/* Adds a recipient derived from an original one (keeps its orig). */
int tern_mail_rcpt_add_derived(tern_mail *m, const char *addr, int orig);
int tern_mail_rcpt_remove(tern_mail *m, size_t i);
int tern_mail_rcpt_replace(tern_mail *m, size_t i, const char *addr);
const char *tern_mail_remote_addr(const tern_mail *m);
const char *tern_mail_helo(const tern_mail *m);
const char *tern_mail_auth_user(const tern_mail *m);
const char *tern_mail_listener(const tern_mail *m);
const char *tern_mail_session_id(const tern_mail *m);
const tern_envelope *tern_mail_envelope(const tern_mail *m);

/* ---- header ------------------------------------------------------------- */

size_t tern_mail_header_count(const tern_mail *m, const char *name);
const char *tern_mail_header_get(const tern_mail *m, const char *name, size_t idx);
const char *tern_mail_header_name_at(const tern_mail *m, size_t pos);
const char *tern_mail_header_value_at(const tern_mail *m, size_t pos);
/* RFC 5322 ftext (printable ASCII but ':'), at most 128 bytes: what the
 * header functions accept as a field name, for mailets checking their
 * parameters at init. */
bool tern_mail_header_name_ok(const char *name);
int tern_mail_header_add(tern_mail *m, const char *name, const char *value);
int tern_mail_header_set(tern_mail *m, const char *name, const char *value);
int tern_mail_header_remove(tern_mail *m, const char *name);

/* ---- message ----------------------------------------------------------- */

uint64_t tern_mail_size(const tern_mail *m);
uint64_t tern_mail_body_size(const tern_mail *m);
const uint8_t *tern_mail_body_data(const tern_mail *m); /* the whole body, contiguous */
size_t tern_mail_body_read(const tern_mail *m, uint64_t offset, void *buf, size_t len);
int tern_mail_body_replace(tern_mail *m, const void *data, size_t len);

/* ---- attributes -------------------------------------------------------- */

int tern_mail_attr_set_str(tern_mail *m, const char *key, const char *value);
int tern_mail_attr_set_int(tern_mail *m, const char *key, int64_t value);
int tern_mail_attr_set_bool(tern_mail *m, const char *key, bool value);
const char *tern_mail_attr_get_str(const tern_mail *m, const char *key);
bool tern_mail_attr_get_int(const tern_mail *m, const char *key, int64_t *value_r);
bool tern_mail_attr_get_bool(const tern_mail *m, const char *key, bool *value_r);
bool tern_mail_attr_has(const tern_mail *m, const char *key);
int tern_mail_attr_remove(tern_mail *m, const char *key);

/* The same for plugins: keys in the engine's "tern." namespace are refused. */
int tern_mail_attr_set_str_public(tern_mail *m, const char *key, const char *value);
int tern_mail_attr_set_int_public(tern_mail *m, const char *key, int64_t value);
int tern_mail_attr_set_bool_public(tern_mail *m, const char *key, bool value);
int tern_mail_attr_remove_public(tern_mail *m, const char *key);

/* ---- helpers for builtins ---------------------------------------------- */

/* The domain part of an address ("" when none); points into addr. */
const char *tern_addr_domain(const char *addr);
/* Case-insensitive address compare (local part compared as given, the
 * domain case-insensitively, like the directory does). */
bool tern_addr_equal(const char *a, const char *b);

#endif
