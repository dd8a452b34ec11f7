/* store.h: the one storage API. IMAP, POP3, JMAP, local delivery, the SMTP
 * recipient check and ternctl all go through it; none of them touches
 * SQLite, libpq or a Maildir file.
 *
 * Model. Every call is a request (tern_store_req) submitted through a
 * client bound to the caller's libuv loop. The backend runs it on its own
 * thread (SQLite, Maildir I/O with fsync) or its own loop (libpq, async),
 * never on the caller's loop, and the completion callback runs on the
 * caller's loop. Parameters are borrowed until the callback; results live in
 * the request's arena and die with tern_store_req_free().
 *
 * Identities. Accounts are "local@domain" (lowercased domain). Mailbox
 * names are UTF-8 with '/' as the hierarchy separator; "INBOX" is
 * case-insensitive. Inside a mailbox a message has a UID (RFC 9051) that
 * never changes and is never reused under the same UIDVALIDITY. Every
 * message also has an id (JMAP Email id, a string) that a move keeps and a
 * copy shares (one Email, several mailboxes), and a thread id (JMAP Thread
 * id) assigned at append from Message-ID/References/In-Reply-To.
 *
 * Modseqs (RFC 7162) are per account and strictly increasing: every change
 * to a message or mailbox takes a new one, so "what changed since N" is
 * one question for a mailbox (CONDSTORE/QRESYNC) and for an account (JMAP).
 *
 * Input trusted: the parameters come from our own protocol code, which has
 * already parsed the client's syntax; message bytes are untrusted and are
 * parsed here only to build the header index (bounded). */
#ifndef TERN_STORE_H
#define TERN_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "conf/config.h"
#include "lib/arena.h"

/* ---- errors ----------------------------------------------------------- */

#define TERN_STORE_OK          0
#define TERN_STORE_ENOTFOUND  (-1)  /* no such domain/account/mailbox/message */
#define TERN_STORE_EEXISTS    (-2)  /* already exists */
#define TERN_STORE_EQUOTA     (-3)  /* over quota (bytes or messages) */
#define TERN_STORE_EINVAL     (-4)  /* bad name or argument */
#define TERN_STORE_ECONFLICT  (-5)  /* UNCHANGEDSINCE failed, or a concurrent change */
#define TERN_STORE_ENOTEMPTY  (-6)  /* mailbox has children / domain has accounts */
#define TERN_STORE_ETOOOLD    (-7)  /* changes asked since a modseq past retention */
#define TERN_STORE_ETEMP      (-8)  /* backend unavailable: retry later (db down, disk full) */
#define TERN_STORE_EIO        (-9)  /* backend failed: see req->error */
#define TERN_STORE_EFORBIDDEN (-10) /* e.g. delete INBOX (renaming INBOX moves its messages to
                                       the new name and leaves INBOX empty, RFC 9051 6.3.6) */

const char *tern_store_strerror(int status);

/* ---- flags ------------------------------------------------------------ */

#define TERN_FLAG_SEEN     0x01
#define TERN_FLAG_ANSWERED 0x02
#define TERN_FLAG_FLAGGED  0x04
#define TERN_FLAG_DELETED  0x08
#define TERN_FLAG_DRAFT    0x10
/* $Forwarded and other keywords travel as strings. */

/* RFC 6154 special-use attributes. */
#define TERN_SPECIAL_DRAFTS  0x01
#define TERN_SPECIAL_SENT    0x02
#define TERN_SPECIAL_TRASH   0x04
#define TERN_SPECIAL_JUNK    0x08
#define TERN_SPECIAL_ARCHIVE 0x10
#define TERN_SPECIAL_ALL     0x20

/* ---- the values requests carry --------------------------------------- */

typedef struct tern_uid_range {
    uint32_t first, last;  /* inclusive; last = UINT32_MAX means "*" */
} tern_uid_range;

typedef struct tern_uid_set {
    const tern_uid_range *ranges;
    size_t n;              /* 0 ranges: the empty set */
} tern_uid_set;

typedef struct tern_keywords {
    const char **names;    /* IMAP atoms, compared case-insensitively; stored as
                              first written in the mailbox (a later spelling
                              takes the one already there) */
    size_t n;
} tern_keywords;

