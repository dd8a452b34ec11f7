/* Private to conf/: the generic YAML node tree, the load context shared by
 * the schema walk, the cross-rule validation and the TLS file checks. Input
 * is the untrusted config text; nothing here is used outside conf/. */
#ifndef TERN_CONF_INTERNAL_H
#define TERN_CONF_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf/config.h"

/* Caps that keep a hostile or fuzzed document from costing more than a
 * few megabytes and milliseconds. */
#define CONF_MAX_BYTES (1024u * 1024u)
#define CONF_MAX_DEPTH 32
#define CONF_MAX_NODES 100000
#define CONF_MAX_ERRORS 200
#define CONF_MAX_LIST 4096     /* any list of strings or networks */
#define CONF_MAX_KEYS 4096     /* keys in one mapping */
#define CONF_MAX_LISTENERS 256
#define CONF_MAX_SEND_AS 100000
#define CONF_MAX_CERTS 256

typedef enum { CNODE_SCALAR, CNODE_SEQ, CNODE_MAP } cnode_kind;

/* A sequence's items are chained through `next` from `child`. A mapping's
 * keys (always scalars) are chained the same way, each with its `value`. */
typedef struct cnode cnode;
struct cnode {
    cnode_kind kind;
    unsigned line;   /* 1-based */
    bool is_null;    /* plain "", "~" or "null": "not set" */
    const char *str; /* scalar text, NUL-terminated, no embedded NUL */
    size_t len;
    cnode *child;
    cnode *next;
    cnode *value;
    size_t n;        /* items or keys */
};

/* Parses one YAML document into a tree allocated in `a`. Anchors, aliases,
 * non-scalar keys, more than one document and the caps above are refused.
 * Returns 0, or -1 with one error in errs. An empty document gives NULL. */
int conf__parse_yaml(tern_arena *a, const char *text, size_t len, cnode **root_r,
                     tern_config_errors *errs);
const cnode *conf__map_get(const cnode *map, const char *key);

/* Where each value came from, so that cross-rule errors can name a line. */
typedef struct conf_line_slot {
    const void *addr;
    unsigned line;
} conf_line_slot;

typedef struct conf_walk {
    tern_config *cfg;
    tern_config_errors *errs;
    const char *basedir; /* relative file names resolve against it; NULL: cwd */
    conf_line_slot *lines;
    size_t lines_cap, lines_n;
    bool oom;
} conf_walk;

void conf__err(conf_walk *w, unsigned line, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void conf__line_set(conf_walk *w, const void *addr, unsigned line);
unsigned conf__line(const conf_walk *w, const void *addr);
void *conf__alloc(conf_walk *w, size_t size);
char *conf__strdup(conf_walk *w, const char *s);

/* schema.c: fills cfg from the tree (root may be NULL), applying defaults,
 * types and bounds; reports unknown and duplicate keys. */
void conf__apply_schema(conf_walk *w, const cnode *root);
/* Name checks shared with validate.c; each returns NULL or why not. */
const char *conf__check_hostname(const char *s);
const char *conf__check_wildcard_name(const char *s);
void conf__format_size(uint64_t v, char *buf, size_t size);

/* processors.c: `processors:` (or the shipped chain when absent), `plugins:`,
 * and their cross-references (called from conf__validate). */
void conf__processors(conf_walk *w, const cnode *n, void *dst, const char *path);
void conf__plugins(conf_walk *w, const cnode *n, void *dst, const char *path);
void conf__validate_processors(conf_walk *w);

/* validate.c: the rules that span keys; runs after the schema walk. */
void conf__validate(conf_walk *w);

/* tls_check.c */
void conf__parse_min_version(conf_walk *w, const cnode *n, void *dst, const char *path);
void conf__check_certificates(conf_walk *w);
void conf__check_client_ca(conf_walk *w, const char *path, const char *file, unsigned line);
void conf__resolve_cipher_suites(conf_walk *w);
/* "no such file", "not readable (...)", "is a directory", or NULL. */
const char *conf__check_readable(const char *file, char *buf, size_t size);

#endif
