/* Unit tests of protocols/common/http_client.c against a small HTTP server
 * written here on the same libuv loop (127.0.0.1, an ephemeral port): the
 * request as sent (request line, Host, headers, Content-Length, body),
 * Content-Length, chunked and read-to-close answers, the body limit, the
 * deadline, a refused connection, a name looked up on the pool, a bad URL
 * and https without a CA context reported from the loop (never inside
 * start), and cancel. https itself is covered by the integration tests
 * (tests/integration/test_auth_introspect.py). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "protocols/common/http_client.h"

/* ---- the server ------------------------------------------------------------ */

typedef struct server {
    uv_tcp_t listener;
    int port;
    const char *answer;      /* written once the request is complete; NULL: never answer */
    char request[8192];      /* what the client sent */
    size_t request_len;
    uv_tcp_t peer;
    bool have_peer;
    uv_write_t wreq;
} server;

static void peer_closed(uv_handle_t *h)
{
    (void)h;
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    server *s = h->data;
    buf->base = s->request + s->request_len;
    buf->len = sizeof(s->request) - 1 - s->request_len;
}

static void written(uv_write_t *w, int status)
{
    (void)status;
    server *s = w->data;
    uv_close((uv_handle_t *)&s->peer, peer_closed); /* the end of a read-to-close body */
}

/* Whether the request (head and Content-Length body) is all here. */
static bool request_complete(const server *s)
{
    const char *end = strstr(s->request, "\r\n\r\n");
    if (end == NULL)
        return false;
    size_t head = (size_t)(end + 4 - s->request);
    const char *cl = strstr(s->request, "Content-Length: ");
    size_t body = cl && cl < end ? strtoul(cl + 16, NULL, 10) : 0;
    return s->request_len >= head + body;
}

static void read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    server *s = st->data;
    if (n < 0) {
        if (!uv_is_closing((uv_handle_t *)st))
            uv_close((uv_handle_t *)st, peer_closed);
        return;
    }
    s->request_len += (size_t)n;
    s->request[s->request_len] = '\0';
    if (!request_complete(s) || s->answer == NULL)
        return;
    uv_read_stop(st);
    uv_buf_t b = uv_buf_init((char *)s->answer, (unsigned)strlen(s->answer));
    s->wreq.data = s;
    uv_write(&s->wreq, st, &b, 1, written);
}

static void on_conn(uv_stream_t *l, int status)
{
    server *s = l->data;
    assert_int_equal(status, 0);
    assert_false(s->have_peer); /* one connection per request */
    uv_tcp_init(l->loop, &s->peer);
    s->peer.data = s;
    s->have_peer = true;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&s->peer), 0);
    uv_read_start((uv_stream_t *)&s->peer, alloc_cb, read_cb);
}

static void server_start(uv_loop_t *loop, server *s, const char *answer)
{
    memset(s, 0, sizeof(*s));
    s->answer = answer;
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_bind(&s->listener, (struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&s->listener, 8, on_conn), 0);
    struct sockaddr_in got;
    int len = sizeof(got);
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&got, &len);
    s->port = ntohs(got.sin_port);
}

static void server_stop(server *s)
{
    uv_close((uv_handle_t *)&s->listener, NULL);
    if (s->have_peer && !uv_is_closing((uv_handle_t *)&s->peer))
        uv_close((uv_handle_t *)&s->peer, peer_closed);
}

/* ---- the client side ----------------------------------------------------------- */

typedef struct got {
    int calls;
    int ok, status;
    bool timed_out;
    char body[4096];
    size_t body_len;
    char ctype[128];
    char why[400];
    uint64_t at_ms;
} got;

static void got_cb(void *arg, const tern_http_result *r)
{
    got *g = arg;
    g->calls++;
    g->ok = r->ok;
    g->status = r->status;
    g->timed_out = r->timed_out;
    g->body_len = r->body_len < sizeof(g->body) ? r->body_len : 0;
    memcpy(g->body, r->body, g->body_len);
    snprintf(g->ctype, sizeof(g->ctype), "%s", r->content_type);
    snprintf(g->why, sizeof(g->why), "%s", r->why ? r->why : "");
    g->at_ms = uv_hrtime() / 1000000u;
}

static void run(uv_loop_t *loop, tern_http_request_params *p, got *g)
{
    memset(g, 0, sizeof(*g));
    p->loop = loop;
    tern_http_request *r = tern_http_request_start(p, got_cb, g);
    assert_non_null(r);
    assert_int_equal(g->calls, 0); /* never inside start */
    while (g->calls == 0)
        uv_run(loop, UV_RUN_ONCE);
    uv_run(loop, UV_RUN_NOWAIT);
    assert_int_equal(g->calls, 1);
}

static void drain(uv_loop_t *loop)
{
    while (uv_run(loop, UV_RUN_NOWAIT) != 0)
        ;
    assert_int_equal(uv_loop_close(loop), 0); /* every handle of the client is closed */
}

