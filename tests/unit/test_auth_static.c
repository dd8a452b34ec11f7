/* test_auth_static: CRAM-MD5 from auth/'s stored context through the SASL
 * mechanism (RFC 2195's example), the per-listener `static` backend, and
 * first-login account creation in a local store. Input trusted: the
 * test's own data. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth/auth.h"
#include "auth/hash.h"
#include "auth/sasl/sasl.h"
#include "lib/log.h"
#include "storage/store.h"

#define RFC2195_CHAL "<1896.697170952@postoffice.reston.mci.net>"
#define RFC2195_RESP "tim b913a602c7eda7a495b4e6e7334d3890"

static struct {
    char dir[64];
    tern_config *cfg;
    tern_store *store;
} F;

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static char *write_file(const char *name, const char *text)
{
    char *path = tern_arena_printf(&F.cfg->arena, "%s/%s", F.dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void set_backends(const char *a, const char *b)
{
    F.cfg->auth.backends = tern_arena_alloc(&F.cfg->arena, 2 * sizeof(char *));
    F.cfg->auth.backends[0] = (char *)a;
    F.cfg->auth.backends[1] = (char *)b;
    F.cfg->auth.n_backends = b ? 2 : 1;
}

static int setup(void **state)
{
    (void)state;
    tern_log_configure("error", NULL);
    snprintf(F.dir, sizeof F.dir, "/tmp/tern-astatic-test-XXXXXX");
    if (mkdtemp(F.dir) == NULL)
        return -1;
    tern_config *c = calloc(1, sizeof *c);
    atomic_init(&c->refs, 1);
    tern_arena_init(&c->arena, 4096);
    c->server.state_dir = tern_arena_strdup(&c->arena, F.dir);
    c->storage.backend = TERN_STORAGE_LOCAL;
    c->storage.changes_retention_ms = 30ull * 24 * 3600 * 1000;
    c->local.path = tern_arena_printf(&c->arena, "%s/mail", F.dir);
    c->auth.max_failures = 100;
    c->auth.lockout_ms = 60000;
    c->auth.failure_delay_ms = 0;
    c->auth.max_delay_ms = 0;
    F.cfg = c;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (F.store)
        tern_store_close(F.store);
    F.store = NULL;
    tern_arena_free(&F.cfg->arena);
    free(F.cfg);
    nftw(F.dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static tern_auth *auth_new(tern_store *store)
{
    char *err = NULL;
    tern_auth *a = tern_auth_new(F.cfg, store, &err);
    if (a == NULL)
        fail_msg("tern_auth_new: %s", err);
    return a;
}

static int run(tern_auth *a, tern_auth_op op, const char *listener, const char *user,
               const char *pw, tern_auth_req **r_out)
{
    tern_auth_req *r = tern_auth_req_new(op, NULL, NULL);
    r->in.service = "smtp";
    r->in.user = user;
    r->in.password = pw;
    r->in.password_len = pw ? strlen(pw) : 0;
    r->in.remote_ip = "192.0.2.1";
    r->in.listener = listener;
    int st = tern_auth_run_sync(a, r);
    if (r_out)
        *r_out = r;
    else
        tern_auth_req_free(r);
    return st;
}

/* ---- CRAM-MD5 through the context ----------------------------------------- */

/* One CRAM-MD5 exchange with RFC 2195's challenge and answer, the secret
 * given as the context auth/ hands out. */
static tern_sasl_status cram_with_context(const uint8_t *ctx, const char *resp)
{
    tern_sasl_params p = {.service = "smtp", .hostname = "postoffice.reston.mci.net"};
    tern_sasl *s = tern_sasl_new("CRAM-MD5", &p);
    assert_non_null(s);
    tern_sasl_test_fix(s, RFC2195_CHAL);
    tern_sasl_result r;
    tern_sasl_step(s, NULL, 0, &r);
    assert_int_equal(r.status, TERN_SASL_CHALLENGE);
    assert_memory_equal(r.data, RFC2195_CHAL, strlen(RFC2195_CHAL));
    tern_sasl_step(s, (const uint8_t *)resp, strlen(resp), &r);
    assert_int_equal(r.status, TERN_SASL_NEED_CRAM_SECRET);
    assert_string_equal(r.authcid, "tim");
    tern_sasl_cram_context(s, ctx, NULL, &r);
    tern_sasl_status st = r.status;
    if (st == TERN_SASL_SUCCESS)
        assert_string_equal(r.account, "tim");
    tern_sasl_free(s);
    return st;
}

