/* The mailet part of the config: `processors:` (named lists of
 * {match, mailet, params...} steps), `plugins:` and the shipped default
 * chain used when `processors:` is absent. This file checks the shape
 * (types, names, references between processors); whether a matcher or
 * mailet exists and accepts its parameters is the mailet engine's to say
 * (tern_pipeline_build), since conf/ knows no mailet. Input: the untrusted
 * config tree. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "conf/conf_internal.h"

/* The shipped chain, in the same YAML a user writes (docs/mailets.md
 * explains each processor). Parsed like user input, so it cannot drift
 * from what the schema accepts. */
static const char default_processors[] =
    "root:\n"
    "  - match: All\n"
    "    mailet: ToProcessor\n"
    "    processor: transport\n"
    "transport:\n"
    "  - match: All\n"
    "    mailet: PostmasterAlias\n"
    "  - match: RecipientIsLocal\n"
    "    mailet: RecipientRewrite\n"
    "  - match: RecipientIsLocal\n"
    "    mailet: ToProcessor\n"
    "    processor: local-delivery\n"
    "  - match: HostIsLocal\n"
    "    mailet: ToProcessor\n"
    "    processor: bounces\n"
    "    notice: \"5.1.1 no such mailbox here\"\n"
    "  - match: All\n"
    "    mailet: ToProcessor\n"
    "    processor: relay\n"
    "local-delivery:\n"
    "  - match: All\n"
    "    mailet: LocalDelivery\n"
    "relay:\n"
    "  - match: All\n"
    "    mailet: RemoteDelivery\n"
    "spam:\n"
    "  - match: All\n"
    "    mailet: LocalDelivery\n"
    "    folder: Junk\n"
    "error:\n"
    "  - match: All\n"
    "    mailet: ToRepository\n"
    "    repository: error\n"
    "    on_error: retry\n"
    "bounces:\n"
    "  - match: All\n"
    "    mailet: DSNBounce\n"
    "    on_error: retry\n";

#define MAX_PROCESSORS 256
#define MAX_STEPS 512
#define MAX_PLUGINS 64
#define MAX_MATCH_DEPTH 8

static bool ident_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (const char *p = s; *p; p++)
        if (!(*p >= 'a' && *p <= 'z') && !(*p >= 'A' && *p <= 'Z') && !(*p >= '0' && *p <= '9') &&
            *p != '-' && *p != '_' && *p != '.')
            return false;
    return true;
}

static void param_parse(conf_walk *w, const cnode *k, tern_param_conf *pc, const char *path)
{
    const cnode *v = k->value;
    pc->key = conf__strdup(w, k->str);
    pc->line = k->line;
    if (v->kind == CNODE_SCALAR) {
        pc->value = conf__strdup(w, v->is_null ? "" : v->str);
        return;
    }
    if (v->kind == CNODE_SEQ) {
        pc->list = conf__alloc(w, (v->n ? v->n : 1) * sizeof(char *));
        if (pc->list == NULL)
            return;
        for (const cnode *it = v->child; it; it = it->next) {
            if (it->kind != CNODE_SCALAR) {
                conf__err(w, it->line, path, "%s: list items must be scalars", k->str);
                continue;
            }
            pc->list[pc->n_list++] = conf__strdup(w, it->str);
        }
        return;
    }
    conf__err(w, v->line, path, "%s: must be a scalar or a list of scalars", k->str);
}