static void test_post(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    server s;
    server_start(&loop, &s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                            "Content-Length: 15\r\n\r\n{\"active\":true}");
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/oauth2/introspect?v=1", s.port);
    const char *headers[] = {"Authorization: Basic dDpz", "Accept: application/json"};
    tern_http_request_params p = {.url = url, .headers = headers, .n_headers = 2,
                                  .body = "token=abc", .body_len = 9, .timeout_ms = 5000};
    got g;
    run(&loop, &p, &g);
    assert_int_equal(g.ok, 0);
    assert_int_equal(g.status, 200);
    assert_string_equal(g.ctype, "application/json");
    assert_int_equal(g.body_len, 15);
    assert_memory_equal(g.body, "{\"active\":true}", 15);
    char host[64];
    snprintf(host, sizeof(host), "\r\nHost: 127.0.0.1:%d\r\n", s.port);
    assert_true(strncmp(s.request, "POST /oauth2/introspect?v=1 HTTP/1.1\r\n", 38) == 0);
    assert_non_null(strstr(s.request, host));
    assert_non_null(strstr(s.request, "\r\nConnection: close\r\n"));
    assert_non_null(strstr(s.request, "\r\nAuthorization: Basic dDpz\r\n"));
    assert_non_null(strstr(s.request, "\r\nAccept: application/json\r\n"));
    assert_non_null(strstr(s.request, "\r\nContent-Length: 9\r\n\r\ntoken=abc"));
    assert_int_equal(s.request_len, (size_t)(strstr(s.request, "token=abc") - s.request) + 9);
    server_stop(&s);
    drain(&loop);
}

static void test_framings(void **state)
{
    (void)state;
    static const struct {
        const char *answer;
        int ok, status;
        const char *body;
    } cases[] = {
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n"
         "3\r\n:1}\r\n0\r\n\r\n", 0, 200, "{\"a\":1}"},
        {"HTTP/1.0 503 Busy\r\n\r\ntry later", 0, 503, "try later"},
        {"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n", 0, 401, ""},
        {"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", -1, 0, NULL},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", -1, 0, NULL}, /* over max_body */
        {"garbage\r\n\r\n", -1, 0, NULL},
        {"", -1, 0, NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uv_loop_t loop;
        uv_loop_init(&loop);
        server s;
        server_start(&loop, &s, cases[i].answer);
        char url[128];
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/", s.port);
        tern_http_request_params p = {.url = url, .timeout_ms = 5000, .max_body = 1000};
        got g;
        run(&loop, &p, &g);
        if (g.ok != cases[i].ok || g.status != cases[i].status)
            fail_msg("case %zu: ok %d status %d why %s", i, g.ok, g.status, g.why);
        if (cases[i].body != NULL) {
            assert_int_equal(g.body_len, strlen(cases[i].body));
            assert_memory_equal(g.body, cases[i].body, g.body_len);
        } else {
            assert_true(g.why[0] != '\0');
        }
        assert_true(strncmp(s.request, "GET / HTTP/1.1\r\n", 16) == 0);
        assert_null(strstr(s.request, "Content-Length"));
        server_stop(&s);
        drain(&loop);
    }
}

static void test_failures(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    server s;
    got g;
    char url[128];

    /* Never answered: the deadline. */
    server_start(&loop, &s, NULL);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/slow", s.port);
    tern_http_request_params p = {.url = url, .timeout_ms = 300};
    uint64_t t0 = uv_hrtime() / 1000000u;
    run(&loop, &p, &g);
    assert_int_equal(g.ok, -1);
    assert_true(g.timed_out);
    assert_true(g.at_ms - t0 >= 250 && g.at_ms - t0 < 3000);
    assert_non_null(strstr(g.why, "within 300 ms"));
    server_stop(&s);
    uv_run(&loop, UV_RUN_NOWAIT);

    /* Refused: a port nobody listens on (the listener is closed). */
    int closed_port = s.port;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", closed_port);
    p = (tern_http_request_params){.url = url, .timeout_ms = 5000};
    run(&loop, &p, &g);
    assert_int_equal(g.ok, -1);
    assert_false(g.timed_out);
    assert_non_null(strstr(g.why, "failed"));

    /* A name, looked up on the pool. */
    server_start(&loop, &s, "HTTP/1.1 204 No Content\r\n\r\n");
    snprintf(url, sizeof(url), "http://localhost:%d/x", s.port);
    p = (tern_http_request_params){.url = url, .timeout_ms = 5000};
    run(&loop, &p, &g);
    assert_int_equal(g.ok, 0);
    assert_int_equal(g.status, 204);
    char host[64];
    snprintf(host, sizeof(host), "\r\nHost: localhost:%d\r\n", s.port);
    assert_non_null(strstr(s.request, host));
    server_stop(&s);

    /* Refused before any I/O, still reported from the loop. */
    const char *bad_header[] = {"X-Evil: a\r\nInjected: b"};
    const struct {
        tern_http_request_params p;
        const char *why;
    } early[] = {
        {{.url = "ftp://127.0.0.1/"}, "bad URL"},
        {{.url = "https://127.0.0.1:1/"}, "https without a TLS client context"},
        {{.url = "http://127.0.0.1:1/", .method = "DELETE"}, "not supported"},
        {{.url = "http://127.0.0.1:1/", .headers = bad_header, .n_headers = 1},
         "is not \"Name: value\""},
    };
    for (size_t i = 0; i < sizeof(early) / sizeof(early[0]); i++) {
        tern_http_request_params ep = early[i].p;
        run(&loop, &ep, &g);
        assert_int_equal(g.ok, -1);
        if (strstr(g.why, early[i].why) == NULL)
            fail_msg("case %zu: %s", i, g.why);
    }

    /* Cancelled: the callback never runs, everything closes. */
    server_start(&loop, &s, NULL);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", s.port);
    p = (tern_http_request_params){.loop = &loop, .url = url, .timeout_ms = 5000};
    memset(&g, 0, sizeof(g));
    tern_http_request *r = tern_http_request_start(&p, got_cb, &g);
    assert_non_null(r);
    for (int i = 0; i < 50 && !s.have_peer; i++)
        uv_run(&loop, UV_RUN_ONCE);
    tern_http_request_cancel(r);
    server_stop(&s);
    drain(&loop);
    assert_int_equal(g.calls, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_post),
        cmocka_unit_test(test_framings),
        cmocka_unit_test(test_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
