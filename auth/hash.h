/* hash.h: stored password credentials: verifying a plaintext password
 * against them, making new ones, and the stored secrets that SCRAM and
 * CRAM-MD5 need. Pure functions, safe from any thread; nothing here blocks
 * on I/O, but argon2id, crypt(3) and PBKDF2 cost CPU time on purpose, so
 * callers on an event loop run them on a pool thread.
 *
 * A stored value is a credential list: one or more credentials separated
 * by spaces, each "{SCHEME}data" (Dovecot's notation, so hashes move
 * between the two) or a bare crypt string ("$argon2id$...", "$6$...").
 * The first credential is the one a plaintext password is checked against;
 * the others serve their own mechanisms (typically "{ARGON2ID}... " then
 * "{SCRAM-SHA-256}..."). No scheme's data holds a space, so the list needs
 * no quoting.
 *
 * Schemes understood:
 *   ARGON2ID (also ARGON2I)   libsodium crypto_pwhash_str_verify
 *   SHA512-CRYPT ($6$), SHA256-CRYPT ($5$), BLF-CRYPT ($2y$/$2b$/$2a$),
 *   MD5-CRYPT ($1$, legacy)   crypt_rn from libxcrypt
 *   PLAIN (also CLEAR, CLEARTEXT)
 *   CRAM-MD5                  Dovecot's: 64 hex digits, the HMAC-MD5 outer
 *                             then inner MD5 states after the key block
 *   SCRAM-SHA-256             Dovecot's: "iterations,salt,StoredKey,ServerKey"
 *                             (base64), RFC 5802/7677
 * Input trusted: stored values come from the admin (a file, the store) but
 * are parsed defensively (lengths and iteration counts bounded); passwords
 * are the client's and are only ever hashed and compared in constant time. */
#ifndef TERN_AUTH_HASH_H
#define TERN_AUTH_HASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth/sasl/sasl.h"

#define TERN_HASH_MATCH 1
#define TERN_HASH_MISMATCH 0
#define TERN_HASH_EUNSUPPORTED (-1) /* unknown scheme or malformed value */

/* Argon2id cost of new hashes: OWASP's minimum (19 MiB, 2 passes) keeps one
 * login well under 50 ms of CPU; the login limiter, not the hash, is what
 * stops guessing. */
#define TERN_HASH_ARGON2_OPSLIMIT 2
#define TERN_HASH_ARGON2_MEMLIMIT (19u * 1024u * 1024u)

#define TERN_HASH_SCRAM_DEFAULT_ITERATIONS 4096
#define TERN_HASH_SCRAM_MAX_ITERATIONS 1000000 /* a hostile value must not cost minutes */
#define TERN_HASH_SCRAM_MAX_SALT TERN_SCRAM_SALT_MAX
#define TERN_HASH_MAX_PASSWORD 1024
#define TERN_HASH_MAX 1024 /* longest credential list we write or accept */

/* tern_scram_keys comes from the SASL layer (auth/sasl/sasl.h): the keys
 * this module parses are the ones the SCRAM mechanism consumes. */

/* Calls sodium_init(); idempotent. Returns 0 or -1. */
int tern_hash_init(void);

/* Checks `pw` against the first credential of the list `stored`.
 * TERN_HASH_MATCH, TERN_HASH_MISMATCH or TERN_HASH_EUNSUPPORTED. */
int tern_hash_verify(const char *stored, const char *pw, size_t pw_len);
/* The same cost as checking an argon2id hash of ours, and never a match:
 * what a lookup of an unknown user spends so that timing does not tell. */
void tern_hash_verify_dummy(const char *pw, size_t pw_len);

/* Finds the credential of `scheme` ("SCRAM-SHA-256", "CRAM-MD5", "PLAIN")
 * in a list; returns its data (after the "{...}") and length, or NULL. */
const char *tern_hash_find(const char *stored, const char *scheme, size_t *len_r);
/* The scheme of the first credential, for logs ("ARGON2ID", "SHA512-CRYPT",
 * ...), or "unknown". */
const char *tern_hash_scheme(const char *stored, char *buf, size_t size);

/* New credentials. Each writes a NUL-terminated string, returns 0 or -1. */
int tern_hash_argon2id(const char *pw, size_t pw_len, char *out, size_t size);
int tern_hash_scram_sha256(const char *pw, size_t pw_len, uint32_t iterations, char *out,
                           size_t size);

/* SCRAM-SHA-256: the keys from a password (RFC 5802: SaltedPassword by
 * PBKDF2-HMAC-SHA-256, StoredKey = H(HMAC(SP, "Client Key")), ServerKey =
 * HMAC(SP, "Server Key")), and the keys from a stored "i,salt,sk,svk". */
int tern_hash_scram_derive(const char *pw, size_t pw_len, const uint8_t *salt, size_t salt_len,
                           uint32_t iterations, uint8_t stored_key[32], uint8_t server_key[32]);
int tern_hash_scram_parse(const char *data, size_t len, tern_scram_keys *k);

/* CRAM-MD5 (RFC 2195): the 32-byte HMAC-MD5 context from a password or
 * from Dovecot's 64 hex digits, and the answer to a challenge from it. */
void tern_hash_cram_md5_context(const char *pw, size_t pw_len, uint8_t ctx[32]);
int tern_hash_cram_md5_parse(const char *hex, size_t len, uint8_t ctx[32]);
void tern_hash_cram_md5_digest(const uint8_t ctx[32], const uint8_t *challenge, size_t len,
                               uint8_t digest[16]);

#endif
