/* The SMTP client: delivers one message to one server over one
 * connection (connect, banner, EHLO with HELO fallback, MAIL with the
 * extensions the peer offers, RCPT for each recipient, DATA or BDAT,
 * QUIT), pipelining when offered, and reports an outcome per recipient.
 * The queue manager decides where to connect and what to do with the
 * answers. Input: replies from a remote server (untrusted, through
 * smtp_reply.h); the message and envelope from our own spool. */
#ifndef TERN_SMTP_CLIENT_H
#define TERN_SMTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "protocols/common/conn.h"
#include "storage/queue/spool.h"

typedef struct tern_smtp_client tern_smtp_client;

/* One recipient's outcome. code 0: not attempted (the connection failed
 * before its turn). */
typedef struct tern_smtp_rcpt_result {
    int code;
    char enhanced[16];
    char text[300];
} tern_smtp_rcpt_result;

typedef struct tern_smtp_outcome {
    /* The session as a whole: 0 when the server took part in the
     * transaction (per-recipient codes say how), else the failure class:
     * 4 temporary (connect failed, timeout, 4xx before RCPT, malformed
     * replies), 5 permanent (5xx to MAIL FROM, 5xx to DATA, message too
     * big for the announced SIZE). */
    int session_class;
    char stage[16];        /* where it ended: "connect", "banner", "ehlo", "mail", "data", ... */
    char error[400];       /* the reply or the reason, for logs and bounces */
    tern_smtp_rcpt_result *rcpts; /* one per recipient, same order */
    size_t n_rcpts;
    bool tls;              /* the message went over TLS */
    bool tls_verified;     /* and the certificate verified for tls_name */
    char tls_version[16];
    char tls_cipher[64];
    char peer[80];
    /* Connection reuse (smtp_pool.h): the message went over a connection
     * an earlier message had opened. */
    bool reused;
    bool tls_dane;         /* the certificate matched a TLSA record (DANE) */
} tern_smtp_outcome;

typedef void (*tern_smtp_client_cb)(void *arg, const tern_smtp_outcome *o);

/* Keeping a connection open after its message (smtp_pool.c owns these).
 * idle: the transaction ended healthy (the last reply 2xx, no protocol
 * error); return true to park the connection (it waits, answers nothing,
 * and QUITs after idle_timeout_ms), false to QUIT now. It runs before the
 * outcome is reported, so the callback may already reuse the connection.
 * gone: a connection started with this keep closed (after its last
 * message, an idle timeout, the peer closing, a release); c is freed
 * right after. */
typedef struct tern_smtp_client_keep {
    bool (*idle)(void *arg, tern_smtp_client *c);
    void (*gone)(void *arg, tern_smtp_client *c);
    void *arg;
    uint32_t max_messages;     /* messages per connection; then QUIT */
    uint64_t idle_timeout_ms;
} tern_smtp_client_keep;

typedef struct tern_smtp_client_params {
    uv_loop_t *loop;
    tern_conn_worker *worker;
    const struct sockaddr *addr;   /* where to connect (port included) */
    const char *helo;              /* our name in EHLO */
    uint64_t connect_timeout_ms;   /* default 30 s */
    uint64_t command_timeout_ms;   /* each reply; default 5 min (RFC 5321 4.5.3.2) */
    uint64_t data_timeout_ms;      /* the final "." reply; default 10 min */
    /* The message: envelope (sender, recipients with NOTIFY/ORCPT, ENVID,
     * RET, body type, SMTPUTF8) and its bytes (CRLF lines). Recipients
     * whose `done` flag is set are skipped (result code 0). */
    const tern_envelope *env;
    const uint8_t *data;
    size_t len;
    /* STARTTLS when the server offers it (RFC 3207), with this context;
     * NULL: never. tls_name is the name the certificate is checked
     * against (the MX host); tls_required fails the delivery (4.7.10)
     * without TLS or without a certificate that verifies for it. */
    tern_tls_client *tls;
    const char *tls_name;
    bool tls_required;
    /* Added by the connection pool (smtp_pool.c); zero keeps the one
     * message per connection behaviour. */
    const tern_smtp_client_keep *keep;
    /* BDAT (RFC 3030) instead of DATA when the server offers CHUNKING. */
    bool use_chunking;
    /* AUTH (RFC 4954) before MAIL, with PLAIN or else LOGIN, whichever
     * the server offers; NULL: none. Credentials only go over TLS unless
     * auth_allow_plaintext (tests on loopback); a failure defers (4.7.x). */
    const char *auth_username, *auth_password;
    bool auth_allow_plaintext;
    /* Fail (4.7.10) unless STARTTLS succeeds; unlike tls_required, a
     * certificate that does not verify is accepted. */
    bool tls_encrypt_required;
    /* Bind the connection to this local address (port 0) first; NULL:
     * the kernel picks. A bind failure is a temporary failure (4.4.1). */
    const struct sockaddr *source;
    /* DANE (RFC 7672): the host's validated TLSA records (borrowed);
     * n_dane_tlsa 0: none (the opportunistic connection). With records
     * the certificate must match one of them, else the session fails
     * 4.7.5; set tls_required too so a missing STARTTLS fails as well. */
    const tern_tlsa *dane_tlsa;
    size_t n_dane_tlsa;
    /* With dane_tlsa: a second name DANE-TA records accept (the MX host's
     * name when tls_name is its CNAME target, RFC 7672 2.2.2); NULL none. */
    const char *dane_alt_name;
    /* REQUIRETLS (RFC 8689 4.2.1): tls_name came from an authenticated
     * source (a DNSSEC-secure MX answer, MTA-STS, the configured
     * smarthost), so a PKIX-verified certificate for it counts; false:
     * only DANE does. */
    bool mx_authenticated;
} tern_smtp_client_params;

/* Starts a delivery; cb runs exactly once on params->loop with the outcome
 * (valid during the call). Borrowed parameters must live until then.
 * Returns NULL when it could not even start (cb will not run). */
tern_smtp_client *tern_smtp_client_start(const tern_smtp_client_params *params,
                                         tern_smtp_client_cb cb, void *arg);
/* Abandons a delivery (shutdown): cb runs with a temporary failure. */
void tern_smtp_client_cancel(tern_smtp_client *c);

/* A parked connection (see tern_smtp_client_keep) takes the next message:
 * RSET, then the transaction as in tern_smtp_client_start (same contract
 * for cb). When the connection turns out dead before MAIL FROM is
 * answered, the client opens a fresh connection to the same address once,
 * without reporting a failure. Returns -1 if c is not parked. */
int tern_smtp_client_reuse(tern_smtp_client *c, const tern_smtp_client_params *params,
                           tern_smtp_client_cb cb, void *arg);
/* A parked connection ends: QUIT, close, then keep->gone. */
void tern_smtp_client_release(tern_smtp_client *c);
/* Messages sent on this connection so far. */
unsigned tern_smtp_client_messages(const tern_smtp_client *c);

#endif
