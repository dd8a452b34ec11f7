/* The IMAP command reader and argument parsers (see imap_parser.h). Input:
 * the client's bytes, trusted in nothing: every length, count and nesting
 * level is capped, and a parse never reads past the command it was given. */
#include "protocols/imap/imap_parser.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- the command reader ------------------------------------------------ */

void tern_imap_reader_init(tern_imap_reader *r, size_t max_line, uint64_t max_literal,
                           uint64_t max_command)
{
    memset(r, 0, sizeof(*r));
    r->max_line = max_line;
    r->max_literal = max_literal;
    r->max_command = max_command;
    tern_buf_init(&r->cmd, 0);
}

void tern_imap_reader_free(tern_imap_reader *r)
{
    tern_buf_free(&r->cmd);
}

static void reader__capture_tag(tern_imap_reader *r)
{
    if (r->tag_len > 0)
        return;
    size_t n = 0;
    while (n < r->cmd.len && n < sizeof(r->tag) - 1 && r->cmd.data[n] != ' ' &&
           r->cmd.data[n] != '\r' && r->cmd.data[n] != '\n' && r->cmd.data[n] > 0x20 &&
           r->cmd.data[n] < 0x7f)
        n++;
    memcpy(r->tag, r->cmd.data, n);
    r->tag[n] = '\0';
    r->tag_len = n;
}

/* Resets for the next command. */
static void reader__reset(tern_imap_reader *r)
{
    r->cmd.len = 0;
    r->line_start = 0;
    r->lit_left = r->lit_size = 0;
    r->in_literal = r->skipping = r->skip_line = r->waiting = r->lit_nonsync = false;
    r->tail_len = 0;
    r->tag_len = 0;
    r->tag[0] = '\0';
    r->done = false;
}

/* A literal announcement at the end of a line ("{12}", "{12+}", "{12-}",
 * "~{12}"): its size and kind. `s` is the line without CRLF. */
static bool reader__literal_at_end(const char *s, size_t len, uint64_t *size, bool *nonsync)
{
    if (len < 3 || s[len - 1] != '}')
        return false;
    size_t i = len - 1;
    *nonsync = false;
    if (s[i - 1] == '+' || s[i - 1] == '-') {
        *nonsync = true;
        i--;
    }
    size_t end = i;
    while (i > 0 && s[i - 1] >= '0' && s[i - 1] <= '9')
        i--;
    if (i == end || i == 0 || s[i - 1] != '{' || end - i > 19)
        return false;
    uint64_t v = 0;
    for (size_t k = i; k < end; k++)
        v = v * 10 + (uint64_t)(s[k] - '0');
    *size = v;
    return true;
}

static void reader__tail_add(tern_imap_reader *r, const uint8_t *p, size_t n)
{
    if (n >= sizeof(r->tail)) {
        memcpy(r->tail, p + n - sizeof(r->tail), sizeof(r->tail));
        r->tail_len = sizeof(r->tail);
        return;
    }
    if (r->tail_len + n > sizeof(r->tail)) {
        size_t drop = r->tail_len + n - sizeof(r->tail);
        memmove(r->tail, r->tail + drop, r->tail_len - drop);
        r->tail_len -= drop;
    }
    memcpy(r->tail + r->tail_len, p, n);
    r->tail_len += n;
}

/* A skipped line ended: skip a non-synchronising literal it announced (the
 * command goes on after it), or end the skip and report. */
static bool reader__skip_line_end(tern_imap_reader *r, tern_imap_status *status)
{
    size_t tl = r->tail_len;
    while (tl > 0 && (r->tail[tl - 1] == '\n' || r->tail[tl - 1] == '\r'))
        tl--;
    uint64_t size;
    bool nonsync;
    r->tail_len = 0;
    if (reader__literal_at_end(r->tail, tl, &size, &nonsync) && nonsync && size > 0) {
        r->in_literal = true;
        r->skip_line = false;
        r->lit_left = size;
        return false;
    }
    *status = r->skip_status;
    r->done = true;
    r->skip_line = false;
    r->skipping = false;
    r->in_literal = false;
    r->cmd.len = 0; /* the tag stays for the reply */
    r->line_start = 0;
    return true;
}

size_t tern_imap_reader_feed(tern_imap_reader *r, const uint8_t *data, size_t len,
                             tern_imap_status *status)
{
    *status = TERN_IMAP_MORE;
    if (r->waiting)
        return 0; /* the session has not decided on the literal yet */
    if (r->done)
        reader__reset(r);
    size_t used = 0;
    while (used < len) {
        if (r->in_literal) {
            size_t n = len - used;
            if (n > r->lit_left)
                n = (size_t)r->lit_left;
            if (!r->skipping && tern_buf_append(&r->cmd, data + used, n) != 0) {
                /* Out of memory: treat as over the limit, skip the rest. */
                r->skipping = true;
                r->skip_status = TERN_IMAP_LITERAL_TOO_BIG;
            }
            used += n;
            r->lit_left -= n;
            if (r->lit_left == 0) {
                r->in_literal = false;
                r->line_start = r->cmd.len;
                if (r->skipping)
                    r->skip_line = true; /* the command goes on after the literal */
            }
            continue;
        }
        const uint8_t *lf = memchr(data + used, '\n', len - used);
        size_t n = lf ? (size_t)(lf - (data + used)) + 1 : len - used;
        if (r->skip_line) {
            reader__tail_add(r, data + used, n);
            used += n;
            if (!lf)
                continue;
            if (reader__skip_line_end(r, status))
                return used;
            continue;
        }
        if (r->cmd.len - r->line_start + n > r->max_line ||
            tern_buf_append(&r->cmd, data + used, n) != 0) {
            size_t room = r->max_line - (r->cmd.len - r->line_start);
            if (room > n)
                room = n;
            size_t keep = r->cmd.len;
            (void)tern_buf_append(&r->cmd, data + used, room); /* for the tag only */
            reader__capture_tag(r);
            r->cmd.len = keep;
            reader__tail_add(r, r->cmd.data + r->line_start, r->cmd.len - r->line_start);
            reader__tail_add(r, data + used, n);
            used += n;
            r->cmd.len = r->line_start;
            r->skipping = true;
            r->skip_status = TERN_IMAP_TOO_LONG;
            r->skip_line = true;
            if (lf && reader__skip_line_end(r, status))
                return used;
            continue;
        }
        used += n;
        if (!lf)
            continue;
        reader__capture_tag(r);
        /* A complete line: does it end with a literal announcement? */
        size_t ll = r->cmd.len - r->line_start;
        const char *line = (const char *)r->cmd.data + r->line_start;
        size_t tl = ll;
        while (tl > 0 && (line[tl - 1] == '\n' || line[tl - 1] == '\r'))
            tl--;
        uint64_t size;
        bool nonsync;
        if (!reader__literal_at_end(line, tl, &size, &nonsync)) {
            /* The command is complete; drop the CRLF. */
            r->cmd.len = r->line_start + tl;
            *status = TERN_IMAP_COMMAND;
            r->done = true;
            r->line_start = 0;
            return used;
        }
        r->lit_size = size;
        r->lit_nonsync = nonsync;
        if (!nonsync) {
            r->waiting = true;
            *status = TERN_IMAP_LITERAL_SYNC;
            return used;
        }
        if (size > r->max_literal || r->cmd.len + size > r->max_command) {
            r->skipping = true;
            r->skip_status = TERN_IMAP_LITERAL_TOO_BIG;
            r->cmd.len = 0;
        }
        r->in_literal = size > 0;
        r->lit_left = size;
        r->line_start = r->cmd.len;
        if (size == 0 && r->skipping)
            r->skip_line = true;
    }
    return used;
}

