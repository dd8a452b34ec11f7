/* Unit tests for storage/store_names.c: the name rules both backends apply
 * (mailbox names, accounts, domains), INBOX canonicalisation, IMAP LIST
 * pattern matching, and +detail splitting. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "storage/store_backend.h"

static void test_mailbox_names(void **state)
{
    assert_true(tern_store__valid_mailbox_name("INBOX"));
    assert_true(tern_store__valid_mailbox_name("Archive/2024/Q1"));
    assert_true(tern_store__valid_mailbox_name("Entw\xc3\xbcrfe"));       /* UTF-8 */
    assert_true(tern_store__valid_mailbox_name("a.b"));
    assert_false(tern_store__valid_mailbox_name(""));
    assert_false(tern_store__valid_mailbox_name("/lead"));
    assert_false(tern_store__valid_mailbox_name("trail/"));
    assert_false(tern_store__valid_mailbox_name("a//b"));
    assert_false(tern_store__valid_mailbox_name("a/../b"));
    assert_false(tern_store__valid_mailbox_name(".."));
    assert_false(tern_store__valid_mailbox_name("a/./b"));
    assert_false(tern_store__valid_mailbox_name("wild*"));
    assert_false(tern_store__valid_mailbox_name("wild%"));
    assert_false(tern_store__valid_mailbox_name("tab\there"));
    assert_false(tern_store__valid_mailbox_name("bad\xc3"));                /* truncated */
    assert_false(tern_store__valid_mailbox_name("over\xc0\xaflong"));       /* overlong '/' */
    assert_false(tern_store__valid_mailbox_name("sur\xed\xa0\x80rogate"));
    char big[600];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_false(tern_store__valid_mailbox_name(big));
}

static void test_accounts_and_domains(void **state)
{
    assert_true(tern_store__valid_domain("example.test"));
    assert_true(tern_store__valid_domain("a-b.c0.example"));
    assert_false(tern_store__valid_domain("Example.test"));  /* stored lowercase */
    assert_false(tern_store__valid_domain("-a.test"));
    assert_false(tern_store__valid_domain("a-.test"));
    assert_false(tern_store__valid_domain("a..test"));
    assert_false(tern_store__valid_domain(".test"));
    assert_false(tern_store__valid_domain("test."));
    assert_false(tern_store__valid_domain(""));
    assert_true(tern_store__valid_account_name("alice@example.test"));
    assert_true(tern_store__valid_account_name("first.last+x@example.test"));
    assert_false(tern_store__valid_account_name("alice"));
    assert_false(tern_store__valid_account_name("@example.test"));
    assert_false(tern_store__valid_account_name("a b@example.test"));
    assert_false(tern_store__valid_account_name("a/b@example.test"));
    assert_false(tern_store__valid_account_name(".a@example.test"));
    assert_false(tern_store__valid_account_name("a..b@example.test"));
    assert_false(tern_store__valid_account_name("alice@Example.test"));
    char lp[80];
    memset(lp, 'x', 65);
    strcpy(lp + 65, "@example.test");
    assert_false(tern_store__valid_account_name(lp)); /* local part over 64 */
}

static void test_canon_inbox(void **state)
{
    tern_arena a;
    tern_arena_init(&a, 512);
    assert_string_equal(tern_store__canon_mailbox(&a, "inbox"), "INBOX");
    assert_string_equal(tern_store__canon_mailbox(&a, "InBoX/Sub"), "INBOX/Sub");
    assert_string_equal(tern_store__canon_mailbox(&a, "Inboxes"), "Inboxes");
    assert_string_equal(tern_store__canon_mailbox(&a, "Sent"), "Sent");
    tern_arena_free(&a);
}

static void test_patterns(void **state)
{
    assert_true(tern_store__pattern_match("*", "INBOX"));
    assert_true(tern_store__pattern_match("*", "a/b/c"));
    assert_true(tern_store__pattern_match("%", "Sent"));
    assert_false(tern_store__pattern_match("%", "a/b"));
    assert_true(tern_store__pattern_match("a/%", "a/b"));
    assert_false(tern_store__pattern_match("a/%", "a/b/c"));
    assert_true(tern_store__pattern_match("a/*", "a/b/c"));
    assert_true(tern_store__pattern_match("inbox", "INBOX"));
    assert_true(tern_store__pattern_match("inbox/%", "INBOX/x"));
    assert_false(tern_store__pattern_match("sent", "Sent")); /* only INBOX ignores case */
    assert_true(tern_store__pattern_match("S%t", "Sent"));
    assert_true(tern_store__pattern_match("*b*", "a/b/c"));
    assert_false(tern_store__pattern_match("%b%", "a/b/c"));
    assert_true(tern_store__pattern_match("a%%%*", "abc/d"));
    /* Many wildcards against a long name stay fast (no blow-up). */
    assert_false(tern_store__pattern_match("*a*a*a*a*a*a*a*a*a*a*b",
                                           "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
}

static void test_detail(void **state)
{
    tern_arena a;
    tern_arena_init(&a, 512);
    char *base, *detail;
    assert_true(tern_store__split_detail(&a, "bob+lists@example.test", &base, &detail));
    assert_string_equal(base, "bob@example.test");
    assert_string_equal(detail, "lists");
    assert_true(tern_store__split_detail(&a, "bob+a+b@example.test", &base, &detail));
    assert_string_equal(detail, "a+b");
    assert_false(tern_store__split_detail(&a, "bob@example.test", &base, &detail));
    assert_false(tern_store__split_detail(&a, "+x@example.test", &base, &detail));
    tern_arena_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mailbox_names), cmocka_unit_test(test_accounts_and_domains),
        cmocka_unit_test(test_canon_inbox),   cmocka_unit_test(test_patterns),
        cmocka_unit_test(test_detail),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
