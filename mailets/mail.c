/* The mail the engine carries: the message split into editable header
 * fields (each keeps its original bytes until changed, so an untouched
 * message is delivered byte for byte) and a body shared by the clones a
 * split makes (copied only when a mailet replaces it). Input: the spool's
 * stored message, whose bytes are the sender's and untrusted: the header
 * splitter never fails, it keeps what it does not understand as raw lines. */
#include "mailets/mail.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct tern_mail_body {
    atomic_int refs;
    uint8_t *data;
    size_t len;
};

static tern_mail_body *body_new(const uint8_t *data, size_t len)
{
    tern_mail_body *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->data = malloc(len ? len : 1);
    if (b->data == NULL) {
        free(b);
        return NULL;
    }
    if (len)
        memcpy(b->data, data, len);
    b->len = len;
    atomic_init(&b->refs, 1);
    return b;
}

static void body_unref(tern_mail_body *b)
{
    if (b && atomic_fetch_sub(&b->refs, 1) == 1) {
        free(b->data);
        free(b);
    }
}

static bool grow(void **v, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return true;
    size_t nc = *cap ? *cap * 2 : 8;
    void *nv = realloc(*v, nc * elem);
    if (nv == NULL)
        return false;
    memset((char *)nv + *cap * elem, 0, (nc - *cap) * elem);
    *v = nv;
    *cap = nc;
    return true;
}

/* ---- header fields ----------------------------------------------------- */

static char *unfold(const char *raw, size_t len)
{
    char *out = malloc(len + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (raw[i] == '\r' || raw[i] == '\n')
            continue;
        out[o++] = raw[i];
    }
    while (o > 0 && (out[o - 1] == ' ' || out[o - 1] == '\t'))
        o--;
    size_t s = 0;
    while (s < o && (out[s] == ' ' || out[s] == '\t'))
        s++;
    memmove(out, out + s, o - s);
    out[o - s] = '\0';
    return out;
}

static int field_push_raw(tern_mail *m, const char *raw, size_t len)
{
    if (m->n_fields >= TERN_MAIL_MAX_FIELDS * 4)
        return -1;
    if (!grow((void **)&m->fields, &m->cap_fields, m->n_fields, sizeof(tern_mail_field)))
        return -1;
    tern_mail_field *f = &m->fields[m->n_fields];
    f->raw = malloc(len + 1);
    if (f->raw == NULL)
        return -1;
    memcpy(f->raw, raw, len);
    f->raw[len] = '\0';
    f->raw_len = len;
    const char *colon = memchr(raw, ':', len);
    size_t nl = colon ? (size_t)(colon - raw) : 0;
    while (nl > 0 && (raw[nl - 1] == ' ' || raw[nl - 1] == '\t'))
        nl--;
    bool named = colon != NULL && nl > 0;
    for (size_t i = 0; named && i < nl; i++)
        if ((unsigned char)raw[i] <= ' ' || (unsigned char)raw[i] >= 127)
            named = false;
    if (named) {
        f->name = strndup(raw, nl);
        f->value = unfold(colon + 1, len - (size_t)(colon + 1 - raw));
    } else {
        /* Not a field (an mbox "From " line, garbage): kept as bytes only. */
        f->name = strdup("");
        f->value = strdup("");
    }
    if (f->name == NULL || f->value == NULL) {
        free(f->name);
        free(f->value);
        free(f->raw);
        return -1;
    }
    m->n_fields++;
    return 0;
}

/* Splits the header section; returns the body offset. */
static size_t split_header(tern_mail *m, const uint8_t *msg, size_t len)
{
    size_t i = 0;
    size_t start = SIZE_MAX;
    while (i < len) {
        const uint8_t *nlp = memchr(msg + i, '\n', len - i);
        size_t eol = nlp ? (size_t)(nlp - msg) + 1 : len;
        size_t content = eol - i;
        if (content > 0 && msg[eol - 1] == '\n')
            content--;
        if (content > 0 && msg[i + content - 1] == '\r')
            content--;
        if (content == 0) { /* the empty line */
            if (start != SIZE_MAX)
                field_push_raw(m, (const char *)msg + start, i - start);
            return eol;
        }
        bool cont = msg[i] == ' ' || msg[i] == '\t';
        if (!cont || start == SIZE_MAX) {
            if (start != SIZE_MAX)
                field_push_raw(m, (const char *)msg + start, i - start);
            start = i;
        }
        i = eol;
    }
    /* No empty line: the whole message is header. */
    if (start != SIZE_MAX)
        field_push_raw(m, (const char *)msg + start, len - start);
    return len;
}

