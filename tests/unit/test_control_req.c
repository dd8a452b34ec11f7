/* Unit tests for server/control_req.c: the control socket's request
 * lines, good and bad, including every prefix of a good one (a request
 * cut short must be refused, never half taken). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "server/control_req.h"

static int parse(const char *s, tern_control_req *req, char *err)
{
    return tern_control_req_parse(s, strlen(s), req, err, 160);
}

static void test_good(void **state)
{
    (void)state;
    tern_control_req r;
    char err[160];
    assert_int_equal(parse("{\"cmd\":\"auth.stats\"}", &r, err), 0);
    assert_int_equal(r.cmd, TERN_CTL_AUTH_STATS);
    assert_int_equal(parse("{\"cmd\":\"queue.list\"}", &r, err), 0);
    assert_int_equal(r.cmd, TERN_CTL_QUEUE_LIST);
    assert_string_equal(r.qid, "");
    assert_int_equal(parse(" { \"qid\" : \"0123456789ABCDEF\", \"cmd\":\"queue.show\" } ", &r, err), 0);
    assert_int_equal(r.cmd, TERN_CTL_QUEUE_SHOW);
    assert_string_equal(r.qid, "0123456789ABCDEF");
    assert_int_equal(parse("{\"cmd\":\"queue.retry\",\"all\":true}", &r, err), 0);
    assert_true(r.all);
    assert_int_equal(parse("{\"cmd\":\"queue.retry\",\"qid\":\"Q\"}", &r, err), 0);
    assert_false(r.all);
    assert_int_equal(parse("{\"cmd\":\"queue.hold\",\"qid\":\"Q\"}", &r, err), 0);
    assert_int_equal(r.cmd, TERN_CTL_QUEUE_HOLD);
    assert_int_equal(parse("{\"cmd\":\"queue.release\",\"qid\":\"Q\"}", &r, err), 0);
    assert_int_equal(r.cmd, TERN_CTL_QUEUE_RELEASE);
    assert_int_equal(parse("{\"cmd\":\"queue.delete\",\"qid\":\"Q\",\"future\":[1,{}]}", &r, err), 0);
    assert_int_equal(r.cmd, TERN_CTL_QUEUE_DELETE);
    assert_int_equal(parse("{\"cmd\":\"queue.hosts\"}", &r, err), 0);
    assert_int_equal(r.cmd, TERN_CTL_QUEUE_HOSTS);
}

static void test_bad(void **state)
{
    (void)state;
    static const struct {
        const char *in, *why;
    } cases[] = {
        {"", "not JSON"},
        {"not json", "not JSON"},
        {"[\"queue.list\"]", "not a JSON object"},
        {"{}", "no \"cmd\""},
        {"{\"cmd\":7}", "no \"cmd\""},
        {"{\"cmd\":\"queue.frob\"}", "unknown command \"queue.frob\""},
        {"{\"cmd\":\"queue.show\"}", "queue.show needs \"qid\""},
        {"{\"cmd\":\"queue.hold\",\"qid\":\"\"}", "\"qid\" must be"},
        {"{\"cmd\":\"queue.hold\",\"qid\":\"a b\"}", "\"qid\" must be"},
        {"{\"cmd\":\"queue.hold\",\"qid\":\"a\\nb\"}", "\"qid\" must be"},
        {"{\"cmd\":\"queue.hold\",\"qid\":5}", "\"qid\" must be"},
        {"{\"cmd\":\"queue.hold\",\"qid\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}",
         "\"qid\" must be"},
        {"{\"cmd\":\"queue.retry\"}", "\"all\":true"},
        {"{\"cmd\":\"queue.retry\",\"all\":false}", "\"all\":true"},
        {"{\"cmd\":\"queue.retry\",\"all\":1}", "\"all\" must be"},
        {"{\"cmd\":\"queue.list\",\"cmd\":\"queue.list\"}", "not JSON"},
        {"{\"cmd\":\"queue\\u0001x\"}", "unknown command \"queue?x\""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        tern_control_req r;
        char err[160] = "";
        if (parse(cases[i].in, &r, err) != -1 || strstr(err, cases[i].why) == NULL)
            fail_msg("case %zu (%s): got \"%s\"", i, cases[i].in, err);
    }
}

/* Every proper prefix of a valid request is refused, byte by byte. */
static void test_prefixes(void **state)
{
    (void)state;
    const char *good = "{\"cmd\":\"queue.show\",\"qid\":\"0123456789ABCDEF\"}";
    for (size_t n = 0; n < strlen(good); n++) {
        tern_control_req r;
        char err[160];
        assert_int_equal(tern_control_req_parse(good, n, &r, err, sizeof(err)), -1);
    }
    tern_control_req r;
    char err[160];
    assert_int_equal(tern_control_req_parse(good, strlen(good), &r, err, sizeof(err)), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),
        cmocka_unit_test(test_bad),
        cmocka_unit_test(test_prefixes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