uint64_t tern_imap_reader_literal_size(const tern_imap_reader *r)
{
    return r->lit_size;
}

void tern_imap_reader_accept(tern_imap_reader *r)
{
    if (!r->waiting)
        return;
    r->waiting = false;
    if (r->lit_size > r->max_literal || r->cmd.len + r->lit_size > r->max_command) {
        /* The session should have refused; never buffer past the limit. */
        r->skipping = true;
        r->skip_status = TERN_IMAP_LITERAL_TOO_BIG;
        r->cmd.len = 0;
    }
    r->lit_left = r->lit_size;
    r->in_literal = r->lit_size > 0;
    r->line_start = r->cmd.len;
}

void tern_imap_reader_refuse(tern_imap_reader *r)
{
    reader__reset(r);
}

const uint8_t *tern_imap_reader_command(const tern_imap_reader *r, size_t *len_r)
{
    *len_r = r->cmd.len;
    return r->cmd.data ? r->cmd.data : (const uint8_t *)"";
}

const char *tern_imap_reader_tag(const tern_imap_reader *r, size_t *len_r)
{
    if (r->tag_len == 0) {
        *len_r = 1;
        return "*";
    }
    *len_r = r->tag_len;
    return r->tag;
}

void tern_imap_reader_shrink(tern_imap_reader *r)
{
    if (r->done)
        reader__reset(r);
    if (!r->in_literal && !r->skip_line && !r->waiting && r->cmd.len == 0) {
        tern_buf_shrink(&r->cmd, 1024);
    }
}

/* ---- tokens ------------------------------------------------------------- */

void tern_imap_parser_init(tern_imap_parser *ps, const uint8_t *cmd, size_t len,
                           tern_arena *arena, unsigned max_depth)
{
    memset(ps, 0, sizeof(*ps));
    ps->p = (const char *)cmd;
    ps->end = (const char *)cmd + len;
    ps->arena = arena;
    ps->max_depth = max_depth;
}

bool tern_imap_fail(tern_imap_parser *ps, const char *why)
{
    if (!ps->error)
        ps->error = why;
    return false;
}

bool tern_imap_at_end(const tern_imap_parser *ps)
{
    return ps->p >= ps->end;
}

bool tern_imap_peek(const tern_imap_parser *ps, char c)
{
    return ps->p < ps->end && *ps->p == c;
}

bool tern_imap_char(tern_imap_parser *ps, char c)
{
    if (ps->p < ps->end && *ps->p == c) {
        ps->p++;
        return true;
    }
    return false;
}

bool tern_imap_sp(tern_imap_parser *ps)
{
    if (tern_imap_char(ps, ' '))
        return true;
    return tern_imap_fail(ps, "expected a space");
}

static bool is_atom_char(unsigned char c, const char *extra)
{
    if (c <= 0x20 || c == 0x7f)
        return false;
    if (strchr("(){%*\"\\]", c))
        return extra && strchr(extra, c) != NULL;
    return true;
}

bool tern_imap_atom(tern_imap_parser *ps, tern_imap_slice *out, const char *extra)
{
    const char *s = ps->p;
    while (ps->p < ps->end && is_atom_char((unsigned char)*ps->p, extra))
        ps->p++;
    if (ps->p == s)
        return tern_imap_fail(ps, "expected an atom");
    out->p = s;
    out->len = (size_t)(ps->p - s);
    return true;
}

bool tern_imap_keyword(tern_imap_parser *ps, const char *kw)
{
    size_t n = strlen(kw);
    if ((size_t)(ps->end - ps->p) < n || strncasecmp(ps->p, kw, n) != 0)
        return false;
    const char *after = ps->p + n;
    if (after < ps->end && *after != ' ' && *after != ')' && *after != '(')
        return false;
    ps->p = after;
    return true;
}

bool tern_imap_number(tern_imap_parser *ps, uint64_t *out, uint64_t max)
{
    const char *s = ps->p;
    uint64_t v = 0;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
        unsigned d = (unsigned)(*ps->p - '0');
        if (v > (max - d) / 10)
            return tern_imap_fail(ps, "number too large");
        v = v * 10 + d;
        ps->p++;
    }
    if (ps->p == s)
        return tern_imap_fail(ps, "expected a number");
    *out = v;
    return true;
}

bool tern_imap_open(tern_imap_parser *ps)
{
    if (!tern_imap_char(ps, '('))
        return tern_imap_fail(ps, "expected '('");
    if (++ps->depth > ps->max_depth) {
        ps->depth_error = true;
        return tern_imap_fail(ps, "nested too deeply");
    }
    return true;
}

bool tern_imap_close(tern_imap_parser *ps)
{
    if (!tern_imap_char(ps, ')'))
        return tern_imap_fail(ps, "expected ')'");
    if (ps->depth > 0)
        ps->depth--;
    return true;
}

static bool parse_quoted(tern_imap_parser *ps, char **out, size_t *len_r)
{
    ps->p++; /* '"' */
    const char *s = ps->p;
    size_t n = 0;
    bool esc = false;
    for (const char *q = s; q < ps->end; q++) {
        if (esc) {
            if (*q != '"' && *q != '\\')
                return tern_imap_fail(ps, "bad escape in quoted string");
            esc = false;
            n++;
            continue;
        }
        if (*q == '\\') {
            esc = true;
            continue;
        }
        if (*q == '\r' || *q == '\n' || *q == '\0')
            return tern_imap_fail(ps, "bad character in quoted string");
        if (*q == '"') {
            char *d = tern_arena_alloc(ps->arena, n + 1);
            if (!d)
                return tern_imap_fail(ps, "out of memory");
            size_t k = 0;
            for (const char *c = s; c < q; c++) {
                if (*c == '\\')
                    c++;
                d[k++] = *c;
            }
            d[k] = '\0';
            ps->p = q + 1;
            *out = d;
            if (len_r)
                *len_r = k;
            return true;
        }
        n++;
    }
    return tern_imap_fail(ps, "unterminated quoted string");
}

static bool parse_literal(tern_imap_parser *ps, char **out, size_t *len_r, bool allow8)
{
    ps->literal8 = false;
    if (*ps->p == '~') {
        if (!allow8)
            return tern_imap_fail(ps, "literal8 not allowed here");
        ps->literal8 = true;
        ps->p++;
        if (!tern_imap_peek(ps, '{'))
            return tern_imap_fail(ps, "bad literal8");
    }
    ps->p++; /* '{' */
    uint64_t n;
    if (!tern_imap_number(ps, &n, UINT64_MAX / 2))
        return false;
    if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-'))
        ps->p++;
    if (!tern_imap_char(ps, '}'))
        return tern_imap_fail(ps, "bad literal");
    tern_imap_char(ps, '\r');
    if (!tern_imap_char(ps, '\n'))
        return tern_imap_fail(ps, "bad literal");
    if ((uint64_t)(ps->end - ps->p) < n)
        return tern_imap_fail(ps, "short literal");
    char *d = tern_arena_alloc(ps->arena, (size_t)n + 1);
    if (!d)
        return tern_imap_fail(ps, "out of memory");
    memcpy(d, ps->p, (size_t)n);
    d[n] = '\0';
    if (!ps->literal8 && memchr(d, '\0', (size_t)n))
        return tern_imap_fail(ps, "NUL in literal");
    ps->p += n;
    *out = d;
    if (len_r)
        *len_r = (size_t)n;
    return true;
}

