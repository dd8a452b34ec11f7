/* RFC 5322 header section parser: a byte-at-a-time state machine, so any
 * chunking gives the same fields. Input: untrusted bytes; see header.h for
 * the leniency rules and the limits. */
#include "lib/header.h"

#include <string.h>

enum {
    S_LINE = 0,  /* at the start of a line */
    S_NAME,
    S_NAME_WS,   /* WSP after the name, before the colon (obs-optional) */
    S_VALUE,
    S_VALUE_CR,  /* a CR in a value: a line end if LF follows */
    S_BLANK_CR,  /* a CR at the start of a line: the end if LF follows */
    S_SKIP,      /* the rest of a line that is not a field */
};

void tern_header_parser_init(tern_header_parser *p, const tern_header_limits *lim)
{
    memset(p, 0, offsetof(tern_header_parser, name));
    p->lim.max_total = 256 * 1024;
    p->lim.max_fields = 1000;
    p->lim.max_value = 8192;
    if (lim) {
        if (lim->max_total)
            p->lim.max_total = lim->max_total;
        if (lim->max_fields)
            p->lim.max_fields = lim->max_fields;
        if (lim->max_value)
            p->lim.max_value = lim->max_value;
    }
    if (p->lim.max_value > TERN_HEADER_VALUE_MAX)
        p->lim.max_value = TERN_HEADER_VALUE_MAX;
    p->state = S_LINE;
}

static bool is_wsp(uint8_t c)
{
    return c == ' ' || c == '\t';
}

static void value_add(tern_header_parser *p, uint8_t c)
{
    if (p->value_len == 0 && is_wsp(c))
        return; /* leading whitespace is trimmed as it comes */
    if (p->value_len < p->lim.max_value)
        p->value[p->value_len++] = (char)c;
    else
        p->value_truncated = true;
}

static void skip_line(tern_header_parser *p, int next_state)
{
    p->skipped_lines++;
    p->skip_cont = true;
    p->state = next_state;
}

static tern_header_event emit(tern_header_parser *p, tern_header_field *f)
{
    while (p->value_len > 0) {
        char c = p->value[p->value_len - 1];
        if (c != ' ' && c != '\t' && c != '\r')
            break;
        p->value_len--;
    }
    f->name = p->name;
    f->name_len = p->name_len;
    f->value = p->value;
    f->value_len = p->value_len;
    f->offset = p->field_offset;
    f->truncated = p->value_truncated;
    p->pending = false;
    return TERN_HEADER_FIELD;
}

static void start_value(tern_header_parser *p)
{
    p->n_fields++;
    if (p->n_fields > p->lim.max_fields) {
        /* Read, not handed out: its continuation lines are skipped too. */
        p->skip_cont = true;
        p->state = S_SKIP;
        return;
    }
    p->pending = true;
    p->value_len = 0;
    p->value_truncated = false;
    p->state = S_VALUE;
}

tern_header_event tern_header_parser_feed(tern_header_parser *p, const uint8_t *data, size_t len,
                                          size_t *used_r, tern_header_field *field_r)
{
    size_t i = 0;
    tern_header_event ev = TERN_HEADER_MORE;

    if (p->ended) {
        *used_r = 0;
        return TERN_HEADER_END;
    }
    while (i < len) {
        if (p->size >= p->lim.max_total) {
            if (p->pending) {
                ev = emit(p, field_r);
                break;
            }
            p->ended = true;
            p->truncated_total = true;
            ev = TERN_HEADER_END;
            break;
        }
        uint8_t c = data[i];
        switch (p->state) {
        case S_LINE:
            if (is_wsp(c)) {
                if (p->pending) {
                    value_add(p, c);
                    p->state = S_VALUE;
                } else if (p->skip_cont) {
                    p->state = S_SKIP;
                } else {
                    skip_line(p, S_SKIP);
                }
                break;
            }
            if (p->pending) {
                /* Not a continuation: the field is complete. This byte is
                 * read again on the next call. */
                ev = emit(p, field_r);
                goto out;
            }
            if (c == '\n') {
                i++;
                p->size++;
                p->ended = true;
                ev = TERN_HEADER_END;
                goto out;
            }
            if (c == '\r') {
                p->state = S_BLANK_CR;
                break;
            }
            p->skip_cont = false;
            p->name_len = 0;
            p->field_offset = p->size;
            p->state = S_NAME;
            continue; /* the same byte, as a name byte */
        case S_NAME:
            if (c == ':') {
                if (p->name_len == 0)
                    skip_line(p, S_SKIP);
                else
                    start_value(p);
            } else if (is_wsp(c)) {
                p->state = S_NAME_WS;
            } else if (c == '\n') {
                skip_line(p, S_LINE);
            } else if (c < 0x21 || c == 0x7f || p->name_len >= TERN_HEADER_NAME_MAX) {
                skip_line(p, S_SKIP);
            } else {
                p->name[p->name_len++] = (char)c;
            }
            break;
        case S_NAME_WS:
            if (c == ':')
                start_value(p);
            else if (c == '\n')
                skip_line(p, S_LINE);
            else if (!is_wsp(c))
                skip_line(p, S_SKIP);
            break;
        case S_VALUE:
            if (c == '\n')
                p->state = S_LINE;
            else if (c == '\r')
                p->state = S_VALUE_CR;
            else
                value_add(p, c);
            break;
        case S_VALUE_CR:
            if (c == '\n') {
                p->state = S_LINE;
                break;
            }
            value_add(p, '\r'); /* a bare CR is data */
            p->state = S_VALUE;
            continue;
        case S_BLANK_CR:
            if (c == '\n') {
                i++;
                p->size++;
                p->ended = true;
                ev = TERN_HEADER_END;
                goto out;
            }
            skip_line(p, S_SKIP);
            continue;
        case S_SKIP:
            if (c == '\n')
                p->state = S_LINE;
            break;
        }
        i++;
        p->size++;
    }
out:
    *used_r = i;
    return ev;
}

tern_header_event tern_header_parser_finish(tern_header_parser *p, tern_header_field *field_r)
{
    if (p->ended)
        return TERN_HEADER_END;
    if (p->pending)
        return emit(p, field_r);
    p->ended = true;
    return TERN_HEADER_END;
}

bool tern_header_name_is(const tern_header_field *f, const char *name)
{
    size_t n = strlen(name);
    if (n != f->name_len)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char a = (unsigned char)f->name[i], b = (unsigned char)name[i];
        if (a >= 'A' && a <= 'Z')
            a = (unsigned char)(a + 32);
        if (b >= 'A' && b <= 'Z')
            b = (unsigned char)(b + 32);
        if (a != b)
            return false;
    }
    return true;
}
