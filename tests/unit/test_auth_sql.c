/* test_auth_sql: the `sql` auth backend against a real PostgreSQL: argon2id
 * and SHA512-crypt rows, wrong passwords, unknown users, USER_EXISTS with
 * and without user_query, SCRAM keys from a row, a user name that looks like
 * SQL injection, the connection killed mid-query and while idle, a server
 * that is not there, and the order [sql, internal] against a local store.
 *
 * Needs TERN_TEST_PG_CONNINFO (tests/pg/start prints one); without it every
 * test is skipped and counted as passed. Each run uses its own table.
 * Input trusted: the test's own data and the test server. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "auth/auth.h"
#include "auth/hash.h"
#include "lib/log.h"
#include "storage/store.h"

/* openssl passwd -6 -salt saltsalt secret */
#define SHA512_SECRET "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1"

/* Survives the injection attempt only if the name stays data. */
#define BAIT "users"

static const char *base_ci;
static char table[64];
static char app[64];
static char ci[512];  /* base_ci with our application_name, so we can find our sessions */
static PGconn *admin; /* the test's own blocking connection */

static struct {
    char dir[64];
    tern_config *cfg;
    tern_store *store;
} F;

#define SKIP_WITHOUT_PG()                                                                    \
    do {                                                                                     \
        if (base_ci == NULL) {                                                               \
            printf("skip: TERN_TEST_PG_CONNINFO is not set\n");                             \
            return;                                                                          \
        }                                                                                    \
    } while (0)

static void exec_ok(const char *sql)
{
    PGresult *res = PQexec(admin, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(res));
    PQclear(res);
}

