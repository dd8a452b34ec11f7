/* Unit tests for auth/sasl/ (every mechanism: RFC 4616 PLAIN examples,
 * LOGIN, the RFC 2195 CRAM-MD5 example, the RFC 7677 SCRAM-SHA-256
 * vector, channel binding and the "y" downgrade, RFC 7628 OAUTHBEARER
 * examples, XOAUTH2, EXTERNAL, unknown users, malformed and truncated
 * messages, aborts, calls out of order) and lib/base64.c (RFC 4648
 * vectors, strictness). Every prefix of a message is fed too: it must
 * fail cleanly or be a valid shorter message, never crash. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/md.h>
#include <mbedtls/pkcs5.h>
#include <sodium.h>

#include "auth/sasl/sasl.h"
#include "lib/base64.h"

#define STEP(s, lit, r) tern_sasl_step((s), (const uint8_t *)(lit), sizeof(lit) - 1, (r))

static void step_str(tern_sasl *s, const char *m, tern_sasl_result *r)
{
    tern_sasl_step(s, (const uint8_t *)m, strlen(m), r);
}

static tern_sasl_params params(void)
{
    tern_sasl_params p = {0};
    p.service = "imap";
    p.hostname = "mail.example.test";
    p.secret = (const uint8_t *)"unit-test-secret";
    p.secret_len = 16;
    return p;
}

static void assert_data(const tern_sasl_result *r, const char *want)
{
    assert_int_equal(r->data_len, strlen(want));
    assert_memory_equal(r->data, want, r->data_len);
}

/* ---- base64 --------------------------------------------------------------- */

