/* json.c: the bounded JSON parser of json.h. Input: untrusted bytes; every
 * read is checked against the span's end and every count against the
 * limits. Recursion depth is the document's nesting, capped by max_depth. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lib/json.h"

typedef struct parser {
    const char *p, *end, *start;
    tern_arena *arena;
    tern_json_limits lim;
    size_t nodes;
    int rc;
} parser;

static int fail(parser *ps, int rc)
{
    if (ps->rc == TERN_JSON_OK)
        ps->rc = rc;
    return rc;
}

static void skip_ws(parser *ps)
{
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static tern_json *new_node(parser *ps, tern_json_type t)
{
    if (++ps->nodes > ps->lim.max_nodes) {
        fail(ps, TERN_JSON_ELIMIT);
        return NULL;
    }
    tern_json *v = tern_arena_alloc(ps->arena, sizeof(*v));
    if (v == NULL) {
        fail(ps, TERN_JSON_ENOMEM);
        return NULL;
    }
    v->type = t;
    return v;
}

static int hex4(const char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* Length of one valid UTF-8 sequence at s (at most n bytes), or 0. Refuses
 * overlong forms, surrogates and code points past U+10FFFF. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned min, cp;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2, min = 0x80, cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3, min = 0x800, cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4, min = 0x10000, cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* At the opening quote. Two passes: the first finds the end and checks
 * everything, so the decoded copy is allocated once at its exact size
 * (never more than the raw length). */
static int parse_string(parser *ps, const char **out, size_t *len_r)
{
    const char *s = ++ps->p;
    const char *q = s;
    size_t dlen = 0;
    for (;;) {
        if (q >= ps->end)
            return fail(ps, TERN_JSON_ESYNTAX);
        unsigned char c = (unsigned char)*q;
        if (c == '"')
            break;
        if (c < 0x20) {
            ps->p = q;
            return fail(ps, TERN_JSON_ESYNTAX);
        }
        if (c == '\\') {
            if (ps->end - q < 2) {
                ps->p = q;
                return fail(ps, TERN_JSON_ESYNTAX);
            }
            char e = q[1];
            if (e == 'u') {
                unsigned cp = 0, lo = 0;
                if (ps->end - q < 6 || hex4(q + 2, &cp) != 0) {
                    ps->p = q;
                    return fail(ps, TERN_JSON_ESYNTAX);
                }
                q += 6;
                if (cp >= 0xdc00 && cp <= 0xdfff) {
                    ps->p = q - 6;
                    return fail(ps, TERN_JSON_ESYNTAX);
                }
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    if (ps->end - q < 6 || q[0] != '\\' || q[1] != 'u' || hex4(q + 2, &lo) != 0 ||
                        lo < 0xdc00 || lo > 0xdfff) {
                        ps->p = q - 6;
                        return fail(ps, TERN_JSON_ESYNTAX);
                    }
                    q += 6;
                    dlen += 4;
                } else {
                    dlen += cp < 0x80 ? 1 : cp < 0x800 ? 2 : 3;
                }
            } else if (strchr("\"\\/bfnrt", e) != NULL && e != '\0') {
                q += 2;
                dlen++;
            } else {
                ps->p = q;
                return fail(ps, TERN_JSON_ESYNTAX);
            }
        } else {
            size_t n = utf8_len((const unsigned char *)q, (size_t)(ps->end - q));
            if (n == 0) {
                ps->p = q;
                return fail(ps, TERN_JSON_ESYNTAX);
            }
            q += n;
            dlen += n;
        }
        if (dlen > ps->lim.max_string) {
            ps->p = q;
            return fail(ps, TERN_JSON_ELIMIT);
        }
    }
    char *o = tern_arena_alloc(ps->arena, dlen + 1);
    if (o == NULL)
        return fail(ps, TERN_JSON_ENOMEM);
    size_t w = 0;
    for (const char *r = s; r < q;) {
        if (*r != '\\') {
            o[w++] = *r++;
            continue;
        }
        char e = r[1];
        if (e == 'u') {
            unsigned cp = 0, lo = 0;
            hex4(r + 2, &cp);
            r += 6;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                hex4(r + 2, &lo);
                r += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            w += put_utf8(o + w, cp);
            continue;
        }
        static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
        o[w++] = to[strchr(from, e) - from];
        r += 2;
    }
    o[w] = '\0';
    ps->p = q + 1;
    *out = o;
    *len_r = w;
    return TERN_JSON_OK;
}