bool tern_imap_literal_slice(tern_imap_parser *ps, tern_imap_slice *out, bool allow8)
{
    ps->literal8 = false;
    if (tern_imap_char(ps, '~')) {
        if (!allow8)
            return tern_imap_fail(ps, "literal8 not allowed here");
        ps->literal8 = true;
    }
    if (!tern_imap_char(ps, '{'))
        return tern_imap_fail(ps, "expected a literal");
    uint64_t n;
    if (!tern_imap_number(ps, &n, UINT64_MAX / 2))
        return false;
    if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-'))
        ps->p++;
    if (!tern_imap_char(ps, '}'))
        return tern_imap_fail(ps, "bad literal");
    tern_imap_char(ps, '\r');
    if (!tern_imap_char(ps, '\n'))
        return tern_imap_fail(ps, "bad literal");
    if ((uint64_t)(ps->end - ps->p) < n)
        return tern_imap_fail(ps, "short literal");
    out->p = ps->p;
    out->len = (size_t)n;
    ps->p += n;
    return true;
}

bool tern_imap_string(tern_imap_parser *ps, char **out, size_t *len_r, bool allow8)
{
    if (ps->p >= ps->end)
        return tern_imap_fail(ps, "expected a string");
    if (*ps->p == '"')
        return parse_quoted(ps, out, len_r);
    if (*ps->p == '{' || *ps->p == '~')
        return parse_literal(ps, out, len_r, allow8);
    return tern_imap_fail(ps, "expected a string");
}

bool tern_imap_astring(tern_imap_parser *ps, char **out, size_t *len_r)
{
    if (ps->p < ps->end && (*ps->p == '"' || *ps->p == '{'))
        return tern_imap_string(ps, out, len_r, false);
    tern_imap_slice a;
    if (!tern_imap_atom(ps, &a, "]"))
        return tern_imap_fail(ps, "expected a string or atom");
    *out = tern_arena_strndup(ps->arena, a.p, a.len);
    if (!*out)
        return tern_imap_fail(ps, "out of memory");
    if (len_r)
        *len_r = a.len;
    return true;
}

bool tern_imap_nstring(tern_imap_parser *ps, char **out)
{
    if (tern_imap_keyword(ps, "NIL")) {
        *out = NULL;
        return true;
    }
    return tern_imap_string(ps, out, NULL, false);
}

bool tern_imap_tag_command(tern_imap_parser *ps, tern_imap_slice *tag, tern_imap_slice *name)
{
    /* tag: ASTRING-CHAR except '+' */
    const char *s = ps->p;
    while (ps->p < ps->end && is_atom_char((unsigned char)*ps->p, "]") && *ps->p != '+')
        ps->p++;
    if (ps->p == s)
        return tern_imap_fail(ps, "missing tag");
    tag->p = s;
    tag->len = (size_t)(ps->p - s);
    if (!tern_imap_sp(ps))
        return tern_imap_fail(ps, "missing command");
    s = ps->p;
    while (ps->p < ps->end && isalnum((unsigned char)*ps->p))
        ps->p++;
    if (ps->p == s)
        return tern_imap_fail(ps, "missing command");
    name->p = s;
    name->len = (size_t)(ps->p - s);
    return true;
}

/* ---- sequence sets -------------------------------------------------------- */

static bool seq_number(tern_imap_parser *ps, uint32_t *out)
{
    if (tern_imap_char(ps, '*')) {
        *out = UINT32_MAX;
        return true;
    }
    uint64_t v;
    if (!tern_imap_number(ps, &v, UINT32_MAX))
        return false;
    if (v == 0)
        return tern_imap_fail(ps, "0 is not a valid message number");
    *out = (uint32_t)v;
    return true;
}

#define SEQSET_MAX_RANGES 65536

bool tern_imap_parse_seqset(tern_imap_parser *ps, tern_imap_seqset *out)
{
    memset(out, 0, sizeof(*out));
    if (tern_imap_char(ps, '$')) {
        out->saved = true;
        return true;
    }
    size_t cap = 8;
    out->ranges = tern_arena_alloc(ps->arena, cap * sizeof(*out->ranges));
    if (!out->ranges)
        return tern_imap_fail(ps, "out of memory");
    for (;;) {
        uint32_t a, b;
        if (!seq_number(ps, &a))
            return tern_imap_fail(ps, "bad sequence set");
        b = a;
        if (tern_imap_char(ps, ':') && !seq_number(ps, &b))
            return tern_imap_fail(ps, "bad sequence set");
        if (a > b) {
            uint32_t t = a;
            a = b;
            b = t;
        }
        if (out->n == cap) {
            if (cap >= SEQSET_MAX_RANGES)
                return tern_imap_fail(ps, "sequence set too long");
            tern_uid_range *nr = tern_arena_alloc(ps->arena, cap * 2 * sizeof(*nr));
            if (!nr)
                return tern_imap_fail(ps, "out of memory");
            memcpy(nr, out->ranges, cap * sizeof(*nr));
            out->ranges = nr;
            cap *= 2;
        }
        out->ranges[out->n].first = a;
        out->ranges[out->n].last = b;
        out->n++;
        if (!tern_imap_char(ps, ','))
            return true;
    }
}

bool tern_imap_uidset(tern_imap_parser *ps, const tern_imap_seqset *in,
                      const tern_imap_seqmap *map, tern_uid_set *out)
{
    if (in->saved) {
        if (!map || !map->saved_uids || !map->saved_uids(map->ctx, ps->arena, out))
            return tern_imap_fail(ps, "no saved search result");
        return true;
    }
    out->ranges = in->ranges;
    out->n = in->n;
    return true;
}

/* ---- flags ------------------------------------------------------------ */

static const struct {
    const char *name;
    unsigned bit;
} system_flags[] = {
    {"\\Seen", TERN_FLAG_SEEN},       {"\\Answered", TERN_FLAG_ANSWERED},
    {"\\Flagged", TERN_FLAG_FLAGGED}, {"\\Deleted", TERN_FLAG_DELETED},
    {"\\Draft", TERN_FLAG_DRAFT},
};

#define MAX_KEYWORDS 256

bool tern_imap_flag(tern_imap_parser *ps, tern_imap_flags *out)
{
    if (ps->p >= ps->end || *ps->p == ')' || *ps->p == ' ')
        return false;
    bool system = *ps->p == '\\';
    if (system)
        ps->p++;
    tern_imap_slice a;
    if (!tern_imap_atom(ps, &a, NULL)) {
        if (system && tern_imap_char(ps, '*'))
            return tern_imap_fail(ps, "\\* is not a flag here");
        return false;
    }
    if (system) {
        for (size_t i = 0; i < sizeof(system_flags) / sizeof(system_flags[0]); i++)
            if (strlen(system_flags[i].name) - 1 == a.len &&
                strncasecmp(system_flags[i].name + 1, a.p, a.len) == 0) {
                out->flags |= system_flags[i].bit;
                return true;
            }
        if (a.len == 6 && strncasecmp(a.p, "Recent", 6) == 0) {
            out->recent = true;
            return true;
        }
        return tern_imap_fail(ps, "unknown system flag");
    }
    if (out->n_keywords >= MAX_KEYWORDS)
        return tern_imap_fail(ps, "too many keywords");
    if (out->n_keywords % 8 == 0) {
        const char **nk = tern_arena_alloc(ps->arena, (out->n_keywords + 8) * sizeof(*nk));
        if (!nk)
            return tern_imap_fail(ps, "out of memory");
        if (out->n_keywords)
            memcpy(nk, out->keywords, out->n_keywords * sizeof(*nk));
        out->keywords = nk;
    }
    char *k = tern_arena_strndup(ps->arena, a.p, a.len);
    if (!k)
        return tern_imap_fail(ps, "out of memory");
    for (size_t i = 0; i < out->n_keywords; i++)
        if (strcasecmp(out->keywords[i], k) == 0)
            return true;
    out->keywords[out->n_keywords++] = k;
    return true;
}

