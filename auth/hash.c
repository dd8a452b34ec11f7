/* hash.c: verifying and making stored password credentials (see hash.h for
 * the formats). Input trusted: stored values are the admin's but parsed with
 * bounds; passwords are the client's: hashed, compared in constant time
 * (sodium_memcmp on equal-length digests), never logged. */
#include <crypt.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <mbedtls/md.h>
#include <mbedtls/md5.h>
#include <mbedtls/pkcs5.h>
#include <mbedtls/sha256.h>

#include "auth/hash.h"

int tern_hash_init(void)
{
    return sodium_init() < 0 ? -1 : 0;
}

/* ---- credential lists -------------------------------------------------- */

typedef struct cred {
    char scheme[32]; /* uppercase; "" when unknown */
    const char *data;
    size_t len;
} cred;

/* Splits "{SCHEME}data" or a bare crypt string of length `len`. */
static void cred_split(const char *s, size_t len, cred *c)
{
    memset(c, 0, sizeof(*c));
    if (len > 0 && s[0] == '{') {
        const char *end = memchr(s, '}', len);
        size_t n = end ? (size_t)(end - s - 1) : 0;
        if (end == NULL || n == 0 || n >= sizeof(c->scheme))
            return;
        for (size_t i = 0; i < n; i++) {
            char ch = s[1 + i];
            c->scheme[i] = (ch >= 'a' && ch <= 'z') ? (char)(ch - 32) : ch;
        }
        c->data = end + 1;
        c->len = len - n - 2;
        return;
    }
    static const struct {
        const char *prefix, *scheme;
    } bare[] = {
        {"$argon2id$", "ARGON2ID"}, {"$argon2i$", "ARGON2I"}, {"$6$", "SHA512-CRYPT"},
        {"$5$", "SHA256-CRYPT"},    {"$2y$", "BLF-CRYPT"},    {"$2b$", "BLF-CRYPT"},
        {"$2a$", "BLF-CRYPT"},      {"$1$", "MD5-CRYPT"},
    };
    for (size_t i = 0; i < sizeof(bare) / sizeof(bare[0]); i++) {
        size_t pl = strlen(bare[i].prefix);
        if (len >= pl && memcmp(s, bare[i].prefix, pl) == 0) {
            snprintf(c->scheme, sizeof(c->scheme), "%s", bare[i].scheme);
            c->data = s;
            c->len = len;
            return;
        }
    }
}

/* The credential at *pos in the list, advancing *pos; false at the end. */
static bool cred_next(const char *list, size_t *pos, cred *c)
{
    const char *p = list + *pos;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '\0')
        return false;
    const char *e = p;
    while (*e != '\0' && *e != ' ' && *e != '\t')
        e++;
    cred_split(p, (size_t)(e - p), c);
    *pos = (size_t)(e - list);
    return true;
}

const char *tern_hash_find(const char *stored, const char *scheme, size_t *len_r)
{
    size_t pos = 0;
    cred c;
    if (stored == NULL)
        return NULL;
    while (cred_next(stored, &pos, &c)) {
        if (strcasecmp(c.scheme, scheme) == 0 ||
            (strcasecmp(scheme, "PLAIN") == 0 &&
             (strcmp(c.scheme, "CLEAR") == 0 || strcmp(c.scheme, "CLEARTEXT") == 0))) {
            *len_r = c.len;
            return c.data;
        }
    }
    return NULL;
}

const char *tern_hash_scheme(const char *stored, char *buf, size_t size)
{
    size_t pos = 0;
    cred c;
    if (stored == NULL || !cred_next(stored, &pos, &c) || c.scheme[0] == '\0')
        snprintf(buf, size, "unknown");
    else
        snprintf(buf, size, "%s", c.scheme);
    return buf;
}

/* ---- comparing ---------------------------------------------------------- */

/* Equal in time that depends on neither content nor which length is
 * longer: both sides are hashed to a fixed size first. */
static bool ct_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    uint8_t ha[32], hb[32];
    crypto_generichash(ha, sizeof(ha), a, alen, NULL, 0);
    crypto_generichash(hb, sizeof(hb), b, blen, NULL, 0);
    return sodium_memcmp(ha, hb, sizeof(ha)) == 0;
}

/* ---- schemes ------------------------------------------------------------ */

