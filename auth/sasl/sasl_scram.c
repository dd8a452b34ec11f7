/* SASL SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677), with
 * tls-exporter (RFC 9266) or tls-unique (RFC 5929) channel binding, and
 * the helpers that derive, store and parse SCRAM keys in Dovecot's format.
 * Input: decoded client messages (untrusted); keys from the caller
 * (trusted). HMAC and SHA-256 from libsodium, PBKDF2 from mbedTLS. */
#include "auth/sasl/sasl_private.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/md.h>
#include <mbedtls/pkcs5.h>
#include <sodium.h>

#include "lib/base64.h"

enum { SC_START, SC_WAIT_FIRST, SC_WAIT_KEYS, SC_WAIT_FINAL, SC_WAIT_ACK, SC_DONE };

#define CLIENT_NONCE_MAX 128
#define SERVER_NONCE_RAW 18 /* RFC 5802 leaves it open; 144 bits is plenty */
#define FAKE_SALT_LEN 16

static void hmac256(const uint8_t *key, size_t key_len, const void *msg, size_t len,
                    uint8_t out[32])
{
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, key_len);
    crypto_auth_hmacsha256_update(&st, msg, len);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof st);
}

int tern_scram_derive(const uint8_t *password, size_t password_len, const uint8_t *salt,
                      size_t salt_len, uint32_t iterations, tern_scram_keys *k)
{
    if (salt_len == 0 || salt_len > TERN_SCRAM_SALT_MAX || iterations < TERN_SCRAM_ITER_MIN ||
        iterations > TERN_SCRAM_ITER_MAX)
        return -1;
    if (sodium_init() < 0)
        return -1;
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    mbedtls_md_context_t ctx;
    mbedtls_md_init(&ctx);
    uint8_t salted[32], client_key[32];
    int rc = -1;
    if (md && mbedtls_md_setup(&ctx, md, 1) == 0 &&
        mbedtls_pkcs5_pbkdf2_hmac(&ctx, password, password_len, salt, salt_len, iterations,
                                  sizeof salted, salted) == 0) {
        memset(k, 0, sizeof *k);
        memcpy(k->salt, salt, salt_len);
        k->salt_len = salt_len;
        k->iterations = iterations;
        hmac256(salted, sizeof salted, "Client Key", 10, client_key);
        crypto_hash_sha256(k->stored_key, client_key, sizeof client_key);
        hmac256(salted, sizeof salted, "Server Key", 10, k->server_key);
        rc = 0;
    }
    mbedtls_md_free(&ctx);
    sodium_memzero(salted, sizeof salted);
    sodium_memzero(client_key, sizeof client_key);
    return rc;
}

#define DOVECOT_PREFIX "{SCRAM-SHA-256}"

static int b64_field(const char *p, size_t n, uint8_t *out, size_t cap, size_t *len_r)
{
    return tern_base64_decode(p, n, out, cap, len_r);
}

int tern_scram_keys_parse(const char *text, tern_scram_keys *k)
{
    size_t plen = strlen(DOVECOT_PREFIX);
    if (strncmp(text, DOVECOT_PREFIX, plen) == 0)
        text += plen;
    const char *c1 = strchr(text, ',');
    const char *c2 = c1 ? strchr(c1 + 1, ',') : NULL;
    const char *c3 = c2 ? strchr(c2 + 1, ',') : NULL;
    if (!c3 || strchr(c3 + 1, ','))
        return -1;
    uint64_t it = 0;
    if (c1 == text || c1 - text > 9)
        return -1;
    for (const char *p = text; p < c1; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        it = it * 10 + (uint64_t)(*p - '0');
    }
    if (it < TERN_SCRAM_ITER_MIN || it > TERN_SCRAM_ITER_MAX)
        return -1;
    tern_scram_keys t;
    memset(&t, 0, sizeof t);
    t.iterations = (uint32_t)it;
    size_t n1, n2, n3;
    if (b64_field(c1 + 1, (size_t)(c2 - c1 - 1), t.salt, sizeof t.salt, &n1) != 0 || n1 == 0 ||
        b64_field(c2 + 1, (size_t)(c3 - c2 - 1), t.stored_key, sizeof t.stored_key, &n2) != 0 ||
        n2 != TERN_SCRAM_KEY_LEN ||
        b64_field(c3 + 1, strlen(c3 + 1), t.server_key, sizeof t.server_key, &n3) != 0 ||
        n3 != TERN_SCRAM_KEY_LEN)
        return -1;
    t.salt_len = n1;
    *k = t;
    sodium_memzero(&t, sizeof t);
    return 0;
}

