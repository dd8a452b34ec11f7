/* ternctl's commands for a running ternd, through its control socket
 * (server/control.c; one JSON request line, one JSON answer line): queue
 * list, show, retry, hold, release, delete and hosts on the remote queue,
 * and auth stats (login counters).
 * Input: the command line and config (trusted); the answer comes from
 * ternd through a 0600 socket but is still parsed within bounds and
 * printed with control characters escaped. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "conf/config.h"
#include "lib/arena.h"
#include "lib/buf.h"
#include "lib/json.h"
#include "lib/json_write.h"
#include "tools/ternctl.h"

#define MAX_ANSWER (64u << 20)
#define TIMEOUT_S 30

static const char *socket_override;
static int json_out;

/* The socket: --socket, else the config's server.control_socket when the
 * config loads, else STATE_DIR/control.sock. */
static int socket_path(ctx *c, char *out, size_t size)
{
    if (socket_override)
        return snprintf(out, size, "%s", socket_override) < (int)size ? 0 : -1;
    if (access(c->config_path, R_OK) == 0) {
        tern_config_errors errs = {0};
        tern_config *cfg = tern_config_load(c->config_path, &errs);
        tern_config_errors_free(&errs);
        if (cfg) {
            int r = snprintf(out, size, "%s", cfg->server.control_socket);
            tern_config_unref(cfg);
            return r < (int)size ? 0 : -1;
        }
    }
    return snprintf(out, size, "%s/control.sock", c->state_dir) < (int)size ? 0 : -1;
}

/* Sends one request, reads one answer line into ans (NUL-terminated).
 * 0, or -1 after printing why. */
