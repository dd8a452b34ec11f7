/* libFuzzer target: the IMAP command reader (fed in two pieces at a
 * fuzzer-chosen split, literals accepted up to a bound) and, on every
 * complete command, the argument parsers a session would run on it. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "protocols/imap/imap_parser.h"

static bool msn_map(void *ctx, const tern_imap_seqset *m, tern_arena *a, tern_uid_set *out)
{
    (void)ctx;
    (void)a;
    out->ranges = m->ranges;
    out->n = m->n;
    return true;
}

static bool recent_map(void *ctx, tern_arena *a, tern_uid_set *out)
{
    static const tern_uid_range r[] = {{3, 5}, {9, 9}};
    (void)ctx;
    (void)a;
    out->ranges = r;
    out->n = 2;
    return true;
}

static void parse_args(const uint8_t *cmd, size_t len)
{
    tern_arena a;
    tern_arena_init(&a, 4096);
    tern_imap_seqmap map = {msn_map, NULL, NULL, recent_map};
    tern_imap_parser ps;
    tern_imap_slice tag, name;
    tern_imap_parser_init(&ps, cmd, len, &a, 16);
    if (tern_imap_tag_command(&ps, &tag, &name) && tern_imap_char(&ps, ' ')) {
        const char *rest = ps.p;
        tern_imap_search_opts o;
        tern_search *s;
        (void)tern_imap_search(&ps, &map, &o, &s);
        ps.p = rest;
        ps.error = NULL;
        ps.depth = 0;
        tern_imap_seqset ss;
        if (tern_imap_parse_seqset(&ps, &ss) && tern_imap_char(&ps, ' ')) {
            const char *r2 = ps.p;
            tern_imap_fetch f;
            (void)tern_imap_fetch_atts(&ps, &f);
            ps.p = r2;
            ps.depth = 0;
            tern_imap_flags fl;
            (void)tern_imap_flag_list(&ps, &fl, true);
        }
        ps.p = rest;
        ps.depth = 0;
        char *str;
        int64_t t;
        if (tern_imap_astring(&ps, &str, NULL)) {
            char *o2;
            if (tern_imap_mutf7_decode(str, &a, &o2))
                (void)tern_imap_mutf7_encode(o2, &a, &o2);
        }
        ps.p = rest;
        (void)tern_imap_date_time(&ps, &t);
    }
    tern_arena_free(&a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t split = data[0] % (size);
    data++;
    size--;
    if (split > size)
        split = size;
    tern_imap_reader r;
    tern_imap_reader_init(&r, 256, 512, 4096);
    const uint8_t *parts[2] = {data, data + split};
    size_t lens[2] = {split, size - split};
    for (int p = 0; p < 2; p++) {
        size_t off = 0;
        while (off < lens[p]) {
            tern_imap_status st;
            size_t u = tern_imap_reader_feed(&r, parts[p] + off, lens[p] - off, &st);
            off += u;
            if (st == TERN_IMAP_COMMAND) {
                size_t cl;
                const uint8_t *c = tern_imap_reader_command(&r, &cl);
                parse_args(c, cl);
            } else if (st == TERN_IMAP_LITERAL_SYNC) {
                if (tern_imap_reader_literal_size(&r) <= 300)
                    tern_imap_reader_accept(&r);
                else
                    tern_imap_reader_refuse(&r);
            } else if (u == 0 && st == TERN_IMAP_MORE) {
                break;
            }
        }
    }
    tern_imap_reader_free(&r);
    return 0;
}
