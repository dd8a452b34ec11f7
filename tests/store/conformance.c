/* The store conformance suite: every store.h call and its error paths,
 * change events, and concurrent appends, run against the backend named on
 * the command line (`conformance local` or `conformance pg`). Both backends
 * must pass the same tests: a difference is a bug in one of them (or in
 * store.h's wording, which is then fixed there). pg takes the cluster from
 * TERN_TEST_PG_CONNINFO (tests/pg/start) and works in a database of its
 * own, created and dropped here; without it the pg run is skipped (77).
 * Trusts: the backend to return what store.h promises; every result is
 * checked before use (counts against arrays, NULLs). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>
#include <sys/time.h>
#include <libpq-fe.h>

#include "tests/store/harness.h"

static harness H;
static char tacct[64];         /* a fresh account per test */
static unsigned acct_seq;

/* Requests made by a test, freed by its teardown: results stay readable
 * for the whole test and nothing leaks when it passes. */
static tern_store_req **tracked;
static size_t n_tracked, cap_tracked;

static tern_store_req *R(tern_store_op op)
{
    tern_store_req *r = hreq(op);
    if (n_tracked == cap_tracked) {
        cap_tracked = cap_tracked ? cap_tracked * 2 : 256;
        tracked = realloc(tracked, cap_tracked * sizeof(*tracked));
        assert_non_null(tracked);
    }
    tracked[n_tracked++] = r;
    return r;
}

static void free_tracked(void)
{
    for (size_t i = 0; i < n_tracked; i++)
        tern_store_req_free(tracked[i]);
    n_tracked = 0;
}

#define run_st(r, want) run_st_((r), (want), #r, __LINE__)
#define run_ok(r) run_st_((r), TERN_STORE_OK, #r, __LINE__)
static void run_st_(tern_store_req *r, int want, const char *what, int line)
{
    int got = hrun(&H, r);
    if (got != r->status)
        fail_msg("line %d: %s: run_sync returned %d but status is %d", line, what, got, r->status);
    if (got != want)
        fail_msg("line %d: op %d (%s): got %s (%d), want %s (%d); error: %s", line, (int)r->op,
                 what, tern_store_strerror(got), got, tern_store_strerror(want), want, r->error);
}

/* ---- helpers over the API ------------------------------------------- */

static const tern_uid_range ALL_RANGE = {1, UINT32_MAX};
static const tern_uid_set ALL_UIDS = {&ALL_RANGE, 1};

static tern_uid_set one_range(uint32_t first, uint32_t last)
{
    tern_uid_range *rg = tern_arena_alloc(&R(TERN_STORE_FETCH)->arena, sizeof(*rg));
    assert_non_null(rg);
    rg->first = first;
    rg->last = last;
    return (tern_uid_set){rg, 1};
}

static void mb_create_in(const char *account, const char *name)
{
    tern_store_req *r = R(TERN_STORE_MAILBOX_CREATE);
    r->in.account = account;
    r->in.name = name;
    run_ok(r);
}

static void mb_create(const char *name)
{
    mb_create_in(tacct, name);
}

static tern_mailbox_info *mb_status_in(const char *account, const char *name)
{
    tern_store_req *r = R(TERN_STORE_MAILBOX_STATUS);
    r->in.account = account;
    r->in.name = name;
    run_ok(r);
    return &r->out.mailbox;
}

static tern_mailbox_info *mb_status(const char *name)
{
    return mb_status_in(tacct, name);
}

static tern_store_req *mb_list(const char *pattern, bool subscribed_only)
{
    tern_store_req *r = R(TERN_STORE_MAILBOX_LIST);
    r->in.account = tacct;
    r->in.pattern = pattern;
    r->in.subscribed_only = subscribed_only;
    run_ok(r);
    if (r->out.n_mailboxes)
        assert_non_null(r->out.mailboxes);
    return r;
}

static tern_mailbox_info *listed(tern_store_req *r, const char *name)
{
    for (size_t i = 0; i < r->out.n_mailboxes; i++)
        if (r->out.mailboxes[i].name && strcmp(r->out.mailboxes[i].name, name) == 0)
            return &r->out.mailboxes[i];
    return NULL;
}

/* The names a LIST returned must be exactly `want` (any order). */
static void expect_list(tern_store_req *r, const char *const *want, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (listed(r, want[i]) == NULL)
            fail_msg("LIST %s: %s missing", r->in.pattern ? r->in.pattern : "(all)", want[i]);
    if (r->out.n_mailboxes != n) {
        for (size_t i = 0; i < r->out.n_mailboxes; i++)
            print_message("  listed: %s\n", r->out.mailboxes[i].name);
        fail_msg("LIST %s: %zu mailboxes, want %zu", r->in.pattern ? r->in.pattern : "(all)",
                 r->out.n_mailboxes, n);
    }
}

static tern_store_req *append_full(const char *account, const char *mbox, const char *msg,
                                   unsigned flags, const char **kws, size_t n_kws, int64_t date,
                                   int want)
{
    tern_store_req *r = R(TERN_STORE_APPEND);
    r->in.account = account;
    r->in.name = mbox;
    r->in.data = (const uint8_t *)msg;
    r->in.len = strlen(msg);
    r->in.flags = flags;
    r->in.keywords.names = kws;
    r->in.keywords.n = n_kws;
    r->in.internal_date = date;
    run_st(r, want);
    return r;
}

static tern_append_result *append(const char *mbox, const char *msg, unsigned flags)
{
    return &append_full(tacct, mbox, msg, flags, NULL, 0, 0, TERN_STORE_OK)->out.append;
}

static tern_store_req *fetch(const char *mbox, tern_uid_set uids)
{
    tern_store_req *r = R(TERN_STORE_FETCH);
    r->in.account = tacct;
    r->in.name = mbox;
    r->in.uids = uids;
    run_ok(r);
    if (r->out.n_messages)
        assert_non_null(r->out.messages);
    return r;
}

static tern_message_info *fetched(tern_store_req *r, uint32_t uid)
{
    for (size_t i = 0; i < r->out.n_messages; i++)
        if (r->out.messages[i].uid == uid)
            return &r->out.messages[i];
    return NULL;
}

static tern_message_info *fetch_one(const char *mbox, uint32_t uid)
{
    tern_store_req *r = fetch(mbox, one_range(uid, uid));
    tern_message_info *m = fetched(r, uid);
    if (m == NULL)
        fail_msg("FETCH %s uid %u: not returned", mbox, uid);
    assert_int_equal(r->out.n_messages, 1);
    return m;
}

static bool has_keyword(const tern_message_info *m, const char *kw)
{
    for (size_t i = 0; i < m->n_keywords; i++)
        if (m->keywords[i] && strcasecmp(m->keywords[i], kw) == 0)
            return true;
    return false;
}

static tern_store_req *set_flags(const char *mbox, tern_uid_set uids, tern_flags_mode mode,
                                 unsigned flags, const char **kws, size_t n_kws,
                                 uint64_t unchanged_since, int want)
{
    tern_store_req *r = R(TERN_STORE_SET_FLAGS);
    r->in.account = tacct;
    r->in.name = mbox;
    r->in.uids = uids;
    r->in.flags_mode = mode;
    r->in.flags = flags;
    r->in.keywords.names = kws;
    r->in.keywords.n = n_kws;
    r->in.unchanged_since = unchanged_since;
    run_st(r, want);
    return r;
}

static uint8_t *body_of(const char *account, const char *mbox, uint32_t uid, size_t chunk,
                        size_t *len_r)
{
    int st;
    uint8_t *b = harness_fetch_body(&H, account, mbox, uid, chunk, len_r, &st);
    if (b == NULL)
        fail_msg("FETCH_BODY %s uid %u: %s", mbox, uid, tern_store_strerror(st));
    return b;
}

static void expect_body(const char *mbox, uint32_t uid, const char *msg)
{
    size_t len;
    uint8_t *b = body_of(tacct, mbox, uid, 1 << 20, &len);
    if (len != strlen(msg) || memcmp(b, msg, len) != 0) {
        free(b);
        fail_msg("FETCH_BODY %s uid %u: %zu bytes differ from the %zu appended", mbox, uid, len,
                 strlen(msg));
    }
    free(b);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* out.uids must be exactly `want` (any order, no duplicates). */
static void expect_uids_(tern_store_req *r, const uint32_t *want, size_t n, const char *what,
                         int line)
{
    uint32_t got[256];
    if (r->out.n_uids > 256)
        fail_msg("line %d: %s: %zu uids", line, what, r->out.n_uids);
    if (r->out.n_uids)
        assert_non_null(r->out.uids);
    memcpy(got, r->out.uids, r->out.n_uids * sizeof(uint32_t));
    qsort(got, r->out.n_uids, sizeof(uint32_t), cmp_u32);
    char gs[512] = "", ws[512] = "";
    for (size_t i = 0; i < r->out.n_uids; i++)
        snprintf(gs + strlen(gs), sizeof(gs) - strlen(gs), "%u ", got[i]);
    for (size_t i = 0; i < n; i++)
        snprintf(ws + strlen(ws), sizeof(ws) - strlen(ws), "%u ", want[i]);
    if (r->out.n_uids != n || (n && memcmp(got, want, n * sizeof(uint32_t)) != 0))
        fail_msg("line %d: %s: got { %s} want { %s}", line, what, gs, ws);
}
#define expect_uids(r, what, ...)                                                         \
    do {                                                                                  \
        const uint32_t w_[] = {__VA_ARGS__};                                              \
        expect_uids_((r), w_ + 1, sizeof(w_) / sizeof(w_[0]) - 1, (what), __LINE__);     \
    } while (0)

/* ---- fixtures --------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    if (harness_open(&H) != 0)
        return -1;
    tern_store_req *r = hreq(TERN_STORE_DOMAIN_ADD);
    r->in.domain = "example.test";
    r->in.name = "example.test";
    int st = hrun(&H, r);
    if (st != TERN_STORE_OK)
        fprintf(stderr, "DOMAIN_ADD example.test: %s %s\n", tern_store_strerror(st), r->error);
    tern_store_req_free(r);
    return st == TERN_STORE_OK ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    free_tracked();
    free(tracked);
    harness_close_store(&H);
    return 0;
}

static int test_setup(void **state)
{
    (void)state;
    snprintf(tacct, sizeof(tacct), "u%u@example.test", ++acct_seq);
    int st = harness_account(&H, tacct, 0, 0);
    if (st != TERN_STORE_OK) {
        fprintf(stderr, "ACCOUNT_CREATE %s: %s\n", tacct, tern_store_strerror(st));
        return -1;
    }
    return 0;
}

static int test_teardown(void **state)
{
    (void)state;
    free_tracked();
    return 0;
}

/* ---- messages used by several tests ----------------------------------- */

static const char MSG_SIMPLE[] =
    "From: Alice <alice@example.org>\r\n"
    "To: bob@example.test\r\n"
    "Subject: hello\r\n"
    "Message-ID: <simple@example.org>\r\n"
    "Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    "\r\n"
    "Hello, Bob.\r\n";

/* ======================================================================
 * directory
 * ====================================================================== */

static void t_domains(void **state)
{
    (void)state;
    tern_store_req *r = R(TERN_STORE_DOMAIN_ADD);
    r->in.domain = r->in.name = "example.test";
    run_st(r, TERN_STORE_EEXISTS);

    r = R(TERN_STORE_DOMAIN_ADD);
    r->in.domain = r->in.name = "bad..domain";
    run_st(r, TERN_STORE_EINVAL);
    r = R(TERN_STORE_DOMAIN_ADD);
    r->in.domain = r->in.name = "";
    run_st(r, TERN_STORE_EINVAL);

    r = R(TERN_STORE_DOMAIN_ADD);
    r->in.domain = r->in.name = "empty.test";
    run_ok(r);

    r = R(TERN_STORE_DOMAIN_LIST);
    run_ok(r);
    bool seen_ex = false, seen_empty = false;
    for (size_t i = 0; i < r->out.n_names; i++) {
        seen_ex |= strcmp(r->out.names[i], "example.test") == 0;
        seen_empty |= strcmp(r->out.names[i], "empty.test") == 0;
    }
    assert_true(seen_ex);
    assert_true(seen_empty);

    /* A domain with accounts cannot go; an empty one can, once. */
    r = R(TERN_STORE_DOMAIN_REMOVE);
    r->in.domain = r->in.name = "example.test";
    run_st(r, TERN_STORE_ENOTEMPTY);
    r = R(TERN_STORE_DOMAIN_REMOVE);
    r->in.domain = r->in.name = "empty.test";
    run_ok(r);
    r = R(TERN_STORE_DOMAIN_REMOVE);
    r->in.domain = r->in.name = "empty.test";
    run_st(r, TERN_STORE_ENOTFOUND);

    r = R(TERN_STORE_DOMAIN_LIST);
    run_ok(r);
    for (size_t i = 0; i < r->out.n_names; i++)
        assert_string_not_equal(r->out.names[i], "empty.test");
}

static void t_accounts(void **state)
{
    (void)state;
    tern_store_req *r = R(TERN_STORE_ACCOUNT_CREATE);
    r->in.account = "carol@example.test";
    r->in.password_hash = "$argon2id$v=19$m=65536,t=2,p=1$c2FsdA$aGFzaA";
    r->in.quota_bytes = 1000000;
    r->in.quota_messages = 500;
    run_ok(r);

    r = R(TERN_STORE_ACCOUNT_CREATE);
    r->in.account = "carol@example.test";
    run_st(r, TERN_STORE_EEXISTS);
    r = R(TERN_STORE_ACCOUNT_CREATE);
    r->in.account = "no-at-sign";
    run_st(r, TERN_STORE_EINVAL);
    r = R(TERN_STORE_ACCOUNT_CREATE);
    r->in.account = "a/b@example.test";
    run_st(r, TERN_STORE_EINVAL);
    r = R(TERN_STORE_ACCOUNT_CREATE);
    r->in.account = "dave@unknown-domain.test";
    run_st(r, TERN_STORE_ENOTFOUND);

    r = R(TERN_STORE_ACCOUNT_GET);
    r->in.account = "carol@example.test";
    run_ok(r);
    assert_string_equal(r->out.account.name, "carol@example.test");
    assert_int_equal(r->out.account.quota_bytes, 1000000);
    assert_int_equal(r->out.account.quota_messages, 500);
    assert_int_equal(r->out.account.used_bytes, 0);
    assert_int_equal(r->out.account.used_messages, 0);
    assert_true(r->out.account.has_password);

    r = R(TERN_STORE_ACCOUNT_GET);
    r->in.account = "nobody@example.test";
    run_st(r, TERN_STORE_ENOTFOUND);

    /* The per-test account was made without a password. */
    r = R(TERN_STORE_ACCOUNT_GET);
    r->in.account = tacct;
    run_ok(r);
    assert_false(r->out.account.has_password);
    r = R(TERN_STORE_ACCOUNT_SET_PASSWORD);
    r->in.account = tacct;
    r->in.password_hash = "{PLAIN}secret";
    run_ok(r);
    r = R(TERN_STORE_ACCOUNT_GET);
    r->in.account = tacct;
    run_ok(r);
    assert_true(r->out.account.has_password);
    r = R(TERN_STORE_ACCOUNT_SET_PASSWORD);
    r->in.account = "nobody@example.test";
    r->in.password_hash = "{PLAIN}x";
    run_st(r, TERN_STORE_ENOTFOUND);

    r = R(TERN_STORE_ACCOUNT_SET_QUOTA);
    r->in.account = tacct;
    r->in.quota_bytes = 4096;
    r->in.quota_messages = 7;
    run_ok(r);
    r = R(TERN_STORE_QUOTA_GET);
    r->in.account = tacct;
    run_ok(r);
    assert_int_equal(r->out.account.quota_bytes, 4096);
    assert_int_equal(r->out.account.quota_messages, 7);
    r = R(TERN_STORE_ACCOUNT_SET_QUOTA);
    r->in.account = "nobody@example.test";
    run_st(r, TERN_STORE_ENOTFOUND);
    r = R(TERN_STORE_QUOTA_GET);
    r->in.account = "nobody@example.test";
    run_st(r, TERN_STORE_ENOTFOUND);

    r = R(TERN_STORE_ACCOUNT_LIST);
    r->in.domain = "example.test";
    run_ok(r);
    bool carol = false, me = false;
    for (size_t i = 0; i < r->out.n_accounts; i++) {
        carol |= strcmp(r->out.accounts[i].name, "carol@example.test") == 0;
        me |= strcmp(r->out.accounts[i].name, tacct) == 0;
    }
    assert_true(carol);
    assert_true(me);

    r = R(TERN_STORE_ACCOUNT_DELETE);
    r->in.account = "carol@example.test";
    run_ok(r);
    r = R(TERN_STORE_ACCOUNT_GET);
    r->in.account = "carol@example.test";
    run_st(r, TERN_STORE_ENOTFOUND);
    r = R(TERN_STORE_ACCOUNT_DELETE);
    r->in.account = "carol@example.test";
    run_st(r, TERN_STORE_ENOTFOUND);
    r = R(TERN_STORE_ACCOUNT_LIST);
    r->in.domain = "example.test";
    run_ok(r);
    for (size_t i = 0; i < r->out.n_accounts; i++)
        assert_string_not_equal(r->out.accounts[i].name, "carol@example.test");

    /* A deleted account's name can be used again, with fresh mailboxes. */
    r = R(TERN_STORE_ACCOUNT_CREATE);
    r->in.account = "carol@example.test";
    run_ok(r);
    tern_mailbox_info *in = mb_status_in("carol@example.test", "INBOX");
    assert_int_equal(in->messages, 0);
}

static tern_store_req *rcpt(const char *addr)
{
    tern_store_req *r = R(TERN_STORE_RCPT_LOOKUP);
    r->in.name = addr;
    run_ok(r);
    if (r->out.rcpt.n_targets) {
        assert_non_null(r->out.rcpt.targets);
        assert_non_null(r->out.rcpt.target_is_local);
    }
    return r;
}

static bool rcpt_has(tern_store_req *r, const char *target, bool local)
{
    for (size_t i = 0; i < r->out.rcpt.n_targets; i++)
        if (strcmp(r->out.rcpt.targets[i], target) == 0)
            return r->out.rcpt.target_is_local[i] == local;
    return false;
}

static void alias_add(const char *addr, const char *const *targets, size_t n, int want)
{
    tern_store_req *r = R(TERN_STORE_ALIAS_ADD);
    r->in.name = addr;
    r->in.targets = targets;
    r->in.n_targets = n;
    run_st(r, want);
}

static void t_aliases_and_rcpt(void **state)
{
    (void)state;
    /* Its own domain, so that the catch-all does not change what other
     * tests' lookups in example.test answer. */
    assert_int_equal(harness_account(&H, "alice@alias.test", 0, 0), TERN_STORE_OK);
    assert_int_equal(harness_account(&H, "bob@alias.test", 0, 0), TERN_STORE_OK);

    tern_store_req *r = rcpt("alice@alias.test");
    assert_int_equal(r->out.rcpt.kind, TERN_RCPT_ACCOUNT);
    assert_int_equal(r->out.rcpt.n_targets, 1);
    assert_string_equal(r->out.rcpt.targets[0], "alice@alias.test");
    assert_true(r->out.rcpt.target_is_local[0]);
    assert_null(r->out.rcpt.detail);

    /* The domain part is case-insensitive. */
    r = rcpt("alice@ALIAS.Test");
    assert_int_equal(r->out.rcpt.kind, TERN_RCPT_ACCOUNT);
    assert_string_equal(r->out.rcpt.targets[0], "alice@alias.test");

    r = rcpt("alice+lists@alias.test");
    assert_int_equal(r->out.rcpt.kind, TERN_RCPT_ACCOUNT);
    assert_int_equal(r->out.rcpt.n_targets, 1);
    assert_string_equal(r->out.rcpt.targets[0], "alice@alias.test");
    assert_non_null(r->out.rcpt.detail);
    assert_string_equal(r->out.rcpt.detail, "lists");

    r = rcpt("nobody@alias.test");
    assert_int_equal(r->out.rcpt.kind, TERN_RCPT_UNKNOWN);
    r = rcpt("nobody+x@alias.test");
    assert_int_equal(r->out.rcpt.kind, TERN_RCPT_UNKNOWN);
    r = rcpt("alice@elsewhere.example");
    assert_int_equal(r->out.rcpt.kind, TERN_RCPT_NOT_LOCAL);

    /* An alias fanning out to two accounts and one external address. */
    const char *team[] = {"alice@alias.test", "bob@alias.test", "carol@partner.example"};
    alias_add("team@alias.test", team, 3, TERN_STORE_OK);
    alias_add("team@alias.test", team, 1, TERN_STORE_EEXISTS);
    r = rcpt("team@alias.test");
    assert_int_equal(r->out.rcpt.kind, TERN_RCPT_ALIAS);
    assert_false(r->out.rcpt.catch_all);
    assert_int_equal(r->out.rcpt.n_targets, 3);
    assert_true(rcpt_has(r, "alice@alias.test", true));
    assert_true(rcpt_has(r, "bob@alias.test", true));
    assert_true(rcpt_has(r, "carol@partner.example", false));

    r = rcpt("team+x@alias.test");
    assert_int_equal(r->out.rcpt.kind, TERN_RCPT_ALIAS);
    assert_int_equal(r->out.rcpt.n_targets, 3);
    assert_non_null(r->out.rcpt.detail);
    assert_string_equal(r->out.rcpt.detail, "x");

    const char *bad[] = {"not an address"};
    alias_add("bad@alias.test", bad, 1, TERN_STORE_EINVAL);
    alias_add("x@alias.test", team, 0, TERN_STORE_EINVAL);

    /* Catch-all: unknown local parts go to it; accounts and aliases win. */
    const char *catchall[] = {"bob@alias.test"};
    alias_add("@alias.test", catchall, 1, TERN_STORE_OK);
    r = rcpt("whoever@alias.test");
    assert_int_equal(r->out.rcpt.kind, TERN_RCPT_ALIAS);
    assert_true(r->out.rcpt.catch_all); /* submission must not take it as owned */
    assert_int_equal(r->out.rcpt.n_targets, 1);
    assert_true(rcpt_has(r, "bob@alias.test", true));
    r = rcpt("alice@alias.test");
    assert_int_equal(r->out.rcpt.kind, TERN_RCPT_ACCOUNT);
    assert_string_equal(r->out.rcpt.targets[0], "alice@alias.test");
    r = rcpt("team@alias.test");
    assert_int_equal(r->out.rcpt.n_targets, 3);

    r = R(TERN_STORE_ALIAS_LIST);
    r->in.domain = "alias.test";
    run_ok(r);
    bool team_seen = false, catch_seen = false;
    for (size_t i = 0; i < r->out.n_names; i++) {
        const char *n = r->out.names[i];
        if (strncmp(n, "team@alias.test ", 16) == 0) {
            team_seen = true;
            assert_non_null(strstr(n, "alice@alias.test"));
            assert_non_null(strstr(n, "carol@partner.example"));
        }
        if (strncmp(n, "@alias.test ", 12) == 0)
            catch_seen = true;
    }
    assert_true(team_seen);
    assert_true(catch_seen);

    r = R(TERN_STORE_ALIAS_REMOVE);
    r->in.name = "@alias.test";
    run_ok(r);
    r = rcpt("whoever@alias.test");
    assert_int_equal(r->out.rcpt.kind, TERN_RCPT_UNKNOWN);
    r = R(TERN_STORE_ALIAS_REMOVE);
    r->in.name = "team@alias.test";
    run_ok(r);
    r = rcpt("team@alias.test");
    assert_int_equal(r->out.rcpt.kind, TERN_RCPT_UNKNOWN);
    r = R(TERN_STORE_ALIAS_REMOVE);
    r->in.name = "team@alias.test";
    run_st(r, TERN_STORE_ENOTFOUND);

    /* A deleted account is no longer deliverable. */
    r = R(TERN_STORE_ACCOUNT_DELETE);
    r->in.account = "bob@alias.test";
    run_ok(r);
    r = rcpt("bob@alias.test");
    assert_int_equal(r->out.rcpt.kind, TERN_RCPT_UNKNOWN);
}

/* ======================================================================
 * mailboxes
 * ====================================================================== */

static void t_default_mailboxes(void **state)
{
    (void)state;
    tern_store_req *r = mb_list(NULL, false);
    assert_int_equal(r->out.n_mailboxes, 6);
    for (size_t i = 0; i < 6; i++) {
        const struct tern_store_default_mailbox *d = &tern_store_default_mailboxes[i];
        tern_mailbox_info *m = listed(r, d->name);
        if (m == NULL)
            fail_msg("default mailbox %s missing", d->name);
        assert_int_equal(m->special_use, d->special_use);
        assert_int_equal(m->messages, 0);
        assert_true(m->uidvalidity != 0);
        assert_true(m->uidnext >= 1);
        assert_true(m->id != 0);
        tern_mailbox_info *st = mb_status(d->name);
        assert_int_equal(st->special_use, d->special_use);
        assert_int_equal(st->id, m->id);
    }
    /* Ids are distinct. */
    for (size_t i = 0; i < r->out.n_mailboxes; i++)
        for (size_t j = i + 1; j < r->out.n_mailboxes; j++)
            assert_true(r->out.mailboxes[i].id != r->out.mailboxes[j].id);
    /* INBOX in any case. */
    assert_int_equal(mb_status("inbox")->id, listed(r, "INBOX")->id);
    assert_int_equal(mb_status("InBoX")->id, listed(r, "INBOX")->id);

    tern_store_req *s = R(TERN_STORE_MAILBOX_STATUS);
    s->in.account = tacct;
    s->in.name = "Nope";
    run_st(s, TERN_STORE_ENOTFOUND);
    s = R(TERN_STORE_MAILBOX_STATUS);
    s->in.account = "nobody@example.test";
    s->in.name = "INBOX";
    run_st(s, TERN_STORE_ENOTFOUND);
}

static void t_mailbox_create_list(void **state)
{
    (void)state;
    mb_create("Work");
    mb_create("Work/Projects");
    mb_create("Work/Projects/Tern");
    mb_create("Workshop");
    mb_create("Caf\xc3\xa9");

    tern_store_req *r = R(TERN_STORE_MAILBOX_CREATE);
    r->in.account = tacct;
    r->in.name = "Work";
    run_st(r, TERN_STORE_EEXISTS);
    r = R(TERN_STORE_MAILBOX_CREATE);
    r->in.account = tacct;
    r->in.name = "inbox";
    run_st(r, TERN_STORE_EEXISTS);
    static const char *const invalid[] = {"", "/lead", "trail/", "a//b", "a/../b", "..",
                                          "star*", "pct%", "ctl\x01", "bad\xff" "utf8"};
    for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        r = R(TERN_STORE_MAILBOX_CREATE);
        r->in.account = tacct;
        r->in.name = invalid[i];
        run_st(r, TERN_STORE_EINVAL);
    }
    r = R(TERN_STORE_MAILBOX_CREATE);
    r->in.account = "nobody@example.test";
    r->in.name = "X";
    run_st(r, TERN_STORE_ENOTFOUND);

    /* create_parents makes every missing level. */
    r = R(TERN_STORE_MAILBOX_CREATE);
    r->in.account = tacct;
    r->in.name = "Deep/Er/Est";
    r->in.create_parents = true;
    run_ok(r);
    mb_status("Deep");
    mb_status("Deep/Er");
    mb_status("Deep/Er/Est");

    r = mb_list("*", false);
    static const char *const all[] = {"INBOX", "Drafts", "Sent", "Trash", "Junk", "Archive",
                                      "Work", "Work/Projects", "Work/Projects/Tern", "Workshop",
                                      "Caf\xc3\xa9", "Deep", "Deep/Er", "Deep/Er/Est"};
    expect_list(r, all, 14);
    assert_true(listed(r, "Work")->has_children);
    assert_true(listed(r, "Work/Projects")->has_children);
    assert_false(listed(r, "Work/Projects/Tern")->has_children);
    assert_false(listed(r, "Workshop")->has_children);
    assert_false(listed(r, "INBOX")->has_children);

    static const char *const top[] = {"INBOX", "Drafts", "Sent", "Trash", "Junk", "Archive",
                                      "Work", "Workshop", "Caf\xc3\xa9", "Deep"};
    expect_list(mb_list("%", false), top, 10);
    static const char *const under_work[] = {"Work/Projects", "Work/Projects/Tern"};
    expect_list(mb_list("Work/*", false), under_work, 2);
    static const char *const child_work[] = {"Work/Projects"};
    expect_list(mb_list("Work/%", false), child_work, 1);
    static const char *const work_prefix[] = {"Work", "Workshop"};
    expect_list(mb_list("Work%", false), work_prefix, 2);
    static const char *const work_star[] = {"Work", "Work/Projects", "Work/Projects/Tern",
                                            "Workshop"};
    expect_list(mb_list("Work*", false), work_star, 4);
    static const char *const mid[] = {"Work/Projects/Tern"};
    expect_list(mb_list("*/Tern", false), mid, 1);
    static const char *const inbox[] = {"INBOX"};
    expect_list(mb_list("inbox", false), inbox, 1);
    expect_list(mb_list("Nothing*", false), NULL, 0);
}

