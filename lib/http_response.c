/* http_response.c: URL splitting and the resumable HTTP/1.1 response
 * parser (see http_response.h; RFC 9112 for the message syntax). Input
 * trusted: limits and URLs from the caller. Untrusted: response bytes,
 * every one of which passes through the capped line buffer or the capped
 * body. */
#include "lib/http_response.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- URLs ---------------------------------------------------------------- */

static bool host_char_ok(char c)
{
    return isalnum((unsigned char)c) || c == '-' || c == '.' || c == '_';
}

int tern_http_url_parse(const char *url, tern_http_url *u, const char **why_r)
{
    const char *dummy;
    if (why_r == NULL)
        why_r = &dummy;
    memset(u, 0, sizeof(*u));
    if (url == NULL) {
        *why_r = "no URL";
        return -1;
    }
    const char *p;
    if (strncasecmp(url, "https://", 8) == 0) {
        u->tls = true;
        u->port = 443;
        p = url + 8;
    } else if (strncasecmp(url, "http://", 7) == 0) {
        u->port = 80;
        p = url + 7;
    } else {
        *why_r = "not an http:// or https:// URL";
        return -1;
    }
    size_t alen = strcspn(p, "/?#");
    if (memchr(p, '@', alen) != NULL) {
        *why_r = "credentials in the URL are not supported";
        return -1;
    }
    const char *hend;
    if (alen > 0 && p[0] == '[') {
        const char *rb = memchr(p, ']', alen);
        if (rb == NULL || (size_t)(rb - p - 1) > TERN_HTTP_MAX_HOST || rb == p + 1) {
            *why_r = "bad IPv6 address";
            return -1;
        }
        memcpy(u->host, p + 1, (size_t)(rb - p - 1));
        u->host[rb - p - 1] = '\0';
        struct in6_addr a6;
        if (inet_pton(AF_INET6, u->host, &a6) != 1) {
            *why_r = "bad IPv6 address";
            return -1;
        }
        u->host_is_ipv6 = true;
        hend = rb + 1;
    } else {
        hend = memchr(p, ':', alen);
        if (hend == NULL)
            hend = p + alen;
        size_t hl = (size_t)(hend - p);
        if (hl == 0 || hl > TERN_HTTP_MAX_HOST) {
            *why_r = hl == 0 ? "no host" : "host name too long";
            return -1;
        }
        for (size_t i = 0; i < hl; i++) {
            if (!host_char_ok(p[i])) {
                *why_r = "bad character in the host name";
                return -1;
            }
            u->host[i] = (char)tolower((unsigned char)p[i]);
        }
        u->host[hl] = '\0';
    }
    if (hend < p + alen) {
        if (*hend != ':' || hend + 1 == p + alen) {
            *why_r = "bad port";
            return -1;
        }
        unsigned long port = 0;
        for (const char *q = hend + 1; q < p + alen; q++) {
            if (*q < '0' || *q > '9' || port > 65535) {
                *why_r = "bad port";
                return -1;
            }
            port = port * 10 + (unsigned long)(*q - '0');
        }
        if (port == 0 || port > 65535) {
            *why_r = "bad port";
            return -1;
        }
        u->port = (uint16_t)port;
        u->port_given = true;
    }
    const char *rest = p + alen;
    size_t plen = strcspn(rest, "#");
    if (plen > TERN_HTTP_MAX_PATH - 1) {
        *why_r = "path too long";
        return -1;
    }
    for (size_t i = 0; i < plen; i++) {
        unsigned char c = (unsigned char)rest[i];
        if (c <= ' ' || c >= 0x7f) {
            *why_r = "bad character in the path (percent-encode it)";
            return -1;
        }
    }
    size_t off = 0;
    if (plen == 0 || rest[0] != '/')
        u->path[off++] = '/';
    memcpy(u->path + off, rest, plen);
    u->path[off + plen] = '\0';
    return 0;
}