static int parse_number(parser *ps, tern_json *v)
{
    const char *s = ps->p, *q = s;
    if (q < ps->end && *q == '-')
        q++;
    if (q >= ps->end)
        return fail(ps, TERN_JSON_ESYNTAX);
    if (*q == '0') {
        q++;
    } else if (*q >= '1' && *q <= '9') {
        while (q < ps->end && *q >= '0' && *q <= '9')
            q++;
    } else {
        ps->p = q;
        return fail(ps, TERN_JSON_ESYNTAX);
    }
    if (q < ps->end && *q == '.') {
        q++;
        if (q >= ps->end || *q < '0' || *q > '9') {
            ps->p = q;
            return fail(ps, TERN_JSON_ESYNTAX);
        }
        while (q < ps->end && *q >= '0' && *q <= '9')
            q++;
    }
    if (q < ps->end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < ps->end && (*q == '+' || *q == '-'))
            q++;
        if (q >= ps->end || *q < '0' || *q > '9') {
            ps->p = q;
            return fail(ps, TERN_JSON_ESYNTAX);
        }
        while (q < ps->end && *q >= '0' && *q <= '9')
            q++;
    }
    size_t n = (size_t)(q - s);
    if (n > ps->lim.max_string)
        return fail(ps, TERN_JSON_ELIMIT);
    char *t = tern_arena_strndup(ps->arena, s, n);
    if (t == NULL)
        return fail(ps, TERN_JSON_ENOMEM);
    /* strtod needs a terminated copy, and the grammar above already
     * matches what strtod reads in the C locale, so it consumes all of it. */
    v->number = strtod(t, NULL);
    v->text = t;
    v->len = n;
    ps->p = q;
    return TERN_JSON_OK;
}

static int parse_value(parser *ps, tern_json **out, unsigned depth);

static int parse_container(parser *ps, tern_json *v, unsigned depth)
{
    bool obj = v->type == TERN_JSON_OBJECT;
    char close = obj ? '}' : ']';
    if (depth >= ps->lim.max_depth)
        return fail(ps, TERN_JSON_ELIMIT);
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        return TERN_JSON_OK;
    }
    tern_json **tail = &v->child;
    for (;;) {
        const char *key = NULL;
        size_t key_len = 0;
        skip_ws(ps);
        if (obj) {
            if (ps->p >= ps->end || *ps->p != '"')
                return fail(ps, TERN_JSON_ESYNTAX);
            const char *kpos = ps->p;
            if (parse_string(ps, &key, &key_len) != 0)
                return ps->rc;
            for (const tern_json *m = v->child; m; m = m->next)
                if (m->key_len == key_len && memcmp(m->key, key, key_len) == 0) {
                    ps->p = kpos;
                    return fail(ps, TERN_JSON_EDUPKEY);
                }
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':')
                return fail(ps, TERN_JSON_ESYNTAX);
            ps->p++;
        }
        tern_json *c;
        if (parse_value(ps, &c, depth + 1) != 0)
            return ps->rc;
        c->key = key;
        c->key_len = key_len;
        *tail = c;
        tail = &c->next;
        v->len++;
        skip_ws(ps);
        if (ps->p >= ps->end)
            return fail(ps, TERN_JSON_ESYNTAX);
        if (*ps->p == ',') {
            ps->p++;
            continue;
        }
        if (*ps->p == close) {
            ps->p++;
            return TERN_JSON_OK;
        }
        return fail(ps, TERN_JSON_ESYNTAX);
    }
}

static int literal(parser *ps, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
        return fail(ps, TERN_JSON_ESYNTAX);
    ps->p += n;
    return TERN_JSON_OK;
}

