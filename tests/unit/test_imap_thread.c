/* Unit tests of the pure SORT/THREAD parts (protocols/imap/imap_thread.c):
 * RFC 5256 2.1 base subjects step by step, msg-id lists, the sort order
 * with REVERSE and ties, the sort criteria parser, and both threading
 * algorithms including loops, duplicate ids, dummies and chains long
 * enough to overflow a recursive walk. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "protocols/imap/imap_thread.h"

static void check_base(const char *in, const char *want, bool want_refwd)
{
    tern_arena a;
    tern_arena_init(&a, 0);
    bool refwd = !want_refwd;
    char *b = tern_imap_base_subject(&a, in, strlen(in), &refwd);
    assert_non_null(b);
    if (strcmp(b, want) != 0 || refwd != want_refwd)
        fail_msg("base subject of \"%s\": got \"%s\" refwd=%d, want \"%s\" refwd=%d", in, b,
                 refwd, want, want_refwd);
    tern_arena_free(&a);
}

static void test_base_subject(void **state)
{
    (void)state;
    check_base("hello", "hello", false);
    check_base("Re: hello", "hello", true);
    check_base("RE: Re: [list] hello", "hello", true);       /* (3), then (4) */
    check_base("re:re:RE: hello", "hello", true);
    check_base("Fw: hi", "hi", true);
    check_base("FWD: hi", "hi", true);
    check_base("Fwd [x]: hi", "hi", true);                   /* blob inside subj-refwd */
    check_base("Re [2]: hi", "hi", true);
    check_base("[a] [b] Re: hi", "hi", true);                /* blobs before a refwd */
    check_base("[a][b] c", "c", false);                      /* (4) twice through (5) */
    check_base("[PATCH]", "[PATCH]", false);                 /* (4): nothing would remain */
    check_base("[PATCH] ", "[PATCH]", false);
    check_base("hello (fwd) (FWD)", "hello", true);          /* (2) */
    check_base("hello(fwd)", "hello", true);
    check_base("[fwd: Re: hello]", "hello", true);           /* (6) then again from (2) */
    check_base("[Fwd: [fwd: x (fwd)]]", "x", true);
    check_base("[fwd: ]", "", true);                         /* (6) leaves nothing */
    check_base("[fwd:", "[fwd:", false);                     /* no trailer */
    check_base("Reply: x", "Reply: x", false);               /* "re" must be followed by ':' */
    check_base("Re : x", "x", true);                         /* *WSP before ':' */
    check_base("  hello\t  world  ", "hello world", false);  /* (1) white space runs */
    check_base("Re:", "", true);
    check_base("", "", false);
    check_base("[unclosed hello", "[unclosed hello", false);
    check_base("=?UTF-8?Q?Re=3A_caf=C3=A9?=", "caf\xc3\xa9", true); /* decoded first */
    check_base("=?ISO-8859-1?Q?Fw=3A_=E9t=E9?=", "\xc3\xa9t\xc3\xa9", true);
}

static void test_base_subject_null_bytes(void **state)
{
    (void)state;
    tern_arena a;
    tern_arena_init(&a, 0);
    const char in[] = "Re: a\0b";
    char *b = tern_imap_base_subject(&a, in, sizeof(in) - 1, NULL);
    assert_non_null(b);
    assert_string_equal(b, "a b"); /* a NUL is a control: made a space */
    tern_arena_free(&a);
}

static void test_msgids(void **state)
{
    (void)state;
    tern_arena a;
    tern_arena_init(&a, 0);
    char **ids;
    const char *v = "<a@b>  <c@d>\t<e@f>";
    assert_int_equal(tern_imap_msgids(&a, v, strlen(v), 10, &ids), 3);
    assert_string_equal(ids[0], "a@b");
    assert_string_equal(ids[2], "e@f");
    assert_int_equal(tern_imap_msgids(&a, v, strlen(v), 2, &ids), 2);
    v = "junk <a b@c> <> <x <y@z> <open";
    assert_int_equal(tern_imap_msgids(&a, v, strlen(v), 10, &ids), 2);
    assert_string_equal(ids[0], "ab@c");
    assert_string_equal(ids[1], "y@z");
    assert_int_equal(tern_imap_msgids(&a, "", 0, 10, &ids), 0);
    tern_arena_free(&a);
}

