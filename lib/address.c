/* RFC 5322 address-list parsing: a tokenizer (atoms, quoted strings,
 * comments, domain literals, specials), then a pass that cuts the tokens
 * into list elements and groups and reads each element as
 * "phrase <route:addr-spec>" or a bare addr-spec. Input: an untrusted
 * header value; see address.h for what is accepted and what comes out. */
#include "lib/address.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/rfc2047.h"

enum { T_ATOM, T_QS, T_DLIT, T_COMMENT, T_SPECIAL };

typedef struct {
    int type;
    const char *s; /* T_QS, T_COMMENT: the inside, escapes still in */
    size_t len;
    bool ws_before; /* whitespace or a comment before it */
    char ch;        /* T_SPECIAL */
} tok;

typedef struct {
    tern_arena *a;
    unsigned flags;
    tok *t;
    size_t n, cap;
    tern_address *head, *tail;
    size_t count;
    bool oom;
} actx;

static bool is_space(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool is_special(uint8_t c)
{
    return c == '<' || c == '>' || c == '@' || c == ',' || c == ';' || c == ':' || c == '.';
}

static void push(actx *x, int type, const char *s, size_t len, bool ws, char ch)
{
    if (x->oom)
        return;
    if (x->n == x->cap) {
        size_t nc = x->cap ? x->cap * 2 : 32;
        tok *nt = realloc(x->t, nc * sizeof *nt);
        if (!nt) {
            x->oom = true;
            return;
        }
        x->t = nt;
        x->cap = nc;
    }
    x->t[x->n++] = (tok){type, s, len, ws, ch};
}

/* Index after the closing delimiter (or the end) of a string, comment or
 * literal that opens at in[i]. */
static size_t skip_delimited(const char *in, size_t len, size_t i, char open, char close,
                             bool *closed_r)
{
    int depth = 0;
    *closed_r = true;
    for (; i < len; i++) {
        if (in[i] == '\\' && i + 1 < len) {
            i++;
            continue;
        }
        if (in[i] == open && (open != close || depth == 0)) {
            depth++;
            continue;
        }
        if (in[i] == close && --depth == 0)
            return i + 1;
    }
    *closed_r = false;
    return len;
}

static void tokenize(actx *x, const char *in, size_t len)
{
    bool ws = false;
    size_t i = 0;
    while (i < len && !x->oom) {
        uint8_t c = (uint8_t)in[i];
        if (is_space(c)) {
            ws = true;
            i++;
        } else if (c == '(' || c == '"') {
            char close = c == '(' ? ')' : '"';
            bool closed;
            size_t e = skip_delimited(in, len, i, (char)c, close, &closed);
            /* The inside, without the delimiters (an unclosed one runs to the end). */
            size_t ie = closed ? e - 1 : e;
            push(x, c == '(' ? T_COMMENT : T_QS, in + i + 1, ie - i - 1, ws, 0);
            ws = c == '(';
            i = e;
        } else if (c == '[') {
            bool closed;
            size_t e = skip_delimited(in, len, i, '[', ']', &closed);
            push(x, T_DLIT, in + i, e - i, ws, 0);
            ws = false;
            i = e;
        } else if (is_special(c)) {
            push(x, T_SPECIAL, in + i, 1, ws, (char)c);
            ws = false;
            i++;
        } else {
            size_t s = i;
            while (i < len && !is_space((uint8_t)in[i]) && !is_special((uint8_t)in[i]) &&
                   in[i] != '(' && in[i] != '"' && in[i] != '[')
                i++;
            push(x, T_ATOM, in + s, i - s, ws, 0);
            ws = false;
        }
    }
}

/* Appends a token's text: quoted strings and comments unescaped. */
static void tok_text(tern_buf *b, const tok *t)
{
    if (t->type != T_QS && t->type != T_COMMENT) {
        tern_buf_append(b, t->s, t->len);
        return;
    }
    for (size_t i = 0; i < t->len; i++) {
        if (t->s[i] == '\\' && i + 1 < t->len)
            i++;
        tern_buf_append(b, t->s + i, 1);
    }
}

static const char *finish_str(actx *x, tern_buf *b)
{
    const char *s = tern_arena_strndup(x->a, b->len ? (const char *)b->data : "", b->len);
    if (!s)
        x->oom = true;
    return s;
}

/* The phrase in tokens [s, e): words joined by one space where the input
 * had whitespace or a comment between them. NULL if empty. */
static const char *phrase(actx *x, size_t s, size_t e)
{
    tern_buf b;
    tern_buf_init(&b, 0);
    for (size_t i = s; i < e; i++) {
        const tok *t = &x->t[i];
        if (t->type == T_COMMENT)
            continue;
        if (b.len && t->ws_before)
            tern_buf_append(&b, " ", 1);
        tok_text(&b, t);
    }
    const char *r = b.len ? finish_str(x, &b) : NULL;
    tern_buf_free(&b);
    return r;
}

static tern_address *add(actx *x, tern_address_kind kind)
{
    if (x->oom)
        return NULL;
    tern_address *a = tern_arena_alloc(x->a, sizeof *a);
    if (!a) {
        x->oom = true;
        return NULL;
    }
    a->kind = kind;
    if (x->tail)
        x->tail->next = a;
    else
        x->head = a;
    x->tail = a;
    x->count++;
    return a;
}

static void set_name(actx *x, tern_address *a, const char *name)
{
    a->name = name;
    if (name && (x->flags & TERN_ADDRESS_DECODE)) {
        a->name_decoded = tern_rfc2047_decode_arena(x->a, name, strlen(name), NULL);
        if (!a->name_decoded)
            x->oom = true;
    }
}

/* An atom with characters that RFC 5322 (and 6532) never put there. */
static bool odd_atom(const tok *t)
{
    if (t->type != T_ATOM)
        return false;
    for (size_t i = 0; i < t->len; i++) {
        uint8_t c = (uint8_t)t->s[i];
        if (c < 0x20 || c == 0x7f || c == ')' || c == ']' || c == '\\')
            return true;
    }
    return false;
}

/* local@domain from tokens [s, e) (comments skipped). */
static void addr_spec(actx *x, tern_address *a, size_t s, size_t e)
{
    size_t at = e;
    for (size_t i = s; i < e; i++)
        if (x->t[i].type == T_SPECIAL && x->t[i].ch == '@') {
            at = i;
            break;
        }
    tern_buf b;
    tern_buf_init(&b, 0);
    bool any = false;
    for (size_t i = s; i < at; i++) {
        const tok *t = &x->t[i];
        if (t->type == T_COMMENT)
            continue;
        if (at == e && b.len && t->ws_before)
            tern_buf_append(&b, " ", 1); /* no "@": keep the words apart */
        if ((t->type == T_SPECIAL && t->ch != '.') || odd_atom(t))
            a->invalid = true;
        tok_text(&b, t);
        any = true;
    }
    a->local = any ? finish_str(x, &b) : NULL;
    b.len = 0;
    if (at == e) {
        a->invalid = true;
    } else {
        for (size_t i = at + 1; i < e; i++) {
            const tok *t = &x->t[i];
            if (t->type == T_COMMENT)
                continue;
            if (t->type == T_QS || (t->type == T_SPECIAL && t->ch != '.') || odd_atom(t))
                a->invalid = true;
            tok_text(&b, t);
        }
        if (b.len)
            a->domain = finish_str(x, &b);
        else
            a->invalid = true;
        if (!a->local)
            a->invalid = true;
    }
    tern_buf_free(&b);
}

/* Tokens [s, e) (comments aside) are word *("." word): a local part. */
static bool local_words(actx *x, size_t s, size_t e)
{
    bool want_word = true;
    for (size_t i = s; i < e; i++) {
        const tok *t = &x->t[i];
        if (t->type == T_COMMENT)
            continue;
        bool word = t->type == T_ATOM || t->type == T_QS;
        if (word != want_word && !(t->type == T_SPECIAL && t->ch == '.' && !want_word))
            return false;
        want_word = !want_word;
    }
    return !want_word;
}

static const char *last_comment(actx *x, size_t s, size_t e)
{
    for (size_t i = e; i-- > s;)
        if (x->t[i].type == T_COMMENT && x->t[i].len) {
            tern_buf b;
            tern_buf_init(&b, 0);
            tok_text(&b, &x->t[i]);
            const char *r = finish_str(x, &b);
            tern_buf_free(&b);
            return r;
        }
    return NULL;
}

/* One list element, tokens [s, e): "phrase <addr>" or a bare addr-spec. */
static void element(actx *x, size_t s, size_t e)
{
    bool content = false;
    for (size_t i = s; i < e; i++)
        if (x->t[i].type != T_COMMENT)
            content = true;
    if (!content)
        return; /* an empty element (obs-addr-list) */
    if (x->count >= TERN_ADDRESS_MAX)
        return;
    tern_address *a = add(x, TERN_ADDRESS_MAILBOX);
    if (!a)
        return;
    size_t lt = e;
    for (size_t i = s; i < e; i++)
        if (x->t[i].type == T_SPECIAL && x->t[i].ch == '<') {
            lt = i;
            break;
        }
    if (lt == e) {
        bool has_at = false;
        for (size_t i = s; i < e; i++)
            has_at |= x->t[i].type == T_SPECIAL && x->t[i].ch == '@';
        if (!has_at && !local_words(x, s, e)) {
            /* "Someone Else": a display name whose address is missing. */
            a->invalid = true;
            set_name(x, a, phrase(x, s, e));
            return;
        }
        addr_spec(x, a, s, e);
        /* "user@host (Full Name)": the comment names the mailbox. */
        set_name(x, a, last_comment(x, s, e));
        return;
    }
    const char *name = phrase(x, s, lt);
    size_t gt = e;
    for (size_t i = lt + 1; i < e; i++)
        if (x->t[i].type == T_SPECIAL && x->t[i].ch == '>') {
            gt = i;
            break;
        }
    if (gt == e)
        a->invalid = true;
    for (size_t i = gt + 1; i < e; i++)
        if (x->t[i].type != T_COMMENT)
            a->invalid = true; /* words after the ">" */
    size_t as = lt + 1;
    if (as < gt && x->t[as].type == T_SPECIAL && x->t[as].ch == '@') {
        /* obs-route "@a,@b:" */
        size_t colon = gt;
        for (size_t i = as; i < gt; i++)
            if (x->t[i].type == T_SPECIAL && x->t[i].ch == ':') {
                colon = i;
                break;
            }
        if (colon < gt) {
            tern_buf b;
            tern_buf_init(&b, 0);
            for (size_t i = as; i < colon; i++)
                if (x->t[i].type != T_COMMENT)
                    tok_text(&b, &x->t[i]);
            a->route = finish_str(x, &b);
            tern_buf_free(&b);
            as = colon + 1;
        }
    }
    bool empty = true;
    for (size_t i = as; i < gt; i++)
        if (x->t[i].type != T_COMMENT)
            empty = false;
    if (empty) {
        a->local = ""; /* "<>": the null address */
    } else {
        addr_spec(x, a, as, gt);
    }
    set_name(x, a, name ? name : last_comment(x, s, lt));
}

tern_address *tern_address_list_parse(tern_arena *arena, const char *in, size_t len,
                                      unsigned flags, size_t *count_r)
{
    actx x = {.a = arena, .flags = flags};
    tokenize(&x, in, len);
    bool in_group = false;
    size_t s = 0;
    bool angle = false;
    bool addr_seen = false; /* "@", "<" or ">" since the element began: ":" is no group */
    for (size_t i = 0; i <= x.n && !x.oom; i++) {
        if (i < x.n) {
            const tok *t = &x.t[i];
            if (t->type != T_SPECIAL)
                continue;
            if (t->ch == '<')
                angle = true;
            else if (t->ch == '>')
                angle = false;
            bool was_seen = addr_seen;
            if (t->ch == '@' || t->ch == '<' || t->ch == '>')
                addr_seen = true;
            if (angle)
                continue; /* "," and ":" inside <> belong to a route */
            if (t->ch == ':' && !in_group) {
                if (!was_seen) {
                    tern_address *g = add(&x, TERN_ADDRESS_GROUP_START);
                    if (g)
                        set_name(&x, g, phrase(&x, s, i));
                    in_group = true;
                    s = i + 1;
                }
                continue;
            }
            if (t->ch != ',' && t->ch != ';')
                continue;
        }
        element(&x, s, i);
        s = i + 1;
        addr_seen = false;
        if (i < x.n && x.t[i].ch == ';' && in_group) {
            add(&x, TERN_ADDRESS_GROUP_END);
            in_group = false;
        }
        angle = false;
    }
    if (in_group)
        add(&x, TERN_ADDRESS_GROUP_END); /* a group never closed */
    free(x.t);
    if (x.oom) {
        if (count_r)
            *count_r = (size_t)-1;
        return NULL;
    }
    if (count_r)
        *count_r = x.count;
    return x.head;
}

static bool is_atext(uint8_t c)
{
    if (c >= 0x80)
        return true; /* RFC 6532 */
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

static bool is_dot_atom(const char *s)
{
    bool prev_dot = true; /* no leading dot */
    if (!*s)
        return false;
    for (; *s; s++) {
        if (*s == '.') {
            if (prev_dot)
                return false;
            prev_dot = true;
        } else if (is_atext((uint8_t)*s)) {
            prev_dot = false;
        } else {
            return false;
        }
    }
    return !prev_dot;
}

char *tern_address_spec(tern_arena *a, const tern_address *addr)
{
    if (addr->kind != TERN_ADDRESS_MAILBOX || !addr->local)
        return NULL;
    tern_buf b;
    tern_buf_init(&b, 0);
    if (is_dot_atom(addr->local)) {
        tern_buf_append_str(&b, addr->local);
    } else {
        tern_buf_append(&b, "\"", 1);
        for (const char *s = addr->local; *s; s++) {
            if (*s == '"' || *s == '\\')
                tern_buf_append(&b, "\\", 1);
            tern_buf_append(&b, s, 1);
        }
        tern_buf_append(&b, "\"", 1);
    }
    if (addr->domain) {
        tern_buf_append(&b, "@", 1);
        tern_buf_append_str(&b, addr->domain);
    }
    char *r = tern_arena_strndup(a, (const char *)b.data, b.len);
    tern_buf_free(&b);
    return r;
}
