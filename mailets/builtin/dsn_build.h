/* Building the notices the routing mailets send: RFC 3464 delivery status
 * notifications (DSNBounce), plain bounces (Bounce) and postmaster notices
 * (NotifyPostmaster), plus the checks that keep them from looping. Shared
 * by those mailets; not a module. Input trusted: the strings the caller
 * passes come from the engine (envelope, attributes); the original
 * message's bytes are the sender's and are only copied, never interpreted,
 * except for the header fields the loop guard reads. */
#ifndef TERN_MAILETS_DSN_BUILD_H
#define TERN_MAILETS_DSN_BUILD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf/config.h"
#include "mailets/mail.h"

/* What the original message contributes to a notice. */
typedef enum {
    TERN_DSN_ATTACH_FULL = 0, /* message/rfc822 */
    TERN_DSN_ATTACH_HEADERS,  /* text/rfc822-headers */
    TERN_DSN_ATTACH_NONE,
} tern_dsn_attach;

typedef enum {
    TERN_DSN_REPORT = 0, /* multipart/report; report-type=delivery-status */
    TERN_DSN_PLAIN,      /* multipart/mixed: a text notice and the original */
} tern_dsn_style;

typedef struct tern_dsn_rcpt {
    const char *addr;  /* Final-Recipient */
    const char *orcpt; /* ORCPT as received ("rfc822;x+40y"), or NULL */
    /* Per-recipient details (the remote queue's failures differ per
     * recipient); NULL: the info-level code, enhanced and text apply. */
    const char *status;     /* "5.1.1" */
    const char *remote_mta; /* the server that answered, or NULL */
    const char *diagnostic; /* its reply ("550 5.1.1 no such user") when remote_mta is
                               set, else our own reason */
} tern_dsn_rcpt;

typedef struct tern_dsn_info {
    tern_dsn_style style;
    const char *reporting_mta; /* server.hostname */
    const char *from;          /* From: of the notice */
    const char *to;            /* To: of the notice */
    const char *subject;
    const char *intro;         /* the first paragraph of the human part */
    const char *qid;           /* of the original */
    const char *envid;         /* ENVID or NULL */
    int64_t arrival;           /* the original's arrival, unix seconds */
    int64_t now;               /* Date: of the notice */
    int code;                  /* SMTP code of the failure; 0: none */
    const char *enhanced;      /* "5.1.1"; NULL: 5.0.0 */
    const char *text;          /* the failure text, or NULL */
    const char *action;        /* "failed" (NULL) */
    const tern_dsn_rcpt *rcpts;
    size_t n_rcpts;
    tern_dsn_attach attach;
    const uint8_t *orig;       /* the original message (header, body) */
    size_t orig_len;
    const char *marker;        /* X-Tern-Notice value (our loop guard), or NULL */
} tern_dsn_info;

/* The notice as a whole message (CRLF lines) in a malloc'd buffer, or
 * NULL on OOM. */
uint8_t *tern_dsn_build(const tern_dsn_info *info, size_t *len_r);

/* Whether the mail is itself a delivery report (Content-Type
 * multipart/report with report-type=delivery-status, or a notice Tern
 * made, marked by Auto-Submitted: auto-replied and our marker field):
 * such a mail never gets a bounce. */
bool tern_dsn_is_report(const tern_mail *m);

/* RFC 3461 xtext decoding of an ORCPT value into out (always terminated);
 * malformed escapes are kept as written. */
void tern_dsn_xtext_decode(const char *in, char *out, size_t size);

/* "postmaster@<first local domain>" (or "postmaster" without domains). */
void tern_dsn_default_postmaster(const tern_config *cfg, char *out, size_t size);

/* The recipients of m a failure notice should name: those whose NOTIFY
 * (from the original envelope) does not exclude FAILURE. Fills rcpts
 * (n_rcpts entries of room) and returns how many; strings point into m. */
size_t tern_dsn_failed_rcpts(const tern_mail *m, tern_dsn_rcpt *rcpts);

/* The service of Bounce and DSNBounce: a failure notice for m's
 * recipients from the null sender to m's sender, spawned into `processor`;
 * the mail then FINISHes. No notice to the null sender, for a report, or
 * when NOTIFY excludes every recipient (each logged). */
typedef struct tern_bounce_conf {
    tern_dsn_style style;
    const char *processor;  /* where the notice goes: "transport" */
    tern_dsn_attach attach; /* the most of the original to return */
} tern_bounce_conf;
tern_mailet_verdict tern_dsn_bounce(const tern_bounce_conf *c, tern_mail *m,
                                    tern_mailet_result *res);
/* init of Bounce and DSNBounce: parameters processor, attachment. */
int tern_dsn_bounce_init(const tern_mailet_params *p, tern_dsn_style style, void **state_r,
                         char *err, size_t size);
/* "From:" of notices: "Mail Delivery System <MAILER-DAEMON@host>". */
void tern_dsn_from(const tern_config *cfg, char *out, size_t size);

#endif
