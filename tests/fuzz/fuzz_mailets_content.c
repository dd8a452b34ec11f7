/* fuzz_mailets_content.c: libFuzzer target for the content mailets that
 * read message structure (AddFooter, AddSubjectPrefix, LogMessage,
 * JsonExport's record). Input: arbitrary bytes as a stored message.
 * Checked: nothing crashes or leaks; AddFooter never changes the MIME
 * structure (same number of parts, same types) and is idempotent in
 * shape; the JsonExport record always parses back as one JSON object. */
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/arena.h"
#include "lib/json.h"
#include "lib/log.h"
#include "lib/mime.h"
#include "mailets/builtin/json_export.h"
#include "mailets/engine.h"

typedef struct {
    const tern_mailet_module *mod;
    void *state;
} inst;

static inst footer, prefix, logm, json;

static void mk(inst *in, const char *name, const tern_mailet_param *p, size_t n)
{
    char err[256];
    in->mod = tern_builtin_find(name);
    tern_mailet_params params = {p, n};
    if (in->mod == NULL || in->mod->init(tern_mailet_host_table(), &params, &in->state, err,
                                         sizeof(err)) != 0)
        abort();
}

static void setup(void)
{
    static const tern_mailet_param fp[] = {{.key = "text", .value = "-- \nFooter \xc3\xa9 \xe2\x82\xac\n"},
                                           {.key = "max_part_size", .value = "256k"}};
    static const tern_mailet_param pp[] = {{.key = "prefix", .value = "[T\xc3\xa5gg]"}};
    static const tern_mailet_param lp[] = {{.key = "body", .value = "64"}};
    static const tern_mailet_param jp[] = {{.key = "file", .value = "/dev/null"},
                                           {.key = "fsync", .value = "false"}};
    mk(&footer, "AddFooter", fp, 2);
    mk(&prefix, "AddSubjectPrefix", pp, 1);
    mk(&logm, "LogMessage", lp, 1);
    mk(&json, "JsonExport", jp, 2);
    int fd = open("/dev/null", O_WRONLY);
    tern_log_set_fd(fd);
    tern_log_configure("debug", NULL);
}

/* "type/subtype;" of every part in tree order. */
static void shape(const tern_mime_part *p, tern_buf *out)
{
    for (; p; p = p->next) {
        tern_buf_printf(out, "%s/%s;", p->type, p->subtype);
        shape(p->children, out);
    }
}

static void shape_of(const uint8_t *msg, size_t len, tern_buf *out)
{
    tern_arena a;
    tern_arena_init(&a, 4096);
    tern_mime_part *root = tern_mime_parse(&a, msg, len, NULL);
    if (root)
        shape(root, out);
    tern_arena_free(&a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) {
        setup();
        ready = true;
    }
    if (size > 256 * 1024)
        return 0;
    tern_envelope env;
    memset(&env, 0, sizeof(env));
    memcpy(env.qid, "AAAABBBBCCCCDDDD", TERN_QID_LEN);
    env.mail_from = "a@example.org";
    tern_spool_rcpt r = {.addr = "b@example.com"};
    env.rcpts = &r;
    env.n_rcpts = 1;
    tern_mail *m = tern_mail_standalone(&env, data, size, NULL);
    if (m == NULL)
        return 0;
    tern_mailet_result res;
    size_t len = 0;
    uint8_t *before = tern_mail_serialize(m, &len);
    tern_buf s1, s2;
    tern_buf_init(&s1, 0);
    tern_buf_init(&s2, 0);
    shape_of(before, len, &s1);
    bool dump = getenv("FUZZ_DUMP") != NULL; /* for debugging a crash by hand */
    if (dump)
        fprintf(stderr, "---- before\n%.*s\n", (int)len, (const char *)before);
    free(before);

    memset(&res, 0, sizeof(res));
    footer.mod->service(footer.state, m, &res);
    uint8_t *after = tern_mail_serialize(m, &len);
    shape_of(after, len, &s2);
    if (dump)
        fprintf(stderr, "---- after\n%.*s\n", (int)len, (const char *)after);
    free(after);
    if (s1.len != s2.len || (s1.len && memcmp(s1.data, s2.data, s1.len) != 0)) {
        fprintf(stderr, "structure changed:\n before %.*s\n after  %.*s\n", (int)s1.len,
                (const char *)s1.data, (int)s2.len, (const char *)s2.data);
        abort(); /* the footer changed the structure */
    }

    memset(&res, 0, sizeof(res));
    prefix.mod->service(prefix.state, m, &res);
    memset(&res, 0, sizeof(res));
    logm.mod->service(logm.state, m, &res);

    je_job *j = tern_json_export_job_new(json.state, m);
    if (j) {
        tern_json_export_job_run(j);
        size_t rl = 0;
        const uint8_t *rec = tern_json_export_job_record(j, &rl);
        if (tern_json_export_job_error(j) == NULL) {
            tern_arena a;
            tern_arena_init(&a, 4096);
            tern_json *root = NULL;
            static const tern_json_limits lim = {.max_input = 64u << 20, .max_nodes = 1u << 20,
                                                 .max_string = 64u << 20};
            if (rl == 0 || rec[rl - 1] != '\n' ||
                tern_json_parse((const char *)rec, rl - 1, &lim, &a, &root, NULL) != 0 ||
                root->type != TERN_JSON_OBJECT)
                abort();
            tern_arena_free(&a);
        }
        tern_json_export_job_free(j);
    }
    tern_buf_free(&s1);
    tern_buf_free(&s2);
    tern_mail_standalone_free(m);
    return 0;
}