typedef struct tern_account_info {
    char *name;            /* local@domain */
    uint64_t quota_bytes;  /* 0: unlimited */
    uint64_t quota_messages;
    uint64_t used_bytes;
    uint64_t used_messages;
    bool has_password;
    char *password_hash;   /* filled by ACCOUNT_GET (other ops may leave it NULL): the
                              stored value as given, for auth/'s internal backend */
} tern_account_info;

typedef struct tern_mailbox_info {
    uint64_t id;           /* stable across renames (JMAP Mailbox id) */
    char *name;
    unsigned special_use;  /* TERN_SPECIAL_* */
    bool subscribed;
    bool has_children;
    uint32_t uidvalidity;
    uint32_t uidnext;
    uint32_t messages;
    uint32_t unseen;
    uint32_t recent;       /* messages delivered since the last SELECT that claimed them */
    uint64_t size;         /* bytes, for STATUS SIZE */
    uint64_t highest_modseq;
} tern_mailbox_info;

typedef struct tern_message_info {
    uint32_t uid;
    char *id;              /* stable message id (JMAP Email id) */
    char *thread_id;
    unsigned flags;        /* TERN_FLAG_* */
    char **keywords;
    size_t n_keywords;
    uint64_t modseq;
    int64_t internal_date; /* unix seconds */
    uint64_t size;         /* RFC 822 size, CRLF line endings */
} tern_message_info;

/* What an append wrote; the UIDPLUS answer. */
typedef struct tern_append_result {
    uint32_t uidvalidity;
    uint32_t uid;
    char *id;
    char *thread_id;
    uint64_t modseq;
} tern_append_result;

/* Recipient lookup for SMTP and local delivery. */
typedef enum {
    TERN_RCPT_NOT_LOCAL = 0, /* the domain is not ours */
    TERN_RCPT_UNKNOWN,       /* our domain, no such account or alias: 550 5.1.1 */
    TERN_RCPT_ACCOUNT,       /* an account (targets[0]) */
    TERN_RCPT_ALIAS,         /* an alias or catch-all: targets are accounts or external addresses */
} tern_rcpt_kind;

typedef struct tern_rcpt_result {
    tern_rcpt_kind kind;
    char **targets;          /* account names, or external addresses (contain '@', not ours) */
    bool *target_is_local;
    size_t n_targets;
    char *detail;            /* the "+detail" part when the match used sub-addressing, or NULL */
    bool catch_all;          /* ALIAS: matched by the domain's catch-all, not by this address */
} tern_rcpt_result;

/* ---- search ------------------------------------------------------------ */

typedef enum {
    TERN_SEARCH_ALL = 0,
    TERN_SEARCH_AND,         /* children */
    TERN_SEARCH_OR,          /* children */
    TERN_SEARCH_NOT,         /* one child */
    TERN_SEARCH_UID,         /* uids */
    TERN_SEARCH_FLAGS_SET,   /* flags: all of them set */
    TERN_SEARCH_FLAGS_UNSET, /* flags: all of them unset */
    TERN_SEARCH_KEYWORD,     /* str */
    TERN_SEARCH_UNKEYWORD,   /* str */
    TERN_SEARCH_BEFORE,      /* internal date < date (day granularity: caller passes day start) */
    TERN_SEARCH_SINCE,       /* internal date >= date */
    TERN_SEARCH_SENTBEFORE,  /* Date: header < date */
    TERN_SEARCH_SENTSINCE,   /* Date: header >= date */
    TERN_SEARCH_LARGER,      /* size > num */
    TERN_SEARCH_SMALLER,     /* size < num */
    TERN_SEARCH_HEADER,      /* header field `field` contains `str` (case-insensitive;
                                empty str: the field exists). From/To/Cc/Bcc/Subject
                                are header searches with those names. */
    TERN_SEARCH_BODY,        /* body contains str */
    TERN_SEARCH_TEXT,        /* header or body contains str */
    TERN_SEARCH_MODSEQ,      /* modseq >= num */
} tern_search_kind;

typedef struct tern_search tern_search;
struct tern_search {
    tern_search_kind kind;
    const tern_search *children;
    size_t n_children;
    tern_uid_set uids;
    unsigned flags;
    const char *field;
    const char *str;
    int64_t date;
    uint64_t num;
};