static void t_mailbox_subscribe_special(void **state)
{
    (void)state;
    mb_create("Lists");
    mb_create("Other");
    tern_store_req *r = R(TERN_STORE_MAILBOX_SUBSCRIBE);
    r->in.account = tacct;
    r->in.name = "Lists";
    r->in.subscribed = true;
    run_ok(r);
    assert_true(mb_status("Lists")->subscribed);
    assert_false(mb_status("Other")->subscribed);

    r = mb_list("*", true);
    assert_non_null(listed(r, "Lists"));
    assert_null(listed(r, "Other"));
    for (size_t i = 0; i < r->out.n_mailboxes; i++)
        assert_true(r->out.mailboxes[i].subscribed);
    r = mb_list("*", false);
    assert_true(listed(r, "Lists")->subscribed);
    assert_false(listed(r, "Other")->subscribed);

    r = R(TERN_STORE_MAILBOX_SUBSCRIBE);
    r->in.account = tacct;
    r->in.name = "Lists";
    r->in.subscribed = false;
    run_ok(r);
    assert_false(mb_status("Lists")->subscribed);
    assert_null(listed(mb_list("*", true), "Lists"));

    r = R(TERN_STORE_MAILBOX_SUBSCRIBE);
    r->in.account = "nobody@example.test";
    r->in.name = "INBOX";
    r->in.subscribed = true;
    run_st(r, TERN_STORE_ENOTFOUND);

    r = R(TERN_STORE_MAILBOX_SET_SPECIAL);
    r->in.account = tacct;
    r->in.name = "Other";
    r->in.special_use = TERN_SPECIAL_ALL;
    run_ok(r);
    assert_int_equal(mb_status("Other")->special_use, TERN_SPECIAL_ALL);
    assert_int_equal(listed(mb_list("Other", false), "Other")->special_use, TERN_SPECIAL_ALL);
    r = R(TERN_STORE_MAILBOX_SET_SPECIAL);
    r->in.account = tacct;
    r->in.name = "Other";
    r->in.special_use = 0;
    run_ok(r);
    assert_int_equal(mb_status("Other")->special_use, 0);
    r = R(TERN_STORE_MAILBOX_SET_SPECIAL);
    r->in.account = tacct;
    r->in.name = "Missing";
    r->in.special_use = TERN_SPECIAL_ALL;
    run_st(r, TERN_STORE_ENOTFOUND);
}

static void t_mailbox_rename(void **state)
{
    (void)state;
    mb_create("Work");
    mb_create("Work/Projects");
    mb_create("Work/Projects/Tern");
    mb_create("Workshop");
    uint64_t id_work = mb_status("Work")->id, id_proj = mb_status("Work/Projects")->id;
    uint32_t uv_proj = mb_status("Work/Projects")->uidvalidity;
    tern_append_result *a = append("Work/Projects", MSG_SIMPLE, TERN_FLAG_SEEN);
    uint32_t uid = a->uid;

    tern_store_req *r = R(TERN_STORE_MAILBOX_RENAME);
    r->in.account = tacct;
    r->in.name = "Work";
    r->in.new_name = "Job";
    run_ok(r);

    tern_store_req *l = mb_list("*", false);
    assert_null(listed(l, "Work"));
    assert_null(listed(l, "Work/Projects"));
    assert_null(listed(l, "Work/Projects/Tern"));
    assert_non_null(listed(l, "Workshop"));
    assert_non_null(listed(l, "Job"));
    assert_non_null(listed(l, "Job/Projects"));
    assert_non_null(listed(l, "Job/Projects/Tern"));
    /* Ids survive a rename (JMAP Mailbox ids), and so do the messages
     * with their UIDs (RFC 9051: UIDVALIDITY may stay when UIDs do). */
    assert_int_equal(mb_status("Job")->id, id_work);
    tern_mailbox_info *p = mb_status("Job/Projects");
    assert_int_equal(p->id, id_proj);
    assert_int_equal(p->messages, 1);
    assert_int_equal(p->uidvalidity, uv_proj);
    tern_message_info *m = fetch_one("Job/Projects", uid);
    assert_true(m->flags & TERN_FLAG_SEEN);
    expect_body("Job/Projects", uid, MSG_SIMPLE);

    r = R(TERN_STORE_MAILBOX_STATUS);
    r->in.account = tacct;
    r->in.name = "Work/Projects";
    run_st(r, TERN_STORE_ENOTFOUND);

    /* A rename to a deeper level of a new hierarchy. */
    r = R(TERN_STORE_MAILBOX_RENAME);
    r->in.account = tacct;
    r->in.name = "Job/Projects/Tern";
    r->in.new_name = "Job/Tern";
    run_ok(r);
    assert_false(listed(mb_list("*", false), "Job/Projects")->has_children);

    r = R(TERN_STORE_MAILBOX_RENAME);
    r->in.account = tacct;
    r->in.name = "Job";
    r->in.new_name = "Workshop";
    run_st(r, TERN_STORE_EEXISTS);
    r = R(TERN_STORE_MAILBOX_RENAME);
    r->in.account = tacct;
    r->in.name = "Job";
    r->in.new_name = "inbox";
    run_st(r, TERN_STORE_EEXISTS);
    r = R(TERN_STORE_MAILBOX_RENAME);
    r->in.account = tacct;
    r->in.name = "Missing";
    r->in.new_name = "Found";
    run_st(r, TERN_STORE_ENOTFOUND);
    r = R(TERN_STORE_MAILBOX_RENAME);
    r->in.account = tacct;
    r->in.name = "Job";
    r->in.new_name = "bad*name";
    run_st(r, TERN_STORE_EINVAL);
}

/* RFC 9051 6.3.6, which both backends implement: renaming INBOX moves its
 * messages into the new mailbox and leaves INBOX there, empty, with its
 * children where they were. (store.h's EFORBIDDEN comment names "rename
 * INBOX" as an example; the backends agree on the RFC instead.) */
static void t_mailbox_rename_inbox(void **state)
{
    (void)state;
    mb_create("INBOX/Child");
    tern_append_result *a1 = append("INBOX", MSG_SIMPLE, TERN_FLAG_SEEN);
    char id1[128];
    snprintf(id1, sizeof(id1), "%s", a1->id);
    append("INBOX", MSG_SIMPLE, 0);
    tern_mailbox_info before = *mb_status("INBOX");

    tern_store_req *r = R(TERN_STORE_MAILBOX_RENAME);
    r->in.account = tacct;
    r->in.name = "Inbox";
    r->in.new_name = "Sent";
    run_st(r, TERN_STORE_EEXISTS);
    assert_int_equal(mb_status("INBOX")->messages, 2);

    r = R(TERN_STORE_MAILBOX_RENAME);
    r->in.account = tacct;
    r->in.name = "inbox";
    r->in.new_name = "OldInbox";
    run_ok(r);
    tern_mailbox_info *in = mb_status("INBOX");
    assert_int_equal(in->messages, 0);
    assert_int_equal(in->id, before.id);
    mb_status("INBOX/Child");
    tern_mailbox_info *old = mb_status("OldInbox");
    assert_int_equal(old->messages, 2);
    assert_true(old->id != before.id);
    tern_store_req *f = fetch("OldInbox", ALL_UIDS);
    assert_int_equal(f->out.n_messages, 2);
    bool found = false;
    for (size_t i = 0; i < f->out.n_messages; i++) {
        tern_message_info *m = &f->out.messages[i];
        if (strcmp(m->id, id1) == 0) {
            found = true;
            assert_int_equal(m->flags, TERN_FLAG_SEEN);
            expect_body("OldInbox", m->uid, MSG_SIMPLE);
        }
    }
    assert_true(found);
    assert_int_equal(fetch("INBOX", ALL_UIDS)->out.n_messages, 0);
    /* INBOX never hands out a UID again under its UIDVALIDITY. */
    tern_append_result *a3 = append("INBOX", MSG_SIMPLE, 0);
    assert_true(a3->uidvalidity != before.uidvalidity || a3->uid >= before.uidnext);
}

static void t_mailbox_delete(void **state)
{
    (void)state;
    mb_create("Parent");
    mb_create("Parent/Child");
    mb_create("Full");
    append("Full", MSG_SIMPLE, 0);
    append("Full", MSG_SIMPLE, 0);
    tern_mailbox_info *f = mb_status("Full");
    uint32_t old_uv = f->uidvalidity, old_next = f->uidnext;

    tern_store_req *r = R(TERN_STORE_MAILBOX_DELETE);
    r->in.account = tacct;
    r->in.name = "Parent";
    run_st(r, TERN_STORE_ENOTEMPTY);
    r = R(TERN_STORE_MAILBOX_DELETE);
    r->in.account = tacct;
    r->in.name = "INBOX";
    run_st(r, TERN_STORE_EFORBIDDEN);
    r = R(TERN_STORE_MAILBOX_DELETE);
    r->in.account = tacct;
    r->in.name = "inbox";
    run_st(r, TERN_STORE_EFORBIDDEN);
    r = R(TERN_STORE_MAILBOX_DELETE);
    r->in.account = tacct;
    r->in.name = "Missing";
    run_st(r, TERN_STORE_ENOTFOUND);

    r = R(TERN_STORE_MAILBOX_DELETE);
    r->in.account = tacct;
    r->in.name = "Parent/Child";
    run_ok(r);
    assert_false(mb_status("Parent")->has_children);
    r = R(TERN_STORE_MAILBOX_DELETE);
    r->in.account = tacct;
    r->in.name = "Parent";
    run_ok(r);

    /* A mailbox with messages goes with them, and the account's usage
     * drops; a new mailbox of the same name never reuses a UID under the
     * same UIDVALIDITY. */
    r = R(TERN_STORE_QUOTA_GET);
    r->in.account = tacct;
    run_ok(r);
    assert_int_equal(r->out.account.used_messages, 2);
    r = R(TERN_STORE_MAILBOX_DELETE);
    r->in.account = tacct;
    r->in.name = "Full";
    run_ok(r);
    r = R(TERN_STORE_QUOTA_GET);
    r->in.account = tacct;
    run_ok(r);
    assert_int_equal(r->out.account.used_messages, 0);
    assert_int_equal(r->out.account.used_bytes, 0);
    tern_store_req *l = mb_list("*", false);
    assert_null(listed(l, "Parent"));
    assert_null(listed(l, "Parent/Child"));
    assert_null(listed(l, "Full"));
    mb_create("Full");
    f = mb_status("Full");
    assert_int_equal(f->messages, 0);
    assert_true(f->uidvalidity != old_uv || f->uidnext >= old_next);
}

