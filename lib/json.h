/* JSON (RFC 8259) parsed into a small read-only tree, for the few JSON
 * documents Tern reads: JWKS files, JWT headers and claims, later JMAP and
 * admin API bodies. Input: untrusted bytes, any span (no NUL needed).
 *
 * The parser is pure and bounded: the whole document is given at once
 * (callers read a file or a decoded token first), and depth, node count,
 * string length and input size are capped, so a hostile document costs at
 * most what the limits allow. It is strict: no comments, no trailing
 * commas, no leading zeros, UTF-8 must be valid, lone surrogates and
 * duplicate object keys are refused (a JWT with two "iss" members must not
 * mean one thing here and another elsewhere).
 *
 * Every node and string lives in the caller's arena; strings are decoded
 * and NUL-terminated, with their length (they may hold U+0000). */
#ifndef TERN_JSON_H
#define TERN_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/arena.h"

typedef enum {
    TERN_JSON_NULL,
    TERN_JSON_BOOL,
    TERN_JSON_NUMBER,
    TERN_JSON_STRING,
    TERN_JSON_ARRAY,
    TERN_JSON_OBJECT,
} tern_json_type;

typedef struct tern_json tern_json;
struct tern_json {
    tern_json_type type;
    bool boolean;         /* BOOL */
    double number;        /* NUMBER: nearest double (inf if out of range) */
    const char *text;     /* STRING: decoded; NUMBER: the literal as written */
    size_t len;           /* STRING/NUMBER: bytes of text; ARRAY/OBJECT: children */
    tern_json *child;     /* ARRAY/OBJECT: first element or member */
    tern_json *next;      /* next sibling */
    const char *key;      /* member of an OBJECT: its decoded name */
    size_t key_len;
};

typedef struct tern_json_limits {
    size_t max_input;  /* bytes; 0: 1 MiB */
    unsigned max_depth;/* nested arrays/objects; 0: 32 */
    size_t max_nodes;  /* values in the document; 0: 65536 */
    size_t max_string; /* decoded bytes of one string or key; 0: 65536 */
} tern_json_limits;

#define TERN_JSON_OK 0
#define TERN_JSON_ESYNTAX (-1)  /* not JSON, or trailing bytes after the value */
#define TERN_JSON_ELIMIT (-2)   /* over one of the limits */
#define TERN_JSON_ENOMEM (-3)
#define TERN_JSON_EDUPKEY (-4)  /* an object names one key twice */

/* Parses in[0..len) into *root_r (nodes in arena). lim may be NULL for
 * the defaults. On error, *offset_r (may be NULL) is the byte offset where
 * parsing stopped. */
int tern_json_parse(const char *in, size_t len, const tern_json_limits *lim, tern_arena *arena,
                    tern_json **root_r, size_t *offset_r);
const char *tern_json_strerror(int rc);

/* The member named key of an object, or NULL (also when v is not an
 * object or is NULL). */
const tern_json *tern_json_get(const tern_json *v, const char *key);
/* The string value of v if it is a string holding no NUL, else NULL. */
const char *tern_json_str(const tern_json *v);
/* An integral number that fits int64_t exactly (no fraction, no
 * exponent): 0 and *out, or -1. */
int tern_json_int64(const tern_json *v, int64_t *out);

#endif