static void add_user(const char *name, const char *pw, const char *acct)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "INSERT INTO %s (name, pw, acct) VALUES ($1, $2, $3)", table);
    const char *v[3] = {name, pw, acct};
    PGresult *res = PQexecParams(admin, sql, 3, NULL, v, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        fail_msg("insert %s: %s", name, PQresultErrorMessage(res));
    PQclear(res);
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void quiet(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

static char alice_list[3 * TERN_HASH_MAX];

static int group_setup(void **state)
{
    (void)state;
    tern_log_configure("error", NULL);
    base_ci = getenv("TERN_TEST_PG_CONNINFO");
    if (base_ci == NULL || *base_ci == '\0') {
        base_ci = NULL;
        printf("skip: TERN_TEST_PG_CONNINFO is not set; the sql auth backend tests are "
               "skipped (tests/pg/start prints one)\n");
        return 0;
    }
    unsigned tag = (unsigned)getpid() ^ (unsigned)time(NULL);
    snprintf(table, sizeof(table), "asql_%u", tag);
    snprintf(app, sizeof(app), "tern_asql_%u", tag);
    snprintf(ci, sizeof(ci), "%s application_name=%s", base_ci, app);
    admin = PQconnectdb(base_ci);
    if (PQstatus(admin) != CONNECTION_OK) {
        fprintf(stderr, "connect: %s", PQerrorMessage(admin));
        return -1;
    }
    PQsetNoticeProcessor(admin, quiet, NULL);
    char sql[256];
    snprintf(sql, sizeof(sql), "CREATE TABLE %s (name text PRIMARY KEY, pw text, acct text)",
             table);
    exec_ok(sql);
    exec_ok("CREATE TABLE IF NOT EXISTS " BAIT " (id int)");

    char h[TERN_HASH_MAX], s[TERN_HASH_MAX];
    if (tern_hash_argon2id("wonderland", 10, h, sizeof(h)) != 0 ||
        tern_hash_scram_sha256("wonderland", 10, 4096, s, sizeof(s)) != 0)
        return -1;
    snprintf(alice_list, sizeof(alice_list), "%s %s", h, s);
    add_user("alice@example.test", alice_list, "Alice@example.test");
    add_user("bob@example.test", "{SHA512-CRYPT}" SHA512_SECRET, NULL);
    add_user("nopw@example.test", NULL, NULL);
    add_user("slow@example.test", "{PLAIN}zzz", NULL);
    add_user("both@example.test", "{PLAIN}from-sql", NULL);
    add_user("x';drop/**/table/**/" BAIT ";--@example.test", "{PLAIN}inj", NULL);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (admin != NULL) {
        char sql[128];
        snprintf(sql, sizeof(sql), "DROP TABLE IF EXISTS %s", table);
        PQclear(PQexec(admin, sql));
        PQfinish(admin);
    }
    return 0;
}

static int setup(void **state)
{
    (void)state;
    snprintf(F.dir, sizeof F.dir, "/tmp/tern-asql-test-XXXXXX");
    if (mkdtemp(F.dir) == NULL)
        return -1;
    tern_config *c = calloc(1, sizeof *c);
    atomic_init(&c->refs, 1);
    tern_arena_init(&c->arena, 4096);
    c->server.state_dir = tern_arena_strdup(&c->arena, F.dir);
    c->storage.backend = TERN_STORAGE_LOCAL;
    c->storage.changes_retention_ms = 30ull * 24 * 3600 * 1000;
    c->local.path = tern_arena_printf(&c->arena, "%s/mail", F.dir);
    c->auth.max_failures = 1000;
    c->auth.lockout_ms = 60000;
    c->auth.failure_delay_ms = 0;
    c->auth.max_delay_ms = 0;
    c->auth.backends = tern_arena_alloc(&c->arena, 2 * sizeof(char *));
    c->auth.backends[0] = "sql";
    c->auth.n_backends = 1;
    c->auth_sql.present = true;
    c->auth_sql.conninfo = ci;
    /* Uses $1 and $2 only (any subset must do); `slow` sleeps so a test
     * can kill the connection while the query runs. */
    c->auth_sql.password_query = tern_arena_printf(
        &c->arena,
        "SELECT t.pw AS password, t.acct AS account FROM %s t, "
        "pg_sleep(CASE WHEN $2 = 'slow' THEN 5 ELSE 0 END) s WHERE t.name = $1",
        table);
    c->auth_sql.pool_size = 2;
    c->auth_sql.timeout_ms = 10000;
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

static tern_auth *auth_new(void)
{
    char *err = NULL;
    tern_auth *a = tern_auth_new(F.cfg, F.store, &err);
    if (a == NULL)
        fail_msg("tern_auth_new: %s", err);
    return a;
}

static int run(tern_auth *a, tern_auth_op op, const char *user, const char *pw,
               tern_auth_req **r_out)
{
    tern_auth_req *r = tern_auth_req_new(op, NULL, NULL);
    r->in.service = "imap";
    r->in.user = user;
    r->in.password = pw;
    r->in.password_len = pw ? strlen(pw) : 0;
    int st = tern_auth_run_sync(a, r);
    if (r_out)
        *r_out = r;
    else
        tern_auth_req_free(r);
    return st;
}

static void test_verify(void **state)
{
    (void)state;
    SKIP_WITHOUT_PG();
    tern_auth *a = auth_new();
    assert_int_equal(tern_auth_capabilities(a), TERN_AUTH_CAP_PASSWORD);
    tern_auth_req *r;
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "alice@EXAMPLE.test", "wonderland", &r),
                     TERN_AUTH_OK);
    assert_string_equal(r->out.backend, "sql");
    assert_string_equal(r->out.account, "Alice@example.test"); /* the row's `account` */
    tern_auth_req_free(r);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "alice@example.test", "wonderlanD", NULL),
                     TERN_AUTH_EFAIL);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "bob@example.test", "secret", &r),
                     TERN_AUTH_OK);
    assert_string_equal(r->out.account, "bob@example.test"); /* no `account`: the user */
    tern_auth_req_free(r);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "bob@example.test", "Secret", NULL),
                     TERN_AUTH_EFAIL);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "ghost@example.test", "secret", NULL),
                     TERN_AUTH_EFAIL);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "nopw@example.test", "", NULL),
                     TERN_AUTH_EFAIL);

    assert_int_equal(run(a, TERN_AUTH_USER_EXISTS, "nopw@example.test", NULL, &r), TERN_AUTH_OK);
    assert_string_equal(r->out.backend, "sql");
    tern_auth_req_free(r);
    assert_int_equal(run(a, TERN_AUTH_USER_EXISTS, "ghost@example.test", NULL, NULL),
                     TERN_AUTH_ENOTFOUND);

    /* SCRAM keys stored after the argon2id hash in the same column. */
    assert_int_equal(run(a, TERN_AUTH_GET_SCRAM_KEYS, "alice@example.test", NULL, &r),
                     TERN_AUTH_OK);
    uint8_t sk[32], svk[32];
    assert_int_equal(tern_hash_scram_derive("wonderland", 10, r->out.scram.salt,
                                            r->out.scram.salt_len, r->out.scram.iterations, sk,
                                            svk),
                     0);
    assert_memory_equal(sk, r->out.scram.stored_key, 32);
    assert_memory_equal(svk, r->out.scram.server_key, 32);
    tern_auth_req_free(r);
    assert_int_equal(run(a, TERN_AUTH_GET_SCRAM_KEYS, "bob@example.test", NULL, NULL),
                     TERN_AUTH_EUNAVAIL);
    assert_int_equal(run(a, TERN_AUTH_GET_SCRAM_KEYS, "ghost@example.test", NULL, NULL),
                     TERN_AUTH_ENOTFOUND);
    tern_auth_unref(a);

    F.cfg->auth_sql.scram = true;
    a = auth_new();
    assert_int_equal(tern_auth_capabilities(a),
                     TERN_AUTH_CAP_PASSWORD | TERN_AUTH_CAP_SCRAM_SHA_256);
    tern_auth_unref(a);
}