static void t_mailbox_status_counts(void **state)
{
    (void)state;
    tern_mailbox_info *s0 = mb_status("INBOX");
    uint32_t next0 = s0->uidnext;
    append("INBOX", MSG_SIMPLE, TERN_FLAG_SEEN);
    append("INBOX", MSG_SIMPLE, 0);
    append("INBOX", MSG_SIMPLE, TERN_FLAG_FLAGGED);
    tern_mailbox_info *s = mb_status("INBOX");
    assert_int_equal(s->messages, 3);
    assert_int_equal(s->unseen, 2);
    assert_int_equal(s->uidnext, next0 + 3);
    assert_int_equal(s->uidvalidity, s0->uidvalidity);
    assert_int_equal(s->size, 3 * (sizeof(MSG_SIMPLE) - 1));
    assert_true(s->highest_modseq > s0->highest_modseq);
    /* LIST carries the same counts. */
    tern_mailbox_info *li = listed(mb_list("INBOX", false), "INBOX");
    assert_int_equal(li->messages, 3);
    assert_int_equal(li->unseen, 2);
}

/* ======================================================================
 * messages
 * ====================================================================== */

static void t_append_fetch(void **state)
{
    (void)state;
    const char *kws[] = {"$Forwarded", "Custom1"};
    tern_store_req *r = append_full(tacct, "INBOX", MSG_SIMPLE, TERN_FLAG_SEEN | TERN_FLAG_DRAFT,
                                    kws, 2, 1700000000, TERN_STORE_OK);
    tern_append_result *a = &r->out.append;
    tern_mailbox_info *st = mb_status("INBOX");
    assert_int_equal(a->uidvalidity, st->uidvalidity);
    assert_int_equal(a->uid, 1);
    assert_non_null(a->id);
    assert_true(strlen(a->id) > 0);
    assert_non_null(a->thread_id);
    assert_true(strlen(a->thread_id) > 0);
    assert_true(a->modseq > 0);
    assert_int_equal(st->highest_modseq, a->modseq);

    tern_message_info *m = fetch_one("INBOX", a->uid);
    assert_string_equal(m->id, a->id);
    assert_string_equal(m->thread_id, a->thread_id);
    assert_int_equal(m->flags, TERN_FLAG_SEEN | TERN_FLAG_DRAFT);
    assert_int_equal(m->n_keywords, 2);
    assert_true(has_keyword(m, "$forwarded"));
    assert_true(has_keyword(m, "custom1"));
    assert_int_equal(m->internal_date, 1700000000);
    assert_int_equal(m->size, sizeof(MSG_SIMPLE) - 1);
    assert_int_equal(m->modseq, a->modseq);
    expect_body("INBOX", a->uid, MSG_SIMPLE);

    /* internal_date 0 is "now". */
    time_t before = time(NULL);
    tern_append_result *b = append("INBOX", MSG_SIMPLE, 0);
    time_t after = time(NULL);
    assert_int_equal(b->uid, 2);
    assert_true(b->modseq > a->modseq);
    assert_string_not_equal(b->id, a->id);
    m = fetch_one("INBOX", 2);
    assert_true(m->internal_date >= before - 2 && m->internal_date <= after + 2);
    assert_int_equal(m->flags, 0);
    assert_int_equal(m->n_keywords, 0);

    /* Any mailbox, named in any case for INBOX. */
    tern_append_result *c = append("inbox", MSG_SIMPLE, 0);
    assert_int_equal(c->uid, 3);
    tern_append_result *d = append("Sent", MSG_SIMPLE, TERN_FLAG_SEEN);
    assert_int_equal(d->uid, 1);
    assert_int_equal(d->uidvalidity, mb_status("Sent")->uidvalidity);

    /* FETCH over a set: uids in range only, with "*" meaning the last. */
    tern_store_req *f = fetch("INBOX", ALL_UIDS);
    assert_int_equal(f->out.n_messages, 3);
    f = fetch("INBOX", one_range(2, UINT32_MAX));
    assert_int_equal(f->out.n_messages, 2);
    assert_null(fetched(f, 1));
    f = fetch("INBOX", one_range(10, 20));
    assert_int_equal(f->out.n_messages, 0);
    tern_uid_range two[] = {{1, 1}, {3, 3}};
    f = fetch("INBOX", (tern_uid_set){two, 2});
    assert_int_equal(f->out.n_messages, 2);
    assert_non_null(fetched(f, 1));
    assert_non_null(fetched(f, 3));
    f = fetch("INBOX", (tern_uid_set){NULL, 0});
    assert_int_equal(f->out.n_messages, 0);

    /* Errors. */
    append_full(tacct, "Missing", MSG_SIMPLE, 0, NULL, 0, 0, TERN_STORE_ENOTFOUND);
    append_full("nobody@example.test", "INBOX", MSG_SIMPLE, 0, NULL, 0, 0, TERN_STORE_ENOTFOUND);
    r = R(TERN_STORE_FETCH);
    r->in.account = tacct;
    r->in.name = "Missing";
    r->in.uids = ALL_UIDS;
    run_st(r, TERN_STORE_ENOTFOUND);
    r = R(TERN_STORE_FETCH_BODY);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.uid = 99;
    r->in.max_len = 100;
    run_st(r, TERN_STORE_ENOTFOUND);
}

static void t_append_from_file(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof(path), "%s/append-src.eml", H.dir);
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(MSG_SIMPLE, 1, sizeof(MSG_SIMPLE) - 1, fp), sizeof(MSG_SIMPLE) - 1);
    assert_int_equal(fclose(fp), 0);
    tern_store_req *r = R(TERN_STORE_APPEND);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.data_path = path;
    run_ok(r);
    expect_body("INBOX", r->out.append.uid, MSG_SIMPLE);
    assert_int_equal(fetch_one("INBOX", r->out.append.uid)->size, sizeof(MSG_SIMPLE) - 1);

    /* With a prefix: the file's bytes come after it. */
    static const char pfx[] = "Delivered-To: file@example.test\r\n";
    r = R(TERN_STORE_APPEND);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.data_path = path;
    r->in.prefix = (const uint8_t *)pfx;
    r->in.prefix_len = sizeof(pfx) - 1;
    run_ok(r);
    char whole[sizeof(pfx) + sizeof(MSG_SIMPLE)];
    snprintf(whole, sizeof(whole), "%s%s", pfx, MSG_SIMPLE);
    expect_body("INBOX", r->out.append.uid, whole);
    assert_int_equal(fetch_one("INBOX", r->out.append.uid)->size, strlen(whole));
    unlink(path);

    r = R(TERN_STORE_APPEND);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.data_path = "/nonexistent/tern/message.eml";
    int st = hrun(&H, r);
    assert_true(st == TERN_STORE_ENOTFOUND || st == TERN_STORE_EIO || st == TERN_STORE_EINVAL);
}

static void t_fetch_body_chunks(void **state)
{
    (void)state;
    size_t len;
    /* Big enough that no backend returns it in one chunk. */
    uint8_t *msg = harness_message("chunks", 1, 300000, &len);
    tern_store_req *r = R(TERN_STORE_APPEND);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.data = msg;
    r->in.len = len;
    run_ok(r);
    uint32_t uid = r->out.append.uid;
    assert_int_equal(fetch_one("INBOX", uid)->size, len);

    static const size_t chunks[] = {1000, 4096, 65536, 1 << 20};
    for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
        size_t got_len;
        uint8_t *got = body_of(tacct, "INBOX", uid, chunks[i], &got_len);
        bool same = got_len == len && memcmp(got, msg, len) == 0;
        free(got);
        if (!same) {
            free(msg);
            fail_msg("chunk %zu: body differs (%zu vs %zu bytes)", chunks[i], got_len, len);
        }
    }
    /* One chunk: max_len bounds it, body_total is the whole size. */
    r = R(TERN_STORE_FETCH_BODY);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.uid = uid;
    r->in.offset = 5;
    r->in.max_len = 10;
    run_ok(r);
    assert_int_equal(r->out.body_total, len);
    assert_int_equal(r->out.body_len, 10);
    assert_memory_equal(r->out.body, msg + 5, 10);
    /* Past the end: nothing, not an error. */
    r = R(TERN_STORE_FETCH_BODY);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.uid = uid;
    r->in.offset = len;
    r->in.max_len = 10;
    run_ok(r);
    assert_int_equal(r->out.body_len, 0);
    free(msg);
}

static void t_quota(void **state)
{
    (void)state;
    size_t msg_len = sizeof(MSG_SIMPLE) - 1;
    tern_store_req *r = R(TERN_STORE_ACCOUNT_SET_QUOTA);
    r->in.account = tacct;
    r->in.quota_bytes = 2 * msg_len + msg_len / 2;
    r->in.quota_messages = 0;
    run_ok(r);
    append("INBOX", MSG_SIMPLE, 0);
    append("Drafts", MSG_SIMPLE, 0);
    /* The third would pass the byte quota: refused, nothing stored. */
    append_full(tacct, "INBOX", MSG_SIMPLE, 0, NULL, 0, 0, TERN_STORE_EQUOTA);
    assert_int_equal(mb_status("INBOX")->messages, 1);
    r = R(TERN_STORE_QUOTA_GET);
    r->in.account = tacct;
    run_ok(r);
    assert_int_equal(r->out.account.used_bytes, 2 * msg_len);
    assert_int_equal(r->out.account.used_messages, 2);
    assert_int_equal(r->out.account.quota_bytes, 2 * msg_len + msg_len / 2);

    /* Message count quota. */
    r = R(TERN_STORE_ACCOUNT_SET_QUOTA);
    r->in.account = tacct;
    r->in.quota_bytes = 0;
    r->in.quota_messages = 3;
    run_ok(r);
    append("INBOX", MSG_SIMPLE, 0);
    append_full(tacct, "INBOX", MSG_SIMPLE, 0, NULL, 0, 0, TERN_STORE_EQUOTA);
    /* COPY counts too. */
    tern_store_req *c = R(TERN_STORE_COPY);
    c->in.account = tacct;
    c->in.name = "INBOX";
    c->in.new_name = "Archive";
    c->in.uids = ALL_UIDS;
    run_st(c, TERN_STORE_EQUOTA);
    assert_int_equal(mb_status("Archive")->messages, 0);

    /* Expunging frees room. */
    set_flags("INBOX", one_range(1, 1), TERN_FLAGS_ADD, TERN_FLAG_DELETED, NULL, 0, 0,
              TERN_STORE_OK);
    r = R(TERN_STORE_EXPUNGE);
    r->in.account = tacct;
    r->in.name = "INBOX";
    run_ok(r);
    r = R(TERN_STORE_QUOTA_GET);
    r->in.account = tacct;
    run_ok(r);
    assert_int_equal(r->out.account.used_messages, 2);
    assert_int_equal(r->out.account.used_bytes, 2 * msg_len);
    append("INBOX", MSG_SIMPLE, 0);
    append_full(tacct, "INBOX", MSG_SIMPLE, 0, NULL, 0, 0, TERN_STORE_EQUOTA);

    /* Unlimited again. */
    r = R(TERN_STORE_ACCOUNT_SET_QUOTA);
    r->in.account = tacct;
    run_ok(r);
    append("INBOX", MSG_SIMPLE, 0);

    /* A new account gets the quota it was created with. */
    assert_int_equal(harness_account(&H, "small@example.test", 0, 1), TERN_STORE_OK);
    append_full("small@example.test", "INBOX", MSG_SIMPLE, 0, NULL, 0, 0, TERN_STORE_OK);
    append_full("small@example.test", "INBOX", MSG_SIMPLE, 0, NULL, 0, 0, TERN_STORE_EQUOTA);
}

static void t_set_flags(void **state)
{
    (void)state;
    for (int i = 0; i < 3; i++)
        append("INBOX", MSG_SIMPLE, 0);
    uint64_t ms0 = mb_status("INBOX")->highest_modseq;

    const char *ka[] = {"Alpha"};
    tern_store_req *r = set_flags("INBOX", one_range(1, 1), TERN_FLAGS_REPLACE, TERN_FLAG_SEEN,
                                  ka, 1, 0, TERN_STORE_OK);
    assert_int_equal(r->out.n_messages, 1);
    assert_int_equal(r->out.messages[0].uid, 1);
    assert_int_equal(r->out.messages[0].flags, TERN_FLAG_SEEN);
    uint64_t ms1 = r->out.messages[0].modseq;
    assert_true(ms1 > ms0);
    assert_int_equal(r->out.highest_modseq, ms1);
    tern_message_info *m = fetch_one("INBOX", 1);
    assert_int_equal(m->flags, TERN_FLAG_SEEN);
    assert_int_equal(m->n_keywords, 1);
    assert_true(has_keyword(m, "alpha"));
    assert_int_equal(m->modseq, ms1);

    const char *kb[] = {"Beta"};
    r = set_flags("INBOX", one_range(1, 1), TERN_FLAGS_ADD, TERN_FLAG_FLAGGED, kb, 1, 0,
                  TERN_STORE_OK);
    m = fetch_one("INBOX", 1);
    assert_int_equal(m->flags, TERN_FLAG_SEEN | TERN_FLAG_FLAGGED);
    assert_int_equal(m->n_keywords, 2);
    assert_true(has_keyword(m, "alpha"));
    assert_true(has_keyword(m, "beta"));
    uint64_t ms2 = m->modseq;
    assert_true(ms2 > ms1);

    r = set_flags("INBOX", one_range(1, 1), TERN_FLAGS_REMOVE, TERN_FLAG_SEEN, ka, 1, 0,
                  TERN_STORE_OK);
    m = fetch_one("INBOX", 1);
    assert_int_equal(m->flags, TERN_FLAG_FLAGGED);
    assert_int_equal(m->n_keywords, 1);
    assert_true(has_keyword(m, "beta"));
    uint64_t ms3 = m->modseq;
    assert_true(ms3 > ms2);

    /* Keywords compare case-insensitively: adding "BETA" changes nothing. */
    const char *kB[] = {"BETA"};
    r = set_flags("INBOX", one_range(1, 1), TERN_FLAGS_ADD, TERN_FLAG_FLAGGED, kB, 1, 0,
                  TERN_STORE_OK);
    assert_int_equal(r->out.n_messages, 0);
    m = fetch_one("INBOX", 1);
    assert_int_equal(m->modseq, ms3);
    assert_int_equal(m->n_keywords, 1);

    /* Over a range: only the changed ones are reported. */
    r = set_flags("INBOX", ALL_UIDS, TERN_FLAGS_ADD, TERN_FLAG_FLAGGED, NULL, 0, 0,
                  TERN_STORE_OK);
    assert_int_equal(r->out.n_messages, 2);
    assert_null(fetched(r, 1));
    assert_non_null(fetched(r, 2));
    assert_non_null(fetched(r, 3));
    assert_true(fetched(r, 2)->modseq > ms3);
    assert_true(fetched(r, 3)->modseq > ms3);
    uint64_t hm = mb_status("INBOX")->highest_modseq;
    assert_int_equal(r->out.highest_modseq, hm);

    /* REPLACE with nothing clears flags and keywords. */
    set_flags("INBOX", one_range(1, 1), TERN_FLAGS_REPLACE, 0, NULL, 0, 0, TERN_STORE_OK);
    m = fetch_one("INBOX", 1);
    assert_int_equal(m->flags, 0);
    assert_int_equal(m->n_keywords, 0);

    /* UNCHANGEDSINCE: a message changed after the given modseq is not
     * touched and is reported; the others are changed. */
    uint64_t m2 = fetch_one("INBOX", 2)->modseq;
    set_flags("INBOX", one_range(3, 3), TERN_FLAGS_ADD, TERN_FLAG_ANSWERED, NULL, 0, 0,
              TERN_STORE_OK);
    uint64_t m3 = fetch_one("INBOX", 3)->modseq;
    assert_true(m3 > m2);
    r = R(TERN_STORE_SET_FLAGS);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.uids = one_range(2, 3);
    r->in.flags_mode = TERN_FLAGS_ADD;
    r->in.flags = TERN_FLAG_SEEN;
    r->in.unchanged_since = m2;
    int st = hrun(&H, r);
    assert_true(st == TERN_STORE_OK || st == TERN_STORE_ECONFLICT);
    expect_uids(r, "UNCHANGEDSINCE failures", 0, 3);
    assert_true(fetch_one("INBOX", 2)->flags & TERN_FLAG_SEEN);
    assert_false(fetch_one("INBOX", 3)->flags & TERN_FLAG_SEEN);
    assert_int_equal(fetch_one("INBOX", 3)->modseq, m3);

    /* Errors. */
    set_flags("Missing", ALL_UIDS, TERN_FLAGS_ADD, TERN_FLAG_SEEN, NULL, 0, 0,
              TERN_STORE_ENOTFOUND);
    /* Uids that do not exist are no error (IMAP STORE on a set). */
    r = set_flags("INBOX", one_range(50, 60), TERN_FLAGS_ADD, TERN_FLAG_SEEN, NULL, 0, 0,
                  TERN_STORE_OK);
    assert_int_equal(r->out.n_messages, 0);
}

static void t_copy_move(void **state)
{
    (void)state;
    tern_append_result *a1 = append("INBOX", MSG_SIMPLE, TERN_FLAG_SEEN);
    const char *kw[] = {"$Label1"};
    tern_append_result *a2 =
        &append_full(tacct, "INBOX", MSG_SIMPLE, TERN_FLAG_FLAGGED, kw, 1, 1600000000,
                     TERN_STORE_OK)->out.append;
    append("INBOX", MSG_SIMPLE, 0);
    append("Archive", MSG_SIMPLE, 0); /* the target's uids start past 1 */

    tern_store_req *c = R(TERN_STORE_COPY);
    c->in.account = tacct;
    c->in.name = "INBOX";
    c->in.new_name = "Archive";
    c->in.uids = one_range(1, 2);
    run_ok(c);
    tern_mailbox_info *arch = mb_status("Archive");
    assert_int_equal(c->out.n_copied, 2);
    assert_non_null(c->out.src_uids);
    assert_non_null(c->out.dst_uids);
    assert_int_equal(c->out.dst_uidvalidity, arch->uidvalidity);
    assert_int_equal(arch->messages, 3);
    for (size_t i = 0; i < 2; i++) {
        uint32_t s = c->out.src_uids[i], d = c->out.dst_uids[i];
        assert_true(s == 1 || s == 2);
        assert_true(d == 2 || d == 3);
        tern_message_info src = *fetch_one("INBOX", s);
        tern_message_info *dst = fetch_one("Archive", d);
        /* A copy is the same Email in two mailboxes (store.h). */
        assert_string_equal(dst->id, src.id);
        assert_string_equal(dst->thread_id, src.thread_id);
        assert_int_equal(dst->flags, src.flags);
        assert_int_equal(dst->n_keywords, src.n_keywords);
        assert_int_equal(dst->internal_date, src.internal_date);
        assert_int_equal(dst->size, src.size);
        expect_body("Archive", d, MSG_SIMPLE);
    }
    assert_int_equal(mb_status("INBOX")->messages, 3);
    assert_true(has_keyword(fetch_one("Archive", c->out.src_uids[0] == 2 ? c->out.dst_uids[0]
                                                                        : c->out.dst_uids[1]),
                            "$label1"));

    /* Move: gone from the source, the same id in the target. */
    uint64_t inbox_ms = mb_status("INBOX")->highest_modseq;
    tern_store_req *mv = R(TERN_STORE_MOVE);
    mv->in.account = tacct;
    mv->in.name = "INBOX";
    mv->in.new_name = "Trash";
    mv->in.uids = one_range(2, 3);
    run_ok(mv);
    assert_int_equal(mv->out.n_copied, 2);
    assert_int_equal(mv->out.dst_uidvalidity, mb_status("Trash")->uidvalidity);
    assert_int_equal(mb_status("INBOX")->messages, 1);
    assert_int_equal(mb_status("Trash")->messages, 2);
    assert_int_equal(fetch("INBOX", one_range(2, 3))->out.n_messages, 0);
    for (size_t i = 0; i < 2; i++) {
        if (mv->out.src_uids[i] == 2) {
            tern_message_info *m = fetch_one("Trash", mv->out.dst_uids[i]);
            assert_string_equal(m->id, a2->id);
            assert_int_equal(m->flags, TERN_FLAG_FLAGGED);
            assert_int_equal(m->internal_date, 1600000000);
        }
    }
    /* The source's change log shows the moved uids as vanished. */
    tern_store_req *ch = R(TERN_STORE_CHANGES);
    ch->in.account = tacct;
    ch->in.name = "INBOX";
    ch->in.since_modseq = inbox_ms;
    run_ok(ch);
    assert_int_equal(ch->out.changes.n_vanished, 2);
    assert_int_equal(ch->out.changes.vanished[0], 2);
    assert_int_equal(ch->out.changes.vanished[1], 3);
    assert_true(ch->out.changes.highest_modseq > inbox_ms);

    /* The copy of uid 1 still has a1's id in Archive after the move. */
    assert_string_equal(fetch_one("INBOX", 1)->id, a1->id);

    /* Nothing matching: an empty map, no error. */
    c = R(TERN_STORE_COPY);
    c->in.account = tacct;
    c->in.name = "INBOX";
    c->in.new_name = "Archive";
    c->in.uids = one_range(100, 200);
    run_ok(c);
    assert_int_equal(c->out.n_copied, 0);

    c = R(TERN_STORE_COPY);
    c->in.account = tacct;
    c->in.name = "INBOX";
    c->in.new_name = "Missing";
    c->in.uids = ALL_UIDS;
    run_st(c, TERN_STORE_ENOTFOUND);
    c = R(TERN_STORE_MOVE);
    c->in.account = tacct;
    c->in.name = "Missing";
    c->in.new_name = "INBOX";
    c->in.uids = ALL_UIDS;
    run_st(c, TERN_STORE_ENOTFOUND);
    assert_int_equal(mb_status("INBOX")->messages, 1);
}

