/* libFuzzer target for the header section parser, RFC 2047 decoding and
 * date parsing. Input: arbitrary bytes; the first byte picks the limits
 * and how the rest is cut into feeds. Checked: feeding in pieces gives the
 * same fields and header size as feeding whole; sizes stay within the
 * input and the limits; every decoded value is valid UTF-8 without
 * control characters. Any broken invariant calls abort(). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/datetime.h"
#include "lib/header.h"
#include "lib/rfc2047.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

static void check_utf8(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        CHECK(s[i] >= 0x20 && s[i] != 0x7f);
        size_t k = tern_utf8_seq_len(s + i, n - i);
        CHECK(k > 0);
        i += k;
    }
}

/* Runs the parser; appends a digest of the fields to `out`. */
static uint64_t run(const uint8_t *in, size_t len, const tern_header_limits *lim, uint8_t pattern,
                    tern_buf *out, bool decode)
{
    static tern_header_parser p;
    tern_header_parser_init(&p, lim);
    size_t off = 0, nfields = 0;
    bool over = false;
    unsigned step = 0;
    for (;;) {
        tern_header_field f;
        tern_header_event ev;
        if (over) {
            ev = tern_header_parser_finish(&p, &f);
        } else {
            size_t n = pattern == 0 ? len - off : 1 + ((pattern >> (step++ % 8)) & 7);
            if (n > len - off)
                n = len - off;
            size_t used;
            ev = tern_header_parser_feed(&p, in + off, n, &used, &f);
            CHECK(used <= n);
            off += used;
            if (ev == TERN_HEADER_MORE) {
                CHECK(used == n);
                if (off == len)
                    over = true;
                continue;
            }
        }
        if (ev == TERN_HEADER_END)
            break;
        CHECK(ev == TERN_HEADER_FIELD);
        CHECK(f.name_len > 0 && f.name_len <= TERN_HEADER_NAME_MAX);
        CHECK(f.value_len <= p.lim.max_value);
        CHECK(f.offset < len);
        CHECK(++nfields <= p.lim.max_fields);
        CHECK(memchr(f.name, ':', f.name_len) == NULL);
        tern_buf_append(out, f.name, f.name_len);
        tern_buf_append(out, "\0", 1);
        tern_buf_append(out, f.value, f.value_len);
        tern_buf_append(out, &f.offset, sizeof f.offset);
        tern_buf_append(out, &f.truncated, sizeof f.truncated);
        if (decode) {
            tern_buf d;
            tern_buf_init(&d, 0);
            CHECK(tern_rfc2047_decode(&d, f.value, f.value_len) == 0);
            check_utf8(d.data, d.len);
            tern_buf_free(&d);
            int64_t t;
            (void)tern_datetime_parse(f.value, f.value_len, &t);
        }
    }
    CHECK(p.size <= len && p.size <= p.lim.max_total);
    CHECK(p.size == off);
    return p.size;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t ctl = data[0];
    const uint8_t *in = data + 1;
    size_t len = size - 1;
    tern_header_limits lim = {0};
    if (ctl & 1) {
        lim.max_total = 1 + (ctl >> 1) * 8;
        lim.max_fields = 1 + (ctl >> 5);
        lim.max_value = 1 + (ctl >> 3);
    }
    tern_buf a, b;
    tern_buf_init(&a, 0);
    tern_buf_init(&b, 0);
    uint64_t sa = run(in, len, &lim, 0, &a, true);
    uint64_t sb = run(in, len, &lim, (uint8_t)(ctl | 1), &b, false);
    CHECK(sa == sb);
    CHECK(a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0));
    tern_buf_free(&a);
    tern_buf_free(&b);

    /* The whole input as one header value and as a date, too. */
    tern_buf d;
    tern_buf_init(&d, 0);
    CHECK(tern_rfc2047_decode(&d, (const char *)in, len) == 0);
    check_utf8(d.data, d.len);
    tern_buf_free(&d);
    int64_t t;
    (void)tern_datetime_parse((const char *)in, len, &t);
    return 0;
}
