/* fuzz_http_response.c: libFuzzer target for lib/http_response.c. Input:
 * arbitrary bytes as a response, fed whole and then in pieces whose sizes
 * come from the input itself, with small limits so the caps are reached;
 * the two runs must agree on the outcome. The first line is also tried as a URL. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/http_response.h"

static tern_http_resp_status feed(const uint8_t *d, size_t n, size_t step, tern_http_resp *p,
                                  size_t *used_r)
{
    tern_http_resp_status st = TERN_HTTP_RESP_MORE;
    size_t off = 0;
    while (off < n && st == TERN_HTTP_RESP_MORE) {
        size_t k = n - off < step ? n - off : step, used = 0;
        st = tern_http_resp_parse(p, d + off, k, &used);
        if (used > k || (st == TERN_HTTP_RESP_MORE && used != k))
            abort();
        off += used;
    }
    if (st == TERN_HTTP_RESP_MORE)
        st = tern_http_resp_eof(p);
    *used_r = off;
    return st;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t step = (size_t)(data[0] % 13) + 1;
    bool no_body = (data[0] & 0x80) != 0;
    tern_http_resp a, b;
    tern_http_resp_init(&a, 512, 1024, no_body);
    tern_http_resp_init(&b, 512, 1024, no_body);
    size_t ua, ub;
    tern_http_resp_status sa = feed(data + 1, size - 1, size, &a, &ua);
    tern_http_resp_status sb = feed(data + 1, size - 1, step, &b, &ub);
    if (sa != sb || a.status != b.status)
        abort();
    /* Where an error stops reading is not defined; a whole response is. */
    if (sa == TERN_HTTP_RESP_DONE &&
        (ua != ub || a.body_len != b.body_len ||
         (a.body_len && memcmp(a.body, b.body, a.body_len) != 0)))
        abort();
    if (a.body != NULL && a.body[a.body_len] != 0)
        abort();
    tern_http_resp_free(&a);
    tern_http_resp_free(&b);

    char url[600];
    size_t n = size - 1 < sizeof(url) - 1 ? size - 1 : sizeof(url) - 1;
    memcpy(url, data + 1, n);
    url[n] = '\0';
    url[strcspn(url, "\r\n")] = '\0';
    tern_http_url u;
    const char *why;
    if (tern_http_url_parse(url, &u, &why) == 0) {
        if (u.path[0] != '/' || u.port == 0)
            abort();
        (void)tern_http_host_is_loopback(u.host);
    }
    return 0;
}
