/* Unit tests for protocols/common/sasl_server.h, the SASL driver POP3 and
 * IMAP share: what is offered with and without TLS, PLAIN with and without
 * an initial response, LOGIN's challenges, CRAM-MD5 through GET_SECRET,
 * failures held back by the limiter's delay, lockout, "*", undecodable
 * responses, bare password checks, APOP, and freeing the driver while a
 * backend request or a delay is outstanding (no callback afterwards, no
 * leak under ASan). A real tern_auth with the file backend on a private
 * loop; inputs are literals in this file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <stdatomic.h>

#include <cmocka.h>
#include <mbedtls/md5.h>

#include "auth/auth.h"
#include "auth/sasl/sasl.h"
#include "lib/base64.h"
#include "lib/log.h"
#include "lib/util.h"
#include "protocols/common/sasl_server.h"

static struct {
    char dir[64];
    tern_config *cfg;
    tern_auth *auth;
    uv_loop_t loop;
} F;

typedef struct {
    int n;
    tern_sasl_srv_status last;
    char data[512];
    char account[128];
    uint64_t at_ms;
} seen;

static void cb(void *data, const tern_sasl_srv_result *r)
{
    seen *s = data;
    s->n++;
    s->last = r->status;
    snprintf(s->data, sizeof(s->data), "%s", r->data ? r->data : "");
    snprintf(s->account, sizeof(s->account), "%s", r->account ? r->account : "");
    s->at_ms = tern_now_ms();
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int setup(void **state)
{
    (void)state;
    tern_log_configure("error", NULL);
    snprintf(F.dir, sizeof F.dir, "/tmp/tern-sasl-srv-XXXXXX");
    if (mkdtemp(F.dir) == NULL)
        return -1;
    tern_config *c = calloc(1, sizeof *c);
    atomic_init(&c->refs, 1);
    tern_arena_init(&c->arena, 4096);
    c->server.state_dir = tern_arena_strdup(&c->arena, F.dir);
    c->auth.max_failures = 3;
    c->auth.lockout_ms = 60000;
    c->auth.failure_delay_ms = 50;
    c->auth.max_delay_ms = 200;
    char *path = tern_arena_printf(&c->arena, "%s/users", F.dir);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fputs("alice@example.test:{PLAIN}secret\n", f);
    fclose(f);
    c->auth_file.present = true;
    c->auth_file.path = path;
    c->auth.backends = tern_arena_alloc(&c->arena, sizeof(char *));
    c->auth.backends[0] = "file";
    c->auth.n_backends = 1;
    F.cfg = c;
    char *err = NULL;
    F.auth = tern_auth_new(c, NULL, &err);
    if (F.auth == NULL) {
        fprintf(stderr, "tern_auth_new: %s\n", err ? err : "?");
        free(err);
        return -1;
    }
    uv_loop_init(&F.loop);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    uv_run(&F.loop, UV_RUN_DEFAULT);
    uv_loop_close(&F.loop);
    tern_auth_unref(F.auth);
    tern_arena_free(&F.cfg->arena);
    free(F.cfg);
    nftw(F.dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static tern_sasl_srv_params params(bool tls, const char *ip)
{
    tern_sasl_srv_params p = {
        .service = "pop3",
        .hostname = "mail.example.test",
        .session_id = "test",
        .remote_ip = ip,
        .tls_active = tls,
    };
    return p;
}

static char *b64(const char *s, size_t n, char *out, size_t cap)
{
    assert_true(tern_base64_encode((const uint8_t *)s, n, out, cap) >= 0);
    return out;
}

static void run_until(seen *s, int n)
{
    uint64_t t0 = tern_now_ms();
    while (s->n < n && tern_now_ms() - t0 < 10000)
        uv_run(&F.loop, UV_RUN_NOWAIT);
    assert_int_equal(s->n, n);
}

static void test_offered(void **state)
{
    (void)state;
    char buf[256];
    tern_sasl_srv_params p = params(false, "192.0.2.1");
    assert_int_equal(tern_sasl_srv_mechs(F.auth, &p, buf, sizeof buf), 0);
    assert_false(tern_sasl_srv_password_allowed(F.auth, &p));
    tern_sasl_srv *s = tern_sasl_srv_new(F.auth, &F.loop, cb, NULL);
    assert_int_equal(tern_sasl_srv_start(s, &p, "PLAIN", NULL, 0), TERN_SASL_SRV_ENEEDTLS);
    assert_int_equal(tern_sasl_srv_start(s, &p, "NOSUCH", NULL, 0), TERN_SASL_SRV_ENOMECH);
    p.tls_active = true;
    assert_true(tern_sasl_srv_mechs(F.auth, &p, buf, sizeof buf) > 0);
    assert_non_null(strstr(buf, "PLAIN"));
    assert_non_null(strstr(buf, "CRAM-MD5"));
    assert_null(strstr(buf, "EXTERNAL"));
    assert_null(strstr(buf, "SCRAM")); /* the file has no SCRAM keys */
    assert_int_equal(tern_sasl_srv_start(s, &p, "SCRAM-SHA-256", NULL, 0), TERN_SASL_SRV_ENOMECH);
    p.cert_account = "alice@example.test";
    assert_true(tern_sasl_srv_mechs(F.auth, &p, buf, sizeof buf) > 0);
    assert_non_null(strstr(buf, "EXTERNAL"));
    assert_true(tern_sasl_srv_password_allowed(F.auth, &p));
    p.tls_active = false;
    p.allow_plaintext = true;
    assert_true(tern_sasl_srv_password_allowed(F.auth, &p));
    tern_sasl_srv_free(s);
}