int tern_scram_keys_format(const tern_scram_keys *k, char *buf, size_t size)
{
    char salt[TERN_BASE64_ENCODED_LEN(TERN_SCRAM_SALT_MAX) + 1];
    char stored[TERN_BASE64_ENCODED_LEN(TERN_SCRAM_KEY_LEN) + 1];
    char server[TERN_BASE64_ENCODED_LEN(TERN_SCRAM_KEY_LEN) + 1];
    if (k->salt_len == 0 || k->salt_len > TERN_SCRAM_SALT_MAX ||
        k->iterations < TERN_SCRAM_ITER_MIN || k->iterations > TERN_SCRAM_ITER_MAX ||
        tern_base64_encode(k->salt, k->salt_len, salt, sizeof salt) < 0 ||
        tern_base64_encode(k->stored_key, TERN_SCRAM_KEY_LEN, stored, sizeof stored) < 0 ||
        tern_base64_encode(k->server_key, TERN_SCRAM_KEY_LEN, server, sizeof server) < 0)
        return -1;
    int n = snprintf(buf, size, DOVECOT_PREFIX "%" PRIu32 ",%s,%s,%s", k->iterations, salt,
                     stored, server);
    return n < 0 || (size_t)n >= size ? -1 : 0;
}

/* Failure with the RFC 5802 server-error value, for protocols that pass
 * it on in a final challenge. */
static void fail_e(tern_sasl *s, tern_sasl_result *r, tern_sasl_error e, const char *value)
{
    s->state = SC_DONE;
    sasl__fail(s, r, e);
    s->out.len = 0;
    if (tern_buf_append_str(&s->out, "e=") == 0 && tern_buf_append_str(&s->out, value) == 0 &&
        tern_buf_append(&s->out, "", 1) == 0) {
        r->data = s->out.data;
        r->data_len = --s->out.len;
    }
}

static bool nonce_char(uint8_t c)
{
    return c >= 0x21 && c <= 0x7e && c != ',';
}

static void client_first(tern_sasl *s, const uint8_t *m, size_t len, tern_sasl_result *r)
{
    char flag, cb_name[32];
    long h = sasl__gs2_header(s, m, len, &flag, cb_name, sizeof cb_name);
    if (h < 0) {
        tern_sasl_error e = (tern_sasl_error)-h;
        fail_e(s, r, e, e == TERN_SASL_ECB_UNSUPPORTED ? "channel-binding-not-supported"
                                                       : "invalid-encoding");
        return;
    }
    if (s->mech == SASL_SCRAM_PLUS) {
        if (flag != 'p') {
            /* The client picked -PLUS but does not bind: nonsense. */
            fail_e(s, r, TERN_SASL_EMALFORMED, "channel-binding-not-supported");
            return;
        }
        if (strcmp(cb_name, s->cb_type) != 0) {
            fail_e(s, r, TERN_SASL_ECB_UNSUPPORTED, "unsupported-channel-binding-type");
            return;
        }
    } else if (flag == 'p') {
        /* RFC 5802 5.1: binding requested with the non-PLUS mechanism. */
        fail_e(s, r, TERN_SASL_ECB_UNSUPPORTED, "server-does-support-channel-binding");
        return;
    } else if (flag == 'y' && s->have_cb) {
        /* The client could bind and thinks we cannot, yet we advertise
         * -PLUS on this connection: someone stripped it from the list. */
        fail_e(s, r, TERN_SASL_EDOWNGRADE, "server-does-support-channel-binding");
        return;
    }
    size_t i = (size_t)h;
    if (tern_buf_append(&s->gs2, m, i) != 0) {
        fail_e(s, r, TERN_SASL_EINTERNAL, "other-error");
        return;
    }
    const uint8_t *bare = m + i;
    size_t bare_len = len - i;
    if (bare_len >= 2 && bare[0] == 'm' && bare[1] == '=') {
        fail_e(s, r, TERN_SASL_EEXTENSION, "extensions-not-supported");
        return;
    }
    if (bare_len < 2 || bare[0] != 'n' || bare[1] != '=') {
        fail_e(s, r, TERN_SASL_EMALFORMED, "invalid-encoding");
        return;
    }
    size_t u = 2, ue = u;
    while (ue < bare_len && bare[ue] != ',')
        ue++;
    if (ue == u || ue + 3 > bare_len || bare[ue + 1] != 'r' || bare[ue + 2] != '=') {
        fail_e(s, r, TERN_SASL_EMALFORMED, "invalid-encoding");
        return;
    }
    int rc = sasl__set_saslname(s, s->authcid, bare + u, ue - u);
    if (rc) {
        fail_e(s, r, rc == -1 ? TERN_SASL_ETOOLONG : TERN_SASL_EMALFORMED,
               rc == -1 ? "other-error" : "invalid-username-encoding");
        return;
    }
    size_t n = ue + 3, ne = n;
    while (ne < bare_len && nonce_char(bare[ne]))
        ne++;
    if (ne == n || (ne < bare_len && bare[ne] != ',') || ne - n > CLIENT_NONCE_MAX) {
        fail_e(s, r, TERN_SASL_EMALFORMED, "invalid-encoding");
        return;
    }
    /* Anything after the nonce is optional extensions, which we ignore
     * as RFC 5802 allows; they stay in the AuthMessage. */
    memcpy(s->nonce, bare + n, ne - n);
    s->nonce[ne - n] = '\0';
    if (s->authzid[0] && strcmp(s->authzid, s->authcid) == 0)
        s->authzid[0] = '\0';
    if (s->authzid[0] && !s->allow_proxy) {
        fail_e(s, r, TERN_SASL_EAUTHZ, "invalid-authzid");
        return;
    }
    if (tern_buf_append(&s->first_bare, bare, bare_len) != 0) {
        fail_e(s, r, TERN_SASL_EINTERNAL, "other-error");
        return;
    }
    s->state = SC_WAIT_KEYS;
    sasl__need(s, r, TERN_SASL_NEED_SCRAM_KEYS, WAIT_SCRAM_KEYS);
}

