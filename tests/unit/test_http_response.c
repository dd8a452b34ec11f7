/* Unit tests of lib/http_response: URL splitting, the loopback test, and
 * the response parser, every case fed whole, byte by byte and in pieces of
 * 7, which must all agree (status, framing, body, or the same error). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lib/http_response.h"

typedef struct outcome {
    tern_http_resp_status st;
    int status;
    size_t used; /* bytes consumed in total */
    char body[4096];
    size_t body_len;
    char ctype[128];
    const char *why;
    bool conn_close;
} outcome;

/* Feeds s in pieces of `step` (0: whole); eof afterwards if still MORE. */
static void run_step(const char *s, size_t len, size_t step, size_t max_head, size_t max_body,
                     bool no_body, bool eof, outcome *o)
{
    tern_http_resp p;
    tern_http_resp_init(&p, max_head, max_body, no_body);
    memset(o, 0, sizeof(*o));
    if (step == 0)
        step = len ? len : 1;
    tern_http_resp_status st = TERN_HTTP_RESP_MORE;
    size_t off = 0;
    while (off < len && st == TERN_HTTP_RESP_MORE) {
        size_t n = len - off < step ? len - off : step, used = 0;
        st = tern_http_resp_parse(&p, (const uint8_t *)s + off, n, &used);
        assert_true(used <= n);
        if (st == TERN_HTTP_RESP_MORE)
            assert_int_equal(used, n);
        off += used;
    }
    if (st == TERN_HTTP_RESP_MORE && eof)
        st = tern_http_resp_eof(&p);
    o->st = st;
    o->status = p.status;
    o->used = off;
    o->why = p.why;
    o->conn_close = p.conn_close;
    snprintf(o->ctype, sizeof(o->ctype), "%s", p.content_type);
    if (p.body_len < sizeof(o->body)) {
        if (p.body_len)
            memcpy(o->body, p.body, p.body_len);
        o->body_len = p.body_len;
    }
    if (p.body != NULL)
        assert_int_equal(p.body[p.body_len], 0);
    tern_http_resp_free(&p);
}

static outcome run(const char *s, size_t max_head, size_t max_body, bool no_body, bool eof)
{
    outcome whole, bytewise, sevens;
    size_t len = strlen(s);
    run_step(s, len, 0, max_head, max_body, no_body, eof, &whole);
    run_step(s, len, 1, max_head, max_body, no_body, eof, &bytewise);
    run_step(s, len, 7, max_head, max_body, no_body, eof, &sevens);
    const outcome *others[2] = {&bytewise, &sevens};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(others[i]->st, whole.st);
        assert_int_equal(others[i]->status, whole.status);
        if (whole.why != NULL)
            assert_string_equal(others[i]->why, whole.why);
        if (whole.st == TERN_HTTP_RESP_ERROR)
            continue; /* where an error stops reading is not defined */
        assert_int_equal(others[i]->used, whole.used);
        assert_int_equal(others[i]->body_len, whole.body_len);
        assert_memory_equal(others[i]->body, whole.body, whole.body_len);
        assert_string_equal(others[i]->ctype, whole.ctype);
    }
    return whole;
}

