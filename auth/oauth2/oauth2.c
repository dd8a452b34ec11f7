/* oauth2.c: the `oauth2` auth backend: JWT access tokens checked locally
 * against a JWKS file read when the auth snapshot is built (so SIGHUP
 * reloads it). RS256 and ES256 through mbedTLS, EdDSA (Ed25519) through
 * libsodium. Other tokens (opaque ones, JWTs of keys we do not hold) go
 * to RFC 7662 introspection when it is configured (introspect.c).
 *
 * Trusted: the config and the JWKS file. Untrusted: tokens and SASL user
 * names; every length is bounded before decoding, the header's alg is
 * only ever one of the configured asymmetric ones (never "none" or HS*:
 * a public key must not become an HMAC secret), and the key's type must
 * match the alg. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <mbedtls/bignum.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/ecp.h>
#include <mbedtls/md.h>
#include <mbedtls/rsa.h>
#include <mbedtls/sha256.h>
#include <sodium.h>

#include "auth/auth_backend.h"
#include "auth/oauth2/introspect.h"
#include "auth/oauth2/oauth2.h"
#include "lib/base64.h"
#include "lib/json.h"

#define MAX_KEYS 64
#define MAX_JWKS (1u << 20)
#define RSA_MIN_BYTES 256  /* 2048 bits */
#define RSA_MAX_BYTES 1024 /* 8192 bits */

typedef struct jwk {
    unsigned alg;  /* the TERN_OAUTH2_ALG_* this key serves */
    char *kid;     /* NULL when the key has none */
    /* Raw public material: contexts are built per verification, so that
     * threads of the pool never share mbedTLS state (ECP caches
     * precomputations in the group). */
    uint8_t *n;
    size_t n_len;
    uint8_t e[8];
    size_t e_len;
    uint8_t point[65]; /* ES256: 0x04 || x || y */
    uint8_t ed[crypto_sign_PUBLICKEYBYTES];
} jwk;

struct tern_oauth2 {
    char *issuer, *audience, *claim;
    int64_t leeway;
    unsigned algorithms;
    jwk keys[MAX_KEYS];
    size_t n_keys;
};

static void why_set(char *why, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void why_set(char *why, size_t size, const char *fmt, ...)
{
    if (why == NULL || size == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, size, fmt, ap);
    va_end(ap);
}

unsigned tern_oauth2_alg(const char *name)
{
    if (strcmp(name, "RS256") == 0)
        return TERN_OAUTH2_ALG_RS256;
    if (strcmp(name, "ES256") == 0)
        return TERN_OAUTH2_ALG_ES256;
    if (strcmp(name, "EdDSA") == 0)
        return TERN_OAUTH2_ALG_EDDSA;
    return 0;
}

/* base64url without padding (RFC 7515 section 2), strictly: the text is
 * mapped to the standard alphabet and padded, so lib/base64's checks (no
 * stray bits, no bad characters) apply. Returns 0 or -1. */
static int b64url_decode(const char *in, size_t len, uint8_t *out, size_t cap, size_t *len_r)
{
    if (len % 4 == 1 || len > TERN_OAUTH2_MAX_TOKEN)
        return -1;
    char buf[TERN_OAUTH2_MAX_TOKEN + 4];
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (c == '+' || c == '/' || c == '=')
            return -1;
        buf[i] = c == '-' ? '+' : c == '_' ? '/' : c;
    }
    size_t n = len;
    while (n % 4 != 0)
        buf[n++] = '=';
    return tern_base64_decode(buf, n, out, cap, len_r);
}

static int b64url_member(const tern_json *obj, const char *key, uint8_t *out, size_t cap,
                         size_t *len_r)
{
    const char *s = tern_json_str(tern_json_get(obj, key));
    if (s == NULL)
        return -1;
    return b64url_decode(s, strlen(s), out, cap, len_r);
}

/* ---- the JWKS ------------------------------------------------------------- */

