/* The pure POP3 parsers of pop3_parser.h. Input: network bytes (untrusted)
 * for the line reader and the command splitter; the store's message bytes
 * (untrusted content, any line endings) for the stuffer. */
#include <ctype.h>
#include <string.h>
#include <strings.h>

#include "protocols/pop3/pop3_parser.h"

/* ---- command lines ---------------------------------------------------- */

void tern_pop3_line_init(tern_pop3_line_reader *r, char *buf, size_t max)
{
    r->buf = buf;
    r->max = max;
    r->len = 0;
    r->overflow = false;
    r->bad = false;
    r->cr = false;
    r->done = false;
}

size_t tern_pop3_line_feed(tern_pop3_line_reader *r, const uint8_t *in, size_t len,
                           tern_pop3_line_status *st_r)
{
    /* Room for the text: the limit counts the CRLF, and buf keeps a NUL. */
    size_t room = r->max > 2 ? r->max - 2 : 0;
    if (r->done) {
        r->len = 0;
        r->done = false;
    }
    for (size_t i = 0; i < len; i++) {
        uint8_t b = in[i];
        if (b == '\n') {
            tern_pop3_line_status st = r->overflow ? TERN_POP3_LINE_TOO_LONG
                                       : r->bad    ? TERN_POP3_LINE_BAD_CHAR
                                                   : TERN_POP3_LINE_OK;
            if (st == TERN_POP3_LINE_OK) {
                r->buf[r->len] = '\0';
                r->done = true;
            } else {
                r->len = 0;
            }
            r->overflow = r->bad = r->cr = false;
            *st_r = st;
            return i + 1;
        }
        if (r->cr) {
            /* A CR not followed by LF is not a line end and not text. */
            r->bad = true;
            r->cr = false;
        }
        if (b == '\r') {
            r->cr = true;
            continue;
        }
        if (b == 0 || (b < 0x20 && b != '\t') || b == 0x7f)
            r->bad = true;
        if (r->overflow)
            continue;
        if (r->len >= room) {
            r->overflow = true;
            continue;
        }
        r->buf[r->len++] = (char)b;
    }
    *st_r = TERN_POP3_LINE_MORE;
    return len;
}

/* ---- commands --------------------------------------------------------- */

static const char *const verb_names[TERN_POP3_CMD__COUNT] = {
    [TERN_POP3_CMD_UNKNOWN] = "?",  [TERN_POP3_CMD_USER] = "USER", [TERN_POP3_CMD_PASS] = "PASS",
    [TERN_POP3_CMD_APOP] = "APOP",  [TERN_POP3_CMD_AUTH] = "AUTH", [TERN_POP3_CMD_STLS] = "STLS",
    [TERN_POP3_CMD_CAPA] = "CAPA",  [TERN_POP3_CMD_STAT] = "STAT", [TERN_POP3_CMD_LIST] = "LIST",
    [TERN_POP3_CMD_RETR] = "RETR",  [TERN_POP3_CMD_DELE] = "DELE", [TERN_POP3_CMD_NOOP] = "NOOP",
    [TERN_POP3_CMD_RSET] = "RSET",  [TERN_POP3_CMD_TOP] = "TOP",   [TERN_POP3_CMD_UIDL] = "UIDL",
    [TERN_POP3_CMD_QUIT] = "QUIT",  [TERN_POP3_CMD_UTF8] = "UTF8", [TERN_POP3_CMD_LANG] = "LANG",
};

const char *tern_pop3_verb_name(tern_pop3_verb v)
{
    return (unsigned)v < TERN_POP3_CMD__COUNT ? verb_names[v] : "?";
}

int tern_pop3_parse_command(const char *line, size_t len, tern_pop3_cmd *cmd)
{
    memset(cmd, 0, sizeof(*cmd));
    size_t k = 0;
    while (k < len && line[k] != ' ')
        k++;
    if (k == 0 || k > 4)
        return -1;
    for (size_t i = 0; i < k; i++)
        if (!isalnum((unsigned char)line[i]))
            return -1;
    cmd->name.p = line;
    cmd->name.len = k;
    for (int v = 1; v < TERN_POP3_CMD__COUNT; v++)
        if (strlen(verb_names[v]) == k && strncasecmp(line, verb_names[v], k) == 0) {
            cmd->verb = (tern_pop3_verb)v;
            break;
        }
    if (k == len)
        return 0;
    /* line[k] is the one space after the keyword. */
    cmd->rest.p = line + k + 1;
    cmd->rest.len = len - k - 1;
    const char *p = cmd->rest.p, *end = line + len;
    if (p == end) {
        cmd->empty_arg = true;
        return 0;
    }
    for (;;) {
        const char *e = p;
        while (e < end && *e != ' ')
            e++;
        if (e == p)
            cmd->empty_arg = true;
        else if (cmd->n_args < TERN_POP3_MAX_ARGS) {
            cmd->args[cmd->n_args].p = p;
            cmd->args[cmd->n_args].len = (size_t)(e - p);
            cmd->n_args++;
        } else {
            cmd->extra_args = true;
        }
        if (e == end)
            break;
        p = e + 1;
        if (p == end) {
            cmd->empty_arg = true;
            break;
        }
    }
    return 0;
}

