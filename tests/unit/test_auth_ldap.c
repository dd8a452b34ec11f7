/* test_auth_ldap.c: the `ldap` auth backend against a real slapd started
 * by tests/ldap/start (tools/test exports TERN_TEST_LDAP_URI and
 * TERN_TEST_LDAP_DIR). Without them the server tests pass with a notice;
 * the escaping tests always run. Trusts the test tree of tests/ldap. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth/auth.h"
#include "auth/ldap/ldap_backend.h"
#include "lib/log.h"

static const char *uri(void)
{
    const char *u = getenv("TERN_TEST_LDAP_URI");
    if (u == NULL || *u == '\0') {
        printf("NOTICE: TERN_TEST_LDAP_URI unset: ldap server test skipped (counted as passed)\n");
        return NULL;
    }
    return u;
}

static tern_config *make_cfg(const char *u, tern_ldap_mode mode)
{
    static char *backends[] = {"ldap"};
    tern_config *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->auth.backends = backends;
    c->auth.n_backends = 1;
    c->auth.max_failures = 1000;
    c->auth_ldap.present = true;
    c->auth_ldap.uri = (char *)u;
    c->auth_ldap.mode = mode;
    c->auth_ldap.timeout_ms = 3000;
    c->auth_ldap.filter = "(mail=%u)";
    c->auth_ldap.base = "dc=example,dc=test";
    if (mode == TERN_LDAP_MODE_BIND) {
        c->auth_ldap.dn_template = "uid=%n,ou=people,dc=example,dc=test";
    } else {
        c->auth_ldap.bind_dn = "cn=tern,dc=example,dc=test";
        c->auth_ldap.bind_password = "service-secret";
    }
    return c;
}

static int run(tern_auth *a, tern_auth_op op, const char *user, const char *pw, char **acct)
{
    tern_auth_req *r = tern_auth_req_new(op, NULL, NULL);
    assert_non_null(r);
    r->in.service = "test";
    r->in.user = user;
    r->in.password = pw;
    r->in.password_len = pw ? strlen(pw) : 0;
    int rc = tern_auth_run_sync(a, r);
    if (acct)
        *acct = rc == TERN_AUTH_OK && r->out.account ? strdup(r->out.account) : NULL;
    tern_auth_req_free(r);
    return rc;
}

static void test_escape(void **state)
{
    (void)state;
    char out[256];
    assert_int_equal(tern_auth_ldap__expand("(mail=%u)", "a*)(uid=*@x.test", false, out,
                                            sizeof(out)), 0);
    assert_string_equal(out, "(mail=a\\2a\\29\\28uid=\\2a@x.test)");
    assert_int_equal(tern_auth_ldap__expand("(&(uid=%n)(dc=%d))", "a\\b@d", false, out,
                                            sizeof(out)), 0);
    assert_string_equal(out, "(&(uid=a\\5cb)(dc=d))");
    assert_int_equal(tern_auth_ldap__expand("uid=%n,ou=p", "x,ou=admins+cn=y@d", true, out,
                                            sizeof(out)), 0);
    assert_string_equal(out, "uid=x\\2cou\\3dadmins\\2bcn\\3dy,ou=p");
    assert_int_equal(tern_auth_ldap__expand("uid=%n", "#a @d", true, out, sizeof(out)), 0);
    assert_string_equal(out, "uid=\\23a\\20");
    assert_int_equal(tern_auth_ldap__expand("%u %%", "u", false, out, sizeof(out)), 0);
    assert_string_equal(out, "u %");
    assert_int_equal(tern_auth_ldap__expand("(mail=%u)", "****", false, out, 8), -1);
}

static void check_mode(tern_ldap_mode mode)
{
    const char *u = uri();
    if (u == NULL)
        return;
    tern_config *c = make_cfg(u, mode);
    char *err = NULL;
    tern_auth *a = tern_auth_new(c, NULL, &err);
    assert_non_null(a);
    char *acct = NULL;
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "alice@example.test", "alice pass word",
                         &acct), TERN_AUTH_OK);
    assert_string_equal(acct, "alice@example.test");
    free(acct);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "bob@example.test", "bob-secret", NULL),
                     TERN_AUTH_OK);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "alice@example.test", "bob-secret", NULL),
                     TERN_AUTH_EFAIL);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "alice@example.test", "", NULL),
                     TERN_AUTH_EFAIL);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "carol@example.test", "x", NULL),
                     TERN_AUTH_EFAIL);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "*)(uid=*@example.test", "alice pass word",
                         NULL), TERN_AUTH_EFAIL);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "*@example.test", "alice pass word", NULL),
                     TERN_AUTH_EFAIL);
    assert_int_equal(run(a, TERN_AUTH_USER_EXISTS, "alice@example.test", NULL, NULL),
                     TERN_AUTH_OK);
    assert_int_equal(run(a, TERN_AUTH_USER_EXISTS, "carol@example.test", NULL, NULL),
                     TERN_AUTH_ENOTFOUND);
    assert_int_equal(run(a, TERN_AUTH_USER_EXISTS, "*@example.test", NULL, NULL),
                     TERN_AUTH_ENOTFOUND);
    assert_int_equal(run(a, TERN_AUTH_GET_SECRET, "alice@example.test", NULL, NULL),
                     TERN_AUTH_EUNAVAIL);
    assert_int_equal(tern_auth_capabilities(a), TERN_AUTH_CAP_PASSWORD);
    tern_auth_unref(a);
    free(c);
}

static void test_bind_mode(void **state)
{
    (void)state;
    check_mode(TERN_LDAP_MODE_BIND);
}

static void test_search_mode(void **state)
{
    (void)state;
    check_mode(TERN_LDAP_MODE_SEARCH);
}

static void test_starttls(void **state)
{
    (void)state;
    const char *u = uri();
    const char *ca = getenv("TERN_TEST_LDAP_CA");
    if (u == NULL || ca == NULL)
        return;
    tern_config *c = make_cfg(u, TERN_LDAP_MODE_SEARCH);
    c->auth_ldap.starttls = true;
    c->auth_ldap.ca_file = (char *)ca;
    char *err = NULL;
    tern_auth *a = tern_auth_new(c, NULL, &err);
    assert_non_null(a);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "alice@example.test", "alice pass word",
                         NULL), TERN_AUTH_OK);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "alice@example.test", "nope", NULL),
                     TERN_AUTH_EFAIL);
    tern_auth_unref(a);
    /* Without the CA the server's certificate is not trusted. */
    c->auth_ldap.ca_file = "/dev/null";
    a = tern_auth_new(c, NULL, &err);
    assert_non_null(a);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "alice@example.test", "alice pass word",
                         NULL), TERN_AUTH_ETEMP);
    tern_auth_unref(a);
    free(c);
}