bool tern_imap_flag_list(tern_imap_parser *ps, tern_imap_flags *out, bool bare_ok)
{
    memset(out, 0, sizeof(*out));
    bool paren = tern_imap_peek(ps, '(');
    if (!paren && !bare_ok)
        return tern_imap_fail(ps, "expected a flag list");
    if (paren && !tern_imap_open(ps))
        return false;
    bool first = true;
    for (;;) {
        if (paren && tern_imap_peek(ps, ')'))
            return tern_imap_close(ps);
        if (!paren && tern_imap_at_end(ps))
            return !first;
        if (!first && !tern_imap_sp(ps))
            return false;
        if (!tern_imap_flag(ps, out))
            return tern_imap_fail(ps, "bad flag");
        first = false;
    }
}

/* ---- dates --------------------------------------------------------------- */

static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static bool digits(tern_imap_parser *ps, unsigned n_min, unsigned n_max, unsigned *out)
{
    unsigned v = 0, n = 0;
    while (n < n_max && ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
        v = v * 10 + (unsigned)(*ps->p - '0');
        ps->p++;
        n++;
    }
    if (n < n_min)
        return false;
    *out = v;
    return true;
}

static bool date_body(tern_imap_parser *ps, bool space_day, int64_t *out)
{
    unsigned day, year;
    if (space_day && tern_imap_char(ps, ' ')) {
        if (!digits(ps, 1, 1, &day))
            return false;
    } else if (!digits(ps, 1, 2, &day)) {
        return false;
    }
    if (!tern_imap_char(ps, '-') || ps->end - ps->p < 3)
        return false;
    unsigned mon = 12;
    for (unsigned i = 0; i < 12; i++)
        if (strncasecmp(ps->p, months[i], 3) == 0)
            mon = i;
    if (mon == 12)
        return false;
    ps->p += 3;
    if (!tern_imap_char(ps, '-') || !digits(ps, 4, 4, &year))
        return false;
    if (day < 1 || day > 31)
        return false;
    *out = days_from_civil(year, mon + 1, day) * 86400;
    return true;
}

bool tern_imap_date(tern_imap_parser *ps, int64_t *out)
{
    bool q = tern_imap_char(ps, '"');
    if (!date_body(ps, false, out) || (q && !tern_imap_char(ps, '"')))
        return tern_imap_fail(ps, "bad date");
    return true;
}

bool tern_imap_date_time(tern_imap_parser *ps, int64_t *out)
{
    if (!tern_imap_char(ps, '"'))
        return tern_imap_fail(ps, "bad date-time");
    int64_t day;
    unsigned hh, mm, ss, zh;
    if (!date_body(ps, true, &day) || !tern_imap_char(ps, ' ') || !digits(ps, 2, 2, &hh) ||
        !tern_imap_char(ps, ':') || !digits(ps, 2, 2, &mm) || !tern_imap_char(ps, ':') ||
        !digits(ps, 2, 2, &ss) || !tern_imap_char(ps, ' '))
        return tern_imap_fail(ps, "bad date-time");
    int sign = 0;
    if (tern_imap_char(ps, '+'))
        sign = 1;
    else if (tern_imap_char(ps, '-'))
        sign = -1;
    if (!sign || !digits(ps, 4, 4, &zh) || !tern_imap_char(ps, '"') || hh > 23 || mm > 59 ||
        ss > 60 || zh % 100 > 59)
        return tern_imap_fail(ps, "bad date-time");
    int64_t zone = (int64_t)(zh / 100 * 3600 + zh % 100 * 60) * sign;
    *out = day + hh * 3600 + mm * 60 + ss - zone;
    return true;
}

/* ---- search ------------------------------------------------------------ */

typedef struct search_list {
    tern_search *items;
    size_t n, cap;
} search_list;

static tern_search *search_push(tern_imap_parser *ps, search_list *l)
{
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 4;
        if (nc > 4096)
            return tern_imap_fail(ps, "too many search keys"), NULL;
        tern_search *ni = tern_arena_alloc(ps->arena, nc * sizeof(*ni));
        if (!ni)
            return tern_imap_fail(ps, "out of memory"), NULL;
        if (l->n)
            memcpy(ni, l->items, l->n * sizeof(*ni));
        l->items = ni;
        l->cap = nc;
    }
    tern_search *s = &l->items[l->n++];
    memset(s, 0, sizeof(*s));
    return s;
}

static bool search_key(tern_imap_parser *ps, const tern_imap_seqmap *map,
                       tern_imap_search_opts *opts, tern_search *k);

/* One key or more, space separated, until ')' or the end: into an AND. */
static bool search_keys(tern_imap_parser *ps, const tern_imap_seqmap *map,
                        tern_imap_search_opts *opts, tern_search *out)
{
    search_list l = {0};
    for (;;) {
        tern_search *k = search_push(ps, &l);
        if (!k || !search_key(ps, map, opts, k))
            return false;
        if (tern_imap_at_end(ps) || tern_imap_peek(ps, ')'))
            break;
        if (!tern_imap_sp(ps))
            return false;
    }
    if (l.n == 1) {
        *out = l.items[0];
        return true;
    }
    memset(out, 0, sizeof(*out));
    out->kind = TERN_SEARCH_AND;
    out->children = l.items;
    out->n_children = l.n;
    return true;
}

static bool search_str(tern_imap_parser *ps, const char **out)
{
    char *s;
    if (!tern_imap_sp(ps) || !tern_imap_astring(ps, &s, NULL))
        return tern_imap_fail(ps, "expected a search string");
    *out = s;
    return true;
}

static tern_search *one_child(tern_imap_parser *ps, const tern_search *src)
{
    tern_search *c = tern_arena_alloc(ps->arena, sizeof(*c));
    if (!c)
        return tern_imap_fail(ps, "out of memory"), NULL;
    *c = *src;
    return c;
}

/* day-granular pairs: ON d -> SINCE d AND BEFORE d+1 */
static bool day_range(tern_imap_parser *ps, tern_search *k, tern_search_kind since,
                      tern_search_kind before, int64_t d)
{
    tern_search *c = tern_arena_alloc(ps->arena, 2 * sizeof(*c));
    if (!c)
        return tern_imap_fail(ps, "out of memory");
    c[0].kind = since;
    c[0].date = d;
    c[1].kind = before;
    c[1].date = d + 86400;
    k->kind = TERN_SEARCH_AND;
    k->children = c;
    k->n_children = 2;
    return true;
}