static void test_plain(void **state)
{
    (void)state;
    seen got = {0};
    char ir[128];
    tern_sasl_srv_params p = params(true, "192.0.2.2");
    tern_sasl_srv *s = tern_sasl_srv_new(F.auth, &F.loop, cb, &got);
    /* initial response: the answer needs the backend, so it comes later */
    b64("\0alice@example.test\0secret", 26, ir, sizeof ir);
    assert_int_equal(tern_sasl_srv_start(s, &p, "plain", ir, strlen(ir)), 0);
    assert_int_equal(got.n, 0);
    assert_true(tern_sasl_srv_pending(s));
    assert_int_equal(tern_sasl_srv_start(s, &p, "PLAIN", NULL, 0), TERN_SASL_SRV_EBUSY);
    run_until(&got, 1);
    assert_int_equal(got.last, TERN_SASL_SRV_SUCCESS);
    assert_string_equal(got.account, "alice@example.test");
    assert_false(tern_sasl_srv_active(s));
    /* no initial response: an empty challenge first, right away */
    assert_int_equal(tern_sasl_srv_start(s, &p, "PLAIN", NULL, 0), 0);
    assert_int_equal(got.n, 2);
    assert_int_equal(got.last, TERN_SASL_SRV_CHALLENGE);
    assert_string_equal(got.data, "");
    assert_true(tern_sasl_srv_active(s));
    b64("\0alice@example.test\0wrong", 25, ir, sizeof ir);
    uint64_t t0 = tern_now_ms();
    tern_sasl_srv_response(s, ir, strlen(ir));
    run_until(&got, 3);
    assert_int_equal(got.last, TERN_SASL_SRV_FAILED);
    assert_true(got.at_ms - t0 >= 40); /* the limiter's delay */
    /* "*" cancels; garbage is MALFORMED */
    assert_int_equal(tern_sasl_srv_start(s, &p, "PLAIN", NULL, 0), 0);
    tern_sasl_srv_response(s, "*", 1);
    assert_int_equal(got.last, TERN_SASL_SRV_ABORTED);
    assert_int_equal(tern_sasl_srv_start(s, &p, "PLAIN", NULL, 0), 0);
    tern_sasl_srv_response(s, "%%%", 3);
    assert_int_equal(got.last, TERN_SASL_SRV_MALFORMED);
    assert_int_equal(tern_sasl_srv_start(s, &p, "PLAIN", "!!", 2), 0);
    assert_int_equal(got.last, TERN_SASL_SRV_MALFORMED);
    tern_sasl_srv_free(s);
}

