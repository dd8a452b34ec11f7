/* YAML text to a small generic node tree (scalar / sequence / mapping, each
 * with its line), so that the schema walk can see a whole mapping at once:
 * unknown keys, duplicates and "did you mean" need that. Input: untrusted
 * text; size, depth and node count are capped, anchors and aliases are
 * refused (they would let a small document expand into a huge one, and a
 * mail server config has no need for them). */
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "conf/conf_internal.h"

typedef struct tree_frame {
    cnode *node;
    cnode *last;     /* last item or key appended */
    bool want_value; /* mapping: the last key still waits for its value */
} tree_frame;

typedef struct tree_ctx {
    tern_arena *a;
    tree_frame stack[CONF_MAX_DEPTH + 1];
    int depth;
    size_t nodes;
    cnode *root;
    tern_config_errors *errs;
} tree_ctx;

static unsigned tree__line(const yaml_mark_t *m)
{
    return (unsigned)m->line + 1;
}

static cnode *tree__new(tree_ctx *t, cnode_kind kind, const yaml_mark_t *m)
{
    if (++t->nodes > CONF_MAX_NODES) {
        tern_config_errors_add(t->errs, "document: more than %d values (line %u)", CONF_MAX_NODES,
                               tree__line(m));
        return NULL;
    }
    cnode *n = tern_arena_alloc(t->a, sizeof(*n));
    if (n == NULL) {
        tern_config_errors_add(t->errs, "document: out of memory");
        return NULL;
    }
    n->kind = kind;
    n->line = tree__line(m);
    return n;
}

/* Hangs a finished (or just opened) node under the current frame. */
static int tree__attach(tree_ctx *t, cnode *n)
{
    if (t->depth == 0) {
        t->root = n;
        return 0;
    }
    tree_frame *f = &t->stack[t->depth - 1];
    if (f->node->kind == CNODE_SEQ) {
        if (f->last)
            f->last->next = n;
        else
            f->node->child = n;
        f->last = n;
        f->node->n++;
        return 0;
    }
    if (f->want_value) {
        /* A block collection starts on the line after its key; errors read
         * better naming the key's line. */
        if (n->kind != CNODE_SCALAR)
            n->line = f->last->line;
        f->last->value = n;
        f->want_value = false;
        return 0;
    }
    if (n->kind != CNODE_SCALAR) {
        tern_config_errors_add(t->errs,
                               "document: a mapping key must be a plain string, not a %s (line %u)",
                               n->kind == CNODE_MAP ? "mapping" : "sequence", n->line);
        return -1;
    }
    /* Duplicate detection compares every pair of keys; no schema mapping
     * is anywhere near this size. */
    if (f->node->n >= CONF_MAX_KEYS) {
        tern_config_errors_add(t->errs, "document: a mapping with more than %d keys (line %u)",
                               CONF_MAX_KEYS, n->line);
        return -1;
    }
    if (f->last)
        f->last->next = n;
    else
        f->node->child = n;
    f->last = n;
    f->want_value = true;
    f->node->n++;
    return 0;
}

static bool tree__is_null(const yaml_event_t *ev)
{
    if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *s = (const char *)ev->data.scalar.value;
    return ev->data.scalar.length == 0 || strcmp(s, "~") == 0 || strcasecmp(s, "null") == 0;
}

static int tree__event(tree_ctx *t, const yaml_event_t *ev, int *docs)
{
    const yaml_mark_t *m = &ev->start_mark;
    const yaml_char_t *anchor = NULL;
    switch (ev->type) {
    case YAML_DOCUMENT_START_EVENT:
        if (++*docs > 1) {
            tern_config_errors_add(t->errs,
                                   "document: only one YAML document is allowed (line %u)",
                                   tree__line(m));
            return -1;
        }
        return 0;
    case YAML_ALIAS_EVENT:
        tern_config_errors_add(t->errs,
                               "document: YAML aliases (*%.40s) are not supported; write the "
                               "value out (line %u)",
                               (const char *)ev->data.alias.anchor, tree__line(m));
        return -1;
    case YAML_SCALAR_EVENT:
        anchor = ev->data.scalar.anchor;
        break;
    case YAML_SEQUENCE_START_EVENT:
        anchor = ev->data.sequence_start.anchor;
        break;
    case YAML_MAPPING_START_EVENT:
        anchor = ev->data.mapping_start.anchor;
        break;
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        t->depth--;
        return 0;
    default:
        return 0;
    }
    if (anchor != NULL) {
        tern_config_errors_add(t->errs,
                               "document: YAML anchors (&%.40s) are not supported (line %u)",
                               (const char *)anchor, tree__line(m));
        return -1;
    }
    if (ev->type == YAML_SCALAR_EVENT) {
        cnode *n = tree__new(t, CNODE_SCALAR, m);
        if (n == NULL)
            return -1;
        const char *v = (const char *)ev->data.scalar.value;
        n->len = ev->data.scalar.length;
        if (memchr(v, '\0', n->len) != NULL) {
            tern_config_errors_add(t->errs, "document: a value contains a NUL byte (line %u)",
                                   n->line);
            return -1;
        }
        n->str = tern_arena_strndup(t->a, v, n->len);
        if (n->str == NULL) {
            tern_config_errors_add(t->errs, "document: out of memory");
            return -1;
        }
        n->is_null = tree__is_null(ev);
        return tree__attach(t, n);
    }
    if (t->depth >= CONF_MAX_DEPTH) {
        tern_config_errors_add(t->errs, "document: nested deeper than %d levels (line %u)",
                               CONF_MAX_DEPTH, tree__line(m));
        return -1;
    }
    cnode *n = tree__new(t, ev->type == YAML_MAPPING_START_EVENT ? CNODE_MAP : CNODE_SEQ, m);
    if (n == NULL || tree__attach(t, n) != 0)
        return -1;
    t->stack[t->depth++] = (tree_frame){.node = n};
    return 0;
}

int conf__parse_yaml(tern_arena *a, const char *text, size_t len, cnode **root_r,
                     tern_config_errors *errs)
{
    *root_r = NULL;
    if (len > CONF_MAX_BYTES) {
        tern_config_errors_add(errs, "document: larger than %u bytes", CONF_MAX_BYTES);
        return -1;
    }
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) {
        tern_config_errors_add(errs, "document: out of memory");
        return -1;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    tree_ctx t = {.a = a, .errs = errs};
    int docs = 0, rc = 0;
    for (;;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            const char *problem = p.problem ? p.problem : "malformed YAML";
            if (p.context)
                tern_config_errors_add(errs, "document: %s %s (line %zu, column %zu)", p.context,
                                       problem, p.problem_mark.line + 1,
                                       p.problem_mark.column + 1);
            else
                tern_config_errors_add(errs, "document: %s (line %zu, column %zu)", problem,
                                       p.problem_mark.line + 1, p.problem_mark.column + 1);
            rc = -1;
            break;
        }
        bool end = ev.type == YAML_STREAM_END_EVENT;
        rc = tree__event(&t, &ev, &docs);
        yaml_event_delete(&ev);
        if (rc != 0 || end)
            break;
    }
    yaml_parser_delete(&p);
    if (rc == 0)
        *root_r = t.root;
    return rc;
}

const cnode *conf__map_get(const cnode *map, const char *key)
{
    if (map == NULL || map->kind != CNODE_MAP)
        return NULL;
    for (const cnode *k = map->child; k; k = k->next)
        if (strcmp(k->str, key) == 0)
            return k->value;
    return NULL;
}
