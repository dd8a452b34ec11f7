/* libFuzzer target for the POP3 parsers. Input: arbitrary bytes. The first
 * byte picks the line limit, the chunk size and the TOP line count; the
 * rest is read (1) as a command stream, once whole and once in chunks, and
 * the two readings must agree, every line going through the command
 * splitter and the number parser, and (2) as a message through the RETR and
 * TOP writer, whole and in chunks with little output room, which must
 * agree and whose output must be valid multi-line response text: CRLF
 * lines only, no line "." before the end, ending in CRLF.CRLF. Any broken
 * invariant calls abort(). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "protocols/pop3/pop3_parser.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

static void check_in(tern_pop3_slice s, const char *p, size_t len)
{
    CHECK(s.len <= len);
    if (s.len > 0)
        CHECK(s.p >= p && s.p + s.len <= p + len);
}

/* Every event as bytes: 'O' + line + '\n', 'L', 'B'. */
static size_t read_lines(const uint8_t *in, size_t len, size_t max, size_t chunk, uint8_t *out,
                         size_t out_cap)
{
    char buf[1100];
    tern_pop3_line_reader r;
    tern_pop3_line_init(&r, buf, max);
    size_t o = 0;
    for (size_t off = 0; off < len;) {
        size_t n = chunk && len - off > chunk ? chunk : len - off;
        tern_pop3_line_status st;
        size_t used = tern_pop3_line_feed(&r, in + off, n, &st);
        CHECK(used > 0 && used <= n);
        off += used;
        if (st == TERN_POP3_LINE_OK) {
            size_t l = strlen(buf);
            CHECK(l + 2 <= max);
            tern_pop3_cmd cmd;
            if (tern_pop3_parse_command(buf, l, &cmd) == 0) {
                check_in(cmd.name, buf, l);
                check_in(cmd.rest, buf, l);
                CHECK(cmd.name.len >= 1 && cmd.name.len <= 4);
                CHECK(cmd.n_args <= TERN_POP3_MAX_ARGS);
                for (size_t i = 0; i < cmd.n_args; i++) {
                    check_in(cmd.args[i], buf, l);
                    CHECK(cmd.args[i].len > 0 && memchr(cmd.args[i].p, ' ', cmd.args[i].len) == NULL);
                    uint64_t v;
                    if (tern_pop3_parse_number(cmd.args[i], UINT32_MAX, &v) == 0)
                        CHECK(v <= UINT32_MAX && cmd.args[i].len <= 10);
                }
            }
            if (o + l + 2 <= out_cap) {
                out[o++] = 'O';
                memcpy(out + o, buf, l);
                o += l;
                out[o++] = '\n';
            }
        } else if (st != TERN_POP3_LINE_MORE && o < out_cap) {
            out[o++] = st == TERN_POP3_LINE_TOO_LONG ? 'L' : 'B';
        }
    }
    return o;
}

static size_t write_msg(const uint8_t *in, size_t len, bool top, uint64_t lines, size_t chunk,
                        size_t room, uint8_t *out)
{
    tern_pop3_stuffer st;
    tern_pop3_stuffer_init(&st, top, lines);
    uint8_t tmp[64];
    size_t o = 0;
    for (size_t off = 0; off < len && !tern_pop3_stuffer_done(&st);) {
        size_t n = chunk && len - off > chunk ? chunk : len - off;
        size_t w = 0;
        size_t used = tern_pop3_stuffer_feed(&st, in + off, n, tmp, room, &w);
        CHECK(used > 0 || w > 0);
        CHECK(w <= room);
        memcpy(out + o, tmp, w);
        o += w;
        off += used;
    }
    o += tern_pop3_stuffer_finish(&st, out + o, 8);
    return o;
}

static void check_multiline(const uint8_t *p, size_t n)
{
    CHECK(n >= 3 && memcmp(p + n - 3, ".\r\n", 3) == 0);
    CHECK(n == 3 || (p[n - 5] == '\r' && p[n - 4] == '\n'));
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\r')
            CHECK(i + 1 < n && p[i + 1] == '\n');
        if (p[i] == '\n') {
            CHECK(i > 0 && p[i - 1] == '\r');
            /* only the last line may be a lone dot */
            if (i - start == 2 && p[start] == '.')
                CHECK(i + 1 == n);
            start = i + 1;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 4096)
        return 0;
    uint8_t ctl = data[0];
    const uint8_t *in = data + 1;
    size_t len = size - 1;
    size_t max = 8 + (size_t)(ctl & 0x3f) * 16; /* 8..1016 */
    size_t chunk = 1 + (ctl >> 6);

    static uint8_t a[1 << 16], b[1 << 16];
    size_t na = read_lines(in, len, max, 0, a, sizeof(a));
    size_t nb = read_lines(in, len, max, chunk, b, sizeof(b));
    CHECK(na == nb && memcmp(a, b, na) == 0);

    bool top = ctl & 1;
    uint64_t lines = (ctl >> 1) & 7;
    na = write_msg(in, len, top, lines, 0, 64, a);
    nb = write_msg(in, len, top, lines, chunk, 4, b);
    CHECK(na == nb && memcmp(a, b, na) == 0);
    CHECK(na <= 2 * len + 8);
    check_multiline(a, na);
    return 0;
}
