/* test_auth_oauth2.c: auth/oauth2, JWT access tokens checked against a
 * JWKS: valid tokens per algorithm, and each way a token must fail
 * (expired, wrong issuer or audience, bad signature, alg none, HS256
 * keyed with the RSA public key, unknown kid, user mismatch, malformed
 * base64 and JSON), then the JWKS load errors. Tokens are signed here with
 * the keys in tests/data/oauth2 (see its README); the clock is fixed.
 * Input: the committed test data. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/md.h>
#include <mbedtls/pk.h>
#include <mbedtls/sha256.h>
#include <sodium.h>

#include "auth/auth.h"
#include "auth/oauth2/oauth2.h"
#include "conf/config.h"
#include "lib/base64.h"

#define NOW 1800000000LL
#define ISS "https://idp.example"
#define AUD "tern"

static char datadir[512];

static const char *data(const char *name)
{
    static char path[1024];
    snprintf(path, sizeof(path), "%s/oauth2/%s", datadir, name);
    return path;
}

static int rng(void *ctx, unsigned char *out, size_t len)
{
    (void)ctx;
    randombytes_buf(out, len);
    return 0;
}

static void b64url(const uint8_t *in, size_t len, char *out, size_t cap)
{
    char tmp[4096];
    long n = tern_base64_encode(in, len, tmp, sizeof(tmp));
    assert_true(n >= 0 && (size_t)n < cap);
    size_t w = 0;
    for (long i = 0; i < n; i++) {
        char c = tmp[i];
        if (c == '=')
            break;
        out[w++] = c == '+' ? '-' : c == '/' ? '_' : c;
    }
    out[w] = '\0';
}

typedef enum { SIG_RS256, SIG_ES256, SIG_EDDSA, SIG_HS256, SIG_NONE, SIG_RS_OTHER } sigkind;

/* header and claims are JSON texts; returns a malloc'd compact JWS. */
static char *sign(sigkind kind, const char *header, const char *claims)
{
    char *tok = malloc(8192);
    char h[2048], p[2048];
    b64url((const uint8_t *)header, strlen(header), h, sizeof(h));
    b64url((const uint8_t *)claims, strlen(claims), p, sizeof(p));
    int n = snprintf(tok, 8192, "%s.%s", h, p);
    uint8_t hash[32], sig[1024];
    size_t sl = 0;
    mbedtls_sha256_ret((const uint8_t *)tok, (size_t)n, hash, 0);
    if (kind == SIG_RS256 || kind == SIG_RS_OTHER || kind == SIG_ES256) {
        mbedtls_pk_context pk;
        mbedtls_pk_init(&pk);
        const char *file = kind == SIG_RS256 ? "rsa.pem" : kind == SIG_ES256 ? "ec.pem"
                                                                              : "rsa-other.pem";
        assert_int_equal(mbedtls_pk_parse_keyfile(&pk, data(file), NULL), 0);
        if (kind == SIG_ES256) {
            mbedtls_ecp_keypair *ec = mbedtls_pk_ec(pk);
            mbedtls_mpi r, s;
            mbedtls_mpi_init(&r);
            mbedtls_mpi_init(&s);
            assert_int_equal(mbedtls_ecdsa_sign(&ec->grp, &r, &s, &ec->d, hash, 32, rng, NULL), 0);
            assert_int_equal(mbedtls_mpi_write_binary(&r, sig, 32), 0);
            assert_int_equal(mbedtls_mpi_write_binary(&s, sig + 32, 32), 0);
            sl = 64;
            mbedtls_mpi_free(&r);
            mbedtls_mpi_free(&s);
        } else {
            assert_int_equal(mbedtls_pk_sign(&pk, MBEDTLS_MD_SHA256, hash, 32, sig, &sl, rng, NULL),
                             0);
        }
        mbedtls_pk_free(&pk);
    } else if (kind == SIG_EDDSA) {
        FILE *f = fopen(data("ed25519.seed"), "r");
        assert_non_null(f);
        char hex[80] = "";
        assert_non_null(fgets(hex, sizeof(hex), f));
        fclose(f);
        uint8_t seed[32], pkey[32], sk[64];
        size_t bin;
        assert_int_equal(sodium_hex2bin(seed, 32, hex, 64, NULL, &bin, NULL), 0);
        crypto_sign_seed_keypair(pkey, sk, seed);
        crypto_sign_detached(sig, NULL, (const uint8_t *)tok, (size_t)n, sk);
        sl = 64;
    } else if (kind == SIG_HS256) {
        /* The confusion attack: HMAC keyed with the public key's JWK
         * text, which anyone can fetch. */
        FILE *f = fopen(data("jwks.json"), "r");
        char key[8192];
        size_t kl = fread(key, 1, sizeof(key), f);
        fclose(f);
        crypto_auth_hmacsha256_state st;
        crypto_auth_hmacsha256_init(&st, (const uint8_t *)key, kl);
        crypto_auth_hmacsha256_update(&st, (const uint8_t *)tok, (size_t)n);
        crypto_auth_hmacsha256_final(&st, sig);
        sl = 32;
    }
    char s[2048];
    b64url(sig, sl, s, sizeof(s));
    snprintf(tok + n, 8192 - (size_t)n, ".%s", s);
    return tok;
}