static int parse_value(parser *ps, tern_json **out, unsigned depth)
{
    skip_ws(ps);
    if (ps->p >= ps->end)
        return fail(ps, TERN_JSON_ESYNTAX);
    tern_json *v;
    switch (*ps->p) {
    case '{':
    case '[':
        v = new_node(ps, *ps->p == '{' ? TERN_JSON_OBJECT : TERN_JSON_ARRAY);
        if (v == NULL || parse_container(ps, v, depth) != 0)
            return ps->rc;
        break;
    case '"':
        v = new_node(ps, TERN_JSON_STRING);
        if (v == NULL || parse_string(ps, &v->text, &v->len) != 0)
            return ps->rc;
        break;
    case 't':
    case 'f':
        v = new_node(ps, TERN_JSON_BOOL);
        if (v == NULL)
            return ps->rc;
        v->boolean = *ps->p == 't';
        if (literal(ps, v->boolean ? "true" : "false") != 0)
            return ps->rc;
        break;
    case 'n':
        v = new_node(ps, TERN_JSON_NULL);
        if (v == NULL || literal(ps, "null") != 0)
            return ps->rc;
        break;
    default:
        if (*ps->p != '-' && (*ps->p < '0' || *ps->p > '9'))
            return fail(ps, TERN_JSON_ESYNTAX);
        v = new_node(ps, TERN_JSON_NUMBER);
        if (v == NULL || parse_number(ps, v) != 0)
            return ps->rc;
        break;
    }
    *out = v;
    return TERN_JSON_OK;
}

int tern_json_parse(const char *in, size_t len, const tern_json_limits *lim, tern_arena *arena,
                    tern_json **root_r, size_t *offset_r)
{
    parser ps = {.p = in, .end = in + len, .start = in, .arena = arena};
    if (lim != NULL)
        ps.lim = *lim;
    if (ps.lim.max_input == 0)
        ps.lim.max_input = 1u << 20;
    if (ps.lim.max_depth == 0)
        ps.lim.max_depth = 32;
    if (ps.lim.max_nodes == 0)
        ps.lim.max_nodes = 65536;
    if (ps.lim.max_string == 0)
        ps.lim.max_string = 65536;
    *root_r = NULL;
    tern_json *root = NULL;
    if (len > ps.lim.max_input) {
        fail(&ps, TERN_JSON_ELIMIT);
    } else if (in == NULL && len > 0) {
        fail(&ps, TERN_JSON_ESYNTAX);
    } else if (parse_value(&ps, &root, 0) == 0) {
        skip_ws(&ps);
        if (ps.p != ps.end)
            fail(&ps, TERN_JSON_ESYNTAX);
    }
    if (offset_r != NULL)
        *offset_r = (size_t)(ps.p - ps.start);
    if (ps.rc == TERN_JSON_OK)
        *root_r = root;
    return ps.rc;
}

const char *tern_json_strerror(int rc)
{
    switch (rc) {
    case TERN_JSON_OK: return "ok";
    case TERN_JSON_ESYNTAX: return "invalid JSON";
    case TERN_JSON_ELIMIT: return "JSON over a size or depth limit";
    case TERN_JSON_ENOMEM: return "out of memory";
    case TERN_JSON_EDUPKEY: return "duplicate key in a JSON object";
    default: return "unknown error";
    }
}

const tern_json *tern_json_get(const tern_json *v, const char *key)
{
    if (v == NULL || v->type != TERN_JSON_OBJECT)
        return NULL;
    size_t n = strlen(key);
    for (const tern_json *m = v->child; m; m = m->next)
        if (m->key_len == n && memcmp(m->key, key, n) == 0)
            return m;
    return NULL;
}

const char *tern_json_str(const tern_json *v)
{
    if (v == NULL || v->type != TERN_JSON_STRING || strlen(v->text) != v->len)
        return NULL;
    return v->text;
}

int tern_json_int64(const tern_json *v, int64_t *out)
{
    if (v == NULL || v->type != TERN_JSON_NUMBER)
        return -1;
    const char *s = v->text;
    bool neg = *s == '-';
    if (neg)
        s++;
    uint64_t acc = 0;
    uint64_t cap = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        unsigned d = (unsigned)(*s - '0');
        if (acc > (cap - d) / 10)
            return -1;
        acc = acc * 10 + d;
    }
    *out = neg ? (int64_t)(0 - acc) : (int64_t)acc;
    return 0;
}
