/* Registration of builtin matchers and mailets: each file in
 * mailets/builtin/ defines one tern_mailet_module and registers it with
 * TERN_BUILTIN(module) at load time, so adding a builtin is adding a file
 * (mailets/meson.build lists the folder). The library is linked whole for
 * that reason. Builtins use mailets/mail.h and mailets/engine.h directly;
 * plugins get the same functions through the host table. */
#ifndef TERN_MAILETS_BUILTIN_H
#define TERN_MAILETS_BUILTIN_H

#include "mailets/engine.h"
#include "mailets/mail.h"
#include "mailets/tern/mailet.h"

void tern_builtin_register(const tern_mailet_module *mod);

#define TERN_BUILTIN(mod)                                                 \
    __attribute__((constructor)) static void tern_builtin_reg_##mod(void) \
    {                                                                     \
        tern_builtin_register(&mod);                                      \
    }

/* Copies err into the init hook's buffer; returns -1 for `return`. */
int tern_builtin_fail(char *err, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
