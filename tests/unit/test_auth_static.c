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
    (void)listener;
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cram_context_rfc2195),
        cmocka_unit_test_setup_teardown(test_cram_end_to_end, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