static void test_casemap(void **state)
{
    (void)state;
    assert_int_equal(tern_imap_casemap_cmp("abc", "ABC"), 0);
    assert_true(tern_imap_casemap_cmp("abc", "ABD") < 0);
    assert_true(tern_imap_casemap_cmp("", "a") < 0);
    assert_true(tern_imap_casemap_cmp("b", "A") > 0);
    assert_true(tern_imap_casemap_cmp("_", "a") > 0); /* '_' (0x5F) > 'A' (0x41) */
}

static void test_sort(void **state)
{
    (void)state;
    tern_imap_sort_msg m[5];
    memset(m, 0, sizeof(m));
    const char *subj[] = {"beta", "Alpha", "alpha", "gamma", "beta"};
    const int64_t date[] = {5, 3, 3, 1, 2};
    const uint64_t size[] = {10, 30, 20, 10, 40};
    for (int i = 0; i < 5; i++) {
        m[i].id = (uint32_t)(100 + i);
        m[i].seq = (uint32_t)(i + 1);
        m[i].subject = subj[i];
        m[i].date = date[i];
        m[i].arrival = 10 - i;
        m[i].size = size[i];
        m[i].cc = m[i].from = m[i].to = m[i].display_from = m[i].display_to = "";
    }
    tern_imap_sort_crit c1[] = {{TERN_IMAP_SORT_SUBJECT, false}};
    tern_imap_sort(m, 5, c1, 1);
    uint32_t want1[] = {2, 3, 1, 5, 4}; /* ties by sequence number */
    for (int i = 0; i < 5; i++)
        assert_int_equal(m[i].seq, want1[i]);
    tern_imap_sort_crit c2[] = {{TERN_IMAP_SORT_SUBJECT, true}, {TERN_IMAP_SORT_DATE, true}};
    tern_imap_sort(m, 5, c2, 2);
    uint32_t want2[] = {4, 1, 5, 2, 3}; /* REVERSE reverses only its key, not the tie-break */
    for (int i = 0; i < 5; i++)
        assert_int_equal(m[i].seq, want2[i]);
    tern_imap_sort_crit c3[] = {{TERN_IMAP_SORT_SIZE, false}};
    tern_imap_sort(m, 5, c3, 1);
    uint32_t want3[] = {1, 4, 3, 2, 5};
    for (int i = 0; i < 5; i++)
        assert_int_equal(m[i].seq, want3[i]);
    tern_imap_sort_crit c4[] = {{TERN_IMAP_SORT_ARRIVAL, true}};
    tern_imap_sort(m, 5, c4, 1);
    for (int i = 0; i < 5; i++)
        assert_int_equal(m[i].seq, (uint32_t)(i + 1));
}

static bool parse_crit(const char *in, tern_imap_sort_crit *c, size_t *n)
{
    tern_arena a;
    tern_arena_init(&a, 0);
    tern_imap_parser ps;
    tern_imap_parser_init(&ps, (const uint8_t *)in, strlen(in), &a, 8);
    bool ok = tern_imap_sort_criteria(&ps, c, n) && tern_imap_at_end(&ps);
    tern_arena_free(&a);
    return ok;
}

static void test_sort_criteria(void **state)
{
    (void)state;
    tern_imap_sort_crit c[TERN_IMAP_SORT_MAX];
    size_t n = 0;
    assert_true(parse_crit("(REVERSE DATE subject)", c, &n));
    assert_int_equal(n, 2);
    assert_int_equal(c[0].key, TERN_IMAP_SORT_DATE);
    assert_true(c[0].reverse);
    assert_int_equal(c[1].key, TERN_IMAP_SORT_SUBJECT);
    assert_false(c[1].reverse);
    assert_true(parse_crit("(DISPLAYFROM DISPLAYTO ARRIVAL CC FROM SIZE TO)", c, &n));
    assert_int_equal(n, 7);
    assert_int_equal(c[0].key, TERN_IMAP_SORT_DISPLAYFROM);
    assert_false(parse_crit("()", c, &n));
    assert_false(parse_crit("(FOO)", c, &n));
    assert_false(parse_crit("(REVERSE)", c, &n));
    assert_false(parse_crit("(DATES)", c, &n));
    assert_false(parse_crit("DATE", c, &n));
    assert_false(parse_crit("(DATE", c, &n));
    assert_false(parse_crit("(DATE  SIZE)", c, &n));
    char big[400] = "(";
    for (int i = 0; i < TERN_IMAP_SORT_MAX + 1; i++)
        strcat(big, i ? " SIZE" : "SIZE");
    strcat(big, ")");
    assert_false(parse_crit(big, c, &n));
}

