/* What the SMTP session's files share (smtp_session.c: the state machine;
 * smtp_auth.c: AUTH). Private to protocols/smtp/. */
#ifndef TERN_SMTP_SESSION_INT_H
#define TERN_SMTP_SESSION_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth/auth.h"
#include "auth/sasl/sasl.h"
#include "lib/arena.h"
#include "mailets/engine.h"
#include "protocols/common/session.h"
#include "protocols/smtp/smtp_parser.h"

#define MOD "smtp"
#define OUT_HIGH_WATER (64 * 1024) /* stop parsing while this much is unsent */
#define DATA_CHUNK 8192            /* DATA input handled per step */
#define AUTH_LINE_MAX 12288        /* RFC 4954 4: SASL responses up to 12288 octets */

typedef enum {
    ST_HANDSHAKE = 1 << 0, /* implicit TLS: before the greeting */
    ST_INIT = 1 << 1,      /* greeted, no EHLO/HELO yet */
    ST_READY = 1 << 2,     /* EHLO done, no transaction */
    ST_MAIL = 1 << 3,      /* MAIL accepted, no recipient yet */
    ST_RCPT = 1 << 4,      /* at least one recipient */
    ST_DATA = 1 << 5,      /* reading DATA */
    ST_BDAT = 1 << 6,      /* reading a BDAT chunk */
    ST_SUBMIT = 1 << 7,    /* waiting for the spool */
    ST_CLOSED = 1 << 8,
    ST_AUTH = 1 << 9,      /* a SASL exchange: lines are responses, not commands */
} smtp_state;

#define ST_ANY (ST_INIT | ST_READY | ST_MAIL | ST_RCPT)
#define ST_TX (ST_MAIL | ST_RCPT)

typedef struct smtp_tx {
    tern_arena arena;
    char *from;
    tern_spool_rcpt *rcpts;
    size_t n_rcpts, cap_rcpts;
    tern_smtp_mail_args mail;
    char *envid;
    tern_body *body;
    tern_smtp_data_reader dr;
    tern_smtp_hdr_scan hs;
    uint64_t size;        /* body bytes seen (counted even when not kept) */
    bool too_big;
    bool write_error;
    bool bdat;            /* the transaction uses BDAT */
    bool bdat_last;
    bool bdat_failed;     /* a chunk failed: swallow it, then reply the error */
    char bdat_reply[128];
    uint64_t bdat_remaining;
    bool end_pending;     /* end of data reached while a body write was in flight */
    bool abandoned;       /* data_done timeout replied 451 already */
    char qid[TERN_QID_LEN];
    uint64_t started_ms;
    tern_spool_rcpt pending_rcpt; /* the RCPT being looked up */
    /* The directory's answer per accepted recipient (parallel to rcpts),
     * handed to the runner so it does not look them up again. */
    tern_rcpt_hint *hints;
    size_t cap_hints;
    bool hints_off;               /* out of memory once: none for this transaction */
    tern_rcpt_hint pending_hint;
} smtp_tx;

typedef struct smtp_session {
    tern_session base;
    tern_conn conn;
    tern_config *cfg;
    tern_tls_server *tls;
    const tern_listener_conf *lc;
    size_t li;
    smtp_state state;
    tern_smtp_line_reader lr;
    char *linebuf;
    char helo[256];
    bool esmtp;
    bool relay_client;    /* peer is in smtp.relay_networks */
    bool draining;
    bool conn_closed;     /* on_close fired; free once async work is done */
    bool lookup_pending;  /* a recipient lookup is out: parse nothing */
    bool body_writing;    /* a body append is on the disk: take no more input */
    /* SMTP AUTH (RFC 4954) */
    tern_auth *auth;      /* the snapshot's auth, or NULL */
    tern_auth_client *auth_client; /* created at the first AUTH */
    tern_sasl *sasl;      /* the exchange in progress */
    char *auth_line;      /* AUTH_LINE_MAX line buffer while in ST_AUTH */
    char *auth_user;      /* the authenticated account */
    char auth_mech[24];
    bool auth_pending;    /* an auth/ request is out */
    uint64_t auth_fail_delay_ms; /* from a failed token check, applied at the final 535 */
    bool auth_static;     /* logged in with the listener's fixed credential (auth_static) */
    uv_timer_t *delay_timer; /* holds a failure reply back (brute force) */
    unsigned pending;     /* async operations that hold a pointer to us */
    unsigned errors;
    unsigned messages;
    uint64_t max_size;
    uint64_t started_ms;
    smtp_tx tx;
} smtp_session;

void smtp__reply(smtp_session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Counts a client error; past smtp.max_errors the session ends (true). */
bool smtp__error(smtp_session *s);
void smtp__goodbye(smtp_session *s, const char *line);
/* Resumes input once nothing the session waits for is outstanding. */
void smtp__continue(smtp_session *s);
void smtp__maybe_free(smtp_session *s);
void smtp__tx_reset(smtp_session *s);

/* smtp_auth.c */
int smtp__auth_mechs(const smtp_session *s, char *buf, size_t size);
bool smtp__cert_account(const smtp_session *s, char *out, size_t size);
void smtp__cmd_auth(smtp_session *s, const tern_smtp_cmd *cmd);
void smtp__auth_response(smtp_session *s, const char *line, size_t len);
void smtp__auth_fail(smtp_session *s, uint64_t delay_ms, const char *reply);
void smtp__delay_closed(uv_handle_t *h);

#endif