static int load_rsa(jwk *k, const tern_json *o)
{
    uint8_t n[RSA_MAX_BYTES + 1];
    size_t n_len, e_len;
    if (b64url_member(o, "n", n, sizeof(n), &n_len) != 0 ||
        b64url_member(o, "e", k->e, sizeof(k->e), &e_len) != 0)
        return -1;
    size_t skip = 0;
    while (skip < n_len && n[skip] == 0)
        skip++; /* a leading zero octet is tolerated, though RFC 7518 forbids it */
    n_len -= skip;
    if (n_len < RSA_MIN_BYTES || n_len > RSA_MAX_BYTES || e_len == 0)
        return -1;
    mbedtls_rsa_context rsa;
    mbedtls_rsa_init(&rsa, MBEDTLS_RSA_PKCS_V15, 0);
    int rc = mbedtls_rsa_import_raw(&rsa, n + skip, n_len, NULL, 0, NULL, 0, NULL, 0, k->e,
                                    e_len);
    if (rc == 0)
        rc = mbedtls_rsa_complete(&rsa);
    if (rc == 0)
        rc = mbedtls_rsa_check_pubkey(&rsa);
    mbedtls_rsa_free(&rsa);
    if (rc != 0 || (k->n = malloc(n_len)) == NULL)
        return -1;
    memcpy(k->n, n + skip, n_len);
    k->n_len = n_len;
    k->e_len = e_len;
    k->alg = TERN_OAUTH2_ALG_RS256;
    return 0;
}

static int ec_load(const uint8_t point[65], mbedtls_ecp_group *grp, mbedtls_ecp_point *q)
{
    if (mbedtls_ecp_group_load(grp, MBEDTLS_ECP_DP_SECP256R1) != 0 ||
        mbedtls_ecp_point_read_binary(grp, q, point, 65) != 0 ||
        mbedtls_ecp_check_pubkey(grp, q) != 0)
        return -1;
    return 0;
}

static int load_ec(jwk *k, const tern_json *o)
{
    const char *crv = tern_json_str(tern_json_get(o, "crv"));
    size_t xl, yl;
    if (crv == NULL || strcmp(crv, "P-256") != 0 ||
        b64url_member(o, "x", k->point + 1, 32, &xl) != 0 || xl != 32 ||
        b64url_member(o, "y", k->point + 33, 32, &yl) != 0 || yl != 32)
        return -1;
    k->point[0] = 0x04;
    mbedtls_ecp_group grp;
    mbedtls_ecp_point q;
    mbedtls_ecp_group_init(&grp);
    mbedtls_ecp_point_init(&q);
    int rc = ec_load(k->point, &grp, &q);
    mbedtls_ecp_point_free(&q);
    mbedtls_ecp_group_free(&grp);
    if (rc != 0)
        return -1;
    k->alg = TERN_OAUTH2_ALG_ES256;
    return 0;
}

static int load_okp(jwk *k, const tern_json *o)
{
    const char *crv = tern_json_str(tern_json_get(o, "crv"));
    size_t xl;
    if (crv == NULL || strcmp(crv, "Ed25519") != 0 ||
        b64url_member(o, "x", k->ed, sizeof(k->ed), &xl) != 0 || xl != sizeof(k->ed))
        return -1;
    k->alg = TERN_OAUTH2_ALG_EDDSA;
    return 0;
}

static void free_keys(tern_oauth2 *o)
{
    for (size_t i = 0; i < o->n_keys; i++) {
        free(o->keys[i].kid);
        free(o->keys[i].n);
    }
    o->n_keys = 0;
}

static int read_file(const char *path, char **buf_r, size_t *len_r, char *why, size_t size)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        why_set(why, size, "%s", strerror(errno));
        return -1;
    }
    char *buf = malloc(MAX_JWKS + 1);
    size_t n = buf ? fread(buf, 1, MAX_JWKS + 1, f) : 0;
    bool err = ferror(f) != 0;
    fclose(f);
    if (buf == NULL || err || n > MAX_JWKS) {
        why_set(why, size, "%s", buf == NULL ? "out of memory" : err ? "read error" :
                                                                       "larger than 1 MiB");
        free(buf);
        return -1;
    }
    *buf_r = buf;
    *len_r = n;
    return 0;
}

/* A key we cannot use for the configured algorithms is skipped (JWKS
 * files often carry encryption keys too); one that claims to be usable
 * but is broken fails the load, so a typo is seen at reload, not at the
 * first login. */
