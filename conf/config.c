/* The public face of conf/: loading a file or string into one immutable,
 * reference-counted snapshot, the error list, and small lookups used by
 * other modules. Input: an untrusted config file; a snapshot is handed out
 * only after every rule in schema.c, validate.c and tls_check.c passed. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf/conf_internal.h"

/* Only successful loads count, so a reload that fails leaves no gap. */
static atomic_uint_fast64_t config_generation;

void tern_config_errors_init(tern_config_errors *e)
{
    e->items = NULL;
    e->n = 0;
    e->cap = 0;
}

static void errors__push(tern_config_errors *e, char *s)
{
    if (s == NULL)
        return;
    if (e->n == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 8;
        char **items = realloc(e->items, cap * sizeof(*items));
        if (items == NULL) {
            free(s);
            return;
        }
        e->items = items;
        e->cap = cap;
    }
    e->items[e->n++] = s;
}

void tern_config_errors_add(tern_config_errors *e, const char *fmt, ...)
{
    /* A fuzzed or badly broken file could produce an error per value; past
     * the cap the reader learns nothing new, so one closing line is kept. */
    if (e->n > CONF_MAX_ERRORS)
        return;
    if (e->n == CONF_MAX_ERRORS) {
        errors__push(e, strdup("too many errors; the rest are not shown"));
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    errors__push(e, s);
}

void tern_config_errors_free(tern_config_errors *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->items[i]);
    free(e->items);
    tern_config_errors_init(e);
}

void conf__err(conf_walk *w, unsigned line, const char *path, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (line > 0)
        tern_config_errors_add(w->errs, "%s: %s (line %u)", path, msg, line);
    else
        tern_config_errors_add(w->errs, "%s: %s", path, msg);
}

void *conf__alloc(conf_walk *w, size_t size)
{
    void *p = tern_arena_alloc(&w->cfg->arena, size);
    if (p == NULL)
        w->oom = true;
    return p;
}

char *conf__strdup(conf_walk *w, const char *s)
{
    char *d = tern_arena_strdup(&w->cfg->arena, s);
    if (d == NULL && s != NULL)
        w->oom = true;
    return d;
}

/* Open addressing on the field's address: the table only grows while one
 * document is walked and is freed with the walk. */
static size_t lines__hash(const void *addr, size_t cap)
{
    uintptr_t v = (uintptr_t)addr;
    v ^= v >> 17;
    v *= 0x9E3779B97F4A7C15ull;
    return (size_t)(v >> 7) & (cap - 1);
}

void conf__line_set(conf_walk *w, const void *addr, unsigned line)
{
    if (w->lines_n * 2 >= w->lines_cap) {
        size_t cap = w->lines_cap ? w->lines_cap * 2 : 256;
        conf_line_slot *t = calloc(cap, sizeof(*t));
        if (t == NULL)
            return; /* only costs a line number in a message */
        for (size_t i = 0; i < w->lines_cap; i++) {
            if (w->lines[i].addr == NULL)
                continue;
            size_t h = lines__hash(w->lines[i].addr, cap);
            while (t[h].addr != NULL)
                h = (h + 1) & (cap - 1);
            t[h] = w->lines[i];
        }
        free(w->lines);
        w->lines = t;
        w->lines_cap = cap;
    }
    size_t h = lines__hash(addr, w->lines_cap);
    while (w->lines[h].addr != NULL && w->lines[h].addr != addr)
        h = (h + 1) & (w->lines_cap - 1);
    if (w->lines[h].addr == NULL)
        w->lines_n++;
    w->lines[h].addr = addr;
    w->lines[h].line = line;
}

unsigned conf__line(const conf_walk *w, const void *addr)
{
    if (w->lines_cap == 0)
        return 0;
    size_t h = lines__hash(addr, w->lines_cap);
    while (w->lines[h].addr != NULL) {
        if (w->lines[h].addr == addr)
            return w->lines[h].line;
        h = (h + 1) & (w->lines_cap - 1);
    }
    return 0;
}

