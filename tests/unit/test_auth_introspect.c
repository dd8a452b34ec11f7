/* Unit tests of auth/oauth2/introspect.c and its config: judging RFC 7662
 * answers at a fixed clock, the answer cache (TTLs capped by exp, negative
 * entries, expiry), the auth_oauth2.introspection keys and their
 * validation, and that without an HTTP client a token needing
 * introspection is a temporary failure, never a login. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "auth/auth.h"
#include "auth/oauth2/introspect.h"
#include "conf/config.h"

#define NOW 1700000000

static tern_introspect *make(const char *issuer, const char *audience, const char *claim)
{
    tern_introspect_params p = {
        .url = "https://idp.example.com/introspect",
        .client_id = "tern",
        .client_secret = "secret",
        .account_claim = claim,
        .issuer = issuer,
        .audience = audience,
        .leeway_s = 60,
        .timeout_ms = 1000,
        .cache_ttl_ms = 300000,
        .negative_ttl_ms = 30000,
    };
    char *err = NULL;
    tern_introspect *in = tern_introspect_new(&p, &err);
    if (in == NULL)
        fail_msg("tern_introspect_new: %s", err);
    return in;
}

static tern_arena judge_arena; /* test_judge's accounts */

static int judge(const tern_introspect *in, const char *body, char **acct, int64_t *exp)
{
    char why[256] = "";
    int rc = tern_introspect_judge(in, body, strlen(body), NOW, &judge_arena, acct, exp, why,
                                   sizeof(why));
    if (rc != TERN_AUTH_OK)
        assert_true(why[0] != '\0');
    return rc;
}

static void test_judge(void **state)
{
    (void)state;
    tern_arena_init(&judge_arena, 1024);
    tern_introspect *in = make(NULL, NULL, NULL);
    char *acct;
    int64_t exp;
    assert_int_equal(judge(in, "{\"active\":true,\"username\":\"alice@example.test\","
                               "\"exp\":1700000600}", &acct, &exp), TERN_AUTH_OK);
    assert_string_equal(acct, "alice@example.test");
    assert_int_equal(exp, 1700000600);
    assert_int_equal(judge(in, "{\"active\":true,\"username\":\"bob\"}", &acct, &exp),
                     TERN_AUTH_OK);
    assert_int_equal(exp, 0);
    static const struct {
        const char *body;
        int want;
    } cases[] = {
        {"{\"active\":false}", TERN_AUTH_EFAIL},
        {"{\"active\":false,\"username\":\"alice\"}", TERN_AUTH_EFAIL},
        {"{\"active\":\"true\",\"username\":\"alice\"}", TERN_AUTH_ETEMP},
        {"{\"username\":\"alice\"}", TERN_AUTH_ETEMP},
        {"[true]", TERN_AUTH_ETEMP},
        {"not json", TERN_AUTH_ETEMP},
        {"{\"active\":true,\"active\":true,\"username\":\"a\"}", TERN_AUTH_ETEMP},
        {"{\"active\":true}", TERN_AUTH_EFAIL},                     /* no account */
        {"{\"active\":true,\"username\":\"\"}", TERN_AUTH_EFAIL},
        {"{\"active\":true,\"username\":7}", TERN_AUTH_EFAIL},
        {"{\"active\":true,\"username\":\"a\",\"exp\":1699990000}", TERN_AUTH_EFAIL},
        {"{\"active\":true,\"username\":\"a\",\"exp\":1699999970}", TERN_AUTH_OK}, /* leeway */
        {"{\"active\":true,\"username\":\"a\",\"exp\":\"soon\"}", TERN_AUTH_EFAIL},
        {"{\"active\":true,\"username\":\"a\",\"nbf\":1700000500}", TERN_AUTH_EFAIL},
        {"{\"active\":true,\"username\":\"a\",\"nbf\":1700000030}", TERN_AUTH_OK},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc = judge(in, cases[i].body, &acct, &exp);
        if (rc != cases[i].want)
            fail_msg("case %zu (%s): %d, want %d", i, cases[i].body, rc, cases[i].want);
    }
    tern_introspect_free(in);

    /* iss and aud when configured; another claim names the account. */
    in = make("https://idp.example.com", "tern-mail", "sub");
    assert_int_equal(judge(in, "{\"active\":true,\"sub\":\"carol@example.test\",\"iss\":"
                               "\"https://idp.example.com\",\"aud\":[\"x\",\"tern-mail\"]}",
                           &acct, &exp), TERN_AUTH_OK);
    assert_string_equal(acct, "carol@example.test");
    assert_int_equal(judge(in, "{\"active\":true,\"sub\":\"c\",\"iss\":\"https://idp.example.com\","
                               "\"aud\":\"tern-mail\"}", &acct, &exp), TERN_AUTH_OK);
    assert_int_equal(judge(in, "{\"active\":true,\"sub\":\"c\",\"aud\":\"tern-mail\"}", &acct,
                           &exp), TERN_AUTH_EFAIL);
    assert_int_equal(judge(in, "{\"active\":true,\"sub\":\"c\",\"iss\":\"https://evil.example\","
                               "\"aud\":\"tern-mail\"}", &acct, &exp), TERN_AUTH_EFAIL);
    assert_int_equal(judge(in, "{\"active\":true,\"sub\":\"c\",\"iss\":\"https://idp.example.com\","
                               "\"aud\":[\"other\"]}", &acct, &exp), TERN_AUTH_EFAIL);
    assert_int_equal(judge(in, "{\"active\":true,\"username\":\"c\",\"iss\":"
                               "\"https://idp.example.com\",\"aud\":\"tern-mail\"}", &acct, &exp),
                     TERN_AUTH_EFAIL); /* the configured claim is sub */
    tern_introspect_free(in);
    tern_arena_free(&judge_arena);
}

