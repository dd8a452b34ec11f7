/* test_json.c: lib/json.c, the bounded JSON parser: every value type,
 * escapes and surrogate pairs, the limits, invalid documents, and every
 * truncation of valid ones (the parser takes a whole span, so a cut
 * document must be refused, never half-read). Input: fixed strings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lib/json.h"

static int parse(tern_arena *a, const char *s, tern_json **v)
{
    return tern_json_parse(s, strlen(s), NULL, a, v, NULL);
}

static void test_types(void **state)
{
    (void)state;
    tern_arena a;
    tern_arena_init(&a, 1024);
    tern_json *v;
    const char *doc = " {\"n\": null, \"t\": true, \"f\": false, \"i\": -12, \"d\": 1.5e2,"
                      " \"s\": \"x\", \"a\": [1, [], {}], \"o\": {\"k\": \"v\"}} ";
    assert_int_equal(parse(&a, doc, &v), TERN_JSON_OK);
    assert_int_equal(v->type, TERN_JSON_OBJECT);
    assert_int_equal(v->len, 8);
    assert_int_equal(tern_json_get(v, "n")->type, TERN_JSON_NULL);
    assert_true(tern_json_get(v, "t")->boolean);
    assert_false(tern_json_get(v, "f")->boolean);
    int64_t i;
    assert_int_equal(tern_json_int64(tern_json_get(v, "i"), &i), 0);
    assert_int_equal(i, -12);
    assert_true(tern_json_get(v, "d")->number == 150.0);
    assert_int_equal(tern_json_int64(tern_json_get(v, "d"), &i), -1);
    assert_string_equal(tern_json_str(tern_json_get(v, "s")), "x");
    const tern_json *arr = tern_json_get(v, "a");
    assert_int_equal(arr->type, TERN_JSON_ARRAY);
    assert_int_equal(arr->len, 3);
    assert_int_equal(arr->child->next->type, TERN_JSON_ARRAY);
    assert_int_equal(arr->child->next->len, 0);
    assert_int_equal(arr->child->next->next->type, TERN_JSON_OBJECT);
    assert_string_equal(tern_json_str(tern_json_get(tern_json_get(v, "o"), "k")), "v");
    assert_null(tern_json_get(v, "missing"));
    assert_null(tern_json_get(arr, "a"));
    const char *scalars[] = {"0", "-0", "\"\"", "null", "true", "[]", "{}", "1E+2", "0.0e-0"};
    for (size_t k = 0; k < sizeof(scalars) / sizeof(*scalars); k++)
        assert_int_equal(parse(&a, scalars[k], &v), TERN_JSON_OK);
    tern_arena_free(&a);
}

static void test_escapes(void **state)
{
    (void)state;
    tern_arena a;
    tern_arena_init(&a, 1024);
    tern_json *v;
    assert_int_equal(parse(&a, "\"a\\\"\\\\\\/\\b\\f\\n\\r\\tz\"", &v), 0);
    assert_string_equal(v->text, "a\"\\/\b\f\n\r\tz");
    assert_int_equal(parse(&a, "\"\\u00e9\\u20AC\\ud83d\\ude00\"", &v), 0);
    assert_string_equal(v->text, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    assert_int_equal(v->len, 9);
    assert_int_equal(parse(&a, "\"caf\xc3\xa9\"", &v), 0);
    /* U+0000 is kept, but tern_json_str refuses it: a C string would cut. */
    assert_int_equal(parse(&a, "\"a\\u0000b\"", &v), 0);
    assert_int_equal(v->len, 3);
    assert_null(tern_json_str(v));
    const char *bad[] = {"\"\\ud83d\"", "\"\\ude00\"", "\"\\ud83d\\u0041\"", "\"\\x\"",
                         "\"\\u12\"", "\"\\u12g4\"", "\"\xc3\"", "\"\xc0\x80\"",
                         "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"", "\"\xff\"", "\"a\tb\"",
                         "\"\\"};
    for (size_t k = 0; k < sizeof(bad) / sizeof(*bad); k++)
        assert_int_equal(parse(&a, bad[k], &v), TERN_JSON_ESYNTAX);
    tern_arena_free(&a);
}

static void test_numbers(void **state)
{
    (void)state;
    tern_arena a;
    tern_arena_init(&a, 1024);
    tern_json *v;
    int64_t i;
    assert_int_equal(parse(&a, "9223372036854775807", &v), 0);
    assert_int_equal(tern_json_int64(v, &i), 0);
    assert_true(i == INT64_MAX);
    assert_int_equal(parse(&a, "-9223372036854775808", &v), 0);
    assert_int_equal(tern_json_int64(v, &i), 0);
    assert_true(i == INT64_MIN);
    assert_int_equal(parse(&a, "9223372036854775808", &v), 0);
    assert_int_equal(tern_json_int64(v, &i), -1);
    assert_int_equal(parse(&a, "123456789012345678901234567890", &v), 0);
    assert_int_equal(tern_json_int64(v, &i), -1);
    assert_true(v->number > 1e29);
    assert_int_equal(parse(&a, "1e400", &v), 0);
    assert_string_equal(v->text, "1e400");
    const char *bad[] = {"01", "-", "+1", "1.", ".5", "1e", "1e+", "0x10", "NaN", "Infinity",
                         "-a", "1.e3"};
    for (size_t k = 0; k < sizeof(bad) / sizeof(*bad); k++)
        assert_int_equal(parse(&a, bad[k], &v), TERN_JSON_ESYNTAX);
    tern_arena_free(&a);
}