bool tern_http_host_is_loopback(const char *host)
{
    if (host == NULL)
        return false;
    size_t n = strlen(host);
    if (strcasecmp(host, "localhost") == 0 ||
        (n > 10 && strcasecmp(host + n - 10, ".localhost") == 0))
        return true;
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return memcmp(&a6, &in6addr_loopback, sizeof(a6)) == 0;
    return false;
}

/* ---- responses ------------------------------------------------------------ */

enum {
    S_STATUS,
    S_HEADER,
    S_BODY_LEN,
    S_CHUNK_SIZE,
    S_CHUNK_DATA,
    S_CHUNK_END,
    S_TRAILER,
    S_BODY_EOF,
    S_DONE,
    S_ERROR,
};

void tern_http_resp_init(tern_http_resp *p, size_t max_head, size_t max_body, bool no_body)
{
    memset(p, 0, sizeof(*p));
    p->max_head = max_head ? max_head : TERN_HTTP_DEFAULT_MAX_HEAD;
    p->max_body = max_body ? max_body : TERN_HTTP_DEFAULT_MAX_BODY;
    p->no_body = no_body;
    p->state = S_STATUS;
}

void tern_http_resp_free(tern_http_resp *p)
{
    free(p->body);
    p->body = NULL;
    p->body_len = p->body_cap = 0;
}

static tern_http_resp_status fail(tern_http_resp *p, const char *why)
{
    p->state = S_ERROR;
    p->why = why;
    return TERN_HTTP_RESP_ERROR;
}

static int body_append(tern_http_resp *p, const uint8_t *d, size_t n)
{
    if (n > p->max_body - p->body_len)
        return -1;
    if (p->body_len + n + 1 > p->body_cap) {
        size_t cap = p->body_cap ? p->body_cap : 1024;
        while (cap < p->body_len + n + 1)
            cap *= 2;
        if (cap > p->max_body + 1)
            cap = p->max_body + 1;
        uint8_t *b = realloc(p->body, cap);
        if (b == NULL)
            return -2;
        p->body = b;
        p->body_cap = cap;
    }
    memcpy(p->body + p->body_len, d, n);
    p->body_len += n;
    p->body[p->body_len] = '\0';
    return 0;
}

static void trim(const char **s, size_t *n)
{
    while (*n > 0 && ((*s)[0] == ' ' || (*s)[0] == '\t')) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t'))
        (*n)--;
}