static void test_cram_context_rfc2195(void **state)
{
    (void)state;
    uint8_t ctx[32], dig[16];
    tern_hash_cram_md5_context("tanstaaftanstaaf", 16, ctx);
    tern_cram_md5_digest(ctx, (const uint8_t *)RFC2195_CHAL, strlen(RFC2195_CHAL), dig);
    char hex[33];
    for (int i = 0; i < 16; i++)
        snprintf(hex + 2 * i, 3, "%02x", dig[i]);
    assert_string_equal(hex, "b913a602c7eda7a495b4e6e7334d3890");
    assert_int_equal(cram_with_context(ctx, RFC2195_RESP), TERN_SASL_SUCCESS);
    assert_int_equal(cram_with_context(ctx, "tim b913a602c7eda7a495b4e6e7334d3891"),
                     TERN_SASL_FAIL);
    assert_int_equal(cram_with_context(NULL, RFC2195_RESP), TERN_SASL_FAIL);
    uint8_t other[32];
    tern_hash_cram_md5_context("tanstaaftanstaaX", 16, other);
    assert_int_equal(cram_with_context(other, RFC2195_RESP), TERN_SASL_FAIL);
}

/* The whole way: a file backend holding tim's secret as {PLAIN} or as
 * Dovecot's {CRAM-MD5} context, GET_SECRET, then the mechanism. */
static void test_cram_end_to_end(void **state)
{
    (void)state;
    uint8_t ctx[32];
    tern_hash_cram_md5_context("tanstaaftanstaaf", 16, ctx);
    char line[256], hex[65];
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", ctx[i]);
    snprintf(line, sizeof line,
             "tim@example.test:{PLAIN}tanstaaftanstaaf\n"
             "tom@example.test:{CRAM-MD5}%s\n",
             hex);
    F.cfg->auth_file.path = write_file("cram", line);
    F.cfg->auth_file.default_domain = "example.test";
    set_backends("file", NULL);
    tern_auth *a = auth_new(NULL);
    assert_true(tern_auth_capabilities(a) & TERN_AUTH_CAP_CRAM_MD5);
    const char *users[] = {"tim", "tom"};
    for (int i = 0; i < 2; i++) {
        tern_auth_req *r;
        assert_int_equal(run(a, TERN_AUTH_GET_SECRET, NULL, users[i], NULL, &r), TERN_AUTH_OK);
        assert_int_equal(cram_with_context(r->out.cram_md5, RFC2195_RESP), TERN_SASL_SUCCESS);
        tern_auth_req_free(r);
    }
    tern_auth_unref(a);
    F.cfg->auth_file.default_domain = NULL;
}

/* ---- listeners[].auth_static --------------------------------------------- */

/* openssl passwd -6 -salt saltsalt secret */
#define SHA512_SECRET "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1"

static tern_config *load(const char *yaml, char **first_error)
{
    tern_config_errors errs;
    tern_config_errors_init(&errs);
    tern_config *c = tern_config_load_string(yaml, strlen(yaml), "test.yaml", &errs);
    if (first_error)
        *first_error = errs.n ? strdup(errs.items[0]) : NULL;
    tern_config_errors_free(&errs);
    return c;
}

#define YAML_HEAD                                                                         \
    "domains: [example.test]\n"                                                           \
    "auth:\n  backends: [file]\n"                                                         \
    "auth_file:\n  path: /dev/null\n"                                                     \
    "listeners:\n"                                                                        \
    "  - {name: ingest, protocol: smtp, port: 2525, allow_plaintext_auth: true,\n"        \
    "     auth_static: {username: feeder, password: \"{SHA512-CRYPT}" SHA512_SECRET "\"}}\n" \
    "  - {name: mx, protocol: smtp, port: 25}\n"                                          \
    "  - {name: plain, protocol: smtp, port: 2526, allow_plaintext_auth: true,\n"         \
    "     auth_static: {username: \"app@example.test\", password: \"{PLAIN}s3cret\"}}\n"