tern_mail *tern_mail_from_message(const tern_envelope *env, const uint8_t *msg, size_t len)
{
    tern_mail *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    m->sender = strdup(env->mail_from ? env->mail_from : "");
    if (m->sender == NULL)
        goto fail;
    for (size_t i = 0; i < env->n_rcpts; i++) {
        if (env->rcpts[i].done || env->rcpts[i].queued)
            continue;
        if (tern_mail_rcpt_add_derived(m, env->rcpts[i].addr, (int)i) != 0)
            goto fail;
    }
    size_t boff = split_header(m, msg, len);
    m->body = body_new(msg + boff, len - boff);
    if (m->body == NULL)
        goto fail;
    /* RFC 8689: mailets (and matchers: HasMailAttribute) see REQUIRETLS. */
    if (env->requiretls && tern_mail_attr_set_bool(m, "tern.requiretls", true) != 0)
        goto fail;
    return m;
fail:
    tern_mail_free(m);
    return NULL;
}

tern_mail *tern_mail_clone_empty(const tern_mail *src)
{
    tern_mail *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    m->job = src->job;
    m->modified = src->modified;
    m->runner = src->runner;
    m->pipeline = src->pipeline;
    m->proc = src->proc;
    m->step = src->step;
    m->sender = strdup(src->sender);
    if (m->sender == NULL)
        goto fail;
    for (size_t i = 0; i < src->n_fields; i++) {
        if (!grow((void **)&m->fields, &m->cap_fields, m->n_fields, sizeof(tern_mail_field)))
            goto fail;
        const tern_mail_field *sf = &src->fields[i];
        tern_mail_field *f = &m->fields[m->n_fields];
        f->name = strdup(sf->name);
        f->value = strdup(sf->value);
        f->raw = NULL;
        f->raw_len = sf->raw_len;
        if (sf->raw && (f->raw = malloc(sf->raw_len + 1)) != NULL) {
            memcpy(f->raw, sf->raw, sf->raw_len);
            f->raw[sf->raw_len] = '\0';
        }
        if (f->name == NULL || f->value == NULL || (sf->raw && f->raw == NULL)) {
            free(f->name);
            free(f->value);
            free(f->raw);
            goto fail;
        }
        m->n_fields++;
    }
    for (size_t i = 0; i < src->n_attrs; i++) {
        if (!grow((void **)&m->attrs, &m->cap_attrs, m->n_attrs, sizeof(tern_mail_attr)))
            goto fail;
        const tern_mail_attr *sa = &src->attrs[i];
        tern_mail_attr *a = &m->attrs[m->n_attrs];
        *a = *sa;
        a->key = strdup(sa->key);
        a->s = sa->s ? strdup(sa->s) : NULL;
        if (a->key == NULL || (sa->s && a->s == NULL)) {
            free(a->key);
            free(a->s);
            goto fail;
        }
        m->n_attrs++;
    }
    atomic_fetch_add(&src->body->refs, 1);
    m->body = src->body;
    return m;
fail:
    tern_mail_free(m);
    return NULL;
}

static void rcpt_clear(tern_rcpt_entry *r)
{
    free(r->addr);
    free(r->account);
    free(r->detail);
    for (size_t i = 0; i < r->n_targets; i++)
        free(r->targets[i]);
    free(r->targets);
    memset(r, 0, sizeof(*r));
}

void tern_mail_free(tern_mail *m)
{
    if (m == NULL)
        return;
    free(m->sender);
    for (size_t i = 0; i < m->n_rcpts; i++)
        rcpt_clear(&m->rcpts[i]);
    free(m->rcpts);
    for (size_t i = 0; i < m->n_fields; i++) {
        free(m->fields[i].name);
        free(m->fields[i].value);
        free(m->fields[i].raw);
    }
    free(m->fields);
    for (size_t i = 0; i < m->n_attrs; i++) {
        free(m->attrs[i].key);
        free(m->attrs[i].s);
    }
    free(m->attrs);
    body_unref(m->body);
    free(m);
}

static size_t field_len(const tern_mail_field *f)
{
    if (f->raw)
        return f->raw_len;
    return strlen(f->name) + 2 + strlen(f->value) + 2;
}

