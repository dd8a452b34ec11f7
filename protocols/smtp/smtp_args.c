/* Argument parsers for SMTP commands: MAIL FROM / RCPT TO paths and their
 * ESMTP parameters (SIZE, BODY, SMTPUTF8, RET, ENVID, AUTH, NOTIFY, ORCPT),
 * the EHLO/HELO domain, BDAT chunk sizes, AUTH, xtext, and mailbox
 * splitting.
 * Input: one command's argument bytes from the network, trusted in nothing.
 * Results are slices into that input; nothing is copied or allocated.
 *
 * Grammar: RFC 5321 4.1.2 (paths), 4.5.3.1 (limits), RFC 6531 (UTF-8 in
 * paths with SMTPUTF8), RFC 3461 (DSN parameters, xtext), RFC 1870 (SIZE),
 * RFC 6152 / RFC 3030 (BODY, BDAT), RFC 4954 (AUTH=).
 *
 * Leniency, chosen on purpose:
 *   - a space (or several) after "FROM:" / "TO:" is accepted: common clients
 *     send it and it is unambiguous.
 *   - a path without its angle brackets is refused: with parameters after
 *     it, where the address stops becomes a guess, and guessing about
 *     addresses is how envelope checks get bypassed.
 *   - source routes ("<@a,@b:x@c>") are parsed, validated and dropped.
 *   - EHLO/HELO: a syntactically valid domain (labels may also contain '_',
 *     which Windows machine names carry) or address literal, one token.
 *     A bare IPv4 address passes as a domain (its labels are let-dig).
 */
#include "protocols/smtp/smtp_parser.h"

#include <string.h>

#include "storage/queue/spool.h"

#define PATH_MAX_OCTETS   256 /* RFC 5321 4.5.3.1.3, brackets included */
#define LOCAL_MAX_OCTETS  64  /* 4.5.3.1.1 */
#define DOMAIN_MAX_OCTETS 255 /* 4.5.3.1.2 */
#define LABEL_MAX_OCTETS  63
#define ENVID_MAX         100 /* RFC 3461 4.4 */
#define ORCPT_MAX         500 /* RFC 3461 4.2 */

/* What scanning a path noticed besides its syntax. */
#define F_NONASCII 0x01
#define F_BADUTF8  0x02

static bool is_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static bool is_letdig(unsigned char c)
{
    return is_alpha(c) || is_digit(c);
}

static bool is_upper_hex(unsigned char c)
{
    return is_digit(c) || (c >= 'A' && c <= 'F');
}

static bool is_hex(unsigned char c)
{
    return is_upper_hex(c) || (c >= 'a' && c <= 'f');
}

static unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c - 'A' + 'a') : c;
}

static bool ieq(const char *p, size_t len, const char *lit)
{
    size_t n = strlen(lit);
    if (n != len)
        return false;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)p[i]) != lower((unsigned char)lit[i]))
            return false;
    return true;
}

