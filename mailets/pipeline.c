/* Building a pipeline from a config snapshot: module lookup (builtins,
 * then plugins loaded with dlopen), one instance per step with its own
 * parameters, matcher trees, and every error reported with its config
 * path, the way config errors are. Input trusted: the validated config;
 * not trusted: what a plugin's module struct and init hook return. */
#include "mailets/pipeline_int.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "lib/log.h"

static void params_from(const tern_param_conf *pc, size_t n, tern_mailet_param **items_r,
                        size_t *n_r)
{
    *items_r = NULL;
    *n_r = 0;
    if (n == 0)
        return;
    tern_mailet_param *items = calloc(n, sizeof(*items));
    if (items == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        items[i].key = pc[i].key;
        items[i].value = pc[i].value;
        items[i].list = (const char *const *)pc[i].list;
        items[i].n_list = pc[i].n_list;
    }
    *items_r = items;
    *n_r = n;
}

static const tern_mailet_module *find_module(tern_pipeline *p, const char *name)
{
    for (size_t i = 0; i < p->n_plugins; i++)
        if (p->plugins[i].mod && strcmp(p->plugins[i].mod->name, name) == 0)
            return p->plugins[i].mod;
    return tern_builtin_find(name);
}

static int inst_init(tern_pipeline *p, pl_inst *in, const char *name, uint32_t kind,
                     const tern_mailet_param *items, size_t n, const char *path, unsigned line,
                     tern_config_errors *errs)
{
    const tern_mailet_module *mod = find_module(p, name);
    in->name = name;
    if (mod == NULL) {
        tern_config_errors_add(errs, "%s: line %u: unknown %s \"%s\"", path, line,
                               kind == TERN_MAILET_KIND_MATCHER ? "matcher" : "mailet", name);
        return -1;
    }
    if (!(mod->kinds & kind)) {
        tern_config_errors_add(errs, "%s: line %u: \"%s\" is not a %s", path, line, name,
                               kind == TERN_MAILET_KIND_MATCHER ? "matcher" : "mailet");
        return -1;
    }
    if ((kind == TERN_MAILET_KIND_MATCHER && mod->match == NULL) ||
        (kind == TERN_MAILET_KIND_MAILET && mod->service == NULL)) {
        tern_config_errors_add(errs, "%s: line %u: \"%s\" has no %s hook", path, line, name,
                               kind == TERN_MAILET_KIND_MATCHER ? "match" : "service");
        return -1;
    }
    in->mod = mod;
    in->params.items = items;
    in->params.n = n;
    char err[256] = "";
    if (mod->init) {
        int r = mod->init(tern_mailet_host_table(), &in->params, &in->state, err, sizeof(err));
        if (r != 0) {
            err[sizeof(err) - 1] = '\0';
            tern_config_errors_add(errs, "%s: line %u: %s: %s", path, line, name,
                                   err[0] ? err : "init failed");
            in->mod = NULL; /* no deinit for a failed init */
            return -1;
        }
    }
    in->live = true;
    return 0;
}

static void inst_fini(pl_inst *in)
{
    if (in->live && in->mod && in->mod->deinit)
        in->mod->deinit(in->state);
    in->live = false;
    free(in->owned_items);
}

static int match_build(tern_pipeline *p, pl_match *m, const tern_match_conf *mc, const char *path,
                       tern_config_errors *errs)
{
    m->op = mc->op;
    if (mc->op == TERN_MATCH_NAME) {
        tern_mailet_param *items = NULL;
        size_t n = 0;
        if (mc->condition) {
            items = calloc(1, sizeof(*items));
            if (items == NULL)
                return -1;
            items[0].key = "condition";
            items[0].value = mc->condition;
            n = 1;
        }
        m->inst.owned_items = items;
        return inst_init(p, &m->inst, mc->name, TERN_MAILET_KIND_MATCHER, items, n, path, mc->line,
                         errs);
    }
    m->kids = calloc(mc->n_children ? mc->n_children : 1, sizeof(*m->kids));
    if (m->kids == NULL)
        return -1;
    m->n_kids = mc->n_children;
    int r = 0;
    for (size_t i = 0; i < mc->n_children; i++)
        if (match_build(p, &m->kids[i], &mc->children[i], path, errs) != 0)
            r = -1;
    return r;
}

static void match_free(pl_match *m)
{
    if (m->op == TERN_MATCH_NAME) {
        inst_fini(&m->inst);
        return;
    }
    for (size_t i = 0; i < m->n_kids; i++)
        match_free(&m->kids[i]);
    free(m->kids);
}

