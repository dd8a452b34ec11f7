/* Mailet SetHeader: makes the message carry exactly one field of that name
 * with that value: the first existing field is replaced in place, later
 * ones are removed, and when there is none it is added at the top. Input:
 * its YAML parameters (name, value), checked at init so that no value can
 * carry a line break and inject fields. */
#include <stdlib.h>
#include <string.h>

#include "mailets/builtin/builtin.h"

typedef struct {
    const char *name;
    const char *value;
} set_header;

/* RFC 5322 ftext: printable ASCII but ':'; capped like mail.c does. */
static bool field_name_ok(const char *s)
{
    if (s == NULL || s[0] == '\0' || strlen(s) > 128)
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p <= ' ' || *p >= 127 || *p == ':')
            return false;
    return true;
}

/* Tabs and UTF-8 (RFC 6532) pass; other controls, CR and LF do not. */
static bool field_value_ok(const char *s)
{
    if (s == NULL || strlen(s) > TERN_MAIL_MAX_VALUE)
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p < ' ' && *p != '\t') || *p == 127)
            return false;
    return true;
}

static int sh_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    static const char *const known[] = {"name", "value", NULL};
    if (tern_param_check(p, known, err, size) != 0)
        return -1;
    const char *name = tern_param_str(p, "name");
    const char *value = tern_param_str(p, "value");
    if (!field_name_ok(name))
        return tern_builtin_fail(err, size,
                                 "name: a header field name is required (printable ASCII, no "
                                 "spaces or ':', at most 128 characters)");
    if (value == NULL)
        return tern_builtin_fail(err, size, "value: a value is required (it may be empty)");
    if (!field_value_ok(value))
        return tern_builtin_fail(err, size,
                                 "value: control characters and line breaks are not allowed");
    set_header *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    a->name = name;
    a->value = value;
    *state_r = a;
    return 0;
}

static void sh_deinit(void *state)
{
    free(state);
}

static tern_mailet_verdict sh_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    set_header *a = state;
    if (tern_mail_header_set(m, a->name, a->value) != 0) {
        res->text = "could not set the header field (too many fields, or out of memory)";
        return TERN_MAILET_ERROR;
    }
    return TERN_MAILET_CONTINUE;
}

static const tern_mailet_module tern_mb_set_header = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "SetHeader",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = sh_init,
    .deinit = sh_deinit,
    .service = sh_service,
};
TERN_BUILTIN(tern_mb_set_header)