static void test_user_query(void **state)
{
    (void)state;
    SKIP_WITHOUT_PG();
    /* $2 and $3 only, and no `password` column: USER_EXISTS needs none. */
    F.cfg->auth_sql.user_query = tern_arena_printf(
        &F.cfg->arena, "SELECT upper(name) AS account FROM %s WHERE name = $2 || '@' || $3",
        table);
    tern_auth *a = auth_new();
    tern_auth_req *r;
    assert_int_equal(run(a, TERN_AUTH_USER_EXISTS, "bob@example.test", NULL, &r), TERN_AUTH_OK);
    assert_string_equal(r->out.account, "BOB@EXAMPLE.TEST");
    tern_auth_req_free(r);
    assert_int_equal(run(a, TERN_AUTH_USER_EXISTS, "nobody@example.test", NULL, NULL),
                     TERN_AUTH_ENOTFOUND);
    /* Logins still go through password_query. */
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "bob@example.test", "secret", &r),
                     TERN_AUTH_OK);
    assert_string_equal(r->out.account, "bob@example.test");
    tern_auth_req_free(r);
    tern_auth_unref(a);

    /* A password_query without a `password` column is the admin's error:
     * ETEMP and a message, never a login. */
    F.cfg->auth_sql.user_query = NULL;
    F.cfg->auth_sql.password_query =
        tern_arena_printf(&F.cfg->arena, "SELECT pw FROM %s WHERE name = $1", table);
    a = auth_new();
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "bob@example.test", "secret", &r),
                     TERN_AUTH_ETEMP);
    assert_non_null(strstr(r->error, "password"));
    tern_auth_req_free(r);
    tern_auth_unref(a);
    /* Nor does a query that fails. */
    F.cfg->auth_sql.password_query = "SELECT password FROM no_such_table WHERE name = $1";
    a = auth_new();
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "bob@example.test", "secret", &r),
                     TERN_AUTH_ETEMP);
    assert_non_null(strstr(r->error, "no_such_table"));
    tern_auth_req_free(r);
    tern_auth_unref(a);
}

static bool bait_exists(void)
{
    PGresult *res = PQexec(admin, "SELECT to_regclass('" BAIT "') IS NOT NULL");
    bool yes = PQresultStatus(res) == PGRES_TUPLES_OK && PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    return yes;
}

static void test_injection(void **state)
{
    (void)state;
    SKIP_WITHOUT_PG();
    tern_auth *a = auth_new();
    /* With spaces, auth.c refuses the name before any backend sees it. */
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "x'; DROP TABLE " BAIT "; --@example.test",
                         "inj", NULL),
                     TERN_AUTH_EFAIL);
    assert_true(bait_exists());
    /* Without spaces it reaches the query, as the row's name: data. */
    tern_auth_req *r;
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD,
                         "x';drop/**/table/**/" BAIT ";--@example.test", "inj", &r),
                     TERN_AUTH_OK);
    assert_string_equal(r->out.account, "x';drop/**/table/**/" BAIT ";--@example.test");
    tern_auth_req_free(r);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "x'or'1'='1@example.test", "inj", NULL),
                     TERN_AUTH_EFAIL);
    assert_int_equal(run(a, TERN_AUTH_USER_EXISTS, "'||(select/**/1)||'@example.test", NULL,
                         NULL),
                     TERN_AUTH_ENOTFOUND);
    assert_true(bait_exists());
    tern_auth_unref(a);
}