/* ldaps:// (TLS from the first byte): the same checks as StartTLS. */
static void test_ldaps(void **state)
{
    (void)state;
    const char *u = getenv("TERN_TEST_LDAP_TLS_URI");
    const char *ca = getenv("TERN_TEST_LDAP_CA");
    if (uri() == NULL || u == NULL || ca == NULL)
        return;
    tern_config *c = make_cfg(u, TERN_LDAP_MODE_SEARCH);
    c->auth_ldap.ca_file = (char *)ca;
    char *err = NULL;
    tern_auth *a = tern_auth_new(c, NULL, &err);
    assert_non_null(a);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "alice@example.test", "alice pass word",
                         NULL), TERN_AUTH_OK);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "bob@example.test", "wrong", NULL),
                     TERN_AUTH_EFAIL);
    tern_auth_unref(a);
    /* An untrusted certificate: no credential crosses it. */
    c->auth_ldap.ca_file = "/dev/null";
    a = tern_auth_new(c, NULL, &err);
    assert_non_null(a);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "alice@example.test", "alice pass word",
                         NULL), TERN_AUTH_ETEMP);
    tern_auth_unref(a);
    free(c);
}

/* One loop and one client across a server restart: the connection broken
 * under it is noticed (ETEMP while down) and replaced once it is back. */
typedef struct {
    int status;
    bool done;
} res;

static void cb(tern_auth_req *r)
{
    res *s = r->data;
    s->status = r->status;
    s->done = true;
}

static int run_on(uv_loop_t *loop, tern_auth_client *cl, const char *user, const char *pw)
{
    res s = {0};
    tern_auth_req *r = tern_auth_req_new(TERN_AUTH_VERIFY_PASSWORD, cb, &s);
    r->in.user = user;
    r->in.password = pw;
    r->in.password_len = strlen(pw);
    assert_int_equal(tern_auth_submit(cl, r), 0);
    while (!s.done)
        uv_run(loop, UV_RUN_ONCE);
    tern_auth_req_free(r);
    return s.status;
}

static void test_restart(void **state)
{
    (void)state;
    const char *u = uri();
    const char *dir = getenv("TERN_TEST_LDAP_DIR");
    if (u == NULL || dir == NULL)
        return;
    tern_config *c = make_cfg(u, TERN_LDAP_MODE_SEARCH);
    char *err = NULL;
    tern_auth *a = tern_auth_new(c, NULL, &err);
    assert_non_null(a);
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_auth_client *cl = tern_auth_client_new(a, &loop);
    assert_int_equal(run_on(&loop, cl, "alice@example.test", "alice pass word"), TERN_AUTH_OK);

    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "kill $(cat '%s/slapd.pid') && i=0 && while [ -e '%s/slapd.pid' ] && "
             "[ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done",
             dir, dir);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(run_on(&loop, cl, "alice@example.test", "alice pass word"),
                     TERN_AUTH_ETEMP);
    assert_int_equal(run_on(&loop, cl, "bob@example.test", "bob-secret"), TERN_AUTH_ETEMP);

    snprintf(cmd, sizeof(cmd),
             "'%s/run' && i=0 && until [ -s '%s/slapd.pid' ] || [ $i -ge 50 ]; do sleep 0.1; "
             "i=$((i+1)); done && sleep 0.3",
             dir, dir);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(run_on(&loop, cl, "alice@example.test", "alice pass word"), TERN_AUTH_OK);
    assert_int_equal(run_on(&loop, cl, "bob@example.test", "wrong"), TERN_AUTH_EFAIL);

    tern_auth_client_close(cl);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    tern_auth_unref(a);
    free(c);
}

int main(void)
{
    tern_log_configure("error", NULL);
    /* As in ternd (server/main.c): a write to a connection the server
     * closed must be an EPIPE for libldap, not the end of the process. */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape),
        cmocka_unit_test(test_bind_mode),
        cmocka_unit_test(test_search_mode),
        cmocka_unit_test(test_starttls),
        cmocka_unit_test(test_ldaps),
        cmocka_unit_test(test_restart),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
