/* The control socket (server/control.c): a Unix stream socket on the main
 * loop through which `ternctl queue` (and any local admin tool) asks the
 * running ternd to list and act on its queue, and read its login
 * counters (auth.stats). One JSON object per line
 * each way; see docs/queue.md for the requests. */
#ifndef TERN_SERVER_CONTROL_H
#define TERN_SERVER_CONTROL_H

#include <stddef.h>
#include <uv.h>

#include "auth/auth.h"
#include "server/queue.h"

/* Longest request line, newline included; a longer one is answered with
 * an error and the connection closed. */
#define TERN_CONTROL_MAX_LINE 4096
/* Connections served at once; more are closed on accept. */
#define TERN_CONTROL_MAX_CLIENTS 16

typedef struct tern_control tern_control;

/* Binds `path` (mode 0600) and listens on loop. A socket file a live
 * server answers on is refused (we would steal its clients); a stale one
 * (nobody listening) is unlinked first; a path that is not a socket is
 * refused. Returns NULL with err set. */
/* auth_slot: where the server keeps its current auth snapshot (replaced on
 * reload, read here on the same loop); may be NULL. */
tern_control *tern_control_new(uv_loop_t *loop, const char *path, tern_queue *queue,
                               tern_auth *const *auth_slot, char *err, size_t err_size);
/* Stops listening, closes the clients and unlinks the path; the loop must
 * run on for the handles to close, then tern_control_free. */
void tern_control_close(tern_control *c);
void tern_control_free(tern_control *c);

/* Answers one request line (without the newline) into out: exported for
 * the unit test, which runs it without a socket. */
void tern_control_handle(tern_queue *queue, tern_auth *auth, const char *line, size_t len,
                         tern_buf *out);

#endif
