/* Unit tests for storage/index.c, index_body.c and search_sql.c: the
 * header index of real and hand-made messages, the search compiler run
 * against a real in-memory SQLite database laid out as storage/schema.md
 * says (checking the UIDs returned, and that the C evaluator agrees), and
 * the body matcher fed whole, byte by byte and in random chunks. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/index.h"
#include "storage/store.h"

/* ---- helpers ------------------------------------------------------------ */

static uint8_t *read_file(const char *path, size_t *len_r)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, len = 0;
    uint8_t *d = malloc(cap);
    size_t n;
    while ((n = fread(d + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap)
            d = realloc(d, cap *= 2);
    }
    fclose(f);
    *len_r = len;
    return d;
}

typedef void (*file_fn)(const char *path, const uint8_t *data, size_t len, void *ctx);

/* Calls fn for every file of $TERN_CORPUS/mime/<sub>; returns how many. */
static int for_corpus(const char *sub, file_fn fn, void *ctx)
{
    const char *root = getenv("TERN_CORPUS");
    if (!root)
        return 0;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/mime/%s", root, sub);
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        size_t len;
        uint8_t *data = read_file(path, &len);
        if (!data)
            continue;
        fn(path, data, len, ctx);
        free(data);
        n++;
    }
    closedir(d);
    return n;
}

static const char *field(const tern_msg_index *ix, const char *name)
{
    for (size_t i = 0; i < ix->n_fields; i++)
        if (strcmp(ix->fields[i].name, name) == 0)
            return ix->fields[i].value;
    return NULL;
}

/* ---- tern_msg_index_build ------------------------------------------------ */

static void test_index_basic(void **state)
{
    const char *m =
        "Return-Path: <a@example.com>\r\n"
        "Date: Tue, 1 Jul 2003 10:52:37 +0200\r\n"
        "From: =?ISO-8859-1?Q?Keld_J=F8rn_Simonsen?= <keld@example.dk>\r\n"
        "To: Bob <bob@example.com>,\r\n"
        "\tCarol <carol@example.com>\r\n"
        "To: dave@example.com\r\n"
        "CC: =?utf-8?B?w6lsw6hvbg==?= <e@example.com>\r\n"
        "Subject: Re: [list] Fwd: =?utf-8?q?Caf=C3=A9?=\r\n"
        "  =?utf-8?q?_cr=C3=A8me?= (fwd)\r\n"
        "Message-ID: <abc@x.example>\r\n"
        "In-Reply-To: <p2@x.example> (Bob's message of Monday)\r\n"
        "References: <p0@x.example>\r\n"
        " <p1@x.example> <p0@x.example>\r\n"
        "X-Weird :  spaced name  \r\n"
        "\r\n"
        "Body line 1\r\n"
        "Body line 2";
    tern_arena a;
    tern_arena_init(&a, 4096);
    tern_msg_index ix;
    assert_int_equal(tern_msg_index_build(&a, (const uint8_t *)m, strlen(m), &ix), 0);
    assert_int_equal(ix.date, 1057049557);
    assert_string_equal(ix.from, "Keld J\xc3\xb8rn Simonsen <keld@example.dk>");
    assert_string_equal(ix.to, "Bob <bob@example.com>, Carol <carol@example.com>, dave@example.com");
    assert_string_equal(ix.cc, "\xc3\xa9l\xc3\xa8on <e@example.com>");
    assert_string_equal(ix.subject, "Re: [list] Fwd: Caf\xc3\xa9 cr\xc3\xa8me (fwd)");
    assert_string_equal(ix.base_subject, "caf\xc3\xa9 cr\xc3\xa8me");
    assert_string_equal(ix.message_id, "abc@x.example");
    assert_string_equal(ix.in_reply_to, "p2@x.example");
    assert_int_equal(ix.n_references, 3);
    assert_string_equal(ix.references[0], "p0@x.example");
    assert_string_equal(ix.references[1], "p1@x.example");
    assert_string_equal(ix.references[2], "p2@x.example");
    assert_null(ix.bcc);
    assert_null(ix.sender);
    assert_string_equal(field(&ix, "x-weird"), "spaced name");
    assert_string_equal(field(&ix, "return-path"), "<a@example.com>");
    const char *body = strstr(m, "\r\n\r\n") + 4;
    assert_int_equal(ix.header_size, (uint64_t)(body - m));
    assert_int_equal(ix.body_offset, ix.header_size);
    assert_int_equal(ix.lines, 17);
    assert_int_equal(tern_index_contains(ix.subject, strlen(ix.subject), "CAF\xc3\xa9", 5), 1);
    tern_arena_free(&a);
}

