/* The streaming BODY/TEXT matcher (see index.h): a MIME walker that never
 * holds more than a line prefix, decoding text parts (QP, base64, charset
 * to UTF-8) into a KMP automaton, so a match is found across any chunking
 * in bounded memory. Input: message bytes, untrusted. Pipeline per byte:
 *   first-line sniff -> line scanner (boundaries) -> header parser, or
 *   transfer decoder -> charset converter -> case-insensitive KMP. */
#include "storage/index.h"

#include <errno.h>
#include <iconv.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/header.h"
#include "lib/rfc2047.h"

#define DEPTH_MAX 16        /* nested multiparts followed; deeper ones are skipped */
#define BOUNDARY_MAX 200    /* RFC 2046 says 70; some senders go further */
#define PREFIX_MAX (BOUNDARY_MAX + 8)
#define SNIFF_MAX (TERN_HEADER_NAME_MAX + 2)
#define CT_MAX 1024

enum { ENC_NONE, ENC_QP, ENC_B64 };
enum { M_SNIFF, M_HEADER, M_BODY };
enum { Q_NORMAL, Q_EQ, Q_HEX1 };

typedef struct {
    char b[BOUNDARY_MAX];
    size_t len;
    bool digest;            /* multipart/digest: parts default to message/rfc822 */
} level;

struct tern_body_matcher {
    /* needle and KMP state */
    char *needle;
    size_t nlen, k;
    size_t *fail;
    bool found, text_mode;

    int state;
    bool top_header;        /* the header being read is the message's own */
    bool encap_header;      /* ...or an attached message's: its default type is
                               text/plain even inside a multipart/digest */

    uint8_t sniff[SNIFF_MAX];
    size_t sniff_len;

    /* line scanner */
    level stack[DEPTH_MAX];
    size_t depth;
    uint8_t prefix[PREFIX_MAX];
    size_t prefix_len;
    bool in_prefix;         /* buffering the start of a line that may be a boundary */
    bool line_start;
    bool held_cr;           /* a CR passed through, not yet known to end the line */
    bool pending_nl;        /* a line end not yet given to the part: it may belong to a boundary */

    /* the entity whose header is being read */
    tern_header_parser hp;
    char ct[CT_MAX];
    size_t ct_len;
    bool have_ct;
    int enc;

    /* the current part's body */
    bool part_text;         /* decoded and matched; otherwise skipped */
    int qp;
    uint8_t qp_hex;
    uint32_t b64_acc;
    int b64_bits;
    iconv_t cd;             /* (iconv_t)-1: bytes go straight to the matcher */
    uint8_t carry[16];
    size_t carry_len;
};

/* ---- matching ------------------------------------------------------------ */

static uint8_t fold(uint8_t c)
{
    return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c;
}

static void kmp_feed(tern_body_matcher *m, const uint8_t *d, size_t n)
{
    const char *nd = m->needle;
    size_t k = m->k;
    for (size_t i = 0; i < n && !m->found; i++) {
        uint8_t c = fold(d[i]);
        while (k > 0 && (uint8_t)nd[k] != c)
            k = m->fail[k - 1];
        if ((uint8_t)nd[k] == c && ++k == m->nlen)
            m->found = true;
    }
    m->k = k;
}

/* ---- charset -------------------------------------------------------------- */

static void charset_close(tern_body_matcher *m)
{
    if (m->cd != (iconv_t)-1)
        iconv_close(m->cd);
    m->cd = (iconv_t)-1;
    m->carry_len = 0;
}

static void charset_open(tern_body_matcher *m, const char *cs, size_t len)
{
    char name[64];
    charset_close(m);
    if (tern_charset_normalize(cs, len, name, sizeof name) < 0)
        return;
    if (strcmp(name, "utf-8") == 0 || strcmp(name, "us-ascii") == 0 || strcmp(name, "ascii") == 0)
        return;
    m->cd = iconv_open("UTF-8", name); /* unknown: stays -1, bytes as they are */
}