/* ---- a connection that dies ------------------------------------------------ */

static int async_done;
static void async_cb(tern_auth_req *r)
{
    (void)r;
    async_done++;
}

static void stop_loop(uv_timer_t *t)
{
    uv_stop(t->loop);
}

/* Runs the loop for about ms milliseconds. */
static void spin(uv_loop_t *loop, uint64_t ms)
{
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, stop_loop, ms, 0);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

static int kill_sessions(void)
{
    char sql[256];
    snprintf(sql, sizeof(sql),
             "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
             "WHERE application_name = '%s'",
             app);
    PGresult *res = PQexec(admin, sql);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    int n = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    return n;
}

static int submit_wait(tern_auth_client *c, uv_loop_t *loop, const char *user, const char *pw,
                       uint64_t kill_after_ms)
{
    tern_auth_req *r = tern_auth_req_new(TERN_AUTH_VERIFY_PASSWORD, async_cb, NULL);
    r->in.user = user;
    r->in.password = pw;
    r->in.password_len = strlen(pw);
    async_done = 0;
    assert_int_equal(tern_auth_submit(c, r), 0);
    if (kill_after_ms) {
        spin(loop, kill_after_ms);
        assert_int_equal(async_done, 0); /* still in pg_sleep */
        assert_true(kill_sessions() >= 1);
    }
    while (async_done == 0)
        uv_run(loop, UV_RUN_ONCE);
    int st = r->status;
    tern_auth_req_free(r);
    return st;
}

static void test_connection_dies(void **state)
{
    (void)state;
    SKIP_WITHOUT_PG();
    F.cfg->auth_sql.pool_size = 1;
    tern_auth *a = auth_new();
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_auth_client *c = tern_auth_client_new(a, &loop);
    assert_int_equal(submit_wait(c, &loop, "bob@example.test", "secret", 0), TERN_AUTH_OK);
    /* Killed mid-query: that request fails as temporary... */
    uint64_t t0 = uv_hrtime();
    assert_int_equal(submit_wait(c, &loop, "slow@example.test", "zzz", 300), TERN_AUTH_ETEMP);
    assert_true(uv_hrtime() - t0 < 4000000000ull); /* not after the 5 s sleep */
    /* ...and the next one reconnects. */
    assert_int_equal(submit_wait(c, &loop, "bob@example.test", "secret", 0), TERN_AUTH_OK);
    /* Killed while idle: noticed on the loop and replaced unseen. */
    assert_int_equal(kill_sessions(), 1);
    spin(&loop, 200);
    assert_int_equal(submit_wait(c, &loop, "bob@example.test", "secret", 0), TERN_AUTH_OK);
    assert_int_equal(submit_wait(c, &loop, "bob@example.test", "wrong", 0), TERN_AUTH_EFAIL);
    tern_auth_client_close(c);
    tern_auth_unref(a);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* Several requests at once on a pool smaller than their number. */
static void test_pool(void **state)
{
    (void)state;
    SKIP_WITHOUT_PG();
    tern_auth *a = auth_new();
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_auth_client *c = tern_auth_client_new(a, &loop);
    tern_auth_unref(a);
    tern_auth_req *rs[7];
    async_done = 0;
    for (int i = 0; i < 7; i++) {
        rs[i] = tern_auth_req_new(i % 2 ? TERN_AUTH_VERIFY_PASSWORD : TERN_AUTH_USER_EXISTS,
                                  async_cb, NULL);
        rs[i]->in.user = i % 3 ? "bob@example.test" : "ghost@example.test";
        rs[i]->in.password = "secret";
        rs[i]->in.password_len = 6;
        assert_int_equal(tern_auth_submit(c, rs[i]), 0);
    }
    assert_int_equal(async_done, 0);
    tern_auth_client_close(c); /* pending ones still complete */
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(async_done, 7);
    for (int i = 0; i < 7; i++) {
        int want = i % 3 ? TERN_AUTH_OK : i % 2 ? TERN_AUTH_EFAIL : TERN_AUTH_ENOTFOUND;
        assert_int_equal(rs[i]->status, want);
        tern_auth_req_free(rs[i]);
    }
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_server_gone(void **state)
{
    (void)state;
    SKIP_WITHOUT_PG();
    /* Port 1 on loopback refuses at once. */
    F.cfg->auth_sql.conninfo = "host=127.0.0.1 port=1 dbname=x user=x";
    tern_auth *a = auth_new();
    tern_auth_req *r;
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "bob@example.test", "secret", &r),
                     TERN_AUTH_ETEMP);
    assert_non_null(strstr(r->error, "connect"));
    tern_auth_req_free(r);
    assert_int_equal(run(a, TERN_AUTH_USER_EXISTS, "bob@example.test", NULL, NULL),
                     TERN_AUTH_ETEMP);
    tern_auth_unref(a);
    /* A conninfo libpq cannot parse is a configuration error. */
    F.cfg->auth_sql.conninfo = "host=127.0.0.1 nonsense_key=1";
    char *err = NULL;
    assert_null(tern_auth_new(F.cfg, NULL, &err));
    assert_non_null(strstr(err, "auth_sql.conninfo"));
    free(err);
}

