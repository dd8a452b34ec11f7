/* Unit tests for lib/address.c: RFC 5322 address lists as IMAP ENVELOPE
 * and the mailets read them (the examples of RFC 5322 appendix A, groups,
 * routes, comments, obsolete forms, RFC 2047 and RFC 6532 names, broken
 * input), rendered as "(name route local domain)" per entry with NIL for
 * NULL. The parser takes a whole header value (header fields are handed
 * out whole by lib/header), so there is no chunking to vary; every case
 * also runs on each of its prefixes to prove that cut input never reads
 * past its end. Input: fixed strings. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/address.h"
#include "lib/buf.h"

static void q(tern_buf *o, const char *s)
{
    if (s)
        tern_buf_printf(o, "\"%s\"", s);
    else
        tern_buf_append_str(o, "NIL");
}

static char *render(const char *in, unsigned flags)
{
    tern_arena a;
    tern_arena_init(&a, 0);
    size_t n;
    tern_address *l = tern_address_list_parse(&a, in, strlen(in), flags, &n);
    tern_buf o;
    tern_buf_init(&o, 0);
    size_t count = 0;
    for (; l; l = l->next) {
        count++;
        if (o.len)
            tern_buf_append(&o, " ", 1);
        if (l->kind == TERN_ADDRESS_GROUP_START) {
            tern_buf_append_str(&o, "GROUP:");
            q(&o, (flags & TERN_ADDRESS_DECODE) ? l->name_decoded : l->name);
            continue;
        }
        if (l->kind == TERN_ADDRESS_GROUP_END) {
            tern_buf_append_str(&o, "END");
            continue;
        }
        tern_buf_append(&o, "(", 1);
        q(&o, (flags & TERN_ADDRESS_DECODE) ? l->name_decoded : l->name);
        tern_buf_append(&o, " ", 1);
        q(&o, l->route);
        tern_buf_append(&o, " ", 1);
        q(&o, l->local);
        tern_buf_append(&o, " ", 1);
        q(&o, l->domain);
        tern_buf_append_str(&o, l->invalid ? " !)" : ")");
    }
    assert_int_equal(count, n);
    tern_buf_append(&o, "", 1);
    tern_arena_free(&a);
    return (char *)o.data;
}

static void check(const char *in, const char *want, unsigned flags)
{
    char *got = render(in, flags);
    if (strcmp(got, want) != 0)
        fail_msg("parse(%s)\n got: %s\nwant: %s", in, got, want);
    free(got);
    /* Every prefix, from a heap copy of exactly that length (ASan sees any
     * read past it). */
    size_t len = strlen(in);
    for (size_t k = 0; k < len; k++) {
        char *cut = malloc(k ? k : 1);
        memcpy(cut, in, k);
        tern_arena a;
        tern_arena_init(&a, 0);
        size_t n;
        tern_address *l = tern_address_list_parse(&a, cut, k, flags, &n);
        assert_true(n != (size_t)-1);
        int depth = 0;
        for (; l; l = l->next) {
            if (l->kind == TERN_ADDRESS_GROUP_START)
                depth++;
            else if (l->kind == TERN_ADDRESS_GROUP_END)
                depth--;
            assert_true(depth == 0 || depth == 1);
        }
        assert_int_equal(depth, 0); /* groups always closed */
        tern_arena_free(&a);
        free(cut);
    }
}

#define C(in, want) check(in, want, 0)
#define D(in, want) check(in, want, TERN_ADDRESS_DECODE)

