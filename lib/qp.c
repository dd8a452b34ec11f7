/* Quoted-printable decoding (resumable, one byte at a time through a small
 * state machine) and encoding. Input: untrusted encoded text; see qp.h for
 * the leniency rules. */
#include "lib/qp.h"

#include <stdbool.h>
#include <string.h>

enum { Q_NORMAL = 0, Q_CR, Q_EQ, Q_EQ_WS, Q_HEX1 };

typedef struct {
    tern_buf *buf;
    uint8_t b[512];
    size_t n;
    int rc;
} outq;

static void put(outq *o, const void *d, size_t n)
{
    const uint8_t *s = d;
    while (n > 0 && o->rc == 0) {
        if (o->n == sizeof o->b) {
            o->rc = tern_buf_append(o->buf, o->b, o->n);
            o->n = 0;
        }
        size_t k = sizeof o->b - o->n;
        if (k > n)
            k = n;
        memcpy(o->b + o->n, s, k);
        o->n += k;
        s += k;
        n -= k;
    }
}

static int flush(outq *o)
{
    if (o->rc == 0 && o->n)
        o->rc = tern_buf_append(o->buf, o->b, o->n);
    o->n = 0;
    return o->rc;
}

static int hexv(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

void tern_qp_decoder_init(tern_qp_decoder *d)
{
    d->state = Q_NORMAL;
    d->hex1 = 0;
    d->ws_len = 0;
}

static void hold_ws(tern_qp_decoder *d, outq *o, uint8_t c)
{
    if (d->ws_len == sizeof d->ws) {
        put(o, d->ws, d->ws_len); /* too long to be transport padding */
        d->ws_len = 0;
    }
    d->ws[d->ws_len++] = c;
}

static void flush_ws(tern_qp_decoder *d, outq *o)
{
    put(o, d->ws, d->ws_len);
    d->ws_len = 0;
}

int tern_qp_decode(tern_qp_decoder *d, tern_buf *out, const uint8_t *in, size_t len)
{
    outq o = {.buf = out};
    for (size_t i = 0; i < len && o.rc == 0;) {
        uint8_t c = in[i];
        switch (d->state) {
        case Q_NORMAL:
            if (c == ' ' || c == '\t') {
                hold_ws(d, &o, c);
            } else if (c == '\n') {
                d->ws_len = 0; /* trailing whitespace was transport padding */
                put(&o, "\n", 1);
            } else if (c == '\r') {
                d->state = Q_CR;
            } else if (c == '=') {
                flush_ws(d, &o);
                d->state = Q_EQ;
            } else {
                flush_ws(d, &o);
                put(&o, &c, 1);
            }
            i++;
            break;
        case Q_CR:
            d->state = Q_NORMAL;
            if (c == '\n') {
                d->ws_len = 0;
                put(&o, "\r\n", 2);
                i++;
            } else {
                flush_ws(d, &o);
                put(&o, "\r", 1); /* a bare CR is data; c is read again */
            }
            break;
        case Q_EQ:
            if (c == '\n') {
                d->state = Q_NORMAL; /* soft line break */
                i++;
            } else if (c == ' ' || c == '\t' || c == '\r') {
                d->state = Q_EQ_WS;
                hold_ws(d, &o, c);
                i++;
            } else if (hexv(c) >= 0) {
                d->hex1 = c;
                d->state = Q_HEX1;
                i++;
            } else {
                put(&o, "=", 1); /* not an escape: kept; c is read again */
                d->state = Q_NORMAL;
            }
            break;
        case Q_EQ_WS:
            if (c == '\n') {
                d->ws_len = 0; /* "=" + padding + line end: a soft break */
                d->state = Q_NORMAL;
                i++;
            } else if (c == ' ' || c == '\t' || c == '\r') {
                hold_ws(d, &o, c);
                i++;
            } else {
                put(&o, "=", 1);
                flush_ws(d, &o);
                d->state = Q_NORMAL;
            }
            break;
        case Q_HEX1: {
            int l = hexv(c);
            d->state = Q_NORMAL;
            if (l >= 0) {
                uint8_t b = (uint8_t)(hexv(d->hex1) * 16 + l);
                put(&o, &b, 1);
                i++;
            } else {
                put(&o, "=", 1);
                put(&o, &d->hex1, 1);
            }
            break;
        }
        }
    }
    return flush(&o);
}

int tern_qp_decode_finish(tern_qp_decoder *d, tern_buf *out)
{
    outq o = {.buf = out};
    switch (d->state) {
    case Q_HEX1:
        put(&o, "=", 1);
        put(&o, &d->hex1, 1);
        break;
    case Q_CR:
        flush_ws(d, &o);
        put(&o, "\r", 1);
        break;
    default:
        /* Trailing whitespace is padding; a last "=" is a soft break whose
         * line end went to the next boundary line. */
        break;
    }
    d->ws_len = 0;
    d->state = Q_NORMAL;
    return flush(&o);
}

#define QP_LINE_MAX 76

int tern_qp_encode(tern_buf *out, const uint8_t *in, size_t len, unsigned flags)
{
    static const char hex[] = "0123456789ABCDEF";
    bool binary = flags & TERN_QP_BINARY;
    outq o = {.buf = out};
    size_t col = 0;
    for (size_t i = 0; i < len && o.rc == 0; i++) {
        uint8_t c = in[i];
        if (!binary && (c == '\n' || (c == '\r' && i + 1 < len && in[i + 1] == '\n'))) {
            if (c == '\r')
                i++;
            put(&o, "\r\n", 2);
            col = 0;
            continue;
        }
        bool at_eol = i + 1 == len ||
                      (!binary && (in[i + 1] == '\n' ||
                                   (in[i + 1] == '\r' && i + 2 < len && in[i + 2] == '\n')));
        bool enc = c == '=' || (c < 0x20 && c != '\t') || c >= 0x7f ||
                   ((c == ' ' || c == '\t') && at_eol);
        size_t w = enc ? 3 : 1;
        /* Room for the character and, unless the line ends here, a "=". */
        if (col + w > (at_eol ? QP_LINE_MAX : QP_LINE_MAX - 1)) {
            put(&o, "=\r\n", 3);
            col = 0;
        }
        if (!enc && col == 0 &&
            (c == '.' || (c == 'F' && len - i >= 5 && memcmp(in + i, "From ", 5) == 0)))
            enc = true, w = 3;
        if (enc) {
            uint8_t e[3] = {'=', (uint8_t)hex[c >> 4], (uint8_t)hex[c & 15]};
            put(&o, e, 3);
        } else {
            put(&o, &c, 1);
        }
        col += w;
    }
    return flush(&o);
}