static void test_cache(void **state)
{
    (void)state;
    tern_introspect *in = make(NULL, NULL, NULL);
    tern_arena a;
    tern_arena_init(&a, 512);
    char why[128];
    int st;
    char *acct;
    const char *tok = "opaque-token-1";
    uint64_t t0 = 1000000;
    assert_int_equal(tern_introspect_cached(in, tok, strlen(tok), t0, &a, &st, &acct, why,
                                            sizeof(why)), 0);
    /* exp 100 s away: kept 100 s, not the 300 s of cache_ttl. */
    tern_introspect_remember(in, tok, strlen(tok), "alice@example.test", NOW + 100, NOW, t0);
    assert_int_equal(tern_introspect_cached(in, tok, strlen(tok), t0 + 99000, &a, &st, &acct,
                                            why, sizeof(why)), 1);
    assert_int_equal(st, TERN_AUTH_OK);
    assert_string_equal(acct, "alice@example.test");
    assert_int_equal(tern_introspect_cached(in, tok, strlen(tok), t0 + 100001, &a, &st, &acct,
                                            why, sizeof(why)), 0);
    /* A prefix or another token is another entry. */
    assert_int_equal(tern_introspect_cached(in, tok, strlen(tok) - 1, t0, &a, &st, &acct, why,
                                            sizeof(why)), 0);
    /* No exp: cache_ttl. */
    const char *tok2 = "opaque-token-2";
    tern_introspect_remember(in, tok2, strlen(tok2), "bob@example.test", 0, NOW, t0);
    assert_int_equal(tern_introspect_cached(in, tok2, strlen(tok2), t0 + 299000, &a, &st, &acct,
                                            why, sizeof(why)), 1);
    assert_int_equal(tern_introspect_cached(in, tok2, strlen(tok2), t0 + 300001, &a, &st, &acct,
                                            why, sizeof(why)), 0);
    /* Already expired: not cached at all. */
    const char *tok3 = "opaque-token-3";
    tern_introspect_remember(in, tok3, strlen(tok3), "bob@example.test", NOW - 5, NOW, t0);
    assert_int_equal(tern_introspect_cached(in, tok3, strlen(tok3), t0, &a, &st, &acct, why,
                                            sizeof(why)), 0);
    /* Negative: 30 s, EFAIL. */
    const char *tok4 = "revoked";
    tern_introspect_remember(in, tok4, strlen(tok4), NULL, 0, NOW, t0);
    assert_int_equal(tern_introspect_cached(in, tok4, strlen(tok4), t0 + 29000, &a, &st, &acct,
                                            why, sizeof(why)), 1);
    assert_int_equal(st, TERN_AUTH_EFAIL);
    assert_null(acct);
    assert_int_equal(tern_introspect_cached(in, tok4, strlen(tok4), t0 + 30001, &a, &st, &acct,
                                            why, sizeof(why)), 0);
    assert_int_equal(tern_introspect_requests(in), 0);
    tern_arena_free(&a);
    tern_introspect_free(in);
}

static tern_config *load(const char *intro, const char *extra, tern_config_errors *errs)
{
    char yaml[2048];
    snprintf(yaml, sizeof(yaml),
             "listeners:\n  - name: imap\n    protocol: imap\n    port: 1143\n"
             "    allow_plaintext_auth: true\n"
             "auth:\n  backends: [oauth2]\n"
             "auth_oauth2:\n%s  introspection:\n%s",
             extra, intro);
    tern_config_errors_init(errs);
    return tern_config_load_string(yaml, strlen(yaml), "test.yaml", errs);
}