static void test_address_basic(void **state)
{
    (void)state;
    C("", "");
    C("   ", "");
    C("alice@example.test", "(NIL NIL \"alice\" \"example.test\")");
    C("Alice <alice@example.test>", "(\"Alice\" NIL \"alice\" \"example.test\")");
    C("\"Smith, John\" <john@x.test>, bob@y.test",
      "(\"Smith, John\" NIL \"john\" \"x.test\") (NIL NIL \"bob\" \"y.test\")");
    /* RFC 5322 A.1.1, A.1.2 */
    C("John Doe <jdoe@machine.example>", "(\"John Doe\" NIL \"jdoe\" \"machine.example\")");
    C("\"Joe Q. Public\" <john.q.public@example.com>",
      "(\"Joe Q. Public\" NIL \"john.q.public\" \"example.com\")");
    C("Mary Smith <mary@x.test>, jdoe@example.org, Who? <one@y.test>",
      "(\"Mary Smith\" NIL \"mary\" \"x.test\") (NIL NIL \"jdoe\" \"example.org\") "
      "(\"Who?\" NIL \"one\" \"y.test\")");
    C("<boss@nil.test>, \"Giant; \\\"Big\\\" Box\" <sysservices@example.net>",
      "(NIL NIL \"boss\" \"nil.test\") (\"Giant; \"Big\" Box\" NIL \"sysservices\" \"example.net\")");
    /* obs-phrase with a dot, unquoted */
    C("John Q. Public <jqp@x.test>", "(\"John Q. Public\" NIL \"jqp\" \"x.test\")");
}

static void test_address_groups(void **state)
{
    (void)state;
    /* RFC 5322 A.1.3 */
    C("A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;",
      "GROUP:\"A Group\" (\"Ed Jones\" NIL \"c\" \"a.test\") (NIL NIL \"joe\" \"where.test\") "
      "(\"John\" NIL \"jdoe\" \"one.test\") END");
    C("Undisclosed recipients:;", "GROUP:\"Undisclosed recipients\" END");
    C("undisclosed-recipients: ;, bob@x.test",
      "GROUP:\"undisclosed-recipients\" END (NIL NIL \"bob\" \"x.test\")");
    /* never closed: closed at the end */
    C("team: a@b.test, c@d.test", "GROUP:\"team\" (NIL NIL \"a\" \"b.test\") (NIL NIL \"c\" \"d.test\") END");
    /* a stray ';' outside a group is a separator */
    C("a@b.test; c@d.test", "(NIL NIL \"a\" \"b.test\") (NIL NIL \"c\" \"d.test\")");
}

static void test_address_comments_routes(void **state)
{
    (void)state;
    /* RFC 5322 A.5 */
    C("Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>",
      "(\"Pete\" NIL \"pete\" \"silly.test\")");
    C("jdoe@x.test (John Doe)", "(\"John Doe\" NIL \"jdoe\" \"x.test\")");
    C("(Comment only) <c@x.test>", "(\"Comment only\" NIL \"c\" \"x.test\")");
    /* obs-route */
    C("<@route1,@route2:user@host.test>", "(NIL \"@route1,@route2\" \"user\" \"host.test\")");
    C("Name <@r.test:u@h.test>", "(\"Name\" \"@r.test\" \"u\" \"h.test\")");
    /* obs-local-part and obs-domain with spaces around the dots */
    C("john . doe @ example . test", "(NIL NIL \"john.doe\" \"example.test\")");
    C("\"very.unusual.@.unusual.com\"@example.com",
      "(NIL NIL \"very.unusual.@.unusual.com\" \"example.com\")");
    C("user@[192.0.2.1]", "(NIL NIL \"user\" \"[192.0.2.1]\")");
    C(", ,alice@a.test,,", "(NIL NIL \"alice\" \"a.test\")");
}

static void test_address_broken(void **state)
{
    (void)state;
    C("<>", "(NIL NIL \"\" NIL)");
    C("user", "(NIL NIL \"user\" NIL !)");
    C("John Doe", "(\"John Doe\" NIL NIL NIL !)");
    C("john.doe", "(NIL NIL \"john.doe\" NIL !)");
    C("Someone Else, bob@x.test", "(\"Someone Else\" NIL NIL NIL !) (NIL NIL \"bob\" \"x.test\")");
    C("user@", "(NIL NIL \"user\" NIL !)");
    C("@example.test", "(NIL NIL NIL \"example.test\" !)");
    C("Bob <bob@example.test", "(\"Bob\" NIL \"bob\" \"example.test\" !)");
    C("Bob <bob@example.test> trailing", "(\"Bob\" NIL \"bob\" \"example.test\" !)");
    C("\"unterminated <a@b.test>", "(NIL NIL \"unterminated <a@b.test>\" NIL !)");
    C("a@b@c.test", "(NIL NIL \"a\" \"b@c.test\" !)");
    C("(unclosed comment a@b.test", "");
    C("Alice <alice@example.test>, (junk", "(\"Alice\" NIL \"alice\" \"example.test\")");
    C("a@b.test)", "(NIL NIL \"a\" \"b.test)\" !)");
}