static int verify_argon2(const cred *c, const char *pw, size_t pw_len)
{
    char h[crypto_pwhash_STRBYTES];
    if (c->len == 0 || c->len >= sizeof(h) || c->data[0] != '$')
        return TERN_HASH_EUNSUPPORTED;
    memcpy(h, c->data, c->len);
    h[c->len] = '\0';
    /* sodium verifies argon2i and argon2id strings alike. */
    return crypto_pwhash_str_verify(h, pw, pw_len) == 0 ? TERN_HASH_MATCH : TERN_HASH_MISMATCH;
}

static int verify_crypt(const cred *c, const char *prefix, const char *pw, size_t pw_len)
{
    /* The scheme names the algorithm: a value whose prefix disagrees (or a
     * DES crypt behind {SHA512-CRYPT}) is refused, not tried. */
    bool ok = false;
    for (const char *p = prefix; *p && !ok; p += strlen(p) + 1)
        ok = c->len > strlen(p) && memcmp(c->data, p, strlen(p)) == 0;
    if (!ok || c->len >= 256)
        return TERN_HASH_EUNSUPPORTED;
    if (memchr(pw, '\0', pw_len) != NULL)
        return TERN_HASH_MISMATCH; /* crypt() would see a shorter password */
    char setting[256], *phrase = malloc(pw_len + 1);
    struct crypt_data *cd = calloc(1, sizeof(*cd));
    int rc = TERN_HASH_EUNSUPPORTED;
    if (phrase && cd) {
        memcpy(setting, c->data, c->len);
        setting[c->len] = '\0';
        memcpy(phrase, pw, pw_len);
        phrase[pw_len] = '\0';
        const char *out = crypt_rn(phrase, setting, cd, (int)sizeof(*cd));
        if (out != NULL && out[0] != '*')
            rc = ct_equal(out, strlen(out), c->data, c->len) ? TERN_HASH_MATCH
                                                             : TERN_HASH_MISMATCH;
        sodium_memzero(phrase, pw_len);
        sodium_memzero(cd, sizeof(*cd));
    }
    free(phrase);
    free(cd);
    return rc;
}

int tern_hash_scram_derive(const char *pw, size_t pw_len, const uint8_t *salt, size_t salt_len,
                           uint32_t iterations, uint8_t stored_key[32], uint8_t server_key[32])
{
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    mbedtls_md_context_t ctx;
    uint8_t salted[32], client_key[32];
    int rc = -1;
    if (iterations == 0 || iterations > TERN_HASH_SCRAM_MAX_ITERATIONS)
        return -1;
    mbedtls_md_init(&ctx);
    if (mbedtls_md_setup(&ctx, md, 1) == 0 &&
        mbedtls_pkcs5_pbkdf2_hmac(&ctx, (const unsigned char *)pw, pw_len, salt, salt_len,
                                  iterations, sizeof(salted), salted) == 0 &&
        mbedtls_md_hmac(md, salted, sizeof(salted), (const unsigned char *)"Client Key", 10,
                        client_key) == 0 &&
        mbedtls_sha256_ret(client_key, sizeof(client_key), stored_key, 0) == 0 &&
        mbedtls_md_hmac(md, salted, sizeof(salted), (const unsigned char *)"Server Key", 10,
                        server_key) == 0)
        rc = 0;
    mbedtls_md_free(&ctx);
    sodium_memzero(salted, sizeof(salted));
    sodium_memzero(client_key, sizeof(client_key));
    return rc;
}

static int b64_decode(const char *s, size_t len, uint8_t *out, size_t max, size_t *n_r)
{
    return sodium_base642bin(out, max, s, len, NULL, n_r, NULL, sodium_base64_VARIANT_ORIGINAL);
}

int tern_hash_scram_parse(const char *data, size_t len, tern_scram_keys *k)
{
    const char *f[4];
    size_t fl[4], nf = 0;
    const char *start = data, *end = data + len;
    for (const char *p = data; p <= end && nf < 4; p++) {
        if (p == end || *p == ',') {
            f[nf] = start;
            fl[nf++] = (size_t)(p - start);
            start = p + 1;
        }
    }
    if (nf != 4 || start <= end)
        return -1; /* fewer or more than four fields */
    uint64_t it = 0;
    if (fl[0] == 0 || fl[0] > 7)
        return -1;
    for (size_t i = 0; i < fl[0]; i++) {
        if (f[0][i] < '0' || f[0][i] > '9')
            return -1;
        it = it * 10 + (uint64_t)(f[0][i] - '0');
    }
    if (it == 0 || it > TERN_HASH_SCRAM_MAX_ITERATIONS)
        return -1;
    k->iterations = (uint32_t)it;
    size_t n;
    if (b64_decode(f[1], fl[1], k->salt, sizeof(k->salt), &k->salt_len) != 0 || k->salt_len == 0)
        return -1;
    if (b64_decode(f[2], fl[2], k->stored_key, 32, &n) != 0 || n != 32)
        return -1;
    if (b64_decode(f[3], fl[3], k->server_key, 32, &n) != 0 || n != 32)
        return -1;
    return 0;
}