static void t_expunge(void **state)
{
    (void)state;
    for (int i = 0; i < 5; i++)
        append("INBOX", MSG_SIMPLE, 0);
    tern_uid_range del[] = {{1, 1}, {3, 4}};
    set_flags("INBOX", (tern_uid_set){del, 2}, TERN_FLAGS_ADD, TERN_FLAG_DELETED, NULL, 0, 0,
              TERN_STORE_OK);
    uint64_t ms = mb_status("INBOX")->highest_modseq;

    /* A uid subset: only the \Deleted ones in it go (UID EXPUNGE). */
    tern_store_req *r = R(TERN_STORE_EXPUNGE);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.uids = one_range(2, 3);
    run_ok(r);
    expect_uids(r, "UID EXPUNGE 2:3", 0, 3);
    assert_true(r->out.highest_modseq > ms);
    assert_int_equal(mb_status("INBOX")->messages, 4);

    /* All \Deleted. */
    r = R(TERN_STORE_EXPUNGE);
    r->in.account = tacct;
    r->in.name = "INBOX";
    run_ok(r);
    expect_uids(r, "EXPUNGE", 0, 1, 4);
    tern_mailbox_info *s = mb_status("INBOX");
    assert_int_equal(s->messages, 2);
    assert_int_equal(r->out.highest_modseq, s->highest_modseq);
    tern_store_req *f = fetch("INBOX", ALL_UIDS);
    assert_int_equal(f->out.n_messages, 2);
    assert_non_null(fetched(f, 2));
    assert_non_null(fetched(f, 5));
    r = R(TERN_STORE_FETCH_BODY);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.uid = 1;
    r->in.max_len = 100;
    run_st(r, TERN_STORE_ENOTFOUND);

    /* Nothing \Deleted: nothing expunged, no error. */
    r = R(TERN_STORE_EXPUNGE);
    r->in.account = tacct;
    r->in.name = "INBOX";
    run_ok(r);
    assert_int_equal(r->out.n_uids, 0);

    /* Expunged uids are never reused. */
    tern_append_result *a = append("INBOX", MSG_SIMPLE, 0);
    assert_int_equal(a->uid, 6);

    r = R(TERN_STORE_EXPUNGE);
    r->in.account = tacct;
    r->in.name = "Missing";
    run_st(r, TERN_STORE_ENOTFOUND);
}

static void t_changes_and_modseq(void **state)
{
    (void)state;
    mb_create("Other");
    uint64_t prev = 0;
    for (int i = 0; i < 3; i++) {
        tern_append_result *a = append("INBOX", MSG_SIMPLE, 0);
        assert_true(a->modseq > prev);
        prev = a->modseq;
    }
    uint64_t ms0 = mb_status("INBOX")->highest_modseq;
    assert_int_equal(ms0, prev);

    /* Modseqs are per account: a change in another mailbox takes a new,
     * higher one, and does not move INBOX's highest. */
    tern_append_result *o = append("Other", MSG_SIMPLE, 0);
    assert_true(o->modseq > ms0);
    assert_int_equal(mb_status("INBOX")->highest_modseq, ms0);

    tern_store_req *r = set_flags("INBOX", one_range(2, 2), TERN_FLAGS_ADD, TERN_FLAG_SEEN,
                                  NULL, 0, 0, TERN_STORE_OK);
    assert_true(r->out.messages[0].modseq > o->modseq);
    set_flags("INBOX", one_range(3, 3), TERN_FLAGS_ADD, TERN_FLAG_DELETED, NULL, 0, 0,
              TERN_STORE_OK);
    r = R(TERN_STORE_EXPUNGE);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.uids = one_range(3, 3);
    run_ok(r);
    tern_append_result *a4 = append("INBOX", MSG_SIMPLE, TERN_FLAG_FLAGGED);
    uint64_t ms_end = mb_status("INBOX")->highest_modseq;
    assert_int_equal(ms_end, a4->modseq);

    r = R(TERN_STORE_CHANGES);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.since_modseq = ms0;
    run_ok(r);
    tern_changes *c = &r->out.changes;
    assert_int_equal(c->highest_modseq, ms_end);
    assert_int_equal(c->n_vanished, 1);
    assert_int_equal(c->vanished[0], 3);
    assert_int_equal(c->n_changed, 2);
    bool saw2 = false, saw4 = false;
    for (size_t i = 0; i < c->n_changed; i++) {
        assert_true(c->changed[i].modseq > ms0);
        if (c->changed[i].uid == 2) {
            saw2 = true;
            assert_int_equal(c->changed[i].flags, TERN_FLAG_SEEN);
        } else if (c->changed[i].uid == 4) {
            saw4 = true;
            assert_int_equal(c->changed[i].flags, TERN_FLAG_FLAGGED);
        }
    }
    assert_true(saw2);
    assert_true(saw4);

    /* Since the current highest: nothing. Since 0: everything present. */
    r = R(TERN_STORE_CHANGES);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.since_modseq = ms_end;
    run_ok(r);
    assert_int_equal(r->out.changes.n_changed, 0);
    assert_int_equal(r->out.changes.n_vanished, 0);
    assert_int_equal(r->out.changes.highest_modseq, ms_end);
    r = R(TERN_STORE_CHANGES);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.since_modseq = 0;
    run_ok(r);
    assert_int_equal(r->out.changes.n_changed, 3);

    /* The mailbox's highest modseq never goes down, whatever happens. */
    uint64_t hm = ms_end;
    for (int i = 0; i < 5; i++) {
        set_flags("INBOX", ALL_UIDS, i % 2 ? TERN_FLAGS_REMOVE : TERN_FLAGS_ADD,
                  TERN_FLAG_ANSWERED, NULL, 0, 0, TERN_STORE_OK);
        uint64_t now = mb_status("INBOX")->highest_modseq;
        assert_true(now > hm);
        hm = now;
    }

    r = R(TERN_STORE_CHANGES);
    r->in.account = tacct;
    r->in.name = "Missing";
    run_st(r, TERN_STORE_ENOTFOUND);
}

/* ETOOOLD: once the expunge records a question needs are past the
 * retention bound, CHANGES says so instead of answering incompletely. A
 * store of its own with a one-second retention; the backends prune at
 * different moments (local: on the first batch after open and then
 * periodically; pg: at each expunge), so the test gives both a chance. */
static harness saved_h;
static bool swapped;

static int retention_teardown(void **state)
{
    if (swapped) {
        free_tracked();
        harness_fini(&H);
        H = saved_h;
        swapped = false;
    }
    return test_teardown(state);
}

static void t_changes_retention(void **state)
{
    (void)state;
    harness h2;
    assert_int_equal(harness_init(&h2, H.blob ? "pg-blob" : H.pg ? "pg" : "local", NULL, NULL), 0);
    h2.cfg->storage.changes_retention_ms = 1000;
    assert_int_equal(harness_open(&h2), 0);
    saved_h = H;
    H = h2;
    swapped = true;
    assert_int_equal(harness_account(&H, tacct, 0, 0), TERN_STORE_OK);
    for (int i = 0; i < 3; i++)
        append("INBOX", MSG_SIMPLE, 0);
    uint64_t before = mb_status("INBOX")->highest_modseq;
    set_flags("INBOX", ALL_UIDS, TERN_FLAGS_ADD, TERN_FLAG_DELETED, NULL, 0, 0, TERN_STORE_OK);
    tern_store_req *r = R(TERN_STORE_EXPUNGE);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.uids = one_range(1, 1);
    run_ok(r);
    /* Within retention: answered. */
    r = R(TERN_STORE_CHANGES);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.since_modseq = before;
    run_ok(r);
    assert_int_equal(r->out.changes.n_vanished, 1);

    usleep(2200 * 1000);
    r = R(TERN_STORE_EXPUNGE);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.uids = one_range(2, 2);
    run_ok(r);
    free_tracked();
    harness_close_store(&H);
    assert_int_equal(harness_open(&H), 0);
    /* Any request runs a batch (local prunes then). */
    uint64_t now = mb_status("INBOX")->highest_modseq;

    r = R(TERN_STORE_CHANGES);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.since_modseq = before;
    run_st(r, TERN_STORE_ETOOOLD);
    /* Since the present: still fine. */
    r = R(TERN_STORE_CHANGES);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.since_modseq = now;
    run_ok(r);
    assert_int_equal(r->out.changes.n_vanished, 0);
}

/* ---- search ------------------------------------------------------------ */

static const char MSG_S1[] =
    "From: Alice Example <alice@example.org>\r\n"
    "To: bob@example.test\r\n"
    "Cc: Carol <carol@example.test>\r\n"
    "Subject: Quarterly Report\r\n"
    "Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    "Message-ID: <s1@example.org>\r\n"
    "X-Custom: Blue Sky\r\n"
    "\r\n"
    "The budget is attached.\r\n";
static const char MSG_S2_HEAD[] =
    "From: Bob <bob@example.test>\r\n"
    "To: alice@example.org\r\n"
    "Subject: Re: Quarterly Report\r\n"
    "Date: Wed, 10 Jan 2024 09:00:00 +0000\r\n"
    "Message-ID: <s2@example.test>\r\n"
    "In-Reply-To: <s1@example.org>\r\n"
    "References: <s1@example.org>\r\n"
    "\r\n"
    "Thanks, looks fine.\r\n";
static const char MSG_S3[] =
    "From: Dave <dave@example.net>\r\n"
    "To: team@example.test\r\n"
    "Bcc: secret@example.net\r\n"
    "Subject: Lunch? 100% sure\r\n"
    "Date: Sat, 20 Jan 2024 12:00:00 +0000\r\n"
    "Message-ID: <s3@example.net>\r\n"
    "\r\n"
    "Pizza at noon.\r\n";
static const char MSG_S4[] =
    "From: Erin <erin@example.org>\r\n"
    "To: bob@example.test\r\n"
    "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= aus Berlin\r\n"
    "Date: Sun, 21 Jan 2024 12:00:00 +0000\r\n"
    "Message-ID: <s4@example.org>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/mixed; boundary=\"b1\"\r\n"
    "\r\n"
    "--b1\r\n"
    "Content-Type: text/plain; charset=us-ascii\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "VGhlIHNlY3JldCBmcnVpdCBpcyBwaW5lYXBwbGUu\r\n"
    "--b1\r\n"
    "Content-Type: text/plain; charset=us-ascii\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "soft=\r\n"
    "wrapped word\r\n"
    "--b1--\r\n";

/* day start (UTC) */
static int64_t day(int y, int mo, int d)
{
    struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d};
    return (int64_t)timegm(&tm);
}

static tern_store_req *search(const tern_search *s)
{
    tern_store_req *r = R(TERN_STORE_SEARCH);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.search = s;
    run_ok(r);
    return r;
}

#define S_HDR(f, v) ((tern_search){.kind = TERN_SEARCH_HEADER, .field = (f), .str = (v)})
#define S_STR(k, v) ((tern_search){.kind = (k), .str = (v)})
#define S_NUM(k, v) ((tern_search){.kind = (k), .num = (v)})
#define S_DATE(k, v) ((tern_search){.kind = (k), .date = (v)})
#define S_FLAGS(k, v) ((tern_search){.kind = (k), .flags = (v)})

/* Appends the four search messages to the test's INBOX as uids 1..4. */
static uint64_t search_fixture(void)
{
    const char *work[] = {"$Work"};
    append_full(tacct, "INBOX", MSG_S1, TERN_FLAG_SEEN, work, 1, day(2024, 1, 2) + 3600,
                TERN_STORE_OK);
    /* s2 is over 2000 bytes, the others under. */
    static char s2[4096];
    size_t n = strlen(MSG_S2_HEAD);
    memcpy(s2, MSG_S2_HEAD, n);
    while (n < 2400) {
        memcpy(s2 + n, "padding padding padding padding padding\r\n", 41);
        n += 41;
    }
    s2[n] = '\0';
    append_full(tacct, "INBOX", s2, TERN_FLAG_FLAGGED | TERN_FLAG_ANSWERED, NULL, 0,
                day(2024, 1, 11) + 60, TERN_STORE_OK);
    append_full(tacct, "INBOX", MSG_S3, 0, NULL, 0, day(2024, 1, 21), TERN_STORE_OK);
    append_full(tacct, "INBOX", MSG_S4, 0, NULL, 0, day(2024, 1, 22), TERN_STORE_OK);
    return mb_status("INBOX")->highest_modseq;
}

static void t_search_criteria(void **state)
{
    (void)state;
    uint64_t ms = search_fixture();
    tern_search s;

    s = (tern_search){.kind = TERN_SEARCH_ALL};
    expect_uids(search(&s), "ALL", 0, 1, 2, 3, 4);
    s = (tern_search){.kind = TERN_SEARCH_UID, .uids = one_range(2, UINT32_MAX)};
    expect_uids(search(&s), "UID 2:*", 0, 2, 3, 4);
    tern_uid_range odd[] = {{1, 1}, {3, 3}, {9, 12}};
    s = (tern_search){.kind = TERN_SEARCH_UID, .uids = {odd, 3}};
    expect_uids(search(&s), "UID 1,3,9:12", 0, 1, 3);
    s = (tern_search){.kind = TERN_SEARCH_UID, .uids = {NULL, 0}};
    expect_uids(search(&s), "UID (empty)", 0);

    s = S_FLAGS(TERN_SEARCH_FLAGS_SET, TERN_FLAG_SEEN);
    expect_uids(search(&s), "SEEN", 0, 1);
    s = S_FLAGS(TERN_SEARCH_FLAGS_SET, TERN_FLAG_FLAGGED | TERN_FLAG_ANSWERED);
    expect_uids(search(&s), "FLAGGED ANSWERED", 0, 2);
    s = S_FLAGS(TERN_SEARCH_FLAGS_SET, TERN_FLAG_FLAGGED | TERN_FLAG_SEEN);
    expect_uids(search(&s), "FLAGGED SEEN", 0);
    s = S_FLAGS(TERN_SEARCH_FLAGS_UNSET, TERN_FLAG_SEEN);
    expect_uids(search(&s), "UNSEEN", 0, 2, 3, 4);
    s = S_FLAGS(TERN_SEARCH_FLAGS_UNSET, TERN_FLAG_SEEN | TERN_FLAG_FLAGGED);
    expect_uids(search(&s), "UNSEEN UNFLAGGED", 0, 3, 4);
    s = S_STR(TERN_SEARCH_KEYWORD, "$work");
    expect_uids(search(&s), "KEYWORD $work", 0, 1);
    s = S_STR(TERN_SEARCH_UNKEYWORD, "$WORK");
    expect_uids(search(&s), "UNKEYWORD $WORK", 0, 2, 3, 4);
    s = S_STR(TERN_SEARCH_KEYWORD, "$nothere");
    expect_uids(search(&s), "KEYWORD $nothere", 0);

    s = S_DATE(TERN_SEARCH_BEFORE, day(2024, 1, 11));
    expect_uids(search(&s), "BEFORE 11-Jan", 0, 1);
    s = S_DATE(TERN_SEARCH_SINCE, day(2024, 1, 11));
    expect_uids(search(&s), "SINCE 11-Jan", 0, 2, 3, 4);
    s = S_DATE(TERN_SEARCH_SINCE, day(2024, 1, 21));
    expect_uids(search(&s), "SINCE 21-Jan (exactly day start)", 0, 3, 4);
    s = S_DATE(TERN_SEARCH_SENTBEFORE, day(2024, 1, 10));
    expect_uids(search(&s), "SENTBEFORE 10-Jan", 0, 1);
    s = S_DATE(TERN_SEARCH_SENTSINCE, day(2024, 1, 10));
    expect_uids(search(&s), "SENTSINCE 10-Jan", 0, 2, 3, 4);

    s = S_NUM(TERN_SEARCH_LARGER, 2000);
    expect_uids(search(&s), "LARGER 2000", 0, 2);
    s = S_NUM(TERN_SEARCH_SMALLER, 2000);
    expect_uids(search(&s), "SMALLER 2000", 0, 1, 3, 4);
    s = S_NUM(TERN_SEARCH_LARGER, sizeof(MSG_S1) - 1);
    expect_uids(search(&s), "LARGER size(s1) is strict", 0, 2, 4);

    /* Header criteria: substring, case-insensitive in both the value and
     * the field name; an empty string asks whether the field exists. */
    s = S_HDR("subject", "quarterly");
    expect_uids(search(&s), "SUBJECT quarterly", 0, 1, 2);
    s = S_HDR("Subject", "REPORT");
    expect_uids(search(&s), "SUBJECT REPORT", 0, 1, 2);
    s = S_HDR("from", "ALICE");
    expect_uids(search(&s), "FROM ALICE", 0, 1);
    s = S_HDR("From", "bob@example.test");
    expect_uids(search(&s), "FROM bob@", 0, 2);
    s = S_HDR("to", "alice@example.org");
    expect_uids(search(&s), "TO alice@", 0, 2);
    s = S_HDR("cc", "carol");
    expect_uids(search(&s), "CC carol", 0, 1);
    s = S_HDR("bcc", "secret");
    expect_uids(search(&s), "BCC secret", 0, 3);
    s = S_HDR("X-CUSTOM", "blue sky");
    expect_uids(search(&s), "HEADER X-CUSTOM", 0, 1);
    s = S_HDR("x-custom", "");
    expect_uids(search(&s), "HEADER x-custom \"\"", 0, 1);
    s = S_HDR("x-absent", "");
    expect_uids(search(&s), "HEADER x-absent \"\"", 0);
    s = S_HDR("message-id", "s3@example.net");
    expect_uids(search(&s), "HEADER message-id", 0, 3);
    /* LIKE metacharacters are literal. */
    s = S_HDR("subject", "100%");
    expect_uids(search(&s), "SUBJECT 100%", 0, 3);
    s = S_HDR("subject", "1_0");
    expect_uids(search(&s), "SUBJECT 1_0", 0);
    s = S_HDR("subject", "%");
    expect_uids(search(&s), "SUBJECT %", 0, 3);
    s = S_HDR("subject", "\\");
    expect_uids(search(&s), "SUBJECT backslash", 0);
    /* RFC 2047 words are searched decoded. */
    s = S_HDR("subject", "gr\xc3\xbc\xc3\x9f" "e");
    expect_uids(search(&s), "SUBJECT decoded", 0, 4);

    s = S_STR(TERN_SEARCH_BODY, "budget");
    expect_uids(search(&s), "BODY budget", 0, 1);
    s = S_STR(TERN_SEARCH_BODY, "BUDGET IS");
    expect_uids(search(&s), "BODY BUDGET IS", 0, 1);
    s = S_STR(TERN_SEARCH_BODY, "quarterly");
    expect_uids(search(&s), "BODY quarterly (header only)", 0);
    s = S_STR(TERN_SEARCH_TEXT, "quarterly");
    expect_uids(search(&s), "TEXT quarterly", 0, 1, 2);
    s = S_STR(TERN_SEARCH_TEXT, "pizza");
    expect_uids(search(&s), "TEXT pizza", 0, 3);
    s = S_STR(TERN_SEARCH_TEXT, "dave@example.net");
    expect_uids(search(&s), "TEXT address", 0, 3);

    tern_search kids[3];
    kids[0] = S_STR(TERN_SEARCH_BODY, "budget");
    s = (tern_search){.kind = TERN_SEARCH_NOT, .children = kids, .n_children = 1};
    expect_uids(search(&s), "NOT BODY budget", 0, 2, 3, 4);
    kids[0] = S_STR(TERN_SEARCH_BODY, "budget");
    kids[1] = S_FLAGS(TERN_SEARCH_FLAGS_SET, TERN_FLAG_FLAGGED);
    s = (tern_search){.kind = TERN_SEARCH_OR, .children = kids, .n_children = 2};
    expect_uids(search(&s), "OR BODY budget FLAGGED", 0, 1, 2);
    kids[0] = S_STR(TERN_SEARCH_BODY, "pizza");
    kids[1] = S_HDR("from", "bob");
    s = (tern_search){.kind = TERN_SEARCH_OR, .children = kids, .n_children = 2};
    expect_uids(search(&s), "OR BODY pizza FROM bob", 0, 2, 3);
    tern_search notseen = S_FLAGS(TERN_SEARCH_FLAGS_SET, TERN_FLAG_SEEN);
    kids[0] = S_STR(TERN_SEARCH_TEXT, "quarterly");
    kids[1] = (tern_search){.kind = TERN_SEARCH_NOT, .children = &notseen, .n_children = 1};
    s = (tern_search){.kind = TERN_SEARCH_AND, .children = kids, .n_children = 2};
    expect_uids(search(&s), "TEXT quarterly NOT SEEN", 0, 2);
    tern_search inner_or[2] = {S_STR(TERN_SEARCH_BODY, "noon"), S_HDR("subject", "report")};
    kids[0] = (tern_search){.kind = TERN_SEARCH_OR, .children = inner_or, .n_children = 2};
    kids[1] = S_NUM(TERN_SEARCH_SMALLER, 2000);
    kids[2] = (tern_search){.kind = TERN_SEARCH_UID, .uids = one_range(1, 3)};
    s = (tern_search){.kind = TERN_SEARCH_AND, .children = kids, .n_children = 3};
    expect_uids(search(&s), "(OR BODY noon SUBJECT report) SMALLER 2000 UID 1:3", 0, 1, 3);
    tern_search notbody = S_STR(TERN_SEARCH_BODY, "pizza");
    tern_search nb = {.kind = TERN_SEARCH_NOT, .children = &notbody, .n_children = 1};
    s = (tern_search){.kind = TERN_SEARCH_NOT, .children = &nb, .n_children = 1};
    expect_uids(search(&s), "NOT NOT BODY pizza", 0, 3);

    /* MODSEQ: only what changed after the fixture. */
    tern_store_req *sf = set_flags("INBOX", one_range(3, 3), TERN_FLAGS_ADD, TERN_FLAG_SEEN,
                                   NULL, 0, 0, TERN_STORE_OK);
    s = S_NUM(TERN_SEARCH_MODSEQ, ms + 1);
    tern_store_req *r = search(&s);
    expect_uids(r, "MODSEQ", 0, 3);
    assert_int_equal(r->out.highest_modseq, sf->out.highest_modseq);
    s = S_NUM(TERN_SEARCH_MODSEQ, 1);
    expect_uids(search(&s), "MODSEQ 1", 0, 1, 2, 3, 4);

    s = (tern_search){.kind = TERN_SEARCH_ALL};
    r = R(TERN_STORE_SEARCH);
    r->in.account = tacct;
    r->in.name = "Missing";
    r->in.search = &s;
    run_st(r, TERN_STORE_ENOTFOUND);
}