static void test_config(void **state)
{
    (void)state;
    tern_config_errors errs;
    tern_config *cfg = load("    url: https://idp.example.com/introspect\n"
                            "    client_id: tern\n    client_secret: s3cret\n", "", &errs);
    for (size_t i = 0; cfg == NULL && i < errs.n; i++)
        print_message("config: %s\n", errs.items[i]);
    assert_non_null(cfg);
    const struct tern_auth_introspection_conf *ic = &cfg->auth_oauth2.introspection;
    assert_true(ic->present);
    assert_int_equal(ic->timeout_ms, 10000);
    assert_int_equal(ic->cache_ttl_ms, 300000);
    assert_int_equal(ic->negative_cache_ttl_ms, 30000);
    assert_string_equal(ic->account_claim, "username");
    assert_false(ic->always);
    assert_null(cfg->auth_oauth2.jwks_file);
    tern_config_errors_free(&errs);

    /* Without an HTTP client (this test program has none), a token that
     * needs introspection is a temporary failure, never a login. */
    tern_auth_set_http(NULL);
    char *err = NULL;
    tern_auth *a = tern_auth_new(cfg, NULL, &err);
    if (a == NULL)
        fail_msg("tern_auth_new: %s", err);
    assert_int_equal(tern_auth_capabilities(a), TERN_AUTH_CAP_TOKEN);
    tern_auth_req *r = tern_auth_req_new(TERN_AUTH_VERIFY_TOKEN, NULL, NULL);
    r->in.service = "imap";
    r->in.user = "";
    r->in.token = "opaque";
    r->in.token_len = 6;
    assert_int_equal(tern_auth_run_sync(a, r), TERN_AUTH_ETEMP);
    assert_non_null(strstr(r->error, "HTTP client"));
    assert_null(r->out.account);
    tern_auth_req_free(r);
    tern_auth_unref(a);
    tern_config_unref(cfg);

    /* http:// to a loopback host is allowed (a local token service). */
    cfg = load("    url: http://127.0.0.1:8080/i\n    client_id: tern\n    client_secret: x\n"
               "    timeout: 500ms\n    cache_ttl: 0s\n    account_claim: sub\n", "", &errs);
    assert_non_null(cfg);
    assert_int_equal(cfg->auth_oauth2.introspection.cache_ttl_ms, 0);
    tern_config_errors_free(&errs);
    tern_config_unref(cfg);

    static const char *const bad[][3] = {
        {"    url: http://idp.example.com/i\n    client_id: t\n    client_secret: s\n", "",
         "must be https://"},
        {"    url: http://10.0.0.1/i\n    client_id: t\n    client_secret: s\n", "",
         "must be https://"},
        {"    client_id: t\n    client_secret: s\n", "", "introspection.url: required"},
        {"    url: https://idp.example.com/i\n    client_secret: s\n", "",
         "client_id: required"},
        {"    url: https://idp.example.com/i\n    client_id: t\n", "",
         "needs exactly one of client_secret and client_secret_file"},
        {"    url: https://idp.example.com/i\n    client_id: t\n    client_secret: s\n"
         "    always: true\n", "", "only meaningful with jwks_file"},
        {"    url: https://idp.example.com/i\n    client_id: t\n    client_secret: s\n"
         "    timeout: 2h\n", "", "timeout"},
        {"    url: https://idp.example.com/i\n    client_id: t\n    client_secret: s\n"
         "    color: red\n", "", "color"},
        {"    url: \"https://idp.example.com:99999/\"\n    client_id: t\n    client_secret: s\n",
         "", "bad port"},
        /* With jwks_file, issuer and audience are still required. */
        {"    url: https://idp.example.com/i\n    client_id: t\n    client_secret: s\n",
         "  jwks_file: /nonexistent/jwks.json\n", "auth_oauth2.issuer"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cfg = load(bad[i][0], bad[i][1], &errs);
        assert_null(cfg);
        bool found = false;
        for (size_t k = 0; k < errs.n; k++) {
            found |= strstr(errs.items[k], bad[i][2]) != NULL;
            assert_null(strstr(errs.items[k], "client_secret: s")); /* never the secret */
        }
        if (!found) {
            for (size_t k = 0; k < errs.n; k++)
                print_message("  error: %s\n", errs.items[k]);
            fail_msg("case %zu: no error naming %s", i, bad[i][2]);
        }
        tern_config_errors_free(&errs);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_judge),
        cmocka_unit_test(test_cache),
        cmocka_unit_test(test_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
