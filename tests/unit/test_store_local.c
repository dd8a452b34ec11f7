/* Unit tests for the local backend's internals (storage/local/): Maildir++
 * names (folder and localpart escaping, flag letters, bases), the on-disk
 * layout, flag renames, rollback of a failed append, and reconciliation at
 * open (files without rows, rows without files, new/ and tmp/, renamed
 * files, folders without mailboxes). The API itself is covered by the
 * conformance suite (tests/store/). Each test uses its own mkdtemp dir. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "lib/log.h"
#include "storage/local/local_internal.h"

#define ACCT "u@example.test"
#define MSG "From: a@example.test\r\nSubject: hello\r\nMessage-ID: <m1@x>\r\n\r\nbody text\r\n"

/* ---- names ---------------------------------------------------------------- */

static void t_folder_names(void **state)
{
    (void)state;
    tern_arena a;
    tern_arena_init(&a, 1024);
    assert_string_equal(local_folder_encode(&a, "Lists/tern.dev"), "Lists.tern%2Edev");
    assert_string_equal(local_folder_encode(&a, "Sent"), "Sent");
    assert_string_equal(local_folder_encode(&a, "a%b"), "a%25b");
    assert_string_equal(local_folder_encode(&a, "Ünï/cødé"), "Ünï.cødé");
    assert_string_equal(local_folder_decode(&a, "Lists.tern%2Edev"), "Lists/tern.dev");
    assert_string_equal(local_folder_decode(&a, "a%25b"), "a%b");
    assert_null(local_folder_decode(&a, "a..b"));
    assert_null(local_folder_decode(&a, "a."));
    assert_null(local_folder_decode(&a, "a%zz"));
    assert_null(local_folder_decode(&a, "a%0"));
    assert_null(local_folder_decode(&a, "a%00"));
    assert_null(local_folder_decode(&a, ""));
    char longname[400];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_null(local_folder_encode(&a, longname));
    /* Round trip over names with every escaped character. */
    const char *names[] = {"a.b/c.d", "x%y", "tab\there", "..x", "INBOX/sub"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char *e = local_folder_encode(&a, names[i]);
        assert_non_null(e);
        assert_null(strchr(e, '/'));
        assert_string_equal(local_folder_decode(&a, e), names[i]);
    }
    assert_string_equal(local_localpart_encode(&a, ".x/y%z.w"), "%2Ex%2Fy%25z.w");
    assert_string_equal(local_mailbox_rel(&a, "INBOX"), "");
    assert_string_equal(local_mailbox_rel(&a, "A/b.c"), ".A.b%2Ec/");
    assert_string_equal(local_mailbox_dir(&a, "/m", "INBOX"), "/m");
    assert_string_equal(local_mailbox_dir(&a, "/m", "A/b"), "/m/.A.b");
    tern_arena_free(&a);
}

static void t_flag_letters(void **state)
{
    (void)state;
    char buf[8];
    local_flag_letters(TERN_FLAG_SEEN | TERN_FLAG_ANSWERED | TERN_FLAG_FLAGGED |
                           TERN_FLAG_DELETED | TERN_FLAG_DRAFT, buf);
    assert_string_equal(buf, "DFRST");
    local_flag_letters(0, buf);
    assert_string_equal(buf, "");
    local_flag_letters(TERN_FLAG_SEEN | TERN_FLAG_FLAGGED, buf);
    assert_string_equal(buf, "FS");
    assert_int_equal(local_flags_from_name("1.2.h,S=5:2,FS"), TERN_FLAG_FLAGGED | TERN_FLAG_SEEN);
    assert_int_equal(local_flags_from_name("1.2.h,S=5:2,DPRTa"),
                     TERN_FLAG_DRAFT | TERN_FLAG_ANSWERED | TERN_FLAG_DELETED);
    assert_int_equal(local_flags_from_name("1.2.h"), 0);
    assert_int_equal(local_base_len("1.2.h,S=5:2,S"), strlen("1.2.h,S=5"));
    assert_int_equal(local_base_len("1.2.h"), 5);
    tern_arena a;
    tern_arena_init(&a, 1024);
    assert_string_equal(local_rename_flags(&a, "1.2.h,S=5:2,S", TERN_FLAG_DELETED),
                        "1.2.h,S=5:2,T");
    assert_string_equal(local_rename_flags(&a, "1.2.h", TERN_FLAG_SEEN), "1.2.h:2,S");
    tern_arena_free(&a);
    char host[64];
    local_sanitize_hostname("a/b:c,d e", host, sizeof host);
    assert_string_equal(host, "a\\057b\\072c\\054de");
    local_sanitize_hostname("", host, sizeof host);
    assert_string_equal(host, "localhost");
}