static void test_login_and_cram(void **state)
{
    (void)state;
    seen got = {0};
    char line[256];
    tern_sasl_srv_params p = params(true, "192.0.2.3");
    tern_sasl_srv *s = tern_sasl_srv_new(F.auth, &F.loop, cb, &got);
    assert_int_equal(tern_sasl_srv_start(s, &p, "LOGIN", NULL, 0), 0);
    assert_int_equal(got.last, TERN_SASL_SRV_CHALLENGE);
    b64("alice@example.test", 18, line, sizeof line);
    tern_sasl_srv_response(s, line, strlen(line));
    assert_int_equal(got.last, TERN_SASL_SRV_CHALLENGE);
    b64("secret", 6, line, sizeof line);
    tern_sasl_srv_response(s, line, strlen(line));
    run_until(&got, 3);
    assert_int_equal(got.last, TERN_SASL_SRV_SUCCESS);

    assert_int_equal(tern_sasl_srv_start(s, &p, "CRAM-MD5", NULL, 0), 0);
    assert_int_equal(got.last, TERN_SASL_SRV_CHALLENGE);
    uint8_t ch[256];
    size_t chn = 0;
    assert_int_equal(tern_base64_decode(got.data, strlen(got.data), ch, sizeof ch - 1, &chn), 0);
    ch[chn] = '\0';
    /* HMAC-MD5(secret, challenge) by hand */
    uint8_t k[64] = {0}, ipad[64], opad[64], inner[16], dig[16];
    memcpy(k, "secret", 6);
    for (int i = 0; i < 64; i++) {
        ipad[i] = k[i] ^ 0x36;
        opad[i] = k[i] ^ 0x5c;
    }
    mbedtls_md5_context c;
    mbedtls_md5_init(&c);
    mbedtls_md5_starts_ret(&c);
    mbedtls_md5_update_ret(&c, ipad, 64);
    mbedtls_md5_update_ret(&c, ch, chn);
    mbedtls_md5_finish_ret(&c, inner);
    mbedtls_md5_starts_ret(&c);
    mbedtls_md5_update_ret(&c, opad, 64);
    mbedtls_md5_update_ret(&c, inner, 16);
    mbedtls_md5_finish_ret(&c, dig);
    mbedtls_md5_free(&c);
    char resp[128];
    int n = snprintf(resp, sizeof resp, "alice@example.test ");
    for (int i = 0; i < 16; i++)
        n += snprintf(resp + n, sizeof resp - (size_t)n, "%02x", dig[i]);
    b64(resp, (size_t)n, line, sizeof line);
    tern_sasl_srv_response(s, line, strlen(line));
    run_until(&got, 5);
    assert_int_equal(got.last, TERN_SASL_SRV_SUCCESS);
    tern_sasl_srv_free(s);
}