static int verify_scram(const cred *c, const char *pw, size_t pw_len)
{
    tern_scram_keys k;
    uint8_t sk[32], svk[32];
    if (tern_hash_scram_parse(c->data, c->len, &k) != 0)
        return TERN_HASH_EUNSUPPORTED;
    if (tern_hash_scram_derive(pw, pw_len, k.salt, k.salt_len, k.iterations, sk, svk) != 0)
        return TERN_HASH_EUNSUPPORTED;
    bool ok = sodium_memcmp(sk, k.stored_key, 32) == 0;
    ok &= sodium_memcmp(svk, k.server_key, 32) == 0;
    sodium_memzero(sk, sizeof(sk));
    sodium_memzero(svk, sizeof(svk));
    return ok ? TERN_HASH_MATCH : TERN_HASH_MISMATCH;
}

/* ---- CRAM-MD5 ----------------------------------------------------------- */

static void md5_state_put(uint8_t *out, const mbedtls_md5_context *m)
{
    for (int i = 0; i < 4; i++)
        for (int b = 0; b < 4; b++)
            out[i * 4 + b] = (uint8_t)(m->state[i] >> (8 * b));
}

void tern_hash_cram_md5_context(const char *pw, size_t pw_len, uint8_t ctx[32])
{
    uint8_t key[64] = {0}, pad[64];
    if (pw_len > 64) {
        mbedtls_md5_ret((const unsigned char *)pw, pw_len, key);
    } else {
        memcpy(key, pw, pw_len);
    }
    mbedtls_md5_context m;
    /* Dovecot's order: the outer (opad) state first, then the inner. */
    for (int half = 0; half < 2; half++) {
        for (int i = 0; i < 64; i++)
            pad[i] = key[i] ^ (half == 0 ? 0x5c : 0x36);
        mbedtls_md5_init(&m);
        mbedtls_md5_starts_ret(&m);
        mbedtls_md5_update_ret(&m, pad, sizeof(pad));
        md5_state_put(ctx + 16 * half, &m);
        mbedtls_md5_free(&m);
    }
    sodium_memzero(key, sizeof(key));
    sodium_memzero(pad, sizeof(pad));
}

int tern_hash_cram_md5_parse(const char *hex, size_t len, uint8_t ctx[32])
{
    size_t n = 0;
    if (len != 64 || sodium_hex2bin(ctx, 32, hex, len, NULL, &n, NULL) != 0 || n != 32)
        return -1;
    return 0;
}

void tern_hash_cram_md5_digest(const uint8_t ctx[32], const uint8_t *challenge, size_t len,
                               uint8_t digest[16])
{
    /* One implementation, in the SASL layer that verifies with it. */
    tern_cram_md5_digest(ctx, challenge, len, digest);
}

static int verify_cram_md5(const cred *c, const char *pw, size_t pw_len)
{
    uint8_t want[32], got[32];
    if (tern_hash_cram_md5_parse(c->data, c->len, want) != 0)
        return TERN_HASH_EUNSUPPORTED;
    tern_hash_cram_md5_context(pw, pw_len, got);
    bool ok = sodium_memcmp(want, got, 32) == 0;
    sodium_memzero(got, sizeof(got));
    return ok ? TERN_HASH_MATCH : TERN_HASH_MISMATCH;
}

/* ---- verify ------------------------------------------------------------- */