static tern_oauth2 *load(const char *jwks, unsigned algs)
{
    tern_oauth2_params p = {.jwks_file = data(jwks), .issuer = ISS, .audience = AUD,
                            .leeway_s = 60, .algorithms = algs};
    char *err = NULL;
    tern_oauth2 *o = tern_oauth2_new(&p, &err);
    if (o == NULL)
        fprintf(stderr, "load: %s\n", err);
    free(err);
    return o;
}

/* 0 and the account, or -1; why is printed to help read failures. */
static int check(tern_oauth2 *o, const char *tok, const char *user, char *acct, size_t cap)
{
    tern_arena a;
    tern_arena_init(&a, 256);
    char *account = NULL, why[256] = "";
    int rc = tern_oauth2_verify(o, tok, strlen(tok), user, NOW, &a, &account, why, sizeof(why));
    if (rc == 0)
        snprintf(acct, cap, "%s", account);
    else
        snprintf(acct, cap, "%s", why);
    tern_arena_free(&a);
    return rc;
}

#define CLAIMS(extra) \
    "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":1800000600,\"iat\":1799999000," \
    "\"email\":\"alice@example.org\"" extra "}"

static void expect(tern_oauth2 *o, sigkind k, const char *hdr, const char *claims,
                   const char *user, int want, const char *want_why)
{
    char *tok = sign(k, hdr, claims);
    char out[256];
    int rc = check(o, tok, user, out, sizeof(out));
    if (rc != want || (want_why && strstr(out, want_why) == NULL))
        fail_msg("token %s %s: rc %d (%s)", hdr, claims, rc, out);
    if (want == 0)
        assert_string_equal(out, "alice@example.org");
    free(tok);
}

static void test_valid(void **state)
{
    (void)state;
    tern_oauth2 *o = load("jwks.json", 0);
    assert_non_null(o);
    assert_int_equal(tern_oauth2_key_count(o), 3); /* oct and enc keys skipped */
    expect(o, SIG_RS256, "{\"alg\":\"RS256\",\"kid\":\"rsa1\"}", CLAIMS(""), "", 0, NULL);
    expect(o, SIG_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec1\"}", CLAIMS(""), NULL, 0, NULL);
    expect(o, SIG_EDDSA, "{\"alg\":\"EdDSA\",\"kid\":\"ed1\",\"typ\":\"at+jwt\"}", CLAIMS(""),
           "ALICE@example.org", 0, NULL);
    /* No kid: the only key of the type. aud as an array, nbf now. */
    expect(o, SIG_ES256, "{\"alg\":\"ES256\"}",
           "{\"iss\":\"" ISS "\",\"aud\":[\"x\",\"" AUD "\"],\"exp\":1800000001,"
           "\"nbf\":1800000000,\"email\":\"alice@example.org\"}",
           "alice@example.org", 0, NULL);
    /* Expired 30 s ago: within the 60 s leeway. */
    expect(o, SIG_RS256, "{\"alg\":\"RS256\",\"kid\":\"rsa1\"}",
           "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":1799999970,"
           "\"email\":\"alice@example.org\"}",
           NULL, 0, NULL);
    /* Signed by openssl (tests/data/oauth2/gen.sh). */
    FILE *f = fopen(data("token-rs256-openssl.txt"), "r");
    char tok[2048] = "", out[256];
    assert_non_null(fgets(tok, sizeof(tok), f));
    fclose(f);
    tok[strcspn(tok, "\n")] = '\0';
    assert_int_equal(check(o, tok, "alice@example.org", out, sizeof(out)), 0);
    assert_string_equal(out, "Alice@Example.org");
    tern_oauth2_free(o);
}