void sasl__scram_keys(tern_sasl *s, const tern_scram_keys *k, const char *account,
                      tern_sasl_result *r)
{
    if (k && k->salt_len > 0 && k->salt_len <= TERN_SCRAM_SALT_MAX &&
        k->iterations >= TERN_SCRAM_ITER_MIN && k->iterations <= TERN_SCRAM_ITER_MAX) {
        s->keys = *k;
        s->keys_real = true;
    } else {
        /* Unknown user: a salt that is the same on every attempt for this
         * name (a random one would give the game away on the second try)
         * and keys no proof can match. */
        uint8_t mac[32];
        tern_buf in;
        tern_buf_init(&in, 0);
        tern_buf_append(&in, "salt\0", 5);
        tern_buf_append_str(&in, s->authcid);
        hmac256(s->fake_key, sizeof s->fake_key, in.data, in.len, mac);
        tern_buf_free(&in);
        memset(&s->keys, 0, sizeof s->keys);
        memcpy(s->keys.salt, mac, FAKE_SALT_LEN);
        s->keys.salt_len = FAKE_SALT_LEN;
        s->keys.iterations = s->fake_iterations;
        randombytes_buf(s->keys.stored_key, sizeof s->keys.stored_key);
        randombytes_buf(s->keys.server_key, sizeof s->keys.server_key);
        s->keys_real = false;
    }
    if (account && account[0] && s->keys_real) {
        size_t n = strnlen(account, s->max_user);
        memcpy(s->account, account, n);
        s->account[n] = '\0';
    } else {
        s->account[0] = '\0';
    }
    size_t cn = strlen(s->nonce);
    if (s->fixed[0]) {
        size_t fn = strnlen(s->fixed, sizeof s->nonce - 1 - cn);
        memcpy(s->nonce + cn, s->fixed, fn);
        s->nonce[cn + fn] = '\0';
    } else {
        uint8_t raw[SERVER_NONCE_RAW];
        randombytes_buf(raw, sizeof raw);
        tern_base64_encode(raw, sizeof raw, s->nonce + cn, sizeof s->nonce - cn);
    }
    char salt[TERN_BASE64_ENCODED_LEN(TERN_SCRAM_SALT_MAX) + 1];
    tern_base64_encode(s->keys.salt, s->keys.salt_len, salt, sizeof salt);
    s->server_first.len = 0;
    if (tern_buf_printf(&s->server_first, "r=%s,s=%s,i=%" PRIu32, s->nonce, salt,
                        s->keys.iterations) != 0) {
        fail_e(s, r, TERN_SASL_EINTERNAL, "other-error");
        return;
    }
    s->state = SC_WAIT_FINAL;
    sasl__challenge(s, r, s->server_first.data, s->server_first.len);
}

