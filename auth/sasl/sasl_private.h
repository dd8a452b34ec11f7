/* Internals shared by the SASL dispatcher (sasl.c) and the mechanism
 * files: the session struct and result helpers. Not for other modules. */
#ifndef TERN_SASL_PRIVATE_H
#define TERN_SASL_PRIVATE_H

#include "auth/sasl/sasl.h"
#include "lib/buf.h"

typedef enum {
    SASL_PLAIN,
    SASL_LOGIN,
    SASL_CRAM_MD5,
    SASL_SCRAM,
    SASL_SCRAM_PLUS,
    SASL_OAUTHBEARER,
    SASL_XOAUTH2,
    SASL_EXTERNAL,
} sasl_mech;

/* Which continuation the session waits for after a NEED_* result. */
typedef enum {
    WAIT_STEP,
    WAIT_VERIFIED,
    WAIT_SCRAM_KEYS,
    WAIT_CRAM_SECRET,
    WAIT_NOTHING, /* finished */
} sasl_wait;

#define SASL_CRAM_CHAL_MAX 320

struct tern_sasl {
    sasl_mech mech;
    sasl_wait wait;
    int state; /* per mechanism; 0 before the first step */
    size_t max_message, max_user;
    bool allow_proxy, external_available, success_data;
    bool have_cb;
    char cb_type[32];
    uint8_t cb_data[TERN_SASL_CB_MAX];
    size_t cb_len;
    uint8_t fake_key[32];
    uint32_t fake_iterations;
    char hostname[256];
    char scope[256];
    int64_t now;

    char *authcid, *authzid, *account; /* each max_user + 1 bytes */
    uint8_t *cred;                     /* password or token, wiped */
    size_t cred_len;
    tern_buf out;                      /* challenge or final data */

    char fixed[SASL_CRAM_CHAL_MAX];    /* test hook */
    char cram_chal[SASL_CRAM_CHAL_MAX];
    uint8_t cram_digest[16];

    /* SCRAM */
    tern_buf gs2;        /* gs2-header as sent, for c= */
    tern_buf first_bare; /* client-first-message-bare */
    tern_buf server_first;
    char nonce[160];     /* client nonce + server nonce */
    tern_scram_keys keys;
    bool keys_real;
    char server_final[64];
};

/* Result helpers: clear r, set the status, mark the session's wait. */
void sasl__reset(tern_sasl_result *r);
void sasl__fail(tern_sasl *s, tern_sasl_result *r, tern_sasl_error e);
void sasl__challenge(tern_sasl *s, tern_sasl_result *r, const void *data, size_t len);
void sasl__success(tern_sasl *s, tern_sasl_result *r, const char *account);
void sasl__need(tern_sasl *s, tern_sasl_result *r, tern_sasl_status st, sasl_wait w);
/* Copies n bytes into the session's credential buffer, NUL-terminated. */
int sasl__set_cred(tern_sasl *s, const uint8_t *p, size_t n);
/* Copies a name into dst (max_user + 1 bytes): -1 if too long, -2 if it
 * holds a NUL, a control character or invalid UTF-8. */
int sasl__set_name(tern_sasl *s, char *dst, const uint8_t *p, size_t n);
/* Decodes an RFC 5802 saslname ("=2C" -> ",", "=3D" -> "=") into dst;
 * -1 too long, -2 malformed. */
int sasl__set_saslname(tern_sasl *s, char *dst, const uint8_t *p, size_t n);
/* GS2 header (RFC 5801 as profiled by 5802 and 7628): flag, authzid.
 * Sets *flag to 'n', 'y' or 'p' and copies a p= name into cb_name.
 * Returns the length consumed (through the second ','), or a negative
 * tern_sasl_error. */
long sasl__gs2_header(tern_sasl *s, const uint8_t *m, size_t len, char *flag,
                      char *cb_name, size_t cb_name_size);

void sasl__plain_step(tern_sasl *s, const uint8_t *m, size_t len, tern_sasl_result *r);
void sasl__login_step(tern_sasl *s, const uint8_t *m, size_t len, tern_sasl_result *r);
void sasl__cram_step(tern_sasl *s, const uint8_t *m, size_t len, tern_sasl_result *r);
void sasl__scram_step(tern_sasl *s, const uint8_t *m, size_t len, tern_sasl_result *r);
void sasl__scram_keys(tern_sasl *s, const tern_scram_keys *k, const char *account,
                      tern_sasl_result *r);
void sasl__oauthbearer_step(tern_sasl *s, const uint8_t *m, size_t len, tern_sasl_result *r);
void sasl__xoauth2_step(tern_sasl *s, const uint8_t *m, size_t len, tern_sasl_result *r);
void sasl__oauth_verified(tern_sasl *s, bool ok, const char *account, tern_sasl_result *r);
void sasl__external_step(tern_sasl *s, const uint8_t *m, size_t len, tern_sasl_result *r);

#endif
