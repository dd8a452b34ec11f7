/* libFuzzer target for the SMTP command line reader and every argument
 * parser. Input: arbitrary bytes. The first byte picks the line limit and
 * how the rest is cut into feeds; the rest is read as a command stream,
 * once whole and once cut, and the two readings must agree. Each line is
 * run through every argument parser, whose results must point inside the
 * line. Any broken invariant calls abort(). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "protocols/smtp/smtp_parser.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

static void check_in(tern_smtp_slice s, const char *p, size_t len)
{
    CHECK(s.len <= len);
    if (s.len > 0)
        CHECK(s.p >= p && s.p + s.len <= p + len);
}

static void parse_args(const char *p, size_t len)
{
    tern_smtp_mail_args m;
    if (tern_smtp_parse_mail(p, len, &m) == 0) {
        check_in(m.path, p, len);
        check_in(m.envid, p, len);
        check_in(m.auth, p, len);
        CHECK(m.path.len <= 256);
        CHECK(m.envid.len <= 100);
        CHECK(m.body >= -1 && m.body <= 2);
        CHECK(m.ret >= 0 && m.ret <= 2);
        for (size_t i = 0; i < m.path.len; i++)
            CHECK(m.smtputf8 || (unsigned char)m.path.p[i] < 0x80);
        tern_smtp_slice d;
        if (m.path.len > 0) {
            CHECK(tern_smtp_mailbox_domain(m.path.p, m.path.len, &d) == 0);
            check_in(d, m.path.p, m.path.len);
        }
        char out[128];
        if (m.envid.len > 0) {
            long n = tern_smtp_xtext_decode(m.envid.p, m.envid.len, out, sizeof(out));
            CHECK(n >= 0 && (size_t)n <= m.envid.len && out[n] == '\0');
        }
    }
    for (int utf8 = 0; utf8 < 2; utf8++) {
        tern_smtp_rcpt_args r;
        int rc = tern_smtp_parse_rcpt(p, len, utf8 != 0, &r);
        CHECK(rc <= 0 && rc >= TERN_SMTP_EUTF8);
        if (rc == 0) {
            check_in(r.path, p, len);
            check_in(r.orcpt, p, len);
            CHECK(r.path.len > 0 && r.path.len <= 256);
            CHECK(r.orcpt.len <= 500);
            CHECK(!(r.notify & 0x01) || r.notify == 0x01);
            for (size_t i = 0; i < r.path.len; i++)
                CHECK(utf8 || (unsigned char)r.path.p[i] < 0x80);
        }
    }
    tern_smtp_slice d;
    if (tern_smtp_parse_helo(p, len, &d) == 0) {
        check_in(d, p, len);
        CHECK(d.len > 0 && d.len <= 255);
    }
    uint64_t sz;
    bool last;
    (void)tern_smtp_parse_bdat(p, len, &sz, &last);
    tern_smtp_slice mech, ir;
    if (tern_smtp_parse_auth(p, len, &mech, &ir) == 0) {
        check_in(mech, p, len);
        check_in(ir, p, len);
        CHECK(mech.len > 0 && mech.len <= 20);
    }
    if (tern_smtp_mailbox_domain(p, len, &d) == 0)
        check_in(d, p, len);
    char out[64];
    long n = tern_smtp_xtext_decode(p, len, out, sizeof(out));
    CHECK(n >= -1 && n < (long)sizeof(out));
    if (n >= 0)
        CHECK(out[n] == '\0');
}

/* A running digest of what the reader reported, to compare readings. */
typedef struct {
    uint64_t h;
    size_t events;
} digest;

static void mix(digest *d, const void *p, size_t len)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < len; i++)
        d->h = (d->h ^ b[i]) * 1099511628211u;
}

static void read_all(const uint8_t *data, size_t size, size_t max, uint8_t pattern, bool run_args,
                     digest *dg)
{
    char *buf = malloc(max ? max : 1);
    tern_smtp_line_reader r;
    CHECK(buf != NULL);
    tern_smtp_line_init(&r, buf, max);
    size_t off = 0, step = 0;
    while (off < size) {
        size_t chunk = size - off;
        if (pattern != 0) {
            size_t want = 1 + ((pattern >> (step % 7)) & 0x0f) + (step % 3);
            step++;
            if (want < chunk)
                chunk = want;
        }
        size_t used = 0;
        while (used < chunk) {
            tern_smtp_cmd cmd;
            tern_smtp_line_status st;
            size_t c = tern_smtp_line_feed(&r, data + off + used, chunk - used, &cmd, &st);
            CHECK(c <= chunk - used);
            used += c;
            if (st == TERN_SMTP_LINE_MORE) {
                CHECK(used == chunk);
                continue;
            }
            CHECK(c > 0);
            CHECK(data[off + used - 1] == '\n');
            dg->events++;
            int s = (int)st;
            mix(dg, &s, sizeof(s));
            if (st != TERN_SMTP_LINE_OK)
                continue;
            check_in(cmd.name, buf, max);
            check_in(cmd.args, buf, max);
            CHECK(cmd.name.len + cmd.args.len + 1 <= max || max == 0);
            CHECK((unsigned)cmd.verb < TERN_SMTP_CMD__COUNT);
            CHECK(tern_smtp_verb_name(cmd.verb) != NULL);
            CHECK(memchr(cmd.args.p, '\0', cmd.args.len) == NULL);
            CHECK(memchr(cmd.args.p, '\r', cmd.args.len) == NULL);
            CHECK(memchr(cmd.name.p, ' ', cmd.name.len) == NULL);
            if (cmd.args.len > 0)
                CHECK(cmd.args.p[0] != ' ' && cmd.args.p[cmd.args.len - 1] != ' ');
            int v = (int)cmd.verb;
            mix(dg, &v, sizeof(v));
            mix(dg, cmd.name.p, cmd.name.len);
            mix(dg, "|", 1);
            mix(dg, cmd.args.p, cmd.args.len);
            if (run_args) {
                /* Parse a private copy so an overread is caught by ASan. */
                char *copy = malloc(cmd.args.len ? cmd.args.len : 1);
                CHECK(copy != NULL);
                memcpy(copy, cmd.args.p, cmd.args.len);
                parse_args(copy, cmd.args.len);
                free(copy);
            }
        }
        off += chunk;
    }
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t b = data[0];
    size_t max = (b & 0x80) ? 512 : (size_t)(b & 0x3f);
    uint8_t pattern = (uint8_t)((b * 37u) | 1u);
    digest whole = {1469598103934665603u, 0}, cut = {1469598103934665603u, 0};
    read_all(data + 1, size - 1, max, 0, true, &whole);
    read_all(data + 1, size - 1, max, pattern, false, &cut);
    CHECK(whole.events == cut.events && whole.h == cut.h);
    return 0;
}
