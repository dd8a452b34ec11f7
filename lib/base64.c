/* RFC 4648 base64, strict decoder and encoder. Input: untrusted text;
 * every index is checked against the caller's capacity. */
#include "lib/base64.h"

#include <stdbool.h>

static const char alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

long tern_base64_encode(const uint8_t *in, size_t len, char *out, size_t cap)
{
    size_t need = TERN_BASE64_ENCODED_LEN(len);
    if (len > (SIZE_MAX - 3) / 4 * 3 || cap < need + 1)
        return -1;
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = alphabet[(v >> 6) & 63];
        out[o++] = alphabet[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = i + 1 < len ? alphabet[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    return (long)o;
}

static int value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int tern_base64_decode(const char *in, size_t len, uint8_t *out, size_t cap, size_t *len_r)
{
    if (len % 4 != 0)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        bool last = i + 4 == len;
        int a = value((unsigned char)in[i]), b = value((unsigned char)in[i + 1]);
        int c = value((unsigned char)in[i + 2]), d = value((unsigned char)in[i + 3]);
        if (a < 0 || b < 0)
            return -1;
        size_t n = 3;
        if (last && in[i + 3] == '=') {
            if (in[i + 2] == '=') {
                if (b & 15)
                    return -1;
                n = 1;
            } else {
                if (c < 0 || (c & 3))
                    return -1;
                n = 2;
            }
        } else if (c < 0 || d < 0) {
            return -1;
        }
        if (cap - o < n)
            return -1;
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12;
        if (n >= 2)
            v |= (uint32_t)c << 6;
        if (n == 3)
            v |= (uint32_t)d;
        out[o++] = (uint8_t)(v >> 16);
        if (n >= 2)
            out[o++] = (uint8_t)(v >> 8);
        if (n == 3)
            out[o++] = (uint8_t)v;
    }
    *len_r = o;
    return 0;
}

/* ---- lenient stream decoding for MIME bodies ------------------------------ */

void tern_base64_stream_init(tern_base64_stream *s)
{
    s->acc = 0;
    s->bits = 0;
    s->done = 0;
}

static int stream_val(uint8_t c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

size_t tern_base64_stream_decode(tern_base64_stream *s, const uint8_t *in, size_t len, uint8_t *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len && !s->done; i++) {
        if (in[i] == '=') {
            s->done = 1; /* padding: the data is over; the partial group's bits were padding */
            break;
        }
        int v = stream_val(in[i]);
        if (v < 0)
            continue;
        s->acc = (s->acc << 6) | (uint32_t)v;
        s->bits += 6;
        if (s->bits >= 8) {
            s->bits -= 8;
            out[o++] = (uint8_t)(s->acc >> s->bits);
            s->acc &= (1u << s->bits) - 1;
        }
    }
    return o;
}