/* Text that is UTF-8, or says nothing, or names a charset iconv does not
 * know: valid UTF-8 goes through, other bytes are taken as Latin-1, as the
 * header decoder does. A sequence cut by the chunking waits in carry. */
static void utf8_out(tern_body_matcher *m, const uint8_t *d, size_t n)
{
    uint8_t in[3 + 256], out[2 * sizeof in];
    while (n > 0 && !m->found) {
        size_t take = n < 256 ? n : 256;
        size_t len = m->carry_len;
        memcpy(in, m->carry, len);
        memcpy(in + len, d, take);
        len += take;
        d += take;
        n -= take;
        m->carry_len = 0;
        size_t i = 0, o = 0;
        while (i < len) {
            size_t k = tern_utf8_seq_len(in + i, len - i);
            if (k) {
                memcpy(out + o, in + i, k);
                o += k;
                i += k;
                continue;
            }
            uint8_t c = in[i];
            size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
            bool cut = c >= 0xc2 && c <= 0xf4 && len - i < need;
            for (size_t j = i + 1; cut && j < len; j++)
                cut = (in[j] & 0xc0) == 0x80;
            if (cut) {
                /* A sequence cut by the chunking: finish it with the next bytes. */
                memcpy(m->carry, in + i, len - i);
                m->carry_len = len - i;
                break;
            }
            out[o++] = (uint8_t)(0xc0 | (c >> 6));
            out[o++] = (uint8_t)(0x80 | (c & 0x3f));
            i++;
        }
        kmp_feed(m, out, o);
    }
}

static void charset_out(tern_body_matcher *m, const uint8_t *d, size_t n)
{
    if (m->cd == (iconv_t)-1) {
        utf8_out(m, d, n);
        return;
    }
    uint8_t in[sizeof m->carry + 512];
    char out[2048];
    while (n > 0 && !m->found) {
        size_t take = n < 512 ? n : 512;
        memcpy(in, m->carry, m->carry_len);
        memcpy(in + m->carry_len, d, take);
        d += take;
        n -= take;
        char *ip = (char *)in;
        size_t ileft = m->carry_len + take;
        m->carry_len = 0;
        while (ileft > 0) {
            char *op = out;
            size_t oleft = sizeof out;
            size_t r = iconv(m->cd, &ip, &ileft, &op, &oleft);
            int err = r == (size_t)-1 ? errno : 0;
            kmp_feed(m, (const uint8_t *)out, sizeof out - oleft);
            if (r != (size_t)-1 || err == E2BIG)
                continue;
            if (err == EINVAL && ileft < sizeof m->carry) {
                /* A character cut by the chunking: finish it next time. */
                memcpy(m->carry, ip, ileft);
                m->carry_len = ileft;
                break;
            }
            kmp_feed(m, (const uint8_t *)"\xef\xbf\xbd", 3);
            ip++;
            ileft--;
        }
    }
}

/* ---- transfer decoding --------------------------------------------------- */

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = fold(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static int b64val(uint8_t c)
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

/* Bytes of the current part, line ends given as a bare "\n". */
static void content(tern_body_matcher *m, const uint8_t *d, size_t n)
{
    if (!m->part_text || m->found)
        return;
    if (m->enc == ENC_NONE) {
        charset_out(m, d, n);
        return;
    }
    uint8_t out[512];
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = d[i];
        if (o + 3 > sizeof out) {
            charset_out(m, out, o);
            o = 0;
        }
        if (m->enc == ENC_B64) {
            int v = b64val(c);
            if (v < 0)
                continue; /* line ends, padding and junk */
            m->b64_acc = (m->b64_acc << 6) | (uint32_t)v;
            m->b64_bits += 6;
            if (m->b64_bits >= 8) {
                m->b64_bits -= 8;
                out[o++] = (uint8_t)(m->b64_acc >> m->b64_bits);
                m->b64_acc &= (1u << m->b64_bits) - 1;
            }
            continue;
        }
        switch (m->qp) {
        case Q_NORMAL:
            if (c == '=')
                m->qp = Q_EQ;
            else
                out[o++] = c;
            break;
        case Q_EQ:
            if (c == '\n') {
                m->qp = Q_NORMAL; /* soft line break */
            } else if (c == ' ' || c == '\t' || c == '\r') {
                /* padding between "=" and the line end */
            } else if (hexval(c) >= 0) {
                m->qp_hex = c;
                m->qp = Q_HEX1;
            } else {
                out[o++] = '=';
                out[o++] = c;
                m->qp = Q_NORMAL;
            }
            break;
        case Q_HEX1:
            if (hexval(c) >= 0) {
                out[o++] = (uint8_t)(hexval(m->qp_hex) * 16 + hexval(c));
            } else {
                out[o++] = '=';
                out[o++] = m->qp_hex;
                if (c != '=')
                    out[o++] = c;
            }
            m->qp = c == '=' && hexval(c) < 0 ? Q_EQ : Q_NORMAL;
            break;
        }
    }
    charset_out(m, out, o);
}

