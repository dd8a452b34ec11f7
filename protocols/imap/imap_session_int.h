/* What the IMAP session's files share: imap_session.c (the state machine,
 * command table, connection callbacks, LOGIN, mailbox synchronisation),
 * imap_mailbox.c (mailbox commands, APPEND, QUOTA), imap_message.c
 * (SEARCH, STORE, COPY/MOVE, EXPUNGE), imap_fetch.c (FETCH, streamed),
 * imap_recent.c (\Recent) and imap_kwlist.c (the keywords in FLAGS).
 * Private to protocols/imap/. */
#ifndef TERN_IMAP_SESSION_INT_H
#define TERN_IMAP_SESSION_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth/auth.h"
#include "lib/arena.h"
#include "lib/buf.h"
#include "lib/mime.h"
#include "protocols/common/session.h"
#include "protocols/imap/imap_parser.h"
#include "protocols/imap/imap_uidlist.h"

#define MOD "imap"
#define OUT_HIGH_WATER (128 * 1024) /* stop producing while this much is unsent */
#define BODY_CHUNK (64 * 1024)      /* body bytes asked of the store per request */
#define HEADER_MAX (1024 * 1024)    /* a header block read to answer HEADER/TEXT sections */
#define HEADER_FIRST_READ (8 * 1024) /* the first read looking for a header's end */
#define HEADER_BATCH 256            /* header blocks asked of the store in one request */

typedef enum {
    IS_HANDSHAKE = 1 << 0, /* implicit TLS: before the greeting */
    IS_NOAUTH = 1 << 1,
    IS_AUTH = 1 << 2,
    IS_SELECTED = 1 << 3,
    IS_LOGOUT = 1 << 4,
    IS_IDLE = 1 << 5,      /* inside IDLE: only DONE is read */
    IS_SASL = 1 << 6,      /* inside AUTHENTICATE: lines are SASL responses */
} imap_state;

typedef struct imap_session imap_session;
typedef void (*imap_step)(imap_session *s, tern_store_req *r);

typedef struct imap_fetch_job imap_fetch_job;

struct imap_session {
    tern_session base;
    tern_conn conn;
    tern_config *cfg;
    tern_tls_server *tls;
    const tern_listener_conf *lc;
    size_t li;
    tern_auth *auth;
    struct tern_sasl_srv *sasl;  /* LOGIN and AUTHENTICATE (protocols/common/sasl_server) */
    char cert_account[TERN_AUTH_MAX_USER + 1];
    imap_state state;
    tern_imap_reader rd;
    tern_arena arena;        /* the current command's: parsed arguments */
    tern_buf ob;             /* a response being built; flushed to the connection */
    char tag[64];
    char cmd[24];            /* the command name, upper case, for replies and logs */
    bool uid_cmd;            /* UID FETCH/STORE/SEARCH/COPY/MOVE/EXPUNGE */
    char *user;              /* the logged-in account (malloc'd) */
    bool utf8;               /* UTF8=ACCEPT or IMAP4rev2 enabled: names in UTF-8 */
    bool rev2;               /* ENABLE IMAP4rev2 */
    bool condstore, qresync;
    /* the selected mailbox */
    char *mbox;              /* internal (UTF-8) name, malloc'd */
    uint64_t mbox_id;
    bool readonly;
    uint32_t uidvalidity, uidnext;
    uint32_t *uids;          /* message sequence number i+1 -> uids[i], ascending */
    size_t n_uids, cap_uids;
    uint64_t modseq;         /* changes up to this are reported */
    uint64_t own_lo, own_hi; /* modseqs of our own last STORE: not echoed again by a sync */
    tern_uid_range *saved;   /* SEARCHRES '$' */
    size_t n_saved;
    tern_imap_uidlist recent; /* \Recent for this session: claimed (SELECT) or seen (EXAMINE) */
    char **kw;               /* keywords listed in FLAGS (malloc'd), imap_kwlist.c */
    size_t n_kw;
    bool kw_changed;         /* a keyword not listed yet was shown: FLAGS again */
    tern_store_watch *watch;
    bool changed;            /* an event came for the selected mailbox */
    bool syncing;
    /* the command in progress */
    bool busy;               /* a command is running: parse nothing */
    imap_step step;          /* what the store's answer goes to */
    void *cmd_state;         /* a command's own state, in `arena` */
    char final[512];         /* the tagged reply, sent after the sync that precedes it */
    bool final_pending;
    imap_fetch_job *job;
    bool job_waits_drain;
    bool draining, conn_closed, bye_sent;
    unsigned pending;        /* async operations holding a pointer to us */
    uv_timer_t *retry_timer; /* input waits for the SASL driver to settle */
    unsigned errors;
    uint64_t started_ms;
};

