/* SEARCH criteria to one SQL WHERE clause for either backend, and the same
 * criteria evaluated in C for the rows SQL cannot decide alone (BODY/TEXT
 * under OR or NOT). Input: a tern_search tree from our own protocol code
 * (trusted in shape, but its strings are user text: they only ever travel
 * as parameters, never inside the SQL). */
#include "storage/index.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "lib/buf.h"
#include "storage/store.h"

typedef struct {
    tern_arena *a;
    tern_sql_dialect d;
    int next_param;        /* PostgreSQL $N */
    tern_buf sql;
    tern_buf params;       /* char * array */
    tern_sql *out;
    int err;
} compiler;

static void emit(compiler *c, const char *s)
{
    if (!c->err && tern_buf_append_str(&c->sql, s))
        c->err = -1;
}

static void param_str(compiler *c, char *v)
{
    if (!v) {
        c->err = -1;
        return;
    }
    if (!c->err && tern_buf_append(&c->params, &v, sizeof v))
        c->err = -1;
    if (c->d == TERN_SQL_SQLITE) {
        emit(c, "?");
    } else {
        char ph[24];
        snprintf(ph, sizeof ph, "$%d", c->next_param++);
        emit(c, ph);
    }
}

/* Integer parameters carry a cast: SQLite compares an untyped text
 * parameter with an expression like (m.flags & ?) as text, never equal. */
static void param_num(compiler *c, uint64_t v)
{
    char *s = tern_arena_printf(c->a, "%" PRIu64, v);
    if (c->d == TERN_SQL_SQLITE) {
        emit(c, "CAST(");
        param_str(c, s);
        emit(c, " AS INTEGER)");
    } else {
        param_str(c, s);
        emit(c, "::bigint");
    }
}

static void param_i64(compiler *c, int64_t v)
{
    if (v >= 0) {
        param_num(c, (uint64_t)v);
        return;
    }
    char *s = tern_arena_printf(c->a, "%" PRId64, v);
    if (c->d == TERN_SQL_SQLITE) {
        emit(c, "CAST(");
        param_str(c, s);
        emit(c, " AS INTEGER)");
    } else {
        param_str(c, s);
        emit(c, "::bigint");
    }
}

static char *lowercase(tern_arena *a, const char *s)
{
    char *r = tern_arena_strdup(a, s ? s : "");
    if (r)
        for (char *p = r; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p + 32);
    return r;
}

/* "%needle%" with the LIKE metacharacters escaped by backslash. */
static char *like_pattern(tern_arena *a, const char *s)
{
    size_t n = strlen(s);
    char *p = tern_arena_alloc(a, 2 * n + 3);
    if (!p)
        return NULL;
    size_t k = 0;
    p[k++] = '%';
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' || s[i] == '_' || s[i] == '\\')
            p[k++] = '\\';
        p[k++] = s[i];
    }
    p[k++] = '%';
    p[k] = '\0';
    return p;
}

static void value_like(compiler *c, const char *col, const char *needle)
{
    emit(c, col);
    emit(c, c->d == TERN_SQL_SQLITE ? " LIKE " : " ILIKE ");
    param_str(c, like_pattern(c->a, needle));
    emit(c, " ESCAPE '\\'");
}

static void uid_set(compiler *c, const tern_uid_set *u)
{
    if (u->n == 0) {
        emit(c, "1=0");
        return;
    }
    emit(c, "(");
    for (size_t i = 0; i < u->n; i++) {
        uint32_t lo = u->ranges[i].first, hi = u->ranges[i].last;
        if (i)
            emit(c, " OR ");
        if (hi == UINT32_MAX) {
            emit(c, "m.uid >= ");
            param_num(c, lo);
            continue;
        }
        if (lo > hi) { /* IMAP allows 9:3 */
            uint32_t t = lo;
            lo = hi;
            hi = t;
        }
        if (lo == hi) {
            emit(c, "m.uid = ");
            param_num(c, lo);
        } else {
            emit(c, "m.uid BETWEEN ");
            param_num(c, lo);
            emit(c, " AND ");
            param_num(c, hi);
        }
    }
    emit(c, ")");
}

