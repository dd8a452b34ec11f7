/* Mailet RemoveHeader: removes every field of the named header(s), e.g.
 * internal trace or scoring fields before mail leaves. Input: its YAML
 * parameter `name`, one name or a list of names, checked at init. */
#include <stdlib.h>
#include <string.h>

#include "mailets/builtin/builtin.h"

#define RH_MAX_NAMES 64

typedef struct {
    const char *names[RH_MAX_NAMES];
    size_t n;
} remove_header;

static int rh_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    static const char *const known[] = {"name", NULL};
    if (tern_param_check(p, known, err, size) != 0)
        return -1;
    const tern_mailet_param *np = tern_param_get(p, "name");
    if (np == NULL)
        return tern_builtin_fail(err, size, "name: a header field name or a list of them is required");
    const char *const *names = np->value ? &np->value : np->list;
    size_t n = np->value ? 1 : np->n_list;
    if (n == 0)
        return tern_builtin_fail(err, size, "name: the list is empty");
    if (n > RH_MAX_NAMES)
        return tern_builtin_fail(err, size, "name: at most %d names", RH_MAX_NAMES);
    remove_header *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (!tern_mail_header_name_ok(names[i])) {
            free(r);
            return tern_builtin_fail(err, size,
                                     "name: \"%s\" is not a header field name (printable ASCII, "
                                     "no spaces or ':', at most 128 characters)",
                                     names[i] ? names[i] : "");
        }
        r->names[r->n++] = names[i];
    }
    *state_r = r;
    return 0;
}

static void rh_deinit(void *state)
{
    free(state);
}

static tern_mailet_verdict rh_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    remove_header *r = state;
    for (size_t i = 0; i < r->n; i++)
        tern_mail_header_remove(m, r->names[i]);
    return TERN_MAILET_CONTINUE;
}

static const tern_mailet_module tern_mb_remove_header = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "RemoveHeader",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = rh_init,
    .deinit = rh_deinit,
    .service = rh_service,
};
TERN_BUILTIN(tern_mb_remove_header)