/* imap_session.c */
void imap__printf(imap_session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void imap__flush(imap_session *s);
/* Appends a mailbox name as a quoted string (or literal), in the client's encoding. */
void imap__put_mailbox(imap_session *s, const char *name);
void imap__put_string(imap_session *s, const char *str, size_t len);
/* A client mailbox argument -> internal name (in s->arena); NULL with a reply sent. */
char *imap__mailbox_arg(imap_session *s, tern_imap_parser *ps);
/* SP mailbox: the same, BAD when the space is missing. */
char *imap__sp_mailbox(imap_session *s, tern_imap_parser *ps);
/* Ends the command: tagged reply (after untagged updates when allowed). */
void imap__finish(imap_session *s, const char *status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void imap__bad(imap_session *s, tern_imap_parser *ps, const char *fallback);
/* Maps a store failure to a tagged NO with the right response code. */
void imap__store_fail(imap_session *s, tern_store_req *r, const char *what);
tern_store_req *imap__req(imap_session *s, tern_store_op op);
void imap__submit(imap_session *s, tern_store_req *r, imap_step step);
/* The same for a request the command can do without: false (r freed, no
 * reply sent) when r is NULL or could not be queued. */
bool imap__try_submit(imap_session *s, tern_store_req *r, imap_step step);
void imap__put_flags(imap_session *s, unsigned flags, char **kw, size_t n_kw);
/* A message's FLAGS: the same, with \Recent when it is recent for us. */
void imap__put_msg_flags(imap_session *s, uint32_t uid, unsigned flags, char **kw, size_t n_kw);
void imap__put_uidset(imap_session *s, const uint32_t *uids, size_t n);
/* Sequence numbers <-> UIDs of the selected mailbox. */
size_t imap__msn_of(const imap_session *s, uint32_t uid); /* 0: not there */
/* Sorts the UIDs of a store answer and keeps those this session has been
 * told exist (SEARCH, SORT, THREAD); returns how many are left. */
size_t imap__known_uids(const imap_session *s, uint32_t *v, size_t n);
bool imap__seq_to_uids(imap_session *s, const tern_imap_seqset *set, bool uid,
                       tern_uid_set *out);
extern const tern_imap_seqmap imap__seqmap_proto;
void imap__remove_uid(imap_session *s, size_t idx);
/* Untagged EXPUNGE or VANISHED for uids just expunged (ascending). */
void imap__report_expunged(imap_session *s, const uint32_t *uids, size_t n);
void imap__unselect(imap_session *s);

/* imap_recent.c */
bool imap__recent_on(const imap_session *s);       /* not after ENABLE IMAP4rev2 */
void imap__recent_reset(imap_session *s);          /* empty, ready for a mailbox */
void imap__recent_free(imap_session *s);
/* RECENT_CLAIM for the selected mailbox (a peek when read-only), or NULL. */
tern_store_req *imap__recent_req(imap_session *s);
void imap__recent_take(imap_session *s, const tern_store_req *r); /* its answer */
size_t imap__recent_count(const imap_session *s);  /* of the messages the client knows */
bool imap__recent_has(const imap_session *s, uint32_t uid);

/* imap_kwlist.c */
void imap__kw_free(imap_session *s);
void imap__kw_take(imap_session *s, const tern_store_req *r); /* MAILBOX_KEYWORDS' answer */
void imap__kw_note(imap_session *s, char **kw, size_t n);     /* keywords just shown */
void imap__put_flag_lists(imap_session *s);                    /* FLAGS, PERMANENTFLAGS */
void imap__kw_report(imap_session *s);                         /* them again if grown */

/* imap_mailbox.c */
void imap__cmd_select(imap_session *s, tern_imap_parser *ps);
void imap__cmd_create(imap_session *s, tern_imap_parser *ps);
void imap__cmd_delete(imap_session *s, tern_imap_parser *ps);
void imap__cmd_rename(imap_session *s, tern_imap_parser *ps);
void imap__cmd_subscribe(imap_session *s, tern_imap_parser *ps);
void imap__cmd_list(imap_session *s, tern_imap_parser *ps);
void imap__cmd_status(imap_session *s, tern_imap_parser *ps);
void imap__cmd_append(imap_session *s, tern_imap_parser *ps);
void imap__cmd_quota(imap_session *s, tern_imap_parser *ps);

/* imap_message.c */
void imap__cmd_search(imap_session *s, tern_imap_parser *ps);
void imap__cmd_store(imap_session *s, tern_imap_parser *ps);
void imap__cmd_copy(imap_session *s, tern_imap_parser *ps);
void imap__cmd_expunge(imap_session *s, tern_imap_parser *ps);
void imap__cmd_close(imap_session *s, tern_imap_parser *ps);

/* imap_sort.c */
void imap__cmd_sort(imap_session *s, tern_imap_parser *ps); /* SORT and THREAD */

/* imap_bodystructure.c */
void imap__put_envelope(imap_session *s, tern_arena *a, const tern_mime_envelope *e);
void imap__put_body(imap_session *s, tern_arena *a, const tern_mime_part *p, bool ext);

/* imap_fetch.c */
void imap__cmd_fetch(imap_session *s, tern_imap_parser *ps);
void imap__fetch_resume(imap_session *s);  /* the socket drained */
void imap__fetch_free(imap_session *s);

#endif