static int load_jwks(tern_oauth2 *o, const char *path, char *why, size_t size)
{
    char *buf;
    size_t len;
    if (read_file(path, &buf, &len, why, size) != 0)
        return -1;
    tern_arena a;
    tern_arena_init(&a, 4096);
    tern_json *root;
    size_t off;
    int rc = tern_json_parse(buf, len, NULL, &a, &root, &off);
    const tern_json *keys = rc == 0 ? tern_json_get(root, "keys") : NULL;
    if (rc != 0) {
        why_set(why, size, "%s at byte %zu", tern_json_strerror(rc), off);
        rc = -1;
    } else if (keys == NULL || keys->type != TERN_JSON_ARRAY) {
        why_set(why, size, "no \"keys\" array");
        rc = -1;
    }
    size_t i = 0;
    for (const tern_json *k = rc == 0 ? keys->child : NULL; k; k = k->next, i++) {
        const char *kty = tern_json_str(tern_json_get(k, "kty"));
        const char *use = tern_json_str(tern_json_get(k, "use"));
        const tern_json *kid = tern_json_get(k, "kid");
        if (kty == NULL) {
            why_set(why, size, "keys[%zu]: no kty", i);
            rc = -1;
            break;
        }
        if ((use != NULL && strcmp(use, "sig") != 0) ||
            (strcmp(kty, "RSA") != 0 && strcmp(kty, "EC") != 0 && strcmp(kty, "OKP") != 0))
            continue;
        if (o->n_keys == MAX_KEYS) {
            why_set(why, size, "more than %d signing keys", MAX_KEYS);
            rc = -1;
            break;
        }
        jwk *j = &o->keys[o->n_keys];
        memset(j, 0, sizeof(*j));
        int lr = strcmp(kty, "RSA") == 0 ? load_rsa(j, k)
                 : strcmp(kty, "EC") == 0 ? load_ec(j, k)
                                          : load_okp(j, k);
        if (lr != 0) {
            free(j->n);
            why_set(why, size, "keys[%zu]: not a usable %s key (RSA 2048-8192 bits, EC P-256, "
                               "OKP Ed25519)", i, kty);
            rc = -1;
            break;
        }
        const char *jalg = tern_json_str(tern_json_get(k, "alg"));
        if (jalg != NULL && tern_oauth2_alg(jalg) != j->alg) {
            free(j->n);
            why_set(why, size, "keys[%zu]: alg \"%s\" does not fit kty %s", i, jalg, kty);
            rc = -1;
            break;
        }
        if (kid != NULL && (tern_json_str(kid) == NULL || (j->kid = strdup(kid->text)) == NULL)) {
            free(j->n);
            why_set(why, size, "keys[%zu]: kid is not a string", i);
            rc = -1;
            break;
        }
        o->n_keys++;
    }
    if (rc == 0) {
        size_t usable = 0;
        for (size_t k = 0; k < o->n_keys; k++)
            usable += (o->keys[k].alg & o->algorithms) != 0;
        if (usable == 0) {
            why_set(why, size, "no signing key for the configured algorithms");
            rc = -1;
        }
    }
    tern_arena_free(&a);
    free(buf);
    return rc;
}

tern_oauth2 *tern_oauth2_new(const tern_oauth2_params *p, char **error_r)
{
    tern_oauth2 *o = calloc(1, sizeof(*o));
    if (o == NULL || sodium_init() < 0) {
        free(o);
        *error_r = strdup("out of memory");
        return NULL;
    }
    o->issuer = strdup(p->issuer ? p->issuer : "");
    o->audience = strdup(p->audience ? p->audience : "");
    o->claim = strdup(p->account_claim ? p->account_claim : "email");
    o->leeway = p->leeway_s < 0 ? 0 : p->leeway_s;
    o->algorithms = p->algorithms ? p->algorithms
                                  : TERN_OAUTH2_ALG_RS256 | TERN_OAUTH2_ALG_ES256 |
                                        TERN_OAUTH2_ALG_EDDSA;
    char why[256] = "";
    if (o->issuer == NULL || o->audience == NULL || o->claim == NULL) {
        snprintf(why, sizeof(why), "out of memory");
    } else if (p->jwks_file == NULL) {
        snprintf(why, sizeof(why), "auth_oauth2.jwks_file is not set");
    } else if (load_jwks(o, p->jwks_file, why, sizeof(why)) != 0) {
        size_t n = strlen(p->jwks_file) + strlen(why) + 3;
        *error_r = malloc(n);
        if (*error_r != NULL)
            snprintf(*error_r, n, "%s: %s", p->jwks_file, why);
        tern_oauth2_free(o);
        return NULL;
    }
    if (why[0] != '\0') {
        *error_r = strdup(why);
        tern_oauth2_free(o);
        return NULL;
    }
    return o;
}

