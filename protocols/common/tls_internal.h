/* Shared between the tls_*.c files only, never by protocols: the pieces of
 * the mbedTLS backend that live in their own file. Trusts its callers. */
#ifndef TERN_TLS_INTERNAL_H
#define TERN_TLS_INTERNAL_H

#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

/* Generates an EC P-256 key and a self-signed certificate for `hostname`
 * (CN and subjectAltName dNSName), valid from an hour ago for one year.
 * `crt` and `key` must be initialised and empty. Returns 0, or -1 with a
 * malloc'd message in *error_r. */
int tls__selfsigned(const char *hostname, int (*f_rng)(void *, unsigned char *, size_t),
                    void *p_rng, mbedtls_x509_crt *crt, mbedtls_pk_context *key,
                    char **error_r);

/* malloc'd printf, for *error_r; NULL only when out of memory. */
char *tls__strdupf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