static void test_address_encoded(void **state)
{
    (void)state;
    /* Raw names keep encoded-words; decoded ones are UTF-8. */
    C("=?ISO-8859-1?Q?Keld_J=F8rn_Simonsen?= <keld@dkuug.dk>",
      "(\"=?ISO-8859-1?Q?Keld_J=F8rn_Simonsen?=\" NIL \"keld\" \"dkuug.dk\")");
    D("=?ISO-8859-1?Q?Keld_J=F8rn_Simonsen?= <keld@dkuug.dk>",
      "(\"Keld J\xc3\xb8rn Simonsen\" NIL \"keld\" \"dkuug.dk\")");
    D("\"=?utf-8?b?w6k=?=\" <e@x.test>", "(\"\xc3\xa9\" NIL \"e\" \"x.test\")");
    D("Team =?utf-8?q?=C3=A9?=: a@b.test;",
      "GROUP:\"Team \xc3\xa9\" (NIL NIL \"a\" \"b.test\") END");
    /* RFC 6532: UTF-8 everywhere */
    D("Jos\xc3\xa9 <jos\xc3\xa9@ex\xc3\xa4mple.test>",
      "(\"Jos\xc3\xa9\" NIL \"jos\xc3\xa9\" \"ex\xc3\xa4mple.test\")");
    /* Latin-1 bytes in a raw name come out as UTF-8 when decoded */
    D("Jos\xe9 <j@x.test>", "(\"Jos\xc3\xa9\" NIL \"j\" \"x.test\")");
    /* Controls never reach a decoded name. */
    D("\"a\\\x01" "b\" <c@d.test>", "(\"a b\" NIL \"c\" \"d.test\")");
}

static void test_address_spec(void **state)
{
    (void)state;
    tern_arena a;
    tern_arena_init(&a, 0);
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"x <john.doe@example.test>", "john.doe@example.test"},
        {"\"john doe\"@example.test", "\"john doe\"@example.test"},
        {"\"a\\\"b\"@x.test", "\"a\\\"b\"@x.test"},
        {"\".lead\"@x.test", "\".lead\"@x.test"},
        {"user", "user"},
        {"<>", "\"\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tern_address *l = tern_address_list_parse(&a, cases[i].in, strlen(cases[i].in), 0, NULL);
        assert_non_null(l);
        assert_string_equal(tern_address_spec(&a, l), cases[i].want);
    }
    tern_address *g = tern_address_list_parse(&a, "g:;", 3, 0, NULL);
    assert_null(tern_address_spec(&a, g));
    tern_arena_free(&a);
}

static void test_address_limit(void **state)
{
    (void)state;
    tern_buf in;
    tern_buf_init(&in, 0);
    for (int i = 0; i < TERN_ADDRESS_MAX + 50; i++)
        tern_buf_printf(&in, "u%d@x.test, ", i);
    tern_arena a;
    tern_arena_init(&a, 0);
    size_t n;
    tern_address *l = tern_address_list_parse(&a, (char *)in.data, in.len, 0, &n);
    assert_int_equal(n, TERN_ADDRESS_MAX);
    assert_string_equal(l->local, "u0");
    tern_arena_free(&a);
    tern_buf_free(&in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_address_basic),
        cmocka_unit_test(test_address_groups),
        cmocka_unit_test(test_address_comments_routes),
        cmocka_unit_test(test_address_broken),
        cmocka_unit_test(test_address_encoded),
        cmocka_unit_test(test_address_spec),
        cmocka_unit_test(test_address_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
