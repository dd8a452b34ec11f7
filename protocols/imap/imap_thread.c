/* SORT and THREAD without I/O (RFC 5256, RFC 5957 DISPLAYFROM/DISPLAYTO):
 * base subject extraction (RFC 5256 2.1), msg-id lists, the sort order,
 * ORDEREDSUBJECT and REFERENCES. Trees are walked with explicit stacks
 * where a chain can be as long as the mailbox, so a hostile References
 * chain cannot run the stack out.
 * Input: header values from stored messages (untrusted). */
#include "protocols/imap/imap_thread.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/rfc2047.h"

/* ---- base subject ------------------------------------------------------- */

static int upper(int c)
{
    return c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c;
}

int tern_imap_casemap_cmp(const char *a, const char *b)
{
    const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
    for (;; x++, y++) {
        int cx = upper(*x), cy = upper(*y);
        if (cx != cy || !cx)
            return cx < cy ? -1 : cx > cy;
    }
}

static bool starts_ci(const char *p, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    return n >= l && strncasecmp(p, lit, l) == 0;
}

/* subj-blob = "[" *BLOBCHAR "]" *WSP; the text is already one space per run. */
static size_t blob_len(const char *p, size_t n)
{
    if (n == 0 || p[0] != '[')
        return 0;
    size_t i = 1;
    while (i < n && p[i] != ']') {
        if (p[i] == '[')
            return 0;
        i++;
    }
    if (i == n)
        return 0;
    i++;
    while (i < n && p[i] == ' ')
        i++;
    return i;
}

/* subj-leader = (*subj-blob subj-refwd) / WSP, with
 * subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":". */
static size_t leader_len(const char *p, size_t n, bool *refwd)
{
    if (n && p[0] == ' ')
        return 1;
    size_t i = 0, b;
    while ((b = blob_len(p + i, n - i)) != 0)
        i += b;
    size_t j;
    if (starts_ci(p + i, n - i, "re"))
        j = i + 2;
    else if (starts_ci(p + i, n - i, "fwd"))
        j = i + 3;
    else if (starts_ci(p + i, n - i, "fw"))
        j = i + 2;
    else
        return 0;
    while (j < n && p[j] == ' ')
        j++;
    j += blob_len(p + j, n - j);
    if (j < n && p[j] == ':') {
        *refwd = true;
        return j + 1;
    }
    return 0;
}

char *tern_imap_base_subject(tern_arena *a, const char *subj, size_t len, bool *refwd_r)
{
    bool refwd = false;
    size_t dl = 0;
    const char *d = subj ? tern_rfc2047_decode_arena(a, subj, len, &dl) : "";
    if (!d)
        return NULL;
    char *s = tern_arena_alloc(a, dl + 1);
    if (!s)
        return NULL;
    /* (1) one space for every run of white space (the decoder made controls
     * spaces already; folding is gone in unfolded values). */
    size_t n = 0;
    for (size_t i = 0; i < dl; i++) {
        char c = d[i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            if (n == 0 || s[n - 1] != ' ')
                s[n++] = ' ';
        } else {
            s[n++] = c;
        }
    }
    size_t start = 0, end = n;
    for (;;) {
        /* (2) trailers: "(fwd)" and white space. */
        for (;;) {
            if (end > start && s[end - 1] == ' ') {
                end--;
            } else if (end - start >= 5 && strncasecmp(s + end - 5, "(fwd)", 5) == 0) {
                end -= 5;
                refwd = true;
            } else {
                break;
            }
        }
        /* (3)-(5) leaders, then one leading blob when text remains after it. */
        for (;;) {
            bool changed = false;
            size_t k;
            while ((k = leader_len(s + start, end - start, &refwd)) != 0) {
                start += k;
                changed = true;
            }
            k = blob_len(s + start, end - start);
            if (k && start + k < end) {
                start += k;
                changed = true;
            }
            if (!changed)
                break;
        }
        /* (6) "[fwd:" ... "]" around the rest: unwrap and start over. */
        if (end - start >= 6 && strncasecmp(s + start, "[fwd:", 5) == 0 && s[end - 1] == ']') {
            start += 5;
            end -= 1;
            refwd = true;
            continue;
        }
        break;
    }
    if (refwd_r)
        *refwd_r = refwd;
    s[end] = '\0';
    return s + start;
}

