/* SASL mechanisms as pure state machines: PLAIN (RFC 4616), LOGIN (the
 * de-facto draft), CRAM-MD5 (RFC 2195), SCRAM-SHA-256 and -PLUS (RFC 5802,
 * RFC 7677; tls-exporter RFC 9266 or tls-unique RFC 5929 channel binding),
 * OAUTHBEARER (RFC 7628), XOAUTH2 (Google's format) and EXTERNAL
 * (RFC 4422). Input: the client's messages, untrusted, already base64
 * decoded by the protocol layer (helpers below). Trusted: the params and
 * the answers the caller gives to NEED_* results.
 *
 * No I/O and no backend calls happen here. A step either produces a
 * challenge, asks the caller something (NEED_*: the caller asks auth/,
 * asynchronously if it likes, then calls the matching tern_sasl_*()
 * continuation), or ends in SUCCESS or FAIL. A failure never says whether
 * the user exists: SCRAM goes on with a fake salt for unknown users.
 *
 * Every pointer in a tern_sasl_result points into the session and stays
 * valid until the next call on that session or tern_sasl_free(). */
#ifndef TERN_SASL_H
#define TERN_SASL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TERN_SASL_MSG_MAX 8192  /* default bound of one decoded client message */
#define TERN_SASL_USER_MAX 256  /* default bound of a username or authzid, bytes */
#define TERN_SASL_CB_MAX 64     /* channel-binding data (exporter: 32 bytes) */
#define TERN_SCRAM_KEY_LEN 32
#define TERN_SCRAM_SALT_MAX 64
#define TERN_SCRAM_ITER_MIN 1
#define TERN_SCRAM_ITER_MAX 10000000u

typedef struct tern_sasl tern_sasl;

typedef struct tern_sasl_params {
    const char *service;  /* "smtp", "imap", "pop3": informational */
    const char *hostname; /* server name in the CRAM-MD5 challenge */
    /* Channel binding of the TLS connection, absent (NULL) without TLS or
     * when the TLS stack cannot export it. Type as in RFC 5056 names:
     * "tls-exporter" or "tls-unique". */
    const char *cb_type;
    const uint8_t *cb_data;
    size_t cb_len;
    bool external_available; /* a verified TLS client certificate exists */
    /* PLAIN/SCRAM authzid other than the authcid is passed on to the
     * caller instead of refused (the caller decides who may proxy). */
    bool allow_proxy;
    /* Protocols without "additional data with success" (SMTP, POP3) get
     * SCRAM's server-final as one more CHALLENGE, answered by an empty
     * response; with it (IMAP), SUCCESS carries the data. */
    bool success_data;
    /* Key for the fake SCRAM salts of unknown users; the same on every
     * node and across restarts, or an attacker can compare. NULL: a random
     * key per process. */
    const uint8_t *secret;
    size_t secret_len;
    uint32_t fake_iterations; /* 0: 4096, match what real keys use */
    const char *oauth_scope;  /* scope in the OAuth error JSON, may be NULL */
    size_t max_message;       /* 0: TERN_SASL_MSG_MAX */
    size_t max_user;          /* 0: TERN_SASL_USER_MAX */
    int64_t now;              /* unix time for the CRAM challenge; 0: time() */
} tern_sasl_params;

typedef enum {
    TERN_SASL_CHALLENGE,            /* send data (base64 by the protocol) */
    TERN_SASL_NEED_VERIFY_PASSWORD, /* authcid, authzid, password -> tern_sasl_verified */
    TERN_SASL_NEED_SCRAM_KEYS,      /* authcid (authzid) -> tern_sasl_scram_keys */
    TERN_SASL_NEED_CRAM_SECRET,     /* authcid, challenge, digest -> tern_sasl_cram_context
                                       (or tern_sasl_cram_secret with a plaintext secret) */
    TERN_SASL_NEED_VERIFY_TOKEN,    /* authzid (user), token -> tern_sasl_verified */
    TERN_SASL_NEED_EXTERNAL,        /* authzid (maybe "") -> tern_sasl_verified */
    TERN_SASL_SUCCESS,              /* account; data: final server data, if any */
    TERN_SASL_FAIL,                 /* error; data: SCRAM "e=..." if any */
} tern_sasl_status;

