/* ternctl: the admin command line: offline spool inspection
 * (`ternctl spool list|show|count`), reading STATE_DIR/spool read-only, so
 * it is safe next to a running ternd; and the directory (domains, accounts,
 * aliases: ternctl_store.c), through store.h. Input trusted: the command line; the
 * spool files are checked by the spool's own replay, and strings from them
 * (addresses, HELO names: network data) are escaped before printing.
 *
 * Commands are a table of {name, handler, usage, help}; a command with
 * subcommands has its own table, so adding one is adding a row. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/log.h"
#include "storage/queue/spool.h"

#include "tools/ternctl.h"

static void print_table(FILE *f, const char *prefix, const command *t)
{
    for (; t->name; t++)
        fprintf(f, "  %s %-24s %s\n", prefix, t->usage, t->help);
}

int ternctl_dispatch(ctx *c, const char *prefix, const command *t, int argc, char **argv)
{
    if (argc < 1 || strcmp(argv[0], "help") == 0 || strcmp(argv[0], "-h") == 0 ||
        strcmp(argv[0], "--help") == 0) {
        FILE *f = argc < 1 ? stderr : stdout;
        fprintf(f, "usage: %s [-d STATE_DIR] %s COMMAND ...\n", c->prog, prefix);
        print_table(f, prefix, t);
        return argc < 1 ? EX_USAGE_ : EX_OK_;
    }
    for (const command *x = t; x->name; x++)
        if (strcmp(argv[0], x->name) == 0)
            return x->run(c, argc - 1, argv + 1);
    fprintf(stderr, "%s: unknown command '%s %s' (try '%s %s help')\n", c->prog, prefix, argv[0],
            c->prog, prefix);
    return EX_USAGE_;
}

/* Prints network-supplied text without letting it drive the terminal or
 * break the one-line-per-message format. */
