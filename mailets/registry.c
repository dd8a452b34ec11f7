/* The builtin registry and the host table handed to every module. The
 * registry is filled by constructors before main() and only read after,
 * so it needs no lock. Input: module structs compiled into ternd. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "mailets/builtin/builtin.h"

#define MAX_BUILTINS 128

static const tern_mailet_module *builtins[MAX_BUILTINS];
static size_t n_builtins;

void tern_builtin_register(const tern_mailet_module *mod)
{
    if (n_builtins < MAX_BUILTINS)
        builtins[n_builtins++] = mod;
}

const tern_mailet_module *tern_builtin_find(const char *name)
{
    for (size_t i = 0; name && i < n_builtins; i++)
        if (strcmp(builtins[i]->name, name) == 0)
            return builtins[i];
    return NULL;
}

size_t tern_builtin_list(const tern_mailet_module **out, size_t max)
{
    size_t n = n_builtins < max ? n_builtins : max;
    memcpy(out, builtins, n * sizeof(*out));
    return n_builtins;
}

int tern_builtin_fail(char *err, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (err && size)
        vsnprintf(err, size, fmt, ap);
    va_end(ap);
    return -1;
}

static void *host_loop(const tern_mail *m)
{
    return tern_mail_loop(m);
}

static const tern_mailet_host host = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_host),
    .qid = tern_mail_qid,
    .sender = tern_mail_sender,
    .set_sender = tern_mail_set_sender,
    .rcpt_count = tern_mail_rcpt_count,
    .rcpt = tern_mail_rcpt,
    .rcpt_add = tern_mail_rcpt_add,
    .rcpt_remove = tern_mail_rcpt_remove,
    .rcpt_replace = tern_mail_rcpt_replace,
    .remote_addr = tern_mail_remote_addr,
    .helo = tern_mail_helo,
    .auth_user = tern_mail_auth_user,
    .listener = tern_mail_listener,
    .header_count = tern_mail_header_count,
    .header_get = tern_mail_header_get,
    .header_name_at = tern_mail_header_name_at,
    .header_value_at = tern_mail_header_value_at,
    .header_add = tern_mail_header_add,
    .header_set = tern_mail_header_set,
    .header_remove = tern_mail_header_remove,
    .size = tern_mail_size,
    .body_size = tern_mail_body_size,
    .body_read = tern_mail_body_read,
    .body_replace = tern_mail_body_replace,
    .attr_set_str = tern_mail_attr_set_str_public,
    .attr_set_int = tern_mail_attr_set_int_public,
    .attr_set_bool = tern_mail_attr_set_bool_public,
    .attr_get_str = tern_mail_attr_get_str,
    .attr_get_int = tern_mail_attr_get_int,
    .attr_get_bool = tern_mail_attr_get_bool,
    .attr_has = tern_mail_attr_has,
    .attr_remove = tern_mail_attr_remove_public,
    .log = tern_mail_log,
    .call_async = tern_mail_call_async,
    .resume = tern_mail_resume,
    .loop = host_loop,
};

const tern_mailet_host *tern_mailet_host_table(void)
{
    return &host;
}