static void test_index_odd(void **state)
{
    tern_arena a;
    tern_arena_init(&a, 4096);
    tern_msg_index ix;
    /* empty message, no header at all, bare LF, NULs and 8-bit */
    assert_int_equal(tern_msg_index_build(&a, NULL, 0, &ix), 0);
    assert_int_equal(ix.n_fields, 0);
    assert_int_equal(ix.lines, 0);
    assert_string_equal(ix.base_subject, "");
    assert_null(ix.subject);

    static const uint8_t m2[] = "Subject: a\0b \xe9t\xc3\xa9\n\xff\xfe garbage line\n"
                                "Message-Id: bare@id.example\nDate: 32 Jan 2020 00:00 GMT\n\nbody\n";
    assert_int_equal(tern_msg_index_build(&a, m2, sizeof m2 - 1, &ix), 0);
    assert_string_equal(ix.subject, "a b \xc3\xa9t\xc3\xa9");
    assert_string_equal(ix.message_id, "bare@id.example");
    assert_int_equal(ix.date, 0);
    assert_int_equal(ix.n_fields, 3);
    assert_int_equal(ix.lines, 6);

    /* only a header, no blank line, no final newline */
    const char *m3 = "Subject: [PATCH] [v2] re: RE:Fw: x";
    assert_int_equal(tern_msg_index_build(&a, (const uint8_t *)m3, strlen(m3), &ix), 0);
    assert_int_equal(ix.header_size, strlen(m3));
    assert_string_equal(ix.base_subject, "x");
    assert_int_equal(ix.lines, 1);

    /* a blob alone stays; "[fwd: ...]" unwraps */
    const char *m4 = "Subject: [Fwd: Re: [x] hi (fwd)]\r\n\r\n";
    assert_int_equal(tern_msg_index_build(&a, (const uint8_t *)m4, strlen(m4), &ix), 0);
    assert_string_equal(ix.base_subject, "hi");
    const char *m5 = "Subject: [only a blob]\r\n\r\n";
    assert_int_equal(tern_msg_index_build(&a, (const uint8_t *)m5, strlen(m5), &ix), 0);
    assert_string_equal(ix.base_subject, "[only a blob]");
    tern_arena_free(&a);
}

static void index_corpus_file(const char *path, const uint8_t *data, size_t len, void *ctx)
{
    int sane = *(int *)ctx;
    tern_arena a;
    tern_arena_init(&a, 4096);
    tern_msg_index ix;
    assert_int_equal(tern_msg_index_build(&a, data, len, &ix), 0);
    assert_true(ix.header_size <= len);
    for (size_t i = 0; i < ix.n_fields; i++) {
        assert_non_null(ix.fields[i].name);
        assert_non_null(ix.fields[i].value);
        assert_true(strlen(ix.fields[i].value) <= 8192);
        for (const char *p = ix.fields[i].name; *p; p++)
            assert_false(*p >= 'A' && *p <= 'Z');
    }
    if (sane) {
        if (ix.n_fields == 0 || ix.header_size == 0)
            fail_msg("%s: no header fields", path);
        if (field(&ix, "date") && ix.date == 0 && !strstr(path, "rfc/001"))
            fail_msg("%s: Date not parsed: %s", path, field(&ix, "date"));
        /* the blank line really is where the header says */
        assert_true(ix.header_size >= 2 && data[ix.header_size - 1] == '\n');
    }
    tern_arena_free(&a);
}

static void test_index_corpus(void **state)
{
    int sane = 1;
    int n = for_corpus("rfc", index_corpus_file, &sane);
    n += for_corpus("legacy", index_corpus_file, &sane);
    sane = 0;
    n += for_corpus("malformed", index_corpus_file, &sane);
    if (getenv("TERN_CORPUS"))
        assert_true(n > 50);
}

static void test_contains(void **state)
{
    assert_int_equal(tern_index_contains("Hello World", 11, "wORLD", 5), 1);
    assert_int_equal(tern_index_contains("Hello World", 11, "", 0), 1);
    assert_int_equal(tern_index_contains("Hello", 5, "Hello!", 6), 0);
    assert_int_equal(tern_index_contains("aaab", 4, "aab", 3), 1);
    assert_int_equal(tern_index_contains("\xc3\xa9t\xc3\xa9", 5, "\xc3\xa9T", 3), 1);
    assert_int_equal(tern_index_contains("\xc3\x89T\xc3\x89", 5, "\xc3\xa9T", 3), 0); /* bytes, not Unicode folding */
}

/* ---- search: SQL against SQLite, and the C evaluator --------------------- */

#define AND(...) ((tern_search){.kind = TERN_SEARCH_AND, .children = (const tern_search[]){__VA_ARGS__}, \
                   .n_children = sizeof((const tern_search[]){__VA_ARGS__}) / sizeof(tern_search)})
#define OR(...) ((tern_search){.kind = TERN_SEARCH_OR, .children = (const tern_search[]){__VA_ARGS__}, \
                  .n_children = sizeof((const tern_search[]){__VA_ARGS__}) / sizeof(tern_search)})
#define EMPTY(k) ((tern_search){.kind = TERN_SEARCH_##k})
#define NOT(x) ((tern_search){.kind = TERN_SEARCH_NOT, .children = (const tern_search[]){x}, .n_children = 1})
#define K(...) ((tern_search){.kind = TERN_SEARCH_##__VA_ARGS__})
#define UIDS(...) ((tern_search){.kind = TERN_SEARCH_UID, .uids = {(const tern_uid_range[]){__VA_ARGS__}, \
                    sizeof((const tern_uid_range[]){__VA_ARGS__}) / sizeof(tern_uid_range)}})