typedef enum {
    TERN_SASL_OK = 0,
    TERN_SASL_EMALFORMED,      /* syntax, encoding, wrong nonce */
    TERN_SASL_ETOOLONG,        /* message or name over the limits */
    TERN_SASL_EBADCRED,        /* wrong password, proof, token, unknown user */
    TERN_SASL_EABORTED,        /* client sent "*" */
    TERN_SASL_ECB_UNSUPPORTED, /* channel binding type we do not have */
    TERN_SASL_ECB_MISMATCH,    /* c= does not match our channel binding */
    TERN_SASL_EDOWNGRADE,      /* SCRAM "y" while we offer -PLUS */
    TERN_SASL_EAUTHZ,          /* authzid not allowed */
    TERN_SASL_EEXTENSION,      /* SCRAM mandatory extension (m=) */
    TERN_SASL_ESTATE,          /* call out of order */
    TERN_SASL_EINTERNAL,       /* crypto library failure, out of memory */
} tern_sasl_error;

typedef struct tern_sasl_result {
    tern_sasl_status status;
    tern_sasl_error error;
    const uint8_t *data; /* CHALLENGE bytes; SUCCESS/FAIL extra data; a NUL
                          * follows (not counted in data_len) */
    size_t data_len;
    const char *authcid; /* NUL-terminated; "" when the mechanism has none */
    const char *authzid; /* "" when none was requested */
    const uint8_t *password; /* NEED_VERIFY_PASSWORD; NUL-terminated too */
    size_t password_len;
    const char *token;   /* NEED_VERIFY_TOKEN */
    const char *challenge; /* NEED_CRAM_SECRET: the challenge sent */
    const uint8_t *digest; /* NEED_CRAM_SECRET: 16 bytes from the client */
    const char *account; /* SUCCESS */
} tern_sasl_result;

typedef struct tern_scram_keys {
    uint8_t salt[TERN_SCRAM_SALT_MAX];
    size_t salt_len;
    uint32_t iterations;
    uint8_t stored_key[TERN_SCRAM_KEY_LEN];
    uint8_t server_key[TERN_SCRAM_KEY_LEN];
} tern_scram_keys;

/* Mechanism names known here, for "is it one of ours" before new(). */
bool tern_sasl_mech_known(const char *mech);

/* NULL if the mechanism is unknown (case-insensitive name) or cannot run
 * (-PLUS without channel-binding data), or out of memory. The params are
 * copied. */
tern_sasl *tern_sasl_new(const char *mech, const tern_sasl_params *p);
/* Wipes credentials and frees. NULL is fine. */
void tern_sasl_free(tern_sasl *s);

/* One client message, decoded. The first call takes the initial response:
 * msg NULL means the client sent none (the mechanism answers with its
 * first challenge, empty for client-first mechanisms); msg non-NULL with
 * len 0 is an empty initial response ("=" in SASL-IR). */
void tern_sasl_step(tern_sasl *s, const uint8_t *msg, size_t len, tern_sasl_result *r);
/* The client sent "*": FAIL with TERN_SASL_EABORTED. */
void tern_sasl_abort(tern_sasl *s, tern_sasl_result *r);

/* Answer to NEED_VERIFY_PASSWORD, NEED_VERIFY_TOKEN and NEED_EXTERNAL.
 * account NULL: the authzid if one was given, else the authcid. A failed
 * token gives the RFC 7628 error CHALLENGE first; the next step fails. */
void tern_sasl_verified(tern_sasl *s, bool ok, const char *account, tern_sasl_result *r);
/* Answer to NEED_SCRAM_KEYS; keys NULL when the user is unknown or has no
 * SCRAM keys: the exchange goes on with a fake salt and fails at the end. */
void tern_sasl_scram_keys(tern_sasl *s, const tern_scram_keys *keys, const char *account,
                          tern_sasl_result *r);
/* Answer to NEED_CRAM_SECRET; secret NULL when the user is unknown. */
void tern_sasl_cram_secret(tern_sasl *s, const uint8_t *secret, size_t secret_len,
                           const char *account, tern_sasl_result *r);