/* host= as a name: resolved off the loop (uv_getaddrinfo), then handed
 * to libpq as hostaddr=. "localhost" may give ::1 before 127.0.0.1 while
 * the test server listens on 127.0.0.1 only: libpq must get every
 * address to try. A name that does not resolve is a clear ETEMP. */
static void test_host_name(void **state)
{
    (void)state;
    SKIP_WITHOUT_PG();
    char named[512];
    const char *h = strstr(ci, "host=127.0.0.1");
    assert_non_null(h);
    snprintf(named, sizeof(named), "%.*shost=localhost%s", (int)(h - ci), ci,
             h + strlen("host=127.0.0.1"));
    F.cfg->auth_sql.conninfo = named;
    tern_auth *a = auth_new();
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "bob@example.test", "secret", NULL),
                     TERN_AUTH_OK);
    tern_auth_unref(a);

    snprintf(named, sizeof(named), "%.*shost=no-such-host.invalid%s", (int)(h - ci), ci,
             h + strlen("host=127.0.0.1"));
    F.cfg->auth_sql.conninfo = named;
    a = auth_new();
    tern_auth_req *r;
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "bob@example.test", "secret", &r),
                     TERN_AUTH_ETEMP);
    assert_non_null(strstr(r->error, "resolve"));
    tern_auth_req_free(r);
    tern_auth_unref(a);
    F.cfg->auth_sql.conninfo = ci;
}

static void test_order_with_internal(void **state)
{
    (void)state;
    SKIP_WITHOUT_PG();
    char *err = NULL;
    assert_int_equal(tern_store_open(F.cfg, &F.store, &err), 0);
    tern_store_req *sr = tern_store_req_new(TERN_STORE_DOMAIN_ADD, NULL, NULL);
    sr->in.domain = "example.test";
    assert_int_equal(tern_store_run_sync(F.store, sr), TERN_STORE_OK);
    tern_store_req_free(sr);
    const char *accts[2][2] = {{"both@example.test", "{PLAIN}from-store"},
                               {"storeonly@example.test", "{PLAIN}from-store"}};
    for (int i = 0; i < 2; i++) {
        sr = tern_store_req_new(TERN_STORE_ACCOUNT_CREATE, NULL, NULL);
        sr->in.account = accts[i][0];
        sr->in.password_hash = accts[i][1];
        assert_int_equal(tern_store_run_sync(F.store, sr), TERN_STORE_OK);
        tern_store_req_free(sr);
    }
    F.cfg->auth.backends[1] = "internal";
    F.cfg->auth.n_backends = 2;
    tern_auth *a = auth_new();
    tern_auth_req *r;
    /* sql knows "both": it decides, and the store's password fails. */
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "both@example.test", "from-sql", &r),
                     TERN_AUTH_OK);
    assert_string_equal(r->out.backend, "sql");
    tern_auth_req_free(r);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "both@example.test", "from-store", NULL),
                     TERN_AUTH_EFAIL);
    /* Unknown to sql: the store answers. */
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "storeonly@example.test", "from-store",
                         &r),
                     TERN_AUTH_OK);
    assert_string_equal(r->out.backend, "internal");
    tern_auth_req_free(r);
    assert_int_equal(run(a, TERN_AUTH_USER_EXISTS, "storeonly@example.test", NULL, &r),
                     TERN_AUTH_OK);
    assert_string_equal(r->out.backend, "internal");
    tern_auth_req_free(r);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "ghost@example.test", "x", NULL),
                     TERN_AUTH_EFAIL);
    tern_auth_unref(a);
}