static bool search_key(tern_imap_parser *ps, const tern_imap_seqmap *map,
                       tern_imap_search_opts *opts, tern_search *k)
{
    memset(k, 0, sizeof(*k));
    if (ps->p >= ps->end)
        return tern_imap_fail(ps, "missing search key");
    if (*ps->p == '(') {
        if (!tern_imap_open(ps) || !search_keys(ps, map, opts, k) || !tern_imap_close(ps))
            return false;
        return true;
    }
    if ((*ps->p >= '0' && *ps->p <= '9') || *ps->p == '*' || *ps->p == '$') {
        tern_imap_seqset ss;
        if (!tern_imap_parse_seqset(ps, &ss))
            return false;
        k->kind = TERN_SEARCH_UID;
        if (ss.saved)
            return tern_imap_uidset(ps, &ss, map, &k->uids);
        if (!map || !map->msn_to_uids || !map->msn_to_uids(map->ctx, &ss, ps->arena, &k->uids))
            return tern_imap_fail(ps, "bad message number");
        return true;
    }
    tern_imap_slice w;
    if (!tern_imap_atom(ps, &w, NULL))
        return tern_imap_fail(ps, "bad search key");
    char kw[16];
    if (w.len >= sizeof(kw))
        return tern_imap_fail(ps, "unknown search key");
    for (size_t i = 0; i < w.len; i++)
        kw[i] = (char)toupper((unsigned char)w.p[i]);
    kw[w.len] = '\0';

    static const struct {
        const char *name;
        tern_search_kind kind;
        unsigned flag;
    } flagkeys[] = {
        {"ANSWERED", TERN_SEARCH_FLAGS_SET, TERN_FLAG_ANSWERED},
        {"DELETED", TERN_SEARCH_FLAGS_SET, TERN_FLAG_DELETED},
        {"DRAFT", TERN_SEARCH_FLAGS_SET, TERN_FLAG_DRAFT},
        {"FLAGGED", TERN_SEARCH_FLAGS_SET, TERN_FLAG_FLAGGED},
        {"SEEN", TERN_SEARCH_FLAGS_SET, TERN_FLAG_SEEN},
        {"UNANSWERED", TERN_SEARCH_FLAGS_UNSET, TERN_FLAG_ANSWERED},
        {"UNDELETED", TERN_SEARCH_FLAGS_UNSET, TERN_FLAG_DELETED},
        {"UNDRAFT", TERN_SEARCH_FLAGS_UNSET, TERN_FLAG_DRAFT},
        {"UNFLAGGED", TERN_SEARCH_FLAGS_UNSET, TERN_FLAG_FLAGGED},
        {"UNSEEN", TERN_SEARCH_FLAGS_UNSET, TERN_FLAG_SEEN},
    };
    for (size_t i = 0; i < sizeof(flagkeys) / sizeof(flagkeys[0]); i++)
        if (strcmp(kw, flagkeys[i].name) == 0) {
            k->kind = flagkeys[i].kind;
            k->flags = flagkeys[i].flag;
            return true;
        }
    static const struct {
        const char *name;
        const char *field;
    } hdrkeys[] = {{"BCC", "Bcc"}, {"CC", "Cc"}, {"FROM", "From"},
                   {"SUBJECT", "Subject"}, {"TO", "To"}};
    for (size_t i = 0; i < sizeof(hdrkeys) / sizeof(hdrkeys[0]); i++)
        if (strcmp(kw, hdrkeys[i].name) == 0) {
            k->kind = TERN_SEARCH_HEADER;
            k->field = hdrkeys[i].field;
            return search_str(ps, &k->str);
        }
    static const struct {
        const char *name;
        tern_search_kind kind;
    } datekeys[] = {{"BEFORE", TERN_SEARCH_BEFORE},         {"SINCE", TERN_SEARCH_SINCE},
                    {"SENTBEFORE", TERN_SEARCH_SENTBEFORE}, {"SENTSINCE", TERN_SEARCH_SENTSINCE},
                    {"ON", TERN_SEARCH_ALL},                {"SENTON", TERN_SEARCH_ALL}};
    for (size_t i = 0; i < sizeof(datekeys) / sizeof(datekeys[0]); i++)
        if (strcmp(kw, datekeys[i].name) == 0) {
            int64_t d;
            if (!tern_imap_sp(ps) || !tern_imap_date(ps, &d))
                return false;
            if (strcmp(kw, "ON") == 0)
                return day_range(ps, k, TERN_SEARCH_SINCE, TERN_SEARCH_BEFORE, d);
            if (strcmp(kw, "SENTON") == 0)
                return day_range(ps, k, TERN_SEARCH_SENTSINCE, TERN_SEARCH_SENTBEFORE, d);
            k->kind = datekeys[i].kind;
            k->date = d;
            return true;
        }
    if (strcmp(kw, "ALL") == 0) {
        k->kind = TERN_SEARCH_ALL;
        return true;
    }
    if (strcmp(kw, "NEW") == 0 || strcmp(kw, "RECENT") == 0 || strcmp(kw, "OLD") == 0) {
        /* \Recent is the session's (RFC 3501 2.3.2), not the store's: the
         * map gives its UIDs. NEW is RECENT UNSEEN, OLD is NOT RECENT. */
        tern_search r = {.kind = TERN_SEARCH_UID};
        if (map && map->recent_uids && !map->recent_uids(map->ctx, ps->arena, &r.uids))
            return tern_imap_fail(ps, "out of memory");
        if (kw[0] == 'R') {
            *k = r;
            return true;
        }
        tern_search *c = tern_arena_alloc(ps->arena, 2 * sizeof(*c));
        if (!c)
            return tern_imap_fail(ps, "out of memory");
        c[0] = r;
        memset(&c[1], 0, sizeof(c[1]));
        c[1].kind = TERN_SEARCH_FLAGS_UNSET;
        c[1].flags = TERN_FLAG_SEEN;
        k->kind = kw[0] == 'N' ? TERN_SEARCH_AND : TERN_SEARCH_NOT;
        k->children = c;
        k->n_children = kw[0] == 'N' ? 2 : 1;
        return true;
    }
    if (strcmp(kw, "BODY") == 0 || strcmp(kw, "TEXT") == 0) {
        k->kind = kw[0] == 'B' ? TERN_SEARCH_BODY : TERN_SEARCH_TEXT;
        return search_str(ps, &k->str);
    }
    if (strcmp(kw, "HEADER") == 0) {
        k->kind = TERN_SEARCH_HEADER;
        if (!search_str(ps, &k->field))
            return false;
        return search_str(ps, &k->str);
    }
    if (strcmp(kw, "KEYWORD") == 0 || strcmp(kw, "UNKEYWORD") == 0) {
        k->kind = kw[0] == 'K' ? TERN_SEARCH_KEYWORD : TERN_SEARCH_UNKEYWORD;
        tern_imap_slice a;
        if (!tern_imap_sp(ps) || !tern_imap_atom(ps, &a, NULL))
            return tern_imap_fail(ps, "expected a keyword");
        k->str = tern_arena_strndup(ps->arena, a.p, a.len);
        return k->str != NULL || tern_imap_fail(ps, "out of memory");
    }
    if (strcmp(kw, "LARGER") == 0 || strcmp(kw, "SMALLER") == 0) {
        k->kind = kw[0] == 'L' ? TERN_SEARCH_LARGER : TERN_SEARCH_SMALLER;
        return tern_imap_sp(ps) && tern_imap_number(ps, &k->num, UINT64_MAX);
    }
    if (strcmp(kw, "NOT") == 0) {
        tern_search c;
        if (!tern_imap_sp(ps) || !search_key(ps, map, opts, &c))
            return false;
        k->kind = TERN_SEARCH_NOT;
        k->children = one_child(ps, &c);
        k->n_children = 1;
        return k->children != NULL;
    }
    if (strcmp(kw, "OR") == 0) {
        tern_search c[2];
        if (!tern_imap_sp(ps) || !search_key(ps, map, opts, &c[0]) || !tern_imap_sp(ps) ||
            !search_key(ps, map, opts, &c[1]))
            return false;
        tern_search *cc = tern_arena_alloc(ps->arena, sizeof(c));
        if (!cc)
            return tern_imap_fail(ps, "out of memory");
        memcpy(cc, c, sizeof(c));
        k->kind = TERN_SEARCH_OR;
        k->children = cc;
        k->n_children = 2;
        return true;
    }
    if (strcmp(kw, "UID") == 0) {
        tern_imap_seqset ss;
        if (!tern_imap_sp(ps) || !tern_imap_parse_seqset(ps, &ss))
            return false;
        k->kind = TERN_SEARCH_UID;
        return tern_imap_uidset(ps, &ss, map, &k->uids);
    }
    if (strcmp(kw, "MODSEQ") == 0) {
        if (!tern_imap_sp(ps))
            return false;
        if (tern_imap_peek(ps, '"')) {
            /* entry-name entry-type-req: per-flag modseqs are the message's here */
            char *ign;
            tern_imap_slice t;
            if (!tern_imap_string(ps, &ign, NULL, false) || !tern_imap_sp(ps) ||
                !tern_imap_atom(ps, &t, NULL) || !tern_imap_sp(ps))
                return tern_imap_fail(ps, "bad MODSEQ search");
        }
        k->kind = TERN_SEARCH_MODSEQ;
        if (opts)
            opts->modseq = true;
        return tern_imap_number(ps, &k->num, INT64_MAX);
    }
    return tern_imap_fail(ps, "unknown search key");
}

