/* Unit tests for lib/: arena, buffer limits, duration and size literals,
 * edit distance, CIDR matching, log level specs and value quoting. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <string.h>

#include "lib/arena.h"
#include "lib/buf.h"
#include "lib/log.h"
#include "lib/net.h"
#include "lib/util.h"

static void test_arena(void **state)
{
    tern_arena a;
    tern_arena_init(&a, 256);
    char *s = tern_arena_strdup(&a, "hello");
    assert_string_equal(s, "hello");
    void *big = tern_arena_alloc(&a, 10000); /* oversized: its own block */
    assert_non_null(big);
    memset(big, 1, 10000);
    for (int i = 0; i < 1000; i++) {
        uint64_t *p = tern_arena_alloc(&a, sizeof(uint64_t));
        assert_true(((uintptr_t)p % _Alignof(max_align_t)) == 0);
        assert_int_equal(*p, 0);
        *p = (uint64_t)i;
    }
    char *f = tern_arena_printf(&a, "%s-%d", "x", 42);
    assert_string_equal(f, "x-42");
    assert_string_equal(s, "hello"); /* earlier blocks untouched */
    tern_arena_reset(&a);
    assert_true(a.total <= 256 + 64);
    assert_non_null(tern_arena_alloc(&a, 8));
    assert_null(tern_arena_alloc(&a, SIZE_MAX - 4));
    tern_arena_free(&a);
}

static void test_buf(void **state)
{
    tern_buf b;
    tern_buf_init(&b, 10);
    assert_int_equal(tern_buf_append(&b, "12345", 5), 0);
    assert_int_equal(tern_buf_append(&b, "67890", 5), 0);
    assert_int_equal(tern_buf_append(&b, "x", 1), TERN_BUF_ELIMIT);
    assert_int_equal(b.len, 10);
    tern_buf_consume(&b, 3);
    assert_memory_equal(b.data, "4567890", 7);
    assert_int_equal(tern_buf_printf(&b, "%d", 123), 0);
    assert_memory_equal(b.data, "4567890123", 10);
    tern_buf_consume(&b, 100);
    assert_int_equal(b.len, 0);
    tern_buf_shrink(&b, 0);
    assert_null(b.data);
    tern_buf_free(&b);
    tern_buf_init(&b, 0);
    char big[2000];
    memset(big, 'a', sizeof(big));
    assert_int_equal(tern_buf_printf(&b, "%.*s!", 2000, big), 0); /* longer than the stack path */
    assert_int_equal(b.len, 2001);
    tern_buf_free(&b);
}

static void test_duration(void **state)
{
    uint64_t v;
    assert_int_equal(tern_parse_duration_ms("500ms", &v), 0); assert_int_equal(v, 500);
    assert_int_equal(tern_parse_duration_ms("30s", &v), 0);   assert_int_equal(v, 30000);
    assert_int_equal(tern_parse_duration_ms("5m", &v), 0);    assert_int_equal(v, 300000);
    assert_int_equal(tern_parse_duration_ms("1h", &v), 0);    assert_int_equal(v, 3600000);
    assert_int_equal(tern_parse_duration_ms("2d", &v), 0);    assert_int_equal(v, 172800000);
    assert_int_equal(tern_parse_duration_ms("7", &v), 0);     assert_int_equal(v, 7000);
    assert_int_equal(tern_parse_duration_ms("", &v), -1);
    assert_int_equal(tern_parse_duration_ms("5 m", &v), -1);
    assert_int_equal(tern_parse_duration_ms("-5s", &v), -1);
    assert_int_equal(tern_parse_duration_ms("5w", &v), -1);
    assert_int_equal(tern_parse_duration_ms("99999999999999999999d", &v), -1);
    assert_int_equal(tern_parse_duration_ms("999999999999999d", &v), -1); /* overflows in ms */
    char buf[32];
    tern_format_duration(300000, buf, sizeof(buf)); assert_string_equal(buf, "5m");
    tern_format_duration(1500, buf, sizeof(buf));   assert_string_equal(buf, "1500ms");
}

static void test_size(void **state)
{
    uint64_t v;
    assert_int_equal(tern_parse_size("512", &v), 0);    assert_int_equal(v, 512);
    assert_int_equal(tern_parse_size("64KiB", &v), 0);  assert_int_equal(v, 65536);
    assert_int_equal(tern_parse_size("10MiB", &v), 0);  assert_int_equal(v, 10485760);
    assert_int_equal(tern_parse_size("1GiB", &v), 0);   assert_int_equal(v, 1073741824);
    assert_int_equal(tern_parse_size("10MB", &v), 0);   assert_int_equal(v, 10000000);
    assert_int_equal(tern_parse_size("10 MiB", &v), -1);
    assert_int_equal(tern_parse_size("MiB", &v), -1);
    assert_int_equal(tern_parse_size("10TiB", &v), -1);
    assert_int_equal(tern_parse_size("99999999999999GiB", &v), -1);
}