/* ---- config ------------------------------------------------------------------ */

#define YHEAD                                                                                 \
    "server: {hostname: mx.example.test}\ndomains: [example.test]\n"                          \
    "listeners:\n  - {name: mx, protocol: smtp, port: 25}\n"

static tern_config *load(const char *yaml, tern_config_errors *errs)
{
    tern_config_errors_init(errs);
    return tern_config_load_string(yaml, strlen(yaml), "test.yaml", errs);
}

static bool has_error(const tern_config_errors *errs, const char *want)
{
    for (size_t i = 0; i < errs->n; i++)
        if (strstr(errs->items[i], want) != NULL)
            return true;
    return false;
}

static void test_config(void **state)
{
    (void)state;
    tern_config_errors errs;
    tern_config *c = load(YHEAD "auth: {backends: [sql, internal]}\n"
                                "auth_sql:\n  conninfo: host=db dbname=mail\n"
                                "  password_query: SELECT pw AS password FROM u WHERE n = $1\n",
                          &errs);
    assert_non_null(c);
    assert_true(c->auth_sql.present);
    assert_string_equal(c->auth_sql.conninfo, "host=db dbname=mail");
    assert_non_null(c->auth_sql.password_query);
    assert_null(c->auth_sql.user_query);
    assert_int_equal(c->auth_sql.pool_size, 2);
    assert_int_equal(c->auth_sql.timeout_ms, 10000);
    assert_false(c->auth_sql.scram);
    tern_config_unref(c);
    tern_config_errors_free(&errs);

    /* conninfo from postgres: */
    c = load(YHEAD "auth: {backends: [sql]}\npostgres: {conninfo: host=db}\n"
                   "auth_sql: {password_query: 'SELECT 1', pool_size: 5, timeout: 2s}\n",
             &errs);
    assert_non_null(c);
    assert_null(c->auth_sql.conninfo);
    assert_int_equal(c->auth_sql.pool_size, 5);
    assert_int_equal(c->auth_sql.timeout_ms, 2000);
    tern_config_unref(c);
    tern_config_errors_free(&errs);

    assert_null(load(YHEAD "auth: {backends: [sql]}\n", &errs));
    assert_true(has_error(&errs, "sql needs an auth_sql: section with password_query"));
    tern_config_errors_free(&errs);
    assert_null(load(YHEAD "auth: {backends: [sql]}\nauth_sql: {conninfo: x=1}\n", &errs));
    assert_true(has_error(&errs, "password_query"));
    tern_config_errors_free(&errs);
    assert_null(load(YHEAD "auth: {backends: [sql]}\nauth_sql: {password_query: 'SELECT 1'}\n",
                     &errs));
    assert_true(has_error(&errs, "auth_sql.conninfo"));
    tern_config_errors_free(&errs);
    assert_null(load(YHEAD "auth_sql: {password_query: q, pool_size: 0}\n", &errs));
    assert_true(has_error(&errs, "auth_sql.pool_size"));
    tern_config_errors_free(&errs);
    assert_null(load(YHEAD "auth_sql: {password_query: q, pasword_query: q}\n", &errs));
    assert_true(has_error(&errs, "auth_sql.pasword_query"));
    tern_config_errors_free(&errs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config),
        cmocka_unit_test_setup_teardown(test_verify, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_query, setup, teardown),
        cmocka_unit_test_setup_teardown(test_injection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_dies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_gone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_host_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_order_with_internal, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
