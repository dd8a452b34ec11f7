/* Name rules both backends apply, so that a name valid in one is valid in
 * the other and a migration between them cannot fail on a name. Input:
 * names from protocol code (already unquoted/decoded), untrusted content. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "storage/store_backend.h"

#define MAX_MAILBOX_NAME 512
#define MAX_LOCALPART 64
#define MAX_DOMAIN 253

/* Well-formed UTF-8 without overlongs, surrogates or code points past
 * U+10FFFF. */
static bool names__utf8_ok(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        size_t len;
        unsigned min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2; min = 0x80; c &= 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3; min = 0x800; c &= 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4; min = 0x10000; c &= 0x07;
        } else {
            return false;
        }
        if (i + len > n)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return false;
            c = (c << 6) | (p[i + k] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return false;
        i += len;
    }
    return true;
}

bool tern_store__valid_mailbox_name(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > MAX_MAILBOX_NAME || name[0] == '/' || name[n - 1] == '/')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        /* Control characters never belong in a name; '*' and '%' are LIST
         * wildcards, so a mailbox named with them could not be listed
         * exactly. */
        if (c < 0x20 || c == 0x7f || c == '*' || c == '%')
            return false;
        if (c == '/' && name[i + 1] == '/')
            return false;
    }
    /* No "." or ".." path component: the local backend maps names to
     * directories. */
    const char *p = name;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if ((len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
            return false;
        p += len;
        if (*p == '/')
            p++;
    }
    return names__utf8_ok((const unsigned char *)name, n);
}

bool tern_store__valid_domain(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > MAX_DOMAIN)
        return false;
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c == '.') {
            if (label == 0 || name[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        if (!(isalnum(c) || c == '-' || c == '_') || isupper(c))
            return false;
        if (label == 0 && c == '-')
            return false;
        if (++label > 63)
            return false;
    }
    return label > 0 && name[n - 1] != '-';
}

bool tern_store__valid_account_name(const char *name)
{
    const char *at = name ? strrchr(name, '@') : NULL;
    if (at == NULL || at == name || (size_t)(at - name) > MAX_LOCALPART)
        return false;
    for (const char *p = name; p < at; p++) {
        unsigned char c = (unsigned char)*p;
        /* Characters that would need quoting in an address, or that would
         * be unsafe in a file name, are refused for account names. */
        if (c <= 0x20 || c == 0x7f || c == '@' || c == '/' || c == '"' || c == '\\' || c == '<' ||
            c == '>' || c == ',' || c == ';' || c == ':' || c == '(' || c == ')' || c == '[' ||
            c == ']')
            return false;
    }
    if (name[0] == '.' || at[-1] == '.' || strstr(name, "..") != NULL)
        return false;
    return names__utf8_ok((const unsigned char *)name, (size_t)(at - name)) &&
           tern_store__valid_domain(at + 1);
}

const char *tern_store__canon_mailbox(tern_arena *a, const char *name)
{
    if (strncasecmp(name, "INBOX", 5) == 0 && (name[5] == '\0' || name[5] == '/')) {
        char *c = tern_arena_strdup(a, name);
        if (c)
            memcpy(c, "INBOX", 5);
        return c;
    }
    return tern_arena_strdup(a, name);
}

/* Dynamic programming over (pattern position, name prefix): O(|p|*|n|)
 * time whatever the wildcards, so a hostile LIST pattern such as
 * "*a*a*a*a*b" costs no more than a plain one. row[i] says whether the
 * pattern so far matches the first i bytes of the name. */
static bool names__match(const char *p, const char *n)
{
    size_t nl = strlen(n);
    if (nl > MAX_MAILBOX_NAME * 2)
        return false;
    bool a[MAX_MAILBOX_NAME * 2 + 1], b[MAX_MAILBOX_NAME * 2 + 1];
    bool *prev = a, *cur = b;
    prev[0] = true;
    for (size_t i = 1; i <= nl; i++)
        prev[i] = false;
    for (; *p; p++) {
        char c = *p;
        cur[0] = prev[0] && (c == '*' || c == '%');
        for (size_t i = 1; i <= nl; i++) {
            if (c == '*')
                cur[i] = prev[i] || cur[i - 1];
            else if (c == '%')
                cur[i] = prev[i] || (cur[i - 1] && n[i - 1] != '/');
            else
                cur[i] = prev[i - 1] && n[i - 1] == c;
        }
        bool *t = prev;
        prev = cur;
        cur = t;
    }
    return prev[nl];
}

bool tern_store__pattern_match(const char *pattern, const char *name)
{
    /* INBOX is case-insensitive in patterns too (RFC 9051 5.1). */
    char pbuf[MAX_MAILBOX_NAME * 2 + 1];
    size_t pl = strlen(pattern);
    if (pl >= sizeof(pbuf))
        return false;
    memcpy(pbuf, pattern, pl + 1);
    if (strncasecmp(pbuf, "INBOX", 5) == 0 && (pbuf[5] == '\0' || pbuf[5] == '/' ||
                                              pbuf[5] == '*' || pbuf[5] == '%'))
        memcpy(pbuf, "INBOX", 5);
    return names__match(pbuf, name);
}

bool tern_store__split_detail(tern_arena *a, const char *addr, char **base_r, char **detail_r)
{
    const char *at = strrchr(addr, '@');
    if (at == NULL)
        return false;
    const char *plus = memchr(addr, '+', (size_t)(at - addr));
    if (plus == NULL || plus == addr)
        return false;
    *base_r = tern_arena_printf(a, "%.*s%s", (int)(plus - addr), addr, at);
    *detail_r = tern_arena_strndup(a, plus + 1, (size_t)(at - plus - 1));
    return *base_r != NULL && *detail_r != NULL;
}
