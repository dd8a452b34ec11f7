/* Unit tests of the \Recent UID set (protocols/imap/imap_uidlist.c):
 * ranges join and split as UIDs arrive in any order, membership and
 * counting against a session's UID array agree with a plain bitmap, and
 * the range bound drops the lowest ranges, never a higher one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "protocols/imap/imap_uidlist.h"

/* The ranges must be exactly `want` ("1:3,5"). */
static void expect_ranges(const tern_imap_uidlist *l, const char *want)
{
    char got[512] = "";
    for (size_t i = 0; i < l->n; i++) {
        size_t at = strlen(got);
        if (l->r[i].first == l->r[i].last)
            snprintf(got + at, sizeof(got) - at, "%s%u", i ? "," : "", l->r[i].first);
        else
            snprintf(got + at, sizeof(got) - at, "%s%u:%u", i ? "," : "", l->r[i].first,
                     l->r[i].last);
        if (i > 0 && l->r[i - 1].last + 1 >= l->r[i].first)
            fail_msg("ranges %zu and %zu touch or overlap: %s", i - 1, i, got);
    }
    if (strcmp(got, want) != 0)
        fail_msg("ranges: got \"%s\", want \"%s\"", got, want);
}

static void test_join_and_split(void **state)
{
    (void)state;
    tern_imap_uidlist l;
    tern_imap_uidlist_init(&l, 100);
    expect_ranges(&l, "");
    assert_false(tern_imap_uidlist_has(&l, 1));
    assert_int_equal(tern_imap_uidlist_add(&l, 5), 0);
    expect_ranges(&l, "5");
    tern_imap_uidlist_add(&l, 6);
    tern_imap_uidlist_add(&l, 7);
    expect_ranges(&l, "5:7");
    tern_imap_uidlist_add(&l, 6); /* already there */
    expect_ranges(&l, "5:7");
    tern_imap_uidlist_add(&l, 3);
    expect_ranges(&l, "3,5:7");
    tern_imap_uidlist_add(&l, 4); /* joins both sides */
    expect_ranges(&l, "3:7");
    tern_imap_uidlist_add(&l, 10);
    tern_imap_uidlist_add(&l, 9);
    tern_imap_uidlist_add(&l, 1);
    expect_ranges(&l, "1,3:7,9:10");
    tern_imap_uidlist_add(&l, 2);
    tern_imap_uidlist_add(&l, 8);
    expect_ranges(&l, "1:10");
    tern_imap_uidlist_add(&l, 0);          /* not a UID */
    tern_imap_uidlist_add(&l, UINT32_MAX); /* not a UID */
    expect_ranges(&l, "1:10");
    tern_imap_uidlist_add(&l, UINT32_MAX - 1);
    expect_ranges(&l, "1:10,4294967294");
    assert_true(tern_imap_uidlist_has(&l, 1));
    assert_true(tern_imap_uidlist_has(&l, 10));
    assert_false(tern_imap_uidlist_has(&l, 11));
    assert_false(tern_imap_uidlist_has(&l, 0));
    assert_true(tern_imap_uidlist_has(&l, UINT32_MAX - 1));
    assert_false(tern_imap_uidlist_has(&l, UINT32_MAX));
    assert_false(l.dropped);
    tern_imap_uidlist_free(&l);
    expect_ranges(&l, "");
}

static void test_count_in(void **state)
{
    (void)state;
    tern_imap_uidlist l;
    tern_imap_uidlist_init(&l, 100);
    for (uint32_t u = 5; u <= 9; u++)
        tern_imap_uidlist_add(&l, u);
    tern_imap_uidlist_add(&l, 20);
    tern_imap_uidlist_add(&l, 30);
    /* A session that knows 1..8 (some expunged) and 20, not 30 yet. */
    const uint32_t known[] = {1, 2, 6, 7, 8, 20, 25};
    assert_int_equal(tern_imap_uidlist_count_in(&l, known, 7), 4);
    assert_int_equal(tern_imap_uidlist_count_in(&l, known, 0), 0);
    const uint32_t none[] = {1, 2, 3, 10, 19, 21};
    assert_int_equal(tern_imap_uidlist_count_in(&l, none, 6), 0);
    tern_imap_uidlist_free(&l);
    assert_int_equal(tern_imap_uidlist_count_in(&l, known, 7), 0);
}

/* Random adds against a bitmap: same membership, same counts. */
static void test_against_bitmap(void **state)
{
    (void)state;
    enum { N = 2000 };
    static uint8_t bit[N + 1];
    memset(bit, 0, sizeof(bit));
    tern_imap_uidlist l;
    tern_imap_uidlist_init(&l, 100000);
    srand(7);
    for (int i = 0; i < 3000; i++) {
        uint32_t u = 1 + (uint32_t)(rand() % N);
        bit[u] = 1;
        assert_int_equal(tern_imap_uidlist_add(&l, u), 0);
    }
    uint32_t all[N];
    size_t n_set = 0;
    for (uint32_t u = 1; u <= N; u++) {
        all[u - 1] = u;
        n_set += bit[u];
        if (tern_imap_uidlist_has(&l, u) != (bit[u] != 0))
            fail_msg("uid %u: has=%d, bitmap=%d", u, tern_imap_uidlist_has(&l, u), bit[u]);
    }
    assert_int_equal(tern_imap_uidlist_count_in(&l, all, N), n_set);
    for (size_t i = 1; i < l.n; i++)
        assert_true(l.r[i - 1].last + 1 < l.r[i].first);
    assert_false(l.dropped);
    tern_imap_uidlist_free(&l);
}

static void test_bound_drops_lowest(void **state)
{
    (void)state;
    tern_imap_uidlist l;
    tern_imap_uidlist_init(&l, 3);
    tern_imap_uidlist_add(&l, 10);
    tern_imap_uidlist_add(&l, 20);
    tern_imap_uidlist_add(&l, 30);
    expect_ranges(&l, "10,20,30");
    assert_false(l.dropped);
    tern_imap_uidlist_add(&l, 31); /* joins: no new range */
    expect_ranges(&l, "10,20,30:31");
    assert_false(l.dropped);
    tern_imap_uidlist_add(&l, 40);
    expect_ranges(&l, "20,30:31,40");
    assert_true(l.dropped);
    tern_imap_uidlist_add(&l, 25);
    expect_ranges(&l, "25,30:31,40");
    tern_imap_uidlist_add(&l, 5); /* would be the lowest: not kept */
    expect_ranges(&l, "25,30:31,40");
    assert_false(tern_imap_uidlist_has(&l, 5));
    tern_imap_uidlist_free(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_join_and_split),
        cmocka_unit_test(test_count_in),
        cmocka_unit_test(test_against_bitmap),
        cmocka_unit_test(test_bound_drops_lowest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
