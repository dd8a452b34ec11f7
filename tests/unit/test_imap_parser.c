/* Unit tests of the IMAP command reader and argument parsers: every input
 * is fed both whole and one byte at a time, and both must agree. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "protocols/imap/imap_parser.h"

typedef struct {
    tern_imap_status st[16];
    char cmd[16][512];
    uint64_t lit[16];
    size_t n;
} events;

/* Feeds `in` in pieces of `step` bytes; synchronising literals up to `accept_max`
 * are accepted, larger ones refused. */
static void run(const char *in, size_t step, uint64_t accept_max, events *ev, size_t max_line,
                uint64_t max_literal)
{
    tern_imap_reader r;
    tern_imap_reader_init(&r, max_line, max_literal, 1 << 20);
    memset(ev, 0, sizeof(*ev));
    size_t len = strlen(in), off = 0;
    while (off < len) {
        size_t chunk = len - off < step ? len - off : step;
        size_t used = 0;
        while (used < chunk) {
            tern_imap_status st;
            size_t u = tern_imap_reader_feed(&r, (const uint8_t *)in + off + used, chunk - used, &st);
            used += u;
            if (st == TERN_IMAP_MORE)
                continue;
            assert_true(ev->n < 16);
            ev->st[ev->n] = st;
            if (st == TERN_IMAP_COMMAND) {
                size_t cl;
                const uint8_t *c = tern_imap_reader_command(&r, &cl);
                assert_true(cl < 512);
                memcpy(ev->cmd[ev->n], c, cl);
            } else {
                size_t tl;
                const char *t = tern_imap_reader_tag(&r, &tl);
                memcpy(ev->cmd[ev->n], t, tl);
            }
            if (st == TERN_IMAP_LITERAL_SYNC) {
                ev->lit[ev->n] = tern_imap_reader_literal_size(&r);
                if (ev->lit[ev->n] <= accept_max)
                    tern_imap_reader_accept(&r);
                else
                    tern_imap_reader_refuse(&r);
            }
            ev->n++;
        }
        off += chunk;
    }
    tern_imap_reader_free(&r);
}

static void both(const char *in, uint64_t accept_max, events *ev, size_t max_line,
                 uint64_t max_literal)
{
    events e1;
    run(in, 1, accept_max, &e1, max_line, max_literal);
    run(in, 4096, accept_max, ev, max_line, max_literal);
    assert_int_equal(e1.n, ev->n);
    for (size_t i = 0; i < ev->n; i++) {
        assert_int_equal(e1.st[i], ev->st[i]);
        assert_string_equal(e1.cmd[i], ev->cmd[i]);
    }
}

static void test_reader_simple(void **st)
{
    (void)st;
    events ev;
    both("a1 NOOP\r\na2 LOGOUT\r\n", 100, &ev, 1000, 1000);
    assert_int_equal(ev.n, 2);
    assert_string_equal(ev.cmd[0], "a1 NOOP");
    assert_string_equal(ev.cmd[1], "a2 LOGOUT");
}

static void test_reader_literals(void **st)
{
    (void)st;
    events ev;
    both("a LOGIN {5}\r\nalice {6+}\r\nsecret\r\nb NOOP\r\n", 100, &ev, 1000, 1000);
    assert_int_equal(ev.n, 3);
    assert_int_equal(ev.st[0], TERN_IMAP_LITERAL_SYNC);
    assert_int_equal(ev.lit[0], 5);
    assert_int_equal(ev.st[1], TERN_IMAP_COMMAND);
    assert_string_equal(ev.cmd[1], "a LOGIN {5}\r\nalice {6+}\r\nsecret");
    assert_string_equal(ev.cmd[2], "b NOOP");
}

static void test_reader_refuse_sync(void **st)
{
    (void)st;
    events ev;
    /* The client waits for "+": after the refusal it goes on with the next command. */
    both("a APPEND INBOX {99999}\r\nb NOOP\r\n", 100, &ev, 1000, 1000000);
    assert_int_equal(ev.n, 2);
    assert_int_equal(ev.st[0], TERN_IMAP_LITERAL_SYNC);
    assert_string_equal(ev.cmd[0], "a");
    assert_string_equal(ev.cmd[1], "b NOOP");
}

static void test_reader_nonsync_too_big(void **st)
{
    (void)st;
    events ev;
    both("a APPEND INBOX {20+}\r\n01234567890123456789 more\r\nb NOOP\r\n", 100, &ev, 1000, 10);
    assert_int_equal(ev.n, 2);
    assert_int_equal(ev.st[0], TERN_IMAP_LITERAL_TOO_BIG);
    assert_string_equal(ev.cmd[0], "a");
    assert_int_equal(ev.st[1], TERN_IMAP_COMMAND);
    assert_string_equal(ev.cmd[1], "b NOOP");
}

