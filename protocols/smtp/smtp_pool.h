/* The outbound connection pool, owned by the main loop like the queue
 * manager: after a message, a healthy SMTP client connection waits idle,
 * keyed by everything that makes two connections interchangeable (peer
 * address and port, TLS name and policy, our HELO name, smarthost
 * credentials, source address), and the next message for the same key
 * goes over it after RSET instead of a new connect. Input: the queue's
 * delivery parameters (ours) and its config snapshot. */
#ifndef TERN_SMTP_POOL_H
#define TERN_SMTP_POOL_H

#include <uv.h>

#include "conf/config.h"
#include "protocols/smtp/smtp_client.h"

typedef struct tern_smtp_pool tern_smtp_pool;

/* conf reads the current queue settings (connection_reuse_limit,
 * connection_idle_timeout, max_idle_connections, use_chunking) at each
 * start, so a SIGHUP applies to the next message. */
tern_smtp_pool *tern_smtp_pool_new(uv_loop_t *loop, const tern_queue_conf *(*conf)(void *arg),
                                   void *conf_arg);
/* tern_smtp_client_start with a kept connection when one fits (same
 * contract: cb runs once, NULL when nothing started). */
tern_smtp_client *tern_smtp_pool_start(tern_smtp_pool *pool, const tern_smtp_client_params *params,
                                       tern_smtp_client_cb cb, void *arg);
/* Idle connections now. */
size_t tern_smtp_pool_idle(const tern_smtp_pool *pool);
/* Shutdown: idle connections QUIT, nothing is kept any more. The loop
 * must run on for them to close. */
void tern_smtp_pool_close(tern_smtp_pool *pool);
/* After the loop has stopped. */
void tern_smtp_pool_free(tern_smtp_pool *pool);

#endif