/* A memfd holding the file's bytes, or -1 (then the path is used). */
static int plugin_private_copy(const char *path)
{
    int in = open(path, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return -1;
    int out = memfd_create("tern-plugin", MFD_CLOEXEC);
    if (out < 0) {
        close(in);
        return -1;
    }
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof(buf))) > 0) {
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w <= 0) {
                close(in);
                close(out);
                return -1;
            }
            off += w;
        }
    }
    close(in);
    if (n < 0) {
        close(out);
        return -1;
    }
    return out;
}

static int plugin_load(tern_pipeline *p, pl_plugin *pl, const tern_plugin_conf *pc,
                       tern_config_errors *errs)
{
    char where[96];
    snprintf(where, sizeof(where), "plugins (line %u)", pc->line);
    /* RTLD_LOCAL: a plugin's symbols never satisfy another's; RTLD_NOW:
     * a missing symbol is found here, at load, not in the middle of a mail.
     * Loaded from a private copy so that a SIGHUP after replacing the file
     * gets the new version: dlopen of a path already loaded (the old chain
     * still holds it while its mail finishes) would return the old one. */
    int fd = plugin_private_copy(pc->path);
    if (fd >= 0) {
        char proc[64];
        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
        pl->handle = dlopen(proc, RTLD_NOW | RTLD_LOCAL);
        /* Kept open while loaded: glibc finds loaded objects by name, and a
         * reused fd number would name the old object. */
        if (pl->handle)
            pl->fd = fd;
        else
            close(fd);
    } else
        pl->handle = dlopen(pc->path, RTLD_NOW | RTLD_LOCAL);
    if (pl->handle == NULL) {
        const char *e = dlerror();
        tern_config_errors_add(errs, "%s: %s: cannot load %s: %s", where, pc->name, pc->path,
                               e ? e : "?");
        return -1;
    }
    dlerror();
    const tern_mailet_module *mod = dlsym(pl->handle, TERN_MAILET_SYMBOL);
    if (mod == NULL) {
        tern_config_errors_add(errs, "%s: %s: %s exports no %s", where, pc->name, pc->path,
                               TERN_MAILET_SYMBOL);
        return -1;
    }
    if (mod->abi_version != TERN_MAILET_ABI_VERSION) {
        tern_config_errors_add(errs, "%s: %s: built for mailet ABI %u, this ternd speaks %u",
                               where, pc->name, mod->abi_version, TERN_MAILET_ABI_VERSION);
        return -1;
    }
    if (mod->struct_size < offsetof(tern_mailet_module, spare) || mod->name == NULL ||
        strnlen(mod->name, 65) > 64) {
        tern_config_errors_add(errs, "%s: %s: the module struct is malformed", where, pc->name);
        return -1;
    }
    if (strcmp(mod->name, pc->name) != 0) {
        tern_config_errors_add(errs, "%s: %s: the module calls itself \"%.64s\"", where, pc->name,
                               mod->name);
        return -1;
    }
    if (tern_builtin_find(mod->name) != NULL) {
        tern_config_errors_add(errs, "%s: %s: a builtin already has that name", where, pc->name);
        return -1;
    }
    if ((mod->kinds & (TERN_MAILET_KIND_MATCHER | TERN_MAILET_KIND_MAILET)) == 0) {
        tern_config_errors_add(errs, "%s: %s: declares neither a matcher nor a mailet", where,
                               pc->name);
        return -1;
    }
    pl->mod = mod;
    pl->path = pc->path;
    return 0;
}