static bool tchar(char c)
{
    return isalnum((unsigned char)c) || strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static tern_http_resp_status status_line(tern_http_resp *p, const char *l, size_t n)
{
    /* HTTP-version SP 3DIGIT SP [reason]; a missing reason's SP is
     * tolerated, as deployed servers omit it. */
    if (n < 12 || memcmp(l, "HTTP/1.", 7) != 0 || l[7] < '0' || l[7] > '9' || l[8] != ' ' ||
        !isdigit((unsigned char)l[9]) || !isdigit((unsigned char)l[10]) ||
        !isdigit((unsigned char)l[11]) || (n > 12 && l[12] != ' '))
        return fail(p, "bad status line");
    p->minor = l[7] - '0';
    p->status = (l[9] - '0') * 100 + (l[10] - '0') * 10 + (l[11] - '0');
    if (p->status < 100 || p->status > 599)
        return fail(p, "status code out of range");
    if (p->status == 101)
        return fail(p, "unexpected protocol switch");
    p->state = S_HEADER;
    return TERN_HTTP_RESP_MORE;
}

static tern_http_resp_status end_of_head(tern_http_resp *p)
{
    if (p->status < 200) {
        /* An interim response: the real one follows. */
        p->chunked = p->have_length = p->conn_close = false;
        p->content_length = 0;
        p->content_type[0] = '\0';
        p->state = S_STATUS;
        return TERN_HTTP_RESP_MORE;
    }
    p->head_done = true;
    if (p->no_body || p->status == 204 || p->status == 304) {
        p->state = S_DONE;
        return TERN_HTTP_RESP_DONE;
    }
    if (p->chunked && p->have_length)
        return fail(p, "both Content-Length and Transfer-Encoding");
    if (p->chunked) {
        p->state = S_CHUNK_SIZE;
        return TERN_HTTP_RESP_MORE;
    }
    if (p->have_length) {
        if (p->content_length > p->max_body)
            return fail(p, "body over the size limit");
        if (p->content_length == 0) {
            p->state = S_DONE;
            return TERN_HTTP_RESP_DONE;
        }
        p->remaining = p->content_length;
        p->state = S_BODY_LEN;
        return TERN_HTTP_RESP_MORE;
    }
    p->state = S_BODY_EOF;
    return TERN_HTTP_RESP_MORE;
}

static tern_http_resp_status header_line(tern_http_resp *p, const char *l, size_t n)
{
    if (n == 0)
        return end_of_head(p);
    if (l[0] == ' ' || l[0] == '\t')
        return fail(p, "folded header line");
    const char *colon = memchr(l, ':', n);
    if (colon == NULL || colon == l)
        return fail(p, "header line without a name");
    for (const char *c = l; c < colon; c++)
        if (!tchar(*c))
            return fail(p, "bad character in a header name");
    size_t nl = (size_t)(colon - l);
    const char *v = colon + 1;
    size_t vl = n - nl - 1;
    trim(&v, &vl);
    if (p->state == S_TRAILER)
        return TERN_HTTP_RESP_MORE; /* trailer fields are not used */
    if (nl == 14 && strncasecmp(l, "content-length", 14) == 0) {
        if (vl == 0 || vl > 19)
            return fail(p, "bad Content-Length");
        uint64_t cl = 0;
        for (size_t i = 0; i < vl; i++) {
            if (!isdigit((unsigned char)v[i]))
                return fail(p, "bad Content-Length");
            cl = cl * 10 + (uint64_t)(v[i] - '0');
        }
        if (p->have_length && cl != p->content_length)
            return fail(p, "conflicting Content-Length fields");
        p->have_length = true;
        p->content_length = cl;
    } else if (nl == 17 && strncasecmp(l, "transfer-encoding", 17) == 0) {
        if (p->chunked || vl != 7 || strncasecmp(v, "chunked", 7) != 0)
            return fail(p, "transfer-coding other than chunked");
        p->chunked = true;
    } else if (nl == 10 && strncasecmp(l, "connection", 10) == 0) {
        for (size_t i = 0; i + 5 <= vl; i++)
            if (strncasecmp(v + i, "close", 5) == 0)
                p->conn_close = true;
    } else if (nl == 12 && strncasecmp(l, "content-type", 12) == 0) {
        if (vl < sizeof(p->content_type)) {
            memcpy(p->content_type, v, vl);
            p->content_type[vl] = '\0';
        } else {
            p->content_type[0] = '\0';
        }
    }
    return TERN_HTTP_RESP_MORE;
}

static tern_http_resp_status chunk_size_line(tern_http_resp *p, const char *l, size_t n)
{
    uint64_t sz = 0;
    size_t i = 0;
    for (; i < n && isxdigit((unsigned char)l[i]); i++) {
        if (i >= 15)
            return fail(p, "chunk size too large");
        int d = isdigit((unsigned char)l[i]) ? l[i] - '0' : (tolower((unsigned char)l[i]) - 'a' + 10);
        sz = sz * 16 + (uint64_t)d;
    }
    if (i == 0)
        return fail(p, "bad chunk size");
    while (i < n && (l[i] == ' ' || l[i] == '\t'))
        i++;
    if (i < n && l[i] != ';')
        return fail(p, "bad chunk size");
    if (sz == 0) {
        p->state = S_TRAILER;
        return TERN_HTTP_RESP_MORE;
    }
    if (sz > p->max_body - p->body_len)
        return fail(p, "body over the size limit");
    p->remaining = sz;
    p->state = S_CHUNK_DATA;
    return TERN_HTTP_RESP_MORE;
}

/* One complete line (without its end) in the state that reads lines. */
static tern_http_resp_status line_done(tern_http_resp *p, const char *l, size_t n)
{
    switch (p->state) {
    case S_STATUS:
        return status_line(p, l, n);
    case S_HEADER:
        return header_line(p, l, n);
    case S_CHUNK_SIZE:
        return chunk_size_line(p, l, n);
    case S_CHUNK_END:
        if (n != 0)
            return fail(p, "chunk data longer than its size");
        p->state = S_CHUNK_SIZE;
        return TERN_HTTP_RESP_MORE;
    case S_TRAILER:
        if (n == 0) {
            p->state = S_DONE;
            return TERN_HTTP_RESP_DONE;
        }
        return header_line(p, l, n);
    default:
        return fail(p, "internal: no line expected");
    }
}

static bool counts_in_head(const tern_http_resp *p)
{
    return p->state == S_STATUS || p->state == S_HEADER || p->state == S_TRAILER;
}

tern_http_resp_status tern_http_resp_parse(tern_http_resp *p, const uint8_t *data, size_t len,
                                           size_t *used_r)
{
    size_t i = 0;
    tern_http_resp_status st = TERN_HTTP_RESP_MORE;
    if (p->state == S_ERROR)
        st = TERN_HTTP_RESP_ERROR;
    else if (p->state == S_DONE)
        st = TERN_HTTP_RESP_DONE;
    while (st == TERN_HTTP_RESP_MORE && i < len) {
        if (p->state == S_BODY_LEN || p->state == S_CHUNK_DATA || p->state == S_BODY_EOF) {
            size_t n = len - i;
            if (p->state != S_BODY_EOF && n > p->remaining)
                n = (size_t)p->remaining;
            int r = body_append(p, data + i, n);
            if (r != 0) {
                st = fail(p, r == -1 ? "body over the size limit" : "out of memory");
                break;
            }
            i += n;
            if (p->state == S_BODY_EOF)
                continue;
            p->remaining -= n;
            if (p->remaining == 0) {
                if (p->state == S_BODY_LEN) {
                    p->state = S_DONE;
                    st = TERN_HTTP_RESP_DONE;
                } else {
                    p->state = S_CHUNK_END;
                }
            }
            continue;
        }
        uint8_t c = data[i++];
        if (counts_in_head(p) && ++p->head_len > p->max_head) {
            st = fail(p, "response head over the size limit");
            break;
        }
        if (c == '\n') {
            size_t n = p->line_len;
            if (n > 0 && p->line[n - 1] == '\r')
                n--;
            p->line[n] = '\0';
            p->line_len = 0;
            st = line_done(p, p->line, n);
            continue;
        }
        if (c == '\0' || (p->line_len > 0 && p->line[p->line_len - 1] == '\r')) {
            st = fail(p, c == '\0' ? "NUL in the response head" : "CR not followed by LF");
            break;
        }
        if (p->line_len == TERN_HTTP_MAX_LINE) {
            st = fail(p, "line too long");
            break;
        }
        p->line[p->line_len++] = (char)c;
    }
    if (used_r != NULL)
        *used_r = i;
    return st;
}

tern_http_resp_status tern_http_resp_eof(tern_http_resp *p)
{
    if (p->state == S_DONE)
        return TERN_HTTP_RESP_DONE;
    if (p->state == S_ERROR)
        return TERN_HTTP_RESP_ERROR;
    if (p->state == S_BODY_EOF) {
        p->state = S_DONE;
        return TERN_HTTP_RESP_DONE;
    }
    if (p->state == S_STATUS && p->head_len == 0)
        return fail(p, "connection closed without a response");
    return fail(p, "connection closed before the response was complete");
}