typedef struct {
    uint32_t uid;
    unsigned flags;
    const char *keywords[3];
    int64_t internal_date;
    uint64_t modseq;
    const char *msg;
} fixture;

static const fixture fixtures[] = {
    {1, TERN_FLAG_SEEN, {"$Important"}, 1000, 10,
     "From: Alice <alice@example.com>\r\nSubject: Hello world\r\n"
     "Date: Wed, 1 Jan 2020 00:00:00 +0000\r\n\r\nThe quick brown fox\r\n"},
    {2, TERN_FLAG_SEEN | TERN_FLAG_FLAGGED, {0}, 2000, 20,
     "From: Bob <bob@example.com>\r\nSubject: =?utf-8?q?Caf=C3=A9?= 100%_off\r\n"
     "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
     "preamble nothing\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n"
     "Content-Transfer-Encoding: base64\r\n\r\nVGhlIHNlY3JldCBpcyBvdXQ=\r\n"
     "--XX\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n"
     "c2VjcmV0IGltYWdlIGhpZGRlbg==\r\n--XX--\r\nepilogue hidden\r\n"},
    {3, 0, {"Work", "$Later"}, 3000, 30,
     "From: Carol <carol@example.org>\r\nSubject: Re: Hello world\r\nX-Spam: yes\r\n"
     "Date: Thu, 2 Jan 2020 00:00:00 +0000\r\n\r\nthe lazy dog\r\n"},
    {4, TERN_FLAG_DELETED, {0}, 4000, 40,
     "To: dave@example.net\r\nSubject: quoted\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
     "Content-Transfer-Encoding: quoted-printable\r\n\r\nbrown f=\r\nox and caf=E9\r\n"},
    {10, TERN_FLAG_ANSWERED | TERN_FLAG_DRAFT, {0}, 5000, 50,
     "Subject: 50% done_ok\\x\r\nX-Spam: no\r\nDate: Fri, 3 Jan 2020 00:00:00 +0000\r\n\r\n"
     "padding padding padding padding padding padding padding padding padding\r\n"},
};
#define N_FIX (sizeof fixtures / sizeof fixtures[0])

typedef struct {
    sqlite3 *db;
    tern_arena a;
    tern_msg_index ix[N_FIX];
} searchdb;

static void exec(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
        fail_msg("%s: %s", sql, err);
}