/* A thread message: id, date, subject, message-id, references (space separated). */
typedef struct {
    const char *subj, *mid, *refs;
    int64_t date;
} tm;

static char *run_thread(tern_imap_thread_algo algo, const tm *in, size_t n, char *out,
                        size_t outsz)
{
    tern_arena a;
    tern_arena_init(&a, 0);
    tern_imap_thread_msg *m = calloc(n ? n : 1, sizeof(*m));
    assert_non_null(m);
    for (size_t i = 0; i < n; i++) {
        m[i].id = (uint32_t)(i + 1);
        m[i].seq = (uint32_t)(i + 1);
        m[i].date = in[i].date;
        m[i].subject = tern_imap_base_subject(&a, in[i].subj, strlen(in[i].subj), &m[i].refwd);
        m[i].message_id = in[i].mid;
        if (in[i].refs)
            m[i].n_refs = tern_imap_msgids(&a, in[i].refs, strlen(in[i].refs), 100, &m[i].refs);
    }
    tern_buf b;
    tern_buf_init(&b, 0);
    assert_int_equal(tern_imap_thread(&a, algo, m, n, &b), 0);
    snprintf(out, outsz, "%.*s", (int)b.len, (const char *)b.data);
    tern_buf_free(&b);
    free(m);
    tern_arena_free(&a);
    return out;
}

#define REFS TERN_IMAP_THREAD_REFERENCES
#define ORD TERN_IMAP_THREAD_ORDEREDSUBJECT

static void test_thread_references(void **state)
{
    (void)state;
    char o[256];
    assert_string_equal(run_thread(REFS, NULL, 0, o, sizeof(o)), "");
    /* a chain by References, arriving out of order */
    tm chain[] = {{"Re: a", "3@x", "<1@x> <2@x>", 3}, {"a", "1@x", NULL, 1},
                  {"Re: a", "2@x", "<1@x>", 2}};
    assert_string_equal(run_thread(REFS, chain, 3, o, sizeof(o)), "(2 3 1)");
    /* two replies to one message: siblings sorted by date */
    tm fork[] = {{"a", "1@x", NULL, 1}, {"Re: a", "2@x", "<1@x>", 5},
                 {"Re: a", "3@x", "<1@x>", 3}, {"other", "4@x", NULL, 2}};
    assert_string_equal(run_thread(REFS, fork, 4, o, sizeof(o)), "(1 (3)(2))(4)");
    /* the parent is missing: a dummy at the root with two children stays */
    tm dummy[] = {{"x", "1@x", "<gone@x>", 2}, {"y", "2@x", "<gone@x>", 1}};
    assert_string_equal(run_thread(REFS, dummy, 2, o, sizeof(o)), "((2)(1))");
    /* one child of a missing parent is promoted; dummies below the root go */
    tm promote[] = {{"x", "1@x", "<gone@x> <gone2@x>", 2}, {"y", "2@x", NULL, 1}};
    assert_string_equal(run_thread(REFS, promote, 2, o, sizeof(o)), "(2)(1)");
    /* same base subject, neither a reply: a dummy holds both */
    tm same[] = {{"hi", "1@x", NULL, 2}, {"hi", "2@x", NULL, 1}};
    assert_string_equal(run_thread(REFS, same, 2, o, sizeof(o)), "((2)(1))");
    /* a reply by subject only goes under the original */
    tm reply[] = {{"Re: hi", "1@x", NULL, 1}, {"hi", "2@x", NULL, 2}};
    assert_string_equal(run_thread(REFS, reply, 2, o, sizeof(o)), "(2 1)");
    /* References loops and self references make no cycle */
    tm loop[] = {{"a", "1@x", "<2@x>", 1}, {"b", "2@x", "<1@x>", 2},
                 {"c", "3@x", "<3@x>", 3}};
    assert_string_equal(run_thread(REFS, loop, 3, o, sizeof(o)), "(2 1)(3)");
    /* a duplicate Message-ID: the second stands alone */
    tm dup[] = {{"a", "1@x", NULL, 1}, {"b", "1@x", NULL, 2}, {"c", "3@x", "<1@x>", 3}};
    assert_string_equal(run_thread(REFS, dup, 3, o, sizeof(o)), "(1 3)(2)");
    /* no Message-ID, empty subjects, equal dates (ties by sequence) */
    tm none[] = {{"", NULL, NULL, 5}, {"", NULL, NULL, 5}};
    assert_string_equal(run_thread(REFS, none, 2, o, sizeof(o)), "(1)(2)");
    /* 1A keeps the first link; 1B replaces a parent guessed from a truncated list */
    tm relink[] = {{"a", "1@x", NULL, 1}, {"b", "2@x", NULL, 2},
                   {"c", "3@x", "<1@x> <4@x>", 3}, {"d", "4@x", "<2@x>", 4}};
    assert_string_equal(run_thread(REFS, relink, 4, o, sizeof(o)), "(1)(2 4 3)");
}