/* RFC 5322 atext, the characters of a Dot-string atom. */
static bool is_atext(unsigned char c)
{
    if (is_letdig(c))
        return true;
    return c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

/* Length of the well-formed UTF-8 sequence (RFC 3629) at p, or 0: no
 * overlongs, no surrogates, nothing above U+10FFFF. */
static size_t utf8_seq(const unsigned char *p, size_t len)
{
    unsigned char c = p[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (len < n)
        return 0;
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF)
            return 0;
    return n;
}

/* Consumes one non-ASCII character at s[*i] for a path: records that it
 * was seen and whether it was well-formed, and always advances so the
 * syntax check can go on (the caller decides between EUTF8 and EPATH). */
static void take_nonascii(const unsigned char *s, size_t len, size_t *i, unsigned *flags)
{
    size_t n = utf8_seq(s + *i, len - *i);
    *flags |= F_NONASCII;
    if (n == 0) {
        *flags |= F_BADUTF8;
        n = 1;
    }
    *i += n;
}

/* ---- domains and address literals ------------------------------------ */

/* Scans a Domain at s[*i]: sub-domains of let-dig [ldh-str let-dig],
 * non-ASCII allowed as U-label characters (their validity is judged by
 * the caller from *flags), '_' only when `underscore`. Stops at the first
 * byte that cannot belong to a domain. Returns false on bad syntax. */
static bool scan_domain(const unsigned char *s, size_t len, size_t *i, bool underscore,
                        unsigned *flags)
{
    size_t start = *i, j = *i;
    for (;;) {
        size_t lstart = j;
        bool last_hyphen = false;
        while (j < len) {
            unsigned char c = s[j];
            if (is_letdig(c) || (underscore && c == '_')) {
                j++;
                last_hyphen = false;
            } else if (c == '-') {
                if (j == lstart)
                    return false;
                j++;
                last_hyphen = true;
            } else if (c >= 0x80) {
                take_nonascii(s, len, &j, flags);
                last_hyphen = false;
            } else
                break;
        }
        if (j == lstart || last_hyphen || j - lstart > LABEL_MAX_OCTETS)
            return false;
        if (j < len && s[j] == '.' && j + 1 < len && s[j + 1] != '.') {
            /* Only take the dot if a label follows; "a." is not a Domain. */
            unsigned char n = s[j + 1];
            if (is_letdig(n) || n >= 0x80 || (underscore && n == '_')) {
                j++;
                continue;
            }
        }
        break;
    }
    if (j - start > DOMAIN_MAX_OCTETS)
        return false;
    *i = j;
    return true;
}

/* Snum 3("." Snum), Snum = 1*3DIGIT in 0..255. Consumes exactly
 * [p, p+len) or fails. */
static bool ipv4_literal(const char *p, size_t len)
{
    size_t i = 0;
    for (int part = 0; part < 4; part++) {
        if (part > 0) {
            if (i >= len || p[i] != '.')
                return false;
            i++;
        }
        unsigned v = 0;
        size_t d = 0;
        while (i < len && is_digit((unsigned char)p[i]) && d < 3) {
            v = v * 10 + (unsigned)(p[i] - '0');
            i++;
            d++;
        }
        if (d == 0 || v > 255)
            return false;
        if (i < len && is_digit((unsigned char)p[i]))
            return false;
    }
    return i == len;
}

/* RFC 5321 IPv6-addr: full (8 groups), compressed ("::" and at most 6
 * groups), and both forms ending in an IPv4 address (6 groups, or "::" and
 * at most 4). */
static bool ipv6_literal(const char *p, size_t len)
{
    size_t i = 0;
    unsigned groups = 0;
    bool dc = false, v4 = false;
    if (len >= 2 && p[0] == ':' && p[1] == ':') {
        dc = true;
        i = 2;
    } else if (len >= 1 && p[0] == ':')
        return false;
    while (i < len) {
        size_t s = i;
        while (i < len && is_hex((unsigned char)p[i]) && i - s < 5)
            i++;
        if (i < len && p[i] == '.') {
            /* The rest must be the trailing IPv4 address. */
            if (!ipv4_literal(p + s, len - s))
                return false;
            v4 = true;
            i = len;
            break;
        }
        if (i == s || i - s > 4)
            return false;
        groups++;
        if (i == len)
            break;
        if (p[i] != ':')
            return false;
        i++;
        if (i < len && p[i] == ':') {
            if (dc)
                return false;
            dc = true;
            i++;
        } else if (i == len)
            return false; /* a single trailing ':' */
    }
    if (v4)
        return dc ? groups <= 4 : groups == 6;
    return dc ? groups <= 6 : groups == 8;
}

/* Scans an address-literal at s[*i] == '['. */
static bool scan_addr_literal(const unsigned char *s, size_t len, size_t *i)
{
    size_t j = *i + 1, start = j;
    /* dcontent is %d33-90 / %d94-126: no '[', '\', ']' inside. */
    while (j < len && s[j] >= 33 && s[j] <= 126 && s[j] != '[' && s[j] != '\\' && s[j] != ']')
        j++;
    if (j >= len || s[j] != ']')
        return false;
    const char *c = (const char *)s + start;
    size_t n = j - start;
    bool ok;
    if (n >= 5 && ieq(c, 5, "IPv6:"))
        ok = ipv6_literal(c + 5, n - 5);
    else if (n > 0 && is_digit((unsigned char)c[0]))
        ok = ipv4_literal(c, n);
    else {
        /* General-address-literal: Standardized-tag ":" 1*dcontent, the
         * tag an Ldh-str (let-dig first and last). */
        size_t k = 0;
        while (k < n && (is_letdig((unsigned char)c[k]) || c[k] == '-'))
            k++;
        ok = k > 0 && k < n && c[k] == ':' && k + 1 < n && is_letdig((unsigned char)c[0]) &&
             is_letdig((unsigned char)c[k - 1]);
    }
    if (!ok || j + 1 - *i > DOMAIN_MAX_OCTETS)
        return false;
    *i = j + 1;
    return true;
}

/* ---- local parts and mailboxes ---------------------------------------- */

static bool scan_local_part(const unsigned char *s, size_t len, size_t *i, unsigned *flags)
{
    size_t j = *i;
    if (j < len && s[j] == '"') {
        j++;
        for (;;) {
            if (j >= len)
                return false;
            unsigned char c = s[j];
            if (c == '"') {
                j++;
                break;
            }
            if (c == '\\') {
                if (j + 1 >= len || s[j + 1] < 32 || s[j + 1] > 126)
                    return false;
                j += 2;
            } else if (c >= 32 && c <= 126)
                j++;
            else if (c >= 0x80)
                take_nonascii(s, len, &j, flags);
            else
                return false;
        }
    } else {
        for (;;) {
            size_t a = j;
            while (j < len && (is_atext(s[j]) || s[j] >= 0x80)) {
                if (s[j] >= 0x80)
                    take_nonascii(s, len, &j, flags);
                else
                    j++;
            }
            if (j == a)
                return false;
            if (j < len && s[j] == '.') {
                j++;
                continue;
            }
            break;
        }
    }
    if (j - *i > LOCAL_MAX_OCTETS)
        return false;
    *i = j;
    return true;
}

static bool scan_mailbox(const unsigned char *s, size_t len, size_t *i, unsigned *flags)
{
    size_t j = *i;
    if (!scan_local_part(s, len, &j, flags))
        return false;
    if (j >= len || s[j] != '@')
        return false;
    j++;
    if (j < len && s[j] == '[') {
        if (!scan_addr_literal(s, len, &j))
            return false;
    } else if (!scan_domain(s, len, &j, false, flags))
        return false;
    *i = j;
    return true;
}

/* Path = "<" [ A-d-l ":" ] Mailbox ">", or "<>" when allow_null, or
 * "<postmaster>" when allow_postmaster. s[*i] is the '<'. */
static int scan_path(const unsigned char *s, size_t len, size_t *i, bool allow_null,
                     bool allow_postmaster, tern_smtp_slice *path, unsigned *flags)
{
    size_t open = *i, j = *i + 1;
    if (j < len && s[j] == '>') {
        if (!allow_null)
            return TERN_SMTP_EPATH;
        path->p = (const char *)s + j;
        path->len = 0;
        *i = j + 1;
        return 0;
    }
    if (j < len && s[j] == '@') {
        /* A-d-l: obsolete source route, checked then ignored (5321 C). */
        for (;;) {
            j++;
            if (!scan_domain(s, len, &j, false, flags))
                return TERN_SMTP_EPATH;
            if (j < len && s[j] == ',') {
                j++;
                if (j >= len || s[j] != '@')
                    return TERN_SMTP_EPATH;
                continue;
            }
            if (j < len && s[j] == ':') {
                j++;
                break;
            }
            return TERN_SMTP_EPATH;
        }
    }
    size_t mstart = j;
    if (allow_postmaster && open + 1 == mstart && len - mstart >= 11 &&
        ieq((const char *)s + mstart, 10, "postmaster") && s[mstart + 10] == '>') {
        j = mstart + 10;
    } else if (!scan_mailbox(s, len, &j, flags))
        return TERN_SMTP_EPATH;
    if (j >= len || s[j] != '>')
        return TERN_SMTP_EPATH;
    if (j + 1 - open > PATH_MAX_OCTETS)
        return TERN_SMTP_EPATH;
    path->p = (const char *)s + mstart;
    path->len = j - mstart;
    *i = j + 1;
    return 0;
}

/* ---- xtext ------------------------------------------------------------ */

static bool is_xchar(unsigned char c)
{
    return c >= 33 && c <= 126 && c != '+' && c != '=';
}

/* xtext = *( xchar / "+" 2HEXCHAR ); with `utf8`, well-formed UTF-8 is
 * also taken (RFC 6533 unitext in ORCPT under SMTPUTF8). */
static bool xtext_valid(const char *p, size_t len, bool utf8)
{
    const unsigned char *s = (const unsigned char *)p;
    size_t i = 0;
    while (i < len) {
        if (is_xchar(s[i]))
            i++;
        else if (s[i] == '+') {
            if (i + 2 >= len || !is_upper_hex(s[i + 1]) || !is_upper_hex(s[i + 2]))
                return false;
            /* "+00" encodes NUL, which tern_smtp_xtext_decode refuses:
             * what this accepts must decode (the fuzzer found the gap). */
            if (s[i + 1] == '0' && s[i + 2] == '0')
                return false;
            i += 3;
        } else if (utf8 && s[i] >= 0x80) {
            size_t n = utf8_seq(s + i, len - i);
            if (n == 0)
                return false;
            i += n;
        } else
            return false;
    }
    return true;
}

static int hexval(unsigned char c)
{
    return is_digit(c) ? c - '0' : c - 'A' + 10;
}

long tern_smtp_xtext_decode(const char *in, size_t len, char *out, size_t out_size)
{
    const unsigned char *s = (const unsigned char *)in;
    size_t o = 0, i = 0;
    if (out_size == 0)
        return -1;
    while (i < len) {
        unsigned char c;
        if (is_xchar(s[i]))
            c = s[i++];
        else if (s[i] == '+' && i + 2 < len && is_upper_hex(s[i + 1]) &&
                 is_upper_hex(s[i + 2])) {
            c = (unsigned char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 3;
            /* A NUL would silently cut the C string the caller stores. */
            if (c == 0)
                return -1;
        } else
            return -1;
        if (o + 1 >= out_size)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return (long)o;
}

/* ---- ESMTP parameters ------------------------------------------------- */

typedef struct {
    const char *key;
    size_t key_len;
    const char *val; /* NULL when no '=' was given */
    size_t val_len;
} param;

/* Splits the next "keyword[=value]" off s[*i..len), skipping spaces
 * before it. Returns 1 with *pm, 0 at the end, or an error. */
static int next_param(const unsigned char *s, size_t len, size_t *i, param *pm)
{
    size_t j = *i;
    while (j < len && s[j] == ' ')
        j++;
    if (j >= len) {
        *i = j;
        return 0;
    }
    size_t k = j;
    /* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
    if (!is_letdig(s[k]))
        return TERN_SMTP_ESYNTAX;
    while (k < len && (is_letdig(s[k]) || s[k] == '-'))
        k++;
    pm->key = (const char *)s + j;
    pm->key_len = k - j;
    pm->val = NULL;
    pm->val_len = 0;
    if (k < len && s[k] == '=') {
        size_t v = ++k;
        /* esmtp-value = 1*(%d33-60 / %d62-126), plus UTF-8 (RFC 6531);
         * whether UTF-8 is allowed is up to the parameter. */
        while (k < len && ((s[k] >= 33 && s[k] <= 126 && s[k] != '=') || s[k] >= 0x80))
            k++;
        if (k == v)
            return TERN_SMTP_ESYNTAX;
        pm->val = (const char *)s + v;
        pm->val_len = k - v;
    }
    if (k < len && s[k] != ' ')
        return TERN_SMTP_ESYNTAX;
    *i = k;
    return 1;
}

static int parse_u64(const char *p, size_t len, uint64_t *v_r)
{
    uint64_t v = 0;
    if (len == 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (!is_digit(c))
            return -1;
        unsigned d = (unsigned)(c - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *v_r = v;
    return 0;
}

static size_t trim_len(const char *p, size_t len)
{
    while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
        len--;
    return len;
}

/* Matches the case-insensitive `word` followed by optional spaces at the
 * start of args; returns the index after them, or 0. */
static size_t skip_prefix(const char *p, size_t len, const char *word)
{
    size_t n = strlen(word);
    if (len < n || !ieq(p, n, word))
        return 0;
    while (n < len && p[n] == ' ')
        n++;
    return n;
}

enum {
    P_SIZE = 1 << 0, P_BODY = 1 << 1, P_SMTPUTF8 = 1 << 2, P_RET = 1 << 3,
    P_ENVID = 1 << 4, P_AUTH = 1 << 5, P_NOTIFY = 1 << 6, P_ORCPT = 1 << 7,
    P_REQUIRETLS = 1 << 8,
};

static int mark_seen(unsigned *seen, unsigned bit)
{
    if (*seen & bit)
        return TERN_SMTP_EPARAM;
    *seen |= bit;
    return 0;
}

static int mail_param(const param *pm, unsigned *seen, tern_smtp_mail_args *out)
{
    const char *k = pm->key, *v = pm->val;
    size_t kl = pm->key_len, vl = pm->val_len;
    int rc;
    if (ieq(k, kl, "SIZE")) {
        if ((rc = mark_seen(seen, P_SIZE)) != 0)
            return rc;
        /* size-value ::= 1*20DIGIT (RFC 1870), and it must fit. */
        if (v == NULL || vl > 20 || parse_u64(v, vl, &out->size) != 0)
            return TERN_SMTP_ESYNTAX;
        out->has_size = true;
    } else if (ieq(k, kl, "BODY")) {
        if ((rc = mark_seen(seen, P_BODY)) != 0)
            return rc;
        if (v != NULL && ieq(v, vl, "7BIT"))
            out->body = TERN_BODY_7BIT;
        else if (v != NULL && ieq(v, vl, "8BITMIME"))
            out->body = TERN_BODY_8BITMIME;
        else if (v != NULL && ieq(v, vl, "BINARYMIME"))
            out->body = TERN_BODY_BINARYMIME;
        else
            return TERN_SMTP_ESYNTAX;
    } else if (ieq(k, kl, "SMTPUTF8")) {
        if ((rc = mark_seen(seen, P_SMTPUTF8)) != 0)
            return rc;
        if (v != NULL)
            return TERN_SMTP_ESYNTAX;
        out->smtputf8 = true;
    } else if (ieq(k, kl, "RET")) {
        if ((rc = mark_seen(seen, P_RET)) != 0)
            return rc;
        if (v != NULL && ieq(v, vl, "FULL"))
            out->ret = 1;
        else if (v != NULL && ieq(v, vl, "HDRS"))
            out->ret = 2;
        else
            return TERN_SMTP_ESYNTAX;
    } else if (ieq(k, kl, "ENVID")) {
        if ((rc = mark_seen(seen, P_ENVID)) != 0)
            return rc;
        if (v == NULL || vl > ENVID_MAX || !xtext_valid(v, vl, false))
            return TERN_SMTP_ESYNTAX;
        out->envid.p = v;
        out->envid.len = vl;
    } else if (ieq(k, kl, "AUTH")) {
        if ((rc = mark_seen(seen, P_AUTH)) != 0)
            return rc;
        /* RFC 4954 5: AUTH=xtext / "<>" */
        if (v == NULL || !(ieq(v, vl, "<>") || xtext_valid(v, vl, false)))
            return TERN_SMTP_ESYNTAX;
        out->auth.p = v;
        out->auth.len = vl;
    } else if (ieq(k, kl, "REQUIRETLS")) {
        /* RFC 8689 3: a keyword without a value. */
        if ((rc = mark_seen(seen, P_REQUIRETLS)) != 0)
            return rc;
        if (v != NULL)
            return TERN_SMTP_ESYNTAX;
        out->requiretls = true;
    } else
        return TERN_SMTP_EPARAM;
    return 0;
}

static int parse_notify(const char *v, size_t vl, uint8_t *notify_r)
{
    uint8_t bits = 0;
    size_t i = 0;
    if (v == NULL)
        return TERN_SMTP_ESYNTAX;
    if (ieq(v, vl, "NEVER")) {
        *notify_r = TERN_NOTIFY_NEVER;
        return 0;
    }
    for (;;) {
        size_t s = i;
        while (i < vl && v[i] != ',')
            i++;
        if (ieq(v + s, i - s, "SUCCESS"))
            bits |= TERN_NOTIFY_SUCCESS;
        else if (ieq(v + s, i - s, "FAILURE"))
            bits |= TERN_NOTIFY_FAILURE;
        else if (ieq(v + s, i - s, "DELAY"))
            bits |= TERN_NOTIFY_DELAY;
        else
            return TERN_SMTP_ESYNTAX; /* also NEVER inside a list, and empty items */
        if (i == vl)
            break;
        i++;
    }
    *notify_r = bits;
    return 0;
}

static int parse_orcpt(const char *v, size_t vl, bool smtputf8)
{
    size_t i = 0;
    if (v == NULL || vl > ORCPT_MAX)
        return TERN_SMTP_ESYNTAX;
    /* addr-type = atom */
    while (i < vl && is_atext((unsigned char)v[i]))
        i++;
    if (i == 0 || i >= vl || v[i] != ';' || i + 1 == vl)
        return TERN_SMTP_ESYNTAX;
    i++;
    for (size_t k = i; k < vl; k++)
        if ((unsigned char)v[k] >= 0x80 && !smtputf8)
            return TERN_SMTP_EUTF8;
    if (!xtext_valid(v + i, vl - i, smtputf8))
        return TERN_SMTP_ESYNTAX;
    return 0;
}

static int rcpt_param(const param *pm, unsigned *seen, bool smtputf8, tern_smtp_rcpt_args *out)
{
    int rc;
    if (ieq(pm->key, pm->key_len, "NOTIFY")) {
        if ((rc = mark_seen(seen, P_NOTIFY)) != 0)
            return rc;
        return parse_notify(pm->val, pm->val_len, &out->notify);
    }
    if (ieq(pm->key, pm->key_len, "ORCPT")) {
        if ((rc = mark_seen(seen, P_ORCPT)) != 0)
            return rc;
        if ((rc = parse_orcpt(pm->val, pm->val_len, smtputf8)) != 0)
            return rc;
        out->orcpt.p = pm->val;
        out->orcpt.len = pm->val_len;
        return 0;
    }
    return TERN_SMTP_EPARAM;
}

/* After the path: nothing, or one or more spaces then parameters. */
static bool params_start_ok(const unsigned char *s, size_t len, size_t i)
{
    return i == len || s[i] == ' ';
}

int tern_smtp_parse_mail(const char *args, size_t len, tern_smtp_mail_args *out)
{
    const unsigned char *s = (const unsigned char *)args;
    unsigned flags = 0, seen = 0;
    size_t i;
    int rc;

    memset(out, 0, sizeof(*out));
    out->body = -1;
    out->path.p = args;
    out->envid.p = args;
    out->auth.p = args;

    len = trim_len(args, len);
    if ((i = skip_prefix(args, len, "FROM:")) == 0)
        return TERN_SMTP_ESYNTAX;
    if (i >= len || s[i] != '<')
        return TERN_SMTP_ESYNTAX;
    if ((rc = scan_path(s, len, &i, true, false, &out->path, &flags)) != 0)
        return rc;
    if (!params_start_ok(s, len, i))
        return TERN_SMTP_ESYNTAX;
    param pm;
    while ((rc = next_param(s, len, &i, &pm)) == 1) {
        /* Non-ASCII is valid in no MAIL parameter value we know. */
        for (size_t k = 0; k < pm.val_len; k++)
            if ((unsigned char)pm.val[k] >= 0x80)
                return TERN_SMTP_ESYNTAX;
        if ((rc = mail_param(&pm, &seen, out)) != 0)
            return rc;
    }
    if (rc < 0)
        return rc;
    if ((flags & F_NONASCII) && !out->smtputf8)
        return TERN_SMTP_EUTF8;
    if (flags & F_BADUTF8)
        return TERN_SMTP_EPATH;
    return 0;
}

int tern_smtp_parse_rcpt(const char *args, size_t len, bool smtputf8, tern_smtp_rcpt_args *out)
{
    const unsigned char *s = (const unsigned char *)args;
    unsigned flags = 0, seen = 0;
    size_t i;
    int rc;

    memset(out, 0, sizeof(*out));
    out->path.p = args;
    out->orcpt.p = args;

    len = trim_len(args, len);
    if ((i = skip_prefix(args, len, "TO:")) == 0)
        return TERN_SMTP_ESYNTAX;
    if (i >= len || s[i] != '<')
        return TERN_SMTP_ESYNTAX;
    if ((rc = scan_path(s, len, &i, false, true, &out->path, &flags)) != 0)
        return rc;
    if ((flags & F_NONASCII) && !smtputf8)
        return TERN_SMTP_EUTF8;
    if (flags & F_BADUTF8)
        return TERN_SMTP_EPATH;
    if (!params_start_ok(s, len, i))
        return TERN_SMTP_ESYNTAX;
    param pm;
    while ((rc = next_param(s, len, &i, &pm)) == 1)
        if ((rc = rcpt_param(&pm, &seen, smtputf8, out)) != 0)
            return rc;
    return rc < 0 ? rc : 0;
}

int tern_smtp_parse_helo(const char *args, size_t len, tern_smtp_slice *domain_r)
{
    const unsigned char *s = (const unsigned char *)args;
    size_t a = 0, i;
    unsigned flags = 0;

    len = trim_len(args, len);
    while (a < len && s[a] == ' ')
        a++;
    if (a == len)
        return TERN_SMTP_ESYNTAX;
    i = a;
    if (s[i] == '[') {
        if (!scan_addr_literal(s, len, &i))
            return TERN_SMTP_ESYNTAX;
    } else if (!scan_domain(s, len, &i, true, &flags) || flags != 0)
        return TERN_SMTP_ESYNTAX;
    if (i != len)
        return TERN_SMTP_ESYNTAX;
    domain_r->p = args + a;
    domain_r->len = i - a;
    return 0;
}

int tern_smtp_parse_bdat(const char *args, size_t len, uint64_t *size_r, bool *last_r)
{
    size_t a = 0, i;

    len = trim_len(args, len);
    while (a < len && args[a] == ' ')
        a++;
    i = a;
    while (i < len && is_digit((unsigned char)args[i]))
        i++;
    if (parse_u64(args + a, i - a, size_r) != 0)
        return TERN_SMTP_ESYNTAX;
    *last_r = false;
    if (i == len)
        return 0;
    if (args[i] != ' ')
        return TERN_SMTP_ESYNTAX;
    while (i < len && args[i] == ' ')
        i++;
    if (!ieq(args + i, len - i, "LAST"))
        return TERN_SMTP_ESYNTAX;
    *last_r = true;
    return 0;
}

static bool is_base64(unsigned char c)
{
    return is_letdig(c) || c == '+' || c == '/';
}

int tern_smtp_parse_auth(const char *args, size_t len, tern_smtp_slice *mech_r,
                         tern_smtp_slice *initial_r)
{
    const unsigned char *s = (const unsigned char *)args;
    size_t a = 0, i;

    len = trim_len(args, len);
    while (a < len && s[a] == ' ')
        a++;
    i = a;
    while (i < len && (is_letdig(s[i]) || s[i] == '-' || s[i] == '_'))
        i++;
    if (i == a || i - a > 20 || (i < len && s[i] != ' '))
        return TERN_SMTP_ESYNTAX;
    mech_r->p = args + a;
    mech_r->len = i - a;
    while (i < len && s[i] == ' ')
        i++;
    initial_r->p = args + i;
    initial_r->len = len - i;
    if (i == len || (len - i == 1 && s[i] == '='))
        return 0;
    /* Padding is only checked for shape; decoding is the SASL layer's. */
    size_t k = i;
    while (k < len && is_base64(s[k]))
        k++;
    size_t pad = 0;
    while (k < len && s[k] == '=' && pad < 2) {
        k++;
        pad++;
    }
    if (k != len || k - pad == i)
        return TERN_SMTP_ESYNTAX;
    return 0;
}

int tern_smtp_mailbox_domain(const char *path, size_t len, tern_smtp_slice *domain_r)
{
    bool quoted = false;
    size_t at = len;
    for (size_t i = 0; i < len; i++) {
        char c = path[i];
        if (quoted && c == '\\') {
            i++;
            continue;
        }
        if (c == '"')
            quoted = !quoted;
        else if (c == '@' && !quoted)
            at = i;
    }
    if (at == len || at == 0 || at + 1 == len)
        return -1;
    domain_r->p = path + at + 1;
    domain_r->len = len - at - 1;
    return 0;
}