/* ---- a store in a temp dir ---------------------------------------------- */

typedef struct fx {
    char dir[64];
    tern_config *cfg;
    tern_store *store;
} fx;

static fx F;

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void fx_open(void)
{
    char *err = NULL;
    if (tern_store_open(F.cfg, &F.store, &err) != 0)
        fail_msg("open: %s", err ? err : "?");
}

static void fx_close(void)
{
    tern_store_close(F.store);
    F.store = NULL;
}

static int setup(void **state)
{
    (void)state;
    tern_log_configure("error", NULL);
    snprintf(F.dir, sizeof F.dir, "/tmp/tern-local-test-XXXXXX");
    if (mkdtemp(F.dir) == NULL)
        return -1;
    tern_config *c = calloc(1, sizeof *c);
    atomic_init(&c->refs, 1);
    tern_arena_init(&c->arena, 4096);
    c->server.state_dir = tern_arena_strdup(&c->arena, F.dir);
    c->storage.backend = TERN_STORAGE_LOCAL;
    c->storage.changes_retention_ms = 30ull * 24 * 3600 * 1000;
    c->local.path = tern_arena_printf(&c->arena, "%s/mail", F.dir);
    F.cfg = c;
    fx_open();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (F.store)
        fx_close();
    tern_arena_free(&F.cfg->arena);
    free(F.cfg);
    nftw(F.dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static tern_store_req *run(tern_store_req *r, int want)
{
    int st = tern_store_run_sync(F.store, r);
    if (st != want)
        fail_msg("op %d: got %d want %d: %s", (int)r->op, st, want, r->error);
    return r;
}

static tern_store_req *req(tern_store_op op)
{
    tern_store_req *r = tern_store_req_new(op, NULL, NULL);
    assert_non_null(r);
    r->in.account = ACCT;
    r->in.name = "INBOX";
    return r;
}

static void make_account(void)
{
    tern_store_req *r = req(TERN_STORE_DOMAIN_ADD);
    r->in.domain = "example.test";
    tern_store_req_free(run(r, TERN_STORE_OK));
    tern_store_req_free(run(req(TERN_STORE_ACCOUNT_CREATE), TERN_STORE_OK));
}

static uint32_t append(const char *mbox, const char *msg, unsigned flags)
{
    tern_store_req *r = req(TERN_STORE_APPEND);
    r->in.name = mbox;
    r->in.data = (const uint8_t *)msg;
    r->in.len = strlen(msg);
    r->in.flags = flags;
    run(r, TERN_STORE_OK);
    uint32_t uid = r->out.append.uid;
    tern_store_req_free(r);
    return uid;
}

/* An absolute path under the account's Maildir. */
static char *path(const char *tail, const char *unused)
{
    static char buf[8][512];
    static int k;
    (void)unused;
    char *b = buf[k++ % 8];
    snprintf(b, 512, "%s/mail/example.test/u/Maildir%s", F.dir, tail);
    return b;
}

/* The one file in dir whose name contains `part`, or NULL. */
static char *find_file(const char *dir, const char *part, size_t *count_r)
{
    static char name[512];
    DIR *d = opendir(dir);
    size_t n = 0;
    char *found = NULL;
    if (d == NULL) {
        if (count_r)
            *count_r = 0;
        return NULL;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        n++;
        if (part == NULL || strstr(e->d_name, part)) {
            snprintf(name, sizeof name, "%s", e->d_name);
            found = name;
        }
    }
    closedir(d);
    if (count_r)
        *count_r = n;
    return found;
}

static void write_file(const char *p, const char *data)
{
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fputs(data, f);
    assert_int_equal(fclose(f), 0);
}

static uint32_t status_messages(const char *mbox)
{
    tern_store_req *r = req(TERN_STORE_MAILBOX_STATUS);
    r->in.name = mbox;
    run(r, TERN_STORE_OK);
    uint32_t n = r->out.mailbox.messages;
    tern_store_req_free(r);
    return n;
}

/* ---- layout -------------------------------------------------------------- */

static void t_layout_and_flag_rename(void **state)
{
    (void)state;
    make_account();
    struct stat sb;
    assert_int_equal(stat(path("/cur", ""), &sb), 0);
    assert_int_equal(stat(path("/.Sent/cur", ""), &sb), 0);
    assert_int_equal(stat(path("/.Archive/tmp", ""), &sb), 0);
    tern_store_req *r = req(TERN_STORE_MAILBOX_CREATE);
    r->in.name = "Lists/tern.dev";
    r->in.create_parents = true;
    tern_store_req_free(run(r, TERN_STORE_OK));
    assert_int_equal(stat(path("/.Lists/new", ""), &sb), 0);
    assert_int_equal(stat(path("/.Lists.tern%2Edev/cur", ""), &sb), 0);

    uint32_t uid = append("INBOX", MSG, TERN_FLAG_FLAGGED);
    size_t n;
    char *f = find_file(path("/cur", ""), NULL, &n);
    assert_int_equal(n, 1);
    assert_non_null(strstr(f, ",S=" ));
    assert_string_equal(strstr(f, ":2,"), ":2,F");
    char want_size[32];
    snprintf(want_size, sizeof want_size, ",S=%zu:", strlen(MSG));
    assert_non_null(strstr(f, want_size));

    r = req(TERN_STORE_SET_FLAGS);
    tern_uid_range rg = {uid, uid};
    r->in.uids.ranges = &rg;
    r->in.uids.n = 1;
    r->in.flags = TERN_FLAG_SEEN | TERN_FLAG_DELETED;
    r->in.flags_mode = TERN_FLAGS_ADD;
    tern_store_req_free(run(r, TERN_STORE_OK));
    f = find_file(path("/cur", ""), NULL, &n);
    assert_int_equal(n, 1);
    assert_string_equal(strstr(f, ":2,"), ":2,FST");

    /* COPY hard-links: one inode, two names. */
    r = req(TERN_STORE_COPY);
    r->in.uids.ranges = &rg;
    r->in.uids.n = 1;
    r->in.new_name = "Lists/tern.dev";
    tern_store_req_free(run(r, TERN_STORE_OK));
    char *cf = find_file(path("/.Lists.tern%2Edev/cur", ""), NULL, &n);
    assert_int_equal(n, 1);
    char full[600];
    snprintf(full, sizeof full, "%s/%s", path("/.Lists.tern%2Edev/cur", ""), cf);
    assert_int_equal(stat(full, &sb), 0);
    assert_int_equal(sb.st_nlink, 2);

    /* EXPUNGE unlinks after the commit. */
    r = req(TERN_STORE_EXPUNGE);
    run(r, TERN_STORE_OK);
    assert_int_equal(r->out.n_uids, 1);
    tern_store_req_free(r);
    find_file(path("/cur", ""), NULL, &n);
    assert_int_equal(n, 0);
    assert_int_equal(stat(full, &sb), 0);
    assert_int_equal(sb.st_nlink, 1);
}

static void t_failed_append_leaves_nothing(void **state)
{
    (void)state;
    make_account();
    tern_store_req *r = req(TERN_STORE_ACCOUNT_SET_QUOTA);
    r->in.quota_bytes = 10;
    tern_store_req_free(run(r, TERN_STORE_OK));
    r = req(TERN_STORE_APPEND);
    r->in.data = (const uint8_t *)MSG;
    r->in.len = strlen(MSG);
    tern_store_req_free(run(r, TERN_STORE_EQUOTA));
    r = req(TERN_STORE_APPEND);
    r->in.name = "Nope";
    r->in.data = (const uint8_t *)MSG;
    r->in.len = strlen(MSG);
    tern_store_req_free(run(r, TERN_STORE_ENOTFOUND));
    /* A bad keyword is refused after nothing was written. */
    size_t n;
    find_file(path("/cur", ""), NULL, &n);
    assert_int_equal(n, 0);
    find_file(path("/tmp", ""), NULL, &n);
    assert_int_equal(n, 0);
}

/* ---- reconciliation ------------------------------------------------------- */

static void t_reconcile(void **state)
{
    (void)state;
    make_account();
    uint32_t u1 = append("INBOX", MSG, 0);
    uint32_t u2 = append("INBOX", MSG, TERN_FLAG_SEEN);
    uint32_t u3 = append("INBOX", MSG, 0);
    assert_int_equal(u1, 1);
    assert_int_equal(u3, 3);
    fx_close();

    size_t n;
    char *cur = path("/cur", "");
    /* u1's file disappears. */
    char *f1 = find_file(cur, "Q1.", &n);
    assert_int_equal(n, 3);
    char p[700];
    snprintf(p, sizeof p, "%s/%s", cur, f1);
    assert_int_equal(unlink(p), 0);
    /* A tool cleared \Seen on u2 by renaming. */
    char *f2 = find_file(cur, ":2,S", &n);
    assert_non_null(f2);
    char p2[700], p2b[700];
    snprintf(p2, sizeof p2, "%s/%s", cur, f2);
    snprintf(p2b, sizeof p2b, "%.*s:2,", (int)(strlen(p2) - 4), p2);
    assert_int_equal(rename(p2, p2b), 0);
    /* An MDA delivered into new/; a writer died in tmp/; a folder was made
     * by a Maildir tool. */
    write_file(path("/new/1700000000.M1P1.other", ""), MSG);
    write_file(path("/tmp/1700000001.M1P1.other", ""), "half");
    assert_int_equal(local_mkdir_folder(path("/.Extra", "")), 0);
    write_file(path("/.Extra/cur/1700000002.M1P1.other:2,S", ""), MSG);

    fx_open();
    assert_int_equal(status_messages("INBOX"), 3); /* u2, u3, the new/ one */
    find_file(path("/tmp", ""), NULL, &n);
    assert_int_equal(n, 0);
    find_file(path("/new", ""), NULL, &n);
    assert_int_equal(n, 0);
    assert_non_null(find_file(cur, "1700000000.M1P1.other:2,", NULL));
    /* The row's flags won: u2's file is back to ":2,S". */
    assert_non_null(find_file(cur, ":2,S", NULL));
    assert_int_equal(status_messages("Extra"), 1);

    tern_store_req *r = req(TERN_STORE_CHANGES);
    r->in.since_modseq = 0;
    run(r, TERN_STORE_OK);
    assert_int_equal(r->out.changes.n_vanished, 1);
    assert_int_equal(r->out.changes.vanished[0], u1);
    tern_store_req_free(r);

    r = req(TERN_STORE_FETCH_BODY);
    r->in.uid = 4;
    run(r, TERN_STORE_OK);
    assert_int_equal(r->out.body_len, strlen(MSG));
    assert_memory_equal(r->out.body, MSG, strlen(MSG));
    tern_store_req_free(r);
    r = req(TERN_STORE_FETCH_BODY);
    r->in.uid = u2;
    run(r, TERN_STORE_OK);
    assert_int_equal(r->out.body_len, strlen(MSG));
    tern_store_req_free(r);

    /* A second open finds nothing to do and keeps everything. */
    fx_close();
    fx_open();
    assert_int_equal(status_messages("INBOX"), 3);
    assert_int_equal(status_messages("Extra"), 1);
}

static void t_fanout_hard_links(void **state)
{
    (void)state;
    make_account();
    tern_store_req *r = req(TERN_STORE_ACCOUNT_CREATE);
    r->in.account = "v@example.test";
    tern_store_req_free(run(r, TERN_STORE_OK));
    char src[600];
    snprintf(src, sizeof src, "%s/spool-msg", F.dir);
    write_file(src, MSG);
    const char *accts[] = {ACCT, "v@example.test", ACCT};
    for (size_t i = 0; i < 3; i++) {
        r = req(TERN_STORE_APPEND);
        r->in.account = accts[i];
        r->in.name = i == 2 ? "Archive" : "INBOX";
        r->in.data_path = src;
        r->in.flags = i == 1 ? TERN_FLAG_SEEN : 0;
        tern_store_req_free(run(r, TERN_STORE_OK));
    }
    size_t n;
    char *f = find_file(path("/cur", ""), NULL, &n);
    assert_int_equal(n, 1);
    char p[700];
    snprintf(p, sizeof p, "%s/%s", path("/cur", ""), f);
    struct stat sb;
    assert_int_equal(stat(p, &sb), 0);
    /* One body, three names: two accounts and two mailboxes. */
    assert_int_equal(sb.st_nlink, 3);
    /* A changed spool file (same name) is not mistaken for the old one. */
    write_file(src, MSG "more\r\n");
    r = req(TERN_STORE_APPEND);
    r->in.data_path = src;
    tern_store_req_free(run(r, TERN_STORE_OK));
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_nlink, 3);
    r = req(TERN_STORE_FETCH_BODY);
    r->in.uid = 2;
    run(r, TERN_STORE_OK);
    assert_int_equal(r->out.body_len, strlen(MSG "more\r\n"));
    tern_store_req_free(r);
}

static void t_missing_folder_keeps_rows(void **state)
{
    (void)state;
    make_account();
    append("Archive", MSG, 0);
    fx_close();
    char grave[600];
    snprintf(grave, sizeof grave, "%s/moved-away", F.dir);
    assert_int_equal(rename(path("/.Archive", ""), grave), 0);
    fx_open();
    /* An unmounted or moved folder must not empty the mailbox. */
    assert_int_equal(status_messages("Archive"), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_folder_names),
        cmocka_unit_test(t_flag_letters),
        cmocka_unit_test_setup_teardown(t_layout_and_flag_rename, setup, teardown),
        cmocka_unit_test_setup_teardown(t_failed_append_leaves_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(t_reconcile, setup, teardown),
        cmocka_unit_test_setup_teardown(t_fanout_hard_links, setup, teardown),
        cmocka_unit_test_setup_teardown(t_missing_folder_keeps_rows, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