/* ---- changes and events ----------------------------------------------- */

typedef struct tern_change {
    uint32_t uid;
    uint64_t modseq;
    unsigned flags;
    char **keywords;
    size_t n_keywords;
} tern_change;

typedef struct tern_changes {
    uint64_t highest_modseq;
    tern_change *changed;   /* messages added or changed since, by uid */
    size_t n_changed;
    uint32_t *vanished;     /* uids expunged since, ascending */
    size_t n_vanished;
} tern_changes;

/* ---- batched header reads ------------------------------------------------ */

/* FETCH_HEADERS: the header block of every message of in.uids (in
 * in.name), in one request instead of one FETCH_BODY per message. At most
 * in.max_len octets (0: TERN_STORE_HEADERS_EACH; capped at
 * TERN_STORE_HEADERS_EACH_MAX) are read per message, and at most
 * TERN_STORE_HEADERS_BUDGET for the whole request: a message past either
 * bound comes back with complete = false (and what was read, or nothing),
 * and the caller reads it with FETCH_BODY. The caller bounds the set (IMAP
 * asks imap.fetch_batch UIDs at a time). Messages missing from the
 * mailbox are left out; results are in UID order. */
#define TERN_STORE_HEADERS_EACH (8 * 1024)
#define TERN_STORE_HEADERS_EACH_MAX (64 * 1024)
#define TERN_STORE_HEADERS_BUDGET (4 * 1024 * 1024)

typedef struct tern_message_header {
    uint32_t uid;
    uint64_t size;          /* the whole message's */
    uint8_t *data;          /* the header block, its ending blank line included */
    size_t len;
    bool complete;          /* the block ends within data (or the message is all header) */
} tern_message_header;

/* Where the header block of msg[0..len) ends (the blank line included), as
 * FETCH BODY[HEADER] cuts it: returns true with *end_r, or false when no
 * blank line is within the bytes given. */
bool tern_store_header_end(const uint8_t *msg, size_t len, size_t *end_r);

/* FETCH_INDEX: what the header index kept at append (storage/index.h) for
 * every message of in.uids, in one request: what SORT and THREAD need
 * without reading messages. Strings are as indexed (RFC 2047 decoded,
 * unfolded; NULL when the field is absent). */
typedef struct tern_message_index {
    uint32_t uid;
    uint64_t size;
    int64_t internal_date;
    int64_t hdr_date;       /* the Date field in unix seconds; 0: none or unparsable */
    char *subject;          /* decoded */
    char *from, *to, *cc;   /* decoded address lists */
    char *message_id;       /* without <> */
    char *in_reply_to;      /* the first id of In-Reply-To, without <> */
    char *refs;             /* References then In-Reply-To ids, space-separated, without <> */
} tern_message_index;

/* ---- requests ---------------------------------------------------------- */

typedef enum {
    /* directory */
    TERN_STORE_DOMAIN_ADD = 1, TERN_STORE_DOMAIN_REMOVE, TERN_STORE_DOMAIN_LIST,
    TERN_STORE_ACCOUNT_CREATE, TERN_STORE_ACCOUNT_DELETE, TERN_STORE_ACCOUNT_GET,
    TERN_STORE_ACCOUNT_LIST, TERN_STORE_ACCOUNT_SET_PASSWORD, TERN_STORE_ACCOUNT_SET_QUOTA,
    TERN_STORE_ALIAS_ADD, TERN_STORE_ALIAS_REMOVE, TERN_STORE_ALIAS_LIST,
    TERN_STORE_RCPT_LOOKUP,
    /* mailboxes */
    TERN_STORE_MAILBOX_CREATE, TERN_STORE_MAILBOX_RENAME, TERN_STORE_MAILBOX_DELETE,
    TERN_STORE_MAILBOX_LIST, TERN_STORE_MAILBOX_STATUS, TERN_STORE_MAILBOX_SUBSCRIBE,
    TERN_STORE_MAILBOX_SET_SPECIAL,
    /* messages */
    TERN_STORE_APPEND, TERN_STORE_FETCH, TERN_STORE_FETCH_BODY, TERN_STORE_SET_FLAGS,
    TERN_STORE_COPY, TERN_STORE_MOVE, TERN_STORE_EXPUNGE, TERN_STORE_SEARCH,
    TERN_STORE_CHANGES, TERN_STORE_QUOTA_GET,
    /* \Recent (RFC 3501 2.3.2): clears `recent` on the mailbox's messages
     * that still have it and returns their uids (out.uids, ascending), in
     * one step, so that of two sessions claiming at once each message goes
     * to exactly one. Not a flag change: no modseq, no change log, no
     * event. in.recent_peek: only list them, clear nothing (EXAMINE). */
    TERN_STORE_RECENT_CLAIM,
    /* The keywords the mailbox's messages carry (IMAP FLAGS), one spelling
     * each, sorted without case, at most TERN_STORE_MAILBOX_KEYWORDS_MAX of
     * them, in out.names. */
    TERN_STORE_MAILBOX_KEYWORDS,
    /* batched reads for FETCH, SORT and THREAD (see the structs above) */
    TERN_STORE_FETCH_HEADERS, TERN_STORE_FETCH_INDEX,
    TERN_STORE__OP_COUNT
} tern_store_op;

