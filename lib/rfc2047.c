/* RFC 2047 encoded-word decoding and charset conversion to UTF-8 through
 * glibc iconv. Input: untrusted header values and MIME text; every result
 * is valid UTF-8 (see rfc2047.h for the fallback rules). */
#include "lib/rfc2047.h"

#include <errno.h>
#include <iconv.h>
#include <stdbool.h>
#include <string.h>

size_t tern_utf8_seq_len(const uint8_t *s, size_t len)
{
    if (len == 0)
        return 0;
    uint8_t c = s[0];
    if (c < 0x80)
        return 1;
    size_t n;
    uint32_t min;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2; min = 0x80; cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3; min = 0x800; cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4; min = 0x10000; cp = c & 0x07;
    } else {
        return 0;
    }
    if (len < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    /* Overlong forms, UTF-16 surrogates and values past U+10FFFF are not
     * UTF-8, and letting them through would break strict consumers (JSON). */
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

int tern_utf8_sanitize(tern_buf *out, const uint8_t *in, size_t len)
{
    size_t i = 0, run = 0;
    if (len == 0)
        return 0;
    while (i < len) {
        size_t n = tern_utf8_seq_len(in + i, len - i);
        if (n) {
            i += n;
            continue;
        }
        int rc = tern_buf_append(out, in + run, i - run);
        if (rc)
            return rc;
        uint8_t l1[2] = {(uint8_t)(0xc0 | (in[i] >> 6)), (uint8_t)(0x80 | (in[i] & 0x3f))};
        if ((rc = tern_buf_append(out, l1, 2)))
            return rc;
        run = ++i;
    }
    return tern_buf_append(out, in + run, len - run);
}

static const struct {
    const char *from, *to;
} charset_alias[] = {
    /* Labels mailers use that glibc does not know, or knows as something
     * narrower than what the sender meant. */
    {"ks_c_5601-1987", "cp949"},
    {"ks_c_5601", "cp949"},
    {"gb2312", "gbk"},
    {"x-gbk", "gbk"},
    {"iso-8859-8-i", "iso-8859-8"},
    {"windows-874", "cp874"},
    {"x-sjis", "shift_jis"},
    {"x-euc-jp", "euc-jp"},
    {"x-mac-roman", "macintosh"},
    {"utf8", "utf-8"},
    {"x-unknown", "unknown-8bit"},
};

int tern_charset_normalize(const char *cs, size_t len, char *buf, size_t size)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)cs[i];
        if (c == '*')
            break; /* RFC 2231 language suffix */
        if (c <= 0x20 || c >= 0x7f || c == '"' || c == '?' || n + 1 >= size)
            return -1;
        buf[n++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    if (n == 0)
        return -1;
    buf[n] = '\0';
    for (size_t i = 0; i < sizeof charset_alias / sizeof charset_alias[0]; i++) {
        if (strcmp(buf, charset_alias[i].from) == 0 && strlen(charset_alias[i].to) < size) {
            strcpy(buf, charset_alias[i].to);
            break;
        }
    }
    return 0;
}

static bool is_utf8_superset(const char *cs)
{
    return strcmp(cs, "utf-8") == 0 || strcmp(cs, "us-ascii") == 0 || strcmp(cs, "ascii") == 0 ||
           strcmp(cs, "unknown-8bit") == 0 || strcmp(cs, "x-user-defined") == 0 ||
           strcmp(cs, "8bit") == 0 || strcmp(cs, "default") == 0;
}

static const uint8_t replacement[3] = {0xef, 0xbf, 0xbd};

int tern_charset_to_utf8(tern_buf *out, const char *charset, size_t charset_len,
                         const uint8_t *in, size_t len)
{
    char cs[64];
    if (len == 0)
        return 0;
    if (tern_charset_normalize(charset, charset_len, cs, sizeof cs) < 0 || is_utf8_superset(cs))
        return tern_utf8_sanitize(out, in, len);
    iconv_t cd = iconv_open("UTF-8", cs);
    if (cd == (iconv_t)-1)
        return tern_utf8_sanitize(out, in, len);

    int rc = 0;
    char *ip = (char *)(uintptr_t)in;
    size_t ileft = len;
    char obuf[1024];
    char *op;
    size_t oleft;
    while (ileft > 0) {
        op = obuf;
        oleft = sizeof obuf;
        size_t r = iconv(cd, &ip, &ileft, &op, &oleft);
        int err = r == (size_t)-1 ? errno : 0;
        /* Checked, not trusted: glibc folds names like "utf<8" into UTF-8
         * and its UTF-8 decoder passes 5-byte forms (0xFB...) through. */
        if ((rc = tern_utf8_sanitize(out, (const uint8_t *)obuf, sizeof obuf - oleft)))
            goto done;
        if (r != (size_t)-1 || err == E2BIG)
            continue;
        if ((rc = tern_buf_append(out, replacement, 3)))
            goto done;
        if (err != EILSEQ)
            break; /* EINVAL: a sequence cut short by the end of the input */
        ip++;
        ileft--;
    }
    /* Back to the initial shift state (ISO-2022-JP), which may write bytes. */
    op = obuf;
    oleft = sizeof obuf;
    iconv(cd, NULL, NULL, &op, &oleft);
    rc = tern_utf8_sanitize(out, (const uint8_t *)obuf, sizeof obuf - oleft);
done:
    iconv_close(cd);
    return rc;
}

/* ---- encoded-words ---------------------------------------------------- */

