/* Control socket requests (see control_req.h): JSON through lib/json
 * within tight bounds (a request is a few short members), then checked
 * member by member. Input: untrusted bytes from the control socket. */
#include "server/control_req.h"

#include <stdio.h>
#include <string.h>

#include "lib/arena.h"
#include "lib/json.h"

static const struct {
    const char *name;
    tern_control_cmd cmd;
    bool needs_qid;
} cmds[] = {
    {"queue.list", TERN_CTL_QUEUE_LIST, false},
    {"queue.show", TERN_CTL_QUEUE_SHOW, true},
    {"queue.retry", TERN_CTL_QUEUE_RETRY, false}, /* qid or all */
    {"queue.hold", TERN_CTL_QUEUE_HOLD, true},
    {"queue.release", TERN_CTL_QUEUE_RELEASE, true},
    {"queue.delete", TERN_CTL_QUEUE_DELETE, true},
    {"queue.hosts", TERN_CTL_QUEUE_HOSTS, false},
    {"auth.stats", TERN_CTL_AUTH_STATS, false},
};

static bool qid_ok(const char *s, size_t len)
{
    if (len == 0 || len > TERN_CONTROL_MAX_QID)
        return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] <= ' ' || s[i] >= 0x7f)
            return false;
    return true;
}

int tern_control_req_parse(const char *line, size_t len, tern_control_req *req, char *err,
                           size_t err_size)
{
    memset(req, 0, sizeof(*req));
    tern_arena arena;
    tern_arena_init(&arena, 1024);
    tern_json_limits lim = {.max_input = 65536, .max_depth = 4, .max_nodes = 64,
                            .max_string = 1024};
    tern_json *root = NULL;
    int r = -1;
    int pr = tern_json_parse(line, len, &lim, &arena, &root, NULL);
    if (pr != TERN_JSON_OK) {
        snprintf(err, err_size, "request is not JSON: %s", tern_json_strerror(pr));
        goto out;
    }
    if (root->type != TERN_JSON_OBJECT) {
        snprintf(err, err_size, "request is not a JSON object");
        goto out;
    }
    const tern_json *cmd = tern_json_get(root, "cmd");
    const char *name = tern_json_str(cmd);
    if (name == NULL) {
        snprintf(err, err_size, "request has no \"cmd\" string");
        goto out;
    }
    size_t k = 0;
    while (k < sizeof(cmds) / sizeof(cmds[0]) && strcmp(cmds[k].name, name) != 0)
        k++;
    if (k == sizeof(cmds) / sizeof(cmds[0])) {
        char shown[64];
        size_t i = 0;
        for (; name[i] && i + 1 < sizeof(shown); i++)
            shown[i] = name[i] < ' ' || name[i] == 0x7f ? '?' : name[i];
        shown[i] = '\0';
        snprintf(err, err_size, "unknown command \"%s\"", shown);
        goto out;
    }
    req->cmd = cmds[k].cmd;
    const tern_json *qid = tern_json_get(root, "qid");
    if (qid) {
        if (qid->type != TERN_JSON_STRING || !qid_ok(qid->text, qid->len)) {
            snprintf(err, err_size, "\"qid\" must be 1..%d printable characters", TERN_CONTROL_MAX_QID);
            goto out;
        }
        memcpy(req->qid, qid->text, qid->len);
        req->qid[qid->len] = '\0';
    }
    const tern_json *all = tern_json_get(root, "all");
    if (all) {
        if (all->type != TERN_JSON_BOOL) {
            snprintf(err, err_size, "\"all\" must be true or false");
            goto out;
        }
        req->all = all->boolean;
    }
    if (cmds[k].needs_qid && req->qid[0] == '\0') {
        snprintf(err, err_size, "%s needs \"qid\"", cmds[k].name);
        goto out;
    }
    if (req->cmd == TERN_CTL_QUEUE_RETRY && req->qid[0] == '\0' && !req->all) {
        snprintf(err, err_size, "queue.retry needs \"qid\" or \"all\":true");
        goto out;
    }
    r = 0;
out:
    tern_arena_free(&arena);
    return r;
}