#define TERN_STORE_MAILBOX_KEYWORDS_MAX 256

typedef enum { TERN_FLAGS_REPLACE = 0, TERN_FLAGS_ADD, TERN_FLAGS_REMOVE } tern_flags_mode;

typedef struct tern_store tern_store;
typedef struct tern_store_client tern_store_client;
typedef struct tern_store_req tern_store_req;
typedef void (*tern_store_cb)(tern_store_req *req);

struct tern_store_req {
    tern_store_op op;
    tern_store_cb cb;
    void *data;             /* the caller's */
    int status;             /* TERN_STORE_OK or TERN_STORE_E* */
    char error[256];        /* detail for the log when status != OK */
    tern_arena arena;       /* results live here */

    /* Parameters (borrowed until cb). Which fields an op reads is listed
     * with each constructor below. */
    struct {
        const char *account;    /* local@domain */
        const char *domain;
        const char *name;       /* mailbox name, alias address, ... */
        const char *new_name;   /* rename target, copy/move target mailbox */
        const char *pattern;    /* mailbox list: IMAP LIST pattern ('*', '%') or NULL for all */
        const char *password_hash;   /* account create / set password: stored as given */
        const char *const *targets;  /* alias targets */
        size_t n_targets;
        uint64_t quota_bytes, quota_messages;
        unsigned special_use;
        bool subscribed;        /* MAILBOX_SUBSCRIBE: true subscribe, false unsubscribe */
        bool subscribed_only;   /* MAILBOX_LIST: only subscribed (LSUB) */
        bool create_parents;    /* mailbox create */
        /* messages */
        const uint8_t *data;    /* APPEND: the message (CRLF line endings expected) */
        size_t len;
        const char *data_path;  /* APPEND alternative: a file to take the bytes from */
        const uint8_t *prefix;  /* APPEND: bytes of this copy only, stored in front of
                                   data / data_path (LocalDelivery's Return-Path and
                                   Delivered-To). The message is prefix + data; keeping the
                                   copies' common part in data lets a backend store it once:
                                   pg keeps one bodies row for equal data (refcounted), local
                                   hard-links appends of one unchanged data_path without a
                                   prefix (a Maildir file must hold the whole message). */
        size_t prefix_len;
        unsigned flags;
        tern_keywords keywords;
        int64_t internal_date;  /* APPEND: 0 = now */
        tern_uid_set uids;      /* FETCH/SET_FLAGS/COPY/MOVE/EXPUNGE (EXPUNGE: n==0 means
                                   every \Deleted message; otherwise only those in the set
                                   that are \Deleted) */
        tern_flags_mode flags_mode;
        uint64_t unchanged_since; /* SET_FLAGS: 0 = no condition */
        uint32_t uid;           /* FETCH_BODY */
        uint64_t offset;        /* FETCH_BODY */
        size_t max_len;         /* FETCH_BODY: at most this many bytes (bounded by the backend);
                                   FETCH_HEADERS: per message */
        const tern_search *search;
        uint64_t since_modseq;  /* CHANGES */
        bool recent_peek;       /* RECENT_CLAIM: list without clearing */
    } in;

