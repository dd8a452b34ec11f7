/* Unit tests for the queue's scheduling sets (server/queue_sched.c) and
 * the string map it indexes with (lib/strmap.c): heap order under random
 * inserts and removals checked against a plain model, wait lists woken
 * oldest first, and map deletes that keep every other key findable. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/strmap.h"
#include "server/queue_sched.h"

static uint32_t rnd_state = 12345;
static uint32_t rnd(void)
{
    rnd_state = rnd_state * 1103515245u + 12345u;
    return rnd_state >> 8;
}

static void test_heap_order(void **state)
{
    (void)state;
    enum { N = 2000 };
    tern_qs s;
    tern_qs_init(&s);
    static tern_qs_node nodes[N];
    static bool in[N];
    memset(nodes, 0, sizeof(nodes));
    memset(in, 0, sizeof(in));
    /* Random defers (also re-defers of a node already in), removals. */
    for (int step = 0; step < 20000; step++) {
        size_t i = rnd() % N;
        if (rnd() % 3 == 0) {
            tern_qs_remove(&s, &nodes[i]);
            in[i] = false;
        } else {
            tern_qs_defer(&s, &nodes[i], rnd() % 100000);
            in[i] = true;
        }
    }
    size_t want = 0;
    uint64_t min = UINT64_MAX;
    for (size_t i = 0; i < N; i++)
        if (in[i]) {
            want++;
            if (nodes[i].due < min)
                min = nodes[i].due;
            assert_int_equal(nodes[i].where, TERN_QS_HEAP);
        } else
            assert_int_equal(nodes[i].where, TERN_QS_NONE);
    assert_int_equal(s.n_heap, want);
    assert_int_equal(tern_qs_next_due(&s), min);
    /* Released in due order, each exactly once. */
    uint64_t cut = 50000;
    size_t expect_released = 0;
    for (size_t i = 0; i < N; i++)
        if (in[i] && nodes[i].due <= cut)
            expect_released++;
    assert_int_equal(tern_qs_release_due(&s, cut), expect_released);
    assert_int_equal(s.ready.n, expect_released);
    uint64_t last = 0;
    for (tern_qs_node *n = s.ready.head; n; n = n->next) {
        assert_true(n->due >= last && n->due <= cut);
        last = n->due;
    }
    assert_true(tern_qs_next_due(&s) > cut);
    tern_qs_free(&s);
}

static void test_ready_and_wait(void **state)
{
    (void)state;
    tern_qs s;
    tern_qs_init(&s);
    tern_qs_node n[6];
    memset(n, 0, sizeof(n));
    tern_qs_wait w = {{0}};
    assert_null(tern_qs_pop_ready(&s));
    for (int i = 0; i < 3; i++)
        tern_qs_ready(&s, &n[i], false);
    tern_qs_ready(&s, &n[3], true); /* cut short: first again */
    assert_ptr_equal(tern_qs_pop_ready(&s), &n[3]);
    assert_int_equal(n[3].where, TERN_QS_NONE);
    /* 0, 1, 2 wait on w in that order; 4 and 5 are ready. */
    for (int i = 0; i < 3; i++)
        tern_qs_wait_on(&s, &w, &n[i]);
    assert_int_equal(s.ready.n, 0);
    assert_int_equal(w.list.n, 3);
    tern_qs_ready(&s, &n[4], false);
    tern_qs_ready(&s, &n[5], false);
    /* Two slots: the two oldest waiters go first, ahead of 4 and 5. */
    assert_int_equal(tern_qs_wake(&s, &w, 2), 2);
    assert_ptr_equal(tern_qs_pop_ready(&s), &n[0]);
    assert_ptr_equal(tern_qs_pop_ready(&s), &n[1]);
    assert_ptr_equal(tern_qs_pop_ready(&s), &n[4]);
    assert_int_equal(w.list.n, 1);
    assert_ptr_equal(n[2].wait, &w);
    /* A waiter taken out (deleted) leaves the list consistent. */
    tern_qs_remove(&s, &n[2]);
    assert_int_equal(w.list.n, 0);
    assert_null(w.list.head);
    assert_int_equal(tern_qs_wake(&s, &w, 5), 0);
    /* From the heap to a wait list and back. */
    tern_qs_defer(&s, &n[0], 10);
    tern_qs_wait_on(&s, &w, &n[0]);
    assert_int_equal(s.n_heap, 0);
    assert_int_equal(tern_qs_wake(&s, &w, 0), 0);
    assert_int_equal(tern_qs_wake(&s, &w, 9), 1);
    assert_ptr_equal(tern_qs_pop_ready(&s), &n[0]);
    assert_ptr_equal(tern_qs_pop_ready(&s), &n[5]);
    assert_null(tern_qs_pop_ready(&s));
    tern_qs_free(&s);
}

static void test_strmap(void **state)
{
    (void)state;
    enum { N = 5000 };
    static char keys[N][24];
    static bool in[N];
    memset(in, 0, sizeof(in));
    tern_strmap m;
    tern_strmap_init(&m, false);
    for (int i = 0; i < N; i++)
        snprintf(keys[i], sizeof(keys[i]), "Q%08dX", i * 7919);
    for (int step = 0; step < 40000; step++) {
        int i = (int)(rnd() % N);
        if (rnd() % 2) {
            assert_int_equal(tern_strmap_put(&m, keys[i], keys[i]), 0);
            in[i] = true;
        } else {
            void *v = tern_strmap_del(&m, keys[i]);
            assert_ptr_equal(v, in[i] ? keys[i] : NULL);
            in[i] = false;
        }
    }
    size_t n = 0;
    for (int i = 0; i < N; i++) {
        assert_ptr_equal(tern_strmap_get(&m, keys[i]), in[i] ? keys[i] : NULL);
        n += in[i];
    }
    assert_int_equal(m.n, n);
    assert_null(tern_strmap_get(&m, "q00000000x")); /* case matters here */
    tern_strmap_free(&m);

    tern_strmap_init(&m, true);
    char a[] = "Example.ORG", b[] = "other.test";
    assert_int_equal(tern_strmap_put(&m, a, a), 0);
    assert_int_equal(tern_strmap_put(&m, b, b), 0);
    assert_ptr_equal(tern_strmap_get(&m, "example.org"), a);
    assert_ptr_equal(tern_strmap_get(&m, "OTHER.TEST"), b);
    assert_ptr_equal(tern_strmap_del(&m, "EXAMPLE.org"), a);
    assert_null(tern_strmap_get(&m, "example.org"));
    assert_ptr_equal(tern_strmap_get(&m, "other.test"), b);
    tern_strmap_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heap_order),
        cmocka_unit_test(test_ready_and_wait),
        cmocka_unit_test(test_strmap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
