/* Mailet ToProcessor: sends the mail to another processor. `notice` sets
 * the error text a bounce will quote (tern.error.*), so a chain can route
 * to `bounces` with a reason. Input: its YAML parameters. */
#include <stdlib.h>
#include <string.h>

#include "mailets/builtin/builtin.h"

typedef struct {
    const char *processor;
    const char *notice;
} to_processor;

static int tp_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    static const char *const known[] = {"processor", "notice", NULL};
    if (tern_param_check(p, known, err, size) != 0)
        return -1;
    const char *proc = tern_param_str(p, "processor");
    if (proc == NULL || proc[0] == '\0')
        return tern_builtin_fail(err, size, "processor: a processor name is required");
    to_processor *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    t->processor = proc;
    t->notice = tern_param_str(p, "notice");
    *state_r = t;
    return 0;
}

static void tp_deinit(void *state)
{
    free(state);
}

static tern_mailet_verdict tp_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    to_processor *t = state;
    if (t->notice) {
        /* "5.1.1 text": an enhanced code first, when given. */
        const char *text = t->notice;
        char enh[16] = "";
        size_t n = strcspn(text, " ");
        if (n > 0 && n < sizeof(enh) && (text[0] == '4' || text[0] == '5') && text[1] == '.') {
            memcpy(enh, text, n);
            enh[n] = '\0';
            text += n;
            while (*text == ' ')
                text++;
        }
        tern_mail_attr_set_int(m, "tern.error.code", enh[0] == '4' ? 451 : 550);
        if (enh[0])
            tern_mail_attr_set_str(m, "tern.error.enhanced", enh);
        tern_mail_attr_set_str(m, "tern.error.text", text);
    }
    res->processor = t->processor;
    return TERN_MAILET_GOTO;
}

static const tern_mailet_module tern_mb_to_processor = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "ToProcessor",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = tp_init,
    .deinit = tp_deinit,
    .service = tp_service,
};
TERN_BUILTIN(tern_mb_to_processor)