static void test_reader_too_long(void **st)
{
    (void)st;
    events ev;
    char in[400];
    memset(in, 'x', sizeof(in));
    memcpy(in, "t1 NOOP ", 8);
    strcpy(in + 300, " {4+}\r\nabcd tail\r\nt2 NOOP\r\n");
    both(in, 100, &ev, 64, 1000);
    assert_int_equal(ev.n, 2);
    assert_int_equal(ev.st[0], TERN_IMAP_TOO_LONG);
    assert_string_equal(ev.cmd[0], "t1");
    assert_string_equal(ev.cmd[1], "t2 NOOP");
}

static bool msn_map(void *ctx, const tern_imap_seqset *m, tern_arena *a, tern_uid_set *out)
{
    (void)ctx;
    tern_uid_range *r = tern_arena_alloc(a, m->n * sizeof(*r));
    for (size_t i = 0; i < m->n; i++) {
        r[i].first = m->ranges[i].first * 10;
        r[i].last = m->ranges[i].last == UINT32_MAX ? UINT32_MAX : m->ranges[i].last * 10;
    }
    out->ranges = r;
    out->n = m->n;
    return true;
}

static void test_search(void **st)
{
    (void)st;
    tern_arena a;
    tern_arena_init(&a, 4096);
    const char *q = "RETURN (MIN COUNT) CHARSET UTF-8 OR SEEN (FROM \"bob\" NOT DELETED) 2:4 "
                    "UID 5,7:* ON 1-Feb-2024 HEADER X-Foo {3}\r\nbar MODSEQ 7";
    tern_imap_parser ps;
    tern_imap_parser_init(&ps, (const uint8_t *)q, strlen(q), &a, 8);
    tern_imap_seqmap map = {msn_map, NULL, NULL, NULL};
    tern_imap_search_opts o;
    tern_search *s;
    assert_true(tern_imap_search(&ps, &map, &o, &s));
    assert_true(o.esearch && o.ret_min && o.ret_count && !o.ret_all);
    assert_string_equal(o.charset, "UTF-8");
    assert_true(o.modseq);
    assert_int_equal(s->kind, TERN_SEARCH_AND);
    assert_int_equal(s->n_children, 6);
    assert_int_equal(s->children[0].kind, TERN_SEARCH_OR);
    assert_int_equal(s->children[0].children[1].kind, TERN_SEARCH_AND);
    assert_string_equal(s->children[0].children[1].children[0].str, "bob");
    assert_int_equal(s->children[1].kind, TERN_SEARCH_UID);
    assert_int_equal(s->children[1].uids.ranges[0].first, 20);
    assert_int_equal(s->children[1].uids.ranges[0].last, 40);
    assert_int_equal(s->children[2].uids.ranges[1].last, UINT32_MAX);
    assert_int_equal(s->children[3].kind, TERN_SEARCH_AND);
    assert_int_equal(s->children[3].children[0].date, 1706745600);
    assert_string_equal(s->children[4].field, "X-Foo");
    assert_string_equal(s->children[4].str, "bar");
    assert_int_equal(s->children[5].num, 7);

    /* Depth cap, bad keys */
    const char *deep = "((((((((((SEEN))))))))))";
    tern_imap_parser_init(&ps, (const uint8_t *)deep, strlen(deep), &a, 8);
    assert_false(tern_imap_search(&ps, &map, &o, &s));
    assert_true(ps.depth_error);
    const char *bad = "FROB 1";
    tern_imap_parser_init(&ps, (const uint8_t *)bad, strlen(bad), &a, 8);
    assert_false(tern_imap_search(&ps, &map, &o, &s));
    tern_arena_free(&a);
}

static bool recent_map(void *ctx, tern_arena *a, tern_uid_set *out)
{
    tern_uid_range *r = tern_arena_alloc(a, 2 * sizeof(*r));
    (void)ctx;
    r[0].first = 3;
    r[0].last = 5;
    r[1].first = r[1].last = 9;
    out->ranges = r;
    out->n = 2;
    return true;
}

/* RECENT, NEW and OLD take the session's \Recent UIDs from the map, fed
 * one byte more at a time (the parser must not read past what it has). */