/* ---- entities -------------------------------------------------------------- */

static void part_end(tern_body_matcher *m)
{
    charset_close(m);
    m->part_text = false;
}

static void header_start(tern_body_matcher *m, bool top)
{
    part_end(m);
    tern_header_limits lim = {.max_total = top ? 0 : 64 * 1024};
    tern_header_parser_init(&m->hp, &lim);
    m->state = M_HEADER;
    m->top_header = top;
    m->encap_header = false;
    m->have_ct = false;
    m->ct_len = 0;
    m->enc = ENC_NONE;
}

static void body_start(tern_body_matcher *m)
{
    m->state = M_BODY;
    m->pending_nl = false;
    m->k = 0;
    m->qp = Q_NORMAL;
    m->b64_acc = 0;
    m->b64_bits = 0;
}

static bool ieq_n(const char *a, size_t n, const char *b)
{
    if (strlen(b) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (fold((uint8_t)a[i]) != (uint8_t)b[i])
            return false;
    return true;
}

/* Content-Type: type/subtype; params. Gives the lowercased media type and
 * the boundary and charset parameters (unquoted). */
static void parse_ct(const char *v, size_t len, char *type, size_t tsize, char *boundary,
                     size_t *blen, char *charset, size_t csize)
{
    size_t i = 0, n = 0;
    while (i < len && (v[i] == ' ' || v[i] == '\t'))
        i++;
    while (i < len && v[i] != ';' && v[i] != ' ' && v[i] != '\t' && v[i] != '(') {
        if (n + 1 < tsize)
            type[n++] = (char)fold((uint8_t)v[i]);
        i++;
    }
    type[n] = '\0';
    *blen = 0;
    charset[0] = '\0';
    while (i < len) {
        while (i < len && v[i] != ';')
            i++;
        if (i >= len)
            break;
        i++;
        while (i < len && (v[i] == ' ' || v[i] == '\t'))
            i++;
        size_t ns = i;
        while (i < len && v[i] != '=' && v[i] != ';' && v[i] != ' ' && v[i] != '\t')
            i++;
        size_t nl = i - ns;
        while (i < len && (v[i] == ' ' || v[i] == '\t'))
            i++;
        if (i >= len || v[i] != '=')
            continue;
        i++;
        while (i < len && (v[i] == ' ' || v[i] == '\t'))
            i++;
        char val[BOUNDARY_MAX + 1];
        size_t vl = 0;
        bool ok = true;
        if (i < len && v[i] == '"') {
            for (i++; i < len && v[i] != '"'; i++) {
                if (v[i] == '\\' && i + 1 < len)
                    i++;
                if (vl < BOUNDARY_MAX)
                    val[vl++] = v[i];
                else
                    ok = false;
            }
            if (i < len)
                i++;
        } else {
            for (; i < len && v[i] != ';' && v[i] != ' ' && v[i] != '\t'; i++) {
                if (vl < BOUNDARY_MAX)
                    val[vl++] = v[i];
                else
                    ok = false;
            }
        }
        if (!ok)
            continue;
        if (ieq_n(v + ns, nl, "boundary") && vl > 0) {
            memcpy(boundary, val, vl);
            *blen = vl;
        } else if (ieq_n(v + ns, nl, "charset") && vl > 0 && vl < csize) {
            memcpy(charset, val, vl);
            charset[vl] = '\0';
        }
    }
}

static void header_field(tern_body_matcher *m, const tern_header_field *f)
{
    if (m->top_header && m->text_mode && !m->found) {
        tern_buf b;
        tern_buf_init(&b, 0);
        if (tern_utf8_sanitize(&b, (const uint8_t *)f->name, f->name_len) == 0 &&
            tern_buf_append(&b, ": ", 2) == 0 &&
            tern_rfc2047_decode(&b, f->value, f->value_len) == 0 &&
            tern_index_contains((const char *)b.data, b.len, m->needle, m->nlen))
            m->found = true;
        tern_buf_free(&b);
    }
    if (tern_header_name_is(f, "content-type") && !m->have_ct) {
        m->have_ct = true;
        m->ct_len = f->value_len < CT_MAX ? f->value_len : CT_MAX;
        memcpy(m->ct, f->value, m->ct_len);
    } else if (tern_header_name_is(f, "content-transfer-encoding")) {
        size_t n = f->value_len;
        while (n > 0 && (f->value[n - 1] == ' ' || f->value[n - 1] == ';'))
            n--;
        if (ieq_n(f->value, n, "quoted-printable"))
            m->enc = ENC_QP;
        else if (ieq_n(f->value, n, "base64"))
            m->enc = ENC_B64;
        else
            m->enc = ENC_NONE;
    }
}

/* The header just ended: decide what its body is. */
static void header_end(tern_body_matcher *m)
{
    char type[64], boundary[BOUNDARY_MAX], charset[64];
    size_t blen = 0;
    bool parent_digest = !m->encap_header && m->depth > 0 && m->stack[m->depth - 1].digest;
    if (m->have_ct) {
        parse_ct(m->ct, m->ct_len, type, sizeof type, boundary, &blen, charset, sizeof charset);
    } else {
        strcpy(type, parent_digest ? "message/rfc822" : "text/plain");
        charset[0] = '\0';
    }
    body_start(m);
    if (strncmp(type, "multipart/", 10) == 0 && blen > 0) {
        if (m->depth < DEPTH_MAX) {
            level *l = &m->stack[m->depth++];
            memcpy(l->b, boundary, blen);
            l->len = blen;
            l->digest = strcmp(type, "multipart/digest") == 0;
        }
        return; /* the preamble (or a too deep multipart) is skipped */
    }
    if ((strcmp(type, "message/rfc822") == 0 || strcmp(type, "message/global") == 0) &&
        m->enc == ENC_NONE) {
        header_start(m, false); /* an attached message: its header comes next */
        m->encap_header = true;
        return;
    }
    if (strncmp(type, "text/", 5) == 0 || type[0] == '\0' || strncmp(type, "multipart/", 10) == 0) {
        /* A multipart without boundary is unreadable as MIME: read as text. */
        m->part_text = true;
        charset_open(m, charset, strlen(charset));
    }
}

/* ---- the line scanner ------------------------------------------------------ */

/* Bytes of a line (never a line end) to the header parser or the part. */
static void sink(tern_body_matcher *m, const uint8_t *d, size_t n)
{
    while (n > 0 && m->state == M_HEADER) {
        size_t used;
        tern_header_field f;
        tern_header_event ev = tern_header_parser_feed(&m->hp, d, n, &used, &f);
        d += used;
        n -= used;
        if (ev == TERN_HEADER_FIELD)
            header_field(m, &f);
        else if (ev == TERN_HEADER_END)
            header_end(m);
    }
    if (n == 0)
        return;
    if (m->pending_nl) {
        m->pending_nl = false;
        content(m, (const uint8_t *)"\n", 1);
    }
    content(m, d, n);
}

static void line_end(tern_body_matcher *m)
{
    if (m->state == M_HEADER) {
        sink(m, (const uint8_t *)"\n", 1);
        return;
    }
    if (m->pending_nl)
        content(m, (const uint8_t *)"\n", 1);
    m->pending_nl = true;
}

/* Whether the buffered line start can still turn out to be a boundary. */
static bool may_be_boundary(const tern_body_matcher *m)
{
    const uint8_t *p = m->prefix;
    size_t n = m->prefix_len;
    if (n >= 1 && p[0] != '-')
        return false;
    if (n >= 2 && p[1] != '-')
        return false;
    if (n <= 2)
        return true;
    for (size_t d = 0; d < m->depth; d++) {
        const level *l = &m->stack[d];
        size_t cmp = n - 2 < l->len ? n - 2 : l->len;
        if (memcmp(p + 2, l->b, cmp) == 0)
            return true; /* long enough to decide when the line ends */
    }
    return false;
}

/* A whole line (without its end) that started with "--": which level's
 * boundary it is, or -1; *close_r for "--boundary--". */
static int boundary_level(const tern_body_matcher *m, bool *close_r)
{
    const uint8_t *p = m->prefix;
    size_t n = m->prefix_len;
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t' || p[n - 1] == '\r'))
        n--;
    for (size_t d = m->depth; d-- > 0;) {
        const level *l = &m->stack[d];
        if (n < 2 + l->len || memcmp(p + 2, l->b, l->len) != 0)
            continue;
        size_t rest = n - 2 - l->len;
        if (rest == 0) {
            *close_r = false;
            return (int)d;
        }
        if (rest >= 2 && p[2 + l->len] == '-' && p[3 + l->len] == '-') {
            *close_r = true;
            return (int)d;
        }
    }
    return -1;
}

static void flush_prefix(tern_body_matcher *m)
{
    m->in_prefix = false;
    sink(m, m->prefix, m->prefix_len);
    m->prefix_len = 0;
}

static void prefix_line_end(tern_body_matcher *m)
{
    bool close = false;
    int d = boundary_level(m, &close);
    m->in_prefix = false;
    if (d < 0) {
        size_t n = m->prefix_len;
        if (n > 0 && m->prefix[n - 1] == '\r')
            n--;
        sink(m, m->prefix, n);
        m->prefix_len = 0;
        line_end(m);
        return;
    }
    m->prefix_len = 0;
    part_end(m);
    m->pending_nl = false; /* the line end before a boundary is the boundary's */
    m->depth = (size_t)d + 1;
    if (close) {
        m->depth = (size_t)d; /* the epilogue is skipped */
        body_start(m);
    } else {
        header_start(m, false);
    }
}

static void scan(tern_body_matcher *m, const uint8_t *d, size_t n)
{
    size_t i = 0;
    while (i < n && !m->found) {
        if (m->line_start) {
            m->line_start = false;
            m->in_prefix = m->depth > 0;
            m->prefix_len = 0;
        }
        if (m->in_prefix) {
            uint8_t c = d[i++];
            if (c == '\n') {
                prefix_line_end(m);
                m->line_start = true;
                continue;
            }
            m->prefix[m->prefix_len++] = c;
            if (m->prefix_len == PREFIX_MAX || !may_be_boundary(m)) {
                /* The CR of a line end must not go out as data. */
                if (c == '\r') {
                    m->prefix_len--;
                    flush_prefix(m);
                    m->held_cr = true;
                } else {
                    flush_prefix(m);
                }
            }
            continue;
        }
        /* Pass the rest of the line through in one piece. */
        size_t s = i;
        while (i < n && d[i] != '\n')
            i++;
        size_t e = i;
        if (m->held_cr && e > s) {
            sink(m, (const uint8_t *)"\r", 1);
            m->held_cr = false;
        }
        bool ended = i < n;
        if (e > s && d[e - 1] == '\r') {
            e--;
            m->held_cr = true; /* maybe the line end's CR: known at the next byte */
        }
        if (e > s)
            sink(m, d + s, e - s);
        if (ended) {
            m->held_cr = false;
            line_end(m);
            m->line_start = true;
            i++;
        }
    }
}

/* ---- the first line: a header, or the caller fed only the body ---------- */

/* 1: a header, 0: a body, -1: not known yet. */
static int sniff_decide(const uint8_t *s, size_t n, bool final)
{
    if (n >= 1 && s[0] == '\n')
        return 1;
    if (n == 1 && s[0] == '\r' && !final)
        return -1;
    if (n >= 2 && s[0] == '\r' && s[1] == '\n')
        return 1;
    if (n >= 5 && memcmp(s, "From ", 5) == 0)
        return 1;
    size_t i = 0;
    while (i < n && s[i] > 0x20 && s[i] < 0x7f && s[i] != ':')
        i++;
    if (i < n && s[i] == ':')
        return i > 0;
    if (i == 0 && i < n)
        return 0;
    while (i < n && (s[i] == ' ' || s[i] == '\t'))
        i++;
    if (i < n)
        return s[i] == ':';
    return final ? 0 : -1;
}

static void sniff(tern_body_matcher *m, const uint8_t *d, size_t n, size_t *used_r)
{
    size_t take = SNIFF_MAX - m->sniff_len;
    if (take > n)
        take = n;
    memcpy(m->sniff + m->sniff_len, d, take);
    m->sniff_len += take;
    *used_r = take;
    int r = sniff_decide(m->sniff, m->sniff_len, m->sniff_len == SNIFF_MAX);
    if (r < 0)
        return;
    if (r == 0) {
        /* Only the body: read it as the text/plain of an unknown message. */
        body_start(m);
        m->part_text = true;
        m->enc = ENC_NONE;
    } else {
        header_start(m, true);
    }
    scan(m, m->sniff, m->sniff_len);
}

/* ---- the API --------------------------------------------------------------- */

static tern_body_matcher *matcher_new(const char *needle, bool text)
{
    tern_body_matcher *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->nlen = needle ? strlen(needle) : 0;
    m->needle = malloc(m->nlen + 1);
    m->fail = malloc((m->nlen ? m->nlen : 1) * sizeof(size_t));
    if (!m->needle || !m->fail) {
        free(m->needle);
        free(m->fail);
        free(m);
        return NULL;
    }
    for (size_t i = 0; i < m->nlen; i++)
        m->needle[i] = (char)fold((uint8_t)needle[i]);
    m->needle[m->nlen] = '\0';
    /* KMP failure function over the folded needle. */
    if (m->nlen)
        m->fail[0] = 0;
    for (size_t i = 1, k = 0; i < m->nlen; i++) {
        while (k > 0 && m->needle[i] != m->needle[k])
            k = m->fail[k - 1];
        if (m->needle[i] == m->needle[k])
            k++;
        m->fail[i] = k;
    }
    m->found = m->nlen == 0;
    m->text_mode = text;
    m->cd = (iconv_t)-1;
    m->state = M_SNIFF;
    m->line_start = true;
    return m;
}

tern_body_matcher *tern_body_matcher_new(const char *needle)
{
    return matcher_new(needle, false);
}

tern_body_matcher *tern_body_matcher_new_text(const char *needle)
{
    return matcher_new(needle, true);
}

void tern_body_matcher_feed(tern_body_matcher *m, const uint8_t *data, size_t len)
{
    if (!m || m->found || len == 0)
        return;
    if (m->state == M_SNIFF) {
        size_t used;
        sniff(m, data, len, &used);
        data += used;
        len -= used;
        if (m->state == M_SNIFF)
            return;
    }
    scan(m, data, len);
}

int tern_body_matcher_found(const tern_body_matcher *m)
{
    return m && m->found;
}

void tern_body_matcher_free(tern_body_matcher *m)
{
    if (!m)
        return;
    charset_close(m);
    free(m->needle);
    free(m->fail);
    free(m);
}