uint8_t *tern_mail_serialize(const tern_mail *m, size_t *len_r)
{
    size_t total = 2 + m->body->len;
    for (size_t i = 0; i < m->n_fields; i++)
        total += field_len(&m->fields[i]);
    uint8_t *out = malloc(total ? total : 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < m->n_fields; i++) {
        const tern_mail_field *f = &m->fields[i];
        if (f->raw) {
            memcpy(out + o, f->raw, f->raw_len);
            o += f->raw_len;
        } else {
            size_t n = strlen(f->name);
            memcpy(out + o, f->name, n);
            o += n;
            memcpy(out + o, ": ", 2);
            o += 2;
            n = strlen(f->value);
            memcpy(out + o, f->value, n);
            o += n;
            memcpy(out + o, "\r\n", 2);
            o += 2;
        }
    }
    memcpy(out + o, "\r\n", 2);
    o += 2;
    if (m->body->len)
        memcpy(out + o, m->body->data, m->body->len);
    o += m->body->len;
    *len_r = o;
    return out;
}

/* ---- envelope ---------------------------------------------------------- */

const char *tern_mail_sender(const tern_mail *m)
{
    return m->sender;
}

int tern_mail_set_sender(tern_mail *m, const char *addr)
{
    if (addr == NULL || strlen(addr) > 512)
        return -1;
    char *s = strdup(addr);
    if (s == NULL)
        return -1;
    free(m->sender);
    m->sender = s;
    m->modified = true;
    return 0;
}

size_t tern_mail_rcpt_count(const tern_mail *m)
{
    return m->n_rcpts;
}

const char *tern_mail_rcpt(const tern_mail *m, size_t i)
{
    return i < m->n_rcpts ? m->rcpts[i].addr : NULL;
}

static bool addr_ok(const char *addr)
{
    if (addr == NULL || addr[0] == '\0' || strlen(addr) > 512)
        return false;
    for (const char *p = addr; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == '<' || *p == '>')
            return false;
    return true;
}

int tern_mail_rcpt_add_derived(tern_mail *m, const char *addr, int orig)
{
    if (!addr_ok(addr) || m->n_rcpts >= TERN_MAIL_MAX_RCPTS)
        return -1;
    if (!grow((void **)&m->rcpts, &m->cap_rcpts, m->n_rcpts, sizeof(tern_rcpt_entry)))
        return -1;
    tern_rcpt_entry *r = &m->rcpts[m->n_rcpts];
    memset(r, 0, sizeof(*r));
    r->addr = strdup(addr);
    if (r->addr == NULL)
        return -1;
    r->orig = orig;
    m->n_rcpts++;
    return 0;
}

int tern_mail_rcpt_add(tern_mail *m, const char *addr)
{
    return tern_mail_rcpt_add_derived(m, addr, -1);
}

int tern_mail_rcpt_remove(tern_mail *m, size_t i)
{
    if (i >= m->n_rcpts)
        return -1;
    rcpt_clear(&m->rcpts[i]);
    memmove(&m->rcpts[i], &m->rcpts[i + 1], (m->n_rcpts - i - 1) * sizeof(tern_rcpt_entry));
    m->n_rcpts--;
    memset(&m->rcpts[m->n_rcpts], 0, sizeof(tern_rcpt_entry));
    return 0;
}

int tern_mail_rcpt_replace(tern_mail *m, size_t i, const char *addr)
{
    if (i >= m->n_rcpts || !addr_ok(addr))
        return -1;
    char *a = strdup(addr);
    if (a == NULL)
        return -1;
    int orig = m->rcpts[i].orig;
    rcpt_clear(&m->rcpts[i]);
    m->rcpts[i].addr = a;
    m->rcpts[i].orig = orig;
    return 0;
}

/* ---- header ------------------------------------------------------------- */

size_t tern_mail_header_count(const tern_mail *m, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < m->n_fields; i++)
        if (m->fields[i].name[0] && (name == NULL || strcasecmp(m->fields[i].name, name) == 0))
            n++;
    return n;
}

const char *tern_mail_header_get(const tern_mail *m, const char *name, size_t idx)
{
    for (size_t i = 0; i < m->n_fields; i++)
        if (m->fields[i].name[0] && strcasecmp(m->fields[i].name, name) == 0 && idx-- == 0)
            return m->fields[i].value;
    return NULL;
}

const char *tern_mail_header_name_at(const tern_mail *m, size_t pos)
{
    for (size_t i = 0; i < m->n_fields; i++)
        if (m->fields[i].name[0] && pos-- == 0)
            return m->fields[i].name;
    return NULL;
}

const char *tern_mail_header_value_at(const tern_mail *m, size_t pos)
{
    for (size_t i = 0; i < m->n_fields; i++)
        if (m->fields[i].name[0] && pos-- == 0)
            return m->fields[i].value;
    return NULL;
}