static void test_claims(void **state)
{
    (void)state;
    tern_oauth2 *o = load("jwks.json", 0);
    const char *h = "{\"alg\":\"EdDSA\",\"kid\":\"ed1\"}";
    expect(o, SIG_EDDSA, h,
           "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":1799999900,\"email\":\"a@b\"}",
           NULL, -1, "expired");
    expect(o, SIG_EDDSA, h, "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"email\":\"a@b\"}", NULL,
           -1, "exp");
    expect(o, SIG_EDDSA, h,
           "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":\"1900000000\",\"email\":\"a@b\"}",
           NULL, -1, "exp");
    expect(o, SIG_EDDSA, h,
           "{\"iss\":\"https://evil.example\",\"aud\":\"" AUD "\",\"exp\":1800000600,"
           "\"email\":\"a@b\"}",
           NULL, -1, "issuer");
    expect(o, SIG_EDDSA, h,
           "{\"iss\":\"" ISS "\",\"aud\":\"other\",\"exp\":1800000600,\"email\":\"a@b\"}", NULL,
           -1, "audience");
    expect(o, SIG_EDDSA, h,
           "{\"iss\":\"" ISS "\",\"aud\":[\"other\"],\"exp\":1800000600,\"email\":\"a@b\"}",
           NULL, -1, "audience");
    expect(o, SIG_EDDSA, h, "{\"iss\":\"" ISS "\",\"exp\":1800000600,\"email\":\"a@b\"}", NULL,
           -1, "audience");
    expect(o, SIG_EDDSA, h, CLAIMS(",\"nbf\":1800000100"), NULL, -1, "nbf");
    expect(o, SIG_EDDSA, h,
           "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":1800000600,\"iat\":1800000900,"
           "\"email\":\"a@b\"}",
           NULL, -1, "iat");
    expect(o, SIG_EDDSA, h, "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":1800000600}",
           NULL, -1, "claim email");
    expect(o, SIG_EDDSA, h,
           "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":1800000600,\"email\":7}", NULL, -1,
           "claim email");
    expect(o, SIG_EDDSA, h, CLAIMS(""), "bob@example.org", -1, "does not match");
    /* Two "iss" members: one parser's first, another's last. Refused. */
    expect(o, SIG_EDDSA, h, CLAIMS(",\"iss\":\"x\""), NULL, -1, "claims");
    expect(o, SIG_EDDSA, h, "[1]", NULL, -1, "claims");
    tern_oauth2_free(o);
}