static void test_base64_vectors(void **state)
{
    (void)state;
    static const char *plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *enc[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (size_t i = 0; i < 7; i++) {
        char out[16];
        long n = tern_base64_encode((const uint8_t *)plain[i], strlen(plain[i]), out, sizeof out);
        assert_int_equal(n, (long)strlen(enc[i]));
        assert_string_equal(out, enc[i]);
        uint8_t dec[16];
        size_t dl;
        assert_int_equal(tern_base64_decode(enc[i], strlen(enc[i]), dec, sizeof dec, &dl), 0);
        assert_int_equal(dl, strlen(plain[i]));
        assert_memory_equal(dec, plain[i], dl);
    }
    char small[4];
    assert_int_equal(tern_base64_encode((const uint8_t *)"foo", 3, small, sizeof small), -1);
    uint8_t all[256], back[256];
    char text[TERN_BASE64_ENCODED_LEN(256) + 1];
    for (int i = 0; i < 256; i++)
        all[i] = (uint8_t)i;
    for (size_t n = 0; n <= 256; n++) {
        long e = tern_base64_encode(all, n, text, sizeof text);
        assert_int_equal(e, (long)TERN_BASE64_ENCODED_LEN(n));
        size_t dl;
        assert_int_equal(tern_base64_decode(text, (size_t)e, back, sizeof back, &dl), 0);
        assert_int_equal(dl, n);
        assert_memory_equal(back, all, n);
    }
}

static void test_base64_strict(void **state)
{
    (void)state;
    static const char *bad[] = {"Zg=", "Zh==", "Zm9=", "Z===", "====", "Zg==Zg==", "Zm9v\n",
                                " Zm9v", "Zm-v", "Zm_v", "Zg", "Zm8", "=Zm9", "Zm=v"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint8_t out[16];
        size_t dl;
        assert_int_equal(tern_base64_decode(bad[i], strlen(bad[i]), out, sizeof out, &dl), -1);
    }
    uint8_t two[2];
    size_t dl;
    assert_int_equal(tern_base64_decode("Zm9v", 4, two, sizeof two, &dl), -1);
    assert_int_equal(tern_base64_decode("Zm8=", 4, two, sizeof two, &dl), 0);
    assert_int_equal(dl, 2);
}

static void test_decode_response(void **state)
{
    (void)state;
    uint8_t out[8];
    size_t n = 99;
    assert_int_equal(tern_sasl_decode_response("*", 1, false, out, sizeof out, &n),
                     TERN_SASL_RESP_ABORT);
    assert_int_equal(tern_sasl_decode_response("=", 1, true, out, sizeof out, &n),
                     TERN_SASL_RESP_OK);
    assert_int_equal(n, 0);
    assert_int_equal(tern_sasl_decode_response("=", 1, false, out, sizeof out, &n),
                     TERN_SASL_RESP_BAD);
    assert_int_equal(tern_sasl_decode_response("", 0, false, out, sizeof out, &n),
                     TERN_SASL_RESP_OK);
    assert_int_equal(n, 0);
    assert_int_equal(tern_sasl_decode_response("dGlt", 4, false, out, sizeof out, &n),
                     TERN_SASL_RESP_OK);
    assert_int_equal(n, 3);
    assert_memory_equal(out, "tim", 3);
    assert_int_equal(tern_sasl_decode_response("dGl", 3, false, out, sizeof out, &n),
                     TERN_SASL_RESP_BAD);
    assert_int_equal(tern_sasl_decode_response("d!lt", 4, false, out, sizeof out, &n),
                     TERN_SASL_RESP_BAD);
    assert_int_equal(tern_sasl_decode_response("Zm9vYmFyZm9vYmFy", 16, false, out, sizeof out, &n),
                     TERN_SASL_RESP_TOOLONG);
}

/* ---- PLAIN ---------------------------------------------------------------- */

static void test_plain_rfc4616(void **state)
{
    (void)state;
    tern_sasl_params p = params();
    tern_sasl_result r;
    tern_sasl *s = tern_sasl_new("plain", &p);
    assert_non_null(s);
    STEP(s, "\0tim\0tanstaaftanstaaf", &r);
    assert_int_equal(r.status, TERN_SASL_NEED_VERIFY_PASSWORD);
    assert_string_equal(r.authcid, "tim");
    assert_string_equal(r.authzid, "");
    assert_int_equal(r.password_len, 16);
    assert_memory_equal(r.password, "tanstaaftanstaaf", 16);
    tern_sasl_verified(s, true, NULL, &r);
    assert_int_equal(r.status, TERN_SASL_SUCCESS);
    assert_string_equal(r.account, "tim");
    tern_sasl_free(s);

    /* Ursel acting as Kurt: refused unless proxying is allowed. */
    s = tern_sasl_new("PLAIN", &p);
    STEP(s, "Kurt\0Ursel\0xipj3plmq", &r);
    assert_int_equal(r.status, TERN_SASL_FAIL);
    assert_int_equal(r.error, TERN_SASL_EAUTHZ);
    tern_sasl_free(s);
    p.allow_proxy = true;
    s = tern_sasl_new("PLAIN", &p);
    STEP(s, "Kurt\0Ursel\0xipj3plmq", &r);
    assert_int_equal(r.status, TERN_SASL_NEED_VERIFY_PASSWORD);
    assert_string_equal(r.authcid, "Ursel");
    assert_string_equal(r.authzid, "Kurt");
    tern_sasl_verified(s, true, NULL, &r);
    assert_string_equal(r.account, "Kurt");
    tern_sasl_free(s);

    /* authzid equal to the authcid is no proxying. */
    p.allow_proxy = false;
    s = tern_sasl_new("PLAIN", &p);
    STEP(s, "tim\0tim\0pw", &r);
    assert_int_equal(r.status, TERN_SASL_NEED_VERIFY_PASSWORD);
    assert_string_equal(r.authzid, "");
    tern_sasl_verified(s, false, NULL, &r);
    assert_int_equal(r.status, TERN_SASL_FAIL);
    assert_int_equal(r.error, TERN_SASL_EBADCRED);
    tern_sasl_free(s);
}

static void test_plain_no_initial_response(void **state)
{
    (void)state;
    tern_sasl_params p = params();
    tern_sasl_result r;
    tern_sasl *s = tern_sasl_new("PLAIN", &p);
    tern_sasl_step(s, NULL, 0, &r);
    assert_int_equal(r.status, TERN_SASL_CHALLENGE);
    assert_int_equal(r.data_len, 0);
    STEP(s, "\0tim\0pw", &r);
    assert_int_equal(r.status, TERN_SASL_NEED_VERIFY_PASSWORD);
    /* Talking past a NEED_* is out of order. */
    STEP(s, "\0tim\0pw", &r);
    assert_int_equal(r.status, TERN_SASL_FAIL);
    assert_int_equal(r.error, TERN_SASL_ESTATE);
    tern_sasl_free(s);
}

static void expect_fail(const char *mech, const tern_sasl_params *p, const uint8_t *m, size_t len,
                        tern_sasl_error e)
{
    tern_sasl_result r;
    tern_sasl *s = tern_sasl_new(mech, p);
    assert_non_null(s);
    tern_sasl_step(s, m, len, &r);
    assert_int_equal(r.status, TERN_SASL_FAIL);
    if (e != TERN_SASL_OK)
        assert_int_equal(r.error, e);
    /* Once failed, it stays failed. */
    tern_sasl_step(s, m, len, &r);
    assert_int_equal(r.status, TERN_SASL_FAIL);
    tern_sasl_free(s);
}
#define EXPECT_FAIL(mech, p, lit, e) expect_fail(mech, p, (const uint8_t *)(lit), sizeof(lit) - 1, e)

static void test_plain_malformed(void **state)
{
    (void)state;
    tern_sasl_params p = params();
    EXPECT_FAIL("PLAIN", &p, "", TERN_SASL_EMALFORMED);
    EXPECT_FAIL("PLAIN", &p, "tim", TERN_SASL_EMALFORMED);
    EXPECT_FAIL("PLAIN", &p, "\0tim", TERN_SASL_EMALFORMED);
    EXPECT_FAIL("PLAIN", &p, "\0tim\0", TERN_SASL_EMALFORMED);
    EXPECT_FAIL("PLAIN", &p, "\0\0pw", TERN_SASL_EMALFORMED);
    EXPECT_FAIL("PLAIN", &p, "\0tim\0pw\0x", TERN_SASL_EMALFORMED);
    EXPECT_FAIL("PLAIN", &p, "\0ti\x01m\0pw", TERN_SASL_EMALFORMED);
    EXPECT_FAIL("PLAIN", &p, "\0ti\xffm\0pw", TERN_SASL_EMALFORMED);
    uint8_t big[600] = {0};
    memset(big + 1, 'u', 300);
    big[302] = 'p';
    expect_fail("PLAIN", &p, big, 303, TERN_SASL_ETOOLONG);
    uint8_t *huge = calloc(1, TERN_SASL_MSG_MAX + 1);
    expect_fail("PLAIN", &p, huge, TERN_SASL_MSG_MAX + 1, TERN_SASL_ETOOLONG);
    free(huge);
    /* Every prefix: "\0tim\0" and shorter fail, longer are valid. */
    static const char msg[] = "\0tim\0tanstaaftanstaaf";
    for (size_t n = 0; n < sizeof msg - 1; n++) {
        tern_sasl_result r;
        tern_sasl *s = tern_sasl_new("PLAIN", &p);
        tern_sasl_step(s, (const uint8_t *)msg, n, &r);
        assert_int_equal(r.status, n <= 5 ? TERN_SASL_FAIL : TERN_SASL_NEED_VERIFY_PASSWORD);
        tern_sasl_free(s);
    }
}

/* ---- LOGIN ---------------------------------------------------------------- */

static void test_login(void **state)
{
    (void)state;
    tern_sasl_params p = params();
    tern_sasl_result r;
    tern_sasl *s = tern_sasl_new("LOGIN", &p);
    tern_sasl_step(s, NULL, 0, &r);
    assert_int_equal(r.status, TERN_SASL_CHALLENGE);
    assert_data(&r, "Username:");
    STEP(s, "tim", &r);
    assert_int_equal(r.status, TERN_SASL_CHALLENGE);
    assert_data(&r, "Password:");
    STEP(s, "secret pw", &r);
    assert_int_equal(r.status, TERN_SASL_NEED_VERIFY_PASSWORD);
    assert_string_equal(r.authcid, "tim");
    assert_memory_equal(r.password, "secret pw", 9);
    tern_sasl_verified(s, true, "tim@example.test", &r);
    assert_int_equal(r.status, TERN_SASL_SUCCESS);
    assert_string_equal(r.account, "tim@example.test");
    tern_sasl_free(s);

    /* The username as initial response. */
    s = tern_sasl_new("LOGIN", &p);
    STEP(s, "tim", &r);
    assert_data(&r, "Password:");
    STEP(s, "pw", &r);
    assert_int_equal(r.status, TERN_SASL_NEED_VERIFY_PASSWORD);
    tern_sasl_free(s);

    /* Empty username, NUL in the password, abort. */
    s = tern_sasl_new("LOGIN", &p);
    tern_sasl_step(s, NULL, 0, &r);
    STEP(s, "", &r);
    assert_int_equal(r.error, TERN_SASL_EMALFORMED);
    tern_sasl_free(s);
    s = tern_sasl_new("LOGIN", &p);
    STEP(s, "tim", &r);
    STEP(s, "p\0w", &r);
    assert_int_equal(r.error, TERN_SASL_EMALFORMED);
    tern_sasl_free(s);
    s = tern_sasl_new("LOGIN", &p);
    STEP(s, "tim", &r);
    tern_sasl_abort(s, &r);
    assert_int_equal(r.status, TERN_SASL_FAIL);
    assert_int_equal(r.error, TERN_SASL_EABORTED);
    tern_sasl_free(s);
}

/* ---- CRAM-MD5 ------------------------------------------------------------- */

static void test_cram_rfc2195(void **state)
{
    (void)state;
    tern_sasl_params p = params();
    tern_sasl_result r;
    tern_sasl *s = tern_sasl_new("CRAM-MD5", &p);
    tern_sasl_test_fix(s, "<1896.697170952@postoffice.reston.mci.net>");
    tern_sasl_step(s, NULL, 0, &r);
    assert_int_equal(r.status, TERN_SASL_CHALLENGE);
    assert_data(&r, "<1896.697170952@postoffice.reston.mci.net>");
    STEP(s, "tim b913a602c7eda7a495b4e6e7334d3890", &r);
    assert_int_equal(r.status, TERN_SASL_NEED_CRAM_SECRET);
    assert_string_equal(r.authcid, "tim");
    assert_string_equal(r.challenge, "<1896.697170952@postoffice.reston.mci.net>");
    assert_true(tern_cram_md5_verify((const uint8_t *)"tanstaaftanstaaf", 16, r.challenge,
                                     r.digest));
    assert_false(tern_cram_md5_verify((const uint8_t *)"tanstaaftanstaaX", 16, r.challenge,
                                      r.digest));
    tern_sasl_cram_secret(s, (const uint8_t *)"tanstaaftanstaaf", 16, NULL, &r);
    assert_int_equal(r.status, TERN_SASL_SUCCESS);
    assert_string_equal(r.account, "tim");
    tern_sasl_free(s);

    static const char *bad_secret[] = {"tanstaaftanstaaX", NULL};
    for (int i = 0; i < 2; i++) {
        s = tern_sasl_new("CRAM-MD5", &p);
        tern_sasl_test_fix(s, "<1896.697170952@postoffice.reston.mci.net>");
        tern_sasl_step(s, NULL, 0, &r);
        STEP(s, "tim B913A602C7EDA7A495B4E6E7334D3890", &r);
        assert_int_equal(r.status, TERN_SASL_NEED_CRAM_SECRET);
        tern_sasl_cram_secret(s, (const uint8_t *)bad_secret[i], bad_secret[i] ? 16 : 0, NULL,
                              &r);
        assert_int_equal(r.status, TERN_SASL_FAIL);
        assert_int_equal(r.error, TERN_SASL_EBADCRED);
        tern_sasl_free(s);
    }

    /* The real challenge has the RFC 1939 msg-id shape with our host. */
    p.now = 697170952;
    s = tern_sasl_new("CRAM-MD5", &p);
    tern_sasl_step(s, NULL, 0, &r);
    assert_true(r.data_len > 10 && r.data[0] == '<' && r.data[r.data_len - 1] == '>');
    assert_non_null(strstr((const char *)r.data, ".697170952@mail.example.test>"));
    tern_sasl_free(s);
}

static void test_cram_malformed(void **state)
{
    (void)state;
    tern_sasl_params p = params();
    static const char *bad[] = {"", "tim", "timb913a602c7eda7a495b4e6e7334d3890",
                                " b913a602c7eda7a495b4e6e7334d3890",
                                "tim b913a602c7eda7a495b4e6e7334d389",
                                "tim b913a602c7eda7a495b4e6e7334d38900",
                                "tim g913a602c7eda7a495b4e6e7334d3890"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tern_sasl_result r;
        tern_sasl *s = tern_sasl_new("CRAM-MD5", &p);
        tern_sasl_step(s, NULL, 0, &r);
        step_str(s, bad[i], &r);
        assert_int_equal(r.status, TERN_SASL_FAIL);
        assert_int_equal(r.error, TERN_SASL_EMALFORMED);
        tern_sasl_free(s);
    }
    /* An initial response makes no sense for a server-first mechanism. */
    EXPECT_FAIL("CRAM-MD5", &p, "tim b913a602c7eda7a495b4e6e7334d3890", TERN_SASL_EMALFORMED);
    static const char msg[] = "tim b913a602c7eda7a495b4e6e7334d3890";
    for (size_t n = 0; n < sizeof msg - 1; n++) {
        tern_sasl_result r;
        tern_sasl *s = tern_sasl_new("CRAM-MD5", &p);
        tern_sasl_step(s, NULL, 0, &r);
        tern_sasl_step(s, (const uint8_t *)msg, n, &r);
        assert_int_equal(r.status, TERN_SASL_FAIL);
        tern_sasl_free(s);
    }
}

/* ---- SCRAM ---------------------------------------------------------------- */

static void hmac(const uint8_t *key, size_t klen, const void *m, size_t len, uint8_t out[32])
{
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, klen);
    crypto_auth_hmacsha256_update(&st, m, len);
    crypto_auth_hmacsha256_final(&st, out);
}