static void test_thread_orderedsubject(void **state)
{
    (void)state;
    char o[256];
    tm in[] = {{"Re: beta", NULL, NULL, 3}, {"alpha", NULL, NULL, 1},
               {"[list] Fwd: alpha", NULL, NULL, 5}, {"beta", NULL, NULL, 2},
               {"Re: alpha (fwd)", NULL, NULL, 4}, {"gamma", NULL, NULL, 0}};
    assert_string_equal(run_thread(ORD, in, 6, o, sizeof(o)), "(6)(2 (5)(3))(4 1)");
    assert_string_equal(run_thread(ORD, NULL, 0, o, sizeof(o)), "");
}

/* Chains and nestings as long as a mailbox: no recursion to run out. */
static void test_thread_deep(void **state)
{
    (void)state;
    enum { N = 30000 };
    tern_arena a;
    tern_arena_init(&a, 0);
    tern_imap_thread_msg *m = calloc(N, sizeof(*m));
    assert_non_null(m);
    for (size_t i = 0; i < N; i++) {
        m[i].id = m[i].seq = (uint32_t)(i + 1);
        m[i].date = (int64_t)i;
        m[i].subject = "";
        m[i].message_id = tern_arena_printf(&a, "%zu@x", i);
        /* even: replies to the previous even one; odd: a leaf under it */
        if (i > 0) {
            m[i].refs = tern_arena_alloc(&a, sizeof(char *));
            m[i].refs[0] = tern_arena_printf(&a, "%zu@x", (i - 1) & ~(size_t)1);
            m[i].n_refs = 1;
        }
    }
    tern_buf b;
    tern_buf_init(&b, 0);
    assert_int_equal(tern_imap_thread(&a, REFS, m, N, &b), 0);
    assert_true(b.len > 3 * N);
    assert_memory_equal(b.data, "(1 (2)(3 (4)(5 ", 15);
    size_t open = 0, close = 0;
    for (size_t i = 0; i < b.len; i++)
        open += b.data[i] == '(', close += b.data[i] == ')';
    assert_int_equal(open, close);
    tern_buf_free(&b);
    free(m);
    tern_arena_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base_subject),
        cmocka_unit_test(test_base_subject_null_bytes),
        cmocka_unit_test(test_msgids),
        cmocka_unit_test(test_casemap),
        cmocka_unit_test(test_sort),
        cmocka_unit_test(test_sort_criteria),
        cmocka_unit_test(test_thread_references),
        cmocka_unit_test(test_thread_orderedsubject),
        cmocka_unit_test(test_thread_deep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