static int db_setup(void **state)
{
    searchdb *s = calloc(1, sizeof *s);
    tern_arena_init(&s->a, 8192);
    assert_int_equal(sqlite3_open(":memory:", &s->db), SQLITE_OK);
    exec(s->db,
         "CREATE TABLE messages (id INTEGER PRIMARY KEY, account_id INTEGER, mailbox_id INTEGER,"
         " uid INTEGER, modseq INTEGER, flags INTEGER, internal_date INTEGER, size INTEGER,"
         " email_id TEXT, thread_id TEXT, recent INTEGER, hdr_date INTEGER, subject TEXT,"
         " base_subject TEXT, from_addr TEXT, to_addr TEXT, cc_addr TEXT, bcc_addr TEXT,"
         " message_id TEXT, in_reply_to TEXT, refs TEXT, body_ref TEXT, UNIQUE(mailbox_id, uid));"
         "CREATE TABLE keywords (message INTEGER, keyword TEXT);"
         "CREATE TABLE headers (message INTEGER, name TEXT, value TEXT);");
    sqlite3_stmt *im, *ik, *ih;
    assert_int_equal(sqlite3_prepare_v2(s->db,
        "INSERT INTO messages (id, account_id, mailbox_id, uid, modseq, flags, internal_date,"
        " size, hdr_date, subject, base_subject, from_addr, to_addr)"
        " VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", -1, &im, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(s->db, "INSERT INTO keywords VALUES (?, lower(?))", -1,
                                        &ik, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(s->db, "INSERT INTO headers VALUES (?, ?, ?)", -1, &ih,
                                        NULL), SQLITE_OK);
    for (size_t i = 0; i <= N_FIX; i++) {
        /* The last row is a copy of the first in another mailbox: never returned. */
        const fixture *f = &fixtures[i % N_FIX];
        tern_msg_index *ix = &s->ix[i % N_FIX];
        size_t len = strlen(f->msg);
        assert_int_equal(tern_msg_index_build(&s->a, (const uint8_t *)f->msg, len, ix), 0);
        sqlite3_int64 id = (sqlite3_int64)i + 100;
        sqlite3_bind_int64(im, 1, id);
        sqlite3_bind_int64(im, 2, i < N_FIX ? 1 : 2);
        sqlite3_bind_int64(im, 3, f->uid);
        sqlite3_bind_int64(im, 4, (sqlite3_int64)f->modseq);
        sqlite3_bind_int64(im, 5, f->flags);
        sqlite3_bind_int64(im, 6, f->internal_date);
        sqlite3_bind_int64(im, 7, (sqlite3_int64)len);
        sqlite3_bind_int64(im, 8, ix->date);
        sqlite3_bind_text(im, 9, ix->subject, -1, SQLITE_STATIC);
        sqlite3_bind_text(im, 10, ix->base_subject, -1, SQLITE_STATIC);
        sqlite3_bind_text(im, 11, ix->from, -1, SQLITE_STATIC);
        sqlite3_bind_text(im, 12, ix->to, -1, SQLITE_STATIC);
        assert_int_equal(sqlite3_step(im), SQLITE_DONE);
        sqlite3_reset(im);
        for (size_t k = 0; k < 3 && f->keywords[k]; k++) {
            sqlite3_bind_int64(ik, 1, id);
            sqlite3_bind_text(ik, 2, f->keywords[k], -1, SQLITE_STATIC);
            assert_int_equal(sqlite3_step(ik), SQLITE_DONE);
            sqlite3_reset(ik);
        }
        for (size_t k = 0; k < ix->n_fields; k++) {
            sqlite3_bind_int64(ih, 1, id);
            sqlite3_bind_text(ih, 2, ix->fields[k].name, -1, SQLITE_STATIC);
            sqlite3_bind_text(ih, 3, ix->fields[k].value, -1, SQLITE_STATIC);
            assert_int_equal(sqlite3_step(ih), SQLITE_DONE);
            sqlite3_reset(ih);
        }
    }
    sqlite3_finalize(im);
    sqlite3_finalize(ik);
    sqlite3_finalize(ih);
    *state = s;
    return 0;
}

static int db_teardown(void **state)
{
    searchdb *s = *state;
    sqlite3_close(s->db);
    tern_arena_free(&s->a);
    free(s);
    return 0;
}

static const fixture *fixture_by_uid(uint32_t uid, size_t *i_r)
{
    for (size_t i = 0; i < N_FIX; i++)
        if (fixtures[i].uid == uid) {
            *i_r = i;
            return &fixtures[i];
        }
    return NULL;
}

static tern_search_row row_of(searchdb *s, size_t i)
{
    const fixture *f = &fixtures[i];
    size_t nk = 0;
    while (nk < 3 && f->keywords[nk])
        nk++;
    tern_search_row r = {
        .uid = f->uid, .flags = f->flags, .keywords = f->keywords, .n_keywords = nk,
        .internal_date = f->internal_date, .hdr_date = s->ix[i].date,
        .size = strlen(f->msg), .modseq = f->modseq,
        .fields = s->ix[i].fields, .n_fields = s->ix[i].n_fields,
    };
    return r;
}

/* What a backend does with a candidate when the SQL needs the body. */
static int body_check(const tern_search *q, const tern_sql *sql, searchdb *s, size_t i)
{
    const tern_search *nodes[8];
    unsigned char found[8];
    size_t n = tern_search_body_nodes(q, nodes, 8);
    assert_true(n > 0 && n <= 8);
    const char *msg = fixtures[i].msg;
    for (size_t j = 0; j < n; j++) {
        tern_body_matcher *bm = nodes[j]->kind == TERN_SEARCH_TEXT
                                    ? tern_body_matcher_new_text(nodes[j]->str)
                                    : tern_body_matcher_new(nodes[j]->str);
        assert_non_null(bm);
        tern_body_matcher_feed(bm, (const uint8_t *)msg, strlen(msg));
        found[j] = (unsigned char)tern_body_matcher_found(bm);
        tern_body_matcher_free(bm);
    }
    if (!sql->needs_eval) {
        for (size_t j = 0; j < n; j++)
            if (!found[j])
                return 0;
        return 1;
    }
    tern_search_row r = row_of(s, i);
    r.body_found = found;
    r.n_body = n;
    return tern_search_eval(q, &r);
}

/* Runs `q` through SQL on SQLite (then the body matchers when needed) and
 * through the C evaluator; both must give `want` ("1,3,10"). */
static void check_search(searchdb *s, const tern_search *q, const char *want)
{
    tern_arena a;
    tern_arena_init(&a, 4096);
    tern_sql sql;
    assert_int_equal(tern_search_to_sql(&a, q, TERN_SQL_SQLITE, 2, &sql), 0);
    char *text = tern_arena_printf(&a, "SELECT m.uid FROM messages m WHERE m.mailbox_id = ? AND (%s)"
                                       " ORDER BY m.uid", sql.where);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, text, -1, &st, NULL) != SQLITE_OK)
        fail_msg("%s: %s", text, sqlite3_errmsg(s->db));
    assert_int_equal(sqlite3_bind_parameter_count(st), (int)sql.n_params + 1);
    sqlite3_bind_int64(st, 1, 1);
    for (size_t i = 0; i < sql.n_params; i++)
        sqlite3_bind_text(st, (int)i + 2, sql.params[i], -1, SQLITE_STATIC);
    char got[256] = "", evgot[256] = "";
    while (sqlite3_step(st) == SQLITE_ROW) {
        uint32_t uid = (uint32_t)sqlite3_column_int64(st, 0);
        size_t fi = 0;
        assert_non_null(fixture_by_uid(uid, &fi));
        if (sql.needs_body && !body_check(q, &sql, s, fi))
            continue;
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%u", got[0] ? "," : "", uid);
    }
    sqlite3_finalize(st);
    if (strcmp(got, want) != 0)
        fail_msg("SQL %s [%zu params]: got \"%s\", want \"%s\"", sql.where, sql.n_params, got, want);
    if (!sql.needs_body) {
        for (size_t i = 0; i < N_FIX; i++) {
            tern_search_row r = row_of(s, i);
            if (tern_search_eval(q, &r))
                snprintf(evgot + strlen(evgot), sizeof evgot - strlen(evgot), "%s%u",
                         evgot[0] ? "," : "", fixtures[i].uid);
        }
        if (strcmp(evgot, want) != 0)
            fail_msg("eval of %s: got \"%s\", want \"%s\"", sql.where, evgot, want);
    }
    /* The PostgreSQL text is built the same way; check its numbering. */
    tern_sql pg;
    assert_int_equal(tern_search_to_sql(&a, q, TERN_SQL_POSTGRES, 2, &pg), 0);
    assert_int_equal(pg.n_params, sql.n_params);
    assert_null(strchr(pg.where, '?'));
    if (pg.n_params) {
        char ph[16];
        snprintf(ph, sizeof ph, "$%zu", pg.n_params + 1);
        assert_non_null(strstr(pg.where, ph));
        assert_non_null(strstr(pg.where, "$2"));
    }
    tern_arena_free(&a);
}

