/* Parser of SMTP server replies and EHLO keywords for the client (see
 * smtp_reply.h). Input: untrusted bytes from a remote server. */
#include "protocols/smtp/smtp_reply.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void tern_reply_parser_init(tern_reply_parser *p)
{
    memset(p, 0, sizeof(*p));
}

static bool enhanced_at(const char *s, size_t len, size_t *n_r)
{
    /* class "." subject "." detail: 2..5, 1-3 digits, 1-3 digits */
    size_t i = 0;
    if (len < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
        return false;
    i = 2;
    size_t d = 0;
    while (i < len && isdigit((unsigned char)s[i]) && d < 3)
        i++, d++;
    if (d == 0 || i >= len || s[i] != '.')
        return false;
    i++;
    d = 0;
    while (i < len && isdigit((unsigned char)s[i]) && d < 3)
        i++, d++;
    if (d == 0 || (i < len && s[i] != ' '))
        return false;
    *n_r = i;
    return true;
}

static void text_append(tern_smtp_reply *r, const char *s, size_t n)
{
    if (r->lines > 1) {
        if (r->text_len + 1 < sizeof(r->text))
            r->text[r->text_len++] = '\n';
        else
            r->truncated = true;
    }
    if (r->text_len + n >= sizeof(r->text)) {
        n = sizeof(r->text) - 1 - r->text_len;
        r->truncated = true;
    }
    memcpy(r->text + r->text_len, s, n);
    r->text_len += n;
    r->text[r->text_len] = '\0';
}

/* One complete line; returns DONE on the last line, MORE otherwise. */
static tern_reply_status take_line(tern_reply_parser *p)
{
    const char *s = p->line;
    size_t n = p->line_len;
    if (n < 3 || !isdigit((unsigned char)s[0]) || !isdigit((unsigned char)s[1]) ||
        !isdigit((unsigned char)s[2]) || s[0] < '2' || s[0] > '5')
        return TERN_REPLY_MALFORMED;
    int code = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
    bool last;
    if (n == 3)
        last = true;
    else if (s[3] == ' ')
        last = true;
    else if (s[3] == '-')
        last = false;
    else
        return TERN_REPLY_MALFORMED;
    tern_smtp_reply *r = &p->r;
    if (!p->in_reply) {
        memset(r, 0, sizeof(*r));
        r->code = code;
        p->in_reply = true;
    } else if (code != r->code) {
        return TERN_REPLY_MALFORMED;
    }
    if (++r->lines > TERN_SMTP_REPLY_LINES_MAX)
        return TERN_REPLY_MALFORMED;
    const char *t = n > 4 ? s + 4 : s + n;
    size_t tl = n > 4 ? n - 4 : 0;
    size_t en = 0;
    if (enhanced_at(t, tl, &en) && en < sizeof(r->enhanced)) {
        if (r->lines == 1) {
            memcpy(r->enhanced, t, en);
            r->enhanced[en] = '\0';
        }
        t += en;
        tl -= en;
        while (tl > 0 && *t == ' ')
            t++, tl--;
    }
    if (p->line_long)
        r->truncated = true;
    text_append(r, t, tl);
    if (last) {
        p->in_reply = false;
        return TERN_REPLY_DONE;
    }
    return TERN_REPLY_MORE;
}

tern_reply_status tern_reply_parse(tern_reply_parser *p, const uint8_t *data, size_t len,
                                   size_t *used_r)
{
    size_t i = 0;
    tern_reply_status st = TERN_REPLY_MORE;
    while (i < len) {
        uint8_t c = data[i++];
        if (c == '\n') {
            if (p->line_len > 0 && p->line[p->line_len - 1] == '\r' && !p->line_long)
                p->line_len--;
            st = take_line(p);
            p->line_len = 0;
            p->line_long = false;
            if (st != TERN_REPLY_MORE)
                break;
            continue;
        }
        if (p->line_len < sizeof(p->line))
            p->line[p->line_len++] = (char)c;
        else
            p->line_long = true;
    }
    *used_r = i;
    return st;
}

static bool kw_is(const char *s, size_t n, const char *kw)
{
    return strlen(kw) == n && strncasecmp(s, kw, n) == 0;
}

void tern_ehlo_caps_parse(const tern_smtp_reply *r, tern_ehlo_caps *caps)
{
    memset(caps, 0, sizeof(*caps));
    const char *s = r->text;
    const char *end = r->text + r->text_len;
    /* The first line is the greeting ("mx.example.org Hello ..."). */
    const char *nl = memchr(s, '\n', (size_t)(end - s));
    if (nl == NULL)
        return;
    s = nl + 1;
    while (s < end) {
        nl = memchr(s, '\n', (size_t)(end - s));
        const char *le = nl ? nl : end;
        const char *sp = memchr(s, ' ', (size_t)(le - s));
        const char *ke = sp ? sp : le;
        size_t kn = (size_t)(ke - s);
        if (kw_is(s, kn, "PIPELINING"))
            caps->pipelining = true;
        else if (kw_is(s, kn, "8BITMIME"))
            caps->eightbitmime = true;
        else if (kw_is(s, kn, "SMTPUTF8"))
            caps->smtputf8 = true;
        else if (kw_is(s, kn, "CHUNKING"))
            caps->chunking = true;
        else if (kw_is(s, kn, "BINARYMIME"))
            caps->binarymime = true;
        else if (kw_is(s, kn, "DSN"))
            caps->dsn = true;
        else if (kw_is(s, kn, "STARTTLS"))
            caps->starttls = true;
        else if (kw_is(s, kn, "ENHANCEDSTATUSCODES"))
            caps->enhancedstatuscodes = true;
        else if (kw_is(s, kn, "REQUIRETLS"))
            caps->requiretls = true;
        else if (kw_is(s, kn, "SIZE")) {
            caps->size_given = true;
            caps->size = 0;
            for (const char *d = sp ? sp + 1 : le; d < le && isdigit((unsigned char)*d); d++) {
                if (caps->size > (UINT64_MAX - 9) / 10) {
                    caps->size = 0; /* absurd: treat as no limit announced */
                    break;
                }
                caps->size = caps->size * 10 + (uint64_t)(*d - '0');
            }
        } else if (kw_is(s, kn, "AUTH") && sp) {
            size_t al = strlen(caps->auth);
            for (const char *a = sp + 1; a < le && al + 1 < sizeof(caps->auth); a++)
                caps->auth[al++] = (char)toupper((unsigned char)*a);
            caps->auth[al] = '\0';
        }
        s = nl ? nl + 1 : end;
    }
}
