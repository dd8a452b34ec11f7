/* DNS record data as typed values: the pure decoder from the wire form of
 * one record's rdata (as libunbound hands it in ub_result.data[]) to MX,
 * A/AAAA, TXT, TLSA, PTR/CNAME/NS, and the presentation form of names.
 * Input: untrusted bytes from the network (through the resolver); every
 * length is checked, nothing is read past the span, and every failure is a
 * code with a reason, never a crash. */
#ifndef TERN_DNS_RDATA_H
#define TERN_DNS_RDATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sys/socket.h>

#include "lib/arena.h"

enum {
    TERN_DNS_A = 1,
    TERN_DNS_NS = 2,
    TERN_DNS_CNAME = 5,
    TERN_DNS_PTR = 12,
    TERN_DNS_MX = 15,
    TERN_DNS_TXT = 16,
    TERN_DNS_AAAA = 28,
    TERN_DNS_TLSA = 52,
};

/* A name in presentation form is at most 4 * 255 characters (every byte
 * written as \DDD) plus the NUL. */
#define TERN_DNS_NAME_TEXT_MAX 1024
/* RFC 1035 3.1: 255 octets on the wire, 63 per label. */
#define TERN_DNS_NAME_WIRE_MAX 255
#define TERN_DNS_LABEL_MAX 63

typedef enum {
    TERN_DNS_RDATA_OK = 0,
    TERN_DNS_RDATA_TRUNCATED, /* the rdata ends inside a field */
    TERN_DNS_RDATA_TRAILING,  /* bytes after the last field */
    TERN_DNS_RDATA_BAD_NAME,  /* label type, pointer, or length over 255 */
    TERN_DNS_RDATA_BAD_LENGTH,/* A not 4 bytes, AAAA not 16, empty TXT */
    TERN_DNS_RDATA_NOMEM,
} tern_dns_rdata_status;

typedef struct tern_dns_bytes {
    const uint8_t *data; /* NUL-terminated for convenience; may hold NULs */
    size_t len;
} tern_dns_bytes;

typedef struct tern_dns_rr {
    uint16_t type;
    union {
        struct {
            int family;       /* AF_INET (A) or AF_INET6 (AAAA) */
            uint8_t bytes[16];/* network order; 4 used for AF_INET */
        } addr;
        struct {
            uint16_t preference;
            char *host;       /* presentation form, no trailing dot; "." is the root */
        } mx;
        char *name;           /* PTR, CNAME, NS: presentation form as for mx.host */
        struct {
            tern_dns_bytes *strings; /* the character-strings in order, unjoined */
            size_t n;
        } txt;
        struct {
            uint8_t usage, selector, mtype;
            const uint8_t *data; /* certificate association data */
            size_t len;
        } tlsa;
        tern_dns_bytes raw;   /* any other type: the rdata as received */
    } u;
} tern_dns_rr;

/* Decodes one record's rdata of `type` into *rr_r; strings and bytes are
 * copied into `a`. Names must be uncompressed (libunbound decompresses them
 * before handing rdata out): a compression pointer is BAD_NAME. On failure
 * *why_r (if not NULL) says what was wrong in a few words. */
tern_dns_rdata_status tern_dns_rdata_parse(tern_arena *a, uint16_t type, const uint8_t *rdata,
                                           size_t len, tern_dns_rr *rr_r, const char **why_r);

/* Reads one uncompressed wire name at p[0..len) into `out` (presentation
 * form: labels joined by '.', no trailing dot, "." for the root; '.', '\\'
 * and bytes outside printable ASCII escaped as \. \\ \DDD). *used_r gets
 * the wire bytes consumed. out_size of TERN_DNS_NAME_TEXT_MAX always fits. */
tern_dns_rdata_status tern_dns_name_read(const uint8_t *p, size_t len, size_t *used_r,
                                         char *out, size_t out_size, const char **why_r);

/* An A/AAAA record as a sockaddr with `port` (host order); returns the
 * length, 0 if rr is not an address. */
socklen_t tern_dns_rr_sockaddr(const tern_dns_rr *rr, uint16_t port, struct sockaddr_storage *ss);
/* An A/AAAA record as text ("192.0.2.1", "2001:db8::1"); "" if it is not one. */
const char *tern_dns_rr_addr_text(const tern_dns_rr *rr, char *buf, size_t size);

const char *tern_dns_type_name(uint16_t type);
/* "A", "mx", "TLSA"... to the type number; 0 if unknown. */
uint16_t tern_dns_type_from_name(const char *s);

#endif
