/* libFuzzer target for TLSA matching (protocols/common/tls_dane.c). Input:
 * arbitrary bytes as a hostile peer's certificate, after a 4-byte header
 * picking the record's selector, matching type and association data
 * length (the data is the start of the certificate bytes, so full-data
 * records can match). Checked: the answer is -1, 0 or 1; a record that
 * is not usable is still answered without reading out of bounds; a
 * full-data match implies the data is inside the input. abort() on any
 * broken invariant. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "protocols/common/tls_dane.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    tern_tlsa t = {3, data[0] % 3, data[1] % 4, NULL, 0};
    size_t dlen = ((size_t)data[2] << 8 | data[3]);
    const uint8_t *der = data + 4;
    size_t len = size - 4;
    if (dlen > len)
        dlen = len;
    /* A private copy so reading past the data is caught by ASan. */
    uint8_t *assoc = malloc(dlen ? dlen : 1);
    if (assoc == NULL)
        return 0;
    memcpy(assoc, der, dlen);
    t.data = assoc;
    t.len = dlen;
    (void)tern_tlsa_usable(&t);
    int m = tern_tlsa_match_der(der, len, &t);
    CHECK(m == -1 || m == 0 || m == 1);
    if (m == 1 && t.mtype == TERN_TLSA_MATCH_SHA256)
        CHECK(dlen == 32);
    if (m == 1 && t.mtype == TERN_TLSA_MATCH_SHA512)
        CHECK(dlen == 64);
    free(assoc);
    return 0;
}