static void test_search_sql(void **state)
{
    searchdb *s = *state;
    check_search(s, &K(ALL), "1,2,3,4,10");
    check_search(s, &EMPTY(AND), "1,2,3,4,10");
    check_search(s, &EMPTY(OR), "");
    check_search(s, &UIDS({2, 3}, {10, 10}), "2,3,10");
    check_search(s, &UIDS({4, UINT32_MAX}), "4,10");
    check_search(s, &UIDS({3, 1}), "1,2,3");
    check_search(s, &((tern_search){.kind = TERN_SEARCH_UID}), "");
    check_search(s, &K(FLAGS_SET, .flags = TERN_FLAG_SEEN), "1,2");
    check_search(s, &K(FLAGS_SET, .flags = TERN_FLAG_SEEN | TERN_FLAG_FLAGGED), "2");
    check_search(s, &K(FLAGS_UNSET, .flags = TERN_FLAG_SEEN), "3,4,10");
    check_search(s, &K(FLAGS_UNSET, .flags = TERN_FLAG_DELETED | TERN_FLAG_DRAFT), "1,2,3");
    check_search(s, &K(KEYWORD, .str = "$important"), "1");
    check_search(s, &K(KEYWORD, .str = "WORK"), "3");
    check_search(s, &K(UNKEYWORD, .str = "work"), "1,2,4,10");
    check_search(s, &K(BEFORE, .date = 3000), "1,2");
    check_search(s, &K(SINCE, .date = 3000), "3,4,10");
    check_search(s, &K(SENTSINCE, .date = 1577923200), "3,10");   /* 2 Jan 2020 */
    check_search(s, &K(SENTBEFORE, .date = 1577923200), "1,2,4"); /* no Date: internal date */
    check_search(s, &K(LARGER, .num = 150), "2,4");
    check_search(s, &K(SMALLER, .num = 150), "1,3,10");
    check_search(s, &K(MODSEQ, .num = 30), "3,4,10");
    check_search(s, &K(HEADER, .field = "Subject", .str = "hello"), "1,3");
    check_search(s, &K(HEADER, .field = "SUBJECT", .str = "caf\xc3\xa9"), "2");
    check_search(s, &K(HEADER, .field = "subject", .str = "100%_"), "2");
    check_search(s, &K(HEADER, .field = "subject", .str = "0% done_"), "10");
    check_search(s, &K(HEADER, .field = "subject", .str = "0%_done"), "");
    check_search(s, &K(HEADER, .field = "subject", .str = "ok\\x"), "10");
    check_search(s, &K(HEADER, .field = "subject", .str = "o_\\"), "");
    check_search(s, &K(HEADER, .field = "x-spam", .str = ""), "3,10");
    check_search(s, &K(HEADER, .field = "from", .str = "EXAMPLE.COM"), "1,2");
    check_search(s, &K(HEADER, .field = "to", .str = "dave"), "4");
    check_search(s, &K(HEADER, .field = "x-none", .str = ""), "");
    check_search(s, &NOT(K(HEADER, .field = "x-spam", .str = "")), "1,2,4");
    check_search(s, &OR(K(FLAGS_SET, .flags = TERN_FLAG_DELETED), K(KEYWORD, .str = "$later")), "3,4");
    check_search(s, &AND(K(FLAGS_SET, .flags = TERN_FLAG_SEEN), NOT(K(HEADER, .field = "subject", .str = "caf"))), "1");
    check_search(s, &NOT(OR(UIDS({1, 2}), AND(K(SINCE, .date = 4000), K(SMALLER, .num = 200)))), "3");
    check_search(s, &NOT(NOT(UIDS({10, 10}))), "10");
    check_search(s, &OR(EMPTY(AND), UIDS({1, 1})), "1,2,3,4,10");
}