static const char sent_date[] =
    "(CASE WHEN m.hdr_date = 0 THEN m.internal_date ELSE m.hdr_date END)";

/* neg: under an odd number of NOTs, where a body criterion must count as
 * false for the WHERE to stay a superset. branchy: under an OR or NOT. */
static void comp(compiler *c, const tern_search *s, bool neg, bool branchy, int depth)
{
    if (depth > TERN_SEARCH_MAX_DEPTH) {
        c->err = -1;
        return;
    }
    switch (s->kind) {
    case TERN_SEARCH_ALL:
        emit(c, "1=1");
        break;
    case TERN_SEARCH_AND:
    case TERN_SEARCH_OR: {
        bool is_and = s->kind == TERN_SEARCH_AND;
        if (s->n_children == 0) {
            emit(c, is_and ? "1=1" : "1=0");
            break;
        }
        emit(c, "(");
        for (size_t i = 0; i < s->n_children; i++) {
            if (i)
                emit(c, is_and ? " AND " : " OR ");
            comp(c, &s->children[i], neg, branchy || !is_and, depth + 1);
        }
        emit(c, ")");
        break;
    }
    case TERN_SEARCH_NOT:
        if (s->n_children == 0) {
            emit(c, "1=0"); /* NOT of nothing (ALL) */
            break;
        }
        emit(c, "NOT (");
        comp(c, &s->children[0], !neg, true, depth + 1);
        emit(c, ")");
        break;
    case TERN_SEARCH_UID:
        uid_set(c, &s->uids);
        break;
    case TERN_SEARCH_FLAGS_SET:
    case TERN_SEARCH_FLAGS_UNSET:
        if (s->flags == 0) {
            emit(c, "1=1");
            break;
        }
        emit(c, "(m.flags & ");
        param_num(c, s->flags);
        emit(c, ") = ");
        param_num(c, s->kind == TERN_SEARCH_FLAGS_SET ? s->flags : 0);
        break;
    case TERN_SEARCH_KEYWORD:
    case TERN_SEARCH_UNKEYWORD:
        emit(c, s->kind == TERN_SEARCH_KEYWORD ? "EXISTS" : "NOT EXISTS");
        /* Stored as first written (schema.md); matched without case. */
        emit(c, " (SELECT 1 FROM keywords k WHERE k.message = m.id AND lower(k.keyword) = ");
        param_str(c, lowercase(c->a, s->str));
        emit(c, ")");
        break;
    case TERN_SEARCH_BEFORE:
        emit(c, "m.internal_date < ");
        param_i64(c, s->date);
        break;
    case TERN_SEARCH_SINCE:
        emit(c, "m.internal_date >= ");
        param_i64(c, s->date);
        break;
    case TERN_SEARCH_SENTBEFORE:
        emit(c, sent_date);
        emit(c, " < ");
        param_i64(c, s->date);
        break;
    case TERN_SEARCH_SENTSINCE:
        emit(c, sent_date);
        emit(c, " >= ");
        param_i64(c, s->date);
        break;
    case TERN_SEARCH_LARGER:
        emit(c, "m.size > ");
        param_num(c, s->num);
        break;
    case TERN_SEARCH_SMALLER:
        emit(c, "m.size < ");
        param_num(c, s->num);
        break;
    case TERN_SEARCH_MODSEQ:
        emit(c, "m.modseq >= ");
        param_num(c, s->num);
        break;
    case TERN_SEARCH_HEADER: {
        /* The fields clients search most have their first occurrence on
         * the message row: one pass over messages instead of a probe into
         * the (five times larger) headers table per message. A message
         * with a second Subject: or From: is malformed; its first one is
         * what every client shows. */
        static const struct { const char *field, *column; } on_row[] = {
            {"subject", "m.subject"}, {"from", "m.from_addr"}, {"to", "m.to_addr"},
            {"cc", "m.cc_addr"},      {"bcc", "m.bcc_addr"},
        };
        const char *col = NULL;
        for (size_t i = 0; s->field && i < sizeof on_row / sizeof on_row[0]; i++)
            if (strcasecmp(s->field, on_row[i].field) == 0)
                col = on_row[i].column;
        if (col) {
            if (s->str && s->str[0]) {
                value_like(c, col, s->str);
            } else {
                emit(c, col);
                emit(c, " IS NOT NULL");
            }
            break;
        }
        emit(c, "EXISTS (SELECT 1 FROM headers h WHERE h.message = m.id AND h.name = ");
        param_str(c, lowercase(c->a, s->field));
        if (s->str && s->str[0]) {
            emit(c, " AND ");
            value_like(c, "h.value", s->str);
        }
        emit(c, ")");
        break;
    }
    case TERN_SEARCH_BODY:
    case TERN_SEARCH_TEXT:
        c->out->needs_body = 1;
        if (branchy)
            c->out->needs_eval = 1;
        if (!neg) {
            emit(c, "1=1");
        } else if (s->kind == TERN_SEARCH_TEXT && s->str && s->str[0]) {
            /* Under NOT: the part of TEXT the index can prove (a header
             * holds the needle) is still exact enough to exclude on. */
            emit(c, "EXISTS (SELECT 1 FROM headers h WHERE h.message = m.id AND ");
            value_like(c, "h.value", s->str);
            emit(c, ")");
        } else {
            emit(c, (s->str && s->str[0]) ? "1=0" : "1=1");
        }
        break;
    default:
        emit(c, "1=0"); /* an unknown criterion matches nothing rather than everything */
        break;
    }
}

