/* Delivery status notifications for the remote queue (RFC 3464): the
 * multipart/report the sender gets when remote delivery fails. Pure:
 * builds bytes from our own envelope and the failure details. */
#ifndef TERN_SERVER_QUEUE_DSN_H
#define TERN_SERVER_QUEUE_DSN_H

#include <stddef.h>
#include <stdint.h>

#include "storage/queue/spool.h"

typedef struct tern_dsn_rcpt {
    const char *addr;
    const char *orcpt;      /* as received ("rfc822;x@y"), or NULL */
    const char *status;     /* "5.1.1" (RFC 3463); NULL: 5.0.0 */
    const char *remote_mta; /* the server that answered, or NULL */
    const char *diagnostic; /* its reply ("550 5.1.1 no such user") when remote_mta is
                               set, else our own reason */
} tern_dsn_rcpt;

/* The whole DSN message (header and body, CRLF), malloc'd; NULL on OOM.
 * `msg` is the original message: all of it with RET=FULL, else its header
 * only (text/rfc822-headers), per RFC 3461 4.3. */
uint8_t *tern_dsn_build(const char *reporting_mta, const tern_envelope *env,
                        const tern_dsn_rcpt *rcpts, size_t n, const uint8_t *msg, size_t len,
                        size_t *len_r);

#endif
