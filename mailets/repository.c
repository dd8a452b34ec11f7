/* Mail repositories (see repository.h): the file format, atomic writes,
 * loading, and the release scan that gives released mails back to the
 * spool. Input: names and ids are checked before they become path
 * components; repository files are parsed as untrusted (bounded size,
 * strict JSON header). */
#include "mailets/repository.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/util.h"

bool tern_repository_name_ok(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 64 || name[0] == '.')
        return false;
    for (const char *p = name; *p; p++)
        if (!(*p >= 'a' && *p <= 'z') && !(*p >= 'A' && *p <= 'Z') && !(*p >= '0' && *p <= '9') &&
            *p != '-' && *p != '_' && *p != '.')
            return false;
    return true;
}

bool tern_repository_id_ok(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n >= TERN_REPO_ID_MAX)
        return false;
    for (const char *p = id; *p; p++)
        if (!(*p >= 'a' && *p <= 'z') && !(*p >= 'A' && *p <= 'Z') && !(*p >= '0' && *p <= '9') &&
            *p != '-' && *p != '_')
            return false;
    return true;
}

void tern_repository_base(const tern_config *cfg, char *out, size_t size)
{
    if (cfg->mailets.repository_dir && cfg->mailets.repository_dir[0])
        snprintf(out, size, "%s", cfg->mailets.repository_dir);
    else
        snprintf(out, size, "%s/repositories",
                 cfg->server.state_dir ? cfg->server.state_dir : "/var/lib/tern");
}

void tern_repository_new_id(const char *qid, char *out, size_t size)
{
    char u[TERN_UUID_LEN];
    tern_uuid(u);
    char q[48];
    size_t o = 0;
    for (const char *p = qid ? qid : ""; *p && o + 1 < sizeof(q); p++)
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9'))
            q[o++] = *p;
    q[o] = '\0';
    snprintf(out, size, "%s-%.8s", o ? q : "mail", u);
}

/* ---- JSON header ---------------------------------------------------------- */

typedef struct jbuf {
    char *p;
    size_t n, cap;
    bool oom;
} jbuf;

static void jb_put(jbuf *b, const char *s, size_t len)
{
    if (b->oom)
        return;
    if (b->n + len + 1 > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 1024;
        while (nc < b->n + len + 1)
            nc *= 2;
        char *np = realloc(b->p, nc);
        if (np == NULL) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
    b->p[b->n] = '\0';
}

static void jb_s(jbuf *b, const char *s)
{
    jb_put(b, s, strlen(s));
}

/* Length of a valid UTF-8 sequence at p (1..4), or 0. */
static size_t utf8_len(const unsigned char *p)
{
    unsigned c = p[0];
    size_t n;
    unsigned cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef)
        n = 3, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4, cp = c & 0x07;
    else
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

static void jb_str(jbuf *b, const char *s)
{
    if (s == NULL) {
        jb_s(b, "null");
        return;
    }
    jb_s(b, "\"");
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        if (*p == '"' || *p == '\\') {
            char e[2] = {'\\', (char)*p};
            jb_put(b, e, 2);
            p++;
        } else if (*p < 0x20 || *p == 0x7f) {
            char e[8];
            snprintf(e, sizeof(e), "\\u%04x", *p);
            jb_s(b, e);
            p++;
        } else {
            size_t n = utf8_len(p);
            if (n == 0) {
                jb_s(b, "\\ufffd");
                p++;
            } else {
                jb_put(b, (const char *)p, n);
                p += n;
            }
        }
    }
    jb_s(b, "\"");
}

static void jb_key(jbuf *b, const char *k, bool first)
{
    if (!first)
        jb_s(b, ",");
    jb_str(b, k);
    jb_s(b, ":");
}

static void jb_int(jbuf *b, int64_t v)
{
    char t[32];
    snprintf(t, sizeof(t), "%lld", (long long)v);
    jb_s(b, t);
}