static void test_invalid(void **state)
{
    (void)state;
    tern_arena a;
    tern_arena_init(&a, 1024);
    tern_json *v;
    const char *bad[] = {"", " ", "[1,]", "{\"a\":1,}", "[1 2]", "{\"a\" 1}", "{a:1}", "{1:1}",
                         "tru", "nul", "nulls", "[", "]", "{", "{}}", "[] []", "// c\n1",
                         "'a'", "[1,,2]", "{\"a\":}"};
    for (size_t k = 0; k < sizeof(bad) / sizeof(*bad); k++) {
        v = (tern_json *)&a; /* must be reset to NULL */
        assert_int_equal(parse(&a, bad[k], &v), TERN_JSON_ESYNTAX);
        assert_null(v);
    }
    assert_int_equal(parse(&a, "{\"a\":1,\"a\":2}", &v), TERN_JSON_EDUPKEY);
    assert_int_equal(parse(&a, "{\"a\":1,\"\\u0061\":2}", &v), TERN_JSON_EDUPKEY);
    /* An embedded NUL is just a bad byte: the span, not strlen, bounds it. */
    assert_int_equal(tern_json_parse("[1]\0", 4, NULL, &a, &v, NULL), TERN_JSON_ESYNTAX);
    size_t off;
    assert_int_equal(tern_json_parse("[1, x]", 6, NULL, &a, &v, &off), TERN_JSON_ESYNTAX);
    assert_int_equal(off, 4);
    tern_arena_free(&a);
}

static void test_limits(void **state)
{
    (void)state;
    tern_arena a;
    tern_arena_init(&a, 1024);
    tern_json *v;
    char deep[1100];
    for (int d = 30; d <= 34; d++) {
        memset(deep, '[', (size_t)d);
        memset(deep + d, ']', (size_t)d);
        int rc = tern_json_parse(deep, (size_t)d * 2, NULL, &a, &v, NULL);
        assert_int_equal(rc, d <= 32 ? TERN_JSON_OK : TERN_JSON_ELIMIT);
    }
    /* Far past the limit: refused early, not by running out of stack. */
    memset(deep, '[', sizeof(deep));
    assert_int_equal(tern_json_parse(deep, sizeof(deep), NULL, &a, &v, NULL), TERN_JSON_ELIMIT);
    tern_json_limits lim = {.max_depth = 2, .max_nodes = 3, .max_string = 4, .max_input = 20};
    assert_int_equal(tern_json_parse("[[1]]", 5, &lim, &a, &v, NULL), TERN_JSON_OK);
    assert_int_equal(tern_json_parse("[[[]]]", 6, &lim, &a, &v, NULL), TERN_JSON_ELIMIT);
    assert_int_equal(tern_json_parse("[1,2,3]", 7, &lim, &a, &v, NULL), TERN_JSON_ELIMIT);
    assert_int_equal(tern_json_parse("\"abcd\"", 6, &lim, &a, &v, NULL), TERN_JSON_OK);
    assert_int_equal(tern_json_parse("\"abcde\"", 7, &lim, &a, &v, NULL), TERN_JSON_ELIMIT);
    assert_int_equal(tern_json_parse("{\"abcde\":1}", 11, &lim, &a, &v, NULL), TERN_JSON_ELIMIT);
    assert_int_equal(tern_json_parse("12345", 5, &lim, &a, &v, NULL), TERN_JSON_ELIMIT);
    assert_int_equal(tern_json_parse("[                    ]", 22, &lim, &a, &v, NULL),
                     TERN_JSON_ELIMIT);
    tern_arena_free(&a);
}

/* Each strict prefix of a document that is not itself a document must be
 * refused: the parser never reads past the span or accepts a cut value. */
static void test_every_prefix(void **state)
{
    (void)state;
    const char *docs[] = {
        "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"}],\"x\":[true,false,null]}",
        "[\"\\ud83d\\ude00\", -1.25e-3, {\"a\": {\"b\": []}}]",
    };
    for (size_t k = 0; k < sizeof(docs) / sizeof(*docs); k++) {
        size_t n = strlen(docs[k]);
        for (size_t cut = 0; cut < n; cut++) {
            tern_arena a;
            tern_arena_init(&a, 256);
            /* A heap copy of exactly cut bytes lets ASan catch an over-read. */
            char *copy = malloc(cut ? cut : 1);
            memcpy(copy, docs[k], cut);
            tern_json *v;
            assert_int_not_equal(tern_json_parse(copy, cut, NULL, &a, &v, NULL), TERN_JSON_OK);
            free(copy);
            tern_arena_free(&a);
        }
        tern_arena a;
        tern_arena_init(&a, 256);
        tern_json *v;
        assert_int_equal(tern_json_parse(docs[k], n, NULL, &a, &v, NULL), TERN_JSON_OK);
        tern_arena_free(&a);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_types),   cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_numbers), cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_limits),  cmocka_unit_test(test_every_prefix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