static void test_search_recent(void **st)
{
    (void)st;
    tern_arena a;
    tern_arena_init(&a, 4096);
    tern_imap_seqmap map = {msn_map, NULL, NULL, recent_map};
    tern_imap_seqmap none = {msn_map, NULL, NULL, NULL};
    tern_imap_parser ps;
    tern_imap_search_opts o;
    tern_search *s;
    const char *q = "RECENT NEW OLD";
    for (size_t n = 0; n < strlen(q); n++) {
        tern_imap_parser_init(&ps, (const uint8_t *)q, n, &a, 8);
        tern_search *part = NULL;
        /* A prefix is either a shorter valid search or an error, never a read past n. */
        if (tern_imap_search(&ps, &map, &o, &part))
            assert_true(ps.p <= (const char *)q + n);
    }
    tern_imap_parser_init(&ps, (const uint8_t *)q, strlen(q), &a, 8);
    assert_true(tern_imap_search(&ps, &map, &o, &s));
    assert_int_equal(s->kind, TERN_SEARCH_AND);
    assert_int_equal(s->n_children, 3);
    const tern_search *r = &s->children[0];
    assert_int_equal(r->kind, TERN_SEARCH_UID);
    assert_int_equal(r->uids.n, 2);
    assert_int_equal(r->uids.ranges[0].first, 3);
    assert_int_equal(r->uids.ranges[0].last, 5);
    assert_int_equal(r->uids.ranges[1].first, 9);
    const tern_search *nw = &s->children[1];
    assert_int_equal(nw->kind, TERN_SEARCH_AND);
    assert_int_equal(nw->n_children, 2);
    assert_int_equal(nw->children[0].kind, TERN_SEARCH_UID);
    assert_int_equal(nw->children[0].uids.n, 2);
    assert_int_equal(nw->children[1].kind, TERN_SEARCH_FLAGS_UNSET);
    assert_int_equal(nw->children[1].flags, TERN_FLAG_SEEN);
    const tern_search *old = &s->children[2];
    assert_int_equal(old->kind, TERN_SEARCH_NOT);
    assert_int_equal(old->n_children, 1);
    assert_int_equal(old->children[0].kind, TERN_SEARCH_UID);
    assert_int_equal(old->children[0].uids.n, 2);

    /* Without a map nothing is recent: RECENT is the empty set, OLD all. */
    tern_imap_parser_init(&ps, (const uint8_t *)"recent", 6, &a, 8);
    assert_true(tern_imap_search(&ps, &none, &o, &s));
    assert_int_equal(s->kind, TERN_SEARCH_UID);
    assert_int_equal(s->uids.n, 0);
    tern_imap_parser_init(&ps, (const uint8_t *)"OLD", 3, &a, 8);
    assert_true(tern_imap_search(&ps, &none, &o, &s));
    assert_int_equal(s->kind, TERN_SEARCH_NOT);
    assert_int_equal(s->children[0].uids.n, 0);
    tern_arena_free(&a);
}

static void test_fetch(void **st)
{
    (void)st;
    tern_arena a;
    tern_arena_init(&a, 4096);
    const char *q = "(UID FLAGS BODY.PEEK[HEADER.FIELDS (Subject \"From\")]<0.100> BODY[1.2.MIME] "
                    "BINARY[2] RFC822.SIZE BODY[]) (CHANGEDSINCE 12 VANISHED)";
    tern_imap_parser ps;
    tern_imap_parser_init(&ps, (const uint8_t *)q, strlen(q), &a, 8);
    tern_imap_fetch f;
    assert_true(tern_imap_fetch_atts(&ps, &f));
    assert_int_equal(f.n, 7);
    assert_int_equal(f.atts[2].kind, TERN_IMAP_FA_SECTION);
    assert_true(f.atts[2].peek);
    assert_int_equal(f.atts[2].sec, TERN_IMAP_SEC_HEADER_FIELDS);
    assert_int_equal(f.atts[2].n_fields, 2);
    assert_string_equal(f.atts[2].fields[1], "From");
    assert_true(f.atts[2].has_partial);
    assert_int_equal(f.atts[2].partial_len, 100);
    assert_string_equal(f.atts[2].name, "BODY[HEADER.FIELDS (Subject \"From\")]");
    assert_int_equal(f.atts[3].n_part, 2);
    assert_int_equal(f.atts[3].sec, TERN_IMAP_SEC_MIME);
    assert_true(f.atts[4].binary);
    assert_int_equal(f.atts[6].sec, TERN_IMAP_SEC_ALL);
    assert_true(f.changedsince && f.vanished);
    assert_int_equal(f.changedsince_modseq, 12);

    const char *m = "FAST";
    tern_imap_parser_init(&ps, (const uint8_t *)m, strlen(m), &a, 8);
    assert_true(tern_imap_fetch_atts(&ps, &f));
    assert_int_equal(f.n, 3);
    const char *bad[] = {"(UID", "BODY[HEADER", "BODY[]<1.0>", "(FAST)", "NOPE", "UID junk"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        tern_imap_parser_init(&ps, (const uint8_t *)bad[i], strlen(bad[i]), &a, 8);
        assert_false(tern_imap_fetch_atts(&ps, &f));
    }
    tern_arena_free(&a);
}