static void match_parse(conf_walk *w, const cnode *n, tern_match_conf *mc, const char *path,
                        int depth)
{
    mc->line = n->line;
    if (depth > MAX_MATCH_DEPTH) {
        conf__err(w, n->line, path, "match nests deeper than %d", MAX_MATCH_DEPTH);
        return;
    }
    if (n->kind == CNODE_SCALAR) {
        if (n->is_null || n->len == 0) {
            conf__err(w, n->line, path, "match must name a matcher");
            return;
        }
        const char *eq = strchr(n->str, '=');
        size_t nl = eq ? (size_t)(eq - n->str) : n->len;
        while (nl > 0 && n->str[nl - 1] == ' ')
            nl--;
        char name[80];
        if (nl == 0 || nl >= sizeof(name)) {
            conf__err(w, n->line, path, "match \"%s\": bad matcher name", n->str);
            return;
        }
        memcpy(name, n->str, nl);
        name[nl] = '\0';
        if (!ident_ok(name)) {
            conf__err(w, n->line, path, "match \"%s\": bad matcher name", n->str);
            return;
        }
        mc->op = TERN_MATCH_NAME;
        mc->name = conf__strdup(w, name);
        if (eq) {
            const char *c = eq + 1;
            while (*c == ' ')
                c++;
            mc->condition = conf__strdup(w, c);
        }
        return;
    }
    if (n->kind != CNODE_MAP || n->n != 1) {
        conf__err(w, n->line, path,
                  "match must be a matcher name, or one of {and: [...]}, {or: [...]}, {not: M}");
        return;
    }
    const cnode *k = n->child;
    const cnode *v = k->value;
    char sub[256];
    snprintf(sub, sizeof(sub), "%s.%s", path, k->str);
    if (strcmp(k->str, "not") == 0) {
        mc->op = TERN_MATCH_NOT;
        mc->children = conf__alloc(w, sizeof(*mc->children));
        if (mc->children == NULL)
            return;
        mc->n_children = 1;
        match_parse(w, v, &mc->children[0], sub, depth + 1);
        return;
    }
    if (strcmp(k->str, "and") != 0 && strcmp(k->str, "or") != 0) {
        conf__err(w, k->line, path, "match: unknown composition \"%s\" (and, or, not)", k->str);
        return;
    }
    mc->op = strcmp(k->str, "and") == 0 ? TERN_MATCH_AND : TERN_MATCH_OR;
    if (v->kind != CNODE_SEQ || v->n == 0) {
        conf__err(w, v->line, sub, "must be a non-empty list of matchers");
        return;
    }
    mc->children = conf__alloc(w, v->n * sizeof(*mc->children));
    if (mc->children == NULL)
        return;
    size_t i = 0;
    for (const cnode *it = v->child; it; it = it->next, i++) {
        char isub[280];
        snprintf(isub, sizeof(isub), "%s[%zu]", sub, i);
        match_parse(w, it, &mc->children[i], isub, depth + 1);
    }
    mc->n_children = i;
}

static void step_parse(conf_walk *w, const cnode *n, tern_step_conf *st, const char *path)
{
    st->line = n->line;
    if (n->kind != CNODE_MAP) {
        conf__err(w, n->line, path, "a step must be a mapping {match, mailet, ...}");
        return;
    }
    const cnode *m = conf__map_get(n, "match");
    const cnode *ml = conf__map_get(n, "mailet");
    /* `mailet: Null` is the Null mailet, not YAML's null: the text decides. */
    if (ml == NULL || ml->kind != CNODE_SCALAR || ml->str == NULL || !ident_ok(ml->str))
        conf__err(w, ml ? ml->line : n->line, path, "mailet: a mailet name is required");
    else
        st->mailet = conf__strdup(w, ml->str);
    char sub[256];
    snprintf(sub, sizeof(sub), "%s.match", path);
    if (m == NULL) {
        /* No matcher means every recipient, as in James. */
        st->match.op = TERN_MATCH_NAME;
        st->match.name = conf__strdup(w, "All");
        st->match.line = n->line;
    } else
        match_parse(w, m, &st->match, sub, 0);
    const cnode *oe = conf__map_get(n, "on_error");
    if (oe) {
        if (oe->kind != CNODE_SCALAR || oe->is_null || !ident_ok(oe->str))
            conf__err(w, oe->line, path, "on_error: \"ignore\", \"retry\" or a processor name");
        else
            st->on_error = conf__strdup(w, oe->str);
    }
    size_t np = 0;
    for (const cnode *k = n->child; k; k = k->next)
        if (strcmp(k->str, "match") != 0 && strcmp(k->str, "mailet") != 0 &&
            strcmp(k->str, "on_error") != 0)
            np++;
    if (np == 0)
        return;
    st->params = conf__alloc(w, np * sizeof(*st->params));
    if (st->params == NULL)
        return;
    for (const cnode *k = n->child; k; k = k->next)
        if (strcmp(k->str, "match") != 0 && strcmp(k->str, "mailet") != 0 &&
            strcmp(k->str, "on_error") != 0)
            param_parse(w, k, &st->params[st->n_params++], path);
}