int tern_hash_verify(const char *stored, const char *pw, size_t pw_len)
{
    size_t pos = 0;
    cred c;
    if (stored == NULL || pw_len > TERN_HASH_MAX_PASSWORD || tern_hash_init() != 0 ||
        !cred_next(stored, &pos, &c) || c.data == NULL)
        return TERN_HASH_EUNSUPPORTED;
    const char *s = c.scheme;
    if (strcmp(s, "ARGON2ID") == 0 || strcmp(s, "ARGON2I") == 0)
        return verify_argon2(&c, pw, pw_len);
    if (strcmp(s, "SHA512-CRYPT") == 0)
        return verify_crypt(&c, "$6$\0", pw, pw_len);
    if (strcmp(s, "SHA256-CRYPT") == 0)
        return verify_crypt(&c, "$5$\0", pw, pw_len);
    if (strcmp(s, "BLF-CRYPT") == 0)
        return verify_crypt(&c, "$2y$\0$2b$\0$2a$\0", pw, pw_len);
    if (strcmp(s, "MD5-CRYPT") == 0)
        return verify_crypt(&c, "$1$\0", pw, pw_len);
    if (strcmp(s, "PLAIN") == 0 || strcmp(s, "CLEAR") == 0 || strcmp(s, "CLEARTEXT") == 0)
        return ct_equal(c.data, c.len, pw, pw_len) ? TERN_HASH_MATCH : TERN_HASH_MISMATCH;
    if (strcmp(s, "CRAM-MD5") == 0)
        return verify_cram_md5(&c, pw, pw_len);
    if (strcmp(s, "SCRAM-SHA-256") == 0)
        return verify_scram(&c, pw, pw_len);
    return TERN_HASH_EUNSUPPORTED;
}

static char dummy_hash[crypto_pwhash_STRBYTES];
static pthread_once_t dummy_once = PTHREAD_ONCE_INIT;

static void dummy_make(void)
{
    /* A random password nobody knows, hashed with our own parameters, so
     * the dummy costs what a real check of one of our hashes costs. */
    uint8_t pw[16];
    if (tern_hash_init() != 0)
        return;
    randombytes_buf(pw, sizeof(pw));
    if (crypto_pwhash_str_alg(dummy_hash, (const char *)pw, sizeof(pw),
                              TERN_HASH_ARGON2_OPSLIMIT, TERN_HASH_ARGON2_MEMLIMIT,
                              crypto_pwhash_ALG_ARGON2ID13) != 0)
        dummy_hash[0] = '\0';
}

void tern_hash_verify_dummy(const char *pw, size_t pw_len)
{
    pthread_once(&dummy_once, dummy_make);
    if (dummy_hash[0] != '\0' &&
        crypto_pwhash_str_verify(dummy_hash, pw, pw_len > TERN_HASH_MAX_PASSWORD
                                                            ? TERN_HASH_MAX_PASSWORD
                                                            : pw_len) == 0)
        abort(); /* a random 16-byte password guessed: impossible */
}

/* ---- new credentials ---------------------------------------------------- */

int tern_hash_argon2id(const char *pw, size_t pw_len, char *out, size_t size)
{
    char h[crypto_pwhash_STRBYTES];
    if (tern_hash_init() != 0 ||
        crypto_pwhash_str_alg(h, pw, pw_len, TERN_HASH_ARGON2_OPSLIMIT, TERN_HASH_ARGON2_MEMLIMIT,
                              crypto_pwhash_ALG_ARGON2ID13) != 0)
        return -1;
    return snprintf(out, size, "{ARGON2ID}%s", h) < (int)size ? 0 : -1;
}

int tern_hash_scram_sha256(const char *pw, size_t pw_len, uint32_t iterations, char *out,
                           size_t size)
{
    uint8_t salt[16], sk[32], svk[32];
    char b_salt[sodium_base64_ENCODED_LEN(16, sodium_base64_VARIANT_ORIGINAL)];
    char b_sk[sodium_base64_ENCODED_LEN(32, sodium_base64_VARIANT_ORIGINAL)];
    char b_svk[sizeof(b_sk)];
    if (tern_hash_init() != 0)
        return -1;
    randombytes_buf(salt, sizeof(salt));
    if (tern_hash_scram_derive(pw, pw_len, salt, sizeof(salt), iterations, sk, svk) != 0)
        return -1;
    sodium_bin2base64(b_salt, sizeof(b_salt), salt, sizeof(salt), sodium_base64_VARIANT_ORIGINAL);
    sodium_bin2base64(b_sk, sizeof(b_sk), sk, sizeof(sk), sodium_base64_VARIANT_ORIGINAL);
    sodium_bin2base64(b_svk, sizeof(b_svk), svk, sizeof(svk), sodium_base64_VARIANT_ORIGINAL);
    int n = snprintf(out, size, "{SCRAM-SHA-256}%u,%s,%s,%s", iterations, b_salt, b_sk, b_svk);
    return n > 0 && n < (int)size ? 0 : -1;
}