int tern_search_to_sql(tern_arena *a, const struct tern_search *s, tern_sql_dialect d,
                       int first_param, tern_sql *out)
{
    memset(out, 0, sizeof *out);
    compiler c = {.a = a, .d = d, .next_param = first_param > 0 ? first_param : 1, .out = out};
    tern_buf_init(&c.sql, 0);
    tern_buf_init(&c.params, 0);
    if (s)
        comp(&c, s, false, false, 0);
    else
        emit(&c, "1=1");
    int rc = -1;
    if (!c.err) {
        out->where = tern_arena_strndup(a, (const char *)c.sql.data, c.sql.len);
        out->n_params = c.params.len / sizeof(char *);
        out->params = tern_arena_alloc(a, (out->n_params + 1) * sizeof(char *));
        if (out->where && out->params) {
            if (c.params.len)
                memcpy(out->params, c.params.data, c.params.len);
            rc = 0;
        }
    }
    tern_buf_free(&c.sql);
    tern_buf_free(&c.params);
    if (rc)
        memset(out, 0, sizeof *out);
    return rc;
}

/* ---- the C evaluator ---------------------------------------------------- */

static size_t body_nodes(const tern_search *s, const tern_search **nodes, size_t max, size_t n,
                         int depth)
{
    if (depth > TERN_SEARCH_MAX_DEPTH)
        return n;
    if (s->kind == TERN_SEARCH_BODY || s->kind == TERN_SEARCH_TEXT) {
        if (n < max)
            nodes[n] = s;
        return n + 1;
    }
    if (s->kind == TERN_SEARCH_AND || s->kind == TERN_SEARCH_OR || s->kind == TERN_SEARCH_NOT) {
        size_t k = s->kind == TERN_SEARCH_NOT ? (s->n_children ? 1 : 0) : s->n_children;
        for (size_t i = 0; i < k; i++)
            n = body_nodes(&s->children[i], nodes, max, n, depth + 1);
    }
    return n;
}

size_t tern_search_body_nodes(const struct tern_search *s, const struct tern_search **nodes,
                              size_t max)
{
    return s ? body_nodes(s, nodes, max, 0, 0) : 0;
}

static bool ieq(const char *a, const char *b)
{
    for (;; a++, b++) {
        char x = *a, y = *b;
        if (x >= 'A' && x <= 'Z')
            x = (char)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (char)(y + 32);
        if (x != y)
            return false;
        if (!x)
            return true;
    }
}