static void t_search_body_decoded(void **state)
{
    (void)state;
    search_fixture();
    tern_search s = S_STR(TERN_SEARCH_BODY, "pineapple");
    expect_uids(search(&s), "BODY in a base64 part", 0, 4);
    s = S_STR(TERN_SEARCH_BODY, "softwrapped");
    expect_uids(search(&s), "BODY across a QP soft break", 0, 4);
    s = S_STR(TERN_SEARCH_TEXT, "berlin");
    expect_uids(search(&s), "TEXT in a decoded subject", 0, 4);
}

static void t_threads(void **state)
{
    (void)state;
    tern_append_result *a1 = append("INBOX", MSG_S1, 0);
    tern_append_result *a2 = append("INBOX", MSG_S2_HEAD, 0);
    tern_append_result *a3 = append("INBOX", MSG_S3, 0);
    assert_string_equal(a1->thread_id, a2->thread_id);
    assert_string_not_equal(a1->thread_id, a3->thread_id);
    assert_string_not_equal(a1->id, a2->id);

    /* A reply to the reply, filed in another mailbox, joins the thread
     * through References (the thread is the account's, not the mailbox's). */
    static const char reply2[] =
        "From: Alice <alice@example.org>\r\n"
        "Subject: Re: Re: Quarterly Report\r\n"
        "Message-ID: <s5@example.org>\r\n"
        "In-Reply-To: <s2@example.test>\r\n"
        "References: <s1@example.org> <s2@example.test>\r\n"
        "\r\n"
        "Good.\r\n";
    tern_append_result *a5 = append("Sent", reply2, TERN_FLAG_SEEN);
    assert_string_equal(a5->thread_id, a1->thread_id);
    assert_string_equal(fetch_one("Sent", a5->uid)->thread_id, a1->thread_id);

    /* References alone (no In-Reply-To) are enough. */
    static const char refs_only[] =
        "From: Carol <carol@example.test>\r\n"
        "Subject: something else entirely\r\n"
        "Message-ID: <s6@example.test>\r\n"
        "References: <s3@example.net>\r\n"
        "\r\n"
        "Me too.\r\n";
    tern_append_result *a6 = append("INBOX", refs_only, 0);
    assert_string_equal(a6->thread_id, a3->thread_id);

    /* Unrelated, no Message-ID at all. */
    static const char lonely[] = "Subject: Unrelated\r\n\r\nno ids\r\n";
    tern_append_result *a7 = append("INBOX", lonely, 0);
    assert_string_not_equal(a7->thread_id, a1->thread_id);
    assert_string_not_equal(a7->thread_id, a3->thread_id);

}

/* ======================================================================
 * asynchronous use: events and concurrency
 * ====================================================================== */

/* What a watch saw. A wake with mailbox_id 0 means "something of this
 * account may have changed" (pg sends one when LISTEN comes back, since
 * NOTIFYs in between are lost): allowed anywhere, never counted as
 * precise. A wake naming another account, or a mailbox other than the
 * watched one, is wrong. */
typedef struct event_seen {
    const char *want_account;
    uint64_t want_mailbox;  /* 0: any */
    int n, precise, wrong;
    uint64_t mailbox_id;    /* of the last precise event */
    uint64_t modseq;        /* highest in a precise event */
    pthread_t thread;
} event_seen;

static void on_event(void *data, const char *account, uint64_t mailbox_id, uint64_t modseq)
{
    event_seen *e = data;
    e->n++;
    e->thread = pthread_self();
    if (account == NULL || strcmp(account, e->want_account) != 0) {
        e->wrong++;
        return;
    }
    if (mailbox_id == 0)
        return;
    if (e->want_mailbox != 0 && mailbox_id != e->want_mailbox) {
        e->wrong++;
        return;
    }
    e->precise++;
    e->mailbox_id = mailbox_id;
    if (modseq > e->modseq)
        e->modseq = modseq;
}

static void on_done(tern_store_req *r)
{
    (*(int *)r->data)++;
}

static void on_timer(uv_timer_t *t)
{
    (void)t;
}

/* Runs `loop` until *flag >= want or `seconds` pass. */
static void run_until(uv_loop_t *loop, const int *flag, int want, double seconds)
{
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, on_timer, 10, 10);
    double end = harness_now() + seconds;
    while (*flag < want && harness_now() < end)
        uv_run(loop, UV_RUN_ONCE);
    uv_timer_stop(&t);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

static void t_change_events(void **state)
{
    (void)state;
    mb_create("Quiet");
    uint64_t inbox_id = mb_status("INBOX")->id, quiet_id = mb_status("Quiet")->id;

    uv_loop_t watcher_loop, writer_loop;
    assert_int_equal(uv_loop_init(&watcher_loop), 0);
    assert_int_equal(uv_loop_init(&writer_loop), 0);
    tern_store_client *wc = tern_store_client_new(H.store, &watcher_loop);
    tern_store_client *ac = tern_store_client_new(H.store, &writer_loop);
    assert_non_null(wc);
    assert_non_null(ac);

    event_seen any = {.want_account = tacct}, inbox = {.want_account = tacct,
                                                      .want_mailbox = inbox_id},
               quiet = {.want_account = tacct, .want_mailbox = quiet_id};
    tern_store_watch *w_any = tern_store_watch_add(wc, tacct, 0, on_event, &any);
    tern_store_watch *w_inbox = tern_store_watch_add(wc, tacct, inbox_id, on_event, &inbox);
    tern_store_watch *w_quiet = tern_store_watch_add(wc, tacct, quiet_id, on_event, &quiet);
    assert_non_null(w_any);
    assert_non_null(w_inbox);
    assert_non_null(w_quiet);
    /* The NOTIFY of creating Quiet (pg) may still be on its way: let it
     * arrive before counting. */
    int never = 0;
    run_until(&watcher_loop, &never, 1, 0.5);
    any = (event_seen){.want_account = tacct};
    inbox = (event_seen){.want_account = tacct, .want_mailbox = inbox_id};
    quiet = (event_seen){.want_account = tacct, .want_mailbox = quiet_id};

    /* Another client, on another loop, appends. */
    int done = 0;
    tern_store_req *r = R(TERN_STORE_APPEND);
    r->cb = on_done;
    r->data = &done;
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.data = (const uint8_t *)MSG_SIMPLE;
    r->in.len = sizeof(MSG_SIMPLE) - 1;
    assert_int_equal(tern_store_submit(ac, r), 0);
    run_until(&writer_loop, &done, 1, 30);
    assert_int_equal(done, 1);
    assert_int_equal(r->status, TERN_STORE_OK);

    run_until(&watcher_loop, &inbox.precise, 1, 10);
    run_until(&watcher_loop, &any.precise, 1, 5);
    assert_true(any.precise >= 1);
    assert_true(inbox.precise >= 1);
    assert_true(pthread_equal(inbox.thread, pthread_self()));
    assert_int_equal(inbox.mailbox_id, inbox_id);
    assert_int_equal(any.mailbox_id, inbox_id);
    assert_true(inbox.modseq >= r->out.append.modseq);
    /* A watch on another mailbox is not told about INBOX (give it a moment
     * to be wrong). */
    run_until(&watcher_loop, &quiet.wrong, 1, 0.3);
    assert_int_equal(quiet.wrong, 0);
    assert_int_equal(quiet.precise, 0);

    /* Flag changes wake too; a removed watch does not. */
    tern_store_watch_remove(w_any);
    int any_before = any.n, inbox_before = inbox.precise;
    tern_store_req *f = R(TERN_STORE_SET_FLAGS);
    f->cb = on_done;
    f->data = &done;
    f->in.account = tacct;
    f->in.name = "INBOX";
    f->in.uids = ALL_UIDS;
    f->in.flags_mode = TERN_FLAGS_ADD;
    f->in.flags = TERN_FLAG_SEEN;
    assert_int_equal(tern_store_submit(ac, f), 0);
    run_until(&writer_loop, &done, 2, 30);
    assert_int_equal(f->status, TERN_STORE_OK);
    run_until(&watcher_loop, &inbox.precise, inbox_before + 1, 10);
    assert_true(inbox.precise > inbox_before);
    assert_int_equal(any.n, any_before);

    /* Another account's changes are not ours. */
    char other[80];
    snprintf(other, sizeof(other), "ev%s", tacct);
    assert_int_equal(harness_account(&H, other, 0, 0), TERN_STORE_OK);
    inbox_before = inbox.precise;
    append_full(other, "INBOX", MSG_SIMPLE, 0, NULL, 0, 0, TERN_STORE_OK);
    run_until(&watcher_loop, &inbox.wrong, 1, 0.3);
    assert_int_equal(inbox.wrong, 0);
    assert_int_equal(inbox.precise, inbox_before);
    assert_int_equal(quiet.wrong, 0);

    tern_store_watch_remove(w_inbox);
    tern_store_watch_remove(w_quiet);
    tern_store_client_close(wc);
    tern_store_client_close(ac);
    uv_run(&watcher_loop, UV_RUN_DEFAULT);
    uv_run(&writer_loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&watcher_loop), 0);
    assert_int_equal(uv_loop_close(&writer_loop), 0);
}

/* Submits and closes: every callback runs, even for requests still queued
 * when the client is closed. */
