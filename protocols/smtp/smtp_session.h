/* The SMTP server session (RFC 5321 with the ESMTP extensions of
 * smtp_session.c's EHLO reply), used for both inbound MX and submission
 * listeners. Input: the client's bytes (untrusted), the config snapshot the
 * session was created with (validated). */
#ifndef TERN_SMTP_SESSION_H
#define TERN_SMTP_SESSION_H

#include <stddef.h>

#include "protocols/common/session.h"

/* Creates a session on an accepted socket and sends the greeting (after the
 * handshake on implicit TLS listeners). Takes over the references and the
 * fd in `args` in every case. Returns 0 or a negative libuv error. */
int tern_smtp_session_start(tern_session_host *h, tern_session_args *args);

/* The one line a refused connection gets before it is closed. */
size_t tern_smtp_refusal(const tern_config *cfg, const char *why, char *buf, size_t size);

#endif