typedef struct {
    const tern_search_row *row;
    size_t body_i;
} evaluator;

static bool in_uids(const tern_uid_set *u, uint32_t uid)
{
    for (size_t i = 0; i < u->n; i++) {
        uint32_t lo = u->ranges[i].first, hi = u->ranges[i].last;
        if (hi == UINT32_MAX) {
            if (uid >= lo)
                return true;
            continue;
        }
        if (lo > hi) {
            uint32_t t = lo;
            lo = hi;
            hi = t;
        }
        if (uid >= lo && uid <= hi)
            return true;
    }
    return false;
}

static bool has_keyword(const tern_search_row *r, const char *k)
{
    for (size_t i = 0; i < r->n_keywords; i++)
        if (r->keywords[i] && ieq(r->keywords[i], k ? k : ""))
            return true;
    return false;
}

static bool header_has(const tern_search_row *r, const char *field, const char *needle)
{
    size_t nl = needle ? strlen(needle) : 0;
    for (size_t i = 0; i < r->n_fields; i++) {
        const tern_index_field *f = &r->fields[i];
        if (field && !ieq(f->name ? f->name : "", field))
            continue;
        const char *v = f->value ? f->value : "";
        if (tern_index_contains(v, strlen(v), needle ? needle : "", nl))
            return true;
    }
    return false;
}

/* Every child is evaluated, no short cut, so body_i stays in step with
 * the pre-order numbering of tern_search_body_nodes. */
static bool ev(evaluator *e, const tern_search *s, int depth)
{
    const tern_search_row *r = e->row;
    if (depth > TERN_SEARCH_MAX_DEPTH)
        return false;
    switch (s->kind) {
    case TERN_SEARCH_ALL:
        return true;
    case TERN_SEARCH_AND: {
        bool v = true;
        for (size_t i = 0; i < s->n_children; i++)
            v &= ev(e, &s->children[i], depth + 1);
        return v;
    }
    case TERN_SEARCH_OR: {
        bool v = false;
        for (size_t i = 0; i < s->n_children; i++)
            v |= ev(e, &s->children[i], depth + 1);
        return v;
    }
    case TERN_SEARCH_NOT:
        return s->n_children ? !ev(e, &s->children[0], depth + 1) : false;
    case TERN_SEARCH_UID:
        return in_uids(&s->uids, r->uid);
    case TERN_SEARCH_FLAGS_SET:
        return (r->flags & s->flags) == s->flags;
    case TERN_SEARCH_FLAGS_UNSET:
        return (r->flags & s->flags) == 0;
    case TERN_SEARCH_KEYWORD:
        return has_keyword(r, s->str);
    case TERN_SEARCH_UNKEYWORD:
        return !has_keyword(r, s->str);
    case TERN_SEARCH_BEFORE:
        return r->internal_date < s->date;
    case TERN_SEARCH_SINCE:
        return r->internal_date >= s->date;
    case TERN_SEARCH_SENTBEFORE:
    case TERN_SEARCH_SENTSINCE: {
        int64_t t = r->hdr_date ? r->hdr_date : r->internal_date;
        return s->kind == TERN_SEARCH_SENTBEFORE ? t < s->date : t >= s->date;
    }
    case TERN_SEARCH_LARGER:
        return r->size > s->num;
    case TERN_SEARCH_SMALLER:
        return r->size < s->num;
    case TERN_SEARCH_MODSEQ:
        return r->modseq >= s->num;
    case TERN_SEARCH_HEADER:
        return header_has(r, s->field ? s->field : "", s->str);
    case TERN_SEARCH_BODY:
    case TERN_SEARCH_TEXT: {
        size_t i = e->body_i++;
        return r->body_found && i < r->n_body && r->body_found[i];
    }
    }
    return false;
}

int tern_search_eval(const struct tern_search *s, const tern_search_row *row)
{
    evaluator e = {row, 0};
    return s ? ev(&e, s, 0) : 1;
}