static void test_search_body(void **state)
{
    searchdb *s = *state;
    check_search(s, &K(BODY, .str = "QUICK brown"), "1");
    check_search(s, &K(BODY, .str = "secret is out"), "2");    /* base64 text part */
    check_search(s, &K(BODY, .str = "secret image"), "");      /* image part skipped */
    check_search(s, &K(BODY, .str = "preamble"), "");
    check_search(s, &K(BODY, .str = "epilogue"), "");
    check_search(s, &K(BODY, .str = "brown fox"), "1,4");      /* QP soft break */
    check_search(s, &K(BODY, .str = "CAF\xc3\xa9"), "4");     /* Latin-1 to UTF-8 */
    check_search(s, &K(BODY, .str = "alice"), "");
    check_search(s, &K(BODY, .str = ""), "1,2,3,4,10");
    check_search(s, &K(TEXT, .str = "alice"), "1");
    check_search(s, &K(TEXT, .str = "subject: caf\xc3\xa9"), "2");
    check_search(s, &K(TEXT, .str = "fox"), "1,4");
    check_search(s, &NOT(K(BODY, .str = "fox")), "2,3,10");
    check_search(s, &OR(K(BODY, .str = "lazy"), K(FLAGS_SET, .flags = TERN_FLAG_FLAGGED)), "2,3");
    check_search(s, &NOT(K(TEXT, .str = "hello")), "2,4,10");
    check_search(s, &AND(K(TEXT, .str = "hello"), NOT(K(BODY, .str = "quick"))), "3");
    check_search(s, &AND(K(BODY, .str = "fox"), K(BODY, .str = "caf"), UIDS({1, 4})), "4");
    check_search(s, &NOT(AND(K(BODY, .str = "fox"), K(FLAGS_SET, .flags = TERN_FLAG_SEEN))), "2,3,4,10");
}

/* ---- the body matcher on its own ------------------------------------------ */

static int match_chunked(const uint8_t *d, size_t len, const char *needle, bool text, int mode,
                         unsigned seed)
{
    tern_body_matcher *bm = text ? tern_body_matcher_new_text(needle) : tern_body_matcher_new(needle);
    assert_non_null(bm);
    size_t off = 0;
    while (off < len) {
        size_t n = mode == 0 ? len - off : mode == 1 ? 1 : 1 + (size_t)(rand_r(&seed) % 97);
        if (n > len - off)
            n = len - off;
        tern_body_matcher_feed(bm, d + off, n);
        off += n;
    }
    int r = tern_body_matcher_found(bm);
    tern_body_matcher_free(bm);
    return r;
}

static int match_all_ways(const uint8_t *d, size_t len, const char *needle, bool text)
{
    int whole = match_chunked(d, len, needle, text, 0, 0);
    if (match_chunked(d, len, needle, text, 1, 0) != whole)
        fail_msg("byte by byte differs for \"%s\"", needle);
    for (unsigned seed = 1; seed < 4; seed++)
        if (match_chunked(d, len, needle, text, 2, seed) != whole)
            fail_msg("random chunks (seed %u) differ for \"%s\"", seed, needle);
    return whole;
}

#define MATCH(msg, needle) match_all_ways((const uint8_t *)(msg), strlen(msg), needle, false)

