/* libFuzzer target for the DATA reader (both modes) and the header
 * scanner. Input: arbitrary bytes; the first byte picks the line limit and
 * how the rest is cut into feeds. Checked against a plain reference: the
 * data ends exactly after the first ".\r\n" that starts the input or
 * follows a CR LF pair, never elsewhere (so never at a dot line reached by
 * a bare LF or CR); output stays within its buffer; errors are latched
 * exactly when their bytes were read; reading in pieces gives the same as
 * reading whole. Any broken invariant calls abort(). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "protocols/smtp/smtp_parser.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

typedef struct {
    uint8_t *out;
    size_t out_len;
    size_t consumed;
    bool ended;
    unsigned errors;
    uint32_t received;
    bool hdr_done;
} result;

static void run(const uint8_t *in, size_t len, size_t max_line, bool normalize, uint8_t pattern,
                result *res)
{
    tern_smtp_data_reader r;
    tern_smtp_hdr_scan h;
    tern_smtp_data_init(&r, max_line, normalize);
    tern_smtp_hdr_scan_init(&h);
    res->out = malloc(2 * len + 8);
    CHECK(res->out != NULL);
    res->out_len = 0;
    res->ended = false;
    size_t off = 0, step = 0;
    while (off < len && !res->ended) {
        size_t chunk = len - off;
        if (pattern != 0) {
            size_t want = 1 + ((pattern >> (step % 5)) & 0x1f);
            step++;
            if (want < chunk)
                chunk = want;
        }
        /* An exact-size heap buffer: ASan catches a single byte too many. */
        size_t cap = 2 * chunk + 3;
        uint8_t *out = malloc(cap);
        CHECK(out != NULL);
        size_t olen = (size_t)-1;
        tern_smtp_data_status st;
        size_t c = tern_smtp_data_feed(&r, in + off, chunk, out, cap, &olen, &st);
        CHECK(c <= chunk && olen <= cap);
        if (st == TERN_SMTP_DATA_END)
            res->ended = true;
        else
            CHECK(c == chunk);
        CHECK(res->out_len + olen <= 2 * len + 8);
        memcpy(res->out + res->out_len, out, olen);
        tern_smtp_hdr_scan_feed(&h, out, olen);
        res->out_len += olen;
        free(out);
        off += c;
    }
    res->consumed = off;
    res->errors = r.errors;
    res->received = h.received;
    res->hdr_done = h.done;
    CHECK(r.out_bytes == res->out_len);
}

/* Where the data must end: just after the first ".\r\n" at the start or
 * right after a CR LF pair; len+1 when there is none. */
static size_t reference_end(const uint8_t *in, size_t len)
{
    for (size_t p = 0; p + 3 <= len; p++) {
        if (in[p] != '.' || in[p + 1] != '\r' || in[p + 2] != '\n')
            continue;
        if (p == 0 || (p >= 2 && in[p - 2] == '\r' && in[p - 1] == '\n'))
            return p + 3;
    }
    return len + 1;
}

static void check_reference(const uint8_t *in, size_t len, bool normalize, const result *res)
{
    size_t end = reference_end(in, len);
    if (end <= len) {
        CHECK(res->ended && res->consumed == end);
    } else {
        CHECK(!res->ended && res->consumed == len);
    }
    size_t n = res->consumed;
    bool lf = false, cr = false, nul = false;
    for (size_t i = 0; i < n; i++) {
        if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r'))
            lf = true;
        if (in[i] == '\r' && i + 1 < n && in[i + 1] != '\n')
            cr = true;
        if (in[i] == 0)
            nul = true;
    }
    CHECK(((res->errors & TERN_SMTP_DATA_ERR_NUL) != 0) == nul);
    if (normalize) {
        CHECK((res->errors & (TERN_SMTP_DATA_ERR_BARE_LF | TERN_SMTP_DATA_ERR_BARE_CR)) == 0);
        /* Only CR LF pairs; a CR may still wait for its LF at the very end. */
        for (size_t i = 0; i < res->out_len; i++) {
            if (res->out[i] == '\n')
                CHECK(i > 0 && res->out[i - 1] == '\r');
            if (res->out[i] == '\r' && i + 1 < res->out_len)
                CHECK(res->out[i + 1] == '\n');
        }
    } else {
        CHECK(((res->errors & TERN_SMTP_DATA_ERR_BARE_LF) != 0) == lf);
        CHECK(((res->errors & TERN_SMTP_DATA_ERR_BARE_CR) != 0) == cr);
        /* Reject mode only ever removes bytes (stuffed dots, the end). */
        CHECK(res->out_len <= n);
    }
    /* Output never holds more than 2 bytes per input byte. */
    CHECK(res->out_len <= 2 * n);
    if (res->ended) {
        CHECK(res->out_len == 0 ||
              (res->out_len >= 2 && res->out[res->out_len - 2] == '\r' &&
               res->out[res->out_len - 1] == '\n'));
    }
}

static void same(const result *a, const result *b)
{
    CHECK(a->ended == b->ended && a->consumed == b->consumed && a->errors == b->errors);
    CHECK(a->out_len == b->out_len && memcmp(a->out, b->out, a->out_len) == 0);
    CHECK(a->received == b->received && a->hdr_done == b->hdr_done);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t b = data[0];
    size_t max_line = (b & 0x80) ? 1000 : (size_t)(b & 0x1f);
    uint8_t pattern = (uint8_t)((b * 53u) | 1u);
    const uint8_t *in = data + 1;
    size_t len = size - 1;
    for (int norm = 0; norm < 2; norm++) {
        result whole, cut;
        run(in, len, max_line, norm != 0, 0, &whole);
        run(in, len, max_line, norm != 0, pattern, &cut);
        check_reference(in, len, norm != 0, &whole);
        same(&whole, &cut);
        free(whole.out);
        free(cut.out);
    }
    return 0;
}