static void t_client_close_completes(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    tern_store_client *c = tern_store_client_new(H.store, &loop);
    assert_non_null(c);
    int done = 0;
    enum { N = 20 };
    tern_store_req *rs[N];
    for (int i = 0; i < N; i++) {
        rs[i] = R(TERN_STORE_APPEND);
        rs[i]->cb = on_done;
        rs[i]->data = &done;
        rs[i]->in.account = tacct;
        rs[i]->in.name = "INBOX";
        rs[i]->in.data = (const uint8_t *)MSG_SIMPLE;
        rs[i]->in.len = sizeof(MSG_SIMPLE) - 1;
        assert_int_equal(tern_store_submit(c, rs[i]), 0);
    }
    tern_store_client_close(c);
    /* Submitting to a closing client is refused without a callback. */
    tern_store_req *late = R(TERN_STORE_MAILBOX_STATUS);
    late->cb = on_done;
    late->data = &done;
    late->in.account = tacct;
    late->in.name = "INBOX";
    assert_true(tern_store_submit(c, late) < 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(done, N);
    assert_int_equal(uv_loop_close(&loop), 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(rs[i]->status, TERN_STORE_OK);
    assert_int_equal(mb_status("INBOX")->messages, N);
}

/* Four clients, each on its own thread and loop, append 250 messages each
 * into one mailbox with several requests in flight. */
enum { CONC_CLIENTS = 4, CONC_PER = 250, CONC_WINDOW = 16 };

typedef struct conc_worker {
    int idx;
    uv_loop_t loop;
    tern_store_client *client;
    uint8_t *msgs[CONC_PER];
    size_t lens[CONC_PER];
    uint32_t uids[CONC_PER];
    int status[CONC_PER];
    int next, done, in_flight;
    int submit_fail;
} conc_worker;

static void conc_submit(conc_worker *w);

static void conc_done(tern_store_req *r)
{
    conc_worker *w = r->data;
    int i = (int)(intptr_t)r->in.internal_date - 1600000000;
    if (i >= 0 && i < CONC_PER) {
        w->status[i] = r->status;
        w->uids[i] = r->status == TERN_STORE_OK ? r->out.append.uid : 0;
    }
    w->done++;
    w->in_flight--;
    tern_store_req_free(r);
    conc_submit(w);
}

static void conc_submit(conc_worker *w)
{
    while (w->in_flight < CONC_WINDOW && w->next < CONC_PER) {
        int i = w->next++;
        tern_store_req *r = tern_store_req_new(TERN_STORE_APPEND, conc_done, w);
        r->in.account = tacct;
        r->in.name = "INBOX";
        r->in.data = w->msgs[i];
        r->in.len = w->lens[i];
        /* The index rides in the internal date, to find it in the cb. */
        r->in.internal_date = 1600000000 + i;
        if (tern_store_submit(w->client, r) != 0) {
            w->submit_fail++;
            w->done++;
            tern_store_req_free(r);
            continue;
        }
        w->in_flight++;
    }
}

static void *conc_thread(void *arg)
{
    conc_worker *w = arg;
    uv_loop_init(&w->loop);
    w->client = tern_store_client_new(H.store, &w->loop);
    if (w->client == NULL) {
        w->submit_fail = CONC_PER;
        return NULL;
    }
    conc_submit(w);
    while (w->done < CONC_PER)
        uv_run(&w->loop, UV_RUN_ONCE);
    tern_store_client_close(w->client);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_loop_close(&w->loop);
    return NULL;
}

static void t_concurrent_appends(void **state)
{
    (void)state;
    static conc_worker workers[CONC_CLIENTS];
    memset(workers, 0, sizeof(workers));
    char tag[32];
    for (int k = 0; k < CONC_CLIENTS; k++) {
        workers[k].idx = k;
        snprintf(tag, sizeof(tag), "client%d", k);
        for (int i = 0; i < CONC_PER; i++)
            workers[k].msgs[i] = harness_message(tag, (unsigned)i, 200 + (size_t)(i % 7) * 300,
                                                 &workers[k].lens[i]);
    }
    pthread_t th[CONC_CLIENTS];
    for (int k = 0; k < CONC_CLIENTS; k++)
        assert_int_equal(pthread_create(&th[k], NULL, conc_thread, &workers[k]), 0);
    for (int k = 0; k < CONC_CLIENTS; k++)
        pthread_join(th[k], NULL);

    static uint8_t seen[CONC_CLIENTS * CONC_PER + 1];
    memset(seen, 0, sizeof(seen));
    int failures = 0;
    for (int k = 0; k < CONC_CLIENTS; k++) {
        assert_int_equal(workers[k].submit_fail, 0);
        for (int i = 0; i < CONC_PER; i++) {
            if (workers[k].status[i] != TERN_STORE_OK) {
                if (failures++ < 5)
                    print_message("client %d append %d: %s\n", k, i,
                                  tern_store_strerror(workers[k].status[i]));
                continue;
            }
            uint32_t u = workers[k].uids[i];
            if (u < 1 || u > CONC_CLIENTS * CONC_PER)
                fail_msg("client %d append %d: uid %u out of 1..%d", k, i, u,
                         CONC_CLIENTS * CONC_PER);
            if (seen[u]++)
                fail_msg("uid %u given twice", u);
        }
    }
    assert_int_equal(failures, 0);
    /* Unique and in 1..1000 with 1000 of them: dense. */
    tern_mailbox_info *s = mb_status("INBOX");
    assert_int_equal(s->messages, CONC_CLIENTS * CONC_PER);
    assert_int_equal(s->uidnext, CONC_CLIENTS * CONC_PER + 1);
    tern_store_req *f = fetch("INBOX", ALL_UIDS);
    assert_int_equal(f->out.n_messages, CONC_CLIENTS * CONC_PER);

    /* Each uid holds exactly the bytes its append carried. */
    for (int k = 0; k < CONC_CLIENTS; k++)
        for (int i = 0; i < CONC_PER; i++) {
            size_t len;
            uint8_t *b = body_of(tacct, "INBOX", workers[k].uids[i], 1 << 20, &len);
            bool same = len == workers[k].lens[i] && memcmp(b, workers[k].msgs[i], len) == 0;
            free(b);
            if (!same)
                fail_msg("uid %u: body is not client %d's append %d", workers[k].uids[i], k, i);
            tern_message_info *m = fetched(f, workers[k].uids[i]);
            assert_non_null(m);
            assert_int_equal(m->internal_date, 1600000000 + i);
        }
    for (int k = 0; k < CONC_CLIENTS; k++)
        for (int i = 0; i < CONC_PER; i++)
            free(workers[k].msgs[i]);
}

/* ---- appends submitted together ---------------------------------------- */

enum { MIX_N = 30 };

typedef struct mix_state {
    int done;
} mix_state;

static void mix_done(tern_store_req *r)
{
    ((mix_state *)r->data)->done++;
}

/* Appends queued together (a backend may run them as one transaction)
 * with failures among them: each gets its own answer, a failed one
 * changes nothing (no uid, no modseq, no quota used), and a reply
 * queued behind its parent joins the parent's thread. */
static void t_append_together_with_failures(void **state)
{
    (void)state;
    tern_store_req *q = R(TERN_STORE_ACCOUNT_SET_QUOTA);
    q->in.account = tacct;
    q->in.quota_messages = 15;
    run_ok(q);
    uint64_t modseq0 = mb_status("INBOX")->highest_modseq;

    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_store_client *c = tern_store_client_new(H.store, &loop);
    assert_non_null(c);
    mix_state st = {0};
    tern_store_req *rs[MIX_N];
    char *texts[MIX_N];
    for (int i = 0; i < MIX_N; i++) {
        texts[i] = malloc(256);
        assert_non_null(texts[i]);
        /* Message 4 replies to message 1. */
        snprintf(texts[i], 256,
                 "From: a@example.org\r\nSubject: mix %d\r\nMessage-ID: <mix%d@example.org>\r\n"
                 "%s\r\nbody %d\r\n",
                 i, i, i == 4 ? "In-Reply-To: <mix1@example.org>\r\n" : "", i);
        rs[i] = tern_store_req_new(TERN_STORE_APPEND, mix_done, &st);
        rs[i]->in.account = tacct;
        rs[i]->in.name = i % 3 == 0 ? "Missing" : "INBOX";
        rs[i]->in.data = (const uint8_t *)texts[i];
        rs[i]->in.len = strlen(texts[i]);
        assert_int_equal(tern_store_submit(c, rs[i]), 0);
    }
    while (st.done < MIX_N)
        uv_run(&loop, UV_RUN_ONCE);
    tern_store_client_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);

    /* The 20 INBOX appends: the first 15 fit the quota, in order. */
    uint64_t used = 0;
    int stored = 0, missing = 0, over = 0;
    for (int i = 0; i < MIX_N; i++) {
        int want = i % 3 == 0 ? TERN_STORE_ENOTFOUND
                              : (stored < 15 ? TERN_STORE_OK : TERN_STORE_EQUOTA);
        if (rs[i]->status != want)
            fail_msg("append %d: got %s, want %s (%s)", i, tern_store_strerror(rs[i]->status),
                     tern_store_strerror(want), rs[i]->error);
        if (want == TERN_STORE_OK) {
            stored++;
            used += strlen(texts[i]);
            assert_int_equal(rs[i]->out.append.uid, (uint32_t)stored);
            assert_true(rs[i]->out.append.modseq > modseq0);
        }
        missing += want == TERN_STORE_ENOTFOUND;
        over += want == TERN_STORE_EQUOTA;
    }
    assert_int_equal(stored, 15);
    assert_int_equal(missing, 10);
    assert_int_equal(over, 5);
    assert_string_equal(rs[4]->out.append.thread_id, rs[1]->out.append.thread_id);
    assert_string_not_equal(rs[2]->out.append.thread_id, rs[1]->out.append.thread_id);

    tern_mailbox_info *s = mb_status("INBOX");
    assert_int_equal(s->messages, 15);
    assert_int_equal(s->uidnext, 16);
    q = R(TERN_STORE_QUOTA_GET);
    q->in.account = tacct;
    run_ok(q);
    assert_int_equal(q->out.account.used_messages, 15);
    assert_int_equal(q->out.account.used_bytes, used);
    /* Nothing a failed append did is left: the next modseq follows the
     * last stored one. */
    uint64_t last = 0;
    for (int i = 0; i < MIX_N; i++)
        if (rs[i]->status == TERN_STORE_OK && rs[i]->out.append.modseq > last)
            last = rs[i]->out.append.modseq;
    assert_int_equal(s->highest_modseq, last);
    for (int i = 0; i < MIX_N; i++) {
        tern_store_req_free(rs[i]);
        free(texts[i]);
    }
}

/* ---- keyword case ------------------------------------------------------ */

/* The keywords of a message must be exactly `want`, spelling included. */
static void expect_keywords_(const tern_message_info *m, const char *const *want, size_t n,
                             int line)
{
    char got[256] = "";
    for (size_t i = 0; i < m->n_keywords; i++)
        snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s ",
                 m->keywords[i] ? m->keywords[i] : "(null)");
    bool ok = m->n_keywords == n;
    for (size_t i = 0; ok && i < n; i++) {
        bool found = false;
        for (size_t k = 0; k < m->n_keywords; k++)
            found |= m->keywords[k] && strcmp(m->keywords[k], want[i]) == 0;
        ok = found;
    }
    if (!ok) {
        char ws[256] = "";
        for (size_t i = 0; i < n; i++)
            snprintf(ws + strlen(ws), sizeof(ws) - strlen(ws), "%s ", want[i]);
        fail_msg("line %d: uid %u keywords { %s} want { %s}", line, m->uid, got, ws);
    }
}
#define expect_keywords(m, ...)                                                            \
    do {                                                                                   \
        const char *const w_[] = {"", __VA_ARGS__};                                        \
        expect_keywords_((m), w_ + 1, sizeof(w_) / sizeof(w_[0]) - 1, __LINE__);          \
    } while (0)

static tern_store_req *search_in(const char *mbox, const tern_search *q)
{
    tern_store_req *r = R(TERN_STORE_SEARCH);
    r->in.account = tacct;
    r->in.name = mbox;
    r->in.search = q;
    run_ok(r);
    return r;
}

static void t_keyword_case(void **state)
{
    (void)state;
    /* Kept as written. */
    const char *k0[] = {"$Forwarded", "Custom1"};
    append_full(tacct, "INBOX", MSG_SIMPLE, 0, k0, 2, 0, TERN_STORE_OK);
    append("INBOX", MSG_SIMPLE, 0);
    append("INBOX", MSG_SIMPLE, 0);
    expect_keywords(fetch_one("INBOX", 1), "$Forwarded", "Custom1");

    const char *foo[] = {"Foo"}, *FOO[] = {"FOO"}, *lfoo[] = {"foo"}, *mix[] = {"fOO"};
    tern_store_req *r = set_flags("INBOX", one_range(1, 1), TERN_FLAGS_ADD, 0, foo, 1, 0,
                                  TERN_STORE_OK);
    assert_int_equal(r->out.n_messages, 1);
    expect_keywords(&r->out.messages[0], "$Forwarded", "Custom1", "Foo");
    expect_keywords(fetch_one("INBOX", 1), "$Forwarded", "Custom1", "Foo");

    /* Another spelling in the same mailbox takes the one already there. */
    r = set_flags("INBOX", one_range(2, 2), TERN_FLAGS_ADD, 0, FOO, 1, 0, TERN_STORE_OK);
    assert_int_equal(r->out.n_messages, 1);
    expect_keywords(fetch_one("INBOX", 2), "Foo");
    const char *k1[] = {"CUSTOM1"};
    append_full(tacct, "INBOX", MSG_SIMPLE, 0, k1, 1, 0, TERN_STORE_OK);
    expect_keywords(fetch_one("INBOX", 4), "Custom1");

    /* Matching ignores case: adding what is there changes nothing (no
     * modseq), removing in another case removes. */
    uint64_t ms1 = fetch_one("INBOX", 1)->modseq;
    r = set_flags("INBOX", one_range(1, 1), TERN_FLAGS_ADD, 0, lfoo, 1, 0, TERN_STORE_OK);
    assert_int_equal(r->out.n_messages, 0);
    assert_int_equal(fetch_one("INBOX", 1)->modseq, ms1);
    r = set_flags("INBOX", one_range(1, 1), TERN_FLAGS_REMOVE, 0, mix, 1, 0, TERN_STORE_OK);
    assert_int_equal(r->out.n_messages, 1);
    expect_keywords(fetch_one("INBOX", 1), "$Forwarded", "Custom1");
    const char *rep[] = {"FOO", "Bar", "BAR"};
    set_flags("INBOX", one_range(3, 3), TERN_FLAGS_REPLACE, 0, rep, 3, 0, TERN_STORE_OK);
    expect_keywords(fetch_one("INBOX", 3), "Foo", "Bar");
    /* REPLACE with the same set in another case is no change. */
    const char *rep2[] = {"foo", "bar"};
    r = set_flags("INBOX", one_range(3, 3), TERN_FLAGS_REPLACE, 0, rep2, 2, 0, TERN_STORE_OK);
    assert_int_equal(r->out.n_messages, 0);
    expect_keywords(fetch_one("INBOX", 3), "Foo", "Bar");

    /* SEARCH KEYWORD / UNKEYWORD without case, in SQL and with a body
     * criterion (evaluated row by row). */
    tern_search q = S_STR(TERN_SEARCH_KEYWORD, "foo");
    expect_uids(search_in("INBOX", &q), "KEYWORD foo", 0, 2, 3);
    q = S_STR(TERN_SEARCH_UNKEYWORD, "FOO");
    expect_uids(search_in("INBOX", &q), "UNKEYWORD FOO", 0, 1, 4);
    q = S_STR(TERN_SEARCH_KEYWORD, "$FORWARDED");
    expect_uids(search_in("INBOX", &q), "KEYWORD $FORWARDED", 0, 1);
    tern_search both[] = {S_STR(TERN_SEARCH_KEYWORD, "bAr"),
                          {.kind = TERN_SEARCH_BODY, .str = "hello"}};
    q = (tern_search){.kind = TERN_SEARCH_AND, .children = both, .n_children = 2};
    expect_uids(search_in("INBOX", &q), "KEYWORD bAr BODY hello", 0, 3);

    /* The spelling is the mailbox's: another mailbox has its own, and a
     * copy or move takes the target's. */
    mb_create("Other");
    append_full(tacct, "Other", MSG_SIMPLE, 0, lfoo, 1, 0, TERN_STORE_OK);
    expect_keywords(fetch_one("Other", 1), "foo");
    tern_store_req *cp = R(TERN_STORE_COPY);
    cp->in.account = tacct;
    cp->in.name = "INBOX";
    cp->in.new_name = "Other";
    cp->in.uids = one_range(2, 2);
    run_ok(cp);
    assert_int_equal(cp->out.n_copied, 1);
    expect_keywords(fetch_one("Other", cp->out.dst_uids[0]), "foo");
    expect_keywords(fetch_one("INBOX", 2), "Foo");
    tern_store_req *mv = R(TERN_STORE_MOVE);
    mv->in.account = tacct;
    mv->in.name = "INBOX";
    mv->in.new_name = "Other";
    mv->in.uids = one_range(3, 3);
    run_ok(mv);
    assert_int_equal(mv->out.n_copied, 1);
    expect_keywords(fetch_one("Other", mv->out.dst_uids[0]), "foo", "Bar");
    q = S_STR(TERN_SEARCH_KEYWORD, "FOO");
    expect_uids(search_in("Other", &q), "Other KEYWORD FOO", 0, 1, 2, 3);

    /* The mailbox's keywords: one spelling each, sorted without case. */
    tern_store_req *kl = R(TERN_STORE_MAILBOX_KEYWORDS);
    kl->in.account = tacct;
    kl->in.name = "INBOX";
    run_ok(kl);
    const char *want_inbox[] = {"$Forwarded", "Custom1", "Foo"};
    assert_int_equal(kl->out.n_names, 3);
    for (size_t i = 0; i < 3; i++)
        assert_string_equal(kl->out.names[i], want_inbox[i]);
    kl = R(TERN_STORE_MAILBOX_KEYWORDS);
    kl->in.account = tacct;
    kl->in.name = "Other";
    run_ok(kl);
    assert_int_equal(kl->out.n_names, 2);
    assert_string_equal(kl->out.names[0], "Bar");
    assert_string_equal(kl->out.names[1], "foo");
    mb_create("Empty");
    kl = R(TERN_STORE_MAILBOX_KEYWORDS);
    kl->in.account = tacct;
    kl->in.name = "Empty";
    run_ok(kl);
    assert_int_equal(kl->out.n_names, 0);
    kl = R(TERN_STORE_MAILBOX_KEYWORDS);
    kl->in.account = tacct;
    kl->in.name = "Missing";
    run_st(kl, TERN_STORE_ENOTFOUND);
}

/* ---- \Recent ------------------------------------------------------------ */

static tern_store_req *claim_recent(const char *mbox, bool peek, int want)
{
    tern_store_req *r = R(TERN_STORE_RECENT_CLAIM);
    r->in.account = tacct;
    r->in.name = mbox;
    r->in.recent_peek = peek;
    run_st(r, want);
    if (r->out.n_uids)
        assert_non_null(r->out.uids);
    for (size_t i = 1; i < r->out.n_uids; i++)
        if (r->out.uids[i - 1] >= r->out.uids[i])
            fail_msg("RECENT_CLAIM %s: uids not ascending at %zu", mbox, i);
    return r;
}

static void t_recent_claim(void **state)
{
    (void)state;
    for (int i = 0; i < 3; i++)
        append("INBOX", MSG_SIMPLE, 0);
    tern_mailbox_info *s0 = mb_status("INBOX");
    assert_int_equal(s0->recent, 3);
    uint64_t ms0 = s0->highest_modseq;

    /* A peek (EXAMINE) lists them and leaves them recent. */
    expect_uids(claim_recent("INBOX", true, TERN_STORE_OK), "peek", 0, 1, 2, 3);
    assert_int_equal(mb_status("INBOX")->recent, 3);

    /* The first claim gets them all, the second nothing. */
    expect_uids(claim_recent("INBOX", false, TERN_STORE_OK), "first claim", 0, 1, 2, 3);
    expect_uids(claim_recent("INBOX", false, TERN_STORE_OK), "second claim", 0);
    expect_uids(claim_recent("INBOX", true, TERN_STORE_OK), "peek after claim", 0);
    tern_mailbox_info *s1 = mb_status("INBOX");
    assert_int_equal(s1->recent, 0);
    assert_int_equal(s1->messages, 3);

    /* Not a change anyone is told about: no modseq, nothing in the log. */
    assert_int_equal(s1->highest_modseq, ms0);
    tern_store_req *c = R(TERN_STORE_CHANGES);
    c->in.account = tacct;
    c->in.name = "INBOX";
    c->in.since_modseq = ms0;
    run_ok(c);
    assert_int_equal(c->out.changes.n_changed, 0);
    assert_int_equal(c->out.changes.n_vanished, 0);
    for (uint32_t u = 1; u <= 3; u++)
        assert_true(fetch_one("INBOX", u)->modseq <= ms0);

    /* New mail is recent again, and only the new mail. */
    append("INBOX", MSG_SIMPLE, TERN_FLAG_SEEN);
    assert_int_equal(mb_status("INBOX")->recent, 1);
    expect_uids(claim_recent("INBOX", false, TERN_STORE_OK), "after delivery", 0, 4);

    /* COPY and MOVE make the target's copies recent (RFC 3501 6.4.7);
     * the source keeps its state. */
    mb_create("Other");
    tern_store_req *cp = R(TERN_STORE_COPY);
    cp->in.account = tacct;
    cp->in.name = "INBOX";
    cp->in.new_name = "Other";
    cp->in.uids = one_range(1, 2);
    run_ok(cp);
    expect_uids(claim_recent("INBOX", true, TERN_STORE_OK), "source after copy", 0);
    expect_uids(claim_recent("Other", false, TERN_STORE_OK), "copy target", 0, 1, 2);
    tern_store_req *mv = R(TERN_STORE_MOVE);
    mv->in.account = tacct;
    mv->in.name = "INBOX";
    mv->in.new_name = "Other";
    mv->in.uids = one_range(3, 3);
    run_ok(mv);
    expect_uids(claim_recent("Other", false, TERN_STORE_OK), "move target", 0, 3);
    assert_int_equal(mb_status("Other")->recent, 0);

    /* A claim in one mailbox leaves the others alone. */
    append("INBOX", MSG_SIMPLE, 0);
    append("Other", MSG_SIMPLE, 0);
    expect_uids(claim_recent("Other", false, TERN_STORE_OK), "other only", 0, 4);
    assert_int_equal(mb_status("INBOX")->recent, 1);

    claim_recent("Missing", false, TERN_STORE_ENOTFOUND);
    claim_recent("Missing", true, TERN_STORE_ENOTFOUND);
    tern_store_req *bad = R(TERN_STORE_RECENT_CLAIM);
    bad->in.account = "nobody@example.test";
    bad->in.name = "INBOX";
    run_st(bad, TERN_STORE_ENOTFOUND);
}

/* Sessions claiming at once while mail arrives: every message is handed
 * to exactly one claim. */
enum { RC_CLAIMERS = 4, RC_CLAIMS = 25, RC_FIRST = 120, RC_LATER = 120, RC_MAX_UIDS = 512 };

typedef struct rc_worker {
    uv_loop_t loop;
    tern_store_client *client;
    bool appender;
    int next, done, failed;
    uint32_t uids[RC_MAX_UIDS];
    size_t n_uids;
    bool overflow;
} rc_worker;

static void rc_submit(rc_worker *w);

static void rc_done(tern_store_req *r)
{
    rc_worker *w = r->data;
    if (r->status != TERN_STORE_OK)
        w->failed++;
    else if (!w->appender)
        for (size_t i = 0; i < r->out.n_uids; i++) {
            if (w->n_uids == RC_MAX_UIDS) {
                w->overflow = true;
                break;
            }
            w->uids[w->n_uids++] = r->out.uids[i];
        }
    w->done++;
    tern_store_req_free(r);
    rc_submit(w);
}

static void rc_submit(rc_worker *w)
{
    int total = w->appender ? RC_LATER : RC_CLAIMS;
    if (w->next >= total || w->next > w->done)
        return; /* one request in flight per worker, in order */
    w->next++;
    tern_store_req *r = tern_store_req_new(w->appender ? TERN_STORE_APPEND : TERN_STORE_RECENT_CLAIM,
                                           rc_done, w);
    r->in.account = tacct;
    r->in.name = "INBOX";
    if (w->appender) {
        r->in.data = (const uint8_t *)MSG_SIMPLE;
        r->in.len = strlen(MSG_SIMPLE);
    }
    if (tern_store_submit(w->client, r) != 0) {
        w->failed++;
        w->done++;
        tern_store_req_free(r);
    }
}

static void *rc_thread(void *arg)
{
    rc_worker *w = arg;
    int total = w->appender ? RC_LATER : RC_CLAIMS;
    uv_loop_init(&w->loop);
    w->client = tern_store_client_new(H.store, &w->loop);
    if (w->client == NULL) {
        w->failed = total;
        return NULL;
    }
    rc_submit(w);
    while (w->done < total) {
        uv_run(&w->loop, UV_RUN_ONCE);
        rc_submit(w);
    }
    tern_store_client_close(w->client);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_loop_close(&w->loop);
    return NULL;
}