static void client_final(tern_sasl *s, const uint8_t *m, size_t len, tern_sasl_result *r)
{
    /* The proof is the last attribute; what precedes it is signed. */
    size_t last = len;
    while (last > 0 && m[last - 1] != ',')
        last--;
    if (last == 0 || len - last < 2 || m[last] != 'p' || m[last + 1] != '=') {
        fail_e(s, r, TERN_SASL_EMALFORMED, "invalid-encoding");
        return;
    }
    size_t wp_len = last - 1; /* client-final-message-without-proof */
    if (wp_len < 2 || m[0] != 'c' || m[1] != '=') {
        fail_e(s, r, TERN_SASL_EMALFORMED, "invalid-encoding");
        return;
    }
    size_t ce = 2;
    while (ce < wp_len && m[ce] != ',')
        ce++;
    if (ce >= wp_len) {
        fail_e(s, r, TERN_SASL_EMALFORMED, "invalid-encoding");
        return;
    }
    /* c= must be exactly base64(gs2-header [+ cb data]). */
    tern_buf want;
    tern_buf_init(&want, 0);
    tern_buf_append(&want, s->gs2.data, s->gs2.len);
    if (s->mech == SASL_SCRAM_PLUS)
        tern_buf_append(&want, s->cb_data, s->cb_len);
    /* An escaped authzid makes the header up to three times its length. */
    uint8_t *got = malloc(want.len + 3);
    size_t got_len = 0;
    bool cb_ok = got && want.data &&
                 tern_base64_decode((const char *)m + 2, ce - 2, got, want.len + 3, &got_len) == 0 &&
                 got_len == want.len && sodium_memcmp(got, want.data, want.len) == 0;
    free(got);
    tern_buf_free(&want);
    if (!cb_ok) {
        fail_e(s, r, TERN_SASL_ECB_MISMATCH, "channel-bindings-dont-match");
        return;
    }
    size_t rn = ce + 1;
    size_t nlen = strlen(s->nonce);
    if (wp_len - rn < 2 + nlen || m[rn] != 'r' || m[rn + 1] != '=' ||
        memcmp(m + rn + 2, s->nonce, nlen) != 0 ||
        (rn + 2 + nlen < wp_len && m[rn + 2 + nlen] != ',')) {
        fail_e(s, r, TERN_SASL_EMALFORMED, "invalid-encoding");
        return;
    }
    uint8_t proof[TERN_SCRAM_KEY_LEN + 3];
    size_t proof_len;
    if (tern_base64_decode((const char *)m + last + 2, len - last - 2, proof, sizeof proof,
                           &proof_len) != 0 ||
        proof_len != TERN_SCRAM_KEY_LEN) {
        fail_e(s, r, TERN_SASL_EMALFORMED, "invalid-encoding");
        return;
    }
    tern_buf am;
    tern_buf_init(&am, 0);
    tern_buf_append(&am, s->first_bare.data, s->first_bare.len);
    tern_buf_append(&am, ",", 1);
    tern_buf_append(&am, s->server_first.data, s->server_first.len);
    tern_buf_append(&am, ",", 1);
    if (tern_buf_append(&am, m, wp_len) != 0) {
        tern_buf_free(&am);
        fail_e(s, r, TERN_SASL_EINTERNAL, "other-error");
        return;
    }
    uint8_t sig[32], client_key[32], stored[32], server_sig[32];
    hmac256(s->keys.stored_key, TERN_SCRAM_KEY_LEN, am.data, am.len, sig);
    for (size_t i = 0; i < 32; i++)
        client_key[i] = proof[i] ^ sig[i];
    crypto_hash_sha256(stored, client_key, sizeof client_key);
    bool ok = sodium_memcmp(stored, s->keys.stored_key, 32) == 0 && s->keys_real;
    hmac256(s->keys.server_key, TERN_SCRAM_KEY_LEN, am.data, am.len, server_sig);
    tern_buf_free(&am);
    sodium_memzero(client_key, sizeof client_key);
    if (!ok) {
        fail_e(s, r, TERN_SASL_EBADCRED, "invalid-proof");
        return;
    }
    memcpy(s->server_final, "v=", 2);
    tern_base64_encode(server_sig, sizeof server_sig, s->server_final + 2,
                       sizeof s->server_final - 2);
    size_t sf_len = strlen(s->server_final);
    if (s->success_data) {
        s->state = SC_DONE;
        sasl__success(s, r, s->account);
        r->data = (const uint8_t *)s->server_final;
        r->data_len = sf_len;
    } else {
        s->state = SC_WAIT_ACK;
        sasl__challenge(s, r, s->server_final, sf_len);
    }
}

void sasl__scram_step(tern_sasl *s, const uint8_t *m, size_t len, tern_sasl_result *r)
{
    switch (s->state) {
    case SC_START:
        if (!m) {
            s->state = SC_WAIT_FIRST;
            sasl__challenge(s, r, "", 0);
            return;
        }
        /* fall through */
    case SC_WAIT_FIRST:
        client_first(s, m, len, r);
        return;
    case SC_WAIT_FINAL:
        client_final(s, m, len, r);
        return;
    case SC_WAIT_ACK:
        /* The client has checked v= and answers with nothing. */
        if (len != 0) {
            fail_e(s, r, TERN_SASL_EMALFORMED, "invalid-encoding");
            return;
        }
        s->state = SC_DONE;
        sasl__success(s, r, s->account);
        return;
    default:
        sasl__fail(s, r, TERN_SASL_ESTATE);
    }
}