void tern_oauth2_free(tern_oauth2 *o)
{
    if (o == NULL)
        return;
    free_keys(o);
    free(o->issuer);
    free(o->audience);
    free(o->claim);
    free(o);
}

size_t tern_oauth2_key_count(const tern_oauth2 *o)
{
    return o->n_keys;
}

/* ---- verification ----------------------------------------------------------- */

static int verify_rs256(const jwk *k, const uint8_t hash[32], const uint8_t *sig, size_t len)
{
    if (len != k->n_len)
        return -1;
    mbedtls_rsa_context rsa;
    mbedtls_rsa_init(&rsa, MBEDTLS_RSA_PKCS_V15, 0);
    int rc = mbedtls_rsa_import_raw(&rsa, k->n, k->n_len, NULL, 0, NULL, 0, NULL, 0, k->e,
                                    k->e_len);
    if (rc == 0)
        rc = mbedtls_rsa_complete(&rsa);
    if (rc == 0)
        rc = mbedtls_rsa_pkcs1_verify(&rsa, NULL, NULL, MBEDTLS_RSA_PUBLIC, MBEDTLS_MD_SHA256, 32,
                                      hash, sig);
    mbedtls_rsa_free(&rsa);
    return rc == 0 ? 0 : -1;
}

/* JWS carries ECDSA as the raw r || s (RFC 7518 3.4), not DER. */
static int verify_es256(const jwk *k, const uint8_t hash[32], const uint8_t *sig, size_t len)
{
    if (len != 64)
        return -1;
    mbedtls_ecp_group grp;
    mbedtls_ecp_point q;
    mbedtls_mpi r, s;
    mbedtls_ecp_group_init(&grp);
    mbedtls_ecp_point_init(&q);
    mbedtls_mpi_init(&r);
    mbedtls_mpi_init(&s);
    int rc = ec_load(k->point, &grp, &q);
    if (rc == 0)
        rc = mbedtls_mpi_read_binary(&r, sig, 32);
    if (rc == 0)
        rc = mbedtls_mpi_read_binary(&s, sig + 32, 32);
    if (rc == 0)
        rc = mbedtls_ecdsa_verify(&grp, hash, 32, &q, &r, &s);
    mbedtls_mpi_free(&r);
    mbedtls_mpi_free(&s);
    mbedtls_ecp_point_free(&q);
    mbedtls_ecp_group_free(&grp);
    return rc == 0 ? 0 : -1;
}

static const jwk *pick_key(const tern_oauth2 *o, unsigned alg, const char *kid)
{
    const jwk *only = NULL;
    size_t n = 0;
    for (size_t i = 0; i < o->n_keys; i++) {
        const jwk *k = &o->keys[i];
        if (k->alg != alg)
            continue;
        if (kid != NULL && k->kid != NULL && strcmp(kid, k->kid) == 0)
            return k;
        only = k;
        n++;
    }
    /* Without a kid the choice must be unambiguous; with one that no key
     * has, guessing would let a token name any key it likes. */
    return kid == NULL && n == 1 ? only : NULL;
}

bool tern_oauth2_aud_holds(const tern_json *aud, const char *want)
{
    if (aud == NULL)
        return false;
    if (aud->type == TERN_JSON_STRING)
        return tern_json_str(aud) != NULL && strcmp(aud->text, want) == 0;
    if (aud->type != TERN_JSON_ARRAY)
        return false;
    for (const tern_json *a = aud->child; a; a = a->next)
        if (tern_json_str(a) != NULL && strcmp(a->text, want) == 0)
            return true;
    return false;
}

/* Absent is allowed for nbf and iat only (the caller decides). */
int tern_oauth2_numeric_date(const tern_json *v, double *out)
{
    if (v == NULL)
        return 0;
    if (v->type != TERN_JSON_NUMBER || !(v->number == v->number) || v->number > 1e15 ||
        v->number < -1e15)
        return -1;
    *out = v->number;
    return 1;
}

