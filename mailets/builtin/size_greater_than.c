/* Matcher SizeGreaterThan: every recipient when the message (header and
 * body as stored) is larger than the condition: bytes, or a number with k,
 * m or g (any case: KiB, MiB, GiB as in James), or the config's size forms
 * ("10MiB", "64kB"). Input: the condition (checked at init); the message
 * size. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/util.h"
#include "mailets/builtin/matcher_util.h"

static int sgt_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                    char *err, size_t size)
{
    const char *c = tern_matcher_condition(p, "SizeGreaterThan", "10m", err, size);
    if (c == NULL)
        return -1;
    char buf[64];
    size_t n = strlen(c);
    while (n > 0 && (c[n - 1] == ' ' || c[n - 1] == '\t'))
        n--;
    size_t s = 0;
    while (s < n && (c[s] == ' ' || c[s] == '\t'))
        s++;
    uint64_t v = 0;
    bool ok = n - s > 0 && n - s < sizeof(buf);
    if (ok) {
        memcpy(buf, c + s, n - s);
        buf[n - s] = '\0';
        /* James writes 10k, 5m, 1g (binary multiples); the config parser
         * knows them in upper case. */
        size_t bl = n - s;
        char last = buf[bl - 1];
        if (bl >= 2 && buf[bl - 2] >= '0' && buf[bl - 2] <= '9' &&
            (last == 'k' || last == 'm' || last == 'g'))
            buf[bl - 1] = (char)(last - 'a' + 'A');
        ok = tern_parse_size(buf, &v) == 0;
    }
    if (!ok)
        return tern_builtin_fail(err, size, "\"%s\" is not a size (bytes, or with k, m, g)", c);
    uint64_t *st = malloc(sizeof(*st));
    if (st == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    *st = v;
    *state_r = st;
    return 0;
}

static void sgt_deinit(void *state)
{
    free(state);
}

static int sgt_match(void *state, tern_mail *m, bool *matched)
{
    tern_matcher_all(m, matched, tern_mail_size(m) > *(uint64_t *)state);
    return 0;
}

static const tern_mailet_module tern_mb_size_greater_than = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "SizeGreaterThan",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = sgt_init,
    .deinit = sgt_deinit,
    .match = sgt_match,
};
TERN_BUILTIN(tern_mb_size_greater_than)