bool tern_imap_search(tern_imap_parser *ps, const tern_imap_seqmap *map,
                      tern_imap_search_opts *opts, tern_search **out)
{
    memset(opts, 0, sizeof(*opts));
    if (tern_imap_keyword(ps, "RETURN")) {
        opts->esearch = true;
        if (!tern_imap_sp(ps) || !tern_imap_open(ps))
            return false;
        bool any = false;
        while (!tern_imap_peek(ps, ')')) {
            if (any && !tern_imap_sp(ps))
                return false;
            if (tern_imap_keyword(ps, "MIN"))
                opts->ret_min = true;
            else if (tern_imap_keyword(ps, "MAX"))
                opts->ret_max = true;
            else if (tern_imap_keyword(ps, "ALL"))
                opts->ret_all = true;
            else if (tern_imap_keyword(ps, "COUNT"))
                opts->ret_count = true;
            else if (tern_imap_keyword(ps, "SAVE"))
                opts->ret_save = true;
            else
                return tern_imap_fail(ps, "unknown RETURN option");
            any = true;
        }
        if (!tern_imap_close(ps) || !tern_imap_sp(ps))
            return false;
        if (!any)
            opts->ret_all = true; /* RFC 4731: () means ALL */
    }
    if (tern_imap_keyword(ps, "CHARSET")) {
        char *cs;
        if (!tern_imap_sp(ps) || !tern_imap_astring(ps, &cs, NULL) || !tern_imap_sp(ps))
            return tern_imap_fail(ps, "bad CHARSET");
        opts->charset = cs;
    }
    return tern_imap_search_keys(ps, map, opts, out);
}

bool tern_imap_search_keys(tern_imap_parser *ps, const tern_imap_seqmap *map,
                           tern_imap_search_opts *opts, tern_search **out)
{
    tern_search *root = tern_arena_alloc(ps->arena, sizeof(*root));
    if (!root)
        return tern_imap_fail(ps, "out of memory");
    if (!search_keys(ps, map, opts, root))
        return false;
    if (!tern_imap_at_end(ps))
        return tern_imap_fail(ps, "junk after search keys");
    *out = root;
    return true;
}

bool tern_imap_sort_criteria(tern_imap_parser *ps, tern_imap_sort_crit *out, size_t *n_r)
{
    static const struct {
        const char *name;
        tern_imap_sort_key key;
    } keys[] = {
        {"ARRIVAL", TERN_IMAP_SORT_ARRIVAL}, {"CC", TERN_IMAP_SORT_CC},
        {"DATE", TERN_IMAP_SORT_DATE},       {"FROM", TERN_IMAP_SORT_FROM},
        {"SIZE", TERN_IMAP_SORT_SIZE},       {"SUBJECT", TERN_IMAP_SORT_SUBJECT},
        {"TO", TERN_IMAP_SORT_TO},           {"DISPLAYFROM", TERN_IMAP_SORT_DISPLAYFROM},
        {"DISPLAYTO", TERN_IMAP_SORT_DISPLAYTO},
    };
    size_t n = 0;
    if (!tern_imap_open(ps))
        return false;
    for (;;) {
        if (n && !tern_imap_sp(ps))
            return false;
        if (n == TERN_IMAP_SORT_MAX)
            return tern_imap_fail(ps, "too many sort criteria");
        bool rev = false;
        if (tern_imap_keyword(ps, "REVERSE")) {
            rev = true;
            if (!tern_imap_sp(ps))
                return false;
        }
        size_t k = 0;
        while (k < sizeof(keys) / sizeof(keys[0]) && !tern_imap_keyword(ps, keys[k].name))
            k++;
        if (k == sizeof(keys) / sizeof(keys[0]))
            return tern_imap_fail(ps, "unknown sort key");
        out[n].key = keys[k].key;
        out[n].reverse = rev;
        n++;
        if (tern_imap_peek(ps, ')'))
            break;
    }
    *n_r = n;
    return tern_imap_close(ps);
}

/* ---- fetch attributes --------------------------------------------------- */

static tern_imap_fetch_att *fetch_push(tern_imap_parser *ps, tern_imap_fetch *f, size_t *cap)
{
    if (f->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 8;
        if (nc > 256)
            return tern_imap_fail(ps, "too many fetch items"), NULL;
        tern_imap_fetch_att *na = tern_arena_alloc(ps->arena, nc * sizeof(*na));
        if (!na)
            return tern_imap_fail(ps, "out of memory"), NULL;
        if (f->n)
            memcpy(na, f->atts, f->n * sizeof(*na));
        f->atts = na;
        *cap = nc;
    }
    tern_imap_fetch_att *a = &f->atts[f->n++];
    memset(a, 0, sizeof(*a));
    return a;
}