/* ---- msg-ids ------------------------------------------------------------- */

size_t tern_imap_msgids(tern_arena *a, const char *v, size_t len, size_t max, char ***ids_r)
{
    size_t n = 0, cap = 0;
    char **ids = NULL;
    size_t i = 0;
    while (i < len && n < max) {
        while (i < len && v[i] != '<')
            i++;
        if (i == len)
            break;
        size_t j = i + 1;
        while (j < len && v[j] != '>' && v[j] != '<')
            j++;
        if (j == len)
            break;
        if (v[j] == '<') {
            i = j; /* "<a <b>": the first was never closed */
            continue;
        }
        char *id = tern_arena_alloc(a, j - i);
        if (!id)
            break;
        size_t k = 0;
        for (size_t x = i + 1; x < j; x++)
            if (v[x] != ' ' && v[x] != '\t' && v[x] != '\r' && v[x] != '\n')
                id[k++] = v[x];
        id[k] = '\0';
        i = j + 1;
        if (k == 0)
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 8;
            char **na = tern_arena_alloc(a, nc * sizeof(*na));
            if (!na)
                break;
            if (n)
                memcpy(na, ids, n * sizeof(*na));
            ids = na;
            cap = nc;
        }
        ids[n++] = id;
    }
    *ids_r = ids;
    return n;
}

/* ---- SORT ---------------------------------------------------------------- */

typedef struct sort_ctx {
    const tern_imap_sort_crit *crit;
    size_t n;
} sort_ctx;

static int cmp_i64(int64_t a, int64_t b)
{
    return a < b ? -1 : a > b;
}