char *tern_repository_meta_json(const tern_repo_meta *m)
{
    static const char *const rets[] = {"none", "full", "hdrs"};
    jbuf b = {0};
    jb_s(&b, "{");
    jb_key(&b, "version", true);
    jb_int(&b, 1);
    jb_key(&b, "id", false);
    jb_str(&b, m->id);
    jb_key(&b, "repository", false);
    jb_str(&b, m->repository);
    jb_key(&b, "qid", false);
    jb_str(&b, m->qid);
    jb_key(&b, "session", false);
    jb_str(&b, m->session);
    jb_key(&b, "time", false);
    jb_int(&b, m->time);
    jb_key(&b, "processor", false);
    jb_str(&b, m->processor);
    jb_key(&b, "sender", false);
    jb_str(&b, m->sender ? m->sender : "");
    jb_key(&b, "recipients", false);
    jb_s(&b, "[");
    for (size_t i = 0; i < m->n_rcpts; i++) {
        if (i)
            jb_s(&b, ",");
        jb_s(&b, "{");
        jb_key(&b, "addr", true);
        jb_str(&b, m->rcpts[i]);
        if (m->orcpts && m->orcpts[i]) {
            jb_key(&b, "orcpt", false);
            jb_str(&b, m->orcpts[i]);
        }
        if (m->notify && m->notify[i]) {
            jb_key(&b, "notify", false);
            jb_int(&b, m->notify[i]);
        }
        jb_s(&b, "}");
    }
    jb_s(&b, "]");
    jb_key(&b, "envid", false);
    jb_str(&b, m->envid);
    jb_key(&b, "ret", false);
    jb_str(&b, rets[(unsigned)m->ret <= 2 ? m->ret : 0]);
    jb_key(&b, "smtputf8", false);
    jb_s(&b, m->smtputf8 ? "true" : "false");
    if (m->requiretls) {
        jb_key(&b, "requiretls", false);
        jb_s(&b, "true");
    }
    jb_key(&b, "listener", false);
    jb_str(&b, m->listener);
    jb_key(&b, "remote_addr", false);
    jb_str(&b, m->remote_addr);
    jb_key(&b, "helo", false);
    jb_str(&b, m->helo);
    jb_key(&b, "auth_user", false);
    jb_str(&b, m->auth_user);
    if (m->error_code || m->error_text) {
        jb_key(&b, "error", false);
        jb_s(&b, "{");
        jb_key(&b, "code", true);
        jb_int(&b, m->error_code);
        jb_key(&b, "enhanced", false);
        jb_str(&b, m->error_enhanced);
        jb_key(&b, "text", false);
        jb_str(&b, m->error_text);
        jb_key(&b, "processor", false);
        jb_str(&b, m->error_processor);
        jb_s(&b, "}");
    }
    jb_s(&b, "}");
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* ---- files ---------------------------------------------------------------- */

static int mkdir_p(const char *path)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp))
        return -ENAMETOOLONG;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
        return -errno;
    return 0;
}

static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

int tern_repository_write(const char *dir, const char *id, const char *json, const uint8_t *msg,
                          size_t len)
{
    if (!tern_repository_id_ok(id) || strchr(json, '\n'))
        return -EINVAL;
    char tdir[4096], rdir[4096], tmp[4200], dst[4200];
    snprintf(tdir, sizeof(tdir), "%s/tmp", dir);
    snprintf(rdir, sizeof(rdir), "%s/release", dir);
    int rc;
    if ((rc = mkdir_p(tdir)) != 0 || (rc = mkdir_p(rdir)) != 0)
        return rc;
    snprintf(tmp, sizeof(tmp), "%s/%s", tdir, id);
    snprintf(dst, sizeof(dst), "%s/%s", dir, id);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    rc = write_all(fd, json, strlen(json));
    if (rc == 0)
        rc = write_all(fd, "\n", 1);
    if (rc == 0)
        rc = write_all(fd, msg, len);
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, dst) != 0)
        rc = -errno;
    if (rc != 0) {
        unlink(tmp);
        return rc;
    }
    return fsync_dir(dir);
}

static int parse_entry(tern_repo_entry *e, const char *what, char *err, size_t size);