static void processors_from(conf_walk *w, const cnode *n, tern_config *cfg, const char *path)
{
    if (n->kind != CNODE_MAP) {
        conf__err(w, n->line, path, "must be a mapping of processor names to lists of steps");
        return;
    }
    if (n->n > MAX_PROCESSORS) {
        conf__err(w, n->line, path, "more than %d processors", MAX_PROCESSORS);
        return;
    }
    cfg->processors = conf__alloc(w, (n->n ? n->n : 1) * sizeof(*cfg->processors));
    if (cfg->processors == NULL)
        return;
    for (const cnode *k = n->child; k; k = k->next) {
        char sub[200];
        snprintf(sub, sizeof(sub), "%s.%s", path, k->str);
        if (!ident_ok(k->str)) {
            conf__err(w, k->line, path, "processor name \"%s\" may hold only letters, digits, "
                      "'-', '_' and '.'", k->str);
            continue;
        }
        tern_processor_conf *pc = &cfg->processors[cfg->n_processors++];
        pc->name = conf__strdup(w, k->str);
        pc->line = k->line;
        const cnode *v = k->value;
        if (v->kind != CNODE_SEQ || v->n == 0) {
            conf__err(w, v->line, sub, "must be a non-empty list of steps");
            continue;
        }
        if (v->n > MAX_STEPS) {
            conf__err(w, v->line, sub, "more than %d steps", MAX_STEPS);
            continue;
        }
        pc->steps = conf__alloc(w, v->n * sizeof(*pc->steps));
        if (pc->steps == NULL)
            return;
        size_t i = 0;
        for (const cnode *it = v->child; it; it = it->next, i++) {
            char isub[220];
            snprintf(isub, sizeof(isub), "%s[%zu]", sub, i);
            step_parse(w, it, &pc->steps[i], isub);
        }
        pc->n_steps = i;
    }
}

void conf__processors(conf_walk *w, const cnode *n, void *dst, const char *path)
{
    tern_config *cfg = dst;
    if (n != NULL && !n->is_null) {
        processors_from(w, n, cfg, path);
        return;
    }
    cnode *root = NULL;
    tern_config_errors errs;
    tern_config_errors_init(&errs);
    if (conf__parse_yaml(&cfg->arena, default_processors, sizeof(default_processors) - 1, &root,
                         &errs) != 0 || root == NULL) {
        conf__err(w, 0, path, "internal: the shipped processors do not parse");
        tern_config_errors_free(&errs);
        return;
    }
    tern_config_errors_free(&errs);
    cfg->mailets.default_processors = true;
    processors_from(w, root, cfg, "processors(shipped)");
}