static void test_static_listener(void **state)
{
    (void)state;
    char *err = NULL;
    tern_config *c = load(YAML_HEAD, &err);
    if (c == NULL)
        fail_msg("config: %s", err);
    assert_string_equal(c->listeners[0].auth_static.username, "feeder");
    assert_true(c->listeners[0].auth); /* auth_static turns AUTH on */
    assert_false(c->listeners[1].auth);
    assert_null(c->listeners[1].auth_static.username);
    tern_auth *a = tern_auth_new(c, NULL, &err);
    if (a == NULL)
        fail_msg("tern_auth_new: %s", err);
    tern_auth_req *r;
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "ingest", "feeder", "secret", &r),
                     TERN_AUTH_OK);
    assert_string_equal(r->out.backend, "static");
    assert_string_equal(r->out.account, "feeder");
    tern_auth_req_free(r);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "ingest", "feeder", "Secret", NULL),
                     TERN_AUTH_EFAIL);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "ingest", "nobody", "secret", NULL),
                     TERN_AUTH_EFAIL);
    /* Another listener, or none, does not know the fixed login. */
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "mx", "feeder", "secret", NULL),
                     TERN_AUTH_EFAIL);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, NULL, "feeder", "secret", NULL),
                     TERN_AUTH_EFAIL);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "plain", "feeder", "secret", NULL),
                     TERN_AUTH_EFAIL);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "plain", "app@EXAMPLE.test", "s3cret", &r),
                     TERN_AUTH_OK);
    assert_string_equal(r->out.account, "app@example.test");
    tern_auth_req_free(r);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "ingest", "app@example.test", "s3cret",
                         NULL),
                     TERN_AUTH_EFAIL);
    /* Only logins: it is not an account for the other operations. */
    assert_int_equal(run(a, TERN_AUTH_USER_EXISTS, "ingest", "feeder", NULL, NULL),
                     TERN_AUTH_ENOTFOUND);
    tern_auth_unref(a);
    tern_config_unref(c);
}

static void test_static_validation(void **state)
{
    (void)state;
    static const struct {
        const char *item, *want;
    } bad[] = {
        {"{username: \"\", password: \"{PLAIN}x\"}", "auth_static.username: must not be empty"},
        {"{username: u, password: \"secret\"}", "auth_static.password: is neither"},
        {"{username: u, password: \"{NOPE}x\"}", "unknown scheme"},
        {"{username: u, password: \"{PLAIN}\"}", "empty credential"},
        {"{username: u}", "auth_static.password: required"},
        {"{password: \"{PLAIN}x\"}", "auth_static.username: required"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char yaml[1024], *err = NULL;
        snprintf(yaml, sizeof yaml,
                 "domains: [example.test]\nlisteners:\n"
                 "  - {name: in, protocol: smtp, port: 2525, allow_plaintext_auth: true,\n"
                 "     auth_static: %s}\n",
                 bad[i].item);
        tern_config *c = load(yaml, &err);
        if (c != NULL || err == NULL || strstr(err, bad[i].want) == NULL)
            fail_msg("case %zu: want \"%s\", got \"%s\"", i, bad[i].want, err ? err : "(none)");
        free(err);
    }
    /* Off on purpose: a fixed login that would never be offered. */
    char *err = NULL;
    tern_config *c = load("domains: [example.test]\nlisteners:\n"
                          "  - {name: in, protocol: smtp, port: 2525, auth: false,\n"
                          "     auth_static: {username: u, password: \"{PLAIN}x\"}}\n",
                          &err);
    assert_null(c);
    assert_non_null(strstr(err, "auth is false"));
    free(err);
    /* A shape that validates but that crypt(3) refuses fails the snapshot. */
    c = load("domains: [example.test]\nlisteners:\n"
             "  - {name: in, protocol: smtp, port: 2525, allow_plaintext_auth: true,\n"
             "     auth_static: {username: u, password: \"{SHA512-CRYPT}$6$\"}}\n",
             &err);
    if (c == NULL)
        fail_msg("config: %s", err);
    c->auth.n_backends = 0; /* no store here: the default internal would need one */
    static char *fb[] = {"file"};
    c->auth.backends = fb;
    c->auth.n_backends = 1;
    c->auth_file.path = write_file("empty", "");
    tern_auth *a = tern_auth_new(c, NULL, &err);
    assert_null(a);
    assert_non_null(strstr(err, "listeners \"in\": auth_static.password"));
    free(err);
    tern_config_unref(c);
}

/* ---- first login creates the store account --------------------------------- */

static int store_status(tern_store_op op, const char *account, size_t *n_mailboxes)
{
    tern_store_req *r = tern_store_req_new(op, NULL, NULL);
    r->in.account = account;
    int st = tern_store_run_sync(F.store, r);
    if (n_mailboxes)
        *n_mailboxes = st == TERN_STORE_OK ? r->out.n_mailboxes : 0;
    tern_store_req_free(r);
    return st;
}

static void test_first_login_creates_account(void **state)
{
    (void)state;
    char *err = NULL;
    assert_int_equal(tern_store_open(F.cfg, &F.store, &err), 0);
    tern_store_req *sr = tern_store_req_new(TERN_STORE_DOMAIN_ADD, NULL, NULL);
    sr->in.domain = "example.test";
    assert_int_equal(tern_store_run_sync(F.store, sr), TERN_STORE_OK);
    tern_store_req_free(sr);

    F.cfg->auth_file.path = write_file("users",
                                       "fred@example.test:{PLAIN}pw\n"
                                       "stranger@elsewhere.test:{PLAIN}pw\n");
    set_backends("file", NULL);
    tern_auth *a = auth_new(F.store);
    assert_int_equal(store_status(TERN_STORE_ACCOUNT_GET, "fred@example.test", NULL),
                     TERN_STORE_ENOTFOUND);
    /* A failed login creates nothing. */
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, NULL, "fred@example.test", "no", NULL),
                     TERN_AUTH_EFAIL);
    assert_int_equal(store_status(TERN_STORE_ACCOUNT_GET, "fred@example.test", NULL),
                     TERN_STORE_ENOTFOUND);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, NULL, "fred@example.test", "pw", NULL),
                     TERN_AUTH_OK);
    /* The account is there, with its default mailboxes, when the callback runs. */
    size_t n = 0;
    assert_int_equal(store_status(TERN_STORE_ACCOUNT_GET, "fred@example.test", NULL),
                     TERN_STORE_OK);
    assert_int_equal(store_status(TERN_STORE_MAILBOX_LIST, "fred@example.test", &n),
                     TERN_STORE_OK);
    assert_true(n >= 1);
    /* The next login finds it (EEXISTS, ignored). */
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, NULL, "fred@example.test", "pw", NULL),
                     TERN_AUTH_OK);
    /* Not a domain of the store: the login works, no account is made. */
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, NULL, "stranger@elsewhere.test", "pw",
                         NULL),
                     TERN_AUTH_OK);
    assert_int_equal(store_status(TERN_STORE_ACCOUNT_GET, "stranger@elsewhere.test", NULL),
                     TERN_STORE_ENOTFOUND);
    tern_auth_unref(a);

    /* The store's own accounts and a listener's fixed login are left alone. */
    F.cfg->listeners = tern_arena_alloc(&F.cfg->arena, sizeof(tern_listener_conf));
    memset(F.cfg->listeners, 0, sizeof(tern_listener_conf));
    F.cfg->listeners[0].name = "ingest";
    F.cfg->listeners[0].auth_static.username = "robot@example.test";
    F.cfg->listeners[0].auth_static.password = "{PLAIN}beep";
    F.cfg->n_listeners = 1;
    a = auth_new(F.store);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "ingest", "robot@example.test", "beep",
                         NULL),
                     TERN_AUTH_OK);
    assert_int_equal(store_status(TERN_STORE_ACCOUNT_GET, "robot@example.test", NULL),
                     TERN_STORE_ENOTFOUND);
    tern_auth_unref(a);
    F.cfg->n_listeners = 0;
}