int tern_repository_load(const char *path, tern_repo_entry *e, char *err, size_t size)
{
    memset(e, 0, sizeof(*e));
    tern_arena_init(&e->arena, 4096);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(err, size, "%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > TERN_REPO_MAX_FILE) {
        snprintf(err, size, "%s: not a regular file or larger than %u bytes", path,
                 TERN_REPO_MAX_FILE);
        close(fd);
        return -1;
    }
    e->data = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (e->data && got < (size_t)st.st_size) {
        ssize_t r = read(fd, e->data + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (e->data == NULL || got != (size_t)st.st_size) {
        snprintf(err, size, "%s: cannot read the file", path);
        return -1;
    }
    e->len = got;
    return parse_entry(e, path, err, size);
}

int tern_repository_parse(tern_repo_entry *e, uint8_t *data, size_t len, const char *what,
                          char *err, size_t size)
{
    memset(e, 0, sizeof(*e));
    tern_arena_init(&e->arena, 4096);
    e->data = data;
    e->len = len;
    return parse_entry(e, what, err, size);
}

/* e->data/e->len hold the file: the header line, then the message. */
static int parse_entry(tern_repo_entry *e, const char *what, char *err, size_t size)
{
    const uint8_t *nl = e->len ? memchr(e->data, '\n', e->len) : NULL;
    if (nl == NULL) {
        snprintf(err, size, "%s: no header line", what);
        return -1;
    }
    tern_json *root = NULL;
    tern_json_limits lim = {.max_input = 4u << 20};
    int rc = tern_json_parse((const char *)e->data, (size_t)(nl - e->data), &lim, &e->arena,
                             &root, NULL);
    if (rc != TERN_JSON_OK || root->type != TERN_JSON_OBJECT) {
        snprintf(err, size, "%s: bad header: %s", what,
                 rc != TERN_JSON_OK ? tern_json_strerror(rc) : "not an object");
        return -1;
    }
    e->meta = root;
    e->msg_off = (size_t)(nl - e->data) + 1;
    return 0;
}

void tern_repository_entry_free(tern_repo_entry *e)
{
    free(e->data);
    e->data = NULL;
    tern_arena_free(&e->arena);
}

static char *dupstr(const char *s)
{
    return strdup(s ? s : "");
}

void tern_repository_envelope_free(tern_envelope *env)
{
    if (env == NULL)
        return;
    for (size_t i = 0; i < env->n_rcpts; i++) {
        free(env->rcpts[i].addr);
        free(env->rcpts[i].orcpt);
    }
    free(env->rcpts);
    free(env->mail_from);
    free(env->envid);
    free(env->auth_user);
    free(env->helo);
    free(env->client_addr);
    free(env->session_id);
    free(env->listener);
    free(env->pipeline);
    free(env);
}

tern_envelope *tern_repository_envelope(const tern_repo_entry *e, const char *processor)
{
    const char *sender = tern_json_str(tern_json_get(e->meta, "sender"));
    const tern_json *rl = tern_json_get(e->meta, "recipients");
    if (sender == NULL || rl == NULL || rl->type != TERN_JSON_ARRAY || rl->len == 0)
        return NULL;
    tern_envelope *env = calloc(1, sizeof(*env));
    if (env == NULL)
        return NULL;
    env->rcpts = calloc(rl->len, sizeof(*env->rcpts));
    bool ok = env->rcpts != NULL;
    for (const tern_json *r = rl->child; ok && r; r = r->next) {
        const char *a = tern_json_str(tern_json_get(r, "addr"));
        if (a == NULL || a[0] == '\0') {
            ok = false;
            break;
        }
        tern_spool_rcpt *sr = &env->rcpts[env->n_rcpts++];
        sr->addr = strdup(a);
        const char *o = tern_json_str(tern_json_get(r, "orcpt"));
        sr->orcpt = o ? strdup(o) : NULL;
        int64_t nt = 0;
        if (tern_json_int64(tern_json_get(r, "notify"), &nt) == 0 && nt > 0 && nt < 256)
            sr->notify = (uint8_t)nt;
        ok = sr->addr != NULL && (o == NULL || sr->orcpt != NULL);
    }
    const char *envid = tern_json_str(tern_json_get(e->meta, "envid"));
    const char *ret = tern_json_str(tern_json_get(e->meta, "ret"));
    const char *auth = tern_json_str(tern_json_get(e->meta, "auth_user"));
    const tern_json *u8 = tern_json_get(e->meta, "smtputf8");
    env->mail_from = strdup(sender);
    env->envid = envid ? strdup(envid) : NULL;
    env->ret = ret && strcmp(ret, "full") == 0   ? TERN_RET_FULL
               : ret && strcmp(ret, "hdrs") == 0 ? TERN_RET_HDRS
                                                 : TERN_RET_NONE;
    env->smtputf8 = u8 && u8->type == TERN_JSON_BOOL && u8->boolean;
    const tern_json *rtls = tern_json_get(e->meta, "requiretls");
    env->requiretls = rtls && rtls->type == TERN_JSON_BOOL && rtls->boolean;
    env->auth_user = auth ? strdup(auth) : NULL;
    env->helo = dupstr(tern_json_str(tern_json_get(e->meta, "helo")));
    env->client_addr = dupstr(tern_json_str(tern_json_get(e->meta, "remote_addr")));
    env->session_id = dupstr(tern_json_str(tern_json_get(e->meta, "session")));
    env->listener = strdup("repository");
    env->pipeline = strdup(processor);
    env->body = TERN_BODY_8BITMIME;
    env->received_at = (int64_t)time(NULL);
    env->size = e->len - e->msg_off;
    ok = ok && env->mail_from && (envid == NULL || env->envid) && (auth == NULL || env->auth_user) &&
         env->helo && env->client_addr && env->session_id && env->listener && env->pipeline;
    if (!ok) {
        tern_repository_envelope_free(env);
        return NULL;
    }
    return env;
}

/* ---- the release scan ---------------------------------------------------- */

typedef struct released {
    char path[4200];
    char processor[80];
    tern_envelope *env;
    tern_repo_entry entry;
    bool loaded;
} released;

typedef struct scan {
    uv_work_t work;
    uv_loop_t *loop;
    tern_spool *spool;
    tern_spool_client *sc;
    tern_repo_posted_cb posted;
    tern_repo_scan_done_cb done;
    void *arg;
    char base[4096];
    released items[TERN_REPO_SCAN_BATCH];
    size_t n;
    size_t outstanding, submitted, failed;
} scan;

typedef struct one {
    scan *s;
    released *it;
    uv_fs_t unlink;
} one;

/* On the pool: lists BASE/<repo>/release/ and loads up to a batch. */
static void scan_work(uv_work_t *w)
{
    scan *s = w->data;
    DIR *bd = opendir(s->base);
    if (bd == NULL)
        return;
    struct dirent *de;
    while (s->n < TERN_REPO_SCAN_BATCH && (de = readdir(bd)) != NULL) {
        if (!tern_repository_name_ok(de->d_name))
            continue;
        char rdir[4200];
        if (snprintf(rdir, sizeof(rdir), "%s/%s/release", s->base, de->d_name) >=
            (int)sizeof(rdir))
            continue;
        DIR *rd = opendir(rdir);
        if (rd == NULL)
            continue;
        struct dirent *fe;
        while (s->n < TERN_REPO_SCAN_BATCH && (fe = readdir(rd)) != NULL) {
            char name[256];
            snprintf(name, sizeof(name), "%s", fe->d_name);
            char *at = strchr(name, '@');
            if (at == NULL)
                continue;
            *at = '\0';
            if (!tern_repository_id_ok(name) || !tern_repository_name_ok(at + 1))
                continue;
            released *it = &s->items[s->n];
            memset(it, 0, sizeof(*it));
            if (snprintf(it->path, sizeof(it->path), "%s/%s", rdir, fe->d_name) >=
                (int)sizeof(it->path))
                continue;
            snprintf(it->processor, sizeof(it->processor), "%s", at + 1);
            char err[512];
            if (tern_repository_load(it->path, &it->entry, err, sizeof(err)) != 0) {
                TLOG_ERR("repository", "event=release_unreadable file=%s error=\"%s\"", it->path,
                         err);
                tern_repository_entry_free(&it->entry);
                continue;
            }
            it->loaded = true;
            it->env = tern_repository_envelope(&it->entry, it->processor);
            if (it->env == NULL) {
                TLOG_ERR("repository", "event=release_unreadable file=%s error=\"no sender or "
                         "recipients in the header\"", it->path);
                tern_repository_entry_free(&it->entry);
                it->loaded = false;
                continue;
            }
            s->n++;
        }
        closedir(rd);
    }
    closedir(bd);
}

static void scan_finish(scan *s)
{
    if (s->outstanding > 0)
        return;
    for (size_t i = 0; i < s->n; i++) {
        tern_repository_envelope_free(s->items[i].env);
        if (s->items[i].loaded)
            tern_repository_entry_free(&s->items[i].entry);
    }
    if (s->done)
        s->done(s->arg, s->submitted, s->failed);
    free(s);
}

static void unlinked(uv_fs_t *req)
{
    one *o = req->data;
    if (req->result < 0)
        TLOG_ERR("repository", "event=release_unlink_failed file=%s error=\"%s\" (it will be "
                 "released again)", o->it->path, uv_strerror((int)req->result));
    uv_fs_req_cleanup(req);
    scan *s = o->s;
    free(o);
    s->outstanding--;
    scan_finish(s);
}

static void submitted(void *arg, int status, const char *qid, const char *error)
{
    one *o = arg;
    scan *s = o->s;
    if (status != 0) {
        TLOG_ERR("repository", "event=release_failed file=%s error=\"%s\"", o->it->path,
                 error ? error : strerror(-status));
        s->failed++;
        free(o);
        s->outstanding--;
        scan_finish(s);
        return;
    }
    TLOG_INFO("repository", "event=released file=%s qid=%s processor=%s", o->it->path, qid,
              o->it->processor);
    s->submitted++;
    if (s->posted)
        s->posted(s->arg, qid);
    o->unlink.data = o;
    if (uv_fs_unlink(s->loop, &o->unlink, o->it->path, unlinked) != 0) {
        free(o);
        s->outstanding--;
        scan_finish(s);
    }
}

static void scan_after(uv_work_t *w, int status)
{
    scan *s = w->data;
    s->outstanding = 1; /* held while submitting */
    for (size_t i = 0; status == 0 && i < s->n; i++) {
        released *it = &s->items[i];
        size_t mlen = it->entry.len - it->entry.msg_off;
        tern_body *b = tern_body_new(s->loop, tern_spool_tmpdir(s->spool), (uint64_t)mlen + 1);
        one *o = b ? calloc(1, sizeof(*o)) : NULL;
        if (o == NULL || tern_body_append(b, it->entry.data + it->entry.msg_off, mlen, NULL,
                                          NULL) != 0) {
            if (b)
                tern_body_free(b);
            free(o);
            s->failed++;
            continue;
        }
        o->s = s;
        o->it = it;
        s->outstanding++;
        int rc = tern_spool_submit(s->sc, it->env, NULL, 0, b, submitted, o);
        if (rc != 0) {
            TLOG_ERR("repository", "event=release_failed file=%s error=\"%s\"", it->path,
                     strerror(-rc));
            tern_body_free(b);
            free(o);
            s->outstanding--;
            s->failed++;
        }
    }
    s->outstanding--;
    scan_finish(s);
}

int tern_repository_scan_released(const tern_config *cfg, uv_loop_t *loop, tern_spool *spool,
                                  tern_spool_client *sc, tern_repo_posted_cb posted,
                                  tern_repo_scan_done_cb done, void *arg)
{
    scan *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->loop = loop;
    s->spool = spool;
    s->sc = sc;
    s->posted = posted;
    s->done = done;
    s->arg = arg;
    tern_repository_base(cfg, s->base, sizeof(s->base));
    s->work.data = s;
    int rc = uv_queue_work(loop, &s->work, scan_work, scan_after);
    if (rc != 0) {
        free(s);
        return rc;
    }
    return 0;
}
