/* Mailet NotifyPostmaster: sends the postmaster (`to`, default
 * postmaster@<first config domain>) a notice about this mail, with the
 * envelope, the tern.error.* reason when there is one, and the message
 * attached as message/rfc822, from the null sender into `processor`
 * (default transport). The original continues (`passThrough: true`, the
 * default) or ends. Notices are marked (X-Tern-Notice) so no notice is
 * made about a notice. Input: its YAML parameters; the message is the
 * sender's and is only copied. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mailets/builtin/builtin.h"
#include "mailets/builtin/dsn_build.h"

typedef struct {
    const char *to; /* NULL: the default postmaster */
    const char *processor;
    const char *notice;
    bool pass_through;
} notify;

static int np_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    static const char *const known[] = {"to", "processor", "notice", "passThrough", NULL};
    if (tern_param_check(p, known, err, size) != 0)
        return -1;
    notify *n = calloc(1, sizeof(*n));
    if (n == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    n->pass_through = true;
    n->processor = "transport";
    n->notice = "A message was reported to the postmaster by the mail system.";
    if (tern_param_get(p, "to")) {
        n->to = tern_param_str(p, "to");
        const char *at = n->to ? strrchr(n->to, '@') : NULL;
        if (at == NULL || at == n->to || at[1] == '\0' || strpbrk(n->to, " <>\t\r\n,")) {
            free(n);
            return tern_builtin_fail(err, size, "to: expected an address local@domain");
        }
    }
    if (tern_param_get(p, "processor")) {
        n->processor = tern_param_str(p, "processor");
        if (n->processor == NULL || n->processor[0] == '\0') {
            free(n);
            return tern_builtin_fail(err, size, "processor: a processor name is required");
        }
    }
    if (tern_param_get(p, "notice")) {
        n->notice = tern_param_str(p, "notice");
        if (n->notice == NULL || strpbrk(n->notice, "\r\n")) {
            free(n);
            return tern_builtin_fail(err, size, "notice: one line of text");
        }
    }
    if (tern_param_get(p, "passThrough")) {
        const char *v = tern_param_str(p, "passThrough");
        if (v && strcmp(v, "true") == 0)
            n->pass_through = true;
        else if (v && strcmp(v, "false") == 0)
            n->pass_through = false;
        else {
            free(n);
            return tern_builtin_fail(err, size, "passThrough: expected true or false");
        }
    }
    *state_r = n;
    return 0;
}

static void np_deinit(void *state)
{
    free(state);
}

static void np_spawned(tern_mail *m, void *arg, int status)
{
    const notify *n = arg;
    if (status != 0) {
        tern_mailet_result res = {.text = "could not write the postmaster notice to the spool"};
        tern_mail_resume(m, TERN_MAILET_ERROR, &res);
        return;
    }
    tern_mail_resume(m, n->pass_through ? TERN_MAILET_CONTINUE : TERN_MAILET_FINISH, NULL);
}

static tern_mailet_verdict np_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    notify *n = state;
    if (tern_mail_header_get(m, "X-Tern-Notice", 0)) {
        tern_mail_log(m, TERN_MAILET_LOG_INFO, "no postmaster notice about a notice (loop guard)");
        return n->pass_through ? TERN_MAILET_CONTINUE : TERN_MAILET_FINISH;
    }
    const tern_config *cfg = tern_mail_config(m);
    char to[300], from[300], to_hdr[320], subject[700];
    if (n->to)
        snprintf(to, sizeof(to), "%s", n->to);
    else
        tern_dsn_default_postmaster(cfg, to, sizeof(to));
    snprintf(to_hdr, sizeof(to_hdr), "<%s>", to);
    tern_dsn_from(cfg, from, sizeof(from));
    const char *sender = tern_mail_sender(m);
    snprintf(subject, sizeof(subject), "Postmaster notify: message from <%.300s>", sender);
    size_t nr = tern_mail_rcpt_count(m);
    tern_dsn_rcpt *rcpts = calloc(nr ? nr : 1, sizeof(*rcpts));
    size_t olen = 0;
    uint8_t *orig = rcpts ? tern_mail_serialize(m, &olen) : NULL;
    if (orig == NULL) {
        free(rcpts);
        res->text = "out of memory";
        return TERN_MAILET_ERROR;
    }
    for (size_t i = 0; i < nr; i++)
        rcpts[i].addr = tern_mail_rcpt(m, i);
    const tern_envelope *env = tern_mail_envelope(m);
    int64_t code = 0;
    tern_mail_attr_get_int(m, "tern.error.code", &code);
    tern_dsn_info in = {
        .style = TERN_DSN_PLAIN,
        .reporting_mta = cfg->server.hostname,
        .from = from,
        .to = to_hdr,
        .subject = subject,
        .intro = n->notice,
        .qid = tern_mail_qid(m),
        .arrival = env ? env->received_at : 0,
        .now = (int64_t)time(NULL),
        .code = (int)code,
        .enhanced = tern_mail_attr_get_str(m, "tern.error.enhanced"),
        .text = tern_mail_attr_get_str(m, "tern.error.text"),
        .rcpts = rcpts,
        .n_rcpts = nr,
        .attach = TERN_DSN_ATTACH_FULL,
        .orig = orig,
        .orig_len = olen,
        .marker = "postmaster-notice",
    };
    if (in.text == NULL)
        in.text = "reported";
    size_t len = 0;
    uint8_t *msg = tern_dsn_build(&in, &len);
    free(orig);
    free(rcpts);
    if (msg == NULL) {
        res->text = "out of memory building the notice";
        return TERN_MAILET_ERROR;
    }
    const char *to_rcpt[1] = {to};
    if (tern_pipeline_processor(m->pipeline, n->processor) < 0) {
        tern_mail_log(m, TERN_MAILET_LOG_ERROR, "processor %s does not exist", n->processor);
        free(msg);
        res->text = "the processor for new mail does not exist";
        return TERN_MAILET_ERROR;
    }
    int rc = tern_mail_spawn(m, "", to_rcpt, 1, msg, len, n->processor, np_spawned, n);
    free(msg);
    if (rc != 0) {
        res->text = "could not spawn the postmaster notice";
        return TERN_MAILET_ERROR;
    }
    tern_mail_log(m, TERN_MAILET_LOG_INFO, "postmaster notice to %s", to);
    return TERN_MAILET_PENDING;
}

static const tern_mailet_module tern_mb_notify_postmaster = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "NotifyPostmaster",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = np_init,
    .deinit = np_deinit,
    .service = np_service,
};
TERN_BUILTIN(tern_mb_notify_postmaster)