int tern_pop3_parse_number(tern_pop3_slice s, uint64_t max, uint64_t *n_r)
{
    if (s.len == 0 || s.len > 10)
        return -1;
    uint64_t n = 0;
    for (size_t i = 0; i < s.len; i++) {
        if (s.p[i] < '0' || s.p[i] > '9')
            return -1;
        n = n * 10 + (uint64_t)(s.p[i] - '0');
    }
    if (n > max)
        return -1;
    *n_r = n;
    return 0;
}

/* ---- multi-line responses --------------------------------------------- */

void tern_pop3_stuffer_init(tern_pop3_stuffer *s, bool top, uint64_t top_lines)
{
    memset(s, 0, sizeof(*s));
    s->top = top;
    s->top_lines = top_lines;
    s->line_start = true;
    s->line_empty = true;
}

/* A line ended (its CRLF is out): the first empty one ends the header;
 * after it TOP counts body lines. */
static void stuffer_eol(tern_pop3_stuffer *s)
{
    if (!s->in_body) {
        if (s->line_empty)
            s->in_body = true;
    } else {
        s->body_lines++;
    }
    if (s->top && s->in_body && s->body_lines >= s->top_lines)
        s->done = true;
    s->line_start = true;
    s->line_empty = true;
}

size_t tern_pop3_stuffer_feed(tern_pop3_stuffer *s, const uint8_t *in, size_t len, uint8_t *out,
                              size_t out_cap, size_t *out_len_r)
{
    size_t o = 0, i = 0;
    while (i < len) {
        if (s->done) {
            i = len; /* TOP has what it wants: the rest is dropped */
            break;
        }
        uint8_t b = in[i];
        if (!s->cr && b != '\r' && b != '\n' && !(s->line_start && b == '.')) {
            /* The common case, text within a line: copied as a run up to
             * the next CR or LF (memchr is much faster than a byte loop). */
            size_t run = len - i < out_cap - o ? len - i : out_cap - o;
            if (run == 0)
                break;
            const uint8_t *e = memchr(in + i, '\n', run);
            if (e)
                run = (size_t)(e - (in + i));
            e = memchr(in + i, '\r', run);
            if (e)
                run = (size_t)(e - (in + i));
            memcpy(out + o, in + i, run);
            o += run;
            i += run;
            s->line_start = false;
            s->line_empty = false;
            continue;
        }
        /* One input byte writes at most 4: a held CR's CRLF and "..". */
        if (out_cap - o < 4)
            break;
        i++;
        if (s->cr) {
            s->cr = false;
            out[o++] = '\r';
            out[o++] = '\n';
            stuffer_eol(s);
            if (b == '\n')
                continue;
            /* A lone CR ended its line too: clients want CRLF only. */
            if (s->done)
                continue;
        }
        if (b == '\r') {
            s->cr = true;
            continue;
        }
        if (b == '\n') {
            out[o++] = '\r';
            out[o++] = '\n';
            stuffer_eol(s);
            continue;
        }
        if (s->line_start && b == '.')
            out[o++] = '.';
        out[o++] = b;
        s->line_start = false;
        s->line_empty = false;
    }
    s->out_bytes += o;
    *out_len_r = o;
    return i;
}

bool tern_pop3_stuffer_done(const tern_pop3_stuffer *s)
{
    return s->done;
}

size_t tern_pop3_stuffer_finish(tern_pop3_stuffer *s, uint8_t *out, size_t out_cap)
{
    size_t o = 0;
    if (out_cap < 5)
        return 0;
    if (!s->done && (s->cr || !s->line_start)) {
        out[o++] = '\r';
        out[o++] = '\n';
    }
    s->cr = false;
    s->line_start = true;
    memcpy(out + o, ".\r\n", 3);
    o += 3;
    s->out_bytes += o;
    s->done = true;
    return o;
}