static void t_recent_claim_concurrent(void **state)
{
    (void)state;
    for (int i = 0; i < RC_FIRST; i++)
        append("INBOX", MSG_SIMPLE, 0);
    static rc_worker w[RC_CLAIMERS + 1];
    memset(w, 0, sizeof(w));
    w[RC_CLAIMERS].appender = true;
    pthread_t th[RC_CLAIMERS + 1];
    for (int k = 0; k <= RC_CLAIMERS; k++)
        assert_int_equal(pthread_create(&th[k], NULL, rc_thread, &w[k]), 0);
    for (int k = 0; k <= RC_CLAIMERS; k++)
        pthread_join(th[k], NULL);
    static uint8_t seen[RC_FIRST + RC_LATER + 1];
    memset(seen, 0, sizeof(seen));
    size_t claimed = 0, claimers_with_some = 0;
    for (int k = 0; k <= RC_CLAIMERS; k++) {
        assert_int_equal(w[k].failed, 0);
        assert_false(w[k].overflow);
        claimers_with_some += w[k].n_uids > 0;
        for (size_t i = 0; i < w[k].n_uids; i++) {
            uint32_t u = w[k].uids[i];
            if (u < 1 || u > RC_FIRST + RC_LATER)
                fail_msg("claimer %d: uid %u out of range", k, u);
            if (seen[u]++)
                fail_msg("uid %u claimed twice", u);
            claimed++;
        }
    }
    assert_true(claimers_with_some >= 1);
    /* What nobody claimed yet goes to one last claim; then all are out. */
    tern_store_req *last = claim_recent("INBOX", false, TERN_STORE_OK);
    for (size_t i = 0; i < last->out.n_uids; i++) {
        uint32_t u = last->out.uids[i];
        if (u < 1 || u > RC_FIRST + RC_LATER || seen[u]++)
            fail_msg("last claim: uid %u out of range or claimed twice", u);
        claimed++;
    }
    assert_int_equal(claimed, RC_FIRST + RC_LATER);
    assert_int_equal(mb_status("INBOX")->recent, 0);
}

/* pg only: the bodies row holding `data` (by its hash), as "refcount" or
 * "" when there is none; fails when there are several. */
static void pg_body_rows(const char *data, size_t len, int *rows_r, int *refcount_r)
{
    PGconn *c = PQconnectdb(H.cfg->postgres.conninfo);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("psql: %s", PQerrorMessage(c));
    const char *pv[1] = {data};
    int pl[1] = {(int)len}, pf[1] = {1};
    PGresult *res = PQexecParams(c, "SELECT refcount FROM bodies WHERE hash = sha256($1::bytea)", 1,
                                 NULL, pv, pl, pf, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("bodies: %s", PQerrorMessage(c));
    *rows_r = PQntuples(res);
    *refcount_r = *rows_r ? atoi(PQgetvalue(res, 0, 0)) : 0;
    PQclear(res);
    PQfinish(c);
}

/* pg only: header index rows whose message is gone (the trigger that
 * replaced the foreign key must leave none). */
static int pg_orphan_headers(void)
{
    PGconn *c = PQconnectdb(H.cfg->postgres.conninfo);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("psql: %s", PQerrorMessage(c));
    PGresult *res = PQexec(c, "SELECT count(*) FROM headers h WHERE NOT EXISTS "
                              "(SELECT 1 FROM messages m WHERE m.id = h.message)");
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("headers: %s", PQerrorMessage(c));
    int n = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    PQfinish(c);
    return n;
}

static void expect_body_rows(const char *data, int rows, int refcount, int line)
{
    if (!H.pg)
        return;
    int got_rows, got_ref;
    pg_body_rows(data, strlen(data), &got_rows, &got_ref);
    if (got_rows != rows || got_ref != refcount)
        fail_msg("line %d: bodies rows %d refcount %d, want %d and %d", line, got_rows, got_ref,
                 rows, refcount);
}

/* One delivery to several accounts (LocalDelivery): each copy has its own
 * prefix (Delivered-To) and the common part is stored once (pg: one bodies
 * row, refcounted; local writes whole files, as Maildir requires). Every
 * copy reads back as prefix + data, its header index covers the prefix,
 * and the shared row goes only with its last reference (expunge, mailbox
 * delete, account delete). */
static void t_shared_body(void **state)
{
    (void)state;
    char acct[3][80], prefix[3][320], data[600];
    /* No name is a substring of another (the header search below). */
    for (int i = 0; i < 3; i++) {
        snprintf(acct[i], sizeof acct[i], "fan%d-%s", i, tacct);
        assert_int_equal(harness_account(&H, acct[i], 0, 0), TERN_STORE_OK);
    }
    snprintf(data, sizeof data,
             "From: Alice <alice@example.org>\r\nTo: all@example.test\r\n"
             "Subject: fan-out %s\r\nMessage-ID: <fan.%s>\r\n\r\nOne body, three mailboxes.\r\n",
             tacct, tacct);
    /* All three in flight at once: on pg they run in parallel and meet on
     * the body row. */
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    tern_store_client *c = tern_store_client_new(H.store, &loop);
    assert_non_null(c);
    int done = 0;
    tern_store_req *ap[3];
    for (int i = 0; i < 3; i++) {
        snprintf(prefix[i], sizeof prefix[i], "Return-Path: <alice@example.org>\r\n"
                 "Delivered-To: %s\r\n", acct[i]);
        ap[i] = R(TERN_STORE_APPEND);
        ap[i]->cb = on_done;
        ap[i]->data = &done;
        ap[i]->in.account = acct[i];
        ap[i]->in.name = "INBOX";
        ap[i]->in.prefix = (const uint8_t *)prefix[i];
        ap[i]->in.prefix_len = strlen(prefix[i]);
        ap[i]->in.data = (const uint8_t *)data;
        ap[i]->in.len = strlen(data);
        assert_int_equal(tern_store_submit(c, ap[i]), 0);
    }
    run_until(&loop, &done, 3, 30);
    assert_int_equal(done, 3);
    tern_store_client_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    for (int i = 0; i < 3; i++) {
        if (ap[i]->status != TERN_STORE_OK)
            fail_msg("append to %s: %s %s", acct[i], tern_store_strerror(ap[i]->status),
                     ap[i]->error);
        for (int k = 0; k < i; k++)
            assert_string_not_equal(ap[i]->out.append.id, ap[k]->out.append.id);
    }
    expect_body_rows(data, 1, 3, __LINE__);

    char whole[3][1024];
    for (int i = 0; i < 3; i++) {
        snprintf(whole[i], sizeof whole[i], "%s%s", prefix[i], data);
        /* Chunks of 7 bytes cross the prefix/body boundary mid-chunk. */
        size_t len;
        uint8_t *b = body_of(acct[i], "INBOX", 1, 7, &len);
        if (len != strlen(whole[i]) || memcmp(b, whole[i], len) != 0) {
            free(b);
            fail_msg("%s: the copy reads back wrong (%zu bytes)", acct[i], len);
        }
        free(b);
        tern_store_req *f = R(TERN_STORE_FETCH);
        f->in.account = acct[i];
        f->in.name = "INBOX";
        f->in.uids = ALL_UIDS;
        run_ok(f);
        assert_int_equal(f->out.n_messages, 1);
        assert_int_equal(f->out.messages[0].size, strlen(whole[i]));
        /* The index covers the prefix: each account finds its own
         * Delivered-To, and no other. */
        for (int k = 0; k < 3; k++) {
            tern_search q = {.kind = TERN_SEARCH_HEADER, .field = "Delivered-To", .str = acct[k]};
            tern_store_req *sr = R(TERN_STORE_SEARCH);
            sr->in.account = acct[i];
            sr->in.name = "INBOX";
            sr->in.search = &q;
            run_ok(sr);
            assert_int_equal(sr->out.n_uids, k == i ? 1 : 0);
        }
        tern_search q = {.kind = TERN_SEARCH_TEXT, .str = acct[i]};
        tern_store_req *sr = R(TERN_STORE_SEARCH);
        sr->in.account = acct[i];
        sr->in.name = "INBOX";
        sr->in.search = &q;
        run_ok(sr);
        assert_int_equal(sr->out.n_uids, 1);
    }

    /* A copy is one more reference; deleting its mailbox drops it. */
    mb_create_in(acct[0], "Keep");
    tern_store_req *cp = R(TERN_STORE_COPY);
    cp->in.account = acct[0];
    cp->in.name = "INBOX";
    cp->in.new_name = "Keep";
    cp->in.uids = ALL_UIDS;
    run_ok(cp);
    assert_int_equal(cp->out.n_copied, 1);
    expect_body_rows(data, 1, 4, __LINE__);
    size_t klen;
    uint8_t *kb = body_of(acct[0], "Keep", cp->out.dst_uids[0], 1 << 20, &klen);
    assert_int_equal(klen, strlen(whole[0]));
    assert_memory_equal(kb, whole[0], klen);
    free(kb);
    tern_store_req *md = R(TERN_STORE_MAILBOX_DELETE);
    md->in.account = acct[0];
    md->in.name = "Keep";
    run_ok(md);
    expect_body_rows(data, 1, 3, __LINE__);

    /* Expunged in the first account, its account deleted for the second:
     * the third still reads its copy. */
    tern_store_req *fl = R(TERN_STORE_SET_FLAGS);
    fl->in.account = acct[0];
    fl->in.name = "INBOX";
    fl->in.uids = ALL_UIDS;
    fl->in.flags_mode = TERN_FLAGS_ADD;
    fl->in.flags = TERN_FLAG_DELETED;
    run_ok(fl);
    tern_store_req *ex = R(TERN_STORE_EXPUNGE);
    ex->in.account = acct[0];
    ex->in.name = "INBOX";
    run_ok(ex);
    assert_int_equal(ex->out.n_uids, 1);
    expect_body_rows(data, 1, 2, __LINE__);
    tern_store_req *ad = R(TERN_STORE_ACCOUNT_DELETE);
    ad->in.account = acct[1];
    run_ok(ad);
    expect_body_rows(data, 1, 1, __LINE__);
    size_t len;
    uint8_t *b = body_of(acct[2], "INBOX", 1, 1 << 20, &len);
    assert_int_equal(len, strlen(whole[2]));
    assert_memory_equal(b, whole[2], len);
    free(b);

    /* The last reference: the row goes. */
    fl = R(TERN_STORE_SET_FLAGS);
    fl->in.account = acct[2];
    fl->in.name = "INBOX";
    fl->in.uids = ALL_UIDS;
    fl->in.flags_mode = TERN_FLAGS_ADD;
    fl->in.flags = TERN_FLAG_DELETED;
    run_ok(fl);
    ex = R(TERN_STORE_EXPUNGE);
    ex->in.account = acct[2];
    ex->in.name = "INBOX";
    run_ok(ex);
    assert_int_equal(ex->out.n_uids, 1);
    expect_body_rows(data, 0, 0, __LINE__);

    if (H.pg)
        assert_int_equal(pg_orphan_headers(), 0);

    /* A fresh delivery of the same bytes after that stores them again. */
    tern_store_req *again = append_full(acct[2], "INBOX", data, 0, NULL, 0, 0, TERN_STORE_OK);
    assert_int_equal(again->out.append.uid, 2);
    expect_body_rows(data, 1, 1, __LINE__);
    b = body_of(acct[2], "INBOX", 2, 1 << 20, &len);
    assert_int_equal(len, strlen(data));
    assert_memory_equal(b, data, len);
    free(b);
}

/* pg only: two stores on one database are two ternd nodes; a change made
 * through one wakes a watcher of the other (LISTEN/NOTIFY). */
static void t_pg_cross_node_events(void **state)
{
    (void)state;
    if (!H.pg)
        skip();
    tern_store *other = NULL;
    char *err = NULL;
    if (tern_store_open(H.cfg, &other, &err) != 0)
        fail_msg("second store: %s", err ? err : "?");
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    tern_store_client *c = tern_store_client_new(other, &loop);
    event_seen ev = {.want_account = tacct};
    tern_store_watch *w = tern_store_watch_add(c, tacct, 0, on_event, &ev);
    assert_non_null(w);
    /* LISTEN may be issued asynchronously: let it settle. */
    int never = 0;
    run_until(&loop, &never, 1, 0.5);
    tern_append_result *a = append("INBOX", MSG_SIMPLE, 0);
    run_until(&loop, &ev.precise, 1, 10);
    assert_true(ev.precise >= 1);
    assert_int_equal(ev.wrong, 0);
    assert_true(ev.modseq >= a->modseq);
    tern_store_watch_remove(w);
    tern_store_client_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    tern_store_close(other);
}

/* Data written through one store handle is there after close and reopen. */
static void t_reopen(void **state)
{
    (void)state;
    mb_create("Kept");
    tern_append_result *a = append("Kept", MSG_SIMPLE, TERN_FLAG_FLAGGED);
    uint32_t uv = mb_status("Kept")->uidvalidity;
    char id[128];
    snprintf(id, sizeof(id), "%s", a->id);
    free_tracked();
    harness_close_store(&H);
    assert_int_equal(harness_open(&H), 0);
    tern_mailbox_info *s = mb_status("Kept");
    assert_int_equal(s->uidvalidity, uv);
    assert_int_equal(s->messages, 1);
    tern_message_info *m = fetch_one("Kept", 1);
    assert_string_equal(m->id, id);
    assert_int_equal(m->flags, TERN_FLAG_FLAGGED);
    expect_body("Kept", 1, MSG_SIMPLE);
    assert_int_equal(append("Kept", MSG_SIMPLE, 0)->uid, 2);
}

static void t_invalid_requests(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    tern_store_client *c = tern_store_client_new(H.store, &loop);
    tern_store_req *r = R((tern_store_op)0);
    assert_int_equal(tern_store_submit(c, r), TERN_STORE_EINVAL);
    r = R(TERN_STORE__OP_COUNT);
    assert_int_equal(tern_store_submit(c, r), TERN_STORE_EINVAL);
    tern_store_client_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    const char *bn = tern_store_backend_name(H.store);
    assert_non_null(bn);
    assert_true(strlen(bn) > 0);
    for (int st = 0; st >= TERN_STORE_EFORBIDDEN; st--)
        assert_non_null(tern_store_strerror(st));
}

/* FETCH_HEADERS: header blocks of a set in one request, cut where BODY[HEADER]
 * ends, with messages past the per-message bound left to FETCH_BODY. */
static void t_fetch_headers(void **state)
{
    (void)state;
    static const char m1[] = "From: a@example.test\r\nSubject: one\r\n\r\nbody one\r\n";
    static const char m2[] = "Subject: all header\r\nX-No-Body: yes\r\n";  /* no blank line */
    static const char m3[] = "\r\nonly a body\r\n";                          /* empty header */
    static const char m4[] = "Subject: lf only\n\nbody\n";
    uint32_t u1 = append("INBOX", m1, 0)->uid;
    uint32_t u2 = append("INBOX", m2, 0)->uid;
    uint32_t u3 = append("INBOX", m3, 0)->uid;
    uint32_t u4 = append("INBOX", m4, 0)->uid;
    /* A header longer than the bound asked. */
    size_t big_len = 3000;
    char *big = malloc(big_len + 64);
    assert_non_null(big);
    size_t o = (size_t)sprintf(big, "X-Long: ");
    while (o < big_len)
        big[o++] = 'x';
    o += (size_t)sprintf(big + o, "\r\n\r\nbody\r\n");
    big[o] = '\0';
    uint32_t u5 = append("INBOX", big, 0)->uid;

    tern_store_req *r = R(TERN_STORE_FETCH_HEADERS);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.uids = ALL_UIDS;
    r->in.max_len = 1024;
    run_ok(r);
    assert_int_equal(r->out.n_headers, 5);
    const tern_message_header *h = r->out.headers;
    static const struct {
        const char *msg;
        size_t hlen;
    } want[] = {{m1, sizeof m1 - 1 - 10 /* "body one\r\n" */},
                {m2, sizeof m2 - 1},
                {m3, 2},
                {m4, sizeof m4 - 1 - 5 /* "body\n" */}};
    uint32_t uids[] = {u1, u2, u3, u4};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(h[i].uid, uids[i]);
        assert_int_equal(h[i].size, strlen(want[i].msg));
        assert_true(h[i].complete);
        assert_int_equal(h[i].len, want[i].hlen);
        assert_memory_equal(h[i].data, want[i].msg, want[i].hlen);
    }
    assert_int_equal(h[4].uid, u5);
    assert_int_equal(h[4].size, o);
    assert_false(h[4].complete);
    /* With room enough it comes whole. */
    r = R(TERN_STORE_FETCH_HEADERS);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.uids = one_range(u5, UINT32_MAX);
    r->in.max_len = 8192;
    run_ok(r);
    assert_int_equal(r->out.n_headers, 1);
    assert_true(r->out.headers[0].complete);
    assert_int_equal(r->out.headers[0].len, o - strlen("body\r\n"));
    assert_memory_equal(r->out.headers[0].data, big, o - strlen("body\r\n"));
    free(big);
    /* A per-copy prefix is part of the header block. */
    static const char pfx[] = "Delivered-To: x@example.test\r\n";
    tern_store_req *ap = R(TERN_STORE_APPEND);
    ap->in.account = tacct;
    ap->in.name = "Other";
    ap->in.prefix = (const uint8_t *)pfx;
    ap->in.prefix_len = sizeof pfx - 1;
    ap->in.data = (const uint8_t *)m1;
    ap->in.len = sizeof m1 - 1;
    mb_create("Other");
    run_ok(ap);
    r = R(TERN_STORE_FETCH_HEADERS);
    r->in.account = tacct;
    r->in.name = "Other";
    r->in.uids = ALL_UIDS;
    run_ok(r);
    assert_int_equal(r->out.n_headers, 1);
    assert_true(r->out.headers[0].complete);
    assert_int_equal(r->out.headers[0].size, sizeof pfx - 1 + sizeof m1 - 1);
    assert_int_equal(r->out.headers[0].len, sizeof pfx - 1 + want[0].hlen);
    assert_memory_equal(r->out.headers[0].data, pfx, sizeof pfx - 1);
    assert_memory_equal(r->out.headers[0].data + sizeof pfx - 1, m1, want[0].hlen);
    /* Gaps and missing uids are left out; an empty set is no error. */
    tern_uid_range two[] = {{u2, u2}, {u4, u4 + 100}};
    r = R(TERN_STORE_FETCH_HEADERS);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.uids = (tern_uid_set){two, 2};
    run_ok(r);
    assert_int_equal(r->out.n_headers, 3);
    assert_int_equal(r->out.headers[0].uid, u2);
    assert_int_equal(r->out.headers[1].uid, u4);
    assert_int_equal(r->out.headers[2].uid, u5);
    r = R(TERN_STORE_FETCH_HEADERS);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.uids = (tern_uid_set){NULL, 0};
    run_ok(r);
    assert_int_equal(r->out.n_headers, 0);
    r = R(TERN_STORE_FETCH_HEADERS);
    r->in.account = tacct;
    r->in.name = "Missing";
    r->in.uids = ALL_UIDS;
    run_st(r, TERN_STORE_ENOTFOUND);
}

