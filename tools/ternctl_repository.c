/* ternctl's repository commands: list, show, delete and release the mails
 * that ToRepository kept (mailets/repository.h has the file format).
 * Release moves the file to the repository's release/ directory, named
 * "<id>@<processor>"; a running ternd picks it up from there. Input
 * trusted: the command line (repository names, ids and processor names are
 * checked before they become path components); file contents are parsed as
 * untrusted and printed escaped. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "conf/config.h"
#include "mailets/repository.h"
#include "tools/ternctl.h"

/* BASE/NAME: mailets.repository_dir from the config when it sets one,
 * otherwise STATE_DIR/repositories. */
static int repo_dir(ctx *c, const char *name, char *out, size_t size)
{
    if (!tern_repository_name_ok(name)) {
        fprintf(stderr, "%s: bad repository name '%s'\n", c->prog, name);
        return -1;
    }
    char base[4096];
    snprintf(base, sizeof(base), "%s/repositories", c->state_dir);
    if (access(c->config_path, R_OK) == 0) {
        tern_config_errors errs;
        tern_config_errors_init(&errs);
        tern_config *cfg = tern_config_load(c->config_path, &errs);
        if (cfg && cfg->mailets.repository_dir && cfg->mailets.repository_dir[0])
            snprintf(base, sizeof(base), "%s", cfg->mailets.repository_dir);
        if (cfg)
            tern_config_unref(cfg);
        tern_config_errors_free(&errs);
    }
    if (snprintf(out, size, "%s/%s", base, name) >= (int)size) {
        fprintf(stderr, "%s: path too long\n", c->prog);
        return -1;
    }
    return 0;
}

static void put_escaped(FILE *f, const char *s)
{
    if (s == NULL || s[0] == '\0') {
        fputs("-", f);
        return;
    }
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f || *p == '\\' || *p == ' ')
            fprintf(f, "\\x%02x", *p);
        else
            fputc(*p, f);
    }
}

typedef struct row {
    char id[TERN_REPO_ID_MAX];
    int64_t time;
} row;

static int row_cmp(const void *a, const void *b)
{
    const row *x = a, *y = b;
    if (x->time != y->time)
        return x->time < y->time ? -1 : 1;
    return strcmp(x->id, y->id);
}

static int repo_list(ctx *c, int argc, char **argv)
{
    if (argc != 1) {
        fprintf(stderr, "usage: %s repository list NAME\n", c->prog);
        return EX_USAGE_;
    }
    char dir[4200];
    if (repo_dir(c, argv[0], dir, sizeof(dir)) != 0)
        return EX_USAGE_;
    DIR *d = opendir(dir);
    if (d == NULL) {
        if (errno == ENOENT)
            return EX_OK_; /* nothing stored yet */
        fprintf(stderr, "%s: %s: %s\n", c->prog, dir, strerror(errno));
        return EX_FAIL;
    }
    row *rows = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!tern_repository_id_ok(de->d_name))
            continue;
        char path[4400];
        struct stat st;
        if (snprintf(path, sizeof(path), "%s/%s", dir, de->d_name) >= (int)sizeof(path) ||
            stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 64;
            row *nr = realloc(rows, nc * sizeof(*nr));
            if (nr == NULL)
                break;
            rows = nr;
            cap = nc;
        }
        if (snprintf(rows[n].id, sizeof(rows[n].id), "%s", de->d_name) >= (int)sizeof(rows[n].id))
            continue;
        rows[n].time = (int64_t)st.st_mtime;
        n++;
    }
    closedir(d);
    if (n)
        qsort(rows, n, sizeof(*rows), row_cmp);
    int rc = EX_OK_;
    for (size_t i = 0; i < n; i++) {
        char path[4400], err[600];
        snprintf(path, sizeof(path), "%s/%s", dir, rows[i].id);
        tern_repo_entry e;
        if (tern_repository_load(path, &e, err, sizeof(err)) != 0) {
            fprintf(stderr, "%s: %s\n", c->prog, err);
            tern_repository_entry_free(&e);
            rc = EX_FAIL;
            continue;
        }
        int64_t t = 0;
        tern_json_int64(tern_json_get(e.meta, "time"), &t);
        char when[32] = "-";
        time_t tt = (time_t)t;
        struct tm tm;
        if (t > 0 && gmtime_r(&tt, &tm))
            strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
        const tern_json *rl = tern_json_get(e.meta, "recipients");
        const tern_json *er = tern_json_get(e.meta, "error");
        printf("%s %s qid=", rows[i].id, when);
        put_escaped(stdout, tern_json_str(tern_json_get(e.meta, "qid")));
        printf(" from=<");
        const char *snd = tern_json_str(tern_json_get(e.meta, "sender"));
        if (snd && snd[0])
            put_escaped(stdout, snd);
        printf("> rcpts=%zu size=%zu error=", rl && rl->type == TERN_JSON_ARRAY ? rl->len : 0,
               e.len - e.msg_off);
        put_escaped(stdout, tern_json_str(tern_json_get(er, "text")));
        printf("\n");
        tern_repository_entry_free(&e);
    }
    free(rows);
    /* Released mails still waiting for ternd's scan. */
    char rdir[4400];
    snprintf(rdir, sizeof(rdir), "%s/release", dir);
    size_t waiting = 0;
    if ((d = opendir(rdir)) != NULL) {
        while ((de = readdir(d)) != NULL)
            waiting += strchr(de->d_name, '@') != NULL;
        closedir(d);
    }
    if (waiting)
        printf("# %zu released, waiting for ternd\n", waiting);
    return rc;
}