static void test_signatures(void **state)
{
    (void)state;
    tern_oauth2 *o = load("jwks.json", 0);
    /* Signed by a key that is not in the JWKS, under a kid that is. */
    expect(o, SIG_RS_OTHER, "{\"alg\":\"RS256\",\"kid\":\"rsa1\"}", CLAIMS(""), NULL, -1,
           "bad signature");
    expect(o, SIG_NONE, "{\"alg\":\"none\"}", CLAIMS(""), NULL, -1, "not allowed");
    expect(o, SIG_HS256, "{\"alg\":\"HS256\",\"kid\":\"rsa1\"}", CLAIMS(""), NULL, -1,
           "not allowed");
    expect(o, SIG_HS256, "{\"alg\":\"HS256\",\"kid\":\"ignored\"}", CLAIMS(""), NULL, -1,
           "not allowed");
    expect(o, SIG_RS256, "{\"alg\":\"RS256\",\"kid\":\"nope\"}", CLAIMS(""), NULL, -1, "no key");
    /* The kid of a key of another type: no cross-type use. */
    expect(o, SIG_ES256, "{\"alg\":\"ES256\",\"kid\":\"rsa1\"}", CLAIMS(""), NULL, -1, "no key");
    expect(o, SIG_RS256, "{\"alg\":\"RS256\",\"kid\":7}", CLAIMS(""), NULL, -1, "kid");
    expect(o, SIG_RS256, "{\"alg\":\"RS256\",\"crit\":[\"exp\"]}", CLAIMS(""), NULL, -1, "crit");
    expect(o, SIG_RS256, "{\"kid\":\"rsa1\"}", CLAIMS(""), NULL, -1, "not allowed");
    expect(o, SIG_RS256, "{\"alg\":\"RS256\",", CLAIMS(""), NULL, -1, "header");

    /* A valid token with one byte changed in each part. */
    char *tok = sign(SIG_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec1\"}", CLAIMS(""));
    char out[256];
    size_t n = strlen(tok);
    for (size_t i = 0; i < n; i += 7) {
        char saved = tok[i];
        if (saved == '.')
            continue;
        tok[i] = saved == 'A' ? 'B' : 'A';
        assert_int_equal(check(o, tok, NULL, out, sizeof(out)), -1);
        tok[i] = saved;
    }
    assert_int_equal(check(o, tok, NULL, out, sizeof(out)), 0);
    free(tok);
    tern_oauth2_free(o);

    /* Only RS256 configured: a good EdDSA token is refused. */
    o = load("jwks.json", TERN_OAUTH2_ALG_RS256);
    expect(o, SIG_EDDSA, "{\"alg\":\"EdDSA\",\"kid\":\"ed1\"}", CLAIMS(""), NULL, -1,
           "not allowed");
    expect(o, SIG_RS256, "{\"alg\":\"RS256\"}", CLAIMS(""), NULL, 0, NULL);
    tern_oauth2_free(o);
}