/* section-spec inside [ ] (the '[' consumed); consumes ']' */
static bool fetch_section(tern_imap_parser *ps, tern_imap_fetch_att *a)
{
    a->sec = TERN_IMAP_SEC_ALL;
    if (tern_imap_char(ps, ']'))
        return true;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
        uint64_t v;
        if (!tern_imap_number(ps, &v, UINT32_MAX) || v == 0)
            return tern_imap_fail(ps, "bad section part");
        if (a->n_part >= TERN_IMAP_MAX_PART_DEPTH)
            return tern_imap_fail(ps, "section nested too deeply");
        a->part[a->n_part++] = (uint32_t)v;
        if (!tern_imap_char(ps, '.'))
            break;
    }
    if (tern_imap_char(ps, ']'))
        return true;
    if (a->binary)
        return tern_imap_fail(ps, "BINARY takes part numbers only");
    if (tern_imap_keyword(ps, "HEADER.FIELDS.NOT") || tern_imap_keyword(ps, "HEADER.FIELDS")) {
        a->sec = ps->p[-1] == 'T' ? TERN_IMAP_SEC_HEADER_FIELDS_NOT
                                  : TERN_IMAP_SEC_HEADER_FIELDS;
        if (!tern_imap_sp(ps) || !tern_imap_open(ps))
            return false;
        size_t cap = 0;
        for (;;) {
            char *f;
            if (!tern_imap_astring(ps, &f, NULL))
                return false;
            if (a->n_fields == cap) {
                if (cap >= 256)
                    return tern_imap_fail(ps, "too many header fields");
                size_t nc = cap ? cap * 2 : 8;
                char **nf = tern_arena_alloc(ps->arena, nc * sizeof(*nf));
                if (!nf)
                    return tern_imap_fail(ps, "out of memory");
                if (a->n_fields)
                    memcpy(nf, a->fields, a->n_fields * sizeof(*nf));
                a->fields = nf;
                cap = nc;
            }
            a->fields[a->n_fields++] = f;
            if (tern_imap_peek(ps, ')'))
                break;
            if (!tern_imap_sp(ps))
                return false;
        }
        if (!tern_imap_close(ps))
            return false;
    } else if (tern_imap_keyword(ps, "HEADER") || (ps->end - ps->p >= 6 &&
                                                   strncasecmp(ps->p, "HEADER]", 7) == 0 &&
                                                   (ps->p += 6))) {
        a->sec = TERN_IMAP_SEC_HEADER;
    } else if (ps->end - ps->p >= 4 && strncasecmp(ps->p, "TEXT", 4) == 0) {
        ps->p += 4;
        a->sec = TERN_IMAP_SEC_TEXT;
    } else if (a->n_part > 0 && ps->end - ps->p >= 4 && strncasecmp(ps->p, "MIME", 4) == 0) {
        ps->p += 4;
        a->sec = TERN_IMAP_SEC_MIME;
    } else {
        return tern_imap_fail(ps, "bad section");
    }
    if (!tern_imap_char(ps, ']'))
        return tern_imap_fail(ps, "expected ']'");
    return true;
}

static bool fetch_partial(tern_imap_parser *ps, tern_imap_fetch_att *a)
{
    if (!tern_imap_char(ps, '<'))
        return true;
    if (!tern_imap_number(ps, &a->partial_off, UINT32_MAX) || !tern_imap_char(ps, '.') ||
        !tern_imap_number(ps, &a->partial_len, UINT32_MAX) || a->partial_len == 0 ||
        !tern_imap_char(ps, '>'))
        return tern_imap_fail(ps, "bad partial");
    a->has_partial = true;
    return true;
}

static bool fetch_att(tern_imap_parser *ps, tern_imap_fetch *f, size_t *cap)
{
    tern_imap_slice w = {ps->p, 0};
    /* The item name runs to '[' (atom chars without ']'). */
    while (ps->p < ps->end && *ps->p != '[' && is_atom_char((unsigned char)*ps->p, NULL))
        ps->p++;
    w.len = (size_t)(ps->p - w.p);
    if (w.len == 0)
        return tern_imap_fail(ps, "bad fetch item");
    char kw[24];
    if (w.len >= sizeof(kw))
        return tern_imap_fail(ps, "unknown fetch item");
    for (size_t i = 0; i < w.len; i++)
        kw[i] = (char)toupper((unsigned char)w.p[i]);
    kw[w.len] = '\0';
    if (strcmp(kw, "ALL") == 0 || strcmp(kw, "FAST") == 0 || strcmp(kw, "FULL") == 0) {
        if (f->n > 0 || ps->depth > 0)
            return tern_imap_fail(ps, "macros stand alone");
        static const tern_imap_fa_kind fast[] = {TERN_IMAP_FA_FLAGS, TERN_IMAP_FA_INTERNALDATE,
                                                 TERN_IMAP_FA_RFC822_SIZE,
                                                 TERN_IMAP_FA_ENVELOPE,
                                                 TERN_IMAP_FA_BODY_STRUCT};
        size_t n = kw[1] == 'A' ? 3 : kw[1] == 'L' ? 4 : 5;
        for (size_t i = 0; i < n; i++) {
            tern_imap_fetch_att *a = fetch_push(ps, f, cap);
            if (!a)
                return false;
            a->kind = fast[i];
        }
        return true;
    }
    tern_imap_fetch_att *a = fetch_push(ps, f, cap);
    if (!a)
        return false;
    static const struct {
        const char *name;
        tern_imap_fa_kind kind;
    } simple[] = {
        {"UID", TERN_IMAP_FA_UID},
        {"FLAGS", TERN_IMAP_FA_FLAGS},
        {"INTERNALDATE", TERN_IMAP_FA_INTERNALDATE},
        {"RFC822.SIZE", TERN_IMAP_FA_RFC822_SIZE},
        {"MODSEQ", TERN_IMAP_FA_MODSEQ},
        {"ENVELOPE", TERN_IMAP_FA_ENVELOPE},
        {"BODYSTRUCTURE", TERN_IMAP_FA_BODYSTRUCTURE},
        {"EMAILID", TERN_IMAP_FA_EMAILID},
        {"THREADID", TERN_IMAP_FA_THREADID},
    };
    for (size_t i = 0; i < sizeof(simple) / sizeof(simple[0]); i++)
        if (strcmp(kw, simple[i].name) == 0) {
            a->kind = simple[i].kind;
            return true;
        }
    if (strcmp(kw, "RFC822") == 0 || strcmp(kw, "RFC822.HEADER") == 0 ||
        strcmp(kw, "RFC822.TEXT") == 0) {
        a->kind = TERN_IMAP_FA_SECTION;
        a->rfc822 = kw[6] == '\0' ? 1 : kw[7] == 'H' ? 2 : 3;
        a->sec = a->rfc822 == 1 ? TERN_IMAP_SEC_ALL
                 : a->rfc822 == 2 ? TERN_IMAP_SEC_HEADER
                                  : TERN_IMAP_SEC_TEXT;
        a->peek = a->rfc822 == 2;
        a->name = a->rfc822 == 1 ? "RFC822" : a->rfc822 == 2 ? "RFC822.HEADER" : "RFC822.TEXT";
        return true;
    }
    bool body = strcmp(kw, "BODY") == 0, peek = strcmp(kw, "BODY.PEEK") == 0;
    bool bin = strcmp(kw, "BINARY") == 0, binpeek = strcmp(kw, "BINARY.PEEK") == 0;
    bool binsize = strcmp(kw, "BINARY.SIZE") == 0;
    if (body && !tern_imap_peek(ps, '[')) {
        a->kind = TERN_IMAP_FA_BODY_STRUCT;
        return true;
    }
    if (!(body || peek || bin || binpeek || binsize))
        return tern_imap_fail(ps, "unknown fetch item");
    if (!tern_imap_char(ps, '['))
        return tern_imap_fail(ps, "expected '['");
    a->kind = binsize ? TERN_IMAP_FA_BINARY_SIZE : TERN_IMAP_FA_SECTION;
    a->peek = peek || binpeek;
    a->binary = bin || binpeek || binsize;
    const char *sec_start = ps->p;
    if (!fetch_section(ps, a))
        return false;
    /* The reply names the item without .PEEK and without the partial's length. */
    const char *base = a->binary ? (binsize ? "BINARY.SIZE" : "BINARY") : "BODY";
    a->name = tern_arena_printf(ps->arena, "%s[%.*s", base, (int)(ps->p - sec_start), sec_start);
    if (!a->name)
        return tern_imap_fail(ps, "out of memory");
    if (!binsize && !fetch_partial(ps, a))
        return false;
    return true;
}

