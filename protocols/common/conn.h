/* A client connection as protocol sessions see it: a libuv TCP handle, an
 * optional TLS layer (STARTTLS or implicit), a plaintext input buffer the
 * session parses in place, an output queue with back-pressure, and one idle
 * timer. The session never touches the socket or TLS directly, so every
 * protocol gets the same STARTTLS injection defence and buffer limits.
 * Input: bytes from the network (untrusted) go to the session unchanged. */
#ifndef TERN_CONN_H
#define TERN_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "lib/buf.h"
#include "protocols/common/tls.h"

typedef struct tern_conn tern_conn;

typedef struct tern_conn_cbs {
    /* New plaintext is in tern_conn_input(); the session consumes what it
     * parsed with tern_conn_consume(). Called again after a resume if input
     * is still buffered. */
    void (*on_data)(tern_conn *c);
    /* Implicit TLS: the handshake finished (send the greeting now).
     * STARTTLS: the handshake finished (reset protocol state). */
    void (*on_tls)(tern_conn *c);
    /* The idle timer fired. */
    void (*on_timeout)(tern_conn *c);
    /* The peer closed, a read or write failed, or TLS failed; `reason` is a
     * short text for the log. The session should close (no more writes). */
    void (*on_error)(tern_conn *c, const char *reason);
    /* The output queue fell below the low-water mark (used to resume work
     * that was paused for back-pressure). May be NULL. */
    void (*on_drain)(tern_conn *c);
    /* The handle is closed; free the session now. */
    void (*on_close)(tern_conn *c);
} tern_conn_cbs;

/* Per-worker state shared by its connections: one read buffer, because
 * reads are processed synchronously in the read callback; only what a
 * session leaves unconsumed is copied into the connection's own buffer. */
typedef struct tern_conn_worker {
    uint8_t *readbuf;
    size_t readbuf_size;
    bool readbuf_busy;
} tern_conn_worker;

struct tern_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wreq;
    tern_conn_worker *worker;
    const tern_conn_cbs *cbs;
    void *data;              /* the session */
    tern_tls_conn *tls;      /* NULL until TLS starts */
    tern_buf in;             /* plaintext not yet consumed by the session */
    const uint8_t *view;     /* what on_data sees: the shared buffer or `in` */
    size_t view_len;
    size_t view_used;
    tern_buf out;            /* wire bytes queued, not yet handed to libuv */
    tern_buf inflight;       /* wire bytes handed to uv_write */
    size_t read_size;        /* listener buffer_size */
    size_t out_high;         /* pause parsing above this much unsent output */
    uint64_t timeout_ms;
    uint64_t bytes_in, bytes_out;
    unsigned handles_open;
    bool reading, paused, closing, close_after_flush, tls_pending, in_callback,
        want_data, failed;
    struct sockaddr_storage peer, local;
    char peer_ip[64];
    int peer_port;
};

/* Initialises the connection around an accepted socket fd (takes
 * ownership). Returns 0; a negative libuv error when no handle was created
 * (the fd is closed, on_close will not run); or 1 when the socket could not
 * be used but handles exist: they are closing and on_close will run. */
int tern_conn_init(tern_conn *c, uv_loop_t *loop, tern_conn_worker *w, int fd,
                   size_t read_size, const tern_conn_cbs *cbs, void *data);
/* Starts reading; with `tls` non-NULL the connection is implicit TLS and
 * on_tls fires when the handshake completes. */
int tern_conn_start(tern_conn *c, tern_tls_conn *tls);

/* The unconsumed plaintext, valid until tern_conn_consume or return from
 * on_data. */
const uint8_t *tern_conn_input(tern_conn *c, size_t *len_r);
void tern_conn_consume(tern_conn *c, size_t n);

/* Queues bytes (encrypted when TLS is on) and schedules a flush. */
void tern_conn_write(tern_conn *c, const void *data, size_t len);
void tern_conn_printf(tern_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Bytes queued but not yet written to the socket. */
size_t tern_conn_unsent(const tern_conn *c);

/* Stops delivering on_data (and stops reading the socket) until resumed. */
void tern_conn_pause(tern_conn *c);
void tern_conn_resume(tern_conn *c);

/* STARTTLS: call right after queueing the "go ahead" reply. Discards every
 * plaintext byte already received (RFC 3207 section 6, CVE-2011-0411), sends
 * the queued reply in the clear, then runs the handshake; on_tls fires when
 * it completes. Takes ownership of tls. */
void tern_conn_starttls(tern_conn *c, tern_tls_conn *tls);

/* The client side of STARTTLS: after the server's 220 to our STARTTLS,
 * starts the handshake (our ClientHello goes out now); on_tls fires when
 * it completes. Plaintext the server sent after its 220 is discarded.
 * Takes ownership of tls. */
void tern_conn_starttls_client(tern_conn *c, tern_tls_conn *tls);

/* (Re)arms the idle timer; 0 disarms. */
void tern_conn_set_timeout(tern_conn *c, uint64_t ms);

/* Closes: with `flush`, after the queued output is written (and a TLS
 * close_notify); on_close fires once the handles are closed. Idempotent. */
void tern_conn_close(tern_conn *c, bool flush);

bool tern_conn_is_tls(const tern_conn *c);

#endif
