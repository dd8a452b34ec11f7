/* The pure decoder of DNS rdata into typed records (see dns_rdata.h). Input:
 * untrusted rdata bytes, one record at a time; no state is kept between
 * calls, so a record is either decoded whole or refused with a reason. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "lib/dns_rdata.h"

static tern_dns_rdata_status fail(const char **why_r, tern_dns_rdata_status st, const char *why)
{
    if (why_r)
        *why_r = why;
    return st;
}

/* Bytes a zone file could show as they are; the rest is escaped so that a
 * hostile name cannot put control bytes into a log line or a header. */
static bool name_plain(uint8_t c)
{
    return c > 0x20 && c < 0x7f && c != '.' && c != '\\' && c != '"' && c != ';' && c != '(' &&
           c != ')';
}

tern_dns_rdata_status tern_dns_name_read(const uint8_t *p, size_t len, size_t *used_r,
                                         char *out, size_t out_size, const char **why_r)
{
    size_t at = 0, o = 0, wire = 0;
    if (out_size < 2)
        return fail(why_r, TERN_DNS_RDATA_NOMEM, "output too small");
    for (;;) {
        if (at >= len)
            return fail(why_r, TERN_DNS_RDATA_TRUNCATED, "name truncated");
        uint8_t l = p[at];
        if ((l & 0xc0) == 0xc0)
            return fail(why_r, TERN_DNS_RDATA_BAD_NAME, "compression pointer in rdata");
        if (l & 0xc0)
            return fail(why_r, TERN_DNS_RDATA_BAD_NAME, "unknown label type");
        wire += 1u + l;
        if (wire > TERN_DNS_NAME_WIRE_MAX)
            return fail(why_r, TERN_DNS_RDATA_BAD_NAME, "name longer than 255 octets");
        at++;
        if (l == 0)
            break;
        if (len - at < l)
            return fail(why_r, TERN_DNS_RDATA_TRUNCATED, "label truncated");
        if (o > 0) {
            if (o + 1 >= out_size)
                return fail(why_r, TERN_DNS_RDATA_NOMEM, "output too small");
            out[o++] = '.';
        }
        for (size_t i = 0; i < l; i++) {
            uint8_t c = p[at + i];
            char esc[5];
            size_t n;
            if (name_plain(c)) {
                esc[0] = (char)c;
                n = 1;
            } else if (c == '.' || c == '\\' || c == '"' || c == ';' || c == '(' || c == ')') {
                esc[0] = '\\';
                esc[1] = (char)c;
                n = 2;
            } else {
                snprintf(esc, sizeof(esc), "\\%03u", (unsigned)c);
                n = 4;
            }
            if (o + n >= out_size)
                return fail(why_r, TERN_DNS_RDATA_NOMEM, "output too small");
            memcpy(out + o, esc, n);
            o += n;
        }
        at += l;
    }
    if (o == 0)
        out[o++] = '.';
    out[o] = '\0';
    *used_r = at;
    return TERN_DNS_RDATA_OK;
}

static tern_dns_rdata_status take_name(tern_arena *a, const uint8_t *p, size_t len, size_t *used_r,
                                       char **name_r, const char **why_r)
{
    char buf[TERN_DNS_NAME_TEXT_MAX];
    tern_dns_rdata_status st = tern_dns_name_read(p, len, used_r, buf, sizeof(buf), why_r);
    if (st != TERN_DNS_RDATA_OK)
        return st;
    *name_r = tern_arena_strdup(a, buf);
    if (*name_r == NULL)
        return fail(why_r, TERN_DNS_RDATA_NOMEM, "out of memory");
    return TERN_DNS_RDATA_OK;
}

/* A copy with a NUL after it, so text records can be printed as C strings
 * when the caller knows they hold none. */
static const uint8_t *copy_bytes(tern_arena *a, const uint8_t *p, size_t n)
{
    uint8_t *c = tern_arena_alloc(a, n + 1);
    if (c != NULL && n > 0)
        memcpy(c, p, n);
    return c;
}

static tern_dns_rdata_status parse_txt(tern_arena *a, const uint8_t *p, size_t len, tern_dns_rr *rr,
                                       const char **why_r)
{
    /* RFC 1035 3.3.14: one or more character-strings. Count first so the
     * array is allocated once. */
    size_t n = 0;
    if (len == 0)
        return fail(why_r, TERN_DNS_RDATA_BAD_LENGTH, "empty TXT rdata");
    for (size_t at = 0; at < len; n++) {
        size_t l = p[at];
        if (len - at - 1 < l)
            return fail(why_r, TERN_DNS_RDATA_TRUNCATED, "character-string truncated");
        at += 1 + l;
    }
    tern_dns_bytes *s = tern_arena_alloc(a, n * sizeof(*s));
    if (s == NULL)
        return fail(why_r, TERN_DNS_RDATA_NOMEM, "out of memory");
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = p[at];
        s[i].data = copy_bytes(a, p + at + 1, l);
        s[i].len = l;
        if (s[i].data == NULL)
            return fail(why_r, TERN_DNS_RDATA_NOMEM, "out of memory");
        at += 1 + l;
    }
    rr->u.txt.strings = s;
    rr->u.txt.n = n;
    return TERN_DNS_RDATA_OK;
}