/* Requests in flight on one client, some of them creating accounts, when
 * the client closes: every callback still runs. */
static int async_left;
static void async_cb(tern_auth_req *r)
{
    assert_int_equal(r->status, TERN_AUTH_OK);
    async_left--;
    tern_auth_req_free(r);
}

static void test_first_login_async(void **state)
{
    (void)state;
    char *err = NULL;
    assert_int_equal(tern_store_open(F.cfg, &F.store, &err), 0);
    tern_store_req *sr = tern_store_req_new(TERN_STORE_DOMAIN_ADD, NULL, NULL);
    sr->in.domain = "example.test";
    assert_int_equal(tern_store_run_sync(F.store, sr), TERN_STORE_OK);
    tern_store_req_free(sr);
    F.cfg->auth_file.path = write_file("users", "a@example.test:{PLAIN}pw\n"
                                                "b@example.test:{PLAIN}pw\n");
    set_backends("file", NULL);
    tern_auth *a = auth_new(F.store);
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    tern_auth_client *c = tern_auth_client_new(a, &loop);
    const char *users[] = {"a@example.test", "b@example.test", "a@example.test"};
    async_left = 3;
    for (int i = 0; i < 3; i++) {
        tern_auth_req *r = tern_auth_req_new(TERN_AUTH_VERIFY_PASSWORD, async_cb, NULL);
        r->in.user = users[i];
        r->in.password = "pw";
        r->in.password_len = 2;
        assert_int_equal(tern_auth_submit(c, r), 0);
    }
    tern_auth_client_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(async_left, 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    tern_auth_unref(a);
    assert_int_equal(store_status(TERN_STORE_ACCOUNT_GET, "b@example.test", NULL),
                     TERN_STORE_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cram_context_rfc2195),
        cmocka_unit_test_setup_teardown(test_cram_end_to_end, setup, teardown),
        cmocka_unit_test(test_static_listener),
        cmocka_unit_test_setup_teardown(test_static_validation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_first_login_creates_account, setup, teardown),
        cmocka_unit_test_setup_teardown(test_first_login_async, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