static void apop_digest(const char *challenge, const char *secret, char out[33])
{
    uint8_t md[16];
    mbedtls_md5_context c;
    mbedtls_md5_init(&c);
    mbedtls_md5_starts_ret(&c);
    mbedtls_md5_update_ret(&c, (const uint8_t *)challenge, strlen(challenge));
    mbedtls_md5_update_ret(&c, (const uint8_t *)secret, strlen(secret));
    mbedtls_md5_finish_ret(&c, md);
    mbedtls_md5_free(&c);
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static void test_password_apop_lockout(void **state)
{
    (void)state;
    seen got = {0};
    tern_sasl_srv_params p = params(true, "192.0.2.4");
    tern_sasl_srv *s = tern_sasl_srv_new(F.auth, &F.loop, cb, &got);
    assert_int_equal(tern_sasl_srv_password(s, &p, "alice@example.test", "secret", 6), 0);
    run_until(&got, 1);
    assert_int_equal(got.last, TERN_SASL_SRV_SUCCESS);
    assert_string_equal(got.account, "alice@example.test");

    char d[33];
    const char *ts = "<1.2@mail.example.test>";
    apop_digest(ts, "secret", d);
    assert_int_equal(tern_sasl_srv_apop(s, &p, "alice@example.test", ts, d), 0);
    run_until(&got, 2);
    assert_int_equal(got.last, TERN_SASL_SRV_SUCCESS);
    apop_digest(ts, "wrong", d);
    assert_int_equal(tern_sasl_srv_apop(s, &p, "alice@example.test", ts, d), 0);
    run_until(&got, 3);
    assert_int_equal(got.last, TERN_SASL_SRV_FAILED);

    /* max_failures 3: two more failures lock this IP out */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(tern_sasl_srv_password(s, &p, "alice@example.test", "bad", 3), 0);
        run_until(&got, 4 + i);
        assert_int_equal(got.last, TERN_SASL_SRV_FAILED);
    }
    assert_int_equal(tern_sasl_srv_password(s, &p, "alice@example.test", "secret", 6), 0);
    run_until(&got, 6);
    assert_int_equal(got.last, TERN_SASL_SRV_TEMPFAIL);
    assert_int_equal(tern_sasl_srv_start(s, &p, "PLAIN", NULL, 0), 0);
    assert_int_equal(got.last, TERN_SASL_SRV_TEMPFAIL);
    tern_sasl_srv_free(s);
}

static void test_free_while_pending(void **state)
{
    (void)state;
    seen got = {0};
    tern_sasl_srv_params p = params(true, "192.0.2.5");
    /* a backend request out */
    tern_sasl_srv *s = tern_sasl_srv_new(F.auth, &F.loop, cb, &got);
    assert_int_equal(tern_sasl_srv_password(s, &p, "alice@example.test", "secret", 6), 0);
    assert_true(tern_sasl_srv_pending(s));
    tern_sasl_srv_free(s);
    /* a failure delay running */
    s = tern_sasl_srv_new(F.auth, &F.loop, cb, &got);
    assert_int_equal(tern_sasl_srv_password(s, &p, "alice@example.test", "bad", 3), 0);
    /* The verdict comes from the pool in well under the 50 ms delay: spin
     * a little so the free most likely lands while the delay timer runs. */
    uint64_t t0 = tern_now_ms();
    while (tern_now_ms() - t0 < 25)
        uv_run(&F.loop, UV_RUN_NOWAIT);
    assert_true(tern_sasl_srv_pending(s));
    assert_int_equal(got.n, 0);
    tern_sasl_srv_free(s);
    uv_run(&F.loop, UV_RUN_DEFAULT);
    assert_int_equal(got.n, 0);
}

/* The callback may free the driver. */
static void free_cb(void *data, const tern_sasl_srv_result *r)
{
    (void)r;
    tern_sasl_srv **sp = data;
    tern_sasl_srv_free(*sp);
    *sp = NULL;
}

static void test_free_in_callback(void **state)
{
    (void)state;
    tern_sasl_srv_params p = params(true, "192.0.2.6");
    tern_sasl_srv *s = NULL;
    s = tern_sasl_srv_new(F.auth, &F.loop, free_cb, &s);
    tern_sasl_srv *keep = s;
    assert_int_equal(tern_sasl_srv_start(keep, &p, "PLAIN", NULL, 0), 0); /* challenge: freed */
    assert_null(s);
    s = tern_sasl_srv_new(F.auth, &F.loop, free_cb, &s);
    assert_int_equal(tern_sasl_srv_password(s, &p, "alice@example.test", "secret", 6), 0);
    uv_run(&F.loop, UV_RUN_DEFAULT);
    assert_null(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_offered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_plain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_login_and_cram, setup, teardown),
        cmocka_unit_test_setup_teardown(test_password_apop_lockout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_while_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_in_callback, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