    /* Results (in arena). */
    struct {
        tern_account_info account;
        tern_account_info *accounts;    size_t n_accounts;
        char **names;                   size_t n_names;  /* domain list, alias list ("addr target,target"),
                                                            MAILBOX_KEYWORDS */
        tern_rcpt_result rcpt;
        tern_mailbox_info mailbox;
        tern_mailbox_info *mailboxes;   size_t n_mailboxes;
        tern_append_result append;
        tern_message_info *messages;    size_t n_messages;  /* FETCH, SET_FLAGS (changed ones) */
        uint32_t *uids;                 size_t n_uids;      /* SEARCH, EXPUNGE (expunged),
                                                               SET_FLAGS (failed UNCHANGEDSINCE),
                                                               RECENT_CLAIM (claimed) */
        uint32_t *src_uids, *dst_uids;  size_t n_copied;    /* COPY/MOVE: the UIDPLUS map */
        uint32_t dst_uidvalidity;
        uint8_t *body;                  size_t body_len;    /* FETCH_BODY chunk */
        uint64_t body_total;
        tern_changes changes;
        uint64_t highest_modseq;        /* SEARCH, SET_FLAGS, EXPUNGE: the mailbox's after the call */
        tern_message_header *headers;   size_t n_headers;   /* FETCH_HEADERS */
        tern_message_index *index;      size_t n_index;     /* FETCH_INDEX */
    } out;

    /* store.c's bookkeeping; backends leave it alone. */
    struct {
        tern_store_client *client;
        tern_store_req *next;
    } priv_;
};

/* ---- backends, clients ------------------------------------------------- */

/* Opens the backend the config names (storage.backend), creating its
 * schema on first use and reconciling (local: files without rows and rows
 * without files are repaired and logged). Blocking: call at start-up or
 * from a pool thread. Returns 0 or -1 with *error_r (malloc'd). */
int tern_store_open(const tern_config *cfg, tern_store **store_r, char **error_r);
/* Makes the config's `domains:` local domains of the directory (adding
 * those missing), so the store alone answers "is this address ours".
 * Blocking, like tern_store_open. Returns 0 or -1 with *error_r. */
int tern_store_seed_domains(tern_store *s, const tern_config *cfg, char **error_r);
/* Finishes queued requests, then closes. */
void tern_store_close(tern_store *s);
const char *tern_store_backend_name(const tern_store *s);

/* One per loop that submits requests; completions run on that loop. */
tern_store_client *tern_store_client_new(tern_store *s, uv_loop_t *loop);
/* Pending requests still complete (callbacks run) before it is freed. */
void tern_store_client_close(tern_store_client *c);

/* A request ready to fill: status OK, arena initialised. */
tern_store_req *tern_store_req_new(tern_store_op op, tern_store_cb cb, void *data);
void tern_store_req_free(tern_store_req *r);
/* Hands the request to the backend. Returns 0 (cb will run) or a negative
 * TERN_STORE_E* when it could not even be queued (cb will not run). */
int tern_store_submit(tern_store_client *c, tern_store_req *r);

/* Runs one request to completion on a private loop: for tools and tests.
 * Returns req->status. */
int tern_store_run_sync(tern_store *s, tern_store_req *r);

/* ---- change events ----------------------------------------------------- */

/* A subscriber (an IDLE session, a JMAP push stream) is told, on its loop,
 * that a mailbox of an account changed. mailbox_id 0 in a subscription
 * means "any mailbox of the account". With PostgreSQL this crosses
 * processes (LISTEN/NOTIFY): a delivery on another node wakes the session.
 * An event with mailbox_id 0 means "something of this account may have
 * changed" (pg sends it after its LISTEN connection comes back, since
 * notifications in between are lost): every watch of the account gets it. */
typedef struct tern_store_watch tern_store_watch;
typedef void (*tern_store_event_cb)(void *data, const char *account, uint64_t mailbox_id,
                                    uint64_t modseq);
tern_store_watch *tern_store_watch_add(tern_store_client *c, const char *account,
                                       uint64_t mailbox_id, tern_store_event_cb cb, void *data);
void tern_store_watch_remove(tern_store_watch *w);

/* Mailboxes a new account gets, with their special use. */
extern const struct tern_store_default_mailbox {
    const char *name;
    unsigned special_use;
} tern_store_default_mailboxes[6];

#endif
