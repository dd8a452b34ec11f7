/* The IMAP server session (RFC 9051, RFC 3501 and the extensions listed in
 * docs/imap.md). Input: the client's bytes (untrusted), the config snapshot
 * the session was created with (validated). */
#ifndef TERN_IMAP_SESSION_H
#define TERN_IMAP_SESSION_H

#include "protocols/common/session.h"

/* Creates a session on an accepted socket and sends the greeting (after the
 * handshake on implicit TLS listeners). Takes over the references and the
 * fd in `args` in every case. Returns 0 or a negative libuv error. */
int tern_imap_session_start(tern_session_host *h, tern_session_args *args);

#endif