static tern_config *config__load(const char *text, size_t len, const char *name,
                                 const char *basedir, tern_config_errors *errs)
{
    size_t errs_before = errs->n;
    tern_config *cfg = calloc(1, sizeof(*cfg));
    if (cfg == NULL) {
        tern_config_errors_add(errs, "%s: out of memory", name);
        return NULL;
    }
    atomic_init(&cfg->refs, 1);
    tern_arena_init(&cfg->arena, 16384);

    /* The tree is scaffolding: it lives in its own arena, gone after the walk. */
    tern_arena tree_arena;
    tern_arena_init(&tree_arena, 65536);
    cnode *root = NULL;
    conf_walk w = {.cfg = cfg, .errs = errs, .basedir = basedir};
    if (conf__parse_yaml(&tree_arena, text, len, &root, errs) == 0) {
        cfg->path = conf__strdup(&w, name);
        conf__apply_schema(&w, root);
        conf__validate(&w);
        if (w.oom)
            tern_config_errors_add(errs, "%s: out of memory while loading", name);
    }
    free(w.lines);
    tern_arena_free(&tree_arena);

    if (errs->n != errs_before) {
        tern_arena_free(&cfg->arena);
        free(cfg);
        return NULL;
    }
    cfg->generation = atomic_fetch_add(&config_generation, 1) + 1;
    return cfg;
}

tern_config *tern_config_load_string(const char *text, size_t len, const char *name,
                                     tern_config_errors *errs)
{
    return config__load(text ? text : "", text ? len : 0, name ? name : "<string>", NULL, errs);
}

tern_config *tern_config_load(const char *path, tern_config_errors *errs)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        tern_config_errors_add(errs, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        tern_config_errors_add(errs, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    if (st.st_size > (off_t)CONF_MAX_BYTES) {
        tern_config_errors_add(errs, "%s: larger than %u bytes; this is not a config file", path,
                               CONF_MAX_BYTES);
        close(fd);
        return NULL;
    }
    /* Read to EOF rather than trusting st_size: the file may change under us. */
    size_t cap = (size_t)st.st_size + 1, len = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        if (len == cap) {
            if (cap > CONF_MAX_BYTES) {
                tern_config_errors_add(errs, "%s: larger than %u bytes", path, CONF_MAX_BYTES);
                free(buf);
                close(fd);
                return NULL;
            }
            char *nb = realloc(buf, cap * 2);
            if (nb == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            tern_config_errors_add(errs, "%s: cannot read: %s", path, strerror(errno));
            free(buf);
            close(fd);
            return NULL;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    if (buf == NULL) {
        tern_config_errors_add(errs, "%s: out of memory", path);
        return NULL;
    }
    /* Relative certificate and key paths mean "next to the config file",
     * which stays true when ternd later runs from another directory. */
    char *dircopy = strdup(path);
    char *dir = NULL;
    if (dircopy != NULL) {
        char *d = dirname(dircopy);
        if (d[0] == '/') {
            dir = strdup(d);
        } else {
            char cwd[4096];
            if (getcwd(cwd, sizeof(cwd)) != NULL) {
                if (strcmp(d, ".") == 0)
                    dir = strdup(cwd);
                else if (asprintf(&dir, "%s/%s", cwd, d) < 0)
                    dir = NULL;
            }
        }
        free(dircopy);
    }
    tern_config *cfg = config__load(buf, len, path, dir, errs);
    free(dir);
    free(buf);
    return cfg;
}

tern_config *tern_config_ref(tern_config *c)
{
    if (c != NULL)
        atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

void tern_config_unref(tern_config *c)
{
    if (c == NULL)
        return;
    /* acq_rel: the thread that frees must see every other thread's reads done. */
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
        return;
    tern_arena_free(&c->arena);
    free(c);
}

const char *tern_protocol_name(tern_protocol p)
{
    switch (p) {
    case TERN_PROTO_SMTP:
        return "smtp";
    case TERN_PROTO_SUBMISSION:
        return "submission";
    case TERN_PROTO_IMAP:
        return "imap";
    case TERN_PROTO_POP3:
        return "pop3";
    case TERN_PROTO_HTTP:
        return "http";
    }
    return "unknown";
}

bool tern_config_is_local_domain(const tern_config *c, const char *domain, size_t len)
{
    if (c == NULL || domain == NULL)
        return false;
    /* "example.test." is the same domain written absolutely. */
    if (len > 0 && domain[len - 1] == '.')
        len--;
    for (size_t i = 0; i < c->n_domains; i++) {
        const char *d = c->domains[i];
        if (strlen(d) == len && strncasecmp(d, domain, len) == 0)
            return true;
    }
    return false;
}

uint32_t tern_config_workers(const tern_config *c)
{
    if (c != NULL && c->server.workers > 0)
        return c->server.workers;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        return 1;
    return n > 256 ? 256u : (uint32_t)n;
}
