/* Unit tests for storage/pg/, the PostgreSQL backend, on what the shared
 * conformance suite (tests/store/) does not look at: hostile header values
 * and names bound as parameters, shared body rows and their refcounts,
 * FETCH_BODY chunking, large FETCHes read by pages, BODY searches over
 * several batches of bodies (under OR and NOT too), change events arriving from another process
 * (a raw NOTIFY), connections killed under the pool (ETEMP, then
 * recovery; LISTEN too, with watchers woken since events may have been
 * missed), a pool whose first host refuses, and refusing a newer schema.
 *
 * Needs TERN_TEST_PG_CONNINFO (tests/pg/start prints one); without it every
 * test is skipped and counted as passed. Each test works in its own
 * database, created and dropped here. Trusts the cluster it is pointed at. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>
#include <uv.h>

#include "lib/log.h"
#include "storage/pg/pg_internal.h"
#include "storage/pg/pq_connect.h"
#include "storage/store.h"

static const char *base_ci;
static char db[64];
static char ci[1024];

static PGconn *raw(void)
{
    PGconn *c = PQconnectdb(ci);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("connect: %s", PQerrorMessage(c));
    return c;
}

static int exec_on(const char *conninfo, const char *sql)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        PQfinish(c);
        return -1;
    }
    PGresult *r = PQexec(c, sql);
    int st = PQresultStatus(r);
    int rc = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? 0 : -1;
    if (rc)
        fprintf(stderr, "sql %s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(c);
    return rc;
}

/* One number from a query on our database. */
static long long scalar(const char *sql)
{
    PGconn *c = raw();
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    long long v = PQntuples(r) && !PQgetisnull(r, 0, 0) ? atoll(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    PQfinish(c);
    return v;
}

static tern_config *make_config(void)
{
    tern_config *c = calloc(1, sizeof *c);
    assert_non_null(c);
    atomic_init(&c->refs, 1);
    tern_arena_init(&c->arena, 4096);
    c->server.hostname = tern_arena_strdup(&c->arena, "mail.example.test");
    c->server.state_dir = tern_arena_strdup(&c->arena, "/tmp");
    c->storage.backend = TERN_STORAGE_POSTGRES;
    c->storage.changes_retention_ms = 30ull * 24 * 3600 * 1000;
    c->postgres.present = true;
    c->postgres.conninfo = tern_arena_strdup(&c->arena, ci);
    c->postgres.pool_size = 4;
    return c;
}

static void free_config(tern_config *c)
{
    tern_arena_free(&c->arena);
    free(c);
}

typedef struct fixture {
    tern_config *cfg;
    tern_store *s;
} fixture;

/* A database per test, so counts of rows are the test's own. */
static int setup(void **state)
{
    if (!base_ci)
        return 0;
    static int seq;
    snprintf(db, sizeof db, "tern_unit_pg_%ld_%d", (long)getpid(), ++seq);
    char sql[128];
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", db);
    if (exec_on(base_ci, sql) != 0)
        fail_msg("cannot create database %s", db);
    snprintf(ci, sizeof ci, "%s dbname=%s", base_ci, db);
    fixture *f = calloc(1, sizeof *f);
    f->cfg = make_config();
    char *err = NULL;
    if (tern_store_open(f->cfg, &f->s, &err) != 0)
        fail_msg("open: %s", err);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    if (!f)
        return 0;
    if (f->s)
        tern_store_close(f->s);
    free_config(f->cfg);
    free(f);
    char sql[128];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", db);
    exec_on(base_ci, sql);
    return 0;
}

#define SKIP_WITHOUT_PG()                                                          \
    do {                                                                           \
        if (!base_ci) {                                                            \
            printf("skip: TERN_TEST_PG_CONNINFO is not set\n");                    \
            return;                                                                \
        }                                                                          \
    } while (0)

static tern_store_req *req(tern_store_op op)
{
    return tern_store_req_new(op, NULL, NULL);
}

static int run(tern_store *s, tern_store_req *r)
{
    int st = tern_store_run_sync(s, r);
    if (st != 0 && getenv("TERN_TEST_VERBOSE"))
        fprintf(stderr, "op %d: %d %s\n", (int)r->op, st, r->error);
    return st;
}

static void mk_account(tern_store *s, const char *domain, const char *account)
{
    tern_store_req *r = req(TERN_STORE_DOMAIN_ADD);
    r->in.domain = domain;
    int st = run(s, r);
    assert_true(st == 0 || st == TERN_STORE_EEXISTS);
    tern_store_req_free(r);
    r = req(TERN_STORE_ACCOUNT_CREATE);
    r->in.account = account;
    assert_int_equal(run(s, r), 0);
    tern_store_req_free(r);
}

static uint32_t append(tern_store *s, const char *account, const char *mbox, const char *msg,
                       size_t len)
{
    tern_store_req *r = req(TERN_STORE_APPEND);
    r->in.account = account;
    r->in.name = mbox;
    r->in.data = (const uint8_t *)msg;
    r->in.len = len;
    assert_int_equal(run(s, r), 0);
    uint32_t uid = r->out.append.uid;
    tern_store_req_free(r);
    return uid;
}

/* ---- hostile values ---------------------------------------------------- */

static void t_hostile_values(void **state)
{
    SKIP_WITHOUT_PG();
    fixture *f = *state;
    mk_account(f->s, "example.test", "o'brien@example.test");
    /* Invalid UTF-8 in a decoded header, quotes, backslashes, LIKE
     * metacharacters and SQL in names: all bound, none refused. */
    static const char msg[] =
        "From: \"Robert'); DROP TABLE messages;--\" <bob@example.test>\r\n"
        "Subject: 100% \\off\\ _sale_ \xff\xfe bad\r\n"
        "X-Odd: =?utf-8?q?=C3=28?=\r\n"
        "Message-ID: <a\"b@example.test>\r\n"
        "\r\n"
        "body\r\n";
    tern_store_req *r = req(TERN_STORE_MAILBOX_CREATE);
    r->in.account = "o'brien@example.test";
    r->in.name = "it's \"quoted\"/and\\back";
    r->in.create_parents = true;
    assert_int_equal(run(f->s, r), 0);
    tern_store_req_free(r);
    uint32_t uid = append(f->s, "o'brien@example.test", "it's \"quoted\"/and\\back", msg,
                          sizeof msg - 1);
    assert_int_equal(uid, 1);
    assert_int_equal(scalar("SELECT count(*) FROM messages"), 1);

    /* '%' and '_' in a HEADER search are literal characters. */
    tern_search q = {.kind = TERN_SEARCH_HEADER, .field = "subject", .str = "100% \\off\\ _sale_"};
    r = req(TERN_STORE_SEARCH);
    r->in.account = "o'brien@example.test";
    r->in.name = "it's \"quoted\"/and\\back";
    r->in.search = &q;
    assert_int_equal(run(f->s, r), 0);
    assert_int_equal(r->out.n_uids, 1);
    tern_store_req_free(r);
    tern_search q2 = {.kind = TERN_SEARCH_HEADER, .field = "subject", .str = "100_"};
    r = req(TERN_STORE_SEARCH);
    r->in.account = "o'brien@example.test";
    r->in.name = "it's \"quoted\"/and\\back";
    r->in.search = &q2;
    assert_int_equal(run(f->s, r), 0);
    assert_int_equal(r->out.n_uids, 0);
    tern_store_req_free(r);

    /* The parent the create made, listed with its child. */
    r = req(TERN_STORE_MAILBOX_LIST);
    r->in.account = "o'brien@example.test";
    r->in.pattern = "it's*";
    assert_int_equal(run(f->s, r), 0);
    assert_int_equal(r->out.n_mailboxes, 2);
    assert_true(r->out.mailboxes[0].has_children);
    tern_store_req_free(r);
}

/* ---- bodies ------------------------------------------------------------ */

static void t_shared_bodies_and_chunks(void **state)
{
    SKIP_WITHOUT_PG();
    fixture *f = *state;
    mk_account(f->s, "example.test", "body@example.test");
    size_t len = 3 * 1024 * 1024 + 17;
    char *msg = malloc(len);
    int hl = snprintf(msg, len, "Subject: big\r\n\r\n");
    for (size_t i = (size_t)hl; i < len; i++)
        msg[i] = (char)('a' + (i * 7) % 26);
    uint32_t uid = append(f->s, "body@example.test", "INBOX", msg, len);

    /* Read back in chunks smaller than the backend's cap. */
    size_t got = 0;
    while (got < len) {
        tern_store_req *r = req(TERN_STORE_FETCH_BODY);
        r->in.account = "body@example.test";
        r->in.name = "INBOX";
        r->in.uid = uid;
        r->in.offset = got;
        r->in.max_len = 700000;
        assert_int_equal(run(f->s, r), 0);
        assert_int_equal(r->out.body_total, len);
        assert_true(r->out.body_len > 0 && r->out.body_len <= 700000);
        assert_memory_equal(r->out.body, msg + got, r->out.body_len);
        got += r->out.body_len;
        tern_store_req_free(r);
    }
    tern_store_req *r = req(TERN_STORE_FETCH_BODY);
    r->in.account = "body@example.test";
    r->in.name = "INBOX";
    r->in.uid = uid;
    r->in.offset = len + 10;
    r->in.max_len = 100;
    assert_int_equal(run(f->s, r), 0);
    assert_int_equal(r->out.body_len, 0);
    tern_store_req_free(r);

    /* A copy shares the body row; expunging both frees it. */
    tern_uid_range one = {uid, uid};
    r = req(TERN_STORE_COPY);
    r->in.account = "body@example.test";
    r->in.name = "INBOX";
    r->in.new_name = "Archive";
    r->in.uids = (tern_uid_set){&one, 1};
    assert_int_equal(run(f->s, r), 0);
    assert_int_equal(r->out.n_copied, 1);
    tern_store_req_free(r);
    assert_int_equal(scalar("SELECT count(*) FROM bodies"), 1);
    assert_int_equal(scalar("SELECT refcount FROM bodies"), 2);
    const char *boxes[2] = {"INBOX", "Archive"};
    for (int b = 0; b < 2; b++) {
        r = req(TERN_STORE_SET_FLAGS);
        r->in.account = "body@example.test";
        r->in.name = boxes[b];
        tern_uid_range all = {1, UINT32_MAX};
        r->in.uids = (tern_uid_set){&all, 1};
        r->in.flags = TERN_FLAG_DELETED;
        r->in.flags_mode = TERN_FLAGS_ADD;
        assert_int_equal(run(f->s, r), 0);
        tern_store_req_free(r);
        r = req(TERN_STORE_EXPUNGE);
        r->in.account = "body@example.test";
        r->in.name = boxes[b];
        assert_int_equal(run(f->s, r), 0);
        assert_int_equal(r->out.n_uids, 1);
        tern_store_req_free(r);
        assert_int_equal(scalar("SELECT count(*) FROM bodies"), b == 0 ? 1 : 0);
    }
    assert_int_equal(scalar("SELECT used_bytes FROM accounts WHERE name = 'body@example.test'"), 0);
    free(msg);
}

/* ---- large fetches ------------------------------------------------------- */

static void exec_ok(const char *sql)
{
    assert_int_equal(exec_on(ci, sql), 0);
}

/* A set that may be large is read through a cursor page by page: the rows
 * come back whole, in uid order, with their keywords. The mailbox is
 * filled by SQL (copies of one appended message) to stay quick. */
static void t_fetch_pages(void **state)
{
    SKIP_WITHOUT_PG();
    fixture *f = *state;
    mk_account(f->s, "example.test", "big@example.test");
    append(f->s, "big@example.test", "INBOX", "Subject: one\r\n\r\nx\r\n", 18);
    exec_ok("INSERT INTO messages (account_id, mailbox_id, uid, modseq, flags, internal_date, size, "
            "email_id, thread_id, body_ref) SELECT account_id, mailbox_id, g, modseq, g % 2, "
            "internal_date, size, 'E' || g, 'T' || g, body_ref FROM messages, "
            "generate_series(2, 120001) g WHERE uid = 1");
    exec_ok("INSERT INTO keywords (message, keyword) SELECT id, 'k' || (uid % 3) FROM messages "
            "WHERE uid % 1000 = 0");
    exec_ok("UPDATE bodies SET refcount = 120001");
    exec_ok("UPDATE mailboxes SET uidnext = 120002 WHERE name = 'INBOX' AND account_id = "
            "(SELECT id FROM accounts WHERE name = 'big@example.test')");

    tern_uid_range all = {1, UINT32_MAX};
    tern_store_req *r = req(TERN_STORE_FETCH);
    r->in.account = "big@example.test";
    r->in.name = "INBOX";
    r->in.uids = (tern_uid_set){&all, 1};
    assert_int_equal(run(f->s, r), 0);
    assert_int_equal(r->out.n_messages, 120001);
    for (size_t i = 0; i < r->out.n_messages; i++) {
        tern_message_info *m = &r->out.messages[i];
        assert_int_equal(m->uid, i + 1);
        if (m->uid > 1) {
            assert_int_equal(m->flags, m->uid % 2);
            assert_int_equal(m->n_keywords, m->uid % 1000 == 0 ? 1 : 0);
        }
        if (m->n_keywords) {
            char want[8];
            snprintf(want, sizeof want, "k%u", m->uid % 3);
            assert_string_equal(m->keywords[0], want);
        }
    }
    tern_store_req_free(r);

    /* Two ranges, one of them past the end: both paths agree. */
    tern_uid_range two[2] = {{59999, 60001}, {119999, 200000}};
    r = req(TERN_STORE_FETCH);
    r->in.account = "big@example.test";
    r->in.name = "INBOX";
    r->in.uids = (tern_uid_set){two, 2};
    assert_int_equal(run(f->s, r), 0);
    assert_int_equal(r->out.n_messages, 6);
    assert_int_equal(r->out.messages[0].uid, 59999);
    assert_int_equal(r->out.messages[5].uid, 120001);
    tern_store_req_free(r);
}

/* ---- body search over several batches ------------------------------------ */

static size_t search_uids(tern_store *s, const char *account, const tern_search *q, uint32_t *out,
                          size_t max)
{
    tern_store_req *r = req(TERN_STORE_SEARCH);
    r->in.account = account;
    r->in.name = "INBOX";
    r->in.search = q;
    assert_int_equal(run(s, r), 0);
    size_t n = r->out.n_uids;
    assert_true(n <= max);
    memcpy(out, r->out.uids, n * sizeof *out);
    tern_store_req_free(r);
    return n;
}

static void t_body_search_batches(void **state)
{
    SKIP_WITHOUT_PG();
    fixture *f = *state;
    mk_account(f->s, "example.test", "find@example.test");
    for (unsigned i = 1; i <= 150; i++) {
        char msg[256];
        int n = snprintf(msg, sizeof msg, "Subject: s%u\r\nContent-Type: text/plain\r\n\r\n%s %u\r\n",
                         i, i % 3 == 0 ? "the alpha word" : "nothing here", i);
        append(f->s, "find@example.test", "INBOX", msg, (size_t)n);
    }
    uint32_t u[200];
    tern_search body = {.kind = TERN_SEARCH_BODY, .str = "ALPHA"};
    size_t n = search_uids(f->s, "find@example.test", &body, u, 200);
    assert_int_equal(n, 50);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(u[i], 3 * (i + 1));

    /* Under OR and NOT the C evaluator decides, with the SQL's superset. */
    tern_search subj = {.kind = TERN_SEARCH_HEADER, .field = "subject", .str = "s7"};
    tern_search kids[2] = {body, subj};
    tern_search or = {.kind = TERN_SEARCH_OR, .children = kids, .n_children = 2};
    n = search_uids(f->s, "find@example.test", &or, u, 200);
    /* multiples of 3, plus s7, s70..s79 (s72, s75, s78 already in) */
    assert_int_equal(n, 50 + 1 + 7);
    tern_search not = {.kind = TERN_SEARCH_NOT, .children = &body, .n_children = 1};
    n = search_uids(f->s, "find@example.test", &not, u, 200);
    assert_int_equal(n, 100);
    for (size_t i = 0; i < n; i++)
        assert_int_not_equal(u[i] % 3, 0);
}

/* ---- events from elsewhere --------------------------------------------- */

typedef struct ev {
    int n;
    int rewakes;     /* mailbox 0, modseq 0: "look again" after LISTEN came back */
    char account[128];
    uint64_t mailbox_id, modseq;
} ev;

static void on_event(void *data, const char *account, uint64_t mailbox_id, uint64_t modseq)
{
    ev *e = data;
    e->n++;
    if (mailbox_id == 0 && modseq == 0)
        e->rewakes++;
    snprintf(e->account, sizeof e->account, "%s", account);
    e->mailbox_id = mailbox_id;
    e->modseq = modseq;
}

static void spin(uv_loop_t *loop, ev *e, int want, int ms)
{
    for (int i = 0; i < ms / 10 && e->n < want; i++) {
        uv_run(loop, UV_RUN_NOWAIT);
        usleep(10000);
    }
}

static void notify_raw(const char *payload)
{
    PGconn *c = raw();
    const char *pv[1] = {payload};
    PGresult *r = PQexecParams(c, "SELECT pg_notify('tern_store', $1)", 1, NULL, pv, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    PQfinish(c);
}

static void kill_others(void)
{
    PGconn *c = raw();
    PGresult *r = PQexec(c, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    PQfinish(c);
}

static void t_foreign_notify_and_kill(void **state)
{
    SKIP_WITHOUT_PG();
    fixture *f = *state;
    mk_account(f->s, "example.test", "ev@example.test");
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_store_client *cl = tern_store_client_new(f->s, &loop);
    ev e = {0};
    tern_store_watch *w = tern_store_watch_add(cl, "ev@example.test", 0, on_event, &e);
    assert_non_null(w);
    usleep(200000);

    /* Another node's change: a NOTIFY we did not send. Malformed payloads
     * are dropped. */
    notify_raw("ev@example.test\tnot-a-number\t1");
    notify_raw("no tabs at all");
    notify_raw("ev@example.test\t42\t77");
    spin(&loop, &e, 1, 3000);
    assert_int_equal(e.n, 1);
    assert_string_equal(e.account, "ev@example.test");
    assert_int_equal(e.mailbox_id, 42);
    assert_int_equal(e.modseq, 77);

    /* Every connection of the pool and the listener killed: calls fail
     * with ETEMP or succeed, never hang or crash, and recover. */
    kill_others();
    int ok = 0, etemp = 0;
    for (int i = 0; i < 40; i++) {
        tern_store_req *r = req(TERN_STORE_ACCOUNT_GET);
        r->in.account = "ev@example.test";
        int st = run(f->s, r);
        tern_store_req_free(r);
        if (st == 0)
            ok++;
        else if (st == TERN_STORE_ETEMP)
            etemp++;
        else
            fail_msg("unexpected status %d", st);
        if (st != 0)
            usleep(50000);
    }
    assert_int_equal(ok + etemp, 40);
    assert_true(ok > 0);

    /* Notifications sent while the listener was down are lost, so once it
     * listens again every watcher is told to look again. */
    for (int i = 0; i < 300 && e.rewakes == 0; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(10000);
    }
    assert_true(e.rewakes >= 1);

    /* The listener came back too: our own append wakes the watch. */
    for (int i = 0; i < 100; i++) {
        int n0 = e.n;
        append(f->s, "ev@example.test", "INBOX", "Subject: x\r\n\r\nx\r\n", 16);
        spin(&loop, &e, n0 + 1, 300);
        if (e.n > n0)
            break;
    }
    assert_true(e.n >= 2);
    assert_true(e.mailbox_id != 0);

    tern_store_watch_remove(w);
    tern_store_client_close(cl);
    for (int i = 0; i < 50; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- connecting ------------------------------------------------------------ */

/* libpq tries the next host on a new socket, often under the same number
 * as the one it closed: the pool must still hear from it. The first host
 * here refuses connections (port 1). */
static void t_second_host(void **state)
{
    SKIP_WITHOUT_PG();
    fixture *f = *state;
    const char *p = strstr(ci, "port=");
    assert_non_null(p);
    int port = atoi(p + 5);
    tern_config *c = make_config();
    c->postgres.conninfo = tern_arena_printf(&c->arena, "%s host=127.0.0.1,127.0.0.1 port=1,%d "
                                             "connect_timeout=5", ci, port);
    tern_store *s = NULL;
    char *err = NULL;
    if (tern_store_open(c, &s, &err) != 0)
        fail_msg("open: %s", err);
    mk_account(s, "example.test", "hosts@example.test");
    for (int i = 0; i < 20; i++) {
        tern_store_req *r = req(TERN_STORE_ACCOUNT_GET);
        r->in.account = "hosts@example.test";
        assert_int_equal(run(s, r), 0);
        tern_store_req_free(r);
    }
    tern_store_close(s);
    free_config(c);
    (void)f;
}

/* host= as a name: looked up on the thread pool (storage/pg/pq_connect.c)
 * and handed to libpq as hostaddr=, every address ("localhost" may be ::1
 * first while the test server listens on 127.0.0.1 only). What is left to
 * libpq (addresses, sockets, lists) is not looked up here. A name that
 * does not resolve is test_auth_sql's (the open here would fail first, in
 * the schema check). */
static void t_host_name(void **state)
{
    SKIP_WITHOUT_PG();
    (void)state;
    assert_null(tern_pq_host_to_resolve("host=127.0.0.1 port=5"));
    assert_null(tern_pq_host_to_resolve("host=::1"));
    assert_null(tern_pq_host_to_resolve("host=/run/postgresql"));
    assert_null(tern_pq_host_to_resolve("host=a,b"));
    assert_null(tern_pq_host_to_resolve("host=db hostaddr=192.0.2.1"));
    assert_null(tern_pq_host_to_resolve("host=db nonsense_key=1"));
    char *h = tern_pq_host_to_resolve("host=db.example.test dbname=x");
    assert_string_equal(h, "db.example.test");
    free(h);

    const char *at = strstr(ci, "host=127.0.0.1");
    assert_non_null(at);
    tern_config *c = make_config();
    c->postgres.conninfo = tern_arena_printf(&c->arena, "%.*shost=localhost%s", (int)(at - ci), ci,
                                             at + strlen("host=127.0.0.1"));
    tern_store *s = NULL;
    char *err = NULL;
    if (tern_store_open(c, &s, &err) != 0)
        fail_msg("open: %s", err);
    mk_account(s, "example.test", "named@example.test");
    tern_store_req *r = req(TERN_STORE_ACCOUNT_GET);
    r->in.account = "named@example.test";
    assert_int_equal(run(s, r), 0);
    tern_store_req_free(r);
    tern_store_close(s);
    free_config(c);
}

/* ---- schema versions ----------------------------------------------------- */

static void t_newer_schema_refused(void **state)
{
    SKIP_WITHOUT_PG();
    fixture *f = *state;
    tern_store_close(f->s);
    f->s = NULL;
    assert_int_equal(exec_on(ci, "UPDATE meta SET value = '99' WHERE key = 'schema_version'"), 0);
    tern_store *s = NULL;
    char *err = NULL;
    assert_int_not_equal(tern_store_open(f->cfg, &s, &err), 0);
    assert_non_null(err);
    assert_non_null(strstr(err, "newer"));
    free(err);
    assert_int_equal(exec_on(ci, "UPDATE meta SET value = '1' WHERE key = 'schema_version'"), 0);
    assert_int_equal(tern_store_open(f->cfg, &f->s, &err), 0);
}

/* Which statements get a name (pure: no database). A text is prepared on
 * its second sight and keeps its id; one seen once, a utility statement,
 * or any text once the table is full stays unnamed. */
static void t_auto_stmt(void **state)
{
    (void)state;
    pg_conn *c = calloc(1, sizeof *c);
    assert_non_null(c);
    const char *q = "SELECT m.uid FROM messages m WHERE m.mailbox_id = $1";
    assert_int_equal(pg_conn_auto_stmt(c, q), -1);
    assert_int_equal(pg_conn_auto_stmt(c, q), PG_AUTO_FIRST);
    assert_int_equal(pg_conn_auto_stmt(c, q), PG_AUTO_FIRST);
    const char *cur = "DECLARE tern_fetch NO SCROLL CURSOR FOR SELECT $1::int";
    assert_int_equal(pg_conn_auto_stmt(c, cur), -1);
    assert_int_equal(pg_conn_auto_stmt(c, cur), -1);
    char text[PG_AUTO_MAX + 2][64];
    for (int i = 1; i < PG_AUTO_MAX + 1; i++) {
        snprintf(text[i], sizeof text[i], "SELECT %d WHERE $1::int = %d", i, i);
        assert_int_equal(pg_conn_auto_stmt(c, text[i]), -1);
        int id = pg_conn_auto_stmt(c, text[i]);
        if (i < PG_AUTO_MAX)
            assert_int_equal(id, PG_AUTO_FIRST + i);
        else
            assert_int_equal(id, -1); /* full: unnamed from now on */
    }
    assert_int_equal(pg_conn_auto_stmt(c, q), PG_AUTO_FIRST);
    assert_int_equal(c->n_auto, PG_AUTO_MAX);
    for (int i = 0; i < c->n_auto; i++)
        free(c->autos[i].sql);
    free(c);
}

int main(void)
{
    base_ci = getenv("TERN_TEST_PG_CONNINFO");
    if (base_ci && !*base_ci)
        base_ci = NULL;
    const char *lv = getenv("TERN_LOG");
    tern_log_configure(lv && *lv ? lv : "error", NULL);
    if (!base_ci)
        printf("skip: TERN_TEST_PG_CONNINFO is not set; the PostgreSQL backend tests are "
               "skipped (tests/pg/start prints one)\n");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_auto_stmt),
        cmocka_unit_test_setup_teardown(t_hostile_values, setup, teardown),
        cmocka_unit_test_setup_teardown(t_shared_bodies_and_chunks, setup, teardown),
        cmocka_unit_test_setup_teardown(t_fetch_pages, setup, teardown),
        cmocka_unit_test_setup_teardown(t_body_search_batches, setup, teardown),
        cmocka_unit_test_setup_teardown(t_foreign_notify_and_kill, setup, teardown),
        cmocka_unit_test_setup_teardown(t_second_host, setup, teardown),
        cmocka_unit_test_setup_teardown(t_host_name, setup, teardown),
        cmocka_unit_test_setup_teardown(t_newer_schema_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