int tern_oauth2_verify(const tern_oauth2 *o, const char *token, size_t token_len,
                       const char *user, int64_t now, tern_arena *arena, char **account_r,
                       char *why, size_t why_size)
{
    *account_r = NULL;
    if (token == NULL || token_len == 0 || token_len > TERN_OAUTH2_MAX_TOKEN) {
        why_set(why, why_size, "token empty or longer than %d bytes", TERN_OAUTH2_MAX_TOKEN);
        return -1;
    }
    const char *d1 = memchr(token, '.', token_len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', token_len - (size_t)(d1 + 1 - token)) : NULL;
    if (d2 == NULL || memchr(d2 + 1, '.', token_len - (size_t)(d2 + 1 - token)) != NULL) {
        why_set(why, why_size, "not a compact JWS (three dot-separated parts)");
        return -1;
    }
    /* Decoded sizes never exceed the encoded ones. */
    static _Thread_local uint8_t hbuf[TERN_OAUTH2_MAX_TOKEN], pbuf[TERN_OAUTH2_MAX_TOKEN],
        sbuf[TERN_OAUTH2_MAX_TOKEN];
    size_t hl, pl, sl;
    if (b64url_decode(token, (size_t)(d1 - token), hbuf, sizeof(hbuf), &hl) != 0 ||
        b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), pbuf, sizeof(pbuf), &pl) != 0 ||
        b64url_decode(d2 + 1, token_len - (size_t)(d2 + 1 - token), sbuf, sizeof(sbuf), &sl) !=
            0) {
        why_set(why, why_size, "bad base64url");
        return -1;
    }
    static const tern_json_limits lim = {.max_depth = 8, .max_nodes = 512, .max_string = 4096};
    tern_arena a;
    tern_arena_init(&a, 2048);
    int rc = -1;
    tern_json *hdr, *claims;
    if (tern_json_parse((const char *)hbuf, hl, &lim, &a, &hdr, NULL) != 0 ||
        hdr->type != TERN_JSON_OBJECT) {
        why_set(why, why_size, "header is not a JSON object");
        goto out;
    }
    const char *alg_name = tern_json_str(tern_json_get(hdr, "alg"));
    unsigned alg = alg_name ? tern_oauth2_alg(alg_name) : 0;
    if (alg == 0 || (alg & o->algorithms) == 0) {
        why_set(why, why_size, "alg %.32s not allowed", alg_name ? alg_name : "(none)");
        goto out;
    }
    if (tern_json_get(hdr, "crit") != NULL) {
        why_set(why, why_size, "crit header extensions not understood");
        goto out;
    }
    const tern_json *kidv = tern_json_get(hdr, "kid");
    const char *kid = tern_json_str(kidv);
    if (kidv != NULL && kid == NULL) {
        why_set(why, why_size, "kid is not a string");
        goto out;
    }
    const jwk *key = pick_key(o, alg, kid);
    if (key == NULL) {
        why_set(why, why_size, "no key for alg %s kid %.64s", alg_name, kid ? kid : "(none)");
        goto out;
    }
    const uint8_t *signing = (const uint8_t *)token;
    size_t signing_len = (size_t)(d2 - token);
    int vr;
    if (alg == TERN_OAUTH2_ALG_EDDSA) {
        vr = sl == crypto_sign_BYTES &&
                     crypto_sign_verify_detached(sbuf, signing, signing_len, key->ed) == 0
                 ? 0
                 : -1;
    } else {
        uint8_t hash[32];
        mbedtls_sha256_ret(signing, signing_len, hash, 0);
        vr = alg == TERN_OAUTH2_ALG_RS256 ? verify_rs256(key, hash, sbuf, sl)
                                          : verify_es256(key, hash, sbuf, sl);
    }
    if (vr != 0) {
        why_set(why, why_size, "bad signature (alg %s)", alg_name);
        goto out;
    }
    /* Only now is the payload the issuer's: nothing of it was read before. */
    if (tern_json_parse((const char *)pbuf, pl, &lim, &a, &claims, NULL) != 0 ||
        claims->type != TERN_JSON_OBJECT) {
        why_set(why, why_size, "claims are not a JSON object");
        goto out;
    }
    const char *iss = tern_json_str(tern_json_get(claims, "iss"));
    if (iss == NULL || strcmp(iss, o->issuer) != 0) {
        why_set(why, why_size, "wrong issuer");
        goto out;
    }
    if (!tern_oauth2_aud_holds(tern_json_get(claims, "aud"), o->audience)) {
        why_set(why, why_size, "wrong audience");
        goto out;
    }
    double exp = 0, nbf = 0, iat = 0;
    double t = (double)now, lw = (double)o->leeway;
    if (tern_oauth2_numeric_date(tern_json_get(claims, "exp"), &exp) != 1) {
        why_set(why, why_size, "no valid exp");
        goto out;
    }
    if (exp <= t - lw) {
        why_set(why, why_size, "expired");
        goto out;
    }
    int np = tern_oauth2_numeric_date(tern_json_get(claims, "nbf"), &nbf);
    int ip = tern_oauth2_numeric_date(tern_json_get(claims, "iat"), &iat);
    if (np < 0 || ip < 0 || (np == 1 && nbf > t + lw) || (ip == 1 && (iat > t + lw || iat > exp))) {
        why_set(why, why_size, "nbf or iat invalid or in the future");
        goto out;
    }
    const char *acct = tern_json_str(tern_json_get(claims, o->claim));
    if (acct == NULL || acct[0] == '\0' || strlen(acct) > TERN_AUTH_MAX_USER) {
        why_set(why, why_size, "claim %.64s missing, not a string or too long", o->claim);
        goto out;
    }
    if (user != NULL && user[0] != '\0' && strcasecmp(user, acct) != 0) {
        why_set(why, why_size, "user does not match the token's %.64s", o->claim);
        goto out;
    }
    *account_r = tern_arena_strdup(arena, acct);
    if (*account_r == NULL) {
        why_set(why, why_size, "out of memory");
        goto out;
    }
    rc = 0;