/* The client side, written from RFC 5802 section 3 for the test. */
static void client_proof(const char *password, const uint8_t *salt, size_t salt_len,
                         unsigned iter, const char *auth_message, char proof_b64[64],
                         char server_sig_b64[64])
{
    mbedtls_md_context_t ctx;
    mbedtls_md_init(&ctx);
    assert_int_equal(mbedtls_md_setup(&ctx, mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), 1), 0);
    uint8_t salted[32], ck[32], sk[32], stored[32], sig[32], proof[32], ssig[32];
    assert_int_equal(mbedtls_pkcs5_pbkdf2_hmac(&ctx, (const uint8_t *)password, strlen(password),
                                               salt, salt_len, iter, 32, salted), 0);
    mbedtls_md_free(&ctx);
    hmac(salted, 32, "Client Key", 10, ck);
    hmac(salted, 32, "Server Key", 10, sk);
    crypto_hash_sha256(stored, ck, 32);
    hmac(stored, 32, auth_message, strlen(auth_message), sig);
    for (int i = 0; i < 32; i++)
        proof[i] = ck[i] ^ sig[i];
    hmac(sk, 32, auth_message, strlen(auth_message), ssig);
    tern_base64_encode(proof, 32, proof_b64, 64);
    tern_base64_encode(ssig, 32, server_sig_b64, 64);
}

#define RFC7677_SALT "W22ZaJ0SNY7soEsUEjb6gQ=="
#define RFC7677_SNONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"

static tern_scram_keys pencil_keys(void)
{
    uint8_t salt[16];
    size_t sl;
    assert_int_equal(tern_base64_decode(RFC7677_SALT, 24, salt, sizeof salt, &sl), 0);
    tern_scram_keys k;
    assert_int_equal(tern_scram_derive((const uint8_t *)"pencil", 6, salt, sl, 4096, &k), 0);
    return k;
}

