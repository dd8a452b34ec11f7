/* libFuzzer target for the SMTP reply parser and the EHLO keyword parser.
 * Input: arbitrary bytes, as a hostile server would send them. Checked:
 * parsing whole and byte by byte gives the same sequence of replies and
 * the same stopping point; codes are 200..599; text stays within its
 * buffer and NUL-terminated. Any broken invariant calls abort(). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "protocols/smtp/smtp_reply.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

#define MAXR 16

typedef struct {
    int codes[MAXR];
    size_t text_len[MAXR];
    size_t n;
    tern_reply_status last;
    size_t consumed;
} trace;

static void run(const uint8_t *in, size_t len, size_t step, trace *t)
{
    static tern_reply_parser p;
    tern_reply_parser_init(&p);
    memset(t, 0, sizeof(*t));
    size_t off = 0;
    t->last = TERN_REPLY_MORE;
    while (off < len && t->n < MAXR) {
        size_t n = len - off < step ? len - off : step;
        size_t used = 0;
        tern_reply_status st = tern_reply_parse(&p, in + off, n, &used);
        CHECK(used <= n);
        off += used;
        t->last = st;
        if (st == TERN_REPLY_MALFORMED)
            break;
        if (st == TERN_REPLY_DONE) {
            CHECK(p.r.code >= 200 && p.r.code <= 599);
            CHECK(p.r.text_len < sizeof(p.r.text) && p.r.text[p.r.text_len] == '\0');
            tern_ehlo_caps caps;
            tern_ehlo_caps_parse(&p.r, &caps);
            CHECK(strlen(caps.auth) < sizeof(caps.auth));
            t->codes[t->n] = p.r.code;
            t->text_len[t->n] = p.r.text_len;
            t->n++;
        } else
            CHECK(used == n);
    }
    t->consumed = off;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    trace a, b;
    run(data, size, size ? size : 1, &a);
    run(data, size, 1, &b);
    CHECK(a.n == b.n && a.last == b.last && a.consumed == b.consumed);
    for (size_t i = 0; i < a.n; i++)
        CHECK(a.codes[i] == b.codes[i] && a.text_len[i] == b.text_len[i]);
    return 0;
}
