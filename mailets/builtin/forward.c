/* Mailet Forward: replaces the mail's recipients with the `forward_to`
 * addresses (James semantics: the same mail goes on, to new recipients),
 * then continues with the next step, or goes to `processor` when given.
 * The new recipients derive from one of the mail's spool recipients and
 * the others are recorded finished, so a replay after a crash forwards
 * once more at most and never twice per original. Input: its YAML
 * parameters (addresses checked at init). */
#include <stdlib.h>
#include <string.h>

#include "mailets/builtin/builtin.h"

typedef struct {
    const char *const *to;
    size_t n_to;
    const char *single[1];
    const char *processor;
} forward;

/* An addr-spec as SMTP carries it: local@domain, no spaces or brackets. */
static bool addr_plausible(const char *a)
{
    const char *at = a ? strrchr(a, '@') : NULL;
    if (at == NULL || at == a || at[1] == '\0' || strlen(a) > 320)
        return false;
    for (const char *p = a; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == '<' || *p == '>' || *p == ',' || *p == 0x7f)
            return false;
    return true;
}

static int fw_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    static const char *const known[] = {"forward_to", "processor", NULL};
    if (tern_param_check(p, known, err, size) != 0)
        return -1;
    const tern_mailet_param *to = tern_param_get(p, "forward_to");
    if (to == NULL || (to->value == NULL && to->n_list == 0) || (to->value && !to->value[0]))
        return tern_builtin_fail(err, size, "forward_to: a list of addresses is required");
    forward *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    if (to->value) {
        f->single[0] = to->value;
        f->to = f->single;
        f->n_to = 1;
    } else {
        f->to = to->list;
        f->n_to = to->n_list;
    }
    for (size_t i = 0; i < f->n_to; i++)
        if (!addr_plausible(f->to[i])) {
            tern_builtin_fail(err, size, "forward_to: \"%.100s\" is not an address local@domain",
                              f->to[i] ? f->to[i] : "");
            free(f);
            return -1;
        }
    if (tern_param_get(p, "processor")) {
        f->processor = tern_param_str(p, "processor");
        if (f->processor == NULL || f->processor[0] == '\0') {
            free(f);
            return tern_builtin_fail(err, size, "processor: a processor name is required");
        }
    }
    *state_r = f;
    return 0;
}

static void fw_deinit(void *state)
{
    free(state);
}

static tern_mailet_verdict fw_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    forward *f = state;
    size_t n0 = tern_mail_rcpt_count(m);
    int carrier = -1;
    for (size_t i = 0; i < n0 && carrier < 0; i++)
        carrier = tern_mail_rcpt_info(m, i)->orig;
    size_t added = 0;
    for (size_t i = 0; i < f->n_to; i++) {
        bool dup = false;
        for (size_t k = n0; k < tern_mail_rcpt_count(m) && !dup; k++)
            dup = tern_addr_equal(tern_mail_rcpt(m, k), f->to[i]);
        if (dup)
            continue;
        if (tern_mail_rcpt_add_derived(m, f->to[i], carrier) != 0) {
            /* Undo: the mail keeps its recipients and the step fails. */
            while (tern_mail_rcpt_count(m) > n0)
                tern_mail_rcpt_remove(m, tern_mail_rcpt_count(m) - 1);
            res->text = "cannot add a forward_to recipient";
            return TERN_MAILET_ERROR;
        }
        added++;
    }
    tern_mail_log(m, TERN_MAILET_LOG_INFO, "forwarding %zu recipient(s) to %zu address(es)", n0,
                  added);
    for (size_t i = n0; i-- > 0;) {
        if (m->runner)
            tern_mail_rcpt_done(m, i, "forwarded");
        else
            tern_mail_rcpt_remove(m, i); /* a standalone mail (unit tests) */
    }
    if (f->processor) {
        res->processor = f->processor;
        return TERN_MAILET_GOTO;
    }
    return TERN_MAILET_CONTINUE;
}

static const tern_mailet_module tern_mb_forward = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "Forward",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = fw_init,
    .deinit = fw_deinit,
    .service = fw_service,
};
TERN_BUILTIN(tern_mb_forward)