static void test_scram_rfc7677(void **state)
{
    (void)state;
    tern_scram_keys k = pencil_keys();
    for (int with_data = 0; with_data < 2; with_data++) {
        tern_sasl_params p = params();
        p.success_data = with_data;
        tern_sasl_result r;
        tern_sasl *s = tern_sasl_new("SCRAM-SHA-256", &p);
        tern_sasl_test_fix(s, RFC7677_SNONCE);
        step_str(s, "n,,n=user,r=rOprNGfwEbeRWgbNEkqO", &r);
        assert_int_equal(r.status, TERN_SASL_NEED_SCRAM_KEYS);
        assert_string_equal(r.authcid, "user");
        assert_string_equal(r.authzid, "");
        tern_sasl_scram_keys(s, &k, NULL, &r);
        assert_int_equal(r.status, TERN_SASL_CHALLENGE);
        assert_data(&r, "r=rOprNGfwEbeRWgbNEkqO" RFC7677_SNONCE ",s=" RFC7677_SALT ",i=4096");
        step_str(s,
                 "c=biws,r=rOprNGfwEbeRWgbNEkqO" RFC7677_SNONCE
                 ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                 &r);
        if (with_data) {
            assert_int_equal(r.status, TERN_SASL_SUCCESS);
        } else {
            assert_int_equal(r.status, TERN_SASL_CHALLENGE);
        }
        assert_data(&r, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
        if (!with_data) {
            STEP(s, "", &r);
            assert_int_equal(r.status, TERN_SASL_SUCCESS);
            assert_int_equal(r.data_len, 0);
        }
        assert_string_equal(r.account, "user");
        tern_sasl_free(s);
    }
}

static void test_scram_keys_text(void **state)
{
    (void)state;
    tern_scram_keys k = pencil_keys(), back;
    char text[TERN_SCRAM_TEXT_MAX];
    assert_int_equal(tern_scram_keys_format(&k, text, sizeof text), 0);
    assert_true(strncmp(text, "{SCRAM-SHA-256}4096," RFC7677_SALT ",", 44) == 0);
    assert_int_equal(tern_scram_keys_parse(text, &back), 0);
    assert_int_equal(back.iterations, 4096);
    assert_int_equal(back.salt_len, 16);
    assert_memory_equal(back.salt, k.salt, 16);
    assert_memory_equal(back.stored_key, k.stored_key, 32);
    assert_memory_equal(back.server_key, k.server_key, 32);
    assert_int_equal(tern_scram_keys_parse(text + 15, &back), 0);
    char small[40];
    assert_int_equal(tern_scram_keys_format(&k, small, sizeof small), -1);

    static const char *bad[] = {
        "", "{SCRAM-SHA-256}", "4096," RFC7677_SALT, "0," RFC7677_SALT ",AAAA,AAAA",
        "4096,,xxxx,xxxx", "x4096," RFC7677_SALT ",a,b",
        "4096," RFC7677_SALT ",AAAA,AAAA",
        "99999999999," RFC7677_SALT ",AAAA,AAAA",
        "4096," RFC7677_SALT ",AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,"
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,extra",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(tern_scram_keys_parse(bad[i], &back), -1);
    assert_int_equal(tern_scram_keys_parse("4096," RFC7677_SALT
                                           ",AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,"
                                           "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                                           &back),
                     0);
    assert_int_equal(tern_scram_derive((const uint8_t *)"x", 1, k.salt, 0, 4096, &back), -1);
    assert_int_equal(tern_scram_derive((const uint8_t *)"x", 1, k.salt, 16, 0, &back), -1);
}

/* A whole exchange driven by the test's client. gs2 is the header,
 * cbind what the client puts in c= (gs2 plus its view of the binding). */
typedef struct {
    const char *mech, *gs2, *user, *password;
    const uint8_t *client_cb;
    size_t client_cb_len;
    const tern_scram_keys *keys;
} scram_case;

static tern_sasl_result run_scram(const tern_sasl_params *p, const scram_case *c)
{
    tern_sasl_result r;
    tern_sasl *s = tern_sasl_new(c->mech, p);
    assert_non_null(s);
    char first[2048];
    snprintf(first, sizeof first, "%sn=%s,r=fyko+d2lbbFgONRv9qkxdawL", c->gs2, c->user);
    step_str(s, first, &r);
    if (r.status != TERN_SASL_NEED_SCRAM_KEYS) {
        tern_sasl_free(s);
        return r;
    }
    tern_sasl_scram_keys(s, c->keys, NULL, &r);
    assert_int_equal(r.status, TERN_SASL_CHALLENGE);
    char server_first[256];
    memcpy(server_first, r.data, r.data_len);
    server_first[r.data_len] = '\0';
    assert_true(strncmp(server_first, "r=fyko+d2lbbFgONRv9qkxdawL", 26) == 0);
    const char *nonce_end = strchr(server_first, ',');
    uint8_t cbind[2048];
    size_t gl = strlen(c->gs2);
    memcpy(cbind, c->gs2, gl);
    if (c->client_cb_len)
        memcpy(cbind + gl, c->client_cb, c->client_cb_len);
    char cb64[3000];
    tern_base64_encode(cbind, gl + c->client_cb_len, cb64, sizeof cb64);
    char without[3200], am[6000], proof[64], ssig[64], final[3300];
    snprintf(without, sizeof without, "c=%s,%.*s", cb64, (int)(nonce_end - server_first),
             server_first);
    snprintf(am, sizeof am, "%s,%s,%s", first + gl, server_first, without);
    const tern_scram_keys *k = c->keys;
    uint8_t salt[64];
    size_t sl;
    const char *sp = strstr(server_first, ",s=") + 3;
    const char *se = strstr(server_first, ",i=");
    assert_int_equal(tern_base64_decode(sp, (size_t)(se - sp), salt, sizeof salt, &sl), 0);
    client_proof(c->password, salt, sl, (unsigned)atoi(se + 3), am, proof, ssig);
    snprintf(final, sizeof final, "%s,p=%s", without, proof);
    step_str(s, final, &r);
    if (r.status == TERN_SASL_CHALLENGE) {
        assert_int_equal(r.data_len, 2 + strlen(ssig));
        assert_memory_equal(r.data, "v=", 2);
        assert_memory_equal(r.data + 2, ssig, strlen(ssig));
        STEP(s, "", &r);
    }
    (void)k;
    static char account[300];
    if (r.account) {
        snprintf(account, sizeof account, "%s", r.account);
        r.account = account;
    }
    tern_sasl_free(s);
    r.data = NULL;
    r.authcid = r.authzid = NULL;
    return r;
}

static const uint8_t exporter[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                     17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

static void test_scram_channel_binding(void **state)
{
    (void)state;
    tern_scram_keys k = pencil_keys();
    tern_sasl_params p = params();
    p.cb_type = "tls-exporter";
    p.cb_data = exporter;
    p.cb_len = sizeof exporter;
    tern_sasl_result r;

    scram_case c = {"SCRAM-SHA-256-PLUS", "p=tls-exporter,,", "user", "pencil", exporter,
                    sizeof exporter, &k};
    r = run_scram(&p, &c);
    assert_int_equal(r.status, TERN_SASL_SUCCESS);
    assert_string_equal(r.account, "user");

    /* The client sees other binding data: a man in the middle. */
    uint8_t other[32];
    memcpy(other, exporter, 32);
    other[31] ^= 1;
    c.client_cb = other;
    r = run_scram(&p, &c);
    assert_int_equal(r.status, TERN_SASL_FAIL);
    assert_int_equal(r.error, TERN_SASL_ECB_MISMATCH);

    /* Wrong password with binding. */
    c.client_cb = exporter;
    c.password = "pencil2";
    r = run_scram(&p, &c);
    assert_int_equal(r.error, TERN_SASL_EBADCRED);
    c.password = "pencil";

    /* A binding type we do not have. */
    c.gs2 = "p=tls-unique,,";
    r = run_scram(&p, &c);
    assert_int_equal(r.status, TERN_SASL_FAIL);
    assert_int_equal(r.error, TERN_SASL_ECB_UNSUPPORTED);

    /* -PLUS without binding is nonsense. */
    c.gs2 = "n,,";
    c.client_cb_len = 0;
    r = run_scram(&p, &c);
    assert_int_equal(r.status, TERN_SASL_FAIL);

    /* "y" while -PLUS is on offer: a downgrade. "n" is fine. */
    c.mech = "SCRAM-SHA-256";
    c.gs2 = "y,,";
    r = run_scram(&p, &c);
    assert_int_equal(r.status, TERN_SASL_FAIL);
    assert_int_equal(r.error, TERN_SASL_EDOWNGRADE);
    c.gs2 = "n,,";
    r = run_scram(&p, &c);
    assert_int_equal(r.status, TERN_SASL_SUCCESS);
    /* "p" with the plain mechanism. */
    c.gs2 = "p=tls-exporter,,";
    c.client_cb_len = sizeof exporter;
    r = run_scram(&p, &c);
    assert_int_equal(r.error, TERN_SASL_ECB_UNSUPPORTED);

    /* Without TLS binding data: "y" is honest, -PLUS does not exist. */
    tern_sasl_params q = params();
    c.gs2 = "y,,";
    c.client_cb_len = 0;
    r = run_scram(&q, &c);
    assert_int_equal(r.status, TERN_SASL_SUCCESS);
    assert_null(tern_sasl_new("SCRAM-SHA-256-PLUS", &q));

    /* c= must carry the header the client sent, not another. */
    c.gs2 = "n,,";
    scram_case d = c;
    d.gs2 = "n,,";
    d.client_cb = (const uint8_t *)"x";
    d.client_cb_len = 1;
    r = run_scram(&q, &d);
    assert_int_equal(r.error, TERN_SASL_ECB_MISMATCH);
}

static void test_scram_authzid(void **state)
{
    (void)state;
    tern_scram_keys k = pencil_keys();
    tern_sasl_params p = params();
    scram_case c = {"SCRAM-SHA-256", "n,a=user,", "user", "pencil", NULL, 0, &k};
    tern_sasl_result r = run_scram(&p, &c);
    assert_int_equal(r.status, TERN_SASL_SUCCESS);
    c.gs2 = "n,a=admin,";
    r = run_scram(&p, &c);
    assert_int_equal(r.error, TERN_SASL_EAUTHZ);
    p.allow_proxy = true;
    r = run_scram(&p, &c);
    assert_int_equal(r.status, TERN_SASL_SUCCESS);
    assert_string_equal(r.account, "admin");
    /* A long escaped authzid: the c= header is three times its length. */
    char big[700] = "n,a=";
    for (int i = 0; i < 200; i++)
        strcat(big, "=2C");
    strcat(big, ",");
    c.gs2 = big;
    r = run_scram(&p, &c);
    assert_int_equal(r.status, TERN_SASL_SUCCESS);
    assert_int_equal(strlen(r.account), 200);
    /* Escaped names. */
    tern_sasl *s = tern_sasl_new("SCRAM-SHA-256", &p);
    tern_sasl_result rr;
    step_str(s, "n,a=a=2Cb=3Dc,n=us=3Der=2C,r=abc", &rr);
    assert_int_equal(rr.status, TERN_SASL_NEED_SCRAM_KEYS);
    assert_string_equal(rr.authcid, "us=er,");
    assert_string_equal(rr.authzid, "a,b=c");
    tern_sasl_free(s);
}

static void test_scram_unknown_user(void **state)
{
    (void)state;
    tern_sasl_params p = params();
    char first_salt[64] = "";
    for (int i = 0; i < 3; i++) {
        tern_sasl_result r;
        tern_sasl *s = tern_sasl_new("SCRAM-SHA-256", &p);
        step_str(s, i < 2 ? "n,,n=ghost,r=abcdef" : "n,,n=phantom,r=abcdef", &r);
        assert_int_equal(r.status, TERN_SASL_NEED_SCRAM_KEYS);
        tern_sasl_scram_keys(s, NULL, NULL, &r);
        assert_int_equal(r.status, TERN_SASL_CHALLENGE);
        char sf[256];
        memcpy(sf, r.data, r.data_len);
        sf[r.data_len] = '\0';
        /* Looks like a real one: a 24-char nonce suffix, 16-byte salt. */
        const char *salt = strstr(sf, ",s=");
        assert_non_null(salt);
        assert_int_equal(salt - sf, 2 + 6 + 24);
        assert_non_null(strstr(sf, ",i=4096"));
        char this_salt[64];
        snprintf(this_salt, sizeof this_salt, "%.*s", (int)(strstr(sf, ",i=") - salt - 3),
                 salt + 3);
        assert_int_equal(strlen(this_salt), 24);
        if (i == 0)
            strcpy(first_salt, this_salt);
        else if (i == 1)
            assert_string_equal(this_salt, first_salt);
        else
            assert_string_not_equal(this_salt, first_salt);
        char final[256];
        snprintf(final, sizeof final, "c=biws,r=%.*s,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                 (int)(salt - sf - 2), sf + 2);
        step_str(s, final, &r);
        assert_int_equal(r.status, TERN_SASL_FAIL);
        assert_int_equal(r.error, TERN_SASL_EBADCRED);
        assert_data(&r, "e=invalid-proof");
        tern_sasl_free(s);
    }
    /* Another server secret, another (equally stable) salt. */
    tern_sasl_params q = params();
    q.secret = (const uint8_t *)"another-secret";
    q.secret_len = 14;
    tern_sasl_result r;
    tern_sasl *s = tern_sasl_new("SCRAM-SHA-256", &q);
    step_str(s, "n,,n=ghost,r=abcdef", &r);
    tern_sasl_scram_keys(s, NULL, NULL, &r);
    assert_null(strstr((const char *)r.data, first_salt));
    tern_sasl_free(s);
}

static void test_scram_malformed_first(void **state)
{
    (void)state;
    tern_sasl_params p = params();
    static const struct {
        const char *m;
        tern_sasl_error e;
    } bad[] = {
        {"", TERN_SASL_EMALFORMED},
        {"x,,n=user,r=abc", TERN_SASL_EMALFORMED},
        {"n,n=user,r=abc", TERN_SASL_EMALFORMED},
        {"n,,n=user", TERN_SASL_EMALFORMED},
        {"n,,n=,r=abc", TERN_SASL_EMALFORMED},
        {"n,,n=user,r=", TERN_SASL_EMALFORMED},
        {"n,,n=us=2Xer,r=abc", TERN_SASL_EMALFORMED},
        {"n,,n=user=,r=abc", TERN_SASL_EMALFORMED},
        {"n,,n=user=2,r=abc", TERN_SASL_EMALFORMED},
        {"n,,r=abc,n=user", TERN_SASL_EMALFORMED},
        {"n,,m=ext,n=user,r=abc", TERN_SASL_EEXTENSION},
        {"n,a=,n=user,r=abc", TERN_SASL_EMALFORMED},
        {"n,b=x,n=user,r=abc", TERN_SASL_EMALFORMED},
        {"n,a=x=41,n=user,r=abc", TERN_SASL_EMALFORMED},
        {"p,,n=user,r=abc", TERN_SASL_EMALFORMED},
        {"p=,,n=user,r=abc", TERN_SASL_EMALFORMED},
        {"p=tls_x,,n=user,r=abc", TERN_SASL_EMALFORMED},
        {"n,,n=user,r=a\x7f", TERN_SASL_EMALFORMED},
        {"n,,n=us\x01r,r=abc", TERN_SASL_EMALFORMED},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tern_sasl_result r;
        tern_sasl *s = tern_sasl_new("SCRAM-SHA-256", &p);
        step_str(s, bad[i].m, &r);
        if (r.status != TERN_SASL_FAIL || r.error != bad[i].e)
            fail_msg("case %zu \"%s\": status %d error %d", i, bad[i].m, r.status, r.error);
        tern_sasl_free(s);
    }
    /* Over-long username; extensions after the nonce are fine. */
    char big[600];
    memset(big, 0, sizeof big);
    strcpy(big, "n,,n=");
    memset(big + 5, 'u', 300);
    strcat(big, ",r=abc");
    tern_sasl_result r;
    tern_sasl *s = tern_sasl_new("SCRAM-SHA-256", &p);
    step_str(s, big, &r);
    assert_int_equal(r.error, TERN_SASL_ETOOLONG);
    tern_sasl_free(s);
    s = tern_sasl_new("SCRAM-SHA-256", &p);
    step_str(s, "n,,n=user,r=abc,x=future", &r);
    assert_int_equal(r.status, TERN_SASL_NEED_SCRAM_KEYS);
    tern_sasl_free(s);

    /* Every prefix: valid only once "r=" has at least one nonce char. */
    static const char msg[] = "n,a=user,n=user,r=rOprNGfwEbeRWgbNEkqO";
    size_t valid_from = strlen("n,a=user,n=user,r=") + 1;
    for (size_t n = 0; n < sizeof msg - 1; n++) {
        s = tern_sasl_new("SCRAM-SHA-256", &p);
        tern_sasl_step(s, (const uint8_t *)msg, n, &r);
        assert_int_equal(r.status, n >= valid_from ? TERN_SASL_NEED_SCRAM_KEYS : TERN_SASL_FAIL);
        tern_sasl_free(s);
    }
}

/* Runs RFC 7677 up to the server-first, then feeds `final`. */
static tern_sasl_result scram_final(const tern_scram_keys *k, const char *final, size_t len,
                                    const char *nonce_suffix)
{
    tern_sasl_params p = params();
    tern_sasl_result r;
    tern_sasl *s = tern_sasl_new("SCRAM-SHA-256", &p);
    if (nonce_suffix)
        tern_sasl_test_fix(s, nonce_suffix);
    step_str(s, "n,,n=user,r=rOprNGfwEbeRWgbNEkqO", &r);
    tern_sasl_scram_keys(s, k, NULL, &r);
    assert_int_equal(r.status, TERN_SASL_CHALLENGE);
    tern_sasl_step(s, (const uint8_t *)final, len, &r);
    tern_sasl_result out = r;
    out.data = NULL;
    out.authcid = out.authzid = out.account = NULL;
    tern_sasl_free(s);
    return out;
}

static void test_scram_malformed_final(void **state)
{
    (void)state;
    tern_scram_keys k = pencil_keys();
#define N "rOprNGfwEbeRWgbNEkqO" RFC7677_SNONCE
#define PROOF "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    static const char good[] = "c=biws,r=" N ",p=" PROOF;
    tern_sasl_result r = scram_final(&k, good, sizeof good - 1, RFC7677_SNONCE);
    assert_int_equal(r.status, TERN_SASL_CHALLENGE);

    static const struct {
        const char *m;
        tern_sasl_error e;
    } bad[] = {
        {"", TERN_SASL_EMALFORMED},
        {"c=biws,r=" N, TERN_SASL_EMALFORMED},
        {"r=" N ",p=" PROOF, TERN_SASL_EMALFORMED},
        {"c=biws,r=rOprNGfwEbeRWgbNEkqO,p=" PROOF, TERN_SASL_EMALFORMED},
        {"c=biws,r=" N "x,p=" PROOF, TERN_SASL_EMALFORMED},
        {"c=biws,p=" PROOF, TERN_SASL_EMALFORMED},
        {"c=eSws,r=" N ",p=" PROOF, TERN_SASL_ECB_MISMATCH},
        {"c=biw,r=" N ",p=" PROOF, TERN_SASL_ECB_MISMATCH},
        {"c=biws,r=" N ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ", TERN_SASL_EMALFORMED},
        {"c=biws,r=" N ",p=dHzb", TERN_SASL_EMALFORMED},
        {"c=biws,r=" N ",p=eHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=", TERN_SASL_EBADCRED},
        {"c=biws,r=" N ",p=" PROOF ",x=1", TERN_SASL_EMALFORMED},
        /* An extension before the proof is signed too: proof no longer fits. */
        {"c=biws,r=" N ",x=1,p=" PROOF, TERN_SASL_EBADCRED},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = scram_final(&k, bad[i].m, strlen(bad[i].m), RFC7677_SNONCE);
        if (r.status != TERN_SASL_FAIL || r.error != bad[i].e)
            fail_msg("case %zu \"%s\": status %d error %d", i, bad[i].m, r.status, r.error);
    }
    /* Every strict prefix of the client-final fails. */
    for (size_t n = 0; n < sizeof good - 1; n++) {
        r = scram_final(&k, good, n, RFC7677_SNONCE);
        assert_int_equal(r.status, TERN_SASL_FAIL);
    }
    /* Replay: the same client-final against a fresh server nonce. */
    r = scram_final(&k, good, sizeof good - 1, NULL);
    assert_int_equal(r.status, TERN_SASL_FAIL);
    assert_int_equal(r.error, TERN_SASL_EMALFORMED);
    /* A non-empty answer to the server-final. */
    tern_sasl_params p = params();
    tern_sasl *s = tern_sasl_new("SCRAM-SHA-256", &p);
    tern_sasl_test_fix(s, RFC7677_SNONCE);
    step_str(s, "n,,n=user,r=rOprNGfwEbeRWgbNEkqO", &r);
    tern_sasl_scram_keys(s, &k, NULL, &r);
    step_str(s, good, &r);
    assert_int_equal(r.status, TERN_SASL_CHALLENGE);
    STEP(s, "x", &r);
    assert_int_equal(r.status, TERN_SASL_FAIL);
    tern_sasl_free(s);
#undef N
#undef PROOF
}

/* ---- OAUTHBEARER, XOAUTH2 ------------------------------------------------- */

#define RFC7628_TOKEN "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="

static void test_oauthbearer_rfc7628(void **state)
{
    (void)state;
    tern_sasl_params p = params();
    p.oauth_scope = "example_scope";
    static const char imap[] = "n,a=user@example.com,\x01host=server.example.com\x01port=143"
                               "\x01" "auth=Bearer " RFC7628_TOKEN "\x01\x01";
    static const char smtp[] = "n,a=user@example.com,\x01host=server.example.com\x01port=587"
                               "\x01" "auth=Bearer " RFC7628_TOKEN "\x01\x01";
    const char *msgs[] = {imap, smtp};
    for (int i = 0; i < 2; i++) {
        tern_sasl_result r;
        tern_sasl *s = tern_sasl_new("OAUTHBEARER", &p);
        step_str(s, msgs[i], &r);
        assert_int_equal(r.status, TERN_SASL_NEED_VERIFY_TOKEN);
        assert_string_equal(r.authzid, "user@example.com");
        assert_string_equal(r.token, RFC7628_TOKEN);
        tern_sasl_verified(s, true, NULL, &r);
        assert_int_equal(r.status, TERN_SASL_SUCCESS);
        assert_string_equal(r.account, "user@example.com");
        tern_sasl_free(s);
    }
    /* 4.3: a bad token gets the error JSON, then a dummy %x01, then fails. */
    tern_sasl_result r;
    tern_sasl *s = tern_sasl_new("OAUTHBEARER", &p);
    tern_sasl_step(s, NULL, 0, &r);
    assert_int_equal(r.status, TERN_SASL_CHALLENGE);
    assert_int_equal(r.data_len, 0);
    step_str(s, imap, &r);
    assert_int_equal(r.status, TERN_SASL_NEED_VERIFY_TOKEN);
    tern_sasl_verified(s, false, NULL, &r);
    assert_int_equal(r.status, TERN_SASL_CHALLENGE);
    assert_data(&r, "{\"status\":\"invalid_token\",\"schemes\":\"bearer\",\"scope\":\"example_scope\"}");
    STEP(s, "\x01", &r);
    assert_int_equal(r.status, TERN_SASL_FAIL);
    assert_int_equal(r.error, TERN_SASL_EBADCRED);
    tern_sasl_free(s);

    /* No authzid: the token alone says who. */
    s = tern_sasl_new("OAUTHBEARER", &p);
    step_str(s, "y,,\x01" "auth=bearer abc.def-ghi_~+/==\x01\x01", &r);
    assert_int_equal(r.status, TERN_SASL_NEED_VERIFY_TOKEN);
    assert_string_equal(r.authzid, "");
    assert_string_equal(r.token, "abc.def-ghi_~+/==");
    tern_sasl_verified(s, true, "alice", &r);
    assert_string_equal(r.account, "alice");
    tern_sasl_free(s);
}

static void test_oauthbearer_malformed(void **state)
{
    (void)state;
    tern_sasl_params p = params();
    static const struct {
        const char *m;
        tern_sasl_error e;
    } bad[] = {
        {"", TERN_SASL_EMALFORMED},
        {"n,,auth=Bearer x\x01\x01", TERN_SASL_EMALFORMED},
        {"n,,\x01" "auth=Bearer x\x01", TERN_SASL_EMALFORMED},
        {"n,,\x01" "auth=Bearer x", TERN_SASL_EMALFORMED},
        {"n,,\x01\x01", TERN_SASL_EMALFORMED},
        {"n,,\x01host=x\x01\x01", TERN_SASL_EMALFORMED},
        {"n,,\x01" "auth=Basic dXNlcjpwdw==\x01\x01", TERN_SASL_EMALFORMED},
        {"n,,\x01" "auth=Bearer \x01\x01", TERN_SASL_EMALFORMED},
        {"n,,\x01" "auth=Bearer a b\x01\x01", TERN_SASL_EMALFORMED},
        {"n,,\x01" "auth=Bearer a=b\x01\x01", TERN_SASL_EMALFORMED},
        {"n,,\x01" "auth=Bearer x\x01" "auth=Bearer y\x01\x01", TERN_SASL_EMALFORMED},
        {"n,,\x01" "auth=Bearer x\x01\x01\x01", TERN_SASL_EMALFORMED},
        {"n,,\x01" "au1h=x\x01" "auth=Bearer x\x01\x01", TERN_SASL_EMALFORMED},
        {"n,,\x01" "host=a\x7f\x01" "auth=Bearer x\x01\x01", TERN_SASL_EMALFORMED},
        {"p=tls-unique,,\x01" "auth=Bearer x\x01\x01", TERN_SASL_ECB_UNSUPPORTED},
        {"n,a=us=ZZ,\x01" "auth=Bearer x\x01\x01", TERN_SASL_EMALFORMED},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tern_sasl_result r;
        tern_sasl *s = tern_sasl_new("OAUTHBEARER", &p);
        step_str(s, bad[i].m, &r);
        if (r.status != TERN_SASL_FAIL || r.error != bad[i].e)
            fail_msg("case %zu: status %d error %d", i, r.status, r.error);
        tern_sasl_free(s);
    }
    static const char msg[] = "n,a=user@example.com,\x01host=server.example.com\x01port=143"
                              "\x01" "auth=Bearer " RFC7628_TOKEN "\x01\x01";
    for (size_t n = 0; n < sizeof msg - 1; n++) {
        tern_sasl_result r;
        tern_sasl *s = tern_sasl_new("OAUTHBEARER", &p);
        tern_sasl_step(s, (const uint8_t *)msg, n, &r);
        assert_int_equal(r.status, TERN_SASL_FAIL);
        tern_sasl_free(s);
    }
}

static void test_xoauth2(void **state)
{
    (void)state;
    tern_sasl_params p = params();
    p.oauth_scope = "https://mail.example.test/";
    static const char msg[] = "user=someuser@example.com\x01"
                              "auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg\x01\x01";
    tern_sasl_result r;
    tern_sasl *s = tern_sasl_new("XOAUTH2", &p);
    step_str(s, msg, &r);
    assert_int_equal(r.status, TERN_SASL_NEED_VERIFY_TOKEN);
    assert_string_equal(r.authzid, "someuser@example.com");
    assert_string_equal(r.token, "ya29.vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg");
    tern_sasl_verified(s, true, NULL, &r);
    assert_int_equal(r.status, TERN_SASL_SUCCESS);
    assert_string_equal(r.account, "someuser@example.com");
    tern_sasl_free(s);

    s = tern_sasl_new("XOAUTH2", &p);
    step_str(s, msg, &r);
    tern_sasl_verified(s, false, NULL, &r);
    assert_int_equal(r.status, TERN_SASL_CHALLENGE);
    assert_data(&r, "{\"status\":\"401\",\"schemes\":\"bearer\",\"scope\":\"https://mail.example.test/\"}");
    STEP(s, "", &r);
    assert_int_equal(r.status, TERN_SASL_FAIL);
    assert_int_equal(r.error, TERN_SASL_EBADCRED);
    tern_sasl_free(s);

    EXPECT_FAIL("XOAUTH2", &p, "auth=Bearer x\x01\x01", TERN_SASL_EMALFORMED);
    EXPECT_FAIL("XOAUTH2", &p, "user=\x01" "auth=Bearer x\x01\x01", TERN_SASL_EMALFORMED);
    EXPECT_FAIL("XOAUTH2", &p, "user=a\x01user=b\x01" "auth=Bearer x\x01\x01", TERN_SASL_EMALFORMED);
    EXPECT_FAIL("XOAUTH2", &p, "user=a\x01\x01", TERN_SASL_EMALFORMED);
    for (size_t n = 0; n < sizeof msg - 1; n++) {
        s = tern_sasl_new("XOAUTH2", &p);
        tern_sasl_step(s, (const uint8_t *)msg, n, &r);
        assert_int_equal(r.status, TERN_SASL_FAIL);
        tern_sasl_free(s);
    }
}

/* ---- EXTERNAL ------------------------------------------------------------- */

static void test_external(void **state)
{
    (void)state;
    tern_sasl_params p = params();
    p.external_available = true;
    tern_sasl_result r;
    tern_sasl *s = tern_sasl_new("EXTERNAL", &p);
    STEP(s, "", &r);
    assert_int_equal(r.status, TERN_SASL_NEED_EXTERNAL);
    assert_string_equal(r.authzid, "");
    tern_sasl_verified(s, true, "cert-user", &r);
    assert_int_equal(r.status, TERN_SASL_SUCCESS);
    assert_string_equal(r.account, "cert-user");
    tern_sasl_free(s);

    s = tern_sasl_new("EXTERNAL", &p);
    tern_sasl_step(s, NULL, 0, &r);
    assert_int_equal(r.status, TERN_SASL_CHALLENGE);
    STEP(s, "admin", &r);
    assert_int_equal(r.status, TERN_SASL_NEED_EXTERNAL);
    assert_string_equal(r.authzid, "admin");
    tern_sasl_verified(s, false, NULL, &r);
    assert_int_equal(r.error, TERN_SASL_EBADCRED);
    tern_sasl_free(s);

    EXPECT_FAIL("EXTERNAL", &p, "ad\0min", TERN_SASL_EMALFORMED);
    p.external_available = false;
    EXPECT_FAIL("EXTERNAL", &p, "", TERN_SASL_EBADCRED);
}

/* ---- session, list -------------------------------------------------------- */

static void test_session_rules(void **state)
{
    (void)state;
    tern_sasl_params p = params();
    assert_null(tern_sasl_new("DIGEST-MD5", &p));
    assert_null(tern_sasl_new(NULL, &p));
    assert_true(tern_sasl_mech_known("scram-sha-256"));
    assert_false(tern_sasl_mech_known("GSSAPI"));
    tern_sasl_result r;
    tern_sasl *s = tern_sasl_new("PLAIN", &p);
    tern_sasl_verified(s, true, NULL, &r);
    assert_int_equal(r.error, TERN_SASL_ESTATE);
    tern_sasl_free(s);
    s = tern_sasl_new("SCRAM-SHA-256", &p);
    tern_sasl_cram_secret(s, (const uint8_t *)"x", 1, NULL, &r);
    assert_int_equal(r.error, TERN_SASL_ESTATE);
    tern_sasl_free(s);
    s = tern_sasl_new("SCRAM-SHA-256", &p);
    step_str(s, "n,,n=user,r=abc", &r);
    tern_sasl_abort(s, &r);
    assert_int_equal(r.error, TERN_SASL_EABORTED);
    tern_sasl_scram_keys(s, NULL, NULL, &r);
    assert_int_equal(r.error, TERN_SASL_ESTATE);
    tern_sasl_free(s);
    tern_sasl_free(NULL);
    assert_string_equal(tern_sasl_error_name(TERN_SASL_EDOWNGRADE), "channel_binding_downgrade");
}

static void test_mechanisms(void **state)
{
    (void)state;
    char buf[256];
    unsigned all = TERN_SASL_CAP_PASSWORD | TERN_SASL_CAP_SCRAM | TERN_SASL_CAP_CRAM |
                   TERN_SASL_CAP_TOKEN | TERN_SASL_CAP_EXTERNAL;
    assert_true(tern_sasl_mechanisms(all, true, false, true, buf, sizeof buf) > 0);
    assert_string_equal(buf, "SCRAM-SHA-256-PLUS SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN "
                             "OAUTHBEARER XOAUTH2 EXTERNAL");
    tern_sasl_mechanisms(all, true, false, false, buf, sizeof buf);
    assert_null(strstr(buf, "PLUS"));
    tern_sasl_mechanisms(all, false, false, false, buf, sizeof buf);
    assert_string_equal(buf, "SCRAM-SHA-256 CRAM-MD5");
    tern_sasl_mechanisms(all, false, true, false, buf, sizeof buf);
    assert_string_equal(buf, "SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN OAUTHBEARER XOAUTH2");
    tern_sasl_mechanisms(TERN_SASL_CAP_PASSWORD, true, false, true, buf, sizeof buf);
    assert_string_equal(buf, "PLAIN LOGIN");
    assert_int_equal(tern_sasl_mechanisms(0, true, true, true, buf, sizeof buf), 0);
    assert_string_equal(buf, "");
    assert_int_equal(tern_sasl_mechanisms(all, true, false, true, buf, 20), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base64_vectors),
        cmocka_unit_test(test_base64_strict),
        cmocka_unit_test(test_decode_response),
        cmocka_unit_test(test_plain_rfc4616),
        cmocka_unit_test(test_plain_no_initial_response),
        cmocka_unit_test(test_plain_malformed),
        cmocka_unit_test(test_login),
        cmocka_unit_test(test_cram_rfc2195),
        cmocka_unit_test(test_cram_malformed),
        cmocka_unit_test(test_scram_rfc7677),
        cmocka_unit_test(test_scram_keys_text),
        cmocka_unit_test(test_scram_channel_binding),
        cmocka_unit_test(test_scram_authzid),
        cmocka_unit_test(test_scram_unknown_user),
        cmocka_unit_test(test_scram_malformed_first),
        cmocka_unit_test(test_scram_malformed_final),
        cmocka_unit_test(test_oauthbearer_rfc7628),
        cmocka_unit_test(test_oauthbearer_malformed),
        cmocka_unit_test(test_xoauth2),
        cmocka_unit_test(test_external),
        cmocka_unit_test(test_session_rules),
        cmocka_unit_test(test_mechanisms),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