void conf__plugins(conf_walk *w, const cnode *n, void *dst, const char *path)
{
    tern_config *cfg = dst;
    if (n == NULL || n->is_null)
        return;
    if (n->kind != CNODE_SEQ) {
        conf__err(w, n->line, path, "must be a list of {name, path, params}");
        return;
    }
    if (n->n > MAX_PLUGINS) {
        conf__err(w, n->line, path, "more than %d plugins", MAX_PLUGINS);
        return;
    }
    cfg->plugins = conf__alloc(w, (n->n ? n->n : 1) * sizeof(*cfg->plugins));
    if (cfg->plugins == NULL)
        return;
    size_t i = 0;
    for (const cnode *it = n->child; it; it = it->next, i++) {
        char sub[64];
        snprintf(sub, sizeof(sub), "%s[%zu]", path, i);
        tern_plugin_conf *pl = &cfg->plugins[cfg->n_plugins++];
        pl->line = it->line;
        if (it->kind != CNODE_MAP) {
            conf__err(w, it->line, sub, "must be a mapping {name, path, params}");
            continue;
        }
        for (const cnode *k = it->child; k; k = k->next) {
            const cnode *v = k->value;
            if (strcmp(k->str, "name") == 0 && v->kind == CNODE_SCALAR && ident_ok(v->str))
                pl->name = conf__strdup(w, v->str);
            else if (strcmp(k->str, "path") == 0 && v->kind == CNODE_SCALAR && !v->is_null) {
                if (v->str[0] == '/' || w->basedir == NULL)
                    pl->path = conf__strdup(w, v->str);
                else {
                    size_t len = strlen(w->basedir) + strlen(v->str) + 2;
                    pl->path = conf__alloc(w, len);
                    if (pl->path)
                        snprintf(pl->path, len, "%s/%s", w->basedir, v->str);
                }
            } else if (strcmp(k->str, "params") == 0 && v->kind == CNODE_MAP) {
                pl->params = conf__alloc(w, (v->n ? v->n : 1) * sizeof(*pl->params));
                if (pl->params == NULL)
                    return;
                for (const cnode *pk = v->child; pk; pk = pk->next)
                    param_parse(w, pk, &pl->params[pl->n_params++], sub);
            } else if (strcmp(k->str, "name") == 0 || strcmp(k->str, "path") == 0 ||
                       strcmp(k->str, "params") == 0)
                conf__err(w, k->line, sub, "%s: bad value (name: an identifier, path: a file, "
                          "params: a mapping)", k->str);
            else
                conf__err(w, k->line, sub, "unknown key \"%s\" (name, path, params)", k->str);
        }
        if (pl->name == NULL || pl->path == NULL)
            conf__err(w, it->line, sub, "name and path are required");
    }
    for (size_t a = 0; a < cfg->n_plugins; a++)
        for (size_t b = a + 1; b < cfg->n_plugins; b++)
            if (cfg->plugins[a].name && cfg->plugins[b].name &&
                strcmp(cfg->plugins[a].name, cfg->plugins[b].name) == 0)
                conf__err(w, cfg->plugins[b].line, path, "plugin \"%s\" is listed twice",
                          cfg->plugins[b].name);
}

static void check_target(conf_walk *w, const tern_config *cfg, const char *target, unsigned line,
                         const char *path, const char *what)
{
    if (target && tern_config_processor(cfg, target) == NULL)
        conf__err(w, line, path, "%s \"%s\" is not a processor", what, target);
}

/* Cross-references: every processor a step or a listener names exists,
 * `root`/`error`/`bounces` exist (the engine sends mail there on its own),
 * and names are unique. */
void conf__validate_processors(conf_walk *w)
{
    tern_config *cfg = w->cfg;
    for (size_t a = 0; a < cfg->n_processors; a++)
        for (size_t b = a + 1; b < cfg->n_processors; b++)
            if (strcmp(cfg->processors[a].name, cfg->processors[b].name) == 0)
                conf__err(w, cfg->processors[b].line, "processors", "processor \"%s\" twice",
                          cfg->processors[b].name);
    static const char *const needed[] = {"root", "error", "bounces"};
    for (size_t i = 0; i < sizeof(needed) / sizeof(needed[0]); i++)
        if (tern_config_processor(cfg, needed[i]) == NULL)
            conf__err(w, 0, "processors", "a processor named \"%s\" is required (the engine "
                      "sends mail there)", needed[i]);
    for (size_t p = 0; p < cfg->n_processors; p++) {
        const tern_processor_conf *pc = &cfg->processors[p];
        for (size_t s = 0; s < pc->n_steps; s++) {
            const tern_step_conf *st = &pc->steps[s];
            char path[200];
            snprintf(path, sizeof(path), "processors.%s[%zu]", pc->name, s);
            if (st->on_error && strcmp(st->on_error, "ignore") != 0 &&
                strcmp(st->on_error, "retry") != 0)
                check_target(w, cfg, st->on_error, st->line, path, "on_error");
            for (size_t k = 0; k < st->n_params; k++)
                if (strcmp(st->params[k].key, "processor") == 0)
                    check_target(w, cfg, st->params[k].value, st->params[k].line, path,
                                 "processor");
        }
    }
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        char path[64];
        snprintf(path, sizeof(path), "listeners[%zu].pipeline", i);
        check_target(w, cfg, cfg->listeners[i].pipeline, conf__line(w, &cfg->listeners[i].pipeline),
                     path, "pipeline");
    }
}

const tern_processor_conf *tern_config_processor(const tern_config *c, const char *name)
{
    for (size_t i = 0; c && name && i < c->n_processors; i++)
        if (strcmp(c->processors[i].name, name) == 0)
            return &c->processors[i];
    return NULL;
}