static int sort_cmp(const void *pa, const void *pb, void *arg)
{
    const sort_ctx *c = arg;
    const tern_imap_sort_msg *a = pa, *b = pb;
    for (size_t i = 0; i < c->n; i++) {
        int r = 0;
        switch (c->crit[i].key) {
        case TERN_IMAP_SORT_ARRIVAL: r = cmp_i64(a->arrival, b->arrival); break;
        case TERN_IMAP_SORT_DATE: r = cmp_i64(a->date, b->date); break;
        case TERN_IMAP_SORT_SIZE: r = a->size < b->size ? -1 : a->size > b->size; break;
        case TERN_IMAP_SORT_CC: r = tern_imap_casemap_cmp(a->cc, b->cc); break;
        case TERN_IMAP_SORT_FROM: r = tern_imap_casemap_cmp(a->from, b->from); break;
        case TERN_IMAP_SORT_TO: r = tern_imap_casemap_cmp(a->to, b->to); break;
        case TERN_IMAP_SORT_SUBJECT: r = tern_imap_casemap_cmp(a->subject, b->subject); break;
        case TERN_IMAP_SORT_DISPLAYFROM:
            r = tern_imap_casemap_cmp(a->display_from, b->display_from);
            break;
        case TERN_IMAP_SORT_DISPLAYTO:
            r = tern_imap_casemap_cmp(a->display_to, b->display_to);
            break;
        }
        if (r)
            return c->crit[i].reverse ? -r : r;
    }
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

void tern_imap_sort(tern_imap_sort_msg *m, size_t n, const tern_imap_sort_crit *crit,
                    size_t n_crit)
{
    sort_ctx c = {crit, n_crit};
    if (n > 1)
        qsort_r(m, n, sizeof(*m), sort_cmp, &c);
}

/* ---- THREAD: the tree ----------------------------------------------------- */

#define NONE SIZE_MAX

typedef struct node {
    const char *id;       /* the Message-ID it stands for, or NULL */
    size_t msg;           /* index into the messages; NONE for a dummy */
    size_t parent, first, last, next, prev;
} node;

typedef struct tree {
    tern_arena *a;
    const tern_imap_thread_msg *m;
    node *v;
    size_t n, cap;
    size_t *hash;         /* Message-ID -> node, open addressing */
    size_t hcap;
} tree;

static size_t new_node(tree *t, const char *id, size_t msg)
{
    if (t->n == t->cap)
        return NONE; /* sized up front */
    node *x = &t->v[t->n];
    x->id = id;
    x->msg = msg;
    x->parent = x->first = x->last = x->next = x->prev = NONE;
    return t->n++;
}

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* The node for `id`, created as a dummy when new; *found_r says which. */
static size_t lookup(tree *t, const char *id, bool create, bool *found_r)
{
    size_t h = (size_t)(hash_str(id) & (t->hcap - 1));
    while (t->hash[h] != NONE) {
        if (strcmp(t->v[t->hash[h]].id, id) == 0) {
            *found_r = true;
            return t->hash[h];
        }
        h = (h + 1) & (t->hcap - 1);
    }
    *found_r = false;
    if (!create)
        return NONE;
    size_t x = new_node(t, id, NONE);
    if (x != NONE)
        t->hash[h] = x;
    return x;
}

static void unlink_node(tree *t, size_t c)
{
    node *x = &t->v[c];
    if (x->parent == NONE)
        return;
    node *p = &t->v[x->parent];
    if (x->prev != NONE)
        t->v[x->prev].next = x->next;
    else
        p->first = x->next;
    if (x->next != NONE)
        t->v[x->next].prev = x->prev;
    else
        p->last = x->prev;
    x->parent = x->next = x->prev = NONE;
}

static void append_child(tree *t, size_t p, size_t c)
{
    node *x = &t->v[c], *y = &t->v[p];
    x->parent = p;
    x->next = NONE;
    x->prev = y->last;
    if (y->last != NONE)
        t->v[y->last].next = c;
    else
        y->first = c;
    y->last = c;
}

/* Replaces child c of its parent with c's children, in place. */
static void splice_children(tree *t, size_t c)
{
    node *x = &t->v[c];
    size_t p = x->parent, after = x->prev;
    size_t k = x->first;
    while (k != NONE) {
        size_t nx = t->v[k].next;
        t->v[k].parent = p;
        t->v[k].prev = after;
        if (after != NONE)
            t->v[after].next = k;
        else
            t->v[p].first = k;
        after = k;
        k = nx;
    }
    if (after != NONE)
        t->v[after].next = x->next;
    else
        t->v[p].first = x->next;
    if (x->next != NONE)
        t->v[x->next].prev = after;
    else
        t->v[p].last = after;
    x->first = x->last = x->parent = x->next = x->prev = NONE;
}

static bool is_ancestor(const tree *t, size_t anc, size_t x)
{
    if (anc != x && t->v[anc].first == NONE)
        return false; /* a leaf is nobody's ancestor: spares the walk up */
    for (size_t k = x; k != NONE; k = t->v[k].parent)
        if (k == anc)
            return true;
    return false;
}

/* Nodes under `root`, children after their parent; reversed, a post-order
 * (every node after all of its descendants). */
static size_t *preorder(tree *t, size_t root, size_t *n_r)
{
    size_t *out = tern_arena_alloc(t->a, t->n * sizeof(*out));
    size_t *stack = tern_arena_alloc(t->a, t->n * sizeof(*stack));
    if (!out || !stack)
        return NULL;
    size_t n = 0, sp = 0;
    stack[sp++] = root;
    while (sp) {
        size_t x = stack[--sp];
        out[n++] = x;
        for (size_t k = t->v[x].first; k != NONE; k = t->v[k].next)
            stack[sp++] = k;
    }
    *n_r = n;
    return out;
}

static const tern_imap_thread_msg *first_msg(const tree *t, size_t x)
{
    while (x != NONE && t->v[x].msg == NONE)
        x = t->v[x].first;
    return x == NONE ? NULL : &t->m[t->v[x].msg];
}

static int date_cmp(const tern_imap_thread_msg *a, const tern_imap_thread_msg *b)
{
    if (!a || !b)
        return (a == NULL) - (b == NULL);
    if (a->date != b->date)
        return a->date < b->date ? -1 : 1;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

typedef struct keyed {
    size_t node;
    const tern_imap_thread_msg *m;
} keyed;

static int keyed_cmp(const void *pa, const void *pb)
{
    return date_cmp(((const keyed *)pa)->m, ((const keyed *)pb)->m);
}

/* (6), (7): siblings by sent date, a dummy taking its first child's. */
static int sort_tree(tree *t, size_t root)
{
    size_t n;
    size_t *order = preorder(t, root, &n);
    keyed *tmp = tern_arena_alloc(t->a, (t->n ? t->n : 1) * sizeof(*tmp));
    if (!order || !tmp)
        return -1;
    for (size_t i = n; i-- > 0;) {
        size_t p = order[i], k = 0;
        for (size_t c = t->v[p].first; c != NONE; c = t->v[c].next) {
            tmp[k].node = c;
            tmp[k].m = first_msg(t, c);
            k++;
        }
        if (k < 2)
            continue;
        qsort(tmp, k, sizeof(*tmp), keyed_cmp);
        t->v[p].first = t->v[p].last = NONE;
        for (size_t j = 0; j < k; j++)
            append_child(t, p, tmp[j].node);
    }
    return 0;
}

/* thread-list text: a chain of single children is "a b c"; two or more
 * children are each a parenthesised list. Iterative over both. */
static int write_tree(tree *t, size_t root, tern_buf *out)
{
    size_t *stack = tern_arena_alloc(t->a, (t->n + 1) * 2 * sizeof(*stack));
    if (!stack)
        return -1;
    size_t sp = 0;
    /* Entries: a node to open as "(...)", or NONE for its ")". */
    for (size_t c = t->v[root].last; c != NONE; c = t->v[c].prev)
        stack[sp++] = c;
    while (sp) {
        size_t x = stack[--sp];
        if (x == NONE) {
            if (tern_buf_append(out, ")", 1) != 0)
                return -1;
            continue;
        }
        if (tern_buf_append(out, "(", 1) != 0)
            return -1;
        stack[sp++] = NONE;
        bool any = false;
        for (;;) {
            node *y = &t->v[x];
            if (y->msg != NONE) {
                if (tern_buf_printf(out, any ? " %u" : "%u", t->m[y->msg].id) != 0)
                    return -1;
                any = true;
            }
            if (y->first == NONE)
                break;
            if (y->first == y->last) {
                x = y->first;
                continue;
            }
            if (any && tern_buf_append(out, " ", 1) != 0)
                return -1;
            for (size_t c = y->last; c != NONE; c = t->v[c].prev)
                stack[sp++] = c;
            break;
        }
    }
    return 0;
}

static int tree_init(tree *t, tern_arena *a, const tern_imap_thread_msg *m, size_t n)
{
    size_t refs = 0;
    for (size_t i = 0; i < n; i++)
        refs += m[i].n_refs;
    t->a = a;
    t->m = m;
    t->n = 0;
    /* messages + referenced ids + the root + a dummy per subject merge */
    t->cap = 2 * n + refs + 1;
    t->v = tern_arena_alloc(a, t->cap * sizeof(*t->v));
    t->hcap = 16;
    while (t->hcap < 2 * (n + refs))
        t->hcap <<= 1;
    t->hash = tern_arena_alloc(a, t->hcap * sizeof(*t->hash));
    if (!t->v || !t->hash)
        return -1;
    for (size_t i = 0; i < t->hcap; i++)
        t->hash[i] = NONE;
    return 0;
}

/* ---- ORDEREDSUBJECT ------------------------------------------------------- */

static int subj_cmp(const void *pa, const void *pb)
{
    const tern_imap_thread_msg *a = *(const tern_imap_thread_msg *const *)pa;
    const tern_imap_thread_msg *b = *(const tern_imap_thread_msg *const *)pb;
    int r = tern_imap_casemap_cmp(a->subject, b->subject);
    return r ? r : date_cmp(a, b);
}

static int ordered_subject(tern_arena *a, const tern_imap_thread_msg *m, size_t n,
                           tern_buf *out)
{
    tree t;
    const tern_imap_thread_msg **p = tern_arena_alloc(a, (n ? n : 1) * sizeof(*p));
    if (!p || tree_init(&t, a, m, n) != 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        p[i] = &m[i];
    qsort(p, n, sizeof(*p), subj_cmp);
    size_t root = new_node(&t, NULL, NONE);
    size_t head = NONE;
    for (size_t i = 0; i < n; i++) {
        size_t x = new_node(&t, NULL, (size_t)(p[i] - m));
        if (x == NONE)
            return -1;
        /* The first of a subject is the root; the others are its children. */
        if (head != NONE && tern_imap_casemap_cmp(p[i]->subject, first_msg(&t, head)->subject) == 0) {
            append_child(&t, head, x);
        } else {
            append_child(&t, root, x);
            head = x;
        }
    }
    if (sort_tree(&t, root) != 0)
        return -1;
    return write_tree(&t, root, out);
}

/* ---- REFERENCES ----------------------------------------------------------- */

static const char *upper_dup(tern_arena *a, const char *s)
{
    size_t l = strlen(s);
    char *d = tern_arena_alloc(a, l + 1);
    if (!d)
        return NULL;
    for (size_t i = 0; i <= l; i++)
        d[i] = (char)upper((unsigned char)s[i]);
    return d;
}

static const char *thread_subject(tree *t, size_t x)
{
    if (t->v[x].msg == NONE)
        x = t->v[x].first;
    if (x == NONE || t->v[x].msg == NONE)
        return "";
    return t->m[t->v[x].msg].subject;
}

static int references(tern_arena *a, const tern_imap_thread_msg *m, size_t n, tern_buf *out)
{
    tree t;
    if (tree_init(&t, a, m, n) != 0)
        return -1;
    bool found;
    /* (1) link by Message-ID, References and In-Reply-To. */
    for (size_t i = 0; i < n; i++) {
        size_t self = NONE;
        if (m[i].message_id && *m[i].message_id) {
            self = lookup(&t, m[i].message_id, true, &found);
            if (self == NONE)
                return -1;
            if (found && t.v[self].msg != NONE)
                self = NONE; /* a duplicate Message-ID: this one stands alone */
            else
                t.v[self].msg = i;
        }
        if (self == NONE && (self = new_node(&t, NULL, i)) == NONE)
            return -1;
        size_t prev = NONE;
        for (size_t k = 0; k < m[i].n_refs; k++) {
            size_t r = lookup(&t, m[i].refs[k], true, &found);
            if (r == NONE)
                return -1;
            /* (1A) keep links that exist; never make a loop. */
            if (prev != NONE && prev != r && t.v[r].parent == NONE && !is_ancestor(&t, r, prev))
                append_child(&t, prev, r);
            prev = r;
        }
        /* (1B) the last reference is the parent, replacing a guess. */
        if (prev != NONE && prev != self && !is_ancestor(&t, self, prev)) {
            unlink_node(&t, self);
            append_child(&t, prev, self);
        }
    }
    /* (2) the root set. */
    size_t nodes = t.n;
    size_t root = new_node(&t, NULL, NONE);
    if (root == NONE)
        return -1;
    for (size_t x = 0; x < nodes; x++)
        if (t.v[x].parent == NONE)
            append_child(&t, root, x);
    /* (4) prune dummies, deepest first. */
    size_t no;
    size_t *order = preorder(&t, root, &no);
    if (!order)
        return -1;
    for (size_t i = no; i-- > 0;) {
        size_t p = order[i];
        for (size_t c = t.v[p].first; c != NONE;) {
            size_t nx = t.v[c].next;
            if (t.v[c].msg == NONE) {
                if (t.v[c].first == NONE)
                    unlink_node(&t, c);
                else if (p != root || t.v[c].first == t.v[c].last)
                    splice_children(&t, c);
            }
            c = nx;
        }
    }
    /* (5) gather root-level threads by base subject. */
    size_t nroots = 0;
    for (size_t c = t.v[root].first; c != NONE; c = t.v[c].next)
        nroots++;
    size_t hcap = 16;
    while (hcap < 2 * nroots)
        hcap <<= 1;
    const char **keys = tern_arena_alloc(a, hcap * sizeof(*keys));
    size_t *vals = tern_arena_alloc(a, hcap * sizeof(*vals));
    if (!keys || !vals)
        return -1;
    for (size_t i = 0; i < hcap; i++)
        keys[i] = NULL;
    /* (5B) one container per subject: a dummy, else a message that is not
     * a reply. */
    for (size_t c = t.v[root].first; c != NONE; c = t.v[c].next) {
        const char *subj = thread_subject(&t, c);
        if (!*subj)
            continue;
        const char *key = upper_dup(a, subj);
        if (!key)
            return -1;
        size_t h = (size_t)(hash_str(key) & (hcap - 1));
        while (keys[h] && strcmp(keys[h], key) != 0)
            h = (h + 1) & (hcap - 1);
        if (!keys[h]) {
            keys[h] = key;
            vals[h] = c;
            continue;
        }
        size_t old = vals[h];
        if (t.v[old].msg != NONE &&
            (t.v[c].msg == NONE ||
             (t.m[t.v[old].msg].refwd && !t.m[t.v[c].msg].refwd)))
            vals[h] = c;
    }
    /* (5C) merge. */
    for (size_t c = t.v[root].first; c != NONE;) {
        size_t nx = t.v[c].next;
        const char *subj = thread_subject(&t, c);
        if (!*subj) {
            c = nx;
            continue;
        }
        const char *key = upper_dup(a, subj);
        if (!key)
            return -1;
        size_t h = (size_t)(hash_str(key) & (hcap - 1));
        while (keys[h] && strcmp(keys[h], key) != 0)
            h = (h + 1) & (hcap - 1);
        size_t tb = vals[h];
        if (tb == c) {
            c = nx;
            continue;
        }
        bool cd = t.v[c].msg == NONE, td = t.v[tb].msg == NONE;
        if (cd && td) {
            for (size_t k = t.v[c].first; k != NONE;) {
                size_t kn = t.v[k].next;
                unlink_node(&t, k);
                append_child(&t, tb, k);
                k = kn;
            }
            unlink_node(&t, c);
        } else if (td || (!cd && t.m[t.v[c].msg].refwd && !t.m[t.v[tb].msg].refwd)) {
            unlink_node(&t, c);
            append_child(&t, tb, c);
        } else {
            size_t d = new_node(&t, NULL, NONE);
            if (d == NONE)
                return -1;
            unlink_node(&t, c);
            /* The dummy takes the table container's place at the root. */
            node *y = &t.v[tb], *z = &t.v[d];
            z->parent = root;
            z->prev = y->prev;
            z->next = y->next;
            if (y->prev != NONE)
                t.v[y->prev].next = d;
            else
                t.v[root].first = d;
            if (y->next != NONE)
                t.v[y->next].prev = d;
            else
                t.v[root].last = d;
            y->parent = y->prev = y->next = NONE;
            if (nx == tb)
                nx = d;
            append_child(&t, d, tb);
            append_child(&t, d, c);
            vals[h] = d;
        }
        c = nx;
    }
    if (sort_tree(&t, root) != 0)
        return -1;
    return write_tree(&t, root, out);
}

int tern_imap_thread(tern_arena *a, tern_imap_thread_algo algo, const tern_imap_thread_msg *m,
                     size_t n, tern_buf *out)
{
    if (algo == TERN_IMAP_THREAD_ORDEREDSUBJECT)
        return ordered_subject(a, m, n, out);
    return references(a, m, n, out);
}