tern_dns_rdata_status tern_dns_rdata_parse(tern_arena *a, uint16_t type, const uint8_t *rdata,
                                           size_t len, tern_dns_rr *rr_r, const char **why_r)
{
    tern_dns_rdata_status st;
    size_t used = 0;
    memset(rr_r, 0, sizeof(*rr_r));
    rr_r->type = type;
    if (rdata == NULL && len > 0)
        return fail(why_r, TERN_DNS_RDATA_TRUNCATED, "no rdata");
    switch (type) {
    case TERN_DNS_A:
    case TERN_DNS_AAAA: {
        size_t want = type == TERN_DNS_A ? 4 : 16;
        if (len != want)
            return fail(why_r, TERN_DNS_RDATA_BAD_LENGTH,
                        type == TERN_DNS_A ? "A rdata is not 4 octets" : "AAAA rdata is not 16 octets");
        rr_r->u.addr.family = type == TERN_DNS_A ? AF_INET : AF_INET6;
        memcpy(rr_r->u.addr.bytes, rdata, want);
        return TERN_DNS_RDATA_OK;
    }
    case TERN_DNS_MX:
        if (len < 2)
            return fail(why_r, TERN_DNS_RDATA_TRUNCATED, "MX preference truncated");
        rr_r->u.mx.preference = (uint16_t)((rdata[0] << 8) | rdata[1]);
        st = take_name(a, rdata + 2, len - 2, &used, &rr_r->u.mx.host, why_r);
        if (st != TERN_DNS_RDATA_OK)
            return st;
        if (2 + used != len)
            return fail(why_r, TERN_DNS_RDATA_TRAILING, "bytes after the MX exchange");
        return TERN_DNS_RDATA_OK;
    case TERN_DNS_PTR:
    case TERN_DNS_CNAME:
    case TERN_DNS_NS:
        st = take_name(a, rdata, len, &used, &rr_r->u.name, why_r);
        if (st != TERN_DNS_RDATA_OK)
            return st;
        if (used != len)
            return fail(why_r, TERN_DNS_RDATA_TRAILING, "bytes after the name");
        return TERN_DNS_RDATA_OK;
    case TERN_DNS_TXT:
        return parse_txt(a, rdata, len, rr_r, why_r);
    case TERN_DNS_TLSA:
        if (len < 3)
            return fail(why_r, TERN_DNS_RDATA_TRUNCATED, "TLSA rdata shorter than 3 octets");
        rr_r->u.tlsa.usage = rdata[0];
        rr_r->u.tlsa.selector = rdata[1];
        rr_r->u.tlsa.mtype = rdata[2];
        rr_r->u.tlsa.len = len - 3;
        rr_r->u.tlsa.data = copy_bytes(a, rdata + 3, len - 3);
        if (rr_r->u.tlsa.data == NULL)
            return fail(why_r, TERN_DNS_RDATA_NOMEM, "out of memory");
        return TERN_DNS_RDATA_OK;
    default:
        rr_r->u.raw.len = len;
        rr_r->u.raw.data = copy_bytes(a, rdata, len);
        if (rr_r->u.raw.data == NULL)
            return fail(why_r, TERN_DNS_RDATA_NOMEM, "out of memory");
        return TERN_DNS_RDATA_OK;
    }
}

socklen_t tern_dns_rr_sockaddr(const tern_dns_rr *rr, uint16_t port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (rr->type == TERN_DNS_A) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        memcpy(&s4->sin_addr, rr->u.addr.bytes, 4);
        return sizeof(*s4);
    }
    if (rr->type == TERN_DNS_AAAA) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        memcpy(&s6->sin6_addr, rr->u.addr.bytes, 16);
        return sizeof(*s6);
    }
    return 0;
}

const char *tern_dns_rr_addr_text(const tern_dns_rr *rr, char *buf, size_t size)
{
    if (size == 0)
        return buf;
    buf[0] = '\0';
    if (rr->type == TERN_DNS_A || rr->type == TERN_DNS_AAAA)
        if (inet_ntop(rr->u.addr.family, rr->u.addr.bytes, buf, (socklen_t)size) == NULL)
            buf[0] = '\0';
    return buf;
}

static const struct {
    uint16_t type;
    const char *name;
} type_names[] = {
    {TERN_DNS_A, "A"},     {TERN_DNS_NS, "NS"},   {TERN_DNS_CNAME, "CNAME"},
    {TERN_DNS_PTR, "PTR"}, {TERN_DNS_MX, "MX"},   {TERN_DNS_TXT, "TXT"},
    {TERN_DNS_AAAA, "AAAA"}, {TERN_DNS_TLSA, "TLSA"},
};

const char *tern_dns_type_name(uint16_t type)
{
    for (size_t i = 0; i < sizeof(type_names) / sizeof(type_names[0]); i++)
        if (type_names[i].type == type)
            return type_names[i].name;
    return "?";
}

uint16_t tern_dns_type_from_name(const char *s)
{
    for (size_t i = 0; i < sizeof(type_names) / sizeof(type_names[0]); i++)
        if (strcasecmp(type_names[i].name, s) == 0)
            return type_names[i].type;
    return 0;
}