static void put_escaped(FILE *f, const char *s)
{
    if (s == NULL) {
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

static void put_time(FILE *f, int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    char buf[32];
    if (gmtime_r(&tt, &tm) && strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm))
        fputs(buf, f);
    else
        fprintf(f, "@%" PRId64, t);
}

static tern_spool *spool_open(ctx *c)
{
    char path[4096];
    if (snprintf(path, sizeof(path), "%s/spool", c->state_dir) >= (int)sizeof(path)) {
        fprintf(stderr, "%s: state directory path too long\n", c->prog);
        return NULL;
    }
    tern_spool *s = NULL;
    char *err = NULL;
    if (tern_spool_open_readonly(path, &s, &err) != 0) {
        fprintf(stderr, "%s: cannot open spool: %s\n", c->prog, err ? err : "unknown error");
        free(err);
        return NULL;
    }
    return s;
}

/* ---- spool ---- */

static void list_one(void *arg, const tern_envelope *e)
{
    FILE *f = arg;
    fprintf(f, "%s ", e->qid);
    put_time(f, e->received_at);
    fprintf(f, " %" PRIu64 " <", e->size);
    put_escaped(f, e->mail_from);
    fputc('>', f);
    for (size_t i = 0; i < e->n_rcpts; i++) {
        fputs(" <", f);
        put_escaped(f, e->rcpts[i].addr);
        fputc('>', f);
    }
    fputc('\n', f);
}

static int spool_list(ctx *c, int argc, char **argv)
{
    if (argc != 0) {
        fprintf(stderr, "usage: %s spool list\n", c->prog);
        return EX_USAGE_;
    }
    tern_spool *s = spool_open(c);
    if (s == NULL)
        return EX_FAIL;
    tern_spool_each(s, list_one, stdout);
    tern_spool_close(s);
    return EX_OK_;
}

static void count_one(void *arg, const tern_envelope *e)
{
}

static int spool_count(ctx *c, int argc, char **argv)
{
    if (argc != 0) {
        fprintf(stderr, "usage: %s spool count\n", c->prog);
        return EX_USAGE_;
    }
    tern_spool *s = spool_open(c);
    if (s == NULL)
        return EX_FAIL;
    printf("%zu\n", tern_spool_each(s, count_one, NULL));
    tern_spool_close(s);
    return EX_OK_;
}

typedef struct show_ctx {
    const char *qid;
    bool found;
} show_ctx;

static const char *notify_text(uint8_t n, char *buf, size_t size)
{
    if (n == 0)
        return "-";
    snprintf(buf, size, "%s%s%s%s", n & TERN_NOTIFY_NEVER ? "NEVER," : "",
             n & TERN_NOTIFY_SUCCESS ? "SUCCESS," : "", n & TERN_NOTIFY_FAILURE ? "FAILURE," : "",
             n & TERN_NOTIFY_DELAY ? "DELAY," : "");
    size_t l = strlen(buf);
    if (l)
        buf[l - 1] = '\0';
    return buf;
}

static void field(const char *name, const char *v)
{
    printf("%s: ", name);
    put_escaped(stdout, v);
    putchar('\n');
}

static void show_one(void *arg, const tern_envelope *e)
{
    show_ctx *sc = arg;
    if (strcmp(e->qid, sc->qid) != 0)
        return;
    static const char *rets[] = {"-", "FULL", "HDRS"};
    static const char *bodies[] = {"7BIT", "8BITMIME", "BINARYMIME"};
    sc->found = true;
    printf("qid: %s\n", e->qid);
    printf("received_at: ");
    put_time(stdout, e->received_at);
    printf(" (%" PRId64 ")\n", e->received_at);
    printf("size: %" PRIu64 "\n", e->size);
    printf("from: <");
    put_escaped(stdout, e->mail_from);
    printf(">\n");
    for (size_t i = 0; i < e->n_rcpts; i++) {
        char nb[64];
        printf("rcpt: <");
        put_escaped(stdout, e->rcpts[i].addr);
        printf("> orcpt=");
        put_escaped(stdout, e->rcpts[i].orcpt);
        printf(" notify=%s\n", notify_text(e->rcpts[i].notify, nb, sizeof(nb)));
    }
    field("envid", e->envid);
    printf("ret: %s\n", (unsigned)e->ret < 3 ? rets[e->ret] : "?");
    printf("body: %s\n", (unsigned)e->body < 3 ? bodies[e->body] : "?");
    printf("smtputf8: %s\n", e->smtputf8 ? "yes" : "no");
    field("auth_user", e->auth_user);
    field("helo", e->helo);
    field("client_addr", e->client_addr);
    field("session_id", e->session_id);
    field("listener", e->listener);
    field("pipeline", e->pipeline);
}

static int spool_show(ctx *c, int argc, char **argv)
{
    if (argc != 1) {
        fprintf(stderr, "usage: %s spool show QID\n", c->prog);
        return EX_USAGE_;
    }
    tern_spool *s = spool_open(c);
    if (s == NULL)
        return EX_FAIL;
    show_ctx sc = {argv[0], false};
    tern_spool_each(s, show_one, &sc);
    int rc = EX_OK_;
    if (!sc.found) {
        fprintf(stderr, "%s: %s: no such message in the spool\n", c->prog, argv[0]);
        rc = EX_FAIL;
    } else {
        uint8_t *data = NULL;
        size_t len = 0;
        int r = tern_spool_read_message(s, argv[0], &data, &len);
        if (r != 0) {
            fprintf(stderr, "%s: %s: cannot read the message: %s\n", c->prog, argv[0], strerror(-r));
            rc = EX_FAIL;
        } else {
            putchar('\n');
            fflush(stdout);
            if (fwrite(data, 1, len, stdout) != len)
                rc = EX_FAIL;
            free(data);
        }
    }
    tern_spool_close(s);
    return rc;
}

static const command spool_cmds[] = {
    {"list", spool_list, "list", "one line per live message: qid, arrival, size, sender, recipients"},
    {"show", spool_show, "show QID", "envelope fields, a blank line, then the stored message"},
    {"count", spool_count, "count", "number of live messages"},
    {NULL, NULL, NULL, NULL},
};

static int cmd_spool(ctx *c, int argc, char **argv)
{
    return ternctl_dispatch(c, "spool", spool_cmds, argc, argv);
}

static const command top_cmds[] = {
    {"spool", cmd_spool, "spool COMMAND", "inspect the durable spool (offline, read-only)"},
    {"domain", ternctl_cmd_domain, "domain COMMAND", "add, remove and list local domains"},
    {"account", ternctl_cmd_account, "account COMMAND", "add, remove, list accounts; passwords, quotas"},
    {"alias", ternctl_cmd_alias, "alias COMMAND", "add, remove and list aliases and catch-alls"},
    {"repository", ternctl_cmd_repository, "repository COMMAND", "list, show, delete and release kept mails"},
    {"message", ternctl_cmd_message, "message COMMAND", "append messages to a mailbox"},
    {"queue", ternctl_cmd_queue, "queue COMMAND", "list and act on a running ternd's remote queue"},
    {"auth", ternctl_cmd_auth, "auth COMMAND", "a running ternd's login counters (auth stats)"},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    ctx c = {.prog = "ternctl"};
    /* A command line tool: only warnings and errors unless asked. */
    const char *lvl = getenv("TERN_LOG");
    tern_log_configure(lvl && *lvl ? lvl : "warn", NULL);
    const char *env = getenv("TERN_STATE_DIR");
    c.state_dir = env && *env ? env : DEFAULT_STATE_DIR;
    env = getenv("TERN_CONFIG");
    c.config_path = env && *env ? env : DEFAULT_CONFIG;
    /* -d may come anywhere, so `ternctl spool list -d DIR` works too. */
    int n = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-d") == 0 || strcmp(argv[i], "--state-dir") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "%s: %s needs a directory\n", c.prog, argv[i]);
                return EX_USAGE_;
            }
            c.state_dir = argv[++i];
        } else if (strncmp(argv[i], "--state-dir=", 12) == 0) {
            c.state_dir = argv[i] + 12;
        } else if (strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "%s: %s needs a file\n", c.prog, argv[i]);
                return EX_USAGE_;
            }
            c.config_path = argv[++i];
        } else {
            argv[n++] = argv[i];
        }
    }
    if (n == 0) {
        fprintf(stderr, "usage: %s [-d STATE_DIR] [-c CONFIG] COMMAND ...\n", c.prog);
        print_table(stderr, "", top_cmds);
        fprintf(stderr, "STATE_DIR defaults to $TERN_STATE_DIR or %s\n", DEFAULT_STATE_DIR);
        return EX_USAGE_;
    }
    if (strcmp(argv[0], "help") == 0 || strcmp(argv[0], "-h") == 0 || strcmp(argv[0], "--help") == 0) {
        printf("usage: %s [-d STATE_DIR] [-c CONFIG] COMMAND ...\n", c.prog);
        print_table(stdout, "", top_cmds);
        printf("STATE_DIR defaults to $TERN_STATE_DIR or %s; CONFIG (for the directory\n"
               "commands) to $TERN_CONFIG or %s\n", DEFAULT_STATE_DIR, DEFAULT_CONFIG);
        return EX_OK_;
    }
    for (const command *x = top_cmds; x->name; x++)
        if (strcmp(argv[0], x->name) == 0)
            return x->run(&c, n - 1, argv + 1);
    fprintf(stderr, "%s: unknown command '%s' (try '%s help')\n", c.prog, argv[0], c.prog);
    return EX_USAGE_;
}