static void test_content_length(void **state)
{
    (void)state;
    const char *r = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    "Content-Length: 16\r\nConnection: close\r\n\r\n{\"active\":true}\n";
    outcome o = run(r, 0, 0, false, false);
    assert_int_equal(o.st, TERN_HTTP_RESP_DONE);
    assert_int_equal(o.status, 200);
    assert_string_equal(o.ctype, "application/json");
    assert_int_equal(o.body_len, 16);
    assert_memory_equal(o.body, "{\"active\":true}\n", 16);
    assert_true(o.conn_close);
    assert_int_equal(o.used, strlen(r));

    /* Bytes after the response are not consumed. */
    o = run("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", 0, 0, false, false);
    assert_int_equal(o.st, TERN_HTTP_RESP_DONE);
    assert_int_equal(o.body_len, 2);
    assert_int_equal(o.used, strlen("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));

    /* Bare LF line ends, no reason phrase, same Content-Length twice. */
    o = run("HTTP/1.0 401\nContent-Length: 3\ncontent-length:3\n\nnop", 0, 0, false, false);
    assert_int_equal(o.st, TERN_HTTP_RESP_DONE);
    assert_int_equal(o.status, 401);
    assert_memory_equal(o.body, "nop", 3);

    o = run("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0, 0, false, false);
    assert_int_equal(o.st, TERN_HTTP_RESP_DONE);
    assert_int_equal(o.body_len, 0);

    /* Truncated body: MORE, then an error at the end of the connection. */
    o = run("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 0, 0, false, true);
    assert_int_equal(o.st, TERN_HTTP_RESP_ERROR);
    assert_string_equal(o.why, "connection closed before the response was complete");
}

static void test_chunked(void **state)
{
    (void)state;
    const char *r = "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"
                    "5;ext=1\r\nhello\r\n"
                    "1A\r\n, world of chunked bodies!\r\n"
                    "0\r\nX-Trailer: yes\r\n\r\nNEXT";
    outcome o = run(r, 0, 0, false, false);
    assert_int_equal(o.st, TERN_HTTP_RESP_DONE);
    assert_int_equal(o.body_len, 5 + 26);
    assert_memory_equal(o.body, "hello, world of chunked bodies!", 31);
    assert_int_equal(o.used, strlen(r) - 4);

    o = run("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZ\r\n", 0, 0, false, false);
    assert_int_equal(o.st, TERN_HTTP_RESP_ERROR);
    assert_string_equal(o.why, "bad chunk size");
    o = run("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", 0, 0, false,
            false);
    assert_int_equal(o.st, TERN_HTTP_RESP_ERROR);
    assert_string_equal(o.why, "chunk data longer than its size");
    o = run("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", 0, 0,
            false, false);
    assert_int_equal(o.st, TERN_HTTP_RESP_ERROR);
    assert_string_equal(o.why, "chunk size too large");
    /* A chunk bigger than the body limit fails before its data. */
    o = run("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n", 0, 8, false, false);
    assert_int_equal(o.st, TERN_HTTP_RESP_ERROR);
    assert_string_equal(o.why, "body over the size limit");
    o = run("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", 0, 0, false, true);
    assert_int_equal(o.st, TERN_HTTP_RESP_ERROR);
}

static void test_framing(void **state)
{
    (void)state;
    /* No length, not chunked: the body runs to the end of the connection. */
    outcome o = run("HTTP/1.1 200 OK\r\n\r\nuntil close", 0, 0, false, true);
    assert_int_equal(o.st, TERN_HTTP_RESP_DONE);
    assert_memory_equal(o.body, "until close", 11);
    o = run("HTTP/1.1 200 OK\r\n\r\n0123456789", 0, 5, false, true);
    assert_int_equal(o.st, TERN_HTTP_RESP_ERROR);
    assert_string_equal(o.why, "body over the size limit");

    /* Interim responses are skipped. */
    o = run("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", 0, 0,
            false, false);
    assert_int_equal(o.st, TERN_HTTP_RESP_DONE);
    assert_int_equal(o.status, 200);
    assert_int_equal(o.body_len, 1);

    /* No body for 204, 304, or a HEAD request. */
    o = run("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", 0, 0, false, false);
    assert_int_equal(o.st, TERN_HTTP_RESP_DONE);
    assert_int_equal(o.body_len, 0);
    o = run("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 0, 0, true, false);
    assert_int_equal(o.st, TERN_HTTP_RESP_DONE);

    o = run("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n", 0, 5, false, false);
    assert_int_equal(o.st, TERN_HTTP_RESP_ERROR);
    assert_string_equal(o.why, "body over the size limit");
}

static void test_errors(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *why;
    } cases[] = {
        {"HTTP/2 200 OK\r\n\r\n", "bad status line"},
        {"HTTP/1.1 20 OK\r\n\r\n", "bad status line"},
        {"HTTP/1.1 200OK\r\n\r\n", "bad status line"},
        {"SMTP/1.1 200 OK\r\n\r\n", "bad status line"},
        {"HTTP/1.1 099 Low\r\n\r\n", "status code out of range"},
        {"HTTP/1.1 101 Switching\r\n\r\n", "unexpected protocol switch"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
         "both Content-Length and Transfer-Encoding"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
         "transfer-coding other than chunked"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
         "conflicting Content-Length fields"},
        {"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", "bad Content-Length"},
        {"HTTP/1.1 200 OK\r\nX-A: b\r\n  folded\r\n\r\n", "folded header line"},
        {"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", "header line without a name"},
        {"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "bad character in a header name"},
        {"HTTP/1.1 200 OK\r\n: empty\r\n\r\n", "header line without a name"},
        {"HTTP/1.1 200 OK\r\nX-A: b\rc\r\n\r\n", "CR not followed by LF"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        outcome o = run(cases[i].in, 0, 0, false, false);
        if (o.st != TERN_HTTP_RESP_ERROR || strcmp(o.why, cases[i].why) != 0)
            fail_msg("case %zu: st %d why %s", i, o.st, o.why ? o.why : "(none)");
    }
    /* A head over its limit, and a line over the line limit. */
    char big[TERN_HTTP_MAX_LINE + 64];
    memset(big, 'a', sizeof(big));
    memcpy(big, "HTTP/1.1 200 OK\r\nX-Big: ", 24);
    big[sizeof(big) - 1] = '\0';
    outcome o = run(big, 64, 0, false, false);
    assert_int_equal(o.st, TERN_HTTP_RESP_ERROR);
    assert_string_equal(o.why, "response head over the size limit");
    o = run(big, 1 << 20, 0, false, false);
    assert_int_equal(o.st, TERN_HTTP_RESP_ERROR);
    assert_string_equal(o.why, "line too long");

    o = run("", 0, 0, false, true);
    assert_int_equal(o.st, TERN_HTTP_RESP_ERROR);
    assert_string_equal(o.why, "connection closed without a response");
    o = run("HTTP/1.1 200 OK\r\nContent-", 0, 0, false, true);
    assert_string_equal(o.why, "connection closed before the response was complete");

    /* After an error, more input changes nothing. */
    tern_http_resp p;
    tern_http_resp_init(&p, 0, 0, false);
    assert_int_equal(tern_http_resp_parse(&p, (const uint8_t *)"XX\n", 3, NULL),
                     TERN_HTTP_RESP_ERROR);
    size_t used = 99;
    assert_int_equal(tern_http_resp_parse(&p, (const uint8_t *)"HTTP/1.1 200 OK\r\n", 17, &used),
                     TERN_HTTP_RESP_ERROR);
    assert_int_equal(used, 0);
    tern_http_resp_free(&p);
}

static void test_url(void **state)
{
    (void)state;
    tern_http_url u;
    const char *why = NULL;
    assert_int_equal(tern_http_url_parse("https://IdP.Example.com/oauth2/introspect?x=1#frag", &u,
                                         &why), 0);
    assert_true(u.tls);
    assert_string_equal(u.host, "idp.example.com");
    assert_int_equal(u.port, 443);
    assert_false(u.port_given);
    assert_string_equal(u.path, "/oauth2/introspect?x=1");

    assert_int_equal(tern_http_url_parse("HTTP://127.0.0.1:8080", &u, &why), 0);
    assert_false(u.tls);
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 8080);
    assert_true(u.port_given);
    assert_string_equal(u.path, "/");

    assert_int_equal(tern_http_url_parse("https://[::1]:8443/i", &u, &why), 0);
    assert_true(u.host_is_ipv6);
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 8443);
    assert_int_equal(tern_http_url_parse("http://h?q", &u, &why), 0);
    assert_string_equal(u.path, "/?q");

    static const char *const bad[] = {
        "ftp://x/", "https://", "https://user:pw@host/", "https://host:0/", "https://host:65536/",
        "https://host:/", "https://ho st/", "https://[::1/", "https://[zz]/", "https://host/a b",
        "https://host:12x/", "//host/", NULL,
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        why = NULL;
        if (tern_http_url_parse(bad[i], &u, &why) != -1 || why == NULL)
            fail_msg("accepted %s", bad[i] ? bad[i] : "NULL");
    }

    assert_true(tern_http_host_is_loopback("localhost"));
    assert_true(tern_http_host_is_loopback("idp.localhost"));
    assert_true(tern_http_host_is_loopback("127.0.0.1"));
    assert_true(tern_http_host_is_loopback("127.9.8.7"));
    assert_true(tern_http_host_is_loopback("::1"));
    assert_false(tern_http_host_is_loopback("128.0.0.1"));
    assert_false(tern_http_host_is_loopback("localhost.example.com"));
    assert_false(tern_http_host_is_loopback("::2"));
    assert_false(tern_http_host_is_loopback("idp.example.com"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_content_length), cmocka_unit_test(test_chunked),
        cmocka_unit_test(test_framing),        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_url),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