/* Answer to NEED_CRAM_SECRET with the HMAC-MD5 context (auth/'s GET_SECRET
 * out.cram_md5); ctx NULL when the user is unknown or has no such secret. */
void tern_sasl_cram_context(tern_sasl *s, const uint8_t *ctx, const char *account,
                            tern_sasl_result *r);

/* Protocol helpers. Decodes one client response line (without CRLF).
 * initial: it is a SASL-IR initial response, where "=" means empty. */
typedef enum {
    TERN_SASL_RESP_OK,
    TERN_SASL_RESP_ABORT,   /* "*" */
    TERN_SASL_RESP_BAD,     /* not base64 */
    TERN_SASL_RESP_TOOLONG, /* decodes to more than cap */
} tern_sasl_resp;
tern_sasl_resp tern_sasl_decode_response(const char *line, size_t len, bool initial,
                                         uint8_t *out, size_t cap, size_t *len_r);
/* Stable name for logs ("malformed", "bad_credentials", ...). */
const char *tern_sasl_error_name(tern_sasl_error e);

/* What the backends can serve, for tern_sasl_mechanisms(). */
#define TERN_SASL_CAP_PASSWORD 0x01u /* verify a plaintext password */
#define TERN_SASL_CAP_SCRAM 0x02u    /* SCRAM-SHA-256 keys */
#define TERN_SASL_CAP_CRAM 0x04u     /* the plaintext secret for CRAM-MD5 */
#define TERN_SASL_CAP_TOKEN 0x08u    /* OAuth bearer tokens */
#define TERN_SASL_CAP_EXTERNAL 0x10u /* a client certificate to map */
/* Space-separated mechanism list into buf (NUL-terminated; "" if none).
 * Mechanisms that show a password or bearer token (PLAIN, LOGIN,
 * OAUTHBEARER, XOAUTH2) only with TLS or allow_plaintext; -PLUS only with
 * channel binding. Returns the length, or -1 if buf is too small. */
int tern_sasl_mechanisms(unsigned caps, bool tls_active, bool allow_plaintext,
                         bool cb_available, char *buf, size_t size);

/* SCRAM-SHA-256 keys from a password (PBKDF2-HMAC-SHA-256). Returns 0 or
 * -1 (bad salt length or iterations, crypto failure). */
int tern_scram_derive(const uint8_t *password, size_t password_len, const uint8_t *salt,
                      size_t salt_len, uint32_t iterations, tern_scram_keys *keys_r);
/* Dovecot's storage format, so passwords migrate both ways:
 *   {SCRAM-SHA-256}<iterations>,<salt b64>,<StoredKey b64>,<ServerKey b64>
 * Parse accepts it with or without the "{SCRAM-SHA-256}" prefix.
 * Format needs TERN_SCRAM_TEXT_MAX bytes. Both return 0 or -1. */
#define TERN_SCRAM_TEXT_MAX 256
int tern_scram_keys_parse(const char *text, tern_scram_keys *keys_r);
int tern_scram_keys_format(const tern_scram_keys *keys, char *buf, size_t size);

/* CRAM-MD5 check for callers who hold the secret elsewhere: HMAC-MD5 of
 * the challenge under the secret against the 16-byte digest, constant
 * time. */
bool tern_cram_md5_verify(const uint8_t *secret, size_t secret_len, const char *challenge,
                          const uint8_t digest[16]);

/* The same check from the 32-byte HMAC-MD5 context instead of the secret:
 * Dovecot's {CRAM-MD5} format (outer MD5 state, then inner, each after the
 * 64-byte key pad), which is what auth/ hands out (GET_SECRET), so a
 * stored CRAM-MD5 credential never has to be a plaintext password. */
void tern_cram_md5_digest(const uint8_t ctx[32], const uint8_t *challenge, size_t len,
                          uint8_t digest[16]);
bool tern_cram_md5_verify_context(const uint8_t ctx[32], const char *challenge,
                                  const uint8_t digest[16]);

/* Tests only: the next server nonce (SCRAM, appended to the client's) or
 * the CRAM-MD5 challenge, instead of random ones. */
void tern_sasl_test_fix(tern_sasl *s, const char *nonce_or_challenge);

#endif