static int id_path(ctx *c, const char *name, const char *id, char *out, size_t size)
{
    char dir[4200];
    if (repo_dir(c, name, dir, sizeof(dir)) != 0)
        return -1;
    if (!tern_repository_id_ok(id)) {
        fprintf(stderr, "%s: bad id '%s'\n", c->prog, id);
        return -1;
    }
    snprintf(out, size, "%s/%s", dir, id);
    return 0;
}

static void print_member(const char *prefix, const tern_json *v)
{
    for (const tern_json *k = v && v->type == TERN_JSON_OBJECT ? v->child : NULL; k; k = k->next) {
        if (k->type == TERN_JSON_OBJECT) {
            char p[128];
            snprintf(p, sizeof(p), "%s%s.", prefix, k->key);
            print_member(p, k);
            continue;
        }
        printf("%s%s: ", prefix, k->key);
        if (k->type == TERN_JSON_STRING)
            put_escaped(stdout, k->text);
        else if (k->type == TERN_JSON_NUMBER)
            fputs(k->text, stdout);
        else if (k->type == TERN_JSON_BOOL)
            fputs(k->boolean ? "true" : "false", stdout);
        else if (k->type == TERN_JSON_NULL)
            fputs("-", stdout);
        else if (k->type == TERN_JSON_ARRAY) {
            size_t i = 0;
            for (const tern_json *x = k->child; x; x = x->next, i++) {
                if (i)
                    fputs(" ", stdout);
                const char *a = tern_json_str(tern_json_get(x, "addr"));
                put_escaped(stdout, a ? a : tern_json_str(x));
            }
        }
        fputs("\n", stdout);
    }
}

static int repo_show(ctx *c, int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s repository show NAME ID\n", c->prog);
        return EX_USAGE_;
    }
    char path[4400], err[600];
    if (id_path(c, argv[0], argv[1], path, sizeof(path)) != 0)
        return EX_USAGE_;
    tern_repo_entry e;
    if (tern_repository_load(path, &e, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s: %s\n", c->prog, err);
        tern_repository_entry_free(&e);
        return EX_FAIL;
    }
    print_member("", e.meta);
    fputs("\n", stdout);
    fwrite(e.data + e.msg_off, 1, e.len - e.msg_off, stdout);
    tern_repository_entry_free(&e);
    return EX_OK_;
}

static int repo_delete(ctx *c, int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s repository delete NAME ID\n", c->prog);
        return EX_USAGE_;
    }
    char path[4400];
    if (id_path(c, argv[0], argv[1], path, sizeof(path)) != 0)
        return EX_USAGE_;
    if (unlink(path) != 0) {
        fprintf(stderr, "%s: %s: %s\n", c->prog, path, strerror(errno));
        return EX_FAIL;
    }
    printf("deleted %s\n", argv[1]);
    return EX_OK_;
}

static int repo_release(ctx *c, int argc, char **argv)
{
    const char *proc = "root";
    char *args[2];
    int n = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--processor") == 0 && i + 1 < argc)
            proc = argv[++i];
        else if (strncmp(argv[i], "--processor=", 12) == 0)
            proc = argv[i] + 12;
        else if (n < 2 && argv[i][0] != '-')
            args[n++] = argv[i];
        else
            n = 3;
    }
    if (n != 2) {
        fprintf(stderr, "usage: %s repository release NAME ID [--processor P]\n", c->prog);
        return EX_USAGE_;
    }
    if (!tern_repository_name_ok(proc)) {
        fprintf(stderr, "%s: bad processor name '%s'\n", c->prog, proc);
        return EX_USAGE_;
    }
    char path[4400], dir[4200], dst[4600];
    if (id_path(c, args[0], args[1], path, sizeof(path)) != 0 ||
        repo_dir(c, args[0], dir, sizeof(dir)) != 0)
        return EX_USAGE_;
    snprintf(dst, sizeof(dst), "%s/release", dir);
    if (mkdir(dst, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "%s: %s: %s\n", c->prog, dst, strerror(errno));
        return EX_FAIL;
    }
    snprintf(dst, sizeof(dst), "%s/release/%s@%s", dir, args[1], proc);
    /* One rename: the mail is either kept or released, never both. */
    if (rename(path, dst) != 0) {
        fprintf(stderr, "%s: %s: %s\n", c->prog, path, strerror(errno));
        return EX_FAIL;
    }
    printf("released %s to processor %s\n", args[1], proc);
    return EX_OK_;
}

static const command repo_cmds[] = {
    {"list", repo_list, "list NAME", "the mails kept in repository NAME, oldest first"},
    {"show", repo_show, "show NAME ID", "the envelope header, a blank line, then the message"},
    {"delete", repo_delete, "delete NAME ID", "remove a kept mail"},
    {"release", repo_release, "release NAME ID [--processor P]",
     "give the mail back to ternd, entering processor P (default root)"},
    {NULL, NULL, NULL, NULL},
};

int ternctl_cmd_repository(ctx *c, int argc, char **argv)
{
    return ternctl_dispatch(c, "repository", repo_cmds, argc, argv);
}
