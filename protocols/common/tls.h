/* The one TLS interface every protocol uses; only tls_mbedtls.c knows the
 * library (mbedTLS 2.28, so TLS 1.2 only). It works on memory buffers: the
 * caller feeds ciphertext read from the socket and sends the ciphertext this
 * module queues, so the event loop owns all I/O and nothing here blocks.
 * Input trusted: the config (already validated); the peer's bytes are not. */
#ifndef TERN_TLS_H
#define TERN_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf/config.h"
#include "lib/buf.h"
#include "protocols/common/tls_dane.h"

#define TERN_TLS_OK 0
#define TERN_TLS_AGAIN 1    /* needs more input from the peer (send output first) */
#define TERN_TLS_CLOSED 2   /* peer sent close_notify */
#define TERN_TLS_ERROR (-1) /* fatal: close the connection */

typedef struct tern_tls_server tern_tls_server;
typedef struct tern_tls_conn tern_tls_conn;

/* Built once per config snapshot from tls: and the listeners: it loads every
 * certificate, builds the SNI table (exact name, then parent domain, then the
 * default), and one mbedTLS config per TLS listener (client CA, verification
 * mode, cipher list). When no certificate is configured, or a name matches
 * none and there is no default, a self-signed certificate for
 * server.hostname is generated in memory and a warning logged.
 * Returns NULL with a message in *error_r (malloc'd) on failure. */
tern_tls_server *tern_tls_server_new(const tern_config *cfg, char **error_r);
tern_tls_server *tern_tls_server_ref(tern_tls_server *s);
void tern_tls_server_unref(tern_tls_server *s);

/* The client side, for remote delivery: one context (random generator,
 * the trusted CAs) shared by the outbound connections of a loop.
 * ca_file NULL: the system bundle (/etc/ssl/certs/ca-certificates.crt);
 * a missing bundle is not an error (nothing verifies then). */
typedef struct tern_tls_client tern_tls_client;
tern_tls_client *tern_tls_client_new(const char *ca_file, char **error_r);
void tern_tls_client_free(tern_tls_client *cl);
/* A client connection to `server_name` (SNI and the name checked). With
 * `require_verified` the handshake fails unless the certificate verifies
 * for that name; otherwise (opportunistic STARTTLS, RFC 3207) it goes on
 * and tern_tls_conn_peer_verified() tells. The context must outlive it. */
tern_tls_conn *tern_tls_conn_new_client(tern_tls_client *cl, const char *server_name,
                                        bool require_verified);

/* A server-side connection for listener index `listener` of the config the
 * server was built from. NULL when out of memory. */
tern_tls_conn *tern_tls_conn_new(tern_tls_server *s, size_t listener);
void tern_tls_conn_free(tern_tls_conn *c);

/* Ciphertext received from the peer. Returns 0, or TERN_TLS_ERROR when more
 * than a bounded amount (about 2 records) is queued unread. */
int tern_tls_conn_feed(tern_tls_conn *c, const uint8_t *data, size_t len);
/* How many bytes tern_tls_conn_feed accepts now; 0 means stop reading the
 * socket until the plaintext has been read (backpressure). */
size_t tern_tls_conn_feed_room(const tern_tls_conn *c);
/* Advances the handshake: TERN_TLS_OK when complete, TERN_TLS_AGAIN, or
 * TERN_TLS_ERROR (reason via tern_tls_conn_error). */
int tern_tls_conn_handshake(tern_tls_conn *c);
bool tern_tls_conn_established(const tern_tls_conn *c);
/* Decrypts into buf: TERN_TLS_OK with *nread_r > 0 bytes, TERN_TLS_AGAIN
 * (nothing decryptable yet), TERN_TLS_CLOSED, TERN_TLS_ERROR. Completes the
 * handshake first if needed. Send the output queue after every call. */
int tern_tls_conn_read(tern_tls_conn *c, uint8_t *buf, size_t len, size_t *nread_r);
/* Encrypts all of data into the output queue: TERN_TLS_OK or TERN_TLS_ERROR. */
int tern_tls_conn_write(tern_tls_conn *c, const uint8_t *data, size_t len);
/* Queues a close_notify alert. */
void tern_tls_conn_close_notify(tern_tls_conn *c);
/* Ciphertext waiting to be sent; the caller sends it and consumes what it
 * took with tern_buf_consume() (or takes the whole buffer and resets len). */
tern_buf *tern_tls_conn_output(tern_tls_conn *c);

/* After the handshake. Strings are owned by the connection. */
const char *tern_tls_conn_version(const tern_tls_conn *c);  /* "TLSv1.2" */
const char *tern_tls_conn_cipher(const tern_tls_conn *c);   /* IANA-style name */
const char *tern_tls_conn_sni(const tern_tls_conn *c);      /* NULL when none */
/* Client certificate: subject DN as mbedTLS prints it, in certificate order
 * ("O=Example, CN=alice"), or NULL; whether it verified against the
 * listener's client_ca. The DN is the peer's text: quote it when logging. */
const char *tern_tls_conn_peer_subject(const tern_tls_conn *c);
bool tern_tls_conn_peer_verified(const tern_tls_conn *c);
const char *tern_tls_conn_error(const tern_tls_conn *c);

/* The tls-unique channel binding (RFC 5929) of an established connection,
 * for SCRAM-SHA-256-PLUS: the first Finished message's verify_data (12
 * bytes in TLS 1.2). Only when the handshake negotiated the extended master
 * secret (RFC 7627): without it an attacker in the middle can make two
 * connections share a tls-unique (the triple handshake attack). Returns its
 * length, or 0 when there is none to give (then -PLUS is not offered). */
size_t tern_tls_conn_tls_unique(const tern_tls_conn *c, uint8_t *out, size_t cap);

/* DANE (RFC 7672), for SMTP to a host whose TLSA records validated: a
 * client connection like the opportunistic one, except that the
 * certificate must match one of the usable records (DANE-EE: the leaf,
 * no name check; DANE-TA: a certificate of the chain, then the chain and
 * server_name are checked up to it); otherwise the handshake fails and
 * tern_tls_conn_error says why. alt_name (NULL: none) is a second name
 * DANE-TA accepts: the MX host's own name when server_name, the TLSA base
 * domain, is its CNAME target (RFC 7672 2.2.2, 3.2.2). The records are
 * copied. Without a usable record it is the opportunistic connection. */
tern_tls_conn *tern_tls_conn_new_client_dane(tern_tls_client *cl, const char *server_name,
                                             const char *alt_name, const tern_tlsa *tlsa,
                                             size_t n);
/* The handshake matched a TLSA record (then peer_verified is true too). */
bool tern_tls_conn_dane_verified(const tern_tls_conn *c);

#endif