/* FETCH_INDEX: the indexed header fields SORT and THREAD use, in one request. */
static void t_fetch_index(void **state)
{
    (void)state;
    static const char m1[] =
        "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
        "Subject: =?utf-8?q?Caf=C3=A9?= news\r\n"
        "From: \"Doe, Jane\" <jane@example.test>\r\n"
        "To: bob@example.test, carol@example.test\r\n"
        "Cc: Dave <dave@example.test>\r\n"
        "Message-ID: <m1@example.test>\r\n"
        "In-Reply-To: <p0@example.test>\r\n"
        "References: <r0@example.test> <p0@example.test>\r\n"
        "\r\nhi\r\n";
    static const char m2[] = "Subject: bare\r\n\r\nno date, no ids\r\n";
    uint32_t u1 = append_full(tacct, "INBOX", m1, 0, NULL, 0, 1700000000, TERN_STORE_OK)
                      ->out.append.uid;
    uint32_t u2 = append("INBOX", m2, 0)->uid;
    tern_store_req *r = R(TERN_STORE_FETCH_INDEX);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.uids = one_range(u1, UINT32_MAX);
    run_ok(r);
    assert_int_equal(r->out.n_index, 2);
    const tern_message_index *x = &r->out.index[0];
    assert_int_equal(x->uid, u1);
    assert_int_equal(x->size, sizeof m1 - 1);
    assert_int_equal(x->internal_date, 1700000000);
    assert_int_equal(x->hdr_date, 1704103200);
    assert_string_equal(x->subject, "Caf\xc3\xa9 news");
    assert_non_null(strstr(x->from, "jane@example.test"));
    assert_non_null(strstr(x->to, "carol@example.test"));
    assert_non_null(strstr(x->cc, "dave@example.test"));
    assert_string_equal(x->message_id, "m1@example.test");
    assert_string_equal(x->in_reply_to, "p0@example.test");
    assert_string_equal(x->refs, "r0@example.test p0@example.test");
    x = &r->out.index[1];
    assert_int_equal(x->uid, u2);
    assert_int_equal(x->hdr_date, 0);
    assert_string_equal(x->subject, "bare");
    assert_null(x->from);
    assert_null(x->message_id);
    assert_null(x->in_reply_to);
    r = R(TERN_STORE_FETCH_INDEX);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.uids = one_range(u2 + 1, u2 + 10);
    run_ok(r);
    assert_int_equal(r->out.n_index, 0);
    r = R(TERN_STORE_FETCH_INDEX);
    r->in.account = tacct;
    r->in.name = "Missing";
    r->in.uids = ALL_UIDS;
    run_st(r, TERN_STORE_ENOTFOUND);
}


/* ======================================================================
 * pg-blob: bodies in postgres.blob_dir
 * ====================================================================== */

static void blob_path_of(const char *data, size_t len, char *out, size_t cap)
{
    uint8_t h[32];
    char hex[65];
    crypto_hash_sha256(h, (const uint8_t *)data, len);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", h[i]);
    snprintf(out, cap, "%s/%.2s/%.2s/%s", H.blob_dir, hex, hex + 2, hex);
}

static bool file_holds(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    char *b = malloc(len + 2);
    size_t n = fread(b, 1, len + 1, f);
    fclose(f);
    bool ok = n == len && memcmp(b, data, len) == 0;
    free(b);
    return ok;
}

/* Files under the blob dir's fan-out (not tmp/). */
static int count_blob_files(void)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "find '%s' -mindepth 3 -maxdepth 3 -type f | wc -l", H.blob_dir);
    FILE *p = popen(cmd, "r");
    int n = -1;
    if (p) {
        if (fscanf(p, "%d", &n) != 1)
            n = -1;
        pclose(p);
    }
    return n;
}

static int count_tmp_files(void)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "find '%s/tmp' -mindepth 1 | wc -l", H.blob_dir);
    FILE *p = popen(cmd, "r");
    int n = -1;
    if (p) {
        if (fscanf(p, "%d", &n) != 1)
            n = -1;
        pclose(p);
    }
    return n;
}

/* Removal runs after the commit, as a job of the store's own. */
static bool wait_gone(const char *path, double seconds)
{
    double end = harness_now() + seconds;
    while (harness_now() < end) {
        if (access(path, F_OK) != 0)
            return true;
        usleep(20000);
    }
    return access(path, F_OK) != 0;
}

static char *pg_value(const char *sql)
{
    PGconn *c = PQconnectdb(H.cfg->postgres.conninfo);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("psql: %s", PQerrorMessage(c));
    PGresult *res = PQexec(c, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(c));
    char *v = strdup(PQntuples(res) ? PQgetvalue(res, 0, 0) : "");
    PQclear(res);
    PQfinish(c);
    return v;
}

/* The file holds the bytes (not the per-copy prefix); equal bytes to
 * three accounts are one file and one row; the file goes with the last
 * reference, and comes back with a new append of the same bytes. */
static void t_blob_files(void **state)
{
    (void)state;
    if (!H.blob)
        skip();
    char data[400], path[700];
    snprintf(data, sizeof data,
             "From: a@example.org\r\nSubject: blob %s\r\nMessage-ID: <blob.%s>\r\n\r\n"
             "Kept as a file.\r\n", tacct, tacct);
    size_t len = strlen(data);
    blob_path_of(data, len, path, sizeof path);
    int before = count_blob_files();
    append_full(tacct, "INBOX", data, 0, NULL, 0, 0, TERN_STORE_OK);
    assert_true(file_holds(path, data, len));
    assert_int_equal(count_blob_files(), before + 1);
    expect_body_rows(data, 1, 1, __LINE__);
    char *v = pg_value("SELECT count(*) FROM bodies WHERE external AND data IS NOT NULL");
    assert_string_equal(v, "0");
    free(v);

    char acct[3][80], prefix[3][300];
    for (int i = 0; i < 3; i++) {
        snprintf(acct[i], sizeof acct[i], "blob%d-%s", i, tacct);
        assert_int_equal(harness_account(&H, acct[i], 0, 0), TERN_STORE_OK);
        snprintf(prefix[i], sizeof prefix[i], "Delivered-To: %s\r\n", acct[i]);
        tern_store_req *r = R(TERN_STORE_APPEND);
        r->in.account = acct[i];
        r->in.name = "INBOX";
        r->in.prefix = (const uint8_t *)prefix[i];
        r->in.prefix_len = strlen(prefix[i]);
        r->in.data = (const uint8_t *)data;
        r->in.len = len;
        run_ok(r);
    }
    /* One file, one row with four references (the first append too). */
    assert_int_equal(count_blob_files(), before + 1);
    expect_body_rows(data, 1, 4, __LINE__);
    for (int i = 0; i < 3; i++) {
        size_t got;
        uint8_t *b = body_of(acct[i], "INBOX", 1, 5, &got);
        assert_int_equal(got, strlen(prefix[i]) + len);
        assert_memory_equal(b, prefix[i], strlen(prefix[i]));
        assert_memory_equal(b + strlen(prefix[i]), data, len);
        free(b);
    }
    /* Every reference but one goes: the file stays. */
    const char *owners[4] = {tacct, acct[0], acct[1], acct[2]};
    for (int i = 0; i < 4; i++) {
        tern_store_req *f = R(TERN_STORE_SET_FLAGS);
        f->in.account = owners[i];
        f->in.name = "INBOX";
        f->in.uids = ALL_UIDS;
        f->in.flags = TERN_FLAG_DELETED;
        f->in.flags_mode = TERN_FLAGS_ADD;
        run_ok(f);
        tern_store_req *ex = R(TERN_STORE_EXPUNGE);
        ex->in.account = owners[i];
        ex->in.name = "INBOX";
        run_ok(ex);
        assert_int_equal(ex->out.n_uids, 1);
        if (i < 3) {
            usleep(100000);
            assert_true(file_holds(path, data, len));
        }
    }
    expect_body_rows(data, 0, 0, __LINE__);
    if (!wait_gone(path, 10))
        fail_msg("the file of a body without references is still there");
    assert_int_equal(count_blob_files(), before);
    assert_int_equal(count_tmp_files(), 0);
    /* The same bytes again: a new row and a new file. */
    append_full(tacct, "INBOX", data, 0, NULL, 0, 0, TERN_STORE_OK);
    assert_true(file_holds(path, data, len));
    expect_body_rows(data, 1, 1, __LINE__);
    /* Account delete drops its references too. */
    tern_store_req *d = R(TERN_STORE_ACCOUNT_DELETE);
    d->in.account = tacct;
    run_ok(d);
    if (!wait_gone(path, 10))
        fail_msg("account delete left the file");
    assert_int_equal(harness_account(&H, tacct, 0, 0), TERN_STORE_OK);
}

/* A file deleted behind the store's back: reads fail with EIO (and the
 * hash is logged), nothing crashes. */
static void t_blob_missing_file(void **state)
{
    (void)state;
    if (!H.blob)
        skip();
    char data[300], path[700];
    snprintf(data, sizeof data, "From: a@example.org\r\nSubject: gone %s\r\n\r\nneedle %s\r\n",
             tacct, tacct);
    blob_path_of(data, strlen(data), path, sizeof path);
    append_full(tacct, "INBOX", data, 0, NULL, 0, 0, TERN_STORE_OK);
    assert_int_equal(unlink(path), 0);
    tern_store_req *b = R(TERN_STORE_FETCH_BODY);
    b->in.account = tacct;
    b->in.name = "INBOX";
    b->in.uid = 1;
    run_st(b, TERN_STORE_EIO);
    tern_search q = {.kind = TERN_SEARCH_BODY, .str = "needle"};
    tern_store_req *sr = R(TERN_STORE_SEARCH);
    sr->in.account = tacct;
    sr->in.name = "INBOX";
    sr->in.search = &q;
    run_st(sr, TERN_STORE_EIO);
    tern_store_req *h = R(TERN_STORE_FETCH_HEADERS);
    h->in.account = tacct;
    h->in.name = "INBOX";
    h->in.uids = ALL_UIDS;
    run_st(h, TERN_STORE_EIO);
    /* The bytes come back (a new delivery of them): readable again. */
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(data, 1, strlen(data), f);
    fclose(f);
    expect_body("INBOX", 1, data);
}

/* A write error fails the append with a store error and stores nothing. */
static void t_blob_write_error(void **state)
{
    (void)state;
    if (!H.blob)
        skip();
    char tmp[400], aside[420];
    snprintf(tmp, sizeof tmp, "%s/tmp", H.blob_dir);
    snprintf(aside, sizeof aside, "%s/tmp.aside", H.blob_dir);
    append_full(tacct, "INBOX", MSG_SIMPLE, 0, NULL, 0, 0, TERN_STORE_OK);
    /* tmp/ a plain file: every new body's write fails (even for root). */
    assert_int_equal(rename(tmp, aside), 0);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fclose(f);
    char data[200];
    snprintf(data, sizeof data, "Subject: fails %s\r\n\r\nnot stored\r\n", tacct);
    tern_store_req *r = append_full(tacct, "INBOX", data, 0, NULL, 0, 0, TERN_STORE_EIO);
    assert_non_null(strstr(r->error, "blob"));
    /* Bytes already there need no write. */
    append_full(tacct, "INBOX", MSG_SIMPLE, 0, NULL, 0, 0, TERN_STORE_OK);
    assert_int_equal(unlink(tmp), 0);
    assert_int_equal(rename(aside, tmp), 0);
    tern_store_req *st = R(TERN_STORE_MAILBOX_STATUS);
    st->in.account = tacct;
    st->in.name = "INBOX";
    run_ok(st);
    assert_int_equal(st->out.mailbox.messages, 2);
    expect_body("INBOX", 1, MSG_SIMPLE);
    expect_body("INBOX", 2, MSG_SIMPLE);
    append_full(tacct, "INBOX", data, 0, NULL, 0, 0, TERN_STORE_OK);
    expect_body("INBOX", 3, data);
}

static void put_file(const char *path, const char *data, time_t mtime)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(data, 1, strlen(data), f);
    fclose(f);
    struct timeval tv[2] = {{mtime, 0}, {mtime, 0}};
    assert_int_equal(utimes(path, tv), 0);
}

/* The sweep at store open: an unreferenced file older than the grace
 * period goes, a fresh one stays (an append may be about to commit its
 * row), old tmp/ files go, and a file a crash left taken aside while
 * its row still exists is put back. */
static void t_blob_sweep(void **state)
{
    (void)state;
    if (!H.blob)
        skip();
    char data[300], live[700], dir[700], old_orphan[700], fresh_orphan[700], stale_tmp[700],
        taken[800];
    snprintf(data, sizeof data, "Subject: live %s\r\n\r\nstays\r\n", tacct);
    append_full(tacct, "INBOX", data, 0, NULL, 0, 0, TERN_STORE_OK);
    blob_path_of(data, strlen(data), live, sizeof live);
    const char *live_hex = strrchr(live, '/') + 1;
    /* Orphans: hashes no row has. */
    char od[] = "old orphan", fd[] = "fresh orphan";
    blob_path_of(od, strlen(od), old_orphan, sizeof old_orphan);
    blob_path_of(fd, strlen(fd), fresh_orphan, sizeof fresh_orphan);
    time_t now = time(NULL);
    for (int k = 0; k < 2; k++) {
        const char *p = k ? fresh_orphan : old_orphan;
        snprintf(dir, sizeof dir, "%.*s", (int)(strrchr(p, '/') - p), p);
        char cmd[800];
        snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
        assert_int_equal(system(cmd), 0);
    }
    put_file(old_orphan, od, now - 2 * 3600);
    put_file(fresh_orphan, fd, now - 60);
    snprintf(stale_tmp, sizeof stale_tmp, "%s/tmp/w.stale", H.blob_dir);
    put_file(stale_tmp, "half", now - 2 * 3600);
    /* A crash between taking the live file aside and putting it back. */
    snprintf(taken, sizeof taken, "%s/tmp/reap.%s.1.1.1", H.blob_dir, live_hex);
    assert_int_equal(rename(live, taken), 0);
    /* The live row's own file, old too, must not be swept. */
    harness_close_store(&H);
    assert_int_equal(harness_open(&H), 0);
    assert_int_equal(access(old_orphan, F_OK), -1);
    assert_int_equal(access(fresh_orphan, F_OK), 0);
    assert_int_equal(access(stale_tmp, F_OK), -1);
    assert_int_equal(access(taken, F_OK), -1);
    assert_true(file_holds(live, data, strlen(data)));
    expect_body("INBOX", 1, data);
    /* An old file whose row exists stays through a sweep. */
    struct timeval tv[2] = {{now - 3 * 3600, 0}, {now - 3 * 3600, 0}};
    assert_int_equal(utimes(live, tv), 0);
    harness_close_store(&H);
    assert_int_equal(harness_open(&H), 0);
    assert_true(file_holds(live, data, strlen(data)));
    unlink(fresh_orphan);
}

/* Bodies stored before the option was turned on stay readable, and an
 * append of equal bytes takes a reference to their row. */
static void t_blob_turned_on_later(void **state)
{
    (void)state;
    if (!H.blob)
        skip();
    /* A database of its own that kept its bodies inside for a while... */
    harness before;
    assert_int_equal(harness_init(&before, "pg", NULL, NULL), 0);
    assert_int_equal(harness_open(&before), 0);
    assert_int_equal(harness_account(&before, tacct, 0, 0), TERN_STORE_OK);
    char data[300];
    snprintf(data, sizeof data, "Subject: in the database %s\r\n\r\nold body\r\n", tacct);
    tern_store_req *r = hreq(TERN_STORE_APPEND);
    r->in.account = tacct;
    r->in.name = "INBOX";
    r->in.data = (const uint8_t *)data;
    r->in.len = strlen(data);
    int st = hrun(&before, r);
    tern_store_req_free(r);
    assert_int_equal(st, TERN_STORE_OK);
    harness_close_store(&before);

    /* ...then opened with postgres.blob_dir: H is that store until the end. */
    harness outer = H;
    assert_int_equal(harness_init(&H, "pg-blob", NULL, before.pg_db), 0);
    assert_int_equal(harness_open(&H), 0);
    char path[700];
    blob_path_of(data, strlen(data), path, sizeof path);
    assert_int_equal(access(path, F_OK), -1);
    expect_body("INBOX", 1, data);
    append_full(tacct, "INBOX", data, 0, NULL, 0, 0, TERN_STORE_OK);
    expect_body_rows(data, 1, 2, __LINE__);
    expect_body("INBOX", 2, data);
    tern_search q = {.kind = TERN_SEARCH_BODY, .str = "old body"};
    tern_store_req *sr = R(TERN_STORE_SEARCH);
    sr->in.account = tacct;
    sr->in.name = "INBOX";
    sr->in.search = &q;
    run_ok(sr);
    assert_int_equal(sr->out.n_uids, 2);
    free_tracked();
    harness_fini(&H);
    H = outer;
    harness_fini(&before);
}

/* A database whose bodies are (partly) in a blob directory cannot be
 * opened without one: every such message would answer EIO. Once none is
 * left, it can, and the record of the directory goes. */
static void t_blob_unset_refused(void **state)
{
    (void)state;
    if (!H.blob)
        skip();
    append("INBOX", MSG_SIMPLE, 0); /* at least one external body */
    harness h2;
    assert_int_equal(harness_init(&h2, "pg", NULL, H.pg_db), 0);
    assert_int_not_equal(harness_open(&h2), 0);
    harness_fini(&h2);

    /* A database that used one but keeps no external body any more. */
    harness fresh;
    assert_int_equal(harness_init(&fresh, "pg-blob", NULL, NULL), 0);
    assert_int_equal(harness_open(&fresh), 0);
    harness_close_store(&fresh);
    harness h3;
    assert_int_equal(harness_init(&h3, "pg", NULL, fresh.pg_db), 0);
    assert_int_equal(harness_open(&h3), 0);
    harness_fini(&h3);
    harness_fini(&fresh);
}

#define T(f) cmocka_unit_test_setup_teardown(f, test_setup, test_teardown)

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s local|pg\n", argv[0]);
        return 2;
    }
#ifdef MISSING_LOCAL
    if (strcmp(argv[1], "local") == 0) {
        printf("SKIP: storage/local is not in the tree yet\n");
        return 77;
    }
#endif
#ifdef MISSING_PG
    if (strcmp(argv[1], "local") != 0) {
        printf("SKIP: storage/pg is not in the tree yet\n");
        return 77;
    }
#endif
    int rc = harness_init(&H, argv[1], NULL, NULL);
    if (rc == 1)
        return 77;
    if (rc != 0)
        return 1;
    const struct CMUnitTest tests[] = {
        T(t_domains),
        T(t_accounts),
        T(t_aliases_and_rcpt),
        T(t_default_mailboxes),
        T(t_mailbox_create_list),
        T(t_mailbox_subscribe_special),
        T(t_mailbox_rename),
        T(t_mailbox_rename_inbox),
        T(t_mailbox_delete),
        T(t_mailbox_status_counts),
        T(t_append_fetch),
        T(t_append_from_file),
        T(t_fetch_body_chunks),
        T(t_fetch_headers),
        T(t_fetch_index),
        T(t_quota),
        T(t_set_flags),
        T(t_copy_move),
        T(t_expunge),
        T(t_changes_and_modseq),
        cmocka_unit_test_setup_teardown(t_changes_retention, test_setup, retention_teardown),
        T(t_search_criteria),
        T(t_search_body_decoded),
        T(t_threads),
        T(t_change_events),
        T(t_client_close_completes),
        T(t_concurrent_appends),
        T(t_append_together_with_failures),
        T(t_keyword_case),
        T(t_recent_claim),
        T(t_recent_claim_concurrent),
        T(t_shared_body),
        T(t_pg_cross_node_events),
        T(t_blob_files),
        T(t_blob_missing_file),
        T(t_blob_write_error),
        T(t_blob_sweep),
        T(t_blob_turned_on_later),
        T(t_blob_unset_refused),
        T(t_reopen),
        T(t_invalid_requests),
    };
    char name[32];
    snprintf(name, sizeof(name), "store-%s", H.blob ? "pg-blob" : H.pg ? "pg" : "local");
    rc = cmocka_run_group_tests_name(name, tests, group_setup, group_teardown);
    harness_fini(&H);
    return rc;
}