static void test_edit_distance(void **state)
{
    assert_int_equal(tern_edit_distance("workers", "workrs", 5), 1);
    assert_int_equal(tern_edit_distance("hostname", "hostname", 5), 0);
    assert_int_equal(tern_edit_distance("port", "timeout", 3), 3); /* capped */
    assert_int_equal(tern_edit_distance("", "abc", 5), 3);
}

static void test_cidr(void **state)
{
    tern_cidr c;
    struct sockaddr_in in4 = {.sin_family = AF_INET};
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
    assert_int_equal(tern_cidr_parse("10.0.0.0/8", &c), 0);
    inet_pton(AF_INET, "10.1.2.3", &in4.sin_addr);
    assert_true(tern_cidr_match(&c, (struct sockaddr *)&in4));
    inet_pton(AF_INET, "11.1.2.3", &in4.sin_addr);
    assert_false(tern_cidr_match(&c, (struct sockaddr *)&in4));
    /* IPv4-mapped IPv6 peers (dual-stack sockets) match IPv4 networks. */
    inet_pton(AF_INET6, "::ffff:10.9.9.9", &in6.sin6_addr);
    assert_true(tern_cidr_match(&c, (struct sockaddr *)&in6));
    assert_int_equal(tern_cidr_parse("192.168.1.128/25", &c), 0);
    inet_pton(AF_INET, "192.168.1.200", &in4.sin_addr);
    assert_true(tern_cidr_match(&c, (struct sockaddr *)&in4));
    inet_pton(AF_INET, "192.168.1.100", &in4.sin_addr);
    assert_false(tern_cidr_match(&c, (struct sockaddr *)&in4));
    assert_int_equal(tern_cidr_parse("2001:db8::/32", &c), 0);
    inet_pton(AF_INET6, "2001:db8:1::1", &in6.sin6_addr);
    assert_true(tern_cidr_match(&c, (struct sockaddr *)&in6));
    assert_int_equal(tern_cidr_parse("::1", &c), 0);
    assert_int_equal(c.prefix, 128);
    assert_int_equal(tern_cidr_parse("10.0.0.0/33", &c), -1);
    assert_int_equal(tern_cidr_parse("10.0.0.0/", &c), -1);
    assert_int_equal(tern_cidr_parse("nonsense", &c), -1);
    assert_int_equal(tern_cidr_parse("::/129", &c), -1);
    char buf[64];
    int port;
    in4.sin_port = htons(25);
    tern_sockaddr_str((struct sockaddr *)&in4, buf, sizeof(buf), &port);
    assert_string_equal(buf, "192.168.1.100");
    assert_int_equal(port, 25);
    tern_sockaddr_str((struct sockaddr *)&in6, buf, sizeof(buf), &port);
    assert_string_equal(buf, "2001:db8:1::1");
}

static void test_log_spec(void **state)
{
    const char *err = NULL;
    assert_int_equal(tern_log_check_spec("info", &err), 0);
    assert_int_equal(tern_log_check_spec("warn,smtp=debug,tls=error", &err), 0);
    assert_int_equal(tern_log_check_spec("loud", &err), -1);
    assert_non_null(err);
    assert_int_equal(tern_log_check_spec("info,debug", &err), -1);
    assert_int_equal(tern_log_check_spec("smtp=", &err), -1);
    assert_int_equal(tern_log_configure("warn,smtp=debug", &err), 0);
    assert_true(tern_log_enabled(TERN_LOG_DEBUG, "smtp"));
    assert_false(tern_log_enabled(TERN_LOG_INFO, "tls"));
    assert_true(tern_log_enabled(TERN_LOG_WARN, "tls"));
    tern_log_configure("info", NULL);
}

static void test_log_quote(void **state)
{
    char buf[32];
    assert_string_equal(tern_log_q(buf, sizeof(buf), "plain"), "plain");
    assert_string_equal(tern_log_q(buf, sizeof(buf), "a b"), "\"a b\"");
    assert_string_equal(tern_log_q(buf, sizeof(buf), "x=\"y\"\n"), "\"x=\\\"y\\\"\\x0a\"");
    assert_string_equal(tern_log_q(buf, sizeof(buf), ""), "\"\"");
    const char *lng = tern_log_q(buf, sizeof(buf), "an injected value that is much too long to fit");
    assert_true(strlen(lng) < sizeof(buf));
    assert_non_null(strstr(lng, "..."));
}

static void test_ids(void **state)
{
    char u[TERN_UUID_LEN], q1[TERN_QID_LEN], q2[TERN_QID_LEN];
    tern_uuid(u);
    assert_int_equal(strlen(u), 36);
    assert_int_equal(u[14], '4');
    tern_qid(q1);
    tern_qid(q2);
    assert_int_equal(strlen(q1), 16);
    assert_string_not_equal(q1, q2);
    assert_true(strcmp(q1, q2) <= 0 || memcmp(q1, q2, 9) == 0); /* time prefix sorts */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arena),       cmocka_unit_test(test_buf),
        cmocka_unit_test(test_duration),    cmocka_unit_test(test_size),
        cmocka_unit_test(test_edit_distance), cmocka_unit_test(test_cidr),
        cmocka_unit_test(test_log_spec),    cmocka_unit_test(test_log_quote),
        cmocka_unit_test(test_ids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