static int call(ctx *c, const char *req, tern_buf *ans)
{
    char path[512];
    if (socket_path(c, path, sizeof(path)) != 0 || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        fprintf(stderr, "%s: control socket path too long\n", c->prog);
        return -1;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        fprintf(stderr, "%s: %s: %s (is ternd running?)\n", c->prog, path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    struct timeval tv = {.tv_sec = TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    size_t len = strlen(req), off = 0;
    while (off < len) {
        ssize_t n = write(fd, req + off, len - off);
        if (n <= 0) {
            fprintf(stderr, "%s: %s: write: %s\n", c->prog, path, strerror(errno));
            close(fd);
            return -1;
        }
        off += (size_t)n;
    }
    for (;;) {
        if (tern_buf_reserve(ans, 65536) != 0) {
            fprintf(stderr, "%s: answer too large\n", c->prog);
            close(fd);
            return -1;
        }
        ssize_t n = read(fd, ans->data + ans->len, ans->cap - ans->len - 1);
        if (n <= 0) {
            fprintf(stderr, "%s: %s: %s\n", c->prog, path, n == 0 ? "closed without an answer" : strerror(errno));
            close(fd);
            return -1;
        }
        ans->len += (size_t)n;
        ans->data[ans->len] = '\0';
        if (memchr(ans->data, '\n', ans->len))
            break;
    }
    close(fd);
    return 0;
}

/* Parses the answer; prints its error and returns NULL when not ok. */
static const tern_json *result(ctx *c, tern_buf *ans, tern_arena *arena)
{
    char *nl = memchr(ans->data, '\n', ans->len);
    size_t len = nl ? (size_t)(nl - (char *)ans->data) : ans->len;
    tern_json_limits lim = {.max_input = MAX_ANSWER, .max_nodes = 1u << 24};
    tern_json *root = NULL;
    int r = tern_json_parse((const char *)ans->data, len, &lim, arena, &root, NULL);
    if (r != TERN_JSON_OK) {
        fprintf(stderr, "%s: malformed answer: %s\n", c->prog, tern_json_strerror(r));
        return NULL;
    }
    const tern_json *ok = tern_json_get(root, "ok");
    if (ok == NULL || ok->type != TERN_JSON_BOOL || !ok->boolean) {
        const char *e = tern_json_str(tern_json_get(root, "error"));
        fprintf(stderr, "%s: %s\n", c->prog, e ? e : "failed");
        return NULL;
    }
    const tern_json *res = tern_json_get(root, "result");
    return res ? res : root;
}

/* A string for one line of output: controls shown as '?'. */
static const char *safe(const tern_json *v, char *buf, size_t size)
{
    const char *s = tern_json_str(v);
    if (s == NULL)
        s = "";
    size_t i = 0;
    for (; s[i] && i + 1 < size; i++)
        buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    buf[i] = '\0';
    return buf;
}

static int64_t num(const tern_json *v)
{
    int64_t x = 0;
    return tern_json_int64(v, &x) == 0 ? x : 0;
}

static void when(int64_t unix_s, char *buf, size_t size)
{
    if (unix_s <= 0) {
        snprintf(buf, size, "now");
        return;
    }
    time_t t = (time_t)unix_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void print_msg(const tern_json *m)
{
    char b1[1100], b2[1100];
    const tern_json *held = tern_json_get(m, "held");
    printf("%s age=%" PRId64 "s size=%" PRId64 " from=<%s>%s\n", safe(tern_json_get(m, "qid"), b1, 64),
           num(tern_json_get(m, "age_s")), num(tern_json_get(m, "size")),
           safe(tern_json_get(m, "sender"), b2, sizeof(b2)),
           held && held->type == TERN_JSON_BOOL && held->boolean ? " HELD" : "");
    const tern_json *rs = tern_json_get(m, "recipients");
    for (const tern_json *r = rs ? rs->child : NULL; r; r = r->next) {
        char nt[32];
        when(num(tern_json_get(r, "next_try")), nt, sizeof(nt));
        printf("  %s state=%s attempts=%" PRId64 " next_try=%s", safe(tern_json_get(r, "rcpt"), b1, sizeof(b1)),
               safe(tern_json_get(r, "state"), b2, 32), num(tern_json_get(r, "attempts")), nt);
        const char *e = safe(tern_json_get(r, "last_error"), b2, sizeof(b2));
        if (e[0])
            printf(" last_error=\"%s\"", e);
        printf("\n");
    }
}

static void print_host(const tern_json *h)
{
    char b1[128], b2[32], nt[32];
    when(num(tern_json_get(h, "down_until")), nt, sizeof(nt));
    printf("%s state=%s failures=%" PRId64, safe(tern_json_get(h, "addr"), b1, sizeof(b1)),
           safe(tern_json_get(h, "state"), b2, sizeof(b2)), num(tern_json_get(h, "failures")));
    if (num(tern_json_get(h, "down_until")) > 0)
        printf(" down_until=%s", nt);
    printf("\n");
}

/* Runs one request and prints its result: as JSON with --json, else
 * through `print` (NULL: nothing on success). */
static int run(ctx *c, const char *cmd, const char *qid, bool all, void (*print)(const tern_json *),
               const char *list_key)
{
    tern_buf req;
    tern_buf_init(&req, 8192);
    int r = tern_buf_append_str(&req, "{");
    r |= tern_json_write_key(&req, "cmd");
    r |= tern_json_write_cstr(&req, cmd);
    if (qid) {
        r |= tern_buf_append_str(&req, ",");
        r |= tern_json_write_key(&req, "qid");
        r |= tern_json_write_cstr(&req, qid);
    }
    if (all)
        r |= tern_buf_append_str(&req, ",\"all\":true");
    r |= tern_buf_append_str(&req, "}\n");
    r |= tern_buf_append(&req, "", 1);
    if (r != 0) {
        fprintf(stderr, "%s: request too long\n", c->prog);
        tern_buf_free(&req);
        return EX_FAIL;
    }
    tern_buf ans;
    tern_buf_init(&ans, MAX_ANSWER);
    int rc = EX_FAIL;
    if (call(c, (const char *)req.data, &ans) == 0) {
        tern_arena arena;
        tern_arena_init(&arena, 65536);
        const tern_json *res = result(c, &ans, &arena);
        if (res) {
            rc = EX_OK_;
            if (json_out) {
                fwrite(ans.data, 1, ans.len, stdout);
            } else if (print && list_key) {
                const tern_json *l = tern_json_get(res, list_key);
                for (const tern_json *x = l ? l->child : NULL; x; x = x->next)
                    print(x);
            } else if (print) {
                print(res);
            } else if (tern_json_get(res, "recipients")) {
                printf("%" PRId64 " recipient(s) due now\n", num(tern_json_get(res, "recipients")));
            }
        }
        tern_arena_free(&arena);
    }
    tern_buf_free(&ans);
    tern_buf_free(&req);
    return rc;
}

static int need_qid(ctx *c, const char *what, int argc, char **argv)
{
    if (argc != 1) {
        fprintf(stderr, "usage: %s queue %s QID\n", c->prog, what);
        return -1;
    }
    (void)argv;
    return 0;
}

static int q_list(ctx *c, int argc, char **argv)
{
    (void)argv;
    if (argc != 0) {
        fprintf(stderr, "usage: %s queue list\n", c->prog);
        return EX_USAGE_;
    }
    return run(c, "queue.list", NULL, false, print_msg, "messages");
}

static int q_show(ctx *c, int argc, char **argv)
{
    if (need_qid(c, "show", argc, argv) != 0)
        return EX_USAGE_;
    return run(c, "queue.show", argv[0], false, print_msg, NULL);
}

static int q_retry(ctx *c, int argc, char **argv)
{
    if (argc != 1) {
        fprintf(stderr, "usage: %s queue retry QID|--all\n", c->prog);
        return EX_USAGE_;
    }
    bool all = strcmp(argv[0], "--all") == 0;
    return run(c, "queue.retry", all ? NULL : argv[0], all, NULL, NULL);
}

static int q_hold(ctx *c, int argc, char **argv)
{
    if (need_qid(c, "hold", argc, argv) != 0)
        return EX_USAGE_;
    return run(c, "queue.hold", argv[0], false, NULL, NULL);
}

static int q_release(ctx *c, int argc, char **argv)
{
    if (need_qid(c, "release", argc, argv) != 0)
        return EX_USAGE_;
    return run(c, "queue.release", argv[0], false, NULL, NULL);
}

static int q_delete(ctx *c, int argc, char **argv)
{
    if (need_qid(c, "delete", argc, argv) != 0)
        return EX_USAGE_;
    return run(c, "queue.delete", argv[0], false, NULL, NULL);
}

static int q_hosts(ctx *c, int argc, char **argv)
{
    (void)argv;
    if (argc != 0) {
        fprintf(stderr, "usage: %s queue hosts\n", c->prog);
        return EX_USAGE_;
    }
    return run(c, "queue.hosts", NULL, false, print_host, "hosts");
}

/* A flat object of counters, one "name value" line each (the names are
 * ternd's own; values that are not whole numbers print as 0). */
static void print_counters(const tern_json *o)
{
    for (const tern_json *x = o ? o->child : NULL; x; x = x->next)
        printf("%-18.*s %" PRId64 "\n", (int)(x->key_len < 64 ? x->key_len : 64), x->key, num(x));
}

static int a_stats(ctx *c, int argc, char **argv)
{
    (void)argv;
    if (argc != 0) {
        fprintf(stderr, "usage: %s auth stats\n", c->prog);
        return EX_USAGE_;
    }
    return run(c, "auth.stats", NULL, false, print_counters, NULL);
}

static const command auth_cmds[] = {
    {"stats", a_stats, "stats", "logins succeeded, failed, refused by a lockout; lockouts; addresses and accounts locked now"},
    {NULL, NULL, NULL, NULL},
};

/* Options of our own, anywhere after the command word; returns the rest. */
static int own_options(int argc, char **argv)
{
    int n = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json_out = 1;
        } else if ((strcmp(argv[i], "-s") == 0 || strcmp(argv[i], "--socket") == 0) && i + 1 < argc) {
            socket_override = argv[++i];
        } else {
            argv[n++] = argv[i];
        }
    }
    return n;
}

int ternctl_cmd_auth(ctx *c, int argc, char **argv)
{
    return ternctl_dispatch(c, "auth", auth_cmds, own_options(argc, argv), argv);
}

static const command queue_cmds[] = {
    {"list", q_list, "list", "one line per message, then one per recipient: state, attempts, next try, last error"},
    {"show", q_show, "show QID", "the same for one message"},
    {"retry", q_retry, "retry QID|--all", "make the waiting recipients due now"},
    {"hold", q_hold, "hold QID", "deliver nothing of QID until released (survives a restart)"},
    {"release", q_release, "release QID", "lift a hold"},
    {"delete", q_delete, "delete QID", "end QID's queued recipients without a bounce"},
    {"hosts", q_hosts, "hosts", "destination addresses with their circuit breaker state"},
    {NULL, NULL, NULL, NULL},
};

int ternctl_cmd_queue(ctx *c, int argc, char **argv)
{
    return ternctl_dispatch(c, "queue", queue_cmds, own_options(argc, argv), argv);
}