typedef struct {
    size_t end;            /* index just past "?=" */
    const char *cs;
    size_t cs_len;
    char enc;              /* 'b' or 'q' */
    const char *text;
    size_t text_len;
} eword;

static bool parse_word(const char *in, size_t len, size_t i, eword *w)
{
    if (i + 1 >= len || in[i] != '=' || in[i + 1] != '?')
        return false;
    size_t p = i + 2, cs = p;
    while (p < len && in[p] != '?') {
        unsigned char c = (unsigned char)in[p];
        if (c <= 0x20 || c >= 0x7f || p - cs > 64)
            return false;
        p++;
    }
    if (p == cs || p + 2 >= len || in[p + 2] != '?')
        return false;
    char e = in[p + 1];
    if (e == 'B' || e == 'b')
        w->enc = 'b';
    else if (e == 'Q' || e == 'q')
        w->enc = 'q';
    else
        return false;
    w->cs = in + cs;
    w->cs_len = p - cs;
    size_t t = p + 3, q = t;
    while (q < len && in[q] != '?') {
        unsigned char c = (unsigned char)in[q];
        if (c <= 0x20 || c == 0x7f)
            return false; /* encoded-text has no whitespace: not a word; 8-bit
                             bytes are tolerated (raw Latin-1 in Q words) */
        q++;
    }
    if (q + 1 >= len || in[q + 1] != '=')
        return false;
    w->text = in + t;
    w->text_len = q - t;
    w->end = q + 2;
    return true;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int b64val(char c)
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

static int decode_word(tern_buf *out, const eword *w)
{
    uint8_t tmp[256];
    size_t n = 0;
    int rc;
    if (w->enc == 'q') {
        for (size_t i = 0; i < w->text_len; i++) {
            char c = w->text[i];
            int h, l;
            if (c == '_') {
                c = ' ';
            } else if (c == '=' && i + 2 < w->text_len && (h = hexval(w->text[i + 1])) >= 0 &&
                       (l = hexval(w->text[i + 2])) >= 0) {
                c = (char)(h * 16 + l);
                i += 2;
            }
            tmp[n++] = (uint8_t)c;
            if (n == sizeof tmp) {
                if ((rc = tern_buf_append(out, tmp, n)))
                    return rc;
                n = 0;
            }
        }
    } else {
        uint32_t acc = 0;
        int bits = 0;
        for (size_t i = 0; i < w->text_len; i++) {
            if (w->text[i] == '=')
                break;
            int v = b64val(w->text[i]);
            if (v < 0)
                continue;
            acc = (acc << 6) | (uint32_t)v;
            bits += 6;
            if (bits >= 8) {
                bits -= 8;
                tmp[n++] = (uint8_t)(acc >> bits);
                acc &= (1u << bits) - 1;
                if (n == sizeof tmp) {
                    if ((rc = tern_buf_append(out, tmp, n)))
                        return rc;
                    n = 0;
                }
            }
        }
    }
    return tern_buf_append(out, tmp, n);
}

static bool all_lwsp(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return false;
    return true;
}

static bool same_charset(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen)
        return false;
    for (size_t i = 0; i < alen; i++) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z')
            x = (char)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (char)(y + 32);
        if (x != y)
            return false;
    }
    return true;
}

int tern_rfc2047_decode(tern_buf *out, const char *in, size_t len)
{
    size_t start = out->len;
    if (len == 0)
        return 0;
    tern_buf pend; /* decoded bytes of a run of same-charset words */
    tern_buf_init(&pend, 0);
    const char *pend_cs = NULL;
    size_t pend_cs_len = 0;
    size_t lit = 0;        /* start of the literal text not yet written */
    bool after_word = false;
    int rc = 0;

    for (size_t i = 0; i < len;) {
        eword w;
        if (in[i] != '=' || !parse_word(in, len, i, &w)) {
            i++;
            continue;
        }
        bool join = after_word && all_lwsp(in + lit, i - lit);
        if (!join || !same_charset(pend_cs, pend_cs_len, w.cs, w.cs_len)) {
            if (pend_cs && (rc = tern_charset_to_utf8(out, pend_cs, pend_cs_len, pend.data, pend.len)))
                goto done;
            pend.len = 0;
            if (!join && (rc = tern_utf8_sanitize(out, (const uint8_t *)in + lit, i - lit)))
                goto done;
            pend_cs = w.cs;
            pend_cs_len = w.cs_len;
        }
        if ((rc = decode_word(&pend, &w)))
            goto done;
        after_word = true;
        i = lit = w.end;
    }
    if (pend_cs && (rc = tern_charset_to_utf8(out, pend_cs, pend_cs_len, pend.data, pend.len)))
        goto done;
    rc = tern_utf8_sanitize(out, (const uint8_t *)in + lit, len - lit);
done:
    tern_buf_free(&pend);
    if (rc == 0) {
        for (size_t i = start; i < out->len; i++)
            if (out->data[i] < 0x20 || out->data[i] == 0x7f)
                out->data[i] = ' ';
    }
    return rc;
}

char *tern_rfc2047_decode_arena(tern_arena *a, const char *in, size_t len, size_t *len_r)
{
    tern_buf b;
    tern_buf_init(&b, 0);
    char *s = NULL;
    if (tern_rfc2047_decode(&b, in, len) == 0) {
        s = tern_arena_strndup(a, b.len ? (const char *)b.data : "", b.len);
        if (s && len_r)
            *len_r = b.len;
    }
    tern_buf_free(&b);
    return s;
}