static void test_body_matcher(void **state)
{
    const char *nested =
        "Content-Type: multipart/mixed; boundary=outer\r\n\r\n"
        "--outer\r\nContent-Type: multipart/alternative; boundary=\"in ner\"\r\n\r\n"
        "--in ner\r\nContent-Type: text/plain\r\n\r\nplain alternative\r\n"
        "--in ner\r\nContent-Type: text/html; charset=windows-1252\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n<p>na=EFve =93quotes=94</p>\r\n"
        "--outer\r\nContent-Type: message/rfc822\r\n\r\n"
        "Subject: inner\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\nZW1iZWRkZWQgd29yZHM=\r\n"
        "--outer\r\nContent-Type: application/octet-stream\r\n\r\nbinary words\r\n"
        "--outer--\r\nafter the end\r\n";
    assert_int_equal(MATCH(nested, "PLAIN alternative"), 1);
    assert_int_equal(MATCH(nested, "na\xc3\xafve \xe2\x80\x9cquotes\xe2\x80\x9d"), 1);
    assert_int_equal(MATCH(nested, "embedded words"), 1);
    assert_int_equal(MATCH(nested, "binary"), 0);
    assert_int_equal(MATCH(nested, "after the end"), 0);
    assert_int_equal(MATCH(nested, "outer"), 0);
    assert_int_equal(MATCH(nested, "multipart"), 0);      /* the header is not the body */
    assert_int_equal(match_all_ways((const uint8_t *)nested, strlen(nested), "multipart", true), 1);
    assert_int_equal(MATCH(nested, "alternative\n"), 0); /* never across a part's end */

    /* Bare LF, QP soft breaks and escapes split by the chunking, no final newline. */
    const char *lf = "Content-Transfer-Encoding: quoted-printable\n\nab=\ncd =3D=\n=3Def";
    assert_int_equal(MATCH(lf, "abcd ==ef"), 1);
    /* Fed only the body (the caller skipped the header): taken as text. */
    assert_int_equal(MATCH("Hello there, this is only a body\r\n", "only a BODY"), 1);
    assert_int_equal(MATCH("\r\nempty header then body", "then body"), 1);
    /* Unlabelled 8-bit: UTF-8 where valid, Latin-1 elsewhere */
    assert_int_equal(MATCH("Subject: x\r\n\r\ncaf\xe9 cr\xc3\xa8me", "caf\xc3\xa9 cr\xc3\xa8me"), 1);
    /* KMP with a self-overlapping needle */
    assert_int_equal(MATCH("Subject: x\r\n\r\naabaabaaab", "aabaaab"), 1);
    assert_int_equal(MATCH("Subject: x\r\n\r\naabaabaab", "aabaaab"), 0);
    /* A multipart whose boundary is a prefix of a content line. */
    const char *pre = "Content-Type: multipart/mixed; boundary=ab\n\n--ab\n\n--abc is text\n--ab--\n";
    assert_int_equal(MATCH(pre, "--abc is text"), 1);
    /* ISO-2022-JP, stateful, fed in pieces: "\xe6\x97\xa5\xe6\x9c\xac" (Nihon) */
    const char *jp = "Content-Type: text/plain; charset=ISO-2022-JP\r\n\r\n\x1b$BF|K\\\x1b(B\r\n";
    assert_int_equal(MATCH(jp, "\xe6\x97\xa5\xe6\x9c\xac"), 1);
    /* multipart/digest: parts default to message/rfc822, but the attached
     * messages' own bodies default to text/plain (found comparing with
     * Dovecot on the corpus' rfc-004). */
    const char *digest =
        "Content-Type: multipart/digest; boundary=d\r\n\r\n"
        "--d\r\n\r\nFrom: a\r\nSubject: one\r\n\r\nfirst digested body\r\n"
        "--d\r\n\r\nFrom: b\r\nSubject: two\r\n\r\nsecond digested body\r\n"
        "--d--\r\n";
    assert_int_equal(MATCH(digest, "first digested"), 1);
    assert_int_equal(MATCH(digest, "second digested"), 1);
    /* Shift_JIS split in the middle of a character by a chunk */
    const char *sj = "Content-Type: text/plain; charset=shift_jis\r\n\r\n\x93\xfa\x96\x7b\r\n";
    assert_int_equal(MATCH(sj, "\xe6\x97\xa5\xe6\x9c\xac"), 1);
}

typedef struct {
    int files;
    int found;
} corpus_stats;

static void body_corpus_file(const char *path, const uint8_t *data, size_t len, void *ctx)
{
    corpus_stats *st = ctx;
    static const char *const needles[] = {"the", "hasen", "Fr\xc3\xb6sche", "test message",
                                          "=", "--", "\xc3\xbc", "x"};
    st->files++;
    for (size_t i = 0; i < sizeof needles / sizeof needles[0]; i++) {
        st->found += match_all_ways(data, len, needles[i], false);
        match_all_ways(data, len, needles[i], true);
    }
    /* Feeding from the body offset must not crash either. */
    tern_arena a;
    tern_arena_init(&a, 4096);
    tern_msg_index ix;
    assert_int_equal(tern_msg_index_build(&a, data, len, &ix), 0);
    match_all_ways(data + ix.body_offset, len - ix.body_offset, "the", false);
    tern_arena_free(&a);
}

static void test_body_corpus(void **state)
{
    corpus_stats st = {0, 0};
    for_corpus("rfc", body_corpus_file, &st);
    for_corpus("legacy", body_corpus_file, &st);
    for_corpus("malformed", body_corpus_file, &st);
    if (getenv("TERN_CORPUS")) {
        assert_true(st.files > 50);
        assert_true(st.found > st.files);
    }
}

/* A German fable in the legacy corpus, in Latin-1 QP or base64 depending
 * on the mailer: the decoded text must be found in each. */
static void fable_file(const char *path, const uint8_t *data, size_t len, void *ctx)
{
    int *n = ctx;
    tern_arena a;
    tern_arena_init(&a, 4096);
    tern_msg_index ix;
    assert_int_equal(tern_msg_index_build(&a, data, len, &ix), 0);
    if (ix.subject && strstr(ix.subject, "Hasen")) {
        if (!match_all_ways(data, len, "die hasen", true))
            fail_msg("%s: TEXT does not find the subject", path);
        if (!match_all_ways(data, len, "fr\xc3\xb6sche", false))
            n[1]++, printf("no body match: %s\n", path);
        else if (!match_all_ways(data, len, "klagten", false))
            fail_msg("%s: half the body found", path);
        n[0]++;
    }
    tern_arena_free(&a);
}