out:
    tern_arena_free(&a);
    return rc;
}

bool tern_oauth2_can_verify(const tern_oauth2 *o, const char *token, size_t token_len)
{
    if (o == NULL || token == NULL || token_len == 0 || token_len > TERN_OAUTH2_MAX_TOKEN)
        return false;
    const char *d1 = memchr(token, '.', token_len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', token_len - (size_t)(d1 + 1 - token)) : NULL;
    if (d2 == NULL || memchr(d2 + 1, '.', token_len - (size_t)(d2 + 1 - token)) != NULL)
        return false;
    static _Thread_local uint8_t hbuf[TERN_OAUTH2_MAX_TOKEN];
    size_t hl;
    if (b64url_decode(token, (size_t)(d1 - token), hbuf, sizeof(hbuf), &hl) != 0)
        return false;
    static const tern_json_limits lim = {.max_depth = 4, .max_nodes = 64, .max_string = 1024};
    tern_arena a;
    tern_arena_init(&a, 1024);
    tern_json *hdr;
    bool ok = false;
    if (tern_json_parse((const char *)hbuf, hl, &lim, &a, &hdr, NULL) == 0 &&
        hdr->type == TERN_JSON_OBJECT) {
        const char *alg_name = tern_json_str(tern_json_get(hdr, "alg"));
        unsigned alg = alg_name ? tern_oauth2_alg(alg_name) : 0;
        const tern_json *kidv = tern_json_get(hdr, "kid");
        const char *kid = tern_json_str(kidv);
        ok = alg != 0 && (alg & o->algorithms) != 0 && (kidv == NULL || kid != NULL) &&
             pick_key(o, alg, kid) != NULL;
    }
    tern_arena_free(&a);
    return ok;
}

/* ---- the backend -------------------------------------------------------------- */

/* The backend's state: local JWT checks (when jwks_file is set) and
 * introspection (when auth_oauth2.introspection is), either or both. */
typedef struct oauth2_backend {
    tern_oauth2 *jwt;
    tern_introspect *in;
    bool always;
} oauth2_backend;

static void oauth2_destroy(void *b)
{
    oauth2_backend *ob = b;
    if (ob == NULL)
        return;
    tern_oauth2_free(ob->jwt);
    tern_introspect_free(ob->in);
    free(ob);
}

static void *oauth2_create(const tern_config *cfg, tern_store *store, char **error_r)
{
    (void)store;
    const tern_auth_oauth2_conf *c = &cfg->auth_oauth2;
    const struct tern_auth_introspection_conf *ic = &c->introspection;
    if (c->jwks_file == NULL && !ic->present) {
        *error_r = strdup("auth backend oauth2 needs auth_oauth2.jwks_file or introspection");
        return NULL;
    }
    if (c->jwks_file != NULL && (c->issuer == NULL || c->audience == NULL)) {
        *error_r = strdup("auth backend oauth2 needs auth_oauth2.issuer and audience");
        return NULL;
    }
    oauth2_backend *ob = calloc(1, sizeof(*ob));
    if (ob == NULL) {
        *error_r = strdup("out of memory");
        return NULL;
    }
    if (c->jwks_file != NULL) {
        tern_oauth2_params p = {
            .jwks_file = c->jwks_file,
            .issuer = c->issuer,
            .audience = c->audience,
            .account_claim = c->account_claim,
            .leeway_s = (int64_t)(c->leeway_ms / 1000),
        };
        for (size_t i = 0; i < c->n_algorithms; i++)
            p.algorithms |= tern_oauth2_alg(c->algorithms[i]);
        if ((ob->jwt = tern_oauth2_new(&p, error_r)) == NULL) {
            oauth2_destroy(ob);
            return NULL;
        }
    }
    if (ic->present) {
        tern_introspect_params ip = {
            .url = ic->url,
            .client_id = ic->client_id,
            .client_secret = ic->client_secret,
            .ca_file = ic->ca_file,
            .account_claim = ic->account_claim,
            .issuer = c->issuer,
            .audience = c->audience,
            .leeway_s = (int64_t)(c->leeway_ms / 1000),
            .timeout_ms = ic->timeout_ms,
            .cache_ttl_ms = ic->cache_ttl_ms,
            .negative_ttl_ms = ic->negative_cache_ttl_ms,
        };
        if ((ob->in = tern_introspect_new(&ip, error_r)) == NULL) {
            oauth2_destroy(ob);
            return NULL;
        }
        ob->always = ic->always;
    }
    return ob;
}

static unsigned oauth2_caps(void *b)
{
    (void)b;
    return TERN_AUTH_CAP_TOKEN;
}

/* A token is the only credential this backend knows, and it names no
 * user in advance: every name lookup passes to the next backend. */
static void oauth2_lookup(void *b, tern_auth_lookup *lk)
{
    (void)b;
    lk->status = TERN_AUTH_LOOKUP_UNKNOWN;
    lk->done(lk);
}

/* On the pool. A JWT that our keys can check is decided here; any other
 * token (opaque, or a JWT of keys we do not hold), or every token with
 * `always`, goes to introspection: from the cache when it has the answer,
 * else on the loop (TERN_AUTH__ASYNC). */
static int oauth2_verify_token(void *b, tern_auth_req *r, char **account_r)
{
    oauth2_backend *ob = b;
    if (ob->jwt != NULL &&
        (ob->in == NULL ||
         (!ob->always && tern_oauth2_can_verify(ob->jwt, r->in.token, r->in.token_len)))) {
        int rc = tern_oauth2_verify(ob->jwt, r->in.token, r->in.token_len, r->in.user,
                                    (int64_t)time(NULL), &r->arena, account_r, r->error,
                                    sizeof(r->error));
        return rc == 0 ? TERN_AUTH_OK : TERN_AUTH_EFAIL;
    }
    if (ob->in == NULL) {
        snprintf(r->error, sizeof(r->error), "not a token our keys can check");
        return TERN_AUTH_EFAIL;
    }
    int status;
    char *account = NULL;
    if (tern_introspect_cached(ob->in, r->in.token, r->in.token_len, uv_hrtime() / 1000000u,
                               &r->arena, &status, &account, r->error, sizeof(r->error))) {
        if (status == TERN_AUTH_OK && r->in.user != NULL && r->in.user[0] != '\0' &&
            strcasecmp(r->in.user, account) != 0) {
            snprintf(r->error, sizeof(r->error), "user does not match the token's account");
            return TERN_AUTH_EFAIL;
        }
        *account_r = account;
        return status;
    }
    return TERN_AUTH__ASYNC;
}

static void oauth2_verify_token_async(void *b, uv_loop_t *loop, tern_auth_req *r,
                                      void (*done)(tern_auth_req *r, char *account))
{
    oauth2_backend *ob = b;
    tern_introspect_ask(ob->in, loop, r, done);
}

const tern_auth_backend_ops tern_auth_oauth2_backend = {
    .name = "oauth2",
    .create = oauth2_create,
    .destroy = oauth2_destroy,
    .caps = oauth2_caps,
    .lookup = oauth2_lookup,
    .verify_token = oauth2_verify_token,
    .verify_token_async = oauth2_verify_token_async,
};
