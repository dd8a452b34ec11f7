/* Shared parameter checking of AddHeader and SetHeader (see
 * header_param.h). Input: the step's YAML parameters. */
#include "mailets/builtin/header_param.h"

#include <stdlib.h>
#include <string.h>

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

int tern_header_param_init(const tern_mailet_params *p, void **state_r, char *err, size_t size)
{
    static const char *const known[] = {"name", "value", NULL};
    if (tern_param_check(p, known, err, size) != 0)
        return -1;
    const char *name = tern_param_str(p, "name");
    const char *value = tern_param_str(p, "value");
    if (!tern_mail_header_name_ok(name))
        return tern_builtin_fail(err, size,
                                 "name: a header field name is required (printable ASCII, no "
                                 "spaces or ':', at most 128 characters)");
    if (value == NULL)
        return tern_builtin_fail(err, size, "value: a value is required (it may be empty)");
    if (!field_value_ok(value))
        return tern_builtin_fail(err, size,
                                 "value: control characters and line breaks are not allowed");
    tern_header_param *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    a->name = name;
    a->value = value;
    *state_r = a;
    return 0;
}
