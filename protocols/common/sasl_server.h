/* The server side of a SASL exchange, for every protocol that has one
 * (IMAP AUTHENTICATE, POP3 AUTH, and the plain USER/PASS and LOGIN commands
 * that check a password): which mechanisms a session may offer, the
 * exchange driven through auth/sasl's pure state machines, the credential
 * checks asked of auth/ asynchronously, the login limiter's lockout and
 * failure delays, and EXTERNAL from a verified client certificate. The
 * protocol keeps only its framing: how a challenge, a success and each kind
 * of failure are written on its wire.
 *
 * Input: the client's response lines (untrusted, base64, bounded); the
 * parameters the session gives (trusted: from its config snapshot and its
 * connection). Nothing here writes to a socket.
 *
 * Results arrive through the callback given to tern_sasl_srv_new(). It may
 * run before the call that caused it returns (a challenge needs no
 * backend), or later on the loop (a password check, a failure held back by
 * the limiter's delay). While tern_sasl_srv_pending() is true the session
 * must not feed the driver (pause the connection's input). */
#ifndef TERN_SASL_SERVER_H
#define TERN_SASL_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "auth/auth.h"
#include "protocols/common/conn.h"

/* RFC 4954 4, RFC 5034 4: a response line may be 12288 octets; IMAP has
 * no limit of its own, so the same is used there. */
#define TERN_SASL_SRV_LINE_MAX 12288

typedef struct tern_sasl_srv tern_sasl_srv;

typedef enum {
    TERN_SASL_SRV_CHALLENGE = 1, /* send `data` (base64, may be "") as the continuation */
    TERN_SASL_SRV_SUCCESS,       /* `account` is logged in; `data` is the final server data
                                    (base64) when params.success_data and the mechanism
                                    has some, else NULL */
    TERN_SASL_SRV_FAILED,        /* credentials refused (the limiter's delay already waited) */
    TERN_SASL_SRV_ABORTED,       /* the client cancelled with "*" */
    TERN_SASL_SRV_MALFORMED,     /* a response that is not base64 or breaks the mechanism */
    TERN_SASL_SRV_TEMPFAIL,      /* a backend is down, the limiter locked this IP or
                                    account out, or out of memory: try later */
} tern_sasl_srv_status;

typedef struct tern_sasl_srv_result {
    tern_sasl_srv_status status;
    const char *data;     /* CHALLENGE, SUCCESS: base64, NUL-terminated */
    const char *account;  /* SUCCESS: canonical account name */
    const char *backend;  /* SUCCESS: which auth backend decided ("static", "file"...) */
    const char *mech;     /* the mechanism ("PLAIN"; "USER" for a bare password check) */
} tern_sasl_srv_result;

typedef void (*tern_sasl_srv_cb)(void *data, const tern_sasl_srv_result *r);

/* What the session knows about its connection when an exchange starts. */
typedef struct tern_sasl_srv_params {
    const char *service;    /* "imap", "pop3": auth.h's in.service, the SASL params, logs */
    const char *hostname;   /* server name (CRAM-MD5 challenge) */
    const char *listener;   /* the listener's name: its auth_static login is asked first */
    const char *session_id; /* for the log lines */
    const char *remote_ip;  /* limiter key */
    bool tls_active;
    bool allow_plaintext;   /* the listener's allow_plaintext_auth */
    bool success_data;      /* the protocol can carry data with its success reply (IMAP) */
    /* The account a verified client certificate names (tern_sasl_srv_cert_account),
     * or NULL: EXTERNAL is offered only with one. */
    const char *cert_account;
    /* The connection's tls-unique (tern_sasl_srv_channel_binding); cb_len
     * 0: none, and SCRAM-SHA-256-PLUS is not offered. */
    uint8_t cb[TERN_SASL_CB_MAX];
    size_t cb_len;
} tern_sasl_srv_params;

/* Fills p->cb/cb_len from the connection's TLS (tern_tls_conn_tls_unique). */
void tern_sasl_srv_channel_binding(const tern_conn *c, tern_sasl_srv_params *p);

/* The account a verified client certificate names: the subject's CN,
 * lowercased, when it looks like an address and the listener verified the
 * chain against its client_ca. */
bool tern_sasl_srv_cert_account(const tern_conn *c, char *out, size_t size);

/* The mechanisms a session may offer now, space-separated into buf ("" when
 * none): what every backend can serve, nothing before TLS unless
 * allow_plaintext. Returns the length, or -1 when buf is too small. */
int tern_sasl_srv_mechs(const tern_auth *auth, const tern_sasl_srv_params *p, char *buf,
                        size_t size);
/* Whether a password may be checked now (USER/PASS, IMAP LOGIN): the
 * backends can verify passwords and the connection is TLS or plaintext
 * logins are allowed. */
bool tern_sasl_srv_password_allowed(const tern_auth *auth, const tern_sasl_srv_params *p);

/* One driver per session (it keeps the session's auth client). `auth` is
 * borrowed and must outlive the driver. NULL when out of memory. */
tern_sasl_srv *tern_sasl_srv_new(tern_auth *auth, uv_loop_t *loop, tern_sasl_srv_cb cb,
                                 void *data);
/* Safe at any time, even from the callback or with a backend request or a
 * delay outstanding: the callback will not run again. NULL is fine. */
void tern_sasl_srv_free(tern_sasl_srv *s);

#define TERN_SASL_SRV_ENOMECH (-1)   /* not a mechanism offered here */
#define TERN_SASL_SRV_ENEEDTLS (-2)  /* offered only over TLS (IMAP [PRIVACYREQUIRED],
                                        SMTP 538) */
#define TERN_SASL_SRV_EBUSY (-3)     /* an exchange is already running */

/* Starts an exchange. `initial` is the client's initial response as sent
 * (base64, "=" for empty), or NULL when there was none. Returns 0 (the
 * callback reports; an exchange is active until a result other than
 * CHALLENGE) or one of the errors above (nothing started, no callback). */
int tern_sasl_srv_start(tern_sasl_srv *s, const tern_sasl_srv_params *p, const char *mech,
                        const char *initial, size_t initial_len);
/* One client response line (without CRLF) while an exchange is active. */
void tern_sasl_srv_response(tern_sasl_srv *s, const char *line, size_t len);
/* A bare password check (POP3 USER/PASS, IMAP LOGIN) through auth.h's
 * VERIFY_PASSWORD, with the same limiter: the callback gets SUCCESS,
 * FAILED or TEMPFAIL. Returns 0 or TERN_SASL_SRV_EBUSY. */
int tern_sasl_srv_password(tern_sasl_srv *s, const tern_sasl_srv_params *p, const char *user,
                           const char *password, size_t password_len);
/* POP3 APOP (RFC 1939 7): `digest` is the client's 32 hex digits of
 * MD5(challenge secret), checked against the user's plaintext secret
 * (auth.h GET_SECRET; users without a {PLAIN} credential always fail), with
 * the limiter's books kept here. The callback gets SUCCESS, FAILED or
 * TEMPFAIL. Returns 0 or TERN_SASL_SRV_EBUSY. */
int tern_sasl_srv_apop(tern_sasl_srv *s, const tern_sasl_srv_params *p, const char *user,
                       const char *challenge, const char *digest);

/* An exchange is running: the next client line is a response. */
bool tern_sasl_srv_active(const tern_sasl_srv *s);
/* A backend request or a failure delay is outstanding: feed nothing. */
bool tern_sasl_srv_pending(const tern_sasl_srv *s);

#endif
