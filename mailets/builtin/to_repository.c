/* Mailet ToRepository: keeps the mail in the named repository (a
 * directory under mailets.repository_dir, default STATE_DIR/repositories)
 * for an admin to inspect, delete or release (ternctl repository ...): one
 * file per mail with the envelope as a JSON header line and the message,
 * written atomically with fsync on a pool thread; then the mail ends
 * (FINISH), or continues with `passThrough: true`. Input: its YAML
 * parameters; the message and envelope strings are written as data
 * (escaped in the JSON header). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mailets/builtin/builtin.h"
#include "mailets/pipeline_int.h"
#include "mailets/repository.h"

typedef struct {
    const char *name;
    bool pass_through;
} to_repo;

typedef struct write_job {
    const to_repo *t;
    char dir[4200];
    char id[TERN_REPO_ID_MAX];
    char *json;
    uint8_t *msg;
    size_t len;
    int rc;
} write_job;

static int tr_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    static const char *const known[] = {"repository", "passThrough", NULL};
    if (tern_param_check(p, known, err, size) != 0)
        return -1;
    const char *name = tern_param_str(p, "repository");
    if (!tern_repository_name_ok(name))
        return tern_builtin_fail(err, size, "repository: a name of letters, digits, '-', '_' "
                                            "or '.' (not starting with '.') is required");
    to_repo *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    t->name = name;
    if (tern_param_get(p, "passThrough")) {
        const char *v = tern_param_str(p, "passThrough");
        if (v && strcmp(v, "true") == 0)
            t->pass_through = true;
        else if (!(v && strcmp(v, "false") == 0)) {
            free(t);
            return tern_builtin_fail(err, size, "passThrough: expected true or false");
        }
    }
    *state_r = t;
    return 0;
}

static void tr_deinit(void *state)
{
    free(state);
}

static void tr_work(void *arg)
{
    write_job *w = arg;
    w->rc = tern_repository_write(w->dir, w->id, w->json, w->msg, w->len);
}

static void tr_done(tern_mail *m, void *arg)
{
    write_job *w = arg;
    if (w->rc != 0) {
        tern_mail_log(m, TERN_MAILET_LOG_ERROR, "cannot store in repository %s (%s): %s",
                      w->t->name, w->dir, strerror(-w->rc));
        free(w->json);
        free(w->msg);
        free(w);
        tern_mailet_result res = {.text = "cannot write to the repository"};
        tern_mail_resume(m, TERN_MAILET_ERROR, &res);
        return;
    }
    tern_mail_log(m, TERN_MAILET_LOG_INFO, "stored in repository %s as %s (%zu recipient(s))",
                  w->t->name, w->id, tern_mail_rcpt_count(m));
    bool pass = w->t->pass_through;
    free(w->json);
    free(w->msg);
    free(w);
    tern_mail_resume(m, pass ? TERN_MAILET_CONTINUE : TERN_MAILET_FINISH, NULL);
}

static tern_mailet_verdict tr_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    to_repo *t = state;
    const tern_config *cfg = tern_mail_config(m);
    const tern_envelope *env = tern_mail_envelope(m);
    size_t n = tern_mail_rcpt_count(m);
    write_job *w = calloc(1, sizeof(*w));
    const char **rcpts = calloc(n ? n : 1, sizeof(char *));
    const char **orcpts = calloc(n ? n : 1, sizeof(char *));
    uint8_t *notify = calloc(n ? n : 1, 1);
    if (w == NULL || rcpts == NULL || orcpts == NULL || notify == NULL)
        goto oom;
    w->t = t;
    char base[4096];
    tern_repository_base(cfg, base, sizeof(base));
    snprintf(w->dir, sizeof(w->dir), "%s/%s", base, t->name);
    tern_repository_new_id(tern_mail_qid(m), w->id, sizeof(w->id));
    for (size_t i = 0; i < n; i++) {
        const tern_rcpt_entry *e = tern_mail_rcpt_info(m, i);
        rcpts[i] = e->addr;
        if (env && e->orig >= 0 && (size_t)e->orig < env->n_rcpts) {
            orcpts[i] = env->rcpts[e->orig].orcpt;
            notify[i] = env->rcpts[e->orig].notify;
        }
    }
    int64_t code = 0;
    tern_mail_attr_get_int(m, "tern.error.code", &code);
    tern_repo_meta meta = {
        .id = w->id,
        .repository = t->name,
        .qid = tern_mail_qid(m),
        .session = tern_mail_session_id(m),
        .sender = tern_mail_sender(m),
        .processor = m->pipeline ? m->pipeline->procs[m->proc].name : NULL,
        .listener = tern_mail_listener(m),
        .remote_addr = tern_mail_remote_addr(m),
        .helo = tern_mail_helo(m),
        .auth_user = tern_mail_auth_user(m),
        .envid = env ? env->envid : NULL,
        .ret = env ? env->ret : TERN_RET_NONE,
        .smtputf8 = env ? env->smtputf8 : false,
        .requiretls = env ? env->requiretls : false,
        .time = (int64_t)time(NULL),
        .rcpts = rcpts,
        .orcpts = orcpts,
        .notify = notify,
        .n_rcpts = n,
        .error_code = code,
        .error_enhanced = tern_mail_attr_get_str(m, "tern.error.enhanced"),
        .error_text = tern_mail_attr_get_str(m, "tern.error.text"),
        .error_processor = tern_mail_attr_get_str(m, "tern.error.processor"),
    };
    w->json = tern_repository_meta_json(&meta);
    w->msg = w->json ? tern_mail_serialize(m, &w->len) : NULL;
    if (w->msg == NULL)
        goto oom;
    free(rcpts);
    free(orcpts);
    free(notify);
    if (tern_mail_call_async(m, tr_work, tr_done, w) != 0) {
        free(w->json);
        free(w->msg);
        free(w);
        res->text = "cannot start the repository write";
        return TERN_MAILET_ERROR;
    }
    return TERN_MAILET_PENDING;
oom:
    if (w) {
        free(w->json);
        free(w->msg);
    }
    free(w);
    free(rcpts);
    free(orcpts);
    free(notify);
    res->text = "out of memory";
    return TERN_MAILET_ERROR;
}

static const tern_mailet_module tern_mb_to_repository = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "ToRepository",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = tr_init,
    .deinit = tr_deinit,
    .service = tr_service,
};
TERN_BUILTIN(tern_mb_to_repository)
