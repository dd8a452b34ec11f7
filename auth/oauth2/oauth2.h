/* oauth2.h: local validation of JWT access tokens (RFC 7519) signed as
 * compact JWS (RFC 7515) against a JWKS file (RFC 7517), for the `oauth2`
 * auth backend (OAUTHBEARER, XOAUTH2). Private to auth/; exposed so tests
 * can drive it with a fixed clock.
 *
 * Trusted: the params (validated config) and the JWKS file the admin
 * names. Untrusted: the token and the SASL user, both from the client. */
#ifndef TERN_AUTH_OAUTH2_H
#define TERN_AUTH_OAUTH2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/arena.h"

#define TERN_OAUTH2_ALG_RS256 0x01u
#define TERN_OAUTH2_ALG_ES256 0x02u
#define TERN_OAUTH2_ALG_EDDSA 0x04u
#define TERN_OAUTH2_MAX_TOKEN 8192

typedef struct tern_oauth2_params {
    const char *jwks_file;
    const char *issuer;        /* "iss" must equal it */
    const char *audience;      /* "aud" (string or array) must hold it */
    const char *account_claim; /* NULL: "email" */
    int64_t leeway_s;          /* clock skew allowed on exp, nbf, iat */
    unsigned algorithms;       /* TERN_OAUTH2_ALG_*; 0: all three */
} tern_oauth2_params;

typedef struct tern_oauth2 tern_oauth2;

/* Reads and checks the JWKS (blocking). NULL with *error_r (malloc'd). */
tern_oauth2 *tern_oauth2_new(const tern_oauth2_params *p, char **error_r);
void tern_oauth2_free(tern_oauth2 *o);
size_t tern_oauth2_key_count(const tern_oauth2 *o);

/* Claim checks shared by JWT validation and introspection answers (both
 * RFC 7519 claim sets): whether "aud" (a string or an array of them)
 * holds want; and a NumericDate (seconds, possibly fractional): 0 absent,
 * 1 present (*out), -1 not a number. */
struct tern_json;
bool tern_oauth2_aud_holds(const struct tern_json *aud, const char *want);
int tern_oauth2_numeric_date(const struct tern_json *v, double *out);

/* Name to TERN_OAUTH2_ALG_* ("RS256", "ES256", "EdDSA"), 0 if unknown. */
unsigned tern_oauth2_alg(const char *name);

/* Checks token (signature, alg, kid, iss, aud, exp, nbf, iat, the
 * account claim) at unix time `now`; user, if non-empty, must equal the
 * claim (case-insensitively). Thread-safe on a shared tern_oauth2.
 * Returns 0 and *account_r (in arena), or -1 and a reason in why (for the
 * log, never for the client). */
int tern_oauth2_verify(const tern_oauth2 *o, const char *token, size_t token_len,
                       const char *user, int64_t now, tern_arena *arena, char **account_r,
                       char *why, size_t why_size);

/* Whether token is a compact JWS whose header names an allowed alg and a
 * key we hold (so tern_oauth2_verify can decide it). o may be NULL. */
bool tern_oauth2_can_verify(const tern_oauth2 *o, const char *token, size_t token_len);

#endif
