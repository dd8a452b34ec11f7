/* Unit tests for server/limits.c: global cap, per-IP cap, per-IP token
 * bucket, release, and settings swapped while connections are counted. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "server/limits.h"

static struct sockaddr_in addr(const char *ip)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

#define SA(x) ((struct sockaddr *)&(x))

static void test_per_ip_cap(void **state)
{
    tern_limits *l = tern_limits_new();
    tern_limits_conf c = {.max_connections_per_ip = 2, .connection_rate_per_ip = 0};
    tern_limits_configure(l, &c, 100);
    struct sockaddr_in a = addr("10.0.0.1"), b = addr("10.0.0.2");
    assert_int_equal(tern_limits_admit(l, SA(a), 0), TERN_ADMIT_OK);
    assert_int_equal(tern_limits_admit(l, SA(a), 0), TERN_ADMIT_OK);
    assert_int_equal(tern_limits_admit(l, SA(a), 0), TERN_ADMIT_PER_IP);
    assert_int_equal(tern_limits_admit(l, SA(b), 0), TERN_ADMIT_OK);
    assert_int_equal(tern_limits_active(l), 3);
    tern_limits_release(l, SA(a));
    assert_int_equal(tern_limits_admit(l, SA(a), 0), TERN_ADMIT_OK);
    assert_int_equal(tern_limits_active_ip(l, SA(a)), 2);
    tern_limits_free(l);
}

static void test_global_cap(void **state)
{
    tern_limits *l = tern_limits_new();
    tern_limits_conf c = {0};
    tern_limits_configure(l, &c, 3);
    char ip[32];
    for (int i = 0; i < 3; i++) {
        snprintf(ip, sizeof(ip), "10.0.1.%d", i);
        struct sockaddr_in a = addr(ip);
        assert_int_equal(tern_limits_admit(l, SA(a), 0), TERN_ADMIT_OK);
    }
    struct sockaddr_in x = addr("10.0.2.1");
    assert_int_equal(tern_limits_admit(l, SA(x), 0), TERN_ADMIT_GLOBAL);
    /* Raising the cap by reload admits again without losing the count. */
    tern_limits_configure(l, &c, 4);
    assert_int_equal(tern_limits_admit(l, SA(x), 0), TERN_ADMIT_OK);
    assert_int_equal(tern_limits_active(l), 4);
    tern_limits_free(l);
}

static void test_rate(void **state)
{
    tern_limits *l = tern_limits_new();
    tern_limits_conf c = {.connection_rate_per_ip = 2, .connection_burst_per_ip = 3};
    tern_limits_configure(l, &c, 1000);
    struct sockaddr_in a = addr("192.0.2.7");
    for (int i = 0; i < 3; i++) {
        assert_int_equal(tern_limits_admit(l, SA(a), 1000), TERN_ADMIT_OK);
        tern_limits_release(l, SA(a));
    }
    assert_int_equal(tern_limits_admit(l, SA(a), 1000), TERN_ADMIT_RATE);
    /* 2 per second: after 500 ms one token is back. */
    assert_int_equal(tern_limits_admit(l, SA(a), 1500), TERN_ADMIT_OK);
    assert_int_equal(tern_limits_admit(l, SA(a), 1500), TERN_ADMIT_RATE);
    /* Another address has its own bucket. */
    struct sockaddr_in b = addr("192.0.2.8");
    assert_int_equal(tern_limits_admit(l, SA(b), 1500), TERN_ADMIT_OK);
    tern_limits_free(l);
}

static void test_ipv6_and_mapped(void **state)
{
    tern_limits *l = tern_limits_new();
    tern_limits_conf c = {.max_connections_per_ip = 1};
    tern_limits_configure(l, &c, 10);
    struct sockaddr_in a = addr("10.0.0.9");
    struct sockaddr_in6 m = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "::ffff:10.0.0.9", &m.sin6_addr);
    assert_int_equal(tern_limits_admit(l, SA(a), 0), TERN_ADMIT_OK);
    /* The same client through a dual-stack socket is the same address. */
    assert_int_equal(tern_limits_admit(l, SA(m), 0), TERN_ADMIT_PER_IP);
    tern_limits_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_per_ip_cap),
        cmocka_unit_test(test_global_cap),
        cmocka_unit_test(test_rate),
        cmocka_unit_test(test_ipv6_and_mapped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