static void test_malformed(void **state)
{
    (void)state;
    tern_oauth2 *o = load("jwks.json", 0);
    char out[256];
    const char *bad[] = {"", "abc", "a.b", "a.b.c.d", "..", "e30.e30.", "e30=.e30.AA",
                         "e3+.e30.AA", "eyJhbGciOiJSUzI1NiJ9.e30.A", "bm90IGpzb24.e30.AA",
                         "e30.e30.AA"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
        assert_int_equal(check(o, bad[i], NULL, out, sizeof(out)), -1);
    char *big = malloc(TERN_OAUTH2_MAX_TOKEN + 2);
    memset(big, 'A', TERN_OAUTH2_MAX_TOKEN + 1);
    big[10] = big[20] = '.';
    big[TERN_OAUTH2_MAX_TOKEN + 1] = '\0';
    assert_int_equal(check(o, big, NULL, out, sizeof(out)), -1);
    free(big);
    /* Every prefix of a good token is refused. */
    char *tok = sign(SIG_EDDSA, "{\"alg\":\"EdDSA\"}", CLAIMS(""));
    size_t n = strlen(tok);
    for (size_t cut = 0; cut < n; cut++) {
        tern_arena a;
        tern_arena_init(&a, 256);
        char *acct, why[128];
        assert_int_equal(tern_oauth2_verify(o, tok, cut, NULL, NOW, &a, &acct, why, sizeof(why)),
                         -1);
        tern_arena_free(&a);
    }
    free(tok);
    tern_oauth2_free(o);
}

static void test_jwks_errors(void **state)
{
    (void)state;
    const char *files[] = {"jwks-weak.json", "jwks-bad.json", "jwks-nokeys.json", "missing.json"};
    const char *why[] = {"not a usable RSA", "invalid JSON", "no signing key", "No such file"};
    for (size_t i = 0; i < 4; i++) {
        tern_oauth2_params p = {.jwks_file = data(files[i]), .issuer = ISS, .audience = AUD};
        char *err = NULL;
        assert_null(tern_oauth2_new(&p, &err));
        assert_non_null(err);
        if (strstr(err, why[i]) == NULL)
            fail_msg("%s: %s", files[i], err);
        free(err);
    }
    assert_int_equal(tern_oauth2_alg("EdDSA"), TERN_OAUTH2_ALG_EDDSA);
    assert_int_equal(tern_oauth2_alg("HS256"), 0);
    assert_int_equal(tern_oauth2_alg("none"), 0);
}

#define LISTENER                                                                      \
    "listeners:\n  - name: imap\n    protocol: imap\n    port: 1143\n"                     \
    "    allow_plaintext_auth: true\n"

static tern_config *load_config(const char *extra, tern_config_errors *errs)
{
    char yaml[2048];
    snprintf(yaml, sizeof(yaml),
             LISTENER "auth:\n  backends: [oauth2]\n"
             "auth_oauth2:\n  jwks_file: %s\n  issuer: \"" ISS "\"\n  audience: " AUD "\n%s",
             data("jwks.json"), extra);
    tern_config_errors_init(errs);
    return tern_config_load_string(yaml, strlen(yaml), "test.yaml", errs);
}

/* Through auth.h: the config section, the backend table, CAPABILITIES and
 * the VERIFY_TOKEN op, on the real clock. */
static void test_api(void **state)
{
    (void)state;
    tern_config_errors errs;
    tern_config *cfg = load_config("  algorithms: [EdDSA, ES256]\n  leeway: 30s\n", &errs);
    for (size_t i = 0; cfg == NULL && i < errs.n; i++)
        print_message("config: %s\n", errs.items[i]);
    assert_non_null(cfg);
    assert_string_equal(cfg->auth_oauth2.account_claim, "email");
    assert_int_equal(cfg->auth_oauth2.leeway_ms, 30000);
    assert_int_equal(cfg->auth_oauth2.n_algorithms, 2);
    tern_config_errors_free(&errs);
    char *err = NULL;
    tern_auth *a = tern_auth_new(cfg, NULL, &err);
    if (a == NULL)
        fail_msg("tern_auth_new: %s", err);
    /* Only a token backend: no password mechanism may be offered. */
    assert_int_equal(tern_auth_capabilities(a), TERN_AUTH_CAP_TOKEN);

    char claims[512];
    long long now = (long long)time(NULL);
    snprintf(claims, sizeof(claims),
             "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld,\"email\":\"carol@example.org\"}",
             now + 600);
    char *good = sign(SIG_EDDSA, "{\"alg\":\"EdDSA\",\"kid\":\"ed1\"}", claims);
    char *rs = sign(SIG_RS256, "{\"alg\":\"RS256\",\"kid\":\"rsa1\"}", claims);
    struct {
        const char *user, *token;
        int want;
    } cases[] = {
        {"", good, TERN_AUTH_OK},
        {"Carol@Example.org", good, TERN_AUTH_OK},
        {"dave@example.org", good, TERN_AUTH_EFAIL},
        {"", rs, TERN_AUTH_EFAIL}, /* RS256 not in algorithms */
        {"", "e30.e30.AA", TERN_AUTH_EFAIL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        tern_auth_req *r = tern_auth_req_new(TERN_AUTH_VERIFY_TOKEN, NULL, NULL);
        r->in.service = "imap";
        r->in.user = cases[i].user;
        r->in.token = cases[i].token;
        r->in.token_len = strlen(cases[i].token);
        r->in.remote_ip = "192.0.2.1";
        int rc = tern_auth_run_sync(a, r);
        if (rc != cases[i].want)
            fail_msg("case %zu: %d (%s)", i, rc, r->error);
        if (rc == TERN_AUTH_OK) {
            assert_string_equal(r->out.account, "carol@example.org");
            assert_string_equal(r->out.backend, "oauth2");
        }
        tern_auth_req_free(r);
    }
    tern_auth_req *r = tern_auth_req_new(TERN_AUTH_VERIFY_TOKEN, NULL, NULL);
    r->in.user = "";
    assert_int_equal(tern_auth_run_sync(a, r), TERN_AUTH_EINVAL); /* no token */
    tern_auth_req_free(r);
    /* Password logins are nobody's here. */
    r = tern_auth_req_new(TERN_AUTH_VERIFY_PASSWORD, NULL, NULL);
    r->in.user = "carol@example.org";
    r->in.password = "x";
    r->in.password_len = 1;
    assert_int_equal(tern_auth_run_sync(a, r), TERN_AUTH_EFAIL);
    tern_auth_req_free(r);
    free(good);
    free(rs);
    tern_auth_unref(a);
    tern_config_unref(cfg);
}

static void test_config_errors(void **state)
{
    (void)state;
    tern_config_errors errs;
    const char *bad[][2] = {
        {"  algorithms: [HS256]\n", "not a supported JWS algorithm"},
        {"  algorithms: [none]\n", "not a supported JWS algorithm"},
        {"  leeway: 2h\n", "leeway"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        tern_config *cfg = load_config(bad[i][0], &errs);
        assert_null(cfg);
        bool found = false;
        for (size_t k = 0; k < errs.n; k++)
            found |= strstr(errs.items[k], bad[i][1]) != NULL;
        if (!found)
            fail_msg("%s: no error naming %s", bad[i][0], bad[i][1]);
        tern_config_errors_free(&errs);
    }
    const char *texts[][2] = {
        {"auth:\n  backends: [oauth2]\n", "oauth2 needs an auth_oauth2"},
        {"auth:\n  backends: [oauth2]\nauth_oauth2:\n  issuer: x\n", "auth_oauth2.jwks_file"},
        {"auth_oauth2:\n  jwks_file: @bad@\n  issuer: x\n  audience: y\n", "invalid JSON"},
        {"auth_oauth2:\n  jwks_file: @none@\n  issuer: x\n  audience: y\n",
         "no \"keys\" array"},
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(*texts); i++) {
        char yaml[1024], *o = yaml;
        for (const char *p = texts[i][0]; *p;) {
            const char *sub = strncmp(p, "@bad@", 5) == 0    ? data("jwks-bad.json")
                              : strncmp(p, "@none@", 6) == 0 ? data("jwks-empty.json")
                                                             : NULL;
            if (sub != NULL) {
                o += sprintf(o, "%s", sub);
                p += p[1] == 'b' ? 5 : 6;
            } else {
                *o++ = *p++;
            }
        }
        *o = '\0';
        tern_config_errors_init(&errs);
        char full[1200];
        snprintf(full, sizeof(full), LISTENER "%s", yaml);
        tern_config *cfg = tern_config_load_string(full, strlen(full), "t.yaml", &errs);
        assert_null(cfg);
        bool found = false;
        for (size_t k = 0; k < errs.n; k++)
            found |= strstr(errs.items[k], texts[i][1]) != NULL;
        if (!found) {
            for (size_t k = 0; k < errs.n; k++)
                print_message("  error: %s\n", errs.items[k]);
            fail_msg("case %zu: no error naming %s", i, texts[i][1]);
        }
        tern_config_errors_free(&errs);
    }
}

int main(void)
{
    const char *d = getenv("TERN_TEST_DATA");
    snprintf(datadir, sizeof(datadir), "%s", d ? d : "tests/data");
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),     cmocka_unit_test(test_claims),
        cmocka_unit_test(test_signatures), cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_jwks_errors), cmocka_unit_test(test_api),
        cmocka_unit_test(test_config_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