bool tern_mail_header_name_ok(const char *name)
{
    if (name == NULL || name[0] == '\0' || strlen(name) > 128)
        return false;
    for (const char *p = name; *p; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 127 || *p == ':')
            return false;
    return true;
}

/* A value may not carry line breaks: a mailet must not be able to inject
 * header fields (or end the header) through a value. */
static bool value_ok(const char *v)
{
    if (v == NULL || strlen(v) > TERN_MAIL_MAX_VALUE)
        return false;
    for (const char *p = v; *p; p++)
        if (*p == '\r' || *p == '\n' || *p == '\0')
            return false;
    return true;
}

int tern_mail_header_add(tern_mail *m, const char *name, const char *value)
{
    if (!tern_mail_header_name_ok(name) || !value_ok(value) || tern_mail_header_count(m, NULL) >= TERN_MAIL_MAX_FIELDS)
        return -1;
    if (!grow((void **)&m->fields, &m->cap_fields, m->n_fields, sizeof(tern_mail_field)))
        return -1;
    tern_mail_field f = {strdup(name), strdup(value), NULL, 0};
    if (f.name == NULL || f.value == NULL) {
        free(f.name);
        free(f.value);
        return -1;
    }
    memmove(&m->fields[1], &m->fields[0], m->n_fields * sizeof(tern_mail_field));
    m->fields[0] = f;
    m->n_fields++;
    m->modified = true;
    return 0;
}

int tern_mail_header_set(tern_mail *m, const char *name, const char *value)
{
    if (!tern_mail_header_name_ok(name) || !value_ok(value))
        return -1;
    for (size_t i = 0; i < m->n_fields; i++) {
        if (strcasecmp(m->fields[i].name, name) != 0)
            continue;
        char *v = strdup(value);
        if (v == NULL)
            return -1;
        free(m->fields[i].value);
        free(m->fields[i].raw);
        m->fields[i].value = v;
        m->fields[i].raw = NULL;
        m->fields[i].raw_len = 0;
        m->modified = true;
        /* Later duplicates go: "set" means one field with this value. */
        for (size_t j = m->n_fields; j-- > i + 1;)
            if (strcasecmp(m->fields[j].name, name) == 0) {
                free(m->fields[j].name);
                free(m->fields[j].value);
                free(m->fields[j].raw);
                memmove(&m->fields[j], &m->fields[j + 1],
                        (m->n_fields - j - 1) * sizeof(tern_mail_field));
                m->n_fields--;
            }
        return 0;
    }
    return tern_mail_header_add(m, name, value);
}

int tern_mail_header_remove(tern_mail *m, const char *name)
{
    if (name == NULL)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < m->n_fields; i++) {
        if (m->fields[i].name[0] && strcasecmp(m->fields[i].name, name) == 0) {
            m->modified = true;
            free(m->fields[i].name);
            free(m->fields[i].value);
            free(m->fields[i].raw);
            continue;
        }
        m->fields[o++] = m->fields[i];
    }
    m->n_fields = o;
    return 0;
}

/* ---- message ----------------------------------------------------------- */

uint64_t tern_mail_size(const tern_mail *m)
{
    uint64_t n = 2 + m->body->len;
    for (size_t i = 0; i < m->n_fields; i++)
        n += field_len(&m->fields[i]);
    return n;
}

uint64_t tern_mail_body_size(const tern_mail *m)
{
    return m->body->len;
}

const uint8_t *tern_mail_body_data(const tern_mail *m)
{
    return m->body->data;
}

size_t tern_mail_body_read(const tern_mail *m, uint64_t offset, void *buf, size_t len)
{
    if (buf == NULL || offset >= m->body->len)
        return 0;
    size_t n = m->body->len - (size_t)offset;
    if (n > len)
        n = len;
    memcpy(buf, m->body->data + offset, n);
    return n;
}

int tern_mail_body_replace(tern_mail *m, const void *data, size_t len)
{
    if (data == NULL && len > 0)
        return -1;
    tern_mail_body *b = body_new(data, len);
    if (b == NULL)
        return -1;
    body_unref(m->body);
    m->body = b;
    m->modified = true;
    return 0;
}

/* ---- attributes -------------------------------------------------------- */

static tern_mail_attr *attr_find(const tern_mail *m, const char *key)
{
    for (size_t i = 0; key && i < m->n_attrs; i++)
        if (strcmp(m->attrs[i].key, key) == 0)
            return &m->attrs[i];
    return NULL;
}

