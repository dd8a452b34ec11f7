/* libFuzzer target for the RFC 5322 address-list parser (lib/address.c).
 * Input: arbitrary bytes, taken as one header value. Checked: the parse
 * never fails but for memory; entries number at most TERN_ADDRESS_MAX
 * plus group markers; groups are balanced and never nested; a mailbox's
 * decoded name is valid UTF-8 without control characters; every string is
 * NUL-terminated inside the arena; address specs can be made for every
 * mailbox with a local part, and parsing again with and without decoding
 * gives the same structure. Any broken invariant calls abort(). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/address.h"
#include "lib/rfc2047.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

static void check_clean_utf8(const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        CHECK((uint8_t)s[i] >= 0x20 && s[i] != 0x7f);
        size_t k = tern_utf8_seq_len((const uint8_t *)s + i, n - i);
        CHECK(k > 0);
        i += k;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tern_arena a;
    tern_arena_init(&a, 0);
    size_t n1, n2;
    tern_address *l1 = tern_address_list_parse(&a, (const char *)data, size, TERN_ADDRESS_DECODE, &n1);
    tern_address *l2 = tern_address_list_parse(&a, (const char *)data, size, 0, &n2);
    CHECK(n1 == n2 && n1 != (size_t)-1);
    CHECK((n1 == 0) == (l1 == NULL));
    size_t count = 0, mailboxes = 0;
    int depth = 0;
    for (tern_address *x = l1, *y = l2; x; x = x->next, y = y->next) {
        CHECK(y && x->kind == y->kind);
        count++;
        switch (x->kind) {
        case TERN_ADDRESS_GROUP_START:
            CHECK(depth == 0);
            depth++;
            break;
        case TERN_ADDRESS_GROUP_END:
            CHECK(depth == 1);
            depth--;
            CHECK(!x->name && !x->local && !x->domain);
            break;
        case TERN_ADDRESS_MAILBOX:
            mailboxes++;
            if (x->local) {
                char *spec = tern_address_spec(&a, x);
                CHECK(spec && strlen(spec) >= strlen(x->local));
            }
            if (x->domain)
                (void)strlen(x->domain);
            if (x->route)
                CHECK(x->route[0] == '@');
            break;
        }
        CHECK(!x->name == !x->name_decoded);
        CHECK(!y->name_decoded);
        if (x->name_decoded)
            check_clean_utf8(x->name_decoded);
        if (x->name)
            CHECK(strcmp(x->name, y->name) == 0);
    }
    CHECK(depth == 0);
    CHECK(count == n1);
    CHECK(mailboxes <= TERN_ADDRESS_MAX);
    tern_arena_free(&a);
    return 0;
}