tern_pipeline *tern_pipeline_build(tern_config *cfg, struct tern_auth *auth,
                                   tern_config_errors *errs)
{
    tern_pipeline *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        tern_config_errors_add(errs, "mailets: out of memory");
        return NULL;
    }
    atomic_init(&p->refs, 1);
    p->cfg = tern_config_ref(cfg);
    p->auth = auth ? tern_auth_ref(auth) : NULL;
    size_t nerr0 = errs->n;

    p->plugins = calloc(cfg->n_plugins ? cfg->n_plugins : 1, sizeof(*p->plugins));
    p->procs = calloc(cfg->n_processors ? cfg->n_processors : 1, sizeof(*p->procs));
    if (p->plugins == NULL || p->procs == NULL) {
        tern_config_errors_add(errs, "mailets: out of memory");
        tern_pipeline_unref(p);
        return NULL;
    }
    p->n_plugins = cfg->n_plugins;
    for (size_t i = 0; i < cfg->n_plugins; i++)
        p->plugins[i].fd = -1;
    for (size_t i = 0; i < cfg->n_plugins; i++)
        plugin_load(p, &p->plugins[i], &cfg->plugins[i], errs);

    p->n_procs = cfg->n_processors;
    for (size_t i = 0; i < cfg->n_processors; i++) {
        const tern_processor_conf *pc = &cfg->processors[i];
        pl_proc *pr = &p->procs[i];
        pr->name = pc->name;
        pr->steps = calloc(pc->n_steps ? pc->n_steps : 1, sizeof(*pr->steps));
        if (pr->steps == NULL) {
            tern_config_errors_add(errs, "mailets: out of memory");
            break;
        }
        pr->n_steps = pc->n_steps;
        for (size_t s = 0; s < pc->n_steps; s++) {
            const tern_step_conf *sc = &pc->steps[s];
            pl_step *st = &pr->steps[s];
            snprintf(st->path, sizeof(st->path), "processors.%s[%zu]", pc->name, s);
            match_build(p, &st->match, &sc->match, st->path, errs);
            tern_mailet_param *items;
            size_t n;
            params_from(sc->params, sc->n_params, &items, &n);
            st->mailet.owned_items = items;
            inst_init(p, &st->mailet, sc->mailet, TERN_MAILET_KIND_MAILET, items, n, st->path,
                      sc->line, errs);
            st->on_error = PL_ERR_PROC;
            st->on_error_proc = -1;
            if (sc->on_error && strcmp(sc->on_error, "ignore") == 0)
                st->on_error = PL_ERR_IGNORE;
            else if (sc->on_error && strcmp(sc->on_error, "retry") == 0)
                st->on_error = PL_ERR_RETRY;
            st->on_error_name = sc->on_error ? sc->on_error : "error";
        }
    }
    for (size_t i = 0; i < p->n_procs; i++)
        for (size_t s = 0; s < p->procs[i].n_steps; s++) {
            pl_step *st = &p->procs[i].steps[s];
            if (st->on_error == PL_ERR_PROC)
                st->on_error_proc = tern_pipeline_processor(p, st->on_error_name);
        }
    p->root = tern_pipeline_processor(p, "root");
    p->error = tern_pipeline_processor(p, "error");
    p->bounces = tern_pipeline_processor(p, "bounces");
    if (errs->n > nerr0) {
        tern_pipeline_unref(p);
        return NULL;
    }
    return p;
}

tern_pipeline *tern_pipeline_ref(tern_pipeline *p)
{
    if (p)
        atomic_fetch_add(&p->refs, 1);
    return p;
}

void tern_pipeline_unref(tern_pipeline *p)
{
    if (p == NULL || atomic_fetch_sub(&p->refs, 1) != 1)
        return;
    for (size_t i = 0; p->procs && i < p->n_procs; i++) {
        for (size_t s = 0; s < p->procs[i].n_steps; s++) {
            match_free(&p->procs[i].steps[s].match);
            inst_fini(&p->procs[i].steps[s].mailet);
        }
        free(p->procs[i].steps);
    }
    free(p->procs);
    /* Instances first (their deinit is in the plugin's code), then the
     * objects. */
    for (size_t i = 0; p->plugins && i < p->n_plugins; i++)
        if (p->plugins[i].handle) {
            dlclose(p->plugins[i].handle);
            if (p->plugins[i].fd >= 0)
                close(p->plugins[i].fd);
        }
    free(p->plugins);
    if (p->auth)
        tern_auth_unref(p->auth);
    tern_config_unref(p->cfg);
    free(p);
}

const tern_config *tern_pipeline_config(const tern_pipeline *p)
{
    return p->cfg;
}

int tern_pipeline_processor(const tern_pipeline *p, const char *name)
{
    for (size_t i = 0; name && i < p->n_procs; i++)
        if (strcmp(p->procs[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* ---- parameters -------------------------------------------------------- */

const tern_mailet_param *tern_param_get(const tern_mailet_params *p, const char *key)
{
    for (size_t i = 0; p && i < p->n; i++)
        if (strcmp(p->items[i].key, key) == 0)
            return &p->items[i];
    return NULL;
}

const char *tern_param_str(const tern_mailet_params *p, const char *key)
{
    const tern_mailet_param *it = tern_param_get(p, key);
    return it ? it->value : NULL;
}

int tern_param_check(const tern_mailet_params *p, const char *const *known, char *err, size_t size)
{
    for (size_t i = 0; p && i < p->n; i++) {
        bool ok = false;
        for (size_t k = 0; known[k]; k++)
            if (strcmp(p->items[i].key, known[k]) == 0)
                ok = true;
        if (ok)
            continue;
        size_t at = (size_t)snprintf(err, size, "unknown parameter \"%s\" (known:", p->items[i].key);
        for (size_t k = 0; known[k] && at < size; k++)
            at += (size_t)snprintf(err + at, size - at, " %s", known[k]);
        if (known[0] == NULL && at < size)
            at += (size_t)snprintf(err + at, size - at, " none");
        if (at < size)
            snprintf(err + at, size - at, ")");
        return -1;
    }
    return 0;
}