bool tern_imap_fetch_atts(tern_imap_parser *ps, tern_imap_fetch *out)
{
    memset(out, 0, sizeof(*out));
    size_t cap = 0;
    if (tern_imap_peek(ps, '(')) {
        if (!tern_imap_open(ps))
            return false;
        for (;;) {
            if (!fetch_att(ps, out, &cap))
                return false;
            if (tern_imap_peek(ps, ')'))
                break;
            if (!tern_imap_sp(ps))
                return false;
        }
        if (!tern_imap_close(ps))
            return false;
    } else if (!fetch_att(ps, out, &cap)) {
        return false;
    }
    if (tern_imap_char(ps, ' ')) {
        if (!tern_imap_open(ps))
            return false;
        for (bool first = true; !tern_imap_peek(ps, ')'); first = false) {
            if (!first && !tern_imap_sp(ps))
                return false;
            if (tern_imap_keyword(ps, "CHANGEDSINCE")) {
                if (!tern_imap_sp(ps) ||
                    !tern_imap_number(ps, &out->changedsince_modseq, INT64_MAX))
                    return false;
                out->changedsince = true;
            } else if (tern_imap_keyword(ps, "VANISHED")) {
                out->vanished = true;
            } else {
                return tern_imap_fail(ps, "unknown FETCH modifier");
            }
        }
        if (!tern_imap_close(ps))
            return false;
    }
    if (!tern_imap_at_end(ps))
        return tern_imap_fail(ps, "junk after fetch items");
    if (out->vanished && !out->changedsince)
        return tern_imap_fail(ps, "VANISHED needs CHANGEDSINCE");
    return true;
}

/* ---- modified UTF-7 -------------------------------------------------------- */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

/* One UTF-8 code point; returns its length or 0 when invalid. */
static size_t utf8_decode(const unsigned char *s, uint32_t *cp)
{
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    size_t n;
    uint32_t c;
    if ((s[0] & 0xe0) == 0xc0)
        n = 2, c = s[0] & 0x1f;
    else if ((s[0] & 0xf0) == 0xe0)
        n = 3, c = s[0] & 0x0f;
    else if ((s[0] & 0xf8) == 0xf0)
        n = 4, c = s[0] & 0x07;
    else
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3f);
    }
    static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (c < min[n] || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *cp = c;
    return n;
}

bool tern_imap_mutf7_encode(const char *utf8, tern_arena *a, char **out)
{
    size_t len = strlen(utf8);
    /* Worst case: each code point -> 2 UTF-16 units -> ~6 base64 chars, + shifts. */
    char *d = tern_arena_alloc(a, len * 4 + 8);
    if (!d)
        return false;
    size_t k = 0;
    const unsigned char *s = (const unsigned char *)utf8;
    while (*s) {
        if (*s >= 0x20 && *s < 0x7f) {
            if (*s == '&') {
                d[k++] = '&';
                d[k++] = '-';
            } else {
                d[k++] = (char)*s;
            }
            s++;
            continue;
        }
        d[k++] = '&';
        uint32_t bits = 0;
        int nbits = 0;
        while (*s && !(*s >= 0x20 && *s < 0x7f)) {
            uint32_t cp;
            size_t n = utf8_decode(s, &cp);
            if (n == 0)
                return false;
            s += n;
            uint16_t units[2];
            int nu = 1;
            if (cp >= 0x10000) {
                cp -= 0x10000;
                units[0] = (uint16_t)(0xd800 | (cp >> 10));
                units[1] = (uint16_t)(0xdc00 | (cp & 0x3ff));
                nu = 2;
            } else {
                units[0] = (uint16_t)cp;
            }
            for (int u = 0; u < nu; u++) {
                bits = (bits << 16) | units[u];
                nbits += 16;
                while (nbits >= 6) {
                    nbits -= 6;
                    d[k++] = b64[(bits >> nbits) & 0x3f];
                }
                bits &= (1u << nbits) - 1;
            }
        }
        if (nbits > 0)
            d[k++] = b64[(bits << (6 - nbits)) & 0x3f];
        d[k++] = '-';
    }
    d[k] = '\0';
    *out = d;
    return true;
}

bool tern_imap_mutf7_decode(const char *m, tern_arena *a, char **out)
{
    size_t len = strlen(m);
    char *d = tern_arena_alloc(a, len * 2 + 1);
    if (!d)
        return false;
    size_t k = 0;
    const unsigned char *s = (const unsigned char *)m;
    while (*s) {
        if (*s >= 0x80 || *s < 0x20)
            return false;
        if (*s != '&') {
            d[k++] = (char)*s++;
            continue;
        }
        s++;
        if (*s == '-') {
            d[k++] = '&';
            s++;
            continue;
        }
        uint32_t bits = 0;
        int nbits = 0;
        uint32_t hi = 0;
        size_t nunits = 0;
        while (*s && *s != '-') {
            const char *p = strchr(b64, *s);
            if (!p || !*p)
                return false;
            bits = (bits << 6) | (uint32_t)(p - b64);
            nbits += 6;
            s++;
            if (nbits >= 16) {
                nbits -= 16;
                uint32_t u = (bits >> nbits) & 0xffff;
                bits &= (1u << nbits) - 1;
                nunits++;
                uint32_t cp;
                if (u >= 0xd800 && u <= 0xdbff) {
                    if (hi)
                        return false;
                    hi = u;
                    continue;
                }
                if (u >= 0xdc00 && u <= 0xdfff) {
                    if (!hi)
                        return false;
                    cp = 0x10000 + ((hi - 0xd800) << 10) + (u - 0xdc00);
                    hi = 0;
                } else {
                    if (hi)
                        return false;
                    cp = u;
                }
                if (cp >= 0x20 && cp < 0x7f)
                    return false; /* must have been written directly */
                if (cp < 0x80) {
                    d[k++] = (char)cp;
                } else if (cp < 0x800) {
                    d[k++] = (char)(0xc0 | (cp >> 6));
                    d[k++] = (char)(0x80 | (cp & 0x3f));
                } else if (cp < 0x10000) {
                    d[k++] = (char)(0xe0 | (cp >> 12));
                    d[k++] = (char)(0x80 | ((cp >> 6) & 0x3f));
                    d[k++] = (char)(0x80 | (cp & 0x3f));
                } else {
                    d[k++] = (char)(0xf0 | (cp >> 18));
                    d[k++] = (char)(0x80 | ((cp >> 12) & 0x3f));
                    d[k++] = (char)(0x80 | ((cp >> 6) & 0x3f));
                    d[k++] = (char)(0x80 | (cp & 0x3f));
                }
            }
        }
        if (*s != '-' || hi || nunits == 0 || nbits >= 6 || bits != 0)
            return false;
        s++;
    }
    d[k] = '\0';
    *out = d;
    return true;
}