static void test_body_corpus_fable(void **state)
{
    int n[2] = {0, 0}; /* fables, fables whose body was not found */
    for_corpus("legacy", fable_file, n);
    printf("fables %d, body not found in %d\n", n[0], n[1]);
    if (getenv("TERN_CORPUS"))
        assert_true(n[0] > 10 && n[1] <= 1); /* 034.eml is broken UTF-7 */
}

static void test_search_sql_text(void **state)
{
    tern_arena a;
    tern_arena_init(&a, 4096);
    tern_sql sql;
    const tern_search q = AND(K(HEADER, .field = "X-List", .str = "50%"), K(KEYWORD, .str = "X"),
                              K(LARGER, .num = 7));
    assert_int_equal(tern_search_to_sql(&a, &q, TERN_SQL_POSTGRES, 2, &sql), 0);
    assert_string_equal(sql.where,
        "(EXISTS (SELECT 1 FROM headers h WHERE h.message = m.id AND h.name = $2 AND h.value"
        " ILIKE $3 ESCAPE '\\') AND EXISTS (SELECT 1 FROM keywords k WHERE k.message = m.id"
        " AND lower(k.keyword) = $4) AND m.size > $5::bigint)");
    assert_int_equal(sql.n_params, 4);
    assert_string_equal(sql.params[0], "x-list");
    assert_string_equal(sql.params[1], "%50\\%%");
    assert_string_equal(sql.params[2], "x");
    assert_string_equal(sql.params[3], "7");
    /* Subject, From, To, Cc and Bcc are read from the message row. */
    const tern_search q2 = AND(K(HEADER, .field = "Subject", .str = "hi"), K(HEADER, .field = "FROM"));
    assert_int_equal(tern_search_to_sql(&a, &q2, TERN_SQL_SQLITE, 1, &sql), 0);
    assert_string_equal(sql.where, "(m.subject LIKE ? ESCAPE '\\' AND m.from_addr IS NOT NULL)");
    assert_int_equal(sql.n_params, 1);
    assert_int_equal(sql.needs_body, 0);

    assert_int_equal(tern_search_to_sql(&a, &q, TERN_SQL_SQLITE, 2, &sql), 0);
    assert_non_null(strstr(sql.where, "h.value LIKE ? ESCAPE '\\'"));
    assert_non_null(strstr(sql.where, "m.size > CAST(? AS INTEGER)"));

    /* BODY in an AND chain: pre-filtered by 1=1, no evaluator needed */
    const tern_search b1 = AND(K(BODY, .str = "fox"), K(FLAGS_SET, .flags = 1));
    assert_int_equal(tern_search_to_sql(&a, &b1, TERN_SQL_SQLITE, 1, &sql), 0);
    assert_int_equal(sql.needs_body, 1);
    assert_int_equal(sql.needs_eval, 0);
    /* under NOT or OR: the evaluator decides */
    const tern_search b2 = NOT(K(BODY, .str = "fox"));
    assert_int_equal(tern_search_to_sql(&a, &b2, TERN_SQL_SQLITE, 1, &sql), 0);
    assert_int_equal(sql.needs_eval, 1);
    assert_string_equal(sql.where, "NOT (1=0)");
    const tern_search b3 = OR(K(TEXT, .str = "fox"), UIDS({1, 1}));
    assert_int_equal(tern_search_to_sql(&a, &b3, TERN_SQL_SQLITE, 1, &sql), 0);
    assert_int_equal(sql.needs_eval, 1);
    const tern_search *nodes[4];
    assert_int_equal(tern_search_body_nodes(&b3, nodes, 4), 1);
    assert_ptr_equal(nodes[0], &b3.children[0]);

    /* too deep */
    tern_search deep[TERN_SEARCH_MAX_DEPTH + 3];
    for (size_t i = 0; i + 1 < sizeof deep / sizeof deep[0]; i++)
        deep[i] = (tern_search){.kind = TERN_SEARCH_NOT, .children = &deep[i + 1], .n_children = 1};
    deep[sizeof deep / sizeof deep[0] - 1] = K(ALL);
    assert_int_equal(tern_search_to_sql(&a, &deep[0], TERN_SQL_SQLITE, 1, &sql), -1);
    assert_int_equal(tern_search_to_sql(&a, &deep[4], TERN_SQL_SQLITE, 1, &sql), 0);
    tern_arena_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_index_basic),
        cmocka_unit_test(test_index_odd),
        cmocka_unit_test(test_index_corpus),
        cmocka_unit_test(test_contains),
        cmocka_unit_test_setup_teardown(test_search_sql, db_setup, db_teardown),
        cmocka_unit_test(test_search_sql_text),
        cmocka_unit_test_setup_teardown(test_search_body, db_setup, db_teardown),
        cmocka_unit_test(test_body_matcher),
        cmocka_unit_test(test_body_corpus),
        cmocka_unit_test(test_body_corpus_fable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