static void test_tokens(void **st)
{
    (void)st;
    tern_arena a;
    tern_arena_init(&a, 4096);
    const char *q = "a1 login \"al\\\"ice\" {3}\r\npw!";
    tern_imap_parser ps;
    tern_imap_parser_init(&ps, (const uint8_t *)q, strlen(q), &a, 8);
    tern_imap_slice tag, name;
    assert_true(tern_imap_tag_command(&ps, &tag, &name));
    assert_int_equal(name.len, 5);
    char *u, *p;
    assert_true(tern_imap_sp(&ps));
    assert_true(tern_imap_astring(&ps, &u, NULL));
    assert_string_equal(u, "al\"ice");
    assert_true(tern_imap_sp(&ps));
    assert_true(tern_imap_astring(&ps, &p, NULL));
    assert_string_equal(p, "pw!");
    assert_true(tern_imap_at_end(&ps));
    /* short literal */
    const char *s2 = "{9}\r\nabc";
    tern_imap_parser_init(&ps, (const uint8_t *)s2, strlen(s2), &a, 8);
    assert_false(tern_imap_astring(&ps, &u, NULL));

    const char *fl = "(\\Seen $Forwarded \\Deleted foo)";
    tern_imap_parser_init(&ps, (const uint8_t *)fl, strlen(fl), &a, 8);
    tern_imap_flags f;
    assert_true(tern_imap_flag_list(&ps, &f, false));
    assert_int_equal(f.flags, TERN_FLAG_SEEN | TERN_FLAG_DELETED);
    assert_int_equal(f.n_keywords, 2);

    const char *dt = "\" 1-Jan-2024 10:00:00 +0100\"";
    tern_imap_parser_init(&ps, (const uint8_t *)dt, strlen(dt), &a, 8);
    int64_t t;
    assert_true(tern_imap_date_time(&ps, &t));
    assert_int_equal(t, 1704099600); /* 09:00 UTC */

    const char *ss = "1:3,*,7:5";
    tern_imap_parser_init(&ps, (const uint8_t *)ss, strlen(ss), &a, 8);
    tern_imap_seqset set;
    assert_true(tern_imap_parse_seqset(&ps, &set));
    assert_int_equal(set.n, 3);
    assert_int_equal(set.ranges[1].first, UINT32_MAX);
    assert_int_equal(set.ranges[2].first, 5);
    const char *zero = "0:3";
    tern_imap_parser_init(&ps, (const uint8_t *)zero, strlen(zero), &a, 8);
    assert_false(tern_imap_parse_seqset(&ps, &set));
    tern_arena_free(&a);
}

static void test_mutf7(void **st)
{
    (void)st;
    tern_arena a;
    tern_arena_init(&a, 4096);
    char *o, *back;
    assert_true(tern_imap_mutf7_encode("Entw\xc3\xbc" "rfe & Co", &a, &o));
    assert_string_equal(o, "Entw&APw-rfe &- Co");
    assert_true(tern_imap_mutf7_decode(o, &a, &back));
    assert_string_equal(back, "Entw\xc3\xbc" "rfe & Co");
    assert_true(tern_imap_mutf7_encode("\xe5\x8f\xb0\xe5\x8c\x97", &a, &o));
    assert_string_equal(o, "&U,BTFw-");
    assert_true(tern_imap_mutf7_encode("\xf0\x9f\x98\x80", &a, &back));
    assert_true(tern_imap_mutf7_decode(back, &a, &o));
    assert_string_equal(o, "\xf0\x9f\x98\x80");
    assert_false(tern_imap_mutf7_decode("&AGE-", &a, &o)); /* 'a' must be direct */
    assert_false(tern_imap_mutf7_decode("&U,BTFw", &a, &o));
    assert_false(tern_imap_mutf7_encode("\xc3", &a, &o));
    tern_arena_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reader_simple),      cmocka_unit_test(test_reader_literals),
        cmocka_unit_test(test_reader_refuse_sync), cmocka_unit_test(test_reader_nonsync_too_big),
        cmocka_unit_test(test_reader_too_long),    cmocka_unit_test(test_search),
        cmocka_unit_test(test_search_recent),
        cmocka_unit_test(test_fetch),              cmocka_unit_test(test_tokens),
        cmocka_unit_test(test_mutf7),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
