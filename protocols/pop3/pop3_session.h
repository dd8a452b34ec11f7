/* The POP3 server session (RFC 1939 with RFC 2449 CAPA, RFC 2595 STLS,
 * RFC 5034 SASL, RFC 6856 UTF8). Input: the client's bytes (untrusted), the
 * config snapshot the session was created with (validated). */
#ifndef TERN_POP3_SESSION_H
#define TERN_POP3_SESSION_H

#include "protocols/common/session.h"

/* Creates a session on an accepted socket and sends the greeting (after the
 * handshake on implicit TLS listeners). Takes over the references and the
 * fd in `args` in every case. Returns 0 or a negative libuv error. */
int tern_pop3_session_start(tern_session_host *h, tern_session_args *args);

/* The one line a refused connection gets before it is closed. */
size_t tern_pop3_refusal(const char *why, char *buf, size_t size);

#endif
