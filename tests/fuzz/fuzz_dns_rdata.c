/* fuzz_dns_rdata.c: libFuzzer target for lib/dns_rdata.c. Input: the first
 * byte picks the record type (A, AAAA, MX, TXT, TLSA, PTR, CNAME, or an
 * unknown one), the rest is one record's rdata; every decoded field is
 * read so ASan sees it. Also feeds the bytes to the name reader alone. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "lib/dns_rdata.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint16_t types[] = {TERN_DNS_A,   TERN_DNS_AAAA, TERN_DNS_MX,    TERN_DNS_TXT,
                                     TERN_DNS_TLSA, TERN_DNS_PTR, TERN_DNS_CNAME, 99};
    if (size < 1)
        return 0;
    uint16_t type = types[data[0] % (sizeof(types) / sizeof(types[0]))];
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    volatile size_t sink = 0;
    tern_arena a;
    tern_arena_init(&a, 512);
    tern_dns_rr rr;
    const char *why = NULL;
    if (tern_dns_rdata_parse(&a, type, p, n, &rr, &why) == TERN_DNS_RDATA_OK) {
        switch (type) {
        case TERN_DNS_MX: sink += strlen(rr.u.mx.host) + rr.u.mx.preference; break;
        case TERN_DNS_PTR:
        case TERN_DNS_CNAME: sink += strlen(rr.u.name); break;
        case TERN_DNS_TXT:
            for (size_t i = 0; i < rr.u.txt.n; i++)
                for (size_t k = 0; k <= rr.u.txt.strings[i].len; k++)
                    sink += rr.u.txt.strings[i].data[k];
            break;
        case TERN_DNS_TLSA:
            for (size_t k = 0; k < rr.u.tlsa.len; k++)
                sink += rr.u.tlsa.data[k];
            break;
        case TERN_DNS_A:
        case TERN_DNS_AAAA: {
            char buf[64];
            sink += strlen(tern_dns_rr_addr_text(&rr, buf, sizeof(buf)));
            break;
        }
        default:
            for (size_t k = 0; k < rr.u.raw.len; k++)
                sink += rr.u.raw.data[k];
        }
    } else {
        sink += strlen(why);
    }
    char name[TERN_DNS_NAME_TEXT_MAX];
    size_t used;
    if (tern_dns_name_read(p, n, &used, name, sizeof(name), NULL) == TERN_DNS_RDATA_OK)
        sink += strlen(name) + used;
    (void)sink;
    tern_arena_free(&a);
    return 0;
}