static tern_mail_attr *attr_slot(tern_mail *m, const char *key)
{
    if (key == NULL || key[0] == '\0' || strlen(key) > 256)
        return NULL;
    tern_mail_attr *a = attr_find(m, key);
    if (a) {
        free(a->s);
        a->s = NULL;
        return a;
    }
    if (m->n_attrs >= TERN_MAIL_MAX_ATTRS ||
        !grow((void **)&m->attrs, &m->cap_attrs, m->n_attrs, sizeof(tern_mail_attr)))
        return NULL;
    a = &m->attrs[m->n_attrs];
    a->key = strdup(key);
    if (a->key == NULL)
        return NULL;
    m->n_attrs++;
    return a;
}

int tern_mail_attr_set_str(tern_mail *m, const char *key, const char *value)
{
    if (value == NULL || strlen(value) > TERN_MAIL_MAX_VALUE)
        return -1;
    char *v = strdup(value);
    if (v == NULL)
        return -1;
    tern_mail_attr *a = attr_slot(m, key);
    if (a == NULL) {
        free(v);
        return -1;
    }
    a->type = TERN_ATTR_STR;
    a->s = v;
    return 0;
}

int tern_mail_attr_set_int(tern_mail *m, const char *key, int64_t value)
{
    tern_mail_attr *a = attr_slot(m, key);
    if (a == NULL)
        return -1;
    a->type = TERN_ATTR_INT;
    a->i = value;
    return 0;
}

int tern_mail_attr_set_bool(tern_mail *m, const char *key, bool value)
{
    tern_mail_attr *a = attr_slot(m, key);
    if (a == NULL)
        return -1;
    a->type = TERN_ATTR_BOOL;
    a->i = value;
    return 0;
}

const char *tern_mail_attr_get_str(const tern_mail *m, const char *key)
{
    const tern_mail_attr *a = attr_find(m, key);
    return a && a->type == TERN_ATTR_STR ? a->s : NULL;
}

bool tern_mail_attr_get_int(const tern_mail *m, const char *key, int64_t *value_r)
{
    const tern_mail_attr *a = attr_find(m, key);
    if (a == NULL || a->type != TERN_ATTR_INT)
        return false;
    if (value_r)
        *value_r = a->i;
    return true;
}

bool tern_mail_attr_get_bool(const tern_mail *m, const char *key, bool *value_r)
{
    const tern_mail_attr *a = attr_find(m, key);
    if (a == NULL || a->type != TERN_ATTR_BOOL)
        return false;
    if (value_r)
        *value_r = a->i != 0;
    return true;
}

bool tern_mail_attr_has(const tern_mail *m, const char *key)
{
    return attr_find(m, key) != NULL;
}

int tern_mail_attr_remove(tern_mail *m, const char *key)
{
    tern_mail_attr *a = attr_find(m, key);
    if (a == NULL)
        return 0;
    free(a->key);
    free(a->s);
    size_t i = (size_t)(a - m->attrs);
    memmove(a, a + 1, (m->n_attrs - i - 1) * sizeof(*a));
    m->n_attrs--;
    return 0;
}

static bool engine_key(const char *key)
{
    return key == NULL || strncmp(key, "tern.", 5) == 0;
}

int tern_mail_attr_set_str_public(tern_mail *m, const char *key, const char *value)
{
    return engine_key(key) ? -1 : tern_mail_attr_set_str(m, key, value);
}

int tern_mail_attr_set_int_public(tern_mail *m, const char *key, int64_t value)
{
    return engine_key(key) ? -1 : tern_mail_attr_set_int(m, key, value);
}

int tern_mail_attr_set_bool_public(tern_mail *m, const char *key, bool value)
{
    return engine_key(key) ? -1 : tern_mail_attr_set_bool(m, key, value);
}

int tern_mail_attr_remove_public(tern_mail *m, const char *key)
{
    return engine_key(key) ? -1 : tern_mail_attr_remove(m, key);
}

/* ---- helpers ----------------------------------------------------------- */

const char *tern_addr_domain(const char *addr)
{
    const char *at = addr ? strrchr(addr, '@') : NULL;
    return at ? at + 1 : "";
}

bool tern_addr_equal(const char *a, const char *b)
{
    const char *da = strrchr(a, '@'), *db = strrchr(b, '@');
    if (da == NULL || db == NULL)
        return strcasecmp(a, b) == 0;
    size_t la = (size_t)(da - a), lb = (size_t)(db - b);
    return la == lb && strncmp(a, b, la) == 0 && strcasecmp(da, db) == 0;
}
